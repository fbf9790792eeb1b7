//! What a manifest refers to: the content an image is made of.
//!
//! Pins, `wharf ls` sizes and `wharf rm` need an image's closure (an index's
//! manifests, a manifest's config and layers). Only the descriptor digests
//! matter here, so this reads the few fields every format shares instead of
//! modelling each schema: OCI and Docker schema 2 manifests (`config`,
//! `layers`), OCI indexes and Docker manifest lists (`manifests`), OCI
//! artifact manifests (`blobs`, `subject` is not followed: it points at another
//! image), and Docker schema 1 (`fsLayers[].blobSum`).

use serde::Deserialize;

use super::Digest;

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    #[serde(default)]
    size: u64,
}

#[derive(Deserialize)]
struct Schema1Layer {
    #[serde(rename = "blobSum")]
    blob_sum: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Any {
    config: Option<Descriptor>,
    layers: Vec<Descriptor>,
    blobs: Vec<Descriptor>,
    manifests: Vec<Descriptor>,
    #[serde(rename = "fsLayers")]
    fs_layers: Vec<Schema1Layer>,
}

/// The digests a manifest refers to: child manifests (of an index) first, then
/// its config and layers. Unparseable JSON or descriptors yield what could be
/// read; a manifest is verified by digest before it is stored, so this only
/// meets what the upstream served.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct References {
    pub manifests: Vec<Digest>,
    pub blobs: Vec<Digest>,
}

pub fn references(bytes: &[u8]) -> References {
    let Ok(m) = serde_json::from_slice::<Any>(bytes) else {
        return References::default();
    };
    let parse = |s: &str| s.parse::<Digest>().ok();
    let mut blobs: Vec<Digest> = m
        .config
        .iter()
        .chain(&m.layers)
        .chain(&m.blobs)
        .filter_map(|d| parse(&d.digest))
        .chain(m.fs_layers.iter().filter_map(|l| parse(&l.blob_sum)))
        .collect();
    // schema 1 repeats empty layers.
    let mut seen = std::collections::HashSet::new();
    blobs.retain(|d| seen.insert(d.clone()));
    References {
        manifests: m
            .manifests
            .iter()
            .filter_map(|d| parse(&d.digest))
            .collect(),
        blobs,
    }
}

/// A manifest's config and layers (or an artifact's blobs) with the sizes
/// their descriptors declare (0 for schema 1, which declares none), in
/// order, each once. Not an index's children: those are manifests.
pub fn blob_descriptors(bytes: &[u8]) -> Vec<(Digest, u64)> {
    let Ok(m) = serde_json::from_slice::<Any>(bytes) else {
        return Vec::new();
    };
    let mut seen = std::collections::HashSet::new();
    m.config
        .iter()
        .chain(&m.layers)
        .chain(&m.blobs)
        .map(|d| (d.digest.as_str(), d.size))
        .chain(m.fs_layers.iter().map(|l| (l.blob_sum.as_str(), 0)))
        .filter_map(|(d, size)| Some((d.parse::<Digest>().ok()?, size)))
        .filter(|(d, _)| seen.insert(d.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Digest {
        Digest::sha256_of(s.as_bytes())
    }

    #[test]
    fn image_manifest_config_and_layers() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},
            "layers":[{{"digest":"{}","size":1}},{{"digest":"{}","size":1}}]}}"#,
            d("c"),
            d("l1"),
            d("l2")
        );
        let r = references(m.as_bytes());
        assert_eq!(r.blobs, vec![d("c"), d("l1"), d("l2")]);
        assert!(r.manifests.is_empty());
    }

    #[test]
    fn index_lists_manifests() {
        let m = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{}","size":1,"platform":{{"os":"linux"}}}},{{"digest":"{}"}}]}}"#,
            d("amd64"),
            d("arm64")
        );
        let r = references(m.as_bytes());
        assert_eq!(r.manifests, vec![d("amd64"), d("arm64")]);
        assert!(r.blobs.is_empty());
    }

    #[test]
    fn schema1_and_garbage() {
        let m = format!(
            r#"{{"schemaVersion":1,"fsLayers":[{{"blobSum":"{0}"}},{{"blobSum":"{0}"}},{{"blobSum":"{1}"}}]}}"#,
            d("a"),
            d("b")
        );
        assert_eq!(references(m.as_bytes()).blobs, vec![d("a"), d("b")]);
        assert_eq!(references(b"not json"), References::default());
        let bad = r#"{"layers":[{"digest":"sha256:nothex"}]}"#;
        assert_eq!(references(bad.as_bytes()), References::default());
    }
}
