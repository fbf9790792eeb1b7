//! Manifests: immutable by digest, revalidated by tag.
//!
//! A manifest by digest is served from disk whenever this repository is linked to
//! it. A tag is trusted for `tag_ttl`, then revalidated with a `HEAD` (free on
//! Docker Hub's pull limit); the body is fetched again only when the digest
//! changed. If the upstream is unreachable, rate-limiting or failing, the cached
//! answer is served (stale-if-error) and logged. A 404 or refused access is never
//! papered over: the upstream's word on existence and access wins, and a 404
//! is remembered for `cache.negative_ttl` (see `negative`), so repeated
//! requests for a missing tag do not each reach the upstream.

use bytes::Bytes;

use crate::cache::{now_secs, CachedManifest};
use crate::registry::{is_manifest_type, Accept, Digest, MediaType, Reference, Tag};
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

impl Fetched {
    fn cached(digest: &Digest, m: CachedManifest) -> Fetched {
        Fetched {
            bytes: m.bytes,
            media_type: m.media_type,
            digest: digest.clone(),
        }
    }
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
        let key = (r.upstream, r.repo.to_string(), reference.to_string());
        self.recently_missing(r, reference, &key)?;
        let res = match reference {
            Reference::Digest(d) => self.manifest_by_digest(r, d).await,
            Reference::Tag(t) => self.manifest_by_tag(r, t).await,
        };
        let (f, status) = res.inspect_err(|e| self.inner.negative.note(key, e))?;
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

    /// Answers from the negative cache when the upstream said "not found"
    /// for this (repository, reference) within `cache.negative_ttl`, and
    /// the cache holds nothing for it meanwhile. Cheap when there is no
    /// entry (one in-memory lookup), which is every request but a repeat.
    fn recently_missing(
        &self,
        r: &Routed,
        reference: &Reference,
        key: &super::negative::Key,
    ) -> Result<(), MirrorError> {
        let Some(e) = self.inner.negative.get(key) else {
            return Ok(());
        };
        let origin = self.origin(r);
        let held = match reference {
            Reference::Tag(t) => self.inner.cache.tag(origin, t)?.is_some(),
            Reference::Digest(d) => self.inner.cache.is_linked(origin, d)?,
        };
        if held {
            self.inner.negative.forget(key);
            return Ok(());
        }
        let up = &self.upstream(r.upstream).cfg.name;
        self.inner
            .counters
            .negative_hits
            .with_label_values(&[up])
            .inc();
        tracing::debug!(upstream = %up, repo = %r.repo, %reference,
            "manifest not found upstream moments ago: answered from the negative cache");
        Err(e)
    }

    /// Forgets remembered "not found" answers for what was just stored or
    /// tagged.
    pub(super) fn exists_now(&self, r: &Routed, tag: Option<&Tag>, d: &Digest) {
        let n = &self.inner.negative;
        n.forget(&(r.upstream, r.repo.to_string(), d.to_string()));
        if let Some(t) = tag {
            n.forget(&(r.upstream, r.repo.to_string(), t.to_string()));
        }
    }

    pub(super) fn linked_manifest(
        &self,
        r: &Routed,
        d: &Digest,
    ) -> Result<Option<Fetched>, MirrorError> {
        let m = self.inner.cache.linked_manifest(self.origin(r), d)?;
        Ok(m.map(|m| Fetched::cached(d, m)))
    }

    pub(super) async fn manifest_by_digest(
        &self,
        r: &Routed,
        d: &Digest,
    ) -> Result<(Fetched, CacheStatus), MirrorError> {
        if let Some(f) = self.linked_manifest(r, d)? {
            return Ok((f, CacheStatus::Hit));
        }
        let res = self.fetch_manifest_by_digest(r, d).await;
        match res {
            // An offline site says why a platform it was never given is missing.
            Err(MirrorError::Upstream(
                UpstreamError::Offline { .. } | UpstreamError::Unreachable { .. },
            )) => match self.left_out(r, d) {
                Some(why) => Err(MirrorError::PlatformFiltered {
                    digest: d.to_string(),
                    platform: why.platform,
                    by: why.by,
                    kept: why.kept,
                }),
                None => res,
            },
            res => res,
        }
    }

