//! Real clients pulling through wharf: cold (filled from the upstream), warm
//! with the upstream stopped (served from cache), and private repositories
//! through an authenticating upstream with wharf's stored credentials.

use std::process::Command;

use crate::harness::*;

/// Seeds a plain upstream with every image shape the issue names.
fn seed(up: &Upstream) {
    up.push("small", "library/test:1", None, false); // single-arch OCI
    up.push("small", "library/test:docker", Some("v2s2"), false); // Docker schema 2
    up.push("multi", "library/multi:1", None, true); // OCI index
    up.push("multi", "library/multi:list", Some("v2s2"), true); // Docker manifest list
    up.push("large", "library/big:1", None, false); // 64 MiB layer
}

const IMAGES: &[(&str, bool)] = &[
    ("library/test:1", false),
    ("library/test:docker", false),
    ("library/multi:1", true),
    ("library/multi:list", true),
    ("library/big:1", false),
];

#[test]
fn skopeo_pulls_are_identical_to_direct_and_survive_a_stopped_upstream() {
    let rt = runtime();
    let mut up = Upstream::start(Auth::None, &rt);
    seed(&up);
    // tag_ttl 0: every tag request revalidates, so the warm pull below also
    // proves stale-if-error with the upstream down.
    let w = Wharf::start(
        &rt,
        &Wharf::hub_block(&up, false, std::path::Path::new("/")),
        "tag_ttl = \"0s\"",
    );
    let tmp = tempfile::tempdir().unwrap();
    let conf = registries_conf(tmp.path(), w.addr);

    for (i, (image, all)) in IMAGES.iter().enumerate() {
        let direct = tmp.path().join(format!("direct-{i}"));
        let cold = tmp.path().join(format!("cold-{i}"));
        let (ok, out) = skopeo_to_dir(
            None,
            &format!("docker://{}/{image}", up.addr()),
            &direct,
            *all,
        );
        assert!(ok, "direct copy of {image}: {out}");
        let (ok, out) = skopeo_to_dir(
            Some(&conf),
            &format!("docker://docker.io/{image}"),
            &cold,
            *all,
        );
        assert!(ok, "copy of {image} through wharf: {out}");
        assert_eq!(
            dir_contents(&direct),
            dir_contents(&cold),
            "{image}: wharf must serve the upstream's exact bytes"
        );
    }
    let big_layer = big_layer_digest(&tmp.path().join("direct-4"));
    assert_eq!(
        up.gets(&format!("/v2/library/big/blobs/{big_layer}")),
        2,
        "one direct copy and one fill"
    );

    up.stop();
    for (i, (image, all)) in IMAGES.iter().enumerate() {
        let warm = tmp.path().join(format!("warm-{i}"));
        let (ok, out) = skopeo_to_dir(
            Some(&conf),
            &format!("docker://docker.io/{image}"),
            &warm,
            *all,
        );
        assert!(ok, "warm copy of {image} with the upstream stopped: {out}");
        assert_eq!(
            dir_contents(&tmp.path().join(format!("direct-{i}"))),
            dir_contents(&warm),
            "{image}"
        );
    }
    up.resume();
    assert_eq!(
        up.gets(&format!("/v2/library/big/blobs/{big_layer}")),
        2,
        "warm pulls never reached the upstream"
    );
    let mut w = w;
    w.stop(&rt); // graceful shutdown flushes metadata and returns Ok
}

/// The largest blob in a `dir:` copy: the 64 MiB layer.
fn big_layer_digest(dir: &std::path::Path) -> String {
    let (name, _) = dir_contents(dir)
        .into_iter()
        .max_by_key(|(_, b)| b.len())
        .unwrap();
    format!("sha256:{name}")
}

