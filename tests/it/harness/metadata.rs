//! A stand-in for the GCE metadata server's token endpoint, which wharf asks
//! for the node's access token (`gce_metadata = true`). It behaves as the real
//! one: requires `Metadata-Flavor: Google` (403 without), answers
//! `{"access_token", "expires_in", "token_type"}` with `Metadata-Flavor:
//! Google`, and hands out the same token (with a shrinking `expires_in`) until
//! it expires. Its tokens live as long as the test says, seconds rather than
//! the real hour.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::random_hex;

const TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

pub struct MetadataServer {
    pub port: u16,
    /// Token requests answered.
    pub fetches: Arc<AtomicUsize>,
    /// Tokens handed out, with when they stop being valid.
    pub tokens: Arc<Mutex<Vec<(String, Instant)>>>,
}

#[derive(Clone)]
struct State {
    fetches: Arc<AtomicUsize>,
    tokens: Arc<Mutex<Vec<(String, Instant)>>>,
    lifetime: Duration,
}

impl MetadataServer {
    /// Listens on a free loopback port; each token lives `lifetime`.
    pub fn start(rt: &tokio::runtime::Runtime, lifetime: Duration) -> MetadataServer {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = State {
            fetches: Default::default(),
            tokens: Default::default(),
            lifetime,
        };
        let st = state.clone();
        rt.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(&st, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        MetadataServer {
            port,
            fetches: state.fetches,
            tokens: state.tokens,
        }
    }

    /// When the current token stops being valid; past it, the next request
    /// gets a new token.
    pub fn current_until(&self) -> Instant {
        self.tokens
            .lock()
            .unwrap()
            .last()
            .expect("a token was made")
            .1
    }
}

fn answer(
    st: &State,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let reply = |status: u16, json: bool, body: String| {
        let b = hyper::Response::builder()
            .status(status)
            .header("Metadata-Flavor", "Google");
        let b = if json {
            b.header("content-type", "application/json")
        } else {
            b
        };
        b.body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap()
    };
    if req.headers().get("metadata-flavor").map(|v| v.as_bytes()) != Some(b"Google") {
        return reply(
            403,
            false,
            "Missing required header: Metadata-Flavor".into(),
        );
    }
    if req.uri().path() != TOKEN_PATH {
        return reply(404, false, String::new());
    }
    st.fetches.fetch_add(1, Ordering::SeqCst);
    let mut list = st.tokens.lock().unwrap();
    let now = Instant::now();
    if list.last().is_none_or(|(_, until)| *until <= now) {
        list.push((format!("ya29.{}", random_hex(24)), now + st.lifetime));
    }
    let (token, until) = list.last().unwrap().clone();
    let body = serde_json::json!({
        "access_token": token,
        "expires_in": (until - now).as_secs().max(1),
        "token_type": "Bearer",
    });
    reply(200, true, body.to_string())
}
