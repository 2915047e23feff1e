//! The `hub_session` harness: the hub's IO-free core (`Shard`, `Session`,
//! `Outbound` from relayhub-server) driven in memory, the way the glommio
//! driver (server/src/driver.rs) drives it, by a fuzz-chosen sequence of
//! client operations and raw byte chunks. No sockets, no executor, no clock.
//!
//! Each client has the hub's side of its connection (a `Session` on one of
//! one or two shards) and its own side: a `Decoder<ClientSide>` that every
//! byte the hub queues for it is written into. Mesh messages between the
//! two shards move only when the input says so, so replies, deliveries and
//! error reports cross in any order the rings allow.
//!
//! Checked after every operation and at the end (see [`Harness::check`]
//! and [`Harness::finish`]): no panic (the server's debug assertions are
//! on); every byte the hub sends decodes (a preface, a welcome, then valid
//! frames; or the HTTP refusal) and every error code is a known one; an
//! error that closes is the last frame and the connection is closing; a
//! session that says `Close` ends with such an error; queued outbound bytes
//! stay within the configured limit (plus the one closing error the limit
//! lets through) and the decoder within `DECODER_BYTES_MAX`; the shard's
//! table holds exactly the registered open connections. For clients that
//! only ever sent well-formed frames: the hub never calls them malformed,
//! every echo, identity and list gets exactly one correct reply, and every
//! relay accounts for each receiver, a delivery of the exact body or an
//! error naming it (no silent drops).

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet, HashMap},
    io::IoSlice,
    sync::Arc,
    task::Waker,
};

use arbitrary::Arbitrary;
use bytes::BytesMut;
use relayhub_protocol::{
    deliver_frame_len, encode, Decoder, EchoRef, ErrorCode, HubMessage, Identity, List, RelayRef,
    Welcome, BODY_BYTES_MAX, DECODER_BYTES_MAX, HTTP_REFUSAL, LIST_PAGE_USERS_MAX, PREFACE,
    RECEIVERS_MAX,
};
use relayhub_server::{
    outbound::OutboundState,
    session::{Flow, Session},
    shard::{MeshMessage, Shard},
    stats::ShardStats,
};

/// Most clients one input connects (more `Connect`s are ignored).
pub const CLIENTS_MAX: usize = 8;

/// Most operations one input runs.
pub const OPS_MAX: usize = 160;

/// Bytes the driver reads from a socket at once (`driver::SHARD_READ_BYTES`).
pub const SHARD_READ_BYTES: usize = 64 << 10;

/// Messages a forwarder moves per batch (`driver::MESH_BATCH_MAX`).
pub const MESH_BATCH_MAX: usize = 256;

/// Most reads one send is cut into: a 1 MiB frame is not read bytewise.
pub const READS_PER_SEND_MAX: usize = 256;

/// Most bodies of `BODY_BYTES_MAX` (or one more) per input.
pub const LARGE_BODIES_MAX: usize = 1;

thread_local! {
    static TALLY: RefCell<BTreeMap<&'static str, u64>> = const { RefCell::new(BTreeMap::new()) };
}

/// Counts one exercised check (see [`take_tally`]).
fn tally(what: &'static str) {
    TALLY.with(|tally| *tally.borrow_mut().entry(what).or_default() += 1);
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

/// The hub's per-connection outbound limit for this input.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum OutboundLimit {
    /// 256 bytes: room for the preface, the welcome and a few replies.
    Tiny,
    /// 4 KiB.
    Small,
    /// 64 KiB.
    Medium,
    /// One maximal delivery and a little more.
    OneDelivery,
    /// The hub's default, 8 MiB.
    Default,
}

impl OutboundLimit {
    /// The limit in bytes.
    pub fn bytes(self) -> usize {
        match self {
            OutboundLimit::Tiny => 256,
            OutboundLimit::Small => 4 << 10,
            OutboundLimit::Medium => 64 << 10,
            OutboundLimit::OneDelivery => deliver_frame_len(BODY_BYTES_MAX) + (4 << 10),
            OutboundLimit::Default => 8 << 20,
        }
    }
}

