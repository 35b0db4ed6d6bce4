//! Reading `cdc.toml` into a [`Config`], or into a [`ConfigError`] listing every problem found,
//! each as `file:line: key: message`.
//!
//! The file is parsed with `toml_edit`, which keeps every key's and value's position, so any
//! problem found later (a wrong type, an unknown sink, a bad filter) can still name its line.
//! `${VAR}` references are expanded in the parsed string values, never in the raw text, so a
//! value containing quotes cannot change the file's structure.
//!
//! # Keys
//!
//! ```toml
//! [source]
//! url = "postgres://cdc:${CDC_PG_PASSWORD}@127.0.0.1:5432/app"   # required; a libpq URL or key=value string
//! slot = "cdc"                # replication slot; lower case letters, digits and _; default "cdc"
//! publication = "cdc"         # publication; lower case letters, digits and _; default "cdc"
//! status_interval = "1s"      # how often the confirmed position is reported; default "1s"
//! warn_retained_wal = "5GB"   # warn when the slot holds more WAL than this; default "5GB"
//! max_retained_wal = "20GB"   # /ready fails while the slot holds more; default none
//!
//! [admin]                     # optional: cdc run's HTTP server
//! listen = "127.0.0.1:9187"   # required in [admin]; serves /health, /ready, /metrics
//! stall_after = "5m"          # /ready fails for a sink with changes waiting and nothing acked or delivered for this long
//!
//! [log]                       # optional
//! format = "json"             # "text" (default) or "json"; --log-format overrides it
//!
//! [sinks.<name>]              # at least one; every sink must be used by some [[tables]] entry
//! type = "stdout"             # the sink kind; the kind's own keys follow (stdout has none)
//!
//! [[tables]]                  # at least one; a table may be listed several times
//! table = "public.items"      # required; "schema.table", or "table" meaning public.table
//! sinks = ["out"]             # required; names of [sinks.<name>] entries
//! columns = ["id", "title"]   # optional: keep only these columns...
//! exclude_columns = ["body"]  # ...or keep all but these (not both)
//! ops = ["create", "update"]  # optional; any of create, update, delete, truncate; default all four
//! key = ["id"]                # optional; key columns for a table without a primary key
//! filter = { state = "published", deleted_at = "null" }   # optional; see `config::filter`
//! index = "items"             # optional, search sinks: the index (alias); default the table name
//! id = ["id"]                 # optional, search sinks: document id columns; default the key
//! settings = "search/items.json"  # optional, search sinks: relative to this file's folder
//! ```
//!
//! Durations are strings of a number and a unit: `"500ms"`, `"10s"`, `"2m"`, `"1h"`, `"1d"`, or
//! several of them together, `"1m30s"`.
//!
//! In any string value, `${VAR}` is replaced by the environment variable `VAR` (an error when it
//! is not set) and `${VAR:-default}` by `VAR`, or `default` when `VAR` is unset or empty.
//! `$${` writes a literal `${`; any other `$` (`$$`, a lone `$`) is kept as it is.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use toml_edit::{Item, TableLike, Value as TomlValue};

use super::{AdminConfig, Config, Filter, SinkConfig, SourceConfig, TableMapping};
use crate::event::{Op, TableName};

/// Every sink kind: the `type` value that selects it and how its table becomes a
/// [`SinkConfig`]. Adding a kind is a `SinkConfig` variant plus one line here.
const SINK_KINDS: &[(&str, ParseSink)] = &[
    ("stdout", |sink| sink.settings().map(SinkConfig::Stdout)),
    ("webhook", |sink| sink.settings().map(SinkConfig::Webhook)),
    ("elasticsearch", |sink| sink.settings().map(SinkConfig::Elasticsearch)),
    ("stream", |sink| sink.settings().map(SinkConfig::Stream)),
];

type ParseSink = fn(&mut SinkTable<'_, '_>) -> Option<SinkConfig>;

/// A sink kind's settings: its `[sinks.<name>]` table without `type`.
///
/// Implementors derive `serde::Deserialize` with `#[serde(deny_unknown_fields)]`, so a misspelt
/// key is reported (with a did-you-mean) instead of silently ignored; serde's type errors are
/// reported at the offending key's line. What types cannot say goes in `validate`.
pub trait SinkSettings: DeserializeOwned {
    /// Checks beyond the types. Each problem's key is relative to the sink's table
    /// (`"batch_size"`, `"auth.token"`); the loader adds `sinks.<name>.` and the line.
    /// `config_dir` is the config file's folder: relative paths in settings are meant from there.
    fn validate(&mut self, _config_dir: &Path) -> Vec<Problem> {
        Vec::new()
    }
}

/// A problem at a key path relative to the table being checked, before the loader places it in
/// the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `"batch_size"`, `"auth.token"`, `"columns[2]"`; empty for the checked table itself.
    pub key: String,
    /// What is wrong and what to do, e.g. "expected a positive integer, got -1".
    pub message: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Everything wrong with a config file. Displays one problem per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// In file order; at least one.
    pub problems: Vec<ConfigProblem>,
}

/// One problem, placed in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// 1-based; None when the problem has no place (a missing section, an unreadable file).
    pub line: Option<usize>,
    /// The full key path, like `sinks.search.batch_size` or `tables[0].sinks[1]`; empty for a
    /// problem with the file as a whole.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.path.display())?;
            if let Some(line) = p.line {
                write!(f, ":{line}")?;
            }
            if !p.key.is_empty() {
                write!(f, ": {}", p.key)?;
            }
            write!(f, ": {}", p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads and loads the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => load_str(&text, path),
        Err(e) => Err(ConfigError {
            path: path.to_path_buf(),
            problems: vec![ConfigProblem {
                line: None,
                key: String::new(),
                message: if e.kind() == std::io::ErrorKind::NotFound {
                    format!(
                        "cannot read the config file: {e}. Pass --config FILE (or set CDC_CONFIG), or write one: \
                         the repository's examples/ has a config for each sink to start from"
                    )
                } else {
                    format!("cannot read the config file: {e}")
                },
            }],
        }),
    }
}

/// Loads config text; `path` names the file in messages and anchors relative paths.
pub fn load_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
    load_with_env(text, path, &|name| std::env::var(name).ok())
}

fn load_with_env(text: &str, path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let doc = toml_edit::Document::parse(text).map_err(|e| {
        let near = e
            .span()
            .map(|s| &text[s])
            .filter(|s| !s.is_empty() && s.len() <= 40 && !s.contains('\n'));
        let message = match near {
            Some(near) => format!("{} at `{near}`", e.message()),
            None => e.message().to_string(),
        };
        ConfigError {
            path: path.to_path_buf(),
            problems: vec![ConfigProblem {
                line: e.span().map(|s| line_of(text, s.start)),
                key: String::new(),
                message,
            }],
        }
    })?;
    let mut root = Item::Table(doc.into_table());
    let mut loader = Loader {
        text,
        spans: Spans::build(&root),
        found: Vec::new(),
    };
    loader.interpolate(&mut root, "", env);
    let dir = path.parent().unwrap_or(Path::new(""));
    let config = loader.config(&root, path, dir);
    match config {
        Some(config) if loader.found.is_empty() => Ok(config),
        _ => Err(loader.into_error(path)),
    }
}

/// Parses a duration: a number and a unit (`ms`, `s`, `m`, `h`, `d`), possibly several, as in
/// `"1m30s"`, or `"0"`. The message says what is wrong, to be placed after the key. The one
/// duration parser of the program, by hand rather than `humantime` because its messages say
/// how to fix the value (`"5" has no unit; write "5s" ...`) and it takes exactly the forms the
/// README documents.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let expected = || format!("expected a duration like \"500ms\", \"10s\", \"2m\" or \"1h\", got {text:?}");
    if text.is_empty() {
        return Err(expected());
    }
    // Zero needs no unit (`batch_max_wait = "0"`: send at once); settings that must be
    // positive say so themselves.
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let units = rest[digits..].bytes().take_while(u8::is_ascii_alphabetic).count();
        if digits == 0 {
            return Err(expected());
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?} is too long a duration"))?;
        let unit = &rest[digits..digits + units];
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" if digits == text.len() => {
                return Err(format!(
                    "{text:?} has no unit; write \"{number}s\" for seconds or \"{number}ms\" for milliseconds"
                ))
            }
            "" => return Err(expected()),
            _ => return Err(format!("unknown unit {unit:?} in {text:?}; use ms, s, m, h or d")),
        };
        let millis = number
            .checked_mul(millis_per_unit)
            .ok_or_else(|| format!("{text:?} is too long a duration"))?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .ok_or_else(|| format!("{text:?} is too long a duration"))?;
        rest = &rest[digits + units..];
    }
    Ok(total)
}

