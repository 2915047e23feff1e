//! The reading end of a ring.

use std::future::poll_fn;
use std::task::Poll;

use crate::doorbell::Armed;
use crate::ring::{Shared, PRODUCER_WAKE_FREE_DIVISOR};
use crate::sync::{Arc, Ordering};
use crate::TryRecvError;

/// The reading end of a ring made by [`channel`](crate::channel).
///
/// `Send` but neither `Sync` nor `Clone`: there is exactly one consumer per
/// ring, and the compiler enforces it.
///
/// Receive one item at a time ([`try_recv`](Self::try_recv),
/// [`recv`](Self::recv)) or drain a batch and release its slots once
/// ([`recv_batch_now`](Self::recv_batch_now), [`recv_batch`](Self::recv_batch)).
///
/// On drop the producer sees the ring as closed; items still in the ring are
/// dropped, exactly once, when the producer is gone too.
///
/// ```compile_fail
/// fn needs_sync<S: Sync>(_: &S) {}
/// let (_producer, consumer) = relayhub_mesh::channel::<u8>(2);
/// needs_sync(&consumer); // Consumer is not Sync.
/// ```
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
    /// Index of the next item to read. In `head_released ..= tail_cached`.
    head_next: usize,
    /// The last value stored into `shared.head`: slots before it are free for
    /// the producer. In `tail_cached - capacity ..= head_next` (wrapping).
    head_released: usize,
    /// A copy of `shared.tail`, refreshed only when it says there is nothing
    /// (or less than a batch) to read. Never ahead of the real tail, so every
    /// slot before it is published. Saves a load of the producer's cache line
    /// on almost every receive.
    tail_cached: usize,
}

// SAFETY: a Consumer only ever moves `T`s out of the ring (so `T: Send` is
// needed and enough), and all state it shares with the Producer is accessed
// through atomics or slots whose ownership the indices hand over.
unsafe impl<T: Send> Send for Consumer<T> {}

impl<T> Consumer<T> {
    pub(crate) fn new(shared: Arc<Shared<T>>, start: usize) -> Self {
        Self {
            shared,
            head_next: start,
            head_released: start,
            tail_cached: start,
        }
    }

    /// Slots in the ring, a power of two.
    pub fn capacity(&self) -> usize {
        self.shared.capacity()
    }

    /// Items published and not yet received (a fresh look at the tail).
    pub fn len(&self) -> usize {
        let tail = self.shared.tail.load(Ordering::Acquire);
        tail.wrapping_sub(self.head_next)
    }

