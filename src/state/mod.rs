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

/// The tables of cdc's state that do not exist (what `cdc check` reports), named as in the DDL.
pub async fn missing_tables(client: &Client) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut missing = Vec::new();
    for table in all_ddl()
        .iter()
        .flat_map(|ddl| ddl.split("CREATE TABLE IF NOT EXISTS ").skip(1))
    {
        let name = table.split_whitespace().next().unwrap_or_default();
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
            .await?
            .get(0);
        if !exists {
            missing.push(name.to_string());
        }
    }
    Ok(missing)
}

/// Every submodule's DDL (CREATE ... IF NOT EXISTS statements), in dependency order.
fn all_ddl() -> Vec<&'static str> {
    vec![dead_letters::DDL, outbox::DDL, attempts::DDL]
}