/// An upstream over TLS, as every public registry is, with HTTP/2 offered:
/// wharf asks for manifests over HTTP/2 and blob bodies over HTTP/1.1 (a
/// fill over HTTP/2 took twice the time and three times the upstream's CPU:
/// upstream::client), and the copy is identical to a direct one.
#[test]
fn a_tls_upstream_serves_blobs_over_http1_and_manifests_over_http2() {
    let rt = runtime();
    let up = Upstream::start_tls(&rt);
    up.push("large", "library/big:1", None, false);
    let block = format!(
        "[[upstream]]\nname = \"hub\"\nurl = \"{}\"\nca_file = {:?}\naliases = [\"docker.io\"]\ndefault = true\n",
        up.url(),
        up.ca_file().unwrap()
    );
    let w = Wharf::start(&rt, &block, "");
    let tmp = tempfile::tempdir().unwrap();
    let conf = registries_conf(tmp.path(), w.addr);
    let (direct, through) = (tmp.path().join("direct"), tmp.path().join("through"));
    let (ok, out) = skopeo_to_dir(
        None,
        &format!("docker://{}/library/big:1", up.addr()),
        &direct,
        false,
    );
    assert!(ok, "direct copy: {out}");
    // From here on, every request the upstream sees is wharf's.
    let before = |kind: &str| up.protocols(&format!("/v2/library/big/{kind}/")).len();
    let (blobs_before, manifests_before) = (before("blobs"), before("manifests"));
    let (ok, out) = skopeo_to_dir(
        Some(&conf),
        "docker://docker.io/library/big:1",
        &through,
        false,
    );
    assert!(ok, "copy through wharf: {out}");
    assert_eq!(dir_contents(&direct), dir_contents(&through));

    let blobs = &up.protocols("/v2/library/big/blobs/")[blobs_before..];
    let gets = blobs.iter().filter(|(m, _)| m == "GET").count();
    assert_eq!(gets, 2, "config and layer, once each: {blobs:?}");
    assert!(blobs.iter().all(|(_, p)| p == "HTTP/1.1"), "{blobs:?}");
    let manifests = &up.protocols("/v2/library/big/manifests/")[manifests_before..];
    assert!(
        !manifests.is_empty() && manifests.iter().all(|(_, p)| p == "HTTP/2.0"),
        "{manifests:?}"
    );
}

#[test]
fn podman_pulls_through_a_registries_conf_mirror() {
    require(&["podman"]);
    let rt = runtime();
    let mut up = Upstream::start(Auth::None, &rt);
    up.push("small", "library/test:1", None, false);
    up.push("multi", "library/multi:1", None, true);
    let w = Wharf::start(
        &rt,
        &Wharf::hub_block(&up, false, std::path::Path::new("/")),
        "",
    );
    let tmp = tempfile::tempdir().unwrap();
    let conf = registries_conf(tmp.path(), w.addr);
    std::fs::write(
        tmp.path().join("storage.conf"),
        format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{0}/root\"\nrunroot = \"{0}/run\"\n",
            tmp.path().display()
        ),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("containers.conf"),
        format!(
            "[network]\nnetwork_config_dir = \"{}/net\"\n",
            tmp.path().display()
        ),
    )
    .unwrap();
    let podman = |args: &[&str]| {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_REGISTRIES_CONF", &conf)
            .env("CONTAINERS_STORAGE_CONF", tmp.path().join("storage.conf"))
            .env("CONTAINERS_CONF", tmp.path().join("containers.conf"))
            .arg("--root")
            .arg(tmp.path().join("root"))
            .arg("--runroot")
            .arg(tmp.path().join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args);
        try_run(&mut c)
    };
    let digest_direct = manifest_digest(&up.url(), "library/test", "1");
    for round in ["cold", "warm"] {
        for image in ["docker.io/library/test:1", "docker.io/library/multi:1"] {
            let (ok, out) = podman(&["pull", "-q", image]);
            assert!(ok, "{round} podman pull {image}: {out}");
        }
        let (ok, out) = podman(&[
            "image",
            "inspect",
            "--format",
            "{{.Digest}}",
            "docker.io/library/test:1",
        ]);
        assert!(ok, "{out}");
        assert_eq!(
            out.trim(),
            digest_direct,
            "{round}: podman got the upstream's manifest"
        );
        // Next round: from cache only.
        let (ok, out) = podman(&["rmi", "-a", "-f"]);
        assert!(ok, "{out}");
        up.stop();
    }
}

