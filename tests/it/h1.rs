//! wharf's own HTTP/1.1 loop for plain-text connections (`src/server/h1.rs`),
//! at the wire: keep-alive rules, pipelining, requests with bodies, HTTP/2 with
//! prior knowledge handed to hyper, and blobs (sent with sendfile) byte-exact,
//! whole and in ranges, cold and warm. Real clients exercise it everywhere
//! else; these are the corners they do not reach.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::harness::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn connect(f: &Fixture) -> TcpStream {
    let s = TcpStream::connect(f.w.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Reads until the peer closes the connection.
fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads exactly `n` responses to bodiless requests (`/v2/`, two-byte bodies)
/// from a keep-alive connection.
fn read_responses(s: &mut TcpStream, n: usize) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&out).matches("\r\n\r\n{}").count() < n {
        let k = s.read(&mut buf).unwrap();
        assert!(k > 0, "closed early: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..k]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn layer_digest(f: &Fixture, repo: &str, tag: &str) -> (String, u64) {
    let m: serde_json::Value = http()
        .get(format!("{}/v2/{repo}/manifests/{tag}", f.up.url()))
        .header("accept", OCI_MANIFEST)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let l = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|l| l["size"].as_u64())
        .unwrap();
    (
        l["digest"].as_str().unwrap().to_owned(),
        l["size"].as_u64().unwrap(),
    )
}

#[test]
fn keep_alive_pipelining_and_connection_rules() {
    let f = Fixture::plain(&[("small", "library/test:1")], "");

    // Two pipelined requests in one write, answered in order on one connection.
    let mut s = connect(&f);
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\nGET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let r = read_responses(&mut s, 2);
    assert_eq!(r.matches("HTTP/1.1 200 OK").count(), 2, "{r}");
    assert!(r.to_lowercase().contains("date: "), "{r}");
    // Still open: a third request on the same connection works.
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let r = read_to_close(&mut s);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.to_lowercase().contains("connection: close"), "{r}");

    // HTTP/1.0 without keep-alive: one answer, then the connection closes.
    let mut s = connect(&f);
    s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n").unwrap();
    let r = read_to_close(&mut s);
    assert!(r.starts_with("HTTP/1.0 200"), "{r}");
    // HTTP/1.0 asking for keep-alive (ab -k) gets it.
    let mut s = connect(&f);
    s.write_all(b"GET /v2/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let r = read_responses(&mut s, 1);
    assert!(r.to_lowercase().contains("connection: keep-alive"), "{r}");

    // A request with a body (a push) gets its OCI error, and the connection is
    // closed rather than the body taken for a next request.
    let mut s = connect(&f);
    s.write_all(
        b"PUT /v2/library/test/manifests/2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nGET /",
    )
    .unwrap();
    let r = read_to_close(&mut s);
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    assert!(r.contains("UNSUPPORTED"), "{r}");
    assert_eq!(r.matches("HTTP/1.1").count(), 1, "{r}");

    // Garbage is a 400, not a hang.
    let mut s = connect(&f);
    s.write_all(b"\x01\x02 nonsense\r\n\r\n").unwrap();
    let r = read_to_close(&mut s);
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");

    // HEAD: headers with the length of what GET would send, and no body (the
    // next response on the connection starts right after them).
    let mut s = connect(&f);
    s.write_all(b"HEAD /v2/ HTTP/1.1\r\nHost: x\r\n\r\nGET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let r = read_responses(&mut s, 1);
    assert_eq!(r.matches("HTTP/1.1 200").count(), 2, "{r}");
    assert!(r.to_lowercase().contains("content-length: 2\r\n"), "{r}");
}

#[test]
fn blobs_go_out_exact_cold_warm_ranged_and_over_h2c() {
    let f = Fixture::plain(&[("large", "library/big:1")], "");
    let (digest, size) = layer_digest(&f, "library/big", "1");
    let url = format!("{}/v2/library/big/blobs/{digest}", f.w.url());
    let c = http();

    // Cold (sent from the fill as it grows), then warm (from the cached file).
    for _ in 0..2 {
        let body = c.get(&url).send().unwrap().bytes().unwrap();
        assert_eq!(body.len() as u64, size);
        assert_eq!(
            wharf::registry::Digest::sha256_of(&body).to_string(),
            digest
        );
        f.w.wait_fills_settled();
    }
    assert_eq!(f.up.gets(&format!("/v2/library/big/blobs/{digest}")), 1);

    // A range from the middle, byte-exact against the whole.
    let whole = c.get(&url).send().unwrap().bytes().unwrap();
    let r = c
        .get(&url)
        .header("range", "bytes=1000000-1999999")
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(&r.bytes().unwrap()[..], &whole[1_000_000..2_000_000]);

    // HTTP/2 with prior knowledge on the plain port goes to hyper.
    let h2 = reqwest::blocking::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let r = h2.get(&url).send().unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let body = r.bytes().unwrap();
    assert_eq!(
        wharf::registry::Digest::sha256_of(&body).to_string(),
        digest
    );
}
