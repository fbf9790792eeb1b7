//! The one place where errors become HTTP responses. Each error says who caused
//! it: the client (4xx with the spec's code), the upstream (502/404/403/429 naming
//! the upstream) or wharf itself (500, details only in wharf's log).

use http::StatusCode;

use crate::access::Denied;
use crate::cache::{CacheError, FillError};
use crate::mirror::MirrorError;
use crate::registry::OciCode;
use crate::upstream::UpstreamError;

/// Who a failed request is to blame on; logged with every error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    Client,
    Upstream,
    Wharf,
}

impl Blame {
    pub fn as_str(self) -> &'static str {
        match self {
            Blame::Client => "client",
            Blame::Upstream => "upstream",
            Blame::Wharf => "wharf",
        }
    }
}

pub struct ErrorParts {
    pub status: StatusCode,
    pub code: OciCode,
    pub message: String,
    pub blame: Blame,
}

fn parts(status: StatusCode, code: OciCode, message: String, blame: Blame) -> ErrorParts {
    ErrorParts {
        status,
        code,
        message,
        blame,
    }
}

/// Maps an error for a request to the endpoint labelled `endpoint` (`manifest`,
/// `blob`, ...): a missing object is `MANIFEST_UNKNOWN` or `BLOB_UNKNOWN`
/// depending on what was asked for.
pub fn classify(e: &MirrorError, endpoint: &str) -> ErrorParts {
    match e {
        MirrorError::Parse(p) => {
            let c = p.code();
            parts(c.status(), c, p.to_string(), Blame::Client)
        }
        MirrorError::UnknownNamespace(_)
        | MirrorError::UnknownPrefix(_)
        | MirrorError::NoDefaultUpstream => parts(
            StatusCode::NOT_FOUND,
            OciCode::NameUnknown,
            e.to_string(),
            Blame::Client,
        ),
        MirrorError::NotAcceptable { .. } => parts(
            StatusCode::NOT_FOUND,
            OciCode::ManifestUnknown,
            e.to_string(),
            Blame::Client,
        ),
        MirrorError::Denied(d) => match d {
            Denied::Unauthenticated { .. } => parts(
                StatusCode::UNAUTHORIZED,
                OciCode::Unauthorized,
                d.to_string(),
                Blame::Client,
            ),
            _ => parts(
                StatusCode::FORBIDDEN,
                OciCode::Denied,
                d.to_string(),
                Blame::Client,
            ),
        },
        MirrorError::Upstream(u) => upstream(u, endpoint),
        MirrorError::Fill(f) => fill(f, endpoint),
        MirrorError::Cache(c) => cache(c),
    }
}

fn fill(f: &FillError, endpoint: &str) -> ErrorParts {
    match f {
        FillError::Upstream(src) => match src.downcast_ref::<UpstreamError>() {
            Some(u) => upstream(u, endpoint),
            None => parts(
                StatusCode::BAD_GATEWAY,
                OciCode::Unavailable,
                src.to_string(),
                Blame::Upstream,
            ),
        },
        FillError::SizeMismatch { .. } => parts(
            StatusCode::BAD_GATEWAY,
            OciCode::SizeInvalid,
            f.to_string(),
            Blame::Upstream,
        ),
        FillError::Cache(c) => cache(c),
        FillError::Aborted => parts(
            StatusCode::SERVICE_UNAVAILABLE,
            OciCode::Unavailable,
            "the blob download was abandoned; retry".into(),
            Blame::Wharf,
        ),
    }
}

fn cache(c: &CacheError) -> ErrorParts {
    match c {
        // Only content from an upstream is ever checked against a digest.
        CacheError::DigestMismatch { .. } => parts(
            StatusCode::BAD_GATEWAY,
            OciCode::DigestInvalid,
            format!("upstream sent bad content: {c}; nothing was cached"),
            Blame::Upstream,
        ),
        // The disk cannot take the blob even after eviction: say so (sizes
        // only, no paths), so the operator knows what to grow.
        CacheError::NoRoom(_) => parts(
            StatusCode::SERVICE_UNAVAILABLE,
            OciCode::Unavailable,
            format!("{c}; nothing was cached"),
            Blame::Wharf,
        ),
        CacheError::Io(_) if c.is_disk_full() => parts(
            StatusCode::SERVICE_UNAVAILABLE,
            OciCode::Unavailable,
            "the cache disk is full; eviction is making room, retry".into(),
            Blame::Wharf,
        ),
        _ => parts(
            StatusCode::INTERNAL_SERVER_ERROR,
            OciCode::Unknown,
            "wharf's cache failed; see wharf's log".into(),
            Blame::Wharf,
        ),
    }
}

fn upstream(u: &UpstreamError, endpoint: &str) -> ErrorParts {
    let msg = u.to_string();
    match u {
        UpstreamError::NotFound { code, .. } => {
            let code = match code.as_deref() {
                Some("MANIFEST_UNKNOWN") => OciCode::ManifestUnknown,
                Some("BLOB_UNKNOWN") => OciCode::BlobUnknown,
                Some("NAME_UNKNOWN") => OciCode::NameUnknown,
                _ => match endpoint {
                    "manifest" => OciCode::ManifestUnknown,
                    "blob" => OciCode::BlobUnknown,
                    _ => OciCode::NameUnknown,
                },
            };
            parts(StatusCode::NOT_FOUND, code, msg, Blame::Upstream)
        }
        UpstreamError::Unauthorized { .. } => {
            parts(StatusCode::FORBIDDEN, OciCode::Denied, msg, Blame::Upstream)
        }
        UpstreamError::TooManyRequests { .. } => parts(
            StatusCode::TOO_MANY_REQUESTS,
            OciCode::TooManyRequests,
            msg,
            Blame::Upstream,
        ),
        UpstreamError::DigestMismatch { .. } => parts(
            StatusCode::BAD_GATEWAY,
            OciCode::DigestInvalid,
            format!("{msg}; nothing was cached"),
            Blame::Upstream,
        ),
        UpstreamError::Offline { .. } => parts(
            StatusCode::SERVICE_UNAVAILABLE,
            OciCode::Unavailable,
            format!("{msg}; this {endpoint} is not in the cache"),
            Blame::Upstream,
        ),
        UpstreamError::Unreachable { .. } => parts(
            StatusCode::BAD_GATEWAY,
            OciCode::Unavailable,
            format!("{msg}; this {endpoint} is not in the cache"),
            Blame::Upstream,
        ),
        UpstreamError::Status { .. } | UpstreamError::Protocol { .. } => parts(
            StatusCode::BAD_GATEWAY,
            OciCode::Unavailable,
            msg,
            Blame::Upstream,
        ),
        UpstreamError::Config(_) => parts(
            StatusCode::INTERNAL_SERVER_ERROR,
            OciCode::Unknown,
            msg,
            Blame::Wharf,
        ),
    }
}
