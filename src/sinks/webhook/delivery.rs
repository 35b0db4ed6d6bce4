//! An endpoint's delivery rules, shared by its lanes and its outbox sender.
//!
//! Healthy path: a batch goes straight out and is acknowledged after the 2xx. When an attempt
//! fails (`on_exhausted = "dead_letter"`), that batch and every later batch of the endpoint are
//! stored in the outbox instead and acknowledged as stored, so the slot advances and the other
//! endpoints keep their latency; the outbox sender drains the stored batches in order on the
//! retry schedule, and once the outbox is empty batches go straight out again. The switch is
//! one flag under a lock taken by whoever stores a batch and by the sender when it finds the
//! outbox empty: so no batch is ever sent straight while an earlier one waits in the outbox.
//!
//! With `on_exhausted = "block"` nothing is stored: a lane retries its batch until it is
//! delivered, holding the acknowledgement and, through it, the slot: strict order at the price
//! of the slot's WAL. A 410 Gone disables the endpoint in either mode: every batch it has not
//! taken becomes a dead letter.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{watch, Mutex, Notify};

use super::attempts::{Attempt, Via};
use super::config::{OnExhausted, WebhookConfig};
use super::outbox;
use super::recorder::Recorder;
use super::retry::{self, Verdict};
use super::service::{Response, Service};
use crate::state::{dead_letters, Postgres};

/// One request's worth of events, ready to send.
#[derive(Debug, Clone)]
pub struct Batch {
    pub id: String,
    pub body: Bytes,
    pub events: usize,
}

/// How a hand-off ended.
#[derive(Debug, PartialEq, Eq)]
pub enum HandOff {
    /// Delivered, stored in the outbox, or made a dead letter: the batch may be acknowledged.
    Done,
    /// Shutting down in block mode before the endpoint took it: not acknowledged, so it is
    /// streamed again after the restart.
    Abandoned,
}

pub struct Endpoint {
    pub name: String,
    pub config: WebhookConfig,
    pub service: Service,
    /// cdc's state database (outbox, dead letters), reconnected after a Postgres restart.
    pub db: Postgres,
    recorder: Recorder,
    /// True while the outbox holds (or may hold) batches: later batches must queue behind them.
    outbox_active: Mutex<bool>,
    /// Wakes the outbox sender when a batch is stored.
    pub stored: Notify,
    disabled: AtomicBool,
    /// Set at shutdown: blocked lanes stop retrying.
    stopping: watch::Sender<bool>,
    abandoned: AtomicBool,
    /// The sink's figures (`admin::metrics`).
    pub metrics: std::sync::Arc<crate::admin::metrics::SinkStats>,
}

impl Endpoint {
    pub fn new(name: String, config: WebhookConfig, db: Postgres, recorder: Recorder) -> anyhow::Result<Endpoint> {
        Ok(Endpoint {
            metrics: crate::admin::metrics::sink(&name),
            service: Service::new(&config)?,
            name,
            config,
            db,
            recorder,
            outbox_active: Mutex::new(false),
            stored: Notify::new(),
            disabled: AtomicBool::new(false),
            stopping: watch::channel(false).0,
            abandoned: AtomicBool::new(false),
        })
    }

    /// Delivers the batch or hands it off durably. Postgres outages are waited out; errors are
    /// those Postgres reports for a statement (a reconnect cannot fix them).
    pub async fn hand_off(&self, batch: &Batch) -> anyhow::Result<HandOff> {
        self.metrics.batch_events.observe(batch.events as f64);
        if self.is_disabled() {
            self.dead_letter(batch, 0, "the endpoint answered 410 Gone earlier and is disabled")
                .await?;
            return Ok(HandOff::Done);
        }
        match self.config.on_exhausted {
            OnExhausted::DeadLetter => self.direct_or_outbox(batch).await.map(|_| HandOff::Done),
            OnExhausted::Block => self.until_delivered(batch).await,
        }
    }

