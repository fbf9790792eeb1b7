//! Where an upstream may send wharf: the token realm its `WWW-Authenticate`
//! names (which may receive wharf's credentials) and the targets of its
//! redirects. Both are chosen by whoever controls the upstream's answers, so
//! each is checked here before wharf sends anything there.
//!
//! This module owns the rules and nothing else: it does no I/O, and it must
//! never widen a rule for one caller (a special case here is a hole for all).
//!
//! - **Never** link-local addresses (169.254.0.0/16, fe80::/10) nor the
//!   metadata host (`metadata.google.internal`, 169.254.169.254), with or
//!   without credentials: that is where a cloud node's own tokens live.
//! - **Never** from https down to http.
//! - Loopback and private addresses (127.0.0.0/8, 10/8, 172.16/12,
//!   192.168/16, 100.64/10, ::1, fc00::/7, `localhost`) only when the
//!   upstream itself is on such an address, or the host is listed for that
//!   upstream (`token_realms`, `redirect_hosts`).
//! - **Credentials** go only to a realm on the upstream's own host and port,
//!   to a host of the same registrable domain (both DNS names; see
//!   [`registrable_domain`]), or to a host listed in `token_realms`. An
//!   upstream addressed by IP (or `localhost`) has no domain: another port
//!   on the same address is another service (that was the reproduced
//!   exfiltration), so it must be listed.
//! - **Redirects** are followed for blobs only (registries send layers to a
//!   CDN on another host); manifests, tag lists and token requests follow
//!   only redirects to the same origin (scheme, host, port).
//!
//! The host checks read the URL; [`NoLinkLocal`], the upstream clients' DNS
//! resolver, drops link-local addresses from every answer, so a name that
//! resolves to the metadata address is refused too (a name resolving to a
//! private address is not: split-horizon DNS gives registries such names).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use reqwest::Url;

/// A `host` or `host:port` from `token_realms` / `redirect_hosts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSpec {
    /// Lowercased; IPv6 without brackets.
    host: String,
    /// None: any port.
    port: Option<u16>,
}

impl HostSpec {
    /// Parses `host`, `host:port`, `[v6]` or `[v6]:port`. Refuses what no
    /// rule may ever allow (link-local, the metadata host).
    pub fn parse(s: &str) -> Result<HostSpec, String> {
        let url = Url::parse(&format!("http://{s}/"))
            .ok()
            .filter(|u| {
                u.path() == "/"
                    && u.username().is_empty()
                    && u.password().is_none()
                    && u.query().is_none()
                    && !s.contains('/')
            })
            .ok_or_else(|| format!("{s:?} is not a host or host:port"))?;
        let host = host_of(&url).ok_or_else(|| format!("{s:?} has no host"))?;
        if never(&host) {
            return Err(format!(
                "{s:?} is a link-local address or the metadata host, which wharf never contacts for an upstream"
            ));
        }
        // `Url` drops the scheme's default port: keep what was written
        // (`h:80`, `h:080`), or a listing meant for one port would allow
        // every port of the host.
        let explicit = s.rsplit_once(':').is_some_and(|(h, p)| {
            (h.ends_with(']') || !h.contains(':'))
                && !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
        });
        let port = explicit.then(|| url.port_or_known_default()).flatten();
        Ok(HostSpec {
            host: host_text(&host),
            port,
        })
    }

    fn matches(&self, url: &Url) -> bool {
        host_of(url).is_some_and(|h| {
            host_text(&h) == self.host
                && self
                    .port
                    .is_none_or(|p| Some(p) == url.port_or_known_default())
        })
    }
}

impl std::fmt::Display for HostSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port {
            Some(p) => write!(f, "{h}:{p}"),
            None => f.write_str(&h),
        }
    }
}

/// Why a destination was refused: for the log (with the URL) and the
/// `reason` label of `wharf_upstream_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    NotHttp,
    LinkLocal,
    Downgrade,
    Private,
    ForeignRealm,
    CrossOrigin,
}

