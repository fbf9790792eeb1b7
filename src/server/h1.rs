//! HTTP/1.1 for plain-text connections, so that blob bytes go from the page
//! cache to the socket with `sendfile(2)`: no copy through user space, no
//! buffer per client. On loopback and fast links this halves the CPU per GiB
//! served compared with reading into buffers (benches/compare.py measures it),
//! and 50 clients cost no more memory than one.
//!
//! hyper serves everything else (TLS, and HTTP/2 with prior knowledge: a
//! connection that opens with the HTTP/2 preface is handed to it with the bytes
//! already read). The request is parsed with `httparse` (what hyper uses) and
//! handled by the same [`handler::handle`] as hyper's requests, so routing,
//! errors and the access log are one code path.
//!
//! Deliberately small: wharf serves GET and HEAD without request bodies. A
//! request that carries a body gets its answer (an error: pushes go upstream)
//! and the connection is closed rather than the body read. Responses always
//! know their length except a fill whose size the upstream did not announce,
//! which goes out chunked (HTTP/1.0 clients are answered only once such a
//! fill is verified, with its length: see `handler::blob`), so a cut
//! transfer is always visible to the client.
//!
//! Strict where leniency lets requests be smuggled past a proxy in front
//! (RFC 9112 §6.3, §2.2): differing `Content-Length` values, `Content-Length`
//! with `Transfer-Encoding`, and bare LF line endings are a 400 and the
//! connection closes. Every phase has a deadline ([`super::limits`]): the
//! idle wait, the request head or HTTP/2 preface (`header_timeout` from its
//! first byte; a new connection's first one from the accept), and every
//! write (the client must keep taking bytes).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::time::SystemTime;

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::access::ClientInfo;
use crate::app::App;

use super::body::{Body, Meter, Source, SourceRange};
use super::connection::Shared;
use super::handler;
use super::limits::{reset_on_close, Dropped, Pace};

/// A request head larger than this is refused (431).
pub const MAX_HEAD: usize = 64 * 1024;
pub const MAX_HEADERS: usize = 100;
/// Bytes per `sendfile` call: the socket buffer takes less anyway; the cap
/// keeps one transfer from holding a worker thread for long.
const SENDFILE_MAX: usize = 4 << 20;
/// Readahead window asked for ahead of `sendfile`, so a blob not in the page
/// cache is read from disk by the kernel in the background instead of
/// stalling the worker thread inside `sendfile`.
const READAHEAD: u64 = 16 << 20;
/// Files up to this size are sent corked (see `respond`).
const CORK_MAX: u64 = 8 << 20;
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What to do with the connection after a request.
enum Next {
    KeepAlive,
    Close,
}