/// A body: the given bytes (at most 4 KiB), or rarely exactly
/// `BODY_BYTES_MAX` or one byte more.
#[derive(Arbitrary, Clone, Debug)]
pub struct Body {
    /// 0xA5: `BODY_BYTES_MAX`; 0xA6: one more (refused).
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

/// One step of the input.
#[derive(Arbitrary, Clone, Debug)]
pub enum Op {
    /// A client connects to a shard.
    Connect {
        /// The shard (modulo the shard count).
        shard: u8,
    },
    /// A client sends the preface.
    Preface {
        /// The client (modulo the client count).
        client: u8,
        /// Read size (see [`read_size`]).
        read: u16,
    },
    /// A client sends one well-formed request.
    Request {
        /// The client.
        client: u8,
        /// The request.
        request: Request,
        /// Read size.
        read: u16,
    },
    /// A client sends an HTTP request (random bytes hardly ever spell one).
    Http {
        /// The client.
        client: u8,
        /// Read size.
        read: u16,
    },
    /// A client sends raw bytes (garbage, partial frames, anything).
    Raw {
        /// The client.
        client: u8,
        /// The bytes.
        bytes: Vec<u8>,
        /// Read size.
        read: u16,
    },
    /// The hub writes up to `bytes` (0: everything) to a client.
    Drain {
        /// The client.
        client: u8,
        /// Byte budget of this write.
        bytes: u16,
    },
    /// Up to `max` mesh messages move from shard `from` to the other one.
    Mesh {
        /// The sending shard.
        from: u8,
        /// Most messages moved.
        max: u8,
    },
    /// A client half-closes: the hub reads end of stream.
    Eof {
        /// The client.
        client: u8,
    },
    /// A client's idle timeout fires.
    Idle {
        /// The client.
        client: u8,
    },
    /// A client's connection is reset: queued bytes are lost.
    Reset {
        /// The client.
        client: u8,
    },
    /// A shard closes every connection (shutdown).
    CloseAll {
        /// The shard.
        shard: u8,
    },
}

/// One `hub_session` input.
#[derive(Arbitrary, Clone, Debug)]
pub struct SessionInput {
    /// One shard or two (two exercise the mesh).
    pub two_shards: bool,
    /// Connections per shard, 1 + this modulo 8.
    pub connections_max: u8,
    /// Outbound bytes per connection.
    pub limit: OutboundLimit,
    /// The operations, in order (at most [`OPS_MAX`]).
    pub ops: Vec<Op>,
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

/// A relay sent by a clean client, and what became of each receiver.
#[derive(Debug)]
struct RelayRecord {
    sender: usize,
    body: Vec<u8>,
    receivers: usize,
    /// Refused by the decoder (over a limit): never routed.
    refused: bool,
    /// Deliveries read by receivers plus per-receiver errors read by the
    /// sender.
    outcomes: usize,
    /// Resets so far when sent: a later reset may lose a delivery.
    resets: u64,
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

/// One client: the hub's side of its connection and its own view.
struct Client {
    shard: usize,
    session: Session,
    /// The driver still reads from this connection.
    reading: bool,
    /// The writer finished (closing and drained, or reset).
    writer_done: bool,
    /// `Shard::disconnect` was called.
    disconnected: bool,
    reset: bool,
    /// Sent only the preface then harness-built frames.
    clean: bool,
    preface_sent: bool,
    /// The session answered `Flow::Close`.
    saw_close_flow: bool,
    /// The hub closed because of end of stream (no error frame then).
    closed_by_eof: bool,
    stream: Stream,
    http_bytes: Vec<u8>,
    view: Decoder<relayhub_protocol::ClientSide>,
    welcome_user: Option<u64>,
    /// A closing error was read: nothing may follow it.
    closing_error: Option<ErrorCode>,
    pending: HashMap<u64, Expect>,
}

/// The hub in memory and every client.
pub struct Harness {
    shards: Vec<Shard>,
    connections_max: usize,
    outbound_bytes_max: usize,
    error_frame_len: usize,
    clients: Vec<Client>,
    relays: HashMap<u64, RelayRecord>,
    next_request: u64,
    large_bodies: usize,
    resets: u64,
    epoch: u64,
    membership: BTreeSet<u64>,
}

/// Read size of a send of `len` bytes: `read` mapped into
/// `1 ..= SHARD_READ_BYTES`, at least `len / READS_PER_SEND_MAX`.
pub fn read_size(read: u16, len: usize) -> usize {
    (usize::from(read) % SHARD_READ_BYTES + 1).max(len / READS_PER_SEND_MAX)
}

impl Harness {
    /// A hub with the input's shards and limits, and no clients.
    pub fn new(input: &SessionInput) -> Harness {
        let shard_count = if input.two_shards { 2 } else { 1 };
        let connections_max = usize::from(input.connections_max % 8) + 1;
        let outbound_bytes_max = input.limit.bytes();
        let shards = (0..shard_count)
            .map(|index| {
                let stats = Arc::new(ShardStats::default());
                Shard::new(
                    index,
                    shard_count,
                    connections_max,
                    outbound_bytes_max,
                    stats,
                )
            })
            .collect();
        Harness {
            shards,
            connections_max,
            outbound_bytes_max,
            error_frame_len: error_frame_len(),
            clients: Vec::new(),
            relays: HashMap::new(),
            next_request: 1,
            large_bodies: 0,
            resets: 0,
            epoch: 0,
            membership: BTreeSet::new(),
        }
    }

