//! Value parsers shared by the sections: durations, byte sizes, paths relative
//! to the config file, secret files (refused when others can read them), URLs
//! without credentials, and TOML errors that never quote a value.
//!
//! Must never: put a value that may be a secret (an inline password, a URL's
//! userinfo) into an error. `check-config` runs in systemd's `ExecStartPre`,
//! so its output lands in the journal.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::secret::Secret;

use super::{invalid, ConfigError};

pub(super) fn parse_duration(key: &str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s)
        .map_err(|e| invalid(key, format!("{e} (examples: \"30s\", \"5m\", \"1h\")")))
}

/// `"20GiB"`, `"500MB"`, `"1.5 TiB"`, `"1048576"`: decimal (kB, MB, GB, TB)
/// and binary (KiB, MiB, GiB, TiB) units, case-insensitive.
pub fn parse_size(key: &str, s: &str) -> Result<u64, ConfigError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        invalid(
            key,
            format!("{s:?} is not a size (examples: \"20GiB\", \"500MB\")"),
        )
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        u => return Err(invalid(key, format!("unknown unit {u:?} in {s:?}"))),
    };
    Ok((n * mult as f64) as u64)
}

/// Refuses a URL naming a user or password (`https://user:pass@host`):
/// credentials go in `[upstream.credentials]`, where they are kept out of
/// logs, while a URL is printed (`check-config`, logs, metrics). Judged on the
/// text, before any parsing, so that even a URL that does not parse is
/// refused without being repeated. Any `@` counts, not only one in the
/// authority: a password holding `/`, `?` or `#` ends the authority early
/// (`https://u:pa/ss@host`), the URL then fails to parse, and its parse
/// error would quote it. A registry URL (scheme, host, port) has no `@`.
pub(super) fn no_userinfo(key: &str, text: &str) -> Result<(), ConfigError> {
    if text.contains('@') {
        let instead = if key.starts_with("shared.") {
            "give the store's keys as access_key_id_file and secret_access_key_file (or _env, _credential)"
        } else {
            "put them in [upstream.credentials] (password_file, password_env, ...)"
        };
        return Err(invalid(
            key,
            format!("a URL may not carry a user name or password (user:password@host); {instead}"),
        ));
    }
    Ok(())
}

/// A TOML error as the operator needs it and no more: the line, the column,
/// the key that line sets, and the parser's message with quoted values
/// blanked. toml's own message quotes the offending line, which may hold an
/// inline password.
pub(super) fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = blank_quoted(e.message().trim());
    let at = e.span().and_then(|span| {
        let before = text.get(..span.start)?;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        let column = before[line_start..].chars().count() + 1;
        let key = text[line_start..].lines().next().and_then(line_key);
        Some(match key {
            Some(k) => format!(" at line {line}, column {column} (key {k})"),
            None => format!(" at line {line}, column {column}"),
        })
    });
    format!("TOML parse error{}: {msg}", at.unwrap_or_default())
}

/// The key a TOML line sets (`password = ...` → `password`), or the table
/// it opens (`[upstream.credentials]`), if it looks like one.
fn line_key(line: &str) -> Option<&str> {
    let line = line.trim();
    let key = if line.starts_with('[') {
        line.trim_start_matches('[').split(']').next()?.trim()
    } else {
        line.split_once('=')?.0.trim()
    };
    let bare = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    (!key.is_empty() && key.len() <= 100 && key.chars().all(bare)).then_some(key)
}

/// `invalid type: string "hunter2", expected u32` → `... string "…", ...`;
/// values serde quotes in backticks too (`invalid type: integer `1234`,
/// expected a string`: a numeric inline password), while the field and
/// variant names it expects stay (`expected one of `a`, `b``).
fn blank_quoted(msg: &str) -> String {
    const VALUE_BEFORE_BACKTICK: &[&str] = &[
        "integer ",
        "floating point ",
        "boolean ",
        "character ",
        "unknown variant ",
    ];
    let mut out = String::with_capacity(msg.len());
    let mut inside: Option<char> = None;
    for c in msg.chars() {
        match (c, inside) {
            ('"', None) => {
                inside = Some('"');
                out.push_str("\"…");
            }
            ('`', None) if VALUE_BEFORE_BACKTICK.iter().any(|p| out.ends_with(p)) => {
                inside = Some('`');
                out.push_str("`…");
            }
            (c, Some(q)) if c == q => {
                inside = None;
                out.push(q);
            }
            (_, Some(_)) => {}
            (c, None) => out.push(c),
        }
    }
    out
}

