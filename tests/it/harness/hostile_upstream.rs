//! [`HostileUpstream`]: a registry that answers whatever the test scripts,
//! in-process on loopback (tokio + hyper, port 0, one per test): per-path
//! answers with any status, headers and body — static, huge (generated as it
//! is sent, never buffered) or dripping — realms and redirects pointing
//! anywhere, and an access log of every request with its headers (to prove
//! no credential reached it). Unscripted paths get a `404 NAME_UNKNOWN`.
//!
//! A second instance on another port or address plays the place an upstream
//! should never send wharf (a thief's token service, a metadata server).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame};
use hyper::{Request, Response};

/// A body generated while it is sent.
#[derive(Clone, Debug)]
pub enum Body {
    Static(Bytes),
    /// `len` bytes of `fill`, in 64 KiB chunks, never held in memory.
    Huge {
        len: u64,
        fill: u8,
    },
    /// `chunk`, `count` times, one every `every`.
    Drip {
        chunk: Bytes,
        every: Duration,
        count: u64,
    },
}

/// One scripted answer.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl Answer {
    pub fn new(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: Body::Static(Bytes::new()),
        }
    }

    /// 200 with a JSON body (`Content-Type: application/json`).
    pub fn json(status: u16, v: &serde_json::Value) -> Answer {
        Answer::new(status)
            .header("content-type", "application/json")
            .body(v.to_string())
    }

    /// A redirect to `location`.
    pub fn redirect(status: u16, location: &str) -> Answer {
        Answer::new(status).header("location", location)
    }

    /// 401 with `WWW-Authenticate: Bearer realm="REALM",service="hostile"`.
    pub fn bearer_challenge(realm: &str) -> Answer {
        Answer::new(401)
            .header(
                "www-authenticate",
                &format!("Bearer realm=\"{realm}\",service=\"hostile\""),
            )
            .header("content-type", "application/json")
            .body(r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#)
    }

    /// A manifest as a registry serves it: its media type and digest.
    pub fn manifest(bytes: &[u8], media_type: &str) -> Answer {
        use sha2::Digest as _;
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
        Answer::new(200)
            .header("content-type", media_type)
            .header("docker-content-digest", &digest)
            .body(bytes.to_vec())
    }

    pub fn header(mut self, k: &str, v: &str) -> Answer {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }

    pub fn body(mut self, b: impl Into<Bytes>) -> Answer {
        self.body = Body::Static(b.into());
        self
    }

    /// `len` bytes generated as they are sent (chunked unless a
    /// `Content-Length` header is scripted too).
    pub fn huge(mut self, len: u64, fill: u8) -> Answer {
        self.body = Body::Huge { len, fill };
        self
    }

    pub fn drip(mut self, chunk: impl Into<Bytes>, every: Duration, count: u64) -> Answer {
        self.body = Body::Drip {
            chunk: chunk.into(),
            every,
            count,
        };
        self
    }
}

/// A request the hostile upstream received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub target: String,
    /// Lowercased names.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    /// Exact paths, then prefixes (keys ending in `*`).
    routes: Mutex<HashMap<String, Answer>>,
    /// (exact path, `Authorization` value): answered before `routes`.
    authorized: Mutex<HashMap<(String, String), Answer>>,
    log: Mutex<Vec<Seen>>,
    /// Body bytes handed to hyper so far, over all answers.
    sent: AtomicU64,
}

