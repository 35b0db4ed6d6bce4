//! Configuration: the TOML schema, loading with `file:line` errors, `${ENV}` interpolation and
//! the filter expression.
//!
//! The types here are what the rest of cdc reads; `load` turns a file into them or into a
//! [`ConfigError`] that names the file, line and key and says what was expected.

pub mod filter;
mod load;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use filter::Filter;
pub use load::{
    deserialize_duration, load, load_str, parse_duration, ConfigError, ConfigProblem, Problem, SinkSettings,
};

use crate::event::{Op, TableName};

#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (for messages).
    pub path: PathBuf,
    pub source: SourceConfig,
    /// Sinks by name, as `[sinks.<name>]`.
    pub sinks: BTreeMap<String, SinkConfig>,
    /// `[[tables]]`, in file order. One table may be mapped several times (e.g. different
    /// projections for different sinks).
    pub tables: Vec<TableMapping>,
    /// `[admin]`: the HTTP server of `cdc run` (health, readiness, metrics). None: no server.
    pub admin: Option<AdminConfig>,
    /// `[log] format = "json"`: one JSON object per log line (`--log-format` overrides it).
    pub log_json: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// Address the server listens on, like "127.0.0.1:9187".
    pub listen: std::net::SocketAddr,
    /// `/ready` fails for a sink that has changes waiting and acknowledged nothing for this
    /// long. Default 5m.
    pub stall_after: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    /// `postgres://user:password@host:port/dbname` (a libpq URL or key=value string).
    pub url: String,
    /// Replication slot name. Default "cdc".
    pub slot: String,
    /// Publication name. Default "cdc".
    pub publication: String,
    /// How often cdc reports its confirmed position to Postgres. Default 1s.
    pub status_interval: Duration,
    /// Log a warning when the slot holds more WAL than this (bytes). Default 5 GB.
    pub warn_retained_wal: u64,
    /// `/ready` fails while the slot holds more WAL than this (bytes). Default none.
    pub max_retained_wal: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SinkConfig {
    Stdout(StdoutConfig),
    Webhook(crate::sinks::webhook::WebhookConfig),
    Elasticsearch(crate::sinks::search::SearchConfig),
    Stream(crate::sinks::stream::StreamConfig),
}

impl SinkConfig {
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkConfig::Stdout(_) => "stdout",
            SinkConfig::Webhook(_) => "webhook",
            SinkConfig::Elasticsearch(_) => "elasticsearch",
            SinkConfig::Stream(_) => "stream",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {}

impl SinkSettings for StdoutConfig {}

#[derive(Debug, Clone, PartialEq)]
pub struct TableMapping {
    /// `schema.table`; unqualified means `public`.
    pub table: TableName,
    /// Names of `[sinks.*]` entries this table's events go to (at least one).
    pub sinks: Vec<String>,
    /// Projection: only these columns (in this order). None: all columns minus `exclude_columns`.
    pub columns: Option<Vec<String>>,
    pub exclude_columns: Vec<String>,
    /// Which ops are routed. Default: all four.
    pub ops: Vec<Op>,
    /// Key columns, for tables without a primary key. None: the primary key.
    pub key: Option<Vec<String>>,
    /// Only rows matching this expression are routed (see `filter`).
    pub filter: Option<Filter>,
    /// Search sinks: the index (an alias) to write to. Default: the table name.
    pub index: Option<String>,
    /// Search sinks: the columns that make the document id. Default: the key.
    pub id: Option<Vec<String>>,
    /// Search sinks: index settings and mappings file, applied when cdc creates the index.
    pub settings: Option<PathBuf>,
}

impl TableMapping {
    /// A mapping with defaults, as `[[tables]] table = "..." sinks = [...]` gives.
    pub fn new(table: TableName, sinks: Vec<String>) -> TableMapping {
        TableMapping {
            table,
            sinks,
            columns: None,
            exclude_columns: Vec::new(),
            ops: Op::ALL.to_vec(),
            key: None,
            filter: None,
            index: None,
            id: None,
            settings: None,
        }
    }

    /// Whether the projection keeps `column`.
    pub fn keeps(&self, column: &str) -> bool {
        match &self.columns {
            Some(cols) => cols.iter().any(|c| c == column),
            None => !self.exclude_columns.iter().any(|c| c == column),
        }
    }
}
