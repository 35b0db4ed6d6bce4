//! The admin server `cdc run` starts when `[admin] listen` is set: `/health` (the process
//! answers), `/ready` (streaming, no sink stalled, retained WAL under `max_retained_wal`),
//! `/metrics` (Prometheus text format, see `metrics`), and `/events`, the stream sinks' clients
//! (see `sinks::stream::http`).
//!
//! Two background tasks feed it: the watcher (every 500 ms) follows each sink's acknowledged
//! position to tell a stalled sink from a busy one (and counts stalls), and the probe (every 5 s,
//! its own small catalog connection) reads the slot from `pg_replication_slots` (lag in bytes,
//! WAL retained, whether Postgres invalidated it) and, with `[admin]`, what waits in cdc's state
//! tables per sink (dead letters, webhook outbox: `state::Backlog`, as `cdc status` reads it).

pub mod metrics;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::config::{AdminConfig, SourceConfig};
use crate::event::Lsn;
use crate::state::Backlog;

/// How often the slot is read from the catalog.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// How often acknowledged positions are compared.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// What the probe last read about the slot.
#[derive(Default, Clone)]
struct SlotState {
    /// `pg_replication_slots.wal_status` (reserved, extended, unreserved, lost).
    wal_status: Option<String>,
    retained_bytes: Option<i64>,
    lag_bytes: Option<i64>,
    /// Why the last probe failed.
    error: Option<String>,
}

struct Shared {
    stall_after: Duration,
    warn_retained_wal: u64,
    max_retained_wal: Option<u64>,
    slot: Mutex<SlotState>,
    /// Dead letters and outbox batches per sink, as the probe last counted them; None before
    /// the first count, and always without `[admin]` (nobody would read it).
    backlog: Mutex<Option<Backlog>>,
}

/// The running server and its tasks; dropping it stops them.
pub struct Admin {
    tasks: Vec<JoinHandle<()>>,
    /// Where the server listens (None without `[admin]`).
    pub addr: Option<SocketAddr>,
}

impl Drop for Admin {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts the watcher and the slot probe (which warns about retained WAL with or without a
/// server) and, with `[admin]`, binds `listen` and serves; fails when it cannot be bound.
pub async fn start(admin: Option<&AdminConfig>, source: &SourceConfig) -> anyhow::Result<Admin> {
    let shared = Arc::new(Shared {
        stall_after: admin.map_or(Duration::from_secs(300), |a| a.stall_after),
        warn_retained_wal: source.warn_retained_wal,
        max_retained_wal: source.max_retained_wal,
        slot: Mutex::new(SlotState::default()),
        backlog: Mutex::new(None),
    });
    let mut tasks = vec![
        tokio::spawn(watch(shared.clone())),
        tokio::spawn(probe(
            shared.clone(),
            source.url.clone(),
            source.slot.clone(),
            admin.is_some(),
        )),
    ];
    let mut addr = None;
    if let Some(admin) = admin {
        let listener = tokio::net::TcpListener::bind(admin.listen).await.with_context(|| {
            format!(
                "cannot listen on {} for the admin server ([admin] listen): is another process using it? Pick a free port",
                admin.listen
            )
        })?;
        let local = listener.local_addr()?;
        let app = axum::Router::new()
            .route("/health", get(health))
            .route("/ready", get(ready))
            .route("/metrics", get(metrics_text))
            .route("/events", get(crate::sinks::stream::http::events))
            .with_state(shared);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("the admin server stopped: {e}");
            }
        }));
        tracing::info!("admin server on http://{local} (/health, /ready, /metrics, /events)");
        addr = Some(local);
    }
    Ok(Admin { tasks, addr })
}

async fn health() -> &'static str {
    "ok\n"
}

async fn metrics_text() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        metrics::global().encode(),
    )
}

/// `/ready`'s body.
#[derive(Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub source: SourceReadiness,
    pub sinks: Vec<SinkReadiness>,
    /// Why it is not ready, one line each.
    pub problems: Vec<String>,
}

