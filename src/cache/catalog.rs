//! The cache seen as images, kept between reads: what `wharf ls` and
//! `wharf du` report and what the status page shows. One function builds it
//! from one [`Inventory`], and it carries the metadata generation it was
//! built at, so two answers with the same generation come from the same
//! snapshot and agree to the byte.
//!
//! Owns: the snapshot and when to rebuild it. Builds run on the caller's
//! (blocking) thread, never on a request's path, and never write: a page
//! view cannot change what it shows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::inventory::{Inventory, RepoListing};
use super::meta::now_millis;
use super::{release_scratch_memory, Cache, CacheError};

/// A snapshot of the cache as images.
#[derive(Debug)]
pub struct Catalog {
    /// The metadata generation read before the scan: the snapshot is at
    /// least this new.
    pub generation: u64,
    /// When it was built (ms since the epoch, for people; its age is
    /// measured on the monotonic clock).
    pub built_ms: u64,
    built_at: Instant,
    /// How long building it took.
    pub build_time: Duration,
    /// Repositories in (upstream, repository) order.
    pub repos: Vec<RepoListing>,
    pub totals: Totals,
}

/// The figures of `wharf du` that come from the records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub blobs: u64,
    pub manifests: u64,
    pub bytes: u64,
    pub pinned_bytes: u64,
    pub repositories: u64,
    /// Tagged images plus manifests cached by digest only (`ls` rows).
    pub images: u64,
    /// Bytes each upstream's images use; content two upstreams share counts
    /// in each.
    pub upstreams: Vec<(String, u64)>,
}

impl Catalog {
    fn build(generation: u64, inv: &Inventory, pins: &[super::pins::Pin]) -> Catalog {
        let started = Instant::now();
        let pinned = inv.pinned_ids(pins);
        let repos = inv.listing(&pinned);
        let totals = Totals {
            blobs: inv.blob_count() as u64,
            manifests: inv.manifest_count() as u64,
            bytes: inv.total(),
            pinned_bytes: inv.size_of_set(&pinned),
            repositories: repos.len() as u64,
            images: repos.iter().map(|r| r.images.len() as u64).sum(),
            upstreams: inv.upstream_sizes(),
        };
        Catalog {
            generation,
            built_ms: now_millis(),
            built_at: Instant::now(),
            build_time: started.elapsed(),
            repos,
            totals,
        }
    }
}

/// The snapshot and the single flight that rebuilds it.
#[derive(Default)]
pub(super) struct CatalogSlot {
    current: parking_lot::Mutex<Option<Arc<Catalog>>>,
    building: parking_lot::Mutex<()>,
}

impl Cache {
    /// The catalog as of now: rebuilt if any record changed since the last
    /// one. Blocking (reads every record and manifest: about a second per
    /// 100,000 blobs).
    pub fn catalog(&self) -> Result<Arc<Catalog>, CacheError> {
        self.catalog_within(Duration::ZERO)
    }

