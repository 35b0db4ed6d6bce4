//! Events → batches: a batch leaves when it holds `batch_max_events` events or when its first
//! event has waited `batch_max_wait`, whichever comes first. So a burst of 10,000 inserts is
//! 400 requests of 25, and a lone change leaves after the wait. Counting the wait from the
//! first event (not from the last) bounds every event's delay even under a steady trickle.
//!
//! With several lanes each lane has its own open batch; an event's lane follows its row's key,
//! so a row's events stay in one lane, in order.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::ledger::TxnNo;
use crate::event::Event;

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
    pub items: Vec<Item>,
}

pub struct Batcher {
    max_events: usize,
    max_wait: Duration,
    open: Vec<Open>,
}

#[derive(Default)]
struct Open {
    items: Vec<Item>,
    since: Option<Instant>,
}

impl Batcher {
    pub fn new(lanes: usize, max_events: usize, max_wait: Duration) -> Batcher {
        Batcher {
            max_events,
            max_wait,
            open: (0..lanes).map(|_| Open::default()).collect(),
        }
    }

    /// Adds an event to its lane's batch; returns the batch when it is full.
    pub fn push(&mut self, item: Item, now: Instant) -> Option<Ready> {
        let lane = lane_of(&item.event, self.open.len());
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

    fn take(&mut self, lane: usize) -> Ready {
        let open = &mut self.open[lane];
        open.since = None;
        Ready {
            lane,
            items: std::mem::replace(&mut open.items, Vec::with_capacity(self.max_events)),
        }
    }
}

/// The lane of an event: a hash of its table and key. A truncate (no key) follows its table.
pub fn lane_of(event: &Event, lanes: usize) -> usize {
    if lanes == 1 {
        return 0;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    event.table.hash(&mut h);
    for (name, value) in event.key.iter().flat_map(|k| k.0.iter()) {
        name.hash(&mut h);
        value.as_text().hash(&mut h);
    }
    (h.finish() % lanes as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Op, Position, Row, TableName, Value};

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
