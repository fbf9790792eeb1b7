//! The object-store primitives the shared tier's lease and fills rely on,
//! proven against a real distributed store ([`SeaweedFs`]): a create-only
//! PUT (`If-None-Match: *`) has one winner under a race, so does an update
//! by ETag (`If-Match`); multipart uploads, range reads and HEAD behave as
//! S3's; replication keeps every object readable with a volume server
//! killed. Each test starts its own store (nextest runs every test in its
//! own process, so one store cannot be shared): the checks are folded into
//! two tests to keep to two starts.

use std::time::{Duration, Instant};

use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, UpdateVersion, WriteMultipart,
};

use crate::harness::{eventually, random_hex, runtime, SeaweedFs};

/// Writers in each race: as many as wharf nodes missing one layer at once in
/// a small fleet; enough that a store checking before writing (the race of
/// seaweedfs#8800) lets several through.
const RACERS: usize = 16;

/// `RACERS` writers, each with its own client (its own connections, as
/// separate nodes have), released together by a barrier, each PUTting its
/// own body to `key` with `mode`. Returns each writer's body and result.
/// SeaweedFS serialises conditional writes on a lock it polls about once a
/// second: the last loser of 16 hears its 412 after some 5 s (printed).
fn race(
    fs: &SeaweedFs,
    rt: &tokio::runtime::Runtime,
    key: &str,
    mode: PutMode,
) -> Vec<(Vec<u8>, object_store::Result<object_store::PutResult>)> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(RACERS));
    let tasks: Vec<_> = (0..RACERS)
        .map(|i| {
            let store = fs.store();
            let barrier = barrier.clone();
            let path = Path::from(key);
            let body = format!("writer {i} of {key}: {}", random_hex(8)).into_bytes();
            let opts = PutOptions::from(mode.clone());
            rt.spawn(async move {
                barrier.wait().await;
                let started = Instant::now();
                let r = store.put_opts(&path, body.clone().into(), opts).await;
                (body, r, started.elapsed())
            })
        })
        .collect();
    let (out, slowest) = rt.block_on(async {
        let mut out = Vec::new();
        let mut slowest = Duration::ZERO;
        for t in tasks {
            let (body, r, took) = t.await.unwrap();
            slowest = slowest.max(took);
            out.push((body, r));
        }
        (out, slowest)
    });
    eprintln!("{key}: {RACERS} conditional PUTs answered within {slowest:?}");
    out
}

