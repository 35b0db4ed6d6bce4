//! The search sink's dead letters: an action the index refused for itself (or an event no
//! document id could be made for), stored in `cdc.dead_letters` so the slot can advance.
//!
//! The payload is JSON: `{"action": "index" | "delete" | null, "index", "id", "version",
//! "document", "event"}`, the event as cdc serializes it everywhere; action, id and document
//! show what was refused. `cdc dead-letters replay` encodes the event again under the current
//! mapping and sends it with the same version, so a newer write that landed since wins.

use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio_postgres::Client;

use super::config::SearchConfig;
use super::encoder::{self, index_name, Action, Write};
use super::index;
use super::request_builder;
use super::retry::{self, Outcome};
use super::rows::TableRows;
use super::service::Service;
use super::sink::{retry_forever, Shared};
use crate::config::TableMapping;
use crate::event::{Event, Lsn, Op, Position, Row, TableName, Value};
use crate::state::{self, dead_letters};

pub const KIND: &str = "search";

pub struct Letter {
    pub target: String,
    pub payload: String,
    pub error: String,
}

/// What a dead letter's payload holds.
#[derive(Serialize, serde::Deserialize)]
pub struct Payload<'a> {
    pub action: Option<String>,
    pub index: Option<String>,
    pub id: Option<String>,
    pub version: Option<u64>,
    #[serde(borrow)]
    pub document: Option<&'a RawValue>,
    #[serde(borrow)]
    pub event: &'a RawValue,
}

pub fn action_payload(action: &Action) -> String {
    let event = raw(action.event.to_json());
    // An index whose document could not be read back stays an index, without its document.
    let (verb, document) = match &action.write {
        Write::Index(doc) => ("index", Some(raw(doc))),
        Write::IndexAfterRead { .. } => ("index", None),
        Write::Delete => ("delete", None),
    };
    let payload = Payload {
        action: Some(verb.to_string()),
        index: Some(action.doc.index.to_string()),
        id: Some(action.doc.id.clone()),
        version: Some(action.version),
        document,
        event,
    };
    serde_json::to_string(&payload).expect("a payload always serializes")
}

pub fn unencodable_payload(event: &Event) -> String {
    let payload = Payload {
        action: None,
        index: None,
        id: None,
        version: None,
        document: None,
        event: raw(event.to_json()),
    };
    serde_json::to_string(&payload).expect("a payload always serializes")
}

/// Stores events no document could be made for (the encoder refused them: a NULL or missing id
/// column) as dead letters of `alias`, with one log line. The sink and the rebuild's copy both
/// call it, so such a row is a dead letter whichever path meets it.
pub async fn store_unencodable(shared: &Shared, alias: &str, refused: &[(Arc<Event>, String)]) {
    let Some((first, error)) = refused.first() else {
        return;
    };
    tracing::error!(sink = %shared.name, table = %first.table, event = %first.id(), "cannot make a document for {} row change(s), stored as dead letters (`cdc dead-letters list`); the first: {error}", refused.len());
    let n = refused.len() as u64;
    shared.stats.dead.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    shared.health.metrics.dead_letters.inc_by(n);
    let letters = refused
        .iter()
        .map(|(event, error)| Letter {
            target: alias.to_string(),
            payload: unencodable_payload(event),
            error: error.clone(),
        })
        .collect();
    store(shared, letters).await;
}

fn raw(json: &[u8]) -> &RawValue {
    serde_json::from_slice(json).expect("cdc's own JSON is valid")
}

/// Stores the letters, retrying until Postgres takes them: acknowledging depends on it.
pub async fn store(shared: &Shared, letters: Vec<Letter>) {
    retry_forever(shared, "storing dead letters in Postgres", || async {
        let client = shared.pg.client().await?;
        state::ensure_schema(&client).await?;
        let rows: Vec<dead_letters::NewDeadLetter> = letters
            .iter()
            .map(|l| dead_letters::NewDeadLetter {
                sink: &shared.name,
                kind: KIND,
                target: &l.target,
                payload: &l.payload,
                error: &l.error,
                attempts: 1,
            })
            .collect();
        dead_letters::insert_many(&client, &rows).await?;
        Ok(())
    })
    .await
}

/// What a replay did.
#[derive(Debug, PartialEq, Eq)]
pub enum Replayed {
    /// The node took it (or holds something newer): the dead letter can go.
    Delivered(String),
    /// The node refused it again, for this reason.
    Refused(String),
}

