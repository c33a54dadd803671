//! A keyed work queue (client-go's workqueue, kube-rs' `Runner`): a key added many times before
//! it is taken is handled once; a key being handled is never handed out again until [`done`];
//! adds that arrive meanwhile are kept and handed out after `done`. Delayed adds and per-key
//! exponential back-off run on tokio's clock, so tests use a paused clock.
//!
//! ```no_run
//! # async fn demo() {
//! use skiff_api::WorkQueue;
//! let queue = WorkQueue::<String>::new();
//! queue.add("default/web".to_string());
//! while let Some(key) = queue.next().await {
//!     let ok = true; // reconcile(&key)
//!     if ok { queue.forget(&key) } else { queue.add_rate_limited(key.clone()); }
//!     queue.done(&key);
//! }
//! # }
//! ```
//!
//! [`done`]: WorkQueue::done

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// First and largest delay of [`WorkQueue::add_rate_limited`] (client-go: 5 ms to 1000 s; ours
/// reaches its cap sooner, because a node has few objects and a user waits on each).
pub const DEFAULT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(300));

pub struct WorkQueue<T> {
    state: Arc<Mutex<State<T>>>,
    notify: Arc<Notify>,
    backoff: (Duration, Duration),
}

impl<T> Clone for WorkQueue<T> {
    fn clone(&self) -> Self {
        Self { state: self.state.clone(), notify: self.notify.clone(), backoff: self.backoff }
    }
}

struct State<T> {
    /// Keys ready to hand out, in order of arrival; each at most once.
    ready: VecDeque<T>,
    /// Keys that need (another) run: those in `ready`, and those added while processing.
    dirty: HashSet<T>,
    processing: HashSet<T>,
    /// The earliest pending delayed add of each key.
    delayed: HashMap<T, Instant>,
    failures: HashMap<T, u32>,
    shut_down: bool,
}

impl<T: Clone + Eq + Hash + Send + 'static> Default for WorkQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone + Eq + Hash + Send + 'static> WorkQueue<T> {
    pub fn new() -> Self {
        Self::with_backoff(DEFAULT_BACKOFF.0, DEFAULT_BACKOFF.1)
    }

