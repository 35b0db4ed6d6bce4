//! Rows read back from Postgres by key, converted exactly as the stream converts them.
//!
//! Two paths write documents from rows read with SQL instead of from the stream: the TOAST
//! read-back (values an update did not resend) and the dead-letter replay. Both must find the
//! row an event names, and make the bytes the stream would:
//! - **Finding.** An event holds converted values (timestamptz `…Z`, bytea as base64), which is
//!   not how `key::text` prints them (`… +00`, `\x…`, char(n) without its padding). So each key
//!   value goes back to Postgres input text ([`input_text`]), is cast to the key column's own
//!   type, and compared with that type's equality. A row that is there is found: a row not
//!   found is gone.
//! - **Converting.** Each column is selected in its type's output form (`format('%s', c)`, not
//!   `c::text`, which trims char(n), prints bool as `true` and inet with its netmask) on a
//!   connection with the pinned session settings, and converted by
//!   [`relations::row_from_text`]: the stream's own conversion, so a row makes the same
//!   document on every path.

use std::borrow::Cow;
use std::sync::Arc;

use anyhow::bail;
use base64::Engine as _;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use crate::event::{quote_ident, Event, Row, TableName, Value};
use crate::source::relations::{self, Column, RelationCache};
use crate::source::values::Kind;

/// A table's columns as the stream sees them, with what reading its rows by key needs.
pub struct TableRows {
    pub table: Arc<TableName>,
    columns: Vec<Column>,
    /// Each column's type as a cast target, by its internal name and without a modifier
    /// (`pg_catalog.bpchar`, not `character`, which means char(1)): a cast to char(n),
    /// varchar(n) or numeric(p,s) could change the value compared.
    types: Vec<String>,
    /// `ONLY` in the read: the rows of inheritance children are not the table's (the publication
    /// leaves them out too); empty for a partitioned table, whose rows are all in its partitions.
    only: &'static str,
}

/// Which columns make a row's key, and their values as Postgres input text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub columns: Vec<usize>,
    pub inputs: Vec<String>,
}

impl TableRows {
    /// Reads the table's columns from the catalog (on a connection with the pinned settings);
    /// None when the table no longer exists (it was dropped or renamed: none of its rows can
    /// be found by this name).
    pub async fn load(pg: &Client, table: &Arc<TableName>) -> anyhow::Result<Option<TableRows>> {
        let relkind: Option<i8> = pg
            .query_one(
                "SELECT (SELECT relkind FROM pg_catalog.pg_class WHERE oid = pg_catalog.to_regclass($1))",
                &[&table.quoted()],
            )
            .await?
            .get(0);
        let Some(relkind) = relkind else {
            return Ok(None);
        };
        let columns = RelationCache::default().table_columns(pg, table).await?;
        let rows = pg
            .query(
                "SELECT pg_catalog.quote_ident(tn.nspname) || '.' || pg_catalog.quote_ident(ty.typname) \
                 FROM pg_catalog.pg_attribute a \
                 JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid \
                 JOIN pg_catalog.pg_namespace tn ON tn.oid = ty.typnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
                 AND a.attgenerated = '' ORDER BY a.attnum",
                &[&table.schema, &table.name],
            )
            .await?;
        if rows.len() != columns.len() {
            bail!("the columns of {table} changed while cdc read them; reading again");
        }
        Ok(Some(TableRows {
            table: table.clone(),
            columns,
            types: rows.iter().map(|r| r.get(0)).collect(),
            only: if relkind == b'p' as i8 { "" } else { "ONLY " },
        }))
    }

    pub fn index_of(&self, column: &str) -> Option<usize> {
        self.columns.iter().position(|c| &*c.name == column)
    }

    /// Every column a document can hold, in table order (generated columns are not among them:
    /// see `RelationCache::table_columns`).
    pub fn document_columns(&self) -> Vec<usize> {
        (0..self.columns.len()).collect()
    }

    /// The key of `event`'s row as it is now (the new key, after a key change). Errs, saying
    /// why, when the event does not name one row.
    pub fn key_of(&self, event: &Event) -> Result<Key, String> {
        let key = event.key.as_ref().ok_or("the event has no key to look its row up by")?;
        let mut out = Key {
            columns: Vec::with_capacity(key.0.len()),
            inputs: Vec::with_capacity(key.0.len()),
        };
        for (name, old) in &key.0 {
            let value = event.key_value_after(name).unwrap_or(old);
            let i = self
                .index_of(name)
                .ok_or_else(|| format!("key column {name:?} is no longer in table {}", self.table))?;
            let input = input_text(&self.columns[i].kind, value).map_err(|e| format!("key column {name:?} {e}"))?;
            out.columns.push(i);
            out.inputs.push(input);
        }
        if out.columns.is_empty() {
            return Err("the event's key has no columns".into());
        }
        Ok(out)
    }

