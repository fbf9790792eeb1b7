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
//! - `pins`:  `<pattern>`                    -> [`PinRecord`]: images `wharf pin`
//!   protects from eviction (config patterns are not stored), or a sync rule
//!   or bundle import pinned (`source`).
//! - `notes`: `<kind>/<key>`                 -> JSON: what sync and bundle
//!   imports remember between runs (a rule's last run, the platforms a sync
//!   left out of an index, a signing key's last sequence number, an import's
//!   progress). Added without a schema change: older wharfs never open it.
//!
//! Every write outside `notes` and `meta` moves [`Metadata::generation`], so
//! a snapshot built from the records (the status page's catalog) knows
//! whether it is still current.
//!
//! Schema history: 1 kept `last_access` in seconds; 2 keeps milliseconds, so
//! LRU order holds between pulls of the same second. [`Metadata::new`]
//! migrates 1 to 2 in place.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::registry::{Digest, MediaType, RepoName, Tag};

use super::CacheError;

pub const SCHEMA_VERSION: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tree {
    Meta,
    Tags,
    Blobs,
    Links,
    Pins,
    Notes,
}

impl Tree {
    pub fn name(self) -> &'static str {
        match self {
            Tree::Meta => "meta",
            Tree::Tags => "tags",
            Tree::Blobs => "blobs",
            Tree::Links => "links",
            Tree::Pins => "pins",
            Tree::Notes => "notes",
        }
    }
}

/// A storage engine: named trees of byte keys and values.
pub trait Kv: Send + Sync {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, CacheError>;
    fn insert(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), CacheError>;
    fn remove(&self, tree: Tree, key: &[u8]) -> Result<(), CacheError>;
    fn len(&self, tree: Tree) -> Result<usize, CacheError>;
    /// Calls `f` with every entry whose key starts with `prefix`, in key order,
    /// until it returns `false`.
    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), CacheError>;
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
    /// Unix milliseconds of the last read, as last written (the eviction
    /// component keeps newer accesses in memory and writes them in batches).
    pub last_access: u64,
}

impl BlobRecord {
    /// A layer or config blob, last read at `last_access_ms`.
    pub fn blob(size: u64, last_access_ms: u64) -> BlobRecord {
        BlobRecord {
            size,
            kind: Kind::Blob,
            media_type: None,
            last_access: last_access_ms,
        }
    }

