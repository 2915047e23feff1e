//! A byte budget across two threads: the sending side spends units before it
//! hands items over, the receiving side refunds them once it is done with
//! the items, and a sender out of budget parks on the same doorbell
//! (eventcount) the rings use, woken only when it actually parked.
//!
//! The ring bounds how many items are in flight; a budget bounds what they
//! weigh (the hub's mesh: bytes of relay bodies between two shards).
//!
//! Counters are free-running `u64`s with one writer each: the spender owns
//! `spent` (local), the refunder owns `refunded` (shared, `Release` stores),
//! so no read-modify-write crosses cores. `spent - refunded` is what is in
//! flight; the spender sees a `refunded` that is never ahead of the real
//! one, so its view of the budget is conservative.

use std::future::poll_fn;
use std::task::Poll;

use crate::cache_padded::CachePadded;
use crate::doorbell::{Armed, Doorbell};
use crate::sync::{Arc, AtomicBool, AtomicU64, Ordering};

struct Shared {
    /// Units refunded so far. Written only by the [`Refunder`], with
    /// `Release`; read by the [`Spender`] with `Acquire`.
    refunded: CachePadded<AtomicU64>,
    /// The spender parks here when out of budget; refunds ring it.
    bell: CachePadded<Doorbell>,
    /// Set when the refunder is gone: nothing will be refunded again.
    closed: AtomicBool,
}

// SAFETY: `refunded` and `closed` are atomics. The doorbell's waker slot is
// touched only by its single waiter (the `Spender`, through `&mut self`) and
// its single ringer (the `Refunder`, through `&mut self` or its drop), with
// ownership of the slot handed over by the bell's state (doorbell.rs), so
// sharing `Shared` between the two threads is sound.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

/// Creates a budget of `units_max` units: a [`Spender`] for the sending
/// side and a [`Refunder`] for the receiving side.
///
/// One spend may exceed `units_max` when nothing else is in flight, so an
/// item heavier than the whole budget still goes through, alone.
///
/// ```
/// let (mut spender, mut refunder) = relayhub_mesh::budget(100);
/// assert!(spender.try_spend(60));
/// assert!(!spender.try_spend(60), "120 would be over budget");
/// refunder.refund(60);
/// assert!(spender.try_spend(60));
/// ```
pub fn budget(units_max: u64) -> (Spender, Refunder) {
    let shared = Arc::new(Shared {
        refunded: CachePadded::new(AtomicU64::new(0)),
        bell: CachePadded::new(Doorbell::new()),
        closed: AtomicBool::new(false),
    });
    (
        Spender {
            shared: Arc::clone(&shared),
            units_max,
            spent: 0,
            refunded_cached: 0,
        },
        Refunder {
            shared,
            refunded: 0,
        },
    )
}

/// The refunder is gone: spending can no longer wait for refunds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetClosed;

/// The spending side of a [`budget`]. `Send`, not `Clone`: one spender.
pub struct Spender {
    shared: Arc<Shared>,
    units_max: u64,
    /// Units spent so far (only this side writes it).
    spent: u64,
    /// A copy of `shared.refunded`, refreshed when the budget looks spent;
    /// never ahead of the real value. In `0 ..= spent`.
    refunded_cached: u64,
}

impl Spender {
    /// Units in flight as this side last saw them (an upper bound).
    pub fn in_flight(&self) -> u64 {
        self.spent - self.refunded_cached
    }

    /// The budget.
    pub fn units_max(&self) -> u64 {
        self.units_max
    }

    fn fits(&self, units: u64) -> bool {
        let in_flight = self.in_flight();
        in_flight == 0 || in_flight.saturating_add(units) <= self.units_max
    }

    /// Spends `units` if the budget allows it now.
    pub fn try_spend(&mut self, units: u64) -> bool {
        if !self.fits(units) {
            // Acquire: pairs with the refunder's Release store (the
            // receiving side is done with what it refunded).
            self.refunded_cached = self.shared.refunded.load(Ordering::Acquire);
            debug_assert!(
                self.refunded_cached <= self.spent,
                "refunded more than spent"
            );
            if !self.fits(units) {
                return false;
            }
        }
        self.spent += units;
        true
    }

    /// Spends `units`, waiting (asynchronously) for refunds while the
    /// budget does not allow it. Fails only when the refunder is gone.
    pub async fn spend(&mut self, units: u64) -> Result<(), BudgetClosed> {
        poll_fn(|context| {
            if self.try_spend(units) {
                return Poll::Ready(Ok(()));
            }
            if self.shared.closed.load(Ordering::Acquire) {
                return Poll::Ready(Err(BudgetClosed));
            }
            if self.shared.bell.arm(context.waker()) == Armed::RingInFlight {
                context.waker().wake_by_ref();
                return Poll::Pending;
            }
            // The re-check after arming (see doorbell.rs): a refund stored
            // before our fence is seen here, one after it rings us.
            if self.try_spend(units) {
                self.shared.bell.disarm();
                return Poll::Ready(Ok(()));
            }
            if self.shared.closed.load(Ordering::Acquire) {
                self.shared.bell.disarm();
                return Poll::Ready(Err(BudgetClosed));
            }
            Poll::Pending
        })
        .await
    }
}

impl std::fmt::Debug for Spender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spender")
            .field("units_max", &self.units_max)
            .field("spent", &self.spent)
            .field("refunded_cached", &self.refunded_cached)
            .finish_non_exhaustive()
    }
}

/// The refunding side of a [`budget`]. `Send`, not `Clone`: one refunder.
pub struct Refunder {
    shared: Arc<Shared>,
    /// Units refunded so far (only this side writes it).
    refunded: u64,
}

impl Refunder {
    /// Gives back `units` and wakes the spender if it waits. Refund once
    /// per batch: each call costs one `SeqCst` fence.
    pub fn refund(&mut self, units: u64) {
        if units == 0 {
            return;
        }
        self.refunded += units;
        // Release: our use of what was refunded happens before the
        // spender's Acquire load lets it spend again.
        self.shared.refunded.store(self.refunded, Ordering::Release);
        self.shared.bell.ring();
    }
}

impl Drop for Refunder {
    fn drop(&mut self) {
        // Release: a spender that sees `closed` also sees the last refund.
        self.shared.closed.store(true, Ordering::Release);
        self.shared.bell.ring();
    }
}

impl std::fmt::Debug for Refunder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refunder")
            .field("refunded", &self.refunded)
            .finish_non_exhaustive()
    }
}
