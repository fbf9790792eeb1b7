//! Bundles end to end without a cache: an in-memory [`BlobSource`] of random
//! blobs and hand-written manifests, `create` into a temp dir, then
//! `verify`, `blob_reader`, `extract`, and the damage an operator's media
//! may suffer.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

use serde_json::json;

use super::*;
use crate::registry::Digest;

const MIB: u64 = 1 << 20;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

#[derive(Default)]
struct Mem {
    blobs: HashMap<Digest, Vec<u8>>,
    /// Digests whose source lies about its length.
    lie: HashMap<Digest, Vec<u8>>,
}

impl BlobSource for Mem {
    fn open(&self, d: &Digest) -> std::io::Result<Box<dyn Read + Send>> {
        let bytes = self
            .lie
            .get(d)
            .or_else(|| self.blobs.get(d))
            .ok_or(std::io::ErrorKind::NotFound)?;
        Ok(Box::new(Cursor::new(bytes.clone())))
    }
}

/// Deterministic noise (xorshift), so failures reproduce.
fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

struct Fixture {
    mem: Mem,
    plan: Plan,
    index: Digest,
    /// A child of the index left out by a platform filter.
    filtered: Digest,
}

impl Mem {
    fn add(&mut self, bytes: Vec<u8>) -> Digest {
        let d = Digest::sha256_of(&bytes);
        self.blobs.insert(d.clone(), bytes);
        d
    }
}

fn desc(mt: &str, d: &Digest, size: usize) -> serde_json::Value {
    json!({"mediaType": mt, "digest": d.as_str(), "size": size})
}

/// Two platform images (layers of the given sizes each) under one index
/// tagged `dockerhub/library/demo:1.0`, one more child filtered out, and a
/// second tag pointing at the amd64 manifest. Planned in the worst order:
/// index first, content last.
fn fixture(layer_sizes: &[usize]) -> Fixture {
    let mut mem = Mem::default();
    let mut content = Vec::new();
    let mut manifests = Vec::new();
    let mut children = Vec::new();
    for (p, arch) in ["amd64", "arm64"].iter().enumerate() {
        let mut layers = Vec::new();
        for (i, &n) in layer_sizes.iter().enumerate() {
            let bytes = random(n, (p * 100 + i) as u64 + 1);
            let d = mem.add(bytes);
            // Images share layers (here: the empty one); a plan lists each once.
            if !content.contains(&(d.clone(), n)) {
                content.push((d.clone(), n));
            }
            layers.push(desc("application/vnd.oci.image.layer.v1.tar+gzip", &d, n));
        }
        let config = serde_json::to_vec(&json!({"architecture": arch, "os": "linux"})).unwrap();
        let config_len = config.len();
        let cd = mem.add(config);
        content.push((cd.clone(), config_len));
        let m = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc("application/vnd.oci.image.config.v1+json", &cd, config_len),
            "layers": layers,
        }))
        .unwrap();
        let len = m.len();
        let md = mem.add(m);
        manifests.push((md.clone(), len));
        children.push(json!({
            "mediaType": OCI_MANIFEST, "digest": md.as_str(), "size": len,
            "platform": {"os": "linux", "architecture": arch}
        }));
    }
    let filtered = Digest::sha256_of(b"the s390x manifest, never fetched");
    children.push(json!({
        "mediaType": OCI_MANIFEST, "digest": filtered.as_str(), "size": 33,
        "platform": {"os": "linux", "architecture": "s390x"}
    }));
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children,
    }))
    .unwrap();
    let index_len = index.len();
    let index = mem.add(index);

    let mut blobs = vec![PlannedBlob {
        digest: index.clone(),
        size: index_len as u64,
        media_type: Some(OCI_INDEX.into()),
    }];
    blobs.extend(manifests.iter().map(|(d, n)| PlannedBlob {
        digest: d.clone(),
        size: *n as u64,
        media_type: Some(OCI_MANIFEST.into()),
    }));
    blobs.extend(content.iter().map(|(d, n)| PlannedBlob {
        digest: d.clone(),
        size: *n as u64,
        media_type: None,
    }));
    let r = |tag: &str, d: &Digest, mt: &str, rule: Option<&str>| BundleRef {
        upstream: "dockerhub".into(),
        repository: "library/demo".into(),
        tag: tag.into(),
        digest: d.clone(),
        media_type: mt.into(),
        rule: rule.map(str::to_owned),
    };
    let plan = Plan {
        refs: vec![
            r("1.0", &index, OCI_INDEX, Some("base")),
            r("1.0-amd64", &manifests[0].0, OCI_MANIFEST, None),
        ],
        blobs,
        requires: vec![],
        filtered: vec![Filtered {
            upstream: "dockerhub".into(),
            repository: "library/demo".into(),
            index: index.clone(),
            child: filtered.clone(),
            platform: "linux/s390x".into(),
            rule: Some("base".into()),
        }],
        sources: vec!["sync:base".into()],
        prune: vec!["sync:base".into()],
        against: None,
        since: vec![],
    };
    Fixture {
        mem,
        plan,
        index,
        filtered,
    }
}