    /// Runs the whole input, checking after every step and at the end.
    pub fn run(input: &SessionInput) {
        let mut harness = Harness::new(input);
        for op in input.ops.iter().take(OPS_MAX) {
            harness.step(op);
            harness.check();
        }
        harness.finish();
    }

    fn client_index(&self, client: u8) -> Option<usize> {
        (!self.clients.is_empty()).then(|| usize::from(client) % self.clients.len())
    }

    /// Applies one operation.
    pub fn step(&mut self, op: &Op) {
        match op {
            Op::Connect { shard } => self.connect(usize::from(*shard) % self.shards.len()),
            Op::Mesh { from, max } => {
                let from = usize::from(*from) % self.shards.len();
                self.forward(from, usize::from(*max).max(1));
            }
            Op::CloseAll { shard } => {
                let shard = usize::from(*shard) % self.shards.len();
                self.shards[shard].close_all(ErrorCode::ShuttingDown);
            }
            Op::Preface { client, read } => {
                if let Some(c) = self.client_index(*client) {
                    if self.clients[c].preface_sent {
                        self.clients[c].clean = false;
                    }
                    self.clients[c].preface_sent = true;
                    self.send(c, &PREFACE, *read);
                }
            }
            Op::Request {
                client,
                request,
                read,
            } => {
                if let Some(c) = self.client_index(*client) {
                    let bytes = self.request(c, request);
                    self.send(c, &bytes, *read);
                }
            }
            Op::Http { client, read } => {
                if let Some(c) = self.client_index(*client) {
                    self.clients[c].clean = false;
                    self.send(c, b"GET /relay HTTP/1.1\r\nHost: relayhub\r\n\r\n", *read);
                }
            }
            Op::Raw {
                client,
                bytes,
                read,
            } => {
                if let Some(c) = self.client_index(*client) {
                    if !bytes.is_empty() {
                        self.clients[c].clean = false;
                    }
                    self.send(c, bytes, *read);
                }
            }
            Op::Drain { client, bytes } => {
                if let Some(c) = self.client_index(*client) {
                    let budget = if *bytes == 0 {
                        usize::MAX
                    } else {
                        usize::from(*bytes)
                    };
                    self.drain(c, budget);
                }
            }
            Op::Eof { client } => {
                if let Some(c) = self.client_index(*client) {
                    self.end_of_stream(c);
                }
            }
            Op::Idle { client } => {
                if let Some(c) = self.client_index(*client) {
                    self.idle_timeout(c);
                }
            }
            Op::Reset { client } => {
                if let Some(c) = self.client_index(*client) {
                    self.reset(c);
                }
            }
        }
        self.update_membership();
    }

