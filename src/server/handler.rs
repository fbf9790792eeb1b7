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

use super::body::{self, Body, Meter, Source};
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
    let path = req.uri().path();
    let result = match endpoint {
        // Probes come from the node (kubelet, systemd, load balancers): they
        // reveal nothing and are answered whatever the network rules say.
        Ok(None) if path == "/healthz" && is_read(&method) => Ok(healthz(&method)),
        Ok(None) if path == "/readyz" && is_read(&method) => Ok(readyz(mirror, &method).await),
        _ if network.is_err() => Err(MirrorError::from(network.unwrap_err())),
        Ok(None) if path == "/metrics" && is_read(&method) && mirror.metrics_here() => {
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
    let status = resp.status().as_u16();
    let metrics = mirror.metrics();
    let method_label = match method {
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
    let line = AccessLine {
        method: method.clone(),
        path: req.uri().path().to_owned(),
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
            range.meter = Meter::new(metrics.served_bytes.with_label_values(&[source]), line);
        }
        b => {
            let sent = if method == Method::HEAD {
                0
            } else {
                b.len().unwrap_or(0)
            };
            line.emit(sent)
        }
    }
    resp
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

/// The access log line of one request (target `wharf::access`): written when
/// the response is complete, or for a streamed blob when its transfer ended.
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
    pub fn emit(self, sent: u64) {
        // A body cut short (client gone, fill failed) is worth knowing.
        let complete = self.method == Method::HEAD || self.length.is_none_or(|l| l == sent);
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

fn text(
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

/// `/readyz`: 200 when the cache is open and its disk takes writes, else
/// 503. Upstream reachability is reported but does not make wharf unready:
/// with the upstream gone, the cache is what still works.
pub async fn readyz(mirror: &Mirror, method: &Method) -> Response<Body> {
    let m = mirror.clone();
    let writable = tokio::task::spawn_blocking(move || m.cache().store.check_writable())
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r);
    let upstreams: serde_json::Map<String, serde_json::Value> = mirror
        .upstream_states()
        .into_iter()
        .map(|(name, state)| (name, state.into()))
        .collect();
    let ready = writable.is_ok();
    let body = serde_json::json!({
        "ready": ready,
        "cache": {
            "open": true,
            "writable": ready,
            "error": writable.err().map(|e| e.to_string()),
            "bytes": mirror.cache().evictor.usage(),
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
pub fn metrics(mirror: &Mirror, method: &Method) -> Response<Body> {
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
