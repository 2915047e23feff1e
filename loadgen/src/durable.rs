//! Durable runs' bookkeeping (`--durable`): which publications the server
//! has acknowledged, which deliveries a receiver already handed on (client
//! side dedup), and the counters a durable run reports.
//!
//! - [`Unstored`]: per sender, the publications sent and not yet
//!   acknowledged (relayhub `Stored`, JetStream publish acks), in sequence
//!   order, acknowledged in any order; the closed-loop window counts them,
//!   and after a reconnect the sender sends them again (same `message_id`).
//! - [`SeqDedup`]: relayhub's client-side dedup: an inbox numbers its
//!   entries and redelivers in order, so the highest `seq` handed on is
//!   enough.
//! - [`StreamDedup`]: JetStream's: a redelivery comes after `ack_wait`,
//!   after later messages, so the stream sequences seen recently are kept.
//! - [`IdDedup`]: Redis Streams': pending entries come back in id order.
//! - [`DurableCounts`]: what a durable run adds to the report.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

/// One publication waiting for its acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    /// Intended send time (ns since the run start).
    send_ns: u64,
    /// Acknowledgements still missing (JetStream: one per receiver).
    missing: u32,
}

/// A sender's publications not yet acknowledged, by sequence number.
#[derive(Clone, Debug, Default)]
pub struct Unstored {
    /// Sequence number of `entries[0]`.
    base: u64,
    /// `entries[i]` is publication `base + i`; acknowledged ones stay until
    /// every older one is acknowledged too.
    entries: VecDeque<Entry>,
    /// Entries with acknowledgements missing.
    outstanding: u64,
    /// Sending again after a reconnect: the next sequence to look at, and
    /// the end (exclusive) of what had been sent before the drop.
    resend: Option<(u64, u64)>,
}

/// An acknowledgement that matches nothing sent and unacknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownAck(pub u64);

impl Unstored {
    /// Records publication `seq` (the next one) sent at `send_ns`, waiting
    /// for `acks` acknowledgements.
    pub fn push(&mut self, seq: u64, send_ns: u64, acks: u32) {
        if self.entries.is_empty() {
            self.base = seq;
        }
        debug_assert_eq!(seq, self.base + self.entries.len() as u64, "in order");
        self.entries.push_back(Entry {
            send_ns,
            missing: acks.max(1),
        });
        self.outstanding += 1;
    }

    /// Publications sent and not yet (fully) acknowledged.
    pub fn outstanding(&self) -> u64 {
        self.outstanding
    }

    /// One acknowledgement of publication `seq` (relayhub: its `Stored`).
    /// Returns its send time when that completed it.
    pub fn ack(&mut self, seq: u64) -> Result<Option<u64>, UnknownAck> {
        let index = seq
            .checked_sub(self.base)
            .filter(|&index| index < self.entries.len() as u64)
            .ok_or(UnknownAck(seq))? as usize;
        let entry = &mut self.entries[index];
        if entry.missing == 0 {
            return Err(UnknownAck(seq));
        }
        entry.missing -= 1;
        let done = (entry.missing == 0).then_some(entry.send_ns);
        if done.is_some() {
            self.outstanding -= 1;
            self.trim();
        }
        Ok(done)
    }

    /// One acknowledgement of the oldest publication still missing one
    /// (JetStream: publish acks come back in publish order); returns its
    /// send time when that completed it.
    pub fn ack_oldest(&mut self) -> Result<Option<u64>, UnknownAck> {
        let seq = self
            .entries
            .iter()
            .position(|entry| entry.missing > 0)
            .map(|index| self.base + index as u64)
            .ok_or(UnknownAck(self.base + self.entries.len() as u64))?;
        self.ack(seq)
    }

    fn trim(&mut self) {
        while self.entries.front().is_some_and(|entry| entry.missing == 0) {
            self.entries.pop_front();
            self.base += 1;
        }
    }

    /// The connection dropped: every publication sent so far (`sent` is
    /// the next sequence) and not acknowledged is to be sent again.
    pub fn begin_resend(&mut self, sent: u64) {
        self.resend = Some((self.base, sent));
    }

