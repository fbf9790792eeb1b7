//! What a client may cost: the connection cap, a deadline for every phase of
//! a connection (TLS handshake and request head, idle keep-alive, and the
//! progress of every write), HTTP/2's stream limits ([`Limits`], from
//! `[server]`), and the counters of what they refused ([`ServerMetrics`]).
//!
//! The write deadline ([`Pace`]) is a minimum rate, not a per-write timeout:
//! once a write has to wait for the client (the socket buffer is full), the
//! client must take `min_send_rate × write_timeout` bytes within
//! `write_timeout`, else the connection is closed. A client that stops
//! reading, or reads a byte a minute, cannot hold a connection, a file or a
//! buffer for longer than that. [`Guarded`] applies it to hyper's
//! connections (TLS, HTTP/2); `h1` applies it around `sendfile`.
//!
//! Never decides what a request gets: only how long and how much a
//! connection may hold.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `[server]`'s limits, validated (see `config.toml` for each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    /// Of those, from one client address (an IPv6 client by its /64).
    pub max_connections_per_address: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    /// Bytes per second.
    pub min_send_rate: u64,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_header_list_size: u32,
    pub h2_max_pending_accept_reset_streams: usize,
    pub h2_max_local_error_reset_streams: usize,
}

impl Default for Limits {
    /// What a production mirror serving a cluster's nodes would choose:
    /// thousands of connections, minutes of patience, nothing unbounded.
    fn default() -> Limits {
        Limits {
            max_connections: 4096,
            // A node's runtime pulls a few layers at once per image; 256
            // leaves room for a NAT in front of many, and keeps one address
            // from holding more than a sixteenth of the slots.
            max_connections_per_address: 256,
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            write_timeout: Duration::from_secs(60),
            min_send_rate: 1024,
            h2_max_concurrent_streams: 100,
            h2_max_header_list_size: 64 << 10,
            h2_max_pending_accept_reset_streams: 20,
            h2_max_local_error_reset_streams: 256,
        }
    }
}

impl Limits {
    /// Bytes a waiting client must take within each `write_timeout`.
    pub fn min_progress(&self) -> u64 {
        (self.min_send_rate as f64 * self.write_timeout.as_secs_f64()).max(1.0) as u64
    }

    pub fn pace(&self) -> Pace {
        Pace::new(self.write_timeout, self.min_progress())
    }
}

/// Why wharf closed a connection itself (the `reason` label).
#[derive(Debug, Clone, Copy)]
pub enum Dropped {
    /// The client did not send its request head (or HTTP/2 preface, or TLS
    /// handshake) within `header_timeout`.
    HeaderTimeout,
    /// No request for `idle_timeout`.
    IdleTimeout,
    /// The client took too little of a response within `write_timeout`.
    WriteTimeout,
    /// A request head wharf refuses to interpret (ambiguous length, bare LF).
    Malformed,
    /// Its address had `max_connections_per_address` open already.
    AddressLimit,
}

impl Dropped {
    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::HeaderTimeout => "header_timeout",
            Dropped::IdleTimeout => "idle_timeout",
            Dropped::WriteTimeout => "write_timeout",
            Dropped::Malformed => "malformed",
            Dropped::AddressLimit => "address_limit",
        }
    }
}

/// The server's own counters, registered into the app's registry.
#[derive(Clone)]
pub struct ServerMetrics {
    /// Connections open on the registry port.
    pub open: IntGauge,
    /// Times the accept loop stopped at `max_connections`.
    pub cap_reached: IntCounter,
    /// Connections wharf closed, by reason.
    pub dropped: IntCounterVec,
}

