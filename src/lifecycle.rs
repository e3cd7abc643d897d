//! Load, unload and reload: they build, change and take down the [`Running`] state (see
//! `running`), which the CLI reads.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use res_scale_core::amqp::signing::PoolKeys;
use res_scale_core::config::{self, Config, ConfigError, RawConfig};
use res_scale_core::consul::apps::{self, AppsTable, EventCounters};

use crate::amqp::{Amqp, EventPipe};
use crate::ast::stasis::{self, AsteriskStasis};
use crate::ast::{self, cli, identity};
use crate::commands;
use crate::consul::Consul;
use crate::events::Forwarder;
use crate::node;
use crate::registrations::Registrations;
use crate::running::{state, Running};
use crate::states::States;

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
    let eid = identity::eid();
    let system_name = identity::system_name();
    let node = node::identity(&config, &eid, &system_name);
    let apps = Arc::new(Mutex::new(AppsTable::default()));
    let counters = Arc::new(EventCounters::default());
    let forwarder = Arc::new(Forwarder { apps: counters.clone(), queue: Default::default() });
    stasis::set_sink(Some(forwarder.clone()));
    let mut running = Running {
        config: Arc::new(config),
        config_source,
        started: Instant::now(),
        eid,
        system_name,
        node,
        apps,
        counters,
        consul: None,
        amqp: None,
        registrations: None,
        states: None,
        parked_pipe: None,
        forwarder,
        runtime: Some(runtime),
        cli: None,
    };
    if let Err(e) = running.start_subsystems() {
        tracing::error!("res_scale declined to load: {e}");
        running.stop();
        return Err(());
    }
    match cli::Registration::new(commands::ALL) {
        Ok(registration) => running.cli = Some(registration),
        Err(e) => {
            tracing::error!("res_scale declined to load: {e}");
            running.stop();
            return Err(());
        }
    }
    tracing::info!("res_scale {} loaded: node {} (EID {}), config from {}", env!("CARGO_PKG_VERSION"), running.node.node_id, running.eid, running.config_source);
    *state() = Some(running);
    Ok(())
}

pub fn unload() {
    // Take the state out first so that nothing holds the lock while threads are joined.
    let Some(mut running) = state().take() else { return };
    running.stop();
    tracing::info!("res_scale unloaded");
}