    /// The next publication to send again: `(seq, send_ns)`.
    pub fn next_resend(&mut self) -> Option<(u64, u64)> {
        let (mut next, end) = self.resend?;
        next = next.max(self.base);
        while next < end {
            let entry = self.entries[(next - self.base) as usize];
            next += 1;
            if entry.missing > 0 {
                self.resend = Some((next, end));
                return Some((next - 1, entry.send_ns));
            }
        }
        self.resend = None;
        None
    }

    /// Publications still to be sent again.
    pub fn resending(&self) -> bool {
        self.resend.is_some_and(|(next, end)| next < end)
    }

    /// Sequence numbers of the publications not acknowledged.
    pub fn unacked(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, entry)| entry.missing > 0)
            .map(|(index, _)| self.base + index as u64)
    }
}

/// What client-side dedup made of one delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dedup {
    /// Not seen before: handed on (checked, timed).
    New,
    /// Seen before: dropped.
    Duplicate,
}

/// relayhub: an inbox's entries arrive in `seq` order on each connection
/// and are redelivered from the ack floor, so anything at or below the
/// highest `seq` handed on is a copy.
#[derive(Clone, Debug, Default)]
pub struct SeqDedup {
    /// Highest `seq` handed on (0: none yet).
    highest: u64,
    /// Highest `seq` acked (on any connection).
    acked: u64,
    /// Entries the sequence skipped (expired entries, or loss).
    pub skipped: u64,
}

impl SeqDedup {
    /// One delivery numbered `seq`.
    pub fn arrival(&mut self, seq: u64) -> Dedup {
        if seq <= self.highest {
            return Dedup::Duplicate;
        }
        self.skipped += seq - self.highest - 1;
        self.highest = seq;
        Dedup::New
    }

    /// The `upto` of the `Ack` to send now, if anything new is to be acked.
    pub fn ack_due(&mut self) -> Option<u64> {
        (self.highest > self.acked).then(|| {
            self.acked = self.highest;
            self.highest
        })
    }

    /// A new connection: what it should be told first (entries the old
    /// one handed on, whose ack may have been lost with it).
    pub fn reconnected(&mut self) -> Option<u64> {
        (self.highest > 0).then_some(self.highest)
    }

    /// Highest `seq` handed on.
    pub fn highest(&self) -> u64 {
        self.highest
    }
}

/// Redis Streams: a consumer's pending entries are read again in id order
/// after a reconnect, before new ones, so the highest id handed on is
/// enough (ids are `(ms, seq)` and increase within a stream).
#[derive(Clone, Debug, Default)]
pub struct IdDedup {
    highest: (u64, u64),
}

impl IdDedup {
    /// One entry with id `id`.
    pub fn arrival(&mut self, id: (u64, u64)) -> Dedup {
        if id <= self.highest {
            return Dedup::Duplicate;
        }
        self.highest = id;
        Dedup::New
    }
}

/// JetStream: a delivery lost with a connection is sent again after
/// `ack_wait`, after later ones, so dedup remembers the stream sequences it
/// handed on: first deliveries come in stream order (a sorted queue),
/// late ones fill in (a set). Both forget what is older than `horizon_ns`
/// (a few `ack_wait`s: a copy comes back within one); a delivery older
/// than that is handed on, and the checker says what it was.
#[derive(Clone, Debug)]
pub struct StreamDedup {
    /// (stream sequence, arrival ns), increasing sequences.
    recent: VecDeque<(u64, u64)>,
    /// Sequences below the newest one that arrived late, with their
    /// arrival ns.
    filled: BTreeMap<u64, u64>,
    horizon_ns: u64,
    /// When `filled` was last pruned.
    pruned_ns: u64,
}

impl StreamDedup {
    /// Remembers what arrived within the last `horizon_ns`.
    pub fn new(horizon_ns: u64) -> StreamDedup {
        StreamDedup {
            recent: VecDeque::new(),
            filled: BTreeMap::new(),
            horizon_ns,
            pruned_ns: 0,
        }
    }

