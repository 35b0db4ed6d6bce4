//! Every delivery attempt is recorded in `cdc.webhook_attempts`, written in the background and
//! in groups so recording costs the hot path one channel send, not one database round trip.

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::attempts::{self, Attempt};
use crate::state::Postgres;

/// Attempts queued for writing before recording slows the senders down.
const QUEUE: usize = 4096;
/// Attempts written per statement at most.
const GROUP: usize = 512;

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
    while rx.recv_many(&mut group, GROUP).await > 0 {
        // Attempts are diagnostics: failing to record them (Postgres restarting) must neither
        // stop nor slow deliveries; the connection is reopened for the next group.
        let recorded = match db.client().await {
            Ok(client) => attempts::record(&client, &sink, &group)
                .await
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        if let Err(e) = recorded {
            tracing::warn!(sink, "could not record {} delivery attempts: {e:#}", group.len());
        }
        group.clear();
    }
}
