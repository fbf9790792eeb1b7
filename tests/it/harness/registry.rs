//! The upstream: a real CNCF distribution registry (`docker-registry serve`)
//! on a loopback port, plain, with htpasswd basic auth, or with token auth
//! against a [`TokenServer`] it starts; pushing the test images to it (with
//! skopeo, or manifests by HTTP: [`Upstream::put_manifest`],
//! [`Upstream::retag`]), and reading its access log ([`Upstream::count`]).
//! Stopped on drop; can be stopped and resumed on the same port and storage.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;

use tempfile::TempDir;

use super::{
    free_port, http, images, layout_digest, random_hex, require, run, wait_listening, TokenOpts,
    TokenServer,
};

/// Every manifest type, as clients send them: distribution answers 404 for an
/// OCI manifest when the Accept list has no OCI type.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

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
    /// Serving HTTPS (and HTTP/2 by ALPN): the CA that signed its certificate.
    tls_ca: Option<PathBuf>,
}

impl Upstream {
    pub fn start(auth: Auth, rt: &tokio::runtime::Runtime) -> Upstream {
        Upstream::start_as(auth, rt, false)
    }

    /// A registry over TLS, its certificate minted by a CA of its own
    /// ([`Upstream::ca_file`]): Go's server offers HTTP/2 to whoever asks.
    pub fn start_tls(rt: &tokio::runtime::Runtime) -> Upstream {
        Upstream::start_as(Auth::None, rt, true)
    }

