//! The search-index sink: keeps an Elasticsearch or OpenSearch index equal to a table (under
//! its mapping's projection and filter) through crashes, outages and bad documents.
//!
//! One file per responsibility, after Vector's Elasticsearch sink:
//! - `config`: what the user writes (`[sinks.<name>] type = "elasticsearch"`);
//! - `encoder`: event → bulk actions (document id, versioned index/delete, the document);
//! - `toast`: unchanged TOAST values read back from Postgres when the event lacks them;
//! - `rows`: rows read by key with SQL (keys compared by their own type), converted as the stream
//!   converts them, so every path makes the same document;
//! - `request_builder`: actions → a coalesced batch → a `_bulk` body;
//! - `service`: sending requests (the `elasticsearch` crate);
//! - `retry`: bulk response → per-item outcome (done, stale, retry, dead letter);
//! - `dead_letter`: storing refused documents in `cdc.dead_letters`;
//! - `index`: the physical index behind each alias, created on first use, swapped on truncate;
//! - `sink`: the loop that batches, keeps requests in flight and acknowledges;
//! - `health`: what `cdc check` asks the node.
//!
//! Writes are versioned by the transaction's commit LSN (`external_gte`), so replays after a
//! crash and requests that overtake each other can never make the index older.

pub mod config;
pub mod dead_letter;
pub mod encoder;
pub mod health;
pub mod index;
pub mod request_builder;
pub mod retry;
pub mod rows;
pub mod service;
pub mod sink;
pub mod toast;

use std::sync::Arc;

use tokio::sync::mpsc;

pub use config::SearchConfig;

use crate::checkpoint::Ack;
use crate::sinks::SinkMsg;

/// Runs the sink named `name` until its channel closes; `source_url` is the database the events
/// come from (for reading back TOAST values and storing dead letters).
pub async fn run(
    name: String,
    config: SearchConfig,
    source_url: String,
    rx: mpsc::Receiver<SinkMsg>,
    ack: Ack,
) -> anyhow::Result<()> {
    let pg = crate::state::Postgres::new(&source_url);
    crate::state::prepare(&pg, &name).await?;
    let name: Arc<str> = Arc::from(name);
    let shared = Arc::new(sink::Shared {
        service: service::Service::new(&config)?,
        pg,
        health: sink::Health::new(name.clone()),
        stats: sink::Stats::default(),
        name,
    });
    sink::Sink::new(config, shared, ack).run(rx).await
}
