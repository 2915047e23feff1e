//! The traffic engine of one executor: senders, receivers, window
//! accounting, pacing and the drain, as one readiness loop.
//!
//! Connections are opened and handshaken on glommio ([`crate::client`]);
//! then their sockets are taken over by a plain `epoll` loop on the same
//! thread ([`crate::poll`] says why). One loop turn:
//!
//! 1. `epoll_pwait2` until something is readable or writable, or the next
//!    deadline (open-loop send time, progress flush, end of the run);
//! 2. every readable socket: one `recv` into the connection's receive
//!    buffer (more while a read fills it), the clock read once, every
//!    complete message decoded in place, checked (sequence), timed
//!    (histogram) and credited to its sender's window;
//! 3. every sender with something to say: its messages appended to its
//!    outbound buffer (pre-encoded templates, see [`crate::wire::template`])
//!    and one `send` for all of them.
//!
//! So a sender whose 16 messages came back in one read sends the next 16
//! in one write, whatever the number of connections; a fan-out sender
//! whose deliveries arrive on many connections in one turn writes once.
//! Nothing is allocated per message. Open loop: one pacer per executor
//! scans the senders whose next send time has come, and the loop sleeps
//! until the earliest one (nanosecond timeout, timer slack 1 ns).
//!
//! Durable runs (`--durable`, see [`crate::durable`]): a publication is
//! done when the server acknowledges it (relayhub `Stored`, JetStream's
//! publish ack), and the closed-loop window counts those not yet done;
//! receivers drop copies by sequence (client-side dedup) and ack once per
//! read batch. With `--reconnect-share`, chosen receivers close their
//! connection at random moments and open a new one in the same loop (a
//! non-blocking connect, then relayhub's `Hello::resume` or NATS'
//! `CONNECT`+`SUB`); a relayhub client also sends its unacknowledged
//! relays again with the same `message_id`.
//!
//! `--pick random` (relay): each message's receiver is drawn when it is
//! encoded, among the executor's other clients, and written with that
//! receiver's template (one per local client, shared by all senders); the
//! header carries the message's number in its (sender, receiver) pair,
//! which the receiver's [`SenderCheckers`] handed out.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use hdrhistogram::Histogram;
use relayhub_protocol::flags::{self as relay_flag, REDELIVERY};

use crate::checker::{Arrival, SenderCheckers};
use crate::client::Client;
use crate::config::{JetStreamAck, Load, RunConfig};
use crate::durable::{Dedup, IdDedup, SeqDedup, StreamDedup, Unstored};
use crate::engine::{
    new_histogram, Clock, ExecutorResult, Shared, ERROR_SAMPLES_MAX, FLUSH_INTERVAL,
    WRITE_BATCH_BYTES_MAX,
};
use crate::error::LoadgenError;
use crate::header::{BodyTemplate, Header, HEADER_BYTES};
use crate::outbound::{Flushed, Outbound, LARGE_BODY_BYTES};
use crate::plan::{other_client, Pick, SplitMix64, Topology};
use crate::poll::{self, Epoll, Io, Ready};
use crate::target::TargetKind;
use crate::wire::inbound::Inbound;
use crate::wire::template::Template;
use crate::wire::{nats, relayhub, resp, Event, WireError};

/// Events taken per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 512;

/// Open loop: when the next send is due within this, the loop polls
/// (`epoll_wait` with a zero timeout) instead of sleeping. A sleep and its
/// wake-up cost this VM about 10 us of CPU, and a thread that sleeps
/// between sends wakes late whenever anything else wants its core (send
/// lag p99 of 0.5-2 ms at 25,000/s on a shared machine, 15-50 us when
/// polling at 50,000/s). So from 10,000 publications/s per loadgen thread
/// up (64 senders) the open loop polls: its CPU use reads ~100% by design,
/// and the send lag it reports says whether it kept the schedule.
const OPEN_LOOP_SPIN_NS: u64 = 100_000;

/// Counters local to one executor, flushed to [`Shared`].
struct LocalStats {
    histogram: Histogram<u64>,
    /// Open loop: actual minus scheduled send time of every message.
    lag: Histogram<u64>,
    unflushed_deliveries: u64,
    unflushed_errors: u64,
    result: ExecutorResult,
}

impl LocalStats {
    fn new() -> Self {
        LocalStats {
            histogram: new_histogram(),
            lag: new_histogram(),
            unflushed_deliveries: 0,
            unflushed_errors: 0,
            result: ExecutorResult::default(),
        }
    }

    fn error(&mut self, text: impl FnOnce() -> String) {
        self.result.errors += 1;
        self.unflushed_errors += 1;
        if self.result.error_samples.len() < ERROR_SAMPLES_MAX {
            self.result.error_samples.push(text());
        }
    }

    fn flush(&mut self, shared: &Shared) {
        shared
            .deliveries
            .fetch_add(self.unflushed_deliveries, Ordering::Relaxed);
        shared
            .errors
            .fetch_add(self.unflushed_errors, Ordering::Relaxed);
        self.unflushed_deliveries = 0;
        self.unflushed_errors = 0;
        if !self.histogram.is_empty() {
            let mut total = shared.histogram.lock().expect("histogram lock");
            total.add(&self.histogram).expect("same bounds");
            self.histogram.reset();
        }
    }
}

/// Which stream a connection carries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Deliveries (and, on NATS, relayhub and the sink, everything else).
    Subscriber,
    /// Redis' publisher connection: PUBLISH replies.
    Publisher,
}

/// Where a connection is in its life (durable runs reconnect).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Usable.
    Ready,
    /// A non-blocking connect in progress (watched for writing).
    Connecting,
    /// Connected and handshake written; waiting for relayhub's
    /// `WelcomeV2` or NATS' `PONG`.
    Handshake,
}

/// One socket.
struct Conn {
    fd: OwnedFd,
    /// The local client it belongs to.
    client: usize,
    role: Role,
    inbound: Inbound,
    open: bool,
    phase: Phase,
    /// Watched for writing on behalf of its receiver's control bytes (a
    /// subscriber connection that is not its sender's).
    watching: bool,
}

/// How a sender's publications are encoded.
enum Encoding {
    /// One template per frame of a publication (one for relayhub and the
    /// sink, one per receiver for NATS and Redis). `--pick random`: none,
    /// the drawn receiver's template is in [`RandomPick`].
    Templates(Vec<Template>),
    /// The encoder per message (a layout no template fits; not expected).
    PerMessage,
}

/// How a publication is written from its templates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// A large body: the head is copied, the filler after it referenced
    /// (see [`Outbound`]).
    Large,
    /// The template holds the whole message with the run's body
    /// ([`Template::fill`]): one copy, then the header and request patched.
    Filled,
    /// Prefix, body, suffix copied (templates too many to fill).
    Whole,
}

/// `--pick random`: what drawing and encoding each message's receiver needs.
struct RandomPick {
    rng: SplitMix64,
    /// What senders name each local client by.
    addresses: Vec<u64>,
    /// A relay to each local client, from any sender (the templates do not
    /// name the sender); `None`: encoded per message.
    templates: Option<Vec<Template>>,
    layout: Layout,
}

/// `--pick random` fills its templates (one per local client) while they
/// take at most this many bytes together.
const PICK_FILLED_BYTES_MAX: usize = 16 << 20;

