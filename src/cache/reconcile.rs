//! Making metadata and files agree again, after a crash or an operator's
//! hand in the cache directory.
//!
//! Files reach `blobs/` only by rename after verification and get their record
//! right after; eviction removes the record first and the file second. A crash
//! between the two steps leaves a file without a record or a record without a
//! file; both are dropped (a lone file would be trusted without a record of
//! what it is). A file whose length differs from its record was damaged after
//! it was written, and goes too. Nothing is read or hashed, so 100,000 blobs
//! take one directory walk and one metadata scan; `wharf gc --verify` re-hashes
//! every blob when the disk itself is in doubt.
//!
//! Links and tags that point at content no longer cached are removed by `gc`:
//! they cost a revalidation at most, never a wrong answer.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::registry::Digest;

use super::meta::{Kind, Metadata};
use super::store::BlobStore;
use super::CacheError;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ReconcileReport {
    pub files: u64,
    pub records: u64,
    /// Files removed: no record, a name that is not a digest, or a length
    /// that differs from the record's.
    pub files_removed: u64,
    pub bytes_removed: u64,
    /// Records removed: no file, or a value that does not parse.
    pub records_removed: u64,
    pub links_removed: u64,
    pub tags_removed: u64,
    /// Blobs whose content no longer matched their digest (`--verify` only).
    pub corrupt_removed: u64,
    /// Blobs and bytes left, file and record agreeing.
    pub blobs_kept: u64,
    pub bytes_kept: u64,
    pub ms: u64,
}

/// A running server commits a fill by rename and writes its record right
/// after; a file younger than this without a record may be such a commit.
const LIVE_GRACE: Duration = Duration::from_secs(600);

/// Reconciles files and blob records. `live`: a server may be filling the
/// cache meanwhile (`wharf gc` through the admin socket), so recent files
/// without records are left alone.
pub fn reconcile(
    store: &BlobStore,
    meta: &Metadata,
    live: bool,
) -> Result<ReconcileReport, CacheError> {
    let started = Instant::now();
    let mut report = ReconcileReport::default();
    let mut records: HashMap<Digest, u64> = HashMap::new();
    for (key, rec) in meta.blobs()? {
        report.records += 1;
        match (key.parse::<Digest>(), rec) {
            (Ok(d), Ok(r)) => {
                records.insert(d, r.size);
            }
            _ => {
                tracing::warn!(key = %key, "removing an unreadable blob record");
                meta.remove_blob_key(&key)?;
                report.records_removed += 1;
            }
        }
    }
    let now = SystemTime::now();
    for f in store.walk()? {
        report.files += 1;
        let keep = match &f.digest {
            Some(d) => match records.remove(d) {
                Some(size) if size == f.len => {
                    report.blobs_kept += 1;
                    report.bytes_kept += size;
                    true
                }
                Some(size) => {
                    tracing::warn!(digest = %d, recorded = size, on_disk = f.len,
                        "blob file length differs from its record; removing both");
                    meta.remove_blob(d)?;
                    report.records_removed += 1;
                    false
                }
                None => {
                    live && f
                        .modified
                        .and_then(|m| now.duration_since(m).ok())
                        .is_none_or(|age| age < LIVE_GRACE)
                }
            },
            None => false,
        };
        if !keep {
            match std::fs::remove_file(&f.path) {
                Ok(()) => {
                    report.files_removed += 1;
                    report.bytes_removed += f.len;
                }
                Err(e) => tracing::warn!(path = %f.path.display(), error = %e,
                    "cannot remove a stray file from the cache"),
            }
        }
    }
    // What is left has a record and no file.
    for d in records.keys() {
        meta.remove_blob(d)?;
        report.records_removed += 1;
    }
    report.ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Drops links and tags whose content is no longer cached (`wharf gc`).
pub fn prune_references(meta: &Metadata, report: &mut ReconcileReport) -> Result<(), CacheError> {
    for (up, repo, d) in meta.links()? {
        if meta.get_blob(&d)?.is_none() {
            meta.unlink(&up, &repo, &d)?;
            report.links_removed += 1;
        }
    }
    for t in meta.tags()? {
        let gone = match t.record.digest.parse::<Digest>() {
            Ok(d) => !matches!(meta.get_blob(&d)?, Some(r) if r.kind == Kind::Manifest),
            Err(_) => true,
        };
        if gone {
            meta.remove_tag(&t.upstream, &t.repo, &t.tag)?;
            report.tags_removed += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::meta::BlobRecord;

    fn rec(size: u64) -> BlobRecord {
        BlobRecord::blob(size, 0)
    }

    #[test]
    fn files_and_records_agree_afterwards() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let meta = Metadata::in_memory();
        let good = Digest::sha256_of(b"good");
        let no_record = Digest::sha256_of(b"no record");
        let no_file = Digest::sha256_of(b"no file");
        let short = Digest::sha256_of(b"short file");
        for (d, b) in [
            (&good, &b"good"[..]),
            (&no_record, b"no record"),
            (&short, b"short file"),
        ] {
            store.put_verified(d, b).unwrap();
        }
        meta.put_blob(&good, &rec(4)).unwrap();
        meta.put_blob(&no_file, &rec(7)).unwrap();
        meta.put_blob(&short, &rec(10)).unwrap();
        std::fs::write(store.path(&short), b"short").unwrap();
        std::fs::write(store.path(&good).with_file_name("not-a-digest"), b"?").unwrap();

        // Live: the recent lone file may be a commit in progress.
        let r = reconcile(&store, &meta, true).unwrap();
        assert!(store.contains(&no_record));
        assert_eq!(r.files_removed, 2, "{r:?}");

        let r = reconcile(&store, &meta, false).unwrap();
        assert_eq!(
            (r.files, r.files_removed, r.records_removed),
            (2, 1, 0),
            "{r:?}"
        );
        assert!(store.contains(&good) && !store.contains(&no_record) && !store.contains(&short));
        assert!(meta.get_blob(&good).unwrap().is_some());
        assert!(meta.get_blob(&no_file).unwrap().is_none());
        assert!(meta.get_blob(&short).unwrap().is_none());
        let r = reconcile(&store, &meta, false).unwrap();
        assert_eq!(
            (r.files, r.records, r.files_removed, r.records_removed),
            (1, 1, 0, 0)
        );
    }

    #[test]
    fn prune_drops_links_and_tags_to_missing_content() {
        let meta = Metadata::in_memory();
        let repo = "a/b".parse().unwrap();
        let kept = Digest::sha256_of(b"kept");
        let gone = Digest::sha256_of(b"gone");
        let mt = "application/vnd.oci.image.manifest.v1+json"
            .parse()
            .unwrap();
        meta.put_blob(
            &kept,
            &BlobRecord::manifest(1, "application/vnd.oci.image.manifest.v1+json", 0),
        )
        .unwrap();
        meta.link("u", &repo, &kept).unwrap();
        meta.link("u", &repo, &gone).unwrap();
        meta.put_tag("u", &repo, &"v1".parse().unwrap(), &kept, &mt, 1)
            .unwrap();
        meta.put_tag("u", &repo, &"v2".parse().unwrap(), &gone, &mt, 1)
            .unwrap();
        let mut r = ReconcileReport::default();
        prune_references(&meta, &mut r).unwrap();
        assert_eq!((r.links_removed, r.tags_removed), (1, 1));
        assert!(meta.is_linked("u", &repo, &kept).unwrap());
        assert_eq!(meta.tags().unwrap().len(), 1);
    }
}
