//! Client-side dedup of inbox entries (docs/protocol-v2.md, "Redelivery").
//!
//! Two rules, applied in this order to every delivery:
//! 1. **By `seq`:** an entry whose `seq` is at or below the highest `seq`
//!    already accepted is dropped. This catches redeliveries after a resume.
//!    (The session keeps that mark; see [`SessionClient`](super::SessionClient).)
//! 2. **By `(from, message_id)`**, for `message_id != 0`: a pair already
//!    seen is dropped. This catches a relay retried across a hub crash,
//!    which can land twice in one inbox with two `seq` values.
//!
//! [`RecentIds`] implements rule 2 in bounded memory: for each of at most
//! [`DEDUP_SENDERS_MAX`] senders (least recently seen evicted first), the
//! [`DEDUP_IDS_PER_SENDER`] highest message ids seen. A sender's ids
//! increase, so a retry is close to the newest ids; an id below everything
//! remembered for its sender is treated as new (it cannot be told apart).
//! Worst case: `DEDUP_SENDERS_MAX * DEDUP_IDS_PER_SENDER * 8` bytes (2 MiB)
//! plus map overhead. The set lives in memory only: after a process
//! restart rule 1 (persisted) still holds, rule 2 starts empty.

use std::collections::{HashMap, VecDeque};

use crate::event::UserId;

/// Most senders whose recent message ids are remembered: 1024.
pub const DEDUP_SENDERS_MAX: usize = 1024;

/// Most message ids remembered per sender (its highest ones): 256.
pub const DEDUP_IDS_PER_SENDER: usize = 256;

/// The recent `(from, message_id)` pairs; see the [module docs](self).
#[derive(Debug)]
pub struct RecentIds {
    senders: HashMap<UserId, Sender>,
    senders_max: usize,
    ids_max: usize,
    /// Counts insertions, to find the least recently seen sender.
    clock: u64,
}

#[derive(Debug)]
struct Sender {
    /// Ascending, at most `ids_max` long.
    ids: VecDeque<u64>,
    last_seen: u64,
}

impl Default for RecentIds {
    fn default() -> RecentIds {
        RecentIds::with_bounds(DEDUP_SENDERS_MAX, DEDUP_IDS_PER_SENDER)
    }
}

impl RecentIds {
    /// A set with other bounds (tests); both are at least 1.
    pub fn with_bounds(senders_max: usize, ids_max: usize) -> RecentIds {
        RecentIds {
            senders: HashMap::new(),
            senders_max: senders_max.max(1),
            ids_max: ids_max.max(1),
            clock: 0,
        }
    }

    /// Records `(from, message_id)`; false when it was already there (a
    /// duplicate). `message_id` 0 means none: always new, never recorded.
    pub fn insert(&mut self, from: UserId, message_id: u64) -> bool {
        if message_id == 0 {
            return true;
        }
        self.clock += 1;
        if !self.senders.contains_key(&from) && self.senders.len() >= self.senders_max {
            self.evict_least_recent();
        }
        let ids_max = self.ids_max;
        let sender = self.senders.entry(from).or_insert_with(|| Sender {
            ids: VecDeque::new(),
            last_seen: 0,
        });
        sender.last_seen = self.clock;
        let at = match sender.ids.binary_search(&message_id) {
            Ok(_) => return false,
            Err(at) => at,
        };
        if sender.ids.len() >= ids_max {
            if at == 0 {
                // Below every id remembered: cannot tell; treat it as new.
                return true;
            }
            sender.ids.pop_front();
            sender.ids.insert(at - 1, message_id);
        } else {
            sender.ids.insert(at, message_id);
        }
        true
    }

    /// Senders currently remembered.
    pub fn senders(&self) -> usize {
        self.senders.len()
    }

    /// Ids remembered in total.
    pub fn len(&self) -> usize {
        self.senders.values().map(|sender| sender.ids.len()).sum()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    fn evict_least_recent(&mut self) {
        let oldest = self
            .senders
            .iter()
            .min_by_key(|(_, sender)| sender.last_seen)
            .map(|(&from, _)| from);
        if let Some(from) = oldest {
            self.senders.remove(&from);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_pair_is_a_duplicate() {
        let mut recent = RecentIds::default();
        assert!(recent.insert(2, 5));
        assert!(recent.insert(3, 5), "another sender's 5 is another message");
        assert!(!recent.insert(2, 5));
        assert!(recent.insert(2, 6));
        assert!(
            recent.insert(2, 0) && recent.insert(2, 0),
            "0 is never a duplicate"
        );
        assert_eq!(recent.len(), 3);
    }

    #[test]
    fn out_of_order_ids_are_remembered() {
        let mut recent = RecentIds::with_bounds(4, 4);
        for id in [10, 12, 11] {
            assert!(recent.insert(1, id));
        }
        for id in [10, 11, 12] {
            assert!(!recent.insert(1, id));
        }
    }

    #[test]
    fn ids_per_sender_are_bounded_keeping_the_highest() {
        let mut recent = RecentIds::with_bounds(4, 3);
        for id in 1..=5 {
            assert!(recent.insert(1, id));
        }
        assert_eq!(recent.len(), 3);
        assert!(!recent.insert(1, 5) && !recent.insert(1, 3));
        assert!(recent.insert(1, 2), "forgotten: below the window");
        assert_eq!(recent.len(), 3, "and not recorded");
        assert!(!recent.insert(1, 4));
    }

    #[test]
    fn senders_are_bounded_evicting_the_least_recent() {
        let mut recent = RecentIds::with_bounds(2, 8);
        assert!(recent.insert(1, 1));
        assert!(recent.insert(2, 1));
        assert!(!recent.insert(1, 1), "touches sender 1");
        assert!(recent.insert(3, 1), "evicts sender 2");
        assert_eq!(recent.senders(), 2);
        assert!(!recent.insert(1, 1));
        assert!(recent.insert(2, 1), "sender 2 was forgotten");
    }

    #[test]
    fn memory_is_bounded_by_the_constants() {
        let mut recent = RecentIds::default();
        for from in 0..(DEDUP_SENDERS_MAX as u64 + 10) {
            for id in 1..=(DEDUP_IDS_PER_SENDER as u64 + 5) {
                recent.insert(from, id);
            }
        }
        assert_eq!(recent.senders(), DEDUP_SENDERS_MAX);
        assert_eq!(recent.len(), DEDUP_SENDERS_MAX * DEDUP_IDS_PER_SENDER);
    }
}