/// `p` as written, or relative to the config file's directory `base`.
pub(super) fn resolve(base: Option<&Path>, p: &Path) -> PathBuf {
    match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p.to_owned(),
    }
}

/// Reads a secret file, refusing one that others than its owner can read: a
/// credential readable by every local user is a leaked credential.
pub fn read_secret_file(key: &str, path: &Path) -> Result<Secret, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(invalid(
            key,
            format!(
                "{} is readable by group or others (mode {:o}); chmod 600 it",
                path.display(),
                meta.permissions().mode() & 0o777
            ),
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    Ok(Secret::new(text.trim_end_matches(['\n', '\r'])))
}

/// Reads a file holding secrets, refusing one that others can read.
pub(super) fn read_private(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    read_secret_file(key, path)?;
    std::fs::read(path).map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("k", "20GiB").unwrap(), 20 << 30);
        assert_eq!(parse_size("k", "500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("k", "1.5 TiB").unwrap(), 3 << 39);
        assert_eq!(parse_size("k", "1048576").unwrap(), 1 << 20);
        let e = parse_size("cache.max_size", "20 parsecs").unwrap_err();
        assert!(
            e.to_string().starts_with("cache.max_size: unknown unit"),
            "{e}"
        );
        assert!(parse_size("k", "GiB").is_err());
        assert_eq!(parse_duration("k", "5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("k", "5").is_err());
    }

    #[test]
    fn urls_with_credentials_are_refused_without_repeating_them() {
        for url in [
            "https://user:hunter2@registry.example",
            "https://hunter2@registry.example:443",
            "http://u:hunter2@[::1]:5000/",
            "https://u:hunter2@not a url",
            // The password ends the authority early: the parse error
            // that follows would quote the whole text.
            "https://u:hun/ter2@registry.example",
            "https://u:hun#ter2@registry.example",
            "https://u:hun?ter2@registry.example",
            "https://u:hun\\ter2@registry.example",
        ] {
            let e = no_userinfo("upstream[0].url", url).unwrap_err().to_string();
            assert!(e.starts_with("upstream[0].url: "), "{e}");
            assert!(!e.contains("hunter2") && !e.contains(url), "{e}");
        }
        for url in ["https://registry.example", "http://127.0.0.1:5000"] {
            no_userinfo("k", url).unwrap();
        }
    }

    #[test]
    fn toml_errors_never_quote_values() {
        let cases = [
            // An unterminated inline password: toml quotes the line.
            "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n[upstream.credentials]\nusername = \"u\"\npassword = \"hunter2\n",
            // A value of the wrong type: serde names it.
            "[access]\nmax_failed_logins = \"hunter2\"\n",
            // A bare value.
            "[upstream.credentials]\npassword = hunter2\n",
            // A numeric inline password: serde quotes numbers in backticks.
            "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n[upstream.credentials]\nusername = \"u\"\npassword = 4815162342\n",
        ];
        for text in cases {
            let e = toml::from_str::<super::super::FileConfig>(text).unwrap_err();
            let secret = if text.contains("4815162342") {
                "4815162342"
            } else {
                "hunter2"
            };
            assert!(e.to_string().contains(secret), "toml's own: {e}");
            let ours = toml_error(text, &e);
            assert!(!ours.contains(secret), "{ours}");
            assert!(ours.contains("at line "), "{ours}");
        }
        let text = "[access]\nmax_failed_logins = \"hunter2\"\n";
        let e = toml::from_str::<super::super::FileConfig>(text).unwrap_err();
        let ours = toml_error(text, &e);
        assert!(
            ours.contains("line 2") && ours.contains("max_failed_logins"),
            "{ours}"
        );
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let base = Path::new("/etc/wharf");
        assert_eq!(resolve(Some(base), Path::new("k.pem")), base.join("k.pem"));
        assert_eq!(
            resolve(Some(base), Path::new("/k.pem")),
            Path::new("/k.pem")
        );
        assert_eq!(resolve(None, Path::new("k.pem")), Path::new("k.pem"));
    }
}
