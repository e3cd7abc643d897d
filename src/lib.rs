//! res_scale.so: the Asterisk 22 module of res_scale.
//!
//! Layout: `sys` holds the generated bindings and `ast` the safe wrappers over them (all FFI
//! code lives there); `lifecycle` owns load/unload/reload and the per-load state; `commands`
//! holds the CLI commands; `amqp`, `consul`, `events`, `registrations` and `node` adapt the core crate's
//! subsystems to Asterisk, and `tasks` runs their background work. Domain logic lives in the `res-scale-core` crate.

mod amqp;
mod ast;
mod commands;
mod consul;
mod events;
mod lifecycle;
mod node;
mod registrations;
mod running;
mod states;
mod sys;
mod tasks;
