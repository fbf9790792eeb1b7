//! Verifying a bundle without importing it, in the order that trusts least:
//!
//! 1. `bundle.json` parses (unknown fields refused) and its signature checks
//!    against a trusted key (or, when none is required, it is unsigned);
//! 2. the document is consistent (names, paths, offsets, part sizes);
//! 3. the directory holds exactly `bundle.json` and the listed volumes, each
//!    of the listed size;
//! 4. each volume is read once, front to back: its sha256, the ustar header
//!    before every part (path and size), every part's sha256, every blob's
//!    digest (split blobs: over the joined parts), and the layout files in
//!    volume 1 are the ones `bundle.json` implies;
//! 5. completeness: every carried manifest parses and whatever it refers to is
//!    carried (before it), required, or (index children) filtered; every ref
//!    points at a carried manifest or a required digest.
//!
//! Every error names the file it is about.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::registry::{Algorithm, Digest, Hasher, RepoName, Tag, MAX_MANIFEST_BYTES};

use super::doc::{BundleDoc, BundleRef};
use super::hashpipe::HashPipe;
use super::keys::PublicKey;
use super::layout::{self, entry_len, padded, BLOCK, END_OF_ARCHIVE};
use super::{BundleError, DOC_FILE, FORMAT};

/// Verifies the bundle in `dir` and returns its document. With
/// `require_signature`, an unsigned bundle is refused; a signed one must be
/// signed by one of `trusted` whenever `trusted` is not empty (with no
/// trusted keys and no requirement, a signature cannot be checked and is
/// not).
pub fn verify(
    dir: &Path,
    trusted: &[PublicKey],
    require_signature: bool,
) -> Result<BundleDoc, BundleError> {
    let doc = read_doc(dir, trusted, require_signature)?;
    check_files(dir, &doc)?;
    let manifests = check_volumes(dir, &doc)?;
    let mut parsed = HashMap::new();
    for (i, bytes) in manifests {
        let b = &doc.blobs[i];
        let d = parse_manifest(&bytes).map_err(|why| BundleError::Incomplete {
            file: format!(
                "{} {}",
                layout::volume_file(b.parts[0].volume),
                b.parts[0].path
            ),
            why: format!(
                "manifest {} ({}) does not parse: {why}",
                b.digest,
                b.media_type.as_deref().unwrap_or_default()
            ),
        })?;
        parsed.insert(b.digest.clone(), d);
    }
    let order: Vec<(&Digest, bool)> = doc
        .blobs
        .iter()
        .map(|b| (&b.digest, b.media_type.is_some()))
        .collect();
    check_complete(&order, &parsed, &doc.refs, &doc.requires, &doc.filtered).map_err(|why| {
        BundleError::Incomplete {
            file: DOC_FILE.into(),
            why,
        }
    })?;
    Ok(doc)
}

/// What an importer checks before it copies anything, without reading the
/// volumes (it verifies each blob against its digest as it writes it):
/// the document, its signature, its consistency, and that the directory
/// holds exactly the listed volumes at their listed sizes.
pub fn open_checked(
    dir: &Path,
    trusted: &[PublicKey],
    require_signature: bool,
) -> Result<BundleDoc, BundleError> {
    let doc = read_doc(dir, trusted, require_signature)?;
    check_files(dir, &doc)?;
    Ok(doc)
}

/// Steps 1 and 2: the document, its signature and its consistency. Reads
/// nothing but `bundle.json`.
pub(crate) fn read_doc(
    dir: &Path,
    trusted: &[PublicKey],
    require_signature: bool,
) -> Result<BundleDoc, BundleError> {
    let path = dir.join(DOC_FILE);
    let invalid = |why: String| BundleError::Invalid {
        file: DOC_FILE.into(),
        why,
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BundleError::MissingFile {
                file: format!("{DOC_FILE} (an incomplete bundle, or not a bundle directory)"),
            })
        }
        Err(e) => return Err(BundleError::io(&path)(e)),
    };
    let doc: BundleDoc = serde_json::from_slice(&bytes)
        .map_err(|e| invalid(format!("not a wharf bundle document: {e}")))?;
    if doc.format != FORMAT {
        return Err(invalid(format!(
            "format {:?}, this wharf reads {FORMAT:?}",
            doc.format
        )));
    }
    check_signature(&doc, trusted, require_signature)?;
    check_structure(&doc).map_err(invalid)?;
    Ok(doc)
}

