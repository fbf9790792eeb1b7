//! A snapshot of what the cache holds, seen as images: the tags and linked
//! manifests of each repository, and the content each one is made of. Used by
//! eviction (what pins protect), `wharf ls`, `wharf du` and `wharf rm`.
//!
//! Built from one scan of each metadata tree plus a read of each manifest
//! reached (small files), so it costs about a second per 100,000 blobs; it is
//! built on demand and never kept.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::registry::manifest::references;
use crate::registry::{index_children, is_index_type};
use crate::registry::{Digest, RepoName};

use super::meta::{BlobRecord, Kind, Metadata, TagEntry};
use super::pins::Pin;
use super::store::BlobStore;
use super::CacheError;

pub struct Inventory {
    pub blobs: HashMap<Digest, BlobRecord>,
    pub tags: Vec<TagEntry>,
    /// Links to digests recorded as manifests: the roots of untagged images.
    pub manifest_links: Vec<(String, RepoName, Digest)>,
    /// Links to anything else (layers and configs).
    pub blob_links: Vec<(String, RepoName, Digest)>,
    children: HashMap<Digest, Vec<Digest>>,
    /// The platforms an index lists (`os/arch[/variant]`), for indexes.
    platforms: HashMap<Digest, Vec<String>>,
}

/// Platforms of an index listed per image (`wharf ls`, the status page).
const MAX_PLATFORMS: usize = 32;

impl Inventory {
    pub fn load(meta: &Metadata, store: &BlobStore) -> Result<Inventory, CacheError> {
        let mut blobs = HashMap::new();
        for (key, rec) in meta.blobs()? {
            if let (Ok(d), Ok(rec)) = (key.parse::<Digest>(), rec) {
                blobs.insert(d, rec);
            }
        }
        let mut manifest_links = Vec::new();
        let mut blob_links = Vec::new();
        for (up, repo, d) in meta.links()? {
            match blobs.get(&d).map(|b| b.kind) {
                Some(Kind::Manifest) => manifest_links.push((up, repo, d)),
                _ => blob_links.push((up, repo, d)),
            }
        }
        let mut children = HashMap::new();
        let mut platforms = HashMap::new();
        for (d, rec) in &blobs {
            if rec.kind == Kind::Manifest {
                if let Some(bytes) = store.read(d)? {
                    if rec.media_type.as_deref().is_some_and(is_index_type) {
                        let all: Vec<String> = index_children(&bytes)
                            .unwrap_or_default()
                            .into_iter()
                            .filter_map(|c| c.platform.filter(|p| !p.is_unknown()))
                            .map(|p| p.to_string())
                            .collect();
                        // An upstream's index may list thousands: the
                        // listing names the first few and how many more.
                        let mut listed: Vec<String> =
                            all.iter().take(MAX_PLATFORMS).cloned().collect();
                        if all.len() > MAX_PLATFORMS {
                            listed.push(format!("… {} more", all.len() - MAX_PLATFORMS));
                        }
                        platforms.insert(d.clone(), listed);
                    }
                    let r = references(&bytes);
                    children.insert(d.clone(), r.manifests.into_iter().chain(r.blobs).collect());
                }
            }
        }
        Ok(Inventory {
            blobs,
            tags: meta.tags()?,
            manifest_links,
            blob_links,
            children,
            platforms,
        })
    }

    /// A manifest and everything it refers to, transitively, that the cache
    /// holds or may come to hold (digests not cached are included: they are
    /// still the image's).
    pub fn closure(&self, root: &Digest) -> HashSet<Digest> {
        let mut out = HashSet::new();
        let mut todo = vec![root.clone()];
        while let Some(d) = todo.pop() {
            if out.insert(d.clone()) {
                if let Some(c) = self.children.get(&d) {
                    todo.extend(c.iter().cloned());
                }
            }
        }
        out
    }

