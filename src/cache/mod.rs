//! The cache: verified content on disk and its metadata, behind one facade,
//! [`Cache`], whose operations are shaped like what callers mean (open a
//! blob a repository may read, begin and feed a fill, commit a manifest,
//! record a tag; see `content.rs`), keep it within budget (`upkeep.rs`) and
//! serve the operator (`operator.rs`). Behind it, components no caller
//! touches: the blob store, the metadata (`Kv`), [`Fills`] for streamed
//! downloads shared by concurrent readers, the evictor that chooses victims
//! (the cache alone deletes), reconciliation for crash recovery, and the
//! [`Inventory`] of images. [`Coalescer`] is for callers' small fetches.
//!
//! Knows nothing about upstreams or HTTP; never serves a byte whose digest
//! was not verified, and never leaves a partial blob visible.

mod coalesce;
mod content;
mod evict;
mod fill;
mod inventory;
mod meta;
mod notes;
mod operator;
mod pins;
mod reconcile;
mod sled_kv;
mod store;
mod upkeep;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use coalesce::{Coalescer, Panicked, Recover};
pub use evict::{EvictReport, Limits, NoRoom};
pub use fill::{FillError, FillReader, FillWriter, Fills, Join};
pub use inventory::{ImageListing, Inventory, RepoListing};
pub use meta::{
    now_millis, now_secs, BlobRecord, Kind, Kv, MemKv, Metadata, PinRecord, TagEntry, TagRecord,
};
pub use pins::Pin;
pub use reconcile::ReconcileReport;
pub use sled_kv::SledKv;
pub use store::BlobStore;

use crate::metrics::Metrics;
use crate::registry::{Digest, MediaType, RepoName};

use evict::Evictor;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("metadata store error: {0}")]
    Meta(String),
    #[error("corrupt metadata record: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Schema(String),
    #[error(transparent)]
    NoRoom(#[from] evict::NoRoom),
    #[error("{0}")]
    Invalid(String),
    #[error(
        "the cache metadata in {0} is in use by another process (one wharf per cache directory)"
    )]
    Locked(String),
}

/// Reconciliation, eviction passes and the operator's listings allocate tens
/// of MiB of short-lived lists on a large cache; glibc keeps freed memory in
/// its arenas, so hand it back to the system rather than carry it as idle RSS
/// for months.
pub fn release_scratch_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; no pointer is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl CacheError {
    /// The disk could not take the write (ENOSPC, EDQUOT), or a fill could
    /// not reserve room: eviction should run.
    pub fn is_disk_full(&self) -> bool {
        match self {
            CacheError::Io(e) => matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)),
            CacheError::NoRoom(_) => true,
            _ => false,
        }
    }
}

/// How the cache is bounded and what it keeps.
#[derive(Clone, Debug)]
pub struct CacheSettings {
    pub limits: Limits,
    /// Config patterns (`cache.pin`); `wharf pin` adds more in the metadata.
    pub pins: Vec<Pin>,
    /// Bytes of manifests kept in memory.
    pub memory: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            limits: Limits {
                max_size: None,
                high: 0.9,
                low: 0.8,
            },
            pins: Vec::new(),
            memory: 16 << 20,
        }
    }
}

/// A cached manifest: its bytes and the media type to serve it with.
#[derive(Clone, Debug)]
pub struct CachedManifest {
    pub bytes: Bytes,
    pub media_type: MediaType,
}

/// Where content came from: the upstream (by its configured name) and the
/// repository on it. A repository reads cached content only once it is
/// linked to it (it came through that repository, or the upstream said the
/// repository holds it); links, tags and fills are all kept per origin.
#[derive(Clone, Copy, Debug)]
pub struct Origin<'a> {
    pub upstream: &'a str,
    pub repo: &'a RepoName,
}

