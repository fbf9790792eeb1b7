//! wharf: a pull-through caching mirror for container registries.
//!
//! # Layout
//!
//! Dependencies point one way, for imports as for data:
//! `server → app → {mirror, access}`, `server → {tls, mirror}`,
//! `sync → mirror → {cache, upstream} → registry`, `upstream → access` (an
//! upstream's access rules are part of its settings); `config` sits on top
//! of the parts it validates (`access`, `tls`, `upstream`, `cache`, `sync`),
//! each of which keeps its own settings type and never imports `config`;
//! `secret` and `registry` are leaves.
//!
//! - [`registry`]: protocol words (digests, names, references, media types), the
//!   request [`registry::Endpoint`] and OCI error codes. No I/O.
//! - [`config`]: the TOML file and its validation into a typed [`config::Config`],
//!   one constructor per section.
//! - [`secret`]: [`secret::Secret`], a string that never prints (a leaf: used by
//!   config and upstream without either importing the other for it).
//! - [`cache`]: verified content on disk behind the [`cache::Cache`] facade
//!   (open a linked blob, begin and feed a fill, commit a manifest), its
//!   metadata (sled behind a small trait), fills, eviction and coalescing.
//! - [`upstream`]: the HTTP client for each upstream registry and its auth.
//! - [`mirror`]: routing and cache policy: what is served from where, and the
//!   classification of its errors into responses.
//! - [`sync`]: sync rules (which tags and platforms of which repositories, on
//!   what schedule) and the runs that fill the cache from them, ahead of any
//!   pull; above `mirror`, and never serving requests.
//! - [`app`]: the parts the server and admin listener share (mirror, access,
//!   metrics).
//! - [`server`]: HTTP: accept, parse, dispatch, map errors, stream bodies,
//!   probes, the access log.
//! - [`tls`]: TLS termination, wharf's own CA, certificate reloads.
//! - [`trust`]: what each client needs to trust wharf (`wharf trust`).
//! - [`access`]: who may pull what through the mirror (networks, htpasswd and
//!   token users, client certificates, per-upstream repository lists).
//! - [`metrics`]: the Prometheus registry handed to the parts that count.
//! - [`systemd`]: the service manager's side of `wharf serve`: ready,
//!   stopping, and watchdog pings while a self-check passes.
//! - [`watched`]: files re-read when they change (credentials, htpasswd).
//! - [`memory`]: how freed memory goes back to the system (the trims after
//!   scans and views, and returnable scratch room for a thread of wharf's
//!   own); a leaf.
//! - [`own_thread`]: threads of wharf's own that run one job at a time
//!   (`wharf-scan` for whole-metadata scans, `wharf-status` for the status
//!   page's views); a leaf.
//! - [`admin`]: the operator side: `/metrics`, `/healthz`, `/readyz` on the
//!   admin listener, and the `wharf ls/du/rm/gc/pin` operations, run through
//!   the running server's admin socket or on a cache no server holds.
//! - [`nodeconfig`]: `wharf node-config`: the containerd configuration
//!   (hosts.toml files, GKE's node-pool file) that sends a node's pulls
//!   through its wharf; reads `config`, never the cache.
//! - [`shared`]: the second tier on an object store the nodes of a fleet
//!   share, and the leases that make one node fetch a cold blob for all;
//!   below `mirror`, beside `cache` (it never touches the disk cache).
//! - [`bundle`]: images carried across an air gap: the on-media format
//!   (tar volumes forming an OCI layout, `bundle.json`), signing keys and
//!   verification. Reads content through a `BlobSource`; never writes into
//!   the cache itself.

pub mod access;
pub mod admin;
pub mod airgap;
pub mod app;
pub mod bundle;
pub mod cache;
pub mod config;
pub mod memory;
pub mod metrics;
pub mod mirror;
pub mod nodeconfig;
pub mod own_thread;
pub mod registry;
pub mod secret;
pub mod server;
pub mod shared;
pub mod status;
pub mod sync;
pub mod systemd;
pub mod tls;
pub mod trust;
pub mod upstream;
pub mod watched;
