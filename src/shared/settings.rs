//! What the configuration says about the shared tier (built and validated
//! by `crate::config`, read by [`super::Tier`]).

use std::path::PathBuf;
use std::time::Duration;

use crate::upstream::credentials::SecretSpec;

/// The object store's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The S3 API: AWS, or any compatible store at `endpoint`.
    S3,
    /// GCS's JSON API (OAuth tokens), natively.
    Gcs,
}

/// Where the tier's credentials come from. Never printed: `Debug` shows
/// the kind and the paths only.
#[derive(Debug, Clone)]
pub enum StoreCredentials {
    /// S3 keys, each re-read when its file changes (or fixed, from the
    /// environment).
    Keys {
        access_key_id: SecretSpec,
        secret_access_key: SecretSpec,
    },
    /// The S3 client's own chain: `AWS_*` variables, web identity (EKS),
    /// the instance metadata service.
    Environment,
    /// GCS: a service-account JSON key.
    ServiceAccountFile(PathBuf),
    /// GCS: the GCE metadata server's token for the node's service account.
    GceMetadata,
}

#[derive(Debug, Clone)]
pub struct SharedSettings {
    /// `s3://bucket/prefix` or `gs://bucket/prefix`, as configured (no
    /// secret can be in it: user info is refused).
    pub url: String,
    pub backend: Backend,
    pub bucket: String,
    /// Every key wharf writes starts with it (no leading or trailing `/`).
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub credentials: StoreCredentials,
    /// Upload what this node fetched, and lead shared fills.
    pub write: bool,
    pub lease_ttl: Duration,
    pub max_wait: Duration,
    pub request_timeout: Duration,
    pub retry_after: Duration,
    pub upload_memory: u64,
    pub max_uploads: usize,
    /// Following the leader of a cold fill node to node (`peer`).
    pub peer: Option<PeerSettings>,
}

/// `[shared]`'s `peer_*` keys.
#[derive(Debug, Clone)]
pub struct PeerSettings {
    /// Where the node-to-node listener binds.
    pub listen: std::net::SocketAddr,
    /// What other nodes dial (`host:port`); `None`: the bound address.
    pub address: Option<String>,
    /// The key every node signs peer requests with.
    pub key: SecretSpec,
}

impl SharedSettings {
    /// Settings for tests and benches: an S3 store at `endpoint` with the
    /// given key files, short timeouts.
    pub fn s3(endpoint: &str, bucket: &str, prefix: &str, credentials: StoreCredentials) -> Self {
        SharedSettings {
            url: format!("s3://{bucket}/{prefix}"),
            backend: Backend::S3,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            endpoint: Some(endpoint.to_owned()),
            region: "us-east-1".to_owned(),
            credentials,
            write: true,
            lease_ttl: Duration::from_secs(30),
            max_wait: Duration::from_secs(600),
            request_timeout: Duration::from_secs(5),
            retry_after: Duration::from_secs(10),
            upload_memory: 10 << 20,
            max_uploads: 4,
            peer: None,
        }
    }
}
