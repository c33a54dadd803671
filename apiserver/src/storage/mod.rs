//! Objects in one redb file, written by one writer thread that batches queued writes.
//!
//! ```text
//! state.redb
//! ├── meta                      &str → u64
//! │   └── "resourceVersion"     the last resourceVersion handed out (global, monotonic)
//! └── objects                   &str → &[u8]
//!     └── "<plural>[.<group>]/<namespace>/<name>"   the object as JSON, its
//!         metadata.resourceVersion equal to the revision of the commit that wrote it
//!         (cluster-scoped kinds have an empty namespace: "namespaces//default")
//! ```
//!
//! Names and namespaces never contain `/`, so one key prefix selects a resource
//! (`pods/`) or a resource in one namespace (`pods/default/`), and keys sort by namespace and
//! then name, the order Kubernetes lists in.
//!
//! Every write runs as an [`Op`] inside a redb write transaction on the writer thread; ops that
//! queue up while a commit is in flight share the next commit (one fsync for many writes). A
//! caller hears back only after the commit is durable (`Durability::Immediate`). An op that
//! fails is undone inside the transaction, so the other ops of its batch still commit. Watch
//! events are published after the commit and before any caller is answered, in revision order.
//!
//! Commits use redb's one-phase commit with checksums: one fsync each. redb's quick-repair is
//! off on purpose: it saves the allocator state in every commit and forces a two-phase commit
//! (two fsyncs, ~4 ms each on this kind of disk), which doubled the latency of every write. Its
//! gain is a faster open after a crash; without it redb repairs by walking the file, which for
//! an API server's few MiB takes a moment. Either way an acknowledged commit survives.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;
use skiff_api::{ApiError, ResourceKind, WatchEventType};
use tokio::sync::oneshot;

use crate::error::{Error, storage};
use crate::watch::{Event, Hub};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const RV_KEY: &str = "resourceVersion";

/// At most this many ops share one commit, so one huge burst cannot starve its first caller.
const MAX_BATCH: usize = 256;

/// Where one object lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub res: &'static ResourceKind,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(res: &'static ResourceKind, namespace: Option<&str>, name: &str) -> Self {
        Self { res, namespace: namespace.unwrap_or_default().to_string(), name: name.to_string() }
    }

    pub fn encode(&self) -> String {
        format!("{}/{}/{}", self.res.qualified_plural(), self.namespace, self.name)
    }

    /// The key prefix of every object of `res` (in `namespace`, when given).
    pub fn prefix(res: &ResourceKind, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if res.namespaced() => format!("{}/{ns}/", res.qualified_plural()),
            _ => format!("{}/", res.qualified_plural()),
        }
    }
}

/// What an op answers its caller with.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub object: Value,
    /// The op created the object (server-side apply answers 201 then).
    pub created: bool,
}

impl Outcome {
    pub fn of(object: Value) -> Self {
        Self { object, created: false }
    }
}

/// A read-check-write step run inside the write transaction. It must check everything before
/// its first `put`/`delete`; if it fails anyway, its writes are undone.
pub type Op = Box<dyn FnOnce(&mut Tx<'_>) -> Result<Outcome, ApiError> + Send>;

/// A periodic op the writer runs by itself (expiring events), at most once per `every`.
pub struct Chore {
    pub every: std::time::Duration,
    pub op: Box<dyn Fn() -> Op + Send>,
}

struct Job {
    op: Op,
    /// A dry run: everything the op writes is undone, and nobody hears of it.
    dry_run: bool,
    reply: oneshot::Sender<Result<Outcome, ApiError>>,
}

/// The view of the database an [`Op`] gets: reads see the batch's earlier writes.
pub struct Tx<'t> {
    objects: redb::Table<'t, &'static str, &'static [u8]>,
    rv: u64,
    /// In a dry run, writes take no revision and raise no events (and are undone after).
    dry_run: bool,
    events: Vec<Event>,
    undo: Vec<(String, Option<Vec<u8>>)>,
}

fn decode(key: &str, bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::internal(format!("stored object {key} is not JSON: {e}")))
}

fn set_rv(object: &mut Value, rv: u64) {
    if !object["metadata"].is_object() {
        object["metadata"] = Value::Object(Default::default());
    }
    object["metadata"]["resourceVersion"] = Value::String(rv.to_string());
}

