//! Sync: keeping declared images of an upstream in the cache before anyone
//! pulls them, for sites that will later be cut off (a bundle carries the
//! synced content across an air gap).
//!
//! What each part owns:
//!
//! - `settings.rs`: [`SyncRule`] and [`RepoRule`], the validated form of
//!   `[[sync]]` and `[[sync.repo]]` (built by `crate::config`, which imports
//!   this module; never the reverse).
//! - `filter.rs`: [`TagFilter`], which tags of a repository a rule takes
//!   (include/exclude regexes, a semver range, the newest N), and the
//!   cosign-style signature tags of a digest. The platform filter for an
//!   index's children is `crate::registry::Platform`, with the index parsing.
//! - `schedule.rs`: [`Schedule`], when a rule runs next (an interval or a
//!   cron expression in UTC, plus jitter).
//! - The engine (`run.rs`: list tags, filter, resolve each by `HEAD`, fetch
//!   only what the cache lacks, report) and the scheduler that runs each rule
//!   in the background, one run at a time per rule.
//!
//! Dependencies: `sync → mirror → {cache, upstream} → registry`. Sync goes
//! through the same upstream client and cache facade as the pull path
//! (credentials, token cache, rate limits, verify-on-write) and never touches
//! their internals. It never serves requests: the server serves what sync
//! put in the cache like anything else. Settings, filters and schedules do no
//! I/O and read no clock; the caller passes the time.

mod filter;
mod schedule;
mod settings;

pub use filter::{is_signature_tag, parse_version, signature_tags, KeepLast, TagFilter};
pub use schedule::{Schedule, ScheduleError, ScheduleKind};
pub use settings::{RepoRule, SyncRule};
