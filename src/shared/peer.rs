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
//! HMAC-SHA256(key, "wharf-peer-v1\n<method>\n<path>\n<t>\n<n>")>`. A request
//! is accepted within [`MAX_SKEW`] of the receiver's clock, once per nonce.
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
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Malformed => "malformed",
            Refused::Stale => "stale",
            Refused::BadSignature => "bad_signature",
            Refused::Replayed => "replayed",
            Refused::NoKey => "no_key",
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
    /// Nonces accepted within the last `2 × MAX_SKEW`.
    nonces: moka::sync::Cache<String, ()>,
    metrics: PeerMetrics,
}

struct PeerMetrics {
    served: IntCounterVec,
    reads: IntCounterVec,
}

/// The MAC of one request.
fn mac(key: &[u8], method: &str, path: &str, t: u64, nonce: &str) -> hmac::Tag {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&k, message(method, path, t, nonce).as_bytes())
}

fn message(method: &str, path: &str, t: u64, nonce: &str) -> String {
    format!("wharf-peer-v1\n{method}\n{path}\n{t}\n{nonce}")
}

/// The `Authorization` value of a request signed with `key` at `t` (unix
/// seconds).
pub fn authorization(key: &[u8], method: &str, path: &str, t: u64, nonce: &str) -> String {
    let s = hex::encode(mac(key, method, path, t, nonce).as_ref());
    format!("{SCHEME} t={t},n={nonce},s={s}")
}

/// Checks a request's `Authorization` against `key` at `now` (unix
/// seconds). Returns the nonce, which the caller must not accept twice.
pub fn verify<'a>(
    key: &[u8],
    header: Option<&'a str>,
    method: &str,
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
    hmac::verify(&k, message(method, path, t, n).as_bytes(), &s)
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
            .connect_timeout(request_timeout)
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
                .max_capacity(1 << 20)
                .time_to_live(MAX_SKEW * 2)
                .build(),
            metrics: PeerMetrics {
                served: counter(
                    "wharf_shared_peer_requests_total",
                    "Requests from other nodes on shared.peer_listen, by result: served (a blob this node is filling for the fleet), not_leading (404: this node holds no lease on it), refused (401: unsigned, wrongly signed, stale or replayed), invalid (not a peer request), busy (over the connection caps)",
                    "result",
                ),
                reads: counter(
                    "wharf_shared_peer_reads_total",
                    "Blobs this node read from the node leading their fill, by result: done, resumed (the leader broke off; the rest came from the upstream), unavailable (the leader did not answer or refused: waited for the store instead), wrong_size (its size differs from the upstream's: not used)",
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

    fn key(&self) -> Result<Vec<u8>, Refused> {
        self.key
            .get("shared.peer_key")
            .map(|s| s.expose().trim().as_bytes().to_vec())
            .map_err(|_| Refused::NoKey)
    }

    /// Checks a request to this node's listener (signature, time, nonce).
    pub(super) fn check(
        &self,
        header: Option<&str>,
        method: &str,
        path: &str,
    ) -> Result<(), Refused> {
        let key = self.key()?;
        let nonce = verify(&key, header, method, path, unix_now())?;
        // Insert-if-absent, atomically: two copies of one request racing
        // each other get one answer.
        let entry = self.nonces.entry(nonce.to_owned()).or_insert(());
        if !entry.is_fresh() {
            return Err(Refused::Replayed);
        }
        Ok(())
    }

    /// Asks the node at `address` for the blob it is filling. Only the
    /// head is awaited here (within `timeout`); the body is the fill's.
    pub(super) async fn get(
        &self,
        address: &str,
        d: &Digest,
        timeout: Duration,
    ) -> Result<reqwest::Response, String> {
        let key = self
            .key()
            .map_err(|_| "cannot read shared.peer_key".to_owned())?;
        let path = format!("{BLOBS_PATH}{d}");
        let url = reqwest::Url::parse(&format!("http://{address}{path}"))
            .map_err(|_| format!("{address:?} is no peer address"))?;
        let mut nonce = [0u8; 16];
        getrandom::getrandom(&mut nonce).expect("the OS has randomness");
        let auth = authorization(&key, "GET", &path, unix_now(), &hex::encode(nonce));
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
        Ok(resp)
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
        let h = authorization(KEY, "GET", path, 1000, NONCE);
        assert_eq!(verify(KEY, Some(&h), "GET", path, 1010), Ok(NONCE));
        // Another path, method, key or time: refused.
        let other = "/wharf-peer/v1/blobs/sha256:cd";
        assert_eq!(
            verify(KEY, Some(&h), "GET", other, 1000),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            verify(KEY, Some(&h), "HEAD", path, 1000),
            Err(Refused::BadSignature)
        );
        let wrong = b"fedcba9876543210fedcba9876543210";
        assert_eq!(
            verify(wrong, Some(&h), "GET", path, 1000),
            Err(Refused::BadSignature)
        );
        let forged = h.replace("t=1000", "t=1020");
        assert_eq!(
            verify(KEY, Some(&forged), "GET", path, 1020),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            verify(KEY, Some(&h), "GET", path, 1031),
            Err(Refused::Stale)
        );
        assert_eq!(verify(KEY, Some(&h), "GET", path, 969), Err(Refused::Stale));
        for bad in [
            None,
            Some("Bearer x"),
            Some("WharfPeer t=1000"),
            Some("WharfPeer t=1000,n=zz,s=00"),
            Some("WharfPeer t=1000,n=00112233445566778899aabbccddeeff,s=00,x=1"),
        ] {
            assert_eq!(
                verify(KEY, bad, "GET", path, 1000),
                Err(Refused::Malformed),
                "{bad:?}"
            );
        }
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
        let path = "/wharf-peer/v1/blobs/sha256:ab";
        let h = authorization(KEY, "GET", path, unix_now(), NONCE);
        assert_eq!(p.check(Some(&h), "GET", path), Ok(()));
        assert_eq!(p.check(Some(&h), "GET", path), Err(Refused::Replayed));
        // A fresh nonce passes.
        let h2 = authorization(KEY, "GET", path, unix_now(), &NONCE.replace('0', "1"));
        assert_eq!(p.check(Some(&h2), "GET", path), Ok(()));
    }
}
