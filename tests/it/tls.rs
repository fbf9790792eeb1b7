//! TLS with wharf's own CA: real clients trust wharf with one CA file and no
//! insecure flag, fail without it; mTLS; certificate rotation under load.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use sha2::{Digest as _, Sha256};

use crate::harness::*;

const AUTO: &str = "[server.tls]\nnames = [\"localhost\", \"127.0.0.1\"]\n";

/// A directory holding wharf's CA as `ca.crt` (the layout of `--cert-dir` and
/// `/etc/docker/certs.d/<host>/`).
fn cert_dir(w: &Wharf, tmp: &Path) -> PathBuf {
    let d = tmp.join("certs");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(w.cache_dir().join("tls/ca.crt"), d.join("ca.crt")).unwrap();
    d
}

fn https(w: &Wharf) -> String {
    format!("https://localhost:{}", w.addr.port())
}

/// A reqwest client trusting wharf's CA (and nothing else).
fn client(ca_pem: &[u8], identity: Option<reqwest::Identity>) -> reqwest::blocking::Client {
    let mut b = reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).unwrap())
        .tls_info(true)
        .timeout(Duration::from_secs(60));
    if let Some(i) = identity {
        b = b.identity(i);
    }
    b.build().unwrap()
}

#[test]
fn skopeo_and_podman_trust_wharf_with_only_its_ca() {
    require(&["podman"]);
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    up.push("small", "library/test:1", None, false);
    up.push("multi", "library/multi:1", None, true);
    let w = Wharf::start_with(&rt, AUTO, &Wharf::hub_block(&up, false, Path::new("/")), "");
    let tmp = tempfile::tempdir().unwrap();
    let certs = cert_dir(&w, tmp.path());
    let conf = registries_conf_for(tmp.path(), &format!("localhost:{}", w.addr.port()), false);

    // Without the CA: a certificate error, not a pull. (skopeo verifies by
    // default; the harness's skopeo_to_dir turns verification off.)
    let mut c = Command::new("skopeo");
    c.arg("--registries-conf").arg(&conf).arg("copy");
    c.arg("docker://docker.io/library/test:1")
        .arg(format!("dir:{}", tmp.path().join("no").display()));
    let (ok, out) = try_run(&mut c);
    assert!(!ok, "an untrusted wharf must not be used: {out}");
    assert!(out.contains("certificate") || out.contains("x509"), "{out}");

    // With only the CA, and no insecure flag anywhere for the mirror.
    let mut c = Command::new("skopeo");
    c.arg("--registries-conf")
        .arg(&conf)
        .args(["copy", "--src-cert-dir"])
        .arg(&certs);
    c.arg("docker://docker.io/library/test:1")
        .arg(format!("dir:{}", tmp.path().join("tls").display()));
    run(&mut c);
    let (ok, out) = skopeo_to_dir(
        None,
        &format!("docker://{}/library/test:1", up.addr()),
        &tmp.path().join("direct"),
        false,
    );
    assert!(ok, "{out}");
    assert_eq!(
        dir_contents(&tmp.path().join("tls")),
        dir_contents(&tmp.path().join("direct"))
    );

    // podman with --cert-dir.
    std::fs::write(
        tmp.path().join("storage.conf"),
        format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{0}/root\"\nrunroot = \"{0}/run\"\n",
            tmp.path().display()
        ),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("containers.conf"),
        format!(
            "[network]\nnetwork_config_dir = \"{}/net\"\n",
            tmp.path().display()
        ),
    )
    .unwrap();
    let mut c = Command::new("podman");
    c.env("CONTAINERS_REGISTRIES_CONF", &conf)
        .env("CONTAINERS_STORAGE_CONF", tmp.path().join("storage.conf"))
        .env("CONTAINERS_CONF", tmp.path().join("containers.conf"))
        .arg("--root")
        .arg(tmp.path().join("root"))
        .arg("--runroot")
        .arg(tmp.path().join("run"))
        .args(["--storage-driver", "vfs", "pull", "-q", "--cert-dir"])
        .arg(&certs)
        .arg("docker.io/library/multi:1");
    run(&mut c);
}

