//! The operator's side of a running wharf.
//!
//! - The **admin listener** (`server.admin_listen`, plain HTTP): `/metrics`,
//!   `/healthz` and `/readyz`, for Prometheus and probes, apart from the
//!   registry port and its TLS and access rules; and the status page
//!   ([`crate::status`]) for loopback and `server.status_networks`.
//! - The **admin socket** (`<cache dir>/admin.sock`, mode 0600, so only
//!   wharf's user and root): the cache operations behind `wharf ls`, `du`,
//!   `rm`, `gc`, `pin` and `unpin`. sled allows one process per database, so
//!   while a server holds the cache the CLI asks it through this socket; with
//!   no server, the CLI opens the cache itself ([`client`]). Either way the
//!   same [`execute`] runs.

pub mod client;

use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, UnixListener};

use crate::app::App;
use crate::cache::{Cache, CacheError};
use crate::server::{healthz, metrics_response, readyz, Body};

/// One cache operation, as the CLI sends it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    Ls,
    Du,
    Rm {
        image: String,
    },
    Gc {
        verify: bool,
    },
    Pin {
        pattern: String,
    },
    Unpin {
        pattern: String,
    },
    Pins,
    /// Runs sync rules now (all when `rules` is empty); answered with one
    /// JSON event per line as the run goes.
    Sync {
        rules: Vec<String>,
        dry_run: bool,
    },
    /// `wharf bundle create`, streamed like `Sync`.
    BundleCreate(crate::airgap::CreateRequest),
    /// `wharf bundle import`, streamed like `Sync`.
    BundleImport(crate::airgap::ImportRequest),
    /// `wharf inventory export`: every digest the cache holds.
    Inventory,
}

impl Op {
    /// Operations answered with a stream of events rather than one value.
    pub fn streams(&self) -> bool {
        matches!(
            self,
            Op::Sync { .. } | Op::BundleCreate(_) | Op::BundleImport(_)
        )
    }
}

/// Runs an operation on an open cache and answers with its report as JSON
/// text, serialized straight from the report (`ls` of a large cache is
/// megabytes: no `serde_json::Value` tree in between), so its keys come in
/// the report's field order (the CLI reads them by name, and `--json`
/// prints them sorted). `live`: a server is using the cache. Blocking (file
/// system walks).
pub fn execute(cache: &Cache, op: &Op, live: bool) -> Result<String, CacheError> {
    let json = |v: serde_json::Result<String>| v.expect("reports serialize");
    Ok(match op {
        Op::Ls => cache.listing_json()?,
        Op::Du => json(serde_json::to_string(&cache.usage()?)),
        Op::Rm { image } => json(serde_json::to_string(&cache.remove_image(image)?)),
        Op::Gc { verify } => json(serde_json::to_string(&cache.gc(*verify, live)?)),
        Op::Pin { pattern } => {
            serde_json::json!({ "pattern": pattern, "added": cache.pin(pattern)? }).to_string()
        }
        Op::Unpin { pattern } => {
            serde_json::json!({ "pattern": pattern, "removed": cache.unpin(pattern)? }).to_string()
        }
        Op::Inventory => json(serde_json::to_string(&crate::airgap::SiteInventory::of(
            cache,
        )?)),
        Op::Sync { .. } | Op::BundleCreate(_) | Op::BundleImport(_) => {
            return Err(CacheError::Invalid(
                "this operation runs through the mirror, not on the cache alone".into(),
            ))
        }
        Op::Pins => serde_json::json!(cache
            .pin_list()?
            .into_iter()
            .map(|(p, from_config)| serde_json::json!({ "pattern": p, "config": from_config }))
            .collect::<Vec<_>>())
        .to_string(),
    })
}

pub fn socket_path(cache_dir: &Path) -> PathBuf {
    cache_dir.join("admin.sock")
}

