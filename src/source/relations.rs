//! The relation cache: relation OID → table name, columns (with their value kinds) and key.
//!
//! pgoutput sends a Relation message before a table's first change in a session and again
//! after every schema change (ALTER TABLE), so the cache is updated mid-stream and never needs
//! a restart. What the message does not say — the primary key when the replica identity is
//! FULL, and the kinds of non-builtin types (domains, enums, arrays of them) — is read from the
//! catalog once per relation or type and cached.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::Client;

use crate::event::{Row, TableName, Value};
use crate::source::pgoutput;
use crate::source::values::{self, Kind};

#[derive(Debug)]
pub struct Column {
    pub name: Arc<str>,
    pub type_oid: u32,
    pub kind: Kind,
}

#[derive(Debug)]
pub struct Relation {
    pub oid: u32,
    pub table: Arc<TableName>,
    pub columns: Vec<Column>,
    /// b'd' default (primary key), b'f' full, b'i' index, b'n' nothing.
    pub replica_identity: u8,
    /// Indices of the key columns: the replica identity index's under `USING INDEX`, else the
    /// primary key's. Empty when the table has neither (a mapping's `key` must then name them).
    pub key: Vec<usize>,
}

impl Relation {
    /// The key columns of `row` (which has one entry per column, in table order).
    pub fn key_of(&self, row: &Row) -> Option<Row> {
        if self.key.is_empty() {
            return None;
        }
        Some(Row(self.key.iter().filter_map(|&i| row.0.get(i).cloned()).collect()))
    }
}

#[derive(Default)]
pub struct RelationCache {
    relations: HashMap<u32, Arc<Relation>>,
    kinds: HashMap<u32, Kind>,
}

impl RelationCache {
    pub fn get(&self, oid: u32) -> Option<&Arc<Relation>> {
        self.relations.get(&oid)
    }

    /// Takes a Relation message: resolves column kinds and the key through `catalog`.
    pub async fn update(&mut self, msg: &pgoutput::Relation<'_>, catalog: &Client) -> anyhow::Result<Arc<Relation>> {
        let mut columns = Vec::with_capacity(msg.columns.len());
        for c in &msg.columns {
            let kind = self.kind_of(c.type_oid, catalog).await?;
            columns.push(Column {
                name: Arc::from(c.name),
                type_oid: c.type_oid,
                kind,
            });
        }
        // The message flags the replica identity's columns, the ones old rows carry: the primary
        // key under DEFAULT, the index's columns under USING INDEX; those are the key a delete
        // can name. Under FULL every column is flagged, so the primary key comes from the catalog.
        let key = if msg.replica_identity == b'f' {
            primary_key(catalog, msg.oid)
                .await?
                .iter()
                .filter_map(|name| columns.iter().position(|c| &*c.name == name))
                .collect()
        } else {
            msg.columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_key)
                .map(|(i, _)| i)
                .collect()
        };
        let relation = Arc::new(Relation {
            oid: msg.oid,
            table: Arc::new(TableName {
                schema: msg.namespace.to_string(),
                name: msg.name.to_string(),
            }),
            columns,
            replica_identity: msg.replica_identity,
            key,
        });
        self.relations.insert(msg.oid, relation.clone());
        Ok(relation)
    }

    /// The columns of `table` as the stream sees them (attnum order; dropped, system and
    /// generated columns left out: pgoutput does not send generated ones), with their value kinds. Paths that read rows with SQL instead of from the
    /// stream (TOAST read-back, dead-letter replay, rebuild) select each column in its type's
    /// output form, `format('%s', col)` (not `col::text`: that cast prints bool as `true`, trims
    /// char(n) and adds inet's netmask), in a session with
    /// [`SESSION_OPTIONS`](crate::source::connection::SESSION_OPTIONS), and convert it with
    /// [`row_from_text`], so a row gives the same values, byte for byte, on every path.
    pub async fn table_columns(&mut self, catalog: &Client, table: &TableName) -> anyhow::Result<Vec<Column>> {
        let rows = catalog
            .query(
                "SELECT a.attname::text, a.atttypid::int8 FROM pg_catalog.pg_attribute a \
                 JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
                 AND a.attgenerated = '' ORDER BY a.attnum",
                &[&table.schema, &table.name],
            )
            .await?;
        if rows.is_empty() {
            anyhow::bail!("table {table} does not exist (or has no columns)");
        }
        let mut columns = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.get(0);
            let type_oid = row.get::<_, i64>(1) as u32;
            let kind = self.kind_of(type_oid, catalog).await?;
            columns.push(Column {
                name: Arc::from(name),
                type_oid,
                kind,
            });
        }
        Ok(columns)
    }

    async fn kind_of(&mut self, oid: u32, catalog: &Client) -> anyhow::Result<Kind> {
        if let Some(kind) = values::builtin_kind(oid) {
            return Ok(kind);
        }
        if let Some(kind) = self.kinds.get(&oid) {
            return Ok(kind.clone());
        }
        let kind = resolve_kind(oid, catalog).await?;
        self.kinds.insert(oid, kind.clone());
        Ok(kind)
    }
}

