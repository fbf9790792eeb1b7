//! The hostile-peer suite: careless or malicious clients and upstreams, each
//! case asserting the specific safe outcome and that an honest client
//! ([`crate::harness::Honest`]) is still served within 2 s meanwhile.
//! Loopback only; every loop is bounded.
//!
//! - [`clients`]: non-readers over HTTP/1.1, TLS and HTTP/2, slowloris heads
//!   and prefaces, request smuggling, HTTP/2 floods, connection caps.
//! - [`upstream`]: a scriptable hostile registry: realms and redirects to
//!   other hosts, huge bodies, wrong media types, token lifetimes, helpers.
//! - [`fills`]: blob downloads that drip, lie about their size or digest, or
//!   outgrow the cache; negative answers and shared fills.
//! - [`access`]: password floods, user enumeration, revoked access files,
//!   secrets in output, file modes.

mod access;
mod clients;
mod fills;
mod upstream;
