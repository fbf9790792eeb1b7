//! The cache: verified content on disk and its metadata, behind one facade,
//! [`Cache`], whose operations are shaped like what callers mean (open a
//! blob a repository may read, begin and feed a fill, commit a manifest,
//! record a tag; see `content.rs`), keep it within budget (`upkeep.rs`) and
//! serve the operator (`operator.rs`). Behind it, components no caller
//! touches: the blob store, the metadata (`Kv`), [`Fills`] for streamed
//! downloads shared by concurrent readers, the evictor that chooses victims
//! (the cache alone deletes), reconciliation for crash recovery, the
//! [`Inventory`] of images, and the thread the start-up reconciliation and
//! catalog builds run on (`crate::own_thread`). [`Coalescer`] is for callers' small fetches.
//!
//! Knows nothing about upstreams or HTTP; never serves a byte whose digest
//! was not verified, and never leaves a partial blob visible.

mod catalog;
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

pub use catalog::{Catalog, Image, Repo, Totals};
pub use coalesce::{Coalescer, Panicked, Recover};
pub use evict::{EvictReport, Limits, NoRoom, Reservation};
pub use fill::{FillError, FillProgress, FillReader, FillReaders, FillWriter, Fills, Join};
pub use inventory::{ImageListing, Inventory, RepoListing};
pub use meta::{
    now_millis, now_secs, BlobRecord, Kind, Kv, MemKv, Metadata, PinRecord, TagEntry, TagRecord,
};
pub use pins::Pin;
pub use reconcile::ReconcileReport;
pub use sled_kv::SledKv;
pub use store::BlobStore;

use crate::memory::release_scratch_memory;
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

/// The default [`CacheSettings::fill_reserve_step`]: most layers are smaller,
/// so they are reserved whole before their first byte, as before.
pub const DEFAULT_FILL_RESERVE_STEP: u64 = 64 << 20;

/// How the cache is bounded and what it keeps.
#[derive(Clone, Debug)]
pub struct CacheSettings {
    pub limits: Limits,
    /// Config patterns (`cache.pin`); `wharf pin` adds more in the metadata.
    pub pins: Vec<Pin>,
    /// Bytes of manifests kept in memory.
    pub memory: u64,
    /// A fill reserves room in steps of this many bytes as its bytes
    /// arrive (a blob no larger is reserved whole before its first byte), so
    /// neither a download of unknown size nor a lying `Content-Length` can
    /// outgrow the budget or evict more than it has actually received.
    pub fill_reserve_step: u64,
    /// The least a fill's source must deliver, in bytes per second averaged
    /// over [`fill_rate_window`](Self::fill_rate_window), before the fill
    /// fails (0: no minimum). Enforced by whoever feeds the fill (the
    /// mirror, around the upstream's body).
    pub fill_min_rate: u64,
    pub fill_rate_window: std::time::Duration,
    /// Blob downloads running at once (each holds a blocking thread that
    /// hashes and writes); more wait for a slot, at most
    /// [`FILL_SLOT_WAIT`](crate::mirror::FILL_SLOT_WAIT).
    pub max_fills: usize,
    /// How long a "not found" from an upstream for a manifest (by tag or
    /// digest, per repository) is remembered (zero: not at all), and for how
    /// many of them at most. Policy of the mirror, which keeps them.
    pub negative_ttl: std::time::Duration,
    pub negative_entries: u64,
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
            fill_reserve_step: DEFAULT_FILL_RESERVE_STEP,
            fill_min_rate: 16 << 10,
            fill_rate_window: std::time::Duration::from_secs(30),
            max_fills: 128,
            negative_ttl: std::time::Duration::from_secs(30),
            negative_entries: 10_000,
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
    store: Arc<BlobStore>,
    meta: Arc<Metadata>,
    /// Where the whole metadata is read (`wharf-scan`, see `crate::own_thread`).
    scan: crate::own_thread::OwnThread,
    fills: Fills,
    evictor: Evictor,
    /// See [`CacheSettings::fill_reserve_step`].
    fill_step: u64,
    config_pins: Vec<Pin>,
    /// Recent manifests, so tag and digest hits read neither sled nor a file.
    hot: moka::sync::Cache<Digest, CachedManifest>,
    /// Content an operation in progress relies on (a bundle import): held
    /// like pinned content by eviction until its [`Lease`] is dropped.
    leases: parking_lot::Mutex<std::collections::HashMap<Digest, usize>>,
    /// The last snapshot as images (`ls`, `du`, the status page).
    catalog: catalog::CatalogSlot,
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
    /// The metadata generation of the catalog these figures come from (the
    /// status page's `/api/overview` carries it too).
    #[serde(default)]
    pub generation: u64,
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
        let store = Arc::new(BlobStore::open(dir)?);
        let meta = Arc::new(meta);
        let scan = crate::own_thread::OwnThread::start("wharf-scan")?;
        let report = {
            let (store, meta) = (store.clone(), meta.clone());
            scan.run(move || reconcile::reconcile(&store, &meta, false))?
        };
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
            scan,
            fills: Fills::default(),
            evictor: Evictor::new(settings.limits.clone(), metrics.clone()),
            fill_step: settings.fill_reserve_step.max(1),
            config_pins: settings.pins.clone(),
            leases: Default::default(),
            catalog: Default::default(),
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

