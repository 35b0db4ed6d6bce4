//! Every delivery attempt is recorded in `cdc.webhook_attempts`, written in the background and
//! in groups so recording costs the hot path one channel send, not one database round trip.
//! The writer gathers attempts for [`GATHER`] before a statement and trims the table to the last
//! [`attempts::KEEP`] once per [`TRIM_EVERY`] attempts: with 100 endpoints each answering at
//! once, a statement per request was a good part of cdc's CPU (and of Postgres's).

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::attempts::{self, Attempt};
use crate::state::Postgres;

/// Attempts queued for writing before recording slows the senders down.
const QUEUE: usize = 4096;
/// Attempts written per statement at most.
const GROUP: usize = 512;
/// How long the writer waits for more attempts once one arrived.
const GATHER: std::time::Duration = std::time::Duration::from_millis(100);
/// Attempts recorded between two trims (so at most `KEEP + TRIM_EVERY` stay between trims).
const TRIM_EVERY: usize = attempts::KEEP as usize / 10;

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Attempt>,
}

impl Recorder {
    /// Starts the writer; it ends once every `Recorder` clone is dropped and the queue is written.
    pub fn spawn(db: Postgres, sink: String) -> (Recorder, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Recorder { tx }, tokio::spawn(write(db, sink, rx)))
    }

    pub async fn record(&self, attempt: Attempt) {
        // The writer only stops after every sender is gone, so this cannot fail while we hold one.
        let _ = self.tx.send(attempt).await;
    }
}

async fn write(db: Postgres, sink: String, mut rx: mpsc::Receiver<Attempt>) {
    let mut group = Vec::with_capacity(GROUP);
    let mut untrimmed = 0;
    while rx.recv_many(&mut group, GROUP).await > 0 {
        // More may follow at once (several lanes, a burst): one statement for all of them.
        // The queue closing (shutdown) ends the wait early.
        let _ = tokio::time::timeout(GATHER, async {
            while group.len() < GROUP {
                let room = GROUP - group.len();
                if rx.recv_many(&mut group, room).await == 0 {
                    break;
                }
            }
        })
        .await;
        untrimmed += group.len();
        // Attempts are diagnostics: failing to record them (Postgres restarting) must neither
        // stop nor slow deliveries; the connection is reopened for the next group.
        let recorded = match db.client().await {
            Ok(client) => async {
                attempts::insert(&client, &sink, &group).await?;
                if untrimmed >= TRIM_EVERY {
                    attempts::trim(&client, &sink).await?;
                    untrimmed = 0;
                }
                Ok(())
            }
            .await
            .map_err(|e: tokio_postgres::Error| anyhow::Error::from(e)),
            Err(e) => Err(e),
        };
        if let Err(e) = recorded {
            tracing::warn!(sink, "could not record {} delivery attempts: {e:#}", group.len());
        }
        group.clear();
    }
    // What is left over since the last trim.
    if untrimmed > 0 {
        if let Ok(client) = db.client().await {
            let _ = attempts::trim(&client, &sink).await;
        }
    }
}
