//! The sync engine: one run of one rule. Lists each repository's tags,
//! filters them, resolves each kept tag with a `HEAD` (free on Docker Hub's
//! pull limit), and fetches only the manifests and blobs the cache lacks,
//! through the mirror's own paths (credentials, token cache, 429 backoff,
//! verify on write, links). An index is kept byte-identical; only the
//! children of the rule's platforms (and their layers) are fetched, and the
//! children left out are noted so an offline site can name the filter.
//!
//! A tag is pointed at its new digest only once everything it needs is in
//! the cache, so a client never pulls a tag whose content is half there.
//! One failing tag or repository is reported and skipped; the run goes on.
//! Rate limits pause the run instead of failing it.
//!
//! Never serves a request and never deletes content (`prune` only unpins).

use std::collections::HashSet;
use std::time::Duration;

use crate::cache::now_secs;
use crate::mirror::{Held, LeftOut, Mirror, MirrorError, Routed};
use crate::registry::manifest::{blob_descriptors as descriptors, references};
use crate::registry::{index_children, select_children, Digest, RepoName, Tag};
use crate::upstream::UpstreamError;

use super::filter::{signature_tags, KeepLast};
use super::report::{Event, Failure, Summary, SyncedRef};
use super::settings::{RepoRule, SyncRule};
use super::SyncMetrics;

/// Below this many pulls left in the upstream's window, a run waits before
/// each manifest `GET` (the requests Docker Hub counts) for about the time
/// one pull takes to come back (window / limit), so a scheduled sync never
/// spends the last pulls the site's clients need.
pub const RATE_RESERVE: i64 = 2;
/// Longest single wait for a rate limit, and the most a run waits in all;
/// past that, what is left fails as rate-limited and the next run resumes.
const MAX_PAUSE: Duration = Duration::from_secs(3600);
const MAX_PAUSED_PER_RUN: Duration = Duration::from_secs(6 * 3600);

/// One run in progress: the rule, where it reports, and what it counted.
pub(super) struct Run<'a> {
    pub mirror: &'a Mirror,
    pub rule: &'a SyncRule,
    pub dry_run: bool,
    pub emit: &'a (dyn Fn(Event) + Send + Sync),
    pub metrics: &'a SyncMetrics,
    pub summary: Summary,
    paused: Duration,
    /// Digests whose signature tags this run handled (several tags often
    /// point at one digest).
    signed: HashSet<(RepoName, Digest)>,
}

/// What resolving one tag came to.
enum Outcome {
    Synced {
        manifests: u64,
        blobs: u64,
        bytes: u64,
    },
    Unchanged,
    Planned {
        manifests: u64,
        blobs: u64,
        bytes: u64,
        complete: bool,
    },
}

/// Most manifests one image may be made of (an index's children, nested
/// indexes) and how deep indexes may nest: an upstream that answers with a
/// graph that repeats itself is refused, never walked for ever.
const MAX_MANIFESTS: usize = 10_000;
const MAX_DEPTH: usize = 4;

/// Counts of what one closure needed.
#[derive(Default)]
struct Fetch {
    /// Manifests already walked: each once, however many paths reach it.
    seen: HashSet<Digest>,
    manifests: u64,
    blobs: u64,
    bytes: u64,
    /// Dry run: some manifest is not cached, so its blobs are not counted.
    unknown: bool,
}