/// One sending client.
struct Sender {
    /// Publications sent (the next sequence number).
    sent: u64,
    /// Deliveries of this sender's messages, over all its receivers.
    delivered: u64,
    /// Addresses of the receivers (user ids or client indices).
    receivers: Vec<u64>,
    encoding: Encoding,
    /// The connection it writes on.
    conn: usize,
    /// Bytes encoded and not yet written.
    out: Outbound,
    /// The socket was full: watching it for room.
    blocked: bool,
    /// NATS asked this connection for a PONG.
    pong_due: bool,
    /// In the write queue.
    queued: bool,
    /// A write failed: it sends nothing more.
    dead: bool,
    /// Open loop: when sender `i` of N sends publication `k`:
    /// `phase_ns + k * interval_ns`.
    phase_ns: f64,
    /// Durable runs: publications not yet acknowledged by the server.
    unstored: Unstored,
    /// relayhub with `--receipts`: receipts received (after dedup by the
    /// sender's inbox `seq`).
    receipts: u64,
}

/// One receiving client: a checker per sender that sends to it.
struct Receiver {
    checkers: SenderCheckers,
    /// The connection deliveries arrive on.
    conn: usize,
    /// relayhub durable: dedup by inbox `seq`, and what to ack.
    seq_dedup: SeqDedup,
    /// JetStream: dedup by stream sequence.
    stream_dedup: Option<StreamDedup>,
    /// Redis Streams: dedup by entry id; reading pending entries (after a
    /// reconnect) from `redis_from`, else new ones (`>`).
    id_dedup: IdDedup,
    redis_pending: bool,
    redis_from: Vec<u8>,
    /// JetStream ack-all: the `$JS.ACK` subject of this batch's newest
    /// delivery, and its consumer sequence.
    ack_reply: Vec<u8>,
    ack_reply_seq: u64,
    /// Bytes for the server on `conn` (acks, PONGs): appended to the
    /// sender's outbound when `conn` is the sender's, else written here
    /// from `control_pos`.
    control: BytesMut,
    control_pos: usize,
    /// relayhub: the session and its latest resume token.
    user: u64,
    token: [u8; 16],
    /// Reconnects: when this receiver drops its connection next.
    next_drop_ns: Option<u64>,
    /// When it dropped it last (reconnect time).
    dropped_at_ns: u64,
}

/// What a durable run needs besides the plain one.
struct DurableState {
    /// `None`: relayhub protocol v2; else JetStream with this ack policy.
    jetstream: Option<JetStreamAck>,
    /// Acknowledgements that complete one publication (JetStream and
    /// Redis: one publish ack per receiver).
    acks_per_publication: u32,
    /// Redis: entries per `XREADGROUP`.
    redis_count: u64,
    /// Mean ns between two drops of a reconnecting receiver.
    reconnect_every_ns: f64,
    rng: SplitMix64,
    /// Earliest `next_drop_ns` of the receivers (`u64::MAX`: none).
    next_drop_ns: u64,
    /// Send to acknowledgement of measured publications, ns.
    stored_latency: Histogram<u64>,
    /// relayhub: `RelayV2.flags` of every relay (`RECEIPT` or 0).
    relay_flags: u32,
}

/// Everything but the sockets.
struct State {
    config: Arc<RunConfig>,
    shared: Arc<Shared>,
    clock: Option<Clock>,
    kind: TargetKind,
    first: u32,
    fanout: u64,
    echo: bool,
    warmup_ns: u64,
    end_ns: u64,
    body_bytes: usize,
    /// Open loop: ns between two publications of one sender.
    interval_ns: f64,
    senders: Vec<Sender>,
    receivers: Vec<Receiver>,
    body: BodyTemplate,
    /// Bodies are large: their filler is referenced, not copied.
    large: bool,
    stats: LocalStats,
    /// Senders to write for (their window opened, a PONG is due, their
    /// socket has room again).
    queue: Vec<usize>,
    sending_over: bool,
    /// Deliveries still expected: sum of sent x fan-out - delivered.
    owed: u64,
    /// `--durable` runs only.
    durable: Option<DurableState>,
    /// `--pick random` runs only.
    pick: Option<RandomPick>,
}

/// One executor's traffic: sockets, epoll, state.
pub struct Engine {
    epoll: Epoll,
    conns: Vec<Conn>,
    state: State,
    ready: Vec<Ready>,
}

impl Engine {
    /// Takes over the connected clients (first global index `first`) and
    /// prepares everything a run needs, before the start: the sockets move
    /// from glommio to epoll, the templates are encoded.
    pub fn new(
        config: &Arc<RunConfig>,
        shared: &Arc<Shared>,
        first: usize,
        plan: &[Vec<usize>],
        clients: Vec<Client>,
        topology: Topology,
    ) -> Result<Engine, LoadgenError> {
        let kind = config.target.kind;
        let io_error = |error| LoadgenError::io(kind, config.target.address, error);
        let epoll = Epoll::new(EVENTS_PER_WAIT).map_err(io_error)?;
        let mut senders_of: Vec<Vec<u32>> = vec![Vec::new(); plan.len()];
        for (sender, targets) in plan.iter().enumerate() {
            for &target in targets {
                senders_of[target].push((first + sender) as u32);
            }
        }
        let receiver_lists = senders_of.into_iter().map(SenderCheckers::with_senders);
        let addresses: Vec<u64> = clients.iter().map(|client| client.address).collect();
        let echo = topology == Topology::Echo;
        let body = BodyTemplate::new(config.body_bytes);
        let interval_ns = match config.load {
            Load::Open { rate } => config.clients as f64 * 1e9 / rate,
            Load::Closed { .. } => 0.0,
        };
        let mut conns = Vec::with_capacity(clients.len() * 2);
        let mut senders = Vec::with_capacity(clients.len());
        let mut identities = Vec::with_capacity(clients.len());
        let durable = config.durable.is_some();
        let relay_flags = relay_flags(config.durable.as_ref());
        for (local, client) in clients.into_iter().enumerate() {
            identities.push((client.address, client.token));
            let mut take = |stream: glommio::net::TcpStream, inbound, role| {
                // A second descriptor for the socket; glommio's closes
                // with its stream.
                let fd = poll::dup(stream.as_raw_fd())?;
                drop(stream);
                epoll.add(fd.as_raw_fd(), conns.len() as u64, false)?;
                conns.push(Conn {
                    fd,
                    client: local,
                    role,
                    inbound,
                    open: true,
                    phase: Phase::Ready,
                    watching: false,
                });
                Ok::<usize, std::io::Error>(conns.len() - 1)
            };
            let subscriber =
                take(client.stream, client.inbound, Role::Subscriber).map_err(io_error)?;
            let conn = match client.publisher {
                Some((stream, inbound)) => {
                    take(stream, inbound, Role::Publisher).map_err(io_error)?
                }
                None => subscriber,
            };
            let receivers: Vec<u64> = plan[local]
                .iter()
                .map(|&target| addresses[target])
                .collect();
            let sender_index = (first + local) as u32;
            let encoding = if config.pick == Pick::Random {
                Encoding::Templates(Vec::new())
            } else {
                templates(
                    kind,
                    echo,
                    durable,
                    relay_flags,
                    sender_index,
                    &receivers,
                    body.len(),
                )
                .map_or(Encoding::PerMessage, |mut templates| {
                    if body.len() < LARGE_BODY_BYTES {
                        templates.iter_mut().for_each(|t| t.fill(body.bytes()));
                    }
                    Encoding::Templates(templates)
                })
            };
            let global = (first + local) as f64;
            senders.push(Sender {
                sent: 0,
                delivered: 0,
                receivers,
                encoding,
                conn,
                out: Outbound::with_capacity(64 * 1024),
                blocked: false,
                pong_due: false,
                queued: false,
                dead: false,
                // Phases spread evenly over one interval.
                phase_ns: interval_ns * global / config.clients as f64,
                unstored: Unstored::default(),
                receipts: 0,
            });
        }
        let subscriber_conns: Vec<usize> = conns
            .iter()
            .enumerate()
            .filter(|(_, conn)| conn.role == Role::Subscriber)
            .map(|(index, _)| index)
            .collect();
        let jetstream = config
            .durable
            .as_ref()
            .filter(|_| kind == TargetKind::Nats)
            .map(|durable| durable.jetstream.clone());
        let mut receivers: Vec<Receiver> = receiver_lists
            .zip(subscriber_conns)
            .zip(identities)
            .map(|((checkers, conn), (user, token))| Receiver {
                checkers,
                conn,
                seq_dedup: SeqDedup::default(),
                // A copy comes back ack_wait after the delivery it repeats
                // (more if the server is behind): remember 4 of those.
                stream_dedup: jetstream
                    .as_ref()
                    .map(|js| StreamDedup::new((js.ack_wait.as_nanos() as u64).saturating_mul(4))),
                id_dedup: IdDedup::default(),
                redis_pending: false,
                redis_from: b">".to_vec(),
                ack_reply: Vec::new(),
                ack_reply_seq: 0,
                control: BytesMut::new(),
                control_pos: 0,
                user,
                token,
                next_drop_ns: None,
                dropped_at_ns: 0,
            })
            .collect();
        let durable_state = config.durable.as_ref().map(|durable| {
            let mut rng =
                SplitMix64::new(config.seed ^ 0x5eed_d0e5 ^ (first as u64).wrapping_mul(0x9e37));
            let every_ns = durable.reconnect_every.as_nanos() as f64;
            let mut next_drop_ns = u64::MAX;
            if durable.reconnects() && !receivers.is_empty() {
                let count = ((durable.reconnect_share * receivers.len() as f64).round() as usize)
                    .clamp(1, receivers.len());
                let mut order: Vec<usize> = (0..receivers.len()).collect();
                rng.shuffle(&mut order);
                for &chosen in &order[..count] {
                    let at = drop_delay_ns(&mut rng, every_ns);
                    receivers[chosen].next_drop_ns = Some(at);
                    next_drop_ns = next_drop_ns.min(at);
                }
            }
            DurableState {
                jetstream: jetstream.as_ref().map(|js| js.ack),
                acks_per_publication: match kind {
                    TargetKind::Nats | TargetKind::Redis => topology.fanout() as u32,
                    _ => 1,
                },
                // Replies must fit the receive buffer: about 1 MiB of bodies.
                redis_count: ((1u64 << 20) / (config.body_bytes as u64 + 64))
                    .clamp(1, resp::STREAM_COUNT_MAX),
                reconnect_every_ns: every_ns,
                rng,
                next_drop_ns,
                stored_latency: new_histogram(),
                relay_flags,
            }
        });
        let pick = (config.pick == Pick::Random)
            .then(|| random_pick(config, kind, first, addresses, &body));
        Ok(Engine {
            epoll,
            conns,
            ready: Vec::with_capacity(EVENTS_PER_WAIT),
            state: State {
                config: config.clone(),
                shared: shared.clone(),
                clock: None,
                kind,
                first: first as u32,
                fanout: topology.fanout() as u64,
                echo,
                warmup_ns: config.warmup_ns(),
                end_ns: config.end_ns(),
                body_bytes: config.body_bytes,
                interval_ns,
                senders,
                receivers,
                large: body.len() >= LARGE_BODY_BYTES,
                body,
                stats: LocalStats::new(),
                queue: Vec::new(),
                sending_over: false,
                owed: 0,
                durable: durable_state,
                pick,
            },
        })
    }

