//! Every request is parsed into an [`Endpoint`] before anything else happens.
//!
//! Repository names contain `/`, so the path is split from the right on
//! `/manifests/`, `/blobs/` and `/tags/list` (spec: distribution-spec
//! `spec.md#endpoints`). The raw, undecoded path is parsed: valid names, tags and
//! digests never contain `%`, so a percent sign is rejected rather than decoded,
//! which is what keeps `%2e%2e` from ever meaning `..`.

use super::{truncate, Digest, ParseError, Reference, RepoName};

/// The OCI endpoint a request addresses. Its [`Route::label`] is the metrics label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /v2/`: API version check.
    Base,
    Manifest {
        name: RepoName,
        reference: Reference,
    },
    Blob {
        name: RepoName,
        digest: Digest,
    },
    TagsList {
        name: RepoName,
    },
    /// Anything under `/blobs/uploads`: pushes, which a mirror does not take.
    Upload,
    /// `/v2/_catalog`: a mirror cannot list its upstreams' catalogues.
    Catalog,
}

/// What a request asked for, without its parts: the metrics label, and what
/// an error response names (a missing manifest is `MANIFEST_UNKNOWN`, a
/// missing blob `BLOB_UNKNOWN`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    Base,
    Manifest,
    Blob,
    TagsList,
    Upload,
    Catalog,
    /// Not a registry API path (`/healthz`, `/metrics`, anything else).
    Other,
    /// A registry API path with invalid parts.
    Invalid,
}

impl RouteKind {
    /// The metrics label (a bounded set).
    pub fn label(self) -> &'static str {
        match self {
            RouteKind::Base => "base",
            RouteKind::Manifest => "manifest",
            RouteKind::Blob => "blob",
            RouteKind::TagsList => "tags_list",
            RouteKind::Upload => "upload",
            RouteKind::Catalog => "catalog",
            RouteKind::Other => "other",
            RouteKind::Invalid => "invalid",
        }
    }

    /// The object a client asked for, in words (for error messages).
    pub fn object(self) -> &'static str {
        match self {
            RouteKind::Manifest => "manifest",
            RouteKind::Blob => "blob",
            RouteKind::TagsList => "tag list",
            _ => "object",
        }
    }
}

impl Route {
    pub fn kind(&self) -> RouteKind {
        match self {
            Route::Base => RouteKind::Base,
            Route::Manifest { .. } => RouteKind::Manifest,
            Route::Blob { .. } => RouteKind::Blob,
            Route::TagsList { .. } => RouteKind::TagsList,
            Route::Upload => RouteKind::Upload,
            Route::Catalog => RouteKind::Catalog,
        }
    }

    pub fn label(&self) -> &'static str {
        self.kind().label()
    }
    pub fn name(&self) -> Option<&RepoName> {
        match self {
            Route::Manifest { name, .. } | Route::Blob { name, .. } | Route::TagsList { name } => {
                Some(name)
            }
            _ => None,
        }
    }
}

/// A parsed request: the route plus the routing hints that came with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub route: Route,
    /// containerd's `?ns=<registry host>`: a key into configured upstreams, never a
    /// host to dial.
    pub ns: Option<String>,
    /// Path before `/v2/` (containerd `override_path`), e.g. `dockerhub` for
    /// `/dockerhub/v2/...`.
    pub path_prefix: Option<String>,
    /// `tags/list` pagination: `n` and `last`.
    pub n: Option<u32>,
    pub last: Option<String>,
}

impl Endpoint {
    /// Longest path we look at; anything longer is not a valid request.
    pub const MAX_PATH: usize = 2048;