    /// Bytes of a set of digests that are cached.
    pub fn size_of<'a>(&self, ds: impl IntoIterator<Item = &'a Digest>) -> u64 {
        ds.into_iter()
            .filter_map(|d| self.blobs.get(d))
            .map(|b| b.size)
            .sum()
    }

    pub fn total(&self) -> u64 {
        self.blobs.values().map(|b| b.size).sum()
    }

    /// Every digest the pins protect: the closures of pinned tags and of
    /// pinned manifests.
    pub fn pinned(&self, pins: &[Pin]) -> HashSet<Digest> {
        let mut out = HashSet::new();
        if pins.is_empty() {
            return out;
        }
        for t in &self.tags {
            if pins
                .iter()
                .any(|p| p.matches(&t.upstream, &t.repo, t.tag.as_str()))
            {
                if let Ok(d) = t.record.digest.parse::<Digest>() {
                    out.extend(self.closure(&d));
                }
            }
        }
        for (up, repo, d) in &self.manifest_links {
            if pins.iter().any(|p| p.matches(up, repo, d.as_str())) {
                out.extend(self.closure(d));
            }
        }
        out
    }

    /// The `wharf ls` view: per repository, its tags and untagged manifests.
    pub fn listing(&self, pinned: &HashSet<Digest>) -> Vec<RepoListing> {
        let mut repos: BTreeMap<(String, String), RepoListing> = BTreeMap::new();
        let entry = |repos: &mut BTreeMap<_, RepoListing>, up: &str, repo: &RepoName| {
            repos
                .entry((up.to_owned(), repo.to_string()))
                .or_insert_with(|| RepoListing {
                    upstream: up.to_owned(),
                    repository: repo.to_string(),
                    images: Vec::new(),
                    size: 0,
                })
                .images
                .len()
        };
        // Per repository, everything its tags reach: a linked manifest in
        // there (an index's child, or the tag's own) is part of a tagged image.
        let mut reached: HashMap<(String, String), HashSet<Digest>> = HashMap::new();
        let mut rows: Vec<(String, RepoName, Option<String>, Digest)> = Vec::new();
        for t in &self.tags {
            if let Ok(d) = t.record.digest.parse::<Digest>() {
                reached
                    .entry((t.upstream.clone(), t.repo.to_string()))
                    .or_default()
                    .extend(self.closure(&d));
                rows.push((
                    t.upstream.clone(),
                    t.repo.clone(),
                    Some(t.tag.to_string()),
                    d,
                ));
            }
        }
        for (up, repo, d) in &self.manifest_links {
            let inside = reached
                .get(&(up.clone(), repo.to_string()))
                .is_some_and(|r| r.contains(d));
            if !inside {
                rows.push((up.clone(), repo.clone(), None, d.clone()));
            }
        }
        let mut repo_digests: HashMap<(String, String), HashSet<Digest>> = HashMap::new();
        for (up, repo, tag, d) in rows {
            entry(&mut repos, &up, &repo);
            let closure = self.closure(&d);
            let cached = closure
                .iter()
                .filter(|c| self.blobs.contains_key(c))
                .count();
            let last_access = closure
                .iter()
                .filter_map(|c| self.blobs.get(c))
                .map(|b| b.last_access)
                .max()
                .unwrap_or(0);
            let img = ImageListing {
                tag,
                digest: d.to_string(),
                size: self.size_of(&closure),
                cached_blobs: cached,
                total_blobs: closure.len(),
                last_access_ms: last_access,
                pinned: pinned.contains(&d),
                media_type: self.blobs.get(&d).and_then(|b| b.media_type.clone()),
                platforms: self.platforms.get(&d).cloned().unwrap_or_default(),
            };
            let key = (up, repo.to_string());
            repo_digests.entry(key.clone()).or_default().extend(closure);
            repos
                .get_mut(&key)
                .expect("entry made above")
                .images
                .push(img);
        }
        for (key, ds) in repo_digests {
            let size = self.size_of(&ds);
            repos.get_mut(&key).expect("listed").size = size;
        }
        repos.into_values().collect()
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
