//! `[cache]`: the cache directory, how long tags are trusted, and the
//! settings the cache takes (`crate::cache::CacheSettings`: budget,
//! watermarks, pins, manifest memory, the limits on blob downloads (reserve
//! step, minimum rate) and on remembered "not found" answers).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cache::{CacheSettings, Pin};

use super::file::FileCache;
use super::values::{parse_duration, parse_size, resolve};
use super::{invalid, ConfigError};

pub(super) struct CacheSection {
    pub dir: PathBuf,
    pub tag_ttl: Duration,
    pub settings: CacheSettings,
}

impl CacheSection {
    pub(super) fn from_file(
        c: &FileCache,
        base: Option<&Path>,
    ) -> Result<CacheSection, ConfigError> {
        let dir = c
            .dir
            .as_ref()
            .map(|d| resolve(base, d))
            .unwrap_or_else(default_cache_dir);
        let tag_ttl = parse_duration("cache.tag_ttl", c.tag_ttl.as_deref().unwrap_or("5m"))?;
        Ok(CacheSection {
            dir,
            tag_ttl,
            settings: settings(c)?,
        })
    }
}

fn settings(c: &FileCache) -> Result<CacheSettings, ConfigError> {
    let mut settings = CacheSettings::default();
    if let Some(m) = &c.max_size {
        let n = parse_size("cache.max_size", m)?;
        if n < 1 << 20 {
            return Err(invalid("cache.max_size", "at least 1MiB"));
        }
        settings.limits.max_size = Some(n);
    }
    let high = c.high_watermark.unwrap_or(settings.limits.high);
    let low = c.low_watermark.unwrap_or(settings.limits.low);
    if !(0.0 < low && low < high && high <= 1.0) {
        return Err(invalid(
            "cache.low_watermark",
            format!("need 0 < low_watermark ({low}) < high_watermark ({high}) <= 1"),
        ));
    }
    settings.limits.high = high;
    settings.limits.low = low;
    for (i, p) in c.pin.iter().flatten().enumerate() {
        settings
            .pins
            .push(Pin::parse(p).map_err(|e| invalid(format!("cache.pin[{i}]"), e))?);
    }
    if let Some(m) = &c.memory {
        settings.memory = parse_size("cache.memory", m)?;
    }
    fill_limits(c, &mut settings)?;
    Ok(settings)
}

/// The limits on blob downloads and on remembered "not found" answers.
fn fill_limits(c: &FileCache, settings: &mut CacheSettings) -> Result<(), ConfigError> {
    if let Some(s) = &c.fill_reserve_step {
        let n = parse_size("cache.fill_reserve_step", s)?;
        if n < 64 << 10 {
            return Err(invalid("cache.fill_reserve_step", "at least 64KiB"));
        }
        settings.fill_reserve_step = n;
    }
    // A step of the whole budget would let one lying fill empty the cache.
    if let Some(max) = settings.limits.max_size {
        settings.fill_reserve_step = settings.fill_reserve_step.min((max / 16).max(64 << 10));
    }
    if let Some(r) = &c.fill_min_rate {
        // "16KiB" or "16KiB/s": a rate either way.
        let r = r.trim();
        settings.fill_min_rate =
            parse_size("cache.fill_min_rate", r.strip_suffix("/s").unwrap_or(r))?;
    }
    if let Some(w) = &c.fill_rate_window {
        let w = parse_duration("cache.fill_rate_window", w)?;
        if w < Duration::from_secs(1) || w > Duration::from_secs(600) {
            return Err(invalid("cache.fill_rate_window", "between 1s and 10m"));
        }
        settings.fill_rate_window = w;
    }
    if let Some(n) = c.max_fills {
        // Each running fill holds one of tokio's 512 blocking threads.
        if n == 0 || n > 256 {
            return Err(invalid("cache.max_fills", "between 1 and 256"));
        }
        settings.max_fills = n;
    }
    if let Some(t) = &c.negative_ttl {
        let t = parse_duration("cache.negative_ttl", t)?;
        if t > Duration::from_secs(3600) {
            return Err(invalid(
                "cache.negative_ttl",
                "at most 1h (a tag pushed meanwhile stays invisible that long)",
            ));
        }
        settings.negative_ttl = t;
    }
    if let Some(n) = c.negative_entries {
        if n == 0 {
            return Err(invalid(
                "cache.negative_entries",
                "at least 1 (negative_ttl = \"0s\" turns the negative cache off)",
            ));
        }
        settings.negative_entries = n;
    }
    Ok(())
}

