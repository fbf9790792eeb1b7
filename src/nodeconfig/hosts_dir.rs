//! `wharf node-config hosts-dir DIR`: one containerd `hosts.toml` per
//! registry host of the [`Plan`], `DIR/<host>/hosts.toml`
//! (<https://github.com/containerd/containerd/blob/main/docs/hosts.md>), for a
//! containerd whose CRI registry `config_path` is DIR. containerd reads these
//! files on each pull: no restart.
//!
//! Each file sends pulls (`pull`, `resolve`) to wharf first and names the
//! upstream as `server`, the fallback containerd uses whenever wharf refuses
//! the connection, does not take it within `dial_timeout`, or answers an
//! error status.
//!
//! What it replaces, and how it is undone:
//!
//! - wharf's files begin with [`MARKER`]; such a file is rewritten freely.
//! - A `hosts.toml` wharf did not write is left alone and the run fails,
//!   unless `--backup`: then it is moved to `DIR/_wharf-backup/<host>/hosts.toml`
//!   first (once: a backup already there is never overwritten, so an init
//!   container that runs at every pod start keeps the operator's original).
//!   Other files in `DIR/<host>/` (certificates) stay where they are.
//! - Hosts wharf wrote earlier but no longer configures are removed (and
//!   their backup put back), so dropping an alias from the config takes it
//!   off the node.
//! - `--restore` removes every file of wharf's and moves each backup back,
//!   then removes `_wharf-backup`. A `hosts.toml` someone wrote after
//!   wharf's (no marker) is kept, and so is its backup, for the operator.
//!
//! Every check happens before the first change, so a refusal changes
//! nothing. Files are written to a temporary name, synced and renamed, so
//! containerd never reads half a file. `_wharf-backup` can never be a
//! registry host's directory (no host name holds `_`).

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{go_duration, toml_str, NodeConfigError, Plan, RegistryHost};

/// The first line of every file wharf writes.
pub const MARKER: &str = "# Written by `wharf node-config hosts-dir`";
/// Under DIR: the files wharf replaced, one directory per host.
pub const BACKUP_DIR: &str = "_wharf-backup";
const FILE: &str = "hosts.toml";
const TEMP: &str = ".hosts.toml.wharf-tmp";

/// What a run did, for the operator (paths under DIR).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub written: Vec<PathBuf>,
    pub backed_up: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
    pub restored: Vec<PathBuf>,
    /// Files without the marker, written over wharf's, that `--restore` left
    /// in place (with wharf's backup of the original beside them).
    pub kept: Vec<PathBuf>,
}

/// The `hosts.toml` for one host of the plan.
pub fn render(plan: &Plan, h: &RegistryHost) -> String {
    format!(
        "{MARKER} for upstream {upstream}:\n\
         # pulls of {host} images go to wharf first, and to {server} when wharf\n\
         # does not answer. `wharf node-config hosts-dir DIR --restore` removes it.\n\
         server = {server_q}\n\
         \n\
         [host.{mirror_q}]\n  capabilities = [\"pull\", \"resolve\"]\n  dial_timeout = {timeout}\n",
        upstream = toml_str(&h.upstream),
        host = h.host,
        server = h.server,
        server_q = toml_str(&h.server),
        mirror_q = toml_str(&plan.mirror),
        timeout = toml_str(&go_duration(plan.dial_timeout)),
    )
}

/// Writes the plan's files under `dir` (created if missing), as the module
/// doc says.
pub fn write(dir: &Path, plan: &Plan, backup: bool) -> Result<Report, NodeConfigError> {
    fs::create_dir_all(dir).map_err(NodeConfigError::io(dir))?;
    let mut report = Report::default();
    // Check everything first.
    let mut to_back_up = Vec::new();
    for h in &plan.hosts {
        let path = dir.join(&h.host).join(FILE);
        if ours(&path)? != Some(false) {
            continue;
        }
        let saved = dir.join(BACKUP_DIR).join(&h.host).join(FILE);
        if !backup {
            return Err(NodeConfigError::Foreign {
                path,
                backup: saved,
            });
        }
        if exists(&saved)? {
            return Err(NodeConfigError::BackupTaken {
                path,
                backup: saved,
            });
        }
        to_back_up.push((path, saved));
    }
    for (path, saved) in to_back_up {
        let parent = saved.parent().expect("backup has a parent");
        fs::create_dir_all(parent).map_err(NodeConfigError::io(parent))?;
        fs::rename(&path, &saved).map_err(NodeConfigError::io(&path))?;
        sync_dir(parent)?;
        report.backed_up.push(path);
    }
    for h in &plan.hosts {
        let host_dir = dir.join(&h.host);
        fs::create_dir_all(&host_dir).map_err(NodeConfigError::io(&host_dir))?;
        let path = host_dir.join(FILE);
        write_atomic(&path, render(plan, h).as_bytes())?;
        report.written.push(path);
    }
    // Hosts of an earlier run that are no longer configured.
    let planned: HashSet<&str> = plan.hosts.iter().map(|h| h.host.as_str()).collect();
    for name in host_dirs(dir)? {
        if !planned.contains(name.as_str()) {
            undo_host(dir, &name, &mut report)?;
        }
    }
    Ok(report)
}

