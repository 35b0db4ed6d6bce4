//! A standby: a second `cdc run` with the same config waits while another reader holds the slot,
//! and takes over when it is released.
//!
//! Postgres lets one walsender stream from a slot at a time, so two cdc processes never both
//! stream. But a process's sinks start working before it streams (the webhook sender drains the
//! shared outbox), so a standby waits *before* starting its sinks, here, by reading the slot's
//! `active` flag. Two processes that start in the same instant can both pass this check; the
//! loser then gets SQLSTATE 55006 from the replication connection and stands by in
//! `stream::run`, with its sinks started (harmless: outbox batches are sent at least once and
//! receivers dedupe by id).

use std::time::Duration;

use crate::config::SourceConfig;

use super::connection;

/// How often a standby looks whether the slot was released.
pub const RETRY: Duration = Duration::from_secs(2);

/// Returns once the slot is not active for another reader (or cannot be read: the stream's own
/// reconnect loop then reports and waits out whatever is wrong).
pub async fn wait_for_slot(source: &SourceConfig) {
    let metrics = crate::admin::metrics::global();
    let mut said = false;
    loop {
        let holder = match active_pid(source).await {
            Ok(holder) => holder,
            Err(e) => {
                tracing::debug!("could not read whether the slot is in use: {e:#}");
                None
            }
        };
        let Some(pid) = holder else {
            metrics.source.standby.set(0);
            if said {
                tracing::warn!(slot = %source.slot, "the slot was released: taking over");
            }
            return;
        };
        if !said {
            metrics.source.standby.set(1);
            tracing::warn!(
                slot = %source.slot,
                "standing by: the slot is active for another reader (server process {pid}; another cdc run?); \
                 looking every {}s, and taking over when it is released",
                RETRY.as_secs()
            );
            said = true;
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// The server process streaming from the slot, when one does.
async fn active_pid(source: &SourceConfig) -> anyhow::Result<Option<i32>> {
    let client = connection::catalog(&source.url).await?;
    let row = client
        .query_opt(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active",
            &[&source.slot],
        )
        .await?;
    Ok(row.and_then(|r| r.get::<_, Option<i32>>(0)))
}
