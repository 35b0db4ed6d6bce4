//! The figures `/metrics`, `/ready` and `cdc status` show: one process-wide registry of
//! Prometheus metrics (atomics from `prometheus-client`), bumped where the work happens.
//!
//! Process-wide because one process runs one `cdc run`: the router, the stream loop and the
//! sinks reach it through [`global`] instead of a handle threaded through every signature.
//! Each sink gets one [`SinkStats`] (created in `sinks::spawn_all`, found by name with
//! [`sink`]); both sinks bump the same fields at their send, acknowledgement, retry and
//! dead-letter points.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Instant, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::checkpoint::Ack;
use crate::event::{Op, TableName};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableOp {
    pub table: String,
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: String,
}

type HistogramFamily = Family<SinkLabel, Histogram, fn() -> Histogram>;

fn request_seconds() -> Histogram {
    // 5 ms … about 80 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

fn batch_events() -> Histogram {
    // 1 … 16384 events.
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

/// Source-level figures.
pub struct Source {
    pub events: Family<TableOp, Counter>,
    pub reconnects: Counter,
    /// 1 while a replication session streams.
    pub connected: Gauge,
    /// 1 while the slot is active for another reader and this process waits to take over.
    pub standby: Gauge,
    /// End LSN of the last transaction handed to the router.
    pub received_lsn: Gauge,
    /// The position cdc confirms to Postgres (the minimum over sinks).
    pub confirmed_lsn: Gauge,
    /// From the periodic catalog query (see `admin::probe`): the server's WAL end minus the
    /// slot's confirmed position, and minus its restart position (what Postgres keeps).
    pub lag_bytes: Gauge,
    pub retained_wal_bytes: Gauge,
    pub lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

/// The registry and every metric in it.
pub struct Metrics {
    registry: Registry,
    pub source: Source,
    sink_events: Family<SinkLabel, Counter>,
    sink_acknowledged: Family<SinkLabel, Gauge>,
    sink_retries: Family<SinkLabel, Counter>,
    sink_dead_letters: Family<SinkLabel, Counter>,
    sink_in_flight: Family<SinkLabel, Gauge>,
    sink_pending_seconds: Family<SinkLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    sink_stalls: Family<SinkLabel, Counter>,
    sink_disabled: Family<SinkLabel, Gauge>,
    /// Set by the admin probe from `cdc.webhook_outbox` (see `admin::probe`).
    webhook_outbox_batches: Family<SinkLabel, Gauge>,
    sink_request_seconds: HistogramFamily,
    sink_batch_events: HistogramFamily,
    stream_clients: Family<SinkLabel, Gauge>,
    stream_sent: Family<SinkLabel, Counter>,
    stream_lagged: Family<SinkLabel, Counter>,
    sinks: RwLock<HashMap<String, Arc<SinkStats>>>,
    /// (commit LSN + 1, commit time in Unix µs) of transactions begun and not yet confirmed,
    /// oldest first: the lag in seconds is the age of the oldest. From the Begin, not the Commit:
    /// a transaction larger than a sink's channel waits mid-stream for a stuck sink, and its
    /// Commit is not read until the sink takes its events.
    unconfirmed: Mutex<VecDeque<(u64, i64)>>,
}

/// Beyond this many unconfirmed transactions the newest are not remembered: the oldest stays at
/// the front, so the lag stays right until that many are confirmed at once.
const UNCONFIRMED_KEPT: usize = 65536;

/// One sink's figures and state. Counters are handles into the registry's families.
pub struct SinkStats {
    pub name: String,
    pub kind: &'static str,
    ack: Mutex<Option<Ack>>,
    /// Events settled: delivered, already newer in the index, or durably handed off (outbox,
    /// dead letters).
    pub events: Counter,
    /// Failed attempts that will be tried again.
    pub retries: Counter,
    /// Events stored as dead letters.
    pub dead_letters: Counter,
    pub in_flight: Gauge,
    pub request_seconds: Histogram,
    pub batch_events: Histogram,
    acknowledged: Gauge,
    pending_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Commit LSN + 1 of the last transaction the router handed an event of to this sink: above
    /// the acknowledged position, changes wait for the sink, also before their Commit was read.
    handed: AtomicU64,
    /// Times the sink entered the stalled state (counted by `admin` where it tells a stall).
    pub stalls: Counter,
    disabled_gauge: Gauge,
    /// Why the sink stopped delivering until cdc restarts (a webhook endpoint that answered 410
    /// Gone); None while it delivers.
    disabled: Mutex<Option<String>>,
    /// While the sink is retrying: the error (secrets are never in it: sinks name the URL
    /// without credentials). None when its last attempt succeeded.
    failing: Mutex<Option<String>>,
    /// The last error seen, with when, kept after recovery (for `/ready` and `cdc status`).
    last_error: Mutex<Option<(String, SystemTime)>>,
    /// When the acknowledged position last moved or the sink last had nothing pending.
    pub(crate) progress: Mutex<Progress>,
}

/// A stream sink's figures about its HTTP clients.
#[derive(Clone)]
pub struct StreamStats {
    pub clients: Gauge,
    pub sent: Counter,
    pub lagged: Counter,
}

pub(crate) struct Progress {
    pub position: u64,
    /// `events` when last looked at: a sink delivering a large transaction is not stalled,
    /// although it can acknowledge nothing before the transaction's end.
    pub events: u64,
    pub at: Instant,
    /// Whether the last look found the sink stalled (so a stall is counted once, when it starts).
    pub stalled: bool,
}

impl SinkStats {
    /// A retry is coming: the sink is failing with `error`.
    pub fn failing(&self, error: &str) {
        self.retries.inc();
        *self.failing.lock().expect("sink stats lock") = Some(error.to_string());
        *self.last_error.lock().expect("sink stats lock") = Some((error.to_string(), SystemTime::now()));
    }

    /// An attempt succeeded: the sink is no longer failing.
    pub fn healthy(&self) {
        self.failing.lock().expect("sink stats lock").take();
    }

    /// The router hands the sink an event of the transaction committing at `commit_lsn`.
    pub fn handed(&self, commit_lsn: u64) {
        self.handed.store(commit_lsn + 1, Ordering::Relaxed);
    }

    /// See [`Self::handed`]: changes wait for the sink while its acknowledged position is below.
    pub fn handed_until(&self) -> u64 {
        self.handed.load(Ordering::Relaxed)
    }

    /// The sink stopped delivering for good (until cdc restarts): `reason` says why and what to do.
    pub fn disable(&self, reason: &str) {
        *self.disabled.lock().expect("sink stats lock") = Some(reason.to_string());
        self.disabled_gauge.set(1);
    }

    pub fn disabled(&self) -> Option<String> {
        self.disabled.lock().expect("sink stats lock").clone()
    }

    pub fn failing_with(&self) -> Option<String> {
        self.failing.lock().expect("sink stats lock").clone()
    }

    pub fn last_error(&self) -> Option<(String, SystemTime)> {
        self.last_error.lock().expect("sink stats lock").clone()
    }

    /// The end LSN up to which the sink acknowledged everything.
    pub fn acknowledged(&self) -> u64 {
        self.ack
            .lock()
            .expect("sink stats lock")
            .as_ref()
            .map_or(0, |a| a.position().0)
    }

    pub(crate) fn set_pending_seconds(&self, seconds: f64) {
        self.pending_seconds.set(seconds);
    }
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let source = Source {
            events: Family::default(),
            reconnects: Counter::default(),
            connected: Gauge::default(),
            standby: Gauge::default(),
            received_lsn: Gauge::default(),
            confirmed_lsn: Gauge::default(),
            lag_bytes: Gauge::default(),
            retained_wal_bytes: Gauge::default(),
            lag_seconds: Gauge::default(),
        };
        registry.register(
            "cdc_source_events",
            "Row changes the router received, by table and operation",
            source.events.clone(),
        );
        registry.register(
            "cdc_source_reconnects",
            "Replication sessions that failed and were retried",
            source.reconnects.clone(),
        );
        registry.register(
            "cdc_source_connected",
            "1 while a replication session streams",
            source.connected.clone(),
        );
        registry.register(
            "cdc_source_standby",
            "1 while the slot is active for another reader (another cdc) and this one waits to take over",
            source.standby.clone(),
        );
        registry.register(
            "cdc_source_received_lsn",
            "End LSN of the last transaction handed to the sinks",
            source.received_lsn.clone(),
        );
        registry.register(
            "cdc_source_confirmed_lsn",
            "The position cdc confirms to Postgres: what every sink acknowledged",
            source.confirmed_lsn.clone(),
        );
        registry.register(
            "cdc_source_lag_bytes",
            "The server's current WAL position minus the slot's confirmed position",
            source.lag_bytes.clone(),
        );
        registry.register(
            "cdc_source_retained_wal_bytes",
            "WAL the slot holds on the server (current position minus the slot's restart position)",
            source.retained_wal_bytes.clone(),
        );
        registry.register(
            "cdc_source_lag_seconds",
            "The longest time any sink has had received changes not yet acknowledged (0 when caught up)",
            source.lag_seconds.clone(),
        );
        let metrics = Metrics {
            source,
            sink_events: Family::default(),
            sink_acknowledged: Family::default(),
            sink_retries: Family::default(),
            sink_dead_letters: Family::default(),
            sink_in_flight: Family::default(),
            sink_pending_seconds: Family::default(),
            sink_stalls: Family::default(),
            sink_disabled: Family::default(),
            webhook_outbox_batches: Family::default(),
            sink_request_seconds: Family::new_with_constructor(request_seconds),
            sink_batch_events: Family::new_with_constructor(batch_events),
            stream_clients: Family::default(),
            stream_sent: Family::default(),
            stream_lagged: Family::default(),
            sinks: RwLock::new(HashMap::new()),
            unconfirmed: Mutex::new(VecDeque::new()),
            registry: Registry::default(),
        };
        registry.register(
            "cdc_sink_events",
            "Events a sink settled: delivered, already newer, or durably handed off (outbox, dead letters)",
            metrics.sink_events.clone(),
        );
        registry.register(
            "cdc_sink_acknowledged_lsn",
            "End LSN up to which a sink acknowledged every transaction",
            metrics.sink_acknowledged.clone(),
        );
        registry.register(
            "cdc_sink_retries",
            "Failed attempts a sink will try again",
            metrics.sink_retries.clone(),
        );
        registry.register(
            "cdc_sink_dead_letters",
            "Events a sink stored as dead letters",
            metrics.sink_dead_letters.clone(),
        );
        registry.register(
            "cdc_sink_requests_in_flight",
            "Requests a sink has in flight",
            metrics.sink_in_flight.clone(),
        );
        registry.register(
            "cdc_sink_pending_seconds",
            "Seconds since a sink last acknowledged or delivered anything while changes wait for it (0 when caught up)",
            metrics.sink_pending_seconds.clone(),
        );
        registry.register(
            "cdc_sink_stalls",
            "Times a sink entered the stalled state: changes waiting and nothing acknowledged or delivered for stall_after",
            metrics.sink_stalls.clone(),
        );
        registry.register(
            "cdc_sink_disabled",
            "1 when a sink stopped delivering until cdc restarts (a webhook endpoint that answered 410 Gone)",
            metrics.sink_disabled.clone(),
        );
        registry.register(
            "cdc_webhook_outbox_batches",
            "Batches waiting in a webhook sink's outbox (cdc.webhook_outbox, read every 5 s)",
            metrics.webhook_outbox_batches.clone(),
        );
        registry.register(
            "cdc_sink_request_duration_seconds",
            "Duration of one request to a sink's server",
            metrics.sink_request_seconds.clone(),
        );
        registry.register(
            "cdc_sink_batch_events",
            "Events (documents) per request",
            metrics.sink_batch_events.clone(),
        );
        registry.register(
            "cdc_stream_clients_connected",
            "Clients reading a stream sink's /events now",
            metrics.stream_clients.clone(),
        );
        registry.register(
            "cdc_stream_events_sent",
            "Events a stream sink sent, summed over its clients",
            metrics.stream_sent.clone(),
        );
        registry.register(
            "cdc_stream_clients_lagged",
            "Clients a stream sink dropped because they fell further behind than its buffer",
            metrics.stream_lagged.clone(),
        );
        Metrics { registry, ..metrics }
    }

    /// A stream sink's client figures (see `sinks::stream`); the clients gauge starts at 0.
    pub fn stream_stats(&self, sink: &str) -> StreamStats {
        let label = SinkLabel { sink: sink.to_string() };
        let stats = StreamStats {
            clients: self.stream_clients.get_or_create(&label).clone(),
            sent: self.stream_sent.get_or_create(&label).clone(),
            lagged: self.stream_lagged.get_or_create(&label).clone(),
        };
        stats.clients.set(0);
        stats
    }

    /// Creates (or, for a second run in one process, resets the acknowledgement of) a sink's stats.
    pub fn register_sink(&self, name: &str, kind: &'static str, ack: Ack) -> Arc<SinkStats> {
        let mut sinks = self.sinks.write().expect("sinks lock");
        let label = SinkLabel { sink: name.to_string() };
        let stats = sinks.entry(name.to_string()).or_insert_with(|| {
            Arc::new(SinkStats {
                name: name.to_string(),
                kind,
                ack: Mutex::new(None),
                events: self.sink_events.get_or_create(&label).clone(),
                retries: self.sink_retries.get_or_create(&label).clone(),
                dead_letters: self.sink_dead_letters.get_or_create(&label).clone(),
                in_flight: self.sink_in_flight.get_or_create(&label).clone(),
                request_seconds: self.sink_request_seconds.get_or_create(&label).clone(),
                batch_events: self.sink_batch_events.get_or_create(&label).clone(),
                acknowledged: self.sink_acknowledged.get_or_create(&label).clone(),
                pending_seconds: self.sink_pending_seconds.get_or_create(&label).clone(),
                handed: AtomicU64::new(0),
                stalls: self.sink_stalls.get_or_create(&label).clone(),
                disabled_gauge: self.sink_disabled.get_or_create(&label).clone(),
                disabled: Mutex::new(None),
                failing: Mutex::new(None),
                last_error: Mutex::new(None),
                progress: Mutex::new(Progress {
                    position: 0,
                    events: 0,
                    at: Instant::now(),
                    stalled: false,
                }),
            })
        });
        *stats.ack.lock().expect("sink stats lock") = Some(ack);
        stats.clone()
    }

    /// The stream read the Begin of the transaction committing at `commit_lsn`, at
    /// `committed_at_us` (Unix µs): it counts in the lag until a confirmed position passes it.
    pub fn began(&self, commit_lsn: u64, committed_at_us: i64) {
        let mut unconfirmed = self.unconfirmed.lock().expect("unconfirmed lock");
        if unconfirmed.len() < UNCONFIRMED_KEPT {
            unconfirmed.push_back((commit_lsn + 1, committed_at_us));
        }
    }

    /// The stream handed the transaction ending at `end_lsn` (its Commit) to the sinks.
    pub fn received(&self, end_lsn: u64) {
        self.source.received_lsn.set(end_lsn as i64);
    }

    /// The confirmed position moved to `lsn`: sets the gauge and the lag in seconds (the age of
    /// the oldest transaction received and not yet confirmed; 0 when none waits).
    pub fn confirmed(&self, lsn: u64) {
        self.source.confirmed_lsn.set(lsn as i64);
        self.refresh_lag(lsn);
    }

    /// The lag in seconds against the confirmed position `lsn`; also called by the admin
    /// watcher, so the lag keeps growing while the stream is down and cannot call [`Self::confirmed`].
    pub fn refresh_lag(&self, lsn: u64) {
        let mut unconfirmed = self.unconfirmed.lock().expect("unconfirmed lock");
        while unconfirmed.front().is_some_and(|(end, _)| *end <= lsn) {
            unconfirmed.pop_front();
        }
        let lag = unconfirmed.front().map_or(0.0, |(_, committed_at_us)| {
            let now = chrono::Utc::now().timestamp_micros();
            (now - committed_at_us).max(0) as f64 / 1e6
        });
        self.source.lag_seconds.set(lag);
    }

    /// The outbox depth of each webhook sink, as the admin probe last counted it.
    pub fn set_outbox_batches(&self, outbox: &HashMap<String, i64>) {
        for s in self.sinks().iter().filter(|s| s.kind == "webhook") {
            let label = SinkLabel { sink: s.name.clone() };
            let batches = outbox.get(&s.name).copied().unwrap_or(0);
            self.webhook_outbox_batches.get_or_create(&label).set(batches);
        }
    }

    /// Every sink's stats, by name.
    pub fn sinks(&self) -> Vec<Arc<SinkStats>> {
        let mut all: Vec<_> = self.sinks.read().expect("sinks lock").values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The per-operation counters of a table, looked up once (the router keeps them).
    pub fn table_counters(&self, table: &TableName) -> [Counter; 4] {
        Op::ALL.map(|op| {
            self.source
                .events
                .get_or_create(&TableOp {
                    table: table.to_string(),
                    op: op.as_str().to_string(),
                })
                .clone()
        })
    }

    /// The text exposition format, with the acknowledged positions read now.
    pub fn encode(&self) -> String {
        for s in self.sinks() {
            s.acknowledged.set(s.acknowledged() as i64);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// The stats of the sink named `name`, registered by `sinks::spawn_all`; a detached set when
/// none is (a sink run outside `cdc run`, as in unit tests).
pub fn sink(name: &str) -> Arc<SinkStats> {
    if let Some(stats) = global().sinks.read().expect("sinks lock").get(name) {
        return stats.clone();
    }
    global().register_sink(name, "unknown", Ack::detached())
}

/// Index of `op` in [`Op::ALL`] (for the router's counters).
pub fn op_index(op: Op) -> usize {
    Op::ALL.iter().position(|o| *o == op).expect("every op is in Op::ALL")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_parses_and_names_every_family() {
        let m = global();
        let stats = m.register_sink("unit_test_sink", "stdout", Ack::detached());
        stats.events.inc_by(3);
        stats.failing("cannot reach http://127.0.0.1:1");
        stats.stalls.inc();
        stats.disable("answered 410 Gone");
        let hook = m.register_sink("unit_test_hook", "webhook", Ack::detached());
        m.set_outbox_batches(&HashMap::from([("unit_test_hook".to_string(), 7)]));
        m.table_counters(&TableName {
            schema: "public".into(),
            name: "t".into(),
        })[0]
            .inc();
        let text = m.encode();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition");
        let value_of = |name: &str, sink: &str| {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name && s.labels.get("sink") == Some(sink))
                .and_then(|s| match s.value {
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v) => Some(v),
                    _ => None,
                })
        };
        let value = |name: &str| value_of(name, "unit_test_sink");
        assert_eq!(value("cdc_sink_events_total"), Some(3.0), "{text}");
        assert_eq!(value("cdc_sink_stalls_total"), Some(1.0), "{text}");
        assert_eq!(value("cdc_sink_disabled"), Some(1.0), "{text}");
        assert_eq!(stats.disabled().as_deref(), Some("answered 410 Gone"));
        assert_eq!(
            value_of("cdc_webhook_outbox_batches", "unit_test_hook"),
            Some(7.0),
            "{text}"
        );
        assert_eq!(value_of("cdc_sink_disabled", &hook.name), Some(0.0), "{text}");
        assert_eq!(
            value("cdc_webhook_outbox_batches"),
            None,
            "only webhook sinks have an outbox: {text}"
        );
        assert_eq!(value("cdc_sink_retries_total"), Some(1.0), "{text}");
        assert_eq!(value("cdc_sink_acknowledged_lsn"), Some(0.0), "{text}");
        assert_eq!(stats.failing_with().as_deref(), Some("cannot reach http://127.0.0.1:1"));
        stats.healthy();
        assert_eq!(stats.failing_with(), None);
        assert!(stats.last_error().is_some(), "the last error is kept after recovery");
    }
}
