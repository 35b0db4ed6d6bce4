//! The replication loop: connect, stream, decode, route, confirm; reconnect on failure.
//!
//! Positions: Begin announces the commit LSN (event ids and search versions use it); Commit
//! brings the end LSN, which sinks acknowledge and cdc confirms. After a reconnect Postgres
//! resends every transaction after the confirmed position, so nothing is lost and a replay
//! carries the same event ids.

use std::time::Duration;

use anyhow::Context;
use futures_util::FutureExt;
use pgwire_replication::{ReplicationClient, ReplicationEvent};
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::checkpoint::Checkpoint;
use crate::config::SourceConfig;
use crate::event::{Lsn, Position, TruncateFlags};
use crate::retry::Backoff;
use crate::router::Router;
use crate::sinks::Running;
use crate::source::changes;
use crate::source::connection::{self, Target};
use crate::source::errors;
use crate::source::pgoutput::{self, Message};
use crate::source::relations::RelationCache;

/// How the loop ended.
pub enum Stop {
    /// Shutdown was requested; the sinks delivered everything and the final position was confirmed.
    Shutdown,
    /// The stream reached the requested stop position (`cdc run --stop-at`); as for `Shutdown`.
    Reached(Lsn),
    /// Shutdown was requested while no session was streaming (Postgres unreachable) after
    /// changes were received: the final position could not be confirmed.
    Unconfirmed,
}

struct Txn {
    commit_lsn: Lsn,
    xid: u32,
    committed_at_us: i64,
    seq: u32,
}

impl Txn {
    fn next_position(&mut self, lsn: Lsn) -> Position {
        let pos = Position {
            lsn,
            commit_lsn: self.commit_lsn,
            seq: self.seq,
            xid: self.xid,
            committed_at_us: self.committed_at_us,
        };
        self.seq += 1;
        pos
    }
}

