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

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::checker::{Arrival, SequenceChecker};
use crate::client::Client;
use crate::config::{Load, RunConfig};
use crate::engine::{
    new_histogram, Clock, ExecutorResult, Shared, ERROR_SAMPLES_MAX, FLUSH_INTERVAL,
    WRITE_BATCH_BYTES_MAX,
};
use crate::error::LoadgenError;
use crate::header::{BodyTemplate, Header, HEADER_BYTES};
use crate::outbound::{Flushed, Outbound, LARGE_BODY_BYTES};
use crate::plan::Topology;
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

/// One socket.
struct Conn {
    fd: OwnedFd,
    /// The local client it belongs to.
    client: usize,
    role: Role,
    inbound: Inbound,
    open: bool,
}

/// How a sender's publications are encoded.
enum Encoding {
    /// One template per frame of a publication (one for relayhub and the
    /// sink, one per receiver for NATS and Redis).
    Templates(Vec<Template>),
    /// The encoder per message (a layout no template fits; not expected).
    PerMessage,
}

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
}

/// One receiving client: a checker per sender that sends to it, sorted by
/// sender index.
struct Receiver {
    checkers: Vec<(u32, SequenceChecker)>,
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
        let mut receiver_lists: Vec<Vec<(u32, SequenceChecker)>> = vec![Vec::new(); plan.len()];
        for (sender, targets) in plan.iter().enumerate() {
            for &target in targets {
                receiver_lists[target].push(((first + sender) as u32, SequenceChecker::default()));
            }
        }
        for list in &mut receiver_lists {
            list.sort_unstable_by_key(|(sender, _)| *sender);
        }
        let addresses: Vec<u64> = clients.iter().map(|client| client.address).collect();
        let echo = topology == Topology::Echo;
        let body = BodyTemplate::new(config.body_bytes);
        let interval_ns = match config.load {
            Load::Open { rate } => config.clients as f64 * 1e9 / rate,
            Load::Closed { .. } => 0.0,
        };
        let mut conns = Vec::with_capacity(clients.len() * 2);
        let mut senders = Vec::with_capacity(clients.len());
        for (local, client) in clients.into_iter().enumerate() {
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
            let encoding = templates(kind, echo, &receivers, body.len()).map_or(
                Encoding::PerMessage,
                |mut templates| {
                    if body.len() < LARGE_BODY_BYTES {
                        templates.iter_mut().for_each(|t| t.fill(body.bytes()));
                    }
                    Encoding::Templates(templates)
                },
            );
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
            });
        }
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
                receivers: receiver_lists
                    .into_iter()
                    .map(|checkers| Receiver { checkers })
                    .collect(),
                large: body.len() >= LARGE_BODY_BYTES,
                body,
                stats: LocalStats::new(),
                queue: Vec::new(),
                sending_over: false,
                owed: 0,
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
            let wake = next_flush_ns.min(phase_end).min(next_send_ns);
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
            if !c.open {
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

    /// Handles every complete message buffered on `conn`.
    fn decode(&mut self, conn: usize, now_ns: u64) {
        let c = &mut self.conns[conn];
        let (local, role) = (c.client, c.role);
        loop {
            match c.inbound.next_event() {
                Ok(Some(event)) => self.state.on_event(local, role, event, now_ns),
                Ok(None) => return,
                Err(error) => {
                    let client = self.state.first as usize + local;
                    self.state
                        .stats
                        .error(|| format!("client {client}: {error}"));
                    return self.close(conn);
                }
            }
        }
    }

    fn close(&mut self, conn: usize) {
        let c = &mut self.conns[conn];
        if c.open {
            c.open = false;
            let _ = self.epoll.delete(c.fd.as_raw_fd());
        }
    }

    /// The socket of `conn` has room again.
    fn on_writable(&mut self, conn: usize) {
        let sender = self.conns[conn].client;
        if self.state.senders[sender].conn == conn && self.flush(sender) {
            self.state.enqueue(sender);
        }
    }

    /// Writes `sender`'s pending bytes; true when all are written.
    fn flush(&mut self, sender: usize) -> bool {
        let state = &mut self.state;
        let s = &mut state.senders[sender];
        let conn = &self.conns[s.conn];
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
            if s.dead || s.blocked {
                return;
            }
            let outstanding = s.sent - s.delivered / state.fanout;
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
            state.append_pong(sender);
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
        if self.state.senders[sender].blocked {
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
        state.append_pong(sender);
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
            if s.dead || s.blocked {
                // Woken by room on its socket.
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
        for receiver in &state.receivers {
            for (sender, checker) in &receiver.checkers {
                let sent = state.senders[(*sender - state.first) as usize].sent;
                result.counts.add(&checker.finish(sent));
            }
        }
        result.sent = state.senders.iter().map(|sender| sender.sent).sum();
        // The sockets close here.
        drop(self.conns);
        result
    }
}

/// The templates of one sender's publication, if the encoder fits them.
fn templates(
    kind: TargetKind,
    echo: bool,
    receivers: &[u64],
    body_len: usize,
) -> Option<Vec<Template>> {
    let learn = |encode: &crate::wire::template::Encode<'_>| {
        Template::learn(body_len, encode).ok().flatten()
    };
    match kind {
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

    /// Every sender has all its deliveries.
    fn all_delivered(&self) -> bool {
        self.owed == 0
            && self
                .senders
                .iter()
                .all(|sender| sender.delivered >= sender.sent * self.fanout)
    }

    /// Appends one publication from `sender` to its outbound buffer.
    fn encode_one(&mut self, sender: usize, send_ns: u64) -> Result<(), WireError> {
        let s = &mut self.senders[sender];
        let sequence = s.sent;
        let body = self.body.stamp(&Header {
            sender: self.first + sender as u32,
            sequence,
            send_ns,
        });
        let request = sequence + 1;
        match &s.encoding {
            Encoding::Templates(templates) if self.large => {
                for template in templates {
                    template.write_head(s.out.buf(), request, &body[..HEADER_BYTES]);
                    s.out.mark_tail();
                    template.write_suffix(s.out.buf(), request);
                }
            }
            Encoding::Templates(templates) => {
                for template in templates {
                    template.write_stamped(s.out.buf(), request, &body[..HEADER_BYTES]);
                }
            }
            Encoding::PerMessage => match (self.kind, s.out.buf()) {
                (TargetKind::Relayhub | TargetKind::Sink, out) if self.echo => {
                    relayhub::encode_echo(out, request, body)?
                }
                (TargetKind::Relayhub | TargetKind::Sink, out) => {
                    relayhub::encode_relay(out, request, &s.receivers, body)?
                }
                (TargetKind::Nats, out) => s
                    .receivers
                    .iter()
                    .for_each(|&to| nats::encode_publish(out, to as u32, body)),
                (TargetKind::Redis, out) => s
                    .receivers
                    .iter()
                    .for_each(|&to| resp::encode_publish(out, to as u32, body)),
            },
        }
        s.sent = sequence + 1;
        self.owed += self.fanout;
        Ok(())
    }

    fn append_pong(&mut self, sender: usize) {
        let s = &mut self.senders[sender];
        if std::mem::take(&mut s.pong_due) {
            s.out.buf().extend_from_slice(nats::PONG);
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
                let name = relayhub_protocol::ErrorCode::from_wire(code);
                self.stats.error(|| {
                    format!("hub error {code} ({name:?}) request {request} detail {detail}")
                })
            }
            Event::Published(_) | Event::Pong | Event::Welcome { .. } | Event::Other => {}
        }
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
        let arrival = match checkers.binary_search_by_key(&header.sender, |(sender, _)| *sender) {
            Ok(position) => checkers[position].1.record(header.sequence),
            Err(_) => {
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
