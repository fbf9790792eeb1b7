//! HTTP/2 over TLS: the frames hyper writes one at a time, gathered into few
//! socket writes.
//!
//! h2 flushes its transport after every DATA frame, and a client decides the
//! frame size (16 KiB for curl, h2load and most others). Through tokio-rustls
//! that is one TLS record and one `writev` per 16 KiB, each waking the client.
//! [`Gather`] sits between hyper and the TLS stream of an `h2` connection:
//!
//! - a write is encrypted into rustls's outgoing buffer (rustls's own limit,
//!   64 KiB of records per connection, as without gathering), without a copy
//!   of our own and without a syscall; only a full buffer is written out
//!   first;
//! - flushes are deferred within one round of the connection task (h2 reads,
//!   then writes every frame its streams queued, flushing after each): the
//!   first deferred flush wakes the task, and the round's bytes go out at the
//!   next read (where h2 begins its next round) or the next flush with no
//!   write before it, whichever comes first.
//!
//! It must never hold bytes beyond the connection task's next round: a
//! deferred flush always wakes the task, and every read and every flush
//! without a write first sends what is pending. Gathered writes are charged
//! to tokio's cooperative budget, as socket writes were, so one connection
//! cannot keep a worker from others. HTTP/1.1 connections pass straight
//! through (hyper already writes whole chunks).

use std::io::{self, IoSlice, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A server TLS stream whose writes are gathered when it speaks `h2`.
pub struct Gather {
    tls: TlsStream<TcpStream>,
    on: bool,
    /// Bytes were written since the last flush asked for.
    wrote: bool,
    /// A flush was deferred: the task was woken, bytes may be pending.
    deferred: bool,
}

impl Gather {
    /// Wraps an accepted stream; gathers if the client chose `h2`.
    pub fn new(tls: TlsStream<TcpStream>) -> Gather {
        let on = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        Gather {
            tls,
            on,
            wrote: false,
            deferred: false,
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
        let coop = ready!(tokio::task::coop::poll_proceed(cx));
        loop {
            let n = self.tls.get_mut().1.writer().write_vectored(bufs)?;
            if n > 0 {
                coop.made_progress();
                self.wrote = true;
                return Poll::Ready(Ok(n));
            }
            if !self.tls.get_ref().1.wants_write() {
                // rustls took nothing and has nothing to send: flushing
                // would not make room, and retrying would spin.
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            // tokio-rustls's flush writes every record out (or is pending on
            // the socket: back pressure, as without gathering).
            ready!(Pin::new(&mut self.tls).poll_flush(cx))?;
            self.deferred = false;
        }
    }
}

impl AsyncRead for Gather {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.deferred {
            // A new round: the last one's bytes go out first. Pending only
            // if the socket is full, and then the round's flush retries.
            match Pin::new(&mut self.tls).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.deferred = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
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
        if self.on && std::mem::take(&mut self.wrote) {
            if !self.deferred {
                // The task runs again; its next read or write-free flush
                // sends what this round gathered.
                self.deferred = true;
                cx.waker().wake_by_ref();
            }
            return Poll::Ready(Ok(()));
        }
        ready!(Pin::new(&mut self.tls).poll_flush(cx))?;
        self.deferred = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // tokio-rustls writes every pending record before its close_notify.
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// rustls's outgoing buffer limit.
    const LIMIT: usize = 64 * 1024;
    use std::future::poll_fn;
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    /// A TLS connection over loopback: the server side wrapped, the client
    /// side raw.
    async fn pair(alpn: &[u8]) -> (Gather, tokio_rustls::client::TlsStream<TcpStream>) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = ck.cert.der().clone();
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut sc = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        sc.alpn_protocols = vec![alpn.to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let mut cc = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cc.alpn_protocols = vec![alpn.to_vec()];
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            TlsConnector::from(Arc::new(cc))
                .connect(name, tcp)
                .await
                .unwrap()
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let server = TlsAcceptor::from(Arc::new(sc)).accept(tcp).await.unwrap();
        let mut client = client.await.unwrap();
        // The client reads the server's session tickets now, not later.
        let mut none = [0u8; 1];
        assert!(
            tokio::time::timeout(Duration::from_millis(50), client.read(&mut none))
                .await
                .is_err()
        );
        (Gather::new(server), client)
    }

    /// What the client can read now, without waiting.
    async fn readable(client: &mut tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(100), client.read(&mut buf)).await
        {
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    /// One poll of `f`, with a waker that records whether it was woken.
    fn poll_once<T>(f: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> (Poll<T>, bool) {
        struct Flag(std::sync::atomic::AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let flag = Arc::new(Flag(false.into()));
        let waker = std::task::Waker::from(flag.clone());
        let r = f(&mut Context::from_waker(&waker));
        (r, flag.0.load(std::sync::atomic::Ordering::SeqCst))
    }

    #[tokio::test]
    async fn a_rounds_flushes_wait_for_its_next_read_or_a_flush_with_no_write() {
        let (mut g, mut client) = pair(b"h2").await;
        let mut g = Pin::new(&mut g);
        // A round: frames, each followed by a flush. Only the first
        // deferred flush wakes the task; nothing reaches the socket.
        poll_fn(|cx| g.as_mut().poll_write(cx, b"one"))
            .await
            .unwrap();
        let (r, woken) = poll_once(|cx| g.as_mut().poll_flush(cx));
        assert!(matches!(r, Poll::Ready(Ok(()))) && woken);
        poll_fn(|cx| g.as_mut().poll_write(cx, b"two"))
            .await
            .unwrap();
        let (r, woken) = poll_once(|cx| g.as_mut().poll_flush(cx));
        assert!(matches!(r, Poll::Ready(Ok(()))) && !woken);
        assert_eq!(readable(&mut client).await, b"");
        // The next round begins with a read: the bytes go out, together.
        let mut buf = [0u8; 16];
        let (r, _) = poll_once(|cx| g.as_mut().poll_read(cx, &mut ReadBuf::new(&mut buf)));
        assert!(r.is_pending(), "the client sent nothing");
        assert_eq!(readable(&mut client).await, b"onetwo");

        // A round that ends with a flush after no write sends at once.
        poll_fn(|cx| g.as_mut().poll_write(cx, b"three"))
            .await
            .unwrap();
        poll_fn(|cx| g.as_mut().poll_flush(cx)).await.unwrap();
        poll_fn(|cx| g.as_mut().poll_flush(cx)).await.unwrap();
        assert_eq!(readable(&mut client).await, b"three");
    }

    #[tokio::test]
    async fn a_full_buffer_is_sent_without_a_flush_and_http1_passes_through() {
        let (mut g, mut client) = pair(b"h2").await;
        let big = vec![7u8; LIMIT * 4];
        let mut g = Pin::new(&mut g);
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; LIMIT * 2];
            client.read_exact(&mut got).await.unwrap();
            got
        });
        let mut sent = 0;
        while sent < big.len() {
            sent += poll_fn(|cx| g.as_mut().poll_write(cx, &big[sent..]))
                .await
                .unwrap();
        }
        // No flush was asked for, yet the client has read a buffer's worth.
        assert_eq!(reader.await.unwrap(), vec![7u8; LIMIT * 2]);

        let (mut g, mut client) = pair(b"http/1.1").await;
        let mut g = Pin::new(&mut g);
        poll_fn(|cx| g.as_mut().poll_write(cx, b"direct"))
            .await
            .unwrap();
        assert_eq!(readable(&mut client).await, b"direct");
    }
}
