//! What a table's old rows carry, read from the catalog: its replica identity, primary key and
//! identity index. `cdc setup`, `cdc check` and `cdc run` ask their questions here, so they
//! never disagree about a table.
//!
//! Why it matters: Postgres sends, with an update or a delete, only the replica identity's
//! columns of the old row (the primary key by default, the index of `REPLICA IDENTITY USING
//! INDEX`, every column under `FULL`). An event's key must be among them or a delete cannot say
//! which row it removed. And a published table without any identity makes the application's
//! own UPDATE and DELETE fail ("cannot update table ... because it does not have a replica
//! identity and publishes updates"), so cdc must never publish one.

use tokio_postgres::Client;

use crate::config::TableMapping;
use crate::event::TableName;

#[derive(Debug, Clone)]
pub struct Identity {
    pub table: TableName,
    /// `relreplident`: b'd' default (the primary key), b'f' full, b'i' an index, b'n' nothing.
    pub replica_identity: u8,
    pub primary_key: Vec<String>,
    /// The columns of the `REPLICA IDENTITY USING INDEX` index (empty otherwise).
    pub identity_index: Vec<String>,
    pub columns: Vec<String>,
    /// A partitioned table's leaf partitions that have no identity of their own (a partition
    /// does not inherit its parent's `REPLICA IDENTITY FULL`); updates of their rows would fail.
    pub partitions_without_identity: Vec<TableName>,
}

impl Identity {
    /// The table's identity, or None when it does not exist.
    pub async fn read(catalog: &Client, table: &TableName) -> anyhow::Result<Option<Identity>> {
        let Some(row) = catalog
            .query_opt(
                "SELECT c.oid::int8, c.relreplident::text, c.relkind::text FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
                &[&table.schema, &table.name],
            )
            .await?
        else {
            return Ok(None);
        };
        let oid: i64 = row.get(0);
        let replica_identity = row.get::<_, String>(1).bytes().next().unwrap_or(b'd');
        let relkind: String = row.get(2);
        let columns = catalog
            .query(
                "SELECT attname::text FROM pg_catalog.pg_attribute \
                 WHERE attrelid = $1::int8::oid AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                &[&oid],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let primary_key = index_columns(catalog, oid, "i.indisprimary").await?;
        let identity_index = index_columns(catalog, oid, "i.indisreplident").await?;
        let mut partitions_without_identity = Vec::new();
        if relkind == "p" {
            // Leaves that would refuse updates: identity DEFAULT without a primary key, or NOTHING.
            let rows = catalog
                .query(
                    "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_partition_tree($1::int8::regclass) t \
                     JOIN pg_catalog.pg_class c ON c.oid = t.relid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                     WHERE t.isleaf AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS \
                       (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))) \
                     ORDER BY 1, 2",
                    &[&oid],
                )
                .await?;
            partitions_without_identity = rows
                .iter()
                .map(|r| TableName {
                    schema: r.get(0),
                    name: r.get(1),
                })
                .collect();
        }
        Ok(Some(Identity {
            table: table.clone(),
            replica_identity,
            primary_key,
            identity_index,
            columns,
            partitions_without_identity,
        }))
    }

    /// The columns an update's or delete's old row carries; None means every column (FULL).
    pub fn old_row_columns(&self) -> Option<&[String]> {
        match self.replica_identity {
            b'f' => None,
            b'i' => Some(&self.identity_index),
            b'n' => Some(&[]),
            _ => Some(&self.primary_key),
        }
    }

    /// Whether publishing this table's updates and deletes would make the application's own
    /// UPDATE and DELETE on it fail.
    pub fn blocks_writes(&self) -> bool {
        self.old_row_columns().is_some_and(|c| c.is_empty()) || !self.partitions_without_identity.is_empty()
    }

    /// The key events of this table carry without a mapping `key`: the identity index under
    /// `USING INDEX` (the only columns a delete brings), else the primary key. Empty: none.
    pub fn default_key(&self) -> &[String] {
        if self.replica_identity == b'i' {
            &self.identity_index
        } else {
            &self.primary_key
        }
    }

    /// Why `setup` refuses the table, with both fixes; None when its writes are safe to publish.
    pub fn refusal(&self) -> Option<String> {
        if !self.blocks_writes() {
            return None;
        }
        let table = &self.table;
        let what = if self.partitions_without_identity.is_empty() {
            format!("{table} has no primary key and no replica identity")
        } else {
            let names: Vec<String> = self.partitions_without_identity.iter().map(|t| t.to_string()).collect();
            format!(
                "{table}'s partitions {} have no primary key and no replica identity",
                names.join(", ")
            )
        };
        Some(format!(
            "{what}: publishing it would make the application's UPDATE and DELETE on it fail. \
             Fix: add a primary key (ALTER TABLE {} ADD PRIMARY KEY (...)), or run `cdc setup --replica-identity-full {table}` \
             and set `key = [...]` in its mapping",
            table.quoted()
        ))
    }

    /// When the mapping's events would carry no key (no primary key, no identity index, no
    /// `key = [...]`): what to do about it.
    pub fn no_key(&self, mapping: &TableMapping) -> Option<String> {
        (mapping.key.is_none() && self.default_key().is_empty()).then(|| {
            let table = &self.table;
            format!(
                "{table} has no primary key, so its events have no key: set `key = [...]` in its mapping \
                 (with REPLICA IDENTITY FULL: `cdc setup --replica-identity-full {table}`)"
            )
        })
    }

    /// Problems with a mapping's key and id against what old rows carry. Errors: the key cannot
    /// be known for deletes. Warnings: documents whose id changes cannot be removed.
    pub fn check_mapping(&self, mapping: &TableMapping) -> (Vec<String>, Vec<String>) {
        let (mut problems, mut warnings) = (Vec::new(), Vec::new());
        let table = &self.table;
        let carried = self.old_row_columns();
        let carries = |col: &String| carried.is_none_or(|c| c.contains(col));
        if let Some(key) = &mapping.key {
            let missing: Vec<&String> = key.iter().filter(|c| !carries(c)).collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "{table}: the mapping's key {key:?} includes {missing:?}, which Postgres does not send with deletes \
                     (the old row carries only {}). Fix: `cdc setup --replica-identity-full {table}`, or a key of those columns",
                    describe(carried)
                ));
            }
        }
        if let Some(id) = &mapping.id {
            if carried.is_some() && id.iter().any(|c| !carries(c)) {
                warnings.push(format!(
                    "{table}: the document id {id:?} uses columns outside the replica identity ({}): an update that changes \
                     them cannot delete the old document. `cdc setup --replica-identity-full {table}` makes it exact",
                    describe(carried)
                ));
            }
        }
        (problems, warnings)
    }
}

