//! Blob fills: one upstream download per missing blob, read by every client that
//! wants it while it is still being written.
//!
//! This is the stampede-control component (pingora-cache's `lock.rs` idea): the
//! first request for a missing digest becomes the leader and gets a
//! [`FillWriter`]; every later request gets a [`FillReader`] on the same temp file.
//! Readers wait on a `watch` channel for more bytes, never in a sleep loop.
//!
//! What a reader may see is what keeps the cache honest while streaming:
//! - until the digest is verified, the last byte is held back, so no client ever
//!   receives a complete body whose digest did not match;
//! - if the fill fails, every reader gets an error and the HTTP layer closes the
//!   connection before `Content-Length` is reached;
//! - a [`FillWriter`] dropped without [`FillWriter::finish`] is a failed fill, and
//!   its temp file is deleted (nothing partial is ever cached).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::registry::{Digest, ErrorResponse, Hasher, RepoName};

use super::store::{BlobStore, TempFile};
use super::{CacheError, Origin};

/// Why a fill did not produce a verified blob.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FillError {
    /// What fed the fill (an upstream, a bundle) failed. The caller that
    /// fed it says what a client asking for this blob should be told; the
    /// cache passes it on to every reader unchanged.
    #[error("{}", .0.message)]
    Source(Arc<ErrorResponse>),
    #[error("upstream sent {actual} bytes for a blob of {expected} bytes")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error(transparent)]
    Cache(#[from] Arc<CacheError>),
    #[error("the fill was abandoned before it finished")]
    Aborted,
}

impl From<CacheError> for FillError {
    fn from(e: CacheError) -> Self {
        FillError::Cache(Arc::new(e))
    }
}

impl FillError {
    /// The disk could not take the blob: eviction should run.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, FillError::Cache(c) if c.is_disk_full())
    }
}

#[derive(Clone, Debug)]
enum Phase {
    /// Waiting for the upstream's response headers.
    Starting,
    Streaming {
        size: Option<u64>,
    },
    Done {
        size: u64,
    },
    Failed(FillError),
}

#[derive(Clone, Debug)]
struct State {
    phase: Phase,
    written: u64,
    /// How the fill ended for the cache: committed (file and metadata) with
    /// its size, or why not. Readers of bytes need only `phase`; callers
    /// that go on to use the cached blob (sync, imports) wait for this.
    settled: Option<Result<u64, FillError>>,
    /// The bytes come from the shared tier, not the upstream (for the
    /// access log's cache status).
    from_shared: bool,
}

struct Fill {
    state: watch::Sender<State>,
    file: Arc<File>,
    /// Who started the fill (upstream and repository): the link made when
    /// it commits, and how a follower from elsewhere knows it must check its
    /// own access first.
    upstream: String,
    repo: RepoName,
    started: std::time::Instant,
}

/// A fill in flight as the status page shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FillProgress {
    pub digest: String,
    pub upstream: String,
    pub repository: String,
    /// Bytes verified into the temp file so far.
    pub written: u64,
    /// The size the upstream announced, once its headers came.
    pub size: Option<u64>,
    /// Clients reading along (the one that started it included).
    pub readers: usize,
    pub seconds: f64,
}

/// The registry of fills in flight, keyed by digest.
#[derive(Clone, Default)]
pub struct Fills {
    inflight: Arc<Mutex<HashMap<Digest, Arc<Fill>>>>,
}

/// What [`Fills::join`] found.
pub enum Join {
    /// The blob is already in the store.
    Cached,
    /// Nobody was fetching it: the caller must fetch it and feed the writer.
    Leader(Box<FillWriter>, FillReader),
    /// Someone is already fetching it: read along. The flag says whether the
    /// fill was started with the same origin as this request.
    Follower(FillReader, bool),
}

