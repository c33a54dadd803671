//! The status manager: writes a pod's generated status through `pods/status`, only when it
//! differs from what was last written (or, before the first write, from what the API holds).
//!
//! It owns a fixed set of status fields and writes them as a JSON merge patch, so fields owned
//! by others (`qosClass`, set at admission; `nominatedNodeName`) are left alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use serde_json::{Map, Value, json};
use skiff_api::{ApiClient, ApiError, PatchKind, ResourceKind};

/// The status fields the kubelet owns.
const OWNED: &[&str] = &[
    "phase",
    "conditions",
    "initContainerStatuses",
    "containerStatuses",
    "startTime",
    "hostIP",
    "hostIPs",
    "podIP",
    "podIPs",
    "reason",
    "message",
];

/// The kubelet-owned part of a status, as JSON.
pub fn owned_fields(status: &PodStatus) -> Value {
    let full = serde_json::to_value(status).unwrap_or_default();
    let mut out = Map::new();
    for key in OWNED {
        if let Some(v) = full.get(*key) {
            out.insert(key.to_string(), v.clone());
        }
    }
    Value::Object(out)
}

pub struct StatusManager {
    client: Arc<dyn ApiClient>,
    /// The owned fields last written, by pod UID.
    written: Mutex<HashMap<String, Value>>,
}

impl StatusManager {
    pub fn new(client: Arc<dyn ApiClient>) -> Self {
        Self { client, written: Mutex::new(HashMap::new()) }
    }

    /// Writes `status` for `pod` if it changed. Returns whether a write happened.
    pub async fn set(&self, pod: &Pod, status: &PodStatus) -> Result<bool, ApiError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let new = owned_fields(status);
        let current = {
            let written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            written.get(&uid).cloned()
        };
        let current = current.unwrap_or_else(|| owned_fields(&pod.status.clone().unwrap_or_default()));
        if current == new {
            return Ok(false);
        }
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let pods = ResourceKind::of::<Pod>();
        self.client
            .patch(pods, Some(namespace), name, Some("status"), PatchKind::Merge, json!({"status": new}))
            .await?;
        self.written.lock().unwrap_or_else(|e| e.into_inner()).insert(uid, new);
        Ok(true)
    }

    pub fn forget(&self, uid: &str) {
        self.written.lock().unwrap_or_else(|e| e.into_inner()).remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_fields_leave_qos_class_alone() {
        let status: PodStatus =
            serde_json::from_value(json!({"phase": "Running", "qosClass": "BestEffort", "hostIP": "1.2.3.4"})).unwrap();
        assert_eq!(owned_fields(&status), json!({"phase": "Running", "hostIP": "1.2.3.4"}));
    }
}
