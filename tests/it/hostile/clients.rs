//! Hostile clients at the server (`src/server/`): non-readers over HTTP/1.1,
//! TLS and HTTP/2 (the blocking pool, the write deadline), slowloris heads
//! and prefaces, request smuggling and bare LF, an HTTP/1.0 client of a
//! failing fill, HTTP/2 floods (rapid reset, CONTINUATION, huge header
//! lists, too many streams) and the connection cap. Each case checks the
//! safe outcome and that an honest client ([`Honest`]) is served meanwhile.
//! Loopback only; every loop is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::io::AsyncWriteExt;

use crate::harness::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MANIFEST: &str = "/v2/library/test/manifests/1";

/// An upstream with a small image and the large one (a 64 MiB layer), and
/// wharf in front with `server` in its `[server]` section; the small
/// manifest and the large layer are cached through wharf.
struct Attacked {
    w: Wharf,
    _up: Upstream,
    /// `/v2/library/big/blobs/sha256:...`, cached.
    blob: String,
    tls: bool,
    rt: tokio::runtime::Runtime,
}

impl Attacked {
    fn start(server: &str) -> Attacked {
        let rt = runtime();
        let up = Upstream::start(Auth::None, &rt);
        up.push("small", "library/test:1", None, false);
        up.push("large", "library/big:1", None, false);
        let w = Wharf::start_with(
            &rt,
            server,
            &Wharf::hub_block(&up, false, Path::new("/")),
            "",
        );
        let m: serde_json::Value = http()
            .get(format!("{}/v2/library/big/manifests/1", up.url()))
            .header("accept", OCI_MANIFEST)
            .send()
            .unwrap()
            .json()
            .unwrap();
        let layer = m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .max_by_key(|l| l["size"].as_u64())
            .unwrap();
        let a = Attacked {
            blob: format!(
                "/v2/library/big/blobs/{}",
                layer["digest"].as_str().unwrap()
            ),
            tls: !server.contains("plain_http = true"),
            w,
            _up: up,
            rt,
        };
        a.curl_ok(MANIFEST, Some(OCI_MANIFEST));
        a.curl_ok(&a.blob.clone(), None);
        a.w.wait_fills_settled();
        a
    }

    fn base(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.w.addr)
    }

    fn ca(&self) -> PathBuf {
        self.w.cache_dir().join("tls/ca.crt")
    }

    fn curl(&self, path: &str, accept: Option<&str>) -> std::process::Output {
        let mut c = Command::new("curl");
        c.args([
            "-sS",
            "--max-time",
            "60",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ]);
        if self.tls {
            c.arg("--cacert").arg(self.ca());
        }
        if let Some(a) = accept {
            c.args(["-H", &format!("Accept: {a}")]);
        }
        c.arg(format!("{}{path}", self.base())).output().unwrap()
    }

    fn curl_ok(&self, path: &str, accept: Option<&str>) {
        let out = self.curl(path, accept);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "200",
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn honest(&self) -> Honest<'_> {
        Honest {
            base: self.base(),
            ca: None,
            admin: None,
            manifest: Some((MANIFEST.into(), OCI_MANIFEST.into())),
        }
    }

    fn assert_served(&self) {
        let ca = self.ca();
        let mut h = self.honest();
        if self.tls {
            h.ca = Some(&ca);
        }
        h.assert_served();
    }

    /// `/metrics` from the registry port.
    fn metric(&self, series: &str) -> f64 {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "10"]);
        if self.tls {
            c.arg("--cacert").arg(self.ca());
        }
        let out = c.arg(format!("{}/metrics", self.base())).output().unwrap();
        metric_value(&String::from_utf8_lossy(&out.stdout), series)
    }
}

