//! The state both ends share: slots, the two indices, the doorbells.

use std::mem::MaybeUninit;

use crate::cache_padded::CachePadded;
use crate::doorbell::Doorbell;
use crate::sync::{Arc, AtomicBool, AtomicUsize, Ordering, UnsafeCell};
use crate::{Consumer, Producer};

/// Smallest ring, in slots. A capacity below it is rounded up to it.
pub const RING_CAPACITY_MIN: usize = 2;

/// Largest ring, in slots: 65,536. A ring allocates
/// `capacity * size_of::<T>()` bytes up front (plus 640 bytes of padded
/// indices and doorbells), so with a 64-byte item the worst case is 4 MiB per
/// ring, and the hub has one ring per ordered pair of shards.
pub const RING_CAPACITY_MAX: usize = 1 << 16;

/// A consumer wakes a producer parked on a full ring only once at least
/// `capacity / PRODUCER_WAKE_FREE_DIVISOR` slots are free (half the ring), so
/// the producer wakes to a useful amount of room rather than to every batch
/// the consumer frees. With capacity 2 that is 1 slot: every release rings.
/// A consumer that stops receiving with fewer slots free leaves the producer
/// asleep until it receives again (or drops, which always rings).
pub const PRODUCER_WAKE_FREE_DIVISOR: usize = 2;

/// Creates a bounded single-producer single-consumer ring.
///
/// `capacity` is rounded up to a power of two, and to at least
/// [`RING_CAPACITY_MIN`], so that a slot is found with a mask.
///
/// # Panics
///
/// If `capacity` is larger than [`RING_CAPACITY_MAX`]: a ring that big is a
/// configuration error, not something to clamp silently.
///
/// ```
/// let (mut producer, mut consumer) = relayhub_mesh::channel::<u32>(3);
/// assert_eq!(producer.capacity(), 4);
/// producer.try_send(7).unwrap();
/// assert_eq!(consumer.try_recv(), Ok(7));
/// ```
pub fn channel<T>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    assert!(
        capacity <= RING_CAPACITY_MAX,
        "ring capacity {capacity} is above RING_CAPACITY_MAX ({RING_CAPACITY_MAX})"
    );
    let capacity = capacity.max(RING_CAPACITY_MIN).next_power_of_two();
    let shared = Arc::new(Shared::new(capacity, 0));
    (
        Producer::new(Arc::clone(&shared), 0),
        Consumer::new(shared, 0),
    )
}

/// [`channel`] with both indices starting at `start`, so that tests can
/// cross the `usize` wrap-around quickly.
#[cfg(all(test, not(loom)))]
pub(crate) fn channel_starting_at<T>(capacity: usize, start: usize) -> (Producer<T>, Consumer<T>) {
    let capacity = capacity.max(RING_CAPACITY_MIN).next_power_of_two();
    let shared = Arc::new(Shared::new(capacity, start));
    (
        Producer::new(Arc::clone(&shared), start),
        Consumer::new(shared, start),
    )
}

/// One ring's shared state, owned jointly by its `Producer` and `Consumer`.
///
/// Indices are free-running counters that wrap at `usize::MAX`; the slot of
/// index `i` is `i & (capacity - 1)`. At every instant
/// `tail.wrapping_sub(head) <= capacity`: slots in `head .. tail` hold
/// published items, the others are free. (`usize` cannot wrap between the two
/// ends because they are never more than `capacity` apart.)
pub(crate) struct Shared<T> {
    /// One past the last published item. Written only by the producer, with
    /// `Release` (publishes the slot writes before it); read by the consumer
    /// with `Acquire`. Always in `head ..= head + capacity` (wrapping).
    pub(crate) tail: CachePadded<AtomicUsize>,
    /// The next item the consumer will read: every slot before it is free.
    /// Written only by the consumer, with `Release` (the slot reads before it
    /// are done, so the producer may overwrite); read by the producer with
    /// `Acquire`. Always in `tail - capacity ..= tail` (wrapping).
    pub(crate) head: CachePadded<AtomicUsize>,
    /// The consumer parks here when the ring is empty; the producer rings it
    /// after publishing and when it drops.
    pub(crate) consumer_bell: CachePadded<Doorbell>,
    /// The producer parks here when the ring is full; the consumer rings it
    /// after releasing slots and when it drops.
    pub(crate) producer_bell: CachePadded<Doorbell>,
    /// Set once, by whichever end drops first. Read-mostly, so it shares its
    /// line with the slot pointer that both ends read anyway.
    pub(crate) closed: AtomicBool,
    /// `capacity` slots; `capacity` is a power of two in
    /// `RING_CAPACITY_MIN ..= RING_CAPACITY_MAX`.
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
}

impl<T> Shared<T> {
    fn new(capacity: usize, start: usize) -> Self {
        debug_assert!(capacity.is_power_of_two());
        debug_assert!((RING_CAPACITY_MIN..=RING_CAPACITY_MAX).contains(&capacity));
        Self {
            tail: CachePadded::new(AtomicUsize::new(start)),
            head: CachePadded::new(AtomicUsize::new(start)),
            consumer_bell: CachePadded::new(Doorbell::new()),
            producer_bell: CachePadded::new(Doorbell::new()),
            closed: AtomicBool::new(false),
            slots: (0..capacity)
                .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
                .collect(),
        }
    }

    /// Number of slots, a power of two.
    #[inline(always)]
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    #[inline(always)]
    fn slot(&self, index: usize) -> &UnsafeCell<MaybeUninit<T>> {
        // The mask keeps the index in bounds; the check is cheaper than the
        // `unsafe` it would take to drop it (not measurable in `benches/ring`).
        &self.slots[index & (self.slots.len() - 1)]
    }

    /// Moves `item` into the slot of `index`.
    ///
    /// # Safety
    ///
    /// Only the producer calls this, with `index` in
    /// `head ..  head + capacity` and at or after the published tail: the slot
    /// is free, and the consumer does not read it until a later `Release`
    /// store of `tail` beyond `index`.
    #[inline(always)]
    pub(crate) unsafe fn write(&self, index: usize, item: T) {
        self.slot(index).with_mut(|slot| {
            // SAFETY: the caller guarantees exclusive access to this free slot.
            unsafe { (*slot).write(item) };
        });
    }

    /// Moves the item out of the slot of `index`, leaving it logically free.
    ///
    /// # Safety
    ///
    /// Only the consumer calls this, once per index, with `index` in
    /// `head .. tail` as loaded with `Acquire`: the slot holds an initialised
    /// item and the producer does not touch it until a later `Release` store
    /// of `head` beyond `index`.
    #[inline(always)]
    pub(crate) unsafe fn read(&self, index: usize) -> T {
        self.slot(index).with(|slot| {
            // SAFETY: the caller guarantees the slot is published and ours.
            unsafe { (*slot).assume_init_read() }
        })
    }
}

impl<T> Drop for Shared<T> {
    /// Drops the items still in `head .. tail`: runs once, when the last of
    /// the two ends is gone (both published their indices when dropping).
    fn drop(&mut self) {
        // Relaxed: `Arc`'s drop already ordered both ends' last writes before us.
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Relaxed);
        debug_assert!(tail.wrapping_sub(head) <= self.capacity());
        let mut index = head;
        while index != tail {
            // SAFETY: `&mut self`: both ends are gone; `index` is in
            // `head .. tail`, so its slot holds an item nobody received, and
            // each index is visited once.
            drop(unsafe { self.read(index) });
            index = index.wrapping_add(1);
        }
    }
}
