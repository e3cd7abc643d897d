//! The text of `scale show states [device]` and the state line of `scale show status`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::book::{Counters, RemoteStates};
use super::devices::DevicePatterns;
use super::local::LocalState;
use crate::amqp::publisher::AmqpStatus;
use crate::status::SubsystemLine;

/// One snapshot of the state subsystem.
pub struct StatesView<'a> {
    pub status: &'a AmqpStatus,
    pub counters: &'a Counters,
    pub reconnects: u64,
    pub exchange: &'a str,
    pub devices: &'a DevicePatterns,
    /// This node's own states.
    pub local: BTreeMap<String, LocalState>,
    /// The states learned from others.
    pub remote: RemoteStates,
    /// What Asterisk makes of each device (its aggregate over every origin).
    pub aggregate: &'a dyn Fn(&str) -> String,
}

impl StatesView<'_> {
    /// Every device with a state of this node or of another.
    fn names(&self) -> BTreeSet<&str> {
        self.local.keys().chain(self.remote.keys()).map(String::as_str).collect()
    }
}

/// `INUSE`, with a mark for states Asterisk does not cache (they replace the aggregate).
fn state_text(state: &str, cachable: bool) -> String {
    if cachable {
        state.to_string()
    } else {
        format!("{state} (not cached)")
    }
}

pub fn render(v: &StatesView<'_>, device: Option<&str>) -> String {
    let names: Vec<&str> = v.names().into_iter().filter(|d| device.is_none_or(|wanted| wanted == *d)).collect();
    let rows: Vec<[String; 4]> = names
        .iter()
        .map(|d| {
            let here = v.local.get(*d).map_or("-".into(), |l| state_text(l.state, l.cachable));
            let others = v.remote.get(*d).map(|origins| origins.iter().map(|(o, r)| format!("{o}={}", state_text(r.state, r.cachable))).collect::<Vec<_>>().join(" "));
            [d.to_string(), here, others.unwrap_or_else(|| "-".into()), (v.aggregate)(d)]
        })
        .collect();
    let mut out = String::new();
    if rows.is_empty() {
        let _ = match device {
            Some(d) => writeln!(out, "No state known for device '{d}'."),
            None => writeln!(out, "No device state known: none changed here or was shared by others."),
        };
    } else {
        table(&mut out, ["Device", "This node", "Others", "Aggregate"], &rows);
    }
    let local = names.iter().filter(|d| v.local.contains_key(**d)).count();
    let remote = names.iter().filter(|d| v.remote.contains_key(**d)).count();
    let _ = writeln!(out, "{} device(s): {local} with a state of this node, {remote} with states of others.", names.len());
    let c = v.counters;
    let _ = writeln!(out);
    let lines: [(&str, String); 9] = [
        ("State", format!("{} (exchange {})", v.status.state, v.exchange)),
        ("Broker", if v.status.broker.is_empty() { "-".into() } else { v.status.broker.clone() }),
        ("Devices", format!("{} shared", v.devices)),
        ("Published", format!("{} ({} dropped: queue full), {} reconnect(s)", Counters::get(&c.published), Counters::get(&c.publish_dropped), v.reconnects)),
        ("Applied", Counters::get(&c.applied).to_string()),
        ("Ignored", format!("{} own, {} duplicate/old, {} not shared", Counters::get(&c.ignored_own), Counters::get(&c.ignored_stale), Counters::get(&c.ignored_not_shared))),
        ("Rejected", format!("{} ({})", c.rejected.total(), c.rejected.by_reason())),
        ("SYNC", format!("{} asked, {} answered; {} state(s) cleared for nodes that left", Counters::get(&c.sync_requested), Counters::get(&c.sync_answered), Counters::get(&c.cleared_lost))),
        ("Last error", v.status.last_error.clone().unwrap_or_else(|| "-".into())),
    ];
    fields(&mut out, 12, &lines);
    out
}