/// A raw TCP connection to wharf with a read timeout.
fn raw(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Everything until the peer closes (or resets) the connection.
fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Regression (issue 14, item 8): `Content-Length: 0` then `Content-Length:
/// 61` with a second request in the body gave two responses; bare-LF heads
/// were accepted.
#[test]
fn smuggled_lengths_and_bare_line_feeds_are_refused_and_the_connection_closed() {
    let a = Attacked::start("plain_http = true\n");
    let second = "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Pad: 0123456789abc\r\n\r\n";
    for head in [
        format!(
            "GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{second}",
            second.len()
        ),
        format!(
            "GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{second}",
            second.len()
        ),
        format!("GET /v2/ HTTP/1.1\nHost: x\n\n{second}"),
    ] {
        let mut s = raw(a.w.addr);
        s.write_all(head.as_bytes()).unwrap();
        let out = String::from_utf8_lossy(&read_all(&mut s)).into_owned();
        assert!(out.starts_with("HTTP/1.1 400"), "{head:?}: {out}");
        assert_eq!(out.matches("HTTP/1.1").count(), 1, "one answer: {out}");
        a.assert_served();
    }
    assert!(a.metric("wharf_connections_dropped_total{reason=\"malformed\"}") >= 3.0);
}

/// Regression (issue 14, item 7): the HTTP/2 preface wait had no deadline
/// (`P`, or `PRI * HTTP/2.0\r\n` then silence, stayed open past 200 s).
#[test]
fn slowloris_prefaces_and_heads_are_cut_at_the_header_timeout() {
    let a = Attacked::start("plain_http = true\nheader_timeout = \"2s\"\n");
    let started = Instant::now();
    let mut held: Vec<TcpStream> = ["P", "PRI * HTTP/2.0\r\n", "GET /v2/ HTTP/1.1\r\nHost:"]
        .iter()
        .map(|p| {
            let mut s = raw(a.w.addr);
            s.write_all(p.as_bytes()).unwrap();
            s
        })
        .collect();
    // A complete preface and then nothing: hyper's connection, first
    // request awaited for header_timeout.
    let mut h2 = raw(a.w.addr);
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    held.push(h2);
    // Regression: a new plain connection that sends nothing at all was
    // given the idle timeout (120 s), not the header timeout, for its first
    // byte.
    held.push(raw(a.w.addr));
    a.assert_served();
    for s in &mut held {
        read_all(s);
        let took = started.elapsed();
        // 2 s of header timeout, plus the honest client's checks before.
        assert!(
            took < Duration::from_secs(2) + 3 * HONEST_DEADLINE + Duration::from_secs(5),
            "closed after {took:?}, header_timeout is 2 s"
        );
    }
    assert!(a.metric("wharf_connections_dropped_total{reason=\"header_timeout\"}") >= 5.0);
}

/// rustls client configuration trusting wharf's CA.
fn tls_connector(ca: &Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A TCP connection with a 4 KiB receive buffer (the attack's: the server's
/// writes block as soon as possible).
async fn small_window(addr: SocketAddr) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(addr).await.unwrap()
}

/// Regression (issue 14, item 1): 520 TLS clients asking for a cached blob
/// and never reading took one blocking thread each (512 in tokio's pool),
/// and then `/readyz` and every other client hung. Now they cost no thread,
/// the honest client is served while they hold on, and the write deadline
/// closes them.
#[test]
fn tls_non_readers_of_a_cached_blob_do_not_hang_the_server() {
    const N: usize = 520;
    // All from 127.0.0.1: more than one address may hold by default.
    let a = Attacked::start(
        "write_timeout = \"8s\"\nmax_connections_per_address = 1024\n[server.tls]\nauto = true\n",
    );
    let connector = tls_connector(&a.ca());
    let request = format!("GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", a.blob);
    let addr = a.w.addr;
    let attacker = runtime();
    let held = attacker.block_on(async {
        let mut held = Vec::with_capacity(N);
        for batch in 0..N / 40 + 1 {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..40.min(N - batch * 40) {
                let (connector, request) = (connector.clone(), request.clone());
                set.spawn(async move {
                    let tcp = small_window(addr).await;
                    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
                    let mut tls = connector.connect(name, tcp).await.unwrap();
                    tls.write_all(request.as_bytes()).await.unwrap();
                    tls.flush().await.unwrap();
                    tls // never read
                });
            }
            while let Some(t) = set.join_next().await {
                held.push(t.unwrap());
            }
        }
        held
    });
    assert_eq!(held.len(), N);
    eventually(
        Duration::from_secs(60),
        "every non-reader's request to be answered",
        || {
            a.metric("wharf_requests_total{endpoint=\"blob\",method=\"GET\",status=\"200\"}")
                > N as f64
        },
    );
    // (The first connections may already be at their write deadline.)
    assert!(
        a.metric("wharf_connections_open") >= (N / 2) as f64,
        "still held"
    );
    a.assert_served();
    a.assert_served();
    // The write deadline (8 s) frees them: wharf closes every one itself.
    let closed = |reason: &str| {
        a.metric(&format!(
            "wharf_connections_dropped_total{{reason=\"{reason}\"}}"
        ))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while closed("write_timeout") < N as f64 {
        assert!(
            Instant::now() < deadline,
            "the write deadline closed {} of {N} non-readers in 120 s ({} other connections open; closed for other reasons: header_timeout {}, idle_timeout {}, malformed {}, address_limit {})",
            closed("write_timeout"),
            // Besides the scrape that reads it.
            a.metric("wharf_connections_open") - 1.0,
            closed("header_timeout"),
            closed("idle_timeout"),
            closed("malformed"),
            closed("address_limit"),
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    a.assert_served();
    drop(held);
    drop(attacker);
    let _ = &a.rt;
}

/// HTTP/2 frames written by hand (RFC 9113 §4.1), so that each attack is
/// exactly the bytes it means.
mod frames {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const GOAWAY: u8 = 0x7;
    pub const CONTINUATION: u8 = 0x9;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// The preface and an empty SETTINGS frame (the initial window stays
    /// 65,535 bytes, and this client never sends a WINDOW_UPDATE).
    pub fn preface() -> Vec<u8> {
        let mut v = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        v.extend(frame(SETTINGS, 0, 0, &[]));
        v
    }

    /// A HPACK block for `GET http://x{path}` (RFC 7541: indexed :method GET,
    /// :scheme http; literal :path and :authority, never indexed).
    pub fn get(path: &str) -> Vec<u8> {
        let mut h = vec![0x82, 0x86, 0x04, path.len() as u8];
        h.extend_from_slice(path.as_bytes());
        h.extend_from_slice(&[0x01, 0x01, b'x']);
        h
    }

    /// A literal header (never indexed, new name) of `len` bytes of value.
    pub fn big_header(name: &str, len: usize) -> Vec<u8> {
        let mut h = vec![0x10];
        h.extend(int7(name.len()));
        h.extend_from_slice(name.as_bytes());
        h.extend(int7(len));
        h.extend(std::iter::repeat_n(b'a', len));
        h
    }

    /// HPACK integer with a 7-bit prefix (no Huffman flag).
    fn int7(mut n: usize) -> Vec<u8> {
        if n < 127 {
            return vec![n as u8];
        }
        let mut v = vec![127];
        n -= 127;
        while n >= 128 {
            v.push((n % 128 + 128) as u8);
            n /= 128;
        }
        v.push(n as u8);
        v
    }

    /// Reads frames until the connection ends (or `limit` passes): (type,
    /// flags, stream, payload) of each.
    pub fn read_frames(
        s: &mut std::net::TcpStream,
        limit: std::time::Duration,
    ) -> Vec<(u8, u8, u32, Vec<u8>)> {
        use std::io::Read;
        s.set_read_timeout(Some(limit)).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 65536];
        let started = std::time::Instant::now();
        while started.elapsed() < limit {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let mut out = Vec::new();
        let mut i = 0;
        while i + 9 <= buf.len() {
            let len = (buf[i] as usize) << 16 | (buf[i + 1] as usize) << 8 | buf[i + 2] as usize;
            if i + 9 + len > buf.len() {
                break;
            }
            let stream = u32::from_be_bytes(buf[i + 5..i + 9].try_into().unwrap()) & 0x7fff_ffff;
            out.push((
                buf[i + 3],
                buf[i + 4],
                stream,
                buf[i + 9..i + 9 + len].to_vec(),
            ));
            i += 9 + len;
        }
        out
    }

    /// The error code of the GOAWAY among `frames`, if any.
    pub fn goaway(frames: &[(u8, u8, u32, Vec<u8>)]) -> Option<u32> {
        frames
            .iter()
            .find(|f| f.0 == GOAWAY)
            .map(|f| u32::from_be_bytes(f.3[4..8].try_into().unwrap()))
    }
}

/// Regression (issue 14, items 1 and 17): HTTP/2 clients opening many
/// streams for a blob and granting no flow-control window (with plain
/// HTTP/1.1 non-readers beside them) held one blocking thread per stream and
/// up to 200 streams a connection. Now a connection gets the configured
/// number of streams, none costs a thread, and the write deadline closes
/// them.
#[test]
fn http2_and_h1_non_readers_are_capped_and_closed() {
    use frames::*;
    let a = Attacked::start(
        "plain_http = true\nwrite_timeout = \"8s\"\nh2_max_concurrent_streams = 100\n",
    );
    // The server announces the stream cap.
    let mut probe = raw(a.w.addr);
    probe.write_all(&preface()).unwrap();
    let settings = read_frames(&mut probe, Duration::from_secs(2));
    let announced = settings
        .iter()
        .find(|f| f.0 == SETTINGS && f.1 == 0)
        .map(|f| {
            f.3.chunks(6)
                .find(|c| c[..2] == [0, 3])
                .map(|c| u32::from_be_bytes(c[2..6].try_into().unwrap()))
        })
        .unwrap_or_default();
    assert_eq!(announced, Some(100), "SETTINGS_MAX_CONCURRENT_STREAMS");
    drop(probe);

    // 6 connections of 100 streams (600: more than tokio's 512 blocking
    // threads), and 50 plain non-readers.
    let mut held = Vec::new();
    for _ in 0..6 {
        let mut s = raw(a.w.addr);
        let mut out = preface();
        for i in 0..100u32 {
            out.extend(frame(
                HEADERS,
                END_STREAM | END_HEADERS,
                2 * i + 1,
                &get(&a.blob),
            ));
        }
        s.write_all(&out).unwrap();
        held.push(s);
    }
    for _ in 0..50 {
        let mut s = raw(a.w.addr);
        s.write_all(format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", a.blob).as_bytes())
            .unwrap();
        held.push(s);
    }
    eventually(
        Duration::from_secs(20),
        "the attack's streams to start",
        || {
            a.metric("wharf_requests_total{endpoint=\"blob\",method=\"GET\",status=\"200\"}")
                >= 600.0
        },
    );
    a.assert_served();
    eventually(
        Duration::from_secs(40),
        "the write deadline to close the non-readers",
        || a.metric("wharf_connections_dropped_total{reason=\"write_timeout\"}") >= 56.0,
    );
    a.assert_served();
}

/// Regression: every HTTP/2 stream of every connection got its own reader
/// and buffers (up to ~350 KiB with hyper's send buffer): at the defaults,
/// 4096 connections × 100 streams of a cached blob, granting windows but
/// barely reading, came to over 100 GiB. Now a connection's first streamed
/// body is its own and the others share `max_connections` slots, so memory
/// is bounded by the connection cap: with `max_connections = 3`, at most
/// 1 + 3 streams of one connection send bytes at once.
#[test]
fn http2_streams_share_a_bounded_number_of_body_readers() {
    use frames::*;
    let a = Attacked::start("plain_http = true\nmax_connections = 3\n");
    let mut s = raw(a.w.addr);
    // Windows as large as HTTP/2 allows: hyper would buffer all it may.
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[0, 4, 0x7f, 0xff, 0xff, 0xff]));
    out.extend(frame(0x8, 0, 0, &0x7fff_0000u32.to_be_bytes()));
    for i in 0..8u32 {
        out.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            2 * i + 1,
            &get(&a.blob),
        ));
    }
    s.write_all(&out).unwrap();
    // The streams that sent data before the first one ended.
    let mut sending = std::collections::BTreeSet::new();
    let mut head = [0u8; 9];
    let mut skip = vec![0u8; 1 << 16];
    loop {
        s.read_exact(&mut head).expect("frames until a stream ends");
        let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
        let stream = u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff;
        let mut left = len;
        while left > 0 {
            let n = left.min(skip.len());
            s.read_exact(&mut skip[..n]).unwrap();
            left -= n;
        }
        assert_ne!(head[3], GOAWAY, "the connection was closed");
        if head[3] == DATA {
            sending.insert(stream);
            if head[4] & END_STREAM != 0 {
                break;
            }
        }
    }
    assert!(
        sending.len() <= 4,
        "streams sending at once: {sending:?} (1 of the connection's own, 3 shared)"
    );
    drop(s);
    a.assert_served();
}

/// HTTP/2 floods (issue 14, item 17), each with a raw client: rapid reset,
/// a CONTINUATION flood, an oversized header list. Each ends the attacking
/// stream or connection, and the honest client is served meanwhile.
#[test]
fn http2_rapid_reset_continuation_floods_and_huge_header_lists_are_refused() {
    use frames::*;
    let a = Attacked::start(
        "plain_http = true\nh2_max_header_list_size = \"16KiB\"\nh2_max_pending_accept_reset_streams = 20\n",
    );

    // Rapid reset: 500 streams opened and cancelled in one write.
    let mut s = raw(a.w.addr);
    let mut out = preface();
    for i in 0..500u32 {
        out.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &get(MANIFEST)));
        out.extend(frame(RST_STREAM, 0, 2 * i + 1, &8u32.to_be_bytes()));
    }
    let _ = s.write_all(&out);
    let f = read_frames(&mut s, Duration::from_secs(10));
    assert_eq!(
        goaway(&f),
        Some(0xb),
        "GOAWAY ENHANCE_YOUR_CALM: {:?}",
        f.iter().map(|f| f.0).collect::<Vec<_>>()
    );
    a.assert_served();

    // A CONTINUATION flood: one header block that never ends.
    let mut s = raw(a.w.addr);
    s.write_all(&preface()).unwrap();
    s.write_all(&frame(HEADERS, 0, 1, &get(MANIFEST))).unwrap();
    let piece = frame(CONTINUATION, 0, 1, &big_header("x-flood", 4000));
    let mut sent = 0;
    for _ in 0..2000 {
        if s.write_all(&piece).is_err() {
            break;
        }
        sent += 1;
    }
    let f = read_frames(&mut s, Duration::from_secs(10));
    assert!(
        sent < 2000 || goaway(&f).is_some() || f.iter().any(|f| f.0 == RST_STREAM),
        "an endless header block is cut"
    );
    assert!(
        !f.iter().any(|f| f.0 == HEADERS),
        "no response to an oversized header block"
    );
    a.assert_served();

    // An oversized header list (30 KB with a 16 KiB limit): the stream is
    // refused (431 or reset), never served.
    let mut s = raw(a.w.addr);
    s.write_all(&preface()).unwrap();
    let mut block = get(MANIFEST);
    block.extend(big_header("x-big", 15_000));
    block.extend(big_header("x-big2", 15_000));
    let mut frag = Vec::new();
    // Frames of at most 16 KiB (the default SETTINGS_MAX_FRAME_SIZE).
    let mut chunks = block.chunks(16_000).peekable();
    let mut first = true;
    while let Some(c) = chunks.next() {
        let last = chunks.peek().is_none();
        let flags = if last { END_HEADERS } else { 0 } | if first { END_STREAM } else { 0 };
        let kind = if first { HEADERS } else { CONTINUATION };
        frag.extend(frame(kind, flags, 1, c));
        first = false;
    }
    let _ = s.write_all(&frag);
    let f = read_frames(&mut s, Duration::from_secs(5));
    let served = f.iter().any(|f| f.0 == DATA && f.2 == 1);
    assert!(
        !served,
        "a 30 KB header list is not served with a 16 KiB limit"
    );
    a.assert_served();
}

