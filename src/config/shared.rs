//! `[shared]` into [`SharedSettings`]: the store's URL, endpoint and
//! credentials, and the tier's timing and memory. Each credential has
//! exactly one source (a file, an environment variable or a systemd
//! credential), as upstream passwords do; none is read into an error.

use std::path::{Path, PathBuf};

use crate::shared::{Backend, PeerSettings, SharedSettings, StoreCredentials};
use crate::upstream::credentials::SecretSpec;

use super::credentials::systemd_credential;
use super::file::FileShared;
use super::values::{no_userinfo, parse_duration, parse_size, read_secret_file, resolve};
use super::{invalid, ConfigError};
use crate::secret::Secret;

impl SharedSettings {
    pub(super) fn from_file(
        s: FileShared,
        base: Option<&Path>,
    ) -> Result<SharedSettings, ConfigError> {
        no_userinfo("shared.url", &s.url)?;
        let (backend, rest) = if let Some(r) = s.url.strip_prefix("s3://") {
            (Backend::S3, r)
        } else if let Some(r) = s.url.strip_prefix("gs://") {
            (Backend::Gcs, r)
        } else {
            return Err(invalid(
                "shared.url",
                "use s3://bucket/prefix or gs://bucket/prefix",
            ));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
        if !bucket_ok {
            return Err(invalid(
                "shared.url",
                "the bucket name needs 3 to 63 of a-z, 0-9, '-', '.', '_'",
            ));
        }
        let prefix_ok = prefix.split('/').all(|seg| {
            prefix.is_empty()
                || (!seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)))
        });
        if !prefix_ok {
            return Err(invalid(
                "shared.url",
                "the prefix takes segments of letters, digits, '-', '.', '_'",
            ));
        }
        if let Some(e) = &s.endpoint {
            no_userinfo("shared.endpoint", e)?;
            let ok = reqwest::Url::parse(e)
                .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .unwrap_or(false);
            if !ok {
                return Err(invalid(
                    "shared.endpoint",
                    "give the store's base URL, e.g. https://storage.example.internal",
                ));
            }
            if backend == Backend::Gcs {
                return Err(invalid(
                    "shared.endpoint",
                    "gs:// talks to GCS itself; for GCS's S3-compatible XML API with HMAC keys use s3:// with endpoint = \"https://storage.googleapis.com\"",
                ));
            }
        }
        let credentials = credentials(&s, backend, base)?;
        let duration = |key: &str, v: &Option<String>, default: u64| match v {
            Some(v) => parse_duration(&format!("shared.{key}"), v),
            None => Ok(std::time::Duration::from_secs(default)),
        };
        let lease_ttl = duration("lease_ttl", &s.lease_ttl, 30)?;
        if lease_ttl < std::time::Duration::from_secs(1) {
            return Err(invalid("shared.lease_ttl", "at least 1s"));
        }
        let max_wait = duration("max_wait", &s.max_wait, 600)?;
        // A renewal is sent lease_ttl/3 after the last and must land before
        // the lease expires.
        let request_timeout = match &s.request_timeout {
            Some(v) => parse_duration("shared.request_timeout", v)?,
            None => std::time::Duration::from_secs(5).min(lease_ttl / 3),
        };
        if request_timeout.is_zero() || request_timeout * 3 >= lease_ttl * 2 {
            return Err(invalid(
                "shared.request_timeout",
                "must be above zero and below 2/3 of lease_ttl (a renewal, sent every lease_ttl/3, must land within the ttl)",
            ));
        }
        let retry_after = duration("retry_after", &s.retry_after, 10)?;
        let upload_memory = match &s.upload_memory {
            Some(v) => parse_size("shared.upload_memory", v)?,
            None => 10 << 20,
        };
        if upload_memory < crate::shared::PART_SIZE {
            return Err(invalid(
                "shared.upload_memory",
                format!(
                    "at least one upload part ({} MiB)",
                    crate::shared::PART_SIZE >> 20
                ),
            ));
        }
        let max_uploads = s.max_uploads.unwrap_or(4);
        if max_uploads == 0 {
            return Err(invalid("shared.max_uploads", "at least 1"));
        }
        let peer = peer(&s, base)?;
        if peer.is_some() && !s.write.unwrap_or(true) {
            return Err(invalid(
                "shared.peer_listen",
                "a node with write = false never leads a fill, so it has nothing to serve its peers",
            ));
        }
        Ok(SharedSettings {
            url: s.url.clone(),
            backend,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            endpoint: s.endpoint.clone(),
            region: s.region.clone().unwrap_or_else(|| "us-east-1".to_owned()),
            credentials,
            write: s.write.unwrap_or(true),
            lease_ttl,
            max_wait,
            request_timeout,
            retry_after,
            upload_memory,
            max_uploads,
            peer,
        })
    }
}

