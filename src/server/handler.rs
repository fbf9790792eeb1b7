//! Request dispatch: parse the [`Endpoint`], check access, route, ask the
//! mirror, build the response ([`respond`]); then count it and log it
//! ([`observe`](super::observe)). Protocol headers (spec: distribution-spec
//! `spec.md#pulling-manifests`, `#pulling-blobs`, `#listing-tags`) are set
//! here and only here; error responses come whole from [`super::error`].

use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};

use crate::access::{ClientInfo, Who};
use crate::app::App;
use crate::mirror::{BlobBody, CacheStatus, Routed};
use crate::registry::{Accept, Digest, Endpoint, OciCode, Reference, RepoName, Route, RouteKind};

use super::body::{self, Body, Source};
use super::error::{error_response, oci_error, RequestError};
use super::limits::ConnState;
use super::observe::{observe, Outcome};
use super::probes::{healthz, metrics, readyz};
use super::range::{self, RangeReq};

const API_VERSION: &str = "registry/2.0";

/// Answers one request, then counts and logs it.
pub async fn handle<B>(app: &App, req: Request<B>) -> Response<Body> {
    let started = Instant::now();
    let endpoint = Endpoint::parse(req.uri().path(), req.uri().query());
    let kind = match &endpoint {
        Ok(Some(ep)) => ep.route.kind(),
        Ok(None) => RouteKind::Other,
        Err(_) => RouteKind::Invalid,
    };
    let mut outcome = Outcome::default();
    let mut resp = match respond(app, &req, endpoint, &mut outcome).await {
        Ok(r) => r,
        Err(e) => failed(app, &req, kind, &e, &outcome),
    };
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static(API_VERSION),
    );
    let path = req.uri().path();
    outcome.conn = req.extensions().get::<std::sync::Arc<ConnState>>().cloned();
    observe(app, req.method(), path, kind, outcome, started, &mut resp);
    resp
}

/// The error response, logged with who is to blame (wharf's own failures
/// with their details, which never reach the client) and kept for the status
/// page as the client was answered (no detail, no query, no header).
fn failed<B>(
    app: &App,
    req: &Request<B>,
    kind: RouteKind,
    e: &RequestError,
    outcome: &Outcome,
) -> Response<Body> {
    let r = e.response(kind);
    // A 401 to `/v2/` is how every authenticating client starts, not a
    // problem.
    let challenge = kind == RouteKind::Base && r.status == StatusCode::UNAUTHORIZED;
    if !challenge {
        app.status.problem(crate::status::Problem {
            at_ms: crate::cache::now_millis(),
            method: req.method().as_str().to_owned(),
            endpoint: kind.label(),
            path: req.uri().path().to_owned(),
            upstream: outcome.upstream.clone(),
            status: r.status.as_u16(),
            code: r.code.as_str(),
            blame: r.blame.as_str(),
            message: r.message.clone(),
            client: req
                .extensions()
                .get::<ClientInfo>()
                .map(|c| c.addr.ip().to_string()),
        });
    }
    let detail = if r.blame == crate::registry::Blame::Wharf {
        format!("{e:?}")
    } else {
        String::new()
    };
    tracing::warn!(
        method = %req.method(), path = ?req.uri().path(), endpoint = kind.label(),
        status = r.status.as_u16(), code = r.code.as_str(), blame = r.blame.as_str(),
        error = %r.message, %detail, "request failed"
    );
    error_response(&r)
}

async fn respond<B>(
    app: &App,
    req: &Request<B>,
    endpoint: Result<Option<Endpoint>, crate::registry::ParseError>,
    outcome: &mut Outcome,
) -> Result<Response<Body>, RequestError> {
    let method = req.method();
    let path = req.uri().path();
    let client = req.extensions().get::<ClientInfo>();
    match endpoint {
        // Liveness comes from the node (kubelet, systemd, load balancers):
        // it reveals nothing and is answered whatever the network rules say.
        Ok(None) if path == "/healthz" && is_read(method) => return Ok(healthz(method)),
        _ => {}
    }
    if let Some(c) = client {
        app.access.check_network(c.addr.ip())?;
    }
    // Readiness tells upstream names and states and checks the disk: only
    // for allowed networks here (the admin listener answers it to anyone
    // who can reach that).
    if matches!(endpoint, Ok(None)) && path == "/readyz" && is_read(method) {
        return Ok(readyz(app, method).await);
    }
    match endpoint? {
        Some(ep) => dispatch(app, req, client, &ep, outcome).await,
        None if path == "/metrics" && is_read(method) && app.metrics_on_main => {
            Ok(metrics(app, method))
        }
        None => Ok(oci_error(
            StatusCode::NOT_FOUND,
            OciCode::Unsupported,
            "not a registry API path",
        )),
    }
}

