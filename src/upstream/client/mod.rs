//! The HTTP client for one upstream registry: anonymous, Basic or Bearer auth,
//! manifest and blob fetches, tag listing.
//!
//! Spec: distribution-spec `spec.md#pull` and the token auth flow in `auth.rs`.
//!
//! Everything an upstream answers is hostile until checked, and this client
//! must never act on it unchecked:
//!
//! - Token realms and redirect targets pass [`Destinations`] (`policy.rs`)
//!   before anything is sent there. Two reqwest clients: blob requests follow
//!   redirects (Docker Hub sends layers to a CDN; reqwest drops
//!   `Authorization` when the host changes) to what the policy allows;
//!   manifests, tag lists and tokens follow redirects only within their
//!   origin. A redirect is never cached since only verified bytes are.
//! - Every body read into memory is read incrementally against its limit
//!   ([`BodyLimits`]; a `Content-Length` is not trusted): past it a manifest,
//!   tag-list page or token answer is refused, an error body is cut.
//! - A manifest must arrive as a manifest media type and be a JSON object.
//! - Every answer has a deadline (`answer_timeout`): whole for manifests,
//!   tag lists, tokens and error bodies, the headers for blobs (whose body
//!   the fill's minimum rate judges), so an upstream dripping bytes cannot
//!   hold a request, a coalesced run or the token lock for ever.
//! - Refusals are logged with what was refused (URLs, sizes) and counted in
//!   `wharf_upstream_refused_total`; the error a client gets names the
//!   upstream and the reason, never an address.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tokio::time::Instant;

use std::sync::Arc;

use super::policy::{Destinations, NoLinkLocal, Refusal};
use super::{BodyLimits, UpstreamConfig};
use crate::metrics::Metrics;
use crate::registry::{is_manifest_type, Digest, MediaType, Reference, RepoName, MANIFEST_TYPES};
use crate::secret::Secret;

use super::auth::{parse_challenge, Challenge, TokenCache, TokenResponse};
use super::credentials::{self, BasicCredentials, CredentialSource};
use super::UpstreamError;

mod backoff;

use backoff::Backoff;
pub use backoff::{RateLimit, UpstreamHealth};

pub struct UpstreamClient {
    name: String,
    base: reqwest::Url,
    /// Manifests, tag lists, tokens: redirects only within the origin.
    http: reqwest::Client,
    /// Blobs: redirects to what [`Destinations`] allows.
    blobs: reqwest::Client,
    destinations: Arc<Destinations>,
    limits: BodyLimits,
    credentials: Option<Arc<dyn CredentialSource>>,
    tokens: TokenCache,
    /// The last challenge seen, so later requests authenticate up front instead
    /// of collecting a 401 each time.
    challenge: parking_lot::Mutex<Option<Challenge>>,
    token_fetch: tokio::sync::Mutex<()>,
    /// After a 429, nothing is sent until `until`.
    backoff: parking_lot::Mutex<Backoff>,
    /// The latest `ratelimit-*` headers (Docker Hub), for sync to pace itself.
    rate_limit: parking_lot::Mutex<Option<RateLimit>>,
    /// `offline = true`: nothing is ever sent.
    offline: bool,
    /// After a connection failure, requests fail fast until this instant
    /// instead of each waiting for its own connect timeout: the cache answers
    /// what it can at once (offline mode, automatically).
    down: parking_lot::Mutex<Option<(Instant, String)>>,
    /// The most one answer may take (`answer_timeout`): headers and body
    /// for `http`, headers for `blobs`.
    answer_timeout: Duration,
    /// Some request got an answer (for `/readyz`).
    answered: std::sync::atomic::AtomicBool,
    metrics: Arc<Metrics>,
}

/// How long an upstream that could not be reached is left alone.
const DOWN_FOR: Duration = Duration::from_secs(5);

/// A manifest as the upstream sent it.
#[derive(Clone, Debug)]
pub struct ManifestBody {
    pub bytes: Bytes,
    pub media_type: MediaType,
    pub digest: Digest,
}

/// What a manifest HEAD says.
#[derive(Clone, Debug)]
pub struct ManifestHead {
    pub digest: Option<Digest>,
    pub media_type: Option<MediaType>,
}

/// What a request to the upstream is for: its metrics label.
#[derive(Clone, Copy, Debug)]
enum Op {
    Manifest,
    Blob,
    Tags,
}

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::Manifest => "manifest",
            Op::Blob => "blob",
            Op::Tags => "tags",
        }
    }
}

