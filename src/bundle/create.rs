//! Writing a bundle: a [`Plan`] of refs and blobs, content from a
//! [`BlobSource`], volumes of at most `volume_size` bytes, `bundle.json` last.
//!
//! Invariants:
//! - Nothing is written before the plan is known to verify: blobs sha256,
//!   no duplicates, every manifest parses and what it refers to is carried,
//!   required or filtered (the same check `verify` runs).
//! - One pass over the bytes: each volume is hashed as it is written. Whole
//!   blobs get no hash of their own (the source, the cache, verified them on
//!   the way in; `verify` re-hashes them on the other side), but their length
//!   must be exactly the planned size. Parts of split blobs are hashed, since
//!   the document names each part's sha256.
//! - `bundle.json` is written last (temp file, fsync, rename, fsync of the
//!   directory) after every volume was fsynced: a directory without it is
//!   visibly incomplete. On an error the files written so far are removed.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::registry::{Algorithm, Digest, MAX_MANIFEST_BYTES};

use super::doc::{Against, BundleBlob, BundleDoc, BundleRef, Filtered, Part, Signature, Volume};
use super::hashpipe::HashPipe;
use super::keys::{sync_dir, SigningKeyFile};
use super::layout::{self, header, padded, BLOCK, END_OF_ARCHIVE, MIN_VOLUME_SIZE};
use super::structure::{check_filtered, check_refs};
use super::verify::{check_complete, parse_manifest, Descriptors};
use super::{BundleError, DOC_FILE, FORMAT};

/// Where `create` reads blob bytes from (the cache on the connected side).
pub trait BlobSource {
    fn open(&self, d: &Digest) -> std::io::Result<Box<dyn Read + Send>>;
}

/// A blob to carry. `media_type` is set for manifests and indexes.
#[derive(Clone, Debug)]
pub struct PlannedBlob {
    pub digest: Digest,
    pub size: u64,
    pub media_type: Option<String>,
}

/// What a bundle will hold; the caller decides it (from sync rules or images,
/// minus an inventory or earlier bundles).
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub refs: Vec<BundleRef>,
    /// Any order: `create` puts content first and each manifest after what it
    /// refers to.
    pub blobs: Vec<PlannedBlob>,
    pub requires: Vec<Digest>,
    pub filtered: Vec<Filtered>,
    pub sources: Vec<String>,
    pub against: Option<Against>,
    pub since: Vec<String>,
    /// Sources (`sync:RULE`) whose refs replace what earlier bundles of the
    /// same source carried (the rule prunes).
    pub prune: Vec<String>,
}

pub struct CreateOptions {
    /// Largest volume file in bytes, tar headers and end blocks included.
    pub volume_size: u64,
    /// Signs the bundle and numbers it in this key's sequence.
    pub key: Option<SigningKeyFile>,
}

/// What `create` reports as it goes, for progress bars or JSON events.
#[derive(Debug)]
pub enum Progress<'a> {
    /// The plan checked out; this many blobs and bytes are to be written.
    Started { blobs: usize, bytes: u64 },
    /// Blob bytes written so far (all blobs).
    Copied { bytes: u64 },
    /// A volume was finished and fsynced.
    Volume(&'a Volume),
}