    /// Runs from the start signal to the end of the drain; blocks the thread.
    pub fn run(mut self, clock: Clock) -> ExecutorResult {
        poll::set_timer_slack_ns(1);
        self.state.clock = Some(clock);
        let config = self.state.config.clone();
        let drain_end_ns = self.state.end_ns + config.drain.as_nanos() as u64;
        // Bytes read past the end of a handshake.
        for conn in 0..self.conns.len() {
            self.decode(conn, 0);
        }
        // Redis Streams: every receiver starts reading.
        if let (TargetKind::Redis, Some(durable)) = (self.state.kind, &self.state.durable) {
            let count = durable.redis_count;
            for local in 0..self.state.receivers.len() {
                let client = self.state.first + local as u32;
                let receiver = &mut self.state.receivers[local];
                resp::encode_xreadgroup(&mut receiver.control, client, count, b">");
                let conn = receiver.conn;
                self.flush_control(conn);
            }
        }
        if let Load::Closed { .. } = config.load {
            for sender in 0..self.state.senders.len() {
                self.state.enqueue(sender);
            }
        }
        let mut next_flush_ns = FLUSH_INTERVAL.as_nanos() as u64;
        loop {
            let now = clock.now_ns();
            if now >= self.state.end_ns {
                self.state.sending_over = true;
            }
            let next_drop_ns = match &self.state.durable {
                Some(durable) if !self.state.sending_over => durable.next_drop_ns,
                _ => u64::MAX,
            };
            if now >= next_drop_ns {
                self.drop_due(now);
            }
            let next_drop_ns = match &self.state.durable {
                Some(durable) if !self.state.sending_over => durable.next_drop_ns,
                _ => u64::MAX,
            };
            let mut next_send_ns = u64::MAX;
            match config.load {
                Load::Closed { window } => {
                    while let Some(sender) = self.state.queue.pop() {
                        self.state.senders[sender].queued = false;
                        self.write_closed(sender, window);
                    }
                }
                Load::Open { .. } => {
                    while let Some(sender) = self.state.queue.pop() {
                        self.state.senders[sender].queued = false;
                        self.write_open(sender, now);
                    }
                    if !self.state.sending_over {
                        next_send_ns = self.pace(now);
                    }
                }
            }
            if now >= next_flush_ns {
                self.state.stats.flush(&self.state.shared);
                next_flush_ns = now + FLUSH_INTERVAL.as_nanos() as u64;
            }
            if self.state.sending_over && (now >= drain_end_ns || self.state.all_delivered()) {
                break;
            }
            let phase_end = if self.state.sending_over {
                drain_end_ns
            } else {
                self.state.end_ns
            };
            let wake = next_flush_ns
                .min(phase_end)
                .min(next_send_ns)
                .min(next_drop_ns);
            let now = clock.now_ns();
            let timeout = if next_send_ns.saturating_sub(now) <= OPEN_LOOP_SPIN_NS {
                Duration::ZERO
            } else {
                Duration::from_nanos(wake.saturating_sub(now))
            };
            self.ready.clear();
            if let Err(error) = self.epoll.wait(Some(timeout), &mut self.ready) {
                self.state.stats.error(|| format!("epoll_wait: {error}"));
                break;
            }
            for index in 0..self.ready.len() {
                let event = self.ready[index];
                let conn = event.token as usize;
                if event.writable {
                    self.on_writable(conn);
                }
                if event.readable {
                    self.read(conn);
                }
            }
        }
        self.finish()
    }

    /// Reads what `conn` has, decoding after each read.
    fn read(&mut self, conn: usize) {
        loop {
            let state = &mut self.state;
            let c = &mut self.conns[conn];
            if !c.open || c.phase == Phase::Connecting {
                return;
            }
            let spare = c.inbound.spare();
            let room = spare.len();
            let read = match poll::recv(c.fd.as_raw_fd(), spare) {
                Ok(Io::WouldBlock) => return,
                Ok(Io::Done(0)) => {
                    let client = state.first as usize + c.client;
                    state
                        .stats
                        .error(|| format!("client {client}: the server closed the connection"));
                    return self.close(conn);
                }
                Err(error) => {
                    let client = state.first as usize + c.client;
                    state
                        .stats
                        .error(|| format!("client {client}: read: {error}"));
                    return self.close(conn);
                }
                Ok(Io::Done(read)) => read,
            };
            c.inbound.commit(read);
            let now = state.clock.expect("running").now_ns();
            self.decode(conn, now);
            if read < room {
                return;
            }
        }
    }

