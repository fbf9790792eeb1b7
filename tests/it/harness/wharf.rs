//! wharf itself, the way the tests run it: [`Wharf`] in-process on the
//! test's runtime (its `Mirror` at hand), [`Served`] as its binary (real
//! signals, admin socket and start-up) on the host or inside a [`Netns`]
//! ([`Served::start_in`], a site's wharf), [`Fixture`] for the common plain
//! upstream with wharf in front; and readers of what it leaves behind: its
//! cache files and its metrics.
//!
//! The harness uses wharf's library API (`Config`, `App`, `Tls`,
//! `server::run`) here and nowhere else, so a change of that API is mended in
//! this file.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::netns::{exec_in, SITE_IP};
use super::{eventually, free_port, http, runtime, wait_listening, Auth, Netns, Upstream};

/// The port a wharf in a [`Netns`] listens on (at [`SITE_IP`]): the namespace
/// is the test's alone, so a fixed port is free and survives restarts.
pub const SITE_PORT: u16 = 5000;

/// wharf serving `config` (written next to its cache), stopped on drop; the
/// log (debug level) is kept for the secrets check. On the host it serves
/// plain HTTP on 127.0.0.1; in a [`Netns`], TLS (unless told otherwise) on
/// [`SITE_IP`]:[`SITE_PORT`], and everything that talks to it ([`Served::get`],
/// [`Served::cli`], the readiness probe) runs in that namespace too.
pub struct Served {
    child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
    pub cfg: PathBuf,
    ip: std::net::IpAddr,
    tls: bool,
    ns: Option<String>,
}

impl Served {
    pub fn start(dir: &Path, name: &str, body: &str) -> Served {
        Served::start_env(dir, name, body, &[])
    }

    /// The same with extra environment variables (`PATH` for credential
    /// helpers).
    pub fn start_env(dir: &Path, name: &str, body: &str, env: &[(&str, &OsStr)]) -> Served {
        let mut s = Served::spawn_env(dir, name, "", body, free_port(), env);
        s.wait_ready();
        s
    }

    /// Writes the config and starts wharf on `port` without waiting for it.
    /// The log is appended to, so restarts keep one history.
    pub fn spawn(dir: &Path, name: &str, body: &str, port: u16) -> Served {
        Served::spawn_with(dir, name, "", body, port)
    }

    /// `server` goes into the `[server]` section, `body` after `[cache]`'s
    /// `dir` line.
    pub fn spawn_with(dir: &Path, name: &str, server: &str, body: &str, port: u16) -> Served {
        Served::spawn_env(dir, name, server, body, port, &[])
    }

    fn spawn_env(
        dir: &Path,
        name: &str,
        server: &str,
        body: &str,
        port: u16,
        env: &[(&str, &OsStr)],
    ) -> Served {
        let server = format!("plain_http = true\n{server}");
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        Served::spawn_at(None, dir, name, &server, body, (ip, port).into(), env)
    }

    /// wharf inside `ns` (which must outlive it) on
    /// [`SITE_IP`]:[`SITE_PORT`], once it answers `/healthz` there. `server`
    /// goes into `[server]` after `listen`: TLS (`auto`, whose default names
    /// include the listen address) unless it says `plain_http = true`; `body`
    /// after `[cache]`'s `dir` line.
    pub fn start_in(ns: &Netns, dir: &Path, name: &str, server: &str, body: &str) -> Served {
        let mut s = Served::spawn_in(ns, dir, name, server, body);
        s.wait_ready();
        s
    }

    /// [`Served::start_in`] without waiting (for restarts and start-up
    /// failures).
    pub fn spawn_in(ns: &Netns, dir: &Path, name: &str, server: &str, body: &str) -> Served {
        let addr = (SITE_IP.parse::<std::net::IpAddr>().unwrap(), SITE_PORT).into();
        Served::spawn_at(Some(&ns.name), dir, name, server, body, addr, &[])
    }

