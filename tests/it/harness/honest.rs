//! The honest client of the hostile-peer tests: while a hostile client or
//! upstream does its worst, an ordinary client must still get `/v2/`,
//! `/readyz` and a cached manifest, each within [`HONEST_DEADLINE`].
//!
//! It runs `curl` (a fresh connection per request, as a new client would),
//! over plain HTTP or TLS trusting the given CA, and never reuses anything
//! the hostile peer touched.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// How long an honest request may take while wharf is under attack.
pub const HONEST_DEADLINE: Duration = Duration::from_secs(2);

/// Where the honest client finds wharf.
pub struct Honest<'a> {
    /// `http://127.0.0.1:PORT` or `https://…` of the main listener.
    pub base: String,
    /// The CA to trust for `https` (wharf's `cache/tls/ca.crt`).
    pub ca: Option<&'a Path>,
    /// Base URL of the admin listener, when `/readyz` lives there (else the
    /// main listener answers it).
    pub admin: Option<String>,
    /// A manifest path already cached (`/v2/hub/library/x/manifests/1`),
    /// with the `Accept` it was pulled with.
    pub manifest: Option<(String, String)>,
}

impl Honest<'_> {
    /// Panics, naming the request and what came back, unless each request
    /// answers as expected within [`HONEST_DEADLINE`].
    pub fn assert_served(&self) {
        self.expect(&format!("{}/v2/", self.base), &[200, 401], None);
        let admin = self.admin.as_deref().unwrap_or(&self.base);
        self.expect(&format!("{admin}/readyz"), &[200], None);
        if let Some((path, accept)) = &self.manifest {
            self.expect(&format!("{}{path}", self.base), &[200], Some(accept));
        }
    }

    fn expect(&self, url: &str, statuses: &[u16], accept: Option<&str>) {
        let started = Instant::now();
        let mut c = Command::new("curl");
        c.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg("--max-time")
            .arg(format!("{:.1}", HONEST_DEADLINE.as_secs_f64()));
        if let Some(ca) = self.ca.filter(|_| url.starts_with("https:")) {
            c.arg("--cacert").arg(ca);
        }
        if let Some(a) = accept {
            c.args(["-H", &format!("Accept: {a}")]);
        }
        let out = c.arg(url).output().expect("curl runs");
        let took = started.elapsed();
        let code: u16 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        assert!(
            statuses.contains(&code) && took <= HONEST_DEADLINE + Duration::from_millis(300),
            "honest client: {url} gave {code} after {took:?} (want {statuses:?} within {HONEST_DEADLINE:?}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