    /// Handles every complete message buffered on `conn`, then what the
    /// batch leaves to say (a durable receiver's ack).
    fn decode(&mut self, conn: usize, now_ns: u64) {
        let c = &mut self.conns[conn];
        let (local, role) = (c.client, c.role);
        let handshaking = c.phase == Phase::Handshake;
        let mut welcome = None;
        loop {
            match c.inbound.next_event() {
                Ok(Some(Event::WelcomeV2 {
                    user,
                    token,
                    resumed,
                    ..
                })) if handshaking => {
                    welcome = Some(Some((user, token, resumed)));
                    break;
                }
                Ok(Some(Event::Pong)) if handshaking => {
                    welcome = Some(None);
                    break;
                }
                Ok(Some(event)) => self.state.on_event(local, role, event, now_ns),
                Ok(None) => break,
                Err(error) => {
                    let client = self.state.first as usize + local;
                    self.state
                        .stats
                        .error(|| format!("client {client}: {error}"));
                    return self.close(conn);
                }
            }
        }
        if let Some(welcome) = welcome {
            if self.handshake_done(conn, welcome, now_ns) {
                // What came after the welcome in the same read.
                return self.decode(conn, now_ns);
            }
            return;
        }
        self.end_batch(conn);
    }

    fn close(&mut self, conn: usize) {
        let c = &mut self.conns[conn];
        if c.open {
            c.open = false;
            let _ = self.epoll.delete(c.fd.as_raw_fd());
        }
    }

    /// The socket of `conn` has room again (or its connect finished).
    fn on_writable(&mut self, conn: usize) {
        if self.conns[conn].phase == Phase::Connecting {
            return self.finish_connect(conn);
        }
        let sender = self.conns[conn].client;
        if self.state.senders[sender].conn == conn {
            if self.flush(sender) {
                self.state.enqueue(sender);
            }
        } else {
            self.flush_control(conn);
        }
    }

    /// After a read batch: a durable receiver acks what it handed on (one
    /// cumulative ack), and its control bytes go out.
    fn end_batch(&mut self, conn: usize) {
        let c = &self.conns[conn];
        if c.role != Role::Subscriber || !c.open || c.phase == Phase::Connecting {
            return;
        }
        let local = c.client;
        let state = &mut self.state;
        let Some(durable) = state.durable.as_mut() else {
            return;
        };
        let receiver = &mut state.receivers[local];
        match durable.jetstream {
            None => {
                if let Some(upto) = receiver.seq_dedup.ack_due() {
                    relayhub::encode_ack(&mut receiver.control, upto);
                    state.stats.result.durable.acks += 1;
                }
            }
            Some(JetStreamAck::All) => {
                if !receiver.ack_reply.is_empty() {
                    nats::encode_ack(&mut receiver.control, &receiver.ack_reply);
                    receiver.ack_reply.clear();
                    state.stats.result.durable.acks += 1;
                }
            }
            Some(JetStreamAck::Explicit) => {}
        }
        if receiver.control.len() > receiver.control_pos {
            if state.senders[local].conn == conn {
                state.enqueue(local);
            } else {
                self.flush_control(conn);
            }
        }
    }

    /// Writes a receiver's control bytes on its own connection (one that
    /// is not its sender's), watching it for room if they do not fit.
    fn flush_control(&mut self, conn: usize) {
        let c = &mut self.conns[conn];
        if !c.open || c.phase == Phase::Connecting {
            return;
        }
        let receiver = &mut self.state.receivers[c.client];
        let mut failed = None;
        while receiver.control_pos < receiver.control.len() {
            match poll::send(c.fd.as_raw_fd(), &receiver.control[receiver.control_pos..]) {
                Ok(Io::Done(written)) => receiver.control_pos += written,
                Ok(Io::WouldBlock) => break,
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            }
        }
        let drained = receiver.control_pos == receiver.control.len();
        if drained {
            receiver.control.clear();
            receiver.control_pos = 0;
        }
        if let Some(error) = failed {
            let client = self.state.first as usize + c.client;
            self.state
                .stats
                .error(|| format!("client {client}: write: {error}"));
            return self.close(conn);
        }
        if drained == c.watching {
            c.watching = !drained;
            if let Err(error) = self.epoll.modify(c.fd.as_raw_fd(), conn as u64, !drained) {
                self.state.stats.error(|| format!("epoll_ctl: {error}"));
            }
        }
    }

    /// Reconnects: drops the connection of every receiver whose time has
    /// come, and starts its new one.
    fn drop_due(&mut self, now: u64) {
        let mut next = u64::MAX;
        for local in 0..self.state.receivers.len() {
            let Some(at) = self.state.receivers[local].next_drop_ns else {
                continue;
            };
            let conn = self.state.receivers[local].conn;
            if at <= now && self.conns[conn].open && self.conns[conn].phase == Phase::Ready {
                self.drop_connection(local, now);
            } else {
                next = next.min(at);
            }
        }
        if let Some(durable) = self.state.durable.as_mut() {
            durable.next_drop_ns = next;
        }
    }

    /// Closes receiver `local`'s connection and starts a non-blocking
    /// connect of its next one. What the old one had not written is
    /// forgotten: relays without `Stored` are sent again once resumed.
    fn drop_connection(&mut self, local: usize, now: u64) {
        let state = &mut self.state;
        let conn = state.receivers[local].conn;
        let c = &mut self.conns[conn];
        let _ = self.epoll.delete(c.fd.as_raw_fd());
        state.stats.result.durable.reconnects += 1;
        let receiver = &mut state.receivers[local];
        receiver.next_drop_ns = None;
        receiver.dropped_at_ns = now;
        receiver.control.clear();
        receiver.control_pos = 0;
        receiver.ack_reply.clear();
        receiver.ack_reply_seq = 0;
        let sender = &mut state.senders[local];
        if sender.conn == conn {
            sender.out.clear();
            sender.blocked = false;
            sender.pong_due = false;
            sender.unstored.begin_resend(sender.sent);
        }
        c.inbound = Inbound::durable(state.kind);
        c.watching = false;
        let started = poll::connect_start(state.config.target.address).and_then(|fd| {
            self.epoll.add(fd.as_raw_fd(), conn as u64, true)?;
            Ok(fd)
        });
        match started {
            Ok(fd) => {
                // The old socket closes here.
                c.fd = fd;
                c.phase = Phase::Connecting;
            }
            Err(error) => {
                c.open = false;
                let client = state.first as usize + local;
                state
                    .stats
                    .error(|| format!("client {client}: reconnect: {error}"));
            }
        }
    }

    /// A reconnect's connect finished: writes the handshake (relayhub:
    /// the v2 preface and `Hello::resume`; NATS: `CONNECT`, `SUB`, `PING`).
    fn finish_connect(&mut self, conn: usize) {
        let state = &mut self.state;
        let c = &mut self.conns[conn];
        let local = c.client;
        let receiver = &state.receivers[local];
        let mut hello = BytesMut::with_capacity(128);
        let outcome = poll::connect_result(c.fd.as_raw_fd()).and_then(|()| {
            match state.kind {
                TargetKind::Relayhub => {
                    hello.extend_from_slice(&relayhub::CLIENT_PREFACE_V2);
                    relayhub::encode_hello(&mut hello, 2, Some((receiver.user, receiver.token)))
                        .map_err(std::io::Error::other)?;
                }
                TargetKind::Redis => resp::encode_ping(&mut hello),
                _ => nats::encode_js_handshake(&mut hello, state.first + local as u32, true, false),
            }
            self.epoll.modify(c.fd.as_raw_fd(), conn as u64, false)?;
            match poll::send(c.fd.as_raw_fd(), &hello)? {
                Io::Done(written) if written == hello.len() => Ok(()),
                _ => Err(std::io::Error::other(
                    "the handshake did not fit the new socket",
                )),
            }
        });
        match outcome {
            Ok(()) => c.phase = Phase::Handshake,
            Err(error) => {
                let client = state.first as usize + local;
                state
                    .stats
                    .error(|| format!("client {client}: reconnect: {error}"));
                self.close(conn);
            }
        }
    }

