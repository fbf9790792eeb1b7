//! Shared helpers: real components on loopback ports, cleaned up on drop.
//!
//! - [`Upstream`]: a CNCF distribution registry (`docker-registry`), plain, with
//!   htpasswd basic auth, or with token auth against [`TokenServer`].
//! - [`TokenServer`]: issues RS256 JWTs with an `x5c` header, as Docker Hub's
//!   token service does, from a key pair made with openssl at test time.
//! - [`Wharf`]: wharf in-process on port 0 with its own cache directory.
//! - client helpers for skopeo, podman and containerd's ctr.

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use tempfile::TempDir;

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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// Polls until `addr` accepts TCP connections (bounded: 20 s).
pub fn wait_listening(addr: SocketAddr, child: &mut Option<&mut Child>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        if let Some(c) = child.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                panic!("process exited before listening on {addr}: {st}");
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listening on {addr} after 20 s");
}

// ------------------------------------------------------------------ upstream

pub enum Auth {
    None,
    Basic,
    /// Docker Hub-shaped token service (x5c, 300 s tokens), test user only.
    Token,
    /// A token service shaped by `TokenOpts`.
    TokenWith(TokenOpts),
}

pub struct Upstream {
    pub port: u16,
    pub dir: TempDir,
    child: Option<Child>,
    pub user: String,
    pub pass: String,
    pub token: Option<TokenServer>,
    config: PathBuf,
    log: PathBuf,
}

impl Upstream {
    pub fn start(auth: Auth, rt: &tokio::runtime::Runtime) -> Upstream {
        require(&["docker-registry", "skopeo", "htpasswd", "openssl"]);
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let user = format!("u{}", random_hex(4));
        let pass = random_hex(16);
        let mut token = None;
        let auth_yaml = match auth {
            Auth::None => String::new(),
            Auth::Basic => {
                let f = dir.path().join("htpasswd");
                run(Command::new("htpasswd")
                    .args(["-Bbc"])
                    .arg(&f)
                    .args([&user, &pass]));
                format!(
                    "auth:\n  htpasswd:\n    realm: basic-realm\n    path: {}\n",
                    f.display()
                )
            }
            Auth::Token | Auth::TokenWith(_) => {
                let opts = match auth {
                    // The test user (who pushes) is always let in too.
                    Auth::TokenWith(mut o) => {
                        let (u, p, inner) = (user.clone(), pass.clone(), o.check);
                        o.check = Arc::new(move |a, b| {
                            if a == u && b == p {
                                Some(u.clone())
                            } else {
                                inner(a, b)
                            }
                        });
                        o
                    }
                    _ => TokenOpts::hub(&user, &pass),
                };
                let t = TokenServer::start_with(rt, dir.path(), opts);
                let s = format!(
                    "auth:\n  token:\n    realm: {}\n    service: test-registry\n    issuer: test-issuer\n    rootcertbundle: {}\n",
                    t.realm,
                    t.cert.display()
                );
                token = Some(t);
                s
            }
        };
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  accesslog:\n    disabled: false\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_yaml}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = dir.path().join("registry.log");
        let mut u = Upstream {
            port,
            dir,
            child: None,
            user,
            pass,
            token,
            config,
            log,
        };
        u.resume();
        u
    }

    /// Starts (again) the registry process on the same port and storage.
    pub fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&self.config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry starts");
        wait_listening(self.addr(), &mut Some(&mut child));
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The registry's on-disk storage (to corrupt content on purpose).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("data/docker/registry/v2")
    }

    fn creds(&self) -> Vec<String> {
        if self.token.is_some() || self.has_basic() {
            vec![
                "--dest-creds".into(),
                format!("{}:{}", self.user, self.pass),
            ]
        } else {
            vec![]
        }
    }

    fn has_basic(&self) -> bool {
        self.dir.path().join("htpasswd").exists()
    }

    /// Pushes a tag of the test layout. `format` is `None` (as built, OCI) or
    /// `Some("v2s2")`; `all` copies every platform of an index.
    pub fn push(&self, tag: &str, dest: &str, format: Option<&str>, all: bool) {
        let mut c = Command::new("skopeo");
        c.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        c.args(self.creds());
        if let Some(f) = format {
            c.args(["--format", f]);
        }
        if all {
            c.arg("--all");
        }
        c.arg(format!("oci:{}:{tag}", images().display()));
        c.arg(format!("docker://127.0.0.1:{}/{dest}", self.port));
        run(&mut c);
    }

    /// How many GETs for `path` (e.g. `/v2/library/big/blobs/sha256:…`) the
    /// registry's access log shows.
    pub fn gets(&self, path: &str) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let needle = format!("\"GET {path} ");
        log.lines().filter(|l| l.contains(&needle)).count()
    }

    /// Every request line in the access log.
    pub fn requests(&self) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("\" 20") || l.contains("\" 40") || l.contains("\" 50"))
            .count()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