impl Refusal {
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::NotHttp => "not an http(s) URL",
            Refusal::LinkLocal => "a link-local address or the metadata host",
            Refusal::Downgrade => "from https down to http",
            Refusal::Private => "a loopback or private address, and the upstream is not on one (list the host for this upstream to allow it)",
            Refusal::ForeignRealm => "a host outside the upstream's own host and registrable domain, not listed in token_realms",
            Refusal::CrossOrigin => "another origin, which only blob downloads may be redirected to",
        }
    }
}

/// The destinations one upstream may name.
#[derive(Clone, Debug)]
pub struct Destinations {
    base: Url,
    base_private: bool,
    token_realms: Vec<HostSpec>,
    redirect_hosts: Vec<HostSpec>,
}

impl Destinations {
    pub fn new(base: &Url, token_realms: &[HostSpec], redirect_hosts: &[HostSpec]) -> Destinations {
        Destinations {
            base: base.clone(),
            base_private: host_of(base).is_some_and(|h| private(&h)),
            token_realms: token_realms.to_vec(),
            redirect_hosts: redirect_hosts.to_vec(),
        }
    }

    /// May wharf ask `realm` for a token, `with_credentials` or anonymously?
    pub fn check_realm(&self, realm: &Url, with_credentials: bool) -> Result<(), Refusal> {
        let host = host_of(realm).ok_or(Refusal::NotHttp)?;
        if !matches!(realm.scheme(), "http" | "https") {
            return Err(Refusal::NotHttp);
        }
        if never(&host) {
            return Err(Refusal::LinkLocal);
        }
        let listed = self.token_realms.iter().any(|h| h.matches(realm));
        if with_credentials {
            if self.base.scheme() == "https" && realm.scheme() != "https" {
                return Err(Refusal::Downgrade);
            }
            if !(listed || self.same_site(realm)) {
                return Err(Refusal::ForeignRealm);
            }
        }
        if private(&host) && !self.base_private && !listed {
            return Err(Refusal::Private);
        }
        Ok(())
    }

    /// May a blob download follow a redirect from `from` to `to`?
    pub fn check_blob_redirect(&self, from: &Url, to: &Url) -> Result<(), Refusal> {
        let host = host_of(to).ok_or(Refusal::NotHttp)?;
        if !matches!(to.scheme(), "http" | "https") {
            return Err(Refusal::NotHttp);
        }
        if never(&host) {
            return Err(Refusal::LinkLocal);
        }
        if (from.scheme() == "https" || self.base.scheme() == "https") && to.scheme() != "https" {
            return Err(Refusal::Downgrade);
        }
        if private(&host)
            && !self.base_private
            && !self.redirect_hosts.iter().any(|h| h.matches(to))
        {
            return Err(Refusal::Private);
        }
        Ok(())
    }

    /// Manifests, tag lists, tokens: a redirect stays on the origin the
    /// request went to.
    pub fn check_api_redirect(first: &Url, to: &Url) -> Result<(), Refusal> {
        if first.origin() == to.origin() {
            Ok(())
        } else {
            Err(Refusal::CrossOrigin)
        }
    }

    /// Same host and port; or, for DNS names, the same registrable domain.
    fn same_site(&self, realm: &Url) -> bool {
        let (Some(a), Some(b)) = (host_of(&self.base), host_of(realm)) else {
            return false;
        };
        if a == b && self.base.port_or_known_default() == realm.port_or_known_default() {
            return true;
        }
        match (&a, &b) {
            (Host::Name(x), Host::Name(y)) if !private(&a) && !private(&b) => {
                let (rx, ry) = (registrable_domain(x), registrable_domain(y));
                rx.is_some() && rx == ry
            }
            _ => false,
        }
    }
}

/// The DNS resolver of the upstream clients: the system's (getaddrinfo),
/// with link-local addresses left out of every answer.
pub struct NoLinkLocal;

