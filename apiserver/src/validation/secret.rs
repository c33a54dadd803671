//! Secret rules: valid keys, and the keys each well-known type requires.

use serde_json::Value;
use skiff_api::Cause;

use super::{name_causes, names};

pub fn validate(secret: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let data = secret["data"].as_object();
    for k in data.into_iter().flatten().map(|(k, _)| k) {
        causes.extend(name_causes("data", k, names::config_key(k)));
    }
    let has = |key: &str| data.is_some_and(|d| d.contains_key(key));
    let required: &[&str] = match secret["type"].as_str().unwrap_or("Opaque") {
        "kubernetes.io/dockerconfigjson" => &[".dockerconfigjson"],
        "kubernetes.io/dockercfg" => &[".dockercfg"],
        "kubernetes.io/tls" => &["tls.crt", "tls.key"],
        "kubernetes.io/ssh-auth" => &["ssh-privatekey"],
        _ => &[],
    };
    for key in required {
        if !has(key) {
            causes.push(Cause::required(format!("data[{key}]")));
        }
    }
    causes
}
