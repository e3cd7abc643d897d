//! One Stasis event on its way to RabbitMQ: the writer that turns Asterisk's JSON into its
//! body on the callback's thread, and the bounded queue between Asterisk's threads and the
//! publisher.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

/// An event's place in its application's sequence on one node: `value` rises by one per event
/// from `start`, the clock in microseconds when the node added the app. A re-sent event
/// carries the same value; an event dropped on the way shows as a gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seq {
    pub value: u64,
    pub start: u64,
}

/// An event ready to publish: the ARI JSON with `"application"` added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Shared with every other event of the application (no allocation per event).
    pub app: Arc<str>,
    /// Assigned in the Stasis callback, so a drop before publishing is a gap.
    pub seq: Seq,
    body: Vec<u8>,
    /// Where the `type` member's text sits in the body (between its quotes).
    event_type: Range<usize>,
}

impl Event {
    /// The event's `type` as written in the body, e.g. `StasisStart` (empty when it had none).
    pub fn event_type(&self) -> &str {
        std::str::from_utf8(&self.body[self.event_type.clone()]).unwrap_or_default()
    }

    /// The message body: the ARI JSON with `"application"` first.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// `stasis.app.<app>.<eid>`: a binding on `stasis.app.<app>.#` gets one app from every node.
    pub fn routing_key(&self, eid: &str) -> String {
        // Built by hand: the publisher makes one per event, and format!'s machinery cost about
        // a tenth of its thread's time in a profile.
        const PREFIX: &str = "stasis.app.";
        let mut key = String::with_capacity(PREFIX.len() + self.app.len() + 1 + eid.len());
        key.push_str(PREFIX);
        key.push_str(&self.app);
        key.push('.');
        key.push_str(eid);
        key
    }
}

/// Writes an event's body while the caller walks Asterisk's JSON object: `{"application":..`
/// first, then each top-level member, compact. It runs on Asterisk's thread, so the body is
/// the event's only allocation and the event type is found on the way, not looked up.
pub struct EventWriter {
    app: Arc<str>,
    seq: Seq,
    body: Vec<u8>,
    event_type: Range<usize>,
    /// The member being written is the top-level `type`.
    at_type: bool,
}

/// Room for a typical ARI event (a channel snapshot is 600-900 bytes), so the body rarely grows.
const BODY_CAPACITY: usize = 1024;

impl EventWriter {
    pub fn new(app: Arc<str>, seq: Seq) -> EventWriter {
        let mut body = Vec::with_capacity(BODY_CAPACITY);
        body.extend_from_slice(b"{\"application\":");
        write_string(&mut body, app.as_bytes());
        EventWriter { app, seq, body, event_type: 0..0, at_type: false }
    }

    /// Starts the top-level member `key`; false when the member must be left out (an
    /// `application` of Asterisk's own: ours comes first), and then nothing is written.
    pub fn key(&mut self, key: &[u8]) -> bool {
        if key == b"application" {
            return false;
        }
        self.body.push(b',');
        write_string(&mut self.body, key);
        self.body.push(b':');
        self.at_type = key == b"type";
        true
    }

    /// Writes a top-level string value; the one of `type` is also the event's type.
    pub fn top_string(&mut self, value: &[u8]) {
        let start = self.body.len() + 1;
        write_string(&mut self.body, value);
        if self.at_type {
            self.event_type = start..self.body.len() - 1;
        }
    }

    /// Where any other value goes (written with [`write_string`], [`write_integer`],
    /// [`write_number`] and JSON punctuation).
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.body
    }

    pub fn finish(mut self) -> Event {
        self.body.push(b'}');
        Event { app: self.app, seq: self.seq, body: self.body, event_type: self.event_type }
    }
}

/// Appends `text` as a JSON string. Asterisk's strings are UTF-8 (jansson checks them); should
/// one not be, its invalid bytes become U+FFFD rather than making the body invalid JSON.
pub fn write_string(out: &mut Vec<u8>, text: &[u8]) {
    match std::str::from_utf8(text) {
        Ok(_) => escape_into(out, text),
        Err(_) => escape_into(out, String::from_utf8_lossy(text).as_bytes()),
    }
}

fn escape_into(out: &mut Vec<u8>, text: &[u8]) {
    out.push(b'"');
    let mut copied = 0;
    for (i, &byte) in text.iter().enumerate() {
        let short = match byte {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            0x00..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(&text[copied..i]);
        out.extend_from_slice(&[b'\\', short]);
        if short == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[b'0', b'0', HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xf)]]);
        }
        copied = i + 1;
    }
    out.extend_from_slice(&text[copied..]);
    out.push(b'"');
}

