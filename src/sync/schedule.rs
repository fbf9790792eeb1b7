//! When a sync rule runs next: every `interval`, or at the times a cron
//! expression names (five fields, evaluated in UTC), each run delayed by a
//! random part of `jitter` so that many sites do not hit an upstream in the
//! same second.
//!
//! Pure arithmetic: the caller supplies the time and the random number, so
//! the scheduler can be tested with a paused clock and a fixed seed.

use std::fmt;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, SubsecRound, Utc};
use croner::Cron;

/// How a rule's runs follow each other.
#[derive(Debug, Clone)]
pub enum ScheduleKind {
    /// This long after the previous run started.
    Interval(Duration),
    /// At the times a cron expression names, in UTC.
    Cron(Box<Cron>),
}

/// A rule's schedule: when it runs, plus up to `jitter` later.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub kind: ScheduleKind,
    /// Each run starts a uniformly random time in `[0, jitter)` late.
    pub jitter: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("the interval must be longer than zero")]
    ZeroInterval,
    #[error("{expr:?} is not a cron expression: {why} (five fields, minute hour day-of-month month day-of-week, in UTC; e.g. \"0 2 * * *\")")]
    Cron { expr: String, why: String },
    #[error("{0:?} names no time that exists")]
    Never(String),
}

impl Schedule {
    /// Every `interval` (longer than zero).
    pub fn every(interval: Duration, jitter: Duration) -> Result<Schedule, ScheduleError> {
        if interval.is_zero() {
            return Err(ScheduleError::ZeroInterval);
        }
        Ok(Schedule {
            kind: ScheduleKind::Interval(interval),
            jitter,
        })
    }

    /// At the times of a five-field cron expression (`@daily` and the other
    /// nicknames too), in UTC. One that names no time that exists
    /// (`0 0 30 2 *`) is refused.
    pub fn cron(expr: &str, jitter: Duration) -> Result<Schedule, ScheduleError> {
        let cron = Cron::new(expr).parse().map_err(|e| ScheduleError::Cron {
            expr: expr.to_owned(),
            why: e.to_string(),
        })?;
        // Cron names no years, so a pattern that matches once matches again
        // (Feb 29 every leap year): searching from 1970 needs no clock.
        if cron
            .find_next_occurrence(&DateTime::<Utc>::UNIX_EPOCH, false)
            .is_err()
        {
            return Err(ScheduleError::Never(expr.to_owned()));
        }
        Ok(Schedule {
            kind: ScheduleKind::Cron(Box::new(cron)),
            jitter,
        })
    }

    /// When to run next, strictly after `now`: for an interval, `now` is when
    /// the previous run started (or when the schedule began); for cron, the
    /// current time. `rng` is any random `u64`; it picks the jitter. `None`
    /// when there is no next time (a cron date past year 5000, an overflow).
    pub fn next_after(&self, now: SystemTime, rng: u64) -> Option<SystemTime> {
        let base = match &self.kind {
            ScheduleKind::Interval(d) => now.checked_add(*d)?,
            ScheduleKind::Cron(cron) => {
                // Whole seconds: a cron time is a whole second, and the next
                // one after 02:00:00.5 is not 02:00:00.
                let now = DateTime::<Utc>::from(now).trunc_subsecs(0);
                cron.find_next_occurrence(&now, false).ok()?.into()
            }
        };
        base.checked_add(jitter_part(self.jitter, rng))
    }
}

