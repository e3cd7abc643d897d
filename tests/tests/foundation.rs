//! The module's life in a real Asterisk 22: load, status, config errors, reload, repeated
//! unload/load, and a panic that must not take Asterisk down.

use std::time::Duration;

use res_scale_tests::{wait, Pool};

const VALID_CONF: &str = "[consul]\nenabled = no\ntoken = consul-secret-token\n\
    [amqp]\nenabled = no\nurl = amqp://scale:amqp-secret-pw@127.0.0.1:5672/%2f\nqueue_capacity = 2000\n\
    [registrations]\nenabled = no\n";

/// Whether `module show` lists res_scale as running ("Running", not "Not Running").
fn module_running(pool: &Pool) -> bool {
    let out = pool.node(0).cli("module show like res_scale");
    out.lines().any(|l| l.starts_with("res_scale.so") && l.contains(" Running") && !l.contains("Not Running"))
}

#[test]
fn loads_and_shows_status_with_identity_config_and_subsystems() {
    let pool = Pool::builder().res_scale_conf(VALID_CONF).start();
    let node = pool.node(0);

    assert!(module_running(&pool));

    let status = node.cli("scale show status");
    assert!(status.contains("res_scale 0.1.0 on Asterisk 22."), "{status}");
    assert!(status.contains(&format!("Entity ID:      {}", node.eid)), "{status}");
    assert!(status.contains(&format!("Node ID:        asterisk-{}", node.eid.replace(':', ""))), "{status}");
    assert!(status.contains("System name:    node1"), "{status}");
    assert!(status.contains("Uptime:"), "{status}");
    assert!(status.contains("queue_capacity=2000"), "{status}");
    // Secrets never reach the CLI.
    assert!(!status.contains("consul-secret-token") && !status.contains("amqp-secret-pw"), "{status}");
    assert!(status.contains("token=****") && status.contains("scale:****@127.0.0.1"), "{status}");
    for subsystem in ["consul", "amqp", "registrations"] {
        assert!(status.lines().any(|l| l.trim_start().starts_with(subsystem) && l.contains("disabled")), "no line for {subsystem}: {status}");
    }

    let help = node.cli("core show help scale");
    assert!(help.contains("scale show status") && help.contains("Show the state of res_scale"), "{help}");
    // Every command is listed and documents its usage.
    for command in ["scale show status", "scale show nodes", "scale show apps", "scale show amqp", "scale show registrations", "scale set drain"] {
        assert!(help.lines().any(|l| l.trim_start().starts_with(command)), "'{command}' missing from: {help}");
        let usage = node.cli(&format!("core show help {command}"));
        assert!(usage.contains(&format!("Usage: {command}")), "{usage}");
    }
}

#[test]
fn missing_config_file_loads_with_defaults() {
    let pool = Pool::builder().res_scale_conf("").start();
    std::fs::remove_file(pool.node(0).dir.join("etc/res_scale.conf")).unwrap();
    let node = pool.node(0);
    node.cli("module unload res_scale.so");
    node.cli("module load res_scale.so");
    let status = node.cli("scale show status");
    assert!(status.contains("res_scale.conf (absent: defaults)"), "{status}");
    assert!(status.contains("url=http://127.0.0.1:8500"), "{status}");
}

#[test]
fn bad_config_declines_with_every_problem_and_asterisk_keeps_running() {
    let pool = Pool::builder().without_module_loaded().res_scale_conf("[consul]\ncheck_ttl = often\n[amqp]\nqueue_capacity = lots\nurl = http://wrong\n[bogus]\nx = 1\n").start();
    let node = pool.node(0);

    let out = node.cli("module load res_scale.so");
    assert!(out.contains("Unable to load module res_scale.so"), "{out}");
    assert!(!module_running(&pool), "the module must not run after declining");

    let log = wait::until("the decline to be logged", Duration::from_secs(5), Duration::from_millis(100), || {
        let log = node.log();
        log.contains("res_scale declined to load").then_some(log)
    });
    for expected in [
        "res_scale.conf [consul] check_ttl = 'often' (line 2): expected a number",
        "res_scale.conf [amqp] queue_capacity = 'lots' (line 4): expected a whole number from 1 to 1000000",
        "res_scale.conf [amqp] url = 'http://wrong' (line 5): scheme must be one of: amqp, amqps",
        "res_scale.conf [bogus]: unknown section",
        "4 problem(s) in res_scale.conf",
    ] {
        assert!(log.contains(expected), "missing '{expected}' in log:\n{log}");
    }
    assert!(node.cli("core show version").contains("Asterisk 22."));

    // Fixing the file and loading again works.
    node.write_config("res_scale.conf", VALID_CONF);
    node.cli("module load res_scale.so");
    assert!(module_running(&pool));
}

