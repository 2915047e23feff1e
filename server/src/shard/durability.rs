//! The shard's side of its log: records appended in memory, handed to the
//! driver in batches (one batch per write: group commit), and the
//! durable position the driver reports back. Nothing that depends on a
//! record leaves the hub before the record is as durable as the fsync
//! policy says: a `Stored`, a `Handled` answer to another shard, a
//! delivery of the entry (a receiver never sees a `seq` that a crash could
//! give to another message), a durable session's `WelcomeV2`.
//!
//! Positions (LSNs) are byte offsets in the shard's logical log; they keep
//! growing across compactions, which start a new generation of the log
//! file with a snapshot of the live state.

use std::{collections::VecDeque, num::NonZeroU32};

use bytes::{Bytes, BytesMut};
use foldhash::{HashMap, HashMapExt};
use relayhub_protocol::Stored;

use super::{Event, MeshMessage, Shard};
use crate::{
    conn::ConnId,
    store::record::{encode, Record},
};

/// The log grows at least this much past the last compaction before the
/// shard considers compacting again (64 MiB).
pub const COMPACTION_MIN_BYTES: u64 = 64 << 20;

/// A compaction starts once the log holds more than this many times the
/// bytes the live state needs.
pub const COMPACTION_RATIO: u64 = 2;

/// Once the disk refused to grow the log: room in the log file that new
/// entries do not take, for the records that keep the hub going (acks,
/// tokens of resumes, sessions): 1 MiB.
pub const LOG_RESERVE_BYTES: u64 = 1 << 20;

/// A failed compaction is tried again once the live state is half what it
/// was, or this long after (10 s).
pub const COMPACTION_RETRY_MS: u64 = 10_000;

/// Where one record lies in the log's files: what an inbox entry whose
/// body is not in memory keeps (16 bytes, and no more as an `Option`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LogPos {
    /// The generation of the file (`log-<generation>.rlog`).
    pub generation: u32,
    /// Bytes of the record, padding included (never 0).
    pub len: NonZeroU32,
    /// Its offset in the file.
    pub offset: u64,
}

/// A record's length as a [`LogPos`] keeps it.
pub fn record_len(len: usize) -> NonZeroU32 {
    u32::try_from(len)
        .ok()
        .and_then(NonZeroU32::new)
        .expect("a record is 1 to 2^32 - 1 bytes")
}

/// Records for the driver to write, in order, then report with
/// [`Shard::handle_log_written`].
#[derive(Debug)]
pub struct LogBatch {
    /// Encoded records.
    pub bytes: Bytes,
    /// The log position after them.
    pub end_lsn: u64,
    /// The batch is a snapshot that starts a new generation of the log:
    /// write it to a new file, make it durable, then drop the old file.
    pub new_generation: bool,
    /// A snapshot's records whose bodies are not in memory: each is copied
    /// unchanged from the current file (`LogPos`) and goes in before the
    /// byte of `bytes` at the offset given (in order). Empty otherwise.
    pub copies: Vec<(usize, LogPos)>,
}

impl LogBatch {
    /// Bytes the batch puts in the log, copies included.
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
            + self
                .copies
                .iter()
                .map(|(_, pos)| u64::from(pos.len.get()))
                .sum::<u64>()
    }

    /// True when the batch holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Something that must wait until the log is durable up to a position.
pub(super) enum Waiting {
    /// A `Stored` for a sender's connection; true when no receiver was
    /// refused (only then does its retry count as a duplicate up front).
    Stored(ConnId, Stored, bool),
    /// An answer to another shard.
    Mesh(usize, MeshMessage),
    /// A half-closed connection's last owed reply is queued ahead of this:
    /// its outbound closes.
    RepliesEnd(ConnId),
    /// A durable session's welcome (its records are durable): the
    /// connection is welcomed and resumes reading.
    Welcome {
        id: ConnId,
        user: u64,
        kind: crate::conn::SessionKind,
        token: relayhub_protocol::ResumeToken,
        request: u64,
        resumed: bool,
    },
}

