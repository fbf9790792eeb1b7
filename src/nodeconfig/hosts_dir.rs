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
//!   unless `--backup`: then it is kept as `DIR/_wharf-backup/<host>/hosts.toml`
//!   (a hard link, made once: a backup already there is never overwritten,
//!   so an init container that runs at every pod start keeps the operator's
//!   original) and replaced by wharf's in one rename, so containerd finds
//!   one file or the other whenever a run stops. Other files in
//!   `DIR/<host>/` (certificates) stay where they are. A file someone wrote
//!   over wharf's while a backup exists (configuration management) is
//!   theirs: it stays, reported as kept, and the other hosts are written.
//! - Anything in DIR that is not a regular file where a `hosts.toml` is
//!   expected (a symlink, a FIFO) is someone else's and is never read or
//!   written through; a host or backup directory that is a symlink is
//!   refused. The temporary file is created with `O_EXCL | O_NOFOLLOW`.
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
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
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
    /// Files without the marker, written over wharf's while a backup of the
    /// original exists, that a run or `--restore` left in place (with the
    /// backup beside them).
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
    real_dir_or_absent(&dir.join(BACKUP_DIR))?;
    let (mut to_back_up, mut keep) = (HashSet::new(), HashSet::new());
    for h in &plan.hosts {
        real_dir_or_absent(&dir.join(&h.host))?;
        real_dir_or_absent(&dir.join(BACKUP_DIR).join(&h.host))?;
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
        // A backup that is this very file (a hard link) is one an
        // interrupted run made: carry on from there. Another backup means
        // someone (configuration management) wrote this file over wharf's
        // since: theirs stays, with the original's backup, and the other
        // hosts are still written. Failing would keep the init container,
        // and so wharf, down on that node at every start.
        if exists(&saved)? && !same_file(&path, &saved)? {
            keep.insert(h.host.as_str());
            report.kept.push(path);
            continue;
        }
        to_back_up.insert(h.host.as_str());
    }
    // Each file is replaced in one rename, after its backup was linked:
    // containerd finds either the operator's file or wharf's, never none,
    // whenever this run stops.
    for h in plan
        .hosts
        .iter()
        .filter(|h| !keep.contains(h.host.as_str()))
    {
        let host_dir = dir.join(&h.host);
        fs::create_dir_all(&host_dir).map_err(NodeConfigError::io(&host_dir))?;
        let path = host_dir.join(FILE);
        let tmp = TempFile::create(&host_dir, render(plan, h).as_bytes())?;
        if to_back_up.contains(h.host.as_str()) {
            let saved_dir = dir.join(BACKUP_DIR).join(&h.host);
            let saved = saved_dir.join(FILE);
            fs::create_dir_all(&saved_dir).map_err(NodeConfigError::io(&saved_dir))?;
            if !exists(&saved)? {
                // linkat without AT_SYMLINK_FOLLOW: a symlink is saved as
                // itself, never the file it points to.
                fs::hard_link(&path, &saved).map_err(NodeConfigError::io(&saved))?;
            }
            sync_dir(&saved_dir)?;
            report.backed_up.push(path.clone());
        }
        tmp.persist(&path)?;
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

/// `Some(true)`: a file wharf wrote; `Some(false)`: someone else's (also
/// anything that is not a regular file: a symlink is never read through, a
/// FIFO never waited on); `None`: no file.
fn ours(path: &Path) -> Result<Option<bool>, NodeConfigError> {
    match fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_file() => return Ok(Some(false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(NodeConfigError::Io {
                path: path.to_owned(),
                source: e,
            })
        }
    }
    let mut head = vec![0; MARKER.len()];
    let read = (|| {
        let mut f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)?;
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..])? {
                0 => break,
                k => n += k,
            }
        }
        Ok::<_, std::io::Error>(n)
    })();
    match read {
        Ok(n) => Ok(Some(n == head.len() && head == MARKER.as_bytes())),
        // Replaced by something else since the check above.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Ok(Some(false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(NodeConfigError::Io {
            path: path.to_owned(),
            source: e,
        }),
    }
}

