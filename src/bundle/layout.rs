//! Names and bytes the writer and the readers must agree on: volume and blob
//! paths, ustar entry sizes and headers, and the two OCI layout files.
//!
//! `oci-layout` and `index.json` are generated from `bundle.json` by one
//! function here, so the readers regenerate them instead of trusting the
//! copies in volume 1 (and `verify` checks those copies are exactly these
//! bytes). Spec: image-spec `image-layout.md`, `annotations.md`
//! (`org.opencontainers.image.ref.name`).

use serde_json::json;

use crate::registry::Digest;

use super::doc::{BundleBlob, BundleRef};

/// The smallest volume `create` accepts: below this the per-entry overhead
/// and the layout files would crowd out the content.
pub const MIN_VOLUME_SIZE: u64 = 1 << 20;

/// A ustar header block.
pub const BLOCK: u64 = 512;
/// Two zero blocks end a tar archive.
pub const END_OF_ARCHIVE: u64 = 2 * BLOCK;

pub const OCI_LAYOUT: &str = "oci-layout";
pub const INDEX_JSON: &str = "index.json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

pub fn volume_file(n: u32) -> String {
    format!("volume-{n:04}.tar")
}

/// `blobs/<algorithm>/<hex>`: where a whole blob lies in the layout.
pub fn blob_path(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm().as_str(), d.hex())
}

/// `blobs/<algorithm>/<hex>.part-NNNN` (1-based): a piece of a split blob.
pub fn part_path(d: &Digest, n: usize) -> String {
    format!("{}.part-{n:04}", blob_path(d))
}

/// Rounds up to whole blocks: the room an entry's data takes.
pub fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK) * BLOCK
}

/// Bytes an entry of `size` takes in a volume: its header and padded data.
pub fn entry_len(size: u64) -> u64 {
    BLOCK + padded(size)
}

/// A ustar header for a regular file. Blob paths (`blobs/sha256/<64 hex>`
/// and `.part-NNNN`) are under 100 bytes, so every entry is one header block
/// (no GNU long-name entries). That is one reason v1 carries sha256 blobs
/// only: a sha512 path would not fit.
pub fn header(path: &str, size: u64, mtime: u64) -> std::io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

pub fn oci_layout_bytes() -> Vec<u8> {
    br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()
}

/// The layout's `index.json`: one descriptor per ref whose manifest the
/// bundle carries (a ref whose manifest the site already holds cannot be
/// described without its size, and is not in the layout).
pub fn index_json(refs: &[BundleRef], size: impl Fn(&Digest) -> Option<u64>) -> Vec<u8> {
    let manifests: Vec<serde_json::Value> = refs
        .iter()
        .filter_map(|r| {
            let size = size(&r.digest)?;
            Some(json!({
                "mediaType": r.media_type,
                "digest": r.digest.as_str(),
                "size": size,
                "annotations": { REF_NAME: r.name() },
            }))
        })
        .collect();
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .expect("serializes")
}

/// The two files volume 1 starts with, in order.
pub fn layout_files(
    refs: &[BundleRef],
    size: impl Fn(&Digest) -> Option<u64>,
) -> [(&'static str, Vec<u8>); 2] {
    [
        (OCI_LAYOUT, oci_layout_bytes()),
        (INDEX_JSON, index_json(refs, size)),
    ]
}

/// `layout_files` for a document: sizes from its carried blobs.
pub fn doc_layout_files(refs: &[BundleRef], blobs: &[BundleBlob]) -> [(&'static str, Vec<u8>); 2] {
    layout_files(refs, |d| {
        blobs.iter().find(|b| &b.digest == d).map(|b| b.size)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let d = Digest::sha256_of(b"");
        assert_eq!(volume_file(1), "volume-0001.tar");
        assert_eq!(volume_file(12345), "volume-12345.tar");
        assert_eq!(blob_path(&d), format!("blobs/sha256/{}", d.hex()));
        assert_eq!(
            part_path(&d, 2),
            format!("blobs/sha256/{}.part-0002", d.hex())
        );
    }

    #[test]
    fn entry_sizes() {
        assert_eq!(entry_len(0), 512);
        assert_eq!(entry_len(1), 1024);
        assert_eq!(entry_len(512), 1024);
        assert_eq!(entry_len(513), 1536);
    }

    #[test]
    fn header_is_one_block() {
        let d = Digest::sha256_of(b"x");
        let p = part_path(&d, 1);
        let h = header(&p, 5, 0).unwrap();
        assert_eq!(h.path().unwrap().to_str().unwrap(), p);
        assert_eq!(h.as_bytes().len(), 512);
        assert_eq!(h.entry_size().unwrap(), 5);
    }

    #[test]
    fn index_json_names_refs_as_skopeo_expects() {
        let m = br#"{"schemaVersion":2}"#;
        let d = Digest::sha256_of(m);
        let r = BundleRef {
            upstream: "dockerhub".into(),
            repository: "library/nginx".into(),
            tag: "1.27".into(),
            digest: d.clone(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            rule: None,
        };
        let b = BundleBlob {
            digest: d,
            size: m.len() as u64,
            media_type: Some(r.media_type.clone()),
            parts: vec![],
        };
        let [_, (_, index)] = doc_layout_files(&[r], &[b]);
        let v: serde_json::Value = serde_json::from_slice(&index).unwrap();
        assert_eq!(
            v["manifests"][0]["annotations"][REF_NAME],
            "dockerhub/library/nginx:1.27"
        );
        assert_eq!(v["manifests"][0]["size"], 19);
    }
}
