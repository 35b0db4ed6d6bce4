//! The sink's own regular connection to the source database: for reading back rows whose
//! unchanged TOAST values Postgres did not send, and for storing dead letters. Opened on first
//! use and reopened after it breaks, so a Postgres restart costs one failed attempt.

use std::sync::Arc;

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
}