// ------------------------------------------------------------- token server

/// Basic user and password in, the token's subject out (None: 401).
pub type CredentialCheck = Arc<dyn Fn(&str, &str) -> Option<String> + Send + Sync>;

/// How a test token service behaves.
pub struct TokenOpts {
    /// Address to listen on: 127.0.0.2 puts the realm on "another host", as
    /// GitLab's is.
    pub ip: [u8; 4],
    pub path: &'static str,
    /// `x5c` (Docker Hub) or a libtrust `kid` (GitLab) in the JWT header.
    pub kid: bool,
    /// `expires_in` in the answer; `None` leaves it out (GitLab), which
    /// clients read as 60 s. The JWT's `exp` uses `jwt_lifetime`.
    pub expires_in: Option<u64>,
    pub jwt_lifetime: u64,
    /// Decides Basic credentials: Some(subject) or None (401).
    pub check: CredentialCheck,
}

impl TokenOpts {
    /// Docker Hub's shape: x5c, expires_in, the one test user.
    pub fn hub(user: &str, pass: &str) -> TokenOpts {
        let (u, p) = (user.to_owned(), pass.to_owned());
        TokenOpts {
            ip: [127, 0, 0, 1],
            path: "/token",
            kid: false,
            expires_in: Some(300),
            jwt_lifetime: 300,
            check: Arc::new(move |a, b| (a == u && b == p).then(|| u.clone())),
        }
    }
}

/// A token service: `GET <path>?service=&scope=`, Basic credentials optional,
/// RS256 JWTs signed with a key made by openssl at test time, the signing
/// certificate in `x5c` or named by a libtrust `kid`. Anonymous callers get
/// `pull` on repositories outside `private/`; authenticated ones get every
/// action asked for.
pub struct TokenServer {
    pub realm: String,
    pub cert: PathBuf,
    pub issued: Arc<AtomicUsize>,
    /// Every token issued, to look for in logs and outputs.
    pub tokens: Arc<std::sync::Mutex<Vec<String>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

/// libtrust's key ID, which distribution matches a `kid` against: the SHA-256
/// of the DER public key, first 240 bits, base32, in groups of 4 with ':'.
fn libtrust_kid(cert: &Path) -> String {
    let pubkey = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform DER",
            cert.display()
        ))
        .output()
        .unwrap()
        .stdout;
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(&pubkey);
    const A: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = String::new();
    for &b in &d[..30] {
        bits = (bits << 8) | b as u32;
        n += 8;
        while n >= 5 {
            out.push(A[((bits >> (n - 5)) & 31) as usize] as char);
            n -= 5;
        }
    }
    out.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":")
}