fn check_signature(
    doc: &BundleDoc,
    trusted: &[PublicKey],
    require_signature: bool,
) -> Result<(), BundleError> {
    let file = || DOC_FILE.to_owned();
    let Some(sig) = &doc.signature else {
        if require_signature {
            return Err(BundleError::Unsigned { file: file() });
        }
        if let Some(k) = &doc.key_id {
            return Err(BundleError::Invalid {
                file: file(),
                why: format!("names key {k} but carries no signature"),
            });
        }
        return Ok(());
    };
    if doc.key_id.as_deref() != Some(sig.key_id.as_str()) {
        return Err(BundleError::Invalid {
            file: file(),
            why: format!(
                "signature by key {} but key_id is {:?}",
                sig.key_id, doc.key_id
            ),
        });
    }
    match trusted.iter().find(|k| k.key_id() == sig.key_id) {
        Some(k) if k.verify(&doc.signed_bytes(), &sig.ed25519) => Ok(()),
        Some(_) => Err(BundleError::BadSignature {
            file: file(),
            key_id: sig.key_id.clone(),
        }),
        None if require_signature || !trusted.is_empty() => Err(BundleError::UntrustedKey {
            file: file(),
            key_id: sig.key_id.clone(),
        }),
        None => Ok(()),
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_structure(doc: &BundleDoc) -> Result<(), String> {
    if !is_hex(&doc.id, 32) {
        return Err(format!("id {:?} is not 32 lowercase hex digits", doc.id));
    }
    time::OffsetDateTime::parse(&doc.created, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("created {:?}: {e}", doc.created))?;
    if doc.volumes.is_empty() {
        return Err("lists no volumes".into());
    }
    for (i, v) in doc.volumes.iter().enumerate() {
        let want = layout::volume_file(i as u32 + 1);
        if v.file != want {
            return Err(format!(
                "volume {} is named {:?}, expected {want}",
                i + 1,
                v.file
            ));
        }
        if !is_hex(&v.sha256, 64) {
            return Err(format!("{}: sha256 is not 64 lowercase hex digits", v.file));
        }
    }
    let mut names = HashSet::new();
    for r in &doc.refs {
        check_ref(r)?;
        if !names.insert(r.name()) {
            return Err(format!("ref {} is listed twice", r.name()));
        }
    }
    for f in &doc.filtered {
        check_upstream(&f.upstream)?;
        f.repository
            .parse::<RepoName>()
            .map_err(|e| format!("filtered {}: {e}", f.child))?;
    }
    let mut seen = HashSet::new();
    for b in &doc.blobs {
        let d = &b.digest;
        if d.algorithm() != Algorithm::Sha256 {
            return Err(format!("blob {d}: bundles carry sha256 blobs only"));
        }
        if !seen.insert(d) {
            return Err(format!("blob {d} is listed twice"));
        }
        if b.parts.is_empty() {
            return Err(format!("blob {d} has no parts"));
        }
        let sum: u64 = b.parts.iter().map(|p| p.size).sum();
        if sum != b.size {
            return Err(format!(
                "blob {d}: parts add up to {sum} bytes, the blob has {}",
                b.size
            ));
        }
        let split = b.parts.len() > 1;
        let mut last_volume = 0;
        for (i, p) in b.parts.iter().enumerate() {
            let want = if split {
                layout::part_path(d, i + 1)
            } else {
                layout::blob_path(d)
            };
            if p.path != want {
                return Err(format!(
                    "blob {d}: part {} is at {:?}, expected {want}",
                    i + 1,
                    p.path
                ));
            }
            if p.volume <= last_volume {
                return Err(format!("blob {d}: parts are not in increasing volumes"));
            }
            last_volume = p.volume;
            let Some(v) = doc.volumes.get(p.volume as usize - 1) else {
                return Err(format!(
                    "blob {d}: part in volume {}, which is not listed",
                    p.volume
                ));
            };
            let fits = p.offset >= BLOCK
                && p.offset % BLOCK == 0
                && p.offset
                    .checked_add(padded(p.size) + END_OF_ARCHIVE)
                    .is_some_and(|end| end <= v.size);
            if !fits {
                return Err(format!(
                    "blob {d}: {} at offset {} with {} bytes does not fit in {} ({} bytes)",
                    p.path, p.offset, p.size, v.file, v.size
                ));
            }
            if !is_hex(&p.sha256, 64) {
                return Err(format!(
                    "blob {d}: {}: sha256 is not 64 lowercase hex digits",
                    p.path
                ));
            }
            if !split && p.sha256 != d.hex() {
                return Err(format!(
                    "blob {d}: sha256 {} of a whole blob is not its digest",
                    p.sha256
                ));
            }
        }
    }
    Ok(())
}

fn check_upstream(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "upstream name {name:?}: use letters, digits, '-' and '_'"
        ))
    }
}

