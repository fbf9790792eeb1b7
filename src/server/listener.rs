//! The accept loop (mini-redis's `Listener`): takes connections until told
//! to stop, hands each to its own task ([`connection::serve`]), then drains:
//! in-flight requests finish within the grace period. Never does a
//! handshake or reads a byte itself, so one slow client cannot stall the
//! others.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::App;
use crate::tls::Tls;

use super::connection::{self, Shared};

pub struct Listener {
    listener: Option<TcpListener>,
    shared: Shared,
    /// Tracks hyper's connections, for a graceful drain.
    graceful: GracefulShutdown,
    /// Tells the plain-text (`h1`) connections to stop between requests;
    /// closed when the last of them has ended.
    stop_h1: watch::Sender<bool>,
}

impl Listener {
    pub fn new(listener: TcpListener, app: Arc<App>, tls: Option<Arc<Tls>>) -> Listener {
        let (stop_h1, h1_stopped) = watch::channel(false);
        Listener {
            listener: Some(listener),
            shared: Shared {
                app,
                tls,
                hyper: hyper_builder(),
                h1_stopped,
            },
            graceful: GracefulShutdown::new(),
            stop_h1,
        }
    }

    /// Accepts connections until `shutdown` completes.
    pub async fn accept_until(&mut self, shutdown: impl Future<Output = ()>) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let watcher = self.graceful.watcher();
                        tokio::spawn(connection::serve(stream, peer, self.shared.clone(), watcher));
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = &mut shutdown => break,
            }
        }
    }

    /// Stops taking requests and waits up to `grace` for those in flight.
    pub async fn drain(self, grace: Duration) {
        tracing::info!("shutting down: waiting for in-flight requests");
        let _ = self.stop_h1.send(true);
        drop(self.shared);
        let hyper_done = self.graceful.shutdown();
        tokio::select! {
            _ = async { tokio::join!(hyper_done, self.stop_h1.closed()) } => {}
            _ = tokio::time::sleep(grace) => tracing::warn!(?grace, "grace period over; closing remaining connections"),
        }
    }
}

/// hyper's settings for TLS and HTTP/2 connections.
fn hyper_builder() -> auto::Builder<TokioExecutor> {
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
    builder
}
