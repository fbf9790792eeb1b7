//! The configuration file exactly as written: serde structs, one per TOML
//! section, with `deny_unknown_fields` so a misspelt key is an error naming
//! it. No validation happens here; each section's typed constructor does that
//! (`TlsConfig::from_file`, `UpstreamConfig::from_file`, ...). `config.toml` at
//! the repository's root documents every field for operators.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Serve only what is cached; never contact an upstream.
    pub offline: Option<bool>,
    /// `[server]`: listeners, TLS, shutdown.
    #[serde(default)]
    pub server: FileServer,
    /// `[log]`: the log format.
    #[serde(default)]
    pub log: FileLog,
    /// `[cache]`: where content is kept and for how long tags are trusted.
    #[serde(default)]
    pub cache: FileCache,
    /// `[[upstream]]`: the registries mirrored; at least one.
    #[serde(default)]
    pub upstream: Vec<FileUpstream>,
    /// `[access]`: who may pull; without it, everyone who can connect.
    pub access: Option<FileAccess>,
    /// `[[sync]]`: images kept filled ahead of any pull.
    #[serde(default)]
    pub sync: Vec<FileSync>,
    /// `[bundle]`: what bundle imports trust.
    pub bundle: Option<FileBundle>,
    /// `[shared]`: a second tier on an object store the nodes share.
    pub shared: Option<FileShared>,
}

/// `[shared]`: the shared tier.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileShared {
    /// `s3://bucket/prefix` (AWS or any S3-compatible store) or
    /// `gs://bucket/prefix` (GCS, natively).
    pub url: String,
    /// The S3 API's base URL for stores other than AWS (SeaweedFS, MinIO,
    /// GCS's XML API at `https://storage.googleapis.com`).
    pub endpoint: Option<String>,
    /// The S3 region (default "us-east-1"; any value for most stores).
    pub region: Option<String>,
    /// A file holding the S3 access key id (chmod 600).
    pub access_key_id_file: Option<PathBuf>,
    /// An environment variable holding the S3 access key id.
    pub access_key_id_env: Option<String>,
    /// A systemd credential holding the S3 access key id.
    pub access_key_id_credential: Option<String>,
    /// A file holding the S3 secret access key (chmod 600).
    pub secret_access_key_file: Option<PathBuf>,
    /// An environment variable holding the S3 secret access key.
    pub secret_access_key_env: Option<String>,
    /// A systemd credential holding the S3 secret access key.
    pub secret_access_key_credential: Option<String>,
    /// GCS: a service-account JSON key file (default: the GCE metadata
    /// server's token for the node's service account).
    pub service_account_file: Option<PathBuf>,
    /// Upload what this node fetched from an upstream (default true).
    pub write: Option<bool>,
    /// How long a node's claim on a fill lasts unless renewed (default "30s").
    pub lease_ttl: Option<String>,
    /// The longest a node waits for another node's fill before fetching
    /// itself (default "10m").
    pub max_wait: Option<String>,
    /// Deadline of one small request to the store: a lookup, a lease, the
    /// head of a read (default "5s", or lease_ttl/3 if less).
    pub request_timeout: Option<String>,
    /// After a failed request, the tier is left alone this long before it
    /// is tried again (default "10s").
    pub retry_after: Option<String>,
    /// Memory for upload parts across all uploads (default "10MiB").
    pub upload_memory: Option<String>,
    /// Uploads at once (default 4); more wait their turn.
    pub max_uploads: Option<usize>,
    /// Node-to-node listener ("0.0.0.0:5052"): with it, nodes waiting for
    /// another node's cold fill stream the blob from that node as it
    /// fills, instead of waiting for its upload.
    pub peer_listen: Option<String>,
    /// The address other nodes dial ("10.0.0.5:5052"; default: the bound
    /// address of `peer_listen`, when it names one).
    pub peer_address: Option<String>,
    /// An environment variable holding this node's IP (the DaemonSet's
    /// `status.hostIP`); the port is `peer_listen`'s.
    pub peer_address_env: Option<String>,
    /// The key every node shares to sign peer requests (32 bytes or more):
    /// a file (chmod 600), an environment variable or a systemd credential.
    pub peer_key_file: Option<PathBuf>,
    pub peer_key_env: Option<String>,
    pub peer_key_credential: Option<String>,
}

