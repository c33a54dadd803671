//! A watch-driven cache of one resource: list, then watch from the list's resourceVersion, and on
//! `410 Expired` list again (kube-rs `watcher` + `reflector`, client-go's Reflector).
//!
//! The informer task is the only writer of its [`Store`]; readers clone the store cheaply and
//! read it without talking to the API. Each change is also sent as an [`InformerEvent`], so a
//! component turns events into work-queue keys and reads the objects back from the store.
//!
//! ```no_run
//! # async fn demo(client: std::sync::Arc<dyn skiff_api::ApiClient>) {
//! use skiff_api::{Informer, InformerEvent, ListOptions, k8s::api::core::v1::Pod};
//! let (store, mut events, _handle) = Informer::<Pod>::new(client, None, ListOptions::fields("spec.nodeName=")).spawn();
//! while let Some(event) = events.recv().await {
//!     if let InformerEvent::Synced = event {
//!         println!("{} unscheduled pods", store.len());
//!     }
//! }
//! # }
//! ```
//!
//! Life of an informer, as one enum ([`Phase`]): `Listing` → `Watching { rv }` → (stream ends:
//! `Watching` again from the last seen rv | `410`: `Listing` | other error: back off, then the
//! phase it failed in). A re-list replaces the store and reports what vanished as deletes, so
//! consumers never miss a delete that happened while the watch was down.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::{ApiClient, ApiError, ListOptions, ResourceKind, WatchEventType};

/// Names one object: `namespace/name`, or `name` for cluster-scoped ones.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: Option<&str>, name: &str) -> Self {
        Self { namespace: namespace.map(String::from), name: name.to_string() }
    }

    pub fn namespaced(namespace: &str, name: &str) -> Self {
        Self::new(Some(namespace), name)
    }

    pub fn cluster(name: &str) -> Self {
        Self::new(None, name)
    }

    /// The key of an object, from its metadata.
    pub fn of<K: k8s_openapi::Metadata<Ty = ObjectMeta>>(object: &K) -> Self {
        let meta = object.metadata();
        Self { namespace: meta.namespace.clone(), name: meta.name.clone().unwrap_or_default() }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A read-only view of a cache, cheap to clone; every clone sees the writer's changes.
pub struct Store<K> {
    inner: Arc<RwLock<StoreState<K>>>,
}

struct StoreState<K> {
    objects: HashMap<ObjectKey, Arc<K>>,
    synced: bool,
}

impl<K> Clone for Store<K> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<K> Store<K> {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, StoreState<K>> {
        // A panicking writer leaves a map that is still whole (each write is one insert/remove).
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: &ObjectKey) -> Option<Arc<K>> {
        self.read().objects.get(key).cloned()
    }

    /// Every object, in no particular order.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.read().objects.values().cloned().collect()
    }

    pub fn keys(&self) -> Vec<ObjectKey> {
        self.read().objects.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().objects.is_empty()
    }

    /// True once the first list has filled the store.
    pub fn is_synced(&self) -> bool {
        self.read().synced
    }
}

/// The one writer of a [`Store`]. The informer owns it; tests seed stores through it.
pub struct Writer<K> {
    store: Store<K>,
}

impl<K> Default for Writer<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K> Writer<K> {
    pub fn new() -> Self {
        Self { store: Store { inner: Arc::new(RwLock::new(StoreState { objects: HashMap::new(), synced: false })) } }
    }

