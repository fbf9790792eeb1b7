//! Configuration in two stages: [`FileConfig`] is exactly what the TOML file says
//! (unknown keys are errors, every field documented in `config.toml`), and
//! [`Config`] is the validated, typed result the rest of wharf uses.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::secret::Secret;
pub use crate::tls::{TlsConfig, TlsMode};

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
    /// Serve only what is cached; never contact an upstream.
    pub offline: Option<bool>,
    #[serde(default)]
    pub server: FileServer,
    #[serde(default)]
    pub log: FileLog,
    #[serde(default)]
    pub cache: FileCache,
    #[serde(default)]
    pub upstream: Vec<FileUpstream>,
    pub access: Option<FileAccess>,
}

/// `[access]`: who may use the mirror.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileAccess {
    /// Default for upstreams without their own `anonymous`.
    pub anonymous: Option<bool>,
    /// bcrypt users (`htpasswd -B`), for Basic auth.
    pub htpasswd_file: Option<PathBuf>,
    /// `name:token` lines, for `Authorization: Bearer <token>`.
    pub tokens_file: Option<PathBuf>,
    /// A client certificate verified by `[server.tls] client_ca_file`
    /// authenticates its client (as user `tls-client`).
    pub client_certificates: Option<bool>,
    /// Client networks (CIDR). Deny wins; a non-empty allow list admits only
    /// its networks.
    pub allow_networks: Option<Vec<String>>,
    pub deny_networks: Option<Vec<String>>,
}

