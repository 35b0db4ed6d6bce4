//! Event → bulk actions: which document (index alias + id) a row change touches, whether it
//! indexes or deletes it, its version, and the bytes of the action line and the document.
//!
//! Every write carries `version` = the transaction's commit LSN with `version_type =
//! external_gte`: a replay after a crash, or a request overtaking another, can never replace a
//! newer document with an older one. An update that changes the document id deletes the old
//! document and indexes the new one.

use std::sync::Arc;

use serde::ser::{SerializeMap, Serializer};

use crate::config::{Filter, TableMapping};
use crate::event::{Event, Op, Row, Value};

/// A document: the alias it lives under and its id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DocKey {
    pub index: Arc<str>,
    pub id: String,
}

/// What a bulk action does to its document.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Index this JSON document.
    Index(Vec<u8>),
    /// Index the row, once the values Postgres did not send (unchanged TOAST) are read back;
    /// with `filter`, only if the row read passes it (delete the document otherwise): the
    /// router could not decide it without those values.
    IndexAfterRead {
        missing: Vec<Arc<str>>,
        filter: Option<Filter>,
    },
    Delete,
}

/// One bulk action, with the event it came from (for dead letters and logs).
#[derive(Clone, Debug)]
pub struct Action {
    pub doc: DocKey,
    pub version: u64,
    pub write: Write,
    pub event: Arc<Event>,
}

