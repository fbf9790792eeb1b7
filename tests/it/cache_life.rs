//! A cache that runs for months: eviction under a size budget, pins, the
//! operator commands, crash recovery, a full disk, offline serving (metrics,
//! health and graceful shutdown are in `observability.rs`). wharf runs as its binary here, as in
//! production, so signals, the admin socket and start-up reconciliation are
//! the real ones.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

/// An image as the upstream holds it: manifest, config and layers, with sizes.
pub struct Parts {
    pub manifest: (String, u64),
    pub config: (String, u64),
    pub layers: Vec<(String, u64)>,
}

impl Parts {
    pub fn of(up: &Upstream, repo: &str, tag: &str) -> Parts {
        let r = http()
            .get(format!("{}/v2/{repo}/manifests/{tag}", up.url()))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .unwrap();
        assert!(r.status().is_success());
        let digest = r.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_owned();
        let body = r.bytes().unwrap();
        let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let desc = |v: &serde_json::Value| {
            (
                v["digest"].as_str().unwrap().to_owned(),
                v["size"].as_u64().unwrap(),
            )
        };
        Parts {
            manifest: (digest, body.len() as u64),
            config: desc(&m["config"]),
            layers: m["layers"].as_array().unwrap().iter().map(desc).collect(),
        }
    }

    /// Bytes of everything but `shared`.
    pub fn unique_size(&self, shared: &str) -> u64 {
        self.manifest.1
            + self.config.1
            + self
                .layers
                .iter()
                .filter(|(d, _)| d != shared)
                .map(|(_, s)| s)
                .sum::<u64>()
    }

    pub fn top_layer(&self) -> &str {
        &self.layers.last().unwrap().0
    }
}

/// Whether the cache at `cache` holds a file for `digest`.
pub fn cached(cache: &Path, digest: &str) -> bool {
    let hex = digest.strip_prefix("sha256:").unwrap();
    cache
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .is_file()
}

pub fn blob_bytes(cache: &Path) -> u64 {
    files_under(&cache.join("blobs"))
        .iter()
        .map(|(_, l)| l)
        .sum()
}

fn pull(w: &Served, dir: &Path, image: &str) {
    let conf = registries_conf(dir, w.addr());
    let dest = tempfile::tempdir().unwrap();
    let (ok, out) = skopeo_to_dir(
        Some(&conf),
        &format!("docker://docker.io/library/{image}"),
        dest.path(),
        false,
    );
    assert!(ok, "skopeo {image}: {out}");
}

