//! `[server]` apart from TLS (see `tls.rs`), and `[log]`: where wharf listens,
//! its admin listener, how long shutdown waits, the limits every connection
//! lives within (`crate::server::Limits`), the log format.

use std::net::SocketAddr;
use std::time::Duration;

use super::file::{FileLog, FileServer};
use super::values::{parse_duration, parse_size};
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
    pub status_networks: Vec<ipnet::IpNet>,
    pub shutdown_grace: Duration,
    pub limits: crate::server::Limits,
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
        let status_networks =
            super::access::parse_networks("server.status_networks", f.status_networks.clone())?;
        if let Some(n) = status_networks.iter().find(|n| n.prefix_len() == 0) {
            warnings.push(format!(
                "server.status_networks has {n}: the status page (cached images, failed requests) is open to every address that reaches the admin listener"
            ));
        }
        Ok(ServerSection {
            admin_listen,
            status_networks,
            shutdown_grace,
            limits: limits(f)?,
        })
    }
}

/// The limits of `[server]`: a connection cap and a deadline for every phase
/// of a connection, and HTTP/2's stream limits.
fn limits(f: &FileServer) -> Result<crate::server::Limits, ConfigError> {
    let d = crate::server::Limits::default();
    let duration = |key: &str, v: &Option<String>, default: Duration| {
        let key = format!("server.{key}");
        let t = v
            .as_deref()
            .map_or(Ok(default), |s| parse_duration(&key, s))?;
        if t.is_zero() {
            return Err(invalid(key, "must be more than 0"));
        }
        Ok(t)
    };
    let positive = |key: &str, v: Option<u64>, default: u64| match v {
        Some(0) => Err(invalid(format!("server.{key}"), "must be more than 0")),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    let size = |key: &str, v: &Option<String>, default: u64| {
        let n = v
            .as_deref()
            .map(|s| parse_size(&format!("server.{key}"), s))
            .transpose()?;
        positive(key, n, default)
    };
    let header_list = size(
        "h2_max_header_list_size",
        &f.h2_max_header_list_size,
        d.h2_max_header_list_size.into(),
    )?;
    Ok(crate::server::Limits {
        max_connections: positive(
            "max_connections",
            f.max_connections.map(|n| n as u64),
            d.max_connections as u64,
        )? as usize,
        max_connections_per_address: positive(
            "max_connections_per_address",
            f.max_connections_per_address.map(|n| n as u64),
            d.max_connections_per_address as u64,
        )? as usize,
        header_timeout: duration("header_timeout", &f.header_timeout, d.header_timeout)?,
        idle_timeout: duration("idle_timeout", &f.idle_timeout, d.idle_timeout)?,
        write_timeout: duration("write_timeout", &f.write_timeout, d.write_timeout)?,
        min_send_rate: size("min_send_rate", &f.min_send_rate, d.min_send_rate)?,
        h2_max_concurrent_streams: positive(
            "h2_max_concurrent_streams",
            f.h2_max_concurrent_streams.map(u64::from),
            d.h2_max_concurrent_streams.into(),
        )?
        .try_into()
        .map_err(|_| invalid("server.h2_max_concurrent_streams", "too large"))?,
        h2_max_header_list_size: header_list
            .try_into()
            .map_err(|_| invalid("server.h2_max_header_list_size", "at most 4GiB"))?,
        h2_max_pending_accept_reset_streams: positive(
            "h2_max_pending_accept_reset_streams",
            f.h2_max_pending_accept_reset_streams.map(|n| n as u64),
            d.h2_max_pending_accept_reset_streams as u64,
        )? as usize,
        h2_max_local_error_reset_streams: positive(
            "h2_max_local_error_reset_streams",
            f.h2_max_local_error_reset_streams.map(|n| n as u64),
            d.h2_max_local_error_reset_streams as u64,
        )? as usize,
    })
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
            ("[server]\nmax_connections = 0\n", "server.max_connections"),
            (
                "[server]\nmax_connections_per_address = 0\n",
                "server.max_connections_per_address",
            ),
            ("[server]\nwrite_timeout = \"0s\"\n", "server.write_timeout"),
            (
                "[server]\nmin_send_rate = \"fast\"\n",
                "server.min_send_rate",
            ),
            (
                "[server]\nh2_max_header_list_size = \"8GiB\"\n",
                "server.h2_max_header_list_size",
            ),
        ] {
            let e = Config::from_toml(&format!("{text}{UP}"), None)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(key), "{key}: {e}");
        }
    }

    #[test]
    fn limits_have_production_defaults_and_can_be_set() {
        let c = Config::from_toml(UP, None).unwrap();
        assert_eq!(c.server, crate::server::Limits::default());
        let c = Config::from_toml(
            &format!("[server]\nmax_connections = 10\nmax_connections_per_address = 3\nheader_timeout = \"2s\"\nidle_timeout = \"3s\"\nwrite_timeout = \"4s\"\nmin_send_rate = \"2KiB\"\nh2_max_concurrent_streams = 8\nh2_max_header_list_size = \"16KiB\"\nh2_max_pending_accept_reset_streams = 5\nh2_max_local_error_reset_streams = 6\n{UP}"),
            None,
        )
        .unwrap();
        let l = c.server;
        assert_eq!(l.max_connections, 10);
        assert_eq!(l.max_connections_per_address, 3);
        assert_eq!(l.header_timeout, std::time::Duration::from_secs(2));
        assert_eq!(l.idle_timeout, std::time::Duration::from_secs(3));
        assert_eq!(l.write_timeout, std::time::Duration::from_secs(4));
        assert_eq!(l.min_send_rate, 2048);
        assert_eq!(l.h2_max_concurrent_streams, 8);
        assert_eq!(l.h2_max_header_list_size, 16384);
        assert_eq!(l.h2_max_pending_accept_reset_streams, 5);
        assert_eq!(l.h2_max_local_error_reset_streams, 6);
    }
}
