//! Real clients pointed at wharf: registries.conf files for skopeo and
//! podman whose fallback is a dead port, skopeo copies into `dir:` layouts,
//! and comparing them byte for byte. (containerd's `ctr` lives with the pull
//! tests, dockerd with its own.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{try_run, DEAD_PORT};

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
