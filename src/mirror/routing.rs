//! Which upstream a request is for: containerd's `?ns=` (matched against each
//! upstream's `aliases`, never dialled), a path prefix (`/v2/<prefix>/<repo>` or
//! `/<prefix>/v2/<repo>`), or the default upstream (dockerd sends neither).

use crate::registry::{Endpoint, RepoName};

use super::{Mirror, MirrorError};

/// One of the configured upstreams (its place in the configuration): only
/// routing makes these, so one always names an upstream that exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamId(pub(super) usize);

impl UpstreamId {
    pub(super) fn index(self) -> usize {
        self.0
    }
}

/// A request resolved to an upstream and the repository name *on that upstream*.
#[derive(Clone, Debug)]
pub struct Routed {
    pub upstream: UpstreamId,
    pub repo: RepoName,
}

impl Mirror {
    /// The configured name of an upstream (logs, metrics, access rules).
    pub fn upstream_name(&self, id: UpstreamId) -> &str {
        &self.upstream(id).cfg.name
    }

    /// Picks the upstream for an endpoint that names a repository.
    pub fn route(&self, ep: &Endpoint, name: &RepoName) -> Result<Routed, MirrorError> {
        let ups = &self.inner.upstreams;
        let (idx, repo) = if let Some(ns) = &ep.ns {
            let idx = ups
                .iter()
                .position(|u| u.cfg.aliases.iter().any(|a| a == ns))
                .ok_or_else(|| MirrorError::UnknownNamespace(ns.clone()))?;
            (idx, name.clone())
        } else if let Some(p) = &ep.path_prefix {
            let idx = ups
                .iter()
                .position(|u| u.cfg.prefix.as_deref() == Some(p.as_str()))
                .ok_or_else(|| MirrorError::UnknownPrefix(p.clone()))?;
            (idx, name.clone())
        } else if let Some((idx, rest)) = name.strip_first().and_then(|(first, rest)| {
            ups.iter()
                .position(|u| u.cfg.prefix.as_deref() == Some(first))
                .map(|i| (i, rest))
        }) {
            (idx, rest)
        } else {
            let idx = ups
                .iter()
                .position(|u| u.cfg.default)
                .ok_or(MirrorError::NoDefaultUpstream)?;
            (idx, name.clone())
        };
        let repo = if ups[idx].cfg.library_prefix && !repo.as_str().contains('/') {
            repo.with_prefix("library")?
        } else {
            repo
        };
        Ok(Routed {
            upstream: UpstreamId(idx),
            repo,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Metadata;
    use crate::config::Config;

    fn mirror() -> (tempfile::TempDir, Mirror) {
        let cfg = Config::from_toml(
            r#"
[[upstream]]
name = "hub"
url = "http://127.0.0.1:9"
aliases = ["docker.io"]
prefix = "dockerhub"
default = true
[[upstream]]
name = "gar"
url = "http://127.0.0.1:9"
aliases = ["europe-docker.pkg.dev"]
prefix = "gar"
"#,
            None,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let m = Mirror::with_parts(&cfg, dir.path(), Metadata::in_memory(), Default::default())
            .unwrap();
        (dir, m)
    }

    fn route(m: &Mirror, path: &str, q: Option<&str>) -> Result<(String, String), MirrorError> {
        let ep = Endpoint::parse(path, q).unwrap().unwrap();
        let name = ep.route.name().unwrap().clone();
        m.route(&ep, &name)
            .map(|r| (m.upstream_name(r.upstream).to_owned(), r.repo.to_string()))
    }

    #[test]
    fn routes_by_ns_prefix_and_default() {
        let (_d, m) = mirror();
        let r = |p, q| route(&m, p, q).unwrap();
        assert_eq!(
            r("/v2/busybox/manifests/1", None),
            ("hub".into(), "library/busybox".into())
        );
        assert_eq!(
            r("/v2/library/busybox/manifests/1", Some("ns=docker.io")),
            ("hub".into(), "library/busybox".into())
        );
        assert_eq!(
            r(
                "/v2/proj/repo/img/manifests/1",
                Some("ns=europe-docker.pkg.dev")
            ),
            ("gar".into(), "proj/repo/img".into())
        );
        assert_eq!(
            r("/v2/gar/proj/img/manifests/1", None),
            ("gar".into(), "proj/img".into())
        );
        assert_eq!(
            r("/gar/v2/proj/img/manifests/1", None),
            ("gar".into(), "proj/img".into())
        );
        // With ns, a first component that happens to be a prefix is kept.
        assert_eq!(
            r("/v2/gar/x/manifests/1", Some("ns=docker.io")),
            ("hub".into(), "gar/x".into())
        );
        // A lone prefix component is a repository name, not a prefix.
        assert_eq!(
            r("/v2/gar/manifests/1", None),
            ("hub".into(), "library/gar".into())
        );
    }

    #[test]
    fn unknown_ns_and_prefix_are_refused() {
        let (_d, m) = mirror();
        assert!(matches!(
            route(&m, "/v2/x/manifests/1", Some("ns=evil.example.com")),
            Err(MirrorError::UnknownNamespace(_))
        ));
        assert!(matches!(
            route(&m, "/nope/v2/x/manifests/1", None),
            Err(MirrorError::UnknownPrefix(_))
        ));
    }
}