fn unsupported(what: &str) -> Result<Response<Body>, RequestError> {
    Ok(oci_error(
        StatusCode::METHOD_NOT_ALLOWED,
        OciCode::Unsupported,
        &format!("wharf is a read-only pull-through mirror: {what}"),
    ))
}

fn is_read(m: &Method) -> bool {
    m == Method::GET || m == Method::HEAD
}

async fn dispatch<B>(
    app: &App,
    req: &Request<B>,
    client: Option<&ClientInfo>,
    ep: &Endpoint,
    outcome: &mut Outcome,
) -> Result<Response<Body>, RequestError> {
    let method = req.method();
    let head = method == Method::HEAD;
    // Who the client is matters only for reads that reach content.
    let who = match (&ep.route, client) {
        (
            Route::Base | Route::Manifest { .. } | Route::Blob { .. } | Route::TagsList { .. },
            Some(c),
        ) if is_read(method) => app.access.identify(req.headers(), c).await,
        // Without connection details (no server in between) a caller is
        // anonymous.
        _ => Who::default(),
    };
    match &ep.route {
        Route::Upload => unsupported("pushes go to the upstream registry"),
        Route::Catalog => Ok(oci_error(
            StatusCode::NOT_FOUND,
            OciCode::Unsupported,
            "a mirror cannot list its upstreams' catalogues",
        )),
        _ if !is_read(method) => unsupported(&format!("{method} is not supported")),
        Route::Base => {
            app.access.authorize_ping(&who)?;
            Ok(Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_LENGTH, 2)
                .body(if head {
                    body::empty()
                } else {
                    body::full(&b"{}"[..])
                })
                .expect("static headers are valid"))
        }
        Route::Manifest { name, reference } => {
            let r = routed(app, ep, name, &who, outcome)?;
            manifest(app, req, &r, reference, head, outcome).await
        }
        Route::Blob { name, digest } => {
            let r = routed(app, ep, name, &who, outcome)?;
            blob(app, req, &r, digest, head, outcome).await
        }
        Route::TagsList { name } => {
            if head {
                return unsupported("HEAD on tags/list");
            }
            let r = routed(app, ep, name, &who, outcome)?;
            tags_list(app, req, ep, &r, outcome).await
        }
    }
}

/// Routes the request and applies the upstream's access rules, before any
/// cache lookup: cached content is guarded exactly like uncached content.
fn routed(
    app: &App,
    ep: &Endpoint,
    name: &RepoName,
    who: &Who,
    outcome: &mut Outcome,
) -> Result<Routed, RequestError> {
    let r = app.mirror.route(ep, name)?;
    let upstream = app.mirror.upstream_name(r.upstream);
    outcome.upstream = Some(upstream.to_owned());
    app.access.authorize(upstream, who, &r.repo)?;
    Ok(r)
}

/// A page of tags, with a `Link` to the next one when more remain (spec:
/// `spec.md#listing-tags`): the client's own path, so it comes back here.
async fn tags_list<B>(
    app: &App,
    req: &Request<B>,
    ep: &Endpoint,
    r: &Routed,
    outcome: &mut Outcome,
) -> Result<Response<Body>, RequestError> {
    outcome.cache = Some(CacheStatus::Pass);
    let page = app.mirror.tags_list(r, ep.n, ep.last.as_deref()).await?;
    outcome.cache = Some(page.status);
    let mut b = Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, page.body.len());
    if let Some(last) = &page.next {
        // The path was parsed (no `%`, valid names), a `Tag` is
        // [A-Za-z0-9_.-] and `ns` a validated host name: nothing here needs
        // escaping, and nothing came from the upstream unchecked.
        let mut link = format!(
            "<{}?n={}&last={last}",
            req.uri().path(),
            ep.n.unwrap_or_default()
        );
        if let Some(ns) = &ep.ns {
            link.push_str(&format!("&ns={ns}"));
        }
        link.push_str(">; rel=\"next\"");
        if let Ok(v) = HeaderValue::try_from(link) {
            b = b.header(header::LINK, v);
        }
    }
    Ok(b.body(body::full(page.body)).expect("valid headers"))
}