impl ServerMetrics {
    pub fn new(registry: &Registry) -> ServerMetrics {
        let m = ServerMetrics {
            open: IntGauge::new(
                "wharf_connections_open",
                "Client connections open on the registry port",
            )
            .expect("valid metric"),
            cap_reached: IntCounter::new(
                "wharf_connection_limit_reached_total",
                "Times the registry port stopped accepting because server.max_connections were open",
            )
            .expect("valid metric"),
            dropped: IntCounterVec::new(
                Opts::new(
                    "wharf_connections_dropped_total",
                    "Client connections wharf closed itself, by reason (header_timeout, idle_timeout, write_timeout, malformed, address_limit)",
                ),
                &["reason"],
            )
            .expect("valid metric"),
        };
        // A second server on the same registry (tests) counts unregistered.
        let _ = registry.register(Box::new(m.open.clone()));
        let _ = registry.register(Box::new(m.cap_reached.clone()));
        let _ = registry.register(Box::new(m.dropped.clone()));
        m
    }

    /// Counts a dropped connection and logs it at debug (an attack would
    /// otherwise flood the log: the counter is what to watch).
    pub fn drop_conn(&self, why: Dropped, peer: std::net::SocketAddr) {
        self.dropped.with_label_values(&[why.as_str()]).inc();
        tracing::debug!(%peer, reason = why.as_str(), "closing the connection");
    }
}

/// Connections open per client address, so that one address cannot take
/// every `max_connections` slot and lock the others out (the cap alone
/// would let it: its connections wait in the backlog like everyone's). An
/// IPv6 client counts by its /64, the least a host is given. One short lock
/// per connection, at its start and end.
#[derive(Default)]
pub struct PerAddress(parking_lot::Mutex<HashMap<IpAddr, usize>>);

impl PerAddress {
    /// A slot for a connection from `ip`, or `None` if it has `cap` open.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<AddressSlot> {
        let key = address_key(ip);
        let mut open = self.0.lock();
        let n = open.entry(key).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(AddressSlot(self.clone(), key))
    }
}

/// One connection counted against its address, until dropped.
pub struct AddressSlot(Arc<PerAddress>, IpAddr);

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = (self.0).0.lock();
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// What a client's address counts as: IPv4 (also mapped into IPv6) whole,
/// IPv6 by its /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The write-progress deadline of one connection (see the module doc).
/// Costs two integer updates per write; the clock is read only when a write
/// has to wait.
#[derive(Debug)]
pub struct Pace {
    timeout: Duration,
    min_bytes: u64,
    total: u64,
    /// While the client keeps wharf waiting: the deadline, and `total` then.
    armed: Option<(Instant, u64)>,
}

impl Pace {
    pub fn new(timeout: Duration, min_bytes: u64) -> Pace {
        Pace {
            timeout,
            min_bytes,
            total: 0,
            armed: None,
        }
    }

    /// `n` bytes went out; `all`: the socket took everything offered, so the
    /// client is keeping up.
    pub fn wrote(&mut self, n: u64, all: bool) {
        self.total += n;
        if let Some((_, at)) = self.armed {
            if all || self.total - at >= self.min_bytes {
                self.armed = None;
            }
        }
    }

    /// A write has to wait for the client: the time by which it must have
    /// taken enough.
    pub fn waiting(&mut self) -> Instant {
        let (timeout, total) = (self.timeout, self.total);
        self.armed
            .get_or_insert_with(|| (Instant::now() + timeout, total))
            .0
    }
}