    fn connect(&mut self, shard: usize) {
        if self.clients.len() >= CLIENTS_MAX {
            return;
        }
        let open = self
            .clients
            .iter()
            .filter(|c| c.shard == shard && !c.disconnected)
            .count();
        match self.shards[shard].accept() {
            Ok(conn) => {
                assert!(open < self.connections_max, "accepted past connections_max");
                self.clients.push(Client {
                    shard,
                    session: Session::new(conn),
                    reading: true,
                    writer_done: false,
                    disconnected: false,
                    reset: false,
                    clean: true,
                    preface_sent: false,
                    saw_close_flow: false,
                    closed_by_eof: false,
                    stream: Stream::Unknown,
                    http_bytes: Vec::new(),
                    view: Decoder::new(),
                    welcome_user: None,
                    closing_error: None,
                    pending: HashMap::new(),
                });
            }
            Err(code) => {
                assert_eq!(code, ErrorCode::ServerFull);
                assert_eq!(open, self.connections_max, "refused below connections_max");
            }
        }
    }

    fn user_of(&self, target: Target) -> u64 {
        match target {
            Target::Id(id) => id,
            Target::Client(index) => self
                .client_index(index)
                .map_or(0, |c| self.clients[c].session.user()),
        }
    }

    fn body(&mut self, body: &Body) -> Vec<u8> {
        let large = match body.size {
            0xA5 => Some(BODY_BYTES_MAX),
            0xA6 => Some(BODY_BYTES_MAX + 1),
            _ => None,
        };
        match large {
            Some(len) if self.large_bodies < LARGE_BODIES_MAX => {
                self.large_bodies += 1;
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
                self.relay(c, id, &receivers, body, &mut out);
            }
            Request::RelayRepeated {
                receiver,
                count,
                body,
            } => {
                let receivers = vec![self.user_of(*receiver); usize::from(*count) % 300];
                self.relay(c, id, &receivers, body, &mut out);
            }
        }
        out.to_vec()
    }

    fn expect(&mut self, c: usize, id: u64, expect: Expect) {
        let client = &mut self.clients[c];
        if !client.preface_sent {
            // These bytes are what the hub takes for a preface.
            client.clean = false;
        }
        client.pending.insert(id, expect);
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
        let record = RelayRecord {
            sender: c,
            body,
            receivers: receivers.len(),
            refused: refusal.is_some(),
            outcomes: 0,
            resets: self.resets,
        };
        self.relays.insert(id, record);
    }

    /// The client sends `bytes`; the driver reads them in reads of
    /// `read_size` and processes after each read, as `driver::read_loop`.
    fn send(&mut self, c: usize, bytes: &[u8], read: u16) {
        if !self.clients[c].reading {
            return;
        }
        let size = read_size(read, bytes.len());
        let mut rest = bytes;
        while !rest.is_empty() {
            let client = &mut self.clients[c];
            let decoder = client.session.decoder();
            let take = if decoder.buffered_len() > 0 {
                let spare = decoder.spare();
                let take = spare.len().min(rest.len()).min(size);
                spare[..take].copy_from_slice(&rest[..take]);
                decoder.commit(take);
                take
            } else {
                let take = rest.len().min(size).min(SHARD_READ_BYTES);
                decoder.handle_bytes(&rest[..take]);
                take
            };
            rest = &rest[take..];
            assert!(
                decoder.capacity() <= DECODER_BYTES_MAX,
                "session decoder holds {} bytes",
                decoder.capacity()
            );
            let flow = client.session.process(&mut self.shards[client.shard]);
            if client.session.decoder().buffered_len() == 0 {
                client.session.decoder().release_idle();
            }
            if flow == Flow::Close {
                client.saw_close_flow = true;
                let state = client.session.conn().borrow().state();
                assert_eq!(
                    state,
                    OutboundState::Closing,
                    "Flow::Close on an open outbound"
                );
                self.stop_reading(c);
                return;
            }
        }
    }

