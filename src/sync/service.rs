//! Sync rules at work in a running wharf: one [`Syncer`] holds the rules,
//! runs each on its schedule in the background (one run at a time per rule),
//! runs them on demand (`wharf sync`, through the admin socket or on a cache
//! no server holds), remembers each rule's last run in the cache's notes, and
//! counts in Prometheus.
//!
//! Never fetches anything itself: a run (`run.rs`) goes through the mirror.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::mirror::Mirror;

use super::report::{Event, Summary};
use super::run::Run;
use super::schedule::ScheduleKind;
use super::settings::SyncRule;

/// Metrics of sync runs, by rule.
pub struct SyncMetrics {
    pub last_start: IntGaugeVec,
    pub last_end: IntGaugeVec,
    pub last_success: IntGaugeVec,
    pub images: IntCounterVec,
    pub bytes: IntCounterVec,
    pub failures: IntCounterVec,
    pub pauses: IntCounterVec,
}

impl SyncMetrics {
    pub fn new(r: &Registry) -> SyncMetrics {
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["rule"]).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        SyncMetrics {
            last_start: gauge(
                "wharf_sync_last_run_start_seconds",
                "Unix time the rule's last run started",
            ),
            last_end: gauge(
                "wharf_sync_last_run_end_seconds",
                "Unix time the rule's last run ended",
            ),
            last_success: gauge(
                "wharf_sync_last_run_success",
                "1 if the rule's last run synced every selected tag, else 0",
            ),
            images: counter(
                "wharf_sync_images_total",
                "Tags handled by sync runs: result=synced, unchanged or failed",
                &["rule", "result"],
            ),
            bytes: counter(
                "wharf_sync_fetched_bytes_total",
                "Blob bytes sync runs fetched from the upstream",
                &["rule"],
            ),
            failures: counter(
                "wharf_sync_failed_runs_total",
                "Sync runs that ended with at least one failure",
                &["rule"],
            ),
            pauses: counter(
                "wharf_sync_pauses_total",
                "Times a sync run waited for an upstream's rate limit",
                &["rule"],
            ),
        }
    }
}

/// Why `Syncer::run` did not run a rule.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("no sync rule named {0:?} (the configuration has: {1})")]
    UnknownRule(String, String),
    #[error("sync rule {0:?} is running now; one run at a time per rule")]
    Busy(String),
    #[error("the configuration has no [[sync]] rules (is --config the right file?)")]
    NoRules,
}

/// The rules of a running (or CLI-opened) wharf.
pub struct Syncer {
    mirror: Mirror,
    rules: Vec<SyncRule>,
    running: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// When each scheduled rule runs next (unix seconds), as its schedule
    /// task chose (with jitter, so it cannot be recomputed).
    next: parking_lot::Mutex<HashMap<String, u64>>,
    metrics: SyncMetrics,
}

fn last_run_key(rule: &str) -> String {
    format!("sync-run/{rule}")
}

impl Syncer {
    pub fn new(mirror: Mirror, rules: Vec<SyncRule>, registry: &Registry) -> Syncer {
        let running = rules
            .iter()
            .map(|r| (r.name.clone(), Arc::default()))
            .collect();
        Syncer {
            mirror,
            rules,
            running,
            next: Default::default(),
            metrics: SyncMetrics::new(registry),
        }
    }

    pub fn rules(&self) -> &[SyncRule] {
        &self.rules
    }

    /// The rules named (all when `names` is empty), or which one is unknown.
    pub fn chosen(&self, names: &[String]) -> Result<Vec<&SyncRule>, SyncError> {
        if self.rules.is_empty() {
            return Err(SyncError::NoRules);
        }
        if names.is_empty() {
            return Ok(self.rules.iter().collect());
        }
        names
            .iter()
            .map(|n| {
                self.rules.iter().find(|r| &r.name == n).ok_or_else(|| {
                    let have: Vec<&str> = self.rules.iter().map(|r| r.name.as_str()).collect();
                    SyncError::UnknownRule(n.clone(), have.join(", "))
                })
            })
            .collect()
    }

    /// Runs one rule now; if it is running already (its schedule), waits
    /// for that run to end first: one run at a time per rule.
    pub async fn run(
        &self,
        rule: &SyncRule,
        dry_run: bool,
        emit: &(dyn Fn(Event) + Send + Sync),
    ) -> Result<Summary, SyncError> {
        let lock = self.running[&rule.name].clone();
        let _guard = lock.lock().await;
        Ok(self.run_locked(rule, dry_run, emit).await)
    }

