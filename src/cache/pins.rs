//! Pin patterns: images eviction must keep.
//!
//! A pattern names images as `<upstream>/<repository>` followed by `:<tag>`
//! or `@<digest>`, with globs: `*` within one path component, `**` across
//! them. Without a `:tag` or `@digest` it covers every tag and digest of the
//! matching repositories. Examples: `dockerhub/library/alpine:3.*`,
//! `gitlab/group/**`, `gar/proj/repo/app@sha256:…`.

use globset::{GlobBuilder, GlobMatcher};

use crate::registry::RepoName;

#[derive(Clone, Debug)]
pub struct Pin {
    pattern: String,
    /// Matched against `upstream/repo`.
    repo: GlobMatcher,
    /// Matched against the tag or digest; `None`: any.
    reference: Option<GlobMatcher>,
}

fn glob(s: &str, separator: bool) -> Result<GlobMatcher, String> {
    GlobBuilder::new(s)
        .literal_separator(separator)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("{s:?}: {e}"))
}

impl Pin {
    pub fn parse(pattern: &str) -> Result<Pin, String> {
        let p = pattern.trim();
        let last_slash = p
            .rfind('/')
            .ok_or_else(|| format!("{p:?}: expected <upstream>/<repository>[:tag|@digest]"))?;
        // A ':' or '@' after the last '/' starts the reference (a port-like
        // ':' cannot occur: the first component is an upstream name).
        let split = p[last_slash..].find(['@', ':']).map(|i| last_slash + i);
        let (repo, reference) = match split {
            Some(i) => (&p[..i], Some(&p[i + 1..])),
            None => (p, None),
        };
        if repo.is_empty() || reference.is_some_and(str::is_empty) {
            return Err(format!("{p:?}: empty repository or reference"));
        }
        Ok(Pin {
            pattern: p.to_owned(),
            repo: glob(repo, true)?,
            reference: reference.map(|r| glob(r, false)).transpose()?,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether this pin covers `upstream/repo` at `reference` (a tag or a
    /// digest string).
    pub fn matches(&self, upstream: &str, repo: &RepoName, reference: &str) -> bool {
        self.repo.is_match(format!("{upstream}/{repo}"))
            && self
                .reference
                .as_ref()
                .is_none_or(|g| g.is_match(reference))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    #[test]
    fn patterns() {
        let p = Pin::parse("hub/library/alpine:3.*").unwrap();
        assert!(p.matches("hub", &repo("library/alpine"), "3.19"));
        assert!(!p.matches("hub", &repo("library/alpine"), "latest"));
        assert!(!p.matches("gar", &repo("library/alpine"), "3.19"));

        let p = Pin::parse("hub/library/*").unwrap();
        assert!(p.matches("hub", &repo("library/alpine"), "latest"));
        assert!(p.matches("hub", &repo("library/busybox"), "sha256:00"));
        assert!(
            !p.matches("hub", &repo("library/a/b"), "x"),
            "* stays in a component"
        );

        let p = Pin::parse("gitlab/group/**").unwrap();
        assert!(p.matches("gitlab", &repo("group/a/b/c"), "v1"));

        let p = Pin::parse("hub/app@sha256:*").unwrap();
        assert!(p.matches("hub", &repo("app"), "sha256:abc"));
        assert!(!p.matches("hub", &repo("app"), "v1"));

        assert!(Pin::parse("alpine").is_err());
        assert!(Pin::parse("hub/alpine:").is_err());
        assert!(Pin::parse("hub/[alpine").is_err());
    }
}
