//! `wharf bundle import` at the site: everything is checked before a byte
//! is copied (signature against `trusted_keys`, the files, the upstreams the
//! refs name, the content the bundle requires the site to hold already, tag
//! rollbacks, room under `max_size`), then every blob goes through the
//! cache's verify-on-write path, content before the manifests that need it,
//! and the tags move last, so a client never sees a tag whose content is
//! incomplete.
//!
//! Interrupted (a crash, `kill -9`), an import is simply run again: content
//! already committed is skipped, not copied again, and the tag switch is
//! idempotent. It needs no scratch space beyond the blobs themselves.
//!
//! Never links content to a repository the bundle does not say holds it
//! (the per-repository rule of the pull path holds for imports too).

use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::bundle::{blob_reader, open_checked, BundleBlob, BundleDoc, PublicKey};
use crate::cache::{CachedManifest, FillError, Join};
use crate::mirror::{LeftOut, Mirror, Routed};
use crate::registry::manifest::references;
use crate::registry::{index_children, Digest, MediaType, Tag, MAX_MANIFEST_BYTES};

use super::{AirgapError, Event};

/// What the operator asked for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImportRequest {
    pub dir: PathBuf,
    /// `bundle-name=site-name` upstream renames.
    pub map: Vec<(String, String)>,
    /// Let a tag move to an older bundle's digest from the same key.
    pub allow_rollback: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ImportReport {
    pub bundle: String,
    pub sequence: u64,
    pub key_id: Option<String>,
    pub refs: usize,
    /// Blobs copied into the cache by this run.
    pub blobs_written: u64,
    pub bytes_written: u64,
    /// Blobs the cache already held (an earlier, interrupted run; another
    /// bundle; a pull).
    pub blobs_present: u64,
    pub tags_moved: u64,
    pub unpinned: Vec<String>,
}

/// Which tag an import last set, from which key and sequence: a later
/// bundle from the same key with a lower sequence may not move it back.
#[derive(Serialize, Deserialize)]
struct TagOrigin {
    key_id: Option<String>,
    sequence: u64,
    digest: String,
}

fn tag_note(up: &str, repo: &str, tag: &str) -> String {
    format!("bundle-tag/{up}/{repo}:{tag}")
}

/// A ref resolved against the site: its repository on a site upstream.
struct SiteRef {
    r: Routed,
    upstream: String,
    tag: Tag,
    digest: Digest,
    media_type: MediaType,
    /// `bundle:<rule>` for refs of a sync rule, `bundle:images` otherwise.
    pin_source: String,
}

pub async fn import_bundle(
    mirror: &Mirror,
    trusted: &[PublicKey],
    max_size: Option<u64>,
    req: &ImportRequest,
    emit: &(dyn Fn(Event) + Send + Sync),
) -> Result<ImportReport, AirgapError> {
    let dir = req.dir.clone();
    let doc = {
        let trusted = trusted.to_vec();
        let dir = dir.clone();
        let require = !trusted.is_empty();
        tokio::task::spawn_blocking(move || open_checked(&dir, &trusted, require))
            .await
            .map_err(AirgapError::join)??
    };
    let refs = site_refs(mirror, &doc, req)?;
    let owners = owners(mirror, &doc, &refs, &dir)?;
    check_requires(mirror, &doc)?;
    check_rollback(mirror, &doc, &refs, req.allow_rollback)?;
    let missing: Vec<&BundleBlob> = doc
        .blobs
        .iter()
        .filter(|b| !matches!(mirror.cache().blob_len(&b.digest), Ok(Some(_))))
        .collect();
    let new_bytes: u64 = missing.iter().map(|b| b.size).sum();
    check_room(mirror, max_size, new_bytes)?;
    emit(Event::Planned {
        refs: refs.len(),
        blobs: missing.len(),
        bytes: new_bytes,
        left_out: doc.blobs.len() - missing.len(),
    });
    let mut report = ImportReport {
        bundle: doc.id.clone(),
        sequence: doc.sequence,
        key_id: doc.key_id.clone(),
        refs: refs.len(),
        blobs_present: (doc.blobs.len() - missing.len()) as u64,
        ..ImportReport::default()
    };
    let mut copied = 0u64;
    for b in &doc.blobs {
        let owner = owners
            .get(&b.digest)
            .and_then(|o| o.first())
            .ok_or_else(|| {
                AirgapError::Request(format!("blob {} belongs to no ref of the bundle", b.digest))
            })?;
        let written = copy_blob(mirror, &dir, b, owner).await?;
        if written {
            report.blobs_written += 1;
            report.bytes_written += b.size;
            copied += b.size;
            emit(Event::Copied {
                bytes: copied,
                total: new_bytes,
            });
        }
    }
    switch(mirror, &doc, &refs, &owners, &mut report, emit)?;
    mirror.cache().flush()?;
    Ok(report)
}

