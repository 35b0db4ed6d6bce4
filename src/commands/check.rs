//! `cdc check`: validates the configuration, then connects and verifies everything that would
//! break at run time. Each problem is one line that says how to fix it; the exit status is 1
//! when there is any problem (warnings alone leave it 0).

use tokio_postgres::Client;

use crate::config::{Config, SinkConfig};
use crate::event::TableName;
use crate::source::connection;
use crate::source::identity::Identity;
use crate::source::publication;

#[derive(Default)]
pub struct Report {
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    pub oks: Vec<String>,
}

impl Report {
    fn problem(&mut self, s: impl Into<String>) {
        self.problems.push(s.into());
    }
    fn warn(&mut self, s: impl Into<String>) {
        self.warnings.push(s.into());
    }
    fn ok(&mut self, s: impl Into<String>) {
        self.oks.push(s.into());
    }
}

/// Runs every check and prints the report; returns the exit code.
pub async fn run(config: &Config, send_test: bool) -> anyhow::Result<i32> {
    println!(
        "ok: {} is valid ({} sinks, {} table mappings)",
        config.path.display(),
        config.sinks.len(),
        config.tables.len()
    );
    let mut report = check_postgres(config).await;
    check_sinks(config, send_test, &mut report).await;
    for line in &report.oks {
        println!("ok: {line}");
    }
    for line in &report.warnings {
        println!("warning: {line}");
    }
    for line in &report.problems {
        println!("problem: {line}");
    }
    if report.problems.is_empty() {
        println!("all checks passed");
        Ok(0)
    } else {
        println!("{} problem(s) found", report.problems.len());
        Ok(1)
    }
}

/// Each sink's far end: search nodes (reachable, version, credentials, aliases, settings; see
/// `sinks::search::health`) and webhook endpoints (see `sinks::webhook::health`).
async fn check_sinks(config: &Config, send_test: bool, r: &mut Report) {
    use crate::sinks::{search, webhook, Finding};
    for (name, sink) in &config.sinks {
        let findings = match sink {
            SinkConfig::Elasticsearch(search) => {
                let mappings: Vec<&crate::config::TableMapping> =
                    config.tables.iter().filter(|m| m.sinks.contains(name)).collect();
                search::health::check(name, search, &mappings).await
            }
            SinkConfig::Webhook(hook) => vec![webhook::health::check(name, hook, send_test).await],
            // Served by cdc run itself: nothing to reach.
            SinkConfig::Stdout(_) | SinkConfig::Stream(_) => Vec::new(),
        };
        for finding in findings {
            match finding {
                Finding::Ok(s) => r.ok(s),
                Finding::Warning(s) => r.warn(s),
                Finding::Problem(s) => r.problem(s),
            }
        }
    }
}

pub async fn check_postgres(config: &Config) -> Report {
    let mut r = Report::default();
    let client = match connection::catalog(&config.source.url).await {
        Ok(c) => c,
        Err(e) => {
            // The error names the server already (`connection::catalog`).
            r.problem(format!(
                "{e:#} — check source.url, that the server runs and accepts connections from this host"
            ));
            return r;
        }
    };
    if let Err(e) = checks(config, &client, &mut r).await {
        r.problem(format!("a check query failed: {e:#}"));
    }
    r
}

