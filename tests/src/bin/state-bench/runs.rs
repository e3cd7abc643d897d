//! The three measurements. Each ends every device it touches in a state different from the one
//! it found (B's hints only report changes): latency runs alternate INUSE and ONHOLD, bursts
//! and feeds go INUSE, ONHOLD, ... and end on BUSY, so the next run starts on INUSE.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use res_scale_tests::ami::{Ami, AmiEvent};
use res_scale_tests::amqp::AmqpProbe;
use res_scale_tests::control_socket::socket_cli;
use res_scale_tests::Node;

use crate::setup::{hint_status, set_state, state_line, BURST_PREFIX, DEVICES, FEED_PREFIX, LATENCY_PREFIX};

/// Changes per second in a latency run.
const PACE: u64 = 100;
/// How long after the last change a latency run waits for late ones.
const LATE: Duration = Duration::from_secs(10);
/// How long a burst or feed may go without B's hints moving before the rest counts as lost.
const STALL: Duration = Duration::from_secs(20);
/// The origin of the feed's messages: no node of the pool, so B applies them all.
const FEED_ORIGIN: &str = "02:fe:ed:00:00:01";

pub struct Latency {
    /// Change sent on A -> its ExtensionStatus read from B's AMI, of every change seen.
    pub samples: Vec<Duration>,
    pub lost: usize,
    /// With a broker to watch (res_scale): change sent on A -> its message delivered to a
    /// consumer of the benchmark's own, bound to the exchange beside B's queue (wall clock).
    pub to_broker: Vec<Duration>,
}

/// The benchmark's own queue on the state exchange during a latency run.
const WATCH_QUEUE: &str = "state-bench-watch";

/// 1,000 changes at 100/s, one per device `lat<i>`, on node A until node B's hint reports it.
/// With `watch` (the broker's URL), the messages A publishes are also timed to a consumer of
/// the benchmark's own: how much of the way is A and the broker, how much B.
pub fn latency(a: &mut Ami, b: &Ami, run: usize, watch: Option<&str>) -> Latency {
    let state = ["INUSE", "ONHOLD"][run % 2];
    let watcher = watch.map(|url| {
        let probe = AmqpProbe::new(url);
        probe.bind_queue_to_existing(WATCH_QUEUE, "res_scale.state", "device.*");
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let consumer = std::thread::spawn(move || {
            let got = probe.consume(WATCH_QUEUE, DEVICES, Duration::from_secs(DEVICES as u64 / PACE) + LATE, move || {
                let _ = ready_tx.send(());
            });
            probe.delete_queue(WATCH_QUEUE);
            got
        });
        ready.recv().expect("the watching consumer started");
        consumer
    });
    let from = b.event_count();
    let start = Instant::now();
    let mut sent = Vec::with_capacity(DEVICES);
    let mut sent_wall = Vec::with_capacity(DEVICES);
    for i in 0..DEVICES {
        std::thread::sleep((start + Duration::from_nanos(i as u64 * 1_000_000_000 / PACE)).saturating_duration_since(Instant::now()));
        sent_wall.push(SystemTime::now());
        sent.push(set_state(a, &format!("{LATENCY_PREFIX}{i}"), state));
    }
    let mut seen: Vec<Option<Instant>> = vec![None; DEVICES];
    let deadline = Instant::now() + LATE;
    let mut cursor = from;
    while seen.iter().any(Option::is_none) && Instant::now() < deadline {
        let events = b.events_after(cursor, Duration::from_millis(100));
        cursor += events.len();
        for (i, at) in hint_changes(&events, LATENCY_PREFIX, state) {
            if seen[i].is_none() && at >= sent[i] {
                seen[i] = Some(at);
            }
        }
    }
    let samples: Vec<Duration> = seen.iter().zip(&sent).filter_map(|(seen, sent)| seen.map(|at| at - *sent)).collect();
    let delivered = watcher.map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).unwrap_or_default();
    let mut to_broker: Vec<Duration> = delivered
        .iter()
        .filter_map(|(message, at)| {
            let i: usize = message.json["device"].as_str()?.strip_prefix("Custom:")?.strip_prefix(LATENCY_PREFIX)?.parse().ok()?;
            at.duration_since(*sent_wall.get(i)?).ok()
        })
        .collect();
    to_broker.sort();
    Latency { lost: DEVICES - samples.len(), samples, to_broker }
}

