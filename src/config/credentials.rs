//! `[upstream.credentials]` into a [`CredentialSpec`]: exactly one kind
//! (username + one password source, `docker_config`, `json_key_file`,
//! `gce_metadata`), fields only with the kind they belong to, secret files
//! private. Files are read once here so `check-config` names a broken one;
//! the running source re-reads them when they change.
//!
//! A `docker_config` naming a credential helper (`credHelpers`, `credsStore`)
//! is refused when the helper's name is not a plain word or the program is
//! not on `PATH`: in `check-config` and at start-up alike, since an upstream
//! whose helper cannot run can never authenticate. The helper itself is not
//! run until the first request needs it (it may be slow, or need the
//! network).

use std::path::{Path, PathBuf};

use crate::secret::Secret;
use crate::upstream::credentials::{
    self as cred, helper, CredentialSpec, DockerAuth, HelperProgram, SecretSpec,
};

use super::file::FileCredentials;
use super::values::{parse_duration, read_private, read_secret_file, resolve};
use super::{invalid, ConfigError};

type Key<'a> = &'a dyn Fn(&str) -> String;

impl CredentialSpec {
    /// `key` names fields of the upstream (`upstream[i].…`); `url` and
    /// `aliases` give the `config.json` keys to look up.
    pub(super) fn from_file(
        c: FileCredentials,
        key: Key<'_>,
        url: &reqwest::Url,
        aliases: &[String],
        base: Option<&Path>,
        warnings: &mut Vec<String>,
    ) -> Result<CredentialSpec, ConfigError> {
        let k = |f: &str| key(&format!("credentials.{f}"));
        let password_given = one_kind(&c, key)?;
        fields_go_with_their_kind(&c, &k)?;
        if let Some(path) = &c.docker_config {
            let keys = match &c.docker_config_key {
                Some(k) => vec![k.clone()],
                None => docker_config_keys(url, aliases),
            };
            return docker_config(&resolve(base, path), keys, c.helper_timeout.as_deref(), &k);
        }
        if let Some(path) = &c.json_key_file {
            let path = resolve(base, path);
            let b64 = c.json_key_base64.unwrap_or(false);
            let bytes = read_private(&k("json_key_file"), &path)?;
            cred::json_key(&bytes, b64)
                .map_err(|why| invalid(k("json_key_file"), format!("{}: {why}", path.display())))?;
            return Ok(CredentialSpec::JsonKey { path, base64: b64 });
        }
        if c.gce_metadata == Some(true) {
            return gce_metadata(c.metadata_host, c.service_account, &k);
        }
        password(c, password_given, key, base, warnings)
    }
}

