//! Request coalescing for small objects (manifests, tag resolutions): concurrent
//! callers with the same key share one execution of the work. The work runs in
//! its own task, so it completes (and fills the cache) even if the caller that
//! started it goes away; waiters are woken by a `watch` channel, not polling.
//!
//! A panic in the work stays in its task: every caller of that run gets
//! [`Recover::panicked`] (an error), the key is free again, and the next
//! request runs the work afresh. A panic is never re-raised in the callers,
//! nor re-run by each of them in turn.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt as _;
use parking_lot::Mutex;
use tokio::sync::watch;

/// The work of a coalesced run panicked (a bug, logged where it happened);
/// its callers get this as their error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an internal error stopped this request (wharf's log has the details); retry")]
pub struct Panicked;

/// What a run's callers get when its work panicked: for `Result<T, E>`, an
/// `Err` made from [`Panicked`].
pub trait Recover {
    fn panicked() -> Self;
}

impl<T, E: From<Panicked>> Recover for Result<T, E> {
    fn panicked() -> Self {
        Err(Panicked.into())
    }
}

pub struct Coalescer<K, V> {
    inflight: Arc<Mutex<HashMap<K, watch::Receiver<Option<V>>>>>,
}

impl<K, V> Default for Coalescer<K, V> {
    fn default() -> Self {
        Coalescer {
            inflight: Arc::default(),
        }
    }
}

impl<K, V> Coalescer<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Recover + Clone + Send + Sync + 'static,
{
    /// Runs `work` for `key`, or waits for the run already in flight. Returns the
    /// value and whether this caller joined someone else's run.
    pub async fn run<F, Fut>(&self, key: K, work: F) -> (V, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let (mut rx, joined) = {
            let mut map = self.inflight.lock();
            match map.get(&key) {
                Some(rx) => (rx.clone(), true),
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.insert(key.clone(), rx.clone());
                    let fut = work();
                    let inflight = self.inflight.clone();
                    let k = key.clone();
                    tokio::spawn(async move {
                        let v = match AssertUnwindSafe(fut).catch_unwind().await {
                            Ok(v) => v,
                            Err(p) => {
                                let what = p
                                    .downcast_ref::<&str>()
                                    .map(|s| (*s).to_owned())
                                    .or_else(|| p.downcast_ref::<String>().cloned())
                                    .unwrap_or_default();
                                tracing::error!(panic = %what, "coalesced work panicked; its callers get an error and the next request runs it again");
                                V::panicked()
                            }
                        };
                        // Remove first: a caller arriving after this sees no
                        // entry and reads the (now filled) cache itself.
                        inflight.lock().remove(&k);
                        let _ = tx.send(Some(v));
                    });
                    (rx, false)
                }
            }
        };
        let got = rx
            .wait_for(|v| v.is_some())
            .await
            .map(|v| v.clone().expect("waited for Some"));
        match got {
            Ok(v) => (v, joined),
            // The task went away without an answer (the runtime is shutting
            // down): an error, and the key is free again.
            Err(_) => {
                let mut map = self.inflight.lock();
                if map.get(&key).is_some_and(|r| r.same_channel(&rx)) {
                    map.remove(&key);
                }
                (V::panicked(), joined)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type R = Result<u32, Panicked>;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let c: Arc<Coalescer<&'static str, R>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let (gate_tx, gate_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (c, runs, mut gate) = (c.clone(), runs.clone(), gate_rx.clone());
            tasks.push(tokio::spawn(async move {
                c.run("k", move || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    gate.wait_for(|open| *open).await.unwrap();
                    Ok(42)
                })
                .await
            }));
        }
        tokio::task::yield_now().await;
        gate_tx.send(true).unwrap();
        let mut joined = 0;
        for t in tasks {
            let (v, j) = t.await.unwrap();
            assert_eq!(v, Ok(42));
            joined += j as usize;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(joined, 9);
        // Once finished, the next call runs again.
        let (v, j) = c.run("k", || async { Ok(7) }).await;
        assert_eq!((v, j), (Ok(7), false));
    }

    /// Regression: a panic in the work (a token lifetime overflowing the
    /// clock) was re-raised in the leader, and each waiter then re-ran the
    /// work and panicked in turn.
    #[tokio::test]
    async fn a_panic_reaches_no_caller_and_the_next_request_retries() {
        let c: Arc<Coalescer<&'static str, R>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let (gate_tx, gate_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let (c, runs, mut gate) = (c.clone(), runs.clone(), gate_rx.clone());
            tasks.push(tokio::spawn(async move {
                c.run("k", move || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    gate.wait_for(|open| *open).await.unwrap();
                    if runs.load(Ordering::SeqCst) > 0 {
                        panic!("boom");
                    }
                    Ok(1)
                })
                .await
            }));
        }
        tokio::task::yield_now().await;
        gate_tx.send(true).unwrap();
        for t in tasks {
            let (v, _) = t.await.expect("no caller panics");
            assert_eq!(v, Err(Panicked));
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "the work ran once, not once per caller"
        );
        let (v, j) = c.run("k", || async { Ok(2) }).await;
        assert_eq!((v, j), (Ok(2), false), "the next request runs it again");
    }
}