/// The connection cap: at `max_connections` wharf stops accepting (counted,
/// warned) until a connection ends; the admin listener still answers.
#[test]
fn the_connection_cap_holds_new_connections_until_one_ends() {
    let a = Attacked::start("plain_http = true\nmax_connections = 8\nheader_timeout = \"3s\"\n");
    let held: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = raw(a.w.addr);
            s.write_all(b"GET /v2/ HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    // A ninth connection waits in the backlog, then is served once the
    // header timeout frees slots.
    let started = Instant::now();
    let mut ninth = raw(a.w.addr);
    ninth
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let out = String::from_utf8_lossy(&read_all(&mut ninth)).into_owned();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "served only once a slot freed"
    );
    drop(held);
    a.assert_served();
    assert!(a.metric("wharf_connection_limit_reached_total") >= 1.0);
}

/// A connection from `from` (a loopback address of its own), held open by
/// an unfinished request head.
fn held_from(rt: &tokio::runtime::Runtime, from: std::net::Ipv4Addr, to: SocketAddr) -> TcpStream {
    let s = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::from((from, 0))).unwrap();
        sock.connect(to).await.unwrap()
    });
    let mut s = s.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // Fails only if wharf refused and reset the connection first (the
    // caller then reads nothing, as for any refusal).
    let _ = s.write_all(b"GET /v2/ HTTP/1.1\r\n");
    s
}

