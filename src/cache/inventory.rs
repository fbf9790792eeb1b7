//! A snapshot of what the cache holds, seen as images: the tags and linked
//! manifests of each repository, and the content each one is made of. Used by
//! eviction (what pins protect), `wharf ls`, `wharf du`, `wharf rm` and the
//! status page's catalog.
//!
//! Built from one scan of each metadata tree plus a read of each manifest
//! reached (small files), so it costs about a second per 100,000 blobs; it is
//! built on demand and never kept.
//!
//! Memory: a cache of 100,000 blobs has as many records and more links, and
//! a pull-through cache's server lives for months. So each digest is kept
//! once, as text in one buffer, and named by a `u32` id everywhere else
//! (records, links, a manifest's children); closures are walked with
//! reusable marks, not sets of strings. The scan's scratch is then a few
//! large allocations (and one small one per digest named but not cached),
//! rather than hundreds of thousands of small ones that leave the heap
//! fragmented for the life of the process (`benches/status_rss.py`
//! measures it).
//!
//! Never writes, and never keeps a digest it could not parse.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::registry::manifest::references;
use crate::registry::{index_children, is_index_type};
use crate::registry::{Digest, RepoName};

use super::meta::{Kind, Metadata, TagEntry};
use super::pins::Pin;
use super::store::BlobStore;
use super::CacheError;

/// A digest's number within one inventory. The cached blobs are
/// `0..blob_count()`, in digest order; digests that tags, links or manifests
/// name without the cache holding them come after.
type Id = u32;

/// What the records say of a cached blob.
#[derive(Clone, Copy, Debug)]
pub struct Held {
    pub size: u64,
    pub kind: Kind,
    /// Unix milliseconds of the last recorded read.
    pub last_access: u64,
    /// Index into the inventory's media types, or [`NO_TYPE`].
    media_type: u32,
}

const NO_TYPE: u32 = u32::MAX;

/// A link's `(upstream, repository, digest)`, as indexes.
#[derive(Clone, Copy)]
struct Link {
    upstream: u32,
    repo: u32,
    id: Id,
}

#[derive(Default)]
pub struct Inventory {
    /// The text of every digest, back to back; id `i`'s ends at `ends[i]`.
    text: String,
    ends: Vec<usize>,
    /// Ids `0..held.len()`: the cached blobs, sorted by digest text.
    held: Vec<Held>,
    /// The ids of digests not cached, by text.
    absent: HashMap<Box<str>, Id>,
    media_types: Vec<String>,
    pub tags: Vec<TagEntry>,
    /// `tags[i]`'s digest, unless it does not parse.
    tag_ids: Vec<Option<Id>>,
    links: Vec<Link>,
    upstreams: Vec<String>,
    repos: Vec<RepoName>,
    /// `(manifest, start, end)`: its children are `child_ids[start..end]`.
    /// Sorted by manifest id.
    children: Vec<(Id, usize, usize)>,
    child_ids: Vec<Id>,
    /// The platforms an index lists (`os/arch[/variant]`), for indexes.
    platforms: HashMap<Id, Vec<String>>,
}

/// Platforms of an index listed per image (`wharf ls`, the status page).
const MAX_PLATFORMS: usize = 32;

/// A set of ids that empties in constant time: a stamp per id.
pub struct IdSet {
    stamps: Vec<u32>,
    now: u32,
}

impl IdSet {
    fn new(ids: usize) -> IdSet {
        IdSet {
            stamps: vec![0; ids],
            now: 1,
        }
    }

    fn clear(&mut self) {
        self.now = self.now.wrapping_add(1);
        if self.now == 0 {
            self.stamps.fill(0);
            self.now = 1;
        }
    }

    /// Whether `id` was not in the set.
    fn insert(&mut self, id: Id) -> bool {
        let s = &mut self.stamps[id as usize];
        let new = *s != self.now;
        *s = self.now;
        new
    }

