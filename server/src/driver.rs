//! The glommio driver: one executor per shard runs the accept loop, one task
//! per connection (its reader and writer side by side), a forwarder and a
//! consumer per mesh ring, and one timer. Every decision is the core's
//! ([`Shard`]): this module reads and writes sockets, moves mesh messages,
//! sleeps until the core's next deadline, and turns the core's [`Event`]s
//! into wake-ups and `shutdown(2)` calls.

use std::{
    cell::{Cell, RefCell},
    future::poll_fn,
    io::{self, IoSlice},
    os::fd::{AsRawFd, FromRawFd, RawFd},
    pin::Pin,
    rc::Rc,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Poll, Waker},
    time::{Duration, Instant},
};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::{
    net::{TcpListener, TcpStream},
    spawn_local,
    timer::sleep,
};
use relayhub_mesh::{Consumer, Producer, Refunder, Spender, TrySendError};
use relayhub_protocol::ErrorCodeV2;
use tracing::{debug, info, warn};

use crate::{
    config::{Config, Fsync, SPIN_RECENT},
    conn::ConnId,
    disk::{DiskLog, LogFailures, LogWriteError, ShardFiles},
    outbound::Outbound,
    shard::{self, Event, Limits, MeshMessage, Read, ReadReady, Shard, WriteReady},
    stats::ShardStats,
};

/// Most mesh messages moved per forwarder or consumer batch.
pub const MESH_BATCH_MAX: usize = 256;

/// The timer's granularity: deadlines are served at the next multiple of
/// this many milliseconds, so a burst of deadlines costs one wake-up. A
/// timeout fires no earlier than its deadline and normally at most this
/// much after it.
pub const TIMER_SLACK_MS: u64 = 10;

/// How often a shard checks for a shutdown request.
const SHUTDOWN_POLL: Duration = Duration::from_millis(20);

/// How long past the grace period a shard waits for its aborted
/// connections' tasks to end before it stops anyway.
const SHUTDOWN_ABORT_MARGIN_MS: u64 = 1_000;

/// Least time between two "accept failed" warnings of one shard.
const ACCEPT_WARNING_INTERVAL: Duration = Duration::from_secs(1);

/// Pause before accepting again after an error other than running out of
/// file descriptors.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// What every shard shares: the shutdown request and the counters.
pub struct Shared {
    /// Set once to start a graceful shutdown.
    pub shutdown: AtomicBool,
    /// Set once every shard has stopped (the metrics thread ends then).
    pub stopped: AtomicBool,
    /// Every shard's counters.
    pub stats: Vec<Arc<ShardStats>>,
}

impl Shared {
    /// Shared state for `stats.len()` shards.
    pub fn new(stats: Vec<Arc<ShardStats>>) -> Shared {
        Shared {
            shutdown: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            stats,
        }
    }
}

/// A shard's mesh endpoints: towards and from every other shard (`None` at
/// the shard's own index).
pub struct MeshEnds {
    /// Rings to other shards, with their byte budgets.
    pub producers: Vec<Option<(Producer<MeshMessage>, Spender)>>,
    /// Rings from other shards, with the refunds of their budgets.
    pub consumers: Vec<Option<(Consumer<MeshMessage>, Refunder)>>,
}

/// What the driver keeps with each connection in the core's table.
pub struct ConnIo {
    fd: RawFd,
    reader: Cell<Option<Waker>>,
    writer: Cell<Option<Waker>>,
}

/// Per-shard driver state shared by its tasks.
struct Context {
    config: Config,
    shard: RefCell<Shard<ConnIo>>,
    shared: Arc<Shared>,
    stats: Arc<ShardStats>,
    started: Instant,
    /// The wall clock (ms since the Unix epoch) when the shard started.
    clock_base_ms: u64,
    /// The forwarder of each target, parked on an empty outbox.
    forwarders: Vec<Cell<Option<Waker>>>,
    /// Forwarders holding a batch not yet published into their ring.
    forwarding: Cell<usize>,
    timer: Cell<Option<Waker>>,
    /// Set with [`Event::TimerChanged`]: the timer must look again.
    timer_changed: Cell<bool>,
    /// This context, for tasks spawned from inside a core call.
    me: std::rc::Weak<Context>,
    /// The log writer, parked until [`Event::LogReady`].
    log_writer: Cell<Option<Waker>>,
    /// The log's reader, parked until [`Event::BodyReadReady`].
    body_reader: Cell<Option<Waker>>,
    /// Connections adopted during a core call, whose tasks start after it.
    adopted: RefCell<Vec<(TcpStream, ConnId)>>,
    /// Adaptive spinning is on ([`Config::spin_adaptive`]).
    spin_adaptive: bool,
}