    pub fn with_backoff(first: Duration, max: Duration) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                ready: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                delayed: HashMap::new(),
                failures: HashMap::new(),
                shut_down: false,
            })),
            notify: Arc::new(Notify::new()),
            backoff: (first, max),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        // Every critical section leaves the state consistent before it can panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `key` unless it is already waiting. A key being processed runs again after `done`.
    pub fn add(&self, key: T) {
        let mut state = self.lock();
        if state.shut_down || !state.dirty.insert(key.clone()) {
            return;
        }
        if !state.processing.contains(&key) {
            state.ready.push_back(key);
            drop(state);
            self.notify.notify_one();
        }
    }

    /// Queues `key` once `delay` has passed. Of several pending delays of one key, the earliest wins.
    pub fn add_after(&self, key: T, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let at = Instant::now() + delay;
        {
            let mut state = self.lock();
            if state.shut_down {
                return;
            }
            match state.delayed.get(&key) {
                Some(existing) if *existing <= at => return,
                _ => {
                    state.delayed.insert(key.clone(), at);
                }
            }
        }
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let due = {
                let mut state = queue.lock();
                // A later, earlier-due add replaced this timer's deadline: that timer adds the key.
                if state.delayed.get(&key) == Some(&at) {
                    state.delayed.remove(&key);
                    true
                } else {
                    false
                }
            };
            if due {
                queue.add(key);
            }
        });
    }

    /// Queues `key` after its back-off (first delay, doubling per failure up to the cap).
    /// Returns the delay chosen.
    pub fn add_rate_limited(&self, key: T) -> Duration {
        let delay = {
            let mut state = self.lock();
            let failures = state.failures.entry(key.clone()).or_insert(0);
            let delay = self.backoff.0.saturating_mul(2u32.saturating_pow(*failures)).min(self.backoff.1);
            *failures = failures.saturating_add(1);
            delay
        };
        self.add_after(key, delay);
        delay
    }

    /// Resets the back-off of `key` (after it was handled successfully).
    pub fn forget(&self, key: &T) {
        self.lock().failures.remove(key);
    }

    /// How many times in a row `key` failed.
    pub fn failures(&self, key: &T) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// The next key to handle, marked as processing until [`WorkQueue::done`]. `None` once shut down.
    pub async fn next(&self) -> Option<T> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if state.shut_down {
                    return None;
                }
                if let Some(key) = state.ready.pop_front() {
                    state.dirty.remove(&key);
                    state.processing.insert(key.clone());
                    let more = !state.ready.is_empty();
                    drop(state);
                    if more {
                        // Hand the permit on: another consumer may be waiting for the rest.
                        self.notify.notify_one();
                    }
                    return Some(key);
                }
            }
            notified.await;
        }
    }

    /// Ends the processing of `key`; if it was added meanwhile it is queued again.
    pub fn done(&self, key: &T) {
        let mut state = self.lock();
        state.processing.remove(key);
        if state.dirty.contains(key) && !state.shut_down {
            state.ready.push_back(key.clone());
            drop(state);
            self.notify.notify_one();
        }
    }

    /// Makes every `next` return `None`; later adds are ignored.
    pub fn shut_down(&self) {
        self.lock().shut_down = true;
        self.notify.notify_waiters();
        // A consumer between `enable` and `await` holds no waiter slot yet: leave a permit too.
        self.notify.notify_one();
    }

    /// Keys waiting to be handed out (not counting delayed ones).
    pub fn len(&self) -> usize {
        self.lock().ready.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next_now(q: &WorkQueue<&'static str>) -> Option<&'static str> {
        tokio::time::timeout(Duration::from_millis(1), q.next()).await.ok().flatten()
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_added_twice_is_handed_out_once() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2);
        assert_eq!(next_now(&q).await, Some("a"));
        assert_eq!(next_now(&q).await, Some("b"));
        assert_eq!(next_now(&q).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_being_processed_is_not_handed_out_until_done() {
        let q = WorkQueue::new();
        q.add("a");
        assert_eq!(next_now(&q).await, Some("a"));
        q.add("a");
        q.add("a");
        assert_eq!(next_now(&q).await, None, "a is still processing");
        q.done(&"a");
        assert_eq!(next_now(&q).await, Some("a"), "the adds during processing run once more");
        q.done(&"a");
        assert_eq!(next_now(&q).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_add_arrives_after_its_delay_and_the_earliest_delay_wins() {
        let q = WorkQueue::new();
        q.add_after("a", Duration::from_secs(10));
        q.add_after("a", Duration::from_secs(3));
        q.add_after("a", Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(2900)).await;
        assert_eq!(next_now(&q).await, None);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(next_now(&q).await, Some("a"));
        q.done(&"a");
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(next_now(&q).await, None, "the replaced timers add nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limited_adds_back_off_exponentially_until_forgotten() {
        let q = WorkQueue::with_backoff(Duration::from_secs(1), Duration::from_secs(5));
        let delays: Vec<_> = (0..5).map(|_| q.add_rate_limited("a").as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        assert_eq!(q.failures(&"a"), 5);
        q.forget(&"a");
        assert_eq!(q.add_rate_limited("a"), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_consumer_wakes_on_add_and_on_shutdown() {
        let q = WorkQueue::<&'static str>::new();
        let consumer = {
            let q = q.clone();
            tokio::spawn(async move {
                let first = q.next().await;
                let second = q.next().await;
                (first, second)
            })
        };
        tokio::task::yield_now().await;
        q.add("a");
        tokio::task::yield_now().await;
        q.shut_down();
        assert_eq!(consumer.await.unwrap(), (Some("a"), None));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_consumers_never_share_a_key() {
        let q = WorkQueue::<u32>::new();
        let running = Arc::new(Mutex::new(HashSet::new()));
        let handled = Arc::new(Mutex::new(0u32));
        let mut workers = Vec::new();
        for _ in 0..4 {
            let (q, running, handled) = (q.clone(), running.clone(), handled.clone());
            workers.push(tokio::spawn(async move {
                while let Some(key) = q.next().await {
                    assert!(running.lock().unwrap().insert(key), "key {key} handed out twice at once");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    running.lock().unwrap().remove(&key);
                    *handled.lock().unwrap() += 1;
                    q.done(&key);
                }
            }));
        }
        for round in 0..3 {
            for key in 0..5 {
                q.add(key);
            }
            tokio::time::sleep(Duration::from_millis(3 + round)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        q.shut_down();
        for w in workers {
            w.await.unwrap();
        }
        let handled = *handled.lock().unwrap();
        assert!((5..=15).contains(&handled), "handled {handled}");
    }
}