    fn spawn_at(
        ns: Option<&str>,
        dir: &Path,
        name: &str,
        server: &str,
        body: &str,
        listen: SocketAddr,
        env: &[(&str, &OsStr)],
    ) -> Served {
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!("[server]\nlisten = \"{listen}\"\n{server}[cache]\ndir = \"cache\"\n{body}"),
        )
        .unwrap();
        let tls = !server.contains("plain_http = true");
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        // `ip netns exec` execs wharf itself: the child's PID is wharf's.
        let child = exec_in(ns, env!("CARGO_BIN_EXE_wharf"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Served {
            child: Some(child),
            port: listen.port(),
            log,
            cfg,
            ip: listen.ip(),
            tls,
            ns: ns.map(str::to_owned),
        }
    }

    /// Waits until it accepts connections (on the host), or answers
    /// `/healthz` from inside its namespace (which the host cannot reach);
    /// panics with its log if it exits first.
    pub fn wait_ready(&mut self) {
        if self.ns.is_none() {
            return wait_listening(self.addr(), self.child.as_mut());
        }
        eventually(
            Duration::from_secs(20),
            &format!("wharf to answer at {} in its namespace", self.url()),
            || {
                if let Some(st) = self.try_wait() {
                    panic!(
                        "wharf exited ({st}): {}",
                        std::fs::read_to_string(&self.log).unwrap_or_default()
                    );
                }
                let (ok, out) = self.curl(&[
                    "-k",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &format!("{}/healthz", self.url()),
                ]);
                ok && out.trim() == "200"
            },
        )
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        (self.ip, self.port).into()
    }

    /// `host:port` as clients name the mirror (`198.18.0.1:5000`).
    pub fn host(&self) -> String {
        self.addr().to_string()
    }

    /// The CA its `auto` TLS made (`cache/tls/ca.crt`), for clients to trust.
    pub fn ca(&self) -> PathBuf {
        self.cfg.parent().unwrap().join("cache/tls/ca.crt")
    }

    /// `curl -sS ARGS` where wharf runs (in its namespace, if any):
    /// (success, stdout+stderr).
    pub fn curl(&self, args: &[&str]) -> (bool, String) {
        super::try_run(
            exec_in(self.ns.as_deref(), "curl")
                .args(["-sS", "--max-time", "30"])
                .args(args),
        )
    }

    /// GET `path` from wharf (from inside its namespace, trusting its CA):
    /// (status, body). On the host without TLS, a plain reqwest GET.
    pub fn get(&self, path: &str) -> (u16, String) {
        let url = format!("{}{path}", self.url());
        if self.ns.is_none() && !self.tls {
            let r = http().get(url).send().unwrap();
            return (r.status().as_u16(), r.text().unwrap());
        }
        let ca = self.ca();
        let mut args = vec!["-w", "\n%{http_code}", &url];
        if self.tls {
            args.extend(["--cacert", ca.to_str().unwrap()]);
        }
        let (ok, out) = self.curl(&args);
        assert!(ok, "curl {url}: {out}");
        let (body, status) = out.rsplit_once('\n').unwrap();
        (status.trim().parse().unwrap(), body.to_owned())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        c.wait().ok()
    }

    pub fn stop(&mut self) {
        self.terminate();
    }

    /// A `wharf` subcommand with this instance's config (in its namespace,
    /// if any).
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let mut c = exec_in(self.ns.as_deref(), env!("CARGO_BIN_EXE_wharf"));
        // `bundle create`, `inventory export`: the option follows both words.
        let words = if matches!(args[0], "bundle" | "inventory") {
            2
        } else {
            1
        };
        c.args(&args[..words])
            .arg("--config")
            .arg(&self.cfg)
            .args(&args[words..]);
        let out = c.output().unwrap();
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), s)
    }

    /// The value of a metric line (`name{labels}` exactly as rendered), or 0.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series)
    }

    /// `/metrics` as Prometheus reads it.
    pub fn metrics(&self) -> String {
        self.get("/metrics").1
    }
}

/// The value of `series` (a name with its rendered labels) in a Prometheus
/// text exposition, 0 if absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == series).then(|| v.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Every file under `dir` with its length (recursively).
pub fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else if let Ok(m) = e.metadata() {
                out.push((p, m.len()));
            }
        }
    }
    out
}