impl Context {
    /// The shard clock: milliseconds since the Unix epoch, as measured by
    /// a monotonic clock from the shard's start (never goes back).
    fn now_ms(&self) -> u64 {
        self.clock_base_ms + self.started.elapsed().as_millis() as u64
    }

    /// Cross-shard traffic went out or came in: with adaptive spinning,
    /// the executor spins before sleeping for [`SPIN_RECENT`] from now.
    fn cross_shard_traffic(&self) {
        if self.spin_adaptive {
            glommio::executor().spin_before_park_until(Some(Instant::now() + SPIN_RECENT));
        }
    }

    /// Runs `f` on the core, then carries out the events it raised.
    fn with_shard<R>(&self, f: impl FnOnce(&mut Shard<ConnIo>) -> R) -> R {
        let mut shard = self.shard.borrow_mut();
        let result = f(&mut shard);
        self.dispatch(&mut shard);
        drop(shard);
        // Spawned only now: glommio may start a task at once, and its
        // first poll borrows the core.
        let adopted = std::mem::take(&mut *self.adopted.borrow_mut());
        for (stream, id) in adopted {
            let context = self.me.upgrade().expect("the context outlives its tasks");
            spawn_local(serve(context, stream, id)).detach();
        }
        result
    }

    fn dispatch(&self, shard: &mut Shard<ConnIo>) {
        while let Some(event) = shard.poll_event() {
            match event {
                Event::HandOff(id) => {
                    let fd = shard.conn(id).and_then(|conn| {
                        // SAFETY: `conn.io.fd` is the open socket of a
                        // connection still in the table; `dup` makes a second
                        // descriptor of it for the shard that takes it over.
                        let fd = unsafe { libc::dup(conn.io.fd) };
                        (fd >= 0).then_some(fd)
                    });
                    shard.handle_handed_off(self.now_ms(), id, fd);
                }
                Event::LogReady => {
                    if let Some(waker) = self.log_writer.take() {
                        waker.wake();
                    }
                }
                Event::BodyReadReady => {
                    if let Some(waker) = self.body_reader.take() {
                        waker.wake();
                    }
                }
                Event::Adopt => {
                    while let Some(adoption) = shard.poll_adoption() {
                        self.adopt(shard, adoption);
                    }
                }
                Event::Writable(id) => wake(shard, id, |io| &io.writer),
                Event::Readable(id) => wake(shard, id, |io| &io.reader),
                Event::StopReading(id) => shut(shard, id, libc::SHUT_RD),
                Event::Abort(id) => shut(shard, id, libc::SHUT_RDWR),
                Event::MeshOutbox(target) => {
                    if let Some(waker) = self.forwarders[target].take() {
                        waker.wake();
                    }
                }
                Event::TimerChanged => {
                    self.timer_changed.set(true);
                    if let Some(waker) = self.timer.take() {
                        waker.wake();
                    }
                }
            }
        }
    }
}

impl Context {
    /// Takes over a socket another shard handed over.
    fn adopt(&self, shard: &mut Shard<ConnIo>, adoption: shard::Adoption) {
        // SAFETY: the descriptor was duplicated for this shard by the one
        // that accepted the socket, and is owned by nobody else.
        let stream = unsafe { TcpStream::from_raw_fd(adoption.fd) };
        let io = ConnIo {
            fd: adoption.fd,
            reader: Cell::new(None),
            writer: Cell::new(None),
        };
        match shard.handle_adopt(self.now_ms(), io, &adoption.buffered) {
            Ok(id) => self.adopted.borrow_mut().push((stream, id)),
            Err(refusal) => refuse(&stream, &refusal.bytes),
        }
    }
}

fn wake(shard: &Shard<ConnIo>, id: ConnId, which: impl Fn(&ConnIo) -> &Cell<Option<Waker>>) {
    if let Some(waker) = shard.conn(id).and_then(|conn| which(&conn.io).take()) {
        waker.wake();
    }
}

