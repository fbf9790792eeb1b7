//! What an operator watches while wharf runs: metrics that add up after a
//! known sequence of pulls, `/healthz` and `/readyz` on the admin listener,
//! and a SIGTERM that lets transfers finish. wharf runs as its binary, as in
//! production.

use std::process::Command;
use std::time::Duration;

use crate::cache_life::{blob_bytes, cached, Parts};
use crate::harness::*;

#[test]
fn metrics_add_up_after_a_known_sequence() {
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    up.push("small", "library/test:1", None, false);
    up.push("large", "library/large:1", None, false);
    let small = Parts::of(&up, "library/test", "1");
    let large = Parts::of(&up, "library/large", "1");
    let relay = throttled_relay(&rt, up.addr(), 64 << 20);
    let dir = tempfile::tempdir().unwrap();
    let body = Wharf::hub_block(&up, false, dir.path())
        .replace(&up.url(), &format!("http://127.0.0.1:{relay}"));
    let w = Served::start(
        dir.path(),
        "wharf",
        &format!("[log]\nformat = \"json\"\n{body}"),
    );
    let c = http();
    let get = |path: &str| {
        let r = c
            .get(format!("{}{path}", w.url()))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .unwrap();
        (r.status().as_u16(), r.bytes().unwrap().len() as u64)
    };
    assert_eq!(get("/v2/library/test/manifests/1").0, 200); // miss
    let (config, layer) = (&small.config, &small.layers[0]);
    assert_eq!(
        get(&format!("/v2/library/test/blobs/{}", config.0)),
        (200, config.1)
    ); // miss
    assert_eq!(
        get(&format!("/v2/library/test/blobs/{}", layer.0)),
        (200, layer.1)
    ); // miss
       // Clients finish when the digest matched; the fill commits just after.
    eventually(Duration::from_secs(30), "the fills to commit", || {
        w.metric("wharf_fills_in_flight") == 0.0
    });
    assert_eq!(
        get(&format!("/v2/library/test/blobs/{}", layer.0)),
        (200, layer.1)
    ); // hit
    let r = c
        .head(format!("{}/v2/library/test/manifests/1", w.url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200); // hit
    assert_eq!(
        get(&format!("/v2/library/test/manifests/{}", small.manifest.0)).0,
        200
    ); // hit
    assert_eq!(get("/v2/library/test/manifests/nope").0, 404); // upstream 404
                                                               // Four clients at once on a cold 64 MiB layer: one fetch, three waiters.
    let big = large.top_layer().to_owned();
    let url = format!("{}/v2/library/large/blobs/{big}", w.url());
    let joins: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                http().get(url).send().unwrap().bytes().unwrap().len() as u64
            })
        })
        .collect();
    let big_size = large.layers.last().unwrap().1;
    for j in joins {
        assert_eq!(j.join().unwrap(), big_size);
    }
    let text = w.metrics();
    let m = |s: &str| metric_value(&text, s);
    assert_eq!(
        m("wharf_requests_total{endpoint=\"manifest\",method=\"GET\",status=\"200\"}"),
        2.0,
        "{text}"
    );
    assert_eq!(
        m("wharf_requests_total{endpoint=\"manifest\",method=\"HEAD\",status=\"200\"}"),
        1.0
    );
    assert_eq!(
        m("wharf_requests_total{endpoint=\"manifest\",method=\"GET\",status=\"404\"}"),
        1.0
    );
    assert_eq!(
        m("wharf_requests_total{endpoint=\"blob\",method=\"GET\",status=\"200\"}"),
        7.0
    );
    assert_eq!(
        m("wharf_cache_results_total{endpoint=\"manifest\",result=\"miss\"}"),
        1.0
    );
    assert_eq!(
        m("wharf_cache_results_total{endpoint=\"manifest\",result=\"hit\"}"),
        2.0
    );
    assert_eq!(
        m("wharf_cache_results_total{endpoint=\"blob\",result=\"miss\"}"),
        3.0
    );
    assert_eq!(
        m("wharf_cache_results_total{endpoint=\"blob\",result=\"hit\"}"),
        1.0
    );
    assert_eq!(
        m("wharf_cache_results_total{endpoint=\"blob\",result=\"coalesced\"}"),
        3.0
    );
    assert_eq!(m("wharf_coalesced_total{kind=\"blob\"}"), 3.0);
    // Bytes: what clients got, split by source, adds up; the upstream sent
    // each blob once.
    let served = m("wharf_served_bytes_total{source=\"cache\"}")
        + m("wharf_served_bytes_total{source=\"upstream\"}");
    assert_eq!(
        served as u64,
        config.1 + 2 * layer.1 + 4 * big_size,
        "{text}"
    );
    assert!(m("wharf_served_bytes_total{source=\"cache\"}") as u64 >= layer.1);
    assert_eq!(
        m("wharf_upstream_bytes_total{upstream=\"hub\"}") as u64,
        config.1 + layer.1 + big_size
    );
    assert_eq!(
        m("wharf_upstream_request_duration_seconds_count{op=\"blob\",upstream=\"hub\"}"),
        3.0
    );
    assert_eq!(
        m("wharf_upstream_errors_total{kind=\"not_found\",upstream=\"hub\"}"),
        1.0
    );
    let cache = dir.path().join("cache");
    eventually(
        Duration::from_secs(30),
        "the big fill to be committed",
        || cached(&cache, &big),
    );
    let text = w.metrics();
    assert_eq!(
        metric_value(&text, "wharf_cache_size_bytes") as u64,
        blob_bytes(&cache)
    );
    assert_eq!(
        metric_value(&text, "wharf_cache_blobs") as usize,
        files_under(&cache.join("blobs")).len()
    );
    assert_eq!(metric_value(&text, "wharf_evicted_blobs_total"), 0.0);
    assert_eq!(
        metric_value(&text, "wharf_upstream_up{upstream=\"hub\"}"),
        1.0
    );
    // One JSON access line per request, the blob ones with the bytes sent.
    let log = std::fs::read_to_string(&w.log).unwrap();
    let access: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "wharf::access" && v["endpoint"] != "other")
        .collect();
    assert_eq!(access.len(), 11, "{log}");
    let bigs: Vec<_> = access
        .iter()
        .filter(|v| v["path"].as_str().unwrap_or("").contains(&big))
        .collect();
    assert_eq!(bigs.len(), 4);
    for v in bigs {
        assert_eq!(v["bytes"].as_u64(), Some(big_size), "{v}");
        assert_eq!(v["complete"], true);
        assert_eq!(v["upstream"], "hub");
        assert!(v["ms"].as_f64().is_some() && v["status"] == 200, "{v}");
        assert!(v["cache"] == "miss" || v["cache"] == "coalesced", "{v}");
    }
}

