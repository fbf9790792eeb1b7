//! The operator's view of the cache: `wharf ls`, `du`, `rm` and `pin`, run
//! the same way through a live server's admin socket or on a cache no server
//! holds. Reads the metadata as a whole ([`Inventory`], or its snapshot
//! [`super::Catalog`]); never on a request's path.

use std::collections::HashSet;

use crate::registry::{Digest, RepoName};

use super::inventory::Inventory;
use super::meta::{now_secs, PinRecord};
use super::pins::Pin;
use super::{Cache, CacheError, RemoveReport, Usage};

impl Cache {
    /// `wharf ls`, as JSON ([`super::Catalog::listing_json`]): recorded
    /// reads flushed first, so last-pulled times are exact.
    pub fn listing_json(&self) -> Result<String, CacheError> {
        self.evictor.flush_touches(&self.meta)?;
        Ok(self.catalog()?.listing_json())
    }

    /// Every committed blob and manifest with its size: what a site
    /// holds (`wharf inventory export`).
    pub fn digests(&self) -> Result<Vec<(Digest, u64)>, CacheError> {
        let mut out: Vec<(Digest, u64)> = self
            .meta
            .blobs()?
            .into_iter()
            .filter_map(|(k, rec)| Some((k.parse().ok()?, rec.ok()?.size)))
            .collect();
        out.sort_unstable_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        Ok(out)
    }

    /// Every digest a pin protects now (config and `wharf pin` patterns,
    /// with the content of the images they name).
    pub fn pinned_digests(&self) -> Result<HashSet<Digest>, CacheError> {
        let pins = self.pins()?;
        if pins.is_empty() {
            return Ok(HashSet::new());
        }
        Ok(Inventory::load(&self.meta, &self.store)?.pinned(&pins))
    }

    /// Bytes free on the cache's filesystem.
    pub fn disk_available(&self) -> Result<u64, CacheError> {
        Ok(self.store.disk_space()?.0)
    }

    pub fn usage(&self) -> Result<Usage, CacheError> {
        let catalog = self.catalog()?;
        let (disk_available, disk_size) = self.store.disk_space()?;
        let limits = self.evictor.limits();
        let t = &catalog.totals;
        Ok(Usage {
            generation: catalog.generation,
            dir: self.dir.clone(),
            blobs: t.blobs,
            manifests: t.manifests,
            bytes: t.bytes,
            pinned_bytes: t.pinned_bytes,
            max_size: limits.max_size,
            high_watermark: limits.high,
            low_watermark: limits.low,
            disk_available,
            disk_size,
            fills_in_flight: self.fills.len(),
            upstreams: t.upstreams.clone(),
        })
    }

    /// Removes an image: `upstream/repo:tag`, `upstream/repo@digest`, or
    /// `upstream/repo` (all of it). Its tags and links go; its content goes
    /// unless another cached image uses it or it is pinned.
    pub fn remove_image(&self, image: &str) -> Result<RemoveReport, CacheError> {
        let target = parse_image(image)?;
        let mut report = RemoveReport::default();
        let roots = self.remove_tags(&target, &mut report)?;
        let inv = Inventory::load(&self.meta, &self.store)?;
        let mut doomed: HashSet<Digest> = HashSet::new();
        for r in &roots {
            doomed.extend(inv.closure(r));
        }
        if target.reference.is_none() {
            for (up, r, d) in inv.links() {
                if target.owns(up, r) {
                    doomed.extend(inv.closure(&d));
                }
            }
        }
        if !doomed.iter().any(|d| inv.blob(d).is_some()) && report.tags_removed == 0 {
            return Err(CacheError::Invalid(format!("{image}: not in the cache")));
        }
        // The repository's other tags keep their content and its links.
        for t in inv
            .tags
            .iter()
            .filter(|t| target.owns(&t.upstream, &t.repo))
        {
            if let Ok(d) = t.record.digest.parse::<Digest>() {
                for c in inv.closure(&d) {
                    doomed.remove(&c);
                }
            }
        }
        for (up, r, d) in inv.links() {
            if target.owns(up, r) && doomed.contains(&d) {
                self.meta.unlink(up, r, &d)?;
                report.links_removed += 1;
            }
        }
        self.remove_unused(doomed, &mut report)?;
        Ok(report)
    }

    /// Removes the target's matching tags; returns what they pointed at
    /// (and the target's digest), the roots of what may go.
    fn remove_tags(
        &self,
        target: &ImageTarget,
        report: &mut RemoveReport,
    ) -> Result<Vec<Digest>, CacheError> {
        let mut roots: Vec<Digest> = Vec::new();
        for t in self.meta.tags()? {
            if !target.owns(&t.upstream, &t.repo) {
                continue;
            }
            let hit = match &target.reference {
                None => true,
                Some(ImageRef::Tag(tag)) => t.tag.as_str() == tag,
                Some(ImageRef::Digest(d)) => t.record.digest == d.as_str(),
            };
            if hit {
                self.meta.remove_tag(&t.upstream, &t.repo, &t.tag)?;
                report.tags_removed += 1;
                roots.extend(t.record.digest.parse::<Digest>());
            }
        }
        if let Some(ImageRef::Digest(d)) = &target.reference {
            roots.push(d.clone());
        }
        Ok(roots)
    }

