//! The copy: every row of the snapshot, read by N workers in parallel and written through the
//! search sink's own bulk path (`sink::deliver`: retries, stale versions, dead letters).
//!
//! The table is split into ranges of heap pages (`ctid`), sized from its current size so each
//! worker takes several; a worker streams its range's rows (never holding more than one batch
//! being built and one in flight), so memory is bounded whatever the table's size. Every
//! document carries version P − 1: any change streamed from the slot (committed at P or later)
//! is newer and wins, whichever lands first. A row no document can be made for (a NULL id
//! column) becomes a dead letter, as the stream's sink makes it one (`dead_letter::store_unencodable`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use futures_util::{pin_mut, TryStreamExt};
use tokio::task::JoinSet;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::table::Plan;
use crate::event::{Event, Lsn};
use crate::sinks::search::dead_letter;
use crate::sinks::search::encoder::{index_name, Action};
use crate::sinks::search::sink::{deliver, Shared};

/// A range of heap pages of one relation: `[from, to)`, `to = None` meaning to the end.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub relation: String,
    pub from: u64,
    pub to: Option<u64>,
}

impl Chunk {
    fn condition(&self) -> String {
        match self.to {
            Some(to) => format!("t.ctid >= '({},0)'::tid AND t.ctid < '({to},0)'::tid", self.from),
            None => format!("t.ctid >= '({},0)'::tid", self.from),
        }
    }
}

/// What the copy has done so far (read by the progress display).
#[derive(Default)]
pub struct Counters {
    pub rows: AtomicU64,
    pub documents: AtomicU64,
    /// Rows no document could be made for (a NULL id column), stored as dead letters.
    pub unencodable: AtomicU64,
}

/// Batch limits: the sink's, or `--batch-size`.
#[derive(Clone, Copy)]
pub struct Limits {
    pub docs: usize,
    pub bytes: usize,
}

/// Splits each relation into page ranges: about eight per worker over the whole table, at
/// least 32 pages each. The last range of a relation is open-ended, so pages added since the
/// size was read are covered (their rows are invisible to the snapshot anyway).
pub async fn chunks(catalog: &Client, relations: &[String], workers: usize) -> anyhow::Result<Vec<Chunk>> {
    let mut sizes = Vec::with_capacity(relations.len());
    for relation in relations {
        let row = catalog
            .query_one(
                "SELECT (pg_relation_size($1::text::regclass) / current_setting('block_size')::int8)::int8",
                &[relation],
            )
            .await
            .with_context(|| format!("reading the size of {relation}"))?;
        sizes.push(row.get::<_, i64>(0).max(0) as u64);
    }
    Ok(split(relations, &sizes, workers))
}

fn split(relations: &[String], pages: &[u64], workers: usize) -> Vec<Chunk> {
    let total: u64 = pages.iter().sum();
    let per_chunk = (total / (workers as u64 * 8).max(1)).max(32);
    let mut out = Vec::new();
    for (relation, &pages) in relations.iter().zip(pages) {
        let mut from = 0;
        while from + per_chunk < pages {
            out.push(Chunk {
                relation: relation.clone(),
                from,
                to: Some(from + per_chunk),
            });
            from += per_chunk;
        }
        out.push(Chunk {
            relation: relation.clone(),
            from,
            to: None,
        });
    }
    out
}

/// Copies every chunk, one worker per connection (each inside the imported snapshot). Returns
/// when every document is written (or dead-lettered); the first failure stops the rest.
pub async fn run(
    connections: Vec<Client>,
    plan: Arc<Plan>,
    chunks: Vec<Chunk>,
    shared: Arc<Shared>,
    version: Lsn,
    limits: Limits,
    counters: Arc<Counters>,
) -> anyhow::Result<()> {
    let queue = Arc::new(Mutex::new(VecDeque::from(chunks)));
    let mut workers = JoinSet::new();
    for client in connections {
        let worker = Worker {
            client,
            plan: plan.clone(),
            queue: queue.clone(),
            shared: shared.clone(),
            version,
            limits,
            counters: counters.clone(),
        };
        workers.spawn(worker.run());
    }
    while let Some(done) = workers.join_next().await {
        done.context("a copy worker panicked")??;
    }
    Ok(())
}

