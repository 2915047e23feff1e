//! The `hub_session` harness: relayhub-server's IO-free core
//! ([`Shard`]) driven in memory through exactly the calls the glommio driver
//! (server/src/driver.rs) makes, by a fuzz-chosen sequence of client
//! operations. No sockets, no executor, no clock: time is the input's, and
//! only moves forward.
//!
//! What stands in for the driver here is only what the driver does around
//! the core, never a decision of its own:
//!
//! - a connection is one task with a reader side and a writer side (the
//!   driver's `serve`, `read_loop`, `write_loop`): the reader calls
//!   `poll_read`, then `read_buffer` + `handle_read` with whatever the
//!   client's bytes in flight give (in fuzz-chosen read sizes), `Read::End`
//!   after the client's FIN or once the read side is shut, `Read::Failed`
//!   after a reset; the writer calls `poll_write`, `outbound().slices()`,
//!   `handle_written` (partial writes, as much as the client reads) or
//!   `handle_write_failed`; `handle_closed` once the reader has stopped and
//!   the writer is done. A woken task polls both sides, as `zip` does.
//! - each ordered pair of shards has a forwarder (`poll_mesh` in batches of
//!   at most [`MESH_BATCH_MAX`], staged into a ring within the ring's byte
//!   budget) and a consumer (`handle_mesh` in batches, refunding the
//!   budget), run when the input says so, in any order between rings and
//!   FIFO within one;
//! - each shard has a timer: `poll_timeout`, then `handle_timeout(now)` once
//!   the deadline is reached or an [`Event::TimerChanged`] came;
//! - `handle_accept` per connect, `handle_shutdown` per shard in any order;
//! - [`Shard::poll_event`] is drained after every call, and every event is
//!   checked against what the harness knows: `Writable` only for a parked
//!   writer, `Readable` only for a paused reader, `StopReading` once and only
//!   for a closing connection or a shard shutting down, `Abort` only for a
//!   connection that stopped reading and is aborted (and, from a timer, not
//!   before its flush deadline), `MeshOutbox` only for a parked forwarder,
//!   and none for a connection that is not in the table.
//!
//! Each client also reads every byte the hub writes to it with its own
//! `Decoder<ClientSide>`. Checked (see [`Harness::check`], the `read_*`
//! methods and [`Harness::finish`]): every byte decodes (the preface, a
//! welcome or a closing error, then frames; or the HTTP refusal); a closing
//! error is the last frame and comes while the connection is closing; a
//! connection closed by anything but its client's FIN ends with one, a FIN
//! never gets one; queued bytes stay within the outbound limit plus the
//! closing error; the decoder within `DECODER_BYTES_MAX`; the table and the
//! gauges match the connections; refusals are the preface and
//! `Error(ServerFull)`; `IdleTimeout`/`FrameTimeout` never fire before their
//! deadline as the input's times give it, and are never missed after it;
//! flush deadlines and the shutdown grace period likewise. For clients that
//! only ever sent well-formed frames: the hub never calls them malformed;
//! every echo, identity and list gets exactly one correct reply, and only
//! once the hub has handled it; a paused reader resumes and its kept frame
//! is handled exactly once; every relay accounts for each receiver entry (a
//! delivery of the exact body or an error naming it) except in the cases
//! docs/protocol.md allows. At the end every shard shuts down: every
//! connection ends with `ShuttingDown` (or an earlier closing error) after
//! everything queued for it, and every shard `is_finished()`.
//!
//! Clients speak protocol version 1, or version 2 when an `Op::Hello`
//! opens them: new durable and ephemeral sessions, resumes with the latest,
//! an older or a wrong token (on any shard: the hand-off is driven as the
//! driver does it, `handle_handed_off`, `poll_adoption`, `handle_adopt`),
//! takeovers, `RelayV2` with fresh, absent or retried message ids, and
//! cumulative acks, in range or not. The model of durable sessions and its
//! oracle (no loss, no duplicate after client-side dedup, per-pair order,
//! sequence and redelivery rules, typed refusals) are in [`v2`]. Raw bytes
//! may speak version 2 too: those connections get the checks that hold for
//! any connection.

mod v2;

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    io::IoSlice,
    sync::{Arc, OnceLock},
};

use arbitrary::Arbitrary;
use bytes::BytesMut;
use relayhub_protocol::{
    decode_frame, encode, ClientSide, ClientSideV2, Decoder, EchoRef, ErrorCode, ErrorCodeV2,
    HubMessage, HubMessageV2, Identity, List, RelayRef, Welcome, BODY_BYTES_MAX, DECODER_BYTES_MAX,
    HTTP_REFUSAL, LIST_PAGE_USERS_MAX, PREFACE, RECEIVERS_MAX, VERSION_2,
};
use relayhub_server::{
    config,
    conn::{ConnId, ConnState},
    ids::owner,
    shard::{
        Event, Limits, MeshMessage, Read, ReadReady, Shard, WriteReady, GRACE_END_FLUSH_MS,
        SHARD_READ_BYTES,
    },
    stats::ShardStats,
    store::recovery::scan,
    Config,
};

/// Most clients one input connects (more `Connect`s and `Hello`s are
/// ignored; the final drain of durable sessions may open more).
pub const CLIENTS_MAX: usize = 16;

/// Most operations one input runs.
pub const OPS_MAX: usize = 192;

/// Most shards.
pub const SHARDS_MAX: usize = 3;

/// Messages a forwarder or consumer moves per batch at most: the driver's
/// `MESH_BATCH_MAX` (its module is private).
pub const MESH_BATCH_MAX: usize = 256;

/// Most reads one transmission is cut into: a 1 MiB frame is not read
/// bytewise.
pub const READS_PER_SEND_MAX: usize = 256;

/// Most body bytes one input generates beyond the bytes it spells out.
pub const GENERATED_BYTES_MAX: usize = 6 << 20;

/// Bounds on loops that must settle; past them the harness reports a hang.
const TIMER_ROUNDS_MAX: usize = 64;
const SETTLE_ROUNDS_MAX: usize = 100_000;

/// With `RELAYHUB_FUZZ_TRACE` set, the harness prints every operation,
/// core call and event to stderr (for triage: `hub_tally` on one input).
fn tracing() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("RELAYHUB_FUZZ_TRACE").is_some())
}

macro_rules! trace {
    ($($arg:tt)*) => {
        if tracing() {
            eprintln!($($arg)*);
        }
    };
}

thread_local! {
    static TALLY: RefCell<BTreeMap<&'static str, u64>> = const { RefCell::new(BTreeMap::new()) };
}

/// Counts one exercised check (see [`take_tally`]).
fn tally(what: &'static str) {
    TALLY.with(|tally| *tally.borrow_mut().entry(what).or_default() += 1);
}

/// Adds `count` to a tally.
fn tally_add(what: &'static str, count: u64) {
    if count > 0 {
        TALLY.with(|tally| *tally.borrow_mut().entry(what).or_default() += count);
    }
}

/// How often each property was actually checked since the last call: the
/// `hub_tally` tool runs a corpus and prints this, to show the properties
/// are reached and not vacuous.
pub fn take_tally() -> BTreeMap<&'static str, u64> {
    TALLY.with(|tally| std::mem::take(&mut *tally.borrow_mut()))
}

/// Length of an encoded `Error` frame: what `Outbound::close` may queue
/// past the limit.
fn error_frame_len() -> usize {
    let mut out = BytesMut::new();
    encode(
        &relayhub_protocol::Error::new(ErrorCode::Malformed, 0, 0),
        &mut out,
    )
    .expect("fits")
}

/// The hub's limits for this input: a few presets, each one a
/// configuration the hub accepts (`Config::validate`).
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// Two connections per shard (refusals), the smallest outbound limit
    /// and mesh budget (slow consumers, paused senders), short timeouts.
    Small,
    /// Six connections, the smallest limits, longer timeouts.
    Tight,
    /// Ten connections and the hub's defaults otherwise.
    Roomy,
    /// Four connections, the smallest limits, no idle or frame timeout.
    Untimed,
    /// Six connections, small inboxes, and the log on (`--storage disk`)
    /// with the smallest disk budget: records are written to in-memory
    /// files, offline bodies read back from them, and compactions copy
    /// records forward (the driver's writer and reader run whenever the
    /// core has work for them).
    Disk,
    /// `Disk` where every compaction fails once (the disk refuses the
    /// snapshot) before its retry succeeds.
    DiskFlaky,
    /// `Disk` where, after the last operation, the hub is killed (what it
    /// wrote is on the disk; no connection, mesh message or timer
    /// survives) and started again on its files, every shard recovered by
    /// the core as the driver's start-up does; then the final drain
    /// resumes every durable session with the latest token its clients
    /// read, and the no-loss check runs on what the restarted hub delivers.
    DiskCrash,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Preset; 7] = [
        Preset::Small,
        Preset::Tight,
        Preset::Roomy,
        Preset::Untimed,
        Preset::Disk,
        Preset::DiskFlaky,
        Preset::DiskCrash,
    ];

    fn config(self) -> Config {
        let mut config = Config::for_tests(1);
        // Durable sessions: small inboxes and windows, short expiries and
        // the dedup windows on and off, so that InboxFull, expiry, entry
        // lifetimes, unrecognised retries and DuplicateContent happen.
        match self {
            Preset::Small => {
                config.inbox_messages_max = 4;
                config.inflight_messages_max = 2;
                config.session_expiry_ms = 3_000;
                config.sessions_per_shard_max = 2;
            }
            Preset::Tight => {
                config.inbox_messages_max = 12;
                config.inflight_messages_max = 3;
                config.content_dedup_window_ms = 2_000;
            }
            Preset::Untimed => {
                config.inflight_messages_max = 1;
                config.message_ttl_ms = 5_000;
                config.dedup_window_ms = 0;
            }
            Preset::Disk | Preset::DiskFlaky | Preset::DiskCrash => {
                config.inbox_messages_max = 12;
                config.inflight_messages_max = 3;
                config.storage = relayhub_server::config::Storage::Disk;
                config.disk_bytes_max = config::DISK_BYTES_MIN;
            }
            Preset::Roomy => {}
        }
        let (connections, idle, frame, flush) = match self {
            Preset::Small => (2, 1_000, 250, 100),
            Preset::Tight | Preset::Disk | Preset::DiskFlaky | Preset::DiskCrash => {
                (6, 5_000, 1_000, 500)
            }
            Preset::Untimed => (4, 0, 0, 50),
            Preset::Roomy => {
                config.connections_per_shard_max = 10;
                return config;
            }
        };
        config.connections_per_shard_max = connections;
        config.outbound_bytes_max = config::OUTBOUND_BYTES_MIN;
        config.mesh_bytes_max = config::MESH_BYTES_MIN;
        config.idle_timeout_ms = idle;
        config.frame_timeout_ms = frame;
        config.close_flush_ms = flush;
        config
    }

    /// The limits of this preset for one of `shards` shards, from a
    /// validated `Config` (built once per process: clap parsing is slow).
    pub fn limits(self, shards: usize) -> Limits {
        static LIMITS: OnceLock<Vec<Vec<Limits>>> = OnceLock::new();
        let all = LIMITS.get_or_init(|| {
            Preset::ALL
                .iter()
                .map(|preset| {
                    let config = preset.config();
                    if let Err(error) = config.validate() {
                        panic!("preset {preset:?} is not a valid hub configuration: {error}");
                    }
                    (1..=SHARDS_MAX)
                        .map(|shards| Limits::from_config(&config, shards))
                        .collect()
                })
                .collect()
        });
        let index = Preset::ALL.iter().position(|&p| p == self).expect("listed");
        all[index][shards - 1].clone()
    }
}

/// A body: the given bytes (at most 4 KiB), or rarely a generated one of
/// 16 KiB, 64 KiB, 256 KiB, `BODY_BYTES_MAX` or one byte more.
#[derive(Arbitrary, Clone, Debug)]
pub struct Body {
    /// 0xA2: 16 KiB; 0xA3: 64 KiB; 0xA4: 256 KiB; 0xA5: `BODY_BYTES_MAX`;
    /// 0xA6: one more (refused); anything else: `bytes`.
    pub size: u8,
    /// The body (truncated to 4 KiB).
    pub bytes: Vec<u8>,
}

/// A user id as the input names it.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Target {
    /// The user id of a client (0 before its welcome).
    Client(u8),
    /// Any id.
    Id(u64),
}

/// A well-formed request a client sends.
#[derive(Arbitrary, Clone, Debug)]
pub enum Request {
    /// Echo a body.
    Echo {
        /// The body.
        body: Body,
    },
    /// Who am I?
    Identity,
    /// List users after an id.
    List {
        /// Ids above this one.
        after: Target,
        /// Page size (0: the maximum).
        limit: u32,
    },
    /// Relay a body to some users.
    Relay {
        /// The receivers (at most `RECEIVERS_MAX + 45` used).
        receivers: Vec<Target>,
        /// The body.
        body: Body,
    },
    /// Relay a body to one user named `count` times (255 and 256 are the
    /// edges).
    RelayRepeated {
        /// The receiver.
        receiver: Target,
        /// How many times (taken modulo 300).
        count: u16,
        /// The body.
        body: Body,
    },
}

