//! cdc's own state in Postgres, in its own schema (`cdc`), never published. Dead letters live
//! here (shared by every sink); the webhook sink's outbox and attempt history live with it
//! (`sinks::webhook::outbox`, `sinks::webhook::attempts`) but are created here too, so
//! [`ensure_schema`] stays the one place that creates cdc's schema. [`Postgres`] is the sinks'
//! reconnecting connection to it.

pub mod dead_letters;
mod postgres;

pub use postgres::Postgres;

use std::collections::HashMap;

use anyhow::Context;
use tokio_postgres::Client;

use crate::sinks::webhook;

/// The schema cdc keeps its state in.
pub const SCHEMA: &str = "cdc";

/// Creates cdc's schema and whichever of its tables are missing (`cdc setup`, `cdc run` at
/// start). Returns the tables it created, so a caller can say so. Needs the CREATE privilege on
/// the database only when something is missing.
pub async fn ensure_schema(client: &Client) -> Result<Vec<&'static str>, tokio_postgres::Error> {
    let mut created = Vec::new();
    for (table, ddl) in TABLES {
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[table])
            .await?
            .get(0);
        if exists {
            continue;
        }
        if created.is_empty() {
            client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
                .await?;
        }
        client.batch_execute(ddl).await?;
        created.push(*table);
    }
    Ok(created)
}

/// Every table of cdc's schema with its DDL (CREATE ... IF NOT EXISTS), in dependency order.
const TABLES: &[(&str, &str)] = &[
    ("cdc.dead_letters", dead_letters::DDL),
    ("cdc.webhook_outbox", webhook::outbox::DDL),
    ("cdc.webhook_attempts", webhook::attempts::DDL),
];

/// A sink's start (`cdc run`): creates cdc's schema when it is missing, as the source creates a
/// missing slot, and says so; waits (with backoff) while Postgres cannot be reached. An error
/// here (no CREATE privilege, say) ends the run at start, not at the first change.
pub async fn prepare(db: &Postgres, sink: &str) -> anyhow::Result<()> {
    let created = db
        .retry(&format!("sink {sink}: creating cdc's state schema"), |client| async move {
            ensure_schema(&client).await
        })
        .await
        .context("cdc keeps its state (webhook outbox, dead letters) in the schema `cdc`: run `cdc setup`, or grant this role CREATE on the database")?;
    if !created.is_empty() {
        tracing::info!(
            sink,
            "created cdc's state tables (`cdc setup` was not run): {}",
            created.join(", ")
        );
    }
    Ok(())
}

/// The tables of cdc's state that do not exist (what `cdc check` reports).
pub async fn missing_tables(client: &Client) -> Result<Vec<&'static str>, tokio_postgres::Error> {
    let mut missing = Vec::new();
    for (table, _) in TABLES {
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[table])
            .await?
            .get(0);
        if !exists {
            missing.push(*table);
        }
    }
    Ok(missing)
}

/// What waits in cdc's state, per sink: dead letters (rows of `cdc.dead_letters`: documents for
/// a search sink, batches for a webhook) and batches in the webhook outbox. `cdc status` and the
/// admin probe (`/ready`, `/metrics`) both read it here.
#[derive(Debug, Clone, Default)]
pub struct Backlog {
    pub dead_letters: HashMap<String, i64>,
    pub outbox_batches: HashMap<String, i64>,
}

impl Backlog {
    /// Counts both tables (each on its `(sink, id)` index); a table not created yet counts as empty.
    pub async fn read(client: &Client) -> Result<Backlog, tokio_postgres::Error> {
        Ok(Backlog {
            dead_letters: per_sink(client, "cdc.dead_letters").await?,
            outbox_batches: per_sink(client, "cdc.webhook_outbox").await?,
        })
    }
}

async fn per_sink(client: &Client, table: &str) -> Result<HashMap<String, i64>, tokio_postgres::Error> {
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await?
        .get(0);
    let mut counts = HashMap::new();
    if exists {
        for row in client
            .query(&format!("SELECT sink, count(*) FROM {table} GROUP BY sink"), &[])
            .await?
        {
            counts.insert(row.get::<_, String>(0), row.get::<_, i64>(1));
        }
    }
    Ok(counts)
}
