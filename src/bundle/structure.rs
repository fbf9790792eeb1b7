//! Step 2 of verification: `bundle.json` is consistent with itself, before
//! any volume is opened. Every name the importer puts in a path, a label or
//! the layout is a valid protocol word of bounded length; every part lies
//! inside its volume where the writer would have put it.
//!
//! `create` runs the ref and filtered checks on a plan, so it never writes a
//! bundle that `verify` would refuse.

use std::collections::HashSet;

use crate::registry::{Algorithm, Platform, RepoName, Tag, MAX_MANIFEST_BYTES};

use super::doc::{BundleBlob, BundleDoc, BundleRef, Filtered, Part};
use super::layout::{self, padded, BLOCK, END_OF_ARCHIVE};

/// The longest upstream, rule or platform name a document may hold (the
/// configuration's limit on rule names).
const MAX_NAME: usize = 128;

pub(crate) fn check_structure(doc: &BundleDoc) -> Result<(), String> {
    check_identity(doc)?;
    check_volume_list(doc)?;
    check_refs(&doc.refs)?;
    for f in &doc.filtered {
        check_filtered(f)?;
    }
    check_blobs(doc)
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_identity(doc: &BundleDoc) -> Result<(), String> {
    if !is_hex(&doc.id, 32) {
        return Err(format!("id {:?} is not 32 lowercase hex digits", doc.id));
    }
    time::OffsetDateTime::parse(&doc.created, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("created {:?}: {e}", doc.created))?;
    Ok(())
}

fn check_volume_list(doc: &BundleDoc) -> Result<(), String> {
    if doc.volumes.is_empty() {
        return Err("lists no volumes".into());
    }
    for (i, v) in doc.volumes.iter().enumerate() {
        let want = layout::volume_file(i as u32 + 1);
        if v.file != want {
            return Err(format!(
                "volume {} is named {:?}, expected {want}",
                i + 1,
                v.file
            ));
        }
        if !is_hex(&v.sha256, 64) {
            return Err(format!("{}: sha256 is not 64 lowercase hex digits", v.file));
        }
    }
    Ok(())
}

/// Each ref valid and listed once.
pub(crate) fn check_refs(refs: &[BundleRef]) -> Result<(), String> {
    let mut names = HashSet::new();
    for r in refs {
        check_ref(r)?;
        if !names.insert(r.name()) {
            return Err(format!("ref {} is listed twice", r.name()));
        }
    }
    Ok(())
}

/// A ref's names must be valid protocol words: the importer puts them in
/// paths and the layout in `ref.name`.
fn check_ref(r: &BundleRef) -> Result<(), String> {
    let named = |e: String| format!("ref {}: {e}", crate::registry::truncate(&r.name()));
    check_upstream(&r.upstream).map_err(named)?;
    r.repository
        .parse::<RepoName>()
        .map_err(|e| named(e.to_string()))?;
    r.tag.parse::<Tag>().map_err(|e| named(e.to_string()))?;
    if let Some(rule) = &r.rule {
        check_rule(rule).map_err(named)?;
    }
    Ok(())
}

/// A filtered child: where it was left out, its platform and the rule.
pub(crate) fn check_filtered(f: &Filtered) -> Result<(), String> {
    let named = |e: String| format!("filtered {}: {e}", f.child);
    check_upstream(&f.upstream).map_err(named)?;
    f.repository
        .parse::<RepoName>()
        .map_err(|e| named(e.to_string()))?;
    check_platform(&f.platform).map_err(named)?;
    if let Some(rule) = &f.rule {
        check_rule(rule).map_err(named)?;
    }
    Ok(())
}

/// Upstream names as the configuration allows them (letters, digits, `-`,
/// `_`), at most [`MAX_NAME`] bytes.
fn check_upstream(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "upstream name {:?}: use letters, digits, '-' and '_' (at most {MAX_NAME})",
            crate::registry::truncate(name)
        ))
    }
}

/// Sync rule names as the configuration allows them: letters, digits, `.`,
/// `_`, `-`, starting with a letter or digit (so never `.` or `..`), at most
/// [`MAX_NAME`] bytes.
fn check_rule(name: &str) -> Result<(), String> {
    if crate::sync::is_valid_rule_name(name) {
        Ok(())
    } else {
        Err(format!(
            "rule name {:?}: use letters, digits, '.', '_' and '-', starting with a letter or digit (at most {MAX_NAME})",
            crate::registry::truncate(name)
        ))
    }
}

/// A filtered child's platform: `os/architecture[/variant]` as a platform
/// filter is written, or `attestation` / `unknown` for an entry without one.
pub(crate) fn check_platform(s: &str) -> Result<(), String> {
    if s == "attestation" || s == "unknown" {
        return Ok(());
    }
    if s.len() > MAX_NAME {
        return Err(format!(
            "platform {:?} is longer than {MAX_NAME} bytes",
            crate::registry::truncate(s)
        ));
    }
    s.parse::<Platform>()
        .map(|_| ())
        .map_err(|e| format!("platform {e}"))
}

