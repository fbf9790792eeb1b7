//! The HTTP client for one upstream registry: anonymous, Basic or Bearer auth,
//! manifest and blob fetches, tag listing.
//!
//! Spec: distribution-spec `spec.md#pull` and the token auth flow in `auth.rs`.
//! Redirects (Docker Hub sends blobs to a CDN) are followed by reqwest, which
//! drops `Authorization` when the host changes; a redirect is never cached since
//! only verified bytes are.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tokio::time::Instant;

use std::sync::Arc;

use super::UpstreamConfig;
use crate::metrics::Metrics;
use crate::registry::{Digest, MediaType, Reference, RepoName, MANIFEST_TYPES, MAX_MANIFEST_BYTES};
use crate::secret::Secret;

use super::auth::{parse_challenge, Challenge, TokenCache, TokenResponse};
use super::credentials::{self, BasicCredentials, CredentialSource};
use super::UpstreamError;

pub struct UpstreamClient {
    name: String,
    base: reqwest::Url,
    http: reqwest::Client,
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
    /// Some request got an answer (for `/readyz`).
    answered: std::sync::atomic::AtomicBool,
    metrics: Arc<Metrics>,
}

/// How long an upstream that could not be reached is left alone.
const DOWN_FOR: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Backoff {
    until: Option<Instant>,
    /// 429s in a row: the wait doubles with each.
    strikes: u32,
}

/// How long to leave an upstream alone after a 429 without `Retry-After`:
/// 1 minute, doubling per 429 in a row, at most 15 minutes. Docker Hub's
/// window is 6 hours, so asking every few seconds would only burn requests.
fn backoff_after(strikes: u32) -> Duration {
    Duration::from_secs(60u64 << strikes.min(4)).min(Duration::from_secs(900))
}

/// What the upstream's latest `ratelimit-limit` / `ratelimit-remaining`
/// headers said (`100;w=21600`: 100 pulls per 21,600 s window).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub limit: Option<i64>,
    pub remaining: i64,
    /// The window in seconds (`w=`), when given.
    pub window: Option<u64>,
    pub seen: Instant,
}

/// `w=21600` of `100;w=21600`.
fn ratelimit_window(h: &HeaderMap, name: &str) -> Option<u64> {
    header_str(h, name)?
        .split(';')
        .skip(1)
        .find_map(|p| p.trim().strip_prefix("w=")?.parse().ok())
}

/// `ratelimit-remaining: 76;w=21600` → 76.
fn ratelimit_value(h: &HeaderMap, name: &str) -> Option<i64> {
    header_str(h, name)?.split(';').next()?.trim().parse().ok()
}

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

