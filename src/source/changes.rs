//! Row changes → events: one event per inserted, updated or deleted row, one per truncated
//! table. Pure functions over the relation cache's view of the table.

use std::sync::Arc;

use crate::event::{Event, Op, Position, Row, TruncateFlags, Value};
use crate::source::pgoutput::{OldKind, OldTuple, TupleData};
use crate::source::relations::{to_row, Relation};

/// Microseconds from the Unix epoch to Postgres' epoch (2000-01-01).
const PG_EPOCH_US: i64 = 946_684_800_000_000;

pub fn pg_time_to_unix_us(pg_us: i64) -> i64 {
    pg_us + PG_EPOCH_US
}

pub fn insert(rel: &Relation, new: &TupleData<'_>, pos: Position) -> Event {
    let new = to_row(rel, new);
    Event::new(
        Op::Create,
        rel.table.clone(),
        rel.key_of(&new),
        None,
        Some(new),
        None,
        pos,
    )
}

/// An update. With the whole old row (REPLICA IDENTITY FULL), `changed` is exact and unchanged
/// TOAST values are filled from the old row; with only the old key (the key changed), the
/// event carries the old key; otherwise the old row and `changed` are unknown (None).
pub fn update(rel: &Relation, old: Option<&OldTuple<'_>>, new: &TupleData<'_>, pos: Position) -> Event {
    let mut new = to_row(rel, new);
    let (old, changed) = match old {
        Some(OldTuple {
            kind: OldKind::Full,
            tuple,
        }) => {
            let old = to_row(rel, tuple);
            let mut changed = Vec::new();
            for ((name, new_value), (_, old_value)) in new.0.iter_mut().zip(old.0.iter()) {
                if new_value.is_unchanged_toast() {
                    if !old_value.is_unchanged_toast() {
                        *new_value = old_value.clone();
                    }
                } else if new_value != old_value {
                    changed.push(name.clone());
                }
            }
            (Some(old), Some(changed))
        }
        Some(OldTuple {
            kind: OldKind::Key,
            tuple,
        }) => (Some(key_columns(rel, &to_row(rel, tuple))), None),
        None => (None, None),
    };
    let key = match &old {
        Some(old_row) => rel.key_of(&full_width(rel, old_row)).or_else(|| rel.key_of(&new)),
        None => rel.key_of(&new),
    };
    Event::new(Op::Update, rel.table.clone(), key, old, Some(new), changed, pos)
}

pub fn delete(rel: &Relation, old: &OldTuple<'_>, pos: Position) -> Event {
    let row = to_row(rel, &old.tuple);
    let key = rel.key_of(&row);
    let old = match old.kind {
        OldKind::Full => row,
        OldKind::Key => key_columns(rel, &row),
    };
    Event::new(Op::Delete, rel.table.clone(), key, Some(old), None, None, pos)
}

pub fn truncate(rel: &Relation, flags: TruncateFlags, pos: Position) -> Event {
    let mut event = Event::new(Op::Truncate, rel.table.clone(), None, None, None, None, pos);
    event.truncate = Some(flags);
    event
}

/// A key-only old tuple has every column, the non-key ones NULL: keep the identity columns.
fn key_columns(rel: &Relation, row: &Row) -> Row {
    match rel.key_of(row) {
        Some(key) => key,
        None => Row(row
            .0
            .iter()
            .filter(|(_, v)| !matches!(v, Value::Null))
            .cloned()
            .collect()),
    }
}

/// `key_of` indexes by column position; a narrowed row (key columns only) is widened back.
fn full_width(rel: &Relation, narrowed: &Row) -> Row {
    Row(rel
        .columns
        .iter()
        .map(|c| (c.name.clone(), narrowed.get(&c.name).cloned().unwrap_or(Value::Null)))
        .collect::<Vec<(Arc<str>, Value)>>())
}
