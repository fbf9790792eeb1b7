//! What a sync run says while it runs (one [`Event`] per step) and when it
//! ends (a [`Summary`]), and how the CLI shows them: progress bars on a
//! terminal, one JSON object per line otherwise.
//!
//! Never decides anything: the engine (`run.rs`) emits, this renders.

use std::collections::HashMap;
use std::io::Write;

use serde::{Deserialize, Serialize};

/// One step of a run. Serialized as `{"event": "<kind>", ...}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        rule: String,
        dry_run: bool,
    },
    /// A repository's tags were listed and filtered.
    RepoListed {
        rule: String,
        repo: String,
        tags: usize,
        selected: usize,
    },
    RepoFailed {
        rule: String,
        repo: String,
        reason: String,
    },
    /// An image (or its signature) is now complete in the cache.
    Synced {
        rule: String,
        reference: String,
        digest: String,
        manifests: u64,
        blobs: u64,
        bytes: u64,
    },
    /// The tag still points where it did and its content is all here.
    Unchanged {
        rule: String,
        reference: String,
        digest: String,
    },
    /// A dry run's verdict for one reference: what a real run would fetch.
    /// `complete = false` when the manifest itself is not cached, so its
    /// blobs cannot be counted without fetching it.
    Planned {
        rule: String,
        reference: String,
        digest: String,
        manifests: u64,
        blobs: u64,
        bytes: u64,
        complete: bool,
    },
    Failed {
        rule: String,
        reference: String,
        reason: String,
    },
    /// Waiting for an upstream's rate limit.
    Paused {
        rule: String,
        upstream: String,
        seconds: u64,
        reason: String,
    },
    /// `prune`: a tag no longer selected lost the rule's pin.
    Unpinned {
        rule: String,
        pattern: String,
    },
    RunFinished {
        summary: Summary,
    },
}

/// A reference the run left complete in the cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedRef {
    pub upstream: String,
    pub repository: String,
    pub tag: String,
    pub digest: String,
    pub media_type: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Failure {
    /// `upstream/repo:tag`, or `upstream/repo` when listing failed.
    pub reference: String,
    pub reason: String,
}

/// How a run ended.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    pub rule: String,
    pub dry_run: bool,
    /// Unix seconds.
    pub started: u64,
    pub finished: u64,
    pub synced: u64,
    pub unchanged: u64,
    pub failed: Vec<Failure>,
    pub manifests_fetched: u64,
    pub blobs_fetched: u64,
    pub bytes_fetched: u64,
    /// Seconds spent waiting for rate limits.
    pub paused_seconds: u64,
    /// Every reference selected and complete (synced or unchanged), with
    /// signature tags: what `wharf bundle create --sync` carries.
    pub refs: Vec<SyncedRef>,
}

impl Summary {
    /// One tag synced (or, in a dry run, planned) with what it fetched.
    pub fn count(&mut self, manifests: u64, blobs: u64, bytes: u64) {
        self.synced += 1;
        self.manifests_fetched += manifests;
        self.blobs_fetched += blobs;
        self.bytes_fetched += bytes;
    }

    pub fn ok(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Renders events for a person at a terminal, or as JSON lines.
pub struct Renderer {
    json: bool,
    bars: Option<indicatif::MultiProgress>,
    by_rule: HashMap<String, indicatif::ProgressBar>,
}

impl Renderer {
    /// JSON lines when asked, or when stdout is not a terminal.
    pub fn new(json: bool) -> Renderer {
        let json = json || !std::io::IsTerminal::is_terminal(&std::io::stdout());
        Renderer {
            json,
            bars: (!json).then(indicatif::MultiProgress::new),
            by_rule: HashMap::new(),
        }
    }

    pub fn show(&mut self, e: &Event) {
        if self.json {
            let mut out = std::io::stdout().lock();
            let _ = serde_json::to_writer(&mut out, e);
            let _ = writeln!(out);
            let _ = out.flush();
            return;
        }
        let bars = self.bars.as_ref().expect("bars on a terminal");
        match e {
            Event::RunStarted { rule, dry_run } => {
                let bar = bars.add(indicatif::ProgressBar::new(0));
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix:>12} [{bar:30}] {pos}/{len} {msg}",
                    )
                    .expect("static template")
                    .progress_chars("=> "),
                );
                bar.set_prefix(rule.clone());
                bar.set_message(if *dry_run { "planning" } else { "syncing" });
                self.by_rule.insert(rule.clone(), bar);
            }
            Event::RepoListed { rule, selected, .. } => {
                if let Some(b) = self.by_rule.get(rule) {
                    b.inc_length(*selected as u64);
                }
            }
            Event::Synced {
                rule, reference, ..
            }
            | Event::Unchanged {
                rule, reference, ..
            }
            | Event::Planned {
                rule, reference, ..
            } => {
                if let Some(b) = self.by_rule.get(rule) {
                    if !reference.contains(":sha256-") {
                        b.inc(1);
                    }
                    b.set_message(reference.clone());
                }
            }
            Event::Failed {
                rule,
                reference,
                reason,
            } => {
                if let Some(b) = self.by_rule.get(rule) {
                    b.inc(1);
                    b.println(format!("failed: {reference}: {reason}"));
                }
            }
            Event::RepoFailed { rule, repo, reason } => {
                let _ = bars.println(format!("{rule}: {repo}: {reason}"));
            }
            Event::Paused {
                upstream,
                seconds,
                reason,
                ..
            } => {
                let _ = bars.println(format!("pausing {seconds} s for {upstream}: {reason}"));
            }
            Event::Unpinned { rule, pattern } => {
                let _ = bars.println(format!("{rule}: unpinned {pattern}"));
            }
            Event::RunFinished { summary } => {
                if let Some(b) = self.by_rule.remove(&summary.rule) {
                    b.finish_and_clear();
                }
                let _ = bars.println(summary_line(summary));
            }
        }
    }
}

/// One line a person reads at the end of a run.
pub fn summary_line(s: &Summary) -> String {
    let mut line = format!(
        "{}{}: {} synced, {} unchanged, {} failed; fetched {} manifests, {} blobs, {}",
        s.rule,
        if s.dry_run { " (dry run)" } else { "" },
        s.synced,
        s.unchanged,
        s.failed.len(),
        s.manifests_fetched,
        s.blobs_fetched,
        human_bytes(s.bytes_fetched),
    );
    if s.paused_seconds > 0 {
        line.push_str(&format!("; paused {} s for rate limits", s.paused_seconds));
    }
    for f in &s.failed {
        line.push_str(&format!("\n  failed: {}: {}", f.reference, f.reason));
    }
    line
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
