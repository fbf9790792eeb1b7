//! Where an upstream's credentials come from. Every kind ends as what the
//! registry (or its token service) takes: a Basic username and secret.
//!
//! - a username and password or token from a file, an environment variable, a
//!   systemd credential or the config file (GitLab personal, project, group and
//!   deploy tokens are this kind too);
//! - a Docker `config.json` read as docker reads it: a credential helper
//!   (`credHelpers`, `credsStore`: `docker-credential-gcloud` for Artifact
//!   Registry) or an `auths` entry (`docker login`); see `docker.rs` and
//!   `helper.rs`;
//! - a Google service-account JSON key, sent as `_json_key` (or
//!   `_json_key_base64`), which Artifact Registry's token service accepts;
//! - the GCE/GKE metadata server's access token for the node's service
//!   account, sent as `oauth2accesstoken` and refreshed before it expires.
//!
//! Files are re-read when they change (a rotated token needs no restart). A
//! replacement that does not parse is logged and the last good value kept.
//! Secrets live in [`Secret`], which never prints.
//!
//! [`CredentialSpec`] is what a validated config says; [`source`] builds the
//! running [`CredentialSource`] from it.

mod docker;
pub mod helper;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::watched::Watched;

use super::UpstreamError;

pub use docker::{docker_config_auth, DockerAuth};
pub use helper::HelperProgram;

/// Where an upstream's credentials come from (built into a
/// [`CredentialSource`] by [`source`]). Secrets never print.
#[derive(Clone, Debug)]
pub enum CredentialSpec {
    Password {
        username: String,
        password: SecretSpec,
    },
    DockerConfig {
        path: PathBuf,
        /// `credHelpers`/`auths` keys to look up, first found wins.
        keys: Vec<String>,
        /// How long a credential helper may take before it is killed.
        helper_timeout: Duration,
        /// The helper the file named when the config was loaded, found on
        /// `PATH` then (a file that later names another is looked up then).
        helper: Option<HelperProgram>,
    },
    JsonKey {
        path: PathBuf,
        base64: bool,
    },
    GceMetadata {
        /// host[:port] of the metadata server.
        host: String,
        account: String,
    },
}

#[derive(Clone, Debug)]
pub enum SecretSpec {
    /// Read at start-up (environment, config file).
    Value(Secret),
    /// Re-read when it changes. `check_mode`: refused when group or others can
    /// read it (not for systemd credentials, whose directory is private).
    File { path: PathBuf, check_mode: bool },
}

/// Basic credentials, as presented to a registry or its token service.
#[derive(Clone)]
pub struct BasicCredentials {
    pub username: String,
    pub password: Secret,
}

impl fmt::Debug for BasicCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicCredentials")
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

/// One upstream's source of credentials.
pub trait CredentialSource: Send + Sync {
    /// The credentials to present now.
    fn get(&self) -> BoxFuture<'_, Result<BasicCredentials, UpstreamError>>;
    /// The upstream refused what [`get`](Self::get) gave. Returns true when
    /// asking again may give something else (a cached token was dropped), so
    /// one retry is worth it.
    fn rejected(&self) -> bool {
        false
    }
    /// For logs and `check-config`: where the credentials come from, never
    /// what they are.
    fn describe(&self) -> String;
}

/// Builds the source a validated config describes.
/// `metrics`, when given, counts metadata-server token fetches.
pub fn source(
    upstream: &str,
    spec: &CredentialSpec,
    metrics: Option<&Metrics>,
) -> Arc<dyn CredentialSource> {
    match spec {
        CredentialSpec::Password { username, password } => Arc::new(Password {
            upstream: upstream.to_owned(),
            username: username.clone(),
            password: match password {
                SecretSpec::Value(s) => PasswordValue::Fixed(s.clone()),
                SecretSpec::File { path, check_mode } => {
                    PasswordValue::File(Watched::new(path.clone(), *check_mode, |b: &[u8]| {
                        std::str::from_utf8(b)
                            .map(|s| Secret::new(s.trim_end_matches(['\n', '\r'])))
                            .map_err(|_| "not UTF-8".to_owned())
                    }))
                }
            },
        }),
        CredentialSpec::DockerConfig {
            path,
            keys,
            helper_timeout,
            helper,
        } => Arc::new(docker::DockerConfig::new(
            upstream,
            path.clone(),
            keys.clone(),
            *helper_timeout,
            helper.clone(),
        )),
        CredentialSpec::JsonKey { path, base64 } => {
            let b64 = *base64;
            Arc::new(FromFile {
                upstream: upstream.to_owned(),
                what: "service-account JSON key",
                file: Watched::new(path.clone(), true, move |b: &[u8]| json_key(b, b64)),
            })
        }
        CredentialSpec::GceMetadata { host, account } => Arc::new(GceMetadata::new(
            upstream,
            host,
            account,
            metrics.map(|m| m.token_fetches.with_label_values(&[upstream, "metadata"])),
        )),
    }
}