/// `[upstream.access]`: per-upstream rules.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileUpstreamAccess {
    pub anonymous: Option<bool>,
    /// Authenticated users allowed here (default: all of them).
    pub users: Option<Vec<String>>,
    /// Repository globs (upstream-side names) that may be pulled; default all.
    pub repositories: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    /// Address to listen on, `host:port`.
    pub listen: Option<String>,
    /// Serve plain HTTP instead of TLS. Must be said explicitly.
    pub plain_http: Option<bool>,
    pub tls: Option<FileTls>,
    /// Plain-HTTP listener for /metrics, /healthz and /readyz.
    pub admin_listen: Option<String>,
    /// How long in-flight transfers may take to finish after SIGTERM.
    pub shutdown_grace: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileLog {
    /// "text" (default) or "json".
    pub format: Option<String>,
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
    /// Disk budget, e.g. "20GiB"; default: the filesystem's size.
    pub max_size: Option<String>,
    /// Fractions of max_size: eviction starts past high, stops under low.
    pub high_watermark: Option<f64>,
    pub low_watermark: Option<f64>,
    /// Images never evicted.
    pub pin: Option<Vec<String>>,
    /// Memory for recent manifests, e.g. "16MiB".
    pub memory: Option<String>,
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
    pub access: Option<FileUpstreamAccess>,
    /// Serve only what is cached from this upstream.
    pub offline: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCredentials {
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/<name>`.
    pub password_credential: Option<String>,
    pub password: Option<String>,
    /// A Docker `config.json`, and the `auths` key to use (default: the
    /// upstream's host, or Docker Hub's index URL).
    pub docker_config: Option<PathBuf>,
    pub docker_config_key: Option<String>,
    /// A Google service-account JSON key (user `_json_key`, or
    /// `_json_key_base64` with `json_key_base64 = true`).
    pub json_key_file: Option<PathBuf>,
    pub json_key_base64: Option<bool>,
    /// The GCE/GKE metadata server's token for the node's service account.
    pub gce_metadata: Option<bool>,
    pub metadata_host: Option<String>,
    pub service_account: Option<String>,
}

// ---------------------------------------------------------------- typed config

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub shutdown_grace: Duration,
    pub log_json: bool,
    pub tls: TlsConfig,
    pub cache_dir: PathBuf,
    pub tag_ttl: Duration,
    pub cache: crate::cache::CacheSettings,
    pub upstreams: Vec<UpstreamConfig>,
    pub access: AccessConfig,
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
    pub credentials: Option<CredentialSpec>,
    pub access: UpstreamAccess,
    /// Never contact this upstream: serve from cache only.
    pub offline: bool,
}

/// The mirror-wide access settings.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    pub htpasswd_file: Option<PathBuf>,
    pub tokens_file: Option<PathBuf>,
    pub client_certificates: bool,
    pub allow_networks: Vec<ipnet::IpNet>,
    pub deny_networks: Vec<ipnet::IpNet>,
}

impl AccessConfig {
    /// Whether any way for clients to authenticate is configured.
    pub fn has_authentication(&self) -> bool {
        self.htpasswd_file.is_some() || self.tokens_file.is_some() || self.client_certificates
    }
}

/// Who may pull through one upstream.
#[derive(Debug, Clone)]
pub struct UpstreamAccess {
    pub anonymous: bool,
    pub users: Option<Vec<String>>,
    /// Validated glob patterns; empty means every repository.
    pub repositories: Vec<String>,
}

/// Where an upstream's credentials come from (built into a
/// `upstream::CredentialSource`). Secrets never print.
#[derive(Clone, Debug)]
pub enum CredentialSpec {
    Password {
        username: String,
        password: SecretSpec,
    },
    DockerConfig {
        path: PathBuf,
        /// `auths` keys to look up, first found wins.
        keys: Vec<String>,
    },
    JsonKey {
        path: PathBuf,
        base64: bool,
    },
    GceMetadata {
        /// host[:port] of the metadata server.
        host: String,
        account: String,
    },
}

#[derive(Clone, Debug)]
pub enum SecretSpec {
    /// Read at start-up (environment, config file).
    Value(Secret),
    /// Re-read when it changes. `check_mode`: refused when group or others can
    /// read it (not for systemd credentials, whose directory is private).
    File { path: PathBuf, check_mode: bool },
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

/// `"20GiB"`, `"500MB"`, `"1.5 TiB"`, `"1048576"`: decimal (kB, MB, GB, TB)
/// and binary (KiB, MiB, GiB, TiB) units, case-insensitive.
pub fn parse_size(key: &str, s: &str) -> Result<u64, ConfigError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        invalid(
            key,
            format!("{s:?} is not a size (examples: \"20GiB\", \"500MB\")"),
        )
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        u => return Err(invalid(key, format!("unknown unit {u:?} in {s:?}"))),
    };
    Ok((n * mult as f64) as u64)
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
    Ok(Secret::new(text.trim_end_matches(['\n', '\r'])))
}

/// The Docker config.json keys under which `docker login` stores an upstream:
/// Docker Hub's index URL, else the registry host[:port], with or without a
/// scheme.
fn docker_config_keys(url: &reqwest::Url, aliases: &[String]) -> Vec<String> {
    let hub =
        aliases.iter().any(|a| a == "docker.io") || url.host_str() == Some("registry-1.docker.io");
    let mut keys = Vec::new();
    if hub {
        keys.extend([
            "https://index.docker.io/v1/".to_owned(),
            "docker.io".into(),
            "index.docker.io".into(),
        ]);
    }
    let host = match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    keys.push(host.clone());
    keys.push(format!("https://{host}"));
    keys.push(format!("http://{host}"));
    keys.extend(aliases.iter().cloned());
    keys
}

fn validate_credentials(
    c: FileCredentials,
    key: &dyn Fn(&str) -> String,
    url: &reqwest::Url,
    aliases: &[String],
    base: Option<&Path>,
    warnings: &mut Vec<String>,
) -> Result<CredentialSpec, ConfigError> {
    use crate::upstream::credentials as cred;
    let password_given = [
        c.password_file.is_some(),
        c.password_env.is_some(),
        c.password_credential.is_some(),
        c.password.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    let kinds = [
        c.username.is_some() || password_given > 0,
        c.docker_config.is_some(),
        c.json_key_file.is_some(),
        c.gce_metadata == Some(true),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    let k = |f: &str| key(&format!("credentials.{f}"));
    if kinds != 1 {
        return Err(invalid(
            key("credentials"),
            "give one kind: username + a password, docker_config, json_key_file, or gce_metadata = true",
        ));
    }
    let only_with = |given: bool, field: &str, with: &str| {
        if given {
            Err(invalid(k(field), format!("only goes with {with}")))
        } else {
            Ok(())
        }
    };
    only_with(
        c.docker_config_key.is_some() && c.docker_config.is_none(),
        "docker_config_key",
        "docker_config",
    )?;
    only_with(
        c.json_key_base64.is_some() && c.json_key_file.is_none(),
        "json_key_base64",
        "json_key_file",
    )?;
    only_with(
        (c.metadata_host.is_some() || c.service_account.is_some()) && c.gce_metadata != Some(true),
        "metadata_host",
        "gce_metadata = true",
    )?;
    if let Some(path) = c.docker_config {
        let path = resolve(base, &path);
        let keys = match c.docker_config_key {
            Some(k) => vec![k],
            None => docker_config_keys(url, aliases),
        };
        let bytes = read_private(&k("docker_config"), &path)?;
        cred::docker_config_entry(&bytes, &keys)
            .map_err(|why| invalid(k("docker_config"), format!("{}: {why}", path.display())))?;
        return Ok(CredentialSpec::DockerConfig { path, keys });
    }
    if let Some(path) = c.json_key_file {
        let path = resolve(base, &path);
        let b64 = c.json_key_base64.unwrap_or(false);
        let bytes = read_private(&k("json_key_file"), &path)?;
        cred::json_key(&bytes, b64)
            .map_err(|why| invalid(k("json_key_file"), format!("{}: {why}", path.display())))?;
        return Ok(CredentialSpec::JsonKey { path, base64: b64 });
    }
    if c.gce_metadata == Some(true) {
        // GCE_METADATA_HOST is what Google's own client libraries honour.
        let host = c
            .metadata_host
            .or_else(|| std::env::var("GCE_METADATA_HOST").ok())
            .unwrap_or_else(|| "169.254.169.254".into());
        if host.is_empty() || host.contains(['/', '?', '#', '@']) {
            return Err(invalid(k("metadata_host"), "give host or host:port"));
        }
        let account = c.service_account.unwrap_or_else(|| "default".into());
        if account.is_empty() || account.contains(['/', '?', '#']) {
            return Err(invalid(
                k("service_account"),
                "give an account e-mail or \"default\"",
            ));
        }
        return Ok(CredentialSpec::GceMetadata { host, account });
    }
    let Some(username) = c.username.filter(|u| !u.is_empty()) else {
        return Err(invalid(k("username"), "a password needs a username"));
    };
    if username.contains(':') {
        return Err(invalid(k("username"), "must not contain ':'"));
    }
    if password_given != 1 {
        return Err(invalid(
            key("credentials"),
            "give exactly one of password_file, password_env, password_credential, password",
        ));
    }
    let password = if let Some(f) = c.password_file {
        let path = resolve(base, &f);
        read_secret_file(&k("password_file"), &path)?;
        SecretSpec::File {
            path,
            check_mode: true,
        }
    } else if let Some(name) = c.password_credential {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
            invalid(
                k("password_credential"),
                "$CREDENTIALS_DIRECTORY is not set (LoadCredential= in the systemd unit sets it)",
            )
        })?;
        if name.is_empty() || name.contains('/') {
            return Err(invalid(k("password_credential"), "give a credential name"));
        }
        let path = PathBuf::from(dir).join(&name);
        std::fs::metadata(&path)
            .map_err(|e| invalid(k("password_credential"), format!("{}: {e}", path.display())))?;
        SecretSpec::File {
            path,
            check_mode: false,
        }
    } else if let Some(var) = c.password_env {
        SecretSpec::Value(Secret::new(std::env::var(&var).map_err(|_| {
            invalid(
                k("password_env"),
                format!("environment variable {var} is not set"),
            )
        })?))
    } else {
        warnings.push(format!(
            "{}: inline password in the config file; prefer password_file, password_credential or password_env",
            k("password")
        ));
        SecretSpec::Value(Secret::new(c.password.unwrap_or_default()))
    };
    Ok(CredentialSpec::Password { username, password })
}

fn parse_networks(key: &str, list: Option<Vec<String>>) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    list.unwrap_or_default()
        .iter()
        .map(|n| {
            n.parse::<ipnet::IpNet>()
                .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| invalid(key, format!("{n:?} is not an address or CIDR network")))
        })
        .collect()
}

fn validate_access(a: FileAccess, base: Option<&Path>) -> Result<AccessConfig, ConfigError> {
    let htpasswd_file = match a.htpasswd_file {
        None => None,
        Some(p) => {
            let p = resolve(base, &p);
            let text = std::fs::read_to_string(&p).map_err(|e| {
                invalid(
                    "access.htpasswd_file",
                    format!("cannot read {}: {e}", p.display()),
                )
            })?;
            crate::access::Htpasswd::parse(&text).map_err(|why| {
                invalid("access.htpasswd_file", format!("{}: {why}", p.display()))
            })?;
            Some(p)
        }
    };
    let tokens_file = match a.tokens_file {
        None => None,
        Some(p) => {
            let p = resolve(base, &p);
            let bytes = read_private("access.tokens_file", &p)?;
            crate::access::TokenList::parse(&bytes)
                .map_err(|why| invalid("access.tokens_file", format!("{}: {why}", p.display())))?;
            Some(p)
        }
    };
    Ok(AccessConfig {
        htpasswd_file,
        tokens_file,
        client_certificates: a.client_certificates.unwrap_or(false),
        allow_networks: parse_networks("access.allow_networks", a.allow_networks)?,
        deny_networks: parse_networks("access.deny_networks", a.deny_networks)?,
    })
}

fn validate_upstream_access(
    a: FileUpstreamAccess,
    key: &dyn Fn(&str) -> String,
    name: &str,
    default_anonymous: Option<bool>,
    global: &AccessConfig,
    has_credentials: bool,
    warnings: &mut Vec<String>,
) -> Result<UpstreamAccess, ConfigError> {
    let auth = global.has_authentication();
    // Without a way to authenticate, a mirror is open (as it was before
    // [access] existed); with one, it is closed unless said otherwise.
    let anonymous = a.anonymous.or(default_anonymous).unwrap_or(!auth);
    if !anonymous && !auth {
        return Err(invalid(
            key("access.anonymous"),
            format!("upstream {name} refuses anonymous clients, but [access] gives clients no way to authenticate (htpasswd_file, tokens_file or client_certificates)"),
        ));
    }
    if let Some(users) = &a.users {
        if !auth {
            return Err(invalid(key("access.users"), "[access] configures no users"));
        }
        if users.iter().any(|u| u.is_empty() || u.contains(':')) {
            return Err(invalid(
                key("access.users"),
                "user names are non-empty and have no ':'",
            ));
        }
    }
    let repositories = a.repositories.unwrap_or_default();
    for r in &repositories {
        crate::access::repo_glob(r)
            .map_err(|why| invalid(key("access.repositories"), format!("{r:?}: {why}")))?;
    }
    if has_credentials && anonymous && repositories.is_empty() {
        warnings.push(format!(
            "upstream {name} pulls with stored credentials and serves anonymous clients every repository: anyone who can reach wharf gets what those credentials protect; set [upstream.access] anonymous = false or repositories"
        ));
    }
    Ok(UpstreamAccess {
        anonymous,
        users: a.users,
        repositories,
    })
}

/// Reads a file holding secrets, refusing one that others can read.
fn read_private(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    read_secret_file(key, path)?;
    std::fs::read(path).map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
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

fn validate_cache(c: &FileCache) -> Result<crate::cache::CacheSettings, ConfigError> {
    let mut settings = crate::cache::CacheSettings::default();
    if let Some(m) = &c.max_size {
        let n = parse_size("cache.max_size", m)?;
        if n < 1 << 20 {
            return Err(invalid("cache.max_size", "at least 1MiB"));
        }
        settings.limits.max_size = Some(n);
    }
    let high = c.high_watermark.unwrap_or(settings.limits.high);
    let low = c.low_watermark.unwrap_or(settings.limits.low);
    if !(0.0 < low && low < high && high <= 1.0) {
        return Err(invalid(
            "cache.low_watermark",
            format!("need 0 < low_watermark ({low}) < high_watermark ({high}) <= 1"),
        ));
    }
    settings.limits.high = high;
    settings.limits.low = low;
    for (i, p) in c.pin.iter().flatten().enumerate() {
        settings
            .pins
            .push(crate::cache::Pin::parse(p).map_err(|e| invalid(format!("cache.pin[{i}]"), e))?);
    }
    if let Some(m) = &c.memory {
        settings.memory = parse_size("cache.memory", m)?;
    }
    Ok(settings)
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
            .as_ref()
            .map(|d| resolve(base, d))
            .unwrap_or_else(default_cache_dir);
        let tag_ttl = parse_duration(
            "cache.tag_ttl",
            self.cache.tag_ttl.as_deref().unwrap_or("5m"),
        )?;
        let cache = validate_cache(&self.cache)?;
        let admin_listen = self
            .server
            .admin_listen
            .as_deref()
            .map(|a| {
                a.parse::<SocketAddr>().map_err(|e| {
                    invalid("server.admin_listen", format!("{e} (expected host:port)"))
                })
            })
            .transpose()?;
        if let Some(a) = admin_listen {
            if a == listen {
                return Err(invalid(
                    "server.admin_listen",
                    "must differ from server.listen",
                ));
            }
            if !a.ip().is_loopback() {
                warnings.push(format!(
                    "server.admin_listen {a} is not loopback: /metrics and /readyz there are served to anyone who can reach it, without authentication"
                ));
            }
        }
        let shutdown_grace = parse_duration(
            "server.shutdown_grace",
            self.server.shutdown_grace.as_deref().unwrap_or("30s"),
        )?;
        let log_json = match self.log.format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(f) => {
                return Err(invalid(
                    "log.format",
                    format!("{f:?}: use \"text\" or \"json\""),
                ))
            }
        };
        let all_offline = self.offline.unwrap_or(false);

        if self.upstream.is_empty() {
            return Err(invalid("upstream", "at least one [[upstream]] is required"));
        }
        let file_access = self.access.unwrap_or_default();
        let default_anonymous = file_access.anonymous;
        let access = validate_access(file_access, base)?;
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
                Some(c) => Some(validate_credentials(
                    c,
                    &key,
                    &url,
                    &al,
                    base,
                    &mut warnings,
                )?),
            };
            let up_access = validate_upstream_access(
                u.access.unwrap_or_default(),
                &key,
                &u.name,
                default_anonymous,
                &access,
                credentials.is_some(),
                &mut warnings,
            )?;
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
                access: up_access,
                offline: all_offline || u.offline.unwrap_or(false),
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
            admin_listen,
            shutdown_grace,
            log_json,
            tls,
            cache_dir,
            tag_ttl,
            cache,
            upstreams,
            access,
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
        let spec = c.upstreams[0].credentials.as_ref().unwrap();
        let src = crate::upstream::credentials::source("a", spec, None);
        let got = futures_util::FutureExt::now_or_never(src.get())
            .unwrap()
            .unwrap();
        assert_eq!(got.password.expose(), "s3cret-value");
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
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("inline password"));
        // Stored credentials on an open mirror are worth a warning too...
        assert!(c.warnings[1].contains("anyone who can reach wharf"));
        // ...which a repository list (or closed access) silences.
        let c = Config::from_toml(
            &format!("{text}[upstream.access]\nrepositories = [\"pub/*\"]\n"),
            None,
        )
        .unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    }

    #[test]
    fn credential_kinds() {
        let base = "[[upstream]]\nname = \"a\"\nurl = \"https://europe-docker.pkg.dev\"\n[upstream.credentials]\n";
        let err = |extra: &str| {
            Config::from_toml(&format!("{base}{extra}"), None)
                .unwrap_err()
                .to_string()
        };
        assert!(err("").contains("give one kind"));
        assert!(err("username = \"u\"\ngce_metadata = true\n").contains("give one kind"));
        assert!(err("username = \"u\"\n").contains("exactly one of password_file"));
        assert!(err("password_env = \"X\"\n").contains("needs a username"));
        assert!(err("gce_metadata = true\nmetadata_host = \"http://x/\"\n").contains("host:port"));
        assert!(err("json_key_base64 = true\ngce_metadata = true\n")
            .contains("only goes with json_key_file"));
        let c = Config::from_toml(
            &format!("{base}gce_metadata = true\nmetadata_host = \"127.0.0.1:1\"\n"),
            None,
        )
        .unwrap();
        assert!(
            matches!(&c.upstreams[0].credentials, Some(CredentialSpec::GceMetadata { host, account }) if host == "127.0.0.1:1" && account == "default")
        );
        // A key file must be private, and be a service-account key.
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("sa.json");
        std::fs::write(
            &key,
            r#"{"type":"service_account","client_email":"x@y","private_key":"k"}"#,
        )
        .unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(err(&format!("json_key_file = {key:?}\n")).contains("chmod 600"));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Config::from_toml(&format!("{base}json_key_file = {key:?}\n"), None).unwrap();
        assert!(matches!(
            &c.upstreams[0].credentials,
            Some(CredentialSpec::JsonKey { base64: false, .. })
        ));
        std::fs::write(&key, r#"{"type":"authorized_user"}"#).unwrap();
        assert!(err(&format!("json_key_file = {key:?}\n")).contains("not a service-account key"));
    }

    #[test]
    fn systemd_credentials_come_from_the_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hub"), "from-systemd\n").unwrap();
        // nextest runs every test in a process of its own.
        std::env::set_var("CREDENTIALS_DIRECTORY", dir.path());
        let text = "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n[upstream.credentials]\nusername = \"u\"\npassword_credential = \"hub\"\n";
        let c = Config::from_toml(text, None).unwrap();
        let src = crate::upstream::credentials::source(
            "a",
            c.upstreams[0].credentials.as_ref().unwrap(),
            None,
        );
        let got = futures_util::FutureExt::now_or_never(src.get())
            .unwrap()
            .unwrap();
        assert_eq!(got.password.expose(), "from-systemd");
        let e = Config::from_toml(&text.replace("\"hub\"", "\"missing\""), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("password_credential"), "{e}");
    }

    #[test]
    fn access_rules() {
        let up = "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n";
        let err = |t: &str| Config::from_toml(t, None).unwrap_err().to_string();
        // Open by default without authentication; closing needs a way in.
        let c = Config::from_toml(up, None).unwrap();
        assert!(c.upstreams[0].access.anonymous);
        assert!(err(&format!("{up}[upstream.access]\nanonymous = false\n"))
            .contains("no way to authenticate"));
        assert!(err(&format!(
            "[access]\nallow_networks = [\"10.0.0.0/33\"]\n{up}"
        ))
        .contains("not an address or CIDR"));
        assert!(err(&format!(
            "{up}[upstream.access]\nrepositories = [\"a/[\"]\n"
        ))
        .contains("repositories"));
        let c = Config::from_toml(&format!("[access]\nclient_certificates = true\nallow_networks = [\"10.1.2.3\", \"::1\"]\n{up}"), None).unwrap();
        assert!(
            !c.upstreams[0].access.anonymous,
            "closed once clients can authenticate"
        );
        assert_eq!(c.access.allow_networks.len(), 2);
    }
}
