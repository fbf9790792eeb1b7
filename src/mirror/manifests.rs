//! Manifests: immutable by digest, revalidated by tag.
//!
//! A manifest by digest is served from disk whenever this repository is linked to
//! it. A tag is trusted for `tag_ttl`, then revalidated with a `HEAD` (free on
//! Docker Hub's pull limit); the body is fetched again only when the digest
//! changed. If the upstream is unreachable, rate-limiting or failing, the cached
//! answer is served (stale-if-error) and logged. A 404 or refused access is never
//! papered over: the upstream's word on existence and access wins.

use bytes::Bytes;

use crate::cache::{now_millis, now_secs, BlobRecord, HotManifest};
use crate::registry::{Accept, Digest, MediaType, Reference, Tag};
use crate::upstream::{ManifestBody, UpstreamError};

use super::{CacheStatus, Mirror, MirrorError, Routed};

/// A manifest as fetched or read back, shared between coalesced callers.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub bytes: Bytes,
    pub media_type: MediaType,
    pub digest: Digest,
}

#[derive(Clone, Debug)]
pub struct ManifestResponse {
    pub bytes: Bytes,
    pub media_type: MediaType,
    pub digest: Digest,
    pub status: CacheStatus,
}

impl From<ManifestBody> for Fetched {
    fn from(m: ManifestBody) -> Self {
        Fetched {
            bytes: m.bytes,
            media_type: m.media_type,
            digest: m.digest,
        }
    }
}

/// Errors after which a cached answer is better than none.
fn transient(e: &UpstreamError) -> bool {
    match e {
        UpstreamError::Unreachable { .. }
        | UpstreamError::Offline { .. }
        | UpstreamError::TooManyRequests { .. } => true,
        UpstreamError::Status { status, .. } => *status >= 500,
        _ => false,
    }
}

impl Mirror {
    pub async fn manifest(
        &self,
        r: &Routed,
        reference: &Reference,
        accept: &Accept,
    ) -> Result<ManifestResponse, MirrorError> {
        let (f, status) = match reference {
            Reference::Digest(d) => self.manifest_by_digest(r, d).await?,
            Reference::Tag(t) => self.manifest_by_tag(r, t).await?,
        };
        if !accept.allows(&f.media_type) {
            return Err(MirrorError::NotAcceptable {
                media_type: f.media_type.to_string(),
            });
        }
        Ok(ManifestResponse {
            bytes: f.bytes,
            media_type: f.media_type,
            digest: f.digest,
            status,
        })
    }

    /// A verified manifest from disk with its recorded media type, if present.
    fn cached_manifest(&self, d: &Digest) -> Result<Option<Fetched>, MirrorError> {
        let inner = &self.inner;
        if let Some(hot) = inner.cache.hot_manifest(d) {
            if let Ok(mt) = hot.media_type.parse::<MediaType>() {
                inner.cache.touch(d);
                return Ok(Some(Fetched {
                    bytes: hot.bytes,
                    media_type: mt,
                    digest: d.clone(),
                }));
            }
        }
        let Some(rec) = inner.cache.meta.get_blob(d)? else {
            return Ok(None);
        };
        let Some(mt) = rec.media_type.and_then(|m| m.parse::<MediaType>().ok()) else {
            return Ok(None);
        };
        // Metadata without a file (a crash between the two, or an operator's rm)
        // is a miss, not an error.
        let Some(bytes) = inner
            .cache
            .store
            .read(d)
            .map_err(crate::cache::CacheError::from)?
        else {
            return Ok(None);
        };
        inner.cache.touch(d);
        let bytes = Bytes::from(bytes);
        inner.cache.remember_manifest(
            d,
            HotManifest {
                bytes: bytes.clone(),
                media_type: mt.to_string(),
            },
        );
        Ok(Some(Fetched {
            bytes,
            media_type: mt,
            digest: d.clone(),
        }))
    }

    fn linked_manifest(&self, r: &Routed, d: &Digest) -> Result<Option<Fetched>, MirrorError> {
        let name = self.upstream_name(r.upstream);
        if !self.inner.cache.meta.is_linked(name, &r.repo, d)? {
            return Ok(None);
        }
        self.cached_manifest(d)
    }

    async fn manifest_by_digest(
        &self,
        r: &Routed,
        d: &Digest,
    ) -> Result<(Fetched, CacheStatus), MirrorError> {
        if let Some(f) = self.linked_manifest(r, d)? {
            return Ok((f, CacheStatus::Hit));
        }
        let this = self.clone();
        let (r2, reference) = (r.clone(), Reference::Digest(d.clone()));
        let key = (r.upstream, r.repo.to_string(), d.to_string());
        let (res, joined) = self
            .inner
            .manifests
            .run(key, move || async move {
                let client = &this.inner.upstreams[r2.upstream].client;
                let m = client.get_manifest(&r2.repo, &reference).await?;
                this.store_manifest(&r2, None, m.into())
                    .await
                    .map(|f| (f, CacheStatus::Miss))
            })
            .await;
        self.coalesced(res, joined)
    }

