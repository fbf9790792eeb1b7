//! The cache seen as images, kept between reads: what `wharf ls` and
//! `wharf du` report and what the status page shows. One function builds it
//! from one [`Inventory`], and it carries the metadata generation it was
//! built at, so two answers with the same generation come from the same
//! snapshot and agree to the byte.
//!
//! Owns: the snapshot, how it is stored (packed: [`Catalog::repos`] reads it
//! in place) and when to rebuild it. Builds run on the scan thread while the
//! caller (a blocking thread for `ls` and `du`, the `wharf-status` thread
//! for a status-page view) waits, never on a registry request's path, and
//! never write: a page view cannot change what it shows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::inventory::{ImageListing, Inventory, RepoListing};
use super::meta::now_millis;
use super::{Cache, CacheError};
use crate::memory::release_scratch_memory;

/// A snapshot of the cache as images.
#[derive(Debug)]
pub struct Catalog {
    /// The metadata generation read before the scan: the snapshot is at
    /// least this new.
    pub generation: u64,
    /// When it was built (ms since the epoch, for people; its age is
    /// measured on the monotonic clock).
    pub built_ms: u64,
    built_at: Instant,
    /// How long building it took.
    pub build_time: Duration,
    /// Repositories in (upstream, repository) order, packed: see
    /// [`Catalog::repos`].
    rows: Rows,
    pub totals: Totals,
}

/// The figures of `wharf du` that come from the records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub blobs: u64,
    pub manifests: u64,
    pub bytes: u64,
    pub pinned_bytes: u64,
    pub repositories: u64,
    /// Tagged images plus manifests cached by digest only (`ls` rows).
    pub images: u64,
    /// Bytes each upstream's images use; content two upstreams share counts
    /// in each.
    pub upstreams: Vec<(String, u64)>,
}

impl Catalog {
    /// From the inventory read since `started`. The rows are packed while
    /// the inventory still lives, so that they do not land among its freed
    /// scratch (`benches/status_rss.py` on a cold server: 4.3–5.4 MiB in
    /// three runs packed after the drop, 3.2–4.5 MiB in eight packed before).
    fn build(
        generation: u64,
        inv: Inventory,
        pins: &[super::pins::Pin],
        started: Instant,
    ) -> Catalog {
        let pinned = inv.pinned_ids(pins);
        let repos = inv.listing(&pinned);
        let rows = Rows::pack(&repos);
        let totals = Totals {
            blobs: inv.blob_count() as u64,
            manifests: inv.manifest_count() as u64,
            bytes: inv.total(),
            pinned_bytes: inv.size_of_set(&pinned),
            repositories: repos.len() as u64,
            images: repos.iter().map(|r| r.images.len() as u64).sum(),
            upstreams: inv.upstream_sizes(),
        };
        drop((pinned, inv, repos));
        release_scratch_memory();
        Catalog {
            generation,
            built_ms: now_millis(),
            built_at: Instant::now(),
            build_time: started.elapsed(),
            rows,
            totals,
        }
    }
}

/// The snapshot and the single flight that rebuilds it.
#[derive(Default)]
pub(super) struct CatalogSlot {
    current: parking_lot::Mutex<Option<Arc<Catalog>>>,
    building: parking_lot::Mutex<()>,
}

impl Cache {
    /// The catalog as of now: rebuilt if any record changed since the last
    /// one. Blocking (reads every record and manifest: about a second per
    /// 100,000 blobs).
    pub fn catalog(&self) -> Result<Arc<Catalog>, CacheError> {
        self.catalog_within(Duration::ZERO)
    }