    /// Each blob download in progress, oldest first.
    pub fn fills_progress(&self) -> Vec<fill::FillProgress> {
        self.fills.progress()
    }

    /// The last eviction pass that removed something: when (unix ms), and
    /// its report.
    pub fn last_eviction(&self) -> Option<(u64, EvictReport)> {
        self.evictor.last_eviction()
    }

    /// A cached manifest's bytes, read from its file without keeping it in
    /// memory (the status page's detail view); `None` for anything not
    /// recorded as a manifest. Blocking.
    pub fn manifest_bytes(&self, d: &Digest) -> Result<Option<Vec<u8>>, CacheError> {
        match self.meta.get_blob(d)? {
            Some(rec) if rec.kind == Kind::Manifest => Ok(self.store.read(d)?),
            _ => Ok(None),
        }
    }

    /// Whether the content is cached (its record is there). Blocking.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.meta.get_blob(d).ok().flatten().is_some()
    }

    /// The budget and watermarks.
    pub fn limits(&self) -> &Limits {
        self.evictor.limits()
    }

    /// Bytes free and in all on the cache's filesystem (one `statvfs`).
    pub fn disk_space(&self) -> Result<(u64, u64), CacheError> {
        Ok(self.store.disk_space()?)
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
        if self.committed_quietly(d, rec)? {
            self.evictor.wake();
        }
        Ok(())
    }

    /// [`committed`](Self::committed) without waking the eviction pass;
    /// returns whether one is wanted (see `Evictor::count`).
    fn committed_quietly(&self, d: &Digest, rec: &BlobRecord) -> Result<bool, CacheError> {
        let new = self.meta.get_blob(d)?.is_none();
        self.meta.put_blob(d, rec)?;
        if new {
            self.metrics.cache_blobs.inc();
            return Ok(self.evictor.count(rec.size));
        }
        Ok(false)
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

/// The room a fill holds in the budget, grown in steps as its bytes arrive
/// ([`Cache::fill_room`], [`Room::cover`]): what one fill may make eviction
/// remove is bounded by what it has received plus one step, never by what
/// its source announced. Given back when dropped (the commit counts the blob
/// as usage instead).
pub struct Room<'a> {
    cache: &'a Cache,
    held: Reservation<'a>,
    /// The announced size, if any: the last step claims no more than that.
    size: Option<u64>,
}

impl Room<'_> {
    /// Makes sure the room covers `end` bytes, reserving more (and evicting
    /// if needed) a step at a time. Blocking (an eviction pass may run).
    pub fn cover(&mut self, end: u64) -> Result<(), CacheError> {
        // Past the announced size the writer refuses the bytes: room for
        // them would only make eviction remove content for nothing.
        let end = self.size.map_or(end, |s| end.min(s));
        while self.held.bytes() < end {
            let have = self.held.bytes();
            let step = match self.size {
                Some(s) => self.cache.fill_step.min(s - have),
                None => self.cache.fill_step,
            };
            let more = self.cache.reserve(step).inspect_err(|e| {
                tracing::warn!(
                    held = have,
                    need = end,
                    error = %e,
                    "a fill outgrew the room the cache could give it"
                );
            })?;
            self.held.absorb(more);
        }
        Ok(())
    }
}

