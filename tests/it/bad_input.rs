//! Bad input gets a clear OCI error before anything touches disk or the network.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use crate::harness::*;

/// Sends a raw HTTP/1.1 request (no client-side path normalisation) and returns
/// the status and body.
pub fn raw(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn oci_code(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[test]
fn invalid_requests_are_refused_before_any_io() {
    let f = Fixture::plain(&[], "");
    let (up, w) = (&f.up, &f.w);
    let before = up.requests();
    let long_name = format!("/v2/{}x/manifests/latest", "a/".repeat(200));
    let long_tag = format!("/v2/a/manifests/{}", "t".repeat(129));
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "GET",
            "/v2/../../etc/passwd/manifests/latest".into(),
            400,
            "NAME_INVALID",
        ),
        (
            "GET",
            "/v2/library/%2e%2e/%2e%2e/manifests/latest".into(),
            400,
            "NAME_INVALID",
        ),
        (
            "GET",
            "/v2/%2e%2e/blobs/".to_string() + D,
            400,
            "NAME_INVALID",
        ),
        (
            "GET",
            "/v2/UPPER/manifests/latest".into(),
            400,
            "NAME_INVALID",
        ),
        (
            "GET",
            "/v2/a//b/manifests/latest".into(),
            400,
            "NAME_INVALID",
        ),
        ("GET", long_name, 400, "NAME_INVALID"),
        // A tag that cannot exist is not found (OCI conformance: 404), still
        // before any I/O.
        (
            "GET",
            "/v2/a/manifests/-bad".into(),
            404,
            "MANIFEST_UNKNOWN",
        ),
        ("GET", long_tag, 404, "MANIFEST_UNKNOWN"),
        (
            "GET",
            "/v2/a/manifests/.INVALID_MANIFEST_NAME".into(),
            404,
            "MANIFEST_UNKNOWN",
        ),
        ("GET", "/v2/a/manifests/..".into(), 400, "MANIFEST_INVALID"),
        (
            "GET",
            "/v2/a/manifests/sha256:xyz".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "GET",
            "/v2/a/blobs/sha256:abc".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "GET",
            "/v2/a/blobs/sha256:../../../../etc/passwd".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "GET",
            "/v2/a/blobs/md5:d41d8cd98f00b204e9800998ecf8427e".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "GET",
            "/v2/a/manifests/1?ns=registry.evil.example".into(),
            404,
            "NAME_UNKNOWN",
        ),
        (
            "GET",
            "/v2/a/manifests/1?ns=a/../../b".into(),
            400,
            "NAME_INVALID",
        ),
        ("GET", "/nope/v2/a/manifests/1".into(), 404, "NAME_UNKNOWN"),
        ("PUT", "/v2/a/manifests/1".into(), 405, "UNSUPPORTED"),
        ("DELETE", "/v2/a/manifests/1".into(), 405, "UNSUPPORTED"),
        ("DELETE", format!("/v2/a/blobs/{D}"), 405, "UNSUPPORTED"),
        ("POST", "/v2/a/blobs/uploads/".into(), 405, "UNSUPPORTED"),
        (
            "PATCH",
            "/v2/a/blobs/uploads/abc-123".into(),
            405,
            "UNSUPPORTED",
        ),
        ("GET", "/v2/_catalog".into(), 404, "UNSUPPORTED"),
        ("GET", "/index.html".into(), 404, "UNSUPPORTED"),
    ];
    for (method, path, status, code) in &cases {
        let (got, body) = raw(w.addr, method, path);
        assert_eq!(
            (got, oci_code(&body).as_str()),
            (*status, *code),
            "{method} {path}: {body}"
        );
    }
    // The OCI conformance suite's pull workflow asks this with HEAD too.
    let (got, _) = raw(w.addr, "HEAD", "/v2/a/manifests/.INVALID_MANIFEST_NAME");
    assert_eq!(got, 404, "HEAD of an invalid tag");
    assert_eq!(up.requests(), before, "no bad request reached the upstream");
    assert_eq!(w.cached_blobs(), 0, "and nothing touched the cache");
}

#[test]
fn missing_objects_are_reported_with_the_right_code() {
    let f = Fixture::plain(&[("small", "library/test:1")], "");
    let w = &f.w;
    let (s, b) = raw(w.addr, "GET", "/v2/library/test/manifests/nope");
    assert_eq!((s, oci_code(&b).as_str()), (404, "MANIFEST_UNKNOWN"), "{b}");
    let (s, b) = raw(w.addr, "GET", &format!("/v2/library/test/blobs/{D}"));
    assert_eq!((s, oci_code(&b).as_str()), (404, "BLOB_UNKNOWN"), "{b}");
    let (s, b) = raw(w.addr, "GET", "/v2/library/nothere/tags/list");
    assert_eq!((s, oci_code(&b).as_str()), (404, "NAME_UNKNOWN"), "{b}");
}

#[test]
fn a_manifest_not_matching_its_digest_is_refused_and_not_cached() {
    let f = Fixture::plain(&[("small", "library/test:1")], "");
    let (up, w) = (&f.up, &f.w);
    let digest = crate::pull::manifest_digest(&up.url(), "library/test", "1");
    crate::coalescing::corrupt_upstream_manifest(up, &digest);
    for path in [
        format!("/v2/library/test/manifests/{digest}"),
        "/v2/library/test/manifests/1".to_string(),
    ] {
        let (s, b) = raw(w.addr, "GET", &path);
        assert_eq!(
            (s, oci_code(&b).as_str()),
            (502, "DIGEST_INVALID"),
            "{path}: {b}"
        );
        assert!(b.contains("nothing was cached"), "{b}");
    }
    assert_eq!(w.cached_blobs(), 0);
}

#[test]
fn a_client_going_away_does_not_break_the_fill() {
    let f = Fixture::plain(&[("large", "library/big:1")], "");
    let (up, w) = (&f.up, &f.w);
    let r = http()
        .get(format!("{}/v2/library/big/manifests/1", w.url()))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap();
    let m: serde_json::Value = r.json().unwrap();
    let layers = m["layers"].as_array().unwrap();
    let big = layers.iter().max_by_key(|l| l["size"].as_u64()).unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    // Read a little and hang up.
    {
        let mut s = TcpStream::connect(w.addr).unwrap();
        write!(
            s,
            "GET /v2/library/big/blobs/{big} HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        .unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).unwrap();
    }
    // The fill goes on and the blob is cached, verified.
    w.wait_fills_settled();
    let (s, _) = raw(w.addr, "HEAD", &format!("/v2/library/big/blobs/{big}"));
    assert_eq!(s, 200);
    assert_eq!(up.gets(&format!("/v2/library/big/blobs/{big}")), 1);
}
