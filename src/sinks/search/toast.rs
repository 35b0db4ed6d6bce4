//! Unchanged TOAST values that neither the update nor its old row carried (the table lacks
//! REPLICA IDENTITY FULL): read back from Postgres by key, in one query per table per batch,
//! through [`rows`](super::rows) (keys compared by their own type, values converted as the
//! stream converts them).
//!
//! The row read is the current one, possibly newer than the event. Writing newer values under
//! the event's version is harmless: the newer change follows in the stream with a higher
//! version and writes the same. A row that no longer exists (the key lookup cannot miss a row
//! that is there) has a delete coming; its document is left alone until then rather than
//! written without the value. An action whose row cannot be looked up is never dropped: it
//! comes back as unreadable, for a dead letter.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::Client;

use super::encoder::{encode_document, Action, Write};
use super::rows::{Key, TableRows};
use crate::event::{Row, TableName};

/// What reading back made of a batch's actions.
pub struct ReadBack {
    /// Every action with its document known, in the original order; those whose row is gone
    /// are left out.
    pub actions: Vec<Action>,
    /// Actions whose row could not be looked up, with why.
    pub unreadable: Vec<(Action, String)>,
}

/// Fills in every action still waiting for a read.
pub async fn read_back(pg: &Client, actions: Vec<Action>) -> anyhow::Result<ReadBack> {
    let mut by_table: HashMap<Arc<TableName>, Vec<usize>> = HashMap::new();
    for (i, action) in actions.iter().enumerate() {
        if matches!(action.write, Write::IndexAfterRead { .. }) {
            by_table.entry(action.event.table.clone()).or_default().push(i);
        }
    }
    let mut filled: HashMap<usize, Result<Option<Write>, String>> = HashMap::new();
    for (table, positions) in by_table {
        let Some(rows) = TableRows::load(pg, &table).await? else {
            for i in positions {
                filled.insert(
                    i,
                    Err(format!(
                        "cannot read back the unchanged TOAST values: table {table} no longer exists"
                    )),
                );
            }
            continue;
        };
        let wanted: Vec<&Action> = positions.iter().map(|&i| &actions[i]).collect();
        for (i, doc) in positions.into_iter().zip(read_table(pg, &rows, &wanted).await?) {
            filled.insert(i, doc);
        }
    }
    let mut out = ReadBack {
        actions: Vec::with_capacity(actions.len()),
        unreadable: Vec::new(),
    };
    let mut gone = 0;
    for (i, mut action) in actions.into_iter().enumerate() {
        match filled.remove(&i) {
            None => out.actions.push(action),
            Some(Ok(Some(write))) => {
                action.write = write;
                out.actions.push(action);
            }
            Some(Ok(None)) => gone += 1,
            Some(Err(why)) => out.unreadable.push((action, why)),
        }
    }
    if gone > 0 {
        tracing::debug!(
            gone,
            "rows to read back no longer exist; their deletes follow in the stream"
        );
    }
    Ok(out)
}

/// Each action's write (None: the row is gone), or why it cannot be made.
async fn read_table(
    pg: &Client,
    rows: &TableRows,
    wanted: &[&Action],
) -> anyhow::Result<Vec<Result<Option<Write>, String>>> {
    let mut out: Vec<Result<Option<Write>, String>> = Vec::with_capacity(wanted.len());
    // Actions by the columns of their key (one group, unless the schema changed mid-batch).
    let mut groups: HashMap<Vec<usize>, Vec<(usize, Key)>> = HashMap::new();
    let mut columns: Vec<usize> = Vec::new();
    for (n, action) in wanted.iter().enumerate() {
        out.push(Err(String::new()));
        let Write::IndexAfterRead { missing, filter } = &action.write else {
            continue;
        };
        // The filter's columns too, when it is to be checked on the row (they may be projected
        // out of the document).
        let filter_columns = filter.iter().flat_map(|f| f.columns());
        let key = missing
            .iter()
            .map(|c| &**c)
            .chain(filter_columns)
            .map(|c| {
                rows.index_of(c)
                    .ok_or_else(|| format!("column {c:?} is no longer in table {}", rows.table))
            })
            .collect::<Result<Vec<usize>, String>>()
            .and_then(|missing| Ok((missing, rows.key_of(&action.event)?)));
        match key {
            Ok((missing, key)) => {
                for i in missing {
                    if !columns.contains(&i) {
                        columns.push(i);
                    }
                }
                groups.entry(key.columns.clone()).or_default().push((n, key));
            }
            Err(why) => out[n] = Err(format!("cannot read back the unchanged TOAST values: {why}")),
        }
    }
    for (key_columns, keyed) in groups {
        let keys: Vec<Vec<String>> = keyed.iter().map(|(_, k)| k.inputs.clone()).collect();
        let found = rows.read(pg, &key_columns, &keys, &columns).await?;
        for ((n, _), row) in keyed.into_iter().zip(found) {
            out[n] = row.map_or(Ok(None), |row| document(wanted[n], &row).map(Some));
        }
    }
    Ok(out)
}

/// The event's new row with what Postgres did not send taken from the old row (when it holds
/// it) or from `read`; a delete when the action's filter says the row read is out of it.
fn document(action: &Action, read: &Row) -> Result<Write, String> {
    let new = action.event.new.as_ref().ok_or("the event has no new row")?;
    let old = action.event.old.as_ref();
    let sent = |column: &str| {
        new.get(column)
            .or_else(|| old.and_then(|o| o.get(column)))
            .filter(|v| !v.is_unchanged_toast())
    };
    if let Write::IndexAfterRead {
        filter: Some(filter), ..
    } = &action.write
    {
        let row = Row(filter
            .columns()
            .filter_map(|c| Some((Arc::from(c), sent(c).or_else(|| read.get(c))?.clone())))
            .collect());
        if filter.matches(&row) == Some(false) {
            return Ok(Write::Delete);
        }
    }
    encode_document(new, |column| {
        old.and_then(|o| o.get(column))
            .filter(|v| !v.is_unchanged_toast())
            .or_else(|| read.get(column))
    })
    .map(Write::Index)
    .map_err(|missing| format!("columns {missing:?} were not found when read back"))
}
