//! Watch fan-out: the storage writer publishes every committed change to a [`Hub`], which keeps
//! the latest ones in a ring (so a watch can resume from a resourceVersion) and hands them to
//! live watchers over a broadcast channel. A watcher that falls too far behind the channel is
//! ended with a 410 `Expired` error, so writers never wait on readers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use skiff_api::{ApiError, FieldSelector, LabelSelector, ResourceKind, WatchEvent, WatchEventType, WatchStream};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::storage::Key;

/// Live events a watcher may fall behind by before it is dropped with 410.
const LAG_CAPACITY: usize = 4096;
/// Events buffered between a watcher's task and its consumer.
const OUT_CAPACITY: usize = 64;

/// One committed change.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub res: &'static ResourceKind,
    pub namespace: String,
    pub kind: WatchEventType,
    pub object: Value,
    /// The object before the change (none for a create), as stored: decoded only when someone
    /// needs it (a watcher with selectors, a list page read at an older revision), and then once.
    prev: Option<Prev>,
}

#[derive(Debug)]
struct Prev {
    bytes: Vec<u8>,
    decoded: OnceLock<Option<Value>>,
}

impl Event {
    /// `prev` is the object before the change, as the store held it (JSON).
    pub fn new(rv: u64, key: &Key, kind: WatchEventType, object: Value, prev: Option<Vec<u8>>) -> Self {
        let prev = prev.map(|bytes| Prev { bytes, decoded: OnceLock::new() });
        Self { rv, res: key.res, namespace: key.namespace.clone(), kind, object, prev }
    }

    /// Whether the object existed before this change.
    pub fn had_prev(&self) -> bool {
        self.prev.is_some()
    }

    /// The object before the change. A stored object that is not JSON (never written by Skiff)
    /// counts as absent.
    pub fn prev(&self) -> Option<&Value> {
        let prev = self.prev.as_ref()?;
        prev.decoded.get_or_init(|| serde_json::from_slice(&prev.bytes).ok()).as_ref()
    }
}

struct Ring {
    events: VecDeque<Arc<Event>>,
    /// Changes at or below this revision may be missing from `events`.
    floor: u64,
    /// The revision of the last published change.
    last: u64,
}

/// Where watchers subscribe and the writer publishes.
pub struct Hub {
    ring: Mutex<Ring>,
    /// Signalled whenever `ring.last` moves.
    published: std::sync::Condvar,
    capacity: usize,
    sender: broadcast::Sender<Arc<Event>>,
    bookmark_every: Mutex<Duration>,
}

/// How a new watch begins.
pub enum Start {
    /// ADDED for each of `objects` (read at `revision`), then live changes after `revision`.
    Initial { objects: Vec<Value>, revision: u64, rx: broadcast::Receiver<Arc<Event>> },
    /// The changes after the requested revision still in the ring, then live changes after `last`.
    Resume { replay: Vec<Arc<Event>>, last: u64, rx: broadcast::Receiver<Arc<Event>> },
}

impl Hub {
    /// A hub that remembers the last `capacity` changes.
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(LAG_CAPACITY);
        Self {
            ring: Mutex::new(Ring { events: VecDeque::new(), floor: 0, last: 0 }),
            published: std::sync::Condvar::new(),
            capacity,
            sender,
            bookmark_every: Mutex::new(Duration::from_secs(60)),
        }
    }

    /// After opening a store at `rv`: nothing before it can be replayed.
    pub fn start_at(&self, rv: u64) {
        let mut ring = self.ring.lock().expect("watch ring lock poisoned");
        ring.events.clear();
        ring.floor = rv;
        ring.last = rv;
    }

    pub fn set_bookmark_interval(&self, every: Duration) {
        *self.bookmark_every.lock().expect("bookmark lock poisoned") = every;
    }

    pub fn publish(&self, events: Vec<Event>) {
        let mut ring = self.ring.lock().expect("watch ring lock poisoned");
        for event in events {
            let event = Arc::new(event);
            ring.last = event.rv;
            ring.events.push_back(event.clone());
            if ring.events.len() > self.capacity
                && let Some(old) = ring.events.pop_front()
            {
                ring.floor = old.rv;
            }
            // No receivers is fine: nobody is watching.
            let _ = self.sender.send(event);
        }
        self.published.notify_all();
    }

    /// The changes after revision `after` up to and including `upto`, oldest first. A reader
    /// may have seen commit `upto` before the writer published it: this waits (briefly) for
    /// it. Fails with the oldest revision still complete when changes after `after` are no
    /// longer all kept.
    pub fn changes(&self, after: u64, upto: u64) -> Result<Vec<Arc<Event>>, u64> {
        let ring = self.ring.lock().expect("watch ring lock poisoned");
        let (ring, _) = self
            .published
            .wait_timeout_while(ring, Duration::from_secs(5), |r| r.last < upto)
            .expect("watch ring lock poisoned");
        if after < ring.floor || ring.last < upto {
            return Err(ring.floor);
        }
        Ok(ring.events.iter().filter(|e| e.rv > after && e.rv <= upto).cloned().collect())
    }

    /// Subscribes to live changes. Call before reading the snapshot a watch starts from, so no
    /// change between the two is lost (duplicates are skipped by revision).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        let _ring = self.ring.lock().expect("watch ring lock poisoned");
        self.sender.subscribe()
    }

    /// Subscribes to the changes after `rv`, or fails with the 410 Kubernetes gives when they
    /// are no longer kept.
    pub fn resume(&self, rv: u64) -> Result<Start, ApiError> {
        let ring = self.ring.lock().expect("watch ring lock poisoned");
        if rv < ring.floor {
            return Err(ApiError::gone(format!("too old resource version: {rv} ({})", ring.floor)));
        }
        let replay = ring.events.iter().filter(|e| e.rv > rv).cloned().collect();
        // A list may have read a commit the writer has not published yet: its changes are
        // already in the client's hands, so the watch skips up to `rv` either way.
        Ok(Start::Resume { replay, last: ring.last.max(rv), rx: self.sender.subscribe() })
    }
}