/// Serves one plain-text connection until the client closes it, an error, a
/// deadline, or shutdown (between requests only: a response in flight
/// completes). Returns the connection if the client speaks HTTP/2: the
/// caller hands it to hyper together with the bytes already read.
pub async fn serve(
    mut stream: TcpStream,
    shared: &Shared,
    client: ClientInfo,
) -> io::Result<Option<(TcpStream, BytesMut)>> {
    let (app, limits, metrics) = (&*shared.app, &*shared.limits, &shared.metrics);
    let mut shutdown = shared.stopped.clone();
    let peer = client.addr;
    let mut pace = limits.pace();
    let mut buf = BytesMut::with_capacity(8 * 1024);
    // A new connection's first request (or preface) has `header_timeout`
    // from the accept, not from its first byte: a connection that never
    // sends one is not idle keep-alive, and must not hold a slot for the
    // idle timeout.
    let mut first = Some(Instant::now() + limits.header_timeout);
    loop {
        // Wait for the next request's first byte (or the end).
        if buf.is_empty() {
            let (wait, why) = match first {
                Some(d) => (d, Dropped::HeaderTimeout),
                None => (Instant::now() + limits.idle_timeout, Dropped::IdleTimeout),
            };
            let read = tokio::select! {
                r = tokio::time::timeout_at(wait, stream.read_buf(&mut buf)) => r,
                _ = shutdown.wait_for(|s| *s) => return Ok(None),
            };
            match read {
                Err(_) => {
                    metrics.drop_conn(why, peer);
                    return Ok(None);
                }
                Ok(Ok(0)) => return Ok(None),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
            }
        }
        // From the first byte, the head (or HTTP/2 preface) has
        // `header_timeout` to arrive whole.
        let deadline = first
            .take()
            .unwrap_or_else(|| Instant::now() + limits.header_timeout);
        let head = tokio::time::timeout_at(deadline, async {
            if HTTP2_PREFACE.starts_with(&buf[..buf.len().min(HTTP2_PREFACE.len())]) {
                // Possibly HTTP/2 with prior knowledge: read the whole
                // preface before deciding.
                while buf.len() < HTTP2_PREFACE.len() && HTTP2_PREFACE.starts_with(&buf) {
                    if stream.read_buf(&mut buf).await? == 0 {
                        return Ok(Head::Closed);
                    }
                }
                if buf.starts_with(HTTP2_PREFACE) {
                    return Ok(Head::Http2);
                }
            }
            read_head(&mut stream, &mut buf).await
        })
        .await;
        let head = match head {
            Err(_) => {
                // Too slow: drop it, as hyper would.
                metrics.drop_conn(Dropped::HeaderTimeout, peer);
                return Ok(None);
            }
            Ok(r) => r?,
        };
        let (req, head_len) = match head {
            Head::Closed => return Ok(None),
            Head::Http2 => return Ok(Some((stream, buf))),
            Head::Request(req, len) => (req, len),
            Head::Bad(status) => {
                if status == http::StatusCode::BAD_REQUEST {
                    metrics.drop_conn(Dropped::Malformed, peer);
                }
                let resp = Response::builder()
                    .status(status)
                    .header(header::CONTENT_LENGTH, 0)
                    .header(header::CONNECTION, "close")
                    .body(())
                    .expect("static");
                write_head(&stream, Version::HTTP_11, &resp, None, &mut pace).await?;
                let _ = stream.shutdown().await;
                return Ok(None);
            }
        };
        buf.advance(head_len);
        match respond(&stream, app, &client, *req, &mut pace).await {
            Ok(Next::KeepAlive) => {}
            Ok(Next::Close) => {
                let _ = stream.shutdown().await;
                return Ok(None);
            }
            Err(e) => {
                if e.kind() == io::ErrorKind::TimedOut {
                    metrics.drop_conn(Dropped::WriteTimeout, peer);
                }
                // A cut response: a reset, never a clean end.
                reset_on_close(stream.as_raw_fd());
                return Err(e);
            }
        }
        if *shutdown.borrow() {
            return Ok(None);
        }
    }
}

/// What arrived at the start of a request.
pub enum Head {
    /// The request and the length of its head in the buffer.
    Request(Box<Request<()>>, usize),
    Bad(http::StatusCode),
    /// The HTTP/2 preface (prior knowledge).
    Http2,
    /// The client closed the connection.
    Closed,
}

