//! Single flight: concurrent fetches of one key within a process share one run. The kubelet
//! starting ten pods of a new image at once, or two tags of the same content, download each
//! blob once.
//!
//! The run is a spawned task, so the first caller going away (a pod deleted mid-pull) does not
//! cancel it for the others; it is aborted only when every caller has gone. Its result reaches
//! every caller, an error as its message. The entry leaves the map when the run ends, so a
//! later call after an error runs again (and after a success finds the content in the store).
//!
//! Callers join with their own progress observer: the run reports to every observer attached
//! so far, so a caller that joined a download half way sees its remaining bytes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use super::progress::{PullEvent, PullProgress};

/// A shared run's outcome: errors travel as text, since every caller gets a copy.
pub type Outcome<T> = Result<T, String>;

type Run<T> = Shared<BoxFuture<'static, Outcome<T>>>;

struct Entry<T: Clone> {
    id: u64,
    run: Run<T>,
    observers: Arc<Observers>,
    /// Held by each caller; when the last one drops, the run is aborted.
    guard: Weak<AbortOnDrop>,
}

pub struct SingleFlight<T: Clone> {
    inflight: Arc<Mutex<HashMap<String, Entry<T>>>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl<T: Clone> Default for SingleFlight<T> {
    fn default() -> Self {
        SingleFlight { inflight: Arc::default(), next_id: Default::default() }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The progress observers of one run's callers.
#[derive(Default)]
pub struct Observers(Mutex<Vec<Arc<dyn PullProgress>>>);

impl Observers {
    fn attach(&self, observer: Option<Arc<dyn PullProgress>>) {
        if let Some(o) = observer {
            self.0.lock().expect("observers poisoned by a panic").push(o);
        }
    }
}

impl PullProgress for Observers {
    fn event(&self, event: PullEvent) {
        let observers = self.0.lock().expect("observers poisoned by a panic").clone();
        for o in observers {
            o.event(event.clone());
        }
    }
}

impl<T: Clone + Send + Sync + 'static> SingleFlight<T> {
    /// Runs `fetch` for `key` unless a run of it is in flight, then waits for that run. Returns
    /// the outcome and whether this call started the run.
    pub async fn run<F, Fut>(&self, key: &str, observer: Option<Arc<dyn PullProgress>>, fetch: F) -> (Outcome<T>, bool)
    where
        F: FnOnce(Arc<Observers>) -> Fut,
        Fut: Future<Output = Outcome<T>> + Send + 'static,
    {
        let (run, _guard, led) = {
            let mut map = self.inflight.lock().expect("single flight map poisoned by a panic");
            match map.get(key).and_then(|e| Some((e, e.guard.upgrade()?))) {
                Some((entry, guard)) => {
                    entry.observers.attach(observer);
                    (entry.run.clone(), guard, false)
                }
                // None in flight, or one whose callers all went away (its abort is under way:
                // what it held, such as a blob's lock file, is released when it unwinds).
                None => {
                    let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let observers = Arc::new(Observers::default());
                    observers.attach(observer);
                    let fut = fetch(observers.clone());
                    let (inflight, owned_key) = (Arc::downgrade(&self.inflight), key.to_string());
                    let task = tokio::spawn(async move {
                        let out = fut.await;
                        // Ended runs leave the map at once (under its lock, so no caller joins a
                        // finished run and misses that a retry is due).
                        if let Some(map) = inflight.upgrade() {
                            let mut map = map.lock().expect("single flight map poisoned by a panic");
                            if map.get(&owned_key).is_some_and(|e| e.id == id) {
                                map.remove(&owned_key);
                            }
                        }
                        out
                    });
                    let guard = Arc::new(AbortOnDrop(task.abort_handle()));
                    let run: Run<T> = async move {
                        match task.await {
                            Ok(out) => out,
                            Err(e) if e.is_cancelled() => Err("cancelled: every caller went away".into()),
                            Err(e) => Err(format!("the fetch task failed: {e}")),
                        }
                    }
                    .boxed()
                    .shared();
                    map.insert(
                        key.to_string(),
                        Entry { id, run: run.clone(), observers, guard: Arc::downgrade(&guard) },
                    );
                    (run, guard, true)
                }
            }
        };
        let out = run.await;
        (out, led)
    }
}

#[cfg(test)]
impl<T: Clone> SingleFlight<T> {
    /// Keys with a run in flight now.
    fn in_flight(&self) -> usize {
        self.inflight.lock().unwrap().len()
    }

    /// Callers waiting on the run of `key` now.
    fn callers(&self, key: &str) -> usize {
        self.inflight.lock().unwrap().get(key).map_or(0, |e| e.guard.strong_count())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Notify;

    use super::*;
    use crate::RecordedProgress;

    /// Yields until `n` callers wait on `key` (no sleeps: the callers are other tasks).
    async fn until_callers(flight: &SingleFlight<u32>, key: &str, n: usize) {
        while flight.callers(key) != n {
            tokio::task::yield_now().await;
        }
    }

    fn spawn_caller(
        flight: &Arc<SingleFlight<u32>>,
        key: &'static str,
        fetches: &Arc<AtomicUsize>,
        release: &Arc<Notify>,
        out: Outcome<u32>,
    ) -> tokio::task::JoinHandle<(Outcome<u32>, bool)> {
        let (flight, fetches, release) = (flight.clone(), fetches.clone(), release.clone());
        tokio::spawn(async move {
            flight
                .run(key, None, move |_| async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    release.notified().await;
                    out
                })
                .await
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_of_one_key_share_one_fetch_and_all_get_its_result() {
        let flight = Arc::new(SingleFlight::<u32>::default());
        let (fetches, release) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
        let callers: Vec<_> = (0..8).map(|_| spawn_caller(&flight, "sha256:a", &fetches, &release, Ok(42))).collect();
        until_callers(&flight, "sha256:a", 8).await;
        // notify_one keeps a permit, so the release reaches the fetch even before it waits.
        release.notify_one();
        let mut results = Vec::new();
        for c in callers {
            results.push(c.await.unwrap());
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "one fetch for all callers");
        assert!(results.iter().all(|(out, _)| out == &Ok(42)), "{results:?}");
        assert_eq!(results.iter().filter(|(_, led)| *led).count(), 1, "exactly one caller led");
        assert_eq!(flight.in_flight(), 0, "the run left the map when it ended");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_error_reaches_every_caller_and_a_later_call_fetches_again() {
        let flight = Arc::new(SingleFlight::<u32>::default());
        let (fetches, release) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
        let callers: Vec<_> =
            (0..3).map(|_| spawn_caller(&flight, "k", &fetches, &release, Err("registry said no".into()))).collect();
        until_callers(&flight, "k", 3).await;
        release.notify_one();
        for c in callers {
            assert_eq!(c.await.unwrap().0, Err("registry said no".to_string()));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);

        let again = spawn_caller(&flight, "k", &fetches, &release, Ok(7));
        release.notify_one();
        assert_eq!(again.await.unwrap(), (Ok(7), true), "after an error the next call fetches again");
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_run_goes_on_when_its_first_caller_leaves_and_stops_when_all_have() {
        let flight = Arc::new(SingleFlight::<u32>::default());
        let (fetches, release) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
        let first = spawn_caller(&flight, "k", &fetches, &release, Ok(1));
        let second = spawn_caller(&flight, "k", &fetches, &release, Ok(2));
        until_callers(&flight, "k", 2).await;
        first.abort();
        until_callers(&flight, "k", 1).await;
        release.notify_one();
        assert_eq!(second.await.unwrap(), (Ok(1), false), "the first caller's run finished for the second");

        let lone = spawn_caller(&flight, "k", &fetches, &release, Ok(3));
        until_callers(&flight, "k", 1).await;
        lone.abort();
        let _ = lone.await;
        // The abandoned run is aborted: a new caller starts its own instead of waiting on it.
        let next = spawn_caller(&flight, "k", &fetches, &release, Ok(4));
        release.notify_one();
        assert_eq!(next.await.unwrap(), (Ok(4), true));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_joiner_sees_the_runs_events_from_when_it_joined() {
        let flight = Arc::new(SingleFlight::<u32>::default());
        let (leader_events, joiner_events) =
            (Arc::new(RecordedProgress::default()), Arc::new(RecordedProgress::default()));
        let (half, half_rx) = tokio::sync::oneshot::channel::<()>();
        let release = Arc::new(Notify::new());
        let leader = {
            let (flight, release, observer) = (flight.clone(), release.clone(), leader_events.clone());
            tokio::spawn(async move {
                flight
                    .run("d", Some(observer), move |observers| async move {
                        let at = |current| PullEvent::Downloading { digest: "d".into(), current, total: 2 };
                        observers.event(at(1));
                        let _ = half.send(());
                        release.notified().await;
                        observers.event(at(2));
                        Ok(0)
                    })
                    .await
            })
        };
        half_rx.await.unwrap();
        let joiner = {
            let (flight, observer) = (flight.clone(), joiner_events.clone());
            tokio::spawn(async move { flight.run("d", Some(observer), |_| async { Ok(9) }).await })
        };
        until_callers(&flight, "d", 2).await;
        release.notify_one();
        assert_eq!(leader.await.unwrap(), (Ok(0), true));
        assert_eq!(joiner.await.unwrap(), (Ok(0), false));
        assert_eq!(leader_events.0.lock().unwrap().len(), 2);
        let joined = joiner_events.0.lock().unwrap().clone();
        assert_eq!(joined, [PullEvent::Downloading { digest: "d".into(), current: 2, total: 2 }]);
    }
}
