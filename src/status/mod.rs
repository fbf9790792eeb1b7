//! The status page: what the cache holds, what it saved, what the upstreams,
//! syncs and imports are doing, and the last failed requests, for an
//! operator's browser; and the same figures as JSON under `/api/`, so the
//! page and scripts read one source.
//!
//! Served on the admin listener to 127.0.0.1, ::1 and
//! `server.status_networks` only, and only under an address or `localhost`
//! as its host (DNS rebinding); others get 404 there (`/metrics` and the
//! probes are unaffected). Views: `/`, `/upstreams/`, `/images/?q=&page=`,
//! `/image/?upstream=&repo=&digest=`, `/sync/`, `/problems/`; JSON at
//! `/api/overview`, `/api/upstreams`, `/api/images`, `/api/image`,
//! `/api/sync`, `/api/problems`.
//!
//! Owns: the views ([`model`]), the records only it needs ([`record`]), the
//! HTML ([`html`], [`svg`]), its stylesheet and script, routing and headers.
//! Must never change state (GET and HEAD only; nothing written, no catalog
//! write-back), show a credential or wharf's internal error detail, or load
//! anything from elsewhere (the Content-Security-Policy allows only itself).

pub mod html;
pub mod model;
pub mod record;
pub mod svg;

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::app::App;
use crate::own_thread::OwnThread;
use crate::server::Body;

pub use record::{ImportOutcome, ImportProgress, Problem, Records};

/// What a view is rendered for: its name (the navigation's current entry)
/// and the prefix its links start with.
pub struct Page {
    pub view: &'static str,
    pub base: &'static str,
}

/// Every response of the page: nothing but wharf itself may be loaded,
/// nothing inline runs, no page may frame it, nothing is cached.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The stylesheet and script, named by a hash of their content so they can
/// be cached for ever.
pub mod assets {
    use std::sync::LazyLock;

    pub struct Asset {
        body: &'static str,
        ext: &'static str,
        pub content_type: &'static str,
        name: LazyLock<String>,
    }

    impl Asset {
        pub fn name(&self) -> &str {
            &self.name
        }
        pub fn body(&self) -> &'static str {
            self.body
        }
        pub fn ext(&self) -> &'static str {
            self.ext
        }
    }

    fn named(body: &str, ext: &str) -> String {
        use sha2::Digest;
        let h = sha2::Sha256::digest(body.as_bytes());
        format!("status.{}.{ext}", &hex::encode(h)[..12])
    }

    const CSS_BODY: &str = include_str!("assets/status.css");
    const JS_BODY: &str = include_str!("assets/status.js");

    pub static CSS: Asset = Asset {
        body: CSS_BODY,
        ext: "css",
        content_type: "text/css; charset=utf-8",
        name: LazyLock::new(|| named(CSS_BODY, "css")),
    };
    pub static JS: Asset = Asset {
        body: JS_BODY,
        ext: "js",
        content_type: "text/javascript; charset=utf-8",
        name: LazyLock::new(|| named(JS_BODY, "js")),
    };
}

/// Whether `path` belongs to the page (everything on the admin listener
/// but `/metrics`, `/healthz` and `/readyz`).
pub fn owns(path: &str) -> bool {
    !matches!(path, "/metrics" | "/healthz" | "/readyz")
}

/// Whether a peer may see the page: 127.0.0.1, ::1, or a network of
/// `server.status_networks`.
pub fn allowed(app: &App, ip: std::net::IpAddr) -> bool {
    crate::admin::is_probe_peer(ip)
        || app
            .status_networks
            .iter()
            .any(|n| n.contains(&ip.to_canonical()))
}

/// Whether the request names wharf by an address or `localhost`: a page
/// elsewhere that rebinds its own DNS name to 127.0.0.1 (DNS rebinding)
/// reaches the page with its name in `Host`, and gets 404.
pub fn host_ok(authority: Option<&str>) -> bool {
    let Some(a) = authority else {
        return false;
    };
    let host = match a.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => a.rsplit_once(':').map_or(a, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                a
            }
        }),
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok()
}

/// Query parameters, percent-decoded (`+` is a space, as forms send it).
fn param(query: Option<&str>, name: &str) -> String {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default()
}

fn with_headers(mut resp: Response<Body>, content_type: &str, store: bool) -> Response<Body> {
    let cache = if store {
        "public, max-age=31536000, immutable"
    } else {
        "no-store"
    };
    let pairs = [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            header::HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
        (header::CACHE_CONTROL, cache),
    ];
    let h = resp.headers_mut();
    for (k, v) in pairs {
        h.insert(k, HeaderValue::from_str(v).expect("static header values"));
    }
    resp
}

