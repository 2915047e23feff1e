//! The traffic engine: executors, senders, receivers, window accounting,
//! the drain at the end.
//!
//! One glommio `LocalExecutor` per `--cores`; each owns a contiguous range
//! of clients and every sender's receivers are in the same range (see
//! [`crate::plan`]), so all per-message state is local `Cell`s. Per client
//! there is one writer task and one reader task per connection. The only
//! state shared across threads is [`Shared`]: the start signal and the
//! numbers the progress line reads, flushed every [`FLUSH_INTERVAL`].

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::{spawn_local, Task};
use hdrhistogram::Histogram;

use crate::checker::{Arrival, SequenceChecker, SequenceCounts};
use crate::client::{connect, Client};
use crate::config::{Load, RunConfig, Scenario};
use crate::conn::{split, ReadHalf, WriteHalf};
use crate::error::LoadgenError;
use crate::header::{BodyTemplate, Header};
use crate::plan::{client_range, receivers, SplitMix64, Topology};
use crate::target::TargetKind;
use crate::wire::inbound::Inbound;
use crate::wire::{nats, relayhub, resp, Event, WireError};

/// How often executors publish their counters for the progress line.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// A write is built from whole messages up to about this many bytes (at
/// least one message): many frames, one syscall.
pub const WRITE_BATCH_BYTES_MAX: usize = 256 * 1024;

/// Error texts kept per run (the count is always exact).
pub const ERROR_SAMPLES_MAX: usize = 8;

/// Highest latency the histograms hold (60 s, in ns); above is clamped.
pub const LATENCY_NS_MAX: u64 = 60_000_000_000;

/// `start_ns` before the run starts.
const NOT_STARTED: u64 = u64::MAX;

/// A latency histogram in ns with 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("valid histogram bounds")
}

/// State shared by the executors and the main thread.
pub struct Shared {
    /// The monotonic origin; run time is measured from `start_ns` after it.
    pub base: Instant,
    /// Offset of the run start from `base`; [`NOT_STARTED`] until set.
    start_ns: AtomicU64,
    /// Executors whose clients are connected.
    pub ready: AtomicUsize,
    /// Executors that finished their part (storm: all connected).
    pub done: AtomicUsize,
    /// Set when any executor failed before the start: everyone gives up.
    pub abort: AtomicBool,
    /// Storm and idle: the main thread tells executors to close.
    pub release: AtomicBool,
    /// The first failure, reported by the main thread.
    pub failure: Mutex<Option<LoadgenError>>,
    /// Deliveries measured so far (flushed every [`FLUSH_INTERVAL`]).
    pub deliveries: AtomicU64,
    /// Errors so far (flushed).
    pub errors: AtomicU64,
    /// Latencies so far (flushed); the final histogram at the end.
    pub histogram: Mutex<Histogram<u64>>,
}