#[test]
fn reload_applies_a_valid_config_and_keeps_the_old_one_on_errors() {
    let pool = Pool::builder().res_scale_conf(VALID_CONF).start();
    let node = pool.node(0);

    node.write_config("res_scale.conf", &VALID_CONF.replace("queue_capacity = 2000", "queue_capacity = 500"));
    node.cli("module reload res_scale.so");
    let status = node.cli("scale show status");
    assert!(status.contains("queue_capacity=500"), "{status}");
    node.wait_logged("res_scale.conf reloaded; new configuration in effect");

    node.write_config("res_scale.conf", &VALID_CONF.replace("queue_capacity = 2000", "queue_capacity = many"));
    node.cli("module reload res_scale.so");
    let status = node.cli("scale show status");
    assert!(status.contains("queue_capacity=500"), "the old config must stay: {status}");
    let log = node.wait_logged("res_scale.conf has errors; keeping the running configuration");
    assert!(log.contains("[amqp] queue_capacity = 'many'"), "{log}");
    assert!(module_running(&pool));
}

#[test]
fn twenty_unload_load_cycles_leak_no_threads() {
    // With Consul and RabbitMQ, so that every cycle starts and stops real tasks and connections.
    // The baseline is Asterisk before the module was ever loaded in this process.
    let pool = Pool::builder().with_consul().with_rabbitmq().without_module_loaded().start();
    let node = pool.node(0);
    let ours = |names: Vec<String>| -> Vec<String> { names.into_iter().filter(|n| n.starts_with("res_scale") || n.starts_with("lapin") || n.starts_with("async-compat")).collect() };
    // CLI connections come and go with their own threads: the baseline is the lowest count
    // seen over a second, so that a CLI thread alive at one sample cannot hide a leak.
    let baseline = (0..10)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            node.thread_count()
        })
        .min()
        .unwrap();

    for cycle in 1..=20 {
        let out = node.cli("module load res_scale.so");
        assert!(out.contains("Loaded res_scale.so"), "cycle {cycle}: {out}");
        wait::until("consul registered and amqp connected", Duration::from_secs(5), Duration::from_millis(20), || {
            let status = node.cli("scale show status");
            let line = |name: &str| status.lines().find(|l| l.trim_start().starts_with(name)).unwrap_or("").to_string();
            (line("consul").contains("registered") && line("amqp").contains("connected")).then_some(())
        });
        if cycle == 1 {
            assert!(ours(node.thread_names()).len() >= 2, "the runtime's two workers run while loaded");
        }
        let out = node.cli("module unload res_scale.so");
        assert!(out.contains("Unloaded res_scale.so"), "cycle {cycle}: {out}");
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let mut left = ours(node.thread_names());
        while !left.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            left = ours(node.thread_names());
        }
        assert!(left.is_empty(), "cycle {cycle}: threads left after unload: {left:?}");
    }
    let after = wait::until("thread count back to baseline", Duration::from_secs(10), Duration::from_millis(200), || {
        let n = node.thread_count();
        (n <= baseline).then_some(n)
    });
    assert!(!node.log().contains("panic"), "{}", node.log());
    assert!(node.cli("module load res_scale.so").contains("Loaded res_scale.so"));
    eprintln!("Asterisk threads: {baseline} before the first load, {after} after 20 load/unload cycles");
    assert!(node.cli("core show version").contains("Asterisk 22."));
}

