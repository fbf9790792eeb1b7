//! Negative caching: an upstream's "not found" for a manifest, remembered
//! briefly per (upstream, repository, tag or digest), so a client asking
//! again and again for a tag that does not exist does not cost an upstream
//! request (and a pull against Docker Hub's limit) each time.
//!
//! Bounded in time (`cache.negative_ttl`) and in entries
//! (`cache.negative_entries`); only 404s are remembered, never a failure
//! that might be gone on the next try (5xx, 429, unreachable). Anything that
//! shows the manifest exists (a pull that stored it, a sync that tagged it)
//! forgets the entry at once.

use std::time::Duration;

use super::{MirrorError, UpstreamId};

/// (upstream, repository, tag or digest as written).
pub type Key = (UpstreamId, String, String);

pub struct NegativeCache {
    /// `None` when `negative_ttl` is zero.
    entries: Option<moka::sync::Cache<Key, MirrorError>>,
}

impl NegativeCache {
    pub fn new(ttl: Duration, max_entries: u64) -> NegativeCache {
        NegativeCache {
            entries: (!ttl.is_zero()).then(|| {
                moka::sync::Cache::builder()
                    .max_capacity(max_entries)
                    .time_to_live(ttl)
                    .build()
            }),
        }
    }

    /// The remembered "not found", if any.
    pub fn get(&self, key: &Key) -> Option<MirrorError> {
        self.entries.as_ref()?.get(key)
    }

    /// Remembers `e` if it is the upstream's "not found".
    pub fn note(&self, key: Key, e: &MirrorError) {
        if let (Some(c), true) = (&self.entries, is_not_found(e)) {
            c.insert(key, e.clone());
        }
    }

    /// The manifest exists after all.
    pub fn forget(&self, key: &Key) {
        if let Some(c) = &self.entries {
            c.invalidate(key);
        }
    }
}

fn is_not_found(e: &MirrorError) -> bool {
    matches!(
        e,
        MirrorError::Upstream(crate::upstream::UpstreamError::NotFound { .. })
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::UpstreamError;

    fn key(reference: &str) -> Key {
        (UpstreamId(0), "library/x".into(), reference.into())
    }

    fn not_found() -> MirrorError {
        MirrorError::Upstream(UpstreamError::NotFound {
            upstream: "hub".into(),
            code: Some("MANIFEST_UNKNOWN".into()),
        })
    }

    #[test]
    fn only_not_found_is_remembered_until_the_manifest_shows_up() {
        let n = NegativeCache::new(Duration::from_secs(30), 100);
        let throttled = MirrorError::Upstream(UpstreamError::TooManyRequests {
            upstream: "hub".into(),
            retry_after: 60,
        });
        n.note(key("a"), &throttled);
        assert!(n.get(&key("a")).is_none(), "a 429 may be gone next time");
        n.note(key("a"), &not_found());
        assert!(matches!(
            n.get(&key("a")),
            Some(MirrorError::Upstream(UpstreamError::NotFound { .. }))
        ));
        assert!(n.get(&key("b")).is_none(), "per reference");
        n.forget(&key("a"));
        assert!(n.get(&key("a")).is_none());
    }

    #[test]
    fn a_zero_ttl_remembers_nothing() {
        let n = NegativeCache::new(Duration::ZERO, 100);
        n.note(key("a"), &not_found());
        assert!(n.get(&key("a")).is_none());
    }
}
