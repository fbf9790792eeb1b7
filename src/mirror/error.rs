//! The mirror's errors and the one classification that turns any of them —
//! routing, cache, fill or upstream — into the [`ErrorResponse`] a client
//! gets: status, OCI code, message, `Retry-After`, challenge, and who is to
//! blame (the client, the upstream, or wharf, whose details stay in its log).
//! Nothing adds headers beside it; the server writes what this says.

use std::sync::Arc;

use http::StatusCode;

use crate::cache::{CacheError, FillError, Panicked};
use crate::registry::{Blame, ErrorResponse, OciCode, ParseError, RouteKind};
use crate::upstream::UpstreamError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum MirrorError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("no upstream is configured for ns={0}")]
    UnknownNamespace(String),
    #[error("no upstream is configured for path prefix {0:?}")]
    UnknownPrefix(String),
    #[error("no default upstream is configured; use ?ns= or a path prefix")]
    NoDefaultUpstream,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Cache(Arc<CacheError>),
    #[error(transparent)]
    Fill(#[from] FillError),
    /// A blob download fell below `cache.fill_min_rate` over a whole window.
    #[error("upstream {upstream} sent {bytes} bytes of the blob in {window_s} s, below the minimum of {min_rate} bytes/s (cache.fill_min_rate); the download was abandoned, retry")]
    FillTooSlow {
        upstream: String,
        bytes: u64,
        window_s: u64,
        min_rate: u64,
    },
    /// Every slot for blob downloads (`cache.max_fills`) stayed taken for a
    /// whole `cache.fill_rate_window`.
    #[error("{max} blob downloads are already running (cache.max_fills); retry")]
    FillsBusy { max: usize, retry_after: u64 },
    /// The shared tier could not be set up, or a read from it broke off.
    #[error("shared tier: {0}")]
    Shared(String),
    /// A shared fetch's work panicked (a bug); logged where it happened.
    #[error(transparent)]
    Panicked(#[from] Panicked),
    #[error("manifest is {media_type}, which the client's Accept header does not list")]
    NotAcceptable { media_type: String },
    #[error("upstream {upstream} is offline and this cache holds no tags of {repo}")]
    OfflineUnknownRepo { upstream: String, repo: String },
    #[error("manifest {digest} ({platform}) is not on this offline site: {by} left that platform out{}", if kept.is_empty() { String::new() } else { format!(" (platforms = {})", kept.join(", ")) })]
    PlatformFiltered {
        digest: String,
        platform: String,
        /// "sync rule 'base'", "the bundle's platform filter".
        by: String,
        kept: Vec<String>,
    },
}

impl From<CacheError> for MirrorError {
    fn from(e: CacheError) -> Self {
        MirrorError::Cache(Arc::new(e))
    }
}

impl MirrorError {
    /// The response for a request of `kind` that failed with this error: a
    /// missing object is `MANIFEST_UNKNOWN` or `BLOB_UNKNOWN` depending on
    /// what was asked for.
    pub fn response(&self, kind: RouteKind) -> ErrorResponse {
        match self {
            MirrorError::Parse(p) => p.response(),
            MirrorError::UnknownNamespace(_)
            | MirrorError::UnknownPrefix(_)
            | MirrorError::NoDefaultUpstream => {
                ErrorResponse::new(OciCode::NameUnknown, self.to_string(), Blame::Client)
            }
            MirrorError::NotAcceptable { .. } | MirrorError::PlatformFiltered { .. } => {
                ErrorResponse::new(OciCode::ManifestUnknown, self.to_string(), Blame::Client)
            }
            MirrorError::OfflineUnknownRepo { .. } => {
                ErrorResponse::new(OciCode::NameUnknown, self.to_string(), Blame::Client)
            }
            MirrorError::FillTooSlow { .. } => ErrorResponse::with_status(
                StatusCode::GATEWAY_TIMEOUT,
                OciCode::Unavailable,
                self.to_string(),
                Blame::Upstream,
            ),
            MirrorError::FillsBusy { retry_after, .. } => ErrorResponse::with_status(
                StatusCode::SERVICE_UNAVAILABLE,
                OciCode::Unavailable,
                self.to_string(),
                Blame::Wharf,
            )
            .retry_after(*retry_after),
            MirrorError::Shared(_) => ErrorResponse::with_status(
                StatusCode::BAD_GATEWAY,
                OciCode::Unavailable,
                self.to_string(),
                Blame::Wharf,
            ),
            MirrorError::Upstream(u) => upstream(u, kind),
            MirrorError::Fill(f) => fill(f),
            MirrorError::Cache(c) => cache(c),
            MirrorError::Panicked(p) => {
                ErrorResponse::new(OciCode::Unknown, p.to_string(), Blame::Wharf)
            }
        }
    }
}

fn fill(f: &FillError) -> ErrorResponse {
    match f {
        // Classified by whoever fed the fill, when it failed.
        FillError::Source(r) => (**r).clone(),
        FillError::SizeMismatch { .. } => ErrorResponse::with_status(
            StatusCode::BAD_GATEWAY,
            OciCode::SizeInvalid,
            f.to_string(),
            Blame::Upstream,
        ),
        FillError::Cache(c) => cache(c),
        FillError::Aborted => ErrorResponse::new(
            OciCode::Unavailable,
            "the blob download was abandoned; retry",
            Blame::Wharf,
        ),
    }
}

fn cache(c: &CacheError) -> ErrorResponse {
    match c {
        // Only content from an upstream is ever checked against a digest.
        CacheError::DigestMismatch { .. } => ErrorResponse::with_status(
            StatusCode::BAD_GATEWAY,
            OciCode::DigestInvalid,
            format!("upstream sent bad content: {c}; nothing was cached"),
            Blame::Upstream,
        ),
        // The disk cannot take the blob even after eviction: say so (sizes
        // only, no paths), so the operator knows what to grow.
        CacheError::NoRoom(_) => ErrorResponse::new(
            OciCode::Unavailable,
            format!("{c}; nothing was cached"),
            Blame::Wharf,
        ),
        CacheError::Io(_) if c.is_disk_full() => ErrorResponse::new(
            OciCode::Unavailable,
            "the cache disk is full; eviction is making room, retry",
            Blame::Wharf,
        ),
        _ => ErrorResponse::new(
            OciCode::Unknown,
            "wharf's cache failed; see wharf's log",
            Blame::Wharf,
        ),
    }
}

fn upstream(u: &UpstreamError, kind: RouteKind) -> ErrorResponse {
    let msg = u.to_string();
    let gateway =
        |code, msg| ErrorResponse::with_status(StatusCode::BAD_GATEWAY, code, msg, Blame::Upstream);
    match u {
        UpstreamError::NotFound { code, .. } => {
            let code = match code.as_deref() {
                Some("MANIFEST_UNKNOWN") => OciCode::ManifestUnknown,
                Some("BLOB_UNKNOWN") => OciCode::BlobUnknown,
                Some("NAME_UNKNOWN") => OciCode::NameUnknown,
                _ => match kind {
                    RouteKind::Manifest => OciCode::ManifestUnknown,
                    RouteKind::Blob => OciCode::BlobUnknown,
                    _ => OciCode::NameUnknown,
                },
            };
            ErrorResponse::with_status(StatusCode::NOT_FOUND, code, msg, Blame::Upstream)
        }
        // wharf's credentials were refused: the client cannot fix that by
        // authenticating, so no challenge.
        UpstreamError::Unauthorized { .. } => {
            ErrorResponse::new(OciCode::Denied, msg, Blame::Upstream)
        }
        UpstreamError::TooManyRequests { retry_after, .. } => {
            ErrorResponse::new(OciCode::TooManyRequests, msg, Blame::Upstream)
                .retry_after(*retry_after)
        }
        UpstreamError::DigestMismatch { .. } => {
            gateway(OciCode::DigestInvalid, format!("{msg}; nothing was cached"))
        }
        UpstreamError::Offline { .. } => ErrorResponse::new(
            OciCode::Unavailable,
            format!("{msg}; this {} is not in the cache", kind.object()),
            Blame::Upstream,
        ),
        // The reason names addresses and URLs (reqwest's errors do): it
        // stays in wharf's log (the upstream client logs it); anonymous
        // clients get the upstream's configured name.
        UpstreamError::Unreachable { upstream, .. } => gateway(
            OciCode::Unavailable,
            format!(
                "upstream {upstream} is unreachable (details in wharf's log); this {} is not in the cache",
                kind.object()
            ),
        ),
        UpstreamError::Status { .. }
        | UpstreamError::Protocol { .. }
        | UpstreamError::RealmRefused { .. }
        | UpstreamError::CredentialsUnavailable { .. } => gateway(OciCode::Unavailable, msg),
        // Names files, helpers and keys: for wharf's log, not for clients.
        UpstreamError::Config(_) => ErrorResponse::new(
            OciCode::Unknown,
            "wharf cannot present its credentials to this upstream (a configuration problem); see wharf's log",
            Blame::Wharf,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limited_blob_fill_carries_retry_after_to_its_readers() {
        let e = UpstreamError::TooManyRequests {
            upstream: "hub".into(),
            retry_after: 42,
        };
        let fill = FillError::Source(Arc::new(MirrorError::Upstream(e).response(RouteKind::Blob)));
        let r = MirrorError::Fill(fill).response(RouteKind::Blob);
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.code, OciCode::TooManyRequests);
        assert_eq!(r.retry_after, Some(42));
        assert!(!r.challenge);
    }

    /// Regression: a 502 carried reqwest's error, with the upstream's URL
    /// and the address it could not reach, to anonymous clients.
    #[test]
    fn unreachable_upstreams_are_named_not_addressed() {
        let e = MirrorError::Upstream(UpstreamError::Unreachable {
            upstream: "hub".into(),
            reason: "error sending request for url (http://10.1.2.3:5000/v2/x/manifests/1): connection refused".into(),
        });
        let r = e.response(RouteKind::Manifest);
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        assert!(
            r.message.contains("upstream hub is unreachable"),
            "{}",
            r.message
        );
        assert!(
            !r.message.contains("10.1.2.3") && !r.message.contains("http"),
            "{}",
            r.message
        );
    }

    #[test]
    fn missing_objects_are_named_by_what_was_asked() {
        let e = MirrorError::Upstream(UpstreamError::NotFound {
            upstream: "hub".into(),
            code: None,
        });
        assert_eq!(
            e.response(RouteKind::Manifest).code,
            OciCode::ManifestUnknown
        );
        assert_eq!(e.response(RouteKind::Blob).code, OciCode::BlobUnknown);
        assert_eq!(e.response(RouteKind::TagsList).code, OciCode::NameUnknown);
    }
}
