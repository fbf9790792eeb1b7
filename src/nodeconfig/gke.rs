//! `wharf node-config gke`: GKE's containerd configuration file for node
//! pools, applied with
//! `gcloud container node-pools create|update POOL --containerd-config-from-file=FILE`.
//!
//! GKE nodes have no `config_path` of their own (their `config.toml` holds an
//! inline `mirrors."docker.io"`), and `/etc` on Container-Optimized OS is a
//! tmpfs: a DaemonSet cannot add `hosts.toml` files there that survive. This
//! file is GKE's supported way: each `registryHosts` entry becomes
//! `/etc/containerd/hosts.d/<server>/hosts.toml` on every node of the pool,
//! kept through upgrades and re-creation.
//!
//! Schema, from the documents cited in the module above:
//! <https://docs.cloud.google.com/kubernetes-engine/docs/how-to/customize-containerd-configuration>
//! and the API reference
//! <https://docs.cloud.google.com/kubernetes-engine/docs/reference/rest/v1/ContainerdConfig>:
//! `registryHosts[]` (at most 25) of `server` (a host, port allowed, no
//! scheme or path) and `hosts[]` (at most 10) of `host` (scheme allowed:
//! `http` or `https`), `capabilities` (`HOST_CAPABILITY_PULL`,
//! `HOST_CAPABILITY_RESOLVE`, `HOST_CAPABILITY_PUSH`) and `dialTimeout` (a
//! protobuf Duration string, `"1s"`, at most 180s). These are the YAML keys
//! gcloud's `LoadContainerdConfigFromYAML` accepts; it refuses any other.
//!
//! GKE writes `server` into hosts.toml as given, without a scheme, which
//! containerd turns into `https://<server>`: for `docker.io` that is not
//! Docker Hub's API host (containerd maps `docker.io` to
//! `registry-1.docker.io` only when `server` is absent). So after wharf's
//! host comes the upstream itself as a second host, unless it is exactly
//! `https://<server>`; the result is tried in the same order as the
//! `hosts.toml` of `hosts_dir.rs`: wharf, then the upstream.

use super::{proto_duration, NodeConfigError, Plan};

/// GKE's limits (the API reference).
pub const MAX_REGISTRY_HOSTS: usize = 25;

/// One `registryHosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryHostConfig {
    pub server: String,
    pub hosts: Vec<HostConfig>,
}

/// One `hosts` entry of a `registryHosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    pub host: String,
    pub capabilities: [&'static str; 2],
    /// `dialTimeout`, protobuf Duration form; `None` leaves containerd's 30s.
    pub dial_timeout: Option<String>,
}

const PULL_RESOLVE: [&str; 2] = ["HOST_CAPABILITY_PULL", "HOST_CAPABILITY_RESOLVE"];

/// The `registryHosts` list for the plan.
pub fn registry_hosts(plan: &Plan) -> Result<Vec<RegistryHostConfig>, NodeConfigError> {
    if plan.hosts.len() > MAX_REGISTRY_HOSTS {
        return Err(NodeConfigError::TooManyHosts(plan.hosts.len()));
    }
    Ok(plan
        .hosts
        .iter()
        .map(|h| {
            let mut hosts = vec![HostConfig {
                host: plan.mirror.clone(),
                capabilities: PULL_RESOLVE,
                dial_timeout: Some(proto_duration(plan.dial_timeout)),
            }];
            if h.server != format!("https://{}", h.host) {
                hosts.push(HostConfig {
                    host: h.server.clone(),
                    capabilities: PULL_RESOLVE,
                    dial_timeout: None,
                });
            }
            RegistryHostConfig {
                server: h.host.clone(),
                hosts,
            }
        })
        .collect())
}

