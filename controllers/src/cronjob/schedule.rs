//! CronJob schedules in Kubernetes' 5-field form (`*/5 * * * *`, names, `@hourly`…; 0 and 7 are
//! both Sunday), evaluated in the CronJob's `timeZone`, and the missed-start arithmetic of
//! Kubernetes' `mostRecentScheduleTime`.

use std::str::FromStr;

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// At most this many missed start times are counted; more gets a warning event.
pub const MISSED_LIMIT: usize = 100;

#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: TimeZone,
}

impl Schedule {
    /// Parses a schedule; `time_zone` is an IANA name (`spec.timeZone`), else the node's zone.
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Self, String> {
        let schedule = schedule.trim();
        if schedule.starts_with("TZ=") || schedule.starts_with("CRON_TZ=") {
            return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
        }
        let schedule = if schedule.eq_ignore_ascii_case("@midnight") { "@daily" } else { schedule };
        let parser = CronParser::builder().seconds(Seconds::Disallowed).build();
        let cron = parser.parse(schedule).map_err(|e| format!("unparseable schedule {schedule:?}: {e}"))?;
        let tz = match time_zone {
            Some(name) => TimeZone::get(name).map_err(|_| format!("unknown time zone {name}"))?,
            None => TimeZone::system(),
        };
        Ok(Self { cron, tz })
    }

    /// The first start time strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        self.cron.find_next_occurrence(&t.to_zoned(self.tz.clone()), false).ok().map(|z| z.timestamp())
    }

    /// The latest start time in `(earliest, now]` and how many there were (up to
    /// [`MISSED_LIMIT`] + 1).
    pub fn missed(&self, earliest: Timestamp, now: Timestamp) -> (Option<Timestamp>, usize) {
        let (mut latest, mut count, mut t) = (None, 0, earliest);
        while let Some(next) = self.next_after(t) {
            if next > now {
                break;
            }
            latest = Some(next);
            count += 1;
            if count > MISSED_LIMIT {
                // Jump to the most recent one directly, as Kubernetes does past the limit.
                latest = self
                    .cron
                    .find_previous_occurrence(&now.to_zoned(self.tz.clone()), true)
                    .ok()
                    .map(|z| z.timestamp());
                break;
            }
            t = next;
        }
        (latest, count)
    }

    /// `t` written in the schedule's zone, as the scheduled-timestamp annotation carries it.
    pub fn format(&self, t: Timestamp) -> String {
        t.to_zoned(self.tz.clone()).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
    }
}

impl FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s, Some("UTC"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn every_minute_counts_the_minutes_missed() {
        let s: Schedule = "* * * * *".parse().unwrap();
        let (latest, count) = s.missed(at("2026-01-01T00:00:30Z"), at("2026-01-01T00:03:10Z"));
        assert_eq!(latest, Some(at("2026-01-01T00:03:00Z")));
        assert_eq!(count, 3);
    }

    #[test]
    fn sunday_is_both_zero_and_seven_and_names_work() {
        for schedule in ["0 12 * * 0", "0 12 * * 7", "0 12 * * SUN"] {
            let s: Schedule = schedule.parse().unwrap();
            // 2026-01-04 is a Sunday.
            assert_eq!(s.next_after(at("2026-01-01T00:00:00Z")), Some(at("2026-01-04T12:00:00Z")), "{schedule}");
        }
    }

    #[test]
    fn macros_and_time_zones() {
        let s: Schedule = "@midnight".parse().unwrap();
        assert_eq!(s.next_after(at("2026-01-01T10:00:00Z")), Some(at("2026-01-02T00:00:00Z")));
        let tokyo = Schedule::parse("0 9 * * *", Some("Asia/Tokyo")).unwrap();
        assert_eq!(tokyo.next_after(at("2026-01-01T00:30:00Z")), Some(at("2026-01-02T00:00:00Z")));
    }

    #[test]
    fn long_downtime_is_capped_and_still_finds_the_latest() {
        let s: Schedule = "* * * * *".parse().unwrap();
        let (latest, count) = s.missed(at("2026-01-01T00:00:00Z"), at("2026-01-01T05:00:30Z"));
        assert_eq!(count, MISSED_LIMIT + 1);
        assert_eq!(latest, Some(at("2026-01-01T05:00:00Z")));
    }

    #[test]
    fn six_field_and_tz_prefixed_schedules_are_refused() {
        assert!("* * * * * *".parse::<Schedule>().is_err());
        assert!("TZ=UTC * * * * *".parse::<Schedule>().is_err());
    }
}
