//! Safe wrappers over Asterisk's C API. Every `unsafe` block of the module lives below here,
//! and every entry point Asterisk calls goes through [`guard::guarded`].

pub mod cli;
pub mod config;
pub mod contact_store;
pub mod contacts;
pub mod devstate;
mod entry;
mod event_json;
mod gate;
pub mod guard;
pub mod identity;
pub mod log;
pub mod mwi;
mod sink;
pub mod stasis;
