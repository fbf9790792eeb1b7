//! Size-bounded LRU eviction: the component that keeps the cache inside its
//! disk budget.
//!
//! - **Budget.** `max_size`, further capped by what the filesystem has (usage
//!   plus free space), so a disk filled by something else also makes wharf
//!   give room. Past the high watermark, blobs are removed, least recently
//!   read first, until usage is under the low watermark.
//! - **Access order.** Reads are recorded in memory ([`Evictor::touch`], one
//!   map insert) and written to the metadata in batches, so a hot blob does not
//!   cost a metadata write per request and the order is exact to the
//!   millisecond while the server runs (persisted order survives restarts).
//! - **Safety.** Only committed blobs (with a record) are candidates, so
//!   fills in progress are never touched. A removed file stays readable by
//!   readers that have it open (Unix unlink semantics): eviction never breaks
//!   a transfer. The record goes before the file, so a crash in between
//!   leaves a lone file that start-up reconciliation removes. Pinned images'
//!   content is never a candidate. Blobs are content-addressed: a layer shared
//!   by many images is one file, counted once.
//! - **Room for fills.** A fill whose size is known reserves it first
//!   ([`Evictor::reserve`]); if the disk cannot take it even after eviction
//!   the client gets a clear error before any byte is written.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::registry::Digest;

use super::inventory::Inventory;
use super::meta::{BlobRecord, Metadata};
use super::pins::Pin;
use super::store::BlobStore;
use super::CacheError;

