//! The loop that drives the search sink: events → actions → batches (by documents, bytes and
//! time) → up to `concurrency` bulk requests in flight → acknowledgements.
//!
//! Acknowledging: every batch gets a sequence number when it is cut. A `Commit` is acknowledged
//! once every batch cut before it (and the one open when it arrived) has finished — written,
//! stale, or dead-lettered. Batches finish out of order; the acknowledged position only moves
//! over a gap-free prefix, so it never runs ahead of an unfinished request.
//!
//! Ordering between requests in flight is left to the versions (commit LSNs, `external_gte`):
//! an older write that lands late is refused as stale. The one case versions cannot order is a
//! transaction split across two batches that touches one document in both (same version): the
//! later batch then waits for the earlier one.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::config::SearchConfig;
use super::encoder::{self, Action, DocKey, Write};
use super::postgres::Postgres;
use super::request_builder::{self, Batch};
use super::retry::{self, Outcome};
use super::service::Service;
use super::{dead_letter, index, toast};
use crate::checkpoint::Ack;
use crate::config::TableMapping;
use crate::event::{Event, Lsn, Op};
use crate::sinks::SinkMsg;

/// What every batch's task shares.
pub struct Shared {
    pub name: Arc<str>,
    pub service: Service,
    pub pg: Postgres,
    pub health: Health,
    pub stats: Stats,
}

#[derive(Default)]
pub struct Stats {
    pub written: AtomicU64,
    pub stale: AtomicU64,
    pub dead: AtomicU64,
    pub coalesced: AtomicU64,
}

pub struct Sink {
    config: SearchConfig,
    shared: Arc<Shared>,
    ack: Ack,
    ensured: HashSet<Arc<str>>,
    batch: Batch,
    batch_opened: Option<Instant>,
    in_flight: JoinSet<u64>,
    /// Per batch in flight that ended inside a transaction: that transaction's version and the
    /// documents it wrote there.
    split: HashMap<u64, (u64, HashSet<DocKey>)>,
    next_seq: u64,
    /// Every batch below this sequence number has finished.
    finished_below: u64,
    finished: BTreeSet<u64>,
    /// (batches that must finish first, end LSN to acknowledge then), in commit order.
    commits: VecDeque<(u64, Lsn)>,
    /// The version of the transaction whose events are arriving and whose Commit has not.
    open_version: Option<u64>,
}

impl Sink {
    pub fn new(config: SearchConfig, shared: Arc<Shared>, ack: Ack) -> Sink {
        Sink {
            config,
            shared,
            ack,
            ensured: HashSet::new(),
            batch: Batch::default(),
            batch_opened: None,
            in_flight: JoinSet::new(),
            split: HashMap::new(),
            next_seq: 0,
            finished_below: 0,
            finished: BTreeSet::new(),
            commits: VecDeque::new(),
            open_version: None,
        }
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<SinkMsg>) -> anyhow::Result<()> {
        let mut msgs = Vec::with_capacity(256);
        loop {
            let deadline = self.batch_opened.map(|t| t + self.config.flush_interval);
            tokio::select! {
                n = rx.recv_many(&mut msgs, 256) => {
                    if n == 0 {
                        break;
                    }
                    for msg in msgs.drain(..) {
                        self.handle(msg).await?;
                    }
                }
                Some(done) = self.in_flight.join_next(), if !self.in_flight.is_empty() => self.finish(done?),
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => self.flush().await?,
            }
        }
        self.flush().await?;
        self.wait_all().await?;
        let s = &self.shared.stats;
        tracing::info!(
            sink = %self.shared.name,
            written = s.written.load(Ordering::Relaxed),
            stale = s.stale.load(Ordering::Relaxed),
            dead_letters = s.dead.load(Ordering::Relaxed),
            coalesced = s.coalesced.load(Ordering::Relaxed),
            "search sink stopped"
        );
        Ok(())
    }

    async fn handle(&mut self, msg: SinkMsg) -> anyhow::Result<()> {
        match msg {
            SinkMsg::Event { event, mapping } => {
                self.open_version = Some(event.commit_lsn.0);
                let alias = encoder::index_name(&mapping);
                if event.op == Op::Truncate {
                    return self.truncate(&alias, &mapping).await;
                }
                self.ensure(&alias, &mapping).await;
                match encoder::actions(&event, &mapping) {
                    Ok(actions) => {
                        for action in actions {
                            self.push(action).await?;
                        }
                    }
                    Err(e) => self.dead_letter_unencodable(&event, &alias, &e.to_string()).await,
                }
            }
            SinkMsg::Commit { end_lsn, .. } => {
                self.open_version = None;
                let must_finish = self.next_seq + u64::from(!self.batch.is_empty());
                self.commits.push_back((must_finish, end_lsn));
                self.acknowledge();
            }
        }
        Ok(())
    }