/// `[[sync]]`: one sync rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSync {
    /// Names the rule in `wharf sync RULE`, metrics and bundles; unique.
    pub name: String,
    /// The `[[upstream]]` (by name) the repositories come from.
    pub upstream: String,
    /// Run this long after the previous run started ("6h"). Not with
    /// `schedule`; with neither, the rule runs only on `wharf sync`.
    pub interval: Option<String>,
    /// Run at the times of a five-field cron expression, in UTC.
    pub schedule: Option<String>,
    /// Start each scheduled run up to this much later, at random.
    pub jitter: Option<String>,
    /// `os/architecture[/variant]` of the images taken from an index
    /// (default: all).
    #[serde(default)]
    pub platforms: Vec<String>,
    /// Synced images are never evicted (default true).
    pub pin: Option<bool>,
    /// Unpin tags that no longer match or vanished upstream (default false).
    pub prune: Option<bool>,
    /// Bring cosign-style `.sig`/`.att` tags of synced digests (default false).
    pub signatures: Option<bool>,
    /// `[[sync.repo]]`: the repositories; at least one.
    #[serde(default)]
    pub repo: Vec<FileSyncRepo>,
}

/// `[[sync.repo]]`: one repository of a sync rule and its tag filter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSyncRepo {
    /// The repository as the upstream names it (`library/nginx`).
    pub name: String,
    /// Regexes; a tag must match one (default: every tag).
    #[serde(default)]
    pub include: Vec<String>,
    /// Regexes; a tag matching any is left out.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// A semver range (`">=3.19, <4"`) the tag must be a version in.
    pub semver: Option<String>,
    /// Keep only the newest N tags that pass the filters.
    pub keep_last: Option<i64>,
}

/// `[bundle]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileBundle {
    /// Public keys (`wharf bundle keygen`) whose signatures imports accept.
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
}

/// `[access]`: who may use the mirror.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileAccess {
    /// Default for upstreams without their own `anonymous`.
    pub anonymous: Option<bool>,
    /// bcrypt users (`htpasswd -B`), for Basic auth.
    pub htpasswd_file: Option<PathBuf>,
    /// `name:token` lines, for `Authorization: Bearer <token>`.
    pub tokens_file: Option<PathBuf>,
    /// A client certificate verified by `[server.tls] client_ca_file`
    /// authenticates its client, as the user `client_certificate_user` says.
    pub client_certificates: Option<bool>,
    /// What names a certificate's user: `cn` (the subject's common name,
    /// the default), `san-dns`, `san-email` or `san-uri` (the first SAN of
    /// that kind), or `fixed` (every certificate is user `tls-client`, as
    /// before this option). A certificate without the field is `tls-client`.
    /// The client CA names users: it shares their namespace with htpasswd
    /// and token users.
    pub client_certificate_user: Option<String>,
    /// Client networks (CIDR). Deny wins; a non-empty allow list admits only
    /// its networks.
    pub allow_networks: Option<Vec<String>>,
    /// Client networks (CIDR) refused whatever the allow list says.
    pub deny_networks: Option<Vec<String>>,
    /// bcrypt password checks run at once for clients (address and user)
    /// without recent failures (default 2). A remembered good login needs
    /// none.
    pub login_concurrency: Option<u32>,
    /// bcrypt password checks run at once for (address, user) pairs with
    /// recent failures or a check already running (default 1): wrong
    /// passwords queue here, not in front of first logins.
    pub failed_login_concurrency: Option<u32>,
    /// Failed Basic logins per client address (IPv6: per /64) and user name
    /// after which further attempts are answered 429 with `Retry-After`,
    /// without a password check (default 10).
    pub max_failed_logins: Option<u32>,
    /// How long until one failed login is forgotten ("30s" default): after
    /// `max_failed_logins` failures, one more attempt per this period.
    pub failed_login_decay: Option<String>,
}

/// `[upstream.access]`: per-upstream rules.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileUpstreamAccess {
    /// Serve clients that did not authenticate (default: `[access]
    /// anonymous`, else true unless clients have a way to authenticate).
    pub anonymous: Option<bool>,
    /// Authenticated users allowed here (default: all of them).
    pub users: Option<Vec<String>>,
    /// Repository globs (upstream-side names) that may be pulled; default all.
    pub repositories: Option<Vec<String>>,
}