/// Streams until shutdown, reconnecting with capped backoff after any connection failure.
pub async fn run(
    source: &SourceConfig,
    router: &mut Router,
    sinks: &mut Running,
    checkpoint: &mut Checkpoint,
    shutdown: &mut watch::Receiver<bool>,
    stop_at: Option<Lsn>,
) -> anyhow::Result<Stop> {
    let target = Target::parse(&source.url)?;
    let mut reconnect = Reconnect {
        backoff: Backoff::new(Duration::from_secs(1)),
        had_slot: false,
    };
    loop {
        if *shutdown.borrow() {
            // Between sessions: what was delivered after the last status update is unconfirmed.
            return Ok(if checkpoint.received_any() {
                Stop::Unconfirmed
            } else {
                Stop::Shutdown
            });
        }
        match session(source, router, sinks, checkpoint, shutdown, stop_at, &mut reconnect).await {
            Ok(stop) => return Ok(stop),
            Err(SessionError::Fatal(e)) => {
                crate::admin::metrics::global().source.connected.set(0);
                return Err(e);
            }
            Err(SessionError::Retry(e)) if errors::slot_in_use(&e) => {
                // Another reader (another `cdc run` with this config) streams from the slot: this
                // one is its standby. Postgres releases the slot as soon as that reader's
                // connection ends, so try again often (not with the doubling backoff) to take
                // over within seconds; say so once, not on every try.
                let metrics = crate::admin::metrics::global();
                metrics.source.connected.set(0);
                if metrics.source.standby.get() == 0 {
                    metrics.source.standby.set(1);
                    tracing::warn!(
                        slot = %source.slot,
                        "standing by: the slot is active for another reader (another cdc run?): {:#}; \
                         trying to take it over every {}s",
                        e,
                        super::standby::RETRY.as_secs()
                    );
                } else {
                    tracing::debug!(slot = %source.slot, "still standing by: {:#}", e);
                }
                tokio::select! {
                    _ = tokio::time::sleep(super::standby::RETRY) => {}
                    _ = shutdown.changed() => {}
                }
            }
            Err(SessionError::Retry(e)) => {
                let metrics = crate::admin::metrics::global();
                metrics.source.connected.set(0);
                metrics.source.standby.set(0);
                metrics.source.reconnects.inc();
                let wait = reconnect.backoff.next_wait();
                tracing::error!("{}: {:#}; retrying in {}s", target.describe(), e, wait.as_secs());
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
}

/// What one session leaves the next.
struct Reconnect {
    backoff: Backoff,
    /// The slot existed (or was created) when this run first connected: a later session must
    /// find it, since a new one would skip what was committed in between.
    had_slot: bool,
}

enum SessionError {
    /// Worth retrying: the server is unreachable, restarting, or the connection broke.
    Retry(anyhow::Error),
    /// Retrying cannot help (a sink stopped, the slot or publication is missing).
    Fatal(anyhow::Error),
}

impl From<anyhow::Error> for SessionError {
    fn from(e: anyhow::Error) -> Self {
        SessionError::Retry(e)
    }
}

async fn session(
    source: &SourceConfig,
    router: &mut Router,
    sinks: &mut Running,
    checkpoint: &mut Checkpoint,
    shutdown: &mut watch::Receiver<bool>,
    stop_at: Option<Lsn>,
    reconnect: &mut Reconnect,
) -> Result<Stop, SessionError> {
    let catalog = connection::catalog(&source.url).await.map_err(classify)?;
    let streamed_since = reconnect.had_slot.then(|| checkpoint.confirmable());
    connection::preflight(&catalog, source, router.mappings(), streamed_since)
        .await
        .map_err(classify)?;
    reconnect.had_slot = true;

    // The replication client's own stop position compares it with the server's WAL end on
    // every message, which passes it in the middle of a large transaction; cdc stops at
    // transaction boundaries instead (see `reached`).
    let target = Target::parse(&source.url)?;
    let cfg = target.replication_config(&source.slot, &source.publication, "cdc", source.status_interval);
    let mut client = ReplicationClient::connect(cfg).await.context("starting replication")?;
    client.wait_started().await.map_err(|e| classify(e.into()))?;
    let metrics = crate::admin::metrics::global();
    if metrics.source.standby.get() == 1 {
        metrics.source.standby.set(0);
        tracing::warn!(slot = %source.slot, "took over the slot: the reader that held it is gone");
    }
    tracing::info!(slot = %source.slot, publication = %source.publication, "streaming from {}", target.describe());
    reconnect.backoff.reset();
    metrics.source.connected.set(1);

    let mut relations = RelationCache::default();
    let mut txn: Option<Txn> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let fatal = |e: crate::router::SinkStopped| SessionError::Fatal(e.into());
    // Events handled since the loop last looked at the shutdown signal and the tick.
    let mut at_hand = 0;
    // When the pending runs were last handed over (see `FLUSH_LINGER`).
    let mut flushed_at = tokio::time::Instant::now() - FLUSH_LINGER;

    let stop = loop {
        // What the replication client has at hand is routed into the sinks' pending runs
        // without waiting; before waiting for more, whole transactions are handed to the sinks
        // (see `Router::flush`), at most once per `FLUSH_LINGER`: in between, the source's thread
        // sleeps (`Next::Linger`). So a burst of one-row transactions costs one wake-up of this
        // thread and of each sink per millisecond, not several per transaction.
        let next = 'next: {
            let mut recv = std::pin::pin!(client.recv());
            match (at_hand < crate::router::RUN_MAX)
                .then(|| recv.as_mut().now_or_never())
                .flatten()
            {
                Some(ev) => Next::Event(ev),
                None => {
                    // Nothing at hand (rather than a full run's worth handled since the last look).
                    let drained = at_hand < crate::router::RUN_MAX;
                    at_hand = 0;
                    let now = tokio::time::Instant::now();
                    let plan = hand_over(router.has_commits(), flushed_at, now);
                    if let (HandOver::At(due), true) = (plan, drained) {
                        break 'next Next::Linger(due);
                    }
                    let flushed = async {
                        if plan == HandOver::Now {
                            router.flush().await.map_err(fatal)?;
                        }
                        Ok::<_, SessionError>(())
                    };
                    // A sink that cannot take more (its endpoint is down) must not keep cdc from stopping.
                    tokio::select! {
                        biased;
                        _ = shutdown.changed() => Next::Shutdown,
                        r = flushed => {
                            r?;
                            if plan == HandOver::Now {
                                flushed_at = tokio::time::Instant::now();
                            }
                            tokio::select! {
                                biased;
                                _ = shutdown.changed() => Next::Shutdown,
                                _ = tick.tick() => Next::Tick,
                                ev = recv => Next::Event(ev),
                            }
                        }
                    }
                }
            }
        };
        let ev = match next {
            Next::Shutdown => break Stop::Shutdown,
            Next::Linger(due) => {
                // Transactions arrive faster than one per millisecond. This thread serves only
                // the source (the replication client's worker and this loop), so it sleeps out the
                // rest of the millisecond as a whole: the kernel gathers what the server sends
                // meanwhile, and the worker reads it in a few large reads instead of waking and
                // reading (and acknowledging on TCP) per packet. Then the worker runs once, and
                // the loop routes what it read and hands it over.
                std::thread::sleep(due.saturating_duration_since(tokio::time::Instant::now()));
                tokio::task::yield_now().await;
                continue;
            }
            Next::Tick => {
                // A sink that ended (it failed) is noticed here too, not only at the next send,
                // so that cdc ends with its error while the mapped tables are quiet.
                if let Some(stopped) = router.stopped_sink() {
                    return Err(SessionError::Fatal(stopped.into()));
                }
                // An atomic store; the client sends it on its status interval.
                client.update_applied_lsn(to_pg(checkpoint.confirmable()));
                crate::admin::metrics::global().confirmed(checkpoint.confirmable().0);
                continue;
            }
            Next::Event(Ok(Some(ev))) => ev,
            Next::Event(Ok(None)) => return Err(anyhow::anyhow!("the server ended the replication stream").into()),
            Next::Event(Err(e)) => return Err(classify(e.into())),
        };
        at_hand += 1;
        let reached_at = match ev {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                let committed_at_us = changes::pg_time_to_unix_us(commit_time_micros);
                crate::admin::metrics::global().began(final_lsn.as_u64(), committed_at_us);
                txn = Some(Txn {
                    commit_lsn: Lsn(final_lsn.as_u64()),
                    xid,
                    committed_at_us,
                    seq: 0,
                });
                None
            }
            ReplicationEvent::Commit { lsn, end_lsn, .. } => {
                txn = None;
                let end = Lsn(end_lsn.as_u64());
                router.commit(Lsn(lsn.as_u64()), end);
                checkpoint.dispatched(end);
                crate::admin::metrics::global().received(end.0);
                reached(stop_at, end)
            }
            ReplicationEvent::XLogData { wal_start, data, .. } => {
                let lsn = Lsn(wal_start.as_u64());
                let msg = pgoutput::decode(&data)
                    .map_err(|e| SessionError::Fatal(anyhow::anyhow!("decoding pgoutput at {lsn}: {e}")))?;
                if let Message::Relation(rel) = &msg {
                    // The only change that waits (for the catalog).
                    tokio::select! {
                        biased;
                        _ = shutdown.changed() => break Stop::Shutdown,
                        updated = relations.update(rel, &catalog) => {
                            let relation = updated?;
                            let columns: Vec<&str> = relation.columns.iter().map(|c| &*c.name).collect();
                            router
                                .check_columns(&relation.table, &columns)
                                .map_err(|e| SessionError::Fatal(crate::retry::Unrecoverable(e).into()))?;
                        }
                    }
                } else {
                    on_change(msg, lsn, &mut txn, &relations, router)?;
                }
                None
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                if txn.is_none() {
                    checkpoint.keepalive(Lsn(wal_end.as_u64()));
                    reached(stop_at, Lsn(wal_end.as_u64()))
                } else {
                    None
                }
            }
            ReplicationEvent::Message { prefix, .. } => {
                tracing::debug!(prefix, "logical decoding message (not routed)");
                None
            }
            ReplicationEvent::StoppedAt { .. } => None,
        };
        if let Some(position) = reached_at {
            break Stop::Reached(position);
        }
        if router.run_full() {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break Stop::Shutdown,
                r = router.flush() => r.map_err(fatal)?,
            }
        }
    };
    finish(client, &target, source, &catalog, router, sinks, checkpoint)
        .await
        .map_err(SessionError::Fatal)?;
    Ok(stop)
}