fn describe(carried: Option<&[String]>) -> String {
    match carried {
        None => "every column".to_string(),
        Some([]) => "no column".to_string(),
        Some(c) => c.join(", "),
    }
}

/// Columns of the table's index matching `which` (`i.indisprimary` or `i.indisreplident`), in
/// index order.
async fn index_columns(catalog: &Client, oid: i64, which: &str) -> anyhow::Result<Vec<String>> {
    let rows = catalog
        .query(
            &format!(
                "SELECT a.attname::text FROM pg_catalog.pg_index i \
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = $1::int8::oid AND {which} \
                 ORDER BY array_position(i.indkey::int2[], a.attnum)"
            ),
            &[&oid],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(replica_identity: u8, pk: &[&str], index: &[&str]) -> Identity {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Identity {
            table: TableName::parse("public.t"),
            replica_identity,
            primary_key: strings(pk),
            identity_index: strings(index),
            columns: strings(&["id", "code", "name"]),
            partitions_without_identity: Vec::new(),
        }
    }

    fn mapping(key: Option<&[&str]>, id: Option<&[&str]>) -> TableMapping {
        let mut m = TableMapping::new(TableName::parse("public.t"), vec!["out".into()]);
        m.key = key.map(|k| k.iter().map(|s| s.to_string()).collect());
        m.id = id.map(|k| k.iter().map(|s| s.to_string()).collect());
        m
    }

    #[test]
    fn a_table_without_primary_key_or_identity_blocks_writes() {
        assert!(identity(b'd', &[], &[]).blocks_writes());
        assert!(identity(b'n', &["id"], &[]).blocks_writes());
        assert!(!identity(b'd', &["id"], &[]).blocks_writes());
        assert!(!identity(b'f', &[], &[]).blocks_writes());
        assert!(!identity(b'i', &[], &["code"]).blocks_writes());
        let refusal = identity(b'd', &[], &[]).refusal().unwrap();
        assert!(refusal.contains("ADD PRIMARY KEY") && refusal.contains("--replica-identity-full public.t"));
    }

    #[test]
    fn the_identity_index_is_the_key_under_using_index() {
        assert_eq!(identity(b'i', &["id"], &["code"]).default_key(), ["code"]);
        assert_eq!(identity(b'd', &["id"], &[]).default_key(), ["id"]);
        assert_eq!(identity(b'f', &["id"], &[]).default_key(), ["id"]);
    }

    #[test]
    fn a_mapping_key_the_old_row_does_not_carry_is_refused() {
        let (problems, _) = identity(b'd', &["id"], &[]).check_mapping(&mapping(Some(&["name"]), None));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("--replica-identity-full public.t"), "{problems:?}");
        assert!(identity(b'f', &[], &[])
            .check_mapping(&mapping(Some(&["name"]), None))
            .0
            .is_empty());
        assert!(identity(b'i', &["id"], &["code"])
            .check_mapping(&mapping(Some(&["code"]), None))
            .0
            .is_empty());
        assert!(identity(b'f', &[], &[])
            .no_key(&mapping(None, None))
            .unwrap()
            .contains("no primary key"));
        assert!(identity(b'f', &[], &[]).no_key(&mapping(Some(&["id"]), None)).is_none());
    }

    #[test]
    fn an_id_outside_the_identity_is_a_warning() {
        let (problems, warnings) = identity(b'd', &["id"], &[]).check_mapping(&mapping(None, Some(&["code"])));
        assert!(problems.is_empty());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(identity(b'f', &["id"], &[])
            .check_mapping(&mapping(None, Some(&["code"])))
            .1
            .is_empty());
    }
}
