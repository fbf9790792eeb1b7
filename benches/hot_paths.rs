//! Micro-benchmarks of wharf's hot paths (divan): `cargo bench --bench hot_paths`.
//!
//! Figures from this machine (2 cores, release build, 2026-11-23; medians
//! as divan prints them), to notice a regression by:
//!
//! - `digest_verify` (sha256 through wharf's `Hasher`, 1 MiB updates, the way
//!   a fill hashes upstream bytes): 0.67 ms per MiB, 1.57 GB/s (SHA-NI).
//!   A 512 MiB layer costs ~0.34 s of one core, once per fill.
//! - `endpoint_parse` (a blob path with `?ns=`): 0.63 µs.
//! - `metadata` over sled with 10,000 blobs and links, warm: `get_tag`
//!   0.62 µs, `get_blob` 0.57 µs, `is_linked` 0.51 µs.
//! - `manifest_hit` (`Mirror::manifest` by tag within its TTL: tag record,
//!   blob record, link, the manifest file read and the Accept check): 8.7 µs,
//!   most of it the file read (open, read, close). benches/compare.py
//!   measures the same path over HTTP at ~26,000 requests/s with wrk.
//!
//! The manifest path needs no upstream: the cache is seeded directly.

use std::hint::black_box;

use wharf::cache::{BlobRecord, BlobStore, Metadata, SledKv};
use wharf::config::Config;
use wharf::mirror::Mirror;
use wharf::registry::{
    Accept, Algorithm, Digest, Endpoint, Hasher, MediaType, Reference, RepoName, Tag,
};

fn main() {
    divan::main();
}

#[divan::bench(args = [1 << 20])]
fn digest_verify(bencher: divan::Bencher, len: usize) {
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    bencher
        .counter(divan::counter::BytesCount::new(len))
        .bench(|| {
            let mut h = Hasher::new(Algorithm::Sha256);
            h.update(black_box(&data));
            h.finish()
        });
}

const PATH: &str = "/v2/library/ubuntu/blobs/sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4";

#[divan::bench]
fn endpoint_parse() -> Option<Endpoint> {
    Endpoint::parse(black_box(PATH), black_box(Some("ns=docker.io"))).unwrap()
}

/// A cache with one manifest tagged `library/app:1`, and the mirror over it.
struct Seeded {
    _dir: tempfile::TempDir,
    mirror: Mirror,
    digest: Digest,
}

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

fn seeded() -> Seeded {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml(
        &format!(
            "[server]\nplain_http = true\n[cache]\ndir = \"{}\"\ntag_ttl = \"1h\"\n\
             [[upstream]]\nname = \"hub\"\nurl = \"http://127.0.0.1:9\"\ndefault = true\n",
            dir.path().display()
        ),
        None,
    )
    .unwrap();
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{MANIFEST_TYPE}\",\"config\":{{}},\"layers\":[{}]}}",
        ["{\"digest\":\"sha256:00\",\"size\":1}"; 8].join(",")
    );
    let digest = Digest::sha256_of(manifest.as_bytes());
    let store = BlobStore::open(dir.path()).unwrap();
    store.put_verified(&digest, manifest.as_bytes()).unwrap();
    let meta = Metadata::new(Box::new(SledKv::open(&dir.path().join("meta")).unwrap())).unwrap();
    let repo: RepoName = "library/app".parse().unwrap();
    let tag: Tag = "1".parse().unwrap();
    let mt: MediaType = MANIFEST_TYPE.parse().unwrap();
    let now = wharf::cache::now_secs();
    meta.put_blob(
        &digest,
        // Access times are milliseconds (metadata schema 2).
        &BlobRecord::manifest(manifest.len() as u64, MANIFEST_TYPE, now * 1000),
    )
    .unwrap();
    meta.link("hub", &repo, &digest).unwrap();
    meta.put_tag("hub", &repo, &tag, &digest, &mt, now).unwrap();
    let mirror = Mirror::with_parts(&config, dir.path(), meta, Default::default()).unwrap();
    Seeded {
        _dir: dir,
        mirror,
        digest,
    }
}

#[divan::bench]
fn manifest_hit(bencher: divan::Bencher) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(async { seeded() });
    let ep = Endpoint::parse("/v2/library/app/manifests/1", None)
        .unwrap()
        .unwrap();
    let repo: RepoName = "library/app".parse().unwrap();
    let routed = s.mirror.route(&ep, &repo).unwrap();
    let reference = Reference::Tag("1".parse().unwrap());
    let accept = Accept::parse([MANIFEST_TYPE]);
    bencher.bench_local(|| {
        let m = rt
            .block_on(s.mirror.manifest(&routed, &reference, &accept))
            .unwrap();
        assert_eq!(m.digest, s.digest);
        m
    });
}

mod metadata {
    use super::*;

    #[divan::bench]
    fn get_tag(bencher: divan::Bencher) {
        let s = seeded_meta();
        let (repo, tag): (RepoName, Tag) = ("library/app".parse().unwrap(), "1".parse().unwrap());
        bencher.bench_local(|| s.1.get_tag("hub", &repo, &tag).unwrap().unwrap());
    }

    #[divan::bench]
    fn get_blob(bencher: divan::Bencher) {
        let s = seeded_meta();
        bencher.bench_local(|| s.1.get_blob(&s.2).unwrap().unwrap());
    }

    #[divan::bench]
    fn is_linked(bencher: divan::Bencher) {
        let s = seeded_meta();
        let repo: RepoName = "library/app".parse().unwrap();
        bencher.bench_local(|| assert!(s.1.is_linked("hub", &repo, &s.2).unwrap()));
    }

    /// Sled metadata with 10,000 blobs, 10,000 links and one tag.
    fn seeded_meta() -> (tempfile::TempDir, Metadata, Digest) {
        let dir = tempfile::tempdir().unwrap();
        let meta =
            Metadata::new(Box::new(SledKv::open(&dir.path().join("meta")).unwrap())).unwrap();
        let repo: RepoName = "library/app".parse().unwrap();
        let mut last = None;
        for i in 0..10_000u32 {
            let d = Digest::sha256_of(&i.to_le_bytes());
            let rec = BlobRecord::blob(1 << 20, 0);
            meta.put_blob(&d, &rec).unwrap();
            meta.link("hub", &repo, &d).unwrap();
            last = Some(d);
        }
        let d = last.unwrap();
        let mt: MediaType = MANIFEST_TYPE.parse().unwrap();
        meta.put_tag("hub", &repo, &"1".parse().unwrap(), &d, &mt, 0)
            .unwrap();
        (dir, meta, d)
    }
}
