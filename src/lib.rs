//! res_scale.so: the Asterisk 22 module of res_scale.
//!
//! Layout: `sys` holds the generated bindings and `ast` the safe wrappers over them (the only
//! `unsafe` code); `lifecycle` owns load/unload/reload and the per-load state; `commands` holds
//! the CLI commands. Domain logic lives in the `res-scale-core` crate.

mod ast;
mod commands;
mod lifecycle;
mod sys;
