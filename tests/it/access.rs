//! Access control on the mirror (issue 5), through the real binary so that its
//! whole log can be searched for secrets afterwards: networks, htpasswd users,
//! bearer tokens, per-upstream repository lists (also for cached content),
//! and real clients authenticating: skopeo `--src-creds`, containerd
//! `ctr --user`, `podman login`.

use std::io::Read;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use crate::harness::*;

/// Every text a run produced that someone other than wharf's operator could
/// see or that ends up in logs: response bodies and headers, client output,
/// metrics, wharf's log.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    fn add(&mut self, s: impl Into<String>) -> String {
        let s = s.into();
        self.0.push(s.clone());
        s
    }
}

fn get(
    client: &reqwest::blocking::Client,
    url: &str,
    auth: Option<&str>,
    seen: &mut Seen,
) -> (u16, String) {
    let mut req = client.get(url).header(
        "accept",
        "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
    );
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let r = req.send().unwrap();
    let status = r.status().as_u16();
    let headers = format!("{:?}", r.headers());
    let body = r.text().unwrap();
    seen.add(format!("{headers}\n{body}"));
    (status, body)
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

fn private_file(p: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn access_control_with_real_clients_and_no_secret_anywhere() {
    require(&["htpasswd", "skopeo", "podman", "containerd", "ctr"]);
    let rt = runtime();
    // The upstream needs wharf's stored credentials for everything.
    let up = Upstream::start(Auth::Basic, &rt);
    up.push("small", "private/app:1", None, false);
    up.push("small", "team/lib:1", None, false);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut seen = Seen::default();

    // Mirror users: alice (htpasswd, bcrypt) and a bearer token for CI.
    let alice_pass = random_hex(12);
    let htpasswd = dir.join("htpasswd");
    run(Command::new("htpasswd")
        .arg("-Bbc")
        .arg(&htpasswd)
        .args(["alice", &alice_pass]));
    let bob_pass = random_hex(12);
    run(Command::new("htpasswd")
        .arg("-Bb")
        .arg(&htpasswd)
        .args(["bob", &bob_pass]));
    let ci_token = random_hex(20);
    private_file(&dir.join("tokens"), &format!("ci:{ci_token}\n"));
    let secrets = [
        up.pass.clone(),
        alice_pass.clone(),
        bob_pass.clone(),
        ci_token.clone(),
    ];
    let hub = Wharf::hub_block(&up, true, dir);
    let access = format!(
        "[access]\nhtpasswd_file = {:?}\ntokens_file = {:?}\nallow_networks = [\"127.0.0.1/32\", \"::1\"]\n",
        htpasswd,
        dir.join("tokens")
    );
    let client = http();

    // First an open mirror caches team/lib (as an earlier configuration would have).
    let mut open = Served::start(dir, "open", &hub);
    let (s, _) = get(
        &client,
        &format!("{}/v2/team/lib/manifests/1", open.url()),
        None,
        &mut seen,
    );
    assert_eq!(s, 200);
    let team_blob = {
        let m: serde_json::Value = serde_json::from_str(
            &get(
                &client,
                &format!("{}/v2/team/lib/manifests/1", open.url()),
                None,
                &mut seen,
            )
            .1,
        )
        .unwrap();
        m["layers"][0]["digest"].as_str().unwrap().to_owned()
    };
    let (s, _) = get(
        &client,
        &format!("{}/v2/team/lib/blobs/{team_blob}", open.url()),
        None,
        &mut seen,
    );
    assert_eq!(s, 200);
    open.stop();
    seen.add(std::fs::read_to_string(&open.log).unwrap());

    // Then the same cache behind access control: only users, only private/*,
    // bob not at all.
    // A second, public upstream (no credentials) on the same mirror.
    let pub_up = Upstream::start(Auth::None, &rt);
    pub_up.push("small", "library/busy:1", None, false);
    let pub_block = format!(
        "[[upstream]]\nname = \"pub\"\nurl = \"{}\"\nprefix = \"pub\"\n[upstream.access]\nanonymous = true\n",
        pub_up.url()
    );
    let closed_cfg = format!(
        "{access}{hub}[upstream.access]\nanonymous = false\nusers = [\"alice\", \"ci\"]\nrepositories = [\"private/*\"]\n{pub_block}"
    );
    let mut w = Served::start(dir, "closed", &closed_cfg);
    let url = |p: &str| format!("{}{p}", w.url());
    let alice = basic("alice", &alice_pass);
    let token = format!("Bearer {ci_token}");

    // Anonymous: 401 with a Basic challenge, at the ping and for content.
    for p in ["/v2/", "/v2/private/app/manifests/1"] {
        let r = client.get(url(p)).send().unwrap();
        assert_eq!(r.status(), 401, "{p}");
        let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(challenge.starts_with("Basic realm="), "{challenge}");
        let body = seen.add(r.text().unwrap());
        assert!(body.contains("UNAUTHORIZED"), "{body}");
    }
    // Wrong password, unknown token, foreign credentials: 401 too.
    for a in [
        basic("alice", "wrong"),
        "Bearer not-a-token-of-ours".into(),
        basic("dockerhub-user", "x"),
    ] {
        let (s, body) = get(
            &client,
            &url("/v2/private/app/manifests/1"),
            Some(&a),
            &mut seen,
        );
        assert_eq!(s, 401, "{body}");
        assert!(body.contains("authentication failed"), "{body}");
    }
    // The public upstream serves anyone, and ignores credentials it does not
    // know (dockerd sends its Docker Hub login to mirrors).
    for a in [
        None,
        Some(basic("dockerhub-user", "x")),
        Some("Bearer foreign".to_owned()),
    ] {
        let (s, body) = get(
            &client,
            &url("/v2/pub/library/busy/manifests/1"),
            a.as_deref(),
            &mut seen,
        );
        assert_eq!(s, 200, "{a:?}: {body}");
    }
    // alice and the CI token pull private/app.
    for a in [&alice, &token] {
        let (s, body) = get(
            &client,
            &url("/v2/private/app/manifests/1"),
            Some(a),
            &mut seen,
        );
        assert_eq!(s, 200, "{body}");
        let (s, _) = get(&client, &url("/v2/"), Some(a), &mut seen);
        assert_eq!(s, 200);
    }
    // bob authenticates but is not a user of this upstream: 403 DENIED.
    let (s, body) = get(
        &client,
        &url("/v2/private/app/manifests/1"),
        Some(&basic("bob", &bob_pass)),
        &mut seen,
    );
    assert_eq!(s, 403, "{body}");
    assert!(
        body.contains("DENIED") && body.contains("user bob"),
        "{body}"
    );
    // team/lib is outside the repository list: refused although cached,
    // manifest and blob alike.
    for p in [
        "/v2/team/lib/manifests/1".to_owned(),
        format!("/v2/team/lib/blobs/{team_blob}"),
    ] {
        let (s, body) = get(&client, &url(&p), Some(&alice), &mut seen);
        assert_eq!(s, 403, "{p}: {body}");
        assert!(
            body.contains("DENIED") && body.contains("team/lib"),
            "{body}"
        );
    }
    // A client outside the allowed networks: 403 before anything else.
    let outside = reqwest::blocking::Client::builder()
        .local_address("127.0.0.2".parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    let (s, body) = get(
        &outside,
        &url("/v2/private/app/manifests/1"),
        Some(&alice),
        &mut seen,
    );
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("127.0.0.2"), "{body}");

    // Real clients. skopeo with --src-creds, addressing wharf by name (skopeo
    // 1.9 sends empty credentials to a registries.conf mirror: there an
    // authfile entry for the mirror's host is the way).
    let conf = registries_conf(dir, ([127, 0, 0, 1], w.port).into());
    let skopeo = |creds: Option<&str>, dest: &str| {
        let mut c = Command::new("skopeo");
        c.arg("--registries-conf")
            .arg(&conf)
            .args(["copy", "--src-tls-verify=false"]);
        if let Some(cr) = creds {
            c.args(["--src-creds", cr]);
        }
        c.arg(format!("docker://127.0.0.1:{}/private/app:1", w.port))
            .arg(format!("dir:{}", dir.join(dest).display()));
        try_run(&mut c)
    };
    let (ok, out) = skopeo(Some(&format!("alice:{alice_pass}")), "sk-ok");
    assert!(ok, "skopeo --src-creds: {}", seen.add(out));
    let (ok, out) = skopeo(None, "sk-anon");
    assert!(!ok, "anonymous skopeo must fail");
    seen.add(out);

    // containerd with --user.
    let hosts = dir.join("hosts/docker.io");
    std::fs::create_dir_all(&hosts).unwrap();
    std::fs::write(
        hosts.join("hosts.toml"),
        format!(
            "server = \"http://127.0.0.1:{DEAD_PORT}\"\n[host.\"http://127.0.0.1:{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            w.port
        ),
    )
    .unwrap();
    let hd = dir.join("hosts");
    let hd = hd.to_str().unwrap();
    let ctd = Containerd::start(&dir.join("ctd"));
    let (ok, out) = ctd.ctr(&[
        "images",
        "pull",
        "--hosts-dir",
        hd,
        "docker.io/private/app:1",
    ]);
    assert!(!ok, "ctr without --user must fail: {out}");
    seen.add(out);
    let (ok, out) = ctd.ctr(&[
        "images",
        "pull",
        "--hosts-dir",
        hd,
        "--user",
        &format!("alice:{alice_pass}"),
        "docker.io/private/app:1",
    ]);
    assert!(ok, "ctr --user: {}", seen.add(out));

    // podman login checks the credentials against /v2/.
    let auth_file = dir.join("auth.json");
    let podman_login = |pass: &str| {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_REGISTRIES_CONF", &conf)
            .arg("--root")
            .arg(dir.join("podman-root"))
            .arg("--runroot")
            .arg(dir.join("podman-run"))
            .args(["--storage-driver", "vfs"])
            .args(["login", "--tls-verify=false", "--authfile"])
            .arg(&auth_file)
            .args(["-u", "alice", "-p", pass, &format!("127.0.0.1:{}", w.port)]);
        try_run(&mut c)
    };
    let (ok, out) = podman_login("wrong-password");
    assert!(!ok, "podman login with a wrong password must fail: {out}");
    seen.add(out);
    let (ok, out) = podman_login(&alice_pass);
    assert!(ok, "podman login: {}", seen.add(out));

    // Refusals are counted.
    let (_, metrics) = get(&client, &url("/metrics"), None, &mut seen);
    for reason in [
        "unauthenticated",
        "bad_credentials",
        "user",
        "repository",
        "network",
    ] {
        assert!(
            metrics.contains(&format!("wharf_access_denied_total{{reason=\"{reason}\"}}")),
            "{reason}: {metrics}"
        );
    }

    w.stop();
    let mut log = String::new();
    std::fs::File::open(&w.log)
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(
        log.contains("\"/v2/private/app/manifests/1\""),
        "the log has the requests"
    );
    seen.add(log);
    // No secret anywhere: not the upstream password, not alice's, not the token.
    for (i, text) in seen.0.iter().enumerate() {
        for s in &secrets {
            assert!(
                !text.contains(s.as_str()),
                "a secret leaked into output #{i}"
            );
        }
    }
}
