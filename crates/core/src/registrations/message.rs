//! The registration message format (DESIGN.md section 5) and a decoder that accepts exactly
//! that and says precisely why it refuses anything else. Every input is untrusted: it comes
//! from any node or registrar that can publish to the exchange.
//!
//! ```text
//! {"type":"ANNOUNCE"|"WITHDRAW"|"REPLACE", "aor":"alice",
//!  "contact":{"uri":"sip:alice@192.0.2.7:5060","expires":1795345201,"path":"","user_agent":"",
//!             "via_addr":"192.0.2.7","via_port":5060,"call_id":"..."},
//!  "origin":"<eid or registrar id>", "seq":42}
//! {"type":"ANNOUNCE","origin":"<replier>","contacts":[{"aor":..,"contact":{..},"origin":..,"seq":..}, ..]}
//! {"type":"SYNC_REQUEST","origin":"<asker>"}     (the reply queue is the AMQP reply-to)
//! ```

use std::fmt;

use serde_json::{json, Map, Value};

use crate::batches;

/// Larger bodies are refused before parsing (a SYNC batch of 500 contacts is about 150 KiB).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Announce,
    Withdraw,
    /// Withdraw every contact of the AOR from that origin, then announce this one.
    Replace,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Contact {
    pub uri: String,
    /// Unix seconds; required to announce, absent in a withdraw.
    pub expires: Option<u64>,
    pub path: String,
    pub user_agent: String,
    pub via_addr: String,
    pub via_port: u16,
    pub call_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub kind: Kind,
    pub aor: String,
    pub contact: Contact,
    pub origin: String,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Single(Update),
    /// A SYNC reply: announcements from several origins, each keeping its own origin and seq.
    Batch { origin: String, updates: Vec<Update> },
    SyncRequest { origin: String },
}

/// Why a message was refused; `reason()` names the counter it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    TooLarge(usize),
    NotJson(String),
    UnknownType(String),
    MissingField(String),
    BadField { field: String, why: String },
}

impl Rejection {
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::TooLarge(_) => "too_large",
            Rejection::NotJson(_) => "bad_json",
            Rejection::UnknownType(_) => "unknown_type",
            Rejection::MissingField(_) => "missing_field",
            Rejection::BadField { .. } => "bad_field",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::TooLarge(n) => write!(f, "message of {n} bytes is over the {MAX_MESSAGE_BYTES}-byte limit"),
            Rejection::NotJson(e) => write!(f, "not a JSON object: {e}"),
            Rejection::UnknownType(t) => write!(f, "unknown type '{t}' (ANNOUNCE, WITHDRAW, REPLACE or SYNC_REQUEST)"),
            Rejection::MissingField(field) => write!(f, "missing field '{field}'"),
            Rejection::BadField { field, why } => write!(f, "field '{field}': {why}"),
        }
    }
}

/// The routing key of a message about `aor`.
pub fn routing_key(aor: &str) -> String {
    format!("registration.{aor}")
}

pub fn decode(body: &[u8]) -> Result<Message, Rejection> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(Rejection::TooLarge(body.len()));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| Rejection::NotJson(e.to_string()))?;
    let object = value.as_object().ok_or_else(|| Rejection::NotJson("the top level is not an object".into()))?;
    let kind = string(object, "type", "type")?;
    match kind.as_str() {
        "SYNC_REQUEST" => Ok(Message::SyncRequest { origin: origin(object, "origin")? }),
        "ANNOUNCE" if object.contains_key("contacts") => {
            let items = object
                .get("contacts")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("contacts", "expected an array"))?;
            let updates = items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let item = item.as_object().ok_or_else(|| bad(&format!("contacts[{i}]"), "expected an object"))?;
                    update(Kind::Announce, item, &format!("contacts[{i}]."))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Message::Batch { origin: origin(object, "origin")?, updates })
        }
        "ANNOUNCE" => update(Kind::Announce, object, "").map(Message::Single),
        "WITHDRAW" => update(Kind::Withdraw, object, "").map(Message::Single),
        "REPLACE" => update(Kind::Replace, object, "").map(Message::Single),
        other => Err(Rejection::UnknownType(other.chars().take(64).collect())),
    }
}

