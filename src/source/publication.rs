//! What an existing publication lets through. A publication cdc did not create may drop changes
//! of the mapped tables without any error: one created `WITH (publish = 'insert')` never sends
//! updates or deletes, and on Postgres 15+ a row filter or a column list on a mapped table keeps
//! rows or columns back. `cdc setup` refuses such a publication, `cdc check` reports it and `cdc
//! run` does not start on it. cdc never changes it itself: someone chose those settings, so the
//! message says what to run instead.

use tokio_postgres::Client;

use crate::event::TableName;

/// Every operation cdc streams; a publication must publish all of them.
const OPERATIONS: [&str; 4] = ["insert", "update", "delete", "truncate"];

/// One line per way `publication` drops changes of `tables`, each with its fix; empty when it
/// lets every change through or does not exist.
pub async fn gaps(catalog: &Client, publication: &str, tables: &[&TableName]) -> anyhow::Result<Vec<String>> {
    let mut gaps = Vec::new();
    let Some(row) = catalog
        .query_opt(
            "SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_catalog.pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?
    else {
        return Ok(gaps);
    };
    let missing: Vec<&str> = OPERATIONS
        .iter()
        .enumerate()
        .filter(|(i, _)| !row.get::<_, bool>(*i))
        .map(|(_, op)| *op)
        .collect();
    let another = "or set source.publication to a new name, for `cdc setup` to create";
    if !missing.is_empty() {
        gaps.push(format!(
            "publication {publication} does not publish {}: those changes never reach cdc. \
             Fix: ALTER PUBLICATION {publication} SET (publish = '{}'); {another}",
            missing.join(", "),
            OPERATIONS.join(", ")
        ));
    }

    // Row filters and column lists came with Postgres 15 (and the view's columns with them).
    let version: i32 = catalog
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await?
        .get(0);
    if version < 150000 {
        return Ok(gaps);
    }
    // From the catalog rather than pg_publication_tables, whose `attnames` lists the columns
    // differently across versions when there is no column list (generated columns or not).
    let rows = catalog
        .query(
            "SELECT n.nspname::text, c.relname::text, pg_catalog.pg_get_expr(pr.prqual, pr.prrelid), \
               (SELECT string_agg(a.attname::text, ', ' ORDER BY a.attnum) FROM pg_catalog.pg_attribute a \
                 WHERE a.attrelid = pr.prrelid AND a.attnum = ANY(pr.prattrs::int2[])) \
             FROM pg_catalog.pg_publication_rel pr \
             JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid \
             JOIN pg_catalog.pg_class c ON c.oid = pr.prrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE p.pubname = $1 ORDER BY 1, 2",
            &[&publication],
        )
        .await?;
    for row in rows {
        let table = TableName {
            schema: row.get(0),
            name: row.get(1),
        };
        if !tables.contains(&&table) {
            continue;
        }
        let row_filter: Option<String> = row.get(2);
        let column_list: Option<String> = row.get(3);
        let what = match (row_filter, column_list) {
            (None, None) => continue,
            (Some(filter), None) => format!("a row filter on {table} (WHERE {filter}): changes of other rows"),
            (None, Some(columns)) => {
                format!("a column list on {table} ({columns}): its other columns")
            }
            (Some(filter), Some(columns)) => format!(
                "a row filter (WHERE {filter}) and a column list ({columns}) on {table}: changes of other rows and columns"
            ),
        };
        // One transaction, so no change falls between the two.
        gaps.push(format!(
            "publication {publication} has {what} never reach cdc. Fix: BEGIN; ALTER PUBLICATION {publication} DROP TABLE {quoted}; \
             ALTER PUBLICATION {publication} ADD TABLE ONLY {quoted}; COMMIT; {another}",
            quoted = table.quoted()
        ));
    }
    Ok(gaps)
}
