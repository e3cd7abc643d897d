//! The integration-test pool of res_scale: real Asterisk 22 nodes with the freshly built module,
//! a real Consul and a real RabbitMQ, all on loopback, all torn down on drop (also when the test
//! fails, in which case the node logs are printed and their folders kept).
//!
//! Provisioning (the Asterisk rootfs/image, Consul, RabbitMQ, SIPp, pjsua2) is done once by
//! `tests/provision.sh`; this crate reads what it produced from `testbed.env`.

pub mod ami;
pub mod amqp;
pub mod ari;
pub mod ari_app;
pub mod child;
pub mod cluster;
pub mod consul;
pub mod control_socket;
pub mod cpu;
pub mod event_socket;
pub mod gateway;
pub mod kamailio;
pub mod node;
pub mod phone;
pub mod pool;
pub mod ports;
pub mod rabbitmq;
pub mod soak;
pub mod stats;
pub mod talk_wav;
pub mod testbed;
pub mod wait;

pub use node::Node;
pub use pool::{Pool, PoolBuilder};
