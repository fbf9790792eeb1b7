//! OCI error codes and the JSON error body every failed request gets.
//!
//! Spec: OCI distribution-spec `spec.md#error-codes`; `UNAVAILABLE` and `UNKNOWN`
//! are distribution's own codes for server-side failures, which clients print as-is.

use http::StatusCode;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OciCode {
    BlobUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    RangeInvalid,
    Unavailable,
    Unknown,
}

impl OciCode {
    pub fn as_str(self) -> &'static str {
        match self {
            OciCode::BlobUnknown => "BLOB_UNKNOWN",
            OciCode::DigestInvalid => "DIGEST_INVALID",
            OciCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            OciCode::ManifestInvalid => "MANIFEST_INVALID",
            OciCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            OciCode::NameInvalid => "NAME_INVALID",
            OciCode::NameUnknown => "NAME_UNKNOWN",
            OciCode::SizeInvalid => "SIZE_INVALID",
            OciCode::Unauthorized => "UNAUTHORIZED",
            OciCode::Denied => "DENIED",
            OciCode::Unsupported => "UNSUPPORTED",
            OciCode::TooManyRequests => "TOOMANYREQUESTS",
            OciCode::RangeInvalid => "RANGE_INVALID",
            OciCode::Unavailable => "UNAVAILABLE",
            OciCode::Unknown => "UNKNOWN",
        }
    }

    /// The status the spec (or distribution, for codes the spec leaves open) pairs
    /// with each code.
    pub fn status(self) -> StatusCode {
        match self {
            OciCode::BlobUnknown
            | OciCode::ManifestUnknown
            | OciCode::NameUnknown
            | OciCode::ManifestBlobUnknown => StatusCode::NOT_FOUND,
            OciCode::DigestInvalid
            | OciCode::ManifestInvalid
            | OciCode::NameInvalid
            | OciCode::SizeInvalid => StatusCode::BAD_REQUEST,
            OciCode::Unauthorized => StatusCode::UNAUTHORIZED,
            OciCode::Denied => StatusCode::FORBIDDEN,
            OciCode::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            OciCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            OciCode::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            OciCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            OciCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

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

/// Everything an error response carries, decided in one place (the error
/// classification) so nothing adds headers beside it: the status, the OCI
/// code and message of the JSON body, `Retry-After`, and whether the client
/// is challenged (`WWW-Authenticate: Basic realm="wharf"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorResponse {
    pub status: StatusCode,
    pub code: OciCode,
    pub message: String,
    pub blame: Blame,
    /// Seconds, for `Retry-After` (429, and 503 where a retry is known to help).
    pub retry_after: Option<u64>,
    /// Send a Basic challenge: what skopeo, podman, containerd and dockerd
    /// answer with their configured credentials.
    pub challenge: bool,
}

impl ErrorResponse {
    /// `code` with the status the spec pairs with it.
    pub fn new(code: OciCode, message: impl Into<String>, blame: Blame) -> ErrorResponse {
        ErrorResponse::with_status(code.status(), code, message, blame)
    }

    pub fn with_status(
        status: StatusCode,
        code: OciCode,
        message: impl Into<String>,
        blame: Blame,
    ) -> ErrorResponse {
        ErrorResponse {
            status,
            code,
            message: message.into(),
            blame,
            retry_after: None,
            challenge: status == StatusCode::UNAUTHORIZED,
        }
    }

    pub fn retry_after(mut self, secs: u64) -> ErrorResponse {
        self.retry_after = Some(secs);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        error_json(self.code, &self.message)
    }
}

#[derive(Serialize)]
struct Body<'a> {
    errors: [Item<'a>; 1],
}

#[derive(Serialize)]
struct Item<'a> {
    code: &'static str,
    message: &'a str,
}

/// `{"errors":[{"code":"…","message":"…"}]}`
pub fn error_json(code: OciCode, message: &str) -> Vec<u8> {
    serde_json::to_vec(&Body {
        errors: [Item {
            code: code.as_str(),
            message,
        }],
    })
    .expect("serializing a static shape cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let body = error_json(OciCode::NameInvalid, "bad \"name\"");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["errors"][0]["code"], "NAME_INVALID");
        assert_eq!(v["errors"][0]["message"], "bad \"name\"");
        assert_eq!(OciCode::Unsupported.status(), 405);
    }
}