impl reqwest::dns::Resolve for NoLinkLocal {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept = without_link_local(all);
            if kept.is_empty() {
                return Err(format!(
                    "{host} resolves only to link-local addresses, which wharf never contacts"
                )
                .into());
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

fn without_link_local(addrs: Vec<std::net::SocketAddr>) -> Vec<std::net::SocketAddr> {
    addrs
        .into_iter()
        .filter(|a| !never(&ip_host(a.ip())))
        .collect()
}

fn ip_host(ip: IpAddr) -> Host {
    match ip {
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => Host::Ip(IpAddr::V4(v4)),
            None => Host::Ip(IpAddr::V6(a)),
        },
        v4 => Host::Ip(v4),
    }
}

/// Two-label suffixes under which names are registered (so the registrable
/// domain needs a third label). A small built-in list, not the Public
/// Suffix List: a registry on a suffix missing here whose token service is
/// elsewhere in it needs `token_realms`.
const TWO_LABEL_SUFFIXES: &[&str] = &[
    "co.uk", "org.uk", "ac.uk", "gov.uk", "ltd.uk", "plc.uk", "me.uk", "net.uk", "com.au",
    "net.au", "org.au", "edu.au", "gov.au", "co.nz", "org.nz", "co.jp", "ne.jp", "or.jp", "ac.jp",
    "go.jp", "co.kr", "or.kr", "co.in", "net.in", "org.in", "co.za", "org.za", "com.br", "net.br",
    "org.br", "com.cn", "net.cn", "org.cn", "com.hk", "com.tw", "com.sg", "com.mx", "com.ar",
    "com.tr", "co.il", "com.my", "co.id", "com.ph", "com.vn", "com.ua", "com.pl", "co.th",
];

/// Shared hosting and wildcard DNS: every name under these belongs to
/// whoever rents or types it, and tenancy goes to any depth
/// (`NAME.REGION.elb.amazonaws.com`, `ec2-....compute-1.amazonaws.com`,
/// `BUCKET.s3.REGION.amazonaws.com`, `ANY-IP.nip.io`), so a name under them
/// shares a site with nothing but itself: no registrable domain, only the
/// upstream's own host (or `token_realms`) gets credentials.
const SHARED_SUFFIXES: &[&str] = &[
    "azurecr.io",
    "pkg.dev",
    "amazonaws.com",
    "github.io",
    "gitlab.io",
    "herokuapp.com",
    "appspot.com",
    "cloudfront.net",
    "azurewebsites.net",
    "web.app",
    "firebaseapp.com",
    "vercel.app",
    "netlify.app",
    "pages.dev",
    "workers.dev",
    "ngrok.io",
    "ngrok-free.app",
    "elasticbeanstalk.com",
    "windows.net",
    "azure.com",
    "azurecontainer.io",
    "cloudapp.net",
    "run.app",
    "googleusercontent.com",
    "fly.dev",
    "onrender.com",
    "r2.dev",
    "digitaloceanspaces.com",
    "ondigitalocean.app",
    "trycloudflare.com",
    "duckdns.org",
    "nip.io",
    "sslip.io",
    "xip.io",
];

/// The registrable domain of a DNS name: its last two labels, or three when
/// the last two are one of [`TWO_LABEL_SUFFIXES`]. None for a name with too
/// few labels (`localhost`, `co.uk`) or under one of [`SHARED_SUFFIXES`].
pub fn registrable_domain(host: &str) -> Option<String> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = host.split('.').collect();
    if labels.iter().any(|l| l.is_empty()) {
        return None;
    }
    let n = labels.len();
    let last_two = labels[n.checked_sub(2)?..].join(".");
    if SHARED_SUFFIXES.contains(&last_two.as_str()) {
        return None;
    }
    let take = if TWO_LABEL_SUFFIXES.contains(&last_two.as_str()) {
        3
    } else {
        2
    };
    (n >= take).then(|| labels[n - take..].join("."))
}

/// A URL's host: an address (IPv4-mapped IPv6 read as IPv4) or a DNS name,
/// lowercased without a trailing dot.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

