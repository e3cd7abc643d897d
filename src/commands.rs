//! The `scale ...` CLI commands. They read the module's state and never wait on the network,
//! except `scale set drain`, which waits a bounded time for Consul's answer.

use res_scale_core::amqp::show::{self as amqp_show, AmqpView};
use res_scale_core::consul::show;
use res_scale_core::registrations::show::{self as registrations_show, Listed, RegistrationsView};
use res_scale_core::state::mwi::show::{self as mwi_show, MwiView};
use res_scale_core::state::show::{self as states_show, StatesView};
use res_scale_core::status::{StatusReport, SubsystemLine};

use crate::ast::cli::{no_completion, Command, Outcome};
use crate::ast::{devstate, identity, mwi as ast_mwi};
use crate::running::{self, Running};

#[cfg(not(feature = "test-hooks"))]
pub static ALL: &[Command] = &[SHOW_STATUS, SHOW_NODES, SHOW_APPS, SHOW_AMQP, SHOW_REGISTRATIONS, SHOW_STATES, SET_DRAIN];

#[cfg(feature = "test-hooks")]
pub static ALL: &[Command] = &[SHOW_STATUS, SHOW_NODES, SHOW_APPS, SHOW_AMQP, SHOW_REGISTRATIONS, SHOW_STATES, SET_DRAIN, TEST_PANIC, TEST_EVENTS, TEST_HOLD, TEST_FAIL];

/// Runs `f` on the running state, or says that the module is not running.
fn with_running(f: impl FnOnce(&Running) -> Outcome) -> Outcome {
    match running::state().as_ref() {
        Some(running) => f(running),
        None => Outcome::Failed("res_scale is not running\n".into()),
    }
}

/// For the `show` commands, which take no argument.
fn show(args: &[String], f: impl FnOnce(&Running) -> Outcome) -> Outcome {
    if args.is_empty() {
        with_running(f)
    } else {
        Outcome::ShowUsage
    }
}

const SHOW_STATUS: Command = Command {
    words: c"scale show status",
    summary: c"Show the state of res_scale on this node",
    usage: c"Usage: scale show status\n       Shows res_scale's version, this node's identity, the configuration in\n       effect (secrets masked), uptime, and one line per subsystem (consul, amqp,\n       registrations, state) with its state and counters.\n",
    run: |args| show(args, show_status),
    complete: no_completion,
};

fn show_status(running: &Running) -> Outcome {
    let config = &running.config;
    let consul = match &running.consul {
        None => SubsystemLine { name: "consul", state: "disabled".into(), counters: vec![] },
        Some(c) => {
            let s = c.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let apps = running.apps.lock().unwrap_or_else(|e| e.into_inner()).apps.len() as u64;
            SubsystemLine {
                name: "consul",
                state: if s.drain { format!("{} (drain)", s.state) } else { s.state },
                counters: vec![("registrations", s.registrations), ("ttl_passes", s.ttl_passes), ("failures", s.failures), ("apps", apps)],
            }
        }
    };
    let report = StatusReport {
        version: env!("CARGO_PKG_VERSION"),
        asterisk_version: identity::asterisk_version(),
        node_id: running.node.node_id.clone(),
        eid: running.eid.clone(),
        system_name: running.system_name.clone(),
        uptime: running.started.elapsed(),
        config_source: running.config_source.clone(),
        config: config.summary(),
        subsystems: vec![consul, amqp_line(running), registrations_line(running), states_line(running)],
    };
    let mut out = report.render();
    if let Some(c) = &running.consul {
        let s = c.status.lock().unwrap_or_else(|e| e.into_inner());
        out.push_str(&format!("\n  Consul agent:   {}  drain: {}\n", c.agent.current_url(), if s.drain { "on" } else { "off" }));
        if let Some(e) = &s.last_error {
            out.push_str(&format!("  Last error:     {e}\n"));
        }
    }
    Outcome::Output(out)
}

