//! One shard's core: its connections, their protocol handling, routing,
//! the mesh outboxes, timers and shutdown, with no IO, no clock and no
//! executor. Inputs are `handle_*` calls (with `now` in milliseconds passed
//! in); outputs are `poll_*` calls and [`Event`]s the driver turns into
//! wake-ups and socket operations. The glommio driver (`driver.rs`), the unit
//! tests and the fuzz harness all drive this same type.
//!
//! - `mod.rs` (here): the connection table, reading, writing, closing.
//! - `frames`: what each client frame does.
//! - `routing`: relays to local receivers and to other shards, reports.
//! - `list`: paged listing, gathered from every shard.
//! - `mesh`: mesh messages, outboxes with byte budgets, paused readers.
//! - `timers`: idle, frame and flush deadlines.
//! - `sessions`: durable sessions, inboxes, acks, receipts, expiry, and the
//!   log's view of them (snapshots, recovery).
//! - `durability`: records appended, batches for the log writer, what
//!   waits for the durable position.
//! - `dedup`: content dedup windows.
//! - `shutdown`: the phased shutdown across shards.

mod dedup;
mod durability;
mod frames;
mod list;
mod mesh;
mod readback;
mod routing;
mod sessions;
mod shutdown;
mod timers;

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
};

use bytes::{Bytes, BytesMut};
use foldhash::{HashMap, HashMapExt};
use relayhub_protocol::{encode, Error as ErrorFrame, ErrorCodeV2};

pub use dedup::{ContentWindow as ContentWindowBox, CONTENT_DEDUP_ENTRIES_MAX};
pub use durability::{record_len, LogBatch, LogPos, COMPACTION_MIN_BYTES, COMPACTION_RATIO};
pub use list::LISTS_PER_CONNECTION_MAX;
pub use mesh::{Failures, MeshMessage, Receivers, MESH_MESSAGE_OVERHEAD_BYTES, MESH_SLOT_BYTES};
pub use readback::{read_charge, BodyRead, ReadBackError, READ_BACK_BYTES_MAX, READ_BLOCK_BYTES};
pub use routing::{INLINE_DELIVER_BYTES_MAX, RELAYS_PENDING_PER_CONNECTION_MAX};
pub use sessions::{ENTRY_BYTES, SESSION_BYTES, SESSION_SWEEP_MS};

use crate::{
    config::Config,
    conn::{ConnId, ConnState, Connection},
    ids::IdAllocator,
    stats::ShardStats,
};

/// Bytes of the per-shard read buffer that idle and small-frame connections
/// share (a connection holds a buffer of its own only while a frame is
/// partly received). 64 KiB per shard.
pub const SHARD_READ_BYTES: usize = 64 << 10;

/// How long a connection closed at the very end of the shutdown grace
/// period gets to write what is queued and its `ShuttingDown` (the driver
/// waits 1 s past the grace period for the last connections to end).
pub const GRACE_END_FLUSH_MS: u64 = 250;

/// The limits one shard enforces, from the hub's [`Config`].
#[derive(Clone, Debug)]
pub struct Limits {
    /// See [`Config::connections_per_shard_max`].
    pub connections_max: usize,
    /// See [`Config::outbound_bytes_max`].
    pub outbound_bytes_max: usize,
    /// See [`Config::idle_timeout_ms`] (0 = off).
    pub idle_timeout_ms: u64,
    /// See [`Config::frame_timeout_ms`] (0 = off).
    pub frame_timeout_ms: u64,
    /// See [`Config::close_flush_ms`].
    pub close_flush_ms: u64,
    /// See [`Config::mesh_bytes_max`].
    pub mesh_bytes_max: usize,
    /// See [`Config::session_expiry_ms`].
    pub session_expiry_ms: u64,
    /// See [`Config::message_ttl_ms`] (0 = forever).
    pub message_ttl_ms: u64,
    /// See [`Config::inflight_messages_max`].
    pub inflight_messages_max: u64,
    /// See [`Config::inflight_bytes_max`].
    pub inflight_bytes_max: u64,
    /// See [`Config::inbox_messages_max`].
    pub inbox_messages_max: u64,
    /// See [`Config::inbox_bytes_max`].
    pub inbox_bytes_max: u64,
    /// See [`Config::sessions_per_shard_max`].
    pub sessions_max: usize,
    /// See [`Config::dedup_window_ms`] (0 = off).
    pub dedup_window_ms: u64,
    /// See [`Config::content_dedup_window_ms`] (0 = off).
    pub content_dedup_window_ms: u64,
    /// Durable state goes to a log on disk (`--storage disk`); false keeps
    /// it in memory only.
    pub log_enabled: bool,
    /// This shard's share of `--disk-bytes-max`.
    pub log_bytes_max: u64,
}

