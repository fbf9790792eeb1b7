//! Request coalescing for small objects (manifests, tag resolutions): concurrent
//! callers with the same key share one execution of the work. The work runs in
//! its own task, so it completes (and fills the cache) even if the caller that
//! started it goes away; waiters are woken by a `watch` channel, not polling.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

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
    V: Clone + Send + Sync + 'static,
{
    /// Runs `work` for `key`, or waits for the run already in flight. Returns the
    /// value and whether this caller joined someone else's run.
    pub async fn run<F, Fut>(&self, key: K, work: F) -> (V, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let mut work = Some(work);
        loop {
            let (mut rx, joined) = {
                let mut map = self.inflight.lock();
                match map.get(&key) {
                    Some(rx) => (rx.clone(), true),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        map.insert(key.clone(), rx.clone());
                        let fut = (work.take().expect("a caller leads at most once"))();
                        let inflight = self.inflight.clone();
                        let k = key.clone();
                        tokio::spawn(async move {
                            let v = fut.await;
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
                Ok(v) => return (v, joined),
                // The leading task panicked: try again (and lead if nobody does).
                Err(_) => {
                    self.inflight.lock().remove(&key);
                    if work.is_none() {
                        panic!("coalesced work panicked");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let c: Arc<Coalescer<&'static str, u32>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let (gate_tx, gate_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (c, runs, mut gate) = (c.clone(), runs.clone(), gate_rx.clone());
            tasks.push(tokio::spawn(async move {
                c.run("k", move || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    gate.wait_for(|open| *open).await.unwrap();
                    42
                })
                .await
            }));
        }
        tokio::task::yield_now().await;
        gate_tx.send(true).unwrap();
        let mut joined = 0;
        for t in tasks {
            let (v, j) = t.await.unwrap();
            assert_eq!(v, 42);
            joined += j as usize;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(joined, 9);
        // Once finished, the next call runs again.
        let (v, j) = c.run("k", || async { 7 }).await;
        assert_eq!((v, j), (7, false));
    }
}
