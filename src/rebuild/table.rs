//! A mapped table as the rebuild and verify read it with SQL: which columns to select, the key,
//! the relations to scan (the table, or the leaves of a partitioned table), and how one selected
//! row becomes the document the stream would write for it.
//!
//! Rows are read with the simple query protocol, whose text results are the types' output
//! functions, exactly what pgoutput sends (a `::text` cast is not: `true::text` is `true` where
//! the output is `t`, and inet and char(n) differ too), in a session with the pinned settings,
//! and converted by [`row_from_text`]. They then pass through the router's own [`route`] (filter,
//! projection, key) and the search sink's [`encoder::actions`]: a rebuilt document is the
//! streamed one, byte for byte, because it is made by the same code from the same text.

use std::sync::Arc;

use anyhow::{bail, Context};
use tokio_postgres::Client;

use crate::config::TableMapping;
use crate::event::{quote_ident, Event, Lsn, Op, Position, Row, TableName};
use crate::router::route;
use crate::sinks::search::encoder::{self, Action, EncodeError};
use crate::source::relations::{row_from_text, Column, RelationCache};
use crate::source::values::Kind;

/// A table under one mapping, ready to be read with SQL.
pub struct Plan {
    pub table: Arc<TableName>,
    /// The mapping, its `index` pointing where documents go.
    pub mapping: TableMapping,
    /// The selected columns, in table order: what the projection keeps, plus the key, id and
    /// filter columns (the router and encoder need them; the projection drops them again).
    pub columns: Vec<Column>,
    /// Positions in `columns` of the table's key (primary key, else replica identity index).
    key: Vec<usize>,
    /// What to scan: the table itself, or each leaf partition of a partitioned table.
    pub relations: Vec<String>,
    /// The filter as SQL, when the mapping has one.
    filter_sql: Option<String>,
    /// The document id columns, for ordering by id (`verify`).
    id_columns: Vec<String>,
}

impl Plan {
    /// Reads the table's columns, key and partitions from the catalog. `mapping.index` is used as
    /// given: set it to where the documents should go.
    pub async fn new(catalog: &Client, mapping: &TableMapping) -> anyhow::Result<Plan> {
        let table = &mapping.table;
        let mut cache = RelationCache::default();
        let all = cache.table_columns(catalog, table).await?;
        let key_names = table_key(catalog, table).await?;
        let id_columns: Vec<String> = match (&mapping.id, &mapping.key) {
            (Some(id), _) => id.clone(),
            (None, Some(key)) => key.clone(),
            (None, None) => key_names.clone(),
        };
        if id_columns.is_empty() {
            bail!("{table} has no primary key: give its mapping `key = [...]` or `id = [...]` so documents have ids");
        }
        let needed = |name: &str| {
            mapping.keeps(name)
                || key_names.iter().any(|k| k == name)
                || id_columns.iter().any(|k| k == name)
                || mapping.key.iter().flatten().any(|k| k == name)
                || mapping.filter.iter().any(|f| f.columns().any(|c| c == name))
        };
        let columns: Vec<Column> = all.into_iter().filter(|c| needed(&c.name)).collect();
        for name in &id_columns {
            if !columns.iter().any(|c| &*c.name == name) {
                bail!("{table} has no column {name:?} (named by its mapping's id or key)");
            }
        }
        let key = key_names
            .iter()
            .filter_map(|k| columns.iter().position(|c| &*c.name == k))
            .collect();
        Ok(Plan {
            table: Arc::new(table.clone()),
            mapping: mapping.clone(),
            columns,
            key,
            relations: scan_relations(catalog, table).await?,
            filter_sql: mapping.filter.as_ref().map(|f| f.to_sql()),
            id_columns,
        })
    }