#[test]
fn eviction_keeps_the_budget_least_recent_first_and_spares_pins() {
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    for i in 1..=5 {
        up.push(&format!("ev{i}"), &format!("library/ev{i}:1"), None, false);
    }
    let parts: Vec<Parts> = (1..=5)
        .map(|i| Parts::of(&up, &format!("library/ev{i}"), "1"))
        .collect();
    // The five images share their busybox layer.
    let shared = parts[0].layers[0].clone();
    assert!(parts.iter().all(|p| p.layers[0] == shared));
    let unique: Vec<u64> = parts.iter().map(|p| p.unique_size(&shared.0)).collect();
    // Budget: exactly all five. High mark: reached only by the fifth.
    // Low mark: one image's worth under the budget.
    let max = shared.1 + unique.iter().sum::<u64>();
    let high = (max as f64 - 0.3 * unique[4] as f64) / max as f64;
    let low = (max as f64 - 0.6 * unique[2] as f64) / max as f64;
    let dir = tempfile::tempdir().unwrap();
    let w = Served::start(
        dir.path(),
        "wharf",
        &format!(
            "max_size = \"{max}\"\nhigh_watermark = {high}\nlow_watermark = {low}\npin = [\"hub/library/ev1\"]\n{}",
            Wharf::hub_block(&up, false, dir.path())
        ),
    );
    let cache = dir.path().join("cache");
    let within_budget = |when: &str| {
        let used = blob_bytes(&cache);
        assert!(used <= max, "{when}: {used} bytes cached, budget {max}");
    };
    // ev1 (pinned), ev2, ev3, ev4; ev2 again; then ev5 passes the high mark.
    for image in ["ev1:1", "ev2:1", "ev3:1", "ev4:1", "ev2:1", "ev5:1"] {
        pull(&w, dir.path(), image);
        within_budget(image);
    }
    eventually(Duration::from_secs(30), "an eviction pass", || {
        w.metric("wharf_evicted_blobs_total") > 0.0
    });
    let top = |i: usize| parts[i - 1].top_layer().to_owned();
    // The least recently used image went: ev3 (ev2 was pulled again after it).
    assert!(
        !cached(&cache, &top(3)),
        "ev3's layer was the least recently used"
    );
    for i in [1, 2, 4, 5] {
        assert!(cached(&cache, &top(i)), "ev{i} must stay");
    }
    assert!(cached(&cache, &shared.0), "the shared layer is in use");
    let used = blob_bytes(&cache);
    assert!(used as f64 <= max as f64 * low, "{used} > low mark");
    // The shared layer is one file, counted once.
    let (ok, du) = w.cli(&["du", "--json"]);
    assert!(ok, "{du}");
    let du: serde_json::Value = serde_json::from_str(du.split("(done by").next().unwrap()).unwrap();
    assert_eq!(du["bytes"].as_u64().unwrap(), used, "{du}");

    // Pin ev4 (now the least recent) through the running server, then bring
    // ev3 back: it is fetched and verified again, and ev2 goes instead of ev4.
    let (ok, out) = w.cli(&["pin", "hub/library/ev4:1"]);
    assert!(
        ok && out.contains("pinned") && out.contains("running server"),
        "{out}"
    );
    let gets_before = up.gets(&format!("/v2/library/ev3/blobs/{}", top(3)));
    pull(&w, dir.path(), "ev3:1");
    within_budget("ev3 again");
    assert_eq!(
        up.gets(&format!("/v2/library/ev3/blobs/{}", top(3))),
        gets_before + 1,
        "an evicted blob is fetched again"
    );
    eventually(Duration::from_secs(30), "a second eviction pass", || {
        !cached(&cache, &top(2))
    });
    for i in [1, 3, 4, 5] {
        assert!(cached(&cache, &top(i)), "ev{i} must stay");
    }
    let (bad_files, bad) = rehash_cache(&cache);
    assert!(bad.is_empty() && bad_files > 0, "{bad:?}");
    // ls shows what is pinned, from the config and from `wharf pin`.
    let (ok, out) = w.cli(&["ls", "--json"]);
    assert!(ok, "{out}");
    let listing: serde_json::Value =
        serde_json::from_str(out.split("(done by").next().unwrap()).unwrap();
    let pinned = |repo: &str| {
        listing
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["repository"] == repo)
            .map(|r| r["images"][0]["pinned"].as_bool().unwrap())
    };
    assert_eq!(pinned("library/ev1"), Some(true));
    assert_eq!(pinned("library/ev4"), Some(true));
    assert_eq!(pinned("library/ev5"), Some(false));
    let (ok, out) = w.cli(&["unpin", "hub/library/ev1"]);
    assert!(!ok && out.contains("configuration file"), "{out}");
}

