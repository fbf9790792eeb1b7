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
//! - **Victims, not deletions.** A [`Pass`] chooses what goes; the cache
//!   removes it (pingora-cache's eviction manager returns keys and the caller
//!   deletes), so deletion lives in one place.
//! - **Safety.** Only committed blobs (with a record) are candidates, so
//!   fills in progress are never touched. A removed file stays readable by
//!   readers that have it open (Unix unlink semantics): eviction never breaks
//!   a transfer. The record goes before the file, so a crash in between
//!   leaves a lone file that start-up reconciliation removes. Pinned images'
//!   content is never a candidate. Blobs are content-addressed: a layer shared
//!   by many images is one file, counted once.
//! - **Room for fills.** A fill reserves room in steps as its bytes arrive
//!   ([`Evictor::fits`], [`Evictor::try_claim`], `Cache::fill_room`): a blob
//!   announced larger than the budget is refused before any byte is written;
//!   a lying or missing `Content-Length` can make eviction remove no more
//!   than the bytes actually received plus one step, and a fill that outgrows
//!   what eviction can free fails with [`NoRoom`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::registry::Digest;

use super::meta::{BlobRecord, Metadata};
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
    /// The last pass that evicted something: when (unix ms) and its report.
    last: Mutex<Option<(u64, EvictReport)>>,
    metrics: Arc<Metrics>,
}

/// One eviction pass, from [`Evictor::begin_pass`]: it chooses the victims,
/// least recently read first, and the caller (the cache, which alone deletes
/// content) removes them. Dropped without [`Pass::finish`], usage is restored
/// as it was before the pass.
pub struct Pass<'a> {
    evictor: &'a Evictor,
    _one: parking_lot::MutexGuard<'a, ()>,
    before: u64,
    started: Instant,
    report: EvictReport,
    current: u64,
    target: u64,
    finished: bool,
}

/// What to do with the next candidate of a pass.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Remove,
    /// Read since the scan: no longer the least recent.
    Skip,
    /// Usage is down to the low mark.
    Stop,
}

impl Pass<'_> {
    /// Given every committed blob, the pinned ones, the disk's free space
    /// and the room a fill needs, returns the candidates in the order they
    /// should go (least recently read first, pinned ones never), or none when
    /// usage is under the high mark.
    pub fn choose(
        &mut self,
        mut blobs: Vec<(Digest, BlobRecord)>,
        pinned: &HashSet<Digest>,
        available: u64,
        need: u64,
    ) -> Vec<(Digest, BlobRecord)> {
        let e = self.evictor;
        let usage: u64 = blobs.iter().map(|(_, r)| r.size).sum();
        let budget = e.budget(usage, available);
        let high = (budget as f64 * e.limits.high) as u64;
        let low = (budget as f64 * e.limits.low) as u64;
        let reserved = e.reserved.load(Ordering::Relaxed);
        self.report = EvictReport {
            blobs: blobs.len() as u64,
            usage_before: usage,
            usage_after: usage,
            budget,
            high,
            low,
            pinned_bytes: blobs
                .iter()
                .filter(|(d, _)| pinned.contains(d))
                .map(|(_, r)| r.size)
                .sum(),
            ..Default::default()
        };
        e.metrics
            .cache_pinned_size
            .set(self.report.pinned_bytes as i64);
        self.current = usage;
        if usage + reserved + need <= high {
            return Vec::new();
        }
        self.target = low.saturating_sub(reserved + need);
        blobs.retain(|(d, _)| !pinned.contains(d));
        blobs.sort_by_key(|(_, r)| r.last_access);
        e.metrics.eviction_runs.inc();
        blobs
    }

    /// Whether the next candidate goes.
    pub fn verdict(&self, d: &Digest, rec: &BlobRecord) -> Verdict {
        if self.current <= self.target {
            return Verdict::Stop;
        }
        let read_since = self
            .evictor
            .recent
            .lock()
            .get(d)
            .is_some_and(|&t| t > rec.last_access);
        if read_since {
            Verdict::Skip
        } else {
            Verdict::Remove
        }
    }

    /// The caller removed a candidate of `size` bytes.
    pub fn evicted(&mut self, size: u64) {
        self.current = self.current.saturating_sub(size);
        self.report.evicted_blobs += 1;
        self.report.evicted_bytes += size;
    }

    /// Counts the pass: usage, metrics, the log line.
    pub fn finish(mut self) -> EvictReport {
        self.finished = true;
        let e = self.evictor;
        let mut report = std::mem::take(&mut self.report);
        e.unpruned
            .fetch_add(report.evicted_blobs, Ordering::Relaxed);
        e.metrics.evicted_blobs.inc_by(report.evicted_blobs);
        e.metrics.evicted_bytes.inc_by(report.evicted_bytes);
        report.usage_after = self.current;
        let now = e.usage.fetch_add(self.current, Ordering::Relaxed) + self.current;
        e.metrics.cache_size.set(now as i64);
        e.metrics
            .cache_blobs
            .set(report.blobs as i64 - report.evicted_blobs as i64);
        report.ms = self.started.elapsed().as_millis() as u64;
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
            *e.last.lock() = Some((super::meta::now_millis(), report.clone()));
        }
        report
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.evictor.usage.fetch_add(self.before, Ordering::Relaxed);
        }
        crate::memory::release_scratch_memory();
    }
}