/// The smallest peer key: 32 bytes, HMAC-SHA256's own output size.
const MIN_PEER_KEY: usize = 32;

fn peer(s: &FileShared, base: Option<&Path>) -> Result<Option<PeerSettings>, ConfigError> {
    let key = secret(
        "peer_key",
        &s.peer_key_file,
        &s.peer_key_env,
        &s.peer_key_credential,
        base,
    )?;
    let Some(listen) = &s.peer_listen else {
        if key.is_some() || s.peer_address.is_some() || s.peer_address_env.is_some() {
            return Err(invalid(
                "shared.peer_listen",
                "peer_key_* and peer_address* go with peer_listen",
            ));
        }
        return Ok(None);
    };
    let listen: std::net::SocketAddr = listen.parse().map_err(|_| {
        invalid(
            "shared.peer_listen",
            "give an address and port, e.g. \"0.0.0.0:5052\"",
        )
    })?;
    let Some(key) = key else {
        return Err(invalid(
            "shared.peer_key_file",
            "peer_listen needs a key every node shares (peer_key_file, peer_key_env or peer_key_credential): 32 characters or more, e.g. `openssl rand -base64 48`",
        ));
    };
    let long_enough = match &key {
        SecretSpec::Value(v) => v.expose().trim().len() >= MIN_PEER_KEY,
        SecretSpec::File { path, .. } => std::fs::read(path)
            .map(|b| b.trim_ascii().len() >= MIN_PEER_KEY)
            .unwrap_or(false),
    };
    if !long_enough {
        return Err(invalid(
            "shared.peer_key",
            format!(
                "the peer key needs {MIN_PEER_KEY} characters or more, used as text (e.g. `openssl rand -base64 48`)"
            ),
        ));
    }
    let address = match (&s.peer_address, &s.peer_address_env) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "shared.peer_address",
                "give peer_address or peer_address_env, not both",
            ))
        }
        // An ip:port, written the one way every node writes it (the
        // signed requests name it): host names are never dialled.
        (Some(a), None) => Some(
            a.parse::<std::net::SocketAddr>()
                .map_err(|_| {
                    invalid(
                        "shared.peer_address",
                        format!("{a:?} is no ip:port (other nodes dial addresses, never names)"),
                    )
                })?
                .to_string(),
        ),
        (None, Some(var)) => {
            let host = std::env::var(var).map_err(|_| {
                invalid(
                    "shared.peer_address_env",
                    format!("environment variable {var} is not set"),
                )
            })?;
            let ip: std::net::IpAddr = host.trim().parse().map_err(|_| {
                invalid(
                    "shared.peer_address_env",
                    format!("{var} holds no IP address"),
                )
            })?;
            Some(std::net::SocketAddr::new(ip, listen.port()).to_string())
        }
        (None, None) => {
            if listen.ip().is_unspecified() {
                return Err(invalid(
                    "shared.peer_address",
                    "peer_listen binds every address: say which one other nodes dial (peer_address, or peer_address_env = \"NODE_IP\")",
                ));
            }
            None
        }
    };
    Ok(Some(PeerSettings {
        listen,
        address,
        key,
    }))
}

