//! `registry::Endpoint::parse`, the first thing done with every request path
//! and query (anonymous clients included), and the protocol words it is made
//! of. Input: `path[?query]`, as the request line carries it.
//! Properties: no panic; a parsed endpoint's route, written back as a path,
//! parses to the same route (unless writing it back made it longer than
//! `Endpoint::MAX_PATH`: `/v2` is written as `/v2/`); `Digest`, `RepoName`, `Tag` and `Reference`
//! round-trip through `Display`/`FromStr` unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::registry::{Digest, Endpoint, Reference, RepoName, Route, Tag};

fn round_trip<T>(s: &str)
where
    T: std::str::FromStr + std::fmt::Display + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = s.parse::<T>() {
        let text = v.to_string();
        assert_eq!(text, s, "Display must give back the accepted text");
        let again: T = text.parse().ok().expect("Display output must parse");
        assert_eq!(again, v);
    }
}

/// The request path that addresses `route` (under `prefix` when given).
fn path_of(route: &Route, prefix: Option<&str>) -> String {
    let rest = match route {
        Route::Base => String::new(),
        Route::Catalog => "_catalog".into(),
        Route::Manifest { name, reference } => format!("{name}/manifests/{reference}"),
        Route::Blob { name, digest } => format!("{name}/blobs/{digest}"),
        Route::TagsList { name } => format!("{name}/tags/list"),
        Route::Upload => return String::new(),
    };
    match prefix {
        Some(p) => format!("/{p}/v2/{rest}"),
        None => format!("/v2/{rest}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    round_trip::<Digest>(s);
    round_trip::<RepoName>(s);
    round_trip::<Tag>(s);
    round_trip::<Reference>(s);

    let (path, query) = match s.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (s, None),
    };
    if let Ok(Some(ep)) = Endpoint::parse(path, query) {
        let _ = (ep.route.label(), ep.route.kind().object(), ep.route.name());
        let again = path_of(&ep.route, ep.path_prefix.as_deref());
        if ep.route != Route::Upload && again.len() <= Endpoint::MAX_PATH {
            let back = Endpoint::parse(&again, None)
                .unwrap_or_else(|e| panic!("{again:?} from {s:?} no longer parses: {e}"))
                .unwrap_or_else(|| panic!("{again:?} from {s:?} is no OCI path"));
            assert_eq!(back.route, ep.route, "{again:?} from {s:?}");
            assert_eq!(back.path_prefix, ep.path_prefix);
        }
    }
});
