//! Platforms (`linux/arm64/v8`) and the children of an image index.
//!
//! Sync keeps an index byte-identical (its digest is what users pin) and
//! fetches only the child manifests of the platforms it was asked for, so it
//! needs two things from here: a [`Platform`] filter parsed from the
//! configuration and matched against the `platform` object of an index entry
//! ([`PlatformSpec`]), and the entries themselves ([`index_children`]).
//!
//! Matching follows containerd's platform normalisation
//! (`containerd/platforms`, `normalizeArch`): `x86_64` is `amd64`, `aarch64`
//! is `arm64`, `amd64` without a variant is `amd64/v1`, `arm64` without a
//! variant is `arm64/v8`, and an index entry for `arm` without a variant is
//! `arm/v7`. A filter without a variant means the default variant where the
//! architecture has one (`amd64`, `arm64`) and any variant elsewhere
//! (`linux/arm` takes v5, v6 and v7 alike).
//!
//! Spec: OCI image-spec `image-index.md` (`manifests[].platform`); buildkit's
//! attestation manifests are index entries with platform `unknown/unknown`
//! and the annotations `vnd.docker.reference.type: attestation-manifest` and
//! `vnd.docker.reference.digest` (buildkit `docs/attestations/
//! attestation-storage.md`). No I/O happens here.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use super::{Digest, MediaType};

/// A platform filter as the configuration writes it: `os/architecture` or
/// `os/architecture/variant`, lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

/// A platform string that is not `os/architecture[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PlatformError(String);

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Platform, PlatformError> {
        let bad = |why: &str| {
            PlatformError(format!(
                "{:?}: {why} (examples: \"linux/amd64\", \"linux/arm64/v8\", \"linux/arm/v7\")",
                super::truncate(s)
            ))
        };
        let parts: Vec<&str> = s.split('/').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(bad("give os/architecture or os/architecture/variant"));
        }
        if let Some(p) = parts.iter().find(|p| !valid_part(p)) {
            return Err(bad(&format!(
                "{p:?} is not a lowercase word of letters, digits, '.', '_' or '-'"
            )));
        }
        // Index entries use Go's names; a filter in another spelling would
        // silently match nothing, so it is refused with the right name.
        if let Some(go) = match parts[1] {
            "x86_64" | "x86-64" => Some("amd64"),
            "aarch64" => Some("arm64"),
            "i386" | "i686" => Some("386"),
            _ => None,
        } {
            return Err(bad(&format!(
                "images name the architecture {go:?}, not {:?}",
                parts[1]
            )));
        }
        Ok(Platform {
            os: parts[0].to_owned(),
            architecture: parts[1].to_owned(),
            variant: parts.get(2).map(|v| (*v).to_owned()),
        })
    }
}

