//! Following a cold fill node to node: while one node (the lease's holder)
//! fetches a blob from its upstream, the nodes waiting for it read the blob
//! from that node as it fills, instead of waiting for its upload to the
//! store. Owns the protocol: the signed request, its check, the client that
//! sends it and the peer metrics. The listener is `server::peers`; the
//! decision to follow, and the resume from the upstream when a leader breaks
//! off, are the mirror's (`mirror::blobs`).
//!
//! One request exists: `GET /wharf-peer/v1/blobs/<digest>`, signed with the
//! key every node shares (`shared.peer_key_*`):
//! `Authorization: WharfPeer t=<unix seconds>,n=<32 hex nonce>,s=<hex
//! HMAC-SHA256(key, text)>` (the text below). A request is accepted within [`MAX_SKEW`] of the receiver's clock, once per nonce
//! (at most [`MAX_NONCES`] remembered: past that, requests are refused as
//! busy rather than a nonce forgotten early). The signed text includes the
//! receiver's advertised `ip:port`, so a request captured on its way to
//! one node is no good at another:
//! `"wharf-peer-v1\n<method>\n<address>\n<path>\n<t>\n<n>"`.
//!
//! The answer is signed too: `WharfPeer-Proof: <hex HMAC-SHA256(key,
//! "wharf-peer-v1-answer\n<n>\n<digest>\n<size>")>` beside a
//! `Content-Length`. A follower uses no byte of an answer without a valid
//! proof for its own nonce, so whatever else answers at a peer address (a
//! lease in the bucket is writable by whoever holds the store's keys) is
//! never read into a fill: a forged lease can make a node send one signed
//! `GET` of that fixed path to an `ip:port` it names, nothing more. Peer
//! addresses are `ip:port` only (no names, paths or user info); loopback
//! ones are followed only by a node that is itself on loopback (one host:
//! tests, benches), and link-local, unspecified and multicast never.
//!
//! Must never: serve a blob this node does not lead for the fleet right now
//! (only a digest whose lease it holds: content that is on its way to the
//! store anyway, never what a `shared = false` upstream brought, never a
//! blob merely cached here); start a fill or ask an upstream on a peer's
//! behalf; trust a byte from a peer (the follower's fill checks the digest
//! and the size the upstream announced, after the upstream confirmed that
//! the follower's repository holds the blob, as for a tier copy); send or
//! accept the key itself (only MACs travel); follow a redirect or a proxy.
//!
//! Trade-offs: peer traffic is plain HTTP on the node network. It is
//! authenticated (nobody without the key gets a byte, a captured request
//! cannot be replayed) and its content is verified, but not encrypted: a
//! layer crossing between nodes can be read by whoever can read that
//! network, as it could in the store's bucket by whoever holds the store's
//! keys. Keep `peer_listen` on the nodes' private network (the DaemonSet's
//! node IP, a firewall rule for the port between nodes only), or leave it
//! unset: nodes then wait for the leader's upload (slower, no peer traffic).

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{IntCounterVec, Opts, Registry};
use ring::hmac;

use crate::registry::Digest;

use super::settings::PeerSettings;
use super::SecretSource;

/// How far a request's time may be from the receiver's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(30);
/// Nonces remembered at once (each for `2 × MAX_SKEW`): 64 Ki, a few MiB,
/// over 500 requests per second per node for a minute.
pub const MAX_NONCES: u64 = 64 << 10;
/// The header carrying the answer's proof.
pub const PROOF_HEADER: &str = "wharfpeer-proof";
/// How long a follower waits for a leader's next byte before fetching the
/// rest from its upstream (a leader's node lost without a FIN or RST), as
/// the upstream client does.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// A peer is on the node network: connecting takes no longer than this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The path prefix of the one peer request.
pub const BLOBS_PATH: &str = "/wharf-peer/v1/blobs/";
const SCHEME: &str = "WharfPeer";