/// `rng` mapped onto `[0, jitter)`, in nanoseconds.
fn jitter_part(jitter: Duration, rng: u64) -> Duration {
    let span = u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX);
    if span == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rng % span)
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ScheduleKind::Interval(d) => write!(f, "every {}", humantime::format_duration(*d))?,
            ScheduleKind::Cron(c) => write!(f, "cron \"{}\" UTC", c.as_str())?,
        }
        if !self.jitter.is_zero() {
            write!(f, " + up to {}", humantime::format_duration(self.jitter))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `YYYY-MM-DDTHH:MM:SS[.f]Z` as a `SystemTime`.
    fn at(rfc3339: &str) -> SystemTime {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().into()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn interval_follows_the_previous_start() {
        let s = Schedule::every(secs(6 * 3600), Duration::ZERO).unwrap();
        let t = at("2025-03-01T10:00:00Z");
        assert_eq!(s.next_after(t, 12345), Some(at("2025-03-01T16:00:00Z")));
        assert_eq!(
            Schedule::every(Duration::ZERO, secs(1)).unwrap_err(),
            ScheduleError::ZeroInterval
        );
        assert_eq!(s.to_string(), "every 6h");
    }

    #[test]
    fn cron_in_utc_strictly_after_now() {
        let s = Schedule::cron("0 2 * * *", Duration::ZERO).unwrap();
        #[rustfmt::skip]
        let cases = [
            ("2025-03-01T01:59:59.500Z", "2025-03-01T02:00:00Z"),
            ("2025-03-01T02:00:00Z", "2025-03-02T02:00:00Z"),
            ("2025-03-01T02:00:00.500Z", "2025-03-02T02:00:00Z"),
            ("2025-12-31T23:00:00Z", "2026-01-01T02:00:00Z"),
        ];
        for (now, want) in cases {
            assert_eq!(s.next_after(at(now), 0), Some(at(want)), "after {now}");
        }
        let weekly = Schedule::cron("30 4 * * MON", Duration::ZERO).unwrap();
        // 2025-03-01 is a Saturday.
        assert_eq!(
            weekly.next_after(at("2025-03-01T00:00:00Z"), 0),
            Some(at("2025-03-03T04:30:00Z"))
        );
        let daily = Schedule::cron("@daily", Duration::ZERO).unwrap();
        assert_eq!(
            daily.next_after(at("2025-03-01T00:00:00Z"), 0),
            Some(at("2025-03-02T00:00:00Z"))
        );
        assert_eq!(s.to_string(), "cron \"0 2 * * *\" UTC");
    }

    #[test]
    fn bad_cron_expressions() {
        for expr in [
            "",
            "0 2 * *",
            "0 25 * * *",
            "61 * * * *",
            "every day",
            "0 0 2 * * * *",
        ] {
            let e = Schedule::cron(expr, Duration::ZERO).unwrap_err();
            assert!(matches!(e, ScheduleError::Cron { .. }), "{expr:?}: {e:?}");
            assert!(e.to_string().contains("five fields"), "{e}");
        }
        // Six fields would be seconds: refused, a rule runs at most each minute.
        assert!(Schedule::cron("0 0 2 * * *", Duration::ZERO).is_err());
        assert_eq!(
            Schedule::cron("0 0 30 2 *", Duration::ZERO).unwrap_err(),
            ScheduleError::Never("0 0 30 2 *".into())
        );
        // Rare is not never: the next Feb 29.
        let leap = Schedule::cron("0 0 29 2 *", Duration::ZERO).unwrap();
        assert_eq!(
            leap.next_after(at("2025-03-01T00:00:00Z"), 0),
            Some(at("2028-02-29T00:00:00Z"))
        );
    }

    #[test]
    fn jitter_stays_below_its_bound() {
        let jitter = secs(600);
        let s = Schedule::every(secs(3600), jitter).unwrap();
        let t = at("2025-03-01T10:00:00Z");
        let base = at("2025-03-01T11:00:00Z");
        #[rustfmt::skip]
        let cases: &[(u64, Duration)] = &[
            (0, Duration::ZERO),
            (1, Duration::from_nanos(1)),
            (600_000_000_000 - 1, secs(600) - Duration::from_nanos(1)),
            (600_000_000_000, Duration::ZERO),
            (300_000_000_000, secs(300)),
        ];
        for (rng, want) in cases {
            assert_eq!(s.next_after(t, *rng), Some(base + *want), "rng {rng}");
        }
        // Any random number lands in [0, jitter).
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let d = s.next_after(t, x).unwrap().duration_since(base).unwrap();
            assert!(d < jitter, "{d:?}");
        }
        let c = Schedule::cron("0 2 * * *", secs(60)).unwrap();
        assert_eq!(
            c.next_after(at("2025-03-01T00:00:00Z"), 30_000_000_000),
            Some(at("2025-03-01T02:00:30Z"))
        );
        assert_eq!(c.to_string(), "cron \"0 2 * * *\" UTC + up to 1m");
        // A jitter beyond u64 nanoseconds still works.
        assert_eq!(jitter_part(Duration::MAX, 7), Duration::from_nanos(7));
    }

    #[test]
    fn overflow_is_no_next_time() {
        let s = Schedule::every(Duration::MAX, Duration::ZERO).unwrap();
        assert_eq!(s.next_after(SystemTime::now(), 0), None);
    }
}
