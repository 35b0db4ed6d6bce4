//! Coalescing (`coalesce = "10s"`): changes to one row within the window become one event, so
//! a burst of edits to a record costs its receiver one notification (debouncing).
//!
//! A row's first change opens its window; later changes within it merge into the held event:
//! the merged event has the first change's old row, the last change's new row (a TOASTed value
//! it did not carry, being unchanged, taken from an earlier change that did), the union of the
//! changed columns, and the last change's id. An insert followed by updates stays an
//! insert; anything followed by a delete is a delete; a change after a delete starts a new
//! event (the delete leaves first). A truncate first releases every held event, so nothing
//! overtakes it. A key-changing update is never held or merged: the events held under its old
//! key (the row's own) and under its new key (a row that left that key) leave first, then it,
//! so the row's events stay in order and never merge with another row's. The window is never
//! extended, so no event waits longer than the window.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::batcher::{moved_key, Item};
use crate::event::{Op, Row, TableName};

type RowKey = (Arc<TableName>, String);

pub struct Coalescer {
    window: Duration,
    held: HashMap<RowKey, (Instant, Item)>,
    /// Windows in opening order: (when it closes, whose).
    order: VecDeque<(Instant, RowKey)>,
}

impl Coalescer {
    pub fn new(window: Duration) -> Coalescer {
        Coalescer {
            window,
            held: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Takes an event; returns the events that must leave now, in order.
    pub fn push(&mut self, item: Item, now: Instant) -> Vec<Item> {
        let Some(key) = &item.event.key else {
            let mut out = self.drain();
            out.push(item);
            return out;
        };
        let row = row_key(&item.event.table, key);
        if let Some(new_key) = moved_key(&item.event) {
            let new_row = row_key(&item.event.table, &new_key);
            let mut out: Vec<Item> = [row, new_row]
                .iter()
                .filter_map(|r| self.held.remove(r).map(|(_, held)| held))
                .collect();
            out.push(item);
            return out;
        }
        let mut out = Vec::new();
        let item = match self.held.remove(&row) {
            Some((_, prev)) if prev.event.op == Op::Delete => {
                out.push(prev);
                item
            }
            Some((closes, prev)) => {
                self.held.insert(row, (closes, merge(prev, item)));
                return out;
            }
            None => item,
        };
        let closes = now + self.window;
        self.order.push_back((closes, row.clone()));
        self.held.insert(row, (closes, item));
        out
    }

    /// Events whose window closed, in the order their windows opened.
    pub fn due(&mut self, now: Instant) -> Vec<Item> {
        let mut out = Vec::new();
        while let Some((closes, _)) = self.order.front() {
            if *closes > now {
                break;
            }
            let (closes, row) = self.order.pop_front().expect("just looked");
            // A window reopened after a delete has a later close; this entry is stale then.
            if self.held.get(&row).is_some_and(|(c, _)| *c == closes) {
                out.push(self.held.remove(&row).expect("just looked").1);
            }
        }
        out
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.order.front().map(|(closes, _)| *closes)
    }

    /// Every held event, in order (at shutdown, or before a truncate).
    pub fn drain(&mut self) -> Vec<Item> {
        let mut out = Vec::new();
        while let Some((closes, row)) = self.order.pop_front() {
            if self.held.get(&row).is_some_and(|(c, _)| *c == closes) {
                out.push(self.held.remove(&row).expect("just looked").1);
            }
        }
        out
    }
}

fn row_key(table: &Arc<TableName>, key: &crate::event::Row) -> RowKey {
    (
        table.clone(),
        serde_json::to_string(key).expect("a row always serializes"),
    )
}

fn merge(prev: Item, next: Item) -> Item {
    let (a, b) = (&prev.event, &next.event);
    let op = match (a.op, b.op) {
        (Op::Create, Op::Update) => Op::Create,
        (_, op) => op,
    };
    let changed = match (op, &a.changed, &b.changed) {
        (Op::Update, Some(x), Some(y)) => Some(union(x, y)),
        _ => None,
    };
    let new = match (op, &a.new, &b.new) {
        (Op::Delete, _, _) => None,
        (_, Some(earlier), Some(later)) => Some(fill_unchanged_toast(later, earlier)),
        (_, _, later) => later.clone(),
    };
    let merged = b.with_rows(a.key.clone(), a.old.clone(), new, changed, op);
    let mut merged_txns = prev.merged_txns;
    merged_txns.push(prev.txn);
    merged_txns.extend(next.merged_txns);
    Item {
        event: Arc::new(merged),
        txn: next.txn,
        merged_txns,
    }
}

/// `later` with each unchanged-TOAST value taken from `earlier` when that has it. Without
/// REPLICA IDENTITY FULL, an update that leaves a TOASTed column alone does not carry it: the
/// merged event would lose the value the earlier change (an insert, or an update that set it)
/// did carry. The event's `unchanged_toast` list is derived from the row, so it shrinks with it.
fn fill_unchanged_toast(later: &Row, earlier: &Row) -> Row {
    let mut row = later.clone();
    for (name, value) in &mut row.0 {
        if value.is_unchanged_toast() {
            if let Some(known) = earlier.get(name).filter(|v| !v.is_unchanged_toast()) {
                *value = known.clone();
            }
        }
    }
    row
}

fn union(x: &[Arc<str>], y: &[Arc<str>]) -> Vec<Arc<str>> {
    let mut out = x.to_vec();
    out.extend(y.iter().filter(|c| !x.contains(c)).cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Lsn, Position, Value};

    fn row(pairs: &[(&str, i64)]) -> Row {
        Row(pairs.iter().map(|(k, v)| (Arc::from(*k), Value::Int(*v))).collect())
    }

    fn ev(op: Op, id: i64, new: &[(&str, i64)], changed: Option<&[&str]>, seq: u32) -> Item {
        let pos = Position {
            commit_lsn: Lsn(100 + seq as u64),
            seq,
            ..Position::default()
        };
        let new = (op != Op::Delete).then(|| row(new));
        let e = Event::new(
            op,
            Arc::new(TableName::parse("docs")),
            Some(row(&[("id", id)])),
            None,
            new,
            changed.map(|c| c.iter().map(|n| Arc::from(*n)).collect()),
            pos,
        );
        Item::new(Arc::new(e), seq as u64)
    }

    fn changed(item: &Item) -> Vec<String> {
        item.event.changed.iter().flatten().map(|c| c.to_string()).collect()
    }

    #[test]
    fn three_quick_updates_of_one_row_become_one_with_the_union_of_changed_columns() {
        let mut c = Coalescer::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(c
            .push(
                ev(
                    Op::Update,
                    1,
                    &[("id", 1), ("a", 1), ("b", 0), ("c", 0)],
                    Some(&["a"]),
                    1
                ),
                t0
            )
            .is_empty());
        assert!(c
            .push(
                ev(
                    Op::Update,
                    1,
                    &[("id", 1), ("a", 1), ("b", 2), ("c", 0)],
                    Some(&["b"]),
                    2
                ),
                t0
            )
            .is_empty());
        assert!(c
            .push(
                ev(
                    Op::Update,
                    1,
                    &[("id", 1), ("a", 1), ("b", 2), ("c", 3)],
                    Some(&["c", "a"]),
                    3
                ),
                t0
            )
            .is_empty());
        assert!(c.due(t0 + Duration::from_secs(9)).is_empty());
        let out = c.due(t0 + Duration::from_secs(10));
        assert_eq!(out.len(), 1);
        assert_eq!(changed(&out[0]), ["a", "b", "c"]);
        assert_eq!(out[0].event.new, Some(row(&[("id", 1), ("a", 1), ("b", 2), ("c", 3)])));
        assert_eq!(out[0].event.id(), "0/67:3");
        assert_eq!(
            out[0].txns().collect::<Vec<_>>(),
            [3, 1, 2],
            "it stands for all three transactions"
        );
    }

    /// A change of row 1 at `seq` whose new row is `new` (no old row: no REPLICA IDENTITY FULL).
    fn change(op: Op, new: Vec<(&str, Value)>, seq: u32) -> Item {
        let pos = Position {
            commit_lsn: Lsn(100 + seq as u64),
            seq,
            ..Position::default()
        };
        let new = Row(new.into_iter().map(|(k, v)| (Arc::from(k), v)).collect());
        let e = Event::new(
            op,
            Arc::new(TableName::parse("docs")),
            Some(row(&[("id", 1)])),
            None,
            Some(new),
            None,
            pos,
        );
        Item::new(Arc::new(e), seq as u64)
    }

    fn text(s: &str) -> Value {
        Value::String(s.into())
    }

    #[test]
    fn an_unchanged_toast_value_of_a_later_change_is_taken_from_the_earlier_one() {
        let mut c = Coalescer::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let big = "x".repeat(5000);
        let insert = vec![("id", Value::Int(1)), ("title", text("a")), ("body", text(&big))];
        c.push(change(Op::Create, insert, 1), t0);
        let title = vec![
            ("id", Value::Int(1)),
            ("title", text("b")),
            ("body", Value::UnchangedToast),
        ];
        c.push(change(Op::Update, title.clone(), 2), t0);
        let out = c.drain();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].event.op, Op::Create);
        let json: serde_json::Value = serde_json::from_slice(out[0].event.to_json()).unwrap();
        assert_eq!(
            json["new"],
            serde_json::json!({"id": 1, "title": "b", "body": big}),
            "the body the insert carried"
        );
        assert_eq!(json.get("unchanged_toast"), None, "nothing is listed as missing");

        // Two updates neither of which carried the body: it stays unchanged TOAST, and says so.
        c.push(change(Op::Update, title.clone(), 3), t0);
        c.push(change(Op::Update, title, 4), t0);
        let out = c.drain();
        let json: serde_json::Value = serde_json::from_slice(out[0].event.to_json()).unwrap();
        assert_eq!(json["new"], serde_json::json!({"id": 1, "title": "b"}));
        assert_eq!(json["unchanged_toast"], serde_json::json!(["body"]));

        // An update that set the body, then one that did not: the body of the first.
        let set = vec![("id", Value::Int(1)), ("title", text("c")), ("body", text("new body"))];
        c.push(change(Op::Update, set, 5), t0);
        let title = vec![
            ("id", Value::Int(1)),
            ("title", text("d")),
            ("body", Value::UnchangedToast),
        ];
        c.push(change(Op::Update, title, 6), t0);
        let out = c.drain();
        assert_eq!(out[0].event.op, Op::Update);
        assert_eq!(out[0].event.new.as_ref().unwrap().get("body"), Some(&text("new body")));
        assert_eq!(out[0].event.new.as_ref().unwrap().get("title"), Some(&text("d")));
    }

