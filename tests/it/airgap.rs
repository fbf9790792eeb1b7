//! Air-gapped sites end to end: a connected wharf syncs from a real
//! distribution upstream by rules (tags, semver, platforms, signatures),
//! writes signed bundles, and a second wharf in a network namespace with no
//! route to anything imports them and serves dockerd, containerd and skopeo
//! offline. Incremental bundles against the site's inventory, damaged media,
//! `kill -9` during an import, rate limits during a sync, and volumes split
//! to a size.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

/// The JSON lines a `--json` command printed (others ignored).
fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.is_object())
        .collect()
}

/// The summary of the last finished sync run in `out`.
fn summary(out: &str) -> serde_json::Value {
    json_lines(out)
        .into_iter()
        .rev()
        .find(|v| v["event"] == "run_finished")
        .unwrap_or_else(|| panic!("no run_finished event in: {out}"))["summary"]
        .clone()
}

/// GETs of manifests and blobs the upstream answered, all repositories.
fn content_gets(up: &Upstream) -> usize {
    up.access_log()
        .iter()
        .filter(|(m, p, _)| m == "GET" && (p.contains("/manifests/") || p.contains("/blobs/")))
        .count()
}

fn wharf(args: &[&str]) -> (bool, String) {
    try_run(Command::new(env!("CARGO_BIN_EXE_wharf")).args(args))
}

/// The children of an index as (digest, "os/arch[/variant]").
fn children(index: &[u8]) -> Vec<(String, String)> {
    let v: serde_json::Value = serde_json::from_slice(index).unwrap();
    v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let p = &c["platform"];
            let mut plat = format!(
                "{}/{}",
                p["os"].as_str().unwrap(),
                p["architecture"].as_str().unwrap()
            );
            if let Some(v) = p["variant"].as_str() {
                plat = format!("{plat}/{v}");
            }
            (c["digest"].as_str().unwrap().to_owned(), plat)
        })
        .collect()
}

/// The connected side's config: the upstream as `hub` and the rule `base`.
fn connected_body(up: &Upstream, extra_rule: &str) -> String {
    format!(
        r#"{}
[[sync]]
name = "base"
upstream = "hub"
platforms = ["linux/amd64", "linux/arm64"]
signatures = true
prune = true
{extra_rule}
  [[sync.repo]]
  name = "library/multi"
  semver = ">=1, <2"
  [[sync.repo]]
  name = "library/test"
  include = ['^1$']
  [[sync.repo]]
  name = "library/list"
"#,
        Wharf::hub_block(up, false, Path::new("/"))
    )
}

/// An upstream with: `library/multi` (an OCI index of three platforms) at
/// 1.0.0, 1.1.0, v1.2.0, 2.0.0-rc1 and latest, with a cosign-style
/// signature; `library/test:1` and `:2`; `library/list:1` (a Docker
/// manifest list of three platforms).
fn upstream(rt: &tokio::runtime::Runtime) -> Upstream {
    let up = Upstream::start(Auth::None, rt);
    up.push("multi", "library/multi:1.0.0", None, true);
    up.retag(
        "library/multi",
        "1.0.0",
        &["1.1.0", "v1.2.0", "2.0.0-rc1", "latest"].map(String::from),
    );
    up.push_signature("library/multi");
    up.push("small", "library/test:1", None, false);
    up.push("small", "library/test:2", None, false);
    up.push_docker_list("library/list:1");
    up
}

fn keygen(dir: &Path) -> (PathBuf, PathBuf) {
    let (ok, out) = wharf(&["bundle", "keygen", "--out", dir.to_str().unwrap(), "site"]);
    assert!(ok, "keygen: {out}");
    (dir.join("site.key"), dir.join("site.pub"))
}

/// The site's config body: the same upstream name, offline, trusting `key`.
fn site_body(key: &Path) -> String {
    format!(
        "[[upstream]]\nname = \"hub\"\nurl = \"http://127.0.0.1:9\"\naliases = [\"docker.io\"]\nprefix = \"hub\"\ndefault = true\noffline = true\n[bundle]\ntrusted_keys = [{key:?}]\n"
    )
}

#[test]
fn sync_keeps_what_the_rules_select_and_a_second_run_sends_only_heads() {
    require(&["docker-registry", "skopeo"]);
    let rt = runtime();
    let up = upstream(&rt);
    let tmp = tempfile::tempdir().unwrap();
    let w = Served::start(tmp.path(), "connected", &connected_body(&up, ""));

    // (The fixture's retag read one manifest.)
    let setup = content_gets(&up);
    let (ok, out) = w.cli(&["sync", "--dry-run", "--json"]);
    assert!(ok, "{out}");
    let plan = summary(&out);
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["synced"], 6, "six refs planned: {plan}");
    assert_eq!(content_gets(&up), setup, "a dry run fetches nothing");

    let (ok, out) = w.cli(&["sync", "base", "--json"]);
    assert!(ok, "{out}");
    let s = summary(&out);
    assert!(s["failed"].as_array().unwrap().is_empty(), "{s}");
    let refs: HashSet<String> = s["refs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}:{}",
                r["repository"].as_str().unwrap(),
                r["tag"].as_str().unwrap()
            )
        })
        .collect();
    let sig = format!("{}.sig", layout_digest("multi").replace(':', "-"));
    let want: HashSet<String> = [
        "library/multi:1.0.0",
        "library/multi:1.1.0",
        "library/multi:v1.2.0",
        &format!("library/multi:{sig}"),
        "library/test:1",
        "library/list:1",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(refs, want, "semver range, include, signatures: {s}");

    // The arm/v7 children were never fetched; amd64 and arm64 were.
    let (index, _) = up.get_manifest("library/multi", "1.0.0");
    for (d, plat) in children(&index) {
        let gets = up.count("GET", &format!("/v2/library/multi/manifests/{d}"));
        if plat == "linux/arm/v7" {
            assert_eq!(gets, 0, "{plat} was filtered out");
        } else {
            assert!(gets >= 1, "{plat} was synced");
        }
    }
    // The index is served byte-identical.
    let (status, body) = w.get("/v2/library/multi/manifests/1.0.0");
    assert_eq!(status, 200);
    assert_eq!(body.as_bytes(), &index[..]);

    // Nothing changed upstream: HEADs (and tag lists) only.
    let before = content_gets(&up);
    let heads = up.count("HEAD", "/v2/");
    let (ok, out) = w.cli(&["sync", "--json"]);
    assert!(ok, "{out}");
    let s2 = summary(&out);
    assert_eq!(s2["synced"], 0, "{s2}");
    assert_eq!(s2["unchanged"].as_u64().unwrap(), want.len() as u64, "{s2}");
    assert_eq!(
        content_gets(&up),
        before,
        "the second run sent a manifest or blob GET"
    );
    assert!(up.count("HEAD", "/v2/") > heads);
    assert_eq!(
        w.metric("wharf_sync_last_run_success{rule=\"base\"}"),
        1.0,
        "{}",
        w.metrics()
    );
}

