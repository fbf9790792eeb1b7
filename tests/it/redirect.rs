//! Blob redirects, as Docker Hub sends to its CDN: wharf follows them
//! server-side, drops `Authorization` when the host changes, and caches the
//! verified bytes, never the redirect.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};

use crate::harness::*;

#[derive(Default)]
struct Seen {
    cdn_hits: AtomicUsize,
    cdn_with_auth: AtomicUsize,
    front_unauthorized: AtomicUsize,
}

/// Forwards a request to the real registry and returns its answer.
async fn forward(upstream: &str, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let client = reqwest::Client::new();
    let mut r = client.request(req.method().clone(), format!("{upstream}{}", req.uri()));
    for v in req.headers().get_all("accept") {
        r = r.header("accept", v);
    }
    let resp = r.send().await.unwrap();
    let mut b = Response::builder().status(resp.status());
    for h in ["content-type", "docker-content-digest", "content-length"] {
        if let Some(v) = resp.headers().get(h) {
            b = b.header(h, v);
        }
    }
    b.body(Full::new(resp.bytes().await.unwrap())).unwrap()
}

/// Serves `handler` on `ip:0` in the runtime; returns the port.
fn serve<F, Fut>(rt: &tokio::runtime::Runtime, ip: [u8; 4], handler: F) -> u16
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(std::net::SocketAddr::from((
            ip, 0,
        ))))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let h = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    port
}

#[test]
fn blob_redirects_are_followed_without_leaking_credentials_and_never_cached() {
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    up.push("small", "library/test:1", None, false);
    let seen = Arc::new(Seen::default());
    let user = format!("u{}", random_hex(4));
    let pass = random_hex(16);
    let expected_auth = {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
    };

    // The "CDN": another loopback host, serving blob bytes to anyone.
    let (s, real) = (seen.clone(), up.url());
    let cdn = serve(&rt, [127, 0, 0, 2], move |req| {
        let (s, real) = (s.clone(), real.clone());
        async move {
            s.cdn_hits.fetch_add(1, Ordering::SeqCst);
            if req.headers().contains_key("authorization") {
                s.cdn_with_auth.fetch_add(1, Ordering::SeqCst);
            }
            forward(&real, &req).await
        }
    });
    // The registry front: Basic auth required; blob GETs redirect to the CDN.
    let (s, real) = (seen.clone(), up.url());
    let front = serve(&rt, [127, 0, 0, 1], move |req| {
        let (s, real, expected) = (s.clone(), real.clone(), expected_auth.clone());
        async move {
            let authorized = req
                .headers()
                .get("authorization")
                .map(|v| v.as_bytes() == expected.as_bytes())
                .unwrap_or(false);
            if !authorized {
                s.front_unauthorized.fetch_add(1, Ordering::SeqCst);
                return Response::builder()
                    .status(401)
                    .header("www-authenticate", "Basic realm=\"front\"")
                    .body(Full::new(Bytes::from_static(
                        b"{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}",
                    )))
                    .unwrap();
            }
            if req.uri().path().contains("/blobs/") && req.method() == "GET" {
                return Response::builder()
                    .status(307)
                    .header(
                        "location",
                        format!("http://127.0.0.2:{cdn}{}", req.uri().path()),
                    )
                    .body(Full::new(Bytes::new()))
                    .unwrap();
            }
            forward(&real, &req).await
        }
    });

    let tmp = tempfile::tempdir().unwrap();
    let pwf = tmp.path().join("pw");
    std::fs::write(&pwf, &pass).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pwf, std::fs::Permissions::from_mode(0o600)).unwrap();
    let block = format!(
        "[[upstream]]\nname = \"front\"\nurl = \"http://127.0.0.1:{front}\"\ndefault = true\nlibrary_prefix = true\n[upstream.credentials]\nusername = \"{user}\"\npassword_file = {pwf:?}\n"
    );
    let w = Wharf::start(&rt, &block, "");
    let conf = registries_conf(tmp.path(), w.addr);

    let (ok, out) = skopeo_to_dir(
        Some(&conf),
        "docker://docker.io/library/test:1",
        &tmp.path().join("a"),
        false,
    );
    assert!(ok, "{out}");
    let (ok, out) = skopeo_to_dir(
        None,
        &format!("docker://{}/library/test:1", up.addr()),
        &tmp.path().join("direct"),
        false,
    );
    assert!(ok, "{out}");
    assert_eq!(
        dir_contents(&tmp.path().join("a")),
        dir_contents(&tmp.path().join("direct"))
    );

    let hits = seen.cdn_hits.load(Ordering::SeqCst);
    assert!(hits >= 2, "config and layer came from the CDN: {hits}");
    assert_eq!(
        seen.cdn_with_auth.load(Ordering::SeqCst),
        0,
        "Authorization never crosses hosts"
    );
    assert!(
        seen.front_unauthorized.load(Ordering::SeqCst) >= 1,
        "wharf answered the Basic challenge"
    );

    // Again: from cache. The redirect was not cached, the bytes were.
    let (ok, out) = skopeo_to_dir(
        Some(&conf),
        "docker://docker.io/library/test:1",
        &tmp.path().join("b"),
        false,
    );
    assert!(ok, "{out}");
    assert_eq!(seen.cdn_hits.load(Ordering::SeqCst), hits);
    assert_eq!(
        dir_contents(&tmp.path().join("b")),
        dir_contents(&tmp.path().join("direct"))
    );
}
