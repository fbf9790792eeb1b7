//! Files that wharf re-reads when they change: credentials, htpasswd, token
//! lists. A rotation (rename over, or rewrite) is picked up on the next use
//! at the cost of one `stat`; a replacement that does not parse, or has lost
//! its private mode, is logged and the last good value kept, so a half-written
//! rotation never locks anyone out.

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
    parse: Box<Parse<T>>,
    state: Mutex<Option<(Stamp, Arc<T>)>>,
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
            parse: Box::new(parse),
            state: Mutex::new(None),
        }
    }

    /// The current value. A file that vanished or broke after a good read
    /// keeps its last good value (with a warning): a half-written rotation
    /// must not cut off the upstream. An unchanged file costs one `stat`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `what` names the owner in the warning (an upstream, "access").
    pub fn get(&self, what: &str) -> Result<Arc<T>, String> {
        match self.refresh() {
            Ok(v) => Ok(v),
            Err(why) => match self.state.lock().as_ref() {
                Some((_, v)) => {
                    tracing::warn!(what, path = %self.path.display(), %why,
                        "file unusable; keeping the last good value");
                    Ok(v.clone())
                }
                None => Err(why),
            },
        }
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
}
