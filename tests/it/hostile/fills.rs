//! Hostile fills: an upstream whose blob downloads drip, lie about their size
//! or outgrow the cache, a shared fill started through a repository that
//! lacks the blob, and floods of requests for tags that do not exist. The
//! upstream is a real distribution registry behind a [`Tamper`] relay; each
//! case checks the specific safe outcome and that an honest client is still
//! served meanwhile.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::harness::*;

/// A registry, the tamper relay in front of it, and wharf in front of that.
/// Fields drop in order: wharf, the relay's runtime's users, the registry,
/// then the runtime.
struct Setup {
    w: Wharf,
    tamper: Tamper,
    up: Upstream,
    _rt: tokio::runtime::Runtime,
}

/// The honest client's cached manifest.
const HONEST_PATH: &str = "/v2/hub/library/honest/manifests/1";

fn accept() -> String {
    wharf::registry::MANIFEST_TYPES.join(", ")
}

impl Setup {
    /// Pushes `small` as `library/honest:1` (the honest client's manifest)
    /// and `pushes` (layout tag, destination); `cache_extra` goes into
    /// `[cache]`.
    fn start(pushes: &[(&str, &str)], cache_extra: &str) -> Setup {
        let rt = runtime();
        let up = Upstream::start(Auth::None, &rt);
        up.push("small", "library/honest:1", None, false);
        for (tag, dest) in pushes {
            up.push(tag, dest, None, false);
        }
        let tamper = Tamper::start(&rt, up.url());
        let block = format!(
            "[[upstream]]\nname = \"hub\"\nurl = \"{}\"\nprefix = \"hub\"\ndefault = true\n",
            tamper.url()
        );
        let w = Wharf::start(&rt, &block, cache_extra);
        let s = Setup {
            w,
            tamper,
            up,
            _rt: rt,
        };
        let r = http()
            .get(format!("{}{HONEST_PATH}", s.w.url()))
            .header("accept", accept())
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "the honest client's manifest is cached");
        s
    }

    fn honest(&self) -> Honest<'static> {
        Honest {
            base: self.w.url(),
            ca: None,
            admin: None,
            manifest: Some((HONEST_PATH.to_owned(), accept())),
        }
    }

    fn metric(&self, series: &str) -> f64 {
        let text = http()
            .get(format!("{}/metrics", self.w.url()))
            .send()
            .unwrap()
            .text()
            .unwrap();
        metric_value(&text, series)
    }

    /// Whether the blob is a file of the cache.
    fn cached(&self, digest: &str) -> bool {
        let hex = digest.strip_prefix("sha256:").unwrap();
        files_under(&self.w.cache_dir().join("blobs"))
            .iter()
            .any(|(p, _)| p.file_name().is_some_and(|n| n == hex))
    }

    /// Bytes of fills in progress (the cache's `tmp/`).
    fn tmp_bytes(&self) -> u64 {
        files_under(&self.w.cache_dir().join("tmp"))
            .iter()
            .map(|(_, n)| n)
            .sum()
    }
}