    #[test]
    fn different_rows_are_not_merged_and_leave_in_order() {
        let mut c = Coalescer::new(Duration::from_secs(1));
        let t0 = Instant::now();
        c.push(ev(Op::Create, 1, &[("id", 1)], None, 1), t0);
        c.push(ev(Op::Create, 2, &[("id", 2)], None, 2), t0 + Duration::from_millis(10));
        let out = c.due(t0 + Duration::from_secs(2));
        assert_eq!(
            out.iter().map(|i| i.event.id()).collect::<Vec<_>>(),
            ["0/65:1", "0/66:2"]
        );
    }

    #[test]
    fn an_insert_then_updates_stays_an_insert_and_a_delete_wins() {
        let mut c = Coalescer::new(Duration::from_secs(1));
        let t0 = Instant::now();
        c.push(ev(Op::Create, 1, &[("id", 1), ("a", 0)], None, 1), t0);
        c.push(ev(Op::Update, 1, &[("id", 1), ("a", 5)], Some(&["a"]), 2), t0);
        let created = c.drain();
        assert_eq!(created[0].event.op, Op::Create);
        assert_eq!(created[0].event.new, Some(row(&[("id", 1), ("a", 5)])));

        c.push(ev(Op::Update, 1, &[("id", 1), ("a", 6)], Some(&["a"]), 3), t0);
        c.push(ev(Op::Delete, 1, &[], None, 4), t0);
        let deleted = c.drain();
        assert_eq!(deleted.len(), 1);
        assert_eq!(deleted[0].event.op, Op::Delete);
        assert_eq!(deleted[0].event.new, None);
    }

