//! Leases: which node fetches a blob nobody has yet (see the module doc of
//! `shared` for the protocol and its bounds). A lease is a small JSON
//! object written create-only, renewed by conditional overwrites on its
//! ETag, and deleted when its holder is done. Waiters judge a lease dead
//! only by their own clock: an ETag unchanged for `lease_ttl`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use object_store::path::Path as Key;
use object_store::{ObjectStoreExt, PutMode, UpdateVersion};
use parking_lot::Mutex;

use crate::registry::Digest;

use super::{Found, Tier, TierError, CAS_IGNORED};

/// How often a waiter looks again, at first and at most.
const FIRST_POLL: Duration = Duration::from_millis(100);
const MAX_POLL: Duration = Duration::from_secs(1);
/// The largest lease object a waiter reads.
const MAX_LEASE_BYTES: u64 = 4096;

/// What a node that misses a blob in the tier should do.
pub enum Claim {
    /// Fetch it from the upstream and upload it; other nodes wait.
    Lead(Lease),
    /// Another node is fetching it: [`Tier::wait`].
    Follow,
    /// No coordination (the tier failed, is read-only here, or the store
    /// ignores create-only writes): fetch it alone.
    Alone,
}

/// How a wait for another node's fill ended.
pub enum Waited {
    /// Its upload completed: read it from the tier.
    Appeared(u64),
    /// The leader died or gave up: this node leads now.
    Lead(Lease),
    /// Waiting stopped (`max_wait`, or the store failed): fetch alone.
    Alone,
    /// The leader serves its fill to peers at this address: read it from
    /// there as it fills (`peer`).
    Peer(String),
}

/// A held lease, renewed in the background until released or dropped.
pub struct Lease {
    tier: Tier,
    key: Key,
    digest: Digest,
    state: Arc<Mutex<Held>>,
    renewer: tokio::task::JoinHandle<()>,
}

struct Held {
    e_tag: Option<String>,
    version: Option<String>,
    /// Another node took the lease over: never delete it then.
    lost: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Body {
    node: String,
    digest: String,
    /// Milliseconds since the epoch at acquisition (for the operator).
    since_ms: u64,
    ttl_ms: u64,
    /// Bumped on each renewal, so each renewal changes the ETag.
    beat: u64,
    /// Where the holder serves its fill to peers (`peer`), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    peer: Option<String>,
}

impl Tier {
    fn lease_body(&self, d: &Digest, beat: u64) -> Bytes {
        let b = Body {
            node: self.inner.node.clone(),
            digest: d.to_string(),
            since_ms: crate::cache::now_millis(),
            ttl_ms: self.inner.settings.lease_ttl.as_millis() as u64,
            beat,
            peer: self.peer_address().map(str::to_owned),
        };
        Bytes::from(serde_json::to_vec(&b).expect("a lease serializes"))
    }

    /// After a local miss found nothing in the tier: try to become the
    /// blob's leader.
    pub async fn claim(&self, d: &Digest) -> Claim {
        if !self.leases_on() {
            return Claim::Alone;
        }
        match self.try_lead(d, None).await {
            Ok(Some(Ok(lease))) => Claim::Lead(lease),
            // The blob appeared meanwhile: follow (the wait finds it at once).
            Ok(Some(Err(_size))) => Claim::Follow,
            Ok(None) => Claim::Follow,
            Err(_) => Claim::Alone,
        }
    }