    pub fn reader(&self) -> Store<K> {
        self.store.clone()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, StoreState<K>> {
        self.store.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn apply(&self, key: ObjectKey, object: Arc<K>) {
        self.write().objects.insert(key, object);
    }

    pub fn delete(&self, key: &ObjectKey) -> Option<Arc<K>> {
        self.write().objects.remove(key)
    }

    /// Replaces the whole content (after a list) and marks the store synced. Returns what was
    /// in the store before and is not in `objects`.
    pub fn replace(&self, objects: Vec<(ObjectKey, Arc<K>)>) -> Vec<Arc<K>> {
        let mut state = self.write();
        let keep: HashSet<&ObjectKey> = objects.iter().map(|(k, _)| k).collect();
        let gone = state.objects.iter().filter(|(k, _)| !keep.contains(k)).map(|(_, v)| v.clone()).collect();
        state.objects = objects.into_iter().collect();
        state.synced = true;
        gone
    }
}

/// A change the informer applied to its store.
#[derive(Debug, Clone)]
pub enum InformerEvent<K> {
    /// Added or modified (also every object again after a re-list).
    Applied(Arc<K>),
    /// Deleted, or found missing by a re-list.
    Deleted(Arc<K>),
    /// A (re-)list has completed: the store holds everything that exists.
    Synced,
}

/// Where the informer is in its list/watch cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// The next step is a full list (at start and after `410 Expired`).
    Listing,
    /// The next step is a watch from this resourceVersion.
    Watching { resource_version: String },
}

/// List + watch of one kind, in one namespace or all, filtered by `opts`' selectors.
pub struct Informer<K> {
    client: Arc<dyn ApiClient>,
    res: &'static ResourceKind,
    namespace: Option<String>,
    opts: ListOptions,
    writer: Writer<K>,
    /// How long to wait after an error other than `410` before trying again.
    retry_delay: Duration,
}

const RETRY_DELAY: Duration = Duration::from_secs(1);

impl<K> Informer<K>
where
    K: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta> + DeserializeOwned + Send + Sync + 'static,
{
    /// `opts` supplies the label and field selectors; its resourceVersion is managed here.
    pub fn new(client: Arc<dyn ApiClient>, namespace: Option<&str>, opts: ListOptions) -> Self {
        Self {
            client,
            res: ResourceKind::of::<K>(),
            namespace: namespace.map(String::from),
            opts,
            writer: Writer::new(),
            retry_delay: RETRY_DELAY,
        }
    }

    pub fn store(&self) -> Store<K> {
        self.writer.reader()
    }

    /// Starts the informer as a task. It runs until the receiver is dropped or the handle is.
    pub fn spawn(self) -> (Store<K>, mpsc::UnboundedReceiver<InformerEvent<K>>, InformerHandle) {
        let store = self.store();
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(self.run(tx));
        (store, rx, InformerHandle { task })
    }

    /// The list/watch loop; returns once `tx` has no receiver.
    pub async fn run(self, tx: mpsc::UnboundedSender<InformerEvent<K>>) {
        let mut phase = Phase::Listing;
        while !tx.is_closed() {
            phase = match self.step(&phase, &tx).await {
                Ok(next) => next,
                Err(e) if e.code == 410 => {
                    tracing::debug!(resource = self.res.plural, "watch expired, listing again: {e}");
                    Phase::Listing
                }
                Err(e) => {
                    tracing::warn!(resource = self.res.plural, "list/watch failed, retrying: {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(self.retry_delay) => {}
                        _ = tx.closed() => return,
                    }
                    phase
                }
            };
        }
    }

    async fn step(&self, phase: &Phase, tx: &mpsc::UnboundedSender<InformerEvent<K>>) -> Result<Phase, ApiError> {
        match phase {
            Phase::Listing => self.list(tx).await,
            Phase::Watching { resource_version } => self.watch(resource_version, tx).await,
        }
    }

    fn decode(&self, value: Value) -> Result<(ObjectKey, Arc<K>), ApiError> {
        let object: K = serde_json::from_value(value)
            .map_err(|e| ApiError::internal(format!("decoding {}: {e}", self.res.kind)))?;
        Ok((ObjectKey::of(&object), Arc::new(object)))
    }

    async fn list(&self, tx: &mpsc::UnboundedSender<InformerEvent<K>>) -> Result<Phase, ApiError> {
        let opts = ListOptions { resource_version: None, ..self.opts.clone() };
        let list = self.client.list(self.res, self.namespace.as_deref(), &opts).await?;
        let objects = list.items.into_iter().map(|v| self.decode(v)).collect::<Result<Vec<_>, _>>()?;
        let applied: Vec<Arc<K>> = objects.iter().map(|(_, o)| o.clone()).collect();
        let gone = self.writer.replace(objects);
        for object in gone {
            let _ = tx.send(InformerEvent::Deleted(object));
        }
        for object in applied {
            let _ = tx.send(InformerEvent::Applied(object));
        }
        let _ = tx.send(InformerEvent::Synced);
        Ok(Phase::Watching { resource_version: list.resource_version })
    }

    async fn watch(&self, from: &str, tx: &mpsc::UnboundedSender<InformerEvent<K>>) -> Result<Phase, ApiError> {
        let opts =
            ListOptions { resource_version: Some(from.to_string()), allow_watch_bookmarks: true, ..self.opts.clone() };
        let mut stream = self.client.watch(self.res, self.namespace.as_deref(), &opts).await?;
        let mut rv = from.to_string();
        loop {
            let event = tokio::select! {
                event = stream.next() => event,
                _ = tx.closed() => return Ok(Phase::Watching { resource_version: rv }),
            };
            let Some(event) = event else {
                // The server ended the watch (timeout, restart): resume where we were.
                return Ok(Phase::Watching { resource_version: rv });
            };
            if let Some(v) = event.object["metadata"]["resourceVersion"].as_str() {
                if event.kind != WatchEventType::Error {
                    rv = v.to_string();
                }
            }
            match event.kind {
                WatchEventType::Error => return Err(ApiError::from_status(&event.object)),
                WatchEventType::Bookmark => {}
                WatchEventType::Added | WatchEventType::Modified => {
                    let (key, object) = self.decode(event.object)?;
                    self.writer.apply(key, object.clone());
                    let _ = tx.send(InformerEvent::Applied(object));
                }
                WatchEventType::Deleted => {
                    let (key, object) = self.decode(event.object)?;
                    self.writer.delete(&key);
                    let _ = tx.send(InformerEvent::Deleted(object));
                }
            }
        }
    }
}

/// Stops the informer task when dropped.
pub struct InformerHandle {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for InformerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeleteOptions, ObjectList, PatchKind, WatchEvent, WatchStream, WriteOptions};
    use k8s_openapi::api::core::v1::ConfigMap;
    use serde_json::json;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// A scripted API: each list returns the next prepared list, each watch the next prepared
    /// result (events, or an error), and records the resourceVersions it was asked for.
    #[derive(Default)]
    struct Script {
        lists: Mutex<VecDeque<ObjectList>>,
        watches: Mutex<VecDeque<Result<Vec<WatchEvent>, ApiError>>>,
        watched_from: Mutex<Vec<Option<String>>>,
    }