/// `path` is a directory itself (not a symlink to one) or absent: wharf
/// never writes through a link planted in DIR.
fn real_dir_or_absent(path: &Path) -> Result<(), NodeConfigError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => Ok(()),
        Ok(_) => Err(NodeConfigError::NotADirectory {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NodeConfigError::Io {
            path: path.to_owned(),
            source: e,
        }),
    }
}

/// Both names are one file (device and inode, links not followed).
fn same_file(a: &Path, b: &Path) -> Result<bool, NodeConfigError> {
    let a = fs::symlink_metadata(a).map_err(NodeConfigError::io(a))?;
    let b = fs::symlink_metadata(b).map_err(NodeConfigError::io(b))?;
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
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

/// A new file in the destination's directory, written and synced, under a
/// name of this process's own: created with `O_EXCL | O_NOFOLLOW`, so a
/// symlink planted at that name is never written through (it is removed
/// first, as a leftover of a run that crashed). Removed on drop unless
/// persisted.
struct TempFile {
    path: PathBuf,
    persisted: bool,
}

impl TempFile {
    fn create(dir: &Path, bytes: &[u8]) -> Result<TempFile, NodeConfigError> {
        let path = dir.join(format!("{TEMP}.{}", std::process::id()));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(NodeConfigError::Io { path, source: e }),
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(NodeConfigError::io(&path))?;
        let t = TempFile {
            path,
            persisted: false,
        };
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(NodeConfigError::io(&t.path))?;
        Ok(t)
    }

    /// Renames it to `dest` (same directory) and syncs the directory.
    fn persist(mut self, dest: &Path) -> Result<(), NodeConfigError> {
        fs::rename(&self.path, dest).map_err(NodeConfigError::io(dest))?;
        self.persisted = true;
        sync_dir(dest.parent().expect("file has a parent"))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = fs::remove_file(&self.path);
        }
    }
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

        // Someone replaced wharf's file while a backup exists: theirs and
        // the backup stay, the other hosts are written, and the run
        // succeeds (an init container that failed here would keep wharf
        // down on the node at every start).
        fs::write(hub.join(FILE), "server = \"https://x\"\n").unwrap();
        let r = write(d.path(), &p, true).unwrap();
        assert_eq!(r.kept, [hub.join(FILE)]);
        assert!(r.backed_up.is_empty());
        assert!(!r.written.contains(&hub.join(FILE)));
        assert_eq!(read(&hub.join(FILE)), "server = \"https://x\"\n");
        assert_eq!(read(&saved), theirs);
        assert_eq!(
            r.written.len(),
            p.hosts.len() - 1,
            "the other hosts are written"
        );
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

    /// Regression: the temporary file had one fixed name and was opened
    /// with `File::create`, so a symlink planted at that name made root
    /// truncate and overwrite the file it pointed to.
    #[test]
    fn a_symlink_at_the_temporary_name_is_never_written_through() {
        let d = tempfile::tempdir().unwrap();
        let p = plan();
        let victim = d.path().join("shadow");
        fs::write(&victim, "root:secret\n").unwrap();
        let hub = d.path().join("certs.d/docker.io");
        fs::create_dir_all(&hub).unwrap();
        for name in [TEMP.to_owned(), format!("{TEMP}.{}", std::process::id())] {
            std::os::unix::fs::symlink(&victim, hub.join(name)).unwrap();
        }
        write(&d.path().join("certs.d"), &p, false).unwrap();
        assert_eq!(read(&victim), "root:secret\n");
        assert!(read(&hub.join(FILE)).starts_with(MARKER));
        assert!(!fs::symlink_metadata(hub.join(FILE))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    /// Regression: a host directory that was a symlink was written through,
    /// outside DIR.
    #[test]
    fn a_host_directory_that_is_a_symlink_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = plan();
        let elsewhere = d.path().join("elsewhere");
        fs::create_dir_all(&elsewhere).unwrap();
        let certs = d.path().join("certs.d");
        fs::create_dir_all(&certs).unwrap();
        std::os::unix::fs::symlink(&elsewhere, certs.join("docker.io")).unwrap();
        let e = write(&certs, &p, true).unwrap_err();
        assert!(matches!(e, NodeConfigError::NotADirectory { .. }), "{e}");
        assert!(entries_any(&elsewhere).is_empty());
        // Refused before any change.
        assert_eq!(entries_any(&certs), ["docker.io"]);
        // And so is a backup directory that is a symlink.
        fs::remove_file(certs.join("docker.io")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, certs.join(BACKUP_DIR)).unwrap();
        let e = write(&certs, &p, true).unwrap_err();
        assert!(matches!(e, NodeConfigError::NotADirectory { .. }), "{e}");
    }

    /// Regression: the marker check read the whole file, following a
    /// symlink and blocking forever on a FIFO (an init container that never
    /// ends). Neither is read: both are someone else's, saved as themselves.
    #[test]
    fn a_hosts_toml_that_is_a_fifo_or_symlink_is_foreign_and_never_read() {
        let d = tempfile::tempdir().unwrap();
        let certs = d.path().join("certs.d");
        let hub = certs.join("docker.io");
        fs::create_dir_all(&hub).unwrap();
        let fifo = std::ffi::CString::new(hub.join(FILE).to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let victim = d.path().join("victim");
        fs::write(&victim, format!("{MARKER} but not wharf's\n")).unwrap();
        let gar = certs.join("europe-docker.pkg.dev");
        fs::create_dir_all(&gar).unwrap();
        std::os::unix::fs::symlink(&victim, gar.join(FILE)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let c = certs.clone();
        std::thread::spawn(move || {
            let _ = tx.send(write(&c, &plan(), true).map(|r| r.backed_up));
        });
        let backed_up = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("write returned")
            .unwrap();
        assert_eq!(backed_up, [hub.join(FILE), gar.join(FILE)]);
        let saved = certs
            .join(BACKUP_DIR)
            .join("europe-docker.pkg.dev")
            .join(FILE);
        assert!(fs::symlink_metadata(&saved)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(read(&victim).ends_with("but not wharf's\n"));
        restore(&certs).unwrap();
        assert!(fs::symlink_metadata(gar.join(FILE))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(read(&victim), format!("{MARKER} but not wharf's\n"));
    }

    /// Regression: foreign files were moved away first and wharf's written
    /// after, so a run that stopped in between left containerd with no
    /// hosts.toml for that host; now the backup is a hard link and the
    /// replacement one rename, and a run that stopped after the link (the
    /// backup is the same file) carries on instead of refusing.
    #[test]
    fn a_run_stopped_after_the_backup_link_carries_on() {
        let d = tempfile::tempdir().unwrap();
        let p = plan();
        let hub = d.path().join("docker.io");
        fs::create_dir_all(&hub).unwrap();
        let theirs = "server = \"https://registry-1.docker.io\"\n";
        fs::write(hub.join(FILE), theirs).unwrap();
        let saved_dir = d.path().join(BACKUP_DIR).join("docker.io");
        fs::create_dir_all(&saved_dir).unwrap();
        fs::hard_link(hub.join(FILE), saved_dir.join(FILE)).unwrap();
        let r = write(d.path(), &p, true).unwrap();
        assert_eq!(r.backed_up, [hub.join(FILE)]);
        assert!(read(&hub.join(FILE)).starts_with(MARKER));
        assert_eq!(read(&saved_dir.join(FILE)), theirs);
        restore(d.path()).unwrap();
        assert_eq!(read(&hub.join(FILE)), theirs);
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