#[test]
fn sync_runs_on_its_schedule_in_the_server() {
    require(&["docker-registry", "skopeo"]);
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    up.push("small", "library/test:1", None, false);
    let tmp = tempfile::tempdir().unwrap();
    let body = format!(
        "{}\n[[sync]]\nname = \"tick\"\nupstream = \"hub\"\ninterval = \"1s\"\n  [[sync.repo]]\n  name = \"library/test\"\n",
        Wharf::hub_block(&up, false, Path::new("/"))
    );
    let w = Served::start(tmp.path(), "sched", &body);
    let runs = |w: &Served| {
        w.metric("wharf_sync_images_total{result=\"synced\",rule=\"tick\"}")
            + w.metric("wharf_sync_images_total{result=\"unchanged\",rule=\"tick\"}")
    };
    eventually(Duration::from_secs(20), "three scheduled runs", || {
        runs(&w) >= 3.0
    });
    assert_eq!(
        w.metric("wharf_sync_images_total{result=\"synced\",rule=\"tick\"}"),
        1.0,
        "the first run syncs, the later ones find it unchanged"
    );
    let log = std::fs::read_to_string(&w.log).unwrap();
    assert!(log.matches("sync run finished").count() >= 3, "{log}");
}

#[test]
fn sync_pauses_for_rate_limits_and_finishes() {
    require(&["docker-registry", "skopeo"]);
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    for i in 1..=6 {
        up.push_unique(
            "library/test",
            &i.to_string(),
            &format!("2026-01-0{i}T00:00:00Z"),
        );
    }
    // 4 pulls per 4 s: the reserve (2) is reached after two GETs, so the run
    // paces itself; then the window is spent and a 429 says wait 1 s.
    let limiter = RateLimiter::start_window(
        &rt,
        up.url(),
        Window {
            limit: 4,
            seconds: 4,
            retry_after: 1,
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let body = format!(
        "[[upstream]]\nname = \"hub\"\nurl = \"http://127.0.0.1:{}\"\ndefault = true\n\n[[sync]]\nname = \"limited\"\nupstream = \"hub\"\n  [[sync.repo]]\n  name = \"library/test\"\n",
        limiter.port
    );
    let w = Served::start(tmp.path(), "ratelimited", &body);
    let (ok, out) = w.cli(&["sync", "--json"]);
    assert!(ok, "{out}");
    let s = summary(&out);
    assert!(s["failed"].as_array().unwrap().is_empty(), "{s}");
    assert_eq!(s["synced"], 6, "{s}");
    let paused: Vec<_> = json_lines(&out)
        .into_iter()
        .filter(|v| v["event"] == "paused")
        .collect();
    assert!(!paused.is_empty(), "the run never paused: {out}");
    assert!(s["paused_seconds"].as_u64().unwrap() >= 1, "{s}");
    assert!(w.metric("wharf_sync_pauses_total{rule=\"limited\"}") >= 1.0);
}

/// The whole path: sync → signed bundle → an isolated site imports it →
/// dockerd, ctr and skopeo pull every synced ref there by tag and digest,
/// byte-identical to the upstream; a filtered platform fails clearly; then
/// an incremental bundle against the site's inventory carries exactly the
/// new blobs, and the same bundle onto an empty site is refused.
#[test]
fn air_gap_round_trip_to_an_offline_site_and_an_incremental_bundle() {
    require(&[
        "docker-registry",
        "skopeo",
        "ip",
        "curl",
        "dockerd",
        "docker",
        "containerd",
        "ctr",
    ]);
    let rt = runtime();
    let up = upstream(&rt);
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    std::fs::create_dir_all(t.join("conn")).unwrap();
    let conn = Served::start(&t.join("conn"), "connected", &connected_body(&up, ""));
    let (ok, out) = conn.cli(&["sync", "--json"]);
    assert!(ok, "{out}");
    let (key, public) = keygen(&t.join("keys"));
    let b1 = t.join("b1");
    let (ok, out) = conn.cli(&[
        "bundle",
        "create",
        "--out",
        b1.to_str().unwrap(),
        "--sync",
        "base",
        "--sign-key",
        key.to_str().unwrap(),
        "--volume-size",
        "8MiB",
    ]);
    assert!(ok, "bundle create: {out}");
    let (ok, out) = wharf(&[
        "bundle",
        "verify",
        b1.to_str().unwrap(),
        "--trusted-key",
        public.to_str().unwrap(),
    ]);
    assert!(ok, "bundle verify: {out}");

    // The site: no route to anything, offline, a fresh cache.
    let ns = Netns::isolated();
    std::fs::create_dir_all(t.join("site")).unwrap();
    let site = Served::start_in(&ns, &t.join("site"), "site", "", &site_body(&public));
    let (ok, out) = site.cli(&["bundle", "import", b1.to_str().unwrap()]);
    assert!(ok, "bundle import: {out}");

    let (index, _) = up.get_manifest("library/multi", "1.0.0");
    let index_digest = layout_digest("multi");
    // Offline tags/list, paged.
    let ca = site.ca();
    let (ok, page) = site.curl(&[
        "-i",
        "--cacert",
        ca.to_str().unwrap(),
        &format!("{}/v2/library/multi/tags/list?n=2", site.url()),
    ]);
    assert!(
        ok && page.contains("\"tags\":[\"1.0.0\",\"1.1.0\"]"),
        "{page}"
    );
    assert!(
        page.to_lowercase()
            .contains("link: </v2/library/multi/tags/list?"),
        "{page}"
    );
    // A filtered platform: a clear MANIFEST_UNKNOWN naming the filter.
    let armv7 = children(&index)
        .into_iter()
        .find(|(_, p)| p == "linux/arm/v7")
        .unwrap()
        .0;
    let (status, text) = site.get(&format!("/v2/library/multi/manifests/{armv7}"));
    assert_eq!(status, 404, "{text}");
    assert!(
        text.contains("MANIFEST_UNKNOWN")
            && text.contains("linux/arm/v7")
            && text.contains("'base'"),
        "{text}"
    );

    // skopeo: every ref by tag and by digest, byte-identical.
    let sk = Skopeo::mirror(&t.join("sk"), &site.host(), Some(&site.ca())).in_ns(&ns);
    for (repo, tag) in [
        ("library/multi", "1.0.0"),
        ("library/multi", "v1.2.0"),
        ("library/test", "1"),
        ("library/list", "1"),
    ] {
        let (want_bytes, _) = up.get_manifest(repo, tag);
        let d = format!("sha256:{}", sha256_hex(&want_bytes));
        for reference in [format!("{repo}:{tag}"), format!("{repo}@{d}")] {
            let out_dir = t.join(format!("pull-{}", reference.replace(['/', ':', '@'], "_")));
            let (ok, out) =
                sk.copy_to_dir(&format!("docker://docker.io/{reference}"), &out_dir, false);
            assert!(ok, "skopeo {reference}: {out}");
            let direct = t.join(format!(
                "direct-{}",
                reference.replace(['/', ':', '@'], "_")
            ));
            let (ok, out) = skopeo_to_dir(
                None,
                &format!("docker://127.0.0.1:{}/{reference}", up.port),
                &direct,
                false,
            );
            assert!(ok, "skopeo direct {reference}: {out}");
            assert_eq!(dir_contents(&out_dir), dir_contents(&direct), "{reference}");
        }
    }
    let (ok, out) = sk.copy_to_dir(
        &format!("docker://docker.io/library/multi@{index_digest}"),
        &t.join("all"),
        true,
    );
    assert!(
        !ok,
        "--all needs arm/v7, which the site does not have: {out}"
    );

    // podman, trusting the site's CA through a certs directory.
    let pd = t.join("podman");
    std::fs::create_dir_all(pd.join("certs")).unwrap();
    std::fs::copy(site.ca(), pd.join("certs/ca.crt")).unwrap();
    let conf = registries_conf_for(&pd, &site.host(), false);
    std::fs::write(
        pd.join("storage.conf"),
        format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{0}/root\"\nrunroot = \"{0}/run\"\n",
            pd.display()
        ),
    )
    .unwrap();
    std::fs::write(
        pd.join("containers.conf"),
        format!("[network]\nnetwork_config_dir = \"{}/net\"\n", pd.display()),
    )
    .unwrap();
    for image in [
        "docker.io/library/multi:1.1.0".to_owned(),
        format!("docker.io/library/multi@{index_digest}"),
    ] {
        let mut c = ns.command("podman");
        c.env("CONTAINERS_REGISTRIES_CONF", &conf)
            .env("CONTAINERS_STORAGE_CONF", pd.join("storage.conf"))
            .env("CONTAINERS_CONF", pd.join("containers.conf"))
            .arg("--root")
            .arg(pd.join("root"))
            .arg("--runroot")
            .arg(pd.join("run"))
            .args(["--storage-driver", "vfs", "pull", "-q", "--cert-dir"])
            .arg(pd.join("certs"))
            .arg(&image);
        let (ok, out) = try_run(&mut c);
        assert!(ok, "podman pull {image}: {out}");
    }

    // ctr and dockerd.
    let mirror = format!("https://{}", site.host());
    let ctd = Containerd::start_in(&ns, &t.join("ctd"));
    let hosts = hosts_dir(&t.join("hosts"), &mirror, Some(&site.ca()));
    for image in [
        "docker.io/library/multi:1.1.0",
        &format!("docker.io/library/multi@{index_digest}"),
        "docker.io/library/list:1",
    ] {
        let (ok, out) = ctd.pull(&hosts, image);
        assert!(ok, "ctr pull {image}: {out}");
    }
    let d = Dockerd::start(&ns, &t.join("dockerd"), &mirror, Some(&site.ca()));
    for image in ["multi:1.0.0", &format!("multi@{index_digest}"), "test:1"] {
        let (ok, out) = d.docker(&["pull", image]);
        assert!(ok, "docker pull {image}: {out}");
    }
    drop(d);
    drop(ctd);

    // New tags upstream: an incremental bundle against the site's inventory.
    let (new_manifest, new_blobs) =
        up.push_unique("library/multi", "1.3.0", "2026-11-01T00:00:00Z");
    let (ok, out) = conn.cli(&["sync", "--json"]);
    assert!(ok, "{out}");
    let inv = t.join("site-inventory.json");
    let (ok, out) = site.cli(&["inventory", "export", "--out", inv.to_str().unwrap()]);
    assert!(ok, "inventory export: {out}");
    let b2 = t.join("b2");
    let (ok, out) = conn.cli(&[
        "bundle",
        "create",
        "--out",
        b2.to_str().unwrap(),
        "--sync",
        "base",
        "--against",
        inv.to_str().unwrap(),
        "--sign-key",
        key.to_str().unwrap(),
    ]);
    assert!(ok, "incremental bundle: {out}");
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b2.join("bundle.json")).unwrap()).unwrap();
    let carried: HashSet<String> = doc["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["digest"].as_str().unwrap().to_owned())
        .collect();
    let mut expected: HashSet<String> = new_blobs.into_iter().collect();
    expected.insert(new_manifest.clone());
    assert_eq!(
        carried, expected,
        "exactly the new blobs and the new manifest"
    );
    assert!(
        doc["sequence"].as_u64().unwrap() > self::doc(&b1)["sequence"].as_u64().unwrap(),
        "the key's second bundle numbers above its first"
    );

    // Onto an empty site: refused before anything changes.
    let empty = t.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let empty_cfg = empty.join("site.toml");
    std::fs::write(
        &empty_cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nplain_http = true\n[cache]\ndir = \"cache\"\n{}",
            site_body(&public)
        ),
    )
    .unwrap();
    let (ok, out) = wharf(&[
        "bundle",
        "import",
        "--config",
        empty_cfg.to_str().unwrap(),
        b2.to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("does not hold"), "{out}");
    let (ok, out) = wharf(&["ls", "--config", empty_cfg.to_str().unwrap(), "--json"]);
    assert!(ok && out.starts_with("[]"), "{out}");
    assert!(
        files_under(&empty.join("cache/blobs")).is_empty(),
        "no blob was copied"
    );

    // At the site it imports, and the new tag pulls.
    let (ok, out) = site.cli(&["bundle", "import", b2.to_str().unwrap()]);
    assert!(ok, "incremental import: {out}");
    // Over a one-way link: leave out what the first bundle carried instead.
    let b3 = t.join("b3");
    let (ok, out) = conn.cli(&[
        "bundle",
        "create",
        "--out",
        b3.to_str().unwrap(),
        "--sync",
        "base",
        "--since",
        b1.join("bundle.json").to_str().unwrap(),
    ]);
    assert!(ok, "bundle create --since: {out}");
    let carried3: HashSet<String> = self::doc(&b3)["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["digest"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(carried3, expected, "--since leaves out what b1 carried");
    let (ok, out) = sk.copy_to_dir(
        "docker://docker.io/library/multi:1.3.0",
        &t.join("new"),
        false,
    );
    assert!(ok, "{out}");
    // Nothing at the site ever reached the upstream.
    assert!(!ns.can_connect("127.0.0.1", up.port));
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

/// A connected wharf that synced `library/big:1` (64 MiB random layer) and
/// `library/ev:1..3`, and a signed bundle of it in 16 MiB volumes; the
/// public key; a function making fresh site configs.
struct Carried {
    _up: Upstream,
    _conn: Served,
    tmp: tempfile::TempDir,
    bundle: PathBuf,
    public: PathBuf,
    key: PathBuf,
    conn_cfg: PathBuf,
}

fn carried(rt: &tokio::runtime::Runtime) -> Carried {
    let up = Upstream::start(Auth::None, rt);
    up.push("large", "library/big:1", None, false);
    for i in 1..=3 {
        up.push(&format!("ev{i}"), &format!("library/ev:{i}"), None, false);
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    std::fs::create_dir_all(t.join("conn")).unwrap();
    let body = format!(
        "{}\n[[sync]]\nname = \"all\"\nupstream = \"hub\"\n  [[sync.repo]]\n  name = \"library/big\"\n  [[sync.repo]]\n  name = \"library/ev\"\n",
        Wharf::hub_block(&up, false, Path::new("/"))
    );
    let conn = Served::start(&t.join("conn"), "conn", &body);
    let (ok, out) = conn.cli(&["sync", "--json"]);
    assert!(ok, "{out}");
    let (key, public) = keygen(&t.join("keys"));
    let bundle = t.join("bundle");
    let (ok, out) = conn.cli(&[
        "bundle",
        "create",
        "--out",
        bundle.to_str().unwrap(),
        "--sync",
        "all",
        "--sign-key",
        key.to_str().unwrap(),
        "--volume-size",
        "16MiB",
    ]);
    assert!(ok, "bundle create: {out}");
    Carried {
        conn_cfg: conn.cfg.clone(),
        _up: up,
        _conn: conn,
        tmp,
        bundle,
        public,
        key,
    }
}

impl Carried {
    /// A fresh site (config file; its cache under `name/cache`).
    fn site(&self, name: &str) -> PathBuf {
        let dir = self.tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("site.toml");
        std::fs::write(
            &cfg,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nplain_http = true\n[cache]\ndir = \"cache\"\n{}",
                site_body(&self.public)
            ),
        )
        .unwrap();
        cfg
    }

    /// A copy of the bundle to damage.
    fn copy(&self, name: &str) -> PathBuf {
        let to = self.tmp.path().join(name);
        run(Command::new("cp").arg("-r").arg(&self.bundle).arg(&to));
        to
    }
}

fn doc(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("bundle.json")).unwrap()).unwrap()
}