    /// `driver::finish_reading`: the reader stopped; a closing connection
    /// becomes unreachable.
    fn stop_reading(&mut self, c: usize) {
        let client = &mut self.clients[c];
        if !client.reading {
            return;
        }
        client.reading = false;
        if client.session.conn().borrow().state() == OutboundState::Closing {
            self.shards[client.shard].forget(client.session.user());
        }
        self.maybe_disconnect(c);
    }

    /// `driver::sweep_idle`: an open connection idle for the timeout gets
    /// the hub's preface if it has not had it, `Error(IdleTimeout)`, and its
    /// reader stopped (`SHUT_RD`, so the reader sees the end of stream).
    fn idle_timeout(&mut self, c: usize) {
        let conn = self.clients[c].session.conn().clone();
        let mut outbound = conn.borrow_mut();
        if outbound.state() != OutboundState::Open {
            return;
        }
        if !outbound.greeted {
            let _ = outbound.push_raw(&PREFACE);
        }
        outbound.close(Some((ErrorCode::IdleTimeout, 0, 1000)));
        drop(outbound);
        self.end_of_stream(c);
    }

    fn end_of_stream(&mut self, c: usize) {
        let client = &mut self.clients[c];
        if !client.reading {
            return;
        }
        let mut conn = client.session.conn().borrow_mut();
        if conn.state() == OutboundState::Open {
            conn.close(None);
            client.closed_by_eof = true;
        }
        drop(conn);
        self.stop_reading(c);
    }

    fn reset(&mut self, c: usize) {
        if self.clients[c].disconnected {
            return;
        }
        self.resets += 1;
        let client = &mut self.clients[c];
        client.reset = true;
        client.writer_done = true;
        if client.reading {
            let mut conn = client.session.conn().borrow_mut();
            if conn.state() == OutboundState::Open {
                conn.close(None);
                client.closed_by_eof = true;
            }
        }
        self.stop_reading(c);
        self.maybe_disconnect(c);
    }

    /// `driver::serve`'s end: once reading and writing are both over.
    fn maybe_disconnect(&mut self, c: usize) {
        let client = &mut self.clients[c];
        if client.writer_done && !client.reading && !client.disconnected {
            client.disconnected = true;
            self.shards[client.shard].disconnect(client.session.user());
        }
    }

    /// The writer sends up to `budget` bytes to the client, which reads
    /// them; a closing, drained outbound ends the writer.
    fn drain(&mut self, c: usize, mut budget: usize) {
        if self.clients[c].writer_done {
            return;
        }
        // Replies read below are judged against the membership of now.
        self.update_membership();
        let conn = self.clients[c].session.conn().clone();
        while budget > 0 {
            let bytes: Vec<u8> = {
                let outbound = conn.borrow();
                let mut slices: Vec<IoSlice<'_>> = Vec::new();
                outbound.slices(&mut slices);
                slices
                    .iter()
                    .flat_map(|slice| slice.iter().copied())
                    .take(budget)
                    .collect()
            };
            if bytes.is_empty() {
                break;
            }
            conn.borrow_mut().advance(bytes.len());
            budget -= bytes.len();
            self.read_by_client(c, &bytes);
        }
        let outbound = conn.borrow();
        if outbound.state() == OutboundState::Closing && outbound.is_empty() {
            drop(outbound);
            self.clients[c].writer_done = true;
            // The writer shuts the socket down: the reader sees the end.
            if self.clients[c].reading {
                self.stop_reading(c);
            }
            self.maybe_disconnect(c);
        }
    }

    /// The client reads bytes the hub wrote to it.
    fn read_by_client(&mut self, c: usize, bytes: &[u8]) {
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
    }

