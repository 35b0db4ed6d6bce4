//! Events → batches: a batch leaves when it holds `batch_max_events` events or when its first
//! event has waited `batch_max_wait`, whichever comes first. So a burst of 10,000 inserts is
//! 400 requests of 25, and a lone change leaves after the wait. Counting the wait from the
//! first event (not from the last) bounds every event's delay even under a steady trickle.
//!
//! With several lanes each lane has its own open batch; an event's lane follows its row's key,
//! so a row's events stay in one lane, in order. A key-changing update goes to the lane of the
//! old key (behind the row's earlier events), and it *pins* the new key to that lane: the row's
//! later events follow it there instead of to the new key's own lane, where they could overtake
//! it. A pin lasts until its lane has handed off every batch that used it; after that nothing
//! of the row is in flight and the new key's own lane is safe.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::ledger::TxnNo;
use crate::event::{Event, Row, TableName};

/// An event on its way, with the transactions whose events it stands for (several when
/// coalescing merged events of several transactions).
#[derive(Debug)]
pub struct Item {
    pub event: Arc<Event>,
    pub txn: TxnNo,
    pub merged_txns: Vec<TxnNo>,
}

impl Item {
    pub fn new(event: Arc<Event>, txn: TxnNo) -> Item {
        Item {
            event,
            txn,
            merged_txns: Vec::new(),
        }
    }

    pub fn txns(&self) -> impl Iterator<Item = TxnNo> + '_ {
        std::iter::once(self.txn).chain(self.merged_txns.iter().copied())
    }
}

/// A full or due batch for one lane.
#[derive(Debug)]
pub struct Ready {
    pub lane: usize,
    /// The batch's number within its lane (0, 1, 2, …), for [`Batcher::handed_off`].
    pub number: u64,
    pub items: Vec<Item>,
}

pub struct Batcher {
    max_events: usize,
    max_wait: Duration,
    open: Vec<Open>,
    /// Keys whose events must go to another lane than their own (see the module docs).
    pins: HashMap<RowKey, Pin>,
}

#[derive(Default)]
struct Open {
    items: Vec<Item>,
    since: Option<Instant>,
    /// The number the open batch will have.
    number: u64,
}

/// A row's identity for pins: its table and its key as JSON text.
type RowKey = (Arc<TableName>, String);

#[derive(Debug, Clone, Copy, PartialEq)]
struct Pin {
    lane: usize,
    /// The last batch of `lane` that holds an event sent under the pin.
    until: u64,
}

impl Batcher {
    pub fn new(lanes: usize, max_events: usize, max_wait: Duration) -> Batcher {
        Batcher {
            max_events,
            max_wait,
            open: (0..lanes).map(|_| Open::default()).collect(),
            pins: HashMap::new(),
        }
    }

    /// Adds an event to its lane's batch; returns the batch when it is full.
    pub fn push(&mut self, item: Item, now: Instant) -> Option<Ready> {
        let lane = self.lane_for(&item.event);
        let open = &mut self.open[lane];
        open.since.get_or_insert(now);
        open.items.push(item);
        (open.items.len() >= self.max_events).then(|| self.take(lane))
    }

    /// Batches whose first event has waited long enough.
    pub fn due(&mut self, now: Instant) -> Vec<Ready> {
        let lanes: Vec<usize> = (0..self.open.len())
            .filter(|&l| self.open[l].since.is_some_and(|s| s + self.max_wait <= now))
            .collect();
        lanes.into_iter().map(|l| self.take(l)).collect()
    }

    /// When the next batch falls due.
    pub fn deadline(&self) -> Option<Instant> {
        self.open
            .iter()
            .filter_map(|o| o.since)
            .min()
            .map(|s| s + self.max_wait)
    }

    /// Every non-empty batch, at shutdown.
    pub fn flush_all(&mut self) -> Vec<Ready> {
        let lanes: Vec<usize> = (0..self.open.len())
            .filter(|&l| !self.open[l].items.is_empty())
            .collect();
        lanes.into_iter().map(|l| self.take(l)).collect()
    }