fn kind_word(kind: Kind) -> &'static str {
    match kind {
        Kind::Announce => "ANNOUNCE",
        Kind::Withdraw => "WITHDRAW",
        Kind::Replace => "REPLACE",
    }
}

fn contact_json(c: &Contact) -> Value {
    let mut v = json!({"uri": c.uri, "path": c.path, "user_agent": c.user_agent, "via_addr": c.via_addr, "via_port": c.via_port, "call_id": c.call_id});
    if let Some(expires) = c.expires {
        v["expires"] = json!(expires);
    }
    v
}

fn update_json(u: &Update) -> Value {
    json!({"type": kind_word(u.kind), "aor": u.aor, "contact": contact_json(&u.contact), "origin": u.origin, "seq": u.seq})
}

/// One ANNOUNCE, WITHDRAW or REPLACE.
pub fn encode_update(u: &Update) -> Vec<u8> {
    update_json(u).to_string().into_bytes()
}

pub fn encode_sync_request(origin: &str) -> Vec<u8> {
    json!({"type": "SYNC_REQUEST", "origin": origin}).to_string().into_bytes()
}

/// Announcements (a SYNC reply, or a node re-announcing its phones) as batches that each stay
/// under `max_bytes`, so that every receiver accepts them.
pub fn encode_batches(origin: &str, updates: &[Update], max_bytes: usize) -> Vec<Vec<u8>> {
    let items = updates.iter().filter(|u| u.kind == Kind::Announce).map(|u| json!({"aor": u.aor, "contact": contact_json(&u.contact), "origin": u.origin, "seq": u.seq}));
    batches::encode(items, max_bytes.saturating_sub(origin.len()), |contacts| json!({"type": "ANNOUNCE", "origin": origin, "contacts": contacts}))
}

fn bad(field: &str, why: &str) -> Rejection {
    Rejection::BadField { field: field.to_string(), why: why.to_string() }
}

fn update(kind: Kind, object: &Map<String, Value>, at: &str) -> Result<Update, Rejection> {
    let aor = string(object, "aor", &format!("{at}aor"))?;
    if !valid_aor(&aor) {
        return Err(bad(&format!("{at}aor"), "1 to 255 printable characters without spaces, ';', '/', '\\\\' or '\"'"));
    }
    let c = object
        .get("contact")
        .ok_or_else(|| Rejection::MissingField(format!("{at}contact")))?
        .as_object()
        .ok_or_else(|| bad(&format!("{at}contact"), "expected an object"))?;
    let uri = string(c, "uri", &format!("{at}contact.uri"))?;
    if !valid_uri(&uri) {
        return Err(bad(&format!("{at}contact.uri"), "expected a sip: or sips: URI of at most 1024 characters without spaces"));
    }
    let expires = match c.get("expires") {
        None | Some(Value::Null) if kind == Kind::Withdraw => None,
        None | Some(Value::Null) => return Err(Rejection::MissingField(format!("{at}contact.expires"))),
        Some(v) => Some(v.as_u64().ok_or_else(|| bad(&format!("{at}contact.expires"), "expected unix seconds"))?),
    };
    let via_port = match c.get("via_port") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| bad(&format!("{at}contact.via_port"), "expected a port from 0 to 65535"))?,
    };
    let contact = Contact {
        uri,
        expires,
        path: optional_string(c, "path", &format!("{at}contact.path"))?,
        user_agent: optional_string(c, "user_agent", &format!("{at}contact.user_agent"))?,
        via_addr: optional_string(c, "via_addr", &format!("{at}contact.via_addr"))?,
        via_port,
        call_id: optional_string(c, "call_id", &format!("{at}contact.call_id"))?,
    };
    let seq = object
        .get("seq")
        .ok_or_else(|| Rejection::MissingField(format!("{at}seq")))?
        .as_u64()
        .ok_or_else(|| bad(&format!("{at}seq"), "expected a non-negative integer"))?;
    Ok(Update { kind, aor, contact, origin: origin(object, &format!("{at}origin"))?, seq })
}