/// For sink settings: `#[serde(deserialize_with = "crate::config::deserialize_duration")]` reads
/// a field the way [`parse_duration`] does.
pub fn deserialize_duration<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    struct DurationVisitor;
    impl serde::de::Visitor<'_> for DurationVisitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration like \"500ms\", \"10s\", \"2m\" or \"1h\"")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Duration, E> {
            parse_duration(s).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(DurationVisitor)
}

const TOP_KEYS: &[&str] = &["source", "sinks", "tables", "admin", "log"];
const SOURCE_KEYS: &[&str] = &[
    "url",
    "slot",
    "publication",
    "status_interval",
    "warn_retained_wal",
    "max_retained_wal",
];
const ADMIN_KEYS: &[&str] = &["listen", "stall_after"];
const LOG_KEYS: &[&str] = &["format"];
const TABLE_KEYS: &[&str] = &[
    "table",
    "sinks",
    "columns",
    "exclude_columns",
    "ops",
    "key",
    "filter",
    "index",
    "id",
    "settings",
];

/// Walks the document, collecting problems as it goes. A part with a problem yields None so the
/// walk goes on to find the rest; the config is only returned when nothing was found.
struct Loader<'a> {
    text: &'a str,
    spans: Spans,
    found: Vec<Found>,
}

struct Found {
    key: String,
    /// Byte offset, when a serde error gave one; otherwise the key's position is looked up.
    at: Option<usize>,
    message: String,
}