fn host_of(url: &Url) -> Option<Host> {
    let h = url.host_str()?;
    let bare = h.trim_start_matches('[').trim_end_matches(']');
    Some(match bare.parse::<IpAddr>() {
        Ok(ip) => ip_host(ip),
        Err(_) => Host::Name(h.trim_end_matches('.').to_ascii_lowercase()),
    })
}

fn host_text(h: &Host) -> String {
    match h {
        Host::Ip(a) => a.to_string(),
        Host::Name(d) => d.clone(),
    }
}

/// AWS's instance metadata service over IPv6 (Nitro instances): not
/// link-local, so named here.
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// Link-local addresses and the metadata host: never contacted.
fn never(h: &Host) -> bool {
    match h {
        Host::Ip(IpAddr::V4(a)) => a.is_link_local(),
        Host::Ip(IpAddr::V6(a)) => (a.segments()[0] & 0xffc0) == 0xfe80 || *a == AWS_METADATA_V6,
        Host::Name(d) => d == "metadata.google.internal" || d == "metadata",
    }
}

/// Loopback, private, shared (CGNAT) and unspecified addresses, `localhost`.
fn private(h: &Host) -> bool {
    match h {
        Host::Ip(IpAddr::V4(a)) => private_v4(*a),
        Host::Ip(IpAddr::V6(a)) => private_v6(*a),
        Host::Name(d) => d == "localhost" || d.ends_with(".localhost"),
    }
}

fn private_v4(a: Ipv4Addr) -> bool {
    let o = a.octets();
    a.is_loopback()
        || a.is_private()
        || a.is_unspecified()
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
        || o[0] == 0
}