#[derive(Serialize)]
pub struct SourceReadiness {
    /// "streaming", "standby" (the slot is active for another reader) or "connecting".
    pub status: &'static str,
    pub received_lsn: String,
    pub confirmed_lsn: String,
    pub slot_wal_status: Option<String>,
    /// Why the last reading of the slot failed (the slot figures are then from an earlier one).
    pub slot_error: Option<String>,
    pub retained_wal_bytes: Option<i64>,
    pub lag_bytes: Option<i64>,
    pub lag_seconds: f64,
    pub reconnects: u64,
}

#[derive(Serialize)]
pub struct SinkReadiness {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// "ok", "retrying" (failing now; what it received is not acknowledged or not all
    /// delivered), "stalled" (changes wait and nothing was acknowledged or delivered for
    /// `stall_after`) or
    /// "disabled" (it delivers nothing until cdc restarts: a webhook endpoint answered 410 Gone).
    pub status: &'static str,
    pub acknowledged_lsn: String,
    /// Seconds since the sink last acknowledged or delivered anything while changes wait (0 when caught up).
    pub pending_seconds: f64,
    /// For "disabled": why, and what to do; otherwise the error of a failing or stalled sink.
    pub error: Option<String>,
    /// Rows of `cdc.dead_letters` (None until the probe first counted them).
    pub dead_letters: Option<i64>,
    /// Webhook sinks: batches waiting in the outbox (None for other sinks, and before the first count).
    pub outbox_batches: Option<i64>,
}

async fn ready(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let readiness = readiness(&shared);
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(readiness))
}

fn readiness(shared: &Shared) -> Readiness {
    let m = metrics::global();
    let slot = shared.slot.lock().expect("slot lock").clone();
    let mut problems = Vec::new();
    let streaming = m.source.connected.get() == 1;
    let standby = !streaming && m.source.standby.get() == 1;
    if standby {
        problems.push(
            "source: standby: the slot is active for another reader (another cdc run); this one takes over when it is released"
                .to_string(),
        );
    } else if !streaming {
        problems.push("source: not streaming (connecting to Postgres, or retrying: see the log)".to_string());
    }
    if slot.wal_status.as_deref() == Some("lost") {
        problems.push(
            "source: Postgres invalidated the slot (wal_status lost): run `cdc setup --recreate-slot`, then `cdc rebuild-index --all`"
                .to_string(),
        );
    }
    if let (Some(max), Some(retained)) = (shared.max_retained_wal, slot.retained_bytes) {
        if retained as u64 > max {
            problems.push(format!(
                "source: the slot holds {} of WAL, more than max_retained_wal ({}): a sink is behind; fix it or the disk fills",
                format_bytes(retained as u64),
                format_bytes(max)
            ));
        }
    }
    let received = m.source.received_lsn.get() as u64;
    let backlog = shared.backlog.lock().expect("backlog lock").clone();
    let sinks = m
        .sinks()
        .into_iter()
        .map(|s| {
            let (pending, stalled) = follow(&s, received, Instant::now(), shared.stall_after);
            let failing = s.failing_with();
            let disabled = s.disabled();
            let status = if disabled.is_some() {
                "disabled"
            } else if stalled {
                "stalled"
            } else if failing.is_some() {
                "retrying"
            } else {
                "ok"
            };
            let error = disabled
                .clone()
                .or(failing)
                .or_else(|| stalled.then(|| s.last_error().map(|(e, _)| e)).flatten());
            if let Some(reason) = &disabled {
                problems.push(format!("sink {}: disabled: {reason}", s.name));
            } else if stalled {
                problems.push(format!(
                    "sink {}: stalled: changes wait and nothing was acknowledged or delivered for {:.0}s (stall_after {:?}); {}",
                    s.name,
                    pending,
                    shared.stall_after,
                    match &error {
                        Some(e) => format!("last error: {e}"),
                        None => "no error was reported: the sink is slow or stuck".to_string(),
                    }
                ));
            }
            let count = |of: fn(&Backlog) -> &std::collections::HashMap<String, i64>| {
                backlog.as_ref().map(|b| of(b).get(&s.name).copied().unwrap_or(0))
            };
            SinkReadiness {
                name: s.name.clone(),
                kind: s.kind,
                status,
                acknowledged_lsn: Lsn(s.acknowledged()).to_string(),
                pending_seconds: pending,
                error,
                dead_letters: count(|b| &b.dead_letters),
                outbox_batches: if s.kind == "webhook" {
                    count(|b| &b.outbox_batches)
                } else {
                    None
                },
            }
        })
        .collect();
    Readiness {
        ready: problems.is_empty(),
        source: SourceReadiness {
            status: if streaming {
                "streaming"
            } else if standby {
                "standby"
            } else {
                "connecting"
            },
            received_lsn: Lsn(received).to_string(),
            confirmed_lsn: Lsn(m.source.confirmed_lsn.get() as u64).to_string(),
            slot_wal_status: slot.wal_status,
            slot_error: slot.error,
            retained_wal_bytes: slot.retained_bytes,
            lag_bytes: slot.lag_bytes,
            lag_seconds: m.source.lag_seconds.get(),
            reconnects: m.source.reconnects.get(),
        },
        sinks,
        problems,
    }
}

