//! What an import checks before it copies a byte, so that a refused import
//! changes nothing: each ref maps to one of the site's upstreams; each ref's
//! whole closure (an index's children but those a platform filter left out,
//! each manifest's config and layers) is carried by the bundle or already
//! held by the site — for an unsigned bundle, held *for that repository*,
//! so a bundle cannot graft content the site holds for another repository
//! (a private one) into a repository of its choosing; the content the
//! bundle says the site must hold is there; no tag moves back to an older
//! bundle of the same key; the pinned result fits under `max_size`.
//!
//! Reads the bundle's manifests (each checked against its digest, each
//! once) and the cache's metadata; writes nothing.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::bundle::{BundleDoc, BundleRef};
use crate::mirror::{Mirror, Routed};
use crate::registry::manifest::blob_descriptors;
use crate::registry::{index_children, Digest, MediaType, Tag};

use super::import::{read_manifest, ImportRequest};
use super::AirgapError;

/// Most (repository, digest) pairs a whole bundle may reach, and how deep
/// indexes may nest: a bundle whose graph repeats itself, or whose many refs
/// fan out over one large index, is refused, not walked.
const MAX_NODES: usize = 100_000;
const MAX_DEPTH: usize = 4;

/// A ref resolved against the site: its repository on a site upstream.
pub(super) struct SiteRef {
    pub r: Routed,
    pub upstream: String,
    pub tag: Tag,
    pub digest: Digest,
    pub media_type: MediaType,
    /// `bundle:<key id or unsigned>:<rule>` for refs of a sync rule,
    /// `bundle:<key>:images` otherwise.
    pub pin_source: String,
}

/// The checked import: refs and which repositories each digest belongs to.
pub(super) struct Admitted {
    pub refs: Vec<SiteRef>,
    pub owners: HashMap<Digest, Vec<Routed>>,
    /// Every digest some ref needs (held or carried): leased from eviction
    /// while the import runs, checked present before any tag moves.
    pub needed: HashSet<Digest>,
    /// Carried blobs the cache lacks, and their bytes.
    pub missing: usize,
    pub new_bytes: u64,
}

/// Which bundle last set a tag, from which key and sequence.
#[derive(Serialize, Deserialize)]
pub(super) struct TagOrigin {
    pub key_id: Option<String>,
    pub sequence: u64,
    pub digest: String,
}

pub(super) fn tag_note(up: &str, repo: &str, tag: &str) -> String {
    format!("bundle-tag/{up}/{repo}:{tag}")
}

/// The highest sequence imported from a key (whose signature was checked).
pub(super) fn key_note(key_id: &str) -> String {
    format!("bundle-key/{key_id}")
}

/// Runs every check; `signed`: the signature was verified against the
/// site's trusted keys. Blocking (reads bundle files and metadata).
pub(super) fn admit(
    mirror: &Mirror,
    doc: &BundleDoc,
    req: &ImportRequest,
    signed: bool,
    max_size: Option<u64>,
) -> Result<Admitted, AirgapError> {
    let refs = site_refs(mirror, doc, req, signed)?;
    check_requires(mirror, doc)?;
    let owners = Walk::new(mirror, doc, &req.dir, signed).run(&refs)?;
    let needed: HashSet<Digest> = owners.keys().cloned().collect();
    if let Some(d) = doc.blobs.iter().find(|b| !owners.contains_key(&b.digest)) {
        return Err(AirgapError::Refused(format!(
            "bundle.json: blob {} belongs to no ref of the bundle",
            d.digest
        )));
    }
    check_rollback(mirror, doc, &refs, signed, req.allow_rollback)?;
    let cache = mirror.cache();
    let mut missing = 0;
    let mut new_bytes = 0;
    for b in &doc.blobs {
        if cache.blob_len(&b.digest)?.is_none() {
            missing += 1;
            new_bytes += b.size;
        }
    }
    check_room(mirror, doc, max_size, &needed, new_bytes)?;
    Ok(Admitted {
        refs,
        owners,
        needed,
        missing,
        new_bytes,
    })
}

