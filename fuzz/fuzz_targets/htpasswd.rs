//! The operator's access files, re-read whenever they change:
//! `access::Htpasswd::parse` (htpasswd, bcrypt only) and
//! `access::TokenList::parse` (`name:token` lines).
//! Properties: no panic; every user the parser keeps has a bcrypt hash; a
//! token file's own tokens look up to their names.
//! Seeds (fuzz/corpus/htpasswd/) are made-up entries: no real password,
//! hash or token is in them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::access::{Htpasswd, TokenList};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(h) = Htpasswd::parse(s) {
            for line in s.lines() {
                if let Some((user, _)) = line.trim().split_once(':') {
                    if let Some(hash) = h.hash(user) {
                        assert!(hash.starts_with("$2"), "{user}: {hash:?} is no bcrypt hash");
                    }
                }
            }
        }
    }
    if let Ok(list) = TokenList::parse(data) {
        let text = std::str::from_utf8(data).expect("a parsed token file is UTF-8");
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (_, token) = line.split_once(':').expect("parsed lines are name:token");
            assert!(list.lookup(token).is_some(), "token of {line:?} not found");
        }
    }
});