fn shut(shard: &Shard<ConnIo>, id: ConnId, how: libc::c_int) {
    if let Some(conn) = shard.conn(id) {
        // SAFETY: the fd belongs to a connection still in the table; its
        // task closes it only after `handle_closed` removed it.
        unsafe { libc::shutdown(conn.io.fd, how) };
    }
}

/// What one shard starts with.
pub struct ShardStart {
    /// The shard's index.
    pub index: usize,
    /// Its listening socket.
    pub listener_fd: RawFd,
    /// Its mesh ends.
    pub mesh: MeshEnds,
    /// Its log files (`--storage disk`), or none.
    pub files: Option<ShardFiles>,
    /// Told once the shard serves, or why it cannot.
    pub ready: std::sync::mpsc::Sender<Result<usize, String>>,
}

/// Milliseconds since the Unix epoch, now: the base of the shard clock, so
/// times in the log (entry and session expiry) mean the same after a
/// restart.
fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// Runs one shard until shutdown completes: recovers its log, then serves.
/// Called on the shard's own executor thread.
pub async fn run_shard(start: ShardStart, config: Config, shared: Arc<Shared>) {
    let ShardStart {
        index,
        listener_fd,
        mesh,
        files,
        ready,
    } = start;
    let shards = shared.stats.len();
    let stats = shared.stats[index].clone();
    let mut shard = Shard::new(
        index,
        shards,
        Limits::from_config(&config, shards),
        stats.clone(),
    );
    let started = Instant::now();
    let clock_base_ms = wall_clock_ms();
    let spin_adaptive = config.spin_adaptive(shards);
    if spin_adaptive {
        // No cross-shard traffic yet: sleep at once until some comes.
        glommio::executor().spin_before_park_until(Some(started));
    }
    let disk = match files {
        None => None,
        Some(files) => match recover(index, &files, &config, &mut shard, clock_base_ms).await {
            Ok(disk) => Some(disk),
            Err(error) => {
                let _ = ready.send(Err(format!("shard {index}: {error}")));
                return;
            }
        },
    };
    let context = Rc::new_cyclic(|me| Context {
        me: me.clone(),
        adopted: RefCell::new(Vec::new()),
        log_writer: Cell::new(None),
        body_reader: Cell::new(None),
        config,
        shard: RefCell::new(shard),
        shared,
        stats,
        started,
        clock_base_ms,
        forwarders: (0..shards).map(|_| Cell::new(None)).collect(),
        forwarding: Cell::new(0),
        timer: Cell::new(None),
        timer_changed: Cell::new(false),
        spin_adaptive,
    });
    // SAFETY: the fd is a listening socket opened for this shard by
    // `startup::listeners` and handed to nobody else.
    let listener = unsafe { TcpListener::from_raw_fd(listener_fd) };

    for (target, ends) in mesh.producers.into_iter().enumerate() {
        if let Some((producer, spender)) = ends {
            spawn_local(forward(context.clone(), target, producer, spender)).detach();
        }
    }
    for (from, ends) in mesh.consumers.into_iter().enumerate() {
        if let Some((consumer, refunder)) = ends {
            spawn_local(consume(context.clone(), from, consumer, refunder)).detach();
        }
    }
    spawn_local(run_timers(context.clone())).detach();
    if let Some(disk) = disk {
        spawn_local(read_bodies(context.clone(), disk.readable())).detach();
        spawn_local(write_log(context.clone(), disk)).detach();
    }
    if context.config.stats_interval_ms > 0 {
        spawn_local(log_stats(context.clone(), index)).detach();
    }
    let _ = ready.send(Ok(index));

    accept_until_shutdown(&context, listener, listener_fd).await;
    shutdown(&context, index).await;
}

/// Reads the shard's log back into `shard` and opens it for appending.
async fn recover(
    index: usize,
    files: &ShardFiles,
    config: &Config,
    shard: &mut Shard<ConnIo>,
    now_ms: u64,
) -> Result<DiskLog, crate::disk::DataDirError> {
    let (disk, recovered) = DiskLog::open(files, config.fsync, shard, now_ms).await?;
    let bytes = recovered.scan.valid_bytes;
    shard.finish_recovery(now_ms, bytes, bytes);
    shard.stats().recovered_records.set(recovered.scan.records);
    shard.stats().recovery_ms.set(recovered.elapsed_ms);
    info!(
        shard = index,
        records = recovered.scan.records,
        bytes,
        elapsed_ms = recovered.elapsed_ms,
        sessions = shard.durable_sessions(),
        file = %recovered.file.display(),
        "recovered the log"
    );
    Ok(disk)
}