/// A snapshot being written as the next generation.
struct Compaction {
    /// Where the current generation started before it.
    generation_start: u64,
    /// Its bytes.
    snapshot_bytes: u64,
    /// What was pending when it was taken (in its state already): written
    /// to the current generation after all if the snapshot fails.
    superseded: Bytes,
    /// Where the snapshot starts in the log's positions.
    start_lsn: u64,
    /// Where each message record of the current generation that the
    /// snapshot holds goes: `(offset now, position in the snapshot)`,
    /// sorted; the entries' positions move once the snapshot is the log.
    moves: Vec<(u64, LogPos)>,
}

/// One item of a snapshot: a record to encode (with the position of the
/// message record it replaces, if any), or a record of the current file
/// copied unchanged (a message whose body is not in memory).
pub(super) enum SnapshotItem {
    Encode(Record, Option<LogPos>),
    Copy(LogPos),
}

/// The shard's log state.
pub(super) struct Log {
    /// False with `--storage memory`: everything is "durable" at once.
    enabled: bool,
    pending: BytesMut,
    /// The position after the last record appended.
    appended: u64,
    /// The position this run of the hub started appending at (the end of
    /// the recovered log): `log_appended` counts from here.
    started_at: u64,
    /// The position the driver made durable.
    durable: u64,
    /// Where the current generation starts.
    generation_start: u64,
    /// The current generation's number (its file's name).
    generation: u32,
    /// The driver's writer waits for [`Event::LogReady`].
    writer_parked: bool,
    /// A snapshot is pending or being written.
    compaction: Option<Compaction>,
    /// A compaction failed: the next waits until the live state is below
    /// the first bytes, or the clock at the second ms, or the disk has
    /// room again.
    compaction_retry: Option<(u64, u64)>,
    waiting: VecDeque<(u64, Waiting)>,
    /// Sessions whose acks or sender high-water marks changed since the
    /// last batch (one coalesced record each per batch).
    dirty: HashMap<u64, (bool, bool)>,
    /// Sessions with entries waiting for durability before delivery.
    /// `(lsn, user)`: the user's entries up to `lsn` wait for it to be
    /// durable before delivery.
    undelivered: Vec<(u64, u64)>,
    /// The driver could not write: refuse new durable entries.
    failed: bool,
    /// Most bytes this shard's log may hold.
    bytes_max: u64,
    /// Most bytes the current log file can hold on the disk, as the driver
    /// reports ([`Shard::handle_log_room`]); `u64::MAX` while the disk
    /// gives the log the room it asks for.
    room: u64,
}

impl Log {
    pub(super) fn new(enabled: bool, bytes_max: u64) -> Log {
        Log {
            enabled,
            pending: BytesMut::new(),
            appended: 0,
            started_at: 0,
            durable: 0,
            generation_start: 0,
            generation: 0,
            writer_parked: false,
            compaction: None,
            compaction_retry: None,
            waiting: VecDeque::new(),
            dirty: HashMap::new(),
            undelivered: Vec::new(),
            failed: false,
            bytes_max,
            room: u64::MAX,
        }
    }

    /// Bytes of the current log generation (what is on disk, or will be).
    pub(super) fn bytes(&self) -> u64 {
        self.appended - self.generation_start
    }

    /// True when entries appended now would be refused (`StorageFull`):
    /// past the share, while the disk refuses writes, or past the room
    /// the disk gave the file less its reserve.
    pub(super) fn full(&self, more: u64) -> bool {
        let after = self.bytes() + more;
        self.enabled
            && (self.failed
                || after > self.bytes_max
                || after.saturating_add(LOG_RESERVE_BYTES) > self.room)
    }

    /// The position an action taken now must wait for.
    pub(super) fn appended(&self) -> u64 {
        if self.enabled {
            self.appended
        } else {
            0
        }
    }

    /// The position the driver made durable.
    pub(super) fn durable(&self) -> u64 {
        self.durable
    }

    pub(super) fn is_durable(&self, lsn: u64) -> bool {
        lsn <= self.durable || !self.enabled
    }

    /// True with `--storage disk`.
    pub(super) fn enabled(&self) -> bool {
        self.enabled
    }

    /// The generation a record appended now lands in: the next one while a
    /// snapshot is being written (records wait for it).
    fn writing_generation(&self) -> u32 {
        self.generation + u32::from(self.compaction.is_some())
    }
}

