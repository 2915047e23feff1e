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

/// Hands out one shard's user ids.
#[derive(Debug)]
pub struct IdAllocator {
    next: u64,
    step: u64,
}

impl IdAllocator {
    /// Ids for shard `shard` of `shards`.
    pub fn new(shard: usize, shards: usize) -> IdAllocator {
        assert!(shard < shards, "shard {shard} of {shards}");
        let first = if shard == 0 { shards } else { shard };
        IdAllocator {
            next: first as u64,
            step: shards as u64,
        }
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