#[test]
fn containerd_trusts_wharf_for_two_upstreams_selected_by_ns() {
    let rt = runtime();
    let hub = Upstream::start(Auth::None, &rt);
    hub.push("small", "library/test:1", None, false);
    let gar = Upstream::start(Auth::None, &rt);
    gar.push("multi", "my-project/my-repo/app:1", None, true);
    let upstreams = format!(
        "{}[[upstream]]\nname = \"gar\"\nurl = \"{}\"\naliases = [\"europe-docker.pkg.dev\"]\n",
        Wharf::hub_block(&hub, false, Path::new("/")).replace("default = true\n", ""),
        gar.url()
    );
    let w = Wharf::start_with(&rt, AUTO, &upstreams, "");
    let tmp = tempfile::tempdir().unwrap();
    let ca = w.cache_dir().join("tls/ca.crt");
    for registry in ["docker.io", "europe-docker.pkg.dev"] {
        let d = tmp.path().join("hosts").join(registry);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("hosts.toml"),
            format!(
                "server = \"https://127.0.0.1:{DEAD_PORT}\"\n[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{}\"\n",
                https(&w),
                ca.display()
            ),
        )
        .unwrap();
    }
    let hosts = tmp.path().join("hosts");
    let ctd = Containerd::start(&tmp.path().join("ctd"));
    for image in [
        "docker.io/library/test:1",
        "europe-docker.pkg.dev/my-project/my-repo/app:1",
    ] {
        let (ok, out) = ctd.ctr(&[
            "images",
            "pull",
            "--hosts-dir",
            hosts.to_str().unwrap(),
            image,
        ]);
        assert!(ok, "ctr pull {image} over TLS: {out}");
    }
    let (_, list) = ctd.ctr(&["images", "ls", "-q"]);
    assert!(
        list.contains("europe-docker.pkg.dev/my-project/my-repo/app:1"),
        "{list}"
    );
    assert!(
        gar.gets("/v2/my-project/my-repo/app/manifests/1") == 1,
        "the GAR-like upstream served it"
    );
}

#[test]
fn mtls_refuses_clients_without_a_certificate_from_the_client_ca() {
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    up.push("small", "library/test:1", None, false);
    let tmp = tempfile::tempdir().unwrap();
    let client_ca = wharf::tls::Ca::load_or_create(&tmp.path().join("client-ca")).unwrap();
    let (cert, key) = client_ca
        .issue_client("puller", Duration::from_secs(3600))
        .unwrap();
    let stranger_ca = wharf::tls::Ca::load_or_create(&tmp.path().join("other-ca")).unwrap();
    let (s_cert, s_key) = stranger_ca
        .issue_client("stranger", Duration::from_secs(3600))
        .unwrap();
    let server = format!("{AUTO}client_ca_file = {:?}\n", client_ca.cert_path());
    let w = Wharf::start_with(
        &rt,
        &server,
        &Wharf::hub_block(&up, false, Path::new("/")),
        "",
    );
    let ca = std::fs::read(w.cache_dir().join("tls/ca.crt")).unwrap();
    let url = format!("{}/v2/library/test/manifests/1", https(&w));

    assert!(
        client(&ca, None).get(&url).send().is_err(),
        "no client certificate: refused"
    );
    let stranger = reqwest::Identity::from_pem(format!("{s_cert}{s_key}").as_bytes()).unwrap();
    assert!(
        client(&ca, Some(stranger)).get(&url).send().is_err(),
        "certificate from another CA: refused"
    );
    let id = reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap();
    let r = client(&ca, Some(id)).get(&url).send().unwrap();
    assert_eq!(r.status(), 200);

    // skopeo presents client.cert/client.key from its cert dir, as dockerd does
    // from certs.d and podman from its cert dir.
    let certs = cert_dir(&w, tmp.path());
    let conf = registries_conf_for(tmp.path(), &format!("localhost:{}", w.addr.port()), false);
    let pull = |dest: &str| {
        let mut c = Command::new("skopeo");
        c.arg("--registries-conf")
            .arg(&conf)
            .args(["copy", "--src-cert-dir"])
            .arg(&certs);
        c.arg("docker://docker.io/library/test:1")
            .arg(format!("dir:{}", tmp.path().join(dest).display()));
        try_run(&mut c)
    };
    let (ok, out) = pull("without");
    assert!(!ok, "{out}");
    std::fs::write(certs.join("client.cert"), &cert).unwrap();
    std::fs::write(certs.join("client.key"), &key).unwrap();
    let (ok, out) = pull("with");
    assert!(ok, "skopeo with a client certificate: {out}");
}