/// Redirects followed for one request at most.
const MAX_REDIRECTS: usize = 5;

/// A redirect the policy refused: reqwest carries it as the source of its
/// error, [`UpstreamClient::transport`] finds it there.
#[derive(Debug)]
struct RedirectRefused {
    refusal: Refusal,
}

impl std::fmt::Display for RedirectRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redirect refused: {}", self.refusal.describe())
    }
}

impl std::error::Error for RedirectRefused {}

/// What a refusal counts as (the `reason` label).
#[derive(Clone, Copy, Debug)]
enum Refused {
    Realm,
    Redirect,
    BodySize,
    ErrorBody,
    MediaType,
}

impl Refused {
    fn label(self) -> &'static str {
        match self {
            Refused::Realm => "realm",
            Refused::Redirect => "redirect",
            Refused::BodySize => "body_size",
            Refused::ErrorBody => "error_body",
            Refused::MediaType => "media_type",
        }
    }
}

/// What wharf knows of an upstream's reachability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamState {
    /// `offline = true`: never asked.
    Offline,
    /// The last request could not connect.
    Unreachable,
    /// The last request got an answer.
    Reachable,
    /// Nothing asked yet.
    Unknown,
}

impl UpstreamState {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamState::Offline => "offline",
            UpstreamState::Unreachable => "unreachable",
            UpstreamState::Reachable => "reachable",
            UpstreamState::Unknown => "unknown",
        }
    }
}

