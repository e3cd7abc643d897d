//! Services a test starts must not outlive it, even when the test process is killed outright (a
//! timeout, SIGKILL) and its Drop impls never run: each is started through `setpriv
//! --pdeathsig`, so the kernel signals it when the thread that started it goes away.
//! Containers are not children; `pool.rs` removes those left behind instead.

use std::ffi::OsStr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// `program`, signalled with `signal` (e.g. "TERM", "KILL") if the starting thread dies.
pub fn tied_command(program: impl AsRef<OsStr>, signal: &str) -> Command {
    let mut command = Command::new("setpriv");
    command.args(["--pdeathsig", signal, "--"]).arg(program);
    command
}

/// SIGTERM, up to `grace` for the process to exit, then SIGKILL; the child is reaped.
pub fn terminate(child: &mut Child, grace: Duration) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// For a failed test: the last `lines` lines of a service's log on stderr.
pub fn print_log_tail(title: &str, log: &str, lines: usize) {
    let tail: Vec<&str> = log.lines().rev().take(lines).collect();
    eprintln!("---- last lines of {title} ----");
    for line in tail.iter().rev() {
        eprintln!("{line}");
    }
}