// ------------------------------------------------------------------- sources

fn file_error<T>(upstream: &str, w: &Watched<T>, why: String) -> UpstreamError {
    UpstreamError::Config(format!(
        "{upstream}: credentials in {}: {why}",
        w.path().display()
    ))
}

enum PasswordValue {
    /// From the environment or the config file, read once at start-up.
    Fixed(Secret),
    File(Watched<Secret>),
}

/// A username and a password or token.
struct Password {
    upstream: String,
    username: String,
    password: PasswordValue,
}

impl CredentialSource for Password {
    fn get(&self) -> BoxFuture<'_, Result<BasicCredentials, UpstreamError>> {
        let r = match &self.password {
            PasswordValue::Fixed(s) => Ok(s.clone()),
            PasswordValue::File(w) => w
                .get(&self.upstream)
                .map(|s| (*s).clone())
                .map_err(|why| file_error(&self.upstream, w, why)),
        };
        Box::pin(async move {
            Ok(BasicCredentials {
                username: self.username.clone(),
                password: r?,
            })
        })
    }
    fn describe(&self) -> String {
        match &self.password {
            PasswordValue::Fixed(_) => {
                format!("user {} (password from env or config)", self.username)
            }
            PasswordValue::File(w) => format!(
                "user {} (password in {})",
                self.username,
                w.path().display()
            ),
        }
    }
}

/// Credentials parsed out of a whole file (config.json, a JSON key).
struct FromFile {
    upstream: String,
    what: &'static str,
    file: Watched<BasicCredentials>,
}

impl CredentialSource for FromFile {
    fn get(&self) -> BoxFuture<'_, Result<BasicCredentials, UpstreamError>> {
        let r = self
            .file
            .get(&self.upstream)
            .map(|c| (*c).clone())
            .map_err(|why| file_error(&self.upstream, &self.file, why));
        Box::pin(async move { r })
    }
    fn describe(&self) -> String {
        format!("{} {}", self.what, self.file.path().display())
    }
}

/// A Google service-account key as Artifact Registry takes it: user
/// `_json_key` with the file's text, or `_json_key_base64` with its base64.
pub fn json_key(bytes: &[u8], base64: bool) -> Result<BasicCredentials, String> {
    use base64::Engine as _;
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    if v.get("type").and_then(|t| t.as_str()) != Some("service_account")
        || v.get("private_key").and_then(|k| k.as_str()).is_none()
        || v.get("client_email").and_then(|k| k.as_str()).is_none()
    {
        return Err(
            "not a service-account key (needs type=service_account, private_key, client_email)"
                .into(),
        );
    }
    Ok(if base64 {
        BasicCredentials {
            username: "_json_key_base64".into(),
            password: Secret::new(base64::engine::general_purpose::STANDARD.encode(bytes)),
        }
    } else {
        BasicCredentials {
            username: "_json_key".into(),
            password: Secret::new(text.trim_end()),
        }
    })
}

// ---------------------------------------------------------- metadata server

/// The node's service-account token from the GCE/GKE metadata server
/// (`GET /computeMetadata/v1/instance/service-accounts/<account>/token` with
/// `Metadata-Flavor: Google`; answer `{"access_token","expires_in",
/// "token_type"}`), presented as Basic `oauth2accesstoken:<token>`.
struct GceMetadata {
    upstream: String,
    url: String,
    http: reqwest::Client,
    token: Mutex<Option<(Secret, Instant)>>,
    fetches: Option<prometheus::IntCounter>,
    /// One refresh at a time; the others wait for it.
    refreshing: tokio::sync::Mutex<()>,
}

/// The metadata server hands out the same token until it has about 5 minutes
/// left; asking again inside that window would only return it again. So a
/// token is used until 4 minutes before it ends (or 90% of a short lifetime).
fn metadata_margin(lifetime: Duration) -> Duration {
    Duration::from_secs(240).min(lifetime / 10)
}

