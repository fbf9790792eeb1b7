//! Access control on the mirror: which clients may pull what.
//!
//! In order, for each request:
//! 1. the client's address against `deny_networks` and `allow_networks`;
//! 2. who the client is: Basic credentials checked against the htpasswd file
//!    (bcrypt, throttled per client address and user: [`logins`]), a bearer
//!    token from the token list, or a verified TLS client certificate;
//! 3. the upstream's rules: anonymous allowed or not, which users, which
//!    repositories (globs over the upstream's repository names).
//!
//! Cached content is checked exactly like uncached content: the decision is
//! made before the cache is consulted. Credentials a client presents that
//! wharf does not know (dockerd sends its Docker Hub login to a mirror) are
//! ignored where anonymous access is allowed, and answered with 401 elsewhere
//! (429 when that address has failed too often for that user).
//!
//! The htpasswd and token files fail closed: while one is missing or broken
//! it grants nothing (logged at error level, `wharf_access_file_valid` 0),
//! so deleting the file revokes everyone in it.

mod client_cert;
mod htpasswd;
pub mod logins;
mod settings;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use globset::{GlobBuilder, GlobMatcher};
use http::HeaderMap;
use prometheus::{IntGaugeVec, Opts};

use crate::metrics::Metrics;
use crate::registry::RepoName;
use crate::watched::Watched;

pub use client_cert::{certificate_user, CertIdentity, CERT_USER};
pub use htpasswd::{Htpasswd, TokenList};
pub use logins::LoginLimits;
pub use settings::{AccessConfig, UpstreamAccess};

/// What the connection says about the client.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    pub addr: SocketAddr,
    /// The user that a certificate the TLS layer verified against
    /// `client_ca_file` names (its subject CN, or the configured SAN);
    /// `None` without a verified certificate, or where certificates do not
    /// authenticate ([`Access::certificate_user`]).
    pub cert_user: Option<String>,
}

/// Who the client is, as far as wharf can tell.
#[derive(Clone, Debug, Default)]
pub struct Who {
    pub user: Option<String>,
    /// Credentials were presented but are not wharf's (or are wrong).
    pub unknown_credentials: bool,
    /// Basic credentials were not checked: this address failed too often
    /// for this user lately. Seconds until it may try again.
    pub throttled: Option<u64>,
}

/// Why a request was refused. 401 for `Unauthenticated` (with a challenge),
/// 403 `DENIED` for the rest.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Denied {
    #[error("client address {0} may not use this mirror")]
    Network(IpAddr),
    #[error("{}", if *unknown_credentials { "authentication failed: unknown user, wrong password or unknown token" } else { "authentication required" })]
    Unauthenticated { unknown_credentials: bool },
    #[error("user {user} may not pull from upstream {upstream} through this mirror")]
    User { user: String, upstream: String },
    #[error("repository {repo} of upstream {upstream} is not served through this mirror")]
    Repository { repo: String, upstream: String },
    #[error("too many failed logins for this user from this address; retry in {retry_after} s")]
    Throttled { retry_after: u64 },
}

impl Denied {
    fn reason(&self) -> &'static str {
        match self {
            Denied::Network(_) => "network",
            Denied::Unauthenticated {
                unknown_credentials: true,
            } => "bad_credentials",
            Denied::Unauthenticated { .. } => "unauthenticated",
            Denied::User { .. } => "user",
            Denied::Repository { .. } => "repository",
            Denied::Throttled { .. } => "throttled",
        }
    }
}

/// A repository glob: `*` stays within one path component, `**` spans them.
pub fn repo_glob(pattern: &str) -> Result<GlobMatcher, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| e.to_string())
}

struct UpstreamRules {
    name: String,
    rules: UpstreamAccess,
    repos: Vec<GlobMatcher>,
}

pub struct Access {
    cfg: AccessConfig,
    upstreams: Vec<UpstreamRules>,
    htpasswd: Option<Watched<Htpasswd>>,
    tokens: Option<Watched<TokenList>>,
    /// Password checks: remembered logins, budgets, throttling.
    logins: logins::Logins,
    /// 1 while the file (`htpasswd_file`, `tokens_file`) is usable.
    file_valid: IntGaugeVec,
    metrics: Arc<Metrics>,
}