impl Action {
    /// Roughly the bytes this action adds to a request.
    pub fn size(&self) -> usize {
        let body = match &self.write {
            Write::Index(doc) => doc.len(),
            // The re-read document is not known yet; the event's own size is a fair guess.
            Write::IndexAfterRead { .. } => 1024,
            Write::Delete => 0,
        };
        96 + self.doc.index.len() + self.doc.id.len() + body
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EncodeError {
    #[error("the document id column {0:?} is missing from the row (is it projected out by `columns`?)")]
    MissingIdColumn(String),
    #[error("the document id column {0:?} is null")]
    NullId(String),
    #[error("the event has no key to derive a document id from")]
    NoKey,
    /// The node refuses the whole bulk request for one such id (HTTP 400
    /// `action_request_validation_exception`), so it must never reach a request.
    #[error("the document id is {0} bytes long; search nodes accept 1 to 512 bytes (map `id` to shorter columns)")]
    UnusableId(usize),
}

/// The longest `_id` Elasticsearch and OpenSearch accept, in bytes.
const MAX_ID_BYTES: usize = 512;

/// The alias a mapping writes to: `index`, or the table's name.
pub fn index_name(mapping: &TableMapping) -> Arc<str> {
    Arc::from(mapping.index.as_deref().unwrap_or(&mapping.table.name))
}

/// The bulk actions for one routed event (not for truncate: the sink handles that).
pub fn actions(event: &Arc<Event>, mapping: &TableMapping) -> Result<Vec<Action>, EncodeError> {
    let index = index_name(mapping);
    let version = event.commit_lsn.0;
    let action = |id: String, write: Write| Action {
        doc: DocKey {
            index: index.clone(),
            id,
        },
        version,
        write,
        event: event.clone(),
    };
    match event.op {
        Op::Create | Op::Update => {
            let new = event.new.as_ref().ok_or(EncodeError::NoKey)?;
            let old_id = match event.op {
                Op::Update => previous_id(mapping, event),
                _ => None,
            };
            let id = match doc_id(mapping, event, [event.new_key.as_ref(), Some(new), event.key.as_ref()]) {
                Ok(id) => id,
                // The update set an id column to NULL: the document under the old id must go.
                // The row has no document until its id is set again (that update writes it).
                Err(EncodeError::NullId(_)) if old_id.is_some() => {
                    return Ok(old_id.into_iter().map(|old| action(old, Write::Delete)).collect());
                }
                Err(e) => return Err(e),
            };
            let mut out = Vec::with_capacity(2);
            if let Some(old_id) = old_id.filter(|old| *old != id) {
                out.push(action(old_id, Write::Delete));
            }
            let mut write = document(new, event.old.as_ref());
            if let (true, Some(filter)) = (event.membership_unknown, &mapping.filter) {
                let missing = match write {
                    Write::IndexAfterRead { missing, .. } => missing,
                    _ => Vec::new(),
                };
                write = Write::IndexAfterRead {
                    missing,
                    filter: Some(filter.clone()),
                };
            }
            out.push(action(id, write));
            Ok(out)
        }
        Op::Delete => match doc_id(mapping, event, [event.key.as_ref(), event.old.as_ref(), None]) {
            Ok(id) => Ok(vec![action(id, Write::Delete)]),
            // No document can have such an id: there is nothing to delete.
            Err(EncodeError::UnusableId(_)) => Ok(Vec::new()),
            Err(e) => Err(e),
        },
        Op::Truncate => Ok(Vec::new()),
    }
}

/// The id an update's row had before it: known when the key changed (or the whole old row was
/// sent); None means "the same as now", or an id no document can have.
fn previous_id(mapping: &TableMapping, event: &Event) -> Option<String> {
    match &mapping.id {
        Some(_) => doc_id(mapping, event, [event.old.as_ref(), None, None]).ok(),
        None => event
            .key_changed()
            .filter(|changed| *changed)
            .and_then(|_| doc_id(mapping, event, [event.key.as_ref(), None, None]).ok()),
    }
}

/// Joins the id columns' values with ':', taking each column from the first row that has it.
fn doc_id(mapping: &TableMapping, event: &Event, rows: [Option<&Row>; 3]) -> Result<String, EncodeError> {
    let key_columns;
    let columns: Vec<&str> = match &mapping.id {
        Some(columns) => columns.iter().map(String::as_str).collect(),
        None => {
            key_columns = event.key.as_ref().ok_or(EncodeError::NoKey)?;
            key_columns.0.iter().map(|(name, _)| &**name).collect()
        }
    };
    if columns.is_empty() {
        return Err(EncodeError::NoKey);
    }
    let mut id = String::new();
    for (i, column) in columns.iter().enumerate() {
        let value = rows
            .iter()
            .flatten()
            .find_map(|row| row.get(column).filter(|v| !v.is_unchanged_toast()))
            .ok_or_else(|| EncodeError::MissingIdColumn(column.to_string()))?;
        let text = value.as_text().ok_or_else(|| EncodeError::NullId(column.to_string()))?;
        if i > 0 {
            id.push(':');
        }
        id.push_str(&text);
    }
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(EncodeError::UnusableId(id.len()));
    }
    Ok(id)
}

/// The document for `new`, unchanged TOAST values taken from `old` (REPLICA IDENTITY FULL sends
/// them there); what neither row holds must be read back from Postgres.
fn document(new: &Row, old: Option<&Row>) -> Write {
    match encode_document(new, |column| old.and_then(|o| o.get(column))) {
        Ok(bytes) => Write::Index(bytes),
        Err(missing) => Write::IndexAfterRead { missing, filter: None },
    }
}

/// Serializes `row` as a JSON object, each unchanged TOAST value replaced by `fill(column)`.
/// Errs with the columns nothing filled: such a document must not be written, since the
/// values would vanish from it.
pub fn encode_document<'a>(row: &'a Row, fill: impl Fn(&str) -> Option<&'a Value>) -> Result<Vec<u8>, Vec<Arc<str>>> {
    let mut missing = Vec::new();
    let values: Vec<(&str, &Value)> = row
        .0
        .iter()
        .filter_map(|(name, value)| {
            if !value.is_unchanged_toast() {
                return Some((&**name, value));
            }
            match fill(name).filter(|v| !v.is_unchanged_toast()) {
                Some(filled) => Some((&**name, filled)),
                None => {
                    missing.push(name.clone());
                    None
                }
            }
        })
        .collect();
    if !missing.is_empty() {
        return Err(missing);
    }
    let mut buf = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::new(&mut buf);
    let mut map = ser
        .serialize_map(Some(values.len()))
        .expect("writing to a Vec cannot fail");
    for (name, value) in values {
        map.serialize_entry(name, value).expect("a value always serializes");
    }
    map.end().expect("writing to a Vec cannot fail");
    Ok(buf)
}