    #[test]
    fn a_change_after_a_delete_lets_the_delete_leave_first() {
        let mut c = Coalescer::new(Duration::from_secs(1));
        let t0 = Instant::now();
        c.push(ev(Op::Delete, 1, &[], None, 1), t0);
        let out = c.push(ev(Op::Create, 1, &[("id", 1)], None, 2), t0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].event.op, Op::Delete);
        assert!(c
            .due(t0 + Duration::from_secs(1))
            .iter()
            .all(|i| i.event.op == Op::Create));
        assert!(c.drain().is_empty(), "the stale window of the delete releases nothing");
    }

    /// An update of row `id` to key `to`, seq `seq`.
    fn key_change(id: i64, to: i64, seq: u32) -> Item {
        let pos = Position {
            commit_lsn: Lsn(100 + seq as u64),
            seq,
            ..Position::default()
        };
        let e = Event::new(
            Op::Update,
            Arc::new(TableName::parse("docs")),
            Some(row(&[("id", id)])),
            None,
            Some(row(&[("id", to), ("a", 0)])),
            None,
            pos,
        );
        Item::new(Arc::new(e), seq as u64)
    }

    fn ids(items: &[Item]) -> Vec<String> {
        items.iter().map(|i| i.event.id()).collect()
    }

    #[test]
    fn a_key_change_leaves_at_once_after_what_was_held_under_either_key() {
        let mut c = Coalescer::new(Duration::from_secs(10));
        let t0 = Instant::now();
        c.push(ev(Op::Update, 1, &[("id", 1), ("a", 1)], Some(&["a"]), 1), t0);
        c.push(ev(Op::Delete, 2, &[], None, 2), t0);
        let out = c.push(key_change(1, 2, 3), t0);
        assert_eq!(
            ids(&out),
            ["0/65:1", "0/66:2", "0/67:3"],
            "row 1's held update, the held delete of key 2, then the move"
        );
        assert_eq!(
            out[2].event.key,
            Some(row(&[("id", 1)])),
            "not merged: it keeps its old key"
        );
        // The row's next change under its new key is held on its own, not merged into anything.
        assert!(c
            .push(ev(Op::Update, 2, &[("id", 2), ("a", 5)], Some(&["a"]), 4), t0)
            .is_empty());
        let later = c.drain();
        assert_eq!(ids(&later), ["0/68:4"]);
        assert_eq!(later[0].txns().collect::<Vec<_>>(), [4]);
    }

    #[test]
    fn a_truncate_releases_every_held_event_before_it() {
        let mut c = Coalescer::new(Duration::from_secs(10));
        let t0 = Instant::now();
        c.push(ev(Op::Create, 1, &[("id", 1)], None, 1), t0);
        let pos = Position {
            commit_lsn: Lsn(200),
            ..Position::default()
        };
        let truncate = Event::new(
            Op::Truncate,
            Arc::new(TableName::parse("docs")),
            None,
            None,
            None,
            None,
            pos,
        );
        let out = c.push(Item::new(Arc::new(truncate), 9), t0);
        assert_eq!(
            out.iter().map(|i| i.event.op).collect::<Vec<_>>(),
            [Op::Create, Op::Truncate]
        );
        assert_eq!(c.deadline(), None);
    }
}
