//! Bodies of offline sessions live in the log, not in memory.
//!
//! With `--storage disk`, once a session has no connection and an entry of
//! its inbox is durable, the entry drops its body and keeps only where its
//! record lies ([`LogPos`]); so do the entries recovery rebuilds at
//! start-up. When such an entry is next to be sent, the shard asks the
//! driver to read its record back ([`Shard::poll_body_read`]), checks it
//! ([`Shard::handle_body_read`]) and sends it; the entries behind it wait,
//! so delivery stays in order. A read fetches the entry's whole record,
//! checksum included: what comes back is verified, never trusted.
//!
//! A relay to several receivers of the shard is one record: entries that
//! ask for a record already being read join that read ([`Reads::sharing`])
//! and take the same body when it comes back (one read, one buffer), so a
//! fan-out whose receivers resume together (after a restart, say) reads
//! each record once.
//!
//! Memory: a session reads ahead at most its inflight byte window
//! (`--inflight-bytes-max`, at least one entry), and the shard has at most
//! [`READ_BACK_BYTES_MAX`] of read buffers at once ([`read_charge`]: at
//! least one record, however large); a session that finds no room waits
//! for a read to finish.

use std::collections::{HashMap, VecDeque};

use super::{
    durability::LogPos,
    sessions::{Body, Item},
    Event, Shard,
};
use crate::{
    outbound::SharedBody,
    store::record::{decode, Invalid, Record},
};

/// Most bytes one shard reads back at a time, counted as the driver's read
/// buffers take them ([`read_charge`]): 4 MiB (one record always goes out,
/// however large).
pub const READ_BACK_BYTES_MAX: u64 = 4 << 20;

/// The largest `O_DIRECT` alignment the budget allows for: 4 KiB. A read
/// covers whole blocks, so a record costs its length rounded up to them,
/// and one block more when it starts inside one.
pub const READ_BLOCK_BYTES: u64 = 4 << 10;

/// What reading the record at `pos` back takes from the budget: the
/// buffer the driver's read fills.
pub fn read_charge(pos: LogPos) -> u64 {
    u64::from(pos.len.get()).next_multiple_of(READ_BLOCK_BYTES) + READ_BLOCK_BYTES
}

/// A record for the driver to read back: `pos.len` bytes at `pos.offset` of
/// the file of generation `pos.generation`, for `user`'s entry `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyRead {
    /// The session.
    pub user: u64,
    /// Its entry.
    pub seq: u64,
    /// Where the entry's record lies.
    pub pos: LogPos,
}

/// Why a record read back could not be used: the entry stays in the log and
/// is read again the next time the session is pumped (its next ack or
/// resume).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadBackError {
    /// The bytes are not a whole, valid record (a bad disk, or a bug).
    Invalid(Invalid),
    /// A valid record, but not the entry's message (a bug).
    Mismatch,
}

impl std::fmt::Display for ReadBackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadBackError::Invalid(invalid) => {
                write!(f, "the record read back does not check out ({invalid:?})")
            }
            ReadBackError::Mismatch => {
                write!(f, "the record read back is not the entry's message")
            }
        }
    }
}

impl std::error::Error for ReadBackError {}

/// The shard's reads in progress.
#[derive(Default)]
pub(super) struct Reads {
    /// Reads to start, in order of asking: the entry that asked, the
    /// record's position then (its key in `sharing`) and the charge.
    queue: VecDeque<Queued>,
    /// For every record queued or being read, keyed by its position: the
    /// other entries, `(user, seq)`, that wait for the same record. They
    /// are charged nothing: the read's buffer is theirs too.
    sharing: HashMap<LogPos, Vec<(u64, u64)>>,
    /// Bytes queued or being read, as [`read_charge`] counts them.
    bytes: u64,
    /// Sessions that found no room, pumped again as reads finish.
    waiters: VecDeque<u64>,
    /// The driver's reader waits for [`Event::BodyReadReady`].
    reader_parked: bool,
}

/// A read to start.
struct Queued {
    user: u64,
    seq: u64,
    /// The record's position when it was asked for (a compaction may move
    /// it before the read starts).
    key: LogPos,
    /// What [`read_charge`] took for it.
    charge: u64,
}

impl<Io> Shard<Io> {
    /// `user` is offline: its durable entries drop their bodies (the log
    /// holds them). Each entry is looked at once per detach.
    pub(super) fn evict_bodies(&mut self, user: u64) {
        if !self.log.enabled() {
            return;
        }
        let durable = self.log.durable();
        let Some(session) = self.sessions.map.get_mut(&user) else {
            return;
        };
        if session.conn.is_some() {
            return;
        }
        let start = session
            .inbox
            .partition_point(|entry| entry.seq <= session.evicted_upto);
        for entry in session.inbox.range_mut(start..) {
            if entry.lsn > durable {
                break; // Not in the log yet: the rest neither.
            }
            if let Item::Message {
                body: body @ Body::Resident(_),
                pos: Some(_),
                ..
            } = &mut entry.item
            {
                let Body::Resident(frame) = &*body else {
                    unreachable!("matched above");
                };
                let len = u32::try_from(frame.body_len()).expect("a body fits u32");
                *body = Body::Logged(len);
            }
            session.evicted_upto = entry.seq;
        }
    }