/// Runs `f` on a snapshot of the AMQP subsystem, if it runs.
fn with_amqp<R>(running: &Running, f: impl FnOnce(&AmqpView<'_>) -> R) -> Option<R> {
    let amqp = running.amqp.as_ref()?;
    let status = amqp.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let settings = &running.config.amqp;
    let view = AmqpView {
        status: &status,
        counters: &amqp.pipe.counters,
        depth: amqp.pipe.queue.depth(),
        capacity: amqp.pipe.queue.capacity(),
        exchange: &settings.events_exchange,
        persistent: settings.persistent,
        confirms: settings.confirms,
    };
    Some(f(&view))
}

fn amqp_line(running: &Running) -> SubsystemLine {
    with_amqp(running, amqp_show::status_line).unwrap_or(SubsystemLine { name: "amqp", state: "disabled".into(), counters: vec![] })
}

const SHOW_AMQP: Command = Command {
    words: c"scale show amqp",
    summary: c"Show the forwarding of Stasis events to RabbitMQ",
    usage: c"Usage: scale show amqp\n       Shows the connection state, the broker in use, the exchange, the event\n       queue's depth and capacity, and the counters: queued, published,\n       confirmed, dropped (queue full: the newest event is dropped), malformed,\n       nacked, reconnects, and the last error.\n",
    run: |args| {
        show(args, |running| match with_amqp(running, amqp_show::render) {
            Some(text) => Outcome::Output(text),
            None => Outcome::Failed("AMQP is disabled in res_scale.conf\n".into()),
        })
    },
    complete: no_completion,
};

/// Runs `f` on a snapshot of the registrations subsystem, if it runs.
fn with_registrations<R>(running: &Running, listed: Listed<'_>, f: impl FnOnce(&RegistrationsView<'_>) -> R) -> Option<R> {
    let r = running.registrations.as_ref()?;
    let status = r.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let ((local, local_total), (remote, remote_total)) = r.snapshot(listed);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let view = RegistrationsView {
        status: &status,
        counters: &r.counters,
        reconnects: r.reconnects.load(std::sync::atomic::Ordering::Relaxed),
        exchange: &r.exchange,
        local,
        local_total,
        remote,
        remote_total,
        now,
        indexed: r.indexed.then(crate::ast::contact_store::size).flatten(),
    };
    Some(f(&view))
}

fn registrations_line(running: &Running) -> SubsystemLine {
    with_registrations(running, Listed::Counts, registrations_show::status_line).unwrap_or(SubsystemLine { name: "registrations", state: "disabled".into(), counters: vec![] })
}

const SHOW_REGISTRATIONS: Command = Command {
    words: c"scale show registrations",
    summary: c"List the SIP registrations shared across the pool",
    usage: c"Usage: scale show registrations [<aor>]\n       Lists the contacts this node knows, all or those of one AOR: the AOR, the\n       contact URI, its origin ('this node' for phones registered here, else the\n       EID of the node or the id of the registrar that announced it), the time\n       left before it expires, and the user agent. Then the counters: applied,\n       ignored (own messages, duplicates, old or not from the owner), rejected by\n       reason (with [general] pool_key: unsigned, bad_signature), published, and\n       the connection to the registrations exchange.\n",
    run: |args| {
        let aor = match args {
            [] => None,
            [aor] => Some(aor.clone()),
            _ => return Outcome::ShowUsage,
        };
        with_running(|running| match with_registrations(running, aor.as_deref().map_or(Listed::All, Listed::Aor), |view| registrations_show::render(view, aor.as_deref())) {
            Some(text) => Outcome::Output(text),
            None => Outcome::Failed("Registrations are disabled in res_scale.conf\n".into()),
        })
    },
    complete: no_completion,
};

