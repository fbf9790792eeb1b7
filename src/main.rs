//! The `wharf` command: parse arguments, run, map errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wharf::app::App;
use wharf::config::{Config, TlsMode};
use wharf::tls::Tls;

#[derive(Parser)]
#[command(
    name = "wharf",
    version,
    about = "A pull-through caching mirror for container registries"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry pull API, filling the cache from the upstreams.
    Serve {
        /// Configuration file; without it, the embedded default (Docker Hub).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and print what it means.
    CheckConfig {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print (or write) what each client needs to trust wharf's TLS: the CA, the
    /// dockerd certs.d path and daemon.json entry, containerd hosts.toml files,
    /// a registries.conf block. Creates the auto CA if it does not exist yet.
    Trust {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// host:port clients use to reach wharf (default: from the TLS names).
        #[arg(long)]
        host: Option<String>,
        /// Write the files under this directory (etc/docker/..., etc/containerd/...).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List cached repositories and images: tags, digests, sizes, last access.
    Ls {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show how much the cache holds, pinned content, the budget and the disk.
    Du {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Remove an image: UPSTREAM/REPO[:TAG|@DIGEST] (as `wharf ls` shows it).
    /// Content another cached image uses, or a pin protects, stays.
    Rm {
        #[arg(long, short)]
        config: Option<PathBuf>,
        image: String,
    },
    /// Reconcile files with metadata, drop references to missing content, and
    /// evict if over the high watermark, now.
    Gc {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Also re-hash every blob and remove those that no longer match.
        #[arg(long)]
        verify: bool,
        /// Collect the shared tier ([shared]) instead of the local cache:
        /// delete blobs written longer ago than --older-than, and leases
        /// dead nodes left. For stores without lifecycle rules.
        #[arg(long, requires = "older_than", conflicts_with = "verify")]
        shared: bool,
        /// With --shared: the age past which a blob is deleted ("30d").
        #[arg(long, value_name = "DURATION", requires = "shared")]
        older_than: Option<String>,
        /// With --shared: count what would be deleted, delete nothing.
        #[arg(long, requires = "shared")]
        dry_run: bool,
    },
    /// Protect images from eviction: UPSTREAM/REPO[:TAG|@DIGEST], globs allowed
    /// (`*` within a path component, `**` across). Without a pattern, list pins.
    Pin {
        #[arg(long, short)]
        config: Option<PathBuf>,
        pattern: Option<String>,
    },
    /// Run sync rules now (all, or those named): list, filter, resolve by
    /// HEAD, fetch what the cache lacks, pin. Through the running server if
    /// one holds the cache. Exit status 1 if any tag failed.
    Sync {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Rules to run (default: every rule in the configuration).
        rules: Vec<String>,
        /// Print the plan (refs, digests, blobs and bytes to fetch); fetch nothing.
        #[arg(long)]
        dry_run: bool,
        /// One JSON object per event (the default when stdout is not a terminal).
        #[arg(long)]
        json: bool,
    },
    /// Remove a pin added with `wharf pin`.
    Unpin {
        #[arg(long, short)]
        config: Option<PathBuf>,
        pattern: String,
    },
    /// What this cache holds, for the connected side to make bundles against.
    Inventory {
        #[command(subcommand)]
        command: InventoryCommand,
    },
    /// Bundles for air-gapped sites: keys, create, verify, import, extract.
    Bundle {
        #[command(subcommand)]
        command: wharf::bundle::cli::BundleCommand,
    },
    /// containerd configuration for a node running wharf: hosts.toml files
    /// (hosts-dir), GKE's node-pool file (gke), the cache directory (cache-dir).
    NodeConfig {
        #[command(subcommand)]
        command: wharf::nodeconfig::cli::NodeConfigCommand,
    },
}

#[derive(Subcommand)]
enum InventoryCommand {
    /// Every digest the cache holds, as JSON (to FILE, or stdout): give it
    /// to `wharf bundle create --against` on the connected side.
    Export {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `wharf bundle ...`: create and import open the cache (or ask the server
/// holding it); the rest only read bundle files.
fn bundle(cmd: wharf::bundle::cli::BundleCommand) -> anyhow::Result<()> {
    use wharf::airgap::{CreateRequest, ImportRequest};
    use wharf::bundle::cli::BundleCommand as B;
    match cmd {
        B::Create {
            config,
            out,
            sync,
            images,
            against,
            since,
            volume_size,
            sign_key,
            json,
        } => {
            let volume_size = wharf::config::parse_size("--volume-size", &volume_size)
                .map_err(|e| anyhow::anyhow!("--volume-size {volume_size}: {e}"))?;
            let req = CreateRequest {
                out: absolute(out)?,
                sync,
                images,
                against: against.map(absolute).transpose()?,
                since: since.into_iter().map(absolute).collect::<Result<_, _>>()?,
                volume_size,
                sign_key: sign_key.map(absolute).transpose()?,
            };
            wharf::admin::client::bundle_create(load(config)?, req, json)
        }
        B::Import {
            config,
            dir,
            map,
            allow_rollback,
            json,
        } => {
            let map = map
                .iter()
                .map(|m| {
                    m.split_once('=')
                        .map(|(a, b)| (a.trim().to_owned(), b.trim().to_owned()))
                        .ok_or_else(|| anyhow::anyhow!("--map {m}: expected BUNDLE-NAME=SITE-NAME"))
                })
                .collect::<anyhow::Result<_>>()?;
            let req = ImportRequest {
                dir: absolute(dir)?,
                map,
                allow_rollback,
            };
            wharf::admin::client::bundle_import(load(config)?, req, json)
        }
        B::Verify { ref config, .. } => {
            let keys = match config {
                Some(c) => load(Some(c.clone()))?.bundle.trusted_keys,
                None => Vec::new(),
            };
            wharf::bundle::cli::run(cmd, keys)
        }
        other => wharf::bundle::cli::run(other, Vec::new()),
    }
}

/// Paths handed to a running server must not depend on this shell's
/// working directory.
fn absolute(p: PathBuf) -> anyhow::Result<PathBuf> {
    std::path::absolute(&p).with_context(|| format!("{}", p.display()))
}

/// Logs go to stderr (journald takes them from there): text, or one JSON
/// object per line with `log.format = "json"` or `WHARF_LOG_FORMAT=json`.
/// `WHARF_LOG` filters (default `info`; the access log is target
/// `wharf::access`).
fn init_logging(json: bool) {
    let json =
        json || std::env::var("WHARF_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let filter = tracing_subscriber::EnvFilter::try_from_env("WHARF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().flatten_event(true).with_current_span(false).init();
    } else {
        // Colours only on a terminal: journald and log files get plain text.
        b.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::CheckConfig { config } => with_logs(|| check_config(config)),
        Command::Trust { config, host, out } => with_logs(|| trust(config, host, out)),
        Command::Ls { config, json } => with_logs(|| wharf::admin::client::ls(load(config)?, json)),
        Command::Du { config, json } => with_logs(|| wharf::admin::client::du(load(config)?, json)),
        Command::Rm { config, image } => {
            with_logs(|| wharf::admin::client::rm(load(config)?, image))
        }
        Command::Gc {
            config,
            shared: true,
            older_than,
            dry_run,
            ..
        } => with_logs(|| {
            let older_than = humantime::parse_duration(older_than.as_deref().unwrap_or_default())
                .context("--older-than (examples: \"30d\", \"12h\")")?;
            wharf::admin::client::gc_shared(load(config)?, older_than, dry_run)
        }),
        Command::Gc { config, verify, .. } => {
            with_logs(|| wharf::admin::client::gc(load(config)?, verify))
        }
        Command::Pin { config, pattern } => {
            with_logs(|| wharf::admin::client::pin(load(config)?, pattern))
        }
        Command::Sync {
            config,
            rules,
            dry_run,
            json,
        } => with_logs(|| wharf::admin::client::sync(load(config)?, rules, dry_run, json)),
        Command::Unpin { config, pattern } => {
            with_logs(|| wharf::admin::client::unpin(load(config)?, pattern))
        }
        Command::Bundle { command } => with_logs(|| bundle(command)),
        Command::NodeConfig { command } => {
            with_logs(|| wharf::nodeconfig::cli::run(command, load_without_credentials))
        }
        Command::Inventory {
            command: InventoryCommand::Export { config, out },
        } => with_logs(|| wharf::admin::client::inventory_export(load(config)?, out)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wharf: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn with_logs(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    init_logging(false);
    f()
}

fn load(path: Option<PathBuf>) -> anyhow::Result<Config> {
    let what = path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "the embedded default configuration".into());
    Config::load(path.as_deref()).with_context(|| format!("invalid configuration in {what}"))
}

/// [`load`] for `wharf node-config`: no secret is looked up.
fn load_without_credentials(path: Option<PathBuf>) -> anyhow::Result<Config> {
    let what = path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "the embedded default configuration".into());
    Config::load_without_credentials(path.as_deref())
        .with_context(|| format!("invalid configuration in {what}"))
}

fn check_config(path: Option<PathBuf>) -> anyhow::Result<()> {
    let c = load(path)?;
    for w in &c.warnings {
        println!("warning: {w}");
    }
    println!("listen: {}", c.listen);
    match &c.tls.mode {
        TlsMode::Plain => println!("tls: off (plain HTTP)"),
        TlsMode::Auto { names } => println!(
            "tls: auto, certificate from wharf's CA in {} for {}",
            c.cache_dir.join("tls").display(),
            names.join(", ")
        ),
        TlsMode::Files { cert, key } => {
            println!("tls: {} with key {}", cert.display(), key.display())
        }
    }
    if let Some(ca) = &c.tls.client_ca {
        println!(
            "client certificates: {} from {}",
            if c.tls.client_auth_required {
                "required"
            } else {
                "optional"
            },
            ca.display()
        );
    }
    println!("cache dir: {}", c.cache_dir.display());
    println!("tag ttl: {}", humantime::format_duration(c.tag_ttl));
    for u in &c.upstreams {
        println!(
            "upstream {}: {}{}{}{}{}",
            u.name,
            u.url,
            if u.default { " (default)" } else { "" },
            u.prefix
                .as_ref()
                .map(|p| format!(" prefix=/v2/{p}/"))
                .unwrap_or_default(),
            if u.aliases.is_empty() {
                String::new()
            } else {
                format!(" ns={}", u.aliases.join(","))
            },
            u.credentials
                .as_ref()
                .map(|c| format!(
                    " credentials: {}",
                    wharf::upstream::credentials::source(&u.name, c, None).describe()
                ))
                .unwrap_or_default(),
        );
    }
    print_access(&c);
    print_sync(&c);
    print_shared(&c);
    println!("configuration OK");
    Ok(())
}

/// `check-config`'s line for the shared tier: where, how it authenticates
/// (the kind and file names, never a key), and its timing.
fn print_shared(c: &Config) {
    use wharf::shared::StoreCredentials;
    let Some(s) = &c.shared else { return };
    let creds = match &s.credentials {
        StoreCredentials::Keys {
            access_key_id,
            secret_access_key,
        } => {
            use wharf::upstream::credentials::SecretSpec;
            let from = |s: &SecretSpec| match s {
                SecretSpec::File { path, .. } => path.display().to_string(),
                SecretSpec::Value(_) => "the environment".to_owned(),
            };
            format!(
                "static keys (key id from {}, secret from {})",
                from(access_key_id),
                from(secret_access_key)
            )
        }
        StoreCredentials::Environment => {
            "the AWS environment (variables, web identity, instance metadata)".to_owned()
        }
        StoreCredentials::ServiceAccountFile(p) => format!("service account {}", p.display()),
        StoreCredentials::GceMetadata => "the GCE metadata server".to_owned(),
    };
    let private: Vec<&str> = c
        .upstreams
        .iter()
        .filter(|u| !u.shared)
        .map(|u| u.name.as_str())
        .collect();
    println!(
        "shared tier: {}{} with {creds}; {}; lease ttl {}, max wait {}, request timeout {}{}",
        s.url,
        s.endpoint
            .as_ref()
            .map(|e| format!(" at {e}"))
            .unwrap_or_default(),
        if s.write {
            "read and write"
        } else {
            "read only"
        },
        humantime::format_duration(s.lease_ttl),
        humantime::format_duration(s.max_wait),
        humantime::format_duration(s.request_timeout),
        if private.is_empty() {
            String::new()
        } else {
            format!("; kept out: {}", private.join(", "))
        }
    );
    if let Some(p) = &s.peer {
        use wharf::upstream::credentials::SecretSpec;
        println!(
            "shared tier peers: listening on {}, dialled at {}, key from {}",
            p.listen,
            p.address.as_deref().unwrap_or("the bound address"),
            match &p.key {
                SecretSpec::File { path, .. } => path.display().to_string(),
                SecretSpec::Value(_) => "the environment".to_owned(),
            }
        );
    }
}

/// `check-config`'s lines for client authentication: the files (never their
/// content) and the password-check limits.
fn print_access(c: &Config) {
    let a = &c.access;
    for (what, file) in [("htpasswd", &a.htpasswd_file), ("tokens", &a.tokens_file)] {
        if let Some(p) = file {
            println!("access: {what} file {}", p.display());
        }
    }
    if a.htpasswd_file.is_some() {
        let l = &a.logins;
        println!(
            "access: {} password checks at once ({} for failing clients), 429 after {} failures per address and user, one forgotten per {}",
            l.concurrency,
            l.failed_concurrency,
            l.max_failed,
            humantime::format_duration(l.decay)
        );
    }
}

/// `check-config`'s lines for sync rules and bundle keys.
fn print_sync(c: &Config) {
    for r in &c.sync {
        println!(
            "sync {}: upstream {}, {}, platforms {}, {} repositor{}{}{}{}",
            r.name,
            r.upstream,
            r.schedule
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_else(|| "on `wharf sync` only".into()),
            if r.platforms.is_empty() {
                "all".to_string()
            } else {
                r.platforms
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            },
            r.repos.len(),
            if r.repos.len() == 1 { "y" } else { "ies" },
            if r.pin { ", pin" } else { "" },
            if r.prune { ", prune" } else { "" },
            if r.signatures { ", signatures" } else { "" },
        );
    }
    for k in &c.bundle.trusted_keys {
        println!("bundle trusted key: {}", k.display());
    }
}

fn trust(path: Option<PathBuf>, host: Option<String>, out: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load(path)?;
    let ca_pem = match &config.tls.mode {
        TlsMode::Plain => anyhow::bail!("wharf is configured for plain HTTP (server.plain_http): there is no certificate to trust"),
        TlsMode::Auto { .. } => wharf::tls::Ca::load_or_create(&config.cache_dir.join("tls"))
            .context("cannot open wharf's CA")?
            .pem()
            .to_owned(),
        TlsMode::Files { cert, .. } => {
            let chain = std::fs::read_to_string(cert).with_context(|| format!("cannot read {}", cert.display()))?;
            eprintln!(
                "note: wharf serves {}; the last certificate of that chain is printed as the CA. If the chain does not include its root, give clients the issuing CA instead.",
                cert.display()
            );
            wharf::trust::last_certificate(&chain).context("no certificate in cert_file")?
        }
    };
    let host = host.unwrap_or_else(|| wharf::trust::default_host(&config));
    match out {
        None => print!("{}", wharf::trust::text(&config, &host, &ca_pem)),
        Some(dir) => {
            let files = wharf::trust::files(&config, &host, &ca_pem);
            wharf::trust::write(&dir, &files)
                .with_context(|| format!("cannot write to {}", dir.display()))?;
            for f in &files {
                println!("{}", dir.join(&f.path).display());
            }
        }
    }
    Ok(())
}

fn serve(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = match load(path) {
        Ok(c) => c,
        Err(e) => {
            init_logging(false);
            return Err(e);
        }
    };
    init_logging(config.log_json);
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    raise_open_file_limit(config.server.max_connections);
    // Streamed bodies hold no blocking thread (server/body.rs): the pool
    // serves file system work and fills, and stays tokio's size.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("wharf")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve_until_signal(config))
}

/// Raises the soft open-file limit to the hard one (systemd's unit sets
/// both): each connection may hold a socket and a blob file, and
/// `server.max_connections` is meant to be the limit, not `EMFILE`. Warns
/// when even the hard limit is below what the cap needs.
fn raise_open_file_limit(max_connections: usize) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return;
        }
        if l.rlim_cur < l.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: l.rlim_max,
                rlim_max: l.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                l = raised;
            }
        }
    }
    let need = (max_connections as u64).saturating_mul(2) + 256;
    if l.rlim_cur < need {
        tracing::warn!(
            open_files = l.rlim_cur,
            max_connections,
            "the open-file limit is below 2 x server.max_connections + 256: connections may fail with EMFILE before the cap"
        );
    }
}

async fn serve_until_signal(config: Config) -> anyhow::Result<()> {
    let app = private_umask(|| App::open(&config, Default::default()))
        .with_context(|| format!("cannot open the cache in {}", config.cache_dir.display()))?;
    let tls = Tls::new(&config.tls, &config.cache_dir).context("cannot set up TLS")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        scheme = if tls.is_some() { "https" } else { "http" },
        cache = %config.cache_dir.display(),
        upstreams = config.upstreams.len(),
        "wharf is serving"
    );
    if let TlsMode::Auto { names } = &config.tls.mode {
        tracing::info!(
            ca = %config.cache_dir.join("tls/ca.crt").display(),
            names = %names.join(","),
            "TLS certificate minted from wharf's CA; `wharf trust` shows how clients trust it"
        );
    }
    let operator = Operator::start(&config, &app).await?;
    // Under systemd: READY=1 once the accept loop and the admin socket
    // answer, STOPPING=1 at the signal, watchdog pings in between.
    let (pulse, beats) = wharf::server::pulse();
    let service = Arc::new(wharf::systemd::Service::start(wharf::systemd::SelfCheck {
        pulse,
        admin_socket: wharf::admin::socket_path(&config.cache_dir),
    }));
    let stopping = service.clone();
    let served = wharf::server::run(
        listener,
        app,
        tls,
        async move {
            shutdown_signal().await;
            stopping.stopping();
        },
        config.shutdown_grace,
        config.server.clone(),
        Some(beats),
    )
    .await;
    operator.stop().await;
    served?;
    tracing::info!("wharf stopped");
    Ok(())
}

/// Runs `f` (opening the cache) under umask 077, so that the files libraries
/// create without a mode (sled's database) are the operator's alone, also
/// outside systemd (whose StateDirectoryMode=0700 guards only the top
/// directory). The blob store and the admin socket set their modes
/// explicitly; what the server writes elsewhere on request (bundles) keeps
/// the operator's umask, hence only while the cache opens, before anything
/// else runs.
fn private_umask<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: umask only replaces the process's file-creation mask.
    let old = unsafe { libc::umask(0o077) };
    let out = f();
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    out
}

/// The operator's side of a running server: the admin socket and, when
/// configured, the admin listener. Stops with the server.
struct Operator {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Operator {
    async fn start(config: &Config, app: &Arc<App>) -> anyhow::Result<Operator> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stopped.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let sock = wharf::admin::socket_path(&config.cache_dir);
        let mut tasks = vec![tokio::spawn(wharf::admin::serve_socket(
            app.clone(),
            sock.clone(),
            stopped(),
        ))];
        if let Some(addr) = config.admin_listen {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (server.admin_listen)"))?;
            tracing::info!(admin = %l.local_addr()?, "serving /metrics, /healthz, /readyz and the status page (/)");
            tasks.push(tokio::spawn(wharf::admin::serve_http(
                app.clone(),
                l,
                stopped(),
            )));
        }
        // The status page's traffic chart: a sample every 10 s.
        let sampler = app.clone();
        let stop_sampling = stopped();
        tasks.push(tokio::spawn(async move {
            sampler
                .status
                .sample_until(&sampler.metrics, stop_sampling)
                .await;
            Ok(())
        }));
        if let Some(tier) = app.mirror.tier() {
            if let Some(addr) = tier.peer_listen() {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (shared.peer_listen)"))?;
                tier.peer_bound(l.local_addr()?);
                tasks.push(tokio::spawn(wharf::server::serve_peers(
                    app.clone(),
                    l,
                    config.server.clone(),
                    stopped(),
                )));
            }
        }
        tracing::info!(socket = %sock.display(), "operator commands (wharf ls, du, rm, gc, pin) use this socket");
        Ok(Operator { stop, tasks })
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