impl Loader<'_> {
    fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.found.push(Found {
            key: key.into(),
            at: None,
            message: message.into(),
        });
    }

    fn into_error(self, path: &Path) -> ConfigError {
        let mut problems: Vec<ConfigProblem> = self
            .found
            .into_iter()
            .map(|f| {
                let at = f.at.or_else(|| self.spans.offset(&f.key));
                ConfigProblem {
                    line: at.map(|at| line_of(self.text, at)),
                    key: f.key,
                    message: f.message,
                }
            })
            .collect();
        problems.sort_by_key(|p| p.line);
        ConfigError {
            path: path.to_path_buf(),
            problems,
        }
    }

    fn interpolate(&mut self, item: &mut Item, path: &str, env: &dyn Fn(&str) -> Option<String>) {
        match item {
            Item::Value(value) => self.interpolate_value(value, path, env),
            Item::Table(table) => {
                for (key, item) in table.iter_mut() {
                    let path = join(path, key.get());
                    self.interpolate(item, &path, env);
                }
            }
            Item::ArrayOfTables(tables) => {
                for (i, table) in tables.iter_mut().enumerate() {
                    for (key, item) in table.iter_mut() {
                        let path = join(&format!("{path}[{i}]"), key.get());
                        self.interpolate(item, &path, env);
                    }
                }
            }
            Item::None => {}
        }
    }

    fn interpolate_value(&mut self, value: &mut TomlValue, path: &str, env: &dyn Fn(&str) -> Option<String>) {
        match value {
            TomlValue::String(s) if s.value().contains("${") => match expand(s.value(), env) {
                Ok(expanded) => *value = TomlValue::from(expanded),
                Err(messages) => messages.into_iter().for_each(|m| self.problem(path, m)),
            },
            TomlValue::Array(array) => {
                for (i, value) in array.iter_mut().enumerate() {
                    self.interpolate_value(value, &format!("{path}[{i}]"), env);
                }
            }
            TomlValue::InlineTable(table) => {
                for (key, value) in table.iter_mut() {
                    let path = join(path, key.get());
                    self.interpolate_value(value, &path, env);
                }
            }
            _ => {}
        }
    }

    fn config(&mut self, root: &Item, path: &Path, dir: &Path) -> Option<Config> {
        let root = root.as_table_like()?;
        self.unknown_keys(root, "", TOP_KEYS);
        let source = self.source(root.get("source"));
        let (sink_names, sinks) = self.sinks(root.get("sinks"), dir);
        let tables = self.tables(root.get("tables"), &sink_names, dir);
        // Only once the tables are valid: a misspelt sink name in a table is already reported
        // with a did-you-mean, and calling the sink it meant "unused" would only mislead.
        if let Some(tables) = &tables {
            for name in &sink_names {
                if !tables.iter().any(|t| t.sinks.contains(name)) {
                    self.problem(
                        join("sinks", name),
                        format!("defined but no [[tables]] entry sends to it; add \"{name}\" to a table's sinks, or remove it"),
                    );
                }
            }
        }
        let admin = match root.get("admin") {
            None => Some(None),
            Some(item) => self.admin(item).map(Some),
        };
        // The stream sink's clients connect to the admin server: without one it would only fill
        // its buffer and acknowledge, and no client could ever read it.
        if let (Some(None), Some(sinks)) = (&admin, &sinks) {
            for (name, _) in sinks.iter().filter(|(_, s)| matches!(s, SinkConfig::Stream(_))) {
                self.problem(
                    join("sinks", name),
                    format!(
                        "a stream sink is served by the admin server, and there is no [admin]; add [admin] with listen = \"127.0.0.1:9187\" (clients then read http://127.0.0.1:9187/events?sink={name})"
                    ),
                );
            }
        }
        let log_json = match root.get("log") {
            None => Some(false),
            Some(item) => self.log(item),
        };
        Some(Config {
            path: path.to_path_buf(),
            source: source?,
            sinks: sinks?,
            tables: tables?,
            admin: admin?,
            log_json: log_json?,
        })
    }

    fn admin(&mut self, item: &Item) -> Option<AdminConfig> {
        let table = self.table_like(item, "admin")?;
        self.unknown_keys(table, "admin", ADMIN_KEYS);
        let listen = match table.get("listen") {
            None => {
                self.problem(
                    "admin.listen",
                    "missing; set it to the address to serve /health, /ready and /metrics on, like \"127.0.0.1:9187\" (or remove [admin])",
                );
                None
            }
            Some(listen) => self.non_empty_string(listen, "admin.listen").and_then(|text| {
                text.parse::<std::net::SocketAddr>()
                    .map_err(|_| {
                        self.problem(
                            "admin.listen",
                            format!("{text:?} is not an address; write an IP and a port, like \"127.0.0.1:9187\" or \"0.0.0.0:9187\""),
                        )
                    })
                    .ok()
            }),
        };
        let stall_after = match table.get("stall_after") {
            None => Some(Duration::from_secs(300)),
            Some(d) => self.duration(d, "admin.stall_after").filter(|d| {
                if d.is_zero() {
                    self.problem("admin.stall_after", "must be longer than zero, like \"5m\"");
                }
                !d.is_zero()
            }),
        };
        Some(AdminConfig {
            listen: listen?,
            stall_after: stall_after?,
        })
    }

    fn log(&mut self, item: &Item) -> Option<bool> {
        let table = self.table_like(item, "log")?;
        self.unknown_keys(table, "log", LOG_KEYS);
        match table.get("format") {
            None => Some(false),
            Some(format) => match self.non_empty_string(format, "log.format")?.as_str() {
                "text" => Some(false),
                "json" => Some(true),
                other => {
                    self.problem(
                        "log.format",
                        format!("{other:?} is not a log format; use \"text\" or \"json\""),
                    );
                    None
                }
            },
        }
    }

    fn size(&mut self, item: &Item, path: &str) -> Option<u64> {
        let Some(text) = item.as_str() else {
            self.problem(path, format!("expected a size like \"5GB\", got {}", describe(item)));
            return None;
        };
        crate::admin::parse_bytes(text)
            .map_err(|message| self.problem(path, message))
            .ok()
    }

    fn source(&mut self, item: Option<&Item>) -> Option<SourceConfig> {
        let Some(item) = item else {
            self.problem(
                "source",
                "missing; add a [source] table with url = \"postgres://user:password@host:5432/dbname\"",
            );
            return None;
        };
        let table = self.table_like(item, "source")?;
        self.unknown_keys(table, "source", SOURCE_KEYS);
        let url = match table.get("url") {
            None => {
                self.problem(
                    "source.url",
                    "missing; set it to the database URL, like \"postgres://user:password@host:5432/dbname\"",
                );
                None
            }
            Some(url) => self.non_empty_string(url, "source.url"),
        };
        let slot = match table.get("slot") {
            None => Some("cdc".to_string()),
            Some(slot) => self.server_name(slot, "source.slot", "slot name", ""),
        };
        let publication = match table.get("publication") {
            None => Some("cdc".to_string()),
            // The replication protocol sends publication_names unquoted, so pgoutput folds the
            // name to lower case and would not find one with capitals or other characters.
            Some(publication) => self.server_name(
                publication,
                "source.publication",
                "publication name",
                " (cdc run could not find another name: the replication protocol passes it unquoted)",
            ),
        };
        let status_interval = match table.get("status_interval") {
            None => Some(Duration::from_secs(1)),
            Some(interval) => self.duration(interval, "source.status_interval").filter(|d| {
                if d.is_zero() {
                    self.problem("source.status_interval", "must be longer than zero, like \"1s\"");
                }
                !d.is_zero()
            }),
        };
        let warn_retained_wal = match table.get("warn_retained_wal") {
            None => Some(5 << 30),
            Some(size) => self.size(size, "source.warn_retained_wal"),
        };
        let max_retained_wal = match table.get("max_retained_wal") {
            None => Some(None),
            Some(size) => self.size(size, "source.max_retained_wal").map(Some),
        };
        Some(SourceConfig {
            url: url?,
            slot: slot?,
            publication: publication?,
            status_interval: status_interval?,
            warn_retained_wal: warn_retained_wal?,
            max_retained_wal: max_retained_wal?,
        })
    }

    /// Returns the names of all `[sinks.*]` tables, even those with problems (so that tables
    /// naming them are not reported too), and the sinks when all are valid.
    fn sinks(&mut self, item: Option<&Item>, dir: &Path) -> (Vec<String>, Option<BTreeMap<String, SinkConfig>>) {
        let example = "add one, like [sinks.out] with type = \"stdout\"";
        let Some(item) = item else {
            self.problem("sinks", format!("missing; {example}"));
            return (Vec::new(), None);
        };
        let Some(table) = self.table_like(item, "sinks") else {
            return (Vec::new(), None);
        };
        if table.is_empty() {
            self.problem("sinks", format!("no sinks defined; {example}"));
        }
        let names: Vec<String> = table.iter().map(|(name, _)| name.to_string()).collect();
        let mut sinks = Some(BTreeMap::new());
        for (name, item) in table.iter() {
            let sink = self.sink(item, &join("sinks", name), dir);
            match (&mut sinks, sink) {
                (Some(sinks), Some(sink)) => {
                    sinks.insert(name.to_string(), sink);
                }
                _ => sinks = None,
            }
        }
        (names, sinks)
    }

    fn sink(&mut self, item: &Item, path: &str, dir: &Path) -> Option<SinkConfig> {
        let mut table = match item {
            Item::Table(table) => table.clone(),
            Item::Value(TomlValue::InlineTable(table)) => table.clone().into_table(),
            _ => {
                self.problem(
                    path,
                    format!(
                        "expected a table with type = \"...\" (one of: {}), got {}",
                        known_kinds(),
                        describe(item)
                    ),
                );
                return None;
            }
        };
        let type_path = join(path, "type");
        let kind = match table.remove("type") {
            None => {
                self.problem(
                    type_path,
                    format!("missing; set it to the sink kind, one of: {}", known_kinds()),
                );
                return None;
            }
            Some(kind) => match kind.as_str() {
                Some(kind) => kind.to_string(),
                None => {
                    self.problem(
                        type_path,
                        format!(
                            "expected the sink kind as a string (one of: {}), got {}",
                            known_kinds(),
                            describe(&kind)
                        ),
                    );
                    return None;
                }
            },
        };
        let Some((_, parse)) = SINK_KINDS.iter().find(|(name, _)| *name == kind) else {
            let kinds: Vec<&str> = SINK_KINDS.iter().map(|(kind, _)| *kind).collect();
            let hint = match suggest(&kind, &kinds) {
                Some(close) => format!("did you mean {close:?}? "),
                None => String::new(),
            };
            self.problem(
                type_path,
                format!("unknown sink type {kind:?}; {hint}known types: {}", known_kinds()),
            );
            return None;
        };
        parse(&mut SinkTable {
            loader: self,
            path,
            table,
            dir,
        })
    }

    fn tables(&mut self, item: Option<&Item>, sink_names: &[String], dir: &Path) -> Option<Vec<TableMapping>> {
        let example = "add one with table = \"schema.table\" and sinks = [\"<sink name>\"]";
        let entries: Vec<&dyn TableLike> = match item {
            None => {
                self.problem("tables", format!("no [[tables]] entries; {example}"));
                return None;
            }
            Some(Item::ArrayOfTables(tables)) => tables.iter().map(|t| t as &dyn TableLike).collect(),
            Some(Item::Value(TomlValue::Array(array))) if array.iter().all(|v| v.is_inline_table()) => array
                .iter()
                .filter_map(|v| v.as_inline_table())
                .map(|t| t as &dyn TableLike)
                .collect(),
            Some(other) => {
                self.problem(
                    "tables",
                    format!("expected [[tables]] entries, got {}", describe(other)),
                );
                return None;
            }
        };
        if entries.is_empty() {
            self.problem("tables", format!("no [[tables]] entries; {example}"));
            return None;
        }
        let mut mappings = Some(Vec::new());
        for (i, entry) in entries.into_iter().enumerate() {
            let mapping = self.table_mapping(entry, &format!("tables[{i}]"), sink_names, dir);
            match (&mut mappings, mapping) {
                (Some(mappings), Some(mapping)) => mappings.push(mapping),
                _ => mappings = None,
            }
        }
        mappings
    }

    fn table_mapping(
        &mut self,
        entry: &dyn TableLike,
        path: &str,
        sink_names: &[String],
        dir: &Path,
    ) -> Option<TableMapping> {
        self.unknown_keys(entry, path, TABLE_KEYS);
        let key = |name: &str| join(path, name);
        let table = match entry.get("table") {
            None => {
                self.problem(
                    key("table"),
                    "missing; set it to the table to follow, like \"public.items\"",
                );
                None
            }
            Some(item) => self.table_name(item, &key("table")),
        };
        let sinks = match entry.get("sinks") {
            None => {
                self.problem(
                    key("sinks"),
                    "missing; list the sinks this table's events go to, like [\"out\"]",
                );
                None
            }
            Some(item) => self.sink_refs(item, &key("sinks"), sink_names),
        };
        let columns = self.optional_names(
            entry,
            path,
            "columns",
            "column name",
            "lists no columns; list the columns to keep, or remove the key to keep them all",
        );
        let exclude_columns = match entry.get("exclude_columns") {
            None => Some(Vec::new()),
            Some(item) => self.names(item, &key("exclude_columns"), "column name"),
        };
        if entry.contains_key("columns") && entry.contains_key("exclude_columns") {
            self.problem(
                key("exclude_columns"),
                "set only one of columns (keep the listed columns) and exclude_columns (keep all but the listed ones)",
            );
        }
        let ops = match entry.get("ops") {
            None => Some(Op::ALL.to_vec()),
            Some(item) => self.ops(item, &key("ops")),
        };
        let key_columns = self.optional_names(
            entry,
            path,
            "key",
            "column name",
            "lists no columns; list the key columns, or remove the key to use the primary key",
        );
        let filter = match entry.get("filter") {
            None => Some(None),
            Some(item) => match Filter::parse(item) {
                Ok(filter) => Some(Some(filter)),
                Err(problems) => {
                    for p in problems {
                        self.problem(join_path(&key("filter"), &p.key), p.message);
                    }
                    None
                }
            },
        };
        let index = match entry.get("index") {
            None => Some(None),
            Some(item) => self.non_empty_string(item, &key("index")).map(Some),
        };
        let id = self.optional_names(
            entry,
            path,
            "id",
            "column name",
            "lists no columns; list the columns that make the document id, or remove the key to use the table's key",
        );
        let settings = match entry.get("settings") {
            None => Some(None),
            Some(item) => self
                .non_empty_string(item, &key("settings"))
                .map(|file| Some(dir.join(file))),
        };
        Some(TableMapping {
            table: table?,
            sinks: sinks?,
            columns: columns?,
            exclude_columns: exclude_columns?,
            ops: ops?,
            key: key_columns?,
            filter: filter?,
            index: index?,
            id: id?,
            settings: settings?,
        })
    }

    fn table_name(&mut self, item: &Item, path: &str) -> Option<TableName> {
        let text = self.non_empty_string(item, path)?;
        let name = TableName::parse(&text);
        if name.schema.is_empty() || name.name.is_empty() {
            self.problem(path, format!("expected \"schema.table\" or \"table\", got {text:?}"));
            return None;
        }
        Some(name)
    }

    fn sink_refs(&mut self, item: &Item, path: &str, sink_names: &[String]) -> Option<Vec<String>> {
        let names = self.names(item, path, "sink name")?;
        if names.is_empty() {
            self.problem(path, "lists no sinks; name at least one [sinks.<name>] entry");
            return None;
        }
        let defined: Vec<&str> = sink_names.iter().map(String::as_str).collect();
        let mut all_defined = true;
        for (i, name) in names.iter().enumerate() {
            if !defined.contains(&name.as_str()) {
                all_defined = false;
                let hint = match suggest(name, &defined) {
                    Some(close) => format!("did you mean {close:?}?"),
                    None if defined.is_empty() => format!("define it as [sinks.{}]", quote_key(name)),
                    None => format!(
                        "define it as [sinks.{}], or use one of: {}",
                        quote_key(name),
                        defined.join(", ")
                    ),
                };
                self.problem(format!("{path}[{i}]"), format!("no sink named {name:?}; {hint}"));
            }
        }
        all_defined.then_some(names)
    }

    fn ops(&mut self, item: &Item, path: &str) -> Option<Vec<Op>> {
        let names = self.names(item, path, "op")?;
        if names.is_empty() {
            self.problem(path, "lists no ops, so nothing would be sent; list some of create, update, delete, truncate, or remove the key for all four");
            return None;
        }
        let all: Vec<&str> = Op::ALL.iter().map(|op| op.as_str()).collect();
        let mut ops = Some(Vec::new());
        for (i, name) in names.iter().enumerate() {
            match (Op::parse(name), &mut ops) {
                (Some(op), Some(ops)) => ops.push(op),
                (Some(_), None) => {}
                (None, _) => {
                    ops = None;
                    let hint = match (name.as_str(), suggest(name, &all)) {
                        ("insert", _) => "did you mean \"create\"? cdc calls inserts \"create\"".to_string(),
                        (_, Some(close)) => format!("did you mean {close:?}?"),
                        (_, None) => format!("use one of: {}", all.join(", ")),
                    };
                    self.problem(format!("{path}[{i}]"), format!("unknown op {name:?}; {hint}"));
                }
            }
        }
        ops
    }

    /// An optional non-empty list of names: Some(None) when absent, None on a problem.
    fn optional_names(
        &mut self,
        entry: &dyn TableLike,
        path: &str,
        key: &str,
        what: &str,
        when_empty: &str,
    ) -> Option<Option<Vec<String>>> {
        let Some(item) = entry.get(key) else { return Some(None) };
        let path = join(path, key);
        let names = self.names(item, &path, what)?;
        if names.is_empty() {
            self.problem(path, when_empty);
            return None;
        }
        Some(Some(names))
    }

    /// An array of distinct, non-empty strings.
    fn names(&mut self, item: &Item, path: &str, what: &str) -> Option<Vec<String>> {
        let Some(array) = item.as_array() else {
            let hint = match item.as_str() {
                Some(s) => format!("; write [{s:?}]"),
                None => String::new(),
            };
            self.problem(
                path,
                format!("expected an array of {what}s, got {}{hint}", describe(item)),
            );
            return None;
        };
        let mut names: Vec<String> = Vec::new();
        let mut valid = true;
        for (i, value) in array.iter().enumerate() {
            let at = format!("{path}[{i}]");
            match value.as_str() {
                None => self.problem(
                    at,
                    format!("expected a {what} (a string), got {}", describe_value(value)),
                ),
                Some("") => self.problem(at, format!("an empty string is not a {what}")),
                Some(name) if names.iter().any(|n| n == name) => self.problem(at, format!("{name:?} is listed twice")),
                Some(name) => {
                    names.push(name.to_string());
                    continue;
                }
            }
            valid = false;
        }
        valid.then_some(names)
    }

    fn table_like<'t>(&mut self, item: &'t Item, path: &str) -> Option<&'t dyn TableLike> {
        let table = item.as_table_like();
        if table.is_none() {
            self.problem(path, format!("expected a table, got {}", describe(item)));
        }
        table
    }

    /// A name Postgres takes as written only when it is at most 63 lower case letters, digits
    /// and _ (a slot's rule, and what an unquoted publication name keeps).
    fn server_name(&mut self, item: &Item, path: &str, what: &str, why: &str) -> Option<String> {
        self.non_empty_string(item, path).filter(|name| {
            let valid = name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !valid {
                self.problem(
                    path,
                    format!("{name:?} is not a valid {what}; use at most 63 lower case letters, digits and _{why}"),
                );
            }
            valid
        })
    }

    fn non_empty_string(&mut self, item: &Item, path: &str) -> Option<String> {
        match item.as_str() {
            Some("") => {
                self.problem(path, "is empty");
                None
            }
            Some(s) => Some(s.to_string()),
            None => {
                self.problem(path, format!("expected a string, got {}", describe(item)));
                None
            }
        }
    }

    fn duration(&mut self, item: &Item, path: &str) -> Option<Duration> {
        let Some(text) = item.as_str() else {
            let hint = match item.as_integer() {
                Some(n) => format!("; write it with a unit, like \"{n}s\""),
                None => String::new(),
            };
            self.problem(
                path,
                format!("expected a duration like \"10s\", got {}{hint}", describe(item)),
            );
            return None;
        };
        parse_duration(text).map_err(|message| self.problem(path, message)).ok()
    }

    fn unknown_keys(&mut self, table: &dyn TableLike, path: &str, known: &[&str]) {
        for (key, _) in table.iter() {
            if !known.contains(&key) {
                self.problem(join(path, key), unknown_key_message(key, known));
            }
        }
    }

    /// Places a serde error from a sink's settings: at the key its span points into, with serde's
    /// wording turned into the loader's.
    fn serde_problem(&mut self, sink_path: &str, error: &toml_edit::de::Error) {
        let span = error.span();
        let at_path = span
            .as_ref()
            .and_then(|s| self.spans.path_at(s, sink_path))
            .unwrap_or_else(|| sink_path.to_string());
        let message = error.message();
        let (key, message) = if let Some(field) = between(message, "missing field `", "`") {
            (join(&at_path, field), "missing; this sink type requires it".to_string())
        } else if let Some(rest) = message.strip_prefix("unknown field `") {
            let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
            let known = quoted_names(expected);
            let message = if known.is_empty() {
                "unknown key; this sink type has no keys besides type".to_string()
            } else {
                unknown_key_message(field, &known)
            };
            (at_path, message)
        } else if let Some(rest) = message.strip_prefix("unknown variant `") {
            let (variant, expected) = rest.split_once('`').unwrap_or((rest, ""));
            let known = quoted_names(expected);
            let message = match suggest(variant, &known) {
                Some(close) => format!("unknown value {variant:?}; did you mean {close:?}?"),
                None => format!("unknown value {variant:?}; use one of: {}", known.join(", ")),
            };
            (at_path, message)
        } else if let Some((got, expected)) = message
            .strip_prefix("invalid type: ")
            .or_else(|| message.strip_prefix("invalid value: "))
            .and_then(|rest| rest.split_once(", expected "))
        {
            (
                at_path,
                format!(
                    "expected {}, got {}",
                    friendly_expected(expected),
                    friendly_unexpected(got)
                ),
            )
        } else {
            (at_path, message.to_string())
        };
        self.found.push(Found {
            key,
            at: span.map(|s| s.start),
            message,
        });
    }
}