#[derive(serde::Deserialize)]
struct MetadataToken {
    access_token: String,
    expires_in: u64,
}

impl GceMetadata {
    fn new(
        upstream: &str,
        host: &str,
        account: &str,
        fetches: Option<prometheus::IntCounter>,
    ) -> GceMetadata {
        GceMetadata {
            upstream: upstream.to_owned(),
            url: format!(
                "http://{host}/computeMetadata/v1/instance/service-accounts/{account}/token"
            ),
            http: reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(Duration::from_secs(3))
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("a plain client builds"),
            token: Mutex::new(None),
            fetches,
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Option<Secret> {
        match self.token.lock().as_ref() {
            Some((t, until)) if *until > Instant::now() => Some(t.clone()),
            _ => None,
        }
    }

    async fn fetch(&self) -> Result<Secret, UpstreamError> {
        let fail = |what: String| UpstreamError::Unreachable {
            upstream: self.upstream.clone(),
            reason: format!("metadata server: {what}"),
        };
        let resp = self
            .http
            .get(&self.url)
            .header("Metadata-Flavor", "Google")
            .send()
            .await
            .map_err(|e| fail(super::client::error_chain(&e)))?;
        // A real metadata server says so; anything else (a captive proxy, a
        // wrong host) is not trusted with the answer.
        let flavor_ok = resp
            .headers()
            .get("metadata-flavor")
            .is_some_and(|v| v == "Google");
        let status = resp.status();
        if !status.is_success() {
            return Err(fail(format!("answered {status} for {}", self.url)));
        }
        if !flavor_ok {
            return Err(fail("answer without Metadata-Flavor: Google".into()));
        }
        // Read against the same bound as a token service's answer (the
        // metadata server's is a few hundred bytes).
        let limit = crate::upstream::BodyLimits::default().token;
        let mut resp = resp;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| fail(e.to_string()))? {
            if body.len() + chunk.len() > limit {
                return Err(fail(format!("answer larger than {} KiB", limit >> 10)));
            }
            body.extend_from_slice(&chunk);
        }
        let t: MetadataToken =
            serde_json::from_slice(&body).map_err(|_| fail("answer is not token JSON".into()))?;
        if t.access_token.is_empty() {
            return Err(fail("empty access_token".into()));
        }
        let lifetime =
            Duration::from_secs(t.expires_in.max(1)).min(super::auth::MAX_TOKEN_LIFETIME);
        let until = Instant::now() + lifetime - metadata_margin(lifetime);
        let secret = Secret::new(t.access_token);
        *self.token.lock() = Some((secret.clone(), until));
        if let Some(c) = &self.fetches {
            c.inc();
        }
        tracing::info!(upstream = %self.upstream, expires_in = t.expires_in,
            "fetched the node's access token from the metadata server");
        Ok(secret)
    }
}

impl CredentialSource for GceMetadata {
    fn get(&self) -> BoxFuture<'_, Result<BasicCredentials, UpstreamError>> {
        Box::pin(async move {
            let token = match self.current() {
                Some(t) => t,
                None => {
                    let _one = self.refreshing.lock().await;
                    match self.current() {
                        Some(t) => t,
                        None => self.fetch().await?,
                    }
                }
            };
            Ok(BasicCredentials {
                username: "oauth2accesstoken".into(),
                password: token,
            })
        })
    }
    fn rejected(&self) -> bool {
        self.token.lock().take().is_some()
    }
    fn describe(&self) -> String {
        format!("metadata server token ({})", self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn json_keys() {
        let key = br#"{"type":"service_account","client_email":"a@p.iam.gserviceaccount.com","private_key":"-----BEGIN PRIVATE KEY-----\nX\n-----END PRIVATE KEY-----\n"}"#;
        let c = json_key(key, false).unwrap();
        assert_eq!(c.username, "_json_key");
        assert_eq!(c.password.expose().as_bytes(), key);
        let c = json_key(key, true).unwrap();
        assert_eq!(c.username, "_json_key_base64");
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(c.password.expose())
                .unwrap(),
            key
        );
        assert!(json_key(br#"{"type":"authorized_user"}"#, false).is_err());
    }

    #[test]
    fn metadata_tokens_are_refreshed_before_the_server_rotates_them() {
        assert_eq!(
            metadata_margin(Duration::from_secs(3599)),
            Duration::from_secs(240)
        );
        assert_eq!(
            metadata_margin(Duration::from_secs(20)),
            Duration::from_secs(2)
        );
    }
}
