//! In-flight transactions, and the highest WAL position that is safe to confirm.
//!
//! Postgres restarts a slot at its `confirmed_flush_lsn` and skips every transaction whose
//! commit record *starts* before it (confirming commit_lsn + 8, still short of the end, lost
//! all 100 rows of a test transaction on restart). So the position sent as
//! "flushed" may pass a transaction only once every webhook it produced was delivered, and
//! it is then the Commit message's `end_lsn`, never the commit start plus something.
//!
//! Deliveries finish out of order (many lanes, many targets); this tracker keeps the
//! transactions in commit order and confirms the longest fully delivered prefix.
//!
//! A keepalive's `wal_end` can point past transactions the server skipped because they
//! touched no published table, so it must not be confirmed while anything sent before it is
//! undelivered. It is queued as a marker behind the transactions in flight and confirmed when
//! they are: every transaction sent after the keepalive commits at or past its `wal_end`, so
//! confirming it never skips one. Without the marker a busy slot would lag until the next
//! keepalive that happens to find nothing in flight.

use std::collections::VecDeque;

use crate::lsn::Lsn;

/// Identifies a transaction inside one replication session (assigned in commit order).
pub type TxnId = u64;

#[derive(Debug, Clone, Copy)]
struct Txn {
    id: TxnId,
    /// Events handed to delivery and not yet acknowledged.
    pending: u64,
    /// Set when the Commit message arrived; until then more events may come.
    end_lsn: Option<Lsn>,
}

/// Why [`Progress::ack`] refused an acknowledgement: a bug upstream, never user input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// The transaction is not in flight (already complete, or never begun).
    #[error("acknowledgement for transaction {0} that is not in flight")]
    UnknownTxn(TxnId),
    /// More acknowledgements than events.
    #[error("more acknowledgements than events for transaction {0}")]
    TooMany(TxnId),
}

/// The tracker: transactions in commit order and the confirmed position (forward-only).
#[derive(Debug)]
pub struct Progress {
    txns: VecDeque<Txn>,
    next_id: TxnId,
    confirmed: Lsn,
}

impl Progress {
    /// A tracker whose slot is already confirmed up to `start`.
    pub fn new(start: Lsn) -> Progress {
        Progress {
            txns: VecDeque::new(),
            next_id: 0,
            confirmed: start,
        }
    }

    /// The position that is safe to send as flushed.
    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    /// Transactions begun and not yet fully delivered.
    pub fn in_flight(&self) -> usize {
        self.txns.len()
    }

    /// A Begin arrived: returns the new transaction's id.
    pub fn begin(&mut self) -> TxnId {
        let id = self.next_id;
        self.next_id += 1;
        self.txns.push_back(Txn {
            id,
            pending: 0,
            end_lsn: None,
        });
        id
    }

    fn index(&self, id: TxnId) -> Option<usize> {
        // Ids rise along the queue; merged entries leave gaps, so search rather than offset.
        self.txns.binary_search_by_key(&id, |t| t.id).ok()
    }

    /// `n` more events of transaction `id` were handed to delivery.
    pub fn add(&mut self, id: TxnId, n: u64) {
        if let Some(i) = self.index(id) {
            self.txns[i].pending += n;
        }
    }

    /// The Commit of transaction `id` arrived: no more events will be added to it.
    pub fn commit(&mut self, id: TxnId, end_lsn: Lsn) {
        let Some(i) = self.index(id) else { return };
        self.txns[i].end_lsn = Some(end_lsn);
        // Consecutive finished transactions behind a slow one collapse into one entry, so a
        // stalled target cannot make this queue grow with transactions that matched nothing.
        self.merge_finished(i);
        self.advance();
    }

    /// One event of transaction `id` was delivered.
    pub fn ack(&mut self, id: TxnId) -> Result<(), AckError> {
        let i = self.index(id).ok_or(AckError::UnknownTxn(id))?;
        let txn = &mut self.txns[i];
        txn.pending = txn.pending.checked_sub(1).ok_or(AckError::TooMany(id))?;
        if txn.pending == 0 {
            self.merge_finished(i);
        }
        self.advance();
        Ok(())
    }

    /// Folds a finished entry into finished neighbours, so that transactions delivered
    /// behind a stuck one (another target's, say) take one entry, not one each.
    fn merge_finished(&mut self, i: usize) {
        let finished = |t: &Txn| t.pending == 0 && t.end_lsn.is_some();
        let mut i = i;
        if i > 0 && finished(&self.txns[i]) && finished(&self.txns[i - 1]) {
            let later = self.txns[i];
            self.txns[i - 1].end_lsn = later.end_lsn;
            self.txns[i - 1].id = later.id;
            self.txns.remove(i);
            i -= 1;
        }
        if i + 1 < self.txns.len() && finished(&self.txns[i]) && finished(&self.txns[i + 1]) {
            self.txns.remove(i);
        }
    }

    /// A keepalive (between transactions) said the server has sent everything up to `wal_end`.
    pub fn keepalive(&mut self, wal_end: Lsn) {
        match self.txns.back_mut() {
            None => self.confirmed = self.confirmed.max(wal_end),
            // Mid-transaction keepalives say nothing about the transaction's own commit.
            Some(Txn { end_lsn: None, .. }) => {}
            // Behind a finished entry (marker or delivered transaction): move its end.
            Some(Txn {
                pending: 0,
                end_lsn: Some(end),
                ..
            }) => *end = (*end).max(wal_end),
            Some(_) => {
                let id = self.next_id;
                self.next_id += 1;
                self.txns.push_back(Txn {
                    id,
                    pending: 0,
                    end_lsn: Some(wal_end),
                });
            }
        }
    }

