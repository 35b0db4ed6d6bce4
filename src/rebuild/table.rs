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
        let mut sql = format!("SELECT {} FROM {relation} t", columns.join(", "));
        if !conditions.is_empty() {
            sql += &format!(" WHERE {}", conditions.join(" AND "));
        }
        sql
    }

    /// The document id as Postgres prints it (`a:b` for composite ids; `format` uses the output
    /// functions), for ordering and finding rows by id.
    pub fn id_sql(&self) -> String {
        let parts: Vec<String> = self
            .id_columns
            .iter()
            .map(|c| format!("format('%s', t.{})", quote_ident(c)))
            .collect();
        format!("concat_ws(':', {})", parts.join(", "))
    }

    /// The bulk actions the stream would send for this row had it just been inserted, with
    /// version `version`. Empty when the filter or the mapping's ops leave it out.
    pub fn actions<'a>(
        &self,
        texts: impl IntoIterator<Item = Option<&'a str>>,
        version: Lsn,
    ) -> Result<Vec<Action>, EncodeError> {
        let row = row_from_text(&self.columns, texts);
        let key = (!self.key.is_empty()).then(|| Row(self.key.iter().map(|&i| row.0[i].clone()).collect()));
        let position = Position {
            commit_lsn: version,
            lsn: version,
            ..Position::default()
        };
        let event = Event::new(Op::Create, self.table.clone(), key, None, Some(row), None, position);
        match route(&event, &self.mapping) {
            Some(routed) => encoder::actions(&Arc::new(routed), &self.mapping),
            None => Ok(Vec::new()),
        }
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
    use crate::source::values::Kind;

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
            "SELECT t.\"id\", t.\"title\", t.\"state\" FROM \"public\".\"items\" t \
             WHERE t.ctid >= '(0,0)' AND \"state\" = 'published'"
        );
        assert_eq!(p.id_sql(), "concat_ws(':', format('%s', t.\"id\"))");
    }
}
