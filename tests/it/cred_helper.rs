//! Docker credential helpers (`credHelpers`/`credsStore` in a `config.json`,
//! as Artifact Registry's `docker-credential-gcloud` set-up uses): helper
//! scripts written at test time into a directory put on the `PATH` of the
//! wharf under test, speaking docker's protocol (server URL on stdin, JSON on
//! stdout) and logging every invocation. Credentials are generated per test;
//! every test ends by searching wharf's log and every answer for them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::*;

const ACCEPT: &str =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

fn private_file(p: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Writes `docker-credential-<name>` into `bin`: it appends the server URL
/// it was asked for (one line per invocation) to `<state>/<name>.asked`, then
/// runs `body`.
fn helper(bin: &Path, state: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let p = bin.join(format!("docker-credential-{name}"));
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\nset -e\n[ \"$1\" = get ] || exit 3\nurl=$(cat)\nprintf '%s\\n' \"$url\" >> '{}/{name}.asked'\n{body}",
            state.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn asked(state: &Path, name: &str) -> Vec<String> {
    std::fs::read_to_string(state.join(format!("{name}.asked")))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `PATH` with `bin` first.
fn path_with(bin: &Path) -> std::ffi::OsString {
    let mut dirs = vec![bin.to_owned()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap()
}

/// `wharf check-config` on `cfg` with `path` as its `PATH`.
fn check_config(cfg: &Path, path: &std::ffi::OsStr) -> (bool, String) {
    try_run(
        Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(["check-config", "--config"])
            .arg(cfg)
            .env("PATH", path),
    )
}

/// GET through wharf: status and body, both kept in `seen`; and how long it took.
fn get(url: &str, seen: &mut Vec<String>) -> (u16, String, Duration) {
    let started = Instant::now();
    let r = http().get(url).header("accept", ACCEPT).send().unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    let body = r.text().unwrap();
    seen.push(format!("{headers:?}\n{body}"));
    (status, body, started.elapsed())
}

fn assert_no_secret(log: &str, seen: &[String], secrets: &[String]) {
    assert!(log.contains("wharf::access"), "the log has the requests");
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        assert!(!log.contains(s.as_str()), "a secret is in wharf's log");
        for (i, text) in seen.iter().enumerate() {
            assert!(!text.contains(s.as_str()), "a secret is in output #{i}");
        }
    }
}

/// The credentials a helper answers, as its JSON.
fn answer(server: &str, user: &str, secret: &str) -> String {
    serde_json::json!({"ServerURL": server, "Username": user, "Secret": secret}).to_string()
}

/// A temporary directory with `bin/` (put on wharf's `PATH`) and `state/`
/// (what the helpers read and log).
struct Dirs {
    tmp: tempfile::TempDir,
    bin: PathBuf,
    state: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        let (bin, state) = (tmp.path().join("bin"), tmp.path().join("state"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        Dirs { tmp, bin, state }
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// A private `config.json` naming `helper` for `server` in
    /// `credHelpers` (with the empty `auths` entry `docker login` leaves).
    fn docker_config(&self, name: &str, server: &str, helper: &str) -> PathBuf {
        let p = self.path().join(format!("{name}.json"));
        private_file(
            &p,
            &format!(r#"{{"auths":{{"{server}":{{}}}},"credHelpers":{{"{server}":"{helper}"}}}}"#),
        );
        p
    }
}

/// An `[[upstream]]` for `up` with credentials from `docker_config`, serving
/// `private/**` to anonymous clients; `extra` goes into its credentials.
fn upstream_block(
    name: &str,
    up: &Upstream,
    routing: &str,
    docker_config: &Path,
    extra: &str,
) -> String {
    format!(
        "[[upstream]]\nname = \"{name}\"\nurl = \"{}\"\n{}{routing}[upstream.credentials]\ndocker_config = {docker_config:?}\n{extra}[upstream.access]\nanonymous = true\nrepositories = [\"private/**\"]\n",
        up.url(),
        up.token_realms_line()
    )
}

/// An upstream whose token service takes `user` with whatever token
/// `accepted` holds at the time: gcloud's shape, a fixed user and an access
/// token that rotates.
fn rotating_upstream(
    rt: &tokio::runtime::Runtime,
    user: &str,
    accepted: &Arc<Mutex<String>>,
) -> Upstream {
    let mut opts = TokenOpts::hub("nobody", "unused");
    let (u, acc) = (user.to_owned(), accepted.clone());
    opts.check = Arc::new(move |a, b| (a == u && b == *acc.lock().unwrap()).then(|| u.clone()));
    let up = Upstream::start(Auth::TokenWith(opts), rt);
    up.push("small", "private/app:1", None, false);
    up.push("small", "private/other:1", None, false);
    up
}

/// Every password and token the upstream knows, and `more`.
fn secrets_of(up: &Upstream, more: &[&str]) -> Vec<String> {
    let mut secrets: Vec<String> = more.iter().map(|s| s.to_string()).collect();
    secrets.push(up.pass.clone());
    if let Some(t) = &up.token {
        secrets.extend(t.tokens.lock().unwrap().iter().cloned());
    }
    secrets
}

/// check-config names the helper it found; without it on PATH, it refuses.
fn check_config_finds_the_helper(w: &Served, bin: &Path, seen: &mut Vec<String>) {
    let (ok, out) = check_config(&w.cfg, &path_with(bin));
    let found = format!(
        "credential helper {}",
        bin.join("docker-credential-wharftest").display()
    );
    assert!(ok && out.contains(&found), "{out}");
    seen.push(out);
    let (ok, out) = check_config(&w.cfg, std::ffi::OsStr::new("/usr/bin:/bin"));
    assert!(!ok, "{out}");
    assert!(
        out.contains("upstream[0].credentials.docker_config")
            && out.contains("docker-credential-wharftest is not on PATH"),
        "{out}"
    );
    seen.push(out);
}

#[test]
fn a_credential_helper_supplies_the_credentials_and_is_asked_again_when_they_are_refused() {
    let rt = runtime();
    let user = "_dcgcloud_token";
    let first = format!("ya29.{}", random_hex(24));
    let accepted = Arc::new(Mutex::new(first.clone()));
    let up = rotating_upstream(&rt, user, &accepted);
    let server = format!("127.0.0.1:{}", up.port);
    let d = Dirs::new();
    private_file(&d.state.join("answer"), &answer(&server, user, &first));
    helper(
        &d.bin,
        &d.state,
        "wharftest",
        &format!("cat '{}/answer'\n", d.state.display()),
    );
    let json = d.docker_config("config", &server, "wharftest");
    let block = upstream_block("gar", &up, "default = true\n", &json, "");
    let w = Served::start_env(d.path(), "helper", &block, &[("PATH", &path_with(&d.bin))]);

    // A pull through wharf, on one answer from the helper, asked for this
    // upstream's config.json key.
    let (ok, out) = skopeo_to_dir(
        None,
        &format!("docker://127.0.0.1:{}/private/app:1", w.port),
        &d.path().join("out"),
        false,
    );
    assert!(ok, "pull with the helper's credentials: {out}");
    let mut seen = vec![out];
    assert_eq!(
        asked(&d.state, "wharftest"),
        [server.as_str()],
        "asked once, for {server}"
    );
    check_config_finds_the_helper(&w, &d.bin, &mut seen);

    // The token rotates: the upstream now refuses the old one, the helper
    // answers the new one. A refusal does not drop an answer under 1 s old
    // (docker.rs MIN_AGE); make sure this one is older.
    std::thread::sleep(Duration::from_millis(1100));
    let second = format!("ya29.{}", random_hex(24));
    private_file(&d.state.join("answer"), &answer(&server, user, &second));
    *accepted.lock().unwrap() = second.clone();
    // A repository wharf holds no bearer token for: the token service sees
    // the old credentials, refuses them, and wharf asks the helper again.
    let (s, body, _) = get(
        &format!("{}/v2/private/other/manifests/1", w.url()),
        &mut seen,
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        asked(&d.state, "wharftest"),
        [server.as_str(), server.as_str()],
        "asked again once"
    );
    // The new answer is held: more requests do not run the helper.
    for path in ["private/other/tags/list", "private/app/manifests/1"] {
        let (s, body, _) = get(&format!("{}/v2/{path}", w.url()), &mut seen);
        assert_eq!(s, 200, "{body}");
    }
    assert_eq!(asked(&d.state, "wharftest").len(), 2);

    let log = std::fs::read_to_string(&w.log).unwrap();
    let asks = log.matches("asked the credential helper").count();
    assert_eq!(
        asks, 2,
        "each ask is logged, with the helper's name and exit status"
    );
    assert!(log.contains("docker-credential-wharftest") && log.contains("exit status: 0"));
    let secrets = secrets_of(&up, &[&first, &second]);
    drop(w);
    assert_no_secret(
        &std::fs::read_to_string(d.path().join("helper.log")).unwrap(),
        &seen,
        &secrets,
    );
}

/// Waits (at most 5 s) until every pid in `pids` is gone (or a zombie
/// nobody reaped yet).
fn assert_all_die(pids: &[String]) {
    let dead = |pid: &String| match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pids.iter().all(dead) {
        assert!(
            Instant::now() < deadline,
            "helper processes {pids:?} outlived the timeout"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_hanging_helper_is_killed_at_its_timeout_and_an_overlong_answer_refused() {
    let rt = runtime();
    let up = Upstream::start(Auth::Token, &rt);
    up.push("small", "private/app:1", None, false);
    let server = format!("127.0.0.1:{}", up.port);
    let d = Dirs::new();
    // Hangs, with a child of its own: both must go.
    let pids = d.state.join("pids");
    let hang = format!(
        "echo $$ >> '{0}'\nsleep 60 &\necho $! >> '{0}'\nwait\n",
        pids.display()
    );
    helper(&d.bin, &d.state, "wharfhang", &hang);
    // More than 64 KiB, made of a secret.
    let big_secret = random_hex(16);
    let big = answer(&server, "u", &big_secret.repeat(70_000 / 32 + 1));
    private_file(&d.state.join("big"), &big);
    helper(
        &d.bin,
        &d.state,
        "wharfbig",
        &format!("cat '{}/big'\n", d.state.display()),
    );
    let body = [("wharfhang", "helper_timeout = \"1s\"\n"), ("wharfbig", "")]
        .map(|(name, extra)| {
            let json = d.docker_config(name, &server, name);
            upstream_block(name, &up, &format!("prefix = \"{name}\"\n"), &json, extra)
        })
        .concat();
    let w = Served::start_env(d.path(), "stuck", &body, &[("PATH", &path_with(&d.bin))]);
    let mut seen = Vec::new();

    let hang_url = format!("{}/v2/wharfhang/private/app/manifests/1", w.url());
    let (s, text, took) = get(&hang_url, &mut seen);
    assert_eq!(s, 502, "{text}");
    assert!(
        text.contains("docker-credential-wharfhang gave no answer within 1s and was killed"),
        "{text}"
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(8),
        "answered after {took:?}"
    );
    assert_eq!(asked(&d.state, "wharfhang"), [server.as_str()]);
    let pids: Vec<String> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(pids.len(), 2, "the helper and its child");
    assert_all_die(&pids);
    // The failure is held for a few seconds: the next request does not wait
    // for the helper again.
    let (s, text, took) = get(&hang_url, &mut seen);
    assert_eq!(s, 502, "{text}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(asked(&d.state, "wharfhang").len(), 1);

    let (s, text, _) = get(
        &format!("{}/v2/wharfbig/private/app/manifests/1", w.url()),
        &mut seen,
    );
    assert_eq!(s, 502, "{text}");
    assert!(
        text.contains("docker-credential-wharfbig wrote more than 64 KiB and was killed"),
        "{text}"
    );
    assert_eq!(asked(&d.state, "wharfbig"), [server.as_str()]);

    assert!(
        std::fs::read_to_string(&w.log)
            .unwrap()
            .contains("credential helper killed"),
        "the kills are logged"
    );
    drop(w);
    let log = std::fs::read_to_string(d.path().join("stuck.log")).unwrap();
    assert_no_secret(&log, &seen, &secrets_of(&up, &[&big_secret]));
}

#[test]
fn check_config_refuses_helper_names_that_leave_path() {
    let d = Dirs::new();
    // What `sub/x` would name if names were joined to PATH entries as given.
    let sub = d.bin.join("docker-credential-sub");
    std::fs::create_dir_all(&sub).unwrap();
    helper(&sub, &d.state, "x", "exit 0\n");
    std::fs::rename(sub.join("docker-credential-x"), sub.join("x")).unwrap();
    let cfg = d.path().join("wharf.toml");
    let json = d.path().join("config.json");
    std::fs::write(
        &cfg,
        format!("[server]\nplain_http = true\n[cache]\ndir = \"cache\"\n[[upstream]]\nname = \"gar\"\nurl = \"https://europe-docker.pkg.dev\"\n[upstream.credentials]\ndocker_config = {json:?}\n"),
    )
    .unwrap();
    for (helpers, want) in [
        (
            r#""credHelpers":{"europe-docker.pkg.dev":"sub/x"}"#,
            "\"sub/x\" refused",
        ),
        (
            r#""credsStore":"../bin/docker-credential-sub/x""#,
            "refused",
        ),
        (
            r#""credHelpers":{"europe-docker.pkg.dev":"absent"}"#,
            "docker-credential-absent is not on PATH",
        ),
    ] {
        private_file(&json, &format!("{{{helpers}}}"));
        let (ok, out) = check_config(&cfg, &path_with(&d.bin));
        assert!(!ok, "{helpers}: {out}");
        assert!(
            out.contains("upstream[0].credentials.docker_config") && out.contains(want),
            "{helpers}: {out}"
        );
    }
    assert!(asked(&d.state, "x").is_empty(), "no helper ran");
}
