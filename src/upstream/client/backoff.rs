//! Backing off an upstream: after a 429 nothing is sent until its
//! `Retry-After` (or 1 minute doubling to 15), an upstream that could not be
//! reached is left alone briefly, and Docker Hub's `ratelimit-*` headers are
//! recorded for the metrics and for sync to pace itself. Never sends a
//! request itself.

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use super::{header_str, UpstreamClient, UpstreamError};

#[derive(Default)]
pub(super) struct Backoff {
    pub(super) until: Option<Instant>,
    /// 429s in a row: the wait doubles with each.
    pub(super) strikes: u32,
}

/// How long to leave an upstream alone after a 429 without `Retry-After`:
/// 1 minute, doubling per 429 in a row, at most 15 minutes. Docker Hub's
/// window is 6 hours, so asking every few seconds would only burn requests.
fn backoff_after(strikes: u32) -> Duration {
    Duration::from_secs(60u64 << strikes.min(4)).min(Duration::from_secs(900))
}

/// What the upstream's latest `ratelimit-limit` / `ratelimit-remaining`
/// headers said (`100;w=21600`: 100 pulls per 21,600 s window).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub limit: Option<i64>,
    pub remaining: i64,
    /// The window in seconds (`w=`), when given.
    pub window: Option<u64>,
    pub seen: Instant,
}

/// `w=21600` of `100;w=21600`.
fn ratelimit_window(h: &HeaderMap, name: &str) -> Option<u64> {
    header_str(h, name)?
        .split(';')
        .skip(1)
        .find_map(|p| p.trim().strip_prefix("w=")?.parse().ok())
}

/// `ratelimit-remaining: 76;w=21600` → 76.
fn ratelimit_value(h: &HeaderMap, name: &str) -> Option<i64> {
    header_str(h, name)?.split(';').next()?.trim().parse().ok()
}

/// What the status page shows of an upstream's state: never its `down`
/// reason (transport text can hold URLs with credentials in them).
#[derive(Clone, Debug, serde::Serialize)]
pub struct UpstreamHealth {
    pub state: super::UpstreamState,
    /// After a connection failure: seconds until requests go out again.
    pub retry_in_s: Option<u64>,
    /// After a 429: seconds until requests go out again.
    pub backoff_s: Option<u64>,
    /// 429s in a row.
    pub strikes: u32,
    /// Docker Hub's `ratelimit-*`, as last seen.
    pub ratelimit_limit: Option<i64>,
    pub ratelimit_remaining: Option<i64>,
    pub ratelimit_window_s: Option<u64>,
    pub ratelimit_seen_s_ago: Option<u64>,
}

impl UpstreamClient {
    /// The state, the waits in progress and the last rate-limit figures.
    pub fn health(&self) -> UpstreamHealth {
        let now = Instant::now();
        let left = |until: Instant| (until > now).then(|| (until - now).as_secs() + 1);
        let retry_in_s = self.down.lock().as_ref().and_then(|(u, _)| left(*u));
        let (backoff_s, strikes) = {
            let b = self.backoff.lock();
            (b.until.and_then(left), b.strikes)
        };
        let rl = self.rate_limit();
        UpstreamHealth {
            state: self.state(),
            retry_in_s,
            backoff_s,
            strikes,
            ratelimit_limit: rl.and_then(|r| r.limit),
            ratelimit_remaining: rl.map(|r| r.remaining),
            ratelimit_window_s: rl.and_then(|r| r.window),
            ratelimit_seen_s_ago: rl.map(|r| now.saturating_duration_since(r.seen).as_secs()),
        }
    }

    /// Refuses to send while backing off after a 429.
    pub(super) fn check_backoff(&self) -> Result<(), UpstreamError> {
        if self.offline {
            return Err(UpstreamError::Offline {
                upstream: self.name.clone(),
            });
        }
        if let Some((until, reason)) = &*self.down.lock() {
            let now = Instant::now();
            if *until > now {
                return Err(UpstreamError::Unreachable {
                    upstream: self.name.clone(),
                    reason: format!(
                        "{reason} (serving from cache only; retrying in {} s)",
                        (*until - now).as_secs() + 1
                    ),
                });
            }
        }
        let b = self.backoff.lock();
        match b.until {
            Some(until) if until > Instant::now() => {
                self.metrics
                    .upstream_backoff_skipped
                    .with_label_values(&[&self.name])
                    .inc();
                Err(UpstreamError::TooManyRequests {
                    upstream: self.name.clone(),
                    retry_after: (until - Instant::now()).as_secs().max(1),
                })
            }
            _ => Ok(()),
        }
    }

    /// Records Docker Hub's rate-limit headers, and starts a backoff on 429.
    pub(super) fn note_limits(&self, resp: &reqwest::Response) -> Result<(), UpstreamError> {
        let h = resp.headers();
        if let Some(v) = ratelimit_value(h, "ratelimit-limit") {
            self.metrics
                .upstream_ratelimit_limit
                .with_label_values(&[&self.name])
                .set(v);
        }
        if let Some(v) = ratelimit_value(h, "ratelimit-remaining") {
            self.metrics
                .upstream_ratelimit_remaining
                .with_label_values(&[&self.name])
                .set(v);
            *self.rate_limit.lock() = Some(RateLimit {
                limit: ratelimit_value(h, "ratelimit-limit"),
                remaining: v,
                window: ratelimit_window(h, "ratelimit-remaining")
                    .or_else(|| ratelimit_window(h, "ratelimit-limit")),
                seen: Instant::now(),
            });
        }
        let mut b = self.backoff.lock();
        if resp.status() != StatusCode::TOO_MANY_REQUESTS {
            if resp.status().is_success() {
                b.strikes = 0;
            }
            return Ok(());
        }
        let wait = header_str(h, "retry-after")
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.clamp(1, 3600)))
            .unwrap_or_else(|| backoff_after(b.strikes));
        b.strikes = b.strikes.saturating_add(1);
        b.until = Some(Instant::now() + wait);
        self.metrics
            .upstream_throttled
            .with_label_values(&[&self.name])
            .inc();
        tracing::warn!(upstream = %self.name, wait_s = wait.as_secs(),
            remaining = ratelimit_value(h, "ratelimit-remaining"),
            "upstream answered 429 Too Many Requests; serving from cache only until the wait is over");
        Err(UpstreamError::TooManyRequests {
            upstream: self.name.clone(),
            retry_after: wait.as_secs(),
        })
    }
}
