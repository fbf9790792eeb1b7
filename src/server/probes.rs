//! The probes and `/metrics`, answered the same way on the registry port and
//! on the admin listener: `/healthz` (the process answers), `/readyz` (the
//! cache's disk takes writes; upstream reachability reported, never fatal:
//! with an upstream gone, the cache is what still works), and Prometheus'
//! text. They reveal nothing about content and touch no upstream.

use http::header;
use http::{Method, Response, StatusCode};

use crate::app::App;

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
/// upstream's state.
pub async fn readyz(app: &App, method: &Method) -> Response<Body> {
    let cache = app.mirror.cache().clone();
    let r = match tokio::task::spawn_blocking(move || cache.readiness()).await {
        Ok(r) => r,
        // Cancelled at shutdown: not ready.
        Err(e) => crate::cache::Readiness {
            writable: Err(format!("readiness check did not finish: {e}")),
            bytes: app.mirror.cache().bytes(),
            fills_in_flight: app.mirror.fills_in_flight(),
        },
    };
    let upstreams: serde_json::Map<String, serde_json::Value> = app
        .mirror
        .upstream_states()
        .into_iter()
        .map(|(name, state)| (name, state.as_str().into()))
        .collect();
    let ready = r.writable.is_ok();
    let body = serde_json::json!({
        "ready": ready,
        "cache": {
            "open": true,
            "writable": ready,
            "error": r.writable.err(),
            "bytes": r.bytes,
        },
        "upstreams": upstreams,
    });
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
