//! `wharf gc --shared --older-than D`: retention for stores without
//! lifecycle rules. Deletes blobs last written more than `D` ago, and
//! leases and probe objects left by dead nodes (older than ten lease
//! lifetimes). The only code that deletes blobs from the tier; nothing runs
//! it on its own (a node's eviction is local only).
//!
//! A blob deleted while a node reads it fails that read (the node's client
//! sees a failed transfer and the next request fetches it again), so give
//! `D` well beyond the time anything takes to pull.

use std::time::Duration;

use futures_util::StreamExt;
use object_store::ObjectStoreExt;

use super::{Tier, TierError};

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct GcReport {
    pub blobs_deleted: u64,
    pub bytes_deleted: u64,
    pub blobs_kept: u64,
    pub bytes_kept: u64,
    pub leases_deleted: u64,
}

/// Deletes what is older than `older_than` (see the module doc). With
/// `dry_run`, only counts.
pub async fn collect(
    tier: &Tier,
    older_than: Duration,
    dry_run: bool,
) -> Result<GcReport, TierError> {
    let mut report = GcReport::default();
    let now = chrono::Utc::now();
    let blob_cutoff =
        now - chrono::Duration::from_std(older_than).unwrap_or(chrono::TimeDelta::MAX);
    let stale = tier.inner.settings.lease_ttl * 10;
    let lease_cutoff = now - chrono::Duration::from_std(stale).unwrap_or(chrono::TimeDelta::MAX);
    for (dir, cutoff, is_blob) in [
        ("blobs", blob_cutoff, true),
        ("leases", lease_cutoff, false),
        ("probes", lease_cutoff, false),
    ] {
        let prefix = tier.key(dir);
        let mut listing = tier.inner.store.list(Some(&prefix));
        while let Some(item) = listing.next().await {
            let meta = item.map_err(|e| TierError::Store(super::describe(&e)))?;
            if meta.last_modified >= cutoff {
                if is_blob {
                    report.blobs_kept += 1;
                    report.bytes_kept += meta.size;
                }
                continue;
            }
            if !dry_run {
                match tier.inner.store.delete(&meta.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(TierError::Store(super::describe(&e))),
                }
            }
            if is_blob {
                report.blobs_deleted += 1;
                report.bytes_deleted += meta.size;
            } else {
                report.leases_deleted += 1;
            }
        }
    }
    Ok(report)
}
