//! The pull API's headers and semantics, checked with a plain HTTP client
//! against a real upstream: what the clients' tests do not pin down exactly.

use crate::harness::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

#[test]
fn headers_ranges_accept_and_routing() {
    let f = Fixture::plain(
        &[
            ("small", "library/test:1"),
            ("small", "library/test:2"),
            ("small", "library/test:3"),
        ],
        "",
    );
    let (up, w) = (&f.up, &f.w);
    let c = http();

    let r = c.get(format!("{}/v2/", w.url())).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );

    // HEAD by tag: the upstream's type, digest and length, no body.
    let want = crate::pull::manifest_digest(&up.url(), "library/test", "1");
    let r = c
        .head(format!("{}/v2/library/test/manifests/1", w.url()))
        .header("accept", DOCKER_MANIFEST)
        .header("accept", OCI_MANIFEST) // a second Accept line, as skopeo sends
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], OCI_MANIFEST);
    assert_eq!(r.headers()["docker-content-digest"], want.as_str());
    let len: usize = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(len > 100);

    // GET: exact upstream bytes.
    let body = c
        .get(format!("{}/v2/library/test/manifests/1", w.url()))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(body.len(), len);
    assert_eq!(wharf::registry::Digest::sha256_of(&body).to_string(), want);

    // A client that accepts only Docker types does not get an OCI manifest.
    let r = c
        .get(format!("{}/v2/library/test/manifests/1", w.url()))
        .header("accept", DOCKER_MANIFEST)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().unwrap().contains("MANIFEST_UNKNOWN"));

    // Routing: one-component names get library/, prefixes work both ways.
    for path in [
        "/v2/test/manifests/1",
        "/v2/hub/library/test/manifests/1",
        "/hub/v2/library/test/manifests/1",
        "/v2/library/test/manifests/1?ns=docker.io",
    ] {
        let r = c.head(format!("{}{path}", w.url())).send().unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(
            r.headers()["docker-content-digest"],
            want.as_str(),
            "{path}"
        );
    }

    // Blob: full, HEAD, ranges on the cached file.
    let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_owned();
    let full = c
        .get(format!("{}/v2/library/test/blobs/{layer}", w.url()))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    let size = full.len();
    let r = c
        .head(format!("{}/v2/library/test/blobs/{layer}", w.url()))
        .send()
        .unwrap();
    assert_eq!(r.headers()["content-length"], size.to_string().as_str());
    assert_eq!(r.headers()["docker-content-digest"], layer.as_str());
    let r = c
        .get(format!("{}/v2/library/test/blobs/{layer}", w.url()))
        .header("range", "bytes=10-19")
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 10-19/{size}").as_str()
    );
    assert_eq!(&r.bytes().unwrap()[..], &full[10..20]);
    let r = c
        .get(format!("{}/v2/library/test/blobs/{layer}", w.url()))
        .header("range", "bytes=-7")
        .send()
        .unwrap();
    assert_eq!(&r.bytes().unwrap()[..], &full[size - 7..]);
    let r = c
        .get(format!("{}/v2/library/test/blobs/{layer}", w.url()))
        .header("range", format!("bytes={size}-"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{size}").as_str()
    );
}

/// `tags/list` as the spec says (lexical order, `n`, `last`, `Link`),
/// whatever the upstream did: distribution 2.8 ignores `n` and `last`.
#[test]
fn tags_list_is_sorted_and_paged_whatever_the_upstream_does() {
    let tags = ["3", "b", "1", "10", "a", "2"];
    let pushes: Vec<(&str, String)> = tags
        .iter()
        .map(|t| ("small", format!("library/test:{t}")))
        .collect();
    let pushes: Vec<(&str, &str)> = pushes.iter().map(|(i, d)| (*i, d.as_str())).collect();
    let f = Fixture::plain(&pushes, "");
    let (up, w) = (&f.up, &f.w);
    let c = http();
    let page = |q: &str| {
        let r = c
            .get(format!("{}/v2/library/test/tags/list{q}", w.url()))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{q}");
        let link = r
            .headers()
            .get("link")
            .map(|l| l.to_str().unwrap().to_owned());
        let v: serde_json::Value = r.json().unwrap();
        assert_eq!(v["name"], "library/test");
        let got: Vec<String> = v["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect();
        (got, link)
    };
    // The full list: every tag the upstream has, sorted.
    let direct: serde_json::Value = c
        .get(format!("{}/v2/library/test/tags/list?n=2", up.url()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        direct["tags"].as_array().unwrap().len(),
        6,
        "the upstream ignores n: {direct}"
    );
    let (all, link) = page("");
    assert_eq!(all, ["1", "10", "2", "3", "a", "b"]);
    assert_eq!(link, None);
    // n=2: exactly two, and a Link to the next page on wharf.
    let (first, link) = page("?n=2");
    assert_eq!(first, ["1", "10"]);
    let link = link.expect("more remain: a Link");
    assert_eq!(
        link,
        "</v2/library/test/tags/list?n=2&last=10>; rel=\"next\""
    );
    // Following the Link gives the next two.
    let next = link
        .trim_start_matches("</v2/library/test/tags/list")
        .split('>')
        .next()
        .unwrap();
    let (second, link) = page(next);
    assert_eq!(second, ["2", "3"]);
    assert!(link.is_some_and(|l| l.contains("last=3")));
    // The last page: no Link.
    let (last, link) = page("?n=2&last=3");
    assert_eq!(last, ["a", "b"]);
    assert_eq!(link, None);
    // `last` need not be a tag; past the end is an empty page.
    assert_eq!(page("?n=2&last=1z").0, ["2", "3"]);
    assert_eq!(page("?last=b"), (vec![], None));
}

#[test]
fn a_moved_tag_is_noticed_after_its_ttl_and_heads_do_not_refetch() {
    let f = Fixture::plain(&[("small", "library/test:moving")], "tag_ttl = \"0s\"");
    let (up, w) = (&f.up, &f.w);
    let c = http();
    let url = format!("{}/v2/library/test/manifests/moving", w.url());
    let first = c.get(&url).send().unwrap();
    let d1 = first.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned();
    // Unchanged tag: revalidated with a HEAD, the body is not fetched again.
    c.get(&url).send().unwrap();
    assert_eq!(up.gets("/v2/library/test/manifests/moving"), 1);
    // The tag moves upstream: the next request sees the new digest.
    up.push("large", "library/test:moving", None, false);
    let d2 = c.get(&url).send().unwrap().headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(d1, d2);
    assert_eq!(
        d2,
        crate::pull::manifest_digest(&up.url(), "library/test", "moving")
    );
}
