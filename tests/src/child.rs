//! Services a test starts must not outlive it, even when the test process is killed outright (a
//! timeout, SIGKILL) and its Drop impls never run: each is started through `setpriv
//! --pdeathsig`, so the kernel signals it when the thread that started it goes away.
//! Containers are not children; `pool.rs` removes those left behind instead.

use std::ffi::OsStr;
use std::process::Command;

/// `program`, signalled with `signal` (e.g. "TERM", "KILL") if the starting thread dies.
pub fn tied_command(program: impl AsRef<OsStr>, signal: &str) -> Command {
    let mut command = Command::new("setpriv");
    command.args(["--pdeathsig", signal, "--"]).arg(program);
    command
}
