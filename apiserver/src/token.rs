//! Service account tokens: Kubernetes' bound tokens (KEP-1205), issued by the TokenRequest
//! subresource (`POST …/serviceaccounts/{name}/token`) and accepted as bearer tokens.
//!
//! A token is a JWS (ES256, compact form) signed with one P-256 key kept at
//! `<data-dir>/tls/service-account.key` (PKCS#8 PEM, mode 0600, made on first start and reused,
//! so tokens survive a restart). Its claims are those kube-apiserver puts in a bound token:
//!
//! ```text
//! aud  exp  iat  iss  jti  nbf  sub = system:serviceaccount:<ns>:<name>
//! kubernetes.io: { namespace, serviceaccount {name, uid}, pod? {name, uid}, node? {name, uid},
//!                  secret? {name, uid}, warnafter? }
//! ```
//!
//! A token authenticates while its signature, `nbf` and `exp` hold, its audiences include the
//! API's, and the objects it names still exist with the same UIDs (so deleting the pod or the
//! service account revokes it). Skiff has no authorization layer: an authenticated service
//! account may do anything the admin token may.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use skiff_api::{ApiClient, ApiError, Cause, ResourceKind, StatusReason};

use crate::registry::object::{timestamp, uuid_v4};

/// The issuer (and default audience) of Kubernetes' tokens under the default cluster domain.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// TokenRequest's default lifetime and bounds (`MinTokenAgeSec`, `MaxTokenAgeSec`).
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
pub const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;
/// What the ServiceAccount admission plugin asks for: kube-apiserver gives a pod-bound token of
/// exactly this lifetime a year of validity and a `warnafter` at the asked time, so clients that
/// never reload their token keep working while the kubelet refreshes it on schedule.
pub const WARN_ONLY_EXPIRATION_SECONDS: i64 = 3607;
const EXTENDED_EXPIRATION_SECONDS: i64 = 365 * 24 * 3600;
/// Verified tokens remembered so a request costs a map lookup, not an ECDSA verification.
const VERIFIED_CACHE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a P-256 PKCS#8 private key: {message}")]
    Key { path: PathBuf, message: String },
}

impl From<crate::atomic_file::WriteError> for Error {
    fn from(e: crate::atomic_file::WriteError) -> Self {
        Error::Io { path: e.path, source: e.source }
    }
}

/// Why a bearer token was refused (logged; the client only ever sees 401 Unauthorized).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("not a JWS in compact form")]
    Malformed,
    #[error("unsupported signing algorithm")]
    Algorithm,
    #[error("signature does not verify")]
    Signature,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token has expired")]
    Expired,
    #[error("token is not meant for this API server")]
    Audience,
    #[error("{0}")]
    Revoked(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub name: String,
    pub uid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaims {
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectRef>,
    pub serviceaccount: ObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnafter: Option<i64>,
}

/// The claims of a bound service account token, in the order kube-apiserver writes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub iss: String,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
    pub nbf: i64,
    pub sub: String,
}

/// The user name of a service account, as Kubernetes' `MakeUsername`.
pub fn username(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// Signs and verifies service account tokens with one key.
pub struct TokenIssuer {
    key: EcdsaKeyPair,
    /// The key ID in every token header, as Kubernetes derives it: a hash of the public key.
    kid: String,
    issuer: String,
    rng: SystemRandom,
    verified: Mutex<HashMap<String, Claims>>,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer").field("kid", &self.kid).field("issuer", &self.issuer).finish()
    }
}

