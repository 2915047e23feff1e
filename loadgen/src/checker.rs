//! Per (sender, receiver) delivery checking: lost, duplicated, reordered.
//!
//! Every sender numbers its messages 0, 1, 2, ...; every receiver of that
//! sender gets every message (the receiver set of a sender is fixed for the
//! run), so each (sender, receiver) pair must see the sequence in order,
//! once each. [`SequenceChecker`] keeps the next expected number and a
//! bitmap of the [`WINDOW`] numbers below it, which tells a late arrival
//! (reordered: it was counted as a gap, now it fills it) from a second copy
//! (duplicated).
//!
//! With `--pick random` a sender draws the receiver of each message, so a
//! receiver gets only some of a sender's messages. The sender then numbers
//! its messages per receiver ([`SenderCheckers::next_sequence`]): each pair
//! still sees 0, 1, 2, ... and is checked the same way, and the loss at the
//! end is counted against what the sender addressed to that receiver.

/// How many sequence numbers below the expected one the checker remembers.
/// An arrival older than that is counted as reordered (it cannot be told
/// from a duplicate any more).
pub const WINDOW: u64 = 128;

/// Counters for one pair, or summed over many.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SequenceCounts {
    /// Messages received exactly once, in any order.
    pub received: u64,
    /// Sequence numbers never received (gaps, plus the tail missing at the end).
    pub lost: u64,
    /// Second or later copies of a sequence number.
    pub duplicated: u64,
    /// Messages that arrived after a later one from the same sender.
    pub reordered: u64,
}

impl SequenceCounts {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &SequenceCounts) {
        self.received += other.received;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
    }
}

/// The checker for one (sender, receiver) pair.
#[derive(Clone, Debug, Default)]
pub struct SequenceChecker {
    /// The next sequence number expected.
    expected: u64,
    /// Bit `i` set: `expected - 1 - i` was received. Bits at or beyond
    /// `expected` are never set.
    seen: u128,
    /// Numbers below `expected` not yet received (gaps still open).
    gaps: u64,
    counts: SequenceCounts,
}

/// What one arrival was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// The next expected number, or a jump ahead (the skipped ones become gaps).
    InOrder,
    /// An older number that fills a gap.
    Reordered,
    /// A number already received.
    Duplicated,
}

impl SequenceChecker {
    /// Records the arrival of `sequence`.
    pub fn record(&mut self, sequence: u64) -> Arrival {
        if sequence >= self.expected {
            let skipped = sequence - self.expected;
            self.gaps += skipped;
            let shift = skipped + 1;
            self.seen = if shift >= 128 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.expected = sequence + 1;
            self.counts.received += 1;
            return Arrival::InOrder;
        }
        let distance = self.expected - 1 - sequence;
        if distance >= WINDOW {
            // Too old to tell; a correct server never gets here.
            self.counts.reordered += 1;
            self.gaps = self.gaps.saturating_sub(1);
            self.counts.received += 1;
            return Arrival::Reordered;
        }
        let bit = 1u128 << distance;
        if self.seen & bit != 0 {
            self.counts.duplicated += 1;
            return Arrival::Duplicated;
        }
        self.seen |= bit;
        self.gaps -= 1;
        self.counts.reordered += 1;
        self.counts.received += 1;
        Arrival::Reordered
    }

    /// The counts at the end of the run, given how many messages the sender
    /// sent in total: the tail never received counts as lost.
    pub fn finish(&self, sent: u64) -> SequenceCounts {
        let mut counts = self.counts;
        counts.lost = self.gaps + sent.saturating_sub(self.expected);
        counts
    }

    /// The next sequence number expected.
    pub fn expected(&self) -> u64 {
        self.expected
    }

    /// Whether `sequence` was received; `None` when it is too far below
    /// the expected number to tell (a correct server never leaves a gap
    /// that old).
    pub fn received(&self, sequence: u64) -> Option<bool> {
        if sequence >= self.expected {
            return Some(false);
        }
        let distance = self.expected - 1 - sequence;
        if distance >= WINDOW {
            return (self.gaps == 0).then_some(true);
        }
        Some(self.seen & (1u128 << distance) != 0)
    }

