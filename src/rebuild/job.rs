//! One table's rebuild, start to end:
//!
//! 1. remove what an interrupted rebuild left; create `<alias>_<time>` behind the private alias
//!    `<alias>.rebuild`, without refreshes or replicas, deletes remembered for 24 h;
//! 2. create a temporary slot with an exported snapshot (its consistent point P splits history);
//!    N connections import the snapshot; the slot starts streaming;
//! 3. copy the snapshot with N workers at version P − 1 while the catch-up streams the slot's
//!    changes (commit LSNs as versions) into the same index;
//! 4. restore refresh and replicas, refresh, wait until the catch-up has applied everything
//!    committed so far, swap the alias in one `_aliases` call;
//! 5. keep applying until the WAL position written right after the swap, so nothing committed
//!    before `cdc run` writes through the alias to the new index is missed; drop the slot (it is
//!    temporary: ending the session drops it), remove the private alias, delete the old index.
//!
//! A failure before the swap deletes the new index and leaves the old one serving; a crash
//! leaves the new index behind the private alias, which the next run removes. A truncate of the
//! table during the rebuild starts it over from a fresh snapshot.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use tokio_postgres::Client;

use super::catchup::{self, CatchUp, Ended};
use super::copy::{self, Counters, Limits};
use super::indexes::{self, NewIndex};
use super::progress::Progress;
use super::snapshot;
use super::table::Plan;
use crate::config::{SourceConfig, TableMapping};
use crate::event::Lsn;
use crate::sinks::search::encoder::index_name;
use crate::sinks::search::index;
use crate::sinks::search::service::Service;
use crate::sinks::search::sink::{Health, Shared, Stats};
use crate::sinks::search::SearchConfig;
use crate::source::connection;
use crate::state::Postgres;

/// `cdc rebuild-index` options.
#[derive(Debug, Clone)]
pub struct Options {
    pub parallel: usize,
    pub keep_old: bool,
    pub batch_size: Option<usize>,
}

/// What a finished rebuild reports.
#[derive(Debug)]
pub struct Summary {
    pub table: String,
    pub alias: String,
    pub index: String,
    pub rows: u64,
    pub documents: u64,
    /// Rows the copy stored as dead letters: no document id, or refused by the index.
    pub dead_letters: u64,
    pub seconds: f64,
    pub copy_seconds: f64,
    pub catch_up_seconds: f64,
    pub swap_seconds: f64,
    /// The indexes the alias served before (deleted unless --keep-old).
    pub old: Vec<String>,
}

impl Summary {
    /// The one line printed per table.
    pub fn line(&self) -> String {
        format!(
            "{}: {} rows, {} documents, {} dead letters in {:.1} s ({:.0} rows/s; copy {:.1} s, catch-up {:.1} s, swap {:.2} s); {} → {}",
            self.table,
            self.rows,
            self.documents,
            self.dead_letters,
            self.seconds,
            self.rows as f64 / self.seconds.max(0.001),
            self.copy_seconds,
            self.catch_up_seconds,
            self.swap_seconds,
            self.alias,
            self.index
        )
    }
}

/// How many times a rebuild starts over after a truncate of its table.
const ATTEMPTS: usize = 3;

/// What a rebuild works with.
pub struct Job<'a> {
    pub source: &'a SourceConfig,
    pub sink_name: &'a str,
    pub search: &'a SearchConfig,
    pub mapping: &'a TableMapping,
    pub options: &'a Options,
}

enum Attempt {
    Done(Summary),
    /// The table was truncated at this LSN while the rebuild ran.
    Truncated(Lsn),
}

