//! Who sends to whom: the receiver sets of a run, drawn from a seed.
//!
//! Clients are split into contiguous ranges, one per loadgen executor, and
//! every sender's receivers are drawn from its own executor's range. The
//! server does not know about loadgen executors, so this changes nothing
//! for it; for the loadgen it means a delivery only ever touches state of
//! the executor that received it (no cross-thread wake-ups in the window
//! accounting).
//!
//! `--pick random` changes how a relay's receiver is chosen: not once for
//! the run but per message, uniformly among the sender's executor's other
//! clients ([`other_client`]), as users of a hub do. The executor-local
//! property holds either way.

use crate::error::LoadgenError;

/// Most receivers per publication (relayhub's `RECEIVERS_MAX`).
pub const FANOUT_MAX: usize = 255;

/// Who each sender sends to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// 1:1 between random pairs: a random cyclic permutation, so every
    /// client sends to exactly one other and receives from exactly one.
    Relay,
    /// Every client sends to `K` distinct random other clients.
    Fanout(usize),
    /// Every client sends to itself (a round trip through the server).
    Echo,
}

impl Topology {
    /// Receivers per publication.
    pub fn fanout(self) -> usize {
        match self {
            Topology::Relay | Topology::Echo => 1,
            Topology::Fanout(count) => count,
        }
    }
}

/// How a relay's receiver is chosen (`--pick`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Pick {
    /// Once for the run: the random cyclic permutation of [`Topology::Relay`].
    #[default]
    Fixed,
    /// Per message: uniformly among the other clients of the sender's
    /// executor ([`other_client`]); each (sender, receiver) pair numbers its
    /// own messages 0, 1, 2, ...
    Random,
}