/// How a client's new bytes travel.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub struct Wire {
    /// The hub's reads of them: this many bytes each, 0 for 64 KiB (and
    /// at least 1/256 of what is in flight).
    pub read: u16,
    /// With the top bit set, the client holds back the last
    /// `(hold & 0x7fff) % (len + 1)` bytes of what it has not sent yet.
    pub hold: u16,
}

/// One step of the input.
#[derive(Arbitrary, Clone, Debug)]
pub enum Op {
    /// A client connects to a shard (`handle_accept`).
    Connect {
        /// The shard (modulo the shard count).
        shard: u8,
    },
    /// A client sends the preface.
    Preface {
        /// The client (modulo the client count).
        client: u8,
        /// How the bytes travel.
        wire: Wire,
    },
    /// A client sends one well-formed request.
    Request {
        /// The client.
        client: u8,
        /// The request.
        request: Request,
        /// How the bytes travel.
        wire: Wire,
    },
    /// A client sends an HTTP request (random bytes hardly ever spell one).
    Http {
        /// The client.
        client: u8,
        /// How the bytes travel.
        wire: Wire,
    },
    /// A client sends raw bytes (garbage, partial frames, anything).
    Raw {
        /// The client.
        client: u8,
        /// The bytes.
        bytes: Vec<u8>,
        /// How the bytes travel.
        wire: Wire,
    },
    /// A client sends what it held back.
    Transmit {
        /// The client.
        client: u8,
        /// The hub's read size (as in [`Wire::read`]).
        read: u16,
    },
    /// A client reads up to `bytes * 32` bytes (0: everything), which the
    /// hub writes in writes of at most `write²` bytes (0: no limit).
    Drain {
        /// The client.
        client: u8,
        /// Bytes the client reads now, in units of 32.
        bytes: u16,
        /// Largest write, squared.
        write: u8,
    },
    /// A forwarder runs once: it stages what it holds into its ring, or
    /// takes a batch of up to `1 + max` messages from its outbox.
    Forward {
        /// The ring (an ordered pair of shards, modulo their number).
        link: u8,
        /// Batch size, less one.
        max: u8,
    },
    /// A consumer handles up to `1 + max` messages from its ring.
    Consume {
        /// The ring.
        link: u8,
        /// Batch size, less one.
        max: u8,
    },
    /// A client half-closes after what it holds back: the hub reads the end.
    Eof {
        /// The client.
        client: u8,
    },
    /// A client's connection is reset: bytes in flight either way are lost,
    /// the reader fails, the next write fails.
    Reset {
        /// The client.
        client: u8,
        /// The writer sees it before the reader.
        writer_first: bool,
    },
    /// Time passes: `ms` (or `ms * 100` when `coarse`) milliseconds.
    Advance {
        /// Milliseconds, modulo 4096 when fine.
        ms: u16,
        /// Steps of 100 ms, up to 109 minutes.
        coarse: bool,
    },
    /// Time moves to a shard's next deadline plus `offset` ms (if later).
    ToDeadline {
        /// The shard.
        shard: u8,
        /// -128 ..= 127 ms around it.
        offset: i8,
    },
    /// A shard starts its graceful shutdown, with `grace` ms of grace.
    Shutdown {
        /// The shard.
        shard: u8,
        /// The grace period in ms.
        grace: u16,
    },
    /// A new client connects to a shard and sends the version-2 preface
    /// and a `Hello` (a new session, or a resume).
    Hello {
        /// The shard (modulo the shard count).
        shard: u8,
        /// What the `Hello` asks for.
        hello: HelloKind,
        /// How the bytes travel.
        wire: Wire,
    },
    /// A client sends a `RelayV2` (a version-1 client sends it too, and
    /// is refused).
    RelayV2 {
        /// The client.
        client: u8,
        /// The receivers (at most `RECEIVERS_MAX + 45` used); ignored for
        /// a retry, which resends its message as it was.
        receivers: Vec<Target>,
        /// The body; ignored for a retry.
        body: Body,
        /// The message id.
        id: MessageIdChoice,
        /// Ask for receipts (only with a message id).
        receipt: bool,
        /// How the bytes travel.
        wire: Wire,
    },
    /// A client sends an `Ack`.
    Ack {
        /// The client.
        client: u8,
        /// What it acks.
        upto: AckUpto,
        /// How the bytes travel.
        wire: Wire,
    },
}

/// What an `Op::Hello` asks for.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum HelloKind {
    /// A new session.
    New {
        /// Durable (else ephemeral).
        durable: bool,
    },
    /// Resume a durable session the clients know (any user id if none).
    Resume {
        /// The session (modulo the sessions known).
        session: u8,
        /// The token presented.
        token: TokenChoice,
    },
}

/// Which token a resume presents.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum TokenChoice {
    /// The one of the latest `WelcomeV2` read.
    Latest,
    /// The one before it.
    Previous,
    /// The first one.
    Oldest,
    /// The latest with a bit flipped.
    Wrong,
}

/// The `message_id` of a `RelayV2`.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum MessageIdChoice {
    /// A fresh one, above every id before.
    Next,
    /// 0: none.
    None,
    /// A retry of the sender's `back`-th latest message with an id (same
    /// id, receivers and body).
    Retry(u8),
}

/// The `upto` of an `Ack`.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum AckUpto {
    /// The highest sequence the session has read.
    Highest,
    /// That less `n` (stale, maybe 0).
    Behind(u8),
    /// That plus `1 + n`: never read, maybe never sent (`AckOutOfRange`).
    Beyond(u8),
}

/// One `hub_session` input.
#[derive(Arbitrary, Clone, Debug)]
pub struct SessionInput {
    /// 1 + this modulo 3 shards (two or three exercise the mesh).
    pub shards: u8,
    /// The hub's limits.
    pub preset: Preset,
    /// The operations, in order (at most [`OPS_MAX`]).
    pub ops: Vec<Op>,
    /// The shard that starts the final shutdown (modulo the shard count);
    /// the others follow in index order.
    pub finish_first: u8,
}

/// What a clean client waits for.
#[derive(Debug)]
enum Expect {
    Echo(Vec<u8>),
    Identity,
    List {
        after: u64,
        limit: usize,
        /// The membership epoch when sent: the exact page is known only if
        /// nobody came or left until the reply was read.
        epoch: u64,
    },
    /// A request over a limit: the decoder answers this non-closing error.
    Refused(ErrorCode),
}

/// A request a clean client sent, and whether the hub has handled it.
#[derive(Debug)]
struct Pending {
    expect: Expect,
    handled: bool,
}

/// A relay sent by a clean client, and what became of each receiver.
#[derive(Debug)]
struct RelayRecord {
    sender: usize,
    body: Vec<u8>,
    /// Receiver id -> entries naming it.
    expected: BTreeMap<u64, usize>,
    /// Receiver id -> deliveries read plus errors about it read.
    got: BTreeMap<u64, usize>,
    /// Refused by the decoder (over a limit): never routed.
    refused: bool,
    /// The hub has handled the frame.
    handled: bool,
}

/// What the hub's bytes to a client turned out to be.
#[derive(Debug, PartialEq, Eq)]
enum Stream {
    /// Nothing yet.
    Unknown,
    /// Relayhub frames.
    Frames,
    /// The HTTP refusal.
    Http,
}

/// The connection task's reader side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reader {
    /// Will call `poll_read`.
    Ready,
    /// `poll_read` said `Read`: waits for bytes, the end, or a failure.
    Socket,
    /// `poll_read` said `Paused`: waits for `Readable` (or a task poll).
    Paused,
    /// Finished.
    Stopped,
}

/// The connection task's writer side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Writer {
    /// Will call `poll_write`.
    Ready,
    /// `poll_write` said `Idle`: waits for `Writable` (or a task poll).
    Parked,
    /// Has bytes to write; the client reads none now.
    Blocked,
    /// Finished.
    Done,
}

/// Which core call is running, for the event checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Accept,
    Reader(usize),
    /// `handle_read(End | Failed)` of this client.
    ReadEnd(usize),
    Writer(usize),
    WriteFailed(usize),
    Closed,
    PollMesh,
    Mesh,
    Timeout,
    PollTimeout,
    Shutdown,
    HandOff,
}

/// One shard's log files, in memory (`Preset::Disk`).
#[derive(Default)]
struct Files {
    by_generation: HashMap<u32, Vec<u8>>,
    generation: u32,
    /// `Preset::DiskFlaky`: the next snapshot is refused.
    refuse_snapshot: bool,
}

impl Files {
    /// What the driver's `DiskLog::write` does with a batch.
    fn write(&mut self, batch: &relayhub_server::shard::LogBatch) {
        if !batch.new_generation {
            let file = self.by_generation.entry(self.generation).or_default();
            file.extend_from_slice(&batch.bytes);
            return;
        }
        let current = self.by_generation.get(&self.generation);
        let mut fresh = Vec::new();
        let mut done = 0;
        for &(at, pos) in &batch.copies {
            fresh.extend_from_slice(&batch.bytes[done..at]);
            done = at;
            let file = current.expect("a copy from the current file");
            let start = usize::try_from(pos.offset).expect("fits");
            let end = start + pos.len.get() as usize;
            assert!(
                end <= file.len(),
                "a copy past the end of the file: {pos:?}"
            );
            fresh.extend_from_slice(&file[start..end]);
        }
        fresh.extend_from_slice(&batch.bytes[done..]);
        assert_eq!(fresh.len() as u64, batch.len(), "the snapshot's length");
        self.generation += 1;
        self.by_generation.insert(self.generation, fresh);
    }

    /// A restart: `shard` recovers from the current generation, as the
    /// driver's start-up does (`DiskLog::open`, then `finish_recovery`).
    fn recover(&self, now: u64, shard: &mut Shard<usize>) {
        let generation = self.generation;
        let empty = Vec::new();
        let file = self.by_generation.get(&generation).unwrap_or(&empty);
        shard.begin_recovery(u64::from(generation));
        let scanned = scan(file, |record, offset, len| {
            let pos = relayhub_server::shard::LogPos {
                generation,
                len: relayhub_server::shard::record_len(len),
                offset,
            };
            shard.recover(now, record, pos);
        })
        .unwrap_or_else(|corruption| panic!("what the hub wrote is corrupt: {corruption:?}"));
        assert_eq!(
            scanned.valid_bytes,
            file.len() as u64,
            "every byte the hub wrote recovers"
        );
        assert!(
            generation == 0 || scanned.snapshot_complete,
            "generation {generation} is the log, and its snapshot is incomplete"
        );
        shard.finish_recovery(now, scanned.valid_bytes, scanned.valid_bytes);
        tally_add("restarts: records recovered", scanned.records);
    }

    /// The record at `pos`, as `LogFiles::read` returns it.
    fn read(&self, pos: relayhub_server::shard::LogPos) -> &[u8] {
        let file = self
            .by_generation
            .get(&pos.generation)
            .unwrap_or_else(|| panic!("a read from a generation that is gone: {pos:?}"));
        let start = usize::try_from(pos.offset).expect("fits");
        let end = start + pos.len.get() as usize;
        assert!(
            end <= file.len(),
            "a read past the end of the file: {pos:?}"
        );
        &file[start..end]
    }
}

/// What the client knew when its connection started closing.
#[derive(Clone, Copy, Debug)]
struct Closing {
    at_ms: u64,
    call: Call,
    /// When a frame last completed (the idle deadline's base).
    completed_ms: u64,
    /// When the first byte of the frame in progress was read (clean
    /// clients), if a frame was in progress.
    partial_since_ms: Option<u64>,
    /// The shard's shutdown deadline then, if it was shutting down.
    shutdown_deadline_ms: Option<u64>,
}

