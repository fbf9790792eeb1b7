//! What TLS termination is asked to do: the typed result of `[server]
//! plain_http` and `[server.tls]`. Defined here, beside its one consumer, and
//! built by `config` (as `cache::CacheSettings` is), so `tls` needs nothing
//! from `config`.

use std::path::PathBuf;
use std::time::Duration;

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