    async fn fetch_manifest_by_digest(
        &self,
        r: &Routed,
        d: &Digest,
    ) -> Result<(Fetched, CacheStatus), MirrorError> {
        let this = self.clone();
        let (r2, reference) = (r.clone(), Reference::Digest(d.clone()));
        let key = (r.upstream, r.repo.to_string(), d.to_string());
        let (res, joined) = self
            .inner
            .manifests
            .run(key, move || async move {
                if let Some(f) = this.manifest_from_tier(&r2, &reference).await? {
                    return Ok((f, CacheStatus::Shared));
                }
                let client = &this.upstream(r2.upstream).client;
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
        let cache = &self.inner.cache;
        let cached = match cache.tag(self.origin(r), tag)? {
            Some((d, checked_at)) => cache
                .manifest(&d)?
                .map(|m| (Fetched::cached(&d, m), checked_at)),
            None => None,
        };
        if let Some((f, checked_at)) = &cached {
            if now_secs() < checked_at.saturating_add(self.inner.tag_ttl.as_secs()) {
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
        let up = self.upstream(r.upstream);
        let reference = Reference::Tag(tag.clone());
        if let Some(old) = cached {
            if let Some(answer) = self.revalidate_tag(r, tag, old).await? {
                return Ok(answer);
            }
        }
        let m = up.client.get_manifest(&r.repo, &reference).await?;
        let f = self.store_manifest(r, Some(tag), m.into()).await?;
        Ok((f, CacheStatus::Miss))
    }

    /// A `HEAD` for a cached tag: the cached answer if the digest is the
    /// same (or the upstream failed: stale-if-error), a cached manifest if
    /// the tag moved to one this repository holds, `None` when the new
    /// manifest must be fetched.
    async fn revalidate_tag(
        &self,
        r: &Routed,
        tag: &Tag,
        old: Fetched,
    ) -> Result<Option<(Fetched, CacheStatus)>, MirrorError> {
        let (up, cache, origin) = (self.upstream(r.upstream), &self.inner.cache, self.origin(r));
        let reference = Reference::Tag(tag.clone());
        match up.client.head_manifest(&r.repo, &reference).await {
            Ok(h) if h.digest.as_ref() == Some(&old.digest) => {
                cache.set_tag(origin, tag, &old.digest, &old.media_type)?;
                self.exists_now(r, Some(tag), &old.digest);
                Ok(Some((old, CacheStatus::Revalidated)))
            }
            // The tag moved. If we already hold the new digest for this
            // repository, no body needs to cross the network.
            Ok(h) => match h.digest.map(|d| self.linked_manifest(r, &d)).transpose()? {
                Some(Some(f)) => {
                    cache.set_tag(origin, tag, &f.digest, &f.media_type)?;
                    self.exists_now(r, Some(tag), &f.digest);
                    Ok(Some((f, CacheStatus::Revalidated)))
                }
                _ => Ok(None),
            },
            Err(e) if transient(&e) => {
                tracing::warn!(
                    upstream = %up.cfg.name, repo = %r.repo, %tag, error = %e,
                    "serving a cached tag past its TTL because the upstream failed"
                );
                Ok(Some((old, CacheStatus::Stale)))
            }
            Err(e) => {
                if matches!(e, UpstreamError::NotFound { .. }) {
                    cache.remove_tag(origin, tag)?;
                }
                Err(e.into())
            }
        }
    }

    /// Commits a verified manifest from the upstream (and the tag) to the
    /// cache, and offers it to the shared tier.
    async fn store_manifest(
        &self,
        r: &Routed,
        tag: Option<&Tag>,
        f: Fetched,
    ) -> Result<Fetched, MirrorError> {
        let f = self.commit(r, tag, f).await?;
        if let Some(tier) = self.tier_for(r) {
            tier.upload_manifest(f.digest.clone(), f.media_type.to_string(), f.bytes.clone());
        }
        Ok(f)
    }

    async fn commit(
        &self,
        r: &Routed,
        tag: Option<&Tag>,
        f: Fetched,
    ) -> Result<Fetched, MirrorError> {
        let m = CachedManifest {
            bytes: f.bytes.clone(),
            media_type: f.media_type.clone(),
        };
        self.inner
            .cache
            .commit_manifest(self.origin(r), tag, &f.digest, &m)
            .await?;
        self.exists_now(r, tag, &f.digest);
        Ok(f)
    }

    /// A manifest by digest from the shared tier: only when its bytes match
    /// the digest and the upstream confirms (`HEAD`, free on Docker Hub's
    /// pull limit) that this repository holds it. `None`: ask the upstream.
    async fn manifest_from_tier(
        &self,
        r: &Routed,
        reference: &Reference,
    ) -> Result<Option<Fetched>, MirrorError> {
        let (Some(tier), Reference::Digest(d)) = (self.tier_for(r), reference) else {
            return Ok(None);
        };
        let up = self.upstream(r.upstream);
        let Some((media_type, bytes)) = tier.read_manifest(d, up.cfg.limits.manifest).await else {
            return Ok(None);
        };
        if Digest::of(d.algorithm(), &bytes) != *d {
            tier.bad_copy(d);
            return Ok(None);
        }
        let head = up.client.head_manifest(&r.repo, reference).await?;
        if head.digest.as_ref().is_some_and(|h| h != d) {
            return Ok(None);
        }
        // The digest covers the bytes, not the Content-Type the store kept
        // beside them (a store may drop it, answer `binary/octet-stream`, or
        // anyone with write access may set `text/html`): the upstream's word
        // wins, and without one the type must at least be a manifest's, as
        // for an upstream GET. A copy whose type is wrong is replaced by the
        // upstream's answer.
        let stored: Option<MediaType> = media_type.and_then(|t| t.parse().ok());
        let media_type = match (head.media_type, stored) {
            // As a GET sent it (a HEAD may differ in parameters only).
            (Some(up_type), Some(t)) if up_type.essence() == t.essence() => t,
            (None, Some(t)) if is_manifest_type(&t) => t,
            _ => {
                tier.bad_type(d);
                return Ok(None);
            }
        };
        let f = Fetched {
            bytes,
            media_type,
            digest: d.clone(),
        };
        self.commit(r, None, f).await.map(Some)
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
