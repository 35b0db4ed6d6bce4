//! One module per CLI command. `main.rs` parses arguments and calls exactly one of these.

pub mod check;
pub mod dead_letters;
pub mod rebuild_index;
pub mod run;
pub mod setup;
pub mod status;
pub mod teardown;
pub mod verify;
pub mod webhook;