fn private_v6(a: Ipv6Addr) -> bool {
    a.is_loopback() || a.is_unspecified() || (a.segments()[0] & 0xfe00) == 0xfc00
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn hosts(list: &[&str]) -> Vec<HostSpec> {
        list.iter().map(|s| HostSpec::parse(s).unwrap()).collect()
    }

    #[test]
    fn registrable_domains() {
        for (h, d) in [
            ("registry-1.docker.io", Some("docker.io")),
            ("auth.docker.io", Some("docker.io")),
            ("registry.gitlab.com", Some("gitlab.com")),
            ("gitlab.com", Some("gitlab.com")),
            ("registry.example.co.uk", Some("example.co.uk")),
            ("co.uk", None),
            ("a.azurecr.io", None),
            ("reg-1.us-east-1.elb.amazonaws.com", None),
            ("localhost", None),
            ("Registry.Example.COM.", Some("example.com")),
        ] {
            assert_eq!(registrable_domain(h).as_deref(), d, "{h}");
        }
    }

    #[test]
    fn credentials_go_to_the_upstreams_own_site_only() {
        let hub = Destinations::new(&u("https://registry-1.docker.io"), &[], &[]);
        assert_eq!(
            hub.check_realm(&u("https://auth.docker.io/token"), true),
            Ok(())
        );
        assert_eq!(
            hub.check_realm(&u("https://evil.example/token"), true),
            Err(Refusal::ForeignRealm)
        );
        assert_eq!(
            hub.check_realm(&u("http://auth.docker.io/token"), true),
            Err(Refusal::Downgrade)
        );
        // Anonymously, any public realm (no secret leaves).
        assert_eq!(
            hub.check_realm(&u("https://evil.example/token"), false),
            Ok(())
        );
        let gl = Destinations::new(&u("https://registry.example.com:5050"), &[], &[]);
        assert_eq!(
            gl.check_realm(&u("https://gitlab.example.com/jwt/auth"), true),
            Ok(())
        );
        let gl = Destinations::new(&u("https://registry.gitlab.com"), &[], &[]);
        assert_eq!(
            gl.check_realm(&u("https://gitlab.com/jwt/auth"), true),
            Ok(())
        );
        // Tenants of a shared suffix are not one site.
        let acr = Destinations::new(&u("https://a.azurecr.io"), &[], &[]);
        assert_eq!(
            acr.check_realm(&u("https://b.azurecr.io/oauth2/token"), true),
            Err(Refusal::ForeignRealm)
        );
        assert_eq!(
            acr.check_realm(&u("https://a.azurecr.io/oauth2/token"), true),
            Ok(())
        );
    }

    #[test]
    fn shared_hosting_tenants_get_no_credentials_at_any_depth() {
        // One label past the suffix is not where tenancy starts: every AWS
        // customer's load balancer in a region, every EC2 instance, every
        // S3 bucket shares the three last labels.
        for (base, realm) in [
            (
                "https://reg-1.us-east-1.elb.amazonaws.com",
                "https://evil-2.us-east-1.elb.amazonaws.com/token",
            ),
            (
                "https://ec2-3-1-2-3.compute-1.amazonaws.com",
                "https://ec2-6-6-6-6.compute-1.amazonaws.com/token",
            ),
            (
                "https://123.dkr.ecr.us-east-1.amazonaws.com",
                "https://evil.s3.us-east-1.amazonaws.com/token",
            ),
            ("https://reg.10.0.0.1.nip.io", "https://x.6.6.6.6.nip.io/t"),
            ("https://us-docker.pkg.dev", "https://evil.pkg.dev/token"),
        ] {
            let d = Destinations::new(&u(base), &[], &[]);
            assert_eq!(
                d.check_realm(&u(realm), true),
                Err(Refusal::ForeignRealm),
                "{base} -> {realm}"
            );
        }
    }

    #[test]
    fn addresses_need_the_same_port_or_a_listing() {
        let ip = Destinations::new(&u("http://127.0.0.1:5000"), &[], &[]);
        assert_eq!(
            ip.check_realm(&u("http://127.0.0.1:5000/token"), true),
            Ok(())
        );
        assert_eq!(
            ip.check_realm(&u("http://127.0.0.1:6000/token"), true),
            Err(Refusal::ForeignRealm),
            "another port on the same address is another service"
        );
        assert_eq!(
            ip.check_realm(&u("http://127.0.0.1:6000/token"), false),
            Ok(())
        );
        let listed = Destinations::new(
            &u("http://127.0.0.1:5000"),
            &hosts(&["127.0.0.1:6000", "127.0.0.2"]),
            &[],
        );
        assert_eq!(
            listed.check_realm(&u("http://127.0.0.1:6000/t"), true),
            Ok(())
        );
        assert_eq!(listed.check_realm(&u("http://127.0.0.2:7/t"), true), Ok(()));
        assert_eq!(
            listed.check_realm(&u("http://127.0.0.1:6001/t"), true),
            Err(Refusal::ForeignRealm)
        );
    }

    #[test]
    fn link_local_and_metadata_are_never_contacted() {
        let all = hosts(&["127.0.0.1"]);
        let d = Destinations::new(&u("http://127.0.0.1:5000"), &all, &all);
        for bad in [
            "http://169.254.169.254/computeMetadata/v1/",
            "http://metadata.google.internal/x",
            "http://[fe80::1]/x",
            "http://[::ffff:169.254.169.254]/x",
            // Decimal, octal and hex forms of 169.254.169.254, a trailing
            // dot, upper case, userinfo and fullwidth letters.
            "http://2852039166/x",
            "http://0251.0376.0251.0376/x",
            "http://0xa9fea9fe/x",
            "http://METADATA.google.internal./x",
            "http://user@metadata.google.internal/x",
            "http://ｍｅｔａｄａｔａ.google.internal/x",
            // AWS's IPv6 metadata address, which the upstream being on a
            // private network must not open.
            "http://[fd00:ec2::254]/latest/meta-data/",
        ] {
            assert_eq!(
                d.check_realm(&u(bad), false),
                Err(Refusal::LinkLocal),
                "{bad}"
            );
            assert_eq!(
                d.check_blob_redirect(&u("http://127.0.0.1:5000/v2/"), &u(bad)),
                Err(Refusal::LinkLocal),
                "{bad}"
            );
        }
        assert!(HostSpec::parse("169.254.169.254").is_err());
        assert!(HostSpec::parse("metadata.google.internal:80").is_err());
        assert!(HostSpec::parse("a/b").is_err());
        assert!(HostSpec::parse("user@h").is_err());
    }

    #[test]
    fn a_listed_port_is_that_port_however_written() {
        let d = Destinations::new(
            &u("http://127.0.0.1:5000"),
            &hosts(&["10.0.0.5:080", "[::1]:0080"]),
            &[],
        );
        assert_eq!(d.check_realm(&u("http://10.0.0.5/t"), true), Ok(()));
        assert_eq!(
            d.check_realm(&u("http://10.0.0.5:6379/t"), true),
            Err(Refusal::ForeignRealm)
        );
        assert_eq!(
            d.check_realm(&u("http://[::1]:6379/t"), true),
            Err(Refusal::ForeignRealm)
        );
    }

    #[test]
    fn blob_redirects() {
        let public = Destinations::new(
            &u("https://registry-1.docker.io"),
            &[],
            &hosts(&["10.0.0.9"]),
        );
        let from = u("https://registry-1.docker.io/v2/x/blobs/sha256:a");
        assert_eq!(
            public.check_blob_redirect(&from, &u("https://cdn.example/b")),
            Ok(())
        );
        assert_eq!(
            public.check_blob_redirect(&from, &u("http://cdn.example/b")),
            Err(Refusal::Downgrade)
        );
        assert_eq!(
            public.check_blob_redirect(&from, &u("https://127.0.0.1:9/b")),
            Err(Refusal::Private)
        );
        assert_eq!(
            public.check_blob_redirect(&from, &u("https://10.0.0.9/b")),
            Ok(())
        );
        assert_eq!(
            public.check_blob_redirect(&from, &u("https://localhost/b")),
            Err(Refusal::Private)
        );
        assert_eq!(
            public.check_blob_redirect(&from, &u("file:///etc/passwd")),
            Err(Refusal::NotHttp)
        );
        let local = Destinations::new(&u("http://127.0.0.1:5000"), &[], &[]);
        assert_eq!(
            local.check_blob_redirect(&u("http://127.0.0.1:5000/v2/"), &u("http://127.0.0.2:80/b")),
            Ok(())
        );
        assert_eq!(
            Destinations::check_api_redirect(
                &u("http://127.0.0.1:5000/v2/a"),
                &u("http://127.0.0.1:5000/v2/b")
            ),
            Ok(())
        );
        assert_eq!(
            Destinations::check_api_redirect(
                &u("http://127.0.0.1:5000/v2/a"),
                &u("http://127.0.0.1:5001/v2/b")
            ),
            Err(Refusal::CrossOrigin)
        );
    }

    #[test]
    fn resolved_link_local_addresses_are_dropped() {
        let a = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        let kept = without_link_local(vec![
            a("169.254.169.254:0"),
            a("10.0.0.1:0"),
            a("[fe80::1]:0"),
            a("[::ffff:169.254.1.1]:0"),
            a("[2001:db8::1]:0"),
            a("[fd00:ec2::254]:0"),
        ]);
        assert_eq!(kept, [a("10.0.0.1:0"), a("[2001:db8::1]:0")]);
    }

    #[tokio::test]
    async fn the_resolver_answers_for_ordinary_names() {
        use reqwest::dns::Resolve as _;
        let got: Vec<_> = NoLinkLocal
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(got.iter().all(|a| a.ip().is_loopback()) && !got.is_empty());
    }

    #[test]
    fn host_specs_print_as_written() {
        for s in ["127.0.0.1:5000", "auth.example.com", "[::1]:80", "h:80"] {
            assert_eq!(HostSpec::parse(s).unwrap().to_string(), s);
        }
    }
}
