//! What the status page needs that nothing else keeps: the last failed
//! requests, a sample of the traffic counters every 10 seconds for the last
//! hour, and the bundle imports (those running and the last few).
//!
//! Owns: three bounded rings in memory (about 150 KiB at most), lost at
//! restart. Must never keep a credential, a request's query or headers, or
//! wharf's internal error detail: only what the client was told.

use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::core::Collector;
use serde::Serialize;

use crate::cache::now_millis;
use crate::metrics::Metrics;

/// Failed requests kept.
pub const PROBLEMS: usize = 100;
/// Traffic samples kept: one hour at one every [`SAMPLE_EVERY`].
pub const SAMPLES: usize = 360;
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Finished bundle imports kept.
const IMPORTS: usize = 10;
/// Longest path and message kept (bytes).
const MAX_PATH: usize = 256;
const MAX_MESSAGE: usize = 512;

/// The status page's own records, one per server.
#[derive(Default)]
pub struct Records {
    problems: Mutex<VecDeque<Problem>>,
    samples: Mutex<VecDeque<Sample>>,
    imports: Mutex<Imports>,
    started_ms: std::sync::OnceLock<u64>,
}

/// One failed request, as its client was answered.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    pub at_ms: u64,
    pub method: String,
    /// The endpoint label of `wharf_requests_total`.
    pub endpoint: &'static str,
    /// The path (no query), cut at 256 bytes.
    pub path: String,
    pub upstream: Option<String>,
    pub status: u16,
    /// The OCI error code.
    pub code: &'static str,
    /// Whose fault: client, upstream or wharf.
    pub blame: &'static str,
    /// The message the client got (never wharf's internal detail).
    pub message: String,
    pub client: Option<String>,
}

/// The traffic counters at one moment (cumulative since start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Sample {
    pub at_ms: u64,
    /// Blob bytes sent to clients from verified files.
    pub served_cache: u64,
    /// Blob bytes sent to clients while they were fetched.
    pub served_upstream: u64,
    /// Blob bytes received from upstreams.
    pub fetched: u64,
    /// Lookups answered from the cache, and all lookups (see
    /// [`super::model::hit_ratio`]).
    pub hits: u64,
    pub lookups: u64,
}