/// Largest tag list page read from an upstream (Docker Hub's biggest
/// repositories list a few thousand tags: tens of KiB). Parsed, a page of
/// the shortest tags costs about eight times this in memory.
const MAX_TAG_LIST_BYTES: usize = 4 << 20;

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
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("wharf/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(cfg.connect_timeout)
            // A stalled upstream must not hold clients forever; a slow one may.
            .read_timeout(Duration::from_secs(60))
            .pool_idle_timeout(Duration::from_secs(90))
            .redirect(reqwest::redirect::Policy::limited(5));
        if let Some(pem) = &cfg.ca_pem {
            for c in reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| UpstreamError::Config(format!("{}: ca_file: {e}", cfg.name)))?
            {
                b = b.add_root_certificate(c);
            }
        }
        let http = b
            .build()
            .map_err(|e| UpstreamError::Config(format!("{}: {e}", cfg.name)))?;
        Ok(UpstreamClient {
            name: cfg.name.clone(),
            base: cfg.url.clone(),
            http,
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
        let op = op.label();
        let started = Instant::now();
        let r = self.send_inner(method, url, repo, headers).await;
        if !matches!(r, Err(UpstreamError::Offline { .. })) {
            self.metrics
                .upstream_duration
                .with_label_values(&[&self.name, op])
                .observe(started.elapsed().as_secs_f64());
        }
        if let Err(e) = &r {
            self.count_error(e);
        }
        r
    }

    fn count_error(&self, e: &UpstreamError) {
        self.metrics
            .upstream_errors
            .with_label_values(&[&self.name, e.kind()])
            .inc();
    }

    async fn send_inner(
        &self,
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
                Some(c) => self.authorization(c, &scope, refused.as_ref()).await?,
                None => None,
            };
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(a) = &auth {
                req = req.header(http::header::AUTHORIZATION, a.clone());
            }
            self.check_backoff()?;
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
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
                                self.tokens.put(scope, t);
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
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        // Credentials go to the realm the registry names (GitLab's is on
        // another host), but never in clear when the registry itself is TLS.
        if self.credentials.is_some() && self.base.scheme() == "https" && url.scheme() != "https" {
            return Err(
                self.protocol("token realm is not https; wharf does not send credentials in clear")
            );
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
        let body = resp.bytes().await.map_err(|e| self.transport(e))?;
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

    /// Refuses to send while backing off after a 429.
    fn check_backoff(&self) -> Result<(), UpstreamError> {
        if self.offline {
            return Err(UpstreamError::Offline {
                upstream: self.name.clone(),
            });
        }
        if let Some((until, reason)) = &*self.down.lock() {
            let now = Instant::now();
            if *until > now {
                return Err(UpstreamError::Unreachable {
                    upstream: self.name.clone(),
                    reason: format!(
                        "{reason} (serving from cache only; retrying in {} s)",
                        (*until - now).as_secs() + 1
                    ),
                });
            }
        }
        let b = self.backoff.lock();
        match b.until {
            Some(until) if until > Instant::now() => {
                self.metrics
                    .upstream_backoff_skipped
                    .with_label_values(&[&self.name])
                    .inc();
                Err(UpstreamError::TooManyRequests {
                    upstream: self.name.clone(),
                    retry_after: (until - Instant::now()).as_secs().max(1),
                })
            }
            _ => Ok(()),
        }
    }

    /// Records Docker Hub's rate-limit headers, and starts a backoff on 429.
    fn note_limits(&self, resp: &reqwest::Response) -> Result<(), UpstreamError> {
        let h = resp.headers();
        if let Some(v) = ratelimit_value(h, "ratelimit-limit") {
            self.metrics
                .upstream_ratelimit_limit
                .with_label_values(&[&self.name])
                .set(v);
        }
        if let Some(v) = ratelimit_value(h, "ratelimit-remaining") {
            self.metrics
                .upstream_ratelimit_remaining
                .with_label_values(&[&self.name])
                .set(v);
            *self.rate_limit.lock() = Some(RateLimit {
                limit: ratelimit_value(h, "ratelimit-limit"),
                remaining: v,
                window: ratelimit_window(h, "ratelimit-remaining")
                    .or_else(|| ratelimit_window(h, "ratelimit-limit")),
                seen: Instant::now(),
            });
        }
        let mut b = self.backoff.lock();
        if resp.status() != StatusCode::TOO_MANY_REQUESTS {
            if resp.status().is_success() {
                b.strikes = 0;
            }
            return Ok(());
        }
        let wait = header_str(h, "retry-after")
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.clamp(1, 3600)))
            .unwrap_or_else(|| backoff_after(b.strikes));
        b.strikes = b.strikes.saturating_add(1);
        b.until = Some(Instant::now() + wait);
        self.metrics
            .upstream_throttled
            .with_label_values(&[&self.name])
            .inc();
        tracing::warn!(upstream = %self.name, wait_s = wait.as_secs(),
            remaining = ratelimit_value(h, "ratelimit-remaining"),
            "upstream answered 429 Too Many Requests; serving from cache only until the wait is over");
        Err(UpstreamError::TooManyRequests {
            upstream: self.name.clone(),
            retry_after: wait.as_secs(),
        })
    }

    fn transport(&self, e: reqwest::Error) -> UpstreamError {
        // reqwest's Display includes the URL, never headers: safe to report.
        UpstreamError::Unreachable {
            upstream: self.name.clone(),
            reason: error_chain(&e),
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
            let body = resp.bytes().await.unwrap_or_default();
            serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_owned))
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

    /// `HEAD /v2/<name>/manifests/<reference>`: cheap (Docker Hub does not count
    /// it against the pull limit), used to revalidate tags.
    pub async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestHead, UpstreamError> {
        let mut h = HeaderMap::new();
        h.insert(http::header::ACCEPT, Self::manifest_accept());
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let resp = self.send(Op::Manifest, Method::HEAD, url, repo, h).await?;
        let resp = self.check(resp, true).await?;
        Ok(ManifestHead {
            digest: header_str(resp.headers(), "docker-content-digest")
                .and_then(|s| s.parse().ok()),
            media_type: header_str(resp.headers(), "content-type").and_then(|s| s.parse().ok()),
        })
    }

    /// `GET` a manifest, bounded in size, with its digest computed and checked
    /// against the reference (by digest) or the upstream's header (by tag).
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestBody, UpstreamError> {
        let mut h = HeaderMap::new();
        h.insert(http::header::ACCEPT, Self::manifest_accept());
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let resp = self.send(Op::Manifest, Method::GET, url, repo, h).await?;
        let mut resp = self.check(resp, false).await?;
        if resp
            .content_length()
            .is_some_and(|l| l > MAX_MANIFEST_BYTES as u64)
        {
            return Err(self.protocol("manifest larger than 4 MiB"));
        }
        let media_type: MediaType = header_str(resp.headers(), "content-type")
            .ok_or_else(|| self.protocol("manifest without Content-Type"))?
            .parse()
            .map_err(|_| self.protocol("manifest with an invalid Content-Type"))?;
        let header_digest: Option<Digest> =
            header_str(resp.headers(), "docker-content-digest").and_then(|s| s.parse().ok());
        let mut buf = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport(e))? {
            if buf.len() + chunk.len() > MAX_MANIFEST_BYTES {
                return Err(self.protocol("manifest larger than 4 MiB"));
            }
            buf.extend_from_slice(&chunk);
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
        let mut resp = self.check(resp, false).await?;
        let link = header_str(resp.headers(), "link").map(str::to_owned);
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport(e))? {
            if body.len() + chunk.len() > MAX_TAG_LIST_BYTES {
                return Err(self.protocol("tag list page larger than 4 MiB"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body.into(), link))
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
