//! The `wharf` binary: version, config validation, serve and clean shutdown.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

fn wharf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wharf"))
}

#[test]
fn version_and_check_config() {
    let out = run(wharf().arg("--version"));
    assert!(out.starts_with("wharf "), "{out}");
    // The shipped example works as is, and so does the embedded default.
    let out = run(wharf()
        .args(["check-config", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")));
    assert!(out.contains("configuration OK"), "{out}");
    let out = run(wharf().arg("check-config"));
    assert!(
        out.contains("registry-1.docker.io") && out.contains("(default)"),
        "{out}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[cache]\ntag_ttl = \"soon\"\n[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n",
    )
    .unwrap();
    let (ok, out) = try_run(wharf().args(["check-config", "--config"]).arg(&bad));
    assert!(!ok);
    assert!(out.contains("cache.tag_ttl"), "{out}");
}

#[test]
fn serve_answers_and_stops_on_sigterm() {
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    up.push("small", "library/test:1", None, false);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("wharf.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nplain_http = true\n[cache]\ndir = \"cache\"\n{}",
            Wharf::hub_block(&up, false, dir.path())
        ),
    )
    .unwrap();
    let mut child = wharf()
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_listening(([127, 0, 0, 1], port).into(), Some(&mut child));
    let r = http()
        .get(format!(
            "http://127.0.0.1:{port}/v2/library/test/manifests/1"
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        dir.path().join("cache/meta").exists(),
        "relative cache dir resolved next to the config"
    );
    run(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let status = eventually(Duration::from_secs(20), "wharf to stop on SIGTERM", || {
        child.try_wait().unwrap()
    });
    let mut log = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(status.success(), "{status}: {log}");
    // One access line per request, naming endpoint, upstream and cache status.
    assert!(
        log.contains("endpoint=\"manifest\"") || log.contains("endpoint=manifest"),
        "{log}"
    );
    assert!(
        log.contains("cache=miss") || log.contains("cache=\"miss\""),
        "{log}"
    );
}

#[test]
fn sighup_reloads_the_certificate_files() {
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    let dir = tempfile::tempdir().unwrap();
    let ca = wharf::tls::Ca::load_or_create(&dir.path().join("ca")).unwrap();
    let (a, ka) = ca.issue_server(&["localhost".into()]).unwrap();
    let (b, kb) = ca.issue_server(&["localhost".into()]).unwrap();
    std::fs::write(dir.path().join("c.pem"), &a).unwrap();
    std::fs::write(dir.path().join("k.pem"), &ka).unwrap();
    let port = free_port();
    let cfg = dir.path().join("wharf.toml");
    // A reload interval of an hour: only SIGHUP can explain a quick reload.
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[server.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nreload_interval = \"1h\"\n[cache]\ndir = \"cache\"\n{}",
            Wharf::hub_block(&up, false, dir.path())
        ),
    )
    .unwrap();
    let mut child = wharf()
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(([127, 0, 0, 1], port).into(), Some(&mut child));
    let leaf = |chain: &str| {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::pem_slice_iter(chain.as_bytes())
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    };
    let served = || {
        let c = reqwest::blocking::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
            .tls_info(true)
            .build()
            .unwrap();
        let r = c
            .get(format!("https://localhost:{port}/v2/"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        r.extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|i| i.peer_certificate())
            .unwrap()
            .to_vec()
    };
    assert_eq!(served(), leaf(&a));
    std::fs::write(dir.path().join("k.pem"), &kb).unwrap();
    std::fs::write(dir.path().join("c.pem"), &b).unwrap();
    run(Command::new("kill").args(["-HUP", &child.id().to_string()]));
    eventually(
        Duration::from_secs(10),
        "SIGHUP to reload the certificate",
        || served() == leaf(&b),
    );
    run(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let _ = child.wait();
}

#[test]
fn trust_writes_a_file_for_every_client() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("wharf.toml");
    std::fs::write(
        &cfg,
        "[server]\nlisten = \"0.0.0.0:5443\"\n[server.tls]\nnames = [\"mirror.test\"]\n[cache]\ndir = \"cache\"\n[[upstream]]\nname = \"hub\"\nurl = \"https://registry-1.docker.io\"\naliases = [\"docker.io\"]\ndefault = true\n",
    )
    .unwrap();
    let out = run(wharf()
        .args(["trust", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(dir.path().join("t")));
    assert!(
        out.contains("etc/docker/certs.d/mirror.test:5443/ca.crt"),
        "{out}"
    );
    let ca = std::fs::read_to_string(dir.path().join("cache/tls/ca.crt")).unwrap();
    for p in [
        "t/ca.crt",
        "t/etc/docker/certs.d/mirror.test:5443/ca.crt",
        "t/etc/containers/certs.d/mirror.test:5443/ca.crt",
        "t/etc/containerd/certs.d/docker.io/wharf-ca.crt",
    ] {
        assert_eq!(
            std::fs::read_to_string(dir.path().join(p)).unwrap(),
            ca,
            "{p}"
        );
    }
    // The same CA as the server will use, so files written before the first
    // start stay valid.
    let text = run(wharf().args(["trust", "--config"]).arg(&cfg));
    assert!(text.contains(ca.trim()), "{text}");
    // Plain HTTP has nothing to trust, and says so.
    std::fs::write(
        &cfg,
        "[server]\nplain_http = true\n[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n",
    )
    .unwrap();
    let (ok, out) = try_run(wharf().args(["trust", "--config"]).arg(&cfg));
    assert!(!ok && out.contains("plain HTTP"), "{out}");
}