#[test]
fn operator_commands_with_and_without_a_running_server() {
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    up.push("ev1", "library/ev1:1", None, false);
    up.push("ev2", "library/ev2:1", None, false);
    let p1 = Parts::of(&up, "library/ev1", "1");
    let p2 = Parts::of(&up, "library/ev2", "1");
    let shared = p1.layers[0].0.clone();
    let dir = tempfile::tempdir().unwrap();
    let body = Wharf::hub_block(&up, false, dir.path());
    let mut w = Served::start(dir.path(), "wharf", &body);
    let cache = dir.path().join("cache");
    pull(&w, dir.path(), "ev1:1");
    pull(&w, dir.path(), "ev2:1");

    let (ok, out) = w.cli(&["ls"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("hub/library/ev1") && out.contains("hub/library/ev2"),
        "{out}"
    );
    assert!(out.contains(&p1.manifest.0[..19]), "{out}");
    assert!(out.contains("(done by the running server)"), "{out}");
    let (ok, out) = w.cli(&["du"]);
    assert!(
        ok && out.contains("content:") && out.contains("in 7 blobs (2 manifests)"),
        "{out}"
    );

    // rm takes ev1's own content and keeps the layer ev2 shares.
    let (ok, out) = w.cli(&["rm", "hub/library/ev1:1"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("removed 1 tags") && out.contains("3 blobs"),
        "{out}"
    );
    assert!(!cached(&cache, p1.top_layer()) && !cached(&cache, &p1.manifest.0));
    assert!(cached(&cache, &shared) && cached(&cache, p2.top_layer()));
    let (_, out) = w.cli(&["ls"]);
    assert!(!out.contains("hub/library/ev1"), "{out}");
    let (ok, out) = w.cli(&["rm", "hub/library/nothing:1"]);
    assert!(!ok && out.contains("not in the cache"), "{out}");
    // Pulled again, it is fetched again.
    pull(&w, dir.path(), "ev1:1");
    assert!(cached(&cache, p1.top_layer()));

    // A second server on the same cache is refused with a reason.
    let mut second = Served::spawn(dir.path(), "second", &body, free_port());
    let status = eventually(
        Duration::from_secs(20),
        "a second server on a locked cache to exit",
        || second.try_wait(),
    );
    assert!(!status.success());
    let log = std::fs::read_to_string(&second.log).unwrap();
    assert!(log.contains("cannot open the cache"), "{log}");
    assert!(log.contains("in use by another process"), "{log}");

    // Without a server the commands open the cache themselves.
    assert!(w.terminate().unwrap().success());
    let (ok, out) = w.cli(&["ls"]);
    assert!(
        ok && out.contains("hub/library/ev2") && !out.contains("running server"),
        "{out}"
    );
    // A blob damaged on disk is found by gc --verify and dropped.
    let hex = p2.top_layer().strip_prefix("sha256:").unwrap().to_owned();
    let damaged = cache.join("blobs/sha256").join(&hex[..2]).join(&hex);
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&damaged, bytes).unwrap();
    let (ok, out) = w.cli(&["gc", "--verify"]);
    assert!(ok && out.contains("1 corrupt blobs"), "{out}");
    assert!(!damaged.exists());
    let (bad_files, bad) = rehash_cache(&cache);
    assert!(bad.is_empty() && bad_files > 0);
    // Served again: the damaged layer comes from the upstream, verified.
    let mut w = Served::start(dir.path(), "wharf", &body);
    pull(&w, dir.path(), "ev2:1");
    assert!(cached(&cache, p2.top_layer()));
    assert!(w.terminate().unwrap().success());
}

/// A small xorshift: random moments that a failing run can replay (the seed
/// is printed).
struct Rng(u64);
impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("WHARF_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("crash test seed: WHARF_CRASH_SEED={seed}");
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn kill_9_at_random_moments_never_leaves_a_bad_byte() {
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    up.push("large", "library/large:1", None, false);
    for i in 1..=3 {
        up.push(&format!("ev{i}"), &format!("library/ev{i}:1"), None, false);
    }
    // A slow link, so kills land in fills; a budget below the images' total,
    // so they land in eviction passes too.
    let relay = throttled_relay(&rt, up.addr(), 32 << 20);
    let dir = tempfile::tempdir().unwrap();
    let body = Wharf::hub_block(&up, false, dir.path())
        .replace(&up.url(), &format!("http://127.0.0.1:{relay}"));
    let body = format!("max_size = \"76MiB\"\n{body}");
    let cache = dir.path().join("cache");
    let images = ["large:1", "ev1:1", "ev2:1", "ev3:1"];
    let mut rng = Rng::new();
    let mut kills = 0;
    for round in 0..24 {
        let mut w = Served::spawn(dir.path(), "wharf", &body, free_port());
        if round % 6 == 5 {
            // During start-up (opening sled, reconciling).
            std::thread::sleep(Duration::from_millis(rng.below(40)));
            w.kill9();
            kills += 1;
            continue;
        }
        w.wait_ready();
        let rdir = dir.path().join(format!("r{round}"));
        std::fs::create_dir_all(&rdir).unwrap();
        let conf = registries_conf(&rdir, w.addr());
        let mut clients = Vec::new();
        for _ in 0..3 {
            let image = images[rng.below(images.len() as u64) as usize];
            let dest = dir.path().join(format!("out-{round}-{}", clients.len()));
            clients.push(
                Command::new("skopeo")
                    .arg("--registries-conf")
                    .arg(&conf)
                    .args(["copy", "--quiet"])
                    .arg(format!("docker://docker.io/library/{image}"))
                    .arg(format!("dir:{}", dest.display()))
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap(),
            );
        }
        std::thread::sleep(Duration::from_millis(150 + rng.below(1800)));
        w.kill9();
        kills += 1;
        for mut c in clients {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(dir.path().join(format!("r{round}")));
    }
    assert!(kills >= 20);
    // Whatever the moments were: a clean start removes leftovers, every
    // cached byte matches its digest, and every image pulls.
    let mut w = Served::start(dir.path(), "wharf", &body);
    assert_eq!(files_under(&cache.join("tmp")).len(), 0, "temp files left");
    let (files, bad) = rehash_cache(&cache);
    assert!(bad.is_empty(), "{bad:?}");
    let (ok, du) = w.cli(&["du", "--json"]);
    assert!(ok, "{du}");
    let du: serde_json::Value = serde_json::from_str(du.split("(done by").next().unwrap()).unwrap();
    assert_eq!(
        du["blobs"].as_u64().unwrap() as usize,
        files,
        "records match files"
    );
    for image in images {
        pull(&w, dir.path(), image);
    }
    let (_, bad) = rehash_cache(&cache);
    assert!(bad.is_empty(), "{bad:?}");
    let log = std::fs::read_to_string(&w.log).unwrap();
    assert!(
        log.contains("removed temp files left by an interrupted run"),
        "no fill was ever interrupted"
    );
    assert!(
        log.contains("evicted least recently used blobs"),
        "the budget never made eviction run between the kills"
    );
    assert!(w.terminate().unwrap().success());
}

/// A tmpfs for the cache, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);
impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at));
        Tmpfs(at.to_owned())
    }
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_the_fill_cleanly_and_wharf_keeps_serving() {
    require(&["mount", "umount"]);
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    up.push("large", "library/large:1", None, false);
    up.push("ev1", "library/ev1:1", None, false);
    up.push("ev2", "library/ev2:1", None, false);
    let large = Parts::of(&up, "library/large", "1");
    let ev2 = Parts::of(&up, "library/ev2", "1");
    // 1 MiB/s: ev2's 3 MiB layer takes seconds, time to fill the disk under it.
    let relay = throttled_relay(&rt, up.addr(), 1 << 20);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let _fs = Tmpfs::mount(&cache, "40m");
    let body = Wharf::hub_block(&up, false, dir.path())
        .replace(&up.url(), &format!("http://127.0.0.1:{relay}"));
    let w = Served::start(dir.path(), "wharf", &body);
    pull(&w, dir.path(), "ev1:1");

    // A layer larger than the disk: refused before any byte, with the sizes.
    let r = http()
        .get(format!(
            "{}/v2/library/large/blobs/{}",
            w.url(),
            large.top_layer()
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    let text = r.text().unwrap();
    assert!(
        text.contains("UNAVAILABLE") && text.contains("cache disk cannot take"),
        "{text}"
    );
    assert_eq!(files_under(&cache.join("tmp")).len(), 0);
    pull(&w, dir.path(), "ev1:1"); // untouched: nothing was evicted for a hopeless fill

    // The disk fills up while a layer streams in: the client sees a failed
    // transfer, nothing partial stays, and wharf goes on.
    let url = format!("{}/v2/library/ev2/blobs/{}", w.url(), ev2.top_layer());
    let getter = std::thread::spawn(move || {
        http().get(url).send().and_then(|r| {
            let s = r.status();
            r.bytes().map(|b| (s, b.len()))
        })
    });
    eventually(Duration::from_secs(30), "the fill to start", || {
        files_under(&cache.join("tmp")).iter().any(|(_, l)| *l > 0)
    });
    let ballast = cache.join("ballast");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M"])
        .arg(format!("of={}", ballast.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let got = getter.join().unwrap();
    assert!(
        !matches!(&got, Ok((s, n)) if s.is_success() && *n as u64 == ev2.layers[1].1),
        "a fill that hit ENOSPC cannot have served a complete body: {got:?}"
    );
    eventually(
        Duration::from_secs(30),
        "the failed fill to clean up",
        || files_under(&cache.join("tmp")).is_empty(),
    );
    assert!(!cached(&cache, ev2.top_layer()));
    // The failure woke eviction, which made room; fill what it freed too:
    // then the cache cannot take a write, and says so.
    eventually(
        Duration::from_secs(30),
        "the eviction pass the failure woke",
        || w.metric("wharf_evicted_blobs_total") > 0.0,
    );
    let ballast2 = cache.join("ballast2");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", ballast2.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let r = http().get(format!("{}/readyz", w.url())).send().unwrap();
    assert_eq!(r.status(), 503, "a full disk is not ready");
    let text = r.text().unwrap();
    assert!(
        text.contains("\"writable\":false") && text.contains("No space left"),
        "{text}"
    );
    std::fs::remove_file(&ballast).unwrap();
    std::fs::remove_file(&ballast2).unwrap();
    let r = http().get(format!("{}/readyz", w.url())).send().unwrap();
    assert_eq!(r.status(), 200);
    pull(&w, dir.path(), "ev2:1");
    let (_, bad) = rehash_cache(&cache);
    assert!(bad.is_empty(), "{bad:?}");
    let log = std::fs::read_to_string(&w.log).unwrap();
    assert!(
        log.contains("No space left on device") || log.contains("ENOSPC"),
        "the fill failure is logged"
    );
}

#[test]
fn offline_serves_cached_images_to_skopeo_and_containerd() {
    let rt = runtime();
    let mut up = Upstream::start(Auth::None, &rt);
    up.push("small", "library/test:1", None, false);
    up.push("ev1", "library/ev1:1", None, false);
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "tag_ttl = \"1s\"\n{}",
        Wharf::hub_block(&up, false, dir.path())
    );
    let w = Served::start(dir.path(), "wharf", &body);
    let hosts = dir.path().join("hosts/docker.io");
    std::fs::create_dir_all(&hosts).unwrap();
    let point_containerd_at = |addr: std::net::SocketAddr| {
        std::fs::write(
            hosts.join("hosts.toml"),
            format!(
                "server = \"http://127.0.0.1:{DEAD_PORT}\"\n[host.\"http://{addr}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )
        .unwrap()
    };
    point_containerd_at(w.addr());
    let hd = dir.path().join("hosts");
    let hd = hd.to_str().unwrap();
    let ctd = Containerd::start(&dir.path().join("ctd"));
    let ctr_pull = |image: &str| {
        let r = ctd.ctr(&["images", "pull", "--hosts-dir", hd, image]);
        // Next time from wharf again, not from containerd's own store.
        ctd.ctr(&["images", "rm", image]);
        let (_, list) = ctd.ctr(&["content", "ls", "-q"]);
        for d in list.lines().filter(|l| l.starts_with("sha256:")) {
            ctd.ctr(&["content", "rm", d]);
        }
        r
    };
    let (ok, out) = ctr_pull("docker.io/library/test:1");
    assert!(ok, "{out}");
    pull(&w, dir.path(), "test:1");

    // The upstream goes away; the tag's TTL runs out.
    up.stop();
    std::thread::sleep(Duration::from_millis(1100));
    pull(&w, dir.path(), "test:1");
    let (ok, out) = ctr_pull("docker.io/library/test:1");
    assert!(ok, "containerd, upstream down: {out}");
    // Not cached: a clear error naming the upstream.
    let r = http()
        .get(format!("{}/v2/library/ev1/manifests/1", w.url()))
        .send()
        .unwrap();
    assert!(r.status() == 502 || r.status() == 503, "{}", r.status());
    let text = r.text().unwrap();
    assert!(
        text.contains("UNAVAILABLE")
            && text.contains("upstream hub is unreachable")
            && text.contains("not in the cache"),
        "{text}"
    );
    // Clients fail (skopeo and containerd show only the status line of a
    // 5xx, and containerd resolves with HEAD: the message is in the body).
    let conf = registries_conf(dir.path(), w.addr());
    let dest = tempfile::tempdir().unwrap();
    let (ok, out) = skopeo_to_dir(
        Some(&conf),
        "docker://docker.io/library/ev1:1",
        dest.path(),
        false,
    );
    assert!(!ok, "{out}");
    let (ok, out) = ctr_pull("docker.io/library/ev1:1");
    assert!(!ok && out.contains("502"), "{out}");
    let ready = http().get(format!("{}/readyz", w.url())).send().unwrap();
    assert_eq!(
        ready.status(),
        200,
        "an unreachable upstream is reported, not fatal"
    );
    let ready: serde_json::Value = ready.json().unwrap();
    assert_eq!(ready["upstreams"]["hub"], "unreachable", "{ready}");
    drop(w);

    // offline = true: the upstream is back but never asked.
    up.resume();
    let body = format!("{body}offline = true\n");
    let w = Served::start(dir.path(), "offline", &body);
    point_containerd_at(w.addr());
    let before = up.requests();
    std::thread::sleep(Duration::from_millis(1100));
    pull(&w, dir.path(), "test:1");
    let (ok, out) = ctr_pull("docker.io/library/test:1");
    assert!(ok, "{out}");
    let (ok, out) = skopeo_to_dir(
        Some(&registries_conf(dir.path(), w.addr())),
        "docker://docker.io/library/ev1:1",
        dest.path(),
        false,
    );
    assert!(!ok, "{out}");
    let r = http()
        .get(format!("{}/v2/library/ev1/manifests/1", w.url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    let text = r.text().unwrap();
    assert!(
        text.contains("upstream hub is unreachable: wharf is in offline mode")
            && text.contains("not in the cache"),
        "{text}"
    );
    assert_eq!(
        up.requests(),
        before,
        "offline = true sent requests upstream"
    );
}