    /// Parses the raw request path and query. `Ok(None)` means "not an OCI path"
    /// (a 404 of the router's), distinct from an OCI path with invalid parts.
    pub fn parse(path: &str, query: Option<&str>) -> Result<Option<Endpoint>, ParseError> {
        if path.len() > Self::MAX_PATH {
            return Err(ParseError::Name("request path too long".into()));
        }
        // An origin-form path starts with `/`; anything else (`*`, an
        // authority) is no registry path, and the prefix split below takes
        // that first byte to be the `/`.
        if !path.starts_with('/') {
            return Ok(None);
        }
        if path.contains('%') {
            return Err(ParseError::Name(format!(
                "percent-encoded characters are not valid in names or references: {}",
                truncate(path)
            )));
        }
        let (path_prefix, rest) = if path == "/v2" || path == "/v2/" {
            (None, "")
        } else if let Some(rest) = path.strip_prefix("/v2/") {
            (None, rest)
        } else if let Some(i) = path.find("/v2/").filter(|&i| i > 0) {
            // `/PREFIX/v2/...`; PREFIX must itself look like a path of name parts.
            let prefix = &path[1..i];
            if !prefix.split('/').all(|c| c.parse::<RepoName>().is_ok()) {
                return Ok(None);
            }
            (Some(prefix.to_owned()), &path[i + 4..])
        } else if path.ends_with("/v2") && path.len() > 3 {
            let prefix = &path[1..path.len() - 3];
            if !prefix.split('/').all(|c| c.parse::<RepoName>().is_ok()) {
                return Ok(None);
            }
            (Some(prefix.to_owned()), "")
        } else {
            return Ok(None);
        };

        let route = match parse_route(rest)? {
            Some(r) => r,
            None => return Ok(None),
        };
        let mut ep = Endpoint {
            route,
            ns: None,
            path_prefix,
            n: None,
            last: None,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .map_err(|_| ParseError::Query(format!("query value of {k} is not UTF-8")))?;
            match k {
                "ns" => ep.ns = Some(parse_ns(&v)?),
                "n" => {
                    ep.n = Some(v.parse().map_err(|_| {
                        ParseError::Query(format!("n must be a number: {}", truncate(&v)))
                    })?)
                }
                "last" => {
                    if v.len() > 256 {
                        return Err(ParseError::Query("last is too long".into()));
                    }
                    ep.last = Some(v.into_owned())
                }
                _ => {} // other parameters are ignored, as distribution does
            }
        }
        Ok(Some(ep))
    }
}

fn parse_route(rest: &str) -> Result<Option<Route>, ParseError> {
    if rest.is_empty() {
        return Ok(Some(Route::Base));
    }
    if rest == "_catalog" {
        return Ok(Some(Route::Catalog));
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(Some(Route::TagsList {
            name: name.parse()?,
        }));
    }
    // Uploads: `<name>/blobs/uploads/` or `<name>/blobs/uploads/<uuid>`.
    let trimmed = rest.trim_end_matches('/');
    if trimmed.ends_with("/blobs/uploads")
        || trimmed
            .rsplit_once('/')
            .is_some_and(|(head, _)| head.ends_with("/blobs/uploads"))
    {
        return Ok(Some(Route::Upload));
    }
    if let Some(i) = rest.rfind("/manifests/") {
        let reference = &rest[i + "/manifests/".len()..];
        if reference.contains('/') {
            return Err(ParseError::Reference(format!(
                "invalid reference: {}",
                truncate(reference)
            )));
        }
        return Ok(Some(Route::Manifest {
            name: rest[..i].parse()?,
            reference: reference.parse()?,
        }));
    }
    if let Some(i) = rest.rfind("/blobs/") {
        let digest = &rest[i + "/blobs/".len()..];
        return Ok(Some(Route::Blob {
            name: rest[..i].parse()?,
            digest: digest.parse()?,
        }));
    }
    Ok(None)
}