    /// The last catalog if it is current, or was built less than
    /// `max(fresh, 10 × its build time)` ago; else a new one. A cache that
    /// changes all the time is then rescanned at most every `fresh` and for
    /// at most a tenth of a core, however often it is viewed. Blocking.
    pub fn catalog_within(&self, fresh: Duration) -> Result<Arc<Catalog>, CacheError> {
        let usable = |c: &Option<Arc<Catalog>>| {
            let c = c.as_ref()?;
            let current = c.generation == self.meta.generation();
            let recent = !fresh.is_zero() && c.built_at.elapsed() < fresh.max(c.build_time * 10);
            (current || recent).then(|| c.clone())
        };
        if let Some(c) = usable(&self.catalog.current.lock()) {
            return Ok(c);
        }
        // One build at a time. A view takes the last catalog while another
        // is being built; `ls` and `du` (fresh = 0) wait for it.
        let _building = if fresh.is_zero() {
            self.catalog.building.lock()
        } else {
            match self.catalog.building.try_lock() {
                Some(b) => b,
                None => match self.catalog.current.lock().clone() {
                    Some(c) => return Ok(c),
                    None => self.catalog.building.lock(),
                },
            }
        };
        if let Some(c) = usable(&self.catalog.current.lock()) {
            return Ok(c);
        }
        let generation = self.meta.generation();
        let pins = self.pins()?;
        let (meta, store) = (self.meta.clone(), self.store.clone());
        let built = self.scan.run(move || -> Result<Catalog, CacheError> {
            // Timed from the scan: the build time sets how long a view may
            // reuse the catalog.
            let started = Instant::now();
            let inv = Inventory::load(&meta, &store)?;
            Ok(Catalog::build(generation, inv, &pins, started))
        })?;
        let built = Arc::new(built);
        self.metrics.catalog_bytes.set(built.heap_bytes() as i64);
        tracing::debug!(
            bytes = built.heap_bytes(),
            generation,
            ms = built.build_time.as_millis() as u64,
            "cache catalog built"
        );
        *self.catalog.current.lock() = Some(built.clone());
        Ok(built)
    }
}

impl Catalog {
    /// The repositories, in (upstream, repository) order.
    pub fn repos(&self) -> impl ExactSizeIterator<Item = Repo<'_>> + Clone + '_ {
        self.rows.repos.iter().map(|row| Repo {
            rows: &self.rows,
            row,
        })
    }

    /// Every repository's [`Repo::to_listing`], as the JSON array `wharf
    /// ls` sends, serialized a repository at a time:
    /// `wharf ls` of 5,000 images is megabytes of JSON, which an
    /// intermediate `Vec` or `serde_json::Value` would hold several times
    /// over.
    pub fn listing_json(&self) -> String {
        struct All<'a>(&'a Catalog);
        impl Serialize for All<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.repos().map(|r| r.to_listing()))
            }
        }
        serde_json::to_string(&All(self)).expect("a listing serializes")
    }

    /// Bytes the catalog holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.rows.heap_bytes()
    }
}

/// A catalog's rows, packed: every string in one buffer (names of
/// upstreams, media types, tags and platforms stored once however often they
/// recur), rows of fixed size pointing into it. 5,000 images take about
/// 0.7 MB this way, against 1.8 MB as [`RepoListing`]s, in four allocations
/// instead of twenty thousand, which matters because the catalog outlives
/// the scan that built it: its small strings would pin pages of the scan's
/// freed scratch for as long as it lives.
#[derive(Debug, Default)]
struct Rows {
    text: String,
    repos: Vec<RepoRow>,
    images: Vec<ImageRow>,
    platforms: Vec<Str>,
}

/// A string in [`Rows::text`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Str {
    at: u32,
    len: u32,
}

impl Str {
    /// No string (an `Option`'s `None`).
    const NONE: Str = Str {
        at: u32::MAX,
        len: 0,
    };
}

#[derive(Debug)]
struct RepoRow {
    upstream: Str,
    repository: Str,
    size: u64,
    images: std::ops::Range<u32>,
}

#[derive(Debug)]
struct ImageRow {
    tag: Str,
    digest: Str,
    media_type: Str,
    size: u64,
    last_access_ms: u64,
    cached_blobs: u32,
    total_blobs: u32,
    platforms: std::ops::Range<u32>,
    pinned: bool,
}