fn opts(volume_size: u64, key: Option<SigningKeyFile>) -> CreateOptions {
    CreateOptions { volume_size, key }
}

fn make(dir: &Path, f: &Fixture, o: &CreateOptions) -> Result<BundleDoc, BundleError> {
    create(dir, f.plan.clone(), &f.mem, o, &mut |_| {})
}

fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    r.read_to_end(&mut v).unwrap();
    v
}

/// Every volume read on its own by the `tar` crate: entry paths and sizes.
fn tar_entries(path: &Path) -> Vec<(String, u64)> {
    let mut a = tar::Archive::new(std::fs::File::open(path).unwrap());
    a.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                e.header().size().unwrap(),
            )
        })
        .collect()
}

struct Keys {
    _dir: tempfile::TempDir,
    key: std::path::PathBuf,
    public: PublicKey,
}

fn keys(name: &str) -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let (key, public, _) = keygen(dir.path(), name).unwrap();
    let public = load_public_key(&public).unwrap();
    Keys {
        _dir: dir,
        key,
        public,
    }
}

#[test]
fn round_trip_create_verify_extract() {
    let f = fixture(&[100_000, 3_000, 0]);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bundle");
    let k = keys("conn");
    let mut events = (0, 0);
    let doc = create(
        &out,
        f.plan.clone(),
        &f.mem,
        &opts(8 * MIB, Some(load_signing_key(&k.key).unwrap())),
        &mut |p| match p {
            Progress::Copied { bytes } => events.0 = bytes,
            Progress::Volume(_) => events.1 += 1,
            Progress::Started { .. } => {}
        },
    )
    .unwrap();
    assert_eq!(events, (doc.blob_bytes(), 1));
    assert!(
        doc.sequence >= 1_700_000_000,
        "a signed bundle's sequence follows the clock"
    );
    assert_eq!(doc.blobs.len(), f.mem.blobs.len());
    assert_eq!(doc.volumes.len(), 1);

    // Content first, then manifests, the index last.
    let kinds: Vec<Option<&str>> = doc.blobs.iter().map(|b| b.media_type.as_deref()).collect();
    let first_manifest = kinds.iter().position(|k| k.is_some()).unwrap();
    assert!(kinds[first_manifest..].iter().all(|k| k.is_some()));
    assert_eq!(doc.blobs.last().unwrap().digest, f.index);

    let back = verify(&out, std::slice::from_ref(&k.public), true).unwrap();
    assert_eq!(back, doc);
    assert_eq!(
        serde_json::from_slice::<BundleDoc>(&std::fs::read(out.join(DOC_FILE)).unwrap()).unwrap(),
        doc
    );

    for b in &doc.blobs {
        assert_eq!(read_all(blob_reader(&out, b)), f.mem.blobs[&b.digest]);
    }

    // A volume is a tar on its own: the layout files, then whole blobs.
    let entries = tar_entries(&out.join("volume-0001.tar"));
    assert_eq!(entries[0].0, "oci-layout");
    assert_eq!(entries[1].0, "index.json");
    assert_eq!(entries.len(), 2 + doc.blobs.len());

    let layout = tmp.path().join("layout");
    extract(&out, &layout, std::slice::from_ref(&k.public), true).unwrap();
    for (d, bytes) in &f.mem.blobs {
        let got = std::fs::read(layout.join("blobs/sha256").join(d.hex())).unwrap();
        assert_eq!(&got, bytes, "{d}");
    }
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(
        names,
        [
            "dockerhub/library/demo:1.0",
            "dockerhub/library/demo:1.0-amd64"
        ]
    );
    assert_eq!(
        std::fs::read(layout.join("oci-layout")).unwrap(),
        br#"{"imageLayoutVersion":"1.0.0"}"#
    );
    // Untarring volume 1 gives the same index.json as extract wrote.
    let mut a = tar::Archive::new(std::fs::File::open(out.join("volume-0001.tar")).unwrap());
    let untarred = tmp.path().join("untarred");
    a.unpack(&untarred).unwrap();
    assert_eq!(
        std::fs::read(untarred.join("index.json")).unwrap(),
        std::fs::read(layout.join("index.json")).unwrap()
    );
    // The filtered child is nowhere, and needs not be.
    assert!(!layout.join("blobs/sha256").join(f.filtered.hex()).exists());
}