fn respond(
    method: &Method,
    status: StatusCode,
    body: String,
    content_type: &str,
    store: bool,
) -> Response<Body> {
    let len = body.len();
    let body = if method == Method::HEAD {
        crate::server::full_body(bytes::Bytes::new())
    } else {
        crate::server::full_body(body)
    };
    let resp = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, len)
        .body(body)
        .expect("valid response");
    with_headers(resp, content_type, store)
}

/// Views rendering or queued for the render thread: a view waits for a
/// place before it is queued, and a view whose client went away gives its
/// place back without being rendered.
const RENDERS_AT_ONCE: usize = 4;
static RENDERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(RENDERS_AT_ONCE);

/// Room the render thread's views take their memory from, so that the
/// trim after them returns it (`crate::memory`): a view's peak is under
/// 1 MiB at 100,000 blobs (a page of 50 repositories rendered twice over,
/// as its body and inside the layout); beyond the room the render thread's
/// arena grows as any thread's does.
const RENDER_SCRATCH: usize = 4 << 20;

/// The thread every view renders on, started with the first view.
fn render_thread() -> Option<&'static OwnThread> {
    static THREAD: std::sync::OnceLock<OwnThread> = std::sync::OnceLock::new();
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    // One start at a time: a second thread would end, and its room stay
    // in its arena.
    static STARTING: parking_lot::Mutex<()> = parking_lot::Mutex::new(());
    if THREAD.get().is_none() {
        let _one = STARTING.lock();
        if let Some(t) = THREAD.get() {
            return Some(t);
        }
        let room = || crate::memory::reserve_returnable_scratch(RENDER_SCRATCH);
        match OwnThread::start_with("wharf-status", room) {
            Ok(t) => drop(THREAD.set(t)),
            Err(e) => {
                if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(error = %e, "status page: cannot start its thread");
                }
            }
        }
    }
    THREAD.get()
}

/// A view's place among `RENDERS`, held from before it is queued until its
/// job ends on the render thread, rendered or dropped unrun (its client
/// left); then [`release_render_memory`].
struct Place(#[allow(dead_code)] tokio::sync::SemaphorePermit<'static>);

impl Drop for Place {
    fn drop(&mut self) {
        release_render_memory();
    }
}

/// After a view, when no other view holds a place, and at most once a
/// second: hand the free pages back to the system (`malloc_trim`), so that
/// a page left open, refreshing every 10 s, does not keep the peak of its
/// largest view resident (the views' memory comes from the thread's
/// returnable room, [`RENDER_SCRATCH`]). A trim walks (and briefly locks)
/// every arena, so a burst of views gets at most one a second, not one per
/// view, and none if it ends within a second of the last. Runs on the
/// render thread, while the caller still holds its place.
fn release_render_memory() {
    static LAST: parking_lot::Mutex<Option<std::time::Instant>> = parking_lot::Mutex::new(None);
    if RENDERS.available_permits() + 1 < RENDERS_AT_ONCE {
        return;
    }
    let mut last = LAST.lock();
    if last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1)) {
        crate::memory::release_scratch_memory();
        *last = Some(std::time::Instant::now());
    }
}

const HTML: &str = "text/html; charset=utf-8";
const JSON: &str = "application/json";

fn json<T: serde::Serialize>(method: &Method, status: StatusCode, v: &T) -> Response<Body> {
    let text = serde_json::to_string(v).expect("views serialize");
    respond(method, status, text, JSON, false)
}

