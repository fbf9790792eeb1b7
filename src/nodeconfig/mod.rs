//! `wharf node-config`: the containerd configuration that sends a node's image
//! pulls through the wharf running on that node, with the real registry as
//! the fallback whenever wharf does not answer.
//!
//! This module owns the *plan* — which registry hosts go through wharf (every
//! configured upstream's `aliases`: the values containerd sends as `?ns=` and
//! the only ones wharf routes by), the mirror URL and the dial timeout — and
//! its two renderings:
//!
//! - `hosts_dir.rs`: containerd `hosts.toml` files, `DIR/<registry host>/hosts.toml`,
//!   for distributions whose containerd has `config_path` set (kubeadm, k3s,
//!   EKS/AKS images), with a backup of what they replace and a restore.
//!   Format: containerd's `docs/hosts.md`
//!   (<https://github.com/containerd/containerd/blob/main/docs/hosts.md>):
//!   `server`, `[host."<url>"]`, `capabilities`, `dial_timeout`.
//! - `gke.rs`: GKE's containerd configuration file for node pools
//!   (`gcloud container node-pools create|update --containerd-config-from-file`),
//!   its `registryHosts` list. Field names and limits from
//!   <https://docs.cloud.google.com/kubernetes-engine/docs/how-to/customize-containerd-configuration>,
//!   the API reference
//!   <https://docs.cloud.google.com/kubernetes-engine/docs/reference/rest/v1/ContainerdConfig>
//!   (proto `google.container.v1.ContainerdConfig.RegistryHostConfig` in
//!   googleapis `google/container/v1/cluster_service.proto`) and the keys
//!   gcloud's `LoadContainerdConfigFromYAML` accepts
//!   (`googlecloudsdk/api_lib/container/util.py`).
//! - `cache_dir.rs`: the cache directory's owner, set by the DaemonSet's
//!   init container (a hostPath ignores `fsGroup`).
//!
//! It must never: edit containerd's `config.toml` (adding `config_path` next
//! to GKE's inline `mirrors` stops the CRI plugin from loading); write a host
//! that is not a configured upstream's alias, or anywhere outside the given
//! directory; replace a `hosts.toml` it did not write unless asked to back it
//! up; put anything but names, hosts and URLs in its output (credentials are
//! never read from the configuration into the plan: URLs with a user or
//! password are refused by `config`).
//!
//! Why `dial_timeout = 1s`: wharf listens on loopback, where a connection
//! either completes in microseconds or is refused at once (wharf not running:
//! the kernel answers RST and containerd moves to the next host with no
//! wait). The timeout only bites when a SYN gets no answer at all — wharf's
//! accept backlog is full and the kernel drops it, or a firewall rule drops
//! loopback traffic — and Linux retransmits an unanswered SYN after 1 s, so a
//! second means "wharf did not take the connection in its first try": fall
//! back. containerd has no circuit breaker (each request tries each host in
//! turn), so the timeout is paid per request while wharf is black-holed;
//! containerd's default is 30 s, and GKE allows at most 180 s.

pub mod cache_dir;
pub mod cli;
pub mod gke;
pub mod hosts_dir;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Config, TlsMode};

/// The default `dial_timeout` (see the module doc for why).
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// GKE's limit for `dialTimeout`, applied to both renderings.
pub const MAX_DIAL_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, thiserror::Error)]
pub enum NodeConfigError {
    #[error("wharf serves TLS on {listen}: node-config sends containerd to a plain-HTTP wharf on loopback (set [server] plain_http = true, as the DaemonSet's config does) or give --mirror")]
    TlsWithoutMirror { listen: SocketAddr },
    #[error("--mirror {url:?}: {why}")]
    BadMirror { url: String, why: &'static str },
    #[error("upstream {upstream:?}: alias {alias:?} is not a registry host (host or host:port) containerd can name a directory after")]
    BadHost { upstream: String, alias: String },
    #[error("no upstream has aliases: containerd's ?ns= can reach none of them (give each [[upstream]] the registry hosts it serves in `aliases`)")]
    NoHosts,
    #[error("--dial-timeout {0:?}: must be more than 0 and at most 180s (GKE's limit)")]
    DialTimeout(String),
    #[error("{0} registry hosts: GKE takes at most 25 registryHosts entries")]
    TooManyHosts(usize),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} exists and was not written by wharf: pass --backup to move it to {backup} (restored by --restore)")]
    Foreign { path: PathBuf, backup: PathBuf },
    #[error("{path} is not a directory (a symlink or a file where wharf keeps a host's files): refusing to write through it")]
    NotADirectory { path: PathBuf },
    #[error("--owner {0:?}: expected UID:GID (numbers)")]
    BadOwner(String),
}

impl NodeConfigError {
    fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> NodeConfigError {
        let path = path.into();
        move |source| NodeConfigError::Io { path, source }
    }
}

