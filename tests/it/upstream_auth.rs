//! wharf authenticating to upstreams shaped like the real ones (issue 5):
//! GitLab (token realm on another host, `kid` JWTs, no `expires_in`), Docker
//! Hub (`x5c`, short tokens that expire during a slow blob), Google Artifact
//! Registry (`_json_key`, `_json_key_base64`, `oauth2accesstoken` from the
//! metadata server) and Docker Hub's 429 rate limiting. Every test ends by
//! searching wharf's debug log and all outputs for every secret.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::*;

fn private_file(p: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

const ACCEPT: &str =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// GET through wharf; returns status, headers and body, all kept in `seen`.
fn get(url: &str, seen: &mut Vec<String>) -> (u16, reqwest::header::HeaderMap, String) {
    let r = http().get(url).header("accept", ACCEPT).send().unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    let body = r.text().unwrap();
    seen.push(format!("{headers:?}\n{body}"));
    (status, headers, body)
}

fn assert_no_secret(seen: &[String], log: &std::path::Path, secrets: &[String]) {
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("wharf::access"), "the log has the requests");
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        assert!(!log.contains(s.as_str()), "a secret is in wharf's log");
        for (i, text) in seen.iter().enumerate() {
            assert!(!text.contains(s.as_str()), "a secret is in output #{i}");
        }
    }
}

#[test]
fn gitlab_shaped_registry_with_a_deploy_token() {
    let rt = runtime();
    let deploy_user = "gitlab+deploy-token-7".to_owned();
    let deploy_token = format!("gldt-{}", random_hex(12));
    let (u, p) = (deploy_user.clone(), deploy_token.clone());
    let up = Upstream::start(
        Auth::TokenWith(TokenOpts {
            ip: [127, 0, 0, 2], // the realm on another host than the registry
            path: "/jwt/auth",
            kid: true,
            send_expires_in: false,
            lifetime: 300,
            check: Arc::new(move |a, b| (a == u && b == p).then(|| u.clone())),
        }),
        &rt,
    );
    up.push("small", "private/app:1", None, false);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    private_file(&dir.join("deploy-token"), &deploy_token);
    let block = |creds: bool| {
        format!(
            "[[upstream]]\nname = \"gitlab\"\nurl = \"{}\"\n{}aliases = [\"registry.gitlab.example\"]\ndefault = true\n{}",
            up.url(),
            up.token_realms_line(),
            if creds {
                format!("[upstream.credentials]\nusername = \"{deploy_user}\"\npassword_file = {:?}\n[upstream.access]\nanonymous = true\nrepositories = [\"private/**\"]\n", dir.join("deploy-token"))
            } else {
                String::new()
            }
        )
    };
    let mut seen = Vec::new();
    let w = Served::start(dir, "gl", &block(true));
    let (ok, out) = skopeo_to_dir(
        None,
        &format!("docker://127.0.0.1:{}/private/app:1", w.port),
        &dir.join("out"),
        false,
    );
    assert!(ok, "pull with the deploy token: {out}");
    seen.push(out);
    let issued = up.token.as_ref().unwrap().issued.load(Ordering::SeqCst);
    assert!(issued >= 1);
    // Without credentials the same repository is refused by the upstream.
    drop(w);
    let anon_dir = dir.join("anon"); // a cache of its own
    std::fs::create_dir_all(&anon_dir).unwrap();
    let anon = Served::start(&anon_dir, "gl-anon", &block(false));
    let (s, _, body) = get(
        &format!("{}/v2/private/app/manifests/1", anon.url()),
        &mut seen,
    );
    assert_eq!(s, 403, "{body}");
    // The same deploy token from a `docker login` config.json entry.
    let dc_dir = dir.join("dc");
    std::fs::create_dir_all(&dc_dir).unwrap();
    let auth_b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("{deploy_user}:{deploy_token}"))
    };
    private_file(
        &dc_dir.join("config.json"),
        &format!(
            "{{\"auths\":{{\"127.0.0.1:{}\":{{\"auth\":\"{auth_b64}\"}}}}}}",
            up.port
        ),
    );
    let dc = Served::start(
        &dc_dir,
        "gl-dc",
        &format!(
            "[[upstream]]\nname = \"gitlab\"\nurl = \"{}\"\n{}default = true\n[upstream.credentials]\ndocker_config = {:?}\n[upstream.access]\nanonymous = true\nrepositories = [\"private/**\"]\n",
            up.url(),
            up.token_realms_line(),
            dc_dir.join("config.json")
        ),
    );
    let (s, _, body) = get(
        &format!("{}/v2/private/app/manifests/1", dc.url()),
        &mut seen,
    );
    assert_eq!(s, 200, "with docker login's credentials: {body}");
    drop(dc);
    let mut secrets = vec![deploy_token.clone(), up.pass.clone(), auth_b64.clone()];
    secrets.extend(
        up.token
            .as_ref()
            .unwrap()
            .tokens
            .lock()
            .unwrap()
            .iter()
            .cloned(),
    );
    drop(anon);
    assert_no_secret(&seen, &dir.join("gl.log"), &secrets);
    assert_no_secret(&seen, &dc_dir.join("gl-dc.log"), &secrets);
}

