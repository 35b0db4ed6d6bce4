//! Dead letters: what a sink could not deliver because the receiver refused it for itself (a
//! document the index rejects, a batch an endpoint never takes), stored durably so the sink can
//! acknowledge it, the slot can advance, and nothing is lost. `cdc dead-letters` lists, replays
//! and purges them.
//!
//! Generic over sinks: `kind` says which sink kind wrote the row and so how to read `payload`
//! (JSON text, kept byte for byte: a webhook batch's body may be signed); `target` is where it
//! was going (an index alias, a URL).

use std::time::SystemTime;

use tokio_postgres::Client;

pub const DDL: &str = "
CREATE TABLE IF NOT EXISTS cdc.dead_letters (
    id         bigserial   PRIMARY KEY,
    sink       text        NOT NULL,
    kind       text        NOT NULL CHECK (kind IN ('search', 'webhook')),
    target     text        NOT NULL,
    payload    text        NOT NULL,
    error      text        NOT NULL,
    attempts   integer     NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS dead_letters_sink_id ON cdc.dead_letters (sink, id);
";

/// A dead letter to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDeadLetter<'a> {
    pub sink: &'a str,
    pub kind: &'a str,
    pub target: &'a str,
    pub payload: &'a str,
    pub error: &'a str,
    pub attempts: i32,
}

/// A stored dead letter.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub id: i64,
    pub sink: String,
    pub kind: String,
    pub target: String,
    pub payload: String,
    pub error: String,
    pub attempts: i32,
    pub created_at: SystemTime,
}

const COLUMNS: &str = "id, sink, kind, target, payload, error, attempts, created_at";

fn from_row(r: &tokio_postgres::Row) -> DeadLetter {
    DeadLetter {
        id: r.get(0),
        sink: r.get(1),
        kind: r.get(2),
        target: r.get(3),
        payload: r.get(4),
        error: r.get(5),
        attempts: r.get(6),
        created_at: r.get(7),
    }
}

/// Stores several dead letters in one statement (one round trip per bulk response); returns
/// their ids in order.
pub async fn insert_many(client: &Client, letters: &[NewDeadLetter<'_>]) -> Result<Vec<i64>, tokio_postgres::Error> {
    fn column<'a>(letters: &[NewDeadLetter<'a>], f: fn(&NewDeadLetter<'a>) -> &'a str) -> Vec<&'a str> {
        letters.iter().map(f).collect()
    }
    let attempts: Vec<i32> = letters.iter().map(|l| l.attempts).collect();
    let rows = client
        .query(
            "INSERT INTO cdc.dead_letters (sink, kind, target, payload, error, attempts)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[])
             RETURNING id",
            &[
                &column(letters, |l| l.sink),
                &column(letters, |l| l.kind),
                &column(letters, |l| l.target),
                &column(letters, |l| l.payload),
                &column(letters, |l| l.error),
                &attempts,
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Dead letters in id order, all sinks or one.
pub async fn list(client: &Client, sink: Option<&str>) -> Result<Vec<DeadLetter>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM cdc.dead_letters WHERE $1::text IS NULL OR sink = $1 ORDER BY id"),
            &[&sink],
        )
        .await?;
    Ok(rows.iter().map(from_row).collect())
}

pub async fn get(client: &Client, id: i64) -> Result<Option<DeadLetter>, tokio_postgres::Error> {
    let row = client
        .query_opt(&format!("SELECT {COLUMNS} FROM cdc.dead_letters WHERE id = $1"), &[&id])
        .await?;
    Ok(row.as_ref().map(from_row))
}

/// Deletes one dead letter (after a successful replay); false when it was not there.
pub async fn delete(client: &Client, id: i64) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .execute("DELETE FROM cdc.dead_letters WHERE id = $1", &[&id])
        .await?
        == 1)
}

/// Notes another failed attempt (a replay the receiver refused again).
pub async fn record_attempt(client: &Client, id: i64, error: &str) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE cdc.dead_letters SET attempts = attempts + 1, error = $2 WHERE id = $1",
            &[&id, &error],
        )
        .await?;
    Ok(())
}

/// Deletes every dead letter, or one sink's; returns how many.
pub async fn purge(client: &Client, sink: Option<&str>) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM cdc.dead_letters WHERE $1::text IS NULL OR sink = $1",
            &[&sink],
        )
        .await
}