    /// The lane handed off (delivered, stored or dead-lettered) its batches up to `number`:
    /// pins whose events all were in those batches are no longer needed.
    pub fn handed_off(&mut self, lane: usize, number: u64) {
        self.pins.retain(|_, pin| pin.lane != lane || pin.until > number);
    }

    /// The event's lane: its key's pin, or else a hash of its table and key. A key change pins
    /// the new key to the lane it took.
    fn lane_for(&mut self, event: &Event) -> usize {
        let lanes = self.open.len();
        if lanes == 1 {
            return 0;
        }
        let pinned = match (&event.key, self.pins.is_empty()) {
            (Some(key), false) => self.pins.get_mut(&row_key(&event.table, key)),
            _ => None,
        };
        let lane = match pinned {
            Some(pin) => {
                pin.until = self.open[pin.lane].number;
                pin.lane
            }
            None => lane_of(&event.table, event.key.as_ref(), lanes),
        };
        if let Some(new_key) = moved_key(event) {
            let until = self.open[lane].number;
            self.pins.insert(row_key(&event.table, &new_key), Pin { lane, until });
        }
        lane
    }

    fn take(&mut self, lane: usize) -> Ready {
        let open = &mut self.open[lane];
        open.since = None;
        open.number += 1;
        Ready {
            lane,
            number: open.number - 1,
            items: std::mem::replace(&mut open.items, Vec::with_capacity(self.max_events)),
        }
    }
}

/// A key's own lane: a hash of the table and the key. A truncate (no key) follows its table.
fn lane_of(table: &TableName, key: Option<&Row>, lanes: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    table.hash(&mut h);
    for (name, value) in key.iter().flat_map(|k| k.0.iter()) {
        name.hash(&mut h);
        value.as_text().hash(&mut h);
    }
    (h.finish() % lanes as u64) as usize
}

fn row_key(table: &Arc<TableName>, key: &Row) -> RowKey {
    (
        table.clone(),
        serde_json::to_string(key).expect("a row always serializes"),
    )
}

