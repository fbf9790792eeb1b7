//! The mirror: decides, for each parsed request, which upstream it belongs to
//! and whether the cache can answer it, and fills the cache when it cannot.
//! Owns the policy (tag TTL, stale-if-error, per-repository links, the
//! minimum rate of blob downloads, remembered "not found" answers) and the
//! classification of its errors into responses (`error.rs`); the cache and
//! upstream modules below it only do what they are told. Never decides who
//! may pull (that is [`crate::access`], asked by the server first) and
//! never touches the cache's parts, only its operations.

mod blobs;
mod error;
mod manifests;
mod negative;
mod pace;
mod prefetch;
mod routing;
mod tags;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

use crate::cache::{Cache, CacheError, Coalescer, Metadata, Origin, SledKv};
use crate::config::{Config, UpstreamConfig};
use crate::metrics::Metrics;
use crate::upstream::{UpstreamClient, UpstreamError, UpstreamState};

pub use blobs::{BlobBody, BlobResponse};
pub use error::MirrorError;
pub use manifests::ManifestResponse;
pub use prefetch::{Held, LeftOut};
pub use routing::{Routed, UpstreamId};
pub use tags::TagPage;

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
    /// Missed on this node's disk, read from the shared tier (after the
    /// upstream confirmed the repository holds it).
    Shared,
    /// Joined a fetch another request started.
    Coalesced,
    /// Asked of the upstream now, not cached (a tag list, a `HEAD` for an
    /// uncached blob).
    Pass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Revalidated => "revalidated",
            CacheStatus::Stale => "stale",
            CacheStatus::Miss => "miss",
            CacheStatus::Shared => "shared",
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

pub(crate) struct Upstream {
    pub cfg: UpstreamConfig,
    pub client: UpstreamClient,
}

/// (upstream, repository, reference) of a manifest fetch.
type ManifestKey = (UpstreamId, String, String);
type ManifestResult = Result<(manifests::Fetched, CacheStatus), MirrorError>;

pub(crate) struct Inner {
    pub upstreams: Vec<Upstream>,
    pub cache: Arc<Cache>,
    pub manifests: Coalescer<ManifestKey, ManifestResult>,
    /// Full tag lists, briefly, and the listings in flight.
    pub tag_lists: moka::sync::Cache<tags::ListKey, tags::FullList>,
    pub tag_listings: Coalescer<tags::ListKey, Result<tags::FullList, MirrorError>>,
    pub tag_ttl: Duration,
    /// `cache.fill_min_rate` over `cache.fill_rate_window` (see `pace`).
    pub fill_min_rate: u64,
    pub fill_rate_window: Duration,
    /// One permit per running blob download (`cache.max_fills`).
    pub fill_slots: Arc<tokio::sync::Semaphore>,
    pub max_fills: usize,
    /// Recent "not found" answers for manifests (see `negative`).
    pub negative: negative::NegativeCache,
    /// The tier the nodes share, when `[shared]` configures one.
    pub tier: Option<crate::shared::Tier>,
    pub metrics: Arc<Metrics>,
    pub counters: MirrorMetrics,
}

/// What the mirror's limits refused, registered with the other metrics.
pub(crate) struct MirrorMetrics {
    /// Blob downloads that cached nothing, by upstream and reason.
    pub fills_failed: IntCounterVec,
    /// Manifest requests answered "not found" from memory.
    pub negative_hits: IntCounterVec,
    /// Blob downloads waiting for a slot (`cache.max_fills`).
    pub fills_waiting: IntGauge,
}