/// The digest the upstream itself gives for a tag.
pub fn manifest_digest(base: &str, repo: &str, tag: &str) -> String {
    let accept = wharf::registry::MANIFEST_TYPES.join(", ");
    let r = http()
        .get(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("accept", accept)
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn containerd_pulls_through_hosts_toml_with_ns() {
    let rt = runtime();
    let mut up = Upstream::start(Auth::None, &rt);
    up.push("small", "library/test:1", None, false);
    up.push("multi", "library/multi:list", Some("v2s2"), true);
    // No default upstream: only ?ns=docker.io can route these requests.
    let block =
        Wharf::hub_block(&up, false, std::path::Path::new("/")).replace("default = true\n", "");
    let w = Wharf::start(&rt, &block, "");
    let tmp = tempfile::tempdir().unwrap();
    let hosts = tmp.path().join("hosts/docker.io");
    std::fs::create_dir_all(&hosts).unwrap();
    std::fs::write(
        hosts.join("hosts.toml"),
        format!(
            "server = \"http://127.0.0.1:{DEAD_PORT}\"\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            w.addr
        ),
    )
    .unwrap();
    let hosts_dir = tmp.path().join("hosts");
    let hd = hosts_dir.to_str().unwrap();
    let ctd = Containerd::start(&tmp.path().join("ctd"));
    let want = manifest_digest(&up.url(), "library/test", "1");
    for round in ["cold", "warm"] {
        for image in ["docker.io/library/test:1", "docker.io/library/multi:list"] {
            let (ok, out) = ctd.ctr(&["images", "pull", "--hosts-dir", hd, image]);
            assert!(ok, "{round} ctr pull {image}: {out}");
        }
        let (ok, out) = ctd.ctr(&["images", "ls"]);
        assert!(ok && out.contains(&want), "{round}: {out}");
        // Remove images and content so the next round fetches everything again.
        let (ok, out) = ctd.ctr(&[
            "images",
            "rm",
            "docker.io/library/test:1",
            "docker.io/library/multi:list",
        ]);
        assert!(ok, "{out}");
        let (_, list) = ctd.ctr(&["content", "ls", "-q"]);
        for d in list.lines().filter(|l| l.starts_with("sha256:")) {
            ctd.ctr(&["content", "rm", d]);
        }
        up.stop();
    }
    let _ = w;
}

#[test]
fn private_repository_through_token_and_basic_upstreams() {
    let rt = runtime();
    for auth in [Auth::Token, Auth::Basic] {
        let up = Upstream::start(auth, &rt);
        up.push("small", "private/app:1", None, false);
        let tmp = tempfile::tempdir().unwrap();
        let with = Wharf::start(&rt, &Wharf::hub_block(&up, true, tmp.path()), "");
        let without = Wharf::start(&rt, &Wharf::hub_block(&up, false, tmp.path()), "");

        let issued = || {
            up.token
                .as_ref()
                .map(|t| t.issued.load(std::sync::atomic::Ordering::SeqCst))
        };
        let before = issued();
        let conf = registries_conf(tmp.path(), with.addr);
        let pull = |dest: &str| {
            skopeo_to_dir(
                Some(&conf),
                "docker://docker.io/private/app:1",
                &tmp.path().join(dest),
                false,
            )
        };
        let (ok, out) = pull("ok");
        assert!(ok, "pull with wharf's stored credentials: {out}");
        if let (Some(b), Some(a)) = (before, issued()) {
            // First request: 401, then one token for repository:private/app:pull,
            // reused for the manifest, config and layer requests that follow.
            assert_eq!(a - b, 1, "one token for the whole pull");
        }

        // Without credentials wharf cannot read it, and says so: 403 DENIED.
        let r = http()
            .get(format!("{}/v2/private/app/manifests/1", without.url()))
            .send()
            .unwrap();
        assert_eq!(r.status(), 403);
        let body = r.text().unwrap();
        assert!(
            body.contains("DENIED") && body.contains("no credentials"),
            "{body}"
        );
        // Secrets never reach clients.
        assert!(!body.contains(&up.pass) && !out.contains(&up.pass));

        // Warm: from cache within the tag TTL: no upstream request, no token.
        let after_first = issued();
        let (ok, out) = pull("again");
        assert!(ok, "{out}");
        assert_eq!(issued(), after_first);
        assert_eq!(
            dir_contents(&tmp.path().join("ok")),
            dir_contents(&tmp.path().join("again"))
        );
    }
}
