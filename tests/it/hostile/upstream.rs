//! Hostile upstreams, scripted with [`HostileUpstream`]: token realms on
//! other ports and on the metadata address, redirects of manifests and tag
//! lists to a loopback "metadata server", `text/html` manifests, huge bodies,
//! absurd token lifetimes, and credential helpers that hang, flood or print
//! garbage. Each case asserts the safe outcome, that no credential or
//! fetched secret went where it should not, and that an honest client is
//! served meanwhile ([`Honest::assert_served`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json";

/// `wharf_upstream_refused_total` for `upstream` and `reason`.
fn refused(w: &Served, upstream: &str, reason: &str) -> f64 {
    w.metrics()
        .lines()
        .filter(|l| l.starts_with("wharf_upstream_refused_total{"))
        .filter(|l| {
            l.contains(&format!("upstream=\"{upstream}\""))
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn private_file(p: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// GET with the manifest Accept: (status, body).
fn get(url: &str) -> (u16, String) {
    let r = http().get(url).header("accept", ACCEPT).send().unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

/// The honest client of these cases: `/v2/`, `/readyz` and the manifest
/// `honest/app:1`, which [`warm`] cached.
fn honest(w: &Served) -> Honest<'static> {
    Honest {
        base: w.url(),
        ca: None,
        admin: None,
        manifest: Some(("/v2/honest/app/manifests/1".into(), ACCEPT.into())),
    }
}

/// Serves `honest/app:1` from `up` and pulls it through wharf once.
fn warm(up: &HostileUpstream, w: &Served) {
    up.serve_manifest("honest/app", "1");
    let (s, body) = get(&format!("{}/v2/honest/app/manifests/1", w.url()));
    assert_eq!(s, 200, "{body}");
}

/// An `[[upstream]]` named `name` for `up`, `extra` lines after its URL.
fn block(name: &str, up: &HostileUpstream, extra: &str) -> String {
    format!(
        "[[upstream]]\nname = \"{name}\"\nurl = \"{}\"\n{extra}[upstream.access]\nanonymous = true\n",
        up.url()
    )
}

/// Credentials for `block`: a user and a password file, both random.
fn credentials(dir: &Path) -> (String, String, String) {
    let (user, pass) = (format!("u{}", random_hex(4)), random_hex(16));
    let f = dir.join("pw");
    private_file(&f, &pass);
    let lines = format!("[upstream.credentials]\nusername = \"{user}\"\npassword_file = {f:?}\n");
    (user, pass, lines)
}

/// Regression (issue 14, item 3): an upstream on one port named a token
/// realm on another, and that port received `Authorization: Basic` with the
/// configured user and password.
#[test]
fn credentials_never_reach_a_realm_the_upstream_does_not_own() {
    let rt = runtime();
    let evil = HostileUpstream::start(&rt, [127, 0, 0, 1]);
    let thief = HostileUpstream::start(&rt, [127, 0, 0, 1]);
    thief.on("/token", Answer::json(200, &json!({"token": "t"})));
    let tmp = tempfile::tempdir().unwrap();
    let (user, pass, creds) = credentials(tmp.path());
    // The same address, another port: the reproduced exfiltration.
    evil.on(
        "/v2/private/app/*",
        Answer::bearer_challenge(&format!("{}/token", thief.url())),
    );
    // The metadata server: never, with or without credentials.
    evil.on(
        "/v2/meta/app/*",
        Answer::bearer_challenge(
            "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token",
        ),
    );
    let body = block("evil", &evil, &format!("default = true\n{creds}"))
        + &block("anon", &evil, "prefix = \"anon\"\n");
    let mut w = Served::start(tmp.path(), "realm", &body);
    warm(&evil, &w);

    let (s, text) = get(&format!("{}/v2/private/app/manifests/1", w.url()));
    assert_eq!(s, 502, "{text}");
    assert!(
        text.contains("upstream evil") && text.contains("token realm"),
        "{text}"
    );
    assert!(
        !text.contains(&thief.host()),
        "the client is not told the realm: {text}"
    );
    for (path, anon) in [
        ("/v2/meta/app/manifests/1", false),
        ("/v2/anon/meta/app/manifests/1", true),
    ] {
        let (s, text) = get(&format!("{}{path}", w.url()));
        assert_eq!(s, 502, "{path} (anonymous: {anon}): {text}");
        assert!(text.contains("link-local"), "{text}");
    }
    honest(&w).assert_served();

    assert!(
        thief.requests().is_empty(),
        "nothing reached the other port: {:?}",
        thief.requests()
    );
    assert!(refused(&w, "evil", "realm") >= 2.0 && refused(&w, "anon", "realm") >= 1.0);
    w.stop();
    let log = std::fs::read_to_string(&w.log).unwrap();
    assert!(
        log.contains("refused the token realm") && log.contains(&thief.host()),
        "the log names the refused realm"
    );
    assert!(!log.contains(&pass), "the password is not logged");
    let seen: Vec<Seen> = evil.requests();
    for r in seen {
        assert!(r.header("authorization").is_none(), "{r:?}");
    }
    let _ = user;
}

/// Regression (items 4, 16): a manifest or tag list redirected to a
/// loopback "metadata server" came back to an anonymous client (and the
/// manifest was cached); a `text/html` manifest with a `<script>` was cached
/// and served.
#[test]
fn manifests_and_tag_lists_come_from_the_registry_itself_and_are_manifests() {
    let rt = runtime();
    let evil = HostileUpstream::start(&rt, [127, 0, 0, 1]);
    let thief = HostileUpstream::start(&rt, [127, 0, 0, 1]);
    let secret = random_hex(16);
    thief.on(
        "/latest/*",
        Answer::json(
            200,
            &json!({"AccessKeyId": secret, "tags": [secret], "name": "x"}),
        ),
    );
    let meta = format!("{}/latest/meta-data/iam", thief.url());
    evil.on("/v2/ssrf/app/manifests/*", Answer::redirect(302, &meta));
    evil.on("/v2/ssrf/app/tags/list", Answer::redirect(307, &meta));
    evil.on(
        "/v2/ssrf/app/blobs/*",
        Answer::redirect(307, "http://169.254.169.254/latest/meta-data/"),
    );
    evil.on(
        "/v2/html/app/manifests/*",
        Answer::new(200)
            .header("content-type", "text/html; charset=utf-8")
            .body("<html><script>alert(document.cookie)</script></html>"),
    );
    // A tag list is parsed and written anew: nothing else passes through.
    evil.on(
        "/v2/shape/app/tags/list",
        Answer::json(
            200,
            &json!({"name": "shape/app", "tags": ["1", "<script>"], "AccessKeyId": secret}),
        ),
    );
    let tmp = tempfile::tempdir().unwrap();
    let w = Served::start(
        tmp.path(),
        "redirects",
        &block("evil", &evil, "default = true\nconnect_timeout = \"2s\"\n"),
    );
    warm(&evil, &w);
    let url = |p: &str| format!("{}{p}", w.url());

    for _ in 0..2 {
        let (s, text) = get(&url("/v2/ssrf/app/manifests/latest"));
        assert_eq!(s, 502, "{text}");
        assert!(!text.contains(&secret), "{text}");
        assert!(text.contains("redirect"), "{text}");
        assert!(!text.contains(&thief.host()), "{text}");
    }
    let (s, text) = get(&url("/v2/ssrf/app/tags/list"));
    assert_eq!(s, 502, "{text}");
    assert!(!text.contains(&secret), "{text}");
    let (s, text) = get(&url("/v2/shape/app/tags/list"));
    assert_eq!(
        (s, text.as_str()),
        (200, r#"{"name":"shape/app","tags":["1"]}"#)
    );
    let started = Instant::now();
    let (s, text) = get(&url(&format!(
        "/v2/ssrf/app/blobs/sha256:{}",
        "a".repeat(64)
    )));
    assert_eq!(s, 502, "{text}");
    assert!(text.contains("redirect"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused, not dialled"
    );
    for _ in 0..2 {
        let (s, text) = get(&url("/v2/html/app/manifests/latest"));
        assert_eq!(s, 502, "{text}");
        assert!(!text.contains("<script>"), "{text}");
    }
    honest(&w).assert_served();

    assert!(thief.requests().is_empty(), "{:?}", thief.requests());
    let html = evil.requests_to("/v2/html/app/manifests/");
    assert_eq!(html.len(), 2, "the html answer was not cached");
    assert!(html.iter().all(|r| r.method == "GET"));
    assert!(refused(&w, "evil", "redirect") >= 4.0);
    assert!(refused(&w, "evil", "media_type") >= 2.0);
}

/// Regression (item 5): a 600 MiB 404 body on a manifest request took RSS to
/// 1.4 GB (read whole); token answers were read whole too. Every buffered
/// body is read against its limit, and the rest is never read.
#[test]
fn huge_upstream_bodies_are_cut_at_their_limits() {
    const HUGE: u64 = 256 << 20;
    const READ_AT_MOST: u64 = 24 << 20; // a limit plus socket buffers
    let rt = runtime();
    let evil = HostileUpstream::start(&rt, [127, 0, 0, 1]);
    evil.on(
        "/v2/big/app/manifests/missing",
        Answer::new(404)
            .header("content-type", "application/json")
            .huge(HUGE, b' '),
    );
    evil.on(
        "/v2/big/app/manifests/1",
        Answer::new(200)
            .header("content-type", ACCEPT)
            .huge(HUGE, b' '),
    );
    // Slowly, without a length: cut as it grows.
    evil.on(
        "/v2/drip/app/manifests/1",
        Answer::new(200).header("content-type", ACCEPT).drip(
            vec![b' '; 64 << 10],
            Duration::from_millis(5),
            200,
        ),
    );
    evil.on(
        "/v2/big/app/tags/list",
        Answer::new(200)
            .header("content-type", "application/json")
            .huge(HUGE, b' '),
    );
    evil.on(
        "/v2/tok/app/*",
        Answer::bearer_challenge(&format!("{}/token", evil.url())),
    );
    evil.on(
        "/token",
        Answer::new(200)
            .header("content-type", "application/json")
            .huge(HUGE, b' '),
    );
    let tmp = tempfile::tempdir().unwrap();
    let w = Served::start(
        tmp.path(),
        "huge",
        &block("evil", &evil, "default = true\n"),
    );
    warm(&evil, &w);
    let base = w.url();
    let attack = std::thread::spawn(move || {
        [
            ("/v2/big/app/manifests/missing", 404, ""),
            (
                "/v2/big/app/manifests/1",
                502,
                "larger than the 4 MiB limit",
            ),
            ("/v2/big/app/tags/list", 502, "larger than the 4 MiB limit"),
            (
                "/v2/drip/app/manifests/1",
                502,
                "larger than the 4 MiB limit",
            ),
            (
                "/v2/tok/app/manifests/1",
                502,
                "larger than the 1 MiB limit",
            ),
        ]
        .map(|(path, status, says)| {
            let (s, text) = get(&format!("{base}{path}"));
            (
                path,
                s == status && text.contains(says),
                format!("{s} {text}"),
            )
        })
    });
    honest(&w).assert_served();
    for (path, ok, what) in attack.join().unwrap() {
        assert!(ok, "{path}: {what}");
    }
    // Five huge answers started; had any been read whole, over 256 MiB.
    let sent = evil.sent_bytes();
    assert!(
        sent < 5 * READ_AT_MOST,
        "the upstream sent {} MiB: bodies were read past their limits",
        sent >> 20
    );
    assert!(refused(&w, "evil", "body_size") >= 3.0);
    assert!(refused(&w, "evil", "error_body") >= 1.0);
}

/// Regression (item 12): `expires_in` of 2^64-1 panicked (`Instant +
/// Duration`), and the panic was re-raised in every request of that scope.
#[test]
fn an_absurd_token_lifetime_is_clamped_and_serves() {
    let rt = runtime();
    let evil = HostileUpstream::start(&rt, [127, 0, 0, 1]);
    let m = evil.serve_manifest("tl/app", "1");
    let path = "/v2/tl/app/manifests/1";
    evil.on(
        path,
        Answer::bearer_challenge(&format!("{}/token", evil.url())),
    );
    evil.on_authorized(
        path,
        "Bearer t",
        Answer::manifest(&m, "application/vnd.oci.image.manifest.v1+json"),
    );
    evil.on(
        "/token",
        Answer::new(200)
            .header("content-type", "application/json")
            .body(r#"{"token":"t","expires_in":18446744073709551615}"#),
    );
    let tmp = tempfile::tempdir().unwrap();
    let w = Served::start(
        tmp.path(),
        "lifetime",
        &block("evil", &evil, "default = true\n"),
    );
    warm(&evil, &w);
    let url = format!("{}{path}", w.url());
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || get(&url))
        })
        .collect();
    for c in clients {
        let (s, text) = c.join().unwrap();
        assert_eq!(s, 200, "{text}");
    }
    let (s, text) = get(&url);
    assert_eq!((s, text.as_bytes()), (200, m.as_slice()));
    honest(&w).assert_served();
    assert!(!evil.requests_to("/token").is_empty());
}

/// Writes `docker-credential-<name>` into `bin`, logging each run to
/// `<bin>/<name>.asked`, then running `body`.
fn helper(bin: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let p = bin.join(format!("docker-credential-{name}"));
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 3\ncat >/dev/null\necho $$ >> '{}/{name}.asked'\n{body}",
            bin.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn asked(bin: &Path, name: &str) -> Vec<String> {
    std::fs::read_to_string(bin.join(format!("{name}.asked")))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn path_with(bin: &Path) -> std::ffi::OsString {
    let mut dirs = vec![bin.to_owned()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap()
}

/// An upstream block whose credentials come from helper `name`.
fn helper_block(dir: &Path, up: &HostileUpstream, name: &str, extra: &str) -> String {
    let json: PathBuf = dir.join(format!("{name}.json"));
    let server = up.host();
    private_file(
        &json,
        &format!(r#"{{"auths":{{"{server}":{{}}}},"credHelpers":{{"{server}":"{name}"}}}}"#),
    );
    block(
        name,
        up,
        &format!("prefix = \"{name}\"\n[upstream.credentials]\ndocker_config = {json:?}\n{extra}"),
    )
}

fn gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// Item 18: a credential helper is a process exec. One that floods stdout
/// is killed at 64 KiB, one that prints garbage is refused without quoting
/// it, one that hangs holds only its own upstream (another upstream and the
/// honest client are served meanwhile) and is killed at its timeout; each
/// failure is held, so the helper is not run again per request.
#[test]
fn credential_helpers_that_hang_flood_or_babble_hold_nothing_up() {
    let rt = runtime();
    let evil = HostileUpstream::start(&rt, [127, 0, 0, 1]);
    evil.on(
        "/v2/private/*",
        Answer::new(401).header("www-authenticate", "Basic realm=\"evil\""),
    );
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let secret = random_hex(16);
    helper(&bin, "flood", &format!("exec yes '{secret}'\n"));
    helper(
        &bin,
        "babble",
        &format!("printf '\\377\\376{secret}\\000garbage'\nhead -c 4096 /dev/urandom\n"),
    );
    helper(&bin, "hang", "exec sleep 60\n");
    let body = [
        ("flood", ""),
        ("babble", ""),
        ("hang", "helper_timeout = \"3s\"\n"),
    ]
    .map(|(name, extra)| helper_block(tmp.path(), &evil, name, extra))
    .concat()
        + &block("evil", &evil, "default = true\n");
    let mut w = Served::start_env(tmp.path(), "helpers", &body, &[("PATH", &path_with(&bin))]);
    warm(&evil, &w);
    let url = |p: &str| format!("{}{p}", w.url());

    // A failure is held (5 s): asked again at once, the helper is not run.
    let again = |name: &str, status: u16| {
        let started = Instant::now();
        let (s, _) = get(&url(&format!("/v2/{name}/private/app/manifests/1")));
        assert_eq!(s, status);
        assert!(started.elapsed() < Duration::from_secs(1), "{name}");
        assert_eq!(asked(&bin, name).len(), 1, "{name} ran once");
    };
    let (s, text) = get(&url("/v2/flood/private/app/manifests/1"));
    assert_eq!(s, 502, "{text}");
    assert!(
        text.contains("wrote more than 64 KiB and was killed"),
        "{text}"
    );
    again("flood", 502);
    let (s, text) = get(&url("/v2/babble/private/app/manifests/1"));
    // Unusable answers are a configuration problem (wharf's): named in the
    // log only.
    assert_eq!(s, 500, "{text}");
    assert!(text.contains("configuration problem"), "{text}");
    assert!(
        !text.contains(&secret) && !text.contains("garbage"),
        "{text}"
    );
    again("babble", 500);
    evil.serve_manifest("other/app", "1");

    let hang_url = url("/v2/hang/private/app/manifests/1");
    let hung = std::thread::spawn(move || {
        let started = Instant::now();
        (get(&hang_url), started.elapsed())
    });
    eventually(Duration::from_secs(10), "the hanging helper to run", || {
        !asked(&bin, "hang").is_empty()
    });
    // While it hangs: another upstream, and the honest client.
    let started = Instant::now();
    let (s, text) = get(&url("/v2/other/app/manifests/1"));
    assert_eq!(s, 200, "{text}");
    assert!(started.elapsed() < HONEST_DEADLINE);
    honest(&w).assert_served();
    let ((s, text), took) = hung.join().unwrap();
    assert_eq!(s, 502, "{text}");
    assert!(
        text.contains("gave no answer within 3s and was killed"),
        "{text}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");

    again("hang", 502);
    for name in ["flood", "hang"] {
        for pid in asked(&bin, name) {
            eventually(
                Duration::from_secs(5),
                &format!("{name} ({pid}) to die"),
                || gone(&pid),
            );
        }
    }
    w.stop();
    let log = std::fs::read_to_string(&w.log).unwrap();
    assert!(!log.contains(&secret), "no helper output in the log");
    assert!(log.contains("docker-credential-babble answered something other than credentials JSON"));
}

/// Regression: an answer had no deadline but the 60 s per read, so an
/// upstream sending a byte every few seconds held a manifest request (its
/// coalesced run) or a token answer (and with it the token lock every
/// request of that upstream waits on) for as long as it liked, up to the
/// body limit: 4 MiB at a byte a minute. `answer_timeout` bounds each.
#[test]
fn answers_dripped_a_byte_at_a_time_are_given_up_after_answer_timeout() {
    let rt = runtime();
    let evil = HostileUpstream::start(&rt, [127, 0, 0, 1]);
    // Ten minutes of drip each, well under the body limits.
    let drip = || vec![b' '; 1];
    evil.on(
        "/v2/drip/app/manifests/1",
        Answer::new(200).header("content-type", ACCEPT).drip(
            drip(),
            Duration::from_millis(200),
            3000,
        ),
    );
    evil.on(
        "/v2/tok/app/*",
        Answer::bearer_challenge(&format!("{}/token", evil.url())),
    );
    evil.on(
        "/token",
        Answer::new(200)
            .header("content-type", "application/json")
            .drip(drip(), Duration::from_millis(200), 3000),
    );
    let tmp = tempfile::tempdir().unwrap();
    let w = Served::start(
        tmp.path(),
        "drip",
        &block("evil", &evil, "default = true\nanswer_timeout = \"1s\"\n"),
    );
    warm(&evil, &w);
    // Far above the 1 s deadline, far below the drip's ten minutes.
    let impatient = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    for path in ["/v2/drip/app/manifests/1", "/v2/tok/app/manifests/1"] {
        let r = impatient
            .get(format!("{}{path}", w.url()))
            .header("accept", ACCEPT)
            .send()
            .unwrap_or_else(|e| panic!("{path}: no answer while the upstream drips: {e}"));
        let (s, text) = (r.status().as_u16(), r.text().unwrap());
        assert!(
            s >= 500 && text.contains("unreachable"),
            "{path}: {s} {text}"
        );
    }
    honest(&w).assert_served();
}
