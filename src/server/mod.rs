//! The registry server: accepts connections (`listener`), serves each one
//! (`connection`: TLS, our own HTTP/1.1 loop with `sendfile` for plain
//! text, hyper for TLS and HTTP/2), answers each request (`handler`: parse,
//! access, mirror, response; then `observe`: metrics and the access log),
//! maps every failure in one place (`error`), and shuts down gracefully.
//! `peers` is the node-to-node listener of the shared tier (`shared.peer_listen`).
//!
//! Every connection lives within [`Limits`] (`limits`): a connection cap and
//! a deadline for each phase, so no client can hold wharf's resources.
//!
//! `run(listener, app, tls, shutdown, grace, limits)` takes an already-bound listener
//! and a shutdown future (mini-redis style), so tests bind port 0 and stop it
//! cleanly. Never names the cache's or an upstream's error types (only
//! `MirrorError`, in the one mapping): it asks the [`App`]'s parts and
//! writes what they answer.

mod body;
mod connection;
mod error;
mod gather;
pub mod h1;
mod handler;
mod limits;
mod listener;
mod observe;
mod peers;
mod probes;
pub mod range;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::app::App;
use crate::tls::Tls;

pub use body::Body;
pub use error::RequestError;
pub use limits::{Limits, PerAddress};
pub use listener::{accept_or_back_off, pulse, Pulse, PulseReceiver};
pub use peers::serve_peers;
pub use probes::{healthz, metrics as metrics_response, readyz};

/// A complete body from bytes (for the admin endpoints).
pub fn full_body(b: impl Into<bytes::Bytes>) -> Body {
    body::full(b)
}

/// A streamed body fed from a channel (the admin socket's progress lines).
pub fn channel_body(rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>) -> Body {
    body::channel(rx)
}

/// Serves until `shutdown` completes, then lets in-flight requests finish for up
/// to `grace` and flushes metadata. With `tls`, every connection is TLS and the
/// certificate is kept fresh in the background while serving. With `pulse`,
/// the accept loop answers it (the systemd watchdog's proof that it is alive).
pub async fn run(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    limits: Limits,
    pulse: Option<PulseReceiver>,
) -> std::io::Result<()> {
    let maintenance = tls.as_ref().map(|t| t.spawn_maintenance());
    let upkeep = app.mirror.spawn_maintenance();
    let schedules = app.sync.spawn_schedules();
    let mut l = listener::Listener::new(listener, app.clone(), tls, limits).with_pulse(pulse);
    l.accept_until(shutdown).await;
    l.drain(grace).await;
    if let Some(m) = maintenance {
        m.abort();
    }
    upkeep.abort();
    for s in schedules {
        s.abort();
    }
    app.mirror
        .flush()
        .map_err(|e| std::io::Error::other(e.to_string()))
}
