//! Air-gapped sites: the operations that move content across the gap, on a
//! cache. On the connected side, [`create_bundle`] writes what sync rules (or
//! named images) put in the cache into a bundle, leaving out what the site's
//! [`SiteInventory`] (or an earlier bundle) already has; at the site,
//! [`import_bundle`] writes a verified bundle into the cache and moves tags
//! last, and [`SiteInventory`] says what the site holds.
//!
//! Dependencies: `airgap → {bundle, sync, mirror, cache}`. The bundle format
//! itself (volumes, signatures, verification) is [`crate::bundle`]'s; this
//! module never reads a bundle byte without going through it, and never
//! writes into the cache except through the cache's verify-on-write fills
//! and manifest commits.

mod admit;
mod create;
mod import;
mod inventory;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::bundle::BundleError;
use crate::cache::{CacheError, FillError};
use crate::mirror::MirrorError;

pub use create::{create_bundle, parse_image, CreateRequest};
pub use import::{import_bundle, ImportReport, ImportRequest};
pub use inventory::{now_rfc3339, SiteInventory};

#[derive(Debug, thiserror::Error)]
pub enum AirgapError {
    /// The request itself cannot be done (nothing asked, not cached...).
    #[error("{0}")]
    Request(String),
    /// The import was refused before anything changed.
    #[error("refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("{path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("writing into the cache failed: {0}")]
    Fill(#[from] FillError),
    #[error("internal error: {0}")]
    Join(String),
}

impl AirgapError {
    pub fn file(path: &Path, source: std::io::Error) -> AirgapError {
        AirgapError::File {
            path: path.display().to_string(),
            source,
        }
    }

    fn join(e: tokio::task::JoinError) -> AirgapError {
        AirgapError::Join(e.to_string())
    }
}

/// Progress of a bundle create or import, as the admin socket streams it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Checked and planned: refs, blobs and bytes to copy; `left_out`: blobs
    /// left behind (create) or already present (import).
    Planned {
        refs: usize,
        blobs: usize,
        bytes: u64,
        left_out: usize,
    },
    /// Blob bytes copied so far.
    Copied {
        bytes: u64,
        total: u64,
    },
    Note {
        message: String,
    },
    /// The end: the operation's report.
    Done {
        report: serde_json::Value,
    },
    Error {
        error: String,
    },
}

/// Shows bundle events: a progress bar on a terminal, JSON lines otherwise.
pub struct Progress {
    json: bool,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    pub fn new(json: bool) -> Progress {
        Progress {
            json: json || !std::io::IsTerminal::is_terminal(&std::io::stderr()),
            bar: None,
        }
    }

    pub fn show(&mut self, e: &Event) {
        if self.json {
            if !matches!(e, Event::Done { .. }) {
                eprintln!("{}", serde_json::to_string(e).expect("events serialize"));
            }
            return;
        }
        match e {
            Event::Planned {
                refs,
                blobs,
                bytes,
                left_out,
            } => {
                eprintln!("{refs} refs, {blobs} blobs to copy ({bytes} bytes), {left_out} left out or present");
                let bar = indicatif::ProgressBar::new(*bytes);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "[{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                    )
                    .expect("static template")
                    .progress_chars("=> "),
                );
                self.bar = Some(bar);
            }
            Event::Copied { bytes, .. } => {
                if let Some(b) = &self.bar {
                    b.set_position(*bytes);
                }
            }
            Event::Note { message } => match &self.bar {
                Some(b) => b.println(message),
                None => eprintln!("{message}"),
            },
            Event::Done { .. } | Event::Error { .. } => {
                if let Some(b) = self.bar.take() {
                    b.finish_and_clear();
                }
            }
        }
    }
}
