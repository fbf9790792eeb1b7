//! Configuration in two stages: [`FileConfig`] is exactly what the TOML file says
//! (unknown keys are errors, every field documented in `config.toml`), and
//! [`Config`] is the validated, typed result the rest of wharf uses.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Used when `wharf serve` gets no `--config`: Docker Hub as the default upstream.
pub const EMBEDDED_DEFAULT: &str = r#"
[server]
listen = "127.0.0.1:5000"

[[upstream]]
name = "dockerhub"
url = "https://registry-1.docker.io"
aliases = ["docker.io", "index.docker.io", "registry-1.docker.io"]
prefix = "dockerhub"
default = true
"#;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::sync::Arc<std::io::Error>,
    },
    #[error("{0}")]
    Parse(String),
    #[error("{key}: {why}")]
    Invalid { key: String, why: String },
}

fn invalid(key: impl Into<String>, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        why: why.into(),
    }
}

// ---------------------------------------------------------------- file format

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: FileServer,
    #[serde(default)]
    pub cache: FileCache,
    #[serde(default)]
    pub upstream: Vec<FileUpstream>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    /// Address to listen on, `host:port`.
    pub listen: Option<String>,
    /// Serve plain HTTP instead of TLS. Must be said explicitly.
    pub plain_http: Option<bool>,
    pub tls: Option<FileTls>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    /// Mint the server certificate from wharf's own CA (default when no
    /// cert_file is given).
    pub auto: Option<bool>,
    /// DNS names and IP addresses for the auto certificate.
    pub names: Option<Vec<String>>,
    /// PEM certificate chain (leaf first) and its private key.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// PEM bundle of CAs whose client certificates are accepted (mTLS).
    pub client_ca_file: Option<PathBuf>,
    /// "required" (default with client_ca_file) or "optional".
    pub client_auth: Option<String>,
    /// How often cert_file/key_file are checked for replacement.
    pub reload_interval: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileCache {
    /// Directory holding blobs, temp files and the metadata database.
    pub dir: Option<PathBuf>,
    /// How long a tag -> digest answer is trusted before a HEAD revalidates it.
    pub tag_ttl: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstream {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub prefix: Option<String>,
    #[serde(default)]
    pub default: bool,
    pub library_prefix: Option<bool>,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Option<String>,
    pub credentials: Option<FileCredentials>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCredentials {
    pub username: String,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    pub password: Option<String>,
}

// ---------------------------------------------------------------- typed config

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain HTTP, configured explicitly.
    Plain,
    /// A server certificate minted from wharf's own CA for these names.
    Auto { names: Vec<String> },
    /// A certificate and key from files, reloaded when they change.
    Files { cert: PathBuf, key: PathBuf },
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub mode: TlsMode,
    pub client_ca: Option<PathBuf>,
    pub client_auth_required: bool,
    pub reload_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub tls: TlsConfig,
    pub cache_dir: PathBuf,
    pub tag_ttl: Duration,
    pub upstreams: Vec<UpstreamConfig>,
    /// Things worth telling the operator at start-up (inline passwords, ...).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub url: reqwest::Url,
    /// `ns=` values (registry hosts) that select this upstream, lowercased.
    pub aliases: Vec<String>,
    pub prefix: Option<String>,
    pub default: bool,
    /// Prefix one-component names with `library/` (Docker Hub's official images).
    pub library_prefix: bool,
    pub ca_pem: Option<Vec<u8>>,
    pub connect_timeout: Duration,
    pub credentials: Option<Credentials>,
}

/// A username and secret for an upstream. The secret never prints.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

/// A secret string: `Debug` and `Display` print `<redacted>`; only
/// [`Secret::expose`] gives the value, so every use is greppable.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}
impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Config {
    /// Loads `path`, or the embedded default when `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Config::from_toml(EMBEDDED_DEFAULT, None),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError::Read {
                    path: p.to_owned(),
                    source: std::sync::Arc::new(e),
                })?;
                Config::from_toml(&text, p.parent())
            }
        }
    }

    /// Parses and validates. Relative paths in the file are taken relative to
    /// `base` (the config file's directory).
    pub fn from_toml(text: &str, base: Option<&Path>) -> Result<Config, ConfigError> {
        let file: FileConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        file.validate(base)
    }
}

fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("STATE_DIRECTORY") {
        // systemd's StateDirectory=; may hold several colon-separated paths.
        let s = d.to_string_lossy().into_owned();
        return PathBuf::from(s.split(':').next().unwrap_or(&s));
    }
    // SAFETY-free check: geteuid via the environment is unreliable, so look at HOME.
    match std::env::var_os("HOME") {
        Some(h) if h != "/root" && !h.is_empty() => {
            let base = std::env::var_os("XDG_DATA_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(h).join(".local/share"));
            base.join("wharf")
        }
        _ => PathBuf::from("/var/lib/wharf"),
    }
}

fn parse_duration(key: &str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s)
        .map_err(|e| invalid(key, format!("{e} (examples: \"30s\", \"5m\", \"1h\")")))
}

fn resolve(base: Option<&Path>, p: &Path) -> PathBuf {
    match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p.to_owned(),
    }
}

/// Reads a secret file, refusing one that others than its owner can read: a
/// credential readable by every local user is a leaked credential.
pub fn read_secret_file(key: &str, path: &Path) -> Result<Secret, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(invalid(
            key,
            format!(
                "{} is readable by group or others (mode {:o}); chmod 600 it",
                path.display(),
                meta.permissions().mode() & 0o777
            ),
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    Ok(Secret(text.trim_end_matches(['\n', '\r']).to_owned()))
}

fn validate_tls(
    plain_http: Option<bool>,
    tls: Option<FileTls>,
    listen: SocketAddr,
    base: Option<&Path>,
    warnings: &mut Vec<String>,
) -> Result<TlsConfig, ConfigError> {
    let plain = plain_http.unwrap_or(false);
    if plain && tls.is_some() {
        return Err(invalid(
            "server.plain_http",
            "cannot be combined with [server.tls]",
        ));
    }
    let t = tls.unwrap_or_default();
    let reload_interval = parse_duration(
        "server.tls.reload_interval",
        t.reload_interval.as_deref().unwrap_or("30s"),
    )?;
    let client_auth_required = match t.client_auth.as_deref() {
        None | Some("required") => true,
        Some("optional") => false,
        Some(other) => {
            return Err(invalid(
                "server.tls.client_auth",
                format!("{other:?} is not \"required\" or \"optional\""),
            ))
        }
    };
    if t.client_auth.is_some() && t.client_ca_file.is_none() {
        return Err(invalid("server.tls.client_auth", "needs client_ca_file"));
    }
    let mode = if plain {
        if !listen.ip().is_loopback() {
            warnings.push(format!(
                "server.plain_http: serving plain HTTP on {listen}, which is not loopback: clients need an insecure-registries entry and traffic is readable on the network"
            ));
        }
        TlsMode::Plain
    } else {
        match (t.auto, t.cert_file, t.key_file) {
            (Some(true), Some(_), _) | (Some(true), _, Some(_)) => {
                return Err(invalid(
                    "server.tls.auto",
                    "auto = true cannot be combined with cert_file/key_file",
                ))
            }
            (_, Some(c), Some(k)) => {
                if t.names.is_some() {
                    return Err(invalid("server.tls.names", "only used with auto = true"));
                }
                TlsMode::Files {
                    cert: resolve(base, &c),
                    key: resolve(base, &k),
                }
            }
            (_, Some(_), None) => {
                return Err(invalid("server.tls.key_file", "cert_file needs key_file"))
            }
            (_, None, Some(_)) => {
                return Err(invalid("server.tls.cert_file", "key_file needs cert_file"))
            }
            (Some(false), None, None) => {
                return Err(invalid(
                    "server.tls.auto",
                    "auto = false needs cert_file and key_file (or set server.plain_http = true)",
                ))
            }
            (_, None, None) => {
                let names = t.names.unwrap_or_else(|| crate::tls::default_names(listen));
                if names.is_empty() {
                    return Err(invalid("server.tls.names", "give at least one name"));
                }
                for n in &names {
                    if n.parse::<std::net::IpAddr>().is_err()
                        && !(n.len() <= 253
                            && n.bytes().all(|b| {
                                b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'*'
                            }))
                    {
                        return Err(invalid(
                            "server.tls.names",
                            format!("{n:?} is neither a DNS name nor an IP address"),
                        ));
                    }
                }
                TlsMode::Auto { names }
            }
        }
    };
    Ok(TlsConfig {
        mode,
        client_ca: t.client_ca_file.map(|p| resolve(base, &p)),
        client_auth_required,
        reload_interval,
    })
}

impl FileConfig {
    pub fn validate(self, base: Option<&Path>) -> Result<Config, ConfigError> {
        let mut warnings = Vec::new();
        let listen = self
            .server
            .listen
            .as_deref()
            .unwrap_or("127.0.0.1:5000")
            .parse::<SocketAddr>()
            .map_err(|e| invalid("server.listen", format!("{e} (expected host:port)")))?;
        let tls = validate_tls(
            self.server.plain_http,
            self.server.tls,
            listen,
            base,
            &mut warnings,
        )?;
        let cache_dir = self
            .cache
            .dir
            .map(|d| resolve(base, &d))
            .unwrap_or_else(default_cache_dir);
        let tag_ttl = parse_duration(
            "cache.tag_ttl",
            self.cache.tag_ttl.as_deref().unwrap_or("5m"),
        )?;

        if self.upstream.is_empty() {
            return Err(invalid("upstream", "at least one [[upstream]] is required"));
        }
        let mut names = HashSet::new();
        let mut aliases = HashSet::new();
        let mut prefixes = HashSet::new();
        let mut upstreams = Vec::new();
        for (i, u) in self.upstream.into_iter().enumerate() {
            let key = |f: &str| format!("upstream[{i}].{f}");
            if u.name.is_empty()
                || !u
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(invalid(key("name"), "use letters, digits, '-' and '_'"));
            }
            if !names.insert(u.name.clone()) {
                return Err(invalid(
                    key("name"),
                    format!("duplicate upstream {:?}", u.name),
                ));
            }
            let url = reqwest::Url::parse(&u.url)
                .map_err(|e| invalid(key("url"), format!("{e}: {:?}", u.url)))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(invalid(
                    key("url"),
                    "must be an http:// or https:// URL with a host",
                ));
            }
            if url.path() != "/" || url.query().is_some() {
                return Err(invalid(
                    key("url"),
                    "give only scheme, host and port (wharf adds /v2/)",
                ));
            }
            let mut al = Vec::new();
            for a in &u.aliases {
                let a = a.to_ascii_lowercase();
                if !aliases.insert(a.clone()) {
                    return Err(invalid(
                        key("aliases"),
                        format!("{a:?} is already an alias of another upstream"),
                    ));
                }
                al.push(a);
            }
            if let Some(p) = &u.prefix {
                if p.contains('/') || p.parse::<crate::registry::RepoName>().is_err() {
                    return Err(invalid(
                        key("prefix"),
                        "must be one lowercase name component",
                    ));
                }
                if !prefixes.insert(p.clone()) {
                    return Err(invalid(key("prefix"), format!("duplicate prefix {p:?}")));
                }
            }
            let library_prefix = u.library_prefix.unwrap_or_else(|| {
                al.iter().any(|a| a == "docker.io")
                    || url.host_str() == Some("registry-1.docker.io")
            });
            let ca_pem = match &u.ca_file {
                None => None,
                Some(p) => {
                    let p = resolve(base, p);
                    let pem = std::fs::read(&p)
                        .map_err(|e| invalid(key("ca_file"), format!("{}: {e}", p.display())))?;
                    reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                        invalid(
                            key("ca_file"),
                            format!("{}: not a PEM certificate: {e}", p.display()),
                        )
                    })?;
                    Some(pem)
                }
            };
            let connect_timeout = parse_duration(
                &key("connect_timeout"),
                u.connect_timeout.as_deref().unwrap_or("10s"),
            )?;
            let credentials = match u.credentials {
                None => None,
                Some(c) => {
                    let sources = [
                        c.password_file.is_some(),
                        c.password_env.is_some(),
                        c.password.is_some(),
                    ]
                    .iter()
                    .filter(|x| **x)
                    .count();
                    if sources != 1 {
                        return Err(invalid(
                            key("credentials"),
                            "give exactly one of password_file, password_env, password",
                        ));
                    }
                    let password = if let Some(f) = c.password_file {
                        read_secret_file(&key("credentials.password_file"), &resolve(base, &f))?
                    } else if let Some(var) = c.password_env {
                        Secret(std::env::var(&var).map_err(|_| {
                            invalid(
                                key("credentials.password_env"),
                                format!("environment variable {var} is not set"),
                            )
                        })?)
                    } else {
                        warnings.push(format!(
                            "{}: inline password in the config file; prefer password_file or password_env",
                            key("credentials.password")
                        ));
                        Secret(c.password.unwrap_or_default())
                    };
                    Some(Credentials {
                        username: c.username,
                        password,
                    })
                }
            };
            upstreams.push(UpstreamConfig {
                name: u.name,
                url,
                aliases: al,
                prefix: u.prefix,
                default: u.default,
                library_prefix,
                ca_pem,
                connect_timeout,
                credentials,
            });
        }
        if upstreams.iter().filter(|u| u.default).count() > 1 {
            return Err(invalid(
                "upstream.default",
                "at most one upstream may be the default",
            ));
        }
        Ok(Config {
            listen,
            tls,
            cache_dir,
            tag_ttl,
            upstreams,
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::load(None).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(c.upstreams.len(), 1);
        let u = &c.upstreams[0];
        assert!(u.default && u.library_prefix);
        assert!(u.aliases.contains(&"docker.io".to_string()));
        assert_eq!(c.tag_ttl, Duration::from_secs(300));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml("[cache]\nttl = \"5m\"\n", None).unwrap_err();
        assert!(e.to_string().contains("ttl"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let base = "[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n";
        let cases = [
            ("[server]\nlisten = \"nope\"\n".to_string() + base, "server.listen"),
            ("[cache]\ntag_ttl = \"5 parsecs\"\n".to_string() + base, "cache.tag_ttl"),
            ("[[upstream]]\nname = \"a\"\nurl = \"ftp://x\"\n".into(), "upstream[0].url"),
            (base.to_string() + "prefix = \"a/b\"\n", "upstream[0].prefix"),
            (base.to_string() + base, "upstream[1].name"),
            ("".into(), "upstream"),
            (
                base.to_string() + "[upstream.credentials]\nusername = \"u\"\n",
                "upstream[0].credentials",
            ),
            (
                base.to_string() + "[upstream.credentials]\nusername = \"u\"\npassword_env = \"WHARF_TEST_UNSET_VAR\"\n",
                "upstream[0].credentials.password_env",
            ),
        ];
        for (text, key) in cases {
            let e = Config::from_toml(&text, None).unwrap_err().to_string();
            assert!(e.starts_with(key), "{key}: {e}");
        }
    }

    #[test]
    fn secret_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret-value\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = format!(
            "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n[upstream.credentials]\nusername = \"u\"\npassword_file = {:?}\n",
            f
        );
        let e = Config::from_toml(&text, None).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && !e.contains("s3cret"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Config::from_toml(&text, None).unwrap();
        let cred = c.upstreams[0].credentials.as_ref().unwrap();
        assert_eq!(cred.password.expose(), "s3cret-value");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn tls_modes() {
        let up = "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n";
        let c = Config::from_toml(up, None).unwrap();
        assert!(
            matches!(c.tls.mode, TlsMode::Auto { ref names } if names.contains(&"localhost".to_string())),
            "TLS by default"
        );
        let c = Config::from_toml(&format!("[server]\nplain_http = true\n{up}"), None).unwrap();
        assert_eq!(c.tls.mode, TlsMode::Plain);
        assert!(c.warnings.is_empty(), "loopback plain HTTP is fine");
        let c = Config::from_toml(
            &format!("[server]\nlisten = \"0.0.0.0:5000\"\nplain_http = true\n{up}"),
            None,
        )
        .unwrap();
        assert_eq!(c.warnings.len(), 1, "plain HTTP off loopback warns");
        let c = Config::from_toml(
            &format!("[server.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nclient_ca_file = \"ca.pem\"\nclient_auth = \"optional\"\n{up}"),
            Some(Path::new("/etc/wharf")),
        )
        .unwrap();
        assert_eq!(
            c.tls.mode,
            TlsMode::Files {
                cert: "/etc/wharf/c.pem".into(),
                key: "/etc/wharf/k.pem".into()
            }
        );
        assert!(!c.tls.client_auth_required);
        for (text, key) in [
            (
                "[server]\nplain_http = true\n[server.tls]\nauto = true\n",
                "server.plain_http",
            ),
            ("[server.tls]\ncert_file = \"c\"\n", "server.tls.key_file"),
            (
                "[server.tls]\nauto = true\ncert_file = \"c\"\nkey_file = \"k\"\n",
                "server.tls.auto",
            ),
            ("[server.tls]\nauto = false\n", "server.tls.auto"),
            ("[server.tls]\nnames = [\"a b\"]\n", "server.tls.names"),
            (
                "[server.tls]\nclient_auth = \"maybe\"\n",
                "server.tls.client_auth",
            ),
            (
                "[server.tls]\nclient_auth = \"optional\"\n",
                "server.tls.client_auth",
            ),
        ] {
            let e = Config::from_toml(&format!("{text}{up}"), None)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(key), "{key}: {e}");
        }
    }

    #[test]
    fn inline_password_warns() {
        let text = "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n[upstream.credentials]\nusername = \"u\"\npassword = \"p\"\n";
        let c = Config::from_toml(text, None).unwrap();
        assert_eq!(c.warnings.len(), 1);
    }
}