    fn read_message(&mut self, c: usize, message: HubMessage) {
        let client = &self.clients[c];
        assert_eq!(
            client.closing_error, None,
            "client {c} got {message:?} after a closing error"
        );
        if client.welcome_user.is_none() {
            let is_welcome = matches!(message, HubMessage::Welcome(_));
            let is_closing_error = matches!(&message, HubMessage::Error(e)
                if ErrorCode::from_wire(e.code).is_some_and(ErrorCode::closes_connection));
            assert!(
                is_welcome || is_closing_error,
                "first frame is neither a welcome nor a closing error: {message:?}"
            );
        }
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
                    assert_eq!(Some(reply.user), self.clients[c].welcome_user);
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
        let client = &mut self.clients[c];
        assert_eq!(client.welcome_user, None, "a second welcome");
        let user = welcome.user;
        assert_ne!(user, 0, "user id 0 is reserved");
        assert_eq!(user, client.session.user(), "welcome names another user");
        assert_eq!(
            (user % self.shards.len() as u64) as usize,
            client.shard,
            "user {user} is not owned by its shard"
        );
        assert_eq!(welcome, Welcome::with_protocol_limits(user));
        client.welcome_user = Some(user);
        tally("welcomes checked");
        let others = self.clients.iter().filter(|o| o.welcome_user == Some(user));
        assert_eq!(others.count(), 1, "user id {user} handed out twice");
    }