/// Pause before a failed log write is tried again.
const LOG_RETRY: Duration = Duration::from_millis(100);

/// Writes the core's log batches, one at a time (what piles up meanwhile is
/// the next batch: group commit), syncing as the policy says, and tells the
/// core what is durable and how much room the disk gives the log. A failed
/// write goes back to the core, which hands it out again (with what came
/// since, or superseded by a compaction); a failed sync is retried; while
/// either fails the core refuses new durable relays with `StorageFull`.
async fn write_log(context: Rc<Context>, mut disk: DiskLog) {
    let interval = match disk.policy() {
        Fsync::Interval(ms) => Some(Duration::from_millis(ms)),
        Fsync::Always | Fsync::Never => None,
    };
    let mut last_sync = Instant::now();
    let mut failures = LogFailures::default();
    let room = disk.room();
    context.with_shard(|shard| shard.handle_log_room(room));
    loop {
        let next = poll_fn(|cx| {
            let now = context.now_ms();
            context.with_shard(|shard| match shard.poll_log(now) {
                Some(batch) => Poll::Ready(Some(batch)),
                None => {
                    context.log_writer.set(Some(cx.waker().clone()));
                    Poll::Pending
                }
            })
        });
        // Wake for the interval's sync, and to ask a full disk for room again.
        let due = [
            interval.map(|interval| interval.saturating_sub(last_sync.elapsed())),
            disk.limited().then_some(crate::disk::GROW_RETRY),
        ]
        .into_iter()
        .flatten()
        .min();
        let batch = match due {
            Some(due) => {
                let timeout = async {
                    sleep(due).await;
                    None
                };
                futures_lite::future::or(next, timeout).await
            }
            None => next.await,
        };
        let Some(batch) = batch else {
            if interval.is_some_and(|interval| last_sync.elapsed() >= interval) {
                // The interval passed with nothing new to write: sync.
                disk.start_sync();
                last_sync = Instant::now();
            }
            disk.grow().await;
            let room = disk.room();
            context.with_shard(|shard| shard.handle_log_room(room));
            continue;
        };
        match disk.write(&batch).await {
            Ok(()) => {}
            Err(LogWriteError::NotWritten(error)) => {
                failures.report(
                    &error,
                    if batch.new_generation {
                        "log compaction failed: the current generation stays the log, \
                         the compaction is tried again later"
                    } else {
                        "log write failed; written again every 100 ms, durable relays get \
                         StorageFull until it succeeds"
                    },
                );
                let (now, room) = (context.now_ms(), disk.room());
                context.with_shard(|shard| {
                    shard.handle_log_failed(now, batch);
                    shard.handle_log_room(room);
                });
                sleep(LOG_RETRY).await;
                continue;
            }
            Err(LogWriteError::NotSynced(mut error)) => loop {
                failures.report(
                    &error,
                    "fdatasync of the log failed; retried every 100 ms, durable relays get \
                     StorageFull until it succeeds",
                );
                context.with_shard(|shard| shard.handle_log_unsynced());
                sleep(LOG_RETRY).await;
                match disk.sync().await {
                    Ok(()) => break,
                    Err(again) => error = again,
                }
            },
        }
        failures.recovered("the log is written again");
        if interval.is_some_and(|interval| last_sync.elapsed() >= interval) {
            disk.start_sync();
            last_sync = Instant::now();
        }
        let now = context.now_ms();
        context
            .with_shard(|shard| shard.handle_log_written(now, batch.end_lsn, batch.new_generation));
        if batch.new_generation {
            // The core's entries point into the new file now.
            disk.readable().retire_old();
        }
        disk.grow().await;
        let room = disk.room();
        context.with_shard(|shard| shard.handle_log_room(room));
    }
}

/// Pause before a failed read of the log is tried again.
const READ_RETRY: Duration = Duration::from_millis(100);