/// Maps each ref to the site's upstreams (by name, or `--map`).
fn site_refs(
    mirror: &Mirror,
    doc: &BundleDoc,
    req: &ImportRequest,
    signed: bool,
) -> Result<Vec<SiteRef>, AirgapError> {
    let key = match (&doc.key_id, signed) {
        (Some(k), true) => k.as_str(),
        _ => "unsigned",
    };
    let mut out = Vec::new();
    let mut unknown = BTreeSet::new();
    for x in &doc.refs {
        let site = site_upstream(&x.upstream, &req.map);
        let bad = |what: &str| {
            AirgapError::Refused(format!("bundle.json: ref {}: invalid {what}", x.name()))
        };
        let repo = x.repository.parse().map_err(|_| bad("repository"))?;
        let Some(r) = mirror.routed(&site, repo) else {
            unknown.insert(x.upstream.clone());
            continue;
        };
        out.push(SiteRef {
            r,
            upstream: site,
            tag: x.tag.parse().map_err(|_| bad("tag"))?,
            digest: x.digest.clone(),
            media_type: x.media_type.parse().map_err(|_| bad("media type"))?,
            pin_source: pin_source(key, ref_rule(x).unwrap_or("images")),
        });
    }
    if !unknown.is_empty() {
        let names: Vec<String> = unknown.into_iter().collect();
        return Err(AirgapError::Refused(format!(
            "the bundle names upstream(s) {} which this site does not configure; add them, or map them with --map BUNDLE-NAME=SITE-NAME",
            names.join(", ")
        )));
    }
    Ok(out)
}

/// Who pinned an imported ref: the key that signed the bundle and the rule,
/// so `prune` of one connected side's rule never touches another's.
pub(super) fn pin_source(key: &str, rule: &str) -> String {
    format!("bundle:{key}:{rule}")
}

/// The sync rule a ref came from, if any.
pub(super) fn ref_rule(x: &BundleRef) -> Option<&str> {
    x.rule.as_deref()
}

fn site_upstream(name: &str, map: &[(String, String)]) -> String {
    map.iter()
        .find(|(from, _)| from == name)
        .map(|(_, to)| to.clone())
        .unwrap_or_else(|| name.to_owned())
}

/// What a manifest refers to, parsed once per import.
enum Node {
    Index(Vec<Digest>),
    Image(Vec<Digest>),
}

/// Walks each ref's closure through the bundle's manifests (or the site's),
/// checking every digest is carried or may be used.
struct Walk<'a> {
    mirror: &'a Mirror,
    doc: &'a BundleDoc,
    dir: &'a Path,
    signed: bool,
    carried: HashSet<&'a Digest>,
    /// Index children a platform filter left out: (index, child).
    filtered: HashSet<(&'a Digest, &'a Digest)>,
    parsed: HashMap<Digest, std::rc::Rc<Node>>,
    owners: HashMap<Digest, Vec<Routed>>,
    /// What each repository's refs reached so far: refs of one repository
    /// share it, so many tags of one index cost one walk.
    seen: HashMap<(crate::mirror::UpstreamId, String), HashSet<Digest>>,
    /// (repository, digest) pairs reached by the whole bundle.
    nodes: usize,
}

