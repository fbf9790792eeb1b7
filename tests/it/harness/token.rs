//! The registry's token service, as Docker Hub's and GitLab's behave: RS256
//! JWTs signed with a key pair made by openssl at test time, the signing
//! certificate in an `x5c` header or named by a libtrust `kid`. It counts and
//! keeps every token it issues (to look for them in logs), and the lifetime
//! of the tokens it issues can be changed while it runs, so a test gives each
//! phase the tokens it needs and waits out a short lifetime, not a long one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{random_hex, run};

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
    /// Whether the answer says `expires_in` (Docker Hub) or leaves it out
    /// (GitLab), which clients read as 60 s.
    pub send_expires_in: bool,
    /// Seconds a token lives, in `expires_in` and in the JWT's `exp`; the
    /// start value of [`TokenServer::set_lifetime`].
    pub lifetime: u64,
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
            send_expires_in: true,
            lifetime: 300,
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
    pub tokens: Arc<Mutex<Vec<String>>>,
    /// Seconds the next tokens live.
    lifetime: Arc<AtomicU64>,
    /// When the last token issued stops being valid.
    last_until: Arc<Mutex<Option<Instant>>>,
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
        let tokens = Arc::new(Mutex::new(Vec::new()));
        let lifetime = Arc::new(AtomicU64::new(opts.lifetime));
        let last_until = Arc::new(Mutex::new(None));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let state = Arc::new(TokenState {
            key: enc_key,
            key_ref,
            opts,
            issued: issued.clone(),
            tokens: tokens.clone(),
            lifetime: lifetime.clone(),
            last_until: last_until.clone(),
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
            lifetime,
            last_until,
            shutdown: Some(tx),
        }
    }

    /// Tokens issued from now on live `secs` seconds.
    pub fn set_lifetime(&self, secs: u64) {
        self.lifetime.store(secs, Ordering::SeqCst);
    }

    /// When the last token issued stops being valid (its lifetime after it
    /// was issued): past it, a client that honours `expires_in` holds no
    /// live token of this server.
    pub fn last_token_until(&self) -> Instant {
        self.last_until.lock().unwrap().expect("a token was issued")
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
    tokens: Arc<Mutex<Vec<String>>>,
    lifetime: Arc<AtomicU64>,
    last_until: Arc<Mutex<Option<Instant>>>,
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
    let lifetime = st.lifetime.load(Ordering::SeqCst);
    let issued_at = Instant::now();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": "test-issuer", "sub": sub, "aud": service,
        "exp": now + lifetime, "nbf": now - 10, "iat": now,
        "jti": random_hex(8), "access": access,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    match &st.key_ref {
        KeyRef::X5c(c) => header.x5c = Some(vec![c.clone()]),
        KeyRef::Kid(k) => header.kid = Some(k.clone()),
    }
    let token = jsonwebtoken::encode(&header, &claims, &st.key).unwrap();
    st.tokens.lock().unwrap().push(token.clone());
    *st.last_until.lock().unwrap() = Some(issued_at + Duration::from_secs(lifetime));
    st.issued.fetch_add(1, Ordering::SeqCst);
    let body = if st.opts.send_expires_in {
        serde_json::json!({"token": token, "access_token": token, "expires_in": lifetime, "issued_at": "2026-01-01T00:00:00Z"})
    } else {
        serde_json::json!({"token": token})
    };
    reply(200, body.to_string())
}
