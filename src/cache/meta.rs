//! The metadata index: what the cache knows besides blob bytes.
//!
//! Engines implement the tiny [`Kv`] trait (named trees of byte keys and values);
//! [`Metadata`] puts the typed records on top once, so every engine shares the
//! encoding and the same test suite runs against each ([`tests::suite`]). sled is
//! the production engine and all of its code lives in `sled_kv.rs`; [`MemKv`]
//! serves unit tests.
//!
//! Records (JSON values; the layout version is stored under `meta/schema`):
//! - `tags`:  `<upstream>/<repo>:<tag>`     -> [`TagRecord`]
//! - `blobs`: `<digest>`                     -> [`BlobRecord`]
//! - `links`: `<upstream>/<repo>@<digest>`   -> `{}`: this repository is known
//!   (from the upstream) to contain this content, so it may be served from cache
//!   for it without asking the upstream.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::registry::{Digest, MediaType, RepoName, Tag};

use super::CacheError;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tree {
    Meta,
    Tags,
    Blobs,
    Links,
}

impl Tree {
    pub fn name(self) -> &'static str {
        match self {
            Tree::Meta => "meta",
            Tree::Tags => "tags",
            Tree::Blobs => "blobs",
            Tree::Links => "links",
        }
    }
}

/// A storage engine: named trees of byte keys and values.
pub trait Kv: Send + Sync {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, CacheError>;
    fn insert(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), CacheError>;
    fn remove(&self, tree: Tree, key: &[u8]) -> Result<(), CacheError>;
    fn len(&self, tree: Tree) -> Result<usize, CacheError>;
    /// Makes every write so far durable.
    fn flush(&self) -> Result<(), CacheError>;
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    pub digest: String,
    pub media_type: String,
    /// Unix seconds of the last time the upstream confirmed this answer.
    pub checked_at: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Manifest,
    Blob,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRecord {
    pub size: u64,
    pub kind: Kind,
    /// Manifests only: the upstream's Content-Type, served back as is.
    pub media_type: Option<String>,
    /// Unix seconds; kept coarse (see [`Metadata::touch`]).
    pub last_access: u64,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Access times are rewritten at most this often per blob, so a hot blob does not
/// cost a metadata write per request; eviction needs minutes, not milliseconds.
const TOUCH_GRANULARITY_SECS: u64 = 60;

/// Typed access to the metadata, over any [`Kv`] engine.
pub struct Metadata {
    kv: Box<dyn Kv>,
}

fn tag_key(upstream: &str, repo: &RepoName, tag: &Tag) -> Vec<u8> {
    format!("{upstream}/{repo}:{tag}").into_bytes()
}
fn link_key(upstream: &str, repo: &RepoName, d: &Digest) -> Vec<u8> {
    format!("{upstream}/{repo}@{d}").into_bytes()
}

impl Metadata {
    /// Wraps an engine, writing or checking the schema version.
    pub fn new(kv: Box<dyn Kv>) -> Result<Metadata, CacheError> {
        match kv.get(Tree::Meta, b"schema")? {
            None => kv.insert(Tree::Meta, b"schema", SCHEMA_VERSION.to_string().as_bytes())?,
            Some(v) if v == SCHEMA_VERSION.to_string().as_bytes() => {}
            Some(v) => {
                return Err(CacheError::Schema(format!(
                    "metadata schema {} is not {SCHEMA_VERSION}; this wharf cannot read this cache",
                    String::from_utf8_lossy(&v)
                )))
            }
        }
        Ok(Metadata { kv })
    }

    pub fn in_memory() -> Metadata {
        Metadata::new(Box::new(MemKv::default())).expect("memory engine cannot fail")
    }

    fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        tree: Tree,
        key: &[u8],
    ) -> Result<Option<T>, CacheError> {
        match self.kv.get(tree, key)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| {
                CacheError::Corrupt(format!(
                    "{} {}: {e}",
                    tree.name(),
                    String::from_utf8_lossy(key)
                ))
            }),
        }
    }

    fn put_json<T: Serialize>(&self, tree: Tree, key: &[u8], v: &T) -> Result<(), CacheError> {
        let bytes = serde_json::to_vec(v).expect("records always serialize");
        self.kv.insert(tree, key, &bytes)
    }

    pub fn get_tag(
        &self,
        upstream: &str,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<TagRecord>, CacheError> {
        self.get_json(Tree::Tags, &tag_key(upstream, repo, tag))
    }

    pub fn put_tag(
        &self,
        upstream: &str,
        repo: &RepoName,
        tag: &Tag,
        digest: &Digest,
        media_type: &MediaType,
        checked_at: u64,
    ) -> Result<(), CacheError> {
        let rec = TagRecord {
            digest: digest.to_string(),
            media_type: media_type.to_string(),
            checked_at,
        };
        self.put_json(Tree::Tags, &tag_key(upstream, repo, tag), &rec)
    }

    pub fn remove_tag(&self, upstream: &str, repo: &RepoName, tag: &Tag) -> Result<(), CacheError> {
        self.kv.remove(Tree::Tags, &tag_key(upstream, repo, tag))
    }

    pub fn get_blob(&self, d: &Digest) -> Result<Option<BlobRecord>, CacheError> {
        self.get_json(Tree::Blobs, d.as_str().as_bytes())
    }

    pub fn put_blob(&self, d: &Digest, rec: &BlobRecord) -> Result<(), CacheError> {
        self.put_json(Tree::Blobs, d.as_str().as_bytes(), rec)
    }

    pub fn remove_blob(&self, d: &Digest) -> Result<(), CacheError> {
        self.kv.remove(Tree::Blobs, d.as_str().as_bytes())
    }

    /// Records an access for LRU, at most once a minute per blob.
    pub fn touch(&self, d: &Digest, now: u64) -> Result<(), CacheError> {
        if let Some(mut rec) = self.get_blob(d)? {
            if now >= rec.last_access + TOUCH_GRANULARITY_SECS {
                rec.last_access = now;
                self.put_blob(d, &rec)?;
            }
        }
        Ok(())
    }

    pub fn link(&self, upstream: &str, repo: &RepoName, d: &Digest) -> Result<(), CacheError> {
        let key = link_key(upstream, repo, d);
        if self.kv.get(Tree::Links, &key)?.is_none() {
            self.kv.insert(Tree::Links, &key, b"{}")?;
        }
        Ok(())
    }

    pub fn is_linked(
        &self,
        upstream: &str,
        repo: &RepoName,
        d: &Digest,
    ) -> Result<bool, CacheError> {
        Ok(self
            .kv
            .get(Tree::Links, &link_key(upstream, repo, d))?
            .is_some())
    }

    pub fn blob_count(&self) -> Result<usize, CacheError> {
        self.kv.len(Tree::Blobs)
    }

    pub fn flush(&self) -> Result<(), CacheError> {
        self.kv.flush()
    }
}

