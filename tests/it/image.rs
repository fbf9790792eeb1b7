//! wharf's container image (`scripts/build-image.sh`) and a real containerd
//! running it the way the Kubernetes DaemonSet does.
//!
//! The image is built here from the test suite's own debug binary
//! (`--binary`; the script strips its debug sections as it does a release
//! binary's), not from the release build the script makes by default: a
//! release build would cost CI minutes on 2 cores, and everything else in the
//! image (libraries, users, config, annotations, the layer's layout) is what
//! operators get.
//!
//! The containerd test runs everything inside a network namespace with only
//! `lo` ([`Netns::isolated`]): the node's containerd runs the image with
//! `ctr run --net-host` (hostNetwork), as uid 65532 with a read-only root
//! filesystem, no capabilities, no new privileges, the default seccomp
//! profile and the DaemonSet's memory limit, the cache a host directory
//! owned by 65532, and the DaemonSet's own config (`deploy/kubernetes/
//! config.toml`, its `[[upstream]]` blocks replaced by the test upstream)
//! mounted read-only over /etc/wharf as its ConfigMap is: wharf listens on
//! 127.0.0.1 in plain HTTP. A second containerd, configured exactly by
//! `wharf node-config hosts-dir`, then a third by GKE's node-pool file
//! (`wharf node-config gke`, rendered into hosts.toml by
//! `tests/it/gke_hosts.py` as GKE does), pull through it with `?ns=` routing
//! (the upstream block has no `default`, so nothing else can route), and
//! fall back to the upstream while the container is stopped; started again
//! on the same directory, wharf serves what it had from its cache. The
//! upstream is a CNCF distribution registry on the host, relayed into the
//! namespace at `localhost:PORT`: wharf reaches it by name, through glibc's
//! resolver and the `/etc/hosts` the container is given (the host's, as
//! `--net-host` and a hostNetwork pod get), which a static glibc build would
//! break. Nothing can reach a real registry: the namespace has no route out,
//! and every fallback is the test upstream.
//!
//! It prints the container's peak RSS (VmHWM) and its memory cgroup's peak
//! under the pulls (`--no-capture`); `WHARF_IMAGE_BINARY=target/release/wharf`
//! measures the release build instead.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;

/// wharf's user in the image (and the DaemonSet's runAsUser/runAsGroup).
const WHARF_UID: u32 = 65532;
/// The container's memory limit: the DaemonSet's request = limit
/// (`deploy/kubernetes/daemonset.yaml`), inside which the pulls below run.
const MEMORY_LIMIT: u64 = 512 << 20;

/// An image `scripts/build-image.sh` wrote.
struct Built {
    out: PathBuf,
    digest: String,
    /// The name `ctr images import` gives it.
    name: String,
    /// The layout's tag (the crate's version).
    tag: String,
}

impl Built {
    fn layout(&self) -> PathBuf {
        self.out.join("oci")
    }

    fn blob(&self, digest: &str) -> PathBuf {
        self.layout()
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    fn json(&self, digest: &str) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.blob(digest)).unwrap()).unwrap()
    }
}

/// The wharf binary put in the image: the test suite's, or
/// `$WHARF_IMAGE_BINARY` (target/release/wharf, to measure the image and its
/// memory as shipped).
fn image_binary() -> String {
    std::env::var("WHARF_IMAGE_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_wharf").into())
}

