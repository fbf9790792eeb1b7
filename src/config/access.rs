//! `[access]` and `[upstream.access]`: who may pull through the mirror. The
//! htpasswd and token files are parsed here once so `check-config` names a
//! broken one; `crate::access` re-reads them when they change.

use std::path::Path;

use crate::access::LoginLimits;
pub use crate::access::{AccessConfig, CertIdentity, UpstreamAccess};

use super::file::{FileAccess, FileUpstreamAccess};
use super::values::{parse_duration, read_private, resolve};
use super::{invalid, ConfigError};

impl AccessConfig {
    pub(super) fn from_file(
        a: FileAccess,
        base: Option<&Path>,
    ) -> Result<AccessConfig, ConfigError> {
        let htpasswd_file = match a.htpasswd_file {
            None => None,
            Some(p) => {
                let p = resolve(base, &p);
                let text = std::fs::read_to_string(&p).map_err(|e| {
                    invalid(
                        "access.htpasswd_file",
                        format!("cannot read {}: {e}", p.display()),
                    )
                })?;
                crate::access::Htpasswd::parse(&text).map_err(|why| {
                    invalid("access.htpasswd_file", format!("{}: {why}", p.display()))
                })?;
                Some(p)
            }
        };
        let tokens_file = match a.tokens_file {
            None => None,
            Some(p) => {
                let p = resolve(base, &p);
                let bytes = read_private("access.tokens_file", &p)?;
                crate::access::TokenList::parse(&bytes).map_err(|why| {
                    invalid("access.tokens_file", format!("{}: {why}", p.display()))
                })?;
                Some(p)
            }
        };
        Ok(AccessConfig {
            htpasswd_file,
            tokens_file,
            client_certificates: a.client_certificates.unwrap_or(false),
            client_certificate_user: match a.client_certificate_user {
                None => CertIdentity::default(),
                Some(v) => v
                    .parse()
                    .map_err(|e| invalid("access.client_certificate_user", e))?,
            },
            allow_networks: parse_networks("access.allow_networks", a.allow_networks)?,
            deny_networks: parse_networks("access.deny_networks", a.deny_networks)?,
            logins: login_limits(
                a.login_concurrency,
                a.failed_login_concurrency,
                a.max_failed_logins,
                a.failed_login_decay,
            )?,
        })
    }
}

/// `login_concurrency`, `failed_login_concurrency`, `max_failed_logins`,
/// `failed_login_decay`: each at least 1 (a zero would refuse every login
/// or disable the throttle), at most what one machine could use.
fn login_limits(
    concurrency: Option<u32>,
    failed_concurrency: Option<u32>,
    max_failed: Option<u32>,
    decay: Option<String>,
) -> Result<LoginLimits, ConfigError> {
    let d = LoginLimits::default();
    let count = |key: &str, v: Option<u32>, default: u32, max: u32| match v {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(invalid(key, format!("{n} is not between 1 and {max}"))),
    };
    let decay = match decay {
        None => d.decay,
        Some(s) => {
            let v = parse_duration("access.failed_login_decay", &s)?;
            if v.is_zero() {
                return Err(invalid(
                    "access.failed_login_decay",
                    "must be longer than 0s",
                ));
            }
            v
        }
    };
    Ok(LoginLimits {
        concurrency: count("access.login_concurrency", concurrency, d.concurrency, 1024)?,
        failed_concurrency: count(
            "access.failed_login_concurrency",
            failed_concurrency,
            d.failed_concurrency,
            1024,
        )?,
        max_failed: count(
            "access.max_failed_logins",
            max_failed,
            d.max_failed,
            1_000_000,
        )?,
        decay,
    })
}

pub(super) fn parse_networks(
    key: &str,
    list: Option<Vec<String>>,
) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    list.unwrap_or_default()
        .iter()
        .map(|n| {
            n.parse::<ipnet::IpNet>()
                .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| invalid(key, format!("{n:?} is not an address or CIDR network")))
        })
        .collect()
}

/// What an upstream's access rules are judged against.
pub(super) struct AccessContext<'a> {
    /// `[access] anonymous`.
    pub default_anonymous: Option<bool>,
    pub global: &'a AccessConfig,
}

