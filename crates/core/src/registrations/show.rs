//! The text of `scale show registrations [aor]` and the registrations line of `scale show status`.

use std::fmt::Write;

use super::book::{Counters, Entry, Key};
use crate::amqp::publisher::AmqpStatus;
use crate::status::SubsystemLine;

/// Which contacts a view copies: none (the counts are enough), all, or those of one AOR.
#[derive(Debug, Clone, Copy)]
pub enum Listed<'a> {
    Counts,
    All,
    Aor(&'a str),
}

/// One snapshot of the registrations subsystem.
pub struct RegistrationsView<'a> {
    pub status: &'a AmqpStatus,
    pub counters: &'a Counters,
    pub reconnects: u64,
    pub exchange: &'a str,
    /// Contacts phones registered on this node (those listed), and how many there are in all.
    pub local: Vec<(Key, Entry)>,
    pub local_total: usize,
    /// Contacts applied from other nodes and registrars (those listed), and how many in all.
    pub remote: Vec<(Key, Entry)>,
    pub remote_total: usize,
    /// Unix seconds.
    pub now: u64,
    /// How many contacts res_scale's indexed store holds; None: PJSIP keeps them in sorcery's
    /// own store (`indexed_contacts = no`, or sorcery.conf maps them elsewhere).
    pub indexed: Option<u64>,
}

/// `in 3599 s` or `expired`.
fn expires_in(expires: u64, now: u64) -> String {
    if expires > now {
        format!("{} s", expires - now)
    } else {
        "expired".into()
    }
}

pub fn render(v: &RegistrationsView<'_>, aor: Option<&str>) -> String {
    let mut rows: Vec<(&Key, &Entry, bool)> = v.local.iter().map(|(k, e)| (k, e, true)).chain(v.remote.iter().map(|(k, e)| (k, e, false))).filter(|(k, _, _)| aor.is_none_or(|a| k.0 == a)).collect();
    rows.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = String::new();
    let width = |f: &dyn Fn(&(&Key, &Entry, bool)) -> usize, min: usize| rows.iter().map(f).max().unwrap_or(0).clamp(min, 60);
    let (wa, wu, wo) = (width(&|r| r.0 .0.len(), 3), width(&|r| r.0 .1.len(), 11), width(&|r| if r.2 { 9 } else { r.1.origin.len() }, 6));
    if rows.is_empty() {
        match aor {
            Some(aor) => {
                let _ = writeln!(out, "No contact known for AOR '{aor}'.");
            }
            None => {
                let _ = writeln!(out, "No contact known: no phone registered here and none announced by others.");
            }
        }
    } else {
        let _ = writeln!(out, "{:<wa$}  {:<wu$}  {:<wo$}  {:>10}  User agent", "AOR", "Contact URI", "Origin", "Expires in");
        for (key, entry, local) in &rows {
            let origin = if *local { "this node" } else { entry.origin.as_str() };
            let ua = if entry.contact.user_agent.is_empty() { "-" } else { &entry.contact.user_agent };
            let _ = writeln!(out, "{:<wa$}  {:<wu$}  {:<wo$}  {:>10}  {ua}", key.0, key.1, origin, expires_in(entry.expires(), v.now));
        }
    }
    let local = rows.iter().filter(|r| r.2).count();
    let _ = writeln!(out, "{} contact(s): {local} registered on this node, {} from others.", rows.len(), rows.len() - local);
    let c = v.counters;
    let _ = writeln!(out);
    let lines: [(&str, String); 9] = [
        ("State", format!("{} (exchange {})", v.status.state, v.exchange)),
        (
            "PJSIP store",
            match v.indexed {
                Some(n) => format!("indexed by res_scale ({n} contact(s) in PJSIP)"),
                None => "sorcery.conf's (not indexed)".into(),
            },
        ),
        ("Broker", if v.status.broker.is_empty() { "-".into() } else { v.status.broker.clone() }),
        ("Applied", format!("{} created or refreshed, {} removed, {} taken over by this node's registrar", Counters::get(&c.applied), Counters::get(&c.removed), Counters::get(&c.taken_over))),
        ("Ignored", format!("{} own, {} duplicate/old/not owner", Counters::get(&c.ignored_own), Counters::get(&c.ignored_stale))),
        ("Rejected", format!("{} ({})", c.rejected_total(), c.rejected_by_reason())),
        ("Published", format!("{} ({} dropped: queue full)", Counters::get(&c.published), Counters::get(&c.publish_dropped))),
        (
            "Sync/loss",
            format!(
                "{} SYNC request(s) answered, {} contact(s) withdrawn for lost nodes, {} reconnect(s)",
                Counters::get(&c.sync_requests_answered),
                Counters::get(&c.node_loss_removed),
                v.reconnects
            ),
        ),
        ("Last error", v.status.last_error.clone().unwrap_or_else(|| "-".into())),
    ];
    for (k, val) in lines {
        let _ = writeln!(out, "  {:<12} {val}", format!("{k}:"));
    }
    out
}

