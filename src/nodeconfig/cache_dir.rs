//! `wharf node-config cache-dir DIR --owner UID:GID`: makes the cache
//! directory wharf's before wharf starts, for the DaemonSet's init container
//! (run as root with only `CAP_CHOWN` and `CAP_FOWNER`). A hostPath volume
//! ignores the pod's `fsGroup`, and the kubelet creates a missing one
//! (`DirectoryOrCreate`) as root, mode 0755.
//!
//! Only DIR itself is changed (owner, then mode 0700): what is inside was
//! written by wharf as that owner already, and its directories are 0700, so
//! walking them would need `CAP_DAC_OVERRIDE`, which the init container does
//! not get. It must never follow a symlink at DIR (a node path an attacker
//! could point elsewhere): owner and mode are set through one handle opened
//! with `O_NOFOLLOW`.

use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::NodeConfigError;

/// `UID:GID`, numbers only (the image has no user database to look names up in).
pub fn parse_owner(s: &str) -> Result<(u32, u32), NodeConfigError> {
    s.split_once(':')
        .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
        .ok_or_else(|| NodeConfigError::BadOwner(s.to_owned()))
}

/// Creates `dir` if missing, then gives it to `uid:gid` with mode 0700.
pub fn prepare(dir: &Path, uid: u32, gid: u32) -> Result<(), NodeConfigError> {
    fs::create_dir_all(dir).map_err(NodeConfigError::io(dir))?;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
        .open(dir)
        .map_err(NodeConfigError::io(dir))?;
    std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(NodeConfigError::io(dir))?;
    f.set_permissions(fs::Permissions::from_mode(0o700))
        .map_err(NodeConfigError::io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn owner_is_two_numbers() {
        assert_eq!(parse_owner("65532:65532").unwrap(), (65532, 65532));
        for bad in ["65532", "wharf:wharf", "1:", ":1", "-1:2"] {
            assert!(parse_owner(bad).is_err(), "{bad}");
        }
    }

    /// As the test's own user (root in CI, anyone else here): the directory
    /// is made, owned by that user, mode 0700.
    #[test]
    fn creates_and_closes_the_directory() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("var/lib/wharf");
        // SAFETY: geteuid and getegid have no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        prepare(&dir, uid, gid).unwrap();
        let m = fs::metadata(&dir).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (uid, gid, 0o700));
        // A symlink at DIR is refused, not followed.
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(d.path(), &link).unwrap();
        assert!(prepare(&link, uid, gid).is_err());
        let m = fs::metadata(d.path()).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o755, "the link's target is untouched");
    }
}
