//! Concurrent cold requests for one blob share one upstream fetch, stream while
//! it fills, and all fail cleanly (nothing cached) when the upstream lies.

use std::sync::{Arc, Barrier};

use sha2::{Digest as _, Sha256};

use crate::harness::*;

/// The largest layer of a manifest on the upstream: (digest, size).
fn largest_layer(up: &Upstream, repo: &str, tag: &str) -> (String, u64) {
    let r = http()
        .get(format!("{}/v2/{repo}/manifests/{tag}", up.url()))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap();
    let m: serde_json::Value = r.json().unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_owned(),
                l["size"].as_u64().unwrap(),
            )
        })
        .max_by_key(|(_, s)| *s)
        .unwrap()
}

/// Fires `n` simultaneous GETs; returns, per client, the status and the body's
/// sha256 (or the transfer error).
fn fire(url: &str, n: usize) -> Vec<Result<(u16, String, usize), String>> {
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (b, url) = (barrier.clone(), url.to_owned());
            std::thread::spawn(move || {
                let client = http();
                b.wait();
                let mut resp = client.get(&url).send().map_err(|e| e.to_string())?;
                let status = resp.status().as_u16();
                let mut h = Sha256::new();
                let mut buf = vec![0u8; 1 << 16];
                let mut total = 0;
                loop {
                    use std::io::Read;
                    let k = resp
                        .read(&mut buf)
                        .map_err(|e| format!("after {total} bytes: {e}"))?;
                    if k == 0 {
                        break;
                    }
                    total += k;
                    h.update(&buf[..k]);
                }
                Ok((
                    status,
                    format!("sha256:{}", hex::encode(h.finalize())),
                    total,
                ))
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn twelve_cold_clients_share_one_upstream_fetch_of_a_large_blob() {
    let f = Fixture::plain(&[("large", "library/big:1")], "");
    let (up, w) = (&f.up, &f.w);
    let (digest, size) = largest_layer(up, "library/big", "1");
    assert!(
        size >= 64 * 1024 * 1024,
        "the large layer is at least 64 MiB: {size}"
    );

    let results = fire(&format!("{}/v2/library/big/blobs/{digest}", w.url()), 12);
    for r in &results {
        let (status, got, len) = r.as_ref().expect("every client completes");
        assert_eq!(*status, 200);
        assert_eq!(*len as u64, size);
        assert_eq!(got, &digest, "every client got the right bytes");
    }
    assert_eq!(
        up.gets(&format!("/v2/library/big/blobs/{digest}")),
        1,
        "the upstream served the blob once"
    );
    w.wait_fills_settled();

    // And from cache now: still once upstream.
    let again = fire(&format!("{}/v2/library/big/blobs/{digest}", w.url()), 3);
    assert!(again.iter().all(|r| r
        .as_ref()
        .map(|(s, d, _)| *s == 200 && d == &digest)
        .unwrap_or(false)));
    assert_eq!(up.gets(&format!("/v2/library/big/blobs/{digest}")), 1);
}

/// Overwrites a blob in the upstream's own storage with different bytes of the
/// same length: a real registry now serves content that does not match.
pub fn corrupt_upstream_blob(up: &Upstream, digest: &str) {
    let hex = digest.strip_prefix("sha256:").unwrap();
    let p = up
        .storage()
        .join(format!("blobs/sha256/{}/{hex}/data", &hex[..2]));
    let mut bytes = std::fs::read(&p).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&p, bytes).unwrap();
}

/// Like [`corrupt_upstream_blob`], but keeps a manifest valid JSON (distribution
/// parses manifests before serving them): one hex digit of the config digest
/// changes, so the bytes no longer match the manifest's own digest.
pub fn corrupt_upstream_manifest(up: &Upstream, digest: &str) {
    let hex = digest.strip_prefix("sha256:").unwrap();
    let p = up
        .storage()
        .join(format!("blobs/sha256/{}/{hex}/data", &hex[..2]));
    let text = std::fs::read_to_string(&p).unwrap();
    let i = text.find("\"sha256:").unwrap() + 8;
    let c = if &text[i..i + 1] == "0" { "1" } else { "0" };
    let changed = format!("{}{c}{}", &text[..i], &text[i + 1..]);
    assert_eq!(changed.len(), text.len());
    std::fs::write(&p, changed).unwrap();
}

#[test]
fn a_lying_upstream_fails_every_waiting_client_and_nothing_is_cached() {
    let f = Fixture::plain(&[("large", "library/big:1")], "");
    let (up, w) = (&f.up, &f.w);
    let (digest, size) = largest_layer(up, "library/big", "1");
    corrupt_upstream_blob(up, &digest);

    for round in 0..2 {
        let results = fire(&format!("{}/v2/library/big/blobs/{digest}", w.url()), 10);
        for r in &results {
            match r {
                // The transfer broke off before Content-Length: the right outcome.
                Err(e) => assert!(e.contains("bytes"), "{e}"),
                // Or an error status; never a complete 200 with wrong bytes.
                Ok((status, got, len)) => {
                    assert!(
                        *status != 200 || (*len as u64) < size,
                        "round {round}: complete body with {got}"
                    );
                }
            }
        }
        assert_eq!(w.cached_blobs(), 0, "nothing cached");
        w.wait_fills_settled();
    }
    // Each round tried the upstream again: a failure is not cached either.
    assert_eq!(up.gets(&format!("/v2/library/big/blobs/{digest}")), 2);
    assert_eq!(
        std::fs::read_dir(w.cache_dir().join("tmp"))
            .unwrap()
            .count(),
        0,
        "temp files removed"
    );
}