/// What the loop does next.
enum Next {
    Event(Result<Option<ReplicationEvent>, pgwire_replication::PgWireError>),
    Tick,
    /// Transactions wait in the pending runs until this hand-over.
    Linger(tokio::time::Instant),
    Shutdown,
}

/// How long routed transactions may wait for more before they are handed to the sinks, when
/// transactions arrive faster than this. Each hand-over wakes every sink's thread: at 40,000
/// one-row transactions/s, a hand-over per transaction cost a sixth of cdc's CPU in wake-ups
/// (perf, `scripts/bench/source.sh` shape 2); and the source's own thread, woken per packet to
/// read a transaction or two, spent half of cdc's CPU in reads, TCP acknowledgements and
/// wake-ups. A transaction arriving after a quiet millisecond is handed over at once, so a
/// trickle gains no latency; a burst gains at most this.
const FLUSH_LINGER: Duration = Duration::from_millis(1);

/// When the routed transactions go to the sinks, once nothing more is at hand.
#[derive(Debug, Clone, Copy, PartialEq)]
enum HandOver {
    Now,
    /// When the linger since the last hand-over ends (more may arrive meanwhile).
    At(tokio::time::Instant),
    /// No transaction waits: runs without a commit give a sink nothing to acknowledge.
    Nothing,
}