/// Runs the build script on the test suite's wharf binary into `out`, with
/// `extra` arguments: (the image, the script's output).
fn build(out: &Path, extra: &[&str]) -> (Built, String) {
    require(&["umoci", "python3", "objcopy", "tar", "git"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-image.sh");
    let binary = image_binary();
    let mut c = Command::new("bash");
    c.arg(script)
        .args(["--binary", &binary])
        .arg("--out")
        .arg(out)
        .args(extra);
    let (ok, log) = try_run(&mut c);
    assert!(ok, "build-image.sh failed:\n{log}");
    let digest = std::fs::read_to_string(out.join("digest"))
        .unwrap()
        .trim()
        .to_owned();
    let tag = env!("CARGO_PKG_VERSION").to_owned();
    let built = Built {
        out: out.to_owned(),
        digest,
        name: format!("localhost/wharf:{tag}"),
        tag,
    };
    (built, log)
}

fn git(args: &[&str]) -> String {
    run(Command::new("git")
        .arg("-C")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .args(args))
    .trim()
    .to_owned()
}

fn sha256_file(p: &Path) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

#[test]
fn the_image_is_minimal_annotated_reproducible_and_pushable() {
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    let tmp = tempfile::tempdir().unwrap();
    let (a, log) = build(&tmp.path().join("a"), &[]);
    let push = format!("docker://127.0.0.1:{}/wharf/wharf:{}", up.port, a.tag);
    let (b, _) = build(
        &tmp.path().join("b"),
        &["--push", &push, "--", "--dest-tls-verify=false"],
    );

    // Two builds of the same commit and binary: the same image, byte for
    // byte, and the same archive.
    assert_eq!(a.digest, b.digest, "{log}");
    assert_eq!(
        sha256_file(&a.out.join("wharf.oci.tar")),
        sha256_file(&b.out.join("wharf.oci.tar"))
    );

    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.layout().join("index.json")).unwrap()).unwrap();
    let entry = &index["manifests"][0];
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(entry["digest"], a.digest.as_str());
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        a.tag.as_str()
    );
    assert_eq!(
        entry["annotations"]["io.containerd.image.name"],
        a.name.as_str()
    );

    // The annotations: source, version, revision, created (the commit's
    // time, which is what makes it reproducible).
    let manifest = a.json(&a.digest);
    let notes = &manifest["annotations"];
    let commit = git(&["rev-parse", "HEAD"]);
    let created = run(Command::new("date").args([
        "-u",
        "-d",
        &format!("@{}", git(&["log", "-1", "--format=%ct"])),
        "+%Y-%m-%dT%H:%M:%SZ",
    ]));
    assert_eq!(
        notes["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        notes["org.opencontainers.image.revision"]
            .as_str()
            .unwrap()
            .starts_with(&commit),
        "{notes}"
    );
    assert_eq!(notes["org.opencontainers.image.created"], created.trim());
    assert!(notes["org.opencontainers.image.source"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));

    // The config: wharf's user, its entry point and command, its ports.
    let config = a.json(manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    assert_eq!(config["created"], created.trim());
    let c = &config["config"];
    assert_eq!(c["User"], "65532:65532");
    assert_eq!(c["Entrypoint"], serde_json::json!(["/usr/bin/wharf"]));
    assert_eq!(
        c["Cmd"],
        serde_json::json!(["serve", "--config", "/etc/wharf/config.toml"])
    );
    let ports: Vec<&str> = c["ExposedPorts"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(ports, ["5000/tcp", "9090/tcp"]);
    assert_eq!(c["Labels"], *notes, "labels repeat the annotations");

    // One layer, and in it exactly: the binary, the libraries ldd names, the
    // CA bundle, users and groups, nsswitch, the config, and the cache
    // directory owned by wharf. No shell, nothing else.
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    let layer = a.blob(layers[0]["digest"].as_str().unwrap());
    let listing = run(Command::new("tar")
        .args(["-tvzf"])
        .arg(&layer)
        .arg("--numeric-owner"));
    let mut files = Vec::new();
    let mut cache_dir = None;
    for line in listing.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let path = f[5].trim_start_matches("./");
        match f[0].chars().next() {
            Some('-') => {
                assert_eq!(f[1], "0/0", "{line}");
                files.push(path.to_owned());
            }
            Some('d') if path == "var/lib/wharf/" => cache_dir = Some((f[0], f[1])),
            Some('d') => assert_eq!(f[1], "0/0", "{line}"),
            Some('l') => {}
            _ => panic!("unexpected entry: {line}"),
        }
    }
    assert_eq!(cache_dir, Some(("drwx------", "65532/65532")), "{listing}");
    let ldd = run(Command::new("ldd").arg(image_binary()));
    let mut want: Vec<String> = ldd
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(|p| {
            let name = Path::new(p).file_name().unwrap().to_string_lossy();
            format!("usr/lib/x86_64-linux-gnu/{name}")
        })
        .chain(
            [
                "etc/group",
                "etc/nsswitch.conf",
                "etc/passwd",
                "etc/ssl/certs/ca-certificates.crt",
                "etc/wharf/config.toml",
                "usr/bin/wharf",
            ]
            .map(String::from),
        )
        .collect();
    want.sort();
    want.dedup();
    files.sort();
    assert_eq!(files, want, "{listing}");
    assert!(want.len() < 12, "glibc's few libraries only: {want:?}");

    // The image's own config is valid for this wharf.
    let (ok, out) = try_run(
        Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(["check-config", "--config"])
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/deploy/image/config.toml"
            )),
    );
    assert!(ok, "{out}");

    // --push: the registry holds the same manifest.
    let r = http()
        .head(format!("{}/v2/wharf/wharf/manifests/{}", up.url(), a.tag))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(r.headers()["docker-content-digest"], a.digest.as_str());
}