#[test]
fn no_volume_exceeds_the_size_and_a_big_blob_round_trips_in_parts() {
    // Per image: 300 KiB layers and one of 2.5 volumes.
    let f = fixture(&[300 << 10, 300 << 10, (5 * MIB / 2) as usize, 300 << 10]);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("b");
    let doc = make(&out, &f, &opts(MIB, None)).unwrap();
    assert!(doc.volumes.len() >= 7, "{}", doc.volumes.len());
    for v in &doc.volumes {
        let len = std::fs::metadata(out.join(&v.file)).unwrap().len();
        assert_eq!(len, v.size);
        assert!(len <= MIB, "{} is {len} bytes", v.file);
        // Each volume stands alone, with whole entries.
        let entries = tar_entries(&out.join(&v.file));
        assert!(!entries.is_empty());
        for (path, size) in entries {
            if let Some(p) = doc.blobs.iter().flat_map(|b| &b.parts).find(|p| {
                p.path == path
                    && p.volume as usize == doc.volumes.iter().position(|x| x == v).unwrap() + 1
            }) {
                assert_eq!(p.size, size);
            }
        }
    }
    let split: Vec<&BundleBlob> = doc.blobs.iter().filter(|b| b.parts.len() > 1).collect();
    assert_eq!(split.len(), 2, "one big layer per platform");
    for b in split {
        assert!(b.parts.len() >= 3);
        let bytes = &f.mem.blobs[&b.digest];
        let mut at = 0usize;
        for (i, p) in b.parts.iter().enumerate() {
            assert_eq!(
                p.path,
                format!("blobs/sha256/{}.part-{:04}", b.digest.hex(), i + 1)
            );
            let slice = &bytes[at..at + p.size as usize];
            assert_eq!(p.sha256, Digest::sha256_of(slice).hex());
            at += p.size as usize;
        }
        assert_eq!(at, bytes.len());
        assert_eq!(&read_all(blob_reader(&out, b)), bytes);
    }
    verify(&out, &[], false).unwrap();
    let layout = tmp.path().join("layout");
    extract(&out, &layout, &[], false).unwrap();
    for (d, bytes) in &f.mem.blobs {
        assert_eq!(
            &std::fs::read(layout.join("blobs/sha256").join(d.hex())).unwrap(),
            bytes
        );
    }
}

/// A signed bundle of several volumes, copied fresh for each kind of damage.
struct Damaged {
    _tmp: tempfile::TempDir,
    good: std::path::PathBuf,
    keys: Keys,
    n: std::cell::Cell<u32>,
}

impl Damaged {
    fn new() -> Damaged {
        let f = fixture(&[400 << 10, 400 << 10, 400 << 10]);
        let tmp = tempfile::tempdir().unwrap();
        let good = tmp.path().join("good");
        let keys = keys("conn");
        let doc = make(
            &good,
            &f,
            &opts(MIB, Some(load_signing_key(&keys.key).unwrap())),
        )
        .unwrap();
        assert!(doc.volumes.len() >= 3);
        Damaged {
            _tmp: tmp,
            good,
            keys,
            n: Default::default(),
        }
    }

    /// A copy of the good bundle, damaged by `f`, verified with the key
    /// trusted and required: the error's text.
    fn refused(&self, f: impl FnOnce(&Path)) -> String {
        self.n.set(self.n.get() + 1);
        let dir = self.good.with_file_name(format!("copy{}", self.n.get()));
        std::fs::create_dir(&dir).unwrap();
        for e in std::fs::read_dir(&self.good).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        verify(&dir, std::slice::from_ref(&self.keys.public), true).unwrap();
        f(&dir);
        let e = verify(&dir, std::slice::from_ref(&self.keys.public), true)
            .unwrap_err()
            .to_string();
        // extract refuses too, before writing any blob.
        let out = dir.with_extension("out");
        let x = extract(&dir, &out, std::slice::from_ref(&self.keys.public), true);
        assert!(
            x.is_err(),
            "extract accepted damage that verify refused: {e}"
        );
        e
    }
}

