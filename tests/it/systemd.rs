//! The Debian package and its systemd unit under a real systemd
//! (`systemd-nspawn --boot` of a cached Debian root: harness/nspawn.rs).
//!
//! One test function runs the whole life of an installed wharf, step by
//! named step, in one booted container: booting costs seconds and each step
//! starts from the state the one before left (installed, configured,
//! running, upgraded), as on a real server. nextest runs each test in a
//! process of its own, so separate tests would each boot a container.
//!
//! The package is built by `scripts/build-deb.sh` around the debug binary
//! this test run already built (`--binary`, `--fast`): the same staging tree,
//! unit and maintainer scripts as a release package, without a release
//! build in CI.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest;

use crate::harness::{
    dir_contents, eventually, layout_digest, require, run, runtime, Auth, Nspawn, Skopeo, Upstream,
};

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/systemd/wharf.service");
/// `WatchdogSec=` and `RestartSec=` of the unit.
const WATCHDOG: Duration = Duration::from_secs(15);
const RESTART: Duration = Duration::from_secs(2);

/// `systemd-analyze security` rates the unit 2.0 or better (the exposure,
/// 0 to 10, times ten must not pass 20).
#[test]
fn the_unit_is_rated_2_0_or_better_by_systemd_analyze_security() {
    require(&["systemd-analyze"]);
    let (ok, out) = crate::harness::try_run(Command::new("systemd-analyze").args([
        "security",
        "--offline=yes",
        "--threshold=20",
        "--no-pager",
        UNIT,
    ]));
    let score = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("no overall exposure line");
    assert!(ok, "{score}\n{out}");
}

