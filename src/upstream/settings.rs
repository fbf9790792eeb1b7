//! What the configuration says about one upstream (built and validated by
//! `crate::config`, read here and by the mirror's routing).

use std::time::Duration;

use crate::access::UpstreamAccess;

use super::credentials::CredentialSpec;
use super::policy::HostSpec;

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
    /// The most one answer may take: a manifest, tag list page or token
    /// answer whole, a blob answer's headers.
    pub answer_timeout: Duration,
    pub credentials: Option<CredentialSpec>,
    pub access: UpstreamAccess,
    /// Never contact this upstream: serve from cache only.
    pub offline: bool,
    /// Whether this upstream's content may go to the shared tier (and be
    /// read from it): false for registries whose layers must not leave the
    /// node.
    pub shared: bool,
    /// Hosts (`host` or `host:port`) besides the upstream's own site that
    /// may receive its credentials as a token realm, and that may be a
    /// loopback or private realm.
    pub token_realms: Vec<HostSpec>,
    /// Loopback or private hosts a blob download may be redirected to when
    /// the upstream itself is not on such an address.
    pub redirect_hosts: Vec<HostSpec>,
    pub limits: BodyLimits,
}

/// The most wharf reads into memory of each kind of upstream answer. Read
/// incrementally (a `Content-Length` is not trusted); past a limit the
/// answer is refused (an error body is cut instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    pub manifest: usize,
    pub tag_list_page: usize,
    pub token: usize,
    pub error_body: usize,
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits {
            manifest: crate::registry::MAX_MANIFEST_BYTES,
            tag_list_page: 4 << 20,
            token: 1 << 20,
            error_body: 64 << 10,
        }
    }
}
