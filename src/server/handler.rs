//! Request dispatch: parse the [`Endpoint`], route it, ask the mirror, build the
//! response, log one line. Protocol headers (spec: distribution-spec
//! `spec.md#pulling-manifests`, `#pulling-blobs`) are set here and only here.

use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::access::{ClientInfo, Who};
use crate::mirror::{BlobBody, CacheStatus, Mirror, MirrorError, Routed};
use crate::registry::{error_json, Accept, Digest, Endpoint, OciCode, Reference, RepoName, Route};
use crate::upstream::UpstreamError;

use super::body::{self, Body, Source};
use super::error::{classify, Blame};
use super::range::{self, RangeReq};

const API_VERSION: &str = "registry/2.0";

/// What the access log line says besides method, path and status.
struct Outcome {
    upstream: Option<String>,
    cache: Option<CacheStatus>,
}

pub async fn handle<B>(mirror: &Mirror, req: Request<B>) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let endpoint = Endpoint::parse(req.uri().path(), req.uri().query());
    let label = match &endpoint {
        Ok(Some(ep)) => ep.route.label(),
        Ok(None) => "other",
        Err(_) => "invalid",
    };
    let mut outcome = Outcome {
        upstream: None,
        cache: None,
    };
    let client = req.extensions().get::<ClientInfo>().cloned();
    let network = match &client {
        Some(c) => mirror.access().check_network(c.addr.ip()),
        None => Ok(()),
    };
    let result = match endpoint {
        _ if network.is_err() => Err(MirrorError::from(network.unwrap_err())),
        Ok(None) if req.uri().path() == "/metrics" && is_read(&method) => {
            Ok(metrics(mirror, &method))
        }
        Ok(Some(ep)) => dispatch(mirror, &method, &req, client.as_ref(), &ep, &mut outcome).await,
        Ok(None) => Ok(oci_error(
            StatusCode::NOT_FOUND,
            OciCode::Unsupported,
            "not a registry API path",
        )),
        Err(e) => Err(MirrorError::from(e)),
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            let p = classify(&e, label);
            let log_detail = if p.blame == Blame::Wharf {
                format!("{e:?}")
            } else {
                String::new()
            };
            tracing::warn!(
                method = %method, path = ?req.uri().path(), endpoint = label,
                status = p.status.as_u16(), code = p.code.as_str(), blame = p.blame.as_str(),
                error = %p.message, detail = %log_detail, "request failed"
            );
            let mut r = oci_error(p.status, p.code, &p.message);
            if p.status == StatusCode::UNAUTHORIZED {
                // Basic: what skopeo, podman, containerd and dockerd answer
                // with their configured credentials.
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"wharf\""),
                );
            }
            if let MirrorError::Upstream(UpstreamError::TooManyRequests { retry_after, .. }) = &e {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            r
        }
    };
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static(API_VERSION),
    );
    tracing::info!(
        target: "wharf::access",
        method = %method,
        path = ?req.uri().path(),
        endpoint = label,
        upstream = outcome.upstream.as_deref().unwrap_or("-"),
        status = resp.status().as_u16(),
        bytes = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-"),
        cache = outcome.cache.map(|c| c.as_str()).unwrap_or("-"),
        ms = started.elapsed().as_secs_f64() * 1000.0,
    );
    resp
}

/// `/metrics` in Prometheus' text format.
fn metrics(mirror: &Mirror, method: &Method) -> Response<Body> {
    let text = mirror.metrics().render();
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

fn oci_error(status: StatusCode, code: OciCode, message: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body::full(error_json(code, message)))
        .expect("static headers are valid")
}

fn unsupported(what: &str) -> Result<Response<Body>, MirrorError> {
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
    mirror: &Mirror,
    method: &Method,
    req: &Request<B>,
    client: Option<&ClientInfo>,
    ep: &Endpoint,
    outcome: &mut Outcome,
) -> Result<Response<Body>, MirrorError> {
    let head = method == Method::HEAD;
    // Who the client is matters only for reads that reach content.
    let who = match (&ep.route, client) {
        (
            Route::Base | Route::Manifest { .. } | Route::Blob { .. } | Route::TagsList { .. },
            Some(c),
        ) if is_read(method) => mirror.access().identify(req.headers(), c).await,
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
            mirror.access().authorize_ping(&who)?;
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
            let r = routed(mirror, ep, name, &who, outcome)?;
            manifest(mirror, req, &r, reference, head, outcome).await
        }
        Route::Blob { name, digest } => {
            let r = routed(mirror, ep, name, &who, outcome)?;
            blob(mirror, req, &r, digest, head, outcome).await
        }
        Route::TagsList { name } => {
            if head {
                return unsupported("HEAD on tags/list");
            }
            let r = routed(mirror, ep, name, &who, outcome)?;
            outcome.cache = Some(CacheStatus::Pass);
            let (bytes, link) = mirror.tags_list(&r, ep.n, ep.last.as_deref()).await?;
            let mut b = Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_LENGTH, bytes.len());
            // The upstream's Link names the upstream's repository; it is only
            // right for the client when the names agree.
            if let Some(l) = link.filter(|_| r.repo == *name) {
                b = b.header(header::LINK, l);
            }
            Ok(b.body(body::full(bytes)).expect("valid headers"))
        }
    }
}

/// Routes the request and applies the upstream's access rules, before any
/// cache lookup: cached content is guarded exactly like uncached content.
fn routed(
    mirror: &Mirror,
    ep: &Endpoint,
    name: &RepoName,
    who: &Who,
    outcome: &mut Outcome,
) -> Result<Routed, MirrorError> {
    let r = mirror.route(ep, name)?;
    outcome.upstream = Some(mirror.upstream_name(r.upstream).to_owned());
    mirror.access().authorize(r.upstream, who, &r.repo)?;
    Ok(r)
}

async fn manifest<B>(
    mirror: &Mirror,
    req: &Request<B>,
    r: &Routed,
    reference: &Reference,
    head: bool,
    outcome: &mut Outcome,
) -> Result<Response<Body>, MirrorError> {
    let accept = Accept::parse(
        req.headers()
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let m = mirror.manifest(r, reference, &accept).await?;
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
    mirror: &Mirror,
    req: &Request<B>,
    r: &Routed,
    digest: &Digest,
    head: bool,
    outcome: &mut Outcome,
) -> Result<Response<Body>, MirrorError> {
    let base = || {
        Response::builder()
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header("docker-content-digest", digest.as_str())
            .header(header::ETAG, format!("\"{digest}\""))
    };
    if head {
        let (size, status) = mirror.blob_head(r, digest).await?;
        outcome.cache = Some(status);
        let mut b = base();
        if let Some(s) = size {
            b = b.header(header::CONTENT_LENGTH, s);
        }
        return Ok(b.body(body::empty()).expect("valid headers"));
    }
    let blob = mirror.blob(r, digest).await?;
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
        BlobBody::Fill(reader) => {
            // A fill is streamed whole; ranges are served once it is cached.
            let mut b = base();
            if let Some(s) = blob.size {
                b = b.header(header::CONTENT_LENGTH, s);
            }
            Ok(b.body(body::stream(Source::Fill(reader), 0, blob.size))
                .expect("valid headers"))
        }
    }
}
