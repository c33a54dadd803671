//! Revisions and template identity: the `pod-template-hash` label and the
//! `deployment.kubernetes.io/revision` annotation that `kubectl rollout history/undo` read.

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::PodTemplateSpec;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";
pub const TEMPLATE_HASH: &str = "pod-template-hash";

/// The alphabet Kubernetes' `rand.SafeEncodeString` maps to (no vowels, no look-alikes).
const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

/// The `pod-template-hash` of a template: FNV-32a over its canonical JSON (plus the collision
/// count), spelled with Kubernetes' safe alphabet like `7d4f8b9c6`.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(&without_hash(template)).unwrap_or_default();
    if let Some(count) = collision_count {
        bytes.extend_from_slice(&count.to_le_bytes());
    }
    fnv1a32(&bytes).to_string().bytes().map(|b| SAFE[usize::from(b) % SAFE.len()] as char).collect()
}

/// The template with any `pod-template-hash` label removed (for comparisons).
pub fn without_hash(template: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = template.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(TEMPLATE_HASH);
    }
    t
}

/// Kubernetes' `EqualIgnoreHash`: equal templates apart from the hash label.
pub fn same_template(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    without_hash(a) == without_hash(b)
}

pub fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata.annotations.as_ref().and_then(|a| a.get(REVISION)).and_then(|r| r.parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    fn template(image_label: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(BTreeMap::from([("app".to_string(), image_label.to_string())])),
                ..Default::default()
            }),
            spec: None,
        }
    }

    #[test]
    fn hash_is_stable_safe_and_ignores_its_own_label() {
        let t = template("web");
        let h = template_hash(&t, None);
        assert!(h.bytes().all(|b| SAFE.contains(&b)), "{h}");
        let mut labelled = t.clone();
        labelled.metadata.as_mut().unwrap().labels.as_mut().unwrap().insert(TEMPLATE_HASH.into(), h.clone());
        assert_eq!(template_hash(&labelled, None), h);
        assert!(same_template(&t, &labelled));
        assert_ne!(template_hash(&template("api"), None), h);
        assert_ne!(template_hash(&t, Some(1)), h);
    }
}
