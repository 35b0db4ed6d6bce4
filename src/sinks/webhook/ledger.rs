//! Which transactions are fully handed off, so the sink acknowledges exactly those.
//!
//! Batches cut across transactions, lanes finish out of order, and coalescing merges events of
//! several transactions into one: so the sink counts, per transaction, the events not yet
//! delivered or stored, and acknowledges the end LSN of the longest prefix of committed
//! transactions whose counts reached zero. O(1) per event; one entry per open transaction.

use std::collections::VecDeque;

use crate::event::Lsn;

/// A transaction's number within this run of the sink.
pub type TxnNo = u64;

#[derive(Debug, Default)]
pub struct Ledger {
    /// The number of `txns[0]`.
    base: TxnNo,
    txns: VecDeque<Txn>,
}

#[derive(Debug, Default)]
struct Txn {
    outstanding: u64,
    end_lsn: Option<Lsn>,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// An event of the transaction in progress is held; returns that transaction's number.
    pub fn hold(&mut self) -> TxnNo {
        if self.txns.back().is_none_or(|t| t.end_lsn.is_some()) {
            self.txns.push_back(Txn::default());
        }
        self.txns.back_mut().expect("just ensured").outstanding += 1;
        self.base + self.txns.len() as u64 - 1
    }

    /// The transaction in progress ended at `end_lsn`.
    pub fn commit(&mut self, end_lsn: Lsn) {
        match self.txns.back_mut() {
            Some(t) if t.end_lsn.is_none() => t.end_lsn = Some(end_lsn),
            _ => self.txns.push_back(Txn {
                outstanding: 0,
                end_lsn: Some(end_lsn),
            }),
        }
    }

    /// `count` events of transaction `txn` were delivered or durably handed off.
    pub fn release(&mut self, txn: TxnNo, count: u64) {
        let t = &mut self.txns[(txn - self.base) as usize];
        t.outstanding -= count;
    }

    /// The end LSN up to which everything is handed off, if it moved; forgets those transactions.
    pub fn acknowledgeable(&mut self) -> Option<Lsn> {
        let mut acked = None;
        while let Some(t) = self.txns.front() {
            match t.end_lsn {
                Some(end) if t.outstanding == 0 => acked = Some(end),
                _ => break,
            }
            self.txns.pop_front();
            self.base += 1;
        }
        acked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_is_acknowledged_once_all_its_events_are_released() {
        let mut l = Ledger::new();
        let t = l.hold();
        l.hold();
        l.commit(Lsn(100));
        assert_eq!(l.acknowledgeable(), None);
        l.release(t, 1);
        assert_eq!(l.acknowledgeable(), None);
        l.release(t, 1);
        assert_eq!(l.acknowledgeable(), Some(Lsn(100)));
        assert_eq!(l.acknowledgeable(), None, "only news is reported");
    }

    #[test]
    fn transactions_without_events_wait_for_the_ones_before_them() {
        let mut l = Ledger::new();
        let first = l.hold();
        l.commit(Lsn(100));
        l.commit(Lsn(200));
        l.commit(Lsn(300));
        assert_eq!(l.acknowledgeable(), None);
        l.release(first, 1);
        assert_eq!(l.acknowledgeable(), Some(Lsn(300)));
    }

    #[test]
    fn a_later_transaction_released_first_waits_for_the_earlier_one() {
        let mut l = Ledger::new();
        let a = l.hold();
        l.commit(Lsn(100));
        let b = l.hold();
        l.commit(Lsn(200));
        l.release(b, 1);
        assert_eq!(l.acknowledgeable(), None);
        l.release(a, 1);
        assert_eq!(l.acknowledgeable(), Some(Lsn(200)));
    }

    #[test]
    fn an_uncommitted_transaction_is_never_acknowledged() {
        let mut l = Ledger::new();
        let t = l.hold();
        l.release(t, 1);
        assert_eq!(l.acknowledgeable(), None);
        l.commit(Lsn(50));
        assert_eq!(l.acknowledgeable(), Some(Lsn(50)));
    }
}
