//! The MWI message (DESIGN.md section 5), routing key `mwi.<mailbox>`, and its decoder (the
//! exchange's decoder, `state::message::decode`, hands it the objects of type MWI, alone or
//! in a batch). The mailbox is Asterisk's unique id of it, `mailbox@context`.
//!
//! ```text
//! {"type":"MWI","mailbox":"1001@default","new":2,"old":1,"origin":"02:00:00:00:00:01","seq":7}
//! {"type":"MWI","mailbox":"1001@default","new":0,"old":0,"deleted":true,"origin":"02:00:00:00:00:01","seq":8}
//! ```
//!
//! A deletion (the origin's Asterisk deleted the mailbox's state, e.g. a mailbox removed from
//! voicemail.conf) is the same message with `"deleted": true` and both counts 0, so that it is
//! ordered with the states by the same per-(origin, mailbox) seq. `deleted` absent means false.

use serde_json::{json, Map, Value};

use crate::state::message::{origin, string, unsigned, valid_name, Rejection};

/// What a node's state queue is bound with to hear of mailboxes.
pub const BINDING: &str = "mwi.#";

/// Counts above this are refused: Asterisk keeps them in a C int.
pub const MAX_COUNT: u64 = i32::MAX as u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MwiState {
    /// `mailbox@context`.
    pub mailbox: String,
    pub new: u32,
    pub old: u32,
    pub deleted: bool,
    /// The origin's entity ID, lower case.
    pub origin: String,
    pub seq: u64,
}

/// The routing key of a message about `mailbox`.
pub fn routing_key(mailbox: &str) -> String {
    format!("mwi.{mailbox}")
}

/// The message as JSON (also an item of a batch).
pub fn json(s: &MwiState) -> Value {
    let mut value = json!({"type": "MWI", "mailbox": s.mailbox, "new": s.new, "old": s.old, "origin": s.origin, "seq": s.seq});
    if s.deleted {
        value["deleted"] = Value::Bool(true);
    }
    value
}

pub fn encode(s: &MwiState) -> Vec<u8> {
    json(s).to_string().into_bytes()
}

/// The fields of an object of type MWI.
pub(crate) fn from_object(object: &Map<String, Value>) -> Result<MwiState, Rejection> {
    let mailbox = string(object, "mailbox")?;
    if !valid_mailbox(mailbox) {
        return Err(Rejection::BadField { field: "mailbox", why: "mailbox@context, 1 to 200 printable characters without spaces" });
    }
    let new = count(object, "new")?;
    let old = count(object, "old")?;
    let deleted = match object.get("deleted") {
        None | Some(Value::Null) => false,
        Some(v) => v.as_bool().ok_or(Rejection::BadField { field: "deleted", why: "expected true or false" })?,
    };
    let origin = origin(object)?;
    let seq = unsigned(object, "seq")?;
    Ok(MwiState { mailbox: mailbox.to_string(), new, old, deleted, origin, seq })
}

/// A unique id Asterisk could have made: a name, with a mailbox part before any `@`.
pub fn valid_mailbox(mailbox: &str) -> bool {
    valid_name(mailbox) && !mailbox.starts_with('@')
}

