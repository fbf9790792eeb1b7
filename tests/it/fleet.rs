//! A fleet of wharf nodes (each its own binary, cache and port) sharing one
//! tier on a real distributed store (SeaweedFS: a master, three volume
//! servers with replication 001, an S3 gateway): a cold layer is fetched
//! from the upstream once for all of them, a late node needs no upstream
//! blob at all, a corrupt tier copy is never served and gets repaired, a
//! leader killed mid-fill holds the others up at most its lease's ttl, and
//! a store that loses a volume server or dies leaves pulls working.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::harness::*;

/// One store, one upstream, and the key files every node reads.
struct Fleet {
    fs: SeaweedFs,
    up: Upstream,
    dir: tempfile::TempDir,
    keys: (PathBuf, PathBuf),
    rt: tokio::runtime::Runtime,
}

impl Fleet {
    fn start() -> Fleet {
        let rt = runtime();
        let up = Upstream::start(Auth::None, &rt);
        let fs = SeaweedFs::start();
        let dir = tempfile::tempdir().unwrap();
        let keys = fs.write_credentials(dir.path());
        Fleet {
            fs,
            up,
            dir,
            keys,
            rt,
        }
    }

    /// A node named `name` sharing `prefix` of the bucket, with its upstream
    /// at `upstream` and `extra` lines in `[shared]`.
    fn node(&self, name: &str, prefix: &str, upstream: &str, extra: &str) -> Served {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        Served::start(&dir, name, &self.body(prefix, upstream, extra))
    }

    fn body(&self, prefix: &str, upstream: &str, extra: &str) -> String {
        format!(
            "[[upstream]]\nname = \"hub\"\nurl = \"{upstream}\"\ndefault = true\n\
             [shared]\nurl = \"s3://{}/{prefix}\"\nendpoint = \"{}\"\n\
             access_key_id_file = {:?}\nsecret_access_key_file = {:?}\n{extra}",
            self.fs.bucket(),
            self.fs.endpoint(),
            self.keys.0,
            self.keys.1,
        )
    }
}

/// The tier's key of a blob under `prefix`.
fn tier_key(prefix: &str, digest: &str) -> String {
    format!("{prefix}/blobs/sha256/{}", &digest[7..])
}

