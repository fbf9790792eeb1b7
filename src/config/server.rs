//! `[server]` apart from TLS (see `tls.rs`), and `[log]`: where wharf listens,
//! its admin listener, how long shutdown waits, the log format.

use std::net::SocketAddr;
use std::time::Duration;

use super::file::{FileLog, FileServer};
use super::values::parse_duration;
use super::{invalid, ConfigError};

/// `server.listen`, needed first: TLS's default names and the admin
/// listener's checks depend on it.
pub(super) fn listen(f: &FileServer) -> Result<SocketAddr, ConfigError> {
    f.listen
        .as_deref()
        .unwrap_or("127.0.0.1:5000")
        .parse::<SocketAddr>()
        .map_err(|e| invalid("server.listen", format!("{e} (expected host:port)")))
}

/// The rest of `[server]` beside `listen` and TLS.
pub(super) struct ServerSection {
    pub admin_listen: Option<SocketAddr>,
    pub shutdown_grace: Duration,
}

impl ServerSection {
    pub(super) fn from_file(
        f: &FileServer,
        listen: SocketAddr,
        warnings: &mut Vec<String>,
    ) -> Result<ServerSection, ConfigError> {
        let admin_listen = f
            .admin_listen
            .as_deref()
            .map(|a| {
                a.parse::<SocketAddr>().map_err(|e| {
                    invalid("server.admin_listen", format!("{e} (expected host:port)"))
                })
            })
            .transpose()?;
        if let Some(a) = admin_listen {
            if a == listen {
                return Err(invalid(
                    "server.admin_listen",
                    "must differ from server.listen",
                ));
            }
            if !a.ip().is_loopback() {
                warnings.push(format!(
                    "server.admin_listen {a} is not loopback: /metrics and /readyz there are served to anyone who can reach it, without authentication"
                ));
            }
        }
        let shutdown_grace = parse_duration(
            "server.shutdown_grace",
            f.shutdown_grace.as_deref().unwrap_or("30s"),
        )?;
        Ok(ServerSection {
            admin_listen,
            shutdown_grace,
        })
    }
}

/// `[log] format`: true for JSON lines.
pub(super) fn log_json(f: &FileLog) -> Result<bool, ConfigError> {
    match f.format.as_deref() {
        None | Some("text") => Ok(false),
        Some("json") => Ok(true),
        Some(other) => Err(invalid(
            "log.format",
            format!("{other:?}: use \"text\" or \"json\""),
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const UP: &str = "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n";

    #[test]
    fn admin_listener_and_log_format() {
        let c = Config::from_toml(
            &format!("[server]\nadmin_listen = \"127.0.0.1:9090\"\nshutdown_grace = \"5s\"\n[log]\nformat = \"json\"\n{UP}"),
            None,
        )
        .unwrap();
        assert_eq!(c.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(c.shutdown_grace, std::time::Duration::from_secs(5));
        assert!(c.log_json && c.warnings.is_empty());
        let c = Config::from_toml(
            &format!("[server]\nadmin_listen = \"0.0.0.0:9090\"\n{UP}"),
            None,
        )
        .unwrap();
        assert!(c.warnings[0].contains("not loopback"), "{:?}", c.warnings);
        for (text, key) in [
            (
                "[server]\nadmin_listen = \"127.0.0.1:5000\"\n",
                "server.admin_listen: must differ",
            ),
            ("[server]\nadmin_listen = \"x\"\n", "server.admin_listen"),
            (
                "[server]\nshutdown_grace = \"soon\"\n",
                "server.shutdown_grace",
            ),
            ("[log]\nformat = \"xml\"\n", "log.format"),
        ] {
            let e = Config::from_toml(&format!("{text}{UP}"), None)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(key), "{key}: {e}");
        }
    }
}
