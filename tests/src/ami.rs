//! A small Asterisk Manager Interface (AMI) client: sends actions without waiting for their
//! answers and stamps every event with its arrival (`Instant`) as it comes off the socket, so
//! a benchmark can time "action sent on one node -> event seen on another" on one clock.
//!
//! The node's manager.conf is the caller's (see [`manager_conf`]): the harness does not enable
//! AMI on its own.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub const AMI_USER: &str = "bench";
pub const AMI_SECRET: &str = "bench-secret";

/// A manager.conf listening on `127.0.0.1:<port>` with one user that may read call events and
/// run call actions (Setvar) and commands.
pub fn manager_conf(port: u16) -> String {
    format!(
        "[general]\nenabled = yes\nbindaddr = 127.0.0.1\nport = {port}\ndisplayconnects = no\n\
         [{AMI_USER}]\nsecret = {AMI_SECRET}\nread = call,system\nwrite = call,system,command\n"
    )
}

/// One event and its fields.
#[derive(Debug, Clone)]
pub struct AmiEvent {
    pub at: Instant,
    pub fields: BTreeMap<String, String>,
}

impl AmiEvent {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
}

#[derive(Default)]
struct Received {
    events: Mutex<Vec<AmiEvent>>,
    arrived: Condvar,
    /// Answers to actions: `Response: Success` and anything else.
    succeeded: AtomicU64,
    failed: AtomicU64,
}

pub struct Ami {
    writer: TcpStream,
    received: Arc<Received>,
}

impl Ami {
    /// Logs in at `127.0.0.1:<port>`; `events` is the Login's `Events:` (`call`, `off`, ...).
    pub fn connect(port: u16, events: &str) -> Ami {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("AMI connect 127.0.0.1:{port}: {e}"));
        stream.set_nodelay(true).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut banner = String::new();
        reader.read_line(&mut banner).unwrap_or_else(|e| panic!("AMI banner on port {port}: {e}"));
        assert!(banner.starts_with("Asterisk Call Manager"), "not an AMI banner on port {port}: {banner:?}");
        let mut ami = Ami { writer: stream, received: Arc::default() };
        ami.send("Login", &[("Username", AMI_USER), ("Secret", AMI_SECRET), ("Events", events)]);
        let answer = read_block(&mut reader).unwrap_or_else(|| panic!("AMI on port {port} closed during login"));
        assert_eq!(answer.get("Response").map(String::as_str), Some("Success"), "AMI login on port {port}: {answer:?}");
        let received = ami.received.clone();
        std::thread::spawn(move || {
            // Ends when the socket closes (also when `Ami` is dropped: it shuts it down).
            while let Some(fields) = read_block(&mut reader) {
                let at = Instant::now();
                if fields.contains_key("Event") {
                    received.events.lock().unwrap_or_else(|e| e.into_inner()).push(AmiEvent { at, fields });
                    received.arrived.notify_all();
                } else if fields.get("Response").map(String::as_str) == Some("Success") {
                    received.succeeded.fetch_add(1, Ordering::Relaxed);
                } else {
                    received.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        ami
    }

    /// Writes an action (its answer is only counted); returns when it was handed to the socket.
    pub fn send(&mut self, action: &str, fields: &[(&str, &str)]) -> Instant {
        let mut text = format!("Action: {action}\r\n");
        for (key, value) in fields {
            text.push_str(&format!("{key}: {value}\r\n"));
        }
        text.push_str("\r\n");
        let at = Instant::now();
        self.writer.write_all(text.as_bytes()).unwrap_or_else(|e| panic!("AMI send {action}: {e}"));
        at
    }

    /// Answers received so far: (successes, failures).
    pub fn answers(&self) -> (u64, u64) {
        (self.received.succeeded.load(Ordering::Relaxed), self.received.failed.load(Ordering::Relaxed))
    }

    /// How many events arrived so far.
    pub fn event_count(&self) -> usize {
        self.received.events.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The events after the first `from`, waiting up to `within` for at least one.
    pub fn events_after(&self, from: usize, within: Duration) -> Vec<AmiEvent> {
        let lock = self.received.events.lock().unwrap_or_else(|e| e.into_inner());
        let (events, _) = self.received.arrived.wait_timeout_while(lock, within, |events| events.len() <= from).unwrap_or_else(|e| e.into_inner());
        events.get(from..).map(<[AmiEvent]>::to_vec).unwrap_or_default()
    }
}

impl Drop for Ami {
    fn drop(&mut self) {
        let _ = self.writer.shutdown(Shutdown::Both);
    }
}

/// One message (lines up to an empty one) as its fields; `None` once the socket closed.
fn read_block(reader: &mut impl BufRead) -> Option<BTreeMap<String, String>> {
    let mut fields = BTreeMap::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let text = line.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            if fields.is_empty() {
                continue;
            }
            return Some(fields);
        }
        if let Some((key, value)) = text.split_once(':') {
            fields.insert(key.trim().to_string(), value.trim().to_string());
        }
    }
}
