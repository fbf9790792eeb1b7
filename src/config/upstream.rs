//! `[[upstream]]` into [`UpstreamConfig`]: name, URL, the routing words
//! (aliases, prefix, default) each unique across upstreams, TLS trust,
//! credentials (`credentials.rs`) and access rules (`access.rs`).

use std::collections::HashSet;
use std::path::Path;

use crate::upstream::credentials::CredentialSpec;
use crate::upstream::{BodyLimits, HostSpec};

use super::access::{AccessContext, UpstreamAccess};

use super::file::FileUpstream;
use super::values::{parse_duration, parse_size, resolve};
use super::{invalid, ConfigError};
pub use crate::upstream::UpstreamConfig;

/// What every upstream is validated against.
pub(super) struct UpstreamContext<'a> {
    /// The config file's directory.
    pub base: Option<&'a Path>,
    pub access: AccessContext<'a>,
    /// The top-level `offline = true`.
    pub all_offline: bool,
}

/// Names, aliases and prefixes already taken: each selects one upstream.
#[derive(Default)]
struct Taken {
    names: HashSet<String>,
    aliases: HashSet<String>,
    prefixes: HashSet<String>,
}

type Key<'a> = &'a dyn Fn(&str) -> String;

impl UpstreamConfig {
    /// Every `[[upstream]]`, in order; at most one default.
    pub(super) fn all_from_file(
        list: Vec<FileUpstream>,
        cx: &UpstreamContext<'_>,
        warnings: &mut Vec<String>,
    ) -> Result<Vec<UpstreamConfig>, ConfigError> {
        let mut taken = Taken::default();
        let mut upstreams = Vec::with_capacity(list.len());
        for (i, u) in list.into_iter().enumerate() {
            upstreams.push(UpstreamConfig::from_file(i, u, &mut taken, cx, warnings)?);
        }
        if upstreams.iter().filter(|u| u.default).count() > 1 {
            return Err(invalid(
                "upstream.default",
                "at most one upstream may be the default",
            ));
        }
        Ok(upstreams)
    }

    fn from_file(
        i: usize,
        u: FileUpstream,
        taken: &mut Taken,
        cx: &UpstreamContext<'_>,
        warnings: &mut Vec<String>,
    ) -> Result<UpstreamConfig, ConfigError> {
        let key = |f: &str| format!("upstream[{i}].{f}");
        taken.name(&u.name, &key)?;
        let url = registry_url(&u.url, &key)?;
        let aliases = taken.aliases(&u.aliases, &key)?;
        if let Some(p) = &u.prefix {
            taken.prefix(p, &key)?;
        }
        let library_prefix = u.library_prefix.unwrap_or_else(|| {
            aliases.iter().any(|a| a == "docker.io")
                || url.host_str() == Some("registry-1.docker.io")
        });
        let ca_pem = match &u.ca_file {
            None => None,
            Some(p) => Some(ca_bundle(&resolve(cx.base, p), &key)?),
        };
        let connect_timeout = parse_duration(
            &key("connect_timeout"),
            u.connect_timeout.as_deref().unwrap_or("10s"),
        )?;
        let answer_timeout = parse_duration(
            &key("answer_timeout"),
            u.answer_timeout.as_deref().unwrap_or("2m"),
        )?;
        if answer_timeout.is_zero() {
            return Err(invalid(key("answer_timeout"), "must be more than 0s"));
        }
        let token_realms = host_list(&u.token_realms, &key("token_realms"))?;
        let redirect_hosts = host_list(&u.redirect_hosts, &key("redirect_hosts"))?;
        let limits = body_limits(&u, &key)?;
        let credentials = match u.credentials {
            None => None,
            Some(c) => Some(CredentialSpec::from_file(
                c, &key, &url, &aliases, cx.base, warnings,
            )?),
        };
        let access = UpstreamAccess::from_file(
            u.access.unwrap_or_default(),
            &key,
            &u.name,
            &cx.access,
            credentials.is_some(),
            warnings,
        )?;
        Ok(UpstreamConfig {
            name: u.name,
            url,
            aliases,
            prefix: u.prefix,
            default: u.default,
            library_prefix,
            ca_pem,
            connect_timeout,
            answer_timeout,
            credentials,
            access,
            offline: cx.all_offline || u.offline.unwrap_or(false),
            shared: u.shared.unwrap_or(true),
            token_realms,
            redirect_hosts,
            limits,
        })
    }
}

