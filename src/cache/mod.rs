//! The cache: verified content on disk, its metadata, and the components that
//! manage it — [`Fills`] for streamed blob downloads shared by concurrent
//! readers, [`Coalescer`] for small objects, [`Evictor`] for the size budget,
//! reconciliation for crash recovery, and the [`Inventory`] of images that
//! pins and the operator commands work on. Knows nothing about upstreams or
//! HTTP.

mod coalesce;
mod evict;
mod fill;
mod inventory;
mod meta;
mod pins;
mod reconcile;
mod sled_kv;
mod store;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use coalesce::Coalescer;
pub use evict::{EvictReport, Evictor, Limits, NoRoom, Reservation};
pub use fill::{FillError, FillReader, FillWriter, Fills, Join};
pub use inventory::{ImageListing, Inventory, RepoListing};
pub use meta::{
    now_millis, now_secs, BlobRecord, Kind, Kv, MemKv, Metadata, PinRecord, TagEntry, TagRecord,
};
pub use pins::Pin;
pub use reconcile::ReconcileReport;
pub use sled_kv::SledKv;
pub use store::{BlobStore, TempFile};

use crate::metrics::Metrics;
use crate::registry::{Digest, RepoName};

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

/// A manifest kept in memory: its bytes and the media type to serve it with.
#[derive(Clone, Debug)]
pub struct HotManifest {
    pub bytes: Bytes,
    pub media_type: String,
}

