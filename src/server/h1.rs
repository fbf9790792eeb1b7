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
//! which goes out chunked (or close-delimited to HTTP/1.0 clients), so a cut
//! transfer is always visible to the client.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime};

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::access::ClientInfo;
use crate::app::App;

use super::body::{Body, Meter, Source, SourceRange};
use super::handler;

/// A request head larger than this is refused (431).
pub const MAX_HEAD: usize = 64 * 1024;
pub const MAX_HEADERS: usize = 100;
/// From the first byte of a request to its complete head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// An idle keep-alive connection is closed after this.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
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

/// Serves one plain-text connection until the client closes it, an error, or
/// `shutdown` (between requests only: a response in flight completes).
/// Returns the connection if the client speaks HTTP/2: the caller hands it to
/// hyper together with the bytes already read.
pub async fn serve(
    mut stream: TcpStream,
    app: &App,
    client: ClientInfo,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<Option<(TcpStream, BytesMut)>> {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    loop {
        // Wait for the next request's first byte (or the end).
        if buf.is_empty() {
            let read = tokio::select! {
                r = tokio::time::timeout(IDLE_TIMEOUT, stream.read_buf(&mut buf)) => r,
                _ = shutdown.wait_for(|s| *s) => return Ok(None),
            };
            match read {
                Err(_) | Ok(Ok(0)) => return Ok(None),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
            }
        }
        if HTTP2_PREFACE.starts_with(&buf[..buf.len().min(HTTP2_PREFACE.len())]) {
            // Possibly HTTP/2 with prior knowledge: read the whole preface
            // before deciding.
            while buf.len() < HTTP2_PREFACE.len() && HTTP2_PREFACE.starts_with(&buf) {
                if stream.read_buf(&mut buf).await? == 0 {
                    return Ok(None);
                }
            }
            if buf.starts_with(HTTP2_PREFACE) {
                return Ok(Some((stream, buf)));
            }
        }
        let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream, &mut buf)).await
        {
            Err(_) => return Ok(None), // too slow: drop it, as hyper would
            Ok(r) => r?,
        };
        let Some(head) = head else { return Ok(None) };
        let (req, head_len) = match head {
            Parsed::Request(req, len) => (req, len),
            Parsed::Bad(status) => {
                let resp = Response::builder()
                    .status(status)
                    .header(header::CONTENT_LENGTH, 0)
                    .header(header::CONNECTION, "close")
                    .body(())
                    .expect("static");
                write_head(&mut stream, Version::HTTP_11, &resp, None).await?;
                return Ok(None);
            }
        };
        buf.advance(head_len);
        match respond(&mut stream, app, &client, *req).await? {
            Next::KeepAlive => {}
            Next::Close => {
                let _ = stream.shutdown().await;
                return Ok(None);
            }
        }
        if *shutdown.borrow() {
            return Ok(None);
        }
    }
}

pub enum Parsed {
    /// The request and the length of its head in the buffer.
    Request(Box<Request<()>>, usize),
    Bad(http::StatusCode),
}

/// Reads until `buf` holds a complete request head. `None`: the client closed
/// the connection.
async fn read_head(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<Option<Parsed>> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut r = httparse::Request::new(&mut headers);
        match r.parse(buf) {
            Ok(httparse::Status::Complete(len)) => return Ok(Some(to_request(&r, len))),
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Ok(Some(Parsed::Bad(
                    http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                )))
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Ok(Some(Parsed::Bad(
                    http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                )))
            }
            Err(_) => return Ok(Some(Parsed::Bad(http::StatusCode::BAD_REQUEST))),
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

pub fn to_request(r: &httparse::Request<'_, '_>, len: usize) -> Parsed {
    let version = match r.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let (Some(method), Some(path)) = (r.method, r.path) else {
        return Parsed::Bad(http::StatusCode::BAD_REQUEST);
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Bad(http::StatusCode::BAD_REQUEST);
    };
    let mut b = Request::builder().method(method).uri(path).version(version);
    for h in r.headers.iter() {
        b = b.header(h.name, h.value);
    }
    match b.body(()) {
        Ok(req) => Parsed::Request(Box::new(req), len),
        Err(_) => Parsed::Bad(http::StatusCode::BAD_REQUEST),
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
    stream: &mut TcpStream,
    app: &App,
    client: &ClientInfo,
    mut req: Request<()>,
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
        _ if head => write_head(stream, version, &resp, None).await?,
        Body::Bytes(b) => write_head(stream, version, &resp, b.as_deref()).await?,
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
            write_head(stream, version, &resp, None).await?;
            // An error here means the client must see a cut transfer: returning
            // it drops the connection before the announced length or the
            // chunked terminator.
            send_range(stream, range, chunked).await?;
            if cork {
                set_cork(stream, false); // pushes the last partial segment
            }
        }
        Body::Source(None) => write_head(stream, version, &resp, None).await?,
        Body::Streaming(_) => unreachable!("bodies are started only by hyper"),
    }
    Ok(next)
}

/// Writes the status line and headers, and a small body in the same write.
async fn write_head(
    stream: &mut TcpStream,
    version: Version,
    resp: &Response<()>,
    body: Option<&[u8]>,
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
    stream.write_all(&out).await
}

async fn send_range(stream: &mut TcpStream, range: SourceRange, chunked: bool) -> io::Result<()> {
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
            send_file(stream, &file, start, len, &mut meter).await
        }
        Source::Fill(mut reader) => {
            let end = len.map(|l| start + l);
            let mut pos = start;
            loop {
                if end.is_some_and(|e| pos >= e) {
                    break;
                }
                let mut n = reader.readable(pos).await?;
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
                    stream.write_all(format!("{n:x}\r\n").as_bytes()).await?;
                }
                send_file(stream, reader.file(), pos, n, &mut meter).await?;
                if chunked {
                    stream.write_all(b"\r\n").await?;
                }
                pos += n;
            }
            if chunked {
                stream.write_all(b"0\r\n\r\n").await?;
            }
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
) -> io::Result<()> {
    let (mut off, end) = (offset, offset + len);
    let mut advised = offset;
    while off < end {
        if off >= advised {
            advised = (off + READAHEAD).min(end);
            readahead(file, off, advised - off).await;
        }
        tokio::task::consume_budget().await;
        stream.writable().await?;
        let want = ((end - off) as usize).min(SENDFILE_MAX);
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
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
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