impl Access {
    /// The mirror-wide settings and each upstream's rules, by upstream name.
    pub fn new(
        cfg: &AccessConfig,
        upstreams: impl IntoIterator<Item = (String, UpstreamAccess)>,
        metrics: Arc<Metrics>,
    ) -> Access {
        let upstreams = upstreams
            .into_iter()
            .map(|(name, rules)| UpstreamRules {
                repos: rules
                    .repositories
                    .iter()
                    .map(|p| repo_glob(p).expect("validated with the config"))
                    .collect(),
                name,
                rules,
            })
            .collect();
        let cfg = cfg.clone();
        let file_valid = IntGaugeVec::new(
            Opts::new(
                "wharf_access_file_valid",
                "1 while the access file (htpasswd_file, tokens_file) is readable, private where required and parses; 0 while it grants nobody",
            ),
            &["file"],
        )
        .expect("valid metric");
        metrics
            .registry()
            .register(Box::new(file_valid.clone()))
            .expect("unique metric");
        for (file, on) in [
            ("htpasswd_file", cfg.htpasswd_file.is_some()),
            ("tokens_file", cfg.tokens_file.is_some()),
        ] {
            if on {
                file_valid.with_label_values(&[file]).set(1);
            }
        }
        Access {
            htpasswd: cfg.htpasswd_file.clone().map(|p| {
                Watched::new(p, false, |b: &[u8]| {
                    Htpasswd::parse(std::str::from_utf8(b).map_err(|_| "not UTF-8".to_owned())?)
                })
                .fail_closed()
            }),
            tokens: cfg
                .tokens_file
                .clone()
                .map(|p| Watched::new(p, true, TokenList::parse).fail_closed()),
            logins: logins::Logins::new(cfg.logins, metrics.registry()),
            file_valid,
            cfg,
            upstreams,
            metrics,
        }
    }

    /// The file's current value (`None` while it grants nobody), with its
    /// gauge kept up to date.
    fn current<T>(&self, file: &'static str, w: &Watched<T>) -> Option<Arc<T>> {
        let v = w.get("access").ok();
        self.file_valid
            .with_label_values(&[file])
            .set(i64::from(v.is_some()));
        v
    }

    fn deny(&self, d: Denied) -> Denied {
        self.metrics
            .access_denied
            .with_label_values(&[d.reason()])
            .inc();
        d
    }

    /// Step 1: the client's network.
    pub fn check_network(&self, ip: IpAddr) -> Result<(), Denied> {
        let ip = ip.to_canonical();
        let denied = self.cfg.deny_networks.iter().any(|n| n.contains(&ip));
        let allowed = self.cfg.allow_networks.is_empty()
            || self.cfg.allow_networks.iter().any(|n| n.contains(&ip));
        if denied || !allowed {
            return Err(self.deny(Denied::Network(ip)));
        }
        Ok(())
    }

    /// The user a verified client certificate (DER) names, as
    /// `client_certificate_user` says; `None` when certificates do not
    /// authenticate (`client_certificates` off: nothing is parsed).
    /// Computed once per connection.
    pub fn certificate_user(&self, der: &[u8]) -> Option<String> {
        self.cfg
            .client_certificates
            .then(|| certificate_user(der, self.cfg.client_certificate_user))
    }

    /// Step 2: who the client is.
    pub async fn identify(&self, headers: &HeaderMap, client: &ClientInfo) -> Who {
        let mut who = Who::default();
        if let Some(auth) = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        {
            let (scheme, rest) = auth.trim().split_once(' ').unwrap_or((auth, ""));
            let rest = rest.trim();
            let user = if scheme.eq_ignore_ascii_case("basic") {
                self.basic(rest, client.addr.ip()).await
            } else if scheme.eq_ignore_ascii_case("bearer") {
                Ok(self.bearer(rest))
            } else {
                Ok(None)
            };
            match user {
                Ok(Some(u)) => who.user = Some(u),
                Ok(None) => who.unknown_credentials = true,
                Err(retry_after) => {
                    who.unknown_credentials = true;
                    who.throttled = Some(retry_after);
                }
            }
        }
        if let (None, Some(user)) = (&who.user, &client.cert_user) {
            who.user = Some(user.clone());
            who.unknown_credentials = false;
            who.throttled = None;
        }
        who
    }

