//! The loop that drives the search sink: events → actions → batches (by documents, bytes and
//! time) → up to `concurrency` bulk requests in flight → acknowledgements.
//!
//! Acknowledging: every batch gets a sequence number when it is cut. A `Commit` is acknowledged
//! once every batch cut before it (and the one open when it arrived) has finished — written,
//! stale, or dead-lettered. Batches finish out of order; the acknowledged position only moves
//! over a gap-free prefix, so it never runs ahead of an unfinished request.
//!
//! Ordering: a batch that touches a document an unfinished batch also touches waits for that
//! batch to finish. Versions (commit LSNs, `external_gte`) alone cannot order them: a node
//! remembers a delete only for `index.gc_deletes` (60 s) and forgets it on a restart, so an
//! older write retried after that would bring a deleted document back for good. Requests on
//! different documents still overlap freely; what is held is at most `concurrency` batches'
//! document ids.
//!
//! Size: the bytes of a request are counted again once its documents are known (after a TOAST
//! read-back), and a request the node refuses as too large (413) is split in halves down to
//! single documents; a single document over the node's limit becomes a dead letter.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::config::SearchConfig;
use super::encoder::{self, Action, DocKey, Write};
use super::request_builder::{self, Batch};
use super::retry::{self, Outcome};
use super::service::{SendError, Service};
use super::{dead_letter, index, toast};
use crate::checkpoint::Ack;
use crate::config::TableMapping;
use crate::event::{Lsn, Op};
use crate::sinks::SinkMsg;
use crate::state::Postgres;

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
    /// The documents of each unfinished batch, by sequence number.
    in_flight_docs: HashMap<u64, HashSet<DocKey>>,
    next_seq: u64,
    /// Every batch below this sequence number has finished.
    finished_below: u64,
    finished: BTreeSet<u64>,
    /// (batches that must finish first, end LSN to acknowledge then), in commit order.
    commits: VecDeque<(u64, Lsn)>,
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
            in_flight_docs: HashMap::new(),
            next_seq: 0,
            finished_below: 0,
            finished: BTreeSet::new(),
            commits: VecDeque::new(),
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
                let alias = encoder::index_name(&mapping);
                if event.op == Op::Truncate {
                    return self.truncate(&alias, &mapping).await;
                }
                self.ensure(&alias, &mapping).await?;
                match encoder::actions(&event, &mapping) {
                    Ok(actions) => {
                        for action in actions {
                            self.push(action).await?;
                        }
                    }
                    Err(e) => dead_letter::store_unencodable(&self.shared, &alias, &[(event, e.to_string())]).await,
                }
            }
            SinkMsg::Commit { end_lsn, .. } => {
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
        let docs: HashSet<DocKey> = self.batch.docs().cloned().collect();
        while self.in_flight.len() >= self.config.concurrency
            || self.in_flight_docs.values().any(|busy| !busy.is_disjoint(&docs))
        {
            let done = self.in_flight.join_next().await.expect("a request is in flight")?;
            self.finish(done);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight_docs.insert(seq, docs);
        self.shared
            .stats
            .coalesced
            .fetch_add(std::mem::take(&mut self.batch.coalesced), Ordering::Relaxed);
        let actions = self.batch.take();
        let shared = self.shared.clone();
        let max_bytes = self.config.batch_max_bytes;
        self.in_flight.spawn(async move {
            deliver(&shared, actions, max_bytes).await;
            seq
        });
        Ok(())
    }

    fn finish(&mut self, seq: u64) {
        self.in_flight_docs.remove(&seq);
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

    /// Creates the alias's index on first use; retried until the node takes it, unless no retry
    /// can fix what failed (the settings file, a mapping the node refuses): that ends the run.
    async fn ensure(&mut self, alias: &Arc<str>, mapping: &TableMapping) -> anyhow::Result<()> {
        if self.ensured.contains(alias) {
            return Ok(());
        }
        let service = self.shared.service.clone();
        let settings = mapping.settings.clone();
        retry_unless_unfixable(&self.shared, &format!("preparing index {alias}"), || {
            index::ensure(&service, alias, settings.as_deref())
        })
        .await?;
        self.ensured.insert(alias.clone());
        Ok(())
    }

    /// Everything before the truncate lands first (in the old index, about to be dropped); what
    /// follows goes to the fresh one.
    async fn truncate(&mut self, alias: &Arc<str>, mapping: &TableMapping) -> anyhow::Result<()> {
        self.flush().await?;
        self.wait_all().await?;
        let service = self.shared.service.clone();
        let settings = mapping.settings.clone();
        tracing::info!(sink = %self.shared.name, table = %mapping.table, alias = %alias, "truncate: emptying the index");
        retry_unless_unfixable(&self.shared, &format!("truncating index {alias}"), || {
            index::truncate(&service, alias, settings.as_deref())
        })
        .await?;
        self.ensured.insert(alias.clone());
        Ok(())
    }
}

/// Sends one batch until every action is written, stale, or dead-lettered: in requests of at
/// most `max_bytes` (counted once the documents are known), split further when the node says
/// a request is too large.
pub async fn deliver(shared: &Shared, actions: Vec<Action>, max_bytes: usize) {
    let actions = if actions.iter().any(|a| matches!(a.write, Write::IndexAfterRead { .. })) {
        let read = retry_forever(shared, "reading back unchanged TOAST values from Postgres", || async {
            toast::read_back(&*shared.pg.client().await?, actions.clone()).await
        })
        .await;
        if let Some((first, why)) = read.unreadable.first() {
            tracing::warn!(sink = %shared.name, index = %first.doc.index, "{} update(s) whose unchanged TOAST values cannot be read back, stored as dead letters; the first ({}): {why}", read.unreadable.len(), first.doc.id);
            shared
                .stats
                .dead
                .fetch_add(read.unreadable.len() as u64, Ordering::Relaxed);
        }
        let letters: Vec<dead_letter::Letter> = read
            .unreadable
            .iter()
            .map(|(action, why)| letter(action, why.clone()))
            .collect();
        store_letters(shared, letters).await;
        read.actions
    } else {
        actions
    };
    let mut requests = split_by_bytes(actions, max_bytes);
    while let Some(request) = requests.pop_front() {
        if let Some(halves) = send(shared, request).await {
            for half in halves.into_iter().rev() {
                requests.push_front(half);
            }
        }
    }
}

/// Consecutive runs of `actions` of at most `max_bytes` each (at least one action each).
fn split_by_bytes(actions: Vec<Action>, max_bytes: usize) -> VecDeque<Vec<Action>> {
    let mut out = VecDeque::new();
    let mut current: Vec<Action> = Vec::new();
    let mut bytes = 0;
    for action in actions {
        if !current.is_empty() && bytes + action.size() > max_bytes {
            out.push_back(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += action.size();
        current.push(action);
    }
    if !current.is_empty() {
        out.push_back(current);
    }
    out
}

/// Sends one request until each of its actions is settled. Returns the request cut in halves
/// when the node refused it as too large (413), to be sent in their place.
async fn send(shared: &Shared, mut actions: Vec<Action>) -> Option<[Vec<Action>; 2]> {
    let mut attempt = 0u32;
    while !actions.is_empty() {
        let body = request_builder::build(&actions);
        let bytes = body.len();
        let metrics = &shared.health.metrics;
        metrics.batch_events.observe(actions.len() as f64);
        metrics.in_flight.inc();
        let started = Instant::now();
        let reply = shared.service.bulk(body).await;
        metrics.request_seconds.observe(started.elapsed().as_secs_f64());
        metrics.in_flight.dec();
        let outcomes = match reply {
            Err(e) => Err(("unreachable", e.to_string())),
            Ok(reply) if reply.status == 413 => {
                if actions.len() > 1 {
                    tracing::info!(sink = %shared.name, documents = actions.len(), bytes, "the node refused a request as too large (HTTP 413); sending it in halves");
                    let second = actions.split_off(actions.len() / 2);
                    return Some([actions, second]);
                }
                let why = format!(
                    "the document is {bytes} bytes with its bulk line, more than {} takes in one request \
                     (HTTP 413: raise the node's http.max_content_length, or leave large columns out with \
                     `columns` / `exclude_columns`)",
                    shared.service.url
                );
                tracing::warn!(sink = %shared.name, index = %actions[0].doc.index, id = %actions[0].doc.id, "{why}; stored as a dead letter");
                shared.stats.dead.fetch_add(1, Ordering::Relaxed);
                shared.health.metrics.dead_letters.inc();
                store_letters(shared, vec![letter(&actions[0], why)]).await;
                return None;
            }
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
        let unreachable = matches!(outcomes, Err(("unreachable", _)));
        match outcomes {
            Err((kind, reason)) => shared.health.failing(kind, &reason),
            Ok(outcomes) => {
                actions = settle(shared, actions, outcomes).await;
                if actions.is_empty() {
                    shared.health.healthy();
                    return None;
                }
            }
        }
        wait_before_retry(&shared.service, attempt, unreachable).await;
        attempt = attempt.saturating_add(1);
    }
    None
}

fn letter(action: &Action, error: String) -> dead_letter::Letter {
    dead_letter::Letter {
        target: action.doc.index.to_string(),
        payload: dead_letter::action_payload(action),
        error,
    }
}

async fn store_letters(shared: &Shared, letters: Vec<dead_letter::Letter>) {
    if !letters.is_empty() {
        dead_letter::store(shared, letters).await;
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
                shared.health.metrics.events.inc();
            }
            Outcome::Stale => {
                shared.stats.stale.fetch_add(1, Ordering::Relaxed);
                shared.health.metrics.events.inc();
            }
            Outcome::Retry(reason) => {
                first_retry.get_or_insert(reason);
                again.push(action);
            }
            Outcome::Dead(reason) => letters.push(letter(&action, reason)),
        }
    }
    if let Some(first) = letters.first() {
        // One line per request, not per document: a broken index mapping can refuse thousands.
        tracing::warn!(sink = %shared.name, index = %first.target, "the index refused {} document(s) for themselves, stored as dead letters (`cdc dead-letters list`); the first: {}", letters.len(), first.error);
        shared.stats.dead.fetch_add(letters.len() as u64, Ordering::Relaxed);
        shared.health.metrics.dead_letters.inc_by(letters.len() as u64);
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
pub async fn retry_forever<T, F, Fut>(shared: &Shared, what: &str, op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    match retry_until(shared, what, |_| false, op).await {
        Ok(value) => value,
        Err(_) => unreachable!("an error that ends the retries is never given here"),
    }
}

/// [`retry_forever`], except that an [`Unrecoverable`](crate::retry::Unrecoverable) error is returned at once.
async fn retry_unless_unfixable<T, F, Fut>(shared: &Shared, what: &str, op: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    retry_until(shared, what, crate::retry::is_unrecoverable, op).await
}

/// Runs `op` until it succeeds or fails in a way `ends` says retrying cannot fix. After a
/// failure because the node did not answer, the wait ends early once it answers again.
async fn retry_until<T, F, Fut>(
    shared: &Shared,
    what: &str,
    ends: impl Fn(&anyhow::Error) -> bool,
    mut op: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut attempt = 0u32;
    loop {
        let unreachable = match op().await {
            Ok(value) => {
                shared.health.healthy();
                return Ok(value);
            }
            Err(e) if ends(&e) => return Err(e.context(what.to_string())),
            Err(e) => {
                shared.health.failing(what, &format!("{what}: {e:#}"));
                e.chain().any(|cause| cause.is::<SendError>())
            }
        };
        wait_before_retry(&shared.service, attempt, unreachable).await;
        attempt = attempt.saturating_add(1);
    }
}

/// The first retry of a request waits this long, then the wait doubles (`crate::retry`).
const FIRST_RETRY: Duration = Duration::from_millis(200);

/// How often a request waiting out its backoff after the node was unreachable asks whether the
/// node answers again.
const BACK_PROBE: Duration = Duration::from_secs(1);

/// Waits out the backoff of retry `attempt`. When the node was unreachable, the wait ends as soon
/// as it answers again (any HTTP reply to `GET /`, asked every `BACK_PROBE`): after a long outage
/// the backoff reaches 30 s, and without this a request would sit out the rest of it while the
/// node was already back.
async fn wait_before_retry(service: &Service, attempt: u32, unreachable: bool) {
    let wait = crate::retry::backoff(FIRST_RETRY, attempt);
    if !unreachable {
        tokio::time::sleep(wait).await;
        return;
    }
    let until = Instant::now() + wait;
    loop {
        let next = (Instant::now() + BACK_PROBE).min(until);
        tokio::time::sleep_until(next).await;
        if next >= until || service.get("/").await.is_ok() {
            return;
        }
    }
}

/// Whether the sink is failing, and how: each change of state is logged once, not every retry.
pub struct Health {
    sink: Arc<str>,
    /// The sink's figures (`admin::metrics`): failing/healthy mirror this state.
    pub metrics: Arc<crate::admin::metrics::SinkStats>,
    /// (kind of failure, its first message, retries since).
    failing: Mutex<Option<(String, String, u64)>>,
}

impl Health {
    pub fn new(sink: Arc<str>) -> Health {
        Health {
            metrics: crate::admin::metrics::sink(&sink),
            sink,
            failing: Mutex::new(None),
        }
    }

    fn failing(&self, kind: &str, reason: &str) {
        self.metrics.failing(reason);
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
        self.metrics.healthy();
        if let Some((_, reason, retries)) = self.failing.lock().expect("health lock").take() {
            tracing::info!(sink = %self.sink, retries, "recovered from: {reason}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn action(id: &str, document_bytes: usize) -> Action {
        let event = Event::new(
            Op::Create,
            Arc::new(crate::event::TableName::parse("t")),
            None,
            None,
            None,
            None,
            crate::event::Position::default(),
        );
        Action {
            doc: DocKey {
                index: Arc::from("t"),
                id: id.into(),
            },
            version: 1,
            write: Write::Index(vec![b' '; document_bytes]),
            event: Arc::new(event),
        }
    }

    #[test]
    fn requests_are_cut_by_the_real_bytes_of_their_documents() {
        let actions: Vec<Action> = ["a", "b", "c", "d"]
            .iter()
            .zip([400, 400, 900, 10])
            .map(|(id, bytes)| action(id, bytes))
            .collect();
        let limit = actions[0].size() * 2;
        let ids: Vec<Vec<String>> = split_by_bytes(actions, limit)
            .into_iter()
            .map(|request| request.into_iter().map(|a| a.doc.id).collect())
            .collect();
        assert_eq!(
            ids,
            [vec!["a", "b"], vec!["c"], vec!["d"]],
            "one over the limit goes alone"
        );
    }
}