impl Fills {
    /// Joins the fill for `digest`, starting one if none runs and the store does
    /// not have the blob. The store is checked under the lock, and a finished fill
    /// leaves the map only after its file is in place, so no request can miss
    /// both and start a second download.
    pub fn join(
        &self,
        digest: &Digest,
        store: &BlobStore,
        origin: Origin<'_>,
    ) -> Result<Join, CacheError> {
        let mut map = self.inflight.lock();
        if let Some(f) = map.get(digest) {
            let same = f.upstream == origin.upstream && f.repo == *origin.repo;
            return Ok(Join::Follower(FillReader::new(f.clone()), same));
        }
        if store.contains(digest) {
            return Ok(Join::Cached);
        }
        let temp = store.temp()?;
        let (tx, _) = watch::channel(State {
            phase: Phase::Starting,
            written: 0,
            settled: None,
            from_shared: false,
        });
        let fill = Arc::new(Fill {
            state: tx,
            file: temp.handle(),
            upstream: origin.upstream.to_owned(),
            repo: origin.repo.clone(),
            started: std::time::Instant::now(),
        });
        map.insert(digest.clone(), fill.clone());
        let writer = Box::new(FillWriter {
            fills: self.clone(),
            digest: digest.clone(),
            fill: fill.clone(),
            temp: Some(temp),
            hasher: Some(Hasher::new(digest.algorithm())),
            written: 0,
            size: None,
        });
        Ok(Join::Leader(writer, FillReader::new(fill)))
    }

    /// A reader of the fill in flight for `digest`, if any, and the name of
    /// the upstream it reads through.
    pub fn running(&self, digest: &Digest) -> Option<(FillReader, String)> {
        let map = self.inflight.lock();
        map.get(digest)
            .map(|f| (FillReader::new(f.clone()), f.upstream.clone()))
    }

    /// Number of fills in flight (for metrics and tests).
    pub fn len(&self) -> usize {
        self.inflight.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each fill in flight, oldest first (at most `max_fills` of them).
    pub fn progress(&self) -> Vec<FillProgress> {
        let map = self.inflight.lock();
        let mut out: Vec<FillProgress> = map
            .iter()
            .map(|(d, f)| {
                let s = f.state.borrow();
                let size = match s.phase {
                    Phase::Streaming { size } => size,
                    Phase::Done { size } => Some(size),
                    Phase::Starting | Phase::Failed(_) => None,
                };
                FillProgress {
                    digest: d.to_string(),
                    upstream: f.upstream.clone(),
                    repository: f.repo.to_string(),
                    written: s.written,
                    size,
                    // The writer's temp file and each reader hold the file.
                    readers: Arc::strong_count(&f.file).saturating_sub(2),
                    seconds: f.started.elapsed().as_secs_f64(),
                }
            })
            .collect();
        out.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        out
    }

    fn remove(&self, digest: &Digest, fill: &Arc<Fill>) {
        let mut map = self.inflight.lock();
        if map.get(digest).is_some_and(|f| Arc::ptr_eq(f, fill)) {
            map.remove(digest);
        }
    }
}

/// The leader's handle: feed it the upstream's bytes in order.
pub struct FillWriter {
    fills: Fills,
    digest: Digest,
    fill: Arc<Fill>,
    temp: Option<TempFile>,
    hasher: Option<Hasher>,
    written: u64,
    size: Option<u64>,
}

/// Who still reads a fill as it was written (clients and peers that joined
/// it while it ran): for work that should not compete with them.
pub struct FillReaders(std::sync::Weak<File>);

impl FillReaders {
    /// Readers still holding the fill (once it ended: those still sending).
    pub fn active(&self) -> usize {
        self.0.strong_count()
    }
}

impl FillWriter {
    /// A watch on this fill's readers, kept after the writer is gone.
    pub fn readers(&self) -> FillReaders {
        FillReaders(Arc::downgrade(&self.fill.file))
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Who started the fill: what its commit links the blob to.
    pub fn origin(&self) -> Origin<'_> {
        Origin {
            upstream: &self.fill.upstream,
            repo: &self.fill.repo,
        }
    }

    /// The bytes will come from the shared tier (say so before `start`).
    pub fn from_shared_tier(&mut self) {
        self.fill.state.send_modify(|s| s.from_shared = true);
    }

    /// The upstream answered: readers may now start their responses.
    pub fn start(&mut self, size: Option<u64>) {
        self.size = size;
        self.fill
            .state
            .send_modify(|s| s.phase = Phase::Streaming { size });
    }