/// The upstream's access log lines sent by `agent` (a User-Agent prefix), as
/// "METHOD PATH".
fn upstream_requests_by(up: &Upstream, agent: &str) -> Vec<String> {
    let log = std::fs::read_to_string(up.dir.path().join("registry.log")).unwrap_or_default();
    log.lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once("] \"")?;
            let (request, rest) = rest.split_once('"')?;
            let ua = rest.trim_end().strip_suffix('"')?.rsplit('"').next()?;
            ua.starts_with(agent)
                .then(|| request.rsplit_once(' ').map(|(r, _)| r.to_owned()))?
        })
        .collect()
}

/// The DaemonSet's wharf configuration (its ConfigMap,
/// `deploy/kubernetes/config.toml`) with the test upstream in place of its
/// `[[upstream]]` blocks: Docker Hub's aliases, no `default`, so only
/// containerd's `?ns=` routes to it. Returns the text and its registry and
/// admin ports.
fn daemonset_config(upstream_port: u16) -> (String, u16, u16) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kubernetes/config.toml"
    ))
    .unwrap();
    let (server, _) = text
        .split_once("\n[[upstream]]")
        .expect("the DaemonSet's config has [[upstream]] blocks");
    let port = |key: &str| -> u16 {
        let line = server
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in the DaemonSet's config"));
        let addr = line.split('"').nth(1).unwrap();
        addr.rsplit_once(':').unwrap().1.parse().unwrap()
    };
    let (listen, admin) = (port("listen"), port("admin_listen"));
    let config = format!(
        "{server}\n[[upstream]]\nname = \"hub\"\nurl = \"http://localhost:{upstream_port}\"\naliases = [\"docker.io\"]\n"
    );
    (config, listen, admin)
}

