//! The writing end of a ring.

use std::future::poll_fn;
use std::task::Poll;

use crate::doorbell::Armed;
use crate::ring::Shared;
use crate::sync::{Arc, Ordering};
use crate::{Closed, TrySendError};

/// The writing end of a ring made by [`channel`](crate::channel).
///
/// `Send` but neither `Sync` nor `Clone`: there is exactly one producer per
/// ring, and the compiler enforces it.
///
/// Items can be sent one at a time ([`try_send`](Self::try_send),
/// [`send`](Self::send)) or in a batch: [`try_stage`](Self::try_stage) each
/// item, then [`publish`](Self::publish) once, paying the consumer's cache
/// miss and the doorbell fence once per batch.
///
/// On drop, items staged but not yet published are published (so they are
/// received, or dropped with the ring), and the consumer then sees the ring
/// as closed once it has drained it.
///
/// ```compile_fail
/// fn needs_sync<S: Sync>(_: &S) {}
/// let (producer, _consumer) = relayhub_mesh::channel::<u8>(2);
/// needs_sync(&producer); // Producer is not Sync.
/// ```
///
/// ```compile_fail
/// let (producer, _consumer) = relayhub_mesh::channel::<u8>(2);
/// let _second = producer.clone(); // Producer is not Clone.
/// ```
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
    /// Index of the next slot to write. In
    /// `tail_published ..= head_cached + capacity` (wrapping).
    tail_staged: usize,
    /// The last value stored into `shared.tail`, so a publish with nothing
    /// new staged costs nothing. In `head_cached ..= tail_staged`.
    tail_published: usize,
    /// A copy of `shared.head`, refreshed only when the ring looks full. It is
    /// never ahead of the real head, so the free space computed from it is a
    /// lower bound and the producer never overwrites an unread slot. Saves a
    /// load of the consumer's cache line on almost every send.
    head_cached: usize,
}

// SAFETY: a Producer only ever moves `T`s into the ring (so `T: Send` is
// needed and enough), and all state it shares with the Consumer is accessed
// through atomics or slots whose ownership the indices hand over.
unsafe impl<T: Send> Send for Producer<T> {}

impl<T> Producer<T> {
    pub(crate) fn new(shared: Arc<Shared<T>>, start: usize) -> Self {
        Self {
            shared,
            tail_staged: start,
            tail_published: start,
            head_cached: start,
        }
    }

    /// Slots in the ring, a power of two.
    pub fn capacity(&self) -> usize {
        self.shared.capacity()
    }

    /// True when the consumer is gone: every later send gives the item back.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Slots free for staging right now (a fresh look at the consumer's index).
    pub fn free_slots(&mut self) -> usize {
        self.head_cached = self.shared.head.load(Ordering::Acquire);
        self.check_invariants();
        self.capacity() - self.tail_staged.wrapping_sub(self.head_cached)
    }

    /// Items staged with [`try_stage`](Self::try_stage) and not yet published.
    pub fn staged(&self) -> usize {
        self.tail_staged.wrapping_sub(self.tail_published)
    }

    /// Sends `item` and publishes it (and anything staged before) at once.
    ///
    /// Fails with [`TrySendError::Full`] when the consumer has not freed a
    /// slot, or [`TrySendError::Closed`] when the consumer is gone; either way
    /// the item comes back.
    #[inline]
    pub fn try_send(&mut self, item: T) -> Result<(), TrySendError<T>> {
        self.try_stage(item)?;
        self.publish();
        Ok(())
    }

    /// Writes `item` into the next free slot without publishing it: the
    /// consumer sees it only after [`publish`](Self::publish) (or the drop of
    /// this producer). Errors as [`try_send`](Self::try_send).
    #[inline]
    pub fn try_stage(&mut self, item: T) -> Result<(), TrySendError<T>> {
        // Relaxed: the flag is advisory here; nothing is read on the strength
        // of it, and an item staged after a close is dropped with the ring.
        if self.shared.closed.load(Ordering::Relaxed) {
            return Err(TrySendError::Closed(item));
        }
        if self.tail_staged.wrapping_sub(self.head_cached) == self.capacity() {
            // Acquire: the consumer's reads of the slots before `head` are
            // done before we overwrite them.
            self.head_cached = self.shared.head.load(Ordering::Acquire);
            self.check_invariants();
            if self.tail_staged.wrapping_sub(self.head_cached) == self.capacity() {
                return Err(TrySendError::Full(item));
            }
        }
        // SAFETY: `tail_staged - head_cached < capacity` and the real head is
        // at or past `head_cached`, so the slot is free; it is at or after the
        // published tail, so the consumer does not read it yet.
        unsafe { self.shared.write(self.tail_staged, item) };
        self.tail_staged = self.tail_staged.wrapping_add(1);
        Ok(())
    }

    /// Makes every staged item visible to the consumer with one `Release`
    /// store, then rings the consumer's doorbell, which wakes it only if it
    /// is parked. Does nothing when nothing is staged.
    #[inline]
    pub fn publish(&mut self) {
        if self.tail_staged == self.tail_published {
            return;
        }
        self.check_invariants();
        // Release: the slot writes above happen before the consumer's
        // Acquire load of `tail` that makes it read them.
        self.shared.tail.store(self.tail_staged, Ordering::Release);
        self.tail_published = self.tail_staged;
        self.shared.consumer_bell.ring();
    }

    /// Sends `item`, waiting (asynchronously, never blocking the thread)
    /// while the ring is full. Publishes it, and anything staged before.
    ///
    /// Fails only when the consumer is gone, handing the item back. Dropping
    /// the future before it completes drops the item unsent.
    pub async fn send(&mut self, item: T) -> Result<(), Closed<T>> {
        let mut item = Some(item);
        poll_fn(|context| {
            let value = item.take().expect("send polled after completion");
            match self.try_send(value) {
                Ok(()) => return Poll::Ready(Ok(())),
                Err(TrySendError::Closed(value)) => return Poll::Ready(Err(Closed(value))),
                Err(TrySendError::Full(value)) => item = Some(value),
            }
            // Full. Items staged before must be visible, or the consumer
            // could sleep on them while we sleep on it.
            self.publish();
            if self.shared.producer_bell.arm(context.waker()) == Armed::RingInFlight {
                context.waker().wake_by_ref();
                return Poll::Pending;
            }
            // The re-check after arming: `try_send` loads `head` and `closed`
            // afresh because the cached head still says full.
            let value = item.take().expect("item is back after Full");
            match self.try_send(value) {
                Ok(()) => {
                    self.shared.producer_bell.disarm();
                    Poll::Ready(Ok(()))
                }
                Err(TrySendError::Closed(value)) => {
                    self.shared.producer_bell.disarm();
                    Poll::Ready(Err(Closed(value)))
                }
                Err(TrySendError::Full(value)) => {
                    item = Some(value);
                    Poll::Pending
                }
            }
        })
        .await
    }

    #[inline(always)]
    fn check_invariants(&self) {
        debug_assert!(self.tail_staged.wrapping_sub(self.head_cached) <= self.capacity());
        debug_assert!(
            self.tail_staged.wrapping_sub(self.tail_published)
                <= self.tail_staged.wrapping_sub(self.head_cached)
        );
    }
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        self.publish();
        // Release: a consumer that sees `closed` also sees the final tail.
        self.shared.closed.store(true, Ordering::Release);
        self.shared.consumer_bell.ring();
    }
}

impl<T> std::fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.capacity())
            .field("tail_staged", &self.tail_staged)
            .field("tail_published", &self.tail_published)
            .field("head_cached", &self.head_cached)
            .finish_non_exhaustive()
    }
}
