//! Docker credential helpers, run as docker runs them
//! (<https://github.com/docker/docker-credential-helpers>, `client/client.go`):
//! `docker-credential-<name> get`, the server URL on stdin (no newline), and on
//! stdout `{"ServerURL": .., "Username": .., "Secret": ..}`. A helper that has
//! nothing for that server exits non-zero with `credentials not found in
//! native keychain` on stdout.
//!
//! What wharf adds, since it runs helpers unattended for months:
//!
//! - The name is a word (letters, digits, `-`, `_`, `.`; no `/`, no `..`), and
//!   the program is looked up on wharf's `PATH`, in absolute directories only
//!   (an empty or relative entry would run whatever the working directory
//!   holds). The config is refused when it is not found.
//! - The helper runs in a process group of its own, and the whole group is
//!   killed (SIGKILL) when it overruns its timeout (`helper_timeout`, default
//!   [`DEFAULT_TIMEOUT`]), when its stdout passes [`MAX_OUTPUT`], or when the
//!   request that asked goes away: a hung `gcloud` leaves nothing behind.
//! - Its stdout is a secret: never logged and never quoted in an error (nor
//!   are serde's messages, which can quote what they failed on). Its stderr
//!   goes to /dev/null for the same reason, so there is nothing to cap. Logs
//!   and errors name the helper and its exit status only; to see why a helper
//!   fails, run it by hand as wharf's user.
//! - Username `<token>` means the Secret is an identity token (an OAuth2
//!   refresh token; docker then asks the registry's token service for access
//!   tokens with `grant_type=refresh_token`). wharf does not speak that grant,
//!   as it does not for `identitytoken` in `auths`, and says so. gcloud's
//!   helper answers `_dcgcloud_token` or `oauth2accesstoken` with an access
//!   token: plain Basic credentials.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::secret::Secret;

use super::BasicCredentials;

/// How long a helper may take when the config does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a helper may write on stdout (an answer is a few hundred bytes;
/// a JSON key as the Secret a few KiB).
pub const MAX_OUTPUT: usize = 64 << 10;

const PREFIX: &str = "docker-credential-";
const NOT_FOUND: &str = "credentials not found in native keychain";
/// What `Username` says when `Secret` is an identity token.
const TOKEN_USERNAME: &str = "<token>";

/// A helper found on `PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelperProgram {
    /// The `<name>` of `docker-credential-<name>`.
    pub name: String,
    pub path: PathBuf,
}

/// What a helper answered.
#[derive(Debug)]
pub enum Answer {
    Found {
        credentials: BasicCredentials,
        /// When the Secret says it expires (a JWT's `exp`), if it does.
        expires: Option<SystemTime>,
    },
    /// Nothing for that server.
    NotFound,
}

/// Why asking failed. The text names the helper, never what it wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelperError {
    /// It could not be run, failed, overran its timeout: trying again later
    /// may work.
    Failed(String),
    /// It answered something wharf cannot use.
    Unusable(String),
}

/// Refuses a name that could reach outside `docker-credential-<name>` on
/// `PATH`.
pub fn check_name(name: &str) -> Result<(), String> {
    let word = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if word {
        Ok(())
    } else {
        Err(format!(
            "credential helper name {name:?} refused: it names {PREFIX}<name> on PATH, so use letters, digits, '-', '_' and '.' (no '/', no '..')"
        ))
    }
}

impl HelperProgram {
    /// Looks `docker-credential-<name>` up on wharf's `PATH`.
    pub fn find(name: &str) -> Result<HelperProgram, String> {
        HelperProgram::find_in(name, &std::env::var_os("PATH").unwrap_or_default())
    }

    /// Looks `docker-credential-<name>` up in a `PATH`-style list, skipping
    /// relative entries.
    pub fn find_in(name: &str, path: &OsStr) -> Result<HelperProgram, String> {
        check_name(name)?;
        let file = format!("{PREFIX}{name}");
        std::env::split_paths(path)
            .filter(|dir| dir.is_absolute())
            .map(|dir| dir.join(&file))
            .find(|p| is_executable(p))
            .map(|path| HelperProgram {
                name: name.to_owned(),
                path,
            })
            .ok_or_else(|| {
                format!(
                    "credential helper {file} is not on PATH ({}); install it or set PATH in wharf's environment",
                    path.to_string_lossy()
                )
            })
    }