impl<Io> Shard<Io> {
    /// Appends `record` to the log (nothing with `--storage memory`).
    pub(super) fn log(&mut self, record: &Record) {
        if !self.log.enabled {
            return;
        }
        let len = encode(record, &mut self.log.pending);
        self.log.appended += len as u64;
        self.wake_log_writer();
    }

    /// Appends a `Message` record straight from the relay's body; returns
    /// where it will lie (none with `--storage memory`).
    pub(super) fn log_message(
        &mut self,
        message: &crate::store::record::MessageRecord<'_>,
    ) -> Option<LogPos> {
        if !self.log.enabled {
            return None;
        }
        let offset = self.log.appended - self.log.generation_start;
        let len = crate::store::record::encode_message(message, &mut self.log.pending);
        self.log.appended += len as u64;
        self.wake_log_writer();
        Some(LogPos {
            generation: self.log.writing_generation(),
            len: record_len(len),
            offset,
        })
    }

    fn wake_log_writer(&mut self) {
        if std::mem::take(&mut self.log.writer_parked) {
            self.events.push_back(Event::LogReady);
        }
    }

    /// Runs `waiting` once everything appended so far is durable, after
    /// everything that waits already (in the order they came).
    pub(super) fn after_durable(&mut self, now_ms: u64, waiting: Waiting) {
        let lsn = self.log.appended();
        // Not empty while durable only when called from the loop that runs
        // them: this one goes behind them.
        if self.log.is_durable(lsn) && self.log.waiting.is_empty() {
            self.run_waiting(now_ms, waiting);
        } else {
            self.log.waiting.push_back((lsn, waiting));
        }
    }

    fn run_waiting(&mut self, now_ms: u64, waiting: Waiting) {
        match waiting {
            Waiting::Stored(id, stored, clean) => {
                if clean {
                    self.raise_message_id_high(id, stored.message_id);
                }
                self.push_stored(now_ms, id, stored);
            }
            Waiting::Mesh(target, message) => self.send_mesh(now_ms, target, message),
            Waiting::RepliesEnd(id) => self.end_replies(id, None),
            Waiting::Welcome {
                id,
                user,
                kind,
                token,
                request,
                resumed,
            } => self.attach(now_ms, id, user, kind, token, request, resumed),
        }
    }

    /// The sender of `id` got `Stored` for `message_id`: a retry of it (or
    /// of anything below) is a duplicate from now on.
    fn raise_message_id_high(&mut self, id: ConnId, message_id: u64) {
        if message_id == 0 {
            return;
        }
        let Some(user) = self.conn(id).map(|conn| conn.user) else {
            return;
        };
        let high = self.message_id_high(id);
        if message_id > *high {
            *high = message_id;
            if self.is_durable(user) {
                self.log_sender_high(user);
            }
        }
    }

    /// Marks `user`'s ack floor for the next batch (coalesced).
    pub(super) fn log_ack(&mut self, user: u64) {
        if self.log.enabled {
            self.log.dirty.entry(user).or_default().0 = true;
            self.wake_log_writer();
        }
    }

    /// Marks `user`'s sender high-water mark for the next batch.
    pub(super) fn log_sender_high(&mut self, user: u64) {
        if self.log.enabled {
            self.log.dirty.entry(user).or_default().1 = true;
            self.wake_log_writer();
        }
    }

    /// `user` has entries to deliver once they are durable.
    pub(super) fn note_undelivered(&mut self, user: u64, lsn: u64) {
        if self.log.enabled {
            self.log.undelivered.push((lsn, user));
        }
    }

