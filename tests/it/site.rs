//! An air-gapped site: wharf and its clients inside a network namespace with
//! no route to anything ([`Netns::isolated`]), wharf offline with a fresh
//! cache and TLS from its own CA. What the site lacks, every client fails to
//! pull, with wharf's answer as the reason and no fallback anywhere, and
//! nothing leaves the namespace: the upstream on the host's loopback, up and
//! holding the image, sees no request.

use std::path::Path;

use crate::harness::*;

/// Manifest requests wharf answered 503 (any method), from its metrics.
fn manifest_503s(w: &Served) -> u64 {
    w.metrics()
        .lines()
        .filter(|l| {
            l.starts_with("wharf_requests_total{")
                && l.contains("endpoint=\"manifest\"")
                && l.contains("status=\"503\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

#[test]
fn site_clients_fail_cleanly_for_what_the_site_lacks_and_nothing_leaves_the_namespace() {
    require(&[
        "ip",
        "curl",
        "dockerd",
        "docker",
        "containerd",
        "ctr",
        "skopeo",
    ]);
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    up.push("small", "library/test:1", None, false);
    let pushed = up.requests();
    let ns = Netns::isolated();

    // Isolation: the upstream answers on the host, and inside the namespace
    // its address is nobody's; nor is any other address off the namespace.
    let (ok, out) = try_run(std::process::Command::new("curl").args([
        "-sS",
        "-o",
        "/dev/null",
        &format!("{}/v2/", up.url()),
    ]));
    assert!(ok, "the upstream answers on the host: {out}");
    let (ok, out) = ns.curl(&[&format!("{}/v2/", up.url())]);
    assert!(
        !ok && out.contains("Couldn't connect"),
        "the host's upstream is reachable from the site: {out}"
    );
    assert!(!ns.can_connect("127.0.0.1", up.port));
    let (ok, out) = ns.curl(&["http://192.0.2.1/"]);
    assert!(!ok, "an outside address is reachable from the site: {out}");
    let (_, routes) = try_run(ns.command("ip").args(["route", "show", "table", "all"]));
    assert!(
        routes.lines().all(|r| r.starts_with("local ")
            || r.starts_with("broadcast ")
            || r.contains(" dev lo ")),
        "routes other than lo's: {routes}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let body = format!(
        "{}offline = true\n",
        Wharf::hub_block(&up, false, Path::new("/"))
    );
    let w = Served::start_in(&ns, tmp.path(), "site", "", &body);
    assert_eq!(w.host(), format!("{SITE_IP}:{SITE_PORT}"));
    // Its CA makes the TLS verifiable from the site (curl checks the name).
    let (status, _) = w.get("/v2/");
    assert_eq!(status, 200);
    let (status, text) = w.get("/v2/library/test/manifests/1");
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("offline mode"), "{text}");
    let mirror = format!("https://{}", w.host());
    let mut refused = manifest_503s(&w);

    // dockerd: reaches wharf over verified TLS, gets 503, and its fallback to
    // Docker Hub goes nowhere.
    let dockerd = Dockerd::start(&ns, &tmp.path().join("dockerd"), &mirror, Some(&w.ca()));
    let (ok, out) = dockerd.docker(&["pull", "test:1"]);
    assert!(!ok, "docker pull of what the site lacks: {out}");
    // The user sees only the fallback's error: Docker Hub, unreachable.
    assert!(
        out.contains("registry-1.docker.io")
            && (out.contains("unreachable") || out.contains("refused")),
        "{out}"
    );
    let log = dockerd.log();
    assert!(
        !log.contains("x509") && !log.contains("certificate"),
        "dockerd trusts the site's CA: {log}"
    );
    let now = manifest_503s(&w);
    assert!(now > refused, "dockerd asked wharf: {log}");
    refused = now;
    drop(dockerd);

    // containerd: hosts.toml with the mirror over TLS and a dead server.
    let ctd = Containerd::start_in(&ns, &tmp.path().join("ctd"));
    let hosts = hosts_dir(tmp.path(), &mirror, Some(&w.ca()));
    let (ok, out) = ctd.pull(&hosts, "docker.io/library/test:1");
    assert!(!ok, "ctr pull of what the site lacks: {out}");
    assert!(out.contains("503 Service Unavailable"), "{out}");
    assert!(!out.contains("x509"), "ctr trusts the site's CA: {out}");
    let now = manifest_503s(&w);
    assert!(now > refused, "ctr asked wharf: {out}");
    refused = now;
    drop(ctd);

    // skopeo: registries.conf mirror over TLS, a dead primary location.
    let skopeo = Skopeo::mirror(&tmp.path().join("skopeo"), &w.host(), Some(&w.ca())).in_ns(&ns);
    let (ok, out) = skopeo.copy_to_dir(
        "docker://docker.io/library/test:1",
        &tmp.path().join("out"),
        false,
    );
    assert!(!ok, "skopeo copy of what the site lacks: {out}");
    assert!(out.contains("503 Service Unavailable"), "{out}");
    assert!(!out.contains("x509"), "skopeo trusts the site's CA: {out}");
    assert!(manifest_503s(&w) > refused, "skopeo asked wharf: {out}");

    assert_eq!(
        up.requests(),
        pushed + 1,
        "only the host's own check reached the upstream: {:?}",
        up.access_log()
    );
}

/// The upstream the site's sync will read: `multi` as an OCI index and as a
/// Docker manifest list of three platforms (one with a variant), its
/// cosign-style signature under cosign's tag, and hundreds of tags made in
/// a moment; pushed through token auth, as the test user.
#[test]
fn site_upstream_fixtures_hold_three_platforms_a_signature_and_many_tags() {
    use sha2::Digest as _;
    let rt = runtime();
    let up = Upstream::start(Auth::Token, &rt);
    up.push("multi", "library/multi:1", None, true);
    up.push_docker_list("library/multi:list");
    let sig_tag = up.push_signature("library/multi");
    let digest = layout_digest("multi");
    assert_eq!(sig_tag, format!("sha256-{}.sig", &digest[7..]));

    let platforms = |m: &serde_json::Value| -> Vec<String> {
        m["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let p = &e["platform"];
                let mut s = format!(
                    "{}/{}",
                    p["os"].as_str().unwrap(),
                    p["architecture"].as_str().unwrap()
                );
                if let Some(v) = p["variant"].as_str() {
                    s += &format!("/{v}");
                }
                s
            })
            .collect()
    };
    let want = ["linux/amd64", "linux/arm64", "linux/arm/v7"];
    let (index, media_type) = up.get_manifest("library/multi", "1");
    assert_eq!(media_type, "application/vnd.oci.image.index.v1+json");
    assert_eq!(
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&index))),
        digest,
        "the pushed index keeps the layout's digest (the signature names it)"
    );
    assert_eq!(platforms(&serde_json::from_slice(&index).unwrap()), want);
    let (list, media_type) = up.get_manifest("library/multi", "list");
    assert_eq!(
        media_type,
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    assert_eq!(platforms(&serde_json::from_slice(&list).unwrap()), want);

    let (sig, media_type) = up.get_manifest("library/multi", &sig_tag);
    assert_eq!(media_type, "application/vnd.oci.image.manifest.v1+json");
    let sig: serde_json::Value = serde_json::from_slice(&sig).unwrap();
    let layer = &sig["layers"][0];
    assert_eq!(
        layer["mediaType"],
        "application/vnd.dev.cosign.simplesigning.v1+json"
    );
    use base64::Engine as _;
    let signature = layer["annotations"]["dev.cosignproject.cosign/signature"]
        .as_str()
        .unwrap();
    assert!(base64::engine::general_purpose::STANDARD
        .decode(signature)
        .is_ok());
    let payload_blob = images()
        .join("blobs/sha256")
        .join(&layer["digest"].as_str().unwrap()[7..]);
    let payload: serde_json::Value =
        serde_json::from_slice(&std::fs::read(payload_blob).unwrap()).unwrap();
    assert_eq!(
        payload["critical"]["image"]["docker-manifest-digest"],
        digest
    );

    // put_manifest: the list again under another tag, byte for byte.
    up.put_manifest(
        "library/multi",
        "list-copy",
        &list,
        "application/vnd.docker.distribution.manifest.list.v2+json",
    );
    assert_eq!(up.get_manifest("library/multi", "list-copy").0, list);

    // retag: 200 tags from one GET and 200 PUTs, quickly.
    let tags: Vec<String> = (0..200).map(|i| format!("1.{i}.0")).collect();
    let gets = up.count("GET", "/v2/library/multi/manifests/");
    let started = std::time::Instant::now();
    up.retag("library/multi", "1", &tags);
    let took = started.elapsed();
    eprintln!("retag of 200 tags: {took:?}");
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    assert_eq!(up.count("GET", "/v2/library/multi/manifests/"), gets + 1);
    let puts: Vec<_> = up
        .access_log()
        .into_iter()
        .filter(|(m, p, _)| m == "PUT" && p.starts_with("/v2/library/multi/manifests/1."))
        .collect();
    assert_eq!(puts.len(), 200);
    assert!(puts.iter().all(|(_, _, status)| *status == 201), "{puts:?}");
    assert_eq!(up.get_manifest("library/multi", "1.199.0").0, index);

    // push_unique: new images with blobs of their own, sharing busybox.
    let (d1, new1) = up.push_unique("library/app", "1.0.0", "2026-01-01T00:00:00Z");
    let (d2, new2) = up.push_unique("library/app", "1.1.0", "2026-02-01T00:00:00Z");
    assert_ne!(d1, d2);
    assert!(new1.iter().all(|b| !new2.contains(b)), "{new1:?} {new2:?}");
    assert_eq!(
        up.count("POST", "/v2/library/app/blobs/uploads/"),
        1 + 2 + 2,
        "busybox once, then each image's own layer and config"
    );
    let (m, _) = up.get_manifest("library/app", "1.1.0");
    assert_eq!(
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&m))),
        d2
    );
}