impl Taken {
    fn name(&mut self, name: &str, key: Key<'_>) -> Result<(), ConfigError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(key("name"), "use letters, digits, '-' and '_'"));
        }
        if !self.names.insert(name.to_owned()) {
            return Err(invalid(key("name"), format!("duplicate upstream {name:?}")));
        }
        Ok(())
    }

    /// The aliases, lowercased.
    fn aliases(&mut self, list: &[String], key: Key<'_>) -> Result<Vec<String>, ConfigError> {
        let mut out = Vec::with_capacity(list.len());
        for a in list {
            let a = a.to_ascii_lowercase();
            if !self.aliases.insert(a.clone()) {
                return Err(invalid(
                    key("aliases"),
                    format!("{a:?} is already an alias of another upstream"),
                ));
            }
            out.push(a);
        }
        Ok(out)
    }

    fn prefix(&mut self, p: &str, key: Key<'_>) -> Result<(), ConfigError> {
        if p.contains('/') || p.parse::<crate::registry::RepoName>().is_err() {
            return Err(invalid(
                key("prefix"),
                "must be one lowercase name component",
            ));
        }
        if !self.prefixes.insert(p.to_owned()) {
            return Err(invalid(key("prefix"), format!("duplicate prefix {p:?}")));
        }
        Ok(())
    }
}

/// `http(s)://host[:port]` and nothing else: wharf adds `/v2/`.
fn registry_url(text: &str, key: Key<'_>) -> Result<reqwest::Url, ConfigError> {
    super::values::no_userinfo(&key("url"), text)?;
    let url =
        reqwest::Url::parse(text).map_err(|e| invalid(key("url"), format!("{e}: {text:?}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid(
            key("url"),
            "must be an http:// or https:// URL with a host",
        ));
    }
    if url.path() != "/" || url.query().is_some() {
        return Err(invalid(
            key("url"),
            "give only scheme, host and port (wharf adds /v2/)",
        ));
    }
    Ok(url)
}

/// `token_realms` / `redirect_hosts`: `host` or `host:port` each.
fn host_list(list: &[String], key: &str) -> Result<Vec<HostSpec>, ConfigError> {
    list.iter()
        .map(|h| HostSpec::parse(h).map_err(|e| invalid(key, e)))
        .collect()
}

/// The most of each kind of answer wharf reads from this upstream.
fn body_limits(u: &FileUpstream, key: Key<'_>) -> Result<BodyLimits, ConfigError> {
    let d = BodyLimits::default();
    let size = |field: &str, v: &Option<String>, default: usize, min: usize, max: usize| {
        let Some(text) = v else {
            return Ok(default);
        };
        let n = parse_size(&key(field), text)?;
        if n < min as u64 || n > max as u64 {
            return Err(invalid(
                key(field),
                format!("must be between {} KiB and {} MiB", min >> 10, max >> 20),
            ));
        }
        Ok(n as usize)
    };
    Ok(BodyLimits {
        manifest: size(
            "max_manifest_size",
            &u.max_manifest_size,
            d.manifest,
            4 << 10,
            32 << 20,
        )?,
        tag_list_page: size(
            "max_tag_list_page",
            &u.max_tag_list_page,
            d.tag_list_page,
            4 << 10,
            256 << 20,
        )?,
        token: size(
            "max_token_response",
            &u.max_token_response,
            d.token,
            4 << 10,
            16 << 20,
        )?,
        error_body: size(
            "max_error_body",
            &u.max_error_body,
            d.error_body,
            1 << 10,
            16 << 20,
        )?,
    })
}