impl TokenIssuer {
    /// Loads the signing key at `path`, making it first if there is none.
    pub fn load_or_create(path: &Path, issuer: &str) -> Result<TokenIssuer, Error> {
        let rng = SystemRandom::new();
        let key_err = |message: String| Error::Key { path: path.to_path_buf(), message };
        let pkcs8 = match std::fs::read(path) {
            Ok(pem) => match PrivateKeyDer::from_pem_slice(&pem).map_err(|e| key_err(e.to_string()))? {
                PrivateKeyDer::Pkcs8(der) => der.secret_pkcs8_der().to_vec(),
                _ => return Err(key_err("expected a PKCS#8 \"PRIVATE KEY\"".into())),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| key_err("generating a key failed".into()))?;
                let pem = pkcs8_pem(doc.as_ref());
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
                }
                crate::atomic_file::write(path, pem.as_bytes(), 0o600)?;
                doc.as_ref().to_vec()
            }
            Err(source) => return Err(Error::Io { path: path.to_path_buf(), source }),
        };
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .map_err(|e| key_err(e.to_string()))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        let kid = B64.encode(digest.as_ref());
        Ok(TokenIssuer { key, kid, issuer: issuer.to_string(), rng, verified: Mutex::new(HashMap::new()) })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audiences the API itself accepts (kube-apiserver's `--api-audiences` default).
    pub fn api_audiences(&self) -> Vec<String> {
        vec![self.issuer.clone()]
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let header = B64.encode(serde_json::to_vec(&header).expect("a JSON header serialises"));
        let payload = B64.encode(serde_json::to_vec(claims).expect("claims of strings and numbers serialise"));
        let signing_input = format!("{header}.{payload}");
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .expect("ECDSA signing fails only when the system RNG does");
        format!("{signing_input}.{}", B64.encode(signature.as_ref()))
    }

    /// Checks the signature and the time window at `now` (Unix seconds); a token verified
    /// before is not verified again, but its time window is.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, Invalid> {
        let cached = self.verified.lock().expect("token cache lock poisoned").get(token).cloned();
        let claims = match cached {
            Some(claims) => claims,
            None => {
                let claims = self.verify_signature(token)?;
                let mut cache = self.verified.lock().expect("token cache lock poisoned");
                if cache.len() >= VERIFIED_CACHE {
                    cache.retain(|_, c| c.exp > now);
                    if cache.len() >= VERIFIED_CACHE {
                        cache.clear();
                    }
                }
                cache.insert(token.to_string(), claims.clone());
                claims
            }
        };
        if now < claims.nbf {
            return Err(Invalid::NotYetValid);
        }
        if now >= claims.exp {
            return Err(Invalid::Expired);
        }
        Ok(claims)
    }

    fn verify_signature(&self, token: &str) -> Result<Claims, Invalid> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Invalid::Malformed);
        };
        let header: Value = serde_json::from_slice(&B64.decode(header).map_err(|_| Invalid::Malformed)?)
            .map_err(|_| Invalid::Malformed)?;
        // Only ever ES256: trusting the header's algorithm is the classic JWT forgery ("none").
        if header["alg"] != "ES256" {
            return Err(Invalid::Algorithm);
        }
        let signature = B64.decode(signature).map_err(|_| Invalid::Malformed)?;
        let signed = &token[..header_len(token)];
        ring::signature::UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref())
            .verify(signed.as_bytes(), &signature)
            .map_err(|_| Invalid::Signature)?;
        let payload = B64.decode(payload).map_err(|_| Invalid::Malformed)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| Invalid::Malformed)?;
        if claims.iss != self.issuer {
            return Err(Invalid::Signature);
        }
        Ok(claims)
    }

    /// Authenticates a bearer token against the live objects (kube-apiserver's legacy and
    /// bound token validator): the service account, and the pod, secret or node it is bound
    /// to, must still exist with the UIDs the token names.
    pub async fn authenticate(&self, api: &dyn ApiClient, token: &str) -> Result<Claims, Invalid> {
        let claims = self.verify(token, jiff::Timestamp::now().as_second())?;
        if !claims.aud.iter().any(|a| *a == self.issuer) {
            return Err(Invalid::Audience);
        }
        let k = &claims.kubernetes;
        let ns = k.namespace.as_str();
        check_object(api, "serviceaccounts", Some(ns), &k.serviceaccount).await?;
        if let Some(pod) = &k.pod {
            check_object(api, "pods", Some(ns), pod).await?;
        }
        if let Some(secret) = &k.secret {
            check_object(api, "secrets", Some(ns), secret).await?;
        }
        // A node claim is informative only when a pod is the bound object, as in Kubernetes.
        if let (None, Some(node)) = (&k.pod, &k.node) {
            check_object(api, "nodes", None, node).await?;
        }
        Ok(claims)
    }
}