impl Limits {
    /// The limits `config` sets for one of `shards` shards.
    pub fn from_config(config: &Config, shards: usize) -> Limits {
        Limits {
            connections_max: config.connections_per_shard_max,
            outbound_bytes_max: config.outbound_bytes_max,
            idle_timeout_ms: config.idle_timeout_ms,
            frame_timeout_ms: config.frame_timeout_ms,
            close_flush_ms: config.close_flush_ms,
            mesh_bytes_max: config.mesh_bytes_max,
            session_expiry_ms: config.session_expiry_ms,
            message_ttl_ms: config.message_ttl_ms,
            inflight_messages_max: config.inflight_messages_max,
            // The window and one maximal entry always fit the outbound queue,
            // so the hub never cuts a durable receiver off for its own sends.
            inflight_bytes_max: config.inflight_bytes_max.min(
                (config
                    .outbound_bytes_max
                    .saturating_sub(crate::config::OUTBOUND_BYTES_MIN) as u64)
                    .max(1),
            ),
            inbox_messages_max: config.inbox_messages_max,
            inbox_bytes_max: config.inbox_bytes_max,
            sessions_max: config.sessions_per_shard_max,
            dedup_window_ms: config.dedup_window_ms,
            content_dedup_window_ms: config.content_dedup_window_ms,
            log_enabled: config.storage == crate::config::Storage::Disk,
            log_bytes_max: config.disk_bytes_max / shards.max(1) as u64,
        }
    }
}

/// What the driver must do for the core. Each kind is queued at most once
/// per cause (a writer is woken once per park, a reader once per pause), so
/// the queue is bounded by the number of connections and shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Frames are queued for a connection whose writer waits: wake it.
    Writable(ConnId),
    /// A paused reader may go on: wake it.
    Readable(ConnId),
    /// Stop reading this connection (it is closing, or the hub shuts down):
    /// end its read side so a pending read returns.
    StopReading(ConnId),
    /// The connection missed its flush deadline: drop it now.
    Abort(ConnId),
    /// The outbox towards this shard has messages: wake its forwarder.
    MeshOutbox(usize),
    /// The earliest deadline moved earlier than the one the driver sleeps
    /// until: ask [`Shard::poll_timeout`] again.
    TimerChanged,
    /// The connection resumes a session another shard owns: duplicate its
    /// socket's descriptor, pass it to [`Shard::handle_handed_off`], and
    /// drop the connection without shutting the socket down.
    HandOff(ConnId),
    /// Another shard handed over connections: take them with
    /// [`Shard::poll_adoption`] and [`Shard::handle_adopt`].
    Adopt,
    /// Records wait for the log writer: wake it ([`Shard::poll_log`]).
    LogReady,
    /// Records wait to be read back: wake the reader
    /// ([`Shard::poll_body_read`]).
    BodyReadReady,
}

/// A connection another shard handed over (see [`Event::Adopt`]).
#[derive(Debug)]
pub struct Adoption {
    /// The socket's descriptor, now this shard's.
    pub fd: i32,
    /// The connection's bytes from its `Hello` on.
    pub buffered: Bytes,
}

/// Why a new connection was refused: write [`Refusal::bytes`] and close.
#[derive(Debug)]
pub struct Refusal<Io> {
    /// The driver's value, handed back.
    pub io: Io,
    /// The hub's preface and an `Error(ServerFull)` frame.
    pub bytes: Bytes,
}

/// What a connection's reader should do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadReady {
    /// Read into [`Shard::read_buffer`].
    Read,
    /// Wait for [`Event::Readable`] (mesh backpressure).
    Paused,
    /// Stop reading for good.
    Stop,
}

