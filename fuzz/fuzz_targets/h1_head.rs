//! The HTTP/1.1 request head of wharf's plain-text fast path (src/server/h1.rs):
//! httparse with the server's header limit, then `to_request`, the step that
//! turns the parsed head into the `http::Request` every handler sees. This is
//! what `read_head` does with the bytes of a client it has not authenticated.
//! Properties: no panic; a complete head is never longer than the input; a
//! head past `MAX_HEAD` that is still partial is what `read_head` refuses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::server::h1::{to_request, Parsed, MAX_HEAD, MAX_HEADERS};

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(2 * MAX_HEAD)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut headers);
    if let Ok(httparse::Status::Complete(len)) = r.parse(data) {
        assert!(len <= data.len());
        if let Parsed::Request(req, n) = to_request(&r, len) {
            assert_eq!(n, len);
            // What the handler reads next: the path and query, every header.
            let _ = (req.uri().path(), req.uri().query(), req.method().as_str());
            for (name, value) in req.headers() {
                let _ = (name.as_str(), value.to_str());
            }
        }
    }
});
