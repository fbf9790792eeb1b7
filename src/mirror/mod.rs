//! The mirror: decides, for each parsed request, which upstream it belongs to
//! and whether the cache can answer it, and fills the cache when it cannot.
//! Owns the policy (tag TTL, stale-if-error, per-repository links); the cache
//! and upstream modules below it only do what they are told.

mod blobs;
mod manifests;
mod routing;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::access::Access;
use crate::cache::{Cache, CacheError, Coalescer, FillError, Metadata, ReconcileReport, SledKv};
use crate::config::{Config, UpstreamConfig};
use crate::metrics::Metrics;
use crate::registry::ParseError;
use crate::upstream::{UpstreamClient, UpstreamError};

pub use blobs::{BlobBody, BlobResponse};
pub use manifests::ManifestResponse;
pub use routing::Routed;

/// How a request was answered, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// From cache, nothing asked upstream.
    Hit,
    /// From cache after the upstream confirmed it (tag revalidation, access check).
    Revalidated,
    /// From cache because the upstream failed (stale-if-error).
    Stale,
    /// Fetched from upstream by this request.
    Miss,
    /// Joined a fetch another request started.
    Coalesced,
    /// Passed through, not cacheable (tag lists).
    Pass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Revalidated => "revalidated",
            CacheStatus::Stale => "stale",
            CacheStatus::Miss => "miss",
            CacheStatus::Coalesced => "coalesced",
            CacheStatus::Pass => "pass",
        }
    }
}

