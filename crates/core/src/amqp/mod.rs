//! Stasis events to RabbitMQ: the bounded queue filled on Asterisk's threads, and the
//! publisher that empties it; and the bus that links a node to the pool's other exchanges.

pub mod bus;
pub mod event;
pub mod lapin_broker;
pub mod publisher;
mod runtime_kit;
pub mod show;
pub mod signing;
