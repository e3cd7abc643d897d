//! Domain logic of res_scale. Nothing here knows about Asterisk: the module crate adapts
//! Asterisk to these types, so everything in this crate is unit-tested without Asterisk.
#![forbid(unsafe_code)]

pub mod config;
pub mod duration;
pub mod status;
