//! The shared tier: a second cache level on an object store the nodes of a
//! fleet share (any S3-compatible store, or GCS), so that a fleet fetches
//! each blob from its upstream about once. Owns the store client, the keys
//! wharf writes, the leases that make one node the leader of a cold fill,
//! uploads, and the tier's health. The mirror decides when to ask it
//! (`mirror::blobs`); the local disk stays the first tier.
//!
//! Must never: serve or cache a byte it did not verify (every read goes
//! through a cache fill, which checks the digest); let a repository read a
//! blob the upstream has not confirmed it holds (the mirror asks the
//! upstream's `HEAD` before a tier copy is used); key anything by a
//! repository name; delete from the store during normal operation (only
//! `wharf gc --shared` deletes); hold a client longer than its bounds when
//! the store is slow or down (every request has a deadline; a failure sets
//! the tier aside for `retry_after` and the node goes to its upstream as if
//! there were no tier); log or print a credential (the builders that hold
//! secrets are never formatted).
//!
//! # Keys
//!
//! `<prefix>/blobs/sha256/<hex>`: a verified blob, by digest only (two
//! uploads of one digest carry the same bytes, so an overwrite is harmless);
//! `<prefix>/manifests/sha256/<hex>`: a verified manifest by digest, its
//! media type as `Content-Type` (tags are never shared);
//! `<prefix>/leases/sha256/<hex>`: a node's claim on a cold fill.
//!
//! # Cross-node single-flight, on the store's own primitives
//!
//! Coordination goes through the bucket alone: no peer discovery, no
//! membership. By default no node talks to another, so the tier needs no
//! node-to-node listener and no peer credentials (on GKE wharf listens on
//! loopback only). With `peer_listen` (and a key every node shares), the
//! lease also names the address where its holder serves the fill to peers,
//! and waiters stream it from there as it fills ([`peer`]; step 4).
//!
//! 1. A node that misses on disk looks the blob up (`HEAD`). Present: it is
//!    read through a fill (range requests are served from the fill as it
//!    grows; the digest is checked at the end).
//! 2. Absent: the node tries to create the lease object, create-only
//!    (`If-None-Match: *` on S3, `x-goog-if-generation-match: 0` on GCS).
//!    The store lets exactly one node win; it fetches from its upstream,
//!    renews the lease every `lease_ttl / 3` (a conditional overwrite on the
//!    lease's ETag), uploads the verified blob, then deletes the lease.
//! 3. The others wait: they poll the blob's `HEAD` (100 ms, doubling to 1 s)
//!    and read the lease. A lease whose ETag has not changed for `lease_ttl`
//!    **as measured on the waiting node's own clock** (no clock is compared
//!    across nodes) belongs to a dead leader: the waiter takes it over with
//!    a conditional overwrite on that ETag, so exactly one waiter becomes
//!    the new leader. A lease deleted without a blob (the leader's fetch
//!    failed) is raced for again. After `max_wait` a waiter fetches by
//!    itself whatever the lease says.
//! 4. With peers on: a waiter that reads a lease naming a peer address
//!    (not its own) stops waiting and reads the blob from that node as it
//!    fills, once its upstream confirmed (`HEAD`) that its repository holds
//!    the blob; the digest and the upstream's size are checked as for a
//!    tier copy. If the leader does not answer, the waiter goes back to
//!    waiting for the store (without following); if it breaks off midway
//!    (killed, its own fill failed, too slow for `cache.fill_min_rate`),
//!    the waiter fetches the rest from its upstream with a range request
//!    and uploads the blob itself (create-only), so its clients never see
//!    the leader's failure and the tier still gets the blob. A leader
//!    with peers on uploads once its fill's first readers (its clients and
//!    its followers) are done, at most `lease_ttl` after its fill: the
//!    upload would compete with them, and meanwhile nodes that miss follow
//!    its lease rather than wait for the store.
//!
//! Failure modes and their bounds:
//! - the leader dies (`kill -9`, node lost): its waiters go on within
//!   `lease_ttl` plus one poll (1 s) after its last renewal;
//! - a leader that is alive but slow keeps renewing: its waiters wait for it
//!   (at most `max_wait`), since a second download would only compete with
//!   the first for the same upstream;
//! - the store loses or refuses a request: the node stops waiting and goes
//!   to its upstream itself (as with no tier), and the tier is set aside for
//!   `retry_after`;
//! - a store that ignores create-only writes (GCS through its S3 XML API
//!   with HMAC keys, old SeaweedFS) is found by a probe at start-up (two
//!   create-only writes of one key must not both succeed): leases are then
//!   off and each node coalesces only its own clients (reads and uploads go
//!   on);
//! - a leader that lost its lease (it stalled beyond `lease_ttl`) finishes
//!   anyway: two nodes then upload the same bytes, which is harmless;
//! - an upload that dies leaves an unfinished multipart upload, which the
//!   store's lifecycle rule `AbortIncompleteMultipartUpload` removes; the
//!   blob is fetched and uploaded again by the next node that misses it.
//!
//! What waiting costs: without peers, a waiter's clients get their first
//! byte only once the leader's upload is complete (a multipart upload is
//! invisible until then), i.e. about the leader's download plus its upload,
//! instead of one download each from the upstream (measured: the last of
//! 30 clients on 3 nodes 2.4× later than with no tier at all). Each waiting
//! node sends the store two small requests per poll. With peers, a waiter
//! is one more reader of the leader's fill: the fleet's last client
//! finishes about when the leader's own clients do, and the leader's node
//! sends each follower one copy (node network, not the upstream's).
//!
//! # Limits
//!
//! Small requests (lookups, leases, the head of a read) have
//! `request_timeout`; a read's body must keep the fill's minimum rate
//! (`cache.fill_min_rate`); an upload part (5 MiB) must be accepted within
//! [`PART_TIMEOUT`]. Uploads run at most `max_uploads` at once (one that
//! finds no slot within `lease_ttl` is skipped, its lease released) and hold
//! at most `upload_memory` of parts between them, and at most 256 wait or
//! run (`upload::MAX_PENDING_UPLOADS`; more are skipped); reads hold the fill's
//! four-chunk queue. Every lookup, lease and wait runs inside one of the
//! node's `cache.max_fills` fill slots, so a flood of distinct cold digests
//! costs the store at most that many concurrent conversations. The client
//! retries a failed request at most twice, within `request_timeout`.