fn credentials(
    s: &FileShared,
    backend: Backend,
    base: Option<&Path>,
) -> Result<StoreCredentials, ConfigError> {
    let id = secret(
        "access_key_id",
        &s.access_key_id_file,
        &s.access_key_id_env,
        &s.access_key_id_credential,
        base,
    )?;
    let key = secret(
        "secret_access_key",
        &s.secret_access_key_file,
        &s.secret_access_key_env,
        &s.secret_access_key_credential,
        base,
    )?;
    match backend {
        Backend::S3 => {
            if s.service_account_file.is_some() {
                return Err(invalid(
                    "shared.service_account_file",
                    "only for gs:// (S3 stores take access_key_id_* and secret_access_key_*)",
                ));
            }
            match (id, key) {
                (Some(access_key_id), Some(secret_access_key)) => Ok(StoreCredentials::Keys {
                    access_key_id,
                    secret_access_key,
                }),
                (None, None) => Ok(StoreCredentials::Environment),
                _ => Err(invalid(
                    "shared",
                    "give both an access_key_id_* and a secret_access_key_* source, or neither (the AWS_* environment, web identity or instance metadata)",
                )),
            }
        }
        Backend::Gcs => {
            if id.is_some() || key.is_some() {
                return Err(invalid(
                    "shared",
                    "gs:// authenticates with a service account (service_account_file, or the metadata server); HMAC keys go with s3:// and endpoint = \"https://storage.googleapis.com\"",
                ));
            }
            match &s.service_account_file {
                Some(p) => {
                    let path = resolve(base, p);
                    read_secret_file("shared.service_account_file", &path)?;
                    Ok(StoreCredentials::ServiceAccountFile(path))
                }
                None => Ok(StoreCredentials::GceMetadata),
            }
        }
    }
}

