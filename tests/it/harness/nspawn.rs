//! A real systemd: a minimal Debian root made by debootstrap, booted with
//! `systemd-nspawn --boot` ([`Nspawn`]). PID 1 on this machine is not
//! systemd; in the container it is, with journald and `systemctl`.
//!
//! The root is built once per machine under `target/nspawn/` (about a minute
//! and 250 MB from the Debian mirror apt uses; [`root`]), under a file lock so
//! that concurrent test processes wait for one build, and named after its
//! package list so a changed list builds a new one. It is never changed
//! afterwards: each boot lays a tmpfs over it (`--volatile=overlay`), so what
//! a test installs or writes is gone when the container stops.
//!
//! The container has its own network namespace with only `lo`
//! (`--private-network`): nothing in it reaches anything but what a test
//! relays in ([`Nspawn::relay_in`], a host TCP address appearing on the
//! container's loopback) or out ([`Nspawn::relay_out`]), each through a unix
//! socket in the directory shared with the host (`/mnt/host` inside).
//!
//! On drop: the relays stop, the container is shut down in order (SIGTERM to
//! nspawn, which asks the container's systemd to power off), killed if that
//! takes more than 30 s.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest;

use super::{eventually, free_port, random_hex, require, run, try_run, wait_listening};

/// What the root holds beyond debootstrap's minbase: systemd as init, and
/// the clients and relays tests run inside.
const INCLUDE: &str = "systemd,systemd-sysv,dbus,curl,ca-certificates,socat";

/// Where the host directory shared with the container appears in it.
pub const SHARED: &str = "/mnt/host";

/// The cached Debian root (building it first if this machine has none) and,
/// when it was built now, how long that took.
pub fn root() -> (PathBuf, Option<Duration>) {
    require(&["debootstrap", "systemd-nspawn", "flock", "nsenter"]);
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("nspawn");
    std::fs::create_dir_all(&base).unwrap();
    let tag = hex::encode(sha2::Sha256::digest(INCLUDE.as_bytes()));
    let tag = &tag[..12];
    let root = base.join(format!("bookworm-{tag}"));
    if root.join("usr/lib/systemd/systemd").exists() {
        return (root, None);
    }
    let started = Instant::now();
    let mirror = debian_mirror();
    let tmp = base.join(format!("bookworm-{tag}.tmp"));
    // One build per machine: the others wait on the lock, then find it.
    let script = format!(
        "set -e; test -e '{root}/usr/lib/systemd/systemd' && exit 0; rm -rf '{tmp}'; \
         debootstrap --variant=minbase --include={INCLUDE} bookworm '{tmp}' '{mirror}' >'{tmp}.log' 2>&1 \
           || {{ tail -n 30 '{tmp}.log' >&2; exit 1; }}; \
         mkdir -p '{tmp}{SHARED}'; \
         mv '{tmp}' '{root}'",
        root = root.display(),
        tmp = tmp.display(),
    );
    run(Command::new("flock")
        .arg(base.join(".lock"))
        .args(["sh", "-c", &script]));
    (root, Some(started.elapsed()))
}

/// The Debian mirror apt uses on this machine (deb822 sources first).
fn debian_mirror() -> String {
    let deb822 =
        std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    let one_line = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    deb822
        .lines()
        .filter_map(|l| l.strip_prefix("URIs:"))
        .flat_map(|u| u.split_whitespace())
        .chain(
            one_line
                .lines()
                .filter(|l| l.starts_with("deb "))
                .filter_map(|l| l.split_whitespace().find(|w| w.contains("://"))),
        )
        .find(|u| !u.contains("security"))
        .expect(
            "no Debian mirror in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list",
        )
        .to_owned()
}

/// The process below `nspawn` that is PID 1 in its own PID namespace and
/// runs systemd.
fn container_init(nspawn: u32) -> Option<u32> {
    let status = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/status")).ok();
    let field = |text: &str, name: &str| -> Vec<u32> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let below_nspawn = |mut pid: u32| {
        for _ in 0..4 {
            match status(pid).map(|s| field(&s, "PPid:")).as_deref() {
                Some([p]) if *p == nspawn => return true,
                Some([p]) if *p > 1 => pid = *p,
                _ => return false,
            }
        }
        false
    };
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|&pid| {
            status(pid).is_some_and(|s| {
                let ns = field(&s, "NSpid:");
                ns.len() >= 2 && ns.last() == Some(&1)
            }) && below_nspawn(pid)
                && std::fs::read_link(format!("/proc/{pid}/exe"))
                    .is_ok_and(|e| e.file_name().is_some_and(|n| n == "systemd"))
        })
}

/// A booted container; shut down on drop.
pub struct Nspawn {
    /// The host directory that is [`SHARED`] inside.
    pub shared: PathBuf,
    nspawn: Child,
    /// The container's PID 1, as the host sees it.
    leader: u32,
    relays: Vec<Child>,
    console: PathBuf,
}

