//! One client connection, from the first byte to the last: the TLS
//! handshake (bounded in time), then plain HTTP/1.1 through our own loop
//! (`sendfile`, see [`super::h1`]) or hyper for TLS and HTTP/2 (over TLS,
//! its frames gathered into few writes by [`Gather`]), whose
//! transport is [`Guarded`] (the write deadline; no clean close after a
//! failed response) and which is closed after `idle_timeout` without a
//! request. Each request carries what the connection knows of its client
//! ([`ClientInfo`]: address, and the user its verified certificate names)
//! and the connection's [`ConnState`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::access::ClientInfo;
use crate::app::App;
use crate::tls::Tls;

use super::gather::Gather;
use super::limits::{ConnState, Dropped, Guarded, InFlight, Limits, ServerMetrics};
use super::{h1, handler};

/// How long a client may take to complete its TLS handshake (at most the
/// header timeout).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection shares.
#[derive(Clone)]
pub struct Shared {
    pub app: Arc<App>,
    pub tls: Option<Arc<Tls>>,
    /// hyper for HTTP/1.1 over TLS: ALPN `http/1.1`, or none (HTTP/2 over
    /// TLS requires ALPN, RFC 9113 §3.3), so no read to sniff the version.
    pub http1: auto::Builder<TokioExecutor>,
    /// hyper for HTTP/2: ALPN `h2`, or the prior-knowledge preface on a
    /// plain connection.
    pub http2: auto::Builder<TokioExecutor>,
    /// Becomes true when connections should stop between requests.
    pub stopped: watch::Receiver<bool>,
    pub limits: Arc<Limits>,
    pub metrics: ServerMetrics,
    /// Streamed-body slots beyond each connection's own
    /// ([`super::limits::BodySlot`]): `max_connections` of them.
    pub bodies: Arc<tokio::sync::Semaphore>,
}

/// Serves one connection until it ends.
pub async fn serve(stream: TcpStream, peer: SocketAddr, shared: Shared) {
    let result = match shared.tls.clone() {
        None => plain(stream, peer, shared).await,
        Some(tls) => {
            let fd = stream.as_raw_fd();
            let limit = HANDSHAKE_TIMEOUT.min(shared.limits.header_timeout);
            let s = match tokio::time::timeout(limit, tls.acceptor().accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return tracing::info!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => {
                    shared.metrics.drop_conn(Dropped::HeaderTimeout, peer);
                    return tracing::info!(%peer, "TLS handshake timed out");
                }
            };
            // rustls keeps only certificates it verified.
            let leaf = s.get_ref().1.peer_certificates().and_then(|c| c.first());
            let client = ClientInfo {
                addr: peer,
                cert_user: leaf.and_then(|c| shared.app.access.certificate_user(c)),
            };
            let hyper = match s.get_ref().1.alpn_protocol() {
                Some(b"h2") => &shared.http2,
                _ => &shared.http1,
            };
            hyper_conn(hyper, Gather::new(s), fd, peer, client, &shared).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

type ConnResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Plain text: our HTTP/1.1 loop, handing over to hyper if the client
/// speaks HTTP/2 (prior knowledge).
async fn plain(stream: TcpStream, peer: SocketAddr, shared: Shared) -> ConnResult {
    let client = ClientInfo {
        addr: peer,
        cert_user: None,
    };
    let fd = stream.as_raw_fd();
    match h1::serve(stream, &shared, client.clone()).await {
        Ok(Some((stream, read))) => {
            let io = h1::Rewind::new(stream, read);
            hyper_conn(&shared.http2, io, fd, peer, client, &shared).await
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Serves a connection with hyper until it ends, the server stops, or it
/// has been idle (no request in flight) for `idle_timeout`.
async fn hyper_conn<T>(
    hyper: &auto::Builder<TokioExecutor>,
    io: T,
    fd: std::os::fd::RawFd,
    peer: SocketAddr,
    client: ClientInfo,
    shared: &Shared,
) -> ConnResult
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = ConnState::new(shared.limits.write_timeout, shared.bodies.clone());
    let io = Guarded::new(
        io,
        &shared.limits,
        state.clone(),
        fd,
        shared.metrics.clone(),
        peer,
    );
    let svc = service(&shared.app, client, state.clone());
    let conn = hyper.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut stop = shared.stopped.clone();
    let mut closing = false;
    loop {
        // Until its first request a connection has the header timeout (hyper
        // waits for the first bytes, or an HTTP/2 client for its first
        // stream, with no deadline of its own); then the idle timeout.
        let (limit, why) = if state.started() {
            (shared.limits.idle_timeout, Dropped::IdleTimeout)
        } else {
            (shared.limits.header_timeout, Dropped::HeaderTimeout)
        };
        // Woken at least every idle timeout: the first request may start
        // (and end) while this waits for the header timeout.
        let wait = limit
            .min(shared.limits.idle_timeout)
            .saturating_sub(state.idle_for());
        // A body that gave up on its reader closes its channel right after
        // `stall()`, and hyper, seeing the body end early, may end the
        // connection first: the stall is checked first (`biased`) and again
        // when the connection ends, so it is counted either way.
        tokio::select! {
            biased;
            _ = state.stalled() => {
                state.count_write_timeout(&shared.metrics, peer);
                return Ok(());
            }
            r = conn.as_mut() => {
                if state.has_stalled() {
                    state.count_write_timeout(&shared.metrics, peer);
                }
                return r;
            }
            // A client that does not let a graceful close finish (it never
            // reads the GOAWAY) is dropped.
            _ = tokio::time::sleep(shared.limits.header_timeout), if closing && !*stop.borrow() => {
                return Ok(());
            }
            _ = stop.wait_for(|s| *s), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tokio::time::sleep(wait), if !closing => {
                if state.idle_for() >= limit {
                    shared.metrics.drop_conn(why, peer);
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// The hyper service of one connection.
fn service(
    app: &Arc<App>,
    client: ClientInfo,
    state: Arc<ConnState>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<Tracked>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
       + Send
       + 'static {
    let app = app.clone();
    service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        let app = app.clone();
        let in_flight = state.begin();
        req.extensions_mut().insert(client.clone());
        req.extensions_mut().insert(state.clone());
        async move {
            let resp = handler::handle(&app, req).await;
            Ok::<_, Infallible>(resp.map(|body| Tracked {
                body,
                _in_flight: in_flight,
            }))
        }
    })
}

/// A response body that keeps its request counted as in flight (so the
/// idle timeout never cuts a transfer) until hyper is done with it.
pub struct Tracked {
    body: super::Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, std::io::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