    /// The counts at the end of a durable run: like [`finish`](Self::finish),
    /// but a publication in `unacknowledged` (the server never acknowledged
    /// it) that did not arrive is not counted lost: only what the server
    /// acknowledged is owed. One too old to tell stays counted.
    pub fn finish_durable(
        &self,
        sent: u64,
        unacknowledged: impl Iterator<Item = u64>,
    ) -> SequenceCounts {
        let mut counts = self.finish(sent);
        for sequence in unacknowledged {
            if self.received(sequence) == Some(false) {
                counts.lost = counts.lost.saturating_sub(1);
            }
        }
        counts
    }
}

/// One (sender, receiver) pair as its receiver keeps it.
#[derive(Clone, Debug, Default)]
pub struct Pair {
    /// The sender's client index.
    pub sender: u32,
    /// What arrived from it.
    pub checker: SequenceChecker,
    /// `--pick random`: messages the sender addressed to this receiver so
    /// far (the pair's next sequence number). Unused with fixed receivers,
    /// which get every message of their senders.
    pub addressed: u64,
}

/// The checkers of one receiver, one per sender that sends to it, sorted by
/// sender index.
#[derive(Clone, Debug, Default)]
pub struct SenderCheckers {
    pairs: Vec<Pair>,
}

impl SenderCheckers {
    /// Fixed receivers: every sender is known before the run.
    pub fn with_senders(senders: impl IntoIterator<Item = u32>) -> Self {
        let mut pairs: Vec<Pair> = senders
            .into_iter()
            .map(|sender| Pair {
                sender,
                ..Pair::default()
            })
            .collect();
        pairs.sort_unstable_by_key(|pair| pair.sender);
        SenderCheckers { pairs }
    }

    /// `--pick random`: `sender` addresses one more message to this
    /// receiver; returns the message's sequence number in the pair. The
    /// pair is added on its first message, before anything can arrive.
    pub fn next_sequence(&mut self, sender: u32) -> u64 {
        let position = match self.position(sender) {
            Ok(position) => position,
            Err(position) => {
                self.pairs.insert(
                    position,
                    Pair {
                        sender,
                        ..Pair::default()
                    },
                );
                position
            }
        };
        let pair = &mut self.pairs[position];
        pair.addressed += 1;
        pair.addressed - 1
    }

    /// Records the arrival of `sequence` from `sender`; `None` when
    /// `sender` is not one of this receiver's senders (or, with
    /// `--pick random`, never addressed it).
    pub fn record(&mut self, sender: u32, sequence: u64) -> Option<Arrival> {
        let position = self.position(sender).ok()?;
        Some(self.pairs[position].checker.record(sequence))
    }

    /// Every pair, by sender index.
    pub fn pairs(&self) -> &[Pair] {
        &self.pairs
    }