struct Worker {
    client: Client,
    plan: Arc<Plan>,
    queue: Arc<Mutex<VecDeque<Chunk>>>,
    shared: Arc<Shared>,
    version: Lsn,
    limits: Limits,
    counters: Arc<Counters>,
}

impl Worker {
    async fn run(self) -> anyhow::Result<()> {
        let mut batch = Batch::default();
        // A JoinSet, not a detached task: a cancelled copy (a truncate) cancels its request too.
        let mut in_flight = JoinSet::new();
        while let Some(chunk) = self.next_chunk() {
            let sql = self.plan.select(&chunk.relation, Some(&chunk.condition()));
            let rows = self
                .client
                .simple_query_raw(&sql)
                .await
                .with_context(|| format!("reading {} pages {}..", chunk.relation, chunk.from))?;
            pin_mut!(rows);
            while let Some(message) = rows.try_next().await? {
                let SimpleQueryMessage::Row(row) = message else {
                    continue;
                };
                self.counters.rows.fetch_add(1, Ordering::Relaxed);
                let texts = (0..row.len()).map(|i| row.get(i));
                match self.plan.actions(texts, self.version) {
                    Ok(actions) => actions.into_iter().for_each(|a| batch.push(a)),
                    Err(refused) => batch.unencodable.push((refused.event, refused.error.to_string())),
                }
                if batch.actions.len() + batch.unencodable.len() >= self.limits.docs || batch.bytes >= self.limits.bytes
                {
                    self.send(&mut in_flight, &mut batch).await?;
                }
            }
        }
        self.send(&mut in_flight, &mut batch).await?;
        wait(&mut in_flight).await?;
        // The snapshot's transaction only read; ending it releases the table's lock.
        self.client.batch_execute("COMMIT").await?;
        Ok(())
    }

    fn next_chunk(&self) -> Option<Chunk> {
        self.queue.lock().expect("chunk queue lock").pop_front()
    }

    /// Waits for the previous request, then sends the batch in the background.
    async fn send(&self, in_flight: &mut JoinSet<()>, batch: &mut Batch) -> anyhow::Result<()> {
        wait(in_flight).await?;
        let Batch {
            actions, unencodable, ..
        } = std::mem::take(batch);
        if actions.is_empty() && unencodable.is_empty() {
            return Ok(());
        }
        let shared = self.shared.clone();
        let counters = self.counters.clone();
        let max_bytes = self.limits.bytes;
        let alias = index_name(&self.plan.mapping);
        in_flight.spawn(async move {
            if !unencodable.is_empty() {
                dead_letter::store_unencodable(&shared, &alias, &unencodable).await;
                counters
                    .unencodable
                    .fetch_add(unencodable.len() as u64, Ordering::Relaxed);
            }
            let n = actions.len() as u64;
            if n > 0 {
                deliver(&shared, actions, max_bytes).await;
                counters.documents.fetch_add(n, Ordering::Relaxed);
            }
        });
        Ok(())
    }
}

/// Waits for the request in flight, if any.
async fn wait(in_flight: &mut JoinSet<()>) -> anyhow::Result<()> {
    while let Some(done) = in_flight.join_next().await {
        done.context("a bulk request task panicked")?;
    }
    Ok(())
}

#[derive(Default)]
struct Batch {
    actions: Vec<Action>,
    bytes: usize,
    /// Rows no document could be made for, with why: dead letters.
    unencodable: Vec<(Arc<Event>, String)>,
}

impl Batch {
    fn push(&mut self, action: Action) {
        self.bytes += action.size();
        self.actions.push(action);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_split_into_ranges_whose_last_is_open_ended() {
        let chunks = split(&["a".into(), "b".into()], &[100, 0], 1);
        let ranges: Vec<(&str, u64, Option<u64>)> =
            chunks.iter().map(|c| (c.relation.as_str(), c.from, c.to)).collect();
        assert_eq!(
            ranges,
            vec![
                ("a", 0, Some(32)),
                ("a", 32, Some(64)),
                ("a", 64, Some(96)),
                ("a", 96, None),
                ("b", 0, None)
            ]
        );
        assert_eq!(
            chunks[1].condition(),
            "t.ctid >= '(32,0)'::tid AND t.ctid < '(64,0)'::tid"
        );
        assert_eq!(split(&["big".into()], &[64_000], 4).len(), 32);
    }
}
