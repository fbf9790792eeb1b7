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

impl UpstreamClient {
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