/// Bundle imports: those running (each under the id its start returned)
/// and the last finished ones.
#[derive(Default)]
struct Imports {
    next_id: u64,
    running: Vec<(u64, ImportProgress)>,
    done: VecDeque<ImportOutcome>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ImportProgress {
    /// The bundle directory's last component.
    pub bundle: String,
    pub started_ms: u64,
    /// Planned: blobs and bytes to copy, blobs already present.
    pub blobs: usize,
    pub bytes: u64,
    pub present: usize,
    pub copied: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ImportOutcome {
    pub bundle: String,
    pub started_ms: u64,
    pub finished_ms: u64,
    pub ok: bool,
    /// The import's report, or the error it ended with.
    pub report: serde_json::Value,
}

/// At most `max` bytes of `s`, on a character boundary.
pub(super) fn prefix(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s` cut at `max` bytes, marked with `…` when it was.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    format!("{}…", prefix(s, max))
}

impl Records {
    pub fn new() -> Records {
        let r = Records::default();
        let _ = r.started_ms.set(now_millis());
        r
    }

    pub fn started_ms(&self) -> u64 {
        *self.started_ms.get_or_init(now_millis)
    }

    /// Keeps a failed request (the oldest goes past [`PROBLEMS`]).
    pub fn problem(&self, mut p: Problem) {
        p.path = cut(&p.path, MAX_PATH);
        p.method = cut(&p.method, 16);
        p.message = cut(&p.message, MAX_MESSAGE);
        let mut q = self.problems.lock();
        if q.len() == PROBLEMS {
            q.pop_front();
        }
        q.push_back(p);
    }

    /// Newest first.
    pub fn problems(&self) -> Vec<Problem> {
        self.problems.lock().iter().rev().cloned().collect()
    }

    /// Takes a sample of the counters now.
    pub fn sample(&self, metrics: &Metrics) {
        let s = Sample::of(metrics);
        let mut q = self.samples.lock();
        if q.len() == SAMPLES {
            q.pop_front();
        }
        q.push_back(s);
    }

    /// Oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().iter().copied().collect()
    }

    /// Samples the counters every [`SAMPLE_EVERY`] until `stop`.
    pub async fn sample_until(
        &self,
        metrics: &Metrics,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sample(metrics),
                _ = &mut stop => return,
            }
        }
    }

    /// An import begins; the id names it in its events and its end.
    pub fn import_started(&self, bundle: &str) -> u64 {
        let mut imports = self.imports.lock();
        imports.next_id += 1;
        let id = imports.next_id;
        imports.running.push((
            id,
            ImportProgress {
                bundle: cut(bundle, MAX_PATH),
                started_ms: now_millis(),
                blobs: 0,
                bytes: 0,
                present: 0,
                copied: 0,
            },
        ));
        id
    }

    /// An import's event (see `airgap::Event`).
    pub fn import_event(&self, id: u64, e: &crate::airgap::Event) {
        use crate::airgap::Event;
        let mut imports = self.imports.lock();
        let Some((_, p)) = imports.running.iter_mut().find(|(i, _)| *i == id) else {
            return;
        };
        match e {
            Event::Planned {
                blobs,
                bytes,
                left_out,
                ..
            } => {
                p.blobs = *blobs;
                p.bytes = *bytes;
                p.present = *left_out;
            }
            Event::Copied { bytes, .. } => p.copied = *bytes,
            Event::Note { .. } | Event::Done { .. } | Event::Error { .. } => {}
        }
    }

    /// Import `id` ended with `report` (its report, or its error).
    pub fn import_finished(&self, id: u64, ok: bool, report: serde_json::Value) {
        let mut imports = self.imports.lock();
        let Some(at) = imports.running.iter().position(|(i, _)| *i == id) else {
            return;
        };
        let (_, p) = imports.running.remove(at);
        if imports.done.len() == IMPORTS {
            imports.done.pop_front();
        }
        imports.done.push_back(ImportOutcome {
            bundle: p.bundle,
            started_ms: p.started_ms,
            finished_ms: now_millis(),
            ok,
            report,
        });
    }

    /// The running imports, and the finished ones newest first.
    pub fn imports(&self) -> (Vec<ImportProgress>, Vec<ImportOutcome>) {
        let i = self.imports.lock();
        (
            i.running.iter().map(|(_, p)| p.clone()).collect(),
            i.done.iter().rev().cloned().collect(),
        )
    }
}

impl Sample {
    /// The counters now, summed over their labels: the same figures
    /// `/metrics` shows.
    pub fn of(m: &Metrics) -> Sample {
        let served = |source: &str| sum(m.served_bytes.collect(), &[("source", source)]);
        let results = m.cache_results.collect();
        let by_result = |r: &str| sum(results.clone(), &[("result", r)]);
        let hits = ["hit", "revalidated", "stale"]
            .iter()
            .map(|r| by_result(r))
            .sum();
        let lookups = sum(results.clone(), &[]) - by_result("pass");
        Sample {
            at_ms: now_millis(),
            served_cache: served("cache"),
            served_upstream: served("upstream"),
            fetched: sum(m.upstream_bytes.collect(), &[]),
            hits,
            lookups,
        }
    }
}

/// The sum of a counter or gauge family's series whose labels include
/// every `(name, value)` of `want`.
pub fn sum(families: Vec<prometheus::proto::MetricFamily>, want: &[(&str, &str)]) -> u64 {
    let mut total = 0.0;
    for f in &families {
        let gauge = f.get_field_type() == prometheus::proto::MetricType::GAUGE;
        for m in f.get_metric() {
            let labelled = want.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            });
            if labelled {
                total += if gauge {
                    m.get_gauge().get_value()
                } else {
                    m.get_counter().get_value()
                };
            }
        }
    }
    total as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(i: usize) -> Problem {
        Problem {
            at_ms: i as u64,
            method: "GET".into(),
            endpoint: "manifest",
            path: format!("/v2/a/manifests/{}", "x".repeat(i)),
            upstream: None,
            status: 404,
            code: "MANIFEST_UNKNOWN",
            blame: "client",
            message: "é".repeat(400),
            client: None,
        }
    }

    #[test]
    fn problems_are_bounded_newest_first_and_cut_on_char_boundaries() {
        let r = Records::new();
        for i in 0..PROBLEMS + 5 {
            r.problem(problem(i));
        }
        let p = r.problems();
        assert_eq!(p.len(), PROBLEMS);
        assert_eq!(p[0].at_ms, (PROBLEMS + 4) as u64);
        assert_eq!(p[PROBLEMS - 1].at_ms, 5);
        assert!(p[0].path.len() <= MAX_PATH + '…'.len_utf8());
        assert!(p[0].message.len() <= MAX_MESSAGE + '…'.len_utf8());
        assert!(p[0].message.ends_with('…'));
    }

    #[test]
    fn samples_sum_what_metrics_shows() {
        let m = Metrics::new();
        m.served_bytes.with_label_values(&["cache"]).inc_by(7);
        m.served_bytes.with_label_values(&["upstream"]).inc_by(5);
        m.upstream_bytes.with_label_values(&["a"]).inc_by(3);
        m.upstream_bytes.with_label_values(&["b"]).inc_by(4);
        for (r, n) in [("hit", 6), ("revalidated", 1), ("miss", 2), ("pass", 9)] {
            m.cache_results.with_label_values(&["blob", r]).inc_by(n);
        }
        m.cache_results
            .with_label_values(&["manifest", "hit"])
            .inc();
        let s = Sample::of(&m);
        assert_eq!((s.served_cache, s.served_upstream, s.fetched), (7, 5, 7));
        assert_eq!((s.hits, s.lookups), (8, 10));
        let r = Records::new();
        for _ in 0..SAMPLES + 1 {
            r.sample(&m);
        }
        assert_eq!(r.samples().len(), SAMPLES);
    }

    #[test]
    fn an_import_is_followed_then_kept() {
        use crate::airgap::Event;
        let r = Records::new();
        let other = r.import_started("other");
        let id = r.import_started("site-2026-11");
        r.import_event(
            id,
            &Event::Planned {
                refs: 2,
                blobs: 3,
                bytes: 300,
                left_out: 1,
            },
        );
        r.import_event(
            id,
            &Event::Copied {
                bytes: 100,
                total: 300,
            },
        );
        let (running, done) = r.imports();
        assert_eq!(running.len(), 2, "two at once");
        let p = &running[1];
        assert_eq!((p.blobs, p.bytes, p.present, p.copied), (3, 300, 1, 100));
        assert!(done.is_empty());
        r.import_finished(id, false, serde_json::json!({"error": "bad signature"}));
        let (running, done) = r.imports();
        assert_eq!(running.len(), 1);
        assert_eq!(running[0].bundle, "other", "the other one still runs");
        assert_eq!(done[0].bundle, "site-2026-11");
        assert!(!done[0].ok);
        r.import_finished(other, true, serde_json::json!({}));
        assert!(r.imports().0.is_empty());
    }
}
