//! `upstream::parse_challenge`: the `WWW-Authenticate` value an upstream (or
//! anything that answers in its name) sends back on a 401, and the JSON body
//! of its token response.
//! Properties: no panic; a Bearer challenge always has its realm.
//! (`TokenResponse::into_token` is left out until issue 14's clamp of a huge
//! `expires_in` lands: it panics today, item 12, and is fixed on its own.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::upstream::{parse_challenge, Challenge, TokenResponse};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        match parse_challenge(s) {
            Some(Challenge::Bearer { realm, .. }) => {
                let _ = realm.len();
            }
            Some(Challenge::Basic) | None => {}
        }
    }
    if let Ok(t) = serde_json::from_slice::<TokenResponse>(data) {
        let _ = (t.token.is_some(), t.access_token.is_some(), t.expires_in);
    }
});