#[test]
fn short_tokens_expire_during_a_slow_blob_without_breaking_it() {
    let rt = runtime();
    // Docker Hub's shape. The image is pushed with long tokens; the pull gets
    // 2 s tokens and an upstream link of 16 MiB/s, so the 64 MiB layer takes
    // at least 4 s: its token dies mid-transfer.
    const LIFETIME: u64 = 2;
    let mut opts = TokenOpts::hub("nobody", "unused");
    let pull_user = format!("u{}", random_hex(4));
    let pull_pass = random_hex(16);
    let (u, p) = (pull_user.clone(), pull_pass.clone());
    opts.check = Arc::new(move |a, b| (a == u && b == p).then(|| u.clone()));
    let up = Upstream::start(Auth::TokenWith(opts), &rt);
    up.push("large", "private/big:1", None, false);
    let token_server = up.token.as_ref().unwrap();
    token_server.set_lifetime(LIFETIME);
    let relay = throttled_relay(&rt, up.addr(), 16 << 20);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    private_file(&dir.join("pw"), &pull_pass);
    let w = Served::start(
        dir,
        "slow",
        &format!(
            "[[upstream]]\nname = \"hub\"\nurl = \"http://127.0.0.1:{relay}\"\n{}default = true\n[upstream.credentials]\nusername = \"{pull_user}\"\npassword_file = {:?}\n[upstream.access]\nanonymous = true\nrepositories = [\"private/big\"]\n",
            up.token_realms_line(),
            dir.join("pw")
        ),
    );
    let issued = || token_server.issued.load(Ordering::SeqCst);
    let before = issued();
    let started = Instant::now();
    let (ok, out) = skopeo_to_dir(
        None,
        &format!("docker://127.0.0.1:{}/private/big:1", w.port),
        &dir.join("out"),
        false,
    );
    let took = started.elapsed();
    assert!(ok, "slow pull: {out}");
    let mut seen = vec![out];
    assert!(
        took > Duration::from_secs(LIFETIME + 1),
        "the transfer outlived its token ({took:?})"
    );
    // The layer came over one token that expired on the way; blobs asked
    // for after it (skopeo fetches the config last) got a renewed one.
    let n = issued() - before;
    assert!((1..=2).contains(&n), "{n} tokens for one pull");
    // The next requests reuse a live token, or renew the dead one once...
    let url = format!("{}/v2/private/big/tags/list", w.url());
    for _ in 0..3 {
        let (s, _, body) = get(&url, &mut seen);
        assert_eq!(s, 200, "{body}");
    }
    assert_eq!(issued() - before, 2, "one live token after the pull");
    // ...and once it is past 90% of its life, the next request renews it.
    sleep_until(token_server.last_token_until());
    let (s, _, _) = get(&url, &mut seen);
    assert_eq!(s, 200);
    assert_eq!(issued() - before, 3, "expired token renewed");
    let mut secrets = vec![pull_pass, up.pass.clone()];
    secrets.extend(token_server.tokens.lock().unwrap().iter().cloned());
    drop(w);
    assert_no_secret(&seen, &dir.join("slow.log"), &secrets);
}

