//! The webhook sink: batched, signed (Standard Webhooks), retried deliveries to one HTTP
//! endpoint, where a dead endpoint never blocks the others or the slot (its batches wait in a
//! durable outbox in Postgres) unless it is configured to (`on_exhausted = "block"`).
//!
//! Rooms: `config` (what the user writes), `signing`, `encoder` (event and batch → bytes, the envelope),
//! `coalesce` and `batcher` (events → batches), `ledger` (which transactions may be
//! acknowledged), `service` (one HTTP attempt, rate limited), `retry` (response → what next),
//! `delivery` (direct path, outbox switch, block mode, 410), `sender` (drains the outbox),
//! `recorder` (attempt history), `sink` (the loop), `test_event` (`cdc webhook test`), `health`
//! (`cdc check`); its state in Postgres: `outbox` (stored batches) and `attempts` (delivery history).

pub mod attempts;
mod batcher;
mod coalesce;
pub mod config;
mod delivery;
pub mod encoder;
pub mod health;
mod ledger;
pub mod outbox;
mod recorder;
pub mod retry;
mod sender;
pub mod service;
pub mod signing;
mod sink;
pub mod test_event;

pub use config::WebhookConfig;
pub use sender::requeue;
pub use sink::run;