/// Runs `f` on a snapshot of the state subsystem, if it runs.
fn with_states<R>(running: &Running, f: impl FnOnce(&StatesView<'_>) -> R) -> Option<R> {
    let s = running.states.as_ref()?;
    let status = s.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let local = s.local.lock().unwrap_or_else(|e| e.into_inner()).states().clone();
    let remote = s.book.lock().unwrap_or_else(|e| e.into_inner()).remote().clone();
    let view = StatesView {
        status: &status,
        counters: &s.counters,
        reconnects: s.reconnects.load(std::sync::atomic::Ordering::Relaxed),
        exchange: &s.exchange,
        devices: &s.devices,
        local,
        remote,
        aggregate: &devstate::aggregate,
    };
    Some(f(&view))
}

/// The mailbox part of `scale show states`, if MWI is shared.
fn mwi_text(running: &Running, mailbox: Option<&str>) -> Option<String> {
    let s = running.states.as_ref()?;
    let mwi = s.mwi.as_ref()?;
    let local = mwi.local.lock().unwrap_or_else(|e| e.into_inner()).states().clone();
    let remote = s.book.lock().unwrap_or_else(|e| e.into_inner()).mwi().map(|book| book.remote().clone()).unwrap_or_default();
    let view = MwiView { counters: &mwi.counters, mailboxes: &mwi.mailboxes, eid: &running.node.eid, local, remote, held: &ast_mwi::held };
    Some(mwi_show::render(&view, mailbox))
}

fn states_line(running: &Running) -> SubsystemLine {
    with_states(running, states_show::status_line).unwrap_or(SubsystemLine { name: "state", state: "disabled".into(), counters: vec![] })
}

const SHOW_STATES: Command = Command {
    words: c"scale show states",
    summary: c"List the device and mailbox states shared across the pool",
    usage: c"Usage: scale show states [<device or mailbox>]\n       Lists the devices whose state this node shares, all or one: this node's\n       own state, the state each other node (by EID) published, and the\n       aggregate Asterisk makes of them (what hints and DEVICE_STATE() see).\n       Then the counters: published (and dropped: queue full), applied,\n       ignored (own messages, duplicates or old, devices not shared), rejected\n       by reason (with [general] pool_key: unsigned, bad_signature), and the\n       connection to the state exchange.\n       With [state] mwi, the same for mailboxes (mailbox@context): this node's\n       new/old counts, each other node's, and the one state Asterisk holds\n       with the node it came from (what MWI subscribers hear), and MWI counters.\n",
    run: |args| {
        let device = match args {
            [] => None,
            [device] => Some(device.clone()),
            _ => return Outcome::ShowUsage,
        };
        with_running(|running| match with_states(running, |view| states_show::render(view, device.as_deref())) {
            Some(text) => Outcome::Output(match mwi_text(running, device.as_deref()) {
                Some(mwi) => format!("{text}\n{mwi}"),
                None => text,
            }),
            None => Outcome::Failed("Device state sharing is disabled in res_scale.conf\n".into()),
        })
    },
    complete: no_completion,
};

const SHOW_NODES: Command = Command {
    words: c"scale show nodes",
    summary: c"List the nodes of the pool as Consul sees them",
    usage: c"Usage: scale show nodes\n       Lists every node of the pool registered in Consul with its health\n       (passing, warning, critical, maintenance), EID, SIP address, ARI URL and\n       Stasis applications. This node is marked with '*'. The list is kept up to\n       date by a Consul watch; the command itself never waits on Consul.\n",
    run: |args| {
        show(args, |running| match &running.consul {
            None => Outcome::Failed("Consul is disabled in res_scale.conf\n".into()),
            Some(c) => {
                let view = c.view.lock().unwrap_or_else(|e| e.into_inner());
                let age = view.updated.map(|t| t.elapsed());
                Outcome::Output(show::render_nodes(&view.instances, &c.node_id, age, view.last_error.as_deref()))
            }
        })
    },
    complete: no_completion,
};

const SHOW_APPS: Command = Command {
    words: c"scale show apps",
    summary: c"List the Stasis applications created from Consul",
    usage: c"Usage: scale show apps\n       Lists the Stasis applications this node registered because a key names\n       them under the Consul apps prefix, with the time each was added and the\n       events it has seen.\n",
    run: |args| {
        show(args, |running| {
            let Some(c) = &running.consul else {
                return Outcome::Failed("Consul is disabled in res_scale.conf; no applications are created\n".into());
            };
            let table = running.apps.lock().unwrap_or_else(|e| e.into_inner());
            Outcome::Output(show::render_apps(&table, &running.counters, &c.prefix))
        })
    },
    complete: no_completion,
};

const SET_DRAIN: Command = Command {
    words: c"scale set drain",
    summary: c"Put this node in or out of maintenance in Consul",
    usage: c"Usage: scale set drain {on|off}\n       'on' puts this node's service in Consul maintenance mode, so that the\n       gateway and dispatchers stop sending it new work; calls in progress go on.\n       'off' takes it back. The state survives a Consul agent restart.\n",
    run: |args| {
        let on = match args {
            [v] if v == "on" => true,
            [v] if v == "off" => false,
            _ => return Outcome::ShowUsage,
        };
        with_running(|running| {
            let Some(c) = &running.consul else {
                return Outcome::Failed("Consul is disabled in res_scale.conf; drain needs it\n".into());
            };
            let word = if on { "on" } else { "off" };
            match c.drain(on) {
                Ok(()) => Outcome::Output(format!("Drain {word}: node {} is {} in Consul\n", c.node_id, if on { "in maintenance" } else { "out of maintenance" })),
                Err(e) => Outcome::Failed(format!("Drain {word} requested, not confirmed: {e}\n")),
            }
        })
    },
    complete: |position| if position == 0 { &["on", "off"] } else { &[] },
};

/// Lets the integration tests prove that a panic in a command does not take Asterisk down.
#[cfg(feature = "test-hooks")]
const TEST_PANIC: Command = Command {
    words: c"scale test panic",
    summary: c"Panic on purpose (test builds only)",
    usage: c"Usage: scale test panic\n       Panics inside the command handler; the panic guard must turn it into a\n       failed command. Present only in builds with the test-hooks feature.\n",
    run: |_| panic!("deliberate panic from 'scale test panic'"),
    complete: no_completion,
};

/// Keeps a CLI command running (without the module's state) so that tests can unload the
/// module meanwhile.
#[cfg(feature = "test-hooks")]
const TEST_HOLD: Command = Command {
    words: c"scale test hold",
    summary: c"Keep this command running a while (test builds only)",
    usage: c"Usage: scale test hold <seconds>\n       Logs that it holds the CLI, waits <seconds> (at most 60), then returns.\n       Present only in builds with the test-hooks feature.\n",
    run: |args| {
        let seconds = match args {
            [s] => match s.parse::<u64>() {
                Ok(s) if s <= 60 => s,
                _ => return Outcome::ShowUsage,
            },
            _ => return Outcome::ShowUsage,
        };
        tracing::info!("scale test hold: holding the CLI for {seconds} s");
        std::thread::sleep(std::time::Duration::from_secs(seconds));
        Outcome::Output(format!("held {seconds} s\n"))
    },
    complete: no_completion,
};

/// Makes the next start of registrations fail, as if its thread could not be spawned.
#[cfg(feature = "test-hooks")]
const TEST_FAIL: Command = Command {
    words: c"scale test fail registrations",
    summary: c"Make the next registrations start fail (test builds only)",
    usage: c"Usage: scale test fail registrations\n       The next start of the registrations subsystem (load, or a reload that\n       restarts it) fails where it spawns its thread. Present only in builds with\n       the test-hooks feature.\n",
    run: |args| {
        if !args.is_empty() {
            return Outcome::ShowUsage;
        }
        crate::registrations::FAIL_NEXT_SPAWN.store(true, std::sync::atomic::Ordering::Relaxed);
        Outcome::Output("the next registrations start fails\n".into())
    },
    complete: no_completion,
};

/// The members of a benchmark event after its type, seq and sent_ns: what a StasisStart
/// carries, so that the callback walks a real event's shape and size (~600 bytes published).
/// `scale-bench` cuts its plain publisher's bodies from an event the module published.
#[cfg(feature = "test-hooks")]
const BENCH_EVENT_REST: &str = concat!(
    r#""timestamp":"2026-11-22T20:00:00.000+0000","args":["inbound"],"#,
    r#""channel":{"id":"1795345201.1234","name":"PJSIP/alice-00000042","state":"Up","protocol_id":"a84d2f1c5e6b4d3a9f1e2c7b8a9d0e1f@10.0.0.1","#,
    r#""caller":{"name":"Alice Example","number":"+15551230001"},"connected":{"name":"","number":""},"accountcode":"","#,
    r#""dialplan":{"context":"from-internal","exten":"1000","priority":3,"app_name":"Stasis","app_data":"bench,inbound"},"#,
    r#""creationtime":"2026-11-22T20:00:00.000+0000","language":"en","caller_rdnis":"","tenantid":""}"#
);

/// The most events one `scale test events` sends.
#[cfg(feature = "test-hooks")]
const MAX_TEST_EVENTS: u64 = 10_000_000;

/// Drives the real event path for benchmarks: builds events and hands them to the
/// application through res_stasis, which calls our callback on this thread.
#[cfg(feature = "test-hooks")]
const TEST_EVENTS: Command = Command {
    words: c"scale test events",
    summary: c"Inject events into a Stasis application (test builds only)",
    usage: c"Usage: scale test events <app> <count> [<per-second>]\n       Sends <count> (at most 10000000) events of type BenchEvent (with seq and sent_ns, the send time\n       in ns since the epoch, and a channel snapshot like a StasisStart's) to <app>\n       through stasis_app_send, paced at <per-second> if given, and reports the\n       time each send took, and how many sends were preempted, took a page fault\n       or slept. Present only in builds with the test-hooks feature.\n",
    run: |args| {
        let (app, count, rate) = match args {
            [app, count] => (app, count.parse::<u64>(), None),
            [app, count, rate] => (app, count.parse::<u64>(), rate.parse::<u64>().ok().filter(|r| *r > 0)),
            _ => return Outcome::ShowUsage,
        };
        // Each send's times are kept: a count far beyond any benchmark would not fit in memory
        // (and a failed allocation aborts Asterisk).
        let count = match count {
            Ok(count) if count > 0 && count <= MAX_TEST_EVENTS => count,
            _ => return Outcome::ShowUsage,
        };
        let mut injector = match crate::ast::stasis::Injector::new(app, &format!(r#"{{"type":"BenchEvent","seq":0,"sent_ns":0,{BENCH_EVENT_REST}}}"#)) {
            Ok(injector) => injector,
            Err(e) => return Outcome::Failed(format!("the benchmark event: {e}\n")),
        };
        let started = std::time::Instant::now();
        let mut took = Vec::with_capacity(count as usize);
        for seq in 0..count {
            if let Some(rate) = rate {
                let due = started + std::time::Duration::from_nanos(seq * 1_000_000_000 / rate);
                while std::time::Instant::now() < due {
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
                if let Err(e) = injector.renew() {
                    return Outcome::Failed(format!("event {seq}: {e}\n"));
                }
            }
            let sent_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
            match injector.send(seq as i64, sent_ns) {
                Ok(injected) => took.push(injected),
                Err(e) => return Outcome::Failed(format!("event {seq}: {e}\n")),
            }
        }
        let elapsed = started.elapsed();
        let quantiles = |mut took: Vec<std::time::Duration>| {
            if took.is_empty() {
                return "-".to_string();
            }
            took.sort();
            let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize].as_nanos() as f64 / 1e3;
            format!("p50 {:.2} us, p99 {:.2} us, max {:.2} us", at(0.5), at(0.99), at(1.0))
        };
        let count_of = |what: fn(&crate::ast::stasis::Injected) -> bool| took.iter().filter(|i| what(i)).count();
        let (preempted, faulted, waited) = (count_of(|i| i.preempted), count_of(|i| i.faulted), count_of(|i| i.waited));
        Outcome::Output(format!(
            "sent {count} events to {app} in {:.1} ms ({:.0}/s)\n  per event, our callback:    {}\n  per event, stasis_app_send: {}\n  \
             of the {count} sends, {preempted} were preempted (the scheduler ran another thread meanwhile), \
             {faulted} took a page fault, {waited} slept (waited for a lock);\n  \
             our callback in the other sends: {}\n",
            elapsed.as_secs_f64() * 1e3,
            count as f64 / elapsed.as_secs_f64(),
            quantiles(took.iter().map(|i| i.callback).collect()),
            quantiles(took.iter().map(|i| i.send).collect()),
            quantiles(took.iter().filter(|i| !i.preempted && !i.faulted && !i.waited).map(|i| i.callback).collect()),
        ))
    },
    complete: no_completion,
};
