//! Device and mailbox (MWI, in `mwi`) state shared across the pool (DESIGN.md section 5, exchange `res_scale.state`): the
//! wire format and its validation, which devices are shared, what this node publishes and what
//! it learned from others, and the CLI text. Handing states to Asterisk is the module's side:
//! remote states are published with their origin's entity ID, so that Asterisk's own per-EID
//! aggregation merges them with the local state.

pub mod book;
pub mod devices;
pub mod local;
pub mod message;
pub mod mwi;
pub mod show;