fn string(object: &Map<String, Value>, key: &str, field: &str) -> Result<String, Rejection> {
    match object.get(key) {
        None | Some(Value::Null) => Err(Rejection::MissingField(field.to_string())),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(bad(field, "expected a string")),
    }
}

/// Optional strings are bounded too: they end up in Asterisk's contact objects.
fn optional_string(object: &Map<String, Value>, key: &str, field: &str) -> Result<String, Rejection> {
    let text = match object.get(key) {
        None | Some(Value::Null) => return Ok(String::new()),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(bad(field, "expected a string")),
    };
    if text.len() > 1024 || text.chars().any(char::is_control) {
        return Err(bad(field, "at most 1024 characters, no control characters"));
    }
    Ok(text)
}

fn origin(object: &Map<String, Value>, field: &str) -> Result<String, Rejection> {
    let key = field.rsplit('.').next().unwrap_or(field);
    let origin = string(object, key, field)?;
    if origin.is_empty() || origin.len() > 128 || origin.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(field, "1 to 128 printable characters without spaces"));
    }
    Ok(origin)
}

fn valid_aor(aor: &str) -> bool {
    !aor.is_empty()
        && aor.len() <= 255
        && aor.chars().all(|c| c.is_ascii_graphic() && !matches!(c, ';' | '/' | '\\' | '"'))
}

