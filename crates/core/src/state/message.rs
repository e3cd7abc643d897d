//! The state messages (DESIGN.md section 5) and a decoder that accepts exactly those and says
//! precisely why it refuses anything else. Every input is untrusted: any client of the broker
//! that may publish to the exchange can send one.
//!
//! ```text
//! device.<device>  {"type":"DEVICE_STATE","device":"PJSIP/alice","state":"INUSE","cachable":true,
//!                   "origin":"02:00:00:00:00:01","seq":42}
//! mwi.<mailbox>    {"type":"MWI","mailbox":"1001@default","new":2,"old":1,"origin":..,"seq":..}
//!                  (see state::mwi::message)
//! sync.request     {"type":"STATE_SYNC","origin":"<asker>"}   (answers go to the AMQP reply-to)
//! sync.batch       {"type":"STATE_BATCH","origin":"<eid>","states":[<DEVICE_STATE or MWI>, ...]}
//! ```
//!
//! `state` is one of Asterisk's parseable names (`ast_devstate_str`), `origin` the entity ID
//! of the node where the state changed, `seq` a per-origin counter. A batch carries one node's
//! own states: its answer to a SYNC (sent straight to the asker's queue), or what it
//! re-announces after it (re)connected. Each item is judged on its own.

use std::fmt;

use serde_json::{json, Map, Value};

use crate::batches;
use crate::state::mwi::message::{self as mwi_message, MwiState};

/// Larger bodies are refused before parsing (a state message is about 150 bytes; the bound
/// leaves room for the batches of a later SYNC).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Longer device or mailbox names are refused: the routing key (`device.<device>`,
/// `mwi.<mailbox>`) must stay under AMQP's 255 bytes, and Asterisk keeps names far shorter.
pub const MAX_NAME_BYTES: usize = 200;

/// Routing keys of the SYNC request and of re-announcements.
pub const SYNC_REQUEST_KEY: &str = "sync.request";
pub const BATCH_KEY: &str = "sync.batch";
/// What a node's state queue is bound with.
pub const BINDINGS: [&str; 2] = ["device.#", "sync.#"];

/// Asterisk's parseable device state names, in the order of `enum ast_device_state`.
pub const STATES: [&str; 9] = ["UNKNOWN", "NOT_INUSE", "INUSE", "BUSY", "INVALID", "UNAVAILABLE", "RINGING", "RINGINUSE", "ONHOLD"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceState {
    pub device: String,
    /// One of [`STATES`].
    pub state: &'static str,
    /// Asterisk caches (and aggregates) only cachable states; a non-cachable one replaces
    /// the aggregate until the next change.
    pub cachable: bool,
    /// The origin's entity ID, lower case (`02:00:00:00:00:01`).
    pub origin: String,
    pub seq: u64,
}

/// One state of one origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    Device(DeviceState),
    Mwi(MwiState),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Update(Update),
    /// `origin` asks every node for its own states.
    SyncRequest { origin: String },
    /// One node's own states; a refused item does not stop the others.
    Batch { origin: String, items: Vec<Result<Update, Rejection>> },
}

/// Why a message was refused; `reason()` names the counter it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    TooLarge(usize),
    NotJson(String),
    UnknownType(String),
    MissingField(&'static str),
    BadField { field: &'static str, why: &'static str },
    UnknownState(String),
}

impl Rejection {
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::TooLarge(_) => "too_large",
            Rejection::NotJson(_) => "bad_json",
            Rejection::UnknownType(_) => "unknown_type",
            Rejection::MissingField(_) => "missing_field",
            Rejection::BadField { .. } => "bad_field",
            Rejection::UnknownState(_) => "unknown_state",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::TooLarge(n) => write!(f, "message of {n} bytes is over the {MAX_MESSAGE_BYTES}-byte limit"),
            Rejection::NotJson(e) => write!(f, "not a JSON object: {e}"),
            Rejection::UnknownType(t) => write!(f, "unknown type '{t}' (DEVICE_STATE, MWI, STATE_SYNC or STATE_BATCH)"),
            Rejection::MissingField(field) => write!(f, "missing field '{field}'"),
            Rejection::BadField { field, why } => write!(f, "field '{field}': {why}"),
            Rejection::UnknownState(s) => write!(f, "unknown state '{s}' (one of {})", STATES.join(", ")),
        }
    }
}