/// One client: its connection's task, its socket and its own view.
struct Client {
    shard: usize,
    id: ConnId,
    /// The user id once the hub welcomed it (from the core), else 0.
    user: u64,
    reader: Reader,
    writer: Writer,
    woken: bool,
    /// `handle_closed` was called.
    closed: bool,
    writer_first: bool,
    // --- The socket.
    /// Bytes the client holds back.
    unsent: Vec<u8>,
    /// Bytes in flight to the hub.
    inbox: VecDeque<u8>,
    /// Bytes the hub has read.
    hub_read: usize,
    read_size: usize,
    read_floor: usize,
    /// The client half-closed (after its bytes in flight).
    fin: bool,
    /// The hub shut the read side (`StopReading`, `Abort`, or the writer's
    /// end): a pending read returns the end.
    read_shut: bool,
    reset: bool,
    aborted: bool,
    /// Bytes the client reads now.
    room: usize,
    write_cap: usize,
    // --- What the hub did.
    stopped_reading: bool,
    closing: Option<Closing>,
    last_completed_ms: u64,
    last_reader_call_ms: u64,
    /// Frames the hub handled, counted from the shard's counters.
    handled: usize,
    was_paused: bool,
    // --- The client's own view.
    /// Sent only the preface, then harness-built frames.
    clean: bool,
    preface_sent: bool,
    /// Bytes the client has queued in all (its stream offset).
    queued: usize,
    /// Clean clients: each preface or frame's `(start, end)` in the stream,
    /// and when the hub read its first byte.
    segments: Vec<(usize, usize)>,
    first_read_ms: Vec<Option<u64>>,
    /// Clean clients: the request id of each frame after the preface.
    requests: Vec<u64>,
    stream: Stream,
    http_bytes: Vec<u8>,
    /// Either version: a client that spoke version 2 (raw bytes) gets it.
    view: Decoder<ClientSideV2>,
    welcomed: bool,
    /// A closing error was read: nothing may follow it.
    closing_error: Option<ErrorCode>,
    /// A closing error version 2 added was read (raw clients only).
    closing_error_v2: Option<ErrorCodeV2>,
    /// The hub handed its connection to another shard (version 2).
    handed_off: bool,
    /// `Event::HandOff` came: `handle_handed_off` is due.
    hand_off_due: Option<ConnId>,
    /// The shard it was handed to refused it (full).
    adoption_refused: bool,
    pending: HashMap<u64, Pending>,
    /// A version-2 client (its first bytes were an `Op::Hello`): what the
    /// model knows of its connection.
    v2: Option<Box<v2::Conn>>,
    /// The core call running welcomed it (version 2).
    welcomed_now: bool,
    /// Handed off and not adopted yet: its socket lives on (its bytes wait
    /// for the shard that adopts it).
    in_hand_off: bool,
    /// The hub was killed while it was connected (`Preset::DiskCrash`).
    crashed: bool,
}

impl Client {
    /// A client that sent only well-formed version-1 frames.
    fn v1_clean(&self) -> bool {
        self.clean && self.v2.is_none()
    }

    /// A version-2 client that sent only well-formed frames: the model
    /// follows it.
    fn v2_clean(&self) -> bool {
        self.clean && self.v2.is_some()
    }

    fn got_closing_error(&self) -> bool {
        self.closing_error.is_some() || self.closing_error_v2.is_some()
    }

    /// Bytes the hub queued for it may never have reached it.
    fn lost(&self) -> bool {
        self.reset || self.aborted || self.crashed
    }

    /// The clean client's frame (or preface) the hub has read part of, as
    /// an index into `segments`.
    fn partial_segment(&self) -> Option<usize> {
        let index = self
            .segments
            .partition_point(|&(_, end)| end <= self.hub_read);
        let &(start, _) = self.segments.get(index)?;
        (start < self.hub_read).then_some(index)
    }
}

/// One ring between two shards, with its forwarder and consumer.
struct Link {
    from: usize,
    to: usize,
    /// The forwarder's batch not yet staged (it waits for budget).
    held: VecDeque<MeshMessage>,
    ring: VecDeque<MeshMessage>,
    /// Weight staged and not yet refunded.
    ring_bytes: usize,
    /// `poll_mesh` gave nothing: the forwarder waits for `MeshOutbox`.
    parked: bool,
    woken: bool,
}

/// A shard's timer task.
#[derive(Default)]
struct Timer {
    /// What `poll_timeout` said last.
    sleeping: Option<u64>,
    changed: bool,
}

/// The shard's counters that tell what a reader call did.
#[derive(Clone, Copy)]
struct Counts {
    frames_in: u64,
    limit_errors: u64,
    pauses: u64,
    accepted: u64,
    resumed: u64,
    rejected: u64,
    takeovers: u64,
}

impl Counts {
    fn of(stats: &ShardStats) -> Counts {
        Counts {
            frames_in: stats.frames_in.get(),
            limit_errors: stats.limit_errors.get(),
            pauses: stats.backpressure_waits.get(),
            accepted: stats.connections_accepted.get(),
            resumed: stats.sessions_resumed.get(),
            rejected: stats.resumes_rejected.get(),
            takeovers: stats.takeovers.get(),
        }
    }
}

/// The hub in memory and every client.
pub struct Harness {
    limits: Limits,
    shards: Vec<Shard<usize>>,
    stats: Vec<Arc<ShardStats>>,
    now: u64,
    clients: Vec<Client>,
    links: Vec<Link>,
    timers: Vec<Timer>,
    /// Each shard's shutdown deadline, once it got `handle_shutdown`.
    shutdown: Vec<Option<u64>>,
    /// Time passed a shutdown deadline: the grace period may have cut the
    /// phases short.
    rushed: bool,
    /// The finish: every client reads everything.
    reading_all: bool,
    relays: HashMap<u64, RelayRecord>,
    next_request: u64,
    generated: usize,
    epoch: u64,
    membership: Vec<u64>,
    error_frame_len: usize,
    ids: HashSet<(usize, ConnId)>,
    call: Call,
    /// `Event::Adopt` came: `poll_adoption` is due.
    adopt_due: Vec<bool>,
    /// Version 2: sessions, messages and relay attempts (see [`v2`]).
    model: v2::Model,
    /// Each shard's log files (`Preset::Disk`, `Preset::DiskFlaky`).
    files: Vec<Files>,
    /// `Preset::DiskFlaky`: every snapshot fails once.
    flaky_snapshots: bool,
    /// `Preset::DiskCrash`: the hub is killed and restarted before the
    /// final drain.
    crash_at_end: bool,
}

/// Read size of a transmission: `read` bytes, 0 for `SHARD_READ_BYTES`.
pub fn read_size(read: u16) -> usize {
    match read {
        0 => SHARD_READ_BYTES,
        read => usize::from(read),
    }
}

impl Harness {
    /// A hub with the input's shards and limits, and no clients.
    pub fn new(input: &SessionInput) -> Harness {
        let count = usize::from(input.shards) % SHARDS_MAX + 1;
        let limits = input.preset.limits(count);
        let stats: Vec<Arc<ShardStats>> = (0..count).map(|_| Arc::default()).collect();
        let shards = (0..count)
            .map(|index| Shard::new(index, count, limits.clone(), stats[index].clone()))
            .collect();
        let links = (0..count)
            .flat_map(|from| (0..count).map(move |to| (from, to)))
            .filter(|(from, to)| from != to)
            .map(|(from, to)| Link {
                from,
                to,
                held: VecDeque::new(),
                ring: VecDeque::new(),
                ring_bytes: 0,
                parked: false,
                woken: false,
            })
            .collect();
        let mut harness = Harness {
            limits,
            shards,
            stats,
            now: 0,
            clients: Vec::new(),
            links,
            timers: (0..count).map(|_| Timer::default()).collect(),
            shutdown: vec![None; count],
            rushed: false,
            reading_all: false,
            relays: HashMap::new(),
            next_request: 1,
            generated: 0,
            epoch: 0,
            membership: Vec::new(),
            error_frame_len: error_frame_len(),
            ids: HashSet::new(),
            call: Call::PollTimeout,
            adopt_due: vec![false; count],
            model: v2::Model::default(),
            files: (0..count)
                .map(|_| Files {
                    refuse_snapshot: input.preset == Preset::DiskFlaky,
                    ..Files::default()
                })
                .collect(),
            flaky_snapshots: input.preset == Preset::DiskFlaky,
            crash_at_end: input.preset == Preset::DiskCrash,
        };
        // Each shard's timer task starts by asking for its deadline.
        for shard in 0..count {
            harness.poll_timeout(shard);
        }
        harness
    }

    /// Runs the whole input, checking after every step and at the end.
    pub fn run(input: &SessionInput) {
        let mut harness = Harness::new(input);
        for op in input.ops.iter().take(OPS_MAX) {
            harness.step(op);
            harness.settle();
            harness.check();
        }
        harness.finish(usize::from(input.finish_first));
    }

    fn client_index(&self, client: u8) -> Option<usize> {
        (!self.clients.is_empty()).then(|| usize::from(client) % self.clients.len())
    }

    fn link_index(&self, link: u8) -> Option<usize> {
        (!self.links.is_empty()).then(|| usize::from(link) % self.links.len())
    }

    /// Applies one operation.
    pub fn step(&mut self, op: &Op) {
        trace!("[{}] {op:?}", self.now);
        let shards = self.shards.len();
        match op {
            Op::Connect { shard } => self.connect(usize::from(*shard) % shards),
            Op::Preface { client, wire } => {
                if let Some(c) = self.client_index(*client) {
                    let client = &mut self.clients[c];
                    if client.preface_sent {
                        client.clean = false;
                    }
                    client.preface_sent = true;
                    self.queue(c, &PREFACE, true);
                    self.transmit(c, *wire);
                }
            }
            Op::Request {
                client,
                request,
                wire,
            } => {
                if let Some(c) = self.client_index(*client) {
                    let bytes = self.request(c, request);
                    self.queue(c, &bytes, true);
                    self.transmit(c, *wire);
                }
            }
            Op::Http { client, wire } => {
                if let Some(c) = self.client_index(*client) {
                    self.clients[c].clean = false;
                    let request = b"GET /relay HTTP/1.1\r\nHost: relayhub\r\n\r\n";
                    self.queue(c, request, false);
                    self.transmit(c, *wire);
                }
            }
            Op::Raw {
                client,
                bytes,
                wire,
            } => {
                if let Some(c) = self.client_index(*client) {
                    if !bytes.is_empty() {
                        self.clients[c].clean = false;
                    }
                    self.queue(c, bytes, false);
                    self.transmit(c, *wire);
                }
            }
            Op::Transmit { client, read } => {
                if let Some(c) = self.client_index(*client) {
                    self.transmit(
                        c,
                        Wire {
                            read: *read,
                            hold: 0,
                        },
                    );
                }
            }
            Op::Drain {
                client,
                bytes,
                write,
            } => {
                if let Some(c) = self.client_index(*client) {
                    let client = &mut self.clients[c];
                    client.room = match *bytes {
                        0 => usize::MAX,
                        units => usize::from(units) * 32,
                    };
                    client.write_cap = match *write {
                        0 => usize::MAX,
                        write => usize::from(write) * usize::from(write),
                    };
                    self.settle();
                    let client = &mut self.clients[c];
                    client.room = 0;
                }
            }
            Op::Forward { link, max } => {
                if let Some(l) = self.link_index(*link) {
                    self.forward(l, usize::from(*max) + 1);
                }
            }
            Op::Consume { link, max } => {
                if let Some(l) = self.link_index(*link) {
                    self.consume(l, usize::from(*max) + 1);
                }
            }
            Op::Eof { client } => {
                if let Some(c) = self.client_index(*client) {
                    self.transmit(c, Wire { read: 0, hold: 0 });
                    let client = &mut self.clients[c];
                    if !client.reset {
                        client.fin = true;
                    }
                }
            }
            Op::Reset {
                client,
                writer_first,
            } => {
                if let Some(c) = self.client_index(*client) {
                    let client = &mut self.clients[c];
                    if !client.closed && !client.reset {
                        client.reset = true;
                        client.writer_first = *writer_first;
                        client.unsent.clear();
                        client.inbox.clear();
                        client.woken = true;
                        tally("resets");
                    }
                }
            }
            Op::Advance { ms, coarse } => {
                let ms = if *coarse {
                    u64::from(*ms) * 100
                } else {
                    u64::from(*ms) % 4096
                };
                self.advance_to(self.now + ms);
            }
            Op::ToDeadline { shard, offset } => {
                let shard = usize::from(*shard) % shards;
                if let Some(deadline) = self.timers[shard].sleeping {
                    let to = deadline.saturating_add_signed(i64::from(*offset));
                    tally("time moved to a deadline");
                    self.advance_to(to.max(self.now));
                }
            }
            Op::Shutdown { shard, grace } => {
                let shard = usize::from(*shard) % shards;
                self.shut_down(shard, self.now + u64::from(*grace));
            }
            Op::Hello { shard, hello, wire } => {
                if self.clients.len() < CLIENTS_MAX {
                    self.hello(usize::from(*shard) % shards, *hello, *wire);
                }
            }
            Op::RelayV2 {
                client,
                receivers,
                body,
                id,
                receipt,
                wire,
            } => {
                if let Some(c) = self.client_index(*client) {
                    let bytes = self.relay_v2(c, receivers, body, *id, *receipt);
                    self.queue(c, &bytes, true);
                    self.transmit(c, *wire);
                }
            }
            Op::Ack { client, upto, wire } => {
                if let Some(c) = self.client_index(*client) {
                    let bytes = self.ack(c, *upto);
                    self.queue(c, &bytes, true);
                    self.transmit(c, *wire);
                }
            }
        }
    }

