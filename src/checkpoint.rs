//! The checkpoint: per-sink acknowledgements → the position cdc confirms to Postgres.
//!
//! Every sink owns an [`Ack`] and raises it to the end LSN of each transaction it has fully
//! delivered (or durably handed off). The source asks [`Checkpoint::confirmable`] for the
//! minimum over all sinks and sends that as the slot's flush position, never more.
//!
//! Idle slots must advance too: when a keepalive arrives between transactions, every
//! transaction committed before its `wal_end` has already been handed to the router (the
//! walsender sends in commit order, before the keepalive). Once every sink has acknowledged
//! those, the keepalive's position can be confirmed although no mapped table changed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::event::Lsn;

/// A sink's acknowledgement handle: the end LSN up to which it has delivered every transaction.
#[derive(Clone, Debug)]
pub struct Ack {
    delivered: Arc<AtomicU64>,
}

impl Ack {
    /// A handle no checkpoint waits for (metrics of a sink run outside `cdc run`).
    pub fn detached() -> Ack {
        Ack {
            delivered: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Everything up to and including the transaction ending at `end_lsn` is delivered.
    /// Positions only move forward; a lower value is ignored.
    pub fn delivered(&self, end_lsn: Lsn) {
        self.delivered.fetch_max(end_lsn.0, Ordering::AcqRel);
    }

    pub fn position(&self) -> Lsn {
        Lsn(self.delivered.load(Ordering::Acquire))
    }
}

#[derive(Debug, Default)]
pub struct Checkpoint {
    acks: Vec<Ack>,
    /// End LSN of the last transaction handed to the router.
    dispatched: Lsn,
    /// (dispatched at the time, keepalive wal_end) of the last keepalive seen between transactions.
    idle: Option<(Lsn, Lsn)>,
    /// What was confirmable when `idle` was last replaced: a newer keepalive whose transactions
    /// are not acknowledged yet must not take back the older one's position (the slot would not
    /// move back, but the confirmed-position metric and log lines would).
    floor: Lsn,
}

impl Checkpoint {
    pub fn new() -> Checkpoint {
        Checkpoint::default()
    }

    /// A new sink's handle. It starts at zero: nothing is confirmed on its behalf until it acks.
    pub fn register(&mut self) -> Ack {
        let ack = Ack {
            delivered: Arc::new(AtomicU64::new(0)),
        };
        self.acks.push(ack.clone());
        ack
    }

    /// The source handed a whole transaction ending at `end_lsn` to the router.
    pub fn dispatched(&mut self, end_lsn: Lsn) {
        self.dispatched = self.dispatched.max(end_lsn);
    }

    /// A keepalive arrived while no transaction was open.
    pub fn keepalive(&mut self, wal_end: Lsn) {
        if self.idle.is_none_or(|(_, w)| wal_end > w) {
            self.floor = self.confirmable();
            self.idle = Some((self.dispatched, wal_end));
        }
    }

    /// Whether any transaction was handed to the router in this run.
    pub fn received_any(&self) -> bool {
        self.dispatched > Lsn::ZERO
    }

    /// When some sink has not acknowledged every transaction handed to the router: (the lowest
    /// acknowledged position, the end of the last transaction handed over).
    pub fn undelivered(&self) -> Option<(Lsn, Lsn)> {
        let acked = self.acks.iter().map(Ack::position).min()?;
        (acked < self.dispatched).then_some((acked, self.dispatched))
    }

    /// The minimum position over all sinks; past it the last idle keepalive's position once
    /// every sink caught up with what was dispatched before that keepalive.
    pub fn confirmable(&self) -> Lsn {
        let acked = self.acks.iter().map(Ack::position).min().unwrap_or(self.dispatched);
        let position = match self.idle {
            Some((dispatched_before, wal_end)) if acked >= dispatched_before => acked.max(wal_end),
            _ => acked,
        };
        position.max(self.floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_the_minimum_over_sinks() {
        let mut cp = Checkpoint::new();
        let fast = cp.register();
        let slow = cp.register();
        cp.dispatched(Lsn(300));
        fast.delivered(Lsn(300));
        slow.delivered(Lsn(100));
        assert_eq!(cp.confirmable(), Lsn(100));
        slow.delivered(Lsn(300));
        assert_eq!(cp.confirmable(), Lsn(300));
    }

    #[test]
    fn undelivered_names_what_a_lagging_sink_has_not_acknowledged() {
        let mut cp = Checkpoint::new();
        let fast = cp.register();
        let slow = cp.register();
        cp.dispatched(Lsn(300));
        fast.delivered(Lsn(300));
        slow.delivered(Lsn(100));
        assert_eq!(cp.undelivered(), Some((Lsn(100), Lsn(300))));
        slow.delivered(Lsn(300));
        assert_eq!(cp.undelivered(), None);
    }

    #[test]
    fn acknowledgements_never_go_back() {
        let mut cp = Checkpoint::new();
        let a = cp.register();
        a.delivered(Lsn(200));
        a.delivered(Lsn(150));
        assert_eq!(cp.confirmable(), Lsn(200));
    }

    #[test]
    fn a_newer_keepalive_never_takes_back_an_older_ones_position() {
        let mut cp = Checkpoint::new();
        let a = cp.register();
        cp.keepalive(Lsn(5000));
        assert_eq!(cp.confirmable(), Lsn(5000));
        cp.dispatched(Lsn(6000));
        cp.keepalive(Lsn(6100));
        assert_eq!(
            cp.confirmable(),
            Lsn(5000),
            "the transaction up to 6000 is not acknowledged yet"
        );
        a.delivered(Lsn(6000));
        assert_eq!(cp.confirmable(), Lsn(6100));
    }

    #[test]
    fn an_idle_keepalive_is_confirmed_only_after_every_sink_caught_up() {
        let mut cp = Checkpoint::new();
        let a = cp.register();
        let b = cp.register();
        cp.dispatched(Lsn(100));
        cp.keepalive(Lsn(5000));
        a.delivered(Lsn(100));
        assert_eq!(
            cp.confirmable(),
            Lsn(0),
            "b has not delivered the transaction before the keepalive"
        );
        b.delivered(Lsn(100));
        assert_eq!(cp.confirmable(), Lsn(5000));
        // a later transaction in flight does not pull the confirmed position back
        cp.dispatched(Lsn(6000));
        a.delivered(Lsn(6000));
        assert_eq!(cp.confirmable(), Lsn(5000));
        b.delivered(Lsn(6000));
        assert_eq!(cp.confirmable(), Lsn(6000));
    }
}
