//! `cdc teardown`: drops the replication slot (saying how much WAL it was holding back), and on
//! request the publication. The slot must not be in use: stop `cdc run` first.

use anyhow::Context;

use crate::config::Config;
use crate::event::quote_ident;
use crate::source::connection;

pub async fn run(config: &Config, drop_publication: bool) -> anyhow::Result<()> {
    let client = connection::catalog(&config.source.url).await?;
    let slot = &config.source.slot;
    let row = client
        .query_opt(
            "SELECT active, pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)), confirmed_flush_lsn::text \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await?;
    match row {
        None => println!("replication slot {slot} does not exist; nothing to drop"),
        Some(row) => {
            let active: bool = row.get(0);
            if active {
                anyhow::bail!("replication slot {slot} is in use: stop `cdc run` first, then run `cdc teardown` again");
            }
            let retained: Option<String> = row.get(1);
            let confirmed: Option<String> = row.get(2);
            client
                .query("SELECT pg_catalog.pg_drop_replication_slot($1)", &[slot])
                .await
                .with_context(|| format!("dropping replication slot {slot:?}"))?;
            println!(
                "dropped replication slot {slot} (confirmed up to {}; it was holding {} of WAL)",
                confirmed.unwrap_or_else(|| "-".into()),
                retained.unwrap_or_else(|| "0 bytes".into())
            );
        }
    }
    if drop_publication {
        let publication = &config.source.publication;
        client
            .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(publication)))
            .await?;
        println!("dropped publication {publication}");
    }
    Ok(())
}
