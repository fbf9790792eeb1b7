//! containerd 1.6 with private root, state and sockets (the CRI plugin
//! disabled), on the host or inside a [`Netns`], and its `ctr` client; and
//! [`hosts_dir`], the `hosts.toml` that points `docker.io` at a mirror with a
//! dead fallback. In 1.6 `ctr` itself resolves and fetches (the daemon only
//! stores), so in a namespace `ctr` runs there too.
//!
//! [`Containerd::import`] loads an OCI archive (wharf's own image) and
//! [`Containerd::run`] starts a [`Container`] from it with `ctr run
//! --detach`: runc under containerd's shim, the host network of the
//! namespace containerd runs in (`--net-host`), the container's output in a
//! log file, its process read through `/proc` (uid, capabilities, mounts,
//! peak RSS) and its memory cgroup.
//!
//! Killed on drop (a container first: its task is killed and deleted).

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
        Containerd::spawn(None, dir, exec_in(None, "containerd"))
    }

    /// containerd inside `ns` (which must outlive it), its files under `dir`;
    /// [`Containerd::ctr`] then runs in `ns` too.
    pub fn start_in(ns: &Netns, dir: &Path) -> Containerd {
        Containerd::spawn(Some(&ns.name), dir, ns.command("containerd"))
    }

    /// containerd in `ns`'s network but the host's mounts (`nsenter
    /// --net`), to run containers: runc needs the cgroup mounts that `ip
    /// netns exec` hides. `ctr` runs in `ns` as with [`Containerd::start_in`].
    pub fn start_for_containers_in(ns: &Netns, dir: &Path) -> Containerd {
        require(&["runc", "nsenter"]);
        Containerd::spawn(Some(&ns.name), dir, ns.nsenter("containerd"))
    }

    fn spawn(ns: Option<&str>, dir: &Path, mut daemon: std::process::Command) -> Containerd {
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
        let mut child = daemon
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

    /// `ctr images import ARCHIVE` (an OCI archive, unpacked for this
    /// platform): (success, output).
    pub fn import(&self, archive: &Path) -> (bool, String) {
        self.ctr(&["images", "import", archive.to_str().unwrap()])
    }

    /// `ctr run --detach --net-host --log-uri file://LOG FLAGS IMAGE ID`,
    /// then waits (at most 20 s) until the task runs; panics with ctr's
    /// output and the container's log if it does not. The log is
    /// `dir/ID.log`, appended to across restarts.
    pub fn run(&self, dir: &Path, image: &str, id: &str, flags: &[&str]) -> Container<'_> {
        let log = dir.join(format!("{id}.log"));
        let uri = format!("file://{}", log.display());
        let mut args = vec!["run", "--detach", "--net-host", "--log-uri", uri.as_str()];
        args.extend_from_slice(flags);
        args.extend([image, id]);
        let (ok, out) = self.ctr(&args);
        let c = Container {
            ctd: self,
            id: id.to_owned(),
            log,
        };
        assert!(
            ok,
            "ctr run {image}: {out}
{}",
            c.log()
        );
        eventually(
            Duration::from_secs(20),
            &format!("task {id} to run"),
            || match c.status().as_deref() {
                Some("RUNNING") => true,
                Some("STOPPED") => panic!("container {id} stopped at once:\n{}", c.log()),
                _ => false,
            },
        );
        c
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

/// A container of a [`Containerd`], started by [`Containerd::run`]; its task
/// is killed and it is deleted (with its snapshot) on drop.
pub struct Container<'a> {
    ctd: &'a Containerd,
    pub id: String,
    pub log: PathBuf,
}

impl Container<'_> {
    /// The task's status as `ctr task ls` shows it (`RUNNING`, `STOPPED`),
    /// `None` without a task.
    pub fn status(&self) -> Option<String> {
        self.task_row().map(|(_, s)| s)
    }

    /// The task's PID on the host (its init process: wharf itself).
    pub fn pid(&self) -> u32 {
        self.task_row().expect("a task").0
    }

    fn task_row(&self) -> Option<(u32, String)> {
        let (_, out) = self.ctd.ctr(&["task", "ls"]);
        out.lines().find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == self.id).then_some(())?;
            Some((f.next()?.parse().ok()?, f.next()?.to_owned()))
        })
    }

    /// What the container wrote to stdout and stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A field of `/proc/PID/status` (`Uid`, `CapEff`, `VmHWM`), trimmed.
    pub fn proc_status(&self, field: &str) -> String {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .unwrap_or_else(|| panic!("no {field} in /proc/PID/status"))
            .trim()
            .to_owned()
    }

    /// The process's view of its mounts (`/proc/PID/mountinfo`).
    pub fn mountinfo(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/mountinfo", self.pid())).unwrap()
    }

    /// A file of the container's memory cgroup (cgroup v1, where runc puts
    /// it: `/sys/fs/cgroup/memory/<cgroupsPath>`), e.g.
    /// `memory.max_usage_in_bytes`; `None` on another cgroup layout.
    pub fn memory_cgroup(&self, file: &str) -> Option<String> {
        let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", self.pid())).ok()?;
        let path = cgroup.lines().find_map(|l| {
            let (_, rest) = l.split_once(':')?;
            let (controllers, path) = rest.split_once(':')?;
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then_some(path)
        })?;
        std::fs::read_to_string(format!("/sys/fs/cgroup/memory{path}/{file}"))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    /// SIGTERM, as the kubelet stops a pod, and waits (at most `grace`) for
    /// the task to stop; then deletes task and container. Whether it
    /// stopped by itself (else it was killed at the deadline).
    pub fn stop(self, grace: Duration) -> bool {
        self.ctd
            .ctr(&["task", "kill", "--signal", "SIGTERM", &self.id]);
        let stopped =
            super::poll_until(grace, || self.status().as_deref() != Some("RUNNING")).is_some();
        drop(self);
        stopped
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        if self.status().as_deref() == Some("RUNNING") {
            self.ctd
                .ctr(&["task", "kill", "--signal", "SIGKILL", &self.id]);
            let _ = super::poll_until(Duration::from_secs(10), || {
                self.status().as_deref() != Some("RUNNING")
            });
        }
        self.ctd.ctr(&["task", "delete", "--force", &self.id]);
        self.ctd.ctr(&["container", "delete", &self.id]);
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