/// A sink's table on its way to its kind's settings type.
struct SinkTable<'l, 'a> {
    loader: &'l mut Loader<'a>,
    path: &'l str,
    table: toml_edit::Table,
    dir: &'l Path,
}

impl SinkTable<'_, '_> {
    fn settings<T: SinkSettings>(&mut self) -> Option<T> {
        let document = toml_edit::DocumentMut::from(self.table.clone());
        let mut settings = match T::deserialize(toml_edit::de::Deserializer::from(document)) {
            Ok(settings) => settings,
            Err(e) => {
                self.loader.serde_problem(self.path, &e);
                return None;
            }
        };
        let problems = settings.validate(self.dir);
        let valid = problems.is_empty();
        for p in problems {
            self.loader.problem(join_path(self.path, &p.key), p.message);
        }
        valid.then_some(settings)
    }
}

/// The `type` values, for messages.
fn known_kinds() -> String {
    SINK_KINDS.iter().map(|(kind, _)| *kind).collect::<Vec<_>>().join(", ")
}

/// Where each key path sits in the file. Built before interpolation, which replaces string values
/// and so loses their positions.
struct Spans(Vec<SpanEntry>);

struct SpanEntry {
    path: String,
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
}

impl Spans {
    fn build(root: &Item) -> Spans {
        let mut entries = Vec::new();
        Spans::walk(root, "", &mut entries);
        Spans(entries)
    }

    fn walk(item: &Item, path: &str, entries: &mut Vec<SpanEntry>) {
        match item {
            Item::Value(value) => Spans::walk_value(value, path, entries),
            Item::Table(table) => Spans::walk_table(table, path, entries),
            Item::ArrayOfTables(tables) => {
                for (i, table) in tables.iter().enumerate() {
                    let child = format!("{path}[{i}]");
                    entries.push(SpanEntry {
                        path: child.clone(),
                        key: None,
                        value: table.span(),
                    });
                    Spans::walk_table(table, &child, entries);
                }
            }
            Item::None => {}
        }
    }

    fn walk_value(value: &TomlValue, path: &str, entries: &mut Vec<SpanEntry>) {
        match value {
            TomlValue::InlineTable(table) => Spans::walk_table(table, path, entries),
            TomlValue::Array(array) => {
                for (i, value) in array.iter().enumerate() {
                    let child = format!("{path}[{i}]");
                    entries.push(SpanEntry {
                        path: child.clone(),
                        key: None,
                        value: value.span(),
                    });
                    Spans::walk_value(value, &child, entries);
                }
            }
            _ => {}
        }
    }

