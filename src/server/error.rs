//! The one place a failed request becomes a response: every error a request
//! can meet — invalid input, refused access, or the mirror's (routing,
//! cache, fill, upstream, each classified by [`MirrorError::response`]) —
//! turns into an [`ErrorResponse`], and [`error_response`] writes exactly
//! what it says: status, OCI JSON body, `Retry-After`, challenge. Nothing
//! adds headers beside it.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::access::Denied;
use crate::mirror::MirrorError;
use crate::registry::{Blame, ErrorResponse, OciCode, ParseError, RouteKind};

use super::body::{self, Body};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error(transparent)]
    Mirror(#[from] MirrorError),
}

impl RequestError {
    /// The response for a request of `kind` that failed with this error.
    pub fn response(&self, kind: RouteKind) -> ErrorResponse {
        match self {
            RequestError::Parse(p) => p.response(),
            RequestError::Denied(d) => denied(d),
            RequestError::Mirror(m) => m.response(kind),
        }
    }
}

fn denied(d: &Denied) -> ErrorResponse {
    match d {
        // Challenged: clients answer with their configured credentials.
        Denied::Unauthenticated { .. } => {
            ErrorResponse::new(OciCode::Unauthorized, d.to_string(), Blame::Client)
        }
        // Too many failed logins from this address for this user.
        Denied::Throttled { retry_after } => {
            ErrorResponse::new(OciCode::TooManyRequests, d.to_string(), Blame::Client)
                .retry_after(*retry_after)
        }
        _ => ErrorResponse::new(OciCode::Denied, d.to_string(), Blame::Client),
    }
}

/// Writes an error response: the OCI JSON body and every header the
/// classification asked for.
pub fn error_response(e: &ErrorResponse) -> Response<Body> {
    let mut b = Response::builder()
        .status(e.status)
        .header(header::CONTENT_TYPE, "application/json");
    if e.challenge {
        b = b.header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"wharf\""),
        );
    }
    if let Some(secs) = e.retry_after {
        b = b.header(header::RETRY_AFTER, secs);
    }
    b.body(body::full(e.body()))
        .expect("static headers are valid")
}

/// A response of the server's own (not an error of a layer below).
pub fn oci_error(status: StatusCode, code: OciCode, message: &str) -> Response<Body> {
    error_response(&ErrorResponse::with_status(
        status,
        code,
        message,
        Blame::Client,
    ))
}