    async fn push(&mut self, action: Action) -> anyhow::Result<()> {
        if self.batch.is_empty() {
            self.batch_opened = Some(Instant::now());
        }
        self.batch.push(action);
        if self.batch.len() >= self.config.batch_max_docs || self.batch.bytes() >= self.config.batch_max_bytes {
            self.flush().await?;
        }
        Ok(())
    }

    /// Cuts the batch and sends it, once a request slot is free.
    async fn flush(&mut self) -> anyhow::Result<()> {
        self.batch_opened = None;
        if self.batch.is_empty() {
            return Ok(());
        }
        while self.in_flight.len() >= self.config.concurrency || self.overlaps_a_split_transaction() {
            let done = self.in_flight.join_next().await.expect("a request is in flight")?;
            self.finish(done);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(version) = self.open_version {
            self.split.insert(seq, (version, self.batch.docs_at(version)));
        }
        self.shared
            .stats
            .coalesced
            .fetch_add(std::mem::take(&mut self.batch.coalesced), Ordering::Relaxed);
        let actions = self.batch.take();
        let shared = self.shared.clone();
        self.in_flight.spawn(async move {
            deliver(&shared, actions).await;
            seq
        });
        Ok(())
    }

    fn overlaps_a_split_transaction(&self) -> bool {
        self.split
            .values()
            .any(|(version, docs)| self.batch.docs_at(*version).iter().any(|d| docs.contains(d)))
    }

    fn finish(&mut self, seq: u64) {
        self.split.remove(&seq);
        self.finished.insert(seq);
        while self.finished.remove(&self.finished_below) {
            self.finished_below += 1;
        }
        self.acknowledge();
    }

    fn acknowledge(&mut self) {
        let mut last = None;
        while let Some(&(must_finish, end_lsn)) = self.commits.front() {
            if must_finish > self.finished_below {
                break;
            }
            last = Some(end_lsn);
            self.commits.pop_front();
        }
        if let Some(end_lsn) = last {
            self.ack.delivered(end_lsn);
        }
    }

    async fn wait_all(&mut self) -> anyhow::Result<()> {
        while let Some(done) = self.in_flight.join_next().await {
            self.finish(done?);
        }
        Ok(())
    }

    /// Creates the alias's index on first use; retried until the node takes it.
    async fn ensure(&mut self, alias: &Arc<str>, mapping: &TableMapping) {
        if self.ensured.contains(alias) {
            return;
        }
        let service = self.shared.service.clone();
        let settings = mapping.settings.clone();
        retry_forever(&self.shared.health, &format!("preparing index {alias}"), || {
            index::ensure(&service, alias, settings.as_deref())
        })
        .await;
        self.ensured.insert(alias.clone());
    }

    /// Everything before the truncate lands first (in the old index, about to be dropped); what
    /// follows goes to the fresh one.
    async fn truncate(&mut self, alias: &Arc<str>, mapping: &TableMapping) -> anyhow::Result<()> {
        self.flush().await?;
        self.wait_all().await?;
        let service = self.shared.service.clone();
        let settings = mapping.settings.clone();
        tracing::info!(sink = %self.shared.name, table = %mapping.table, alias = %alias, "truncate: emptying the index");
        retry_forever(&self.shared.health, &format!("truncating index {alias}"), || {
            index::truncate(&service, alias, settings.as_deref())
        })
        .await;
        self.ensured.insert(alias.clone());
        Ok(())
    }

    async fn dead_letter_unencodable(&mut self, event: &Arc<Event>, alias: &str, error: &str) {
        tracing::error!(sink = %self.shared.name, table = %event.table, event = %event.id(), "cannot make a document: {error}; stored as a dead letter");
        let payload = dead_letter::unencodable_payload(event);
        let letter = dead_letter::Letter {
            target: alias.to_string(),
            payload,
            error: error.to_string(),
        };
        dead_letter::store(&self.shared, vec![letter]).await;
    }
}

/// Sends one batch until every action is written, stale, or dead-lettered.
pub async fn deliver(shared: &Shared, actions: Vec<Action>) {
    let mut actions = if actions.iter().any(|a| matches!(a.write, Write::IndexAfterRead { .. })) {
        retry_forever(
            &shared.health,
            "reading back unchanged TOAST values from Postgres",
            || async { toast::read_back(&*shared.pg.client().await?, actions.clone()).await },
        )
        .await
    } else {
        actions
    };
    let mut attempt = 0u32;
    while !actions.is_empty() {
        let body = request_builder::build(&actions);
        let reply = shared.service.bulk(body).await;
        let outcomes = match reply {
            Err(e) => Err(("unreachable", format!("cannot reach {}: {e}", shared.service.url))),
            Ok(reply) => retry::classify(reply.status, &reply.body, actions.len()).map_err(|f| {
                if f.auth {
                    (
                        "credentials",
                        format!(
                            "{} refused the credentials ({}): check username/password/api_key",
                            shared.service.url, f.reason
                        ),
                    )
                } else {
                    (
                        "bulk failed",
                        format!("bulk request to {} failed: {}", shared.service.url, f.reason),
                    )
                }
            }),
        };
        match outcomes {
            Err((kind, reason)) => shared.health.failing(kind, &reason),
            Ok(outcomes) => {
                actions = settle(shared, actions, outcomes).await;
                if actions.is_empty() {
                    shared.health.healthy();
                    return;
                }
            }
        }
        tokio::time::sleep(backoff(attempt)).await;
        attempt = attempt.saturating_add(1);
    }
}

/// Counts what was written, stores the dead letters, and returns the actions to send again.
async fn settle(shared: &Shared, actions: Vec<Action>, outcomes: Vec<Outcome>) -> Vec<Action> {
    let mut again = Vec::new();
    let mut letters = Vec::new();
    let mut first_retry = None;
    for (action, outcome) in actions.into_iter().zip(outcomes) {
        match outcome {
            Outcome::Done => {
                shared.stats.written.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Stale => {
                shared.stats.stale.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Retry(reason) => {
                first_retry.get_or_insert(reason);
                again.push(action);
            }
            Outcome::Dead(reason) => {
                letters.push(dead_letter::Letter {
                    target: action.doc.index.to_string(),
                    payload: dead_letter::action_payload(&action),
                    error: reason,
                });
            }
        }
    }
    if let Some(first) = letters.first() {
        // One line per request, not per document: a broken index mapping can refuse thousands.
        tracing::warn!(sink = %shared.name, index = %first.target, "the index refused {} document(s) for themselves, stored as dead letters (`cdc dead-letters list`); the first: {}", letters.len(), first.error);
        shared.stats.dead.fetch_add(letters.len() as u64, Ordering::Relaxed);
        dead_letter::store(shared, letters).await;
    }
    if let Some(reason) = first_retry {
        shared.health.failing(
            "documents not taken",
            &format!("{} documents were not taken: {reason}", again.len()),
        );
    }
    again
}

/// Runs `op` until it succeeds, backing off, logging only when the state changes.
pub async fn retry_forever<T, F, Fut>(health: &Health, what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut attempt = 0u32;
    loop {
        match op().await {
            Ok(value) => {
                health.healthy();
                return value;
            }
            Err(e) => health.failing(what, &format!("{what}: {e:#}")),
        }
        tokio::time::sleep(backoff(attempt)).await;
        attempt = attempt.saturating_add(1);
    }
}

/// 200 ms doubling to 30 s, with some jitter so concurrent requests do not retry in step.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(200)
        .saturating_mul(1u32 << attempt.min(8))
        .min(Duration::from_secs(30));
    base + base.mul_f64(rand::random::<f64>() * 0.2)
}

/// Whether the sink is failing, and how: each change of state is logged once, not every retry.
pub struct Health {
    sink: Arc<str>,
    /// (kind of failure, its first message, retries since).
    failing: Mutex<Option<(String, String, u64)>>,
}

impl Health {
    pub fn new(sink: Arc<str>) -> Health {
        Health {
            sink,
            failing: Mutex::new(None),
        }
    }

    fn failing(&self, kind: &str, reason: &str) {
        let mut state = self.failing.lock().expect("health lock");
        match state.as_mut() {
            Some((previous, _, retries)) if previous == kind => *retries += 1,
            _ => {
                tracing::warn!(sink = %self.sink, "{reason}; retrying with backoff, holding the slot's position");
                *state = Some((kind.to_string(), reason.to_string(), 1));
            }
        }
    }

    fn healthy(&self) {
        if let Some((_, reason, retries)) = self.failing.lock().expect("health lock").take() {
            tracing::info!(sink = %self.sink, retries, "recovered from: {reason}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) >= Duration::from_millis(200) && backoff(0) < Duration::from_millis(250));
        assert!(backoff(3) >= Duration::from_millis(1600));
        assert!(backoff(40) <= Duration::from_secs(36));
        assert!(backoff(40) >= Duration::from_secs(30));
    }
}
