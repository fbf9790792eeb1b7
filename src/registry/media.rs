//! Media types, and the `Accept` handling for manifest requests.
//!
//! Spec: OCI distribution-spec `spec.md#pulling-manifests` (clients SHOULD send
//! `Accept` with the manifest types they support) and image-spec `media-types.md`.

use std::fmt;
use std::str::FromStr;

use super::{truncate, ParseError};

/// Every manifest type wharf asks the upstream for. The upstream always gets the
/// full list whatever the client sent: distribution answers `MANIFEST_UNKNOWN` for an
/// OCI manifest if the Accept has no OCI type, and the cache serves many clients.
pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v1+json",
];

/// Manifest types wharf stores and serves besides [`MANIFEST_TYPES`]: the
/// OCI artifact manifest of image-spec 1.1's release candidates (some
/// registries still serve it), and plain `application/json`, which old
/// registries send for schema 1. Artifacts in the released spec are image
/// manifests with an `artifactType`, already in the list.
const OTHER_MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.artifact.manifest.v1+json",
    "application/json",
];

/// Whether `mt` is a type a registry serves a manifest as. Anything else
/// (`text/html` with a `<script>`, an image, ...) is never cached nor served
/// as a manifest, whatever the upstream says.
pub fn is_manifest_type(mt: &MediaType) -> bool {
    let e = mt.essence();
    MANIFEST_TYPES
        .iter()
        .chain(OTHER_MANIFEST_TYPES)
        .any(|t| *t == e)
}

/// The most media types of an `Accept` wharf considers (clients send six or
/// so); the rest of a longer header is ignored.
pub const MAX_ACCEPT_TYPES: usize = 64;

/// The largest manifest wharf accepts; distribution and containerd use 4 MiB too.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// A `type/subtype` media type, kept exactly as the upstream sent it (parameters
/// included), because clients compare it byte for byte with descriptors.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MediaType(String);

impl MediaType {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The part before any `;` parameters, lowercased for comparisons.
    pub fn essence(&self) -> String {
        essence(&self.0)
    }
}

fn essence(s: &str) -> String {
    s.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
}

impl FromStr for MediaType {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let e = essence(s);
        let ok = s.len() <= 255
            && s.bytes().all(|b| (0x20..0x7f).contains(&b))
            && matches!(e.split_once('/'), Some((t, st)) if is_token(t) && is_token(st));
        if ok {
            Ok(MediaType(s.trim().to_owned()))
        } else {
            Err(ParseError::MediaType(format!(
                "invalid media type: {}",
                truncate(s)
            )))
        }
    }
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MediaType({})", self.0)
    }
}

/// What a client said it accepts, merged from every `Accept` header line (skopeo,
/// podman and dockerd send one line per type; containerd one comma-joined line).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accept(Vec<String>);

impl Accept {
    /// Linear in the header's length: duplicates are found in a set, and at
    /// most [`MAX_ACCEPT_TYPES`] distinct types are kept (a 60 KB header of
    /// distinct types once cost a comparison per pair).
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Accept {
        Accept::parse_counted(lines, &mut 0)
    }

    /// [`Accept::parse`], adding to `work` one per item looked at and per
    /// set operation (for the test that proves it linear).
    fn parse_counted<'a>(lines: impl IntoIterator<Item = &'a str>, work: &mut u64) -> Accept {
        let mut v = Vec::new();
        let mut seen = std::collections::HashSet::new();
        'lines: for line in lines {
            for item in line.split(',') {
                *work += 1;
                if v.len() >= MAX_ACCEPT_TYPES {
                    break 'lines;
                }
                let e = essence(item);
                *work += 1;
                if !e.is_empty() && seen.insert(e.clone()) {
                    v.push(e);
                }
            }
        }
        Accept(v)
    }
    pub fn types(&self) -> &[String] {
        &self.0
    }
    /// Whether a manifest of type `mt` may be given to this client. A client that
    /// sent no Accept gets anything (the spec's default), and so do wildcards.
    pub fn allows(&self, mt: &MediaType) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let e = mt.essence();
        let major = e.split('/').next().unwrap_or("");
        self.0
            .iter()
            .any(|a| a == &e || a == "*/*" || a.strip_suffix("/*") == Some(major))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_accept_lines() {
        let a = Accept::parse([
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json; q=0.5, application/vnd.oci.image.index.v1+json",
        ]);
        assert_eq!(a.types().len(), 3);
        let oci: MediaType = "application/vnd.oci.image.index.v1+json".parse().unwrap();
        assert!(a.allows(&oci));
        let list: MediaType = "application/vnd.docker.distribution.manifest.list.v2+json"
            .parse()
            .unwrap();
        assert!(!a.allows(&list));
        assert!(Accept::parse(["*/*"]).allows(&list));
        assert!(Accept::parse(["application/*"]).allows(&list));
        assert!(Accept::default().allows(&list));
    }

    /// Regression: de-duplication compared each type with every earlier one.
    #[test]
    fn a_huge_accept_costs_linear_work() {
        let header: String = (0..7000)
            .map(|i| format!("a/t{i:05}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(header.len() >= 60_000);
        let mut work = 0;
        let a = Accept::parse_counted([header.as_str()], &mut work);
        assert_eq!(a.types().len(), MAX_ACCEPT_TYPES);
        assert!(work <= 2 * 7000, "work {work}");
        // Duplicates of one type: every item is looked at once.
        let dups = vec!["application/json"; 20_000].join(",");
        let mut work = 0;
        let a = Accept::parse_counted([dups.as_str()], &mut work);
        assert_eq!(a.types(), ["application/json"]);
        assert_eq!(work, 2 * 20_000);
    }

    #[test]
    fn manifest_types() {
        for ok in MANIFEST_TYPES.iter().chain(OTHER_MANIFEST_TYPES) {
            assert!(is_manifest_type(&ok.parse().unwrap()), "{ok}");
        }
        assert!(is_manifest_type(
            &"Application/VND.oci.image.manifest.v1+json; charset=utf-8"
                .parse()
                .unwrap()
        ));
        for bad in [
            "text/html",
            "text/html; charset=utf-8",
            "image/svg+xml",
            "text/plain",
        ] {
            assert!(!is_manifest_type(&bad.parse().unwrap()), "{bad}");
        }
    }

    #[test]
    fn media_type_validation() {
        assert!("application/json; charset=utf-8"
            .parse::<MediaType>()
            .is_ok());
        for s in ["", "json", "a/", "/b", "a/b\n", "a b/c"] {
            assert!(s.parse::<MediaType>().is_err(), "{s:?}");
        }
    }
}