/// The node's wharf as the DaemonSet runs it: `ctr run` of `image` with the
/// namespace's network (hostNetwork), uid 65532 from the image, a read-only
/// root, ctr's default seccomp profile (RuntimeDefault), the DaemonSet's
/// memory limit, the cache a host directory, the config directory mounted
/// read-only over /etc/wharf (the ConfigMap volume). Waits until its admin
/// listener answers /readyz.
fn start_wharf<'a>(
    ctd: &'a Containerd,
    ns: &Netns,
    dir: &Path,
    image: &str,
    cache: &Path,
    config: &Path,
    admin: u16,
) -> Container<'a> {
    let memory = MEMORY_LIMIT.to_string();
    let cache_mount = format!(
        "type=bind,src={},dst=/var/lib/wharf,options=rbind:rw",
        cache.display()
    );
    let config_mount = format!(
        "type=bind,src={},dst=/etc/wharf,options=rbind:ro",
        config.parent().unwrap().display()
    );
    let c = ctd.run(
        dir,
        image,
        // Unique on the host: runc names the cgroup /test/<id>.
        &ns.name,
        &[
            "--read-only",
            "--seccomp",
            "--memory-limit",
            &memory,
            "--mount",
            &cache_mount,
            "--mount",
            &config_mount,
        ],
    );
    eventually(
        Duration::from_secs(30),
        "wharf in its container to be ready",
        || {
            if c.status().as_deref() != Some("RUNNING") {
                panic!("the wharf container stopped:\n{}", c.log());
            }
            let (ok, out) = ns.curl(&[
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("http://127.0.0.1:{admin}/readyz"),
            ]);
            ok && out.trim() == "200"
        },
    );
    c
}

/// `wharf node-config ARGS --config CONFIG` on the host: its output.
fn node_config(args: &[&str], config: &Path) -> String {
    run(Command::new(env!("CARGO_BIN_EXE_wharf"))
        .arg("node-config")
        .args(args)
        .arg("--config")
        .arg(config))
}

/// GKE's node-pool file (`wharf node-config gke`) turned into the hosts.toml
/// files GKE writes on each node, by `tests/it/gke_hosts.py` (the
/// Kubernetes tests' reading of it, which cites Google's documents).
fn gke_hosts_dir(config: &Path, dir: &Path) -> PathBuf {
    require(&["python3"]);
    let yaml = node_config(&["gke"], config);
    let file = dir.join("containerd-config.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let hosts = dir.join("hosts.d");
    run(Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/it/gke_hosts.py"
        ))
        .arg(&file)
        .arg(&hosts));
    hosts
}

/// Pulls `image` with `ctd` and `hosts`, with wharf stopped: it must come
/// from the upstream (containerd's own requests) within `bound`.
fn falls_back(ctd: &Containerd, hosts: &Path, image: &str, up: &Upstream) -> Duration {
    let repo = image
        .trim_start_matches("docker.io/")
        .split(':')
        .next()
        .unwrap();
    let started = Instant::now();
    let (ok, out) = ctd.pull(hosts, image);
    let took = started.elapsed();
    assert!(ok, "pull of {image} with wharf stopped: {out}");
    let by_containerd = upstream_requests_by(up, "containerd/");
    assert!(
        by_containerd
            .iter()
            .any(|r| r.starts_with(&format!("GET /v2/{repo}/manifests/"))),
        "{image} from the upstream: {by_containerd:?}"
    );
    took
}

