//! Repository names, tags and references, validated as the distribution spec says.
//!
//! Spec: OCI distribution-spec `spec.md#pulling-manifests` ("<name> MUST match
//! `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`",
//! "<reference> as a tag MUST be at most 128 characters in length and MUST match
//! `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`"). Validating here, before any I/O, is what
//! keeps `..`, `%2e%2e` and absurd lengths away from disk and upstream URLs.

use std::fmt;
use std::str::FromStr;

use super::{truncate, Digest, ParseError};

/// distribution's own limit on the full repository name.
pub const MAX_NAME_LEN: usize = 255;

/// A validated repository name such as `library/busybox`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Number of `/`-separated components.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
    /// The name with its first component removed, if it has more than one.
    pub fn strip_first(&self) -> Option<(&str, RepoName)> {
        let (first, rest) = self.0.split_once('/')?;
        Some((first, RepoName(rest.to_owned())))
    }
    /// Prepends a (validated) component, e.g. Docker Hub's `library`.
    pub fn with_prefix(&self, component: &str) -> Result<RepoName, ParseError> {
        format!("{component}/{}", self.0).parse()
    }
}

fn valid_component(c: &str) -> bool {
    // [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() {
        return false;
    }
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

impl FromStr for RepoName {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        if s.is_empty() || s.len() > MAX_NAME_LEN {
            return Err(ParseError::Name(format!(
                "repository name must be 1 to {MAX_NAME_LEN} characters"
            )));
        }
        if !s.split('/').all(valid_component) {
            return Err(ParseError::Name(format!(
                "invalid repository name: {}",
                truncate(s)
            )));
        }
        Ok(RepoName(s.to_owned()))
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoName({})", self.0)
    }
}

/// A validated tag such as `1.36` or `latest`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b[1..]
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-');
        if ok {
            Ok(Tag(s.to_owned()))
        } else {
            Err(ParseError::Tag(format!(
                "invalid tag {}: no manifest can have this tag (tags match [A-Za-z0-9_][A-Za-z0-9._-]{{0,127}})",
                truncate(s)
            )))
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({})", self.0)
    }
}

/// The `<reference>` of a manifest request: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl FromStr for Reference {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        // Path words are refused as requests, not looked up as tags.
        if s == "." || s == ".." {
            return Err(ParseError::Reference(format!("invalid reference: {s}")));
        }
        // A tag can never contain ':', a digest always does.
        if s.contains(':') {
            s.parse().map(Reference::Digest)
        } else {
            s.parse().map(Reference::Tag)
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_spec_names() {
        for s in [
            "busybox",
            "library/busybox",
            "a",
            "my-org/my__app",
            "a.b_c--d/e",
            "project/repo/image",
            "g/h/i/j/k",
            "0abc/1",
        ] {
            assert!(s.parse::<RepoName>().is_ok(), "{s} should parse");
        }
    }

    #[test]
    fn rejects_bad_names() {
        let long = "a".repeat(256);
        for s in [
            "",
            "..",
            "a/../b",
            "../etc/passwd",
            "%2e%2e",
            "a/%2e%2e/b",
            "Upper",
            "a//b",
            "/a",
            "a/",
            "a___b",
            "a..b",
            "-a",
            "a-",
            "a b",
            long.as_str(),
        ] {
            assert!(s.parse::<RepoName>().is_err(), "{s:?} should be rejected");
        }
        assert!("a".repeat(255).parse::<RepoName>().is_ok());
    }

    #[test]
    fn tags() {
        for s in ["latest", "1.36.1", "_x", "A-b.c_d"] {
            assert!(s.parse::<Tag>().is_ok(), "{s}");
        }
        let long = "a".repeat(129);
        for s in ["", ".x", "-x", "a/b", "a:b", "..", "%2e", long.as_str()] {
            assert!(s.parse::<Tag>().is_err(), "{s:?}");
        }
        assert!("a".repeat(128).parse::<Tag>().is_ok());
    }

    #[test]
    fn references() {
        assert!(matches!("latest".parse(), Ok(Reference::Tag(_))));
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(matches!(d.parse(), Ok(Reference::Digest(_))));
        assert!(matches!(
            "sha256:zz".parse::<Reference>(),
            Err(ParseError::Digest(_))
        ));
    }

    #[test]
    fn prefix_helpers() {
        let n: RepoName = "dockerhub/library/alpine".parse().unwrap();
        let (first, rest) = n.strip_first().unwrap();
        assert_eq!(first, "dockerhub");
        assert_eq!(rest.as_str(), "library/alpine");
        let b: RepoName = "busybox".parse().unwrap();
        assert!(b.strip_first().is_none());
        assert_eq!(
            b.with_prefix("library").unwrap().as_str(),
            "library/busybox"
        );
    }
}
