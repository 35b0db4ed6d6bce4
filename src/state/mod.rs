//! cdc's own state in Postgres, in its own schema (`cdc` by default), never published:
//! dead letters (documents or batches a sink could not deliver) and the webhook outbox.
//!
//! Each submodule owns its tables and exposes its DDL; `ensure_schema` creates whatever is
//! missing, idempotently, on a regular (non-replication) connection.

pub mod attempts;
pub mod dead_letters;
pub mod outbox;

use tokio_postgres::Client;

/// The schema cdc keeps its state in.
pub const SCHEMA: &str = "cdc";

/// Creates cdc's schema and tables when missing.
pub async fn ensure_schema(client: &Client) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
        .await?;
    for ddl in all_ddl() {
        client.batch_execute(ddl).await?;
    }
    Ok(())
}

/// Every submodule's DDL (CREATE ... IF NOT EXISTS statements), in dependency order.
fn all_ddl() -> Vec<&'static str> {
    vec![dead_letters::DDL, outbox::DDL, attempts::DDL]
}