/// Writes the bundle into `out` (empty or absent) and returns its document.
pub fn create(
    out: &Path,
    plan: Plan,
    src: &dyn BlobSource,
    opts: &CreateOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<BundleDoc, BundleError> {
    if opts.volume_size < MIN_VOLUME_SIZE {
        return Err(BundleError::Plan(format!(
            "volume size {} bytes is below the minimum of {MIN_VOLUME_SIZE} (1 MiB)",
            opts.volume_size
        )));
    }
    let ordered = order_and_check(&plan, src)?;
    let created_dir = super::empty_dir(out)?;
    let mut written = Vec::new();
    let result = write_all(out, plan, ordered, src, opts, progress, &mut written);
    if result.is_err() {
        for f in &written {
            let _ = std::fs::remove_file(f);
        }
        if created_dir {
            let _ = std::fs::remove_dir(out);
        }
    }
    result
}

/// A blob in writing order, with the bytes of a manifest already read.
struct Ordered {
    blob: PlannedBlob,
    bytes: Option<Vec<u8>>,
}

/// Checks the plan and returns its blobs in writing order: content in the
/// plan's order, then manifests, each after the manifests it refers to.
fn order_and_check(plan: &Plan, src: &dyn BlobSource) -> Result<Vec<Ordered>, BundleError> {
    check_names(plan)?;
    let PlanBlobs {
        mut ordered,
        manifests,
        parsed,
    } = read_manifests(plan, src)?;
    ordered.extend(order_manifests(manifests, &parsed));
    let sequence: Vec<(&Digest, bool)> = ordered
        .iter()
        .map(|o| (&o.blob.digest, o.blob.media_type.is_some()))
        .collect();
    check_complete(
        &sequence,
        &parsed,
        &plan.refs,
        &plan.requires,
        &plan.filtered,
    )
    .map_err(BundleError::Plan)?;
    Ok(ordered)
}

/// What `verify` checks of the document's names, on the plan: sha256 blobs
/// planned once, valid refs (each once), valid filtered entries.
fn check_names(plan: &Plan) -> Result<(), BundleError> {
    let mut seen = HashSet::new();
    for b in &plan.blobs {
        if b.digest.algorithm() != Algorithm::Sha256 {
            return Err(BundleError::Plan(format!(
                "blob {}: bundles carry sha256 blobs only",
                b.digest
            )));
        }
        if !seen.insert(&b.digest) {
            return Err(BundleError::Plan(format!(
                "blob {} is planned twice",
                b.digest
            )));
        }
    }
    check_refs(&plan.refs).map_err(BundleError::Plan)?;
    for f in &plan.filtered {
        check_filtered(f).map_err(BundleError::Plan)?;
    }
    Ok(())
}

/// The plan's blobs split by [`read_manifests`].
struct PlanBlobs {
    /// Content, in the plan's order: the start of the writing order.
    ordered: Vec<Ordered>,
    /// Manifests with their bytes, in the plan's order.
    manifests: Vec<Ordered>,
    /// Each manifest's references.
    parsed: HashMap<Digest, Descriptors>,
}

/// Splits the plan's blobs into content and manifests, read and parsed:
/// manifests are small (at most 4 MiB, usually a few KiB), so they are read
/// now to order and check them, and written from memory later.
fn read_manifests(plan: &Plan, src: &dyn BlobSource) -> Result<PlanBlobs, BundleError> {
    let mut content = Vec::new();
    let mut manifests = Vec::new();
    let mut parsed: HashMap<Digest, Descriptors> = HashMap::new();
    for b in &plan.blobs {
        let Some(mt) = &b.media_type else {
            content.push(Ordered {
                blob: b.clone(),
                bytes: None,
            });
            continue;
        };
        let bytes = read_manifest(b, src)?;
        let d = parse_manifest(&bytes)
            .map_err(|why| BundleError::Plan(format!("manifest {} ({mt}): {why}", b.digest)))?;
        parsed.insert(b.digest.clone(), d);
        manifests.push(Ordered {
            blob: b.clone(),
            bytes: Some(bytes),
        });
    }
    Ok(PlanBlobs {
        ordered: content,
        manifests,
        parsed,
    })
}

/// A planned manifest's bytes: exactly its planned size, at most
/// `MAX_MANIFEST_BYTES`.
fn read_manifest(b: &PlannedBlob, src: &dyn BlobSource) -> Result<Vec<u8>, BundleError> {
    if b.size > MAX_MANIFEST_BYTES as u64 {
        return Err(BundleError::Plan(format!(
            "manifest {} is {} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may have",
            b.digest, b.size,
        )));
    }
    let mut r = src.open(&b.digest).map_err(|source| BundleError::Source {
        digest: b.digest.clone(),
        source,
    })?;
    let mut bytes = Vec::with_capacity(b.size as usize);
    let got = copy_exact(&mut *r, &b.digest, b.size, &mut |chunk| {
        bytes.extend_from_slice(chunk);
        Ok(())
    })?;
    debug_assert_eq!(got, b.size);
    Ok(bytes)
}

/// Depth first over the carried manifests each one refers to: children
/// before parents, otherwise the plan's order.
fn order_manifests(manifests: Vec<Ordered>, parsed: &HashMap<Digest, Descriptors>) -> Vec<Ordered> {
    let at: HashMap<Digest, usize> = manifests
        .iter()
        .enumerate()
        .map(|(i, m)| (m.blob.digest.clone(), i))
        .collect();
    let mut done = vec![false; manifests.len()];
    let mut order = Vec::with_capacity(manifests.len());
    for i in 0..manifests.len() {
        visit(i, &manifests, parsed, &at, &mut done, &mut order);
    }
    let mut slots: Vec<Option<Ordered>> = manifests.into_iter().map(Some).collect();
    order
        .into_iter()
        .map(|i| slots[i].take().expect("each once"))
        .collect()
}

fn visit(
    i: usize,
    manifests: &[Ordered],
    parsed: &HashMap<Digest, Descriptors>,
    at: &HashMap<Digest, usize>,
    done: &mut [bool],
    order: &mut Vec<usize>,
) {
    if done[i] {
        return;
    }
    // Marked before the children: content addressing rules out cycles, and
    // this keeps a crafted one from recursing forever (check_complete then
    // reports the manifest that comes before what it refers to).
    done[i] = true;
    if let Some(d) = parsed.get(&manifests[i].blob.digest) {
        for r in d.all() {
            if let Some(&j) = at.get(r) {
                visit(j, manifests, parsed, at, done, order);
            }
        }
    }
    order.push(i);
}

/// What names this bundle apart from the blobs: its id, when it was made
/// and its number in the signing key's sequence.
struct Identity {
    id: String,
    created: String,
    mtime: u64,
    sequence: u64,
}

impl Identity {
    fn new(opts: &CreateOptions) -> Result<Identity, BundleError> {
        let sequence = match &opts.key {
            Some(k) => k.next_sequence()?,
            None => 0,
        };
        let now = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .expect("0 is a valid nanosecond");
        let created = now
            .format(&time::format_description::well_known::Rfc3339)
            .expect("a UTC time formats as RFC 3339");
        let mut id = [0u8; 16];
        getrandom::getrandom(&mut id).map_err(|e| {
            BundleError::Plan(format!("no randomness from the OS for the bundle id: {e}"))
        })?;
        Ok(Identity {
            id: hex::encode(id),
            created,
            mtime: now.unix_timestamp().max(0) as u64,
            sequence,
        })
    }
}

fn write_all(
    out: &Path,
    plan: Plan,
    ordered: Vec<Ordered>,
    src: &dyn BlobSource,
    opts: &CreateOptions,
    progress: &mut dyn FnMut(Progress),
    written: &mut Vec<PathBuf>,
) -> Result<BundleDoc, BundleError> {
    let total: u64 = ordered.iter().map(|o| o.blob.size).sum();
    progress(Progress::Started {
        blobs: ordered.len(),
        bytes: total,
    });
    let ident = Identity::new(opts)?;
    let mut vols = Volumes {
        dir: out,
        limit: opts.volume_size,
        mtime: ident.mtime,
        done: Vec::new(),
        cur: None,
        pipe: HashPipe::new(),
        copied: 0,
        written,
    };
    vols.open_next()?;
    write_layout(&mut vols, &plan.refs, &ordered, progress)?;
    let blobs = write_blobs(&mut vols, ordered, src, progress)?;
    vols.finish_current(progress)?;
    let mut doc = BundleDoc {
        format: FORMAT.into(),
        id: ident.id,
        created: ident.created,
        sequence: ident.sequence,
        key_id: opts.key.as_ref().map(|k| k.key_id().to_owned()),
        sources: plan.sources,
        against: plan.against,
        since: plan.since,
        refs: plan.refs,
        blobs,
        requires: plan.requires,
        filtered: plan.filtered,
        prune: plan.prune,
        volumes: std::mem::take(&mut vols.done),
        signature: None,
    };
    if let Some(k) = &opts.key {
        doc.signature = Some(Signature {
            key_id: k.key_id().to_owned(),
            ed25519: k.sign(&doc.signed_bytes()),
        });
    }
    write_doc(out, &doc, vols.written)?;
    Ok(doc)
}

/// `oci-layout` and `index.json` at the start of volume 1.
fn write_layout(
    vols: &mut Volumes,
    refs: &[BundleRef],
    ordered: &[Ordered],
    progress: &mut dyn FnMut(Progress),
) -> Result<(), BundleError> {
    let sizes: HashMap<&Digest, u64> = ordered
        .iter()
        .map(|o| (&o.blob.digest, o.blob.size))
        .collect();
    for (name, bytes) in layout::layout_files(refs, |d| sizes.get(d).copied()) {
        if bytes.len() as u64 > vols.room() {
            return Err(BundleError::Plan(format!(
                "{name} ({} bytes) does not fit in a volume of {} bytes; use a larger volume size",
                bytes.len(),
                vols.limit
            )));
        }
        let d = Digest::sha256_of(&bytes);
        let size = bytes.len() as u64;
        vols.entry(name, size, &mut &bytes[..], &d, false, progress)?;
    }
    Ok(())
}

/// Every blob in order, manifests from memory, content from the source.
fn write_blobs(
    vols: &mut Volumes,
    ordered: Vec<Ordered>,
    src: &dyn BlobSource,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<BundleBlob>, BundleError> {
    let mut blobs = Vec::with_capacity(ordered.len());
    for o in ordered {
        let parts = match &o.bytes {
            Some(bytes) => vols.blob(&o.blob, &mut &bytes[..], progress)?,
            None => {
                let mut r = src
                    .open(&o.blob.digest)
                    .map_err(|source| BundleError::Source {
                        digest: o.blob.digest.clone(),
                        source,
                    })?;
                vols.blob(&o.blob, &mut *r, progress)?
            }
        };
        blobs.push(BundleBlob {
            digest: o.blob.digest,
            size: o.blob.size,
            media_type: o.blob.media_type,
            parts,
        });
    }
    Ok(blobs)
}

/// `bundle.json` through a temp file, fsynced, renamed, directory fsynced.
fn write_doc(out: &Path, doc: &BundleDoc, written: &mut Vec<PathBuf>) -> Result<(), BundleError> {
    let tmp = out.join(format!("{DOC_FILE}.tmp"));
    let path = out.join(DOC_FILE);
    written.push(tmp.clone());
    let mut f = File::create_new(&tmp).map_err(BundleError::io(&tmp))?;
    f.write_all(&doc.to_file_bytes())
        .and_then(|_| f.sync_all())
        .map_err(BundleError::io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(BundleError::io(&path))?;
    written.push(path);
    sync_dir(out)
}

/// The volume being written and the ones finished.
struct Volumes<'a> {
    dir: &'a Path,
    limit: u64,
    mtime: u64,
    done: Vec<Volume>,
    cur: Option<Open>,
    pipe: HashPipe,
    copied: u64,
    written: &'a mut Vec<PathBuf>,
}

struct Open {
    number: u32,
    name: String,
    path: PathBuf,
    file: File,
    pos: u64,
    /// Bytes before this offset were handed to writeback already.
    flushed: u64,
}

/// Writeback is started every this many bytes, so the fsync at the end of a
/// volume waits for the last stretch only, not for the whole volume.
const WRITEBACK: u64 = 32 << 20;

impl Open {
    /// Starts (without waiting for) writeback of what was written since the
    /// last call, once there is a stretch of it.
    fn start_writeback(&mut self) {
        if self.pos - self.flushed < WRITEBACK {
            return;
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::io::AsRawFd;
            // SAFETY: a plain syscall on a descriptor we own. Only a hint: an
            // error here changes nothing, the fsync at the end still runs.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.flushed as libc::off64_t,
                    (self.pos - self.flushed) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
        self.flushed = self.pos;
    }
}

impl Volumes<'_> {
    /// Largest entry data that still fits in the current volume.
    fn room(&self) -> u64 {
        let pos = self.cur.as_ref().map_or(self.limit, |c| c.pos);
        floor_block(self.limit.saturating_sub(pos + BLOCK + END_OF_ARCHIVE))
    }

    /// Largest entry data an empty volume holds.
    fn fresh_room(&self) -> u64 {
        floor_block(self.limit - BLOCK - END_OF_ARCHIVE)
    }

    fn open_next(&mut self) -> Result<(), BundleError> {
        debug_assert!(self.cur.is_none());
        let number = self.done.len() as u32 + 1;
        let name = layout::volume_file(number);
        let path = self.dir.join(&name);
        let file = File::create_new(&path).map_err(BundleError::io(&path))?;
        self.written.push(path.clone());
        self.cur = Some(Open {
            number,
            name,
            path,
            file,
            pos: 0,
            flushed: 0,
        });
        Ok(())
    }

    fn finish_current(&mut self, progress: &mut dyn FnMut(Progress)) -> Result<(), BundleError> {
        let Some(mut c) = self.cur.take() else {
            return Ok(());
        };
        let end = [0u8; END_OF_ARCHIVE as usize];
        self.pipe.small(&end, false);
        c.file
            .write_all(&end)
            .and_then(|_| c.file.sync_all())
            .map_err(BundleError::io(&c.path))?;
        c.pos += END_OF_ARCHIVE;
        debug_assert!(c.pos <= self.limit);
        self.done.push(Volume {
            file: c.name,
            size: c.pos,
            sha256: self.pipe.end_volume(),
        });
        progress(Progress::Volume(self.done.last().expect("just pushed")));
        Ok(())
    }

    fn next_volume(&mut self, progress: &mut dyn FnMut(Progress)) -> Result<(), BundleError> {
        self.finish_current(progress)?;
        self.open_next()
    }

    /// Writes a blob whole, or in parts when it is larger than a volume.
    fn blob(
        &mut self,
        b: &PlannedBlob,
        r: &mut dyn Read,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Vec<Part>, BundleError> {
        let path = layout::blob_path(&b.digest);
        if b.size <= self.fresh_room() {
            if b.size > self.room() {
                self.next_volume(progress)?;
            }
            let (volume, offset) = self.entry(&path, b.size, r, &b.digest, false, progress)?;
            expect_end(r, &b.digest, b.size)?;
            return Ok(vec![Part {
                volume,
                path,
                offset,
                size: b.size,
                sha256: b.digest.hex().to_owned(),
            }]);
        }
        // Split: the first part takes what is left of this volume (when at
        // least a block is), every other part a whole volume; each part is an
        // entry of its own with its own sha256.
        let mut parts = Vec::new();
        let mut left = b.size;
        while left > 0 {
            if self.room() == 0 {
                self.next_volume(progress)?;
            }
            let size = left.min(self.room());
            let n = parts.len() + 1;
            let path = layout::part_path(&b.digest, n);
            let (volume, offset) = self
                .entry(&path, size, r, &b.digest, true, progress)
                .map_err(|e| match e {
                    // Name the whole blob's shortfall, not the part's.
                    BundleError::SourceShort { digest, got, .. } => BundleError::SourceShort {
                        digest,
                        expected: b.size,
                        got: b.size - left + got,
                    },
                    e => e,
                })?;
            parts.push(Part {
                volume,
                path,
                offset,
                size,
                sha256: self.pipe.end_part(),
            });
            left -= size;
        }
        expect_end(r, &b.digest, b.size)?;
        Ok(parts)
    }

    /// One tar entry of exactly `size` bytes from `r` in the current volume
    /// (which must have room). Returns the volume number and the data offset.
    /// With `part`, the data is also hashed on its own (`pipe.end_part`).
    fn entry(
        &mut self,
        path: &str,
        size: u64,
        r: &mut dyn Read,
        digest: &Digest,
        part: bool,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(u32, u64), BundleError> {
        debug_assert!(size <= self.room());
        let c = self.cur.as_mut().expect("a volume is open");
        let h = header(path, size, self.mtime).map_err(BundleError::io(&c.path))?;
        self.pipe.small(h.as_bytes(), false);
        c.file
            .write_all(h.as_bytes())
            .map_err(BundleError::io(&c.path))?;
        c.pos += BLOCK;
        let offset = c.pos;
        let mut done = 0u64;
        while done < size {
            let mut buf = self.pipe.buffer();
            let want = (size - done).min(buf.len() as u64) as usize;
            // Retried in place: a buffer dropped here would shrink the pool.
            let n = loop {
                match r.read(&mut buf[..want]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        return Err(BundleError::Source {
                            digest: digest.clone(),
                            source,
                        })
                    }
                }
            };
            if n == 0 {
                return Err(BundleError::SourceShort {
                    digest: digest.clone(),
                    expected: size,
                    got: done,
                });
            }
            c.file
                .write_all(&buf[..n])
                .map_err(BundleError::io(&c.path))?;
            self.pipe.chunk(buf, n, part);
            done += n as u64;
            c.pos += n as u64;
            c.start_writeback();
            if digest_counts(path) {
                self.copied += n as u64;
                progress(Progress::Copied { bytes: self.copied });
            }
        }
        let pad = (padded(size) - size) as usize;
        let zeros = [0u8; BLOCK as usize];
        self.pipe.small(&zeros[..pad], false);
        c.file
            .write_all(&zeros[..pad])
            .map_err(BundleError::io(&c.path))?;
        c.pos += pad as u64;
        Ok((c.number, offset))
    }
}

/// Blob entries count towards `Progress::Copied`; the layout files do not.
fn digest_counts(path: &str) -> bool {
    path.starts_with("blobs/")
}

fn floor_block(n: u64) -> u64 {
    n / BLOCK * BLOCK
}

/// Fails unless `r` is at its end: a source longer than planned is as wrong
/// as a short one.
fn expect_end(r: &mut dyn Read, d: &Digest, size: u64) -> Result<(), BundleError> {
    let mut one = [0u8; 1];
    loop {
        match r.read(&mut one) {
            Ok(0) => return Ok(()),
            Ok(_) => {
                return Err(BundleError::SourceLong {
                    digest: d.clone(),
                    expected: size,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(BundleError::Source {
                    digest: d.clone(),
                    source,
                })
            }
        }
    }
}

/// Reads exactly `size` bytes from `r`, handing them to `sink` in chunks.
fn copy_exact(
    r: &mut dyn Read,
    d: &Digest,
    size: u64,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), BundleError>,
) -> Result<u64, BundleError> {
    let mut buf = vec![0u8; 64 << 10];
    copy_exact_buf(r, d, size, &mut buf, sink)?;
    expect_end(r, d, size)?;
    Ok(size)
}

fn copy_exact_buf(
    r: &mut dyn Read,
    d: &Digest,
    size: u64,
    buf: &mut [u8],
    sink: &mut dyn FnMut(&[u8]) -> Result<(), BundleError>,
) -> Result<(), BundleError> {
    let mut done = 0u64;
    while done < size {
        let want = (size - done).min(buf.len() as u64) as usize;
        let n = match r.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(BundleError::SourceShort {
                    digest: d.clone(),
                    expected: size,
                    got: done,
                })
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(BundleError::Source {
                    digest: d.clone(),
                    source,
                })
            }
        };
        sink(&buf[..n])?;
        done += n as u64;
    }
    Ok(())
}