/// The one writer that succeeded; panics unless exactly one did and every
/// other was refused by its precondition (not failed some other way).
fn only_winner(
    key: &str,
    results: Vec<(Vec<u8>, object_store::Result<object_store::PutResult>)>,
) -> (Vec<u8>, object_store::PutResult) {
    let mut winners = Vec::new();
    for (body, r) in results {
        match r {
            Ok(put) => winners.push((body, put)),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {}
            Err(e) => panic!("{key}: a racer failed otherwise than by its precondition: {e}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "{key}: {} of {RACERS} conditional PUTs succeeded",
        winners.len()
    );
    winners.pop().unwrap()
}

fn read(
    rt: &tokio::runtime::Runtime,
    store: &AmazonS3,
    key: &str,
) -> object_store::Result<Vec<u8>> {
    rt.block_on(async { Ok(store.get(&Path::from(key)).await?.bytes().await?.to_vec()) })
}

#[test]
fn store_creates_and_updates_an_object_only_once_under_a_race() {
    let fs = SeaweedFs::start();
    let rt = runtime();
    let store = fs.store();

    // A client set up as wharf's config will set it up (endpoint, bucket,
    // key files of mode 0600) reads what the harness wrote.
    let creds = tempfile::tempdir().unwrap();
    let (id_file, secret_file) = fs.write_credentials(creds.path());
    for f in [&id_file, &secret_file] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    assert_eq!(
        std::fs::read_to_string(&id_file).unwrap(),
        fs.access_key_id()
    );
    let from_files = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(fs.endpoint())
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_bucket_name(fs.bucket())
        .with_access_key_id(std::fs::read_to_string(&id_file).unwrap())
        .with_secret_access_key(std::fs::read_to_string(&secret_file).unwrap())
        .build()
        .unwrap();
    fs.put("probe/from-files", b"configured");
    assert_eq!(
        read(&rt, &from_files, "probe/from-files").unwrap(),
        b"configured"
    );
    let wrong = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(fs.endpoint())
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_bucket_name(fs.bucket())
        .with_access_key_id(fs.access_key_id())
        .with_secret_access_key(random_hex(20))
        .with_retry(object_store::RetryConfig {
            max_retries: 0,
            ..Default::default()
        })
        .build()
        .unwrap();
    let denied = read(&rt, &wrong, "probe/from-files");
    assert!(denied.is_err(), "a wrong secret was let in");
    assert!(
        !format!("{denied:?}").contains(fs.secret_access_key()),
        "an S3 error shows the secret"
    );

    // Create-only: the lease object's acquisition.
    for n in 0..5 {
        let key = format!("leases/create-{n}-{}", random_hex(4));
        let (body, put) = only_winner(&key, race(&fs, &rt, &key, PutMode::Create));
        assert_eq!(
            read(&rt, &store, &key).unwrap(),
            body,
            "{key} holds the winner's bytes"
        );
        assert!(put.e_tag.is_some(), "{key}: a create answers its ETag");
    }

    // Update by ETag: a lease renewed, or taken over once it expired.
    let key = format!("leases/update-{}", random_hex(4));
    fs.put(&key, b"first holder");
    let old = rt.block_on(store.head(&Path::from(key.as_str()))).unwrap();
    let e_tag = old.e_tag.clone().expect("HEAD answers an ETag");
    let update = PutMode::Update(UpdateVersion {
        e_tag: Some(e_tag.clone()),
        version: None,
    });
    let (body, put) = only_winner(&key, race(&fs, &rt, &key, update.clone()));
    assert_eq!(
        read(&rt, &store, &key).unwrap(),
        body,
        "{key} holds the winner's bytes"
    );
    assert_ne!(put.e_tag.as_deref(), Some(e_tag.as_str()), "a new ETag");

    // The loser's stale ETag stays refused afterwards, and an update never
    // creates: both are preconditions failing, not writes.
    let stale = rt.block_on(store.put_opts(
        &Path::from(key.as_str()),
        b"stale".to_vec().into(),
        update.into(),
    ));
    assert!(
        matches!(stale, Err(object_store::Error::Precondition { .. })),
        "an update with a stale ETag: {stale:?}"
    );
    let missing = format!("leases/never-{}", random_hex(4));
    let ghost = rt.block_on(
        store.put_opts(
            &Path::from(missing.as_str()),
            b"ghost".to_vec().into(),
            PutMode::Update(UpdateVersion {
                e_tag: Some(e_tag),
                version: None,
            })
            .into(),
        ),
    );
    assert!(ghost.is_err(), "an update of a missing key: {ghost:?}");
    assert_eq!(fs.head(&missing), None, "an update created {missing}");
    assert!(
        !fs.logs_mention(fs.secret_access_key()),
        "SeaweedFS logged the secret"
    );
}

#[test]
fn store_reads_ranges_and_multipart_uploads_and_survives_a_killed_volume_server() {
    let mut fs = SeaweedFs::start();
    let rt = runtime();
    let store = fs.store();

    // 24 MiB in three 8 MiB parts, as the tier uploads a layer.
    let big: Vec<u8> = pseudo_random(24 << 20, 16);
    let big_key = format!("blobs/big-{}", random_hex(4));
    let path = Path::from(big_key.as_str());
    let done = rt.block_on(async {
        let upload = store.put_multipart(&path).await.unwrap();
        let mut w = WriteMultipart::new_with_chunk_size(upload, 8 << 20);
        w.write(&big);
        w.finish().await.unwrap()
    });
    eprintln!("multipart ETag: {:?}", done.e_tag);
    assert_eq!(fs.head(&big_key), Some(big.len() as u64));
    assert!(
        read(&rt, &store, &big_key).unwrap() == big,
        "multipart object differs"
    );
    // Across the first part boundary (8 MiB), and the last byte.
    for range in [(8 << 20) - 1000..(8 << 20) + 5000, (24 << 20) - 1..24 << 20] {
        let got = rt.block_on(store.get_range(&path, range.clone())).unwrap();
        assert!(
            got[..] == big[range.start as usize..range.end as usize],
            "range {range:?}"
        );
    }

    let never = Path::from(format!("blobs/never-{}", random_hex(4)));
    for what in ["head", "get"] {
        let r = rt.block_on(async {
            match what {
                "head" => store.head(&never).await.map(drop),
                _ => store.get(&never).await.map(drop),
            }
        });
        assert!(
            matches!(r, Err(object_store::Error::NotFound { .. })),
            "{what} of a key never written: {r:?}"
        );
    }

    // Ten objects of different sizes, then the volume server holding the
    // most data is killed: with replication 001 every object has another
    // copy, and every one still reads back identical.
    let objects: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| {
            let key = format!("blobs/o{i}-{}", random_hex(4));
            (key, pseudo_random(1000 + i * 150_000, i as u64))
        })
        .collect();
    for (k, v) in &objects {
        fs.put(k, v);
    }
    let victim = (0..3).max_by_key(|&i| fs.volume_bytes(i)).unwrap();
    fs.kill_volume(victim);
    let all = objects
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .chain([(big_key.as_str(), big.as_slice())]);
    for (key, want) in all {
        let first = read(&rt, &store, key);
        if let Err(e) = &first {
            eprintln!("{key} right after the kill: {e}");
        }
        let got = eventually(Duration::from_secs(60), &format!("{key} readable"), || {
            read(&rt, &store, key).ok()
        });
        assert!(
            got == want,
            "{key} differs after volume server {victim} died"
        );
    }
    eprintln!(
        "after the kill: {} MiB RSS, listing blobs/: {} objects",
        fs.rss_bytes() >> 20,
        fs.list("blobs").len()
    );
}

/// `len` bytes of a xorshift stream seeded with `seed` (incompressible, and
/// different for each seed).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