fn valid_part(p: &str) -> bool {
    p.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && p.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl serde::Serialize for Platform {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Platform {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Platform, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The `platform` object of an index entry, as the upstream wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PlatformSpec {
    pub os: String,
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl PlatformSpec {
    /// buildkit's placeholder for entries that are no image (attestations).
    pub fn is_unknown(&self) -> bool {
        self.os == "unknown" && self.architecture == "unknown"
    }
}

impl fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = self.variant.as_deref().filter(|v| !v.is_empty()) {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// `(architecture, variant)` in containerd's normal form; `None` is the
/// architecture's default variant (or no variant at all).
fn normalize(architecture: &str, variant: Option<&str>) -> (String, Option<String>) {
    let arch = architecture.to_ascii_lowercase();
    let variant = variant
        .filter(|v| !v.is_empty())
        .map(str::to_ascii_lowercase);
    match arch.as_str() {
        "i386" => ("386".into(), None),
        "x86_64" | "x86-64" | "amd64" => {
            ("amd64".into(), variant.filter(|v| v != "v1" && v != "1"))
        }
        "aarch64" | "arm64" => ("arm64".into(), variant.filter(|v| v != "v8" && v != "8")),
        "armhf" => ("arm".into(), Some("v7".into())),
        "armel" => ("arm".into(), Some("v6".into())),
        "arm" => (
            "arm".into(),
            Some(match variant.as_deref() {
                None | Some("7") => "v7".into(),
                Some(v @ ("5" | "6" | "8")) => format!("v{v}"),
                Some(v) => v.to_owned(),
            }),
        ),
        _ => (arch, variant),
    }
}

impl Platform {
    /// Whether an index entry's platform is one this filter asks for.
    pub fn matches(&self, spec: &PlatformSpec) -> bool {
        if !self.os.eq_ignore_ascii_case(&spec.os) {
            return false;
        }
        let (arch, variant) = normalize(&spec.architecture, spec.variant.as_deref());
        let (want_arch, want_variant) = normalize(&self.architecture, self.variant.as_deref());
        if arch != want_arch {
            return false;
        }
        match (&self.variant, arch.as_str()) {
            // No variant asked for: the default one where there is one.
            (None, "amd64" | "arm64") => variant.is_none(),
            (None, _) => true,
            (Some(_), _) => variant == want_variant,
        }
    }
}

/// One entry of an image index (or Docker manifest list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    pub digest: Digest,
    pub media_type: Option<String>,
    pub platform: Option<PlatformSpec>,
    /// The manifest this entry attests (buildkit's attestation manifests).
    pub attestation_for: Option<Digest>,
}

#[derive(Deserialize)]
struct RawIndex {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<Vec<RawChild>>,
}

#[derive(Deserialize)]
struct RawChild {
    digest: String,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    platform: Option<RawPlatform>,
    #[serde(default)]
    annotations: std::collections::HashMap<String, String>,
}

#[derive(Deserialize)]
struct RawPlatform {
    os: Option<String>,
    architecture: Option<String>,
    variant: Option<String>,
}

/// The manifest types that list other manifests.
const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Whether a media type (parameters allowed) is one that lists other
/// manifests: an OCI index or a Docker manifest list.
pub fn is_index_type(media_type: &str) -> bool {
    media_type
        .parse::<MediaType>()
        .is_ok_and(|m| INDEX_TYPES.contains(&m.essence().as_str()))
}

const REFERENCE_TYPE: &str = "vnd.docker.reference.type";
const REFERENCE_DIGEST: &str = "vnd.docker.reference.digest";

/// The entries of an image index or Docker manifest list, in their order;
/// `None` when `bytes` is no index (an image manifest, not JSON). Entries
/// whose digest wharf cannot verify are left out (they could not be fetched),
/// and a platform without both `os` and `architecture` counts as none.
pub fn index_children(bytes: &[u8]) -> Option<Vec<Child>> {
    let raw: RawIndex = serde_json::from_slice(bytes).ok()?;
    if let Some(mt) = &raw.media_type {
        if !is_index_type(mt) {
            return None;
        }
    }
    let children = raw
        .manifests?
        .into_iter()
        .filter_map(|c| {
            let digest = c.digest.parse().ok()?;
            let platform = c.platform.and_then(|p| {
                Some(PlatformSpec {
                    os: p.os?,
                    architecture: p.architecture?,
                    variant: p.variant.filter(|v| !v.is_empty()),
                })
            });
            let attestation_for = match c.annotations.get(REFERENCE_TYPE) {
                Some(t) if t == "attestation-manifest" => c
                    .annotations
                    .get(REFERENCE_DIGEST)
                    .and_then(|d| d.parse().ok()),
                _ => None,
            };
            Some(Child {
                digest,
                media_type: c.media_type,
                platform,
                attestation_for,
            })
        })
        .collect();
    Some(children)
}

/// The entries a platform filter keeps, in index order: every entry when
/// `platforms` is empty; else the entries whose platform matches one of them,
/// the attestations of kept entries, and entries that name no platform at
/// all (nothing says they belong to a platform left out).
pub fn select_children<'a>(children: &'a [Child], platforms: &[Platform]) -> Vec<&'a Child> {
    if platforms.is_empty() {
        return children.iter().collect();
    }
    let kept_image = |c: &Child| match &c.platform {
        Some(p) => platforms.iter().any(|f| f.matches(p)),
        None => true,
    };
    let images: HashSet<&Digest> = children
        .iter()
        .filter(|c| c.attestation_for.is_none() && kept_image(c))
        .map(|c| &c.digest)
        .collect();
    children
        .iter()
        .filter(|c| match &c.attestation_for {
            Some(subject) => images.contains(subject),
            None => images.contains(&c.digest),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    fn spec(os: &str, arch: &str, variant: Option<&str>) -> PlatformSpec {
        PlatformSpec {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.map(Into::into),
        }
    }

    #[test]
    fn parse_and_display() {
        for s in [
            "linux/amd64",
            "linux/arm64/v8",
            "linux/arm/v7",
            "linux/386",
            "linux/ppc64le",
            "linux/s390x",
            "linux/riscv64",
            "windows/amd64",
        ] {
            assert_eq!(p(s).to_string(), s);
        }
        assert_eq!(
            p("linux/arm/v6"),
            Platform {
                os: "linux".into(),
                architecture: "arm".into(),
                variant: Some("v6".into())
            }
        );
        for (s, why) in [
            ("", "os/architecture"),
            ("linux", "os/architecture"),
            ("linux/", "lowercase word"),
            ("/amd64", "lowercase word"),
            ("linux/amd64/", "lowercase word"),
            ("linux/arm64/v8/x", "os/architecture"),
            ("Linux/amd64", "lowercase word"),
            ("linux/amd 64", "lowercase word"),
            ("linux/-amd64", "lowercase word"),
            ("linux/x86_64", "\"amd64\""),
            ("linux/aarch64", "\"arm64\""),
            ("linux/amd64,linux/arm64", "lowercase word"),
        ] {
            let e = s.parse::<Platform>().unwrap_err().to_string();
            assert!(e.contains(why), "{s:?}: {e}");
        }
    }

    #[test]
    fn serde_as_a_string() {
        #[derive(Deserialize, serde::Serialize)]
        struct W {
            p: Vec<Platform>,
        }
        let w: W = serde_json::from_str(r#"{"p":["linux/arm/v7","linux/amd64"]}"#).unwrap();
        assert_eq!(w.p, [p("linux/arm/v7"), p("linux/amd64")]);
        assert_eq!(
            serde_json::to_string(&w).unwrap(),
            r#"{"p":["linux/arm/v7","linux/amd64"]}"#
        );
        assert!(serde_json::from_str::<W>(r#"{"p":["linux"]}"#).is_err());
    }

    #[test]
    fn matching_table() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, &str, Option<&str>, bool)] = &[
            ("linux/amd64", "linux", "amd64", None, true),
            ("linux/amd64", "linux", "amd64", Some("v1"), true),
            ("linux/amd64/v1", "linux", "amd64", None, true),
            ("linux/amd64", "linux", "amd64", Some("v3"), false),
            ("linux/amd64/v3", "linux", "amd64", Some("v3"), true),
            ("linux/amd64", "linux", "x86_64", None, true),
            ("linux/amd64", "windows", "amd64", None, false),
            ("linux/amd64", "linux", "arm64", None, false),
            ("linux/arm64", "linux", "arm64", Some("v8"), true),
            ("linux/arm64", "linux", "arm64", None, true),
            ("linux/arm64/v8", "linux", "arm64", None, true),
            ("linux/arm64/v8", "linux", "aarch64", Some("8"), true),
            ("linux/arm64", "linux", "arm64", Some("v9"), false),
            ("linux/arm", "linux", "arm", Some("v5"), true),
            ("linux/arm", "linux", "arm", Some("v6"), true),
            ("linux/arm", "linux", "arm", Some("v7"), true),
            ("linux/arm", "linux", "arm", None, true),
            ("linux/arm/v7", "linux", "arm", Some("v7"), true),
            ("linux/arm/v7", "linux", "arm", None, true),
            ("linux/arm/v7", "linux", "arm", Some("7"), true),
            ("linux/arm/v7", "linux", "arm", Some("v6"), false),
            ("linux/arm/v6", "linux", "armel", None, true),
            ("linux/arm/v7", "linux", "armhf", None, true),
            ("linux/arm", "linux", "arm64", Some("v8"), false),
            ("linux/386", "linux", "i386", None, true),
            ("linux/ppc64le", "linux", "ppc64le", None, true),
            ("linux/riscv64", "linux", "riscv64", Some("rva20u64"), true),
            ("linux/amd64", "unknown", "unknown", None, false),
            ("linux/amd64", "Linux", "AMD64", None, true),
        ];
        for (filter, os, arch, variant, want) in cases {
            let s = spec(os, arch, *variant);
            assert_eq!(p(filter).matches(&s), *want, "{filter} vs {s}");
        }
    }

    fn d(s: &str) -> Digest {
        Digest::sha256_of(s.as_bytes())
    }

    /// What `docker buildx build --platform linux/amd64,linux/arm64` pushes:
    /// two images and an attestation manifest for each.
    fn buildx_index() -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{amd}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}},
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{arm}","size":1,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{att_amd}","size":1,
              "annotations":{{"vnd.docker.reference.digest":"{amd}","vnd.docker.reference.type":"attestation-manifest"}},
              "platform":{{"architecture":"unknown","os":"unknown"}}}},
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{att_arm}","size":1,
              "annotations":{{"vnd.docker.reference.digest":"{arm}","vnd.docker.reference.type":"attestation-manifest"}},
              "platform":{{"architecture":"unknown","os":"unknown"}}}}]}}"#,
            amd = d("amd64"),
            arm = d("arm64"),
            att_amd = d("att-amd64"),
            att_arm = d("att-arm64"),
        )
    }

    #[test]
    fn children_of_a_buildx_index() {
        let c = index_children(buildx_index().as_bytes()).unwrap();
        assert_eq!(c.len(), 4);
        assert_eq!(c[0].digest, d("amd64"));
        assert_eq!(c[0].platform, Some(spec("linux", "amd64", None)));
        assert_eq!(c[0].attestation_for, None);
        assert_eq!(
            c[0].media_type.as_deref(),
            Some("application/vnd.oci.image.manifest.v1+json")
        );
        assert_eq!(c[1].platform, Some(spec("linux", "arm64", Some("v8"))));
        assert_eq!(c[2].attestation_for, Some(d("amd64")));
        assert!(c[2].platform.as_ref().unwrap().is_unknown());
        assert_eq!(c[3].attestation_for, Some(d("arm64")));
    }

    #[test]
    fn children_of_a_docker_manifest_list_and_odd_entries() {
        let list = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[
            {{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"{}","size":1,"platform":{{"architecture":"arm","os":"linux","variant":"v6"}}}},
            {{"digest":"{}","platform":{{"os":"linux"}}}},
            {{"digest":"sha256:nothex","platform":{{"architecture":"amd64","os":"linux"}}}},
            {{"digest":"{}","annotations":{{"vnd.docker.reference.type":"something-else","vnd.docker.reference.digest":"{}"}}}}]}}"#,
            d("arm6"),
            d("half"),
            d("other"),
            d("arm6"),
        );
        let c = index_children(list.as_bytes()).unwrap();
        assert_eq!(c.len(), 3, "the unverifiable digest is left out");
        assert_eq!(c[0].platform, Some(spec("linux", "arm", Some("v6"))));
        assert_eq!(c[1].platform, None, "no architecture: no platform");
        assert_eq!(c[2].attestation_for, None);
        assert_eq!(c[2].media_type, None);
    }

    #[test]
    fn not_an_index() {
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"digest":"{}"}},"layers":[]}}"#,
            d("c")
        );
        assert_eq!(index_children(manifest.as_bytes()), None);
        assert_eq!(index_children(b"not json"), None);
        assert_eq!(index_children(b"[]"), None);
        // A manifest that says it is an image, whatever else it holds.
        let odd = format!(
            r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","manifests":[{{"digest":"{}"}}]}}"#,
            d("x")
        );
        assert_eq!(index_children(odd.as_bytes()), None);
        // An OCI index may omit mediaType; an empty one is an index still.
        assert_eq!(
            index_children(br#"{"schemaVersion":2,"manifests":[]}"#),
            Some(vec![])
        );
    }

    #[test]
    fn selection_keeps_attestations_of_kept_images() {
        let c = index_children(buildx_index().as_bytes()).unwrap();
        let digests = |platforms: &[&str]| -> Vec<Digest> {
            let f: Vec<Platform> = platforms.iter().map(|s| p(s)).collect();
            select_children(&c, &f)
                .into_iter()
                .map(|c| c.digest.clone())
                .collect()
        };
        assert_eq!(digests(&[]).len(), 4, "no filter: everything");
        assert_eq!(
            digests(&["linux/arm64"]),
            [d("arm64"), d("att-arm64")],
            "one platform and its attestation"
        );
        assert_eq!(digests(&["linux/amd64", "linux/arm64"]).len(), 4);
        assert!(digests(&["linux/s390x"]).is_empty());
        let unplaced = [Child {
            digest: d("artifact"),
            media_type: None,
            platform: None,
            attestation_for: None,
        }];
        assert_eq!(select_children(&unplaced, &[p("linux/amd64")]).len(), 1);
    }
}