    /// The rows with these keys (all keyed by `key_columns`), holding the `wanted` columns;
    /// `None` where no row has the key.
    pub async fn read(
        &self,
        pg: &Client,
        key_columns: &[usize],
        keys: &[Vec<String>],
        wanted: &[usize],
    ) -> anyhow::Result<Vec<Option<Row>>> {
        let params: Vec<Vec<&str>> = (0..key_columns.len())
            .map(|j| keys.iter().map(|k| k[j].as_str()).collect())
            .collect();
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let rows = pg.query(&self.read_sql(key_columns, wanted), &refs).await?;
        let mut out: Vec<Option<Row>> = vec![None; keys.len()];
        for row in rows {
            let n: i64 = row.get(0);
            let Some(slot) = usize::try_from(n - 1).ok().and_then(|i| out.get_mut(i)) else {
                bail!("the read-back query answered for key {n} of {}", keys.len());
            };
            let values = wanted.iter().enumerate().flat_map(|(j, &i)| {
                let text: Option<&str> = row.get(j + 1);
                relations::row_from_text(std::slice::from_ref(&self.columns[i]), [text]).0
            });
            // A key that is not unique (a mapping's `key` without a constraint) names the
            // first row found, as the stream's events for that key do not tell them apart.
            slot.get_or_insert_with(|| Row(values.collect()));
        }
        Ok(out)
    }

    /// `SELECT u.n, <wanted> FROM unnest($1::text[], ...) WITH ORDINALITY u JOIN t ON t.k =
    /// u.k0::<type of k>`: each key cast to its column's type, each value in its output form.
    fn read_sql(&self, key_columns: &[usize], wanted: &[usize]) -> String {
        let aliases: Vec<String> = (0..key_columns.len()).map(|j| format!("k{j}")).collect();
        let params: Vec<String> = (1..=key_columns.len()).map(|j| format!("${j}::text[]")).collect();
        let conditions: Vec<String> = key_columns
            .iter()
            .zip(&aliases)
            .map(|(&i, alias)| {
                format!(
                    "t.{} = u.{alias}::{}",
                    quote_ident(&self.columns[i].name),
                    self.types[i]
                )
            })
            .collect();
        let values: Vec<String> = wanted
            .iter()
            .map(|&i| {
                let column = format!("t.{}", quote_ident(&self.columns[i].name));
                format!("CASE WHEN {column} IS NULL THEN NULL ELSE pg_catalog.format('%s', {column}) END")
            })
            .collect();
        format!(
            "SELECT u.n{}{} FROM unnest({}) WITH ORDINALITY AS u({}, n) JOIN {}{} t ON {}",
            if values.is_empty() { "" } else { ", " },
            values.join(", "),
            params.join(", "),
            aliases.join(", "),
            self.only,
            self.table.quoted(),
            conditions.join(" AND ")
        )
    }
}

/// A value as cdc converted it → text Postgres reads back as the same value of the column's
/// type: base64 back to `\x…` hex for bytea, arrays as array literals, everything else as
/// printed (cdc's forms, such as `2024-01-01T00:00:00Z` or ISO 8601 intervals, are valid input).
pub fn input_text(kind: &Kind, value: &Value) -> Result<String, String> {
    match (kind, value) {
        (_, Value::Null) => Err("is null".into()),
        (_, Value::UnchangedToast) => Err("was not sent (an unchanged TOAST value)".into()),
        (Kind::Bytea, Value::String(text)) => Ok(bytea_input(text)),
        (Kind::Array { element, delimiter }, Value::Array(items)) => array_input(element, *delimiter, items),
        (Kind::Array { element, delimiter }, Value::Json(raw)) => {
            // A value back from a dead letter's stored JSON.
            match serde_json::from_str(raw.get()) {
                Ok(serde_json::Value::Array(items)) => {
                    let items: Vec<Value> = items.into_iter().map(from_json).collect();
                    array_input(element, *delimiter, &items)
                }
                _ => Ok(raw.get().to_string()),
            }
        }
        (_, other) => other
            .as_text()
            .map(Cow::into_owned)
            .ok_or_else(|| "has no text form".into()),
    }
}

/// base64 (as cdc converts bytea) → `\x…`; text that is not base64 was kept as Postgres
/// printed it, and goes back as it is.
fn bytea_input(text: &str) -> String {
    match base64::engine::general_purpose::STANDARD.decode(text) {
        Ok(bytes) => {
            let mut hex = String::with_capacity(2 + bytes.len() * 2);
            hex.push_str("\\x");
            for b in bytes {
                hex.push_str(&format!("{b:02x}"));
            }
            hex
        }
        Err(_) => text.to_string(),
    }
}

/// `{"a","b"}`, nested for multi-dimensional arrays, `NULL` for null elements.
fn array_input(element: &Kind, delimiter: u8, items: &[Value]) -> Result<String, String> {
    let mut out = String::from("{");
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(char::from(delimiter));
        }
        match item {
            Value::Null => out.push_str("NULL"),
            Value::Array(inner) => out.push_str(&array_input(element, delimiter, inner)?),
            other => {
                let text = input_text(element, other)?;
                out.push('"');
                out.push_str(&text.replace('\\', "\\\\").replace('"', "\\\""));
                out.push('"');
            }
        }
    }
    out.push('}');
    Ok(out)
}