    /// `user`'s entry `from_seq` is next to send and its body is in the
    /// log: read it back, and the entries after it up to the session's
    /// inflight byte window.
    pub(super) fn read_bodies(&mut self, user: u64, from_seq: u64) {
        let (window, window_bytes) = (
            self.limits.inflight_messages_max,
            self.limits.inflight_bytes_max,
        );
        let Some(session) = self.sessions.map.get_mut(&user) else {
            return;
        };
        if session.read_failed {
            return; // Until its next ack or resume.
        }
        let start = session.inbox.partition_point(|entry| entry.seq < from_seq);
        // What is in flight counts: read ahead only what the window could
        // send now.
        let (mut asked, mut asked_bytes) = (session.inflight, session.inflight_bytes);
        let first = asked;
        let mut queued = false;
        for entry in session.inbox.range_mut(start..) {
            if asked > first && asked >= window {
                break;
            }
            let Item::Message {
                body,
                pos: Some(pos),
                ..
            } = &mut entry.item
            else {
                continue;
            };
            let len = match *body {
                Body::Resident(_) => continue,
                Body::Loading(len) => {
                    asked += 1;
                    asked_bytes += u64::from(len);
                    continue;
                }
                Body::Logged(len) => len,
            };
            if asked > first && asked_bytes + u64::from(len) > window_bytes {
                break;
            }
            if let Some(waiting) = self.reads.sharing.get_mut(pos) {
                // Its record is being read for another entry: no read of
                // its own.
                waiting.push((user, entry.seq));
            } else {
                let charge = read_charge(*pos);
                if self.reads.bytes > 0 && self.reads.bytes + charge > READ_BACK_BYTES_MAX {
                    self.reads.waiters.push_back(user);
                    break;
                }
                self.reads.queue.push_back(Queued {
                    user,
                    seq: entry.seq,
                    key: *pos,
                    charge,
                });
                self.reads.sharing.insert(*pos, Vec::new());
                self.reads.bytes += charge;
                queued = true;
            }
            *body = Body::Loading(len);
            asked += 1;
            asked_bytes += u64::from(len);
        }
        if queued && std::mem::take(&mut self.reads.reader_parked) {
            self.events.push_back(Event::BodyReadReady);
        }
    }

    /// The next record for the driver to read back; `None` parks the
    /// reader until [`Event::BodyReadReady`].
    pub fn poll_body_read(&mut self) -> Option<BodyRead> {
        while let Some(queued) = self.reads.queue.pop_front() {
            self.reads.bytes -= queued.charge;
            let mut waiting = self.reads.sharing.remove(&queued.key).unwrap_or_default();
            waiting.insert(0, (queued.user, queued.seq));
            // Acked or expired meanwhile: not read for.
            waiting.retain(|&(user, seq)| self.loading_at(user, seq).is_some());
            if waiting.is_empty() {
                continue;
            }
            let (user, seq) = waiting.remove(0);
            // A compaction may have moved the record since it was asked for.
            let pos = self.loading_at(user, seq).expect("kept above");
            if let Some(joined) = self.reads.sharing.get_mut(&pos) {
                // Asked for again at its new place: that read serves all.
                joined.push((user, seq));
                joined.extend(waiting);
                continue;
            }
            self.reads.sharing.insert(pos, waiting);
            self.reads.bytes += read_charge(pos);
            return Some(BodyRead { user, seq, pos });
        }
        self.reads.reader_parked = true;
        None
    }

    /// Where `user`'s entry `seq` lies, if it is waiting for its body.
    fn loading_at(&self, user: u64, seq: u64) -> Option<LogPos> {
        match self.sessions.map.get(&user)?.entry(seq)?.item {
            Item::Message {
                body: Body::Loading(_),
                pos: Some(pos),
                ..
            } => Some(pos),
            _ => None,
        }
    }