async fn checks(config: &Config, c: &Client, r: &mut Report) -> anyhow::Result<()> {
    let wal_level: String = c.query_one("SHOW wal_level", &[]).await?.get(0);
    if wal_level == "logical" {
        r.ok("wal_level = logical");
    } else {
        r.problem(format!("wal_level is {wal_level}, logical replication needs logical: ALTER SYSTEM SET wal_level = logical; then restart Postgres"));
    }

    let row = c
        .query_one("SELECT current_user::text, rolreplication OR rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user", &[])
        .await?;
    let (user, can_replicate): (String, bool) = (row.get(0), row.get(1));
    if can_replicate {
        r.ok(format!("role {user} may replicate"));
    } else {
        r.problem(format!(
            "role {user} lacks the REPLICATION attribute: ALTER ROLE {user} WITH REPLICATION;"
        ));
    }

    let publication = &config.source.publication;
    let pub_row = c
        .query_opt(
            "SELECT pubviaroot, pubupdate OR pubdelete FROM pg_catalog.pg_publication WHERE pubname = $1",
            &[publication],
        )
        .await?;
    let mapped: Vec<&TableName> = config.tables.iter().map(|m| &m.table).collect();
    match &pub_row {
        None => r.problem(format!("publication {publication} does not exist: run `cdc setup`")),
        Some(row) => {
            for gap in publication::gaps(c, publication, &mapped).await? {
                r.problem(gap);
            }
            let via_root: bool = row.get(0);
            if via_root {
                r.ok(format!("publication {publication} exists"));
            } else {
                r.warn(format!("publication {publication} has publish_via_partition_root = false: partitions' changes would carry the partition's name; run `cdc setup` to fix"));
            }
        }
    }

    for m in &config.tables {
        let table = &m.table;
        let Some(identity) = Identity::read(c, table).await? else {
            r.problem(format!(
                "table {table} does not exist in the database (tables[].table); create it or fix the name"
            ));
            continue;
        };
        let named = m
            .columns
            .iter()
            .flatten()
            .chain(&m.exclude_columns)
            .chain(m.key.iter().flatten())
            .chain(m.id.iter().flatten())
            .map(String::as_str)
            .chain(m.filter.iter().flat_map(|f| f.columns()));
        for col in named {
            if !identity.columns.iter().any(|c| c == col) {
                r.problem(format!(
                    "{table} has no column {col:?} (named in its [[tables]] mapping); columns are: {}",
                    identity.columns.join(", ")
                ));
            }
        }
        if let Some(refusal) = identity.refusal() {
            r.problem(refusal);
        } else if let Some(no_key) = identity.no_key(m) {
            r.problem(no_key);
        }
        let (key_problems, id_warnings) = identity.check_mapping(m);
        key_problems.into_iter().for_each(|p| r.problem(p));
        id_warnings.into_iter().for_each(|w| r.warn(w));
        let identity = identity.replica_identity;
        if identity != b'f' {
            if m.filter.is_some() {
                r.warn(format!(
                    "{table} has a filter but not REPLICA IDENTITY FULL: an update that leaves the filter is sent as a delete even if the row was never in it; `cdc setup --replica-identity-full {table}` makes it exact"
                ));
            }
            r.ok(format!(
                "{table}: updates carry `changed: null` (unknown) unless REPLICA IDENTITY FULL is set"
            ));
        } else {
            r.ok(format!(
                "{table}: REPLICA IDENTITY FULL (updates list exactly which columns changed)"
            ));
        }
        if pub_row.is_some() {
            let covered = c
                .query_opt(
                    "SELECT 1 FROM pg_catalog.pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
                    &[publication, &table.schema, &table.name],
                )
                .await?
                .is_some();
            if !covered {
                r.problem(format!("publication {publication} does not cover {table}: run `cdc setup` (or ALTER PUBLICATION {publication} ADD TABLE ONLY {})", table.quoted()));
            }
        }
    }

    // The mapped tables were checked above; any other published table (an inheritance child
    // published by a `cdc setup` that did not use ONLY, a table added by hand) without an
    // identity makes the application's UPDATE and DELETE on it fail.
    if pub_row.as_ref().is_some_and(|row| row.get::<_, bool>(1)) {
        let published = c
            .query(
                "SELECT schemaname::text, tablename::text FROM pg_catalog.pg_publication_tables WHERE pubname = $1 ORDER BY 1, 2",
                &[publication],
            )
            .await?;
        for row in published {
            let table = TableName {
                schema: row.get(0),
                name: row.get(1),
            };
            if mapped.contains(&&table) {
                continue;
            }
            if let Some(refusal) = Identity::read(c, &table).await?.and_then(|i| i.refusal()) {
                r.problem(format!(
                    "{refusal}; or, as no [[tables]] entry maps it (an inheritance child of a mapped table, published by an \
                     older `cdc setup`?), take it out of publication {publication}: ALTER PUBLICATION {publication} DROP TABLE ONLY {}",
                    table.quoted()
                ));
            }
        }
    }

    let slot = &config.source.slot;
    let slot_row = c
        .query_opt(
            "SELECT plugin::text, active, wal_status, coalesce(confirmed_flush_lsn::text, 'its last confirmed position') \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await?;
    match slot_row {
        Some(row) => {
            let plugin: Option<String> = row.get(0);
            let active: bool = row.get(1);
            let wal_status: Option<String> = row.get(2);
            if wal_status.as_deref() == Some("lost") {
                let confirmed: String = row.get(3);
                r.problem(format!(
                    "slot {slot} was invalidated by Postgres (wal_status lost; it held more WAL than max_slot_wal_keep_size allows): \
                     the changes committed after {confirmed} are gone and `cdc run` exits 3. Fix: `cdc setup --recreate-slot`, \
                     then `cdc rebuild-index --all` (see README, Lost slot)"
                ));
            } else if plugin.as_deref() != Some("pgoutput") {
                r.problem(format!(
                    "slot {slot} uses plugin {plugin:?}, cdc needs pgoutput: `cdc teardown` then `cdc setup`"
                ));
            } else if active {
                r.warn(format!(
                    "slot {slot} is in use by another connection (another cdc run?); only one reader can hold it"
                ));
            } else {
                r.ok(format!("slot {slot} exists"));
            }
        }
        None => {
            let row = c
                .query_one(
                    "SELECT current_setting('max_replication_slots')::int8, (SELECT count(*) FROM pg_catalog.pg_replication_slots)",
                    &[],
                )
                .await?;
            let (max, used): (i64, i64) = (row.get(0), row.get(1));
            if used < max {
                r.ok(format!(
                    "slot {slot} does not exist yet; `cdc setup` or `cdc run` creates it ({used} of {max} slots used)"
                ));
            } else {
                r.problem(format!("slot {slot} does not exist and all {max} replication slots are used: raise max_replication_slots or drop an unused slot"));
            }
        }
    }

    // Search and webhook sinks keep dead letters (and the webhook outbox) in cdc's schema.
    if config
        .sinks
        .values()
        .any(|s| !matches!(s, SinkConfig::Stdout(_) | SinkConfig::Stream(_)))
    {
        let missing = crate::state::missing_tables(c).await?;
        let may_create: bool = c
            .query_one("SELECT has_database_privilege(current_database(), 'CREATE')", &[])
            .await?
            .get(0);
        if missing.is_empty() {
            r.ok(format!("cdc's state schema {} is in place", crate::state::SCHEMA));
        } else if may_create {
            r.warn(format!(
                "cdc's state tables are missing ({}): `cdc setup` creates them, and so does `cdc run` at start",
                missing.join(", ")
            ));
        } else {
            r.problem(format!(
                "cdc's state tables are missing ({}) and this role may not create them: run `cdc setup` as a role \
                 that may, or GRANT CREATE ON DATABASE to this one",
                missing.join(", ")
            ));
        }
    }
    Ok(())
}
