//! Order statistics of a few hundred samples: exact, by sorting.

use std::time::Duration;

/// The nearest-rank percentile `p` (0–100) of `samples`; zero for no samples.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn median(samples: &[Duration]) -> Duration {
    percentile(samples, 50.0)
}

pub fn mean(samples: &[Duration]) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.iter().sum::<Duration>() / samples.len() as u32
}

/// Milliseconds with two decimals: the unit every figure of the bench is printed in.
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// `a / b` as a ratio with two decimals, or `-` when `b` is zero.
pub fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() { "-".into() } else { format!("{:.2}", a.as_secs_f64() / b.as_secs_f64()) }
}

/// CPU time (user + system) of this process and of its reaped children so far.
pub fn cpu_time() -> Duration {
    let get = |who| {
        // SAFETY: getrusage fills the zeroed struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut usage) };
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        tv(usage.ru_utime) + tv(usage.ru_stime)
    };
    get(libc::RUSAGE_SELF) + get(libc::RUSAGE_CHILDREN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms_list(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let s = ms_list(&[5, 1, 4, 2, 3, 10, 9, 8, 7, 6]);
        assert_eq!(median(&s), Duration::from_millis(5));
        assert_eq!(percentile(&s, 90.0), Duration::from_millis(9));
        assert_eq!(percentile(&s, 99.0), Duration::from_millis(10));
        assert_eq!(percentile(&s, 0.0), Duration::from_millis(1));
        assert_eq!(median(&[]), Duration::ZERO);
        assert_eq!(mean(&ms_list(&[1, 2, 3])), Duration::from_millis(2));
    }

    #[test]
    fn ratios_and_milliseconds_print_two_decimals() {
        assert_eq!(ratio(Duration::from_millis(3), Duration::from_millis(12)), "0.25");
        assert_eq!(ratio(Duration::from_millis(3), Duration::ZERO), "-");
        assert_eq!(ms(Duration::from_micros(2_346)), "2.35");
    }
}