/// Where sink `s` stands against the changes `received` (and those of a transaction still
/// being handed to it): seconds since it last acknowledged or delivered anything while changes
/// wait (0 when caught up), and whether that makes it stalled. Both the watcher and `/ready`
/// look; whichever sees a stall start counts it, once.
fn follow(s: &metrics::SinkStats, received: u64, now: Instant, stall_after: Duration) -> (f64, bool) {
    let acknowledged = s.acknowledged();
    let waiting_until = received.max(s.handed_until());
    let events = s.events.get();
    let mut progress = s.progress.lock().expect("progress lock");
    if acknowledged != progress.position || events != progress.events || acknowledged >= waiting_until {
        progress.position = acknowledged;
        progress.events = events;
        progress.at = now;
    }
    let pending = if acknowledged >= waiting_until {
        0.0
    } else {
        now.duration_since(progress.at).as_secs_f64()
    };
    let stalled = pending >= stall_after.as_secs_f64();
    if stalled && !progress.stalled {
        s.stalls.inc();
        tracing::warn!(
            sink = %s.name,
            "stalled: changes wait and nothing was acknowledged or delivered for {stall_after:?}{}",
            s.failing_with().map_or(String::new(), |e| format!("; failing with: {e}"))
        );
    }
    progress.stalled = stalled;
    (pending, stalled)
}

/// Follows every sink's acknowledged position (so a stall is measured from the last movement,
/// and counted, without anyone scraping) and keeps the pending-seconds gauges current.
async fn watch(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    loop {
        tick.tick().await;
        let m = metrics::global();
        m.refresh_lag(m.source.confirmed_lsn.get() as u64);
        let received = m.source.received_lsn.get() as u64;
        let now = Instant::now();
        for s in m.sinks() {
            let (pending, _) = follow(&s, received, now, shared.stall_after);
            s.set_pending_seconds(pending);
        }
    }
}

