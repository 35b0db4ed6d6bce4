//! `cdc rebuild-index` and `cdc verify`: a full resync of a search index that is consistent with
//! the live stream and swapped in without downtime, and a proof that an index matches its table.
//!
//! - `table`: a mapped table read with SQL → the documents the stream would write;
//! - `snapshot`: the temporary slot with an exported snapshot (the split point P);
//! - `copy`: parallel workers copying the snapshot through the search sink's bulk path;
//! - `catchup`: the slot's changes after P into the new index, through the daemon's sink;
//! - `indexes`: the new index, its build settings, the atomic alias swap, leftovers;
//! - `progress`: progress bar or log lines;
//! - `job`: one table's rebuild, start to end;
//! - `verify`: index and table compared in id order.

pub mod catchup;
pub mod copy;
pub mod indexes;
pub mod job;
pub mod progress;
pub mod snapshot;
pub mod table;
pub mod verify;

use anyhow::bail;

use crate::config::{Config, SinkConfig, TableMapping};
use crate::event::TableName;
use crate::sinks::search::SearchConfig;

/// A mapping to rebuild or verify, with the search sink it names.
pub struct Target<'a> {
    pub sink: &'a str,
    pub search: &'a SearchConfig,
    pub mapping: &'a TableMapping,
}

/// The mappings of `table` (or of every table with `all`) that send to a search sink (`sink`
/// when given). An empty selection is an error that says what is mapped.
pub fn targets<'a>(
    config: &'a Config,
    table: Option<&str>,
    all: bool,
    sink: Option<&str>,
) -> anyhow::Result<Vec<Target<'a>>> {
    let table = table.map(TableName::parse);
    if table.is_none() && !all {
        bail!("name a table (--table schema.table) or use --all");
    }
    if let Some(name) = sink {
        match config.sinks.get(name) {
            Some(SinkConfig::Elasticsearch(_)) => {}
            Some(other) => bail!("sink {name} is a {} sink, not a search sink", other.type_name()),
            None => bail!("no sink named {name} in {}", config.path.display()),
        }
    }
    let mut out = Vec::new();
    for mapping in &config.tables {
        if table.as_ref().is_some_and(|t| *t != mapping.table) {
            continue;
        }
        for name in &mapping.sinks {
            if sink.is_some_and(|s| s != name) {
                continue;
            }
            if let Some((name, SinkConfig::Elasticsearch(search))) = config.sinks.get_key_value(name) {
                out.push(Target {
                    sink: name,
                    search,
                    mapping,
                });
            }
        }
    }
    if out.is_empty() {
        let mapped: Vec<String> = config
            .tables
            .iter()
            .filter(|m| {
                m.sinks
                    .iter()
                    .any(|s| matches!(config.sinks.get(s), Some(SinkConfig::Elasticsearch(_))))
            })
            .map(|m| m.table.to_string())
            .collect();
        bail!(
            "no [[tables]] mapping sends {} to a search sink{}; mapped to search sinks: {}",
            table.map_or("any table".to_string(), |t| t.to_string()),
            sink.map(|s| format!(" named {s}")).unwrap_or_default(),
            if mapped.is_empty() {
                "none".to_string()
            } else {
                mapped.join(", ")
            }
        );
    }
    Ok(out)
}
