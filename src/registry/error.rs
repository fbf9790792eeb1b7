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