/// A fill's claim on disk space, given back when the fill ends.
pub struct Reservation<'a> {
    evictor: &'a Evictor,
    bytes: u64,
}

impl Reservation<'_> {
    /// Bytes claimed.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Takes over another claim of the same evictor (a fill's next step).
    pub fn absorb(&mut self, mut other: Reservation<'_>) {
        debug_assert!(std::ptr::eq(self.evictor, other.evictor));
        self.bytes += std::mem::take(&mut other.bytes);
    }
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
            last: Mutex::new(None),
            metrics,
        }
    }

    /// The last pass that evicted something: when (unix ms) and its report.
    pub fn last_eviction(&self) -> Option<(u64, EvictReport)> {
        self.last.lock().clone()
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

    /// A blob was committed: count it, and say whether the high watermark
    /// is passed (a background pass is wanted).
    /// The caller wakes the pass when this says one is wanted, once a
    /// fill's reservation is released: a pass woken while the committed
    /// blob still holds its room counts it twice and evicts a blob too many.
    pub fn count(&self, size: u64) -> bool {
        let usage = self.usage.fetch_add(size, Ordering::Relaxed) + size;
        self.metrics.cache_size.set(usage as i64);
        self.limits
            .max_size
            .is_some_and(|max| usage as f64 > max as f64 * self.limits.high)
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

    /// Whether `need` more bytes fit now beside usage and reservations, or
    /// can never fit (more than the whole disk could give even with the
    /// cache emptied). Cheap: the caller passes one statvfs's free space.
    pub fn fits(&self, need: u64, available: u64) -> Result<bool, NoRoom> {
        self.fits_with(self.reserved.load(Ordering::Relaxed), need, available)
    }

    /// [`fits`](Self::fits) and the claim as one step: the
    /// check holds for the reservations it counted, so concurrent fills
    /// cannot each see the same room free and together overshoot the
    /// budget. `Ok(None)`: it does not fit now (a pass may make room).
    pub fn try_claim(&self, need: u64, available: u64) -> Result<Option<Reservation<'_>>, NoRoom> {
        let mut reserved = self.reserved.load(Ordering::Relaxed);
        loop {
            if !self.fits_with(reserved, need, available)? {
                return Ok(None);
            }
            match self.reserved.compare_exchange_weak(
                reserved,
                reserved + need,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Ok(Some(Reservation {
                        evictor: self,
                        bytes: need,
                    }))
                }
                Err(now) => reserved = now,
            }
        }
    }

    fn fits_with(&self, reserved: u64, need: u64, available: u64) -> Result<bool, NoRoom> {
        let ceiling = self.budget(self.usage(), available);
        if need.saturating_add(reserved) > ceiling {
            return Err(NoRoom {
                need,
                available,
                budget: ceiling,
                pinned: 0,
            });
        }
        let within_max = self
            .limits
            .max_size
            .is_none_or(|max| self.usage() + reserved + need <= max);
        Ok(within_max && available >= reserved + need)
    }

    /// Starts an eviction pass (one at a time: waits for a running one).
    /// The pass chooses victims; the caller removes them and reports each
    /// back with [`Pass::evicted`]. Blocking.
    pub fn begin_pass(&self) -> Pass<'_> {
        let one = self.pass.lock();
        // Commits from here on are counted on top of the scan (at worst twice,
        // which only evicts a little early; the next pass recounts).
        let before = self.usage.swap(0, Ordering::Relaxed);
        Pass {
            evictor: self,
            _one: one,
            before,
            started: Instant::now(),
            report: EvictReport::default(),
            current: 0,
            target: 0,
            finished: false,
        }
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

    /// Fills on many threads, each claiming room a step at a time and
    /// keeping it: together they never hold more than the budget (a check
    /// and a claim in two steps let each see the same room free).
    #[test]
    fn concurrent_claims_never_overshoot_the_budget() {
        let budget = 10_000u64;
        let e = Evictor::new(
            Limits {
                max_size: Some(budget),
                high: 0.9,
                low: 0.8,
            },
            Arc::new(Metrics::new()),
        );
        let held: u64 = std::thread::scope(|s| {
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        let mut mine = Vec::new();
                        for _ in 0..2_000 {
                            if let Ok(Some(r)) = e.try_claim(7, u64::MAX / 2) {
                                mine.push(r);
                            }
                        }
                        let n = mine.iter().map(Reservation::bytes).sum::<u64>();
                        std::mem::forget(mine);
                        n
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).sum()
        });
        assert!(held <= budget, "{held} bytes claimed of {budget}");
        assert_eq!(held, budget - budget % 7, "every step that fits is given");
        assert_eq!(e.reserved.load(Ordering::Relaxed), held);
    }
}
