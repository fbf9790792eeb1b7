//! `wharf bundle import` at the site: everything is checked before a byte
//! is copied (signature against `trusted_keys` and the files here; the
//! refs, their closures, rollbacks and room in `admit.rs`), then every blob
//! goes through the
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

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bundle::{blob_reader, open_checked, BundleBlob, BundleDoc, PublicKey};
use crate::cache::{CachedManifest, FillError, Join};
use crate::mirror::{LeftOut, Mirror, Routed};
use crate::registry::{Digest, MAX_MANIFEST_BYTES};

use super::admit::{admit, key_note, pin_source, tag_note, Admitted, TagOrigin};
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

pub async fn import_bundle(
    mirror: &Mirror,
    trusted: &[PublicKey],
    max_size: Option<u64>,
    req: &ImportRequest,
    emit: &(dyn Fn(Event) + Send + Sync),
) -> Result<ImportReport, AirgapError> {
    let dir = req.dir.clone();
    let signed = !trusted.is_empty();
    let (doc, admitted) = {
        let (mirror, trusted, req) = (mirror.clone(), trusted.to_vec(), req.clone());
        tokio::task::spawn_blocking(move || {
            let doc = open_checked(&req.dir, &trusted, signed)?;
            let admitted = admit(&mirror, &doc, &req, signed, max_size)?;
            Ok::<_, AirgapError>((doc, admitted))
        })
        .await
        .map_err(AirgapError::join)??
    };
    emit(Event::Planned {
        refs: admitted.refs.len(),
        blobs: admitted.missing,
        bytes: admitted.new_bytes,
        left_out: doc.blobs.len() - admitted.missing,
    });
    let mut report = ImportReport {
        bundle: doc.id.clone(),
        sequence: doc.sequence,
        key_id: doc.key_id.clone(),
        refs: admitted.refs.len(),
        blobs_present: (doc.blobs.len() - admitted.missing) as u64,
        ..ImportReport::default()
    };
    // What the refs need stays out of eviction's reach until the tags (and
    // their pins) are in place.
    let _lease = mirror.cache().lease(admitted.needed.iter().cloned());
    let mut copied = 0u64;
    for b in &doc.blobs {
        let owner = &admitted.owners[&b.digest][0];
        if copy_blob(mirror, &dir, b, owner).await? {
            report.blobs_written += 1;
            report.bytes_written += b.size;
            copied += b.size;
            emit(Event::Copied {
                bytes: copied,
                total: admitted.new_bytes,
            });
        }
    }
    let mirror2 = mirror.clone();
    let report = tokio::task::spawn_blocking(move || {
        switch(&mirror2, &doc, &admitted, signed, &mut report)?;
        mirror2.cache().flush()?;
        Ok::<_, AirgapError>(report)
    })
    .await
    .map_err(AirgapError::join)??;
    for p in &report.unpinned {
        emit(Event::Note {
            message: format!("unpinned {p}: the connected side no longer carries it"),
        });
    }
    Ok(report)
}

/// A carried manifest's bytes, checked against its digest.
pub(super) fn read_manifest(dir: &Path, b: &BundleBlob) -> Result<Vec<u8>, AirgapError> {
    if b.size > MAX_MANIFEST_BYTES as u64 {
        return Err(AirgapError::Refused(format!(
            "bundle.json: manifest {} is larger than 4 MiB",
            b.digest
        )));
    }
    let mut buf = Vec::with_capacity(b.size as usize);
    blob_reader(dir, b)
        .take(MAX_MANIFEST_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| AirgapError::file(dir, e))?;
    let actual = Digest::of(b.digest.algorithm(), &buf);
    if actual != b.digest {
        return Err(damaged(
            b,
            format!("does not match its digest (got {actual})"),
        ));
    }
    Ok(buf)
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

/// The last step, once everything is copied: each ref's closure checked
/// present (a required blob evicted meanwhile stops here, before its tag),
/// links for every repository, notes of what a platform filter left out,
/// pins, then the tags; then `prune` of the refs a rule no longer carries.
/// Blocking (metadata writes).
fn switch(
    mirror: &Mirror,
    doc: &BundleDoc,
    a: &Admitted,
    signed: bool,
    report: &mut ImportReport,
) -> Result<(), AirgapError> {
    let cache = mirror.cache();
    for d in &a.needed {
        if cache.blob_len(d)?.is_none() {
            return Err(AirgapError::Refused(format!(
                "{d}, which the bundle's refs need, is not in the cache (removed during the import?); no tag moved: import again"
            )));
        }
    }
    for (d, rs) in &a.owners {
        for r in rs {
            cache.link(mirror.origin_of(r), d)?;
        }
    }
    for f in &doc.filtered {
        let site = a.refs.iter().find(|x| {
            x.r.repo.as_str() == f.repository
                && a.owners.get(&f.index).is_some_and(|rs| {
                    rs.iter()
                        .any(|r| r.upstream == x.r.upstream && r.repo == x.r.repo)
                })
        });
        if let Some(x) = site {
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
    }
    for x in &a.refs {
        let pattern = format!("{}/{}:{}", x.upstream, x.r.repo, x.tag);
        cache.pin_for(&pattern, &x.pin_source)?;
    }
    for x in &a.refs {
        let origin = mirror.origin_of(&x.r);
        let moved = cache.tag(origin, &x.tag)?.map(|(d, _)| d) != Some(x.digest.clone());
        cache.set_tag(origin, &x.tag, &x.digest, &x.media_type)?;
        if signed {
            cache.set_note(
                &tag_note(&x.upstream, x.r.repo.as_str(), x.tag.as_str()),
                &TagOrigin {
                    key_id: doc.key_id.clone(),
                    sequence: doc.sequence,
                    digest: x.digest.to_string(),
                },
            )?;
        }
        report.tags_moved += u64::from(moved);
    }
    if let (true, Some(key)) = (signed, &doc.key_id) {
        let high = cache.note::<u64>(&key_note(key))?.unwrap_or(0);
        cache.set_note(&key_note(key), &high.max(doc.sequence))?;
    }
    prune(mirror, doc, a, signed, report)
}

/// `prune`: for each rule whose refs this bundle carries in full, the
/// site's pins of that rule's earlier refs that this bundle no longer
/// carries are removed (eviction may then take them). Only for a bundle
/// whose signature was checked, only for rules it carries refs of, and only
/// pins made by bundles of the same key: nobody else's images.
fn prune(
    mirror: &Mirror,
    doc: &BundleDoc,
    a: &Admitted,
    signed: bool,
    report: &mut ImportReport,
) -> Result<(), AirgapError> {
    let (true, Some(key)) = (signed, &doc.key_id) else {
        return Ok(());
    };
    let cache = mirror.cache();
    let carried: BTreeSet<String> = a
        .refs
        .iter()
        .map(|x| format!("{}/{}:{}", x.upstream, x.r.repo, x.tag))
        .collect();
    let sources: BTreeSet<&str> = a.refs.iter().map(|x| x.pin_source.as_str()).collect();
    for rule in doc.prune.iter().filter_map(|s| s.strip_prefix("sync:")) {
        let source = pin_source(key, rule);
        if !sources.contains(source.as_str()) {
            continue; // carries no ref of that rule: nothing to prune by
        }
        for pattern in cache.pins_of(&source)? {
            if !carried.contains(&pattern) {
                cache.unpin(&pattern)?;
                report.unpinned.push(pattern);
            }
        }
    }
    Ok(())
}

/// A blob that fails verification names the volume it came from.
fn damaged(b: &BundleBlob, e: impl std::fmt::Display) -> AirgapError {
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