/// Delivers a dead letter's event again under the current configuration (so a fixed mapping,
/// projection or id applies), with its original version: a newer write that landed since
/// wins. The document is the row as it is now, read by key and converted as the stream
/// converts it; a row deleted since (or out of the mapping's filter now) becomes a delete.
pub async fn replay(
    sink: &str,
    config: &SearchConfig,
    mappings: &[TableMapping],
    pg: &Client,
    letter: &dead_letters::DeadLetter,
) -> anyhow::Result<Replayed> {
    let payload: Payload = serde_json::from_str(&letter.payload)
        .context("the dead letter's payload is not what the search sink writes")?;
    let stored = rebuild_event(payload.event.get())?;
    let mapping = mappings
        .iter()
        .find(|m| {
            let alias = index_name(m);
            m.table == *stored.table
                && m.sinks.iter().any(|s| s == sink)
                && (*alias == letter.target || index::building_alias(&alias) == letter.target)
        })
        .with_context(|| {
            format!(
                "no [[tables]] mapping sends {} to sink {sink} and index {} any more",
                stored.table, letter.target
            )
        })?;
    let mut event = Arc::new(stored);
    let mut actions = match encoder::actions(&event, mapping) {
        Ok(actions) => actions,
        Err(e) if event.op == Op::Delete => return Ok(Replayed::Refused(e.to_string())),
        // The stored row made no document id (a NULL id column): the row as it is now, fixed
        // since, may.
        Err(e) => {
            let Some(row) = current_row(pg, &event).await? else {
                return Ok(Replayed::Delivered(format!("the row is gone; nothing to write ({e})")));
            };
            let new = Row(row.0.into_iter().filter(|(name, _)| mapping.keeps(name)).collect());
            event = Arc::new(event.with_rows(event.key.clone(), None, Some(new), None, Op::Create));
            match encoder::actions(&event, mapping) {
                Ok(actions) => actions,
                Err(e) => return Ok(Replayed::Refused(format!("{e} (in the row as it is now too)"))),
            }
        }
    };
    let current = match actions.iter().any(|a| a.write != Write::Delete) {
        true => current_row(pg, &event).await?,
        false => None,
    };
    for action in &mut actions {
        if action.write != Write::Delete {
            action.write = write_for(action, &event, mapping, current.as_ref())?;
        }
    }
    let service = Service::new(config)?;
    let reply = service.bulk(request_builder::build(&actions)).await?;
    let outcomes = retry::classify(reply.status, &reply.body, actions.len()).map_err(|f| anyhow::anyhow!(f.reason))?;
    let mut done = Vec::new();
    for (action, outcome) in actions.iter().zip(outcomes) {
        let verb = if action.write == Write::Delete {
            "deleted"
        } else {
            "indexed"
        };
        match outcome {
            Outcome::Done => done.push(format!("{verb} {}/{}", action.doc.index, action.doc.id)),
            Outcome::Stale => done.push(format!(
                "{}/{} already holds a newer version",
                action.doc.index, action.doc.id
            )),
            Outcome::Dead(reason) => return Ok(Replayed::Refused(reason)),
            Outcome::Retry(reason) => anyhow::bail!("the node could not take it now: {reason}"),
        }
    }
    Ok(Replayed::Delivered(done.join(", ")))
}

/// The event's row as it is now (every column a document can hold), looked up by its current
/// key; None when it is gone (or its table is).
async fn current_row(pg: &Client, event: &Event) -> anyhow::Result<Option<Row>> {
    let Some(rows) = TableRows::load(pg, &event.table).await? else {
        return Ok(None);
    };
    let key = rows
        .key_of(event)
        .map_err(|why| anyhow::anyhow!("cannot look up the row of {}: {why}", event.table))?;
    let found = rows
        .read(pg, &key.columns, &[key.inputs], &rows.document_columns())
        .await?;
    Ok(found.into_iter().next().flatten())
}

/// What a replayed index action writes now: the current row's document when the row still
/// passes the filter and still makes this document id, a delete otherwise.
fn write_for(
    action: &Action,
    event: &Arc<Event>,
    mapping: &TableMapping,
    current: Option<&Row>,
) -> anyhow::Result<Write> {
    let Some(row) = current else { return Ok(Write::Delete) };
    if mapping.filter.as_ref().and_then(|f| f.matches(row)) == Some(false) {
        return Ok(Write::Delete);
    }
    let new = Row(row.0.iter().filter(|(name, _)| mapping.keeps(name)).cloned().collect());
    let now = Arc::new(event.with_rows(event.key.clone(), None, Some(new), None, Op::Create));
    Ok(encoder::actions(&now, mapping)?
        .into_iter()
        .find(|a| a.doc == action.doc)
        .map_or(Write::Delete, |a| a.write))
}