/// What a connection and its requests share: whether a response failed
/// midway (so the connection must not end as if it were complete), whether
/// a response stalled (its client took nothing within `write_timeout`, for
/// instance an HTTP/2 client granting no flow-control window: nothing blocks
/// on the socket then, so only the body can tell), and the requests in
/// flight (for the idle timeout).
#[derive(Default)]
pub struct ConnState {
    /// How long a response body may wait for the client to take a chunk.
    pub write_timeout: Option<Duration>,
    /// The connection's own streamed body is running (see [`BodySlot`]).
    own_body: AtomicBool,
    /// Slots for streamed bodies beyond each connection's own, shared by
    /// all connections (`None`: unbounded, outside a server).
    shared_bodies: Option<Arc<tokio::sync::Semaphore>>,
    stalled: tokio::sync::Notify,
    /// Set by [`stall`](Self::stall), before the body's channel closes.
    has_stalled: AtomicBool,
    /// The connection was counted as closed by `write_timeout` (a blocked
    /// write and a stalled body may both see it: counted once).
    write_timeout_counted: AtomicBool,
    failed: AtomicBool,
    /// A request has started (before that, the header timeout applies).
    started: AtomicBool,
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` of the last request's start or end.
    last_active: AtomicU64,
    epoch: std::sync::OnceLock<std::time::Instant>,
}

impl ConnState {
    pub fn new(
        write_timeout: Duration,
        shared_bodies: Arc<tokio::sync::Semaphore>,
    ) -> Arc<ConnState> {
        let s = ConnState {
            write_timeout: Some(write_timeout),
            shared_bodies: Some(shared_bodies),
            ..ConnState::default()
        };
        let _ = s.epoch.set(std::time::Instant::now());
        Arc::new(s)
    }

    /// A response body failed: end the connection without a clean close.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }

    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// A response body waited `write_timeout` for the client: the
    /// connection is to be closed.
    pub fn stall(&self) {
        self.fail();
        self.has_stalled.store(true, Ordering::Release);
        self.stalled.notify_one();
    }

    /// A response body stalled (whether or not [`stalled`](Self::stalled)
    /// was woken yet).
    pub fn has_stalled(&self) -> bool {
        self.has_stalled.load(Ordering::Acquire)
    }

    /// Counts the connection as closed by `write_timeout`, once however
    /// many of its parts saw the deadline.
    pub fn count_write_timeout(&self, metrics: &ServerMetrics, peer: std::net::SocketAddr) {
        if !self.write_timeout_counted.swap(true, Ordering::AcqRel) {
            metrics.drop_conn(Dropped::WriteTimeout, peer);
        }
    }

    /// Completes once a response body stalled.
    pub async fn stalled(&self) {
        self.stalled.notified().await
    }

    fn touch(&self) {
        let ms = self
            .epoch
            .get()
            .map_or(0, |e| e.elapsed().as_millis() as u64);
        self.last_active.store(ms, Ordering::Relaxed);
    }

    /// A request started; the guard ends it.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.started.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        InFlight(self.clone())
    }

    pub fn started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// How long the connection has had no request in flight (zero while
    /// one is).
    pub fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let now = self
            .epoch
            .get()
            .map_or(0, |e| e.elapsed().as_millis() as u64);
        Duration::from_millis(now.saturating_sub(self.last_active.load(Ordering::Relaxed)))
    }
}

impl ConnState {
    /// A slot to stream a body from (a reader task and its chunks): the
    /// connection's own if free, else one of the shared ones, waited for at
    /// most `write_timeout` (`None` then: the body fails).
    pub async fn body_slot(self: &Arc<Self>) -> Option<BodySlot> {
        if self
            .own_body
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return Some(BodySlot::Own(self.clone()));
        }
        let Some(shared) = self.shared_bodies.clone() else {
            return Some(BodySlot::Unbounded);
        };
        let wait = self.write_timeout.unwrap_or(Duration::MAX);
        match tokio::time::timeout(wait, shared.acquire_owned()).await {
            Ok(Ok(p)) => Some(BodySlot::Shared(p)),
            _ => None,
        }
    }
}

/// The right to stream one body over hyper (TLS, HTTP/2). Each stream holds
/// a reader and up to a few chunks, and hyper's HTTP/2 send buffer: about
/// 350 KiB at most. Every connection has one slot of its own, so no client
/// can keep another's first stream waiting; beyond that, HTTP/2 streams
/// share `max_connections` slots (FIFO), so however many streams clients
/// open, at most `2 × max_connections` bodies hold buffers (about 2.8 GiB at
/// the defaults, instead of 100 streams × every connection).
pub enum BodySlot {
    Own(Arc<ConnState>),
    Shared(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit),
    Unbounded,
}

impl Drop for BodySlot {
    fn drop(&mut self) {
        if let BodySlot::Own(c) = self {
            c.own_body.store(false, Ordering::Release);
        }
    }
}

/// A request in flight on a connection, until its response body is done.
pub struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A connection's transport under hyper, with the write deadline applied and
/// a failed response ending it without a clean close: no TLS `close_notify`
/// and a TCP reset, so no client takes a cut body for a complete one.
pub struct Guarded<T> {
    inner: T,
    pace: Pace,
    timer: Option<Pin<Box<Sleep>>>,
    state: Arc<ConnState>,
    tcp: Option<std::os::fd::RawFd>,
    metrics: ServerMetrics,
    peer: std::net::SocketAddr,
}

impl<T> Guarded<T> {
    pub fn new(
        inner: T,
        limits: &Limits,
        state: Arc<ConnState>,
        tcp: std::os::fd::RawFd,
        metrics: ServerMetrics,
        peer: std::net::SocketAddr,
    ) -> Guarded<T> {
        Guarded {
            inner,
            pace: limits.pace(),
            timer: None,
            state,
            tcp: Some(tcp),
            metrics,
            peer,
        }
    }

    /// The write is blocked: fails once the deadline passed.
    fn check_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let deadline = self.pace.waiting();
        let timer = match &mut self.timer {
            Some(t) => {
                if t.deadline() != deadline {
                    t.as_mut().reset(deadline);
                }
                t
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        if timer.as_mut().poll(cx).is_ready() {
            self.state.count_write_timeout(&self.metrics, self.peer);
            self.state.fail();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took too little of the response within server.write_timeout",
            ));
        }
        Ok(())
    }
}

use std::future::Future;

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.pace.wrote(n as u64, n == buf.len());
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                this.check_deadline(cx)?;
                Poll::Pending
            }
            r => r,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                this.pace.wrote(n as u64, n == want);
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                this.check_deadline(cx)?;
                Poll::Pending
            }
            r => r,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => {
                this.check_deadline(cx)?;
                Poll::Pending
            }
            r => r,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.state.failed() {
            // No close_notify: the client must see a broken connection.
            if let Some(fd) = this.tcp.take() {
                reset_on_close(fd);
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<T> Drop for Guarded<T> {
    fn drop(&mut self) {
        if self.state.failed() {
            if let Some(fd) = self.tcp.take() {
                reset_on_close(fd);
            }
        }
    }
}

/// `SO_LINGER` 0: closing the socket sends a reset, not a clean FIN.
pub fn reset_on_close(fd: std::os::fd::RawFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `fd` is the connection's socket, open while its owner (the
    // transport this is called from) lives; the pointer and size describe `l`.
    // Failure only loses the reset.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_is_disarmed_by_enough_progress_or_a_complete_write() {
        let mut p = Pace::new(Duration::from_secs(10), 100);
        p.wrote(50, true);
        assert!(p.armed.is_none(), "not waiting: nothing armed");
        let d = p.waiting();
        assert_eq!(p.waiting(), d, "one deadline while waiting");
        p.wrote(60, false);
        assert!(p.armed.is_some(), "60 < 100 bytes: still armed");
        p.wrote(40, false);
        assert!(p.armed.is_none(), "100 bytes since waiting began");
        p.waiting();
        p.wrote(1, true);
        assert!(p.armed.is_none(), "the socket took everything");
    }

    #[test]
    fn an_address_gets_its_cap_and_ipv6_counts_by_its_64() {
        let p = Arc::new(PerAddress::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..2).map(|_| p.admit(a, 2).unwrap()).collect();
        assert!(p.admit(a, 2).is_none(), "at the cap");
        assert!(p.admit("10.0.0.2".parse().unwrap(), 2).is_some());
        assert!(
            p.admit("::ffff:10.0.0.1".parse().unwrap(), 2).is_none(),
            "mapped IPv4 is the same address"
        );
        drop(held);
        assert!(p.0.lock().is_empty(), "ended connections are forgotten");
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let _one = p.admit(v6("2001:db8::1"), 1).unwrap();
        assert!(p.admit(v6("2001:db8::ffff:2"), 1).is_none(), "same /64");
        assert!(p.admit(v6("2001:db8:0:1::1"), 1).is_some(), "another /64");
    }

    #[test]
    fn defaults_ask_for_a_kibibyte_a_second() {
        let l = Limits::default();
        assert_eq!(l.min_progress(), 60 * 1024);
    }
}
