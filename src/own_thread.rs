//! Threads of wharf's own that run jobs one at a time, in order:
//! `wharf-scan` reads the whole metadata (the cache's start-up
//! reconciliation and every catalog build: `wharf ls`, `wharf du`, the
//! status page); `wharf-status` renders the status page's views. Eviction
//! passes, `gc` and `rm` still scan on their caller's blocking thread:
//! moving them to `wharf-scan` is the next step.
//!
//! Why threads of their own: glibc gives each thread an arena, and keeps
//! what is freed in the arena that allocated it. sled's page cache is filled
//! by whichever thread reads; when a full scan ran on a random blocking
//! thread, sled reloaded its 16 MiB cache into that thread's arena while the
//! copies in the arena of the thread that filled it at start were freed
//! among live memory and at that arena's top, where `malloc_trim` returns
//! only whole free pages and never a thread arena's top (`crate::memory`):
//! the status page's first view left 25 MiB resident on a 100,000-blob
//! cache. Work of one kind on one thread frees and reuses memory in one
//! arena (`benches/status_rss.py`), and running one job at a time bounds
//! the scratch memory to one job's.
//!
//! Owns: the thread and its queue. Never runs anything on a registry
//! request's path. [`OwnThread::run`] blocks its caller until the job has
//! run (call it from blocking threads); [`OwnThread::run_async`] awaits it.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::mpsc;

type Job = Box<dyn FnOnce() + Send>;

pub struct OwnThread {
    jobs: parking_lot::Mutex<mpsc::Sender<Job>>,
}

impl OwnThread {
    /// Starts the thread `name`; it ends when this is dropped.
    pub fn start(name: &str) -> std::io::Result<OwnThread> {
        OwnThread::start_with(name, || {})
    }

    /// Starts the thread `name`, which runs `first` before any job.
    pub fn start_with(
        name: &str,
        first: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<OwnThread> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                first();
                for job in rx {
                    job();
                }
            })?;
        Ok(OwnThread {
            jobs: parking_lot::Mutex::new(tx),
        })
    }

    fn send(&self, job: Job) {
        self.jobs
            .lock()
            .send(job)
            .expect("the thread ends only when its owner is dropped");
    }

    /// Runs `f` on the thread and returns its result; a panic in `f` is
    /// resumed here.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, result) = mpsc::sync_channel(1);
        self.send(Box::new(move || {
            let _ = done.send(catch_unwind(AssertUnwindSafe(f)));
        }));
        match result.recv() {
            Ok(Ok(v)) => v,
            Ok(Err(panic)) => resume_unwind(panic),
            Err(_) => panic!("the thread dropped a job"),
        }
    }

    /// [`run`](Self::run) for async callers: no thread waits meanwhile. If
    /// the caller is dropped before the job's turn (a client went away), the
    /// job is dropped unrun.
    pub async fn run_async<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, result) = tokio::sync::oneshot::channel();
        self.send(Box::new(move || {
            if !done.is_closed() {
                let _ = done.send(catch_unwind(AssertUnwindSafe(f)));
            }
        }));
        match result.await {
            Ok(Ok(v)) => v,
            Ok(Err(panic)) => resume_unwind(panic),
            Err(_) => panic!("the thread dropped a job"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_on_one_thread_in_turn_and_panics_come_back() {
        let t = OwnThread::start("test-own").unwrap();
        let a = t.run(|| std::thread::current().id());
        let b = t.run(|| std::thread::current().id());
        assert_eq!(a, b);
        assert_ne!(a, std::thread::current().id());
        assert_eq!(
            t.run(|| std::thread::current().name().map(str::to_owned)),
            Some("test-own".into())
        );
        let caught = catch_unwind(AssertUnwindSafe(|| t.run(|| panic!("boom"))));
        assert!(caught.is_err());
        assert_eq!(t.run(|| 7), 7, "the thread survives a job's panic");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let c = rt.block_on(t.run_async(|| std::thread::current().id()));
        assert_eq!(a, c, "async callers reach the same thread");
        let caught = catch_unwind(AssertUnwindSafe(|| {
            rt.block_on(t.run_async(|| panic!("boom")))
        }));
        assert!(caught.is_err());
        assert_eq!(rt.block_on(t.run_async(|| 8)), 8);
    }

    #[test]
    fn a_job_whose_async_caller_is_gone_does_not_run() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let t = OwnThread::start("test-own").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let ran = std::sync::Arc::new(AtomicBool::new(false));
        std::thread::scope(|s| {
            let (started, is_started) = mpsc::channel();
            let (gate, wait) = mpsc::channel::<()>();
            s.spawn(|| {
                t.run(move || {
                    started.send(()).unwrap();
                    wait.recv().unwrap()
                })
            });
            is_started.recv().unwrap();
            // Queued behind the running job, then its caller gives up.
            let r = ran.clone();
            let waited = rt.block_on(async {
                tokio::time::timeout(
                    std::time::Duration::from_millis(20),
                    t.run_async(move || r.store(true, Ordering::SeqCst)),
                )
                .await
            });
            assert!(waited.is_err());
            gate.send(()).unwrap();
        });
        assert_eq!(t.run(|| 9), 9, "later jobs run");
        assert!(!ran.load(Ordering::SeqCst), "the abandoned job ran");
    }
}