/// `$STATE_DIRECTORY` (systemd), `/var/lib/wharf` as root, else
/// `$XDG_DATA_HOME/wharf` or `~/.local/share/wharf`.
fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("STATE_DIRECTORY") {
        // systemd's StateDirectory=; may hold several colon-separated paths.
        let s = d.to_string_lossy().into_owned();
        return PathBuf::from(s.split(':').next().unwrap_or(&s));
    }
    // SAFETY-free check: geteuid via the environment is unreliable, so look at HOME.
    match std::env::var_os("HOME") {
        Some(h) if h != "/root" && !h.is_empty() => {
            let base = std::env::var_os("XDG_DATA_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(h).join(".local/share"));
            base.join("wharf")
        }
        _ => PathBuf::from("/var/lib/wharf"),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn budget_watermarks_and_pins() {
        let up = "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n";
        let c = Config::from_toml(
            &format!("[cache]\ndir = \"c\"\nmax_size = \"2GiB\"\nhigh_watermark = 0.8\nlow_watermark = 0.5\npin = [\"a/lib/*\"]\n{up}"),
            Some(std::path::Path::new("/srv")),
        )
        .unwrap();
        assert_eq!(c.cache_dir, std::path::Path::new("/srv/c"));
        assert_eq!(c.cache.limits.max_size, Some(2 << 30));
        assert_eq!((c.cache.limits.high, c.cache.limits.low), (0.8, 0.5));
        assert_eq!(c.cache.pins.len(), 1);
        // The defaults a production mirror runs with; the step is capped by
        // the budget (2 GiB / 16).
        assert_eq!(c.cache.fill_reserve_step, 64 << 20);
        assert_eq!(c.cache.fill_min_rate, 16 << 10);
        assert_eq!(c.cache.fill_rate_window, std::time::Duration::from_secs(30));
        assert_eq!(c.cache.negative_ttl, std::time::Duration::from_secs(30));
        assert_eq!(c.cache.negative_entries, 10_000);
        let small = Config::from_toml(
            &format!("[cache]\nmax_size = \"20MiB\"\nfill_reserve_step = \"8MiB\"\nfill_min_rate = \"0\"\nnegative_ttl = \"0s\"\n{up}"),
            None,
        )
        .unwrap();
        assert_eq!(small.cache.fill_reserve_step, (20 << 20) / 16);
        assert_eq!(small.cache.fill_min_rate, 0);
        assert!(small.cache.negative_ttl.is_zero());
        for (text, key) in [
            ("max_size = \"1KiB\"\n", "cache.max_size: at least 1MiB"),
            (
                "high_watermark = 0.5\nlow_watermark = 0.6\n",
                "cache.low_watermark",
            ),
            ("pin = [\"ok/x\", \"\"]\n", "cache.pin[1]"),
            ("memory = \"lots\"\n", "cache.memory"),
            ("fill_reserve_step = \"1KiB\"\n", "cache.fill_reserve_step"),
            ("fill_min_rate = \"fast\"\n", "cache.fill_min_rate"),
            ("fill_rate_window = \"0s\"\n", "cache.fill_rate_window"),
            ("negative_ttl = \"2h\"\n", "cache.negative_ttl"),
            ("negative_entries = 0\n", "cache.negative_entries"),
        ] {
            let e = Config::from_toml(&format!("[cache]\n{text}{up}"), None)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(key), "{key}: {e}");
        }
    }
}
