//! Shared helpers: real components on loopback ports, cleaned up on drop, one
//! file per component. This file owns what every component uses: the checks
//! for the Debian packages, commands, ports, the test images, a blocking HTTP
//! client, the tokio runtime the in-process parts run on, and [`eventually`],
//! the one way a test waits for something to happen.
//!
//! - [`registry`]: [`Upstream`], a CNCF distribution registry
//!   (`docker-registry`), plain, with htpasswd basic auth, or with token auth
//!   against a [`TokenServer`]; pushes the test images to it.
//! - [`token`]: [`TokenServer`], RS256 JWTs with an `x5c` header (Docker Hub)
//!   or a libtrust `kid` (GitLab), lifetimes settable while it runs.
//! - [`metadata`]: [`MetadataServer`], the GCE metadata server's token
//!   endpoint, with tokens of the lifetime a test gives it.
//! - [`ratelimit`]: [`RateLimiter`] (Docker Hub's 429s) and
//!   [`throttled_relay`] (a slow upstream link).
//! - [`tamper`]: [`Tamper`], a relay in front of a registry that mangles
//!   blob downloads on request (drip, chunked, a false `Content-Length`, a
//!   corrupt byte, a cut) and can hold answers until another request comes.
//! - [`wharf`]: wharf itself, in-process ([`Wharf`], [`Fixture`]) or as its
//!   binary ([`Served`]), and readers of its cache and metrics. The harness
//!   uses wharf's library API in that file only.
//! - [`clients`]: registries.conf and skopeo helpers, [`Skopeo`] on the host
//!   or in a namespace.
//! - [`hostile_upstream`]: [`HostileUpstream`], a scriptable registry on
//!   loopback for the hostile-peer suite: any status, headers and body per
//!   path (huge, dripping), realms and redirects anywhere, and a log of the
//!   requests it got with their headers.
//! - [`honest`]: [`Honest`], the ordinary client of the hostile-peer tests,
//!   which must still be served within [`HONEST_DEADLINE`].
//! - [`netns`]: [`Netns`], a network namespace with no route anywhere (an
//!   air-gapped site), commands run inside it.
//! - [`dockerd`], [`containerd`]: [`Dockerd`] (in a namespace only) and
//!   [`Containerd`] (either), private daemons and their clients, and a
//!   [`Container`] containerd runs (wharf's image);
//!   [`hosts_dir`] for `ctr --hosts-dir`.
//! - [`nspawn`]: [`Nspawn`], a real systemd booted with `systemd-nspawn`
//!   from a cached debootstrap root, with relays in and out.
//! - [`seaweed`]: [`SeaweedFs`], a real distributed S3 store (master,
//!   three volume servers, filer with its S3 gateway) with generated keys,
//!   one bucket, direct S3 operations through `object_store`, and faults
//!   (a volume server killed, the store stopped).

pub mod browser;
mod clients;
mod containerd;
mod dockerd;
mod honest;
mod hostile_upstream;
mod metadata;
mod netns;
mod nspawn;
mod ratelimit;
mod registry;
mod seaweed;
mod tamper;
mod token;
mod wharf;

pub use self::clients::{
    dir_contents, registries_conf, registries_conf_for, skopeo_to_dir, Skopeo,
};
pub use self::containerd::{hosts_dir, Container, Containerd};
pub use self::dockerd::Dockerd;
pub use self::honest::{Honest, HONEST_DEADLINE};
pub use self::hostile_upstream::{Answer, HostileUpstream, Seen};
pub use self::metadata::MetadataServer;
pub use self::netns::{Netns, SITE_IP};
pub use self::nspawn::{root as nspawn_root, Nspawn, SHARED as NSPAWN_SHARED};
pub use self::ratelimit::{throttled_relay, RateLimiter, Window};
pub use self::registry::{Auth, Upstream};
pub use self::seaweed::SeaweedFs;
pub use self::tamper::{Length, Mangle, Tamper};
pub use self::token::{TokenOpts, TokenServer};
pub use self::wharf::{files_under, metric_value, rehash_cache, Fixture, Served, Wharf, SITE_PORT};

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