#[test]
fn artifact_registry_json_keys_and_the_metadata_server() {
    use base64::Engine as _;
    let rt = runtime();
    // Both kinds of token live 3 s (the registry's once the image is pushed):
    // after the pull, waiting out both makes wharf come back to the metadata
    // server.
    const LIFETIME: u64 = 3;
    let md = MetadataServer::start(&rt, Duration::from_secs(LIFETIME));
    let key_json = format!(
        "{{\"type\":\"service_account\",\"project_id\":\"p\",\"private_key_id\":\"{}\",\"private_key\":\"-----BEGIN PRIVATE KEY-----\\n{}\\n-----END PRIVATE KEY-----\\n\",\"client_email\":\"mirror@p.iam.gserviceaccount.com\"}}",
        random_hex(8),
        random_hex(32)
    );
    let (k, md_tokens) = (key_json.clone(), md.tokens.clone());
    let mut opts = TokenOpts::hub("nobody", "unused");
    opts.path = "/v2/token";
    opts.check = Arc::new(move |user, pass| {
        let ok = match user {
            "_json_key" => pass == k,
            "_json_key_base64" => {
                base64::engine::general_purpose::STANDARD.decode(pass).ok()
                    == Some(k.clone().into_bytes())
            }
            "oauth2accesstoken" => {
                let now = Instant::now();
                md_tokens
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|(t, until)| t == pass && *until > now)
            }
            _ => false,
        };
        ok.then(|| "mirror@p.iam.gserviceaccount.com".to_owned())
    });
    let up = Upstream::start(Auth::TokenWith(opts), &rt);
    up.push("small", "private/app:1", None, false);
    // Short registry tokens: wharf must come back with a metadata token.
    let token_server = up.token.as_ref().unwrap();
    token_server.set_lifetime(LIFETIME);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    private_file(&dir.join("sa.json"), &key_json);
    let block = |name: &str, prefix: &str, creds: &str| {
        format!(
            "[[upstream]]\nname = \"{name}\"\nurl = \"{}\"\n{}prefix = \"{prefix}\"\n[upstream.credentials]\n{creds}[upstream.access]\nanonymous = true\nrepositories = [\"private/*\"]\n",
            up.url(),
            up.token_realms_line()
        )
    };
    let key_file = format!("json_key_file = {:?}\n", dir.join("sa.json"));
    let w = Served::start(
        dir,
        "gar",
        &[
            block("gar-key", "key", &key_file),
            block(
                "gar-b64",
                "b64",
                &format!("{key_file}json_key_base64 = true\n"),
            ),
            block(
                "gar-node",
                "node",
                &format!(
                    "gce_metadata = true\nmetadata_host = \"127.0.0.1:{}\"\n",
                    md.port
                ),
            ),
        ]
        .concat(),
    );
    let mut seen = Vec::new();
    for prefix in ["key", "b64", "node"] {
        let (s, _, body) = get(
            &format!("{}/v2/{prefix}/private/app/manifests/1", w.url()),
            &mut seen,
        );
        assert_eq!(s, 200, "{prefix}: {body}");
    }
    assert_eq!(
        md.fetches.load(Ordering::SeqCst),
        1,
        "one metadata token so far"
    );
    // skopeo through the metadata-token upstream.
    let (ok, out) = skopeo_to_dir(
        None,
        &format!("docker://127.0.0.1:{}/node/private/app:1", w.port),
        &dir.join("out"),
        false,
    );
    assert!(ok, "{out}");
    seen.push(out);
    // After the metadata token's lifetime (and the registry token's, so
    // that wharf needs credentials), wharf fetches a new one before the
    // registry would refuse the old one.
    sleep_until(md.current_until().max(token_server.last_token_until()));
    let (s, _, body) = get(
        &format!("{}/v2/node/private/app/tags/list", w.url()),
        &mut seen,
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(md.fetches.load(Ordering::SeqCst), 2, "refreshed once");
    assert_eq!(md.tokens.lock().unwrap().len(), 2);
    let (_, _, metrics) = get(&format!("{}/metrics", w.url()), &mut seen);
    assert!(
        metrics.contains(
            "wharf_upstream_token_fetches_total{kind=\"metadata\",upstream=\"gar-node\"} 2"
        ),
        "{metrics}"
    );
    let mut secrets = vec![
        key_json.clone(),
        base64::engine::general_purpose::STANDARD.encode(&key_json),
        up.pass.clone(),
    ];
    secrets.extend(md.tokens.lock().unwrap().iter().map(|(t, _)| t.clone()));
    secrets.extend(token_server.tokens.lock().unwrap().iter().cloned());
    drop(w);
    assert_no_secret(&seen, &dir.join("gar.log"), &secrets);
}