/// Everything on the cache directory, opened and reconciled: the one door to
/// cached content. Callers (the mirror today; sync, bundle import and a
/// shared tier next) use operations shaped like what they mean — open a
/// linked blob, commit a manifest, begin and feed a fill — and never the
/// parts below, so the commit bookkeeping (record, usage, link, tag, hot
/// copy) and every deletion live here.
pub struct Cache {
    dir: PathBuf,
    store: BlobStore,
    meta: Metadata,
    fills: Fills,
    evictor: Evictor,
    config_pins: Vec<Pin>,
    /// Recent manifests, so tag and digest hits read neither sled nor a file.
    hot: moka::sync::Cache<Digest, CachedManifest>,
    /// Content an operation in progress relies on (a bundle import): held
    /// like pinned content by eviction until its [`Lease`] is dropped.
    leases: parking_lot::Mutex<std::collections::HashMap<Digest, usize>>,
    metrics: Arc<Metrics>,
}

/// Keeps content from eviction while an operation needs it; see
/// [`Cache::lease`].
pub struct Lease<'a> {
    cache: &'a Cache,
    digests: Vec<Digest>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut l = self.cache.leases.lock();
        for d in &self.digests {
            if let Some(n) = l.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    l.remove(d);
                }
            }
        }
    }
}

/// `wharf du`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Usage {
    pub dir: PathBuf,
    pub blobs: u64,
    pub manifests: u64,
    pub bytes: u64,
    pub pinned_bytes: u64,
    pub max_size: Option<u64>,
    pub high_watermark: f64,
    pub low_watermark: f64,
    pub disk_available: u64,
    pub disk_size: u64,
    pub fills_in_flight: usize,
    pub upstreams: Vec<(String, u64)>,
}

/// `wharf rm`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RemoveReport {
    pub tags_removed: u64,
    pub links_removed: u64,
    pub blobs_removed: u64,
    pub bytes_removed: u64,
    /// Content of the image still used by another cached image, or pinned.
    pub blobs_kept: u64,
}

/// `wharf gc`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct GcReport {
    pub reconcile: ReconcileReport,
    pub evict: EvictReport,
}

impl Cache {
    /// Opens the store (removing temp files a crash left), reconciles files
    /// with metadata, and counts usage.
    pub fn open(
        dir: &Path,
        meta: Metadata,
        settings: &CacheSettings,
        metrics: Arc<Metrics>,
    ) -> Result<(Cache, ReconcileReport), CacheError> {
        let started = std::time::Instant::now();
        let store = BlobStore::open(dir)?;
        let report = reconcile::reconcile(&store, &meta, false)?;
        if report.files_removed + report.records_removed > 0 {
            tracing::warn!(
                files_removed = report.files_removed,
                records_removed = report.records_removed,
                "cache reconciled: files and metadata disagreed (an interrupted run)"
            );
        }
        let cache = Cache {
            dir: dir.to_owned(),
            store,
            meta,
            fills: Fills::default(),
            evictor: Evictor::new(settings.limits.clone(), metrics.clone()),
            config_pins: settings.pins.clone(),
            leases: Default::default(),
            hot: moka::sync::Cache::builder()
                .max_capacity(settings.memory)
                .weigher(|_, m: &CachedManifest| m.bytes.len().try_into().unwrap_or(u32::MAX))
                .build(),
            metrics,
        };
        // Counted by the reconciliation's scan: a second one would double
        // the start-up time of a large cache.
        cache.evictor.set_usage(report.bytes_kept);
        cache.metrics.cache_blobs.set(report.blobs_kept as i64);
        cache
            .metrics
            .cache_max_size
            .set(settings.limits.max_size.unwrap_or(0) as i64);
        tracing::info!(
            dir = %dir.display(),
            blobs = report.blobs_kept,
            bytes = report.bytes_kept,
            files_removed = report.files_removed,
            records_removed = report.records_removed,
            ms = started.elapsed().as_millis() as u64,
            "cache opened"
        );
        release_scratch_memory();
        Ok((cache, report))
    }