    fn position(&self, sender: u32) -> Result<usize, usize> {
        self.pairs.binary_search_by_key(&sender, |pair| pair.sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(arrivals: &[u64], sent: u64) -> SequenceCounts {
        let mut checker = SequenceChecker::default();
        for &sequence in arrivals {
            checker.record(sequence);
        }
        checker.finish(sent)
    }

    #[test]
    fn in_order_is_clean() {
        let counts = run(&[0, 1, 2, 3], 4);
        assert_eq!(
            counts,
            SequenceCounts {
                received: 4,
                ..Default::default()
            }
        );
    }

    #[test]
    fn gap_is_lost() {
        let counts = run(&[0, 1, 3, 4], 5);
        assert_eq!(counts.lost, 1);
        assert_eq!(counts.reordered, 0);
    }

    #[test]
    fn tail_is_lost() {
        let counts = run(&[0, 1], 5);
        assert_eq!(counts.lost, 3);
    }

    #[test]
    fn late_arrival_is_reordered_not_lost() {
        let counts = run(&[0, 2, 1, 3], 4);
        assert_eq!(
            counts,
            SequenceCounts {
                received: 4,
                reordered: 1,
                ..Default::default()
            }
        );
    }

    #[test]
    fn second_copy_is_duplicated() {
        let counts = run(&[0, 1, 1, 2, 0], 3);
        assert_eq!(
            counts,
            SequenceCounts {
                received: 3,
                duplicated: 2,
                ..Default::default()
            }
        );
    }

    #[test]
    fn duplicate_after_reorder() {
        let counts = run(&[0, 3, 1, 1, 2, 3], 4);
        assert_eq!(counts.reordered, 2);
        assert_eq!(counts.duplicated, 2);
        assert_eq!(counts.lost, 0);
        assert_eq!(counts.received, 4);
    }

    #[test]
    fn far_jump_clears_the_window() {
        let counts = run(&[0, 1000, 1001], 1002);
        assert_eq!(counts.lost, 999);
        let counts = run(&[0, 1000, 999], 1001);
        assert_eq!(counts.lost, 998);
        assert_eq!(counts.reordered, 1);
    }

    #[test]
    fn durable_loss_excludes_what_was_never_acknowledged() {
        let mut checker = SequenceChecker::default();
        for sequence in [0, 1, 3, 5] {
            checker.record(sequence);
        }
        assert_eq!(checker.received(1), Some(true));
        assert_eq!(checker.received(2), Some(false));
        assert_eq!(checker.received(6), Some(false));
        // 2 was stored and not delivered: lost. 4 and 6, 7 were never
        // acknowledged by the server: not owed.
        assert_eq!(checker.finish(8).lost, 4);
        assert_eq!(checker.finish_durable(8, [4, 6, 7].into_iter()).lost, 1);
        // Unacknowledged but delivered anyway: nothing to take off.
        assert_eq!(checker.finish_durable(8, [5].into_iter()).lost, 4);
        // Far below expected: told only when no gap is open.
        let mut clean = SequenceChecker::default();
        for sequence in 0..500 {
            clean.record(sequence);
        }
        assert_eq!(clean.received(3), Some(true));
        assert_eq!(checker.received(0), Some(true));
        let mut far = SequenceChecker::default();
        far.record(0);
        far.record(400);
        assert_eq!(far.received(5), None);
    }

    #[test]
    fn window_edge() {
        // 127 below expected is still remembered.
        let mut arrivals: Vec<u64> = vec![128];
        arrivals.push(1);
        arrivals.push(1);
        let counts = run(&arrivals, 129);
        assert_eq!(counts.reordered, 1);
        assert_eq!(counts.duplicated, 1);
        assert_eq!(counts.lost, 127);
    }

    #[test]
    fn fixed_senders_are_known_before_the_run() {
        let mut checkers = SenderCheckers::with_senders([9, 3]);
        let senders: Vec<u32> = checkers.pairs().iter().map(|pair| pair.sender).collect();
        assert_eq!(senders, [3, 9]);
        assert_eq!(checkers.record(3, 0), Some(Arrival::InOrder));
        assert_eq!(checkers.record(3, 0), Some(Arrival::Duplicated));
        assert_eq!(checkers.record(4, 0), None);
    }

    #[test]
    fn random_pick_numbers_each_pair_on_its_own() {
        // Senders 1 and 2 draw this receiver now and then: each pair is
        // numbered 0, 1, 2, ... whatever the sender sent elsewhere between.
        let mut checkers = SenderCheckers::default();
        assert_eq!(checkers.record(1, 0), None, "not addressed yet");
        let from_two: Vec<u64> = (0..3).map(|_| checkers.next_sequence(2)).collect();
        let from_one: Vec<u64> = (0..4).map(|_| checkers.next_sequence(1)).collect();
        assert_eq!((from_one, from_two), (vec![0, 1, 2, 3], vec![0, 1, 2]));
        // Sender 1's: 0, 2, 1 (late), 2 again; 3 never comes. Sender 2's
        // all in order.
        for (sender, sequence) in [(1, 0), (2, 0), (1, 2), (2, 1), (1, 1), (2, 2), (1, 2)] {
            assert!(checkers.record(sender, sequence).is_some());
        }
        let pairs = checkers.pairs();
        assert_eq!(
            pairs.iter().map(|pair| pair.sender).collect::<Vec<_>>(),
            [1, 2]
        );
        let one = pairs[0].checker.finish(pairs[0].addressed);
        assert_eq!(
            one,
            SequenceCounts {
                received: 3,
                lost: 1,
                duplicated: 1,
                reordered: 1,
            }
        );
        let two = pairs[1].checker.finish(pairs[1].addressed);
        assert_eq!(
            two,
            SequenceCounts {
                received: 3,
                ..Default::default()
            }
        );
    }
}
