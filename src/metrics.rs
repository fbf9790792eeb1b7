//! Prometheus metrics, created once and handed to the parts that count
//! (injected, never global: tests build their own). Served at `/metrics`.
//! Labels are upstream names and fixed words, never client input, so the
//! number of series stays bounded.

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    /// Docker Hub's `ratelimit-limit` / `ratelimit-remaining`, as last seen.
    pub upstream_ratelimit_limit: IntGaugeVec,
    pub upstream_ratelimit_remaining: IntGaugeVec,
    /// 429 answers from an upstream, and requests not sent because wharf was
    /// backing off after one.
    pub upstream_throttled: IntCounterVec,
    pub upstream_backoff_skipped: IntCounterVec,
    /// Bearer tokens fetched from an upstream's token service, and access
    /// tokens from the metadata server.
    pub token_fetches: IntCounterVec,
    /// Requests refused by the mirror's access control, by reason.
    pub access_denied: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        }
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        Metrics {
            upstream_ratelimit_limit: gauge(
                "wharf_upstream_ratelimit_limit",
                "The upstream's pull limit per window (Docker Hub's ratelimit-limit), as last seen",
                &["upstream"],
            ),
            upstream_ratelimit_remaining: gauge(
                "wharf_upstream_ratelimit_remaining",
                "Pulls left in the upstream's window (Docker Hub's ratelimit-remaining), as last seen",
                &["upstream"],
            ),
            upstream_throttled: counter(
                "wharf_upstream_throttled_total",
                "429 Too Many Requests answers from the upstream",
                &["upstream"],
            ),
            upstream_backoff_skipped: counter(
                "wharf_upstream_backoff_skipped_total",
                "Requests not sent to the upstream because wharf was backing off after a 429",
                &["upstream"],
            ),
            token_fetches: counter(
                "wharf_upstream_token_fetches_total",
                "Tokens fetched: kind=registry (token service) or metadata (GCE metadata server)",
                &["upstream", "kind"],
            ),
            access_denied: counter(
                "wharf_access_denied_total",
                "Client requests refused by access control, by reason",
                &["reason"],
            ),
            registry,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
