//! scale-gateway: makes a pool of Asterisk nodes running res_scale look like ONE Asterisk to
//! unmodified ARI applications. It authenticates clients as ARI does, serves the api-docs with
//! its own basePath, routes each REST call to the node that owns the resource, merges
//! pool-wide reads, and relays each application's events from RabbitMQ.
#![forbid(unsafe_code)]

mod ari;
mod bridging;
mod config;
mod events;
mod health;
mod metrics;
mod owners;
mod pool;
mod registration;
mod routing;
mod server;
mod state;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::config::{mask_url, Config, LogFormat};
use crate::metrics::KindLabels;
use crate::owners::Kind;
use crate::state::Gateway;

#[derive(Parser)]
#[command(name = "scale-gateway", version, about = "The res_scale pool as one Asterisk, for ARI applications")]
struct Flags {
    /// The TOML configuration (configs/scale-gateway.toml.sample documents every key).
    /// Without it, defaults and SCALE_GATEWAY_* environment variables only.
    #[arg(long, value_name = "FILE")]
    config: Option<String>,
    /// Validate the configuration (this file, or --config's), print the result, and exit.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "")]
    check_config: Option<String>,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let path = match &flags.check_config {
        Some(p) if !p.is_empty() => Some(p.as_str()),
        _ => flags.config.as_deref(),
    };
    let env: BTreeMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("SCALE_GATEWAY_")).collect();
    let config = match config::load(path, &env) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("scale-gateway: the configuration has {} problem(s):", errors.len());
            for e in &errors {
                eprintln!("  {e}");
            }
            return ExitCode::from(2);
        }
    };
    if flags.check_config.is_some() {
        println!("scale-gateway: configuration OK ({})", path.unwrap_or("defaults and environment"));
        print_summary(&config);
        return ExitCode::SUCCESS;
    }
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("scale-gateway").build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("scale-gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn print_summary(c: &Config) {
    println!("  listen          {}{}", c.listen, if c.tls.is_some() { " (TLS)" } else { "" });
    println!("  instance_id     {}", c.instance_id);
    println!("  clients         {}", c.clients.iter().map(|c| c.user.as_str()).collect::<Vec<_>>().join(", "));
    println!("  consul          {}", c.consul.url.join(", "));
    println!("  amqp            {}", c.amqp.url.iter().map(|u| mask_url(u)).collect::<Vec<_>>().join(", "));
    println!("  nodes ARI user  {}", c.nodes.ari_user);
    println!("  apps linger     {}", res_scale_core::duration::format(c.apps.linger));
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: logs written to files or journald stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(config: Config) -> Result<(), String> {
    let tls = config.tls.as_ref().map(server::tls_acceptor).transpose()?;
    let gw = Arc::new(Gateway::new(config)?);
    let listener = tokio::net::TcpListener::bind(gw.config.listen).await.map_err(|e| format!("cannot listen on {}: {e}", gw.config.listen))?;
    let drain = gw.config.drain_timeout;
    tracing::info!(listen = %gw.config.listen, instance_id = %gw.config.instance_id, tls = tls.is_some(), "scale-gateway {} listening", env!("CARGO_PKG_VERSION"));

    gw.tasks.spawn(pool::watch(gw.pool.clone(), gw.consul.clone(), gw.config.consul.node_service.clone(), gw.owners.clone(), gw.metrics.clone(), gw.shutdown.clone()));
    gw.tasks.spawn(registration::run(gw.clone()));
    gw.tasks.spawn(housekeeping(gw.clone()));
    events::start(&gw);
    gw.tasks.spawn(bridging::run(gw.clone()));
    gw.tasks.spawn(stop_on_signal(gw.shutdown.clone()));

    server::serve(gw.clone(), listener, tls, drain).await;
    gw.tasks.close();
    if tokio::time::timeout(drain.max(Duration::from_secs(1)), gw.tasks.wait()).await.is_err() {
        tracing::warn!("background tasks still running after the drain time");
    }
    tracing::info!("scale-gateway stopped");
    Ok(())
}

/// Expires old ownership entries and keeps their gauge current.
async fn housekeeping(gw: Arc<Gateway>) {
    loop {
        gw.owners.expire();
        let counts = gw.owners.counts();
        for kind in Kind::ALL {
            gw.metrics.ownership_entries.get_or_create(&KindLabels { kind: kind.label().into() }).set(counts.get(&kind).copied().unwrap_or(0) as i64);
        }
        tokio::select! {
            _ = gw.shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
    shutdown.cancel();
}
