//! The accept loop (mini-redis's `Listener`): takes connections until told
//! to stop, at most `server.max_connections` at once, hands each to its own
//! task ([`connection::serve`]), then drains: in-flight requests finish
//! within the grace period. Never does a handshake or reads a byte itself,
//! so one slow client cannot stall the others.
//!
//! At the cap the loop stops accepting until a connection ends: new clients
//! wait in the kernel's backlog (and are served as slots free) rather than
//! being accepted and dropped; every deadline of [`super::limits`] makes sure
//! slots do free. One address may hold at most
//! `server.max_connections_per_address` of them: past that its new
//! connections are closed at once, so it cannot lock the others out. The
//! admin listener is a separate socket and loop, so
//! `/metrics` and `/readyz` there stay answerable at the cap.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;

use crate::app::App;
use crate::tls::Tls;

use super::connection::{self, Shared};
use super::limits::{Dropped, Limits, PerAddress, ServerMetrics};

/// At most one "connection limit reached" warning per this.
const CAP_WARN_EVERY: Duration = Duration::from_secs(60);

pub struct Listener {
    listener: Option<TcpListener>,
    shared: Shared,
    slots: Arc<Semaphore>,
    per_address: Arc<PerAddress>,
    /// Tells connections to stop between requests; closed when the last of
    /// them has ended (each holds a receiver in its `Shared`).
    stop: watch::Sender<bool>,
    /// Requests from a [`Pulse`], answered by the accept loop.
    pulse: Option<PulseReceiver>,
}

/// Asks the accept loop to prove it is alive (for systemd's watchdog): the
/// loop answers between accepts and while it waits at the connection cap,
/// so an answer means the runtime still polls it. A loop that is wedged, or
/// has stopped, does not answer.
#[derive(Clone)]
pub struct Pulse(mpsc::Sender<oneshot::Sender<()>>);

/// The accept loop's end of a [`Pulse`]; give it to [`super::run`].
pub struct PulseReceiver(mpsc::Receiver<oneshot::Sender<()>>);

/// A pulse and the receiver the accept loop answers through.
pub fn pulse() -> (Pulse, PulseReceiver) {
    let (tx, rx) = mpsc::channel(1);
    (Pulse(tx), PulseReceiver(rx))
}

impl Pulse {
    /// Whether the accept loop answered within `within`.
    pub async fn beat(&self, within: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        let asked = async {
            self.0.send(tx).await.ok()?;
            rx.await.ok()
        };
        matches!(tokio::time::timeout(within, asked).await, Ok(Some(())))
    }
}