/// The whole file, YAML. Every string is written double-quoted in JSON's
/// escaping, which YAML reads the same way.
pub fn render(plan: &Plan) -> Result<String, NodeConfigError> {
    let q = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let mut out = String::from(
        "# GKE containerd configuration for node pools, written by `wharf node-config gke`.\n\
         # Pulls of these registries' images go to the wharf on each node first, and to\n\
         # the registry itself when wharf does not answer. Apply it with\n\
         #   gcloud container node-pools update POOL --cluster=CLUSTER --location=LOCATION \\\n\
         #     --containerd-config-from-file=THIS_FILE\n\
         # Schema: https://docs.cloud.google.com/kubernetes-engine/docs/how-to/customize-containerd-configuration\n\
         registryHosts:\n",
    );
    for (r, h) in registry_hosts(plan)?.iter().zip(&plan.hosts) {
        out.push_str(&format!(
            "# upstream {}\n- server: {}\n  hosts:\n",
            q(&h.upstream),
            q(&r.server)
        ));
        for host in &r.hosts {
            out.push_str(&format!("  - host: {}\n    capabilities:\n", q(&host.host)));
            for c in host.capabilities {
                out.push_str(&format!("    - {c}\n"));
            }
            if let Some(t) = &host.dial_timeout {
                out.push_str(&format!("    dialTimeout: {}\n", q(t)));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodeconfig::tests::plan;
    use crate::nodeconfig::{RegistryHost, DEFAULT_DIAL_TIMEOUT};

    #[test]
    fn one_entry_per_host_wharf_first_then_the_upstream() {
        let p = plan();
        let r = registry_hosts(&p).unwrap();
        let servers: Vec<&str> = r.iter().map(|r| r.server.as_str()).collect();
        let hosts: Vec<&str> = p.hosts.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(servers, hosts);
        for (r, h) in r.iter().zip(&p.hosts) {
            assert_eq!(r.hosts[0].host, "http://127.0.0.1:5050");
            assert_eq!(r.hosts[0].dial_timeout.as_deref(), Some("1s"));
            assert_eq!(r.hosts[0].capabilities, PULL_RESOLVE);
            match r.hosts.get(1) {
                // https://<server> is what GKE's server line means already.
                None => assert_eq!(h.server, format!("https://{}", h.host)),
                Some(up) => {
                    assert_eq!(up.host, h.server);
                    assert_eq!(up.dial_timeout, None);
                    assert_eq!(r.hosts.len(), 2);
                }
            }
        }
        assert_eq!(r[0].hosts[1].host, "https://registry-1.docker.io");
        assert_eq!(
            r[2].hosts.len(),
            1,
            "registry-1.docker.io is its own server"
        );
        assert_eq!(r[3].hosts.len(), 1, "europe-docker.pkg.dev");
        assert_eq!(r[4].hosts[1].host, "http://10.1.2.3:5000");
    }

    /// The text, read line by line against the only shapes it may have: a
    /// comment, `registryHosts:`, and the entries of [`registry_hosts`] in
    /// order. (The integration test reads it with PyYAML and GKE's schema.)
    #[test]
    fn yaml_has_exactly_the_entries() {
        let p = plan();
        let text = render(&p).unwrap();
        let mut expected = vec!["registryHosts:".to_string()];
        for r in registry_hosts(&p).unwrap() {
            expected.push(format!("- server: \"{}\"", r.server));
            expected.push("  hosts:".into());
            for h in r.hosts {
                expected.push(format!("  - host: \"{}\"", h.host));
                expected.push("    capabilities:".into());
                expected.push("    - HOST_CAPABILITY_PULL".into());
                expected.push("    - HOST_CAPABILITY_RESOLVE".into());
                if let Some(t) = h.dial_timeout {
                    expected.push(format!("    dialTimeout: \"{t}\""));
                }
            }
        }
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines, expected);
        for l in text.lines() {
            assert!(!l.contains('\t') && l.is_ascii(), "{l:?}");
        }
    }

    #[test]
    fn never_more_than_gke_takes_and_no_credentials() {
        let mut p = plan();
        let h = p.hosts[0].clone();
        p.hosts = (0..26)
            .map(|i| RegistryHost {
                host: format!("r{i}.example"),
                ..h.clone()
            })
            .collect();
        let e = render(&p).unwrap_err();
        assert!(matches!(e, NodeConfigError::TooManyHosts(26)), "{e}");
        p.hosts.truncate(25);
        assert!(render(&p).is_ok());

        // The config's only credential source is the metadata server; a
        // password in a file or inline never reaches the plan.
        let dir = tempfile::tempdir().unwrap();
        let secret = "s3cr3t-node-config-token";
        let pw = dir.path().join("pw");
        std::fs::write(&pw, secret).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        let cfg = format!(
            "[server]\nplain_http = true\n[[upstream]]\nname = \"a\"\nurl = \"https://r.example\"\naliases = [\"r.example\"]\n[upstream.credentials]\nusername = \"robot\"\npassword_file = {:?}\n[[upstream]]\nname = \"b\"\nurl = \"https://s.example\"\naliases = [\"s.example\"]\n[upstream.credentials]\nusername = \"robot2\"\npassword = \"{secret}\"\n",
            pw.display().to_string()
        );
        let c = crate::config::Config::from_toml(&cfg, None).unwrap();
        let p = Plan::new(&c, None, DEFAULT_DIAL_TIMEOUT).unwrap();
        let mut all = render(&p).unwrap();
        for h in &p.hosts {
            all.push_str(&super::super::hosts_dir::render(&p, h));
        }
        assert!(!all.contains(secret) && !all.contains("robot"), "{all}");
    }
}