/// Why a peer request was refused (never more detail for the asker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No or a malformed `Authorization`.
    Malformed,
    /// Outside [`MAX_SKEW`].
    Stale,
    /// The MAC does not match this node's key.
    BadSignature,
    /// A nonce seen before.
    Replayed,
    /// This node cannot read its own key.
    NoKey,
    /// [`MAX_NONCES`] are remembered: refused until some expire.
    Busy,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Malformed => "malformed",
            Refused::Stale => "stale",
            Refused::BadSignature => "bad_signature",
            Refused::Replayed => "replayed",
            Refused::NoKey => "no_key",
            Refused::Busy => "busy",
        }
    }
}

/// This node's side of peer following.
pub(super) struct Peers {
    key: SecretSource,
    listen: SocketAddr,
    configured: Option<String>,
    /// What other nodes dial, once the listener is bound.
    address: OnceLock<String>,
    client: reqwest::Client,
    /// Nonces accepted within the last `2 × MAX_SKEW` (and a little).
    nonces: moka::sync::Cache<[u8; 16], ()>,
    metrics: PeerMetrics,
}

struct PeerMetrics {
    served: IntCounterVec,
    reads: IntCounterVec,
}

fn message(method: &str, address: &str, path: &str, t: u64, nonce: &str) -> String {
    format!("wharf-peer-v1\n{method}\n{address}\n{path}\n{t}\n{nonce}")
}

fn sign(key: &[u8], text: &str) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), text.as_bytes())
}

/// The `Authorization` value of a request to the node at `address`
/// (`ip:port`), signed with `key` at `t` (unix seconds).
pub fn authorization(
    key: &[u8],
    method: &str,
    address: &str,
    path: &str,
    t: u64,
    nonce: &str,
) -> String {
    let s = hex::encode(sign(key, &message(method, address, path, t, nonce)).as_ref());
    format!("{SCHEME} t={t},n={nonce},s={s}")
}

fn answer_text(nonce: &str, digest: &str, size: u64) -> String {
    format!("wharf-peer-v1-answer\n{nonce}\n{digest}\n{size}")
}

/// The proof a leader sends with its answer to the request with `nonce`.
pub fn proof(key: &[u8], nonce: &str, digest: &str, size: u64) -> String {
    hex::encode(sign(key, &answer_text(nonce, digest, size)).as_ref())
}

/// Whether `proof` is the leader's for this nonce, digest and size.
pub fn proof_holds(key: &[u8], proof: &str, nonce: &str, digest: &str, size: u64) -> bool {
    let Ok(tag) = hex::decode(proof) else {
        return false;
    };
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::verify(&k, answer_text(nonce, digest, size).as_bytes(), &tag).is_ok()
}

/// A peer address as a lease names it, if this node may dial it: an
/// `ip:port` (nothing else), not this node's own, never link-local,
/// unspecified or multicast, and loopback only when this node is itself on
/// loopback (`own`).
pub fn dialable(address: &str, own: &str) -> Option<SocketAddr> {
    let a: SocketAddr = address.parse().ok()?;
    let own: Option<SocketAddr> = own.parse().ok();
    let ip = match a.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    };
    let link_local = match ip {
        std::net::IpAddr::V4(v4) => v4.is_link_local(),
        std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    if ip.is_unspecified() || ip.is_multicast() || link_local || a.port() == 0 {
        return None;
    }
    if ip.is_loopback() && !own.is_some_and(|o| o.ip().is_loopback()) {
        return None;
    }
    if own == Some(a) {
        return None;
    }
    Some(a)
}