/// One secret's source: at most one of `<name>_file`, `<name>_env`,
/// `<name>_credential`.
fn secret(
    name: &str,
    file: &Option<PathBuf>,
    env: &Option<String>,
    credential: &Option<String>,
    base: Option<&Path>,
) -> Result<Option<SecretSpec>, ConfigError> {
    let given = [file.is_some(), env.is_some(), credential.is_some()]
        .iter()
        .filter(|g| **g)
        .count();
    if given > 1 {
        return Err(invalid(
            format!("shared.{name}"),
            format!("give one of {name}_file, {name}_env, {name}_credential"),
        ));
    }
    if let Some(f) = file {
        let key = format!("shared.{name}_file");
        let path = resolve(base, f);
        read_secret_file(&key, &path)?;
        return Ok(Some(SecretSpec::File {
            path,
            check_mode: true,
        }));
    }
    if let Some(var) = env {
        let key = format!("shared.{name}_env");
        let v = std::env::var(var)
            .map_err(|_| invalid(key, format!("environment variable {var} is not set")))?;
        return Ok(Some(SecretSpec::Value(Secret::new(v))));
    }
    if let Some(c) = credential {
        return systemd_credential(c, &format!("shared.{name}_credential")).map(Some);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::shared::{Backend, StoreCredentials};

    const UP: &str = "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n";

    fn err(shared: &str) -> String {
        Config::from_toml(&format!("{UP}[shared]\n{shared}"), None)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn urls_endpoints_and_credentials() {
        let c = Config::from_toml(
            &format!("{UP}[shared]\nurl = \"s3://wharf-cache/prod/eu\"\nendpoint = \"http://127.0.0.1:8333\"\n"),
            None,
        )
        .unwrap();
        let s = c.shared.unwrap();
        assert_eq!(
            (s.bucket.as_str(), s.prefix.as_str()),
            ("wharf-cache", "prod/eu")
        );
        assert!(matches!(s.credentials, StoreCredentials::Environment));
        assert!(s.write);
        let g = Config::from_toml(&format!("{UP}[shared]\nurl = \"gs://b-1/\"\n"), None)
            .unwrap()
            .shared
            .unwrap();
        assert_eq!((g.backend, g.prefix.as_str()), (Backend::Gcs, ""));
        assert!(matches!(g.credentials, StoreCredentials::GceMetadata));

        assert!(err("url = \"http://x/y\"\n").starts_with("shared.url"));
        assert!(err("url = \"s3://ab\"\n").contains("bucket name"));
        assert!(err("url = \"s3://bucket/../x\"\n").contains("prefix"));
        let e = err("url = \"s3://bucket\"\nendpoint = \"https://k:hunter2@store\"\n");
        assert!(
            e.starts_with("shared.endpoint") && !e.contains("hunter2"),
            "{e}"
        );
        // The hint names [shared]'s own keys, not [upstream.credentials].
        assert!(
            e.contains("access_key_id_file") && !e.contains("upstream"),
            "{e}"
        );
        assert!(err("url = \"s3://bucket\"\naccess_key_id_env = \"PATH\"\n").contains("give both"));
        assert!(err("url = \"gs://bucket\"\naccess_key_id_env = \"PATH\"\nsecret_access_key_env = \"PATH\"\n")
            .contains("HMAC keys go with s3://"));
        assert!(err("url = \"s3://bucket\"\nrequest_timeout = \"40s\"\n")
            .starts_with("shared.request_timeout"));
        assert!(err("url = \"s3://bucket\"\nupload_memory = \"1MiB\"\n")
            .starts_with("shared.upload_memory"));
    }

    #[test]
    fn peers_need_a_long_shared_key_and_an_address_others_can_dial() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("peer.key");
        std::fs::write(&key, "k".repeat(31)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let with = |extra: &str| {
            Config::from_toml(
                &format!("{UP}[shared]\nurl = \"s3://bucket\"\n{extra}"),
                Some(dir.path()),
            )
        };
        let e = |extra: &str| with(extra).unwrap_err().to_string();
        assert!(e("peer_listen = \"127.0.0.1:5052\"\n").contains("needs a key"));
        assert!(e("peer_key_file = \"peer.key\"\n").starts_with("shared.peer_listen"));
        let short = e("peer_listen = \"127.0.0.1:5052\"\npeer_key_file = \"peer.key\"\n");
        assert!(
            short.contains("32 characters") && !short.contains("kkkk"),
            "{short}"
        );
        std::fs::write(&key, "k".repeat(44)).unwrap();
        let listen = "peer_key_file = \"peer.key\"\npeer_listen = ";
        assert!(e(&format!("{listen}\"0.0.0.0:5052\"\n")).starts_with("shared.peer_address"));
        assert!(e(&format!("{listen}\"127.0.0.1:5052\"\nwrite = false\n")).contains("never leads"));
        assert!(e(&format!(
            "{listen}\"0.0.0.0:5052\"\npeer_address = \"a/b\"\n"
        ))
        .contains("no ip:port"));
        let p = with(&format!(
            "{listen}\"0.0.0.0:5052\"\npeer_address = \"10.0.0.7:5052\"\n"
        ))
        .unwrap()
        .shared
        .unwrap()
        .peer
        .unwrap();
        assert_eq!(p.address.as_deref(), Some("10.0.0.7:5052"));
        let p = with(&format!("{listen}\"127.0.0.1:0\"\n"))
            .unwrap()
            .shared
            .unwrap()
            .peer
            .unwrap();
        assert_eq!(p.address, None, "the bound address");
    }

    #[test]
    fn key_files_must_be_private_and_are_never_quoted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let id = dir.path().join("id");
        let key = dir.path().join("key");
        std::fs::write(&id, "AKIDEXAMPLE").unwrap();
        std::fs::write(&key, "s3cr3t-value").unwrap();
        std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = format!(
            "{UP}[shared]\nurl = \"s3://bucket\"\naccess_key_id_file = \"id\"\nsecret_access_key_file = \"key\"\n"
        );
        let e = Config::from_toml(&text, Some(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("shared.secret_access_key_file") && e.contains("chmod 600"),
            "{e}"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Config::from_toml(&text, Some(dir.path())).unwrap();
        let printed = format!("{c:?}");
        assert!(!printed.contains("s3cr3t-value") && !printed.contains("AKIDEXAMPLE"));
        assert!(matches!(
            c.shared.unwrap().credentials,
            StoreCredentials::Keys { .. }
        ));
    }
}
