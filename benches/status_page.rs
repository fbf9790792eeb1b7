//! The status page with a large cache: how long each view takes to gather
//! and render server-side with 100,000 cached blobs (5,000 images of a
//! manifest, a config and 23 layers of which 5 are shared, in 1,000
//! repositories of 5 tags on two upstreams, with 125 multi-platform indexes
//! and 63 pins; every blob linked to its repository, as a pull through wharf
//! links it), and how long the catalog the views read takes to build.
//!
//! `cargo bench --bench status_page`: 100,000 blobs unless WHARF_BENCH_BLOBS
//! says otherwise; with WHARF_BENCH_KEEP set (to anything) the cache is kept
//! for `benches/status_rss.py` and its path printed. Fails if a view's p99 is
//! 50 ms or more. Figures: README, "The status page".

use std::sync::Arc;
use std::time::{Duration, Instant};

use wharf::app::App;
use wharf::cache::{BlobRecord, BlobStore, Metadata, PinRecord, SledKv};
use wharf::config::Config;
use wharf::registry::{Digest, MediaType};

const LAYERS: usize = 23;
/// Of those, shared by every image (a base image's).
const SHARED: usize = 5;
const IMAGE_MT: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_MT: &str = "application/vnd.oci.image.index.v1+json";

fn put(store: &BlobStore, meta: &Metadata, body: &[u8], rec: BlobRecord) -> Digest {
    let d = Digest::sha256_of(body);
    let p = store.path(&d);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, body).unwrap();
    meta.put_blob(&d, &rec).unwrap();
    d
}

