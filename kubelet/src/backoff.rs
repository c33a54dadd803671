//! Restart and image-pull back-off, as the kubelet's: the first retry is immediate, then 10 s,
//! doubling to a 5 min cap; a container that ran cleanly for 10 min starts over.

use std::time::Duration;

use tokio::time::Instant;

pub const INITIAL: Duration = Duration::from_secs(10);
pub const MAX: Duration = Duration::from_secs(300);
/// A run at least this long resets the back-off.
pub const RESET_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backoff {
    /// The wait before the next attempt; `None` until the first failure has been retried.
    delay: Option<Duration>,
}

impl Backoff {
    /// The delay to wait after a failure at `failed_at`: `None` (go now) the first time.
    pub fn delay(&self) -> Option<Duration> {
        self.delay
    }

    /// When the next attempt may run after a failure at `failed_at`.
    pub fn ready_at(&self, failed_at: Instant) -> Instant {
        failed_at + self.delay.unwrap_or_default()
    }

    /// Records an attempt: the next failure waits longer.
    pub fn step(&mut self) {
        self.delay = Some(match self.delay {
            None => INITIAL,
            Some(d) => (d * 2).min(MAX),
        });
    }

    pub fn reset(&mut self) {
        self.delay = None;
    }

    /// Records how long the container ran before it exited: a long, clean run starts over.
    pub fn ran_for(&mut self, ran: Duration) {
        if ran >= RESET_AFTER {
            self.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_ten_seconds_to_five_minutes() {
        let mut b = Backoff::default();
        let mut seen = vec![b.delay()];
        for _ in 0..7 {
            b.step();
            seen.push(b.delay());
        }
        let secs: Vec<u64> = seen.iter().map(|d| d.map_or(0, |d| d.as_secs())).collect();
        assert_eq!(secs, [0, 10, 20, 40, 80, 160, 300, 300]);
        b.reset();
        assert_eq!(b.delay(), None);
    }

    #[test]
    fn ten_minutes_of_running_start_the_back_off_over() {
        let mut b = Backoff::default();
        for _ in 0..4 {
            b.step();
        }
        b.ran_for(RESET_AFTER - Duration::from_secs(1));
        assert_eq!(b.delay(), Some(Duration::from_secs(80)), "a shorter run keeps the back-off");
        b.ran_for(RESET_AFTER);
        assert_eq!(b.delay(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn ready_at_counts_from_the_failure() {
        let mut b = Backoff::default();
        let t = Instant::now();
        assert_eq!(b.ready_at(t), t);
        b.step();
        assert_eq!(b.ready_at(t), t + INITIAL);
    }
}