    #[async_trait::async_trait]
    impl ApiClient for Script {
        async fn get(&self, _: &'static ResourceKind, _: Option<&str>, _: &str) -> Result<Value, ApiError> {
            unreachable!("informers do not get")
        }
        async fn list(
            &self,
            _: &'static ResourceKind,
            _: Option<&str>,
            _: &ListOptions,
        ) -> Result<ObjectList, ApiError> {
            self.lists.lock().unwrap().pop_front().ok_or_else(|| ApiError::internal("no more lists"))
        }
        async fn watch(
            &self,
            _: &'static ResourceKind,
            _: Option<&str>,
            opts: &ListOptions,
        ) -> Result<WatchStream, ApiError> {
            self.watched_from.lock().unwrap().push(opts.resource_version.clone());
            match self.watches.lock().unwrap().pop_front() {
                Some(Ok(events)) => Ok(futures::stream::iter(events).boxed()),
                Some(Err(e)) => Err(e),
                // Nothing scripted: a watch that stays open and quiet.
                None => Ok(futures::stream::pending().boxed()),
            }
        }
        async fn create_with(
            &self,
            _: &'static ResourceKind,
            _: Option<&str>,
            _: Value,
            _opts: &WriteOptions,
        ) -> Result<Value, ApiError> {
            unreachable!()
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
            _: &str,
            _: Option<&str>,
            _: PatchKind,
            _: Value,
            _opts: &WriteOptions,
        ) -> Result<(Value, bool), ApiError> {
            unreachable!()
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

    fn cm(name: &str, rv: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": "default", "resourceVersion": rv}})
    }

    fn event(kind: WatchEventType, object: Value) -> WatchEvent {
        WatchEvent { kind, object }
    }

    fn name(e: &InformerEvent<ConfigMap>) -> String {
        match e {
            InformerEvent::Applied(o) => format!("+{}", o.metadata.name.as_deref().unwrap()),
            InformerEvent::Deleted(o) => format!("-{}", o.metadata.name.as_deref().unwrap()),
            InformerEvent::Synced => "synced".into(),
        }
    }

    async fn take(rx: &mut mpsc::UnboundedReceiver<InformerEvent<ConfigMap>>, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(name(&rx.recv().await.unwrap()));
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn lists_then_watches_from_the_lists_resource_version() {
        let script = Arc::new(Script::default());
        script.lists.lock().unwrap().push_back(ObjectList {
            resource_version: "10".into(),
            items: vec![cm("a", "5")],
            continue_token: None,
        });
        script.watches.lock().unwrap().push_back(Ok(vec![
            event(WatchEventType::Added, cm("b", "11")),
            event(WatchEventType::Modified, cm("a", "12")),
            event(WatchEventType::Deleted, cm("b", "13")),
        ]));
        let (store, mut rx, _h) = Informer::<ConfigMap>::new(script.clone(), None, ListOptions::default()).spawn();
        assert_eq!(take(&mut rx, 5).await, ["+a", "synced", "+b", "+a", "-b"]);
        assert!(store.is_synced());
        assert_eq!(store.keys(), vec![ObjectKey::namespaced("default", "a")]);
        let a = store.get(&ObjectKey::namespaced("default", "a")).unwrap();
        assert_eq!(a.metadata.resource_version.as_deref(), Some("12"));
        // The first watch started at the list's version; once its stream ended the next one
        // resumed after the last event seen.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let from = script.watched_from.lock().unwrap().clone();
        assert_eq!(from[..2], [Some("10".to_string()), Some("13".to_string())]);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_watch_relists_and_reports_what_vanished_meanwhile() {
        let script = Arc::new(Script::default());
        let mut lists = script.lists.lock().unwrap();
        lists.push_back(ObjectList {
            resource_version: "10".into(),
            items: vec![cm("a", "1"), cm("b", "2")],
            continue_token: None,
        });
        lists.push_back(ObjectList { resource_version: "50".into(), items: vec![cm("b", "40")], continue_token: None });
        drop(lists);
        script.watches.lock().unwrap().push_back(Ok(vec![event(
            WatchEventType::Error,
            ApiError::gone("too old resource version: 10 (45)").to_status(),
        )]));
        let (store, mut rx, _h) = Informer::<ConfigMap>::new(script.clone(), None, ListOptions::default()).spawn();
        let mut first = take(&mut rx, 3).await;
        first.sort();
        assert_eq!(first, ["+a", "+b", "synced"]);
        assert_eq!(take(&mut rx, 3).await, ["-a", "+b", "synced"]);
        assert_eq!(store.len(), 1);
        assert_eq!(script.watched_from.lock().unwrap()[1], Some("50".to_string()));
    }

    #[tokio::test(start_paused = true)]
    async fn other_errors_are_retried_after_a_delay() {
        let script = Arc::new(Script::default());
        script.lists.lock().unwrap().push_back(ObjectList {
            resource_version: "3".into(),
            items: vec![],
            continue_token: None,
        });
        script.watches.lock().unwrap().push_back(Err(ApiError::internal("store unavailable")));
        let (_store, mut rx, _h) = Informer::<ConfigMap>::new(script.clone(), None, ListOptions::default()).spawn();
        assert_eq!(take(&mut rx, 1).await, ["synced"]);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(script.watched_from.lock().unwrap().len(), 1, "no retry before the delay");
        tokio::time::sleep(Duration::from_millis(600)).await;
        // Retried from the same version: the failed watch saw nothing.
        assert_eq!(script.watched_from.lock().unwrap().clone(), [Some("3".to_string()), Some("3".to_string())]);
    }

    #[test]
    fn writer_replace_returns_only_vanished_objects() {
        let w = Writer::<u32>::new();
        w.apply(ObjectKey::cluster("a"), Arc::new(1));
        w.apply(ObjectKey::cluster("b"), Arc::new(2));
        let gone = w.replace(vec![(ObjectKey::cluster("b"), Arc::new(3))]);
        assert_eq!(gone.iter().map(|v| **v).collect::<Vec<_>>(), [1]);
        assert_eq!(*w.reader().get(&ObjectKey::cluster("b")).unwrap(), 3);
        assert!(w.reader().is_synced());
    }
}