#[test]
fn a_client_certificate_authenticates_where_anonymous_clients_are_refused() {
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    up.push("small", "library/test:1", None, false);
    let tmp = tempfile::tempdir().unwrap();
    let client_ca = wharf::tls::Ca::load_or_create(&tmp.path().join("client-ca")).unwrap();
    let (cert, key) = client_ca
        .issue_client("puller", Duration::from_secs(3600))
        .unwrap();
    // Optional: anyone may connect, but only certificate holders may pull.
    let server = format!(
        "{AUTO}client_ca_file = {:?}\nclient_auth = \"optional\"\n",
        client_ca.cert_path()
    );
    // A certificate is the user its subject CN names, so `users` tells
    // nodes apart.
    let upstreams = format!(
        "[access]\nclient_certificates = true\n{}[upstream.access]\nanonymous = false\nusers = [\"puller\"]\n",
        Wharf::hub_block(&up, false, Path::new("/"))
    );
    let w = Wharf::start_with(&rt, &server, &upstreams, "");
    let ca = std::fs::read(w.cache_dir().join("tls/ca.crt")).unwrap();
    let url = format!("{}/v2/library/test/manifests/1", https(&w));
    let r = client(&ca, None).get(&url).send().unwrap();
    assert_eq!(
        r.status(),
        401,
        "connected without a certificate, but not allowed to pull"
    );
    let id = reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap();
    let r = client(&ca, Some(id)).get(&url).send().unwrap();
    assert_eq!(r.status(), 200);
    let (cert, key) = client_ca
        .issue_client("node-b", Duration::from_secs(3600))
        .unwrap();
    let id = reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap();
    let r = client(&ca, Some(id)).get(&url).send().unwrap();
    assert_eq!(r.status(), 403, "a certificate of a user not listed");
    let body = r.text().unwrap();
    assert!(
        body.contains("DENIED") && body.contains("user node-b"),
        "{body}"
    );
}

/// The leaf certificate (DER) of a PEM chain.
fn leaf(chain_pem: &str) -> Vec<u8> {
    CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// Replaces a file the way deployment tools do: write aside, rename over.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_replaced_certificate_is_used_by_new_connections_while_a_download_completes() {
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    up.push("large", "library/big:1", None, false);
    let tmp = tempfile::tempdir().unwrap();
    let ca = wharf::tls::Ca::load_or_create(&tmp.path().join("ca")).unwrap();
    let (chain_a, key_a) = ca.issue_server(&["localhost".into()]).unwrap();
    let (chain_b, key_b) = ca.issue_server(&["localhost".into()]).unwrap();
    let (cert_file, key_file) = (tmp.path().join("server.crt"), tmp.path().join("server.key"));
    std::fs::write(&cert_file, &chain_a).unwrap();
    std::fs::write(&key_file, &key_a).unwrap();
    let server = format!(
        "[server.tls]\ncert_file = {cert_file:?}\nkey_file = {key_file:?}\nreload_interval = \"200ms\"\n"
    );
    let w = Wharf::start_with(
        &rt,
        &server,
        &Wharf::hub_block(&up, false, Path::new("/")),
        "",
    );
    let c = client(ca.pem().as_bytes(), None);
    let peer = |r: &reqwest::blocking::Response| {
        r.extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|i| i.peer_certificate())
            .map(|d| d.to_vec())
    };

    // Start downloading the 64 MiB layer and stop after the first MiB.
    let m: serde_json::Value = c
        .get(format!("{}/v2/library/big/manifests/1", https(&w)))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let layer = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|l| l["size"].as_u64())
        .unwrap()
        .clone();
    let digest = layer["digest"].as_str().unwrap().to_owned();
    let mut resp = c
        .get(format!("{}/v2/library/big/blobs/{digest}", https(&w)))
        .send()
        .unwrap();
    assert_eq!(peer(&resp), Some(leaf(&chain_a)));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0usize;
    use std::io::Read;
    while total < 1 << 20 {
        let n = resp.read(&mut buf).unwrap();
        h.update(&buf[..n]);
        total += n;
    }

    // Rotate: key first, then the certificate (as certbot's deploy hooks do).
    replace(&key_file, &key_b);
    replace(&cert_file, &chain_b);
    eventually(
        Duration::from_secs(15),
        "the new certificate to be served",
        || {
            // A fresh client: a new connection and a full handshake.
            let r = client(ca.pem().as_bytes(), None)
                .get(format!("{}/v2/", https(&w)))
                .send()
                .unwrap();
            peer(&r) == Some(leaf(&chain_b))
        },
    );

    // The download that started on the old certificate finishes, verified.
    loop {
        let n = resp.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n;
    }
    assert_eq!(total as u64, layer["size"].as_u64().unwrap());
    assert_eq!(format!("sha256:{}", hex::encode(h.finalize())), digest);
}

