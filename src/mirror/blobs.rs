//! Blobs: served from disk once verified, otherwise streamed from a fill that
//! any number of concurrent requests share (see `cache::fill`).
//!
//! Blobs are stored once per digest whatever repository brought them, but a
//! repository may read a cached blob only once the upstream has said that
//! repository holds it (a *link*): either it was fetched through that repository,
//! or a `HEAD` on the upstream confirmed it. Without that check, anyone who knew
//! a digest could read a private layer through a public repository.
//!
//! Fills are shared by digest across repositories, answers are not: a
//! follower from another repository whose shared fill met the upstream's 404
//! or 401/403 (about the leader's repository: it lacks the blob, or wharf
//! may not read it) fetches through its own, once.
//!
//! A download must keep up a minimum rate (`cache.fill_min_rate` over
//! `cache.fill_rate_window`) and stay within the cache's budget as it grows;
//! either failure ends the fill for every reader, caches nothing, is logged
//! and counted (`wharf_fills_failed_total`), and the next request retries.

use std::fs::File;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::cache::{CacheError, FillError, FillReader, FillWriter, Join};
use crate::registry::{Digest, RouteKind};
use crate::upstream::UpstreamError;

use super::pace::Pace;
use super::{CacheStatus, Mirror, MirrorError, Routed};

pub enum BlobBody {
    /// A verified file: supports ranges.
    File(File),
    /// A fill in progress: read along as it is written.
    Fill(FillReader),
}

pub struct BlobResponse {
    pub digest: Digest,
    /// Known for files, and for fills whose upstream sent `Content-Length`.
    pub size: Option<u64>,
    pub body: BlobBody,
    pub status: CacheStatus,
}

/// A fill already verified (only its fsync pending) is served like a file.
fn fill_response(
    d: &Digest,
    size: Option<u64>,
    reader: FillReader,
    status: CacheStatus,
) -> BlobResponse {
    // A verified file is complete: its length is the size, whatever the
    // upstream's headers said (or did not say).
    let (body, size) = match reader.verified_file() {
        Some(f) => match f.metadata() {
            Ok(m) => (BlobBody::File(f), Some(m.len())),
            Err(_) => (BlobBody::Fill(reader), size),
        },
        None => (BlobBody::Fill(reader), size),
    };
    BlobResponse {
        digest: d.clone(),
        size,
        body,
        status,
    }
}

/// A fill another repository started failed with an answer about that
/// repository (404: it lacks the blob; 401/403: wharf may not read it),
/// which says nothing about the follower's own.
pub(super) fn about_the_leaders_repository(e: &FillError) -> bool {
    use http::StatusCode as S;
    matches!(e, FillError::Source(r)
        if matches!(r.status, S::NOT_FOUND | S::FORBIDDEN | S::UNAUTHORIZED))
}

impl Mirror {
    pub async fn blob(&self, r: &Routed, d: &Digest) -> Result<BlobResponse, MirrorError> {
        self.blob_once(r, d, true).await
    }