    /// A manifest, served back with the upstream's `media_type`.
    pub fn manifest(size: u64, media_type: &str, last_access_ms: u64) -> BlobRecord {
        BlobRecord {
            size,
            kind: Kind::Manifest,
            media_type: Some(media_type.to_owned()),
            last_access: last_access_ms,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRecord {
    /// Unix seconds.
    pub added: u64,
    /// Who pinned: `None` for an operator's `wharf pin`, `sync:<rule>` or
    /// `bundle:<rule or id>` for what a sync rule or an import pinned (so
    /// `prune` removes only its own pins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

pub fn now_secs() -> u64 {
    now_millis() / 1000
}

pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Typed access to the metadata, over any [`Kv`] engine.
pub struct Metadata {
    kv: Box<dyn Kv>,
    /// Moves on every write to `tags`, `blobs`, `links` or `pins` (not on
    /// notes): equal generations, equal records.
    generation: std::sync::atomic::AtomicU64,
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
            Some(v) if v == b"1" => {
                let m = Metadata {
                    kv,
                    generation: Default::default(),
                };
                m.migrate_1_to_2()?;
                return Ok(m);
            }
            Some(v) => {
                return Err(CacheError::Schema(format!(
                    "metadata schema {} is not {SCHEMA_VERSION}; this wharf cannot read this cache",
                    String::from_utf8_lossy(&v)
                )))
            }
        }
        Ok(Metadata {
            kv,
            generation: Default::default(),
        })
    }

    /// See the field. Read before a scan: a snapshot stamped with it may be
    /// newer than its stamp, never older.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn insert(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), CacheError> {
        let r = self.kv.insert(tree, key, value);
        self.moved(tree);
        r
    }

    fn remove(&self, tree: Tree, key: &[u8]) -> Result<(), CacheError> {
        let r = self.kv.remove(tree, key);
        self.moved(tree);
        r
    }

    fn moved(&self, tree: Tree) {
        if !matches!(tree, Tree::Notes | Tree::Meta) {
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
    }

    /// Access times from seconds to milliseconds. Rewrites every blob record,
    /// then the version: a crash halfway reruns it, and records already in
    /// milliseconds (above 10^11: 1973 in ms, year 5138 in s) are left alone.
    fn migrate_1_to_2(&self) -> Result<(), CacheError> {
        let mut fix = Vec::new();
        self.kv.scan(Tree::Blobs, b"", &mut |k, v| {
            if let Ok(mut rec) = serde_json::from_slice::<BlobRecord>(v) {
                if rec.last_access < 100_000_000_000 {
                    rec.last_access *= 1000;
                    fix.push((k.to_vec(), rec));
                }
            }
            true
        })?;
        let n = fix.len();
        for (k, rec) in fix {
            self.put_json(Tree::Blobs, &k, &rec)?;
        }
        self.kv.insert(Tree::Meta, b"schema", b"2")?;
        self.kv.flush()?;
        tracing::info!(records = n, "metadata migrated from schema 1 to 2");
        Ok(())
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
        self.insert(tree, key, &bytes)
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
        self.remove(Tree::Tags, &tag_key(upstream, repo, tag))
    }

    pub fn get_blob(&self, d: &Digest) -> Result<Option<BlobRecord>, CacheError> {
        self.get_json(Tree::Blobs, d.as_str().as_bytes())
    }

    pub fn put_blob(&self, d: &Digest, rec: &BlobRecord) -> Result<(), CacheError> {
        self.put_json(Tree::Blobs, d.as_str().as_bytes(), rec)
    }

    pub fn remove_blob(&self, d: &Digest) -> Result<(), CacheError> {
        self.remove(Tree::Blobs, d.as_str().as_bytes())
    }

    /// Records a read for LRU (milliseconds), if later than the recorded one.
    /// The eviction component batches these; see `evict.rs`.
    pub fn touch(&self, d: &Digest, at_ms: u64) -> Result<(), CacheError> {
        if let Some(mut rec) = self.get_blob(d)? {
            if at_ms > rec.last_access {
                rec.last_access = at_ms;
                self.put_blob(d, &rec)?;
            }
        }
        Ok(())
    }

    /// Every blob record, in digest order. A record that does not parse is
    /// reported as `Err` with its key, so callers can drop it.
    pub fn blobs(&self) -> Result<Vec<BlobEntry>, CacheError> {
        let mut out = Vec::new();
        self.each_blob(&mut |key, rec| out.push((key.to_owned(), rec)))?;
        Ok(out)
    }

    /// [`blobs`](Self::blobs) one at a time, in digest order, without
    /// collecting them: what a scan of 100,000 records that keeps little
    /// of each uses, so its scratch memory stays small.
    pub fn each_blob(
        &self,
        f: &mut dyn FnMut(&str, Result<BlobRecord, ()>),
    ) -> Result<(), CacheError> {
        self.kv.scan(Tree::Blobs, b"", &mut |k, v| {
            f(
                &String::from_utf8_lossy(k),
                serde_json::from_slice(v).map_err(|_| ()),
            );
            true
        })
    }

    /// Removes a blob record by its raw key (for records whose key or value
    /// does not parse).
    pub fn remove_blob_key(&self, key: &str) -> Result<(), CacheError> {
        self.remove(Tree::Blobs, key.as_bytes())
    }

    /// Every tag: `(upstream, repository, tag, record)`. Keys that do not
    /// split (never written by this code) are skipped.
    pub fn tags(&self) -> Result<Vec<TagEntry>, CacheError> {
        let mut out = Vec::new();
        self.kv.scan(Tree::Tags, b"", &mut |k, v| {
            let k = String::from_utf8_lossy(k);
            let parsed = k.split_once('/').and_then(|(up, rest)| {
                let (repo, tag) = rest.rsplit_once(':')?;
                Some(TagEntry {
                    upstream: up.to_owned(),
                    repo: repo.parse().ok()?,
                    tag: tag.parse().ok()?,
                    record: serde_json::from_slice(v).ok()?,
                })
            });
            out.extend(parsed);
            true
        })?;
        Ok(out)
    }

    /// Every link: `(upstream, repository, digest)`.
    pub fn links(&self) -> Result<Vec<(String, RepoName, Digest)>, CacheError> {
        let mut out = Vec::new();
        self.each_link(&mut |up, repo, d| {
            if let (Ok(repo), Ok(d)) = (repo.parse(), d.parse()) {
                out.push((up.to_owned(), repo, d));
            }
        })?;
        Ok(out)
    }

    /// Every link's `(upstream, repository, digest)` as written, in key
    /// order, without collecting or parsing them (see
    /// [`each_blob`](Self::each_blob)). Keys that do not split are skipped.
    pub fn each_link(&self, f: &mut dyn FnMut(&str, &str, &str)) -> Result<(), CacheError> {
        self.kv.scan(Tree::Links, b"", &mut |k, _| {
            let k = String::from_utf8_lossy(k);
            if let Some((up, (repo, d))) = k
                .split_once('/')
                .and_then(|(up, rest)| Some((up, rest.split_once('@')?)))
            {
                f(up, repo, d);
            }
            true
        })
    }

    pub fn unlink(&self, upstream: &str, repo: &RepoName, d: &Digest) -> Result<(), CacheError> {
        self.remove(Tree::Links, &link_key(upstream, repo, d))
    }

    pub fn pins(&self) -> Result<Vec<(String, PinRecord)>, CacheError> {
        let mut out = Vec::new();
        self.kv.scan(Tree::Pins, b"", &mut |k, v| {
            if let Ok(rec) = serde_json::from_slice(v) {
                out.push((String::from_utf8_lossy(k).into_owned(), rec));
            }
            true
        })?;
        Ok(out)
    }

    /// Returns whether the pattern was new.
    pub fn add_pin(&self, pattern: &str, rec: &PinRecord) -> Result<bool, CacheError> {
        let new = self.kv.get(Tree::Pins, pattern.as_bytes())?.is_none();
        self.put_json(Tree::Pins, pattern.as_bytes(), rec)?;
        Ok(new)
    }

    /// Returns whether the pattern was there.
    pub fn remove_pin(&self, pattern: &str) -> Result<bool, CacheError> {
        let had = self.kv.get(Tree::Pins, pattern.as_bytes())?.is_some();
        self.remove(Tree::Pins, pattern.as_bytes())?;
        Ok(had)
    }

    /// A note (see the module doc), if any.
    pub fn get_note<T: for<'de> Deserialize<'de>>(
        &self,
        key: &str,
    ) -> Result<Option<T>, CacheError> {
        self.get_json(Tree::Notes, key.as_bytes())
    }

    pub fn put_note<T: Serialize>(&self, key: &str, v: &T) -> Result<(), CacheError> {
        self.put_json(Tree::Notes, key.as_bytes(), v)
    }

    pub fn remove_note(&self, key: &str) -> Result<(), CacheError> {
        self.remove(Tree::Notes, key.as_bytes())
    }

    /// The tags of one repository: `(tag, record)`, in key order.
    pub fn repo_tags(
        &self,
        upstream: &str,
        repo: &RepoName,
    ) -> Result<Vec<(Tag, TagRecord)>, CacheError> {
        let prefix = format!("{upstream}/{repo}:");
        let mut out = Vec::new();
        self.kv.scan(Tree::Tags, prefix.as_bytes(), &mut |k, v| {
            let tag = std::str::from_utf8(&k[prefix.len()..])
                .ok()
                .and_then(|t| t.parse::<Tag>().ok());
            if let (Some(tag), Ok(rec)) = (tag, serde_json::from_slice(v)) {
                out.push((tag, rec));
            }
            true
        })?;
        Ok(out)
    }

    pub fn link(&self, upstream: &str, repo: &RepoName, d: &Digest) -> Result<(), CacheError> {
        let key = link_key(upstream, repo, d);
        if self.kv.get(Tree::Links, &key)?.is_none() {
            self.insert(Tree::Links, &key, b"{}")?;
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

/// A blob record under its raw key; `Err` if the value does not parse.
pub type BlobEntry = (String, Result<BlobRecord, ()>);

/// One entry of the `tags` tree, split into its parts.
#[derive(Clone, Debug)]
pub struct TagEntry {
    pub upstream: String,
    pub repo: RepoName,
    pub tag: Tag,
    pub record: TagRecord,
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
    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), CacheError> {
        // Copied out first: `f` may call back into the engine.
        let entries: Vec<(Vec<u8>, Vec<u8>)> = self
            .trees
            .lock()
            .range((tree.name(), prefix.to_vec())..)
            .take_while(|((t, k), _)| *t == tree.name() && k.starts_with(prefix))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in entries {
            if !f(&k, &v) {
                break;
            }
        }
        Ok(())
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
        m.touch(&d, 900).unwrap();
        assert_eq!(
            m.get_blob(&d).unwrap().unwrap().last_access,
            1000,
            "never back"
        );
        m.touch(&d, 1060).unwrap();
        assert_eq!(m.get_blob(&d).unwrap().unwrap().last_access, 1060);
        let all = m.blobs().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, d.to_string());
        assert_eq!(all[0].1.as_ref().unwrap().size, 8);

        m.put_tag("hub", &repo, &tag, &d, &mt, 100).unwrap();
        m.put_tag(
            "hub",
            &"a/b/c".parse().unwrap(),
            &"v1".parse().unwrap(),
            &d,
            &mt,
            1,
        )
        .unwrap();
        let tags = m.tags().unwrap();
        assert_eq!(tags.len(), 2);
        assert_eq!(tags[0].repo.as_str(), "a/b/c");
        assert_eq!(tags[1].tag.as_str(), "1.36");
        assert_eq!(tags[1].record.digest, d.to_string());
        pins_and_links(m, &repo, &d);
        generation_moves_on_records_only(m, &repo, &d);
        m.remove_blob(&d).unwrap();
        assert_eq!(m.get_blob(&d).unwrap(), None);
        m.flush().unwrap();
    }

    fn pins_and_links(m: &Metadata, repo: &RepoName, d: &Digest) {
        assert!(m
            .add_pin(
                "hub/library/*",
                &PinRecord {
                    added: 5,
                    source: None
                }
            )
            .unwrap());
        assert!(!m
            .add_pin(
                "hub/library/*",
                &PinRecord {
                    added: 6,
                    source: None
                }
            )
            .unwrap());
        assert_eq!(
            m.pins().unwrap(),
            vec![(
                "hub/library/*".into(),
                PinRecord {
                    added: 6,
                    source: None
                }
            )]
        );
        assert!(m.remove_pin("hub/library/*").unwrap());
        assert!(!m.remove_pin("hub/library/*").unwrap());

        assert!(!m.is_linked("hub", repo, d).unwrap());
        m.link("hub", repo, d).unwrap();
        m.link("hub", repo, d).unwrap();
        assert!(m.is_linked("hub", repo, d).unwrap());
        let other: RepoName = "other/repo".parse().unwrap();
        assert!(!m.is_linked("hub", &other, d).unwrap());
        assert_eq!(
            m.links().unwrap(),
            vec![("hub".into(), repo.clone(), d.clone())]
        );
        m.unlink("hub", repo, d).unwrap();
        assert!(!m.is_linked("hub", repo, d).unwrap());
    }

    fn generation_moves_on_records_only(m: &Metadata, repo: &RepoName, d: &Digest) {
        let g = m.generation();
        m.put_note("sync-run/x", &1).unwrap();
        m.remove_note("sync-run/x").unwrap();
        assert_eq!(m.generation(), g, "notes are not records");
        let writes: [&dyn Fn(); 6] = [
            &|| m.link("hub", repo, d).unwrap(),
            &|| m.unlink("hub", repo, d).unwrap(),
            &|| m.touch(d, u64::MAX / 2).unwrap(),
            &|| {
                let rec = PinRecord {
                    added: 1,
                    source: None,
                };
                m.add_pin("p", &rec).unwrap();
            },
            &|| {
                m.remove_pin("p").unwrap();
            },
            &|| m.remove_tag("hub", repo, &"1.36".parse().unwrap()).unwrap(),
        ];
        for (i, w) in writes.iter().enumerate() {
            let before = m.generation();
            w();
            assert!(m.generation() > before, "write {i} moved the generation");
        }
    }

    #[test]
    fn memory_engine() {
        suite(&Metadata::in_memory());
    }

    #[test]
    fn schema_1_access_times_become_milliseconds() {
        let kv = MemKv::default();
        kv.insert(Tree::Meta, b"schema", b"1").unwrap();
        let rec = |t| {
            serde_json::to_vec(&BlobRecord {
                size: 1,
                kind: Kind::Blob,
                media_type: None,
                last_access: t,
            })
            .unwrap()
        };
        kv.insert(Tree::Blobs, b"sha256:aa", &rec(1_700_000_000))
            .unwrap();
        // Already migrated before a crash: left alone.
        kv.insert(Tree::Blobs, b"sha256:bb", &rec(1_700_000_000_123))
            .unwrap();
        let m = Metadata::new(Box::new(kv)).unwrap();
        let all = m.blobs().unwrap();
        assert_eq!(all[0].1.as_ref().unwrap().last_access, 1_700_000_000_000);
        assert_eq!(all[1].1.as_ref().unwrap().last_access, 1_700_000_000_123);
        assert_eq!(m.kv.get(Tree::Meta, b"schema").unwrap().unwrap(), b"2");
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
