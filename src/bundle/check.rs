//! The checks both readers (`verify` and `read`) make of the bytes they
//! read, so the two cannot drift apart: the ustar header before an entry's
//! data, a part's sha256, and a split blob's digest over its joined parts.

use sha2::{Digest as _, Sha256};

use crate::registry::Hasher;

use super::doc::{BundleBlob, Part};
use super::layout::{self, BLOCK};
use super::BundleError;

/// The ustar header `block` read just before `offset` in `volume` names the
/// entry `path` of `size` bytes: what someone untarring the volume gets.
pub(crate) fn entry_header(
    volume: &str,
    offset: u64,
    block: &[u8; BLOCK as usize],
    path: &str,
    size: u64,
) -> Result<(), BundleError> {
    let header = tar::Header::from_byte_slice(block);
    let found_path = header.path_bytes();
    let found_size = header.entry_size().ok();
    if found_path.as_ref() == path.as_bytes() && found_size == Some(size) {
        return Ok(());
    }
    Err(BundleError::BadEntry {
        file: volume.into(),
        why: format!(
            "at offset {}: expected entry {path} of {size} bytes, found {:?} of {} bytes",
            offset - BLOCK,
            String::from_utf8_lossy(&found_path),
            found_size.map_or("unreadable".into(), |n| n.to_string()),
        ),
    })
}

/// Hashes a blob's bytes as its parts are read, in order: each part
/// against its sha256 and, for a split blob, the joined parts against the
/// blob's digest. (A whole blob's part sha256 is its digest.)
pub(crate) struct BlobHash {
    part: Sha256,
    joined: Option<Hasher>,
}

impl BlobHash {
    pub fn new(b: &BundleBlob) -> BlobHash {
        BlobHash {
            part: Sha256::new(),
            joined: (b.parts.len() > 1).then(|| Hasher::new(b.digest.algorithm())),
        }
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.part.update(chunk);
        if let Some(j) = &mut self.joined {
            j.update(chunk);
        }
    }

    /// The part `p` of `volume` ended: its bytes against its sha256.
    pub fn end_part(&mut self, volume: &str, p: &Part) -> Result<(), BundleError> {
        let got = hex::encode(std::mem::take(&mut self.part).finalize());
        if got == p.sha256 {
            return Ok(());
        }
        Err(BundleError::HashMismatch {
            file: format!("{volume}: {}", p.path),
            expected: p.sha256.clone(),
            got,
        })
    }

    /// The last part of `b` ended: a split blob's joined bytes against its
    /// digest.
    pub fn end_blob(self, b: &BundleBlob) -> Result<(), BundleError> {
        let Some(j) = self.joined else {
            return Ok(());
        };
        let got = j.finish();
        if got == b.digest {
            return Ok(());
        }
        Err(BundleError::HashMismatch {
            file: format!(
                "{} (joined from {} parts)",
                layout::blob_path(&b.digest),
                b.parts.len()
            ),
            expected: b.digest.hex().into(),
            got: got.hex().into(),
        })
    }
}