/// Writes `images` images as files and records; returns the blob count.
fn populate(dir: &std::path::Path, images: usize) -> usize {
    let store = BlobStore::open(dir).unwrap();
    let meta = Metadata::new(Box::new(SledKv::open(&dir.join("meta")).unwrap())).unwrap();
    let image_mt: MediaType = IMAGE_MT.parse().unwrap();
    let index_mt: MediaType = INDEX_MT.parse().unwrap();
    let mut blobs = 0;
    let mut last: Option<(Digest, Digest)> = None;
    for i in 0..images {
        let (up, repo) = (
            if i % 2 == 0 { "hub" } else { "gar" },
            format!("team-{}/service-{}", (i / 10) % 37, i / 10),
        );
        let desc = |d: &Digest, size: usize| {
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": d.to_string(), "size": size})
        };
        let mut layers = Vec::new();
        // What a pull through wharf links to the repository: every blob it
        // filled there (the shared ones too), and the manifest.
        let mut links = Vec::new();
        for l in 0..LAYERS {
            // Every image shares its first 5 layers with the others (a base
            // image); the rest are its own.
            let body = if l < SHARED {
                format!("base layer {l}")
            } else {
                format!("layer {l} of image {i}")
            };
            let d = put(
                &store,
                &meta,
                body.as_bytes(),
                BlobRecord::blob(body.len() as u64, i as u64),
            );
            blobs += usize::from(l >= SHARED || i == 0);
            links.push(d.clone());
            layers.push(desc(&d, body.len()));
        }
        let config = format!("{{\"config\":{{}},\"image\":{i}}}");
        let cd = put(
            &store,
            &meta,
            config.as_bytes(),
            BlobRecord::blob(config.len() as u64, 1),
        );
        blobs += 1;
        links.push(cd.clone());
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": IMAGE_MT,
            "config": desc(&cd, config.len()), "layers": layers}))
        .unwrap();
        let md = put(
            &store,
            &meta,
            &manifest,
            BlobRecord::manifest(manifest.len() as u64, IMAGE_MT, i as u64),
        );
        blobs += 1;
        let repo_name = repo.parse().unwrap();
        let tag = format!("v{}", i % 10);
        meta.put_tag(up, &repo_name, &tag.parse().unwrap(), &md, &image_mt, 1)
            .unwrap();
        meta.link(up, &repo_name, &md).unwrap();
        for d in &links {
            meta.link(up, &repo_name, d).unwrap();
        }
        // Every 40th image: an index over it and the previous one.
        if let Some((prev, _)) = last.filter(|_| i % 40 == 0) {
            let index = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2, "mediaType": INDEX_MT, "manifests": [
                    {"mediaType": IMAGE_MT, "digest": md.to_string(), "size": manifest.len(),
                     "platform": {"os": "linux", "architecture": "amd64"}},
                    {"mediaType": IMAGE_MT, "digest": prev.to_string(), "size": 1,
                     "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}]}))
            .unwrap();
            let xd = put(
                &store,
                &meta,
                &index,
                BlobRecord::manifest(index.len() as u64, INDEX_MT, i as u64),
            );
            blobs += 1;
            meta.put_tag(up, &repo_name, &"multi".parse().unwrap(), &xd, &index_mt, 1)
                .unwrap();
        }
        if i % 80 == 0 {
            meta.add_pin(
                &format!("{up}/{repo}:{tag}"),
                &PinRecord {
                    added: 1,
                    source: None,
                },
            )
            .unwrap();
        }
        last = Some((md, cd));
    }
    meta.flush().unwrap();
    blobs
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let blobs_wanted: usize = std::env::var("WHARF_BENCH_BLOBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path().join("cache");
    let started = Instant::now();
    // Each image adds its own layers, a config and a manifest.
    let blobs = populate(&dir, blobs_wanted / (LAYERS - SHARED + 2));
    println!(
        "created {blobs} blobs in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:1\"\nplain_http = true\n[cache]\ndir = {:?}\n\
         [[upstream]]\nname = \"hub\"\nurl = \"http://127.0.0.1:9\"\noffline = true\n\
         [[upstream]]\nname = \"gar\"\nurl = \"http://127.0.0.1:9\"\noffline = true\n",
        dir
    );
    let config = Config::from_toml(&toml, None).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let meta = Metadata::new(Box::new(SledKv::open(&dir.join("meta")).unwrap())).unwrap();
    let app: Arc<App> = App::with_parts(&config, &dir, meta, Arc::default()).unwrap();
    let rss_before = rss_kib();

    let t = Instant::now();
    let catalog = app.mirror.cache().catalog().unwrap();
    println!(
        "catalog: {} images in {} repositories, built in {:.0} ms ({} blobs, {} bytes)",
        catalog.totals.images,
        catalog.totals.repositories,
        t.elapsed().as_secs_f64() * 1000.0,
        catalog.totals.blobs,
        catalog.totals.bytes
    );
    println!("catalog: {} bytes on the heap", catalog.heap_bytes());
    let some = catalog.repos().nth(catalog.repos().len() / 2).unwrap();
    let (up, repo, digest) = (
        some.upstream().to_owned(),
        some.repository().to_owned(),
        some.images().next().unwrap().digest().to_owned(),
    );
    drop(catalog);
    let rss_catalog = rss_kib();

    let views: Vec<(&str, &str, &str, usize)> = vec![
        ("overview", "overview", "", 1),
        ("upstreams", "upstreams", "", 1),
        ("images p1", "images", "", 1),
        ("images p8", "images", "", 8),
        ("images q=service-12", "images", "service-12", 1),
        ("image detail", "image", "", 1),
        ("sync", "sync", "", 1),
        ("problems", "problems", "", 1),
    ];
    let mut worst = Duration::ZERO;
    println!(
        "{:<22} {:>5} {:>10} {:>10} {:>10} {:>9}",
        "view", "as", "median", "p99", "max", "bytes"
    );
    for (label, view, q, page) in &views {
        for api in [false, true] {
            let mut times = Vec::with_capacity(1000);
            let mut size = 0;
            for _ in 0..1000 {
                let t = Instant::now();
                let (status, text) =
                    wharf::status::render(&app, view, api, q, *page, &up, &repo, &digest).unwrap();
                times.push(t.elapsed());
                assert_eq!(status, 200, "{label}");
                size = text.len();
            }
            times.sort();
            let (median, p99, max) = (times[500], times[989], times[999]);
            worst = worst.max(p99);
            println!(
                "{label:<22} {:>5} {:>8.2}ms {:>8.2}ms {:>8.2}ms {size:>9}",
                if api { "json" } else { "html" },
                median.as_secs_f64() * 1000.0,
                p99.as_secs_f64() * 1000.0,
                max.as_secs_f64() * 1000.0
            );
        }
    }
    let rss_after = rss_kib();
    println!(
        "RSS: {:.1} MiB before the catalog, {:.1} MiB with it, {:.1} MiB after 16,000 renders",
        rss_before as f64 / 1024.0,
        rss_catalog as f64 / 1024.0,
        rss_after as f64 / 1024.0
    );
    if std::env::var_os("WHARF_BENCH_KEEP").is_some() {
        drop(app);
        let kept = tmp.keep();
        println!("cache kept in {}", kept.join("cache").display());
    }
    assert!(
        worst < Duration::from_millis(50),
        "a view's p99 was {worst:?}, not under 50 ms"
    );
}