/// `openssl s_client` against wharf, sending one HTTP/1.1 request and reading
/// until the server closes (so TLS 1.3 session tickets, which arrive after the
/// handshake, are received). Returns everything it printed.
fn s_client(port: u16, args: &[&str]) -> String {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "localhost",
            "-ign_eof",
        ])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn tls_versions_alpn_and_session_resumption() {
    let rt = runtime();
    let up = Upstream::start(Auth::None, &rt);
    let w = Wharf::start_with(&rt, AUTO, &Wharf::hub_block(&up, false, Path::new("/")), "");
    let port = w.addr.port();
    let tmp = tempfile::tempdir().unwrap();
    let ca = w.cache_dir().join("tls/ca.crt");
    let ca = ca.to_str().unwrap();

    let out = s_client(port, &["-CAfile", ca, "-alpn", "h2,http/1.1", "-brief"]);
    assert!(out.contains("Verification: OK"), "{out}");
    assert!(
        out.contains("ALPN protocol: h2") || out.contains("Protocol version: TLSv1.3"),
        "{out}"
    );
    let out = s_client(port, &["-CAfile", ca, "-alpn", "h2,http/1.1"]);
    assert!(out.contains("ALPN protocol: h2"), "{out}");
    assert!(out.contains("TLSv1.3"), "{out}");
    let out = s_client(port, &["-CAfile", ca, "-tls1_2", "-alpn", "http/1.1"]);
    assert!(
        out.contains("Verify return code: 0 (ok)") && out.contains("TLSv1.2"),
        "{out}"
    );
    assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
    for old in ["-tls1_1", "-tls1"] {
        let out = s_client(port, &["-CAfile", ca, old, "-cipher", "DEFAULT@SECLEVEL=0"]);
        assert!(
            out.contains("no peer certificate available"),
            "{old} must be refused: {out}"
        );
    }

    // Resumption, as clients that reconnect per request need it: TLS 1.3
    // tickets and TLS 1.2 sessions.
    for version in ["-tls1_3", "-tls1_2"] {
        let sess = tmp.path().join(format!("sess{version}"));
        let sess = sess.to_str().unwrap();
        let first = s_client(
            port,
            &[
                "-CAfile",
                ca,
                version,
                "-alpn",
                "http/1.1",
                "-sess_out",
                sess,
            ],
        );
        assert!(first.contains("HTTP/1.1 200"), "{first}");
        assert!(first.contains("Verify return code: 0 (ok)"), "{first}");
        let again = s_client(
            port,
            &[
                "-CAfile", ca, version, "-alpn", "http/1.1", "-sess_in", sess,
            ],
        );
        assert!(
            again.contains("Reused, TLSv1."),
            "{version} session resumed: {again}"
        );
    }
}