#[test]
fn a_panic_in_a_command_is_contained() {
    let pool = Pool::builder().res_scale_conf(VALID_CONF).start();
    let node = pool.node(0);

    let out = node.cli("scale test panic");
    // The guard turns the panic into a failed command, which Asterisk reports as such.
    assert!(out.contains("Command 'scale test panic' failed."), "{out}");
    let log = wait::until("the panic to be logged", Duration::from_secs(5), Duration::from_millis(100), || {
        let log = node.log();
        log.contains("deliberate panic").then_some(log)
    });
    assert!(log.contains("internal error in a scale CLI command: deliberate panic from 'scale test panic'"), "{log}");
    assert!(node.cli("core show version").contains("Asterisk 22."));
    assert!(node.cli("scale show status").contains("res_scale 0.1.0"), "the module keeps working");
    assert!(module_running(&pool));
}

/// What a binutils tool prints about the module under test.
fn inspect(tool: &str, args: &[&str]) -> String {
    let module = res_scale_tests::testbed::Testbed::load().module;
    let out = std::process::Command::new(tool).args(args).arg(&module).output().unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(out.status.success(), "{tool} {}: {}", module.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_library_stays_mapped_after_unload_and_hands_asterisk_only_its_own_allocations() {
    // Code of the module can still run after unload (a Stasis callback copied before the app
    // went, a CLI entry Asterisk keeps, thread-key destructors): the loader must never unmap it.
    let dynamic = inspect("readelf", &["-d"]);
    assert!(dynamic.lines().any(|l| l.contains("FLAGS_1") && l.contains("NODELETE")), "no NODELETE flag:\n{dynamic}");
    // Asterisk frees CLI completions with ast_free: they come from ast_strdup, not libc.
    let imported = inspect("nm", &["-D", "--undefined-only"]);
    let names: Vec<&str> = imported.lines().filter_map(|l| l.split_whitespace().last()).map(|s| s.split('@').next().unwrap_or(s)).collect();
    assert!(names.contains(&"__ast_strdup") && !names.contains(&"strdup"), "imports: {names:?}");

    let pool = Pool::builder().res_scale_conf(VALID_CONF).start();
    let node = pool.node(0);
    let completion = node.cli("_command matchesarray \"scale set drain o\" \"o\"");
    assert!(completion.contains("on") && completion.contains("off"), "{completion:?}");
    node.cli("module unload res_scale.so");
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", node.pid())).unwrap();
    assert!(maps.lines().any(|l| l.ends_with("/res_scale.so")), "res_scale.so unmapped after unload");
    assert!(node.cli("module load res_scale.so").contains("Loaded res_scale.so"));
    assert!(node.cli("scale show status").contains("res_scale 0.1.0"));
}

#[test]
fn a_forced_unload_during_a_command_does_not_block_later_loads() {
    let pool = Pool::builder().res_scale_conf(VALID_CONF).start();
    let node = pool.node(0);
    std::thread::scope(|s| {
        let held = s.spawn(|| node.cli("scale test hold 3"));
        node.wait_logged("scale test hold: holding the CLI");
        // A soft unload waits for the command; a forced one goes ahead and Asterisk keeps the
        // running command's entry in its list.
        let out = node.cli("module unload -f res_scale.so");
        assert!(out.contains("Unloaded res_scale.so"), "{out}");
        assert!(held.join().unwrap().contains("held 3 s"));
    });
    let out = node.cli("module load res_scale.so");
    assert!(out.contains("Loaded res_scale.so"), "{out}\n{}", node.log());
    assert!(module_running(&pool));
    assert!(node.cli("scale show status").contains("res_scale 0.1.0"));
    assert!(node.cli("scale test hold 0").contains("held 0 s"));
}

#[test]
fn an_absurd_event_count_is_refused_not_fatal() {
    let pool = Pool::builder().res_scale_conf(VALID_CONF).start();
    let node = pool.node(0);
    let out = node.cli("scale test events conf 10000000000");
    assert!(out.contains("Usage: scale test events"), "{out}");
    assert!(node.cli("core show version").contains("Asterisk 22."), "Asterisk went down");
}