/// Appends an integer (by hand: core::fmt's machinery is a lot of code to run on a cold
/// Asterisk thread for a few digits).
pub fn write_integer(out: &mut Vec<u8>, number: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = number.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if number < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends a JSON number; a non-finite one (not valid JSON) becomes `null`.
pub fn write_number(out: &mut Vec<u8>, number: f64) {
    // serde_json writes the shortest text that reads back as the same double, and null for
    // NaN and infinities; writing to a Vec cannot fail.
    let _ = serde_json::to_writer(out, &number);
}

/// Counters shared by the hot path, the publisher and the CLI.
#[derive(Debug, Default)]
pub struct Counters {
    pub queued: AtomicU64,
    /// Dropped because the queue was full (the newest event is the one dropped).
    pub dropped: AtomicU64,
    /// Events whose JSON could not be turned into a message.
    pub malformed: AtomicU64,
    pub published: AtomicU64,
    pub confirmed: AtomicU64,
    /// Publishes the broker refused (nack) and that were not retried.
    pub nacked: AtomicU64,
    pub reconnects: AtomicU64,
}

impl Counters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// The producer side, used on Asterisk's threads: never waits.
#[derive(Clone)]
pub struct EventQueue {
    tx: mpsc::Sender<Event>,
    capacity: usize,
    counters: Arc<Counters>,
}

impl EventQueue {
    pub fn new(capacity: usize, counters: Arc<Counters>) -> (EventQueue, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(capacity);
        (EventQueue { tx, capacity, counters }, rx)
    }

    /// Queues the event, or counts it dropped when the queue is full or closed.
    pub fn push(&self, event: Event) -> bool {
        match self.tx.try_send(event) {
            Ok(()) => {
                self.counters.queued.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    pub fn depth(&self) -> usize {
        self.capacity - self.tx.capacity()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const SEQ: Seq = Seq { value: 7, start: 5 };

    /// An event as the Stasis callback builds it, from members in Asterisk's order.
    pub(crate) fn event(app: &str, event_type: &str) -> Event {
        let mut w = EventWriter::new(app.into(), SEQ);
        assert!(w.key(b"type"));
        w.top_string(event_type.as_bytes());
        w.finish()
    }

    #[test]
    fn application_comes_first_and_the_members_follow_in_order() {
        let mut w = EventWriter::new("conf".into(), SEQ);
        assert!(w.key(b"type"));
        w.top_string(b"StasisStart");
        assert!(!w.key(b"application"), "Asterisk's own application member is left out");
        assert!(w.key(b"args"));
        w.out().extend_from_slice(b"[]");
        assert!(w.key(b"asterisk_id"));
        w.top_string(b"02:00:00:00:00:01");
        let e = w.finish();
        assert_eq!(e.body(), br#"{"application":"conf","type":"StasisStart","args":[],"asterisk_id":"02:00:00:00:00:01"}"#);
        assert_eq!(e.event_type(), "StasisStart");
        assert_eq!(e.seq, SEQ, "the seq given at the start travels with the event");
        assert_eq!(e.routing_key("02:00:00:00:00:01"), "stasis.app.conf.02:00:00:00:00:01");
        let empty = EventWriter::new("conf".into(), SEQ).finish();
        assert_eq!((empty.body(), empty.event_type()), (&br#"{"application":"conf"}"#[..], ""));
    }

    #[test]
    fn strings_are_escaped_as_json_and_read_back_unchanged() {
        let tricky = "a\"b\\c/\n\r\t\u{8}\u{c}\u{1}\u{1f} é \u{2028} 😀";
        let mut out = Vec::new();
        write_string(&mut out, tricky.as_bytes());
        assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), tricky);
        assert!(!out[1..out.len() - 1].iter().any(|b| *b < 0x20), "no raw control character");
        out.clear();
        write_string(&mut out, b"bad \xff byte");
        assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), "bad \u{fffd} byte");
        let mut w = EventWriter::new(r#"a"b"#.into(), SEQ);
        assert!(w.key(b"q\"k"));
        write_number(w.out(), f64::NAN);
        let body: serde_json::Value = serde_json::from_slice(w.finish().body()).unwrap();
        assert_eq!(body, serde_json::json!({"application": "a\"b", "q\"k": null}));
    }

    #[test]
    fn integers_are_written_in_full() {
        for n in [0, 7, -7, 10, 1_795_345_201_000_000_000, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            write_integer(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn numbers_read_back_as_the_same_double() {
        for n in [0.0, -1.5, 0.1, 1e300, 5e-324, 123456789.0] {
            let mut out = Vec::new();
            write_number(&mut out, n);
            assert_eq!(serde_json::from_slice::<f64>(&out).unwrap(), n, "{}", String::from_utf8_lossy(&out));
        }
    }

    #[test]
    fn a_full_queue_drops_the_newest_and_counts_it() {
        let counters = Arc::new(Counters::default());
        let (q, mut rx) = EventQueue::new(2, counters.clone());
        let ev = |n: &str| event("a", n);
        assert!(q.push(ev("1")) && q.push(ev("2")));
        assert!(!q.push(ev("3")));
        assert_eq!((Counters::get(&counters.queued), Counters::get(&counters.dropped), q.depth()), (2, 1, 2));
        assert_eq!(rx.try_recv().unwrap().event_type(), "1");
        assert_eq!(rx.try_recv().unwrap().event_type(), "2");
    }
}