    /// Deletes the `doomed` blobs that the rest of the cache does not use:
    /// other repositories' tags and links (images share layers), and pins.
    fn remove_unused(
        &self,
        doomed: HashSet<Digest>,
        report: &mut RemoveReport,
    ) -> Result<(), CacheError> {
        let inv = Inventory::load(&self.meta, &self.store)?;
        let kept = inv.in_use(&self.pins()?);
        for d in doomed {
            let Some(rec) = inv.blob(&d) else {
                continue;
            };
            if kept.contains(&inv, &d) {
                report.blobs_kept += 1;
                continue;
            }
            self.delete(&d)?;
            self.evictor.removed(rec.size);
            self.metrics.cache_blobs.dec();
            report.blobs_removed += 1;
            report.bytes_removed += rec.size;
        }
        Ok(())
    }

    pub fn pin(&self, pattern: &str) -> Result<bool, CacheError> {
        let p = Pin::parse(pattern).map_err(CacheError::Invalid)?;
        self.meta.add_pin(
            p.as_str(),
            &PinRecord {
                added: now_secs(),
                source: None,
            },
        )
    }

    /// Pins `pattern` on behalf of `source` (`sync:<rule>`, `bundle:<…>`).
    /// An operator's own pin of the same pattern stays the operator's.
    pub fn pin_for(&self, pattern: &str, source: &str) -> Result<bool, CacheError> {
        let p = Pin::parse(pattern).map_err(CacheError::Invalid)?;
        if self.meta.pins()?.iter().any(|(k, _)| k == p.as_str()) {
            return Ok(false);
        }
        self.meta.add_pin(
            p.as_str(),
            &PinRecord {
                added: now_secs(),
                source: Some(source.to_owned()),
            },
        )
    }

    /// The patterns `source` pinned.
    pub fn pins_of(&self, source: &str) -> Result<Vec<String>, CacheError> {
        Ok(self
            .meta
            .pins()?
            .into_iter()
            .filter(|(_, r)| r.source.as_deref() == Some(source))
            .map(|(k, _)| k)
            .collect())
    }

    pub fn unpin(&self, pattern: &str) -> Result<bool, CacheError> {
        if self
            .config_pins
            .iter()
            .any(|p| p.as_str() == pattern.trim())
        {
            return Err(CacheError::Invalid(format!(
                "{pattern} is pinned by the configuration file (cache.pin); remove it there"
            )));
        }
        self.meta.remove_pin(pattern.trim())
    }

    /// Pins: (pattern, from the config file?).
    pub fn pin_list(&self) -> Result<Vec<(String, bool)>, CacheError> {
        let mut out: Vec<(String, bool)> = self
            .config_pins
            .iter()
            .map(|p| (p.as_str().to_owned(), true))
            .collect();
        out.extend(self.meta.pins()?.into_iter().map(|(p, _)| (p, false)));
        Ok(out)
    }
}

enum ImageRef {
    Tag(String),
    Digest(Digest),
}

/// What `wharf rm` names: `upstream/repo[:tag|@digest]`.
struct ImageTarget {
    upstream: String,
    repo: RepoName,
    reference: Option<ImageRef>,
}

impl ImageTarget {
    fn owns(&self, upstream: &str, repo: &RepoName) -> bool {
        upstream == self.upstream && *repo == self.repo
    }
}

fn parse_image(image: &str) -> Result<ImageTarget, CacheError> {
    let bad = |why: &str| {
        CacheError::Invalid(format!(
            "{image:?}: {why} (expected <upstream>/<repository>[:tag|@digest], as `wharf ls` shows)"
        ))
    };
    let (up, rest) = image.split_once('/').ok_or_else(|| bad("no upstream"))?;
    let (repo, reference) = if let Some((r, d)) = rest.split_once('@') {
        let d = d.parse::<Digest>().map_err(|_| bad("invalid digest"))?;
        (r, Some(ImageRef::Digest(d)))
    } else {
        let last = rest.rfind('/').map_or(0, |i| i + 1);
        match rest[last..].find(':') {
            Some(i) => (
                &rest[..last + i],
                Some(ImageRef::Tag(rest[last + i + 1..].to_owned())),
            ),
            None => (rest, None),
        }
    };
    let repo = repo
        .parse::<RepoName>()
        .map_err(|_| bad("invalid repository"))?;
    Ok(ImageTarget {
        upstream: up.to_owned(),
        repo,
        reference,
    })
}
