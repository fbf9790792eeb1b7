//! TLS termination with rustls: TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`,
//! session resumption by tickets and by session cache (dockerd, podman and skopeo
//! open a connection per request, so a resumed handshake is the common case),
//! optional client certificates (mTLS).
//!
//! The server certificate sits behind a swappable resolver: a replaced
//! certificate file (checked every `reload_interval`, or at once on SIGHUP) or a
//! renewed auto certificate is used by new connections, while connections already
//! established finish on the certificate they started with.

pub mod ca;
mod settings;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

pub use ca::Ca;
pub use settings::{TlsConfig, TlsMode};

#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Config(String),
    #[error("certificate error: {0}")]
    Cert(String),
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where the server certificate comes from.
enum Source {
    Auto {
        ca: Box<Ca>,
        names: Vec<String>,
    },
    Files {
        cert: PathBuf,
        key: PathBuf,
        interval: Duration,
    },
}

/// The live TLS state: the acceptor for new connections and the certificate it
/// presents.
pub struct Tls {
    acceptor: TlsAcceptor,
    resolver: Arc<SwapResolver>,
    source: Source,
}

#[derive(Debug)]
struct SwapResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SwapResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

/// Parses a PEM chain and key into what rustls serves, checking they match.
fn certified_key(chain_pem: &[u8], key_pem: &[u8], what: &str) -> Result<CertifiedKey, TlsError> {
    let bad = |e: &dyn std::fmt::Display| TlsError::Cert(format!("{what}: {e}"));
    let certs = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no certificate in PEM"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad(&e))?;
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad(&e))?;
    let ck = CertifiedKey::new(certs, signer);
    ck.keys_match()
        .map_err(|e| bad(&format!("key does not match certificate: {e}")))?;
    Ok(ck)
}

fn read(p: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(p).map_err(|e| TlsError::Io(format!("{}: {e}", p.display())))
}

impl Tls {
    /// Builds the TLS state, or `None` for plain HTTP. `data_dir` holds the auto CA.
    pub fn new(cfg: &TlsConfig, data_dir: &Path) -> Result<Option<Arc<Tls>>, TlsError> {
        let (source, first) = match &cfg.mode {
            TlsMode::Plain => return Ok(None),
            TlsMode::Auto { names } => {
                let ca = Ca::load_or_create(&data_dir.join("tls"))?;
                let (chain, key) = ca.issue_server(names)?;
                let ck = certified_key(chain.as_bytes(), key.as_bytes(), "minted certificate")?;
                (
                    Source::Auto {
                        ca: Box::new(ca),
                        names: names.clone(),
                    },
                    ck,
                )
            }
            TlsMode::Files { cert, key } => {
                let ck = certified_key(&read(cert)?, &read(key)?, &cert.display().to_string())?;
                let source = Source::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                    interval: cfg.reload_interval,
                };
                (source, ck)
            }
        };
        let resolver = Arc::new(SwapResolver {
            current: RwLock::new(Arc::new(first)),
        });
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &cfg.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(&read(path)?) {
                    let c = c.map_err(|e| TlsError::Cert(format!("{}: {e}", path.display())))?;
                    roots
                        .add(c)
                        .map_err(|e| TlsError::Cert(format!("{}: {e}", path.display())))?;
                }
                let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
                let v = if cfg.client_auth_required {
                    v
                } else {
                    v.allow_unauthenticated()
                };
                builder.with_client_cert_verifier(
                    v.build()
                        .map_err(|e| TlsError::Config(format!("client_ca_file: {e}")))?,
                )
            }
        };
        let mut sc = builder.with_cert_resolver(resolver.clone());
        sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // Resumption: stateless tickets (TLS 1.3 and 1.2) plus a server-side
        // cache for clients that do not use tickets.
        sc.ticketer =
            rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Config(e.to_string()))?;
        sc.session_storage = rustls::server::ServerSessionMemoryCache::new(16 * 1024);
        Ok(Some(Arc::new(Tls {
            acceptor: TlsAcceptor::from(Arc::new(sc)),
            resolver,
            source,
        })))
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Loads the certificate again (files) or mints a fresh one (auto). On error
    /// the current certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let ck = match &self.source {
            Source::Auto { ca, names } => {
                let (chain, key) = ca.issue_server(names)?;
                certified_key(chain.as_bytes(), key.as_bytes(), "minted certificate")?
            }
            Source::Files { cert, key, .. } => {
                certified_key(&read(cert)?, &read(key)?, &cert.display().to_string())?
            }
        };
        *self.resolver.current.write() = Arc::new(ck);
        Ok(())
    }

    /// Keeps the certificate fresh until the `Tls` is dropped: files are checked
    /// for changes every `reload_interval`, auto certificates renewed at two
    /// thirds of their lifetime, and SIGHUP reloads at once.
    pub fn spawn_maintenance(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Tls> = Arc::downgrade(self);
        let (period, files) = match &self.source {
            Source::Auto { .. } => (ca::SERVER_LIFETIME * 2 / 3, None),
            Source::Files {
                cert,
                key,
                interval,
            } => (*interval, Some((cert.clone(), key.clone()))),
        };
        tokio::spawn(async move {
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let stamp = |f: &Option<(PathBuf, PathBuf)>| {
                f.as_ref().map(|(c, k)| (file_stamp(c), file_stamp(k)))
            };
            let mut last = stamp(&files);
            loop {
                let hup_fired = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                };
                let why = tokio::select! {
                    _ = tokio::time::sleep(period) => "timer",
                    _ = hup_fired => "SIGHUP",
                };
                let Some(tls) = weak.upgrade() else { return };
                let now = stamp(&files);
                let due = why == "SIGHUP" || files.is_none() || now != last;
                if !due {
                    continue;
                }
                match tls.reload() {
                    Ok(()) => {
                        last = now;
                        tracing::info!(trigger = why, "TLS certificate reloaded");
                    }
                    Err(e) => {
                        tracing::warn!(trigger = why, error = %e, "TLS certificate reload failed; keeping the current one")
                    }
                }
            }
        })
    }
}

