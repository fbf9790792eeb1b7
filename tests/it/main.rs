//! Integration tests: real CNCF distribution upstreams, real clients (skopeo,
//! podman, containerd's ctr), a real S3 store (SeaweedFS), wharf on loopback. One binary, shared helpers in
//! `harness`. Needs the Debian packages from `scripts/install-deps.sh`.

mod access;
mod airgap;
mod bad_input;
mod cache_life;
mod cli;
mod coalescing;
mod cred_helper;
mod dockerd;
mod fleet;
mod h1;
mod harness;
mod hostile;
mod http_api;
mod image;
mod kubernetes;
mod observability;
mod pull;
mod redirect;
mod shared;
mod site;
mod status;
mod systemd;
mod tls;
mod upstream_auth;