fn from_json(json: serde_json::Value) -> Value {
    use serde_json::Value as J;
    match json {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(b),
        J::Number(n) => Value::Number(n.to_string().into()),
        J::String(s) => Value::String(s.into()),
        J::Array(items) => Value::Array(items.into_iter().map(from_json).collect()),
        object => Value::Json(serde_json::value::to_raw_value(&object).expect("a JSON value serializes")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Op, Position};

    fn s(text: &str) -> Value {
        Value::String(text.into())
    }

    fn events_table() -> TableRows {
        let column = |name: &str, kind: Kind| Column {
            name: Arc::from(name),
            type_oid: 0,
            kind,
        };
        TableRows {
            table: Arc::new(TableName::parse("app.events")),
            columns: vec![
                column("id", Kind::Int),
                column("at", Kind::Timestamptz),
                column("code", Kind::Text),
            ],
            types: ["int4", "timestamptz", "bpchar"]
                .map(|t| format!("pg_catalog.{t}"))
                .to_vec(),
            only: "ONLY ",
        }
    }

    #[test]
    fn the_read_casts_each_key_to_its_column_type_and_reads_values_in_their_output_form() {
        assert_eq!(
            events_table().read_sql(&[0, 1], &[2]),
            "SELECT u.n, CASE WHEN t.\"code\" IS NULL THEN NULL ELSE pg_catalog.format('%s', t.\"code\") END \
             FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(k0, k1, n) JOIN ONLY \"app\".\"events\" t \
             ON t.\"id\" = u.k0::pg_catalog.int4 AND t.\"at\" = u.k1::pg_catalog.timestamptz"
        );
    }

    #[test]
    fn the_key_is_the_row_as_it_is_now() {
        let row = |pairs: &[(&str, Value)]| Row(pairs.iter().map(|(k, v)| (Arc::from(*k), v.clone())).collect());
        let event = |key: Row, new: Option<Row>| {
            Event::new(
                Op::Update,
                Arc::new(TableName::parse("app.events")),
                Some(key),
                None,
                new,
                None,
                Position::default(),
            )
        };
        let old_key = row(&[("id", Value::Int(1)), ("at", s("2024-01-01T00:00:00Z"))]);
        let moved = row(&[
            ("id", Value::Int(2)),
            ("at", s("2024-01-01T00:00:00Z")),
            ("body", Value::UnchangedToast),
        ]);
        let table = events_table();
        assert_eq!(
            table.key_of(&event(old_key.clone(), Some(moved))).unwrap(),
            Key {
                columns: vec![0, 1],
                inputs: vec!["2".into(), "2024-01-01T00:00:00Z".into()]
            }
        );
        let unknown = row(&[("nope", Value::Int(1))]);
        assert!(table
            .key_of(&event(unknown, None))
            .unwrap_err()
            .contains("no longer in table app.events"));
        let null = row(&[("id", Value::Null)]);
        assert_eq!(
            table.key_of(&event(null, None)).unwrap_err(),
            "key column \"id\" is null"
        );
    }

    #[test]
    fn converted_values_go_back_to_input_postgres_reads_as_the_same_value() {
        assert_eq!(input_text(&Kind::Bytea, &s("Cgv/")).unwrap(), r"\x0a0bff");
        assert_eq!(
            input_text(&Kind::Bytea, &s(r"\xzz")).unwrap(),
            r"\xzz",
            "kept as printed"
        );
        assert_eq!(
            input_text(&Kind::Timestamptz, &s("2024-01-01T00:00:00Z")).unwrap(),
            "2024-01-01T00:00:00Z"
        );
        assert_eq!(
            input_text(&Kind::Text, &s("ab   ")).unwrap(),
            "ab   ",
            "char(n) padding kept"
        );
        assert_eq!(
            input_text(&Kind::Numeric, &Value::Number("1.50".into())).unwrap(),
            "1.50"
        );
        assert_eq!(input_text(&Kind::Bool, &Value::Bool(true)).unwrap(), "true");
        assert!(input_text(&Kind::Int, &Value::Null).is_err());
        assert!(input_text(&Kind::Text, &Value::UnchangedToast).is_err());
    }

    #[test]
    fn arrays_become_array_literals() {
        let text = Kind::Array {
            element: Box::new(Kind::Text),
            delimiter: b',',
        };
        let items = Value::Array(vec![s("a\"b"), Value::Null, s(r"c\d")]);
        assert_eq!(input_text(&text, &items).unwrap(), r#"{"a\"b",NULL,"c\\d"}"#);
        let bytea = Kind::Array {
            element: Box::new(Kind::Bytea),
            delimiter: b',',
        };
        let nested = Value::Array(vec![Value::Array(vec![s("Cgv/")]), Value::Array(vec![Value::Null])]);
        assert_eq!(input_text(&bytea, &nested).unwrap(), r#"{{"\\x0a0bff"},{NULL}}"#);
        let stored = Value::Json(serde_json::value::RawValue::from_string("[1,2.50]".into()).unwrap());
        let ints = Kind::Array {
            element: Box::new(Kind::Numeric),
            delimiter: b',',
        };
        assert_eq!(input_text(&ints, &stored).unwrap(), r#"{"1","2.5"}"#);
    }
}
