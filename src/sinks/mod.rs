//! Sinks: where routed events go. Each sink is a task that owns its batching, retries and
//! request building, reads [`SinkMsg`]s from a bounded channel (so a slow sink slows the
//! reader) and raises its [`Ack`] to the end LSN of every transaction it has fully delivered.
//!
//! Contract every sink keeps:
//! - Messages arrive in commit order: the events of one transaction, then its `Commit`.
//!   Every sink receives every `Commit`, also for transactions that routed it no event.
//! - `ack.delivered(end_lsn)` only once every event up to that `Commit` is delivered (or
//!   durably handed off: dead letters, outbox). Never ahead.
//! - When the channel closes (shutdown), deliver what is held, ack, and return Ok.
//! - Errors that can heal (network, 5xx, a Postgres restart: see `state::Postgres::retry`) are
//!   retried inside the sink, forever, holding the ack. Returning an error stops the whole run
//!   (`Running::failed`), with that error as the run's.

pub mod search;
pub mod stdout;
pub mod stream;
pub mod webhook;

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{Config, SinkConfig, TableMapping};
use crate::event::{Event, Lsn};

/// One line of what `cdc check` learned about a sink (each sink's `health` module says it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    Ok(String),
    Warning(String),
    Problem(String),
}

/// What a sink receives.
#[derive(Debug, Clone)]
pub enum SinkMsg {
    /// An event projected for `mapping`. The same `Arc<Event>` goes to every sink of the mapping,
    /// so its JSON is serialized once.
    Event {
        event: Arc<Event>,
        mapping: Arc<TableMapping>,
    },
    /// The transaction with this commit LSN ended; `end_lsn` is what the sink acknowledges.
    Commit { commit_lsn: Lsn, end_lsn: Lsn },
}

/// How many messages a sink's channel holds before the router waits.
pub const CHANNEL_CAPACITY: usize = 4096;

/// The running sink tasks.
pub struct Running {
    tasks: Vec<(String, JoinHandle<anyhow::Result<()>>)>,
    /// Becomes true when a sink task ends with an error (see [`Running::failed`]).
    failed: watch::Receiver<bool>,
}

/// How long sinks get, together, to deliver what they hold once their channels closed.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Running {
    /// Resolves once a sink has failed: `cdc run` then stops at once instead of streaming on
    /// until the router finds the sink's channel closed (which, on a quiet table, may be hours).
    pub fn failed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut failed = self.failed.clone();
        async move {
            // An Err means every sender is gone: no sink can fail any more.
            if failed.wait_for(|f| *f).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Waits for every sink to deliver what it holds (their channels must be closed: see
    /// `Router::close`). Fails with the first sink error, or when a sink did not finish within
    /// the drain timeout (what it held is replayed at the next start). A second call does nothing.
    pub async fn drain(&mut self) -> anyhow::Result<()> {
        let mut failed = None;
        // One deadline for all: the sinks drain concurrently (they are tasks), so waiting for
        // them in turn against a shared deadline bounds the whole shutdown.
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        for (name, task) in std::mem::take(&mut self.tasks) {
            match tokio::time::timeout_at(deadline, task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    tracing::error!(sink = %name, "sink failed: {e:#}");
                    failed.get_or_insert(e);
                }
                Ok(Err(join)) => {
                    tracing::error!(sink = %name, "sink task panicked: {join}");
                    failed.get_or_insert(anyhow::anyhow!("sink {name} panicked"));
                }
                Err(_) => {
                    let e = anyhow::anyhow!(
                        "sink {name} did not deliver what it held within {}s; it is sent again at the next start",
                        DRAIN_TIMEOUT.as_secs()
                    );
                    tracing::error!(sink = %name, "{e}");
                    failed.get_or_insert(e);
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

/// The channels the router writes to, by sink name.
pub type Senders = Vec<(String, mpsc::Sender<SinkMsg>)>;

/// Starts every configured sink; returns the senders the router writes to and the running tasks.
pub fn spawn_all(
    config: &Config,
    checkpoint: &mut crate::checkpoint::Checkpoint,
) -> anyhow::Result<(Senders, Running)> {
    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    let (failed_tx, failed) = watch::channel(false);
    for (name, sink) in &config.sinks {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let ack = checkpoint.register();
        // The sink's figures for /metrics and /ready; the sinks find them by name.
        let stats = crate::admin::metrics::global().register_sink(name, sink.type_name(), ack.clone());
        let task = match sink {
            SinkConfig::Stdout(cfg) => watched(&failed_tx, stdout::run(cfg.clone(), rx, ack, stats)),
            SinkConfig::Stream(cfg) => watched(
                &failed_tx,
                stream::run(stream::Hub::register(name, cfg, &config.tables), rx, ack, stats),
            ),
            SinkConfig::Webhook(cfg) => watched(
                &failed_tx,
                webhook::run(name.clone(), cfg.clone(), config.source.url.clone(), rx, ack),
            ),
            SinkConfig::Elasticsearch(cfg) => watched(
                &failed_tx,
                search::run(name.clone(), cfg.clone(), config.source.url.clone(), rx, ack),
            ),
        };
        senders.push((name.clone(), tx));
        tasks.push((name.clone(), task));
    }
    Ok((senders, Running { tasks, failed }))
}

/// Spawns a sink; its failure raises `failed`.
fn watched(
    failed: &watch::Sender<bool>,
    sink: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
) -> JoinHandle<anyhow::Result<()>> {
    let failed = failed.clone();
    tokio::spawn(async move {
        let result = sink.await;
        if result.is_err() {
            failed.send_replace(true);
        }
        result
    })
}