    async fn manifest_by_tag(
        &self,
        r: &Routed,
        tag: &Tag,
    ) -> Result<(Fetched, CacheStatus), MirrorError> {
        let inner = &self.inner;
        let name = self.upstream_name(r.upstream);
        let cached = match inner.cache.meta.get_tag(name, &r.repo, tag)? {
            Some(rec) => match rec.digest.parse::<Digest>() {
                Ok(d) => self.cached_manifest(&d)?.map(|f| (f, rec.checked_at)),
                Err(_) => None,
            },
            None => None,
        };
        if let Some((f, checked_at)) = &cached {
            if now_secs() < checked_at.saturating_add(inner.tag_ttl.as_secs()) {
                return Ok((f.clone(), CacheStatus::Hit));
            }
        }
        let this = self.clone();
        let (r2, tag2) = (r.clone(), tag.clone());
        let key = (r.upstream, r.repo.to_string(), tag.to_string());
        let (res, joined) = self
            .inner
            .manifests
            .run(key, move || async move {
                this.resolve_tag(&r2, &tag2, cached.map(|(f, _)| f)).await
            })
            .await;
        self.coalesced(res, joined)
    }

    /// Asks the upstream about a tag: HEAD when something is cached, GET when
    /// nothing is or the digest moved.
    async fn resolve_tag(
        &self,
        r: &Routed,
        tag: &Tag,
        cached: Option<Fetched>,
    ) -> Result<(Fetched, CacheStatus), MirrorError> {
        let up = &self.inner.upstreams[r.upstream];
        let reference = Reference::Tag(tag.clone());
        if let Some(old) = cached {
            match up.client.head_manifest(&r.repo, &reference).await {
                Ok(h) if h.digest.as_ref() == Some(&old.digest) => {
                    self.inner.cache.meta.put_tag(
                        &up.cfg.name,
                        &r.repo,
                        tag,
                        &old.digest,
                        &old.media_type,
                        now_secs(),
                    )?;
                    return Ok((old, CacheStatus::Revalidated));
                }
                Ok(h) => {
                    // The tag moved. If we already hold the new digest for this
                    // repository, no body needs to cross the network.
                    if let Some(d) = h.digest {
                        if let Some(f) = self.linked_manifest(r, &d)? {
                            self.inner.cache.meta.put_tag(
                                &up.cfg.name,
                                &r.repo,
                                tag,
                                &d,
                                &f.media_type,
                                now_secs(),
                            )?;
                            return Ok((f, CacheStatus::Revalidated));
                        }
                    }
                }
                Err(e) if transient(&e) => {
                    tracing::warn!(
                        upstream = %up.cfg.name, repo = %r.repo, %tag, error = %e,
                        "serving a cached tag past its TTL because the upstream failed"
                    );
                    return Ok((old, CacheStatus::Stale));
                }
                Err(e) => {
                    if matches!(e, UpstreamError::NotFound { .. }) {
                        self.inner
                            .cache
                            .meta
                            .remove_tag(&up.cfg.name, &r.repo, tag)?;
                    }
                    return Err(e.into());
                }
            }
        }
        let m = up.client.get_manifest(&r.repo, &reference).await?;
        let f = self.store_manifest(r, Some(tag), m.into()).await?;
        Ok((f, CacheStatus::Miss))
    }

    /// Writes a verified manifest to disk and records it (and the tag).
    async fn store_manifest(
        &self,
        r: &Routed,
        tag: Option<&Tag>,
        f: Fetched,
    ) -> Result<Fetched, MirrorError> {
        let this = self.clone();
        let (d, bytes) = (f.digest.clone(), f.bytes.clone());
        // put_verified fsyncs: keep it off the async workers.
        tokio::task::spawn_blocking(move || this.inner.cache.store.put_verified(&d, &bytes))
            .await
            .expect("store task does not panic")?;
        let inner = &self.inner;
        let name = self.upstream_name(r.upstream);
        let now = now_secs();
        inner.cache.committed(
            &f.digest,
            &BlobRecord::manifest(f.bytes.len() as u64, f.media_type.as_str(), now_millis()),
        )?;
        inner.cache.remember_manifest(
            &f.digest,
            HotManifest {
                bytes: f.bytes.clone(),
                media_type: f.media_type.to_string(),
            },
        );
        inner.cache.meta.link(name, &r.repo, &f.digest)?;
        if let Some(t) = tag {
            inner
                .cache
                .meta
                .put_tag(name, &r.repo, t, &f.digest, &f.media_type, now)?;
        }
        Ok(f)
    }
}

impl Mirror {
    /// A waiter on someone else's fetch is counted, and its miss reported as
    /// coalesced.
    fn coalesced(
        &self,
        res: Result<(Fetched, CacheStatus), MirrorError>,
        joined: bool,
    ) -> Result<(Fetched, CacheStatus), MirrorError> {
        if !joined {
            return res;
        }
        self.inner
            .metrics
            .coalesced
            .with_label_values(&["manifest"])
            .inc();
        res.map(|(f, s)| match s {
            CacheStatus::Miss => (f, CacheStatus::Coalesced),
            s => (f, s),
        })
    }
}