    /// A reconnect's handshake completed (`welcome`: relayhub's user, token
    /// and resumed flag; `None` for NATS' `PONG`). Returns false if the
    /// hub resumed something else (the connection is then closed).
    fn handshake_done(
        &mut self,
        conn: usize,
        welcome: Option<(u64, [u8; 16], bool)>,
        now: u64,
    ) -> bool {
        let state = &mut self.state;
        let local = self.conns[conn].client;
        let receiver = &mut state.receivers[local];
        if let Some((user, token, resumed)) = welcome {
            if user != receiver.user || !resumed {
                let (client, expected) = (state.first as usize + local, receiver.user);
                state.stats.error(|| {
                    format!(
                        "client {client}: the resume of session {expected} gave session {user} (resumed: {resumed})"
                    )
                });
                self.close(conn);
                return false;
            }
            receiver.token = token;
            // What the old connection handed on: its ack may have been lost.
            if let Some(upto) = receiver.seq_dedup.reconnected() {
                relayhub::encode_ack(&mut receiver.control, upto);
                state.stats.result.durable.acks += 1;
            }
        }
        if let (TargetKind::Redis, Some(durable)) = (state.kind, &state.durable) {
            // Pending entries first (delivered to the old connection, not
            // acked), in order, then new ones.
            receiver.redis_pending = true;
            receiver.redis_from = b"0".to_vec();
            let client = state.first + local as u32;
            resp::encode_xreadgroup(&mut receiver.control, client, durable.redis_count, b"0");
        }
        self.conns[conn].phase = Phase::Ready;
        let took = now.saturating_sub(receiver.dropped_at_ns);
        let counts = &mut state.stats.result.durable;
        counts.reconnect_ns_total += took;
        counts.reconnect_ns_max = counts.reconnect_ns_max.max(took);
        if let Some(durable) = state.durable.as_mut() {
            let at = now + drop_delay_ns(&mut durable.rng, durable.reconnect_every_ns);
            if at < state.end_ns {
                receiver.next_drop_ns = Some(at);
                durable.next_drop_ns = durable.next_drop_ns.min(at);
            }
        }
        if state.senders[local].conn == conn {
            state.enqueue(local);
        } else {
            self.flush_control(conn);
        }
        true
    }

    /// Writes `sender`'s pending bytes; true when all are written.
    fn flush(&mut self, sender: usize) -> bool {
        let state = &mut self.state;
        let s = &mut state.senders[sender];
        let conn = &self.conns[s.conn];
        if conn.open && conn.phase != Phase::Ready {
            // Reconnecting: written once it is ready.
            return false;
        }
        if !conn.open || s.dead {
            s.out.clear();
            return false;
        }
        let fd = conn.fd.as_raw_fd();
        let drained = match s.out.write(fd, state.body.tail()) {
            Ok(flushed) => flushed == Flushed::Drained,
            Err(error) => {
                s.dead = true;
                s.out.clear();
                let client = state.first as usize + sender;
                state
                    .stats
                    .error(|| format!("client {client}: write: {error}"));
                return false;
            }
        };
        if drained == s.blocked {
            s.blocked = !drained;
            let token = s.conn as u64;
            if let Err(error) = self.epoll.modify(fd, token, !drained) {
                self.state.stats.error(|| format!("epoll_ctl: {error}"));
            }
        }
        drained
    }

    /// Closed loop: fills `sender`'s window and writes, one `send` per
    /// batch of up to [`WRITE_BATCH_BYTES_MAX`].
    fn write_closed(&mut self, sender: usize, window: u64) {
        loop {
            let state = &mut self.state;
            let s = &state.senders[sender];
            if s.dead || s.blocked || self.conns[s.conn].phase != Phase::Ready {
                return;
            }
            if let Err(error) = state.encode_resends(sender) {
                let client = state.first as usize + sender;
                state.stats.error(|| format!("client {client}: {error}"));
                state.senders[sender].dead = true;
                return;
            }
            let s = &state.senders[sender];
            let outstanding = if state.durable.is_some() {
                s.unstored.outstanding()
            } else {
                s.sent - s.delivered / state.fanout
            };
            let mut allowed = if state.sending_over {
                0
            } else {
                window.saturating_sub(outstanding)
            };
            if allowed > 0 {
                let now = state.clock.expect("running").now_ns();
                let mut encoded = 0;
                while allowed > 0
                    && (encoded == 0
                        || state.senders[sender].out.pending(state.body.tail().len())
                            < WRITE_BATCH_BYTES_MAX)
                {
                    if let Err(error) = state.encode_one(sender, now) {
                        let client = state.first as usize + sender;
                        state.stats.error(|| format!("client {client}: {error}"));
                        state.senders[sender].dead = true;
                        return;
                    }
                    encoded += 1;
                    allowed -= 1;
                }
            }
            state.append_control(sender);
            if self.state.senders[sender].out.is_empty() {
                return;
            }
            if !self.flush(sender) || allowed == 0 {
                return;
            }
        }
    }

    /// Open loop: writes a PONG or what was waiting for room.
    fn write_open(&mut self, sender: usize, now: u64) {
        let s = &self.state.senders[sender];
        if s.blocked || self.conns[s.conn].phase != Phase::Ready {
            return;
        }
        self.send_due(sender, now);
    }

    /// Appends everything `sender` has due by `now` (up to a batch) and
    /// writes it.
    fn send_due(&mut self, sender: usize, now: u64) {
        let state = &mut self.state;
        let mut encoded = 0;
        let actual = state.clock.expect("running").now_ns();
        if let Err(error) = state.encode_resends(sender) {
            let client = state.first as usize + sender;
            state.stats.error(|| format!("client {client}: {error}"));
            state.senders[sender].dead = true;
            return;
        }
        loop {
            let s = &state.senders[sender];
            if s.dead {
                return;
            }
            let due = state.intended(sender, s.sent);
            if due > now
                || due >= state.end_ns
                || (encoded > 0 && s.out.pending(state.body.tail().len()) >= WRITE_BATCH_BYTES_MAX)
            {
                break;
            }
            if let Err(error) = state.encode_one(sender, due) {
                let client = state.first as usize + sender;
                state.stats.error(|| format!("client {client}: {error}"));
                state.senders[sender].dead = true;
                return;
            }
            if due >= state.warmup_ns {
                state
                    .stats
                    .lag
                    .saturating_record(actual.saturating_sub(due).max(1));
            }
            encoded += 1;
        }
        state.append_control(sender);
        if !self.state.senders[sender].out.is_empty() {
            self.flush(sender);
        }
    }

    /// Open loop: sends what is due for every sender; returns the earliest
    /// next send time (`u64::MAX`: none before the end).
    fn pace(&mut self, now: u64) -> u64 {
        let mut next = u64::MAX;
        for sender in 0..self.state.senders.len() {
            let s = &self.state.senders[sender];
            if s.dead || s.blocked || self.conns[s.conn].phase != Phase::Ready {
                // Woken by room on its socket, or by its reconnect.
                continue;
            }
            let mut due = self.state.intended(sender, s.sent);
            if due <= now && due < self.state.end_ns {
                self.send_due(sender, now);
                let s = &self.state.senders[sender];
                if s.blocked || s.dead {
                    continue;
                }
                due = self.state.intended(sender, s.sent);
            }
            if due < self.state.end_ns {
                next = next.min(due);
            }
        }
        next
    }

