//! One Stasis event on its way to RabbitMQ, and the bounded queue between Asterisk's threads
//! and the publisher.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

/// An event ready to publish: the ARI JSON with `"application"` added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub app: String,
    pub event_type: String,
    pub body: Vec<u8>,
}

impl Event {
    /// Builds the body from Asterisk's dump by adding `"application"` as the first member,
    /// without parsing the rest (this runs on Asterisk's thread).
    pub fn new(app: &str, event_type: &str, ari_json: &str) -> Option<Event> {
        let rest = ari_json.trim_start().strip_prefix('{')?;
        let app_json = serde_json::to_string(app).ok()?;
        let separator = if rest.trim_start().starts_with('}') { "" } else { "," };
        let mut body = Vec::with_capacity(ari_json.len() + app_json.len() + 16);
        body.extend_from_slice(b"{\"application\":");
        body.extend_from_slice(app_json.as_bytes());
        body.extend_from_slice(separator.as_bytes());
        body.extend_from_slice(rest.as_bytes());
        Some(Event { app: app.to_string(), event_type: event_type.to_string(), body })
    }

    /// `stasis.app.<app>.<eid>`: a binding on `stasis.app.<app>.#` gets one app from every node.
    pub fn routing_key(&self, eid: &str) -> String {
        format!("stasis.app.{}.{eid}", self.app)
    }
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
mod tests {
    use super::*;

    #[test]
    fn application_is_added_first_and_the_rest_kept_verbatim() {
        let e = Event::new("conf", "StasisStart", r#"{"type":"StasisStart","asterisk_id":"02:00:00:00:00:01"}"#).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
        assert_eq!(v["application"], "conf");
        assert_eq!(v["type"], "StasisStart");
        assert!(e.body.starts_with(br#"{"application":"conf","type""#));
        let empty = Event::new("conf", "X", "{}").unwrap();
        assert_eq!(empty.body, br#"{"application":"conf"}"#);
        assert!(Event::new("conf", "X", "[1]").is_none());
        assert_eq!(e.routing_key("02:00:00:00:00:01"), "stasis.app.conf.02:00:00:00:00:01");
    }

    #[test]
    fn a_full_queue_drops_the_newest_and_counts_it() {
        let counters = Arc::new(Counters::default());
        let (q, mut rx) = EventQueue::new(2, counters.clone());
        let ev = |n: &str| Event::new("a", n, "{}").unwrap();
        assert!(q.push(ev("1")) && q.push(ev("2")));
        assert!(!q.push(ev("3")));
        assert_eq!((Counters::get(&counters.queued), Counters::get(&counters.dropped), q.depth()), (2, 1, 2));
        assert_eq!(rx.try_recv().unwrap().event_type, "1");
        assert_eq!(rx.try_recv().unwrap().event_type, "2");
    }
}
