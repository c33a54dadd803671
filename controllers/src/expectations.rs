//! Creates and deletes a controller has issued but its informer has not seen yet (Kubernetes'
//! `ControllerExpectations`). Until the cache catches up, acting again on the stale cache would
//! create or delete twice, so `manage` waits. Expectations are remembered by the uids the API
//! returned, and expire after [`EXPIRY`] so a lost watch event cannot wedge a controller.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use skiff_api::{ObjectKey, Store};

pub const EXPIRY: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Pending {
    /// Pods created: (key, uid); satisfied once the store holds them.
    creates: Vec<(ObjectKey, String)>,
    /// Pods deleted: (key, uid); satisfied once the store no longer holds them live.
    deletes: Vec<(ObjectKey, String)>,
    since: Option<Instant>,
}

#[derive(Default)]
pub struct Expectations {
    pending: Mutex<HashMap<ObjectKey, Pending>>,
}

impl Expectations {
    fn with<R>(&self, owner: &ObjectKey, f: impl FnOnce(&mut Pending) -> R) -> R {
        let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(owner.clone()).or_default();
        entry.since.get_or_insert_with(Instant::now);
        f(entry)
    }

    pub fn created(&self, owner: &ObjectKey, pod: &Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.with(owner, |p| p.creates.push((ObjectKey::of(pod), uid)));
    }

    pub fn deleted(&self, owner: &ObjectKey, pod: &Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.with(owner, |p| p.deletes.push((ObjectKey::of(pod), uid)));
    }

    pub fn forget(&self, owner: &ObjectKey) {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(owner);
    }

    /// True when the store reflects every create and delete issued for `owner` (or they expired).
    pub fn satisfied(&self, owner: &ObjectKey, pods: &Store<Pod>) -> bool {
        let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pending) = map.get_mut(owner) else { return true };
        let live_uid = |key: &ObjectKey| {
            pods.get(key).filter(|p| p.metadata.deletion_timestamp.is_none()).and_then(|p| p.metadata.uid.clone())
        };
        let any_uid = |key: &ObjectKey| pods.get(key).and_then(|p| p.metadata.uid.clone());
        pending.creates.retain(|(key, uid)| any_uid(key).as_ref() != Some(uid));
        pending.deletes.retain(|(key, uid)| live_uid(key).as_ref() == Some(uid));
        let done = pending.creates.is_empty() && pending.deletes.is_empty();
        let expired = pending.since.is_some_and(|s| s.elapsed() > EXPIRY);
        if done || expired {
            map.remove(owner);
            return true;
        }
        false
    }
}