impl UpstreamClient {
    pub fn new(
        cfg: &UpstreamConfig,
        metrics: Arc<Metrics>,
    ) -> Result<UpstreamClient, UpstreamError> {
        let destinations = Arc::new(Destinations::new(
            &cfg.url,
            &cfg.token_realms,
            &cfg.redirect_hosts,
        ));
        let build = |policy: reqwest::redirect::Policy, blobs: bool| {
            let mut b = reqwest::Client::builder()
                .user_agent(concat!("wharf/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(cfg.connect_timeout)
                // A stalled upstream must not hold clients forever; a slow one may.
                .read_timeout(Duration::from_secs(60))
                .pool_idle_timeout(Duration::from_secs(90))
                .dns_resolver(Arc::new(NoLinkLocal))
                // Mozilla's roots (webpki-roots) and `ca_file`, as always:
                // object_store turns on reqwest's native-roots feature for
                // the shared tier's client, which must not widen what an
                // upstream's certificate may chain to (nor parse the
                // system's bundle for every upstream client).
                .tls_built_in_native_certs(false)
                .redirect(policy);
            // Whole answers, but not a blob's body, which the fill's
            // minimum rate judges.
            if !blobs {
                b = b.timeout(cfg.answer_timeout);
            }
            // Blob bodies over HTTP/1.1, one connection each: over HTTP/2 a
            // 512 MiB fill from distribution over TLS took twice as long
            // and cost wharf 1.7x and the upstream 3x the CPU (16 KiB DATA
            // frames and their flow control on both sides; larger windows
            // and frames recovered only part of it). Go runtimes pull the
            // same way (containerd 1.6 and dockerd speak HTTP/1.1 to a
            // registry). Manifests and tokens keep HTTP/2 where offered.
            if blobs {
                b = b.http1_only();
            }
            if let Some(pem) = &cfg.ca_pem {
                for c in reqwest::Certificate::from_pem_bundle(pem)
                    .map_err(|e| UpstreamError::Config(format!("{}: ca_file: {e}", cfg.name)))?
                {
                    b = b.add_root_certificate(c);
                }
            }
            b.build()
                .map_err(|e| UpstreamError::Config(format!("{}: {e}", cfg.name)))
        };
        let http = build(
            reqwest::redirect::Policy::custom(|a| {
                let first = a.previous().first().cloned();
                if a.previous().len() > MAX_REDIRECTS {
                    return a.error("too many redirects");
                }
                match first.map(|f| Destinations::check_api_redirect(&f, a.url())) {
                    Some(Err(refusal)) => a.error(RedirectRefused { refusal }),
                    _ => a.follow(),
                }
            }),
            false,
        )?;
        let d = destinations.clone();
        let blobs = build(
            reqwest::redirect::Policy::custom(move |a| {
                let from = a.previous().last().cloned();
                if a.previous().len() > MAX_REDIRECTS {
                    return a.error("too many redirects");
                }
                match from.map(|f| d.check_blob_redirect(&f, a.url())) {
                    Some(Err(refusal)) => a.error(RedirectRefused { refusal }),
                    _ => a.follow(),
                }
            }),
            true,
        )?;
        Ok(UpstreamClient {
            name: cfg.name.clone(),
            base: cfg.url.clone(),
            http,
            blobs,
            destinations,
            limits: cfg.limits,
            credentials: cfg
                .credentials
                .as_ref()
                .map(|c| credentials::source(&cfg.name, c, Some(&metrics))),
            tokens: TokenCache::default(),
            challenge: parking_lot::Mutex::new(None),
            token_fetch: tokio::sync::Mutex::new(()),
            backoff: parking_lot::Mutex::new(Backoff::default()),
            rate_limit: parking_lot::Mutex::new(None),
            offline: cfg.offline,
            answer_timeout: cfg.answer_timeout,
            down: parking_lot::Mutex::new(None),
            answered: std::sync::atomic::AtomicBool::new(false),
            metrics,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The latest `ratelimit-*` figures the upstream sent, if any.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        *self.rate_limit.lock()
    }

    /// What wharf knows of the upstream's reachability (`/readyz`).
    pub fn state(&self) -> UpstreamState {
        if self.offline {
            UpstreamState::Offline
        } else if self.down.lock().is_some() {
            UpstreamState::Unreachable
        } else if self.answered.load(std::sync::atomic::Ordering::Relaxed) {
            UpstreamState::Reachable
        } else {
            UpstreamState::Unknown
        }
    }

    fn note_reachable(&self, ok: bool, reason: &str) {
        if ok {
            self.answered
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let mut d = self.down.lock();
        if ok {
            if d.take().is_some() {
                tracing::info!(upstream = %self.name, "upstream reachable again");
            }
        } else {
            if d.is_none() {
                tracing::warn!(upstream = %self.name, reason, "upstream unreachable; serving from cache only while it is down");
            }
            *d = Some((Instant::now() + DOWN_FOR, reason.to_owned()));
        }
        self.metrics
            .upstream_up
            .with_label_values(&[&self.name])
            .set(ok as i64);
    }

    fn url(&self, path: &str) -> reqwest::Url {
        let mut u = self.base.clone();
        u.set_path(path);
        u
    }

    fn manifest_accept() -> HeaderValue {
        HeaderValue::from_str(&MANIFEST_TYPES.join(", ")).expect("static types are valid")
    }

    /// Sends a request with whatever auth the upstream asks for: one retry after a
    /// 401 with a fresh token; a second 401 is reported, not retried again.
    async fn send(
        &self,
        op: Op,
        method: Method,
        url: reqwest::Url,
        repo: &RepoName,
        headers: HeaderMap,
    ) -> Result<reqwest::Response, UpstreamError> {
        let started = Instant::now();
        let r = self.send_inner(op, method, url, repo, headers).await;
        if !matches!(r, Err(UpstreamError::Offline { .. })) {
            self.metrics
                .upstream_duration
                .with_label_values(&[&self.name, op.label()])
                .observe(started.elapsed().as_secs_f64());
        }
        if let Err(e) = &r {
            self.count_error(e);
        }
        r
    }

    /// Counts a failed request and logs it with its details (which the
    /// client's error leaves out: addresses, URLs).
    fn count_error(&self, e: &UpstreamError) {
        self.metrics
            .upstream_errors
            .with_label_values(&[&self.name, e.kind()])
            .inc();
        // One line per failure with its details (the request log has the
        // client's view); 429 backoff skips are counted, not logged.
        if !matches!(
            e,
            UpstreamError::Offline { .. }
                | UpstreamError::NotFound { .. }
                | UpstreamError::TooManyRequests { .. }
        ) {
            tracing::warn!(upstream = %self.name, kind = e.kind(), error = %e, "upstream request failed");
        }
    }

    fn refused(&self, why: Refused) {
        self.metrics
            .upstream_refused
            .with_label_values(&[&self.name, why.label()])
            .inc();
    }

    async fn send_inner(
        &self,
        op: Op,
        method: Method,
        url: reqwest::Url,
        repo: &RepoName,
        headers: HeaderMap,
    ) -> Result<reqwest::Response, UpstreamError> {
        let scope = format!("repository:{repo}:pull");
        let mut retried = false;
        // What the last attempt sent and had refused, so that only that value
        // is replaced (not a token a concurrent request just fetched).
        let mut refused: Option<HeaderValue> = None;
        loop {
            let challenge = self.challenge.lock().clone();
            let auth = match &challenge {
                Some(c) => match self.authorization(c, &scope, refused.as_ref()).await {
                    Ok(a) => a,
                    // A remembered challenge (another repository's) whose
                    // realm is refused: forget it, and let this request
                    // meet its own challenge.
                    Err(UpstreamError::RealmRefused { .. }) if !retried => {
                        let mut stored = self.challenge.lock();
                        if stored.as_ref() == Some(c) {
                            *stored = None;
                        }
                        None
                    }
                    Err(e) => return Err(e),
                },
                None => None,
            };
            let client = match op {
                Op::Blob => &self.blobs,
                Op::Manifest | Op::Tags => &self.http,
            };
            let mut req = client
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(a) = &auth {
                req = req.header(http::header::AUTHORIZATION, a.clone());
            }
            self.check_backoff()?;
            // The `http` client's own timeout covers its bodies too; this
            // one covers a blob answer's headers.
            let resp = match tokio::time::timeout(self.answer_timeout, req.send()).await {
                Ok(Ok(r)) => r,
                Err(_) => {
                    self.note_reachable(false, "no answer within answer_timeout");
                    return Err(self.too_slow());
                }
                Ok(Err(e)) => {
                    let err = self.transport(e);
                    if let UpstreamError::Unreachable { reason, .. } = &err {
                        self.note_reachable(false, reason);
                    }
                    return Err(err);
                }
            };
            self.note_reachable(true, "");
            self.note_limits(&resp)?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let new = resp
                .headers()
                .get_all(http::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(parse_challenge);
            let can_retry = match &new {
                Some(Challenge::Basic) => self.credentials.is_some(),
                Some(Challenge::Bearer { .. }) => true,
                None => false,
            };
            if retried || !can_retry {
                return Err(UpstreamError::Unauthorized {
                    upstream: self.name.clone(),
                    repo: repo.to_string(),
                    with_credentials: self.credentials.is_some(),
                });
            }
            *self.challenge.lock() = new;
            refused = auth;
            retried = true;
        }
    }

    /// The `Authorization` value for a challenge, fetching a token if needed.
    /// `refused`: what the upstream just refused; it is not sent again.
    async fn authorization(
        &self,
        c: &Challenge,
        scope: &str,
        refused: Option<&HeaderValue>,
    ) -> Result<Option<HeaderValue>, UpstreamError> {
        match c {
            Challenge::Basic => match &self.credentials {
                None => Ok(None),
                Some(src) => {
                    if refused.is_some() {
                        src.rejected();
                    }
                    Ok(Some(basic(&src.get().await?)))
                }
            },
            Challenge::Bearer { realm, service, .. } => {
                let usable = |t: &Secret| {
                    refused
                        .is_none_or(|r| r.as_bytes() != format!("Bearer {}", t.expose()).as_bytes())
                };
                let token = match self.tokens.get(scope, Instant::now()).filter(usable) {
                    Some(t) => t,
                    None => {
                        // One fetch at a time: twelve cold requests arriving
                        // together share one token instead of asking for twelve.
                        let _one = self.token_fetch.lock().await;
                        match self.tokens.get(scope, Instant::now()).filter(usable) {
                            Some(t) => t,
                            None => {
                                let t = self.fetch_token(realm, service.as_deref(), scope).await?;
                                let v = t.value.clone();
                                self.tokens.put(scope, t, Instant::now());
                                v
                            }
                        }
                    }
                };
                let mut v = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .map_err(|_| self.protocol("token has characters not valid in a header"))?;
                v.set_sensitive(true);
                Ok(Some(v))
            }
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<super::auth::Token, UpstreamError> {
        let mut url =
            reqwest::Url::parse(realm).map_err(|_| self.protocol("token realm is not a URL"))?;
        // Checked before credentials are even fetched (a helper is not run
        // for a realm that will not get its answer).
        if let Err(refusal) = self
            .destinations
            .check_realm(&url, self.credentials.is_some())
        {
            self.refused(Refused::Realm);
            let mut shown = url.clone();
            shown.set_query(None);
            tracing::warn!(upstream = %self.name, realm = %shown, reason = refusal.describe(),
                with_credentials = self.credentials.is_some(),
                "refused the token realm the upstream named; nothing was sent there");
            return Err(UpstreamError::RealmRefused {
                upstream: self.name.clone(),
                reason: refusal.describe(),
            });
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let mut retried = false;
        let resp = loop {
            let mut req = self.http.get(url.clone());
            if let Some(src) = &self.credentials {
                req = req.header(http::header::AUTHORIZATION, basic(&src.get().await?));
            }
            let resp = req.send().await.map_err(|e| self.transport(e))?;
            let status = resp.status();
            if status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN {
                break resp;
            }
            // A refreshable credential (the metadata server's token) gets one
            // more try with a fresh value; anything else is reported.
            let again = !retried && self.credentials.as_ref().is_some_and(|s| s.rejected());
            if !again {
                return Err(UpstreamError::Unauthorized {
                    upstream: self.name.clone(),
                    repo: scope.to_owned(),
                    with_credentials: self.credentials.is_some(),
                });
            }
            retried = true;
        };
        let status = resp.status();
        if !status.is_success() {
            return Err(self.protocol(&format!("token service answered {status}")));
        }
        let body = self
            .read_capped(resp, self.limits.token, "token service answer")
            .await?;
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
            self.protocol("token service answered with something other than token JSON")
        })?;
        tracing::debug!(upstream = %self.name, scope, "fetched a bearer token");
        self.metrics
            .token_fetches
            .with_label_values(&[&self.name, "registry"])
            .inc();
        parsed
            .into_token(Instant::now())
            .ok_or_else(|| self.protocol("token service answered without a token"))
    }

    fn transport(&self, e: reqwest::Error) -> UpstreamError {
        if e.is_redirect() {
            let refusal =
                std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |c| {
                    c.source()
                })
                .find_map(|c| c.downcast_ref::<RedirectRefused>())
                .map(|r| r.refusal);
            self.refused(Refused::Redirect);
            // The URL is for the log only.
            tracing::warn!(upstream = %self.name, to = ?e.url().map(|u| u.as_str()),
                reason = refusal.map_or("too many redirects", |r| r.describe()),
                "refused a redirect from the upstream");
            return self.protocol(&format!(
                "it answered with a redirect wharf does not follow ({})",
                refusal.map_or("too many redirects", |r| r.describe())
            ));
        }
        if e.is_timeout() && !e.is_connect() {
            return self.too_slow();
        }
        // reqwest's Display includes the URL, never headers: for the log
        // (`count_error`); clients get the upstream's name only.
        UpstreamError::Unreachable {
            upstream: self.name.clone(),
            reason: error_chain(&e),
        }
    }

    /// Reads a body of at most `limit` bytes into memory, chunk by chunk (a
    /// `Content-Length` is not trusted, only used to refuse early).
    async fn read_capped(
        &self,
        mut resp: reqwest::Response,
        limit: usize,
        what: &str,
    ) -> Result<Vec<u8>, UpstreamError> {
        let too_big = |got: Option<u64>| {
            self.refused(Refused::BodySize);
            tracing::warn!(upstream = %self.name, what, limit, content_length = got,
                "refused an upstream answer larger than its limit");
            self.protocol(&format!(
                "its {what} is larger than the {} limit",
                human_size(limit)
            ))
        };
        if let Some(l) = resp.content_length().filter(|&l| l > limit as u64) {
            return Err(too_big(Some(l)));
        }
        let mut buf = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport(e))? {
            if buf.len() + chunk.len() > limit {
                return Err(too_big(resp.content_length()));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    }

    /// The first `limit` bytes of an error answer; the rest is never read
    /// (the connection is dropped with it).
    async fn read_error_body(&self, mut resp: reqwest::Response) -> Vec<u8> {
        let limit = self.limits.error_body;
        let mut buf = Vec::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            let room = limit - buf.len();
            if chunk.len() > room {
                buf.extend_from_slice(&chunk[..room]);
                self.refused(Refused::ErrorBody);
                tracing::debug!(upstream = %self.name, limit, "cut an upstream error answer at its limit");
                break;
            }
            buf.extend_from_slice(&chunk);
        }
        buf
    }

    /// An answer that took longer than `answer_timeout` (a dripping or
    /// stalled upstream): given up like an unreachable upstream, so a cached
    /// answer is served if there is one.
    fn too_slow(&self) -> UpstreamError {
        UpstreamError::Unreachable {
            upstream: self.name.clone(),
            reason: format!(
                "no complete answer within {} s (answer_timeout)",
                self.answer_timeout.as_secs_f64()
            ),
        }
    }

    fn protocol(&self, what: &str) -> UpstreamError {
        UpstreamError::Protocol {
            upstream: self.name.clone(),
            what: what.to_owned(),
        }
    }

    /// Turns a non-success answer into an error, keeping the upstream's OCI code.
    async fn check(
        &self,
        resp: reqwest::Response,
        is_head: bool,
    ) -> Result<reqwest::Response, UpstreamError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let r = self.check_failed(resp, is_head, status).await;
        self.count_error(&r);
        Err(r)
    }

    async fn check_failed(
        &self,
        resp: reqwest::Response,
        is_head: bool,
        status: StatusCode,
    ) -> UpstreamError {
        let code = if is_head {
            None
        } else {
            // The blobs client has no overall timeout: an error body that
            // drips gets the same deadline as any answer.
            let body = tokio::time::timeout(self.answer_timeout, self.read_error_body(resp))
                .await
                .unwrap_or_default();
            serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_owned))
                // An OCI code is a short upper-case word; anything else is
                // the upstream's text, not passed on.
                .filter(|c| {
                    !c.is_empty()
                        && c.len() <= 32
                        && c.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
                })
        };
        match status {
            StatusCode::NOT_FOUND => UpstreamError::NotFound {
                upstream: self.name.clone(),
                code,
            },
            StatusCode::TOO_MANY_REQUESTS => UpstreamError::TooManyRequests {
                upstream: self.name.clone(),
                retry_after: 60,
            },
            StatusCode::FORBIDDEN => UpstreamError::Unauthorized {
                upstream: self.name.clone(),
                repo: String::new(),
                with_credentials: self.credentials.is_some(),
            },
            _ => UpstreamError::Status {
                upstream: self.name.clone(),
                status: status.as_u16(),
                code,
            },
        }
    }

    /// A `HEAD` or `GET` of a manifest with the registry's manifest types
    /// accepted, checked (a failure status becomes its error).
    async fn manifest_request(
        &self,
        method: Method,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut h = HeaderMap::new();
        h.insert(http::header::ACCEPT, Self::manifest_accept());
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let head = method == Method::HEAD;
        let resp = self.send(Op::Manifest, method, url, repo, h).await?;
        self.check(resp, head).await
    }

    /// `HEAD /v2/<name>/manifests/<reference>`: cheap (Docker Hub does not count
    /// it against the pull limit), used to revalidate tags.
    pub async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestHead, UpstreamError> {
        let resp = self.manifest_request(Method::HEAD, repo, reference).await?;
        Ok(ManifestHead {
            digest: header_str(resp.headers(), "docker-content-digest")
                .and_then(|s| s.parse().ok()),
            media_type: header_str(resp.headers(), "content-type")
                .and_then(|s| s.parse().ok())
                .filter(is_manifest_type),
        })
    }

    /// `GET` a manifest, bounded in size, with its digest computed and checked
    /// against the reference (by digest) or the upstream's header (by tag).
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestBody, UpstreamError> {
        let resp = self.manifest_request(Method::GET, repo, reference).await?;
        let media_type: MediaType = header_str(resp.headers(), "content-type")
            .ok_or_else(|| self.protocol("manifest without Content-Type"))?
            .parse()
            .map_err(|_| self.protocol("manifest with an invalid Content-Type"))?;
        if !is_manifest_type(&media_type) {
            return Err(self.not_a_manifest(&media_type, "its Content-Type"));
        }
        let header_digest: Option<Digest> =
            header_str(resp.headers(), "docker-content-digest").and_then(|s| s.parse().ok());
        let buf = self
            .read_capped(resp, self.limits.manifest, "manifest")
            .await?;
        if !serde_json::from_slice::<serde_json::Value>(&buf).is_ok_and(|v| v.is_object()) {
            return Err(self.not_a_manifest(&media_type, "its body, which is not a JSON object"));
        }
        let expected = match reference {
            Reference::Digest(d) => Some(d.clone()),
            Reference::Tag(_) => header_digest,
        };
        let digest = match expected {
            Some(e) => {
                let actual = Digest::of(e.algorithm(), &buf);
                if actual != e {
                    return Err(UpstreamError::DigestMismatch {
                        upstream: self.name.clone(),
                        expected: e.to_string(),
                        actual: actual.to_string(),
                    });
                }
                e
            }
            None => Digest::sha256_of(&buf),
        };
        Ok(ManifestBody {
            bytes: buf.into(),
            media_type,
            digest,
        })
    }

    /// `HEAD` a blob: does this repository have it? (Used before serving a blob
    /// cached for another repository.)
    pub async fn head_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>, UpstreamError> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let resp = self
            .send(Op::Blob, Method::HEAD, url, repo, HeaderMap::new())
            .await?;
        let resp = self.check(resp, true).await?;
        Ok(header_str(resp.headers(), "content-length").and_then(|s| s.parse().ok()))
    }

    /// `GET` a blob; the caller streams and verifies the body.
    pub async fn get_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<reqwest::Response, UpstreamError> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let resp = self
            .send(Op::Blob, Method::GET, url, repo, HeaderMap::new())
            .await?;
        self.check(resp, false).await
    }

    /// `GET` a blob from byte `offset` on (`Range: bytes=<offset>-`): the
    /// rest of a transfer another source broke off. The answer is 206
    /// starting at `offset`, or 200 with the whole blob (an upstream that
    /// ignores ranges): the number of leading bytes to skip comes back
    /// with it. Anything else is an error.
    pub async fn get_blob_from(
        &self,
        repo: &RepoName,
        digest: &Digest,
        offset: u64,
    ) -> Result<(reqwest::Response, u64), UpstreamError> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let mut h = HeaderMap::new();
        h.insert(
            http::header::RANGE,
            http::HeaderValue::from_str(&format!("bytes={offset}-")).expect("ascii"),
        );
        let resp = self.send(Op::Blob, Method::GET, url, repo, h).await?;
        let resp = self.check(resp, false).await?;
        match resp.status() {
            StatusCode::OK => Ok((resp, offset)),
            StatusCode::PARTIAL_CONTENT => {
                let starts = header_str(resp.headers(), "content-range")
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split_once('-'))
                    .and_then(|(start, _)| start.parse::<u64>().ok());
                if starts == Some(offset) {
                    Ok((resp, 0))
                } else {
                    Err(UpstreamError::Unreachable {
                        upstream: self.name.clone(),
                        reason: format!("asked for the blob from byte {offset}, got another range"),
                    })
                }
            }
            s => Err(UpstreamError::Unreachable {
                upstream: self.name.clone(),
                reason: format!("a range request answered {s}"),
            }),
        }
    }

    /// `GET /v2/<name>/tags/list` (one page: the upstream's `Link` comes
    /// back with it), bounded in size.
    pub async fn tags_list(
        &self,
        repo: &RepoName,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<(Bytes, Option<String>), UpstreamError> {
        let mut url = self.url(&format!("/v2/{repo}/tags/list"));
        {
            let mut q = url.query_pairs_mut();
            if let Some(n) = n {
                q.append_pair("n", &n.to_string());
            }
            if let Some(l) = last {
                q.append_pair("last", l);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let resp = self
            .send(Op::Tags, Method::GET, url, repo, HeaderMap::new())
            .await?;
        let resp = self.check(resp, false).await?;
        let link = header_str(resp.headers(), "link").map(str::to_owned);
        let body = self
            .read_capped(resp, self.limits.tag_list_page, "tag list page")
            .await?;
        Ok((body.into(), link))
    }

    /// A manifest answer that is something else (`text/html`, ...): never
    /// cached nor served.
    fn not_a_manifest(&self, media_type: &MediaType, by: &str) -> UpstreamError {
        self.refused(Refused::MediaType);
        tracing::warn!(upstream = %self.name, media_type = %media_type, by,
            "refused a manifest answer that is not a manifest");
        self.protocol(&format!(
            "its manifest answer is not a manifest (judged by {by})"
        ))
    }
}

/// `4 MiB`, `64 KiB`, `1000 bytes`: a limit as config.toml writes it.
fn human_size(n: usize) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

fn basic(c: &BasicCredentials) -> HeaderValue {
    use base64::Engine as _;
    let raw = format!("{}:{}", c.username, c.password.expose());
    let mut v = HeaderValue::from_str(&format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
    .expect("base64 is a valid header value");
    v.set_sensitive(true);
    v
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// reqwest's top-level message is often just "error sending request"; the cause
/// chain says "connection refused".
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
