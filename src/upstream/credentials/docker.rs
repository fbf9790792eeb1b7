//! A Docker `config.json` read for one upstream the way docker reads it
//! (docker/cli `cli/config/configfile/file.go`, `credentials/native_store.go`):
//! for the upstream's keys, `credHelpers[key]` wins, else `credsStore`, else
//! the `auths` entry. When a helper has nothing for the server, the `auths`
//! entry is used, as docker does.
//!
//! A helper's answer is held, not asked for on every request:
//!
//! - for [`REASK_AFTER`] (5 minutes), or until [`EXPIRY_MARGIN`] before the
//!   Secret expires when it is a JWT that says so; gcloud's access tokens live
//!   an hour and are opaque, so a rotated one is picked up within 5 minutes;
//! - until the upstream refuses it: [`CredentialSource::rejected`] drops it
//!   and the helper is asked again, unless it answered less than [`MIN_AGE`]
//!   ago (requests in flight refusing its predecessor, or a helper that keeps
//!   giving a refused value, must not run it once per request);
//! - a failure (timeout, exit status, unusable answer) is held for
//!   [`FAILURE_HOLD`], so a broken helper is run at most once per 5 s
//!   whatever the request rate.
//!
//! One ask at a time per upstream; requests arriving meanwhile wait for it
//! and share its answer.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::secret::Secret;
use crate::watched::Watched;

use super::helper::{check_name, Answer, HelperError, HelperProgram};
use super::{file_error, BasicCredentials, CredentialSource, UpstreamError};

/// A helper's answer is asked for again after this long.
pub const REASK_AFTER: Duration = Duration::from_secs(300);
/// A Secret that says when it expires is asked for again this long before.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// A refusal does not drop an answer younger than this.
pub const MIN_AGE: Duration = Duration::from_secs(1);
/// A failed ask is answered from memory for this long.
pub const FAILURE_HOLD: Duration = Duration::from_secs(5);

/// What a `config.json` says about one upstream.
#[derive(Clone, Debug)]
pub enum DockerAuth {
    /// An `auths` entry.
    Stored(BasicCredentials),
    /// Ask `docker-credential-<helper> get` for `server_url`; `stored` is the
    /// `auths` entry, used when the helper has nothing.
    Helper {
        helper: String,
        server_url: String,
        stored: Option<BasicCredentials>,
    },
}

/// Reads a `config.json` for `keys` (first present wins): `credHelpers`, then
/// `credsStore`, then `auths`. Errors never quote a secret.
pub fn docker_config_auth(bytes: &[u8], keys: &[String]) -> Result<DockerAuth, String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let first_key = keys.first().ok_or("no config.json key to look up")?;
    let auths = v.get("auths").and_then(|a| a.as_object());
    let entry = auths.and_then(|a| keys.iter().find_map(|k| a.get_key_value(k)));
    let stored = || entry.and_then(|(_, e)| auths_entry(e).ok());
    let helpers = v.get("credHelpers").and_then(|h| h.as_object());
    if let Some((key, helper)) =
        helpers.and_then(|h| keys.iter().find_map(|k| Some((k, h.get(k)?))))
    {
        let helper = helper
            .as_str()
            .ok_or_else(|| format!("credHelpers[{key:?}] is not a string"))?;
        check_name(helper)?;
        return Ok(DockerAuth::Helper {
            helper: helper.to_owned(),
            server_url: key.clone(),
            stored: stored(),
        });
    }
    if let Some(store) = v
        .get("credsStore")
        .and_then(|s| s.as_str())
        .filter(|s| !s.is_empty())
    {
        check_name(store)?;
        // `docker login` with a store leaves `auths[<server>] = {}`: that key
        // is the server the store knows it by.
        let server_url = entry
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| first_key.clone());
        return Ok(DockerAuth::Helper {
            helper: store.to_owned(),
            server_url,
            stored: stored(),
        });
    }
    match entry {
        Some((_, e)) => auths_entry(e).map(DockerAuth::Stored),
        None => Err(format!(
            "no auths entry for {}{}",
            keys.join(" or "),
            if helpers.is_some() {
                ", and no credHelpers entry for them"
            } else {
                ""
            }
        )),
    }
}

