//! The CLI side of the cache operations: ask the running server through its
//! admin socket, or, when no server holds the cache, open it directly.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::cache::{Cache, CacheError};
use crate::config::Config;
use crate::mirror::{open_metadata, MirrorError};

use super::{execute, socket_path, Op};

/// Where an operation ran.
pub enum Via {
    Server,
    Direct,
}

/// Runs `op` on the cache of `config`: through the server if one answers on
/// the admin socket, else on the cache opened here.
pub fn run(config: &Config, op: &Op) -> anyhow::Result<(serde_json::Value, Via)> {
    let sock = socket_path(&config.cache_dir);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    if sock.exists() {
        match rt.block_on(ask(&sock, op)) {
            Ok(Some(v)) => return Ok((v, Via::Server)),
            Ok(None) => {} // nobody listening: a socket left by a crash
            Err(e) => return Err(e),
        }
    }
    let meta = open_metadata(&config.cache_dir).map_err(|e| open_failed(config, &sock, e))?;
    let (cache, _) = Cache::open(&config.cache_dir, meta, &config.cache, Arc::default())
        .with_context(|| format!("cannot open the cache in {}", config.cache_dir.display()))?;
    let v = serde_json::from_str(&execute(&cache, op, false)?)?;
    cache.flush()?;
    Ok((v, Via::Direct))
}

/// Why the cache could not be opened here: held by a process that does not
/// answer on the admin socket, or something else.
fn open_failed(config: &Config, sock: &Path, e: MirrorError) -> anyhow::Error {
    match &e {
        MirrorError::Cache(c) if matches!(**c, CacheError::Locked(_)) => anyhow!(
            "{e}, which does not answer on {} (an older wharf, or one still starting?)",
            sock.display()
        ),
        _ => anyhow!(
            "cannot open the cache in {}: {e}",
            config.cache_dir.display()
        ),
    }
}

/// `Ok(None)`: the socket exists but nobody accepts on it.
async fn ask(sock: &Path, op: &Op) -> anyhow::Result<Option<serde_json::Value>> {
    let Some(resp) = send(sock, op).await? else {
        return Ok(None);
    };
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).context("the server's answer is not JSON")?;
    if !status.is_success() {
        bail!(
            "{}",
            v["error"]
                .as_str()
                .unwrap_or("the server refused the operation")
        );
    }
    Ok(Some(v))
}

/// Runs a streaming operation on the server: `on_line` gets each line as
/// it comes. `Ok(false)`: nobody accepts on the socket.
async fn ask_stream(sock: &Path, op: &Op, on_line: &mut dyn FnMut(&str)) -> anyhow::Result<bool> {
    let Some(resp) = send(sock, op).await? else {
        return Ok(false);
    };
    let mut body = resp.into_body();
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("the server's stream broke off")?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            on_line(String::from_utf8_lossy(&line[..i]).trim());
        }
    }
    Ok(true)
}

/// Sends one operation; `Ok(None)` when nobody accepts on the socket.
async fn send(
    sock: &Path,
    op: &Op,
) -> anyhow::Result<Option<http::Response<hyper::body::Incoming>>> {
    let stream = match tokio::net::UnixStream::connect(sock).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "{}: permission denied; run as wharf's user or root",
            sock.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot connect to {}", sock.display())),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("admin socket handshake")?;
    tokio::spawn(conn);
    let body = serde_json::to_vec(op).expect("operations serialize");
    let req = http::Request::post("/op")
        .header(http::header::HOST, "wharf")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
        .expect("static request");
    let resp = sender.send_request(req).await.context("admin request")?;
    Ok(Some(resp))
}

