//! The node-to-node listener (`shared.peer_listen`): serves other nodes of
//! the fleet the blobs this node is fetching for all of them, as the fill
//! goes (see `shared::peer` for the protocol and its trade-offs).
//!
//! Answers one request, `GET /wharf-peer/v1/blobs/<digest>`, signed with the
//! fleet's peer key: 401 unsigned, wrongly signed, stale or replayed; 404
//! unless this node holds the digest's lease (`Mirror::peer_blob`); else the
//! running fill (its last byte only once the digest matched) or the
//! verified file. Never the registry API, never a fill started here.
//!
//! Limits (constants, not configuration: the peers are wharf nodes):
//! [`MAX_CONNECTIONS`] at once, [`MAX_PER_ADDRESS`] from one address (past
//! either, a connection is closed at once and counted as `busy`), the
//! request head within [`HEADER_TIMEOUT`], one request per connection, and
//! `server.write_timeout` for each chunk of the body (a follower that stops
//! reading loses the connection).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Method, Request, Response, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::app::App;
use crate::mirror::BlobBody;
use crate::registry::Digest;
use crate::shared::peer::BLOBS_PATH;

use super::body::{self, Body, Source};
use super::limits::{ConnState, Limits, PerAddress};

/// Connections from peers at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Of those, from one address (a node follows at most its
/// `cache.max_fills` fills at once, 128 by default; past this it waits for
/// the store instead).
pub const MAX_PER_ADDRESS: usize = 128;
/// The request head must arrive within this (peers are on the node
/// network; anyone else who holds a connection open frees it soon).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// The one valid request is a few hundred bytes.
const MAX_HEAD_BYTES: usize = 8192;

/// Serves peers on `listener` until `shutdown`.
pub async fn serve_peers(
    app: Arc<App>,
    listener: TcpListener,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_address = Arc::new(PerAddress::default());
    // Every connection streams one body at most: its own slot suffices.
    let no_shared_bodies = Arc::new(tokio::sync::Semaphore::new(0));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(16)
        .keep_alive(false);
    loop {
        tokio::select! {
            (stream, peer) = super::accept_or_back_off(&listener, "peer") => {
                let busy = || {
                    if let Some(t) = app.mirror.tier() {
                        t.peer_served("busy");
                    }
                };
                let Some(address) = per_address.admit(peer.ip(), MAX_PER_ADDRESS) else {
                    busy();
                    continue;
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    busy();
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let state = ConnState::new(limits.write_timeout, no_shared_bodies.clone());
                let (app, http) = (app.clone(), http.clone());
                tokio::spawn(async move {
                    let _held = (permit, address);
                    let conn_state = state.clone();
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (app, state) = (app.clone(), conn_state.clone());
                        async move { Ok::<_, Infallible>(answer(&app, &req, state).await) }
                    });
                    let conn = http.serve_connection(TokioIo::new(stream), svc);
                    // A follower that stops taking the body loses the
                    // connection (dropping it closes the socket).
                    tokio::select! {
                        _ = conn => {}
                        _ = state.stalled() => {}
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    Ok(())
}

async fn answer<B>(app: &App, req: &Request<B>, state: Arc<ConnState>) -> Response<Body> {
    let Some(tier) = app.mirror.tier() else {
        return plain(StatusCode::NOT_FOUND, "no shared tier");
    };
    let path = req.uri().path();
    let digest = match path.strip_prefix(BLOBS_PATH) {
        Some(d) if req.method() == Method::GET && req.uri().query().is_none() => d,
        _ => {
            tier.peer_served("invalid");
            return plain(StatusCode::NOT_FOUND, "not a peer request");
        }
    };
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let nonce = match tier.check_peer(auth, "GET", path) {
        Ok(n) => n,
        Err(crate::shared::peer::Refused::Busy) => {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "busy")
        }
        Err(_) => return plain(StatusCode::UNAUTHORIZED, "unauthorized"),
    };
    let Ok(d) = digest.parse::<Digest>() else {
        tier.peer_served("invalid");
        return plain(StatusCode::BAD_REQUEST, "not a digest");
    };
    // Only with a length: the proof covers it, and a follower takes no
    // answer of unknown length.
    let Some((blob, Some(size))) = app.mirror.peer_blob(&d).await else {
        tier.peer_served("not_leading");
        return plain(StatusCode::NOT_FOUND, "this node is not filling that blob");
    };
    let Some(proof) = tier.peer_proof(nonce, &d, size) else {
        tier.peer_served("no_key");
        return plain(StatusCode::UNAUTHORIZED, "unauthorized");
    };
    tier.peer_served("served");
    tracing::debug!(digest = %d, "serving a blob to a peer");
    let source = match blob {
        BlobBody::File(f) => Source::File(f),
        BlobBody::Fill(r) => Source::Fill(r),
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, size)
        .header(crate::shared::peer::PROOF_HEADER, proof)
        .body(body::stream_on(source, Some(size), state))
        .expect("valid headers")
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .header(header::CONTENT_LENGTH, text.len())
        .body(body::full(text))
        .expect("valid headers")
}
