//! Registration events shared across the pool (ANNOUNCE / WITHDRAW / REPLACE / SYNC_REQUEST):
//! the wire format and its validation, and the rule that makes duplicates and out-of-order
//! messages harmless. Applying them to PJSIP contacts is the module's side.

pub mod book;
pub mod message;
pub mod seq;
pub mod show;
