//! What every request leaves behind once answered: its counters
//! (`wharf_requests_total`, `wharf_cache_results_total`) and one access log
//! line (target `wharf::access`), written when the response is complete or,
//! for a streamed blob, when its transfer ended, with what was really sent.
//! Observes only: never changes a response's status or headers.

use std::time::Instant;

use http::{Method, Response};

use crate::app::App;
use crate::mirror::CacheStatus;
use crate::registry::RouteKind;

use super::body::{Body, Meter, Source};

/// What the access log line says besides method, path and status, filled in
/// while the request is answered.
#[derive(Default)]
pub struct Outcome {
    pub upstream: Option<String>,
    pub cache: Option<CacheStatus>,
    /// The connection, told when a streamed body fails.
    pub conn: Option<std::sync::Arc<super::limits::ConnState>>,
}

/// Counts the response and arranges its access log line.
pub fn observe(
    app: &App,
    method: &Method,
    path: &str,
    kind: RouteKind,
    outcome: Outcome,
    started: Instant,
    resp: &mut Response<Body>,
) {
    let status = resp.status().as_u16();
    let metrics = &app.metrics;
    let label = kind.label();
    let method_label = match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        _ => "other",
    };
    metrics
        .requests
        .with_label_values(&[label, method_label, status_label(status)])
        .inc();
    if let Some(c) = outcome.cache {
        metrics
            .cache_results
            .with_label_values(&[label, c.as_str()])
            .inc();
    }
    let conn = outcome.conn;
    let line = AccessLine {
        method: method.clone(),
        path: path.to_owned(),
        endpoint: label,
        upstream: outcome.upstream,
        status,
        length: resp.body().len(),
        cache: outcome.cache,
        started,
    };
    match resp.body_mut() {
        // Streamed: logged when the transfer ends, with what was sent.
        Body::Source(Some(range)) => {
            let source = match range.source {
                Source::File(_) => "cache",
                Source::Fill(_) => "upstream",
            };
            range.meter = Meter::new(
                metrics.served_bytes.with_label_values(&[source]),
                line,
                conn,
            );
        }
        b => {
            let sent = if method == Method::HEAD {
                0
            } else {
                b.len().unwrap_or(0)
            };
            line.emit(sent, true)
        }
    }
}

/// Status codes as static labels (a bounded set).
fn status_label(s: u16) -> &'static str {
    match s {
        200 => "200",
        206 => "206",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        406 => "406",
        416 => "416",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

/// The access log line of one request.
pub struct AccessLine {
    method: Method,
    path: String,
    endpoint: &'static str,
    upstream: Option<String>,
    status: u16,
    /// What the response announced (`None`: a fill of unknown size).
    length: Option<u64>,
    cache: Option<CacheStatus>,
    started: Instant,
}

impl AccessLine {
    /// `finished`: the body's source reached its end (for a body of unknown
    /// length, the only sign it is complete).
    pub fn emit(self, sent: u64, finished: bool) {
        // A body cut short (client gone, fill failed) is worth knowing.
        let complete =
            self.method == Method::HEAD || (finished && self.length.is_none_or(|l| l == sent));
        tracing::info!(
            target: "wharf::access",
            method = %self.method,
            path = ?self.path,
            endpoint = self.endpoint,
            upstream = self.upstream.as_deref().unwrap_or("-"),
            status = self.status,
            bytes = sent,
            complete,
            cache = self.cache.map(|c| c.as_str()).unwrap_or("-"),
            ms = (self.started.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
        );
    }
}
