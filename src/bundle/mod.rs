//! Bundles: images carried across an air gap on removable media.
//!
//! This module owns the on-media format (v1, `wharf-bundle/1`), its signing
//! keys and its verification. It takes content from a [`BlobSource`] and gives
//! it back through [`blob_reader`] and [`extract`]; it never writes into the
//! cache (that is import's job, through the cache's verify-on-write path) and
//! never trusts a byte of a bundle before it was verified: [`verify`] and the
//! readers check the signature first, then structure, then content.
//!
//! # Format
//!
//! A bundle is a directory holding `bundle.json` and `volume-0001.tar`,
//! `volume-0002.tar`, ... Each volume is a plain ustar archive, valid on its
//! own, holding whole entries and no larger than the volume size asked for
//! (headers and the end-of-archive blocks included). Together the volumes are
//! an OCI image layout (image-spec `image-layout.md`): volume 1 starts with
//! `oci-layout` and `index.json` (one descriptor per carried ref, annotated
//! `org.opencontainers.image.ref.name = <upstream>/<repository>:<tag>`), then
//! `blobs/sha256/<hex>` entries. A blob larger than a volume is split into
//! `blobs/sha256/<hex>.part-0001`, `.part-0002`, ..., one per volume, each with
//! its own sha256; [`extract`] joins them. When nothing was split, untarring
//! every volume into one directory gives the same layout.
//!
//! `bundle.json` ([`BundleDoc`]) lists the refs, every blob with its parts
//! (volume, path, byte offset of the data inside the volume file, size,
//! sha256), each volume's size and sha256, what the site must already hold
//! (`requires`), which index children a platform filter left out (`filtered`),
//! and an ed25519 signature over the rest. Blobs are listed layers and configs
//! first, then manifests, then indexes, each manifest after what it refers to,
//! so an importer that goes in order never commits a manifest before its
//! content.
//!
//! # Layout
//!
//! - [`doc`]: the `bundle.json` types and their signed serialization.
//! - [`keys`]: key pairs, key ids, per-key sequence numbers.
//! - `layout`: names and bytes shared by writer and readers (volume and blob
//!   paths, tar headers, `oci-layout`, `index.json`).
//! - `create`: the writer; `hashpipe` hashes its volumes on a second thread.
//! - `verify`: signature, files, volumes, parts and completeness checks;
//!   `structure` the document's consistency; `check` the checks of read
//!   bytes `verify` and `read` share (entry headers, part and blob hashes).
//! - `read`: [`blob_reader`] and [`extract`].
//! - [`cli`]: `wharf bundle keygen|verify|extract`.

mod check;
pub mod cli;
mod create;
pub mod doc;
mod hashpipe;
pub mod keys;
mod layout;
mod read;
mod structure;
mod verify;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use crate::registry::Digest;

pub use create::{create, BlobSource, CreateOptions, Plan, PlannedBlob, Progress};
pub use doc::{
    Against, BundleBlob, BundleDoc, BundleRef, Filtered, Part, Signature, Volume, DOC_FILE, FORMAT,
};
pub use keys::{keygen, load_public_key, load_signing_key, PublicKey, SigningKeyFile};
pub use layout::volume_file;
pub use layout::MIN_VOLUME_SIZE;
pub use read::{blob_reader, extract, BlobReader};
pub(crate) use structure::check_platform;
pub use verify::{open_checked, verify};

/// Everything that can go wrong with a bundle. Each message names the file (a
/// volume, `bundle.json`, a key file) and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `bundle.json` is not a valid v1 document, or contradicts itself.
    #[error("{file}: {why}")]
    Invalid { file: String, why: String },
    #[error("{file}: not signed, and a signature is required")]
    Unsigned { file: String },
    #[error("{file}: signed by key {key_id}, which is not among the trusted keys")]
    UntrustedKey { file: String, key_id: String },
    #[error("{file}: bad signature (key {key_id}): the document was changed after signing, or was not signed by this key")]
    BadSignature { file: String, key_id: String },
    #[error("{file}: missing (bundle.json lists it)")]
    MissingFile { file: String },
    #[error("{file}: not part of the bundle (bundle.json does not list it); remove it or use the bundle as it was written")]
    ExtraFile { file: String },
    #[error("{file}: size {got} bytes, expected {expected} (truncated or damaged)")]
    SizeMismatch {
        file: String,
        expected: u64,
        got: u64,
    },
    #[error("{file}: sha256 mismatch (expected {expected}, got {got})")]
    HashMismatch {
        file: String,
        expected: String,
        got: String,
    },
    /// An entry inside a volume is not what `bundle.json` says is there.
    #[error("{file}: {why}")]
    BadEntry { file: String, why: String },
    /// A carried manifest refers to content the bundle neither carries nor
    /// requires, or a ref points nowhere.
    #[error("{file}: incomplete: {why}")]
    Incomplete { file: String, why: String },
    #[error("blob {digest}: the source ended after {got} bytes, the plan says {expected}")]
    SourceShort {
        digest: Digest,
        expected: u64,
        got: u64,
    },
    #[error("blob {digest}: the source gave more than the {expected} bytes the plan says")]
    SourceLong { digest: Digest, expected: u64 },
    #[error("blob {digest}: cannot read it from the source: {source}")]
    Source {
        digest: Digest,
        source: std::io::Error,
    },
    /// Asked for something the format cannot hold (a volume below the minimum,
    /// an index.json larger than a volume, duplicate blobs, ...).
    #[error("{0}")]
    Plan(String),
    /// An output directory that is not empty, a key file that exists, ...
    #[error("{}: {why}", path.display())]
    Refused { path: PathBuf, why: String },
    #[error("{}: {why}", path.display())]
    Key { path: PathBuf, why: String },
}

impl BundleError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BundleError {
        let path = path.into();
        move |source| BundleError::Io { path, source }
    }
}

/// Refuses an output directory that holds anything; creates it if absent.
/// Returns whether it was created.
pub(crate) fn empty_dir(out: &Path) -> Result<bool, BundleError> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if let Some(e) = entries.next() {
                let name = e
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .unwrap_or_default();
                return Err(BundleError::Refused {
                    path: out.into(),
                    why: format!("not empty (holds {name}); write into an empty or new directory"),
                });
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(out).map_err(BundleError::io(out))?;
            Ok(true)
        }
        Err(e) => Err(BundleError::Io {
            path: out.into(),
            source: e,
        }),
    }
}
