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
use super::retry::{self, Outcome};
use super::service::Service;
use super::sink::{retry_forever, Shared};
use super::{request_builder, toast};
use crate::config::TableMapping;
use crate::event::{quote_ident, Event, Lsn, Op, Position, Row, TableName, Value};
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
    let document = match &action.write {
        Write::Index(doc) => Some(raw(doc)),
        _ => None,
    };
    let payload = Payload {
        action: Some(if document.is_some() { "index" } else { "delete" }.to_string()),
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

fn raw(json: &[u8]) -> &RawValue {
    serde_json::from_slice(json).expect("cdc's own JSON is valid")
}

/// Stores the letters, retrying until Postgres takes them: acknowledging depends on it.
pub async fn store(shared: &Shared, letters: Vec<Letter>) {
    retry_forever(&shared.health, "storing dead letters in Postgres", || async {
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
/// wins. A row deleted since becomes a delete.
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
        .find(|m| m.table == *stored.table && m.sinks.iter().any(|s| s == sink) && *index_name(m) == letter.target)
        .with_context(|| {
            format!(
                "no [[tables]] mapping sends {} to sink {sink} and index {} any more",
                stored.table, letter.target
            )
        })?;
    let project = |row: &Option<Row>| {
        row.as_ref()
            .map(|r| Row(r.0.iter().filter(|(name, _)| mapping.keeps(name)).cloned().collect()))
    };
    let event = Arc::new(stored.with_rows(
        stored.key.clone(),
        project(&stored.old),
        project(&stored.new),
        None,
        stored.op,
    ));
    let mut actions = toast::read_back(pg, encoder::actions(&event, mapping)?).await?;
    if !row_exists(pg, &event).await? {
        for action in &mut actions {
            action.write = Write::Delete;
        }
    }
    let service = Service::new(config)?;
    let reply = service
        .bulk(request_builder::build(&actions))
        .await
        .with_context(|| format!("cannot reach {}", service.url))?;
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

/// Whether the event's row (by its current key) still exists.
async fn row_exists(pg: &Client, event: &Event) -> anyhow::Result<bool> {
    let Some(key) = toast::key_values(event) else {
        return Ok(true);
    };
    let conditions: Vec<String> = key
        .iter()
        .enumerate()
        .map(|(i, (column, _))| format!("t.{}::text = ${}", quote_ident(column), i + 1))
        .collect();
    let sql = format!(
        "SELECT 1 FROM {} t WHERE {}",
        event.table.quoted(),
        conditions.join(" AND ")
    );
    let values: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = key
        .iter()
        .map(|(_, v)| v as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    Ok(pg.query_opt(&sql, &values).await?.is_some())
}

/// The event back from its JSON form, as far as the sink needs it: op, table, rows, version.
fn rebuild_event(json: &str) -> anyhow::Result<Event> {
    #[derive(serde::Deserialize)]
    struct Stored {
        op: String,
        schema: String,
        table: String,
        key: Option<serde_json::Map<String, serde_json::Value>>,
        old: Option<serde_json::Map<String, serde_json::Value>>,
        new: Option<serde_json::Map<String, serde_json::Value>>,
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
    // The event's JSON leaves unchanged TOAST values out; they come back as such, so that the
    // encoder reads them back instead of writing a document without them.
    let new = stored.new.map(row).map(|mut new| {
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
        stored.key.map(row),
        stored.old.map(row),
        new,
        None,
        position,
    ))
}

fn row(object: serde_json::Map<String, serde_json::Value>) -> Row {
    Row(object
        .into_iter()
        .map(|(name, value)| (Arc::from(name), value_of(value)))
        .collect())
}

/// A JSON value as the `Value` cdc would have decoded: scalars as themselves (so ids and keys
/// print the same), the rest embedded verbatim.
fn value_of(json: serde_json::Value) -> Value {
    use serde_json::Value as J;
    match json {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Number(n.to_string().into()),
        },
        J::String(s) => Value::String(s.into()),
        other => Value::Json(RawValue::from_string(other.to_string()).expect("serde_json writes valid JSON")),
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
        assert_eq!(new.get("id"), Some(&Value::Int(7)));
        assert_eq!(new.get("title"), Some(&Value::String("t".into())));
        assert_eq!(new.get("price").and_then(|v| v.as_text()).as_deref(), Some("1.5"));
        assert_eq!(new.get("tags").and_then(|v| v.as_text()).as_deref(), Some(r#"["a"]"#));
        assert_eq!(
            new.get("body"),
            Some(&Value::UnchangedToast),
            "a value Postgres did not send stays unknown, never null"
        );
    }
}
