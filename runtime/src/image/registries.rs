//! `<data dir>/registries.yaml` in k3s's format: per-registry mirrors tried in order before the
//! registry itself, and per-host credentials and TLS settings.
//!
//! ```yaml
//! mirrors:
//!   docker.io:
//!     endpoint: ["http://127.0.0.1:5000", "https://mirror.example.com"]
//!   "*":                       # every registry without its own entry
//!     endpoint: ["https://cache.example.com"]
//! configs:
//!   "mirror.example.com":
//!     auth: {username: u, password: p}     # or `auth: <base64 of u:p>`
//!     tls: {insecure_skip_verify: true, ca_file: /etc/ssl/mirror.pem}
//! ```
//!
//! An endpoint without a scheme is HTTPS. The registry itself is the last endpoint: over HTTPS,
//! except on 127.0.0.0/8, `localhost` and `::1`, which Docker and Skiff reach over plain HTTP
//! unless `configs` gives that host a `tls` section.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};

use crate::RegistryAuth;

#[derive(Debug, thiserror::Error)]
pub enum RegistriesError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The file as k3s documents it; unknown keys are ignored as k3s does.
#[derive(Debug, Default, serde::Deserialize)]
struct File {
    #[serde(default)]
    mirrors: BTreeMap<String, MirrorFile>,
    #[serde(default)]
    configs: BTreeMap<String, HostFile>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct MirrorFile {
    #[serde(default)]
    endpoint: Vec<String>,
    /// Repository rewrites (regular expressions): not supported, refused rather than ignored,
    /// since ignoring them would pull a different repository than the one configured.
    #[serde(default)]
    rewrite: BTreeMap<String, String>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct HostFile {
    #[serde(default)]
    auth: Option<AuthFile>,
    #[serde(default)]
    tls: Option<TlsFile>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct AuthFile {
    username: Option<String>,
    password: Option<String>,
    /// base64 of `username:password`, as in a Docker config.
    auth: Option<String>,
    identitytoken: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct TlsFile {
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

/// Settings for one host (`host[:port]`).
#[derive(Debug, Clone, Default)]
struct HostConfig {
    auth: Option<RegistryAuth>,
    /// Whether a `tls` section names this host: a loopback registry is then reached over HTTPS.
    tls: bool,
    insecure_skip_verify: bool,
    /// PEM of the extra CA (`tls.ca_file`), read at load.
    ca_pem: Option<Vec<u8>>,
}

/// One place an image can be pulled from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]`
    pub host: String,
    pub https: bool,
    /// The registry named in the reference, rather than a mirror of it.
    pub is_default: bool,
}

impl Endpoint {
    pub fn url(&self) -> String {
        format!("{}://{}", if self.https { "https" } else { "http" }, self.host)
    }
}

/// The parsed `registries.yaml`; the default (no file) pulls every image from its registry.
#[derive(Debug, Clone, Default)]
pub struct Registries {
    mirrors: BTreeMap<String, Vec<Endpoint>>,
    configs: BTreeMap<String, HostConfig>,
}

impl Registries {
    /// Reads `path`; a missing file means no mirrors and no per-host settings.
    pub fn load(path: &Path) -> Result<Registries, RegistriesError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Registries::default()),
            Err(source) => Err(RegistriesError::Io { path: path.to_path_buf(), source }),
        }
    }

    /// Parses the YAML text of a registries file; `path` names it in errors and anchors
    /// relative `ca_file` paths.
    pub fn parse(text: &str, path: &Path) -> Result<Registries, RegistriesError> {
        let invalid = |message: String| RegistriesError::Invalid { path: path.to_path_buf(), message };
        // An empty (or comment-only) file is as good as none.
        let file: File = if text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            File::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| invalid(e.to_string()))?
        };
        let mut mirrors = BTreeMap::new();
        for (registry, mirror) in file.mirrors {
            if !mirror.rewrite.is_empty() {
                return Err(invalid(format!("mirrors.{registry}.rewrite: repository rewrites are not supported")));
            }
            let endpoints = mirror
                .endpoint
                .iter()
                .map(|e| parse_endpoint(e).map_err(|m| invalid(format!("mirrors.{registry}.endpoint {e:?}: {m}"))))
                .collect::<Result<Vec<_>, _>>()?;
            mirrors.insert(normalize_registry(&registry), endpoints);
        }
        let mut configs = BTreeMap::new();
        for (host, c) in file.configs {
            let key = normalize_registry(&parse_endpoint(&host).map(|e| e.host).unwrap_or_else(|_| host.clone()));
            let at = |m: String| invalid(format!("configs.{host}.{m}"));
            let auth = match c.auth {
                None => None,
                Some(a) if a.identitytoken.is_some() => {
                    return Err(at("auth.identitytoken: identity tokens are not supported".into()));
                }
                Some(AuthFile { username: Some(username), password, .. }) => {
                    Some(RegistryAuth { username, password: password.unwrap_or_default() })
                }
                Some(AuthFile { auth: Some(encoded), .. }) => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(encoded.trim())
                        .ok()
                        .and_then(|d| String::from_utf8(d).ok())
                        .ok_or_else(|| at("auth.auth: not base64 of username:password".into()))?;
                    let (username, password) = decoded
                        .split_once(':')
                        .ok_or_else(|| at("auth.auth: not base64 of username:password".into()))?;
                    Some(RegistryAuth { username: username.into(), password: password.into() })
                }
                Some(_) => return Err(at("auth: needs username (and password) or auth".into())),
            };
            let mut config = HostConfig { auth, ..Default::default() };
            if let Some(tls) = c.tls {
                if tls.cert_file.is_some() || tls.key_file.is_some() {
                    return Err(at("tls.cert_file/key_file: client certificates are not supported".into()));
                }
                config.tls = true;
                config.insecure_skip_verify = tls.insecure_skip_verify;
                if let Some(ca) = tls.ca_file {
                    let ca = path.parent().map(|dir| dir.join(&ca)).unwrap_or(ca);
                    let pem = std::fs::read(&ca).map_err(|source| RegistriesError::Io { path: ca.clone(), source })?;
                    config.ca_pem = Some(pem);
                }
            }
            configs.insert(key, config);
        }
        Ok(Registries { mirrors, configs })
    }

    /// Where to pull an image of `registry` from, in order: its mirrors (or those of `*`), then
    /// the registry itself.
    pub fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let registry = normalize_registry(registry);
        let mut endpoints = self.mirrors.get(&registry).or_else(|| self.mirrors.get("*")).cloned().unwrap_or_default();
        let https = !is_loopback_host(&registry) || self.configs.get(&registry).is_some_and(|c| c.tls);
        let default = Endpoint { host: registry, https, is_default: true };
        // A mirror entry naming the registry itself is that registry, tried once in its place.
        endpoints.retain(|e| e.host != default.host || e.https != default.https);
        endpoints.push(default);
        endpoints
    }

    /// Credentials for `endpoint` of an image of `registry`: an imagePullSecret's (`given`) go
    /// only to the host they were chosen for (also when a mirror entry reaches that same host
    /// over plain HTTP), never to another mirror, as containerd matches them by server address;
    /// `configs` supplies the rest.
    pub fn auth_for(&self, endpoint: &Endpoint, registry: &str, given: Option<&RegistryAuth>) -> Option<RegistryAuth> {
        let configured = self.configs.get(&endpoint.host).and_then(|c| c.auth.clone());
        if endpoint.host == normalize_registry(registry) { given.cloned().or(configured) } else { configured }
    }

    /// The HTTP client settings for `endpoint`: its scheme, and the TLS settings of its host.
    pub fn client_config(&self, endpoint: &Endpoint) -> ClientConfig {
        let host = self.configs.get(&endpoint.host).cloned().unwrap_or_default();
        ClientConfig {
            protocol: if endpoint.https { ClientProtocol::Https } else { ClientProtocol::Http },
            accept_invalid_certificates: host.insecure_skip_verify,
            extra_root_certificates: host
                .ca_pem
                .into_iter()
                .map(|data| Certificate { encoding: CertificateEncoding::Pem, data })
                .collect(),
            ..Default::default()
        }
    }
}