/// Appends the action's bulk lines (action line, and the document for an index) to `buf`.
/// Only called for actions whose document is known.
pub fn write_bulk_lines(buf: &mut Vec<u8>, action: &Action) {
    let (verb, doc) = match &action.write {
        Write::Index(doc) => ("index", Some(doc)),
        Write::Delete => ("delete", None),
        Write::IndexAfterRead { .. } => unreachable!("documents are read back before the request is built"),
    };
    buf.extend_from_slice(b"{\"");
    buf.extend_from_slice(verb.as_bytes());
    buf.extend_from_slice(b"\":{\"_index\":");
    serde_json::to_writer(&mut *buf, &*action.doc.index).expect("writing to a Vec cannot fail");
    buf.extend_from_slice(b",\"_id\":");
    serde_json::to_writer(&mut *buf, &action.doc.id).expect("writing to a Vec cannot fail");
    buf.extend_from_slice(
        format!(
            ",\"version\":{},\"version_type\":\"external_gte\"}}}}\n",
            action.version
        )
        .as_bytes(),
    );
    if let Some(doc) = doc {
        buf.extend_from_slice(doc);
        buf.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Lsn, Position, TableName};

    pub(crate) fn row(pairs: &[(&str, Value)]) -> Row {
        Row(pairs.iter().map(|(k, v)| (Arc::from(*k), v.clone())).collect())
    }

    fn s(v: &str) -> Value {
        Value::String(v.into())
    }

    fn event(op: Op, key: Option<Row>, old: Option<Row>, new: Option<Row>) -> Arc<Event> {
        let position = Position {
            commit_lsn: Lsn(0x1_0000_0010),
            ..Position::default()
        };
        Arc::new(Event::new(
            op,
            Arc::new(TableName::parse("events")),
            key,
            old,
            new,
            None,
            position,
        ))
    }

    fn mapping() -> TableMapping {
        TableMapping::new(TableName::parse("events"), vec!["search".into()])
    }

    fn lines(actions: &[Action]) -> String {
        let mut buf = Vec::new();
        for a in actions {
            write_bulk_lines(&mut buf, a);
        }
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn a_create_indexes_the_row_versioned_by_its_commit_lsn() {
        let e = event(
            Op::Create,
            Some(row(&[("id", Value::Int(7))])),
            None,
            Some(row(&[("id", Value::Int(7)), ("name", s("a\"b"))])),
        );
        let out = actions(&e, &mapping()).unwrap();
        assert_eq!(
            lines(&out),
            "{\"index\":{\"_index\":\"events\",\"_id\":\"7\",\"version\":4294967312,\"version_type\":\"external_gte\"}}\n\
             {\"id\":7,\"name\":\"a\\\"b\"}\n"
        );
    }

    #[test]
    fn a_delete_deletes_by_key_with_the_same_versioning() {
        let e = event(Op::Delete, Some(row(&[("id", Value::Int(7))])), None, None);
        let mut m = mapping();
        m.index = Some("live_events".into());
        assert_eq!(
            lines(&actions(&e, &m).unwrap()),
            "{\"delete\":{\"_index\":\"live_events\",\"_id\":\"7\",\"version\":4294967312,\"version_type\":\"external_gte\"}}\n"
        );
    }

    #[test]
    fn composite_and_custom_ids_join_with_colons() {
        let key = row(&[("tenant", s("acme")), ("n", Value::Int(3))]);
        let new = row(&[("tenant", s("acme")), ("n", Value::Int(3)), ("slug", s("launch"))]);
        let e = event(Op::Create, Some(key), None, Some(new));
        assert_eq!(actions(&e, &mapping()).unwrap()[0].doc.id, "acme:3");
        let mut m = mapping();
        m.id = Some(vec!["slug".into(), "tenant".into()]);
        assert_eq!(actions(&e, &m).unwrap()[0].doc.id, "launch:acme");
    }

    #[test]
    fn a_primary_key_update_deletes_the_old_document_and_indexes_the_new() {
        let e = event(
            Op::Update,
            Some(row(&[("id", Value::Int(1))])),
            Some(row(&[("id", Value::Int(1))])),
            Some(row(&[("id", Value::Int(2))])),
        );
        let out = actions(&e, &mapping()).unwrap();
        let ids: Vec<(&str, bool)> = out
            .iter()
            .map(|a| (a.doc.id.as_str(), a.write == Write::Delete))
            .collect();
        assert_eq!(ids, vec![("1", true), ("2", false)]);
    }

    #[test]
    fn an_unchanged_toast_value_comes_from_the_old_row_or_is_read_back() {
        let big = s(&"x".repeat(10));
        let new = row(&[
            ("id", Value::Int(1)),
            ("title", s("new")),
            ("body", Value::UnchangedToast),
        ]);
        let full_old = row(&[("id", Value::Int(1)), ("title", s("old")), ("body", big)]);
        let key = Some(row(&[("id", Value::Int(1))]));

        let with_old = actions(
            &event(Op::Update, key.clone(), Some(full_old), Some(new.clone())),
            &mapping(),
        )
        .unwrap();
        assert_eq!(
            with_old[0].write,
            Write::Index(br#"{"id":1,"title":"new","body":"xxxxxxxxxx"}"#.to_vec())
        );

        let without_old = actions(&event(Op::Update, key, None, Some(new)), &mapping()).unwrap();
        assert_eq!(
            without_old[0].write,
            Write::IndexAfterRead {
                missing: vec![Arc::from("body")],
                filter: None
            }
        );
    }

    #[test]
    fn a_key_change_moves_the_document_even_when_the_projection_drops_the_key() {
        let mut m = mapping();
        m.columns = Some(vec!["title".into()]);
        let source = event(
            Op::Update,
            Some(row(&[("id", Value::Int(1))])),
            None,
            Some(row(&[("id", Value::Int(2)), ("title", s("t"))])),
        );
        let routed = Arc::new(crate::router::route(&source, &m).unwrap());
        assert_eq!(routed.new, Some(row(&[("title", s("t"))])));
        let out = actions(&routed, &m).unwrap();
        let ids: Vec<(&str, bool)> = out
            .iter()
            .map(|a| (a.doc.id.as_str(), a.write == Write::Delete))
            .collect();
        assert_eq!(ids, vec![("1", true), ("2", false)]);

        // Without a key change the projected document keeps its id and deletes nothing.
        let same = event(
            Op::Update,
            Some(row(&[("id", Value::Int(1))])),
            None,
            Some(row(&[("id", Value::Int(1)), ("title", s("u"))])),
        );
        let routed = Arc::new(crate::router::route(&same, &m).unwrap());
        let ids: Vec<String> = actions(&routed, &m).unwrap().into_iter().map(|a| a.doc.id).collect();
        assert_eq!(ids, vec!["1"]);
    }

    #[test]
    fn an_id_the_node_would_refuse_is_an_error_and_its_delete_a_no_op() {
        let long = "k".repeat(MAX_ID_BYTES + 1);
        for key in [s(""), s(&long)] {
            let create = event(
                Op::Create,
                Some(row(&[("id", key.clone())])),
                None,
                Some(row(&[("id", key.clone())])),
            );
            assert!(matches!(actions(&create, &mapping()), Err(EncodeError::UnusableId(_))));
            let delete = event(Op::Delete, Some(row(&[("id", key.clone())])), None, None);
            assert!(actions(&delete, &mapping()).unwrap().is_empty());
            // Moving a row away from such a key deletes nothing and indexes the new id.
            let moved = event(
                Op::Update,
                Some(row(&[("id", key)])),
                None,
                Some(row(&[("id", s("ok"))])),
            );
            let out = actions(&moved, &mapping()).unwrap();
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].doc.id, "ok");
        }
        let longest = "k".repeat(MAX_ID_BYTES);
        let e = event(
            Op::Create,
            Some(row(&[("id", s(&longest))])),
            None,
            Some(row(&[("id", s(&longest))])),
        );
        assert_eq!(actions(&e, &mapping()).unwrap()[0].doc.id, longest);
    }

    #[test]
    fn an_update_that_nulls_a_custom_id_deletes_the_old_document() {
        let mut m = mapping();
        m.id = Some(vec!["slug".into()]);
        let e = event(
            Op::Update,
            Some(row(&[("id", Value::Int(1))])),
            Some(row(&[("id", Value::Int(1)), ("slug", s("launch"))])),
            Some(row(&[("id", Value::Int(1)), ("slug", Value::Null)])),
        );
        let out = actions(&e, &m).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].doc.id.as_str(), &out[0].write), ("launch", &Write::Delete));
        // Without the old row (no REPLICA IDENTITY FULL) the old id is unknown: a dead letter.
        let e = event(
            Op::Update,
            Some(row(&[("id", Value::Int(1))])),
            None,
            Some(row(&[("id", Value::Int(1)), ("slug", Value::Null)])),
        );
        assert_eq!(actions(&e, &m).unwrap_err(), EncodeError::NullId("slug".into()));
    }

    #[test]
    fn a_null_or_projected_out_id_is_an_error_not_a_document() {
        let mut m = mapping();
        m.id = Some(vec!["slug".into()]);
        let e = event(
            Op::Create,
            Some(row(&[("id", Value::Int(1))])),
            None,
            Some(row(&[("id", Value::Int(1)), ("slug", Value::Null)])),
        );
        assert_eq!(actions(&e, &m).unwrap_err(), EncodeError::NullId("slug".into()));
        m.id = Some(vec!["missing".into()]);
        assert_eq!(
            actions(&e, &m).unwrap_err(),
            EncodeError::MissingIdColumn("missing".into())
        );
    }
}