fn valid_uri(uri: &str) -> bool {
    (uri.starts_with("sip:") || uri.starts_with("sips:"))
        && uri.len() > 4
        && uri.len() <= 1024
        && !uri.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANNOUNCE: &str = r#"{"type":"ANNOUNCE","aor":"alice","contact":{"uri":"sip:alice@192.0.2.7:5060","expires":1795345201,"path":"","user_agent":"SIPp","via_addr":"192.0.2.7","via_port":5060,"call_id":"c1"},"origin":"kamailio","seq":42}"#;

    #[test]
    fn decodes_the_contract_forms() {
        let Message::Single(u) = decode(ANNOUNCE.as_bytes()).unwrap() else { panic!() };
        assert_eq!((u.kind, u.aor.as_str(), u.origin.as_str(), u.seq), (Kind::Announce, "alice", "kamailio", 42));
        assert_eq!(u.contact.expires, Some(1_795_345_201));
        assert_eq!((u.contact.via_port, u.contact.user_agent.as_str()), (5060, "SIPp"));

        let withdraw = r#"{"type":"WITHDRAW","aor":"alice","contact":{"uri":"sip:alice@192.0.2.7:5060"},"origin":"n1","seq":43}"#;
        let Message::Single(u) = decode(withdraw.as_bytes()).unwrap() else { panic!() };
        assert_eq!((u.kind, u.contact.expires), (Kind::Withdraw, None));

        let batch = r#"{"type":"ANNOUNCE","origin":"n2","contacts":[{"aor":"alice","contact":{"uri":"sip:alice@192.0.2.7:5060","expires":1795345201},"origin":"kamailio","seq":42}]}"#;
        let Message::Batch { origin, updates } = decode(batch.as_bytes()).unwrap() else { panic!() };
        assert_eq!((origin.as_str(), updates.len(), updates[0].origin.as_str()), ("n2", 1, "kamailio"));

        assert_eq!(decode(br#"{"type":"SYNC_REQUEST","origin":"n3"}"#), Ok(Message::SyncRequest { origin: "n3".into() }));
    }

    #[test]
    fn decodes_what_the_kamailio_config_publishes() {
        // Captured from configs/kamailio/kamailio.cfg in tests/tests/kamailio.rs.
        let announce = r#"{"type":"ANNOUNCE","aor":"alice","contact":{"uri":"sip:alice@127.0.0.1:37009;transport=udp","expires":1795358372,"path":"","user_agent":"SIPp \"res_scale\" test\\agent","via_addr":"127.0.0.1","via_port":37009,"call_id":"reg-21925@127.0.0.1"},"origin":"kamailio-test","seq":1}"#;
        let Message::Single(u) = decode(announce.as_bytes()).unwrap() else { panic!() };
        assert_eq!(u.contact.user_agent, r#"SIPp "res_scale" test\agent"#);
        let withdraw = r#"{"type":"WITHDRAW","aor":"alice","contact":{"uri":"sip:alice@127.0.0.1:37009;transport=udp"},"origin":"kamailio-test","seq":2}"#;
        assert!(matches!(decode(withdraw.as_bytes()), Ok(Message::Single(Update { kind: Kind::Withdraw, .. }))));
    }

    #[test]
    fn refuses_with_a_reason_for_each_kind_of_bad_input() {
        let cases: &[(&str, &str)] = &[
            ("{not json", "bad_json"),
            ("[1,2]", "bad_json"),
            (r#"{"type":"HELLO"}"#, "unknown_type"),
            (r#"{"type":"ANNOUNCE","contact":{"uri":"sip:a@h","expires":1},"origin":"o","seq":1}"#, "missing_field"),
            (r#"{"type":"ANNOUNCE","aor":"alice","contact":{"uri":"sip:a@h"},"origin":"o","seq":1}"#, "missing_field"),
            (r#"{"type":"ANNOUNCE","aor":"alice","contact":{"uri":"http://x","expires":1},"origin":"o","seq":1}"#, "bad_field"),
            (r#"{"type":"ANNOUNCE","aor":"al ice","contact":{"uri":"sip:a@h","expires":1},"origin":"o","seq":1}"#, "bad_field"),
            (r#"{"type":"ANNOUNCE","aor":"alice","contact":{"uri":"sip:a@h","expires":1,"via_port":70000},"origin":"o","seq":1}"#, "bad_field"),
            (r#"{"type":"ANNOUNCE","aor":"alice","contact":{"uri":"sip:a@h","expires":-1},"origin":"o","seq":1}"#, "bad_field"),
            (r#"{"type":"ANNOUNCE","aor":"alice","contact":{"uri":"sip:a@h","expires":1},"origin":"o","seq":"1"}"#, "bad_field"),
            (r#"{"type":"ANNOUNCE","aor":"alice","contact":{"uri":"sip:a@h","expires":1},"origin":"","seq":1}"#, "bad_field"),
            (r#"{"type":"ANNOUNCE","origin":"o","contacts":[{"aor":"a"}]}"#, "missing_field"),
        ];
        for (input, reason) in cases {
            let e = decode(input.as_bytes()).unwrap_err();
            assert_eq!(e.reason(), *reason, "{input}: {e}");
        }
        let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(decode(&huge).unwrap_err().reason(), "too_large");
    }

    #[test]
    fn what_we_encode_decodes_to_the_same_updates() {
        let Message::Single(u) = decode(ANNOUNCE.as_bytes()).unwrap() else { panic!() };
        assert_eq!(decode(&encode_update(&u)), Ok(Message::Single(u.clone())));
        let withdraw = Update { kind: Kind::Withdraw, contact: Contact { expires: None, ..u.contact.clone() }, ..u.clone() };
        assert_eq!(decode(&encode_update(&withdraw)), Ok(Message::Single(withdraw)));
        assert_eq!(decode(&encode_sync_request("n1")), Ok(Message::SyncRequest { origin: "n1".into() }));

        let many: Vec<Update> = (0..2000).map(|i| Update { aor: format!("aor{i}"), seq: i, ..u.clone() }).collect();
        let batches = encode_batches("n1", &many, 64 * 1024);
        assert!(batches.len() > 1 && batches.iter().all(|b| b.len() <= 64 * 1024));
        let mut back = Vec::new();
        for b in &batches {
            let Ok(Message::Batch { origin, updates }) = decode(b) else { panic!() };
            assert_eq!(origin, "n1");
            back.extend(updates);
        }
        assert_eq!(back, many);
    }

    #[test]
    fn errors_name_the_field_inside_a_batch() {
        let e = decode(br#"{"type":"ANNOUNCE","origin":"o","contacts":[{"aor":"a","contact":{"uri":"nope","expires":1},"origin":"o","seq":1}]}"#).unwrap_err();
        assert_eq!(e.to_string(), "field 'contacts[0].contact.uri': expected a sip: or sips: URI of at most 1024 characters without spaces");
    }
}
