//! The status page after a known sequence of pulls: its figures equal
//! `/metrics`, `wharf du` and `wharf ls` at the same moment; it is served to
//! loopback only, changes nothing and shows no secret; and in a real
//! Chromium (no network but wharf) it renders those figures, escapes what
//! upstreams wrote, loads nothing from elsewhere and breaks no CSP rule.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::cache_life::{blob_bytes, Parts};
use crate::harness::browser::{external_refs, png_size, Browser};
use crate::harness::*;

const INDEX_MT: &str = "application/vnd.oci.image.index.v1+json";
/// What a hostile upstream put in an index's platform.
const EVIL_OS: &str = "<script>window.p=1</script>";

/// wharf after the sequence, with its admin listener.
struct Scene {
    up: Upstream,
    _odd: HostileUpstream,
    _rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    w: Served,
    admin: u16,
}

impl Scene {
    fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }

    fn api(&self, view: &str) -> serde_json::Value {
        let r = http()
            .get(self.admin_url(&format!("/api/{view}")))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "/api/{view}");
        r.json().unwrap()
    }

    fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let (ok, out) = self.w.cli(args);
        assert!(ok, "{args:?}: {out}");
        serde_json::from_str(out.split("(done by").next().unwrap()).unwrap()
    }
}

/// Pulls through wharf (plain HTTP GETs): misses, hits, a coalesced fill of
/// a 64 MiB layer, an eviction, an upstream 404, an unreachable upstream,
/// and an index whose platform holds `<script>`.
fn scene() -> Scene {
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    up.push("large", "library/large:1", None, false);
    for i in 1..=3 {
        up.push(&format!("ev{i}"), &format!("library/ev{i}:1"), None, false);
    }
    let large = Parts::of(&up, "library/large", "1");
    let evs: Vec<Parts> = (1..=3)
        .map(|i| Parts::of(&up, &format!("library/ev{i}"), "1"))
        .collect();
    // An index over ev1, with a platform a hostile upstream wrote.
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": INDEX_MT, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": evs[0].manifest.0, "size": evs[0].manifest.1,
            "platform": {"os": EVIL_OS, "architecture": "amd64"}}]}))
    .unwrap();
    up.put_manifest("library/ev1", "multi", &index, INDEX_MT);

    // Budget: everything; the high mark is passed only by the last image.
    let mut all: BTreeSet<(String, u64)> = BTreeSet::new();
    for p in std::iter::once(&large).chain(&evs) {
        all.insert(p.manifest.clone());
        all.insert(p.config.clone());
        all.extend(p.layers.iter().cloned());
    }
    let max = all.iter().map(|(_, s)| s).sum::<u64>() + index.len() as u64;
    let last = evs[2].unique_size(&evs[2].layers[0].0);
    let high = (max as f64 - 0.5 * last as f64) / max as f64;
    let low = (max as f64 - 2.0 * last as f64) / max as f64;

    // An upstream whose error answers hold markup.
    let odd = HostileUpstream::start(&rt, [127, 0, 0, 1]);
    odd.on("/v2/", Answer::new(200));
    odd.on(
        "/v2/x/manifests/*",
        Answer::json(
            500,
            &serde_json::json!({"errors": [{"code": "<script>x</script>",
            "message": "<script>alert(1)</script>", "detail": "<img src=x onerror=alert(2)>"}]}),
        ),
    );
    let relay = throttled_relay(&rt, up.addr(), 64 << 20);
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let hub = Wharf::hub_block(&up, true, dir.path())
        .replace(&up.url(), &format!("http://127.0.0.1:{relay}"));
    let body = format!(
        "max_size = \"{max}\"\nhigh_watermark = {high}\nlow_watermark = {low}\n{hub}\
         [[upstream]]\nname = \"dead\"\nurl = \"http://127.0.0.1:{DEAD_PORT}\"\nprefix = \"dead\"\n\
         [[upstream]]\nname = \"odd\"\nurl = \"{}\"\nprefix = \"odd\"\n",
        odd.url()
    );
    let mut w = Served::spawn_with(
        dir.path(),
        "wharf",
        &format!("admin_listen = \"127.0.0.1:{admin}\"\n"),
        &body,
        free_port(),
    );
    w.wait_ready();
    let c = http();
    // With an admin listener, /metrics is served there only.
    let metric = |series: &str| {
        let text = c
            .get(format!("http://127.0.0.1:{admin}/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        metric_value(&text, series)
    };
    let get = |path: &str, accept: &str| {
        let r = c
            .get(format!("{}{path}", w.url()))
            .header("accept", accept)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        r.bytes().unwrap();
        status
    };
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let pull = |repo: &str, p: &Parts| {
        assert_eq!(get(&format!("/v2/{repo}/manifests/1"), oci), 200);
        for (d, _) in std::iter::once(&p.config).chain(&p.layers) {
            assert_eq!(get(&format!("/v2/{repo}/blobs/{d}"), "*/*"), 200);
        }
        eventually(Duration::from_secs(30), "the fills to commit", || {
            metric("wharf_fills_in_flight") == 0.0
        });
    };
    // Four clients at once on the cold 64 MiB layer: one fetch, three wait.
    assert_eq!(get("/v2/library/large/manifests/1", oci), 200);
    let url = format!("{}/v2/library/large/blobs/{}", w.url(), large.top_layer());
    let joins: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || http().get(url).send().unwrap().bytes().unwrap().len())
        })
        .collect();
    for j in joins {
        j.join().unwrap();
    }
    pull("library/large", &large);
    pull("library/ev1", &evs[0]);
    pull("library/ev1", &evs[0]); // hits
    pull("library/ev2", &evs[1]);
    assert_eq!(get("/v2/library/ev1/manifests/multi", INDEX_MT), 200);
    pull("library/ev3", &evs[2]); // past the high mark
    eventually(Duration::from_secs(30), "an eviction pass", || {
        metric("wharf_evicted_blobs_total") > 0.0
    });
    assert_eq!(get("/v2/library/nope/manifests/1", oci), 404);
    assert!(get("/v2/odd/x/manifests/1", oci) >= 500);
    assert!(get("/v2/dead/library/x/manifests/1", oci) >= 500);
    Scene {
        up,
        _odd: odd,
        _rt: rt,
        dir,
        w,
        admin,
    }
}