#[derive(Clone, Debug)]
pub struct Limits {
    /// `None`: the filesystem's size.
    pub max_size: Option<u64>,
    /// Fractions of the budget.
    pub high: f64,
    pub low: f64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct EvictReport {
    pub blobs: u64,
    pub usage_before: u64,
    pub usage_after: u64,
    /// The budget this pass worked with: `max_size` capped by the disk.
    pub budget: u64,
    pub high: u64,
    pub low: u64,
    pub pinned_bytes: u64,
    pub evicted_blobs: u64,
    pub evicted_bytes: u64,
    pub ms: u64,
}

pub struct Evictor {
    limits: Limits,
    /// Bytes of committed blobs, as of the last pass plus commits since.
    usage: AtomicU64,
    /// Bytes promised to fills in progress.
    reserved: AtomicU64,
    /// Reads not yet written to the metadata: digest -> unix ms.
    recent: Mutex<HashMap<Digest, u64>>,
    /// One pass at a time.
    pass: Mutex<()>,
    wake: Notify,
    /// Blobs evicted since links and tags were last pruned.
    unpruned: AtomicU64,
    metrics: Arc<Metrics>,
}

/// A fill's claim on disk space, given back when the fill ends.
pub struct Reservation<'a> {
    evictor: &'a Evictor,
    bytes: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.evictor
            .reserved
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the cache disk cannot take {need} bytes: {available} bytes free after evicting what could be evicted (budget {budget} bytes, {pinned} of them pinned)")]
pub struct NoRoom {
    pub need: u64,
    pub available: u64,
    pub budget: u64,
    pub pinned: u64,
}

impl Evictor {
    pub fn new(limits: Limits, metrics: Arc<Metrics>) -> Evictor {
        Evictor {
            limits,
            usage: AtomicU64::new(0),
            reserved: AtomicU64::new(0),
            recent: Mutex::new(HashMap::new()),
            pass: Mutex::new(()),
            wake: Notify::new(),
            unpruned: AtomicU64::new(0),
            metrics,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn usage(&self) -> u64 {
        self.usage.load(Ordering::Relaxed)
    }

    /// Sets usage from a full count (start-up).
    pub fn set_usage(&self, bytes: u64) {
        self.usage.store(bytes, Ordering::Relaxed);
        self.metrics.cache_size.set(bytes as i64);
    }

    /// Records a read of `d` now.
    pub fn touch(&self, d: &Digest, now_ms: u64) {
        let mut r = self.recent.lock();
        match r.get_mut(d) {
            Some(t) => *t = (*t).max(now_ms),
            None => {
                r.insert(d.clone(), now_ms);
            }
        }
    }

    /// A blob was committed: count it, and wake the background pass if the
    /// high watermark is passed.
    pub fn added(&self, size: u64) {
        let usage = self.usage.fetch_add(size, Ordering::Relaxed) + size;
        self.metrics.cache_size.set(usage as i64);
        if let Some(max) = self.limits.max_size {
            if usage as f64 > max as f64 * self.limits.high {
                self.wake.notify_one();
            }
        }
    }

    /// Wakes the background pass (after ENOSPC, for instance).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits until a pass is wanted.
    pub async fn wanted(&self) {
        self.wake.notified().await
    }

    /// What the cache may hold: `max_size`, but never more than it holds now
    /// plus what the filesystem has free.
    fn budget(&self, usage: u64, available: u64) -> u64 {
        self.limits
            .max_size
            .unwrap_or(u64::MAX)
            .min(usage.saturating_add(available))
    }

    /// Whether usage (as counted since the last pass) is past the high mark
    /// of the budget as the disk stands now: cheap (one statvfs), so the
    /// periodic check does not scan the metadata of a large cache for nothing.
    pub fn needs_pass(&self, store: &BlobStore) -> Result<bool, CacheError> {
        let (available, _) = store.disk_space()?;
        let usage = self.usage();
        let budget = self.budget(usage, available);
        let reserved = self.reserved.load(Ordering::Relaxed);
        Ok((usage + reserved) as f64 > budget as f64 * self.limits.high)
    }

    /// Writes the recorded reads to the metadata.
    pub fn flush_touches(&self, meta: &Metadata) -> Result<usize, CacheError> {
        let batch = std::mem::take(&mut *self.recent.lock());
        for (d, at) in &batch {
            meta.touch(d, *at)?;
        }
        Ok(batch.len())
    }

    /// Claims `need` bytes for a fill, evicting first if the budget or the
    /// disk would not take them. Blocking (file system calls): call from a
    /// blocking thread.
    pub fn reserve(
        &self,
        need: u64,
        store: &BlobStore,
        meta: &Metadata,
        pins: &dyn Fn() -> Result<Vec<Pin>, CacheError>,
        on_remove: &dyn Fn(&Digest),
    ) -> Result<Reservation<'_>, CacheError> {
        // On the path to a cold blob's first byte: one statvfs, and the pins
        // are read only if a pass must run.
        let fits = |s: &Self, available: u64| -> bool {
            let reserved = s.reserved.load(Ordering::Relaxed);
            let within_max = s
                .limits
                .max_size
                .is_none_or(|max| s.usage() + reserved + need <= max);
            within_max && available >= reserved + need
        };
        // More than the whole disk could give even with the cache emptied:
        // refuse without evicting anything for it.
        let (available, _) = store.disk_space()?;
        let reserved = self.reserved.load(Ordering::Relaxed);
        let ceiling = self.budget(self.usage(), available);
        if need.saturating_add(reserved) > ceiling {
            return Err(CacheError::NoRoom(NoRoom {
                need,
                available,
                budget: ceiling,
                pinned: 0,
            }));
        }
        if !fits(self, available) {
            let r = self.run(store, meta, &pins()?, need, on_remove)?;
            let (available, _) = store.disk_space()?;
            if !fits(self, available) {
                return Err(CacheError::NoRoom(NoRoom {
                    need,
                    available,
                    budget: r.budget,
                    pinned: r.pinned_bytes,
                }));
            }
        }
        self.reserved.fetch_add(need, Ordering::Relaxed);
        Ok(Reservation {
            evictor: self,
            bytes: need,
        })
    }

    /// One eviction pass: if usage (plus reservations and `need`) is past the
    /// high watermark, removes least recently read unpinned blobs until it is
    /// under the low one. `on_remove` runs for each removed digest (the hot
    /// manifest layer forgets it). Blocking.
    pub fn run(
        &self,
        store: &BlobStore,
        meta: &Metadata,
        pins: &[Pin],
        need: u64,
        on_remove: &dyn Fn(&Digest),
    ) -> Result<EvictReport, CacheError> {
        let _one = self.pass.lock();
        // Commits from here on are counted on top of the scan (at worst twice,
        // which only evicts a little early; the next pass recounts).
        let before = self.usage.swap(0, Ordering::Relaxed);
        let r = self.run_locked(store, meta, pins, need, on_remove);
        if r.is_err() {
            self.usage.fetch_add(before, Ordering::Relaxed);
        }
        super::release_scratch_memory();
        r
    }

    fn run_locked(
        &self,
        store: &BlobStore,
        meta: &Metadata,
        pins: &[Pin],
        need: u64,
        on_remove: &dyn Fn(&Digest),
    ) -> Result<EvictReport, CacheError> {
        let started = Instant::now();
        self.flush_touches(meta)?;
        let mut blobs: Vec<(Digest, BlobRecord)> = meta
            .blobs()?
            .into_iter()
            .filter_map(|(k, r)| Some((k.parse().ok()?, r.ok()?)))
            .collect();
        let usage: u64 = blobs.iter().map(|(_, r)| r.size).sum();
        let (available, _) = store.disk_space()?;
        let budget = self.budget(usage, available);
        let high = (budget as f64 * self.limits.high) as u64;
        let low = (budget as f64 * self.limits.low) as u64;
        let reserved = self.reserved.load(Ordering::Relaxed);
        let mut report = EvictReport {
            blobs: blobs.len() as u64,
            usage_before: usage,
            usage_after: usage,
            budget,
            high,
            low,
            ..Default::default()
        };
        let pinned = if pins.is_empty() {
            Default::default()
        } else {
            Inventory::load(meta, store)?.pinned(pins)
        };
        report.pinned_bytes = blobs
            .iter()
            .filter(|(d, _)| pinned.contains(d))
            .map(|(_, r)| r.size)
            .sum();
        self.metrics
            .cache_pinned_size
            .set(report.pinned_bytes as i64);
        let mut current = usage;
        if current + reserved + need > high {
            let target = low.saturating_sub(reserved + need);
            blobs.retain(|(d, _)| !pinned.contains(d));
            blobs.sort_by_key(|(_, r)| r.last_access);
            for (d, rec) in blobs {
                if current <= target {
                    break;
                }
                // Read since the scan: no longer the least recent.
                if self
                    .recent
                    .lock()
                    .get(&d)
                    .is_some_and(|&t| t > rec.last_access)
                {
                    continue;
                }
                meta.remove_blob(&d)?;
                store.remove(&d)?;
                on_remove(&d);
                current = current.saturating_sub(rec.size);
                report.evicted_blobs += 1;
                report.evicted_bytes += rec.size;
            }
            self.unpruned
                .fetch_add(report.evicted_blobs, Ordering::Relaxed);
            self.metrics.evicted_blobs.inc_by(report.evicted_blobs);
            self.metrics.evicted_bytes.inc_by(report.evicted_bytes);
            self.metrics.eviction_runs.inc();
        }
        report.usage_after = current;
        let now = self.usage.fetch_add(current, Ordering::Relaxed) + current;
        self.metrics.cache_size.set(now as i64);
        self.metrics
            .cache_blobs
            .set(report.blobs as i64 - report.evicted_blobs as i64);
        report.ms = started.elapsed().as_millis() as u64;
        if report.evicted_blobs > 0 {
            tracing::info!(
                evicted_blobs = report.evicted_blobs,
                evicted_bytes = report.evicted_bytes,
                usage = report.usage_after,
                budget = report.budget,
                pinned_bytes = report.pinned_bytes,
                ms = report.ms,
                "evicted least recently used blobs"
            );
        }
        Ok(report)
    }

    /// Blobs evicted since the last call: links and tags may point at them.
    pub fn take_unpruned(&self) -> u64 {
        self.unpruned.swap(0, Ordering::Relaxed)
    }

    /// Forgets a blob removed by other means (`wharf rm`).
    pub fn removed(&self, size: u64) {
        let _ = self
            .usage
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(size))
            });
        self.metrics.cache_size.set(self.usage() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(store: &BlobStore, meta: &Metadata, body: &[u8], at: u64) -> Digest {
        let d = Digest::sha256_of(body);
        store.put_verified(&d, body).unwrap();
        meta.put_blob(&d, &BlobRecord::blob(body.len() as u64, at))
            .unwrap();
        d
    }

    #[test]
    fn least_recently_read_go_first_down_to_the_low_mark() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let meta = Metadata::in_memory();
        let e = Evictor::new(
            Limits {
                max_size: Some(1000),
                high: 0.9,
                low: 0.5,
            },
            Arc::default(),
        );
        let a = put(&store, &meta, &[b'a'; 300], 1);
        let b = put(&store, &meta, &[b'b'; 300], 2);
        let c = put(&store, &meta, &[b'c'; 300], 3);
        // Under the high mark (900): nothing happens.
        let r = e.run(&store, &meta, &[], 0, &|_| {}).unwrap();
        assert_eq!((r.usage_before, r.evicted_blobs), (900, 0));
        // `a` was read last: `b` is the oldest now.
        e.touch(&a, 10);
        let d = put(&store, &meta, &[b'd'; 100], 4);
        let removed = Mutex::new(Vec::new());
        let r = e
            .run(&store, &meta, &[], 0, &|d| removed.lock().push(d.clone()))
            .unwrap();
        assert_eq!(r.usage_before, 1000);
        // Down to 500: b and c go (600 bytes), a and d stay.
        assert_eq!(*removed.lock(), vec![b.clone(), c.clone()]);
        assert_eq!(r.usage_after, 400);
        assert_eq!(e.usage(), 400);
        assert!(store.contains(&a) && store.contains(&d));
        assert!(!store.contains(&b) && meta.get_blob(&b).unwrap().is_none());
        assert_eq!(meta.get_blob(&a).unwrap().unwrap().last_access, 10);
    }