impl UpstreamAccess {
    /// `key` names fields of this upstream (`upstream[i].…`), `name` is the
    /// upstream's.
    pub(super) fn from_file(
        a: FileUpstreamAccess,
        key: &dyn Fn(&str) -> String,
        name: &str,
        cx: &AccessContext<'_>,
        has_credentials: bool,
        warnings: &mut Vec<String>,
    ) -> Result<UpstreamAccess, ConfigError> {
        let auth = cx.global.has_authentication();
        // Without a way to authenticate, a mirror is open (as it was before
        // [access] existed); with one, it is closed unless said otherwise.
        let anonymous = a.anonymous.or(cx.default_anonymous).unwrap_or(!auth);
        if !anonymous && !auth {
            return Err(invalid(
                key("access.anonymous"),
                format!("upstream {name} refuses anonymous clients, but [access] gives clients no way to authenticate (htpasswd_file, tokens_file or client_certificates)"),
            ));
        }
        if let Some(users) = &a.users {
            if !auth {
                return Err(invalid(key("access.users"), "[access] configures no users"));
            }
            if users.iter().any(|u| u.is_empty() || u.contains(':')) {
                return Err(invalid(
                    key("access.users"),
                    "user names are non-empty and have no ':'",
                ));
            }
        }
        let repositories = a.repositories.unwrap_or_default();
        for r in &repositories {
            crate::access::repo_glob(r)
                .map_err(|why| invalid(key("access.repositories"), format!("{r:?}: {why}")))?;
        }
        if has_credentials && anonymous && repositories.is_empty() {
            warnings.push(format!(
                "upstream {name} pulls with stored credentials and serves anonymous clients every repository: anyone who can reach wharf gets what those credentials protect; set [upstream.access] anonymous = false or repositories"
            ));
        }
        Ok(UpstreamAccess {
            anonymous,
            users: a.users,
            repositories,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn access_rules() {
        let up = "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n";
        let err = |t: &str| Config::from_toml(t, None).unwrap_err().to_string();
        // Open by default without authentication; closing needs a way in.
        let c = Config::from_toml(up, None).unwrap();
        assert!(c.upstreams[0].access.anonymous);
        assert!(err(&format!("{up}[upstream.access]\nanonymous = false\n"))
            .contains("no way to authenticate"));
        assert!(err(&format!(
            "[access]\nallow_networks = [\"10.0.0.0/33\"]\n{up}"
        ))
        .contains("not an address or CIDR"));
        assert!(err(&format!(
            "{up}[upstream.access]\nrepositories = [\"a/[\"]\n"
        ))
        .contains("repositories"));
        let c = Config::from_toml(&format!("[access]\nclient_certificates = true\nallow_networks = [\"10.1.2.3\", \"::1\"]\n{up}"), None).unwrap();
        assert!(
            !c.upstreams[0].access.anonymous,
            "closed once clients can authenticate"
        );
        assert_eq!(c.access.allow_networks.len(), 2);
        assert_eq!(
            c.access.client_certificate_user,
            crate::access::CertIdentity::CommonName
        );
        let c = Config::from_toml(
            &format!(
                "[access]\nclient_certificates = true\nclient_certificate_user = \"san-uri\"\n{up}"
            ),
            None,
        )
        .unwrap();
        assert_eq!(
            c.access.client_certificate_user,
            crate::access::CertIdentity::SanUri
        );
        assert!(
            err(&format!("[access]\nclient_certificate_user = \"ou\"\n{up}"))
                .contains("access.client_certificate_user")
        );
    }

    #[test]
    fn login_limits() {
        let up = "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n";
        let c = Config::from_toml(up, None).unwrap();
        assert_eq!(c.access.logins, crate::access::LoginLimits::default());
        let c = Config::from_toml(
            &format!("[access]\nlogin_concurrency = 4\nfailed_login_concurrency = 2\nmax_failed_logins = 3\nfailed_login_decay = \"1m\"\n{up}"),
            None,
        )
        .unwrap();
        let l = c.access.logins;
        assert_eq!(
            (
                l.concurrency,
                l.failed_concurrency,
                l.max_failed,
                l.decay.as_secs()
            ),
            (4, 2, 3, 60)
        );
        for (text, key) in [
            ("login_concurrency = 0", "access.login_concurrency"),
            (
                "failed_login_concurrency = 0",
                "access.failed_login_concurrency",
            ),
            ("max_failed_logins = 0", "access.max_failed_logins"),
            ("failed_login_decay = \"0s\"", "access.failed_login_decay"),
            ("failed_login_decay = \"soon\"", "access.failed_login_decay"),
        ] {
            let e = Config::from_toml(&format!("[access]\n{text}\n{up}"), None)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(key), "{text}: {e}");
        }
    }
}
