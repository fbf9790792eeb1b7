//! The thread that reads the whole metadata for the start-up
//! reconciliation and every catalog build (`wharf ls`, `wharf du`, the
//! status page), one at a time. Eviction passes, `gc` and `rm` still scan
//! on their caller's blocking thread: moving them here is the next step.
//!
//! Why a thread of its own: glibc gives each thread an arena. sled's page
//! cache is filled by whichever thread reads; when a full scan ran on a
//! random blocking thread, sled reloaded its 16 MiB cache into that thread's
//! arena while the copies in the arena of the thread that filled it at start
//! were freed among live memory, where `malloc_trim` cannot return them: the
//! status page's first view left 25 MiB resident on a 100,000-blob cache.
//! With those scans on one thread, the pages freed and loaded stay in one
//! arena and are reused (`benches/status_rss.py`). Serialising the scans also
//! bounds their scratch memory to one at a time.
//!
//! Owns: the thread and its queue. Never runs anything on a request's path;
//! callers block until their job has run, so they call from blocking
//! threads.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::mpsc;

type Job = Box<dyn FnOnce() + Send>;

pub struct ScanThread {
    jobs: parking_lot::Mutex<mpsc::Sender<Job>>,
}

impl ScanThread {
    /// Starts the thread; it ends when this is dropped.
    pub fn start() -> std::io::Result<ScanThread> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("wharf-scan".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })?;
        Ok(ScanThread {
            jobs: parking_lot::Mutex::new(tx),
        })
    }

    /// Runs `f` on the scan thread and returns its result; a panic in `f`
    /// is resumed here.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, result) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = done.send(catch_unwind(AssertUnwindSafe(f)));
        });
        self.jobs
            .lock()
            .send(job)
            .expect("the scan thread ends only when its cache is dropped");
        match result.recv() {
            Ok(Ok(v)) => v,
            Ok(Err(panic)) => resume_unwind(panic),
            Err(_) => panic!("the scan thread dropped a job"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_on_one_thread_in_turn_and_panics_come_back() {
        let t = ScanThread::start().unwrap();
        let a = t.run(|| std::thread::current().id());
        let b = t.run(|| std::thread::current().id());
        assert_eq!(a, b);
        assert_ne!(a, std::thread::current().id());
        let caught = catch_unwind(AssertUnwindSafe(|| t.run(|| panic!("boom"))));
        assert!(caught.is_err());
        assert_eq!(t.run(|| 7), 7, "the thread survives a job's panic");
    }
}