    fn walk_table(table: &dyn TableLike, path: &str, entries: &mut Vec<SpanEntry>) {
        for (key, item) in table.iter() {
            let child = join(path, key);
            let key_span = table.key(key).and_then(|k| k.span());
            entries.push(SpanEntry {
                path: child.clone(),
                key: key_span,
                value: item.span(),
            });
            Spans::walk(item, &child, entries);
        }
    }

    /// Where `path` is, or else its nearest ancestor that has a place (a missing key is reported
    /// at the table that should hold it).
    fn offset(&self, path: &str) -> Option<usize> {
        self.0
            .iter()
            .filter(|e| is_within(path, &e.path))
            .filter_map(|e| Some((e.path.len(), e.key.as_ref().or(e.value.as_ref())?.start)))
            .max_by_key(|(len, _)| *len)
            .map(|(_, at)| at)
    }

    /// The innermost key path under `under` whose key is `span` or whose value contains it.
    fn path_at(&self, span: &Range<usize>, under: &str) -> Option<String> {
        self.0
            .iter()
            .filter(|e| is_within(&e.path, under))
            .filter_map(|e| {
                if e.key.as_ref() == Some(span) {
                    return Some((0, &e.path));
                }
                let value = e.value.as_ref()?;
                (value.start <= span.start && span.end <= value.end).then(|| (value.len(), &e.path))
            })
            .min_by_key(|(len, _)| *len)
            .map(|(_, path)| path.clone())
    }
}

/// Whether `path` is `ancestor` or lies below it.
fn is_within(path: &str, ancestor: &str) -> bool {
    ancestor.is_empty()
        || path
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Expands `${VAR}` and `${VAR:-default}`; returns every problem, not just the first.
fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        rest = &rest[dollar..];
        if let Some(after) = rest.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                problems.push(format!(
                    "\"${{\" without a closing \"}}\" in {text:?}; close it, or write \"$${{\" for a literal \"${{\""
                ));
                return Err(problems);
            };
            let reference = &after[..end];
            let (name, default) = match reference.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (reference, None),
            };
            let valid_name = name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid_name {
                problems.push(format!(
                    "\"${{{reference}}}\" is not a variable reference; write ${{NAME}} or ${{NAME:-default}} with a name of letters, digits and _"
                ));
            } else {
                match (env(name), default) {
                    (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
                    (Some(value), _) => out.push_str(&value),
                    (None, Some(default)) => out.push_str(default),
                    (None, None) => problems.push(format!(
                        "environment variable {name} is not set; set it, or give a default with ${{{name}:-default}}"
                    )),
                }
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// A key as it appears in a key path: bare when TOML allows, quoted otherwise.
pub(super) fn quote_key(key: &str) -> Cow<'_, str> {
    let bare = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        Cow::Borrowed(key)
    } else {
        Cow::Owned(format!("{key:?}"))
    }
}

/// `path.key`, quoting `key` when needed.
fn join(path: &str, key: &str) -> String {
    join_path(path, &quote_key(key))
}

/// `path` followed by an already rendered relative path (`key`, `key.sub`, `key[1]`).
fn join_path(path: &str, relative: &str) -> String {
    match (path.is_empty(), relative.is_empty()) {
        (_, true) => path.to_string(),
        (true, false) => relative.to_string(),
        (false, false) if relative.starts_with('[') => format!("{path}{relative}"),
        (false, false) => format!("{path}.{relative}"),
    }
}

pub(super) fn unknown_key_message(key: &str, known: &[&str]) -> String {
    match suggest(key, known) {
        Some(close) => format!("unknown key; did you mean {close:?}?"),
        None => format!("unknown key; expected one of: {}", known.join(", ")),
    }
}

/// The candidate closest to `word`, when close enough to be a likely typo.
pub(super) fn suggest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= 2 && *d < c.chars().count())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// "a string", "an integer", ...: what the user wrote, for "expected X, got Y".
pub(super) fn describe(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Value(value) => describe_value(value),
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
    }
}

pub(super) fn describe_value(value: &TomlValue) -> &'static str {
    match value {
        TomlValue::String(_) => "a string",
        TomlValue::Integer(_) => "an integer",
        TomlValue::Float(_) => "a float",
        TomlValue::Boolean(_) => "a boolean",
        TomlValue::Datetime(_) => "a date-time",
        TomlValue::Array(_) => "an array",
        TomlValue::InlineTable(_) => "a table",
    }
}

fn between<'t>(text: &'t str, start: &str, end: &str) -> Option<&'t str> {
    let rest = text.strip_prefix(start)?;
    Some(&rest[..rest.find(end)?])
}

/// The names in serde's "expected one of `a`, `b`" tail.
fn quoted_names(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// Serde's Rust type names in user terms.
fn friendly_expected(expected: &str) -> Cow<'_, str> {
    Cow::Borrowed(match expected {
        "u8" => "an integer from 0 to 255",
        "u16" => "an integer from 0 to 65535",
        "u32" => "an integer from 0 to 4294967295",
        "u64" | "usize" | "u128" => "a non-negative integer",
        "i8" | "i16" | "i32" | "i64" | "isize" | "i128" => "an integer",
        "f32" | "f64" => "a number",
        "a sequence" => "an array",
        "a map" => "a table",
        _ if expected.starts_with("struct ") => "a table",
        _ => return Cow::Borrowed(expected),
    })
}