    /// The driver read `read`'s record: `bytes` (`read.pos.len` of them,
    /// fewer if the file ended first, which then fails the check).
    /// The entries waiting for it go out if their sessions are still
    /// connected; the error (for the driver's log) when the record is not
    /// the entry's.
    pub fn handle_body_read(
        &mut self,
        now_ms: u64,
        read: BodyRead,
        bytes: &[u8],
    ) -> Result<(), ReadBackError> {
        self.reads.bytes -= read_charge(read.pos);
        let others = self.reads.sharing.remove(&read.pos).unwrap_or_default();
        let record = match decode(bytes) {
            Ok(Some((record, _))) => Ok(record),
            Ok(None) => Err(ReadBackError::Invalid(Invalid::Truncated)),
            Err(invalid) => Err(ReadBackError::Invalid(invalid)),
        };
        let mut result = Ok(());
        let mut served = Vec::with_capacity(1 + others.len());
        for (i, (user, seq)) in std::iter::once((read.user, read.seq))
            .chain(others)
            .enumerate()
        {
            let taken = match &record {
                Ok(record) => self.take_body(user, seq, record),
                Err(error) => self.unload(user, seq).map_or(Ok(false), |()| Err(*error)),
            };
            match taken {
                Ok(true) => {
                    self.stats.bodies_read.incr();
                    if i > 0 {
                        self.stats.body_reads_shared.incr();
                    }
                    served.push(user);
                }
                Ok(false) => {} // Acked or expired meanwhile.
                Err(error) => {
                    self.read_failed(user);
                    result = result.and(Err(error));
                }
            }
        }
        if result.is_err() {
            self.stats.body_read_errors.incr(); // Once per record.
        }
        served.dedup();
        for user in served {
            self.pump(now_ms, user);
        }
        // Sessions that waited for room, as many as there were.
        for _ in 0..self.reads.waiters.len() {
            if self.reads.bytes >= READ_BACK_BYTES_MAX {
                break;
            }
            let Some(user) = self.reads.waiters.pop_front() else {
                break;
            };
            self.pump(now_ms, user);
        }
        result
    }

    /// The driver could not read `read` at all (its file is not open: a
    /// bug, logged there). The entries stay in the log; their sessions
    /// read nothing more until their next ack or resume.
    pub fn handle_body_unread(&mut self, read: BodyRead) {
        self.reads.bytes -= read_charge(read.pos);
        self.stats.body_read_errors.incr();
        let others = self.reads.sharing.remove(&read.pos).unwrap_or_default();
        for (user, seq) in std::iter::once((read.user, read.seq)).chain(others) {
            if self.unload(user, seq).is_some() {
                self.read_failed(user);
            }
        }
    }

    /// A read for `user` failed: its session reads nothing more until its
    /// next ack or resume, so its connection's frames do not wait for
    /// the read any longer (they may hold that ack).
    fn read_failed(&mut self, user: u64) {
        let Some(session) = self.sessions.map.get_mut(&user) else {
            return;
        };
        session.read_failed = true;
        if let Some(id) = session.conn {
            self.end_read_back_pause(id);
        }
    }

    /// `user`'s entry `seq`, if it is waiting for its body: back to
    /// [`Body::Logged`].
    fn unload(&mut self, user: u64, seq: u64) -> Option<()> {
        match &mut self.sessions.map.get_mut(&user)?.entry_mut(seq)?.item {
            Item::Message {
                body: body @ Body::Loading(_),
                ..
            } => {
                *body = Body::Logged(u32::try_from(body.len()).expect("a body fits u32"));
                Some(())
            }
            _ => None,
        }
    }

    /// Gives `user`'s entry `seq` its body from `record`, read back for
    /// it: `Ok(false)` if the entry no longer waits for one (acked or
    /// expired meanwhile), an error if `record` is not its message.
    fn take_body(&mut self, user: u64, seq: u64, record: &Record) -> Result<bool, ReadBackError> {
        let Some(session) = self.sessions.map.get_mut(&user) else {
            return Ok(false);
        };
        let online = session.conn.is_some();
        let Some(entry) = session.entry_mut(seq) else {
            return Ok(false);
        };
        let Item::Message {
            from,
            message_id,
            body: body @ Body::Loading(_),
            ..
        } = &mut entry.item
        else {
            return Ok(false);
        };
        let len = u32::try_from(body.len()).expect("a body fits u32");
        // Back to the log whatever happens next, unless it checks out.
        *body = Body::Logged(len);
        let Record::Message {
            from: read_from,
            message_id: read_id,
            body: read_body,
            receivers,
            ..
        } = record
        else {
            return Err(ReadBackError::Mismatch);
        };
        let listed = receivers
            .iter()
            .any(|&(receiver, receiver_seq)| receiver == user && receiver_seq == seq);
        if *read_from != *from
            || *read_id != *message_id
            || !listed
            || read_body.len() != len as usize
        {
            return Err(ReadBackError::Mismatch);
        }
        if online {
            // One buffer for every entry the read serves.
            *body = Body::Resident(SharedBody::from_body(*from, read_body.clone()));
        }
        Ok(true)
    }

    /// Moves the log positions entries keep, as `change` says (a
    /// compaction rewrote the file they point into).
    pub(super) fn move_positions(&mut self, change: impl Fn(LogPos) -> Option<LogPos>) {
        for session in self.sessions.map.values_mut() {
            for entry in &mut session.inbox {
                if let Item::Message { pos: Some(pos), .. } = &mut entry.item {
                    if let Some(moved) = change(*pos) {
                        *pos = moved;
                    }
                }
            }
        }
    }

    /// Records being read back, or queued to be (for tests and stats).
    pub fn body_reads_pending(&self) -> u64 {
        self.reads.bytes
    }
}
