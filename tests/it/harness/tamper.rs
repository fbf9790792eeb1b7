//! [`Tamper`]: an HTTP relay in front of a real registry that mangles blob
//! downloads on request, to play a hostile or broken upstream with real
//! content: drip the body a few bytes at a time, drop `Content-Length` (send
//! it chunked), announce a false `Content-Length`, corrupt a byte (a wrong
//! digest at the right length), cut the body off mid-way. It can also hold
//! the answers to some requests until another request arrives, so a test
//! decides the order in which wharf's requests are answered instead of
//! hoping for it.
//!
//! Only blob `GET`s are mangled; everything else (the `/v2/` ping, manifests,
//! `HEAD`s) passes through unchanged. Loopback only; every body it sends
//! ends (the upstream's is finite, a drip included), and a relay whose
//! client left stops sending.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

/// The `Content-Length` a mangled blob answer carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Length {
    /// The upstream's own.
    #[default]
    Real,
    /// None: the body is sent chunked, of unknown size to wharf.
    Chunked,
    /// This one, whatever the body holds (cut short when it is larger).
    Fake(u64),
}

/// How blob `GET`s are mangled (the default passes them through).
#[derive(Clone, Debug, Default)]
pub struct Mangle {
    pub length: Length,
    /// Send `.0` bytes every `.1` instead of as fast as the upstream does.
    pub drip: Option<(usize, Duration)>,
    /// Flip the body's first byte: the right length, a wrong digest.
    pub corrupt: bool,
    /// Break the connection after this many body bytes.
    pub cut_after: Option<u64>,
}

/// A mangling relay to one registry, on a loopback port, for the lifetime of
/// the runtime it was started on.
pub struct Tamper {
    pub port: u16,
    mangle: Arc<Mutex<Mangle>>,
    /// (method, path) of every request, in the order they arrived.
    seen: Arc<watch::Sender<Vec<(String, String)>>>,
    /// Requests whose path contains `.0` are answered only once a request
    /// whose path contains `.1` has arrived (or after 20 s).
    hold: Arc<Mutex<Option<(String, String)>>>,
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

impl Tamper {
    /// Starts relaying to `upstream` (`http://127.0.0.1:PORT`).
    pub fn start(rt: &tokio::runtime::Runtime, upstream: String) -> Tamper {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let t = Tamper {
            port,
            mangle: Arc::default(),
            seen: Arc::new(watch::channel(Vec::new()).0),
            hold: Arc::default(),
        };
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let (mangle, seen, hold) = (t.mangle.clone(), t.seen.clone(), t.hold.clone());
        rt.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (mangle, seen, hold, client, upstream) = (
                    mangle.clone(),
                    seen.clone(),
                    hold.clone(),
                    client.clone(),
                    upstream.clone(),
                );
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (mangle, seen, hold, client, upstream) = (
                            mangle.clone(),
                            seen.clone(),
                            hold.clone(),
                            client.clone(),
                            upstream.clone(),
                        );
                        async move {
                            let m = mangle.lock().clone();
                            let hold = hold.lock().clone();
                            relay(req, &client, &upstream, m, &seen, hold).await
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        t
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Mangles blob `GET`s from now on this way.
    pub fn set(&self, m: Mangle) {
        *self.mangle.lock() = m;
    }

    /// Holds the answers to requests whose path contains `path_part` until a
    /// request whose path contains `until` arrives.
    pub fn hold(&self, path_part: &str, until: &str) {
        *self.hold.lock() = Some((path_part.to_owned(), until.to_owned()));
    }

    /// Requests so far with this method whose path contains `part`.
    pub fn count(&self, method: &str, part: &str) -> usize {
        self.seen
            .borrow()
            .iter()
            .filter(|(m, p)| m == method && p.contains(part))
            .count()
    }
}

async fn relay(
    req: hyper::Request<hyper::body::Incoming>,
    client: &reqwest::Client,
    upstream: &str,
    m: Mangle,
    seen: &watch::Sender<Vec<(String, String)>>,
    hold: Option<(String, String)>,
) -> Result<hyper::Response<Body>, std::convert::Infallible> {
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    seen.send_modify(|s| s.push((method.to_string(), path.clone())));
    if let Some((part, until)) = hold.filter(|(part, _)| path.contains(part.as_str())) {
        let mut rx = seen.subscribe();
        let released = rx.wait_for(|s| {
            s.iter()
                .any(|(_, p)| p.contains(until.as_str()) && !p.contains(part.as_str()))
        });
        let _ = tokio::time::timeout(Duration::from_secs(20), released).await;
    }
    let mut fwd = client.request(method.clone(), format!("{upstream}{path}"));
    for (k, v) in req.headers() {
        if k != "host" {
            fwd = fwd.header(k, v);
        }
    }
    let full = |status: u16| {
        hyper::Response::builder()
            .status(status)
            .body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
            .unwrap()
    };
    let Ok(mut resp) = fwd.send().await else {
        return Ok(full(502));
    };
    let blob = method == hyper::Method::GET && path.contains("/blobs/") && resp.status() == 200;
    let mut b = hyper::Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        let framing = k == "content-length" || k == "transfer-encoding";
        if !(blob && framing) {
            b = b.header(k, v);
        }
    }
    if !blob {
        let body = resp.bytes().await.unwrap_or_default();
        return Ok(b
            .body(Full::new(body).map_err(|e| match e {}).boxed())
            .unwrap());
    }
    match m.length {
        Length::Real => {
            if let Some(n) = resp.content_length() {
                b = b.header("content-length", n);
            }
        }
        Length::Chunked => {}
        Length::Fake(n) => b = b.header("content-length", n),
    }
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
    tokio::spawn(async move {
        let mut sent = 0u64;
        while let Ok(Some(mut chunk)) = resp.chunk().await {
            if m.corrupt && sent == 0 && !chunk.is_empty() {
                let mut v = chunk.to_vec();
                v[0] ^= 0xff;
                chunk = Bytes::from(v);
            }
            if let Some(cut) = m.cut_after.filter(|&c| sent + chunk.len() as u64 >= c) {
                let keep = chunk.slice(..(cut - sent) as usize);
                let _ = tx.send(Ok(Frame::data(keep))).await;
                let _ = tx
                    .send(Err(std::io::Error::other("tamper: cut mid-body")))
                    .await;
                return;
            }
            sent += chunk.len() as u64;
            match m.drip {
                None => {
                    if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                        return;
                    }
                }
                Some((n, every)) => {
                    let mut rest = chunk;
                    while !rest.is_empty() {
                        let piece = rest.split_to(n.min(rest.len()));
                        if tx.send(Ok(Frame::data(piece))).await.is_err() {
                            return; // wharf hung up
                        }
                        tokio::time::sleep(every).await;
                    }
                }
            }
        }
    });
    let frames =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    Ok(b.body(StreamBody::new(frames).boxed()).unwrap())
}