/// What happened on a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// This many bytes were read into the last [`Shard::read_buffer`].
    Bytes(usize),
    /// The client closed its side (or the hub shut the read side).
    End,
    /// The socket failed.
    Failed,
}

/// What a connection's writer should do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteReady {
    /// Write from [`Shard::outbound`] and report with [`Shard::handle_written`].
    Write,
    /// Nothing queued: wait for [`Event::Writable`].
    Idle,
    /// The connection is done (drained and closing, or aborted).
    Done,
}

/// A shard's connections and routing state.
pub struct Shard<Io> {
    index: usize,
    shards: usize,
    limits: Limits,
    ids: IdAllocator,
    /// The connection table: every accepted connection, by slot.
    slots: Vec<Slot<Io>>,
    /// Free slots, reused last in, first out.
    free: Vec<u32>,
    /// Welcomed, reachable users owned by this shard, ordered for listing.
    users: BTreeMap<u64, ConnId>,
    events: VecDeque<Event>,
    read_buffer: Box<[u8]>,
    mesh: mesh::MeshState,
    lists: list::Lists,
    timers: timers::Timers,
    shutdown: Option<shutdown::Shutdown>,
    markers: shutdown::Markers,
    sessions: sessions::Sessions,
    /// Connections being handed to another shard: the target and their
    /// bytes, until the driver has their descriptor.
    handoffs: HashMap<ConnId, (usize, Bytes)>,
    adoptions: VecDeque<Adoption>,
    /// Version-2 relays waiting for other shards, by ticket.
    pending_stored: HashMap<u64, routing::PendingStored>,
    next_ticket: u64,
    log: durability::Log,
    /// Bodies being read back from the log.
    reads: readback::Reads,
    /// `(user, seq)` of the local durable receivers of the relay being
    /// routed, for its one `Message` record (reused).
    durable_batch: Vec<(u64, u64)>,
    /// Receivers of the relay being routed here, and how many of them had
    /// stored it already (a retry): `Stored.duplicate` when all had.
    route_handled: u32,
    route_duplicates: u32,
    /// Per-destination receivers of the relay being routed (reused).
    route: Vec<Vec<u64>>,
    stats: Arc<ShardStats>,
}

struct Slot<Io> {
    generation: u32,
    conn: Option<Connection<Io>>,
}

impl<Io> Shard<Io> {
    /// Shard `index` of `shards`.
    pub fn new(index: usize, shards: usize, limits: Limits, stats: Arc<ShardStats>) -> Shard<Io> {
        assert!(index < shards, "shard {index} of {shards}");
        Shard {
            index,
            shards,
            ids: IdAllocator::new(index, shards),
            slots: Vec::new(),
            free: Vec::new(),
            users: BTreeMap::new(),
            events: VecDeque::new(),
            read_buffer: vec![0; SHARD_READ_BYTES].into_boxed_slice(),
            mesh: mesh::MeshState::new(shards),
            lists: list::Lists::default(),
            timers: timers::Timers::default(),
            shutdown: None,
            markers: shutdown::Markers::default(),
            sessions: sessions::Sessions::default(),
            handoffs: HashMap::new(),
            adoptions: VecDeque::new(),
            pending_stored: HashMap::new(),
            next_ticket: 0,
            log: durability::Log::new(limits.log_enabled, limits.log_bytes_max),
            reads: readback::Reads::default(),
            durable_batch: Vec::new(),
            route_handled: 0,
            route_duplicates: 0,
            route: (0..shards).map(|_| Vec::new()).collect(),
            stats,
            limits,
        }
    }

    /// The shard's counters.
    pub fn stats(&self) -> &Arc<ShardStats> {
        &self.stats
    }

    /// The limits this shard enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Welcomed users on this shard.
    pub fn connected(&self) -> usize {
        self.users.len()
    }