/// Which changes a watcher sees.
pub struct Filter {
    pub res: &'static ResourceKind,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches_object(object) && self.fields.matches_object(object)
    }

    /// Whether every object of the resource matches (no selectors).
    fn matches_all(&self) -> bool {
        self.labels == LabelSelector::default() && self.fields == FieldSelector::default()
    }

    /// The event this watcher sees for `event`, if any. An object that stops matching the
    /// selectors is reported DELETED, one that starts matching ADDED, as Kubernetes does.
    fn translate(&self, event: &Event) -> Option<WatchEvent> {
        if event.res.plural != self.res.plural || event.res.group != self.res.group {
            return None;
        }
        if self.namespace.as_ref().is_some_and(|ns| self.res.namespaced() && *ns != event.namespace) {
            return None;
        }
        let (now, before) = if self.matches_all() {
            (true, event.had_prev())
        } else {
            (self.matches(&event.object), event.prev().is_some_and(|p| self.matches(p)))
        };
        let kind = match event.kind {
            WatchEventType::Deleted if now || before => WatchEventType::Deleted,
            WatchEventType::Added if now => WatchEventType::Added,
            WatchEventType::Modified => match (before, now) {
                (true, true) => WatchEventType::Modified,
                (false, true) => WatchEventType::Added,
                (true, false) => WatchEventType::Deleted,
                (false, false) => return None,
            },
            _ => return None,
        };
        Some(WatchEvent { kind, object: event.object.clone() })
    }
}

/// Options of one watch stream.
pub struct StreamOptions {
    pub timeout: Option<Duration>,
    pub bookmarks: bool,
}

/// A stream that carries one ERROR event and ends.
pub fn error_stream(err: ApiError) -> WatchStream {
    futures::stream::iter([WatchEvent { kind: WatchEventType::Error, object: err.to_status() }]).boxed()
}

/// Runs one watcher as a task feeding the returned stream. The task ends when the consumer
/// drops the stream, the timeout passes, or it lags behind the live channel.
pub fn stream(hub: &Arc<Hub>, filter: Filter, start: Start, opts: StreamOptions) -> WatchStream {
    let (tx, rx) = mpsc::channel(OUT_CAPACITY);
    let bookmark_every = *hub.bookmark_every.lock().expect("bookmark lock poisoned");
    tokio::spawn(run(filter, start, opts, bookmark_every, tx));
    ReceiverStream::new(rx).boxed()
}

fn bookmark(res: &ResourceKind, rv: u64) -> WatchEvent {
    WatchEvent {
        kind: WatchEventType::Bookmark,
        object: json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": {"resourceVersion": rv.to_string()}}),
    }
}