/// Reads the slot every [`PROBE_INTERVAL`] on its own connection (reconnecting when it breaks),
/// sets the WAL gauges and warns when the slot holds more WAL than `warn_retained_wal`; with
/// `backlog`, counts the dead letters and outbox batches per sink too.
///
/// The outbox depth is counted in its table rather than tracked in memory: rows come from the
/// sink, from `cdc dead-letters replay` (another process) and from earlier runs, so only the
/// table is right. Counting (on the `(sink, id)` indexes) costs Postgres a moment every 5 s on
/// this connection, never the stream.
async fn probe(shared: Arc<Shared>, url: String, slot: String, backlog: bool) {
    let mut client = None;
    let mut warned = false;
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    loop {
        tick.tick().await;
        if client.as_ref().is_none_or(|c: &tokio_postgres::Client| c.is_closed()) {
            client = crate::source::connection::catalog(&url).await.ok();
        }
        let Some(c) = &client else {
            failed(&shared, &slot, "cannot connect to Postgres".to_string());
            continue;
        };
        match read_slot(c, &slot).await {
            Ok(state) => {
                if shared.slot.lock().expect("slot lock").error.is_some() {
                    tracing::info!(slot, "reading the slot's figures works again");
                }
                let m = metrics::global();
                if let Some(retained) = state.retained_bytes {
                    m.source.retained_wal_bytes.set(retained);
                    let over = retained as u64 > shared.warn_retained_wal;
                    if over && !warned {
                        tracing::warn!(
                            slot,
                            "the slot holds {} of WAL, more than warn_retained_wal ({}): a sink is behind or cdc confirms nothing; Postgres keeps this WAL on disk until cdc confirms it",
                            format_bytes(retained as u64),
                            format_bytes(shared.warn_retained_wal)
                        );
                    } else if !over && warned {
                        tracing::info!(slot, "the slot holds {} of WAL again", format_bytes(retained as u64));
                    }
                    warned = over;
                }
                if let Some(lag) = state.lag_bytes {
                    m.source.lag_bytes.set(lag);
                }
                *shared.slot.lock().expect("slot lock") = state;
                if backlog {
                    match Backlog::read(c).await {
                        Ok(b) => {
                            m.set_outbox_batches(&b.outbox_batches);
                            *shared.backlog.lock().expect("backlog lock") = Some(b);
                        }
                        Err(e) => tracing::debug!("counting dead letters and outbox batches: {e}"),
                    }
                }
            }
            Err(e) => failed(&shared, &slot, format!("reading the slot: {e:#}")),
        }
    }
}

/// Records why the probe could not read the slot (shown by `/ready` as `source.slot_error`) and
/// logs it when it is new: the retained-WAL warning and limit depend on these readings.
fn failed(shared: &Shared, slot: &str, error: String) {
    let mut state = shared.slot.lock().expect("slot lock");
    if state.error.as_ref() != Some(&error) {
        tracing::warn!(
            slot,
            "cannot read the slot's figures (retained WAL, lag) from Postgres: {error}; retrying every {}s",
            PROBE_INTERVAL.as_secs()
        );
    }
    state.error = Some(error);
}

async fn read_slot(client: &tokio_postgres::Client, slot: &str) -> anyhow::Result<SlotState> {
    let row = client
        .query_opt(
            "SELECT wal_status, \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    let row = row.ok_or_else(|| anyhow::anyhow!("the slot {slot} does not exist"))?;
    Ok(SlotState {
        wal_status: row.get(0),
        retained_bytes: row.get(1),
        lag_bytes: row.get(2),
        error: None,
    })
}

/// Bytes for people: "1.5 GB" (powers of 1024, as Postgres's pg_size_pretty).
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Parses "5GB", "512MB", "100kB", "1TB", "1048576" (bytes), units in powers of 1024 as
/// Postgres's own size settings (max_slot_wal_keep_size) read them; case-insensitive.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size; write it like \"5GB\", \"512MB\" or \"100kB\""))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" | "bytes" => 1,
        "kb" | "k" => 1 << 10,
        "mb" | "m" => 1 << 20,
        "gb" | "g" => 1 << 30,
        "tb" | "t" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?}; use B, kB, MB, GB or TB (like \"5GB\")"
            ))
        }
    };
    Ok((number * factor as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_postgres_reads_them() {
        assert_eq!(parse_bytes("5GB"), Ok(5 << 30));
        assert_eq!(parse_bytes("512MB"), Ok(512 << 20));
        assert_eq!(parse_bytes("100kB"), Ok(100 << 10));
        assert_eq!(parse_bytes("1.5gb"), Ok(3 << 29));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("5 parsecs").unwrap_err().contains("unknown size unit"));
        assert!(parse_bytes("GB").is_err());
        assert_eq!(format_bytes(3 << 29), "1.5 GB");
        assert_eq!(format_bytes(12), "12 bytes");
    }
}