#[test]
fn a_429_is_respected_and_the_cache_keeps_serving() {
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    up.push("small", "library/test:1", None, false);
    up.push("small", "library/other:1", Some("v2s2"), false);
    let limiter = RateLimiter::start(&rt, up.url());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let w = Served::start(
        dir,
        "limited",
        &format!(
            "tag_ttl = \"1s\"\n[[upstream]]\nname = \"hub\"\nurl = \"http://127.0.0.1:{}\"\naliases = [\"docker.io\"]\ndefault = true\n",
            limiter.port
        ),
    );
    let mut seen = Vec::new();
    // Pull test:1 completely while the upstream still answers.
    let conf = registries_conf(dir, ([127, 0, 0, 1], w.port).into());
    let (ok, out) = skopeo_to_dir(
        Some(&conf),
        "docker://docker.io/library/test:1",
        &dir.join("a"),
        false,
    );
    assert!(ok, "{out}");
    let (_, _, metrics) = get(&format!("{}/metrics", w.url()), &mut seen);
    assert!(
        metrics.contains("wharf_upstream_ratelimit_limit{upstream=\"hub\"} 100"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wharf_upstream_ratelimit_remaining{upstream=\"hub\"} 99"),
        "{metrics}"
    );

    limiter.limited.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1100)); // test:1's tag is now due
    let before = limiter.seen.load(Ordering::SeqCst);
    let other = format!("{}/v2/library/other/manifests/1", w.url());
    let (s, headers, body) = get(&other, &mut seen);
    assert_eq!(s, 429, "{body}");
    assert!(
        body.contains("TOOMANYREQUESTS") && body.contains("upstream hub"),
        "{body}"
    );
    assert!(headers.contains_key("retry-after"));
    assert_eq!(limiter.seen.load(Ordering::SeqCst), before + 1);
    // wharf stops asking: ten more misses, and the cached image, reach nobody.
    for _ in 0..10 {
        let (s, _, _) = get(&other, &mut seen);
        assert_eq!(s, 429);
    }
    let (ok, out) = skopeo_to_dir(
        Some(&conf),
        "docker://docker.io/library/test:1",
        &dir.join("b"),
        false,
    );
    assert!(ok, "cached image during the backoff: {out}");
    assert_eq!(dir_contents(&dir.join("a")), dir_contents(&dir.join("b")));
    assert_eq!(
        limiter.seen.load(Ordering::SeqCst),
        before + 1,
        "nothing sent upstream during the backoff"
    );
    let (_, _, metrics) = get(&format!("{}/metrics", w.url()), &mut seen);
    assert!(
        metrics.contains("wharf_upstream_throttled_total{upstream=\"hub\"} 1"),
        "{metrics}"
    );
    let skipped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("wharf_upstream_backoff_skipped_total{upstream=\"hub\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(skipped >= 10, "{skipped}");
    let log = std::fs::read_to_string(dir.join("limited.log")).unwrap();
    assert!(log.contains("429"), "the backoff is logged");
}

#[test]
fn concurrent_cold_requests_share_one_token() {
    let rt = runtime();
    let up = Upstream::start(Auth::Token, &rt);
    up.push("small", "private/app:1", None, false);
    let tmp = tempfile::tempdir().unwrap();
    let w = Wharf::start(&rt, &Wharf::hub_block(&up, true, tmp.path()), "");
    let before = up.token.as_ref().unwrap().issued.load(Ordering::SeqCst);
    // tags/list is never cached or coalesced: twelve upstream requests at once.
    let url = format!("{}/v2/private/app/tags/list", w.url());
    let threads: Vec<_> = (0..12)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || http().get(url).send().unwrap().status().as_u16())
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    assert_eq!(
        up.token.as_ref().unwrap().issued.load(Ordering::SeqCst) - before,
        1,
        "one token for all of them"
    );
}

/// A cold blob during Docker Hub's 429 backoff: the fill that never started
/// carries the upstream's answer, `Retry-After` included, to its reader (it
/// once came back as a bare 429).
#[test]
fn a_cold_blob_during_a_429_backoff_carries_retry_after() {
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    up.push("large", "library/big:1", None, false);
    let manifest: serde_json::Value = http()
        .get(format!("{}/v2/library/big/manifests/1", up.url()))
        .header("accept", ACCEPT)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let layers: Vec<String> = [&manifest["layers"][0], &manifest["config"]]
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    let limiter = RateLimiter::start(&rt, up.url());
    let tmp = tempfile::tempdir().unwrap();
    let w = Served::start(
        tmp.path(),
        "limited-blob",
        &format!(
            "[[upstream]]\nname = \"hub\"\nurl = \"http://127.0.0.1:{}\"\naliases = [\"docker.io\"]\ndefault = true\n",
            limiter.port
        ),
    );
    limiter.limited.store(true, Ordering::SeqCst);
    let mut seen = Vec::new();
    // The upstream's own 429 on the blob, then a blob wharf does not even
    // ask for during the backoff: both say when to come back.
    for (i, d) in layers.iter().take(2).enumerate() {
        let before = limiter.seen.load(Ordering::SeqCst);
        let (s, headers, body) = get(&format!("{}/v2/library/big/blobs/{d}", w.url()), &mut seen);
        assert_eq!(s, 429, "{body}");
        assert!(body.contains("TOOMANYREQUESTS"), "{body}");
        let secs: u64 = headers
            .get("retry-after")
            .unwrap_or_else(|| panic!("blob #{i}: no Retry-After: {headers:?}"))
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=900).contains(&secs), "{secs}");
        let asked = limiter.seen.load(Ordering::SeqCst) - before;
        assert_eq!(asked, usize::from(i == 0), "blob #{i}: requests upstream");
    }
    assert_eq!(w.metric("wharf_cache_blobs"), 0.0, "nothing cached");
}
