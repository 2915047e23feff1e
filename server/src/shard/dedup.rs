//! Content dedup, the "same body to the same receiver within N ms" rule
//! (`--content-dedup-window-ms`, off by default): per receiver, the bodies
//! it was sent within the window, by a 128-bit BLAKE3 hash, at most
//! [`CONTENT_DEDUP_ENTRIES_MAX`] of them (oldest forgotten first).

use std::collections::{hash_map::Entry, VecDeque};

use foldhash::HashMap;

/// Bodies one receiver's content-dedup window remembers at most: 1024
/// (about 170 KB of state per receiver while it is full: the hash table
/// and the queue).
pub const CONTENT_DEDUP_ENTRIES_MAX: usize = 1024;

/// A body's identity for content dedup.
pub type ContentHash = u128;

/// The 128-bit BLAKE3 hash of `body`.
pub fn content_hash(body: &[u8]) -> ContentHash {
    let hash = blake3::hash(body);
    let bytes: [u8; 16] = hash.as_bytes()[..16].try_into().expect("16 bytes");
    u128::from_le_bytes(bytes)
}

/// One receiver's recent bodies.
#[derive(Debug, Default)]
pub struct ContentWindow {
    /// Hash -> when it was last accepted.
    seen: HashMap<ContentHash, u64>,
    /// Acceptances in time order, to expire and bound `seen`.
    order: VecDeque<(ContentHash, u64)>,
}

impl ContentWindow {
    /// True when `hash` was accepted within `window_ms` before `now_ms` (a
    /// duplicate: drop it); otherwise remembers it and returns false.
    pub fn check(&mut self, hash: ContentHash, now_ms: u64, window_ms: u64) -> bool {
        if self.seen(hash, now_ms, window_ms) {
            return true;
        }
        self.accept(hash, now_ms);
        false
    }

    /// True when `hash` was accepted within `window_ms` before `now_ms`.
    pub fn seen(&mut self, hash: ContentHash, now_ms: u64, window_ms: u64) -> bool {
        while let Some(&(old, at)) = self.order.front() {
            let expired = at.saturating_add(window_ms) <= now_ms;
            if !expired && self.order.len() < CONTENT_DEDUP_ENTRIES_MAX {
                break;
            }
            self.order.pop_front();
            // Forget it unless a later acceptance of the same body renewed it.
            if let Entry::Occupied(entry) = self.seen.entry(old) {
                if *entry.get() == at {
                    entry.remove();
                }
            }
        }
        self.seen
            .get(&hash)
            .is_some_and(|&at| at.saturating_add(window_ms) > now_ms)
    }

    /// Remembers that a body with `hash` reached the receiver at `now_ms`.
    pub fn accept(&mut self, hash: ContentHash, now_ms: u64) {
        self.seen.insert(hash, now_ms);
        self.order.push_back((hash, now_ms));
    }

    /// Bodies remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_five_second_rule() {
        let mut window = ContentWindow::default();
        let hash = content_hash(b"hi");
        assert!(!window.check(hash, 0, 5_000), "first: delivered");
        assert!(window.check(hash, 4_900, 5_000), "4.9 s later: dropped");
        assert!(
            !window.check(hash, 5_100, 5_000),
            "5.1 s after the first: delivered"
        );
        assert!(!window.check(content_hash(b"other"), 5_100, 5_000));
    }

    #[test]
    fn a_flood_of_distinct_bodies_stays_bounded() {
        let mut window = ContentWindow::default();
        for n in 0..100_000u64 {
            assert!(!window.check(content_hash(&n.to_le_bytes()), n, 60_000));
        }
        assert!(window.len() <= CONTENT_DEDUP_ENTRIES_MAX);
        assert!(window.order.len() <= CONTENT_DEDUP_ENTRIES_MAX);
    }
}