/// (tree name, key) -> value
type MemMap = BTreeMap<(&'static str, Vec<u8>), Vec<u8>>;

/// In-memory engine for tests.
#[derive(Default)]
pub struct MemKv {
    trees: Mutex<MemMap>,
}

impl Kv for MemKv {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, CacheError> {
        Ok(self.trees.lock().get(&(tree.name(), key.to_vec())).cloned())
    }
    fn insert(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), CacheError> {
        self.trees
            .lock()
            .insert((tree.name(), key.to_vec()), value.to_vec());
        Ok(())
    }
    fn remove(&self, tree: Tree, key: &[u8]) -> Result<(), CacheError> {
        self.trees.lock().remove(&(tree.name(), key.to_vec()));
        Ok(())
    }
    fn len(&self, tree: Tree) -> Result<usize, CacheError> {
        Ok(self
            .trees
            .lock()
            .keys()
            .filter(|(t, _)| *t == tree.name())
            .count())
    }
    fn flush(&self) -> Result<(), CacheError> {
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The behaviour every engine must have; called with each engine.
    pub(crate) fn suite(m: &Metadata) {
        let repo: RepoName = "library/busybox".parse().unwrap();
        let tag: Tag = "1.36".parse().unwrap();
        let d = Digest::sha256_of(b"manifest");
        let mt: MediaType = "application/vnd.oci.image.manifest.v1+json"
            .parse()
            .unwrap();

        assert_eq!(m.get_tag("hub", &repo, &tag).unwrap(), None);
        m.put_tag("hub", &repo, &tag, &d, &mt, 100).unwrap();
        let rec = m.get_tag("hub", &repo, &tag).unwrap().unwrap();
        assert_eq!(rec.digest, d.to_string());
        assert_eq!(rec.media_type, mt.to_string());
        assert_eq!(rec.checked_at, 100);
        // Tags are per upstream.
        assert_eq!(m.get_tag("gar", &repo, &tag).unwrap(), None);
        m.remove_tag("hub", &repo, &tag).unwrap();
        assert_eq!(m.get_tag("hub", &repo, &tag).unwrap(), None);

        let rec = BlobRecord {
            size: 8,
            kind: Kind::Manifest,
            media_type: Some(mt.to_string()),
            last_access: 1000,
        };
        m.put_blob(&d, &rec).unwrap();
        assert_eq!(m.get_blob(&d).unwrap().unwrap(), rec);
        assert_eq!(m.blob_count().unwrap(), 1);
        m.touch(&d, 1030).unwrap();
        assert_eq!(m.get_blob(&d).unwrap().unwrap().last_access, 1000, "coarse");
        m.touch(&d, 1060).unwrap();
        assert_eq!(m.get_blob(&d).unwrap().unwrap().last_access, 1060);

        assert!(!m.is_linked("hub", &repo, &d).unwrap());
        m.link("hub", &repo, &d).unwrap();
        m.link("hub", &repo, &d).unwrap();
        assert!(m.is_linked("hub", &repo, &d).unwrap());
        let other: RepoName = "other/repo".parse().unwrap();
        assert!(!m.is_linked("hub", &other, &d).unwrap());

        m.remove_blob(&d).unwrap();
        assert_eq!(m.get_blob(&d).unwrap(), None);
        m.flush().unwrap();
    }

    #[test]
    fn memory_engine() {
        suite(&Metadata::in_memory());
    }

    #[test]
    fn schema_mismatch_is_refused() {
        let kv = MemKv::default();
        kv.insert(Tree::Meta, b"schema", b"999").unwrap();
        assert!(matches!(
            Metadata::new(Box::new(kv)),
            Err(CacheError::Schema(_))
        ));
    }
}
