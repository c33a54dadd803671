//! The admin kubeconfig and the token it carries.

use std::fs;
use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;

/// The kubeconfig Skiff writes: cluster, user and context all named `default`, as k3s does.
pub fn render(server_url: &str, ca_pem: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: default
  cluster:
    server: {server_url}
    certificate-authority-data: {ca}
contexts:
- name: default
  context:
    cluster: default
    user: default
current-context: default
preferences: {{}}
users:
- name: default
  user:
    token: {token}
"
    )
}

/// The API token: made once (32 random bytes, hex) and kept at `path` with mode 0600, so
/// kubeconfigs copied elsewhere keep working across restarts.
pub fn load_or_create_token(path: &Path) -> anyhow::Result<String> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim();
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                bail!("{} does not hold a token: remove it to have a new one made", path.display());
            }
            Ok(token.to_string())
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let token = hex::encode(rand::random::<[u8; 32]>());
            skiff_apiserver::atomic_file::write(path, format!("{token}\n").as_bytes(), 0o600)?;
            Ok(token)
        }
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn token_is_made_once_with_mode_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let first = load_or_create_token(&path).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create_token(&path).unwrap(), first);
    }

    #[test]
    fn an_empty_token_file_is_an_error_not_an_empty_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, "\n").unwrap();
        assert!(load_or_create_token(&path).unwrap_err().to_string().contains("does not hold a token"));
    }

    #[test]
    fn kubeconfig_names_server_ca_and_token() {
        let text = render("https://127.0.0.1:6443", "PEM", "abc");
        assert!(text.contains("server: https://127.0.0.1:6443\n"));
        assert!(text.contains(&format!("certificate-authority-data: {}\n", "UEVN")));
        assert!(text.contains("token: abc\n"));
        assert!(text.contains("current-context: default\n"));
    }
}