mod gc;
mod lease;
mod manifests;
pub mod peer;
mod settings;
mod upload;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};
use parking_lot::Mutex;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use crate::registry::Digest;
use crate::secret::Secret;
use crate::upstream::credentials::SecretSpec;
use crate::watched::Watched;

pub use gc::{collect, GcReport};
pub use lease::{Claim, Lease, Waited};
pub use settings::{Backend, PeerSettings, SharedSettings, StoreCredentials};

/// Upload part size: S3's smallest part, so `upload_memory` holds the most
/// parts.
pub const PART_SIZE: u64 = 5 << 20;
/// The longest one upload part (or a whole small object) may take.
pub const PART_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum TierError {
    #[error("the shared tier is set aside after a failure ({0})")]
    SetAside(String),
    #[error("the shared tier did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the shared tier failed: {0}")]
    Store(String),
    #[error("the shared tier has no such object")]
    NotFound,
    #[error("a lease write was not answered within {0:?} (other nodes contend for it)")]
    Contended(Duration),
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The blob is in the tier, this many bytes (unverified until read).
    Object(u64),
    Absent,
    /// The tier cannot be asked now: go to the upstream.
    Unavailable,
}

/// For `/readyz` and the operator.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TierStatus {
    pub url: String,
    /// "ok", or "degraded" while the tier is set aside after a failure.
    pub state: &'static str,
    /// The last failure, while degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether nodes coordinate cold fills (the store enforces create-only
    /// writes and this node may write).
    pub leases: bool,
    pub write: bool,
}

/// The shared tier as one node sees it. Cheap to clone.
#[derive(Clone)]
pub struct Tier {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    settings: SharedSettings,
    /// Names this node in its leases (for the operator reading a lease).
    node: String,
    health: Mutex<Health>,
    /// [`CAS_UNKNOWN`], [`CAS_WORKS`] or [`CAS_IGNORED`].
    cas: AtomicU8,
    uploads: Arc<tokio::sync::Semaphore>,
    /// Uploads queued or running (bounded by `MAX_PENDING_UPLOADS`).
    pending_uploads: Arc<std::sync::atomic::AtomicUsize>,
    part_memory: Arc<tokio::sync::Semaphore>,
    /// Digests whose tier copy failed verification here: bypassed until a
    /// verified upload replaces it.
    bad: moka::sync::Cache<Digest, ()>,
    metrics: TierMetrics,
    /// Node-to-node following (`shared.peer_*`).
    peers: Option<peer::Peers>,
    /// Digests whose lease this node holds, with how many leases (an old
    /// one lost to a takeover may still be finishing): the only ones it
    /// serves peers.
    leading: Mutex<std::collections::HashMap<Digest, usize>>,
    /// Peers whose blob failed verification here: not followed again for
    /// an hour (a broken or compromised node cannot fail every pull).
    bad_peers: moka::sync::Cache<String, ()>,
}

const CAS_UNKNOWN: u8 = 0;
const CAS_WORKS: u8 = 1;
const CAS_IGNORED: u8 = 2;

#[derive(Default)]
struct Health {
    /// Since when, and why, while degraded.
    failing: Option<(Instant, String)>,
    /// The tier is not asked before this.
    set_aside_until: Option<Instant>,
}

struct TierMetrics {
    lookups: IntCounterVec,
    bytes: IntCounterVec,
    latency: HistogramVec,
    errors: IntCounterVec,
    lease_waits: IntCounterVec,
    lease_wait_seconds: Histogram,
    leases_lost: IntCounter,
    verification_failures: IntCounter,
    uploads: IntCounterVec,
    uploads_in_flight: IntGauge,
    degraded: IntGauge,
}