    /// A scheduled run: skipped when the rule is running already.
    async fn run_scheduled(&self, rule: &SyncRule) -> Result<Summary, SyncError> {
        let lock = self.running[&rule.name].clone();
        let Ok(_guard) = lock.try_lock() else {
            return Err(SyncError::Busy(rule.name.clone()));
        };
        Ok(self.run_locked(rule, false, &|_| {}).await)
    }

    async fn run_locked(
        &self,
        rule: &SyncRule,
        dry_run: bool,
        emit: &(dyn Fn(Event) + Send + Sync),
    ) -> Summary {
        let m = &self.metrics;
        if !dry_run {
            m.last_start
                .with_label_values(&[&rule.name])
                .set(unix_now() as i64);
        }
        tracing::info!(rule = %rule.name, dry_run, "sync run started");
        let summary = Run::new(&self.mirror, rule, dry_run, emit, m).run().await;
        if !dry_run {
            m.last_end
                .with_label_values(&[&rule.name])
                .set(summary.finished as i64);
            m.last_success
                .with_label_values(&[&rule.name])
                .set(i64::from(summary.ok()));
            if !summary.ok() {
                m.failures.with_label_values(&[&rule.name]).inc();
            }
            let cache = self.mirror.cache();
            if let Err(e) = cache
                .set_note(&last_run_key(&rule.name), &summary)
                .and_then(|_| cache.flush())
            {
                tracing::warn!(rule = %rule.name, error = %e, "cannot record the sync run");
            }
        }
        tracing::info!(
            rule = %rule.name, synced = summary.synced, unchanged = summary.unchanged,
            failed = summary.failed.len(), bytes = summary.bytes_fetched,
            "sync run finished"
        );
        emit(Event::RunFinished {
            summary: summary.clone(),
        });
        summary
    }

    /// The rule's last real run, as recorded in the cache.
    pub fn last_run(&self, rule: &str) -> Option<Summary> {
        self.mirror.cache().note(&last_run_key(rule)).ok().flatten()
    }

    /// Whether the rule is running now (on its schedule or for `wharf sync`).
    pub fn is_running(&self, rule: &str) -> bool {
        self.running
            .get(rule)
            .is_some_and(|l| l.try_lock().is_err())
    }

    /// When the rule's schedule runs it next (unix seconds); `None` for a
    /// rule with no schedule, or before its task chose.
    pub fn next_run_at(&self, rule: &str) -> Option<u64> {
        self.next.lock().get(rule).copied()
    }

    /// Runs each scheduled rule on its schedule until the task is aborted.
    /// A rule whose last run is older than its interval runs soon after
    /// start; a rule that is running (from `wharf sync`) skips that slot.
    pub fn spawn_schedules(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        self.rules
            .iter()
            .filter(|r| r.schedule.is_some())
            .map(|rule| {
                let (this, rule) = (self.clone(), rule.clone());
                tokio::spawn(async move {
                    loop {
                        let last = this.last_run(&rule.name).map(|s| s.started);
                        let Some(next) = next_run(&rule, last, SystemTime::now()) else {
                            tracing::warn!(rule = %rule.name, "the schedule has no next time; not running it again");
                            return;
                        };
                        let wait = next
                            .duration_since(SystemTime::now())
                            .unwrap_or(Duration::ZERO);
                        let at = next.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                        this.next.lock().insert(rule.name.clone(), at);
                        tracing::info!(rule = %rule.name, in_s = wait.as_secs(), "next sync run");
                        tokio::time::sleep(wait).await;
                        if let Err(e) = this.run_scheduled(&rule).await {
                            tracing::info!(rule = %rule.name, error = %e, "scheduled sync skipped");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                })
            })
            .collect()
    }
}

/// When a scheduled rule runs next. An interval counts from the last run's
/// start: a rule that never ran, or is overdue (wharf was down), runs now
/// (plus jitter). A cron schedule runs at its next time after now (a missed
/// slot is not made up at start-up). `None`: never again.
fn next_run(rule: &SyncRule, last_start: Option<u64>, now: SystemTime) -> Option<SystemTime> {
    let schedule = rule.schedule.as_ref()?;
    let rng = random_u64();
    match &schedule.kind {
        ScheduleKind::Interval(every) => {
            let due = last_start
                .map(|s| UNIX_EPOCH + Duration::from_secs(s) + *every)
                .unwrap_or(now);
            let jitter = if schedule.jitter.is_zero() {
                Duration::ZERO
            } else {
                Duration::from_nanos(rng % schedule.jitter.as_nanos().max(1) as u64)
            };
            Some(due.max(now) + jitter)
        }
        ScheduleKind::Cron(_) => schedule.next_after(now, rng),
    }
}

fn unix_now() -> u64 {
    crate::cache::now_secs()
}

fn random_u64() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    u64::from_le_bytes(b)
}