/// `[server]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    /// Address to listen on, `host:port`.
    pub listen: Option<String>,
    /// Serve plain HTTP instead of TLS. Must be said explicitly.
    pub plain_http: Option<bool>,
    /// `[server.tls]`: how TLS is terminated (default: `auto = true`).
    pub tls: Option<FileTls>,
    /// Plain-HTTP listener for /metrics, /healthz, /readyz and the status
    /// page.
    pub admin_listen: Option<String>,
    /// Networks besides 127.0.0.1 and ::1 that may open the status page on
    /// the admin listener (default none).
    pub status_networks: Option<Vec<String>>,
    /// How long in-flight transfers may take to finish after SIGTERM.
    pub shutdown_grace: Option<String>,
    /// Connections served at once (registry port); at the cap wharf stops
    /// accepting until one ends (default 4096).
    pub max_connections: Option<usize>,
    /// Of those, open at once from one client address (IPv6: one /64);
    /// past it the address's new connections are closed (default 256).
    pub max_connections_per_address: Option<usize>,
    /// From a connection's (or a request's) first byte to its complete
    /// request head or HTTP/2 preface, and for a TLS handshake (default "30s").
    pub header_timeout: Option<String>,
    /// A keep-alive connection with no request in flight is closed after
    /// this (HTTP/1.1 and HTTP/2; default "120s").
    pub idle_timeout: Option<String>,
    /// While a response waits for the client to take bytes, the client must
    /// take `min_send_rate` × this within this, or is disconnected
    /// (default "60s").
    pub write_timeout: Option<String>,
    /// Bytes per second, averaged over `write_timeout`, a client that keeps
    /// wharf waiting must at least take (default "1KiB").
    pub min_send_rate: Option<String>,
    /// HTTP/2: streams one connection may have open at once (default 100).
    pub h2_max_concurrent_streams: Option<u32>,
    /// HTTP/2: the largest request header list accepted (default "64KiB").
    pub h2_max_header_list_size: Option<String>,
    /// HTTP/2: streams a client may open and reset before wharf accepted
    /// them, before the connection is closed (rapid reset; default 20).
    pub h2_max_pending_accept_reset_streams: Option<usize>,
    /// HTTP/2: streams wharf may reset because of client errors on one
    /// connection before closing it (default 256).
    pub h2_max_local_error_reset_streams: Option<usize>,
}

/// `[log]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileLog {
    /// "text" (default) or "json".
    pub format: Option<String>,
}

/// `[server.tls]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    /// Mint the server certificate from wharf's own CA (default when no
    /// cert_file is given).
    pub auto: Option<bool>,
    /// DNS names and IP addresses for the auto certificate.
    pub names: Option<Vec<String>>,
    /// PEM certificate chain (leaf first).
    pub cert_file: Option<PathBuf>,
    /// The PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// PEM bundle of CAs whose client certificates are accepted (mTLS).
    pub client_ca_file: Option<PathBuf>,
    /// "required" (default with client_ca_file) or "optional".
    pub client_auth: Option<String>,
    /// How often cert_file/key_file are checked for replacement.
    pub reload_interval: Option<String>,
}

/// `[cache]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileCache {
    /// Directory holding blobs, temp files and the metadata database.
    pub dir: Option<PathBuf>,
    /// How long a tag -> digest answer is trusted before a HEAD revalidates it.
    pub tag_ttl: Option<String>,
    /// Disk budget, e.g. "20GiB"; default: the filesystem's size.
    pub max_size: Option<String>,
    /// Fraction of max_size past which eviction starts.
    pub high_watermark: Option<f64>,
    /// Fraction of max_size eviction brings usage under.
    pub low_watermark: Option<f64>,
    /// Images never evicted.
    pub pin: Option<Vec<String>>,
    /// Memory for recent manifests, e.g. "16MiB".
    pub memory: Option<String>,
    /// Room is reserved for a blob download in steps of this size as its
    /// bytes arrive (default "64MiB", at most a sixteenth of max_size): a
    /// lying or missing Content-Length cannot evict more than was received.
    pub fill_reserve_step: Option<String>,
    /// The slowest a blob download may be, in bytes per second averaged over
    /// fill_rate_window, before it fails and the next request retries
    /// (default "16KiB"; "0" for no minimum).
    pub fill_min_rate: Option<String>,
    /// The window fill_min_rate is averaged over (default "30s").
    pub fill_rate_window: Option<String>,
    /// Blob downloads running at once (default 128); more wait up to 60 s
    /// for a slot, then get 503.
    pub max_fills: Option<usize>,
    /// How long an upstream's "not found" for a manifest (per upstream,
    /// repository and tag or digest) is answered from memory (default "30s";
    /// "0s" to ask every time).
    pub negative_ttl: Option<String>,
    /// How many such answers are remembered at most (default 10000).
    pub negative_entries: Option<u64>,
}