/// The largest layer of `repo:tag` on the registry: (digest, size).
fn layer(up: &Upstream, repo: &str, tag: &str) -> (String, u64) {
    let (bytes, _) = up.get_manifest(repo, tag);
    let m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
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

/// What a client got for a blob: the status and the body's digest and
/// length, or how the transfer broke.
type Got = Result<(u16, String, u64), String>;

/// GETs `url` in full, giving up after `limit`.
fn get_blob(url: &str, limit: Duration) -> Got {
    use std::io::Read;
    let client = reqwest::blocking::Client::builder()
        .timeout(limit)
        .build()
        .unwrap();
    let mut resp = client.get(url).send().map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let (mut h, mut total, mut buf) = (Sha256::new(), 0u64, vec![0u8; 1 << 16]);
    loop {
        let k = resp
            .read(&mut buf)
            .map_err(|e| format!("after {total} bytes: {e}"))?;
        if k == 0 {
            break;
        }
        total += k as u64;
        h.update(&buf[..k]);
    }
    Ok((
        status,
        format!("sha256:{}", hex::encode(h.finalize())),
        total,
    ))
}

/// A failed transfer a client can tell from a complete one: an error
/// status, or a body that broke off.
fn assert_failed_visibly(got: &Got, digest: &str, what: &str) {
    if let Ok((status, d, len)) = got {
        assert!(
            *status != 200 || d != digest,
            "{what}: a complete 200 ({len} bytes, {d})"
        );
        assert_ne!(*status, 200, "{what}: a 200 whose body ended cleanly");
    }
}

#[test]
fn a_dripping_upstream_fails_the_fill_for_every_reader_and_the_next_request_retries() {
    let s = Setup::start(
        &[("ev1", "library/ev:1")],
        "fill_min_rate = \"256KiB\"\nfill_rate_window = \"1s\"\n",
    );
    let (digest, size) = layer(&s.up, "library/ev", "1");
    assert!(size >= 3 << 20, "a 3 MiB layer: {size}");
    // 1 KiB every 50 ms: 20 KiB/s, hours for 3 MiB at that pace.
    s.tamper.set(Mangle {
        drip: Some((1024, Duration::from_millis(50))),
        ..Default::default()
    });
    // The upstream's answer waits at the relay until all three readers
    // share the fill (else a reader late under load would start a second).
    s.tamper.hold(&digest, "/all-readers-joined");
    let url = format!("{}/v2/library/ev/blobs/{digest}", s.w.url());
    let started = Instant::now();
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || get_blob(&url, Duration::from_secs(30)))
        })
        .collect();
    eventually(
        Duration::from_secs(10),
        "the readers to share one fill",
        || {
            s.w.mirror.fills_in_flight() == 1
                && s.metric(r#"wharf_coalesced_total{kind="blob"}"#) == 2.0
        },
    );
    let _ = http()
        .get(format!("{}/all-readers-joined", s.tamper.url()))
        .send();
    s.honest().assert_served();
    for (i, r) in readers.into_iter().enumerate() {
        let got = r.join().unwrap();
        assert_failed_visibly(&got, &digest, &format!("reader {i}"));
    }
    // A 1 s window, checked when it ends: well within 10 s (a drip was
    // followed for minutes before).
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "readers freed after {took:?}"
    );
    // One download for the three readers, counted where it arrives (the
    // registry logs a request only once its answer has ended).
    assert_eq!(s.tamper.count("GET", &format!("/blobs/{digest}")), 1);
    // Counted once the fill task has logged it, just after readers heard.
    eventually(Duration::from_secs(5), "the too_slow count", || {
        s.metric(r#"wharf_fills_failed_total{reason="too_slow",upstream="hub"}"#) == 1.0
    });
    assert!(!s.cached(&digest));
    // The next request starts a new download, which is healthy.
    s.tamper.set(Mangle::default());
    let (status, got, len) = get_blob(&url, Duration::from_secs(30)).unwrap();
    assert_eq!((status, got.as_str(), len), (200, digest.as_str(), size));
    s.w.wait_fills_settled();
    assert!(s.cached(&digest));
}

