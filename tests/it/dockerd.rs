//! dockerd with `registry-mirrors` pulling through wharf over TLS, trusting it
//! only through `/etc/docker/certs.d/<host:port>/ca.crt` — no
//! `insecure-registries`.
//!
//! dockerd never verifies TLS for mirrors on 127.0.0.0/8, so the mirror address
//! must be non-loopback: dockerd runs in a network namespace of its own that has
//! only `lo` with 198.18.0.1, and socat relays 198.18.0.1:5000 in there to
//! wharf on the host's loopback through a unix socket. With only `lo`, dockerd's
//! fallback to the real Docker Hub cannot go anywhere.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::*;

const MIRROR_IP: &str = "198.18.0.1";

struct Netns {
    name: String,
    relays: Vec<Child>,
}

impl Netns {
    /// A namespace with `lo` and 198.18.0.1, and 198.18.0.1:5000 relayed to
    /// `target` on the host.
    fn new(target: std::net::SocketAddr, dir: &Path) -> Netns {
        let name = format!("wharf-{}", random_hex(4));
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns {
            name,
            relays: vec![],
        };
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
        run(Command::new("ip").args([
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{MIRROR_IP}/32"),
            "dev",
            "lo",
        ]));
        let sock = dir.join("relay.sock");
        let mut ns = ns;
        ns.relays.push(
            Command::new("socat")
                .arg(format!("UNIX-LISTEN:{},fork,unlink-early", sock.display()))
                .arg(format!("TCP:{target}"))
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        eventually(
            Duration::from_secs(10),
            &format!("socat to create {}", sock.display()),
            || sock.exists(),
        );
        ns.relays.push(
            Command::new("ip")
                .args(["netns", "exec", &ns.name, "socat"])
                .arg(format!("TCP-LISTEN:5000,bind={MIRROR_IP},fork,reuseaddr"))
                .arg(format!("UNIX-CONNECT:{}", sock.display()))
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for r in &mut self.relays {
            let _ = r.kill();
            let _ = r.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

struct Dockerd {
    child: Child,
    dir: PathBuf,
}

impl Dockerd {
    /// Starts dockerd inside `ns` with `/etc/docker` bind-mounted from
    /// `dir/etc-docker` (so certs.d is the test's), mirror https://198.18.0.1:5000.
    fn start(ns: &Netns, dir: &Path) -> Dockerd {
        let d = dir.display();
        std::fs::create_dir_all(dir.join("etc-docker")).unwrap();
        std::fs::write(
            dir.join("daemon.json"),
            format!(
                r#"{{"data-root": "{d}/data", "exec-root": "{d}/exec", "pidfile": "{d}/docker.pid",
  "hosts": ["unix://{d}/docker.sock"], "iptables": false, "ip-masq": false, "ip6tables": false,
  "bridge": "none", "storage-driver": "vfs", "registry-mirrors": ["https://{MIRROR_IP}:5000"]}}"#
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name))
            .args(["unshare", "-m", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount --bind {d}/etc-docker /etc/docker && exec dockerd --config-file {d}/daemon.json"
            ))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut dockerd = Dockerd {
            child,
            dir: dir.to_owned(),
        };
        let started = poll_until(Duration::from_secs(60), || {
            if let Ok(Some(st)) = dockerd.child.try_wait() {
                panic!("dockerd exited ({st}): {}", dockerd.log());
            }
            dockerd.docker(&["version"]).0
        });
        assert!(
            started.is_some(),
            "dockerd did not start: {}",
            dockerd.log()
        );
        dockerd
    }

    fn docker(&self, args: &[&str]) -> (bool, String) {
        let mut c = Command::new("docker");
        c.env(
            "DOCKER_HOST",
            format!("unix://{}/docker.sock", self.dir.display()),
        )
        .args(args);
        try_run(&mut c)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SIGTERM lets dockerd stop the containerd it started.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let exited = poll_until(Duration::from_secs(20), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if exited.is_some() {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
        &format!("[server.tls]\nnames = [\"{MIRROR_IP}\"]\n"),
        &Wharf::hub_block(&up, false, Path::new("/")),
        "",
    );
    let tmp = tempfile::tempdir().unwrap();
    let ns = Netns::new(w.addr, tmp.path());

    // Without the CA: dockerd refuses the mirror's certificate and, with no
    // route to Docker Hub, the pull fails.
    {
        let dockerd = Dockerd::start(&ns, &tmp.path().join("untrusting"));
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
    let certs = dir.join(format!("etc-docker/certs.d/{MIRROR_IP}:5000"));
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(w.cache_dir().join("tls/ca.crt"), certs.join("ca.crt")).unwrap();
    let dockerd = Dockerd::start(&ns, &dir);
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
