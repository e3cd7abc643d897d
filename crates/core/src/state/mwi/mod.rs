//! Mailbox (MWI) state shared across the pool: message-waiting counts of a mailbox that
//! changed on one node are applied on every other under that node's entity ID, so a phone
//! subscribed for MWI on any node hears of voicemail left on another.
//!
//! Unlike device state, Asterisk keeps ONE state per mailbox: the last one published wins,
//! whichever node it came from, and nothing is aggregated. Taking a state back (a deletion,
//! unload) therefore only touches a mailbox whose state is still the one that origin sent.

pub mod book;
pub mod local;
pub mod message;
pub mod show;
