//! The admin kubeconfig and the token it carries, both written atomically.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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

/// Writes `contents` to `path` through a temporary file and a rename, so a reader sees the old
/// file or the new one, never half of one; the file has `mode` from the start.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().with_context(|| format!("{} names no file", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        // The umask narrowed the mode given to open; the flag's mode is what the user asked for.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting mode {mode:o} on {}", tmp.display()))?;
        file.write_all(contents).with_context(|| format!("writing {}", tmp.display()))?;
        file.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
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
            write_atomically(path, format!("{token}\n").as_bytes(), 0o600)?;
            Ok(token)
        }
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn atomic_write_sets_the_requested_mode_and_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/kubeconfig.yaml");
        write_atomically(&path, b"one", 0o644).unwrap();
        write_atomically(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "no temporary file is left");
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
