//! `[server] plain_http` and `[server.tls]` into a [`TlsConfig`]: plain HTTP
//! (said explicitly), an auto certificate from wharf's CA, or certificate
//! files; and client certificates (mTLS).

use std::net::SocketAddr;
use std::path::Path;

use crate::tls::{TlsConfig, TlsMode};

use super::file::FileTls;
use super::values::{parse_duration, resolve};
use super::{invalid, ConfigError};

impl TlsConfig {
    pub(super) fn from_file(
        plain_http: Option<bool>,
        tls: Option<FileTls>,
        listen: SocketAddr,
        base: Option<&Path>,
        warnings: &mut Vec<String>,
    ) -> Result<TlsConfig, ConfigError> {
        let plain = plain_http.unwrap_or(false);
        if plain && tls.is_some() {
            return Err(invalid(
                "server.plain_http",
                "cannot be combined with [server.tls]",
            ));
        }
        let t = tls.unwrap_or_default();
        let reload_interval = parse_duration(
            "server.tls.reload_interval",
            t.reload_interval.as_deref().unwrap_or("30s"),
        )?;
        let client_auth_required = match t.client_auth.as_deref() {
            None | Some("required") => true,
            Some("optional") => false,
            Some(other) => {
                return Err(invalid(
                    "server.tls.client_auth",
                    format!("{other:?} is not \"required\" or \"optional\""),
                ))
            }
        };
        if t.client_auth.is_some() && t.client_ca_file.is_none() {
            return Err(invalid("server.tls.client_auth", "needs client_ca_file"));
        }
        let client_ca = t.client_ca_file.as_ref().map(|p| resolve(base, p));
        let mode = if plain {
            if !listen.ip().is_loopback() {
                warnings.push(format!(
                    "server.plain_http: serving plain HTTP on {listen}, which is not loopback: clients need an insecure-registries entry and traffic is readable on the network"
                ));
            }
            TlsMode::Plain
        } else {
            certificate_mode(t, listen, base)?
        };
        Ok(TlsConfig {
            mode,
            client_ca,
            client_auth_required,
            reload_interval,
        })
    }
}

/// Files, or an auto certificate: never both, never half of the files.
fn certificate_mode(
    t: FileTls,
    listen: SocketAddr,
    base: Option<&Path>,
) -> Result<TlsMode, ConfigError> {
    match (t.auto, t.cert_file, t.key_file) {
        (Some(true), Some(_), _) | (Some(true), _, Some(_)) => Err(invalid(
            "server.tls.auto",
            "auto = true cannot be combined with cert_file/key_file",
        )),
        (_, Some(c), Some(k)) => {
            if t.names.is_some() {
                return Err(invalid("server.tls.names", "only used with auto = true"));
            }
            Ok(TlsMode::Files {
                cert: resolve(base, &c),
                key: resolve(base, &k),
            })
        }
        (_, Some(_), None) => Err(invalid("server.tls.key_file", "cert_file needs key_file")),
        (_, None, Some(_)) => Err(invalid("server.tls.cert_file", "key_file needs cert_file")),
        (Some(false), None, None) => Err(invalid(
            "server.tls.auto",
            "auto = false needs cert_file and key_file (or set server.plain_http = true)",
        )),
        (_, None, None) => Ok(TlsMode::Auto {
            names: auto_names(t.names, listen)?,
        }),
    }
}

/// The auto certificate's names: DNS names (wildcards allowed) or addresses.
fn auto_names(names: Option<Vec<String>>, listen: SocketAddr) -> Result<Vec<String>, ConfigError> {
    let names = names.unwrap_or_else(|| crate::tls::default_names(listen));
    if names.is_empty() {
        return Err(invalid("server.tls.names", "give at least one name"));
    }
    for n in &names {
        let dns_name = n.len() <= 253
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'*');
        if n.parse::<std::net::IpAddr>().is_err() && !dns_name {
            return Err(invalid(
                "server.tls.names",
                format!("{n:?} is neither a DNS name nor an IP address"),
            ));
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, TlsMode};

    #[test]
    fn tls_modes() {
        let up = "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n";
        let c = Config::from_toml(up, None).unwrap();
        assert!(
            matches!(c.tls.mode, TlsMode::Auto { ref names } if names.contains(&"localhost".to_string())),
            "TLS by default"
        );
        let c = Config::from_toml(&format!("[server]\nplain_http = true\n{up}"), None).unwrap();
        assert_eq!(c.tls.mode, TlsMode::Plain);
        assert!(c.warnings.is_empty(), "loopback plain HTTP is fine");
        let c = Config::from_toml(
            &format!("[server]\nlisten = \"0.0.0.0:5000\"\nplain_http = true\n{up}"),
            None,
        )
        .unwrap();
        assert_eq!(c.warnings.len(), 1, "plain HTTP off loopback warns");
        let c = Config::from_toml(
            &format!("[server.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nclient_ca_file = \"ca.pem\"\nclient_auth = \"optional\"\n{up}"),
            Some(Path::new("/etc/wharf")),
        )
        .unwrap();
        assert_eq!(
            c.tls.mode,
            TlsMode::Files {
                cert: "/etc/wharf/c.pem".into(),
                key: "/etc/wharf/k.pem".into()
            }
        );
        assert!(!c.tls.client_auth_required);
        for (text, key) in [
            (
                "[server]\nplain_http = true\n[server.tls]\nauto = true\n",
                "server.plain_http",
            ),
            ("[server.tls]\ncert_file = \"c\"\n", "server.tls.key_file"),
            (
                "[server.tls]\nauto = true\ncert_file = \"c\"\nkey_file = \"k\"\n",
                "server.tls.auto",
            ),
            ("[server.tls]\nauto = false\n", "server.tls.auto"),
            ("[server.tls]\nnames = [\"a b\"]\n", "server.tls.names"),
            (
                "[server.tls]\nclient_auth = \"maybe\"\n",
                "server.tls.client_auth",
            ),
            (
                "[server.tls]\nclient_auth = \"optional\"\n",
                "server.tls.client_auth",
            ),
        ] {
            let e = Config::from_toml(&format!("{text}{up}"), None)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(key), "{key}: {e}");
        }
    }
}