    /// The user Basic credentials name, if the password is right; `Err`
    /// (seconds to wait) when this address failed too often for that user.
    async fn basic(&self, b64: &str, ip: IpAddr) -> Result<Option<String>, u64> {
        use base64::Engine as _;
        let refuse = |user: &str, why: &str| {
            // The user name helps the operator; the password never appears.
            tracing::info!(user, why, "client Basic credentials not accepted");
            Ok(None)
        };
        let Some(file) = &self.htpasswd else {
            return refuse("-", "no htpasswd_file configured");
        };
        let Some(htpasswd) = self.current("htpasswd_file", file) else {
            return refuse(
                "-",
                "htpasswd_file unusable: nobody is accepted until it is fixed",
            );
        };
        let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok();
        let Some((user, pass)) = raw
            .and_then(|r| String::from_utf8(r).ok())
            .and_then(|r| r.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())))
        else {
            return refuse("-", "malformed Basic credentials");
        };
        let hash = htpasswd.hash(&user);
        match self
            .logins
            .check(ip, &user, pass, hash, htpasswd.cost())
            .await
        {
            logins::Checked::Accepted => Ok(Some(user)),
            logins::Checked::Refused if hash.is_none() => refuse(&user, "unknown user"),
            logins::Checked::Refused => refuse(&user, "wrong password"),
            logins::Checked::Throttled { retry_after } => {
                tracing::info!(user, client = %ip, "too many failed logins: refused without a password check");
                Err(retry_after.as_secs().max(1))
            }
        }
    }

    fn bearer(&self, token: &str) -> Option<String> {
        let found = self
            .tokens
            .as_ref()
            .and_then(|t| self.current("tokens_file", t))
            .and_then(|list| list.lookup(token).map(str::to_owned));
        if found.is_none() {
            tracing::info!("client bearer token not accepted");
        }
        found
    }

    /// Step 3: may `who` pull `repo` (the upstream's name for it) from the
    /// upstream named `upstream`? An upstream without rules (none is
    /// configured under that name) refuses everyone.
    pub fn authorize(&self, upstream: &str, who: &Who, repo: &RepoName) -> Result<(), Denied> {
        let Some(u) = self.upstreams.iter().find(|u| u.name == upstream) else {
            return Err(self.deny(Denied::Repository {
                repo: repo.to_string(),
                upstream: upstream.to_owned(),
            }));
        };
        match &who.user {
            Some(user) => {
                if let Some(users) = &u.rules.users {
                    if !users.iter().any(|x| x == user) {
                        return Err(self.deny(Denied::User {
                            user: user.clone(),
                            upstream: u.name.clone(),
                        }));
                    }
                }
            }
            None if u.rules.anonymous => {}
            None => return Err(self.deny(unauthenticated(who))),
        }
        if !u.repos.is_empty() && !u.repos.iter().any(|g| g.is_match(repo.as_str())) {
            return Err(self.deny(Denied::Repository {
                repo: repo.to_string(),
                upstream: u.name.clone(),
            }));
        }
        Ok(())
    }

    /// `GET /v2/`: clients learn here whether to authenticate. An
    /// unauthenticated client is challenged when some upstream needs
    /// authentication (skopeo and dockerd only send credentials after a
    /// challenge at the ping), and always when it sent credentials wharf
    /// does not know while some upstream needs them.
    pub fn authorize_ping(&self, who: &Who) -> Result<(), Denied> {
        if who.user.is_some() || self.upstreams.iter().all(|u| u.rules.anonymous) {
            return Ok(());
        }
        Err(self.deny(unauthenticated(who)))
    }
}

/// Why a client without a user is refused where one is needed: 429 while
/// its login is throttled, else 401.
fn unauthenticated(who: &Who) -> Denied {
    match who.throttled {
        Some(retry_after) => Denied::Throttled { retry_after },
        None => Denied::Unauthenticated {
            unknown_credentials: who.unknown_credentials,
        },
    }
}