impl Cache {
    /// Room for a fill announced as `size` bytes (or of unknown size): a
    /// blob that can never fit (larger than the budget) is refused at once,
    /// before any reader has a header; otherwise the first step is reserved
    /// now and [`Room::cover`] claims the rest as bytes arrive. Blocking.
    pub fn fill_room(&self, size: Option<u64>) -> Result<Room<'_>, CacheError> {
        // A blob of one step or less is reserved whole below, whose check
        // refuses it just the same: one statvfs on the way to its first byte.
        if let Some(s) = size.filter(|&s| s > self.fill_step) {
            let (available, _) = self.store.disk_space()?;
            // Err only when it could not fit even with the cache emptied.
            self.evictor.fits(s, available)?;
        }
        let first = size.map_or(self.fill_step, |s| s.min(self.fill_step));
        Ok(Room {
            cache: self,
            held: self.reserve(first)?,
            size,
        })
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

    /// A 1 MiB budget with 64 KiB steps, holding one 300 KiB blob.
    fn small_cache() -> (tempfile::TempDir, Cache, Digest) {
        let dir = tempfile::tempdir().unwrap();
        let settings = CacheSettings {
            limits: Limits {
                max_size: Some(1 << 20),
                high: 0.9,
                low: 0.8,
            },
            fill_reserve_step: 64 << 10,
            ..Default::default()
        };
        let (cache, _) =
            Cache::open(dir.path(), Metadata::in_memory(), &settings, Arc::default()).unwrap();
        let body = vec![7u8; 300 << 10];
        let d = Digest::sha256_of(&body);
        cache.store.put_verified(&d, &body).unwrap();
        cache
            .committed(&d, &BlobRecord::blob(body.len() as u64, 1))
            .unwrap();
        (dir, cache, d)
    }

    fn fill_with(
        cache: &Cache,
        data: &[u8],
        announced: Option<u64>,
    ) -> Result<u64, fill::FillError> {
        let repo: RepoName = "a/b".parse().unwrap();
        let o = Origin {
            upstream: "u",
            repo: &repo,
        };
        let d = Digest::sha256_of(data);
        let Join::Leader(w, _r) = cache.begin_fill(&d, o).unwrap() else {
            panic!("a fresh digest leads")
        };
        let chunks = data.chunks(16 << 10).map(Ok::<_, fill::FillError>);
        tokio::task::block_in_place(|| cache.fill(w, announced, chunks))
    }

    /// Regression: a source sending more than it announced had its room
    /// grown by a whole step for the bytes past the size (which the writer
    /// then refused), and that step could run an eviction pass.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_past_the_announced_size_evict_nothing() {
        let (_dir, cache, old) = small_cache();
        // 300 KiB cached + 700 KiB announced fit the 1 MiB budget; one
        // more step would not.
        let announced = 700u64 << 10;
        let data = vec![1u8; (announced as usize) + (16 << 10)];
        let r = fill_with(&cache, &data, Some(announced));
        assert!(
            matches!(r, Err(fill::FillError::SizeMismatch { .. })),
            "{r:?}"
        );
        assert!(
            cache.store.contains(&old),
            "an overrun made eviction remove cached content"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lying_content_length_evicts_nothing_before_bytes_arrive() {
        let (dir, cache, old) = small_cache();
        // Announces almost the whole budget, sends 10 bytes.
        let r = fill_with(&cache, b"ten bytes!", Some((1 << 20) - 1));
        assert!(
            matches!(r, Err(fill::FillError::SizeMismatch { .. })),
            "{r:?}"
        );
        assert!(
            cache.store.contains(&old),
            "cached content survives the lie"
        );
        assert_eq!(cache.bytes(), 300 << 10);
        // Larger than the budget: refused at once, still nothing evicted.
        let r = fill_with(&cache, b"x", Some(1 << 40));
        assert!(
            r.as_ref().is_err_and(fill::FillError::is_disk_full),
            "{r:?}"
        );
        assert!(cache.store.contains(&old));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fill_of_unknown_size_stays_within_the_budget() {
        let (dir, cache, _old) = small_cache();
        let data: Vec<u8> = (0..2u32 << 20).map(|i| (i % 251) as u8).collect();
        let r = fill_with(&cache, &data, None);
        assert!(
            r.as_ref().is_err_and(fill::FillError::is_disk_full),
            "{r:?}"
        );
        assert!(!cache.store.contains(&Digest::sha256_of(&data)));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        assert!(
            cache.evictor.fits(1 << 20, u64::MAX).unwrap(),
            "room given back"
        );
        // One that fits is cached, making room by eviction as it grows.
        let data = vec![9u8; 900 << 10];
        assert_eq!(fill_with(&cache, &data, None).unwrap(), 900 << 10);
        assert!(cache.store.contains(&Digest::sha256_of(&data)));
    }
}