/// One registry host whose pulls go through wharf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryHost {
    /// The registry host as images name it and containerd sends it in
    /// `?ns=` (an upstream alias): `docker.io`, `europe-docker.pkg.dev`,
    /// `registry.example:5000`. Also the directory name.
    pub host: String,
    /// The upstream's name in wharf's configuration.
    pub upstream: String,
    /// The upstream's URL, `scheme://host[:port]`: where containerd goes
    /// when wharf does not answer.
    pub server: String,
}

/// What every node configuration says: the mirror and the hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `http://127.0.0.1:5050`: no trailing slash, no path.
    pub mirror: String,
    pub dial_timeout: Duration,
    pub hosts: Vec<RegistryHost>,
}

impl Plan {
    /// The plan for `config`: every alias of every upstream, in the file's
    /// order; the mirror from `--mirror`, else wharf's listen address (plain
    /// HTTP only; an unspecified address becomes loopback).
    pub fn new(
        config: &Config,
        mirror: Option<&str>,
        dial_timeout: Duration,
    ) -> Result<Plan, NodeConfigError> {
        if dial_timeout.is_zero() || dial_timeout > MAX_DIAL_TIMEOUT {
            return Err(NodeConfigError::DialTimeout(go_duration(dial_timeout)));
        }
        let mirror = match mirror {
            Some(m) => mirror_url(m)?,
            None => match config.tls.mode {
                TlsMode::Plain => format!("http://{}", loopback_for(config.listen)),
                _ => {
                    return Err(NodeConfigError::TlsWithoutMirror {
                        listen: config.listen,
                    })
                }
            },
        };
        let mut hosts = Vec::new();
        for u in &config.upstreams {
            for alias in &u.aliases {
                if !is_registry_host(alias) {
                    return Err(NodeConfigError::BadHost {
                        upstream: u.name.clone(),
                        alias: alias.clone(),
                    });
                }
                hosts.push(RegistryHost {
                    host: alias.clone(),
                    upstream: u.name.clone(),
                    server: u.url.as_str().trim_end_matches('/').to_owned(),
                });
            }
        }
        if hosts.is_empty() {
            return Err(NodeConfigError::NoHosts);
        }
        Ok(Plan {
            mirror,
            dial_timeout,
            hosts,
        })
    }
}

/// Where containerd on the same node reaches a listener bound to `addr`.
fn loopback_for(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// `--mirror`: `http(s)://host[:port]` and nothing else (containerd adds `/v2`).
fn mirror_url(text: &str) -> Result<String, NodeConfigError> {
    // A URL with a user or password in it is not repeated.
    let shown = if text.contains('@') {
        "(a URL with '@')".to_owned()
    } else {
        text.to_owned()
    };
    let bad = |why| NodeConfigError::BadMirror {
        url: shown.clone(),
        why,
    };
    let url = reqwest::Url::parse(text).map_err(|_| bad("not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad("must be an http:// or https:// URL with a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry a user or password"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(bad("give only scheme, host and port"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// A registry host as containerd names its directory: a DNS name or an IP
/// address (IPv6 in brackets), with an optional port. Nothing that could
/// leave the directory (`/`, `..`) or name containerd's `_default`.
pub fn is_registry_host(s: &str) -> bool {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(p) => (None, Some(p)),
                None => return false,
            },
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(s), None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err() {
            return false;
        }
    }
    let Some(host) = host else {
        return true;
    };
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Go's `time.ParseDuration` form, as hosts.toml's `dial_timeout` takes it:
/// `1s`, `1500ms`, `250us`.
pub fn go_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos() % 1_000_000 == 0 {
        format!("{}ms", d.as_millis())
    } else if d.subsec_nanos() % 1_000 == 0 {
        format!("{}us", d.as_micros())
    } else {
        format!("{}ns", d.as_nanos())
    }
}

/// The protobuf JSON form of a `google.protobuf.Duration`, as GKE's
/// `dialTimeout` takes it: seconds with an `s` suffix, `1s`, `0.5s`.
pub fn proto_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        let frac = format!("{:09}", d.subsec_nanos());
        format!("{}.{}s", d.as_secs(), frac.trim_end_matches('0'))
    }
}