/// Serde's "integer `-1`" as "-1", "map" as "a table".
fn friendly_unexpected(got: &str) -> Cow<'_, str> {
    if let Some(value) = between(got, "integer `", "`").or_else(|| between(got, "floating point `", "`")) {
        return Cow::Borrowed(value);
    }
    match got {
        "map" => Cow::Borrowed("a table"),
        "sequence" => Cow::Borrowed("an array"),
        _ => Cow::Borrowed(got),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use crate::config::StdoutConfig;

    const EXAMPLE: &str = r#"
[source]
url = "postgres://cdc:${CDC_PG_PASSWORD}@127.0.0.1:5432/app"
slot = "cdc"                # default "cdc"
publication = "cdc"         # default "cdc"
status_interval = "1s"      # default 1s

[sinks.out]
type = "stdout"            # JSON lines, one event per line

[[tables]]
table = "public.items"     # schema-qualified; unqualified means public
sinks = ["out"]
columns = ["id", "title", "price"]
ops = ["create", "update", "delete"]
key = ["id"]
filter = { state = "published", deleted_at = "null" }
index = "items"
id = ["id"]
settings = "search/items.json"
"#;

    const MINIMAL: &str = "[source]\nurl = \"postgres://localhost/app\"\n\n[sinks.out]\ntype = \"stdout\"\n\n[[tables]]\ntable = \"items\"\nsinks = [\"out\"]\n";

    fn load_with(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        load_with_env(text, Path::new("/etc/cdc/cdc.toml"), &|name| vars.get(name).cloned())
    }

    fn errors(text: &str) -> String {
        load_with(text, &[])
            .expect_err("the config should be rejected")
            .to_string()
    }

    #[test]
    fn admin_log_and_wal_sizes_load_with_defaults_and_errors_name_their_line() {
        let text = MINIMAL.replace(
            "[source]\n",
            "[source]\nwarn_retained_wal = \"1GB\"\nmax_retained_wal = \"512MB\"\n",
        ) + "\n[admin]\nlisten = \"127.0.0.1:9187\"\n\n[log]\nformat = \"json\"\n";
        let config = load_with(&text, &[]).unwrap();
        assert_eq!(config.source.warn_retained_wal, 1 << 30);
        assert_eq!(config.source.max_retained_wal, Some(512 << 20));
        let admin = config.admin.unwrap();
        assert_eq!(admin.listen, "127.0.0.1:9187".parse().unwrap());
        assert_eq!(admin.stall_after, Duration::from_secs(300));
        assert!(config.log_json);

        let text = MINIMAL.replace("[source]\n", "[source]\nwarn_retained_wal = \"5 parsecs\"\n")
            + "\n[admin]\nlisten = \"localhost\"\nstall_afte = \"1m\"\n\n[log]\nformat = \"xml\"\n";
        let e = errors(&text);
        assert!(
            e.contains("cdc.toml:2: source.warn_retained_wal: unknown size unit"),
            "{e}"
        );
        assert!(e.contains("admin.listen: \"localhost\" is not an address"), "{e}");
        assert!(
            e.contains("admin.stall_afte: unknown key; did you mean \"stall_after\"?"),
            "{e}"
        );
        assert!(e.contains("log.format: \"xml\" is not a log format"), "{e}");
    }

    #[test]
    fn a_stream_sink_needs_the_admin_server_and_a_token() {
        let stream = "[source]\nurl = \"postgres://localhost/app\"\n\n[sinks.feed]\ntype = \"stream\"\ntoken = [\"${OLD}\", \"${NEW}\"]\n\n[[tables]]\ntable = \"items\"\nsinks = [\"feed\"]\n";
        let e = load_with(stream, &[("OLD", "a"), ("NEW", "b")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "/etc/cdc/cdc.toml:4: sinks.feed: a stream sink is served by the admin server, and there is no [admin]; add [admin] with listen = \"127.0.0.1:9187\" (clients then read http://127.0.0.1:9187/events?sink=feed)"
        );
        let with_admin = format!("{stream}\n[admin]\nlisten = \"127.0.0.1:9187\"\n");
        let config = load_with(&with_admin, &[("OLD", "a"), ("NEW", "b")]).unwrap();
        let SinkConfig::Stream(feed) = &config.sinks["feed"] else {
            panic!("{:?}", config.sinks)
        };
        assert_eq!(feed.token, vec!["a", "b"]);
        let e = errors(&with_admin.replace("token = [\"${OLD}\", \"${NEW}\"]\n", ""));
        assert!(
            e.contains("cdc.toml:4: sinks.feed.token: missing; set the token"),
            "{e}"
        );
    }

    /// The minimal config with `extra` appended to its `[[tables]]` entry.
    fn with_table_keys(extra: &str) -> String {
        format!("{MINIMAL}{extra}\n")
    }

    #[test]
    fn the_documented_example_loads() {
        let config = load_with(EXAMPLE, &[("CDC_PG_PASSWORD", "s3cret")]).unwrap();
        assert_eq!(config.path, Path::new("/etc/cdc/cdc.toml"));
        assert_eq!(
            config.source,
            SourceConfig {
                url: "postgres://cdc:s3cret@127.0.0.1:5432/app".into(),
                slot: "cdc".into(),
                publication: "cdc".into(),
                status_interval: Duration::from_secs(1),
                warn_retained_wal: 5 << 30,
                max_retained_wal: None,
            }
        );
        assert_eq!(config.admin, None);
        assert_eq!(config.sinks.len(), 1);
        assert_eq!(config.sinks["out"], SinkConfig::Stdout(StdoutConfig {}));
        let t = &config.tables[0];
        assert_eq!(t.table, TableName::parse("public.items"));
        assert_eq!(t.sinks, ["out"]);
        assert_eq!(
            t.columns.as_deref(),
            Some(&["id".to_string(), "title".into(), "price".into()][..])
        );
        assert!(t.exclude_columns.is_empty());
        assert_eq!(t.ops, [Op::Create, Op::Update, Op::Delete]);
        assert_eq!(t.key.as_deref(), Some(&["id".to_string()][..]));
        assert_eq!(
            t.filter.as_ref().unwrap().to_sql(),
            "\"state\" = 'published' AND \"deleted_at\" IS NULL"
        );
        assert_eq!(t.index.as_deref(), Some("items"));
        assert_eq!(t.id.as_deref(), Some(&["id".to_string()][..]));
        assert_eq!(t.settings.as_deref(), Some(Path::new("/etc/cdc/search/items.json")));
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let config = load_with(MINIMAL, &[]).unwrap();
        assert_eq!(config.source.slot, "cdc");
        assert_eq!(config.source.publication, "cdc");
        assert_eq!(config.source.status_interval, Duration::from_secs(1));
        assert_eq!(
            config.tables,
            [TableMapping::new(TableName::parse("public.items"), vec!["out".into()])]
        );
    }

    #[test]
    fn load_reads_the_file_and_names_it_when_it_cannot() {
        let dir = std::env::temp_dir().join(format!("cdc-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cdc.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        assert_eq!(load(&path).unwrap().tables.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
        let message = load(&path).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("{}: cannot read the config file: ", path.display())),
            "{message}"
        );
    }

    #[test]
    fn tables_may_also_be_an_inline_array_and_sinks_inline_tables() {
        let text = "source = { url = \"postgres://x/y\" }\nsinks = { out = { type = \"stdout\" } }\ntables = [{ table = \"a.b\", sinks = [\"out\"] }]\n";
        let config = load_with(text, &[]).unwrap();
        assert_eq!(
            config.tables[0].table,
            TableName {
                schema: "a".into(),
                name: "b".into()
            }
        );
    }

    #[test]
    fn environment_variables_are_expanded_in_string_values() {
        let text = MINIMAL.replace(
            "postgres://localhost/app",
            "postgres://${USER}:${PASS:-none}@${HOST:-localhost}/app",
        );
        let config = load_with(&text, &[("USER", "cdc"), ("HOST", "db")]).unwrap();
        assert_eq!(config.source.url, "postgres://cdc:none@db/app");
    }

    #[test]
    fn a_default_also_replaces_an_empty_variable() {
        let env = |name: &str| (name == "EMPTY").then(String::new);
        assert_eq!(expand("${EMPTY:-fallback}", &env).unwrap(), "fallback");
        assert_eq!(expand("${EMPTY}", &env).unwrap(), "");
    }

    #[test]
    fn dollars_not_starting_a_reference_stay_literal() {
        let env = |_: &str| Some("x".to_string());
        assert_eq!(expand("pa$$word $5 $", &env).unwrap(), "pa$$word $5 $");
        assert_eq!(expand("$${NOT_EXPANDED} ${X}", &env).unwrap(), "${NOT_EXPANDED} x");
    }

    #[test]
    fn a_value_with_quotes_cannot_break_the_toml() {
        let text = MINIMAL.replace("postgres://localhost/app", "${URL}");
        let config = load_with(&text, &[("URL", "a\"\nslot = \"evil")]).unwrap();
        assert_eq!(config.source.url, "a\"\nslot = \"evil");
        assert_eq!(config.source.slot, "cdc");
    }

    #[test]
    fn a_missing_variable_is_named_with_its_file_line_and_key() {
        let text = MINIMAL.replace(
            "postgres://localhost/app",
            "postgres://${PG_USER}:${PG_PASSWORD}@localhost/app",
        );
        assert_eq!(
            load_with(&text, &[("PG_USER", "cdc")]).unwrap_err().to_string(),
            "/etc/cdc/cdc.toml:2: source.url: environment variable PG_PASSWORD is not set; set it, or give a default with ${PG_PASSWORD:-default}"
        );
    }

    #[test]
    fn broken_references_are_reported() {
        let env = |_: &str| None;
        assert_eq!(
            expand("${1X} and ${A B:-c}", &env).unwrap_err(),
            [
                "\"${1X}\" is not a variable reference; write ${NAME} or ${NAME:-default} with a name of letters, digits and _",
                "\"${A B:-c}\" is not a variable reference; write ${NAME} or ${NAME:-default} with a name of letters, digits and _",
            ]
        );
        assert_eq!(
            expand("${OPEN", &env).unwrap_err(),
            ["\"${\" without a closing \"}\" in \"${OPEN\"; close it, or write \"$${\" for a literal \"${\""]
        );
    }

    #[test]
    fn variables_inside_arrays_and_inline_tables_are_expanded() {
        let text = with_table_keys("columns = [\"${COL}\"]\nfilter = { state = \"${STATE:-live}\" }");
        let config = load_with(&text, &[("COL", "id")]).unwrap();
        assert_eq!(config.tables[0].columns.as_deref(), Some(&["id".to_string()][..]));
        assert_eq!(config.tables[0].filter.as_ref().unwrap().to_sql(), "\"state\" = 'live'");
    }

    #[test]
    fn toml_syntax_errors_give_file_and_line() {
        assert_eq!(
            errors("[source]\nurl = \"x\"\nurl = \"y\"\n"),
            "/etc/cdc/cdc.toml:3: duplicate key at `url`"
        );
    }

    #[test]
    fn unknown_keys_suggest_the_closest_known_key() {
        let text = MINIMAL.replace("[source]\n", "[source]\nslott = \"x\"\n");
        assert_eq!(
            errors(&text),
            "/etc/cdc/cdc.toml:2: source.slott: unknown key; did you mean \"slot\"?"
        );
        let text = with_table_keys("colums = [\"id\"]\nfrobnicate = 1");
        assert_eq!(
            errors(&text),
            "/etc/cdc/cdc.toml:10: tables[0].colums: unknown key; did you mean \"columns\"?\n\
             /etc/cdc/cdc.toml:11: tables[0].frobnicate: unknown key; expected one of: table, sinks, columns, exclude_columns, ops, key, filter, index, id, settings"
        );
        assert_eq!(
            errors(&format!("{MINIMAL}[sourc]\n")),
            "/etc/cdc/cdc.toml:10: sourc: unknown key; did you mean \"source\"?"
        );
    }

    #[test]
    fn every_problem_is_reported_not_just_the_first() {
        let text = "[source]\nurl = 5\nstatus_interval = 10\n\n[sinks.out]\ntype = \"stdout\"\n\n[[tables]]\ntable = \"items\"\nsinks = \"out\"\nops = [\"insert\", \"upsert\"]\n";
        assert_eq!(
            errors(text),
            "/etc/cdc/cdc.toml:2: source.url: expected a string, got an integer\n\
             /etc/cdc/cdc.toml:3: source.status_interval: expected a duration like \"10s\", got an integer; write it with a unit, like \"10s\"\n\
             /etc/cdc/cdc.toml:10: tables[0].sinks: expected an array of sink names, got a string; write [\"out\"]\n\
             /etc/cdc/cdc.toml:11: tables[0].ops[0]: unknown op \"insert\"; did you mean \"create\"? cdc calls inserts \"create\"\n\
             /etc/cdc/cdc.toml:11: tables[0].ops[1]: unknown op \"upsert\"; use one of: create, update, delete, truncate"
        );
    }

    #[test]
    fn missing_sections_and_keys_are_reported_where_they_belong() {
        assert_eq!(
            errors(""),
            "/etc/cdc/cdc.toml: source: missing; add a [source] table with url = \"postgres://user:password@host:5432/dbname\"\n\
             /etc/cdc/cdc.toml: sinks: missing; add one, like [sinks.out] with type = \"stdout\"\n\
             /etc/cdc/cdc.toml: tables: no [[tables]] entries; add one with table = \"schema.table\" and sinks = [\"<sink name>\"]"
        );
        let text = MINIMAL
            .replace("url = \"postgres://localhost/app\"\n", "")
            .replace("table = \"items\"\n", "");
        assert_eq!(
            errors(&text),
            "/etc/cdc/cdc.toml:1: source.url: missing; set it to the database URL, like \"postgres://user:password@host:5432/dbname\"\n\
             /etc/cdc/cdc.toml:6: tables[0].table: missing; set it to the table to follow, like \"public.items\""
        );
    }

    #[test]
    fn source_values_are_checked() {
        let text = MINIMAL.replace(
            "[source]\n",
            "[source]\nslot = \"My-Slot\"\npublication = \"\"\nstatus_interval = \"0s\"\n",
        );
        assert_eq!(
            errors(&text),
            "/etc/cdc/cdc.toml:2: source.slot: \"My-Slot\" is not a valid slot name; use at most 63 lower case letters, digits and _\n\
             /etc/cdc/cdc.toml:3: source.publication: is empty\n\
             /etc/cdc/cdc.toml:4: source.status_interval: must be longer than zero, like \"1s\""
        );
    }

    #[test]
    fn a_publication_name_must_be_one_pgoutput_finds() {
        for name in ["My Pub", "CDC", "cdc-pub", &"p".repeat(64)] {
            let text = MINIMAL.replace("[source]\n", &format!("[source]\npublication = {name:?}\n"));
            assert_eq!(
                errors(&text),
                format!(
                    "/etc/cdc/cdc.toml:2: source.publication: {name:?} is not a valid publication name; use at most 63 lower case \
                     letters, digits and _ (cdc run could not find another name: the replication protocol passes it unquoted)"
                )
            );
        }
        let text = MINIMAL.replace("[source]\n", "[source]\npublication = \"cdc_orders_2\"\n");
        assert_eq!(load_with(&text, &[]).unwrap().source.publication, "cdc_orders_2");
    }

    #[test]
    fn durations_take_units_and_combinations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1s250ms"), Ok(Duration::from_millis(1250)));
    }

    #[test]
    fn bad_durations_say_how_to_write_them() {
        assert_eq!(
            parse_duration("5"),
            Err("\"5\" has no unit; write \"5s\" for seconds or \"5ms\" for milliseconds".into())
        );
        assert_eq!(
            parse_duration("5sec"),
            Err("unknown unit \"sec\" in \"5sec\"; use ms, s, m, h or d".into())
        );
        let expected = |s: &str| {
            Err(format!(
                "expected a duration like \"500ms\", \"10s\", \"2m\" or \"1h\", got {s:?}"
            ))
        };
        assert_eq!(parse_duration(""), expected(""));
        assert_eq!(parse_duration("s"), expected("s"));
        assert_eq!(parse_duration("1.5s"), expected("1.5s"));
        assert_eq!(parse_duration(" 1s"), expected(" 1s"));
        assert_eq!(
            parse_duration("99999999999999999999d"),
            Err("\"99999999999999999999d\" is too long a duration".into())
        );
        assert_eq!(
            parse_duration("999999999999999d"),
            Err("\"999999999999999d\" is too long a duration".into())
        );
    }

    #[test]
    fn sink_settings_can_read_durations() {
        #[derive(serde::Deserialize)]
        struct Settings {
            #[serde(deserialize_with = "deserialize_duration")]
            flush: Duration,
        }
        let ok: Settings = toml_edit::de::from_str("flush = \"250ms\"").unwrap();
        assert_eq!(ok.flush, Duration::from_millis(250));
        let err = toml_edit::de::from_str::<Settings>("flush = \"soon\"").err().unwrap();
        assert_eq!(
            err.message(),
            "expected a duration like \"500ms\", \"10s\", \"2m\" or \"1h\", got \"soon\""
        );
        let err = toml_edit::de::from_str::<Settings>("flush = 5").err().unwrap();
        assert_eq!(
            err.message(),
            "invalid type: integer `5`, expected a duration like \"500ms\", \"10s\", \"2m\" or \"1h\""
        );
    }

    #[test]
    fn an_unknown_sink_type_lists_the_known_types() {
        let known = known_kinds();
        assert!(known.split(", ").any(|kind| kind == "stdout"), "{known}");
        let text = MINIMAL.replace("type = \"stdout\"", "type = \"stdot\"");
        assert_eq!(
            errors(&text),
            format!("/etc/cdc/cdc.toml:5: sinks.out.type: unknown sink type \"stdot\"; did you mean \"stdout\"? known types: {known}")
        );
        let text = MINIMAL.replace("type = \"stdout\"", "type = \"kafka\"");
        assert_eq!(
            errors(&text),
            format!("/etc/cdc/cdc.toml:5: sinks.out.type: unknown sink type \"kafka\"; known types: {known}")
        );
        let text = MINIMAL.replace("type = \"stdout\"", "type = 1");
        assert_eq!(
            errors(&text),
            format!("/etc/cdc/cdc.toml:5: sinks.out.type: expected the sink kind as a string (one of: {known}), got an integer")
        );
        let text = MINIMAL.replace("type = \"stdout\"", "");
        assert_eq!(
            errors(&text),
            format!("/etc/cdc/cdc.toml:4: sinks.out.type: missing; set it to the sink kind, one of: {known}")
        );
    }

    #[test]
    fn a_sink_that_is_not_a_table_is_reported() {
        let text = MINIMAL.replace("[sinks.out]\ntype = \"stdout\"", "[sinks]\nout = \"stdout\"");
        assert_eq!(
            errors(&text),
            format!(
                "/etc/cdc/cdc.toml:5: sinks.out: expected a table with type = \"...\" (one of: {}), got a string",
                known_kinds()
            )
        );
        let text = MINIMAL.replace("[sinks.out]\ntype = \"stdout\"", "[sinks]");
        assert_eq!(
            errors(&text),
            "/etc/cdc/cdc.toml:4: sinks: no sinks defined; add one, like [sinks.out] with type = \"stdout\"\n\
             /etc/cdc/cdc.toml:8: tables[0].sinks[0]: no sink named \"out\"; define it as [sinks.out]"
        );
    }

    #[test]
    fn unknown_keys_in_a_sink_table_come_from_serde_with_their_line() {
        let text = MINIMAL.replace("type = \"stdout\"", "type = \"stdout\"\npretty = true");
        assert_eq!(
            errors(&text),
            "/etc/cdc/cdc.toml:6: sinks.out.pretty: unknown key; this sink type has no keys besides type"
        );
    }

    /// A sink kind with settings, to check how the loader places serde's and `validate`'s
    /// problems; it goes through the same `SinkTable::settings` every kind uses.
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct TestSettings {
        url: String,
        batch_size: i64,
        #[serde(default)]
        mode: Option<Mode>,
        #[serde(default)]
        auth: Option<Auth>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        Fast,
        Safe,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Auth {
        token: String,
    }

    impl SinkSettings for TestSettings {
        fn validate(&mut self, config_dir: &Path) -> Vec<Problem> {
            let mut problems = Vec::new();
            if self.batch_size < 1 {
                problems.push(Problem::new(
                    "batch_size",
                    format!("expected a positive integer, got {}", self.batch_size),
                ));
            }
            if self.auth.as_ref().is_some_and(|a| a.token.is_empty()) {
                problems.push(Problem::new(
                    "auth.token",
                    format!("is empty (config folder {})", config_dir.display()),
                ));
            }
            problems
        }
    }

    fn test_sink(sink: &str) -> String {
        let text = format!("[sinks.search]\n{sink}\n");
        let mut root = Item::Table(toml_edit::Document::parse(text.as_str()).unwrap().into_table());
        let mut loader = Loader {
            text: &text,
            spans: Spans::build(&root),
            found: Vec::new(),
        };
        loader.interpolate(&mut root, "", &|_| Some("from-env".into()));
        let table = root["sinks"]["search"].as_table().unwrap().clone();
        let settings = SinkTable {
            loader: &mut loader,
            path: "sinks.search",
            table,
            dir: Path::new("/etc/cdc"),
        }
        .settings::<TestSettings>();
        match settings {
            Some(settings) => format!("{settings:?}"),
            None => loader.into_error(Path::new("cdc.toml")).to_string(),
        }
    }

    #[test]
    fn sink_settings_that_validate_load() {
        assert_eq!(
            test_sink("url = \"${URL}\"\nbatch_size = 5\nmode = \"safe\""),
            "TestSettings { url: \"from-env\", batch_size: 5, mode: Some(Safe), auth: None }"
        );
    }

    #[test]
    fn sink_validation_problems_are_placed_at_their_keys() {
        assert_eq!(
            test_sink("url = \"u\"\nbatch_size = -1\n[sinks.search.auth]\ntoken = \"\""),
            "cdc.toml:3: sinks.search.batch_size: expected a positive integer, got -1\n\
             cdc.toml:5: sinks.search.auth.token: is empty (config folder /etc/cdc)"
        );
    }

    #[test]
    fn serde_errors_in_sink_settings_are_reworded_and_placed() {
        assert_eq!(
            test_sink("url = \"u\"\nbatch_sise = 5"),
            "cdc.toml:3: sinks.search.batch_sise: unknown key; did you mean \"batch_size\"?"
        );
        assert_eq!(
            test_sink("url = \"u\""),
            "cdc.toml:1: sinks.search.batch_size: missing; this sink type requires it"
        );
        assert_eq!(
            test_sink("url = 1\nbatch_size = 5"),
            "cdc.toml:2: sinks.search.url: expected a string, got 1"
        );
        assert_eq!(
            test_sink("url = \"u\"\nbatch_size = 1.5"),
            "cdc.toml:3: sinks.search.batch_size: expected an integer, got 1.5"
        );
        assert_eq!(
            test_sink("url = \"u\"\nbatch_size = 5\nmode = \"fsat\""),
            "cdc.toml:4: sinks.search.mode: unknown value \"fsat\"; did you mean \"fast\"?"
        );
        assert_eq!(
            test_sink("url = \"u\"\nbatch_size = 5\nauth = { token = \"t\", tokn = \"t\" }"),
            "cdc.toml:4: sinks.search.auth.tokn: unknown key; did you mean \"token\"?"
        );
        assert_eq!(
            test_sink("url = \"u\"\nbatch_size = 5\nauth = 5"),
            "cdc.toml:4: sinks.search.auth: expected a table, got 5"
        );
    }

    #[test]
    fn every_table_must_name_defined_sinks() {
        let text = MINIMAL.replace("sinks = [\"out\"]", "sinks = [\"otu\", \"elsewhere\", \"otu\"]");
        assert_eq!(
            errors(&text),
            "/etc/cdc/cdc.toml:9: tables[0].sinks[2]: \"otu\" is listed twice"
        );
        let text = MINIMAL.replace("sinks = [\"out\"]", "sinks = [\"otu\", \"elsewhere\"]");
        assert_eq!(
            errors(&text),
            "/etc/cdc/cdc.toml:9: tables[0].sinks[0]: no sink named \"otu\"; did you mean \"out\"?\n\
             /etc/cdc/cdc.toml:9: tables[0].sinks[1]: no sink named \"elsewhere\"; define it as [sinks.elsewhere], or use one of: out"
        );
        let text = MINIMAL.replace("sinks = [\"out\"]", "sinks = []");
        assert!(errors(&text)
            .ends_with("/etc/cdc/cdc.toml:9: tables[0].sinks: lists no sinks; name at least one [sinks.<name>] entry"));
    }

    #[test]
    fn an_unused_sink_is_an_error() {
        let text = format!("{MINIMAL}\n[sinks.spare]\ntype = \"stdout\"\n");
        assert_eq!(
            errors(&text),
            "/etc/cdc/cdc.toml:11: sinks.spare: defined but no [[tables]] entry sends to it; add \"spare\" to a table's sinks, or remove it"
        );
    }

    #[test]
    fn a_sink_with_problems_is_still_known_to_tables() {
        let text = MINIMAL.replace("type = \"stdout\"", "type = \"nope\"");
        assert_eq!(errors(&text).lines().count(), 1);
    }

    #[test]
    fn columns_and_exclude_columns_exclude_each_other() {
        let text = with_table_keys("columns = [\"id\"]\nexclude_columns = [\"body\"]");
        assert_eq!(
            errors(&text),
            "/etc/cdc/cdc.toml:11: tables[0].exclude_columns: set only one of columns (keep the listed columns) and exclude_columns (keep all but the listed ones)"
        );
        let config = load_with(&with_table_keys("exclude_columns = [\"body\"]"), &[]).unwrap();
        assert_eq!(config.tables[0].exclude_columns, ["body"]);
        assert!(!config.tables[0].keeps("body"));
    }

    #[test]
    fn column_lists_must_not_be_empty_when_given() {
        let text = with_table_keys("columns = []\nkey = []\nid = []\nops = []");
        assert_eq!(
            errors(&text),
            "/etc/cdc/cdc.toml:10: tables[0].columns: lists no columns; list the columns to keep, or remove the key to keep them all\n\
             /etc/cdc/cdc.toml:11: tables[0].key: lists no columns; list the key columns, or remove the key to use the primary key\n\
             /etc/cdc/cdc.toml:12: tables[0].id: lists no columns; list the columns that make the document id, or remove the key to use the table's key\n\
             /etc/cdc/cdc.toml:13: tables[0].ops: lists no ops, so nothing would be sent; list some of create, update, delete, truncate, or remove the key for all four"
        );
    }

    #[test]
    fn column_list_entries_must_be_distinct_non_empty_strings() {
        let text = with_table_keys("columns = [\"id\", 7, \"\", \"id\"]");
        assert_eq!(
            errors(&text),
            "/etc/cdc/cdc.toml:10: tables[0].columns[1]: expected a column name (a string), got an integer\n\
             /etc/cdc/cdc.toml:10: tables[0].columns[2]: an empty string is not a column name\n\
             /etc/cdc/cdc.toml:10: tables[0].columns[3]: \"id\" is listed twice"
        );
    }

    #[test]
    fn table_names_and_strings_are_checked() {
        let text = MINIMAL.replace("table = \"items\"", "table = \"items.\"\nindex = \"\"\nsettings = 3");
        assert_eq!(
            errors(&text),
            "/etc/cdc/cdc.toml:8: tables[0].table: expected \"schema.table\" or \"table\", got \"items.\"\n\
             /etc/cdc/cdc.toml:9: tables[0].index: is empty\n\
             /etc/cdc/cdc.toml:10: tables[0].settings: expected a string, got an integer"
        );
    }

    #[test]
    fn filter_problems_are_placed_under_the_filter_key() {
        let text = with_table_keys("filter = { price = { gtt = 5 } }");
        assert_eq!(
            errors(&text),
            "/etc/cdc/cdc.toml:10: tables[0].filter.price.gtt: unknown operator; did you mean \"gt\"?"
        );
    }

    #[test]
    fn filter_problems_in_a_filter_section_name_their_own_line() {
        let text = format!("{MINIMAL}[tables.filter]\nstate = \"live\"\nprice = {{ in = [] }}\n");
        assert_eq!(
            errors(&text),
            "/etc/cdc/cdc.toml:12: tables[0].filter.price.in: an empty list matches no row; list at least one value"
        );
    }

    #[test]
    fn settings_paths_are_relative_to_the_config_folder() {
        let text = with_table_keys("settings = \"/abs/items.json\"");
        assert_eq!(
            load_with(&text, &[]).unwrap().tables[0].settings.as_deref(),
            Some(Path::new("/abs/items.json"))
        );
        let text = with_table_keys("settings = \"items.json\"");
        let config = load_str(&text, Path::new("cdc.toml")).unwrap();
        assert_eq!(config.tables[0].settings.as_deref(), Some(Path::new("items.json")));
    }

    #[test]
    fn keys_that_are_not_bare_are_quoted_in_paths() {
        let text = format!("{MINIMAL}\n[sinks.\"my sink\"]\ntype = \"stdout\"\n");
        assert_eq!(
            errors(&text),
            "/etc/cdc/cdc.toml:11: sinks.\"my sink\": defined but no [[tables]] entry sends to it; add \"my sink\" to a table's sinks, or remove it"
        );
    }

    #[test]
    fn suggestions_need_a_close_match() {
        assert_eq!(suggest("slott", &["url", "slot"]), Some("slot"));
        assert_eq!(suggest("publicaton", &["slot", "publication"]), Some("publication"));
        assert_eq!(suggest("xy", &["id", "ops"]), None);
        assert_eq!(suggest("completely", &["slot"]), None);
    }
}
