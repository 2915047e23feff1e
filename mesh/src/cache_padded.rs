//! A value alone on its own cache line(s).

use std::ops::Deref;

/// Bytes a [`CachePadded`] value is aligned (and so padded) to.
///
/// 128 rather than 64: Intel CPUs since Sandy Bridge prefetch cache lines in
/// adjacent pairs (the "spatial prefetcher"), so two indices 64 bytes apart
/// still ping-pong between cores. crossbeam-utils and rtrb use 128 on x86_64
/// for the same reason. Costs at most 127 bytes of padding per value.
pub const CACHE_PADDING_BYTES: usize = 128;

/// Wraps `T` so that no other hot field shares its cache line pair.
///
/// The producer's index (`tail`) and the consumer's index (`head`) are each
/// written by one core and read by the other; on one line they would make
/// every write invalidate the other core's copy of the index it owns
/// (false sharing).
#[derive(Debug, Default)]
#[repr(C, align(128))]
pub(crate) struct CachePadded<T>(T);

const _: () = assert!(std::mem::align_of::<CachePadded<u8>>() == CACHE_PADDING_BYTES);

impl<T> CachePadded<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(value)
    }
}

impl<T> Deref for CachePadded<T> {
    type Target = T;

    #[inline(always)]
    fn deref(&self) -> &T {
        &self.0
    }
}
