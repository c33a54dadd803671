//! The API server's certificates: a self-signed CA made once, and a serving certificate signed by
//! it for every name and address a client may use. Both live as PEM files under the TLS directory
//! and are reused on restart, so kubeconfigs that trust the CA keep working; the serving
//! certificate is remade only when the set of names changes or it nears expiry.
//!
//! ```text
//! <dir>/ca.crt  ca.key             the cluster CA (10 years)
//! <dir>/serving.crt  serving.key   the API server's certificate, signed by the CA
//! <dir>/serving.json               the SANs and expiry the serving certificate was made for
//! ```

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use super::Error;

/// What the server needs to speak TLS, and what a kubeconfig needs to trust it.
pub struct Tls {
    /// The CA certificate, for `certificate-authority-data`.
    pub ca_pem: String,
    pub server_config: Arc<rustls::ServerConfig>,
}

const CA_CN: &str = "skiff-ca";
const CA_YEARS: i16 = 10;
const SERVING_YEARS: i16 = 1;
/// A serving certificate this close to expiry is remade at start.
const RENEW_BEFORE_DAYS: i64 = 30;

/// Names every serving certificate carries, on top of those the caller passes: what in-cluster
/// clients and a local kubectl use to reach the API.
const BUILTIN_SANS: &[&str] = &[
    "127.0.0.1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct ServingRecord {
    sans: Vec<String>,
    /// Unix seconds.
    not_after: i64,
}

/// Loads the CA and serving certificate under `dir`, making whatever is missing or stale.
/// `sans` are extra names and IPs (hostname, node IPs, the kubernetes service IP).
pub fn load_or_create_tls(dir: &Path, sans: &[String]) -> Result<Tls, Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
    let sans = all_sans(sans);

    let (ca_cert_pem, ca_key) = load_or_create_ca(dir)?;
    let ca_issuer = Issuer::new(ca_params(), ca_key);

    let record_path = dir.join("serving.json");
    let cert_path = dir.join("serving.crt");
    let key_path = dir.join("serving.key");
    let now = jiff::Timestamp::now().as_second();
    let fresh = read_optional(&record_path)?
        .and_then(|text| serde_json::from_str::<ServingRecord>(&text).ok())
        .is_some_and(|rec| rec.sans == sans && rec.not_after - now > RENEW_BEFORE_DAYS * 86_400)
        && cert_path.exists()
        && key_path.exists();
    if !fresh {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans.clone())?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "kube-apiserver");
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let (window, not_after) = validity(SERVING_YEARS)?;
        window.apply(&mut params);
        let cert = params.signed_by(&key, &ca_issuer)?;
        // The chain carries the CA too, so clients that only know the CA by fingerprint cope.
        crate::atomic_file::write(&cert_path, format!("{}{}", cert.pem(), ca_cert_pem).as_bytes(), 0o644)?;
        crate::atomic_file::write(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        let record = ServingRecord { sans, not_after };
        let json = serde_json::to_vec_pretty(&record).expect("a record of strings and numbers serialises");
        crate::atomic_file::write(&record_path, &json, 0o644)?;
    }

    let chain_pem = std::fs::read(&cert_path).map_err(|source| Error::Io { path: cert_path.clone(), source })?;
    let chain = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem { path: cert_path.clone(), message: e.to_string() })?;
    let key_pem = std::fs::read(&key_path).map_err(|source| Error::Io { path: key_path.clone(), source })?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| Error::Pem { path: key_path.clone(), message: e.to_string() })?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    // HTTP/1.1 only: exec and port-forward upgrade the connection, which HTTP/2 cannot carry, and
    // Go clients would pick h2 whenever it is offered.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls { ca_pem: ca_cert_pem, server_config: Arc::new(config) })
}

fn all_sans(extra: &[String]) -> Vec<String> {
    let mut set: BTreeSet<String> = BUILTIN_SANS.iter().map(|s| s.to_string()).collect();
    if let Ok(hostname) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let hostname = hostname.trim();
        if !hostname.is_empty() {
            set.insert(hostname.to_lowercase());
        }
    }
    set.extend(extra.iter().map(|s| s.trim().to_lowercase()).filter(|s| !s.is_empty()));
    set.into_iter().collect()
}

/// The CA's parameters. They are rebuilt identically on every start: an issuer needs only the
/// subject name and the key, so the CA certificate never has to be parsed back.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_CN);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn load_or_create_ca(dir: &Path) -> Result<(String, KeyPair), Error> {
    let cert_path = dir.join("ca.crt");
    let key_path = dir.join("ca.key");
    if let (Some(cert), Some(key)) = (read_optional(&cert_path)?, read_optional(&key_path)?) {
        let key = KeyPair::from_pem(&key).map_err(|e| Error::Pem { path: key_path, message: e.to_string() })?;
        return Ok((cert, key));
    }
    let key = KeyPair::generate()?;
    let mut params = ca_params();
    validity(CA_YEARS)?.0.apply(&mut params);
    let cert = params.self_signed(&key)?;
    // Key first: a crash between the two writes leaves no certificate without its key.
    crate::atomic_file::write(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    crate::atomic_file::write(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok((cert.pem(), key))
}

/// Day-granular validity (what rcgen takes without the `time` crate): from yesterday, to tolerate
/// clock skew between machines, to `years` from today. Also returns the end as Unix seconds.
fn validity(years: i16) -> Result<(Validity, i64), Error> {
    let today = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date();
    let start = today.yesterday().map_err(|e| Error::Time(e.to_string()))?;
    let end = today.checked_add(jiff::Span::new().years(years)).map_err(|e| Error::Time(e.to_string()))?;
    let end_secs =
        end.to_zoned(jiff::tz::TimeZone::UTC).map_err(|e| Error::Time(e.to_string()))?.timestamp().as_second();
    Ok((Validity { start, end }, end_secs))
}

struct Validity {
    start: jiff::civil::Date,
    end: jiff::civil::Date,
}

impl Validity {
    fn apply(&self, params: &mut CertificateParams) {
        let ymd = |d: jiff::civil::Date| rcgen::date_time_ymd(d.year().into(), d.month() as u8, d.day() as u8);
        params.not_before = ymd(self.start);
        params.not_after = ymd(self.end);
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io { path: path.to_path_buf(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn cert_of(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("serving.crt")).unwrap()
    }

    #[test]
    fn certificates_are_made_once_and_reused_on_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_tls(dir.path(), &["10.43.0.1".into()]).unwrap();
        let serving = cert_of(dir.path());
        let second = load_or_create_tls(dir.path(), &["10.43.0.1".into()]).unwrap();
        assert_eq!(first.ca_pem, second.ca_pem);
        assert_eq!(serving, cert_of(dir.path()));
        let mode = std::fs::metadata(dir.path().join("ca.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mode = std::fs::metadata(dir.path().join("serving.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_new_san_remakes_only_the_serving_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_tls(dir.path(), &[]).unwrap();
        let serving = cert_of(dir.path());
        let second = load_or_create_tls(dir.path(), &["192.168.7.7".into()]).unwrap();
        assert_eq!(first.ca_pem, second.ca_pem);
        assert_ne!(serving, cert_of(dir.path()));
        let record: ServingRecord =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("serving.json")).unwrap()).unwrap();
        assert!(record.sans.contains(&"192.168.7.7".to_string()));
        assert!(record.sans.contains(&"kubernetes.default.svc".to_string()));
    }
}