/// Reads until `buf` holds a complete request head.
async fn read_head(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<Head> {
    let mut scan = HeadScan::default();
    loop {
        if let Some(head) = scan.next(buf) {
            return Ok(head);
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(Head::Closed);
        }
    }
}

/// Decides when a growing buffer is worth parsing: once it holds the end of
/// a head (a blank line), a bare LF, or `MAX_HEAD` bytes. Each byte is
/// looked at once; parsing the whole buffer again after every read made a
/// head sent a byte per segment cost quadratic CPU (64 KiB: ~2·10⁹ bytes
/// scanned, seconds of a core per connection).
#[derive(Default)]
struct HeadScan {
    /// Bytes before this hold neither a bare LF nor the end of the head.
    checked: usize,
    /// Times the buffer was parsed.
    parsed: usize,
}

impl HeadScan {
    fn next(&mut self, buf: &[u8]) -> Option<Head> {
        let from = self.checked;
        self.checked = buf.len();
        // Only line feeds matter: each new one is either bare (refused) or
        // ends a line, perhaps the blank one that ends the head.
        let ended = buf.len() >= MAX_HEAD
            || memchr::memchr_iter(b'\n', &buf[from..]).any(|i| {
                let i = from + i;
                i == 0 || buf[i - 1] != b'\r' || (i >= 3 && &buf[i - 3..i] == b"\r\n\r")
            });
        if !ended {
            return None;
        }
        self.parsed += 1;
        parse_head(buf)
    }
}

/// A complete head, a refusal, or `None`: more bytes needed.
pub fn parse_head(buf: &[u8]) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut headers);
    match r.parse(buf) {
        // httparse accepts a bare LF as a line ending; a proxy in front may
        // not, and two parsers disagreeing on where a head ends is how
        // requests are smuggled (RFC 9112 §2.2 allows refusing it).
        Ok(httparse::Status::Complete(len)) if bare_lf(&buf[..len]) => {
            Some(Head::Bad(http::StatusCode::BAD_REQUEST))
        }
        Ok(httparse::Status::Complete(len)) => Some(to_request(&r, len)),
        Ok(httparse::Status::Partial) if bare_lf(buf) => {
            Some(Head::Bad(http::StatusCode::BAD_REQUEST))
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            Some(Head::Bad(http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE))
        }
        Ok(httparse::Status::Partial) => None,
        Err(httparse::Error::TooManyHeaders) => {
            Some(Head::Bad(http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE))
        }
        Err(_) => Some(Head::Bad(http::StatusCode::BAD_REQUEST)),
    }
}

/// A LF not preceded by CR.
fn bare_lf(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r')
}

/// The request's body length is ambiguous (RFC 9112 §6.3): `Content-Length`
/// values that differ or are not a number, or `Content-Length` beside
/// `Transfer-Encoding`. Repeated identical values are one length.
fn ambiguous_length(r: &httparse::Request<'_, '_>) -> bool {
    let mut length: Option<&[u8]> = None;
    let mut chunked = false;
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = h.value.trim_ascii();
            if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
                return true;
            }
            match length {
                Some(l) if l != v => return true,
                _ => length = Some(v),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        }
    }
    chunked && length.is_some()
}

fn to_request(r: &httparse::Request<'_, '_>, len: usize) -> Head {
    if ambiguous_length(r) {
        return Head::Bad(http::StatusCode::BAD_REQUEST);
    }
    let version = match r.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let (Some(method), Some(path)) = (r.method, r.path) else {
        return Head::Bad(http::StatusCode::BAD_REQUEST);
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Head::Bad(http::StatusCode::BAD_REQUEST);
    };
    let mut b = Request::builder().method(method).uri(path).version(version);
    for h in r.headers.iter() {
        b = b.header(h.name, h.value);
    }
    match b.body(()) {
        Ok(req) => Head::Request(Box::new(req), len),
        Err(_) => Head::Bad(http::StatusCode::BAD_REQUEST),
    }
}