    fn start_as(auth: Auth, rt: &tokio::runtime::Runtime, tls: bool) -> Upstream {
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
        let (tls_ca, tls_yaml) = if tls {
            let ca = wharf::tls::Ca::load_or_create(&dir.path().join("ca")).unwrap();
            let (chain, key) = ca.issue_server(&["127.0.0.1".to_owned()]).unwrap();
            let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
            std::fs::write(&cert_file, chain).unwrap();
            std::fs::write(&key_file, key).unwrap();
            let yaml = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert_file.display(),
                key_file.display()
            );
            (Some(ca.cert_path()), yaml)
        } else {
            (None, String::new())
        };
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  accesslog:\n    disabled: false\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{tls_yaml}{auth_yaml}",
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
            tls_ca,
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
        wait_listening(self.addr(), Some(&mut child));
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `token_realms = ["ip:port"]` naming its token service (on another
    /// port or address, so wharf sends it credentials only when listed),
    /// or nothing without one.
    pub fn token_realms_line(&self) -> String {
        match &self.token {
            Some(t) => {
                let host = t
                    .realm
                    .trim_start_matches("http://")
                    .split('/')
                    .next()
                    .unwrap();
                format!("token_realms = [\"{host}\"]\n")
            }
            None => String::new(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls_ca.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The CA file of an upstream started with [`Upstream::start_tls`].
    pub fn ca_file(&self) -> Option<&std::path::Path> {
        self.tls_ca.as_deref()
    }

    /// The method and protocol (`HTTP/1.1`, `HTTP/2.0`) of each request for
    /// a path starting with `path_prefix`, in order, from the access log.
    pub fn protocols(&self, path_prefix: &str) -> Vec<(String, String)> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter_map(|l| {
                let (_, rest) = l.split_once("] \"")?;
                let (request, _) = rest.split_once('"')?;
                let mut parts = request.split(' ');
                let (method, path, proto) = (parts.next()?, parts.next()?, parts.next()?);
                path.starts_with(path_prefix)
                    .then(|| (method.to_owned(), proto.to_owned()))
            })
            .collect()
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

    /// Pushes `multi` (the OCI index of three platforms) converted to a
    /// Docker manifest list (`--all --format v2s2`).
    pub fn push_docker_list(&self, dest: &str) {
        self.push("multi", dest, Some("v2s2"), true);
    }

    /// Pushes the layout's `multi-sig` (a cosign-style signature of `multi`)
    /// into `repo` under cosign's tag for `multi` as the layout holds it
    /// (pushed with `push("multi", .., None, true)`, which keeps its digest):
    /// `sha256-<hex>.sig`. Returns that tag.
    pub fn push_signature(&self, repo: &str) -> String {
        let digest = layout_digest("multi");
        let tag = format!("{}.sig", digest.replace(':', "-"));
        self.push("multi-sig", &format!("{repo}:{tag}"), None, false);
        tag
    }

    /// Pushes a new image to `repo:tag`: `small`'s busybox layer plus a fresh
    /// layer (a gzipped tar of one random 1 KiB file) and a config whose
    /// `created` is `created` (RFC 3339), so every call makes distinct
    /// blobs and the images sort by creation time. Blobs the repository
    /// already holds are not sent. Returns the manifest's digest and the
    /// digests of the two blobs no other image has (the layer and config).
    pub fn push_unique(&self, repo: &str, tag: &str, created: &str) -> (String, Vec<String>) {
        use sha2::Digest as _;
        let digest_of = |b: &[u8]| format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)));
        let blob = |d: &str| std::fs::read(images().join("blobs/sha256").join(&d[7..])).unwrap();
        let json = |d: &str| -> serde_json::Value { serde_json::from_slice(&blob(d)).unwrap() };
        let small = json(&layout_digest("small"));
        let base_layer = small["layers"][0].clone();
        let mut config = json(small["config"]["digest"].as_str().unwrap());

        let work = tempfile::tempdir().unwrap();
        std::fs::write(work.path().join("unique.bin"), random_hex(512)).unwrap();
        run(Command::new("tar")
            .arg("-cf")
            .arg(work.path().join("layer.tar"))
            .arg("-C")
            .arg(work.path())
            .arg("unique.bin"));
        let tar = std::fs::read(work.path().join("layer.tar")).unwrap();
        run(Command::new("gzip")
            .arg("-n")
            .arg(work.path().join("layer.tar")));
        let layer = std::fs::read(work.path().join("layer.tar.gz")).unwrap();
        config["created"] = created.into();
        config["rootfs"]["diff_ids"]
            .as_array_mut()
            .unwrap()
            .push(digest_of(&tar).into());
        let config = serde_json::to_vec(&config).unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": digest_of(&config), "size": config.len()},
            "layers": [base_layer, {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                    "digest": digest_of(&layer), "size": layer.len()}],
        }))
        .unwrap();

        let auth = self.push_auth(repo);
        let client = http();
        let base = blob(base_layer["digest"].as_str().unwrap());
        for b in [&base, &layer, &config] {
            self.upload(&client, &auth, repo, b);
        }
        self.put(
            &client,
            &auth,
            repo,
            tag,
            &manifest,
            "application/vnd.oci.image.manifest.v1+json",
        );
        (
            digest_of(&manifest),
            vec![digest_of(&layer), digest_of(&config)],
        )
    }

    /// A monolithic blob upload (POST, then PUT `?digest=`), unless the
    /// repository has the blob already.
    fn upload(
        &self,
        client: &reqwest::blocking::Client,
        auth: &Option<String>,
        repo: &str,
        bytes: &[u8],
    ) {
        use sha2::Digest as _;
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
        let with_auth = |r: reqwest::blocking::RequestBuilder| match auth {
            Some(a) => r.header("authorization", a),
            None => r,
        };
        let head = with_auth(client.head(format!("{}/v2/{repo}/blobs/{digest}", self.url())))
            .send()
            .unwrap();
        if head.status().is_success() {
            return;
        }
        let r = with_auth(client.post(format!("{}/v2/{repo}/blobs/uploads/", self.url())))
            .send()
            .unwrap();
        assert_eq!(r.status(), 202, "upload to {repo}");
        let location = r.headers()["location"].to_str().unwrap();
        let location = if location.starts_with('/') {
            format!("{}{location}", self.url())
        } else {
            location.to_owned()
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let r = with_auth(client.put(format!("{location}{sep}digest={digest}")))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .unwrap();
        assert_eq!(r.status(), 201, "upload of {digest} to {repo}");
    }

    /// The `Authorization` value a pusher of `repo` sends: none without auth,
    /// Basic with htpasswd, else a Bearer token for `pull,push` from the token
    /// service (the test user gets every action it asks for).
    fn push_auth(&self, repo: &str) -> Option<String> {
        use base64::Engine as _;
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", self.user, self.pass))
        );
        if self.has_basic() {
            return Some(basic);
        }
        let t = self.token.as_ref()?;
        let r = http()
            .get(&t.realm)
            .query(&[
                ("service", "test-registry"),
                ("scope", &format!("repository:{repo}:pull,push")),
            ])
            .header("authorization", basic)
            .send()
            .unwrap();
        assert!(r.status().is_success(), "token for pushing: {}", r.status());
        let body: serde_json::Value = r.json().unwrap();
        Some(format!("Bearer {}", body["token"].as_str().unwrap()))
    }

    fn put(
        &self,
        client: &reqwest::blocking::Client,
        auth: &Option<String>,
        repo: &str,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
    ) {
        let mut req = client
            .put(format!("{}/v2/{repo}/manifests/{reference}", self.url()))
            .header("content-type", media_type)
            .body(bytes.to_vec());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().unwrap();
        let status = r.status();
        assert!(
            status.is_success(),
            "PUT {repo}:{reference}: {status} {}",
            r.text().unwrap_or_default()
        );
    }

    /// PUTs a manifest (its blobs must be in `repo` already) under
    /// `reference`, a tag or its digest, as the test user when auth is on.
    pub fn put_manifest(&self, repo: &str, reference: &str, bytes: &[u8], media_type: &str) {
        let auth = self.push_auth(repo);
        self.put(&http(), &auth, repo, reference, bytes, media_type);
    }

    /// The manifest `reference` of `repo` exactly as stored, with its media
    /// type, as the test user (the full Accept list).
    pub fn get_manifest(&self, repo: &str, reference: &str) -> (Vec<u8>, String) {
        self.fetch(&self.push_auth(repo), repo, reference)
    }

    fn fetch(&self, auth: &Option<String>, repo: &str, reference: &str) -> (Vec<u8>, String) {
        let mut req = http()
            .get(format!("{}/v2/{repo}/manifests/{reference}", self.url()))
            .header("accept", ACCEPT);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().unwrap();
        assert!(
            r.status().is_success(),
            "GET {repo}:{reference}: {}",
            r.status()
        );
        let media_type = r.headers()["content-type"].to_str().unwrap().to_owned();
        (r.bytes().unwrap().to_vec(), media_type)
    }

    /// Tags `repo:from` again under each of `new_tags`: one GET, then one PUT
    /// of the same bytes per tag (the blobs are there already), four at a
    /// time, so hundreds of tags take a second or two, not a skopeo copy each.
    pub fn retag(&self, repo: &str, from: &str, new_tags: &[String]) {
        let auth = self.push_auth(repo);
        let (bytes, media_type) = self.fetch(&auth, repo, from);
        // Distribution takes ~15 ms per manifest PUT (it checks every
        // reference): four connections at once.
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let client = http();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(t) = new_tags.get(i) else { break };
                        self.put(&client, &auth, repo, t, &bytes, &media_type);
                    }
                });
            }
        });
    }

    /// The access log's requests as (method, path with query, status), in
    /// order. Distribution 2.8 writes them in the combined log format,
    /// `127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 200 2 "" "agent"`, among its
    /// structured `time=.. level=..` lines.
    pub fn access_log(&self) -> Vec<(String, String, u16)> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines().filter_map(parse_access_line).collect()
    }

    /// How many requests with `method` for a path starting with `path_prefix`
    /// the registry served: `count("GET", "/v2/library/nginx/manifests/") == 0`
    /// says no manifest of it was downloaded.
    pub fn count(&self, method: &str, path_prefix: &str) -> usize {
        self.access_log()
            .iter()
            .filter(|(m, p, _)| m == method && p.starts_with(path_prefix))
            .count()
    }

    /// How many GETs for `path` (e.g. `/v2/library/big/blobs/sha256:…`) the
    /// registry's access log shows.
    pub fn gets(&self, path: &str) -> usize {
        self.access_log()
            .iter()
            .filter(|(m, p, _)| m == "GET" && p == path)
            .count()
    }

    /// Every request in the access log.
    pub fn requests(&self) -> usize {
        self.access_log().len()
    }
}

