//! User ids and who owns them.
//!
//! Shard `s` of `n` hands out `s, s + n, s + 2n, ...` (skipping 0), so the
//! owner of any id is `id % n`: routing is arithmetic, with no directory.
//! Ids are never reused while the hub runs, so a late delivery can never
//! reach a newcomer who inherited an id.

/// The shard that owns `user` among `shards`.
pub fn owner(user: u64, shards: usize) -> usize {
    (user % shards as u64) as usize
}

/// Ids reserved per `IdsReserved` log record: the log holds one record per
/// this many ids handed out, and a restart skips at most this many.
pub const ID_RESERVATION_BLOCK: u64 = 4096;

/// Hands out one shard's user ids.
#[derive(Debug)]
pub struct IdAllocator {
    next: u64,
    step: u64,
    /// Ids below this may have been handed out (the last reservation the
    /// log holds); 0 until the first reservation.
    reserved: u64,
    shard: u64,
}

impl IdAllocator {
    /// Ids for shard `shard` of `shards`.
    pub fn new(shard: usize, shards: usize) -> IdAllocator {
        assert!(shard < shards, "shard {shard} of {shards}");
        let first = if shard == 0 { shards } else { shard };
        IdAllocator {
            next: first as u64,
            step: shards as u64,
            reserved: 0,
            shard: shard as u64,
        }
    }

    /// The reservation bound the log holds.
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// True when the next id needs a new reservation first.
    pub fn needs_reservation(&self) -> bool {
        self.next >= self.reserved
    }

    /// Reserves the next block of ids; returns the new bound to log.
    pub fn reserve_block(&mut self) -> u64 {
        self.reserved = self.next + ID_RESERVATION_BLOCK * self.step;
        self.reserved
    }

    /// After a restart: ids below `bound` may have been handed out.
    pub fn resume_at(&mut self, bound: u64) {
        self.resume_above(bound.saturating_sub(1));
    }

    /// After a restart: `user` was handed out; continue above it.
    pub fn resume_above(&mut self, user: u64) {
        if user < self.next {
            return;
        }
        // The smallest id of this shard above `user`.
        let above = user + 1;
        let offset = (self.shard + self.step - above % self.step) % self.step;
        self.next = (above + offset).max(self.next);
    }

    /// The next unused id.
    pub fn allocate(&mut self) -> u64 {
        let id = self.next;
        // 2^64 ids at a million connections per second last 584,000 years.
        self.next = self
            .next
            .checked_add(self.step)
            .expect("user ids exhausted");
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_resumes_above_every_reservation() {
        for shards in 1..=4 {
            for shard in 0..shards {
                let mut ids = IdAllocator::new(shard, shards);
                let mut handed = Vec::new();
                for _ in 0..10 {
                    if ids.needs_reservation() {
                        ids.reserve_block();
                    }
                    handed.push(ids.allocate());
                }
                let mut after = IdAllocator::new(shard, shards);
                after.resume_at(ids.reserved());
                let next = after.allocate();
                assert_eq!(owner(next, shards), shard);
                assert!(
                    handed.iter().all(|&id| id < next),
                    "{next} reused one of {handed:?}"
                );
            }
        }
    }

    #[test]
    fn every_shard_owns_the_ids_it_hands_out_and_none_is_zero() {
        for shards in 1..=8 {
            let mut seen = std::collections::HashSet::new();
            for shard in 0..shards {
                let mut ids = IdAllocator::new(shard, shards);
                for _ in 0..100 {
                    let id = ids.allocate();
                    assert_ne!(id, 0);
                    assert_eq!(owner(id, shards), shard);
                    assert!(seen.insert(id), "{id} handed out twice");
                }
            }
        }
    }
}