/// A string as a TOML basic string (quoted, escaped).
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Docker Hub, Artifact Registry (with the metadata server's token) and
    /// a registry on a port, as the DaemonSet's config has them.
    pub(crate) const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:5050"
plain_http = true
[[upstream]]
name = "dockerhub"
url = "https://registry-1.docker.io"
aliases = ["docker.io", "index.docker.io", "registry-1.docker.io"]
default = true
[[upstream]]
name = "gar"
url = "https://europe-docker.pkg.dev"
aliases = ["europe-docker.pkg.dev"]
[upstream.credentials]
gce_metadata = true
[[upstream]]
name = "private"
url = "http://10.1.2.3:5000"
aliases = ["registry.internal:5000"]
"#;

    pub(crate) fn plan() -> Plan {
        let c = Config::from_toml(CONFIG, None).unwrap();
        Plan::new(&c, None, DEFAULT_DIAL_TIMEOUT).unwrap()
    }

    #[test]
    fn every_alias_of_every_upstream_in_order() {
        let p = plan();
        assert_eq!(p.mirror, "http://127.0.0.1:5050");
        let hosts: Vec<(&str, &str, &str)> = p
            .hosts
            .iter()
            .map(|h| (h.host.as_str(), h.upstream.as_str(), h.server.as_str()))
            .collect();
        assert_eq!(
            hosts,
            [
                ("docker.io", "dockerhub", "https://registry-1.docker.io"),
                (
                    "index.docker.io",
                    "dockerhub",
                    "https://registry-1.docker.io"
                ),
                (
                    "registry-1.docker.io",
                    "dockerhub",
                    "https://registry-1.docker.io"
                ),
                (
                    "europe-docker.pkg.dev",
                    "gar",
                    "https://europe-docker.pkg.dev"
                ),
                ("registry.internal:5000", "private", "http://10.1.2.3:5000"),
            ]
        );
    }

    #[test]
    fn mirror_from_listen_or_flag() {
        let cfg = |server: &str| {
            Config::from_toml(
                &format!("[server]\n{server}\n[[upstream]]\nname = \"a\"\nurl = \"https://r.example\"\naliases = [\"r.example\"]\n"),
                None,
            )
            .unwrap()
        };
        let t = DEFAULT_DIAL_TIMEOUT;
        let p = Plan::new(
            &cfg("listen = \"0.0.0.0:7000\"\nplain_http = true"),
            None,
            t,
        )
        .unwrap();
        assert_eq!(p.mirror, "http://127.0.0.1:7000");
        let p = Plan::new(&cfg("listen = \"[::]:7000\"\nplain_http = true"), None, t).unwrap();
        assert_eq!(p.mirror, "http://[::1]:7000");
        let tls = cfg("listen = \"127.0.0.1:7000\"");
        let e = Plan::new(&tls, None, t).unwrap_err();
        assert!(matches!(e, NodeConfigError::TlsWithoutMirror { .. }), "{e}");
        let p = Plan::new(&tls, Some("https://wharf.node.local:7000/"), t).unwrap();
        assert_eq!(p.mirror, "https://wharf.node.local:7000");
        for bad in [
            "127.0.0.1:7000",
            "ftp://x",
            "http://u:p@x",
            "http://x/v2",
            "http://x/?a=b",
        ] {
            let e = Plan::new(&tls, Some(bad), t).unwrap_err();
            assert!(matches!(e, NodeConfigError::BadMirror { .. }), "{bad}: {e}");
            assert!(!e.to_string().contains("u:p@"), "{e}");
        }
        for d in [Duration::ZERO, Duration::from_secs(181)] {
            let e = Plan::new(&tls, Some("http://x"), d).unwrap_err();
            assert!(matches!(e, NodeConfigError::DialTimeout(_)), "{e}");
        }
    }

    #[test]
    fn aliases_that_are_not_hosts_are_refused() {
        for bad in [
            "../etc",
            "a/b",
            "_default",
            ".docker.io",
            "docker..io",
            "-a.io",
            "a.io:",
            "a.io:99999",
            "a.io:x",
            "[::1",
            "[nope]:5",
            "",
        ] {
            assert!(!is_registry_host(bad), "{bad:?}");
            let c = Config::from_toml(
                &format!("[server]\nplain_http = true\n[[upstream]]\nname = \"a\"\nurl = \"https://r.example\"\naliases = [{}]\n", toml_str(bad)),
                None,
            );
            if let Ok(c) = c {
                let e = Plan::new(&c, None, DEFAULT_DIAL_TIMEOUT).unwrap_err();
                assert!(matches!(e, NodeConfigError::BadHost { .. }), "{bad}: {e}");
            }
        }
        for good in [
            "docker.io",
            "registry.internal:5000",
            "127.0.0.1:5001",
            "[::1]:5000",
            "[fd00::1]",
            "localhost",
        ] {
            assert!(is_registry_host(good), "{good:?}");
        }
        let c = Config::from_toml(
            "[server]\nplain_http = true\n[[upstream]]\nname = \"a\"\nurl = \"https://r.example\"\n",
            None,
        )
        .unwrap();
        let e = Plan::new(&c, None, DEFAULT_DIAL_TIMEOUT).unwrap_err();
        assert!(matches!(e, NodeConfigError::NoHosts), "{e}");
    }

    #[test]
    fn durations_in_go_and_proto_forms() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration(ms(1000)), "1s");
        assert_eq!(go_duration(ms(1500)), "1500ms");
        assert_eq!(go_duration(Duration::from_micros(250)), "250us");
        assert_eq!(go_duration(Duration::from_nanos(7)), "7ns");
        assert_eq!(proto_duration(ms(1000)), "1s");
        assert_eq!(proto_duration(ms(500)), "0.5s");
        assert_eq!(proto_duration(ms(1250)), "1.25s");
        assert_eq!(proto_duration(Duration::from_nanos(1)), "0.000000001s");
    }
}
