//! The cache's operations on content, shaped like what callers mean: may a
//! repository read a blob, open it, begin and feed a fill, commit a manifest,
//! record a tag. Each does all of its bookkeeping (record, usage, link, tag,
//! hot copy, access time) so no caller has to know the order.
//!
//! Never decides policy (what is fresh, who may read): the mirror does that
//! and calls these.

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;

use crate::registry::{Digest, MediaType, Tag};

use super::fill::{FillError, FillReader, FillWriter, Join};
use super::meta::{now_millis, now_secs, BlobRecord};
use super::{Cache, CacheError, CachedManifest, Origin};

impl Cache {
    /// Whether `origin`'s repository may read `d` from the cache.
    pub fn is_linked(&self, origin: Origin<'_>, d: &Digest) -> Result<bool, CacheError> {
        self.meta.is_linked(origin.upstream, origin.repo, d)
    }

    /// Records that `origin`'s repository holds `d` (the upstream said so).
    pub fn link(&self, origin: Origin<'_>, d: &Digest) -> Result<(), CacheError> {
        self.meta.link(origin.upstream, origin.repo, d)
    }

    /// A verified blob with its length, if cached; counts as a read.
    /// Whether the caller may read it is the caller's check
    /// ([`is_linked`](Self::is_linked), or the upstream's word).
    pub fn open_blob(&self, d: &Digest) -> Result<Option<(File, u64)>, CacheError> {
        let found = self.store.open_blob(d)?;
        if found.is_some() {
            self.evictor.touch(d, now_millis());
        }
        Ok(found)
    }

    /// The length of a cached blob, without counting a read (`HEAD`).
    pub fn blob_len(&self, d: &Digest) -> Result<Option<u64>, CacheError> {
        Ok(self.store.open_blob(d)?.map(|(_, len)| len))
    }

    /// Joins the download of `d`, or starts one for `origin` (the link its
    /// commit will make): see [`Join`]. A leader feeds the writer with
    /// [`fill`](Self::fill).
    pub fn begin_fill(&self, d: &Digest, origin: Origin<'_>) -> Result<Join, CacheError> {
        let j = self.fills.join(d, &self.store, origin)?;
        if matches!(j, Join::Leader(..)) {
            self.metrics.fills_in_flight.set(self.fills.len() as i64);
        }
        Ok(j)
    }

    /// A reader of the fill of `d` running now, if one runs, with the name
    /// of the upstream it reads through; never starts one (for the
    /// node-to-node listener, which serves only what this node is already
    /// fetching).
    pub fn running_fill(&self, d: &Digest) -> Option<(FillReader, String)> {
        self.fills.running(d)
    }

    /// Feeds a fill from `chunks` (`size` when the source announced one):
    /// reserves room first and then in steps as bytes arrive (so a blob the
    /// disk cannot take is refused before any reader has a header, and no
    /// fill outgrows the budget; see `Room`), writes, verifies, commits, and links the
    /// blob to the fill's origin. Any error ends the fill for every reader
    /// and caches nothing. Blocking: call from a blocking thread.
    pub fn fill<B: AsRef<[u8]>>(
        &self,
        w: Box<FillWriter>,
        size: Option<u64>,
        chunks: impl IntoIterator<Item = Result<B, FillError>>,
    ) -> Result<u64, FillError> {
        self.fill_and_link(w, size, chunks, true)
    }

    /// [`fill`](Self::fill) without the link: the blob is committed but no
    /// repository may read it until someone links it (a bundle import links
    /// everything at its end, so a refused import leaves nothing readable).
    pub fn fill_unlinked<B: AsRef<[u8]>>(
        &self,
        w: Box<FillWriter>,
        size: Option<u64>,
        chunks: impl IntoIterator<Item = Result<B, FillError>>,
    ) -> Result<u64, FillError> {
        self.fill_and_link(w, size, chunks, false)
    }

    fn fill_and_link<B: AsRef<[u8]>>(
        &self,
        w: Box<FillWriter>,
        size: Option<u64>,
        chunks: impl IntoIterator<Item = Result<B, FillError>>,
        link: bool,
    ) -> Result<u64, FillError> {
        let r = self.feed(w, size, chunks, link);
        self.metrics.fills_in_flight.set(self.fills.len() as i64);
        if r.as_ref().is_err_and(FillError::is_disk_full) {
            // Make room for the next fill.
            self.evictor.wake();
        }
        r
    }