fn hand_over(has_commits: bool, last: tokio::time::Instant, now: tokio::time::Instant) -> HandOver {
    let due = last + FLUSH_LINGER;
    match (has_commits, due <= now) {
        (false, _) => HandOver::Nothing,
        (true, true) => HandOver::Now,
        (true, false) => HandOver::At(due),
    }
}

/// Routes one decoded change (a relation message is the caller's: it reads the catalog).
fn on_change(
    msg: Message<'_>,
    lsn: Lsn,
    txn: &mut Option<Txn>,
    relations: &RelationCache,
    router: &mut Router,
) -> Result<(), SessionError> {
    match msg {
        Message::Insert { relation, new } => {
            let (rel, pos) = lookup(relations, relation, txn, lsn)?;
            if router.wants(&rel.table) {
                router.route(changes::insert(rel, &new, pos));
            }
        }
        Message::Update { relation, old, new } => {
            let (rel, pos) = lookup(relations, relation, txn, lsn)?;
            if router.wants(&rel.table) {
                router.route(changes::update(rel, old.as_ref(), &new, pos));
            }
        }
        Message::Delete { relation, old } => {
            let (rel, pos) = lookup(relations, relation, txn, lsn)?;
            if router.wants(&rel.table) {
                router.route(changes::delete(rel, &old, pos));
            }
        }
        Message::Truncate {
            cascade,
            restart_identity,
            relations: oids,
        } => {
            let flags = TruncateFlags {
                cascade,
                restart_identity,
            };
            for oid in oids {
                let (rel, pos) = lookup(relations, oid, txn, lsn)?;
                if router.wants(&rel.table) {
                    router.route(changes::truncate(rel, flags, pos));
                }
            }
        }
        // Relations are the caller's; Begin and Commit come as their own replication events;
        // types are resolved from the catalog when a relation needs them; origins and messages
        // are not routed.
        Message::Relation(_)
        | Message::Begin { .. }
        | Message::Commit { .. }
        | Message::Origin { .. }
        | Message::Type { .. }
        | Message::LogicalMessage { .. } => {}
    }
    Ok(())
}

/// The change's relation and position. Every change of the transaction takes a position, routed
/// or not, so event ids do not depend on which tables the configuration maps.
fn lookup<'a>(
    relations: &'a RelationCache,
    oid: u32,
    txn: &mut Option<Txn>,
    lsn: Lsn,
) -> Result<(&'a crate::source::relations::Relation, Position), SessionError> {
    let rel = relations
        .get(oid)
        .ok_or_else(|| SessionError::Retry(anyhow::anyhow!("change for relation {oid} before its Relation message")))?;
    let txn = txn
        .as_mut()
        .ok_or_else(|| SessionError::Retry(anyhow::anyhow!("change outside a transaction")))?;
    Ok((rel, txn.next_position(lsn)))
}

/// Shutdown: the sinks deliver what they hold, then the final position is confirmed before the
/// session closes. Fails unless every sink delivered everything it received and Postgres holds
/// the position: `cdc run`'s exit status says whether it stopped clean.
///
/// The streaming session sends a raised position only once its status interval (1 s by default)
/// has passed since its last report, and the replication client has no way to send one at once.
/// A session's first status update, though, is sent as soon as it streams, with the position it
/// was started with (`ack_lsn`): so, when the streaming session has not sent the final position,
/// it is stopped and a short session of its own reports it. Then the slot is read until
/// Postgres shows the position.
async fn finish(
    mut client: ReplicationClient,
    target: &Target,
    source: &SourceConfig,
    catalog: &Client,
    router: &mut Router,
    sinks: &mut Running,
    checkpoint: &Checkpoint,
) -> anyhow::Result<()> {
    // What was routed and not handed over yet; a sink that takes nothing more within the drain
    // timeout leaves it undelivered (and the exit status says so).
    let _ = tokio::time::timeout(crate::sinks::DRAIN_TIMEOUT, router.flush()).await;
    router.close();
    let drained = sinks.drain().await;
    let last = checkpoint.confirmable();
    if drained.is_ok() && checkpoint.undelivered().is_none() {
        tracing::info!(position = %last, "the sinks delivered everything up to {last}; confirming it");
    }
    client.update_applied_lsn(to_pg(last));
    client.stop();
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while let Ok(Some(_)) = client.recv().await {}
    })
    .await;
    let sent = client.metrics().last_applied_lsn().as_u64() >= last.0 || report(target, source, last).await;
    let confirmed = sent && slot_reaches(catalog, &source.slot, last, Duration::from_secs(5)).await;
    if confirmed {
        tracing::info!(confirmed = %last, "confirmed the final position");
    }
    drained?;
    if let Some((acked, dispatched)) = checkpoint.undelivered() {
        anyhow::bail!("stopped with undelivered changes: the sinks acknowledged up to {acked}, the stream had reached {dispatched}; the rest is sent again at the next start");
    }
    if !confirmed {
        anyhow::bail!("could not confirm the final position {last} to Postgres; what was delivered since the last confirmed position is sent again at the next start");
    }
    Ok(())
}