    /// Final counts: what each receiver missed is lost.
    fn finish(mut self) -> ExecutorResult {
        let state = &mut self.state;
        state.stats.flush(&state.shared);
        let mut result = std::mem::take(&mut state.stats.result);
        if let Load::Open { .. } = state.config.load {
            result.send_lag = Some(std::mem::replace(&mut state.stats.lag, new_histogram()));
        }
        let durable = state.durable.is_some();
        let picked = state.pick.is_some();
        for receiver in &state.receivers {
            for pair in receiver.checkers.pairs() {
                let sender = &state.senders[(pair.sender - state.first) as usize];
                // A fixed receiver is owed every publication of its senders,
                // a drawn one what was addressed to it.
                let sent = if picked { pair.addressed } else { sender.sent };
                result.counts.add(&if durable {
                    // Only what the server acknowledged is owed.
                    pair.checker.finish_durable(sent, sender.unstored.unacked())
                } else {
                    pair.checker.finish(sent)
                });
            }
            result.durable.seq_skipped += receiver.seq_dedup.skipped;
        }
        result.sent = state.senders.iter().map(|sender| sender.sent).sum();
        if let Some(durable) = state.durable.as_mut() {
            result.durable.unstored = state
                .senders
                .iter()
                .map(|sender| sender.unstored.outstanding())
                .sum();
            if durable.relay_flags & relay_flag::RECEIPT != 0 {
                let owed: u64 = state
                    .senders
                    .iter()
                    .map(|s| (s.sent - s.unstored.outstanding()) * state.fanout)
                    .sum();
                result.durable.receipts_missing = owed.saturating_sub(result.durable.receipts);
            }
            result.stored_latency = Some(std::mem::replace(
                &mut durable.stored_latency,
                new_histogram(),
            ));
        }
        // The sockets close here.
        drop(self.conns);
        result
    }
}

/// Reconnects: the wait before a receiver's next drop, uniform in
/// 0.5x..1.5x the mean.
fn drop_delay_ns(rng: &mut SplitMix64, mean_ns: f64) -> u64 {
    let unit = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    (mean_ns * (0.5 + unit)).max(1.0) as u64
}

/// `RelayV2.flags` of a run's relays: `RECEIPT` with `--receipts`.
fn relay_flags(durable: Option<&crate::config::DurableConfig>) -> u32 {
    match durable {
        Some(durable) if durable.receipts => relay_flag::RECEIPT,
        _ => 0,
    }
}

/// `--pick random`: one relay template per local client (the receiver),
/// filled while they are small enough together; the draws seeded from the
/// run's seed and the executor.
fn random_pick(
    config: &RunConfig,
    kind: TargetKind,
    first: usize,
    addresses: Vec<u64>,
    body: &BodyTemplate,
) -> RandomPick {
    let mut templates: Option<Vec<Template>> = addresses
        .iter()
        .map(|&address| {
            templates(kind, false, false, 0, 0, &[address], body.len())?
                .into_iter()
                .next()
        })
        .collect();
    let total: usize = templates.iter().flatten().map(Template::len).sum();
    let layout = if body.len() >= LARGE_BODY_BYTES {
        Layout::Large
    } else if total <= PICK_FILLED_BYTES_MAX {
        templates
            .iter_mut()
            .flatten()
            .for_each(|t| t.fill(body.bytes()));
        Layout::Filled
    } else {
        Layout::Whole
    };
    RandomPick {
        rng: SplitMix64::new(config.seed ^ 0x9_1c4e_d000 ^ (first as u64).wrapping_mul(0x9e37)),
        addresses,
        templates,
        layout,
    }
}

/// Appends one publication written from `templates` (one per frame).
fn write_templates(
    out: &mut Outbound,
    templates: &[Template],
    layout: Layout,
    request: u64,
    body: &[u8],
) {
    for template in templates {
        match layout {
            Layout::Large => {
                template.write_head(out.buf(), request, &body[..HEADER_BYTES]);
                out.mark_tail();
                template.write_suffix(out.buf(), request);
            }
            Layout::Filled => template.write_stamped(out.buf(), request, &body[..HEADER_BYTES]),
            Layout::Whole => template.write(out.buf(), request, body),
        }
    }
}

/// Appends one publication of `body` from client `from` to `receivers`
/// with the encoder itself (no template fits).
#[allow(clippy::too_many_arguments)]
fn encode_per_message(
    kind: TargetKind,
    echo: bool,
    durable: bool,
    relay_flags: u32,
    from: u32,
    receivers: &[u64],
    out: &mut BytesMut,
    request: u64,
    body: &[u8],
) -> Result<(), WireError> {
    match kind {
        TargetKind::Relayhub | TargetKind::Sink if echo => {
            relayhub::encode_echo(out, request, body)?
        }
        TargetKind::Relayhub if durable => {
            relayhub::encode_relay_v2(out, request, relay_flags, receivers, body)?
        }
        TargetKind::Relayhub | TargetKind::Sink => {
            relayhub::encode_relay(out, request, receivers, body)?
        }
        TargetKind::Nats if durable => receivers
            .iter()
            .for_each(|&to| nats::encode_js_publish(out, to as u32, from, body)),
        TargetKind::Nats => receivers
            .iter()
            .for_each(|&to| nats::encode_publish(out, to as u32, body)),
        TargetKind::Redis if durable => receivers
            .iter()
            .for_each(|&to| resp::encode_xadd(out, to as u32, body)),
        TargetKind::Redis => receivers
            .iter()
            .for_each(|&to| resp::encode_publish(out, to as u32, body)),
    }
    Ok(())
}

/// The templates of one sender's publication, if the encoder fits them.
/// `sender` is the sender's client index (JetStream's ack inbox).
fn templates(
    kind: TargetKind,
    echo: bool,
    durable: bool,
    relay_flags: u32,
    sender: u32,
    receivers: &[u64],
    body_len: usize,
) -> Option<Vec<Template>> {
    let learn = |encode: &crate::wire::template::Encode<'_>| {
        Template::learn(body_len, encode).ok().flatten()
    };
    match kind {
        TargetKind::Relayhub if durable => Some(vec![learn(&|request, body, out| {
            relayhub::encode_relay_v2(out, request, relay_flags, receivers, body)
        })?]),
        TargetKind::Nats if durable => receivers
            .iter()
            .map(|&to| {
                learn(&|_, body, out| {
                    nats::encode_js_publish(out, to as u32, sender, body);
                    Ok(())
                })
            })
            .collect(),
        TargetKind::Redis if durable => receivers
            .iter()
            .map(|&to| {
                learn(&|_, body, out| {
                    resp::encode_xadd(out, to as u32, body);
                    Ok(())
                })
            })
            .collect(),
        TargetKind::Relayhub | TargetKind::Sink if echo => {
            Some(vec![learn(&|request, body, out| {
                relayhub::encode_echo(out, request, body)
            })?])
        }
        TargetKind::Relayhub | TargetKind::Sink => Some(vec![learn(&|request, body, out| {
            relayhub::encode_relay(out, request, receivers, body)
        })?]),
        TargetKind::Nats => receivers
            .iter()
            .map(|&to| {
                learn(&|_, body, out| {
                    nats::encode_publish(out, to as u32, body);
                    Ok(())
                })
            })
            .collect(),
        TargetKind::Redis => receivers
            .iter()
            .map(|&to| {
                learn(&|_, body, out| {
                    resp::encode_publish(out, to as u32, body);
                    Ok(())
                })
            })
            .collect(),
    }
}

impl State {
    fn enqueue(&mut self, sender: usize) {
        let s = &mut self.senders[sender];
        if !s.queued {
            s.queued = true;
            self.queue.push(sender);
        }
    }