async fn run(
    filter: Filter,
    start: Start,
    opts: StreamOptions,
    bookmark_every: Duration,
    tx: mpsc::Sender<WatchEvent>,
) {
    let deadline = async {
        match opts.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => futures::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let (mut rx, mut seen) = match start {
        Start::Initial { objects, revision, rx } => {
            for object in objects {
                if tx.send(WatchEvent { kind: WatchEventType::Added, object }).await.is_err() {
                    return;
                }
            }
            (rx, revision)
        }
        Start::Resume { replay, last, rx } => {
            for event in replay {
                if let Some(out) = filter.translate(&event)
                    && tx.send(out).await.is_err()
                {
                    return;
                }
            }
            (rx, last)
        }
    };
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + bookmark_every, bookmark_every);
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = &mut deadline => return,
            _ = ticks.tick(), if opts.bookmarks => {
                // `seen` counts every change this watcher has passed, matching or not, so a
                // client resuming from the bookmark misses nothing.
                if tx.send(bookmark(filter.res, seen)).await.is_err() {
                    return;
                }
            }
            received = rx.recv() => match received {
                Ok(event) => {
                    if event.rv <= seen {
                        continue;
                    }
                    seen = event.rv;
                    if let Some(out) = filter.translate(&event)
                        && tx.send(out).await.is_err()
                    {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let err = ApiError::gone(format!("too old resource version: {seen} (watcher fell behind)"));
                    let _ = tx.send(WatchEvent { kind: WatchEventType::Error, object: err.to_status() }).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> &'static ResourceKind {
        ResourceKind::by_plural("", "v1", "pods").unwrap()
    }

    fn pod(name: &str, app: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": app}}})
    }

    fn event(rv: u64, kind: WatchEventType, object: Value, prev: Option<Value>) -> Event {
        let prev = prev.map(|p| serde_json::to_vec(&p).unwrap());
        Event::new(rv, &Key::new(pods(), Some("default"), "x"), kind, object, prev)
    }

    fn filter(labels: &str) -> Filter {
        Filter {
            res: pods(),
            namespace: Some("default".into()),
            labels: LabelSelector::parse(labels).unwrap(),
            fields: FieldSelector::default(),
        }
    }

    #[test]
    fn an_object_leaving_the_selector_is_seen_as_deleted_and_entering_as_added() {
        let f = filter("app=web");
        let leave = event(2, WatchEventType::Modified, pod("a", "db"), Some(pod("a", "web")));
        assert_eq!(f.translate(&leave).unwrap().kind, WatchEventType::Deleted);
        let enter = event(3, WatchEventType::Modified, pod("a", "web"), Some(pod("a", "db")));
        assert_eq!(f.translate(&enter).unwrap().kind, WatchEventType::Added);
        let other = event(4, WatchEventType::Modified, pod("a", "db"), Some(pod("a", "db")));
        assert!(f.translate(&other).is_none());
    }

    #[test]
    fn resuming_before_the_ring_is_gone_with_410() {
        let hub = Hub::new(2);
        hub.start_at(5);
        hub.publish((6..=9).map(|rv| event(rv, WatchEventType::Added, pod("a", "web"), None)).collect());
        let err = match hub.resume(6) {
            Err(e) => e,
            Ok(_) => panic!("resume from 6 should be gone"),
        };
        assert_eq!(err.code, 410);
        assert_eq!(err.message, "too old resource version: 6 (7)");
        match hub.resume(7).unwrap() {
            Start::Resume { replay, last, .. } => {
                assert_eq!(replay.iter().map(|e| e.rv).collect::<Vec<_>>(), [8, 9]);
                assert_eq!(last, 9);
            }
            Start::Initial { .. } => panic!("expected a resume"),
        }
    }

    #[tokio::test]
    async fn a_watcher_that_lags_is_ended_with_410_and_writers_never_block() {
        let hub = Arc::new(Hub::new(10));
        let start = hub.resume(0).unwrap();
        let mut stream = stream(&hub, filter(""), start, StreamOptions { timeout: None, bookmarks: false });
        // Publish far more than the channel holds without reading: this must not block.
        for rv in 1..=(LAG_CAPACITY as u64 + OUT_CAPACITY as u64 + 200) {
            hub.publish(vec![event(rv, WatchEventType::Added, pod("a", "web"), None)]);
        }
        let mut last = None;
        while let Some(ev) = stream.next().await {
            last = Some(ev);
        }
        let last = last.unwrap();
        assert_eq!(last.kind, WatchEventType::Error);
        assert_eq!(last.object["code"], 410);
    }

    #[tokio::test]
    async fn bookmarks_carry_the_last_revision_passed() {
        let hub = Arc::new(Hub::new(10));
        hub.set_bookmark_interval(Duration::from_millis(20));
        let start = hub.resume(0).unwrap();
        let mut stream = stream(&hub, filter("app=none"), start, StreamOptions { timeout: None, bookmarks: true });
        hub.publish(vec![event(1, WatchEventType::Added, pod("a", "web"), None)]);
        let ev = stream.next().await.unwrap();
        assert_eq!(ev.kind, WatchEventType::Bookmark);
        assert_eq!(ev.object["kind"], "Pod");
        // The bookmark may come before the writer's event reaches the watcher; wait for one at 1.
        let mut ev = ev;
        while ev.object["metadata"]["resourceVersion"] != "1" {
            ev = stream.next().await.unwrap();
        }
        assert_eq!(ev.kind, WatchEventType::Bookmark);
    }

    #[tokio::test]
    async fn timeout_ends_the_stream() {
        let hub = Arc::new(Hub::new(10));
        let start = hub.resume(0).unwrap();
        let mut stream = stream(
            &hub,
            filter(""),
            start,
            StreamOptions { timeout: Some(Duration::from_millis(30)), bookmarks: false },
        );
        assert!(stream.next().await.is_none());
    }
}