fn count(object: &Map<String, Value>, key: &'static str) -> Result<u32, Rejection> {
    match unsigned(object, key)? {
        n if n <= MAX_COUNT => Ok(n as u32),
        _ => Err(Rejection::BadField { field: key, why: "a message count of at most 2147483647" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::message::{self, Message, Update, MAX_MESSAGE_BYTES};

    /// A body through the exchange's decoder, as a single MWI message.
    fn decode(body: &[u8]) -> Result<MwiState, Rejection> {
        match message::decode(body)? {
            Message::Update(Update::Mwi(state)) => Ok(state),
            other => panic!("not an MWI message: {other:?}"),
        }
    }

    const TWO_ONE: &str = r#"{"type":"MWI","mailbox":"1001@default","new":2,"old":1,"origin":"02:00:00:00:00:0A","seq":42}"#;

    #[test]
    fn decodes_the_contract_form_and_a_deletion() {
        let s = decode(TWO_ONE.as_bytes()).unwrap();
        assert_eq!(s, MwiState { mailbox: "1001@default".into(), new: 2, old: 1, deleted: false, origin: "02:00:00:00:00:0a".into(), seq: 42 });
        assert_eq!(decode(&encode(&s)), Ok(s.clone()));
        assert!(!String::from_utf8(encode(&s)).unwrap().contains("deleted"), "a state says nothing of deletion");
        let gone = MwiState { new: 0, old: 0, deleted: true, seq: 43, ..s };
        assert_eq!(decode(&encode(&gone)), Ok(gone));
        assert_eq!(routing_key("1001@default"), "mwi.1001@default");
    }

    #[test]
    fn refuses_with_a_reason_for_each_kind_of_bad_input() {
        let long = format!(r#"{{"type":"MWI","mailbox":"{}@default","new":1,"old":0,"origin":"02:00:00:00:00:01","seq":1}}"#, "x".repeat(200));
        let cases: &[(&str, &str)] = &[
            ("{not json", "bad_json"),
            ("\"MWI\"", "bad_json"),
            (r#"{"type":"MWI_STATE","mailbox":"1001@default"}"#, "unknown_type"),
            (r#"{"mailbox":"1001@default"}"#, "missing_field"),
            (r#"{"type":"MWI","new":1,"old":0,"origin":"02:00:00:00:00:01","seq":1}"#, "missing_field"),
            (r#"{"type":"MWI","mailbox":"1001 @default","new":1,"old":0,"origin":"02:00:00:00:00:01","seq":1}"#, "bad_field"),
            (r#"{"type":"MWI","mailbox":"@default","new":1,"old":0,"origin":"02:00:00:00:00:01","seq":1}"#, "bad_field"),
            (&long, "bad_field"),
            (r#"{"type":"MWI","mailbox":"1001@default","new":-1,"old":0,"origin":"02:00:00:00:00:01","seq":1}"#, "bad_field"),
            (r#"{"type":"MWI","mailbox":"1001@default","new":"2","old":0,"origin":"02:00:00:00:00:01","seq":1}"#, "bad_field"),
            (r#"{"type":"MWI","mailbox":"1001@default","new":2147483648,"old":0,"origin":"02:00:00:00:00:01","seq":1}"#, "bad_field"),
            (r#"{"type":"MWI","mailbox":"1001@default","new":1,"origin":"02:00:00:00:00:01","seq":1}"#, "missing_field"),
            (r#"{"type":"MWI","mailbox":"1001@default","new":1,"old":0,"deleted":"yes","origin":"02:00:00:00:00:01","seq":1}"#, "bad_field"),
            (r#"{"type":"MWI","mailbox":"1001@default","new":1,"old":0,"origin":"node-a","seq":1}"#, "bad_field"),
            (r#"{"type":"MWI","mailbox":"1001@default","new":1,"old":0,"origin":"02:00:00:00:00:01"}"#, "missing_field"),
            (r#"{"type":"MWI","mailbox":"1001@default","new":1,"old":0,"origin":"02:00:00:00:00:01","seq":1.5}"#, "bad_field"),
        ];
        for (input, reason) in cases {
            let e = decode(input.as_bytes()).unwrap_err();
            assert_eq!(e.reason(), *reason, "{input}: {e}");
        }
        assert_eq!(decode(&vec![b' '; MAX_MESSAGE_BYTES + 1]).unwrap_err().reason(), "too_large");
    }

    #[test]
    fn a_mailbox_without_context_is_one_asterisk_can_have() {
        assert!(valid_mailbox("1001") && valid_mailbox("1001@default") && valid_mailbox("a@b@c"));
        assert!(!valid_mailbox("") && !valid_mailbox("@default"));
    }
}