#[test]
fn a_download_of_unknown_size_stays_within_max_size() {
    let s = Setup::start(
        &[("large", "library/big:1")],
        "max_size = \"20MiB\"\nfill_reserve_step = \"1MiB\"\n",
    );
    let (digest, size) = layer(&s.up, "library/big", "1");
    assert!(size >= 64 << 20, "a 64 MiB layer: {size}");
    s.tamper.set(Mangle {
        length: Length::Chunked,
        ..Default::default()
    });
    // Watch tmp/ while the download runs (bounded: it stops with the test's
    // request, or after 60 s).
    let (stop, peak) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let watcher = {
        let (stop, peak, tmp) = (stop.clone(), peak.clone(), s.w.cache_dir().join("tmp"));
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                let n: u64 = files_under(&tmp).iter().map(|(_, n)| n).sum();
                peak.fetch_max(n, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let url = format!("{}/v2/library/big/blobs/{digest}", s.w.url());
    let reader = std::thread::spawn(move || get_blob(&url, Duration::from_secs(60)));
    s.honest().assert_served();
    let got = reader.join().unwrap();
    stop.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    assert_failed_visibly(&got, &digest, "the unknown-size download");
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        peak <= 21 << 20,
        "tmp/ peaked at {peak} bytes with a 20 MiB budget"
    );
    s.w.wait_fills_settled();
    assert!(!s.cached(&digest), "nothing past the budget is cached");
    assert_eq!(s.tmp_bytes(), 0);
    eventually(Duration::from_secs(5), "the no_room count", || {
        s.metric(r#"wharf_fills_failed_total{reason="no_room",upstream="hub"}"#) == 1.0
    });
}

#[test]
fn a_lying_content_length_does_not_empty_the_cache() {
    let s = Setup::start(
        &[
            ("ev1", "library/ev:1"),
            ("ev2", "library/ev:2"),
            ("ev3", "library/ev:3"),
        ],
        "max_size = \"20MiB\"\nfill_reserve_step = \"1MiB\"\n",
    );
    let held: Vec<String> = ["1", "2"]
        .iter()
        .map(|t| layer(&s.up, "library/ev", t).0)
        .collect();
    for d in &held {
        let url = format!("{}/v2/library/ev/blobs/{d}", s.w.url());
        let (status, got, _) = get_blob(&url, Duration::from_secs(30)).unwrap();
        assert_eq!((status, &got), (200, d));
    }
    s.w.wait_fills_settled();
    assert!(held.iter().all(|d| s.cached(d)));

    let (lied_about, _) = layer(&s.up, "library/ev", "3");
    let url = format!("{}/v2/library/ev/blobs/{lied_about}", s.w.url());
    // Just under the budget: before, room for all of it was made at once,
    // by evicting everything; the body is 3 MiB.
    s.tamper.set(Mangle {
        length: Length::Fake(19 << 20),
        ..Default::default()
    });
    let got = get_blob(&url, Duration::from_secs(30));
    assert_failed_visibly(&got, &lied_about, "a body shorter than announced");
    s.honest().assert_served();
    // Larger than the budget: refused before any byte, nothing evicted.
    s.tamper.set(Mangle {
        length: Length::Fake(1 << 40),
        ..Default::default()
    });
    let got = get_blob(&url, Duration::from_secs(30));
    assert!(
        matches!(got, Ok((503, _, _))),
        "a blob larger than the budget: {got:?}"
    );
    s.w.wait_fills_settled();
    for d in &held {
        assert!(s.cached(d), "{d} survived the lying Content-Lengths");
    }
    assert!(!s.cached(&lied_about));
    assert_eq!(s.tmp_bytes(), 0);
}

#[test]
fn a_shared_fill_whose_leader_repository_lacks_the_blob_does_not_answer_404_to_others() {
    let s = Setup::start(&[("ev1", "library/a:1")], "");
    let (digest, size) = layer(&s.up, "library/a", "1");
    // B's download waits at the relay until A's request reaches the
    // upstream: B leads the shared fill, A joins it, then B's 404 comes.
    s.tamper
        .hold("/v2/library/b/blobs/", "/v2/library/a/blobs/");
    let b = {
        let url = format!("{}/v2/library/b/blobs/{digest}", s.w.url());
        std::thread::spawn(move || get_blob(&url, Duration::from_secs(30)))
    };
    eventually(
        Duration::from_secs(10),
        "B's download to reach the relay",
        || s.tamper.count("GET", "/v2/library/b/blobs/") == 1,
    );
    let url = format!("{}/v2/library/a/blobs/{digest}", s.w.url());
    let a = get_blob(&url, Duration::from_secs(30)).unwrap();
    assert_eq!(
        (a.0, a.1.as_str(), a.2),
        (200, digest.as_str(), size),
        "A holds the blob; B's 404 is not A's answer"
    );
    let b = b.join().unwrap().unwrap();
    assert_eq!(b.0, 404, "B lacks it");
    s.honest().assert_served();
    s.w.wait_fills_settled();
    assert!(s.cached(&digest));
    // And B still may not read it from the cache.
    let b_again = get_blob(
        &format!("{}/v2/library/b/blobs/{digest}", s.w.url()),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(b_again.0, 404);
}

#[test]
fn repeated_requests_for_a_missing_tag_reach_the_upstream_once_per_negative_ttl() {
    let s = Setup::start(&[], "negative_ttl = \"3s\"\n");
    let get = |path: &str| {
        http()
            .get(format!("{}{path}", s.w.url()))
            .header("accept", accept())
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    for _ in 0..5 {
        assert_eq!(get("/v2/library/honest/manifests/nope"), 404);
    }
    assert_eq!(
        s.tamper.count("GET", "/v2/library/honest/manifests/nope"),
        1,
        "one upstream request for five client requests"
    );
    assert_eq!(
        s.metric(r#"wharf_negative_cache_hits_total{upstream="hub"}"#),
        4.0
    );
    // Per repository: another's answer is its own.
    assert_eq!(get("/v2/library/other/manifests/nope"), 404);
    assert_eq!(s.tamper.count("GET", "/v2/library/other/manifests/nope"), 1);
    // Briefly: once pushed, the tag shows within the TTL's bound.
    s.up.push("small", "library/honest:nope", None, false);
    eventually(
        Duration::from_secs(10),
        "the pushed tag to be served",
        || get("/v2/library/honest/manifests/nope") == 200,
    );
    s.honest().assert_served();
}

#[test]
fn a_429_after_a_flood_of_unknown_tags_leaves_cached_content_served() {
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    up.push("small", "library/honest:1", None, false);
    up.push("ev1", "library/ev:1", None, false);
    let limiter = RateLimiter::start(&rt, up.url());
    let block = format!(
        "[[upstream]]\nname = \"hub\"\nurl = \"http://127.0.0.1:{}\"\nprefix = \"hub\"\ndefault = true\n",
        limiter.port
    );
    let w = Wharf::start(&rt, &block, "tag_ttl = \"1s\"\n");
    let pull = |path: &str| {
        http()
            .get(format!("{}{path}", w.url()))
            .header("accept", accept())
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(pull(HONEST_PATH), 200);
    let (digest, _) = layer(&up, "library/ev", "1");
    let blob = format!("/v2/library/ev/blobs/{digest}");
    assert_eq!(pull(&blob), 200);
    w.wait_fills_settled();
    // Random tags until the upstream says 429 (the limiter's switch stands
    // in for Docker Hub's count).
    for i in 0..20 {
        if i == 10 {
            limiter.limited.store(true, Ordering::SeqCst);
        }
        let status = pull(&format!("/v2/library/honest/manifests/nope-{i}"));
        assert!(status == 404 || status == 429, "tag {i}: {status}");
    }
    // wharf now backs off from the whole upstream; cached content, a tag
    // past its TTL included (stale-if-error), is still served.
    let honest = Honest {
        base: w.url(),
        ca: None,
        admin: None,
        manifest: Some((HONEST_PATH.to_owned(), accept())),
    };
    honest.assert_served();
    assert_eq!(pull(&blob), 200);
    // What is not cached is refused with 429 and Retry-After until the
    // backoff ends, whichever repository asked.
    let asked = Instant::now();
    assert_eq!(pull("/v2/library/ev/manifests/1"), 429);
    assert!(
        asked.elapsed() <= HONEST_DEADLINE,
        "refused without waiting"
    );
    drop(w);
}

#[test]
fn a_sync_that_finds_a_missing_tag_overrides_the_negative_cache() {
    let s = Setup::start(&[], "negative_ttl = \"1h\"\n");
    let path = "/v2/library/honest/manifests/later";
    let get = || {
        http()
            .get(format!("{}{path}", s.w.url()))
            .header("accept", accept())
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(get(), 404);
    s.up.push("small", "library/honest:later", None, false);
    assert_eq!(get(), 404, "remembered (for up to an hour here)");
    // What a sync run does for the tag: HEAD, the manifest by digest, the tag.
    let m = &s.w.mirror;
    let r = m
        .routed("hub", "library/honest".parse().unwrap())
        .expect("the upstream is configured");
    let tag: wharf::registry::Tag = "later".parse().unwrap();
    s._rt.block_on(async {
        let (d, _) = m.head_tag(&r, &tag).await.unwrap();
        let held = m.ensure_manifest(&r, &d).await.unwrap();
        m.set_tag(&r, &tag, &held).unwrap();
    });
    assert_eq!(get(), 200, "the sync's tag is served at once");
    assert_eq!(s.tamper.count("GET", path), 1);
}

#[test]
fn corrupt_and_cut_bodies_fail_every_reader_visibly_and_cache_nothing() {
    let s = Setup::start(&[("ev1", "library/ev:1")], "");
    let (digest, size) = layer(&s.up, "library/ev", "1");
    let url = format!("{}/v2/library/ev/blobs/{digest}", s.w.url());
    for (what, m) in [
        (
            "a corrupt chunked body",
            Mangle {
                length: Length::Chunked,
                corrupt: true,
                ..Default::default()
            },
        ),
        (
            "a corrupt body of the right length",
            Mangle {
                corrupt: true,
                ..Default::default()
            },
        ),
        (
            "a body cut mid-way",
            Mangle {
                cut_after: Some(size / 2),
                ..Default::default()
            },
        ),
    ] {
        s.tamper.set(m);
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let url = url.clone();
                std::thread::spawn(move || get_blob(&url, Duration::from_secs(30)))
            })
            .collect();
        for r in readers {
            assert_failed_visibly(&r.join().unwrap(), &digest, what);
        }
        s.w.wait_fills_settled();
        assert!(!s.cached(&digest), "{what}: nothing cached");
        assert_eq!(s.tmp_bytes(), 0, "{what}: no temp file left");
    }
    s.honest().assert_served();
    s.tamper.set(Mangle::default());
    let (status, got, len) = get_blob(&url, Duration::from_secs(30)).unwrap();
    assert_eq!((status, got.as_str(), len), (200, digest.as_str(), size));
}

/// The config blob of `repo:tag`.
fn config_blob(up: &Upstream, repo: &str, tag: &str) -> String {
    let (bytes, _) = up.get_manifest(repo, tag);
    let m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    m["config"]["digest"].as_str().unwrap().to_owned()
}

#[test]
fn downloads_beyond_max_fills_wait_one_window_then_get_503() {
    let s = Setup::start(
        &[("ev1", "library/ev:1")],
        "max_fills = 1\nfill_rate_window = \"2s\"\n",
    );
    let (layer_digest, size) = layer(&s.up, "library/ev", "1");
    let config = config_blob(&s.up, "library/ev", "1");
    // The layer's download takes the only slot and waits at the relay
    // (until a request for "/release-the-layer", or 20 s).
    s.tamper.hold(&layer_digest, "/release-the-layer");
    let layer_url = format!("{}/v2/library/ev/blobs/{layer_digest}", s.w.url());
    let first = {
        let url = layer_url.clone();
        std::thread::spawn(move || get_blob(&url, Duration::from_secs(60)))
    };
    eventually(
        Duration::from_secs(10),
        "the layer's download to start",
        || s.tamper.count("GET", &layer_digest) == 1,
    );
    // Another digest finds no slot: it waits one window, then is refused
    // with Retry-After, and never reached the upstream.
    let r = http()
        .get(format!("{}/v2/library/ev/blobs/{config}", s.w.url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "2");
    assert!(r.text().unwrap().contains("cache.max_fills"));
    assert_eq!(s.tamper.count("GET", &config), 0);
    assert_eq!(
        s.metric(r#"wharf_fills_failed_total{reason="busy",upstream="hub"}"#),
        1.0
    );
    assert_eq!(s.metric("wharf_fills_waiting"), 0.0);
    s.honest().assert_served();
    // The running download was not disturbed, and once it ends the slot is
    // free again.
    let _ = http()
        .get(format!("{}/release-the-layer", s.tamper.url()))
        .send();
    let (status, got, len) = first.join().unwrap().unwrap();
    assert_eq!(
        (status, got.as_str(), len),
        (200, layer_digest.as_str(), size)
    );
    s.w.wait_fills_settled();
    let (status, got, _) = get_blob(
        &format!("{}/v2/library/ev/blobs/{config}", s.w.url()),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!((status, got.as_str()), (200, config.as_str()));
}
