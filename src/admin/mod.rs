//! The admin server `cdc run` starts when `[admin] listen` is set: `/health` (the process
//! answers), `/ready` (streaming, no sink stalled, retained WAL under `max_retained_wal`),
//! `/metrics` (Prometheus text format, see `metrics`), and `/events`, the stream sinks' clients
//! (see `sinks::stream::http`).
//!
//! Two background tasks feed it: the watcher (every 500 ms) follows each sink's acknowledged
//! position to tell a stalled sink from a busy one, and the probe (every 5 s, its own small
//! catalog connection) reads the slot from `pg_replication_slots`: lag in bytes, WAL retained,
//! and whether Postgres invalidated it.

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
    });
    let mut tasks = vec![
        tokio::spawn(watch()),
        tokio::spawn(probe(shared.clone(), source.url.clone(), source.slot.clone())),
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
    /// delivered) or "stalled" (changes wait and nothing was acknowledged for `stall_after`).
    pub status: &'static str,
    pub acknowledged_lsn: String,
    /// Seconds since the acknowledged position last moved while changes wait (0 when caught up).
    pub pending_seconds: f64,
    pub error: Option<String>,
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
    let sinks = m
        .sinks()
        .into_iter()
        .map(|s| {
            let acknowledged = s.acknowledged();
            let pending = pending_seconds(&s, acknowledged, received, Instant::now());
            let failing = s.failing_with();
            let stalled = pending >= shared.stall_after.as_secs_f64();
            let status = if stalled {
                "stalled"
            } else if failing.is_some() {
                "retrying"
            } else {
                "ok"
            };
            let error = failing.or_else(|| stalled.then(|| s.last_error().map(|(e, _)| e)).flatten());
            if stalled {
                problems.push(format!(
                    "sink {}: stalled: changes wait and nothing was acknowledged for {:.0}s (stall_after {:?}); {}",
                    s.name,
                    pending,
                    shared.stall_after,
                    match &error {
                        Some(e) => format!("last error: {e}"),
                        None => "no error was reported: the sink is slow or stuck".to_string(),
                    }
                ));
            }
            SinkReadiness {
                name: s.name.clone(),
                kind: s.kind,
                status,
                acknowledged_lsn: Lsn(acknowledged).to_string(),
                pending_seconds: pending,
                error,
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
            retained_wal_bytes: slot.retained_bytes,
            lag_bytes: slot.lag_bytes,
            lag_seconds: m.source.lag_seconds.get(),
            reconnects: m.source.reconnects.get(),
        },
        sinks,
        problems,
    }
}

/// Seconds since the sink's acknowledged position last moved, while it is behind `received`.
fn pending_seconds(s: &metrics::SinkStats, acknowledged: u64, received: u64, now: Instant) -> f64 {
    let mut progress = s.progress.lock().expect("progress lock");
    if acknowledged != progress.position || acknowledged >= received {
        progress.position = acknowledged;
        progress.at = now;
    }
    if acknowledged >= received {
        0.0
    } else {
        now.duration_since(progress.at).as_secs_f64()
    }
}

/// Follows every sink's acknowledged position (so a stall is measured from the last movement,
/// not from the last scrape) and keeps the pending-seconds gauges current.
async fn watch() {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    loop {
        tick.tick().await;
        let m = metrics::global();
        m.refresh_lag(m.source.confirmed_lsn.get() as u64);
        let received = m.source.received_lsn.get() as u64;
        let now = Instant::now();
        for s in m.sinks() {
            let pending = pending_seconds(&s, s.acknowledged(), received, now);
            s.set_pending_seconds(pending);
        }
    }
}

/// Reads the slot every [`PROBE_INTERVAL`] on its own connection (reconnecting when it breaks),
/// sets the WAL gauges and warns when the slot holds more WAL than `warn_retained_wal`.
async fn probe(shared: Arc<Shared>, url: String, slot: String) {
    let mut client = None;
    let mut warned = false;
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    loop {
        tick.tick().await;
        if client.as_ref().is_none_or(|c: &tokio_postgres::Client| c.is_closed()) {
            client = crate::source::connection::catalog(&url).await.ok();
        }
        let Some(c) = &client else {
            shared.slot.lock().expect("slot lock").error = Some("cannot connect to Postgres".to_string());
            continue;
        };
        match read_slot(c, &slot).await {
            Ok(state) => {
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
            }
            Err(e) => {
                shared.slot.lock().expect("slot lock").error = Some(format!("reading the slot: {e}"));
            }
        }
    }
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
    Ok(match row {
        Some(row) => SlotState {
            wal_status: row.get(0),
            retained_bytes: row.get(1),
            lag_bytes: row.get(2),
            error: None,
        },
        None => SlotState {
            error: Some(format!("the slot {slot} does not exist")),
            ..SlotState::default()
        },
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
