//! The probes and `/metrics`, answered the same way on the registry port and
//! on the admin listener: `/healthz` (the process answers), `/readyz` (the
//! cache's disk takes writes; upstream reachability reported, never fatal:
//! with an upstream gone, the cache is what still works), and Prometheus'
//! text. They reveal nothing about content and touch no upstream.
//!
//! The disk check behind `/readyz` writes and fsyncs a file: it runs at most
//! once at a time per cache, a success is reused for [`READY_REUSE`], and a
//! caller waits for a running check at most [`READY_WAIT`] (then it is told
//! the disk is slow, 503). So however often `/readyz` is asked, the disk sees
//! at most one probe in flight, and the answer comes in bounded time.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use http::header;
use http::{Method, Response, StatusCode};

use crate::app::App;
use crate::cache::Cache;

use super::body::{self, Body};

/// A small text response; a `HEAD` gets the headers only.
pub(super) fn text(
    status: StatusCode,
    content_type: &'static str,
    text: String,
    method: &Method,
) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, text.len())
        .header(header::CACHE_CONTROL, "no-store")
        .body(if method == Method::HEAD {
            body::empty()
        } else {
            body::full(text)
        })
        .expect("static headers are valid")
}

/// `/healthz`: the process answers.
pub fn healthz(method: &Method) -> Response<Body> {
    text(StatusCode::OK, "text/plain", "ok\n".into(), method)
}

/// `/readyz`: 200 when the cache's disk takes writes, else 503, with each
/// upstream's state and the shared tier's (`"degraded"` while it is set
/// aside after a failure: still 200).
pub async fn readyz(app: &App, method: &Method) -> Response<Body> {
    let r = crate::cache::Readiness {
        writable: disk_check(app.mirror.cache()).await,
        bytes: app.mirror.cache().bytes(),
        fills_in_flight: app.mirror.fills_in_flight(),
    };
    let upstreams: serde_json::Map<String, serde_json::Value> = app
        .mirror
        .upstream_states()
        .into_iter()
        .map(|(name, state)| (name, state.as_str().into()))
        .collect();
    let ready = r.writable.is_ok();
    // The shared tier never makes a node unready: without it the node
    // serves from disk and its upstreams, as before.
    let shared = app.mirror.tier().map(|t| t.status());
    let mut body = serde_json::json!({
        "ready": ready,
        "cache": {
            "open": true,
            "writable": ready,
            "error": r.writable.err(),
            "bytes": r.bytes,
        },
        "upstreams": upstreams,
    });
    if let Some(s) = shared {
        body["shared"] = serde_json::to_value(s).expect("serializable");
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(status, "application/json", format!("{body}\n"), method)
}

/// `/metrics` in Prometheus' text format.
pub fn metrics(app: &App, method: &Method) -> Response<Body> {
    let text = app.metrics.render();
    Response::builder()
        .header(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .header(header::CONTENT_LENGTH, text.len())
        .body(if method == Method::HEAD {
            body::empty()
        } else {
            body::full(text)
        })
        .expect("static headers are valid")
}

/// A successful disk check is trusted this long.
pub const READY_REUSE: Duration = Duration::from_secs(1);
/// How long `/readyz` waits for a disk check already running.
pub const READY_WAIT: Duration = Duration::from_secs(2);

/// The last disk check of one cache; its lock is held while a check runs.
type Probe = Arc<tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>>;

/// Each open cache's probe (more than one in tests).
static PROBES: parking_lot::Mutex<Vec<(Weak<Cache>, Probe)>> = parking_lot::Mutex::new(Vec::new());

fn probe_of(cache: &Arc<Cache>) -> Probe {
    let mut all = PROBES.lock();
    all.retain(|(c, _)| c.strong_count() > 0);
    if let Some((_, p)) = all
        .iter()
        .find(|(c, _)| std::ptr::eq(c.as_ptr(), Arc::as_ptr(cache)))
    {
        return p.clone();
    }
    let p = Probe::default();
    all.push((Arc::downgrade(cache), p.clone()));
    p
}

/// Whether the cache's disk takes writes: a recent success, or a new check
/// (one at a time).
async fn disk_check(cache: &Arc<Cache>) -> Result<(), String> {
    let probe = probe_of(cache);
    let Ok(mut last) = tokio::time::timeout(READY_WAIT, probe.lock()).await else {
        return Err(format!(
            "the disk check has been running for more than {READY_WAIT:?}"
        ));
    };
    if let Some((at, Ok(()))) = &*last {
        if at.elapsed() < READY_REUSE {
            return Ok(());
        }
    }
    let c = cache.clone();
    let r = match tokio::task::spawn_blocking(move || c.readiness().writable).await {
        Ok(r) => r,
        // Cancelled at shutdown: not ready.
        Err(e) => Err(format!("readiness check did not finish: {e}")),
    };
    *last = Some((Instant::now(), r.clone()));
    r
}
