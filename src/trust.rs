//! `wharf trust`: exactly what each client needs to pull through this wharf over
//! TLS with nothing but wharf's CA — no `insecure-registries`, no `insecure =
//! true`. Printed as text, or written as files under a target directory that
//! mirrors the real paths (`etc/docker/certs.d/...`), ready to copy onto a node.

use std::path::{Path, PathBuf};

use crate::config::{Config, TlsMode};

/// One file a client needs, relative to the root of the target directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustFile {
    pub path: PathBuf,
    pub contents: String,
}

/// The default `host:port` clients should use: the first configured name that
/// is not loopback (dockerd ignores TLS for loopback mirrors), else the first.
pub fn default_host(config: &Config) -> String {
    let port = config.listen.port();
    let names: Vec<String> = match &config.tls.mode {
        TlsMode::Auto { names } => names.clone(),
        _ if !config.listen.ip().is_unspecified() => vec![config.listen.ip().to_string()],
        _ => crate::tls::default_names(config.listen),
    };
    let loopback = |n: &str| {
        n == "localhost"
            || n.parse::<std::net::IpAddr>()
                .map(|ip| ip.is_loopback())
                .unwrap_or(false)
    };
    let name = names
        .iter()
        .find(|n| !loopback(n))
        .or(names.first())
        .cloned()
        .unwrap_or_else(|| "localhost".into());
    if name.contains(':') {
        format!("[{name}]:{port}") // IPv6
    } else {
        format!("{name}:{port}")
    }
}

/// The last certificate of a PEM chain: the root, when the chain carries it.
pub fn last_certificate(chain_pem: &str) -> Option<String> {
    let start = chain_pem.rfind("-----BEGIN CERTIFICATE-----")?;
    let end = chain_pem[start..].find("-----END CERTIFICATE-----")? + start + 25;
    Some(format!("{}\n", &chain_pem[start..end]))
}

/// Every file for every client, for wharf reachable at `host` (`name:port`).
pub fn files(config: &Config, host: &str, ca_pem: &str) -> Vec<TrustFile> {
    let f = |path: String, contents: String| TrustFile {
        path: PathBuf::from(path),
        contents,
    };
    let mut out = vec![
        f("ca.crt".into(), ca_pem.to_owned()),
        // dockerd: the CA path is fixed by host:port; the mirror URL needs https.
        f(
            format!("etc/docker/certs.d/{host}/ca.crt"),
            ca_pem.to_owned(),
        ),
        f(
            "etc/docker/daemon.json".into(),
            format!("{{\n  \"registry-mirrors\": [\"https://{host}\"]\n}}\n"),
        ),
        // podman, skopeo, buildah, CRI-O: per-host CA directory.
        f(
            format!("etc/containers/certs.d/{host}/ca.crt"),
            ca_pem.to_owned(),
        ),
    ];
    let mut registries = String::from("# Pull through wharf; the upstream stays the fallback.\n");
    for u in &config.upstreams {
        for alias in &u.aliases {
            // containerd (GKE nodes): one directory per registry host, ns=<alias>.
            let dir = format!("etc/containerd/certs.d/{alias}");
            out.push(f(format!("{dir}/wharf-ca.crt"), ca_pem.to_owned()));
            out.push(f(
                format!("{dir}/hosts.toml"),
                format!(
                    "# containerd: pull {alias} images through wharf (upstream \"{}\").\nserver = \"{}\"\n\n[host.\"https://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"/{dir}/wharf-ca.crt\"\n",
                    u.name,
                    u.url.as_str().trim_end_matches('/'),
                ),
            ));
            registries.push_str(&format!(
                "\n[[registry]]\nprefix = \"{alias}\"\nlocation = \"{alias}\"\n[[registry.mirror]]\nlocation = \"{host}\"\n"
            ));
        }
    }
    out.push(f(
        "etc/containers/registries.conf.d/50-wharf.conf".into(),
        registries,
    ));
    out
}

