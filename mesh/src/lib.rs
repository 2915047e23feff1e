//! relayhub's cross-core mesh: bounded lock-free single-producer
//! single-consumer rings with a doorbell, one per ordered pair of shards.
//!
//! A shard sends to another by writing into their ring; the receiving shard
//! drains it in batches and sleeps (returns `Poll::Pending` to its executor)
//! when it is empty, woken by the producer only if it actually parked: a busy
//! ring never pays for a wake-up, and no wake-up is ever lost. The design,
//! memory orderings and measurements are in `docs/mesh.md`.
//!
//! # Layout
//!
//! - `ring`: the shared state (slots, head and tail indices, doorbells),
//!   [`channel`] and the capacity limits.
//! - `producer`: [`Producer`], staging, publishing, async [`Producer::send`].
//! - `consumer`: [`Consumer`], receiving one item or a batch, async receive.
//! - `budget`: [`budget`], a byte budget across two threads ([`Spender`],
//!   [`Refunder`]) that a ring's producer spends and its consumer refunds,
//!   on the same doorbell.
//! - `doorbell`: the park flag + `Waker` slot (eventcount) both ends sleep on.
//! - `error`: [`TrySendError`], [`Closed`], [`TryRecvError`].
//! - `cache_padded`: keeps each index on its own cache-line pair.
//! - `sync`: std or loom atomics, `UnsafeCell` and `Arc` (`cfg(loom)`).
//!
//! # Departures from the API agreed in issue 3
//!
//! Additions only: [`Producer::staged`], [`Consumer::capacity`] and
//! [`Consumer::is_closed`] (a batch receive of 0 is otherwise ambiguous), and
//! [`PRODUCER_WAKE_FREE_DIVISOR`]: a producer parked on a full ring is woken
//! once half the ring is free, not after every freed batch.
//! [`Consumer::recv_batch`] panics when `max` is 0. Dropping a `send` future
//! before it completes drops its item.
//!
//! # Example
//!
//! ```
//! let (mut producer, mut consumer) = relayhub_mesh::channel::<u64>(64);
//! for value in 0..10 {
//!     producer.try_stage(value).unwrap();
//! }
//! producer.publish(); // One Release store and one doorbell check for all ten.
//! let mut received = Vec::new();
//! assert_eq!(consumer.recv_batch_now(32, |value| received.push(value)), 10);
//! assert_eq!(received, (0..10).collect::<Vec<_>>());
//! drop(producer);
//! assert_eq!(consumer.try_recv(), Err(relayhub_mesh::TryRecvError::Closed));
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

mod budget;
mod cache_padded;
mod consumer;
mod doorbell;
mod error;
mod producer;
mod ring;
mod sync;

pub use budget::{budget, BudgetClosed, Refunder, Spender};
pub use cache_padded::CACHE_PADDING_BYTES;
pub use consumer::Consumer;
pub use error::{Closed, TryRecvError, TrySendError};
pub use producer::Producer;
pub use ring::{channel, PRODUCER_WAKE_FREE_DIVISOR, RING_CAPACITY_MAX, RING_CAPACITY_MIN};

#[cfg(all(test, not(loom)))]
mod tests;
