//! `bundle.json`: what a bundle holds, where each byte of it lies, and the
//! signature over all of that.
//!
//! Fields serialize in declaration order and every collection is a `Vec` in
//! the writer's order, so the same document always gives the same bytes. The
//! signature covers the compact serialization of the document with
//! `signature` set to `None` ([`BundleDoc::signed_bytes`]); the file itself is
//! pretty-printed for people. Unknown fields are refused: a field the reader
//! would drop is a field the signature would not cover.

use serde::{Deserialize, Serialize};

use crate::registry::Digest;

/// The `format` of a v1 document.
pub const FORMAT: &str = "wharf-bundle/1";
/// The document's file name inside a bundle directory.
pub const DOC_FILE: &str = "bundle.json";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleDoc {
    pub format: String,
    /// 16 random bytes, hex.
    pub id: String,
    /// RFC 3339, UTC, whole seconds.
    pub created: String,
    /// Per signing key, increasing; 0 for an unsigned bundle.
    pub sequence: u64,
    pub key_id: Option<String>,
    /// What was asked for: `sync:RULE`, `image:UPSTREAM/REPO:TAG`.
    pub sources: Vec<String>,
    /// The site inventory whose blobs were left out.
    pub against: Option<Against>,
    /// Ids of earlier bundles whose blobs were left out.
    pub since: Vec<String>,
    pub refs: Vec<BundleRef>,
    /// Layers and configs, then manifests, then indexes (children first).
    pub blobs: Vec<BundleBlob>,
    /// Referenced by carried manifests but not carried: the site must hold them.
    #[serde(with = "digests")]
    pub requires: Vec<Digest>,
    /// Index children a platform filter left out on purpose.
    pub filtered: Vec<Filtered>,
    /// The refs of these sources (`sync:RULE`) are all the rule keeps now:
    /// a site unpins what an earlier bundle of the same rule carried and
    /// this one does not (the rule's `prune`).
    #[serde(default)]
    pub prune: Vec<String>,
    pub volumes: Vec<Volume>,
    pub signature: Option<Signature>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Against {
    /// sha256 (hex) of the inventory file as given.
    pub inventory_sha256: String,
    /// How many blobs the inventory listed.
    pub blobs: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleRef {
    /// The upstream's name on the connected side (`dockerhub`).
    pub upstream: String,
    pub repository: String,
    pub tag: String,
    #[serde(with = "digest")]
    pub digest: Digest,
    pub media_type: String,
    /// The sync rule this ref came from (`--sync RULE`); `None` for a named
    /// image. Signed like every field; absent from the file when `None`, so
    /// bundles written before the field existed read (and verify) as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

impl BundleRef {
    /// `upstream/repository:tag`: the OCI layout's `ref.name` annotation and
    /// what `skopeo copy oci:DIR:REF` takes.
    pub fn name(&self) -> String {
        format!("{}/{}:{}", self.upstream, self.repository, self.tag)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleBlob {
    #[serde(with = "digest")]
    pub digest: Digest,
    pub size: u64,
    /// Set for manifests and indexes, whose references `verify` follows.
    pub media_type: Option<String>,
    /// One part for a whole blob; several, in order, for a split one.
    pub parts: Vec<Part>,
}

/// One tar entry holding a blob or a piece of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    /// 1-based volume number (`volume-0001.tar` is 1).
    pub volume: u32,
    /// The entry's path inside the tar.
    pub path: String,
    /// Byte offset of the entry's data inside the volume file; its ustar
    /// header is the 512 bytes before it.
    pub offset: u64,
    pub size: u64,
    /// sha256 (hex) of this part's bytes. For a whole sha256 blob it is the
    /// digest's hex.
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filtered {
    pub upstream: String,
    pub repository: String,
    #[serde(with = "digest")]
    pub index: Digest,
    #[serde(with = "digest")]
    pub child: Digest,
    /// The child's platform as `os/arch[/variant]`.
    pub platform: String,
    /// The sync rule whose filter left it out.
    pub rule: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    pub file: String,
    pub size: u64,
    /// sha256 (hex) of the whole file.
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub key_id: String,
    /// base64 (standard, padded) of the 64-byte ed25519 signature.
    pub ed25519: String,
}

impl BundleDoc {
    /// The bytes the signature covers: the compact serialization of this
    /// document with `signature` set to `None`.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let unsigned = BundleDoc {
            signature: None,
            ..self.clone()
        };
        serde_json::to_vec(&unsigned).expect("a BundleDoc always serializes")
    }

    /// The file's contents: pretty JSON and a final newline.
    pub fn to_file_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a BundleDoc always serializes");
        v.push(b'\n');
        v
    }

    pub fn blob(&self, d: &Digest) -> Option<&BundleBlob> {
        self.blobs.iter().find(|b| &b.digest == d)
    }

    /// Total bytes of carried blobs.
    pub fn blob_bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.size).sum()
    }
}

