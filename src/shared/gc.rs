//! `wharf gc --shared --older-than D`: retention for stores without
//! lifecycle rules. Deletes blobs and manifests last written more than
//! `D` ago, and leases and probe objects left by dead nodes (older than ten lease
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
    pub manifests_deleted: u64,
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
    // Manifests went uncollected: they piled up for ever under a store
    // without lifecycle rules.
    for (dir, cutoff, kind) in [
        ("blobs", blob_cutoff, Kind::Blob),
        ("manifests", blob_cutoff, Kind::Manifest),
        ("leases", lease_cutoff, Kind::Lease),
        ("probes", lease_cutoff, Kind::Lease),
    ] {
        let prefix = tier.key(dir);
        let mut listing = tier.inner.store.list(Some(&prefix));
        while let Some(item) = listing.next().await {
            let meta = item.map_err(|e| TierError::Store(super::describe(&e)))?;
            if meta.last_modified >= cutoff {
                if kind == Kind::Blob {
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
            match kind {
                Kind::Blob => {
                    report.blobs_deleted += 1;
                    report.bytes_deleted += meta.size;
                }
                Kind::Manifest => report.manifests_deleted += 1,
                Kind::Lease => report.leases_deleted += 1,
            }
        }
    }
    Ok(report)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Blob,
    Manifest,
    Lease,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    use super::*;
    use crate::registry::Digest;

    #[tokio::test]
    async fn old_blobs_and_manifests_go_and_live_leases_stay() {
        let store = Arc::new(InMemory::new());
        let settings = crate::shared::testing::settings();
        let t = Tier::with_store(store.clone(), &settings, &prometheus::Registry::new());
        let d = Digest::sha256_of(b"x");
        let keys = [t.blob_key(&d), t.manifest_key(&d), t.lease_key(&d)];
        for k in &keys {
            store.put(k, "x".into()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let r = collect(&t, Duration::ZERO, false).await.unwrap();
        assert_eq!(
            (r.blobs_deleted, r.manifests_deleted, r.leases_deleted),
            (1, 1, 0)
        );
        assert!(store.head(&keys[0]).await.is_err());
        assert!(store.head(&keys[1]).await.is_err(), "the manifest was kept");
        assert!(
            store.head(&keys[2]).await.is_ok(),
            "a live lease was deleted"
        );
    }
}