/// Every tag a site's cache shows points at content that is all there (an
/// import killed while it moves tags leaves some tags moved, each complete).
fn only_complete_tags(cfg: &Path) {
    let (ok, out) = wharf(&["ls", "--config", cfg.to_str().unwrap(), "--json"]);
    assert!(ok, "{out}");
    let start = out.find('[').unwrap();
    let repos: serde_json::Value = serde_json::Deserializer::from_str(&out[start..])
        .into_iter::<serde_json::Value>()
        .next()
        .unwrap()
        .unwrap();
    for r in repos.as_array().unwrap() {
        for i in r["images"].as_array().unwrap() {
            if i["tag"].is_string() {
                assert_eq!(
                    i["cached_blobs"], i["total_blobs"],
                    "an incomplete tag is visible: {r}"
                );
            }
        }
    }
}

/// Nothing at all is visible in a site's cache: no tag, no readable image.
fn nothing_visible(cfg: &Path) {
    let (ok, out) = wharf(&["ls", "--config", cfg.to_str().unwrap(), "--json"]);
    assert!(
        ok && out.starts_with("[]"),
        "something became visible: {out}"
    );
}

#[test]
fn bundles_keep_to_their_volume_size_and_extract_for_skopeo() {
    require(&["docker-registry", "skopeo"]);
    let rt = runtime();
    let c = carried(&rt);
    let d = doc(&c.bundle);
    let limit = 16 << 20;
    for v in d["volumes"].as_array().unwrap() {
        let f = c.bundle.join(v["file"].as_str().unwrap());
        let len = std::fs::metadata(&f).unwrap().len();
        assert!(len <= limit, "{} is {len} bytes", f.display());
    }
    let split: Vec<_> = d["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["parts"].as_array().unwrap().len() > 1)
        .collect();
    assert_eq!(split.len(), 1, "the 64 MiB layer is split into parts");
    assert!(split[0]["parts"].as_array().unwrap().len() >= 4);

    let out = c.tmp.path().join("layout");
    let (ok, text) = wharf(&[
        "bundle",
        "extract",
        c.bundle.to_str().unwrap(),
        out.to_str().unwrap(),
        "--trusted-key",
        c.public.to_str().unwrap(),
    ]);
    assert!(ok, "extract: {text}");
    let via = c.tmp.path().join("via-layout");
    let (ok, text) = try_run(
        Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(format!("oci:{}:hub/library/big:1", out.display()))
            .arg(format!("dir:{}", via.display())),
    );
    assert!(ok, "skopeo from the extracted layout: {text}");
    let direct = c.tmp.path().join("direct");
    let (ok, text) = skopeo_to_dir(
        None,
        &format!("docker://127.0.0.1:{}/library/big:1", c._up.port),
        &direct,
        false,
    );
    assert!(ok, "{text}");
    assert_eq!(dir_contents(&via), dir_contents(&direct));

    // A bundle of named images rather than a rule's refs.
    let named = c.tmp.path().join("named");
    let (ok, out) = wharf(&[
        "bundle",
        "create",
        "--config",
        c.conn_cfg.to_str().unwrap(),
        "--out",
        named.to_str().unwrap(),
        "--image",
        "hub/library/ev:2",
    ]);
    assert!(ok, "{out}");
    let d = doc(&named);
    assert_eq!(d["refs"].as_array().unwrap().len(), 1, "{d}");
    assert_eq!(d["refs"][0]["tag"], "2");
    assert!(d["refs"][0].get("rule").is_none(), "{d}");
    let (ok, out) = wharf(&[
        "bundle",
        "create",
        "--config",
        c.conn_cfg.to_str().unwrap(),
        "--out",
        c.tmp.path().join("absent").to_str().unwrap(),
        "--image",
        "hub/library/ev:9",
    ]);
    assert!(!ok && out.contains("not in this cache"), "{out}");
}

#[test]
fn damaged_or_unsigned_bundles_are_refused_naming_the_file_and_nothing_changes() {
    require(&["docker-registry", "skopeo"]);
    let rt = runtime();
    let c = carried(&rt);
    let d = doc(&c.bundle);
    let volumes: Vec<String> = d["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["file"].as_str().unwrap().to_owned())
        .collect();
    assert!(volumes.len() >= 4, "{volumes:?}");
    let second = volumes[1].clone();
    let last = volumes.last().unwrap().clone();

    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Damage, String)> = vec![
        (
            "flipped",
            Box::new({
                let f = second.clone();
                move |b: &Path| {
                    use std::os::unix::fs::FileExt;
                    let file = std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(b.join(&f))
                        .unwrap();
                    let at = file.metadata().unwrap().len() / 2;
                    let mut byte = [0u8];
                    file.read_at(&mut byte, at).unwrap();
                    file.write_at(&[byte[0] ^ 0x01], at).unwrap();
                }
            }),
            second.clone(),
        ),
        (
            "truncated",
            Box::new({
                let f = last.clone();
                move |b: &Path| {
                    let file = std::fs::OpenOptions::new()
                        .write(true)
                        .open(b.join(&f))
                        .unwrap();
                    let len = file.metadata().unwrap().len();
                    file.set_len(len - 4096).unwrap();
                }
            }),
            last.clone(),
        ),
        (
            "missing",
            Box::new({
                let f = second.clone();
                move |b: &Path| std::fs::remove_file(b.join(&f)).unwrap()
            }),
            second.clone(),
        ),
        (
            "extra",
            Box::new(|b: &Path| std::fs::write(b.join("notes.txt"), "hello").unwrap()),
            "notes.txt".to_owned(),
        ),
        (
            "resigned",
            Box::new(|b: &Path| {
                let p = b.join("bundle.json");
                let text = std::fs::read_to_string(&p).unwrap();
                std::fs::write(&p, text.replacen("\"library/ev\"", "\"library/evil\"", 1)).unwrap();
            }),
            "bundle.json".to_owned(),
        ),
    ];
    for (name, damage, file) in cases {
        let b = c.copy(name);
        damage(&b);
        let (ok, out) = wharf(&[
            "bundle",
            "verify",
            b.to_str().unwrap(),
            "--trusted-key",
            c.public.to_str().unwrap(),
        ]);
        assert!(!ok && out.contains(&file), "verify {name}: {out}");
        let site = c.site(&format!("site-{name}"));
        let (ok, out) = wharf(&[
            "bundle",
            "import",
            "--config",
            site.to_str().unwrap(),
            b.to_str().unwrap(),
        ]);
        assert!(!ok && out.contains(&file), "import {name}: {out}");
        nothing_visible(&site);
    }

    // Unsigned, with trusted keys configured: refused.
    let (ok, out) = wharf(&[
        "bundle",
        "create",
        "--config",
        c.conn_cfg.to_str().unwrap(),
        "--out",
        c.tmp.path().join("unsigned").to_str().unwrap(),
        "--sync",
        "all",
    ]);
    assert!(ok, "{out}");
    let site = c.site("site-unsigned");
    let (ok, out) = wharf(&[
        "bundle",
        "import",
        "--config",
        site.to_str().unwrap(),
        c.tmp.path().join("unsigned").to_str().unwrap(),
    ]);
    assert!(
        !ok && out.contains("bundle.json") && out.contains("not signed"),
        "{out}"
    );
    nothing_visible(&site);
    // Signed by a key the site does not trust: refused.
    let (other, _) = keygen(&c.tmp.path().join("other-keys"));
    let (ok, out) = wharf(&[
        "bundle",
        "create",
        "--config",
        c.conn_cfg.to_str().unwrap(),
        "--out",
        c.tmp.path().join("other").to_str().unwrap(),
        "--sync",
        "all",
        "--sign-key",
        other.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let (ok, out) = wharf(&[
        "bundle",
        "import",
        "--config",
        site.to_str().unwrap(),
        c.tmp.path().join("other").to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("not among the trusted keys"), "{out}");
    nothing_visible(&site);

    // A newer bundle from the same key, then the older one again: refused
    // unless the operator asks for the rollback.
    let newer = c.tmp.path().join("newer");
    let (ok, out) = wharf(&[
        "bundle",
        "create",
        "--config",
        c.conn_cfg.to_str().unwrap(),
        "--out",
        newer.to_str().unwrap(),
        "--sync",
        "all",
        "--sign-key",
        c.key.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let newer_seq = doc(&newer)["sequence"].as_u64().unwrap();
    assert!(newer_seq > doc(&c.bundle)["sequence"].as_u64().unwrap());
    let site = c.site("site-rollback");
    let (ok, out) = wharf(&[
        "bundle",
        "import",
        "--config",
        site.to_str().unwrap(),
        newer.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let (ok, out) = wharf(&[
        "bundle",
        "import",
        "--config",
        site.to_str().unwrap(),
        c.bundle.to_str().unwrap(),
    ]);
    assert!(
        !ok && out.contains(&format!("older than sequence {newer_seq}")),
        "{out}"
    );
    let (ok, out) = wharf(&[
        "bundle",
        "import",
        "--config",
        site.to_str().unwrap(),
        "--allow-rollback",
        c.bundle.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
}

/// `kill -9` at random points of an import, several rounds: no tag is ever
/// visible before the import completes, every blob in the cache re-hashes,
/// and the run that completes copies only what no earlier run finished.
#[test]
fn an_import_killed_at_random_points_resumes_without_copying_twice() {
    require(&["docker-registry", "skopeo"]);
    let rt = runtime();
    let c = carried(&rt);
    let total = doc(&c.bundle)["blobs"].as_array().unwrap().len();
    let site = c.site("site");
    let cache = site.parent().unwrap().join("cache");
    let seed: u64 = std::env::var("WHARF_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from_str_radix(&random_hex(4), 16).unwrap());
    println!("kill -9 rounds with seed {seed} (WHARF_TEST_SEED={seed} repeats them)");
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut killed = 0;
    for round in 0..6 {
        // Killed after a random number of blobs (0: right after the plan),
        // plus a random few milliseconds into the next one.
        let after = (next() % (total as u64 / 2)) as usize;
        let extra = Duration::from_millis(next() % 5);
        let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args([
                "bundle",
                "import",
                "--config",
                site.to_str().unwrap(),
                "--json",
            ])
            .arg(&c.bundle)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Read on a thread to the end: a closed pipe would fail the child.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Keep draining after the test stopped listening.
                    continue;
                }
            }
        });
        let mut seen = 0usize;
        let mut planned = false;
        for line in rx.iter() {
            if line.contains("\"event\":\"planned\"") {
                planned = true;
            }
            if line.contains("\"event\":\"copied\"") {
                seen += 1;
            }
            if planned && seen >= after {
                break;
            }
        }
        std::thread::sleep(extra);
        match child.try_wait().unwrap() {
            Some(status) => {
                println!("round {round}: finished before the kill ({status})");
                break;
            }
            None => {
                child.kill().unwrap();
                child.wait().unwrap();
                killed += 1;
                println!("round {round}: killed after {seen} blobs and {extra:?}");
            }
        }
        only_complete_tags(&site);
        let (checked, bad) = rehash_cache(&cache);
        assert!(
            bad.is_empty(),
            "blobs that do not re-hash after a kill: {bad:?} ({checked} checked)"
        );
    }
    assert!(killed >= 1, "no round was killed halfway");
    let present = files_under(&cache.join("blobs")).len();
    let (ok, out) = wharf(&[
        "bundle",
        "import",
        "--config",
        site.to_str().unwrap(),
        "--json",
        c.bundle.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let report: serde_json::Value = out
        .lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .filter(|v| v.get("blobs_written").is_some())
        })
        .unwrap_or_else(|| panic!("no report in {out}"));
    let written = report["blobs_written"].as_u64().unwrap() as usize;
    let already = report["blobs_present"].as_u64().unwrap() as usize;
    assert_eq!(written + already, total, "{report}");
    // At most the blob in flight at the last kill (committed, its record not
    // yet durable) is copied again.
    assert!(
        already + 1 >= present.min(total),
        "{report}: {present} blob files were there before the final run"
    );
    println!("{killed} kills; the final run wrote {written} of {total} blobs, found {already}");
    let (ok, out) = wharf(&["ls", "--config", site.to_str().unwrap(), "--json"]);
    assert!(
        ok && out.contains("library/big") && out.contains("library/ev"),
        "{out}"
    );
    let (checked, bad) = rehash_cache(&cache);
    assert!(bad.is_empty() && checked >= total, "{checked} {bad:?}");
}

/// Root importing with no server running into a cache directory that a
/// service user owns: every file written belongs to that user.
#[test]
fn an_import_as_root_leaves_files_owned_by_the_cache_owner() {
    require(&["docker-registry", "skopeo"]);
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let rt = runtime();
    let c = carried(&rt);
    // The service user must be able to reach the config's key and the bundle.
    let open =
        |p: &Path| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    open(c.tmp.path());
    open(&c.tmp.path().join("keys"));
    let site = c.site("owned");
    let cache = site.parent().unwrap().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let (uid, gid) = (4242u32, 4242u32);
    std::os::unix::fs::chown(site.parent().unwrap(), Some(uid), Some(gid)).unwrap();
    std::os::unix::fs::chown(&cache, Some(uid), Some(gid)).unwrap();
    let (ok, out) = wharf(&[
        "bundle",
        "import",
        "--config",
        site.to_str().unwrap(),
        c.bundle.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("as uid 4242"), "{out}");
    let mut n = 0;
    for (p, _) in files_under(&cache) {
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (uid, gid),
            "{} is not the cache owner's",
            p.display()
        );
        n += 1;
    }
    assert!(n > 13, "blobs and metadata files: {n}");
}

/// Hostile bundles at a site that trusts no key (so unsigned bundles are
/// accepted): one whose manifest's layer is neither carried nor at the
/// site, and one that names content the site holds for another repository
/// under a repository of its choosing. Both are refused before anything
/// changes; what the site held stays readable only where it was.
#[test]
fn unsigned_bundles_cannot_leave_tags_incomplete_or_graft_content_into_other_repositories() {
    require(&["docker-registry", "skopeo"]);
    let rt = runtime();
    let c = carried(&rt);
    let unsigned = c.tmp.path().join("unsigned");
    let (ok, out) = wharf(&[
        "bundle",
        "create",
        "--config",
        c.conn_cfg.to_str().unwrap(),
        "--out",
        unsigned.to_str().unwrap(),
        "--sync",
        "all",
    ]);
    assert!(ok, "{out}");
    let site_dir = c.tmp.path().join("open-site");
    std::fs::create_dir_all(&site_dir).unwrap();
    let site = site_dir.join("site.toml");
    std::fs::write(
        &site,
        "[server]\nlisten = \"127.0.0.1:0\"\nplain_http = true\n[cache]\ndir = \"cache\"\n[[upstream]]\nname = \"hub\"\nurl = \"http://127.0.0.1:9\"\ndefault = true\noffline = true\n",
    )
    .unwrap();
    let edit = |name: &str, f: &dyn Fn(&mut serde_json::Value)| {
        let b = c.tmp.path().join(name);
        run(Command::new("cp").arg("-r").arg(&unsigned).arg(&b));
        let mut d = doc(&b);
        f(&mut d);
        std::fs::write(
            b.join("bundle.json"),
            serde_json::to_vec_pretty(&d).unwrap(),
        )
        .unwrap();
        b
    };

    // A layer dropped from the list: the volumes still hold its bytes, but
    // the document no longer carries it, and nothing requires it.
    let big_layer = {
        let d = doc(&unsigned);
        d["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["size"].as_u64().unwrap() > 60 << 20)
            .unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let incomplete = edit("incomplete", &|d| {
        let blobs = d["blobs"].as_array_mut().unwrap();
        blobs.retain(|b| b["digest"] != big_layer.as_str());
    });
    let (ok, out) = wharf(&[
        "bundle",
        "import",
        "--config",
        site.to_str().unwrap(),
        incomplete.to_str().unwrap(),
    ]);
    assert!(
        !ok && out.contains(&big_layer) && out.contains("does not carry"),
        "{out}"
    );
    nothing_visible(&site);

    // The real bundle, then one that points library/evil at library/big's
    // manifest and carries nothing.
    let (ok, out) = wharf(&[
        "bundle",
        "import",
        "--config",
        site.to_str().unwrap(),
        unsigned.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let graft = edit("graft", &|d| {
        let refs = d["refs"].as_array_mut().unwrap();
        refs.retain(|r| r["repository"] == "library/big");
        refs[0]["repository"] = "library/evil".into();
        d["blobs"] = serde_json::json!([]);
        d["prune"] = serde_json::json!([]);
    });
    let (ok, out) = wharf(&[
        "bundle",
        "import",
        "--config",
        site.to_str().unwrap(),
        graft.to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("only for other repositories"), "{out}");
    // The same through a second ref: the legitimate one first, so the
    // manifest was already read for its own repository.
    let graft2 = edit("graft2", &|d| {
        let refs = d["refs"].as_array_mut().unwrap();
        refs.retain(|r| r["repository"] == "library/big");
        let mut evil = refs[0].clone();
        evil["repository"] = "library/evil".into();
        refs.push(evil);
        d["blobs"] = serde_json::json!([]);
        d["prune"] = serde_json::json!([]);
    });
    let (ok, out) = wharf(&[
        "bundle",
        "import",
        "--config",
        site.to_str().unwrap(),
        graft2.to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("only for other repositories"), "{out}");
    let (ok, out) = wharf(&["ls", "--config", site.to_str().unwrap(), "--json"]);
    assert!(ok && !out.contains("library/evil"), "{out}");
}

/// A connected wharf whose upstream is another wharf (a DMZ mirror) over
/// TLS, trusted through the DMZ's CA: sync from it works as from any
/// registry, and a second run sends only HEADs through the chain.
#[test]
fn sync_from_a_dmz_wharf_over_tls() {
    require(&["docker-registry", "skopeo", "curl"]);
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    up.push("multi", "library/multi:1.0.0", None, true);
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // The DMZ wharf: TLS from its own CA on a loopback port.
    let port = free_port();
    let dmz_cfg = t.join("dmz.toml");
    std::fs::write(
        &dmz_cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[cache]\ndir = {:?}\n{}",
            t.join("dmz-cache"),
            Wharf::hub_block(&up, false, Path::new("/"))
        ),
    )
    .unwrap();
    let mut dmz = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["serve", "--config"])
        .arg(&dmz_cfg)
        .stderr(std::fs::File::create(t.join("dmz.log")).unwrap())
        .spawn()
        .unwrap();
    let ca = t.join("dmz-cache/tls/ca.crt");
    eventually(
        Duration::from_secs(20),
        "the DMZ wharf to serve TLS",
        || {
            ca.exists()
                && try_run(
                    Command::new("curl")
                        .args(["-sSf", "--cacert"])
                        .arg(&ca)
                        .arg(format!("https://127.0.0.1:{port}/v2/")),
                )
                .0
        },
    );
    let body = format!(
        "[[upstream]]\nname = \"dmz\"\nurl = \"https://127.0.0.1:{port}\"\nca_file = {ca:?}\ndefault = true\n\n[[sync]]\nname = \"from-dmz\"\nupstream = \"dmz\"\nplatforms = [\"linux/amd64\"]\n  [[sync.repo]]\n  name = \"library/multi\"\n"
    );
    std::fs::create_dir_all(t.join("site")).unwrap();
    let site = Served::start(&t.join("site"), "chained", &body);
    let (ok, out) = site.cli(&["sync", "--json"]);
    assert!(ok, "{out}");
    let s = summary(&out);
    assert_eq!(s["synced"], 1, "{s}");
    let before = content_gets(&up);
    let (ok, out) = site.cli(&["sync", "--json"]);
    assert!(ok, "{out}");
    assert_eq!(summary(&out)["unchanged"], 1, "{out}");
    assert_eq!(
        content_gets(&up),
        before,
        "an unchanged chain sends no GET upstream"
    );
    let _ = dmz.kill();
    let _ = dmz.wait();
}

/// `keep_last` over tags that are not versions keeps the newest images by
/// their config's `created` time, whatever the tag names say.
#[test]
fn keep_last_without_versions_keeps_the_newest_images_by_created_time() {
    require(&["docker-registry", "skopeo"]);
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    for (tag, created) in [
        ("zeta", "2026-01-01T00:00:00Z"),
        ("alpha", "2026-03-01T00:00:00Z"),
        ("mid", "2026-02-01T00:00:00Z"),
        ("old", "2025-01-01T00:00:00Z"),
    ] {
        up.push_unique("library/app", tag, created);
    }
    let tmp = tempfile::tempdir().unwrap();
    let body = format!(
        "{}\n[[sync]]\nname = \"newest\"\nupstream = \"hub\"\n  [[sync.repo]]\n  name = \"library/app\"\n  keep_last = 2\n",
        Wharf::hub_block(&up, false, Path::new("/"))
    );
    let w = Served::start(tmp.path(), "newest", &body);
    let (ok, out) = w.cli(&["sync", "--json"]);
    assert!(ok, "{out}");
    let tags: HashSet<String> = summary(&out)["refs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["tag"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        tags,
        HashSet::from(["alpha".to_owned(), "mid".to_owned()]),
        "{out}"
    );
}

/// Upstream names map with `--map`; a bundle whose pinned content would not
/// fit under the site's `max_size` is refused before anything is copied.
#[test]
fn imports_map_upstream_names_and_refuse_what_would_not_fit() {
    require(&["docker-registry", "skopeo"]);
    let rt = runtime();
    let c = carried(&rt);
    let write_site = |name: &str, upstream: &str, cache_extra: &str| {
        let dir = c.tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("site.toml");
        std::fs::write(
            &cfg,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nplain_http = true\n[cache]\ndir = \"cache\"\n{cache_extra}\n[[upstream]]\nname = \"{upstream}\"\nurl = \"http://127.0.0.1:9\"\ndefault = true\noffline = true\n[bundle]\ntrusted_keys = [{:?}]\n",
                c.public
            ),
        )
        .unwrap();
        cfg
    };
    let site = write_site("mapped", "docker-hub", "");
    let b = c.bundle.to_str().unwrap();
    let (ok, out) = wharf(&["bundle", "import", "--config", site.to_str().unwrap(), b]);
    assert!(!ok && out.contains("hub") && out.contains("--map"), "{out}");
    nothing_visible(&site);
    let (ok, out) = wharf(&[
        "bundle",
        "import",
        "--config",
        site.to_str().unwrap(),
        "--map",
        "hub=docker-hub",
        b,
    ]);
    assert!(ok, "{out}");
    let (ok, out) = wharf(&["ls", "--config", site.to_str().unwrap(), "--json"]);
    assert!(ok && out.contains("docker-hub"), "{out}");

    let small = write_site("small", "hub", "max_size = \"32MiB\"");
    let (ok, out) = wharf(&["bundle", "import", "--config", small.to_str().unwrap(), b]);
    assert!(!ok && out.contains("max_size"), "{out}");
    nothing_visible(&small);
    assert!(files_under(&small.parent().unwrap().join("cache/blobs")).is_empty());
}

/// `prune = true`: a tag that vanished upstream loses the rule's pin at the
/// next run; an operator's own pin of the same tag is never the rule's.
#[test]
fn sync_prune_unpins_tags_that_vanished_upstream() {
    require(&["docker-registry", "skopeo"]);
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    up.push_unique("library/app", "keep", "2026-01-01T00:00:00Z");
    let (gone, _) = up.push_unique("library/app", "gone", "2026-01-02T00:00:00Z");
    let tmp = tempfile::tempdir().unwrap();
    let body = format!(
        "{}\n[[sync]]\nname = \"p\"\nupstream = \"hub\"\nprune = true\n  [[sync.repo]]\n  name = \"library/app\"\n",
        Wharf::hub_block(&up, false, Path::new("/"))
    );
    let w = Served::start(tmp.path(), "prune", &body);
    let (ok, out) = w.cli(&["sync", "--json"]);
    assert!(ok, "{out}");
    let (ok, pins) = w.cli(&["pin"]);
    assert!(
        ok && pins.contains("hub/library/app:gone") && pins.contains("hub/library/app:keep"),
        "{pins}"
    );
    // The upstream deletes the image (and so its tag).
    let resp = http()
        .delete(format!("{}/v2/library/app/manifests/{gone}", up.url()))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let (ok, out) = w.cli(&["sync", "--json"]);
    assert!(ok, "{out}");
    assert!(out.contains("\"event\":\"unpinned\""), "{out}");
    let (ok, pins) = w.cli(&["pin"]);
    assert!(
        ok && !pins.contains("hub/library/app:gone") && pins.contains("hub/library/app:keep"),
        "{pins}"
    );
}

/// At the site, `prune` follows each rule: a later bundle of rule `a` alone
/// unpins only what rule `a` no longer carries, never rule `b`'s images.
#[test]
fn site_prune_follows_each_rule_of_a_bundle() {
    require(&["docker-registry", "skopeo"]);
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    up.push_unique("library/a", "1", "2026-01-01T00:00:00Z");
    up.push_unique("library/a", "2", "2026-01-02T00:00:00Z");
    up.push_unique("library/b", "1", "2026-01-03T00:00:00Z");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    std::fs::create_dir_all(t.join("conn")).unwrap();
    let rules = |a_include: &str| {
        format!(
            "{}\n[[sync]]\nname = \"a\"\nupstream = \"hub\"\nprune = true\n  [[sync.repo]]\n  name = \"library/a\"\n  include = ['{a_include}']\n[[sync]]\nname = \"b\"\nupstream = \"hub\"\nprune = true\n  [[sync.repo]]\n  name = \"library/b\"\n",
            Wharf::hub_block(&up, false, Path::new("/"))
        )
    };
    let conn = Served::start(&t.join("conn"), "conn", &rules("."));
    let (ok, out) = conn.cli(&["sync", "--json"]);
    assert!(ok, "{out}");
    let (key, public) = keygen(&t.join("keys"));
    let b1 = t.join("b1");
    let (ok, out) = conn.cli(&[
        "bundle",
        "create",
        "--out",
        b1.to_str().unwrap(),
        "--sync",
        "a",
        "--sync",
        "b",
        "--sign-key",
        key.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    drop(conn);
    // Rule a now keeps only tag 2.
    let conn = Served::start(&t.join("conn"), "conn", &rules("^2$"));
    let (ok, out) = conn.cli(&["sync", "a", "--json"]);
    assert!(ok, "{out}");
    let b2 = t.join("b2");
    let (ok, out) = conn.cli(&[
        "bundle",
        "create",
        "--out",
        b2.to_str().unwrap(),
        "--sync",
        "a",
        "--sign-key",
        key.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");

    std::fs::create_dir_all(t.join("site")).unwrap();
    let site = t.join("site/site.toml");
    std::fs::write(
        &site,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nplain_http = true\n[cache]\ndir = \"cache\"\n{}",
            site_body(&public)
        ),
    )
    .unwrap();
    for b in [&b1, &b2] {
        let (ok, out) = wharf(&[
            "bundle",
            "import",
            "--config",
            site.to_str().unwrap(),
            b.to_str().unwrap(),
        ]);
        assert!(ok, "{out}");
    }
    let (ok, pins) = wharf(&["pin", "--config", site.to_str().unwrap()]);
    assert!(ok, "{pins}");
    assert!(
        pins.contains("hub/library/a:2") && pins.contains("hub/library/b:1"),
        "{pins}"
    );
    assert!(
        !pins.contains("hub/library/a:1"),
        "rule a no longer carries a:1: {pins}"
    );
}