/// Everything on the cache directory, opened and reconciled.
pub struct Cache {
    pub dir: PathBuf,
    pub store: BlobStore,
    pub meta: Metadata,
    pub fills: Fills,
    pub evictor: Evictor,
    config_pins: Vec<Pin>,
    /// Recent manifests, so tag and digest hits read neither sled nor a file.
    hot: moka::sync::Cache<Digest, HotManifest>,
    metrics: Arc<Metrics>,
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
    /// with metadata, and counts usage. `live` is for a cache a server is
    /// using (never at start-up).
    pub fn open(
        dir: &Path,
        meta: Metadata,
        settings: &CacheSettings,
        metrics: Arc<Metrics>,
    ) -> Result<(Cache, ReconcileReport), CacheError> {
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
            hot: moka::sync::Cache::builder()
                .max_capacity(settings.memory)
                .weigher(|_, m: &HotManifest| m.bytes.len().try_into().unwrap_or(u32::MAX))
                .build(),
            metrics,
        };
        // Counted by the reconciliation's scan: a second one would double
        // the start-up time of a large cache.
        cache.evictor.set_usage(report.bytes_kept);
        cache.metrics.cache_blobs.set(report.blobs_kept as i64);
        Ok((cache, report))
    }

    /// Every pin: the configuration's, then `wharf pin`'s.
    pub fn pins(&self) -> Result<Vec<Pin>, CacheError> {
        let mut pins = self.config_pins.clone();
        for (p, _) in self.meta.pins()? {
            match Pin::parse(&p) {
                Ok(p) => pins.push(p),
                Err(e) => tracing::warn!(pattern = %p, error = %e, "ignoring a stored pin"),
            }
        }
        Ok(pins)
    }

    /// A read of `d`, for LRU.
    pub fn touch(&self, d: &Digest) {
        self.evictor.touch(d, now_millis());
    }

    /// Records a committed blob and counts it against the budget.
    pub fn committed(&self, d: &Digest, rec: &BlobRecord) -> Result<(), CacheError> {
        let new = self.meta.get_blob(d)?.is_none();
        self.meta.put_blob(d, rec)?;
        if new {
            self.evictor.added(rec.size);
            self.metrics.cache_blobs.inc();
        }
        Ok(())
    }

    pub fn hot_manifest(&self, d: &Digest) -> Option<HotManifest> {
        self.hot.get(d)
    }

    pub fn remember_manifest(&self, d: &Digest, m: HotManifest) {
        self.hot.insert(d.clone(), m);
    }

    fn forget(&self, d: &Digest) {
        self.hot.invalidate(d);
    }

    /// Claims room for a fill of `size` bytes (evicting if needed). Blocking.
    pub fn reserve(&self, size: u64) -> Result<Reservation<'_>, CacheError> {
        self.evictor
            .reserve(size, &self.store, &self.meta, &|| self.pins(), &|d| {
                self.forget(d)
            })
    }

    /// An eviction pass now (if over the high mark), then the references
    /// to what was evicted. Blocking.
    pub fn evict(&self) -> Result<EvictReport, CacheError> {
        let pins = self.pins()?;
        let r = self
            .evictor
            .run(&self.store, &self.meta, &pins, 0, &|d| self.forget(d))?;
        self.prune_evicted()?;
        Ok(r)
    }

    /// Drops links and tags that point at evicted content, if anything was
    /// evicted since the last time, so months of churn do not grow the
    /// metadata. A link to an evicted blob would only cost a refetch, never
    /// a wrong answer. Blocking (scans links and tags).
    pub fn prune_evicted(&self) -> Result<(), CacheError> {
        if self.evictor.take_unpruned() == 0 {
            return Ok(());
        }
        let mut r = ReconcileReport::default();
        reconcile::prune_references(&self.meta, &mut r)?;
        if r.links_removed + r.tags_removed > 0 {
            tracing::info!(
                links_removed = r.links_removed,
                tags_removed = r.tags_removed,
                "dropped references to evicted content"
            );
        }
        release_scratch_memory();
        Ok(())
    }

    /// Writes recorded reads to the metadata and makes it durable (shutdown).
    pub fn flush(&self) -> Result<(), CacheError> {
        self.evictor.flush_touches(&self.meta)?;
        self.meta.flush()
    }

    pub fn listing(&self) -> Result<Vec<RepoListing>, CacheError> {
        self.evictor.flush_touches(&self.meta)?;
        let inv = Inventory::load(&self.meta, &self.store)?;
        let pinned = inv.pinned(&self.pins()?);
        let listing = inv.listing(&pinned);
        drop(inv);
        release_scratch_memory();
        Ok(listing)
    }

    pub fn usage(&self) -> Result<Usage, CacheError> {
        let inv = Inventory::load(&self.meta, &self.store)?;
        let pinned = inv.pinned(&self.pins()?);
        let (disk_available, disk_size) = self.store.disk_space()?;
        let mut upstreams: std::collections::BTreeMap<String, HashSet<Digest>> = Default::default();
        for t in &inv.tags {
            if let Ok(d) = t.record.digest.parse::<Digest>() {
                upstreams
                    .entry(t.upstream.clone())
                    .or_default()
                    .extend(inv.closure(&d));
            }
        }
        for (up, _, d) in inv.manifest_links.iter().chain(&inv.blob_links) {
            upstreams
                .entry(up.clone())
                .or_default()
                .extend(inv.closure(d));
        }
        let limits = self.evictor.limits();
        Ok(Usage {
            dir: self.dir.clone(),
            blobs: inv.blobs.len() as u64,
            manifests: inv
                .blobs
                .values()
                .filter(|b| b.kind == Kind::Manifest)
                .count() as u64,
            bytes: inv.total(),
            pinned_bytes: inv.size_of(&pinned),
            max_size: limits.max_size,
            high_watermark: limits.high,
            low_watermark: limits.low,
            disk_available,
            disk_size,
            fills_in_flight: self.fills.len(),
            upstreams: upstreams
                .into_iter()
                .map(|(u, ds)| {
                    let size = inv.size_of(&ds);
                    (u, size)
                })
                .collect(),
        })
    }

    /// Removes an image: `upstream/repo:tag`, `upstream/repo@digest`, or
    /// `upstream/repo` (all of it). Its tags and links go; its content goes
    /// unless another cached image uses it or it is pinned. Blocking.
    pub fn remove_image(&self, image: &str) -> Result<RemoveReport, CacheError> {
        let (upstream, repo, reference) = parse_image(image)?;
        let mine = |up: &str, r: &RepoName| up == upstream && *r == repo;
        let mut report = RemoveReport::default();
        let mut roots: Vec<Digest> = Vec::new();
        for t in self
            .meta
            .tags()?
            .iter()
            .filter(|t| mine(&t.upstream, &t.repo))
        {
            let hit = match &reference {
                None => true,
                Some(ImageRef::Tag(tag)) => t.tag.as_str() == tag,
                Some(ImageRef::Digest(d)) => t.record.digest == d.as_str(),
            };
            if hit {
                self.meta.remove_tag(&t.upstream, &t.repo, &t.tag)?;
                report.tags_removed += 1;
                roots.extend(t.record.digest.parse::<Digest>());
            }
        }
        let inv = Inventory::load(&self.meta, &self.store)?;
        if let Some(ImageRef::Digest(d)) = &reference {
            roots.push(d.clone());
        }
        let mut doomed: HashSet<Digest> = HashSet::new();
        for r in &roots {
            doomed.extend(inv.closure(r));
        }
        if reference.is_none() {
            for (up, r, d) in inv.manifest_links.iter().chain(&inv.blob_links) {
                if mine(up, r) {
                    doomed.extend(inv.closure(d));
                }
            }
        }
        if !doomed.iter().any(|d| inv.blobs.contains_key(d)) && report.tags_removed == 0 {
            return Err(CacheError::Invalid(format!("{image}: not in the cache")));
        }
        // The repository's other tags keep their content and its links.
        for t in inv.tags.iter().filter(|t| mine(&t.upstream, &t.repo)) {
            if let Ok(d) = t.record.digest.parse::<Digest>() {
                for c in inv.closure(&d) {
                    doomed.remove(&c);
                }
            }
        }
        for (up, r, d) in inv.manifest_links.iter().chain(&inv.blob_links) {
            if mine(up, r) && doomed.contains(d) {
                self.meta.unlink(up, r, d)?;
                report.links_removed += 1;
            }
        }
        // What the rest of the cache uses stays: other repositories' tags and
        // links (images share layers), and pins.
        let inv = Inventory::load(&self.meta, &self.store)?;
        let mut kept: HashSet<Digest> = inv.pinned(&self.pins()?);
        for t in &inv.tags {
            if let Ok(d) = t.record.digest.parse::<Digest>() {
                kept.extend(inv.closure(&d));
            }
        }
        for (_, _, d) in inv.manifest_links.iter().chain(&inv.blob_links) {
            kept.extend(inv.closure(d));
        }
        for d in doomed {
            let Some(rec) = inv.blobs.get(&d) else {
                continue;
            };
            if kept.contains(&d) {
                report.blobs_kept += 1;
                continue;
            }
            self.meta.remove_blob(&d)?;
            self.store.remove(&d)?;
            self.forget(&d);
            self.evictor.removed(rec.size);
            self.metrics.cache_blobs.dec();
            report.blobs_removed += 1;
            report.bytes_removed += rec.size;
        }
        Ok(report)
    }

    /// Reconciles files and metadata, drops references to missing content,
    /// optionally re-hashes every blob, then evicts if over the high mark.
    /// `live`: a server is using the cache. Blocking.
    pub fn gc(&self, verify: bool, live: bool) -> Result<GcReport, CacheError> {
        let mut corrupt = 0;
        if verify {
            for path in self.store.verify_all()? {
                tracing::warn!(path = %path.display(), "removed a blob whose content no longer matches its digest");
                corrupt += 1;
            }
        }
        let mut reconcile = reconcile::reconcile(&self.store, &self.meta, live)?;
        reconcile.corrupt_removed = corrupt;
        reconcile::prune_references(&self.meta, &mut reconcile)?;
        self.hot.invalidate_all();
        // evict() hands scratch memory back when it is done.
        let evict = self.evict()?;
        Ok(GcReport { reconcile, evict })
    }

    pub fn pin(&self, pattern: &str) -> Result<bool, CacheError> {
        let p = Pin::parse(pattern).map_err(CacheError::Invalid)?;
        self.meta
            .add_pin(p.as_str(), &PinRecord { added: now_secs() })
    }

    pub fn unpin(&self, pattern: &str) -> Result<bool, CacheError> {
        if self
            .config_pins
            .iter()
            .any(|p| p.as_str() == pattern.trim())
        {
            return Err(CacheError::Invalid(format!(
                "{pattern} is pinned by the configuration file (cache.pin); remove it there"
            )));
        }
        self.meta.remove_pin(pattern.trim())
    }

    /// Pins: (pattern, from the config file?).
    pub fn pin_list(&self) -> Result<Vec<(String, bool)>, CacheError> {
        let mut out: Vec<(String, bool)> = self
            .config_pins
            .iter()
            .map(|p| (p.as_str().to_owned(), true))
            .collect();
        out.extend(self.meta.pins()?.into_iter().map(|(p, _)| (p, false)));
        Ok(out)
    }
}

enum ImageRef {
    Tag(String),
    Digest(Digest),
}

/// `upstream/repo[:tag|@digest]`.
fn parse_image(image: &str) -> Result<(String, RepoName, Option<ImageRef>), CacheError> {
    let bad = |why: &str| {
        CacheError::Invalid(format!(
            "{image:?}: {why} (expected <upstream>/<repository>[:tag|@digest], as `wharf ls` shows)"
        ))
    };
    let (up, rest) = image.split_once('/').ok_or_else(|| bad("no upstream"))?;
    let (repo, reference) = if let Some((r, d)) = rest.split_once('@') {
        let d = d.parse::<Digest>().map_err(|_| bad("invalid digest"))?;
        (r, Some(ImageRef::Digest(d)))
    } else {
        let last = rest.rfind('/').map_or(0, |i| i + 1);
        match rest[last..].find(':') {
            Some(i) => (
                &rest[..last + i],
                Some(ImageRef::Tag(rest[last + i + 1..].to_owned())),
            ),
            None => (rest, None),
        }
    };
    let repo = repo
        .parse::<RepoName>()
        .map_err(|_| bad("invalid repository"))?;
    Ok((up.to_owned(), repo, reference))
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