/// Regression: one address could take every `max_connections` slot (and
/// keep them, reconnecting as deadlines freed them), locking every other
/// client out. Past `max_connections_per_address` its new connections are
/// closed at once, counted; other addresses are still served.
#[test]
fn one_address_cannot_take_every_connection() {
    let a = Attacked::start(
        "plain_http = true\nmax_connections = 16\nmax_connections_per_address = 4\nheader_timeout = \"30s\"\n",
    );
    let attacker = std::net::Ipv4Addr::new(127, 0, 0, 2);
    let held: Vec<TcpStream> = (0..4)
        .map(|_| held_from(&a.rt, attacker, a.w.addr))
        .collect();
    let started = Instant::now();
    let mut fifth = held_from(&a.rt, attacker, a.w.addr);
    assert!(read_all(&mut fifth).is_empty(), "refused without an answer");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "closed at once, not at the header timeout"
    );
    // 127.0.0.1 is another address: served.
    a.assert_served();
    assert!(a.metric("wharf_connections_dropped_total{reason=\"address_limit\"}") >= 1.0);
    drop(held);
    // Once its connections ended, the address is served again.
    eventually(
        Duration::from_secs(10),
        "the attacker's slots are freed",
        || {
            // Refused while wharf has not yet seen the held ones end: the
            // write may then fail (reset), which is a "not yet".
            let mut s = held_from(&a.rt, attacker, a.w.addr);
            s.write_all(b"Host: x\r\nConnection: close\r\n\r\n").is_ok()
                && String::from_utf8_lossy(&read_all(&mut s)).starts_with("HTTP/1.1 200")
        },
    );
}