/// The length of `header.payload`, the signing input of a compact JWS.
fn header_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(0)
}

async fn check_object(api: &dyn ApiClient, plural: &str, ns: Option<&str>, want: &ObjectRef) -> Result<(), Invalid> {
    let res = core(plural);
    match api.get(res, ns, &want.name).await {
        Ok(object) if object["metadata"]["uid"] == want.uid.as_str() => Ok(()),
        Ok(object) => Err(Invalid::Revoked(format!(
            "{} UID ({}) does not match claim ({})",
            res.kind,
            object["metadata"]["uid"].as_str().unwrap_or_default(),
            want.uid
        ))),
        Err(e) if e.is_not_found() => Err(Invalid::Revoked(format!("{} \"{}\" not found", res.plural, want.name))),
        Err(e) => Err(Invalid::Revoked(format!("looking up {} \"{}\": {}", res.plural, want.name, e.message))),
    }
}

fn core(plural: &str) -> &'static ResourceKind {
    ResourceKind::by_plural("", "v1", plural).expect("core resource is in skiff_api::RESOURCES")
}

fn pkcs8_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

// ---- TokenRequest ----

fn token_request_invalid(name: &str, cause: Cause) -> ApiError {
    let mut err = ApiError::new(
        422,
        StatusReason::Invalid,
        format!("TokenRequest.authentication.k8s.io \"{name}\" is invalid: {}: {}", cause.field, cause.message),
    );
    err.name = Some(name.to_string());
    err.group = Some("authentication.k8s.io".into());
    err.kind = Some("TokenRequest".into());
    err.causes = vec![cause];
    err
}