/// `auths[key].auth` (base64 of `user:password`) or `.username` + `.password`.
fn auths_entry(entry: &serde_json::Value) -> Result<BasicCredentials, String> {
    use base64::Engine as _;
    if entry.get("identitytoken").is_some() && entry.get("auth").is_none() {
        return Err("the entry holds an identity token (OAuth refresh token), which wharf does not use; give username and password_file".into());
    }
    if let Some(auth) = entry
        .get("auth")
        .and_then(|a| a.as_str())
        .filter(|a| !a.is_empty())
    {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| "auths entry: auth is not base64".to_owned())?;
        let raw =
            String::from_utf8(raw).map_err(|_| "auths entry: auth is not UTF-8".to_owned())?;
        let (u, p) = raw
            .split_once(':')
            .ok_or_else(|| "auths entry: auth is not user:password".to_owned())?;
        return Ok(BasicCredentials {
            username: u.to_owned(),
            password: Secret::new(p),
        });
    }
    match (
        entry.get("username").and_then(|u| u.as_str()),
        entry.get("password").and_then(|p| p.as_str()),
    ) {
        (Some(u), Some(p)) => Ok(BasicCredentials {
            username: u.to_owned(),
            password: Secret::new(p),
        }),
        _ => Err("auths entry has neither auth nor username and password".into()),
    }
}

/// How long an answer is held: [`REASK_AFTER`], or less when it expires
/// sooner; never under [`MIN_AGE`].
pub fn hold_for(expires: Option<SystemTime>, now: SystemTime) -> Duration {
    let until_expiry = expires.map(|e| {
        e.duration_since(now)
            .unwrap_or_default()
            .saturating_sub(EXPIRY_MARGIN)
    });
    until_expiry
        .map_or(REASK_AFTER, |d| d.min(REASK_AFTER))
        .max(MIN_AGE)
}

/// A helper's last answer.
struct Held {
    helper: String,
    server_url: String,
    result: Result<BasicCredentials, UpstreamError>,
    at: Instant,
    until: Instant,
}

/// Credentials from a `config.json`, re-read when it changes.
pub(super) struct DockerConfig {
    upstream: String,
    file: Watched<DockerAuth>,
    timeout: Duration,
    /// Helpers found on `PATH`, each looked up once.
    programs: Mutex<Vec<HelperProgram>>,
    held: Mutex<Option<Held>>,
    /// A helper answered at some point (so a refusal is worth a new ask).
    helped: AtomicBool,
    /// One ask at a time; the others wait for its answer.
    asking: tokio::sync::Mutex<()>,
}

impl DockerConfig {
    pub(super) fn new(
        upstream: &str,
        path: PathBuf,
        keys: Vec<String>,
        timeout: Duration,
        helper: Option<HelperProgram>,
    ) -> DockerConfig {
        DockerConfig {
            upstream: upstream.to_owned(),
            file: Watched::new(path, true, move |b: &[u8]| docker_config_auth(b, &keys)),
            timeout,
            programs: Mutex::new(helper.into_iter().collect()),
            held: Mutex::new(None),
            helped: AtomicBool::new(false),
            asking: tokio::sync::Mutex::new(()),
        }
    }

    fn held_answer(
        &self,
        helper: &str,
        server_url: &str,
    ) -> Option<Result<BasicCredentials, UpstreamError>> {
        match &*self.held.lock() {
            Some(h)
                if h.helper == helper && h.server_url == server_url && h.until > Instant::now() =>
            {
                Some(h.result.clone())
            }
            _ => None,
        }
    }

    fn program(&self, name: &str) -> Result<HelperProgram, String> {
        let mut programs = self.programs.lock();
        if let Some(p) = programs.iter().find(|p| p.name == name) {
            return Ok(p.clone());
        }
        let p = HelperProgram::find(name)?;
        programs.push(p.clone());
        Ok(p)
    }

    async fn ask_helper(
        &self,
        helper: &str,
        server_url: &str,
        stored: Option<&BasicCredentials>,
    ) -> Result<BasicCredentials, UpstreamError> {
        if let Some(r) = self.held_answer(helper, server_url) {
            return r;
        }
        let _one = self.asking.lock().await;
        if let Some(r) = self.held_answer(helper, server_url) {
            return r;
        }
        let asked = self.run_helper(helper, server_url, stored).await;
        let hold = match &asked {
            Ok((_, expires)) => hold_for(*expires, SystemTime::now()),
            Err(_) => FAILURE_HOLD,
        };
        let result = asked.map(|(c, _)| c);
        if result.is_ok() {
            self.helped.store(true, Ordering::Relaxed);
        }
        let now = Instant::now();
        *self.held.lock() = Some(Held {
            helper: helper.to_owned(),
            server_url: server_url.to_owned(),
            result: result.clone(),
            at: now,
            until: now + hold,
        });
        result
    }