/// A small, seedable generator (SplitMix64): no dependency, reproducible.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound > 0`).
    pub fn below(&mut self, bound: usize) -> usize {
        debug_assert!(bound > 0);
        ((u128::from(self.next_u64()) * bound as u128) >> 64) as usize
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// The client range `[first, first + count)` of executor `executor` of `executors`.
pub fn client_range(clients: usize, executors: usize, executor: usize) -> (usize, usize) {
    let base = clients / executors;
    let extra = clients % executors;
    let first = executor * base + executor.min(extra);
    let count = base + usize::from(executor < extra);
    (first, count)
}

/// A client in `0..count` other than `sender`, each of the `count - 1`
/// equally likely (`count >= 2`): `--pick random`'s receiver of one message.
pub fn other_client(rng: &mut SplitMix64, count: usize, sender: usize) -> usize {
    debug_assert!(count >= 2 && sender < count);
    let drawn = rng.below(count - 1);
    drawn + usize::from(drawn >= sender)
}

/// The fixed receivers (indices in `0..count`) of each of `count` local
/// clients: [`receivers`] for [`Pick::Fixed`]; none for [`Pick::Random`],
/// whose receivers are drawn per message (relay only, at least 2 clients).
pub fn plan(
    topology: Topology,
    pick: Pick,
    count: usize,
    rng: &mut SplitMix64,
) -> Result<Vec<Vec<usize>>, LoadgenError> {
    match (pick, topology) {
        (Pick::Fixed, _) => receivers(topology, count, rng),
        (Pick::Random, Topology::Relay) if count >= 2 => Ok(vec![Vec::new(); count]),
        (Pick::Random, Topology::Relay) => receivers(topology, count, rng),
        (Pick::Random, other) => Err(LoadgenError::BadOptions(format!(
            "--pick random chooses a relay's one receiver per message; {other:?} has its own receivers"
        ))),
    }
}

/// The receivers (indices in `0..count`) of each of `count` local clients.
///
/// Fails when the topology needs more clients than there are: fan-out K
/// needs at least K + 1 clients per executor, relay at least 2.
pub fn receivers(
    topology: Topology,
    count: usize,
    rng: &mut SplitMix64,
) -> Result<Vec<Vec<usize>>, LoadgenError> {
    match topology {
        Topology::Echo => Ok((0..count).map(|client| vec![client]).collect()),
        Topology::Relay => {
            if count < 2 {
                return Err(LoadgenError::BadOptions(
                    "relay needs at least 2 clients per core (--clients >= 2 x --cores)".into(),
                ));
            }
            let mut order: Vec<usize> = (0..count).collect();
            rng.shuffle(&mut order);
            let mut receivers = vec![Vec::new(); count];
            for position in 0..count {
                receivers[order[position]] = vec![order[(position + 1) % count]];
            }
            Ok(receivers)
        }
        Topology::Fanout(fanout) => {
            if fanout == 0 || fanout > FANOUT_MAX {
                return Err(LoadgenError::BadOptions(format!(
                    "--fanout must be in 1..={FANOUT_MAX}"
                )));
            }
            if count < fanout + 1 {
                return Err(LoadgenError::BadOptions(format!(
                    "fan-out to {fanout} needs at least {} clients per core, have {count}",
                    fanout + 1
                )));
            }
            let mut others: Vec<usize> = (0..count).collect();
            Ok((0..count)
                .map(|sender| {
                    // Partial Fisher-Yates over everyone but the sender,
                    // undone afterwards so the next sender starts from the
                    // identity again: O(K) per sender.
                    others.swap(sender, count - 1);
                    let mut swaps = [0usize; FANOUT_MAX];
                    let pool = &mut others[..count - 1];
                    for (i, swap) in swaps.iter_mut().enumerate().take(fanout) {
                        let j = i + rng.below(pool.len() - i);
                        pool.swap(i, j);
                        *swap = j;
                    }
                    let chosen = pool[..fanout].to_vec();
                    for i in (0..fanout).rev() {
                        pool.swap(i, swaps[i]);
                    }
                    others.swap(sender, count - 1);
                    chosen
                })
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_all_clients() {
        let ranges: Vec<_> = (0..3).map(|e| client_range(10, 3, e)).collect();
        assert_eq!(ranges, [(0, 4), (4, 3), (7, 3)]);
    }

    #[test]
    fn relay_is_a_derangement_permutation() {
        let mut rng = SplitMix64::new(1);
        let receivers = receivers(Topology::Relay, 50, &mut rng).unwrap();
        let mut hit = [0; 50];
        for (sender, targets) in receivers.iter().enumerate() {
            assert_eq!(targets.len(), 1);
            assert_ne!(targets[0], sender);
            hit[targets[0]] += 1;
        }
        assert!(hit.iter().all(|&count| count == 1));
    }

    #[test]
    fn random_pick_is_uniform_among_the_others() {
        let mut rng = SplitMix64::new(3);
        for count in [2, 3, 8] {
            for sender in 0..count {
                let mut hit = vec![0u32; count];
                let draws = 2_000 * count as u32;
                for _ in 0..draws {
                    hit[other_client(&mut rng, count, sender)] += 1;
                }
                assert_eq!(hit[sender], 0, "never the sender itself");
                let expected = f64::from(draws) / (count - 1) as f64;
                for (client, &hits) in hit.iter().enumerate().filter(|(c, _)| *c != sender) {
                    let share = f64::from(hits) / expected;
                    assert!((0.9..1.1).contains(&share), "{client}: {share}");
                }
            }
        }
    }

    #[test]
    fn random_pick_plans_no_fixed_receivers() {
        let mut rng = SplitMix64::new(4);
        let planned = plan(Topology::Relay, Pick::Random, 5, &mut rng).unwrap();
        assert_eq!(planned, vec![Vec::<usize>::new(); 5]);
        assert!(plan(Topology::Relay, Pick::Random, 1, &mut rng).is_err());
        for topology in [Topology::Echo, Topology::Fanout(2)] {
            assert!(plan(topology, Pick::Random, 5, &mut rng).is_err());
        }
        let fixed = plan(Topology::Relay, Pick::Fixed, 5, &mut rng).unwrap();
        assert!(fixed.iter().all(|targets| targets.len() == 1));
    }

    #[test]
    fn fanout_picks_distinct_others() {
        let mut rng = SplitMix64::new(2);
        let all = receivers(Topology::Fanout(255), 256, &mut rng).unwrap();
        assert!(all
            .iter()
            .enumerate()
            .all(|(sender, targets)| targets.len() == 255 && !targets.contains(&sender)));
        let receivers = receivers(Topology::Fanout(16), 20, &mut rng).unwrap();
        for (sender, targets) in receivers.iter().enumerate() {
            let mut sorted = targets.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 16);
            assert!(!targets.contains(&sender));
        }
        assert!(super::receivers(Topology::Fanout(16), 16, &mut rng).is_err());
        assert!(super::receivers(Topology::Fanout(256), 300, &mut rng).is_err());
    }
}