/// Re-hashes every blob file of a wharf cache: (files, mismatches).
pub fn rehash_cache(cache: &Path) -> (usize, Vec<PathBuf>) {
    use sha2::Digest as _;
    let files = files_under(&cache.join("blobs"));
    let mut bad = Vec::new();
    for (p, _) in &files {
        let hex = p.file_name().unwrap().to_string_lossy().into_owned();
        let got = hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()));
        if got != hex {
            bad.push(p.clone());
        }
    }
    (files.len(), bad)
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct Wharf {
    pub addr: SocketAddr,
    pub dir: TempDir,
    pub mirror: ::wharf::mirror::Mirror,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Wharf {
    /// Starts wharf over plain HTTP with `upstreams` (TOML `[[upstream]]`
    /// blocks) and extra `[cache]` lines, on a fresh cache directory.
    pub fn start(rt: &tokio::runtime::Runtime, upstreams: &str, cache_extra: &str) -> Wharf {
        Wharf::start_with(rt, "plain_http = true\n", upstreams, cache_extra)
    }

    /// Starts wharf with `server` as the body of its `[server]` section (which
    /// may open `[server.tls]`); `listen` is always 127.0.0.1 on a free port.
    pub fn start_with(
        rt: &tokio::runtime::Runtime,
        server: &str,
        upstreams: &str,
        cache_extra: &str,
    ) -> Wharf {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[cache]\ndir = {:?}\n{cache_extra}\n[server]\nlisten = \"127.0.0.1:0\"\n{server}\n{upstreams}",
            dir.path().join("cache")
        );
        let config = ::wharf::config::Config::from_toml(&text, Some(dir.path())).unwrap();
        let _g = rt.enter();
        let app = ::wharf::app::App::open(&config, Default::default()).unwrap();
        let mirror = app.mirror.clone();
        let tls = ::wharf::tls::Tls::new(&config.tls, &config.cache_dir).unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = rt.spawn(::wharf::server::run(
            listener,
            app,
            tls,
            async {
                let _ = rx.await;
            },
            Duration::from_secs(5),
            config.server.clone(),
            None,
        ));
        Wharf {
            addr,
            dir,
            mirror,
            shutdown: Some(tx),
            done: Some(done),
        }
    }

    /// The usual test upstream block: `up` as Docker Hub stand-in (default,
    /// alias docker.io), with credentials when it has auth.
    pub fn hub_block(up: &Upstream, with_creds: bool, dir: &Path) -> String {
        let mut s = format!(
            "[[upstream]]\nname = \"hub\"\nurl = \"{}\"\naliases = [\"docker.io\"]\nprefix = \"hub\"\ndefault = true\n",
            up.url()
        );
        if with_creds {
            s += &up.token_realms_line();
            let f = dir.join(format!("pw-{}", up.port));
            std::fs::write(&f, &up.pass).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
            s += &format!(
                "[upstream.credentials]\nusername = \"{}\"\npassword_file = {:?}\n",
                up.user, f
            );
        }
        s
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits (at most 30 s) until no fill is in flight. Clients finish as soon
    /// as the digest is verified; the fill leaves the map after its fsync.
    pub fn wait_fills_settled(&self) {
        eventually(
            Duration::from_secs(30),
            "the fills in flight to finish",
            || self.mirror.fills_in_flight() == 0,
        );
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// Files under the cache's blob directory.
    pub fn cached_blobs(&self) -> usize {
        fn count(p: &Path) -> usize {
            std::fs::read_dir(p)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| {
                            if e.path().is_dir() {
                                count(&e.path())
                            } else {
                                1
                            }
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        count(&self.cache_dir().join("blobs"))
    }

    pub fn stop(&mut self, rt: &tokio::runtime::Runtime) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(d) = self.done.take() {
            rt.block_on(d).unwrap().unwrap();
        }
    }
}

impl Drop for Wharf {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The common case: a plain upstream seeded with `pushes` (layout tag, dest),
/// and wharf in front of it as the default upstream. Fields drop in order:
/// wharf, then the upstream, then the runtime they run on.
pub struct Fixture {
    pub w: Wharf,
    pub up: Upstream,
    /// Runs wharf and the token server; kept alive for the fixture's lifetime.
    _rt: tokio::runtime::Runtime,
}

impl Fixture {
    pub fn plain(pushes: &[(&str, &str)], cache_extra: &str) -> Fixture {
        let rt = runtime();
        let up = Upstream::start(Auth::None, &rt);
        for (tag, dest) in pushes {
            up.push(tag, dest, None, false);
        }
        let w = Wharf::start(
            &rt,
            &Wharf::hub_block(&up, false, Path::new("/")),
            cache_extra,
        );
        Fixture { w, up, _rt: rt }
    }
}