    fn advance_to(&mut self, now: u64) {
        assert!(now >= self.now, "time goes forward");
        self.now = now;
        if self
            .shutdown
            .iter()
            .flatten()
            .any(|&deadline| deadline <= now)
        {
            self.rushed = true;
        }
    }

    fn shut_down(&mut self, shard: usize, deadline: u64) {
        if self.shutdown[shard].is_some() {
            return;
        }
        self.shutdown[shard] = Some(deadline);
        if deadline <= self.now {
            self.rushed = true;
        }
        self.call = Call::Shutdown;
        let now = self.now;
        self.shards[shard].handle_shutdown(now, deadline);
        self.after_call(shard);
        tally("shutdowns started");
    }

    // ----- core calls -----------------------------------------------------

    /// Drains the shard's events and notes what the call changed.
    fn after_call(&mut self, shard: usize) {
        self.drain_events(shard);
        // What the driver does right away for some events (its
        // `dispatch`): hand a connection over, adopt one.
        loop {
            if let Some(c) = self.clients.iter().position(|c| c.hand_off_due.is_some()) {
                let id = self.clients[c].hand_off_due.take().expect("due");
                let from = self.clients[c].shard;
                self.call = Call::HandOff;
                let now = self.now;
                // The "descriptor" passed on is the client's index.
                self.shards[from].handle_handed_off(now, id, Some(c as i32));
                trace!("  client {c}: handle_handed_off");
                self.drain_events(from);
                continue;
            }
            if let Some(to) = self.adopt_due.iter().position(|&due| due) {
                self.adopt_due[to] = false;
                while let Some(adoption) = self.shards[to].poll_adoption() {
                    self.adopt(to, adoption);
                }
                continue;
            }
            return;
        }
    }

    fn drain_events(&mut self, shard: usize) {
        self.run_log(shard);
        while let Some(event) = self.shards[shard].poll_event() {
            self.on_event(shard, event);
        }
        self.observe(shard);
    }

    /// `handle_adopt` of a connection another shard handed over: the same
    /// client goes on, on this shard.
    fn adopt(&mut self, shard: usize, adoption: relayhub_server::shard::Adoption) {
        let c = usize::try_from(adoption.fd).expect("a client index");
        assert!(
            self.clients[c].handed_off,
            "client {c} adopted, never handed off"
        );
        assert!(
            self.clients[c].closed,
            "client {c} adopted before its old connection ended"
        );
        let now = self.now;
        let before = Counts::of(&self.stats[shard]);
        self.call = Call::Accept;
        let adopted = self.shards[shard].handle_adopt(now, c, &adoption.buffered);
        self.run_log(shard);
        let after = Counts::of(&self.stats[shard]);
        tally("connections adopted");
        self.clients[c].in_hand_off = false;
        match adopted {
            Ok(id) => {
                assert!(self.ids.insert((shard, id)), "connection id {id:?} reused");
                let client = &mut self.clients[c];
                client.shard = shard;
                client.id = id;
                client.reader = Reader::Ready;
                client.writer = Writer::Ready;
                client.woken = true;
                client.closed = false;
                client.read_shut = false;
                client.stopped_reading = false;
                client.aborted = false;
                client.closing = None;
                client.last_completed_ms = now;
                self.account_call(c, shard, id, Call::Accept, before, after);
            }
            Err(refusal) => {
                assert_eq!(refusal.io, c, "the refusal hands back another value");
                assert!(
                    self.live_on(shard) >= self.limits.connections_max
                        || self.shutdown[shard].is_some(),
                    "client {c}: adoption refused below connections_max"
                );
                self.clients[c].adoption_refused = true;
                self.drain_events(shard);
                // Nothing reached the client before: the owner's refusal is
                // all it reads, in version 2's words.
                check_refusal_v2(&refusal.bytes, self.limits.connections_max as u64);
                let client = &mut self.clients[c];
                client.closing_error = Some(ErrorCode::ServerFull);
                client.stream = Stream::Frames;
                tally("closing errors: server full after a hand-off");
            }
        }
    }

    fn client_of(&self, shard: usize, id: ConnId, event: Event) -> usize {
        assert!(
            self.shards[shard].conn(id).is_some(),
            "{event:?} for a connection not in shard {shard}'s table"
        );
        self.clients
            .iter()
            .position(|c| c.shard == shard && c.id == id && !c.closed)
            .unwrap_or_else(|| panic!("{event:?} for a connection the driver does not know"))
    }

    fn on_event(&mut self, shard: usize, event: Event) {
        trace!("  shard {shard}: {event:?} (in {:?})", self.call);
        match event {
            Event::Writable(id) | Event::Readable(id)
                if self.shards[shard]
                    .conn(id)
                    .is_some_and(|conn| conn.state() == ConnState::HandedOff) =>
            {
                // A hand-off wakes both sides, parked or not, so that the
                // task ends.
                let c = self.client_of(shard, id, event);
                let client = &mut self.clients[c];
                if client.writer == Writer::Parked {
                    client.writer = Writer::Ready;
                }
                if client.reader == Reader::Paused {
                    client.reader = Reader::Ready;
                }
                client.woken = true;
            }
            Event::HandOff(id) => {
                let c = self.client_of(shard, id, event);
                let state = self.shards[shard].conn(id).expect("in the table").state();
                assert_eq!(
                    state,
                    ConnState::HandedOff,
                    "client {c}: HandOff in {state:?}"
                );
                let client = &mut self.clients[c];
                assert!(!client.v1_clean(), "client {c} (version 1) handed off");
                if client.clean {
                    // The Hello was polled, then given back for the owner.
                    client.handled -= 1;
                }
                client.handed_off = true;
                client.in_hand_off = true;
                client.hand_off_due = Some(id);
                client.woken = true;
                tally("events: hand-off");
            }
            Event::Adopt => {
                self.adopt_due[shard] = true;
                tally("events: adopt");
            }
            // The writer and the reader run after every call.
            Event::LogReady | Event::BodyReadReady => assert!(
                self.limits.log_enabled,
                "shard {shard}: {event:?} with the log off (memory storage)"
            ),
            Event::Writable(id) => {
                let c = self.client_of(shard, id, event);
                let client = &mut self.clients[c];
                assert_eq!(
                    client.writer,
                    Writer::Parked,
                    "client {c}: Writable for a writer that is not parked"
                );
                client.writer = Writer::Ready;
                client.woken = true;
                tally("events: writable");
            }
            Event::Readable(id)
                if {
                    let c = self.client_of(shard, id, event);
                    self.clients[c].welcomed_now && self.clients[c].reader != Reader::Paused
                } =>
            {
                // A version-2 welcome wakes the reader it paused for the
                // session's records; with storage in memory that pause
                // ended within the same call, so the reader never saw it.
                tally("readers woken by a version-2 welcome");
            }
            Event::Readable(id) => {
                let c = self.client_of(shard, id, event);
                let client = &mut self.clients[c];
                assert_eq!(
                    client.reader,
                    Reader::Paused,
                    "client {c}: Readable for a reader that is not paused"
                );
                client.reader = Reader::Ready;
                client.woken = true;
                tally("readers resumed");
            }
            Event::StopReading(id) => {
                let c = self.client_of(shard, id, event);
                let state = self.shards[shard].conn(id).expect("in the table").state();
                let client = &mut self.clients[c];
                assert!(!client.stopped_reading, "client {c}: StopReading twice");
                assert!(
                    self.shutdown[shard].is_some()
                        || matches!(state, ConnState::Closing | ConnState::Aborted),
                    "client {c}: StopReading for a connection in {state:?}"
                );
                client.stopped_reading = true;
                client.read_shut = true;
                client.woken = true;
                tally("events: stop reading");
            }
            Event::Abort(id) => {
                let c = self.client_of(shard, id, event);
                let state = self.shards[shard].conn(id).expect("in the table").state();
                assert_eq!(state, ConnState::Aborted, "client {c}: Abort in {state:?}");
                let (now, flush, call) = (self.now, self.limits.close_flush_ms, self.call);
                let client = &mut self.clients[c];
                assert!(
                    client.stopped_reading,
                    "client {c}: Abort before StopReading"
                );
                assert!(!client.aborted, "client {c}: Abort twice");
                if call == Call::Timeout {
                    // The flush deadline: never before it.
                    let closing = client.closing.map_or((now, self.shutdown[shard]), |c| {
                        (c.at_ms, c.shutdown_deadline_ms)
                    });
                    let deadline = flush_deadline(closing.0, closing.1, flush);
                    assert!(
                        now >= deadline,
                        "client {c}: aborted at {now}, before its flush deadline {deadline}"
                    );
                    tally("flush deadlines: aborted, not early");
                }
                client.aborted = true;
                client.read_shut = true;
                client.woken = true;
            }
            Event::MeshOutbox(target) => {
                let link = self
                    .links
                    .iter_mut()
                    .find(|l| l.from == shard && l.to == target)
                    .unwrap_or_else(|| panic!("MeshOutbox({target}) from shard {shard}"));
                assert!(
                    link.parked,
                    "MeshOutbox({target}) for a forwarder not parked"
                );
                assert!(!link.woken, "MeshOutbox({target}) twice for one park");
                link.woken = true;
                tally("events: mesh outbox");
            }
            Event::TimerChanged => {
                self.timers[shard].changed = true;
                tally("events: timer changed");
            }
        }
    }

    /// Notes connections that started closing, and the membership.
    fn observe(&mut self, shard: usize) {
        let (now, call, shutdown) = (self.now, self.call, self.shutdown[shard]);
        for (c, client) in self.clients.iter_mut().enumerate() {
            if client.shard != shard || client.closed || client.closing.is_some() {
                continue;
            }
            let conn = self.shards[shard].conn(client.id).expect("live connection");
            if matches!(conn.state(), ConnState::Closing | ConnState::Aborted) {
                let partial_since_ms = client
                    .partial_segment()
                    .filter(|_| client.clean)
                    .and_then(|index| client.first_read_ms[index]);
                client.closing = Some(Closing {
                    at_ms: now,
                    call,
                    completed_ms: client.last_completed_ms,
                    partial_since_ms,
                    shutdown_deadline_ms: shutdown,
                });
                if call == Call::ReadEnd(c) {
                    tally("closed by the client's end");
                }
                if let Some(conn) = client.v2.as_deref() {
                    self.model.conn_closing(c, conn.session(), now);
                }
            }
        }
        let mut members: Vec<u64> = self
            .clients
            .iter()
            .filter(|c| !c.closed && c.user != 0)
            .filter(|c| {
                self.shards[c.shard]
                    .conn(c.id)
                    .is_some_and(|conn| conn.state() == ConnState::Open)
            })
            .map(|c| c.user)
            .collect();
        members.sort_unstable();
        members.dedup();
        if members != self.membership {
            self.membership = members;
            self.epoch += 1;
        }
    }

    /// A call of the reader of `c`: what it did is read from the shard's
    /// counters (the core processes frames only in reader calls, for that
    /// reader's connection).
    fn reader_call<R: std::fmt::Debug>(
        &mut self,
        c: usize,
        call: Call,
        f: impl FnOnce(&mut Shard<usize>, u64, ConnId) -> R,
    ) -> R {
        let (shard, id) = (self.clients[c].shard, self.clients[c].id);
        let before = Counts::of(&self.stats[shard]);
        self.call = call;
        let result = f(&mut self.shards[shard], self.now, id);
        trace!("  client {c}: {call:?} -> {result:?}");
        // What the call's records release (a durable welcome, deliveries)
        // counts as the call's.
        self.run_log(shard);
        let after = Counts::of(&self.stats[shard]);
        self.account_call(c, shard, id, call, before, after);
        result
    }

    /// What a call that handled `c`'s input did, from the shard's counters
    /// before and after it; then the events.
    fn account_call(
        &mut self,
        c: usize,
        shard: usize,
        id: ConnId,
        call: Call,
        before: Counts,
        after: Counts,
    ) {
        let polled =
            (after.frames_in - before.frames_in) + (after.limit_errors - before.limit_errors);
        let welcomed = after.accepted - before.accepted;
        let handled = polled
            .checked_sub(after.pauses - before.pauses)
            .expect("a pause keeps a frame that was polled") as usize;
        let now = self.now;
        let client = &mut self.clients[c];
        client.last_reader_call_ms = now;
        if polled + welcomed > 0 {
            client.last_completed_ms = now;
        }
        if welcomed > 0 {
            assert_eq!(welcomed, 1, "client {c}: welcomed twice in one call");
            if client.clean {
                assert_eq!(client.user, 0, "client {c}: welcomed twice");
            }
            let user = self.shards[shard].conn(id).expect("welcomed").user();
            assert_ne!(user, 0, "client {c}: welcomed as user 0");
            client.user = user;
            if self.shards[shard].inbox_len(user).is_some() {
                self.model.durable_user(user);
            }
        }
        if handled > 0 {
            let from = client.handled;
            client.handled += handled;
            if client.was_paused && call == Call::Reader(c) {
                tally("frames handled after a pause");
            }
            if client.clean {
                assert!(
                    client.handled <= client.requests.len(),
                    "client {c}: {} frames handled, {} sent",
                    client.handled,
                    client.requests.len()
                );
                for request in &client.requests[from..client.handled] {
                    if let Some(pending) = client.pending.get_mut(request) {
                        pending.handled = true;
                    }
                    if let Some(record) = self.relays.get_mut(request) {
                        record.handled = true;
                    }
                    self.model.handled(*request, now);
                }
            }
        }
        if self.clients[c].v2.is_some() {
            self.v2_after_call(c, welcomed > 0, before, after);
            self.clients[c].welcomed_now = welcomed > 0;
        }
        self.after_call(shard);
        self.clients[c].welcomed_now = false;
    }