    /// Writes the lease: create-only, or over the dead lease `over`
    /// (`(e_tag, version)`). `Ok(None)`: another node holds it. Once held,
    /// the blob is looked up again: a leader that finished between this
    /// node's lookup and its lease leaves the blob and no lease, and this
    /// node must read it, not fetch it again (`Ok(Some(Err(size)))`).
    async fn try_lead(
        &self,
        d: &Digest,
        over: Option<(Option<String>, Option<String>)>,
    ) -> Result<Option<Result<Lease, u64>>, TierError> {
        let key = self.lease_key(d);
        let mode = match over {
            None => PutMode::Create,
            Some((e_tag, version)) => PutMode::Update(UpdateVersion { e_tag, version }),
        };
        let body = self.lease_body(d, 0);
        let put = self
            .call_within(
                "lease",
                self.lease_deadline(),
                self.put_if(&key, body, mode, Default::default()),
            )
            .await;
        let held = match put {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            // An overwrite of a lease that vanished meanwhile, or a write
            // still queued behind other nodes': look again.
            Err(TierError::NotFound) | Err(TierError::Contended(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let lease = self.hold(key, held.e_tag, held.version, d.clone());
        match self.lookup_quiet(d).await {
            Found::Object(size) => {
                lease.release().await;
                Ok(Some(Err(size)))
            }
            _ => Ok(Some(Ok(lease))),
        }
    }

    /// A `HEAD` of the blob that does not count as a lookup.
    async fn lookup_quiet(&self, d: &Digest) -> Found {
        match self
            .call("head", self.inner.store.head(&self.blob_key(d)))
            .await
        {
            Ok(m) => Found::Object(m.size),
            Err(TierError::NotFound) => Found::Absent,
            Err(_) => Found::Unavailable,
        }
    }

    fn hold(&self, key: Key, e_tag: Option<String>, version: Option<String>, d: Digest) -> Lease {
        let state = Arc::new(Mutex::new(Held {
            e_tag,
            version,
            lost: false,
        }));
        self.lead(&d);
        let renewer = tokio::spawn(renew(self.clone(), key.clone(), state.clone(), d.clone()));
        Lease {
            tier: self.clone(),
            key,
            digest: d,
            state,
            renewer,
        }
    }

    /// Waits for the node holding `d`'s lease to upload it, taking over its
    /// lease if it stops renewing it. Bounded by `max_wait`. With
    /// `follow_peer`, a lease naming a peer address (this node has the
    /// peer key too) ends the wait at once: read the fill from there.
    pub async fn wait(&self, d: &Digest, follow_peer: bool) -> Waited {
        let started = Instant::now();
        let m = &self.inner.metrics;
        let (outcome, waited) = self.wait_inner(d, started, follow_peer).await;
        m.lease_waits.with_label_values(&[outcome]).inc();
        m.lease_wait_seconds
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(digest = %d, outcome, ms = started.elapsed().as_millis() as u64,
            "waited for another node's fill");
        waited
    }

    async fn wait_inner(
        &self,
        d: &Digest,
        started: Instant,
        follow_peer: bool,
    ) -> (&'static str, Waited) {
        let s = &self.inner.settings;
        let key = self.lease_key(d);
        // The lease's ETag as last seen, and when it was first seen so.
        let mut seen: Option<(Option<String>, Instant)> = None;
        let mut pause = FIRST_POLL;
        // Rounds in a row that found no lease and then lost the race to
        // create one: a few happen when a leader gives up and waiters race;
        // many mean a store that says "absent" and "exists" of one key.
        let mut lost_races = 0;
        loop {
            if started.elapsed() >= s.max_wait {
                tracing::warn!(digest = %d, max_wait_s = s.max_wait.as_secs(),
                    "shared tier: another node's fill did not finish within max_wait; fetching here");
                return ("gave_up", Waited::Alone);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_POLL);
            match self.lookup_quiet(d).await {
                Found::Object(size) => return ("appeared", Waited::Appeared(size)),
                Found::Absent => {}
                Found::Unavailable => return ("error", Waited::Alone),
            }
            let store = self.inner.store.clone();
            let got = self
                .call("lease", async {
                    let r = store.get(&key).await?;
                    let (e_tag, version) = (r.meta.e_tag.clone(), r.meta.version.clone());
                    // wharf's leases are ~200 bytes: a larger object is not
                    // one of its leases, and is not read into memory (its
                    // ETag alone still says whether anyone renews it).
                    if r.meta.size > MAX_LEASE_BYTES {
                        return Ok((e_tag, version, Bytes::new()));
                    }
                    let body = r.bytes().await?;
                    Ok((e_tag, version, body))
                })
                .await;
            let over = match got {
                Err(TierError::NotFound) => None,
                Err(_) => return ("error", Waited::Alone),
                Ok((e_tag, version, body)) => {
                    lost_races = 0;
                    let holder = serde_json::from_slice::<Body>(&body).ok();
                    if let Some(peer) = holder.as_ref().and_then(|b| b.peer.as_deref()) {
                        if follow_peer && self.followable(peer) && !stale(holder.as_ref()) {
                            return ("peer", Waited::Peer(peer.to_owned()));
                        }
                    }
                    // The holder's ttl, never above this node's own: a lease
                    // claiming an hour (garbage, or a node configured
                    // otherwise) once held every waiter up to max_wait, ten
                    // minutes by default, against the documented bound of
                    // lease_ttl + 1 s. A holder with a longer ttl than ours
                    // may lose its lease to us: that costs a second
                    // download, never a hang.
                    let ttl = holder
                        .map(|b| Duration::from_millis(b.ttl_ms))
                        .unwrap_or(s.lease_ttl)
                        .clamp(
                            Duration::from_secs(1),
                            s.lease_ttl.max(Duration::from_secs(1)),
                        );
                    let now = Instant::now();
                    match &seen {
                        Some((tag, since)) if *tag == e_tag => {
                            if now.duration_since(*since) < ttl {
                                continue;
                            }
                            tracing::info!(digest = %d, stale_s = now.duration_since(*since).as_secs(),
                                "shared tier: a lease was not renewed within its ttl; taking it over");
                            Some((e_tag, version))
                        }
                        _ => {
                            seen = Some((e_tag, now));
                            continue;
                        }
                    }
                }
            };
            let took_over = over.is_some();
            match self.try_lead(d, over).await {
                Ok(Some(Ok(lease))) => {
                    let outcome = if took_over { "took_over" } else { "raced" };
                    return (outcome, Waited::Lead(lease));
                }
                Ok(Some(Err(size))) => return ("appeared", Waited::Appeared(size)),
                Ok(None) => {
                    if took_over {
                        lost_races = 0;
                    } else {
                        lost_races += 1;
                        if lost_races >= 5 {
                            tracing::warn!(digest = %d,
                                "shared tier: the lease is absent, yet creating it keeps failing; fetching here");
                            return ("error", Waited::Alone);
                        }
                    }
                    seen = None;
                    pause = FIRST_POLL;
                }
                Err(_) => return ("error", Waited::Alone),
            }
        }
    }
}

/// A lease whose last beat (its holder's clock) is more than two of its
/// ttls ago: left by a dead node, not worth dialling (only a hint, as
/// clocks differ: the wait itself judges leases by this node's clock).
fn stale(b: Option<&Body>) -> bool {
    b.is_some_and(|b| {
        b.since_ms.saturating_add(b.ttl_ms.saturating_mul(2)) < crate::cache::now_millis()
    })
}

/// Renews the lease every `lease_ttl / 3` until aborted; stops when another
/// node took it over.
async fn renew(tier: Tier, key: Key, state: Arc<Mutex<Held>>, d: Digest) {
    let every = tier.inner.settings.lease_ttl / 3;
    let mut beat = 0;
    loop {
        tokio::time::sleep(every).await;
        beat += 1;
        let (e_tag, version) = {
            let h = state.lock();
            (h.e_tag.clone(), h.version.clone())
        };
        let body = tier.lease_body(&d, beat);
        let mode = PutMode::Update(UpdateVersion { e_tag, version });
        let r = tier
            .call_anyway(
                "lease",
                tier.lease_deadline(),
                tier.put_if(&key, body, mode, Default::default()),
            )
            .await;
        match r {
            Ok(Some(r)) => {
                let mut h = state.lock();
                h.e_tag = r.e_tag;
                h.version = r.version;
            }
            Ok(None) | Err(TierError::NotFound) => {
                state.lock().lost = true;
                tier.inner.metrics.leases_lost.inc();
                tracing::warn!(digest = %d,
                    "shared tier: another node took this node's lease over (it was not renewed in time); finishing anyway");
                return;
            }
            // Tried again at the next beat; if the store stays away, the
            // lease expires and a waiter takes over, which is harmless.
            Err(_) => {}
        }
    }
}

impl Lease {
    /// Stops renewing and deletes the lease (unless another node took it
    /// over). Waiters then find the blob, or race for a new lease.
    pub async fn release(self) {
        self.renewer.abort();
        let lost = self.state.lock().lost;
        if !lost
            && self
                .tier
                .inner
                .cas
                .load(std::sync::atomic::Ordering::Relaxed)
                != CAS_IGNORED
        {
            let _ = self.tier.delete(&self.key).await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // A lease dropped unreleased (its task panicked or was cancelled)
        // stops renewing; waiters take it over after its ttl. Released or
        // not, this node no longer serves the blob to peers.
        self.renewer.abort();
        self.tier.unlead(&self.digest);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    use super::*;

    fn tier(store: Arc<InMemory>) -> Tier {
        let settings = crate::shared::testing::settings();
        Tier::with_store(store, &settings, &prometheus::Registry::new())
    }

    fn digest() -> Digest {
        Digest::sha256_of(b"a layer")
    }

    /// A waiter once read a lease object whole, whatever its size: a huge
    /// object at a lease key (a broken or hostile writer) went into memory
    /// on every poll of every waiting node. Now an object over
    /// `MAX_LEASE_BYTES` is judged by its ETag alone, with this node's own
    /// `lease_ttl`: its claimed 1 s ttl is not read.
    #[tokio::test(start_paused = true)]
    async fn a_huge_lease_object_is_not_read() {
        let store = Arc::new(InMemory::new());
        let t = tier(store.clone());
        let d = digest();
        let mut body =
            format!(r#"{{"node":"x","digest":"{d}","since_ms":0,"ttl_ms":1000,"beat":0}}"#)
                .into_bytes();
        body.resize(1 << 20, b' ');
        store.put(&t.lease_key(&d), body.into()).await.unwrap();
        let started = tokio::time::Instant::now();
        match t.wait(&d, true).await {
            Waited::Lead(lease) => lease.release().await,
            _ => panic!("the unrenewed lease was not taken over"),
        }
        let waited = started.elapsed();
        let ttl = t.settings().lease_ttl;
        assert!(
            waited >= ttl && waited <= ttl + Duration::from_secs(3),
            "taken over after {waited:?}"
        );
    }

    /// A leader renews its lease even while its tier is set aside after
    /// some other request failed (it once skipped renewals for
    /// retry_after, and the lease expired under a live leader).
    #[tokio::test(start_paused = true)]
    async fn a_leader_renews_while_the_tier_is_set_aside() {
        let store = Arc::new(InMemory::new());
        let mut settings = crate::shared::testing::settings();
        settings.retry_after = Duration::from_secs(600);
        let t = Tier::with_store(store.clone(), &settings, &prometheus::Registry::new());
        let d = digest();
        let lease = match t.claim(&d).await {
            Claim::Lead(l) => l,
            _ => panic!("no lease"),
        };
        let key = t.lease_key(&d);
        let first = store.head(&key).await.unwrap().e_tag;
        t.failed("get", &TierError::Timeout(Duration::from_secs(5)));
        assert!(t.available().is_err(), "set aside");
        let ttl = t.settings().lease_ttl;
        tokio::time::sleep(ttl / 3 + Duration::from_secs(1)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let now = store.head(&key).await.unwrap().e_tag;
        assert_ne!(first, now, "not renewed while set aside");
        lease.release().await;
    }

    /// A lease claiming a ttl of an hour that nobody renews is taken over
    /// after this node's lease_ttl (it once held waiters until max_wait).
    #[tokio::test(start_paused = true)]
    async fn a_lease_claiming_a_long_ttl_holds_a_waiter_at_most_its_own_ttl() {
        let store = Arc::new(InMemory::new());
        let t = tier(store.clone());
        let d = digest();
        let body =
            format!(r#"{{"node":"x","digest":"{d}","since_ms":0,"ttl_ms":3600000,"beat":0}}"#);
        store.put(&t.lease_key(&d), body.into()).await.unwrap();
        let started = tokio::time::Instant::now();
        match t.wait(&d, true).await {
            Waited::Lead(lease) => lease.release().await,
            _ => panic!("the unrenewed lease was not taken over"),
        }
        let ttl = t.settings().lease_ttl;
        assert!(
            started.elapsed() <= ttl + Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    /// A small lease's own ttl is honoured (within this node's lease_ttl).
    #[tokio::test(start_paused = true)]
    async fn a_lease_nobody_renews_is_taken_over_after_its_ttl() {
        let store = Arc::new(InMemory::new());
        let t = tier(store.clone());
        let d = digest();
        let body = format!(r#"{{"node":"x","digest":"{d}","since_ms":0,"ttl_ms":2000,"beat":0}}"#);
        store.put(&t.lease_key(&d), body.into()).await.unwrap();
        let started = tokio::time::Instant::now();
        match t.wait(&d, true).await {
            Waited::Lead(lease) => lease.release().await,
            _ => panic!("the unrenewed lease was not taken over"),
        }
        assert!(
            started.elapsed() <= Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(store.head(&t.lease_key(&d)).await.is_err(), "released");
    }
}
