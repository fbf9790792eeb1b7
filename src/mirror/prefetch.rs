//! Fetching ahead of clients: what a sync run asks of the mirror. Each
//! operation goes through the same upstream client (credentials, token
//! cache, 429 backoff) and the same cache paths (verify on write, links,
//! coalescing with concurrent pulls) as a client's pull, and says whether it
//! had to fetch, so a run can count what it moved.
//!
//! Never decides what to fetch (the sync rules do) and never bypasses the
//! per-repository links: a blob becomes readable through a repository only
//! once the upstream said that repository holds it.

use serde::{Deserialize, Serialize};

use crate::cache::{FillReader, Join, Origin, TagRecord};
use crate::registry::{Digest, MediaType, Reference, RepoName, Tag, MAX_MANIFEST_BYTES};
use crate::upstream::{RateLimit, UpstreamError};

use super::manifests::Fetched;
use super::{CacheStatus, Mirror, MirrorError, Routed, UpstreamId};

/// An index child a platform filter deliberately left out (by a sync rule
/// or a bundle), so an offline site can say so instead of "not found".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftOut {
    /// The child's platform, `os/arch[/variant]`.
    pub platform: String,
    /// Who left it out: "sync rule 'base'".
    pub by: String,
    /// The platforms that were kept.
    pub kept: Vec<String>,
}

fn left_out_key(upstream: &str, repo: &RepoName, d: &Digest) -> String {
    format!("left-out/{upstream}/{repo}@{d}")
}

/// A manifest the cache now holds for a repository.
#[derive(Clone, Debug)]
pub struct Held {
    pub bytes: bytes::Bytes,
    pub media_type: MediaType,
    pub digest: Digest,
    /// It had to be fetched now (not already cached for this repository).
    pub fetched: bool,
}

impl Mirror {
    /// The upstream configured under `name`.
    pub fn upstream_id(&self, name: &str) -> Option<UpstreamId> {
        self.inner
            .upstreams
            .iter()
            .position(|u| u.cfg.name == name)
            .map(UpstreamId)
    }

    /// `repo` on the upstream named `name`, as routing would give it.
    pub fn routed(&self, upstream: &str, repo: RepoName) -> Option<Routed> {
        Some(Routed {
            upstream: self.upstream_id(upstream)?,
            repo,
        })
    }

    /// Whether the upstream is configured `offline`.
    pub fn is_offline(&self, id: UpstreamId) -> bool {
        self.upstream(id).cfg.offline
    }

    /// The upstream's latest `ratelimit-*` figures, if it sends them.
    pub fn rate_limit(&self, id: UpstreamId) -> Option<RateLimit> {
        self.upstream(id).client.rate_limit()
    }

    /// Every tag the upstream lists for the repository (all pages, sorted,
    /// bounded as `tags/list` is). Never cached.
    pub async fn upstream_tags(&self, r: &Routed) -> Result<Vec<Tag>, MirrorError> {
        Ok(self.all_tags(r).await?.1)
    }

    /// The digest (and media type) a tag points at now: a `HEAD`, which
    /// Docker Hub does not count against its pull limit.
    pub async fn head_tag(
        &self,
        r: &Routed,
        tag: &Tag,
    ) -> Result<(Digest, Option<MediaType>), MirrorError> {
        let up = self.upstream(r.upstream);
        let h = up
            .client
            .head_manifest(&r.repo, &Reference::Tag(tag.clone()))
            .await?;
        let d = h.digest.ok_or_else(|| UpstreamError::Protocol {
            upstream: up.cfg.name.clone(),
            what: format!("HEAD {}:{tag} sent no Docker-Content-Digest", r.repo),
        })?;
        Ok((d, h.media_type))
    }

    /// Where the cache says `tag` points, and when it was last checked.
    pub fn cached_tag(&self, r: &Routed, tag: &Tag) -> Result<Option<(Digest, u64)>, MirrorError> {
        Ok(self.inner.cache.tag(self.origin(r), tag)?)
    }

    /// The tags the cache holds for a repository.
    pub fn cached_tags(&self, r: &Routed) -> Result<Vec<(Tag, TagRecord)>, MirrorError> {
        Ok(self.inner.cache.repo_tags(self.origin(r))?)
    }

    /// A manifest this repository may read from the cache, without fetching.
    pub fn held_manifest(&self, r: &Routed, d: &Digest) -> Result<Option<Held>, MirrorError> {
        Ok(self
            .linked_manifest(r, d)?
            .map(|f| Held::from_fetched(f, false)))
    }

