//! One connection as the shard's core sees it: where it is in its life, its
//! decoder and outbound queue, and the timestamps its timers are computed
//! from. No socket: the driver's per-connection `Io` value rides along.

use relayhub_protocol::{Decoder, HubSideV2};

use crate::outbound::Outbound;

/// A connection's handle inside its shard: a slot index and the slot's
/// generation, so a handle to a closed connection never reaches a newer one
/// that reuses the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

/// Where a connection is in its life. Every input handler of the shard
/// starts by matching it; transitions happen only in `Shard::close`,
/// `Shard::abort` and the welcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Accepted; the client's preface has not fully arrived. Not reachable.
    AwaitPreface,
    /// A version-2 client's preface arrived; its `Hello` has not. Not
    /// reachable.
    AwaitHello,
    /// Welcomed: has a user id and is reachable by relays and lists.
    Open,
    /// No more input is handled; the outbound drains, then the driver
    /// closes the socket. Not reachable.
    Closing,
    /// The flush deadline passed: the driver drops the socket now.
    Aborted,
    /// The socket went to the shard that owns the session it resumes; the
    /// driver drops its copy without shutting the socket down.
    HandedOff,
}

/// What kind of session a welcomed connection carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionKind {
    /// Version 1, or a version-2 ephemeral session: at most once, gone
    /// with the connection.
    Ephemeral,
    /// A version-2 durable session (its state lives in the shard's
    /// session table and outlives the connection).
    Durable,
}

/// Why a connection's input waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pause {
    /// The outbox towards this shard is over its byte budget.
    Mesh(usize),
    /// The connection has `LISTS_PER_CONNECTION_MAX` lists in flight.
    Lists,
    /// The connection has `RELAYS_PENDING_PER_CONNECTION_MAX` version-2
    /// relays waiting for other shards' answers.
    Relays,
    /// Its session's records are not durable yet: its welcome waits.
    Durable,
    /// It resumed a session whose first deliveries are being read back
    /// from the log: the frames sent behind its `Hello` wait until they
    /// are queued (docs/protocol.md, "Acks").
    ReadBack,
}

/// One connection's state in the core.
pub struct Connection<Io> {
    pub(crate) id: ConnId,
    pub(crate) state: ConnState,
    /// The user id once welcomed, 0 before.
    pub(crate) user: u64,
    pub(crate) decoder: Decoder<HubSideV2>,
    /// The protocol version the client's preface announced (0 before it).
    pub(crate) version: u16,
    /// The session kind, once welcomed.
    pub(crate) kind: SessionKind,
    /// Highest `message_id` an ephemeral version-2 sender relayed (a
    /// durable one keeps it in its session).
    pub(crate) message_id_high: u64,
    /// The lowest `message_id` of an ephemeral version-2 sender's relays
    /// that a receiver refused (`u64::MAX`: none).
    pub(crate) message_id_refused: u64,
    /// Version-2 relays of this connection waiting for other shards before
    /// their `Stored` can go out.
    pub(crate) relays_pending: u16,
    pub(crate) outbound: Outbound,
    /// True once the hub's preface is queued: an error for a client that
    /// has not seen it must follow it.
    pub(crate) greeted: bool,
    /// When the last complete frame (or the preface) arrived, or the accept.
    pub(crate) last_frame_ms: u64,
    /// When the first byte of the incomplete frame now buffered arrived.
    pub(crate) frame_started_ms: Option<u64>,
    /// When a closing connection must have flushed (else it is aborted).
    pub(crate) flush_deadline_ms: u64,
    /// The earliest deadline this connection has in the timer heap
    /// (`u64::MAX`: none). See `timers.rs`.
    pub(crate) armed_ms: u64,
    /// Why this connection's input is paused, with the frame that must wait
    /// kept in its decoder.
    pub(crate) paused_on: Option<Pause>,
    /// The mesh target this connection was woken for (its turn): it routes
    /// there while the outbox is within budget, even with others waiting.
    pub(crate) mesh_turn: Option<usize>,
    /// List requests of this connection still gathering answers.
    pub(crate) lists_pending: u8,
    /// Half-closed: the outbound stays open until the replies to what the
    /// client sent before its FIN are queued (`Stored` and errors that wait
    /// for other shards or the log, lists that wait for other shards).
    pub(crate) replies_owed: bool,
    /// The last `read_buffer` handed out the decoder's own spare room (a
    /// frame was partly buffered), not the shard's shared buffer.
    pub(crate) reading_into_decoder: bool,
    /// The driver was told to stop reading (`Event::StopReading`).
    pub(crate) reading_stopped: bool,
    /// Content dedup of an ephemeral receiver (created on first use).
    pub(crate) contents: Option<Box<crate::shard::ContentWindowBox>>,
    /// The driver's own per-connection value (socket, wakers).
    pub io: Io,
}

impl<Io> Connection<Io> {
    pub(crate) fn new(id: ConnId, now_ms: u64, outbound_bytes_max: usize, io: Io) -> Self {
        Connection {
            id,
            state: ConnState::AwaitPreface,
            user: 0,
            decoder: Decoder::new(),
            version: 0,
            kind: SessionKind::Ephemeral,
            message_id_high: 0,
            message_id_refused: u64::MAX,
            relays_pending: 0,
            outbound: Outbound::new(outbound_bytes_max),
            greeted: false,
            last_frame_ms: now_ms,
            frame_started_ms: None,
            flush_deadline_ms: u64::MAX,
            armed_ms: u64::MAX,
            paused_on: None,
            lists_pending: 0,
            replies_owed: false,
            mesh_turn: None,
            reading_into_decoder: false,
            reading_stopped: false,
            contents: None,
            io,
        }
    }

    /// The connection's user id, 0 before its welcome.
    pub fn user(&self) -> u64 {
        self.user
    }

    /// Where the connection is in its life.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// The outbound queue (the driver writes from it).
    pub fn outbound(&self) -> &Outbound {
        &self.outbound
    }

    /// Bytes received and not yet handled (a kept frame, while paused).
    pub(crate) fn decoder_buffered(&self) -> usize {
        self.decoder.buffered_len()
    }

    /// Bytes the decoder holds now (for memory accounting and tests).
    pub fn decoder_capacity(&self) -> usize {
        self.decoder.capacity()
    }

    /// True while frames are still handled (welcomed or awaiting the
    /// preface or `Hello`).
    pub(crate) fn takes_input(&self) -> bool {
        matches!(
            self.state,
            ConnState::AwaitPreface | ConnState::AwaitHello | ConnState::Open
        )
    }

    /// The protocol version the client speaks (1 until its preface says).
    pub fn version(&self) -> u16 {
        self.version.max(1)
    }
}
