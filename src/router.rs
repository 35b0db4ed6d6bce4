//! The router: table mappings → per-sink streams.
//!
//! For each event, every `[[tables]]` mapping of its table applies its filter, its ops and its
//! projection (`route`, a pure function), and the resulting event goes — as one shared
//! `Arc<Event>`, serialized at most once — to each sink the mapping names. Every transaction's
//! commit goes to every sink, so each can acknowledge it.
//!
//! Events and commits are not sent one by one: each sink has a pending run that the source
//! fills while it reads what the replication client has at hand, and hands over with
//! [`Router::flush`] before it waits for more (or when a run is full). Each send to a parked
//! sink wakes a thread; one-row transactions sent one by one cost several wake-ups per change,
//! a run costs one. A run holds at most [`RUN_MAX`] messages, so memory stays bounded in
//! events as well as in messages.
//!
//! A filter defines the set of rows a mapping's sinks see. An update that moves a row into the
//! set becomes a `create`; one that moves it out becomes a `delete` (with the old row); an
//! update outside the set is dropped. An update that changes only columns outside the
//! projection is dropped too: no sink could see a difference.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::admin::metrics::SinkStats;
use crate::config::TableMapping;
use crate::event::{Event, Lsn, Op, Row, TableName};
use crate::sinks::SinkMsg;

/// Messages a sink's pending run holds before it must be handed over (within a transaction
/// too: nothing holds a whole transaction).
pub const RUN_MAX: usize = 1024;

/// A mapped table: its mappings and its event counters.
struct Table {
    routes: Vec<Route>,
    /// Events received, by operation (`admin::metrics`).
    received: [prometheus_client::metrics::counter::Counter; 4],
}

struct Route {
    mapping: Arc<TableMapping>,
    /// Indexes into `Router::sinks`.
    sinks: Vec<usize>,
}

struct Sink {
    name: String,
    tx: mpsc::Sender<SinkMsg>,
    /// Its figures: `handed` tells `/ready` that changes wait for it.
    stats: Arc<SinkStats>,
    /// Routed, not yet handed to the sink's channel.
    run: Vec<SinkMsg>,
}

pub struct Router {
    /// Looked up twice per change (`wants`, `route`): a fast hash, as the keys are the
    /// configuration's own table names.
    tables: HashMap<TableName, Table, rustc_hash::FxBuildHasher>,
    sinks: Vec<Sink>,
    /// Commits routed since the last flush.
    commits: usize,
}

/// A sink's channel closed: the sink task ended (it failed; its error is reported by its task).
#[derive(Debug, thiserror::Error)]
#[error("sink {0} stopped")]
pub struct SinkStopped(pub String);

impl Router {
    pub fn new(mappings: &[TableMapping], sinks: Vec<(String, mpsc::Sender<SinkMsg>)>) -> Router {
        let metrics = crate::admin::metrics::global();
        let mut tables: HashMap<TableName, Table, rustc_hash::FxBuildHasher> = HashMap::default();
        for mapping in mappings {
            let indexes = mapping
                .sinks
                .iter()
                .filter_map(|name| sinks.iter().position(|(n, _)| n == name))
                .collect();
            let table = tables.entry(mapping.table.clone()).or_insert_with(|| Table {
                routes: Vec::new(),
                received: metrics.table_counters(&mapping.table),
            });
            table.routes.push(Route {
                mapping: Arc::new(mapping.clone()),
                sinks: indexes,
            });
        }
        Router {
            tables,
            sinks: sinks
                .into_iter()
                .map(|(name, tx)| Sink {
                    stats: crate::admin::metrics::sink(&name),
                    name,
                    tx,
                    run: Vec::new(),
                })
                .collect(),
            commits: 0,
        }
    }

    /// Every `[[tables]]` mapping.
    pub fn mappings(&self) -> impl Iterator<Item = &TableMapping> {
        self.tables
            .values()
            .flat_map(|t| &t.routes)
            .map(|route| &*route.mapping)
    }

    /// Drops every sender (and what was not flushed): each sink sees its channel close,
    /// delivers what it holds and ends.
    pub fn close(&mut self) {
        self.tables.clear();
        self.sinks.clear();
    }

    /// A sink whose task has ended (its channel closed: it failed), if any.
    pub fn stopped_sink(&self) -> Option<SinkStopped> {
        self.sinks
            .iter()
            .find(|s| s.tx.is_closed())
            .map(|s| SinkStopped(s.name.clone()))
    }

