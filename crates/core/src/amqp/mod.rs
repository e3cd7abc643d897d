//! Stasis events to RabbitMQ: the bounded queue filled on Asterisk's threads, and the
//! publisher that empties it.

pub mod event;
pub mod lapin_broker;
pub mod publisher;
mod runtime_kit;
pub mod show;