    /// Appends bytes (blocking file I/O: call from a blocking thread).
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), FillError> {
        let end = self.written + bytes.len() as u64;
        if let Some(size) = self.size.filter(|&s| end > s) {
            return Err(FillError::SizeMismatch {
                expected: size,
                actual: end,
            });
        }
        let temp = self.temp.as_ref().expect("temp lives until finish");
        temp.write_at(self.written, bytes)
            .map_err(CacheError::from)?;
        self.hasher
            .as_mut()
            .expect("hasher lives until finish")
            .update(bytes);
        self.written = end;
        self.fill.state.send_modify(|s| s.written = end);
        Ok(())
    }

    /// Verifies size and digest, releases the held-back byte to readers, then
    /// moves the file into the store and runs `on_commit` (metadata). The fill
    /// leaves the in-flight map only once the file is in place.
    /// Blocking: call from a blocking thread.
    pub fn finish(
        mut self,
        store: &BlobStore,
        on_commit: impl FnOnce(u64) -> Result<(), CacheError>,
    ) -> Result<u64, FillError> {
        let r = self.finish_inner(store, on_commit);
        match &r {
            Ok(_) => self.fills.remove(&self.digest, &self.fill),
            Err(e) => self.fail_with(e.clone()),
        }
        let settled = r.clone();
        self.fill.state.send_modify(|s| s.settled = Some(settled));
        r
    }

    fn finish_inner(
        &mut self,
        store: &BlobStore,
        on_commit: impl FnOnce(u64) -> Result<(), CacheError>,
    ) -> Result<u64, FillError> {
        if let Some(size) = self.size.filter(|&s| s != self.written) {
            return Err(FillError::SizeMismatch {
                expected: size,
                actual: self.written,
            });
        }
        let actual = self.hasher.take().expect("finish runs once").finish();
        if actual != self.digest {
            return Err(CacheError::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            }
            .into());
        }
        // Verified: readers may have the last byte now. The fsync below makes
        // the *cache* durable; it is no business of the clients', who would
        // otherwise wait for 64 MiB to reach the disk. If the commit fails they
        // still got verified bytes, and nothing is cached.
        let size = self.written;
        self.fill
            .state
            .send_modify(|s| s.phase = Phase::Done { size });
        let temp = self.temp.take().expect("finish runs once");
        temp.commit(&store.path(&self.digest))
            .map_err(CacheError::from)?;
        on_commit(self.written)?;
        Ok(self.written)
    }

    /// Ends the fill with an error: readers abort, the temp file goes.
    pub fn fail(mut self, err: FillError) {
        self.fail_with(err);
    }

    fn fail_with(&mut self, err: FillError) {
        self.temp = None; // deletes the temp file
        self.hasher = None;
        // Out of the map first: a reader woken by the failure that asks
        // again (a follower from another repository retries through its
        // own) must start a fill of its own, not rejoin this dead one.
        self.fills.remove(&self.digest, &self.fill);
        // The first failure is the one readers hear about.
        self.fill.state.send_modify(|s| {
            if !matches!(s.phase, Phase::Done { .. } | Phase::Failed(_)) {
                s.phase = Phase::Failed(err.clone())
            }
            s.settled.get_or_insert(Err(err));
        });
    }
}

impl Drop for FillWriter {
    fn drop(&mut self) {
        if self.temp.is_some() || self.hasher.is_some() {
            self.fail_with(FillError::Aborted);
        } else {
            // Dropped between the digest check and the commit (a panic in
            // it): whoever waits for the fill to settle must not wait for
            // ever, and the next request starts a fill of its own.
            let unsettled = self.fill.state.send_if_modified(|s| {
                let unset = s.settled.is_none();
                if unset {
                    s.settled = Some(Err(FillError::Aborted));
                }
                unset
            });
            if unsettled {
                self.fills.remove(&self.digest, &self.fill);
            }
        }
    }
}

/// A reader following a fill.
pub struct FillReader {
    rx: watch::Receiver<State>,
    file: Arc<File>,
    handle: tokio::runtime::Handle,
}

