//! Per-shard counters.
//!
//! Each shard is the only writer of its own counters, so an increment is a
//! plain load and store (no locked read-modify-write on the hot path);
//! anyone may read them at any time, from any thread (tests, the stats log).

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};

/// Upper bounds, in microseconds, of the fsync latency histogram's buckets
/// (the last bucket, +Inf, is implied).
pub const FSYNC_BUCKETS_US: [u64; 10] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000,
];

/// The log's `fdatasync` latencies: a count per bucket of
/// [`FSYNC_BUCKETS_US`] (plus one for +Inf) and the sum. One writer.
#[derive(Debug, Default)]
pub struct FsyncHistogram {
    buckets: [Counter; FSYNC_BUCKETS_US.len() + 1],
    sum_us: Counter,
}

impl FsyncHistogram {
    /// Records one fdatasync that took `us` microseconds.
    pub fn observe(&self, us: u64) {
        let bucket = FSYNC_BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(FSYNC_BUCKETS_US.len());
        self.buckets[bucket].incr();
        self.sum_us.add(us);
    }

    /// `(per-bucket counts, sum in microseconds)`.
    pub fn snapshot(&self) -> ([u64; FSYNC_BUCKETS_US.len() + 1], u64) {
        (
            std::array::from_fn(|i| self.buckets[i].get()),
            self.sum_us.get(),
        )
    }
}

/// A counter with one writer (its shard) and any number of readers.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning shard's thread may call this.
    pub fn add(&self, n: u64) {
        // Single writer: load + store cannot lose an update, and compiles to
        // a plain add instead of a locked one.
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Adds one.
    pub fn incr(&self) {
        self.add(1);
    }

    /// Subtracts one (for gauges).
    pub fn decr(&self) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_sub(1),
            Ordering::Relaxed,
        );
    }

    /// Sets a gauge. Only the owning shard's thread may call this.
    pub fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

macro_rules! stats {
    ($($(#[$doc:meta])* $name:ident),+ $(,)?) => {
        /// One shard's live counters.
        #[derive(Debug, Default)]
        pub struct ShardStats {
            $($(#[$doc])* pub $name: Counter,)+
            /// The log's fdatasync latencies.
            pub fsync_latency: FsyncHistogram,
        }

        /// A copy of counters at one moment (one shard's, or summed).
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct StatsSnapshot {
            $($(#[$doc])* pub $name: u64,)+
        }

        impl ShardStats {
            /// Reads every counter.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.get(),)+ }
            }
        }

        impl StatsSnapshot {
            /// Every counter with its field name, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)+]
            }
        }

        impl std::ops::AddAssign for StatsSnapshot {
            fn add_assign(&mut self, other: StatsSnapshot) {
                $(self.$name += other.$name;)+
            }
        }

        impl fmt::Display for StatsSnapshot {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut first = true;
                $(
                    if !first { f.write_str(" ")?; }
                    first = false;
                    write!(f, "{}={}", stringify!($name), self.$name)?;
                )+
                let _ = first;
                Ok(())
            }
        }
    };
}

stats! {
    /// Connections accepted and welcomed.
    connections_accepted,
    /// Connections open now (a gauge).
    connections_open,
    /// Connections refused because the shard was full.
    connections_refused,
    /// Frames received from clients.
    frames_in,
    /// Bytes received from clients.
    bytes_in,
    /// Bytes written to clients.
    bytes_out,
    /// Relay requests accepted.
    relays,
    /// Deliveries queued to a receiver on this shard.
    deliveries,
    /// Receivers that were not connected.
    unknown_receivers,
    /// Receivers disconnected for exceeding their outbound limit.
    slow_consumers,
    /// Frames refused for exceeding a protocol limit.
    limit_errors,
    /// Connections closed for a fatal protocol error.
    protocol_errors,
    /// Connections closed for idleness (no complete frame for the idle timeout).
    idle_timeouts,
    /// Connections closed because a frame took longer than the frame timeout.
    frame_timeouts,
    /// Closing connections dropped because they missed their flush deadline.
    flush_timeouts,
    /// Connections accepted and refused at once because the hub was out of
    /// file descriptors.
    fd_refusals,
    /// Mesh messages sent to other shards.
    mesh_sent,
    /// Mesh messages received from other shards.
    mesh_received,
    /// Times a ring to another shard was full (the forwarder waited).
    ring_full,
    /// Durable sessions created.
    sessions_created,
    /// Durable sessions resumed.
    sessions_resumed,
    /// Resumes refused (unknown or expired session, wrong or old token).
    resumes_rejected,
    /// Resumes that took a session over from a live connection.
    takeovers,
    /// Durable sessions expired (detached for `--session-expiry-ms`).
    sessions_expired,
    /// Inbox entries stored.
    stored,
    /// Inbox entries acked.
    acked,
    /// Inbox entries dropped by `--message-ttl-ms` or with their session.
    messages_expired,
    /// Relays to a receiver whose inbox was full.
    inbox_full,
    /// Version-2 relays answered as duplicates of a stored `message_id`.
    duplicates,
    /// Relays dropped for a receiver by content dedup (`DuplicateContent`).
    content_duplicates,
    /// Receipts that could not be delivered (sender gone or inbox full).
    receipts_dropped,
    /// Relays to a durable receiver refused because the log was full or
    /// could not be written (`StorageFull`).
    storage_full,
    /// Log batches the disk refused (retried).
    log_write_errors,
    /// Bodies of offline sessions' entries read back from the log.
    bodies_read,
    /// Of `bodies_read`, those that came with a read another entry of the
    /// same record asked for (no read of their own).
    body_reads_shared,
    /// Records read back from the log that did not check out (the entry
    /// is read again at its session's next ack or resume).
    body_read_errors,
    /// Log compactions (snapshots of the live state).
    compactions,
    /// Bytes in this shard's log now (a gauge).
    log_bytes,
    /// Bytes appended to this shard's log since start: records and the
    /// copies compaction writes (what the disk was asked to write).
    log_appended,
    /// Log records read back at start-up.
    recovered_records,
    /// Milliseconds the start-up recovery took.
    recovery_ms,
    /// Durable sessions on this shard, connected or not (a gauge, updated
    /// every second).
    sessions_durable,
    /// Durable sessions with a connection now (a gauge, every second).
    sessions_online,
    /// Entries waiting in this shard's inboxes (a gauge, every second).
    inbox_entries,
    /// Body bytes waiting in this shard's inboxes (a gauge, every second).
    inbox_bytes,
    /// `fdatasync` calls of the log.
    fsyncs,
    /// Connections handed to the shard owning the session they resume.
    handoffs_out,
    /// Connections taken over from another shard.
    handoffs_in,
    /// Times a reader paused because the mesh outbox its relay needed was
    /// over its byte budget.
    backpressure_waits,
}
