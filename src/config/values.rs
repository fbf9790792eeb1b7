//! Value parsers shared by the sections: durations, byte sizes, paths relative
//! to the config file, and secret files (refused when others can read them).

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