/// Serves the admin socket until `shutdown`. A socket file left by a
/// crashed run is replaced (the caller holds the cache's lock, so no live
/// server owns it).
pub async fn serve_socket(
    app: Arc<App>,
    path: PathBuf,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let _ = std::fs::remove_file(&path);
    let listener = bind_private(&path)?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // EMFILE (registry clients can use up descriptors):
                        // back off instead of spinning a worker thread.
                        tracing::warn!(error = %e, "admin socket: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let app = app.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let app = app.clone();
                        async move { Ok::<_, Infallible>(socket_request(&app, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Binds the admin socket at `path`, mode 0600 from its first moment: a
/// bind creates the file 0777 minus the umask, so it is bound in a fresh
/// 0700 directory beside `path`, tightened there, and renamed into place.
/// Nobody else ever finds it open (whoever can connect runs `wharf rm`).
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let parent = path.parent().unwrap_or(Path::new("."));
    // Short: socket paths are limited to 107 bytes.
    let staging = parent.join(format!(".s{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let bound = (|| {
        let tmp = staging.join("s");
        let listener = UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    bound
}

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    json_text_response(status, v.to_string())
}

fn json_text_response(status: StatusCode, text: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, text.len())
        .body(crate::server::full_body(text))
        .expect("static headers")
}

async fn socket_request(app: &Arc<App>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    if req.method() != Method::POST || req.uri().path() != "/op" {
        return json_response(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "POST /op with an operation"}),
        );
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": e.to_string()}),
            )
        }
    };
    let op: Op = match serde_json::from_slice(&body) {
        Ok(op) => op,
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": format!("not an operation: {e}")}),
            )
        }
    };
    tracing::info!(op = ?op, "admin operation");
    if op.streams() {
        return stream_events(app, op);
    }
    let cache = app.mirror.cache().clone();
    let op2 = op.clone();
    match tokio::task::spawn_blocking(move || execute(&cache, &op2, true)).await {
        Ok(Ok(text)) => json_text_response(StatusCode::OK, text),
        Ok(Err(e)) => {
            let status = if matches!(e, CacheError::Invalid(_)) {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            json_response(status, &serde_json::json!({"error": e.to_string()}))
        }
        Err(e) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &serde_json::json!({"error": e.to_string()}),
        ),
    }
}

/// Runs a streaming operation in its own task and answers with its events,
/// one JSON object per line. The run goes on if the asker leaves (a sync run
/// interrupted halfway would only be resumed by the next one anyway).
fn stream_events(app: &Arc<App>, op: Op) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(64);
    // Events queue here while the asker is slow; the forwarder waits for it,
    // so the final summary is never dropped.
    let (etx, mut erx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Some(mut line) = erx.recv().await {
            line.push('\n');
            if tx.send(Ok(line.into())).await.is_err() {
                break; // the asker left; the run goes on
            }
        }
    });
    let app = app.clone();
    tokio::spawn(async move {
        let send = |v: &dyn erased::Line| {
            let _ = etx.send(v.line());
        };
        match op {
            Op::Sync { rules, dry_run } => {
                let chosen = match app.sync.chosen(&rules) {
                    Ok(c) => c,
                    Err(e) => return send(&Failed(e.to_string())),
                };
                for rule in chosen {
                    let emit = |e: crate::sync::Event| send(&e);
                    if let Err(e) = app.sync.run(rule, dry_run, &emit).await {
                        send(&Failed(e.to_string()));
                    }
                }
            }
            Op::BundleCreate(req) => {
                let app2 = app.clone();
                let etx2 = etx.clone();
                let res = tokio::task::spawn_blocking(move || {
                    let emit = |e: crate::airgap::Event| {
                        let _ = etx2.send(erased::Line::line(&e));
                    };
                    crate::airgap::create_bundle(&app2.mirror, &app2.sync, &req, &emit)
                        .map(|doc| serde_json::json!({"id": doc.id, "sequence": doc.sequence, "volumes": doc.volumes.len(), "blobs": doc.blobs.len(), "refs": doc.refs.len()}))
                })
                .await;
                send(&done(
                    res.map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string())),
                ));
            }
            Op::BundleImport(req) => {
                let emit = |e: crate::airgap::Event| send(&e);
                let res = app.import(&req, &emit).await;
                send(&done(
                    res.map(|r| serde_json::to_value(r).expect("reports serialize"))
                        .map_err(|e| e.to_string()),
                ));
            }
            _ => send(&Failed("not a streaming operation".into())),
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/x-ndjson")
        .body(crate::server::channel_body(rx))
        .expect("static headers")
}

/// An operation's failure in a stream: `{"event": "error", "error": ...}`.
struct Failed(String);

/// The last event of a bundle operation.
fn done(r: Result<serde_json::Value, String>) -> crate::airgap::Event {
    match r {
        Ok(report) => crate::airgap::Event::Done { report },
        Err(error) => crate::airgap::Event::Error { error },
    }
}