impl<'a> Walk<'a> {
    fn new(mirror: &'a Mirror, doc: &'a BundleDoc, dir: &'a Path, signed: bool) -> Walk<'a> {
        Walk {
            mirror,
            doc,
            dir,
            signed,
            carried: doc.blobs.iter().map(|b| &b.digest).collect(),
            filtered: doc.filtered.iter().map(|f| (&f.index, &f.child)).collect(),
            parsed: HashMap::new(),
            owners: HashMap::new(),
            seen: HashMap::new(),
            nodes: 0,
        }
    }

    fn run(mut self, refs: &[SiteRef]) -> Result<HashMap<Digest, Vec<Routed>>, AirgapError> {
        for x in refs {
            self.manifest(x, &x.digest, 0)?;
        }
        Ok(self.owners)
    }

    /// Marks `d` reached by `x`'s repository; `false` if it was already.
    fn reach(&mut self, x: &SiteRef, d: &Digest) -> Result<bool, AirgapError> {
        let seen = self
            .seen
            .entry((x.r.upstream, x.r.repo.to_string()))
            .or_default();
        if !seen.insert(d.clone()) {
            return Ok(false);
        }
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(refuse(
                x,
                format!("the bundle reaches over {MAX_NODES} (repository, digest) pairs"),
            ));
        }
        let v = self.owners.entry(d.clone()).or_default();
        if !v
            .iter()
            .any(|o| o.upstream == x.r.upstream && o.repo == x.r.repo)
        {
            v.push(x.r.clone());
        }
        Ok(true)
    }