    /// The columns a mapping of `table` names for its filter, key or id that the table (as a
    /// Relation message now describes it: `columns`) no longer has. Routing on would be wrong
    /// without a word: a filter cannot decide on a missing column, so every insert would be
    /// dropped. Err says which mapping names what, and what to do.
    pub fn check_columns(&self, table: &TableName, columns: &[&str]) -> Result<(), String> {
        let Some(t) = self.tables.get(table) else {
            return Ok(());
        };
        for route in &t.routes {
            let m = &*route.mapping;
            let named = m
                .filter
                .iter()
                .flat_map(|f| f.columns())
                .chain(m.key.iter().flatten().map(String::as_str))
                .chain(m.id.iter().flatten().map(String::as_str));
            let mut missing: Vec<&str> = named.filter(|c| !columns.contains(c)).collect();
            missing.dedup();
            if !missing.is_empty() {
                return Err(format!(
                    "table {table} no longer has the column(s) {missing:?} that its [[tables]] mapping names in `filter`, `key` or `id` \
                     (renamed or dropped?); its columns are now: {}. Fix the mapping (`cdc check` checks it), then start `cdc run` again: \
                     nothing after the last confirmed position was acknowledged, so nothing is lost",
                    columns.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Whether any mapping wants this table (unmapped tables are ignored).
    pub fn wants(&self, table: &TableName) -> bool {
        self.tables.contains_key(table)
    }

    /// Adds the event, as each mapping makes it, to the pending runs of the mapping's sinks.
    pub fn route(&mut self, event: Event) {
        let Some(table) = self.tables.get(&*event.table) else {
            return;
        };
        table.received[crate::admin::metrics::op_index(event.op)].inc();
        let event = Arc::new(event);
        for r in &table.routes {
            let routed = if passes_unchanged(&r.mapping, &event) {
                event.clone()
            } else {
                match route(&event, &r.mapping) {
                    Some(routed) => Arc::new(routed),
                    None => continue,
                }
            };
            for &i in &r.sinks {
                let sink = &mut self.sinks[i];
                sink.stats.handed(routed.commit_lsn.0);
                sink.run.push(SinkMsg::Event {
                    event: routed.clone(),
                    mapping: r.mapping.clone(),
                });
            }
        }
    }

    /// Adds the transaction's commit to every sink's pending run.
    pub fn commit(&mut self, commit_lsn: Lsn, end_lsn: Lsn) {
        for sink in &mut self.sinks {
            sink.run.push(SinkMsg::Commit { commit_lsn, end_lsn });
        }
        self.commits += 1;
    }

    /// Whether a pending run is full: it must be flushed before more is routed.
    pub fn run_full(&self) -> bool {
        self.sinks.iter().any(|s| s.run.len() >= RUN_MAX)
    }

    /// Whether a whole transaction waits in the pending runs: worth a flush, since only a
    /// commit lets a sink acknowledge anything.
    pub fn has_commits(&self) -> bool {
        self.commits > 0
    }

    /// Hands every pending run to its sink's channel, waiting while a channel is full (the
    /// back-pressure that slows the source). One reservation per run: the first message wakes
    /// the sink, the others find it awake.
    pub async fn flush(&mut self) -> Result<(), SinkStopped> {
        for sink in &mut self.sinks {
            while !sink.run.is_empty() {
                let n = sink.run.len().min(sink.tx.max_capacity());
                let permits = sink
                    .tx
                    .reserve_many(n)
                    .await
                    .map_err(|_| SinkStopped(sink.name.clone()))?;
                for (permit, msg) in permits.zip(sink.run.drain(..n)) {
                    permit.send(msg);
                }
            }
        }
        self.commits = 0;
        Ok(())
    }
}

/// Whether `route` would return the event as it is (the mapping has no filter, projection or key
/// of its own, and the event changed something): the common case, which then shares the
/// source's event instead of copying its rows.
fn passes_unchanged(mapping: &TableMapping, event: &Event) -> bool {
    mapping.filter.is_none()
        && mapping.columns.is_none()
        && mapping.exclude_columns.is_empty()
        && mapping.key.is_none()
        && mapping.ops.contains(&event.op)
        && !(event.op == Op::Update && event.changed.as_ref().is_some_and(|c| c.is_empty()))
}

/// Applies one mapping to one event: filter (with move-in/move-out), ops, projection.
pub fn route(event: &Event, mapping: &TableMapping) -> Option<Event> {
    let mut membership_unknown = false;
    let op = match &mapping.filter {
        None => event.op,
        Some(filter) => {
            let was_in = event.old.as_ref().and_then(|old| filter.matches(old));
            let is_in = event.new.as_ref().and_then(|new| filter.matches(new));
            match (event.op, was_in, is_in) {
                (Op::Truncate, _, _) => Op::Truncate,
                (Op::Create, _, Some(true)) => Op::Create,
                (Op::Create, _, _) => return None,
                (Op::Delete, Some(false), _) => return None,
                (Op::Delete, _, _) => Op::Delete,
                (Op::Update, Some(false), Some(true)) => Op::Create,
                (Op::Update, _, Some(true)) => Op::Update,
                (Op::Update, Some(false), Some(false)) => return None,
                (Op::Update, _, Some(false)) => Op::Delete,
                // The filter's column is an unchanged TOAST value and the old row is unknown:
                // the row's membership did not change through this column; pass the update.
                (Op::Update, _, None) => {
                    membership_unknown = true;
                    Op::Update
                }
            }
        }
    };
    if !mapping.ops.contains(&op) {
        return None;
    }
    let project = |row: &Option<Row>| -> Option<Row> {
        row.as_ref()
            .map(|r| Row(r.0.iter().filter(|(name, _)| mapping.keeps(name)).cloned().collect()))
    };
    let changed = event
        .changed
        .as_ref()
        .map(|c| c.iter().filter(|name| mapping.keeps(name)).cloned().collect::<Vec<_>>());
    let key = match &mapping.key {
        None => event.key.clone(),
        Some(columns) => {
            // The old row first: a key change carries the old key.
            let source = if op == Op::Create {
                event.new.as_ref()
            } else {
                event.old.as_ref().or(event.new.as_ref())
            };
            source.map(|row| {
                Row(columns
                    .iter()
                    .filter_map(|c| row.0.iter().find(|(n, _)| &**n == c).cloned())
                    .collect())
            })
        }
    };
    // Taken from the unprojected row: the projection may drop the key columns from `new`.
    let new_key = match (op, &key, &event.new) {
        (Op::Delete, ..) => None,
        (_, Some(key), Some(new)) => key.moved_to(new),
        _ => None,
    };
    // An update of columns the projection drops is not sent, unless it moved the row to another
    // key (the table's or the mapping's own `key`): receivers must learn where the row went.
    if op == Op::Update
        && changed.as_ref().is_some_and(|c| c.is_empty())
        && new_key.is_none()
        && event.key_changed() != Some(true)
    {
        return None;
    }
    let new = if op == Op::Delete { None } else { project(&event.new) };
    let mut routed = event.with_rows(key, project(&event.old), new, changed, op);
    routed.new_key = new_key;
    routed.membership_unknown = membership_unknown;
    Some(routed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Filter;
    use crate::event::{Position, Value};

    fn row(pairs: &[(&str, Value)]) -> Row {
        Row(pairs.iter().map(|(k, v)| (Arc::from(*k), v.clone())).collect())
    }

    fn s(v: &str) -> Value {
        Value::String(v.into())
    }

    fn mapping() -> TableMapping {
        TableMapping::new(TableName::parse("items"), vec!["out".into()])
    }

    fn update(old: Option<Row>, new: Row, changed: Option<&[&str]>) -> Event {
        let key = Some(row(&[("id", Value::Int(1))]));
        Event::new(
            Op::Update,
            Arc::new(TableName::parse("items")),
            key,
            old,
            Some(new),
            changed.map(|c| c.iter().map(|n| Arc::from(*n)).collect()),
            Position::default(),
        )
    }

    fn published_only() -> TableMapping {
        let mut m = mapping();
        let doc = toml_edit::Document::parse(r#"filter = { state = "published" }"#.to_string()).unwrap();
        m.filter = Some(Filter::parse(doc.as_table().get("filter").unwrap()).unwrap());
        m
    }

    #[test]
    fn projection_keeps_only_listed_columns() {
        let mut m = mapping();
        m.columns = Some(vec!["id".into(), "title".into()]);
        let e = update(
            None,
            row(&[("id", Value::Int(1)), ("title", s("b")), ("secret", s("x"))]),
            None,
        );
        let routed = route(&e, &m).unwrap();
        assert_eq!(routed.new.unwrap(), row(&[("id", Value::Int(1)), ("title", s("b"))]));
    }

    #[test]
    fn an_update_of_only_excluded_columns_is_dropped() {
        let mut m = mapping();
        m.exclude_columns = vec!["views".into()];
        let old = row(&[("id", Value::Int(1)), ("views", Value::Int(1))]);
        let new = row(&[("id", Value::Int(1)), ("views", Value::Int(2))]);
        assert!(route(&update(Some(old), new, Some(&["views"])), &m).is_none());
    }

    #[test]
    fn an_update_that_changed_nothing_is_dropped_with_or_without_a_projection() {
        let same = row(&[("id", Value::Int(1)), ("title", s("a"))]);
        let e = update(Some(same.clone()), same, Some(&[]));
        assert!(!passes_unchanged(&mapping(), &e));
        assert!(route(&e, &mapping()).is_none());
    }

    #[test]
    fn ops_not_listed_are_dropped() {
        let mut m = mapping();
        m.ops = vec![Op::Create];
        let e = update(None, row(&[("id", Value::Int(1))]), None);
        assert!(route(&e, &m).is_none());
    }

    #[test]
    fn a_filter_turns_move_in_into_create_and_move_out_into_delete() {
        let m = published_only();
        let draft = row(&[("id", Value::Int(1)), ("state", s("draft"))]);
        let published = row(&[("id", Value::Int(1)), ("state", s("published"))]);

        let move_in = route(&update(Some(draft.clone()), published.clone(), Some(&["state"])), &m).unwrap();
        assert_eq!(move_in.op, Op::Create);

        let move_out = route(&update(Some(published.clone()), draft.clone(), Some(&["state"])), &m).unwrap();
        assert_eq!(move_out.op, Op::Delete);
        assert!(move_out.new.is_none());

        assert!(route(&update(Some(draft.clone()), draft.clone(), Some(&[])), &m).is_none());
        // without the old row the sink must assume the row may have been in the set
        assert_eq!(route(&update(None, draft, None), &m).unwrap().op, Op::Delete);
        assert_eq!(route(&update(None, published, None), &m).unwrap().op, Op::Update);
    }

    #[test]
    fn a_key_change_the_projection_hides_is_still_sent_with_the_new_key() {
        let mut m = mapping();
        m.columns = Some(vec!["title".into()]);
        let e = update(None, row(&[("id", Value::Int(2)), ("title", s("t"))]), None);
        let routed = route(&e, &m).unwrap();
        assert_eq!(routed.key, Some(row(&[("id", Value::Int(1))])));
        assert_eq!(routed.new_key, Some(row(&[("id", Value::Int(2))])));
        assert_eq!(routed.key_changed(), Some(true));

        // The mapping's own key, changed by an update of nothing else the projection keeps.
        let mut m = mapping();
        m.key = Some(vec!["sku".into()]);
        m.columns = Some(vec!["title".into()]);
        let old = row(&[("id", Value::Int(1)), ("sku", s("A")), ("title", s("t"))]);
        let new = row(&[("id", Value::Int(1)), ("sku", s("B")), ("title", s("t"))]);
        let routed = route(&update(Some(old), new, Some(&["sku"])), &m).expect("the key change is sent");
        assert_eq!(routed.key, Some(row(&[("sku", s("A"))])));
        assert_eq!(routed.new_key, Some(row(&[("sku", s("B"))])));

        // An unchanged key under the projection: no new key, and the event is not a key change.
        let e = update(None, row(&[("id", Value::Int(1)), ("title", s("t"))]), None);
        let routed = route(&e, &m_title_only()).unwrap();
        assert_eq!(routed.new_key, None);
        assert_eq!(routed.key_changed(), Some(false));
    }

    fn m_title_only() -> TableMapping {
        let mut m = mapping();
        m.columns = Some(vec!["title".into()]);
        m
    }

    #[test]
    fn an_update_the_filter_cannot_decide_passes_marked_for_a_second_look() {
        let m = published_only();
        let unsent = row(&[("id", Value::Int(1)), ("state", Value::UnchangedToast)]);
        let routed = route(&update(None, unsent, None), &m).unwrap();
        assert_eq!((routed.op, routed.membership_unknown), (Op::Update, true));
        let decided = row(&[("id", Value::Int(1)), ("state", s("published"))]);
        assert!(!route(&update(None, decided, None), &m).unwrap().membership_unknown);
    }

    #[test]
    fn a_mapping_key_replaces_the_primary_key() {
        let mut m = mapping();
        m.key = Some(vec!["sku".into()]);
        let e = update(None, row(&[("id", Value::Int(1)), ("sku", s("A-1"))]), None);
        assert_eq!(route(&e, &m).unwrap().key.unwrap(), row(&[("sku", s("A-1"))]));
    }
}