/// The next connection on `listener` (for the operator's and the peers'
/// listeners, which answer no pulse). A failed accept (EMFILE and friends:
/// registry clients can use up descriptors) is logged and tried again after
/// 50 ms instead of spinning a worker thread.
pub async fn accept_or_back_off(
    listener: &TcpListener,
    what: &str,
) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(a) => return a,
            Err(e) => {
                tracing::warn!(error = %e, listener = what, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The next pulse request, or never without a receiver.
async fn next_beat(p: &mut Option<PulseReceiver>) -> oneshot::Sender<()> {
    match p {
        Some(PulseReceiver(rx)) => match rx.recv().await {
            Some(reply) => reply,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

impl Listener {
    pub fn new(
        listener: TcpListener,
        app: Arc<App>,
        tls: Option<Arc<Tls>>,
        limits: Limits,
    ) -> Listener {
        let (stop, stopped) = watch::channel(false);
        let metrics = ServerMetrics::new(app.metrics.registry());
        Listener {
            listener: Some(listener),
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            per_address: Arc::default(),
            shared: Shared {
                app,
                tls,
                http1: hyper_builder(&limits).http1_only(),
                http2: hyper_builder(&limits).http2_only(),
                bodies: Arc::new(Semaphore::new(limits.max_connections)),
                stopped,
                limits: Arc::new(limits),
                metrics,
            },
            stop,
            pulse: None,
        }
    }

    /// Answers `pulse`'s requests while accepting.
    pub fn with_pulse(mut self, pulse: Option<PulseReceiver>) -> Listener {
        self.pulse = pulse;
        self
    }

    /// Accepts connections until `shutdown` completes.
    pub async fn accept_until(&mut self, shutdown: impl Future<Output = ()>) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        tokio::pin!(shutdown);
        let mut pulse = self.pulse.take();
        let mut warned: Option<Instant> = None;
        let mut warned_address: Option<Instant> = None;
        loop {
            let permit = match self.slots.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    self.shared.metrics.cap_reached.inc();
                    if warned.is_none_or(|w| w.elapsed() >= CAP_WARN_EVERY) {
                        warned = Some(Instant::now());
                        tracing::warn!(
                            max_connections = self.shared.limits.max_connections,
                            "connection limit reached (server.max_connections): new connections wait until one ends"
                        );
                    }
                    tokio::select! {
                        p = self.slots.clone().acquire_owned() => p.expect("never closed"),
                        reply = next_beat(&mut pulse) => {
                            let _ = reply.send(());
                            continue;
                        }
                        _ = &mut shutdown => break,
                    }
                }
            };
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let cap = self.shared.limits.max_connections_per_address;
                        let Some(address) = self.per_address.admit(peer.ip(), cap) else {
                            // Closed at once: waiting in the backlog would
                            // hold everyone else's place too.
                            self.shared.metrics.drop_conn(Dropped::AddressLimit, peer);
                            if warned_address.is_none_or(|w| w.elapsed() >= CAP_WARN_EVERY) {
                                warned_address = Some(Instant::now());
                                tracing::warn!(
                                    %peer, max_connections_per_address = cap,
                                    "connection limit per address reached (server.max_connections_per_address): its new connections are closed"
                                );
                            }
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let shared = self.shared.clone();
                        tokio::spawn(async move {
                            shared.metrics.open.inc();
                            let open = shared.metrics.open.clone();
                            connection::serve(stream, peer, shared).await;
                            open.dec();
                            drop((permit, address));
                        });
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                reply = next_beat(&mut pulse) => {
                    let _ = reply.send(());
                }
                _ = &mut shutdown => break,
            }
        }
    }

    /// Stops taking requests and waits up to `grace` for those in flight.
    pub async fn drain(self, grace: Duration) {
        tracing::info!("shutting down: waiting for in-flight requests");
        let _ = self.stop.send(true);
        drop(self.shared);
        tokio::select! {
            _ = self.stop.closed() => {}
            _ = tokio::time::sleep(grace) => tracing::warn!(?grace, "grace period over; closing remaining connections"),
        }
    }
}

/// hyper's settings for TLS and HTTP/2 connections: every limit explicit,
/// so a hyper upgrade cannot loosen one unnoticed.
fn hyper_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A client that never finishes its request headers must not hold a
    // connection forever; hyper enforces this only with a timer.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // hyper queues body chunks up to this before it stops asking for more
        // (400 KiB by default): with one chunk queued, the body's buffer
        // budget (body.rs) is what bounds a TLS client's memory.
        .max_buf_size(64 * 1024);
    // Registry clients pull large layers: let HTTP/2 windows grow with the
    // link. The stream limits answer HTTP/2's known attacks: too many
    // concurrent streams (one client starving others), rapid reset
    // (CVE-2023-44487: pending accept resets), streams reset for errors
    // (RUSTSEC-2024-0003), CONTINUATION floods and huge header lists (the
    // header list size bounds what h2 buffers across CONTINUATION frames).
    // Pings detect dead peers; the idle timeout (connection.rs) live idle ones.
    builder
        .http2()
        .timer(TokioTimer::new())
        .adaptive_window(true)
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(limits.h2_max_header_list_size)
        .max_pending_accept_reset_streams(limits.h2_max_pending_accept_reset_streams)
        .max_local_error_reset_streams(limits.h2_max_local_error_reset_streams)
        .max_send_buf_size(256 * 1024)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}