impl MirrorMetrics {
    fn new(r: &Registry) -> MirrorMetrics {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        MirrorMetrics {
            fills_failed: counter(
                "wharf_fills_failed_total",
                "Blob downloads that cached nothing, by reason: busy (no slot of cache.max_fills within cache.fill_rate_window), too_slow (below cache.fill_min_rate), no_room (outgrew cache.max_size), size_mismatch, digest_mismatch, upstream (refused or interrupted), shared (a shared-tier read broke off), aborted",
                &["upstream", "reason"],
            ),
            negative_hits: counter(
                "wharf_negative_cache_hits_total",
                "Manifest requests answered 404 from a recent upstream 404 (cache.negative_ttl) without asking the upstream",
                &["upstream"],
            ),
            fills_waiting: {
                let g = IntGauge::new(
                    "wharf_fills_waiting",
                    "Blob downloads waiting for one of cache.max_fills slots",
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
        }
    }
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
        let (cache, _) = Cache::open(dir, meta, &config.cache, metrics.clone())?;
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
        let tier = match &config.shared {
            Some(s) => Some(
                crate::shared::Tier::new(s, metrics.registry())
                    .map_err(|e| MirrorError::Shared(e.to_string()))?,
            ),
            None => None,
        };
        Ok(Mirror {
            inner: Arc::new(Inner {
                upstreams,
                cache: Arc::new(cache),
                manifests: Coalescer::default(),
                tag_lists: moka::sync::Cache::builder()
                    .max_capacity(32 << 20)
                    .weigher(|_, l: &tags::FullList| {
                        let bytes: usize = l.1.iter().map(|t| t.as_str().len() + 32).sum();
                        bytes.try_into().unwrap_or(u32::MAX)
                    })
                    .time_to_live(tags::LIST_TTL)
                    .build(),
                tag_listings: Coalescer::default(),
                tag_ttl: config.tag_ttl,
                fill_min_rate: config.cache.fill_min_rate,
                fill_rate_window: config.cache.fill_rate_window,
                fill_slots: Arc::new(tokio::sync::Semaphore::new(config.cache.max_fills)),
                max_fills: config.cache.max_fills,
                negative: negative::NegativeCache::new(
                    config.cache.negative_ttl,
                    config.cache.negative_entries,
                ),
                counters: MirrorMetrics::new(metrics.registry()),
                tier,
                metrics,
            }),
        })
    }

    /// Fills in flight (for tests and metrics).
    pub fn fills_in_flight(&self) -> usize {
        self.inner.cache.fills_in_flight()
    }

    pub fn cache(&self) -> &Arc<Cache> {
        &self.inner.cache
    }

    /// Each upstream's name and state.
    pub fn upstream_states(&self) -> Vec<(String, UpstreamState)> {
        self.inner
            .upstreams
            .iter()
            .map(|u| (u.cfg.name.clone(), u.client.state()))
            .collect()
    }

    /// Each upstream's name and health (the status page), in config order.
    pub fn upstream_health(&self) -> Vec<(String, crate::upstream::UpstreamHealth)> {
        self.inner
            .upstreams
            .iter()
            .map(|u| (u.cfg.name.clone(), u.client.health()))
            .collect()
    }

    /// Makes metadata (and recorded reads) durable; called on shutdown.
    pub fn flush(&self) -> Result<(), MirrorError> {
        Ok(self.inner.cache.flush()?)
    }

    /// The cache's background upkeep, until the returned task is aborted;
    /// and the shared tier's start-up check, once.
    pub fn spawn_maintenance(&self) -> tokio::task::JoinHandle<()> {
        if let Some(tier) = self.inner.tier.clone() {
            tokio::spawn(async move { tier.probe().await });
        }
        self.inner.cache.spawn_upkeep()
    }

    /// The shared tier, when one is configured.
    pub fn tier(&self) -> Option<&crate::shared::Tier> {
        self.inner.tier.as_ref()
    }

    pub(crate) fn upstream(&self, id: UpstreamId) -> &Upstream {
        &self.inner.upstreams[id.index()]
    }

    /// Where a routed request's content comes from, as the cache keys it.
    fn origin<'a>(&'a self, r: &'a Routed) -> Origin<'a> {
        Origin {
            upstream: &self.upstream(r.upstream).cfg.name,
            repo: &r.repo,
        }
    }
}

/// Opens (creating) the sled metadata under `dir/meta`. sled locks it, so a
/// second process gets a clear error instead of a corrupt database.
pub fn open_metadata(dir: &Path) -> Result<Metadata, MirrorError> {
    std::fs::create_dir_all(dir).map_err(CacheError::from)?;
    let kv = SledKv::open(&dir.join("meta"))?;
    Ok(Metadata::new(Box::new(kv))?)
}