impl Tx<'_> {
    pub fn get(&self, key: &Key) -> Result<Option<Value>, ApiError> {
        let k = key.encode();
        match self.objects.get(k.as_str()).map_err(storage)? {
            Some(bytes) => Ok(Some(decode(&k, bytes.value())?)),
            None => Ok(None),
        }
    }

    /// Whether an object is stored under `key`.
    pub fn contains(&self, key: &Key) -> Result<bool, ApiError> {
        Ok(self.objects.get(key.encode().as_str()).map_err(storage)?.is_some())
    }

    /// Whether the object under `key` is stored as exactly `bytes` (as [`Store::get_raw`] read it).
    pub fn holds(&self, key: &Key, bytes: &[u8]) -> Result<bool, ApiError> {
        Ok(self.objects.get(key.encode().as_str()).map_err(storage)?.is_some_and(|g| g.value() == bytes))
    }

    /// Every object of `res` (in `namespace`, when given), in key order.
    pub fn list(&self, res: &ResourceKind, namespace: Option<&str>) -> Result<Vec<Value>, ApiError> {
        let prefix = Key::prefix(res, namespace);
        let mut out = Vec::new();
        for entry in self.objects.range::<&str>(prefix.as_str()..).map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Writes (or, for `None`, removes) the object under `key`; answers what was stored before.
    fn write(&mut self, key: &Key, object: Option<&Value>) -> Result<Option<Vec<u8>>, ApiError> {
        let k = key.encode();
        let prev = match object {
            Some(object) => {
                let bytes = serde_json::to_vec(object).map_err(|e| ApiError::internal(format!("encoding {k}: {e}")))?;
                self.objects.insert(k.as_str(), bytes.as_slice()).map_err(storage)?.map(|g| g.value().to_vec())
            }
            None => self.objects.remove(k.as_str()).map_err(storage)?.map(|g| g.value().to_vec()),
        };
        self.undo.push((k, prev.clone()));
        Ok(prev)
    }

    /// Stores `object` under `key` at a new revision and returns it as stored.
    pub fn put(&mut self, key: &Key, mut object: Value) -> Result<Value, ApiError> {
        if self.dry_run {
            // As Kubernetes' dry-run storage: the object as it would be written, keeping the
            // resourceVersion it came with (none for a create).
            self.write(key, Some(&object))?;
            return Ok(object);
        }
        self.rv += 1;
        set_rv(&mut object, self.rv);
        let prev = self.write(key, Some(&object))?;
        let kind = if prev.is_some() { WatchEventType::Modified } else { WatchEventType::Added };
        self.events.push(Event::new(self.rv, key, kind, object.clone(), prev));
        Ok(object)
    }

    /// Removes the object under `key`; `object` (its last state) is what watchers see, at a new
    /// revision, as Kubernetes does.
    pub fn delete(&mut self, key: &Key, mut object: Value) -> Result<Value, ApiError> {
        if self.dry_run {
            self.write(key, None)?;
            return Ok(object);
        }
        self.rv += 1;
        set_rv(&mut object, self.rv);
        let prev = self.write(key, None)?;
        self.events.push(Event::new(self.rv, key, WatchEventType::Deleted, object.clone(), prev));
        Ok(object)
    }

    fn mark(&self) -> (usize, usize, u64) {
        (self.undo.len(), self.events.len(), self.rv)
    }

    fn rollback(&mut self, (undo, events, rv): (usize, usize, u64)) -> Result<(), ApiError> {
        while self.undo.len() > undo {
            let (k, prev) = self.undo.pop().expect("undo log is longer than the mark");
            match prev {
                Some(bytes) => self.objects.insert(k.as_str(), bytes.as_slice()).map_err(storage)?,
                None => self.objects.remove(k.as_str()).map_err(storage)?,
            };
        }
        self.events.truncate(events);
        self.rv = rv;
        Ok(())
    }
}

/// The redb store: reads on the caller's thread, writes through the writer thread.
pub struct Store {
    db: Arc<Database>,
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
    hub: Arc<Hub>,
    /// Commits made so far: fewer than the writes when concurrent writes share them. Only the
    /// tests read it.
    #[cfg_attr(not(test), allow(dead_code))]
    commits: Arc<AtomicU64>,
}