fn flip(path: &Path, at: u64) {
    let mut b = std::fs::read(path).unwrap();
    b[at as usize] ^= 0x01;
    std::fs::write(path, b).unwrap();
}

fn edit_doc(dir: &Path, f: impl FnOnce(&mut BundleDoc)) {
    let p = dir.join(DOC_FILE);
    let mut doc: BundleDoc = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut doc);
    std::fs::write(&p, doc.to_file_bytes()).unwrap();
}

#[test]
fn damage_is_refused_naming_the_file() {
    let d = Damaged::new();
    let doc: BundleDoc =
        serde_json::from_slice(&std::fs::read(d.good.join(DOC_FILE)).unwrap()).unwrap();
    let in_v2 = doc
        .blobs
        .iter()
        .flat_map(|b| &b.parts)
        .find(|p| p.volume == 2)
        .unwrap();

    let e = d.refused(|dir| flip(&dir.join("volume-0002.tar"), in_v2.offset + 7));
    assert!(
        e.starts_with("volume-0002.tar: sha256 mismatch (expected "),
        "{e}"
    );

    // A flipped byte in a tar header: the volume's checksum still names it.
    let e = d.refused(|dir| flip(&dir.join("volume-0002.tar"), in_v2.offset - 512 + 3));
    assert!(e.starts_with("volume-0002.tar: sha256 mismatch"), "{e}");

    let e = d.refused(|dir| {
        let p = dir.join("volume-0002.tar");
        let len = std::fs::metadata(&p).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(len - 1000)
            .unwrap();
    });
    assert!(e.starts_with("volume-0002.tar: size "), "{e}");
    assert!(e.contains("truncated"), "{e}");

    let e = d.refused(|dir| std::fs::remove_file(dir.join("volume-0003.tar")).unwrap());
    assert!(e.starts_with("volume-0003.tar: missing"), "{e}");

    let e = d.refused(|dir| std::fs::write(dir.join("notes.txt"), b"hi").unwrap());
    assert!(e.starts_with("notes.txt: not part of the bundle"), "{e}");

    let e = d.refused(|dir| std::fs::create_dir(dir.join("blobs")).unwrap());
    assert!(e.starts_with("blobs: not part of the bundle"), "{e}");

    // Any change to the signed document, here one a rollback would make.
    let e = d.refused(|dir| edit_doc(dir, |doc| doc.sequence = 1000));
    assert!(e.starts_with("bundle.json: bad signature"), "{e}");

    let e = d.refused(|dir| {
        edit_doc(dir, |doc| {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD;
            let s = doc.signature.as_mut().unwrap();
            let mut sig = b64.decode(&s.ed25519).unwrap();
            sig[10] ^= 1;
            s.ed25519 = b64.encode(sig);
        })
    });
    assert!(e.starts_with("bundle.json: bad signature"), "{e}");

    let e = d.refused(|dir| {
        edit_doc(dir, |doc| {
            doc.signature = None;
            doc.key_id = None;
        })
    });
    assert!(
        e.starts_with("bundle.json: not signed, and a signature is required"),
        "{e}"
    );

    // Signed by another key (re-signed after an edit, as a forger would).
    let other = keys("other");
    let e = d.refused(|dir| {
        let sk = load_signing_key(&other.key).unwrap();
        edit_doc(dir, |doc| {
            doc.key_id = Some(sk.key_id().into());
            doc.signature = Some(Signature {
                key_id: sk.key_id().into(),
                ed25519: sk.sign(&doc.signed_bytes()),
            });
        })
    });
    assert!(
        e.starts_with(&format!(
            "bundle.json: signed by key {}, which is not among the trusted keys",
            other.public.key_id()
        )),
        "{e}"
    );

    let e = d.refused(|dir| std::fs::remove_file(dir.join(DOC_FILE)).unwrap());
    assert!(e.starts_with("bundle.json"), "{e}");
}

