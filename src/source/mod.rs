//! The source: a replication connection to a pgoutput slot, decoded into events.
//!
//! - `connection`: the URL, the catalog connection, the checks before streaming.
//! - `errors`: which errors end the run and which a reconnect heals (by SQLSTATE).
//! - `identity`: what a table's old rows carry (replica identity, keys), from the catalog.
//! - `publication`: what an existing publication lets through (operations, row filters, column lists).
//! - `pgoutput`: the wire format of pgoutput messages → borrowed message structs.
//! - `relations`: the relation cache (OID → table, columns, key), kept current mid-stream.
//! - `values`: Postgres text values → JSON values, by type.
//! - `changes`: decoded row changes → events.
//! - `standby`: a second `cdc run` waits while another holds the slot, then takes over.
//! - `tls`: `sslmode` and certificates from the URL, for both connections.
//! - `stream`: the loop: reconnects, decodes, hands events to the router and reports the
//!   checkpoint's position back to Postgres.

pub mod changes;
pub mod connection;
pub mod errors;
pub mod identity;
pub mod pgoutput;
pub mod publication;
pub mod relations;
pub mod standby;
pub mod stream;
pub mod tls;
pub mod values;