/// The row's new key when the event moves it to another key (an update that changed the key,
/// or the create a filter makes of one): the router's `new_key` (set even when the projection
/// dropped key columns from the new row), else the key columns' values in the new row. None when
/// the key stays.
pub fn moved_key(event: &Event) -> Option<Row> {
    match &event.new_key {
        Some(new_key) => Some(new_key.clone()),
        None => event.key.as_ref()?.moved_to(event.new.as_ref()?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Op, Position, Value};

    fn item(id: i64) -> Item {
        let key = Row(vec![(Arc::from("id"), Value::Int(id))]);
        let e = Event::new(
            Op::Create,
            Arc::new(TableName::parse("t")),
            Some(key.clone()),
            None,
            Some(key),
            None,
            Position::default(),
        );
        Item::new(Arc::new(e), 0)
    }

    #[test]
    fn ten_thousand_events_make_four_hundred_batches_of_twenty_five() {
        let mut b = Batcher::new(1, 25, Duration::from_secs(30));
        let now = Instant::now();
        let sizes: Vec<usize> = (0..10_000)
            .filter_map(|i| b.push(item(i), now))
            .map(|r| r.items.len())
            .collect();
        assert_eq!(sizes.len(), 400);
        assert!(sizes.iter().all(|&n| n == 25));
        assert!(b.flush_all().is_empty());
        assert_eq!(b.deadline(), None);
    }

    #[test]
    fn a_lone_event_leaves_after_the_wait() {
        let mut b = Batcher::new(1, 25, Duration::from_secs(30));
        let t0 = Instant::now();
        assert!(b.push(item(1), t0).is_none());
        assert_eq!(b.deadline(), Some(t0 + Duration::from_secs(30)));
        assert!(b.due(t0 + Duration::from_secs(29)).is_empty());
        b.push(item(2), t0 + Duration::from_secs(29));
        let due = b.due(t0 + Duration::from_secs(30));
        assert_eq!(due.len(), 1);
        assert_eq!(
            due[0].items.len(),
            2,
            "the wait counts from the first event, not the last"
        );
    }

    #[test]
    fn zero_wait_sends_whatever_is_at_hand() {
        let mut b = Batcher::new(1, 25, Duration::ZERO);
        let now = Instant::now();
        b.push(item(1), now);
        b.push(item(2), now);
        assert_eq!(b.due(now)[0].items.len(), 2);
    }

    fn moved(id: i64, to: i64) -> Item {
        let e = Event::new(
            Op::Update,
            Arc::new(TableName::parse("t")),
            Some(Row(vec![(Arc::from("id"), Value::Int(id))])),
            None,
            Some(Row(vec![(Arc::from("id"), Value::Int(to))])),
            None,
            Position::default(),
        );
        Item::new(Arc::new(e), 0)
    }

    /// Two ids whose own lanes differ among `lanes`.
    fn ids_in_different_lanes(lanes: usize) -> (i64, i64) {
        let own = |id: i64| {
            let key = Row(vec![(Arc::from("id"), Value::Int(id))]);
            lane_of(&TableName::parse("t"), Some(&key), lanes)
        };
        (2..100)
            .find(|&id| own(id) != own(1))
            .map(|id| (1, id))
            .expect("100 ids hash to more than one lane")
    }

    #[test]
    fn after_a_key_change_the_rows_events_follow_it_until_its_lane_handed_it_off() {
        let (old, new) = ids_in_different_lanes(4);
        let mut b = Batcher::new(4, 1, Duration::ZERO);
        let now = Instant::now();
        let before = b.push(item(old), now).unwrap();
        let change = b.push(moved(old, new), now).unwrap();
        assert_eq!(
            change.lane, before.lane,
            "the key change goes behind the row's earlier events"
        );
        let after = b.push(item(new), now).unwrap();
        assert_eq!(after.lane, change.lane, "the row's next event follows the key change");

        b.handed_off(change.lane, change.number);
        assert_eq!(
            b.push(item(new), now).unwrap().lane,
            change.lane,
            "an event sent under the pin is still in flight"
        );
        b.handed_off(change.lane, change.number + 2);
        let own = b.push(item(new), now).unwrap().lane;
        assert_ne!(
            own, change.lane,
            "once the lane handed everything off, the key's own lane"
        );
        assert!(b.pins.is_empty());
    }

    #[test]
    fn a_chain_of_key_changes_stays_in_one_lane() {
        let mut b = Batcher::new(4, 1, Duration::ZERO);
        let now = Instant::now();
        let first = b.push(moved(1, 2), now).unwrap().lane;
        for (from, to) in [(2, 3), (3, 4), (4, 5), (5, 1)] {
            assert_eq!(b.push(moved(from, to), now).unwrap().lane, first);
        }
        assert_eq!(b.push(item(1), now).unwrap().lane, first);
    }

    #[test]
    fn an_update_that_keeps_its_key_pins_nothing() {
        let mut b = Batcher::new(4, 1, Duration::ZERO);
        b.push(moved(7, 7), Instant::now());
        assert!(b.pins.is_empty());
    }

    #[test]
    fn a_rows_events_always_share_a_lane_and_rows_spread_over_lanes() {
        let mut b = Batcher::new(4, 1, Duration::ZERO);
        let now = Instant::now();
        let lanes_of = |b: &mut Batcher, id| b.push(item(id), now).unwrap().lane;
        for id in 0..50 {
            assert_eq!(lanes_of(&mut b, id), lanes_of(&mut b, id));
        }
        let used: std::collections::HashSet<usize> = (0..50).map(|id| lanes_of(&mut b, id)).collect();
        assert_eq!(used.len(), 4);
    }
}
