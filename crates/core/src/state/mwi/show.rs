//! The mailbox part of `scale show states [name]`: each mailbox with this node's counts, each
//! other origin's, and what Asterisk holds (one state per mailbox, with the node it came from),
//! then the MWI counters.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::book::{RemoteMailboxes, RemoteMwi};
use super::local::{Counts, LocalMailbox};
use crate::state::book::Counters;
use crate::state::devices::DevicePatterns;
use crate::state::show::{fields, table};

/// What Asterisk holds for a mailbox: its counts and the EID of the node they came from.
pub type Held = Option<(Counts, String)>;

/// One snapshot of the mailbox states.
pub struct MwiView<'a> {
    pub counters: &'a Counters,
    pub mailboxes: &'a DevicePatterns,
    /// This node's EID, to name it as "this node".
    pub eid: &'a str,
    pub local: BTreeMap<String, LocalMailbox>,
    pub remote: RemoteMailboxes,
    pub held: &'a dyn Fn(&str) -> Held,
}

fn counts(c: Counts) -> String {
    format!("{}/{}", c.new, c.old)
}

fn remote_text(r: &RemoteMwi) -> String {
    if r.deleted {
        "deleted".into()
    } else {
        counts(Counts { new: r.new, old: r.old })
    }
}

/// The mailbox table (all mailboxes, or the one named) and the counters.
pub fn render(v: &MwiView<'_>, mailbox: Option<&str>) -> String {
    let names: BTreeSet<&str> = v.local.keys().chain(v.remote.keys()).map(String::as_str).filter(|m| mailbox.is_none_or(|wanted| wanted == *m)).collect();
    let rows: Vec<[String; 4]> = names
        .iter()
        .map(|m| {
            let here = v.local.get(*m).map_or("-".into(), |l| counts(l.counts));
            let others = v.remote.get(*m).map(|origins| origins.iter().map(|(o, r)| format!("{o}={}", remote_text(r))).collect::<Vec<_>>().join(" "));
            let held = match (v.held)(m) {
                Some((c, origin)) if origin.eq_ignore_ascii_case(v.eid) => format!("{} from this node", counts(c)),
                Some((c, origin)) => format!("{} from {origin}", counts(c)),
                None => "-".into(),
            };
            [m.to_string(), here, others.unwrap_or_else(|| "-".into()), held]
        })
        .collect();
    let mut out = String::new();
    if rows.is_empty() {
        let _ = match mailbox {
            Some(m) => writeln!(out, "No MWI state known for mailbox '{m}'."),
            None => writeln!(out, "No mailbox (MWI) state known: none changed here or was shared by others."),
        };
    } else {
        table(&mut out, ["Mailbox", "This node", "Others", "Asterisk holds"], &rows);
    }
    let local = names.iter().filter(|m| v.local.contains_key(**m)).count();
    let remote = names.iter().filter(|m| v.remote.contains_key(**m)).count();
    let _ = writeln!(out, "{} mailbox(es): {local} with a state of this node, {remote} with states of others.", names.len());
    let _ = writeln!(out);
    let c = v.counters;
    let lines = [
        ("MWI", format!("{} shared, {} published ({} dropped: queue full)", v.mailboxes, Counters::get(&c.published), Counters::get(&c.publish_dropped))),
        ("MWI applied", Counters::get(&c.applied).to_string()),
        ("MWI ignored", format!("{} own, {} duplicate/old, {} not shared", Counters::get(&c.ignored_own), Counters::get(&c.ignored_stale), Counters::get(&c.ignored_not_shared))),
        ("MWI rejected", format!("{} ({})", c.rejected.total(), c.rejected.by_reason())),
    ];
    fields(&mut out, 13, &lines);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "02:00:00:00:00:01";
    const A: &str = "02:00:00:00:00:0a";

    #[test]
    fn lists_each_mailbox_with_this_nodes_counts_the_others_and_what_asterisk_holds() {
        let counters = Counters::default();
        counters.rejected.count("bad_json");
        let mailboxes = DevicePatterns::parse("").unwrap();
        let mut remote = RemoteMailboxes::new();
        remote.entry("1001@default".into()).or_default().insert(A.into(), RemoteMwi { new: 2, old: 1, deleted: false, seq: 1 });
        remote.entry("1003@default".into()).or_default().insert(A.into(), RemoteMwi { new: 0, old: 0, deleted: true, seq: 2 });
        let local = BTreeMap::from([("1002@default".to_string(), LocalMailbox { counts: Counts { new: 0, old: 4 }, seq: 1 })]);
        let held = |m: &str| match m {
            "1001@default" => Some((Counts { new: 2, old: 1 }, A.to_string())),
            "1002@default" => Some((Counts { new: 0, old: 4 }, ME.to_uppercase())),
            _ => None,
        };
        let view = MwiView { counters: &counters, mailboxes: &mailboxes, eid: ME, local, remote, held: &held };
        let text = render(&view, None);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "Mailbox       This node  Others                     Asterisk holds", "{text}");
        assert_eq!(lines[1], "1001@default  -          02:00:00:00:00:0a=2/1      2/1 from 02:00:00:00:00:0a", "{text}");
        assert_eq!(lines[2], "1002@default  0/4        -                          0/4 from this node", "{text}");
        assert_eq!(lines[3], "1003@default  -          02:00:00:00:00:0a=deleted  -", "{text}");
        assert!(text.contains("3 mailbox(es): 1 with a state of this node, 2 with states of others."), "{text}");
        assert!(text.contains("  MWI:          (all) shared, 0 published (0 dropped: queue full)"), "{text}");
        assert!(text.contains("  MWI rejected: 1 (bad_json=1)"), "{text}");
        assert!(render(&view, Some("1001@default")).contains("1 mailbox(es): 0 with a state of this node, 1 with states of others."));
        assert!(render(&view, Some("9@x")).starts_with("No MWI state known for mailbox '9@x'."));
    }
}