    /// One delivery of `stream_seq` at `now_ns`.
    pub fn arrival(&mut self, stream_seq: u64, now_ns: u64) -> Dedup {
        while self.recent.len() > 1
            && self
                .recent
                .front()
                .is_some_and(|&(_, at)| now_ns.saturating_sub(at) > self.horizon_ns)
        {
            self.recent.pop_front();
        }
        if !self.filled.is_empty() && now_ns.saturating_sub(self.pruned_ns) > self.horizon_ns / 4 {
            let horizon = self.horizon_ns;
            self.filled
                .retain(|_, &mut at| now_ns.saturating_sub(at) <= horizon);
            self.pruned_ns = now_ns;
        }
        match self.recent.back() {
            Some(&(newest, _)) if stream_seq <= newest => {
                let seen = self
                    .recent
                    .binary_search_by_key(&stream_seq, |&(seq, _)| seq)
                    .is_ok();
                if seen || self.filled.insert(stream_seq, now_ns).is_some() {
                    Dedup::Duplicate
                } else {
                    Dedup::New
                }
            }
            _ => {
                self.recent.push_back((stream_seq, now_ns));
                Dedup::New
            }
        }
    }
}

/// What a durable run reports besides the usual counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DurableCounts {
    /// Publications the server acknowledged (relayhub `Stored`, JetStream
    /// publish acks of all its receivers).
    pub stored: u64,
    /// Of those, acknowledged as a duplicate of an earlier attempt.
    pub stored_duplicate: u64,
    /// Publications sent again after a reconnect (relayhub).
    pub retried: u64,
    /// Publications never acknowledged by the end of the drain (their
    /// deliveries are not counted lost).
    pub unstored: u64,
    /// Connections dropped and resumed.
    pub reconnects: u64,
    /// Deliveries marked as sent before (relayhub `REDELIVERY`, JetStream
    /// delivered count above 1), handed on or not.
    pub redelivered: u64,
    /// Deliveries dropped by client-side dedup (raw duplicates).
    pub deduplicated: u64,
    /// Acks sent (relayhub `Ack`, JetStream ack publishes).
    pub acks: u64,
    /// relayhub: inbox sequence numbers never delivered (expiry or loss).
    pub seq_skipped: u64,
    /// relayhub `--receipts`: receipts received (deduplicated).
    pub receipts: u64,
    /// relayhub `--receipts`: receipts owed for the stored publications
    /// (one per receiver) that had not come by the end of the drain.
    pub receipts_missing: u64,
    /// Sum of reconnect times (drop to ready), ns.
    pub reconnect_ns_total: u64,
    /// Longest reconnect, ns.
    pub reconnect_ns_max: u64,
}