impl Rows {
    fn pack(repos: &[RepoListing]) -> Rows {
        // The rows and the text are sized exactly first, so that they are
        // not reallocated (leaving copies behind) while packing.
        let (mut images, mut platforms) = (0, 0);
        for r in repos {
            images += r.images.len();
            platforms += r.images.iter().map(|i| i.platforms.len()).sum::<usize>();
        }
        let mut rows = Rows {
            text: String::new(),
            repos: Vec::with_capacity(repos.len()),
            images: Vec::with_capacity(images),
            platforms: Vec::with_capacity(platforms),
        };
        // Strings that recur (upstreams, tags, media types, platforms) are
        // stored once; repositories and digests are not looked up, they
        // rarely recur.
        let mut text = Packer::default();
        for r in repos {
            let first = row_index(rows.images.len());
            for i in &r.images {
                let first_platform = row_index(rows.platforms.len());
                for p in &i.platforms {
                    let p = text.put(p, true);
                    rows.platforms.push(p);
                }
                rows.images.push(ImageRow {
                    tag: i.tag.as_deref().map_or(Str::NONE, |t| text.put(t, true)),
                    digest: text.put(&i.digest, false),
                    media_type: i
                        .media_type
                        .as_deref()
                        .map_or(Str::NONE, |m| text.put(m, true)),
                    size: i.size,
                    last_access_ms: i.last_access_ms,
                    cached_blobs: u32::try_from(i.cached_blobs).unwrap_or(u32::MAX),
                    total_blobs: u32::try_from(i.total_blobs).unwrap_or(u32::MAX),
                    platforms: first_platform..row_index(rows.platforms.len()),
                    pinned: i.pinned,
                });
            }
            rows.repos.push(RepoRow {
                upstream: text.put(&r.upstream, true),
                repository: text.put(&r.repository, false),
                size: r.size,
                images: first..row_index(rows.images.len()),
            });
        }
        rows.text.reserve_exact(text.len);
        for s in text.parts {
            rows.text.push_str(s);
        }
        rows
    }

    fn str(&self, s: Str) -> Option<&str> {
        (s != Str::NONE).then(|| &self.text[s.at as usize..s.at as usize + s.len as usize])
    }

    fn heap_bytes(&self) -> usize {
        self.text.capacity()
            + self.repos.capacity() * std::mem::size_of::<RepoRow>()
            + self.images.capacity() * std::mem::size_of::<ImageRow>()
            + self.platforms.capacity() * std::mem::size_of::<Str>()
    }
}

fn row_index(n: usize) -> u32 {
    u32::try_from(n).expect("a catalog under 4 billion rows")
}

/// The text of [`Rows`] while it is being packed.
#[derive(Default)]
struct Packer<'a> {
    parts: Vec<&'a str>,
    len: usize,
    interned: std::collections::HashMap<&'a str, Str>,
}

impl<'a> Packer<'a> {
    fn put(&mut self, s: &'a str, intern: bool) -> Str {
        if let Some(&at) = intern.then(|| self.interned.get(s)).flatten() {
            return at;
        }
        let at = Str {
            at: u32::try_from(self.len).expect("a catalog under 4 GiB of text"),
            len: u32::try_from(s.len()).expect("a name under 4 GiB"),
        };
        self.len += s.len();
        self.parts.push(s);
        if intern {
            self.interned.insert(s, at);
        }
        at
    }
}

/// A repository of a [`Catalog`].
#[derive(Clone, Copy)]
pub struct Repo<'a> {
    rows: &'a Rows,
    row: &'a RepoRow,
}

impl<'a> Repo<'a> {
    pub fn upstream(&self) -> &'a str {
        self.rows.str(self.row.upstream).unwrap_or_default()
    }

    pub fn repository(&self) -> &'a str {
        self.rows.str(self.row.repository).unwrap_or_default()
    }

    /// Bytes of its images (content its images share counted once).
    pub fn size(&self) -> u64 {
        self.row.size
    }

    pub fn images(&self) -> impl ExactSizeIterator<Item = Image<'a>> + Clone + 'a {
        let rows = self.rows;
        let range = self.row.images.start as usize..self.row.images.end as usize;
        rows.images[range]
            .iter()
            .map(move |row| Image { rows, row })
    }

    pub fn to_listing(&self) -> RepoListing {
        RepoListing {
            upstream: self.upstream().to_owned(),
            repository: self.repository().to_owned(),
            size: self.size(),
            images: self.images().map(|i| i.to_listing()).collect(),
        }
    }
}

