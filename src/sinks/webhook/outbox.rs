//! The webhook outbox: batches an endpoint did not take yet, stored durably so the sink can
//! acknowledge them, let the slot advance and keep other endpoints on time. A sender drains each
//! sink's rows in id order (the order they were stored, which keeps every row's events in
//! order) on the retry schedule.
//!
//! A row holds the request body exactly as first built, so every retry sends the same bytes
//! under the same batch id (`webhook-id`).

use std::time::SystemTime;

use tokio_postgres::Client;

pub const DDL: &str = "
CREATE TABLE IF NOT EXISTS cdc.webhook_outbox (
    id              bigserial PRIMARY KEY,
    sink            text        NOT NULL,
    batch_id        text        NOT NULL,
    body            bytea       NOT NULL,
    events          integer     NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS webhook_outbox_sink_id ON cdc.webhook_outbox (sink, id);
";

/// A batch as stored.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: i64,
    pub batch_id: String,
    pub body: Vec<u8>,
    pub events: i32,
    /// Attempts made so far (the direct one included).
    pub attempts: i32,
    pub next_attempt_at: SystemTime,
    pub last_error: Option<String>,
}

/// A batch to store.
#[derive(Debug, Clone)]
pub struct NewBatch<'a> {
    pub sink: &'a str,
    pub batch_id: &'a str,
    pub body: &'a [u8],
    pub events: i32,
    /// Attempts already made (1 after a failed direct attempt, 0 for a batch queued behind others).
    pub attempts: i32,
    pub next_attempt_at: SystemTime,
    pub error: &'a str,
}

/// Stores a batch at the end of the sink's queue.
pub async fn push(client: &Client, b: &NewBatch<'_>) -> Result<i64, tokio_postgres::Error> {
    let row = client
        .query_one(
            "INSERT INTO cdc.webhook_outbox (sink, batch_id, body, events, attempts, next_attempt_at, last_error)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            &[
                &b.sink,
                &b.batch_id,
                &b.body,
                &b.events,
                &b.attempts,
                &b.next_attempt_at,
                &b.error,
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// The sink's oldest stored batch.
pub async fn head(client: &Client, sink: &str) -> Result<Option<Stored>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT id, batch_id, body, events, attempts, next_attempt_at, last_error
             FROM cdc.webhook_outbox WHERE sink = $1 ORDER BY id LIMIT 1",
            &[&sink],
        )
        .await?;
    Ok(row.map(|r| Stored {
        id: r.get(0),
        batch_id: r.get(1),
        body: r.get(2),
        events: r.get(3),
        attempts: r.get(4),
        next_attempt_at: r.get(5),
        last_error: r.get(6),
    }))
}

/// The batch was delivered.
pub async fn remove(client: &Client, id: i64) -> Result<(), tokio_postgres::Error> {
    client
        .execute("DELETE FROM cdc.webhook_outbox WHERE id = $1", &[&id])
        .await
        .map(drop)
}

/// Another attempt failed; the next one is due at `next_attempt_at`.
pub async fn reschedule(
    client: &Client,
    id: i64,
    attempts: i32,
    next_attempt_at: SystemTime,
    error: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE cdc.webhook_outbox SET attempts = $2, next_attempt_at = $3, last_error = $4 WHERE id = $1",
            &[&id, &attempts, &next_attempt_at, &error],
        )
        .await
        .map(drop)
}

/// How many batches the sink has stored (for `cdc status` and the switch back to direct sending).
pub async fn len(client: &Client, sink: &str) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_one("SELECT count(*) FROM cdc.webhook_outbox WHERE sink = $1", &[&sink])
        .await?
        .get(0))
}
