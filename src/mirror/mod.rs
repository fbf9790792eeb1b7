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
use crate::cache::{BlobStore, CacheError, Coalescer, FillError, Fills, Metadata, SledKv};
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
    pub store: BlobStore,
    pub meta: Metadata,
    pub fills: Fills,
    pub manifests: Coalescer<ManifestKey, ManifestResult>,
    pub tag_ttl: Duration,
    pub metrics: Arc<Metrics>,
    pub access: Access,
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
        std::fs::create_dir_all(&config.cache_dir).map_err(CacheError::from)?;
        let meta = Metadata::new(Box::new(SledKv::open(&config.cache_dir.join("meta"))?))?;
        Mirror::with_parts(config, &config.cache_dir, meta, metrics)
    }

    /// Builds a mirror on a given metadata engine (tests use the memory one).
    pub fn with_parts(
        config: &Config,
        dir: &Path,
        meta: Metadata,
        metrics: Arc<Metrics>,
    ) -> Result<Mirror, MirrorError> {
        let store = BlobStore::open(dir).map_err(CacheError::from)?;
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
                store,
                meta,
                fills: Fills::default(),
                manifests: Coalescer::default(),
                tag_ttl: config.tag_ttl,
                access: Access::new(config, metrics.clone()),
                metrics,
            }),
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Who may pull what (checked by the server before the cache is asked).
    pub fn access(&self) -> &Access {
        &self.inner.access
    }

    /// Fills in flight (for tests and metrics).
    pub fn fills_in_flight(&self) -> usize {
        self.inner.fills.len()
    }

    /// Makes metadata durable; called on shutdown.
    pub fn flush(&self) -> Result<(), MirrorError> {
        Ok(self.inner.meta.flush()?)
    }
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