    /// True when no published item is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when the producer is gone. Items it published may still be
    /// waiting: [`try_recv`](Self::try_recv) says `Closed` only once empty.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Receives the oldest item, releasing its slot at once.
    ///
    /// Fails with [`TryRecvError::Empty`] when nothing is published, and with
    /// [`TryRecvError::Closed`] when, in addition, the producer is gone.
    #[inline]
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        if self.available(1) == 0 {
            return Err(self.empty_or_closed());
        }
        let item = self.take_next();
        self.release();
        Ok(item)
    }

    /// Receives up to `max` items, in order, handing each to `on_item`, and
    /// releases all their slots with one store and one doorbell ring.
    /// Returns how many it received: 0 when the ring is empty (or closed; see
    /// [`is_closed`](Self::is_closed)).
    ///
    /// If `on_item` panics, the items it already got stay received and the
    /// rest stay in the ring.
    #[inline]
    pub fn recv_batch_now(&mut self, max: usize, mut on_item: impl FnMut(T)) -> usize {
        let count = self.available(max);
        for _ in 0..count {
            on_item(self.take_next());
        }
        if count > 0 {
            self.release();
        }
        count
    }

    /// Receives the oldest item, waiting (asynchronously, never blocking the
    /// thread) while the ring is empty. `None` means the producer is gone and
    /// every item it published has been received.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|context| {
            match self.try_recv() {
                Ok(item) => return Poll::Ready(Some(item)),
                Err(TryRecvError::Closed) => return Poll::Ready(None),
                Err(TryRecvError::Empty) => {}
            }
            if self.shared.consumer_bell.arm(context.waker()) == Armed::RingInFlight {
                context.waker().wake_by_ref();
                return Poll::Pending;
            }
            // The re-check after arming: `try_recv` loads `tail` (and
            // `closed`) afresh because the cached tail still says empty.
            match self.try_recv() {
                Ok(item) => {
                    self.shared.consumer_bell.disarm();
                    Poll::Ready(Some(item))
                }
                Err(TryRecvError::Closed) => {
                    self.shared.consumer_bell.disarm();
                    Poll::Ready(None)
                }
                Err(TryRecvError::Empty) => Poll::Pending,
            }
        })
        .await
    }

    /// Like [`recv_batch_now`](Self::recv_batch_now), but waits until at
    /// least one item is there. Returns 0 only when the producer is gone and
    /// the ring is empty.
    ///
    /// # Panics
    ///
    /// If `max` is 0 (0 would be indistinguishable from closed).
    pub async fn recv_batch(&mut self, max: usize, mut on_item: impl FnMut(T)) -> usize {
        assert!(max > 0, "recv_batch needs max > 0");
        poll_fn(|context| {
            let count = self.recv_batch_now(max, &mut on_item);
            if count > 0 {
                return Poll::Ready(count);
            }
            if self.empty_or_closed() == TryRecvError::Closed {
                return Poll::Ready(0);
            }
            if self.shared.consumer_bell.arm(context.waker()) == Armed::RingInFlight {
                context.waker().wake_by_ref();
                return Poll::Pending;
            }
            // The re-check after arming, as in `recv`.
            let count = self.recv_batch_now(max, &mut on_item);
            if count > 0 {
                self.shared.consumer_bell.disarm();
                return Poll::Ready(count);
            }
            if self.empty_or_closed() == TryRecvError::Closed {
                self.shared.consumer_bell.disarm();
                return Poll::Ready(0);
            }
            Poll::Pending
        })
        .await
    }

    /// How many items, up to `max`, can be read now. Refreshes the cached
    /// tail only when it shows fewer than `max`.
    #[inline(always)]
    fn available(&mut self, max: usize) -> usize {
        let mut available = self.tail_cached.wrapping_sub(self.head_next);
        if available < max {
            // Acquire: the producer's slot writes before its Release store of
            // `tail` are visible before we read those slots.
            self.tail_cached = self.shared.tail.load(Ordering::Acquire);
            available = self.tail_cached.wrapping_sub(self.head_next);
            self.check_invariants();
        }
        available.min(max)
    }

    /// Called when empty: `Closed` if the producer is gone and nothing more
    /// was published before it went, else `Empty`.
    fn empty_or_closed(&mut self) -> TryRecvError {
        // Acquire: pairs with the producer's Release store of `closed`, which
        // follows its last publish, so the tail loaded next is final.
        if !self.shared.closed.load(Ordering::Acquire) {
            return TryRecvError::Empty;
        }
        self.tail_cached = self.shared.tail.load(Ordering::Acquire);
        if self.tail_cached == self.head_next {
            TryRecvError::Closed
        } else {
            TryRecvError::Empty // Published just before closing: read it next.
        }
    }

    /// Moves the next item out. The caller checked `head_next != tail_cached`.
    #[inline(always)]
    fn take_next(&mut self) -> T {
        debug_assert_ne!(
            self.head_next, self.tail_cached,
            "take_next on an empty ring"
        );
        // SAFETY: `head_next` is in `head .. tail_cached`, and `tail_cached`
        // was loaded with Acquire from the published tail, so the slot holds
        // an initialised item; the producer will not touch it before we
        // release it; `head_next` advances right after, so each index is read
        // once.
        let item = unsafe { self.shared.read(self.head_next) };
        self.head_next = self.head_next.wrapping_add(1);
        item
    }

    /// Hands every slot read so far back to the producer with one `Release`
    /// store, then, once enough slots are free, rings the producer's doorbell
    /// in case it waits for room.
    ///
    /// The threshold (hysteresis) keeps a producer parked on a full ring from
    /// being woken for every batch the consumer frees, only to fill those few
    /// slots and park again: each wake of another executor costs microseconds.
    /// No wake-up is lost: the producer parks only when its re-check finds the
    /// ring full, so while it sleeps the consumer keeps freeing slots until the
    /// threshold is reached or the ring is empty (all free), and then rings.
    /// Free slots are counted against `tail_cached`, which is never ahead of
    /// the real tail, so the count errs toward ringing.
    #[inline(always)]
    fn release(&mut self) {
        self.check_invariants();
        // Release: our reads of the slots happen before the producer's Acquire
        // load of `head` that lets it overwrite them.
        self.shared.head.store(self.head_next, Ordering::Release);
        self.head_released = self.head_next;
        let free = self.capacity() - self.tail_cached.wrapping_sub(self.head_next);
        if free >= self.capacity() / PRODUCER_WAKE_FREE_DIVISOR {
            self.shared.producer_bell.ring();
        }
    }

    #[inline(always)]
    fn check_invariants(&self) {
        debug_assert!(self.tail_cached.wrapping_sub(self.head_next) <= self.capacity());
        debug_assert!(
            self.head_next.wrapping_sub(self.head_released)
                <= self.tail_cached.wrapping_sub(self.head_released)
        );
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        if self.head_next != self.head_released {
            // Items handed out just before a panic in `recv_batch_now`'s
            // callback: they are not ours to drop again.
            self.shared.head.store(self.head_next, Ordering::Release);
        }
        // Release: pairs with `is_closed`'s Acquire.
        self.shared.closed.store(true, Ordering::Release);
        self.shared.producer_bell.ring();
    }
}

impl<T> std::fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.capacity())
            .field("head_next", &self.head_next)
            .field("head_released", &self.head_released)
            .field("tail_cached", &self.tail_cached)
            .finish_non_exhaustive()
    }
}
