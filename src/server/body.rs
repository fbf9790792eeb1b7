//! Response bodies: bytes in memory, or a range of a blob [`Source`] (a cached
//! file, or a fill in progress) that is not read until the body is sent.
//!
//! How a source goes out depends on the connection. Plain HTTP/1.1 ([`super::h1`])
//! hands it to the kernel with `sendfile(2)`: no copy through user space, no
//! buffer. TLS and HTTP/2 connections go through hyper: a small async task per
//! body reads chunks with positional reads and hands them over through a
//! bounded channel of chunks taken from a shared [`BufferBudget`], so a slow
//! client holds a few chunks and never a whole blob, and many clients together
//! stay within a fixed amount of memory.
//!
//! A slow or stalled client costs no thread: the task waits on the channel
//! like any other future. How many such tasks run at once is bounded too
//! ([`super::limits::BodySlot`]: one per connection, plus `max_connections`
//! shared by HTTP/2's extra streams), so the chunks and hyper's send buffers
//! stay within a fixed amount of memory however many streams are opened. A chunk is read on the worker thread when the page
//! cache has it (`preadv2` with `RWF_NOWAIT`, which never waits for the
//! disk), and on a blocking thread only for the read itself when it does not;
//! the thread is released before the chunk is handed over. Per chunk the hot
//! path does one `preadv2`, one channel send (a timer only when the channel
//! is full: the client is behind), and takes and returns a pooled buffer (one
//! short lock each, as before); the write deadline of [`super::limits`] ends
//! a connection whose client stops reading, and a chunk the client does not
//! take within `write_timeout` (an HTTP/2 stream granted no window) ends it
//! too.
//!
//! If the source fails midway (a fill whose digest did not match, an upstream
//! that broke off), the body yields an error and the connection is closed before
//! `Content-Length` is reached: the client sees a failed transfer, never a
//! complete wrong one.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::cache::FillReader;

use super::limits::ConnState;

/// Where blob bytes come from.
pub enum Source {
    /// A verified blob on disk.
    File(File),
    /// A fill: bytes appear as the upstream sends them; the last one only once
    /// the digest matched.
    Fill(FillReader),
}

impl Source {
    /// Positional read into `buf[..want]`; waits for a fill's bytes. `Ok(0)`
    /// only at the end of the content. The buffer comes back whatever happens.
    async fn read_at(
        &mut self,
        pos: u64,
        buf: Vec<u8>,
        want: usize,
    ) -> (Vec<u8>, io::Result<usize>) {
        let (file, want) = match self {
            Source::File(f) => (&*f, want),
            Source::Fill(r) => match r.readable(pos).await {
                Ok(0) => return (buf, Ok(0)),
                Ok(n) => (r.file(), want.min(n.try_into().unwrap_or(usize::MAX))),
                Err(e) => return (buf, Err(e)),
            },
        };
        read_file_at(file, pos, buf, want).await
    }
}

/// Reads from the page cache on this thread when it has the bytes, else on
/// a blocking thread for just this read.
async fn read_file_at(
    file: &File,
    pos: u64,
    mut buf: Vec<u8>,
    want: usize,
) -> (Vec<u8>, io::Result<usize>) {
    match read_cached(file, pos, &mut buf[..want]) {
        Ok(n) => return (buf, Ok(n)),
        // Not cached (EAGAIN), or a kernel or filesystem without RWF_NOWAIT.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EAGAIN | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
            ) => {}
        Err(e) => return (buf, Err(e)),
    }
    let file = match file.try_clone() {
        Ok(f) => f,
        Err(e) => return (buf, Err(e)),
    };
    match tokio::task::spawn_blocking(move || {
        let r = FileExt::read_at(&file, &mut buf[..want], pos);
        (buf, r)
    })
    .await
    {
        Ok(r) => r,
        Err(e) => (Vec::new(), Err(io::Error::other(e))),
    }
}