#[test]
fn containerd_runs_the_image_as_the_daemonset_would_and_pulls_go_through_it() {
    require(&["containerd", "ctr", "runc", "curl", "socat"]);
    let daemonset = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kubernetes/daemonset.yaml"
    ))
    .unwrap();
    assert!(
        daemonset.contains(&format!("memory: {}Mi", MEMORY_LIMIT >> 20)),
        "MEMORY_LIMIT is the DaemonSet's"
    );
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    up.push("small", "library/test:1", None, false);
    up.push("multi", "library/multi:1", None, true);
    up.push("large", "library/big:1", None, false);
    up.push("ev1", "library/other:1", None, false);
    up.push("ev2", "library/another:1", None, false);
    let tmp = tempfile::tempdir().unwrap();
    let (built, _) = build(&tmp.path().join("image"), &[]);

    let mut ns = Netns::isolated();
    ns.relay_at("127.0.0.1", up.port, up.addr(), tmp.path());

    // The node's containerd, with wharf's image imported.
    let node = Containerd::start_for_containers_in(&ns, &tmp.path().join("node"));
    let (ok, out) = node.import(&built.out.join("wharf.oci.tar"));
    assert!(ok, "ctr images import: {out}");
    let (_, images) = node.ctr(&["images", "ls"]);
    assert!(
        images.contains(&built.name) && images.contains(&built.digest),
        "{images}"
    );

    // The cache on a host directory owned by wharf's user (what the
    // DaemonSet's init container, `wharf node-config cache-dir`, does), the
    // DaemonSet's config with the test upstream.
    let cache = tmp.path().join("var-lib-wharf");
    std::fs::create_dir(&cache).unwrap();
    std::os::unix::fs::chown(&cache, Some(WHARF_UID), Some(WHARF_UID)).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
    let config = tmp.path().join("etc-wharf/config.toml");
    std::fs::create_dir(config.parent().unwrap()).unwrap();
    let (text, port, admin) = daemonset_config(up.port);
    std::fs::write(&config, text).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();

    let wharf = start_wharf(&node, &ns, tmp.path(), &built.name, &cache, &config, admin);

    // As the DaemonSet's securityContext says: uid and gid 65532, no
    // capabilities, no new privileges, seccomp, a read-only root.
    for field in ["Uid", "Gid"] {
        let ids = wharf.proc_status(field);
        assert!(
            ids.split_whitespace().all(|i| i == WHARF_UID.to_string()),
            "{field}: {ids}"
        );
    }
    assert_eq!(wharf.proc_status("CapEff"), "0000000000000000");
    assert_eq!(wharf.proc_status("CapPrm"), "0000000000000000");
    assert_eq!(wharf.proc_status("NoNewPrivs"), "1");
    assert_eq!(wharf.proc_status("Seccomp"), "2");
    let mountinfo = wharf.mountinfo();
    let root = mountinfo
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f[4] == "/")
        .expect("a root mount");
    assert!(
        root[5].split(',').any(|o| o == "ro"),
        "root is read-only: {root:?}"
    );

    // A second containerd on the node, configured exactly by `wharf
    // node-config hosts-dir`, pulls through wharf: a single-platform image,
    // an index, a 64 MiB layer, at once.
    let hosts = tmp.path().join("certs.d");
    node_config(&["hosts-dir", hosts.to_str().unwrap()], &config);
    let docker_io = std::fs::read_to_string(hosts.join("docker.io/hosts.toml")).unwrap();
    assert!(
        docker_io.contains(&format!("\"http://127.0.0.1:{port}\"")),
        "{docker_io}"
    );
    let puller = Containerd::start_in(&ns, &tmp.path().join("puller"));
    let hosts_arg = hosts.to_str().unwrap();
    let pulls = [
        [
            "images",
            "pull",
            "--hosts-dir",
            hosts_arg,
            "docker.io/library/test:1",
        ],
        [
            "images",
            "pull",
            "--hosts-dir",
            hosts_arg,
            "docker.io/library/multi:1",
        ],
        [
            "content",
            "fetch",
            "--hosts-dir",
            hosts_arg,
            "docker.io/library/big:1",
        ],
    ];
    let p = &puller;
    std::thread::scope(|s| {
        let handles: Vec<_> = pulls
            .iter()
            .map(|args| s.spawn(move || (args, p.ctr(args))))
            .collect();
        for h in handles {
            let (args, (ok, out)) = h.join().unwrap();
            assert!(ok, "ctr {args:?}: {out}\nwharf:\n{}", wharf.log());
        }
    });
    // The pulls went to wharf (routed by ?ns=docker.io: it has no default
    // upstream), and wharf fetched from the upstream; containerd itself
    // never reached the upstream.
    let metrics = || {
        let (ok, out) = ns.curl(&[&format!("http://127.0.0.1:{admin}/metrics")]);
        assert!(ok, "{out}");
        out
    };
    let m = metrics();
    let heads = "wharf_requests_total{endpoint=\"manifest\",method=\"HEAD\",status=\"200\"}";
    let blob_misses = "wharf_cache_results_total{endpoint=\"blob\",result=\"miss\"}";
    let blob_hits = "wharf_cache_results_total{endpoint=\"blob\",result=\"hit\"}";
    // test:1 and multi:1 (amd64) share their config and layer; big:1 has
    // its own: four blobs.
    assert!(metric_value(&m, blob_misses) >= 4.0, "{m}");
    assert!(metric_value(&m, heads) >= 3.0, "{m}");
    let by_wharf = upstream_requests_by(&up, "wharf/");
    assert!(
        by_wharf
            .iter()
            .any(|r| r.starts_with("GET /v2/library/big/blobs/")),
        "{by_wharf:?}"
    );
    let by_containerd = upstream_requests_by(&up, "containerd/");
    assert!(
        by_containerd.is_empty(),
        "containerd bypassed wharf: {by_containerd:?}"
    );

    // Memory under those pulls, for the DaemonSet's request = limit.
    let hwm_kib: u64 = wharf
        .proc_status("VmHWM")
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    let cgroup_peak = wharf.memory_cgroup("memory.max_usage_in_bytes");
    eprintln!(
        "wharf container: VmHWM {} KiB, cgroup memory.max_usage_in_bytes {:?} (limit {} MiB)",
        hwm_kib,
        cgroup_peak,
        MEMORY_LIMIT >> 20
    );
    assert!(hwm_kib * 1024 < MEMORY_LIMIT / 4, "VmHWM {hwm_kib} KiB");

    // GKE's node-pool file, rendered into hosts.toml as GKE does: another
    // containerd pulls test:1 through wharf with it.
    let gke = gke_hosts_dir(&config, tmp.path());
    let gke_node = Containerd::start_in(&ns, &tmp.path().join("gke"));
    let before = metric_value(&metrics(), heads);
    let (ok, out) = gke_node.pull(&gke, "docker.io/library/test:1");
    assert!(ok, "pull with GKE's hosts.toml: {out}");
    assert_eq!(metric_value(&metrics(), heads), before + 1.0);
    let by_containerd = upstream_requests_by(&up, "containerd/");
    assert!(
        by_containerd.is_empty(),
        "containerd bypassed wharf: {by_containerd:?}"
    );

    // SIGTERM (the kubelet stopping the pod): wharf stops within its grace.
    let cached = upstream_requests_by(&up, "wharf/").len();
    assert!(
        wharf.stop(Duration::from_secs(30)),
        "wharf stopped on SIGTERM"
    );

    // With wharf gone, containerd falls back to the upstream at once, with
    // either configuration: nothing listens on the mirror's port, so each
    // attempt is refused without waiting for a dial timeout (containerd's
    // default is 30 s; 1.6 ignores dial_timeout, which came in 2.1).
    let took = falls_back(&puller, &hosts, "docker.io/library/other:1", &up);
    let took_gke = falls_back(&gke_node, &gke, "docker.io/library/another:1", &up);
    eprintln!(
        "pulls with wharf stopped, from the upstream: {took:?} (hosts-dir), {took_gke:?} (GKE)"
    );
    assert!(took < Duration::from_secs(10) && took_gke < Duration::from_secs(10));

    // Started again on the same host directory: the cache is kept. A fresh
    // containerd pulls test:1 again; every blob is a hit, the tag is within
    // its TTL, and wharf asks the upstream nothing.
    let wharf = start_wharf(&node, &ns, tmp.path(), &built.name, &cache, &config, admin);
    let fresh = Containerd::start_in(&ns, &tmp.path().join("fresh"));
    let (ok, out) = fresh.pull(&hosts, "docker.io/library/test:1");
    assert!(ok, "pull after the restart: {out}\n{}", wharf.log());
    let m = metrics();
    assert!(metric_value(&m, blob_hits) >= 2.0, "{m}");
    assert_eq!(metric_value(&m, blob_misses), 0.0, "{m}");
    assert_eq!(
        upstream_requests_by(&up, "wharf/").len(),
        cached,
        "no upstream request after the restart"
    );
    drop(wharf);
}
