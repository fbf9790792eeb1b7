//! Manifest and index JSON as upstreams serve it: `registry::manifest`
//! (`references`, `blob_descriptors`: what pins, `ls` and `rm` walk) and
//! `registry::platform` (`index_children`, `select_children`, and platform
//! filters as written in sync rules).
//! Properties: no panic; only valid digests come out; a selection is a
//! subset of the children in index order; `Platform` round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::registry::manifest::{blob_descriptors, references};
use wharf::registry::{index_children, select_children, Digest, Platform};

fn valid(d: &Digest) {
    let again: Digest = d
        .to_string()
        .parse()
        .expect("a digest that came out must parse");
    assert_eq!(&again, d);
}

fuzz_target!(|data: &[u8]| {
    let r = references(data);
    r.manifests.iter().chain(&r.blobs).for_each(valid);
    for (d, _size) in blob_descriptors(data) {
        valid(&d);
    }
    if let Some(children) = index_children(data) {
        let filters: Vec<Platform> = ["linux/amd64", "linux/arm64/v8", "linux/arm/v7"]
            .iter()
            .map(|p| p.parse().expect("valid"))
            .collect();
        for f in [&filters[..0], &filters[..1], &filters[..]] {
            let kept = select_children(&children, f);
            assert!(kept.len() <= children.len());
            let mut pos = 0;
            for k in kept {
                let i = children[pos..]
                    .iter()
                    .position(|c| std::ptr::eq(c, k))
                    .expect("kept entries are children, in order");
                pos += i + 1;
            }
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(p) = s.parse::<Platform>() {
            assert_eq!(p.to_string(), s);
        }
    }
});
