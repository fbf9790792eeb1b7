//! Start-up time of a large cache: how long `Cache::open` (sled open, the
//! directory walk and the metadata scan of reconciliation, the usage count)
//! takes with 100,000 cached blobs, warm and with the page cache dropped.
//!
//! `cargo bench --bench cache_open` (as root for the cold figure; set
//! WHARF_BENCH_BLOBS for another count). Measured 2026-11-23 on the 2-core
//! machine: see README "Cache start-up".

use std::sync::Arc;
use std::time::Instant;

use wharf::cache::{BlobRecord, BlobStore, Cache, CacheSettings, Metadata, SledKv};
use wharf::registry::Digest;

fn open(dir: &std::path::Path) -> (f64, u64) {
    let started = Instant::now();
    let meta = Metadata::new(Box::new(SledKv::open(&dir.join("meta")).unwrap())).unwrap();
    let (cache, report) =
        Cache::open(dir, meta, &CacheSettings::default(), Arc::default()).unwrap();
    let took = started.elapsed().as_secs_f64();
    assert_eq!(report.files_removed + report.records_removed, 0);
    (took, cache.bytes())
}

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let n: usize = std::env::var("WHARF_BENCH_BLOBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path();
    let started = Instant::now();
    {
        let store = BlobStore::open(dir).unwrap();
        let meta = Metadata::new(Box::new(SledKv::open(&dir.join("meta")).unwrap())).unwrap();
        for i in 0..n {
            let body = format!("blob {i}");
            let d = Digest::sha256_of(body.as_bytes());
            let p = store.path(&d);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, body.as_bytes()).unwrap();
            meta.put_blob(&d, &BlobRecord::blob(body.len() as u64, i as u64))
                .unwrap();
        }
        meta.flush().unwrap();
    }
    println!(
        "created {n} blobs in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (warm, usage) = open(dir);
    println!("open, page cache warm: {warm:.2} s ({usage} bytes counted)");
    let dropped = std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok();
    if dropped {
        let (cold, _) = open(dir);
        println!("open, page cache dropped: {cold:.2} s");
    } else {
        println!("open, page cache dropped: not measured (needs root)");
    }
    println!("peak RSS of this process: {:.1} MiB", rss_mib());
    if std::env::var_os("WHARF_BENCH_KEEP").is_some() {
        let kept = tmp.keep();
        println!("cache kept in {}", kept.display());
    }
}