impl TierMetrics {
    fn new(r: &Registry) -> TierMetrics {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let one = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let buckets = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0,
        ];
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "wharf_shared_request_seconds",
                "Requests to the shared tier by operation (head, get: until the body starts, put, lease, part, complete, delete), successful or not",
            )
            .buckets(buckets.clone()),
            &["op"],
        )
        .expect("valid metric");
        r.register(Box::new(latency.clone()))
            .expect("unique metric");
        let lease_wait_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "wharf_shared_lease_wait_seconds",
                "Time a node waited for another node's fill of a blob",
            )
            .buckets(buckets),
        )
        .expect("valid metric");
        r.register(Box::new(lease_wait_seconds.clone()))
            .expect("unique metric");
        TierMetrics {
            lookups: counter(
                "wharf_shared_lookups_total",
                "Local misses looked up in the shared tier: hit, miss, error (the store failed), set_aside (not asked: the tier failed within shared.retry_after), bad_copy (bypassed: its copy failed verification here)",
                &["result"],
            ),
            bytes: counter(
                "wharf_shared_bytes_total",
                "Bytes read from (read) and uploaded to (written) the shared tier",
                &["direction"],
            ),
            latency,
            errors: counter(
                "wharf_shared_errors_total",
                "Failed requests to the shared tier, by operation (timeouts included)",
                &["op"],
            ),
            lease_waits: counter(
                "wharf_shared_lease_waits_total",
                "Waits for another node's fill, by outcome: appeared (its upload completed), peer (its lease names a peer address: read from there as it fills), took_over (its lease expired: this node leads), raced (its lease was gone without a blob: this node leads), gave_up (shared.max_wait), error (the store failed)",
                &["outcome"],
            ),
            lease_wait_seconds,
            leases_lost: one(
                "wharf_shared_leases_lost_total",
                "Leases this node held that another node took over (this node stalled beyond shared.lease_ttl); the fill went on",
            ),
            verification_failures: one(
                "wharf_shared_verification_failures_total",
                "Blobs and manifests read from the shared tier whose bytes did not match their digest or the upstream's size (not cached, never served complete; fetched from the upstream, and the tier's copy replaced)",
            ),
            uploads: counter(
                "wharf_shared_uploads_total",
                "Uploads of verified blobs to the shared tier: done, present (another node had uploaded it), failed, skipped (256 uploads already queued)",
                &["result"],
            ),
            uploads_in_flight: gauge(
                "wharf_shared_uploads_in_flight",
                "Uploads to the shared tier running or waiting for a slot",
            ),
            degraded: gauge(
                "wharf_shared_degraded",
                "1 while the shared tier is set aside after a failure (nodes use disk and upstreams only)",
            ),
        }
    }
}

impl Tier {
    /// The tier's client: no request is made here (the store is probed by
    /// [`Tier::probe`]).
    pub fn new(settings: &SharedSettings, registry: &Registry) -> Result<Tier, TierError> {
        let store = build_store(settings)?;
        Ok(Tier::with_store(store, settings, registry))
    }

    /// A tier on a given store (tests may wrap one).
    pub fn with_store(
        store: Arc<dyn ObjectStore>,
        settings: &SharedSettings,
        registry: &Registry,
    ) -> Tier {
        let part_permits = (settings.upload_memory / PART_SIZE).max(1) as usize;
        Tier {
            inner: Arc::new(Inner {
                store,
                settings: settings.clone(),
                node: node_name(),
                health: Mutex::new(Health::default()),
                cas: AtomicU8::new(CAS_UNKNOWN),
                uploads: Arc::new(tokio::sync::Semaphore::new(settings.max_uploads)),
                pending_uploads: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
                part_memory: Arc::new(tokio::sync::Semaphore::new(part_permits)),
                bad: moka::sync::Cache::builder()
                    .max_capacity(10_000)
                    .time_to_live(Duration::from_secs(3600))
                    .build(),
                metrics: TierMetrics::new(registry),
                peers: settings
                    .peer
                    .as_ref()
                    .map(|p| peer::Peers::new(p, settings.request_timeout, registry)),
                leading: Mutex::default(),
                bad_peers: moka::sync::Cache::builder()
                    .max_capacity(1024)
                    .time_to_live(Duration::from_secs(3600))
                    .build(),
            }),
        }
    }

    /// Where the node-to-node listener is to bind, when peers are on.
    pub fn peer_listen(&self) -> Option<std::net::SocketAddr> {
        self.inner.peers.as_ref().map(|p| p.listen())
    }

    /// The node-to-node listener is bound at `local`: from now on this
    /// node's leases name it, so waiters follow this node's fills.
    pub fn peer_bound(&self, local: std::net::SocketAddr) {
        if let Some(p) = &self.inner.peers {
            p.bound(local);
            tracing::info!(peer = p.address().unwrap_or_default(), listen = %local,
                "serving the blobs this node fills for the fleet to its peers");
        }
    }

    /// What this node's leases say other nodes dial (once bound).
    fn peer_address(&self) -> Option<&str> {
        self.inner.peers.as_ref().and_then(|p| p.address())
    }

    /// Whether this node holds `d`'s lease (and so may serve it to peers).
    pub fn leads(&self, d: &Digest) -> bool {
        self.inner.leading.lock().contains_key(d)
    }

    fn lead(&self, d: &Digest) {
        *self.inner.leading.lock().entry(d.clone()).or_default() += 1;
    }

    fn unlead(&self, d: &Digest) {
        let mut l = self.inner.leading.lock();
        if let Some(n) = l.get_mut(d) {
            *n -= 1;
            if *n == 0 {
                l.remove(d);
            }
        }
    }