/// Refuses none or several kinds; returns how many password fields are given.
fn one_kind(c: &FileCredentials, key: Key<'_>) -> Result<usize, ConfigError> {
    let password_given = [
        c.password_file.is_some(),
        c.password_env.is_some(),
        c.password_credential.is_some(),
        c.password.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    let kinds = [
        c.username.is_some() || password_given > 0,
        c.docker_config.is_some(),
        c.json_key_file.is_some(),
        c.gce_metadata == Some(true),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if kinds != 1 {
        return Err(invalid(
            key("credentials"),
            "give one kind: username + a password, docker_config, json_key_file, or gce_metadata = true",
        ));
    }
    Ok(password_given)
}

fn fields_go_with_their_kind(c: &FileCredentials, k: Key<'_>) -> Result<(), ConfigError> {
    let only_with = |given: bool, field: &str, with: &str| {
        if given {
            Err(invalid(k(field), format!("only goes with {with}")))
        } else {
            Ok(())
        }
    };
    only_with(
        c.docker_config_key.is_some() && c.docker_config.is_none(),
        "docker_config_key",
        "docker_config",
    )?;
    only_with(
        c.json_key_base64.is_some() && c.json_key_file.is_none(),
        "json_key_base64",
        "json_key_file",
    )?;
    only_with(
        (c.metadata_host.is_some() || c.service_account.is_some()) && c.gce_metadata != Some(true),
        "metadata_host",
        "gce_metadata = true",
    )?;
    only_with(
        c.helper_timeout.is_some() && c.docker_config.is_none(),
        "helper_timeout",
        "docker_config",
    )
}

/// The Docker config.json keys under which `docker login` stores an upstream:
/// Docker Hub's index URL, else the registry host[:port], with or without a
/// scheme.
fn docker_config_keys(url: &reqwest::Url, aliases: &[String]) -> Vec<String> {
    let hub =
        aliases.iter().any(|a| a == "docker.io") || url.host_str() == Some("registry-1.docker.io");
    let mut keys = Vec::new();
    if hub {
        keys.extend([
            "https://index.docker.io/v1/".to_owned(),
            "docker.io".into(),
            "index.docker.io".into(),
        ]);
    }
    let host = match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    keys.push(host.clone());
    keys.push(format!("https://{host}"));
    keys.push(format!("http://{host}"));
    keys.extend(aliases.iter().cloned());
    keys
}

fn docker_config(
    path: &Path,
    keys: Vec<String>,
    timeout: Option<&str>,
    k: Key<'_>,
) -> Result<CredentialSpec, ConfigError> {
    let helper_timeout = match timeout {
        None => helper::DEFAULT_TIMEOUT,
        Some(t) => parse_duration(&k("helper_timeout"), t)?,
    };
    if helper_timeout.is_zero() {
        return Err(invalid(k("helper_timeout"), "must be more than 0"));
    }
    let bytes = read_private(&k("docker_config"), path)?;
    let in_file = |why: String| invalid(k("docker_config"), format!("{}: {why}", path.display()));
    let helper = match cred::docker_config_auth(&bytes, &keys).map_err(in_file)? {
        DockerAuth::Stored(_) => None,
        DockerAuth::Helper { helper, .. } => Some(HelperProgram::find(&helper).map_err(in_file)?),
    };
    Ok(CredentialSpec::DockerConfig {
        path: path.to_owned(),
        keys,
        helper_timeout,
        helper,
    })
}

fn gce_metadata(
    metadata_host: Option<String>,
    service_account: Option<String>,
    k: Key<'_>,
) -> Result<CredentialSpec, ConfigError> {
    // GCE_METADATA_HOST is what Google's own client libraries honour.
    let host = metadata_host
        .or_else(|| std::env::var("GCE_METADATA_HOST").ok())
        .unwrap_or_else(|| "169.254.169.254".into());
    if host.is_empty() || host.contains(['/', '?', '#', '@']) {
        return Err(invalid(k("metadata_host"), "give host or host:port"));
    }
    let account = service_account.unwrap_or_else(|| "default".into());
    if account.is_empty() || account.contains(['/', '?', '#']) {
        return Err(invalid(
            k("service_account"),
            "give an account e-mail or \"default\"",
        ));
    }
    Ok(CredentialSpec::GceMetadata { host, account })
}

/// A username with exactly one password source.
fn password(
    c: FileCredentials,
    password_given: usize,
    key: Key<'_>,
    base: Option<&Path>,
    warnings: &mut Vec<String>,
) -> Result<CredentialSpec, ConfigError> {
    let k = |f: &str| key(&format!("credentials.{f}"));
    let Some(username) = c.username.filter(|u| !u.is_empty()) else {
        return Err(invalid(k("username"), "a password needs a username"));
    };
    if username.contains(':') {
        return Err(invalid(k("username"), "must not contain ':'"));
    }
    if password_given != 1 {
        return Err(invalid(
            key("credentials"),
            "give exactly one of password_file, password_env, password_credential, password",
        ));
    }
    let password = if let Some(f) = c.password_file {
        let path = resolve(base, &f);
        read_secret_file(&k("password_file"), &path)?;
        SecretSpec::File {
            path,
            check_mode: true,
        }
    } else if let Some(name) = c.password_credential {
        systemd_credential(&name, &k("password_credential"))?
    } else if let Some(var) = c.password_env {
        SecretSpec::Value(Secret::new(std::env::var(&var).map_err(|_| {
            invalid(
                k("password_env"),
                format!("environment variable {var} is not set"),
            )
        })?))
    } else {
        warnings.push(format!(
            "{}: inline password in the config file; prefer password_file, password_credential or password_env",
            k("password")
        ));
        SecretSpec::Value(Secret::new(c.password.unwrap_or_default()))
    };
    Ok(CredentialSpec::Password { username, password })
}

/// `$CREDENTIALS_DIRECTORY/<name>` (systemd's `LoadCredential=`); `key`
/// names the field in errors.
pub(super) fn systemd_credential(name: &str, key: &str) -> Result<SecretSpec, ConfigError> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
        invalid(
            key,
            "$CREDENTIALS_DIRECTORY is not set (LoadCredential= in the systemd unit sets it)",
        )
    })?;
    if name.is_empty() || name.contains('/') {
        return Err(invalid(key, "give a credential name"));
    }
    let path = PathBuf::from(dir).join(name);
    std::fs::metadata(&path).map_err(|e| invalid(key, format!("{}: {e}", path.display())))?;
    Ok(SecretSpec::File {
        path,
        check_mode: false,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, CredentialSpec};

    #[test]
    fn secret_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret-value\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = format!(
            "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n[upstream.credentials]\nusername = \"u\"\npassword_file = {:?}\n",
            f
        );
        let e = Config::from_toml(&text, None).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && !e.contains("s3cret"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Config::from_toml(&text, None).unwrap();
        let spec = c.upstreams[0].credentials.as_ref().unwrap();
        let src = crate::upstream::credentials::source("a", spec, None);
        let got = futures_util::FutureExt::now_or_never(src.get())
            .unwrap()
            .unwrap();
        assert_eq!(got.password.expose(), "s3cret-value");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn inline_password_warns() {
        let text = "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n[upstream.credentials]\nusername = \"u\"\npassword = \"p\"\n";
        let c = Config::from_toml(text, None).unwrap();
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("inline password"));
        // Stored credentials on an open mirror are worth a warning too...
        assert!(c.warnings[1].contains("anyone who can reach wharf"));
        // ...which a repository list (or closed access) silences.
        let c = Config::from_toml(
            &format!("{text}[upstream.access]\nrepositories = [\"pub/*\"]\n"),
            None,
        )
        .unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    }

    #[test]
    fn credential_kinds() {
        let base = "[[upstream]]\nname = \"a\"\nurl = \"https://europe-docker.pkg.dev\"\n[upstream.credentials]\n";
        let err = |extra: &str| {
            Config::from_toml(&format!("{base}{extra}"), None)
                .unwrap_err()
                .to_string()
        };
        assert!(err("").contains("give one kind"));
        assert!(err("username = \"u\"\ngce_metadata = true\n").contains("give one kind"));
        assert!(err("username = \"u\"\n").contains("exactly one of password_file"));
        assert!(err("password_env = \"X\"\n").contains("needs a username"));
        assert!(err("gce_metadata = true\nmetadata_host = \"http://x/\"\n").contains("host:port"));
        assert!(err("json_key_base64 = true\ngce_metadata = true\n")
            .contains("only goes with json_key_file"));
        let c = Config::from_toml(
            &format!("{base}gce_metadata = true\nmetadata_host = \"127.0.0.1:1\"\n"),
            None,
        )
        .unwrap();
        assert!(
            matches!(&c.upstreams[0].credentials, Some(CredentialSpec::GceMetadata { host, account }) if host == "127.0.0.1:1" && account == "default")
        );
        // A key file must be private, and be a service-account key.
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("sa.json");
        std::fs::write(
            &key,
            r#"{"type":"service_account","client_email":"x@y","private_key":"k"}"#,
        )
        .unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(err(&format!("json_key_file = {key:?}\n")).contains("chmod 600"));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Config::from_toml(&format!("{base}json_key_file = {key:?}\n"), None).unwrap();
        assert!(matches!(
            &c.upstreams[0].credentials,
            Some(CredentialSpec::JsonKey { base64: false, .. })
        ));
        std::fs::write(&key, r#"{"type":"authorized_user"}"#).unwrap();
        assert!(err(&format!("json_key_file = {key:?}\n")).contains("not a service-account key"));
    }

    #[test]
    fn systemd_credentials_come_from_the_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hub"), "from-systemd\n").unwrap();
        // nextest runs every test in a process of its own.
        std::env::set_var("CREDENTIALS_DIRECTORY", dir.path());
        let text = "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n[upstream.credentials]\nusername = \"u\"\npassword_credential = \"hub\"\n";
        let c = Config::from_toml(text, None).unwrap();
        let src = crate::upstream::credentials::source(
            "a",
            c.upstreams[0].credentials.as_ref().unwrap(),
            None,
        );
        let got = futures_util::FutureExt::now_or_never(src.get())
            .unwrap()
            .unwrap();
        assert_eq!(got.password.expose(), "from-systemd");
        let e = Config::from_toml(&text.replace("\"hub\"", "\"missing\""), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("password_credential"), "{e}");
    }

    /// A config.json naming a helper: its name must be a word and the
    /// program on PATH; `helper_timeout` belongs to `docker_config`.
    #[test]
    fn docker_config_helpers_are_checked_at_load() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("config.json");
        let write = |text: &str| {
            std::fs::write(&json, text).unwrap();
            std::fs::set_permissions(&json, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        let text = |extra: &str| {
            format!("[[upstream]]\nname = \"a\"\nurl = \"https://gar.example:8443\"\n[upstream.credentials]\ndocker_config = \"config.json\"\n{extra}")
        };
        let load = |extra: &str| Config::from_toml(&text(extra), Some(dir.path()));
        write(r#"{"credHelpers":{"gar.example:8443":"a/b"}}"#);
        let e = load("").unwrap_err().to_string();
        assert!(
            e.starts_with("upstream[0].credentials.docker_config") && e.contains("\"a/b\" refused"),
            "{e}"
        );
        write(r#"{"credHelpers":{"gar.example:8443":"wharf-test-absent"}}"#);
        let e = load("").unwrap_err().to_string();
        assert!(
            e.contains("docker-credential-wharf-test-absent is not on PATH"),
            "{e}"
        );
        write(r#"{"auths":{"gar.example:8443":{"username":"u","password":"p"}}}"#);
        let c = load("helper_timeout = \"2s\"\n").unwrap();
        assert!(matches!(
            &c.upstreams[0].credentials,
            Some(CredentialSpec::DockerConfig { helper: None, helper_timeout, keys, path })
                if *helper_timeout == std::time::Duration::from_secs(2)
                    && keys[0] == "gar.example:8443"
                    && path == &Path::new(dir.path()).join("config.json")
        ));
        let e = load("helper_timeout = \"0s\"\n").unwrap_err().to_string();
        assert!(
            e.starts_with("upstream[0].credentials.helper_timeout"),
            "{e}"
        );
        let e = Config::from_toml(
            "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n[upstream.credentials]\ngce_metadata = true\nhelper_timeout = \"1s\"\n",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("helper_timeout: only goes with docker_config"),
            "{e}"
        );
    }
}
