//! Reading content back out of a bundle: [`blob_reader`] for the importer
//! (which verifies every blob on its way into the cache) and [`extract`],
//! which writes the complete OCI image layout for tools such as skopeo.
//!
//! Volumes are opened by number (`volume-NNNN.tar`), never by a name taken
//! from the document, and blobs are written under their validated digests,
//! so a crafted `bundle.json` cannot make either touch another path.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Take, Write};
use std::path::{Path, PathBuf};

use super::check::{self, BlobHash};
use super::doc::{BundleBlob, BundleDoc, Part};
use super::keys::PublicKey;
use super::layout;
use super::verify::{check_files, read_doc};
use super::BundleError;

/// A blob's bytes, read from its parts in order (each: open the volume, seek
/// to the part's offset, read its size). It checks nothing; the reader
/// hashes what it reads against the digest, as the cache does on import.
pub struct BlobReader {
    dir: PathBuf,
    parts: std::vec::IntoIter<Part>,
    cur: Option<(String, Take<File>)>,
}

pub fn blob_reader(dir: &Path, blob: &BundleBlob) -> BlobReader {
    BlobReader {
        dir: dir.to_owned(),
        parts: blob.parts.clone().into_iter(),
        cur: None,
    }
}

/// Opens the volume holding `p` at the part's data.
fn open_part(dir: &Path, p: &Part) -> std::io::Result<(String, Take<File>)> {
    let name = layout::volume_file(p.volume);
    let named = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{name}: {e}"));
    let mut f = File::open(dir.join(&name)).map_err(named)?;
    f.seek(SeekFrom::Start(p.offset)).map_err(named)?;
    Ok((name, f.take(p.size)))
}

/// `open_part`, after checking the ustar header before the data names the
/// part's path and size.
fn open_part_checked(dir: &Path, p: &Part) -> Result<(String, Take<File>), BundleError> {
    let name = layout::volume_file(p.volume);
    let path = dir.join(&name);
    let mut f = File::open(&path).map_err(BundleError::io(&path))?;
    let mut h = [0u8; layout::BLOCK as usize];
    f.seek(SeekFrom::Start(p.offset - layout::BLOCK))
        .and_then(|_| f.read_exact(&mut h))
        .map_err(BundleError::io(&path))?;
    check::entry_header(&name, p.offset, &h, &p.path, p.size)?;
    Ok((name, f.take(p.size)))
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some((name, r)) = &mut self.cur {
                let n = r.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                if r.limit() > 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("{name}: ends {} bytes short of a part", r.limit()),
                    ));
                }
                self.cur = None;
            }
            let Some(p) = self.parts.next() else {
                return Ok(0);
            };
            self.cur = Some(open_part(&self.dir, &p)?);
        }
    }
}

/// Writes the bundle's OCI image layout into `out` (empty or absent):
/// every blob under `blobs/sha256/<hex>` (split blobs joined), each checked
/// against its digest (and each part against its sha256) before it is
/// renamed into place, then `oci-layout` and `index.json` last. The
/// signature is checked as [`super::verify`] does; volume checksums are not
/// (every byte that lands in `out` was checked against its digest instead).
pub fn extract(
    dir: &Path,
    out: &Path,
    trusted: &[PublicKey],
    require_signature: bool,
) -> Result<BundleDoc, BundleError> {
    let doc = read_doc(dir, trusted, require_signature)?;
    check_files(dir, &doc)?;
    super::empty_dir(out)?;
    let blobs = out.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(BundleError::io(&blobs))?;
    let mut buf = vec![0u8; 1 << 20];
    for b in &doc.blobs {
        extract_blob(dir, b, &blobs, &mut buf)?;
    }
    for (name, bytes) in layout::doc_layout_files(&doc.refs, &doc.blobs) {
        let path = out.join(name);
        std::fs::write(&path, bytes).map_err(BundleError::io(&path))?;
    }
    Ok(doc)
}

/// Writes blob `b` (its parts joined) to `blobs/<hex>` through a temp file,
/// renamed into place once every part and the whole checked out.
fn extract_blob(
    dir: &Path,
    b: &BundleBlob,
    blobs: &Path,
    buf: &mut [u8],
) -> Result<(), BundleError> {
    let path = blobs.join(b.digest.hex());
    let tmp = blobs.join(format!("{}.tmp", b.digest.hex()));
    let mut f = File::create(&tmp).map_err(BundleError::io(&tmp))?;
    let mut hash = BlobHash::new(b);
    for p in &b.parts {
        let (name, mut r) = open_part_checked(dir, p)?;
        let mut got = 0u64;
        loop {
            let n = r.read(buf).map_err(BundleError::io(dir.join(&name)))?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            f.write_all(&buf[..n]).map_err(BundleError::io(&tmp))?;
            got += n as u64;
        }
        if got != p.size {
            return Err(BundleError::BadEntry {
                file: name,
                why: format!("{} ends after {got} of {} bytes", p.path, p.size),
            });
        }
        hash.end_part(&name, p)?;
    }
    hash.end_blob(b)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(BundleError::io(&path))
}
