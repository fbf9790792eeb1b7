//! Network namespaces: [`Netns::isolated`] is an air-gapped site, a namespace
//! with only `lo` (127.0.0.1 and [`SITE_IP`]) and no route to anything else,
//! not even the host's loopback, so no client in it can fall back to a real
//! registry or reach the test's upstream. Programs run in it through
//! [`Netns::command`]; a relay ([`Netns::relay`]) can open one port in it to
//! a host address when a test wants that hole.
//!
//! On drop the namespace's relays are stopped, whatever still runs in the
//! namespace is killed (the runners stop their own daemons first, gracefully),
//! and the namespace is deleted. It never touches the host's network.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{eventually, poll_until, random_hex, require, run, try_run};

/// The site's one non-loopback address, on its `lo`. dockerd never verifies
/// TLS for a mirror on 127.0.0.0/8, so a test of TLS trust serves here.
pub const SITE_IP: &str = "198.18.0.1";

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
    relays: Vec<Child>,
}

impl Netns {
    /// A namespace with only `lo` up, holding 127.0.0.1 and 198.18.0.1/32: no
    /// default route, no other interface, so every address but its own is
    /// unreachable.
    pub fn isolated() -> Netns {
        require(&["ip", "nsenter"]);
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
            &format!("{SITE_IP}/32"),
            "dev",
            "lo",
        ]));
        ns
    }

    /// `ip netns exec NAME program`: runs `program` in the namespace (with a
    /// mount namespace of its own, where /sys is the namespace's).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        exec_in(Some(&self.name), program)
    }

    /// `nsenter --net=... program`: in the namespace's network only, with the
    /// host's mounts (dockerd needs the cgroup mounts `ip netns exec` hides).
    pub fn nsenter(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg(program);
        c
    }

    /// The namespace's handle, `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Opens a hole: `SITE_IP:port` in the namespace is relayed to `target` on
    /// the host, through a unix socket made in `dir` (socat on both sides).
    pub fn relay(&mut self, port: u16, target: SocketAddr, dir: &Path) {
        self.relay_at(SITE_IP, port, target, dir)
    }

    /// [`Netns::relay`] listening at `ip:port` in the namespace (127.0.0.1:
    /// a host that only a name in `/etc/hosts`, `localhost`, reaches).
    pub fn relay_at(&mut self, ip: &str, port: u16, target: SocketAddr, dir: &Path) {
        require(&["socat"]);
        let sock = dir.join(format!("relay-{ip}-{port}.sock"));
        self.relays.push(
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
        self.relays.push(
            self.command("socat")
                .arg(format!("TCP-LISTEN:{port},bind={ip},fork,reuseaddr"))
                .arg(format!("UNIX-CONNECT:{}", sock.display()))
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        self.wait_listening(&format!("{ip}:{port}"));
    }

    /// Waits (at most 20 s) until something in the namespace accepts TCP
    /// connections at `addr` (`host:port`); the host cannot see its
    /// loopback, so a probe inside asks (bash's /dev/tcp).
    pub fn wait_listening(&self, addr: &str) {
        let (host, port) = addr.rsplit_once(':').unwrap();
        eventually(
            Duration::from_secs(20),
            &format!("something listening on {addr} in {}", self.name),
            || self.can_connect(host, port.parse().unwrap()),
        )
    }

    /// Whether a TCP connection from inside the namespace to `host:port`
    /// succeeds (within 2 s).
    pub fn can_connect(&self, host: &str, port: u16) -> bool {
        try_run(self.command("timeout").args([
            "2",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{host}/{port}"),
        ]))
        .0
    }

    /// `curl` from inside the namespace: (success, stdout+stderr).
    pub fn curl(&self, args: &[&str]) -> (bool, String) {
        try_run(
            self.command("curl")
                .args(["-sS", "--max-time", "10"])
                .args(args),
        )
    }

    /// The PIDs of every process in the namespace.
    pub fn pids(&self) -> Vec<u32> {
        let (_, out) = try_run(Command::new("ip").args(["netns", "pids", &self.name]));
        out.split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

/// `program`, in the namespace called `ns` if any (`ip netns exec`), else on
/// the host: for runners that work in either.
pub(super) fn exec_in(ns: Option<&str>, program: impl AsRef<OsStr>) -> Command {
    match ns {
        Some(name) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", name]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for r in &mut self.relays {
            let _ = r.kill();
            let _ = r.wait();
        }
        // What the runners left (a daemon's children, a client a panicking
        // test never waited for): SIGKILL by PID, until none is left.
        let _ = poll_until(Duration::from_secs(10), || {
            let pids = self.pids();
            for p in &pids {
                let _ = Command::new("kill")
                    .args(["-KILL", &p.to_string()])
                    .status();
            }
            pids.is_empty()
        });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