fn has_token(req: &Request<()>, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

async fn respond(
    stream: &TcpStream,
    app: &App,
    client: &ClientInfo,
    mut req: Request<()>,
    pace: &mut Pace,
) -> io::Result<Next> {
    req.extensions_mut().insert(client.clone());
    let version = req.version();
    let head = req.method() == Method::HEAD;
    // A body we will not read would be taken for the next request.
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let mut keep_alive = !has_body
        && match version {
            Version::HTTP_10 => has_token(&req, header::CONNECTION, "keep-alive"),
            _ => !has_token(&req, header::CONNECTION, "close"),
        };
    let resp = handler::handle(app, req).await;
    let (mut parts, body) = resp.into_parts();
    let len = body.len();
    let chunked = !head && len.is_none() && version == Version::HTTP_11;
    if !head && len.is_none() && !chunked {
        keep_alive = false; // HTTP/1.0: the end of the connection ends the body
    }
    let h = &mut parts.headers;
    if let Some(l) = len {
        if !h.contains_key(header::CONTENT_LENGTH) {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(l));
        }
    }
    if chunked {
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    if !keep_alive {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    } else if version == Version::HTTP_10 {
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    }
    let resp = Response::from_parts(parts, ());
    let next = if keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    };
    match body {
        _ if head => write_head(stream, version, &resp, None, pace).await?,
        Body::Bytes(b) => write_head(stream, version, &resp, b.as_deref(), pace).await?,
        Body::Source(Some(range)) => {
            // A small complete file goes out corked, so the head and the body
            // share segments (nginx's `tcp_nopush`): +15% on 1 MiB blobs in
            // an A/B on this machine. Not for large files, where it cost 5-10%
            // (the cork holds each sendfile's last partial segment), and
            // never for a fill, whose bytes trickle in: the kernel would hold
            // a partial segment for up to 200 ms.
            let cork =
                matches!(range.source, Source::File(_)) && range.len.is_some_and(|l| l <= CORK_MAX);
            if cork {
                set_cork(stream, true);
            }
            write_head(stream, version, &resp, None, pace).await?;
            // An error here means the client must see a cut transfer: returning
            // it drops the connection before the announced length or the
            // chunked terminator.
            send_range(stream, range, chunked, pace).await?;
            if cork {
                set_cork(stream, false); // pushes the last partial segment
            }
        }
        Body::Source(None) => write_head(stream, version, &resp, None, pace).await?,
        Body::Streaming(_) => unreachable!("bodies are started only by hyper"),
    }
    Ok(next)
}