/// Maps each ref to the site's upstreams (by name, or `--map`).
fn site_refs(
    mirror: &Mirror,
    doc: &BundleDoc,
    req: &ImportRequest,
) -> Result<Vec<SiteRef>, AirgapError> {
    let rule_of_doc = doc
        .sources
        .iter()
        .find_map(|s| s.strip_prefix("sync:"))
        .map(str::to_owned);
    let mut out = Vec::new();
    let mut unknown = BTreeSet::new();
    for x in &doc.refs {
        let site = site_upstream(&x.upstream, &req.map);
        let bad = |what: &str| {
            AirgapError::Request(format!("bundle.json: ref {}: invalid {what}", x.name()))
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
            pin_source: format!(
                "bundle:{}",
                rule_of_doc.clone().unwrap_or_else(|| "images".into())
            ),
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

fn site_upstream(name: &str, map: &[(String, String)]) -> String {
    map.iter()
        .find(|(from, _)| from == name)
        .map(|(_, to)| to.clone())
        .unwrap_or_else(|| name.to_owned())
}

/// Which repositories each digest belongs to (the refs' closures, walked
/// through manifests read from the bundle or the cache). A blob is linked
/// only to those.
fn owners(
    mirror: &Mirror,
    doc: &BundleDoc,
    refs: &[SiteRef],
    dir: &std::path::Path,
) -> Result<HashMap<Digest, Vec<Routed>>, AirgapError> {
    let mut owners: HashMap<Digest, Vec<Routed>> = HashMap::new();
    let mut add = |d: &Digest, r: &Routed| {
        let v = owners.entry(d.clone()).or_default();
        if !v
            .iter()
            .any(|x| x.upstream == r.upstream && x.repo == r.repo)
        {
            v.push(r.clone());
        }
    };
    for x in refs {
        let mut stack = vec![x.digest.clone()];
        while let Some(d) = stack.pop() {
            add(&d, &x.r);
            let Some(bytes) = manifest_bytes(mirror, doc, dir, &x.r, &d)? else {
                continue; // a layer, or a manifest the site holds elsewhere
            };
            match index_children(&bytes) {
                Some(children) => {
                    stack.extend(children.into_iter().map(|c| c.digest).filter(|c| {
                        doc.blob(c).is_some() || mirror.cache().blob_len(c).ok().flatten().is_some()
                    }))
                }
                None => {
                    for b in references(&bytes).blobs {
                        add(&b, &x.r);
                    }
                }
            }
        }
    }
    Ok(owners)
}

/// A manifest's bytes: from the bundle when it carries it (read and
/// checked against its digest), else from the cache.
fn manifest_bytes(
    mirror: &Mirror,
    doc: &BundleDoc,
    dir: &std::path::Path,
    r: &Routed,
    d: &Digest,
) -> Result<Option<Vec<u8>>, AirgapError> {
    match doc.blob(d) {
        Some(b) if b.media_type.is_some() => Ok(Some(read_manifest(dir, b)?)),
        Some(_) => Ok(None),
        None => Ok(mirror
            .cache()
            .manifest(d)?
            .map(|m| m.bytes.to_vec())
            .or_else(|| {
                mirror
                    .held_manifest(r, d)
                    .ok()
                    .flatten()
                    .map(|h| h.bytes.to_vec())
            })),
    }
}

fn read_manifest(dir: &std::path::Path, b: &BundleBlob) -> Result<Vec<u8>, AirgapError> {
    if b.size > MAX_MANIFEST_BYTES as u64 {
        return Err(AirgapError::Request(format!(
            "manifest {} is larger than 4 MiB",
            b.digest
        )));
    }
    let mut buf = Vec::with_capacity(b.size as usize);
    blob_reader(dir, b)
        .read_to_end(&mut buf)
        .map_err(|e| AirgapError::file(dir, e))?;
    let actual = Digest::of(b.digest.algorithm(), &buf);
    if actual != b.digest {
        return Err(AirgapError::Refused(format!(
            "manifest {} in the bundle does not match its digest (got {actual}): the media is damaged",
            b.digest
        )));
    }
    Ok(buf)
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

/// Refuses to move a tag back to an older bundle's digest from the same key.
fn check_rollback(
    mirror: &Mirror,
    doc: &BundleDoc,
    refs: &[SiteRef],
    allow: bool,
) -> Result<(), AirgapError> {
    if allow {
        return Ok(());
    }
    let mut back = Vec::new();
    for x in refs {
        let key = tag_note(&x.upstream, x.r.repo.as_str(), x.tag.as_str());
        if let Some(prev) = mirror.cache().note::<TagOrigin>(&key)? {
            if prev.key_id.is_some()
                && prev.key_id == doc.key_id
                && prev.sequence > doc.sequence
                && prev.digest != x.digest.as_str()
            {
                back.push(format!(
                    "{}/{}:{} (set by bundle sequence {}, this is {})",
                    x.upstream, x.r.repo, x.tag, prev.sequence, doc.sequence
                ));
            }
        }
    }
    if back.is_empty() {
        return Ok(());
    }
    Err(AirgapError::Refused(format!(
        "this bundle is older than one already imported from key {} and would move tags back: {}; nothing was imported (--allow-rollback to do it anyway)",
        doc.key_id.as_deref().unwrap_or("-"),
        back.join(", ")
    )))
}

/// Refuses when the imported content, which is pinned, would not fit under
/// `max_size` beside what is pinned already, or on the disk.
fn check_room(mirror: &Mirror, max_size: Option<u64>, new_bytes: u64) -> Result<(), AirgapError> {
    let u = mirror.cache().usage()?;
    if let Some(max) = max_size {
        if u.pinned_bytes + new_bytes > max {
            return Err(AirgapError::Refused(format!(
                "importing {new_bytes} bytes beside {} bytes already pinned would exceed cache.max_size ({max} bytes); nothing was imported",
                u.pinned_bytes
            )));
        }
    }
    if new_bytes > u.disk_available {
        return Err(AirgapError::Refused(format!(
            "importing needs {new_bytes} bytes and the disk has {} available; nothing was imported",
            u.disk_available
        )));
    }
    Ok(())
}

/// Writes one blob into the cache unless it is there; `true` if written.
async fn copy_blob(
    mirror: &Mirror,
    dir: &std::path::Path,
    b: &BundleBlob,
    owner: &Routed,
) -> Result<bool, AirgapError> {
    let cache = mirror.cache();
    let origin = mirror.origin_of(owner);
    if let Some(mt) = &b.media_type {
        if cache.manifest(&b.digest)?.is_some() {
            return Ok(false);
        }
        let bytes = read_manifest(dir, b)?;
        let m = CachedManifest {
            bytes: bytes.into(),
            media_type: mt
                .parse()
                .map_err(|_| AirgapError::Request(format!("{}: invalid media type", b.digest)))?,
        };
        cache.commit_manifest_unlinked(&b.digest, &m).await?;
        cache.flush()?;
        return Ok(true);
    }
    match cache.begin_fill(&b.digest, origin)? {
        Join::Cached => Ok(false),
        Join::Follower(mut reader, _) => {
            reader.finished().await?;
            Ok(false)
        }
        Join::Leader(writer, _reader) => {
            let (cache, dir, b2) = (cache.clone(), dir.to_owned(), b.clone());
            tokio::task::spawn_blocking(move || -> Result<(), AirgapError> {
                let mut rd = blob_reader(&dir, &b2);
                let mut buf = vec![0u8; 1 << 20];
                let chunks = std::iter::from_fn(|| match rd.read(&mut buf) {
                    Ok(0) => None,
                    Ok(n) => Some(Ok(buf[..n].to_vec())),
                    Err(e) => Some(Err(FillError::from(crate::cache::CacheError::Io(e)))),
                });
                cache
                    .fill_unlinked(writer, Some(b2.size), chunks)
                    .map_err(|e| damaged(&b2, e))?;
                // Durable before the next blob: a crash re-copies at most
                // the blob in flight.
                cache.flush()?;
                Ok(())
            })
            .await
            .map_err(AirgapError::join)??;
            Ok(true)
        }
    }
}

/// A blob that fails verification names the volume it came from.
fn damaged(b: &BundleBlob, e: FillError) -> AirgapError {
    let files: Vec<String> = b
        .parts
        .iter()
        .map(|p| crate::bundle::volume_file(p.volume))
        .collect();
    AirgapError::Refused(format!(
        "{}: blob {}: {e}; the media is damaged (run `wharf bundle verify`); the blobs copied so far are kept for a retry but no tag moved",
        files.join(", "),
        b.digest
    ))
}

/// The last step: links for every repository, the notes of what a platform
/// filter left out, pins, then the tags; `prune` of the rule's refs that
/// this bundle no longer carries.
fn switch(
    mirror: &Mirror,
    doc: &BundleDoc,
    refs: &[SiteRef],
    owners: &HashMap<Digest, Vec<Routed>>,
    report: &mut ImportReport,
    emit: &(dyn Fn(Event) + Send + Sync),
) -> Result<(), AirgapError> {
    let cache = mirror.cache();
    for (d, rs) in owners {
        if cache.blob_len(d)?.is_some() {
            for r in rs {
                cache.link(mirror.origin_of(r), d)?;
            }
        }
    }
    for f in &doc.filtered {
        let Some(x) = refs.iter().find(|x| x.r.repo.as_str() == f.repository) else {
            continue;
        };
        let why = LeftOut {
            platform: f.platform.clone(),
            by: match &f.rule {
                Some(rule) => format!("sync rule '{rule}' (bundle {})", doc.id),
                None => format!("bundle {} (not cached on the connected side)", doc.id),
            },
            kept: Vec::new(),
        };
        mirror.note_left_out(&x.r, &f.child, &why)?;
    }
    for x in refs {
        let pattern = format!("{}/{}:{}", x.upstream, x.r.repo, x.tag);
        cache.pin_for(&pattern, &x.pin_source)?;
    }
    for x in refs {
        let origin = mirror.origin_of(&x.r);
        let moved = cache.tag(origin, &x.tag)?.map(|(d, _)| d) != Some(x.digest.clone());
        cache.set_tag(origin, &x.tag, &x.digest, &x.media_type)?;
        cache.set_note(
            &tag_note(&x.upstream, x.r.repo.as_str(), x.tag.as_str()),
            &TagOrigin {
                key_id: doc.key_id.clone(),
                sequence: doc.sequence,
                digest: x.digest.to_string(),
            },
        )?;
        report.tags_moved += u64::from(moved);
    }
    let pruned: BTreeSet<String> = doc
        .prune
        .iter()
        .filter_map(|s| s.strip_prefix("sync:"))
        .map(|rule| format!("bundle:{rule}"))
        .collect();
    {
        for source in refs
            .iter()
            .map(|x| &x.pin_source)
            .filter(|s| pruned.contains(*s))
            .collect::<BTreeSet<_>>()
        {
            for pattern in cache.pins_of(source)? {
                let carried = refs
                    .iter()
                    .any(|x| format!("{}/{}:{}", x.upstream, x.r.repo, x.tag) == pattern);
                if !carried {
                    cache.unpin(&pattern)?;
                    emit(Event::Note {
                        message: format!(
                            "unpinned {pattern}: the connected side no longer carries it"
                        ),
                    });
                    report.unpinned.push(pattern);
                }
            }
        }
    }
    Ok(())
}
