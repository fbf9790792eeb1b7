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
//! - `run.rs`: the engine, one run of one rule (list tags, filter, resolve
//!   each by `HEAD`, fetch only what the cache lacks, pin, prune, pace
//!   itself by the upstream's rate limit).
//! - `service.rs`: [`Syncer`], the rules of a running wharf: runs each on its
//!   schedule in the background and on demand, one run at a time per rule,
//!   remembers the last run, counts in Prometheus ([`SyncMetrics`]).
//! - `report.rs`: the [`Event`]s a run emits and its [`Summary`], shown as
//!   progress bars or JSON lines ([`Renderer`]).
//!
//! Dependencies: `sync → mirror → {cache, upstream} → registry`. Sync goes
//! through the same upstream client and cache facade as the pull path
//! (credentials, token cache, rate limits, verify-on-write) and never touches
//! their internals. It never serves requests: the server serves what sync
//! put in the cache like anything else. Settings, filters and schedules do no
//! I/O and read no clock; the caller passes the time.

mod filter;
mod report;
mod run;
mod schedule;
mod service;
mod settings;

pub use report::{human_bytes, summary_line, Event, Failure, Renderer, Summary, SyncedRef};
pub use service::{SyncError, SyncMetrics, Syncer};

pub use filter::{is_signature_tag, parse_version, signature_tags, KeepLast, TagFilter};
pub use schedule::{Schedule, ScheduleError, ScheduleKind};
pub use settings::{is_valid_rule_name, RepoRule, SyncRule, MAX_RULE_NAME};
