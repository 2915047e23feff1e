//! The doorbell: one side sleeps on it, the other rings it (eventcount).
//!
//! The waiter (the consumer waiting for items, or the producer waiting for
//! room) follows three steps, in this order:
//!
//! 1. [`Doorbell::arm`]: store its `Waker`, mark itself parked, then a
//!    `SeqCst` fence;
//! 2. re-check the ring (a fresh load of the other side's index and of the
//!    closed flag);
//! 3. return `Poll::Pending` only if the re-check found nothing, else
//!    [`Doorbell::disarm`] and carry on.
//!
//! The ringer publishes its change (a `Release` store of its index or of the
//! closed flag) and then calls [`Doorbell::ring`]: a `SeqCst` fence and one
//! load of the state. Only when the waiter is parked does it take the waker
//! and wake it, so a busy ring costs one fence and one load per publish, and
//! never a wake-up.
//!
//! No lost wake-up: the two fences are totally ordered. If the waiter's fence
//! comes first, the ringer's load sees `PARKED` and wakes it; if the ringer's
//! fence comes first, the waiter's re-check sees the published change and
//! does not sleep. (Dekker's pattern; loom checks it in `tests/loom_park.rs`.)

use std::task::Waker;

use crate::sync::{fence, AtomicU8, Ordering, UnsafeCell};

/// Nobody is parked; the waker slot belongs to the waiter.
const IDLE: u8 = 0;
/// The waiter is parked; the slot holds its waker and belongs to whoever moves
/// the state from `PARKED` (the ringer to `RINGING`, or the waiter to `IDLE`).
const PARKED: u8 = 1;
/// The ringer is taking the waker out of the slot; it stores `IDLE` after.
const RINGING: u8 = 2;

/// What [`Doorbell::arm`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) enum Armed {
    /// The waiter is parked with the given waker: re-check, then sleep.
    Parked,
    /// A ring is in flight to the previously stored waker, which may belong
    /// to another task: the caller must wake itself (`wake_by_ref`) and
    /// return `Pending`, so that it is polled again soon.
    RingInFlight,
}

/// A single-waiter, single-ringer wake-up slot with a parked flag.
///
/// Exactly one thread arms and disarms it (the waiter, through `&mut` access
/// to its `Producer` or `Consumer`), and exactly one rings it (the other side).
pub(crate) struct Doorbell {
    /// One of `IDLE`, `PARKED`, `RINGING`; decides who owns `waker`.
    state: AtomicU8,
    /// The parked waiter's waker; accessed only by the owner named by `state`.
    waker: UnsafeCell<Option<Waker>>,
}

impl Doorbell {
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicU8::new(IDLE),
            waker: UnsafeCell::new(None),
        }
    }

    /// Waiter: parks with `waker` and fences. The caller must re-check its
    /// condition after this returns [`Armed::Parked`].
    pub(crate) fn arm(&self, waker: &Waker) -> Armed {
        let mut state = self.state.load(Ordering::Acquire);
        if state == PARKED {
            // Parked by an earlier poll: take the slot back to replace the waker.
            state = match self.state.compare_exchange(
                PARKED,
                IDLE,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => IDLE,
                Err(now) => now,
            };
        }
        if state == RINGING {
            // The ringer holds the slot for a few instructions.
            #[cfg(loom)]
            loom::thread::yield_now();
            return Armed::RingInFlight;
        }
        debug_assert_eq!(state, IDLE, "doorbell state is IDLE, PARKED or RINGING");
        self.waker.with_mut(|slot| {
            // SAFETY: the state is IDLE, so the slot belongs to the waiter, and
            // there is only one waiter (it holds `&mut` to its ring end); the
            // ringer only touches the slot after moving PARKED -> RINGING.
            let slot = unsafe { &mut *slot };
            match slot {
                Some(old) if old.will_wake(waker) => {}
                _ => *slot = Some(waker.clone()),
            }
        });
        // Release: the ringer's Acquire CAS must see the waker we just stored.
        self.state.store(PARKED, Ordering::Release);
        // SeqCst: orders our PARKED store before the caller's re-check load,
        // against the ringer's publish store and its state load (Dekker).
        fence(Ordering::SeqCst);
        Armed::Parked
    }

    /// Waiter: the re-check found work; withdraw so the ringer need not wake.
    ///
    /// If a ring is already in flight this does nothing and the waiter gets
    /// one spurious wake-up, which is harmless.
    pub(crate) fn disarm(&self) {
        // Relaxed: no data changes hands; on success the slot simply stays ours.
        let _ = self
            .state
            .compare_exchange(PARKED, IDLE, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Ringer: call after publishing the change the waiter may wait for.
    /// Costs one `SeqCst` fence and one load unless the waiter is parked.
    #[inline]
    pub(crate) fn ring(&self) {
        // SeqCst: orders our publish store before the state load below (Dekker).
        fence(Ordering::SeqCst);
        // Relaxed is enough after the fence: the fence-to-fence order is what
        // guarantees we see PARKED if the waiter's fence came first.
        if self.state.load(Ordering::Relaxed) == PARKED {
            self.ring_parked();
        }
    }

    #[cold]
    #[inline(never)]
    fn ring_parked(&self) {
        // Acquire: pairs with the waiter's Release store of PARKED (the waker).
        if self
            .state
            .compare_exchange(PARKED, RINGING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return; // The waiter disarmed or re-armed meanwhile: nothing to wake.
        }
        let waker = self.waker.with_mut(|slot| {
            // SAFETY: we moved PARKED -> RINGING, so the slot is ours until we
            // store IDLE; the waiter never touches it in RINGING.
            unsafe { (*slot).take() }
        });
        // Release: the waiter's next Acquire load must see the slot emptied.
        self.state.store(IDLE, Ordering::Release);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl std::fmt::Debug for Doorbell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Doorbell")
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}
