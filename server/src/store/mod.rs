//! Durable storage of a shard's sessions and inboxes: one append-only log
//! per shard.
//!
//! - [`record`]: the record format (length, CRC32C, kind, fields) and its
//!   codec, IO-free.
//! - [`recovery`]: reading a log back: records, torn tails, corruption.
//! - `crate::disk` (the driver's side): the log files on glommio's DMA
//!   files, group commit and the fsync policies.
//!
//! The core appends records and waits for the durable position before
//! anything that depends on them leaves the hub (`shard/durability.rs`).

pub mod record;
pub mod recovery;