    /// Open loop: the scheduled send time of `sender`'s publication `k`.
    fn intended(&self, sender: usize, k: u64) -> u64 {
        (self.senders[sender].phase_ns + self.interval_ns * k as f64) as u64
    }

    /// Every sender has all its deliveries (durable: and every publication
    /// is acknowledged).
    fn all_delivered(&self) -> bool {
        self.owed == 0
            && self.senders.iter().all(|sender| {
                sender.delivered >= sender.sent * self.fanout
                    && (self.durable.is_none() || sender.unstored.outstanding() == 0)
                    && (!self.receipts() || sender.receipts >= sender.sent * self.fanout)
            })
    }

    /// Relays ask for delivery receipts.
    fn receipts(&self) -> bool {
        self.durable
            .as_ref()
            .is_some_and(|d| d.relay_flags & relay_flag::RECEIPT != 0)
    }

    /// Appends one new publication from `sender` to its outbound buffer.
    fn encode_one(&mut self, sender: usize, send_ns: u64) -> Result<(), WireError> {
        let sequence = self.senders[sender].sent;
        if self.pick.is_some() {
            self.encode_picked(sender, send_ns)?;
        } else {
            self.encode_at(sender, sequence, send_ns)?;
        }
        let acks = self
            .durable
            .as_ref()
            .map(|durable| durable.acks_per_publication);
        let s = &mut self.senders[sender];
        if let Some(acks) = acks {
            s.unstored.push(sequence, send_ns, acks);
        }
        s.sent = sequence + 1;
        self.owed += self.fanout;
        Ok(())
    }

    /// Durable, after a reconnect: appends the publications the old
    /// connection left unacknowledged, with their sequence numbers, send
    /// times and `message_id`s (the hub answers a stored one with
    /// `Stored{duplicate}`).
    fn encode_resends(&mut self, sender: usize) -> Result<(), WireError> {
        if self.durable.is_none() {
            return Ok(());
        }
        while let Some((sequence, send_ns)) = self.senders[sender].unstored.next_resend() {
            self.encode_at(sender, sequence, send_ns)?;
            self.stats.result.durable.retried += 1;
        }
        Ok(())
    }

    /// Appends publication `sequence` of `sender`, stamped `send_ns`.
    fn encode_at(&mut self, sender: usize, sequence: u64, send_ns: u64) -> Result<(), WireError> {
        let from = self.first + sender as u32;
        let s = &mut self.senders[sender];
        let body = self.body.stamp(&Header {
            sender: from,
            sequence,
            send_ns,
        });
        // relayhub v2: the request id is the message id too.
        let request = sequence + 1;
        match &s.encoding {
            Encoding::Templates(templates) => {
                let layout = if self.large {
                    Layout::Large
                } else {
                    Layout::Filled
                };
                write_templates(&mut s.out, templates, layout, request, body)
            }
            Encoding::PerMessage => encode_per_message(
                self.kind,
                self.echo,
                self.durable.is_some(),
                self.durable.as_ref().map_or(0, |d| d.relay_flags),
                from,
                &s.receivers,
                s.out.buf(),
                request,
                body,
            )?,
        }
        Ok(())
    }

    /// `--pick random`: appends `sender`'s next publication to a receiver
    /// drawn now, numbered in that (sender, receiver) pair, stamped `send_ns`.
    fn encode_picked(&mut self, sender: usize, send_ns: u64) -> Result<(), WireError> {
        let from = self.first + sender as u32;
        let pick = self.pick.as_mut().expect("a --pick random run");
        let receiver = other_client(&mut pick.rng, self.senders.len(), sender);
        let sequence = self.receivers[receiver].checkers.next_sequence(from);
        let body = self.body.stamp(&Header {
            sender: from,
            sequence,
            send_ns,
        });
        // The request id numbers the sender's publications, whoever gets them.
        let s = &mut self.senders[sender];
        let request = s.sent + 1;
        match &pick.templates {
            Some(templates) => write_templates(
                &mut s.out,
                std::slice::from_ref(&templates[receiver]),
                pick.layout,
                request,
                body,
            ),
            None => encode_per_message(
                self.kind,
                false,
                false,
                0,
                from,
                &[pick.addresses[receiver]],
                s.out.buf(),
                request,
                body,
            )?,
        }
        Ok(())
    }

    /// Appends what `sender`'s connection owes the server besides
    /// publications: a NATS `PONG`, and the control bytes (acks) of the
    /// receiver on the same connection.
    fn append_control(&mut self, sender: usize) {
        let s = &mut self.senders[sender];
        if std::mem::take(&mut s.pong_due) {
            s.out.buf().extend_from_slice(nats::PONG);
        }
        let receiver = &mut self.receivers[sender];
        if receiver.conn == s.conn && receiver.control.len() > receiver.control_pos {
            s.out
                .buf()
                .extend_from_slice(&receiver.control[receiver.control_pos..]);
            receiver.control.clear();
            receiver.control_pos = 0;
        }
    }

    /// relayhub: relay `message_id` (publication `message_id - 1`) of
    /// `local` is stored.
    fn on_stored(&mut self, local: usize, message_id: u64, duplicate: bool, now_ns: u64) {
        let Some(sequence) = message_id.checked_sub(1) else {
            return self.stats.error(|| "a Stored without message id".into());
        };
        match self.senders[local].unstored.ack(sequence) {
            Ok(Some(send_ns)) => self.on_acknowledged(local, send_ns, duplicate, now_ns),
            Ok(None) => {}
            Err(_) => {
                let client = self.first as usize + local;
                self.stats.error(|| {
                    format!("client {client}: Stored for message {message_id}, not awaiting one")
                })
            }
        }
    }

    /// One publication of `local`, sent at `send_ns`, is acknowledged.
    fn on_acknowledged(&mut self, local: usize, send_ns: u64, duplicate: bool, now_ns: u64) {
        let counts = &mut self.stats.result.durable;
        counts.stored += 1;
        counts.stored_duplicate += u64::from(duplicate);
        if send_ns >= self.warmup_ns {
            if let Some(durable) = self.durable.as_mut() {
                durable
                    .stored_latency
                    .saturating_record(now_ns.saturating_sub(send_ns).max(1));
            }
        }
        if let Load::Closed { .. } = self.config.load {
            self.enqueue(local);
        }
    }

    /// JetStream: a message on one of `local`'s subscriptions: a publish
    /// ack (subject `ja.<local>`) or a delivery (its reply subject is
    /// `$JS.ACK...`; a push consumer keeps the message's own subject).
    fn on_message(&mut self, local: usize, subject: &[u8], reply: &[u8], body: &[u8], now_ns: u64) {
        if subject.starts_with(nats::JS_ACK_INBOX_PREFIX) {
            match nats::pub_ack(body) {
                Ok(duplicate) => match self.senders[local].unstored.ack_oldest() {
                    Ok(Some(send_ns)) => self.on_acknowledged(local, send_ns, duplicate, now_ns),
                    Ok(None) => {}
                    Err(_) => self
                        .stats
                        .error(|| "a publish ack with no publish awaiting one".into()),
                },
                Err(text) => {
                    // Not stored: take it off the window, count the error.
                    let _ = self.senders[local].unstored.ack_oldest();
                    self.stats
                        .error(|| format!("JetStream refused a publish: {text}"));
                }
            }
            return;
        }
        if !reply.starts_with(nats::JS_ACK_PREFIX) {
            return;
        }
        let Some(info) = nats::AckInfo::parse(reply) else {
            let reply = String::from_utf8_lossy(reply).into_owned();
            return self
                .stats
                .error(|| format!("a JetStream delivery whose reply is not $JS.ACK: {reply:?}"));
        };
        let ack = self.durable.as_ref().and_then(|durable| durable.jetstream);
        let receiver = &mut self.receivers[local];
        match ack {
            Some(JetStreamAck::Explicit) => {
                nats::encode_ack(&mut receiver.control, reply);
                self.stats.result.durable.acks += 1;
            }
            Some(JetStreamAck::All) if info.consumer_seq >= receiver.ack_reply_seq => {
                receiver.ack_reply.clear();
                receiver.ack_reply.extend_from_slice(reply);
                receiver.ack_reply_seq = info.consumer_seq;
            }
            _ => {}
        }
        if info.delivered > 1 {
            self.stats.result.durable.redelivered += 1;
        }
        let dedup = match receiver.stream_dedup.as_mut() {
            Some(dedup) => dedup.arrival(info.stream_seq, now_ns),
            None => Dedup::New,
        };
        match dedup {
            Dedup::New => self.on_delivery(local, body, now_ns),
            Dedup::Duplicate => self.stats.result.durable.deduplicated += 1,
        }
    }