async fn manifest<B>(
    app: &App,
    req: &Request<B>,
    r: &Routed,
    reference: &Reference,
    head: bool,
    outcome: &mut Outcome,
) -> Result<Response<Body>, RequestError> {
    let accept = Accept::parse(
        req.headers()
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let m = app.mirror.manifest(r, reference, &accept).await?;
    outcome.cache = Some(m.status);
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, m.media_type.as_str())
        .header(header::CONTENT_LENGTH, m.bytes.len())
        .header("docker-content-digest", m.digest.as_str())
        .header(header::ETAG, format!("\"{}\"", m.digest))
        .body(if head {
            body::empty()
        } else {
            body::full(m.bytes)
        })
        .expect("validated header values"))
}

async fn blob<B>(
    app: &App,
    req: &Request<B>,
    r: &Routed,
    digest: &Digest,
    head: bool,
    outcome: &mut Outcome,
) -> Result<Response<Body>, RequestError> {
    let base = || {
        Response::builder()
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header("docker-content-digest", digest.as_str())
            .header(header::ETAG, format!("\"{digest}\""))
    };
    if head {
        let (size, status) = app.mirror.blob_head(r, digest).await?;
        outcome.cache = Some(status);
        let mut b = base();
        if let Some(s) = size {
            b = b.header(header::CONTENT_LENGTH, s);
        }
        return Ok(b.body(body::empty()).expect("valid headers"));
    }
    let blob = app.mirror.blob(r, digest).await?;
    outcome.cache = Some(blob.status);
    match blob.body {
        BlobBody::File(file) => {
            let size = blob.size.expect("files have a size");
            let range_header = req
                .headers()
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok());
            let b = base().header(header::ACCEPT_RANGES, "bytes");
            Ok(match range::parse(range_header, size) {
                RangeReq::Full => b.header(header::CONTENT_LENGTH, size).body(body::stream(
                    Source::File(file),
                    0,
                    Some(size),
                )),
                RangeReq::Part { start, len } => b
                    .status(StatusCode::PARTIAL_CONTENT)
                    .header(header::CONTENT_LENGTH, len)
                    .header(
                        header::CONTENT_RANGE,
                        format!("bytes {start}-{}/{size}", start + len - 1),
                    )
                    .body(body::stream(Source::File(file), start, Some(len))),
                RangeReq::Unsatisfiable => {
                    let mut resp = oci_error(
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        OciCode::RangeInvalid,
                        &format!("range not satisfiable for a blob of {size} bytes"),
                    );
                    resp.headers_mut().insert(
                        header::CONTENT_RANGE,
                        HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii"),
                    );
                    return Ok(resp);
                }
            }
            .expect("valid headers"))
        }
        BlobBody::Fill(mut reader) => {
            // A fill is streamed whole; ranges are served once it is cached.
            let mut size = blob.size;
            if size.is_none() && req.version() < Version::HTTP_11 {
                // HTTP/1.0 has no chunked encoding: a body of unknown length
                // ends with the connection, so a failed fill would look
                // complete. Answer only once it is verified, with its length.
                size = Some(verified_size(&mut reader).await?);
            }
            let mut b = base();
            if let Some(s) = size {
                b = b.header(header::CONTENT_LENGTH, s);
            }
            Ok(b.body(body::stream(Source::Fill(reader), 0, size))
                .expect("valid headers"))
        }
    }
}

/// Waits for a fill to end: its size once the digest matched, or why it
/// failed.
async fn verified_size(reader: &mut crate::cache::FillReader) -> Result<u64, RequestError> {
    let mut pos = 0;
    loop {
        match reader.readable(pos).await {
            Ok(0) => return Ok(pos),
            Ok(n) => pos += n,
            Err(e) => {
                let f = e
                    .into_inner()
                    .and_then(|b| b.downcast::<crate::cache::FillError>().ok())
                    .map_or(crate::cache::FillError::Aborted, |b| *b);
                return Err(RequestError::Mirror(f.into()));
            }
        }
    }
}
