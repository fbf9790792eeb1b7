//! `wharf node-config hosts-dir|gke|cache-dir`: arguments, and the runs that
//! print what they did. Like `bundle::cli`, these return `anyhow` errors for
//! `main` to print; the configuration is loaded by `main`'s loader.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::config::Config;

use super::{cache_dir, gke, hosts_dir, Plan, DEFAULT_DIAL_TIMEOUT};

#[derive(clap::Subcommand)]
pub enum NodeConfigCommand {
    /// Write containerd hosts.toml files, DIR/<registry host>/hosts.toml, for
    /// every alias of every upstream: pulls go to wharf first, to the
    /// upstream when wharf does not answer. For a containerd whose CRI
    /// registry config_path is DIR (kubeadm, k3s, EKS/AKS images), e.g.
    /// /etc/containerd/certs.d. GKE nodes: use `node-config gke`.
    HostsDir {
        #[arg(long, short)]
        config: Option<PathBuf>,
        dir: PathBuf,
        /// wharf as containerd reaches it, http(s)://host:port (default:
        /// http:// and the listen address; the config must be plain_http).
        #[arg(long, value_name = "URL")]
        mirror: Option<String>,
        /// How long containerd waits for a connection to wharf before it
        /// tries the upstream (Go form as containerd takes it: 1s, 500ms).
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = dial_timeout)]
        dial_timeout: Duration,
        /// Move a hosts.toml wharf did not write to DIR/_wharf-backup/ (once)
        /// instead of refusing to replace it.
        #[arg(long, conflicts_with = "restore")]
        backup: bool,
        /// Remove wharf's files and put the backups back (no config needed).
        #[arg(long, conflicts_with_all = ["mirror", "config"])]
        restore: bool,
    },
    /// Print GKE's containerd configuration file for node pools
    /// (`gcloud container node-pools update POOL --containerd-config-from-file=FILE`):
    /// a registryHosts entry for every alias of every upstream.
    Gke {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// wharf as containerd reaches it (default: http:// and the listen
        /// address; the config must be plain_http).
        #[arg(long, value_name = "URL")]
        mirror: Option<String>,
        /// dialTimeout of wharf's entry (at most 180s).
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = dial_timeout)]
        dial_timeout: Duration,
    },
    /// Create wharf's cache directory if missing and give it to UID:GID, mode
    /// 0700 (the DaemonSet's init container: a hostPath ignores fsGroup).
    CacheDir {
        dir: PathBuf,
        #[arg(long, value_name = "UID:GID", default_value = "65532:65532")]
        owner: String,
    },
}

fn dial_timeout(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Runs `cmd`; `load` reads the configuration (`main`'s, with its context).
pub fn run(
    cmd: NodeConfigCommand,
    load: impl FnOnce(Option<PathBuf>) -> anyhow::Result<Config>,
) -> anyhow::Result<()> {
    match cmd {
        NodeConfigCommand::HostsDir { dir, restore, .. } if restore => {
            let r = hosts_dir::restore(&dir)?;
            print_report(&r);
        }
        NodeConfigCommand::HostsDir {
            config,
            dir,
            mirror,
            dial_timeout,
            backup,
            ..
        } => {
            let plan = Plan::new(&load(config)?, mirror.as_deref(), dial_timeout)?;
            let r = hosts_dir::write(&dir, &plan, backup)
                .with_context(|| format!("hosts.toml files under {}", dir.display()))?;
            print_report(&r);
        }
        NodeConfigCommand::Gke {
            config,
            mirror,
            dial_timeout,
        } => {
            let plan = Plan::new(&load(config)?, mirror.as_deref(), dial_timeout)?;
            print!("{}", gke::render(&plan)?);
        }
        NodeConfigCommand::CacheDir { dir, owner } => {
            let (uid, gid) = cache_dir::parse_owner(&owner)?;
            cache_dir::prepare(&dir, uid, gid)?;
            println!("{}: owner {uid}:{gid}, mode 0700", dir.display());
        }
    }
    Ok(())
}

fn print_report(r: &hosts_dir::Report) {
    let lines = [
        ("backed up", &r.backed_up),
        ("wrote", &r.written),
        ("removed", &r.removed),
        ("restored", &r.restored),
        ("kept (not wharf's; its backup stays)", &r.kept),
    ];
    for (what, paths) in lines {
        for p in paths {
            println!("{what} {}", p.display());
        }
    }
}

// `DEFAULT_DIAL_TIMEOUT` and the flags' default must agree.
const _: () =
    assert!(DEFAULT_DIAL_TIMEOUT.as_secs() == 1 && DEFAULT_DIAL_TIMEOUT.subsec_nanos() == 0);
