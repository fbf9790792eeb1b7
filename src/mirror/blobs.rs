//! Blobs: served from disk once verified, otherwise streamed from a fill that
//! any number of concurrent requests share (see `cache::fill`).
//!
//! Blobs are stored once per digest whatever repository brought them, but a
//! repository may read a cached blob only once the upstream has said that
//! repository holds it (a *link*): either it was fetched through that repository,
//! or a `HEAD` on the upstream confirmed it. Without that check, anyone who knew
//! a digest could read a private layer through a public repository.

use std::fs::File;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::cache::{now_millis, BlobRecord, FillError, FillReader, FillWriter, Join};
use crate::registry::Digest;
use crate::upstream::UpstreamError;

use super::{CacheStatus, Mirror, MirrorError, Routed};

pub enum BlobBody {
    /// A verified file: supports ranges.
    File(File),
    /// A fill in progress: read along as it is written.
    Fill(FillReader),
}

pub struct BlobResponse {
    pub digest: Digest,
    /// Known for files, and for fills whose upstream sent `Content-Length`.
    pub size: Option<u64>,
    pub body: BlobBody,
    pub status: CacheStatus,
}

/// A fill already verified (only its fsync pending) is served like a file.
fn fill_response(
    d: &Digest,
    size: Option<u64>,
    reader: FillReader,
    status: CacheStatus,
) -> BlobResponse {
    // A verified file is complete: its length is the size, whatever the
    // upstream's headers said (or did not say).
    let (body, size) = match reader.verified_file() {
        Some(f) => match f.metadata() {
            Ok(m) => (BlobBody::File(f), Some(m.len())),
            Err(_) => (BlobBody::Fill(reader), size),
        },
        None => (BlobBody::Fill(reader), size),
    };
    BlobResponse {
        digest: d.clone(),
        size,
        body,
        status,
    }
}

/// A fill that failed because the disk is full.
fn disk_full(e: &FillError) -> bool {
    matches!(e, FillError::Cache(c) if c.is_disk_full())
}

impl Mirror {
    pub async fn blob(&self, r: &Routed, d: &Digest) -> Result<BlobResponse, MirrorError> {
        let inner = &self.inner;
        let name = self.upstream_name(r.upstream);
        let origin = format!("{name}/{}", r.repo);
        let linked = inner.cache.meta.is_linked(name, &r.repo, d)?;
        if linked {
            if let Some(resp) = self.open_cached(d, CacheStatus::Hit)? {
                return Ok(resp);
            }
        }
        match inner.cache.fills.join(d, &inner.cache.store, &origin)? {
            Join::Cached => {
                let status = if linked {
                    CacheStatus::Hit
                } else {
                    self.confirm_access(r, d).await?;
                    CacheStatus::Revalidated
                };
                match self.open_cached(d, status)? {
                    Some(resp) => Ok(resp),
                    // Evicted in between: fetch it again.
                    None => Box::pin(self.blob(r, d)).await,
                }
            }
            Join::Leader(writer, mut reader) => {
                inner
                    .metrics
                    .fills_in_flight
                    .set(inner.cache.fills.len() as i64);
                self.spawn_fill(r.clone(), d.clone(), writer);
                let size = reader.ready().await?;
                Ok(fill_response(d, size, reader, CacheStatus::Miss))
            }
            Join::Follower(mut reader, same_origin) => {
                if !same_origin && !linked {
                    self.confirm_access(r, d).await?;
                }
                inner.metrics.coalesced.with_label_values(&["blob"]).inc();
                let size = reader.ready().await?;
                Ok(fill_response(d, size, reader, CacheStatus::Coalesced))
            }
        }
    }

    /// Answers a `HEAD` without downloading: from disk when this repository may
    /// read the cached blob, otherwise from the upstream's own `HEAD`.
    pub async fn blob_head(
        &self,
        r: &Routed,
        d: &Digest,
    ) -> Result<(Option<u64>, CacheStatus), MirrorError> {
        let inner = &self.inner;
        let name = self.upstream_name(r.upstream);
        let cached = inner
            .cache
            .store
            .open_blob(d)
            .map_err(crate::cache::CacheError::from)?;
        if let Some((_, len)) = &cached {
            if inner.cache.meta.is_linked(name, &r.repo, d)? {
                return Ok((Some(*len), CacheStatus::Hit));
            }
        }
        let up = &inner.upstreams[r.upstream];
        let size = up.client.head_blob(&r.repo, d).await?;
        match cached {
            Some((_, len)) => {
                inner.cache.meta.link(name, &r.repo, d)?;
                Ok((Some(len), CacheStatus::Revalidated))
            }
            None => Ok((size, CacheStatus::Pass)),
        }
    }