/// The layers and config of `repo:tag` on the upstream: (digest, size).
fn blobs_of(up: &Upstream, repo: &str, tag: &str) -> Vec<(String, u64)> {
    let m: serde_json::Value = http()
        .get(format!("{}/v2/{repo}/manifests/{tag}", up.url()))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let mut out: Vec<(String, u64)> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(std::iter::once(&m["config"]))
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_owned(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect();
    out.sort_by_key(|(_, s)| std::cmp::Reverse(*s));
    out
}

/// A GET's outcome: the status and the sha256 of a body read to its end,
/// or why the transfer failed.
type Got = Result<(u16, String, u64), String>;

fn get_blob(url: &str) -> Got {
    let mut r = http().get(url).send().map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        use std::io::Read;
        let k = r
            .read(&mut buf)
            .map_err(|e| format!("cut after {n} bytes: {e}"))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((status, format!("sha256:{}", hex::encode(h.finalize())), n))
}

/// `per_node` simultaneous GETs of `path` on each node.
fn fire(nodes: &[&Served], path: &str, per_node: usize) -> Vec<Got> {
    let total = nodes.len() * per_node;
    let barrier = Arc::new(Barrier::new(total));
    let handles: Vec<_> = nodes
        .iter()
        .flat_map(|n| std::iter::repeat_n(format!("{}{path}", n.url()), per_node))
        .map(|url| {
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                get_blob(&url)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn assert_served(got: &Got, digest: &str, size: u64) {
    match got {
        Ok((200, sha, n)) => assert!(sha == digest && *n == size, "wrong body: {sha}, {n} bytes"),
        other => panic!("{other:?}"),
    }
}

/// Waits until `node` has no upload running and the tier holds `key`.
fn uploaded(fleet: &Fleet, node: &Served, key: &str, size: u64) {
    eventually(
        Duration::from_secs(60),
        &format!("{key} in the tier"),
        || node.metric("wharf_shared_uploads_in_flight") == 0.0 && fleet.fs.head(key) == Some(size),
    );
}

/// `skopeo copy` of `docker.io/<image>` through `node` (its only mirror;
/// docker.io itself is a dead port) into a `dir:`.
fn skopeo_copy(node: &Served, image: &str, to: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let conf = registries_conf(tmp.path(), node.addr());
    let (ok, out) = skopeo_to_dir(
        Some(&conf),
        &format!("docker://docker.io/{image}"),
        to,
        false,
    );
    assert!(ok, "skopeo through {}: {out}", node.url());
}

#[test]
fn a_fleet_fetches_a_cold_layer_once_and_a_late_node_needs_no_upstream_blob() {
    let f = Fleet::start();
    f.up.push("large", "library/big:1", None, false); // one 64 MiB layer
    f.up.push("small", "library/small:1", None, false);
    f.up.push("multi", "library/multi:1", None, true); // an OCI index
    let url = f.up.url();
    let nodes: Vec<Served> = (1..=3)
        .map(|i| f.node(&format!("n{i}"), "fleet", &url, "lease_ttl = \"6s\"\n"))
        .collect();

    // 30 cold clients, 10 on each node, at once.
    let (big, big_size) = blobs_of(&f.up, "library/big", "1")[0].clone();
    let path = format!("/v2/library/big/blobs/{big}");
    assert!(big_size >= 64 << 20);
    let refs: Vec<&Served> = nodes.iter().collect();
    for got in fire(&refs, &path, 10) {
        assert_served(&got, &big, big_size);
    }
    assert_eq!(f.up.gets(&path), 1, "the upstream sent the layer once");
    let waits: f64 = nodes
        .iter()
        .map(|n| n.metric("wharf_shared_lease_waits_total{outcome=\"appeared\"}"))
        .sum();
    assert_eq!(
        waits, 2.0,
        "the two other nodes waited for the leader's upload"
    );
    let key = tier_key("fleet", &big);
    let leader = nodes
        .iter()
        .find(|n| n.metric("wharf_shared_uploads_total{result=\"done\"}") == 1.0)
        .expect("one node uploaded the layer");
    uploaded(&f, leader, &key, big_size);

    // A whole image through one node fills the tier ...
    let tmp = tempfile::tempdir().unwrap();
    skopeo_copy(&nodes[0], "library/small:1", &tmp.path().join("first"));
    for (d, size) in blobs_of(&f.up, "library/small", "1") {
        uploaded(&f, &nodes[0], &tier_key("fleet", &d), size);
    }
    let first_multi = tmp.path().join("first-multi");
    skopeo_copy(&nodes[0], "library/multi:1", &first_multi);
    // A dir: copy names each blob by its hex digest, beside manifest.json
    // (the platform's manifest).
    for (name, bytes) in dir_contents(&first_multi) {
        let key = match name.as_str() {
            "manifest.json" => format!(
                "fleet/manifests/sha256/{}",
                hex::encode(Sha256::digest(&bytes))
            ),
            "version" => continue,
            hex => format!("fleet/blobs/sha256/{hex}"),
        };
        let size = bytes.len() as u64;
        eventually(
            Duration::from_secs(60),
            &format!("{key} in the tier"),
            || f.fs.head(&key) == Some(size),
        );
    }
    // ... and a node started later with an empty disk pulls it with no
    // upstream blob GET at all, nor a manifest by digest (the platform's
    // manifest under the index); tags still come from the upstream.
    let blob_gets = |up: &Upstream| {
        up.access_log()
            .iter()
            .filter(|(m, p, _)| m == "GET" && p.contains("/blobs/"))
            .count()
    };
    let before = blob_gets(&f.up);
    let late = f.node("late", "fleet", &url, "");
    skopeo_copy(&late, "library/small:1", &tmp.path().join("late"));
    // The platform's manifest by digest comes from the tier once the
    // upstream confirmed (HEAD) that this repository holds it (here even on
    // the first node: the platform's manifest is small:1's, which went to
    // the tier when small:1 was pulled).
    let by_digest = |method: &str| f.up.count(method, "/v2/library/multi/manifests/sha256:");
    let (gets_before, heads_before) = (by_digest("GET"), by_digest("HEAD"));
    skopeo_copy(&late, "library/multi:1", &tmp.path().join("late-multi"));
    assert_eq!(
        by_digest("GET"),
        gets_before,
        "the platform's manifest came from the tier"
    );
    assert!(
        by_digest("HEAD") > heads_before,
        "... after the upstream confirmed it"
    );
    assert_eq!(
        blob_gets(&f.up),
        before,
        "the late node read every blob from the tier"
    );
    assert_eq!(
        dir_contents(&tmp.path().join("first-multi")),
        dir_contents(&tmp.path().join("late-multi"))
    );
    assert_eq!(
        dir_contents(&tmp.path().join("first")),
        dir_contents(&tmp.path().join("late"))
    );
    assert!(late.metric("wharf_shared_lookups_total{result=\"hit\"}") >= 2.0);
    // The access log says where each blob came from.
    let log = std::fs::read_to_string(&late.log).unwrap();
    assert!(
        log.lines().any(|l| l.contains("/blobs/")
            && (l.contains("cache=shared") || l.contains("cache=\"shared\""))),
        "no blob served as cache=shared in {}",
        late.log.display()
    );

    // A corrupt tier copy of the same length: never served complete, the
    // next request fetches from the upstream, and the copy is repaired.
    let small = blobs_of(&f.up, "library/small", "1");
    let (layer, layer_size) = small[0].clone();
    let layer_key = tier_key("fleet", &layer);
    let good = f.fs.get(&layer_key).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    f.fs.put(&layer_key, &bad);
    let fresh = f.node("fresh", "fleet", &url, "");
    let layer_path = format!("/v2/library/small/blobs/{layer}");
    let gets_before = f.up.gets(&layer_path);
    match get_blob(&format!("{}{layer_path}", fresh.url())) {
        Ok((200, sha, n)) if n == layer_size => {
            assert_eq!(sha, layer, "a corrupt body was served whole")
        }
        Ok((200, _, n)) => assert!(n < layer_size),
        Ok((status, _, _)) => assert!(status >= 500, "{status}"),
        Err(_cut) => {} // a failed transfer the client can tell
    }
    assert_eq!(
        fresh.metric("wharf_shared_verification_failures_total"),
        1.0
    );
    assert_served(
        &get_blob(&format!("{}{layer_path}", fresh.url())),
        &layer,
        layer_size,
    );
    assert_eq!(
        f.up.gets(&layer_path),
        gets_before + 1,
        "fetched from the upstream again"
    );
    eventually(Duration::from_secs(30), "the tier's copy repaired", || {
        f.fs.get(&layer_key).as_deref() == Some(&good[..])
    });

    // A tier copy of the wrong length is bypassed before its first byte:
    // the client never sees it.
    let (config, config_size) = small[small.len() - 1].clone();
    let config_key = tier_key("fleet", &config);
    let good_config = f.fs.get(&config_key).unwrap();
    f.fs.put(&config_key, b"{\"not\": \"the config\"}");
    let fresh2 = f.node("fresh2", "fleet", &url, "");
    // The tier is keyed by digest alone, but a repository reads a tier copy
    // only if its upstream says the repository holds the blob: library/big
    // does not hold small:1's layer.
    let (status, body) = fresh2.get(&format!("/v2/library/big/blobs/{layer}"));
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("BLOB_UNKNOWN"), "{body}");
    let config_path = format!("/v2/library/small/blobs/{config}");
    assert_served(
        &get_blob(&format!("{}{config_path}", fresh2.url())),
        &config,
        config_size,
    );
    assert_eq!(
        fresh2.metric("wharf_shared_verification_failures_total"),
        1.0
    );
    // ... and replaced with the verified bytes (it once stayed wrong for
    // good: each node bypassed it and none uploaded).
    eventually(
        Duration::from_secs(30),
        "the wrong-length copy replaced",
        || f.fs.get(&config_key).as_deref() == Some(&good_config[..]),
    );

    // Retention for stores without lifecycle rules: nothing is younger than
    // an hour; everything is older than zero seconds.
    let blobs = f.fs.list("fleet/blobs/");
    assert!(blobs.len() >= 3, "{blobs:?}");
    let (ok, out) = late.cli(&["gc", "--shared", "--older-than", "1h"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("deleted from") && out.contains(": 0 blobs"),
        "{out}"
    );
    let (ok, out) = late.cli(&["gc", "--shared", "--older-than", "0s", "--dry-run"]);
    assert!(
        ok && out.contains(&format!(
            "would delete from s3://{}/fleet: {} blobs",
            f.fs.bucket(),
            blobs.len()
        )),
        "{out}"
    );
    assert_eq!(
        f.fs.list("fleet/blobs/"),
        blobs,
        "a dry run deletes nothing"
    );
    let (ok, out) = late.cli(&["gc", "--shared", "--older-than", "0s"]);
    assert!(ok, "{out}");
    assert!(f.fs.list("fleet/blobs/").is_empty(), "{out}");
    assert!(!out.contains(f.fs.secret_access_key()));

    // The key files' contents never reach a log.
    for n in nodes.iter().chain([&late, &fresh, &fresh2]) {
        let log = std::fs::read_to_string(&n.log).unwrap();
        assert!(
            !log.contains(f.fs.secret_access_key()),
            "secret in {}",
            n.log.display()
        );
        assert!(
            !log.contains(f.fs.access_key_id()),
            "key id in {}",
            n.log.display()
        );
    }
}

#[test]
fn a_leader_killed_mid_fill_holds_the_others_at_most_its_lease_ttl() {
    let f = Fleet::start();
    f.up.push("large", "library/big:1", None, false);
    // 8 MiB/s: the leader's 64 MiB fill takes about 8 s.
    let relay = throttled_relay(&f.rt, f.up.addr(), 8 << 20);
    let slow = format!("http://127.0.0.1:{relay}");
    let (big, big_size) = blobs_of(&f.up, "library/big", "1")[0].clone();
    let path = format!("/v2/library/big/blobs/{big}");
    let ttl = Duration::from_secs(3);
    let extra = "lease_ttl = \"3s\"\n";
    let mut leader = f.node("leader", "kill", &slow, extra);
    let waiter = f.node("waiter", "kill", &slow, extra);

    let leader_url = format!("{}{path}", leader.url());
    let first = std::thread::spawn(move || get_blob(&leader_url));
    let lease = format!("kill/leases/sha256/{}", &big[7..]);
    eventually(Duration::from_secs(30), "the leader's lease", || {
        f.fs.head(&lease).is_some()
    });
    let waiter_url = format!("{}{path}", waiter.url());
    let second = std::thread::spawn(move || get_blob(&waiter_url));
    eventually(
        Duration::from_secs(30),
        "the waiter to miss and wait",
        || waiter.metric("wharf_shared_lookups_total{result=\"miss\"}") == 1.0,
    );
    leader.kill9();
    let killed = Instant::now();
    // The leader's own client is cut (it gets a failed transfer).
    let _ = first.join().unwrap();

    // The waiter sees the lease unrenewed for its ttl (on its own clock),
    // takes it over within ttl + one poll (1 s), and fetches the layer.
    eventually(
        Duration::from_secs(30),
        "the waiter to take the lease over",
        || waiter.metric("wharf_shared_lease_waits_total{outcome=\"took_over\"}") == 1.0,
    );
    let took = killed.elapsed();
    let bound = ttl + Duration::from_secs(1);
    // Slack for this machine's load (the renewal before the kill may have
    // landed up to ttl/3 earlier: that only shortens the wait).
    assert!(
        took <= bound + Duration::from_secs(3),
        "took over after {took:?}, bound {bound:?}"
    );
    assert_served(&second.join().unwrap(), &big, big_size);
    assert_eq!(
        f.up.gets(&path),
        2,
        "the dead leader's fetch and the new leader's"
    );
    uploaded(&f, &waiter, &tier_key("kill", &big), big_size);
    eventually(Duration::from_secs(10), "the lease released", || {
        f.fs.head(&lease).is_none()
    });
}

#[test]
fn pulls_ride_out_a_lost_volume_server_and_a_dead_store() {
    let mut f = Fleet::start();
    f.up.push("small", "library/small:1", None, false);
    f.up.push("large", "library/big:1", None, false);
    let url = f.up.url();
    let extra = "request_timeout = \"1s\"\nretry_after = \"30s\"\n";
    let a = f.node("a", "faults", &url, extra);
    let b = f.node("b", "faults", &url, extra);
    let small = blobs_of(&f.up, "library/small", "1");
    let (layer, layer_size) = small[0].clone();
    let layer_path = format!("/v2/library/small/blobs/{layer}");
    assert_served(
        &get_blob(&format!("{}{layer_path}", a.url())),
        &layer,
        layer_size,
    );
    uploaded(&f, &a, &tier_key("faults", &layer), layer_size);

    // One volume server gone: its copies live on another (replication 001).
    f.fs.kill_volume(0);
    let gets = f.up.gets(&layer_path);
    assert_served(
        &get_blob(&format!("{}{layer_path}", b.url())),
        &layer,
        layer_size,
    );
    assert_eq!(f.up.gets(&layer_path), gets, "read from the tier's replica");

    // The whole store gone: pulls go on from disk and the upstream, and
    // /readyz stays 200 and says the tier is degraded.
    f.fs.stop();
    let (big, big_size) = blobs_of(&f.up, "library/big", "1")[0].clone();
    let started = Instant::now();
    assert_served(
        &get_blob(&format!("{}/v2/library/big/blobs/{big}", a.url())),
        &big,
        big_size,
    );
    assert_served(
        &get_blob(&format!("{}{layer_path}", a.url())),
        &layer,
        layer_size,
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the dead store held a pull {:?}",
        started.elapsed()
    );
    let (status, body) = a.get("/readyz");
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["shared"]["state"], "degraded", "{body}");
    assert!(ready["shared"]["error"].as_str().is_some(), "{body}");
    assert_eq!(a.metric("wharf_shared_degraded"), 1.0);
    // Set aside: the next miss does not even ask the store.
    let c = small[small.len() - 1].clone();
    assert_served(
        &get_blob(&format!("{}/v2/library/small/blobs/{}", a.url(), c.0)),
        &c.0,
        c.1,
    );
    assert!(a.metric("wharf_shared_lookups_total{result=\"set_aside\"}") >= 1.0);
}

/// A manifest by digest through `node`: status, `Content-Type`, body.
fn get_manifest(node: &Served, path: &str) -> (u16, String, Vec<u8>) {
    let r = http()
        .get(format!("{}{path}", node.url()))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ct, r.bytes().unwrap().to_vec())
}

#[test]
fn a_stored_manifest_of_the_wrong_type_is_not_served_and_wrong_keys_stay_secret() {
    use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions};
    let f = Fleet::start();
    f.up.push("small", "library/small:1", None, false);
    let url = f.up.url();
    let a = f.node("a", "types", &url, "");
    let (status, up_type, bytes) = get_manifest(&a, "/v2/library/small/manifests/1");
    assert_eq!(status, 200);
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    let by_digest = format!("/v2/library/small/manifests/{digest}");
    assert_eq!(get_manifest(&a, &by_digest).1, up_type);
    let key = format!("types/manifests/sha256/{}", &digest[7..]);
    eventually(Duration::from_secs(30), "the manifest in the tier", || {
        f.fs.head(&key).is_some()
    });

    // The right bytes (the digest matches) under a type that is not the
    // upstream's, as anyone with write access to the bucket could leave.
    let store = f.fs.store();
    let path = object_store::path::Path::from(key.as_str());
    let mut attributes = Attributes::new();
    attributes.insert(Attribute::ContentType, "text/html".into());
    let opts = PutOptions {
        attributes,
        ..Default::default()
    };
    f.rt.block_on(store.put_opts(&path, bytes.clone().into(), opts))
        .unwrap();
    let b = f.node("b", "types", &url, "");
    let (status, served_type, served) = get_manifest(&b, &by_digest);
    assert_eq!(status, 200);
    assert_eq!(served_type, up_type, "the store's Content-Type was served");
    assert_eq!(served, bytes);
    assert_eq!(b.metric("wharf_shared_verification_failures_total"), 1.0);
    // Replaced by the upstream's answer.
    eventually(
        Duration::from_secs(30),
        "the manifest's type repaired",
        || {
            f.rt.block_on(async {
                let got = store.get(&path).await.unwrap();
                got.attributes
                    .get(&Attribute::ContentType)
                    .is_some_and(|t| t.as_ref() == up_type)
            })
        },
    );

    // An object far larger than a manifest at a manifest's key: not read
    // whole, and replaced by the upstream's answer.
    f.fs.put(&key, &vec![b' '; 5 << 20]);
    let big = f.node("big", "types", &url, "");
    let (status, served_type, served) = get_manifest(&big, &by_digest);
    assert_eq!((status, served_type.as_str()), (200, up_type.as_str()));
    assert_eq!(served, bytes);
    eventually(
        Duration::from_secs(30),
        "the oversized copy replaced",
        || f.fs.get(&key).as_deref() == Some(&bytes[..]),
    );

    // Wrong keys: the store refuses every request; pulls go on, and neither
    // the key id nor either secret shows in /readyz, /metrics or the log.
    let wrong = f.dir.path().join("wrong-secret");
    let wrong_secret = format!("wrong-{}", hex::encode(Sha256::digest(digest.as_bytes())));
    std::fs::write(&wrong, &wrong_secret).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let dir = f.dir.path().join("c");
    std::fs::create_dir_all(&dir).unwrap();
    let body = f
        .body("types", &url, "")
        .replace(&format!("{:?}", f.keys.1), &format!("{wrong:?}"));
    let c = Served::start(&dir, "c", &body);
    let (status, served_type, _) = get_manifest(&c, &by_digest);
    assert_eq!((status, served_type.as_str()), (200, up_type.as_str()));
    let (status, ready) = c.get("/readyz");
    assert_eq!(status, 200, "{ready}");
    let (_, metrics) = c.get("/metrics");
    let log = std::fs::read_to_string(&c.log).unwrap();
    for (what, text) in [
        ("/readyz", &ready),
        ("/metrics", &metrics),
        ("the log", &log),
    ] {
        for secret in [
            f.fs.access_key_id(),
            f.fs.secret_access_key(),
            &wrong_secret,
        ] {
            assert!(!text.contains(secret), "{what} shows a credential: {text}");
        }
    }
}

/// `[shared]` lines of a node that serves its fills to peers on a port of
/// its own and follows theirs, with the fleet's peer key (made once).
fn peer_lines(f: &Fleet, port: u16) -> String {
    use std::os::unix::fs::PermissionsExt;
    let key = f.dir.path().join("peer.key");
    if !key.exists() {
        std::fs::write(&key, random_hex(48)).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    format!("peer_listen = \"127.0.0.1:{port}\"\npeer_key_file = {key:?}\n")
}

/// A GET of `path` on a node's peer listener, signed with `key` (none:
/// unsigned) at `t`, with `nonce`.
fn peer_get(port: u16, path: &str, key: Option<&[u8]>, t: u64, nonce: &str) -> u16 {
    let mut req = http().get(format!("http://127.0.0.1:{port}{path}"));
    if let Some(k) = key {
        req = req.header(
            "authorization",
            wharf::shared::peer::authorization(
                k,
                "GET",
                &format!("127.0.0.1:{port}"),
                path,
                t,
                nonce,
            ),
        );
    }
    req.send().map(|r| r.status().as_u16()).unwrap_or(0)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// With `peer_listen`, the nodes waiting for a cold fill stream it from the
/// leader as it fills (not after its upload): the upstream still sends the
/// layer once. A leader killed mid-stream costs the follower's clients
/// nothing: the follower fetches the rest from the upstream with a range
/// request. The peer listener serves only signed, fresh, unreplayed
/// requests, and only blobs its node leads; it never fetches for a peer.
#[test]
fn waiting_nodes_stream_the_leaders_fill_and_finish_it_from_the_upstream_if_it_dies() {
    let f = Fleet::start();
    f.up.push("large", "library/big:1", None, false);
    let (big, big_size) = blobs_of(&f.up, "library/big", "1")[0].clone();
    let path = format!("/v2/library/big/blobs/{big}");
    // 16 MiB/s: the leader's 64 MiB fill takes about 4 s, so followers
    // join it midway.
    let relay = throttled_relay(&f.rt, f.up.addr(), 16 << 20);
    let slow = format!("http://127.0.0.1:{relay}");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let nodes: Vec<Served> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| f.node(&format!("p{i}"), "peers", &slow, &peer_lines(&f, *p)))
        .collect();
    let refs: Vec<&Served> = nodes.iter().collect();
    for got in fire(&refs, &path, 5) {
        assert_served(&got, &big, big_size);
    }
    assert_eq!(f.up.gets(&path), 1, "the upstream sent the layer once");
    let sum = |series: &str| nodes.iter().map(|n| n.metric(series)).sum::<f64>();
    assert_eq!(
        sum("wharf_shared_lease_waits_total{outcome=\"peer\"}"),
        2.0,
        "both other nodes followed the leader"
    );
    // Counted once the fill is committed, just after its last byte went out.
    eventually(
        Duration::from_secs(10),
        "both to read the whole layer from it",
        || sum("wharf_shared_peer_reads_total{result=\"done\"}") == 2.0,
    );
    assert_eq!(
        sum("wharf_shared_peer_requests_total{result=\"served\"}"),
        2.0
    );
    assert_eq!(
        sum("wharf_shared_lease_waits_total{outcome=\"appeared\"}"),
        0.0
    );
    let leader = eventually(Duration::from_secs(60), "the leader's upload", || {
        nodes
            .iter()
            .position(|n| n.metric("wharf_shared_uploads_total{result=\"done\"}") == 1.0)
    });
    uploaded(&f, &nodes[leader], &tier_key("peers", &big), big_size);
    let lease = format!("peers/leases/sha256/{}", &big[7..]);
    eventually(Duration::from_secs(10), "the lease released", || {
        f.fs.head(&lease).is_none()
    });

    // The listener: signed requests only, each once, and only blobs its
    // node leads (none now: the lease was released after the upload).
    let key = std::fs::read(f.dir.path().join("peer.key")).unwrap();
    let port = ports[leader];
    let peer_path = format!("/wharf-peer/v1/blobs/{big}");
    let gets_before = f.up.requests();
    let now = unix_now();
    assert_eq!(peer_get(port, &peer_path, None, now, &random_hex(16)), 401);
    let wrong = random_hex(48);
    assert_eq!(
        peer_get(
            port,
            &peer_path,
            Some(wrong.as_bytes()),
            now,
            &random_hex(16)
        ),
        401
    );
    assert_eq!(
        peer_get(port, &peer_path, Some(&key), now - 120, &random_hex(16)),
        401,
        "a stale request"
    );
    let nonce = random_hex(16);
    assert_eq!(
        peer_get(port, &peer_path, Some(&key), now, &nonce),
        404,
        "a cached blob whose lease is released is not served"
    );
    assert_eq!(
        peer_get(port, &peer_path, Some(&key), now, &nonce),
        401,
        "a replayed request"
    );
    let unknown = format!("/wharf-peer/v1/blobs/sha256:{}", "ab".repeat(32));
    assert_eq!(
        peer_get(port, &unknown, Some(&key), now, &random_hex(16)),
        404
    );
    assert_eq!(
        peer_get(
            port,
            &format!("/v2/library/big/blobs/{big}"),
            Some(&key),
            now,
            &random_hex(16)
        ),
        404,
        "the peer listener is no registry"
    );
    assert_eq!(
        f.up.requests(),
        gets_before,
        "no peer request reached the upstream"
    );
    assert_eq!(
        nodes[leader].metric("wharf_shared_peer_requests_total{result=\"refused\"}"),
        4.0
    );
    let elsewhere = format!("127.0.0.1:{}", ports[(leader + 1) % 3]);
    let signed_elsewhere = http()
        .get(format!("http://127.0.0.1:{port}{unknown}"))
        .header(
            "authorization",
            wharf::shared::peer::authorization(
                &key,
                "GET",
                &elsewhere,
                &unknown,
                now,
                &random_hex(16),
            ),
        )
        .send()
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(signed_elsewhere, 401, "a request signed for another node");
    drop(nodes);

    // A lease written by someone with the store's keys but not the peer
    // key, naming a server that answers anything with the blob's length:
    // no byte of it is used (no proof), the forged lease is taken over once
    // its ttl passes, and the client gets the layer from the upstream.
    let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_addr = fake.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for conn in fake.incoming().flatten().take(8) {
            let mut conn = conn;
            let mut head = [0u8; 4096];
            let _ = conn.read(&mut head);
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-length: {big_size}\r\n\r\n"
            );
            let junk = vec![b'x'; 1 << 20];
            let mut left = big_size as usize;
            while left > 0 {
                let n = left.min(junk.len());
                if conn.write_all(&junk[..n]).is_err() {
                    break;
                }
                left -= n;
            }
        }
    });
    let lease_body = format!(
        r#"{{"node":"forged","digest":"{big}","since_ms":{},"ttl_ms":3000,"beat":0,"peer":"{fake_addr}"}}"#,
        unix_now() * 1000
    );
    f.fs.put(
        &format!("forged/leases/sha256/{}", &big[7..]),
        lease_body.as_bytes(),
    );
    let victim = f.node(
        "victim",
        "forged",
        &f.up.url(),
        &format!("lease_ttl = \"3s\"\n{}", peer_lines(&f, free_port())),
    );
    assert_served(
        &get_blob(&format!("{}{path}", victim.url())),
        &big,
        big_size,
    );
    assert_eq!(
        victim.metric("wharf_shared_peer_reads_total{result=\"unavailable\"}"),
        1.0,
        "the answer without a proof was refused"
    );
    assert_eq!(
        victim.metric("wharf_shared_lease_waits_total{outcome=\"took_over\"}"),
        1.0
    );
    drop(victim);

    // A real client: skopeo pulls the image through two fresh nodes at once
    // (16 MiB/s upstream); one node leads, the other follows it, and both
    // copies are the upstream's, fetched from it once.
    let relay16 = format!(
        "http://127.0.0.1:{}",
        throttled_relay(&f.rt, f.up.addr(), 16 << 20)
    );
    let pair: Vec<Served> = (0..2)
        .map(|i| {
            f.node(
                &format!("s{i}"),
                "peers-skopeo",
                &relay16,
                &peer_lines(&f, free_port()),
            )
        })
        .collect();
    let before = f.up.gets(&path);
    let tmp = tempfile::tempdir().unwrap();
    std::thread::scope(|s| {
        // The second pull starts once the first node is downloading the
        // layer (4 s at this pace), so it finds a fill to follow however
        // slowly the machine starts skopeo; both started blind, a second
        // skopeo late by more than the fill found the layer in the tier and
        // read no peer.
        let to = tmp.path().join("copy0");
        let first = &pair[0];
        s.spawn(move || skopeo_copy(first, "library/big:1", &to));
        eventually(
            Duration::from_secs(60),
            "the first node downloading the layer",
            || first.metric("wharf_fills_in_flight") >= 1.0,
        );
        let to = tmp.path().join("copy1");
        let second = &pair[1];
        s.spawn(move || skopeo_copy(second, "library/big:1", &to));
    });
    assert_eq!(
        dir_contents(&tmp.path().join("copy0")),
        dir_contents(&tmp.path().join("copy1"))
    );
    assert_eq!(
        f.up.gets(&path) - before,
        1,
        "the layer came from the upstream once"
    );
    let peer_reads = || {
        pair.iter()
            .map(|n| n.metric("wharf_shared_peer_reads_total{result=\"done\"}"))
            .collect::<Vec<f64>>()
    };
    if poll_until(Duration::from_secs(10), || {
        peer_reads().iter().sum::<f64>() == 1.0
    })
    .is_none()
    {
        panic!(
            "the follower's read was not counted: peer reads done per node {:?}, \
             fills in flight {:?}",
            peer_reads(),
            pair.iter()
                .map(|n| n.metric("wharf_fills_in_flight"))
                .collect::<Vec<_>>()
        );
    }
    drop(pair);

    // The leader killed while a follower streams from it: the follower's
    // client gets the whole layer, the rest from the upstream (8 MiB/s: the
    // fill takes about 8 s).
    let relay = throttled_relay(&f.rt, f.up.addr(), 8 << 20);
    let slow = format!("http://127.0.0.1:{relay}");
    let (lp, wp) = (free_port(), free_port());
    let extra = |p| format!("lease_ttl = \"3s\"\n{}", peer_lines(&f, p));
    let mut leader = f.node("kl", "peerkill", &slow, &extra(lp));
    let follower = f.node("kf", "peerkill", &slow, &extra(wp));
    let before = f.up.gets(&path);
    let leader_url = format!("{}{path}", leader.url());
    let first = std::thread::spawn(move || get_blob(&leader_url));
    let lease = format!("peerkill/leases/sha256/{}", &big[7..]);
    eventually(Duration::from_secs(30), "the leader's lease", || {
        f.fs.head(&lease).is_some()
    });
    let follower_url = format!("{}{path}", follower.url());
    let second = std::thread::spawn(move || get_blob(&follower_url));
    eventually(
        Duration::from_secs(30),
        "the follower to stream from the leader",
        || leader.metric("wharf_shared_peer_requests_total{result=\"served\"}") == 1.0,
    );
    std::thread::sleep(Duration::from_millis(1500));
    leader.kill9();
    let _ = first.join().unwrap();
    assert_served(&second.join().unwrap(), &big, big_size);
    eventually(
        Duration::from_secs(10),
        "the follower's resumed read counted",
        || follower.metric("wharf_shared_peer_reads_total{result=\"resumed\"}") == 1.0,
    );
    let log = f.up.access_log();
    let ranged = log
        .iter()
        .filter(|(m, p, s)| m == "GET" && *p == path && *s == 206)
        .count();
    assert_eq!(
        f.up.gets(&path) - before,
        2,
        "the leader's fetch and the follower's rest"
    );
    assert_eq!(ranged, 1, "the rest was a range request");
    uploaded(&f, &follower, &tier_key("peerkill", &big), big_size);
}