/// Columns as wide as their widest cell (at most 60), the last one as it is.
pub(crate) fn table(out: &mut String, header: [&str; 4], rows: &[[String; 4]]) {
    let width = |i: usize| rows.iter().map(|r| r[i].len()).max().unwrap_or(0).clamp(header[i].len(), 60);
    let (w0, w1, w2) = (width(0), width(1), width(2));
    let _ = writeln!(out, "{:<w0$}  {:<w1$}  {:<w2$}  {}", header[0], header[1], header[2], header[3]);
    for [a, b, c, d] in rows {
        let _ = writeln!(out, "{a:<w0$}  {b:<w1$}  {c:<w2$}  {d}");
    }
}

/// `  Label:      value` lines, the values aligned after `width` characters of label.
pub(crate) fn fields(out: &mut String, width: usize, lines: &[(&str, String)]) {
    for (k, val) in lines {
        let _ = writeln!(out, "  {:<width$} {val}", format!("{k}:"));
    }
}

pub fn status_line(v: &StatesView<'_>) -> SubsystemLine {
    let c = v.counters;
    SubsystemLine {
        name: "state",
        state: v.status.state.clone(),
        counters: vec![
            ("local", v.local.len() as u64),
            ("remote", v.remote.values().map(|o| o.len() as u64).sum()),
            ("published", Counters::get(&c.published)),
            ("applied", Counters::get(&c.applied)),
            ("ignored", Counters::get(&c.ignored_own) + Counters::get(&c.ignored_stale) + Counters::get(&c.ignored_not_shared)),
            ("rejected", c.rejected.total()),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::book::Remote;

    #[test]
    fn lists_each_device_with_this_nodes_state_the_others_and_the_aggregate() {
        let counters = Counters::default();
        counters.rejected.count("unknown_state");
        let status = AmqpStatus { state: "connected".into(), broker: "amqp://guest:****@h/%2f".into(), last_error: None };
        let devices = DevicePatterns::parse("").unwrap();
        let mut remote = RemoteStates::new();
        remote.entry("Custom:agent1".into()).or_default().insert("02:00:00:00:00:0a".into(), Remote { state: "INUSE", cachable: true, seq: 1 });
        remote.entry("Local/x".into()).or_default().insert("02:00:00:00:00:0b".into(), Remote { state: "RINGING", cachable: false, seq: 1 });
        let local = BTreeMap::from([("Custom:agent1".to_string(), LocalState { state: "NOT_INUSE", cachable: true, seq: 1 }), ("PJSIP/bob".to_string(), LocalState { state: "UNAVAILABLE", cachable: true, seq: 2 })]);
        let aggregate = |d: &str| if d == "Custom:agent1" { "INUSE".to_string() } else { "UNKNOWN".to_string() };
        let view = StatesView { status: &status, counters: &counters, reconnects: 0, exchange: "res_scale.state", devices: &devices, local, remote, aggregate: &aggregate };
        let text = render(&view, None);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "Device         This node    Others                                  Aggregate", "{text}");
        assert_eq!(lines[1], "Custom:agent1  NOT_INUSE    02:00:00:00:00:0a=INUSE                 INUSE", "{text}");
        assert!(lines[2].starts_with("Local/x        -            02:00:00:00:00:0b=RINGING (not cached)"), "{text}");
        assert!(lines[3].starts_with("PJSIP/bob      UNAVAILABLE  -"), "{text}");
        assert!(text.contains("3 device(s): 2 with a state of this node, 2 with states of others."), "{text}");
        assert!(text.contains("  Rejected:    1 (unknown_state=1)"), "{text}");
        assert!(text.contains("  Devices:     (all) shared"), "{text}");
        let one = render(&view, Some("Custom:agent1"));
        assert!(one.contains("1 device(s): 1 with a state of this node, 1 with states of others."), "{one}");
        assert!(render(&view, Some("PJSIP/carol")).starts_with("No state known for device 'PJSIP/carol'."));
        let line = status_line(&view);
        assert_eq!((line.name, &line.counters[..2]), ("state", &[("local", 2), ("remote", 2)][..]));
    }
}