    fn poll_timeout(&mut self, shard: usize) {
        self.call = Call::PollTimeout;
        self.timers[shard].changed = false;
        let next = self.shards[shard].poll_timeout();
        self.timers[shard].sleeping = next;
        self.after_call(shard);
    }

    // ----- clients --------------------------------------------------------

    fn connect(&mut self, shard: usize) {
        if self.clients.len() >= CLIENTS_MAX {
            return;
        }
        self.connect_any(shard);
    }

    /// A client connects to `shard`; its index if it was accepted.
    fn connect_any(&mut self, shard: usize) -> Option<usize> {
        let live = self.live_on(shard);
        let index = self.clients.len();
        self.call = Call::Accept;
        let now = self.now;
        match self.shards[shard].handle_accept(now, index) {
            Ok(id) => {
                assert!(
                    live < self.limits.connections_max,
                    "accepted past connections_max"
                );
                assert!(
                    self.shutdown[shard].is_none(),
                    "accepted while shutting down"
                );
                assert!(self.ids.insert((shard, id)), "connection id {id:?} reused");
                self.clients.push(Client {
                    shard,
                    id,
                    user: 0,
                    reader: Reader::Ready,
                    writer: Writer::Ready,
                    woken: true,
                    closed: false,
                    writer_first: false,
                    unsent: Vec::new(),
                    inbox: VecDeque::new(),
                    hub_read: 0,
                    read_size: SHARD_READ_BYTES,
                    read_floor: 1,
                    fin: false,
                    read_shut: false,
                    reset: false,
                    aborted: false,
                    room: 0,
                    write_cap: usize::MAX,
                    stopped_reading: false,
                    closing: None,
                    last_completed_ms: now,
                    last_reader_call_ms: now,
                    handled: 0,
                    was_paused: false,
                    clean: true,
                    preface_sent: false,
                    queued: 0,
                    segments: Vec::new(),
                    first_read_ms: Vec::new(),
                    requests: Vec::new(),
                    stream: Stream::Unknown,
                    http_bytes: Vec::new(),
                    view: Decoder::new(),
                    welcomed: false,
                    closing_error: None,
                    closing_error_v2: None,
                    handed_off: false,
                    hand_off_due: None,
                    adoption_refused: false,
                    pending: HashMap::new(),
                    v2: None,
                    welcomed_now: false,
                    in_hand_off: false,
                    crashed: false,
                });
                self.after_call(shard);
                Some(index)
            }
            Err(refusal) => {
                self.after_call(shard);
                assert_eq!(refusal.io, index, "the refusal hands back another value");
                assert!(
                    live >= self.limits.connections_max || self.shutdown[shard].is_some(),
                    "refused below connections_max"
                );
                check_refusal(&refusal.bytes, self.limits.connections_max as u64);
                None
            }
        }
    }

    fn live_on(&self, shard: usize) -> usize {
        self.clients
            .iter()
            .filter(|c| c.shard == shard && !c.closed)
            .count()
    }

    fn user_of(&self, target: Target) -> u64 {
        match target {
            Target::Id(id) => id,
            Target::Client(index) => self.client_index(index).map_or(0, |c| self.clients[c].user),
        }
    }

    fn body(&mut self, body: &Body) -> Vec<u8> {
        let large = match body.size {
            0xA2 => Some(16 << 10),
            0xA3 => Some(64 << 10),
            0xA4 => Some(256 << 10),
            0xA5 => Some(BODY_BYTES_MAX),
            0xA6 => Some(BODY_BYTES_MAX + 1),
            _ => None,
        };
        match large {
            Some(len) if self.generated + len <= GENERATED_BYTES_MAX => {
                self.generated += len;
                let seed = body.bytes.first().copied().unwrap_or(0);
                (0..len)
                    .map(|i| (i as u8).wrapping_mul(13) ^ seed)
                    .collect()
            }
            _ => body.bytes[..body.bytes.len().min(4096)].to_vec(),
        }
    }

    /// Encodes `request` for client `c` with a fresh request id and records
    /// what the client should get back.
    fn request(&mut self, c: usize, request: &Request) -> Vec<u8> {
        let id = self.next_request;
        self.next_request += 1;
        let mut out = BytesMut::new();
        match request {
            Request::Echo { body } => {
                let body = self.body(body);
                encode(
                    &EchoRef {
                        request: id,
                        body: &body,
                    },
                    &mut out,
                )
                .expect("fits");
                let expect = if body.len() > BODY_BYTES_MAX {
                    Expect::Refused(ErrorCode::BodyTooLarge)
                } else {
                    Expect::Echo(body)
                };
                self.expect(c, id, expect);
            }
            Request::Identity => {
                encode(&Identity { request: id }, &mut out).expect("fits");
                self.expect(c, id, Expect::Identity);
            }
            Request::List { after, limit } => {
                let after = self.user_of(*after);
                encode(
                    &List {
                        request: id,
                        after,
                        limit: *limit,
                    },
                    &mut out,
                )
                .expect("fits");
                let limit = match *limit as usize {
                    0 => LIST_PAGE_USERS_MAX,
                    limit => limit.min(LIST_PAGE_USERS_MAX),
                };
                let epoch = self.epoch;
                self.expect(
                    c,
                    id,
                    Expect::List {
                        after,
                        limit,
                        epoch,
                    },
                );
            }
            Request::Relay { receivers, body } => {
                let receivers: Vec<u64> = receivers
                    .iter()
                    .take(RECEIVERS_MAX + 45)
                    .map(|&target| self.user_of(target))
                    .collect();
                if self.clients[c].v2.is_some() {
                    // A version-2 client relays with RelayV2 (no id).
                    self.relay_v2_frame(c, id, receivers, body, 0, false, &mut out);
                } else {
                    self.relay(c, id, &receivers, body, &mut out);
                }
            }
            Request::RelayRepeated {
                receiver,
                count,
                body,
            } => {
                let receivers = vec![self.user_of(*receiver); usize::from(*count) % 300];
                if self.clients[c].v2.is_some() {
                    self.relay_v2_frame(c, id, receivers, body, 0, false, &mut out);
                } else {
                    self.relay(c, id, &receivers, body, &mut out);
                }
            }
        }
        self.clients[c].requests.push(id);
        out.to_vec()
    }

    fn expect(&mut self, c: usize, id: u64, expect: Expect) {
        let client = &mut self.clients[c];
        if !client.preface_sent {
            // These bytes are what the hub takes for a preface.
            client.clean = false;
        }
        client.pending.insert(
            id,
            Pending {
                expect,
                handled: false,
            },
        );
    }

    fn relay(&mut self, c: usize, id: u64, receivers: &[u64], body: &Body, out: &mut BytesMut) {
        let mut body = self.body(body);
        // Every relay body starts with its request id, so a receiver can
        // tell which relay a delivery belongs to.
        if body.len() < 8 {
            body.resize(8, 0);
        }
        body[..8].copy_from_slice(&id.to_le_bytes());
        encode(
            &RelayRef {
                request: id,
                receivers,
                body: &body,
            },
            out,
        )
        .expect("fits");
        let refusal = if receivers.len() > RECEIVERS_MAX {
            Some(ErrorCode::TooManyReceivers)
        } else if body.len() > BODY_BYTES_MAX {
            Some(ErrorCode::BodyTooLarge)
        } else {
            None
        };
        if let Some(code) = refusal {
            self.expect(c, id, Expect::Refused(code));
        } else if !self.clients[c].preface_sent {
            self.clients[c].clean = false;
        }
        let mut expected = BTreeMap::new();
        for &receiver in receivers {
            *expected.entry(receiver).or_default() += 1;
        }
        let record = RelayRecord {
            sender: c,
            body,
            expected,
            got: BTreeMap::new(),
            refused: refusal.is_some(),
            handled: false,
        };
        self.relays.insert(id, record);
    }

    /// The client queues `bytes` to send (`segment`: a preface or frame of
    /// a clean client).
    fn queue(&mut self, c: usize, bytes: &[u8], segment: bool) {
        let client = &mut self.clients[c];
        if client.reset || client.fin || (client.closed && !client.in_hand_off) {
            return;
        }
        if segment && !bytes.is_empty() {
            client
                .segments
                .push((client.queued, client.queued + bytes.len()));
            client.first_read_ms.push(None);
        }
        client.queued += bytes.len();
        client.unsent.extend_from_slice(bytes);
    }

    /// The client sends what it queued, but what `wire` holds back.
    fn transmit(&mut self, c: usize, wire: Wire) {
        let client = &mut self.clients[c];
        if client.reset || client.fin || (client.closed && !client.in_hand_off) {
            return;
        }
        let keep = if wire.hold & 0x8000 != 0 {
            usize::from(wire.hold & 0x7fff) % (client.unsent.len() + 1)
        } else {
            0
        };
        let send = client.unsent.len() - keep;
        client.inbox.extend(&client.unsent[..send]);
        client.unsent.drain(..send);
        client.read_size = read_size(wire.read);
        client.read_floor = (client.inbox.len() / READS_PER_SEND_MAX).max(1);
        if keep > 0 {
            tally("bytes held back");
        }
    }

    // ----- the connection task --------------------------------------------

    fn runnable(&self, c: usize) -> bool {
        let client = &self.clients[c];
        if client.closed {
            return false;
        }
        let reader = match client.reader {
            Reader::Ready => true,
            Reader::Socket => {
                !client.inbox.is_empty() || client.fin || client.reset || client.read_shut
            }
            Reader::Paused | Reader::Stopped => false,
        };
        let writer = match client.writer {
            Writer::Ready => true,
            Writer::Blocked => self.room(c) > 0 || client.reset || client.aborted,
            Writer::Parked | Writer::Done => false,
        };
        let finished = client.reader == Reader::Stopped && client.writer == Writer::Done;
        client.woken || reader || writer || finished
    }

    fn room(&self, c: usize) -> usize {
        if self.reading_all {
            usize::MAX
        } else {
            self.clients[c].room
        }
    }

    /// Runs every task that can make progress; true if any did.
    fn run_tasks(&mut self) -> bool {
        let mut progress = false;
        for _ in 0..SETTLE_ROUNDS_MAX {
            let mut ran = false;
            for c in 0..self.clients.len() {
                if self.runnable(c) {
                    self.run_task(c);
                    ran = true;
                }
            }
            if !ran {
                return progress;
            }
            progress = true;
        }
        panic!("connection tasks never settle");
    }

    /// One poll of a connection's task: both sides, then its end.
    fn run_task(&mut self, c: usize) {
        self.clients[c].woken = false;
        if self.clients[c].writer_first {
            self.write_side(c);
            self.read_side(c);
        } else {
            self.read_side(c);
            self.write_side(c);
        }
        let client = &self.clients[c];
        if client.reader == Reader::Stopped && client.writer == Writer::Done && !client.closed {
            let (shard, id) = (client.shard, client.id);
            self.call = Call::Closed;
            let io = self.shards[shard].handle_closed(id);
            assert_eq!(io, Some(c), "handle_closed hands back another value");
            assert!(
                self.shards[shard].conn(id).is_none(),
                "closed, still in the table"
            );
            self.clients[c].closed = true;
            self.after_call(shard);
        }
    }

    fn read_side(&mut self, c: usize) {
        for _ in 0..READS_PER_SEND_MAX * 64 {
            match self.clients[c].reader {
                Reader::Stopped => return,
                Reader::Ready | Reader::Paused => {
                    let ready = self.reader_call(c, Call::Reader(c), |shard, now, id| {
                        shard.poll_read(now, id)
                    });
                    let client = &mut self.clients[c];
                    match ready {
                        ReadReady::Read => client.reader = Reader::Socket,
                        ReadReady::Paused => {
                            if client.reader != Reader::Paused {
                                tally("readers paused");
                            }
                            client.was_paused = true;
                            client.reader = Reader::Paused;
                            return;
                        }
                        ReadReady::Stop => {
                            client.reader = Reader::Stopped;
                            return;
                        }
                    }
                }
                Reader::Socket => {
                    let client = &self.clients[c];
                    let read = if client.reset {
                        Read::Failed
                    } else if !client.inbox.is_empty() {
                        self.read_some(c);
                        self.clients[c].reader = Reader::Ready;
                        continue;
                    } else if client.fin || client.read_shut {
                        Read::End
                    } else {
                        return;
                    };
                    self.reader_call(c, Call::ReadEnd(c), |shard, now, id| {
                        shard.handle_read(now, id, read)
                    });
                    self.clients[c].reader = Reader::Stopped;
                    return;
                }
            }
        }
        panic!("client {c}: the reader never waits");
    }