impl Job<'_> {
    /// Rebuilds the mapping's index; starts over (a few times) when the table is truncated.
    pub async fn run(&self) -> anyhow::Result<Summary> {
        let service = Service::new(self.search)?;
        let alias = index_name(self.mapping).to_string();
        let catalog = connection::catalog(&self.source.url).await?;
        lock(&catalog, &alias).await?;
        let mut replaced = Vec::new();
        for _ in 0..ATTEMPTS {
            match self.attempt(&service, &catalog, &alias, &mut replaced).await? {
                Attempt::Done(mut summary) => {
                    summary.old = replaced;
                    indexes::retire(&service, &alias, &summary.old, self.options.keep_old).await?;
                    return Ok(summary);
                }
                Attempt::Truncated(lsn) => {
                    tracing::warn!(table = %self.mapping.table, %lsn, "the table was truncated during the rebuild: starting over from a new snapshot")
                }
            }
        }
        bail!(
            "{} was truncated during each of {ATTEMPTS} rebuild attempts; run it again when truncates are rarer",
            self.mapping.table
        )
    }

    async fn attempt(
        &self,
        service: &Service,
        catalog: &Client,
        alias: &str,
        replaced: &mut Vec<String>,
    ) -> anyhow::Result<Attempt> {
        let started = Instant::now();
        indexes::remove_leftovers(service, alias).await?;
        if self.options.keep_old && index::lookup(service, alias).await? == index::Target::Index {
            bail!("{alias} is an index, not an alias: an alias of that name can only replace it by deleting it; run without --keep-old");
        }
        let mut building = self.mapping.clone();
        building.index = Some(indexes::building_alias(alias));
        let plan = Arc::new(Plan::new(catalog, &building).await?);
        let new = indexes::create(service, alias, self.mapping.settings.as_deref()).await?;
        tracing::info!(table = %self.mapping.table, index = %new.name, "building the new index");
        let built = self.build(service, catalog, alias, plan, &new, started).await;
        match built {
            Ok(Built::Swapped { summary, old }) => {
                replaced.extend(old);
                Ok(Attempt::Done(summary))
            }
            Ok(Built::SwappedThenTruncated { old, lsn }) => {
                // The new index serves now; the next attempt replaces it like any old index.
                replaced.extend(old);
                replaced.push(new.name);
                Ok(Attempt::Truncated(lsn))
            }
            Ok(Built::Truncated(lsn)) => {
                indexes::delete(service, &[new.name]).await?;
                Ok(Attempt::Truncated(lsn))
            }
            Err(e) => {
                if let Err(cleanup) = indexes::delete(service, std::slice::from_ref(&new.name)).await {
                    tracing::warn!(index = %new.name, "could not delete the unfinished index ({cleanup:#}); the next rebuild removes it");
                }
                Err(e)
            }
        }
    }

    async fn build(
        &self,
        service: &Service,
        catalog: &Client,
        alias: &str,
        plan: Arc<Plan>,
        new: &NewIndex,
        started: Instant,
    ) -> anyhow::Result<Built> {
        let slot = format!("cdc_rebuild_{}_{}", std::process::id(), slot_counter());
        let exported = snapshot::export(self.source, &slot).await?;
        let p = exported.consistent_point;
        let parallel = self.options.parallel.max(1);
        let mut connections = Vec::with_capacity(parallel);
        for _ in 0..parallel {
            connections.push(exported.import(&self.source.url).await?);
        }
        let chunks = copy::chunks(&connections[0], &plan.relations, parallel).await?;
        let client = exported.start().await?;
        tracing::info!(table = %plan.table, split_point = %p, slot, "copying the snapshot; streaming later changes from the temporary slot");
        let mut catchup = CatchUp::spawn(
            client,
            connection::catalog(&self.source.url).await?,
            catchup::Target {
                mapping: plan.mapping.clone(),
                sink_name: self.sink_name.to_string(),
                config: self.search.clone(),
                source_url: self.source.url.clone(),
            },
        );

        let counters = Arc::new(Counters::default());
        let progress = Progress::start(
            plan.table.to_string(),
            estimate(catalog, &plan.relations).await,
            counters.clone(),
        );
        let shared = Arc::new(Shared {
            name: Arc::from(self.sink_name),
            service: service.clone(),
            pg: Postgres::new(&self.source.url),
            health: Health::new(Arc::from(self.sink_name)),
            stats: Stats::default(),
        });
        let limits = Limits {
            docs: self.options.batch_size.unwrap_or(self.search.batch_max_docs).max(1),
            bytes: self.search.batch_max_bytes,
        };
        // The version P − 1: older than any change the slot streams (committed at P or later).
        let version = Lsn(p.0.saturating_sub(1));
        let copied = tokio::select! {
            copied = copy::run(connections, plan.clone(), chunks, shared.clone(), version, limits, counters.clone()) => copied,
            ended = &mut catchup.task => {
                progress.finish();
                return early_end(ended);
            }
        };
        progress.finish();
        copied?;
        let copy_seconds = started.elapsed().as_secs_f64();
        tracing::info!(table = %plan.table, rows = counters.rows.load(Ordering::Relaxed), "copy done: restoring refresh and replicas, catching up, then swapping the alias");

        indexes::make_searchable(service, new).await?;
        let now = mark(catalog, "caught-up").await?;
        if !catchup.reached(now).await {
            return early_end((&mut catchup.task).await);
        }
        let catch_up_seconds = started.elapsed().as_secs_f64() - copy_seconds;

        let swap_started = Instant::now();
        let old = indexes::swap(service, alias, &new.name).await?;
        let after_swap = mark(catalog, "swapped").await?;
        tracing::info!(alias, index = %new.name, previous = ?old, "the alias now points at the new index; applying changes up to {after_swap}");
        let ended = catchup.finish(after_swap).await?;
        let swap_seconds = swap_started.elapsed().as_secs_f64();
        if let Ended::Truncated(lsn) = ended {
            return Ok(Built::SwappedThenTruncated { old, lsn });
        }
        indexes::drop_building_alias(service, alias, &new.name).await?;
        Ok(Built::Swapped {
            summary: Summary {
                table: plan.table.to_string(),
                alias: alias.to_string(),
                index: new.name.clone(),
                rows: counters.rows.load(Ordering::Relaxed),
                documents: counters.documents.load(Ordering::Relaxed),
                dead_letters: shared.stats.dead.load(Ordering::Relaxed),
                seconds: started.elapsed().as_secs_f64(),
                copy_seconds,
                catch_up_seconds,
                swap_seconds,
                old: Vec::new(),
            },
            old,
        })
    }
}