pub const DEAD_PORT: u16 = 1; // nothing listens on loopback port 1: never a fallback

/// Fails with a clear message when the Debian packages are missing.
pub fn require(tools: &[&str]) {
    for t in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            found,
            "{t} is missing: run scripts/install-deps.sh (as root)"
        );
    }
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    hex::encode(buf)
}

/// A loopback port nothing listens on now, and never handed out before in
/// this test: a port reserved for a process started later (a fleet node's
/// peer listener) is closed until then, and the kernel may offer it again.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Runs a command, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command, returning (success, stdout+stderr).
pub fn try_run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

/// The OCI layout with the test images (built once, shared by every test).
pub fn images() -> PathBuf {
    static BUILD: Once = Once::new();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-images");
    BUILD.call_once(|| {
        require(&["umoci", "python3", "flock"]);
        run(Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/build-images.sh"
            ))
            .arg(&dir));
    });
    dir.join("oci")
}

/// The digest of a tag of the test layout (`multi`'s, which a push with
/// `--all` and no `--format` keeps).
pub fn layout_digest(tag: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(images().join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no tag {tag} in the test layout"))["digest"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A plain blocking HTTP client for direct requests to wharf.
pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// The runtime the in-process parts (wharf, token and metadata servers,
/// relays) run on; drop it after them.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// What a condition polled by [`eventually`] returns: `bool` (done or not),
/// or `Option<T>` (the value it waited for, once there).
pub trait Outcome {
    type Value;
    fn done(self) -> Option<Self::Value>;
}

impl Outcome for bool {
    type Value = ();
    fn done(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn done(self) -> Option<T> {
        self
    }
}

/// Polls `cond` until it holds and returns what it returned, or panics after
/// `timeout` saying it timed out waiting for `what`. The first poll is
/// immediate; the interval then grows from 5 ms to 100 ms, so a condition
/// that holds soon is seen at once and a slow one is not polled hard. A
/// condition that can tell it will never hold (a process exited) panics
/// itself.
pub fn eventually<O: Outcome>(timeout: Duration, what: &str, cond: impl FnMut() -> O) -> O::Value {
    poll_until(timeout, cond)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// [`eventually`] without the panic: `None` at the timeout (for clean-up code,
/// which goes on another way).
pub fn poll_until<O: Outcome>(timeout: Duration, mut cond: impl FnMut() -> O) -> Option<O::Value> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = cond().done() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Clean-up of a long-lived child: SIGTERM (dockerd stops its containerd,
/// nspawn powers its container off), up to `grace` to exit, then SIGKILL.
pub fn terminate_or_kill(child: &mut Child, grace: Duration) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    if poll_until(grace, || matches!(child.try_wait(), Ok(Some(_)))).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Waits (at most 20 s) until `addr` accepts TCP connections; panics at once
/// if `child`, the process that should listen there, exits first.
pub fn wait_listening(addr: SocketAddr, mut child: Option<&mut Child>) {
    eventually(
        Duration::from_secs(20),
        &format!("something listening on {addr}"),
        || {
            if let Some(Ok(Some(st))) = child.as_mut().map(|c| c.try_wait()) {
                panic!("process exited before listening on {addr}: {st}");
            }
            std::net::TcpStream::connect(addr).is_ok()
        },
    )
}

/// Sleeps until `t`. Only for letting a lifetime run out when that is what
/// the test is about (a token's); to wait for something to happen, use
/// [`eventually`].
pub fn sleep_until(t: Instant) {
    std::thread::sleep(t.saturating_duration_since(Instant::now()));
}

#[test]
fn eventually_returns_what_the_condition_found_and_names_what_never_came() {
    let mut polls = 0;
    let found = eventually(Duration::from_secs(5), "the third poll", || {
        polls += 1;
        (polls == 3).then_some(polls)
    });
    assert_eq!(found, 3);
    let started = Instant::now();
    let panic = std::panic::catch_unwind(|| {
        eventually(
            Duration::from_millis(100),
            "a condition that never holds",
            || false,
        )
    })
    .unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("a condition that never holds"),
        "{message}"
    );
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(poll_until(Duration::ZERO, || false), None, "polled once");
}