/// The human-readable version of [`files`], with where each file goes.
pub fn text(config: &Config, host: &str, ca_pem: &str) -> String {
    let files = files(config, host, ca_pem);
    let get = |p: &str| {
        files
            .iter()
            .find(|f| f.path == Path::new(p))
            .map(|f| f.contents.clone())
            .unwrap_or_default()
    };
    let mut s = format!("# wharf at https://{host}: its CA certificate\n{ca_pem}\n");
    s.push_str(&format!(
        "# dockerd: copy the CA to /etc/docker/certs.d/{host}/ca.crt, then in /etc/docker/daemon.json:\n{}",
        get("etc/docker/daemon.json")
    ));
    s.push_str(&format!(
        "\n# podman / skopeo: copy the CA to /etc/containers/certs.d/{host}/ca.crt, then in\n# /etc/containers/registries.conf.d/50-wharf.conf:\n{}",
        get("etc/containers/registries.conf.d/50-wharf.conf")
    ));
    for f in files.iter().filter(|f| f.path.ends_with("hosts.toml")) {
        s.push_str(&format!(
            "\n# containerd: /{} (with the CA beside it as wharf-ca.crt)\n{}",
            f.path.display(),
            f.contents
        ));
    }
    if config.tls.client_ca.is_some() {
        s.push_str(&format!(
            "\n# wharf requires client certificates (mTLS). Give each client one issued by the client CA:\n#   dockerd:    /etc/docker/certs.d/{host}/client.cert and client.key\n#   containerd: client = [[\"/path/client.cert\", \"/path/client.key\"]] in the [host] block\n#   podman:     /etc/containers/certs.d/{host}/client.cert and client.key\n"
        ));
    }
    s
}

/// Writes [`files`] under `root`.
pub fn write(root: &Path, files: &[TrustFile]) -> std::io::Result<()> {
    for f in files {
        let p = root.join(&f.path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, &f.contents)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_toml(
            r#"
[server]
listen = "0.0.0.0:5443"
[server.tls]
names = ["localhost", "mirror.example", "10.1.2.3"]
[[upstream]]
name = "hub"
url = "https://registry-1.docker.io"
aliases = ["docker.io"]
default = true
[[upstream]]
name = "gar"
url = "https://europe-docker.pkg.dev"
aliases = ["europe-docker.pkg.dev"]
"#,
            None,
        )
        .unwrap()
    }

    #[test]
    fn a_file_for_every_client_and_upstream() {
        let c = config();
        let host = default_host(&c);
        assert_eq!(host, "mirror.example:5443", "the first non-loopback name");
        let files = files(&c, &host, "PEM\n");
        let paths: Vec<String> = files.iter().map(|f| f.path.display().to_string()).collect();
        for p in [
            "ca.crt",
            "etc/docker/certs.d/mirror.example:5443/ca.crt",
            "etc/docker/daemon.json",
            "etc/containers/certs.d/mirror.example:5443/ca.crt",
            "etc/containers/registries.conf.d/50-wharf.conf",
            "etc/containerd/certs.d/docker.io/hosts.toml",
            "etc/containerd/certs.d/europe-docker.pkg.dev/hosts.toml",
            "etc/containerd/certs.d/europe-docker.pkg.dev/wharf-ca.crt",
        ] {
            assert!(paths.contains(&p.to_string()), "{p} in {paths:?}");
        }
        let daemon = &files
            .iter()
            .find(|f| f.path.ends_with("daemon.json"))
            .unwrap()
            .contents;
        let v: serde_json::Value = serde_json::from_str(daemon).unwrap();
        assert_eq!(v["registry-mirrors"][0], "https://mirror.example:5443");
        let hosts = &files
            .iter()
            .find(|f| f.path.ends_with("europe-docker.pkg.dev/hosts.toml"))
            .unwrap()
            .contents;
        let t: toml::Value = toml::from_str(hosts).unwrap();
        assert_eq!(t["server"].as_str(), Some("https://europe-docker.pkg.dev"));
        let h = &t["host"]["https://mirror.example:5443"];
        assert_eq!(
            h["ca"].as_str(),
            Some("/etc/containerd/certs.d/europe-docker.pkg.dev/wharf-ca.crt")
        );
        assert_eq!(h["capabilities"].as_array().unwrap().len(), 2);
        let reg = &files
            .iter()
            .find(|f| f.path.ends_with("50-wharf.conf"))
            .unwrap()
            .contents;
        let r: toml::Value = toml::from_str(reg).unwrap();
        assert_eq!(r["registry"].as_array().unwrap().len(), 2);
        assert!(
            !reg.contains("insecure"),
            "TLS with a trusted CA needs no insecure flag"
        );
        assert!(text(&c, &host, "PEM\n").contains("/etc/docker/certs.d/mirror.example:5443/ca.crt"));
    }

    #[test]
    fn last_certificate_of_a_chain() {
        let chain = "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n";
        assert_eq!(
            last_certificate(chain).unwrap(),
            "-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n"
        );
        assert_eq!(last_certificate("nothing"), None);
    }
}