/// Writes the status line and headers, and a small body in the same write.
async fn write_head(
    stream: &TcpStream,
    version: Version,
    resp: &Response<()>,
    body: Option<&[u8]>,
    pace: &mut Pace,
) -> io::Result<()> {
    let mut out = Vec::with_capacity(256 + body.map_or(0, |b| b.len()));
    let v = if version == Version::HTTP_10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    let s = resp.status();
    out.extend_from_slice(
        format!(
            "{v} {} {}\r\n",
            s.as_u16(),
            s.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    for (name, value) in resp.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !resp.headers().contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if let Some(b) = body {
        out.extend_from_slice(b);
    }
    write_all(stream, &out, pace).await
}

/// `write_all` within the write deadline.
async fn write_all(stream: &TcpStream, mut buf: &[u8], pace: &mut Pace) -> io::Result<()> {
    while !buf.is_empty() {
        match stream.try_write(buf) {
            Ok(n) => {
                pace.wrote(n as u64, n == buf.len());
                buf = &buf[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => writable(stream, pace).await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Waits until the socket takes bytes, or fails (`TimedOut`) once the
/// client has taken too little for too long.
async fn writable(stream: &TcpStream, pace: &mut Pace) -> io::Result<()> {
    match tokio::time::timeout_at(pace.waiting(), stream.writable()).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client took too little of the response within server.write_timeout",
        )),
    }
}

async fn send_range(
    stream: &TcpStream,
    range: SourceRange,
    chunked: bool,
    pace: &mut Pace,
) -> io::Result<()> {
    let SourceRange {
        source,
        start,
        len,
        mut meter,
    } = range;
    match source {
        Source::File(file) => {
            let len = match len {
                Some(l) => l,
                None => file.metadata()?.len().saturating_sub(start),
            };
            send_file(stream, &file, start, len, &mut meter, pace).await?;
            meter.finish();
            Ok(())
        }
        Source::Fill(mut reader) => {
            let end = len.map(|l| start + l);
            let mut pos = start;
            loop {
                if end.is_some_and(|e| pos >= e) {
                    break;
                }
                let mut n = match reader.readable(pos).await {
                    Ok(n) => n,
                    Err(e) => {
                        meter.fail();
                        return Err(e);
                    }
                };
                if n == 0 {
                    if end.is_some() {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "content ended before its length",
                        ));
                    }
                    break;
                }
                if let Some(e) = end {
                    n = n.min(e - pos);
                }
                if chunked {
                    write_all(stream, format!("{n:x}\r\n").as_bytes(), pace).await?;
                }
                send_file(stream, reader.file(), pos, n, &mut meter, pace).await?;
                if chunked {
                    write_all(stream, b"\r\n", pace).await?;
                }
                pos += n;
            }
            if chunked {
                write_all(stream, b"0\r\n\r\n", pace).await?;
            }
            meter.finish();
            Ok(())
        }
    }
}

/// Sends `len` bytes of `file` from `offset` with `sendfile(2)`, waiting for
/// the socket as needed.
async fn send_file(
    stream: &TcpStream,
    file: &File,
    offset: u64,
    len: u64,
    meter: &mut Meter,
    pace: &mut Pace,
) -> io::Result<()> {
    let (mut off, end) = (offset, offset + len);
    let mut advised = offset;
    while off < end {
        if off >= advised {
            advised = (off + READAHEAD).min(end);
            readahead(file, off, advised - off).await;
        }
        tokio::task::consume_budget().await;
        let want = ((end - off) as usize).min(SENDFILE_MAX);
        // Tried first: tokio remembers the socket is writable until a write
        // would block, and only then is the deadline (and the clock) needed.
        match stream.try_io(Interest::WRITABLE, || sendfile(stream, file, off, want)) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shorter than its recorded size",
                ))
            }
            Ok(n) => {
                off += n as u64;
                meter.add(n as u64);
                pace.wrote(n as u64, n == want);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => writable(stream, pace).await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn set_cork(stream: &TcpStream, on: bool) {
    let v: libc::c_int = on.into();
    // SAFETY: a valid socket descriptor and a pointer to a c_int of the size
    // given. Failure only loses the optimisation.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn sendfile(stream: &TcpStream, file: &File, off: u64, count: usize) -> io::Result<usize> {
    let mut o = off as libc::off_t;
    // SAFETY: both descriptors are open for the duration of the call (borrowed
    // from owners that outlive it) and `o` is a valid, exclusive pointer.
    let n = unsafe { libc::sendfile(stream.as_raw_fd(), file.as_raw_fd(), &mut o, count) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Starts the kernel's readahead for a window. Off the worker thread: on a
/// cold disk even starting the I/O can block.
async fn readahead(file: &File, off: u64, len: u64) {
    let Ok(f) = file.try_clone() else { return };
    let task = tokio::task::spawn_blocking(move || {
        // SAFETY: plain syscall on a descriptor owned by `f`.
        unsafe {
            libc::posix_fadvise(
                f.as_raw_fd(),
                off as libc::off_t,
                len as libc::off_t,
                libc::POSIX_FADV_WILLNEED,
            )
        };
    });
    // Only the first window is waited for; later ones run ahead on their own.
    if off == 0 {
        let _ = task.await;
    }
}

/// A connection whose first bytes were already read: they are replayed before
/// the socket's, so hyper sees the whole stream.
pub struct Rewind {
    prefix: BytesMut,
    inner: TcpStream,
}

impl Rewind {
    pub fn new(inner: TcpStream, prefix: BytesMut) -> Self {
        Rewind { prefix, inner }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Rewind {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The head parser's refusals (RFC 9112 §6.3, §2.2): what a proxy in front
/// could read differently is never interpreted.
#[cfg(test)]
mod tests {
    use super::*;

    /// `Some(status)` for a refused head, `None` for a request.
    fn refused(head: &str) -> Option<u16> {
        match parse_head(head.as_bytes()) {
            Some(Head::Bad(s)) => Some(s.as_u16()),
            Some(Head::Request(..)) => None,
            _ => panic!("incomplete: {head:?}"),
        }
    }

    #[test]
    fn ambiguous_lengths_and_bare_line_feeds_are_refused() {
        let ok = "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(refused(ok), None);
        for (head, why) in [
            (
                "GET /v2/ HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 61\r\n\r\n",
                "differing lengths",
            ),
            (
                "GET /v2/ HTTP/1.1\r\nContent-Length: 0, 61\r\n\r\n",
                "a list",
            ),
            (
                "GET /v2/ HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
                "not digits",
            ),
            (
                "GET /v2/ HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                "both",
            ),
            ("GET /v2/ HTTP/1.1\nHost: x\n\n", "bare LF"),
            ("GET /v2/ HTTP/1.1\r\nHost: x\n\r\n", "one bare LF"),
        ] {
            assert_eq!(refused(head), Some(400), "{why}");
        }
        assert_eq!(
            refused("GET /v2/ HTTP/1.1\r\nContent-Length: 0\r\ncontent-length: 0\r\n\r\n"),
            None,
            "repeated identical values are one length"
        );
        // What httparse refuses for us (pinned: a lenient upgrade would
        // reopen these): obs-fold continuation lines, whitespace before the
        // colon, control bytes in a value, a space in the target.
        for (head, why) in [
            (
                "GET /v2/ HTTP/1.1\r\nX-A: 1\r\n continued\r\n\r\n",
                "obs-fold",
            ),
            (
                "GET /v2/ HTTP/1.1\r\nContent-Length : 5\r\n\r\n",
                "space before colon",
            ),
            ("GET /v2/ HTTP/1.1\r\nX-A: a\0b\r\n\r\n", "NUL in a value"),
            (
                "GET /v2/ x HTTP/1.1\r\nHost: x\r\n\r\n",
                "space in the target",
            ),
            ("GET /v2/ HTTP/1.1\r\n\tHost: x\r\n\r\n", "leading tab"),
        ] {
            assert_eq!(refused(head), Some(400), "{why}");
        }
        let mut scan = HeadScan::default();
        assert!(
            matches!(scan.next(b"GET /v2/ HTTP/1.1\nHo"), Some(Head::Bad(_))),
            "the scan passes a bare LF on to be refused"
        );
        assert!(
            matches!(parse_head(b"GET /v2/ HTTP/1.1\nHo"), Some(Head::Bad(_))),
            "a bare LF is refused before the head is complete"
        );
    }

    /// Regression: a head dribbled a byte per segment was parsed again after
    /// every read (quadratic CPU); now it is parsed once it can be complete.
    #[test]
    fn a_dribbled_head_is_parsed_once() {
        let mut head = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', 32 << 10));
        head.extend_from_slice(b"\r\n\r\n");
        let mut scan = HeadScan::default();
        for n in 1..head.len() {
            assert!(scan.next(&head[..n]).is_none(), "incomplete at {n}");
        }
        assert!(matches!(scan.next(&head), Some(Head::Request(..))));
        assert_eq!(scan.parsed, 1, "parsed once, not after every byte");
        // The end of the head split across reads is still found.
        let mut scan = HeadScan::default();
        let end = head.len() - 2;
        assert!(scan.next(&head[..end]).is_none());
        assert!(matches!(scan.next(&head), Some(Head::Request(..))));
        // Too large without an end: refused at MAX_HEAD.
        let big = vec![b'a'; MAX_HEAD];
        let mut scan = HeadScan::default();
        assert!(scan.next(&big[..MAX_HEAD - 1]).is_none());
        assert!(matches!(scan.next(&big), Some(Head::Bad(_))));
    }
}