    async fn direct_or_outbox(&self, batch: &Batch) -> anyhow::Result<()> {
        {
            let active = self.outbox_active.lock().await;
            if *active {
                return self
                    .store(batch, 0, SystemTime::now(), "queued behind earlier batches", active)
                    .await;
            }
        }
        let response = self.attempt(Via::Direct, &batch.id, batch.body.clone()).await;
        let error = response.error.clone().unwrap_or_default();
        match retry::classify(response.status, response.retry_after.as_deref(), SystemTime::now()) {
            Verdict::Delivered => {
                self.metrics.events.inc_by(batch.events as u64);
                Ok(())
            }
            Verdict::Gone => {
                self.disable();
                self.dead_letter(batch, 1, &error).await
            }
            Verdict::Retry { retry_after } => {
                match retry::next_delay(&self.config.retry, 1, retry_after, retry::jitter()) {
                    Some(delay) => {
                        let active = self.outbox_active.lock().await;
                        self.store(batch, 1, retry::due(SystemTime::now(), delay), &error, active)
                            .await
                    }
                    None => self.dead_letter(batch, 1, &error).await,
                }
            }
        }
    }

    /// Stores the batch and switches the endpoint to the outbox; the caller holds the switch.
    async fn store(
        &self,
        batch: &Batch,
        attempts: i32,
        next: SystemTime,
        error: &str,
        mut active: tokio::sync::MutexGuard<'_, bool>,
    ) -> anyhow::Result<()> {
        let stored = outbox::NewBatch {
            sink: &self.name,
            batch_id: &batch.id,
            body: &batch.body,
            events: batch.events as i32,
            attempts,
            next_attempt_at: next,
            error,
        };
        let stored = &stored;
        self.db
            .retry("storing a webhook batch in the outbox", |c| async move {
                outbox::push(&c, stored).await
            })
            .await?;
        if !*active {
            tracing::warn!(sink = %self.name, "{} failed ({error}); its batches go to the outbox until it recovers", self.service.url());
            *active = true;
        }
        self.stored.notify_one();
        Ok(())
    }