/// `wharf sync`: runs the rules now, through the running server if one
/// answers, else on the cache opened here with the configured upstreams.
/// Fails (exit status 1) when any tag or repository failed.
pub fn sync(config: Config, rules: Vec<String>, dry_run: bool, json: bool) -> anyhow::Result<()> {
    use crate::sync::{Event, Renderer};
    let renderer = parking_lot::Mutex::new(Renderer::new(json));
    let failures = std::sync::atomic::AtomicUsize::new(0);
    let show = |e: &Event| {
        if let Event::RunFinished { summary } = e {
            failures.fetch_add(summary.failed.len(), std::sync::atomic::Ordering::Relaxed);
        }
        renderer.lock().show(e);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    let op = Op::Sync { rules, dry_run };
    let sock = socket_path(&config.cache_dir);
    let mut errors = Vec::new();
    let via_server = sock.exists()
        && rt.block_on(ask_stream(
            &sock,
            &op,
            &mut |line| match serde_json::from_str::<Event>(line) {
                Ok(e) => show(&e),
                Err(_) => {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                    errors.push(v["error"].as_str().unwrap_or(line).to_owned());
                }
            },
        ))?;
    if via_server {
        note(Via::Server);
    } else {
        let Op::Sync { rules, dry_run } = op else {
            unreachable!()
        };
        become_cache_owner(&config.cache_dir, &[])?;
        rt.block_on(async {
            let app = crate::app::App::open(&config, Arc::default())
                .map_err(|e| open_failed(&config, &sock, e))?;
            for rule in app.sync.chosen(&rules)? {
                app.sync.run(rule, dry_run, &|e| show(&e)).await?;
            }
            app.mirror.flush()?;
            anyhow::Ok(())
        })?;
    }
    if let Some(e) = errors.first() {
        bail!("{e}");
    }
    let failed = failures.load(std::sync::atomic::Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} tag(s) or repositories failed (see above); the rest is synced");
    }
    Ok(())
}

// ------------------------------------------------------------ the commands

fn note(via: Via) {
    if let Via::Server = via {
        eprintln!("(done by the running server)");
    }
}

pub fn ls(config: Config, json: bool) -> anyhow::Result<()> {
    let (v, via) = run(&config, &Op::Ls)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let repos: Vec<crate::cache::RepoListing> = serde_json::from_value(v)?;
    if repos.is_empty() {
        println!("the cache holds no images");
    }
    println!(
        "{:<50} {:<20} {:<19} {:>10} {:>7} {:<20} PIN",
        "REPOSITORY", "TAG", "DIGEST", "SIZE", "BLOBS", "LAST ACCESS (UTC)"
    );
    for r in &repos {
        for i in &r.images {
            println!(
                "{:<50} {:<20} {:<19} {:>10} {:>7} {:<20} {}",
                format!("{}/{}", r.upstream, r.repository),
                i.tag.as_deref().unwrap_or("<digest>"),
                short(&i.digest),
                size(i.size),
                format!("{}/{}", i.cached_blobs, i.total_blobs),
                when(i.last_access_ms),
                if i.pinned { "pinned" } else { "" }
            );
        }
    }
    let total: u64 = repos.iter().map(|r| r.size).sum();
    println!(
        "{} repositories, {} images; sizes count content shared between images in each (total by repository {})",
        repos.len(),
        repos.iter().map(|r| r.images.len()).sum::<usize>(),
        size(total)
    );
    note(via);
    Ok(())
}

pub fn du(config: Config, json: bool) -> anyhow::Result<()> {
    let (v, via) = run(&config, &Op::Du)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let u: crate::cache::Usage = serde_json::from_value(v)?;
    println!("cache:    {}", u.dir.display());
    println!(
        "content:  {} in {} blobs ({} manifests)",
        size(u.bytes),
        u.blobs,
        u.manifests
    );
    println!("pinned:   {}", size(u.pinned_bytes));
    match u.max_size {
        Some(m) => println!(
            "budget:   {} (eviction above {:.0}% = {}, down to {:.0}% = {})",
            size(m),
            u.high_watermark * 100.0,
            size((m as f64 * u.high_watermark) as u64),
            u.low_watermark * 100.0,
            size((m as f64 * u.low_watermark) as u64)
        ),
        None => println!(
            "budget:   the filesystem (eviction above {:.0}% of content + free space, down to {:.0}%)",
            u.high_watermark * 100.0,
            u.low_watermark * 100.0
        ),
    }
    println!(
        "disk:     {} free of {}",
        size(u.disk_available),
        size(u.disk_size)
    );
    for (up, b) in &u.upstreams {
        println!("upstream: {up} {}", size(*b));
    }
    if u.fills_in_flight > 0 {
        println!("filling:  {} blobs in flight", u.fills_in_flight);
    }
    note(via);
    Ok(())
}

