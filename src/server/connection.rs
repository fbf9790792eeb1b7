//! One client connection, from the first byte to the last: the TLS
//! handshake (bounded in time), then plain HTTP/1.1 through our own loop
//! (`sendfile`, see [`super::h1`]) or hyper for TLS and HTTP/2. Each request
//! carries what the connection knows of its client ([`ClientInfo`]: address,
//! and the user its verified certificate names).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::access::ClientInfo;
use crate::app::App;
use crate::tls::Tls;

use super::{h1, handler};

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection shares.
#[derive(Clone)]
pub struct Shared {
    pub app: Arc<App>,
    pub tls: Option<Arc<Tls>>,
    pub hyper: auto::Builder<TokioExecutor>,
    /// Becomes true when plain-text connections should stop between requests.
    pub h1_stopped: watch::Receiver<bool>,
}

/// Serves one connection until it ends.
pub async fn serve(stream: TcpStream, peer: SocketAddr, shared: Shared, watcher: Watcher) {
    let result = match shared.tls.clone() {
        None => plain(stream, peer, shared, watcher).await,
        Some(tls) => {
            let s = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return tracing::info!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::info!(%peer, "TLS handshake timed out"),
            };
            // rustls keeps only certificates it verified.
            let leaf = s.get_ref().1.peer_certificates().and_then(|c| c.first());
            let client = ClientInfo {
                addr: peer,
                cert_user: leaf.and_then(|c| shared.app.access.certificate_user(c)),
            };
            let conn = shared
                .hyper
                .serve_connection(TokioIo::new(s), service(&shared.app, client));
            watcher.watch(conn.into_owned()).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

type ConnResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Plain text: our HTTP/1.1 loop, handing over to hyper if the client
/// speaks HTTP/2 (prior knowledge).
async fn plain(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Shared,
    watcher: Watcher,
) -> ConnResult {
    let client = ClientInfo {
        addr: peer,
        cert_user: None,
    };
    match h1::serve(
        stream,
        &shared.app,
        client.clone(),
        shared.h1_stopped.clone(),
    )
    .await
    {
        Ok(Some((stream, read))) => {
            let io = TokioIo::new(h1::Rewind::new(stream, read));
            let svc = service(&shared.app, client);
            let conn = shared.hyper.serve_connection(io, svc);
            // The h1 loop's stop signal is not hyper's: it ends here.
            drop(shared.h1_stopped);
            watcher.watch(conn.into_owned()).await
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The hyper service of one connection.
fn service(
    app: &Arc<App>,
    client: ClientInfo,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<super::Body>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
       + Send
       + 'static {
    let app = app.clone();
    service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        let app = app.clone();
        req.extensions_mut().insert(client.clone());
        async move { Ok::<_, Infallible>(handler::handle(&app, req).await) }
    })
}
