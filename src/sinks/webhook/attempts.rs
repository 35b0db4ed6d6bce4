//! Webhook delivery attempts: time, batch id, path (direct or outbox), status, latency, error.
//! Only the last [`KEEP`] per sink are kept; `cdc webhook attempts NAME` shows them.

use std::time::SystemTime;

use tokio_postgres::Client;

/// Attempts kept per sink.
pub const KEEP: i64 = 1000;

pub const DDL: &str = "
CREATE TABLE IF NOT EXISTS cdc.webhook_attempts (
    id         bigserial PRIMARY KEY,
    sink       text             NOT NULL,
    at         timestamptz      NOT NULL,
    batch_id   text             NOT NULL,
    via        text             NOT NULL,
    status     integer,
    latency_ms double precision NOT NULL,
    error      text
);
CREATE INDEX IF NOT EXISTS webhook_attempts_sink_id ON cdc.webhook_attempts (sink, id);
";

/// Which path made the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The healthy path: straight from the stream.
    Direct,
    /// A stored batch, sent by the outbox sender.
    Outbox,
    /// `cdc webhook test`.
    Test,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Outbox => "outbox",
            Via::Test => "test",
        }
    }

    fn parse(s: &str) -> Via {
        [Via::Direct, Via::Outbox]
            .into_iter()
            .find(|v| v.as_str() == s)
            .unwrap_or(Via::Test)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub at: SystemTime,
    pub batch_id: String,
    pub via: Via,
    /// None when no response came.
    pub status: Option<i32>,
    pub latency_ms: f64,
    pub error: Option<String>,
}

/// Records attempts in one statement, then forgets all but the last [`KEEP`] of the sink.
pub async fn record(client: &Client, sink: &str, attempts: &[Attempt]) -> Result<(), tokio_postgres::Error> {
    insert(client, sink, attempts).await?;
    trim(client, sink).await
}

/// Records attempts in one statement.
pub async fn insert(client: &Client, sink: &str, attempts: &[Attempt]) -> Result<(), tokio_postgres::Error> {
    if attempts.is_empty() {
        return Ok(());
    }
    let at: Vec<SystemTime> = attempts.iter().map(|a| a.at).collect();
    let batch: Vec<&str> = attempts.iter().map(|a| a.batch_id.as_str()).collect();
    let via: Vec<&str> = attempts.iter().map(|a| a.via.as_str()).collect();
    let status: Vec<Option<i32>> = attempts.iter().map(|a| a.status).collect();
    let latency: Vec<f64> = attempts.iter().map(|a| a.latency_ms).collect();
    let error: Vec<Option<&str>> = attempts.iter().map(|a| a.error.as_deref()).collect();
    client
        .execute(
            "INSERT INTO cdc.webhook_attempts (sink, at, batch_id, via, status, latency_ms, error)
             SELECT $1, * FROM unnest($2::timestamptz[], $3::text[], $4::text[], $5::int[], $6::float8[], $7::text[])",
            &[&sink, &at, &batch, &via, &status, &latency, &error],
        )
        .await?;
    Ok(())
}

/// Forgets all but the sink's last [`KEEP`] attempts.
pub async fn trim(client: &Client, sink: &str) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM cdc.webhook_attempts WHERE sink = $1 AND id <= (
                SELECT id FROM cdc.webhook_attempts WHERE sink = $1 ORDER BY id DESC OFFSET $2 LIMIT 1)",
            &[&sink, &KEEP],
        )
        .await?;
    Ok(())
}

/// The sink's last `limit` attempts, newest first.
pub async fn recent(client: &Client, sink: &str, limit: i64) -> Result<Vec<Attempt>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT at, batch_id, via, status, latency_ms, error FROM cdc.webhook_attempts
             WHERE sink = $1 ORDER BY id DESC LIMIT $2",
            &[&sink, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Attempt {
            at: r.get(0),
            batch_id: r.get(1),
            via: Via::parse(r.get(2)),
            status: r.get(3),
            latency_ms: r.get(4),
            error: r.get(5),
        })
        .collect())
}
