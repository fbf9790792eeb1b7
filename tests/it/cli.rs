//! The `wharf` binary: version, config validation, serve and clean shutdown.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    wait_listening(([127, 0, 0, 1], port).into(), &mut Some(&mut child));
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
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "wharf did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
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