    /// One read of the client's bytes in flight into `read_buffer`.
    fn read_some(&mut self, c: usize) {
        // Bytes read once the hub stopped reading are not handled.
        let state = self.shards[self.clients[c].shard]
            .conn(self.clients[c].id)
            .expect("a reader reads a connection in the table")
            .state();
        let taken = !self.clients[c].stopped_reading
            && self.shutdown[self.clients[c].shard].is_none()
            && takes_input(state);
        let Harness {
            shards, clients, ..
        } = self;
        let client = &mut clients[c];
        let buffer = shards[client.shard].read_buffer(client.id);
        let len = buffer
            .len()
            .min(client.inbox.len())
            .min(client.read_size.max(client.read_floor));
        assert!(len > 0, "read_buffer gives no room");
        if buffer.len() == SHARD_READ_BYTES {
            tally("reads into a 64 KiB buffer");
        } else {
            tally("reads into the decoder's room");
        }
        let (front, back) = client.inbox.as_slices();
        let split = len.min(front.len());
        buffer[..split].copy_from_slice(&front[..split]);
        buffer[split..len].copy_from_slice(&back[..len - split]);
        client.inbox.drain(..len);
        self.reader_call(c, Call::Reader(c), |shard, now, id| {
            shard.handle_read(now, id, Read::Bytes(len))
        });
        if !taken {
            tally("reads after the hub stopped reading");
            return;
        }
        let now = self.now;
        let client = &mut self.clients[c];
        let from = client.hub_read;
        client.hub_read += len;
        // The segments whose first byte this read brought.
        let first = client.segments.partition_point(|&(start, _)| start < from);
        for index in first..client.segments.len() {
            if client.segments[index].0 >= client.hub_read {
                break;
            }
            client.first_read_ms[index] = Some(now);
        }
    }

    fn write_side(&mut self, c: usize) {
        for _ in 0..1 << 20 {
            match self.clients[c].writer {
                Writer::Done => return,
                Writer::Blocked => {
                    let client = &self.clients[c];
                    if self.room(c) == 0 && !client.reset && !client.aborted {
                        return;
                    }
                    self.clients[c].writer = Writer::Ready;
                }
                Writer::Ready | Writer::Parked => {
                    let (shard, id) = (self.clients[c].shard, self.clients[c].id);
                    self.call = Call::Writer(c);
                    let ready = self.shards[shard].poll_write(id);
                    trace!("  client {c}: poll_write -> {ready:?}");
                    self.after_call(shard);
                    match ready {
                        WriteReady::Idle => {
                            self.clients[c].writer = Writer::Parked;
                            return;
                        }
                        WriteReady::Done => {
                            self.writer_done(c);
                            return;
                        }
                        WriteReady::Write if self.clients[c].reset => {
                            self.call = Call::WriteFailed(c);
                            let now = self.now;
                            self.shards[shard].handle_write_failed(now, id);
                            self.after_call(shard);
                            tally("writes failed");
                            self.writer_done(c);
                            return;
                        }
                        WriteReady::Write if self.room(c) == 0 => {
                            self.clients[c].writer = Writer::Blocked;
                            return;
                        }
                        WriteReady::Write => {
                            self.clients[c].writer = Writer::Ready;
                            self.write_some(c);
                        }
                    }
                }
            }
        }
        panic!("client {c}: the writer never waits");
    }

    /// The writer's loop ended: it shuts the socket down both ways, so a
    /// pending read returns the end.
    fn writer_done(&mut self, c: usize) {
        let client = &mut self.clients[c];
        client.writer = Writer::Done;
        client.read_shut = true;
    }

    /// One write of the queue's front, as much as the client reads.
    fn write_some(&mut self, c: usize) {
        let room = self.room(c);
        let (shard, id) = (self.clients[c].shard, self.clients[c].id);
        let (bytes, queued) = {
            let outbound = self.shards[shard]
                .outbound(id)
                .expect("a writer told to write has a queue");
            // Small writes, but not a 1 MiB queue byte by byte.
            let cap = self.clients[c]
                .write_cap
                .max(outbound.queued_bytes() / READS_PER_SEND_MAX);
            let limit = room.min(cap);
            let mut slices: Vec<IoSlice<'_>> = Vec::new();
            outbound.slices(&mut slices);
            assert!(!slices.is_empty(), "Write with nothing queued");
            let mut bytes = Vec::new();
            for slice in &slices {
                let take = (limit - bytes.len()).min(slice.len());
                bytes.extend_from_slice(&slice[..take]);
                if bytes.len() == limit {
                    break;
                }
            }
            let offered: usize = slices.iter().map(|slice| slice.len()).sum();
            (bytes, offered)
        };
        if bytes.len() < queued {
            tally("partial writes");
        }
        self.call = Call::Writer(c);
        self.shards[shard].handle_written(id, bytes.len());
        self.after_call(shard);
        let client = &mut self.clients[c];
        if client.room != usize::MAX {
            client.room = client.room.saturating_sub(bytes.len());
        }
        self.read_by_client(c, &bytes);
    }

    // ----- the mesh -------------------------------------------------------

    /// The forwarder of link `l` runs once; true if it moved anything.
    fn forward(&mut self, l: usize, max: usize) -> bool {
        let mut moved = self.stage(l);
        let link = &self.links[l];
        if !link.held.is_empty() || (link.parked && !link.woken) {
            return moved;
        }
        let (from, to) = (link.from, link.to);
        let mut batch = Vec::new();
        self.call = Call::PollMesh;
        self.shards[from].poll_mesh(to, max.min(MESH_BATCH_MAX), &mut batch);
        trace!("  poll_mesh({from} -> {to}): {} messages", batch.len());
        let link = &mut self.links[l];
        link.woken = false;
        link.parked = batch.is_empty();
        moved |= !batch.is_empty();
        link.held.extend(batch);
        self.after_call(from);
        self.stage(l) || moved
    }

    /// Stages held messages into the ring within its byte budget (one
    /// message may exceed it when nothing else is in flight).
    fn stage(&mut self, l: usize) -> bool {
        let budget = self.limits.mesh_bytes_max;
        let link = &mut self.links[l];
        let mut moved = false;
        while let Some(message) = link.held.front() {
            let weight = message.weight();
            if link.ring_bytes > 0 && link.ring_bytes + weight > budget {
                tally("ring budget waits");
                break;
            }
            link.ring_bytes += weight;
            let message = link.held.pop_front().expect("front");
            link.ring.push_back(message);
            moved = true;
        }
        moved
    }

    /// The consumer of link `l` handles up to `max` messages; true if any.
    fn consume(&mut self, l: usize, max: usize) -> bool {
        let (from, to) = (self.links[l].from, self.links[l].to);
        let mut weight = 0;
        let mut handled = 0;
        while handled < max.min(MESH_BATCH_MAX) {
            let Some(message) = self.links[l].ring.pop_front() else {
                break;
            };
            weight += message.weight();
            handled += 1;
            tally("mesh messages moved");
            self.call = Call::Mesh;
            let now = self.now;
            self.shards[to].handle_mesh(now, from, message);
            self.after_call(to);
        }
        // The refund of the batch's budget lets the forwarder stage more.
        self.links[l].ring_bytes -= weight;
        handled > 0
    }

    // ----- timers ---------------------------------------------------------

    /// Each shard's timer task: `handle_timeout` once its deadline is
    /// reached or it was told the deadline moved; true if any ran.
    fn run_timers(&mut self) -> bool {
        let mut progress = false;
        for shard in 0..self.shards.len() {
            for round in 0.. {
                let timer = &self.timers[shard];
                let due = timer.changed || timer.sleeping.is_some_and(|d| d <= self.now);
                if !due {
                    break;
                }
                assert!(round < TIMER_ROUNDS_MAX, "shard {shard}: the timer spins");
                self.call = Call::Timeout;
                let now = self.now;
                trace!("  shard {shard}: handle_timeout({now})");
                self.shards[shard].handle_timeout(now);
                self.after_call(shard);
                self.check_expiry(shard);
                self.poll_timeout(shard);
                trace!(
                    "  shard {shard}: poll_timeout -> {:?}",
                    self.timers[shard].sleeping
                );
                if let Some(next) = self.timers[shard].sleeping {
                    assert!(
                        next > now,
                        "shard {shard}: deadline {next} still due after handle_timeout({now})"
                    );
                }
                progress = true;
            }
        }
        progress
    }

    /// Runs tasks and timers until nothing moves without the input.
    fn settle(&mut self) {
        for _ in 0..SETTLE_ROUNDS_MAX {
            let tasks = self.run_tasks();
            let timers = self.run_timers();
            if !tasks && !timers {
                return;
            }
        }
        panic!("tasks and timers never settle");
    }

    /// The driver's log writer and reader, run after every core call (the
    /// way memory storage behaves, so that the checks of a call see what
    /// its records made possible): every batch is written (and succeeds),
    /// a snapshot becomes the next generation and the old file goes once
    /// the core moved its entries, every read is served from the files.
    fn run_log(&mut self, shard: usize) {
        if !self.limits.log_enabled {
            return;
        }
        loop {
            let mut progress = false;
            let now = self.now;
            while let Some(batch) = self.shards[shard].poll_log(now) {
                trace!(
                    "  shard {shard}: log batch of {} bytes (new generation: {})",
                    batch.len(),
                    batch.new_generation
                );
                tally("log: batches");
                if batch.new_generation && self.files[shard].refuse_snapshot {
                    // The disk refuses it: the current file stays the log,
                    // the superseded records come back with the next batch.
                    self.files[shard].refuse_snapshot = false;
                    tally("log: compactions refused");
                    self.shards[shard].handle_log_failed(now, batch);
                    progress = true;
                    continue;
                }
                if batch.new_generation {
                    tally("log: compactions");
                    tally_add("log: records copied", batch.copies.len() as u64);
                    self.files[shard].refuse_snapshot = self.flaky_snapshots;
                }
                self.files[shard].write(&batch);
                self.shards[shard].handle_log_written(now, batch.end_lsn, batch.new_generation);
                if batch.new_generation {
                    let old = self.files[shard].generation - 1;
                    self.files[shard].by_generation.remove(&old);
                }
                progress = true;
            }
            while let Some(read) = self.shards[shard].poll_body_read() {
                let bytes = self.files[shard].read(read.pos).to_vec();
                let result = self.shards[shard].handle_body_read(now, read, &bytes);
                assert_eq!(result, Ok(()), "shard {shard}: {read:?} read back wrong");
                tally("log: bodies read back");
                progress = true;
            }
            if !progress {
                return;
            }
        }
    }

    // ----- what the client reads ------------------------------------------

    /// The client reads bytes the hub wrote to it.
    fn read_by_client(&mut self, c: usize, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let client = &mut self.clients[c];
        if client.stream == Stream::Unknown {
            client.stream = if bytes[0] == HTTP_REFUSAL[0] {
                Stream::Http
            } else {
                Stream::Frames
            };
        }
        if client.stream == Stream::Http {
            client.http_bytes.extend_from_slice(bytes);
            assert!(
                HTTP_REFUSAL.starts_with(&client.http_bytes),
                "the hub sent more than the HTTP refusal"
            );
            tally("http refusal bytes read");
            return;
        }
        client.view.handle_bytes(bytes);
        loop {
            let message = match self.clients[c].view.poll_frame() {
                Ok(Some(frame)) => frame.to_owned(),
                Ok(None) => break,
                Err(error) => panic!("client {c} cannot decode what the hub sent: {error}"),
            };
            tally("frames read by clients");
            self.read_message(c, message);
        }
        self.clients[c].view.release_idle();
    }

