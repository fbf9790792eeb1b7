//! What the configuration says about sync (built by `crate::config` from
//! `[[sync]]`, read here): one [`SyncRule`] per rule, already validated.

use crate::registry::{Platform, RepoName};

use super::{Schedule, TagFilter};

/// One `[[sync]]`: which repositories of which upstream to keep filled, and
/// when.
#[derive(Debug, Clone)]
pub struct SyncRule {
    /// Unique among rules: letters, digits, `.`, `_`, `-`, starting with a
    /// letter or digit (it names the rule in `wharf sync`, metrics and
    /// bundles).
    pub name: String,
    /// The name of an `[[upstream]]`.
    pub upstream: String,
    /// `None`: the rule runs only when an operator types `wharf sync`.
    pub schedule: Option<Schedule>,
    /// The platforms of an index whose images are fetched; empty means all.
    pub platforms: Vec<Platform>,
    /// Synced images are pinned (never evicted).
    pub pin: bool,
    /// Tags that no longer match, or vanished upstream, are unpinned.
    pub prune: bool,
    /// Cosign-style signature and attestation tags of synced digests come
    /// along.
    pub signatures: bool,
    /// At least one; no repository twice.
    pub repos: Vec<RepoRule>,
}

/// One `[[sync.repo]]`: a repository (as the upstream names it) and the tags
/// taken from it.
#[derive(Debug, Clone)]
pub struct RepoRule {
    pub name: RepoName,
    pub filter: TagFilter,
}

/// Longest sync rule name.
pub const MAX_RULE_NAME: usize = 128;

/// Whether `name` may name a sync rule: letters, digits, `.`, `_` and `-`,
/// starting with a letter or digit (so never `.` or `..` where it names a
/// file or a pin source), at most [`MAX_RULE_NAME`] bytes. The configuration
/// and the bundle format both check names with this.
pub fn is_valid_rule_name(name: &str) -> bool {
    name.len() <= MAX_RULE_NAME
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
