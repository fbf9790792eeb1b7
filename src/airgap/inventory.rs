//! `wharf inventory export`: every digest a site holds, so the connected
//! side can make a bundle of only what is missing (`bundle create
//! --against`). A lost bundle then costs nothing: the site exports a fresh
//! inventory and the next bundle is complete relative to it.

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::cache::{Cache, CacheError};
use crate::registry::Digest;

pub const FORMAT: &str = "wharf-inventory/1";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteInventory {
    pub format: String,
    /// RFC 3339, UTC.
    pub created: String,
    /// Every blob and manifest the site's cache holds, sorted.
    pub blobs: Vec<String>,
}

impl SiteInventory {
    pub fn of(cache: &Cache) -> Result<SiteInventory, CacheError> {
        Ok(SiteInventory {
            format: FORMAT.into(),
            created: now_rfc3339(),
            blobs: cache
                .digests()?
                .into_iter()
                .map(|(d, _)| d.to_string())
                .collect(),
        })
    }

    /// Parses an inventory file; returns it with the sha256 (hex) of the
    /// file's bytes, which a bundle made against it records.
    pub fn parse(bytes: &[u8]) -> Result<(SiteInventory, String), String> {
        let inv: SiteInventory =
            serde_json::from_slice(bytes).map_err(|e| format!("not a wharf inventory: {e}"))?;
        if inv.format != FORMAT {
            return Err(format!("format {:?}, expected {FORMAT:?}", inv.format));
        }
        if let Some(bad) = inv.blobs.iter().find(|d| d.parse::<Digest>().is_err()) {
            return Err(format!("{bad:?} is not a digest"));
        }
        Ok((inv, hex::encode(sha2::Sha256::digest(bytes))))
    }

    /// The digests listed.
    pub fn digests(&self) -> std::collections::HashSet<Digest> {
        self.blobs.iter().filter_map(|d| d.parse().ok()).collect()
    }
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