fn check_blobs(doc: &BundleDoc) -> Result<(), String> {
    let mut seen = HashSet::new();
    // The highest data offset in each volume: where only the last entry is.
    let mut last = vec![0u64; doc.volumes.len()];
    for b in &doc.blobs {
        let d = &b.digest;
        if !seen.insert(d) {
            return Err(format!("blob {d} is listed twice"));
        }
        check_blob(doc, b)?;
        for p in &b.parts {
            let at = &mut last[p.volume as usize - 1];
            *at = (*at).max(p.offset);
        }
    }
    // A split blob's parts run in consecutive volumes, each but the last
    // ending its volume, as the writer lays them out. So at most one split
    // blob is ever half read, which bounds what `verify` holds of it.
    for b in doc.blobs.iter().filter(|b| b.parts.len() > 1) {
        for w in b.parts.windows(2) {
            if w[1].volume != w[0].volume + 1 || last[w[0].volume as usize - 1] != w[0].offset {
                return Err(format!(
                    "blob {}: {} is not the last entry of {} followed by the next part in the next volume",
                    b.digest,
                    w[0].path,
                    layout::volume_file(w[0].volume)
                ));
            }
        }
    }
    Ok(())
}

/// One blob: sha256, its size, its parts' paths, volumes and places.
fn check_blob(doc: &BundleDoc, b: &BundleBlob) -> Result<(), String> {
    let d = &b.digest;
    if d.algorithm() != Algorithm::Sha256 {
        return Err(format!("blob {d}: bundles carry sha256 blobs only"));
    }
    if b.parts.is_empty() {
        return Err(format!("blob {d} has no parts"));
    }
    if b.media_type.is_some() && b.size > MAX_MANIFEST_BYTES as u64 {
        return Err(format!(
            "blob {d}: a manifest of {} bytes is larger than the {MAX_MANIFEST_BYTES} a manifest may have",
            b.size
        ));
    }
    let sum = b
        .parts
        .iter()
        .try_fold(0u64, |sum, p| sum.checked_add(p.size));
    if sum != Some(b.size) {
        return Err(format!(
            "blob {d}: parts add up to {sum:?} bytes, the blob has {}",
            b.size
        ));
    }
    let split = b.parts.len() > 1;
    let mut last_volume = 0;
    for (i, p) in b.parts.iter().enumerate() {
        let want = if split {
            layout::part_path(d, i + 1)
        } else {
            layout::blob_path(d)
        };
        if p.path != want {
            return Err(format!(
                "blob {d}: part {} is at {:?}, expected {want}",
                i + 1,
                p.path
            ));
        }
        if p.volume <= last_volume {
            return Err(format!("blob {d}: parts are not in increasing volumes"));
        }
        last_volume = p.volume;
        check_part(doc, b, p)?;
    }
    Ok(())
}

/// A part fits in a listed volume at a block boundary, and names a sha256.
fn check_part(doc: &BundleDoc, b: &BundleBlob, p: &Part) -> Result<(), String> {
    let d = &b.digest;
    let Some(v) = doc.volumes.get(p.volume as usize - 1) else {
        return Err(format!(
            "blob {d}: part in volume {}, which is not listed",
            p.volume
        ));
    };
    let fits = p.offset >= BLOCK
        && p.offset % BLOCK == 0
        && padded(p.size)
            .checked_add(END_OF_ARCHIVE)
            .and_then(|n| p.offset.checked_add(n))
            .is_some_and(|end| end <= v.size);
    if !fits {
        return Err(format!(
            "blob {d}: {} at offset {} with {} bytes does not fit in {} ({} bytes)",
            p.path, p.offset, p.size, v.file, v.size
        ));
    }
    if !is_hex(&p.sha256, 64) {
        return Err(format!(
            "blob {d}: {}: sha256 is not 64 lowercase hex digits",
            p.path
        ));
    }
    if b.parts.len() == 1 && p.sha256 != d.hex() {
        return Err(format!(
            "blob {d}: sha256 {} of a whole blob is not its digest",
            p.sha256
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_names_are_the_configurations() {
        for ok in ["base", "a", "team-1.prod_x", &"r".repeat(MAX_NAME)] {
            assert!(check_rule(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "-x",
            "a/b",
            "a b",
            "ré",
            "a\0",
            &"r".repeat(MAX_NAME + 1),
        ] {
            assert!(check_rule(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn platforms_parse_or_are_one_of_two_words() {
        for ok in ["linux/amd64", "linux/arm/v7", "attestation", "unknown"] {
            assert!(check_platform(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "linux",
            "Linux/AMD64",
            "linux/x86_64",
            "linux/amd64/v1/x",
            "../../etc",
            "linux/amd64\n",
            &format!("linux/{}", "a".repeat(MAX_NAME)),
        ] {
            assert!(check_platform(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn upstream_names_are_bounded() {
        assert!(check_upstream("dockerhub").is_ok());
        assert!(check_upstream(&"u".repeat(MAX_NAME)).is_ok());
        assert!(check_upstream(&"u".repeat(MAX_NAME + 1)).is_err());
        assert!(check_upstream("a.b").is_err());
    }
}