    /// Accepted connections not yet closed by [`handle_closed`](Self::handle_closed).
    pub fn connections(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// The next thing the driver must do, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// A connection, if it is still in the table.
    pub fn conn(&self, id: ConnId) -> Option<&Connection<Io>> {
        let slot = self.slots.get(id.slot as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.conn.as_ref()
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Connection<Io>> {
        slot_conn(&mut self.slots, id)
    }

    /// The next user id, reserving (and logging) a block when needed.
    fn allocate_id(&mut self) -> u64 {
        if self.ids.needs_reservation() {
            let next = self.ids.reserve_block();
            self.log(&crate::store::record::Record::IdsReserved { next });
        }
        self.ids.allocate()
    }

    /// Every connection's id (for shutdown and tests).
    fn conn_ids(&self) -> Vec<ConnId> {
        self.slots
            .iter()
            .filter_map(|slot| slot.conn.as_ref().map(|conn| conn.id))
            .collect()
    }

    /// The outbound queue of a connection (the driver writes from it).
    pub fn outbound(&self, id: ConnId) -> Option<&crate::outbound::Outbound> {
        self.conn(id).map(Connection::outbound)
    }

    // ----- accept -------------------------------------------------------

    /// Takes a new connection into the table, or refuses it with
    /// `ServerFull` (the shard is full, or shutting down).
    pub fn handle_accept(&mut self, now_ms: u64, io: Io) -> Result<ConnId, Refusal<Io>> {
        // The client's version is unknown yet: refused in version 1's words.
        self.accept_speaking(now_ms, io, relayhub_protocol::VERSION)
    }

    /// [`handle_accept`](Self::handle_accept), refusing with the preface of
    /// `version`.
    fn accept_speaking(
        &mut self,
        now_ms: u64,
        io: Io,
        version: u16,
    ) -> Result<ConnId, Refusal<Io>> {
        if self.connections() >= self.limits.connections_max || self.shutdown.is_some() {
            self.stats.connections_refused.incr();
            let detail = self.limits.connections_max as u64;
            return Err(Refusal {
                io,
                bytes: refusal_bytes(version, ErrorCodeV2::ServerFull, detail),
            });
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = u32::try_from(self.slots.len()).expect("connections fit in u32");
                self.slots.push(Slot {
                    generation: 0,
                    conn: None,
                });
                slot
            }
        };
        let entry = &mut self.slots[slot as usize];
        let id = ConnId {
            slot,
            generation: entry.generation,
        };
        entry.conn = Some(Connection::new(
            id,
            now_ms,
            self.limits.outbound_bytes_max,
            io,
        ));
        self.stats.connections_open.incr();
        self.rearm(id);
        Ok(id)
    }

    /// Forgets a connection whose reader and writer have both finished, and
    /// hands back the driver's value.
    pub fn handle_closed(&mut self, id: ConnId) -> Option<Io> {
        let slot = self.slots.get_mut(id.slot as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let conn = slot.conn.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.slot);
        if conn.user != 0 && self.users.get(&conn.user) == Some(&id) {
            self.users.remove(&conn.user);
        }
        self.stats.connections_open.decr();
        Some(conn.io)
    }

    // ----- reading ------------------------------------------------------

    /// Whether the reader of `id` should read now. A reader resumed after a
    /// pause first handles the frames it kept, and may pause again.
    pub fn poll_read(&mut self, now_ms: u64, id: ConnId) -> ReadReady {
        let stopping = self.shutdown.is_some();
        let Some(conn) = self.conn_mut(id) else {
            return ReadReady::Stop;
        };
        if stopping || conn.reading_stopped || !conn.takes_input() {
            return ReadReady::Stop;
        }
        if conn.paused_on.is_some() {
            return ReadReady::Paused;
        }
        if conn.decoder.buffered_len() > 0 {
            // Frames kept through a pause: handle them before reading more.
            self.process(now_ms, id);
            return self.poll_read_settled(id);
        }
        ReadReady::Read
    }

    fn poll_read_settled(&self, id: ConnId) -> ReadReady {
        match self.conn(id) {
            Some(conn) if conn.takes_input() && !conn.reading_stopped => {
                if conn.paused_on.is_some() {
                    ReadReady::Paused
                } else {
                    ReadReady::Read
                }
            }
            _ => ReadReady::Stop,
        }
    }

    /// Where the next read of `id` goes: the decoder's own room when a
    /// frame is partly buffered, else the shard's shared buffer. Report it
    /// with [`handle_read`](Self::handle_read) before asking again.
    pub fn read_buffer(&mut self, id: ConnId) -> &mut [u8] {
        let slot = &mut self.slots[id.slot as usize];
        assert_eq!(
            slot.generation, id.generation,
            "read_buffer of a closed connection"
        );
        let conn = slot
            .conn
            .as_mut()
            .expect("read_buffer of a closed connection");
        conn.reading_into_decoder = conn.decoder.buffered_len() > 0;
        if conn.reading_into_decoder {
            conn.decoder.spare()
        } else {
            &mut self.read_buffer
        }
    }

    /// Handles what a read of `id` produced.
    pub fn handle_read(&mut self, now_ms: u64, id: ConnId, read: Read) {
        let stopping = self.shutdown.is_some();
        let Some(conn) = slot_conn(&mut self.slots, id) else {
            return;
        };
        match read {
            Read::Bytes(0) | Read::End | Read::Failed => {
                if stopping || !conn.takes_input() {
                    // Shutdown ended the read side on purpose: the session
                    // stays reachable until its queue is flushed.
                    return;
                }
                if read == Read::Failed {
                    // Nothing more can reach this client: no reply to wait for.
                    self.close(now_ms, id, None);
                } else {
                    // Half-close: everything before the end was handled;
                    // its replies are written as they come, then the
                    // connection closes.
                    self.close_owing(now_ms, id, None, true);
                }
            }
            Read::Bytes(len) => {
                if stopping || !conn.takes_input() || conn.reading_stopped {
                    // Bytes read after the hub stopped reading are not handled.
                    return;
                }
                if conn.reading_into_decoder {
                    conn.decoder.commit(len);
                } else {
                    conn.decoder.handle_bytes(&self.read_buffer[..len]);
                }
                self.stats.bytes_in.add(len as u64);
                self.process(now_ms, id);
            }
        }
    }

    // ----- writing ------------------------------------------------------

    /// Whether the writer of `id` has something to write.
    pub fn poll_write(&mut self, id: ConnId) -> WriteReady {
        let Some(conn) = self.conn_mut(id) else {
            return WriteReady::Done;
        };
        match conn.state {
            ConnState::Aborted | ConnState::HandedOff => WriteReady::Done,
            _ if !conn.outbound.is_empty() => WriteReady::Write,
            ConnState::Closing if !conn.replies_owed => WriteReady::Done,
            // Open, or half-closed with replies still to come.
            _ => {
                conn.outbound.park_writer();
                WriteReady::Idle
            }
        }
    }

    /// Feeds `bytes` to `id` as its reader would, in reads as large as
    /// [`read_buffer`](Self::read_buffer) allows, while the connection
    /// reads: for tests, examples and harnesses that drive the core in
    /// memory. Returns how many bytes it took.
    pub fn feed_read(&mut self, now_ms: u64, id: ConnId, bytes: &[u8]) -> usize {
        let mut offset = 0;
        while offset < bytes.len() && self.poll_read(now_ms, id) == ReadReady::Read {
            let buffer = self.read_buffer(id);
            let len = buffer.len().min(bytes.len() - offset);
            buffer[..len].copy_from_slice(&bytes[offset..offset + len]);
            offset += len;
            self.handle_read(now_ms, id, Read::Bytes(len));
        }
        offset
    }

    /// Everything queued for `id`, taken as a writer whose socket takes
    /// every byte would: for tests, examples and harnesses that drive the
    /// core in memory.
    pub fn take_written(&mut self, id: ConnId) -> Vec<u8> {
        let mut out = Vec::new();
        while self.poll_write(id) == WriteReady::Write {
            let mut slices = Vec::new();
            self.outbound(id)
                .expect("a writer told to write has a queue")
                .slices(&mut slices);
            for slice in &slices {
                out.extend_from_slice(slice);
            }
            let written = slices.iter().map(|slice| slice.len()).sum();
            drop(slices);
            self.handle_written(id, written);
        }
        out
    }

    /// `written` bytes of [`outbound`](Self::outbound) reached the socket.
    pub fn handle_written(&mut self, id: ConnId, written: usize) {
        if let Some(conn) = self.conn_mut(id) {
            conn.outbound.advance(written);
            self.stats.bytes_out.add(written as u64);
        }
    }

    /// The socket refused a write: nothing more can reach this client.
    pub fn handle_write_failed(&mut self, now_ms: u64, id: ConnId) {
        self.close(now_ms, id, None);
        self.abort(id);
    }

    // ----- closing ------------------------------------------------------

    /// Stops handling input from `id`, makes it unreachable, queues the
    /// closing error (after the hub's preface if the client has not had it:
    /// this is the one place that rule lives) and lets the writer flush
    /// until the flush deadline.
    fn close(&mut self, now_ms: u64, id: ConnId, error: Option<(ErrorCodeV2, u64, u64)>) {
        self.close_owing(now_ms, id, error, false);
    }

    /// [`close`](Self::close); with `owing` (a half-close) the outbound
    /// stays open for the replies still owed until
    /// [`settle_replies`](Self::settle_replies) finds them all queued.
    fn close_owing(
        &mut self,
        now_ms: u64,
        id: ConnId,
        error: Option<(ErrorCodeV2, u64, u64)>,
        owing: bool,
    ) {
        let flush_ms = self.limits.close_flush_ms;
        let shutdown_deadline = self.shutdown.as_ref().map(|s| s.deadline_ms);
        // The closes for a client's own protocol error besides those the
        // decoder finds (counted where it finds them).
        let protocol_error = matches!(
            error,
            Some((
                ErrorCodeV2::HelloRequired | ErrorCodeV2::AckOutOfRange,
                _,
                _
            ))
        );
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if !conn.takes_input() {
            return;
        }
        if let Some((code, _, _)) = error {
            assert!(code.closes_connection(), "{code:?} does not close");
            if !conn.greeted {
                let preface = relayhub_protocol::preface_for(conn.version());
                let _ = conn.outbound.push_raw(&preface);
                conn.greeted = true;
            }
        }
        if owing {
            conn.replies_owed = true;
        } else {
            conn.outbound.close(error);
        }
        conn.state = ConnState::Closing;
        conn.paused_on = None;
        conn.flush_deadline_ms = match shutdown_deadline {
            // Closed at the end of the grace period: a short last chance
            // to write its ShuttingDown.
            Some(deadline) if now_ms >= deadline => {
                now_ms.saturating_add(flush_ms.min(GRACE_END_FLUSH_MS))
            }
            Some(deadline) => deadline.min(now_ms.saturating_add(flush_ms)),
            None => now_ms.saturating_add(flush_ms),
        };
        let user = conn.user;
        if user != 0 && self.users.get(&user) == Some(&id) {
            self.users.remove(&user);
        }
        self.detach(now_ms, id, user);
        self.stop_reading(id);
        self.note_pushed(id);
        self.rearm(id);
        if protocol_error {
            self.stats.protocol_errors.incr();
        }
        if owing {
            self.settle_replies(now_ms, id);
        }
    }

    /// A half-closed `id` waits for no other shard any more: once the log
    /// is durable up to what was appended so far (every `Stored` queued
    /// behind it has gone out), its outbound closes. Called at the FIN and
    /// whenever an answer it waited for came.
    pub(super) fn settle_replies(&mut self, now_ms: u64, id: ConnId) {
        let Some(conn) = self.conn(id) else {
            return;
        };
        if conn.replies_owed && conn.relays_pending == 0 && conn.lists_pending == 0 {
            self.after_durable(now_ms, durability::Waiting::RepliesEnd(id));
        }
    }

    /// Every reply a half-closed `id` was owed is queued (or the wait was
    /// cut short): its outbound closes, so the writer drains and ends.
    pub(super) fn end_replies(&mut self, id: ConnId, error: Option<(ErrorCodeV2, u64, u64)>) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if std::mem::take(&mut conn.replies_owed) {
            conn.outbound.close(error);
            self.note_pushed(id);
        }
    }

    // ----- handing connections between shards ----------------------------

    /// The driver duplicated the socket of a connection raised in
    /// [`Event::HandOff`] (`None`: it could not): send it to its owner.
    pub fn handle_handed_off(&mut self, now_ms: u64, id: ConnId, fd: Option<i32>) {
        let Some((target, buffered)) = self.handoffs.remove(&id) else {
            return;
        };
        match fd {
            Some(fd) => self.send_mesh(now_ms, target, MeshMessage::Adopt { fd, buffered }),
            None => {
                // Out of descriptors: the client retries its resume.
                self.stats.fd_refusals.incr();
                if let Some(conn) = self.conn_mut(id) {
                    conn.state = ConnState::AwaitHello;
                    conn.reading_stopped = false;
                }
                self.close(now_ms, id, Some((ErrorCodeV2::ServerFull, 0, 0)));
            }
        }
    }

    /// The next connection another shard handed over.
    pub fn poll_adoption(&mut self) -> Option<Adoption> {
        self.adoptions.pop_front()
    }

    /// Takes over a connection another shard handed over: its preface was
    /// checked there; its `Hello` and what followed are in `buffered`.
    pub fn handle_adopt(
        &mut self,
        now_ms: u64,
        io: Io,
        buffered: &[u8],
    ) -> Result<ConnId, Refusal<Io>> {
        // The client spoke version 2 to the shard that accepted it.
        let id = self.accept_speaking(now_ms, io, relayhub_protocol::VERSION_2)?;
        self.stats.handoffs_in.incr();
        let conn = self.conn_mut(id).expect("just accepted");
        conn.version = relayhub_protocol::VERSION_2;
        conn.state = ConnState::AwaitHello;
        conn.decoder = relayhub_protocol::Decoder::after_preface_version(conn.version);
        conn.decoder.handle_bytes(buffered);
        self.process(now_ms, id);
        Ok(id)
    }

    /// The flush deadline passed (or the socket failed): the driver drops
    /// the connection now.
    fn abort(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.state == ConnState::Aborted {
            return;
        }
        conn.state = ConnState::Aborted;
        self.events.push_back(Event::Abort(id));
    }

    fn stop_reading(&mut self, id: ConnId) {
        if let Some(conn) = self.conn_mut(id) {
            if !conn.reading_stopped {
                conn.reading_stopped = true;
                self.events.push_back(Event::StopReading(id));
            }
        }
    }

    /// After anything was queued on `id`: wake its writer if it waits.
    fn note_pushed(&mut self, id: ConnId) {
        if let Some(conn) = self.conn_mut(id) {
            if conn.outbound.take_wake() {
                self.events.push_back(Event::Writable(id));
            }
        }
    }

    /// Cuts `id` off for exceeding its outbound limit.
    fn cut_slow_consumer(&mut self, now_ms: u64, id: ConnId) {
        let Some(conn) = self.conn(id) else {
            return;
        };
        let bytes_max = conn.outbound.bytes_max() as u64;
        if conn.replies_owed {
            // Half-closed, and a reply it was owed found its queue full.
            self.stats.slow_consumers.incr();
            self.end_replies(id, Some((ErrorCodeV2::SlowConsumer, 0, bytes_max)));
            return;
        }
        if !conn.takes_input() {
            return;
        }
        self.stats.slow_consumers.incr();
        self.close(now_ms, id, Some((ErrorCodeV2::SlowConsumer, 0, bytes_max)));
    }
}

/// The connection in `id`'s slot, if it is still that connection. A free
/// function so that callers can borrow other fields of the shard beside it.
fn slot_conn<Io>(slots: &mut [Slot<Io>], id: ConnId) -> Option<&mut Connection<Io>> {
    let slot = slots.get_mut(id.slot as usize)?;
    if slot.generation != id.generation {
        return None;
    }
    slot.conn.as_mut()
}

/// The hub's preface of `version` and one closing `Error` frame: what a
/// refused connection gets before the hub closes it.
pub fn refusal_bytes(version: u16, code: ErrorCodeV2, detail: u64) -> Bytes {
    let mut bytes = BytesMut::from(&relayhub_protocol::preface_for(version)[..]);
    encode(&ErrorFrame::new_v2(code, 0, detail), &mut bytes).expect("an error frame fits");
    bytes.freeze()
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_readback;
#[cfg(test)]
mod tests_v2;
#[cfg(test)]
mod tests_welcome;