    fn read_message(&mut self, c: usize, message: HubMessageV2) {
        trace!("  client {c} reads {message:?}");
        let client = &self.clients[c];
        assert!(
            !client.got_closing_error(),
            "client {c} got {message:?} after a closing error"
        );
        if !client.welcomed {
            let is_welcome = matches!(
                message,
                HubMessageV2::Welcome(_) | HubMessageV2::WelcomeV2(_)
            );
            let is_closing_error = matches!(&message, HubMessageV2::Error(e)
                if ErrorCodeV2::from_wire(e.code).is_some_and(ErrorCodeV2::closes_connection));
            assert!(
                is_welcome || is_closing_error,
                "first frame is neither a welcome nor a closing error: {message:?}"
            );
        }
        if let Some(conn) = self.clients[c].v2.as_mut() {
            conn.frames_read += 1;
        }
        let message = match message {
            HubMessageV2::Welcome(m) => HubMessage::Welcome(m),
            HubMessageV2::EchoReply(m) => HubMessage::EchoReply(m),
            HubMessageV2::IdentityReply(m) => HubMessage::IdentityReply(m),
            HubMessageV2::ListReply(m) => HubMessage::ListReply(m),
            HubMessageV2::Deliver(m) => HubMessage::Deliver(m),
            HubMessageV2::Error(m) => HubMessage::Error(m),
            HubMessageV2::WelcomeV2(_)
            | HubMessageV2::DeliverV2(_)
            | HubMessageV2::Stored(_)
            | HubMessageV2::Receipt(_) => {
                // Only a client that spoke version 2 gets these.
                let client = &mut self.clients[c];
                assert!(!client.v1_clean(), "client {c} (version 1) got {message:?}");
                if matches!(message, HubMessageV2::WelcomeV2(_)) {
                    client.welcomed = true;
                }
                tally("version-2 frames read");
                self.read_v2(c, message);
                return;
            }
        };
        match message {
            HubMessage::Welcome(welcome) => self.read_welcome(c, welcome),
            HubMessage::Error(error) => self.read_error(c, error),
            HubMessage::EchoReply(reply) => {
                if let Some(expect) = self.take_expected(c, reply.request) {
                    let Expect::Echo(body) = expect else {
                        panic!("an echo reply answers {expect:?}")
                    };
                    assert!(body == reply.body, "echo reply with another body");
                    tally("echo replies checked");
                }
            }
            HubMessage::IdentityReply(reply) => {
                if let Some(expect) = self.take_expected(c, reply.request) {
                    assert!(
                        matches!(expect, Expect::Identity),
                        "identity reply to {expect:?}"
                    );
                    assert_eq!(reply.user, self.clients[c].user);
                    tally("identity replies checked");
                }
            }
            HubMessage::ListReply(reply) => {
                if let Some(expect) = self.take_expected(c, reply.request) {
                    self.check_list_reply(c, &reply, expect);
                }
            }
            HubMessage::Deliver(deliver) => self.read_deliver(c, &deliver),
        }
    }

    fn read_welcome(&mut self, c: usize, welcome: Welcome) {
        let shards = self.shards.len();
        let client = &mut self.clients[c];
        assert!(!client.welcomed, "a second welcome");
        let user = welcome.user;
        assert_ne!(user, 0, "user id 0 is reserved");
        assert_eq!(user, client.user, "welcome names another user");
        assert_eq!(
            owner(user, shards),
            client.shard,
            "user {user} is not owned by its shard"
        );
        assert_eq!(welcome, Welcome::with_protocol_limits(user));
        client.welcomed = true;
        tally("welcomes checked");
        let others = self.clients.iter().filter(|o| o.user == user);
        assert_eq!(others.count(), 1, "user id {user} handed out twice");
    }

    fn read_error(&mut self, c: usize, error: relayhub_protocol::Error) {
        let code = ErrorCodeV2::from_wire(error.code)
            .unwrap_or_else(|| panic!("the hub sent unknown error code {}", error.code));
        if self.clients[c].v2_clean() && self.read_error_v2(c, code, &error) {
            return;
        }
        let Some(code) = code.v1() else {
            // A code version 2 added: only for a client that spoke it.
            assert!(
                !self.clients[c].v1_clean(),
                "client {c} (version 1) got {code:?}"
            );
            if code.closes_connection() {
                self.check_closing(c, error.code);
                self.clients[c].closing_error_v2 = Some(code);
                tally("closing errors: version 2");
            } else {
                tally("version-2 notices read");
            }
            return;
        };
        if code.closes_connection() {
            self.read_closing_error(c, code, error.detail);
            return;
        }
        if !self.clients[c].clean {
            return;
        }
        match code {
            ErrorCode::UnknownReceiver | ErrorCode::ReceiverDropped => {
                let record = self.relays.get_mut(&error.request).unwrap_or_else(|| {
                    panic!("{code:?} about request {}, no relay", error.request)
                });
                assert_eq!(record.sender, c, "{code:?} reported to another client");
                assert!(!record.refused, "a refused relay was routed");
                assert!(record.handled, "{code:?} about a relay not handled yet");
                account(record, error.detail, error.request);
                tally(if code == ErrorCode::UnknownReceiver {
                    "relay errors checked: unknown receiver"
                } else {
                    "relay errors checked: receiver dropped"
                });
            }
            ErrorCode::TooManyReceivers | ErrorCode::BodyTooLarge => {
                let expect = self.take_expected(c, error.request);
                assert!(
                    matches!(expect, Some(Expect::Refused(refused)) if refused == code),
                    "{code:?} about request {} that expected {expect:?}",
                    error.request
                );
                tally("limit refusals checked");
            }
            _ => unreachable!("{code:?} closes"),
        }
    }

    /// A closing error is read while its connection is closing, and never
    /// after the client's own end.
    fn check_closing(&self, c: usize, code: u16) -> Closing {
        let client = &self.clients[c];
        let state = self.shards[client.shard]
            .conn(client.id)
            .expect("a client reads from a connection in the table")
            .state();
        assert!(
            matches!(state, ConnState::Closing | ConnState::Aborted),
            "error {code} sent, connection in {state:?}"
        );
        let closing = client
            .closing
            .expect("a closing connection was seen closing");
        assert_ne!(
            closing.call,
            Call::ReadEnd(c),
            "client {c}: error {code} after its own end (a FIN closes without an error)"
        );
        closing
    }

    fn read_closing_error(&mut self, c: usize, code: ErrorCode, detail: u64) {
        let closing = self.check_closing(c, code.to_wire());
        let limits = &self.limits;
        let client = &self.clients[c];
        match code {
            ErrorCode::IdleTimeout => {
                assert_eq!(detail, limits.idle_timeout_ms, "IdleTimeout's detail");
                assert_eq!(closing.call, Call::Timeout, "IdleTimeout outside a timer");
                let deadline = closing.completed_ms + limits.idle_timeout_ms;
                assert!(
                    closing.at_ms >= deadline,
                    "client {c}: IdleTimeout at {}, deadline {deadline}",
                    closing.at_ms
                );
                tally("closing errors: idle timeout, not early");
            }
            ErrorCode::FrameTimeout => {
                assert_eq!(detail, limits.frame_timeout_ms, "FrameTimeout's detail");
                assert_eq!(closing.call, Call::Timeout, "FrameTimeout outside a timer");
                let mut since = closing.completed_ms;
                if client.clean {
                    let started = closing.partial_since_ms.unwrap_or_else(|| {
                        panic!("client {c}: FrameTimeout with no frame in progress")
                    });
                    since = since.max(started);
                }
                let deadline = since + limits.frame_timeout_ms;
                assert!(
                    closing.at_ms >= deadline,
                    "client {c}: FrameTimeout at {}, deadline {deadline}",
                    closing.at_ms
                );
                tally("closing errors: frame timeout, not early");
            }
            ErrorCode::ShuttingDown => {
                assert_eq!(detail, 0, "ShuttingDown's detail");
                assert!(
                    self.shutdown[client.shard].is_some(),
                    "ShuttingDown from a shard that is not shutting down"
                );
                tally("closing errors: shutting down");
            }
            ErrorCode::SlowConsumer => {
                assert_eq!(
                    detail, limits.outbound_bytes_max as u64,
                    "SlowConsumer's detail"
                );
                tally("closing errors: slow consumer");
            }
            ErrorCode::ServerFull => {
                // A connection handed to another shard that could not take
                // it (version 2); never a version-1 connection.
                assert!(
                    client.handed_off && !client.v1_clean(),
                    "ServerFull on an accepted connection"
                );
                tally("closing errors: server full after a hand-off");
            }
            _ => {
                assert!(
                    !client.clean,
                    "client {c}: well-formed frames refused with {code:?} (detail {detail})"
                );
                tally("closing errors: protocol");
            }
        }
        self.clients[c].closing_error = Some(code);
    }

    fn take_expected(&mut self, c: usize, request: u64) -> Option<Expect> {
        let client = &mut self.clients[c];
        let pending = client.pending.remove(&request);
        if client.clean {
            let pending = pending
                .as_ref()
                .unwrap_or_else(|| panic!("a reply to request {request} nobody waits for"));
            assert!(
                pending.handled,
                "a reply to request {request}, which the hub has not handled"
            );
        }
        pending.map(|pending| pending.expect)
    }

    fn check_list_reply(&self, c: usize, reply: &relayhub_protocol::ListReply, expect: Expect) {
        let Expect::List {
            after,
            limit,
            epoch,
        } = expect
        else {
            panic!("a list reply answers {expect:?}")
        };
        let me = self.clients[c].user;
        assert!(reply.users.len() <= limit, "page longer than asked");
        assert!(
            reply.users.windows(2).all(|w| w[0] < w[1]),
            "page not ascending"
        );
        assert!(
            reply.users.iter().all(|&u| u > after),
            "page starts at or before `after`"
        );
        assert!(!reply.users.contains(&me), "page lists the asker");
        tally("list replies checked");
        if epoch == self.epoch {
            tally("list replies checked exactly");
            let expected: Vec<u64> = self
                .membership
                .iter()
                .copied()
                .filter(|&u| u > after && u != me)
                .collect();
            let more = expected.len() > limit;
            assert_eq!(
                reply.users,
                expected[..expected.len().min(limit)],
                "wrong page"
            );
            assert_eq!(reply.more, more, "wrong `more`");
        }
    }

    fn read_deliver(&mut self, c: usize, deliver: &relayhub_protocol::Deliver) {
        let from = deliver.from;
        let Some(sender) = self.clients.iter().position(|o| o.user == from) else {
            // Only a version-2 session's user can be unknown here.
            assert!(
                self.clients.iter().any(|o| !o.clean),
                "a delivery from {from}, who was never welcomed"
            );
            return;
        };
        if !self.clients[sender].clean {
            return;
        }
        if self.clients[sender].v2.is_some() {
            // A version-2 sender's message to a version-1 receiver.
            self.read_deliver_from_v2(c, from, 0, deliver.body.as_slice());
            return;
        }
        let id = u64::from_le_bytes(deliver.body[..8].try_into().expect("8 bytes"));
        let user = self.clients[c].user;
        let record = self
            .relays
            .get_mut(&id)
            .unwrap_or_else(|| panic!("client {c} got a delivery of unknown relay {id}"));
        assert_eq!(record.sender, sender, "delivery names another sender");
        assert!(record.body == deliver.body, "delivery with another body");
        assert!(!record.refused, "a refused relay was delivered");
        assert!(record.handled, "a delivery of a relay not handled yet");
        account(record, user, id);
        tally("deliveries checked");
    }

    // ----- invariants -----------------------------------------------------

    /// Invariants that hold between any two operations.
    pub fn check(&self) {
        let limits = &self.limits;
        for (index, shard) in self.shards.iter().enumerate() {
            let live = self.live_on(index);
            assert_eq!(shard.connections(), live, "shard {index}: connections");
            let gauge = self.stats[index].connections_open.get();
            assert_eq!(gauge, live as u64, "shard {index}: connections_open");
            let open = self
                .membership
                .iter()
                .filter(|&&u| owner(u, self.shards.len()) == index)
                .count();
            assert_eq!(
                shard.connected(),
                open,
                "shard {index}: table != open users"
            );
            if shard.is_finished() {
                assert!(
                    self.shutdown[index].is_some(),
                    "finished without a shutdown"
                );
            }
        }
        for (c, client) in self.clients.iter().enumerate() {
            if client.closed {
                continue;
            }
            let conn = self.shards[client.shard]
                .conn(client.id)
                .expect("a live connection is in the table");
            let outbound = conn.outbound();
            assert!(
                outbound.queued_bytes() <= limits.outbound_bytes_max + self.error_frame_len,
                "client {c}: {} bytes queued, limit {}",
                outbound.queued_bytes(),
                limits.outbound_bytes_max
            );
            assert!(
                conn.decoder_capacity() <= DECODER_BYTES_MAX,
                "client {c}: the decoder holds {} bytes",
                conn.decoder_capacity()
            );
            self.check_deadlines(c, client, conn.state());
        }
        self.check_sessions();
        for link in &self.links {
            if link.parked && !link.woken {
                assert_eq!(
                    self.shards[link.from].outbox_bytes(link.to),
                    0,
                    "messages wait for a parked forwarder ({} -> {})",
                    link.from,
                    link.to
                );
            }
        }
    }