    fn advance(&mut self) {
        while let Some(front) = self.txns.front() {
            match front.end_lsn {
                Some(end) if front.pending == 0 => {
                    self.confirmed = self.confirmed.max(end);
                    self.txns.pop_front();
                }
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_only_fully_delivered_prefix() {
        let mut p = Progress::new(Lsn(10));
        let a = p.begin();
        p.add(a, 2);
        p.commit(a, Lsn(100));
        let b = p.begin();
        p.add(b, 1);
        p.commit(b, Lsn(200));
        assert_eq!(p.confirmed(), Lsn(10));
        // The later transaction finishing first confirms nothing.
        assert_eq!(p.ack(b), Ok(()));
        assert_eq!(p.confirmed(), Lsn(10));
        assert_eq!(p.ack(a), Ok(()));
        assert_eq!(p.confirmed(), Lsn(10));
        assert_eq!(p.ack(a), Ok(()));
        assert_eq!(p.confirmed(), Lsn(200));
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn an_open_transaction_is_not_confirmed_even_with_everything_acked() {
        let mut p = Progress::new(Lsn::ZERO);
        let a = p.begin();
        p.add(a, 1);
        assert_eq!(p.ack(a), Ok(()));
        assert_eq!(p.confirmed(), Lsn::ZERO);
        p.commit(a, Lsn(50));
        assert_eq!(p.confirmed(), Lsn(50));
    }

    #[test]
    fn keepalive_is_confirmed_only_after_everything_before_it() {
        let mut p = Progress::new(Lsn(5));
        p.keepalive(Lsn(40));
        assert_eq!(p.confirmed(), Lsn(40));
        let a = p.begin();
        p.add(a, 1);
        // Inside a transaction a keepalive is ignored.
        p.keepalive(Lsn(90));
        p.commit(a, Lsn(60));
        assert_eq!(p.confirmed(), Lsn(40));
        // Between transactions it waits behind the undelivered one...
        p.keepalive(Lsn(90));
        let b = p.begin();
        p.add(b, 1);
        p.commit(b, Lsn(120));
        p.keepalive(Lsn(130));
        assert_eq!(p.confirmed(), Lsn(40));
        // ...and is confirmed once that one is delivered, even with a later one in flight.
        assert_eq!(p.ack(a), Ok(()));
        assert_eq!(p.confirmed(), Lsn(90));
        assert_eq!(p.ack(b), Ok(()));
        assert_eq!(p.confirmed(), Lsn(130));
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn keepalives_behind_a_stuck_transaction_do_not_pile_up() {
        let mut p = Progress::new(Lsn::ZERO);
        let a = p.begin();
        p.add(a, 1);
        p.commit(a, Lsn(10));
        for i in 0..1000 {
            p.keepalive(Lsn(20 + i));
        }
        assert_eq!(p.in_flight(), 2);
        assert_eq!(p.ack(a), Ok(()));
        assert_eq!(p.confirmed(), Lsn(1019));
    }

    #[test]
    fn confirmation_never_goes_backwards() {
        let mut p = Progress::new(Lsn(500));
        let a = p.begin();
        p.commit(a, Lsn(100));
        assert_eq!(p.confirmed(), Lsn(500));
        p.keepalive(Lsn(300));
        assert_eq!(p.confirmed(), Lsn(500));
    }

    #[test]
    fn empty_transactions_behind_a_stuck_one_collapse() {
        let mut p = Progress::new(Lsn::ZERO);
        let stuck = p.begin();
        p.add(stuck, 1);
        p.commit(stuck, Lsn(10));
        for i in 0..10_000u64 {
            let t = p.begin();
            p.commit(t, Lsn(20 + i));
        }
        assert!(p.in_flight() <= 2, "{} entries", p.in_flight());
        assert_eq!(p.ack(stuck), Ok(()));
        assert_eq!(p.confirmed(), Lsn(20 + 9_999));
    }

    #[test]
    fn transactions_delivered_behind_a_stuck_one_collapse() {
        // One target is down (holding `stuck`); another delivers every later transaction.
        let mut p = Progress::new(Lsn::ZERO);
        let stuck = p.begin();
        p.add(stuck, 1);
        p.commit(stuck, Lsn(10));
        for i in 0..10_000u64 {
            let t = p.begin();
            p.add(t, 1);
            p.commit(t, Lsn(20 + i));
            assert_eq!(p.ack(t), Ok(()));
        }
        assert!(p.in_flight() <= 2, "{} entries", p.in_flight());
        // Out-of-order acks in the middle merge too.
        let (a, b, c) = (p.begin(), p.begin(), p.begin());
        for (t, end) in [(a, 20_000), (b, 20_001), (c, 20_002)] {
            p.add(t, 1);
            p.commit(t, Lsn(end));
        }
        assert_eq!(p.ack(c), Ok(()));
        assert_eq!(p.ack(a), Ok(()));
        assert_eq!(p.ack(b), Ok(()));
        assert!(p.in_flight() <= 2, "{} entries", p.in_flight());
        assert_eq!(p.confirmed(), Lsn::ZERO);
        assert_eq!(p.ack(stuck), Ok(()));
        assert_eq!(p.confirmed(), Lsn(20_002));
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn bad_acks_are_errors_not_silent_progress() {
        let mut p = Progress::new(Lsn::ZERO);
        let a = p.begin();
        p.add(a, 1);
        assert_eq!(p.ack(a + 1), Err(AckError::UnknownTxn(a + 1)));
        assert_eq!(p.ack(a), Ok(()));
        assert_eq!(p.ack(a), Err(AckError::TooMany(a)));
        p.commit(a, Lsn(7));
        assert_eq!(p.ack(a), Err(AckError::UnknownTxn(a)));
    }
}
