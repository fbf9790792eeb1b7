//! What stands between wharf and an upstream to make it behave like a remote
//! one: [`throttled_relay`], a slow link, and [`RateLimiter`], Docker Hub's
//! pull rate limit (`ratelimit-*` headers, then 429 `TOOMANYREQUESTS`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A TCP relay to `target` that sends the target's bytes on at most
/// `bytes_per_sec` (the other way unthrottled): a slow upstream link.
pub fn throttled_relay(
    rt: &tokio::runtime::Runtime,
    target: SocketAddr,
    bytes_per_sec: u64,
) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(up) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut ur, mut uw) = up.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut uw).await;
                    let _ = uw.shutdown().await;
                });
                let started = tokio::time::Instant::now();
                let mut sent = 0u64;
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match ur.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    sent += n as u64;
                    let due = started + Duration::from_secs_f64(sent as f64 / bytes_per_sec as f64);
                    tokio::time::sleep_until(due).await;
                }
                let _ = cw.shutdown().await;
            });
        }
    });
    port
}

/// Docker Hub's rate limiting in front of a real registry: passes requests
/// through, adds `ratelimit-limit` / `ratelimit-remaining` to manifest
/// answers, and once `limited` is set answers everything with 429
/// `TOOMANYREQUESTS` as Docker Hub does.
pub struct RateLimiter {
    pub port: u16,
    pub limited: Arc<AtomicBool>,
    /// Requests that reached the limiter.
    pub seen: Arc<AtomicUsize>,
}

/// A small window of pulls, for sync's pacing: `limit` manifest `GET`s per
/// `seconds`; the `GET` after the last one gets 429 with `Retry-After:
/// retry_after` and starts a new window.
#[derive(Clone, Copy)]
pub struct Window {
    pub limit: usize,
    pub seconds: u64,
    pub retry_after: u64,
}

impl RateLimiter {
    pub fn start(rt: &tokio::runtime::Runtime, upstream: String) -> RateLimiter {
        RateLimiter::start_with(rt, upstream, None)
    }

    /// Docker Hub's headers with a window of `w.limit` pulls.
    pub fn start_window(rt: &tokio::runtime::Runtime, upstream: String, w: Window) -> RateLimiter {
        RateLimiter::start_with(rt, upstream, Some(w))
    }

    fn start_with(
        rt: &tokio::runtime::Runtime,
        upstream: String,
        window: Option<Window>,
    ) -> RateLimiter {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let limited = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicUsize::new(0));
        let remaining = Arc::new(AtomicUsize::new(window.map_or(100, |w| w.limit)));
        let header = window.map_or("100;w=21600".to_owned(), |w| {
            format!("{};w={}", w.limit, w.seconds)
        });
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let (l, s) = (limited.clone(), seen.clone());
        rt.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (l, s, r, c, up, h) = (l.clone(), s.clone(), remaining.clone(), client.clone(), upstream.clone(), header.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (l, s, r, c, up, h) = (l.clone(), s.clone(), r.clone(), c.clone(), up.clone(), h.clone());
                        async move {
                            s.fetch_add(1, Ordering::SeqCst);
                            let full = |status: u16, body: bytes::Bytes| hyper::Response::builder().status(status).body(http_body_util::Full::new(body));
                            let counted = req.uri().path().contains("/manifests/") && req.method() == hyper::Method::GET;
                            if let (Some(w), true) = (window, counted) {
                                if r.load(Ordering::SeqCst) == 0 {
                                    r.store(w.limit, Ordering::SeqCst);
                                    let mut resp = full(429, bytes::Bytes::from(r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}"#)).unwrap();
                                    resp.headers_mut().insert("retry-after", w.retry_after.to_string().parse().unwrap());
                                    resp.headers_mut().insert("ratelimit-limit", h.parse().unwrap());
                                    resp.headers_mut().insert("ratelimit-remaining", format!("0;w={}", w.seconds).parse().unwrap());
                                    return Ok::<_, std::convert::Infallible>(resp);
                                }
                            }
                            if l.load(Ordering::SeqCst) {
                                let mut resp = full(429, bytes::Bytes::from(r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: https://www.docker.com/increase-rate-limit"}]}"#)).unwrap();
                                resp.headers_mut().insert("ratelimit-limit", "100;w=21600".parse().unwrap());
                                resp.headers_mut().insert("ratelimit-remaining", "0;w=21600".parse().unwrap());
                                return Ok::<_, std::convert::Infallible>(resp);
                            }
                            let url = format!("{up}{}", req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"));
                            let mut fwd = c.request(req.method().clone(), url);
                            for (k, v) in req.headers() {
                                if k != "host" {
                                    fwd = fwd.header(k, v);
                                }
                            }
                            let manifest = req.uri().path().contains("/manifests/");
                            let up_resp = match fwd.send().await {
                                Ok(x) => x,
                                Err(_) => return Ok(full(502, bytes::Bytes::new()).unwrap()),
                            };
                            let mut b = hyper::Response::builder().status(up_resp.status().as_u16());
                            for (k, v) in up_resp.headers() {
                                b = b.header(k, v);
                            }
                            if manifest && req.method() == hyper::Method::GET {
                                let left = r.fetch_sub(1, Ordering::SeqCst) - 1;
                                let w = h.split_once(';').map_or("", |x| x.1);
                                b = b.header("ratelimit-limit", h.as_str()).header("ratelimit-remaining", format!("{left};{w}"));
                            }
                            let body = up_resp.bytes().await.unwrap_or_default();
                            Ok(b.body(http_body_util::Full::new(body)).unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        RateLimiter {
            port,
            limited,
            seen,
        }
    }
}
