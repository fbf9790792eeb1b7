//! The HTTP server: accepts connections, serves HTTP/1.1 and HTTP/2 with hyper,
//! hands each request to [`handler::handle`], and shuts down gracefully.
//!
//! `run(listener, mirror, shutdown)` takes an already-bound listener and a
//! shutdown future (mini-redis style), so tests bind port 0 and stop it cleanly.

mod body;
mod error;
mod h1;
mod handler;
mod range;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::access::ClientInfo;
use crate::mirror::Mirror;
use crate::tls::Tls;

pub use body::Body;
pub use error::{classify, Blame, ErrorParts};
pub use handler::{healthz, metrics as metrics_response, readyz};

/// A complete body from bytes (for the admin endpoints).
pub fn full_body(b: impl Into<bytes::Bytes>) -> Body {
    body::full(b)
}

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until `shutdown` completes, then lets in-flight requests finish for up
/// to `grace` and flushes metadata. With `tls`, every connection is TLS and the
/// certificate is kept fresh in the background while serving.
pub async fn run(
    listener: TcpListener,
    mirror: Mirror,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A client that never finishes its request headers must not hold a
    // connection forever; hyper enforces this only with a timer.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        // hyper queues body chunks up to this before it stops asking for more
        // (400 KiB by default): with one chunk queued, the body's buffer
        // budget (body.rs) is what bounds a TLS client's memory.
        .max_buf_size(64 * 1024);
    // Registry clients pull large layers: let HTTP/2 windows grow with the link.
    builder
        .http2()
        .timer(TokioTimer::new())
        .adaptive_window(true)
        .keep_alive_interval(Duration::from_secs(30));
    // Plain-text connections are served by `h1` (sendfile), which is told
    // through this channel to stop between requests; it is closed when the
    // last of them has ended.
    let (stop_h1, h1_stopped) = watch::channel(false);
    let maintenance = tls.as_ref().map(|t| t.spawn_maintenance());
    let upkeep = mirror.spawn_maintenance();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let m = mirror.clone();
                // Each request carries what the connection knows about its client.
                let svc = move |client: ClientInfo| {
                    service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                        let m = m.clone();
                        req.extensions_mut().insert(client.clone());
                        async move { Ok::<_, Infallible>(handler::handle(&m, req).await) }
                    })
                };
                let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), tls.clone());
                let (m, stop) = (mirror.clone(), h1_stopped.clone());
                // The handshake runs in the connection's task, never in the
                // accept loop, so one slow client cannot stall the others.
                tokio::spawn(async move {
                    let result = match tls {
                        None => {
                          let client = ClientInfo { addr: peer, verified_cert: false };
                          match h1::serve(stream, &m, client.clone(), stop).await {
                            Ok(Some((stream, read))) => {
                                drop(m);
                                let io = TokioIo::new(h1::Rewind::new(stream, read));
                                watcher.watch(builder.serve_connection(io, svc(client)).into_owned()).await
                            }
                            Ok(None) => Ok(()),
                            Err(e) => Err(e.into()),
                          }
                        }
                        Some(tls) => {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream)).await {
                                Ok(Ok(s)) => {
                                    // rustls only keeps certificates it verified.
                                    let verified_cert = s.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                                    let client = ClientInfo { addr: peer, verified_cert };
                                    let conn = builder.serve_connection(TokioIo::new(s), svc(client));
                                    watcher.watch(conn.into_owned()).await
                                }
                                Ok(Err(e)) => {
                                    tracing::info!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::info!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            }
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: waiting for in-flight requests");
    let _ = stop_h1.send(true);
    drop(h1_stopped);
    tokio::select! {
        _ = async { tokio::join!(graceful.shutdown(), stop_h1.closed()) } => {}
        _ = tokio::time::sleep(grace) => tracing::warn!(?grace, "grace period over; closing remaining connections"),
    }
    if let Some(m) = maintenance {
        m.abort();
    }
    upkeep.abort();
    mirror
        .flush()
        .map_err(|e| std::io::Error::other(e.to_string()))
}