    /// The manifest `d`, from the cache when this repository holds it, else
    /// fetched by digest (coalesced with clients asking for it) and stored.
    pub async fn ensure_manifest(&self, r: &Routed, d: &Digest) -> Result<Held, MirrorError> {
        let (f, status) = self.manifest_by_digest(r, d).await?;
        Ok(Held::from_fetched(
            f,
            matches!(
                status,
                CacheStatus::Miss | CacheStatus::Coalesced | CacheStatus::Shared
            ),
        ))
    }

    /// A small cached blob this repository may read (an image config), at
    /// most 4 MiB; `None` when not cached or larger.
    pub fn read_blob_small(&self, r: &Routed, d: &Digest) -> Result<Option<Vec<u8>>, MirrorError> {
        use std::io::Read;
        if !self.holds_blob(r, d)? {
            return Ok(None);
        }
        let Some((file, len)) = self.inner.cache.open_blob(d)? else {
            return Ok(None);
        };
        if len > MAX_MANIFEST_BYTES as u64 {
            return Ok(None);
        }
        let mut buf = Vec::with_capacity(len as usize);
        file.take(len)
            .read_to_end(&mut buf)
            .map_err(crate::cache::CacheError::from)?;
        Ok(Some(buf))
    }

    /// Whether this repository can read `d` from the cache now.
    pub fn holds_blob(&self, r: &Routed, d: &Digest) -> Result<bool, MirrorError> {
        let cache = &self.inner.cache;
        Ok(cache.is_linked(self.origin(r), d)? && cache.blob_len(d)?.is_some())
    }

    /// Makes sure the cache holds blob `d` for this repository: nothing to
    /// do when it does; a `HEAD` when the blob is cached for another
    /// repository; otherwise a download (joined with any already running)
    /// awaited to the end. Returns the bytes this call downloaded.
    pub async fn ensure_blob(&self, r: &Routed, d: &Digest) -> Result<u64, MirrorError> {
        self.ensure_blob_once(r, d, true).await
    }

    /// [`ensure_blob`](Self::ensure_blob), retrying once (`retry`) when a
    /// fill started through another repository met that repository's 404.
    async fn ensure_blob_once(
        &self,
        r: &Routed,
        d: &Digest,
        retry: bool,
    ) -> Result<u64, MirrorError> {
        let cache = &self.inner.cache;
        let origin = self.origin(r);
        if self.holds_blob(r, d)? {
            return Ok(0);
        }
        match cache.begin_fill(d, origin)? {
            Join::Cached => {
                self.confirm_access(r, d).await?;
                Ok(0)
            }
            Join::Leader(writer, reader) => {
                self.spawn_fill(r.clone(), d.clone(), writer);
                Ok(finished(reader).await?)
            }
            Join::Follower(reader, same_origin) => {
                if !same_origin {
                    self.confirm_access(r, d).await?;
                }
                match finished(reader).await {
                    // The leader's repository lacked it; this one has it
                    // (the HEAD above said so): fetch through this one.
                    Err(MirrorError::Fill(e))
                        if !same_origin
                            && retry
                            && super::blobs::about_the_leaders_repository(&e) =>
                    {
                        Box::pin(self.ensure_blob_once(r, d, false)).await
                    }
                    Err(e) => Err(e),
                    Ok(_) => Ok(0),
                }
            }
        }
    }

    /// Points `tag` at a manifest this repository holds (checked now).
    pub fn set_tag(&self, r: &Routed, tag: &Tag, m: &Held) -> Result<(), MirrorError> {
        self.inner
            .cache
            .set_tag(self.origin(r), tag, &m.digest, &m.media_type)?;
        self.exists_now(r, Some(tag), &m.digest);
        Ok(())
    }

    /// Records that a platform filter left index child `d` out.
    pub fn note_left_out(&self, r: &Routed, d: &Digest, why: &LeftOut) -> Result<(), MirrorError> {
        let key = left_out_key(self.upstream_name(r.upstream), &r.repo, d);
        Ok(self.inner.cache.set_note(&key, why)?)
    }

    /// Why `d` is not here, if a platform filter left it out.
    pub(super) fn left_out(&self, r: &Routed, d: &Digest) -> Option<LeftOut> {
        let key = left_out_key(self.upstream_name(r.upstream), &r.repo, d);
        self.inner.cache.note(&key).ok().flatten()
    }

    /// The cache-side origin of a routed repository (for pins and notes).
    pub fn origin_of<'a>(&'a self, r: &'a Routed) -> Origin<'a> {
        self.origin(r)
    }
}

/// Waits for a fill to end; its size, or why it failed.
async fn finished(mut reader: FillReader) -> Result<u64, MirrorError> {
    reader.ready().await?;
    Ok(reader.finished().await?)
}

impl Held {
    fn from_fetched(f: Fetched, fetched: bool) -> Held {
        Held {
            bytes: f.bytes,
            media_type: f.media_type,
            digest: f.digest,
            fetched,
        }
    }
}