/// `Digest` as its text form.
mod digest {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::registry::Digest;

    pub fn serialize<S: Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(d.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(de)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `Vec<Digest>` as a list of text forms.
mod digests {
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::registry::Digest;

    pub fn serialize<S: Serializer>(v: &[Digest], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for d in v {
            seq.serialize_element(d.as_str())?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<Digest>, D::Error> {
        Vec::<String>::deserialize(de)?
            .iter()
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BundleDoc {
        let d = Digest::sha256_of(b"x");
        BundleDoc {
            format: FORMAT.into(),
            id: "00112233445566778899aabbccddeeff".into(),
            created: "2025-01-02T03:04:05Z".into(),
            sequence: 7,
            key_id: Some("0123456789abcdef".into()),
            sources: vec!["sync:base".into()],
            against: Some(Against {
                inventory_sha256: "ab".repeat(32),
                blobs: 3,
            }),
            since: vec![],
            refs: vec![BundleRef {
                upstream: "dockerhub".into(),
                repository: "library/nginx".into(),
                tag: "1.27".into(),
                digest: d.clone(),
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                rule: Some("base".into()),
            }],
            blobs: vec![],
            requires: vec![d],
            filtered: vec![],
            prune: vec!["sync:base".into()],
            volumes: vec![],
            signature: Some(Signature {
                key_id: "0123456789abcdef".into(),
                ed25519: "c2ln".into(),
            }),
        }
    }

    #[test]
    fn round_trips_and_fields_keep_their_order() {
        let doc = sample();
        let text = String::from_utf8(doc.to_file_bytes()).unwrap();
        let back: BundleDoc = serde_json::from_str(&text).unwrap();
        assert_eq!(back, doc);
        let keys = [
            "\"format\"",
            "\"id\"",
            "\"created\"",
            "\"sequence\"",
            "\"key_id\"",
            "\"sources\"",
            "\"against\"",
            "\"since\"",
            "\"refs\"",
            "\"blobs\"",
            "\"requires\"",
            "\"filtered\"",
            "\"volumes\"",
            "\"signature\"",
        ];
        // Top-level keys only: two spaces in (`against` has a `blobs` too).
        let at: Vec<usize> = keys
            .iter()
            .map(|k| text.find(&format!("\n  {k}")).unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
    }

    #[test]
    fn a_ref_rule_round_trips_is_signed_and_is_absent_when_none() {
        let doc = sample();
        let signed = String::from_utf8(doc.signed_bytes()).unwrap();
        assert!(signed.contains(r#""rule":"base""#), "{signed}");
        let mut other = doc.clone();
        other.refs[0].rule = Some("other".into());
        assert_ne!(other.signed_bytes(), doc.signed_bytes());

        // Without a rule the key is left out, as in bundles that predate it.
        other.refs[0].rule = None;
        let text = String::from_utf8(other.to_file_bytes()).unwrap();
        // Top-level keys only: `against` has a `blobs` too.
        let refs = &text[text.find("\n  \"refs\"").unwrap()..text.find("\n  \"blobs\"").unwrap()];
        assert!(!refs.contains("\"rule\""), "{refs}");
        let back: BundleDoc = serde_json::from_str(&text).unwrap();
        assert_eq!(back, other);
    }

    #[test]
    fn signed_bytes_leave_out_the_signature_only() {
        let doc = sample();
        let signed = String::from_utf8(doc.signed_bytes()).unwrap();
        assert!(signed.ends_with(r#""signature":null}"#), "{signed}");
        let mut other = doc.clone();
        other.signature = None;
        assert_eq!(other.signed_bytes(), doc.signed_bytes());
        other.sequence += 1;
        assert_ne!(other.signed_bytes(), doc.signed_bytes());
    }

    #[test]
    fn unknown_fields_and_bad_digests_are_refused() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_file_bytes()).unwrap();
        v["extra"] = serde_json::json!(1);
        assert!(serde_json::from_value::<BundleDoc>(v.clone()).is_err());
        v.as_object_mut().unwrap().remove("extra");
        v["requires"] = serde_json::json!(["sha256:../../etc"]);
        assert!(serde_json::from_value::<BundleDoc>(v).is_err());
    }
}
