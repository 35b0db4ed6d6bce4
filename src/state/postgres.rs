//! A sink's own regular connection to the source database (cdc's state, dead letters, TOAST
//! read-backs). Opened on first use and reopened after it breaks, so a Postgres restart costs one
//! failed attempt; [`Postgres::retry`] runs a statement until Postgres takes it, reconnecting
//! with the source's backoff, and gives up only on errors a reconnect cannot fix.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
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
            let wait = crate::retry::backoff(Duration::from_secs(1), failures);
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
/// or one the source would retry too (`source::errors::heals`).
fn is_transient(e: &tokio_postgres::Error) -> bool {
    e.code().is_none_or(|code| crate::source::errors::heals(code.code()))
}