    fn open_cached(
        &self,
        d: &Digest,
        status: CacheStatus,
    ) -> Result<Option<BlobResponse>, MirrorError> {
        let inner = &self.inner;
        let Some((file, len)) = inner
            .cache
            .store
            .open_blob(d)
            .map_err(crate::cache::CacheError::from)?
        else {
            return Ok(None);
        };
        inner.cache.touch(d);
        Ok(Some(BlobResponse {
            digest: d.clone(),
            size: Some(len),
            body: BlobBody::File(file),
            status,
        }))
    }

    /// Asks the upstream whether this repository holds the blob, and records it.
    async fn confirm_access(&self, r: &Routed, d: &Digest) -> Result<(), MirrorError> {
        let up = &self.inner.upstreams[r.upstream];
        up.client.head_blob(&r.repo, d).await?;
        self.inner.cache.meta.link(&up.cfg.name, &r.repo, d)?;
        Ok(())
    }

    /// Downloads a blob into the fill. Runs in its own task so the download
    /// finishes (and is cached) even if the client that started it leaves.
    fn spawn_fill(&self, r: Routed, d: Digest, mut w: Box<FillWriter>) {
        let this = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let up = &this.inner.upstreams[r.upstream];
            let mut resp = match up.client.get_blob(&r.repo, &d).await {
                Ok(resp) => resp,
                Err(e) => {
                    tracing::warn!(upstream = %up.cfg.name, repo = %r.repo, digest = %d, error = %e, "blob fetch failed");
                    w.fail(FillError::Upstream(Arc::new(e)));
                    return;
                }
            };
            let size = resp.content_length();
            // Hashing and file writes happen on a blocking thread; this task only
            // moves chunks from the socket to it.
            // A short queue: the upstream is slowed by TCP, not buffered in memory.
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, UpstreamError>>(4);
            let (this2, r2, d2) = (this.clone(), r.clone(), d.clone());
            let writer = tokio::task::spawn_blocking(move || {
                // Room first, so a blob the disk cannot take is refused with
                // a clear error before any client has seen a header.
                let cache = &this2.inner.cache;
                let room = match size.map(|s| cache.reserve(s)).transpose() {
                    Ok(r) => r,
                    Err(e) => {
                        let e = FillError::from(e);
                        w.fail(e.clone());
                        return Err(e);
                    }
                };
                w.start(size);
                while let Some(item) = rx.blocking_recv() {
                    let res = item
                        .map_err(|e| FillError::Upstream(Arc::new(e)))
                        .and_then(|b| w.write(&b));
                    if let Err(e) = res {
                        w.fail(e.clone());
                        return Err(e);
                    }
                }
                let inner = &this2.inner;
                let name = &inner.upstreams[r2.upstream].cfg.name;
                w.finish(&inner.cache.store, move |size| {
                    // From here the blob counts as usage, not as a promise.
                    drop(room);
                    inner
                        .cache
                        .committed(&d2, &BlobRecord::blob(size, now_millis()))?;
                    inner.cache.meta.link(name, &r2.repo, &d2)
                })
            });
            let received = this
                .inner
                .metrics
                .upstream_bytes
                .with_label_values(&[&up.cfg.name]);
            loop {
                match resp.chunk().await {
                    Ok(Some(b)) => {
                        received.inc_by(b.len() as u64);
                        if tx.send(Ok(b)).await.is_err() {
                            break; // the writer failed and said why
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let err = UpstreamError::Unreachable {
                            upstream: up.cfg.name.clone(),
                            reason: format!("blob transfer interrupted: {e}"),
                        };
                        let _ = tx.send(Err(err)).await;
                        break;
                    }
                }
            }
            drop(tx);
            let result = writer.await;
            this.inner
                .metrics
                .fills_in_flight
                .set(this.inner.cache.fills.len() as i64);
            match result.expect("fill writer does not panic") {
                Ok(size) => tracing::info!(
                    upstream = %up.cfg.name, repo = %r.repo, digest = %d, size,
                    ms = started.elapsed().as_millis() as u64, "blob cached"
                ),
                Err(e) => {
                    if disk_full(&e) {
                        // Make room for the next fill.
                        this.inner.cache.evictor.wake();
                    }
                    tracing::warn!(
                        upstream = %up.cfg.name, repo = %r.repo, digest = %d, error = %e,
                        "blob fill failed; nothing cached"
                    )
                }
            }
        });
    }
}
