//! Keeping the cache inside its budget and consistent for months: room for
//! fills, eviction passes (the [`Evictor`](super::evict) chooses, this
//! removes), pruning references to evicted content, `gc`, and the
//! background upkeep loop. Never called on a request's async path: all of it
//! blocks.

use std::sync::Arc;
use std::time::Duration;

use super::evict::{Reservation, Verdict};
use super::inventory::Inventory;
use super::reconcile;
use super::{Cache, CacheError, EvictReport, GcReport, NoRoom, ReconcileReport};
use crate::memory::release_scratch_memory;

impl Cache {
    /// Claims room for a fill of `size` bytes, evicting if needed.
    pub(super) fn reserve(&self, size: u64) -> Result<Reservation<'_>, CacheError> {
        // On the path to a cold blob's first byte: one statvfs, and the pins
        // are read only if a pass must run.
        let (available, _) = self.store.disk_space()?;
        if let Some(claimed) = self.evictor.try_claim(size, available)? {
            return Ok(claimed);
        }
        let r = self.pass(size)?;
        let (available, _) = self.store.disk_space()?;
        match self.evictor.try_claim(size, available) {
            Ok(Some(claimed)) => Ok(claimed),
            Ok(None) | Err(_) => Err(CacheError::NoRoom(NoRoom {
                need: size,
                available,
                budget: r.budget,
                pinned: r.pinned_bytes,
            })),
        }
    }

    /// One eviction pass: if usage (plus reservations and `need`) is past the
    /// high watermark, removes least recently read unpinned blobs until it
    /// is under the low one.
    fn pass(&self, need: u64) -> Result<EvictReport, CacheError> {
        let mut pass = self.evictor.begin_pass();
        self.evictor.flush_touches(&self.meta)?;
        // Streamed: a list of the parsed records only, not of the raw
        // ones too (half the peak on a large cache).
        let mut blobs = Vec::new();
        self.meta.each_blob(&mut |k, r| {
            if let (Ok(d), Ok(r)) = (k.parse(), r) {
                blobs.push((d, r));
            }
        })?;
        let pins = self.pins()?;
        let mut pinned = if pins.is_empty() {
            Default::default()
        } else {
            Inventory::load(&self.meta, &self.store)?.pinned(&pins)
        };
        pinned.extend(self.leases.lock().keys().cloned());
        let (available, _) = self.store.disk_space()?;
        for (d, rec) in pass.choose(blobs, &pinned, available, need) {
            match pass.verdict(&d, &rec) {
                Verdict::Stop => break,
                Verdict::Skip => continue,
                Verdict::Remove => {
                    self.delete(&d)?;
                    pass.evicted(rec.size);
                }
            }
        }
        Ok(pass.finish())
    }

    /// An eviction pass now (if over the high mark), then the references
    /// to what was evicted.
    pub fn evict(&self) -> Result<EvictReport, CacheError> {
        let r = self.pass(0)?;
        self.prune_evicted()?;
        Ok(r)
    }

    /// Drops links and tags that point at evicted content, if anything was
    /// evicted since the last time, so months of churn do not grow the
    /// metadata. A link to an evicted blob would only cost a refetch, never
    /// a wrong answer. Scans links and tags.
    fn prune_evicted(&self) -> Result<(), CacheError> {
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

    /// One round of background upkeep: a pass when one was asked for
    /// (`woken`) or the disk filled up meanwhile; otherwise recorded reads
    /// written to the metadata and references left by passes that fills
    /// started pruned.
    pub fn upkeep(&self, woken: bool) -> Result<(), CacheError> {
        if woken || self.evictor.needs_pass(&self.store)? {
            self.evict().map(|_| ())
        } else {
            self.evictor.flush_touches(&self.meta)?;
            self.prune_evicted()
        }
    }

    /// Runs [`upkeep`](Self::upkeep) until the returned task is aborted: when
    /// a commit passes the high watermark or a fill hit a full disk, and
    /// every minute.
    pub fn spawn_upkeep(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let cache = self.clone();
        tokio::spawn(async move {
            loop {
                let woken = tokio::select! {
                    _ = cache.evictor.wanted() => true,
                    _ = tokio::time::sleep(Duration::from_secs(60)) => false,
                };
                let c = cache.clone();
                match tokio::task::spawn_blocking(move || c.upkeep(woken)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "eviction pass failed"),
                    Err(e) => tracing::warn!(error = %e, "eviction pass panicked"),
                }
            }
        })
    }

    /// Writes recorded reads to the metadata and makes it durable (shutdown).
    pub fn flush(&self) -> Result<(), CacheError> {
        self.evictor.flush_touches(&self.meta)?;
        self.meta.flush()
    }

    /// Reconciles files and metadata, drops references to missing content,
    /// optionally re-hashes every blob, then evicts if over the high mark.
    /// `live`: a server is using the cache.
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
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::cache::{BlobRecord, CacheSettings, Limits, Metadata};
    use crate::registry::Digest;

    fn cache(max: u64, high: f64, low: f64) -> (tempfile::TempDir, Cache) {
        let dir = tempfile::tempdir().unwrap();
        let settings = CacheSettings {
            limits: Limits {
                max_size: Some(max),
                high,
                low,
            },
            ..Default::default()
        };
        let (c, _) =
            Cache::open(dir.path(), Metadata::in_memory(), &settings, Arc::default()).unwrap();
        (dir, c)
    }

    fn put(c: &Cache, body: &[u8], at: u64) -> Digest {
        let d = Digest::sha256_of(body);
        c.store.put_verified(&d, body).unwrap();
        c.committed(&d, &BlobRecord::blob(body.len() as u64, at))
            .unwrap();
        d
    }

    #[test]
    fn least_recently_read_go_first_down_to_the_low_mark() {
        let (_dir, c) = cache(1000, 0.9, 0.5);
        let a = put(&c, &[b'a'; 300], 1);
        let b = put(&c, &[b'b'; 300], 2);
        let cc = put(&c, &[b'c'; 300], 3);
        // Under the high mark (900): nothing happens.
        let r = c.pass(0).unwrap();
        assert_eq!((r.usage_before, r.evicted_blobs), (900, 0));
        // `a` was read last: `b` is the oldest now.
        c.evictor.touch(&a, 10);
        let d = put(&c, &[b'd'; 100], 4);
        let r = c.pass(0).unwrap();
        assert_eq!(r.usage_before, 1000);
        // Down to 500: b and c go (600 bytes), a and d stay.
        assert_eq!(r.evicted_blobs, 2);
        assert_eq!(r.usage_after, 400);
        assert_eq!(c.bytes(), 400);
        assert!(c.store.contains(&a) && c.store.contains(&d));
        for gone in [&b, &cc] {
            assert!(!c.store.contains(gone) && c.meta.get_blob(gone).unwrap().is_none());
        }
        assert_eq!(c.meta.get_blob(&a).unwrap().unwrap().last_access, 10);
    }

    #[test]
    fn pinned_content_is_never_a_victim() {
        let (_dir, c) = cache(1000, 0.5, 0.1);
        let a = put(&c, &[b'a'; 300], 1);
        let b = put(&c, &[b'b'; 300], 2);
        let mut pass = c.evictor.begin_pass();
        let blobs = c
            .meta
            .blobs()
            .unwrap()
            .into_iter()
            .map(|(k, r)| (k.parse().unwrap(), r.unwrap()))
            .collect();
        let pinned: HashSet<Digest> = [a.clone()].into();
        let victims = pass.choose(blobs, &pinned, u64::MAX, 0);
        assert_eq!(victims.iter().map(|(d, _)| d).collect::<Vec<_>>(), vec![&b]);
        // Chosen, not removed: the pass deletes nothing itself.
        drop(pass);
        assert!(c.store.contains(&a) && c.store.contains(&b));
        assert_eq!(c.bytes(), 600, "an unfinished pass restores usage");
    }

    #[test]
    fn an_open_blob_stays_readable_after_eviction() {
        use std::io::Read;
        let (_dir, c) = cache(100, 0.5, 0.1);
        let a = put(&c, &[b'a'; 80], 1);
        let (mut f, _) = c.open_blob(&a).unwrap().unwrap();
        // Read just now, but before the pass's scan: still the oldest.
        c.evictor.flush_touches(&c.meta).unwrap();
        let r = c.pass(0).unwrap();
        assert_eq!(r.evicted_blobs, 1);
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).unwrap();
        assert_eq!(buf, vec![b'a'; 80]);
    }

    #[test]
    fn reservations_make_room_or_refuse() {
        let (_dir, c) = cache(1000, 0.9, 0.8);
        let a = put(&c, &[b'a'; 500], 1);
        {
            let _r = c.reserve(400).unwrap();
            assert!(c.store.contains(&a), "500 + 400 fits in 1000");
            // A second fill of 400 does not fit beside the first: `a` goes.
            let _r2 = c.reserve(400).unwrap();
            assert!(!c.store.contains(&a));
            // Nothing left to evict.
            assert!(matches!(c.reserve(400), Err(CacheError::NoRoom(_))));
        }
        assert!(
            c.evictor.fits(1000, u64::MAX).unwrap(),
            "reservations given back"
        );
    }
}