/// A scriptable registry on `ip:0`, stopped when dropped (its runtime's
/// task ends with the shutdown signal).
pub struct HostileUpstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl HostileUpstream {
    pub fn start(rt: &tokio::runtime::Runtime, ip: [u8; 4]) -> HostileUpstream {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(SocketAddr::from((ip, 0))))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        rt.spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    a = listener.accept() => match a { Ok(x) => x, Err(_) => continue },
                    _ = &mut rx => return,
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(answer(&st, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        HostileUpstream {
            addr,
            state,
            shutdown: Some(tx),
        }
    }

    /// `http://ip:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ip:port`, as `token_realms` lists it.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Answers `path` (exact, or a prefix when it ends in `*`) with `a`
    /// from now on.
    pub fn on(&self, path: &str, a: Answer) -> &Self {
        self.state.routes.lock().unwrap().insert(path.to_owned(), a);
        self
    }

    /// Answers `path` (exact) with `a` when the request's `Authorization`
    /// is exactly `authorization`; other requests get the `on` answer.
    pub fn on_authorized(&self, path: &str, authorization: &str, a: Answer) -> &Self {
        self.state
            .authorized
            .lock()
            .unwrap()
            .insert((path.to_owned(), authorization.to_owned()), a);
        self
    }

    /// Serves a small valid OCI manifest at `/v2/<repo>/manifests/<tag>`,
    /// for the honest client's cached manifest.
    pub fn serve_manifest(&self, repo: &str, tag: &str) -> Vec<u8> {
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": format!("sha256:{}", "0".repeat(64)), "size": 2},
            "layers": []
        })
        .to_string()
        .into_bytes();
        self.on(
            &format!("/v2/{repo}/manifests/{tag}"),
            Answer::manifest(&m, "application/vnd.oci.image.manifest.v1+json"),
        );
        m
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.log.lock().unwrap().clone()
    }

    /// Requests whose path starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|s| s.target.starts_with(prefix))
            .collect()
    }

    /// Body bytes handed to the connection so far (a client that stops
    /// reading stops this growing, up to the socket buffers).
    pub fn sent_bytes(&self) -> u64 {
        self.state.sent.load(Ordering::SeqCst)
    }
}

impl Drop for HostileUpstream {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn answer(st: &Arc<State>, req: Request<hyper::body::Incoming>) -> Response<Generated> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    st.log.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        target,
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    });
    let path = req.uri().path();
    let authorization = req
        .headers()
        .get("authorization")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let authorized = st
        .authorized
        .lock()
        .unwrap()
        .get(&(path.to_owned(), authorization))
        .cloned();
    let a = authorized.or_else(|| {
        let routes = st.routes.lock().unwrap();
        routes.get(path).cloned().or_else(|| {
            routes
                .iter()
                .filter_map(|(k, a)| Some((k.strip_suffix('*')?, a)))
                .filter(|(k, _)| path.starts_with(k))
                .max_by_key(|(k, _)| k.len())
                .map(|(_, a)| a.clone())
        })
    });
    let a = a.unwrap_or_else(|| {
        Answer::json(
            404,
            &serde_json::json!({"errors":[{"code":"NAME_UNKNOWN","message":"not scripted"}]}),
        )
    });
    let mut b = Response::builder().status(a.status);
    for (k, v) in &a.headers {
        b = b.header(k, v);
    }
    let head = req.method() == hyper::Method::HEAD;
    b.body(Generated::new(
        if head {
            Body::Static(Bytes::new())
        } else {
            a.body
        },
        st.clone(),
    ))
    .unwrap()
}

/// The response body: [`Body`] produced frame by frame.
pub struct Generated {
    body: Body,
    sent: u64,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    state: Arc<State>,
}

impl Generated {
    fn new(body: Body, state: Arc<State>) -> Generated {
        Generated {
            body,
            sent: 0,
            sleep: None,
            state,
        }
    }
}

impl HttpBody for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        const CHUNK: u64 = 64 << 10;
        let this = &mut *self;
        let data = match &this.body {
            Body::Static(b) => {
                if this.sent > 0 || b.is_empty() {
                    return Poll::Ready(None);
                }
                b.clone()
            }
            Body::Huge { len, fill } => {
                let n = CHUNK.min(len - this.sent);
                if n == 0 {
                    return Poll::Ready(None);
                }
                Bytes::from(vec![*fill; n as usize])
            }
            Body::Drip {
                chunk,
                every,
                count,
            } => {
                if this.sent >= count * chunk.len() as u64 {
                    return Poll::Ready(None);
                }
                let every = *every;
                let chunk = chunk.clone();
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.sleep = None;
                chunk
            }
        };
        this.sent += data.len() as u64;
        this.state
            .sent
            .fetch_add(data.len() as u64, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
}