/// One combined-log-format line: `.. [date] "METHOD PATH HTTP/1.1" STATUS ..`.
fn parse_access_line(line: &str) -> Option<(String, String, u16)> {
    let (_, rest) = line.split_once("] \"")?;
    let (request, rest) = rest.split_once('"')?;
    let mut parts = request.split(' ');
    let (method, path, proto) = (parts.next()?, parts.next()?, parts.next()?);
    if !proto.starts_with("HTTP/") || parts.next().is_some() {
        return None;
    }
    let status = rest.trim_start().split(' ').next()?.parse().ok()?;
    Some((method.to_owned(), path.to_owned(), status))
}

#[test]
fn access_log_lines_are_parsed_and_structured_lines_skipped() {
    let line = r#"127.0.0.1 - - [29/Nov/2026:17:00:52 +0000] "HEAD /v2/x/y/manifests/1?ns=docker.io HTTP/1.1" 404 91 "" "curl/7.88.1""#;
    assert_eq!(
        parse_access_line(line),
        Some((
            "HEAD".into(),
            "/v2/x/y/manifests/1?ns=docker.io".into(),
            404
        ))
    );
    let structured = r#"time="2026-11-29T17:00:52Z" level=error msg="response completed with error" http.request.method=HEAD http.request.uri=/v2/x/y/manifests/1"#;
    assert_eq!(parse_access_line(structured), None);
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}
