//! Talking to upstream registries: one [`UpstreamClient`] per configured upstream,
//! with its own connection pool, credentials and token cache.

mod auth;
mod client;
pub mod credentials;
mod policy;
mod settings;

pub use auth::{parse_challenge, Challenge, Token, TokenCache, TokenResponse};
pub use client::{
    ManifestBody, ManifestHead, RateLimit, UpstreamClient, UpstreamHealth, UpstreamState,
};
pub use credentials::{BasicCredentials, CredentialSource};
pub use policy::{registrable_domain, HostSpec};
pub use settings::{BodyLimits, UpstreamConfig};

/// Something went wrong between wharf and an upstream. Messages name the upstream
/// and never include credentials or tokens.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {upstream} is unreachable: {reason}")]
    Unreachable { upstream: String, reason: String },
    #[error("upstream {upstream} is unreachable: wharf is in offline mode and serves only cached content")]
    Offline { upstream: String },
    #[error("upstream {upstream} has no such object ({})", code.as_deref().unwrap_or("404"))]
    NotFound {
        upstream: String,
        code: Option<String>,
    },
    #[error("upstream {upstream} refused access{}{}", if repo.is_empty() { String::new() } else { format!(" to {repo}") }, if *with_credentials { " with wharf's credentials" } else { " (no credentials configured)" })]
    Unauthorized {
        upstream: String,
        repo: String,
        with_credentials: bool,
    },
    #[error("upstream {upstream} is rate-limiting wharf (429 Too Many Requests); wharf serves only cached content from it for the next {retry_after} s")]
    TooManyRequests { upstream: String, retry_after: u64 },
    #[error("upstream {upstream} answered {status}{}", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Status {
        upstream: String,
        status: u16,
        code: Option<String>,
    },
    #[error("upstream {upstream} sent content that does not match its digest (expected {expected}, got {actual})")]
    DigestMismatch {
        upstream: String,
        expected: String,
        actual: String,
    },
    #[error("upstream {upstream}: {what}")]
    Protocol { upstream: String, what: String },
    /// The token realm the upstream named is not one wharf sends to; the
    /// realm itself is in the log only.
    #[error("upstream {upstream}: its token realm is {reason}; wharf refused it (the realm is named in wharf's log)")]
    RealmRefused {
        upstream: String,
        reason: &'static str,
    },
    /// A credential helper failed or timed out: `reason` is wharf's words
    /// (the helper's name and exit status, never its output), so it may
    /// reach clients, unlike an [`UpstreamError::Unreachable`] reason.
    #[error("upstream {upstream}: wharf's credentials are unavailable: {reason}")]
    CredentialsUnavailable { upstream: String, reason: String },
    #[error("upstream configuration: {0}")]
    Config(String),
}

impl UpstreamError {
    /// A fixed word for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Unreachable { .. } => "unreachable",
            UpstreamError::Offline { .. } => "offline",
            UpstreamError::NotFound { .. } => "not_found",
            UpstreamError::Unauthorized { .. } => "unauthorized",
            UpstreamError::TooManyRequests { .. } => "too_many_requests",
            UpstreamError::Status { .. } => "status",
            UpstreamError::DigestMismatch { .. } => "digest_mismatch",
            UpstreamError::Protocol { .. } => "protocol",
            UpstreamError::RealmRefused { .. } => "realm_refused",
            UpstreamError::CredentialsUnavailable { .. } => "credentials",
            UpstreamError::Config(_) => "config",
        }
    }
}
