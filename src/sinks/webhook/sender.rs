//! The outbox sender: drains an endpoint's stored batches, oldest first, one at a time, each on
//! its own retry schedule; a batch whose schedule is exhausted becomes a dead letter and the
//! next one goes. When the outbox is empty the endpoint returns to the direct path.
//!
//! It also looks for stored batches now and then while idle: batches left by an earlier run
//! and dead letters put back by `cdc dead-letters replay` are sent without a restart.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::attempts::Via;
use super::delivery::{Batch, Endpoint};
use super::outbox::{self, Stored};
use super::retry::{self, Verdict};

/// How often an idle sender looks for stored batches nobody told it about.
const IDLE_POLL: Duration = Duration::from_secs(5);

/// Drains the outbox for as long as the sink runs. Postgres outages are waited out (see
/// `state::Postgres::retry`); it returns only with an error a reconnect cannot fix, which ends
/// the sink.
pub async fn run(endpoint: Arc<Endpoint>) -> anyhow::Result<()> {
    loop {
        let name = &endpoint.name;
        let head = endpoint
            .db
            .retry(
                "reading the webhook outbox",
                |c| async move { outbox::head(&c, name).await },
            )
            .await?;
        match head {
            Some(stored) => {
                endpoint.enter_outbox().await;
                send(&endpoint, stored).await?;
            }
            None => {
                if endpoint.leave_outbox().await? {
                    tokio::select! {
                        _ = endpoint.stored.notified() => {}
                        _ = tokio::time::sleep(IDLE_POLL) => {}
                    }
                }
            }
        }
    }
}

/// Waits until the batch is due, then makes one attempt and records its outcome.
async fn send(endpoint: &Endpoint, stored: Stored) -> anyhow::Result<()> {
    let batch = Batch {
        id: stored.batch_id.clone(),
        body: stored.body.into(),
        events: stored.events as usize,
    };
    if endpoint.is_disabled() {
        endpoint
            .dead_letter(
                &batch,
                stored.attempts,
                "the endpoint answered 410 Gone and is disabled",
            )
            .await?;
        return remove(endpoint, stored.id).await;
    }
    if let Ok(wait) = stored.next_attempt_at.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    let response = endpoint.attempt(Via::Outbox, &batch.id, batch.body.clone()).await;
    let failures = stored.attempts as u32 + 1;
    let error = response.error.clone().unwrap_or_default();
    match retry::classify(response.status, response.retry_after.as_deref(), SystemTime::now()) {
        Verdict::Delivered => {
            endpoint.metrics.events.inc_by(batch.events as u64);
            tracing::debug!(sink = %endpoint.name, batch = %batch.id, "stored batch delivered after {failures} attempts");
        }
        Verdict::Gone => {
            endpoint.disable();
            endpoint.dead_letter(&batch, failures as i32, &error).await?;
        }
        Verdict::Retry { retry_after } => match endpoint.next_delay(failures, retry_after) {
            Some(delay) => {
                tracing::warn!(sink = %endpoint.name, batch = %batch.id, "attempt {failures} failed ({error}); next in {delay:?}");
                let (id, next, error) = (stored.id, retry::due(SystemTime::now(), delay), error.as_str());
                endpoint
                    .db
                    .retry("rescheduling a stored webhook batch", |c| async move {
                        outbox::reschedule(&c, id, failures as i32, next, error).await
                    })
                    .await?;
                return Ok(());
            }
            None => {
                endpoint
                    .dead_letter(&batch, failures as i32, &format!("{error} (after {failures} attempts)"))
                    .await?
            }
        },
    }
    remove(endpoint, stored.id).await
}

/// The stored batch is delivered or a dead letter: it leaves the outbox.
async fn remove(endpoint: &Endpoint, id: i64) -> anyhow::Result<()> {
    endpoint
        .db
        .retry("removing a delivered batch from the webhook outbox", |c| async move {
            outbox::remove(&c, id).await
        })
        .await
}

/// Replays a webhook dead letter (`cdc dead-letters replay`): its batch goes back to the end of
/// the sink's outbox under its original batch id, and the sink's outbox sender delivers it within
/// seconds (or at the next `cdc run`). Returns the outbox row's id.
pub async fn requeue(db: &tokio_postgres::Client, sink: &str, payload: &str) -> anyhow::Result<i64> {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        id: &'a str,
        events: Vec<&'a serde_json::value::RawValue>,
    }
    let envelope: Envelope = serde_json::from_str(payload).map_err(|e| anyhow::anyhow!("not a webhook batch: {e}"))?;
    let batch = outbox::NewBatch {
        sink,
        batch_id: envelope.id,
        body: payload.as_bytes(),
        events: envelope.events.len() as i32,
        attempts: 0,
        next_attempt_at: SystemTime::now(),
        error: "replayed dead letter",
    };
    Ok(outbox::push(db, &batch).await?)
}