#[test]
fn an_unsigned_bundle_verifies_when_no_signature_is_required() {
    let f = fixture(&[1000]);
    let tmp = tempfile::tempdir().unwrap();
    let doc = make(tmp.path(), &f, &opts(MIB, None)).unwrap();
    assert_eq!((doc.sequence, doc.key_id.as_deref()), (0, None));
    verify(tmp.path(), &[], false).unwrap();
    let k = keys("k");
    let e = verify(tmp.path(), &[k.public], true)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("bundle.json: not signed"), "{e}");
}

#[test]
fn a_wrong_size_source_blob_fails_create_and_leaves_nothing() {
    let layer_sizes = [5000usize, (3 * MIB / 2) as usize];
    for (which, delta) in [(0usize, -1i64), (0, 1), (1, -100), (1, 1)] {
        let mut f = fixture(&layer_sizes);
        let b = f
            .plan
            .blobs
            .iter()
            .find(|b| b.media_type.is_none() && b.size == layer_sizes[which] as u64)
            .unwrap()
            .clone();
        let mut bytes = f.mem.blobs[&b.digest].clone();
        if delta < 0 {
            bytes.truncate(bytes.len() - (-delta) as usize);
        } else {
            bytes.push(0);
        }
        f.mem.lie.insert(b.digest.clone(), bytes);
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("b");
        let e = make(&out, &f, &opts(MIB, None)).unwrap_err();
        let text = e.to_string();
        assert!(text.contains(b.digest.as_str()), "{text}");
        if delta < 0 {
            let want = b.size - (-delta) as u64;
            assert!(
                matches!(e, BundleError::SourceShort { got, .. } if got == want),
                "{text}"
            );
        } else {
            assert!(matches!(e, BundleError::SourceLong { .. }), "{text}");
        }
        assert!(!out.exists(), "a failed create removes what it wrote");
    }
}

#[test]
fn sequence_numbers_increase_per_key() {
    let f = fixture(&[1000]);
    let tmp = tempfile::tempdir().unwrap();
    let k = keys("conn");
    let mut seqs = Vec::new();
    for i in 0..3 {
        let doc = make(
            &tmp.path().join(i.to_string()),
            &f,
            &opts(MIB, Some(load_signing_key(&k.key).unwrap())),
        )
        .unwrap();
        seqs.push(doc.sequence);
    }
    assert!(seqs[0] >= 1_700_000_000, "{seqs:?}");
    assert_eq!(seqs, [seqs[0], seqs[0] + 1, seqs[0] + 2]);
}