/// The objects a TokenRequest reads, looked up by the caller (the registry, from its store).
pub trait Lookup {
    fn get(&self, res: &'static ResourceKind, namespace: Option<&str>, name: &str) -> Result<Option<Value>, ApiError>;
}

fn object_ref(object: &Value) -> ObjectRef {
    ObjectRef {
        name: object["metadata"]["name"].as_str().unwrap_or_default().to_string(),
        uid: object["metadata"]["uid"].as_str().unwrap_or_default().to_string(),
    }
}

/// Answers `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token` (kube-apiserver's
/// `TokenREST.Create`): the TokenRequest with `status.token` and `status.expirationTimestamp`.
pub fn request(
    issuer: &TokenIssuer,
    lookup: &dyn Lookup,
    ns: &str,
    name: &str,
    body: &Value,
    now: jiff::Timestamp,
) -> Result<Value, ApiError> {
    let mut spec = body["spec"].clone();
    if !spec.is_object() {
        spec = json!({});
    }
    let expiration = match &spec["expirationSeconds"] {
        Value::Null => DEFAULT_EXPIRATION_SECONDS,
        v => v.as_i64().ok_or_else(|| ApiError::bad_request("spec.expirationSeconds must be an integer"))?,
    };
    if expiration < MIN_EXPIRATION_SECONDS {
        return Err(token_request_invalid(
            name,
            Cause::invalid("spec.expirationSeconds", expiration, "may not specify a duration less than 10 minutes"),
        ));
    }
    if expiration > MAX_EXPIRATION_SECONDS {
        return Err(token_request_invalid(
            name,
            Cause::invalid("spec.expirationSeconds", expiration, "may not specify a duration larger than 2^32 seconds"),
        ));
    }
    spec["expirationSeconds"] = json!(expiration);
    let mut audiences: Vec<String> = spec["audiences"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default();
    if audiences.is_empty() {
        audiences = issuer.api_audiences();
    }
    spec["audiences"] = json!(audiences);

    let accounts = core("serviceaccounts");
    let sa = lookup.get(accounts, Some(ns), name)?.ok_or_else(|| ApiError::not_found(accounts, name))?;
    let (mut pod, mut secret, mut node) = (None, None, None);
    if let Some(bound) = spec["boundObjectRef"].as_object().filter(|b| !b.is_empty()) {
        let kind = bound.get("kind").and_then(Value::as_str).unwrap_or_default();
        let api_version = bound.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        let bound_name = bound.get("name").and_then(Value::as_str).unwrap_or_default();
        let (plural, scope) = match (api_version, kind) {
            ("v1", "Pod") => ("pods", Some(ns)),
            ("v1", "Secret") => ("secrets", Some(ns)),
            ("v1", "Node") => ("nodes", None),
            _ => {
                let group = api_version.split_once('/').map(|(g, _)| g).unwrap_or("");
                let version = api_version.rsplit('/').next().unwrap_or("");
                return Err(ApiError::bad_request(format!(
                    "cannot bind token for object of type {group}/{version}, Kind={kind}"
                )));
            }
        };
        let res = core(plural);
        let object = lookup.get(res, scope, bound_name)?.ok_or_else(|| ApiError::not_found(res, bound_name))?;
        let want_uid = bound.get("uid").and_then(Value::as_str).unwrap_or_default();
        if !want_uid.is_empty() && object["metadata"]["uid"] != want_uid {
            let mut err = ApiError::new(
                409,
                StatusReason::Conflict,
                format!(
                    "Operation cannot be fulfilled on {kind} \"{bound_name}\": the UID in the bound object reference \
                     ({want_uid}) does not match the UID in record. The object might have been deleted and then recreated"
                ),
            );
            err.name = Some(bound_name.to_string());
            err.kind = Some(kind.to_string());
            return Err(err);
        }
        match kind {
            "Pod" => {
                // The node the pod runs on, when known: informative, never a reason to refuse.
                if let Some(node_name) = object["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
                    node = lookup.get(core("nodes"), None, node_name)?.map(|n| object_ref(&n));
                }
                pod = Some(object_ref(&object));
            }
            "Secret" => secret = Some(object_ref(&object)),
            _ => node = Some(object_ref(&object)),
        }
    }

    // Kubernetes' safe transition for projected tokens (`--service-account-extend-token-expiration`).
    let (mut lifetime, mut warnafter) = (expiration, None);
    if pod.is_some() && expiration == WARN_ONLY_EXPIRATION_SECONDS && audiences == issuer.api_audiences() {
        warnafter = Some(now.as_second() + expiration);
        lifetime = EXTENDED_EXPIRATION_SECONDS;
    }
    let iat = now.as_second();
    let claims = Claims {
        aud: audiences,
        exp: iat + lifetime,
        iat,
        iss: issuer.issuer().to_string(),
        jti: uuid_v4(),
        kubernetes: KubernetesClaims {
            namespace: ns.to_string(),
            node,
            pod,
            secret,
            serviceaccount: object_ref(&sa),
            warnafter,
        },
        nbf: iat,
        sub: username(ns, name),
    };
    let token = issuer.sign(&claims);
    let expires = jiff::Timestamp::from_second(iat + expiration).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut metadata = body["metadata"].as_object().cloned().unwrap_or_default();
    metadata.insert("name".into(), json!(name));
    metadata.insert("namespace".into(), json!(ns));
    metadata.entry("creationTimestamp").or_insert(Value::Null);
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": metadata,
        "spec": spec,
        "status": {"token": token, "expirationTimestamp": timestamp(expires)},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn issuer(dir: &Path) -> TokenIssuer {
        TokenIssuer::load_or_create(&dir.join("tls/service-account.key"), ISSUER).unwrap()
    }

    fn claims(now: i64) -> Claims {
        Claims {
            aud: vec![ISSUER.into()],
            exp: now + 3600,
            iat: now,
            iss: ISSUER.into(),
            jti: uuid_v4(),
            kubernetes: KubernetesClaims {
                namespace: "default".into(),
                node: None,
                pod: Some(ObjectRef { name: "web".into(), uid: "pod-uid".into() }),
                secret: None,
                serviceaccount: ObjectRef { name: "default".into(), uid: "sa-uid".into() },
                warnafter: None,
            },
            nbf: now,
            sub: username("default", "default"),
        }
    }

    struct Objects(Vec<Value>);

    impl Lookup for Objects {
        fn get(&self, res: &'static ResourceKind, ns: Option<&str>, name: &str) -> Result<Option<Value>, ApiError> {
            Ok(self
                .0
                .iter()
                .find(|o| {
                    o["kind"] == res.kind && o["metadata"]["name"] == name && o["metadata"]["namespace"].as_str() == ns
                })
                .cloned())
        }
    }

    fn objects() -> Objects {
        Objects(vec![
            json!({"kind": "ServiceAccount", "metadata": {"name": "default", "namespace": "ns1", "uid": "sa-1"}}),
            json!({"kind": "Pod", "metadata": {"name": "web", "namespace": "ns1", "uid": "pod-1"},
                   "spec": {"nodeName": "node1"}}),
            json!({"kind": "Node", "metadata": {"name": "node1", "uid": "node-1"}}),
        ])
    }

    #[test]
    fn a_signed_token_verifies_and_carries_its_claims() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = issuer(dir.path());
        let now = 1_800_000_000;
        let signed = claims(now);
        let token = issuer.sign(&signed);
        assert_eq!(token.split('.').count(), 3);
        let header: Value = serde_json::from_slice(&B64.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(issuer.verify(&token, now + 10).unwrap(), signed);
        let payload: Value = serde_json::from_slice(&B64.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap();
        assert_eq!(payload["kubernetes.io"]["pod"]["uid"], "pod-uid");
        assert!(payload["kubernetes.io"].get("node").is_none(), "absent references are left out");
    }

    #[test]
    fn tokens_outside_their_time_window_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = issuer(dir.path());
        let now = 1_800_000_000;
        let token = issuer.sign(&claims(now));
        assert_eq!(issuer.verify(&token, now - 1), Err(Invalid::NotYetValid));
        assert!(issuer.verify(&token, now + 3599).is_ok());
        assert_eq!(issuer.verify(&token, now + 3600), Err(Invalid::Expired), "a cached token still expires");
    }

    #[test]
    fn a_tampered_payload_or_another_key_or_alg_none_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let issuer1 = issuer(dir.path());
        let now = 1_800_000_000;
        let token = issuer1.sign(&claims(now));
        let parts: Vec<&str> = token.split('.').collect();
        let mut forged = claims(now);
        forged.kubernetes.namespace = "kube-system".into();
        let forged_payload = B64.encode(serde_json::to_vec(&forged).unwrap());
        let tampered = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
        assert_eq!(issuer1.verify(&tampered, now), Err(Invalid::Signature));
        let none = format!("{}.{}.", B64.encode(br#"{"alg":"none"}"#), parts[1]);
        assert_eq!(issuer1.verify(&none, now), Err(Invalid::Algorithm));
        assert_eq!(issuer1.verify("not-a-token", now), Err(Invalid::Malformed));
        let other = tempfile::tempdir().unwrap();
        assert_eq!(issuer(other.path()).verify(&token, now), Err(Invalid::Signature));
    }

    #[test]
    fn the_key_is_made_once_private_and_reused_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = issuer(dir.path());
        let path = dir.path().join("tls/service-account.key");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let token = first.sign(&claims(1_800_000_000));
        let second = issuer(dir.path());
        assert_eq!(first.kid, second.kid);
        assert!(second.verify(&token, 1_800_000_001).is_ok(), "tokens survive a restart");
    }

    #[test]
    fn a_token_request_is_defaulted_and_bound_to_the_pod_and_its_node() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = issuer(dir.path());
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let body = json!({"spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "web"}}});
        let tr = request(&issuer, &objects(), "ns1", "default", &body, now).unwrap();
        assert_eq!(tr["kind"], "TokenRequest");
        assert_eq!(tr["spec"]["audiences"], json!([ISSUER]));
        assert_eq!(tr["spec"]["expirationSeconds"], 3600);
        assert_eq!(tr["status"]["expirationTimestamp"], "2027-01-15T09:00:00Z");
        let claims = issuer.verify(tr["status"]["token"].as_str().unwrap(), 1_800_000_001).unwrap();
        assert_eq!(claims.sub, "system:serviceaccount:ns1:default");
        assert_eq!(claims.exp - claims.iat, 3600);
        assert_eq!(claims.kubernetes.serviceaccount, ObjectRef { name: "default".into(), uid: "sa-1".into() });
        assert_eq!(claims.kubernetes.pod, Some(ObjectRef { name: "web".into(), uid: "pod-1".into() }));
        assert_eq!(claims.kubernetes.node, Some(ObjectRef { name: "node1".into(), uid: "node-1".into() }));
        assert_eq!(claims.kubernetes.warnafter, None);
    }

    #[test]
    fn a_projected_pod_token_gets_the_extended_lifetime_with_a_warning_time() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = issuer(dir.path());
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let body = json!({"spec": {"expirationSeconds": 3607,
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "web", "uid": "pod-1"}}});
        let tr = request(&issuer, &objects(), "ns1", "default", &body, now).unwrap();
        let claims = issuer.verify(tr["status"]["token"].as_str().unwrap(), 1_800_000_001).unwrap();
        assert_eq!(claims.kubernetes.warnafter, Some(1_800_003_607));
        assert_eq!(claims.exp - claims.iat, EXTENDED_EXPIRATION_SECONDS);
        assert_eq!(tr["status"]["expirationTimestamp"], "2027-01-15T09:00:07Z", "the status keeps the asked lifetime");
    }

    #[test]
    fn token_requests_are_refused_as_kubernetes_refuses_them() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = issuer(dir.path());
        let now = jiff::Timestamp::now();
        let short = json!({"spec": {"expirationSeconds": 599}});
        let err = request(&issuer, &objects(), "ns1", "default", &short, now).unwrap_err();
        assert_eq!((err.code, err.reason), (422, StatusReason::Invalid));
        assert_eq!(
            err.message,
            "TokenRequest.authentication.k8s.io \"default\" is invalid: spec.expirationSeconds: Invalid value: 599: \
             may not specify a duration less than 10 minutes"
        );
        let err = request(&issuer, &objects(), "ns1", "nobody", &json!({}), now).unwrap_err();
        assert_eq!((err.code, err.message.as_str()), (404, "serviceaccounts \"nobody\" not found"));
        let gone = json!({"spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "gone"}}});
        assert_eq!(request(&issuer, &objects(), "ns1", "default", &gone, now).unwrap_err().code, 404);
        let stale = json!({"spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "web", "uid": "x"}}});
        assert_eq!(request(&issuer, &objects(), "ns1", "default", &stale, now).unwrap_err().code, 409);
        let cm = json!({"spec": {"boundObjectRef": {"kind": "ConfigMap", "apiVersion": "v1", "name": "c"}}});
        assert_eq!(request(&issuer, &objects(), "ns1", "default", &cm, now).unwrap_err().code, 400);
    }
}