impl Shared {
    /// Fresh shared state.
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared {
            base: Instant::now(),
            start_ns: AtomicU64::new(NOT_STARTED),
            ready: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            abort: AtomicBool::new(false),
            release: AtomicBool::new(false),
            failure: Mutex::new(None),
            deliveries: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            histogram: Mutex::new(new_histogram()),
        })
    }

    /// Starts the run now.
    pub fn start(&self) {
        let now = self.base.elapsed().as_nanos() as u64;
        self.start_ns.store(now, Ordering::Release);
    }

    /// Nanoseconds since the start (0 before it).
    pub fn now_ns(&self) -> u64 {
        let start = self.start_ns.load(Ordering::Acquire);
        (self.base.elapsed().as_nanos() as u64).saturating_sub(start)
    }

    /// Records a failure before the start and makes everyone give up.
    pub fn fail(&self, error: LoadgenError) {
        let mut failure = self.failure.lock().expect("failure lock");
        failure.get_or_insert(error);
        self.abort.store(true, Ordering::Release);
    }

    /// Waits (polling) until the main thread starts the run.
    pub async fn wait_start(&self) -> Result<Clock, ()> {
        loop {
            if self.abort.load(Ordering::Acquire) {
                return Err(());
            }
            let start = self.start_ns.load(Ordering::Acquire);
            if start != NOT_STARTED {
                return Ok(Clock {
                    base: self.base,
                    start_ns: start,
                });
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Waits (polling) until the main thread says to close.
    pub async fn wait_release(&self) {
        while !self.release.load(Ordering::Acquire) && !self.abort.load(Ordering::Acquire) {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The run clock of one executor: ns since the common start.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base: Instant,
    start_ns: u64,
}

impl Clock {
    /// Nanoseconds since the run start.
    pub fn now_ns(&self) -> u64 {
        (self.base.elapsed().as_nanos() as u64).saturating_sub(self.start_ns)
    }
}

/// What one executor hands back at the end.
#[derive(Debug, Default)]
pub struct ExecutorResult {
    /// Sum over its (sender, receiver) pairs.
    pub counts: SequenceCounts,
    /// Publications sent.
    pub sent: u64,
    /// Deliveries received during the measured window.
    pub deliveries: u64,
    /// Body bytes of those deliveries.
    pub bytes: u64,
    /// Errors of every kind.
    pub errors: u64,
    /// The first few error texts.
    pub error_samples: Vec<String>,
    /// Storm: connections opened, and ns from start to the last one ready.
    pub connected: u64,
    /// Storm: ns from the start to the last connection ready.
    pub connect_ns: u64,
}

/// Counters local to one executor, flushed to [`Shared`].
struct LocalStats {
    histogram: Histogram<u64>,
    unflushed_deliveries: u64,
    unflushed_errors: u64,
    result: ExecutorResult,
}

impl LocalStats {
    fn new() -> Self {
        LocalStats {
            histogram: new_histogram(),
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

/// One sending client.
struct Sender {
    /// Publications sent (the next sequence number).
    sent: Cell<u64>,
    /// Deliveries of this sender's messages, over all its receivers.
    delivered: Cell<u64>,
    /// Addresses of the receivers (user ids or client indices).
    receivers: Vec<u64>,
    /// The writer task, when it waits for its window or a PONG to send.
    waker: Cell<Option<Waker>>,
    /// NATS asked this connection for a PONG.
    pong_due: Cell<bool>,
}

impl Sender {
    fn wake(&self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// One receiving client: a checker per sender that sends to it, sorted by
/// sender index.
struct Receiver {
    checkers: Vec<(u32, SequenceChecker)>,
}

/// Which stream a reader reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Deliveries (and, on NATS and relayhub, everything else).
    Subscriber,
    /// Redis' publisher connection: PUBLISH replies.
    Publisher,
}

/// The per-executor state of a traffic run.
struct Executor {
    config: Arc<RunConfig>,
    shared: Arc<Shared>,
    clock: Clock,
    first: u32,
    fanout: u64,
    echo: bool,
    senders: Vec<Sender>,
    receivers: Vec<RefCell<Receiver>>,
    stats: RefCell<LocalStats>,
    /// Sending is over (end of the run): writers stop.
    sending_over: Cell<bool>,
    /// Readers are being stopped: EOF is expected, not an error.
    stopping: Cell<bool>,
}

/// Runs executor `index`'s part of a run: connects, waits for the start,
/// drives the scenario, hands back its counts. Failures before the start go
/// to [`Shared::fail`].
pub async fn run_executor(
    config: Arc<RunConfig>,
    shared: Arc<Shared>,
    index: usize,
) -> ExecutorResult {
    let outcome = match config.scenario {
        Scenario::Traffic(topology) => {
            traffic(config.clone(), shared.clone(), index, topology).await
        }
        Scenario::Storm => crate::connections::storm(config.clone(), shared.clone(), index).await,
        Scenario::Idle => crate::connections::idle(config.clone(), shared.clone(), index).await,
    };
    match outcome {
        Ok(result) => result,
        Err(error) => {
            shared.fail(error);
            ExecutorResult::default()
        }
    }
}

/// Connects clients `first .. first + count` with at most
/// `connect_concurrency` connects in flight; keeps going after a failure
/// only if `keep_going` (storm), counting it.
pub async fn connect_range(
    config: &RunConfig,
    first: usize,
    count: usize,
    publisher: bool,
) -> Vec<Result<(Client, u64), LoadgenError>> {
    let permits = Rc::new(glommio::sync::Semaphore::new(
        config.connect_concurrency.max(1) as u64,
    ));
    let target = Rc::new(config.target.clone());
    let tasks: Vec<Task<Result<(Client, u64), LoadgenError>>> = (first..first + count)
        .map(|index| {
            let permits = permits.clone();
            let target = target.clone();
            spawn_local(async move {
                let _permit = permits
                    .acquire_permit(1)
                    .await
                    .expect("semaphore never closed");
                let began = Instant::now();
                let client = connect(&target, index as u32, publisher).await?;
                Ok((client, began.elapsed().as_nanos() as u64))
            })
        })
        .collect();
    let mut clients = Vec::with_capacity(count);
    for task in tasks {
        clients.push(task.await);
    }
    clients
}

async fn traffic(
    config: Arc<RunConfig>,
    shared: Arc<Shared>,
    index: usize,
    topology: Topology,
) -> Result<ExecutorResult, LoadgenError> {
    let (first, count) = client_range(config.clients, config.cores, index);
    let mut rng = SplitMix64::new(config.seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let plan = receivers(topology, count, &mut rng)?;
    let publisher = config.target.kind == TargetKind::Redis;
    let mut clients = Vec::with_capacity(count);
    for outcome in connect_range(&config, first, count, publisher).await {
        clients.push(outcome?.0);
    }
    shared.ready.fetch_add(1, Ordering::AcqRel);
    let Ok(clock) = shared.wait_start().await else {
        return Ok(ExecutorResult::default());
    };
    let executor = Rc::new(build_executor(
        &config, &shared, clock, first, &plan, &clients, topology,
    ));

    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for (local, client) in clients.into_iter().enumerate() {
        let (read, write) = split(client.stream);
        readers.push(spawn_local(reader(
            executor.clone(),
            local,
            read,
            client.inbound,
            Role::Subscriber,
        )));
        let write = match client.publisher {
            Some((publisher, inbound)) => {
                let (read, write) = split(publisher);
                readers.push(spawn_local(reader(
                    executor.clone(),
                    local,
                    read,
                    inbound,
                    Role::Publisher,
                )));
                write
            }
            None => write,
        };
        writers.push(spawn_local(writer(executor.clone(), local, write)));
    }
    let flusher = spawn_local(flusher(executor.clone()));
    let stopper = spawn_local(stopper(executor.clone()));
    for writer in writers {
        writer.await;
    }
    drain(&executor).await;
    executor.stopping.set(true);
    drop(readers);
    drop(flusher);
    drop(stopper);
    Ok(finish(&executor))
}

fn build_executor(
    config: &Arc<RunConfig>,
    shared: &Arc<Shared>,
    clock: Clock,
    first: usize,
    plan: &[Vec<usize>],
    clients: &[Client],
    topology: Topology,
) -> Executor {
    let mut receiver_lists: Vec<Vec<(u32, SequenceChecker)>> = vec![Vec::new(); plan.len()];
    for (sender, targets) in plan.iter().enumerate() {
        for &target in targets {
            receiver_lists[target].push(((first + sender) as u32, SequenceChecker::default()));
        }
    }
    for list in &mut receiver_lists {
        list.sort_unstable_by_key(|(sender, _)| *sender);
    }
    Executor {
        config: config.clone(),
        shared: shared.clone(),
        clock,
        first: first as u32,
        fanout: topology.fanout() as u64,
        echo: topology == Topology::Echo,
        senders: plan
            .iter()
            .map(|targets| Sender {
                sent: Cell::new(0),
                delivered: Cell::new(0),
                receivers: targets
                    .iter()
                    .map(|&target| clients[target].address)
                    .collect(),
                waker: Cell::new(None),
                pong_due: Cell::new(false),
            })
            .collect(),
        receivers: receiver_lists
            .into_iter()
            .map(|checkers| RefCell::new(Receiver { checkers }))
            .collect(),
        stats: RefCell::new(LocalStats::new()),
        sending_over: Cell::new(false),
        stopping: Cell::new(false),
    }
}

impl Executor {
    fn error(&self, text: impl FnOnce() -> String) {
        self.stats.borrow_mut().error(text);
    }

    /// Handles one event read by client `local`'s reader.
    fn on_event(&self, local: usize, role: Role, event: Event<'_>, now_ns: u64) {
        match event {
            Event::Delivery(body) if role == Role::Subscriber => {
                self.on_delivery(local, body, now_ns)
            }
            Event::Delivery(_) => self.error(|| "a delivery on a publisher connection".into()),
            Event::Published(count) if count < 1 => {
                self.error(|| format!("PUBLISH reached {count} subscribers (message went nowhere)"))
            }
            Event::Ping => {
                self.senders[local].pong_due.set(true);
                self.senders[local].wake();
            }
            Event::ServerError(text) => {
                let text = String::from_utf8_lossy(text).into_owned();
                self.error(|| format!("server error: {text}"))
            }
            Event::HubError {
                code,
                request,
                detail,
            } => {
                let name = relayhub_protocol::ErrorCode::from_wire(code);
                self.error(|| {
                    format!("hub error {code} ({name:?}) request {request} detail {detail}")
                })
            }
            Event::Published(_) | Event::Pong | Event::Welcome { .. } | Event::Other => {}
        }
    }

    fn on_delivery(&self, local: usize, body: &[u8], now_ns: u64) {
        let Some(header) = Header::read(body) else {
            return self
                .error(|| format!("a body of {} bytes, shorter than the header", body.len()));
        };
        if body.len() != self.config.body_bytes {
            let expected = self.config.body_bytes;
            return self.error(|| format!("a body of {} bytes, expected {expected}", body.len()));
        }
        let arrival = {
            let mut receiver = self.receivers[local].borrow_mut();
            match receiver
                .checkers
                .binary_search_by_key(&header.sender, |(sender, _)| *sender)
            {
                Ok(position) => receiver.checkers[position].1.record(header.sequence),
                Err(_) => {
                    drop(receiver);
                    let sender = header.sender;
                    return self.error(|| {
                        format!(
                            "client {} got a message from {sender}, not one of its senders",
                            self.first as usize + local
                        )
                    });
                }
            }
        };
        if arrival == Arrival::Duplicated {
            return;
        }
        let sender = &self.senders[(header.sender - self.first) as usize];
        sender.delivered.set(sender.delivered.get() + 1);
        sender.wake();
        let mut stats = self.stats.borrow_mut();
        if now_ns >= self.config.warmup_ns() && now_ns < self.config.end_ns() {
            stats.result.deliveries += 1;
            stats.result.bytes += body.len() as u64;
            stats.unflushed_deliveries += 1;
        }
        if header.send_ns >= self.config.warmup_ns() {
            stats
                .histogram
                .saturating_record(now_ns.saturating_sub(header.send_ns).max(1));
        }
    }

    /// Appends one publication from sender `local` to `out`.
    fn encode_one(
        &self,
        local: usize,
        body: &mut BodyTemplate,
        send_ns: u64,
        out: &mut BytesMut,
    ) -> Result<(), WireError> {
        let sender = &self.senders[local];
        let sequence = sender.sent.get();
        let body = body.stamp(&Header {
            sender: self.first + local as u32,
            sequence,
            send_ns,
        });
        let request = sequence + 1;
        match self.config.target.kind {
            TargetKind::Relayhub if self.echo => relayhub::encode_echo(out, request, body)?,
            TargetKind::Relayhub => relayhub::encode_relay(out, request, &sender.receivers, body)?,
            TargetKind::Nats => sender
                .receivers
                .iter()
                .for_each(|&to| nats::encode_publish(out, to as u32, body)),
            TargetKind::Redis => sender
                .receivers
                .iter()
                .for_each(|&to| resp::encode_publish(out, to as u32, body)),
        }
        sender.sent.set(sequence + 1);
        Ok(())
    }

    fn append_pong(&self, local: usize, out: &mut BytesMut) {
        if self.senders[local].pong_due.replace(false) {
            out.extend_from_slice(nats::PONG);
        }
    }

    /// Closed loop: how many publications sender `local` may send now
    /// (`Some(0)`: only a PONG is due), `None` once sending is over.
    async fn window_open(&self, local: usize, window: u64) -> Option<u64> {
        let sender = &self.senders[local];
        futures_lite::future::poll_fn(|cx| {
            if self.sending_over.get() {
                return Poll::Ready(None);
            }
            let outstanding = sender.sent.get() - sender.delivered.get() / self.fanout;
            if outstanding < window {
                return Poll::Ready(Some(window - outstanding));
            }
            if sender.pong_due.get() {
                return Poll::Ready(Some(0));
            }
            sender.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    /// Every sender has all its deliveries.
    fn all_delivered(&self) -> bool {
        self.senders
            .iter()
            .all(|sender| sender.delivered.get() >= sender.sent.get() * self.fanout)
    }
}

async fn reader(
    executor: Rc<Executor>,
    local: usize,
    mut read: ReadHalf,
    mut inbound: Inbound,
    role: Role,
) {
    loop {
        // Events already buffered (the handshake may have read past its end).
        loop {
            match inbound.next_event() {
                Ok(Some(event)) => executor.on_event(local, role, event, executor.clock.now_ns()),
                Ok(None) => break,
                Err(error) => {
                    return executor
                        .error(|| format!("client {}: {error}", executor.first as usize + local));
                }
            }
        }
        let outcome = read.read(inbound.spare()).await;
        match outcome {
            Ok(0) => {
                if !executor.stopping.get() {
                    executor.error(|| {
                        format!(
                            "client {}: the server closed the connection",
                            executor.first as usize + local
                        )
                    });
                }
                return;
            }
            Ok(read) => inbound.commit(read),
            Err(error) => {
                if !executor.stopping.get() {
                    executor.error(|| {
                        format!("client {}: read: {error}", executor.first as usize + local)
                    });
                }
                return;
            }
        }
    }
}

async fn writer(executor: Rc<Executor>, local: usize, mut write: WriteHalf) {
    let mut out = BytesMut::with_capacity(WRITE_BATCH_BYTES_MAX.min(64 * 1024));
    let mut body = BodyTemplate::new(executor.config.body_bytes);
    let outcome = match executor.config.load {
        Load::Closed { window } => {
            closed_loop(&executor, local, &mut write, &mut out, &mut body, window).await
        }
        Load::Open { rate } => {
            open_loop(&executor, local, &mut write, &mut out, &mut body, rate).await
        }
    };
    if let Err(error) = outcome {
        executor.error(|| format!("client {}: {error}", executor.first as usize + local));
    }
}

async fn closed_loop(
    executor: &Executor,
    local: usize,
    write: &mut WriteHalf,
    out: &mut BytesMut,
    body: &mut BodyTemplate,
    window: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    while let Some(allowed) = executor.window_open(local, window).await {
        out.clear();
        let now = executor.clock.now_ns();
        let mut count = 0;
        while count < allowed && (count == 0 || out.len() < WRITE_BATCH_BYTES_MAX) {
            executor.encode_one(local, body, now, out)?;
            count += 1;
        }
        executor.append_pong(local, out);
        write.write_all(out).await?;
    }
    Ok(())
}

async fn open_loop(
    executor: &Executor,
    local: usize,
    write: &mut WriteHalf,
    out: &mut BytesMut,
    body: &mut BodyTemplate,
    rate: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let config = &executor.config;
    let interval_ns = config.clients as f64 * 1e9 / rate;
    // Spread the senders' phases evenly over one interval.
    let phase_ns = interval_ns * f64::from(executor.first + local as u32) / config.clients as f64;
    let end_ns = config.end_ns();
    let intended = |sequence: u64| (phase_ns + interval_ns * sequence as f64) as u64;
    loop {
        let due = intended(executor.senders[local].sent.get());
        if due >= end_ns || executor.sending_over.get() {
            return Ok(());
        }
        let now = executor.clock.now_ns();
        if due > now {
            glommio::timer::sleep(Duration::from_nanos(due - now)).await;
            continue;
        }
        out.clear();
        loop {
            let due = intended(executor.senders[local].sent.get());
            if due > now || due >= end_ns || out.len() >= WRITE_BATCH_BYTES_MAX {
                break;
            }
            executor.encode_one(local, body, due, out)?;
        }
        executor.append_pong(local, out);
        write.write_all(out).await?;
    }
}

/// Flushes the counters for the progress line.
async fn flusher(executor: Rc<Executor>) {
    loop {
        glommio::timer::sleep(FLUSH_INTERVAL).await;
        executor.stats.borrow_mut().flush(&executor.shared);
    }
}

/// Ends sending at the end of the run, waking the writers.
async fn stopper(executor: Rc<Executor>) {
    let end_ns = executor.config.end_ns();
    loop {
        let now = executor.clock.now_ns();
        if now >= end_ns {
            break;
        }
        glommio::timer::sleep(Duration::from_nanos(end_ns - now)).await;
    }
    executor.sending_over.set(true);
    executor.senders.iter().for_each(Sender::wake);
}

/// Waits until everything sent was delivered, or the drain time is over.
async fn drain(executor: &Executor) {
    let deadline = executor.config.end_ns() + executor.config.drain.as_nanos() as u64;
    while !executor.all_delivered() && executor.clock.now_ns() < deadline {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

/// Final counts: what each receiver missed is lost.
fn finish(executor: &Executor) -> ExecutorResult {
    let mut stats = executor.stats.borrow_mut();
    stats.flush(&executor.shared);
    let mut result = std::mem::take(&mut stats.result);
    for receiver in &executor.receivers {
        for (sender, checker) in &receiver.borrow().checkers {
            let sent = executor.senders[(*sender - executor.first) as usize]
                .sent
                .get();
            result.counts.add(&checker.finish(sent));
        }
    }
    result.sent = executor
        .senders
        .iter()
        .map(|sender| sender.sent.get())
        .sum();
    result
}