    fn feed<B: AsRef<[u8]>>(
        &self,
        mut w: Box<FillWriter>,
        size: Option<u64>,
        chunks: impl IntoIterator<Item = Result<B, FillError>>,
        link: bool,
    ) -> Result<u64, FillError> {
        let mut room = match self.fill_room(size) {
            Ok(r) => r,
            Err(e) => {
                let e = FillError::from(e);
                w.fail(e.clone());
                return Err(e);
            }
        };
        w.start(size);
        let mut written = 0u64;
        for chunk in chunks {
            let wrote = chunk.and_then(|b| {
                let b = b.as_ref();
                written += b.len() as u64;
                room.cover(written)?;
                w.write(b)
            });
            if let Err(e) = wrote {
                w.fail(e.clone());
                return Err(e);
            }
        }
        let d = w.digest().clone();
        let (upstream, repo) = {
            let o = w.origin();
            (o.upstream.to_owned(), o.repo.clone())
        };
        w.finish(&self.store, move |size| {
            // From here the blob counts as usage, not as a promise: counted
            // first, then the promise released, so no moment counts neither;
            // only then is an eviction pass woken, which would otherwise
            // count the blob twice and evict one too many.
            let wanted = self.committed_quietly(&d, &BlobRecord::blob(size, now_millis()))?;
            drop(room);
            if wanted {
                self.evictor.wake();
            }
            if link {
                self.meta.link(&upstream, &repo, &d)?;
            }
            Ok(())
        })
    }

    /// Ends a fill that never got its source (the upstream refused): every
    /// reader gets `e`, nothing is cached.
    pub fn abandon_fill(&self, w: Box<FillWriter>, e: FillError) {
        w.fail(e);
        self.metrics.fills_in_flight.set(self.fills.len() as i64);
    }

    /// A cached manifest (from memory, else from disk); counts as a read.
    /// Metadata without a file (a crash between the two, an operator's rm)
    /// is a miss, not an error.
    pub fn manifest(&self, d: &Digest) -> Result<Option<CachedManifest>, CacheError> {
        if let Some(hot) = self.hot.get(d) {
            self.evictor.touch(d, now_millis());
            return Ok(Some(hot));
        }
        let Some(rec) = self.meta.get_blob(d)? else {
            return Ok(None);
        };
        let Some(media_type) = rec.media_type.and_then(|m| m.parse::<MediaType>().ok()) else {
            return Ok(None);
        };
        let Some(bytes) = self.store.read(d)? else {
            return Ok(None);
        };
        self.evictor.touch(d, now_millis());
        let m = CachedManifest {
            bytes: Bytes::from(bytes),
            media_type,
        };
        self.hot.insert(d.clone(), m.clone());
        Ok(Some(m))
    }

    /// A cached manifest that `origin`'s repository may read.
    pub fn linked_manifest(
        &self,
        origin: Origin<'_>,
        d: &Digest,
    ) -> Result<Option<CachedManifest>, CacheError> {
        if !self.is_linked(origin, d)? {
            return Ok(None);
        }
        self.manifest(d)
    }

    /// Commits a manifest whose digest the caller verified against `d`
    /// (`put_verified` checks again): the file (fsynced on a blocking
    /// thread), then its record, the hot copy, the link to `origin`, and
    /// `tag` pointing at it, checked now.
    pub async fn commit_manifest(
        self: &Arc<Self>,
        origin: Origin<'_>,
        tag: Option<&Tag>,
        d: &Digest,
        m: &CachedManifest,
    ) -> Result<(), CacheError> {
        self.commit_manifest_unlinked(d, m).await?;
        self.link(origin, d)?;
        if let Some(t) = tag {
            self.set_tag(origin, t, d, &m.media_type)?;
        }
        Ok(())
    }

    /// Commits a manifest (verified against `d`) that no repository may
    /// read yet: a bundle import links and tags it at its end.
    pub async fn commit_manifest_unlinked(
        self: &Arc<Self>,
        d: &Digest,
        m: &CachedManifest,
    ) -> Result<(), CacheError> {
        let (this, d2, bytes) = (self.clone(), d.clone(), m.bytes.clone());
        tokio::task::spawn_blocking(move || this.store.put_verified(&d2, &bytes))
            .await
            .map_err(|e| CacheError::Io(std::io::Error::other(e)))??;
        let rec = BlobRecord::manifest(m.bytes.len() as u64, m.media_type.as_str(), now_millis());
        self.committed(d, &rec)?;
        self.hot.insert(d.clone(), m.clone());
        Ok(())
    }

    /// Where `tag` pointed when last checked, and when (unix seconds).
    pub fn tag(&self, origin: Origin<'_>, tag: &Tag) -> Result<Option<(Digest, u64)>, CacheError> {
        Ok(self
            .meta
            .get_tag(origin.upstream, origin.repo, tag)?
            .and_then(|rec| Some((rec.digest.parse().ok()?, rec.checked_at))))
    }

    /// Records that `tag` points at `d`, as checked now.
    pub fn set_tag(
        &self,
        origin: Origin<'_>,
        tag: &Tag,
        d: &Digest,
        media_type: &MediaType,
    ) -> Result<(), CacheError> {
        self.meta
            .put_tag(origin.upstream, origin.repo, tag, d, media_type, now_secs())
    }

    /// Forgets a tag the upstream no longer has.
    pub fn remove_tag(&self, origin: Origin<'_>, tag: &Tag) -> Result<(), CacheError> {
        self.meta.remove_tag(origin.upstream, origin.repo, tag)
    }
}