/// The routing key of a message about `device`.
pub fn routing_key(device: &str) -> String {
    format!("device.{device}")
}

fn device_json(s: &DeviceState) -> Value {
    json!({"type": "DEVICE_STATE", "device": s.device, "state": s.state, "cachable": s.cachable, "origin": s.origin, "seq": s.seq})
}

pub fn encode(s: &DeviceState) -> Vec<u8> {
    device_json(s).to_string().into_bytes()
}

pub fn encode_sync_request(origin: &str) -> Vec<u8> {
    json!({"type": "STATE_SYNC", "origin": origin}).to_string().into_bytes()
}

/// `origin`'s own device and mailbox states as batches that each stay under `max_bytes`.
pub fn encode_batches(origin: &str, states: &[DeviceState], mailboxes: &[MwiState], max_bytes: usize) -> Vec<Vec<u8>> {
    let items = states.iter().map(device_json).chain(mailboxes.iter().map(mwi_message::json));
    batches::encode(items, max_bytes, |items| json!({"type": "STATE_BATCH", "origin": origin, "states": items}))
}

pub fn decode(body: &[u8]) -> Result<Message, Rejection> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(Rejection::TooLarge(body.len()));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| Rejection::NotJson(e.to_string()))?;
    let object = value.as_object().ok_or_else(|| Rejection::NotJson("the top level is not an object".into()))?;
    match string(object, "type")? {
        "STATE_SYNC" => Ok(Message::SyncRequest { origin: origin(object)? }),
        "STATE_BATCH" => {
            let origin = origin(object)?;
            let items = match object.get("states") {
                None | Some(Value::Null) => return Err(Rejection::MissingField("states")),
                Some(Value::Array(items)) => items,
                Some(_) => return Err(Rejection::BadField { field: "states", why: "expected an array" }),
            };
            let items = items.iter().map(|item| item.as_object().ok_or(Rejection::BadField { field: "states", why: "expected objects" }).and_then(update)).collect();
            Ok(Message::Batch { origin, items })
        }
        _ => update(object).map(Message::Update),
    }
}

/// One state; batches and requests are not states.
fn update(object: &Map<String, Value>) -> Result<Update, Rejection> {
    match string(object, "type")? {
        "DEVICE_STATE" => device_state(object).map(Update::Device),
        "MWI" => mwi_message::from_object(object).map(Update::Mwi),
        kind => Err(Rejection::UnknownType(kind.chars().take(64).collect())),
    }
}

fn device_state(object: &Map<String, Value>) -> Result<DeviceState, Rejection> {
    let device = string(object, "device")?;
    if !valid_name(device) {
        return Err(Rejection::BadField { field: "device", why: "1 to 200 printable characters without spaces" });
    }
    let name = string(object, "state")?;
    let state = state_name(name).ok_or_else(|| Rejection::UnknownState(name.chars().take(64).collect()))?;
    let cachable = match object.get("cachable") {
        None | Some(Value::Null) => return Err(Rejection::MissingField("cachable")),
        Some(v) => v.as_bool().ok_or(Rejection::BadField { field: "cachable", why: "expected true or false" })?,
    };
    let origin = origin(object)?;
    let seq = unsigned(object, "seq")?;
    Ok(DeviceState { device: device.to_string(), state, cachable, origin, seq })
}

/// The `origin` field: the entity ID of the node the message is about.
pub(crate) fn origin(object: &Map<String, Value>) -> Result<String, Rejection> {
    eid(string(object, "origin")?).ok_or(Rejection::BadField { field: "origin", why: "expected an entity ID such as 02:00:00:00:00:01" })
}