    /// The next batch for the driver's log writer; `None` parks the writer
    /// until [`Event::LogReady`].
    pub fn poll_log(&mut self, now_ms: u64) -> Option<LogBatch> {
        if !self.log.enabled {
            return None;
        }
        self.flush_dirty();
        if self.log.compaction.is_none() && self.compaction_due(now_ms) {
            return Some(self.snapshot());
        }
        if self.log.pending.is_empty() {
            self.log.writer_parked = true;
            return None;
        }
        Some(LogBatch {
            bytes: self.log.pending.split().freeze(),
            end_lsn: self.log.appended,
            new_generation: false,
            copies: Vec::new(),
        })
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.log.dirty);
        for (user, (ack, high)) in dirty {
            let Some((acked, message_id)) = self.session_floor(user) else {
                continue;
            };
            if ack {
                let len = encode(&Record::Acked { user, upto: acked }, &mut self.log.pending);
                self.log.appended += len as u64;
            }
            if high {
                let record = Record::SenderHigh { user, message_id };
                let len = encode(&record, &mut self.log.pending);
                self.log.appended += len as u64;
            }
        }
    }

    /// The driver wrote (and synced, as the policy says) everything up to
    /// `end_lsn`.
    pub fn handle_log_written(&mut self, now_ms: u64, end_lsn: u64, new_generation: bool) {
        self.log.failed = false;
        self.log.durable = self.log.durable.max(end_lsn);
        if new_generation {
            if let Some(compaction) = self.log.compaction.take() {
                let old = self.log.generation;
                self.log.generation += 1;
                self.move_positions(|pos| {
                    if pos.generation != old {
                        return None;
                    }
                    let at = compaction
                        .moves
                        .binary_search_by_key(&pos.offset, |&(from, _)| from);
                    debug_assert!(at.is_ok(), "a live record the snapshot left out: {pos:?}");
                    at.ok().map(|at| compaction.moves[at].1)
                });
            }
            self.log.compaction_retry = None;
            self.stats.compactions.incr();
        }
        while let Some((lsn, _)) = self.log.waiting.front() {
            if *lsn > self.log.durable {
                break;
            }
            let (_, waiting) = self.log.waiting.pop_front().expect("front exists");
            self.run_waiting(now_ms, waiting);
        }
        // Entries appended while this batch was written wait for a later one.
        let durable = self.log.durable;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.log.undelivered)
            .into_iter()
            .partition(|&(lsn, _)| lsn <= durable);
        self.log.undelivered = waiting;
        let mut users: Vec<u64> = ready.into_iter().map(|(_, user)| user).collect();
        users.sort_unstable();
        users.dedup();
        for user in users {
            self.pump(now_ms, user);
        }
        self.stats.log_bytes.set(self.log.bytes());
        self.stats
            .log_appended
            .set(self.log.appended - self.log.started_at);
        if self.shutdown.is_some() {
            self.advance_shutdown(now_ms);
        }
    }

    /// Nothing waits for the log to become durable.
    pub(super) fn log_waiting_empty(&self) -> bool {
        self.log.waiting.is_empty()
    }

    /// The driver could not write `batch` (nothing of it is in the log).
    /// Its records go out again with the next batch, unless a compaction
    /// makes them moot; a failed snapshot leaves the current generation the
    /// log, and what it superseded goes there. Until a write succeeds,
    /// relays to durable sessions get `StorageFull`.
    pub fn handle_log_failed(&mut self, now_ms: u64, batch: LogBatch) {
        self.handle_log_unsynced();
        let again = if batch.new_generation {
            let compaction = self
                .log
                .compaction
                .take()
                .expect("a new generation is a compaction's");
            // The snapshot's positions stay used (positions only grow).
            self.log.generation_start = compaction.generation_start + compaction.snapshot_bytes;
            // Records appended since go to the current file after what it
            // holds and what the snapshot superseded.
            let (next, shift) = (
                self.log.generation + 1,
                compaction.start_lsn - compaction.generation_start,
            );
            let generation = self.log.generation;
            self.move_positions(|pos| {
                (pos.generation == next).then(|| LogPos {
                    generation,
                    offset: pos.offset - compaction.snapshot_bytes + shift,
                    ..pos
                })
            });
            self.log.compaction_retry = Some((self.live_bytes() / 2, now_ms + COMPACTION_RETRY_MS));
            compaction.superseded
        } else {
            batch.bytes
        };
        let mut pending = BytesMut::with_capacity(again.len() + self.log.pending.len());
        pending.extend_from_slice(&again);
        pending.extend_from_slice(&self.log.pending);
        self.log.pending = pending;
        if self.log.pending.is_empty() {
            // A snapshot that replaced nothing failed: no write is owed,
            // and the file is the log it was, durable up to its end (the
            // snapshot's positions hold nothing live). Waiting for a write
            // that nothing would start would refuse durable relays, and
            // hold every answer queued behind the snapshot, for good.
            let appended = self.log.appended;
            self.handle_log_written(now_ms, appended, false);
        }
    }

    /// The driver wrote a batch but could not `fdatasync` it; it syncs
    /// again. Until it succeeds, relays to durable sessions get
    /// `StorageFull`.
    pub fn handle_log_unsynced(&mut self) {
        self.log.failed = true;
        self.stats.log_write_errors.incr();
    }

    /// The log file can hold `room` bytes on the disk (`u64::MAX`: what
    /// the log asks for). Entries that would leave less than
    /// [`LOG_RESERVE_BYTES`] of it get `StorageFull`, and the log compacts
    /// past half of it (as past half its share).
    pub fn handle_log_room(&mut self, room: u64) {
        if room == u64::MAX && self.log.room != u64::MAX {
            // The disk has room again: so may a failed compaction.
            self.log.compaction_retry = None;
        }
        self.log.room = room;
    }

    /// Bytes the live state would take in a snapshot (an estimate that
    /// errs high).
    fn live_bytes(&self) -> u64 {
        self.sessions_live_bytes()
    }

    fn compaction_due(&self, now_ms: u64) -> bool {
        let bytes = self.log.bytes();
        let limit = self.log.bytes_max.min(self.log.room);
        let big = self.log.failed || bytes > COMPACTION_MIN_BYTES || bytes > limit / 2;
        if !big {
            return false;
        }
        let live = self.live_bytes();
        bytes > COMPACTION_RATIO * live
            && self
                .log
                .compaction_retry
                .is_none_or(|(below, at_ms)| live < below || now_ms >= at_ms)
    }

    /// True when nothing waits to be written or for durability: what the
    /// driver waits for before it stops.
    pub fn log_settled(&self) -> bool {
        !self.log.enabled
            || (self.log.pending.is_empty()
                && self.log.dirty.is_empty()
                && self.log.waiting.is_empty()
                && self.log.writer_parked)
    }

    /// A snapshot of the live state: a new generation of the log.
    fn snapshot(&mut self) -> LogBatch {
        let next = self.log.generation + 1;
        let mut out = BytesMut::new();
        let mut copies = Vec::new();
        let mut copied = 0;
        let mut moves = Vec::new();
        for item in self.snapshot_records() {
            let offset = out.len() as u64 + copied;
            match item {
                SnapshotItem::Encode(record, old) => {
                    let len = encode(&record, &mut out);
                    if let Some(old) = old {
                        let new = LogPos {
                            generation: next,
                            len: record_len(len),
                            offset,
                        };
                        moves.push((old.offset, new));
                    }
                }
                SnapshotItem::Copy(old) => {
                    debug_assert_eq!(old.generation, self.log.generation);
                    copies.push((out.len(), old));
                    copied += u64::from(old.len.get());
                    let new = LogPos {
                        generation: next,
                        offset,
                        ..old
                    };
                    moves.push((old.offset, new));
                }
            }
        }
        encode(&Record::SnapshotEnd, &mut out);
        moves.sort_unstable_by_key(|&(from, _)| from);
        let snapshot_bytes = out.len() as u64 + copied;
        // What was pending is in the snapshot's state already.
        self.log.compaction = Some(Compaction {
            generation_start: self.log.generation_start,
            snapshot_bytes,
            superseded: self.log.pending.split().freeze(),
            start_lsn: self.log.appended,
            moves,
        });
        self.log.generation_start = self.log.appended;
        self.log.appended += snapshot_bytes;
        LogBatch {
            bytes: out.freeze(),
            end_lsn: self.log.appended,
            new_generation: true,
            copies,
        }
    }

    /// Recovery reads generation `generation` of the log. Whatever an
    /// earlier recovery rebuilt is forgotten first: the start-up recovers
    /// the newest generation as it checks it, and starts again from the
    /// one before if that turns out to be an unfinished compaction.
    pub fn begin_recovery(&mut self, generation: u64) {
        *self = Shard::new(
            self.index,
            self.shards,
            self.limits.clone(),
            self.stats.clone(),
        );
        self.log.generation = u32::try_from(generation).expect("fewer than 2^32 compactions");
    }

    /// The log's first generation after a recovery starts at `lsn`; the
    /// recovered file holds `bytes`.
    pub(super) fn log_recovered(&mut self, lsn: u64, bytes: u64) {
        self.log.generation_start = lsn - bytes;
        self.log.appended = lsn;
        self.log.started_at = lsn;
        self.log.durable = lsn;
    }
}

#[cfg(test)]
mod tests;