/// Checks a request's `Authorization` against `key` at `now` (unix
/// seconds), as sent to `address` (this node's). Returns the nonce, which
/// the caller must not accept twice.
pub fn verify<'a>(
    key: &[u8],
    header: Option<&'a str>,
    method: &str,
    address: &str,
    path: &str,
    now: u64,
) -> Result<&'a str, Refused> {
    let rest = header
        .and_then(|h| h.strip_prefix(SCHEME))
        .and_then(|h| h.strip_prefix(' '))
        .ok_or(Refused::Malformed)?;
    let (mut t, mut n, mut s) = (None, None, None);
    for part in rest.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("n", v)) => n = Some(v),
            Some(("s", v)) => s = hex::decode(v).ok(),
            _ => return Err(Refused::Malformed),
        }
    }
    let (Some(t), Some(n), Some(s)) = (t, n, s) else {
        return Err(Refused::Malformed);
    };
    if n.len() != 32 || !n.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Refused::Malformed);
    }
    if now.abs_diff(t) > MAX_SKEW.as_secs() {
        return Err(Refused::Stale);
    }
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::verify(&k, message(method, address, path, t, n).as_bytes(), &s)
        .map_err(|_| Refused::BadSignature)?;
    Ok(n)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Peers {
    pub(super) fn new(s: &PeerSettings, request_timeout: Duration, registry: &Registry) -> Peers {
        let counter = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(request_timeout.min(CONNECT_TIMEOUT))
            .read_timeout(READ_TIMEOUT)
            .tcp_keepalive(Duration::from_secs(15))
            .http1_only()
            .tls_built_in_native_certs(false)
            .build()
            .expect("a plain HTTP client builds");
        Peers {
            key: super::secret_source(&s.key),
            listen: s.listen,
            configured: s.address.clone(),
            address: OnceLock::new(),
            client,
            nonces: moka::sync::Cache::builder()
                .max_capacity(MAX_NONCES)
                .time_to_live(MAX_SKEW * 2 + Duration::from_secs(2))
                .build(),
            metrics: PeerMetrics {
                served: counter(
                    "wharf_shared_peer_requests_total",
                    "Requests from other nodes on shared.peer_listen, by result: served (a blob this node is filling for the fleet), not_leading (404: this node holds no lease on it, or does not know its size), refused (401: unsigned, wrongly signed, stale or replayed), invalid (not a peer request), busy (over the connection caps, or too many nonces to remember), no_key (this node cannot read its peer key)",
                    "result",
                ),
                reads: counter(
                    "wharf_shared_peer_reads_total",
                    "Blobs this node read from the node leading their fill, by result: done, resumed (the leader broke off or stalled; the rest came from the upstream), failed (the fill failed: the client saw a failed transfer), bad (the peer's bytes failed verification: not followed for an hour), unavailable (no answer, a refusal or no valid proof: waited for the store instead), wrong_size (its length differs from the upstream's: not used)",
                    "result",
                ),
            },
        }
    }

    pub(super) fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// The listener is bound at `local`: what other nodes dial is the
    /// configured address, else the bound one.
    pub(super) fn bound(&self, local: SocketAddr) {
        let a = self.configured.clone().unwrap_or_else(|| local.to_string());
        let _ = self.address.set(a);
    }

    pub(super) fn address(&self) -> Option<&str> {
        self.address.get().map(String::as_str)
    }

    pub(super) fn key(&self) -> Result<Vec<u8>, Refused> {
        self.key
            .get("shared.peer_key")
            .map(|s| s.expose().trim().as_bytes().to_vec())
            .map_err(|_| Refused::NoKey)
    }

    /// Checks a request to this node's listener (signature, time, nonce);
    /// gives back its nonce, for the answer's proof.
    pub(super) fn check<'a>(
        &self,
        header: Option<&'a str>,
        method: &str,
        path: &str,
    ) -> Result<&'a str, Refused> {
        let key = self.key()?;
        let own = self.address().ok_or(Refused::NoKey)?;
        let nonce = verify(&key, header, method, own, path, unix_now())?;
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(nonce, &mut bytes).map_err(|_| Refused::Malformed)?;
        // A full cache would forget nonces before their time: refuse
        // instead (moka counts lazily: run its pending work first).
        self.nonces.run_pending_tasks();
        if self.nonces.entry_count() >= MAX_NONCES {
            return Err(Refused::Busy);
        }
        // Insert-if-absent, atomically: two copies of one request racing
        // each other get one answer.
        let entry = self.nonces.entry(bytes).or_insert(());
        if !entry.is_fresh() {
            return Err(Refused::Replayed);
        }
        Ok(nonce)
    }

    /// Asks the node at `address` for the blob it is filling. Only the
    /// head is awaited here (within `timeout`); the body is the fill's. An
    /// answer without the leader's proof for this request, digest and
    /// length is refused before its first byte.
    pub(super) async fn get(
        &self,
        address: SocketAddr,
        d: &Digest,
        timeout: Duration,
    ) -> Result<(reqwest::Response, u64), String> {
        let key = self
            .key()
            .map_err(|_| "cannot read shared.peer_key".to_owned())?;
        let path = format!("{BLOBS_PATH}{d}");
        let url = reqwest::Url::parse(&format!("http://{address}{path}"))
            .map_err(|_| format!("{address} is no peer address"))?;
        if url.path() != path || url.query().is_some() {
            return Err(format!("{address} is no peer address"));
        }
        let mut nonce = [0u8; 16];
        getrandom::getrandom(&mut nonce).expect("the OS has randomness");
        let nonce = hex::encode(nonce);
        let at = address.to_string();
        let auth = authorization(&key, "GET", &at, &path, unix_now(), &nonce);
        let send = self
            .client
            .get(url)
            .header(http::header::AUTHORIZATION, auth)
            .send();
        let resp = match tokio::time::timeout(timeout, send).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(format!("{address}: {}", without_url(&e))),
            Err(_) => return Err(format!("{address} did not answer within {timeout:?}")),
        };
        if resp.status() != http::StatusCode::OK {
            return Err(format!("{address} answered {}", resp.status()));
        }
        let Some(size) = resp.content_length() else {
            return Err(format!("{address} sent no length"));
        };
        let proven = resp
            .headers()
            .get(PROOF_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|p| proof_holds(&key, p, &nonce, &d.to_string(), size));
        if !proven {
            return Err(format!(
                "{address} sent no valid proof: not a wharf peer with this fleet's key"
            ));
        }
        Ok((resp, size))
    }

    pub(super) fn served(&self, result: &str) {
        self.metrics.served.with_label_values(&[result]).inc();
    }

    pub(super) fn read(&self, result: &str) {
        self.metrics.reads.with_label_values(&[result]).inc();
    }
}