impl Store {
    pub fn open(path: &Path, hub: Arc<Hub>, chore: Option<Chore>) -> Result<Self, Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir { path: dir.to_path_buf(), source })?;
        }
        let db = Database::builder()
            .create(path)
            .map_err(|source| Error::OpenDatabase { path: path.to_path_buf(), source })?;
        let init = |db: &Database| -> Result<u64, redb::Error> {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            let rv = {
                let mut meta = txn.open_table(META)?;
                txn.open_table(OBJECTS)?;
                let rv = meta.get(RV_KEY)?.map(|g| g.value());
                match rv {
                    Some(rv) => rv,
                    None => {
                        meta.insert(RV_KEY, 0)?;
                        0
                    }
                }
            };
            txn.commit()?;
            Ok(rv)
        };
        let rv = init(&db).map_err(|source| Error::InitDatabase { path: path.to_path_buf(), source })?;
        hub.start_at(rv);
        let db = Arc::new(db);
        let (jobs, rx) = mpsc::channel();
        let commits = Arc::new(AtomicU64::new(0));
        let writer = {
            let (db, hub, commits) = (db.clone(), hub.clone(), commits.clone());
            std::thread::Builder::new()
                .name("skiff-store-writer".into())
                .spawn(move || writer_loop(&db, &hub, &commits, rx, chore))
                .map_err(Error::SpawnWriter)?
        };
        Ok(Self { db, jobs: Some(jobs), writer: Some(writer), hub, commits })
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// How many commits the writer has made since the store was opened.
    #[cfg(test)]
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Runs `op` in the next commit and answers once that commit is durable.
    #[cfg(test)]
    pub async fn write(&self, op: Op) -> Result<Outcome, ApiError> {
        self.run(op, false).await
    }

    /// Runs `op` in the next commit, or as a dry run: with every check and read of a real
    /// write, answered with what it would have stored, but leaving the store, the revision
    /// and the watchers untouched.
    pub async fn run(&self, op: Op, dry_run: bool) -> Result<Outcome, ApiError> {
        let (reply, rx) = oneshot::channel();
        let jobs = self.jobs.as_ref().ok_or_else(|| ApiError::internal("storage is closed"))?;
        jobs.send(Job { op, dry_run, reply }).map_err(|_| ApiError::internal("storage writer has stopped"))?;
        rx.await.map_err(|_| ApiError::internal("storage writer has stopped"))?
    }

    pub fn get(&self, key: &Key) -> Result<Option<Value>, ApiError> {
        self.get_raw(key)?.map(|bytes| decode(&key.encode(), &bytes)).transpose()
    }

    /// The object under `key` as stored (JSON), for [`Tx::holds`] to recognise later.
    pub fn get_raw(&self, key: &Key) -> Result<Option<Vec<u8>>, ApiError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(OBJECTS).map_err(storage)?;
        Ok(table.get(key.encode().as_str()).map_err(storage)?.map(|g| g.value().to_vec()))
    }

    /// Decodes what [`get_raw`](Self::get_raw) read.
    pub fn decode(key: &Key, bytes: &[u8]) -> Result<Value, ApiError> {
        decode(&key.encode(), bytes)
    }

    /// The current revision.
    #[cfg(test)]
    pub fn revision(&self) -> Result<u64, ApiError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let meta = txn.open_table(META).map_err(storage)?;
        Ok(meta.get(RV_KEY).map_err(storage)?.map(|g| g.value()).unwrap_or(0))
    }

    /// Objects under `prefix` after key `start_after` that `keep` accepts, at most `limit` of
    /// them, read from one snapshot. Answers the snapshot's revision, the objects with their
    /// keys, and whether more accepted objects follow.
    pub fn scan(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
        mut keep: impl FnMut(&Value) -> bool,
    ) -> Result<Scan, ApiError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let meta = txn.open_table(META).map_err(storage)?;
        let revision = meta.get(RV_KEY).map_err(storage)?.map(|g| g.value()).unwrap_or(0);
        let table = txn.open_table(OBJECTS).map_err(storage)?;
        let start = match start_after {
            Some(after) if after.starts_with(prefix) => after.to_string(),
            _ => prefix.to_string(),
        };
        let mut scan = Scan { revision, items: Vec::new(), more: false };
        for entry in table.range::<&str>(start.as_str()..).map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            if Some(k) == start_after {
                continue;
            }
            let object = decode(k, v.value())?;
            if !keep(&object) {
                continue;
            }
            if limit.is_some_and(|l| scan.items.len() >= l) {
                scan.more = true;
                break;
            }
            scan.items.push((k.to_string(), object));
        }
        Ok(scan)
    }
}

