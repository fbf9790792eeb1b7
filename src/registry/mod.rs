//! Registry protocol types: validated newtypes, media types, OCI error codes and
//! the request [`Endpoint`]. This module does no I/O; everything above it may
//! assume a `RepoName` or `Digest` is safe to put in a path or URL.

mod digest;
mod endpoint;
mod error;
pub mod manifest;
mod media;
mod name;
mod platform;

pub use digest::{Algorithm, Digest, Hasher};
pub use endpoint::{Endpoint, Route, RouteKind};
pub use error::{error_json, Blame, ErrorResponse, OciCode};
pub use media::{is_manifest_type, Accept, MediaType, MANIFEST_TYPES, MAX_MANIFEST_BYTES};
pub use name::{Reference, RepoName, Tag, MAX_NAME_LEN};
pub use platform::{
    index_children, is_index_type, select_children, Child, Platform, PlatformError, PlatformSpec,
};

/// A client sent something that is not a valid protocol word.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("{0}")]
    Name(String),
    /// A reference that is no tag or digest at all (`..`, a `/`).
    #[error("{0}")]
    Reference(String),
    /// A syntactically invalid tag: such a manifest cannot exist, so it is
    /// not found (404 `MANIFEST_UNKNOWN`, as distribution answers and the
    /// OCI conformance suite expects), still before any I/O.
    #[error("{0}")]
    Tag(String),
    #[error("{0}")]
    Digest(String),
    #[error("{0}")]
    MediaType(String),
    #[error("{0}")]
    Query(String),
}

impl ParseError {
    pub fn code(&self) -> OciCode {
        match self {
            ParseError::Name(_) | ParseError::Query(_) => OciCode::NameInvalid,
            ParseError::Reference(_) | ParseError::MediaType(_) => OciCode::ManifestInvalid,
            ParseError::Digest(_) => OciCode::DigestInvalid,
            ParseError::Tag(_) => OciCode::ManifestUnknown,
        }
    }

    /// The client sent it: its code with the status the spec pairs with it.
    pub fn response(&self) -> ErrorResponse {
        ErrorResponse::new(self.code(), self.to_string(), Blame::Client)
    }
}

/// Shortens client input quoted in error messages, so a 2 KiB name does not come
/// back as a 2 KiB error.
pub(crate) fn truncate(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        s.to_owned()
    } else {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}