impl FillReader {
    fn new(fill: Arc<Fill>) -> FillReader {
        FillReader {
            rx: fill.state.subscribe(),
            file: fill.file.clone(),
            handle: tokio::runtime::Handle::current(),
        }
    }

    /// Waits for the upstream's answer: the blob size if it sent one, or the
    /// error that ended the fill before any byte came.
    pub async fn ready(&mut self) -> Result<Option<u64>, FillError> {
        let s = self
            .rx
            .wait_for(|s| !matches!(s.phase, Phase::Starting))
            .await
            .map_err(|_| FillError::Aborted)?;
        match &s.phase {
            Phase::Starting => unreachable!("waited for a later phase"),
            Phase::Streaming { size } => Ok(*size),
            Phase::Done { size } => Ok(Some(*size)),
            Phase::Failed(e) => Err(e.clone()),
        }
    }

    /// Whether the fill reads from the shared tier (known once
    /// [`ready`](Self::ready) returned).
    pub fn from_shared_tier(&self) -> bool {
        self.rx.borrow().from_shared
    }

    /// Waits until the fill is settled in the cache: committed (file,
    /// record and link) with its size, or the error that ended it.
    pub async fn finished(&mut self) -> Result<u64, FillError> {
        let s = self
            .rx
            .wait_for(|s| s.settled.is_some())
            .await
            .map_err(|_| FillError::Aborted)?;
        s.settled.clone().expect("waited for it")
    }

    /// Once the fill is verified (digest matched, perhaps not yet on disk), its
    /// complete content as a file of its own, so it can be served like a cached
    /// blob, ranges included.
    pub fn verified_file(&self) -> Option<File> {
        match self.rx.borrow().phase {
            Phase::Done { .. } => self.file.try_clone().ok(),
            _ => None,
        }
    }

    /// How many bytes can be read at `pos` now, waiting until at least one
    /// can; 0 at the end of a verified blob. The last byte becomes readable only
    /// once the digest matched.
    pub async fn readable(&mut self, pos: u64) -> io::Result<u64> {
        let state = self
            .rx
            .wait_for(|s| match s.phase {
                Phase::Done { .. } | Phase::Failed(_) => true,
                _ => s.written.saturating_sub(1) > pos,
            })
            .await
            .map_err(|_| io::Error::other(FillError::Aborted))?;
        match &state.phase {
            Phase::Failed(e) => Err(io::Error::other(e.clone())),
            Phase::Done { size } => Ok(size.saturating_sub(pos)),
            _ => Ok(state.written.saturating_sub(1) - pos),
        }
    }