/// An image (a tag, or a manifest cached by digest only) of a [`Repo`].
#[derive(Clone, Copy)]
pub struct Image<'a> {
    rows: &'a Rows,
    row: &'a ImageRow,
}

impl<'a> Image<'a> {
    /// `None`: a manifest cached by digest only.
    pub fn tag(&self) -> Option<&'a str> {
        self.rows.str(self.row.tag)
    }

    pub fn digest(&self) -> &'a str {
        self.rows.str(self.row.digest).unwrap_or_default()
    }

    /// The manifest's type, when cached.
    pub fn media_type(&self) -> Option<&'a str> {
        self.rows.str(self.row.media_type)
    }

    /// Bytes of its content in the cache.
    pub fn size(&self) -> u64 {
        self.row.size
    }

    pub fn last_access_ms(&self) -> u64 {
        self.row.last_access_ms
    }

    pub fn pinned(&self) -> bool {
        self.row.pinned
    }

    pub fn to_listing(&self) -> ImageListing {
        let r = self.row;
        ImageListing {
            tag: self.tag().map(str::to_owned),
            digest: self.digest().to_owned(),
            size: r.size,
            cached_blobs: r.cached_blobs as usize,
            total_blobs: r.total_blobs as usize,
            last_access_ms: r.last_access_ms,
            pinned: r.pinned,
            media_type: self.media_type().map(str::to_owned),
            platforms: self.rows.platforms[r.platforms.start as usize..r.platforms.end as usize]
                .iter()
                .filter_map(|&p| self.rows.str(p))
                .map(str::to_owned)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::meta::{BlobRecord, Kind, Metadata};
    use crate::cache::CacheSettings;
    use crate::registry::{Digest, MediaType};

    fn cache() -> (tempfile::TempDir, Cache) {
        let dir = tempfile::tempdir().unwrap();
        let (cache, _) = Cache::open(
            dir.path(),
            Metadata::in_memory(),
            &CacheSettings::default(),
            Arc::default(),
        )
        .unwrap();
        (dir, cache)
    }

    /// An image of `blobs` (the last one its config) tagged `up/repo:tag`.
    pub(crate) fn put_image(cache: &Cache, up: &str, repo: &str, tag: &str, blobs: &[&[u8]]) {
        let mut descs = Vec::new();
        for b in blobs {
            let d = Digest::sha256_of(b);
            cache.store.put_verified(&d, b).unwrap();
            cache
                .committed(&d, &BlobRecord::blob(b.len() as u64, 1))
                .unwrap();
            descs.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": d.to_string(), "size": b.len()}));
        }
        let config = descs.pop().unwrap();
        let mt = "application/vnd.oci.image.manifest.v1+json";
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": mt, "config": config, "layers": descs}))
        .unwrap();
        let d = Digest::sha256_of(&m);
        cache.store.put_verified(&d, &m).unwrap();
        cache
            .committed(&d, &BlobRecord::manifest(m.len() as u64, mt, 1))
            .unwrap();
        let repo = repo.parse().unwrap();
        let mt: MediaType = mt.parse().unwrap();
        cache
            .meta
            .put_tag(up, &repo, &tag.parse().unwrap(), &d, &mt, 1)
            .unwrap();
    }

    #[test]
    fn a_catalog_is_rebuilt_only_when_a_record_changed() {
        let (_dir, cache) = cache();
        put_image(&cache, "hub", "library/a", "1", &[b"layer-a", b"config-a"]);
        let first = cache.catalog().unwrap();
        assert_eq!(first.totals.images, 1);
        assert!(
            Arc::ptr_eq(&first, &cache.catalog().unwrap()),
            "nothing changed"
        );
        cache.meta.put_note("sync-run/x", &1).unwrap();
        assert!(
            Arc::ptr_eq(&first, &cache.catalog().unwrap()),
            "notes are no records"
        );

        put_image(&cache, "hub", "library/b", "2", &[b"layer-b", b"config-a"]);
        // A view may take the old one for a while; `ls` may not.
        let viewed = cache.catalog_within(Duration::from_secs(3600)).unwrap();
        assert!(Arc::ptr_eq(&first, &viewed));
        let now = cache.catalog().unwrap();
        assert!(now.generation > first.generation);
        assert_eq!(now.totals.images, 2);
        assert_eq!(now.totals.repositories, 2);
        // config-a is shared: counted once in the total.
        let sizes: u64 = [b"layer-a".len(), b"layer-b".len(), b"config-a".len()]
            .iter()
            .map(|&n| n as u64)
            .sum::<u64>();
        assert_eq!(now.totals.bytes - manifests_bytes(&cache), sizes);
    }

    #[test]
    fn packed_rows_give_back_what_was_packed() {
        let image = |tag: Option<&str>, digest: &str, mt: Option<&str>, platforms: &[&str]| {
            // Every figure differs from image to image and from field
            // to field, so a row or a field read in place of another
            // shows.
            let n: u64 = digest.bytes().map(u64::from).sum();
            ImageListing {
                tag: tag.map(str::to_owned),
                digest: digest.to_owned(),
                size: n * 1000,
                cached_blobs: n as usize % 97,
                total_blobs: n as usize % 89 + 100,
                last_access_ms: n * 3,
                pinned: tag == Some("stable"),
                media_type: mt.map(str::to_owned),
                platforms: platforms.iter().map(|&p| p.to_owned()).collect(),
            }
        };
        let index = "application/vnd.oci.image.index.v1+json";
        let repos = vec![
            RepoListing {
                upstream: "gar".into(),
                repository: "team/a".into(),
                size: 5,
                images: vec![
                    image(
                        Some("stable"),
                        "sha256:aa",
                        Some(index),
                        &["linux/amd64", "linux/arm64/v8"],
                    ),
                    image(None, "sha256:bbb", None, &[]),
                ],
            },
            // A repository without images; empty strings, which are not
            // `None`; a tag and a platform that recur: stored once, read
            // back the same.
            RepoListing {
                upstream: "hub".into(),
                repository: "library/empty".into(),
                size: 0,
                images: vec![],
            },
            RepoListing {
                upstream: "hub".into(),
                repository: "library/odd".into(),
                size: 1,
                images: vec![image(Some(""), "sha256:ddd", Some(""), &[""])],
            },
            RepoListing {
                upstream: "hub".into(),
                repository: "library/<b>".into(),
                size: u64::MAX,
                images: vec![image(
                    Some("stable"),
                    "sha256:cc",
                    Some(index),
                    &["linux/amd64"],
                )],
            },
        ];
        let rows = Rows::pack(&repos);
        let catalog = Catalog {
            generation: 1,
            built_ms: 0,
            built_at: Instant::now(),
            build_time: Duration::ZERO,
            rows,
            totals: Totals::default(),
        };
        let back: Vec<RepoListing> = catalog.repos().map(|r| r.to_listing()).collect();
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&repos).unwrap()
        );
        assert_eq!(
            catalog.listing_json(),
            serde_json::to_string(&repos).unwrap()
        );
        let text = &catalog.rows.text;
        assert_eq!(text.matches("linux/amd64").count(), 1, "{text}");
        assert_eq!(text.matches(index).count(), 1);
        assert_eq!(text.matches("stable").count(), 1);
        assert_eq!(text.matches("hub").count(), 1);
        let r = catalog.repos().nth(3).unwrap();
        assert_eq!((r.upstream(), r.repository()), ("hub", "library/<b>"));
        let i = r.images().next().unwrap();
        assert_eq!(
            (i.tag(), i.digest(), i.pinned()),
            (Some("stable"), "sha256:cc", true)
        );
        assert!(catalog.heap_bytes() >= text.len());
    }

    fn manifests_bytes(cache: &Cache) -> u64 {
        cache
            .meta
            .blobs()
            .unwrap()
            .into_iter()
            .filter_map(|(_, r)| r.ok())
            .filter(|r| r.kind == Kind::Manifest)
            .map(|r| r.size)
            .sum()
    }
}
