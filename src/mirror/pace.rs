//! The minimum transfer rate of a blob download: a fill's source must
//! deliver at least `min_rate` bytes per second averaged over each `window`,
//! or the fill fails like any failed fill (every reader gets the error, the
//! next request starts a new download). A per-read timeout alone lets an
//! upstream that sends one byte every 40 s hold a fill, and every client
//! joined to it, for hours.
//!
//! Pure bookkeeping on instants the caller passes in (so its tests need no
//! clock); the caller waits for the next chunk no later than
//! [`Pace::deadline`], so a source that sends nothing at all is caught too.

use std::time::{Duration, Instant};

/// The rate check of one download, in consecutive windows.
#[derive(Debug)]
pub struct Pace {
    min_rate: u64,
    window: Duration,
    /// Start of the current window and the bytes received in it.
    start: Instant,
    bytes: u64,
}

/// A window ended with fewer bytes than the minimum rate asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooSlow {
    pub bytes: u64,
    pub window: Duration,
    pub min_rate: u64,
}

impl Pace {
    /// A check starting now; `min_rate` 0 never fails.
    pub fn new(min_rate: u64, window: Duration, now: Instant) -> Pace {
        Pace {
            min_rate,
            window,
            start: now,
            bytes: 0,
        }
    }

    /// When the current window ends: the caller must look again by then,
    /// bytes or not. `None` without a minimum.
    pub fn deadline(&self) -> Option<Instant> {
        (self.min_rate > 0).then(|| self.start + self.window)
    }

    /// Leaves `d` out of the current window: time spent waiting on this
    /// side (the disk, an eviction pass), not on the source.
    pub fn exclude(&mut self, d: Duration) {
        self.start += d;
    }

    /// Counts `n` bytes received at `now`, then checks the window.
    pub fn received(&mut self, n: u64, now: Instant) -> Result<(), TooSlow> {
        self.bytes += n;
        self.check(now)
    }

    /// At or past the end of the window: fails if it fell short, else
    /// starts the next window at `now`.
    pub fn check(&mut self, now: Instant) -> Result<(), TooSlow> {
        let Some(end) = self.deadline() else {
            return Ok(());
        };
        if now < end {
            return Ok(());
        }
        let need = (self.min_rate as f64 * self.window.as_secs_f64()) as u64;
        if self.bytes < need {
            return Err(TooSlow {
                bytes: self.bytes,
                window: self.window,
                min_rate: self.min_rate,
            });
        }
        self.start = now;
        self.bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(30);

    #[test]
    fn a_drip_fails_at_the_end_of_the_first_window() {
        let t0 = Instant::now();
        let mut p = Pace::new(16 << 10, W, t0);
        // One byte every 10 s: fine until the window is over.
        assert_eq!(p.received(1, t0 + Duration::from_secs(10)), Ok(()));
        assert_eq!(p.received(1, t0 + Duration::from_secs(20)), Ok(()));
        let e = p.received(1, t0 + Duration::from_secs(30)).unwrap_err();
        assert_eq!((e.bytes, e.window, e.min_rate), (3, W, 16 << 10));
    }

    #[test]
    fn silence_fails_when_the_caller_looks_at_the_deadline() {
        let t0 = Instant::now();
        let mut p = Pace::new(1, W, t0);
        assert_eq!(p.deadline(), Some(t0 + W));
        assert!(p.check(t0 + W).is_err());
    }

    #[test]
    fn a_fast_window_starts_the_next_one() {
        let t0 = Instant::now();
        let mut p = Pace::new(1000, W, t0);
        assert_eq!(p.received(30_000, t0 + Duration::from_secs(1)), Ok(()));
        assert_eq!(p.check(t0 + W), Ok(()), "30 000 bytes in 30 s is enough");
        assert_eq!(p.deadline(), Some(t0 + W + W));
        // The next window is judged on its own bytes.
        assert!(p.received(10, t0 + W + W).is_err());
    }

    #[test]
    fn time_spent_waiting_on_this_side_does_not_count() {
        let t0 = Instant::now();
        let mut p = Pace::new(1000, W, t0);
        p.exclude(Duration::from_secs(20));
        assert_eq!(p.deadline(), Some(t0 + W + Duration::from_secs(20)));
        assert_eq!(p.received(10, t0 + W), Ok(()), "not judged yet");
    }

    #[test]
    fn no_minimum_never_fails() {
        let t0 = Instant::now();
        let mut p = Pace::new(0, W, t0);
        assert_eq!(p.deadline(), None);
        assert_eq!(p.check(t0 + W * 100), Ok(()));
    }
}
