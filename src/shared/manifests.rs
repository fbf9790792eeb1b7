//! Manifests by digest in the tier: `<prefix>/manifests/sha256/<hex>`, the
//! exact bytes with their media type as the object's `Content-Type`. Small,
//! so written whole (create-only) and read whole, within the upstream's
//! manifest size limit. Tags are never shared: each node revalidates its
//! own within `tag_ttl`.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use object_store::{Attribute, Attributes, ObjectStoreExt, PutMode};

use crate::registry::Digest;

use super::{Tier, TierError};

impl Tier {
    pub(super) fn manifest_key(&self, d: &Digest) -> object_store::path::Path {
        self.key(&format!("manifests/{}/{}", d.algorithm().as_str(), d.hex()))
    }

    /// The tier's copy of manifest `d`: its `Content-Type` (if the store
    /// kept one) and bytes, read up to `max` bytes (a larger object is not
    /// read). Unverified, type included: the caller checks both. `None`
    /// when absent, too large or the tier failed.
    pub async fn read_manifest(&self, d: &Digest, max: usize) -> Option<(Option<String>, Bytes)> {
        let m = &self.inner.metrics.lookups;
        if self.inner.bad.contains_key(d) {
            m.with_label_values(&["bad_copy"]).inc();
            return None;
        }
        if self.available().is_err() {
            m.with_label_values(&["set_aside"]).inc();
            return None;
        }
        let key = self.manifest_key(d);
        let limit = self.inner.settings.request_timeout;
        let read = async {
            let got = self.inner.store.get(&key).await?;
            if got.meta.size > max as u64 {
                return Ok(None);
            }
            let media_type = got
                .attributes
                .get(&Attribute::ContentType)
                .map(|v| v.to_string());
            let mut body = BytesMut::new();
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                if body.len() + chunk.len() > max {
                    return Ok(None);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Some((media_type, body.freeze())))
        };
        // The whole read (a manifest is small) within one request deadline.
        match self
            .call("get", async move {
                match tokio::time::timeout(limit, read).await {
                    Ok(r) => r,
                    Err(_) => Err(object_store::Error::Generic {
                        store: "shared tier",
                        source: "manifest read timed out".into(),
                    }),
                }
            })
            .await
        {
            Ok(Some(found)) => {
                m.with_label_values(&["hit"]).inc();
                self.inner
                    .metrics
                    .bytes
                    .with_label_values(&["read"])
                    .inc_by(found.1.len() as u64);
                Some(found)
            }
            // Larger than any manifest this upstream may send: not one, and
            // replaced by the upstream's answer (a create-only upload would
            // leave it there for good).
            Ok(None) => {
                m.with_label_values(&["bad_copy"]).inc();
                self.bad_copy(d);
                None
            }
            Err(TierError::NotFound) => {
                m.with_label_values(&["miss"]).inc();
                None
            }
            Err(_) => {
                m.with_label_values(&["error"]).inc();
                None
            }
        }
    }

    /// Uploads a verified manifest, create-only, in the background.
    pub fn upload_manifest(&self, d: Digest, media_type: String, bytes: Bytes) {
        if !self.inner.settings.write {
            return;
        }
        // Queued with the blob uploads, under the same bound.
        let Some(queued) = self.queue_slot() else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let _queued = queued;
            let key = this.manifest_key(&d);
            let replace = this.replaces_bad_copy(&d);
            let mut attributes = Attributes::new();
            attributes.insert(Attribute::ContentType, media_type.into());
            let mode = if replace {
                PutMode::Overwrite
            } else {
                this.create_mode()
            };
            let len = bytes.len() as u64;
            let r = this
                .call("put", this.put_if(&key, bytes, mode, attributes))
                .await
                .map(|written| written.is_some());
            let m = &this.inner.metrics;
            match r {
                Ok(true) => {
                    m.uploads.with_label_values(&["done"]).inc();
                    m.bytes.with_label_values(&["written"]).inc_by(len);
                    if replace {
                        this.inner.bad.invalidate(&d);
                    }
                }
                Ok(false) => m.uploads.with_label_values(&["present"]).inc(),
                Err(e) => {
                    m.uploads.with_label_values(&["failed"]).inc();
                    tracing::debug!(digest = %d, error = %e, "shared tier: manifest upload failed");
                }
            }
        });
    }
}