impl<'a> Run<'a> {
    pub fn new(
        mirror: &'a Mirror,
        rule: &'a SyncRule,
        dry_run: bool,
        emit: &'a (dyn Fn(Event) + Send + Sync),
        metrics: &'a SyncMetrics,
    ) -> Run<'a> {
        Run {
            mirror,
            rule,
            dry_run,
            emit,
            metrics,
            summary: Summary {
                rule: rule.name.clone(),
                dry_run,
                started: now_secs(),
                ..Summary::default()
            },
            paused: Duration::ZERO,
            signed: HashSet::new(),
        }
    }

    /// Runs every repository of the rule; returns the summary.
    pub async fn run(mut self) -> Summary {
        (self.emit)(Event::RunStarted {
            rule: self.rule.name.clone(),
            dry_run: self.dry_run,
        });
        for repo in &self.rule.repos {
            if let Err(e) = self.repo(repo).await {
                let reference = format!("{}/{}", self.rule.upstream, repo.name);
                (self.emit)(Event::RepoFailed {
                    rule: self.rule.name.clone(),
                    repo: reference.clone(),
                    reason: e.to_string(),
                });
                self.summary.failed.push(Failure {
                    reference,
                    reason: e.to_string(),
                });
            }
        }
        self.summary.finished = now_secs();
        self.summary.paused_seconds = self.paused.as_secs();
        self.summary
    }

    fn routed(&self, repo: &RepoName) -> Result<Routed, MirrorError> {
        self.mirror
            .routed(&self.rule.upstream, repo.clone())
            .ok_or_else(|| {
                MirrorError::Upstream(UpstreamError::Config(format!(
                    "sync rule {}: no upstream named {}",
                    self.rule.name, self.rule.upstream
                )))
            })
    }

    /// Lists, filters and syncs one repository. An error here means the
    /// repository could not be listed; each tag's own failure is recorded
    /// and skipped.
    async fn repo(&mut self, repo: &RepoRule) -> Result<(), MirrorError> {
        let r = self.routed(&repo.name)?;
        let mirror = self.mirror;
        let all = self.paced(&r, false, || mirror.upstream_tags(&r)).await?;
        let kept = self.select(&r, repo, &all).await?;
        (self.emit)(Event::RepoListed {
            rule: self.rule.name.clone(),
            repo: format!("{}/{}", self.rule.upstream, repo.name),
            tags: all.len(),
            selected: kept.len(),
        });
        for tag in &kept {
            let reference = format!("{}/{}:{tag}", self.rule.upstream, repo.name);
            match self.image(&r, tag).await {
                Ok((d, outcome)) => {
                    self.report(&reference, &d, outcome);
                    if !self.dry_run {
                        self.keep(&r, tag, &d)?;
                    }
                    if self.rule.signatures {
                        self.signatures(&r, &d).await;
                    }
                }
                Err(e) => self.fail(reference, &e),
            }
        }
        if self.rule.prune && !self.dry_run {
            self.prune(&r, &kept)?;
        }
        Ok(())
    }

    /// The tags of `all` the rule keeps. `keep_last` over tags that are not
    /// all versions orders by the image's creation time, which needs each
    /// candidate's config (fetched into the cache, or read from it in a dry
    /// run; unknown times sort oldest).
    async fn select(
        &mut self,
        r: &Routed,
        repo: &RepoRule,
        all: &[Tag],
    ) -> Result<Vec<Tag>, MirrorError> {
        let candidates = repo.filter.candidates(all.iter().cloned());
        match repo.filter.keep_newest(candidates) {
            KeepLast::Chosen(t) => Ok(t),
            KeepLast::NeedCreated(candidates) => {
                let mut dated = Vec::with_capacity(candidates.len());
                for t in candidates {
                    let created = self.created(r, &t).await;
                    dated.push((t, created.map(std::time::SystemTime::from)));
                }
                Ok(repo.filter.by_created(dated))
            }
        }
    }

    /// When the image `tag` points at was created (its config's `created`),
    /// for `keep_last` by age. Any failure: unknown.
    async fn created(&mut self, r: &Routed, tag: &Tag) -> Option<time::OffsetDateTime> {
        let mirror = self.mirror;
        let (d, _) = self
            .paced(r, false, || mirror.head_tag(r, tag))
            .await
            .ok()?;
        let m = self.manifest(r, &d).await.ok()??;
        let m = match index_children(&m.bytes) {
            Some(children) => {
                let c = select_children(&children, &self.rule.platforms)
                    .into_iter()
                    .find(|c| c.attestation_for.is_none())?
                    .digest
                    .clone();
                self.manifest(r, &c).await.ok()??
            }
            None => m,
        };
        let config = references(&m.bytes).blobs.into_iter().next()?;
        if !self.dry_run {
            let mirror = self.mirror;
            self.paced(r, false, || mirror.ensure_blob(r, &config))
                .await
                .ok()?;
        }
        let bytes = self.mirror.read_blob_small(r, &config).ok()??;
        #[derive(serde::Deserialize)]
        struct Config {
            created: Option<String>,
        }
        let c: Config = serde_json::from_slice(&bytes).ok()?;
        time::OffsetDateTime::parse(
            c.created.as_deref()?,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()
    }

    /// A manifest: from the cache, or fetched unless this is a dry run
    /// (then `None` when not cached).
    async fn manifest(&mut self, r: &Routed, d: &Digest) -> Result<Option<Held>, MirrorError> {
        if let Some(h) = self.mirror.held_manifest(r, d)? {
            return Ok(Some(h));
        }
        if self.dry_run {
            return Ok(None);
        }
        let mirror = self.mirror;
        let h = self.paced(r, true, || mirror.ensure_manifest(r, d)).await?;
        Ok(Some(h))
    }

    /// Resolves one tag and makes its closure complete (or, in a dry run,
    /// counts what that would take). The tag is moved last.
    async fn image(&mut self, r: &Routed, tag: &Tag) -> Result<(Digest, Outcome), MirrorError> {
        let mirror = self.mirror;
        let (d, _) = self.paced(r, false, || mirror.head_tag(r, tag)).await?;
        let same = self
            .mirror
            .cached_tag(r, tag)?
            .is_some_and(|(old, _)| old == d);
        if same && self.complete(r, &d)? {
            if !self.dry_run {
                if let Some(h) = self.mirror.held_manifest(r, &d)? {
                    self.mirror.set_tag(r, tag, &h)?;
                }
            }
            return Ok((d, Outcome::Unchanged));
        }
        let mut f = Fetch::default();
        let top = self.closure(r, &d, true, &mut f, 0).await?;
        if self.dry_run {
            return Ok((
                d,
                Outcome::Planned {
                    manifests: f.manifests,
                    blobs: f.blobs,
                    bytes: f.bytes,
                    complete: !f.unknown,
                },
            ));
        }
        let top = top.expect("a real run holds what it fetched");
        self.mirror.set_tag(r, tag, &top)?;
        Ok((
            d,
            Outcome::Synced {
                manifests: f.manifests,
                blobs: f.blobs,
                bytes: f.bytes,
            },
        ))
    }

    /// Fetches (or counts) manifest `d` and what it needs: an index's kept
    /// children, a manifest's config and layers. `filter`: apply the rule's
    /// platforms (not to signatures).
    async fn closure(
        &mut self,
        r: &Routed,
        d: &Digest,
        filter: bool,
        f: &mut Fetch,
        depth: usize,
    ) -> Result<Option<Held>, MirrorError> {
        if depth > MAX_DEPTH || f.seen.len() >= MAX_MANIFESTS {
            return Err(too_deep(&self.rule.upstream, r, d));
        }
        if !f.seen.insert(d.clone()) {
            return self.mirror.held_manifest(r, d);
        }
        let Some(m) = self.manifest(r, d).await? else {
            f.manifests += 1;
            f.unknown = true;
            return Ok(None);
        };
        f.manifests += u64::from(m.fetched);
        if let Some(children) = index_children(&m.bytes) {
            let kept: HashSet<Digest> = if filter {
                select_children(&children, &self.rule.platforms)
            } else {
                children.iter().collect()
            }
            .into_iter()
            .map(|c| c.digest.clone())
            .collect();
            for c in &children {
                if kept.contains(&c.digest) {
                    Box::pin(self.closure(r, &c.digest, filter, f, depth + 1)).await?;
                } else if !self.dry_run {
                    let platform = c
                        .platform
                        .as_ref()
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "attestation".into());
                    let why = LeftOut {
                        platform,
                        by: format!("sync rule '{}'", self.rule.name),
                        kept: self.rule.platforms.iter().map(|p| p.to_string()).collect(),
                    };
                    self.mirror.note_left_out(r, &c.digest, &why)?;
                }
            }
            return Ok(Some(m));
        }
        for (b, size) in descriptors(&m.bytes) {
            if self.mirror.holds_blob(r, &b)? {
                continue;
            }
            if self.dry_run {
                f.blobs += 1;
                f.bytes += size;
                continue;
            }
            let mirror = self.mirror;
            let got = self.paced(r, false, || mirror.ensure_blob(r, &b)).await?;
            if got > 0 {
                f.blobs += 1;
                f.bytes += got;
            }
        }
        Ok(Some(m))
    }

    /// Whether manifest `d` and everything the rule keeps of it are cached
    /// for this repository. Metadata lookups only.
    fn complete(&self, r: &Routed, d: &Digest) -> Result<bool, MirrorError> {
        self.complete_from(r, d, &mut HashSet::new(), 0)
    }

    fn complete_from(
        &self,
        r: &Routed,
        d: &Digest,
        seen: &mut HashSet<Digest>,
        depth: usize,
    ) -> Result<bool, MirrorError> {
        if depth > MAX_DEPTH || seen.len() >= MAX_MANIFESTS {
            return Err(too_deep(&self.rule.upstream, r, d));
        }
        if !seen.insert(d.clone()) {
            return Ok(true); // walked (or being walked) on another path
        }
        let Some(m) = self.mirror.held_manifest(r, d)? else {
            return Ok(false);
        };
        if let Some(children) = index_children(&m.bytes) {
            for c in select_children(&children, &self.rule.platforms) {
                if !self.complete_from(r, &c.digest, seen, depth + 1)? {
                    return Ok(false);
                }
            }
            return Ok(true);
        }
        for (b, _) in descriptors(&m.bytes) {
            if !self.mirror.holds_blob(r, &b)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Cosign-style `sha256-<hex>.sig`, `.att` and `.sbom` tags of a synced
    /// digest: synced whole when the upstream has them; absent ones are
    /// skipped.
    async fn signatures(&mut self, r: &Routed, d: &Digest) {
        if !self.signed.insert((r.repo.clone(), d.clone())) {
            return;
        }
        for tag in signature_tags(d) {
            let reference = format!("{}/{}:{tag}", self.rule.upstream, r.repo);
            let mirror = self.mirror;
            let head = self.paced(r, false, || mirror.head_tag(r, &tag)).await;
            let sd = match head {
                Ok((sd, _)) => sd,
                Err(MirrorError::Upstream(UpstreamError::NotFound { .. })) => continue,
                Err(e) => {
                    self.fail(reference, &e);
                    continue;
                }
            };
            let mut f = Fetch::default();
            if self.dry_run {
                let same =
                    matches!(self.mirror.cached_tag(r, &tag), Ok(Some((old, _))) if old == sd);
                let outcome = match self.complete(r, &sd) {
                    Ok(true) if same => Outcome::Unchanged,
                    _ => match self.closure(r, &sd, false, &mut f, 0).await {
                        Ok(_) => Outcome::Planned {
                            manifests: f.manifests,
                            blobs: f.blobs,
                            bytes: f.bytes,
                            complete: !f.unknown,
                        },
                        Err(e) => {
                            self.fail(reference, &e);
                            continue;
                        }
                    },
                };
                self.report(&reference, &sd, outcome);
                continue;
            }
            let res = match self.closure(r, &sd, false, &mut f, 0).await {
                Ok(Some(h)) => self.mirror.set_tag(r, &tag, &h).map(|_| ()),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            match res {
                Ok(()) => {
                    let outcome = if f.manifests + f.blobs == 0 {
                        Outcome::Unchanged
                    } else {
                        Outcome::Synced {
                            manifests: f.manifests,
                            blobs: f.blobs,
                            bytes: f.bytes,
                        }
                    };
                    self.report(&reference, &sd, outcome);
                    if let Err(e) = self.keep(r, &tag, &sd) {
                        self.fail(reference, &e);
                    }
                }
                Err(e) => self.fail(reference, &e),
            }
        }
    }

    /// Pins the tag for the rule (when `pin`) and lists it in the summary.
    fn keep(&mut self, r: &Routed, tag: &Tag, d: &Digest) -> Result<(), MirrorError> {
        if self.rule.pin {
            let pattern = format!("{}/{}:{tag}", self.rule.upstream, r.repo);
            self.mirror.cache().pin_for(&pattern, &self.pin_source())?;
        }
        let media_type = self
            .mirror
            .held_manifest(r, d)?
            .map(|h| h.media_type.to_string())
            .unwrap_or_default();
        self.summary.refs.push(SyncedRef {
            upstream: self.rule.upstream.clone(),
            repository: r.repo.to_string(),
            tag: tag.to_string(),
            digest: d.to_string(),
            media_type,
        });
        Ok(())
    }

    fn pin_source(&self) -> String {
        format!("sync:{}", self.rule.name)
    }

    /// `prune`: tags of this repository the rule pinned before but no
    /// longer keeps (gone upstream or filtered out) lose the pin. Only after
    /// a successful listing, so an upstream outage never unpins anything.
    fn prune(&mut self, r: &Routed, kept: &[Tag]) -> Result<(), MirrorError> {
        let prefix = format!("{}/{}:", self.rule.upstream, r.repo);
        let cache = self.mirror.cache();
        for pattern in cache.pins_of(&self.pin_source())? {
            let Some(tag) = pattern.strip_prefix(&prefix) else {
                continue;
            };
            // Signature tags follow their image.
            let base_kept = kept.iter().any(|k| k.as_str() == tag);
            let sig_kept = tag.starts_with("sha256-")
                && self
                    .summary
                    .refs
                    .iter()
                    .any(|s| s.repository == r.repo.as_str() && s.tag == tag);
            if !base_kept && !sig_kept {
                cache.unpin(&pattern)?;
                (self.emit)(Event::Unpinned {
                    rule: self.rule.name.clone(),
                    pattern,
                });
            }
        }
        Ok(())
    }

    fn report(&mut self, reference: &str, d: &Digest, outcome: Outcome) {
        let rule = self.rule.name.clone();
        let (reference, digest) = (reference.to_owned(), d.to_string());
        let m = &self.metrics;
        match outcome {
            Outcome::Unchanged => {
                self.summary.unchanged += 1;
                m.images.with_label_values(&[&rule, "unchanged"]).inc();
                (self.emit)(Event::Unchanged {
                    rule,
                    reference,
                    digest,
                });
            }
            Outcome::Synced {
                manifests,
                blobs,
                bytes,
            } => {
                self.summary.count(manifests, blobs, bytes);
                m.images.with_label_values(&[&rule, "synced"]).inc();
                m.bytes.with_label_values(&[&rule]).inc_by(bytes);
                (self.emit)(Event::Synced {
                    rule,
                    reference,
                    digest,
                    manifests,
                    blobs,
                    bytes,
                });
            }
            Outcome::Planned {
                manifests,
                blobs,
                bytes,
                complete,
            } => {
                self.summary.count(manifests, blobs, bytes);
                (self.emit)(Event::Planned {
                    rule,
                    reference,
                    digest,
                    manifests,
                    blobs,
                    bytes,
                    complete,
                });
            }
        }
    }

    fn fail(&mut self, reference: String, e: &MirrorError) {
        let rule = self.rule.name.clone();
        self.metrics
            .images
            .with_label_values(&[&rule, "failed"])
            .inc();
        tracing::warn!(%rule, %reference, error = %e, "sync: skipped");
        (self.emit)(Event::Failed {
            rule,
            reference: reference.clone(),
            reason: e.to_string(),
        });
        self.summary.failed.push(Failure {
            reference,
            reason: e.to_string(),
        });
    }

    /// Runs an upstream operation, waiting out rate limits: before a
    /// counted request (`counted`: a manifest `GET`) when the upstream's
    /// remaining pulls are at [`RATE_RESERVE`], and after a 429 for as long
    /// as it said. Gives up (returns the 429) past [`MAX_PAUSED_PER_RUN`].
    async fn paced<T, F, Fut>(&mut self, r: &Routed, counted: bool, op: F) -> Result<T, MirrorError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, MirrorError>>,
    {
        loop {
            if counted {
                if let Some(wait) = self.reserve_wait(r) {
                    self.pause(wait, "ratelimit-remaining is at the reserve")
                        .await?;
                }
            }
            match op().await {
                Err(MirrorError::Upstream(UpstreamError::TooManyRequests {
                    retry_after, ..
                })) => {
                    self.pause(
                        Duration::from_secs(retry_after.max(1)),
                        "429 Too Many Requests",
                    )
                    .await?;
                }
                other => return other,
            }
        }
    }

    /// How long to wait before a counted request, if the upstream's last
    /// word was that only the reserve is left.
    fn reserve_wait(&self, r: &Routed) -> Option<Duration> {
        let rl = self.mirror.rate_limit(r.upstream)?;
        if rl.remaining > RATE_RESERVE {
            return None;
        }
        let per_pull = match (rl.window, rl.limit) {
            (Some(w), Some(l)) if l > 0 => w / l as u64,
            _ => 60,
        };
        let wait = Duration::from_secs(per_pull.max(1));
        // Already waited that long since the figure was seen.
        let since = rl.seen.elapsed();
        (since < wait).then(|| wait - since)
    }

    async fn pause(&mut self, wait: Duration, reason: &str) -> Result<(), MirrorError> {
        let wait = wait.min(MAX_PAUSE);
        if self.paused + wait > MAX_PAUSED_PER_RUN {
            return Err(MirrorError::Upstream(UpstreamError::TooManyRequests {
                upstream: self.rule.upstream.clone(),
                retry_after: wait.as_secs(),
            }));
        }
        self.metrics
            .pauses
            .with_label_values(&[&self.rule.name])
            .inc();
        (self.emit)(Event::Paused {
            rule: self.rule.name.clone(),
            upstream: self.rule.upstream.clone(),
            seconds: wait.as_secs().max(1),
            reason: reason.to_owned(),
        });
        tracing::info!(rule = %self.rule.name, upstream = %self.rule.upstream,
            seconds = wait.as_secs(), reason, "sync paused for the upstream's rate limit");
        tokio::time::sleep(wait).await;
        self.paused += wait;
        Ok(())
    }
}

/// An image whose indexes nest deeper than [`MAX_DEPTH`] or reach more than
/// [`MAX_MANIFESTS`] manifests.
fn too_deep(upstream: &str, r: &Routed, d: &Digest) -> MirrorError {
    MirrorError::Upstream(UpstreamError::Protocol {
        upstream: upstream.to_owned(),
        what: format!(
            "{}@{d}: indexes nest deeper than {MAX_DEPTH} or reach over {MAX_MANIFESTS} manifests; not synced",
            r.repo
        ),
    })
}
