//! The running application's parts, built once from the configuration and
//! handed to the registry server and the admin listener: the [`Mirror`]
//! (what is served from where), [`Access`] (who may pull what), the
//! [`Syncer`] (sync rules, run on their schedules and on demand), the
//! metrics registry and the status page's own records. Owns no behaviour of its own: the server asks `access`
//! before it asks `mirror`, and each part counts into `metrics`.

use std::path::Path;
use std::sync::Arc;

use crate::access::Access;
use crate::cache::Metadata;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::mirror::{Mirror, MirrorError};
use crate::sync::Syncer;

pub struct App {
    pub mirror: Mirror,
    pub access: Access,
    pub sync: Arc<Syncer>,
    /// Bundle imports: the keys that may sign them, and the cache's budget
    /// the pinned imports must fit in.
    pub trusted_keys: Vec<std::path::PathBuf>,
    pub max_size: Option<u64>,
    pub metrics: Arc<Metrics>,
    /// No admin listener: `/metrics` is served on the main one.
    pub metrics_on_main: bool,
    /// What only the status page keeps: failed requests, traffic samples,
    /// bundle imports.
    pub status: crate::status::Records,
    /// Who may open the status page besides 127.0.0.1 and ::1.
    pub status_networks: Vec<ipnet::IpNet>,
}

impl App {
    /// Opens the cache under `config.cache_dir` (sled metadata) and builds
    /// every part.
    pub fn open(config: &Config, metrics: Arc<Metrics>) -> Result<Arc<App>, MirrorError> {
        let mirror = Mirror::open(config, metrics.clone())?;
        Ok(App::with_mirror(config, mirror, metrics))
    }

    /// The same on a given metadata engine (tests use the memory one).
    pub fn with_parts(
        config: &Config,
        dir: &Path,
        meta: Metadata,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<App>, MirrorError> {
        let mirror = Mirror::with_parts(config, dir, meta, metrics.clone())?;
        Ok(App::with_mirror(config, mirror, metrics))
    }

    /// Imports a bundle into the cache, checking it against the trusted
    /// keys (read now, so a rotated key needs no restart).
    pub async fn import(
        &self,
        req: &crate::airgap::ImportRequest,
        emit: &(dyn Fn(crate::airgap::Event) + Send + Sync),
    ) -> Result<crate::airgap::ImportReport, crate::airgap::AirgapError> {
        let keys = self
            .trusted_keys
            .iter()
            .map(|p| crate::bundle::load_public_key(p))
            .collect::<Result<Vec<_>, _>>()?;
        let bundle = req.dir.file_name().map_or_else(
            || req.dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        // Ended however the call ends: a dropped import (its client went
        // away) must not show as running for ever.
        struct Running<'a> {
            records: &'a crate::status::Records,
            id: u64,
        }
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.records.import_finished(
                    self.id,
                    false,
                    serde_json::json!({ "error": "interrupted" }),
                );
            }
        }
        let running = Running {
            records: &self.status,
            id: self.status.import_started(&bundle),
        };
        let seen = |e: crate::airgap::Event| {
            self.status.import_event(running.id, &e);
            emit(e)
        };
        let r = crate::airgap::import_bundle(&self.mirror, &keys, self.max_size, req, &seen).await;
        match &r {
            Ok(report) => self.status.import_finished(
                running.id,
                true,
                serde_json::to_value(report).expect("reports serialize"),
            ),
            Err(e) => self.status.import_finished(
                running.id,
                false,
                serde_json::json!({ "error": crate::status::model::redact_urls(&e.to_string()) }),
            ),
        }
        r
    }

    fn with_mirror(config: &Config, mirror: Mirror, metrics: Arc<Metrics>) -> Arc<App> {
        let sync = Arc::new(Syncer::new(
            mirror.clone(),
            config.sync.clone(),
            metrics.registry(),
        ));
        Arc::new(App {
            sync,
            trusted_keys: config.bundle.trusted_keys.clone(),
            max_size: config.cache.limits.max_size,
            mirror,
            access: Access::new(
                &config.access,
                config
                    .upstreams
                    .iter()
                    .map(|u| (u.name.clone(), u.access.clone())),
                metrics.clone(),
            ),
            metrics_on_main: config.admin_listen.is_none(),
            status: crate::status::Records::new(),
            status_networks: config.status_networks.clone(),
            metrics,
        })
    }
}
