//! Any bytes a publisher could put on the registrations exchange: the decoder must answer
//! with a message or a rejection, never panic, and a decoded message must be within bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use res_scale_core::registrations::message::{decode, Message, MAX_MESSAGE_BYTES};

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(Message::Single(u)) => {
            assert!(data.len() <= MAX_MESSAGE_BYTES);
            assert!(!u.aor.is_empty() && u.contact.uri.starts_with("sip"));
        }
        Ok(_) => assert!(data.len() <= MAX_MESSAGE_BYTES),
        Err(rejection) => {
            let _ = rejection.reason();
            let _ = rejection.to_string();
        }
    }
});
