//! The upstream: a real CNCF distribution registry (`docker-registry serve`)
//! on a loopback port, plain, with htpasswd basic auth, or with token auth
//! against a [`TokenServer`] it starts; pushing the test images to it, and
//! reading its access log. Stopped on drop; can be stopped and resumed on the
//! same port and storage.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;

use tempfile::TempDir;

use super::{free_port, images, random_hex, require, run, wait_listening, TokenOpts, TokenServer};

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
        wait_listening(self.addr(), Some(&mut child));
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