    /// `docker-credential-<name>`, for messages.
    pub fn program(&self) -> String {
        format!("{PREFIX}{}", self.name)
    }

    /// Runs `get` for `server_url`. `upstream` names the asker in the log.
    pub async fn ask(
        &self,
        upstream: &str,
        server_url: &str,
        timeout: Duration,
    ) -> Result<Answer, HelperError> {
        let program = self.program();
        let mut child = tokio::process::Command::new(&self.path)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| HelperError::Failed(format!("cannot run {program}: {e}")))?;
        let group = KillGroup(child.id());
        let started = tokio::time::Instant::now();
        let talked = tokio::time::timeout(timeout, talk(&mut child, server_url)).await;
        let why = match talked {
            Ok(Ok((status, out))) => {
                group.disarm();
                tracing::info!(upstream, helper = %program, %status,
                    ms = started.elapsed().as_millis() as u64, "asked the credential helper");
                return interpret(&program, status, &out);
            }
            Err(_elapsed) => format!(
                "gave no answer within {}",
                humantime::format_duration(timeout)
            ),
            Ok(Err(Talk::TooLong)) => format!("wrote more than {} KiB", MAX_OUTPUT >> 10),
            Ok(Err(Talk::Io(e))) => format!("could not be talked to ({e})"),
        };
        drop(group);
        let _ = child.wait().await;
        tracing::warn!(upstream, helper = %program, %why, "credential helper killed");
        Err(HelperError::Failed(format!(
            "{program} {why} and was killed"
        )))
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Kills the helper's process group when dropped armed: after a timeout, an
/// overlong answer, or when the request that asked is dropped mid-way. Only
/// disarmed once the helper was waited for, so the group id cannot have been
/// reused.
struct KillGroup(Option<u32>);

impl KillGroup {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for KillGroup {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) takes integers and touches no memory of ours; the
            // group is the helper's own (process_group(0) made it its leader).
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

enum Talk {
    TooLong,
    Io(std::io::Error),
}

/// Writes the server URL, reads stdout (at most `MAX_OUTPUT`), waits.
async fn talk(
    child: &mut tokio::process::Child,
    server_url: &str,
) -> Result<(ExitStatus, Vec<u8>), Talk> {
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    // Both at once: a helper may answer before it reads its input.
    let write = async move {
        let r = stdin.write_all(server_url.as_bytes()).await;
        drop(stdin); // EOF: the helper reads to the end
        r
    };
    let read = async move {
        let mut out = Vec::new();
        stdout
            .take(MAX_OUTPUT as u64 + 1)
            .read_to_end(&mut out)
            .await
            .map(|_| out)
    };
    let (written, out) = tokio::join!(write, read);
    // A helper that exits without reading its input broke the pipe; what it
    // answered still counts.
    if let Err(e) = written {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(Talk::Io(e));
        }
    }
    let out = out.map_err(Talk::Io)?;
    if out.len() > MAX_OUTPUT {
        return Err(Talk::TooLong);
    }
    let status = child.wait().await.map_err(Talk::Io)?;
    Ok((status, out))
}

#[derive(serde::Deserialize)]
struct Reply {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// The answer, judged without ever quoting it.
fn interpret(program: &str, status: ExitStatus, out: &[u8]) -> Result<Answer, HelperError> {
    if !status.success() {
        if std::str::from_utf8(out).is_ok_and(|s| s.trim() == NOT_FOUND) {
            return Ok(Answer::NotFound);
        }
        return Err(HelperError::Failed(format!(
            "{program} get failed ({status}); its output is not logged, run `{program} get` by hand as wharf's user to see why"
        )));
    }
    let unusable = |what: &str| HelperError::Unusable(format!("{program} answered {what}"));
    let reply: Reply = serde_json::from_slice(out)
        .map_err(|_| unusable("something other than credentials JSON"))?;
    if reply.username == TOKEN_USERNAME {
        return Err(unusable(
            "an identity token (Username \"<token>\"), an OAuth refresh token wharf does not use; log in with a username and password or token, or use json_key_file or gce_metadata",
        ));
    }
    if reply.username.is_empty() || reply.username.contains(':') || reply.secret.is_empty() {
        return Err(unusable(
            "an empty Username or Secret, or a Username with ':'",
        ));
    }
    let expires = jwt_expiry(&reply.secret);
    Ok(Answer::Found {
        credentials: BasicCredentials {
            username: reply.username,
            password: Secret::new(reply.secret),
        },
        expires,
    })
}

/// When a Secret that is a JWT expires (its `exp`). gcloud's access tokens
/// are opaque and give None; they are re-asked for on an interval instead.
pub fn jwt_expiry(secret: &str) -> Option<SystemTime> {
    use base64::Engine as _;
    let mut parts = secret.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let exp = serde_json::from_slice::<serde_json::Value>(&json)
        .ok()?
        .get("exp")?
        .as_u64()?;
    // A helper's `exp` of 10^19 must not overflow the clock.
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn names_stay_on_path() {
        for ok in ["gcloud", "gcr", "ecr-login", "desktop.exe", "pass_2"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(65);
        for bad in [
            "",
            "a/b",
            "../x",
            "a..b",
            ".hidden",
            "-rf",
            "a b",
            "x\0",
            long.as_str(),
        ] {
            let e = check_name(bad).unwrap_err();
            assert!(e.contains("refused"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn found_on_absolute_path_entries_only() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("docker-credential-t");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = std::env::join_paths(["/nonexistent", dir.path().to_str().unwrap()]).unwrap();
        let e = HelperProgram::find_in("t", &path).unwrap_err();
        assert!(
            e.contains("docker-credential-t is not on PATH"),
            "not executable: {e}"
        );
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let found = HelperProgram::find_in("t", &path).unwrap();
        assert_eq!(
            (found.name.as_str(), found.path.as_path()),
            ("t", exe.as_path())
        );
        // A relative entry is never searched, even when it would match.
        let cwd_relative = std::env::join_paths([dir.path().strip_prefix("/").unwrap()]).unwrap();
        assert!(HelperProgram::find_in("t", &cwd_relative).is_err());
        assert!(HelperProgram::find_in("../t", &path)
            .unwrap_err()
            .contains("refused"));
    }

    fn exit(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn answers_are_judged_without_quoting_them() {
        let secret = "s3cret-answer";
        let ok = format!(r#"{{"ServerURL":"h","Username":"_dcgcloud_token","Secret":"{secret}"}}"#);
        match interpret("docker-credential-t", exit(0), ok.as_bytes()).unwrap() {
            Answer::Found {
                credentials,
                expires,
            } => {
                assert_eq!(credentials.username, "_dcgcloud_token");
                assert_eq!(credentials.password.expose(), secret);
                assert!(expires.is_none());
            }
            Answer::NotFound => panic!("found"),
        }
        let nf = interpret("p", exit(1), b"credentials not found in native keychain\n").unwrap();
        assert!(matches!(nf, Answer::NotFound));
        let cases: [(ExitStatus, String, &str); 5] = [
            (
                exit(1),
                format!("error: {secret}"),
                "failed (exit status: 1)",
            ),
            (
                exit(0),
                format!(r#"{{"Username":1,"Secret":"{secret}"}}"#),
                "other than credentials JSON",
            ),
            (
                exit(0),
                format!(r#"{{"Username":"<token>","Secret":"{secret}"}}"#),
                "identity token",
            ),
            (
                exit(0),
                format!(r#"{{"Username":"a:b","Secret":"{secret}"}}"#),
                "Username with ':'",
            ),
            (exit(0), r#"{"Username":"u","Secret":""}"#.into(), "empty"),
        ];
        for (status, out, want) in cases {
            let e = interpret("docker-credential-t", status, out.as_bytes()).unwrap_err();
            let text = format!("{e:?}");
            assert!(
                text.contains(want) && text.contains("docker-credential-t"),
                "{text}"
            );
            assert!(!text.contains(secret), "the answer is never quoted: {text}");
        }
    }

    #[test]
    fn jwt_secrets_say_when_they_expire() {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256"}"#),
            b64(r#"{"exp":1700000000,"sub":"x"}"#)
        );
        assert_eq!(
            jwt_expiry(&jwt),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(
            jwt_expiry("ya29.a0AfH6SMopaque"),
            None,
            "two parts, not base64 JSON"
        );
        assert_eq!(
            jwt_expiry(&format!("{}.{}.s", b64("{}"), b64(r#"{"sub":"x"}"#))),
            None
        );
        assert_eq!(jwt_expiry("a.b.c.d"), None);
        // Regression: an absurd `exp` overflowed SystemTime (a panic).
        let huge = format!("{}.{}.s", b64("{}"), b64(r#"{"exp":18446744073709551615}"#));
        let _ = jwt_expiry(&huge);
    }
}