pub(crate) fn unsigned(object: &Map<String, Value>, key: &'static str) -> Result<u64, Rejection> {
    match object.get(key) {
        None | Some(Value::Null) => Err(Rejection::MissingField(key)),
        Some(v) => v.as_u64().ok_or(Rejection::BadField { field: key, why: "expected a non-negative integer" }),
    }
}

/// The state's name as Asterisk spells it, if it is one.
pub fn state_name(name: &str) -> Option<&'static str> {
    STATES.iter().copied().find(|s| *s == name)
}

/// An entity ID in Asterisk's form (six hex pairs joined by ':'), lower-cased: Asterisk
/// parses either case as the same EID, so comparing the text must too.
pub fn eid(text: &str) -> Option<String> {
    let pairs: Vec<&str> = text.split(':').collect();
    let ok = pairs.len() == 6 && pairs.iter().all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    ok.then(|| text.to_ascii_lowercase())
}

/// A device or mailbox name that fits a routing key and that Asterisk could have made.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_BYTES && name.chars().all(|c| c.is_ascii_graphic())
}

pub(crate) fn string<'a>(object: &'a Map<String, Value>, key: &'static str) -> Result<&'a str, Rejection> {
    match object.get(key) {
        None | Some(Value::Null) => Err(Rejection::MissingField(key)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(Rejection::BadField { field: key, why: "expected a string" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INUSE: &str = r#"{"type":"DEVICE_STATE","device":"PJSIP/alice","state":"INUSE","cachable":true,"origin":"02:00:00:00:00:0A","seq":42}"#;

    #[test]
    fn decodes_the_contract_form_with_the_origin_in_lower_case() {
        let s = DeviceState { device: "PJSIP/alice".into(), state: "INUSE", cachable: true, origin: "02:00:00:00:00:0a".into(), seq: 42 };
        assert_eq!(decode(INUSE.as_bytes()), Ok(Message::Update(Update::Device(s.clone()))));
        assert_eq!(decode(&encode(&s)), Ok(Message::Update(Update::Device(s))));
        assert_eq!(routing_key("Custom:agent1"), "device.Custom:agent1");
    }

    #[test]
    fn refuses_with_a_reason_for_each_kind_of_bad_input() {
        let long = format!(r#"{{"type":"DEVICE_STATE","device":"{}","state":"INUSE","cachable":true,"origin":"02:00:00:00:00:01","seq":1}}"#, "x".repeat(MAX_NAME_BYTES + 1));
        let cases: &[(&str, &str)] = &[
            ("{not json", "bad_json"),
            ("[1]", "bad_json"),
            (r#"{"type":"VOICEMAIL"}"#, "unknown_type"),
            (r#"{"device":"a"}"#, "missing_field"),
            (r#"{"type":"DEVICE_STATE","device":"PJSIP/a","state":"SLEEPING","cachable":true,"origin":"02:00:00:00:00:01","seq":1}"#, "unknown_state"),
            (r#"{"type":"DEVICE_STATE","device":"PJSIP/a","state":"inuse","cachable":true,"origin":"02:00:00:00:00:01","seq":1}"#, "unknown_state"),
            (r#"{"type":"DEVICE_STATE","device":"PJSIP/a b","state":"INUSE","cachable":true,"origin":"02:00:00:00:00:01","seq":1}"#, "bad_field"),
            (r#"{"type":"DEVICE_STATE","device":"","state":"INUSE","cachable":true,"origin":"02:00:00:00:00:01","seq":1}"#, "bad_field"),
            (&long, "bad_field"),
            (r#"{"type":"DEVICE_STATE","device":"PJSIP/a","state":"INUSE","cachable":1,"origin":"02:00:00:00:00:01","seq":1}"#, "bad_field"),
            (r#"{"type":"DEVICE_STATE","device":"PJSIP/a","state":"INUSE","origin":"02:00:00:00:00:01","seq":1}"#, "missing_field"),
            (r#"{"type":"DEVICE_STATE","device":"PJSIP/a","state":"INUSE","cachable":true,"origin":"node-a","seq":1}"#, "bad_field"),
            (r#"{"type":"DEVICE_STATE","device":"PJSIP/a","state":"INUSE","cachable":true,"origin":"02:00:00:00:00:01:02","seq":1}"#, "bad_field"),
            (r#"{"type":"DEVICE_STATE","device":"PJSIP/a","state":"INUSE","cachable":true,"origin":"02:00:00:00:00:01","seq":-1}"#, "bad_field"),
            (r#"{"type":"DEVICE_STATE","device":"PJSIP/a","state":"INUSE","cachable":true,"origin":"02:00:00:00:00:01"}"#, "missing_field"),
        ];
        for (input, reason) in cases {
            let e = decode(input.as_bytes()).unwrap_err();
            assert_eq!(e.reason(), *reason, "{input}: {e}");
        }
        assert_eq!(decode(&vec![b' '; MAX_MESSAGE_BYTES + 1]).unwrap_err().reason(), "too_large");
    }

    #[test]
    fn sync_requests_and_batches_round_trip_and_a_bad_item_spoils_only_itself() {
        let me = "02:00:00:00:00:0a";
        assert_eq!(decode(&encode_sync_request(me)), Ok(Message::SyncRequest { origin: me.into() }));
        let states: Vec<DeviceState> = (0..2000).map(|i| DeviceState { device: format!("Custom:agent{i}"), state: "INUSE", cachable: true, origin: me.into(), seq: i }).collect();
        let mailboxes = vec![MwiState { mailbox: "1001@default".into(), new: 2, old: 1, deleted: false, origin: me.into(), seq: 9 }];
        let bodies = encode_batches(me, &states, &mailboxes, MAX_MESSAGE_BYTES * 3 / 4);
        assert!(bodies.len() > 1 && bodies.iter().all(|b| b.len() <= MAX_MESSAGE_BYTES * 3 / 4));
        let (mut back, mut back_mwi) = (Vec::new(), Vec::new());
        for body in &bodies {
            let Ok(Message::Batch { origin, items }) = decode(body) else { panic!("not a batch") };
            assert_eq!(origin, me);
            for item in items {
                match item {
                    Ok(Update::Device(s)) => back.push(s),
                    Ok(Update::Mwi(m)) => back_mwi.push(m),
                    Err(e) => panic!("{e}"),
                }
            }
        }
        assert_eq!((back, back_mwi), (states, mailboxes));

        let mixed = format!(r#"{{"type":"STATE_BATCH","origin":"{me}","states":[{INUSE},{{"type":"STATE_BATCH"}},7,{{"type":"DEVICE_STATE","device":"x"}}]}}"#);
        let Ok(Message::Batch { items, .. }) = decode(mixed.as_bytes()) else { panic!("not a batch") };
        let reasons: Vec<&str> = items.iter().map(|i| i.as_ref().map(|_| "ok").unwrap_or_else(|e| e.reason())).collect();
        assert_eq!(reasons, ["ok", "unknown_type", "bad_field", "missing_field"]);
        assert_eq!(decode(format!(r#"{{"type":"STATE_BATCH","origin":"{me}"}}"#).as_bytes()).unwrap_err().reason(), "missing_field");
        assert_eq!(decode(br#"{"type":"STATE_SYNC","origin":"node-a"}"#).unwrap_err().reason(), "bad_field");
    }

    #[test]
    fn every_asterisk_state_name_is_known_and_nothing_else() {
        assert!(STATES.iter().all(|s| state_name(s) == Some(*s)));
        assert_eq!(state_name("Not in use"), None);
        assert_eq!(eid("02:AB:00:00:00:01").as_deref(), Some("02:ab:00:00:00:01"));
        assert_eq!(eid("2:ab:00:00:00:01"), None);
    }
}