/// A burst or a feed: `n` changes over the 1,000 devices, then how long until each device's
/// hint on B reported its last state.
pub struct Rate {
    pub n: usize,
    /// Until the sender was done: A answered every Setvar, or the broker took every message
    /// (for a queued feed: the publishing before the clock started).
    pub sent: Duration,
    /// Until B's res_scale counted them all applied (feeds only).
    pub applied: Option<Duration>,
    /// Until the last device's hint on B reported its final state; None: some never did.
    pub done: Option<Duration>,
    /// Hint changes B reported for these devices (Asterisk's hints read the current state, so
    /// a hint may skip a change that a later one overtook).
    pub events: usize,
    /// Devices whose hint on B never reported the final state.
    pub lost: usize,
    /// res_scale's counters over a burst: A published, A dropped (queue full), B applied.
    pub messages: Option<[u64; 3]>,
}

impl Rate {
    pub fn per_second(&self) -> Option<f64> {
        self.done.map(|d| self.n as f64 / d.as_secs_f64())
    }
}

/// The state of pass `p` of `passes`.
fn pass_state(p: usize, passes: usize) -> &'static str {
    if p + 1 == passes {
        "BUSY"
    } else {
        ["INUSE", "ONHOLD"][p % 2]
    }
}

/// `passes` × 1,000 changes on node A through AMI, written as fast as A takes them. With
/// `nodes` (A, B: res_scale runs), res_scale's counters are read before and after.
pub fn burst(a: &mut Ami, b: &Ami, passes: usize, nodes: Option<(&Node, &Node)>) -> Rate {
    let counted_before = nodes.map(message_counts);
    let from = b.event_count();
    let (answered_before, _) = a.answers();
    let n = passes * DEVICES;
    let start = Instant::now();
    for p in 0..passes {
        for i in 0..DEVICES {
            set_state(a, &format!("{BURST_PREFIX}{i}"), pass_state(p, passes));
        }
    }
    let mut sent = None;
    let mut rate = until_final(b, from, BURST_PREFIX, start, || {
        if sent.is_none() && a.answers().0 >= answered_before + n as u64 {
            sent = Some(start.elapsed());
        }
        sent.is_some()
    });
    rate.n = n;
    rate.messages = nodes.map(message_counts).zip(counted_before).map(|(after, before)| [0, 1, 2].map(|i| after[i] - before[i]));
    rate.sent = sent.unwrap_or_else(|| {
        let (ok, failed) = a.answers();
        panic!("node A answered {} of {n} Setvar ({failed} failures in all)", ok - answered_before)
    });
    rate
}

/// How a feed reaches node B.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// While it is published: B can go no faster than the publisher and the broker.
    Live,
    /// Queued at the broker while B's Asterisk is stopped (SIGSTOP), timed from its SIGCONT:
    /// what B applies when the messages are there.
    Queued,
}

