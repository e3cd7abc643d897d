//! What makes the gateway look like Asterisk to a client: its authentication, its error
//! answers and its api-docs.

pub mod auth;
pub mod docs;
pub mod errors;