/// Reads back the records the core asks for (bodies of entries whose
/// session was offline), each in a task of its own: the core bounds how
/// many bytes are being read at once. A read the disk refuses is tried
/// again every 100 ms (the session's delivery waits, nothing is skipped);
/// a record that does not check out is logged and left to the core.
async fn read_bodies(context: Rc<Context>, files: crate::disk::LogFiles) {
    loop {
        let read = poll_fn(|cx| {
            context.with_shard(|shard| match shard.poll_body_read() {
                Some(read) => Poll::Ready(read),
                None => {
                    context.body_reader.set(Some(cx.waker().clone()));
                    Poll::Pending
                }
            })
        })
        .await;
        let file = match files.file(read.pos) {
            Ok(file) => file,
            Err(error) => {
                tracing::error!(
                    %error,
                    user = read.user,
                    seq = read.seq,
                    "a stored body's log file is not open; read again at the session's next \
                     ack or resume"
                );
                context.with_shard(|shard| shard.handle_body_unread(read));
                continue;
            }
        };
        let context = context.clone();
        spawn_local(async move {
            let mut failures = LogFailures::default();
            let bytes = loop {
                match crate::disk::read_record(&file, read.pos).await {
                    Ok(bytes) => break bytes,
                    Err(error) => {
                        failures.report(
                            &error,
                            "reading a stored body back from the log failed; tried again \
                             every 100 ms, the session's delivery waits for it",
                        );
                        sleep(READ_RETRY).await;
                    }
                }
            };
            failures.recovered("the log is read again");
            let now = context.now_ms();
            let result = context.with_shard(|shard| shard.handle_body_read(now, read, &bytes));
            if let Err(error) = result {
                tracing::error!(
                    %error,
                    user = read.user,
                    seq = read.seq,
                    generation = read.pos.generation,
                    offset = read.pos.offset,
                    "a stored body read back from the log is unusable; read again at the \
                     session's next ack or resume"
                );
            }
        })
        .detach();
    }
}

/// Accepts until the shutdown starts, then takes the socket out of the
/// listening state (`fd` is `listener`'s).
async fn accept_until_shutdown(context: &Rc<Context>, listener: TcpListener, fd: RawFd) {
    let shutdown_requested = async {
        while !context.shared.shutdown.load(Ordering::Acquire) {
            sleep(SHUTDOWN_POLL).await;
        }
    };
    let accept_loop = async {
        let mut reserve = Reserve(context.shared.stats.len());
        let mut warnings = RateLimited::default();
        loop {
            // Descriptors are the process's: keep the pool full when we can.
            reserve.refill();
            let stream = match listener.accept().await {
                Ok(stream) => stream,
                Err(error) if out_of_descriptors(&error) && reserve.release() => {
                    // The reserve descriptor is free: take the waiting client.
                    let Ok(stream) = listener.accept().await else {
                        continue;
                    };
                    stream
                }
                Err(error) => {
                    // Out of descriptors with no reserve, or out of memory:
                    // keep serving the connections we have.
                    warnings.warn(&format!("accept failed: {error}"));
                    sleep(ACCEPT_RETRY).await;
                    continue;
                }
            };
            // Serve a client only while the pool stays full. Any shard's
            // accept can take the descriptor another shard freed from the
            // pool to refuse its client; served, that connection would keep
            // it, the pool could not be refilled, and from then on clients
            // at the limit would wait unanswered in the accept queue.
            if reserve.refill() {
                start_connection(context, stream);
                continue;
            }
            // At the limit: tell it why and close it; the next turn takes
            // the reserve back.
            let bytes =
                shard::refusal_bytes(relayhub_protocol::VERSION, ErrorCodeV2::ServerFull, 0);
            refuse(&stream, &bytes);
            context.stats.fd_refusals.incr();
            drop(stream);
            warnings.warn("out of file descriptors: refusing clients with ServerFull");
        }
    };
    futures_lite::future::or(shutdown_requested, accept_loop).await;
    // Closing the descriptor is not enough: the accept the loop had in the
    // ring holds the socket until the ring cancels it, so the kernel would
    // go on completing handshakes into the accept queue of a socket nobody
    // accepts from, and those clients would wait for the exit to be reset.
    // Shut down, the socket stops listening now: new clients are refused
    // at once for the rest of the shutdown.
    // SAFETY: `fd` is the listening socket `listener` owns, still open.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    drop(listener);
}