impl TokenServer {
    pub fn start_with(rt: &tokio::runtime::Runtime, dir: &Path, opts: TokenOpts) -> TokenServer {
        let key = dir.join("token.key");
        let cert = dir.join("token.crt");
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=test-token-issuer",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null()));
        let pem = std::fs::read_to_string(&cert).unwrap();
        // The PEM body is the base64 of the DER certificate: exactly what x5c holds.
        let der_b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let key_ref = if opts.kid {
            KeyRef::Kid(libtrust_kid(&cert))
        } else {
            KeyRef::X5c(der_b64)
        };
        let enc_key =
            jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(&key).unwrap()).unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(SocketAddr::from((
                opts.ip, 0,
            ))))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let realm = format!(
            "http://{}:{port}{}",
            std::net::Ipv4Addr::from(opts.ip),
            opts.path
        );
        let issued = Arc::new(AtomicUsize::new(0));
        let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let state = Arc::new(TokenState {
            key: enc_key,
            key_ref,
            opts,
            issued: issued.clone(),
            tokens: tokens.clone(),
        });
        rt.spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    a = listener.accept() => match a { Ok(x) => x, Err(_) => continue },
                    _ = &mut rx => return,
                };
                let st = state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(token_response(&st, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        TokenServer {
            realm,
            cert,
            issued,
            tokens,
            shutdown: Some(tx),
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

enum KeyRef {
    X5c(String),
    Kid(String),
}

struct TokenState {
    key: jsonwebtoken::EncodingKey,
    key_ref: KeyRef,
    opts: TokenOpts,
    issued: Arc<AtomicUsize>,
    tokens: Arc<std::sync::Mutex<Vec<String>>>,
}

fn token_response(
    st: &TokenState,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    use base64::Engine as _;
    let reply = |status: u16, body: String| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap()
    };
    if req.uri().path() != st.opts.path {
        return reply(404, "{}".into());
    }
    let mut sub = String::new();
    if let Some(h) = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    {
        let who = h
            .strip_prefix("Basic ")
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|raw| {
                let (u, p) = raw.split_once(':')?;
                (st.opts.check)(u, p)
            });
        match who {
            Some(s) => sub = s,
            None => {
                return reply(
                    401,
                    r#"{"details":"incorrect username or password"}"#.into(),
                )
            }
        }
    }
    let query = req.uri().query().unwrap_or("");
    let mut service = String::new();
    let mut access = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "service" => service = v.into_owned(),
            "scope" => {
                let parts: Vec<&str> = v.splitn(3, ':').collect();
                if parts.len() == 3 && parts[0] == "repository" {
                    let asked: Vec<&str> = parts[2].split(',').collect();
                    let granted: Vec<&str> = if !sub.is_empty() {
                        asked
                    } else if parts[1].starts_with("private/") {
                        vec![]
                    } else {
                        asked.into_iter().filter(|a| *a == "pull").collect()
                    };
                    access.push(serde_json::json!({"type": "repository", "name": parts[1], "actions": granted}));
                }
            }
            _ => {}
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": "test-issuer", "sub": sub, "aud": service,
        "exp": now + st.opts.jwt_lifetime, "nbf": now - 10, "iat": now,
        "jti": random_hex(8), "access": access,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    match &st.key_ref {
        KeyRef::X5c(c) => header.x5c = Some(vec![c.clone()]),
        KeyRef::Kid(k) => header.kid = Some(k.clone()),
    }
    let token = jsonwebtoken::encode(&header, &claims, &st.key).unwrap();
    st.issued.fetch_add(1, Ordering::SeqCst);
    st.tokens.lock().unwrap().push(token.clone());
    let body = match st.opts.expires_in {
        Some(e) => {
            serde_json::json!({"token": token, "access_token": token, "expires_in": e, "issued_at": "2026-01-01T00:00:00Z"})
        }
        None => serde_json::json!({"token": token}),
    };
    reply(200, body.to_string())
}

// ---------------------------------------------------------------------- wharf

/// wharf serving `config` (written next to its cache), stopped on drop; the
/// log (debug level) is kept for the secrets check.
pub struct Served {
    child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
    pub cfg: PathBuf,
}

impl Served {
    pub fn start(dir: &Path, name: &str, body: &str) -> Served {
        let mut s = Served::spawn(dir, name, body, free_port());
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
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!("[server]\nlisten = \"127.0.0.1:{port}\"\nplain_http = true\n{server}[cache]\ndir = \"cache\"\n{body}"),
        )
        .unwrap();
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Served {
            child: Some(child),
            port,
            log,
            cfg,
        }
    }

    pub fn wait_ready(&mut self) {
        wait_listening(([127, 0, 0, 1], self.port).into(), &mut self.child.as_mut());
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
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

    /// A `wharf` subcommand with this instance's config.
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let mut c = Command::new(env!("CARGO_BIN_EXE_wharf"));
        c.arg(args[0])
            .arg("--config")
            .arg(&self.cfg)
            .args(&args[1..]);
        let out = c.output().unwrap();
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), s)
    }

    /// The value of a metric line (`name{labels}` exactly as rendered), or 0.
    pub fn metric(&self, series: &str) -> f64 {
        let text = http()
            .get(format!("{}/metrics", self.url()))
            .send()
            .unwrap()
            .text()
            .unwrap();
        metric_value(&text, series)
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
    pub mirror: wharf::mirror::Mirror,
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
        let config = wharf::config::Config::from_toml(&text, Some(dir.path())).unwrap();
        let _g = rt.enter();
        let app = wharf::app::App::open(&config, Default::default()).unwrap();
        let mirror = app.mirror.clone();
        let tls = wharf::tls::Tls::new(&config.tls, &config.cache_dir).unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = rt.spawn(wharf::server::run(
            listener,
            app,
            tls,
            async {
                let _ = rx.await;
            },
            Duration::from_secs(5),
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
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.mirror.fills_in_flight() > 0 {
            assert!(Instant::now() < deadline, "a fill never finished");
            std::thread::sleep(Duration::from_millis(20));
        }
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

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// -------------------------------------------------------------------- clients

/// A registries.conf whose docker.io primary is a dead port and whose mirror
/// is wharf over plain HTTP, so a failing mirror can never fall back to the
/// real Docker Hub.
pub fn registries_conf(dir: &Path, wharf: SocketAddr) -> PathBuf {
    registries_conf_for(dir, &wharf.to_string(), true)
}

/// The same for a mirror at `host` (`name:port`); `insecure` only for plain HTTP.
pub fn registries_conf_for(dir: &Path, host: &str, insecure: bool) -> PathBuf {
    let p = dir.join("registries.conf");
    std::fs::write(
        &p,
        format!(
            "unqualified-search-registries = [\"docker.io\"]\n[[registry]]\nprefix = \"docker.io\"\nlocation = \"127.0.0.1:{DEAD_PORT}\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{host}\"\n{}",
            if insecure { "insecure = true\n" } else { "" }
        ),
    )
    .unwrap();
    p
}

/// `skopeo copy` of `src` (a docker:// reference) into a `dir:` directory, which
/// keeps manifests and blobs byte for byte, so two copies can be compared.
pub fn skopeo_to_dir(reg_conf: Option<&Path>, src: &str, dest: &Path, all: bool) -> (bool, String) {
    let mut c = Command::new("skopeo");
    if let Some(r) = reg_conf {
        c.arg("--registries-conf").arg(r);
    }
    c.args(["copy", "--src-tls-verify=false"]);
    if all {
        c.arg("--all");
    }
    c.arg(src).arg(format!("dir:{}", dest.display()));
    try_run(&mut c)
}

/// Every file of a `dir:` copy with its bytes, for comparisons.
pub fn dir_contents(p: &Path) -> HashMap<String, Vec<u8>> {
    std::fs::read_dir(p)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// A plain blocking HTTP client for direct requests to wharf.
pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

// ------------------------------------------------------------- stand-ins

/// A TCP relay to `target` that sends the target's bytes on at most
/// `bytes_per_sec` (the other way unthrottled): a slow upstream link.
pub fn throttled_relay(
    rt: &tokio::runtime::Runtime,
    target: SocketAddr,
    bytes_per_sec: u64,
) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(up) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut ur, mut uw) = up.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut uw).await;
                    let _ = uw.shutdown().await;
                });
                let started = tokio::time::Instant::now();
                let mut sent = 0u64;
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match ur.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    sent += n as u64;
                    let due = started + Duration::from_secs_f64(sent as f64 / bytes_per_sec as f64);
                    tokio::time::sleep_until(due).await;
                }
                let _ = cw.shutdown().await;
            });
        }
    });
    port
}