/// A client error's text without its URL (no secret is in a peer URL, but
/// the log says which node already).
fn without_url(e: &reqwest::Error) -> String {
    let mut e = e.to_string();
    if let Some(i) = e.find(" for url (") {
        e.truncate(i);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NONCE: &str = "00112233445566778899aabbccddeeff";

    #[test]
    fn a_signed_request_verifies_once_and_only_as_signed() {
        let path = "/wharf-peer/v1/blobs/sha256:ab";
        let at = "10.0.0.7:5052";
        let h = authorization(KEY, "GET", at, path, 1000, NONCE);
        assert_eq!(verify(KEY, Some(&h), "GET", at, path, 1010), Ok(NONCE));
        // Another path, method, node, key or time: refused.
        let refused = |key: &[u8], h: &str, method: &str, at: &str, path: &str, now: u64| {
            verify(key, Some(h), method, at, path, now).unwrap_err()
        };
        let other = "/wharf-peer/v1/blobs/sha256:cd";
        assert_eq!(
            refused(KEY, &h, "GET", at, other, 1000),
            Refused::BadSignature
        );
        assert_eq!(
            refused(KEY, &h, "HEAD", at, path, 1000),
            Refused::BadSignature
        );
        let elsewhere = "10.0.0.8:5052";
        assert_eq!(
            refused(KEY, &h, "GET", elsewhere, path, 1000),
            Refused::BadSignature
        );
        let wrong = b"fedcba9876543210fedcba9876543210";
        assert_eq!(
            refused(wrong, &h, "GET", at, path, 1000),
            Refused::BadSignature
        );
        let forged = h.replace("t=1000", "t=1020");
        assert_eq!(
            refused(KEY, &forged, "GET", at, path, 1020),
            Refused::BadSignature
        );
        assert_eq!(refused(KEY, &h, "GET", at, path, 1031), Refused::Stale);
        assert_eq!(refused(KEY, &h, "GET", at, path, 969), Refused::Stale);
        for bad in [
            None,
            Some("Bearer x"),
            Some("WharfPeer t=1000"),
            Some("WharfPeer t=1000,n=zz,s=00"),
            Some("WharfPeer t=1000,n=00112233445566778899aabbccddeeff,s=00,x=1"),
        ] {
            let r = verify(KEY, bad, "GET", at, path, 1000);
            assert_eq!(r, Err(Refused::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn an_answer_is_proven_for_its_request_digest_and_length_only() {
        let d = "sha256:ab";
        let p = proof(KEY, NONCE, d, 42);
        assert!(proof_holds(KEY, &p, NONCE, d, 42));
        assert!(!proof_holds(KEY, &p, NONCE, d, 43));
        assert!(!proof_holds(KEY, &p, NONCE, "sha256:cd", 42));
        assert!(!proof_holds(KEY, &p, &NONCE.replace('0', "1"), d, 42));
        let wrong = b"fedcba9876543210fedcba9876543210";
        assert!(!proof_holds(wrong, &p, NONCE, d, 42));
        assert!(!proof_holds(KEY, "zz", NONCE, d, 42));
    }

    #[test]
    fn only_plain_addresses_of_other_nodes_are_dialled() {
        let own = "10.0.0.7:5052";
        assert!(dialable("10.0.0.8:5052", own).is_some());
        assert!(dialable("[fd00::8]:5052", own).is_some());
        for bad in [
            "10.0.0.7:5052", // itself
            "169.254.169.254:80",
            "169.254.169.254/latest/meta-data#",
            "127.0.0.1:5050",
            "[::1]:5050",
            "[::ffff:127.0.0.1]:5050",
            "[fe80::1]:5052",
            "0.0.0.0:5052",
            "224.0.0.1:5052",
            "node-b:5052",
            "x@10.0.0.9:10255",
            "10.0.0.9:0",
            "10.0.0.9",
        ] {
            assert!(dialable(bad, own).is_none(), "{bad}");
        }
        // A fleet on one host (tests, benches) dials loopback.
        assert!(dialable("127.0.0.1:5053", "127.0.0.1:5052").is_some());
        assert!(dialable("127.0.0.1:5052", "127.0.0.1:5052").is_none());
    }

    #[test]
    fn a_nonce_is_accepted_once() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("peer.key");
        std::fs::write(&key, KEY).unwrap();
        let s = PeerSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            address: None,
            key: crate::upstream::credentials::SecretSpec::File {
                path: key,
                check_mode: false,
            },
        };
        let p = Peers::new(&s, Duration::from_secs(1), &Registry::new());
        let at = "127.0.0.1:5052";
        p.bound(at.parse().unwrap());
        let path = "/wharf-peer/v1/blobs/sha256:ab";
        let h = authorization(KEY, "GET", at, path, unix_now(), NONCE);
        assert_eq!(p.check(Some(&h), "GET", path), Ok(NONCE));
        assert_eq!(p.check(Some(&h), "GET", path), Err(Refused::Replayed));
        // A fresh nonce passes.
        let n2 = NONCE.replace('0', "1");
        let h2 = authorization(KEY, "GET", at, path, unix_now(), &n2);
        assert_eq!(p.check(Some(&h2), "GET", path), Ok(n2.as_str()));
    }
}