#[test]
fn status_figures_equal_metrics_du_and_ls_and_the_page_stays_private() {
    let s = scene();
    // One moment: `ls` (which writes recorded reads first), `du`, the page,
    // all from one catalog generation (the background upkeep may move it
    // in between: then again).
    let (ls, du, o, images) = eventually(Duration::from_secs(30), "one generation", || {
        let ls = s.cli_json(&["ls", "--json"]);
        let du = s.cli_json(&["du", "--json"]);
        let o = s.api("overview");
        let images = s.api("images");
        let one = o["generation"] == du["generation"] && images["generation"] == du["generation"];
        one.then_some((ls, du, o, images))
    });
    let text = http()
        .get(s.admin_url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let m = |series: &str| metric_value(&text, series) as u64;
    let u = &o["usage"];
    // The same catalog: same generation, same figures.
    assert_eq!(o["generation"], du["generation"], "{o}\n{du}");
    for (page, cli) in [
        ("bytes", "bytes"),
        ("blobs", "blobs"),
        ("manifests", "manifests"),
        ("pinned_bytes", "pinned_bytes"),
        ("disk_size", "disk_size"),
    ] {
        assert_eq!(u[page], du[cli], "{page}: {o}\n{du}");
    }
    assert_eq!(u["bytes"].as_u64().unwrap(), m("wharf_cache_size_bytes"));
    assert_eq!(
        u["bytes"].as_u64().unwrap(),
        blob_bytes(&s.dir.path().join("cache"))
    );
    assert_eq!(u["blobs"].as_u64().unwrap(), m("wharf_cache_blobs"));
    assert_eq!(
        u["budget"].as_u64().unwrap(),
        m("wharf_cache_max_size_bytes")
    );
    let rows: usize = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["images"].as_array().unwrap().len())
        .sum();
    assert_eq!(u["images"].as_u64().unwrap() as usize, rows);
    // The catalog the page read is on the books: it holds at least each
    // image's digest (71 bytes of text).
    assert!(
        m("wharf_catalog_bytes") >= 71 * rows as u64,
        "wharf_catalog_bytes {} for {rows} images",
        m("wharf_catalog_bytes")
    );
    // Traffic since start: the counters, summed as /metrics has them.
    let t = &o["since_start"];
    let sum = |prefix: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    assert_eq!(
        t["served_cache"].as_u64().unwrap(),
        m("wharf_served_bytes_total{source=\"cache\"}")
    );
    assert_eq!(
        t["served_upstream"].as_u64().unwrap(),
        m("wharf_served_bytes_total{source=\"upstream\"}")
    );
    assert_eq!(
        t["fetched"].as_u64().unwrap(),
        sum("wharf_upstream_bytes_total{")
    );
    let results = |r: &str| {
        sum(&format!(
            "wharf_cache_results_total{{endpoint=\"blob\",result=\"{r}\"}}"
        )) + sum(&format!(
            "wharf_cache_results_total{{endpoint=\"manifest\",result=\"{r}\"}}"
        ))
    };
    let hits = results("hit") + results("revalidated") + results("stale");
    assert_eq!(t["hits"].as_u64().unwrap(), hits, "{t}\n{text}");
    assert_eq!(
        t["lookups"].as_u64().unwrap(),
        sum("wharf_cache_results_total{") - results("pass")
    );
    assert!(
        hits > 0 && results("miss") > 0 && results("coalesced") > 0,
        "{text}"
    );
    assert_eq!(
        o["coalesced"].as_u64().unwrap(),
        sum("wharf_coalesced_total{")
    );
    let e = &o["evictions"];
    assert!(e["blobs"].as_u64().unwrap() > 0);
    assert_eq!(e["blobs"].as_u64().unwrap(), m("wharf_evicted_blobs_total"));
    assert_eq!(e["bytes"].as_u64().unwrap(), m("wharf_evicted_bytes_total"));
    assert_eq!(e["runs"].as_u64().unwrap(), m("wharf_eviction_runs_total"));
    assert!(o["fills"].as_array().unwrap().is_empty());

    // Images: the rows of `wharf ls`, with the index's platforms.
    assert_eq!(images["repos"], ls, "page 1 holds every repository here");
    let ev1 = images["repos"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["repository"] == "library/ev1")
        .expect("ev1 is listed");
    let multi = ev1["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["tag"] == "multi")
        .expect("the index is listed");
    assert_eq!(multi["platforms"][0], format!("{EVIL_OS}/amd64"));

    // Upstreams: states and counters as /metrics has them.
    let ups = s.api("upstreams");
    let up = |name: &str| {
        ups.as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == name)
            .unwrap()
            .clone()
    };
    let (hub, dead) = (up("hub"), up("dead"));
    assert_eq!(hub["state"], "reachable");
    assert_eq!(dead["state"], "unreachable");
    let hub_requests: u64 = text
        .lines()
        .filter(|l| {
            l.starts_with("wharf_upstream_request_duration_seconds_count{")
                && l.contains("upstream=\"hub\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum();
    assert_eq!(hub["requests"].as_u64().unwrap(), hub_requests);
    assert_eq!(
        hub["token_fetches"].as_u64().unwrap(),
        m("wharf_upstream_token_fetches_total{kind=\"registry\",upstream=\"hub\"}")
    );
    let not_found = hub["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e[0] == "not_found")
        .unwrap();
    assert_eq!(
        not_found[1].as_u64().unwrap(),
        m("wharf_upstream_errors_total{kind=\"not_found\",upstream=\"hub\"}")
    );
    assert!(hub["p50_ms"].as_f64().is_some());

    // Problems: the 404 and the unreachable upstream, newest first.
    let p = s.api("problems");
    let p = p["problems"].as_array().unwrap();
    assert_eq!(p[0]["path"], "/v2/dead/library/x/manifests/1");
    assert_eq!(p[0]["blame"], "upstream");
    assert_eq!(p[1]["path"], "/v2/odd/x/manifests/1");
    assert_eq!(p[2]["status"], 404);
    assert_eq!(p[2]["code"], "MANIFEST_UNKNOWN");

    // Nothing changes state; nothing secret shows.
    let r = http().post(s.admin_url("/api/overview")).send().unwrap();
    assert_eq!(r.status(), 405);
    let mut bodies = String::new();
    for path in [
        "/",
        "/upstreams/",
        "/images/",
        "/sync/",
        "/problems/",
        "/api/overview",
        "/api/upstreams",
        "/api/images",
        "/api/sync",
        "/api/problems",
    ] {
        let r = http().get(s.admin_url(path)).send().unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            csp.contains("default-src 'none'") && !csp.contains("unsafe"),
            "{csp}"
        );
        bodies += &r.text().unwrap();
    }
    // wharf holds credentials for the upstream (it ignores them).
    assert!(!s.up.pass.is_empty());
    assert!(
        !bodies.contains(&s.up.pass),
        "the upstream's password shows"
    );
    // What the odd upstream wrote is not repeated, escaped or not.
    assert!(
        !bodies.contains("alert("),
        "upstream error text reached the page"
    );
    // The catalog was only read: the generation is where it was.
    assert_eq!(
        s.cli_json(&["du", "--json"])["generation"],
        du["generation"]
    );

    // Another address (127.0.0.2 is loopback, but not 127.0.0.1): the page
    // is not there for it; /metrics still is.
    let other = reqwest::blocking::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    assert_eq!(other.get(s.admin_url("/")).send().unwrap().status(), 404);
    assert_eq!(
        other
            .get(s.admin_url("/api/overview"))
            .send()
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        other.get(s.admin_url("/metrics")).send().unwrap().status(),
        200
    );
}

#[test]
fn the_page_in_chromium_shows_the_figures_escaped_and_loads_nothing_else() {
    let s = scene();
    let o = s.api("overview");
    let mut b = Browser::open(([127, 0, 0, 1], s.admin).into());
    let origin = b.url("/");
    let check = |v: &crate::harness::browser::Visit, what: &str| {
        let elsewhere = external_refs(&v.dom, origin.trim_end_matches('/'));
        assert!(
            elsewhere.is_empty(),
            "{what} refers elsewhere: {elsewhere:?}"
        );
        assert!(
            !v.log.contains("Content Security Policy"),
            "{what}: {}",
            v.log
        );
        assert!(!v.log.contains("Refused to"), "{what}: {}", v.log);
    };
    // Overview: the figures are the API's.
    let v = b.dom("/");
    check(&v, "overview");
    let figure = |dom: &str, name: &str| -> u64 {
        let needle = format!("data-figure=\"{name}\" value=\"");
        let at = dom
            .find(&needle)
            .unwrap_or_else(|| panic!("no {name} in {dom}"));
        let rest = &dom[at + needle.len()..];
        rest[..rest.find('"').unwrap()].parse().unwrap()
    };
    let u = &o["usage"];
    for (name, key) in [
        ("cache-bytes", "bytes"),
        ("cache-blobs", "blobs"),
        ("cache-manifests", "manifests"),
        ("cache-images", "images"),
        ("cache-pinned", "pinned_bytes"),
        ("cache-budget", "budget"),
    ] {
        assert_eq!(figure(&v.dom, name), u[key].as_u64().unwrap(), "{name}");
    }
    assert_eq!(
        figure(&v.dom, "evicted-blobs"),
        o["evictions"]["blobs"].as_u64().unwrap()
    );
    assert_eq!(
        figure(&v.dom, "served-cache-start"),
        o["since_start"]["served_cache"].as_u64().unwrap()
    );
    assert_eq!(
        figure(&v.dom, "fetched-start"),
        o["since_start"]["fetched"].as_u64().unwrap()
    );
    assert_eq!(
        figure(&v.dom, "coalesced"),
        o["coalesced"].as_u64().unwrap()
    );
    assert!(v.dom.contains("<svg"), "the usage bar");

    // Images: the hostile platform is text, not a script.
    let v = b.dom("/images/");
    check(&v, "images");
    assert!(
        v.dom
            .contains("&lt;script&gt;window.p=1&lt;/script&gt;/amd64"),
        "{}",
        v.dom
    );
    assert_eq!(
        v.dom.matches("<script").count(),
        1,
        "only the page's own script"
    );
    let v = b.dom("/images/?q=ev1");
    assert!(v.dom.contains("data-repo=\"hub/library/ev1\""), "{}", v.dom);
    assert!(!v.dom.contains("data-repo=\"hub/library/ev2\""));

    // Upstreams and problems.
    let v = b.dom("/upstreams/");
    check(&v, "upstreams");
    assert!(v.dom.contains("data-upstream=\"dead\""));
    assert!(v.dom.contains(">unreachable<"));
    let v = b.dom("/problems/");
    check(&v, "problems");
    assert!(v.dom.contains("MANIFEST_UNKNOWN"));
    assert!(v.dom.contains("/v2/odd/x/manifests/1"));
    assert!(!v.dom.contains("alert("), "{}", v.dom);
    assert_eq!(v.dom.matches("<script").count(), 1);
    assert_eq!(v.dom.matches("<img").count(), 0);
    let v = b.dom("/sync/");
    check(&v, "sync");

    // Screenshots to look at, laptop and phone, light and dark.
    let out = Browser::artifacts("status");
    for (view, path) in [
        ("overview", "/"),
        ("images", "/images/"),
        ("upstreams", "/upstreams/"),
    ] {
        for (device, w, h) in [("laptop", 1366, 900), ("phone", 390, 844)] {
            for dark in [false, true] {
                let png = out.join(format!(
                    "{view}-{device}{}.png",
                    if dark { "-dark" } else { "" }
                ));
                let v = b.screenshot(path, &png, w, h, dark);
                check(&v, &format!("{view} screenshot"));
                assert_eq!(png_size(&png), (w, h));
            }
        }
    }
}
