//! `cdc setup`: creates (or completes) the publication for the mapped tables, the replication
//! slot, and cdc's own state schema; optionally sets REPLICA IDENTITY FULL on chosen tables.
//! Safe to run again: it only adds what is missing.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio_postgres::error::SqlState;

use crate::config::Config;
use crate::event::{quote_ident, TableName};
use crate::source::connection;
use crate::source::identity::Identity;
use crate::source::publication;
use crate::state;

/// How long `--replica-identity-full` waits for a table's lock before giving up.
const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(config: &Config, replica_identity_full: &[String], recreate_slot: bool) -> anyhow::Result<()> {
    let mut client = connection::catalog(&config.source.url).await?;
    // Before changing anything: only a lost slot is recreated.
    let lost = if recreate_slot {
        lost_slot(&client, &config.source.slot).await?
    } else {
        None
    };
    let publication = &config.source.publication;
    let mut tables: Vec<&TableName> = config.tables.iter().map(|t| &t.table).collect();
    tables.sort();
    tables.dedup();
    let list = tables.iter().map(|t| t.quoted()).collect::<Vec<_>>().join(", ");
    // ONLY: without it Postgres publishes every inheritance child too, and a child has no
    // primary key of its parent's, so the application's UPDATE and DELETE on it would fail. A
    // partitioned table's partitions are published through it all the same.
    let only = tables
        .iter()
        .map(|t| format!("ONLY {}", t.quoted()))
        .collect::<Vec<_>>()
        .join(", ");
    let full: Vec<TableName> = replica_identity_full.iter().map(|t| TableName::parse(t)).collect();

    // Before changing anything: a published table without a replica identity makes the
    // application's own UPDATE and DELETE on it fail, so such a table is refused.
    let mut refusals = Vec::new();
    for table in tables.iter().filter(|t| !full.contains(t)) {
        match Identity::read(&client, table).await? {
            None => refusals.push(format!(
                "table {table} does not exist: create it, or fix its [[tables]] mapping"
            )),
            Some(identity) => refusals.extend(identity.refusal()),
        }
    }
    // An existing publication that keeps changes back is someone's choice: said, not changed.
    refusals.extend(publication::gaps(&client, publication, &tables).await?);
    if !refusals.is_empty() {
        bail!("nothing was changed:\n{}", refusals.join("\n"));
    }

    // Before the publication, so a table is never published without its identity.
    for table in &full {
        // A partition does not inherit its parent's replica identity: set it on every leaf too.
        let partitions: Vec<String> = client
            .query(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_partition_tree($1::text::regclass) t \
                 JOIN pg_catalog.pg_class c ON c.oid = t.relid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE t.relid <> $1::text::regclass AND c.relkind = 'r'",
                &[&table.quoted()],
            )
            .await
            .with_context(|| format!("reading the partitions of {table}"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        // ALTER TABLE waits for ACCESS EXCLUSIVE, and every read and write of the table queues
        // behind it meanwhile: behind a long transaction, that would stop the application. So
        // it gives up after LOCK_TIMEOUT, and one transaction leaves the table and its
        // partitions as they were.
        let tx = client.transaction().await?;
        tx.batch_execute(&format!("SET LOCAL lock_timeout = '{}ms'", LOCK_TIMEOUT.as_millis()))
            .await?;
        for quoted in std::iter::once(table.quoted()).chain(partitions) {
            if let Err(e) = tx
                .batch_execute(&format!("ALTER TABLE {quoted} REPLICA IDENTITY FULL"))
                .await
            {
                if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
                    bail!(
                        "{quoted} is busy: a long transaction holds a lock on it (see pg_stat_activity), and setting \
                         REPLICA IDENTITY FULL waits for every lock on the table while blocking its reads and writes, so cdc gave up \
                         after {}s. Nothing else was changed for {table}; run `cdc setup` again when it is quiet",
                        LOCK_TIMEOUT.as_secs()
                    );
                }
                return Err(e).with_context(|| format!("setting REPLICA IDENTITY FULL on {quoted}"));
            }
        }
        tx.commit().await?;
        println!("{table}: REPLICA IDENTITY FULL (updates and deletes now carry the whole old row)");
    }

    let existing = client
        .query_opt(
            "SELECT pubviaroot FROM pg_catalog.pg_publication WHERE pubname = $1",
            &[publication],
        )
        .await?;
    match existing {
        None => {
            client
                .batch_execute(&format!(
                    "CREATE PUBLICATION {} FOR TABLE {only} WITH (publish_via_partition_root = true)",
                    quote_ident(publication)
                ))
                .await
                .with_context(|| format!("creating publication {publication:?} for {list}"))?;
            println!("created publication {publication} for {list}");
        }
        Some(row) => {
            let via_root: bool = row.get(0);
            if !via_root {
                client
                    .batch_execute(&format!(
                        "ALTER PUBLICATION {} SET (publish_via_partition_root = true)",
                        quote_ident(publication)
                    ))
                    .await?;
                println!("publication {publication}: set publish_via_partition_root = true");
            }
            for table in &tables {
                let present = client
                    .query_opt(
                        "SELECT 1 FROM pg_catalog.pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
                        &[publication, &table.schema, &table.name],
                    )
                    .await?;
                if present.is_none() {
                    client
                        .batch_execute(&format!(
                            "ALTER PUBLICATION {} ADD TABLE ONLY {}",
                            quote_ident(publication),
                            table.quoted()
                        ))
                        .await
                        .with_context(|| format!("adding {table} to publication {publication:?}"))?;
                    println!("publication {publication}: added {table}");
                }
            }
            println!("publication {publication} covers every mapped table");
        }
    }

    state::ensure_schema(&client)
        .await
        .context("creating cdc's state schema")?;

    let slot = &config.source.slot;
    if let Some(confirmed) = &lost {
        client
            .execute("SELECT pg_catalog.pg_drop_replication_slot($1)", &[slot])
            .await
            .with_context(|| format!("dropping the lost replication slot {slot:?}"))?;
        println!("dropped the lost replication slot {slot} (its last confirmed position was {confirmed})");
    }
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await?;
    if exists.is_some() {
        println!("replication slot {slot} exists");
    } else {
        let row = client
            .query_one(
                "SELECT lsn::text FROM pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')",
                &[slot],
            )
            .await
            .with_context(|| format!("creating replication slot {slot:?}"))?;
        let lsn: String = row.get(0);
        println!("created replication slot {slot} at {lsn}: changes from here on are captured");
        if let Some(confirmed) = &lost {
            let now: String = client
                .query_one(
                    "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
                    &[],
                )
                .await?
                .get(0);
            println!(
                "gap: the changes committed between {confirmed} and {lsn} (slot recreated at {now}) were never streamed: \
                 webhook receivers missed them; run `cdc rebuild-index --all` to make the search indexes equal to the tables"
            );
        }
    }
    println!("next: cdc run --config {}", config.path.display());
    Ok(())
}

/// `--recreate-slot`: the lost slot's last confirmed position, None when there is no slot (it is
/// created as usual). Refused for a healthy slot (recreating it would skip what it holds) and
/// for one in use.
async fn lost_slot(client: &tokio_postgres::Client, slot: &str) -> anyhow::Result<Option<String>> {
    let row = client
        .query_opt(
            "SELECT wal_status, active, coalesce(confirmed_flush_lsn::text, 'its last confirmed position') \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let wal_status: Option<String> = row.get(0);
    let active: bool = row.get(1);
    if wal_status.as_deref() != Some("lost") {
        bail!(
            "replication slot {slot} is not lost (wal_status {}): recreating it would skip the changes it holds, so nothing was changed. \
             To start over anyway: `cdc teardown`, then `cdc setup`",
            wal_status.as_deref().unwrap_or("unknown")
        );
    }
    if active {
        bail!("replication slot {slot} is in use (a `cdc run` holds it): stop it, then run `cdc setup --recreate-slot` again");
    }
    Ok(Some(row.get(2)))
}
