//! `registry::Accept::parse` over a client's `Accept` header lines (one per
//! line of input), and `MediaType`, which upstream `Content-Type`s and
//! descriptors are parsed into.
//! Properties: no panic; merged types are unique; a media type's `Display`
//! parses back to itself; a client that accepts a type's exact essence is
//! allowed it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::registry::{Accept, MediaType};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let accept = Accept::parse(s.split('\n'));
    let types = accept.types();
    for (i, t) in types.iter().enumerate() {
        assert!(!types[..i].contains(t), "duplicate {t:?}");
    }
    if let Ok(mt) = s.parse::<MediaType>() {
        let _ = accept.allows(&mt);
        let again: MediaType = mt.to_string().parse().expect("Display output must parse");
        assert_eq!(again, mt);
        assert!(Accept::parse([mt.essence().as_str()]).allows(&mt));
    }
});