    fn manifest(&mut self, x: &SiteRef, d: &Digest, depth: usize) -> Result<(), AirgapError> {
        if depth > MAX_DEPTH {
            return Err(refuse(x, format!("indexes nest deeper than {MAX_DEPTH}")));
        }
        if !self.reach(x, d)? {
            return Ok(());
        }
        // Checked for every repository that reaches it, not once per import.
        self.usable(x, d, true)?;
        match &*self.node(x, d)? {
            Node::Index(children) => {
                for c in children {
                    if !self.filtered.contains(&(d, c)) {
                        self.manifest(x, c, depth + 1)?;
                    }
                }
            }
            Node::Image(blobs) => {
                for b in blobs {
                    if self.reach(x, b)? {
                        self.usable(x, b, false)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A manifest's references: from the bundle when it carries it (checked
    /// against its digest), else from the site's cache when it may be used.
    fn node(&mut self, x: &SiteRef, d: &Digest) -> Result<std::rc::Rc<Node>, AirgapError> {
        if let Some(n) = self.parsed.get(d) {
            return Ok(n.clone());
        }
        let bytes = match self.doc.blob(d) {
            Some(b) if b.media_type.is_some() => read_manifest(self.dir, b)?,
            Some(_) => {
                return Err(refuse(
                    x,
                    format!("{d} is carried as a layer but referred to as a manifest"),
                ))
            }
            None => {
                let m = self.mirror.cache().manifest(d)?;
                m.map(|m| m.bytes.to_vec()).ok_or_else(|| {
                    refuse(
                        x,
                        format!("manifest {d} is neither carried nor on this site"),
                    )
                })?
            }
        };
        let node = match index_children(&bytes) {
            Some(children) => Node::Index(children.into_iter().map(|c| c.digest).collect()),
            None => Node::Image(
                blob_descriptors(&bytes)
                    .into_iter()
                    .map(|(d, _)| d)
                    .collect(),
            ),
        };
        let node = std::rc::Rc::new(node);
        self.parsed.insert(d.clone(), node.clone());
        Ok(node)
    }

    /// Whether a digest the ref needs may be used: carried by the bundle, or
    /// held by the site — for an unsigned bundle, held for this very
    /// repository (the per-repository rule of the pull path).
    fn usable(&self, x: &SiteRef, d: &Digest, manifest: bool) -> Result<(), AirgapError> {
        if self.carried.contains(d) {
            return Ok(());
        }
        let cache = self.mirror.cache();
        let held = if manifest {
            cache.manifest(d)?.is_some()
        } else {
            cache.blob_len(d)?.is_some()
        };
        if !held {
            return Err(refuse(
                x,
                format!("needs {d}, which the bundle does not carry and this site does not hold"),
            ));
        }
        if self.signed || cache.is_linked(self.mirror.origin_of(&x.r), d)? {
            return Ok(());
        }
        Err(refuse(
            x,
            format!("needs {d}, which this site holds only for other repositories; an unsigned bundle may not make it readable here (list the key that signs bundles in [bundle] trusted_keys)"),
        ))
    }
}

fn refuse(x: &SiteRef, why: String) -> AirgapError {
    AirgapError::Refused(format!(
        "ref {}/{}:{}: {why}; nothing was imported",
        x.upstream, x.r.repo, x.tag
    ))
}

/// Refuses, listing them, when the bundle needs content the site lacks.
fn check_requires(mirror: &Mirror, doc: &BundleDoc) -> Result<(), AirgapError> {
    let mut missing = Vec::new();
    for d in &doc.requires {
        if mirror.cache().blob_len(d)?.is_none() {
            missing.push(d.to_string());
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = missing.iter().take(20).map(String::as_str).collect();
    Err(AirgapError::Refused(format!(
        "this bundle was made against another inventory and needs {} blob(s) this site does not hold; nothing was imported. Export this site's inventory (`wharf inventory export`) and make a bundle against it. Missing: {}{}",
        missing.len(),
        shown.join(", "),
        if missing.len() > shown.len() { ", ..." } else { "" }
    )))
}

/// Refuses a bundle older than one already imported from the same (checked)
/// key, and any move of a tag back to an older bundle's digest, unless
/// `allow`. Unchecked key ids count for nothing.
fn check_rollback(
    mirror: &Mirror,
    doc: &BundleDoc,
    refs: &[SiteRef],
    signed: bool,
    allow: bool,
) -> Result<(), AirgapError> {
    let (Some(key), true, false) = (&doc.key_id, signed, allow) else {
        return Ok(());
    };
    let cache = mirror.cache();
    if let Some(high) = cache.note::<u64>(&key_note(key))? {
        if doc.sequence < high {
            return Err(AirgapError::Refused(format!(
                "bundle sequence {} of key {key} is older than sequence {high}, already imported; nothing was imported (--allow-rollback to import it anyway)",
                doc.sequence
            )));
        }
    }
    let mut back = Vec::new();
    for x in refs {
        let note = tag_note(&x.upstream, x.r.repo.as_str(), x.tag.as_str());
        if let Some(prev) = cache.note::<TagOrigin>(&note)? {
            if prev.key_id.as_deref() == Some(key)
                && prev.sequence > doc.sequence
                && prev.digest != x.digest.as_str()
            {
                back.push(format!("{}/{}:{}", x.upstream, x.r.repo, x.tag));
            }
        }
    }
    if back.is_empty() {
        return Ok(());
    }
    Err(AirgapError::Refused(format!(
        "this bundle would move tags back to an older bundle's digests: {}; nothing was imported (--allow-rollback to do it anyway)",
        back.join(", ")
    )))
}

/// Refuses when what the refs need (carried or already held), which the
/// import pins, would not fit under `max_size` beside what is pinned
/// already, or the new bytes not on the disk.
fn check_room(
    mirror: &Mirror,
    doc: &BundleDoc,
    max_size: Option<u64>,
    needed: &HashSet<Digest>,
    new_bytes: u64,
) -> Result<(), AirgapError> {
    let cache = mirror.cache();
    // One pass over the metadata: the pinned set gives both what is pinned
    // and its bytes (the full `usage()` would load the inventory again).
    if let Some(max) = max_size {
        let pinned = cache.pinned_digests()?;
        let mut pinned_bytes = 0u64;
        for d in &pinned {
            pinned_bytes += cache.blob_len(d)?.unwrap_or(0);
        }
        let mut more = 0u64;
        for d in needed.iter().filter(|d| !pinned.contains(*d)) {
            more += match cache.blob_len(d)? {
                Some(len) => len,
                None => doc.blob(d).map_or(0, |b| b.size),
            };
        }
        if pinned_bytes + more > max {
            return Err(AirgapError::Refused(format!(
                "the bundle's images ({more} bytes not pinned yet) beside {pinned_bytes} bytes already pinned would exceed cache.max_size ({max} bytes); nothing was imported"
            )));
        }
    }
    let available = cache.disk_available()?;
    if new_bytes > available {
        return Err(AirgapError::Refused(format!(
            "importing needs {new_bytes} bytes and the disk has {available} available; nothing was imported"
        )));
    }
    Ok(())
}