/// Regression: the admin listener accepted without limit (each connection
/// kept up to 5 minutes), so a client that could reach it could use up the
/// descriptors the registry port shares and crowd out the probes; an accept
/// error looped without pause. Now one address holds at most 16 there.
#[test]
fn the_admin_listener_limits_connections_per_address() {
    let rt = runtime();
    let (_up, _dir, mut w, admin) = with_admin_listener(&rt, "127.0.0.1");
    let attacker = std::net::Ipv4Addr::new(127, 0, 0, 2);
    let held: Vec<TcpStream> = (0..16).map(|_| held_from(&rt, attacker, admin)).collect();
    let started = Instant::now();
    let mut more = held_from(&rt, attacker, admin);
    assert!(read_all(&mut more).is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed at once, not at the admin header timeout (10 s)"
    );
    let r = http()
        .get(format!("http://{admin}/healthz"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "another address is served");
    drop(held);
    w.stop();
}

/// Regression: at the admin listener's cap (256 connections) the loop
/// stopped accepting, so clients on 16 addresses (any pods of the cluster,
/// when admin_listen is the node's address as in deploy/kubernetes) kept
/// the kubelet's liveness probe from 127.0.0.1 waiting in the backlog past
/// its 5 s timeout, and wharf was restarted on every node. The probe's
/// address is never held back by the others; they are closed at once.
#[test]
fn the_admin_listener_cap_never_keeps_the_kubelets_probe_out() {
    let rt = runtime();
    let (_up, _dir, mut w, admin) = with_admin_listener(&rt, "0.0.0.0");
    let held: Vec<TcpStream> = (2..18)
        .flat_map(|last| {
            let from = std::net::Ipv4Addr::new(127, 0, 0, last);
            (0..16)
                .map(|_| held_from(&rt, from, admin))
                .collect::<Vec<_>>()
        })
        .collect();
    // The cap is full: another address is closed at once.
    let started = Instant::now();
    let mut more = held_from(&rt, std::net::Ipv4Addr::new(127, 0, 0, 18), admin);
    assert!(read_all(&mut more).is_empty());
    assert!(started.elapsed() < Duration::from_secs(5), "closed at once");
    // The kubelet's probe (timeoutSeconds: 5) is answered all the same.
    let started = Instant::now();
    let r = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(format!("http://{admin}/healthz"))
        .send()
        .expect("the probe is answered within its timeout");
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(held);
    w.stop();
}

/// wharf with its admin listener on `ip` and a free port, ready; the
/// listener's address on 127.0.0.1.
fn with_admin_listener(
    rt: &tokio::runtime::Runtime,
    ip: &str,
) -> (Upstream, tempfile::TempDir, Served, SocketAddr) {
    let up = Upstream::start(Auth::None, rt);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut w = Served::spawn_with(
        dir.path(),
        "wharf",
        &format!("admin_listen = \"{ip}:{port}\"\n"),
        &Wharf::hub_block(&up, false, dir.path()),
        free_port(),
    );
    w.wait_ready();
    let admin: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_listening(admin, None);
    (up, dir, w, admin)
}

/// A hostile upstream on loopback: `/v2/` answers 200, every blob GET a
/// chunked body of 1 MiB that matches no digest. Serves until dropped.
struct WrongBytes {
    addr: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl WrongBytes {
    fn start() -> WrongBytes {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((mut s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10)); // accept poll, not a sync
                    continue;
                };
                std::thread::spawn(move || {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match s.read(&mut b) {
                            Ok(1) => head.push(b[0]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let path = head.split(' ').nth(1).unwrap_or("");
                    if path.contains("/blobs/") {
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n");
                        let chunk = vec![b'w'; 64 * 1024];
                        for i in 0..16 {
                            let _ = s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes());
                            let _ = s.write_all(&chunk);
                            let _ = s.write_all(b"\r\n");
                            if i == 0 {
                                // wharf's answer to a client that can take a
                                // stream starts with the first bytes: let it
                                // start before the body ends (and fails).
                                std::thread::sleep(Duration::from_millis(300));
                            }
                        }
                        let _ = s.write_all(b"0\r\n\r\n");
                    } else if path == "/v2/" {
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
                    } else {
                        let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    }
                });
            }
        });
        WrongBytes { addr, stop }
    }

    fn block(&self) -> String {
        format!(
            "[[upstream]]\nname = \"hub\"\nurl = \"http://{}\"\naliases = [\"docker.io\"]\nprefix = \"hub\"\ndefault = true\n",
            self.addr
        )
    }
}