impl fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum MirrorError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("no upstream is configured for ns={0}")]
    UnknownNamespace(String),
    #[error("no upstream is configured for path prefix {0:?}")]
    UnknownPrefix(String),
    #[error("no default upstream is configured; use ?ns= or a path prefix")]
    NoDefaultUpstream,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Cache(Arc<CacheError>),
    #[error(transparent)]
    Fill(#[from] FillError),
    #[error(transparent)]
    Denied(#[from] crate::access::Denied),
    #[error("manifest is {media_type}, which the client's Accept header does not list")]
    NotAcceptable { media_type: String },
}

impl From<CacheError> for MirrorError {
    fn from(e: CacheError) -> Self {
        MirrorError::Cache(Arc::new(e))
    }
}

pub(crate) struct Upstream {
    pub cfg: UpstreamConfig,
    pub client: UpstreamClient,
}

/// (upstream index, repository, reference) of a manifest fetch.
type ManifestKey = (usize, String, String);
type ManifestResult = Result<(manifests::Fetched, CacheStatus), MirrorError>;

pub(crate) struct Inner {
    pub upstreams: Vec<Upstream>,
    pub cache: Cache,
    pub manifests: Coalescer<ManifestKey, ManifestResult>,
    pub tag_ttl: Duration,
    pub metrics: Arc<Metrics>,
    pub access: Access,
    /// No admin listener: `/metrics` is served on the main one.
    pub metrics_on_main: bool,
}

/// Cheap to clone; shared by every connection.
#[derive(Clone)]
pub struct Mirror {
    inner: Arc<Inner>,
}

impl Mirror {
    /// Opens the cache under `config.cache_dir` (sled metadata) and builds one
    /// client per upstream.
    pub fn open(config: &Config, metrics: Arc<Metrics>) -> Result<Mirror, MirrorError> {
        let meta = open_metadata(&config.cache_dir)?;
        Mirror::with_parts(config, &config.cache_dir, meta, metrics)
    }

    /// Builds a mirror on a given metadata engine (tests use the memory one).
    pub fn with_parts(
        config: &Config,
        dir: &Path,
        meta: Metadata,
        metrics: Arc<Metrics>,
    ) -> Result<Mirror, MirrorError> {
        let started = std::time::Instant::now();
        let (cache, report) = Cache::open(dir, meta, &config.cache, metrics.clone())?;
        log_open(&cache, &report, started.elapsed());
        crate::cache::release_scratch_memory();
        metrics
            .cache_max_size
            .set(config.cache.limits.max_size.unwrap_or(0) as i64);
        let upstreams = config
            .upstreams
            .iter()
            .map(|cfg| {
                Ok(Upstream {
                    cfg: cfg.clone(),
                    client: UpstreamClient::new(cfg, metrics.clone())?,
                })
            })
            .collect::<Result<Vec<_>, UpstreamError>>()?;
        Ok(Mirror {
            inner: Arc::new(Inner {
                upstreams,
                cache,
                manifests: Coalescer::default(),
                tag_ttl: config.tag_ttl,
                access: Access::new(config, metrics.clone()),
                metrics_on_main: config.admin_listen.is_none(),
                metrics,
            }),
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Whether the main listener serves `/metrics`.
    pub fn metrics_here(&self) -> bool {
        self.inner.metrics_on_main
    }

    /// Who may pull what (checked by the server before the cache is asked).
    pub fn access(&self) -> &Access {
        &self.inner.access
    }

    /// Fills in flight (for tests and metrics).
    pub fn fills_in_flight(&self) -> usize {
        self.inner.cache.fills.len()
    }

    pub fn cache(&self) -> &Cache {
        &self.inner.cache
    }

    /// Each upstream's name and state (see `UpstreamClient::state`).
    pub fn upstream_states(&self) -> Vec<(String, &'static str)> {
        self.inner
            .upstreams
            .iter()
            .map(|u| (u.cfg.name.clone(), u.client.state()))
            .collect()
    }

    /// Makes metadata (and recorded reads) durable; called on shutdown.
    pub fn flush(&self) -> Result<(), MirrorError> {
        Ok(self.inner.cache.flush()?)
    }

    /// Background upkeep until the returned task is aborted: an eviction pass
    /// when a commit passes the high watermark or a fill hit a full disk; and
    /// every minute, recorded reads written to the metadata and a pass if the
    /// disk filled up meanwhile.
    pub fn spawn_maintenance(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let woken = tokio::select! {
                    _ = this.inner.cache.evictor.wanted() => true,
                    _ = tokio::time::sleep(Duration::from_secs(60)) => false,
                };
                let m = this.clone();
                let r = tokio::task::spawn_blocking(move || {
                    let cache = &m.inner.cache;
                    if woken || cache.evictor.needs_pass(&cache.store)? {
                        cache.evict().map(|_| ())
                    } else {
                        // Passes started by a fill's reservation leave their
                        // references for this.
                        cache.evictor.flush_touches(&cache.meta)?;
                        cache.prune_evicted()
                    }
                })
                .await;
                match r {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "eviction pass failed"),
                    Err(e) => tracing::warn!(error = %e, "eviction pass panicked"),
                }
            }
        })
    }
}

/// Opens (creating) the sled metadata under `dir/meta`. sled locks it, so a
/// second process gets a clear error instead of a corrupt database.
pub fn open_metadata(dir: &Path) -> Result<Metadata, MirrorError> {
    std::fs::create_dir_all(dir).map_err(CacheError::from)?;
    let kv = SledKv::open(&dir.join("meta"))?;
    Ok(Metadata::new(Box::new(kv))?)
}

fn log_open(cache: &Cache, r: &ReconcileReport, took: Duration) {
    tracing::info!(
        dir = %cache.dir.display(),
        blobs = r.blobs_kept,
        bytes = cache.evictor.usage(),
        files_removed = r.files_removed,
        records_removed = r.records_removed,
        ms = took.as_millis() as u64,
        "cache opened"
    );
}

impl Mirror {
    /// `tags/list`, passed through to the upstream (never cached: it changes).
    pub async fn tags_list(
        &self,
        r: &Routed,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<(bytes::Bytes, Option<String>), MirrorError> {
        let up = &self.inner.upstreams[r.upstream];
        Ok(up.client.tags_list(&r.repo, n, last).await?)
    }
}
