//! Load, unload and reload. The per-load state lives in a `Mutex<Option<..>>`: after
//! `module unload` the library usually stays mapped and `module load` calls `load()` again, so
//! nothing per-load may sit in a once-only static.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use res_scale_core::config::{self, Config, ConfigError, RawConfig};

use crate::ast::{self, cli, identity};
use crate::commands;

/// Everything that exists while the module is loaded.
pub struct Running {
    pub config: Arc<Config>,
    pub config_source: String,
    pub started: Instant,
    pub eid: String,
    pub system_name: String,
    runtime: Option<tokio::runtime::Runtime>,
    cli: Option<cli::Registration>,
}

static STATE: Mutex<Option<Running>> = Mutex::new(None);

/// The running state; a poisoned lock is taken over (a panic was already logged by the guard).
pub fn state() -> MutexGuard<'static, Option<Running>> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long unload waits for tasks to stop before abandoning them.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

pub fn load() -> Result<(), ()> {
    ast::log::init();
    if state().is_some() {
        tracing::warn!("res_scale is already loaded");
        return Ok(());
    }
    let (config, config_source) = read_config().map_err(|_| {
        tracing::error!("res_scale declined to load: fix {} and run 'module load res_scale.so'", config::FILE_NAME);
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .thread_name("res_scale-wrk")
        .enable_all()
        .build()
        .map_err(|e| tracing::error!("res_scale declined to load: cannot start its worker threads: {e}"))?;
    let cli = cli::Registration::new(commands::ALL).map_err(|e| tracing::error!("res_scale declined to load: {e}"))?;
    let eid = identity::eid();
    let system_name = identity::system_name();
    tracing::info!(
        "res_scale {} loaded: node {} (EID {eid}), config from {config_source}",
        env!("CARGO_PKG_VERSION"),
        node_id(&config, &eid)
    );
    *state() = Some(Running {
        config: Arc::new(config),
        config_source,
        started: Instant::now(),
        eid,
        system_name,
        runtime: Some(runtime),
        cli: Some(cli),
    });
    Ok(())
}

pub fn unload() {
    // Take the state out first so that nothing holds the lock while threads are joined.
    let Some(mut running) = state().take() else { return };
    // CLI first: after this no command can reach the state being torn down.
    drop(running.cli.take());
    if let Some(runtime) = running.runtime.take() {
        // Joins the worker threads, waiting at most SHUTDOWN_TIMEOUT for tasks to stop.
        runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
    }
    tracing::info!("res_scale unloaded");
}

pub fn reload() -> Result<(), ()> {
    let file = config::FILE_NAME;
    let raw = match ast::config::load(file, true) {
        ast::config::Loaded::Unchanged => {
            tracing::info!("{file} unchanged; nothing to reload");
            return Ok(());
        }
        ast::config::Loaded::Missing => {
            tracing::warn!("{file} is gone; keeping the running configuration");
            return Err(());
        }
        ast::config::Loaded::Unparsable => {
            tracing::error!("{file} could not be parsed; keeping the running configuration");
            return Err(());
        }
        ast::config::Loaded::Config(raw) => raw,
    };
    let config = validate(&raw).map_err(|()| {
        tracing::error!("{file} has errors; keeping the running configuration");
    })?;
    let mut guard = state();
    let Some(running) = guard.as_mut() else {
        tracing::warn!("res_scale is not running; nothing to reload");
        return Err(());
    };
    if *running.config == config {
        tracing::info!("{file} reloaded; no setting changed");
    } else {
        running.config = Arc::new(config);
        tracing::info!("{file} reloaded; new configuration in effect");
    }
    Ok(())
}

/// Reads and validates the config at load time. An absent file means the defaults.
fn read_config() -> Result<(Config, String), ()> {
    let file = config::FILE_NAME;
    let path = format!("{}/{file}", identity::config_dir());
    match ast::config::load(file, false) {
        ast::config::Loaded::Config(raw) => validate(&raw).map(|c| (c, path)),
        ast::config::Loaded::Missing => {
            tracing::info!("{path} not found; using the defaults (see configs/res_scale.conf.sample)");
            Ok((Config::default(), format!("{path} (absent: defaults)")))
        }
        ast::config::Loaded::Unchanged | ast::config::Loaded::Unparsable => {
            tracing::error!("{path} could not be parsed");
            Err(())
        }
    }
}

fn validate(raw: &RawConfig) -> Result<Config, ()> {
    Config::from_raw(raw).map_err(|errors: Vec<ConfigError>| {
        for e in &errors {
            tracing::error!("{e}");
        }
        tracing::error!("{} problem(s) in {}", errors.len(), config::FILE_NAME);
    })
}

/// The Consul service ID this node uses.
pub fn node_id(config: &Config, eid: &str) -> String {
    config.general.node_id.clone().unwrap_or_else(|| config::default_node_id(eid))
}
