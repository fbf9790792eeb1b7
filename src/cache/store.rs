//! The content-addressed blob store on local disk.
//!
//! Layout under the cache directory:
//! `blobs/<algorithm>/<first two hex>/<hex>` for verified content, and `tmp/` for
//! fills in progress. A file appears under `blobs/` only by `rename` after its bytes
//! were fsynced and its digest matched (the Garage `block/manager.rs` recipe), so
//! a crash leaves at worst a stray temp file, which [`BlobStore::open`] removes.
//!
//! The tree is private whatever the umask: directories are created 0700 and
//! files 0600 (explicit modes at creation, never a chmod afterwards), and an
//! existing cache directory more open than 0700 is tightened at open. A cached
//! manifest of a private repository is nobody else's business on this host.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::registry::{Digest, Hasher};

use super::CacheError;

pub struct BlobStore {
    blobs: PathBuf,
    tmp: PathBuf,
    seq: AtomicU64,
}

impl BlobStore {
    /// Opens (creating) the store and removes temp files a previous run left.
    pub fn open(dir: &Path) -> io::Result<BlobStore> {
        let blobs = dir.join("blobs");
        let tmp = dir.join("tmp");
        private_dirs(&blobs)?;
        private_dirs(&tmp)?;
        for d in [dir, &blobs, &tmp] {
            tighten(d)?;
        }
        let mut removed = 0;
        for entry in fs::read_dir(&tmp)? {
            fs::remove_file(entry?.path())?;
            removed += 1;
        }
        if removed > 0 {
            tracing::info!(removed, "removed temp files left by an interrupted run");
        }
        Ok(BlobStore {
            blobs,
            tmp,
            seq: AtomicU64::new(0),
        })
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.blobs
            .join(d.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    /// Opens a verified blob for reading, with its length.
    pub fn open_blob(&self, d: &Digest) -> io::Result<Option<(File, u64)>> {
        match File::open(self.path(d)) {
            Ok(f) => {
                let len = f.metadata()?.len();
                Ok(Some((f, len)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes a blob's file. Readers that have it open keep reading it (the
    /// inode lives until they close it). Returns the bytes freed, 0 if absent.
    pub fn remove(&self, d: &Digest) -> io::Result<u64> {
        let path = self.path(d);
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        match fs::remove_file(&path) {
            Ok(()) => Ok(len),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Every file under `blobs/`: its digest (`None` for a name that is not
    /// one), path, length and modification time. One `readdir` per shard and
    /// one `stat` per file: no content is read.
    pub fn walk(&self) -> io::Result<Vec<StoredFile>> {
        let mut out = Vec::new();
        for alg in fs::read_dir(&self.blobs)? {
            let alg = alg?;
            if !alg.file_type()?.is_dir() {
                out.push(StoredFile::stray(alg.path(), alg.metadata()?));
                continue;
            }
            for shard in fs::read_dir(alg.path())? {
                let shard = shard?;
                if !shard.file_type()?.is_dir() {
                    out.push(StoredFile::stray(shard.path(), shard.metadata()?));
                    continue;
                }
                for f in fs::read_dir(shard.path())? {
                    let f = f?;
                    let name = format!(
                        "{}:{}",
                        alg.file_name().to_string_lossy(),
                        f.file_name().to_string_lossy()
                    );
                    let meta = f.metadata()?;
                    let digest = name
                        .parse::<Digest>()
                        .ok()
                        .filter(|d| meta.is_file() && self.path(d) == f.path());
                    out.push(StoredFile {
                        digest,
                        path: f.path(),
                        len: meta.len(),
                        modified: meta.modified().ok(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Bytes available to wharf on the cache's filesystem, and its size.
    pub fn disk_space(&self) -> io::Result<(u64, u64)> {
        use std::os::unix::ffi::OsStrExt;
        let c =
            std::ffi::CString::new(self.blobs.as_os_str().as_bytes()).map_err(io::Error::other)?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid C string and a zeroed struct for the kernel to fill.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let frsize = st.f_frsize as u64;
        Ok((st.f_bavail as u64 * frsize, st.f_blocks as u64 * frsize))
    }

    /// Writes, syncs and removes a small temp file: the readiness check.
    pub fn check_writable(&self) -> io::Result<()> {
        let t = self.temp()?;
        t.write_at(0, b"wharf readiness probe")?;
        t.file.sync_all()?;
        Ok(())
    }

    pub fn contains(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    /// Reads a whole (small) verified object, such as a manifest.
    pub fn read(&self, d: &Digest) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.path(d)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A new temp file in the store's `tmp/`, deleted on drop unless committed.
    pub fn temp(&self) -> io::Result<TempFile> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let path = self
            .tmp
            .join(format!("{}-{}-{n}", std::process::id(), nanos()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&path)?;
        Ok(TempFile {
            path,
            file: Arc::new(file),
            committed: false,
        })
    }

    /// Stores a complete object (a manifest) after checking its digest.
    pub fn put_verified(&self, expected: &Digest, bytes: &[u8]) -> Result<(), CacheError> {
        let actual = Digest::of(expected.algorithm(), bytes);
        if &actual != expected {
            return Err(CacheError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        if self.contains(expected) {
            return Ok(());
        }
        let t = self.temp()?;
        t.write_at(0, bytes)?;
        t.commit(&self.path(expected))?;
        Ok(())
    }

    /// Re-hashes every stored blob against its name and removes those that
    /// no longer match (and files whose name is not a blob's). Returns their
    /// paths. For `wharf gc --verify` and tests.
    pub fn verify_all(&self) -> io::Result<Vec<PathBuf>> {
        let mut bad = Vec::new();
        for f in self.walk()? {
            if f.path.is_dir() {
                continue; // not ours to judge; reconciliation reports it
            }
            let ok = match &f.digest {
                Some(d) => {
                    let mut h = Hasher::new(d.algorithm());
                    io::copy(&mut File::open(&f.path)?, &mut HashWriter(&mut h))?;
                    h.finish() == *d
                }
                None => false,
            };
            if !ok {
                fs::remove_file(&f.path)?;
                bad.push(f.path);
            }
        }
        Ok(bad)
    }
}

pub struct StoredFile {
    /// `None`: the file's name or place is not a blob's.
    pub digest: Option<Digest>,
    pub path: PathBuf,
    pub len: u64,
    pub modified: Option<std::time::SystemTime>,
}

impl StoredFile {
    fn stray(path: PathBuf, m: fs::Metadata) -> StoredFile {
        StoredFile {
            digest: None,
            path,
            len: m.len(),
            modified: m.modified().ok(),
        }
    }
}

struct HashWriter<'a>(&'a mut Hasher);
impl Write for HashWriter<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Modes of the cache's directories and files.
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// `create_dir_all` with every directory it creates 0700.
fn private_dirs(p: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(p)
}

/// Takes group and other access off an existing directory (a cache made
/// by an older wharf, or by hand under umask 022).
fn tighten(p: &Path) -> io::Result<()> {
    let mode = fs::metadata(p)?.permissions().mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(p, fs::Permissions::from_mode(DIR_MODE))?;
        tracing::info!(path = %p.display(), was = format!("{:o}", mode & 0o777),
            "cache directory was open to other users; now 0700");
    }
    Ok(())
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A file being filled. Readers may share the handle (positional reads only);
/// the file is removed on drop unless [`TempFile::commit`] moved it into place.
pub struct TempFile {
    path: PathBuf,
    file: Arc<File>,
    committed: bool,
}

impl TempFile {
    pub fn handle(&self) -> Arc<File> {
        self.file.clone()
    }
    pub fn write_at(&self, pos: u64, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, pos)
    }
    /// fsync, rename into `dest`, fsync the directory: after this returns the
    /// blob survives power loss, and before it nothing under `blobs/` changed.
    pub fn commit(mut self, dest: &Path) -> io::Result<()> {
        self.file.sync_all()?;
        let parent = dest.parent().expect("blob paths have a parent");
        private_dirs(parent)?;
        fs::rename(&self.path, dest)?;
        self.committed = true;
        File::open(parent)?.sync_all()?;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_verified_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"hello");
        s.put_verified(&d, b"hello").unwrap();
        assert_eq!(s.read(&d).unwrap().unwrap(), b"hello");
        let (_, len) = s.open_blob(&d).unwrap().unwrap();
        assert_eq!(len, 5);
        assert!(s
            .path(&d)
            .ends_with(format!("sha256/{}/{}", &d.hex()[..2], d.hex())));
    }

    #[test]
    fn mismatch_is_never_stored() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"hello");
        assert!(matches!(
            s.put_verified(&d, b"HELLO"),
            Err(CacheError::DigestMismatch { .. })
        ));
        assert!(!s.contains(&d));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn dropped_temp_files_vanish_and_leftovers_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let t = s.temp().unwrap();
        t.write_at(0, b"partial").unwrap();
        drop(t);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        // A crash leaves a temp file behind: the next open removes it.
        fs::write(dir.path().join("tmp/leftover"), b"x").unwrap();
        BlobStore::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn the_tree_is_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        // An existing cache left open (umask 022, or an older wharf).
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        let s = BlobStore::open(&root).unwrap();
        s.put_verified(&Digest::sha256_of(b"private"), b"private")
            .unwrap();
        let t = s.temp().unwrap();
        let mut seen = 0;
        let mut stack = vec![root.clone()];
        while let Some(p) = stack.pop() {
            let m = fs::metadata(&p).unwrap();
            assert_eq!(m.permissions().mode() & 0o077, 0, "{}", p.display());
            seen += 1;
            if m.is_dir() {
                stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            }
        }
        // root, blobs, tmp, sha256, the shard, the blob, the temp file.
        assert_eq!(seen, 7);
        drop(t);
    }

    #[test]
    fn verify_all_removes_corrupted_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let good = Digest::sha256_of(b"good");
        let bad = Digest::sha256_of(b"bad");
        s.put_verified(&good, b"good").unwrap();
        s.put_verified(&bad, b"bad").unwrap();
        fs::write(s.path(&bad), b"flipped").unwrap();
        let removed = s.verify_all().unwrap();
        assert_eq!(removed, vec![s.path(&bad)]);
        assert!(s.contains(&good) && !s.contains(&bad));
    }
}