/// Undoes every [`write`] under `dir`.
pub fn restore(dir: &Path) -> Result<Report, NodeConfigError> {
    let mut report = Report::default();
    if !exists(dir)? {
        return Ok(report);
    }
    let mut names = host_dirs(dir)?;
    // Backups whose host directory is gone altogether.
    let backups = dir.join(BACKUP_DIR);
    if exists(&backups)? {
        for name in entries(&backups)? {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    for name in names {
        undo_host(dir, &name, &mut report)?;
    }
    remove_if_empty(&backups)?;
    Ok(report)
}

/// Removes wharf's file for `name` (if it is wharf's) and puts its backup back.
fn undo_host(dir: &Path, name: &str, report: &mut Report) -> Result<(), NodeConfigError> {
    let host_dir = dir.join(name);
    let path = host_dir.join(FILE);
    let saved_dir = dir.join(BACKUP_DIR).join(name);
    let saved = saved_dir.join(FILE);
    match ours(&path)? {
        Some(true) => {
            fs::remove_file(&path).map_err(NodeConfigError::io(&path))?;
            report.removed.push(path.clone());
        }
        Some(false) => {
            // Someone else's file: theirs to keep, and so is the backup.
            if exists(&saved)? {
                report.kept.push(path);
            }
            return Ok(());
        }
        None => {}
    }
    if exists(&saved)? {
        fs::create_dir_all(&host_dir).map_err(NodeConfigError::io(&host_dir))?;
        fs::rename(&saved, &path).map_err(NodeConfigError::io(&saved))?;
        sync_dir(&host_dir)?;
        report.restored.push(path);
        remove_if_empty(&saved_dir)?;
    } else {
        remove_if_empty(&host_dir)?;
    }
    Ok(())
}

/// `Some(true)`: a file wharf wrote; `Some(false)`: someone else's; `None`:
/// no file.
fn ours(path: &Path) -> Result<Option<bool>, NodeConfigError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes.starts_with(MARKER.as_bytes()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(NodeConfigError::Io {
            path: path.to_owned(),
            source: e,
        }),
    }
}

fn exists(path: &Path) -> Result<bool, NodeConfigError> {
    path.try_exists().map_err(NodeConfigError::io(path))
}

/// The directories under `dir` that may be registry hosts.
fn host_dirs(dir: &Path) -> Result<Vec<String>, NodeConfigError> {
    Ok(entries(dir)?
        .into_iter()
        .filter(|n| n != BACKUP_DIR && super::is_registry_host(n))
        .collect())
}

/// The names of the directories in `dir`.
fn entries(dir: &Path) -> Result<Vec<String>, NodeConfigError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(NodeConfigError::io(dir))? {
        let e = e.map_err(NodeConfigError::io(dir))?;
        let is_dir = e
            .file_type()
            .map_err(NodeConfigError::io(e.path()))?
            .is_dir();
        if let (true, Some(name)) = (is_dir, e.file_name().to_str()) {
            out.push(name.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

fn remove_if_empty(dir: &Path) -> Result<(), NodeConfigError> {
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::DirectoryNotEmpty
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(NodeConfigError::Io {
            path: dir.to_owned(),
            source: e,
        }),
    }
}

/// Temporary file in the same directory, fsync, rename, fsync the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), NodeConfigError> {
    let parent = path.parent().expect("file has a parent");
    let tmp = parent.join(TEMP);
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(NodeConfigError::Io {
            path: path.to_owned(),
            source: e,
        });
    }
    sync_dir(parent)
}

fn sync_dir(dir: &Path) -> Result<(), NodeConfigError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(NodeConfigError::io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodeconfig::tests::plan;

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap()
    }

    #[test]
    fn each_file_parses_and_names_wharf_then_the_upstream() {
        let p = plan();
        for h in &p.hosts {
            let text = render(&p, h);
            assert!(text.starts_with(MARKER), "{text}");
            let v: toml::Table = toml::from_str(&text).unwrap();
            assert_eq!(v["server"].as_str(), Some(h.server.as_str()));
            let hosts = v["host"].as_table().unwrap();
            assert_eq!(hosts.len(), 1, "{text}");
            let m = hosts["http://127.0.0.1:5050"].as_table().unwrap();
            let caps: Vec<&str> = m["capabilities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect();
            assert_eq!(caps, ["pull", "resolve"]);
            assert_eq!(m["dial_timeout"].as_str(), Some("1s"));
            assert_eq!(m.len(), 2, "nothing else (no skip_verify, no ca)");
            assert_eq!(v.len(), 2, "{text}");
        }
    }

    #[test]
    fn writes_every_host_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let p = plan();
        let r = write(d.path(), &p, false).unwrap();
        assert_eq!(r.written.len(), 5);
        let mut dirs = entries(d.path()).unwrap();
        dirs.sort();
        assert_eq!(
            dirs,
            [
                "docker.io",
                "europe-docker.pkg.dev",
                "index.docker.io",
                "registry-1.docker.io",
                "registry.internal:5000"
            ]
        );
        for h in &p.hosts {
            let files = entries_any(&d.path().join(&h.host));
            assert_eq!(files, [FILE], "no temporary file left");
        }
        // Idempotent: a second run rewrites its own files.
        let r = write(d.path(), &p, false).unwrap();
        assert_eq!((r.written.len(), r.backed_up.len()), (5, 0));
    }

    fn entries_any(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn foreign_files_are_refused_or_backed_up_once_and_restored() {
        let d = tempfile::tempdir().unwrap();
        let p = plan();
        let theirs =
            "server = \"https://registry-1.docker.io\"\n[host.\"https://mirror.gcr.io\"]\n";
        let hub = d.path().join("docker.io");
        fs::create_dir_all(&hub).unwrap();
        fs::write(hub.join(FILE), theirs).unwrap();
        fs::write(hub.join("ca.crt"), "a certificate").unwrap();
        let other = d.path().join("quay.io");
        fs::create_dir_all(&other).unwrap();
        fs::write(other.join(FILE), "server = \"https://quay.io\"\n").unwrap();

        // Without --backup: refused, and nothing changed.
        let e = write(d.path(), &p, false).unwrap_err();
        assert!(matches!(e, NodeConfigError::Foreign { .. }), "{e}");
        assert_eq!(entries(d.path()).unwrap(), ["docker.io", "quay.io"]);
        assert_eq!(read(&hub.join(FILE)), theirs);

        let r = write(d.path(), &p, true).unwrap();
        assert_eq!(r.backed_up, [hub.join(FILE)]);
        let saved = d.path().join(BACKUP_DIR).join("docker.io").join(FILE);
        assert_eq!(read(&saved), theirs);
        assert!(read(&hub.join(FILE)).starts_with(MARKER));
        assert_eq!(read(&hub.join("ca.crt")), "a certificate");
        // A host wharf does not configure is never touched.
        assert_eq!(read(&other.join(FILE)), "server = \"https://quay.io\"\n");
        // At the next pod start the backup is kept as it was.
        let r = write(d.path(), &p, true).unwrap();
        assert!(r.backed_up.is_empty());
        assert_eq!(read(&saved), theirs);

        // Someone replaced wharf's file while a backup exists: refused.
        fs::write(hub.join(FILE), "server = \"https://x\"\n").unwrap();
        let e = write(d.path(), &p, true).unwrap_err();
        assert!(matches!(e, NodeConfigError::BackupTaken { .. }), "{e}");
        fs::write(hub.join(FILE), render(&p, &p.hosts[0])).unwrap();

        let r = restore(d.path()).unwrap();
        assert_eq!(r.restored, [hub.join(FILE)]);
        assert_eq!(r.removed.len(), 5);
        assert_eq!(read(&hub.join(FILE)), theirs);
        assert_eq!(read(&hub.join("ca.crt")), "a certificate");
        assert_eq!(entries(d.path()).unwrap(), ["docker.io", "quay.io"]);
        // Restoring twice is harmless.
        assert_eq!(restore(d.path()).unwrap(), Report::default());
    }

    #[test]
    fn hosts_no_longer_configured_are_taken_off() {
        let d = tempfile::tempdir().unwrap();
        let mut p = plan();
        write(d.path(), &p, false).unwrap();
        p.hosts.retain(|h| h.upstream != "private");
        let r = write(d.path(), &p, false).unwrap();
        assert_eq!(
            r.removed,
            [d.path().join("registry.internal:5000").join(FILE)]
        );
        assert!(!d.path().join("registry.internal:5000").exists());
    }
}