    /// Holds `digests` like pinned content until the lease is dropped:
    /// eviction passes never choose them.
    pub fn lease(&self, digests: impl IntoIterator<Item = Digest>) -> Lease<'_> {
        let digests: Vec<Digest> = digests.into_iter().collect();
        let mut l = self.leases.lock();
        for d in &digests {
            *l.entry(d.clone()).or_default() += 1;
        }
        Lease {
            cache: self,
            digests,
        }
    }

    /// Bytes of committed content, as counted since the last pass.
    pub fn bytes(&self) -> u64 {
        self.evictor.usage()
    }

    /// Blob downloads in progress.
    pub fn fills_in_flight(&self) -> usize {
        self.fills.len()
    }

    /// Whether the cache can serve: its disk takes writes (`/readyz`).
    /// Blocking (creates and removes a file).
    pub fn readiness(&self) -> Readiness {
        Readiness {
            writable: self.store.check_writable().map_err(|e| e.to_string()),
            bytes: self.bytes(),
            fills_in_flight: self.fills_in_flight(),
        }
    }

    /// Every pin: the configuration's, then `wharf pin`'s.
    fn pins(&self) -> Result<Vec<Pin>, CacheError> {
        let mut pins = self.config_pins.clone();
        for (p, _) in self.meta.pins()? {
            match Pin::parse(&p) {
                Ok(p) => pins.push(p),
                Err(e) => tracing::warn!(pattern = %p, error = %e, "ignoring a stored pin"),
            }
        }
        Ok(pins)
    }

    /// Records a committed blob and counts it against the budget.
    fn committed(&self, d: &Digest, rec: &BlobRecord) -> Result<(), CacheError> {
        let new = self.meta.get_blob(d)?.is_none();
        self.meta.put_blob(d, rec)?;
        if new {
            self.evictor.added(rec.size);
            self.metrics.cache_blobs.inc();
        }
        Ok(())
    }

    /// Deletes a blob: its record first, then its file (a crash in between
    /// leaves a lone file that start-up removes), then the hot copy. The only
    /// place content is deleted; the caller counts it.
    fn delete(&self, d: &Digest) -> Result<(), CacheError> {
        self.meta.remove_blob(d)?;
        self.store.remove(d)?;
        self.hot.invalidate(d);
        Ok(())
    }
}

/// `/readyz`'s view of the cache.
#[derive(Debug, Serialize)]
pub struct Readiness {
    /// `Err(reason)` when the disk takes no writes.
    pub writable: Result<(), String>,
    pub bytes: u64,
    pub fills_in_flight: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_drops_the_references_to_what_it_removed() {
        let dir = tempfile::tempdir().unwrap();
        let settings = CacheSettings {
            limits: Limits {
                max_size: Some(1 << 20),
                high: 0.5,
                low: 0.3,
            },
            ..Default::default()
        };
        let (cache, _) =
            Cache::open(dir.path(), Metadata::in_memory(), &settings, Arc::default()).unwrap();
        let repo: RepoName = "a/b".parse().unwrap();
        let put = |fill: u8, at: u64| {
            let body = vec![fill; 300 << 10];
            let d = Digest::sha256_of(&body);
            cache.store.put_verified(&d, &body).unwrap();
            cache
                .committed(&d, &BlobRecord::blob(body.len() as u64, at))
                .unwrap();
            cache.meta.link("u", &repo, &d).unwrap();
            d
        };
        let old = put(1, 1);
        let new = put(2, 2);
        // 600 KiB of 1 MiB: past the high mark (512 KiB), down to 300 KiB.
        let r = cache.evict().unwrap();
        assert_eq!(r.evicted_blobs, 1);
        assert!(!cache.meta.is_linked("u", &repo, &old).unwrap());
        assert!(cache.meta.is_linked("u", &repo, &new).unwrap());
        assert!(cache.store.contains(&new) && !cache.store.contains(&old));
    }
}
