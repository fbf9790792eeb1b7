//! Files that wharf re-reads when they change: credentials, htpasswd, token
//! lists. A rotation (rename over, or rewrite) is picked up on the next use
//! at the cost of one `stat`.
//!
//! What a file that vanished, does not parse or has lost its private mode
//! means depends on what it grants ([`OnError`]):
//! - an upstream credential keeps its last good value (with a warning): the
//!   upstream itself refuses a credential it revoked, and a half-written
//!   rotation must not cut the mirror off its upstream;
//! - an access file (htpasswd, tokens) grants nothing until it is valid
//!   again: it is the list of who may pull, so a deleted or broken list
//!   means nobody, never "whoever was allowed before" (a revocation by
//!   deleting the file must hold). Logged at error level once per new
//!   problem, and [`Watched::is_valid`] says so for a gauge.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

/// A file parsed into `T`, re-read when its size, mtime or inode change.
type Parse<T> = dyn Fn(&[u8]) -> Result<T, String> + Send + Sync;

pub struct Watched<T> {
    path: PathBuf,
    /// Refuse the file when group or others may read it.
    check_mode: bool,
    on_error: OnError,
    parse: Box<Parse<T>>,
    state: Mutex<Option<(Stamp, Arc<T>)>>,
    /// The problem last logged (fail-closed files log each new one once,
    /// not once per request).
    broken: Mutex<Option<String>>,
}

/// What [`Watched::get`] returns while the file is unusable after a good read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// The last good value (upstream credentials).
    KeepLast,
    /// An error: nothing is granted (access files).
    FailClosed,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: i64,
    mtime_ns: i64,
    ino: u64,
}

impl<T> Watched<T> {
    pub fn new(
        path: PathBuf,
        check_mode: bool,
        parse: impl Fn(&[u8]) -> Result<T, String> + Send + Sync + 'static,
    ) -> Watched<T> {
        Watched {
            path,
            check_mode,
            on_error: OnError::KeepLast,
            parse: Box::new(parse),
            state: Mutex::new(None),
            broken: Mutex::new(None),
        }
    }

    /// The same file, failing closed ([`OnError::FailClosed`]).
    pub fn fail_closed(mut self) -> Watched<T> {
        self.on_error = OnError::FailClosed;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current value. An unchanged file costs one `stat`. A file that
    /// vanished or broke after a good read keeps its last good value (with
    /// a warning) or is an error, as [`OnError`] says. `what` names the
    /// owner in the log (an upstream, "access").
    pub fn get(&self, what: &str) -> Result<Arc<T>, String> {
        let why = match self.refresh() {
            Ok(v) => {
                if self.broken.lock().take().is_some() {
                    tracing::info!(what, path = %self.path.display(), "file valid again");
                }
                return Ok(v);
            }
            Err(why) => why,
        };
        match (self.on_error, self.state.lock().as_ref()) {
            (OnError::KeepLast, Some((_, v))) => {
                tracing::warn!(what, path = %self.path.display(), %why,
                    "file unusable; keeping the last good value");
                Ok(v.clone())
            }
            (OnError::KeepLast, None) => Err(why),
            (OnError::FailClosed, _) => {
                let mut broken = self.broken.lock();
                if broken.as_deref() != Some(why.as_str()) {
                    tracing::error!(what, path = %self.path.display(), %why,
                        "file unusable: it grants nothing until it is fixed");
                    *broken = Some(why.clone());
                }
                Err(why)
            }
        }
    }

    /// Whether the last [`Watched::get`] found the file usable (a
    /// fail-closed file's gauge).
    pub fn is_valid(&self) -> bool {
        self.broken.lock().is_none()
    }

    /// Re-parses the file if its stamp changed; a broken file is an error.
    fn refresh(&self) -> Result<Arc<T>, String> {
        let stamp = stamp(&self.path, self.check_mode)?;
        if let Some((s, v)) = self.state.lock().as_ref() {
            if *s == stamp {
                return Ok(v.clone());
            }
        }
        let bytes = std::fs::read(&self.path).map_err(|e| e.to_string())?;
        let v = Arc::new((self.parse)(&bytes)?);
        *self.state.lock() = Some((stamp, v.clone()));
        Ok(v)
    }
}

fn stamp(path: &Path, check_mode: bool) -> Result<Stamp, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if check_mode && meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "readable by group or others (mode {:o}); chmod 600 it",
            meta.permissions().mode() & 0o777
        ));
    }
    Ok(Stamp {
        len: meta.len(),
        mtime: meta.mtime(),
        mtime_ns: meta.mtime_nsec(),
        ino: meta.ino(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watched_files_reload_and_keep_the_last_good_value() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tok");
        let write = |s: &str, mode: u32| {
            std::fs::write(&p, s).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write("one\n", 0o600);
        let w = Watched::new(p.clone(), true, |b: &[u8]| {
            let s = std::str::from_utf8(b).unwrap().trim().to_owned();
            if s.is_empty() {
                Err("empty".to_owned())
            } else {
                Ok(s)
            }
        });
        assert_eq!(*w.get("u").unwrap(), "one");
        // A rotation (new inode) is seen.
        let tmp = dir.path().join("tok.new");
        std::fs::write(&tmp, "two-longer").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        assert_eq!(*w.get("u").unwrap(), "two-longer");
        // A broken or too open replacement keeps the last good value...
        write("", 0o600);
        assert_eq!(*w.get("u").unwrap(), "two-longer");
        write("three", 0o644);
        assert_eq!(*w.get("u").unwrap(), "two-longer");
        // ...but with no good value yet it is an error naming the file.
        let w2 = Watched::new(p.clone(), true, |_: &[u8]| Ok(()));
        let e = w2.get("u").unwrap_err();
        assert!(e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn fail_closed_files_grant_nothing_while_broken_or_missing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tok");
        let write = |s: &str| {
            std::fs::write(&p, s).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        write("one");
        let w = Watched::new(p.clone(), true, |b: &[u8]| match b {
            b"" => Err("empty".to_owned()),
            b => Ok(String::from_utf8_lossy(b).into_owned()),
        })
        .fail_closed();
        assert_eq!(*w.get("access").unwrap(), "one");
        assert!(w.is_valid());
        // Deleted: an error, not the old value.
        std::fs::remove_file(&p).unwrap();
        assert!(w.get("access").is_err());
        assert!(!w.is_valid());
        // Restored: valid again.
        write("two");
        assert_eq!(*w.get("access").unwrap(), "two");
        assert!(w.is_valid());
        // Broken, or too open: an error too.
        write("");
        assert_eq!(w.get("access").unwrap_err(), "empty");
        write("three");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(w.get("access").unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(*w.get("access").unwrap(), "three");
    }
}