    #[test]
    fn an_open_blob_stays_readable_after_eviction() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let meta = Metadata::in_memory();
        let e = Evictor::new(
            Limits {
                max_size: Some(100),
                high: 0.5,
                low: 0.1,
            },
            Arc::default(),
        );
        let a = put(&store, &meta, &[b'a'; 80], 1);
        let (mut f, _) = store.open_blob(&a).unwrap().unwrap();
        let r = e.run(&store, &meta, &[], 0, &|_| {}).unwrap();
        assert_eq!(r.evicted_blobs, 1);
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).unwrap();
        assert_eq!(buf, vec![b'a'; 80]);
    }

    #[test]
    fn reservations_make_room_or_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let meta = Metadata::in_memory();
        let e = Evictor::new(
            Limits {
                max_size: Some(1000),
                high: 0.9,
                low: 0.8,
            },
            Arc::default(),
        );
        let a = put(&store, &meta, &[b'a'; 500], 1);
        e.set_usage(500);
        {
            let _r = e
                .reserve(400, &store, &meta, &|| Ok(vec![]), &|_| {})
                .unwrap();
            assert!(store.contains(&a), "500 + 400 fits in 1000");
            // A second fill of 400 does not fit beside the first: `a` goes.
            let _r2 = e
                .reserve(400, &store, &meta, &|| Ok(vec![]), &|_| {})
                .unwrap();
            assert!(!store.contains(&a));
            // Nothing left to evict.
            assert!(matches!(
                e.reserve(400, &store, &meta, &|| Ok(vec![]), &|_| {}),
                Err(CacheError::NoRoom(_))
            ));
        }
        assert_eq!(e.reserved.load(Ordering::Relaxed), 0);
    }
}
