//! Uploads: a blob this node fetched and verified goes to the tier in the
//! background, read from its cache file, without delaying any client. A
//! small blob is one create-only write; a larger one a multipart upload of
//! [`PART_SIZE`] parts (whose completion overwrites: harmless, the bytes
//! are the same). Memory is bounded across all uploads by `upload_memory`
//! (each part in flight holds one permit of `PART_SIZE`); at most
//! `max_uploads` run at once.

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

impl Tier {
    /// Uploads the verified blob `d` (its cache file, `size` bytes) unless
    /// the tier has it already, then releases `lease`. Returns at once.
    pub fn upload(&self, d: Digest, file: File, size: u64, lease: Option<Lease>) {
        if !self.inner.settings.write {
            return;
        }
        let this = self.clone();
        let m = &self.inner.metrics;
        m.uploads_in_flight.inc();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = this.upload_now(&d, Arc::new(file), size).await;
            let m = &this.inner.metrics;
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
        let _slot = self
            .inner
            .uploads
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let key = self.blob_key(d);
        let replace = self.replaces_bad_copy(d);
        if !replace {
            match self.call("head", self.inner.store.head(&key)).await {
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
                PutMode::Create
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
            .call(
                "put",
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

/// `len` bytes of the cache file from `offset`, read on a blocking thread.
async fn read_part(file: &Arc<File>, offset: u64, len: u64) -> Result<Bytes, TierError> {
    let file = file.clone();
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, offset)?;
        Ok::<_, std::io::Error>(Bytes::from(buf))
    })
    .await
    .expect("a read does not panic")
    .map_err(|e| TierError::Store(format!("reading the cache file: {e}")))
}