impl DurableCounts {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &DurableCounts) {
        self.stored += other.stored;
        self.stored_duplicate += other.stored_duplicate;
        self.retried += other.retried;
        self.unstored += other.unstored;
        self.reconnects += other.reconnects;
        self.redelivered += other.redelivered;
        self.deduplicated += other.deduplicated;
        self.acks += other.acks;
        self.seq_skipped += other.seq_skipped;
        self.receipts += other.receipts;
        self.receipts_missing += other.receipts_missing;
        self.reconnect_ns_total += other.reconnect_ns_total;
        self.reconnect_ns_max = self.reconnect_ns_max.max(other.reconnect_ns_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_in_any_order_close_the_window() {
        let mut unstored = Unstored::default();
        for seq in 0..5 {
            unstored.push(seq, 100 + seq, 1);
        }
        assert_eq!(unstored.outstanding(), 5);
        assert_eq!(unstored.ack(3), Ok(Some(103)));
        assert_eq!(unstored.ack(3), Err(UnknownAck(3)));
        assert_eq!(unstored.ack(0), Ok(Some(100)));
        assert_eq!(unstored.outstanding(), 3);
        assert_eq!(unstored.unacked().collect::<Vec<_>>(), [1, 2, 4]);
        assert_eq!(unstored.ack(9), Err(UnknownAck(9)));
        for seq in [1, 2, 4] {
            assert!(unstored.ack(seq).unwrap().is_some());
        }
        assert_eq!(unstored.outstanding(), 0);
        assert_eq!(unstored.ack(0), Err(UnknownAck(0)));
        // Empty again: the next publication starts a new base.
        unstored.push(5, 1, 1);
        assert_eq!(unstored.ack(5), Ok(Some(1)));
    }

    #[test]
    fn fanout_acks_complete_in_publish_order() {
        let mut unstored = Unstored::default();
        unstored.push(0, 10, 3);
        unstored.push(1, 11, 3);
        assert_eq!(unstored.ack_oldest(), Ok(None));
        assert_eq!(unstored.ack_oldest(), Ok(None));
        assert_eq!(unstored.ack_oldest(), Ok(Some(10)));
        assert_eq!(unstored.outstanding(), 1);
        for _ in 0..2 {
            assert_eq!(unstored.ack_oldest(), Ok(None));
        }
        assert_eq!(unstored.ack_oldest(), Ok(Some(11)));
        assert_eq!(unstored.ack_oldest(), Err(UnknownAck(2)));
    }

    #[test]
    fn resend_covers_what_the_drop_left_unacknowledged() {
        let mut unstored = Unstored::default();
        for seq in 0..6 {
            unstored.push(seq, seq * 10, 1);
        }
        unstored.ack(1).unwrap();
        unstored.ack(4).unwrap();
        unstored.begin_resend(6);
        assert!(unstored.resending());
        assert_eq!(unstored.next_resend(), Some((0, 0)));
        // Acknowledged meanwhile (a late answer): skipped.
        unstored.ack(2).unwrap();
        // Sent after the reconnect: not part of the resend.
        unstored.push(6, 60, 1);
        let rest: Vec<_> = std::iter::from_fn(|| unstored.next_resend()).collect();
        assert_eq!(rest, [(3, 30), (5, 50)]);
        assert!(!unstored.resending());
        // A second drop before anything was acknowledged: all again.
        unstored.begin_resend(7);
        let again: Vec<_> = std::iter::from_fn(|| unstored.next_resend()).collect();
        assert_eq!(again, [(0, 0), (3, 30), (5, 50), (6, 60)]);
    }

    #[test]
    fn seq_dedup_drops_redelivered_copies() {
        let mut dedup = SeqDedup::default();
        assert_eq!(dedup.ack_due(), None);
        assert_eq!(dedup.reconnected(), None);
        for seq in 1..=3 {
            assert_eq!(dedup.arrival(seq), Dedup::New);
        }
        assert_eq!(dedup.ack_due(), Some(3));
        assert_eq!(dedup.ack_due(), None);
        // The connection dropped before 4's ack; the resume redelivers 2..4.
        assert_eq!(dedup.arrival(4), Dedup::New);
        assert_eq!(dedup.reconnected(), Some(4));
        for seq in 2..=4 {
            assert_eq!(dedup.arrival(seq), Dedup::Duplicate);
        }
        assert_eq!(dedup.arrival(7), Dedup::New);
        assert_eq!(dedup.skipped, 2);
        assert_eq!(dedup.ack_due(), Some(7));
        assert_eq!(dedup.highest(), 7);
    }

    #[test]
    fn id_dedup_orders_like_stream_ids() {
        let mut dedup = IdDedup::default();
        assert_eq!(dedup.arrival((5, 0)), Dedup::New);
        assert_eq!(dedup.arrival((5, 1)), Dedup::New);
        assert_eq!(dedup.arrival((5, 1)), Dedup::Duplicate);
        assert_eq!(dedup.arrival((4, 9)), Dedup::Duplicate);
        assert_eq!(dedup.arrival((6, 0)), Dedup::New);
    }

    #[test]
    fn stream_dedup_takes_late_redeliveries_once() {
        let mut dedup = StreamDedup::new(1000);
        for (seq, at) in [(10, 0), (20, 1), (40, 2)] {
            assert_eq!(dedup.arrival(seq, at), Dedup::New);
        }
        // 30 was lost with a connection, comes back after 40: new.
        assert_eq!(dedup.arrival(30, 500), Dedup::New);
        assert_eq!(dedup.arrival(30, 501), Dedup::Duplicate);
        assert_eq!(dedup.arrival(20, 502), Dedup::Duplicate);
        assert_eq!(dedup.arrival(40, 503), Dedup::Duplicate);
        assert_eq!(dedup.arrival(50, 1500), Dedup::New);
        // 10..40 arrived more than 1000 ns ago: forgotten, handed on.
        assert_eq!(dedup.arrival(20, 1600), Dedup::New);
        assert_eq!(dedup.arrival(50, 1601), Dedup::Duplicate);
        assert_eq!(dedup.arrival(45, 1602), Dedup::New);
        assert_eq!(dedup.arrival(45, 1603), Dedup::Duplicate);
        assert_eq!(dedup.arrival(20, 1900), Dedup::Duplicate);
        // Late arrivals are forgotten by their own arrival time.
        assert_eq!(dedup.arrival(60, 2700), Dedup::New);
        assert_eq!(dedup.arrival(45, 2701), Dedup::New);
    }
}