    fn read_error(&mut self, c: usize, error: relayhub_protocol::Error) {
        let code = ErrorCode::from_wire(error.code)
            .unwrap_or_else(|| panic!("the hub sent unknown error code {}", error.code));
        let client = &mut self.clients[c];
        if code.closes_connection() {
            tally(match code {
                ErrorCode::SlowConsumer => "closing errors: slow consumer",
                ErrorCode::ShuttingDown => "closing errors: shutting down",
                ErrorCode::IdleTimeout => "closing errors: idle timeout",
                _ => "closing errors: protocol",
            });
            client.closing_error = Some(code);
            let state = client.session.conn().borrow().state();
            assert_eq!(
                state,
                OutboundState::Closing,
                "{code:?} sent, connection open"
            );
            if client.clean {
                assert!(
                    matches!(
                        code,
                        ErrorCode::SlowConsumer | ErrorCode::IdleTimeout | ErrorCode::ShuttingDown
                    ),
                    "well-formed frames refused with {code:?} (detail {})",
                    error.detail
                );
            }
            return;
        }
        if !client.clean {
            return;
        }
        match code {
            ErrorCode::UnknownReceiver | ErrorCode::ReceiverDropped => {
                let record = self.relays.get_mut(&error.request).unwrap_or_else(|| {
                    panic!("{code:?} about request {}, no relay", error.request)
                });
                assert_eq!(record.sender, c, "{code:?} reported to another client");
                assert!(!record.refused, "a refused relay was routed");
                record.outcomes += 1;
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

    fn take_expected(&mut self, c: usize, request: u64) -> Option<Expect> {
        let client = &mut self.clients[c];
        let expect = client.pending.remove(&request);
        if client.clean {
            assert!(
                expect.is_some(),
                "a reply to request {request} nobody waits for"
            );
        }
        expect
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
        let me = self.clients[c].welcome_user.expect("welcomed");
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
                .range(after.saturating_add(1)..)
                .copied()
                .filter(|&u| u != me && after != u64::MAX)
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
        let Some(sender) = self.clients.iter().position(|o| o.session.user() == from) else {
            panic!("a delivery from {from}, who was never registered")
        };
        if !self.clients[sender].clean {
            return;
        }
        let id = u64::from_le_bytes(deliver.body[..8].try_into().expect("8 bytes"));
        let record = self
            .relays
            .get_mut(&id)
            .unwrap_or_else(|| panic!("client {c} got a delivery of unknown relay {id}"));
        assert_eq!(record.sender, sender, "delivery names another sender");
        assert!(record.body == deliver.body, "delivery with another body");
        assert!(!record.refused, "a refused relay was delivered");
        record.outcomes += 1;
        tally("deliveries checked");
    }

    fn forward(&mut self, from: usize, max: usize) {
        let to = (from + 1) % self.shards.len();
        if to == from {
            return;
        }
        // In batches, as the forwarder moves them; messages the receiving
        // shard sends back wait for another call.
        let mut left = max;
        let mut batch: Vec<MeshMessage> = Vec::new();
        while left > 0 {
            let take = left.min(MESH_BATCH_MAX);
            self.shards[from].take_outbox(to, take, &mut batch, Waker::noop());
            if batch.is_empty() {
                break;
            }
            left -= batch.len();
            for message in batch.drain(..) {
                tally("mesh messages moved");
                self.shards[to].handle_mesh(message);
                // A report may cut a slow consumer while a list is answered.
                self.update_membership();
            }
        }
    }

    /// Registered users with an open outbound: who the shards' tables must
    /// hold. A change starts a new epoch.
    fn update_membership(&mut self) {
        let membership: BTreeSet<u64> = self
            .clients
            .iter()
            .filter(|c| c.session.user() != 0 && !c.disconnected)
            .filter(|c| c.session.conn().borrow().state() == OutboundState::Open)
            .map(|c| c.session.user())
            .collect();
        if membership != self.membership {
            self.membership = membership;
            self.epoch += 1;
        }
    }

    /// Invariants that hold between any two operations.
    pub fn check(&self) {
        for (index, shard) in self.shards.iter().enumerate() {
            let members = self
                .membership
                .iter()
                .filter(|&&u| (u % self.shards.len() as u64) as usize == index)
                .count();
            assert_eq!(
                shard.connected(),
                members,
                "shard {index} table != open users"
            );
            let open = self
                .clients
                .iter()
                .filter(|c| c.shard == index && !c.disconnected)
                .count();
            let gauge = shard.stats().connections_open.get();
            assert_eq!(gauge, open as u64, "shard {index} connections_open");
        }
        for (c, client) in self.clients.iter().enumerate() {
            if client.disconnected {
                continue;
            }
            let outbound = client.session.conn().borrow();
            assert!(
                outbound.queued_bytes() <= self.outbound_bytes_max + self.error_frame_len,
                "client {c}: {} bytes queued, limit {}",
                outbound.queued_bytes(),
                self.outbound_bytes_max
            );
            if client.saw_close_flow {
                assert_eq!(outbound.state(), OutboundState::Closing);
            }
        }
    }

    /// Lets every mesh message arrive and every byte be written, then
    /// checks that nothing was silently dropped.
    pub fn finish(mut self) {
        for _ in 0..16 {
            for from in 0..self.shards.len() {
                self.forward(from, usize::MAX);
            }
            for c in 0..self.clients.len() {
                self.drain(c, usize::MAX);
            }
            self.update_membership();
            self.check();
            if self.shards.iter().all(|s| s.outbox_backlog() == 0) {
                break;
            }
        }
        assert!(
            self.shards.iter().all(|s| s.outbox_backlog() == 0),
            "the mesh never settles"
        );
        for (c, client) in self.clients.iter().enumerate() {
            self.finish_client(c, client);
        }
        for (id, record) in &self.relays {
            self.finish_relay(*id, record);
        }
    }

    fn finish_client(&self, c: usize, client: &Client) {
        if client.reset {
            return;
        }
        if client.stream == Stream::Http {
            assert_eq!(
                client.http_bytes, HTTP_REFUSAL,
                "client {c}: partial HTTP refusal"
            );
            return;
        }
        let closing = client.session.conn().borrow().state() == OutboundState::Closing;
        if client.saw_close_flow || (closing && !client.closed_by_eof) {
            assert!(
                client.closing_error.is_some(),
                "client {c}: closed without a closing error"
            );
        }
        if client.clean && !closing && client.welcome_user.is_some() {
            assert!(
                client.pending.is_empty(),
                "client {c}: requests never answered: {:?}",
                client.pending
            );
            tally("clean open clients fully answered");
        }
    }

    fn finish_relay(&self, id: u64, record: &RelayRecord) {
        let sender = &self.clients[record.sender];
        let open = sender.session.conn().borrow().state() == OutboundState::Open;
        if !sender.clean || !open || sender.welcome_user.is_none() || record.resets != self.resets {
            return;
        }
        // A refusal is a pending expectation, checked in `finish_client`.
        if !record.refused {
            assert_eq!(
                record.outcomes, record.receivers,
                "relay {id}: {} receivers but {} deliveries and errors",
                record.receivers, record.outcomes
            );
            tally("relays fully accounted");
        }
    }
}