/// `ca_file`: read now, and refused unless it holds PEM certificates.
fn ca_bundle(p: &Path, key: Key<'_>) -> Result<Vec<u8>, ConfigError> {
    let pem =
        std::fs::read(p).map_err(|e| invalid(key("ca_file"), format!("{}: {e}", p.display())))?;
    reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        invalid(
            key("ca_file"),
            format!("{}: not a PEM certificate: {e}", p.display()),
        )
    })?;
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn routing_words_are_unique() {
        let up = |name: &str, extra: &str| {
            format!("[[upstream]]\nname = \"{name}\"\nurl = \"https://{name}.example\"\n{extra}")
        };
        let err = |t: String| Config::from_toml(&t, None).unwrap_err().to_string();
        let e =
            err(up("a", "aliases = [\"Reg.Example\"]\n")
                + &up("b", "aliases = [\"reg.example\"]\n"));
        assert!(
            e.starts_with("upstream[1].aliases") && e.contains("already an alias"),
            "{e}"
        );
        let e = err(up("a", "prefix = \"p\"\n") + &up("b", "prefix = \"p\"\n"));
        assert!(e.starts_with("upstream[1].prefix: duplicate prefix"), "{e}");
        let e = err(up("a", "default = true\n") + &up("b", "default = true\n"));
        assert!(e.starts_with("upstream.default"), "{e}");
        let e = err(up("a b", ""));
        assert!(e.starts_with("upstream[0].name"), "{e}");
        let e = err(up("a", "").replace(".example\"", ".example/v2/\""));
        assert!(e.starts_with("upstream[0].url: give only scheme"), "{e}");
        let e = err(up("a", "ca_file = \"/nonexistent/ca.pem\"\n"));
        assert!(e.starts_with("upstream[0].ca_file"), "{e}");
        let e = err(up("a", "connect_timeout = \"soon\"\n"));
        assert!(e.starts_with("upstream[0].connect_timeout"), "{e}");
        let c = Config::from_toml(
            &(up("a", "aliases = [\"Docker.IO\"]\noffline = true\n") + &up("b", "")),
            None,
        )
        .unwrap();
        assert_eq!(c.upstreams[0].aliases, ["docker.io"]);
        assert!(c.upstreams[0].library_prefix && !c.upstreams[1].library_prefix);
        assert!(c.upstreams[0].offline && !c.upstreams[1].offline);
    }

    #[test]
    fn destinations_and_body_limits() {
        let cfg = |extra: &str| {
            Config::from_toml(
                &format!("[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:5000\"\n{extra}"),
                None,
            )
        };
        let c = cfg("token_realms = [\"127.0.0.1:5001\", \"auth.example.com\"]\nredirect_hosts = [\"[::1]:9\"]\nmax_manifest_size = \"8MiB\"\nmax_error_body = \"4KiB\"\n").unwrap();
        let u = &c.upstreams[0];
        let shown: Vec<String> = u.token_realms.iter().map(|h| h.to_string()).collect();
        assert_eq!(shown, ["127.0.0.1:5001", "auth.example.com"]);
        assert_eq!(u.redirect_hosts[0].to_string(), "[::1]:9");
        assert_eq!(u.limits.manifest, 8 << 20);
        assert_eq!(u.limits.error_body, 4 << 10);
        assert_eq!(u.limits.token, 1 << 20, "default");
        assert_eq!(u.limits.tag_list_page, 4 << 20, "default");
        let err = |extra: &str| cfg(extra).unwrap_err().to_string();
        let e = err("token_realms = [\"169.254.169.254\"]\n");
        assert!(
            e.starts_with("upstream[0].token_realms") && e.contains("link-local"),
            "{e}"
        );
        let e = err("redirect_hosts = [\"http://x/y\"]\n");
        assert!(e.starts_with("upstream[0].redirect_hosts"), "{e}");
        let e = err("max_manifest_size = \"1GiB\"\n");
        assert!(
            e.starts_with("upstream[0].max_manifest_size") && e.contains("between"),
            "{e}"
        );
        let e = err("max_token_response = \"lots\"\n");
        assert!(e.starts_with("upstream[0].max_token_response"), "{e}");
    }
}