/// `preadv2(RWF_NOWAIT)`: the bytes the page cache holds, or `EAGAIN`
/// rather than waiting for the disk.
fn read_cached(file: &File, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: one iovec describing `buf`, valid and exclusively borrowed for
    // the call; `file` is open.
    let n = unsafe {
        libc::preadv2(
            file.as_raw_fd(),
            &iov,
            1,
            pos as libc::off_t,
            libc::RWF_NOWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A range of a source, not yet read.
pub struct SourceRange {
    pub source: Source,
    pub start: u64,
    /// `None`: to the end of the content (a fill whose size the upstream did
    /// not announce).
    pub len: Option<u64>,
    /// Counts what was sent, and writes the access log line when dropped.
    pub meter: Meter,
}

/// What a streamed body has sent: counted into `wharf_served_bytes_total` as
/// it goes, and reported once by the access log line when the transfer ends
/// (so the line has the real byte count and duration of a 512 MiB layer).
#[derive(Default)]
pub struct Meter {
    counter: Option<prometheus::IntCounter>,
    sent: u64,
    /// The source reached its end: the transfer is complete if every byte
    /// went out.
    finished: bool,
    line: Option<super::observe::AccessLine>,
    /// Told when the source fails, so the connection ends without a clean
    /// close.
    conn: Option<Arc<ConnState>>,
}

impl Meter {
    pub fn new(
        counter: prometheus::IntCounter,
        line: super::observe::AccessLine,
        conn: Option<Arc<ConnState>>,
    ) -> Meter {
        Meter {
            counter: Some(counter),
            sent: 0,
            finished: false,
            line: Some(line),
            conn,
        }
    }

    /// The whole content went out.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// The source failed midway (a fill's digest or upstream): the client
    /// must see a failed transfer.
    pub fn fail(&mut self) {
        if let Some(c) = &self.conn {
            c.fail();
        }
    }

    pub fn add(&mut self, n: u64) {
        self.sent += n;
        if let Some(c) = &self.counter {
            c.inc_by(n);
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        if let Some(line) = self.line.take() {
            line.emit(self.sent, self.finished);
        }
    }
}

pub enum Body {
    Bytes(Option<Bytes>),
    Source(Option<SourceRange>),
    Streaming(ChannelBody),
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Body::Bytes(Some(b.into()))
}

/// A body of whatever arrives on `rx`, until it closes (an error ends the
/// response without its terminating chunk, so the reader sees it failed).
pub fn channel(rx: mpsc::Receiver<io::Result<Bytes>>) -> Body {
    Body::Streaming(ChannelBody {
        rx,
        remaining: None,
    })
}

pub fn empty() -> Body {
    Body::Bytes(None)
}

/// `len` bytes (or to the end, if `None`) of `source` from `start`.
pub fn stream(source: Source, start: u64, len: Option<u64>) -> Body {
    Body::Source(Some(SourceRange {
        source,
        start,
        len,
        meter: Meter::default(),
    }))
}

/// All of `source` (`len` bytes, or to its end) on a connection of its own
/// (`conn`): a chunk the reader does not take within the connection's write
/// timeout, or a source that fails, ends the connection.
pub fn stream_on(source: Source, len: Option<u64>, conn: Arc<ConnState>) -> Body {
    Body::Source(Some(SourceRange {
        source,
        start: 0,
        len,
        meter: Meter {
            counter: None,
            sent: 0,
            finished: false,
            line: None,
            conn: Some(conn),
        },
    }))
}

impl Body {
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// The body's length, if known before sending it.
    pub fn len(&self) -> Option<u64> {
        match self {
            Body::Bytes(b) => Some(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Source(Some(s)) => s.len,
            Body::Source(None) => Some(0),
            Body::Streaming(c) => c.remaining,
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        match this {
            Body::Bytes(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Source(range) => match range.take() {
                Some(r) => {
                    *this = Body::Streaming(spawn_reader(r));
                    Pin::new(this).poll_frame(cx)
                }
                None => Poll::Ready(None),
            },
            Body::Streaming(c) => c.poll(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Bytes(None) | Body::Source(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self.len() {
            Some(l) => SizeHint::with_exact(l),
            None => SizeHint::default(),
        }
    }
}

/// Memory for blob chunks in flight to hyper, shared by all streams. Each stream
/// reads with a chunk size that shrinks as more streams share the budget, so 50
/// clients of a cold blob cost no more memory than 5, and one client alone gets
/// large chunks (few wake-ups per MiB). Chunk sizes are powers of two between
/// [`MIN_CHUNK`] and [`MAX_CHUNK`], and returned chunks are kept per size for
/// reuse, as long as they and what the running streams may hold stay within
/// [`BUDGET`]: a fresh zeroed allocation per chunk cost 8 % of the CPU of 16
/// streams (the memset and its page faults).
struct BufferBudget {
    streams: AtomicUsize,
    /// Chunks returned by finished streams, reused instead of freed: repeated
    /// large allocations on blocking threads would grow glibc's arenas.
    pool: Mutex<Pool>,
}

/// Returned chunks by size class (32, 64, 128, 256 KiB) and their bytes.
struct Pool {
    by_size: [Vec<Vec<u8>>; CLASSES],
    bytes: usize,
}

impl Pool {
    const fn new() -> Pool {
        Pool {
            by_size: [const { Vec::new() }; CLASSES],
            bytes: 0,
        }
    }
}

/// All streams' chunks together stay about within this.
const BUDGET: usize = 8 << 20;
const MAX_CHUNK: usize = 256 << 10;
const MIN_CHUNK: usize = 32 << 10;
/// Size classes from `MIN_CHUNK` to `MAX_CHUNK`, doubling.
const CLASSES: usize = 4;
/// Chunks one stream can have outstanding: one in the channel, one being
/// written by hyper, one being read.
const DEPTH: usize = 1;
const PER_STREAM: usize = DEPTH + 2;

static BUDGET_STATE: BufferBudget = BufferBudget::new();

/// The size class of a chunk of `size` bytes, if it is one.
fn class_of(size: usize) -> Option<usize> {
    let c = (size / MIN_CHUNK).checked_ilog2()? as usize;
    (size.is_power_of_two() && c < CLASSES && size >= MIN_CHUNK).then_some(c)
}

impl BufferBudget {
    const fn new() -> BufferBudget {
        BufferBudget {
            streams: AtomicUsize::new(0),
            pool: Mutex::new(Pool::new()),
        }
    }

    fn chunk_size(&self) -> usize {
        let n = self.streams.load(Ordering::Relaxed).max(1);
        let share = (BUDGET / (n * PER_STREAM)).clamp(MIN_CHUNK, MAX_CHUNK);
        // Down to a power of two: a size class.
        1 << share.ilog2()
    }

    fn take(&self, size: usize) -> Vec<u8> {
        if let Some(c) = class_of(size) {
            let mut pool = self.pool.lock();
            // Its own size, or else a larger one (a read fills what it
            // wants of it, and it goes back to its own class).
            if let Some(b) = pool.by_size[c..].iter_mut().find_map(|v| v.pop()) {
                pool.bytes -= b.len();
                return b;
            }
        }
        vec![0; size]
    }

    fn give_back(&self, buf: Vec<u8>) {
        let Some(c) = class_of(buf.len()) else {
            return;
        };
        // What the running streams may hold (about: hyper's send buffers
        // may hold more), and the pool, together within the budget.
        let held = self.streams.load(Ordering::Relaxed) * PER_STREAM * self.chunk_size();
        let room = BUDGET.saturating_sub(held);
        if buf.len() > room {
            return;
        }
        let mut pool = self.pool.lock();
        // Make room by freeing chunks of the other sizes first: a chunk
        // size the streams use now is worth more than an old one.
        let mut freed = Vec::new();
        for other in (0..CLASSES).filter(|&o| o != c) {
            while pool.bytes + buf.len() > room {
                let Some(b) = pool.by_size[other].pop() else {
                    break;
                };
                pool.bytes -= b.len();
                freed.push(b);
            }
        }
        if pool.bytes + buf.len() <= room {
            pool.bytes += buf.len();
            pool.by_size[c].push(buf);
        }
        drop(pool);
        drop(freed);
    }
}

/// A chunk that returns its buffer to the pool when hyper is done with it.
struct Chunk {
    buf: Vec<u8>,
    len: usize,
    _slot: Option<Arc<super::limits::BodySlot>>,
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        BUDGET_STATE.give_back(std::mem::take(&mut self.buf));
    }
}

struct StreamCount;

impl StreamCount {
    fn new() -> StreamCount {
        BUDGET_STATE.streams.fetch_add(1, Ordering::Relaxed);
        StreamCount
    }
}

impl Drop for StreamCount {
    fn drop(&mut self) {
        BUDGET_STATE.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

fn spawn_reader(r: SourceRange) -> ChannelBody {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(DEPTH);
    let SourceRange {
        mut source,
        start,
        len,
        mut meter,
    } = r;
    tokio::spawn(async move {
        // Over hyper, the number of bodies streaming at once is bounded
        // (limits::BodySlot); a body that cannot get a slot within the
        // write deadline fails.
        // Each chunk keeps the slot too: hyper's send buffer may hold a
        // stream's last chunks after this task ended.
        let slot = match meter.conn.clone() {
            Some(c) => match c.body_slot().await {
                Some(slot) => Some(Arc::new(slot)),
                None => {
                    meter.fail();
                    let _ = tx.try_send(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no body slot free within server.write_timeout",
                    )));
                    return;
                }
            },
            None => None,
        };
        let _counted = StreamCount::new();
        let mut pos = start;
        let end = len.map(|l| start + l);
        loop {
            let chunk = BUDGET_STATE.chunk_size();
            let want = match end {
                Some(e) if pos >= e => {
                    meter.finish();
                    break;
                }
                Some(e) => chunk.min((e - pos) as usize),
                None => chunk,
            };
            let (buf, read) = source.read_at(pos, BUDGET_STATE.take(chunk), want).await;
            let item = match read {
                Ok(0) if end.is_some() => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "content ended before its length",
                )),
                Ok(0) => {
                    meter.finish();
                    break;
                }
                Ok(n) => {
                    pos += n as u64;
                    meter.add(n as u64);
                    Ok(Bytes::from_owner(Chunk {
                        buf,
                        len: n,
                        _slot: slot.clone(),
                    }))
                }
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            if failed {
                meter.fail();
            }
            // The client must take each chunk within the write deadline
            // (HTTP/2 flow control can stall a stream with nothing blocked
            // on the socket).
            // A free slot takes the chunk at once (no timer, no clock read).
            let sent = match tx.try_send(item) {
                Ok(()) => Ok(Ok(())),
                Err(mpsc::error::TrySendError::Closed(_)) => Ok(Err(())),
                Err(mpsc::error::TrySendError::Full(item)) => {
                    let send = async { tx.send(item).await.map_err(|_| ()) };
                    match meter.conn.as_ref().and_then(|c| c.write_timeout) {
                        Some(t) => tokio::time::timeout(t, send).await,
                        None => Ok(send.await),
                    }
                }
            };
            match sent {
                Ok(Ok(())) if !failed => {}
                // The client went away, or the error is on its way.
                Ok(_) => break,
                Err(_) => {
                    if let Some(c) = &meter.conn {
                        c.stall();
                    }
                    break;
                }
            }
        }
    });
    ChannelBody { rx, remaining: len }
}

pub struct ChannelBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    remaining: Option<u64>,
}

impl ChannelBody {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => {
                if let Some(r) = self.remaining.as_mut() {
                    *r = r.saturating_sub(b.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Keeps the budget arithmetic honest: one stream gets the largest chunks,
/// many share the budget, and the floor holds.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_come_in_four_sizes_and_go_back_to_their_own() {
        let sizes: Vec<Option<usize>> = [16, 32, 48, 64, 128, 256, 512]
            .iter()
            .map(|k| class_of(k << 10))
            .collect();
        assert_eq!(
            sizes,
            [None, Some(0), None, Some(1), Some(2), Some(3), None]
        );
        let b = BufferBudget::new();
        for n in [1, 2, 10, 11, 16, 40, 1000] {
            b.streams.store(n, Ordering::Relaxed);
            let size = b.chunk_size();
            assert!(class_of(size).is_some(), "{n} streams: {size}");
            assert!(size * n * PER_STREAM <= BUDGET || size == MIN_CHUNK);
        }
        // A returned chunk is reused at its own size, or for a smaller one.
        b.streams.store(0, Ordering::Relaxed);
        let mut chunk = b.take(128 << 10);
        chunk[0] = 7;
        b.give_back(chunk);
        let again = b.take(128 << 10);
        assert_eq!((again.len(), again[0]), (128 << 10, 7));
        b.give_back(again);
        assert_eq!(b.take(64 << 10).len(), 128 << 10);
        assert_eq!(b.take(256 << 10).len(), 256 << 10, "never a smaller one");
        assert_eq!(b.pool.lock().bytes, 0);
        // With no stream running, the pool holds at most the budget.
        for _ in 0..(BUDGET / MAX_CHUNK + 8) {
            b.give_back(vec![0; MAX_CHUNK]);
        }
        assert_eq!(b.pool.lock().bytes, BUDGET);
        // Chunks of the size in use push out the others.
        b.give_back(vec![0; 64 << 10]);
        let pool = b.pool.lock();
        assert_eq!(
            (pool.bytes, pool.by_size[1].len()),
            (BUDGET - MAX_CHUNK + (64 << 10), 1)
        );
        drop(pool);
        // Running streams' share comes first: 16 streams of 128 KiB chunks
        // may hold 6 MiB, so the pool keeps at most 2 MiB.
        let b = BufferBudget::new();
        b.streams.store(16, Ordering::Relaxed);
        assert_eq!(b.chunk_size(), 128 << 10);
        for _ in 0..64 {
            b.give_back(vec![0; 128 << 10]);
        }
        assert_eq!(b.pool.lock().bytes, BUDGET - 16 * PER_STREAM * (128 << 10));
    }

    #[test]
    fn chunks_shrink_as_streams_share_the_budget() {
        let b = BufferBudget::new();
        b.streams.store(1, Ordering::Relaxed);
        assert_eq!(b.chunk_size(), MAX_CHUNK);
        b.streams.store(50, Ordering::Relaxed);
        let c = b.chunk_size();
        assert!((MIN_CHUNK..MAX_CHUNK).contains(&c));
        assert!(50 * PER_STREAM * c <= BUDGET);
        b.streams.store(10_000, Ordering::Relaxed);
        assert_eq!(b.chunk_size(), MIN_CHUNK);
    }
}