    /// `SELECT c, ... FROM relation t WHERE <condition> AND <filter>`, for the simple query
    /// protocol (text results).
    pub fn select(&self, relation: &str, condition: Option<&str>) -> String {
        let columns: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("t.{}", quote_ident(&c.name)))
            .collect();
        let conditions: Vec<&str> = condition.into_iter().chain(self.filter_sql.as_deref()).collect();
        let mut sql = format!("SELECT {} FROM {} t", columns.join(", "), self.scanned(relation));
        if !conditions.is_empty() {
            sql += &format!(" WHERE {}", conditions.join(" AND "));
        }
        sql
    }

    /// `relation` as a FROM item: with `ONLY`, as the rows of inheritance children are not the
    /// table's (the publication leaves them out too, see `cdc setup`); without it for a
    /// partitioned table itself, whose rows are all in its partitions.
    fn scanned(&self, relation: &str) -> String {
        let table = self.table.quoted();
        let partitioned = self.relations.iter().any(|r| *r != table);
        if partitioned && relation == table {
            relation.to_string()
        } else {
            format!("ONLY {relation}")
        }
    }

    /// The document id as cdc writes it, computed by Postgres: each id column's output text
    /// converted as [`convert`](crate::source::values::convert) converts it (see [`id_text_sql`]), joined with ':'.
    /// `verify` orders by it (`COLLATE "C"`, byte order, as the index sorts `_id`) and finds rows
    /// by it; the text Postgres prints would sort differently for timestamps, bool or bytea.
    pub fn id_sql(&self) -> String {
        let parts: Vec<String> = self
            .id_columns
            .iter()
            .map(|name| {
                let column = format!("t.{}", quote_ident(name));
                match self.columns.iter().find(|c| &*c.name == name) {
                    Some(c) => id_text_sql(&c.kind, &column),
                    None => format!("format('%s', {column})"),
                }
            })
            .collect();
        format!("concat_ws(':', {})", parts.join(", "))
    }

    /// The id columns with their Postgres types, for messages.
    pub fn id_types(&self) -> String {
        let types: Vec<String> = self
            .id_columns
            .iter()
            .map(|name| match self.columns.iter().find(|c| &*c.name == name) {
                Some(c) => format!("{name} {:?} (type oid {})", c.kind, c.type_oid),
                None => name.clone(),
            })
            .collect();
        types.join(", ")
    }

    /// [`Plan::select`] of the whole table with the document id ([`Plan::id_sql`]) as a last
    /// column, in document id order (bytes, as the index sorts `_id`).
    pub fn select_in_id_order(&self) -> String {
        let select = self.select(&self.table.quoted(), None);
        let (columns, rest) = select.split_once(" FROM ").expect("select has a FROM");
        format!(
            "{columns}, {} COLLATE \"C\" AS cdc_document_id FROM {rest} ORDER BY cdc_document_id",
            self.id_sql()
        )
    }

    /// The bulk actions the stream would send for this row had it just been inserted, with
    /// version `version`. Empty when the filter or the mapping's ops leave it out. A row the
    /// encoder refuses (a NULL id column) comes back as its routed event, for a dead letter.
    pub fn actions<'a>(
        &self,
        texts: impl IntoIterator<Item = Option<&'a str>>,
        version: Lsn,
    ) -> Result<Vec<Action>, Unencodable> {
        let row = row_from_text(&self.columns, texts);
        let key = (!self.key.is_empty()).then(|| Row(self.key.iter().map(|&i| row.0[i].clone()).collect()));
        let position = Position {
            commit_lsn: version,
            lsn: version,
            ..Position::default()
        };
        let event = Event::new(Op::Create, self.table.clone(), key, None, Some(row), None, position);
        let Some(routed) = route(&event, &self.mapping) else {
            return Ok(Vec::new());
        };
        let routed = Arc::new(routed);
        encoder::actions(&routed, &self.mapping).map_err(|error| Unencodable { event: routed, error })
    }
}

/// A row no document can be made for, with the event the stream would have had.
#[derive(Debug)]
pub struct Unencodable {
    pub event: Arc<Event>,
    pub error: EncodeError,
}

/// SQL for the text cdc makes of `column`'s value when it is part of a document id: the
/// column's output text (`format('%s', …)` uses the output function, as pgoutput does) changed as
/// [`convert`](crate::source::values::convert) and [`Value::as_text`](crate::event::Value::as_text) change it. The
/// regular expressions are the conversion's own patterns: text they do not match (BC dates,
/// infinities) stays as printed, on both sides. Kinds kept as printed need nothing; arrays make
/// no id at all (the encoder refuses them). `verify` checks each row's id against the one the
/// encoder made, so a mismatch stops it instead of misordering the merge.
fn id_text_sql(kind: &Kind, column: &str) -> String {
    let printed = format!("format('%s', {column})");
    match kind {
        Kind::Bool => format!("CASE {column} WHEN true THEN 'true' WHEN false THEN 'false' END"),
        // Postgres' base64 breaks lines every 76 characters; cdc's does not.
        Kind::Bytea => format!("translate(encode({column}, 'base64'), E'\\n', '')"),
        Kind::Timestamp => {
            format!(r"regexp_replace({printed}, '^(\d{{4,6}}-\d\d-\d\d) (\d\d:\d\d:\d\d(\.\d+)?)$', '\1T\2')")
        }
        // The session's TimeZone is UTC: every offset printed is +00.
        Kind::Timestamptz => {
            format!(r"regexp_replace({printed}, '^(\d{{4,6}}-\d\d-\d\d) (\d\d:\d\d:\d\d(\.\d+)?)\+00$', '\1T\2Z')")
        }
        _ => printed,
    }
}