impl Running {
    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the runtime lives until stop")
    }

    fn start_subsystems(&mut self) -> Result<(), String> {
        self.start_consul()?;
        self.start_amqp();
        self.start_registrations()?;
        self.start_states()
    }

    /// Device state uses the brokers of [amqp].
    fn start_states(&mut self) -> Result<(), String> {
        let config = &self.config;
        if config.state.is_enabled(&config.amqp) {
            let pool = self.consul.as_ref().map(|c| c.view.clone());
            self.states = Some(States::start(self.runtime().handle(), &config.amqp, &config.state, PoolKeys::from_config(&config.general), &self.node, pool)?);
        }
        Ok(())
    }

    fn stop_states(&mut self) {
        if let Some(states) = self.states.take() {
            states.stop(self.runtime());
        }
    }

    /// Registrations use the brokers of [amqp] and, for node loss, Consul's view of the pool.
    fn start_registrations(&mut self) -> Result<(), String> {
        if self.config.registrations.enabled {
            let pool = self.consul.as_ref().map(|c| c.view.clone());
            let config = &self.config;
            self.registrations = Some(Registrations::start(self.runtime().handle(), &config.amqp, &config.registrations, PoolKeys::from_config(&config.general), &self.node, pool)?);
        }
        Ok(())
    }

    fn stop_registrations(&mut self) {
        if let Some(registrations) = self.registrations.take() {
            registrations.stop(self.runtime());
        }
    }

    fn start_consul(&mut self) -> Result<(), String> {
        if self.config.consul.enabled {
            let consul = Consul::start(self.runtime().handle(), &self.config.consul, self.node.clone(), self.apps.clone(), self.counters.clone())?;
            self.consul = Some(consul);
        }
        Ok(())
    }

    fn stop_consul(&mut self) {
        if let Some(consul) = self.consul.take() {
            consul.stop(self.runtime());
        }
    }

    /// Starts the publisher on the queue kept from a previous one, if any.
    fn start_amqp(&mut self) {
        let parked = self.parked_pipe.take();
        let mut queue = self.forwarder.queue.write().unwrap_or_else(|e| e.into_inner());
        if !self.config.amqp.enabled {
            if let Some(depth) = parked.map(|p| p.queue.depth()).filter(|d| *d > 0) {
                tracing::warn!("amqp: disabled; {depth} queued event(s) discarded");
            }
            *queue = None;
            return;
        }
        let pipe = parked.unwrap_or_else(|| EventPipe::new(self.config.amqp.queue_capacity));
        if pipe.queue.capacity() != self.config.amqp.queue_capacity {
            tracing::info!("amqp: queue_capacity {} takes effect at the next module load; the queue keeps {}", self.config.amqp.queue_capacity, pipe.queue.capacity());
        }
        *queue = Some((pipe.queue.clone(), pipe.counters.clone()));
        drop(queue);
        self.amqp = Some(Amqp::start(self.runtime().handle(), &self.config.amqp, &self.node, pipe));
    }

    /// Stops the publisher; its queue is parked for the next one (and keeps filling meanwhile).
    fn stop_amqp(&mut self) {
        if let Some(amqp) = self.amqp.take() {
            self.parked_pipe = Some(amqp.stop(self.runtime()));
        }
    }

    /// Everything down, in the order that keeps Asterisk safe and loses nothing avoidable: no
    /// CLI, no shared device state (learned states taken back), no registrations (their
    /// learned contacts removed), no Consul tasks, no Stasis applications, no callback in flight, then the publisher
    /// flushes what was queued, then the threads.
    fn stop(&mut self) {
        drop(self.cli.take());
        self.stop_states();
        self.stop_registrations();
        self.stop_consul();
        apps::close(&self.apps, &AsteriskStasis, &self.counters);
        if !stasis::wait_idle(SHUTDOWN_TIMEOUT) {
            tracing::warn!("a Stasis callback was still running after {SHUTDOWN_TIMEOUT:?}");
        }
        stasis::set_sink(None);
        self.stop_amqp();
        if let Some(runtime) = self.runtime.take() {
            // Joins the worker threads, waiting at most SHUTDOWN_TIMEOUT for tasks to stop.
            runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
        }
    }

    /// Puts a new configuration in effect, restarting the subsystems whose settings changed.
    fn apply(&mut self, config: Config) -> Result<(), String> {
        let old = std::mem::replace(&mut self.config, Arc::new(config));
        let identity_changed = old.general != self.config.general || old.consul.service_name != self.config.consul.service_name;
        if identity_changed {
            self.node = node::identity(&self.config, &self.eid, &self.system_name);
        }
        let consul_changed = identity_changed || old.consul != self.config.consul;
        let amqp_changed = identity_changed || old.amqp != self.config.amqp;
        // Registrations hold Consul's pool view and [amqp]'s brokers: they restart with either.
        let registrations_changed = consul_changed || amqp_changed || old.registrations != self.config.registrations;
        // Device state holds [amqp]'s brokers and the node's identity.
        let states_changed = amqp_changed || old.state != self.config.state;
        if states_changed {
            self.stop_states();
        }
        if registrations_changed {
            self.stop_registrations();
        }
        if consul_changed {
            self.stop_consul();
            self.start_consul()?;
        }
        if amqp_changed {
            self.stop_amqp();
            self.start_amqp();
        }
        if registrations_changed {
            self.start_registrations()?;
        }
        if states_changed {
            self.start_states()?;
        }
        Ok(())
    }
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
        return Ok(());
    }
    running.apply(config).map_err(|e| tracing::error!("{file} reloaded, but a subsystem failed to start: {e}"))?;
    tracing::info!("{file} reloaded; new configuration in effect");
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
