//! HTTP/2 over TLS: the frames hyper writes one at a time, gathered into few
//! socket writes.
//!
//! h2 flushes its transport after every DATA frame, and a client decides the
//! frame size (16 KiB for curl, h2load and most others). Through tokio-rustls
//! that is one TLS record and one `writev` per 16 KiB, each waking the client:
//! half of HTTP/1.1's throughput on one connection. [`Gather`] sits between
//! hyper and the TLS stream of an `h2` connection:
//!
//! - a write is encrypted into rustls's outgoing buffer (up to
//!   [`GATHER_LIMIT`] of records), without a copy of our own and without a
//!   syscall; only a full buffer is written out first;
//! - the first flush after a write is deferred: the connection task is woken
//!   to run once more, and flushes for real at its next flush that follows no
//!   write. Frames that streams queue meanwhile join the same `writev`.
//!
//! It must never keep bytes past the connection task's next poll: a deferred
//! flush always wakes that task, and a flush with nothing written since is
//! never deferred. HTTP/1.1 connections pass straight through (hyper already
//! writes whole chunks).

use std::io::{self, IoSlice, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Encrypted bytes an `h2` connection may hold before a socket write: 16
/// records of 16 KiB.
pub const GATHER_LIMIT: usize = 256 * 1024;

/// A server TLS stream whose writes are gathered when it speaks `h2`.
pub struct Gather {
    tls: TlsStream<TcpStream>,
    on: bool,
    /// Bytes were written since the last flush asked for.
    wrote: bool,
}

impl Gather {
    /// Wraps an accepted stream; gathers if the client chose `h2`.
    pub fn new(mut tls: TlsStream<TcpStream>) -> Gather {
        let on = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        if on {
            tls.get_mut().1.set_buffer_limit(Some(GATHER_LIMIT));
        }
        Gather {
            tls,
            on,
            wrote: false,
        }
    }

    /// Encrypts what rustls's buffer takes of `bufs`; when it is full,
    /// writes it to the socket first.
    fn poll_gather(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        loop {
            let n = self.tls.get_mut().1.writer().write_vectored(bufs)?;
            if n > 0 {
                self.wrote = true;
                return Poll::Ready(Ok(n));
            }
            // tokio-rustls's flush writes every record out (or is pending on
            // the socket: back pressure, as without gathering).
            std::task::ready!(Pin::new(&mut self.tls).poll_flush(cx))?;
        }
    }
}

impl AsyncRead for Gather {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for Gather {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if !self.on {
            return Pin::new(&mut self.tls).poll_write(cx, buf);
        }
        self.poll_gather(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if !self.on {
            return Pin::new(&mut self.tls).poll_write_vectored(cx, bufs);
        }
        self.poll_gather(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.on && self.wrote {
            // Deferred: the task runs again at once, and its next flush
            // (after whatever frames are ready by then) is for real.
            self.wrote = false;
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // tokio-rustls writes every pending record before its close_notify.
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}
