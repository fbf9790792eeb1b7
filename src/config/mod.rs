//! Configuration in two stages: [`FileConfig`] is exactly what the TOML file says
//! (unknown keys are errors, every field documented in `config.toml`), and
//! [`Config`] is the validated, typed result the rest of wharf uses.
//!
//! Each section is turned into its typed form by a constructor of its own, and
//! [`FileConfig::validate`] only composes them (ripgrep's low args → high args):
//!
//! - `file.rs`: the serde `File*` structs, one per TOML section;
//! - `server.rs`: `[server]` listeners and shutdown, `[log]`;
//! - `tls.rs`: `plain_http` and `[server.tls]` → [`TlsConfig`];
//! - `cache.rs`: `[cache]` → directory, tag TTL, `crate::cache::CacheSettings`;
//! - `upstream.rs`: `[[upstream]]` → [`UpstreamConfig`] (unique names,
//!   aliases, prefixes);
//! - `credentials.rs`: `[upstream.credentials]` → [`CredentialSpec`];
//! - `access.rs`: `[access]`, `[upstream.access]` → [`AccessConfig`],
//!   [`UpstreamAccess`];
//! - `sync.rs`: `[[sync]]`, `[[sync.repo]]` → [`SyncRule`] (rule names,
//!   the upstream, schedule, platforms, tag filters);
//! - `bundle.rs`: `[bundle]` → [`BundleSettings`];
//! - `shared.rs`: `[shared]` → `crate::shared::SharedSettings` (the store,
//!   its credentials, leases, upload memory);
//! - `values.rs`: durations, sizes, relative paths, private secret files.
//!
//! Errors name the key (`upstream[0].credentials.password_file: ...`) and never
//! a secret: TOML syntax errors give line, column and key but no excerpt, and
//! URLs with a user or password in them are refused without being repeated. Types that a part of wharf consumes are defined beside it
//! ([`TlsConfig`] in `tls`, [`CredentialSpec`] in `upstream::credentials`,
//! `CacheSettings` in `cache`, [`SyncRule`] in `sync`) and re-exported here.

mod access;
mod bundle;
mod cache;
mod credentials;
mod file;
mod server;
mod shared;
mod sync;
mod tls;
mod upstream;
mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::tls::{TlsConfig, TlsMode};
pub use crate::upstream::credentials::{CredentialSpec, SecretSpec};
pub use access::{AccessConfig, UpstreamAccess};
pub use bundle::BundleSettings;
pub use file::{
    FileAccess, FileBundle, FileCache, FileConfig, FileCredentials, FileLog, FileServer,
    FileShared, FileSync, FileSyncRepo, FileTls, FileUpstream, FileUpstreamAccess,
};
pub use sync::{RepoRule, SyncRule};
pub use upstream::UpstreamConfig;
pub use values::{parse_size, read_secret_file};

use access::AccessContext;
use cache::CacheSection;
use server::ServerSection;
use upstream::UpstreamContext;

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

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    /// Who may open the status page on the admin listener besides 127.0.0.1
    /// and ::1 (`server.status_networks`).
    pub status_networks: Vec<ipnet::IpNet>,
    pub shutdown_grace: Duration,
    /// `[server]`'s connection cap, deadlines and HTTP/2 limits.
    pub server: crate::server::Limits,
    pub log_json: bool,
    pub tls: TlsConfig,
    pub cache_dir: PathBuf,
    pub tag_ttl: Duration,
    pub cache: crate::cache::CacheSettings,
    pub upstreams: Vec<UpstreamConfig>,
    pub access: AccessConfig,
    /// `[[sync]]` rules, in the file's order.
    pub sync: Vec<SyncRule>,
    /// `[bundle]`.
    pub bundle: BundleSettings,
    /// `[shared]`: the tier the nodes share, if any.
    pub shared: Option<crate::shared::SharedSettings>,
    /// Things worth telling the operator at start-up (inline passwords, ...).
    pub warnings: Vec<String>,
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

    /// As [`Config::load`], with every `[upstream.credentials]` left out
    /// before validation, so no secret is looked up: for `wharf node-config`,
    /// which needs names, URLs and aliases only and runs where the secrets
    /// are not (the DaemonSet's hosts-dir init container has no
    /// `password_env` variable; an operator's workstation printing the GKE
    /// file has no token).
    pub fn load_without_credentials(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (text, base) = match path {
            None => (EMBEDDED_DEFAULT.to_owned(), None),
            Some(p) => (
                std::fs::read_to_string(p).map_err(|e| ConfigError::Read {
                    path: p.to_owned(),
                    source: std::sync::Arc::new(e),
                })?,
                p.parent(),
            ),
        };
        let mut file = parse(&text)?;
        for u in &mut file.upstream {
            u.credentials = None;
        }
        file.validate(base)
    }

    /// Parses and validates. Relative paths in the file are taken relative to
    /// `base` (the config file's directory).
    pub fn from_toml(text: &str, base: Option<&Path>) -> Result<Config, ConfigError> {
        parse(text)?.validate(base)
    }
}

fn parse(text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse(values::toml_error(text, &e)))
}

impl Config {}

impl FileConfig {
    /// Builds each section in turn. The order is the order errors are found
    /// in, so it stays: listener, TLS, cache, the rest of `[server]`, log,
    /// access, upstreams, sync rules, bundles.
    pub fn validate(mut self, base: Option<&Path>) -> Result<Config, ConfigError> {
        let mut warnings = Vec::new();
        let listen = server::listen(&self.server)?;
        let tls = TlsConfig::from_file(
            self.server.plain_http,
            self.server.tls.take(),
            listen,
            base,
            &mut warnings,
        )?;
        let cache = CacheSection::from_file(&self.cache, base)?;
        let server = ServerSection::from_file(&self.server, listen, &mut warnings)?;
        let log_json = server::log_json(&self.log)?;
        if self.upstream.is_empty() {
            return Err(invalid("upstream", "at least one [[upstream]] is required"));
        }
        let file_access = self.access.unwrap_or_default();
        let default_anonymous = file_access.anonymous;
        let access = AccessConfig::from_file(file_access, base)?;
        let cx = UpstreamContext {
            base,
            access: AccessContext {
                default_anonymous,
                global: &access,
            },
            all_offline: self.offline.unwrap_or(false),
        };
        let upstreams = UpstreamConfig::all_from_file(self.upstream, &cx, &mut warnings)?;
        let sync = SyncRule::all_from_file(self.sync, &upstreams, &mut warnings)?;
        let bundle = BundleSettings::from_file(self.bundle, base)?;
        let shared = match self.shared {
            Some(s) => Some(crate::shared::SharedSettings::from_file(s, base)?),
            None => None,
        };
        Ok(Config {
            listen,
            admin_listen: server.admin_listen,
            status_networks: server.status_networks,
            shutdown_grace: server.shutdown_grace,
            server: server.limits,
            log_json,
            tls,
            cache_dir: cache.dir,
            tag_ttl: cache.tag_ttl,
            cache: cache.settings,
            upstreams,
            access,
            sync,
            bundle,
            shared,
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
}