    /// The file the fill is written to (for `sendfile`), only ever to be read
    /// within what [`FillReader::readable`] allowed.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Positional read that waits for the bytes to be written. Returns 0 at the
    /// end of a verified blob. Blocking: call from a blocking thread.
    pub fn read_at(&mut self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        let handle = self.handle.clone();
        let readable = handle.block_on(self.readable(pos))?;
        if readable == 0 {
            return Ok(0);
        }
        let n = buf.len().min(readable as usize);
        self.file.read_at(&mut buf[..n], pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o() -> Origin<'static> {
        static REPO: std::sync::OnceLock<RepoName> = std::sync::OnceLock::new();
        Origin {
            upstream: "o",
            repo: REPO.get_or_init(|| "o/r".parse().unwrap()),
        }
    }

    fn setup() -> (tempfile::TempDir, Arc<BlobStore>, Fills) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlobStore::open(dir.path()).unwrap());
        (dir, store, Fills::default())
    }

    fn read_all(mut r: FillReader) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 7];
        loop {
            let n = r.read_at(out.len() as u64, &mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_follow_the_writer_and_get_verified_bytes() {
        let (_dir, store, fills) = setup();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let d = Digest::sha256_of(&data);
        let Join::Leader(mut w, r0) = fills.join(&d, &store, o()).unwrap() else {
            panic!("first join leads")
        };
        let Join::Follower(mut r1, true) = fills.join(&d, &store, o()).unwrap() else {
            panic!("second join follows")
        };
        assert_eq!(fills.len(), 1);
        let readers: Vec<_> = [r0]
            .into_iter()
            .map(|r| tokio::task::spawn_blocking(move || read_all(r)))
            .collect();
        let (store2, data2) = (store.clone(), data.clone());
        let writer = tokio::task::spawn_blocking(move || {
            w.start(Some(data2.len() as u64));
            for c in data2.chunks(4096) {
                w.write(c).unwrap();
            }
            w.finish(&store2, |_| Ok(())).unwrap()
        });
        assert_eq!(r1.ready().await.unwrap(), Some(data.len() as u64));
        let r1 = tokio::task::spawn_blocking(move || read_all(r1));
        assert_eq!(writer.await.unwrap(), data.len() as u64);
        for r in readers {
            assert_eq!(r.await.unwrap().unwrap(), data);
        }
        assert_eq!(r1.await.unwrap().unwrap(), data);
        assert!(fills.is_empty());
        assert!(store.contains(&d));
        assert!(matches!(fills.join(&d, &store, o()).unwrap(), Join::Cached));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn digest_mismatch_fails_every_reader_and_caches_nothing() {
        let (dir, store, fills) = setup();
        let d = Digest::sha256_of(b"the real content");
        let Join::Leader(mut w, r) = fills.join(&d, &store, o()).unwrap() else {
            panic!()
        };
        let reader = tokio::task::spawn_blocking(move || read_all(r));
        let store2 = store.clone();
        let res = tokio::task::spawn_blocking(move || {
            w.start(Some(16));
            w.write(b"the fake content").unwrap();
            w.finish(&store2, |_| Ok(()))
        })
        .await
        .unwrap();
        assert!(matches!(res, Err(FillError::Cache(_))));
        let err = reader.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("digest"), "{err}");
        assert!(!store.contains(&d));
        assert!(fills.is_empty());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn last_byte_is_held_back_until_verified() {
        let (_dir, store, fills) = setup();
        let d = Digest::sha256_of(b"abcd");
        let Join::Leader(mut w, mut r) = fills.join(&d, &store, o()).unwrap() else {
            panic!()
        };
        w.start(Some(4));
        w.write(b"abcd").unwrap();
        let mut buf = [0u8; 8];
        let n = tokio::task::block_in_place(|| r.read_at(0, &mut buf)).unwrap();
        assert_eq!(&buf[..n], b"abc", "the 4th byte waits for verification");
        let reader = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 8];
            let n = r.read_at(3, &mut buf).unwrap();
            (buf[..n].to_vec(), r.read_at(4, &mut buf).unwrap())
        });
        let store2 = store.clone();
        tokio::task::spawn_blocking(move || w.finish(&store2, |_| Ok(())).unwrap())
            .await
            .unwrap();
        assert_eq!(reader.await.unwrap(), (b"d".to_vec(), 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_writer_aborts_readers() {
        let (_dir, store, fills) = setup();
        let d = Digest::sha256_of(b"x");
        let Join::Leader(w, mut r) = fills.join(&d, &store, o()).unwrap() else {
            panic!()
        };
        drop(w);
        assert!(matches!(r.ready().await, Err(FillError::Aborted)));
        assert!(fills.is_empty());
        // A new request starts a fresh fill.
        assert!(matches!(
            fills.join(&d, &store, o()).unwrap(),
            Join::Leader(..)
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_explicit_failure_reaches_readers_unchanged() {
        let (_dir, store, fills) = setup();
        let d = Digest::sha256_of(b"x");
        let Join::Leader(w, mut r) = fills.join(&d, &store, o()).unwrap() else {
            panic!()
        };
        w.fail(FillError::SizeMismatch {
            expected: 1,
            actual: 2,
        });
        assert!(matches!(
            r.ready().await,
            Err(FillError::SizeMismatch { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oversized_upstream_body_is_refused() {
        let (_dir, store, fills) = setup();
        let d = Digest::sha256_of(b"ab");
        let Join::Leader(mut w, _r) = fills.join(&d, &store, o()).unwrap() else {
            panic!()
        };
        w.start(Some(2));
        assert!(matches!(
            w.write(b"abc"),
            Err(FillError::SizeMismatch { .. })
        ));
    }
}
