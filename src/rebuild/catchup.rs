//! The catch-up: the temporary slot's changes (everything committed at or after the split point
//! P) streamed into the new index while the copy runs, and after the swap until the position read
//! right after it. It is the daemon's own path: pgoutput decoding, the relation cache (so added
//! columns appear in later documents), the router (filter, projection) and a search sink task
//! whose versions are the commit LSNs; only its mapping's `index` names the index being built.
//!
//! A truncate of the table ends the catch-up with [`Ended::Truncated`]: every row the copy
//! wrote came from before it, so the rebuild starts over from a new snapshot (the old index
//! keeps serving meanwhile).

use std::time::Duration;

use anyhow::{bail, Context};
use pgwire_replication::{ReplicationClient, ReplicationEvent};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::checkpoint::Checkpoint;
use crate::config::TableMapping;
use crate::event::{Lsn, Position, TableName};
use crate::router::Router;
use crate::sinks::search::{self, SearchConfig};
use crate::sinks::CHANNEL_CAPACITY;
use crate::source::changes;
use crate::source::pgoutput::{self, Message};
use crate::source::relations::{Relation, RelationCache};

/// How the catch-up ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Every change up to this position is in the index.
    Reached(Lsn),
    /// The table was truncated by the transaction committed at this LSN.
    Truncated(Lsn),
}

/// The running catch-up task.
pub struct CatchUp {
    pub task: JoinHandle<anyhow::Result<Ended>>,
    until: watch::Sender<Option<Lsn>>,
    applied: watch::Receiver<Lsn>,
}

/// What the catch-up streams into.
pub struct Target {
    /// The mapping, with `index` set to the index being built.
    pub mapping: TableMapping,
    pub sink_name: String,
    pub config: SearchConfig,
    pub source_url: String,
}

impl CatchUp {
    /// Streams `client` (already started on the temporary slot) into a search sink task.
    pub fn spawn(client: ReplicationClient, catalog: Client, target: Target) -> CatchUp {
        let (until_tx, until_rx) = watch::channel(None);
        let (applied_tx, applied_rx) = watch::channel(Lsn::ZERO);
        let mut checkpoint = Checkpoint::new();
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let ack = checkpoint.register();
        let sink = tokio::spawn(search::run(
            target.sink_name.clone(),
            target.config,
            target.source_url,
            rx,
            ack,
        ));
        let table = target.mapping.table.clone();
        let router = Router::new(&[target.mapping], vec![(target.sink_name, tx)]);
        let stream = Stream {
            client,
            catalog,
            table,
            router,
            checkpoint,
            sink: Some(sink),
            until: until_rx,
            applied: applied_tx,
        };
        CatchUp {
            task: tokio::spawn(stream.run()),
            until: until_tx,
            applied: applied_rx,
        }
    }

    /// Waits until every change committed before `lsn` is in the index. Returns early (false)
    /// when the task ended first; its result says why.
    pub async fn reached(&mut self, lsn: Lsn) -> bool {
        self.applied.wait_for(|applied| *applied >= lsn).await.is_ok()
    }

    /// Asks the task to stop once it has applied everything before `lsn`, and waits for it.
    pub async fn finish(mut self, lsn: Lsn) -> anyhow::Result<Ended> {
        self.until.send_replace(Some(lsn));
        (&mut self.task).await.context("the catch-up task panicked")?
    }
}

/// A rebuild that gives up (an error) must not leave the task writing into an index it deletes.
impl Drop for CatchUp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Stream {
    client: ReplicationClient,
    catalog: Client,
    table: TableName,
    router: Router,
    checkpoint: Checkpoint,
    sink: Option<JoinHandle<anyhow::Result<()>>>,
    until: watch::Receiver<Option<Lsn>>,
    applied: watch::Sender<Lsn>,
}

/// The open transaction: its commit LSN (the documents' version) and the changes seen so far.
struct Txn {
    commit_lsn: Lsn,
    xid: u32,
    committed_at_us: i64,
    seq: u32,
}

