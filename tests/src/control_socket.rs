//! CLI commands through a node's control socket, for benchmarks that poll.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::Node;

/// A CLI command through the node's control socket, the way `asterisk -rx` does it ("cli quit
/// after <command>", NUL-terminated; Asterisk runs it, writes the output and closes). No
/// process is started: a poll costs well under a millisecond of our CPU, where `node.cli`
/// (`docker exec`) takes ~140 ms and `asterisk -rx` in the rootfs ~12 ms, which would blur
/// sub-second figures and take CPU from the node on a 2-core machine. The output starts with
/// Asterisk's banner line.
pub fn socket_cli(node: &Node, command: &str) -> String {
    let path = node.dir.join("run/asterisk.ctl");
    let mut socket = UnixStream::connect(&path).unwrap_or_else(|e| panic!("connect to {}: {e}", path.display()));
    // Long enough for a paced `scale test events` (200 events at 2/s), which answers at the end.
    socket.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    socket.write_all(format!("cli quit after {command}\0").as_bytes()).unwrap_or_else(|e| panic!("{}: send '{command}': {e}", node.name));
    let mut out = Vec::new();
    socket.read_to_end(&mut out).unwrap_or_else(|e| panic!("{}: read the output of '{command}': {e}", node.name));
    String::from_utf8_lossy(&out).into_owned()
}
