//! `wharf bundle create` on the connected side: which refs go (a sync
//! rule's last run, or named images the cache holds), what they are made of
//! (walked from the cache: an index's cached children, each manifest's config
//! and layers), what can stay behind (what the site's inventory or an earlier
//! bundle already has), then the bundle writer.
//!
//! Reads only the cache: never asks an upstream (sync does that first).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::bundle::{
    check_platform, create, load_signing_key, Against, BlobSource, BundleDoc, BundleRef,
    CreateOptions, Filtered, Plan, PlannedBlob, Progress,
};
use crate::cache::Cache;
use crate::mirror::{Mirror, Routed};
use crate::registry::manifest::references;
use crate::registry::{index_children, Digest, RepoName, Tag};
use crate::sync::Syncer;

use super::inventory::SiteInventory;
use super::{AirgapError, Event};

/// What the operator asked for.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CreateRequest {
    pub out: PathBuf,
    /// Refs of each rule's last run.
    pub sync: Vec<String>,
    /// `UPSTREAM/REPO:TAG` the cache holds.
    pub images: Vec<String>,
    /// The site's inventory: its blobs are left out.
    pub against: Option<PathBuf>,
    /// Earlier bundles' `bundle.json`: what they carried is left out.
    pub since: Vec<PathBuf>,
    pub volume_size: u64,
    pub sign_key: Option<PathBuf>,
}

/// Everything the refs need, in the cache's words, before subtraction.
#[derive(Default)]
struct Closure {
    refs: Vec<BundleRef>,
    blobs: Vec<PlannedBlob>,
    seen: HashSet<Digest>,
    filtered: Vec<Filtered>,
}

pub fn create_bundle(
    mirror: &Mirror,
    syncer: &Syncer,
    req: &CreateRequest,
    emit: &(dyn Fn(Event) + Send + Sync),
) -> Result<BundleDoc, AirgapError> {
    if req.sync.is_empty() && req.images.is_empty() {
        return Err(AirgapError::Request(
            "nothing to carry: give --sync RULE or --image UPSTREAM/REPO:TAG".into(),
        ));
    }
    let key = req.sign_key.as_deref().map(load_signing_key).transpose()?;
    let mut c = Closure::default();
    let mut sources = Vec::new();
    for rule in &req.sync {
        syncer
            .chosen(std::slice::from_ref(rule))
            .map_err(|e| AirgapError::Request(e.to_string()))?;
        let Some(run) = syncer.last_run(rule) else {
            return Err(AirgapError::Request(format!(
                "sync rule {rule:?} has not run on this cache yet: run `wharf sync {rule}` first"
            )));
        };
        sources.push(format!("sync:{rule}"));
        for s in &run.refs {
            let image = format!("{}/{}:{}", s.upstream, s.repository, s.tag);
            c.add_ref(mirror, &image, Some(rule))?;
        }
    }
    for image in &req.images {
        sources.push(format!("image:{image}"));
        c.add_ref(mirror, image, None)?;
    }
    let (left_out, against) = leave_out(req)?;
    let prune = req
        .sync
        .iter()
        .filter(|r| syncer.rules().iter().any(|x| &&x.name == r && x.prune))
        .map(|r| format!("sync:{r}"))
        .collect();
    let mut plan = Plan {
        prune,
        refs: c.refs,
        filtered: c.filtered,
        sources,
        against,
        since: Vec::new(),
        ..Plan::default()
    };
    for b in c.blobs {
        if left_out.contains(&b.digest) {
            plan.requires.push(b.digest);
        } else {
            plan.blobs.push(b);
        }
    }
    for s in &req.since {
        plan.since.push(read_doc(s)?.id);
    }
    emit(Event::Planned {
        refs: plan.refs.len(),
        blobs: plan.blobs.len(),
        bytes: plan.blobs.iter().map(|b| b.size).sum(),
        left_out: plan.requires.len(),
    });
    let src = CacheSource(mirror.cache());
    let total: u64 = plan.blobs.iter().map(|b| b.size).sum();
    let opts = CreateOptions {
        volume_size: req.volume_size,
        key,
    };
    let doc = create(&req.out, plan, &src, &opts, &mut |p| match p {
        Progress::Copied { bytes } => emit(Event::Copied { bytes, total }),
        Progress::Volume(v) => emit(Event::Note {
            message: format!("{} written ({} bytes)", v.file, v.size),
        }),
        Progress::Started { .. } => {}
    })?;
    Ok(doc)
}

/// The blobs a bundle may leave behind: those in the site's inventory and
/// those earlier bundles carried.
fn leave_out(req: &CreateRequest) -> Result<(HashSet<Digest>, Option<Against>), AirgapError> {
    let mut out = HashSet::new();
    let mut against = None;
    if let Some(path) = &req.against {
        let bytes = std::fs::read(path).map_err(|e| AirgapError::file(path, e))?;
        let (inv, sha) = SiteInventory::parse(&bytes)
            .map_err(|why| AirgapError::Request(format!("{}: {why}", path.display())))?;
        let ds = inv.digests();
        against = Some(Against {
            inventory_sha256: sha,
            blobs: ds.len() as u64,
        });
        out.extend(ds);
    }
    for s in &req.since {
        out.extend(read_doc(s)?.blobs.into_iter().map(|b| b.digest));
    }
    Ok((out, against))
}