/// `[[upstream]]`: one registry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstream {
    /// Used in logs, metrics and the cache's metadata.
    pub name: String,
    /// Scheme, host and port of the registry API.
    pub url: String,
    /// Registry hosts that containerd's `?ns=` names for this upstream.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Serve this upstream under `/v2/<prefix>/...` too.
    pub prefix: Option<String>,
    /// Serve requests that name no upstream (dockerd's registry-mirrors).
    #[serde(default)]
    pub default: bool,
    /// Prefix one-component names with `library/` (default: Docker Hub).
    pub library_prefix: Option<bool>,
    /// PEM bundle of a private CA for the upstream's certificate.
    pub ca_file: Option<PathBuf>,
    /// How long to wait for a connection to the upstream.
    pub connect_timeout: Option<String>,
    /// How long one answer may take, headers and body: a manifest, a tag
    /// list page, a token; a blob's headers (its body has the fill's
    /// minimum rate).
    pub answer_timeout: Option<String>,
    /// `[upstream.credentials]`: what wharf presents to the upstream.
    pub credentials: Option<FileCredentials>,
    /// `[upstream.access]`: who may pull through this upstream.
    pub access: Option<FileUpstreamAccess>,
    /// Serve only what is cached from this upstream.
    pub offline: Option<bool>,
    /// Hosts (`host` or `host:port`) that may receive this upstream's
    /// credentials as its token realm besides its own host and registrable
    /// domain; needed when the registry is addressed by IP or its token
    /// service is elsewhere. Also lets an anonymous realm be loopback or
    /// private when the upstream is not. Never link-local or the metadata host.
    #[serde(default)]
    pub token_realms: Vec<String>,
    /// Loopback or private hosts (`host` or `host:port`) a blob download may
    /// be redirected to although the upstream is on a public address.
    #[serde(default)]
    pub redirect_hosts: Vec<String>,
    /// Keep this upstream's content out of the shared tier (default true:
    /// shared when a `[shared]` tier is configured).
    pub shared: Option<bool>,
    /// The largest manifest read from this upstream (default "4MiB", the
    /// limit registries and containerd apply; at most "32MiB").
    pub max_manifest_size: Option<String>,
    /// The largest tag-list page read from this upstream (default "4MiB").
    pub max_tag_list_page: Option<String>,
    /// The largest token-service answer read (default "1MiB").
    pub max_token_response: Option<String>,
    /// How much of an error answer is read (its OCI code, for the log);
    /// the rest is dropped unread (default "64KiB").
    pub max_error_body: Option<String>,
}

/// `[upstream.credentials]`: one kind of credentials.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCredentials {
    /// The Basic user name, with one of the password fields.
    pub username: Option<String>,
    /// A file holding the password or token (chmod 600).
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password or token.
    pub password_env: Option<String>,
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/<name>`.
    pub password_credential: Option<String>,
    /// The password inline (works, with a warning).
    pub password: Option<String>,
    /// A Docker `config.json`: its `credHelpers`, `credsStore` or `auths`
    /// entry for this upstream, as docker reads them.
    pub docker_config: Option<PathBuf>,
    /// The `config.json` key to use (default: the upstream's host, or Docker
    /// Hub's index URL).
    pub docker_config_key: Option<String>,
    /// How long a `docker-credential-<name>` helper may take (default 10s).
    pub helper_timeout: Option<String>,
    /// A Google service-account JSON key (user `_json_key`).
    pub json_key_file: Option<PathBuf>,
    /// Send the key as `_json_key_base64` instead.
    pub json_key_base64: Option<bool>,
    /// The GCE/GKE metadata server's token for the node's service account.
    pub gce_metadata: Option<bool>,
    /// host[:port] of the metadata server.
    pub metadata_host: Option<String>,
    /// The node's service account to ask a token for (default "default").
    pub service_account: Option<String>,
}