/// Domains become their base type's kind, arrays their element's, enums text; anything else
/// (composites, ranges, extension types) is kept as its text form.
async fn resolve_kind(oid: u32, catalog: &Client) -> anyhow::Result<Kind> {
    let mut oid = oid;
    let mut arrays: Vec<u8> = Vec::new();
    for _ in 0..16 {
        if let Some(kind) = values::builtin_kind(oid) {
            return Ok(wrap_arrays(kind, arrays));
        }
        let row = catalog
            .query_opt(
                "SELECT typtype::text, typbasetype::int8, typelem::int8, typdelim::text, typcategory::text, typlen::int4 \
                 FROM pg_catalog.pg_type WHERE oid = $1::int8::oid",
                &[&(oid as i64)],
            )
            .await?;
        let Some(row) = row else {
            return Ok(wrap_arrays(Kind::Other, arrays));
        };
        let typtype: String = row.get(0);
        let base: i64 = row.get(1);
        let elem: i64 = row.get(2);
        let delim: String = row.get(3);
        let category: String = row.get(4);
        let typlen: i32 = row.get(5);
        match typtype.as_str() {
            "d" => oid = base as u32,
            "e" => return Ok(wrap_arrays(Kind::Text, arrays)),
            _ if category == "A" && elem != 0 && typlen == -1 => {
                arrays.push(delim.bytes().next().unwrap_or(b','));
                oid = elem as u32;
            }
            _ => return Ok(wrap_arrays(Kind::Other, arrays)),
        }
    }
    Ok(Kind::Other)
}

fn wrap_arrays(kind: Kind, delimiters: Vec<u8>) -> Kind {
    delimiters
        .into_iter()
        .rev()
        .fold(kind, |element, delimiter| Kind::Array {
            element: Box::new(element),
            delimiter,
        })
}

async fn primary_key(catalog: &Client, oid: u32) -> anyhow::Result<Vec<String>> {
    let rows = catalog
        .query(
            "SELECT a.attname::text FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = $1::int8::oid AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&(oid as i64)],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Converts a tuple to a row of this relation's columns.
pub fn to_row(relation: &Relation, tuple: &pgoutput::TupleData<'_>) -> Row {
    Row(relation
        .columns
        .iter()
        .zip(tuple.cells.iter())
        .map(|(col, cell)| {
            let value = match cell {
                pgoutput::Cell::Null => Value::Null,
                pgoutput::Cell::UnchangedToast => Value::UnchangedToast,
                pgoutput::Cell::Text(text) => values::convert(&col.kind, text),
                // cdc never asks for binary values; keep the bytes visible rather than fail.
                pgoutput::Cell::Binary(bytes) => Value::String(String::from_utf8_lossy(bytes).into()),
            };
            (col.name.clone(), value)
        })
        .collect())
}

/// A row read with SQL, each column selected in its output form (`format('%s', col)`) in a
/// session with the pinned settings (`None` for NULL), converted exactly as the stream converts
/// the same row.
pub fn row_from_text<'a>(columns: &[Column], texts: impl IntoIterator<Item = Option<&'a str>>) -> Row {
    Row(columns
        .iter()
        .zip(texts)
        .map(|(col, text)| {
            let value = match text {
                None => Value::Null,
                Some(text) => values::convert(&col.kind, text.as_bytes()),
            };
            (col.name.clone(), value)
        })
        .collect())
}