    /// Checks a request from a peer; counts a refusal (logged at debug
    /// only: anyone who reaches the port can send them). Gives back the
    /// request's nonce, for [`peer_proof`](Self::peer_proof).
    pub fn check_peer<'a>(
        &self,
        header: Option<&'a str>,
        method: &str,
        path: &str,
    ) -> Result<&'a str, peer::Refused> {
        let Some(p) = &self.inner.peers else {
            return Err(peer::Refused::NoKey);
        };
        let r = p.check(header, method, path);
        if let Err(why) = r {
            let result = match why {
                peer::Refused::Busy => "busy",
                peer::Refused::NoKey => "no_key",
                _ => "refused",
            };
            p.served(result);
            tracing::debug!(reason = why.as_str(), "refused a peer request");
        }
        r
    }

    /// The proof that goes with this node's answer of `size` bytes of `d`
    /// to the request with `nonce`.
    pub fn peer_proof(&self, nonce: &str, d: &Digest, size: u64) -> Option<String> {
        let key = self.inner.peers.as_ref()?.key().ok()?;
        Some(peer::proof(&key, nonce, &d.to_string(), size))
    }

    /// A peer whose blob failed verification here: not followed for an hour.
    pub fn bad_peer(&self, address: &str) {
        tracing::warn!(
            peer = address,
            "a blob read from this peer failed verification; not following it for an hour"
        );
        self.inner.bad_peers.insert(address.to_owned(), ());
        self.peer_read("bad");
    }

    /// Counts an answer of the node-to-node listener.
    pub fn peer_served(&self, result: &str) {
        if let Some(p) = &self.inner.peers {
            p.served(result);
        }
    }

    /// Counts a read from a peer, by how it ended.
    pub fn peer_read(&self, result: &str) {
        if let Some(p) = &self.inner.peers {
            p.read(result);
        }
    }

    /// The blob `d` from the peer at `address`, which leads its fill: the
    /// answer's head within `request_timeout` (with the leader's proof and
    /// the blob's length), its body as it fills.
    pub async fn peer_get(
        &self,
        address: &str,
        d: &Digest,
    ) -> Result<(reqwest::Response, u64), String> {
        let Some(p) = &self.inner.peers else {
            return Err("peers are off".into());
        };
        let own = p.address().unwrap_or_default();
        let Some(to) = peer::dialable(address, own) else {
            return Err(format!("{address:?} is no address this node dials"));
        };
        p.get(to, d, self.inner.settings.request_timeout).await
    }

    /// Whether a lease naming `address` is worth following from this node.
    fn followable(&self, address: &str) -> bool {
        let Some(own) = self.peer_address() else {
            return false;
        };
        peer::dialable(address, own).is_some() && !self.inner.bad_peers.contains_key(address)
    }

    pub fn settings(&self) -> &SharedSettings {
        &self.inner.settings
    }

    pub fn status(&self) -> TierStatus {
        let h = self.inner.health.lock();
        TierStatus {
            url: self.inner.settings.url.clone(),
            state: if h.failing.is_some() {
                "degraded"
            } else {
                "ok"
            },
            error: h.failing.as_ref().map(|(_, why)| why.clone()),
            leases: self.leases_on(),
            write: self.inner.settings.write,
        }
    }

    /// Whether this node takes part in cross-node single-flight.
    fn leases_on(&self) -> bool {
        self.inner.settings.write && self.inner.cas.load(Ordering::Relaxed) != CAS_IGNORED
    }

    /// Checks that the store answers and enforces create-only writes: two
    /// create-only writes of one fresh key must not both succeed. Run once
    /// at start-up and not repeated: if it fails, leases are tried (a store
    /// that ignores them only costs duplicate downloads; one that refuses
    /// them is caught by the waiters, see `Tier::wait`).
    pub async fn probe(&self) {
        if !self.inner.settings.write {
            return;
        }
        let key = self.key(&format!(
            "probes/{}-{}",
            self.inner.node,
            hex::encode(rand_bytes())
        ));
        let first = self.put_create(&key, Bytes::from_static(b"probe")).await;
        let second = match first {
            Ok(true) => self.put_create(&key, Bytes::from_static(b"probe")).await,
            // A key nobody can have written "exists": the store refuses
            // every create-only write (some answer 412 to a conditional
            // header they do not support). Leases would then never be won
            // (every miss waited max_wait) and no small blob uploaded.
            Ok(false) => {
                self.inner.cas.store(CAS_IGNORED, Ordering::Relaxed);
                tracing::warn!(url = %self.inner.settings.url,
                    "shared tier: the store refuses create-only writes (If-None-Match: *) even of new keys, so nodes cannot coordinate cold fills; each node fetches for itself and uploads with plain writes");
                return;
            }
            Err(e) => {
                tracing::warn!(url = %self.inner.settings.url, error = %e,
                    "shared tier: the start-up check failed; the tier is set aside for retry_after, then used with leases (the check is not repeated)");
                return;
            }
        };
        let _ = self.delete(&key).await;
        match second {
            Ok(false) => {
                self.inner.cas.store(CAS_WORKS, Ordering::Relaxed);
                tracing::info!(url = %self.inner.settings.url, node = %self.inner.node,
                    "shared tier ready: cold fills are coordinated across nodes");
            }
            Ok(true) => {
                self.inner.cas.store(CAS_IGNORED, Ordering::Relaxed);
                tracing::warn!(url = %self.inner.settings.url,
                    "shared tier: the store ignores create-only writes (If-None-Match: *), so nodes cannot coordinate cold fills; each node fetches for itself (reads and uploads go on)");
            }
            Err(e) => tracing::warn!(url = %self.inner.settings.url, error = %e,
                "shared tier: the start-up check failed"),
        }
    }

    fn key(&self, rest: &str) -> Key {
        let p = &self.inner.settings.prefix;
        if p.is_empty() {
            Key::from(rest)
        } else {
            Key::from(format!("{p}/{rest}"))
        }
    }

    fn blob_key(&self, d: &Digest) -> Key {
        self.key(&format!("blobs/{}/{}", d.algorithm().as_str(), d.hex()))
    }

    fn lease_key(&self, d: &Digest) -> Key {
        self.key(&format!("leases/{}/{}", d.algorithm().as_str(), d.hex()))
    }

    /// Whether the tier may be asked now.
    fn available(&self) -> Result<(), TierError> {
        let h = self.inner.health.lock();
        match (h.set_aside_until, &h.failing) {
            (Some(t), Some((_, why))) if Instant::now() < t => {
                Err(TierError::SetAside(why.clone()))
            }
            _ => Ok(()),
        }
    }

    fn failed(&self, op: &'static str, e: &TierError) {
        self.inner.metrics.errors.with_label_values(&[op]).inc();
        let mut h = self.inner.health.lock();
        let now = Instant::now();
        if h.failing.is_none() {
            tracing::warn!(url = %self.inner.settings.url, op, error = %e,
                retry_after_s = self.inner.settings.retry_after.as_secs(),
                "shared tier failed; nodes use disk and upstreams meanwhile");
            h.failing = Some((now, e.to_string()));
        } else if let Some((_, why)) = h.failing.as_mut() {
            *why = e.to_string();
        }
        h.set_aside_until = Some(now + self.inner.settings.retry_after);
        self.inner.metrics.degraded.set(1);
    }

    fn succeeded(&self) {
        let mut h = self.inner.health.lock();
        if let Some((since, _)) = h.failing.take() {
            tracing::info!(url = %self.inner.settings.url,
                after_s = since.elapsed().as_secs(), "shared tier answers again");
            h.set_aside_until = None;
            self.inner.metrics.degraded.set(0);
        }
    }

    /// Runs one small request with the tier's deadline, timing it and
    /// recording its outcome in the tier's health. `NotFound`,
    /// `AlreadyExists` and `Precondition` are answers, not failures.
    async fn call<T>(
        &self,
        op: &'static str,
        f: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<T, TierError> {
        self.call_within(op, self.inner.settings.request_timeout, f)
            .await
    }

    /// [`call`](Self::call) with its own deadline. A conditional write may
    /// wait on the store's lock while other nodes contend for the same key
    /// (SeaweedFS answers the losers of a race after 1-8 s): leases get
    /// longer, and their caller reads [`TierError::Contended`] as "look
    /// again", not as the store failing.
    async fn call_within<T>(
        &self,
        op: &'static str,
        limit: Duration,
        f: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<T, TierError> {
        self.available()?;
        self.call_anyway(op, limit, f).await
    }

    /// [`call_within`](Self::call_within) even while the tier is set aside:
    /// for a lease this node holds, whose renewal must not stop because
    /// some other request failed (the lease would expire under a live
    /// leader, and another node fetch the blob again).
    async fn call_anyway<T>(
        &self,
        op: &'static str,
        limit: Duration,
        f: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<T, TierError> {
        let timer = self
            .inner
            .metrics
            .latency
            .with_label_values(&[op])
            .start_timer();
        let r = match tokio::time::timeout(limit, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(object_store::Error::NotFound { .. })) => Err(TierError::NotFound),
            Ok(Err(e)) => Err(TierError::Store(describe(&e))),
            Err(_) if op == "lease" => Err(TierError::Contended(limit)),
            Err(_) => Err(TierError::Timeout(limit)),
        };
        timer.observe_duration();
        match &r {
            Ok(_) | Err(TierError::NotFound) => self.succeeded(),
            Err(TierError::Contended(_)) => {
                self.inner.metrics.errors.with_label_values(&[op]).inc();
            }
            Err(e) => self.failed(op, e),
        }
        r
    }

    /// The deadline of a lease write: long enough for a contended
    /// conditional write, short enough to renew within the ttl.
    fn lease_deadline(&self) -> Duration {
        let s = &self.inner.settings;
        (s.lease_ttl / 2).max(s.request_timeout)
    }

    /// Whether the blob is in the tier, and its size. Never waits longer
    /// than `request_timeout`; a failure says `Unavailable`.
    pub async fn lookup(&self, d: &Digest) -> Found {
        let m = &self.inner.metrics.lookups;
        if self.inner.bad.contains_key(d) {
            m.with_label_values(&["bad_copy"]).inc();
            return Found::Unavailable;
        }
        if let Err(e) = self.available() {
            tracing::debug!(digest = %d, error = %e, "shared tier not asked");
            m.with_label_values(&["set_aside"]).inc();
            return Found::Unavailable;
        }
        let key = self.blob_key(d);
        match self.call("head", self.inner.store.head(&key)).await {
            Ok(meta) => {
                m.with_label_values(&["hit"]).inc();
                Found::Object(meta.size)
            }
            Err(TierError::NotFound) => {
                m.with_label_values(&["miss"]).inc();
                Found::Absent
            }
            Err(_) => {
                m.with_label_values(&["error"]).inc();
                Found::Unavailable
            }
        }
    }

    /// The blob's bytes, as the store sends them (unverified: the caller
    /// feeds them to a cache fill, which checks the digest). A failure in
    /// the body sets the tier aside.
    pub async fn read(
        &self,
        d: &Digest,
    ) -> Result<(u64, BoxStream<'static, Result<Bytes, String>>), TierError> {
        let key = self.blob_key(d);
        let got = self.call("get", self.inner.store.get(&key)).await?;
        let size = got.meta.size;
        let this = self.clone();
        let read = self.inner.metrics.bytes.with_label_values(&["read"]);
        let stream = got.into_stream().map(move |r| match r {
            Ok(b) => {
                read.inc_by(b.len() as u64);
                Ok(b)
            }
            Err(e) => {
                let e = TierError::Store(describe(&e));
                this.failed("get", &e);
                Err(e.to_string())
            }
        });
        Ok((size, stream.boxed()))
    }

    /// The tier's copy of `d` (a blob or a manifest) failed verification
    /// here: bypass it, count it, and let the next verified upload of `d`
    /// replace it.
    pub fn bad_copy(&self, d: &Digest) {
        self.inner.metrics.verification_failures.inc();
        tracing::error!(url = %self.inner.settings.url, digest = %d,
            "shared tier: the stored copy does not match its digest; not served, fetched from the upstream and replaced");
        self.inner.bad.insert(d.clone(), ());
    }

    /// The tier's copy of manifest `d` has the right bytes but not the
    /// media type the upstream gives it: bypass it, count it, and let the
    /// upstream's answer replace it.
    pub fn bad_type(&self, d: &Digest) {
        self.inner.metrics.verification_failures.inc();
        tracing::error!(url = %self.inner.settings.url, digest = %d,
            "shared tier: the stored manifest's Content-Type is missing or not the upstream's; not served, fetched from the upstream and replaced");
        self.inner.bad.insert(d.clone(), ());
    }

    /// Whether a verified upload of `d` should replace the tier's copy.
    fn replaces_bad_copy(&self, d: &Digest) -> bool {
        self.inner.bad.contains_key(d)
    }

    /// A place in the upload queue (blobs and manifests alike), given back
    /// when dropped; `None` (counted as `skipped`) past
    /// [`upload::MAX_PENDING_UPLOADS`]: each queued upload holds a cache file
    /// or a manifest in memory.
    fn queue_slot(&self) -> Option<Queued> {
        let pending = &self.inner.pending_uploads;
        if pending.fetch_add(1, Ordering::Relaxed) >= upload::MAX_PENDING_UPLOADS {
            pending.fetch_sub(1, Ordering::Relaxed);
            self.inner
                .metrics
                .uploads
                .with_label_values(&["skipped"])
                .inc();
            return None;
        }
        Some(Queued(pending.clone()))
    }

    /// How to write a verified object that may exist already: create-only,
    /// unless the store does not honour it (then a plain write: the bytes
    /// are the same).
    fn create_mode(&self) -> object_store::PutMode {
        if self.inner.cas.load(Ordering::Relaxed) == CAS_IGNORED {
            object_store::PutMode::Overwrite
        } else {
            object_store::PutMode::Create
        }
    }

    /// A conditional write: `None` when its condition failed (the key
    /// exists for a create, its version moved for an update).
    async fn put_if(
        &self,
        key: &Key,
        body: Bytes,
        mode: object_store::PutMode,
        attributes: object_store::Attributes,
    ) -> object_store::Result<Option<object_store::PutResult>> {
        let opts = object_store::PutOptions {
            mode,
            attributes,
            ..Default::default()
        };
        match self.inner.store.put_opts(key, body.into(), opts).await {
            Ok(r) => Ok(Some(r)),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A create-only write: true when written, false when the key existed.
    async fn put_create(&self, key: &Key, body: Bytes) -> Result<bool, TierError> {
        let mode = object_store::PutMode::Create;
        let r = self
            .call("put", self.put_if(key, body, mode, Default::default()))
            .await?;
        Ok(r.is_some())
    }

    async fn delete(&self, key: &Key) -> Result<(), TierError> {
        match self.call("delete", self.inner.store.delete(key)).await {
            Ok(()) | Err(TierError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// An object_store error without the request's URL query (signatures) and
/// without the store's error body: an S3 error document may echo the
/// access key id, the string to sign and the canonical request
/// (`SignatureDoesNotMatch`, `InvalidAccessKeyId`), and this text reaches
/// logs and `/readyz`. Only the body's `<Code>` is kept.
fn describe(e: &object_store::Error) -> String {
    let mut s = e.to_string();
    let code = s
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| code.chars().take(64).collect::<String>());
    for cut in ["X-Amz-", "x-amz-", "<?xml", "<Error", "<error", "{\""] {
        if let Some(i) = s.find(cut) {
            s.truncate(i);
        }
    }
    if let Some(code) = code {
        s.push_str(&format!("(the store's error code: {code})"));
    }
    if s.len() > 300 {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn rand_bytes() -> [u8; 8] {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).expect("the OS has randomness");
    b
}

/// `<hostname>-<pid>`, for the operator reading a lease object.
fn node_name() -> String {
    let host = nix_hostname().unwrap_or_else(|| "node".to_owned());
    format!("{host}-{}", std::process::id())
}

fn nix_hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it or truncates.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let s = String::from_utf8_lossy(&buf[..end]).into_owned();
    (!s.is_empty()).then_some(s)
}

/// The store client for the settings. The builders hold secrets in their
/// `Debug`: never format them.
fn build_store(s: &SharedSettings) -> Result<Arc<dyn ObjectStore>, TierError> {
    use object_store::{BackoffConfig, ClientOptions, RetryConfig};
    let err = |e: object_store::Error| TierError::Store(describe(&e));
    // Every request has wharf's own deadline (request_timeout, the fill's
    // minimum rate, PART_TIMEOUT): the client's whole-request timeout would
    // cut a long read.
    let mut options = ClientOptions::new()
        .with_timeout_disabled()
        .with_connect_timeout(s.request_timeout)
        .with_pool_idle_timeout(Duration::from_secs(60))
        .with_pool_max_idle_per_host(16);
    if let Some(e) = &s.endpoint {
        if e.starts_with("http://") {
            options = options.with_allow_http(true);
        }
    }
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: s.request_timeout,
    };
    match s.backend {
        Backend::S3 => {
            let mut b = object_store::aws::AmazonS3Builder::new()
                .with_bucket_name(&s.bucket)
                .with_region(&s.region)
                .with_client_options(options)
                .with_retry(retry);
            if let Some(e) = &s.endpoint {
                b = b.with_endpoint(e);
            }
            match &s.credentials {
                StoreCredentials::Keys {
                    access_key_id,
                    secret_access_key,
                } => {
                    b = b.with_credentials(Arc::new(KeyFiles {
                        id: secret_source(access_key_id),
                        secret: secret_source(secret_access_key),
                    }));
                }
                StoreCredentials::Environment => {
                    // The AWS_* chain, as `from_env` reads it, without
                    // overriding what the config set.
                    let env = object_store::aws::AmazonS3Builder::from_env();
                    for key in [
                        object_store::aws::AmazonS3ConfigKey::AccessKeyId,
                        object_store::aws::AmazonS3ConfigKey::SecretAccessKey,
                        object_store::aws::AmazonS3ConfigKey::Token,
                        object_store::aws::AmazonS3ConfigKey::WebIdentityTokenFile,
                        object_store::aws::AmazonS3ConfigKey::RoleArn,
                        object_store::aws::AmazonS3ConfigKey::ContainerCredentialsRelativeUri,
                        object_store::aws::AmazonS3ConfigKey::ContainerCredentialsFullUri,
                    ] {
                        if let Some(v) = env.get_config_value(&key) {
                            b = b.with_config(key, v);
                        }
                    }
                }
                _ => unreachable!("validated: gs:// credentials go with gs://"),
            }
            Ok(Arc::new(b.build().map_err(err)?))
        }
        Backend::Gcs => {
            let mut b = object_store::gcp::GoogleCloudStorageBuilder::new()
                .with_bucket_name(&s.bucket)
                .with_client_options(options)
                .with_retry(retry);
            if let StoreCredentials::ServiceAccountFile(p) = &s.credentials {
                b = b.with_service_account_path(p.to_string_lossy());
            }
            Ok(Arc::new(b.build().map_err(err)?))
        }
    }
}

enum SecretSource {
    Fixed(Secret),
    File(Watched<Secret>),
}

fn secret_source(spec: &SecretSpec) -> SecretSource {
    match spec {
        SecretSpec::Value(s) => SecretSource::Fixed(s.clone()),
        SecretSpec::File { path, check_mode } => {
            SecretSource::File(Watched::new(path.clone(), *check_mode, |b: &[u8]| {
                std::str::from_utf8(b)
                    .map(|s| Secret::new(s.trim()))
                    .map_err(|_| "not UTF-8".to_owned())
            }))
        }
    }
}

impl SecretSource {
    fn get(&self, what: &str) -> Result<Secret, String> {
        match self {
            SecretSource::Fixed(s) => Ok(s.clone()),
            SecretSource::File(w) => w.get(what).map(|s| (*s).clone()),
        }
    }
}

/// S3 keys read from their files on each request (a `stat` each; a
/// rotation is picked up at once).
struct KeyFiles {
    id: SecretSource,
    secret: SecretSource,
}

impl std::fmt::Debug for KeyFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyFiles(<redacted>)")
    }
}

#[async_trait::async_trait]
impl object_store::CredentialProvider for KeyFiles {
    type Credential = object_store::aws::AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<Self::Credential>> {
        let gen = |e: String| object_store::Error::Generic {
            store: "S3",
            source: e.into(),
        };
        let id = self.id.get("shared tier access key id").map_err(gen)?;
        let secret = self.secret.get("shared tier secret key").map_err(gen)?;
        Ok(Arc::new(object_store::aws::AwsCredential {
            key_id: id.expose().to_owned(),
            secret_key: secret.expose().to_owned(),
            token: None,
        }))
    }
}

/// What the tier's unit tests share: settings, a file holding a blob, and
/// a wait for background uploads.
#[cfg(test)]
pub(crate) mod testing {
    use std::io::Write;
    use std::time::Duration;

    use super::{SharedSettings, StoreCredentials, Tier};

    /// An S3 tier's settings at a dead endpoint (tests give it a store).
    pub fn settings() -> SharedSettings {
        SharedSettings::s3(
            "http://127.0.0.1:1",
            "b",
            "p",
            StoreCredentials::Environment,
        )
    }

    /// A temporary file holding `bytes`, as a cache file would.
    pub fn blob_file(bytes: &[u8]) -> std::fs::File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        file
    }

    /// Waits (on the test's clock) until no upload is queued or running.
    pub async fn uploads_settled(t: &Tier) {
        let mut waited = 0;
        while t.inner.metrics.uploads_in_flight.get() > 0 {
            assert!(waited < 1000, "the upload did not finish");
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += 1;
        }
    }
}

/// One place in the upload queue (see [`Tier::queue_slot`]).
struct Queued(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_util::stream::BoxStream;
    use object_store::memory::InMemory;
    use object_store::path::Path;
    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
        ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
    };

    use super::*;

    /// An S3 error document echoes the access key id and what was signed;
    /// none of it may reach a log or `/readyz`. (Cut at 300 characters
    /// only, a short error prefix once left the key id in.)
    #[test]
    fn a_store_error_body_is_not_quoted() {
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InvalidAccessKeyId</Code><AWSAccessKeyId>AKIDSECRETID</AWSAccessKeyId><StringToSign>AWS4-HMAC-SHA256 x</StringToSign></Error>";
        let e = object_store::Error::Generic {
            store: "S3",
            source: format!("Server returned non-2xx status code: 403 Forbidden: {body}").into(),
        };
        let d = describe(&e);
        assert!(
            !d.contains("AKIDSECRETID") && !d.contains("StringToSign"),
            "{d}"
        );
        assert!(
            d.contains("403 Forbidden") && d.contains("InvalidAccessKeyId"),
            "{d}"
        );
        let long = object_store::Error::Generic {
            store: "S3",
            source: format!("x{}", "é".repeat(400)).into(),
        };
        assert!(describe(&long).len() <= 300);
    }

    /// A store that answers every create-only write "already exists", as
    /// some S3 gateways answer a conditional header they do not support.
    #[derive(Debug)]
    struct RefusesCreates(InMemory);

    impl std::fmt::Display for RefusesCreates {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("RefusesCreates")
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for RefusesCreates {
        async fn put_opts(&self, l: &Path, p: PutPayload, o: PutOptions) -> Result<PutResult> {
            if matches!(o.mode, PutMode::Create) {
                return Err(object_store::Error::Precondition {
                    path: l.to_string(),
                    source: "412".into(),
                });
            }
            self.0.put_opts(l, p, o).await
        }
        async fn put_multipart_opts(
            &self,
            l: &Path,
            o: PutMultipartOptions,
        ) -> Result<Box<dyn MultipartUpload>> {
            self.0.put_multipart_opts(l, o).await
        }
        async fn get_opts(&self, l: &Path, o: GetOptions) -> Result<GetResult> {
            self.0.get_opts(l, o).await
        }
        fn delete_stream(
            &self,
            locations: BoxStream<'static, Result<Path>>,
        ) -> BoxStream<'static, Result<Path>> {
            self.0.delete_stream(locations)
        }
        fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
            self.0.list(prefix)
        }
        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
            self.0.list_with_delimiter(prefix).await
        }
        async fn copy_opts(&self, from: &Path, to: &Path, o: CopyOptions) -> Result<()> {
            self.0.copy_opts(from, to, o).await
        }
    }

    /// Once taken for a store that enforces create-only writes (the probe's
    /// second write was refused, and so was its first): every cold miss
    /// then lost its lease race to nobody and waited max_wait, and no small
    /// blob was ever uploaded ("present").
    #[tokio::test(start_paused = true)]
    async fn a_store_that_refuses_every_create_only_write_turns_leases_off() {
        let store = Arc::new(RefusesCreates(InMemory::new()));
        let settings = crate::shared::testing::settings();
        let t = Tier::with_store(store.clone(), &settings, &Registry::new());
        t.probe().await;
        assert!(
            !t.status().leases,
            "leases on over a store that refuses creates"
        );
        let d = Digest::sha256_of(b"a layer");
        assert!(matches!(t.claim(&d).await, Claim::Alone));
        let bytes = b"a layer";
        let file = crate::shared::testing::blob_file(bytes);
        t.upload(d.clone(), file, bytes.len() as u64, None);
        let m = &t.inner.metrics;
        crate::shared::testing::uploads_settled(&t).await;
        assert_eq!(m.uploads.with_label_values(&["done"]).get(), 1);
        assert_eq!(
            store.head(&t.blob_key(&d)).await.unwrap().size,
            bytes.len() as u64
        );
    }

    /// Whatever the probe found, a waiter that keeps finding no lease yet
    /// losing the race to create it stops waiting (it once polled until
    /// max_wait, ten minutes by default).
    #[tokio::test(start_paused = true)]
    async fn a_waiter_stops_when_an_absent_lease_can_never_be_created() {
        let store = Arc::new(RefusesCreates(InMemory::new()));
        let settings = crate::shared::testing::settings();
        let t = Tier::with_store(store, &settings, &Registry::new());
        let d = Digest::sha256_of(b"a layer");
        assert!(matches!(t.claim(&d).await, Claim::Follow));
        let started = tokio::time::Instant::now();
        assert!(matches!(t.wait(&d, true).await, Waited::Alone));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }
}
