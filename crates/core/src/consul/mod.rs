//! Consul: the node's service and TTL check, the pool view and who is in it, and the Stasis
//! application names.

pub mod api;
pub mod apps;
pub mod http;
pub mod membership;
pub mod nodes;
pub mod registration;
pub mod show;

#[cfg(test)]
pub mod fake;