/// `passes` × 1,000 state messages of a foreign origin published straight to the exchange as
/// fast as the broker takes them (node B's share of a pool-wide storm, without node A's own
/// cost in front of it).
pub fn feed(probe: &AmqpProbe, b_node: &Node, b: &Ami, passes: usize, how: Feed) -> Rate {
    let seq_base = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
    let mut keys = Vec::new();
    let mut bodies = Vec::new();
    for p in 0..passes {
        for i in 0..DEVICES {
            let device = format!("Custom:{FEED_PREFIX}{i}");
            let state = pass_state(p, passes);
            bodies.push(format!(r#"{{"type":"DEVICE_STATE","device":"{device}","state":"{state}","cachable":true,"origin":"{FEED_ORIGIN}","seq":{}}}"#, seq_base + p as u64).into_bytes());
            keys.push(format!("device.{device}"));
        }
    }
    let n = bodies.len() as u64;
    let applied_before = applied(b_node);
    let from = b.event_count();
    let signal = |name: &str| {
        let status = std::process::Command::new("kill").args([name, &b_node.pid().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill {name} {}", b_node.name);
    };
    if how == Feed::Queued {
        signal("-STOP");
    }
    let mut start = Instant::now();
    let sent = probe.publish_burst("res_scale.state", |i| keys[i].clone(), &bodies, &[], false);
    if how == Feed::Queued {
        start = Instant::now();
        signal("-CONT");
    }
    let mut applied_at = None;
    let mut last_poll = Instant::now();
    let mut rate = until_final(b, from, FEED_PREFIX, start, || {
        if applied_at.is_none() && last_poll.elapsed() >= Duration::from_millis(20) {
            last_poll = Instant::now();
            if applied(b_node) >= applied_before + n {
                applied_at = Some(start.elapsed());
            }
        }
        applied_at.is_some()
    });
    let applied_now = applied(b_node) - applied_before;
    assert!(applied_now <= n, "B applied {applied_now} of {n}");
    rate.n = n as usize;
    rate.sent = sent;
    rate.applied = applied_at;
    if applied_at.is_none() {
        eprintln!("feed: node B applied {applied_now} of {n} ({})", state_line(b_node));
    }
    rate
}

/// Reads B's events until every device `<prefix><i>` reported BUSY (the final pass), calling
/// `poll` (true: the sender's own end is seen) in between and after, until it says so; gives
/// up after [`STALL`] without progress.
fn until_final(b: &Ami, from: usize, prefix: &str, start: Instant, mut poll: impl FnMut() -> bool) -> Rate {
    let mut done: Vec<bool> = vec![false; DEVICES];
    let (mut remaining, mut events, mut last) = (DEVICES, 0, None);
    let mut progress = Instant::now();
    let mut cursor = from;
    while remaining > 0 && progress.elapsed() < STALL {
        let batch = b.events_after(cursor, Duration::from_millis(10));
        cursor += batch.len();
        events += batch.iter().filter(|e| device_index(e, prefix).is_some()).count();
        for (i, at) in hint_changes(&batch, prefix, "BUSY") {
            if !done[i] {
                done[i] = true;
                remaining -= 1;
                last = Some(at);
                progress = Instant::now();
            }
        }
        poll();
    }
    // The sender's own end may come after the last hint change.
    let settle = Instant::now();
    while !poll() && settle.elapsed() < STALL {
        std::thread::sleep(Duration::from_millis(10));
    }
    Rate { n: 0, sent: Duration::ZERO, applied: None, done: (remaining == 0).then(|| last.unwrap() - start), events, lost: remaining, messages: None }
}

/// The device number of an ExtensionStatus of hint `<prefix><i>`.
fn device_index(event: &AmiEvent, prefix: &str) -> Option<usize> {
    if event.get("Event") != Some("ExtensionStatus") {
        return None;
    }
    event.get("Exten")?.strip_prefix(prefix)?.parse().ok().filter(|i| *i < DEVICES)
}

/// (device number, arrival) of every ExtensionStatus of hint `<prefix><i>` reporting `state`.
fn hint_changes<'a>(events: &'a [AmiEvent], prefix: &'a str, state: &'a str) -> impl Iterator<Item = (usize, Instant)> + 'a {
    let status = hint_status(state);
    events.iter().filter(move |e| e.get("Status") == Some(status)).filter_map(move |e| device_index(e, prefix).map(|i| (i, e.at)))
}

/// res_scale's counters: [published by A, dropped by A (queue full), applied by B].
fn message_counts((a, b): (&Node, &Node)) -> [u64; 3] {
    // One device's row only: the counters without a 3,000-line listing.
    let (a_text, b_text) = (socket_cli(a, "scale show states Custom:sync"), socket_cli(b, "scale show states Custom:sync"));
    let field = |text: &str, label: &str, nth: usize| -> u64 {
        let line = text.lines().find_map(|l| l.trim_start().strip_prefix(label)).unwrap_or_else(|| panic!("no '{label}' in:\n{text}"));
        let numbers: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
        numbers[nth]
    };
    [field(&a_text, "Published:", 0), field(&a_text, "Published:", 1), field(&b_text, "Applied:", 0)]
}

/// res_scale's `applied` counter on `node`.
fn applied(node: &Node) -> u64 {
    let line = state_line(node);
    line.split_whitespace().find_map(|w| w.strip_prefix("applied=")).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no applied= in {line}"))
}
