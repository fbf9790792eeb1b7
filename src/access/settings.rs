//! What the configuration says about access (built by `crate::config`,
//! read here): the mirror-wide settings and each upstream's rules.

use std::path::PathBuf;

use super::CertIdentity;

/// The mirror-wide access settings.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    pub htpasswd_file: Option<PathBuf>,
    pub tokens_file: Option<PathBuf>,
    pub client_certificates: bool,
    /// Which part of a verified client certificate is the user name.
    pub client_certificate_user: CertIdentity,
    pub allow_networks: Vec<ipnet::IpNet>,
    pub deny_networks: Vec<ipnet::IpNet>,
    /// Password checks: budgets and failure throttling.
    pub logins: super::LoginLimits,
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
