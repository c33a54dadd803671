//! An event recorder for core/v1 Events, shared by the scheduler, the kubelet and the
//! controllers. Like client-go's `EventCorrelator`, repeats of one event (same object,
//! field path, type, reason, message and source) within [`DEDUP_WINDOW`] are folded into the
//! first event's `count` and `lastTimestamp` instead of creating new objects.
//!
//! Recording never fails the caller: an event is a best-effort note, so errors are logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use crate::{ApiClient, PatchKind, ResourceKind};

/// How long after the last repeat an event is still folded into its count.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// The `involvedObject` of an event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ObjectReference {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
    pub resource_version: String,
    /// `spec.containers{NAME}` for events about one container.
    pub field_path: Option<String>,
}

impl ObjectReference {
    pub fn of<K: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta>>(object: &K) -> Self {
        let meta = object.metadata();
        Self {
            api_version: K::API_VERSION.to_string(),
            kind: K::KIND.to_string(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            resource_version: meta.resource_version.clone().unwrap_or_default(),
            field_path: None,
        }
    }

    pub fn with_field_path(mut self, field_path: impl Into<String>) -> Self {
        self.field_path = Some(field_path.into());
        self
    }

    fn to_json(&self) -> Value {
        let mut v = json!({"apiVersion": self.api_version, "kind": self.kind, "name": self.name});
        if let Some(ns) = &self.namespace {
            v["namespace"] = json!(ns);
        }
        if !self.uid.is_empty() {
            v["uid"] = json!(self.uid);
        }
        if !self.resource_version.is_empty() {
            v["resourceVersion"] = json!(self.resource_version);
        }
        if let Some(fp) = &self.field_path {
            v["fieldPath"] = json!(fp);
        }
        v
    }
}

/// Who reports: `source.component`/`source.host` and `reportingComponent`/`reportingInstance`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSource {
    pub component: String,
    pub host: Option<String>,
    pub reporting_instance: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DedupKey {
    namespace: String,
    uid: String,
    name: String,
    field_path: Option<String>,
    kind: EventType,
    reason: String,
    message: String,
}

struct Seen {
    event_name: String,
    count: i64,
    last: Instant,
}

/// Writes Events through the API, folding repeats into `count`.
pub struct Recorder {
    client: Arc<dyn ApiClient>,
    source: EventSource,
    seen: Mutex<HashMap<DedupKey, Seen>>,
    last_nanos: Mutex<i128>,
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| jiff::Timestamp::now()).to_string()
}

impl Recorder {
    pub fn new(client: Arc<dyn ApiClient>, source: EventSource) -> Self {
        Self { client, source, seen: Mutex::new(HashMap::new()), last_nanos: Mutex::new(0) }
    }

    /// `<object>.<hex nanoseconds>` as client-go names events, strictly increasing per recorder so
    /// two events in one nanosecond do not collide.
    fn event_name(&self, object: &str) -> String {
        let mut last = self.last_nanos.lock().unwrap_or_else(|e| e.into_inner());
        let now = jiff::Timestamp::now().as_nanosecond().max(*last + 1);
        *last = now;
        format!("{object}.{now:x}")
    }

    pub async fn normal(&self, object: &ObjectReference, reason: &str, message: &str) {
        self.record(object, EventType::Normal, reason, message).await
    }

    pub async fn warning(&self, object: &ObjectReference, reason: &str, message: &str) {
        self.record(object, EventType::Warning, reason, message).await
    }