/// The event back from its JSON form, as far as the sink needs it: op, table, rows (columns in
/// their order, numbers with their digits), version.
fn rebuild_event(json: &str) -> anyhow::Result<Event> {
    #[derive(serde::Deserialize)]
    struct Stored {
        op: String,
        schema: String,
        table: String,
        key: Option<OrderedRow>,
        old: Option<OrderedRow>,
        new: Option<OrderedRow>,
        #[serde(default)]
        unchanged_toast: Vec<String>,
        commit_lsn: String,
    }
    let stored: Stored = serde_json::from_str(json).context("the stored event is not cdc's event JSON")?;
    let op = Op::parse(&stored.op).with_context(|| format!("unknown op {:?}", stored.op))?;
    let commit_lsn =
        Lsn::parse(&stored.commit_lsn).with_context(|| format!("bad commit_lsn {:?}", stored.commit_lsn))?;
    let table = Arc::new(TableName {
        schema: stored.schema,
        name: stored.table,
    });
    let position = Position {
        commit_lsn,
        ..Position::default()
    };
    // The event's JSON leaves unchanged TOAST values out; they come back as such, never null.
    let new = stored.new.map(OrderedRow::into_row).map(|mut new| {
        new.0.extend(
            stored
                .unchanged_toast
                .into_iter()
                .map(|name| (Arc::from(name), Value::UnchangedToast)),
        );
        new
    });
    Ok(Event::new(
        op,
        table,
        stored.key.map(OrderedRow::into_row),
        stored.old.map(OrderedRow::into_row),
        new,
        None,
        position,
    ))
}

/// A row's JSON object with its columns in their order (serde_json's own map sorts them, which
/// would reorder a composite document id) and each value's text as written.
struct OrderedRow(Vec<(String, Box<RawValue>)>);

impl<'de> serde::Deserialize<'de> for OrderedRow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OrderedRow;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object of column values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<OrderedRow, A::Error> {
                let mut columns = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    columns.push(entry);
                }
                Ok(OrderedRow(columns))
            }
        }
        d.deserialize_map(Visitor)
    }
}

impl OrderedRow {
    fn into_row(self) -> Row {
        Row(self
            .0
            .into_iter()
            .map(|(name, value)| (Arc::from(name), value_of(value)))
            .collect())
    }
}

/// A JSON value as the `Value` cdc would have decoded: scalars as themselves (numbers with
/// their digits, so ids and keys print the same), the rest embedded verbatim.
fn value_of(raw: Box<RawValue>) -> Value {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'n') => Value::Null,
        Some(b't') => Value::Bool(true),
        Some(b'f') => Value::Bool(false),
        Some(b'"') => match serde_json::from_str::<String>(text) {
            Ok(s) => Value::String(s.into()),
            Err(_) => Value::Json(raw),
        },
        Some(b'[' | b'{') => Value::Json(raw),
        _ => match text.parse::<i64>() {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Number(text.into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_event_comes_back_with_its_rows_and_version() {
        let json = r#"{"id":"0/10:0","op":"update","schema":"app","table":"docs","key":{"id":7},"old":null,
            "new":{"id":7,"title":"t","price":1.50,"tags":["a"]},"changed":null,"unchanged_toast":["body"],"lsn":"0/9","commit_lsn":"0/10","xid":1,"committed_at":"x"}"#;
        let event = rebuild_event(json).unwrap();
        assert_eq!(
            (event.op, event.table.to_string(), event.commit_lsn),
            (Op::Update, "app.docs".to_string(), Lsn(0x10))
        );
        let new = event.new.unwrap();
        let names: Vec<&str> = new.0.iter().map(|(name, _)| &**name).collect();
        assert_eq!(
            names,
            ["id", "title", "price", "tags", "body"],
            "columns keep their order"
        );
        assert_eq!(new.get("id"), Some(&Value::Int(7)));
        assert_eq!(new.get("title"), Some(&Value::String("t".into())));
        assert_eq!(
            new.get("price").and_then(|v| v.as_text()).as_deref(),
            Some("1.50"),
            "digits kept"
        );
        assert_eq!(new.get("tags").and_then(|v| v.as_text()).as_deref(), Some(r#"["a"]"#));
        assert_eq!(
            new.get("body"),
            Some(&Value::UnchangedToast),
            "a value Postgres did not send stays unknown, never null"
        );
    }
}