/// Reports `position` as the slot's flush position on a session of its own (see `finish`):
/// whether its status update was sent. The streaming session's server process may hold the
/// slot for a moment after that session stopped (55006, "active for PID"): then it tries again.
async fn report(target: &Target, source: &SourceConfig, position: Lsn) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let cfg = target
        .replication_config(&source.slot, &source.publication, "cdc", source.status_interval)
        .with_start_lsn(to_pg(position))
        .with_ack_lsn(to_pg(position));
    loop {
        let started = async {
            let mut client = ReplicationClient::connect(cfg.clone()).await?;
            client.wait_started().await?;
            Ok::<_, pgwire_replication::PgWireError>(client)
        }
        .await;
        match started {
            Ok(mut client) => {
                // Its first status update precedes the end of the stream that `stop` asks for.
                client.stop();
                while let Ok(Some(_)) = client.recv().await {}
                return client.metrics().last_applied_lsn().as_u64() >= position.0;
            }
            Err(e) => {
                let e = anyhow::Error::new(e);
                if errors::sqlstate(&e).as_deref() != Some("55006") || tokio::time::Instant::now() >= deadline {
                    tracing::warn!("reporting the final position {position}: {e:#}");
                    return false;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether the slot's confirmed position reaches `lsn` within `wait`, as Postgres shows it.
async fn slot_reaches(catalog: &Client, slot: &str, lsn: Lsn, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let confirmed = catalog
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await;
        match confirmed {
            Ok(Some(row)) if row.get::<_, Option<String>>(0).and_then(|t| Lsn::parse(&t)) >= Some(lsn) => return true,
            Ok(_) if tokio::time::Instant::now() < deadline => {}
            Ok(_) => return false,
            Err(e) => {
                tracing::warn!("reading the slot's confirmed position: {e}");
                return false;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `--stop-at`: whether the stream, between transactions at `position`, has reached it.
fn reached(stop_at: Option<Lsn>, position: Lsn) -> Option<Lsn> {
    stop_at.filter(|stop| position >= *stop).map(|_| position)
}

fn to_pg(lsn: Lsn) -> pgwire_replication::Lsn {
    pgwire_replication::Lsn::from_u64(lsn.0)
}

/// Errors that no retry can fix end the run with their message (see `errors`).
fn classify(e: anyhow::Error) -> SessionError {
    if errors::is_fatal(&e) {
        SessionError::Fatal(e)
    } else {
        SessionError::Retry(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[test]
    fn a_transaction_after_a_quiet_millisecond_is_handed_over_at_once() {
        let last = Instant::now();
        assert_eq!(hand_over(true, last, last + FLUSH_LINGER), HandOver::Now);
        assert_eq!(hand_over(true, last, last + Duration::from_secs(5)), HandOver::Now);
    }

    #[test]
    fn a_burst_waits_for_the_end_of_the_millisecond_and_no_longer() {
        let last = Instant::now();
        let soon = last + Duration::from_micros(200);
        assert_eq!(hand_over(true, last, soon), HandOver::At(last + FLUSH_LINGER));
    }

    #[test]
    fn runs_without_a_commit_wait_for_one() {
        let last = Instant::now();
        assert_eq!(hand_over(false, last, last + Duration::from_secs(5)), HandOver::Nothing);
        assert_eq!(hand_over(false, last, last), HandOver::Nothing);
    }
}