/// `index.docker.io` and `registry-1.docker.io` are docker.io, as in image references.
fn normalize_registry(registry: &str) -> String {
    match registry {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        other => other.to_string(),
    }
}

/// `http://h:p`, `https://h:p`, `h:p` (HTTPS), with an optional `/` or `/v2` path.
fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    let (https, rest) = match text.split_once("://") {
        Some(("http", rest)) => (false, rest),
        Some(("https", rest)) => (true, rest),
        Some((scheme, _)) => return Err(format!("unsupported scheme {scheme:?}")),
        None => (true, text),
    };
    let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    if !matches!(path.trim_end_matches('/'), "" | "v2") {
        return Err(format!("endpoint paths other than /v2 are not supported (got /{path})"));
    }
    if host.is_empty() || host.contains(['@', '?', '#', ' ']) {
        return Err("expected [scheme://]host[:port]".into());
    }
    Ok(Endpoint { host: host.to_string(), https, is_default: false })
}

/// 127.0.0.0/8, `localhost` and `::1`, with or without a port.
pub fn is_loopback_host(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Registries, RegistriesError> {
        Registries::parse(text, Path::new("/etc/skiff/registries.yaml"))
    }

    fn urls(r: &Registries, registry: &str) -> Vec<String> {
        r.endpoints(registry).iter().map(Endpoint::url).collect()
    }

    #[test]
    fn mirrors_come_first_in_order_then_the_registry_itself() {
        let r = parse(
            "mirrors:\n  docker.io:\n    endpoint:\n      - http://127.0.0.1:5000\n      - mirror.example.com:8443/v2\n  \"*\":\n    endpoint: [\"https://cache.example\"]\n",
        )
        .unwrap();
        assert_eq!(
            urls(&r, "docker.io"),
            ["http://127.0.0.1:5000", "https://mirror.example.com:8443", "https://docker.io"]
        );
        assert_eq!(urls(&r, "index.docker.io"), urls(&r, "docker.io"));
        assert_eq!(urls(&r, "ghcr.io"), ["https://cache.example", "https://ghcr.io"]);
        assert!(r.endpoints("ghcr.io").last().unwrap().is_default);
        assert!(!r.endpoints("ghcr.io")[0].is_default);
    }

    #[test]
    fn loopback_registries_are_plain_http_unless_configs_give_them_tls() {
        let none = Registries::default();
        assert_eq!(urls(&none, "127.0.0.1:5000"), ["http://127.0.0.1:5000"]);
        assert_eq!(urls(&none, "localhost:5000"), ["http://localhost:5000"]);
        assert_eq!(urls(&none, "[::1]:5000"), ["http://[::1]:5000"]);
        assert_eq!(urls(&none, "10.0.0.1:5000"), ["https://10.0.0.1:5000"]);
        let tls = parse("configs:\n  \"127.0.0.1:5443\":\n    tls:\n      insecure_skip_verify: true\n").unwrap();
        assert_eq!(urls(&tls, "127.0.0.1:5443"), ["https://127.0.0.1:5443"]);
        let endpoint = &tls.endpoints("127.0.0.1:5443")[0];
        assert!(tls.client_config(endpoint).accept_invalid_certificates);
        assert!(!none.client_config(endpoint).accept_invalid_certificates);
    }

    #[test]
    fn config_credentials_apply_per_host_and_pull_secrets_never_reach_a_mirror() {
        let r = parse(
            "mirrors:\n  example.invalid:\n    endpoint: [\"http://127.0.0.1:5000\"]\nconfigs:\n  127.0.0.1:5000:\n    auth:\n      username: mirror\n      password: m1\n  example.invalid:\n    auth:\n      auth: dXNlcjpwYTpzcw==\n",
        )
        .unwrap();
        let secret = RegistryAuth { username: "secret".into(), password: "s".into() };
        let [mirror, default] = &r.endpoints("example.invalid")[..] else { panic!() };
        assert_eq!(r.auth_for(mirror, "example.invalid", Some(&secret)).unwrap().username, "mirror");
        assert_eq!(r.auth_for(default, "example.invalid", Some(&secret)), Some(secret.clone()));
        assert_eq!(
            r.auth_for(default, "example.invalid", None),
            Some(RegistryAuth { username: "user".into(), password: "pa:ss".into() }),
            "auth: is base64 of user:password, split at the first colon"
        );
        assert_eq!(r.auth_for(&r.endpoints("ghcr.io")[0], "ghcr.io", None), None);
        assert_eq!(r.auth_for(mirror, "127.0.0.1:5000", Some(&secret)), Some(secret), "the secret's own host");
    }

    #[test]
    fn a_mirror_entry_of_the_registry_itself_over_http_makes_it_plain_http_first() {
        let r = parse("mirrors:\n  \"10.0.0.5:5000\":\n    endpoint: [\"http://10.0.0.5:5000\"]\n").unwrap();
        assert_eq!(urls(&r, "10.0.0.5:5000"), ["http://10.0.0.5:5000", "https://10.0.0.5:5000"]);
        let secret = RegistryAuth { username: "secret".into(), password: "s".into() };
        let plain = &r.endpoints("10.0.0.5:5000")[0];
        assert_eq!(r.auth_for(plain, "10.0.0.5:5000", Some(&secret)), Some(secret));
        let docker = parse("configs:\n  registry-1.docker.io:\n    auth: {username: u, password: p}\n").unwrap();
        assert_eq!(docker.auth_for(&docker.endpoints("docker.io")[0], "docker.io", None).unwrap().username, "u");
    }

    #[test]
    fn an_absent_or_empty_file_means_no_mirrors() {
        let r = Registries::load(Path::new("/nonexistent/registries.yaml")).unwrap();
        assert_eq!(urls(&r, "docker.io"), ["https://docker.io"]);
        assert_eq!(urls(&parse("# nothing yet\n\n").unwrap(), "docker.io"), ["https://docker.io"]);
    }

    #[test]
    fn unsupported_settings_are_refused_with_where_they_are() {
        let err = |text: &str| parse(text).unwrap_err().to_string();
        assert!(err("mirrors:\n  docker.io:\n    endpoint: [\"ftp://x\"]\n").contains("mirrors.docker.io.endpoint"));
        assert!(err("mirrors:\n  docker.io:\n    endpoint: [\"https://x/prefix\"]\n").contains("paths"));
        assert!(err("mirrors:\n  docker.io:\n    rewrite:\n      \"^a/(.*)\": \"b/$1\"\n").contains("rewrite"));
        assert!(err("configs:\n  x.io:\n    tls:\n      cert_file: /c\n      key_file: /k\n").contains("configs.x.io"));
        assert!(err("configs:\n  x.io:\n    auth:\n      identitytoken: t\n").contains("identity"));
        assert!(err("configs:\n  x.io:\n    auth:\n      auth: \"!!\"\n").contains("base64"));
        assert!(err("mirrors: [1, 2]\n").starts_with("/etc/skiff/registries.yaml: "));
        let missing_ca = parse("configs:\n  x.io:\n    tls:\n      ca_file: /nonexistent/ca.pem\n").unwrap_err();
        assert!(missing_ca.to_string().contains("/nonexistent/ca.pem"), "{missing_ca}");
    }

    #[test]
    fn a_ca_file_is_read_at_load_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), b"-----BEGIN CERTIFICATE-----\n").unwrap();
        let r = Registries::parse(
            "configs:\n  x.io:\n    tls:\n      ca_file: ca.pem\n",
            &dir.path().join("registries.yaml"),
        )
        .unwrap();
        let config = r.client_config(&r.endpoints("x.io")[0]);
        assert_eq!(config.extra_root_certificates.len(), 1);
        assert!(matches!(config.protocol, ClientProtocol::Https));
    }
}
