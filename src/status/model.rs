//! The status page's figures, one struct per view: gathered from what the
//! server already keeps (the metrics registry, the cache catalog, the
//! upstream clients, the sync rules, [`super::Records`]), serialized as the
//! `/api/...` JSON and rendered as HTML from the same value, so page and API
//! cannot disagree.
//!
//! Counters are read from the registry as `/metrics` renders them (summed
//! over their labels), never through `with_label_values`, which would create
//! series. Gathering is blocking only where it reads the catalog or a
//! manifest.

use std::time::Duration;

use serde::Serialize;

use crate::app::App;
use crate::cache::{now_millis, FillProgress, RepoListing};
use crate::sync::Summary;
use crate::upstream::UpstreamHealth;

use super::record::{prefix as cut, sum, Sample};
use super::{ImportOutcome, ImportProgress, Problem};

/// Repositories per page of the Images view.
pub const PER_PAGE: usize = 50;
/// Layers or index entries shown in one image's detail.
pub const MAX_ROWS: usize = 1000;
/// Indexes of a repository searched for an entry's digest.
const MAX_INDEXES_SEARCHED: usize = 32;
/// A manifest larger than this is shown cut, not pretty-printed.
const MAX_MANIFEST_SHOWN: usize = 64 << 10;
/// Longest search accepted (bytes).
pub const MAX_QUERY: usize = 128;
/// How stale the catalog a view shows may be while the cache changes (see
/// `Cache::catalog_within`).
pub const CATALOG_FRESH: Duration = Duration::from_secs(10);

/// `text` with every URL cut to its scheme and host: transport errors (sync
/// failures, import errors) carry reqwest's URLs, which may hold a
/// pre-signed query, a token or `user:password@`. Only the host stays.
pub fn redact_urls(text: &str) -> String {
    static URL: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r#"(?i)\b([a-z][a-z0-9+.-]*)://([^\s/?#"'<>]*)[^\s"'<>),;]*"#)
            .expect("a valid pattern")
    });
    URL.replace_all(text, |c: &regex::Captures<'_>| {
        let host = c[2].rsplit('@').next().unwrap_or("");
        format!("{}://{host}/…", &c[1])
    })
    .into_owned()
}

/// Lookups answered from the cache over all lookups: `hit`, `revalidated`
/// and `stale` over every `wharf_cache_results_total` result but `pass`.
/// In PromQL: `sum(rate(wharf_cache_results_total{result=~"hit|revalidated|stale"}[1h]))
/// / sum(rate(wharf_cache_results_total{result!="pass"}[1h]))`.
pub fn hit_ratio(hits: u64, lookups: u64) -> Option<f64> {
    (lookups > 0).then(|| hits as f64 / lookups as f64)
}

#[derive(Clone, Debug, Serialize)]
pub struct Overview {
    pub now_ms: u64,
    pub started_ms: u64,
    /// The metadata generation of the catalog the cache figures come from
    /// (`wharf du --json` gives it too).
    pub generation: u64,
    pub catalog_built_ms: u64,
    pub usage: UsageView,
    pub since_start: Traffic,
    /// Since the oldest sample of the last hour (`since_start` before one
    /// hour of uptime).
    pub last_hour: Traffic,
    /// One point per sample, oldest first: bytes per second in its interval.
    pub series: Vec<Rate>,
    pub fills: Vec<FillProgress>,
    /// Requests that joined a fetch in flight (`wharf_coalesced_total`).
    pub coalesced: u64,
    pub evictions: Evictions,
}