mod erased {
    /// Anything sent as one line of a stream.
    pub trait Line {
        fn line(&self) -> String;
    }
    impl Line for crate::sync::Event {
        fn line(&self) -> String {
            serde_json::to_string(self).expect("events serialize")
        }
    }
    impl Line for crate::airgap::Event {
        fn line(&self) -> String {
            serde_json::to_string(self).expect("events serialize")
        }
    }
    impl Line for super::Failed {
        fn line(&self) -> String {
            serde_json::json!({"event": "error", "error": self.0}).to_string()
        }
    }
}

/// How long an admin client may take to send a request head, and the
/// longest an admin connection stays open: probes and scrapes are quick.
const ADMIN_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const ADMIN_CONN_MAX: std::time::Duration = std::time::Duration::from_secs(300);
/// Admin connections open at once from addresses other than the probes'
/// (past it, closed at once), and from one address (likewise): a client
/// that can reach the admin port cannot exhaust the process's descriptors
/// (which the registry port shares) or keep the kubelet's probes out.
const ADMIN_MAX_CONNECTIONS: usize = 256;
const ADMIN_MAX_PER_ADDRESS: usize = 16;

/// Where the kubelet's probes (`host: 127.0.0.1`) and a local operator come
/// from: exactly 127.0.0.1 or ::1, not all of 127/8.
pub(crate) fn is_probe_peer(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4 == std::net::Ipv4Addr::LOCALHOST,
        std::net::IpAddr::V6(v6) => {
            v6 == std::net::Ipv6Addr::LOCALHOST
                || v6.to_ipv4_mapped() == Some(std::net::Ipv4Addr::LOCALHOST)
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on the admin listener until
/// `shutdown`. Every connection has deadlines (head, lifetime) and HTTP/2
/// few streams, so a stuck or hostile client there cannot pile up.
pub async fn serve_http(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(ADMIN_HEADER_TIMEOUT);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(16)
        .max_header_list_size(16 << 10)
        .max_pending_accept_reset_streams(20)
        .keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_timeout(std::time::Duration::from_secs(20));
    let slots = Arc::new(tokio::sync::Semaphore::new(ADMIN_MAX_CONNECTIONS));
    let per_address = Arc::new(crate::server::PerAddress::default());
    loop {
        tokio::select! {
            (stream, peer) = crate::server::accept_or_back_off(&listener, "admin") => {
                let Some(address) = per_address.admit(peer.ip(), ADMIN_MAX_PER_ADDRESS) else {
                    tracing::debug!(%peer, "admin listener: too many connections from this address");
                    continue;
                };
                // The kubelet's probes come from the node's own loopback
                // address: they never wait behind the cap that other
                // addresses share (an admin_listen on the node's address is
                // open to every pod of the cluster), so clients elsewhere
                // cannot fail the liveness probe and have wharf restarted.
                // Past the cap, others are closed at once.
                let permit = if is_probe_peer(peer.ip()) {
                    None
                } else {
                    match slots.clone().try_acquire_owned() {
                        Ok(p) => Some(p),
                        Err(_) => {
                            tracing::debug!(%peer, "admin listener: connection limit reached");
                            continue;
                        }
                    }
                };
                let (app, builder) = (app.clone(), builder.clone());
                let page = crate::status::allowed(&app, peer.ip());
                tokio::spawn(async move {
                    let _held = (permit, address);
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let m = app.clone();
                        async move {
                            let method = req.method().clone();
                            let ok = method == Method::GET || method == Method::HEAD;
                            let path = req.uri().path();
                            Ok::<_, Infallible>(match path {
                                "/metrics" if ok => metrics_response(&m, &method),
                                "/healthz" if ok => healthz(&method),
                                "/readyz" if ok => readyz(&m, &method).await,
                                _ if page
                                    && crate::status::owns(path)
                                    && crate::status::host_ok(
                                        req.uri()
                                            .authority()
                                            .map(|a| a.as_str())
                                            .or_else(|| {
                                                req.headers()
                                                    .get(http::header::HOST)
                                                    .and_then(|h| h.to_str().ok())
                                            }),
                                    ) =>
                                {
                                    crate::status::serve(&m, &method, path, req.uri().query()).await
                                }
                                _ => json_response(
                                    StatusCode::NOT_FOUND,
                                    &serde_json::json!({"error": "the admin listener serves /metrics, /healthz and /readyz"}),
                                ),
                            })
                        }
                    });
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    let _ = tokio::time::timeout(ADMIN_CONN_MAX, conn).await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    Ok(())
}