impl Drop for WrongBytes {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn random_blob() -> String {
    format!("/v2/library/x/blobs/sha256:{}", random_hex(32))
}

/// Regression (issue 14, item 2): a fill of unknown length went to HTTP/1.0
/// clients close-delimited, so a digest mismatch looked like a complete
/// download (`curl --http1.0` exited 0), over TLS with a clean close_notify.
/// Now HTTP/1.0 gets an answer only once the fill is verified (here: a 502),
/// and an HTTP/1.1 TLS client of a failing chunked fill sees the connection
/// end without close_notify.
#[test]
fn failed_fills_of_unknown_length_never_look_complete() {
    let rt = runtime();
    let up = WrongBytes::start();
    let w = Wharf::start(&rt, &up.block(), "");
    let mut s = raw(w.addr);
    s.write_all(format!("GET {} HTTP/1.0\r\n\r\n", random_blob()).as_bytes())
        .unwrap();
    let out = String::from_utf8_lossy(&read_all(&mut s)).into_owned();
    let status = out.lines().next().unwrap_or_default().to_owned();
    assert!(
        status.contains(" 502 "),
        "HTTP/1.0 over plain text: {status}"
    );
    assert!(out.contains("DIGEST_INVALID"), "{out}");
    let honest = Honest {
        base: w.url(),
        ca: None,
        admin: None,
        manifest: None,
    };
    honest.assert_served();

    let tw = Wharf::start_with(&rt, "[server.tls]\nauto = true\n", &up.block(), "");
    let connector = tls_connector(&tw.cache_dir().join("tls/ca.crt"));
    let client = runtime();
    let (http10, http11) = client.block_on(async {
        use tokio::io::AsyncReadExt;
        let mut results = Vec::new();
        for version in ["1.0", "1.1"] {
            let tcp = tokio::net::TcpStream::connect(tw.addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let mut tls = connector.connect(name, tcp).await.unwrap();
            tls.write_all(
                format!("GET {} HTTP/{version}\r\nHost: x\r\n\r\n", random_blob()).as_bytes(),
            )
            .await
            .unwrap();
            let mut out = Vec::new();
            let mut buf = vec![0u8; 65536];
            let end = loop {
                match tls.read(&mut buf).await {
                    Ok(0) => break Ok(()),
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(e) => break Err(e.kind()),
                }
            };
            results.push((String::from_utf8_lossy(&out).into_owned(), end));
        }
        (results.remove(0), results.remove(0))
    });
    let status = http10.0.lines().next().unwrap_or_default().to_owned();
    assert!(status.contains(" 502 "), "HTTP/1.0 over TLS: {status}");
    // Streaming had started when the fill failed (the upstream pauses after
    // its first chunk): the body stops without its terminator. Should the
    // whole body have come and failed first (a loaded machine), the answer
    // is a 502: a failure the client sees either way.
    if http11.0.starts_with("HTTP/1.1 502") {
        assert!(http11.0.contains("DIGEST_INVALID"), "{}", http11.0);
    } else {
        assert!(
            http11.0.starts_with("HTTP/1.1 200") && !http11.0.ends_with("0\r\n\r\n"),
            "chunked, without its terminator: {:?}",
            &http11.0[..http11.0.len().min(200)]
        );
        assert!(
            http11.1.is_err(),
            "the TLS connection of a failed fill ends without close_notify: {:?}",
            http11.1
        );
    }
    Honest {
        base: format!("https://{}", tw.addr),
        ca: Some(&tw.cache_dir().join("tls/ca.crt")),
        admin: None,
        manifest: None,
    }
    .assert_served();
    drop(client);

    // The access log line of a failed chunked transfer says so (it said
    // complete=true: a body of unknown length was taken as complete).
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), "w", &up.block());
    let blob = random_blob();
    let mut s = raw(served.addr());
    s.write_all(format!("GET {blob} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let out = read_all(&mut s);
    assert!(!out.ends_with(b"0\r\n\r\n"), "no chunked terminator");
    let line = eventually(Duration::from_secs(10), "the access log line", || {
        std::fs::read_to_string(&served.log)
            .unwrap()
            .lines()
            .find(|l| l.contains("wharf::access") && l.contains(&blob))
            .map(str::to_owned)
    });
    assert!(line.contains("complete=false"), "{line}");
}

/// `/readyz` writes and fsyncs a file: on the registry port it is answered
/// only to allowed networks (and one disk check runs at a time), while
/// `/healthz` reveals nothing and answers everyone.
#[test]
fn readyz_is_for_allowed_networks_and_healthz_for_everyone() {
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    up.push("small", "library/test:1", None, false);
    let w = Wharf::start_with(
        &rt,
        "plain_http = true\n",
        &Wharf::hub_block(&up, false, Path::new("/")),
        "[access]\ndeny_networks = [\"127.0.0.2/32\"]\n",
    );
    let from_denied = |path: &str| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--interface", "127.0.0.2"])
            .args(["-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("{}{path}", w.url()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(from_denied("/readyz"), "403");
    assert_eq!(from_denied("/healthz"), "200");
    // A burst of probes from an allowed client: all answered, quickly.
    let started = Instant::now();
    let probes: Vec<_> = (0..50)
        .map(|_| {
            let url = format!("{}/readyz", w.url());
            std::thread::spawn(move || http().get(url).send().unwrap().status().as_u16())
        })
        .collect();
    for p in probes {
        assert_eq!(p.join().unwrap(), 200);
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    Honest {
        base: w.url(),
        ca: None,
        admin: None,
        manifest: None,
    }
    .assert_served();
}

/// Regression (issue 14, item 7): HTTP/2 connections had no idle timeout
/// (hyper's pings keep a live but idle client's connection forever). Now
/// one with no request in flight for `idle_timeout` gets a GOAWAY and ends.
#[test]
fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    use frames::*;
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    up.push("small", "library/test:1", None, false);
    let w = Wharf::start_with(
        &rt,
        "plain_http = true\nidle_timeout = \"2s\"\nheader_timeout = \"3s\"\n",
        &Wharf::hub_block(&up, false, Path::new("/")),
        "",
    );
    let mut s = raw(w.addr);
    let mut out = preface();
    out.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, &get("/v2/")));
    s.write_all(&out).unwrap();
    let started = Instant::now();
    // This client never answers the PING of hyper's graceful close: the
    // connection ends at most a header timeout after the GOAWAY.
    let f = read_frames(&mut s, Duration::from_secs(20));
    let took = started.elapsed();
    assert!(
        f.iter().any(|f| f.0 == HEADERS && f.2 == 1),
        "the request was answered"
    );
    assert_eq!(goaway(&f), Some(0), "a graceful GOAWAY (NO_ERROR)");
    assert!(took < Duration::from_secs(15), "closed after {took:?}");
    Honest {
        base: w.url(),
        ca: None,
        admin: None,
        manifest: None,
    }
    .assert_served();
}