/// What changes when a file is replaced: modification time, size, inode.
fn file_stamp(p: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// Default certificate names: loopback, the host name, and the listen address
/// when it is a specific one.
pub fn default_names(listen: std::net::SocketAddr) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Some(h) = host_name() {
        if !h.is_empty() && !names.contains(&h) {
            names.push(h);
        }
    }
    let ip = listen.ip();
    if !ip.is_unspecified() && !names.contains(&ip.to_string()) {
        names.push(ip.to_string());
    }
    names
}

/// The host name, from gethostname(2): /proc/sys is hidden from the
/// systemd unit (ProcSubset=pid), the system call is not.
fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec()).ok()
}

#[cfg(test)]
pub(crate) fn verify_for_tests(chain_pem: &str, ca_pem: &str, name: &str) -> Result<(), String> {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::pki_types::{ServerName, UnixTime};
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let v = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .unwrap();
    let certs: Vec<_> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let sn = ServerName::try_from(name.to_owned()).unwrap();
    v.verify_server_cert(&certs[0], &certs[1..], &sn, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current_leaf(t: &Tls) -> Vec<u8> {
        t.resolver.current.read().cert[0].to_vec()
    }

    #[tokio::test]
    async fn auto_renewal_mints_a_new_certificate_from_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TlsConfig {
            mode: TlsMode::Auto {
                names: vec!["wharf.test".into()],
            },
            client_ca: None,
            client_auth_required: true,
            reload_interval: Duration::from_secs(30),
        };
        let tls = Tls::new(&cfg, dir.path()).unwrap().unwrap();
        let before = current_leaf(&tls);
        tls.reload().unwrap();
        let after = current_leaf(&tls);
        assert_ne!(before, after, "a fresh certificate");
        let ca = std::fs::read_to_string(dir.path().join("tls/ca.crt")).unwrap();
        let pem = |der: &[u8]| {
            use base64::Engine as _;
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                base64::engine::general_purpose::STANDARD.encode(der)
            )
        };
        verify_for_tests(&pem(&after), &ca, "wharf.test").unwrap();
    }

    #[tokio::test]
    async fn a_broken_replacement_keeps_the_current_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(&dir.path().join("ca")).unwrap();
        let (chain, key) = ca.issue_server(&["wharf.test".into()]).unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&c, &chain).unwrap();
        std::fs::write(&k, &key).unwrap();
        let cfg = TlsConfig {
            mode: TlsMode::Files {
                cert: c.clone(),
                key: k.clone(),
            },
            client_ca: None,
            client_auth_required: true,
            reload_interval: Duration::from_secs(30),
        };
        let tls = Tls::new(&cfg, dir.path()).unwrap().unwrap();
        let before = current_leaf(&tls);
        // Half-deployed: a new certificate with the old key.
        let (chain2, _) = ca.issue_server(&["wharf.test".into()]).unwrap();
        std::fs::write(&c, &chain2).unwrap();
        let e = tls.reload().unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
        assert_eq!(current_leaf(&tls), before);
        std::fs::write(&c, "garbage").unwrap();
        assert!(tls.reload().is_err());
        assert_eq!(current_leaf(&tls), before);
    }
}
