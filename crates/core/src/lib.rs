//! Domain logic of res_scale. Nothing here knows about Asterisk: the module crate adapts
//! Asterisk to these types, so everything in this crate is unit-tested without Asterisk.
#![forbid(unsafe_code)]

pub mod amqp;
pub mod backoff;
pub mod batches;
pub mod config;
pub mod consul;
pub mod duration;
pub mod node_info;
pub mod rate_log;
pub mod reasons;
pub mod registrations;
pub mod state;
pub mod state_log;
pub mod status;