fn out_of_descriptors(error: &glommio::GlommioError<()>) -> bool {
    let source = match error {
        glommio::GlommioError::IoError(source) => source,
        glommio::GlommioError::EnhancedIoError { source, .. } => source,
        _ => return false,
    };
    matches!(source.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Descriptors held back so that, at the descriptor limit, the hub can
/// still accept a client to tell it `ServerFull` instead of leaving it
/// unanswered in the accept queue: one per shard, in one pool for the
/// process (descriptors are the process's), so that whichever shard has a
/// client waiting can use any of them.
static RESERVES: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());

/// A shard's use of the reserve pool; the number is the pool's size.
struct Reserve(usize);

impl Reserve {
    fn pool() -> std::sync::MutexGuard<'static, Vec<std::fs::File>> {
        RESERVES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Frees one reserved descriptor; false when the pool is empty.
    fn release(&mut self) -> bool {
        Self::pool().pop().is_some()
    }

    /// Fills the pool up to its size; true when it is full. (Opening
    /// `/dev/null` does not block; the lock is taken only here and in
    /// `release`, never on the hot path.)
    fn refill(&mut self) -> bool {
        let mut pool = Self::pool();
        while pool.len() < self.0 {
            match std::fs::File::open("/dev/null") {
                Ok(file) => pool.push(file),
                Err(_) => return false,
            }
        }
        true
    }
}

/// A warning logged at most once per [`ACCEPT_WARNING_INTERVAL`], with how
/// many were held back.
#[derive(Default)]
struct RateLimited {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    fn warn(&mut self, message: &str) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < ACCEPT_WARNING_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        warn!(suppressed = self.suppressed, "{message}");
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Writes a refusal to a fresh socket without waiting (a few dozen bytes
/// always fit an empty send buffer) and closes it.
fn refuse(stream: &TcpStream, bytes: &[u8]) {
    let fd = stream.as_raw_fd();
    // SAFETY: `fd` is the open socket `stream` owns; `bytes` is valid for
    // reads of its length.
    unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        );
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// Phase-by-phase graceful shutdown (the core's `shutdown.rs`): the driver
/// starts it and waits until the core says it is finished, or the grace
/// period is over and aborted connections had their margin.
async fn shutdown(context: &Rc<Context>, index: usize) {
    let now = context.now_ms();
    let deadline = now + context.config.shutdown_grace_ms;
    let closing = context.with_shard(|shard| {
        shard.handle_shutdown(now, deadline);
        shard.connections()
    });
    info!(
        shard = index,
        connections = closing,
        "shutting down: draining the mesh, then flushing"
    );
    loop {
        let finished = {
            let shard = context.shard.borrow();
            shard.is_finished() && shard.log_settled() && context.forwarding.get() == 0
        };
        if finished {
            break;
        }
        if context.now_ms() > deadline + SHUTDOWN_ABORT_MARGIN_MS {
            let left = context.shard.borrow().connections();
            warn!(
                shard = index,
                connections = left,
                "grace period over: dropping connections"
            );
            break;
        }
        sleep(Duration::from_millis(2)).await;
    }
    // The final counters show the inboxes as the shard leaves them.
    context.shard.borrow().refresh_session_gauges();
}

async fn log_stats(context: Rc<Context>, index: usize) {
    let interval = Duration::from_millis(context.config.stats_interval_ms);
    loop {
        sleep(interval).await;
        let connected = {
            let shard = context.shard.borrow();
            shard.refresh_session_gauges();
            shard.connected()
        };
        info!(shard = index, connected, "{}", context.stats.snapshot());
    }
}

/// Sleeps until the core's next deadline (rounded up to [`TIMER_SLACK_MS`])
/// or until the core moves it earlier, then lets the core fire what is due.
async fn run_timers(context: Rc<Context>) {
    loop {
        context.timer_changed.set(false);
        let next = context.with_shard(|shard| shard.poll_timeout());
        let changed = poll_fn(|cx| {
            if context.timer_changed.take() {
                Poll::Ready(())
            } else {
                context.timer.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        });
        match next {
            None => changed.await,
            Some(deadline) => {
                let target = deadline.div_ceil(TIMER_SLACK_MS) * TIMER_SLACK_MS;
                let wait = Duration::from_millis(target.saturating_sub(context.now_ms()));
                futures_lite::future::or(sleep(wait), changed).await;
            }
        }
        let now = context.now_ms();
        context.with_shard(|shard| shard.handle_timeout(now));
    }
}

/// Moves this shard's outbox for `target` into the ring, in batches, within
/// the ring's byte budget.
async fn forward(
    context: Rc<Context>,
    target: usize,
    mut producer: Producer<MeshMessage>,
    mut budget: Spender,
) {
    let mut batch = Vec::with_capacity(MESH_BATCH_MAX);
    loop {
        poll_fn(|cx| {
            context.with_shard(|shard| shard.poll_mesh(target, MESH_BATCH_MAX, &mut batch));
            if batch.is_empty() {
                context.forwarders[target].set(Some(cx.waker().clone()));
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        context.forwarding.set(context.forwarding.get() + 1);
        let delivered = forward_batch(&context, &mut batch, &mut producer, &mut budget).await;
        context.forwarding.set(context.forwarding.get() - 1);
        context.cross_shard_traffic();
        if !delivered {
            return;
        }
    }
}

/// Stages `batch` into the ring, waiting for budget or slots; false when
/// the other shard is gone.
async fn forward_batch(
    context: &Context,
    batch: &mut Vec<MeshMessage>,
    producer: &mut Producer<MeshMessage>,
    budget: &mut Spender,
) -> bool {
    for message in batch.drain(..) {
        let weight = message.weight() as u64;
        if !budget.try_spend(weight) {
            context.stats.ring_full.incr();
            producer.publish();
            if budget.spend(weight).await.is_err() {
                return false;
            }
        }
        match producer.try_stage(message) {
            Ok(()) => {}
            Err(TrySendError::Full(message)) => {
                context.stats.ring_full.incr();
                producer.publish();
                if producer.send(message).await.is_err() {
                    return false;
                }
            }
            Err(TrySendError::Closed(_)) => return false,
        }
    }
    producer.publish();
    true
}

/// Handles what shard `from` sends, refunding the ring's budget per batch.
async fn consume(
    context: Rc<Context>,
    from: usize,
    mut consumer: Consumer<MeshMessage>,
    mut refunder: Refunder,
) {
    loop {
        let mut weight = 0;
        let mut now = None;
        let received = consumer
            .recv_batch(MESH_BATCH_MAX, |message| {
                weight += message.weight() as u64;
                let now = *now.get_or_insert_with(|| context.now_ms());
                context.with_shard(|shard| shard.handle_mesh(now, from, message));
            })
            .await;
        refunder.refund(weight);
        if received == 0 {
            return;
        }
        context.cross_shard_traffic();
        glommio::yield_if_needed().await;
    }
}

/// Takes an accepted connection into the core and spawns its task, or
/// refuses it.
fn start_connection(context: &Rc<Context>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let io = ConnIo {
        fd: stream.as_raw_fd(),
        reader: Cell::new(None),
        writer: Cell::new(None),
    };
    let now = context.now_ms();
    match context.with_shard(|shard| shard.handle_accept(now, io)) {
        Ok(id) => {
            spawn_local(serve(context.clone(), stream, id)).detach();
        }
        Err(refusal) => refuse(&stream, &refusal.bytes),
    }
}

/// A connection's life: the reader and the writer run side by side in one
/// task (one allocation per connection); the core decides when each stops.
async fn serve(context: Rc<Context>, stream: TcpStream, id: ConnId) {
    let fd = stream.as_raw_fd();
    let stream = RefCell::new(stream);
    futures_lite::future::zip(
        read_loop(&context, &stream, id),
        write_loop(&context, &stream, id),
    )
    .await;
    if !handed_off(&context, id) {
        // SAFETY: `stream` still owns the open socket (dropped below); this
        // makes sure the peer sees the end even if the writer gave up early.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }
    context.with_shard(|shard| shard.handle_closed(id));
}

async fn read_loop(context: &Context, stream: &RefCell<TcpStream>, id: ConnId) {
    loop {
        let ready = poll_fn(|cx| {
            let now = context.now_ms();
            context.with_shard(|shard| match shard.poll_read(now, id) {
                ReadReady::Read => Poll::Ready(true),
                ReadReady::Stop => Poll::Ready(false),
                ReadReady::Paused => {
                    if let Some(conn) = shard.conn(id) {
                        conn.io.reader.set(Some(cx.waker().clone()));
                    }
                    Poll::Pending
                }
            })
        })
        .await;
        if !ready {
            return;
        }
        let read = poll_fn(|cx| {
            let mut shard = context.shard.borrow_mut();
            let buffer = shard.read_buffer(id);
            Pin::new(&mut *stream.borrow_mut()).poll_read(cx, buffer)
        })
        .await;
        let now = context.now_ms();
        let read = match read {
            Ok(0) => Read::End,
            Ok(len) => Read::Bytes(len),
            Err(error) => {
                debug!(?id, %error, "read failed");
                Read::Failed
            }
        };
        context.with_shard(|shard| shard.handle_read(now, id, read));
        if !matches!(read, Read::Bytes(_)) {
            return;
        }
        // A read of a busy socket completes at once: without a yield, one
        // connection would keep its shard (its own writer, the mesh, the
        // timers, every other client) waiting.
        futures_lite::future::yield_now().await;
    }
}

/// Writes the connection's outbound queue until the core says it is done
/// (drained and closing, or aborted) or the socket fails.
async fn write_loop(context: &Context, stream: &RefCell<TcpStream>, id: ConnId) {
    let fd = stream.borrow().as_raw_fd();
    loop {
        let ready = poll_fn(|cx| {
            context.with_shard(|shard| match shard.poll_write(id) {
                WriteReady::Write => Poll::Ready(true),
                WriteReady::Done => Poll::Ready(false),
                WriteReady::Idle => {
                    if let Some(conn) = shard.conn(id) {
                        conn.io.writer.set(Some(cx.waker().clone()));
                    }
                    Poll::Pending
                }
            })
        })
        .await;
        if !ready {
            break;
        }
        let sent = {
            let shard = context.shard.borrow();
            match shard.outbound(id) {
                Some(outbound) => send_queued(fd, outbound),
                None => break,
            }
        };
        let written = match sent {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                wait_writable(context, stream, id).await
            }
            other => other,
        };
        match written {
            Ok(written) => context.with_shard(|shard| shard.handle_written(id, written)),
            Err(error) => {
                debug!(?id, %error, "write failed");
                let now = context.now_ms();
                context.with_shard(|shard| shard.handle_write_failed(now, id));
                break;
            }
        }
    }
    if !handed_off(context, id) {
        // SAFETY: `fd` belongs to `stream`, which is still open (borrowed):
        // the client sees the end after what was written.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }
}

/// True when the connection's socket went to another shard: it must not be
/// shut down here (that would end it there too), only closed.
fn handed_off(context: &Context, id: ConnId) -> bool {
    context
        .shard
        .borrow()
        .conn(id)
        .is_some_and(|conn| conn.state() == crate::conn::ConnState::HandedOff)
}

/// One vectored, non-blocking write of the queue's front.
fn send_queued(fd: RawFd, outbound: &Outbound) -> io::Result<usize> {
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(crate::outbound::WRITE_SLICES_MAX);
    outbound.slices(&mut slices);
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = slices.as_ptr() as *mut libc::iovec;
    header.msg_iovlen = slices.len() as _;
    // SAFETY: IoSlice is ABI-compatible with iovec; the slices borrow the
    // queue, which is not touched until sendmsg returns.
    let sent = unsafe { libc::sendmsg(fd, &header, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// Waits until the socket takes bytes again, writing part of the queue's
/// first buffer through glommio (which parks on io_uring until writable).
/// An abort (`shutdown(2)` of the socket) ends the wait with an error.
async fn wait_writable(
    context: &Context,
    stream: &RefCell<TcpStream>,
    id: ConnId,
) -> io::Result<usize> {
    poll_fn(|cx| {
        let shard = context.shard.borrow();
        let Some(outbound) = shard.outbound(id) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        let mut slices = Vec::with_capacity(1);
        outbound.slices(&mut slices);
        let first: &[u8] = slices.first().map_or(&[], |slice| slice);
        Pin::new(&mut *stream.borrow_mut()).poll_write(cx, first)
    })
    .await
}
