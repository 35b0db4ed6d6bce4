//! `cdc status`: what an operator asks first. Works with the daemon down: the slot (exists, in
//! use, `wal_status`, confirmed position, lag, WAL retained) and each sink's dead letters and
//! outbox come from Postgres; with `[admin] listen` configured and `cdc run` answering, the live
//! figures of `/ready` are added. `--json` prints one JSON object instead of lines.
//!
//! Exit status: 0 when the slot exists and is not lost and the daemon, when it answers, is
//! ready; 1 otherwise.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::admin::format_bytes;
use crate::config::{Config, SinkConfig};
use crate::source::connection::{self, Target};

#[derive(Serialize)]
struct Status {
    source: String,
    slot: Option<Slot>,
    sinks: Vec<SinkState>,
    /// `/ready`'s body when the daemon answered.
    live: Option<Value>,
    /// Why there are no live figures.
    live_unavailable: Option<String>,
}

#[derive(Serialize)]
struct Slot {
    name: String,
    active: bool,
    wal_status: Option<String>,
    confirmed_flush_lsn: Option<String>,
    lag_bytes: Option<i64>,
    retained_wal_bytes: Option<i64>,
}

#[derive(Serialize)]
struct SinkState {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    dead_letters: i64,
    /// Webhook sinks: batches waiting in the outbox.
    outbox_batches: Option<i64>,
}

pub async fn run(config: &Config, json: bool) -> anyhow::Result<i32> {
    let target = Target::parse(&config.source.url)?;
    let client = connection::catalog(&config.source.url).await?;
    let slot = client
        .query_opt(
            "SELECT active, wal_status, confirmed_flush_lsn::text, \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&config.source.slot],
        )
        .await?
        .map(|row| Slot {
            name: config.source.slot.clone(),
            active: row.get(0),
            wal_status: row.get(1),
            confirmed_flush_lsn: row.get(2),
            lag_bytes: row.get(3),
            retained_wal_bytes: row.get(4),
        });
    let backlog = crate::state::Backlog::read(&client).await?;
    let sinks = config
        .sinks
        .iter()
        .map(|(name, sink)| SinkState {
            name: name.clone(),
            kind: sink.type_name(),
            dead_letters: backlog.dead_letters.get(name).copied().unwrap_or(0),
            outbox_batches: matches!(sink, SinkConfig::Webhook(_))
                .then(|| backlog.outbox_batches.get(name).copied().unwrap_or(0)),
        })
        .collect();
    let (live, live_unavailable) = live(config).await;
    let status = Status {
        source: target.describe(),
        slot,
        sinks,
        live,
        live_unavailable,
    };
    let healthy = status
        .slot
        .as_ref()
        .is_some_and(|s| s.wal_status.as_deref() != Some("lost"))
        && status.live.as_ref().is_none_or(|l| l["ready"] == true);
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_text(config, &status);
    }
    Ok(if healthy { 0 } else { 1 })
}

/// `/ready` of the running daemon, or why it is not available.
async fn live(config: &Config) -> (Option<Value>, Option<String>) {
    let Some(admin) = &config.admin else {
        return (None, Some("no [admin] listen in the config".to_string()));
    };
    let mut addr = admin.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("http://{addr}/ready");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("an HTTP client");
    match client.get(&url).send().await {
        Ok(response) => match response
            .text()
            .await
            .map_err(anyhow::Error::from)
            .and_then(|text| Ok(serde_json::from_str::<Value>(&text)?))
        {
            Ok(body) => (Some(body), None),
            Err(e) => (
                None,
                Some(format!("{url} answered something else than cdc's /ready: {e}")),
            ),
        },
        Err(_) => (None, Some(format!("cdc run is not answering on {url} (not running?)"))),
    }
}

fn print_text(config: &Config, status: &Status) {
    println!("source: {}", status.source);
    match &status.slot {
        None => println!(
            "slot {}: does not exist; run `cdc setup` (or `cdc run`, which creates it)",
            config.source.slot
        ),
        Some(slot) => {
            let size = |b: Option<i64>| b.map_or("unknown".to_string(), |b| format_bytes(b.max(0) as u64));
            println!(
                "slot {}: {}, wal_status {}, confirmed {}, lag {}, retains {} of WAL",
                slot.name,
                if slot.active {
                    "in use"
                } else {
                    "not in use (cdc run is not streaming)"
                },
                slot.wal_status.as_deref().unwrap_or("unknown"),
                slot.confirmed_flush_lsn.as_deref().unwrap_or("none"),
                size(slot.lag_bytes),
                size(slot.retained_wal_bytes),
            );
            if slot.wal_status.as_deref() == Some("lost") {
                println!("  the slot is LOST: run `cdc setup --recreate-slot`, then `cdc rebuild-index --all`");
            }
        }
    }
    for sink in &status.sinks {
        let outbox = sink
            .outbox_batches
            .map_or(String::new(), |n| format!(", {n} batches in the outbox"));
        println!(
            "sink {} ({}): {} dead letters{outbox}",
            sink.name, sink.kind, sink.dead_letters
        );
    }
    match (&status.live, &status.live_unavailable) {
        (Some(live), _) => {
            let ready = if live["ready"] == true { "ready" } else { "NOT ready" };
            println!(
                "cdc run: {ready}; source {}, received {}, confirmed {}, lag {}s",
                live["source"]["status"].as_str().unwrap_or("?"),
                live["source"]["received_lsn"].as_str().unwrap_or("?"),
                live["source"]["confirmed_lsn"].as_str().unwrap_or("?"),
                live["source"]["lag_seconds"].as_f64().unwrap_or(0.0),
            );
            for sink in live["sinks"].as_array().into_iter().flatten() {
                let error = sink["error"].as_str().map_or(String::new(), |e| format!(": {e}"));
                println!(
                    "  sink {}: {}, acknowledged {}{error}",
                    sink["name"].as_str().unwrap_or("?"),
                    sink["status"].as_str().unwrap_or("?"),
                    sink["acknowledged_lsn"].as_str().unwrap_or("?"),
                );
            }
            for problem in live["problems"].as_array().into_iter().flatten() {
                println!("  problem: {}", problem.as_str().unwrap_or_default());
            }
        }
        (None, Some(why)) => println!("cdc run: no live figures: {why}"),
        (None, None) => {}
    }
}