    fn contains_id(&self, id: Id) -> bool {
        self.stamps.get(id as usize) == Some(&self.now)
    }

    /// Whether `d` is in the set of `inv`'s digests.
    pub fn contains(&self, inv: &Inventory, d: &Digest) -> bool {
        inv.id(d.as_str()).is_some_and(|id| self.contains_id(id))
    }
}

impl Inventory {
    pub fn load(meta: &Metadata, store: &BlobStore) -> Result<Inventory, CacheError> {
        let mut inv = Inventory::default();
        let mut types: HashMap<String, u32> = HashMap::new();
        let mut sorted = true;
        meta.each_blob(&mut |key, rec| {
            let Ok(rec) = rec else { return };
            if key.parse::<Digest>().is_err() {
                return;
            }
            sorted &= inv.held.is_empty() || inv.name(inv.held.len() as Id - 1) < key;
            let media_type = match rec.media_type {
                None => NO_TYPE,
                Some(t) => {
                    let next = inv.media_types.len() as u32;
                    *types.entry(t).or_insert_with_key(|t| {
                        inv.media_types.push(t.clone());
                        next
                    })
                }
            };
            inv.push_text(key);
            inv.held.push(Held {
                size: rec.size,
                kind: rec.kind,
                last_access: rec.last_access,
                media_type,
            });
        })?;
        if !sorted {
            inv.sort_held();
        }

        let mut repo_ids: HashMap<String, u32> = HashMap::new();
        meta.each_link(&mut |up, repo, d| {
            if d.parse::<Digest>().is_err() {
                return;
            }
            let repo = match repo_ids.get(repo) {
                Some(&r) => r,
                None => {
                    let Ok(name) = repo.parse::<RepoName>() else {
                        return;
                    };
                    let r = inv.repos.len() as u32;
                    inv.repos.push(name);
                    repo_ids.insert(repo.to_owned(), r);
                    r
                }
            };
            let upstream = inv.upstream_id(up);
            let id = inv.intern(d);
            inv.links.push(Link { upstream, repo, id });
        })?;
        drop(repo_ids);

        inv.tags = meta.tags()?;
        for i in 0..inv.tags.len() {
            let id = match inv.tags[i].record.digest.parse::<Digest>() {
                Ok(d) => Some(inv.intern(d.as_str())),
                Err(_) => None,
            };
            inv.tag_ids.push(id);
        }

        for id in 0..inv.held.len() as Id {
            let held = inv.held[id as usize];
            if held.kind != Kind::Manifest {
                continue;
            }
            let d: Digest = inv.name(id).parse().expect("kept only if it parsed");
            let Some(bytes) = store.read(&d)? else {
                continue;
            };
            if inv.media_type(&held).is_some_and(is_index_type) {
                let mut listed: Vec<String> = Vec::new();
                let mut more = 0;
                for p in index_children(&bytes)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|c| c.platform.filter(|p| !p.is_unknown()))
                {
                    // An upstream's index may list thousands: the listing
                    // names the first few and how many more.
                    if listed.len() < MAX_PLATFORMS {
                        listed.push(p.to_string());
                    } else {
                        more += 1;
                    }
                }
                if more > 0 {
                    listed.push(format!("… {more} more"));
                }
                inv.platforms.insert(id, listed);
            }
            let r = references(&bytes);
            let start = inv.child_ids.len();
            for c in r.manifests.iter().chain(&r.blobs) {
                let c = inv.intern(c.as_str());
                inv.child_ids.push(c);
            }
            inv.children.push((id, start, inv.child_ids.len()));
        }
        Ok(inv)
    }

    fn push_text(&mut self, d: &str) {
        self.text.push_str(d);
        self.ends.push(self.text.len());
    }

    /// Puts the cached blobs in digest order, for an engine that did not
    /// scan in key order (its contract says it does). Runs before any other
    /// id is handed out.
    fn sort_held(&mut self) {
        let mut order: Vec<Id> = (0..self.held.len() as Id).collect();
        order.sort_by(|&a, &b| self.name(a).cmp(self.name(b)));
        let (mut text, mut ends) = (String::new(), Vec::with_capacity(order.len()));
        for &i in &order {
            text.push_str(self.name(i));
            ends.push(text.len());
        }
        self.held = order.iter().map(|&i| self.held[i as usize]).collect();
        self.text = text;
        self.ends = ends;
    }

    fn name(&self, id: Id) -> &str {
        let id = id as usize;
        let start = if id == 0 { 0 } else { self.ends[id - 1] };
        &self.text[start..self.ends[id]]
    }

    fn digest(&self, id: Id) -> Digest {
        self.name(id).parse().expect("kept only if it parsed")
    }

    fn id(&self, d: &str) -> Option<Id> {
        let (mut lo, mut hi) = (0, self.held.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.name(mid as Id).cmp(d) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid as Id),
            }
        }
        self.absent.get(d).copied()
    }

    /// `d`'s id, given one if it has none; `d` must be a parsed digest.
    fn intern(&mut self, d: &str) -> Id {
        if let Some(id) = self.id(d) {
            return id;
        }
        let id = self.ends.len() as Id;
        self.push_text(d);
        self.absent.insert(d.into(), id);
        id
    }

    fn upstream_id(&mut self, up: &str) -> u32 {
        match self.upstreams.iter().position(|u| u == up) {
            Some(i) => i as u32,
            None => {
                self.upstreams.push(up.to_owned());
                self.upstreams.len() as u32 - 1
            }
        }
    }

    fn held_of(&self, id: Id) -> Option<&Held> {
        self.held.get(id as usize)
    }

    fn media_type(&self, held: &Held) -> Option<&str> {
        self.media_types
            .get(held.media_type as usize)
            .map(String::as_str)
    }

    fn children_of(&self, id: Id) -> &[Id] {
        match self.children.binary_search_by_key(&id, |c| c.0) {
            Ok(i) => &self.child_ids[self.children[i].1..self.children[i].2],
            Err(_) => &[],
        }
    }

    fn id_set(&self) -> IdSet {
        IdSet::new(self.ends.len())
    }

    /// Adds `root` and everything it refers to, transitively, to `seen`;
    /// appends to `out` the ids that were not in it yet.
    fn walk(&self, root: Id, seen: &mut IdSet, out: &mut Vec<Id>) {
        let mut i = out.len();
        if seen.insert(root) {
            out.push(root);
        }
        while i < out.len() {
            for &c in self.children_of(out[i]) {
                if seen.insert(c) {
                    out.push(c);
                }
            }
            i += 1;
        }
    }

    /// The record of a cached blob.
    pub fn blob(&self, d: &Digest) -> Option<&Held> {
        self.held_of(self.id(d.as_str())?)
    }

    pub fn blob_count(&self) -> usize {
        self.held.len()
    }

    pub fn manifest_count(&self) -> usize {
        self.held
            .iter()
            .filter(|h| h.kind == Kind::Manifest)
            .count()
    }

    /// Every link: `(upstream, repository, digest)`.
    pub fn links(&self) -> impl Iterator<Item = (&str, &RepoName, Digest)> + '_ {
        self.links.iter().map(|l| {
            (
                self.upstreams[l.upstream as usize].as_str(),
                &self.repos[l.repo as usize],
                self.digest(l.id),
            )
        })
    }

    /// A manifest and everything it refers to, transitively, that the cache
    /// holds or may come to hold (digests not cached are included: they are
    /// still the image's).
    ///
    /// Costs what the closure holds, not what the inventory does: `wharf rm`
    /// calls it once per link and tag of a repository.
    pub fn closure(&self, root: &Digest) -> HashSet<Digest> {
        let Some(root) = self.id(root.as_str()) else {
            return HashSet::from([root.clone()]);
        };
        let (mut seen, mut todo) = (HashSet::from([root]), vec![root]);
        while let Some(id) = todo.pop() {
            for &c in self.children_of(id) {
                if seen.insert(c) {
                    todo.push(c);
                }
            }
        }
        seen.into_iter().map(|id| self.digest(id)).collect()
    }

    /// Bytes of the cached blobs in `ids`.
    fn size_of(&self, ids: impl IntoIterator<Item = Id>) -> u64 {
        ids.into_iter()
            .filter_map(|id| self.held_of(id))
            .map(|h| h.size)
            .sum()
    }

    pub fn total(&self) -> u64 {
        self.held.iter().map(|h| h.size).sum()
    }

    /// The links to digests recorded as manifests: the roots of untagged
    /// images.
    fn manifest_links(&self) -> impl Iterator<Item = &Link> {
        self.links
            .iter()
            .filter(|l| self.held_of(l.id).is_some_and(|h| h.kind == Kind::Manifest))
    }

    /// Every id the pins protect: the closures of pinned tags and of pinned
    /// manifests.
    pub fn pinned_ids(&self, pins: &[Pin]) -> IdSet {
        let mut set = self.id_set();
        if pins.is_empty() {
            return set;
        }
        let mut scratch = Vec::new();
        for (t, id) in self.tags.iter().zip(&self.tag_ids) {
            if let Some(id) = *id {
                if pins
                    .iter()
                    .any(|p| p.matches(&t.upstream, &t.repo, t.tag.as_str()))
                {
                    self.walk(id, &mut set, &mut scratch);
                }
            }
        }
        for l in self.manifest_links() {
            let (up, repo) = (
                &self.upstreams[l.upstream as usize],
                &self.repos[l.repo as usize],
            );
            if pins.iter().any(|p| p.matches(up, repo, self.name(l.id))) {
                self.walk(l.id, &mut set, &mut scratch);
            }
        }
        set
    }

    /// Every digest the pins protect, as [`pinned_ids`](Self::pinned_ids).
    pub fn pinned(&self, pins: &[Pin]) -> HashSet<Digest> {
        let set = self.pinned_ids(pins);
        (0..self.ends.len() as Id)
            .filter(|&id| set.contains_id(id))
            .map(|id| self.digest(id))
            .collect()
    }

    /// Bytes of the cached blobs in `set`.
    pub fn size_of_set(&self, set: &IdSet) -> u64 {
        self.size_of((0..self.held.len() as Id).filter(|&id| set.contains_id(id)))
    }

    /// What the rest of the cache uses: the pins' content, and the closures
    /// of every tag and link.
    pub fn in_use(&self, pins: &[Pin]) -> IdSet {
        let mut set = self.pinned_ids(pins);
        let mut scratch = Vec::new();
        let roots = self
            .tag_ids
            .iter()
            .flatten()
            .chain(self.links.iter().map(|l| &l.id));
        for &id in roots {
            self.walk(id, &mut set, &mut scratch);
            scratch.clear();
        }
        set
    }

    /// Bytes each upstream's images use (its tags' and links' closures);
    /// content two upstreams share counts in each. By upstream name.
    pub fn upstream_sizes(&self) -> Vec<(String, u64)> {
        let mut roots: BTreeMap<&str, Vec<Id>> = BTreeMap::new();
        for (t, id) in self.tags.iter().zip(&self.tag_ids) {
            if let Some(id) = *id {
                roots.entry(t.upstream.as_str()).or_default().push(id);
            }
        }
        for l in &self.links {
            roots
                .entry(self.upstreams[l.upstream as usize].as_str())
                .or_default()
                .push(l.id);
        }
        let (mut seen, mut reached) = (self.id_set(), Vec::new());
        roots
            .into_iter()
            .map(|(up, ids)| {
                seen.clear();
                reached.clear();
                for id in ids {
                    self.walk(id, &mut seen, &mut reached);
                }
                (up.to_owned(), self.size_of(reached.iter().copied()))
            })
            .collect()
    }

    /// The `wharf ls` view: per repository, its tags and untagged manifests.
    pub fn listing(&self, pinned: &IdSet) -> Vec<RepoListing> {
        // Per repository: its tags (in key order), then its links to
        // manifests (in key order).
        #[derive(Default)]
        struct Repo<'a> {
            tags: Vec<(&'a str, Id)>,
            manifests: Vec<Id>,
        }
        let mut repos: BTreeMap<(&str, String), Repo> = BTreeMap::new();
        for (t, id) in self.tags.iter().zip(&self.tag_ids) {
            if let Some(id) = *id {
                repos
                    .entry((t.upstream.as_str(), t.repo.to_string()))
                    .or_default()
                    .tags
                    .push((t.tag.as_str(), id));
            }
        }
        for l in self.manifest_links() {
            let key = (
                self.upstreams[l.upstream as usize].as_str(),
                self.repos[l.repo as usize].to_string(),
            );
            repos.entry(key).or_default().manifests.push(l.id);
        }

        let (mut repo_seen, mut image_seen) = (self.id_set(), self.id_set());
        let (mut reached, mut closure) = (Vec::new(), Vec::new());
        let mut out = Vec::with_capacity(repos.len());
        for ((up, repo), r) in repos {
            // Everything the repository's tags reach: a linked manifest in
            // there (an index's child, or the tag's own) is part of a tagged
            // image, not an untagged one.
            repo_seen.clear();
            reached.clear();
            for &(_, id) in &r.tags {
                self.walk(id, &mut repo_seen, &mut reached);
            }
            let rows: Vec<(Option<&str>, Id)> = r
                .tags
                .iter()
                .map(|&(tag, id)| (Some(tag), id))
                .chain(
                    r.manifests
                        .iter()
                        .filter(|&&id| !repo_seen.contains_id(id))
                        .map(|&id| (None, id)),
                )
                .collect();
            // Then the repository's size: its images' content, once.
            repo_seen.clear();
            let mut size = 0;
            let mut images = Vec::with_capacity(rows.len());
            for (tag, root) in rows {
                image_seen.clear();
                closure.clear();
                self.walk(root, &mut image_seen, &mut closure);
                let (mut cached, mut bytes, mut last_access) = (0, 0, 0);
                for &id in &closure {
                    if let Some(h) = self.held_of(id) {
                        cached += 1;
                        bytes += h.size;
                        last_access = last_access.max(h.last_access);
                        if repo_seen.insert(id) {
                            size += h.size;
                        }
                    }
                }
                let held = self.held_of(root);
                images.push(ImageListing {
                    tag: tag.map(str::to_owned),
                    digest: self.name(root).to_owned(),
                    size: bytes,
                    cached_blobs: cached,
                    total_blobs: closure.len(),
                    last_access_ms: last_access,
                    pinned: pinned.contains_id(root),
                    media_type: held.and_then(|h| self.media_type(h)).map(str::to_owned),
                    platforms: self.platforms.get(&root).cloned().unwrap_or_default(),
                });
            }
            out.push(RepoListing {
                upstream: up.to_owned(),
                repository: repo,
                size,
                images,
            });
        }
        out
    }
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct RepoListing {
    pub upstream: String,
    pub repository: String,
    /// Bytes of this repository's images (content shared between its images
    /// counted once).
    pub size: u64,
    pub images: Vec<ImageListing>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ImageListing {
    /// `None`: a manifest cached by digest only.
    pub tag: Option<String>,
    pub digest: String,
    /// Bytes of this image's content in the cache.
    pub size: u64,
    pub cached_blobs: usize,
    pub total_blobs: usize,
    pub last_access_ms: u64,
    pub pinned: bool,
    /// The manifest's type, when cached.
    #[serde(default)]
    pub media_type: Option<String>,
    /// For an index: the platforms it lists (`os/arch[/variant]`, as the
    /// upstream wrote them; attestations left out).
    #[serde(default)]
    pub platforms: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::meta::{BlobRecord, Kv, MemKv, Tree};

    struct Fixture {
        _dir: tempfile::TempDir,
        meta: Metadata,
        store: BlobStore,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store = BlobStore::open(dir.path()).unwrap();
            Fixture {
                _dir: dir,
                meta: Metadata::in_memory(),
                store,
            }
        }

        fn blob(&self, bytes: &[u8], last_access: u64) -> Digest {
            let d = Digest::sha256_of(bytes);
            self.store.put_verified(&d, bytes).unwrap();
            let rec = BlobRecord::blob(bytes.len() as u64, last_access);
            self.meta.put_blob(&d, &rec).unwrap();
            d
        }

        fn manifest(&self, m: serde_json::Value, mt: &str) -> Digest {
            let bytes = serde_json::to_vec(&m).unwrap();
            let d = Digest::sha256_of(&bytes);
            self.store.put_verified(&d, &bytes).unwrap();
            let rec = BlobRecord::manifest(bytes.len() as u64, mt, 1);
            self.meta.put_blob(&d, &rec).unwrap();
            d
        }

        fn link(&self, up: &str, repo: &str, d: &Digest) {
            self.meta.link(up, &repo.parse().unwrap(), d).unwrap();
        }

        fn tag(&self, up: &str, repo: &str, tag: &str, d: &Digest, mt: &str) {
            let (repo, tag) = (repo.parse().unwrap(), tag.parse().unwrap());
            let mt = mt.parse().unwrap();
            self.meta.put_tag(up, &repo, &tag, d, &mt, 1).unwrap();
        }

        fn size(&self, ds: &[&Digest]) -> u64 {
            ds.iter()
                .map(|d| self.meta.get_blob(d).unwrap().unwrap().size)
                .sum()
        }
    }

    const IMAGE: &str = "application/vnd.oci.image.manifest.v1+json";
    const INDEX: &str = "application/vnd.oci.image.index.v1+json";

    fn image(config: &Digest, layers: &[&Digest]) -> serde_json::Value {
        let desc =
            |d: &Digest| serde_json::json!({"mediaType": "x", "digest": d.to_string(), "size": 1});
        serde_json::json!({"schemaVersion": 2, "mediaType": IMAGE, "config": desc(config),
            "layers": layers.iter().map(|d| desc(d)).collect::<Vec<_>>()})
    }

    /// Images share layers, an index lists two platforms, a layer was
    /// evicted, a manifest is linked but untagged, a blob is orphaned: each
    /// figure the catalog shows, against the sums by hand.
    #[test]
    fn listing_sizes_pins_and_use_follow_the_images() {
        let f = Fixture::new();
        let base = f.blob(b"base layer", 10);
        let (a1, a2, b1) = (f.blob(b"a1", 20), f.blob(b"a22", 30), f.blob(b"b111", 40));
        let (ca, cb) = (f.blob(b"config a", 5), f.blob(b"config b", 6));
        let orphan = f.blob(b"nobody's", 7);
        let gone = Digest::sha256_of(b"evicted layer");
        let a = f.manifest(image(&ca, &[&base, &a1, &a2]), IMAGE);
        let b = f.manifest(image(&cb, &[&base, &b1, &gone]), IMAGE);
        let plat = |d: &Digest, arch: &str| {
            serde_json::json!({"mediaType": IMAGE,
            "digest": d.to_string(), "size": 1, "platform": {"os": "linux", "architecture": arch}})
        };
        let x = f.manifest(
            serde_json::json!({"schemaVersion": 2, "mediaType": INDEX,
                "manifests": [plat(&a, "amd64"), plat(&b, "arm64")]}),
            INDEX,
        );
        let u = f.manifest(image(&ca, &[&a1]), IMAGE);
        f.tag("hub", "team/r1", "x", &x, INDEX);
        f.tag("gar", "r2", "b", &b, IMAGE);
        for d in [&x, &a, &u, &base, &a1, &a2, &ca] {
            f.link("hub", "team/r1", d);
        }
        f.link("gar", "r2", &b);

        let inv = Inventory::load(&f.meta, &f.store).unwrap();
        assert_eq!(inv.blob_count(), 11);
        assert_eq!(inv.manifest_count(), 4);
        assert!(inv.blob(&gone).is_none());
        assert_eq!(inv.blob(&a1).unwrap().size, 2);
        assert_eq!(inv.closure(&gone), HashSet::from([gone.clone()]));
        let b_closure = HashSet::from([
            b.clone(),
            cb.clone(),
            base.clone(),
            b1.clone(),
            gone.clone(),
        ]);
        assert_eq!(inv.closure(&b), b_closure);

        let pins = [Pin::parse("hub/team/r1:x").unwrap()];
        let pinned = inv.pinned_ids(&pins);
        let x_all = [&x, &a, &b, &ca, &cb, &base, &a1, &a2, &b1];
        assert_eq!(inv.size_of_set(&pinned), f.size(&x_all));
        assert!(pinned.contains(&inv, &gone) && !pinned.contains(&inv, &u));
        assert_eq!(inv.pinned(&pins).len(), 10);

        let repos = inv.listing(&pinned);
        let names: Vec<_> = repos
            .iter()
            .map(|r| (r.upstream.as_str(), r.repository.as_str()))
            .collect();
        assert_eq!(names, [("gar", "r2"), ("hub", "team/r1")]);
        let r2 = &repos[0].images;
        assert_eq!(r2.len(), 1);
        assert_eq!(
            (r2[0].tag.as_deref(), r2[0].cached_blobs, r2[0].total_blobs),
            (Some("b"), 4, 5)
        );
        assert_eq!(r2[0].size, f.size(&[&b, &cb, &base, &b1]));
        assert_eq!(r2[0].last_access_ms, 40);
        // Pinned through the index that lists it, in another repository.
        assert!(r2[0].pinned);
        // A is reached by the tagged index; U is not: the one untagged row.
        let r1 = &repos[1].images;
        assert_eq!(r1.len(), 2, "{r1:?}");
        assert_eq!((r1[0].tag.as_deref(), r1[0].pinned), (Some("x"), true));
        assert_eq!((r1[0].cached_blobs, r1[0].total_blobs), (9, 10));
        assert_eq!(r1[0].platforms, ["linux/amd64", "linux/arm64"]);
        assert_eq!(r1[0].media_type.as_deref(), Some(INDEX));
        assert_eq!(
            (r1[1].tag.as_deref(), r1[1].digest.as_str()),
            (None, u.as_str())
        );
        assert_eq!(r1[1].size, f.size(&[&u, &ca, &a1]));
        // Shared content counts once per repository.
        assert_eq!(repos[1].size, f.size(&x_all) + f.size(&[&u]));
        assert_eq!(repos[0].size, r2[0].size);

        assert_eq!(
            inv.upstream_sizes(),
            [
                ("gar".to_owned(), f.size(&[&b, &cb, &base, &b1])),
                ("hub".to_owned(), f.size(&x_all) + f.size(&[&u])),
            ]
        );
        let used = inv.in_use(&[]);
        assert!(x_all.iter().chain([&&u]).all(|d| used.contains(&inv, d)));
        assert!(!used.contains(&inv, &orphan));
        let orphan_pin = [Pin::parse(&format!("hub/team/r1@{orphan}")).unwrap()];
        assert!(
            !inv.in_use(&orphan_pin).contains(&inv, &orphan),
            "a pin protects images: the orphan is linked nowhere"
        );
        assert_eq!(inv.links().count(), 8);
        assert!(inv
            .links()
            .any(|(up, r, d)| up == "gar" && r.as_str() == "r2" && d == b));
    }

    #[test]
    fn an_id_set_empties_when_its_stamp_wraps() {
        let mut s = IdSet::new(3);
        s.now = u32::MAX;
        assert!(s.insert(1));
        assert!(!s.insert(1));
        s.clear();
        assert!(!s.contains_id(1));
        assert!(s.insert(1) && s.contains_id(1) && !s.contains_id(2));
    }

    /// An engine that scans backwards, against the [`Kv`] contract.
    struct Backwards(MemKv);

    impl Kv for Backwards {
        fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, CacheError> {
            self.0.get(tree, key)
        }
        fn insert(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), CacheError> {
            self.0.insert(tree, key, value)
        }
        fn remove(&self, tree: Tree, key: &[u8]) -> Result<(), CacheError> {
            self.0.remove(tree, key)
        }
        fn len(&self, tree: Tree) -> Result<usize, CacheError> {
            self.0.len(tree)
        }
        fn scan(
            &self,
            tree: Tree,
            prefix: &[u8],
            f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
        ) -> Result<(), CacheError> {
            let mut all = Vec::new();
            self.0.scan(tree, prefix, &mut |k, v| {
                all.push((k.to_vec(), v.to_vec()));
                true
            })?;
            for (k, v) in all.iter().rev() {
                if !f(k, v) {
                    break;
                }
            }
            Ok(())
        }
        fn flush(&self) -> Result<(), CacheError> {
            self.0.flush()
        }
    }

    /// Lookups are binary searches over the records in key order: an engine
    /// that scans out of order is sorted first, and a key that is no digest
    /// is left out.
    #[test]
    fn records_out_of_key_order_or_not_digests_are_handled() {
        let kv = MemKv::default();
        let rec = serde_json::to_vec(&BlobRecord::blob(9, 1)).unwrap();
        kv.insert(Tree::Blobs, b"sha256:not-hex", &rec).unwrap();
        let meta = Metadata::new(Box::new(Backwards(kv))).unwrap();
        let digests: Vec<Digest> = (0..50u8)
            .map(|i| {
                let d = Digest::sha256_of(&[i]);
                meta.put_blob(&d, &BlobRecord::blob(u64::from(i) + 1, 1))
                    .unwrap();
                d
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let inv = Inventory::load(&meta, &BlobStore::open(dir.path()).unwrap()).unwrap();
        assert_eq!(inv.blob_count(), 50);
        for (i, d) in digests.iter().enumerate() {
            assert_eq!(inv.blob(d).unwrap().size, i as u64 + 1, "{d}");
        }
    }

    /// A manifest record whose file is gone, a link to content never
    /// cached, a root nobody named: each its own closure, and still in use.
    #[test]
    fn what_is_named_but_not_readable_is_its_own_closure() {
        let f = Fixture::new();
        let c = f.blob(b"config", 1);
        let lost = f.manifest(image(&c, &[]), IMAGE);
        std::fs::remove_file(f.store.path(&lost)).unwrap();
        let never = Digest::sha256_of(b"never cached");
        f.link("hub", "r", &lost);
        f.link("hub", "r", &never);
        let inv = Inventory::load(&f.meta, &f.store).unwrap();
        assert_eq!(inv.closure(&lost), HashSet::from([lost.clone()]));
        let unknown = Digest::sha256_of(b"unknown");
        assert_eq!(inv.closure(&unknown), HashSet::from([unknown.clone()]));
        let repos = inv.listing(&inv.pinned_ids(&[]));
        assert_eq!(repos.len(), 1);
        let img = &repos[0].images;
        assert_eq!(img.len(), 1, "only the manifest is a row: {img:?}");
        assert_eq!(
            (
                img[0].digest.as_str(),
                img[0].cached_blobs,
                img[0].total_blobs
            ),
            (lost.as_str(), 1, 1)
        );
        assert_eq!(inv.upstream_sizes(), [("hub".to_owned(), f.size(&[&lost]))]);
        let used = inv.in_use(&[]);
        assert!(used.contains(&inv, &lost) && used.contains(&inv, &never));
        assert!(!used.contains(&inv, &c) && !used.contains(&inv, &unknown));
    }
}