impl Stream {
    async fn run(mut self) -> anyhow::Result<Ended> {
        let mut relations = RelationCache::default();
        let mut txn: Option<Txn> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let ev = tokio::select! {
                _ = tick.tick() => None,
                ev = self.client.recv() => Some(ev),
            };
            if let Some(ev) = ev {
                let ev = ev
                    .context("streaming the temporary slot")?
                    .context("the server ended the temporary slot's stream")?;
                if let Some(truncated) = self.on_event(ev, &mut txn, &mut relations).await? {
                    self.stop().await;
                    return Ok(Ended::Truncated(truncated));
                }
            }
            let confirmed = self.checkpoint.confirmable();
            self.client
                .update_applied_lsn(pgwire_replication::Lsn::from_u64(confirmed.0));
            self.applied.send_if_modified(|applied| {
                let raised = confirmed > *applied;
                *applied = (*applied).max(confirmed);
                raised
            });
            let until = *self.until.borrow();
            if until.is_some_and(|until| confirmed >= until) {
                self.stop().await;
                return Ok(Ended::Reached(confirmed));
            }
            if self.sink.as_ref().is_some_and(JoinHandle::is_finished) {
                self.stop().await;
                bail!("the catch-up's search sink stopped");
            }
        }
    }

    /// Handles one replication event; returns the commit LSN of a truncate of the table.
    async fn on_event(
        &mut self,
        ev: ReplicationEvent,
        txn: &mut Option<Txn>,
        relations: &mut RelationCache,
    ) -> anyhow::Result<Option<Lsn>> {
        match ev {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                *txn = Some(Txn {
                    commit_lsn: Lsn(final_lsn.as_u64()),
                    xid,
                    committed_at_us: changes::pg_time_to_unix_us(commit_time_micros),
                    seq: 0,
                });
            }
            ReplicationEvent::Commit { lsn, end_lsn, .. } => {
                *txn = None;
                let end = Lsn(end_lsn.as_u64());
                // The catch-up is not hot: each transaction is handed over at its commit.
                self.router.commit(Lsn(lsn.as_u64()), end);
                self.router.flush().await?;
                self.checkpoint.dispatched(end);
            }
            ReplicationEvent::XLogData { wal_start, data, .. } => {
                let lsn = Lsn(wal_start.as_u64());
                let msg = pgoutput::decode(&data).map_err(|e| anyhow::anyhow!("decoding pgoutput at {lsn}: {e}"))?;
                return self.on_change(msg, lsn, txn, relations).await;
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                if txn.is_none() {
                    self.checkpoint.keepalive(Lsn(wal_end.as_u64()));
                }
            }
            ReplicationEvent::Message { .. } | ReplicationEvent::StoppedAt { .. } => {}
        }
        Ok(None)
    }

    /// Routes an event; a full run is handed over at once (a large transaction streams through).
    async fn route(&mut self, event: crate::event::Event) -> anyhow::Result<()> {
        self.router.route(event);
        if self.router.run_full() {
            self.router.flush().await?;
        }
        Ok(())
    }

    async fn on_change(
        &mut self,
        msg: Message<'_>,
        lsn: Lsn,
        txn: &mut Option<Txn>,
        relations: &mut RelationCache,
    ) -> anyhow::Result<Option<Lsn>> {
        match msg {
            Message::Relation(rel) => {
                relations.update(&rel, &self.catalog).await?;
            }
            Message::Insert { relation, new } => {
                let (rel, pos) = lookup(relations, relation, txn, lsn)?;
                self.route(changes::insert(rel, &new, pos)).await?;
            }
            Message::Update { relation, old, new } => {
                let (rel, pos) = lookup(relations, relation, txn, lsn)?;
                self.route(changes::update(rel, old.as_ref(), &new, pos)).await?;
            }
            Message::Delete { relation, old } => {
                let (rel, pos) = lookup(relations, relation, txn, lsn)?;
                self.route(changes::delete(rel, &old, pos)).await?;
            }
            Message::Truncate { relations: oids, .. } => {
                for oid in oids {
                    let (rel, pos) = lookup(relations, oid, txn, lsn)?;
                    // Other tables' truncates only take their place in the change numbering.
                    if *rel.table == self.table {
                        return Ok(Some(pos.commit_lsn));
                    }
                }
            }
            Message::Begin { .. }
            | Message::Commit { .. }
            | Message::Origin { .. }
            | Message::Type { .. }
            | Message::LogicalMessage { .. } => {}
        }
        Ok(None)
    }

    /// Lets the sink deliver what it holds, then ends the session (the temporary slot goes
    /// with it).
    async fn stop(&mut self) {
        self.router.close();
        if let Some(sink) = self.sink.take() {
            match sink.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("the catch-up's search sink failed: {e:#}"),
                Err(e) => tracing::error!("the catch-up's search sink panicked: {e}"),
            }
        }
        self.client.stop();
    }
}

/// The change's relation and its position in the open transaction.
fn lookup<'a>(
    relations: &'a RelationCache,
    oid: u32,
    txn: &mut Option<Txn>,
    lsn: Lsn,
) -> anyhow::Result<(&'a Relation, Position)> {
    let rel = relations
        .get(oid)
        .with_context(|| format!("change for relation {oid} before its Relation message"))?;
    let txn = txn.as_mut().context("change outside a transaction")?;
    let pos = Position {
        lsn,
        commit_lsn: txn.commit_lsn,
        seq: txn.seq,
        xid: txn.xid,
        committed_at_us: txn.committed_at_us,
    };
    txn.seq += 1;
    Ok((rel, pos))
}
