//! `[bundle]` into [`BundleSettings`]: what `wharf bundle import` trusts.
//! The key files are only checked to exist here; reading them is the bundle
//! format's business.

use std::path::{Path, PathBuf};

use super::file::FileBundle;
use super::values::resolve;
use super::{invalid, ConfigError};

/// What the configuration says about bundles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleSettings {
    /// Public keys whose signatures `wharf bundle import` accepts (several
    /// during a rotation). Empty: bundles are imported unsigned or signed
    /// alike.
    pub trusted_keys: Vec<PathBuf>,
}

impl BundleSettings {
    pub(super) fn from_file(
        b: Option<FileBundle>,
        base: Option<&Path>,
    ) -> Result<BundleSettings, ConfigError> {
        let b = b.unwrap_or_default();
        let mut trusted_keys = Vec::with_capacity(b.trusted_keys.len());
        for (i, p) in b.trusted_keys.iter().enumerate() {
            let p = resolve(base, p);
            if let Err(e) = std::fs::File::open(&p) {
                return Err(invalid(
                    format!("bundle.trusted_keys[{i}]"),
                    format!("cannot read {}: {e}", p.display()),
                ));
            }
            trusted_keys.push(p);
        }
        Ok(BundleSettings { trusted_keys })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn trusted_keys_follow_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("site.pub"), "key").unwrap();
        let up = "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n";
        let c = Config::from_toml(
            &format!("{up}[bundle]\ntrusted_keys = [\"site.pub\"]\n"),
            Some(dir.path()),
        )
        .unwrap();
        assert_eq!(c.bundle.trusted_keys, [dir.path().join("site.pub")]);
        let e = Config::from_toml(
            &format!("{up}[bundle]\ntrusted_keys = [\"site.pub\", \"old.pub\"]\n"),
            Some(dir.path()),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("bundle.trusted_keys[1]: cannot read") && e.contains("old.pub"),
            "{e}"
        );
        let c = Config::from_toml(up, None).unwrap();
        assert!(c.bundle.trusted_keys.is_empty());
        let e = Config::from_toml(&format!("{up}[bundle]\nkeys = []\n"), None).unwrap_err();
        assert!(e.to_string().contains("keys"), "{e}");
    }
}