fn build_deb(version: &str, out: &Path) -> std::path::PathBuf {
    let printed = run(Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-deb.sh"))
        .args([
            "--binary",
            env!("CARGO_BIN_EXE_wharf"),
            "--fast",
            "--version",
            version,
        ])
        .arg("--out")
        .arg(out));
    std::path::PathBuf::from(printed.trim())
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// A client of wharf through the relay, trusting `ca`, reporting the
/// certificate it was served.
fn tls_client(ca: &str) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .tls_info(true)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// The DER certificate `url` is served with (a fresh connection each time).
fn served_certificate(ca: &str, url: &str) -> Option<Vec<u8>> {
    let r = tls_client(ca).get(url).send().ok()?;
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .map(|d| d.to_vec())
}

fn der_of(pem_chain: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem_chain.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[test]
fn the_debian_package_runs_under_a_real_systemd() {
    require(&[
        "systemd-nspawn",
        "debootstrap",
        "socat",
        "curl",
        "dpkg-deb",
        "skopeo",
    ]);
    let whole = Instant::now();
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let (root, built) = crate::harness::nspawn_root();
    match built {
        Some(t) => eprintln!("built the Debian root in {t:?}"),
        None => eprintln!("Debian root cached at {}", root.display()),
    }

    // A basic-auth upstream: its password reaches wharf only as a systemd
    // credential.
    let up = Upstream::start(Auth::Basic, &rt);
    up.push("small", "library/test:1", None, false);
    up.push("large", "library/big:1", None, false);

    // TLS from files: certificate A first, B after the reload.
    let ca = wharf::tls::Ca::load_or_create(&tmp.path().join("ca")).unwrap();
    let names = ["127.0.0.1".to_string(), "localhost".to_string()];
    let (chain_a, key_a) = ca.issue_server(&names).unwrap();
    let (chain_b, key_b) = ca.issue_server(&names).unwrap();

    let debs = tmp.path().join("debs");
    let v1 = build_deb("0.1.0+test1", &debs);
    let v2 = build_deb("0.1.0+test2", &debs);
    eprintln!(
        "package: {} bytes (debug binary, gzip -1)",
        std::fs::metadata(&v1).unwrap().len()
    );

    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::copy(&v1, shared.join("v1.deb")).unwrap();
    std::fs::copy(&v2, shared.join("v2.deb")).unwrap();
    let booting = Instant::now();
    let mut c = Nspawn::boot(&root, &shared);
    eprintln!("booted in {:?}", booting.elapsed());
    let shared_in = crate::harness::NSPAWN_SHARED;

    // -- install: nothing enabled, nothing started; the unit verifies clean.
    c.must(&format!("dpkg -i {shared_in}/v1.deb"));
    assert_eq!(
        c.sh("systemctl is-enabled wharf").1.trim(),
        "disabled",
        "installing must not enable wharf"
    );
    assert_eq!(
        c.sh("systemctl is-active wharf").1.trim(),
        "inactive",
        "installing must not start wharf"
    );
    let verify = c.sh("systemd-analyze verify /lib/systemd/system/wharf.service");
    assert_eq!(verify, (true, String::new()), "systemd-analyze verify");
    c.must("id wharf");
    let packaged = c.must("cat /etc/wharf/config.toml");
    let (ok, why) = c.sh("wharf check-config --config /etc/wharf/config.toml");
    assert!(ok, "the packaged config is valid: {why}");
    assert!(
        why.contains("cache dir: /var/lib/wharf"),
        "the packaged config keeps the cache in /var/lib/wharf: {why}"
    );
    assert!(packaged.contains("[[upstream]]"));

    // -- configure as an operator: the upstream, TLS files readable by
    // wharf's group, the password as a credential in a drop-in.
    c.relay_in(5001, up.addr());
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:5000\"\n\
         [server.tls]\ncert_file = \"/etc/wharf/tls/server.crt\"\nkey_file = \"/etc/wharf/tls/server.key\"\nreload_interval = \"1h\"\n\
         [[upstream]]\nname = \"hub\"\nurl = \"http://127.0.0.1:5001\"\naliases = [\"docker.io\"]\ndefault = true\n\
         [upstream.credentials]\nusername = \"{}\"\npassword_credential = \"upstream\"\n",
        up.user
    );
    c.install_file("/etc/wharf/config.toml", config.as_bytes(), "root", "644");
    c.install_file(
        "/etc/wharf/tls/server.crt",
        chain_a.as_bytes(),
        "root:wharf",
        "640",
    );
    c.install_file(
        "/etc/wharf/tls/server.key",
        key_a.as_bytes(),
        "root:wharf",
        "640",
    );
    c.install_file("/etc/wharf/tls/ca.crt", ca.pem().as_bytes(), "root", "644");
    c.install_file(
        "/etc/wharf/secrets/upstream",
        up.pass.as_bytes(),
        "root",
        "600",
    );
    c.install_file(
        "/etc/systemd/system/wharf.service.d/credentials.conf",
        b"[Service]\nLoadCredential=upstream:/etc/wharf/secrets/upstream\n",
        "root",
        "644",
    );
    c.must("systemctl daemon-reload");

    // -- start: active only once wharf answers. The first request right
    // after `systemctl start` returns must be served (Type=simple would
    // return before the listener is bound).
    let curl_in =
        "curl -sS --max-time 10 --cacert /etc/wharf/tls/ca.crt -o /dev/null -w %{http_code}";
    let starting = Instant::now();
    let (started, out) = c.sh("systemctl start wharf");
    let start_took = starting.elapsed();
    assert!(
        started,
        "systemctl start wharf: {out}\n{}",
        c.sh("journalctl -u wharf --no-pager -n 50").1
    );
    let (ok, code) = c.sh(&format!("{curl_in} https://127.0.0.1:5000/v2/"));
    assert!(
        ok && code == "200",
        "wharf must answer as soon as systemctl start returns: {code}"
    );
    assert_eq!(c.property("wharf", "ActiveState"), "active");
    eprintln!("systemctl start wharf returned (ready) after {start_took:?}");

    // -- pull through it, from the host, as a registries.conf mirror; the
    // upstream takes only the credential's password.
    let wharf_addr = c.relay_out(5000);
    let skopeo = Skopeo::mirror(
        &tmp.path().join("skopeo"),
        &wharf_addr.to_string(),
        Some(&tmp.path().join("ca/ca.crt")),
    );
    let pulled = tmp.path().join("pulled");
    let (ok, out) = skopeo.copy_to_dir("docker://docker.io/library/test:1", &pulled, false);
    assert!(
        ok,
        "pull through the service: {out}\n{}",
        c.sh("journalctl -u wharf --no-pager -n 30").1
    );
    let files = dir_contents(&pulled);
    assert_eq!(
        sha256_hex(&files["manifest.json"]),
        layout_digest("small"),
        "the pulled manifest is the upstream's"
    );

    // The operator's commands reach the running service (its admin socket).
    // The config names a credential, which only the unit provides: from a
    // shell, point $CREDENTIALS_DIRECTORY at the credential's source.
    let ls =
        c.must("CREDENTIALS_DIRECTORY=/etc/wharf/secrets wharf ls --config /etc/wharf/config.toml");
    assert!(ls.contains("library/test"), "wharf ls as root: {ls}");

    // -- reload rotates the certificate (reload_interval is an hour: only
    // SIGHUP can make wharf read the new files now); no restart.
    let https = format!("https://{wharf_addr}/v2/");
    let ca_pem = ca.pem().to_owned();
    assert_eq!(served_certificate(&ca_pem, &https), Some(der_of(&chain_a)));
    let pid = c.property("wharf", "MainPID");
    c.install_file(
        "/etc/wharf/tls/server.crt",
        chain_b.as_bytes(),
        "root:wharf",
        "640",
    );
    c.install_file(
        "/etc/wharf/tls/server.key",
        key_b.as_bytes(),
        "root:wharf",
        "640",
    );
    c.must("systemctl reload wharf");
    eventually(
        Duration::from_secs(10),
        "the new certificate after systemctl reload",
        || served_certificate(&ca_pem, &https) == Some(der_of(&chain_b)),
    );
    assert_eq!(c.property("wharf", "MainPID"), pid, "reload is no restart");

    // -- stop during a transfer: a slow client (8 MiB/s for 64 MiB) gets the
    // whole blob, with its digest, before the service stops.
    let client = tls_client(&ca_pem);
    let manifest: serde_json::Value = client
        .get(format!("https://{wharf_addr}/v2/library/big/manifests/1"))
        .header(
            "Accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .unwrap()
        .json()
        .unwrap();
    let layer = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|l| l["size"].as_u64().unwrap())
        .unwrap();
    let (digest, size) = (
        layer["digest"].as_str().unwrap().to_owned(),
        layer["size"].as_u64().unwrap(),
    );
    let blob_url = format!("https://{wharf_addr}/v2/library/big/blobs/{digest}");
    let fetched = client.get(&blob_url).send().unwrap().bytes().unwrap();
    assert_eq!(
        sha256_hex(&fetched),
        digest,
        "the blob, cached in full first"
    );
    let slow_out = tmp.path().join("slow.bin");
    let ca_file = tmp.path().join("ca/ca.crt");
    let mut slow = Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "--limit-rate",
            "8M",
            "--max-time",
            "60",
            "--cacert",
        ])
        .arg(&ca_file)
        .arg("-o")
        .arg(&slow_out)
        .arg(&blob_url)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "the slow transfer under way",
        || std::fs::metadata(&slow_out).is_ok_and(|m| m.len() > 1 << 20),
    );
    assert!(
        slow.try_wait().unwrap().is_none(),
        "the transfer must still run when the stop begins"
    );
    let stopping = Instant::now();
    let (ok, out) = c.sh("systemctl stop wharf");
    let stop_took = stopping.elapsed();
    assert!(ok, "systemctl stop: {out}");
    let status = eventually(Duration::from_secs(10), "the slow client to finish", || {
        slow.try_wait().unwrap()
    });
    let mut err = String::new();
    std::io::Read::read_to_string(&mut slow.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "the slow transfer across the stop: {err}");
    let got = std::fs::read(&slow_out).unwrap();
    assert_eq!(got.len() as u64, size);
    assert_eq!(
        sha256_hex(&got),
        digest,
        "the transfer finished with the right digest"
    );
    assert!(
        stop_took < Duration::from_secs(45),
        "within TimeoutStopSec: {stop_took:?}"
    );
    assert_eq!(
        c.property("wharf", "Result"),
        "success",
        "a clean stop, not a kill"
    );
    let journal = c.must("journalctl -u wharf --no-pager -o cat");
    assert!(
        journal.contains("shutting down: waiting for in-flight requests"),
        "{journal}"
    );
    eprintln!("systemctl stop took {stop_took:?} while a 64 MiB transfer finished");

    // -- upgrade while running: the service restarts on the new binary, the
    // changed config stays, the cache stays (served with the upstream gone).
    c.must("systemctl start wharf");
    let before = c.property("wharf", "MainPID");
    c.must(&format!("dpkg -i {shared_in}/v2.deb"));
    let upgraded = Instant::now();
    assert_eq!(
        c.must("dpkg-query -W -f '${Version}' wharf").trim(),
        "0.1.0+test2"
    );
    assert_eq!(
        c.property("wharf", "ActiveState"),
        "active",
        "running after the upgrade"
    );
    assert_ne!(
        c.property("wharf", "MainPID"),
        before,
        "postinst restarted it"
    );
    assert_eq!(
        c.must("cat /etc/wharf/config.toml"),
        config,
        "the operator's config survives the upgrade"
    );
    c.must("systemctl stop relay-in-5001");
    let cached = client.get(&blob_url).send().unwrap();
    assert_eq!(cached.status(), 200, "the cache survives the upgrade");
    assert_eq!(sha256_hex(&cached.bytes().unwrap()), digest);

    // -- the watchdog: a wharf that answers is left alone for two
    // WatchdogSec (its pings arrive: letting that time pass is the test),
    // one that stops answering (SIGSTOP) is restarted.
    let pid = c.property("wharf", "MainPID");
    crate::harness::sleep_until(upgraded + WATCHDOG * 2);
    assert_eq!(
        c.property("wharf", "MainPID"),
        pid,
        "fed, the watchdog never fired"
    );
    let restarts: u32 = c.property("wharf", "NRestarts").parse().unwrap();
    assert_eq!(restarts, 0, "no automatic restart so far");
    let frozen = Instant::now();
    c.must(&format!("kill -STOP {pid}"));
    eventually(
        WATCHDOG + RESTART + Duration::from_secs(20),
        "systemd to restart the frozen wharf",
        || {
            c.property("wharf", "NRestarts").parse::<u32>().unwrap() > restarts
                && c.property("wharf", "ActiveState") == "active"
                && c.property("wharf", "MainPID") != pid
        },
    );
    // The last ping came at most half a WatchdogSec before the SIGSTOP.
    let recovered = frozen.elapsed();
    assert!(
        recovered >= WATCHDOG / 2,
        "restarted by the watchdog, not by something sooner: {recovered:?}"
    );
    let journal = c.must("journalctl -u wharf --no-pager -o cat");
    assert!(journal.contains("Watchdog timeout"), "{journal}");
    let (ok, code) = c.sh(&format!("{curl_in} https://127.0.0.1:5000/v2/"));
    assert!(ok && code == "200", "serving again: {code}");
    eprintln!("the watchdog restarted a frozen wharf after {recovered:?}");

    // -- the credential's password was never logged.
    let everything = c.must("journalctl --no-pager -o cat");
    assert!(
        !everything.contains(&up.pass),
        "the upstream password appears in the journal"
    );
    eprintln!("whole scenario: {:?}", whole.elapsed());
}