    /// [`blob`](Self::blob); `retry`: a follower of a fill started through
    /// another repository may start its own once, if that fill met an
    /// answer about the leader's repository (404, 401, 403).
    async fn blob_once(
        &self,
        r: &Routed,
        d: &Digest,
        retry: bool,
    ) -> Result<BlobResponse, MirrorError> {
        let cache = &self.inner.cache;
        let origin = self.origin(r);
        let linked = cache.is_linked(origin, d)?;
        if linked {
            if let Some(f) = cache.open_blob(d)? {
                return Ok(file_response(d, f, CacheStatus::Hit));
            }
        }
        match cache.begin_fill(d, origin)? {
            Join::Cached => {
                let status = if linked {
                    CacheStatus::Hit
                } else {
                    self.confirm_access(r, d).await?;
                    CacheStatus::Revalidated
                };
                match cache.open_blob(d)? {
                    Some(f) => Ok(file_response(d, f, status)),
                    // Evicted in between: fetch it again.
                    None => Box::pin(self.blob_once(r, d, retry)).await,
                }
            }
            Join::Leader(writer, mut reader) => {
                self.spawn_fill(r.clone(), d.clone(), writer);
                let size = reader.ready().await?;
                let status = if reader.from_shared_tier() {
                    CacheStatus::Shared
                } else {
                    CacheStatus::Miss
                };
                Ok(fill_response(d, size, reader, status))
            }
            Join::Follower(mut reader, same_origin) => {
                if !same_origin && !linked {
                    self.confirm_access(r, d).await?;
                }
                self.inner
                    .metrics
                    .coalesced
                    .with_label_values(&["blob"])
                    .inc();
                match reader.ready().await {
                    Ok(size) => Ok(fill_response(d, size, reader, CacheStatus::Coalesced)),
                    // Fills are shared across repositories, answers are not:
                    // the leader's repository lacking the blob (or being
                    // closed to wharf) is no answer for this one, which asks
                    // the upstream itself (once).
                    Err(e) if !same_origin && retry && about_the_leaders_repository(&e) => {
                        tracing::debug!(repo = %r.repo, digest = %d,
                            "the shared fill's repository lacks the blob; fetching through this one");
                        Box::pin(self.blob_once(r, d, false)).await
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Answers a `HEAD` without downloading: from disk when this repository may
    /// read the cached blob, otherwise from the upstream's own `HEAD`.
    pub async fn blob_head(
        &self,
        r: &Routed,
        d: &Digest,
    ) -> Result<(Option<u64>, CacheStatus), MirrorError> {
        let cache = &self.inner.cache;
        let origin = self.origin(r);
        let cached = cache.blob_len(d)?;
        if cached.is_some() && cache.is_linked(origin, d)? {
            return Ok((cached, CacheStatus::Hit));
        }
        let size = self
            .upstream(r.upstream)
            .client
            .head_blob(&r.repo, d)
            .await?;
        match cached {
            Some(len) => {
                cache.link(origin, d)?;
                Ok((Some(len), CacheStatus::Revalidated))
            }
            None => Ok((size, CacheStatus::Pass)),
        }
    }

    /// Asks the upstream whether this repository holds the blob, and records it.
    pub(super) async fn confirm_access(&self, r: &Routed, d: &Digest) -> Result<(), MirrorError> {
        let up = self.upstream(r.upstream);
        up.client.head_blob(&r.repo, d).await?;
        self.inner.cache.link(self.origin(r), d)?;
        Ok(())
    }

    /// Downloads a blob into the fill. Runs in its own task so the download
    /// finishes (and is cached) even if the client that started it leaves.
    /// With a shared tier, the blob comes from the tier when another node
    /// put it there (or is fetching it: see `shared`), and what this node
    /// fetched from its upstream goes up to the tier afterwards.
    pub(super) fn spawn_fill(&self, r: Routed, d: Digest, w: Box<FillWriter>) {
        let this = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let up = this.upstream(r.upstream);
            // Held to the end of the fill, the writer's blocking thread
            // included, and the tier's lookups, lease and wait before it: so
            // `cache.max_fills` also bounds what a flood of distinct cold
            // digests costs the shared tier.
            let _slot = match this.fill_slot().await {
                Ok(slot) => slot,
                Err(e) => {
                    this.inner
                        .counters
                        .fills_failed
                        .with_label_values(&[&up.cfg.name, "busy"])
                        .inc();
                    tracing::warn!(upstream = %up.cfg.name, repo = %r.repo, digest = %d,
                        max_fills = this.inner.max_fills, "no slot for a blob download; refused");
                    let e = FillError::Source(Arc::new(e.response(RouteKind::Blob)));
                    this.inner.cache.abandon_fill(w, e);
                    return;
                }
            };
            let mut source = this.blob_source(&r, &d, true).await;
            let mut w = w;
            let (result, from) = loop {
                match source {
                    Source::Shared => match this.fill_from_tier(&r, &d, w).await {
                        Ok(result) => break (result, "shared tier"),
                        // The tier failed before its first byte, or its copy
                        // has the wrong length: as if it had not had the blob.
                        // The verified bytes go up again (a wrong copy is
                        // replaced; a present one is left alone).
                        Err(back) => {
                            let result = this.fill_from_upstream(&r, &d, back).await;
                            this.share(&r, &d, result.is_ok(), None).await;
                            break (result, "upstream");
                        }
                    },
                    Source::Peer(address) => match this.fill_from_peer(&r, &d, w, &address).await {
                        // Resumed from the upstream after the leader broke
                        // off: the leader may never upload it, this node does.
                        Ok((result, true)) => {
                            this.share(&r, &d, result.is_ok(), None).await;
                            break (result, "peer, then upstream");
                        }
                        Ok((result, false)) => break (result, "peer"),
                        // The leader did not serve it: wait for the store
                        // (or lead) as if peers were off.
                        Err(back) => {
                            w = back;
                            source = this.blob_source(&r, &d, false).await;
                        }
                    },
                    Source::Upstream(lease) => {
                        let readers = w.readers();
                        let result = this.fill_from_upstream(&r, &d, w).await;
                        this.share(&r, &d, result.is_ok(), lease.map(|l| (l, readers)))
                            .await;
                        break (result, "upstream");
                    }
                }
            };
            match result {
                Ok(size) => tracing::info!(
                    upstream = %up.cfg.name, repo = %r.repo, digest = %d, size, from,
                    ms = started.elapsed().as_millis() as u64, "blob cached"
                ),
                Err((e, why)) => {
                    let reason = failure_reason(&e, why);
                    this.inner
                        .counters
                        .fills_failed
                        .with_label_values(&[&up.cfg.name, reason])
                        .inc();
                    tracing::warn!(
                        upstream = %up.cfg.name, repo = %r.repo, digest = %d, reason, from,
                        error = %e, ms = started.elapsed().as_millis() as u64,
                        "blob fill failed; nothing cached"
                    )
                }
            }
        });
    }

    /// The shared tier, for this upstream's content: none when the upstream
    /// keeps its content out of the tier (`shared = false`) or is offline
    /// (a tier copy is read only once the upstream confirms the repository
    /// holds it).
    pub(super) fn tier_for(&self, r: &Routed) -> Option<&crate::shared::Tier> {
        let cfg = &self.upstream(r.upstream).cfg;
        self.inner
            .tier
            .as_ref()
            .filter(|_| cfg.shared && !cfg.offline)
    }

    /// Where this node's fill of `d` reads from: the tier when it holds
    /// the blob or another node is putting it there, the node filling it
    /// when that node serves peers (and `follow_peer`), else the upstream
    /// (leading the fleet's fill when the tier coordinates one).
    async fn blob_source(&self, r: &Routed, d: &Digest, follow_peer: bool) -> Source {
        use crate::shared::{Claim, Found, Waited};
        let Some(tier) = self.tier_for(r) else {
            return Source::Upstream(None);
        };
        match tier.lookup(d).await {
            Found::Object(_) => return Source::Shared,
            Found::Unavailable => return Source::Upstream(None),
            Found::Absent => {}
        }
        match tier.claim(d).await {
            Claim::Lead(lease) => Source::Upstream(Some(lease)),
            Claim::Alone => Source::Upstream(None),
            Claim::Follow => match tier.wait(d, follow_peer).await {
                Waited::Appeared(_) => Source::Shared,
                Waited::Peer(address) => Source::Peer(address),
                Waited::Lead(lease) => Source::Upstream(Some(lease)),
                Waited::Alone => Source::Upstream(None),
            },
        }
    }

    async fn fill_from_upstream(
        &self,
        r: &Routed,
        d: &Digest,
        w: Box<FillWriter>,
    ) -> Result<u64, (FillError, &'static str)> {
        match self.upstream(r.upstream).client.get_blob(&r.repo, d).await {
            Ok(resp) => self.feed_fill(r, Body::upstream(resp), w).await.0,
            Err(e) => {
                let e = source_failed(e);
                self.inner.cache.abandon_fill(w, e.clone());
                Err((e, "upstream"))
            }
        }
    }

    /// Before a fill uses a copy keyed by digest alone (the tier's, or a
    /// peer's): the upstream's `HEAD` confirms that this repository holds
    /// the blob, and gives its size to check the copy against. On a refusal
    /// the fill ends with the upstream's answer (e.g. 404 for a private
    /// layer asked through another repository).
    async fn confirm_for_copy(
        &self,
        r: &Routed,
        d: &Digest,
        w: Box<FillWriter>,
    ) -> Result<(Box<FillWriter>, Option<u64>), (FillError, &'static str)> {
        match self.upstream(r.upstream).client.head_blob(&r.repo, d).await {
            Ok(size) => Ok((w, size)),
            Err(e) => {
                let e = source_failed(e);
                self.inner.cache.abandon_fill(w, e.clone());
                Err((e, "upstream"))
            }
        }
    }

    /// Fills from the tier's copy, once the upstream has confirmed that the
    /// repository holds the blob (the tier is keyed by digest alone: without
    /// the check, a private layer could be read through any repository).
    /// Gives the writer back when the tier fails before its first byte.
    async fn fill_from_tier(
        &self,
        r: &Routed,
        d: &Digest,
        w: Box<FillWriter>,
    ) -> Result<Result<u64, (FillError, &'static str)>, Box<FillWriter>> {
        let Some(tier) = self.tier_for(r) else {
            return Err(w);
        };
        let (w, upstream_size) = match self.confirm_for_copy(r, d, w).await {
            Ok(confirmed) => confirmed,
            Err(failed) => return Ok(Err(failed)),
        };
        let (size, stream) = match tier.read(d).await {
            Ok(read) => read,
            Err(e) => {
                tracing::debug!(digest = %d, error = %e, "shared tier read failed; fetching from the upstream");
                return Err(w);
            }
        };
        // A copy of the wrong length is caught before any byte is served.
        if upstream_size.is_some_and(|u| u != size) {
            tier.bad_copy(d);
            return Err(w);
        }
        let mut w = w;
        w.from_shared_tier();
        let (result, _) = self.feed_fill(r, Body::Shared { size, stream }, w).await;
        if let Err((e, _)) = &result {
            if corrupt(e) {
                tier.bad_copy(d);
            }
        }
        Ok(result)
    }

    /// Fills from the node leading the fleet's fill of `d`, as that node
    /// fills, once the upstream has confirmed that the repository holds the
    /// blob (as for a tier copy). The digest is checked at the end, the
    /// length against the upstream's; if the leader breaks off midway, the
    /// rest comes from the upstream (a range request), so this node's
    /// clients see no failure (`true` beside the result then). Gives the
    /// writer back when the leader does not answer with the blob.
    async fn fill_from_peer(
        &self,
        r: &Routed,
        d: &Digest,
        w: Box<FillWriter>,
        address: &str,
    ) -> Result<(Result<u64, (FillError, &'static str)>, bool), Box<FillWriter>> {
        let Some(tier) = self.tier_for(r) else {
            return Err(w);
        };
        let (w, upstream_size) = match self.confirm_for_copy(r, d, w).await {
            Ok(confirmed) => confirmed,
            Err(failed) => return Ok((Err(failed), false)),
        };
        let (resp, peer_size) = match tier.peer_get(address, d).await {
            Ok(answer) => answer,
            Err(e) => {
                tier.peer_read("unavailable");
                tracing::info!(digest = %d, peer = address, error = %e,
                    "the node leading this fill did not serve it; waiting for the shared tier");
                return Err(w);
            }
        };
        if upstream_size.is_some_and(|u| u != peer_size) {
            tier.peer_read("wrong_size");
            tracing::warn!(digest = %d, peer = address, upstream_size = ?upstream_size, peer_size,
                "a peer's blob has another length than the upstream's; not used");
            return Err(w);
        }
        let mut w = w;
        w.from_shared_tier();
        let body = Body::Peer {
            size: peer_size,
            resp,
        };
        let (result, resumed) = self.feed_fill(r, body, w).await;
        match (&result, resumed) {
            (_, true) => tier.peer_read("resumed"),
            (Ok(_), false) => tier.peer_read("done"),
            // Bytes the peer proved and the digest refuses: a broken or
            // compromised node, not followed again for a while.
            (Err((e, _)), false) if corrupt(e) => tier.bad_peer(address),
            (Err(_), false) => tier.peer_read("failed"),
        }
        Ok((result, resumed))
    }

    /// The node-to-node listener's answer for `d`: this node's running fill
    /// of it, or its verified file, only while this node leads the fleet's
    /// fill of `d` (holds its lease). Never starts a fill.
    pub async fn peer_blob(&self, d: &Digest) -> Option<(BlobBody, Option<u64>)> {
        let tier = self.inner.tier.as_ref()?;
        if !tier.leads(d) {
            return None;
        }
        if let Some((mut reader, upstream)) = self.inner.cache.running_fill(d) {
            // The lease is by digest; the fill running now must also be
            // one whose content may leave the node.
            let shared = self
                .inner
                .upstreams
                .iter()
                .any(|u| u.cfg.name == upstream && u.cfg.shared);
            if !shared {
                return None;
            }
            let size = reader.ready().await.ok()?;
            let r = fill_response(d, size, reader, CacheStatus::Miss);
            return Some((r.body, r.size));
        }
        let (file, len) = self.inner.cache.open_blob(d).ok()??;
        Some((BlobBody::File(file), Some(len)))
    }

    /// After an upstream fill: uploads the verified blob to the tier (in the
    /// background), then releases the lease; on failure, releases it at
    /// once so waiting nodes go on. With the lease come the fill's readers:
    /// with peers, the upload waits for them (see `Tier::upload`).
    async fn share(
        &self,
        r: &Routed,
        d: &Digest,
        cached: bool,
        lease: Option<(crate::shared::Lease, crate::cache::FillReaders)>,
    ) {
        let file = match (cached, self.tier_for(r)) {
            (true, Some(tier)) => match self.inner.cache.open_blob(d) {
                Ok(Some((file, len))) => Some((tier, file, len)),
                _ => None,
            },
            _ => None,
        };
        match file {
            Some((tier, file, len)) => tier.upload(d.clone(), file, len, lease),
            None => {
                if let Some((lease, _)) = lease {
                    lease.release().await;
                }
            }
        }
    }

    /// A slot among `cache.max_fills` running downloads: each holds a
    /// blocking thread (hashing and writing), so without a cap a flood of
    /// distinct digests would take tokio's whole blocking pool. A download
    /// waits for a slot at most one `cache.fill_rate_window` (the time a
    /// running download has to show progress), then its readers get 503.
    async fn fill_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, MirrorError> {
        let slots = &self.inner.fill_slots;
        if let Ok(p) = slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        let waiting = &self.inner.counters.fills_waiting;
        waiting.inc();
        let wait = self.inner.fill_rate_window;
        let got = tokio::time::timeout(wait, slots.clone().acquire_owned()).await;
        waiting.dec();
        match got {
            Ok(Ok(p)) => Ok(p),
            _ => Err(MirrorError::FillsBusy {
                max: self.inner.max_fills,
                retry_after: wait.as_secs().max(1),
            }),
        }
    }

    /// Moves the upstream's body into the cache's fill: this task reads the
    /// socket, a blocking thread hashes and writes. A short queue: the
    /// upstream is slowed by TCP, not buffered in memory. The body must keep
    /// up `cache.fill_min_rate` over each `cache.fill_rate_window` (see
    /// `pace`), or the fill fails for every reader. On failure, a reason for
    /// the metrics beside the error when this side knows better than the
    /// error's kind. A peer that breaks off is replaced by the upstream from
    /// the first byte not yet received (`true` beside the result then).
    async fn feed_fill(
        &self,
        r: &Routed,
        mut resp: Body,
        w: Box<FillWriter>,
    ) -> (Result<u64, (FillError, &'static str)>, bool) {
        let size = resp.size();
        let digest = w.digest().clone();
        let mut fed: u64 = 0;
        let mut resumed = false;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, FillError>>(4);
        let this = self.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let chunks = std::iter::from_fn(|| rx.blocking_recv());
            this.inner.cache.fill(w, size, chunks)
        });
        let up = self.upstream(r.upstream);
        let received = self
            .inner
            .metrics
            .upstream_bytes
            .with_label_values(&[&up.cfg.name]);
        let source_name = |resp: &Body| match resp {
            Body::Upstream { .. } => up.cfg.name.clone(),
            Body::Shared { .. } => format!("{} (through the shared tier)", up.cfg.name),
            Body::Peer { .. } => format!("{} (through a peer)", up.cfg.name),
        };
        // The leader a peer body comes from broke off or is too slow: the
        // rest from the upstream, so this node's clients never see it.
        let resume = |fed: u64, why: String| {
            tracing::info!(upstream = %up.cfg.name, digest = %digest, at = fed, error = %why,
                "the peer leading this fill broke off; fetching the rest from the upstream");
            up.client.get_blob_from(&r.repo, &digest, fed)
        };
        let mut pace = Pace::new(
            self.inner.fill_min_rate,
            self.inner.fill_rate_window,
            Instant::now(),
        );
        let mut why = "";
        loop {
            // Waiting for a chunk no longer than the window's end catches
            // an upstream that sends nothing at all, not only a slow one.
            let next = match pace.deadline() {
                Some(end) => tokio::time::timeout_at(end.into(), resp.chunk()).await,
                None => Ok(resp.chunk().await),
            };
            let paced = match &next {
                Ok(Ok(Some((_, wire)))) => pace.received(*wire, Instant::now()),
                Err(_elapsed) => pace.check(Instant::now()),
                _ => Ok(()),
            };
            // A peer too slow, ended short or broken off: the rest from the
            // upstream (unless every byte came: the writer judges them).
            let peer_gone = match (&resp, &paced, &next) {
                (Body::Peer { size, .. }, _, _) if fed >= *size => None,
                (Body::Peer { .. }, Err(slow), _) => Some(format!(
                    "{} bytes in {} s",
                    slow.bytes,
                    slow.window.as_secs()
                )),
                (Body::Peer { .. }, _, Ok(Ok(None))) => Some("ended early".to_owned()),
                (Body::Peer { .. }, _, Ok(Err(e))) => Some(e.clone()),
                _ => None,
            };
            if let Some(gone) = peer_gone {
                match resume(fed, gone).await {
                    Ok((rest, skip)) => {
                        resp = Body::Upstream { resp: rest, skip };
                        resumed = true;
                        // The new source gets a window of its own.
                        pace = Pace::new(
                            self.inner.fill_min_rate,
                            self.inner.fill_rate_window,
                            Instant::now(),
                        );
                        continue;
                    }
                    Err(e) => {
                        why = "upstream";
                        let _ = tx.send(Err(source_failed(e))).await;
                        break;
                    }
                }
            }
            if let Err(slow) = paced {
                let err = MirrorError::FillTooSlow {
                    upstream: source_name(&resp),
                    bytes: slow.bytes,
                    window_s: slow.window.as_secs(),
                    min_rate: slow.min_rate,
                };
                why = "too_slow";
                let _ = tx
                    .send(Err(FillError::Source(Arc::new(
                        err.response(RouteKind::Blob),
                    ))))
                    .await;
                break;
            }
            let Ok(next) = next else {
                continue; // a window ended in time: wait on
            };
            match next {
                Ok(Some((b, wire))) => {
                    if matches!(resp, Body::Upstream { .. }) {
                        received.inc_by(wire);
                    }
                    if b.is_empty() {
                        continue; // skipped bytes of a whole blob sent again
                    }
                    fed += b.len() as u64;
                    let queued = Instant::now();
                    if tx.send(Ok(b)).await.is_err() {
                        break; // the writer failed and said why
                    }
                    // Waiting for our own disk (or an eviction pass making
                    // room) is not the upstream's slowness.
                    pace.exclude(queued.elapsed());
                }
                Ok(None) => break,
                // Every byte came before the peer's connection broke: the
                // writer checks them.
                Err(_) if matches!(resp, Body::Peer { .. }) => break,
                Err(e) if matches!(resp, Body::Shared { .. }) => {
                    why = "shared";
                    let err = MirrorError::Shared(format!("blob read interrupted: {e}"));
                    let _ = tx
                        .send(Err(FillError::Source(Arc::new(
                            err.response(RouteKind::Blob),
                        ))))
                        .await;
                    break;
                }
                Err(e) => {
                    why = "upstream";
                    let err = UpstreamError::Unreachable {
                        upstream: up.cfg.name.clone(),
                        reason: format!("blob transfer interrupted: {e}"),
                    };
                    let _ = tx.send(Err(source_failed(err))).await;
                    break;
                }
            }
        }
        drop(tx);
        let result = writer
            .await
            .expect("fill writer does not panic")
            .map_err(|e| (e, why));
        (result, resumed)
    }
}

/// Where a fill reads from.
enum Source {
    /// The tier holds the blob (or another node's upload of it completed).
    Shared,
    /// The node at this address leads the fill and serves it to peers.
    Peer(String),
    /// The upstream; with the fleet's lease when this node leads the fill.
    Upstream(Option<crate::shared::Lease>),
}

/// A fill's body: an upstream's answer, a tier read, or a peer's.
enum Body {
    /// `skip`: leading bytes to drop (a whole blob answering a range
    /// request that resumes a transfer).
    Upstream {
        resp: reqwest::Response,
        skip: u64,
    },
    Shared {
        size: u64,
        stream: futures_util::stream::BoxStream<'static, Result<Bytes, String>>,
    },
    Peer {
        size: u64,
        resp: reqwest::Response,
    },
}

impl Body {
    fn upstream(resp: reqwest::Response) -> Body {
        Body::Upstream { resp, skip: 0 }
    }

    fn size(&self) -> Option<u64> {
        match self {
            Body::Upstream { resp, .. } => resp.content_length(),
            Body::Shared { size, .. } => Some(*size),
            Body::Peer { size, .. } => Some(*size),
        }
    }

    /// The next bytes for the fill, and how many came off the wire for
    /// them (more when leading bytes are skipped: they count for the pace).
    async fn chunk(&mut self) -> Result<Option<(Bytes, u64)>, String> {
        use futures_util::StreamExt;
        let b = match self {
            Body::Upstream { resp, skip } => {
                let Some(mut b) = resp.chunk().await.map_err(|e| e.to_string())? else {
                    return Ok(None);
                };
                let wire = b.len() as u64;
                let drop = (*skip).min(wire);
                *skip -= drop;
                let _ = b.split_to(drop as usize);
                return Ok(Some((b, wire)));
            }
            Body::Shared { stream, .. } => stream.next().await.transpose()?,
            Body::Peer { resp, .. } => resp.chunk().await.map_err(|e| e.to_string())?,
        };
        Ok(b.map(|b| {
            let n = b.len() as u64;
            (b, n)
        }))
    }
}

/// A fill that failed because its source's bytes were wrong (not because
/// the source broke off).
fn corrupt(e: &FillError) -> bool {
    match e {
        FillError::SizeMismatch { .. } => true,
        FillError::Cache(c) => matches!(**c, CacheError::DigestMismatch { .. }),
        _ => false,
    }
}

/// The `reason` label of `wharf_fills_failed_total`.
fn failure_reason(e: &FillError, known: &'static str) -> &'static str {
    if !known.is_empty() {
        return known;
    }
    match e {
        FillError::Source(_) => "upstream",
        FillError::SizeMismatch { .. } => "size_mismatch",
        FillError::Cache(c) => match **c {
            CacheError::NoRoom(_) => "no_room",
            CacheError::DigestMismatch { .. } => "digest_mismatch",
            _ if c.is_disk_full() => "no_room",
            _ => "cache",
        },
        FillError::Aborted => "aborted",
    }
}

/// An upstream failure as a fill carries it to every reader: already the
/// response a client asking for this blob gets (`Retry-After` included).
fn source_failed(e: UpstreamError) -> FillError {
    FillError::Source(Arc::new(MirrorError::Upstream(e).response(RouteKind::Blob)))
}

fn file_response(d: &Digest, (file, len): (File, u64), status: CacheStatus) -> BlobResponse {
    BlobResponse {
        digest: d.clone(),
        size: Some(len),
        body: BlobBody::File(file),
        status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(e: UpstreamError) -> FillError {
        source_failed(e)
    }

    /// A whole blob answering a range request that resumes a transfer:
    /// its first bytes are dropped, yet count as received (for the pace).
    #[tokio::test]
    async fn a_whole_blob_sent_again_skips_what_the_fill_has() {
        let resp = http::Response::new(reqwest::Body::from(b"0123456789".to_vec()));
        let mut body = Body::Upstream {
            resp: reqwest::Response::from(resp),
            skip: 4,
        };
        let (b, wire) = body.chunk().await.unwrap().unwrap();
        assert_eq!((&b[..], wire), (&b"456789"[..], 10));
        assert!(body.chunk().await.unwrap().is_none());

        let resp = http::Response::new(reqwest::Body::from(b"0123".to_vec()));
        let mut body = Body::Upstream {
            resp: reqwest::Response::from(resp),
            skip: 10,
        };
        let (b, wire) = body.chunk().await.unwrap().unwrap();
        assert_eq!((b.len(), wire), (0, 4), "all skipped, all counted");
    }

    #[test]
    fn only_answers_about_the_leaders_repository_send_followers_upstream() {
        let up = || "hub".to_owned();
        let missing = failed(UpstreamError::NotFound {
            upstream: up(),
            code: Some("BLOB_UNKNOWN".into()),
        });
        let denied = failed(UpstreamError::Unauthorized {
            upstream: up(),
            repo: "private/x".into(),
            with_credentials: true,
        });
        assert!(about_the_leaders_repository(&missing));
        assert!(about_the_leaders_repository(&denied));
        // Failures of the upstream as a whole are everyone's answer.
        for e in [
            failed(UpstreamError::TooManyRequests {
                upstream: up(),
                retry_after: 60,
            }),
            failed(UpstreamError::Unreachable {
                upstream: up(),
                reason: "reset".into(),
            }),
            FillError::Aborted,
        ] {
            assert!(!about_the_leaders_repository(&e), "{e}");
        }
    }
}
