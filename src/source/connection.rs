//! Connections to Postgres: the URL → host/port/user, the catalog (regular) connection, and the
//! checks that must pass before streaming (slot and publication exist).

use std::time::Duration;

use anyhow::Context;
use pgwire_replication::ReplicationConfig;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, NoTls};

use crate::config::{SourceConfig, TableMapping};
use crate::event::{Lsn, TableName};
use crate::retry::Unrecoverable;
use crate::source::identity::Identity;
use crate::source::publication;
use crate::source::tls::{self, Tls};

/// Session settings for every connection whose text output cdc parses: value conversion relies
/// on these formats, so server or role defaults never change what events contain.
pub const SESSION_OPTIONS: &str =
    "-c DateStyle=ISO,YMD -c IntervalStyle=iso_8601 -c extra_float_digits=3 -c bytea_output=hex -c TimeZone=UTC";

/// Where the source connects, from `source.url`.
#[derive(Clone, Debug)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub dbname: String,
    /// `sslmode` and the certificates, for both connections (see `tls`).
    pub tls: Tls,
    /// The URL without the TLS settings, as tokio-postgres takes it.
    url: String,
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let (tls, url) = tls::split(url).context("source.url")?;
        let cfg: tokio_postgres::Config = url
            .parse()
            .context("source.url is not a valid Postgres connection URL")?;
        let host = match cfg.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "127.0.0.1".to_string(),
        };
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        let user = cfg
            .get_user()
            .map(str::to_string)
            .unwrap_or_else(|| "postgres".to_string());
        let password = cfg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let dbname = cfg.get_dbname().map(str::to_string).unwrap_or_else(|| user.clone());
        Ok(Target {
            host,
            port,
            user,
            password,
            dbname,
            tls,
            url,
        })
    }

    /// `Postgres at 127.0.0.1:5432 (database app)` — what a log line names.
    pub fn describe(&self) -> String {
        format!(
            "Postgres at {}:{} (database {}, user {})",
            self.host, self.port, self.dbname, self.user
        )
    }

    /// The replication connection's settings for `slot`: the same server, credentials and TLS
    /// as the catalog connection, and the pinned session settings.
    pub fn replication_config(
        &self,
        slot: &str,
        publication: &str,
        application_name: &str,
        status_interval: Duration,
    ) -> ReplicationConfig {
        ReplicationConfig::new(
            self.host.clone(),
            self.user.clone(),
            self.password.clone(),
            self.dbname.clone(),
            slot.to_string(),
            publication.to_string(),
        )
        .with_port(self.port)
        .with_tls(self.tls.replication())
        .with_status_interval(status_interval)
        .with_wakeup_interval(Duration::from_secs(1))
        .with_application_name(application_name)
        // Value conversion reads these formats; pin them so server defaults never matter.
        .with_options(SESSION_OPTIONS)
    }
}

/// A regular connection for catalog queries, with the session settings pinned.
pub async fn catalog(url: &str) -> anyhow::Result<Client> {
    let target = Target::parse(url)?;
    let mut cfg: tokio_postgres::Config = target
        .url
        .parse()
        .context("source.url is not a valid Postgres connection URL")?;
    cfg.options(SESSION_OPTIONS)
        .application_name("cdc")
        .ssl_mode(target.tls.postgres_mode());
    let connected = match target.tls.mode {
        tls::Mode::Disable => cfg.connect(NoTls).await.map(|(client, conn)| {
            tokio::spawn(watch(conn));
            client
        }),
        _ => cfg.connect(target.tls.connector()?).await.map(|(client, conn)| {
            tokio::spawn(watch(conn));
            client
        }),
    };
    connected.map_err(|e| {
        let e = anyhow::Error::new(e).context(format!("cannot connect to {}", target.describe()));
        if tls::is_certificate_error(&e) {
            // A certificate that does not verify does not start verifying by itself.
            Unrecoverable(format!(
                "{e:#}: check sslrootcert and the host name (sslmode={})",
                target.tls.mode.name()
            ))
            .into()
        } else {
            e
        }
    })
}

async fn watch<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(conn: F) {
    if let Err(e) = conn.await {
        tracing::debug!("catalog connection closed: {e}");
    }
}