#[test]
fn an_incomplete_plan_is_refused_before_anything_is_written() {
    let f = fixture(&[1000, 2000]);
    let layer = f
        .plan
        .blobs
        .iter()
        .find(|b| b.media_type.is_none())
        .unwrap()
        .digest
        .clone();
    let tmp = tempfile::tempdir().unwrap();

    let mut plan = f.plan.clone();
    plan.blobs.retain(|b| b.digest != layer);
    let e = create(
        &tmp.path().join("a"),
        plan.clone(),
        &f.mem,
        &opts(MIB, None),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(&format!(
            "refers to {layer}, which is neither carried nor required"
        )),
        "{e}"
    );
    assert!(!tmp.path().join("a").exists());

    // The site holds it: required, and the bundle verifies.
    plan.requires.push(layer.clone());
    let doc = create(
        &tmp.path().join("b"),
        plan,
        &f.mem,
        &opts(MIB, None),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(doc.requires, [layer]);
    verify(&tmp.path().join("b"), &[], false).unwrap();

    // An index child neither carried, required nor filtered.
    let mut plan = f.plan.clone();
    plan.filtered.clear();
    let e = create(
        &tmp.path().join("c"),
        plan,
        &f.mem,
        &opts(MIB, None),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(&format!("lists {}, which is neither", f.filtered)),
        "{e}"
    );

    // A ref to nothing.
    let mut plan = f.plan.clone();
    plan.refs[0].digest = Digest::sha256_of(b"nothing");
    let e = create(
        &tmp.path().join("d"),
        plan,
        &f.mem,
        &opts(MIB, None),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("ref dockerhub/library/demo:1.0 points at"),
        "{e}"
    );
}

#[test]
fn a_forged_incomplete_document_is_refused_by_verify() {
    // Signature checks pass when no key is required; completeness does not.
    let f = fixture(&[1000]);
    let tmp = tempfile::tempdir().unwrap();
    make(tmp.path(), &f, &opts(MIB, None)).unwrap();
    edit_doc(tmp.path(), |doc| doc.filtered.clear());
    let e = verify(tmp.path(), &[], false).unwrap_err().to_string();
    assert!(e.starts_with("bundle.json: incomplete: index"), "{e}");
}

#[test]
fn create_refuses_small_volumes_and_used_directories() {
    let f = fixture(&[1000]);
    let tmp = tempfile::tempdir().unwrap();
    let e = make(&tmp.path().join("a"), &f, &opts(MIB - 1, None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("below the minimum"), "{e}");
    std::fs::write(tmp.path().join("x"), b"").unwrap();
    let e = make(tmp.path(), &f, &opts(MIB, None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not empty"), "{e}");
}

/// `edit_doc`, then signed again with `key`: a forger holding a trusted key,
/// so only the structure check stands in the way.
fn edit_signed(dir: &Path, key: &Path, f: impl FnOnce(&mut BundleDoc)) {
    let sk = load_signing_key(key).unwrap();
    edit_doc(dir, |doc| {
        f(doc);
        doc.signature = Some(Signature {
            key_id: sk.key_id().into(),
            ed25519: sk.sign(&doc.signed_bytes()),
        });
    })
}

#[test]
fn a_ref_rule_round_trips_and_is_signed() {
    let f = fixture(&[1000]);
    let tmp = tempfile::tempdir().unwrap();
    let k = keys("conn");
    let sk = load_signing_key(&k.key).unwrap();
    let doc = make(tmp.path(), &f, &opts(MIB, Some(sk))).unwrap();
    let trusted = std::slice::from_ref(&k.public);
    let back = verify(tmp.path(), trusted, true).unwrap();
    let rules: Vec<Option<&str>> = back.refs.iter().map(|r| r.rule.as_deref()).collect();
    assert_eq!(rules, [Some("base"), None]);
    assert_eq!(back, doc);

    // The rule is signed: changing, adding or dropping one breaks the
    // signature.
    let p = tmp.path().join(DOC_FILE);
    let good = std::fs::read_to_string(&p).unwrap();
    assert_eq!(
        good.matches("\"rule\": \"base\"").count(),
        2,
        "ref and filtered"
    );
    for edit in [
        |d: &mut BundleDoc| d.refs[0].rule = Some("other".into()),
        |d: &mut BundleDoc| d.refs[0].rule = None,
        |d: &mut BundleDoc| d.refs[1].rule = Some("base".into()),
    ] {
        edit_doc(tmp.path(), edit);
        let e = verify(tmp.path(), trusted, true).unwrap_err().to_string();
        assert!(e.starts_with("bundle.json: bad signature"), "{e}");
        std::fs::write(&p, &good).unwrap();
    }
    verify(tmp.path(), trusted, true).unwrap();
}

#[test]
fn bad_rule_and_platform_strings_are_refused() {
    let d = Damaged::new();
    let key = d.keys.key.clone();
    type Edit = fn(&mut BundleDoc);
    let cases: [(&str, Edit); 6] = [
        ("rule name", |doc| doc.refs[0].rule = Some("../../x".into())),
        ("rule name", |doc| doc.refs[0].rule = Some(String::new())),
        ("rule name", |doc| doc.refs[1].rule = Some("r".repeat(129))),
        ("platform", |doc| {
            doc.filtered[0].platform = "Linux/AMD64".into()
        }),
        ("platform", |doc| {
            doc.filtered[0].platform = format!("linux/{}", "a".repeat(200))
        }),
        ("rule name", |doc| {
            doc.filtered[0].rule = Some("a\nb".into())
        }),
    ];
    for (what, edit) in cases {
        let e = d.refused(|dir| edit_signed(dir, &key, edit));
        assert!(e.starts_with("bundle.json: "), "{e}");
        assert!(e.contains(what), "{what}: {e}");
    }
    // The words create writes for a child without a platform pass.
    for word in ["attestation", "unknown"] {
        let dir = d.good.with_file_name(word);
        std::fs::create_dir(&dir).unwrap();
        for e in std::fs::read_dir(&d.good).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        edit_signed(&dir, &key, |doc| doc.filtered[0].platform = word.into());
        verify(&dir, std::slice::from_ref(&d.keys.public), true).unwrap();
    }
}

/// Runs `verify` on another thread: a hostile `bundle.json` must be refused
/// promptly, not hang the test.
fn verify_within_seconds(dir: &Path) -> String {
    let dir = dir.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(verify(&dir, &[], false).map(|_| ()));
    });
    let got = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("verify hung on bundle.json");
    got.unwrap_err().to_string()
}

#[test]
fn a_bundle_json_that_is_no_regular_file_is_refused() {
    let f = fixture(&[1000]);
    let tmp = tempfile::tempdir().unwrap();
    make(tmp.path(), &f, &opts(MIB, None)).unwrap();
    let p = tmp.path().join(DOC_FILE);
    let good = std::fs::read(&p).unwrap();

    std::fs::remove_file(&p).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &p).unwrap();
    let e = verify_within_seconds(tmp.path());
    assert!(e.starts_with("bundle.json: not a regular file"), "{e}");

    // A link to the good document itself is refused just the same.
    let real = tmp.path().with_extension("json");
    std::fs::write(&real, &good).unwrap();
    std::fs::remove_file(&p).unwrap();
    std::os::unix::fs::symlink(&real, &p).unwrap();
    let e = verify_within_seconds(tmp.path());
    assert!(e.starts_with("bundle.json: not a regular file"), "{e}");

    // A FIFO nobody writes to: opening it for reading would wait forever.
    std::fs::remove_file(&p).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&p)
        .status()
        .unwrap();
    assert!(made.success());
    let e = verify_within_seconds(tmp.path());
    assert!(e.starts_with("bundle.json: not a regular file"), "{e}");

    std::fs::remove_file(&p).unwrap();
    std::fs::write(&p, &good).unwrap();
    verify(tmp.path(), &[], false).unwrap();
}