/// Answers a request for the page on the admin listener (the caller checked
/// [`owns`] and [`allowed`]).
pub async fn serve(
    app: &Arc<App>,
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = json(
            method,
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({"error": "the status page is read-only: GET or HEAD"}),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if let Some(name) = path.strip_prefix("/static/") {
        for a in [&assets::CSS, &assets::JS] {
            if name == a.name() {
                return respond(
                    method,
                    StatusCode::OK,
                    a.body().into(),
                    a.content_type,
                    true,
                );
            }
        }
        return respond(
            method,
            StatusCode::NOT_FOUND,
            "not found".into(),
            "text/plain",
            false,
        );
    }
    let (api, view) = match path.strip_prefix("/api/") {
        Some(v) => (true, v.trim_end_matches('/')),
        None => (false, path.trim_matches('/')),
    };
    let view = if view.is_empty() { "overview" } else { view };
    let (app2, view2) = (app.clone(), view.to_owned());
    let (q, page, upstream, repo, digest) = (
        param(query, "q"),
        param(query, "page").parse::<usize>().unwrap_or(1),
        param(query, "upstream"),
        param(query, "repo"),
        param(query, "digest"),
    );
    // Views read the catalog and files: off the async threads, on one
    // thread of their own (so the memory they free is reused there, not
    // spread over the blocking threads' arenas), a few queued at most. One
    // view waiting for a catalog build (0.6 s at 100,000 blobs) holds up the
    // others meanwhile.
    let Some(thread) = render_thread() else {
        return json(
            method,
            StatusCode::INTERNAL_SERVER_ERROR,
            &serde_json::json!({"error": "cannot start the status page's thread; see wharf's log"}),
        );
    };
    let Ok(place) = RENDERS.acquire().await.map(Place) else {
        unreachable!("the semaphore is never closed")
    };
    let rendered = thread
        .run_async(move || {
            // Given back (and the trim tried) when the job ends.
            let _place = place;
            // A view that panics answers 500; the thread goes on.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                render(&app2, &view2, api, &q, page, &upstream, &repo, &digest)
            }))
        })
        .await;
    match rendered {
        Ok(Ok((status, text))) => {
            respond(method, status, text, if api { JSON } else { HTML }, false)
        }
        Ok(Err(e)) => {
            tracing::warn!(view, error = %e, "status page: cannot read the cache");
            json(
                method,
                StatusCode::INTERNAL_SERVER_ERROR,
                &serde_json::json!({"error": "cannot read the cache; see wharf's log"}),
            )
        }
        Err(_) => json(
            method,
            StatusCode::INTERNAL_SERVER_ERROR,
            &serde_json::json!({"error": "the view failed; see wharf's log"}),
        ),
    }
}

type Rendered = Result<(StatusCode, String), crate::cache::CacheError>;

/// One view as JSON or HTML. Blocking.
#[allow(clippy::too_many_arguments)]
pub fn render(
    app: &App,
    view: &str,
    api: bool,
    q: &str,
    page_no: usize,
    upstream: &str,
    repo: &str,
    digest: &str,
) -> Rendered {
    let now = crate::cache::now_millis();
    let ok = |s: String| Ok((StatusCode::OK, s));
    let out = |name: &'static str,
               v: &dyn erased::View,
               html: &dyn Fn(&Page) -> maud::Markup|
     -> Rendered {
        if api {
            ok(v.json())
        } else {
            ok(html(&Page {
                view: name,
                base: "",
            })
            .into_string())
        }
    };
    match view {
        "overview" => {
            let o = model::overview(app)?;
            out("overview", &o, &|p| html::overview(p, &o))
        }
        "upstreams" => {
            let u = model::upstreams(app);
            out("upstreams", &u, &|p| html::upstreams(p, now, &u))
        }
        "images" => {
            let v = model::images(app, q, page_no)?;
            out("images", &v, &|p| html::images(p, now, &v))
        }
        "image" => match model::image(app, upstream, repo, digest)? {
            Some(d) => out("images", &d, &|p| html::image(p, now, &d)),
            None => not_found(api, now, "No such image in the cache."),
        },
        "sync" => {
            let v = model::sync(app);
            out("sync", &v, &|p| html::sync(p, now, &v))
        }
        "problems" => {
            let v = model::problems(app);
            out("problems", &v, &|p| html::problems(p, &v))
        }
        _ => not_found(api, now, "No such view."),
    }
}

fn not_found(api: bool, now: u64, what: &str) -> Rendered {
    let text = if api {
        serde_json::json!({ "error": what }).to_string()
    } else {
        html::not_found(&Page { view: "", base: "" }, now, what).into_string()
    };
    Ok((StatusCode::NOT_FOUND, text))
}

/// Serializing a view without naming its type.
mod erased {
    pub trait View {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> View for T {
        fn json(&self) -> String {
            serde_json::to_string(self).expect("views serialize")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_and_localhost_name_the_page() {
        for ok in [
            "127.0.0.1:9090",
            "localhost:9090",
            "LOCALHOST",
            "[::1]:9090",
            "10.0.0.5",
            "[fe80::1]",
        ] {
            assert!(host_ok(Some(ok)), "{ok}");
        }
        for bad in [
            "evil.example:9090",
            "evil.example",
            "127.0.0.1.evil.example",
            "",
            "localhost.evil",
        ] {
            assert!(!host_ok(Some(bad)), "{bad}");
        }
        assert!(!host_ok(None));
    }

    #[test]
    fn query_parameters_are_decoded() {
        let q = Some("q=a%2Fb+c&page=2&x");
        assert_eq!(param(q, "q"), "a/b c");
        assert_eq!(param(q, "page"), "2");
        assert_eq!(param(q, "x"), "");
        assert_eq!(param(None, "q"), "");
    }
}