/// The GCE metadata server's token endpoint, as it behaves: requires
/// `Metadata-Flavor: Google` (403 without), answers `{"access_token",
/// "expires_in", "token_type"}` with `Metadata-Flavor: Google`, hands out the
/// same token (with a shrinking `expires_in`) until it expires.
pub struct MetadataServer {
    pub port: u16,
    pub fetches: Arc<AtomicUsize>,
    /// Tokens handed out, with when they stop being valid.
    pub tokens: Arc<std::sync::Mutex<Vec<(String, Instant)>>>,
}

impl MetadataServer {
    pub fn start(rt: &tokio::runtime::Runtime, lifetime: Duration) -> MetadataServer {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let fetches = Arc::new(AtomicUsize::new(0));
        let tokens: Arc<std::sync::Mutex<Vec<(String, Instant)>>> = Default::default();
        let (f, t) = (fetches.clone(), tokens.clone());
        rt.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (f, t) = (f.clone(), t.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (f, t) = (f.clone(), t.clone());
                            async move {
                                let b =
                                    hyper::Response::builder().header("Metadata-Flavor", "Google");
                                let resp = if req
                                    .headers()
                                    .get("metadata-flavor")
                                    .map(|v| v.as_bytes())
                                    != Some(b"Google")
                                {
                                    b.status(403).body(http_body_util::Full::new(
                                        bytes::Bytes::from(
                                            "Missing required header: Metadata-Flavor",
                                        ),
                                    ))
                                } else if req.uri().path()
                                    != "/computeMetadata/v1/instance/service-accounts/default/token"
                                {
                                    b.status(404)
                                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                                } else {
                                    f.fetch_add(1, Ordering::SeqCst);
                                    let mut list = t.lock().unwrap();
                                    let now = Instant::now();
                                    if list.last().is_none_or(|(_, until)| *until <= now) {
                                        list.push((
                                            format!("ya29.{}", random_hex(24)),
                                            now + lifetime,
                                        ));
                                    }
                                    let (tok, until) = list.last().unwrap().clone();
                                    let body = serde_json::json!({
                                        "access_token": tok,
                                        "expires_in": (until - now).as_secs().max(1),
                                        "token_type": "Bearer",
                                    });
                                    b.header("content-type", "application/json").body(
                                        http_body_util::Full::new(bytes::Bytes::from(
                                            body.to_string(),
                                        )),
                                    )
                                };
                                Ok::<_, std::convert::Infallible>(resp.unwrap())
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        MetadataServer {
            port,
            fetches,
            tokens,
        }
    }
}

/// Docker Hub's rate limiting in front of a real registry: passes requests
/// through, adds `ratelimit-limit` / `ratelimit-remaining` to manifest
/// answers, and once `limited` is set answers everything with 429
/// `TOOMANYREQUESTS` as Docker Hub does.
pub struct RateLimiter {
    pub port: u16,
    pub limited: Arc<std::sync::atomic::AtomicBool>,
    /// Requests that reached the limiter.
    pub seen: Arc<AtomicUsize>,
}

impl RateLimiter {
    pub fn start(rt: &tokio::runtime::Runtime, upstream: String) -> RateLimiter {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let limited = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = Arc::new(AtomicUsize::new(0));
        let remaining = Arc::new(AtomicUsize::new(100));
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let (l, s) = (limited.clone(), seen.clone());
        rt.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (l, s, r, c, up) = (l.clone(), s.clone(), remaining.clone(), client.clone(), upstream.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (l, s, r, c, up) = (l.clone(), s.clone(), r.clone(), c.clone(), up.clone());
                        async move {
                            s.fetch_add(1, Ordering::SeqCst);
                            let full = |status: u16, body: bytes::Bytes| hyper::Response::builder().status(status).body(http_body_util::Full::new(body));
                            if l.load(Ordering::SeqCst) {
                                let mut resp = full(429, bytes::Bytes::from(r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: https://www.docker.com/increase-rate-limit"}]}"#)).unwrap();
                                resp.headers_mut().insert("ratelimit-limit", "100;w=21600".parse().unwrap());
                                resp.headers_mut().insert("ratelimit-remaining", "0;w=21600".parse().unwrap());
                                return Ok::<_, std::convert::Infallible>(resp);
                            }
                            let url = format!("{up}{}", req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"));
                            let mut fwd = c.request(req.method().clone(), url);
                            for (k, v) in req.headers() {
                                if k != "host" {
                                    fwd = fwd.header(k, v);
                                }
                            }
                            let manifest = req.uri().path().contains("/manifests/");
                            let up_resp = match fwd.send().await {
                                Ok(x) => x,
                                Err(_) => return Ok(full(502, bytes::Bytes::new()).unwrap()),
                            };
                            let mut b = hyper::Response::builder().status(up_resp.status().as_u16());
                            for (k, v) in up_resp.headers() {
                                b = b.header(k, v);
                            }
                            if manifest && req.method() == hyper::Method::GET {
                                let left = r.fetch_sub(1, Ordering::SeqCst) - 1;
                                b = b.header("ratelimit-limit", "100;w=21600").header("ratelimit-remaining", format!("{left};w=21600"));
                            }
                            let body = up_resp.bytes().await.unwrap_or_default();
                            Ok(b.body(http_body_util::Full::new(body)).unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        RateLimiter {
            port,
            limited,
            seen,
        }
    }
}
