//! dockerd with `registry-mirrors` pulling through wharf over TLS, trusting it
//! only through `/etc/docker/certs.d/<host:port>/ca.crt` — no
//! `insecure-registries`.
//!
//! dockerd never verifies TLS for mirrors on 127.0.0.0/8, so the mirror address
//! must be non-loopback: dockerd runs in an isolated network namespace
//! ([`Netns::isolated`]: only `lo` with 198.18.0.1), and a relay opens
//! 198.18.0.1:5000 in there to wharf on the host's loopback. With only `lo`,
//! dockerd's fallback to the real Docker Hub cannot go anywhere.

use std::path::Path;

use crate::harness::*;

/// Every blob of an image on the upstream (config and layers of each manifest).
fn blobs(up: &Upstream, repo: &str, tag: &str, platform_arch: Option<&str>) -> Vec<String> {
    let get = |r: &str| -> serde_json::Value {
        http()
            .get(format!("{}/v2/{repo}/manifests/{r}", up.url()))
            .header("accept", wharf::registry::MANIFEST_TYPES.join(", "))
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    let mut m = get(tag);
    if let Some(arch) = platform_arch {
        let d = m["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["platform"]["architecture"] == arch)
            .unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_owned();
        m = get(&d);
    }
    let mut v = vec![m["config"]["digest"].as_str().unwrap().to_owned()];
    v.extend(
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned()),
    );
    v
}

#[test]
fn dockerd_pulls_through_a_non_loopback_tls_mirror_trusting_only_the_ca() {
    require(&["dockerd", "docker", "socat", "nsenter", "unshare", "ip"]);
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    up.push("small", "library/test:1", None, false);
    up.push("multi", "library/multi:1", Some("v2s2"), true);
    up.push("large", "library/big:1", None, false);
    let w = Wharf::start_with(
        &rt,
        &format!("[server.tls]\nnames = [\"{SITE_IP}\"]\n"),
        &Wharf::hub_block(&up, false, Path::new("/")),
        "",
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut ns = Netns::isolated();
    ns.relay(5000, w.addr, tmp.path());
    let mirror = format!("https://{SITE_IP}:5000");

    // Without the CA: dockerd refuses the mirror's certificate and, with no
    // route to Docker Hub, the pull fails.
    {
        let dockerd = Dockerd::start(&ns, &tmp.path().join("untrusting"), &mirror, None);
        let (ok, out) = dockerd.docker(&["pull", "test:1"]);
        assert!(!ok, "a pull through an untrusted mirror must fail: {out}");
        let log = dockerd.log();
        assert!(
            log.contains("x509") || log.contains("certificate signed by unknown authority"),
            "dockerd's log names the certificate error: {log}"
        );
    }
    assert_eq!(
        up.gets("/v2/library/test/manifests/1"),
        0,
        "nothing was fetched for it"
    );

    // With the CA in certs.d/<host:port>/ca.crt, and no insecure-registries.
    let dir = tmp.path().join("trusting");
    let ca = w.cache_dir().join("tls/ca.crt");
    let dockerd = Dockerd::start(&ns, &dir, &mirror, Some(&ca));
    assert!(dir
        .join(format!("etc-docker/certs.d/{SITE_IP}:5000/ca.crt"))
        .exists());
    for image in ["test:1", "multi:1", "big:1"] {
        let (ok, out) = dockerd.docker(&["pull", image]);
        assert!(
            ok,
            "docker pull {image} through wharf: {out}\n{}",
            dockerd.log()
        );
    }
    let daemon: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("daemon.json")).unwrap()).unwrap();
    assert!(daemon.get("insecure-registries").is_none());
    let mut all = blobs(&up, "library/test", "1", None);
    all.extend(blobs(&up, "library/multi", "1", Some("amd64")));
    all.extend(blobs(&up, "library/big", "1", None));
    all.sort();
    all.dedup();
    // Each blob crossed the upstream exactly once, whichever repository
    // asked first (test:1 and multi:1 share their amd64 layer and config).
    for b in &all {
        let n: usize = ["library/test", "library/multi", "library/big"]
            .iter()
            .map(|repo| up.gets(&format!("/v2/{repo}/blobs/{b}")))
            .sum();
        assert_eq!(n, 1, "blob {b} fetched {n} times from the upstream");
    }
    let big_layer = blobs(&up, "library/big", "1", None).pop().unwrap();
    assert_eq!(up.gets(&format!("/v2/library/big/blobs/{big_layer}")), 1);
}