/// `ns` is a registry host, optionally with a port: lowercase it and check its
/// characters so it can be logged and matched safely.
fn parse_ns(v: &str) -> Result<String, ParseError> {
    let ok = !v.is_empty()
        && v.len() <= 255
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b));
    if ok {
        Ok(v.to_ascii_lowercase())
    } else {
        Err(ParseError::Name(format!("invalid ns: {}", truncate(v))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parse(p: &str, q: Option<&str>) -> Result<Option<Endpoint>, ParseError> {
        Endpoint::parse(p, q)
    }

    #[test]
    fn base() {
        for p in ["/v2", "/v2/"] {
            assert_eq!(parse(p, None).unwrap().unwrap().route, Route::Base);
        }
        assert_eq!(parse("/", None).unwrap(), None);
        assert_eq!(parse("/v1/", None).unwrap(), None);
    }

    #[test]
    fn manifests_and_blobs_split_from_the_right() {
        let ep = parse("/v2/a/manifests/b/manifests/latest", Some("ns=docker.io"))
            .unwrap()
            .unwrap();
        match ep.route {
            Route::Manifest { name, reference } => {
                assert_eq!(name.as_str(), "a/manifests/b");
                assert_eq!(reference.to_string(), "latest");
            }
            r => panic!("{r:?}"),
        }
        assert_eq!(ep.ns.as_deref(), Some("docker.io"));

        let ep = parse(&format!("/v2/library/blobs/x/blobs/{D}"), None)
            .unwrap()
            .unwrap();
        assert!(
            matches!(ep.route, Route::Blob { ref name, .. } if name.as_str() == "library/blobs/x")
        );
        assert_eq!(ep.route.label(), "blob");
    }

    #[test]
    fn tags_list_with_pagination() {
        let ep = parse("/v2/library/busybox/tags/list", Some("n=10&last=1.0"))
            .unwrap()
            .unwrap();
        assert_eq!(ep.n, Some(10));
        assert_eq!(ep.last.as_deref(), Some("1.0"));
        assert!(parse("/v2/x/tags/list", Some("n=abc")).is_err());
    }

    #[test]
    fn uploads_and_catalog() {
        for p in [
            "/v2/a/b/blobs/uploads/",
            "/v2/a/blobs/uploads/1234-abcd",
            "/v2/a/blobs/uploads",
        ] {
            assert_eq!(parse(p, None).unwrap().unwrap().route, Route::Upload, "{p}");
        }
        assert_eq!(
            parse("/v2/_catalog", None).unwrap().unwrap().route,
            Route::Catalog
        );
    }

    #[test]
    fn path_prefix() {
        let ep = parse("/dockerhub/v2/library/x/manifests/1", None)
            .unwrap()
            .unwrap();
        assert_eq!(ep.path_prefix.as_deref(), Some("dockerhub"));
        assert!(matches!(ep.route, Route::Manifest { .. }));
        let ep = parse("/dockerhub/v2/", None).unwrap().unwrap();
        assert_eq!(ep.route, Route::Base);
    }

    #[test]
    fn rejects_traversal_and_garbage() {
        let cases = [
            "/v2/../etc/passwd/manifests/latest",
            "/v2/a/%2e%2e/b/manifests/latest",
            "/v2/%2e%2e/manifests/latest",
            "/v2/a/manifests/..",
            "/v2/a/manifests/a/b",
            "/v2/a/blobs/sha256:../../etc",
            "/v2/a/blobs/sha256%3a00",
            "/v2/A/manifests/latest",
            "/v2//manifests/latest",
        ];
        for p in cases {
            assert!(parse(p, None).is_err(), "{p} should be rejected");
        }
        let long = format!("/v2/{}/manifests/latest", "a/".repeat(200));
        assert!(matches!(parse(&long, None), Err(ParseError::Name(_))));
        let huge = "/v2/".to_string() + &"a".repeat(5000);
        assert!(parse(&huge, None).is_err());
        assert!(parse("/v2/a/manifests/latest", Some("ns=evil.com/../x")).is_err());
    }

    /// Found by fuzzing (fuzz/corpus/endpoint/no-leading-slash-*): a path
    /// not starting with `/` had its first character dropped as if it were
    /// one (`~v2/a/v2/` routed as prefix `v2/a`), and a multi-byte first
    /// character (`é/v2/`) panicked slicing inside it.
    #[test]
    fn path_without_leading_slash_is_no_oci_path() {
        for p in [
            "é/v2/",
            "~v2/li_rary/alpine/v2/",
            "é/v2",
            "x/v2/a/manifests/1",
            "v2/",
        ] {
            assert_eq!(parse(p, None), Ok(None), "{p}");
        }
    }

    #[test]
    fn error_kinds() {
        assert!(matches!(
            parse("/v2/a/blobs/sha256:abc", None),
            Err(ParseError::Digest(_))
        ));
        assert!(matches!(
            parse("/v2/a/manifests/-bad", None),
            Err(ParseError::Tag(_))
        ));
        assert!(matches!(
            parse("/v2/a/manifests/..", None),
            Err(ParseError::Reference(_))
        ));
    }
}
