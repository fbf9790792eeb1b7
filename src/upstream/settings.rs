//! What the configuration says about one upstream (built and validated by
//! `crate::config`, read here and by the mirror's routing).

use std::time::Duration;

use crate::access::UpstreamAccess;

use super::credentials::CredentialSpec;

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
