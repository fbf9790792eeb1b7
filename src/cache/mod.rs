//! The cache: verified content on disk, its metadata, and the components that
//! fill it — [`Fills`] for streamed blob downloads shared by concurrent readers,
//! [`Coalescer`] for small objects. Knows nothing about upstreams or HTTP.

mod coalesce;
mod fill;
mod meta;
mod sled_kv;
mod store;

pub use coalesce::Coalescer;
pub use fill::{FillError, FillReader, FillWriter, Fills, Join};
pub use meta::{now_secs, BlobRecord, Kind, Kv, MemKv, Metadata, TagRecord};
pub use sled_kv::SledKv;
pub use store::{BlobStore, TempFile};

use crate::registry::Digest;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("metadata store error: {0}")]
    Meta(String),
    #[error("corrupt metadata record: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Schema(String),
}
