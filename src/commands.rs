//! The `scale ...` CLI commands.

use res_scale_core::status::{StatusReport, SubsystemLine};

use crate::ast::cli::{no_completion, Command, Outcome};
use crate::ast::identity;
use crate::lifecycle;

#[cfg(not(feature = "test-hooks"))]
pub static ALL: &[Command] = &[SHOW_STATUS];

#[cfg(feature = "test-hooks")]
pub static ALL: &[Command] = &[SHOW_STATUS, TEST_PANIC];

const SHOW_STATUS: Command = Command {
    words: c"scale show status",
    summary: c"Show the state of res_scale on this node",
    usage: c"Usage: scale show status\n       Shows res_scale's version, this node's identity, the configuration in\n       effect (secrets masked), uptime, and one line per subsystem (consul, amqp,\n       registrations) with its state and counters.\n",
    run: show_status,
    complete: no_completion,
};

fn show_status(args: &[String]) -> Outcome {
    if !args.is_empty() {
        return Outcome::ShowUsage;
    }
    let guard = lifecycle::state();
    let Some(running) = guard.as_ref() else {
        return Outcome::Failed("res_scale is not running\n".into());
    };
    let config = &running.config;
    let subsystem = |name: &'static str, enabled: bool| SubsystemLine {
        name,
        // Nothing is started yet: the Consul, AMQP and registration issues fill these lines.
        state: if enabled { "not implemented yet" } else { "disabled" }.into(),
        counters: vec![],
    };
    let report = StatusReport {
        version: env!("CARGO_PKG_VERSION"),
        asterisk_version: identity::asterisk_version(),
        node_id: lifecycle::node_id(config, &running.eid),
        eid: running.eid.clone(),
        system_name: running.system_name.clone(),
        uptime: running.started.elapsed(),
        config_source: running.config_source.clone(),
        config: config.summary(),
        subsystems: vec![
            subsystem("consul", config.consul.enabled),
            subsystem("amqp", config.amqp.enabled),
            subsystem("registrations", config.registrations.enabled),
        ],
    };
    Outcome::Output(report.render())
}

/// Lets the integration tests prove that a panic in a command does not take Asterisk down.
#[cfg(feature = "test-hooks")]
const TEST_PANIC: Command = Command {
    words: c"scale test panic",
    summary: c"Panic on purpose (test builds only)",
    usage: c"Usage: scale test panic\n       Panics inside the command handler; the panic guard must turn it into a\n       failed command. Present only in builds with the test-hooks feature.\n",
    run: |_| panic!("deliberate panic from 'scale test panic'"),
    complete: no_completion,
};
