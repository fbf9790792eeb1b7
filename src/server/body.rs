//! Response bodies. Blob bytes are read on a blocking thread with positional
//! reads and handed to hyper through a small bounded channel, so a slow client
//! holds at most a few chunks in memory and never a whole blob.
//!
//! If the source fails midway (a fill whose digest did not match, an upstream
//! that broke off), the body yields an error and hyper closes the connection
//! before `Content-Length` is reached: the client sees a failed transfer, never a
//! complete wrong one.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, SizeHint};
use tokio::sync::mpsc;

use crate::cache::FillReader;

pub type Body = BoxBody<Bytes, io::Error>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Bytes read per chunk. Large chunks mean few wake-ups and syscalls per MiB.
const CHUNK: usize = 256 * 1024;
/// Chunks buffered between the reader thread and the connection.
const DEPTH: usize = 4;

/// Something that can be read at an offset from a blocking thread.
pub trait PositionalSource: Send + 'static {
    /// Reads at `pos`; `Ok(0)` only at the end of the content.
    fn read_at(&mut self, pos: u64, buf: &mut [u8]) -> io::Result<usize>;
}

impl PositionalSource for File {
    fn read_at(&mut self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        FileExt::read_at(self, buf, pos)
    }
}

impl PositionalSource for FillReader {
    fn read_at(&mut self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        FillReader::read_at(self, pos, buf)
    }
}

/// Streams `len` bytes (or to the end, if `None`) from `start`.
pub fn stream<S: PositionalSource>(mut src: S, start: u64, len: Option<u64>) -> Body {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(DEPTH);
    tokio::task::spawn_blocking(move || {
        let mut pos = start;
        let end = len.map(|l| start + l);
        loop {
            let want = match end {
                Some(e) if pos >= e => break,
                Some(e) => CHUNK.min((e - pos) as usize),
                None => CHUNK,
            };
            let mut buf = BytesMut::zeroed(want);
            let item = match src.read_at(pos, &mut buf) {
                Ok(0) if end.is_some() => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "content ended before its length",
                )),
                Ok(0) => break,
                Ok(n) => {
                    pos += n as u64;
                    buf.truncate(n);
                    Ok(buf.freeze())
                }
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                break; // the client went away, or the error is on its way
            }
        }
    });
    ChannelBody { rx, remaining: len }.boxed()
}

struct ChannelBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    remaining: Option<u64>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
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

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(r) => SizeHint::with_exact(r),
            None => SizeHint::default(),
        }
    }
}