fn read_doc(path: &Path) -> Result<BundleDoc, AirgapError> {
    let bytes = std::fs::read(path).map_err(|e| AirgapError::file(path, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| AirgapError::Request(format!("{}: not a bundle.json: {e}", path.display())))
}

/// `upstream/repo:tag` → its parts.
pub fn parse_image(image: &str) -> Result<(String, RepoName, Tag), AirgapError> {
    let bad = || AirgapError::Request(format!("{image:?}: expected UPSTREAM/REPOSITORY:TAG"));
    let (up, rest) = image.split_once('/').ok_or_else(bad)?;
    let (repo, tag) = rest.rsplit_once(':').ok_or_else(bad)?;
    Ok((
        up.to_owned(),
        repo.parse().map_err(|_| bad())?,
        tag.parse().map_err(|_| bad())?,
    ))
}

impl Closure {
    fn add_ref(
        &mut self,
        mirror: &Mirror,
        image: &str,
        rule: Option<&str>,
    ) -> Result<(), AirgapError> {
        let (up, repo, tag) = parse_image(image)?;
        let r = mirror
            .routed(&up, repo.clone())
            .ok_or_else(|| AirgapError::Request(format!("{image}: no upstream named {up}")))?;
        let missing = || {
            AirgapError::Request(format!(
                "{image} is not in this cache: pull or sync it first"
            ))
        };
        let (d, _) = mirror.cached_tag(&r, &tag)?.ok_or_else(missing)?;
        let m = mirror.held_manifest(&r, &d)?.ok_or_else(missing)?;
        if self
            .refs
            .iter()
            .any(|x| x.upstream == up && x.repository == repo.as_str() && x.tag == tag.as_str())
        {
            return Ok(());
        }
        self.walk(mirror, &r, &up, &d, rule)?;
        self.refs.push(BundleRef {
            upstream: up,
            repository: repo.to_string(),
            tag: tag.to_string(),
            digest: d,
            media_type: m.media_type.to_string(),
            rule: rule.map(str::to_owned),
        });
        Ok(())
    }

    /// Adds manifest `d` and what it needs, children and content first.
    fn walk(
        &mut self,
        mirror: &Mirror,
        r: &Routed,
        up: &str,
        d: &Digest,
        rule: Option<&str>,
    ) -> Result<(), AirgapError> {
        if self.seen.contains(d) {
            return Ok(());
        }
        let m = mirror.held_manifest(r, d)?.ok_or_else(|| {
            AirgapError::Request(format!("{up}/{}@{d}: manifest not in this cache", r.repo))
        })?;
        if let Some(children) = index_children(&m.bytes) {
            for c in &children {
                if mirror.held_manifest(r, &c.digest)?.is_some() {
                    self.walk(mirror, r, up, &c.digest, rule)?;
                } else {
                    // Not here on purpose (a platform filter) or never
                    // pulled: the site is told which, not left guessing.
                    // An upstream may spell a platform in a way a filter
                    // cannot (`x86_64`, capitals): bundles carry only what
                    // verify accepts, and "unknown" for the rest.
                    let platform = match (&c.platform, &c.attestation_for) {
                        (Some(p), _) => Some(p.to_string())
                            .filter(|p| check_platform(p).is_ok())
                            .unwrap_or_else(|| "unknown".into()),
                        (None, Some(_)) => "attestation".into(),
                        (None, None) => "unknown".into(),
                    };
                    self.filtered.push(Filtered {
                        upstream: up.to_owned(),
                        repository: r.repo.to_string(),
                        index: d.clone(),
                        child: c.digest.clone(),
                        platform,
                        rule: rule.map(str::to_owned),
                    });
                }
            }
        } else {
            for b in references(&m.bytes).blobs {
                if self.seen.contains(&b) {
                    continue;
                }
                let size = match mirror.holds_blob(r, &b)? {
                    true => mirror.cache().blob_len(&b)?,
                    false => None,
                };
                let size = size.ok_or_else(|| {
                    AirgapError::Request(format!(
                        "{up}/{}@{b}: blob not in this cache (evicted?): sync again",
                        r.repo
                    ))
                })?;
                self.seen.insert(b.clone());
                self.blobs.push(PlannedBlob {
                    digest: b,
                    size,
                    media_type: None,
                });
            }
        }
        self.seen.insert(d.clone());
        self.blobs.push(PlannedBlob {
            digest: d.clone(),
            size: m.bytes.len() as u64,
            media_type: Some(m.media_type.to_string()),
        });
        Ok(())
    }
}

/// Blob bytes from the cache's verified files.
struct CacheSource<'a>(&'a Cache);

impl BlobSource for CacheSource<'_> {
    fn open(&self, d: &Digest) -> std::io::Result<Box<dyn std::io::Read + Send>> {
        match self.0.open_blob(d) {
            Ok(Some((f, _))) => Ok(Box::new(f)),
            Ok(None) => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "evicted from the cache meanwhile",
            )),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    }
}