/// A ref's names must be valid protocol words: the importer puts them in
/// paths and the layout in `ref.name`.
pub(crate) fn check_ref(r: &BundleRef) -> Result<(), String> {
    check_upstream(&r.upstream).map_err(|e| format!("ref {}: {e}", r.name()))?;
    r.repository
        .parse::<RepoName>()
        .map_err(|e| format!("ref {}: {e}", r.name()))?;
    r.tag
        .parse::<Tag>()
        .map_err(|e| format!("ref {}: {e}", r.name()))?;
    Ok(())
}

/// Step 3: the directory holds exactly the document and the listed volumes,
/// each of its listed size.
pub(crate) fn check_files(dir: &Path, doc: &BundleDoc) -> Result<(), BundleError> {
    let listed: HashMap<&str, u64> = doc
        .volumes
        .iter()
        .map(|v| (v.file.as_str(), v.size))
        .collect();
    let mut found = HashSet::new();
    let mut extra = Vec::new();
    for e in std::fs::read_dir(dir).map_err(BundleError::io(dir))? {
        let e = e.map_err(BundleError::io(dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        // Follows symlinks: volumes gathered from several media by links are
        // fine; whatever they point at is hashed like a file.
        let is_file = std::fs::metadata(e.path()).is_ok_and(|m| m.is_file());
        if name == DOC_FILE && is_file {
            continue;
        }
        if is_file && listed.contains_key(name.as_str()) {
            found.insert(name);
            continue;
        }
        extra.push(name);
    }
    for v in &doc.volumes {
        if !found.contains(&v.file) {
            return Err(BundleError::MissingFile {
                file: v.file.clone(),
            });
        }
    }
    extra.sort();
    if let Some(name) = extra.into_iter().next() {
        return Err(BundleError::ExtraFile { file: name });
    }
    for v in &doc.volumes {
        let path = dir.join(&v.file);
        let got = std::fs::metadata(&path)
            .map_err(BundleError::io(&path))?
            .len();
        if got != v.size {
            return Err(BundleError::SizeMismatch {
                file: v.file.clone(),
                expected: v.size,
                got,
            });
        }
    }
    Ok(())
}

/// What verify expects at an offset of a volume.
enum Expect {
    Layout(Vec<u8>),
    Part { blob: usize, part: usize },
}

struct Entry {
    offset: u64,
    path: String,
    size: u64,
    expect: Expect,
}

/// Step 4: reads every volume once. Returns the bytes of every carried
/// manifest, by blob index.
fn check_volumes(dir: &Path, doc: &BundleDoc) -> Result<Vec<(usize, Vec<u8>)>, BundleError> {
    let mut by_volume: Vec<Vec<Entry>> = doc.volumes.iter().map(|_| Vec::new()).collect();
    let mut offset = BLOCK;
    for (name, bytes) in layout::doc_layout_files(&doc.refs, &doc.blobs) {
        let size = bytes.len() as u64;
        by_volume[0].push(Entry {
            offset,
            path: name.into(),
            size,
            expect: Expect::Layout(bytes),
        });
        offset += entry_len(size);
    }
    for (i, b) in doc.blobs.iter().enumerate() {
        for (j, p) in b.parts.iter().enumerate() {
            by_volume[p.volume as usize - 1].push(Entry {
                offset: p.offset,
                path: p.path.clone(),
                size: p.size,
                expect: Expect::Part { blob: i, part: j },
            });
        }
    }
    let mut joined: HashMap<usize, Hasher> = HashMap::new();
    let mut manifests: HashMap<usize, Vec<u8>> = HashMap::new();
    let mut pipe = HashPipe::new();
    for (v, mut entries) in doc.volumes.iter().zip(by_volume) {
        entries.sort_by_key(|e| e.offset);
        let path = dir.join(&v.file);
        let file = File::open(&path).map_err(BundleError::io(&path))?;
        let mut r = Tracked {
            inner: file,
            pos: 0,
            pipe: &mut pipe,
        };
        let io = |e| BundleError::io(&path)(e);
        // The first thing wrong inside the volume; reported after the whole
        // file was hashed, unless the file's own sha256 is wrong (the cause).
        let mut first: Option<BundleError> = None;
        let bad = |why: String| BundleError::BadEntry {
            file: v.file.clone(),
            why,
        };
        for e in &entries {
            if e.offset - BLOCK < r.pos {
                first.get_or_insert_with(|| {
                    bad(format!(
                        "{} at offset {} overlaps the entry before it",
                        e.path, e.offset
                    ))
                });
                continue;
            }
            r.skip(e.offset - BLOCK).map_err(io)?;
            let mut h = [0u8; BLOCK as usize];
            r.read_exact(&mut h).map_err(io)?;
            let header = tar::Header::from_byte_slice(&h);
            let found_path = header.path_bytes().into_owned();
            let found_size = header.entry_size().unwrap_or(u64::MAX);
            if found_path != e.path.as_bytes() || found_size != e.size {
                first.get_or_insert_with(|| {
                    bad(format!(
                        "at offset {}: expected entry {} of {} bytes, found {:?} of {} bytes",
                        e.offset - BLOCK,
                        e.path,
                        e.size,
                        String::from_utf8_lossy(&found_path),
                        found_size
                    ))
                });
            }
            let mut part = Sha256::new();
            let mut blob_hasher = match e.expect {
                Expect::Part { blob, .. } if doc.blobs[blob].parts.len() > 1 => Some(
                    joined
                        .entry(blob)
                        .or_insert_with(|| Hasher::new(Algorithm::Sha256)),
                ),
                _ => None,
            };
            let mut keep: Option<Vec<u8>> = match &e.expect {
                Expect::Layout(_) => Some(Vec::new()),
                Expect::Part { blob, .. } if doc.blobs[*blob].media_type.is_some() => {
                    let size = doc.blobs[*blob].size;
                    if size > MAX_MANIFEST_BYTES as u64 {
                        first.get_or_insert_with(|| {
                            bad(format!(
                                "{}: a manifest of {size} bytes is too large",
                                e.path
                            ))
                        });
                        None
                    } else {
                        Some(manifests.remove(blob).unwrap_or_default())
                    }
                }
                _ => None,
            };
            r.data(e.size, &mut |chunk| {
                part.update(chunk);
                if let Some(h) = blob_hasher.as_deref_mut() {
                    h.update(chunk);
                }
                if let Some(k) = keep.as_mut() {
                    k.extend_from_slice(chunk);
                }
            })
            .map_err(io)?;
            let got = hex::encode(part.finalize());
            match &e.expect {
                Expect::Layout(want) => {
                    if keep.as_deref() != Some(want.as_slice()) {
                        first.get_or_insert_with(|| {
                            bad(format!("{} is not the one bundle.json describes", e.path))
                        });
                    }
                }
                Expect::Part { blob, part } => {
                    let b = &doc.blobs[*blob];
                    let want = &b.parts[*part].sha256;
                    if &got != want {
                        first.get_or_insert_with(|| BundleError::HashMismatch {
                            file: format!("{}: {}", v.file, e.path),
                            expected: want.clone(),
                            got: got.clone(),
                        });
                    }
                    if let Some(k) = keep {
                        manifests.insert(*blob, k);
                    }
                    if *part + 1 == b.parts.len() && b.parts.len() > 1 {
                        let got = joined.remove(blob).expect("hashed above").finish();
                        if got != b.digest {
                            first.get_or_insert_with(|| BundleError::HashMismatch {
                                file: format!(
                                    "{} (joined from {} parts)",
                                    layout::blob_path(&b.digest),
                                    b.parts.len()
                                ),
                                expected: b.digest.hex().into(),
                                got: got.hex().into(),
                            });
                        }
                    }
                }
            }
        }
        r.skip(u64::MAX).map_err(io)?;
        let got = r.pipe.end_volume();
        if r.pos != v.size {
            return Err(BundleError::SizeMismatch {
                file: v.file.clone(),
                expected: v.size,
                got: r.pos,
            });
        }
        if got != v.sha256 {
            return Err(BundleError::HashMismatch {
                file: v.file.clone(),
                expected: v.sha256.clone(),
                got,
            });
        }
        if let Some(e) = first {
            return Err(e);
        }
    }
    Ok(manifests.into_iter().collect())
}

/// A reader that hashes everything read (on the pipe's thread, so the
/// volume's sha256 and the parts' run side by side) and knows where it is.
struct Tracked<'p, R> {
    inner: R,
    pos: u64,
    pipe: &'p mut HashPipe,
}

impl<R: Read> Tracked<'_, R> {
    fn read_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_exact(buf)?;
        self.pipe.small(buf, false);
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// Reads up to `want` bytes (0 at the end of the file) and hands them to
    /// `f` before the volume's hash gets them.
    fn chunk(&mut self, want: u64, f: &mut dyn FnMut(&[u8])) -> std::io::Result<usize> {
        let mut buf = self.pipe.buffer();
        let want = want.min(buf.len() as u64) as usize;
        let n = loop {
            match self.inner.read(&mut buf[..want]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        f(&buf[..n]);
        self.pipe.chunk(buf, n, false);
        self.pos += n as u64;
        Ok(n)
    }

    /// Reads (and hashes) up to `to`, or to the end of the file.
    fn skip(&mut self, to: u64) -> std::io::Result<()> {
        while self.pos < to {
            if self.chunk(to - self.pos, &mut |_| {})? == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Reads an entry's `size` bytes of data, handing them to `f`.
    fn data(&mut self, size: u64, f: &mut dyn FnMut(&[u8])) -> std::io::Result<()> {
        let end = self.pos + size;
        while self.pos < end {
            if self.chunk(end - self.pos, f)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }
}

/// What a manifest refers to: an index's child manifests, and a manifest's
/// config and layers (or an artifact's blobs, or schema 1 `fsLayers`).
#[derive(Debug, Default)]
pub(crate) struct Descriptors {
    pub children: Vec<Digest>,
    pub content: Vec<Digest>,
}

impl Descriptors {
    pub fn all(&self) -> impl Iterator<Item = &Digest> {
        self.children.iter().chain(&self.content)
    }
}

#[derive(Deserialize)]
struct Desc {
    digest: String,
    /// Non-distributable ("foreign") layers name where to fetch them; no
    /// registry holds them, so no bundle can or must carry them.
    #[serde(default)]
    urls: Vec<String>,
}

#[derive(Deserialize)]
struct Schema1Layer {
    #[serde(rename = "blobSum")]
    blob_sum: String,
}

#[derive(Deserialize)]
struct AnyManifest {
    #[serde(rename = "schemaVersion")]
    _schema_version: u64,
    config: Option<Desc>,
    #[serde(default)]
    layers: Vec<Desc>,
    #[serde(default)]
    blobs: Vec<Desc>,
    #[serde(default)]
    manifests: Vec<Desc>,
    #[serde(rename = "fsLayers", default)]
    fs_layers: Vec<Schema1Layer>,
}

/// Parses a manifest strictly: unlike `registry::manifest::references`,
/// which reads what it can, a carried manifest that does not parse, or a
/// descriptor whose digest does not, is an error. `subject` is not followed
/// (it points at another image, which need not come along).
pub(crate) fn parse_manifest(bytes: &[u8]) -> Result<Descriptors, String> {
    let m: AnyManifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let digest = |s: &str| s.parse::<Digest>().map_err(|e| e.to_string());
    let children = m
        .manifests
        .iter()
        .map(|d| digest(&d.digest))
        .collect::<Result<_, _>>()?;
    let mut content = Vec::new();
    for d in m.config.iter().chain(&m.layers).chain(&m.blobs) {
        if d.urls.is_empty() {
            content.push(digest(&d.digest)?);
        }
    }
    for l in &m.fs_layers {
        let d = digest(&l.blob_sum)?;
        // Schema 1 repeats empty layers.
        if !content.contains(&d) {
            content.push(d);
        }
    }
    Ok(Descriptors { children, content })
}

/// Step 5, shared with `create` (which refuses a plan that would not
/// verify). `order` is the blobs in document order with whether each is a
/// manifest; `parsed` holds every manifest's references.
pub(crate) fn check_complete(
    order: &[(&Digest, bool)],
    parsed: &HashMap<Digest, Descriptors>,
    refs: &[BundleRef],
    requires: &[Digest],
    filtered: &[super::doc::Filtered],
) -> Result<(), String> {
    let at: HashMap<&Digest, (usize, bool)> = order
        .iter()
        .enumerate()
        .map(|(i, (d, m))| (*d, (i, *m)))
        .collect();
    let required: HashSet<&Digest> = requires.iter().collect();
    let left_out: HashSet<(&Digest, &Digest)> =
        filtered.iter().map(|f| (&f.index, &f.child)).collect();
    for (i, (d, is_manifest)) in order.iter().enumerate() {
        if !is_manifest {
            continue;
        }
        let Some(p) = parsed.get(*d) else {
            return Err(format!("manifest {d} was not read"));
        };
        for c in &p.children {
            match at.get(c) {
                Some(&(j, true)) if j < i => {}
                Some(&(_, true)) => {
                    return Err(format!("index {d} is listed before its child {c}"))
                }
                Some(&(_, false)) => {
                    return Err(format!(
                        "index {d} lists {c}, which is carried but not as a manifest"
                    ))
                }
                None if required.contains(c) || left_out.contains(&(*d, c)) => {}
                None => {
                    return Err(format!(
                        "index {d} lists {c}, which is neither carried, required nor filtered"
                    ))
                }
            }
        }
        for c in &p.content {
            match at.get(c) {
                Some(&(j, _)) if j < i => {}
                Some(_) => {
                    return Err(format!(
                        "manifest {d} is listed before {c}, which it refers to"
                    ))
                }
                None if required.contains(c) => {}
                None => {
                    return Err(format!(
                        "manifest {d} refers to {c}, which is neither carried nor required"
                    ))
                }
            }
        }
    }
    for r in refs {
        match at.get(&r.digest) {
            Some((_, true)) => {}
            Some((_, false)) => {
                return Err(format!(
                    "ref {} points at {}, which is carried but not as a manifest",
                    r.name(),
                    r.digest
                ))
            }
            None if required.contains(&r.digest) => {}
            None => {
                return Err(format!(
                    "ref {} points at {}, which is neither carried nor required",
                    r.name(),
                    r.digest
                ))
            }
        }
    }
    Ok(())
}
