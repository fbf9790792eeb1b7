//! Real clients pointed at wharf: registries.conf files for skopeo and
//! podman whose fallback is a dead port, skopeo copies into `dir:` layouts,
//! and comparing them byte for byte; [`Skopeo`], the same on the host or
//! inside a [`Netns`], trusting a mirror's CA. (containerd and dockerd have
//! files of their own.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::netns::exec_in;
use super::{try_run, Netns, DEAD_PORT};

/// A registries.conf whose docker.io primary is a dead port and whose mirror
/// is wharf over plain HTTP, so a failing mirror can never fall back to the
/// real Docker Hub.
pub fn registries_conf(dir: &Path, wharf: SocketAddr) -> PathBuf {
    registries_conf_for(dir, &wharf.to_string(), true)
}

/// The same for a mirror at `host` (`name:port`); `insecure` only for plain HTTP.
pub fn registries_conf_for(dir: &Path, host: &str, insecure: bool) -> PathBuf {
    let p = dir.join("registries.conf");
    std::fs::write(
        &p,
        format!(
            "unqualified-search-registries = [\"docker.io\"]\n[[registry]]\nprefix = \"docker.io\"\nlocation = \"127.0.0.1:{DEAD_PORT}\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{host}\"\n{}",
            if insecure { "insecure = true\n" } else { "" }
        ),
    )
    .unwrap();
    p
}

/// `skopeo copy` of `src` (a docker:// reference) into a `dir:` directory, which
/// keeps manifests and blobs byte for byte, so two copies can be compared.
pub fn skopeo_to_dir(reg_conf: Option<&Path>, src: &str, dest: &Path, all: bool) -> (bool, String) {
    let mut c = Command::new("skopeo");
    if let Some(r) = reg_conf {
        c.arg("--registries-conf").arg(r);
    }
    c.args(["copy", "--src-tls-verify=false"]);
    if all {
        c.arg("--all");
    }
    c.arg(src).arg(format!("dir:{}", dest.display()));
    try_run(&mut c)
}

/// Every file of a `dir:` copy with its bytes, for comparisons.
pub fn dir_contents(p: &Path) -> HashMap<String, Vec<u8>> {
    std::fs::read_dir(p)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// skopeo 1.9 with a registries.conf whose docker.io primary is a dead port
/// and whose one mirror is `host` (`198.18.0.1:5000`), on the host or in a
/// [`Netns`].
pub struct Skopeo {
    conf: PathBuf,
    cert_dir: Option<PathBuf>,
    ns: Option<String>,
}

impl Skopeo {
    /// Files go to `dir`. With `ca`, the mirror speaks TLS and skopeo trusts
    /// that CA only (`--src-cert-dir`); without, the mirror is `insecure`
    /// (plain HTTP, or TLS unverified).
    pub fn mirror(dir: &Path, host: &str, ca: Option<&Path>) -> Skopeo {
        std::fs::create_dir_all(dir).unwrap();
        let conf = registries_conf_for(dir, host, ca.is_none());
        let cert_dir = ca.map(|ca| {
            let d = dir.join("certs");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::copy(ca, d.join("ca.crt")).unwrap();
            d
        });
        Skopeo {
            conf,
            cert_dir,
            ns: None,
        }
    }

    /// Runs skopeo inside `ns` (which must outlive this).
    pub fn in_ns(mut self, ns: &Netns) -> Skopeo {
        self.ns = Some(ns.name.clone());
        self
    }

    /// `skopeo --registries-conf CONF SUBCOMMAND [--src-cert-dir DIR]`, for
    /// subcommands reading from a registry (`copy`, `inspect`).
    pub fn command(&self, subcommand: &str) -> Command {
        let mut c = exec_in(self.ns.as_deref(), "skopeo");
        c.arg("--registries-conf").arg(&self.conf).arg(subcommand);
        if let Some(d) = &self.cert_dir {
            let flag = if subcommand == "copy" {
                "--src-cert-dir"
            } else {
                "--cert-dir"
            };
            c.arg(flag).arg(d);
        }
        c
    }

    /// `skopeo copy` of `src` (`docker://docker.io/library/test:1`) into a
    /// `dir:` directory, byte for byte (see [`dir_contents`]).
    pub fn copy_to_dir(&self, src: &str, dest: &Path, all: bool) -> (bool, String) {
        let mut c = self.command("copy");
        if all {
            c.arg("--all");
        }
        c.arg(src).arg(format!("dir:{}", dest.display()));
        try_run(&mut c)
    }
}
