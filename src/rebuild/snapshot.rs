//! The split point of a rebuild: a temporary logical slot created with an exported snapshot.
//!
//! `CREATE_REPLICATION_SLOT ... TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT` on a replication
//! session returns the slot's consistent point P and a snapshot name. A transaction that
//! committed before P is visible in the snapshot; every later one is decoded from the slot. The
//! copy workers import the snapshot (`SET TRANSACTION SNAPSHOT`) while the session is still idle
//! (the export lasts until its session's next command); then the session starts streaming the
//! slot. The slot is temporary: it disappears with the session, also on a crash or `kill -9`.

use anyhow::{bail, Context};
use pgwire_replication::ReplicationClient;
use tokio_postgres::Client;

use crate::config::SourceConfig;
use crate::event::Lsn;
use crate::source::connection::{self, Target};

/// A replication session holding a temporary slot, not yet streaming.
pub struct Exported {
    pub client: ReplicationClient,
    pub slot: String,
    pub consistent_point: Lsn,
    snapshot: String,
}

/// Creates the temporary slot `slot` on a new replication session.
pub async fn export(source: &SourceConfig, slot: &str) -> anyhow::Result<Exported> {
    let target = Target::parse(&source.url)?;
    let cfg = target.replication_config(
        slot,
        &source.publication,
        "cdc rebuild-index",
        std::time::Duration::from_secs(1),
    );
    let mut client = ReplicationClient::connect_gated(cfg)
        .await
        .with_context(|| format!("opening a replication session to {}", target.describe()))?;
    // The pre-15 spelling: every supported server (10 and later) accepts it.
    let rows = client
        .simple_query(&format!(
            "CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT"
        ))
        .await
        .with_context(|| {
            format!(
                "creating the temporary replication slot {slot} on {}: the role needs REPLICATION and a free slot (max_replication_slots)",
                target.describe()
            )
        })?;
    let text = |row: &[Option<bytes::Bytes>], i: usize| -> Option<String> {
        row.get(i)?.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())
    };
    let Some(row) = rows.first() else {
        bail!("CREATE_REPLICATION_SLOT returned no row");
    };
    let consistent_point = text(row, 1)
        .as_deref()
        .and_then(Lsn::parse)
        .context("CREATE_REPLICATION_SLOT returned no consistent point")?;
    let snapshot = text(row, 2).context("CREATE_REPLICATION_SLOT returned no snapshot")?;
    Ok(Exported {
        client,
        slot: slot.to_string(),
        consistent_point,
        snapshot,
    })
}

impl Exported {
    /// A new connection in a read-only repeatable-read transaction that sees the snapshot.
    pub async fn import(&self, url: &str) -> anyhow::Result<Client> {
        let client = connection::catalog(url).await?;
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
                self.snapshot.replace('\'', "''")
            ))
            .await
            .context("importing the rebuild's snapshot")?;
        Ok(client)
    }

    /// Starts streaming the slot (ending the snapshot's export: import it before).
    pub async fn start(mut self) -> anyhow::Result<ReplicationClient> {
        self.client.start().await?;
        self.client
            .wait_started()
            .await
            .with_context(|| format!("starting replication from the temporary slot {}", self.slot))?;
        Ok(self.client)
    }
}
