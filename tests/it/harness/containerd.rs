//! containerd 1.6 with private root, state and sockets (the CRI plugin
//! disabled), on the host or inside a [`Netns`], and its `ctr` client; and
//! [`hosts_dir`], the `hosts.toml` that points `docker.io` at a mirror with a
//! dead fallback. In 1.6 `ctr` itself resolves and fetches (the daemon only
//! stores), so in a namespace `ctr` runs there too.
//!
//! Killed on drop.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use super::netns::exec_in;
use super::{eventually, require, try_run, Netns, DEAD_PORT};

pub struct Containerd {
    child: Child,
    sock: PathBuf,
    ns: Option<String>,
}

impl Containerd {
    /// containerd on the host, its files under `dir`.
    pub fn start(dir: &Path) -> Containerd {
        Containerd::spawn(None, dir)
    }

    /// containerd inside `ns` (which must outlive it), its files under `dir`;
    /// [`Containerd::ctr`] then runs in `ns` too.
    pub fn start_in(ns: &Netns, dir: &Path) -> Containerd {
        Containerd::spawn(Some(&ns.name), dir)
    }

    fn spawn(ns: Option<&str>, dir: &Path) -> Containerd {
        require(&["containerd", "ctr"]);
        std::fs::create_dir_all(dir).unwrap();
        let sock = dir.join("containerd.sock");
        std::fs::write(
            dir.join("config.toml"),
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{1}\"\n[ttrpc]\n  address = \"{1}.ttrpc\"\n",
                dir.display(),
                sock.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let mut child = exec_in(ns, "containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        eventually(
            Duration::from_secs(20),
            "containerd to open its socket",
            || {
                if let Ok(Some(st)) = child.try_wait() {
                    panic!(
                        "containerd exited ({st}): {}",
                        std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
                    );
                }
                sock.exists()
            },
        );
        Containerd {
            child,
            sock,
            ns: ns.map(str::to_owned),
        }
    }

    /// `ctr -a SOCK -n test ARGS` (in the namespace, if containerd runs in
    /// one): (success, stdout+stderr).
    pub fn ctr(&self, args: &[&str]) -> (bool, String) {
        let mut c = exec_in(self.ns.as_deref(), "ctr");
        c.arg("-a").arg(&self.sock).args(["-n", "test"]).args(args);
        try_run(&mut c)
    }

    /// `ctr images pull --hosts-dir HOSTS image`.
    pub fn pull(&self, hosts: &Path, image: &str) -> (bool, String) {
        self.ctr(&[
            "images",
            "pull",
            "--hosts-dir",
            hosts.to_str().unwrap(),
            image,
        ])
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `dir/hosts/docker.io/hosts.toml`: `server` a dead loopback port, so
/// a failing mirror never falls back to the real registry, and `mirror`
/// (`https://198.18.0.1:5000`, or `http://...` for plain HTTP) for pull and
/// resolve, trusting `ca` when given. Returns the directory for
/// `--hosts-dir`.
pub fn hosts_dir(dir: &Path, mirror: &str, ca: Option<&Path>) -> PathBuf {
    let hosts = dir.join("hosts");
    std::fs::create_dir_all(hosts.join("docker.io")).unwrap();
    let ca = ca.map_or(String::new(), |c| format!("  ca = {:?}\n", c));
    std::fs::write(
        hosts.join("docker.io/hosts.toml"),
        format!(
            "server = \"http://127.0.0.1:{DEAD_PORT}\"\n[host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n{ca}"
        ),
    )
    .unwrap();
    hosts
}