impl Nspawn {
    /// Boots `root` with a tmpfs over it, `shared` bound at [`SHARED`], no
    /// network but `lo`; returns once its systemd has finished booting (at
    /// most 120 s).
    pub fn boot(root: &Path, shared: &Path) -> Nspawn {
        let name = format!("wharf-{}", random_hex(4));
        let console = shared.join("console.log");
        let nspawn = Command::new("systemd-nspawn")
            .arg("--directory")
            .arg(root)
            .args([
                "--boot",
                "--register=no",
                "--keep-unit",
                "--private-network",
                "--volatile=overlay",
                "--console=read-only",
                "--machine",
                &name,
            ])
            .arg(format!("--bind={}:{SHARED}", shared.display()))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&console).unwrap())
            .stderr(std::fs::File::create(shared.join("nspawn.log")).unwrap())
            .spawn()
            .expect("systemd-nspawn starts");
        let mut n = Nspawn {
            shared: shared.to_owned(),
            leader: 0,
            nspawn,
            relays: vec![],
            console,
        };
        // The container's init: PID 1 of its own namespace, below nspawn,
        // once it runs systemd (before that it is nspawn setting up).
        n.leader = eventually(Duration::from_secs(30), "the container's PID 1", || {
            if let Ok(Some(st)) = n.nspawn.try_wait() {
                panic!("systemd-nspawn exited ({st}):\n{}", n.logs());
            }
            container_init(n.nspawn.id())
        });
        // systemd's socket appears a moment after it starts; then --wait
        // waits for the boot to finish.
        let state = eventually(Duration::from_secs(60), "the container's systemd", || {
            let (_, out) = try_run(n.command("systemctl").args(["is-system-running", "--wait"]));
            (!out.contains("Failed to connect")).then_some(out)
        });
        let state = state.trim();
        assert!(
            state == "running" || state == "degraded",
            "the container did not boot: {state}\n{}\nfailed units: {}",
            n.logs(),
            n.sh("systemctl --failed --no-legend").1
        );
        n
    }

    /// `program` inside the container (all its namespaces), with a clean
    /// environment.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.leader.to_string(), "-a", "--"])
            .args(["timeout", "120"])
            .arg(program)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C.UTF-8");
        c
    }

    /// `sh -c script` inside: (success, stdout+stderr).
    pub fn sh(&self, script: &str) -> (bool, String) {
        try_run(self.command("sh").args(["-c", script]))
    }

    /// `sh -c script` inside, panicking with its output if it fails; its
    /// stdout.
    pub fn must(&self, script: &str) -> String {
        run(self.command("sh").args(["-c", script]))
    }

    /// A property of a unit (`systemctl show -P`).
    pub fn property(&self, unit: &str, name: &str) -> String {
        self.must(&format!("systemctl show -P {name} {unit}"))
            .trim()
            .to_owned()
    }

    /// Copies `contents` to `path` inside, with the owner and mode given
    /// (`install -o -g -m`), through the shared directory.
    pub fn install_file(&self, path: &str, contents: &[u8], owner: &str, mode: &str) {
        let staged = format!("stage-{}", random_hex(4));
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(self.shared.join(&staged))
                .unwrap();
            std::io::Write::write_all(&mut f, contents).unwrap();
        }
        let (user, group) = owner.split_once(':').unwrap_or((owner, owner));
        self.must(&format!(
            "install -D -o {user} -g {group} -m {mode} {SHARED}/{staged} {path} && rm {SHARED}/{staged}"
        ));
    }

    /// Makes the host's `target` reachable inside at `127.0.0.1:port`: socat
    /// on the host from a unix socket to `target`, and a transient unit
    /// `relay-in-PORT.service` in the container from the port to the socket.
    pub fn relay_in(&mut self, port: u16, target: std::net::SocketAddr) {
        let sock = format!("in-{port}.sock");
        self.relays.push(
            Command::new("socat")
                .arg(format!(
                    "UNIX-LISTEN:{},fork,unlink-early",
                    self.shared.join(&sock).display()
                ))
                .arg(format!("TCP:{target}"))
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let path = self.shared.join(&sock);
        eventually(Duration::from_secs(10), "the host end of a relay", || {
            path.exists()
        });
        self.must(&format!(
            "systemd-run --quiet --unit=relay-in-{port} socat TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr UNIX-CONNECT:{SHARED}/{sock}"
        ));
        eventually(
            Duration::from_secs(20),
            &format!("127.0.0.1:{port} in the container"),
            || {
                try_run(
                    self.command("bash")
                        .args(["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")]),
                )
                .0
            },
        );
    }

    /// Makes `127.0.0.1:port` in the container reachable on the host at the
    /// address returned (the reverse of [`Nspawn::relay_in`]). The host end
    /// accepts at once; connections through it fail while nothing listens
    /// inside.
    pub fn relay_out(&mut self, port: u16) -> std::net::SocketAddr {
        let sock = format!("out-{port}.sock");
        self.must(&format!(
            "systemd-run --quiet --unit=relay-out-{port} socat UNIX-LISTEN:{SHARED}/{sock},fork,unlink-early TCP:127.0.0.1:{port}"
        ));
        let path = self.shared.join(&sock);
        eventually(
            Duration::from_secs(10),
            "the container end of a relay",
            || path.exists(),
        );
        let host_port = free_port();
        let mut child = Command::new("socat")
            .arg(format!(
                "TCP-LISTEN:{host_port},bind=127.0.0.1,fork,reuseaddr"
            ))
            .arg(format!("UNIX-CONNECT:{}", path.display()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], host_port));
        wait_listening(addr, Some(&mut child));
        self.relays.push(child);
        addr
    }

    /// The console output and nspawn's own messages, for failure reports.
    pub fn logs(&self) -> String {
        format!(
            "--- console ---\n{}\n--- nspawn ---\n{}",
            std::fs::read_to_string(&self.console).unwrap_or_default(),
            std::fs::read_to_string(self.shared.join("nspawn.log")).unwrap_or_default()
        )
    }
}

impl Drop for Nspawn {
    fn drop(&mut self) {
        for r in &mut self.relays {
            let _ = r.kill();
            let _ = r.wait();
        }
        // nspawn turns SIGTERM into an orderly power-off of the container.
        super::terminate_or_kill(&mut self.nspawn, Duration::from_secs(30));
    }
}