/// The key columns the stream uses: the primary key, else the replica identity index.
async fn table_key(catalog: &Client, table: &TableName) -> anyhow::Result<Vec<String>> {
    let rows = catalog
        .query(
            "SELECT i.indisprimary, a.attname::text FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = $1::text::regclass AND (i.indisprimary OR i.indisreplident) \
             ORDER BY i.indisprimary DESC, array_position(i.indkey::int2[], a.attnum)",
            &[&table.quoted()],
        )
        .await
        .with_context(|| format!("reading the key of {table}"))?;
    let primary: Vec<String> = rows.iter().filter(|r| r.get::<_, bool>(0)).map(|r| r.get(1)).collect();
    if !primary.is_empty() {
        return Ok(primary);
    }
    Ok(rows.iter().map(|r| r.get(1)).collect())
}

/// The relations holding the rows: the leaf partitions of a partitioned table, else the table.
async fn scan_relations(catalog: &Client, table: &TableName) -> anyhow::Result<Vec<String>> {
    let rows = catalog
        .query(
            "SELECT relid::regclass::text FROM pg_catalog.pg_partition_tree($1::text::regclass) \
             WHERE isleaf ORDER BY 1",
            &[&table.quoted()],
        )
        .await
        .with_context(|| format!("listing the partitions of {table}"))?;
    if rows.is_empty() {
        return Ok(vec![table.quoted()]);
    }
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, kind: Kind) -> Column {
        Column {
            name: Arc::from(name),
            type_oid: 0,
            kind,
        }
    }

    fn plan(mapping: TableMapping) -> Plan {
        Plan {
            table: Arc::new(mapping.table.clone()),
            columns: vec![
                column("id", Kind::Int),
                column("title", Kind::Text),
                column("state", Kind::Text),
            ],
            key: vec![0],
            relations: vec!["\"public\".\"items\"".into()],
            filter_sql: mapping.filter.as_ref().map(|f| f.to_sql()),
            id_columns: vec!["id".into()],
            mapping,
        }
    }

    fn mapping() -> TableMapping {
        TableMapping::new(TableName::parse("items"), vec!["search".into()])
    }

    #[test]
    fn a_row_becomes_the_document_the_stream_writes_at_the_given_version() {
        let mut m = mapping();
        m.columns = Some(vec!["id".into(), "title".into()]);
        let actions = plan(m)
            .actions([Some("7"), Some("a\"b"), Some("draft")], Lsn(41))
            .unwrap();
        assert_eq!(actions.len(), 1);
        assert_eq!(actions[0].doc.id, "7");
        assert_eq!(actions[0].version, 41);
        assert_eq!(
            actions[0].write,
            encoder::Write::Index(br#"{"id":7,"title":"a\"b"}"#.to_vec())
        );
    }

    #[test]
    fn a_row_the_filter_leaves_out_has_no_action() {
        let mut m = mapping();
        let doc = toml_edit::Document::parse(r#"filter = { state = "published" }"#.to_string()).unwrap();
        m.filter = Some(crate::config::Filter::parse(doc.as_table().get("filter").unwrap()).unwrap());
        let p = plan(m);
        assert!(p.actions([Some("1"), None, Some("draft")], Lsn(1)).unwrap().is_empty());
        assert_eq!(
            p.actions([Some("1"), None, Some("published")], Lsn(1)).unwrap().len(),
            1
        );
        assert_eq!(
            p.select("\"public\".\"items\"", Some("t.ctid >= '(0,0)'")),
            "SELECT t.\"id\", t.\"title\", t.\"state\" FROM ONLY \"public\".\"items\" t \
             WHERE t.ctid >= '(0,0)' AND \"state\" = 'published'"
        );
        assert_eq!(p.id_sql(), "concat_ws(':', format('%s', t.\"id\"))");
    }
}
