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

use crate::registry::Digest;

use super::check::{self, BlobHash};
use super::doc::{BundleDoc, BundleRef, Volume};
use super::hashpipe::HashPipe;
use super::keys::PublicKey;
use super::layout::{self, entry_len, BLOCK};
use super::structure::check_structure;
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
    let doc = open_checked(dir, trusted, require_signature)?;
    let parsed = check_volumes(dir, &doc)?;
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
    let invalid = |why: String| BundleError::Invalid {
        file: DOC_FILE.into(),
        why,
    };
    let bytes = read_doc_bytes(dir)?;
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

/// The largest `bundle.json` read: a document listing a million blobs is
/// well under it.
const MAX_DOC_BYTES: u64 = 64 << 20;

/// `bundle.json`'s bytes, if it is a regular file (not a symlink, FIFO or
/// device, which could hang the read or never end) of at most
/// [`MAX_DOC_BYTES`].
fn read_doc_bytes(dir: &Path) -> Result<Vec<u8>, BundleError> {
    let path = dir.join(DOC_FILE);
    let not_regular = || {
        BundleError::Invalid {
        file: DOC_FILE.into(),
        why: "not a regular file (a symlink, a FIFO or a device); copy the bundle's own bundle.json here".into(),
    }
    };
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(not_regular()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BundleError::MissingFile {
                file: format!("{DOC_FILE} (an incomplete bundle, or not a bundle directory)"),
            })
        }
        Err(e) => return Err(BundleError::io(&path)(e)),
    }
    // The name may be swapped between the look and the open: the open
    // neither follows a link nor waits for a FIFO's writer, and what was
    // opened is checked again.
    let mut open = std::fs::OpenOptions::new();
    open.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let f = match open.open(&path) {
        Ok(f) => f,
        #[cfg(unix)]
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(not_regular()),
        Err(e) => return Err(BundleError::io(&path)(e)),
    };
    if !f.metadata().map_err(BundleError::io(&path))?.is_file() {
        return Err(not_regular());
    }
    let mut bytes = Vec::new();
    f.take(MAX_DOC_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(BundleError::io(&path))?;
    if bytes.len() as u64 > MAX_DOC_BYTES {
        return Err(BundleError::Invalid {
            file: DOC_FILE.into(),
            why: format!(
                "larger than {} MiB, which no bundle's document is",
                MAX_DOC_BYTES >> 20
            ),
        });
    }
    Ok(bytes)
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

/// Step 4: reads every volume once, front to back. Returns the references
/// of every carried manifest, parsed as its last byte was read.
fn check_volumes(dir: &Path, doc: &BundleDoc) -> Result<HashMap<Digest, Descriptors>, BundleError> {
    let mut blobs = Blobs {
        doc,
        hashes: HashMap::new(),
        pending: HashMap::new(),
        parsed: HashMap::new(),
    };
    let mut pipe = HashPipe::new();
    for (v, entries) in doc.volumes.iter().zip(entries_by_volume(doc)) {
        check_volume(dir, v, &entries, &mut blobs, &mut pipe)?;
    }
    Ok(blobs.parsed)
}

/// Every entry `bundle.json` implies, per volume, in offset order: the
/// layout files at the start of volume 1, then the blobs' parts.
fn entries_by_volume(doc: &BundleDoc) -> Vec<Vec<Entry>> {
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
    for entries in &mut by_volume {
        entries.sort_by_key(|e| e.offset);
    }
    by_volume
}

/// One volume: every entry's header and data, then the file's size and
/// sha256. The first thing wrong inside the volume is reported after the
/// whole file was hashed, unless the file's own sha256 is wrong (the cause).
fn check_volume(
    dir: &Path,
    v: &Volume,
    entries: &[Entry],
    blobs: &mut Blobs,
    pipe: &mut HashPipe,
) -> Result<(), BundleError> {
    let path = dir.join(&v.file);
    let io = |e| BundleError::io(&path)(e);
    let file = File::open(&path).map_err(io)?;
    let mut r = Tracked {
        inner: file,
        pos: 0,
        pipe,
    };
    let mut first: Option<BundleError> = None;
    for e in entries {
        check_entry(&mut r, v, e, blobs, &mut first).map_err(io)?;
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
    first.map_or(Ok(()), Err)
}

/// One entry: its header, then its data. What is wrong with them goes into
/// `first` (unless something is there already); only I/O errors return.
fn check_entry(
    r: &mut Tracked<File>,
    v: &Volume,
    e: &Entry,
    blobs: &mut Blobs,
    first: &mut Option<BundleError>,
) -> std::io::Result<()> {
    let mut note = |found: Result<(), BundleError>| {
        if let Err(x) = found {
            first.get_or_insert(x);
        }
    };
    if e.offset - BLOCK < r.pos {
        note(Err(BundleError::BadEntry {
            file: v.file.clone(),
            why: format!(
                "{} at offset {} overlaps the entry before it",
                e.path, e.offset
            ),
        }));
        return Ok(());
    }
    r.skip(e.offset - BLOCK)?;
    let mut h = [0u8; BLOCK as usize];
    r.read_exact(&mut h)?;
    note(check::entry_header(&v.file, e.offset, &h, &e.path, e.size));
    match &e.expect {
        Expect::Layout(want) => {
            let mut same = true;
            let mut at = 0;
            r.data(e.size, &mut |chunk| {
                same &= want.get(at..at + chunk.len()) == Some(chunk);
                at += chunk.len();
            })?;
            if !same {
                note(Err(BundleError::BadEntry {
                    file: v.file.clone(),
                    why: format!("{} is not the one bundle.json describes", e.path),
                }));
            }
        }
        Expect::Part { blob, part } => blobs.part(r, v, *blob, *part, &mut note)?,
    }
    Ok(())
}

/// What verify holds of the blobs between their parts: the hashes of blobs
/// being read, the bytes of manifests being read (a whole one from its
/// first byte to its last, a split one across its volumes: structure allows
/// one split blob at a time, so this is at most two manifests), and the
/// references of manifests read.
struct Blobs<'d> {
    doc: &'d BundleDoc,
    hashes: HashMap<usize, BlobHash>,
    pending: HashMap<usize, Vec<u8>>,
    parsed: HashMap<Digest, Descriptors>,
}

impl Blobs<'_> {
    /// Part `part` of blob `blob`: its data hashed (and kept, for a
    /// manifest), checked against its sha256, and after the last part the
    /// whole blob checked and a manifest parsed.
    fn part(
        &mut self,
        r: &mut Tracked<File>,
        v: &Volume,
        blob: usize,
        part: usize,
        note: &mut dyn FnMut(Result<(), BundleError>),
    ) -> std::io::Result<()> {
        let doc = self.doc;
        let b = &doc.blobs[blob];
        let p = &b.parts[part];
        let hash = self.hashes.entry(blob).or_insert_with(|| BlobHash::new(b));
        let mut keep = b
            .media_type
            .is_some()
            .then(|| self.pending.entry(blob).or_default());
        r.data(p.size, &mut |chunk| {
            hash.update(chunk);
            if let Some(k) = keep.as_mut() {
                k.extend_from_slice(chunk);
            }
        })?;
        note(hash.end_part(&v.file, p));
        if part + 1 < b.parts.len() {
            return Ok(());
        }
        let hash = self.hashes.remove(&blob).expect("inserted above");
        note(hash.end_blob(b));
        if let Some(bytes) = self.pending.remove(&blob) {
            match parse_manifest(&bytes) {
                Ok(d) => {
                    self.parsed.insert(b.digest.clone(), d);
                }
                Err(why) => note(Err(BundleError::Incomplete {
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
                })),
            }
        }
        Ok(())
    }
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