    pub async fn record(&self, object: &ObjectReference, kind: EventType, reason: &str, message: &str) {
        // Cluster-scoped objects (nodes) get their events in `default`, as Kubernetes does.
        let namespace = object.namespace.clone().unwrap_or_else(|| "default".to_string());
        let key = DedupKey {
            namespace: namespace.clone(),
            uid: object.uid.clone(),
            name: object.name.clone(),
            field_path: object.field_path.clone(),
            kind,
            reason: reason.to_string(),
            message: message.to_string(),
        };
        let now = now_rfc3339();
        let events = ResourceKind::by_plural("", "v1", "events").expect("events are in RESOURCES");
        let repeat = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.retain(|_, s| s.last.elapsed() < DEDUP_WINDOW);
            seen.get_mut(&key).map(|s| {
                s.count += 1;
                s.last = Instant::now();
                (s.event_name.clone(), s.count)
            })
        };
        if let Some((name, count)) = repeat {
            let patch = json!({"count": count, "lastTimestamp": now});
            match self.client.patch(events, Some(&namespace), &name, None, PatchKind::Merge, patch).await {
                Ok(_) => return,
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    tracing::warn!(%reason, "could not update event {namespace}/{name}: {e}");
                    return;
                }
            }
        }
        let name = self.event_name(&object.name);
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": object.to_json(),
            "reason": reason,
            "message": message,
            "type": kind.as_str(),
            "source": match &self.source.host {
                Some(host) => json!({"component": self.source.component, "host": host}),
                None => json!({"component": self.source.component}),
            },
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": self.source.component,
            "reportingInstance": self.source.reporting_instance,
        });
        match self.client.create(events, Some(&namespace), event).await {
            Ok(_) => {
                let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                seen.insert(key, Seen { event_name: name, count: 1, last: Instant::now() });
            }
            Err(e) => tracing::warn!(%reason, "could not record event for {}: {e}", object.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ApiError, DeleteOptions, ListOptions, ObjectList, WatchStream, WriteOptions};

    /// Records creates and patches of events.
    #[derive(Default)]
    struct Sink {
        calls: Mutex<Vec<(String, Value)>>,
    }

    #[async_trait::async_trait]
    impl ApiClient for Sink {
        async fn get(&self, _: &'static ResourceKind, _: Option<&str>, _: &str) -> Result<Value, ApiError> {
            unreachable!()
        }
        async fn list(
            &self,
            _: &'static ResourceKind,
            _: Option<&str>,
            _: &ListOptions,
        ) -> Result<ObjectList, ApiError> {
            unreachable!()
        }
        async fn watch(
            &self,
            _: &'static ResourceKind,
            _: Option<&str>,
            _: &ListOptions,
        ) -> Result<WatchStream, ApiError> {
            unreachable!()
        }
        async fn create_with(
            &self,
            _: &'static ResourceKind,
            _: Option<&str>,
            object: Value,
            _opts: &WriteOptions,
        ) -> Result<Value, ApiError> {
            self.calls.lock().unwrap().push(("create".into(), object.clone()));
            Ok(object)
        }
        async fn create_subresource_with(
            &self,
            _: &'static ResourceKind,
            _: Option<&str>,
            _: &str,
            _: &str,
            _: Value,
            _opts: &WriteOptions,
        ) -> Result<Value, ApiError> {
            unreachable!()
        }
        async fn update_with(
            &self,
            _: &'static ResourceKind,
            _: Option<&str>,
            _: &str,
            _: Option<&str>,
            _: Value,
            _opts: &WriteOptions,
        ) -> Result<Value, ApiError> {
            unreachable!()
        }
        async fn patch_with(
            &self,
            _: &'static ResourceKind,
            _: Option<&str>,
            name: &str,
            _: Option<&str>,
            _: PatchKind,
            patch: Value,
            _opts: &WriteOptions,
        ) -> Result<(Value, bool), ApiError> {
            self.calls.lock().unwrap().push((format!("patch {name}"), patch.clone()));
            Ok((patch, false))
        }
        async fn delete_with(
            &self,
            _: &'static ResourceKind,
            _: Option<&str>,
            _: &str,
            _: &DeleteOptions,
            _write: &WriteOptions,
        ) -> Result<Value, ApiError> {
            unreachable!()
        }
    }

    fn pod_ref() -> ObjectReference {
        ObjectReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            namespace: Some("default".into()),
            name: "hello".into(),
            uid: "u1".into(),
            resource_version: "7".into(),
            field_path: None,
        }
    }

    fn recorder(sink: Arc<Sink>) -> Recorder {
        Recorder::new(
            sink,
            EventSource { component: "kubelet".into(), host: Some("node1".into()), reporting_instance: "node1".into() },
        )
    }

    #[tokio::test]
    async fn repeated_events_are_folded_into_a_count() {
        let sink = Arc::new(Sink::default());
        let rec = recorder(sink.clone());
        let pod = pod_ref().with_field_path("spec.containers{app}");
        rec.warning(&pod, "BackOff", "Back-off pulling image \"x\"").await;
        rec.warning(&pod, "BackOff", "Back-off pulling image \"x\"").await;
        rec.warning(&pod, "BackOff", "Back-off pulling image \"x\"").await;
        rec.normal(&pod, "Pulling", "Pulling image \"x\"").await;
        let calls = sink.calls.lock().unwrap();
        assert_eq!(calls.len(), 4);
        let first = &calls[0].1;
        let name = first["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("hello."), "{name}");
        assert_eq!(first["involvedObject"]["fieldPath"], "spec.containers{app}");
        assert_eq!(first["source"], json!({"component": "kubelet", "host": "node1"}));
        assert_eq!(first["reportingComponent"], "kubelet");
        assert_eq!(first["type"], "Warning");
        assert_eq!(calls[1].0, format!("patch {name}"));
        assert_eq!(calls[2].1["count"], 3);
        assert_eq!(calls[3].0, "create");
        assert_ne!(calls[3].1["metadata"]["name"], first["metadata"]["name"]);
    }

    #[tokio::test]
    async fn cluster_scoped_objects_get_their_events_in_default() {
        let sink = Arc::new(Sink::default());
        let rec = recorder(sink.clone());
        let node = ObjectReference { kind: "Node".into(), name: "node1".into(), ..Default::default() };
        rec.normal(&node, "NodeReady", "Node node1 status is now: NodeReady").await;
        let calls = sink.calls.lock().unwrap();
        assert_eq!(calls[0].1["metadata"]["namespace"], "default");
        assert!(calls[0].1["involvedObject"].get("namespace").is_none());
    }
}
