//! Prometheus metrics, created once and handed to the parts that count
//! (injected, never global: tests build their own). Served at `/metrics`.
//! Labels are upstream names and fixed words, never client input, so the
//! number of series stays bounded.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Client requests by endpoint, method and status.
    pub requests: IntCounterVec,
    /// How the cache answered: endpoint and hit/miss/shared/coalesced/revalidated/
    /// stale/pass.
    pub cache_results: IntCounterVec,
    /// Blob bytes sent to clients, by source: `cache` (a verified file) or
    /// `upstream` (read along a fill).
    pub served_bytes: IntCounterVec,
    /// Blob bytes received from each upstream.
    pub upstream_bytes: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub upstream_errors: IntCounterVec,
    /// 1 while the upstream answers, 0 after a connection failure.
    pub upstream_up: IntGaugeVec,
    /// Requests that waited for a fetch another request started.
    pub coalesced: IntCounterVec,
    pub fills_in_flight: IntGauge,
    pub evicted_blobs: IntCounter,
    pub evicted_bytes: IntCounter,
    pub eviction_runs: IntCounter,
    pub cache_size: IntGauge,
    pub cache_pinned_size: IntGauge,
    pub cache_blobs: IntGauge,
    pub cache_max_size: IntGauge,
    /// Heap bytes of the last catalog of cached images (what the status
    /// page, `ls` and `du` read).
    pub catalog_bytes: IntGauge,
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
    /// Upstream answers wharf refused to act on, by reason.
    pub upstream_refused: IntCounterVec,
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
        let one_gauge = |name: &str, help: &str| {
            reg(&registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let one_counter = |name: &str, help: &str| {
            reg(
                &registry,
                IntCounter::new(name, help).expect("valid metric"),
            )
        };
        Metrics {
            requests: counter(
                "wharf_requests_total",
                "Client requests by endpoint, method and response status",
                &["endpoint", "method", "status"],
            ),
            cache_results: counter(
                "wharf_cache_results_total",
                "Manifest and blob requests by how the cache answered (hit, miss, shared: from the shared tier, coalesced, revalidated, stale, pass)",
                &["endpoint", "result"],
            ),
            served_bytes: counter(
                "wharf_served_bytes_total",
                "Blob bytes sent to clients: source=cache (verified file) or upstream (streamed while filling)",
                &["source"],
            ),
            upstream_bytes: counter(
                "wharf_upstream_bytes_total",
                "Blob bytes received from the upstream",
                &["upstream"],
            ),
            upstream_duration: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "wharf_upstream_request_duration_seconds",
                        "Upstream requests until response headers, by operation",
                    ),
                    &["upstream", "op"],
                )
                .expect("valid metric"),
            ),
            upstream_errors: counter(
                "wharf_upstream_errors_total",
                "Failed upstream requests by kind (unreachable, status, unauthorized, ...)",
                &["upstream", "kind"],
            ),
            upstream_up: gauge(
                "wharf_upstream_up",
                "1 if the upstream's last request got an answer, 0 if it could not be reached",
                &["upstream"],
            ),
            coalesced: counter(
                "wharf_coalesced_total",
                "Requests that joined a fetch already in flight instead of starting one",
                &["kind"],
            ),
            fills_in_flight: one_gauge("wharf_fills_in_flight", "Blob downloads in progress"),
            evicted_blobs: one_counter("wharf_evicted_blobs_total", "Blobs removed by eviction"),
            evicted_bytes: one_counter("wharf_evicted_bytes_total", "Bytes removed by eviction"),
            eviction_runs: one_counter(
                "wharf_eviction_runs_total",
                "Eviction passes that removed content or tried to",
            ),
            cache_size: one_gauge("wharf_cache_size_bytes", "Bytes of verified content in the cache"),
            cache_pinned_size: one_gauge(
                "wharf_cache_pinned_bytes",
                "Bytes of cached content protected by pins (as of the last eviction pass)",
            ),
            cache_blobs: one_gauge("wharf_cache_blobs", "Blobs and manifests in the cache"),
            cache_max_size: one_gauge(
                "wharf_cache_max_size_bytes",
                "The configured cache.max_size (0: the filesystem's size)",
            ),
            catalog_bytes: one_gauge(
                "wharf_catalog_bytes",
                "Heap bytes held by the last catalog of cached images (read by the status page, ls and du)",
            ),
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
            upstream_refused: counter(
                "wharf_upstream_refused_total",
                "Upstream answers refused: reason=realm (token realm outside what may receive credentials, or link-local/metadata), redirect (a redirect wharf does not follow), body_size (a manifest, tag-list page or token answer past its limit), error_body (an error answer cut at its limit), media_type (a manifest whose Content-Type is not a manifest type)",
                &["upstream", "reason"],
            ),
            registry,
        }
    }

    /// Where a subsystem registers metrics of its own (sync, bundles).
    pub fn registry(&self) -> &Registry {
        &self.registry
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