    /// No deadline passed without its timeout (the timers have run at
    /// `now`).
    fn check_deadlines(&self, c: usize, client: &Client, state: ConnState) {
        let (now, limits) = (self.now, &self.limits);
        match state {
            state if takes_input(state) && client.reader != Reader::Paused => {
                if limits.idle_timeout_ms > 0 {
                    let deadline = client.last_completed_ms + limits.idle_timeout_ms;
                    assert!(
                        now < deadline,
                        "client {c}: idle since {}, still open at {now}",
                        client.last_completed_ms
                    );
                    tally("idle deadlines not missed");
                }
                if limits.frame_timeout_ms > 0 && client.clean && client.partial_segment().is_some()
                {
                    let deadline = client.last_reader_call_ms + limits.frame_timeout_ms;
                    assert!(
                        now < deadline,
                        "client {c}: a frame in progress since before {}, still open at {now}",
                        client.last_reader_call_ms
                    );
                    tally("frame deadlines not missed");
                }
            }
            ConnState::Closing => {
                let closing = client.closing.expect("seen closing");
                let deadline = flush_deadline(
                    closing.at_ms,
                    closing.shutdown_deadline_ms,
                    limits.close_flush_ms,
                );
                assert!(
                    now < deadline,
                    "client {c}: still flushing at {now}, deadline {deadline}"
                );
            }
            _ => {}
        }
        if let Some(deadline) = self.shutdown[client.shard] {
            if now >= deadline {
                assert!(
                    !takes_input(state),
                    "client {c}: open at {now}, after the grace period ({deadline})"
                );
            }
        }
    }

    // ----- the end --------------------------------------------------------

    /// Every client sends what it held back and reads everything, every
    /// message crosses the mesh: until nothing moves.
    fn settle_all(&mut self) {
        self.reading_all = true;
        for _ in 0..SETTLE_ROUNDS_MAX {
            for c in 0..self.clients.len() {
                self.transmit(c, Wire { read: 0, hold: 0 });
            }
            self.settle();
            let mut moved = false;
            for l in 0..self.links.len() {
                while self.forward(l, MESH_BATCH_MAX) {
                    moved = true;
                }
                while self.consume(l, MESH_BATCH_MAX) {
                    moved = true;
                }
            }
            if !moved && !(0..self.clients.len()).any(|c| self.runnable(c)) {
                return;
            }
        }
        panic!("the hub never settles");
    }

    /// Lets everything arrive and be read, checks the clean clients still
    /// open, shuts every shard down, and checks that nothing was silently
    /// dropped.
    pub fn finish(mut self, first: usize) {
        self.settle_all();
        self.check();
        for c in 0..self.clients.len() {
            self.check_open_client(c);
        }
        if self.crash_at_end {
            self.crash_and_restart();
            self.settle_all();
            self.check();
        }
        // Every durable session offline is resumed and everything acked.
        self.drain_sessions();
        self.check();
        let shards = self.shards.len();
        let deadline = self.now + 1_000_000_000;
        for offset in 0..shards {
            self.shut_down((first + offset) % shards, deadline);
            self.settle_all();
        }
        self.check();
        for (index, shard) in self.shards.iter().enumerate() {
            assert_eq!(
                shard.connections(),
                0,
                "shard {index}: connections left after shutdown"
            );
            assert!(
                shard.is_finished(),
                "shard {index}: shutdown never finishes"
            );
        }
        for link in &self.links {
            assert!(
                link.ring.is_empty() && link.held.is_empty(),
                "mesh not drained"
            );
        }
        tally("shutdowns completed");
        for stats in &self.stats {
            tally_add("core: idle timeouts fired", stats.idle_timeouts.get());
            tally_add("core: frame timeouts fired", stats.frame_timeouts.get());
            tally_add("core: flush deadlines fired", stats.flush_timeouts.get());
            tally_add("core: backpressure waits", stats.backpressure_waits.get());
            tally_add("core: slow consumers cut", stats.slow_consumers.get());
        }
        for c in 0..self.clients.len() {
            self.finish_client(c);
        }
        for (id, record) in &self.relays {
            self.finish_relay(*id, record);
        }
        self.finish_v2();
    }

    /// `Preset::DiskCrash`: the hub dies at once and starts again on its
    /// files. Each shard is recovered by the core from its current
    /// generation (all the harness's batches are written: a crash after
    /// the last write); every connection, mesh message and timer is gone,
    /// every client lost.
    fn crash_and_restart(&mut self) {
        let count = self.shards.len();
        let now = self.now;
        self.stats = (0..count).map(|_| Arc::default()).collect();
        let mut shards = Vec::with_capacity(count);
        for index in 0..count {
            let mut shard =
                Shard::new(index, count, self.limits.clone(), self.stats[index].clone());
            self.files[index].recover(now, &mut shard);
            shards.push(shard);
        }
        self.shards = shards;
        for link in &mut self.links {
            link.held.clear();
            link.ring.clear();
            link.ring_bytes = 0;
            link.parked = false;
            link.woken = false;
        }
        self.timers = (0..count).map(|_| Timer::default()).collect();
        self.shutdown = vec![None; count];
        self.rushed = false;
        self.adopt_due = vec![false; count];
        // Connection ids are the process's: the new one starts again.
        self.ids.clear();
        self.membership.clear();
        self.epoch += 1;
        for client in &mut self.clients {
            client.closed = true;
            client.crashed = true;
            client.hand_off_due = None;
            client.in_hand_off = false;
        }
        self.model.restart(now);
        tally("restarts: hub killed and recovered");
        self.call = Call::PollTimeout;
        for shard in 0..count {
            self.after_call(shard);
            self.poll_timeout(shard);
        }
    }

    /// A clean client still open once everything settled got every answer,
    /// and the hub handled every frame it sent (a paused reader resumed).
    fn check_open_client(&self, c: usize) {
        let client = &self.clients[c];
        if !client.clean || client.closed || client.lost() || !client.welcomed {
            return;
        }
        if client.stopped_reading {
            // Its shard is shutting down: what it sent since is not read.
            return;
        }
        let conn = self.shards[client.shard].conn(client.id).expect("live");
        if conn.state() != ConnState::Open {
            return;
        }
        assert!(
            client.unsent.is_empty() && client.inbox.is_empty(),
            "bytes never read"
        );
        assert_eq!(
            client.handled,
            client.requests.len(),
            "client {c}: frames read but never handled"
        );
        assert!(
            client.pending.is_empty(),
            "client {c}: requests never answered: {:?}",
            client.pending
        );
        if client.v2.is_some() {
            self.check_open_v2(c);
        }
        if client.was_paused {
            tally("paused clients fully answered");
        }
        tally("clean open clients fully answered");
    }

    fn finish_client(&self, c: usize) {
        let client = &self.clients[c];
        assert!(client.closed, "client {c}: its task never ended");
        if client.lost() {
            return;
        }
        if client.stream == Stream::Http {
            assert_eq!(
                client.http_bytes, HTTP_REFUSAL,
                "client {c}: partial HTTP refusal"
            );
            tally("http refusals read whole");
            return;
        }
        if client.adoption_refused {
            return;
        }
        let closing = client.closing.expect("closed connections were closing");
        let by_end = closing.call == Call::ReadEnd(c);
        if !by_end {
            assert!(
                client.got_closing_error(),
                "client {c}: closed ({:?}) without a closing error",
                closing.call
            );
        }
        if !client.clean || client.closing_error == Some(ErrorCode::SlowConsumer) {
            return;
        }
        // A shutdown that ran its phases has every answer in before it
        // closes anyone, and a half-close waits for them unless a shutdown
        // cut its wait short; any other close may lose the answers of lists
        // that were waiting for other shards.
        let phased =
            (client.closing_error == Some(ErrorCode::ShuttingDown) || by_end) && !self.rushed;
        if by_end && !self.rushed && client.v2.is_some() {
            self.check_answered_v2(c, "v2: half-closed clients: relays answered");
        }
        for (request, pending) in &client.pending {
            if !pending.handled {
                continue;
            }
            let may_be_lost =
                matches!(pending.expect, Expect::List { .. }) && self.shards.len() > 1 && !phased;
            assert!(
                may_be_lost,
                "client {c}: handled request {request} never answered ({:?}), closed by {:?}",
                pending.expect, client.closing_error
            );
            tally("list replies lost to a close (documented)");
        }
        if client.closing_error == Some(ErrorCode::ShuttingDown) {
            tally("clients shut down with every answer");
        }
    }

    fn finish_relay(&self, id: u64, record: &RelayRecord) {
        let sender = &self.clients[record.sender];
        if !sender.clean || record.refused || !record.handled {
            return;
        }
        let shards = self.shards.len();
        let sender_lost = sender.lost() || sender.closing_error == Some(ErrorCode::SlowConsumer);
        // A sender that closed before a shutdown's phases ran may miss the
        // errors other shards send it (docs/protocol.md, "Half-close"),
        // unless it half-closed on version 2: it waits for them.
        let half_closed_v2 = sender.v2.is_some()
            && sender
                .closing
                .is_some_and(|closing| closing.call == Call::ReadEnd(record.sender));
        let sender_left = sender.closing.is_some()
            && (self.rushed
                || (sender.closing_error != Some(ErrorCode::ShuttingDown) && !half_closed_v2));
        let mut whole = true;
        for (&user, &expected) in &record.expected {
            let got = record.got.get(&user).copied().unwrap_or(0);
            if got == expected {
                continue;
            }
            whole = false;
            let receiver_lost = self
                .clients
                .iter()
                .any(|client| client.user == user && user != 0 && client.lost());
            let cross = owner(user, shards) != sender.shard;
            // A durable receiver the drain could not follow to the end.
            let durable_excused = self.durable_excused(user);
            assert!(
                sender_lost || receiver_lost || (cross && sender_left) || durable_excused,
                "relay {id} from client {}: receiver {user} named {expected} times, \
                 {got} deliveries and errors (sender closed by {:?})",
                record.sender,
                sender.closing_error
            );
            tally("relay entries lost (documented)");
        }
        if whole {
            tally("relays fully accounted");
        }
    }
}

/// One delivery or error about `user` for relay `id`: never more than the
/// entries naming it (a kept frame is handled exactly once).
fn account(record: &mut RelayRecord, user: u64, id: u64) {
    let expected = record.expected.get(&user).copied().unwrap_or(0);
    let got = record.got.entry(user).or_default();
    *got += 1;
    assert!(
        *got <= expected,
        "relay {id}: {got} deliveries and errors for receiver {user}, named {expected} times"
    );
}

/// When a connection closed at `closing_ms` must have flushed (else it is
/// aborted): `close_flush_ms` later, cut to the end of the grace period if
/// its shard was shutting down, or `GRACE_END_FLUSH_MS` after a close at
/// or past that end (docs/protocol.md, "Connection limit and shutdown").
fn flush_deadline(closing_ms: u64, shutdown_ms: Option<u64>, flush_ms: u64) -> u64 {
    match shutdown_ms {
        Some(end) if closing_ms >= end => closing_ms + flush_ms.min(GRACE_END_FLUSH_MS),
        Some(end) => end.min(closing_ms + flush_ms),
        None => closing_ms + flush_ms,
    }
}

/// True while the core handles the connection's input.
fn takes_input(state: ConnState) -> bool {
    matches!(
        state,
        ConnState::AwaitPreface | ConnState::AwaitHello | ConnState::Open
    )
}

/// A handed-over connection the owner refuses gets the version-2 preface
/// and `Error(ServerFull)`.
fn check_refusal_v2(bytes: &[u8], connections_max: u64) {
    let preface = relayhub_protocol::preface_for(VERSION_2);
    assert!(
        bytes.starts_with(&preface),
        "a refusal without the v2 preface"
    );
    let archive = crate::aligned(&bytes[preface.len()..]);
    let (frame, len) = relayhub_protocol::decode_frame_version::<ClientSideV2>(VERSION_2, &archive)
        .expect("a refusal decodes as one frame");
    assert_eq!(len, archive.len(), "a refusal is one frame");
    let HubMessageV2::Error(error) = frame.to_owned() else {
        panic!("a refusal that is not an error")
    };
    assert_eq!(
        (error.code, error.request, error.detail),
        (ErrorCode::ServerFull.to_wire(), 0, connections_max),
        "a hand-off refusal that is not ServerFull"
    );
    tally("refusals checked: server full after a hand-off");
}

/// A refused connection gets the hub's preface and `Error(ServerFull)`.
fn check_refusal(bytes: &[u8], connections_max: u64) {
    assert!(bytes.starts_with(&PREFACE), "a refusal without the preface");
    let archive = crate::aligned(&bytes[PREFACE.len()..]);
    let (frame, len) =
        decode_frame::<ClientSide>(&archive).expect("a refusal decodes as one frame");
    assert_eq!(len, archive.len(), "a refusal is one frame");
    let HubMessage::Error(error) = frame.to_owned() else {
        panic!("a refusal that is not an error")
    };
    assert_eq!(
        (error.code, error.request, error.detail),
        (ErrorCode::ServerFull.to_wire(), 0, connections_max),
        "a refusal that is not ServerFull"
    );
    tally("refusals checked: server full");
}
