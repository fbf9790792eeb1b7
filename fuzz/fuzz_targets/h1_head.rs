//! The HTTP/1.1 request head of wharf's plain-text fast path (src/server/h1.rs):
//! `parse_head`, what `read_head` does with the bytes of a client it has not
//! authenticated: httparse with the server's header limit, the refusals of
//! bare LF and ambiguous lengths (RFC 9112 §2.2, §6.3), then the
//! `http::Request` every handler sees.
//! Properties: no panic; a complete head is never longer than the input; a
//! head with a bare LF or two different `Content-Length`s is never a request;
//! a buffer of `MAX_HEAD` bytes always gets an answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::server::h1::{parse_head, Head, MAX_HEAD};

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(2 * MAX_HEAD)];
    match parse_head(data) {
        Some(Head::Request(req, n)) => {
            assert!(n <= data.len());
            let head = &data[..n];
            assert!(
                !head
                    .iter()
                    .enumerate()
                    .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r')),
                "a head with a bare LF became a request"
            );
            let lengths: Vec<_> = req.headers().get_all("content-length").iter().collect();
            assert!(
                lengths.windows(2).all(|w| w[0] == w[1]),
                "differing Content-Length values became a request"
            );
            // What the handler reads next: the path and query, every header.
            let _ = (req.uri().path(), req.uri().query(), req.method().as_str());
            for (name, value) in req.headers() {
                let _ = (name.as_str(), value.to_str());
            }
        }
        Some(_) => {}
        None => assert!(data.len() < MAX_HEAD, "a full buffer got no answer"),
    }
});