#[test]
fn sigterm_lets_transfers_finish_and_the_admin_listener_reports_health() {
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    up.push("large", "library/large:1", None, false);
    let large = Parts::of(&up, "library/large", "1");
    let relay = throttled_relay(&rt, up.addr(), 12 << 20);
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let body = Wharf::hub_block(&up, false, dir.path())
        .replace(&up.url(), &format!("http://127.0.0.1:{relay}"));
    let mut w = Served::spawn_with(
        dir.path(),
        "wharf",
        &format!("admin_listen = \"127.0.0.1:{admin}\"\nshutdown_grace = \"30s\"\n"),
        &body,
        free_port(),
    );
    w.wait_ready();
    wait_listening(([127, 0, 0, 1], admin).into(), None);
    let port = w.port;
    let a = format!("http://127.0.0.1:{admin}");
    let r = http().get(format!("{a}/healthz")).send().unwrap();
    assert_eq!(
        (r.status().as_u16(), r.text().unwrap()),
        (200, "ok\n".into())
    );
    let r = http().get(format!("{a}/readyz")).send().unwrap();
    assert_eq!(r.status(), 200);
    let ready: serde_json::Value = r.json().unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["cache"]["writable"], true);
    assert_eq!(ready["upstreams"]["hub"], "unknown", "nothing asked yet");
    let r = http().get(format!("{a}/metrics")).send().unwrap();
    assert!(r.status() == 200 && r.text().unwrap().contains("wharf_cache_size_bytes"));
    let main = format!("http://127.0.0.1:{port}");
    assert_eq!(
        http()
            .get(format!("{main}/metrics"))
            .send()
            .unwrap()
            .status(),
        404,
        "metrics only on the admin listener"
    );

    // A 64 MiB layer at 12 MiB/s: SIGTERM once it streams; it still completes.
    let big = large.top_layer().to_owned();
    let url = format!("{main}/v2/library/large/blobs/{big}");
    let getter = std::thread::spawn(move || {
        use sha2::Digest as _;
        let bytes = http().get(url).send().unwrap().bytes().unwrap();
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)))
    });
    let cache = dir.path().join("cache");
    eventually(
        Duration::from_secs(30),
        "the layer's bytes to arrive",
        || files_under(&cache.join("tmp")).iter().any(|(_, l)| *l > 0),
    );
    let ready: serde_json::Value = http()
        .get(format!("{a}/readyz"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(ready["upstreams"]["hub"], "reachable", "{ready}");
    run(Command::new("kill").args(["-TERM", &w.pid().to_string()]));
    eventually(
        Duration::from_secs(5),
        "the listener to close after SIGTERM (still accepting)",
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
    );
    assert_eq!(
        getter.join().unwrap(),
        big,
        "the transfer in flight completed"
    );
    let status = w.terminate().unwrap();
    let log = std::fs::read_to_string(&w.log).unwrap();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("shutting down") && log.contains("wharf stopped"),
        "{log}"
    );
    // The fill finished in the grace period and its metadata was flushed:
    // after a restart the layer is a hit, without the upstream.
    assert!(cached(&cache, &big));
    let (files, bad) = rehash_cache(&cache);
    assert!(files > 0 && bad.is_empty());
}
