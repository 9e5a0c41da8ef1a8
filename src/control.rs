//! The live gateway state: the current `Runtime` behind `ArcSwap`, and reloading.
//! A reload builds the new Runtime beside the old one and swaps it in; requests already
//! running keep the Runtime they started with. A broken config leaves the old one serving.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, ConfigError};
use crate::runtime::check;
use crate::runtime::{Runtime, Shared};
use crate::tls::CertStore;

pub struct Control {
    pub runtime: ArcSwap<Runtime>,
    pub shared: Arc<Shared>,
    pub config_path: Option<PathBuf>,
    pub certs: Option<Arc<ArcSwap<CertStore>>>,
    pub listeners_up: AtomicBool,
    reloading: std::sync::Mutex<()>,
}

impl Control {
    pub fn new(
        runtime: Runtime,
        shared: Arc<Shared>,
        config_path: Option<PathBuf>,
        certs: Option<Arc<ArcSwap<CertStore>>>,
    ) -> Control {
        Control {
            runtime: ArcSwap::from_pointee(runtime),
            shared,
            config_path,
            certs,
            listeners_up: AtomicBool::new(false),
            reloading: std::sync::Mutex::new(()),
        }
    }

    /// Re-reads the config file and applies it.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let Some(path) = &self.config_path else {
            return Err(ConfigError::single("", "no config file to reload from"));
        };
        // `load_file` has run every check already: build without checking again (which
        // would open every certificate file one more time).
        let result = check::load_file(path).and_then(|c| self.swap_in(c));
        if let Err(e) = &result {
            self.shared
                .metrics
                .config_reloads
                .with_label_values(&["error"])
                .inc();
            for issue in &e.issues {
                tracing::error!(path = %path.display(), "config reload refused: {issue}");
            }
        }
        result
    }

    /// Re-reads the config file and applies it on a blocking thread: reading files,
    /// parsing YAML and building a Runtime never hold up a thread that serves requests
    /// (with `--threads 1` there is only one).
    pub async fn reload_off_thread(self: &Arc<Self>) -> Result<(), ConfigError> {
        let control = self.clone();
        tokio::task::spawn_blocking(move || control.reload())
            .await
            .unwrap_or_else(|_| Err(ConfigError::single("", "the reload task failed")))
    }

    /// Validates `config`, builds a Runtime from it and swaps it in.
    pub fn apply(&self, config: Config) -> Result<(), ConfigError> {
        check::config(&config)?;
        self.swap_in(config)
    }

    /// Builds a Runtime from a config already checked, and swaps it in.
    fn swap_in(&self, config: Config) -> Result<(), ConfigError> {
        // One reload at a time, so two reloads cannot interleave their reuse decisions.
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.runtime.load_full();
        warn_restart_needed(&current.config, &config);
        let certs = match (&self.certs, &config.server.tls) {
            (Some(_), Some(tls)) => Some(
                CertStore::build(tls)
                    .map_err(|e| ConfigError::single("server.tls.certificates", e.to_string()))?,
            ),
            _ => None,
        };
        let runtime = Runtime::build(config, &self.shared, Some(&current))?;
        if let (Some(store), Some(new)) = (&self.certs, certs) {
            store.store(Arc::new(new));
        }
        let runtime = Arc::new(runtime);
        self.runtime.store(runtime.clone());
        runtime.activate();
        self.shared
            .metrics
            .config_reloads
            .with_label_values(&["success"])
            .inc();
        tracing::info!("config reloaded");
        Ok(())
    }

    pub fn ready(&self) -> bool {
        self.listeners_up.load(Ordering::Acquire)
    }
}

fn warn_restart_needed(old: &Config, new: &Config) {
    let old_tls = old.server.tls.as_ref().map(|t| &t.listen);
    let new_tls = new.server.tls.as_ref().map(|t| &t.listen);
    if old.server.listen != new.server.listen || old_tls != new_tls {
        tracing::warn!(
            "server listen addresses changed: the new addresses take effect after a restart"
        );
    }
    if old.admin.as_ref().map(|a| &a.listen) != new.admin.as_ref().map(|a| &a.listen) {
        tracing::warn!("admin.listen changed: the new address takes effect after a restart");
    }
    if old.server.limits.max_connections != new.server.limits.max_connections {
        tracing::warn!("server.limits.max_connections changed: takes effect after a restart");
    }
}
