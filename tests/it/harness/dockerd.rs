//! dockerd 20.10 inside a [`Netns`], pulling through a `registry-mirrors`
//! entry: private data-root, exec-root, pidfile and socket under the test's
//! directory, no iptables, no bridge, vfs storage, and `/etc/docker`
//! bind-mounted from the test's directory in a private mount namespace so
//! `certs.d/<host:port>/ca.crt` is the test's (that path is fixed in
//! dockerd). On any mirror error dockerd falls back to the real Docker Hub:
//! only a namespace without routes makes that fallback go nowhere, so this
//! runner has no host variant.
//!
//! Stopped by PID on drop (SIGTERM, so it stops the containerd it started).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use super::{poll_until, require, try_run, Netns};

pub struct Dockerd {
    child: Child,
    pub dir: PathBuf,
}

impl Dockerd {
    /// Starts dockerd in `ns` with `mirror` (a URL with its scheme, which
    /// dockerd uses as given: `https://198.18.0.1:5000`) as its only registry
    /// mirror, trusting `ca` for it when given (copied to
    /// `dir/etc-docker/certs.d/<host:port>/ca.crt`); no insecure-registries.
    /// Waits (at most 60 s) until it answers.
    pub fn start(ns: &Netns, dir: &Path, mirror: &str, ca: Option<&Path>) -> Dockerd {
        require(&["dockerd", "docker", "nsenter", "unshare"]);
        let d = dir.display();
        std::fs::create_dir_all(dir.join("etc-docker")).unwrap();
        if let Some(ca) = ca {
            let host = mirror
                .split_once("://")
                .map_or(mirror, |(_, rest)| rest)
                .trim_end_matches('/');
            let certs = dir.join("etc-docker/certs.d").join(host);
            std::fs::create_dir_all(&certs).unwrap();
            std::fs::copy(ca, certs.join("ca.crt")).unwrap();
        }
        std::fs::write(
            dir.join("daemon.json"),
            format!(
                r#"{{"data-root": "{d}/data", "exec-root": "{d}/exec", "pidfile": "{d}/docker.pid",
  "hosts": ["unix://{d}/docker.sock"], "iptables": false, "ip-masq": false, "ip6tables": false,
  "bridge": "none", "storage-driver": "vfs", "registry-mirrors": ["{mirror}"]}}"#
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let child = ns
            .nsenter("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
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

    /// A `docker` command against this daemon: (success, stdout+stderr).
    pub fn docker(&self, args: &[&str]) -> (bool, String) {
        let mut c = Command::new("docker");
        c.env(
            "DOCKER_HOST",
            format!("unix://{}/docker.sock", self.dir.display()),
        )
        .args(args);
        try_run(&mut c)
    }

    /// dockerd's log: the mirror's errors are here, not in the client's
    /// output (which names only Docker Hub).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SIGTERM lets dockerd stop the containerd it started.
        super::terminate_or_kill(&mut self.child, Duration::from_secs(20));
    }
}