#[derive(Clone, Debug, Serialize)]
pub struct UsageView {
    /// Bytes of verified content (`wharf du`'s bytes).
    pub bytes: u64,
    /// `cache.max_size`, or the filesystem's size.
    pub budget: u64,
    pub max_size: Option<u64>,
    /// Eviction starts past `high` and stops at `low` (bytes).
    pub high: u64,
    pub low: u64,
    pub pinned_bytes: u64,
    pub blobs: u64,
    pub manifests: u64,
    pub images: u64,
    pub repositories: u64,
    pub disk_available: u64,
    pub disk_size: u64,
    pub upstreams: Vec<(String, u64)>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Traffic {
    /// Seconds covered.
    pub seconds: u64,
    pub served_cache: u64,
    pub served_upstream: u64,
    pub fetched: u64,
    /// Bytes clients got that no upstream sent for them: served minus
    /// fetched, at least 0. A lower bound: sync and prefetch fetch without
    /// serving.
    pub saved: u64,
    pub hits: u64,
    pub lookups: u64,
    pub hit_ratio: Option<f64>,
}

impl Traffic {
    fn between(a: &Sample, b: &Sample) -> Traffic {
        let d = |x: u64, y: u64| y.saturating_sub(x);
        let (sc, su, f) = (
            d(a.served_cache, b.served_cache),
            d(a.served_upstream, b.served_upstream),
            d(a.fetched, b.fetched),
        );
        let (hits, lookups) = (d(a.hits, b.hits), d(a.lookups, b.lookups));
        Traffic {
            seconds: d(a.at_ms, b.at_ms) / 1000,
            served_cache: sc,
            served_upstream: su,
            fetched: f,
            saved: (sc + su).saturating_sub(f),
            hits,
            lookups,
            hit_ratio: hit_ratio(hits, lookups),
        }
    }
}

/// Bytes per second over one sample interval, ending at `at_ms`.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Rate {
    pub at_ms: u64,
    pub served: f64,
    pub fetched: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Evictions {
    pub blobs: u64,
    pub bytes: u64,
    pub runs: u64,
    pub last_ms: Option<u64>,
    pub last_blobs: Option<u64>,
    pub last_bytes: Option<u64>,
}

/// Gathers the overview. Blocking (the catalog, one `statvfs`).
pub fn overview(app: &App) -> Result<Overview, crate::cache::CacheError> {
    let cache = app.mirror.cache();
    let catalog = cache.catalog_within(CATALOG_FRESH)?;
    let (disk_available, disk_size) = cache.disk_space()?;
    let limits = cache.limits();
    let budget = limits.max_size.unwrap_or(disk_size);
    let t = &catalog.totals;
    let m = &app.metrics;
    let now = Sample::of(m);
    let start = Sample {
        at_ms: app.status.started_ms(),
        ..Sample::default()
    };
    let samples = app.status.samples();
    let hour_ago = now.at_ms.saturating_sub(3_600_000);
    // Less than an hour up: the last hour is all of it.
    let first = if hour_ago <= start.at_ms {
        start
    } else {
        samples
            .iter()
            .find(|s| s.at_ms >= hour_ago)
            .copied()
            .unwrap_or(start)
    };
    let series = samples
        .windows(2)
        .map(|w| {
            let secs = (w[1].at_ms.saturating_sub(w[0].at_ms)).max(1) as f64 / 1000.0;
            let t = Traffic::between(&w[0], &w[1]);
            Rate {
                at_ms: w[1].at_ms,
                served: (t.served_cache + t.served_upstream) as f64 / secs,
                fetched: t.fetched as f64 / secs,
            }
        })
        .collect();
    let last = cache.last_eviction();
    Ok(Overview {
        now_ms: now.at_ms,
        started_ms: start.at_ms,
        generation: catalog.generation,
        catalog_built_ms: catalog.built_ms,
        usage: UsageView {
            bytes: t.bytes,
            budget,
            max_size: limits.max_size,
            high: (budget as f64 * limits.high) as u64,
            low: (budget as f64 * limits.low) as u64,
            pinned_bytes: t.pinned_bytes,
            blobs: t.blobs,
            manifests: t.manifests,
            images: t.images,
            repositories: t.repositories,
            disk_available,
            disk_size,
            upstreams: t.upstreams.clone(),
        },
        since_start: Traffic::between(&start, &now),
        last_hour: Traffic::between(&first, &now),
        series,
        fills: cache.fills_progress(),
        coalesced: sum(prometheus::core::Collector::collect(&m.coalesced), &[]),
        evictions: Evictions {
            blobs: m.evicted_blobs.get(),
            bytes: m.evicted_bytes.get(),
            runs: m.eviction_runs.get(),
            last_ms: last.as_ref().map(|l| l.0),
            last_blobs: last.as_ref().map(|l| l.1.evicted_blobs),
            last_bytes: last.as_ref().map(|l| l.1.evicted_bytes),
        },
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct UpstreamView {
    pub name: String,
    #[serde(flatten)]
    pub health: UpstreamHealth,
    /// Blob bytes received (`wharf_upstream_bytes_total`).
    pub fetched: u64,
    /// Tokens from the registry's token service and from the metadata server.
    pub token_fetches: u64,
    pub metadata_tokens: u64,
    /// `wharf_upstream_errors_total` by kind.
    pub errors: Vec<(String, u64)>,
    pub throttled: u64,
    pub backoff_skipped: u64,
    /// `wharf_upstream_refused_total` by reason.
    pub refused: Vec<(String, u64)>,
    /// Requests timed (until response headers), all operations.
    pub requests: u64,
    /// Percentiles in milliseconds, interpolated in the histogram's buckets
    /// as PromQL's `histogram_quantile` does.
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Gathers the upstreams view (cheap: no I/O).
pub fn upstreams(app: &App) -> Vec<UpstreamView> {
    use prometheus::core::Collector;
    let m = &app.metrics;
    let by = |fams: Vec<prometheus::proto::MetricFamily>, up: &str, label: &str| {
        let mut out: std::collections::BTreeMap<String, u64> = Default::default();
        for metric in fams.iter().flat_map(|f| f.get_metric()) {
            let labels = metric.get_label();
            if !labels
                .iter()
                .any(|l| l.name() == "upstream" && l.value() == up)
            {
                continue;
            }
            if let Some(l) = labels.iter().find(|l| l.name() == label) {
                *out.entry(l.value().to_owned()).or_default() +=
                    metric.get_counter().get_value() as u64;
            }
        }
        out.into_iter().filter(|(_, n)| *n > 0).collect::<Vec<_>>()
    };
    let hist = m.upstream_duration.collect();
    app.mirror
        .upstream_health()
        .into_iter()
        .map(|(name, health)| {
            let u = [("upstream", name.as_str())];
            let tokens = m.token_fetches.collect();
            let (count, buckets) = merged_buckets(&hist, &name);
            let q = |p| quantile(p, count, &buckets).map(|s| s * 1000.0);
            UpstreamView {
                fetched: sum(m.upstream_bytes.collect(), &u),
                token_fetches: sum(tokens.clone(), &[u[0], ("kind", "registry")]),
                metadata_tokens: sum(tokens, &[u[0], ("kind", "metadata")]),
                errors: by(m.upstream_errors.collect(), &name, "kind"),
                throttled: sum(m.upstream_throttled.collect(), &u),
                backoff_skipped: sum(m.upstream_backoff_skipped.collect(), &u),
                refused: by(m.upstream_refused.collect(), &name, "reason"),
                requests: count,
                p50_ms: q(0.5),
                p90_ms: q(0.9),
                p99_ms: q(0.99),
                name,
                health,
            }
        })
        .collect()
}

/// One upstream's request-duration buckets, summed over operations:
/// `(count, [(upper bound in seconds, cumulative count)])`.
fn merged_buckets(fams: &[prometheus::proto::MetricFamily], up: &str) -> (u64, Vec<(f64, u64)>) {
    let mut count = 0;
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    for metric in fams.iter().flat_map(|f| f.get_metric()) {
        if !metric
            .get_label()
            .iter()
            .any(|l| l.name() == "upstream" && l.value() == up)
        {
            continue;
        }
        let h = metric.get_histogram();
        count += h.get_sample_count();
        for (i, b) in h.get_bucket().iter().enumerate() {
            match buckets.get_mut(i) {
                Some(slot) => slot.1 += b.cumulative_count(),
                None => buckets.push((b.upper_bound(), b.cumulative_count())),
            }
        }
    }
    (count, buckets)
}

/// PromQL's `histogram_quantile`: linear within the bucket the rank falls
/// in; past the last finite bound, that bound.
pub fn quantile(q: f64, count: u64, buckets: &[(f64, u64)]) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let mut prev = (0.0, 0u64);
    for &(upper, cum) in buckets {
        if cum as f64 >= rank {
            if upper.is_infinite() {
                return Some(prev.0);
            }
            let in_bucket = (cum - prev.1) as f64;
            if in_bucket == 0.0 {
                return Some(upper);
            }
            return Some(prev.0 + (upper - prev.0) * (rank - prev.1 as f64) / in_bucket);
        }
        prev = (upper, cum);
    }
    buckets.last().map(|b| b.0)
}

#[derive(Clone, Debug, Serialize)]
pub struct Images {
    pub generation: u64,
    pub catalog_built_ms: u64,
    /// The search, as applied (cut at [`MAX_QUERY`]).
    pub q: String,
    /// 1-based.
    pub page: usize,
    pub pages: usize,
    pub matched: usize,
    pub total: usize,
    pub repos: Vec<RepoListing>,
}

/// One page of repositories matching `q` (a substring of
/// `upstream/repository` or of a tag). Blocking (the catalog).
pub fn images(app: &App, q: &str, page: usize) -> Result<Images, crate::cache::CacheError> {
    let catalog = app.mirror.cache().catalog_within(CATALOG_FRESH)?;
    let q = cut(q.trim(), MAX_QUERY).to_lowercase();
    let matches = |r: &crate::cache::Repo| {
        q.is_empty()
            || format!("{}/{}", r.upstream(), r.repository())
                .to_lowercase()
                .contains(&q)
            || r.images().any(|i| {
                i.tag().is_some_and(|t| t.to_lowercase().contains(&q)) || i.digest().starts_with(&q)
            })
    };
    let total = catalog.repos().len();
    let matched: Vec<crate::cache::Repo> = catalog.repos().filter(matches).collect();
    let count = matched.len();
    let pages = count.div_ceil(PER_PAGE).max(1);
    let page = page.clamp(1, pages);
    Ok(Images {
        generation: catalog.generation,
        catalog_built_ms: catalog.built_ms,
        page,
        pages,
        matched: count,
        total,
        repos: matched
            .into_iter()
            .skip((page - 1) * PER_PAGE)
            .take(PER_PAGE)
            .map(|r| r.to_listing())
            .collect(),
        q,
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct ImageDetail {
    pub upstream: String,
    pub repository: String,
    pub digest: String,
    pub tags: Vec<String>,
    pub media_type: Option<String>,
    pub pinned: bool,
    pub last_access_ms: u64,
    /// Bytes of the image's content in the cache.
    pub size: u64,
    /// The manifest as cached (pretty-printed JSON), at most 64 KiB.
    pub manifest: Option<String>,
    /// An image manifest's config and layers.
    pub blobs: Vec<BlobRow>,
    /// An index's entries.
    pub children: Vec<ChildRow>,
    /// Rows past [`MAX_ROWS`] not shown.
    pub more: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct BlobRow {
    pub digest: String,
    pub size: u64,
    pub cached: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChildRow {
    pub digest: String,
    pub platform: Option<String>,
    pub cached: bool,
}

/// The detail of a manifest the catalog lists under `upstream/repository`
/// (or an entry of an index it lists): `None` for anything else, so a digest
/// cached for another repository cannot be probed. Blocking.
pub fn image(
    app: &App,
    upstream: &str,
    repository: &str,
    digest: &str,
) -> Result<Option<ImageDetail>, crate::cache::CacheError> {
    let cache = app.mirror.cache();
    let catalog = cache.catalog_within(CATALOG_FRESH)?;
    let Some(repo) = catalog
        .repos()
        .find(|r| r.upstream() == upstream && r.repository() == repository)
    else {
        return Ok(None);
    };
    let Ok(d) = digest.parse::<crate::registry::Digest>() else {
        return Ok(None);
    };
    let rows: Vec<_> = repo.images().filter(|i| i.digest() == digest).collect();
    if rows.is_empty() {
        // An entry of an index listed here? (The first few indexes only:
        // each is a file to read.)
        let listed_child = repo
            .images()
            .filter(|i| i.media_type().is_some_and(crate::registry::is_index_type))
            .take(MAX_INDEXES_SEARCHED)
            .any(|i| {
                i.digest()
                    .parse()
                    .ok()
                    .and_then(|p| cache.manifest_bytes(&p).ok().flatten())
                    .and_then(|b| crate::registry::index_children(&b))
                    .is_some_and(|c| c.iter().any(|c| c.digest == d))
            });
        if !listed_child {
            return Ok(None);
        }
    }
    let bytes = cache.manifest_bytes(&d)?;
    let media_type = rows
        .first()
        .and_then(|r| r.media_type())
        .map(str::to_owned)
        .or_else(|| {
            let b = bytes.as_ref()?;
            let v: serde_json::Value = serde_json::from_slice(b).ok()?;
            Some(v.get("mediaType")?.as_str()?.to_owned())
        });
    let cached = |d: &crate::registry::Digest| cache.has_blob(d);
    let mut blobs = Vec::new();
    let mut children = Vec::new();
    let mut more = 0;
    if let Some(b) = &bytes {
        match crate::registry::index_children(b) {
            Some(kids) => {
                more = kids.len().saturating_sub(MAX_ROWS);
                for c in kids.into_iter().take(MAX_ROWS) {
                    children.push(ChildRow {
                        cached: cached(&c.digest),
                        digest: c.digest.to_string(),
                        platform: c.platform.map(|p| p.to_string()),
                    })
                }
            }
            None => {
                let all = crate::registry::manifest::blob_descriptors(b);
                more = all.len().saturating_sub(MAX_ROWS);
                for (d, size) in all.into_iter().take(MAX_ROWS) {
                    blobs.push(BlobRow {
                        cached: cached(&d),
                        digest: d.to_string(),
                        size,
                    })
                }
            }
        }
    }
    // Pretty-printed when small; a large manifest is shown as cut.
    let manifest = bytes.map(|b| {
        if b.len() <= MAX_MANIFEST_SHOWN {
            serde_json::from_slice::<serde_json::Value>(&b)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or_else(|| String::from_utf8_lossy(&b).into_owned())
        } else {
            format!(
                "{}… ({} bytes in all)",
                String::from_utf8_lossy(&b[..MAX_MANIFEST_SHOWN]),
                b.len()
            )
        }
    });
    Ok(Some(ImageDetail {
        upstream: upstream.to_owned(),
        repository: repository.to_owned(),
        digest: digest.to_owned(),
        tags: rows
            .iter()
            .filter_map(|r| r.tag())
            .map(str::to_owned)
            .collect(),
        media_type,
        pinned: rows.iter().any(|r| r.pinned()),
        last_access_ms: rows.iter().map(|r| r.last_access_ms()).max().unwrap_or(0),
        size: rows.first().map_or_else(
            || blobs.iter().filter(|b| b.cached).map(|b| b.size).sum(),
            |r| r.size(),
        ),
        manifest,
        blobs,
        children,
        more,
    }))
}

#[derive(Clone, Debug, Serialize)]
pub struct SyncView {
    pub rules: Vec<RuleView>,
    pub imports_running: Vec<ImportProgress>,
    pub imports: Vec<ImportOutcome>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RuleView {
    pub name: String,
    pub upstream: String,
    /// `None`: runs only by `wharf sync`.
    pub schedule: Option<String>,
    pub running: bool,
    /// Unix seconds.
    pub next_run: Option<u64>,
    pub last: Option<Summary>,
}

/// Gathers the sync view. Blocking (one note read per rule).
pub fn sync(app: &App) -> SyncView {
    let rules = app
        .sync
        .rules()
        .iter()
        .map(|r| RuleView {
            name: r.name.clone(),
            upstream: r.upstream.clone(),
            schedule: r.schedule.as_ref().map(|s| s.to_string()),
            running: app.sync.is_running(&r.name),
            next_run: app.sync.next_run_at(&r.name),
            last: app.sync.last_run(&r.name).map(|mut s| {
                // What a page can show: the counts and failures (their
                // reasons without URLs), not every reference synced.
                s.refs.clear();
                for f in &mut s.failed {
                    f.reason = redact_urls(&f.reason);
                }
                s
            }),
        })
        .collect();
    let (imports_running, imports) = app.status.imports();
    SyncView {
        rules,
        imports_running,
        imports,
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Problems {
    pub now_ms: u64,
    pub problems: Vec<Problem>,
}

pub fn problems(app: &App) -> Problems {
    Problems {
        now_ms: now_millis(),
        problems: app.status.problems(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_only_their_host() {
        let t = "error sending request for url (https://user:pw@bucket.s3.amazonaws.com/blob?X-Amz-Signature=abc): \
                 connect to http://127.0.0.1:9/v2/ failed; see file:///etc/x";
        let r = redact_urls(t);
        assert_eq!(
            r,
            "error sending request for url (https://bucket.s3.amazonaws.com/…): \
             connect to http://127.0.0.1:9/… failed; see file:///…"
        );
        for secret in ["pw", "Signature", "abc", "/v2/", "etc"] {
            assert!(!r.contains(secret), "{secret} in {r}");
        }
    }

    #[test]
    fn quantiles_interpolate_like_promql() {
        // 10 requests: 4 under 0.1 s, 5 more under 0.5 s, 1 above 1 s.
        let b = [(0.1, 4), (0.5, 9), (1.0, 9), (f64::INFINITY, 10)];
        assert_eq!(quantile(0.5, 10, &b), Some(0.1 + 0.4 * (5.0 - 4.0) / 5.0));
        assert_eq!(quantile(0.2, 10, &b), Some(0.1 * 2.0 / 4.0));
        assert_eq!(quantile(0.99, 10, &b), Some(1.0));
        assert_eq!(quantile(0.5, 0, &b), None);
    }

    #[test]
    fn traffic_between_two_samples() {
        let a = Sample {
            at_ms: 1_000,
            served_cache: 10,
            served_upstream: 5,
            fetched: 5,
            hits: 1,
            lookups: 2,
        };
        let b = Sample {
            at_ms: 11_000,
            served_cache: 110,
            served_upstream: 25,
            fetched: 30,
            hits: 4,
            lookups: 6,
        };
        let t = Traffic::between(&a, &b);
        assert_eq!(t.seconds, 10);
        assert_eq!(t.saved, 100 + 20 - 25);
        assert_eq!(t.hit_ratio, Some(0.75));
    }
}
