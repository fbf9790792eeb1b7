//! What sync rules and bundle imports remember between runs, kept in the
//! metadata beside the content it is about (the `notes` tree): a rule's last
//! run (`sync-run/<rule>`), the index children a platform filter left out
//! (`left-out/...`), the highest sequence imported from a signing key
//! (`bundle-key/<id>`) and which bundle last set each tag (`bundle-tag/...`).
//! (An import's progress needs no note: the blobs it committed are in the
//! cache, and a re-run skips them.) Also the per-repository tag list an
//! offline site answers `tags/list` from.
//!
//! The cache stores these as opaque JSON under keys its callers choose; it
//! never interprets them.

use serde::{Deserialize, Serialize};

use crate::registry::Tag;

use super::meta::TagRecord;
use super::{Cache, CacheError, Origin};

impl Cache {
    /// The note under `key`, if any.
    pub fn note<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>, CacheError> {
        self.meta.get_note(key)
    }

    /// Records a note (durable at the next flush, at most half a second).
    pub fn set_note<T: Serialize>(&self, key: &str, v: &T) -> Result<(), CacheError> {
        self.meta.put_note(key, v)
    }

    pub fn remove_note(&self, key: &str) -> Result<(), CacheError> {
        self.meta.remove_note(key)
    }

    /// The tags the cache holds for `origin`'s repository, sorted.
    pub fn repo_tags(&self, origin: Origin<'_>) -> Result<Vec<(Tag, TagRecord)>, CacheError> {
        let mut tags = self.meta.repo_tags(origin.upstream, origin.repo)?;
        tags.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(tags)
    }
}