    async fn until_delivered(&self, batch: &Batch) -> anyhow::Result<HandOff> {
        let mut stopping = self.stopping.subscribe();
        for failures in 1u32.. {
            if self.abandoned.load(Ordering::Acquire) {
                return Ok(HandOff::Abandoned);
            }
            let response = self.attempt(Via::Direct, &batch.id, batch.body.clone()).await;
            let error = response.error.clone().unwrap_or_default();
            let retry_after = match retry::classify(response.status, response.retry_after.as_deref(), SystemTime::now())
            {
                Verdict::Delivered => {
                    self.metrics.events.inc_by(batch.events as u64);
                    return Ok(HandOff::Done);
                }
                Verdict::Gone => {
                    self.disable();
                    self.dead_letter(batch, failures as i32, &error).await?;
                    return Ok(HandOff::Done);
                }
                Verdict::Retry { retry_after } => retry_after,
            };
            let delay = retry::next_delay_forever(&self.config.retry, failures, retry_after, retry::jitter());
            tracing::warn!(sink = %self.name, batch = %batch.id, "attempt {failures} failed ({error}); holding the slot, next try in {delay:?}");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stopping.wait_for(|s| *s) => {
                    // Later batches must not overtake this one: they are abandoned too.
                    self.abandoned.store(true, Ordering::Release);
                    return Ok(HandOff::Abandoned);
                }
            }
        }
        unreachable!("the retry loop only ends by returning")
    }

    /// One attempt, recorded.
    pub async fn attempt(&self, via: Via, batch_id: &str, body: Bytes) -> Response {
        let at = SystemTime::now();
        self.metrics.in_flight.inc();
        let response = self.service.post(batch_id, body).await;
        self.metrics.in_flight.dec();
        self.metrics.request_seconds.observe(response.latency.as_secs_f64());
        match response.status {
            Some(status) if (200..300).contains(&status) => self.metrics.healthy(),
            status => self.metrics.failing(&match (&response.error, status) {
                (Some(error), _) => format!("{}: {error}", self.service.url()),
                (None, Some(status)) => format!("{} answered HTTP {status}", self.service.url()),
                (None, None) => format!("{} did not answer", self.service.url()),
            }),
        }
        self.recorder
            .record(Attempt {
                at,
                batch_id: batch_id.to_string(),
                via,
                status: response.status.map(i32::from),
                latency_ms: response.latency.as_secs_f64() * 1000.0,
                error: response.error.clone(),
            })
            .await;
        response
    }

    pub async fn dead_letter(&self, batch: &Batch, attempts: i32, error: &str) -> anyhow::Result<()> {
        let letter = dead_letters::NewDeadLetter {
            sink: &self.name,
            kind: "webhook",
            target: self.service.url(),
            payload: std::str::from_utf8(&batch.body).expect("a batch body is JSON text"),
            error,
            attempts,
        };
        let letter = std::slice::from_ref(&letter);
        self.db
            .retry("storing a dead letter", |c| async move {
                dead_letters::insert_many(&c, letter).await
            })
            .await?;
        self.metrics.dead_letters.inc_by(batch.events as u64);
        tracing::error!(sink = %self.name, batch = %batch.id, events = batch.events, "batch became a dead letter: {error}");
        Ok(())
    }

    /// The endpoint answered 410 Gone: nothing more is sent to it in this run. Said once in the
    /// log and, for as long as it lasts, in `/ready` (503) and `cdc status`.
    pub fn disable(&self) {
        if !self.disabled.swap(true, Ordering::AcqRel) {
            let reason = format!(
                "{} answered 410 Gone: nothing is sent to it until cdc restarts and every batch for it becomes a dead letter; \
                 fix the endpoint (or the sink's url), restart cdc, then `cdc dead-letters replay --all` sends the batches \
                 again (`cdc dead-letters list --sink {}` shows them)",
                self.service.url(),
                self.name
            );
            self.metrics.disable(&reason);
            tracing::error!(sink = %self.name, "endpoint DISABLED: {reason}");
        }
    }

    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Acquire)
    }

    /// The outbox sender found the outbox empty: batches may go straight out again, unless a
    /// lane stored one meanwhile. Returns whether the endpoint is back on the direct path.
    pub async fn leave_outbox(&self) -> anyhow::Result<bool> {
        let mut active = self.outbox_active.lock().await;
        if self.outbox_len().await? == 0 {
            if *active {
                tracing::info!(sink = %self.name, "outbox drained: batches go straight to {} again", self.service.url());
            }
            *active = false;
        }
        Ok(!*active)
    }

    /// How many batches wait in the outbox.
    pub async fn outbox_len(&self) -> anyhow::Result<i64> {
        let name = &self.name;
        self.db
            .retry(
                "reading the webhook outbox",
                |c| async move { outbox::len(&c, name).await },
            )
            .await
    }

    /// Stored batches were found (from an earlier run, or replayed dead letters): later batches
    /// queue behind them.
    pub async fn enter_outbox(&self) {
        *self.outbox_active.lock().await = true;
    }

    /// Shutdown: blocked lanes give up (their batches stay unacknowledged).
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// The delay before retrying a stored batch after its `failures`-th failure, None when exhausted.
    pub fn next_delay(&self, failures: u32, retry_after: Option<Duration>) -> Option<Duration> {
        match self.config.on_exhausted {
            OnExhausted::DeadLetter => retry::next_delay(&self.config.retry, failures, retry_after, retry::jitter()),
            OnExhausted::Block => Some(retry::next_delay_forever(
                &self.config.retry,
                failures,
                retry_after,
                retry::jitter(),
            )),
        }
    }
}
