//! Unchanged TOAST values that neither the update nor its old row carried (the table lacks
//! REPLICA IDENTITY FULL): read back from Postgres by key, in one query per table per batch.
//!
//! The row read is the current one, possibly newer than the event. Writing newer values under
//! the event's version is harmless: the newer change follows in the stream with a higher
//! version and writes the same. A row that no longer exists has a delete coming; its document
//! is left alone until then rather than written without the value.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::value::RawValue;
use tokio_postgres::Client;

use super::encoder::{encode_document, Action, Write};
use crate::event::{quote_ident, Event, TableName, Value};

/// Fills in every action still waiting for a read; drops those whose row is gone.
pub async fn read_back(pg: &Client, actions: Vec<Action>) -> anyhow::Result<Vec<Action>> {
    let mut by_table: HashMap<Arc<TableName>, Vec<usize>> = HashMap::new();
    for (i, action) in actions.iter().enumerate() {
        if matches!(action.write, Write::IndexAfterRead { .. }) {
            by_table.entry(action.event.table.clone()).or_default().push(i);
        }
    }
    if by_table.is_empty() {
        return Ok(actions);
    }
    let mut filled: HashMap<usize, Option<Vec<u8>>> = HashMap::new();
    for (table, positions) in by_table {
        let wanted: Vec<&Action> = positions.iter().map(|&i| &actions[i]).collect();
        let rows = read_table(pg, &table, &wanted).await?;
        for (&i, action) in positions.iter().zip(&wanted) {
            let doc = key_text(&action.event)
                .and_then(|key| rows.get(&key))
                .and_then(|values| {
                    let new = action.event.new.as_ref()?;
                    let old = action.event.old.as_ref();
                    encode_document(new, |column| {
                        old.and_then(|o| o.get(column))
                            .filter(|v| !v.is_unchanged_toast())
                            .or_else(|| values.get(column))
                    })
                    .ok()
                });
            filled.insert(i, doc);
        }
    }
    let gone = filled.values().filter(|d| d.is_none()).count();
    if gone > 0 {
        tracing::debug!(
            gone,
            "rows to read back no longer exist; their deletes follow in the stream"
        );
    }
    Ok(actions
        .into_iter()
        .enumerate()
        .filter_map(|(i, mut action)| match filled.remove(&i) {
            None => Some(action),
            Some(Some(doc)) => {
                action.write = Write::Index(doc);
                Some(action)
            }
            Some(None) => None,
        })
        .collect())
}

/// Key columns and their values for the row as it is now (the new key, after a key change).
pub fn key_values(event: &Event) -> Option<Vec<(&str, String)>> {
    let key = event.key.as_ref()?;
    let new = event.new.as_ref();
    key.0
        .iter()
        .map(|(name, old_value)| {
            let value = new.and_then(|n| n.get(name)).unwrap_or(old_value);
            Some((&**name, value.as_text()?.into_owned()))
        })
        .collect()
}

/// The key's values joined with a separator no text value holds, to look rows up.
fn key_text(event: &Event) -> Option<String> {
    Some(
        key_values(event)?
            .into_iter()
            .map(|(_, v)| v)
            .collect::<Vec<_>>()
            .join("\u{0}"),
    )
}

/// Column → value maps of the wanted rows, by key text.
async fn read_table(
    pg: &Client,
    table: &TableName,
    wanted: &[&Action],
) -> anyhow::Result<HashMap<String, HashMap<String, Value>>> {
    let Some(first) = wanted.iter().find_map(|a| key_values(&a.event)) else {
        return Ok(HashMap::new());
    };
    let key_columns: Vec<&str> = first.iter().map(|(name, _)| *name).collect();
    let mut missing: Vec<&str> = Vec::new();
    for action in wanted {
        if let Write::IndexAfterRead { missing: columns } = &action.write {
            for c in columns {
                if !missing.contains(&&**c) {
                    missing.push(c);
                }
            }
        }
    }
    let mut params: Vec<Vec<String>> = vec![Vec::with_capacity(wanted.len()); key_columns.len()];
    for action in wanted {
        if let Some(values) = key_values(&action.event) {
            for (column, (_, value)) in params.iter_mut().zip(values) {
                column.push(value);
            }
        }
    }
    let sql = read_sql(table, &key_columns, &missing);
    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
        .iter()
        .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let rows = pg.query(&sql, &refs).await?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let key: Vec<String> = (0..key_columns.len()).map(|i| row.get::<_, String>(i)).collect();
        let mut values = HashMap::with_capacity(missing.len());
        for (j, column) in missing.iter().enumerate() {
            let json: Option<String> = row.get(key_columns.len() + j);
            let value = match json {
                None => Value::Null,
                Some(json) => Value::Json(RawValue::from_string(json)?),
            };
            values.insert(column.to_string(), value);
        }
        out.insert(key.join("\u{0}"), values);
    }
    Ok(out)
}

/// `SELECT k::text..., to_jsonb(c)... FROM t WHERE (k::text, ...) IN (unnest($1, ...))`: keys are
/// compared as text, the form cdc received them in.
fn read_sql(table: &TableName, key_columns: &[&str], columns: &[&str]) -> String {
    let keys: Vec<String> = key_columns
        .iter()
        .map(|k| format!("t.{}::text", quote_ident(k)))
        .collect();
    let values: Vec<String> = columns
        .iter()
        .map(|c| format!("to_jsonb(t.{})::text", quote_ident(c)))
        .collect();
    let params: Vec<String> = (1..=key_columns.len()).map(|i| format!("${i}::text[]")).collect();
    format!(
        "SELECT {}, {} FROM {} t WHERE ({}) IN (SELECT * FROM unnest({}))",
        keys.join(", "),
        values.join(", "),
        table.quoted(),
        keys.join(", "),
        params.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_back_query_compares_keys_as_text_and_reads_values_as_json() {
        let sql = read_sql(&TableName::parse("app.docs"), &["tenant", "id"], &["body"]);
        assert_eq!(
            sql,
            "SELECT t.\"tenant\"::text, t.\"id\"::text, to_jsonb(t.\"body\")::text FROM \"app\".\"docs\" t \
             WHERE (t.\"tenant\"::text, t.\"id\"::text) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
        );
    }
}