#[test]
fn a_65_mib_bundle_json_is_refused() {
    let f = fixture(&[1000]);
    let tmp = tempfile::tempdir().unwrap();
    make(tmp.path(), &f, &opts(MIB, None)).unwrap();
    // The valid document, then whitespace: only its size is wrong.
    let p = tmp.path().join(DOC_FILE);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes.resize(65 << 20, b' ');
    std::fs::write(&p, &bytes).unwrap();
    let e = verify(tmp.path(), &[], false).unwrap_err().to_string();
    assert!(e.starts_with("bundle.json: larger than 64 MiB"), "{e}");
    // At the limit it still reads.
    bytes.truncate(64 << 20);
    std::fs::write(&p, &bytes).unwrap();
    verify(tmp.path(), &[], false).unwrap();
}

#[test]
fn a_manifest_split_across_volumes_verifies_and_extracts() {
    // A manifest of about 1.4 MiB (its layers required, not carried) in
    // volumes of 1 MiB: split, so verify parses it from joined parts.
    let mut mem = Mem::default();
    let layers: Vec<Digest> = (0..9000u32)
        .map(|i| Digest::sha256_of(&i.to_le_bytes()))
        .collect();
    let config_bytes = br#"{"architecture":"amd64","os":"linux"}"#;
    let config = mem.add(config_bytes.to_vec());
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc("application/vnd.oci.image.config.v1+json", &config, config_bytes.len()),
        "layers": layers.iter().map(|d| desc("application/vnd.oci.image.layer.v1.tar+gzip", d, 1)).collect::<Vec<_>>(),
    }))
    .unwrap();
    assert!(m.len() as u64 > MIB && m.len() < 4 << 20);
    let len = m.len() as u64;
    let md = mem.add(m);
    let plan = Plan {
        refs: vec![BundleRef {
            upstream: "dockerhub".into(),
            repository: "library/wide".into(),
            tag: "1".into(),
            digest: md.clone(),
            media_type: OCI_MANIFEST.into(),
            rule: None,
        }],
        blobs: vec![
            PlannedBlob {
                digest: md.clone(),
                size: len,
                media_type: Some(OCI_MANIFEST.into()),
            },
            PlannedBlob {
                digest: config,
                size: config_bytes.len() as u64,
                media_type: None,
            },
        ],
        requires: layers,
        ..Plan::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("b");
    let doc = create(&out, plan, &mem, &opts(MIB, None), &mut |_| {}).unwrap();
    assert!(doc.blob(&md).unwrap().parts.len() >= 2);
    verify(&out, &[], false).unwrap();
    extract(&out, &tmp.path().join("layout"), &[], false).unwrap();
}