pub fn rm(config: Config, image: String) -> anyhow::Result<()> {
    let (v, via) = run(
        &config,
        &Op::Rm {
            image: image.clone(),
        },
    )?;
    let r: crate::cache::RemoveReport = serde_json::from_value(v)?;
    println!(
        "{image}: removed {} tags, {} links, {} blobs ({}); kept {} blobs other images use or pins protect",
        r.tags_removed,
        r.links_removed,
        r.blobs_removed,
        size(r.bytes_removed),
        r.blobs_kept
    );
    note(via);
    Ok(())
}

/// `wharf gc --shared`: retention of the shared tier (see `shared::gc`).
/// Talks to the store directly; no server or cache is involved.
pub fn gc_shared(
    config: Config,
    older_than: std::time::Duration,
    dry_run: bool,
) -> anyhow::Result<()> {
    let Some(settings) = &config.shared else {
        bail!("the configuration has no [shared] tier");
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    let registry = prometheus::Registry::new();
    let tier = crate::shared::Tier::new(settings, &registry)?;
    let r = rt.block_on(crate::shared::collect(&tier, older_than, dry_run))?;
    println!(
        "{} {}: {} blobs ({}) and {} manifests older than {}; kept {} blobs ({}); {} dead leases",
        if dry_run {
            "would delete from"
        } else {
            "deleted from"
        },
        settings.url,
        r.blobs_deleted,
        size(r.bytes_deleted),
        r.manifests_deleted,
        humantime::format_duration(older_than),
        r.blobs_kept,
        size(r.bytes_kept),
        r.leases_deleted
    );
    Ok(())
}

pub fn gc(config: Config, verify: bool) -> anyhow::Result<()> {
    let (v, via) = run(&config, &Op::Gc { verify })?;
    let r: crate::cache::GcReport = serde_json::from_value(v)?;
    let c = &r.reconcile;
    println!(
        "reconciled {} files with {} records in {} ms: removed {} stray files ({}), {} records without files, {} links and {} tags to missing content{}",
        c.files,
        c.records,
        c.ms,
        c.files_removed,
        size(c.bytes_removed),
        c.records_removed,
        c.links_removed,
        c.tags_removed,
        if verify {
            format!(", {} corrupt blobs", c.corrupt_removed)
        } else {
            String::new()
        }
    );
    let e = &r.evict;
    println!(
        "eviction: {} of budget {} (high {}, low {}); evicted {} blobs ({}); pinned {}",
        size(e.usage_before),
        size(e.budget),
        size(e.high),
        size(e.low),
        e.evicted_blobs,
        size(e.evicted_bytes),
        size(e.pinned_bytes)
    );
    note(via);
    Ok(())
}

pub fn pin(config: Config, pattern: Option<String>) -> anyhow::Result<()> {
    let Some(pattern) = pattern else {
        let (v, via) = run(&config, &Op::Pins)?;
        for p in v.as_array().into_iter().flatten() {
            println!(
                "{}{}",
                p["pattern"].as_str().unwrap_or(""),
                if p["config"].as_bool() == Some(true) {
                    "  (config file)"
                } else {
                    ""
                }
            );
        }
        note(via);
        return Ok(());
    };
    let (v, via) = run(
        &config,
        &Op::Pin {
            pattern: pattern.clone(),
        },
    )?;
    if v["added"].as_bool() == Some(true) {
        println!("pinned {pattern}");
    } else {
        println!("{pattern} was already pinned");
    }
    note(via);
    Ok(())
}

pub fn unpin(config: Config, pattern: String) -> anyhow::Result<()> {
    let (v, via) = run(
        &config,
        &Op::Unpin {
            pattern: pattern.clone(),
        },
    )?;
    if v["removed"].as_bool() == Some(true) {
        println!("unpinned {pattern}");
    } else {
        bail!("{pattern} is not pinned (see `wharf pin` for the list)");
    }
    note(via);
    Ok(())
}

fn short(digest: &str) -> String {
    match digest.split_once(':') {
        Some((alg, hex)) => format!("{alg}:{}", &hex[..hex.len().min(12)]),
        None => digest.to_owned(),
    }
}

fn size(b: u64) -> String {
    crate::sync::human_bytes(b)
}

fn when(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_owned()
}

/// Runs a bundle operation: through the running server when one answers on
/// the admin socket, else here on the opened cache (`direct`). Shows
/// progress; returns the operation's report.
fn bundle_op<F>(
    config: &Config,
    op: Op,
    json: bool,
    before_direct: &dyn Fn() -> anyhow::Result<()>,
    direct: F,
) -> anyhow::Result<serde_json::Value>
where
    F: FnOnce(
        Arc<crate::app::App>,
        &(dyn Fn(crate::airgap::Event) + Send + Sync),
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = anyhow::Result<serde_json::Value>> + '_>,
    >,
{
    use crate::airgap::{Event, Progress};
    let progress = parking_lot::Mutex::new(Progress::new(json));
    let show = |e: Event| progress.lock().show(&e);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    let sock = socket_path(&config.cache_dir);
    let mut last: Option<Result<serde_json::Value, String>> = None;
    let via_server = sock.exists()
        && rt.block_on(ask_stream(
            &sock,
            &op,
            &mut |line| match serde_json::from_str::<Event>(line) {
                Ok(Event::Done { report }) => last = Some(Ok(report)),
                Ok(Event::Error { error }) => last = Some(Err(error)),
                Ok(e) => show(e),
                Err(_) => {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                    last = Some(Err(v["error"].as_str().unwrap_or(line).to_owned()));
                }
            },
        ))?;
    if via_server {
        show(Event::Done {
            report: serde_json::Value::Null,
        });
        note(Via::Server);
        return match last {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(anyhow!("{e}")),
            None => Err(anyhow!("the server's stream ended without a result")),
        };
    }
    before_direct()?;
    let r = rt.block_on(async {
        let app = crate::app::App::open(config, Arc::default())
            .map_err(|e| open_failed(config, &sock, e))?;
        let r = direct(app.clone(), &show).await;
        app.mirror.flush()?;
        r
    });
    show(Event::Done {
        report: serde_json::Value::Null,
    });
    r
}

/// `wharf bundle create`.
pub fn bundle_create(
    config: Config,
    req: crate::airgap::CreateRequest,
    json: bool,
) -> anyhow::Result<()> {
    let out = req.out.clone();
    let key = req.sign_key.clone();
    let owner = || {
        let readable: Vec<&Path> = key.iter().map(|k| k.as_path()).collect();
        become_cache_owner(&config.cache_dir, &readable)?;
        // The key's sequence file and the output are written as that user.
        std::fs::create_dir_all(&out)
            .with_context(|| format!("cannot create {} (as the cache's owner)", out.display()))
    };
    let v = bundle_op(
        &config,
        Op::BundleCreate(req.clone()),
        json,
        &owner,
        |app, emit| {
            Box::pin(async move {
                let doc = tokio::task::block_in_place(|| {
                    crate::airgap::create_bundle(&app.mirror, &app.sync, &req, emit)
                })?;
                Ok(
                    serde_json::json!({"id": doc.id, "sequence": doc.sequence, "volumes": doc.volumes.len(), "blobs": doc.blobs.len(), "refs": doc.refs.len()}),
                )
            })
        },
    )?;
    if json {
        println!("{v}");
    } else {
        println!(
            "bundle {} (sequence {}) written to {}: {} refs, {} blobs in {} volume(s)",
            v["id"].as_str().unwrap_or("?"),
            v["sequence"],
            out.display(),
            v["refs"],
            v["blobs"],
            v["volumes"]
        );
    }
    Ok(())
}

/// `wharf bundle import`. As root with no server running, the import runs
/// as the cache directory's owner, so a `DynamicUser` service can read
/// what it wrote.
pub fn bundle_import(
    config: Config,
    req: crate::airgap::ImportRequest,
    json: bool,
) -> anyhow::Result<()> {
    let doc = req.dir.join(crate::bundle::DOC_FILE);
    let owner = || become_cache_owner(&config.cache_dir, &[&doc]);
    let v = bundle_op(
        &config,
        Op::BundleImport(req.clone()),
        json,
        &owner,
        |app, emit| {
            Box::pin(async move {
                let r = app.import(&req, emit).await?;
                Ok(serde_json::to_value(r)?)
            })
        },
    )?;
    if json {
        println!("{v}");
    } else {
        println!(
            "imported bundle {} (sequence {}): {} refs, {} blobs written ({}), {} already here, {} tag(s) moved{}",
            v["bundle"].as_str().unwrap_or("?"),
            v["sequence"],
            v["refs"],
            v["blobs_written"],
            size(v["bytes_written"].as_u64().unwrap_or(0)),
            v["blobs_present"],
            v["tags_moved"],
            match v["unpinned"].as_array() {
                Some(a) if !a.is_empty() => format!(", {} unpinned", a.len()),
                _ => String::new(),
            }
        );
    }
    Ok(())
}

/// `wharf inventory export`: every digest the cache holds, as JSON.
pub fn inventory_export(config: Config, out: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let (v, via) = run(&config, &Op::Inventory)?;
    let text = serde_json::to_string_pretty(&v)? + "\n";
    match out {
        Some(p) => {
            std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
            eprintln!(
                "{}: {} digests",
                p.display(),
                v["blobs"].as_array().map_or(0, Vec::len)
            );
        }
        None => print!("{text}"),
    }
    note(via);
    Ok(())
}

/// Root writing into a cache directory owned by another user (a
/// `DynamicUser` or `wharf` service account) with no server running becomes
/// that user first, so every file and metadata page it writes belongs to the
/// service (sync, bundle create and import). `readable` (a bundle) must
/// then be readable by that user; if not, say so instead of writing files
/// the service cannot read.
fn become_cache_owner(cache_dir: &Path, readable: &[&Path]) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let Ok(meta) = std::fs::metadata(cache_dir) else {
        return Ok(()); // created by this import, as root: root's cache
    };
    let (uid, gid) = (meta.uid(), meta.gid());
    if uid == 0 {
        return Ok(());
    }
    // SAFETY: plain syscalls on integers; on failure nothing changed.
    let ok = unsafe {
        libc::setgroups(0, std::ptr::null()) == 0
            && libc::setgid(gid) == 0
            && libc::setuid(uid) == 0
    };
    if !ok {
        bail!(
            "cannot switch to the cache directory's owner (uid {uid}): {}; refusing to write files the service could not read",
            std::io::Error::last_os_error()
        );
    }
    for probe in readable {
        if let Err(e) = std::fs::File::open(probe) {
            bail!(
                "working as the cache's owner (uid {uid}, like the service), {} is not readable: {e}; make it readable by that user (or copy it somewhere it can read)",
                probe.display()
            );
        }
    }
    eprintln!(
        "(working as uid {uid}, the owner of {})",
        cache_dir.display()
    );
    Ok(())
}
