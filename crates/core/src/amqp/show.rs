//! The text of `scale show amqp` and the amqp line of `scale show status`.

use std::fmt::Write;

use super::event::Counters;
use super::publisher::AmqpStatus;
use crate::status::SubsystemLine;

/// What one snapshot of the AMQP subsystem holds.
pub struct AmqpView<'a> {
    pub status: &'a AmqpStatus,
    pub counters: &'a Counters,
    pub depth: usize,
    pub capacity: usize,
    pub exchange: &'a str,
    pub persistent: bool,
    pub confirms: bool,
}

pub fn render(v: &AmqpView<'_>) -> String {
    let c = v.counters;
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let mut out = String::new();
    let rows: [(&str, String); 12] = [
        ("State", v.status.state.clone()),
        ("Broker", if v.status.broker.is_empty() { "-".into() } else { v.status.broker.clone() }),
        ("Exchange", format!("{} (persistent: {}, confirms: {})", v.exchange, yes_no(v.persistent), yes_no(v.confirms))),
        ("Queue depth", format!("{} of {}", v.depth, v.capacity)),
        ("Queued", Counters::get(&c.queued).to_string()),
        ("Published", Counters::get(&c.published).to_string()),
        ("Confirmed", Counters::get(&c.confirmed).to_string()),
        ("Dropped", format!("{} (queue full: the newest event is dropped)", Counters::get(&c.dropped))),
        ("Malformed", Counters::get(&c.malformed).to_string()),
        ("Nacked", Counters::get(&c.nacked).to_string()),
        ("Reconnects", Counters::get(&c.reconnects).to_string()),
        ("Last error", v.status.last_error.clone().unwrap_or_else(|| "-".into())),
    ];
    for (k, val) in rows {
        let _ = writeln!(out, "  {:<14} {val}", format!("{k}:"));
    }
    out
}

pub fn status_line(v: &AmqpView<'_>) -> SubsystemLine {
    let c = v.counters;
    SubsystemLine {
        name: "amqp",
        state: v.status.state.clone(),
        counters: vec![
            ("published", Counters::get(&c.published)),
            ("confirmed", Counters::get(&c.confirmed)),
            ("dropped", Counters::get(&c.dropped)),
            ("queue", v.depth as u64),
            ("reconnects", Counters::get(&c.reconnects)),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn shows_every_counter_and_the_drop_policy() {
        let counters = Counters::default();
        counters.published.store(7, Ordering::Relaxed);
        counters.dropped.store(2, Ordering::Relaxed);
        let status = AmqpStatus { state: "connected".into(), broker: "amqp://u:****@h/%2f".into(), last_error: None };
        let view = AmqpView { status: &status, counters: &counters, depth: 3, capacity: 10, exchange: "res_scale.events", persistent: false, confirms: true };
        let text = render(&view);
        assert!(text.contains("  State:         connected\n"), "{text}");
        assert!(text.contains("  Queue depth:   3 of 10\n"), "{text}");
        assert!(text.contains("  Published:     7\n"), "{text}");
        assert!(text.contains("  Dropped:       2 (queue full: the newest event is dropped)\n"), "{text}");
        assert!(text.contains("confirms: yes"), "{text}");
        let line = status_line(&view);
        assert_eq!(line.counters[0], ("published", 7));
    }
}