    async fn run_helper(
        &self,
        helper: &str,
        server_url: &str,
        stored: Option<&BasicCredentials>,
    ) -> Result<(BasicCredentials, Option<SystemTime>), UpstreamError> {
        let config = |why: String| UpstreamError::Config(format!("{}: {why}", self.upstream));
        let program = self.program(helper).map_err(config)?;
        match program.ask(&self.upstream, server_url, self.timeout).await {
            Ok(Answer::Found {
                credentials,
                expires,
            }) => Ok((credentials, expires)),
            Ok(Answer::NotFound) => match stored {
                Some(c) => Ok((c.clone(), None)),
                None => Err(config(format!(
                    "{} has no credentials for {server_url} (log in with it as the user wharf runs as)",
                    program.program()
                ))),
            },
            Err(HelperError::Unusable(why)) => Err(config(why)),
            Err(HelperError::Failed(why)) => Err(UpstreamError::CredentialsUnavailable {
                upstream: self.upstream.clone(),
                reason: format!("credential helper: {why}"),
            }),
        }
    }
}

impl CredentialSource for DockerConfig {
    fn get(&self) -> BoxFuture<'_, Result<BasicCredentials, UpstreamError>> {
        let auth = self
            .file
            .get(&self.upstream)
            .map_err(|why| file_error(&self.upstream, &self.file, why));
        Box::pin(async move {
            match &*auth? {
                DockerAuth::Stored(c) => Ok(c.clone()),
                DockerAuth::Helper {
                    helper,
                    server_url,
                    stored,
                } => self.ask_helper(helper, server_url, stored.as_ref()).await,
            }
        })
    }

    /// Drops the helper's answer (unless it is under [`MIN_AGE`] old), so the
    /// next `get` asks again: a rotated credential is picked up at the first
    /// refusal.
    fn rejected(&self) -> bool {
        let mut held = self.held.lock();
        let age = match held.as_ref() {
            Some(h) if h.result.is_ok() => h.at.elapsed(),
            // A failure: nothing was given.
            Some(_) => return false,
            // Dropped by a concurrent refusal: the next `get` asks anew.
            None => return self.helped.load(Ordering::Relaxed),
        };
        if age >= MIN_AGE {
            *held = None;
        }
        true
    }

    fn describe(&self) -> String {
        let helpers = self.programs.lock();
        match helpers.first() {
            None => format!("Docker config.json {}", self.file.path().display()),
            Some(p) => format!(
                "Docker config.json {} (credential helper {}, timeout {})",
                self.file.path().display(),
                p.path.display(),
                humantime::format_duration(self.timeout)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn docker_config_entries() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:s3cret:with:colons");
        let cfg = format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{b64}"}},"gitlab.example:5050":{{"username":"bob","password":"pw"}}}}}}"#
        );
        let stored = |k: &[&str]| match docker_config_auth(cfg.as_bytes(), &keys(k)).unwrap() {
            DockerAuth::Stored(c) => c,
            other => panic!("{other:?}"),
        };
        let c = stored(&["https://index.docker.io/v1/"]);
        assert_eq!(c.username, "alice");
        assert_eq!(c.password.expose(), "s3cret:with:colons");
        let c = stored(&["x", "gitlab.example:5050"]);
        assert_eq!((c.username.as_str(), c.password.expose()), ("bob", "pw"));
        let e = docker_config_auth(cfg.as_bytes(), &keys(&["other"])).unwrap_err();
        assert!(e.contains("no auths entry for other"), "{e}");
        let e = docker_config_auth(br#"{"auths":{"h":{"identitytoken":"x"}}}"#, &keys(&["h"]))
            .unwrap_err();
        assert!(e.contains("identity token"), "{e}");
        assert!(!format!("{c:?}").contains("pw"), "password redacted");
    }

    #[test]
    fn helpers_win_as_in_docker() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("u:p");
        let cfg = format!(
            r#"{{"auths":{{"gar.example":{{"auth":"{b64}"}},"other.example":{{}}}},"credsStore":"desktop","credHelpers":{{"gar.example":"gcloud"}}}}"#
        );
        let helper = |k: &[&str]| match docker_config_auth(cfg.as_bytes(), &keys(k)).unwrap() {
            DockerAuth::Helper {
                helper,
                server_url,
                stored,
            } => (helper, server_url, stored.map(|c| c.username)),
            other => panic!("{other:?}"),
        };
        // credHelpers[key] first, with the auths entry as its fallback...
        assert_eq!(
            helper(&["gar.example"]),
            ("gcloud".into(), "gar.example".into(), Some("u".into()))
        );
        // ...then credsStore, for the server `docker login` recorded...
        assert_eq!(
            helper(&["x", "other.example"]),
            ("desktop".into(), "other.example".into(), None)
        );
        // ...or the first key.
        assert_eq!(
            helper(&["new.example"]),
            ("desktop".into(), "new.example".into(), None)
        );
        // auths alone when neither applies.
        let no_store = cfg.replace(r#""credsStore":"desktop","#, "");
        assert!(matches!(
            docker_config_auth(no_store.as_bytes(), &keys(&["x", "gar.example"])),
            Ok(DockerAuth::Helper { .. })
        ));
        let e = docker_config_auth(no_store.as_bytes(), &keys(&["new.example"])).unwrap_err();
        assert!(e.contains("no credHelpers entry"), "{e}");
        // A name that could leave PATH is refused, from either key.
        for bad in [
            r#"{"credHelpers":{"h":"../../bin/sh"}}"#,
            r#"{"credsStore":"a/b"}"#,
            r#"{"credHelpers":{"h":7}}"#,
        ] {
            let e = docker_config_auth(bad.as_bytes(), &keys(&["h"])).unwrap_err();
            assert!(
                e.contains("refused") || e.contains("not a string"),
                "{bad}: {e}"
            );
        }
        // An empty credsStore is no store (docker's reading too).
        let e = docker_config_auth(br#"{"credsStore":""}"#, &keys(&["h"])).unwrap_err();
        assert!(e.contains("no auths entry"), "{e}");
    }

    #[test]
    fn answers_are_held_until_they_expire_or_for_five_minutes() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(hold_for(None, now), REASK_AFTER);
        let in_an_hour = now + Duration::from_secs(3600);
        assert_eq!(hold_for(Some(in_an_hour), now), REASK_AFTER);
        let in_two_minutes = now + Duration::from_secs(120);
        assert_eq!(hold_for(Some(in_two_minutes), now), Duration::from_secs(90));
        let expired = now - Duration::from_secs(10);
        assert_eq!(hold_for(Some(expired), now), MIN_AGE);
    }

    fn source_with(answer: Result<BasicCredentials, UpstreamError>, age: Duration) -> DockerConfig {
        let s = DockerConfig::new(
            "up",
            "/nonexistent".into(),
            vec![],
            Duration::from_secs(1),
            None,
        );
        let now = Instant::now();
        *s.held.lock() = Some(Held {
            helper: "h".into(),
            server_url: "s".into(),
            result: answer,
            at: now - age,
            until: now + REASK_AFTER,
        });
        s.helped.store(true, Ordering::Relaxed);
        s
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_drops_the_answer_unless_it_is_newer_than_the_refusal() {
        tokio::time::advance(Duration::from_secs(10)).await;
        let creds = BasicCredentials {
            username: "u".into(),
            password: Secret::new("p"),
        };
        let s = source_with(Ok(creds.clone()), Duration::from_secs(2));
        assert!(s.held_answer("h", "s").is_some());
        assert!(s.rejected(), "a fresh ask may give something else");
        assert!(s.held_answer("h", "s").is_none(), "dropped");
        assert!(s.rejected(), "already dropped by a concurrent refusal");
        let s = source_with(Ok(creds), Duration::from_millis(200));
        assert!(s.rejected());
        assert!(
            s.held_answer("h", "s").is_some(),
            "too new to be what was refused"
        );
        let s = source_with(
            Err(UpstreamError::Config("x".into())),
            Duration::from_secs(2),
        );
        assert!(!s.rejected(), "nothing was given");
        assert!(
            s.held_answer("h", "s").is_some(),
            "failures are held for FAILURE_HOLD"
        );
        assert!(
            s.held_answer("other", "s").is_none(),
            "held per helper and server"
        );
    }
}