    /// Handles one event read on client `local`'s connection.
    fn on_event(&mut self, local: usize, role: Role, event: Event<'_>, now_ns: u64) {
        match event {
            Event::Delivery(body) if role == Role::Subscriber => {
                self.on_delivery(local, body, now_ns)
            }
            Event::Delivery(_) => self
                .stats
                .error(|| "a delivery on a publisher connection".into()),
            Event::Published(count) if count < 1 => self
                .stats
                .error(|| format!("PUBLISH reached {count} subscribers (message went nowhere)")),
            Event::DeliveryV2 { body, seq, flags } if role == Role::Subscriber => {
                if flags & REDELIVERY != 0 {
                    self.stats.result.durable.redelivered += 1;
                }
                match self.receivers[local].seq_dedup.arrival(seq) {
                    Dedup::New => self.on_delivery(local, body, now_ns),
                    Dedup::Duplicate => self.stats.result.durable.deduplicated += 1,
                }
            }
            Event::Stored {
                message_id,
                duplicate,
                ..
            } => self.on_stored(local, message_id, duplicate, now_ns),
            Event::Receipt { seq, flags, .. } if role == Role::Subscriber => {
                if flags & REDELIVERY != 0 {
                    self.stats.result.durable.redelivered += 1;
                }
                // A receipt is an entry of the sender's own inbox: numbered,
                // acked and deduplicated like a delivery.
                match self.receivers[local].seq_dedup.arrival(seq) {
                    Dedup::New => {
                        self.senders[local].receipts += 1;
                        self.stats.result.durable.receipts += 1;
                    }
                    Dedup::Duplicate => self.stats.result.durable.deduplicated += 1,
                }
            }
            Event::Message {
                subject,
                reply,
                body,
            } => self.on_message(local, subject, reply, body, now_ns),
            Event::StreamAppended(_) => match self.senders[local].unstored.ack_oldest() {
                Ok(Some(send_ns)) => self.on_acknowledged(local, send_ns, false, now_ns),
                Ok(None) => {}
                Err(_) => self
                    .stats
                    .error(|| "an XADD reply with no XADD awaiting one".into()),
            },
            Event::StreamEntries { entries, count } if role == Role::Subscriber => {
                self.on_stream_entries(local, entries, count, now_ns)
            }
            Event::Ping
                if role == Role::Subscriber
                    && self.receivers[local].conn != self.senders[local].conn =>
            {
                // A subscriber connection of its own answers for itself.
                self.receivers[local].control.extend_from_slice(nats::PONG);
            }
            Event::Ping => {
                self.senders[local].pong_due = true;
                self.enqueue(local);
            }
            Event::ServerError(text) => {
                let text = String::from_utf8_lossy(text).into_owned();
                self.stats.error(|| format!("server error: {text}"))
            }
            Event::HubError {
                code,
                request,
                detail,
            } => {
                let name = relayhub_protocol::ErrorCodeV2::from_wire(code);
                self.stats.error(|| {
                    format!("hub error {code} ({name:?}) request {request} detail {detail}")
                })
            }
            Event::DeliveryV2 { .. } | Event::StreamEntries { .. } | Event::Receipt { .. } => self
                .stats
                .error(|| "a delivery on a publisher connection".into()),
            Event::Published(_)
            | Event::Pong
            | Event::Welcome { .. }
            | Event::WelcomeV2 { .. }
            | Event::Other => {}
        }
    }

    /// Redis Streams: one `XREADGROUP` reply on `local`'s subscriber
    /// connection. Its entries are handed on (dedup by id), then acked and
    /// deleted, and the next read goes out in the same write.
    fn on_stream_entries(&mut self, local: usize, entries: &[u8], count: u64, now_ns: u64) {
        let pending = self.receivers[local].redis_pending;
        let mut ids: Vec<&[u8]> = Vec::with_capacity(count as usize);
        for (id, body) in resp::entries(entries) {
            ids.push(id);
            if pending {
                self.stats.result.durable.redelivered += 1;
            }
            let Some(parsed) = resp::parse_stream_id(id) else {
                let id = String::from_utf8_lossy(id).into_owned();
                self.stats.error(|| format!("a stream entry id {id:?}"));
                continue;
            };
            match self.receivers[local].id_dedup.arrival(parsed) {
                Dedup::New => self.on_delivery(local, body, now_ns),
                Dedup::Duplicate => self.stats.result.durable.deduplicated += 1,
            }
        }
        let client = self.first + local as u32;
        let redis_count = self
            .durable
            .as_ref()
            .map_or(1, |durable| durable.redis_count);
        let receiver = &mut self.receivers[local];
        if !ids.is_empty() {
            resp::encode_xack_xdel(&mut receiver.control, client, &ids);
            self.stats.result.durable.acks += 1;
        }
        if pending {
            match ids.last() {
                // Pending entries after the last one read.
                Some(last) => receiver.redis_from = last.to_vec(),
                None => {
                    receiver.redis_pending = false;
                    receiver.redis_from = b">".to_vec();
                }
            }
        }
        let from = std::mem::take(&mut receiver.redis_from);
        resp::encode_xreadgroup(&mut receiver.control, client, redis_count, &from);
        receiver.redis_from = from;
    }

    fn on_delivery(&mut self, local: usize, body: &[u8], now_ns: u64) {
        let Some(header) = Header::read(body) else {
            return self
                .stats
                .error(|| format!("a body of {} bytes, shorter than the header", body.len()));
        };
        if body.len() != self.body_bytes {
            let expected = self.body_bytes;
            return self
                .stats
                .error(|| format!("a body of {} bytes, expected {expected}", body.len()));
        }
        let checkers = &mut self.receivers[local].checkers;
        let arrival = match checkers.record(header.sender, header.sequence) {
            Some(arrival) => arrival,
            None => {
                let (client, sender) = (self.first as usize + local, header.sender);
                return self.stats.error(|| {
                    format!("client {client} got a message from {sender}, not one of its senders")
                });
            }
        };
        if arrival == Arrival::Duplicated {
            return;
        }
        let sender = (header.sender - self.first) as usize;
        self.senders[sender].delivered += 1;
        self.owed = self.owed.saturating_sub(1);
        if let Load::Closed { .. } = self.config.load {
            self.enqueue(sender);
        }
        let stats = &mut self.stats;
        if now_ns < self.end_ns {
            stats.result.run_deliveries += 1;
            if now_ns >= self.warmup_ns {
                stats.result.deliveries += 1;
                stats.result.bytes += body.len() as u64;
                stats.unflushed_deliveries += 1;
            }
        }
        if header.send_ns >= self.warmup_ns {
            stats
                .histogram
                .saturating_record(now_ns.saturating_sub(header.send_ns).max(1));
        }
    }
}
