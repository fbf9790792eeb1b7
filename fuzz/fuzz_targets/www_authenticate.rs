//! `upstream::parse_challenge`: the `WWW-Authenticate` value an upstream (or
//! anything that answers in its name) sends back on a 401, and the JSON body
//! of its token response.
//! Properties: no panic; a Bearer challenge always has its realm; whatever
//! `expires_in` says (huge, negative, not a number), a token becomes one
//! without overflowing the clock (issue 14, item 12).
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
        let _ = (t.token.is_some(), t.access_token.is_some());
        let _ = t.into_token(std::time::Instant::now().into());
    }
});