/// wharf's side of `sd_notify` alone, against a notification socket the test
/// holds (no systemd): `READY=1` with a status, `WATCHDOG=1` every half
/// `WATCHDOG_USEC` while it serves, `STOPPING=1` at SIGTERM. (Without
/// `NOTIFY_SOCKET`, as in every other test, it sends nothing.)
#[test]
fn wharf_sends_ready_watchdog_pings_and_stopping_to_the_notify_socket() {
    use std::os::unix::net::UnixDatagram;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let next = || {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a notification within 10 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let body = format!(
        "[[upstream]]\nname = \"hub\"\nurl = \"http://127.0.0.1:{}\"\ndefault = true\n",
        crate::harness::DEAD_PORT
    );
    let mut w = crate::harness::Served::start_env(
        tmp.path(),
        "w",
        &body,
        &[
            ("NOTIFY_SOCKET", path.as_os_str()),
            ("WATCHDOG_USEC", std::ffi::OsStr::new("400000")),
        ],
    );
    assert_eq!(next(), "READY=1\nSTATUS=serving\n");
    let (code, _) = w.get("/v2/");
    assert_eq!(code, 200, "serving once ready");
    for _ in 0..3 {
        assert_eq!(next(), "WATCHDOG=1\n");
    }
    let status = w.terminate().expect("wharf was running");
    assert!(status.success(), "{status}");
    // Pings already sent may come first.
    let stopping = (0..20).map(|_| next()).find(|m| m != "WATCHDOG=1\n");
    assert_eq!(stopping.as_deref(), Some("STOPPING=1\n"));
}