/// One read of [`Store::scan`].
pub struct Scan {
    pub revision: u64,
    pub items: Vec<(String, Value)>,
    pub more: bool,
}

impl Drop for Store {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued; joining it releases its
        // handle on the database, so the file can be opened again at once.
        self.jobs.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn writer_loop(db: &Database, hub: &Hub, commits: &AtomicU64, jobs: mpsc::Receiver<Job>, chore: Option<Chore>) {
    let mut chore_due = chore.as_ref().map(|c| std::time::Instant::now() + c.every);
    loop {
        let first = match chore_due {
            Some(due) => match jobs.recv_timeout(due.saturating_duration_since(std::time::Instant::now())) {
                Ok(job) => Some(job),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
            None => match jobs.recv() {
                Ok(job) => Some(job),
                Err(_) => break,
            },
        };
        let mut batch: Vec<Job> = first.into_iter().collect();
        if let (Some(c), Some(due)) = (&chore, chore_due)
            && std::time::Instant::now() >= due
        {
            // Nobody waits for a chore's answer.
            let (reply, _) = oneshot::channel();
            batch.push(Job { op: (c.op)(), dry_run: false, reply });
            chore_due = Some(std::time::Instant::now() + c.every);
        }
        if batch.is_empty() {
            continue;
        }
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        match run_batch(db, &mut batch) {
            Ok((results, events)) => {
                commits.fetch_add(1, Ordering::Relaxed);
                hub.publish(events);
                for (job, result) in batch.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!("storage commit failed: {}", e.message);
                for job in batch {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

type BatchResult = (Vec<Result<Outcome, ApiError>>, Vec<Event>);

fn run_batch(db: &Database, batch: &mut [Job]) -> Result<BatchResult, ApiError> {
    let mut txn = db.begin_write().map_err(storage)?;
    txn.set_durability(Durability::Immediate).map_err(storage)?;
    let mut results = Vec::with_capacity(batch.len());
    let events = {
        let mut meta = txn.open_table(META).map_err(storage)?;
        let rv = meta.get(RV_KEY).map_err(storage)?.map(|g| g.value()).unwrap_or(0);
        let objects = txn.open_table(OBJECTS).map_err(storage)?;
        let mut tx = Tx { objects, rv, dry_run: false, events: Vec::new(), undo: Vec::new() };
        for job in batch.iter_mut() {
            let op = std::mem::replace(&mut job.op, Box::new(|_| Err(ApiError::internal("op ran twice"))));
            let mark = tx.mark();
            tx.dry_run = job.dry_run;
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(&mut tx)))
                .unwrap_or_else(|_| Err(ApiError::internal("the request panicked inside the storage writer")));
            if result.is_err() || job.dry_run {
                tx.rollback(mark)?;
            }
            tx.dry_run = false;
            results.push(result);
        }
        meta.insert(RV_KEY, tx.rv).map_err(storage)?;
        tx.events
    };
    txn.commit().map_err(storage)?;
    Ok((results, events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pods() -> &'static ResourceKind {
        ResourceKind::by_plural("", "v1", "pods").unwrap()
    }

    fn put_op(key: Key, object: Value) -> Op {
        Box::new(move |tx| Ok(Outcome::of(tx.put(&key, object)?)))
    }

    #[test]
    fn keys_group_by_resource_then_namespace() {
        let deploy = ResourceKind::by_plural("apps", "v1", "deployments").unwrap();
        let ns = ResourceKind::by_plural("", "v1", "namespaces").unwrap();
        assert_eq!(Key::new(pods(), Some("default"), "web").encode(), "pods/default/web");
        assert_eq!(Key::new(deploy, Some("a"), "d").encode(), "deployments.apps/a/d");
        assert_eq!(Key::new(ns, None, "default").encode(), "namespaces//default");
        assert_eq!(Key::prefix(pods(), Some("default")), "pods/default/");
        assert_eq!(Key::prefix(pods(), None), "pods/");
        // A cluster-scoped resource ignores a namespace.
        assert_eq!(Key::prefix(ns, Some("x")), "namespaces/");
        assert!(Key::new(pods(), Some("a"), "z").encode() < Key::new(pods(), Some("b"), "a").encode());
    }

    #[tokio::test]
    async fn revisions_increase_with_every_write_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db/state.redb");
        let mut last = 0;
        {
            let store = Store::open(&path, Arc::new(Hub::new(100)), None).unwrap();
            for name in ["a", "b", "c"] {
                let key = Key::new(pods(), Some("default"), name);
                let out = store.write(put_op(key, json!({"metadata": {"name": name}}))).await.unwrap();
                let rv: u64 = out.object["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
                assert!(rv > last, "{rv} after {last}");
                last = rv;
            }
            assert_eq!(store.revision().unwrap(), last);
        }
        let store = Store::open(&path, Arc::new(Hub::new(100)), None).unwrap();
        assert_eq!(store.revision().unwrap(), last);
        let b = store.get(&Key::new(pods(), Some("default"), "b")).unwrap().unwrap();
        assert_eq!(b["metadata"]["name"], "b");
        let scan = store.scan("pods/default/", None, None, |_| true).unwrap();
        assert_eq!(scan.items.len(), 3);
        let key = Key::new(pods(), Some("default"), "d");
        let out = store.write(put_op(key, json!({"metadata": {"name": "d"}}))).await.unwrap();
        assert_eq!(out.object["metadata"]["resourceVersion"], (last + 1).to_string());
    }

    #[tokio::test]
    async fn a_failed_op_leaves_nothing_behind_and_its_batch_neighbours_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb"), Arc::new(Hub::new(100)), None).unwrap();
        let before = store.revision().unwrap();
        let failing: Op = Box::new(|tx| {
            tx.put(&Key::new(pods(), Some("default"), "half"), json!({"metadata": {"name": "half"}}))?;
            Err(ApiError::bad_request("changed my mind"))
        });
        let ok = put_op(Key::new(pods(), Some("default"), "whole"), json!({"metadata": {"name": "whole"}}));
        let (a, b) = tokio::join!(store.write(failing), store.write(ok));
        assert_eq!(a.unwrap_err().code, 400);
        assert_eq!(b.unwrap().object["metadata"]["resourceVersion"], (before + 1).to_string());
        assert!(store.get(&Key::new(pods(), Some("default"), "half")).unwrap().is_none());
        assert_eq!(store.revision().unwrap(), before + 1);
    }

    #[tokio::test]
    async fn scan_pages_by_key_and_reports_more() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb"), Arc::new(Hub::new(100)), None).unwrap();
        for name in ["a", "b", "c", "d"] {
            store.write(put_op(Key::new(pods(), Some("ns"), name), json!({"metadata": {"name": name}}))).await.unwrap();
        }
        let first = store.scan("pods/ns/", None, Some(2), |_| true).unwrap();
        assert!(first.more);
        let after = first.items.last().unwrap().0.clone();
        let second = store.scan("pods/ns/", Some(&after), Some(2), |_| true).unwrap();
        let names: Vec<_> = second.items.iter().map(|(_, o)| o["metadata"]["name"].clone()).collect();
        assert_eq!(names, [json!("c"), json!("d")]);
        assert!(!second.more);
    }

    #[tokio::test]
    async fn a_dry_run_answers_what_it_would_store_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Arc::new(Hub::new(100));
        let store = Store::open(&dir.path().join("state.redb"), hub.clone(), None).unwrap();
        let key = Key::new(pods(), Some("ns"), "a");
        let stored = store.write(put_op(key.clone(), json!({"metadata": {"name": "a"}}))).await.unwrap().object;
        let revision = store.revision().unwrap();
        let mut rx = hub.subscribe();

        let changed =
            json!({"metadata": {"name": "a", "resourceVersion": stored["metadata"]["resourceVersion"]}, "x": 1});
        let created = Key::new(pods(), Some("ns"), "b");
        let op: Op = Box::new(move |tx| {
            tx.put(&created, json!({"metadata": {"name": "b"}}))?;
            // Later reads of the same op see its own writes.
            assert!(tx.get(&created)?.is_some());
            Ok(Outcome::of(tx.put(&key, changed)?))
        });
        let out = store.run(op, true).await.unwrap().object;
        assert_eq!(out["x"], 1);
        assert_eq!(out["metadata"]["resourceVersion"], stored["metadata"]["resourceVersion"]);
        assert_eq!(store.get(&Key::new(pods(), Some("ns"), "a")).unwrap().unwrap(), stored);
        assert!(store.get(&Key::new(pods(), Some("ns"), "b")).unwrap().is_none());
        assert_eq!(store.revision().unwrap(), revision);
        assert!(rx.try_recv().is_err(), "a dry run published an event");
    }

    #[tokio::test]
    async fn events_carry_the_object_before_the_change_as_it_was_stored() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Arc::new(Hub::new(100));
        let store = Store::open(&dir.path().join("state.redb"), hub.clone(), None).unwrap();
        let mut rx = hub.subscribe();
        let key = Key::new(pods(), Some("ns"), "a");
        let first = store.write(put_op(key.clone(), json!({"metadata": {"name": "a"}, "x": 1}))).await.unwrap().object;
        let raw = store.get_raw(&key).unwrap().unwrap();
        store.write(put_op(key.clone(), json!({"metadata": {"name": "a"}, "x": 2}))).await.unwrap();
        let delete: Op = Box::new(move |tx| Ok(Outcome::of(tx.delete(&key, json!({"metadata": {"name": "a"}}))?)));
        store.write(delete).await.unwrap();

        let created = rx.recv().await.unwrap();
        assert_eq!((created.kind, created.had_prev(), created.prev()), (WatchEventType::Added, false, None));
        let modified = rx.recv().await.unwrap();
        assert_eq!(modified.kind, WatchEventType::Modified);
        assert!(modified.had_prev());
        assert_eq!(modified.prev(), Some(&first));
        assert_eq!(Store::decode(&Key::new(pods(), Some("ns"), "a"), &raw).unwrap(), first);
        let deleted = rx.recv().await.unwrap();
        assert_eq!(deleted.kind, WatchEventType::Deleted);
        assert_eq!(deleted.prev().unwrap()["x"], 2);
    }

    #[tokio::test]
    async fn a_transaction_tells_whether_an_object_is_still_stored_as_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb"), Arc::new(Hub::new(100)), None).unwrap();
        let key = Key::new(pods(), Some("ns"), "a");
        store.write(put_op(key.clone(), json!({"metadata": {"name": "a"}}))).await.unwrap();
        let read = store.get_raw(&key).unwrap().unwrap();
        let (k, bytes) = (key.clone(), read.clone());
        let check: Op = Box::new(move |tx| {
            let before = (tx.contains(&k)?, tx.holds(&k, &bytes)?);
            tx.put(&k, json!({"metadata": {"name": "a"}, "x": 1}))?;
            let after = tx.holds(&k, &bytes)?;
            let missing = Key::new(pods(), Some("ns"), "b");
            Ok(Outcome::of(json!([before.0, before.1, after, tx.contains(&missing)?, tx.holds(&missing, &bytes)?])))
        });
        assert_eq!(store.write(check).await.unwrap().object, json!([true, true, false, false, false]));
    }

    #[tokio::test]
    async fn concurrent_writes_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb"), Arc::new(Hub::new(1000)), None).unwrap();
        let writes = (0..64).map(|i| {
            let name = format!("p{i}");
            store.write(put_op(Key::new(pods(), Some("ns"), &name), json!({"metadata": {"name": name}})))
        });
        let written = futures::future::join_all(writes).await;
        let mut revisions: Vec<String> =
            written.into_iter().map(|w| w.unwrap().object["metadata"]["resourceVersion"].to_string()).collect();
        revisions.sort();
        revisions.dedup();
        assert_eq!(revisions.len(), 64, "every write has its own revision");
        // All 64 are queued before the first commit ends: at most a few commits carry them.
        let commits = store.commits();
        assert!((1..=8).contains(&commits), "{commits} commits for 64 concurrent writes");
        assert_eq!(store.scan("pods/ns/", None, None, |_| true).unwrap().items.len(), 64);
    }

    #[tokio::test]
    async fn the_writer_runs_its_chore_when_idle() {
        let dir = tempfile::tempdir().unwrap();
        let chore = Chore {
            every: std::time::Duration::from_millis(20),
            op: Box::new(|| put_op(Key::new(pods(), Some("ns"), "chore"), json!({"metadata": {"name": "chore"}}))),
        };
        let store = Store::open(&dir.path().join("state.redb"), Arc::new(Hub::new(100)), Some(chore)).unwrap();
        for _ in 0..100 {
            if store.get(&Key::new(pods(), Some("ns"), "chore")).unwrap().is_some() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the chore never ran");
    }
}
