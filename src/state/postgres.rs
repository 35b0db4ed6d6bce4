//! A sink's own regular connection to the source database (cdc's state, dead letters, TOAST
//! read-backs). Opened on first use and reopened after it breaks, so a Postgres restart costs one
//! failed attempt; [`Postgres::retry`] runs a statement until Postgres takes it, reconnecting
//! with the source's backoff, and gives up only on errors a reconnect cannot fix.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::source::connection;

#[derive(Clone)]
pub struct Postgres {
    url: Arc<str>,
    client: Arc<Mutex<Option<Arc<Client>>>>,
}

impl Postgres {
    pub fn new(url: &str) -> Postgres {
        Postgres {
            url: Arc::from(url),
            client: Arc::default(),
        }
    }

    /// The open connection, or a new one.
    pub async fn client(&self) -> anyhow::Result<Arc<Client>> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let client = Arc::new(connection::catalog(&self.url).await?);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Runs `op` on the connection until it succeeds. While Postgres cannot be reached (down,
    /// restarting, the connection cut) it reconnects with capped backoff (1 s … 30 s, as the
    /// source does), logging once when that starts and once when it ends. Errors Postgres
    /// reports for the statement itself (a missing table, a permission) are returned: retrying
    /// cannot fix them. `what` says what was being done, for both.
    pub async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> anyhow::Result<T>
    where
        F: FnMut(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let mut failures = 0u32;
        loop {
            let error = match self.client().await {
                Ok(client) => match op(client).await {
                    Ok(value) => {
                        if failures > 0 {
                            tracing::info!("{what}: Postgres is back after {failures} failed attempts");
                        }
                        return Ok(value);
                    }
                    Err(e) if !is_transient(&e) => return Err(anyhow::Error::new(e).context(what.to_string())),
                    Err(e) => anyhow::Error::new(e),
                },
                Err(e) => e,
            };
            let wait = backoff(failures);
            if failures == 0 {
                tracing::warn!(
                    "{what}: {error:#}; retrying in {}s until Postgres is back",
                    wait.as_secs()
                );
            } else {
                tracing::debug!("{what}: {error:#}; retrying in {}s", wait.as_secs());
            }
            failures = failures.saturating_add(1);
            tokio::time::sleep(wait).await;
        }
    }
}

/// Whether a reconnect may fix the error: no SQLSTATE (the connection broke or never opened),
/// or one that says the server is going away, starting, or short of resources.
fn is_transient(e: &tokio_postgres::Error) -> bool {
    let Some(code) = e.code() else {
        return true;
    };
    let transient = [
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
    ];
    // Class 08: connection exceptions; class 53: insufficient resources (too many connections).
    transient.contains(code) || code.code().starts_with("08") || code.code().starts_with("53")
}

/// 1 s doubling to 30 s: the source's reconnect schedule.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs((1u64 << failures.min(5)).min(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_thirty() {
        let waits: Vec<u64> = (0..8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