/// Before streaming: `wal_level` must be logical and the publication must exist (`cdc setup`
/// creates it) and let every change of the mapped tables through (see `publication`); every
/// mapping's key must be one Postgres sends with deletes. A missing slot is created here on the
/// run's first connection, so `cdc run` works on a database that only has the publication; on a
/// reconnect (`streamed_since`: the position this run confirmed) it is
/// [`SlotGone`](crate::source::errors::SlotGone). Errors no retry can fix are [`Unrecoverable`].
pub async fn preflight<'a>(
    catalog: &Client,
    source: &SourceConfig,
    mappings: impl IntoIterator<Item = &'a TableMapping>,
    streamed_since: Option<Lsn>,
) -> anyhow::Result<()> {
    let wal_level: String = catalog.query_one("SHOW wal_level", &[]).await?.get(0);
    if wal_level != "logical" {
        return Err(Unrecoverable(format!(
            "wal_level is {wal_level}, and logical replication needs logical: run ALTER SYSTEM SET wal_level = logical; \
             as a superuser, then restart Postgres"
        ))
        .into());
    }
    let publication = catalog
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1",
            &[&source.publication],
        )
        .await?;
    if publication.is_none() {
        return Err(Unrecoverable(format!(
            "publication {:?} does not exist: run `cdc setup` to create it for the mapped tables",
            source.publication
        ))
        .into());
    }
    let mappings: Vec<&TableMapping> = mappings.into_iter().collect();
    let tables: Vec<&TableName> = mappings.iter().map(|m| &m.table).collect();
    let gaps = publication::gaps(catalog, &source.publication, &tables).await?;
    if !gaps.is_empty() {
        return Err(Unrecoverable(gaps.join("\n")).into());
    }
    check_keys(catalog, mappings).await?;
    let slot = catalog
        .query_opt(
            "SELECT plugin::text, wal_status, confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&source.slot],
        )
        .await?;
    match slot {
        Some(row) => {
            let plugin: Option<String> = row.get(0);
            let wal_status: Option<String> = row.get(1);
            if wal_status.as_deref() == Some("lost") {
                let confirmed: Option<String> = row.get(2);
                return Err(crate::source::errors::SlotLost {
                    slot: source.slot.clone(),
                    confirmed: confirmed.unwrap_or_else(|| "the slot's last confirmed position".to_string()),
                }
                .into());
            }
            if plugin.as_deref() != Some("pgoutput") {
                return Err(Unrecoverable(format!(
                    "replication slot {:?} uses plugin {:?}, not pgoutput: drop it (`cdc teardown`) and run `cdc setup`",
                    source.slot, plugin
                ))
                .into());
            }
        }
        None if streamed_since.is_some() => {
            return Err(crate::source::errors::SlotGone {
                slot: source.slot.clone(),
                confirmed: streamed_since.map(|lsn| lsn.to_string()).unwrap_or_default(),
            }
            .into());
        }
        None => {
            let row = catalog
                .query_one(
                    "SELECT lsn::text FROM pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&source.slot],
                )
                .await
                .with_context(|| format!("creating replication slot {:?}", source.slot))?;
            let lsn: String = row.get(0);
            tracing::info!(slot = %source.slot, %lsn, "created the replication slot; changes from here on are captured");
        }
    }
    Ok(())
}

/// A mapping whose key Postgres does not send with deletes ends the run (deletes could not say
/// which row they removed); a table whose events would have no key at all is streamed, loudly.
async fn check_keys<'a>(catalog: &Client, mappings: impl IntoIterator<Item = &'a TableMapping>) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for mapping in mappings {
        let Some(identity) = Identity::read(catalog, &mapping.table).await? else {
            // Not created yet: its Relation message will bring what the stream needs.
            continue;
        };
        let (key_problems, _) = identity.check_mapping(mapping);
        problems.extend(key_problems);
        if let Some(no_key) = identity.no_key(mapping) {
            tracing::warn!(table = %mapping.table, "{no_key}; its events are streamed with `key: null`");
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Unrecoverable(problems.join("\n")).into())
    }
}