pub fn status_line(v: &RegistrationsView<'_>) -> SubsystemLine {
    let c = v.counters;
    SubsystemLine {
        name: "registrations",
        state: v.status.state.clone(),
        counters: vec![
            ("local", v.local_total as u64),
            ("remote", v.remote_total as u64),
            ("applied", Counters::get(&c.applied)),
            ("ignored", Counters::get(&c.ignored_own) + Counters::get(&c.ignored_stale)),
            ("rejected", c.rejected_total()),
            ("published", Counters::get(&c.published)),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registrations::message::Contact;

    fn entry(origin: &str, uri: &str, expires: u64, ua: &str) -> Entry {
        Entry { origin: origin.into(), seq: 1, contact: Contact { uri: uri.into(), expires: Some(expires), user_agent: ua.into(), ..Default::default() } }
    }

    #[test]
    fn lists_local_and_remote_contacts_with_origin_and_expiry() {
        let counters = Counters::default();
        counters.reject("bad_json");
        let status = AmqpStatus { state: "connected".into(), broker: "amqp://guest:****@h/%2f".into(), last_error: None };
        let view = RegistrationsView {
            status: &status,
            counters: &counters,
            reconnects: 0,
            exchange: "res_scale.registrations",
            local: vec![(("bob".into(), "sip:bob@10.0.0.2".into()), entry("me", "sip:bob@10.0.0.2", 1_060, "Yealink"))],
            local_total: 1,
            remote: vec![(("alice".into(), "sip:alice@10.0.0.1".into()), entry("02:42:ac:11:00:03", "sip:alice@10.0.0.1", 1_030, ""))],
            remote_total: 1,
            now: 1_000,
            indexed: Some(2),
        };
        let text = render(&view, None);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("AOR    Contact URI         Origin"), "{text}");
        assert!(lines[1].starts_with("alice  sip:alice@10.0.0.1  02:42:ac:11:00:03") && lines[1].ends_with("30 s  -"), "{text}");
        assert!(lines[2].contains("this node") && lines[2].ends_with("60 s  Yealink"), "{text}");
        assert!(text.contains("2 contact(s): 1 registered on this node, 1 from others."), "{text}");
        assert!(text.contains("  Rejected:    1 (bad_json=1)"), "{text}");
        assert!(text.contains("  PJSIP store: indexed by res_scale (2 contact(s) in PJSIP)"), "{text}");
        assert!(render(&view, Some("alice")).contains("1 contact(s): 0 registered on this node, 1 from others."));
        assert!(render(&view, Some("carol")).starts_with("No contact known for AOR 'carol'."));
        assert_eq!(status_line(&view).counters[..2], [("local", 1), ("remote", 1)]);
    }

    #[test]
    fn a_contact_is_expired_from_its_expiry_second_on() {
        assert_eq!(expires_in(1_001, 1_000), "1 s");
        assert_eq!(expires_in(1_000, 1_000), "expired");
    }
}
