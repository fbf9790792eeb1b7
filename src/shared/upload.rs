//! Uploads: a blob this node fetched and verified goes to the tier in the
//! background, read from its cache file, without delaying any client. A
//! small blob is one create-only write; a larger one a multipart upload of
//! [`PART_SIZE`] parts (whose completion overwrites: harmless, the bytes
//! are the same). Memory is bounded across all uploads by `upload_memory`
//! (each part in flight holds one permit of `PART_SIZE`); at most
//! `max_uploads` run at once, and at most [`MAX_PENDING_UPLOADS`] wait or
//! run (more are skipped, counted as `skipped`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use object_store::{ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload};

use crate::registry::Digest;

use super::{Lease, Tier, TierError, PART_SIZE, PART_TIMEOUT};

/// Parts of one upload in flight at once.
const PARTS_PER_UPLOAD: usize = 2;
/// Uploads queued or running at most (each holds a cache file open).
pub const MAX_PENDING_UPLOADS: usize = 256;

impl Tier {
    /// Uploads the verified blob `d` (its cache file, `size` bytes) unless
    /// the tier has it already, then releases `lease`. Returns at once.
    pub fn upload(
        &self,
        d: Digest,
        file: File,
        size: u64,
        lease: Option<(Lease, crate::cache::FillReaders)>,
    ) {
        if !self.inner.settings.write {
            return;
        }
        let this = self.clone();
        let m = &self.inner.metrics;
        // Each queued upload holds its cache file open: past the queue's
        // bound, this node does not upload (another node, or a later miss,
        // will), and its lease goes at once.
        let Some(queued) = self.queue_slot() else {
            tracing::debug!(digest = %d, "shared tier: upload queue full; not uploading");
            if let Some((l, _)) = lease {
                tokio::spawn(l.release());
            }
            return;
        };
        m.uploads_in_flight.inc();
        tokio::spawn(async move {
            // With peers, the leader serves its fill's first readers (its
            // clients, and the nodes following it) before it uploads, at
            // most lease_ttl longer: the upload would compete with them for
            // disk, CPU and network, and nobody needs the tier's copy
            // meanwhile (a node that misses follows this node's lease).
            let (lease, readers) = match lease {
                Some((l, r)) => (Some(l), Some(r)),
                None => (None, None),
            };
            if let Some(r) = readers.filter(|_| this.inner.peers.is_some()) {
                let until = Instant::now() + this.inner.settings.lease_ttl;
                while r.active() > 0 && Instant::now() < until {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
            let started = Instant::now();
            let result = this.upload_now(&d, Arc::new(file), size).await;
            let m = &this.inner.metrics;
            drop(queued);
            m.uploads_in_flight.dec();
            match &result {
                Ok(done) => {
                    m.uploads.with_label_values(&[done]).inc();
                    tracing::debug!(digest = %d, size, result = done,
                        ms = started.elapsed().as_millis() as u64, "shared tier upload");
                }
                Err(e) => {
                    m.uploads.with_label_values(&["failed"]).inc();
                    tracing::warn!(digest = %d, size, error = %e,
                        "shared tier: upload failed (other nodes fetch the blob themselves)");
                }
            }
            if let Some(l) = lease {
                l.release().await;
            }
        });
    }

    async fn upload_now(
        &self,
        d: &Digest,
        file: Arc<File>,
        size: u64,
    ) -> Result<&'static str, TierError> {
        // A slot within one lease lifetime, or none: the upload is skipped
        // (its lease released, so waiting nodes go on by themselves). An
        // unbounded queue held each waiting upload's cache file open and
        // its lease renewed, so other nodes waited on it up to max_wait.
        let slot = tokio::time::timeout(
            self.inner.settings.lease_ttl,
            self.inner.uploads.clone().acquire_owned(),
        )
        .await;
        let Ok(slot) = slot else {
            return Ok("skipped");
        };
        let _slot = slot.expect("never closed");
        let key = self.blob_key(d);
        let replace = self.replaces_bad_copy(d);
        if !replace {
            // Not gated by the tier's set-aside (as lookups are): an upload
            // delays no client, and a leader's upload refused because some
            // other request failed lately made the fleet fetch the blob
            // again.
            let limit = self.inner.settings.request_timeout;
            match self
                .call_anyway("head", limit, self.inner.store.head(&key))
                .await
            {
                Ok(_) => return Ok("present"),
                Err(TierError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        let written = self.inner.metrics.bytes.with_label_values(&["written"]);
        if size <= PART_SIZE {
            let _mem = self.part_permit().await;
            let bytes = read_part(&file, 0, size).await?;
            let mode = if replace {
                PutMode::Overwrite
            } else {
                self.create_mode()
            };
            let put = self.inner.store.put_opts(
                &key,
                PutPayload::from(bytes),
                PutOptions {
                    mode,
                    ..Default::default()
                },
            );
            let timer = self
                .inner
                .metrics
                .latency
                .with_label_values(&["put"])
                .start_timer();
            let r = tokio::time::timeout(PART_TIMEOUT, put).await;
            timer.observe_duration();
            return match r {
                Ok(Ok(_)) => {
                    written.inc_by(size);
                    self.done_replacing(d, replace);
                    Ok("done")
                }
                Ok(Err(object_store::Error::AlreadyExists { .. }))
                | Ok(Err(object_store::Error::Precondition { .. })) => Ok("present"),
                Ok(Err(e)) => Err(self.upload_failed("put", TierError::Store(super::describe(&e)))),
                Err(_) => Err(self.upload_failed("put", TierError::Timeout(PART_TIMEOUT))),
            };
        }
        let mut upload = self
            .call_anyway(
                "put",
                self.inner.settings.request_timeout,
                self.inner
                    .store
                    .put_multipart_opts(&key, PutMultipartOptions::default()),
            )
            .await?;
        let mut running = tokio::task::JoinSet::new();
        let mut offset = 0;
        let mut failure: Option<TierError> = None;
        while offset < size && failure.is_none() {
            while running.len() >= PARTS_PER_UPLOAD {
                if let Some(Ok(Err(e))) = running.join_next().await {
                    failure = Some(e);
                }
            }
            if failure.is_some() {
                break;
            }
            let len = PART_SIZE.min(size - offset);
            let mem = self.part_permit().await;
            let bytes = match read_part(&file, offset, len).await {
                Ok(b) => b,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let part = upload.put_part(PutPayload::from(bytes));
            let timer = self
                .inner
                .metrics
                .latency
                .with_label_values(&["part"])
                .start_timer();
            let written = written.clone();
            running.spawn(async move {
                let r = tokio::time::timeout(PART_TIMEOUT, part).await;
                timer.observe_duration();
                drop(mem);
                match r {
                    Ok(Ok(())) => {
                        written.inc_by(len);
                        Ok(())
                    }
                    Ok(Err(e)) => Err(TierError::Store(super::describe(&e))),
                    Err(_) => Err(TierError::Timeout(PART_TIMEOUT)),
                }
            });
            offset += len;
        }
        while let Some(r) = running.join_next().await {
            if let Ok(Err(e)) = r {
                failure.get_or_insert(e);
            }
        }
        if let Some(e) = failure {
            let _ = tokio::time::timeout(self.inner.settings.request_timeout, upload.abort()).await;
            return Err(self.upload_failed("part", e));
        }
        let timer = self
            .inner
            .metrics
            .latency
            .with_label_values(&["complete"])
            .start_timer();
        let r = tokio::time::timeout(PART_TIMEOUT, upload.complete()).await;
        timer.observe_duration();
        match r {
            Ok(Ok(_)) => {
                self.done_replacing(d, replace);
                Ok("done")
            }
            Ok(Err(e)) => {
                Err(self.upload_failed("complete", TierError::Store(super::describe(&e))))
            }
            Err(_) => Err(self.upload_failed("complete", TierError::Timeout(PART_TIMEOUT))),
        }
    }

    fn upload_failed(&self, op: &'static str, e: TierError) -> TierError {
        self.failed(op, &e);
        e
    }

    fn done_replacing(&self, d: &Digest, replaced: bool) {
        self.succeeded();
        if replaced {
            self.inner.bad.invalidate(d);
            tracing::info!(digest = %d, "shared tier: a corrupt copy was replaced with verified bytes");
        }
    }

    async fn part_permit(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.inner
            .part_memory
            .clone()
            .acquire_owned()
            .await
            .expect("never closed")
    }
}

/// `len` bytes of the cache file from `offset`, read on a blocking thread
/// into a buffer of its own mapping (see [`PartBuffer`]).
async fn read_part(file: &Arc<File>, offset: u64, len: u64) -> Result<Bytes, TierError> {
    let file = file.clone();
    tokio::task::spawn_blocking(move || {
        let mut buf = PartBuffer::new(len as usize)?;
        file.read_exact_at(buf.as_mut(), offset)?;
        Ok::<_, std::io::Error>(Bytes::from_owner(buf))
    })
    .await
    .expect("a read does not panic")
    .map_err(|e| TierError::Store(format!("reading the cache file: {e}")))
}

/// A part's bytes in an anonymous mapping of their own, unmapped when the
/// last reference goes. From the heap, a 5 MiB buffer freed on one thread
/// stays in that thread's malloc arena (glibc raises its mmap threshold
/// after the first such free): ten uploads left ~50 MiB resident for good.
struct PartBuffer {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone; no other pointer to it
// exists, so moving it to or sharing it with another thread is sound.
unsafe impl Send for PartBuffer {}
unsafe impl Sync for PartBuffer {}

impl PartBuffer {
    fn new(len: usize) -> std::io::Result<PartBuffer> {
        let len = len.max(1);
        // SAFETY: a private anonymous mapping of `len` bytes; the result is
        // checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(p.cast()).expect("mmap never maps address 0");
        Ok(PartBuffer { ptr, len })
    }
}

impl AsRef<[u8]> for PartBuffer {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for the life of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl AsMut<[u8]> for PartBuffer {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, writable, and `&mut self` makes this the only
        // reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PartBuffer {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, once.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use object_store::memory::InMemory;

    #[test]
    fn part_buffers_hold_what_was_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let part = rt.block_on(read_part(&file, 1_000_000, 1_500_000)).unwrap();
        assert_eq!(&part[..], &data[1_000_000..2_500_000]);
        let clone = part.slice(10..20);
        drop(part);
        assert_eq!(&clone[..], &data[1_000_010..1_000_020]);
        assert!(
            rt.block_on(read_part(&file, 2_900_000, 200_000)).is_err(),
            "past the end"
        );
    }

    /// An upload goes on while the tier is set aside after some other
    /// request failed (it once failed at once: the leader's lease was
    /// released and the fleet fetched the blob again).
    #[tokio::test(start_paused = true)]
    async fn an_upload_goes_on_while_the_tier_is_set_aside() {
        let store = Arc::new(InMemory::new());
        let settings = crate::shared::testing::settings();
        let t = Tier::with_store(store.clone(), &settings, &prometheus::Registry::new());
        t.failed(
            "get",
            &crate::shared::TierError::Timeout(Duration::from_secs(5)),
        );
        let bytes = b"a small layer";
        let file = crate::shared::testing::blob_file(bytes);
        let d = Digest::sha256_of(bytes);
        t.upload(d.clone(), file, bytes.len() as u64, None);
        let m = &t.inner.metrics;
        crate::shared::testing::uploads_settled(&t).await;
        assert_eq!(m.uploads.with_label_values(&["done"]).get(), 1);
        assert_eq!(
            store.head(&t.blob_key(&d)).await.unwrap().size,
            bytes.len() as u64
        );
    }

    /// With every upload slot taken, a new upload once waited for one for
    /// ever, holding its cache file open (and its lease renewed, so other
    /// nodes waited on it up to max_wait): a flood of distinct blobs piled
    /// up without bound. Now it waits one lease lifetime, then is skipped.
    #[tokio::test(start_paused = true)]
    async fn an_upload_that_gets_no_slot_within_a_lease_lifetime_is_skipped() {
        let store = Arc::new(InMemory::new());
        let mut settings = crate::shared::testing::settings();
        settings.max_uploads = 1;
        let t = Tier::with_store(store.clone(), &settings, &prometheus::Registry::new());
        let busy = t.inner.uploads.clone().acquire_owned().await.unwrap();
        let bytes = b"a small layer";
        let file = crate::shared::testing::blob_file(bytes);
        let d = Digest::sha256_of(bytes);
        t.upload(d.clone(), file, bytes.len() as u64, None);
        let m = &t.inner.metrics;
        tokio::time::sleep(settings.lease_ttl + Duration::from_secs(1)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(m.uploads.with_label_values(&["skipped"]).get(), 1);
        assert_eq!(m.uploads_in_flight.get(), 0);
        assert!(store.head(&t.blob_key(&d)).await.is_err());
        // With a slot free, the next one goes up.
        drop(busy);
        let file = crate::shared::testing::blob_file(bytes);
        t.upload(d.clone(), file, bytes.len() as u64, None);
        let mut waited = 0;
        while m.uploads.with_label_values(&["done"]).get() == 0 {
            assert!(waited < 1000, "the upload did not finish");
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += 1;
        }
        assert_eq!(
            store.head(&t.blob_key(&d)).await.unwrap().size,
            bytes.len() as u64
        );
    }
}