    /// The last catalog if it is current, or was built less than
    /// `max(fresh, 10 × its build time)` ago; else a new one. A cache that
    /// changes all the time is then rescanned at most every `fresh` and for
    /// at most a tenth of a core, however often it is viewed. Blocking.
    pub fn catalog_within(&self, fresh: Duration) -> Result<Arc<Catalog>, CacheError> {
        let usable = |c: &Option<Arc<Catalog>>| {
            let c = c.as_ref()?;
            let current = c.generation == self.meta.generation();
            let recent = !fresh.is_zero() && c.built_at.elapsed() < fresh.max(c.build_time * 10);
            (current || recent).then(|| c.clone())
        };
        if let Some(c) = usable(&self.catalog.current.lock()) {
            return Ok(c);
        }
        // One build at a time. A view takes the last catalog while another
        // is being built; `ls` and `du` (fresh = 0) wait for it.
        let _building = if fresh.is_zero() {
            self.catalog.building.lock()
        } else {
            match self.catalog.building.try_lock() {
                Some(b) => b,
                None => match self.catalog.current.lock().clone() {
                    Some(c) => return Ok(c),
                    None => self.catalog.building.lock(),
                },
            }
        };
        if let Some(c) = usable(&self.catalog.current.lock()) {
            return Ok(c);
        }
        let generation = self.meta.generation();
        let pins = self.pins()?;
        let (meta, store) = (self.meta.clone(), self.store.clone());
        let built = self.scan.run(move || -> Result<Catalog, CacheError> {
            let inv = Inventory::load(&meta, &store)?;
            let mut built = Catalog::build(generation, &inv, &pins);
            drop(inv);
            // The listing was allocated among the inventory's scratch: kept
            // as it is, its strings would pin pages of that freed memory for
            // as long as the catalog lives. A copy made now packs them
            // together; the originals go back.
            built.repos = built.repos.clone();
            release_scratch_memory();
            Ok(built)
        })?;
        let built = Arc::new(built);
        tracing::debug!(
            generation,
            ms = built.build_time.as_millis() as u64,
            "cache catalog built"
        );
        *self.catalog.current.lock() = Some(built.clone());
        Ok(built)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::meta::{BlobRecord, Kind, Metadata};
    use crate::cache::CacheSettings;
    use crate::registry::{Digest, MediaType};

    fn cache() -> (tempfile::TempDir, Cache) {
        let dir = tempfile::tempdir().unwrap();
        let (cache, _) = Cache::open(
            dir.path(),
            Metadata::in_memory(),
            &CacheSettings::default(),
            Arc::default(),
        )
        .unwrap();
        (dir, cache)
    }

    /// An image of `blobs` (the last one its config) tagged `up/repo:tag`.
    pub(crate) fn put_image(cache: &Cache, up: &str, repo: &str, tag: &str, blobs: &[&[u8]]) {
        let mut descs = Vec::new();
        for b in blobs {
            let d = Digest::sha256_of(b);
            cache.store.put_verified(&d, b).unwrap();
            cache
                .committed(&d, &BlobRecord::blob(b.len() as u64, 1))
                .unwrap();
            descs.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": d.to_string(), "size": b.len()}));
        }
        let config = descs.pop().unwrap();
        let mt = "application/vnd.oci.image.manifest.v1+json";
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": mt, "config": config, "layers": descs}))
        .unwrap();
        let d = Digest::sha256_of(&m);
        cache.store.put_verified(&d, &m).unwrap();
        cache
            .committed(&d, &BlobRecord::manifest(m.len() as u64, mt, 1))
            .unwrap();
        let repo = repo.parse().unwrap();
        let mt: MediaType = mt.parse().unwrap();
        cache
            .meta
            .put_tag(up, &repo, &tag.parse().unwrap(), &d, &mt, 1)
            .unwrap();
    }

    #[test]
    fn a_catalog_is_rebuilt_only_when_a_record_changed() {
        let (_dir, cache) = cache();
        put_image(&cache, "hub", "library/a", "1", &[b"layer-a", b"config-a"]);
        let first = cache.catalog().unwrap();
        assert_eq!(first.totals.images, 1);
        assert!(
            Arc::ptr_eq(&first, &cache.catalog().unwrap()),
            "nothing changed"
        );
        cache.meta.put_note("sync-run/x", &1).unwrap();
        assert!(
            Arc::ptr_eq(&first, &cache.catalog().unwrap()),
            "notes are no records"
        );

        put_image(&cache, "hub", "library/b", "2", &[b"layer-b", b"config-a"]);
        // A view may take the old one for a while; `ls` may not.
        let viewed = cache.catalog_within(Duration::from_secs(3600)).unwrap();
        assert!(Arc::ptr_eq(&first, &viewed));
        let now = cache.catalog().unwrap();
        assert!(now.generation > first.generation);
        assert_eq!(now.totals.images, 2);
        assert_eq!(now.totals.repositories, 2);
        // config-a is shared: counted once in the total.
        let sizes: u64 = [b"layer-a".len(), b"layer-b".len(), b"config-a".len()]
            .iter()
            .map(|&n| n as u64)
            .sum::<u64>();
        assert_eq!(now.totals.bytes - manifests_bytes(&cache), sizes);
    }

    fn manifests_bytes(cache: &Cache) -> u64 {
        cache
            .meta
            .blobs()
            .unwrap()
            .into_iter()
            .filter_map(|(_, r)| r.ok())
            .filter(|r| r.kind == Kind::Manifest)
            .map(|r| r.size)
            .sum()
    }
}
