//! cdc: PostgreSQL logical replication → row events → search index, webhooks, stdout.
//!
//! The modules follow the data flow:
//! `source` (replication connection, pgoutput decoding, relation cache, value conversion)
//! → `event` → `router` (table mappings, projections, filters) → `sinks` (each batching,
//! retrying and acknowledging on its own) → `checkpoint` (minimum acknowledged LSN, confirmed
//! to Postgres). `admin` serves health, readiness and metrics; `config` reads the TOML file; `commands` holds one function per CLI command.

pub mod admin;
pub mod checkpoint;
pub mod commands;
pub mod config;
pub mod event;
pub mod rebuild;
pub mod redact;
pub mod retry;
pub mod router;
pub mod sinks;
pub mod source;
pub mod state;