enum Built {
    Swapped {
        summary: Summary,
        old: Vec<String>,
    },
    SwappedThenTruncated {
        old: Vec<String>,
        lsn: Lsn,
    },
    /// Truncated before the swap: the new index is discarded.
    Truncated(Lsn),
}

/// The catch-up ended before it was asked to: a truncate, or an error.
fn early_end(ended: Result<anyhow::Result<Ended>, tokio::task::JoinError>) -> anyhow::Result<Built> {
    match ended.context("the catch-up task panicked")?? {
        Ended::Truncated(lsn) => Ok(Built::Truncated(lsn)),
        Ended::Reached(lsn) => bail!("the catch-up stopped at {lsn} before it was asked to"),
    }
}

/// A position in the WAL that the slot's stream is sure to pass: a transactional logical
/// message (its commit follows it), so the catch-up sees it even when the table is quiet.
async fn mark(catalog: &Client, what: &str) -> anyhow::Result<Lsn> {
    let row = catalog
        .query_one(
            "SELECT pg_logical_emit_message(true, 'cdc.rebuild', $1)::text",
            &[&what],
        )
        .await
        .context("writing a position marker (pg_logical_emit_message) to the WAL")?;
    let text: String = row.get(0);
    Lsn::parse(&text).with_context(|| format!("pg_logical_emit_message returned {text:?}"))
}

/// One rebuild of an alias at a time, across processes: a session-level advisory lock, held
/// until the catalog connection closes.
async fn lock(catalog: &Client, alias: &str) -> anyhow::Result<()> {
    let row = catalog
        .query_one(
            "SELECT pg_try_advisory_lock(hashtext('cdc rebuild-index ' || $1))",
            &[&alias],
        )
        .await?;
    if !row.get::<_, bool>(0) {
        bail!("another `cdc rebuild-index` of {alias} is running; wait for it to finish");
    }
    Ok(())
}

/// Postgres' row estimate for the relations (none when it has not analyzed them yet).
async fn estimate(catalog: &Client, relations: &[String]) -> Option<u64> {
    let row = catalog
        .query_one(
            "SELECT sum(greatest(reltuples, 0))::int8 FROM pg_catalog.pg_class WHERE oid = ANY($1::text[]::regclass[])",
            &[&relations],
        )
        .await
        .ok()?;
    row.get::<_, Option<i64>>(0).filter(|n| *n > 0).map(|n| n as u64)
}

fn slot_counter() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
