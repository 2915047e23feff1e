//! The glommio driver: one executor per shard, the accept loop, each
//! connection's reader and writer, the mesh forwarders and consumers, and
//! graceful shutdown. All protocol and routing decisions live in
//! [`Session`] and [`Shard`]; this module only moves bytes.

use std::{
    cell::{Cell, RefCell},
    future::poll_fn,
    io::{self, IoSlice},
    os::fd::{AsRawFd, FromRawFd, RawFd},
    pin::Pin,
    rc::Rc,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    task::Poll,
    time::{Duration, Instant},
};

use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::{
    net::{TcpListener, TcpStream},
    spawn_local,
    timer::sleep,
};
use relayhub_mesh::{Consumer, Producer, TrySendError};
use relayhub_protocol::{encode, Error as ErrorFrame, ErrorCode, PREFACE};
use tracing::{debug, info, warn};

use crate::{
    config::Config,
    outbound::OutboundState,
    session::{Flow, Session},
    shard::{Conn, MeshMessage, Shard},
    stats::ShardStats,
};

/// Bytes of the per-shard read buffer that idle and small-frame
/// connections share (a connection holds a buffer only while a frame is
/// partially received). 64 KiB per shard.
pub const SHARD_READ_BYTES: usize = 64 << 10;

/// Most mesh messages moved per forwarder or consumer batch.
pub const MESH_BATCH_MAX: usize = 256;

/// How often a shard checks for a shutdown request.
const SHUTDOWN_POLL: Duration = Duration::from_millis(20);

/// What every shard shares: the shutdown request and the global quiescence
/// bookkeeping. Read-mostly; touched only at shutdown.
pub struct Shared {
    /// Set once to start a graceful shutdown.
    pub shutdown: AtomicBool,
    /// Shards that have stopped reading from clients.
    stopped_reading: AtomicUsize,
    /// Every shard's counters (mesh sent/received tell when the mesh is idle).
    pub stats: Vec<Arc<ShardStats>>,
}

impl Shared {
    /// Shared state for `stats.len()` shards.
    pub fn new(stats: Vec<Arc<ShardStats>>) -> Shared {
        Shared {
            shutdown: AtomicBool::new(false),
            stopped_reading: AtomicUsize::new(0),
            stats,
        }
    }

    /// Mesh messages sent and not yet handled, across all shards.
    fn mesh_in_flight(&self) -> u64 {
        // Received first: a message is counted sent before it is received,
        // so this order never reports fewer in flight than there were.
        let received: u64 = self.stats.iter().map(|s| s.mesh_received.get()).sum();
        let sent: u64 = self.stats.iter().map(|s| s.mesh_sent.get()).sum();
        sent.saturating_sub(received)
    }
}

/// A shard's mesh endpoints: a producer to and a consumer from every other
/// shard (`None` at the shard's own index).
pub struct MeshEnds {
    /// Rings to other shards.
    pub producers: Vec<Option<Producer<MeshMessage>>>,
    /// Rings from other shards.
    pub consumers: Vec<Option<Consumer<MeshMessage>>>,
}

/// Per-shard driver state shared by its tasks.
struct Context {
    config: Config,
    shard: Rc<RefCell<Shard>>,
    shared: Arc<Shared>,
    stats: Arc<ShardStats>,
    /// The shared read buffer (see [`SHARD_READ_BYTES`]).
    read_buffer: RefCell<Box<[u8]>>,
    /// True once shutdown started: readers stop, sessions are closed.
    stopping: Cell<bool>,
    /// Live connections: their socket (to stop the reader at shutdown or
    /// when idle) and outbound queue (for the idle sweeper).
    sockets: RefCell<std::collections::HashMap<u64, (RawFd, Conn)>>,
    next_socket: Cell<u64>,
    /// When the shard started; `clock_ms` counts from here.
    started: Instant,
    /// Coarse shard clock in ms, advanced by the idle sweeper: readers stamp
    /// activity with it at the cost of a `Cell` read.
    clock_ms: Cell<u64>,
}

impl Context {
    fn tick(&self) -> u64 {
        let now = self.started.elapsed().as_millis() as u64;
        self.clock_ms.set(now);
        now
    }
}

/// Runs shard `index` until shutdown completes. Called on the shard's own
/// executor thread.
pub async fn run_shard(
    index: usize,
    config: Config,
    listener_fd: RawFd,
    mesh: MeshEnds,
    shared: Arc<Shared>,
) {
    let shards = shared.stats.len();
    let stats = shared.stats[index].clone();
    let shard = Shard::new(
        index,
        shards,
        config.connections_per_shard_max,
        config.outbound_bytes_max,
        stats.clone(),
    );
    let context = Rc::new(Context {
        config,
        shard: Rc::new(RefCell::new(shard)),
        shared,
        stats,
        read_buffer: RefCell::new(vec![0; SHARD_READ_BYTES].into_boxed_slice()),
        stopping: Cell::new(false),
        sockets: RefCell::new(Default::default()),
        next_socket: Cell::new(0),
        started: Instant::now(),
        clock_ms: Cell::new(0),
    });
    // SAFETY: the fd is a listening socket opened for this shard by
    // `startup::listeners` and handed to nobody else.
    let listener = unsafe { TcpListener::from_raw_fd(listener_fd) };

    for (target, producer) in mesh.producers.into_iter().enumerate() {
        if let Some(producer) = producer {
            spawn_local(forward(context.clone(), target, producer)).detach();
        }
    }
    for consumer in mesh.consumers.into_iter().flatten() {
        spawn_local(consume(context.clone(), consumer)).detach();
    }
    if context.config.stats_interval_ms > 0 {
        spawn_local(log_stats(context.clone(), index)).detach();
    }
    if context.config.idle_timeout_ms > 0 {
        spawn_local(sweep_idle(context.clone())).detach();
    }

    accept_until_shutdown(&context, listener).await;
    shutdown(&context, index).await;
}

async fn accept_until_shutdown(context: &Rc<Context>, listener: TcpListener) {
    let shutdown_requested = async {
        while !context.shared.shutdown.load(Ordering::Acquire) {
            sleep(SHUTDOWN_POLL).await;
        }
    };
    let accept_loop = async {
        loop {
            match listener.accept().await {
                Ok(stream) => start_connection(context, stream),
                Err(error) => {
                    // Out of fds or memory: log, breathe, keep serving the
                    // connections we have.
                    warn!(%error, "accept failed");
                    sleep(Duration::from_millis(10)).await;
                }
            }
        }
    };
    futures_lite::future::or(shutdown_requested, accept_loop).await;
    drop(listener);
}

/// Graceful shutdown: stop reading, let the mesh drain, close every
/// session with ShuttingDown after its queue, within the grace period.
async fn shutdown(context: &Rc<Context>, index: usize) {
    let deadline = Instant::now() + Duration::from_millis(context.config.shutdown_grace_ms);
    context.stopping.set(true);
    for &(fd, _) in context.sockets.borrow().values() {
        // SAFETY: `fd` is a live connection socket (removed from the map
        // before it is closed); SHUT_RD wakes its reader with end-of-file.
        unsafe { libc::shutdown(fd, libc::SHUT_RD) };
    }
    let shared = &context.shared;
    shared.stopped_reading.fetch_add(1, Ordering::AcqRel);
    // Every shard has stopped reading: no new relays. Then wait until the
    // mesh is idle twice in a row (messages in flight can spawn reports).
    let shards = shared.stats.len();
    let mut idle_checks = 0;
    while Instant::now() < deadline && idle_checks < 2 {
        let all_stopped = shared.stopped_reading.load(Ordering::Acquire) == shards;
        idle_checks = if all_stopped && shared.mesh_in_flight() == 0 {
            idle_checks + 1
        } else {
            0
        };
        sleep(Duration::from_millis(2)).await;
    }
    let closed = context
        .shard
        .borrow_mut()
        .close_all(ErrorCode::ShuttingDown);
    info!(
        shard = index,
        sessions = closed,
        "shutting down: flushing sessions"
    );
    while context.stats.connections_open.get() > 0 && Instant::now() < deadline {
        sleep(Duration::from_millis(5)).await;
    }
    let left = context.stats.connections_open.get();
    if left > 0 {
        warn!(
            shard = index,
            connections = left,
            "grace period over: dropping connections"
        );
    }
}

async fn log_stats(context: Rc<Context>, index: usize) {
    let interval = Duration::from_millis(context.config.stats_interval_ms);
    loop {
        sleep(interval).await;
        let connected = context.shard.borrow().connected();
        info!(shard = index, connected, "{}", context.stats.snapshot());
    }
}

/// Moves this shard's outbox for `target` into the ring, in batches.
async fn forward(context: Rc<Context>, target: usize, mut producer: Producer<MeshMessage>) {
    let mut batch = Vec::with_capacity(MESH_BATCH_MAX);
    loop {
        poll_fn(|cx| {
            let mut shard = context.shard.borrow_mut();
            shard.take_outbox(target, MESH_BATCH_MAX, &mut batch, cx.waker());
            if batch.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        for message in batch.drain(..) {
            match producer.try_stage(message) {
                Ok(()) => {}
                Err(TrySendError::Full(message)) => {
                    context.stats.ring_full.incr();
                    producer.publish();
                    if producer.send(message).await.is_err() {
                        return;
                    }
                }
                Err(TrySendError::Closed(_)) => return,
            }
        }
        producer.publish();
    }
}

/// Handles what another shard sends.
async fn consume(context: Rc<Context>, mut consumer: Consumer<MeshMessage>) {
    loop {
        let received = consumer
            .recv_batch(MESH_BATCH_MAX, |message| {
                context.shard.borrow_mut().handle_mesh(message)
            })
            .await;
        if received == 0 {
            return;
        }
        glommio::yield_if_needed().await;
    }
}

/// Bounds of the idle sweeper's period: an idle connection is closed
/// between `idle_timeout_ms` and `idle_timeout_ms` plus one period after
/// its last byte.
const SWEEP_PERIOD_MIN: Duration = Duration::from_millis(10);
const SWEEP_PERIOD_MAX: Duration = Duration::from_secs(1);

/// Closes connections that sent nothing for the idle timeout. One sweep per
/// shard instead of a timer per connection: idle connections cost no timer,
/// and reads never arm or cancel one.
async fn sweep_idle(context: Rc<Context>) {
    let timeout_ms = context.config.idle_timeout_ms;
    let period = (Duration::from_millis(timeout_ms) / 8).clamp(SWEEP_PERIOD_MIN, SWEEP_PERIOD_MAX);
    loop {
        sleep(period).await;
        let now = context.tick();
        for &(fd, ref conn) in context.sockets.borrow().values() {
            let mut outbound = conn.borrow_mut();
            if outbound.state() != OutboundState::Open || now - outbound.activity_ms < timeout_ms {
                continue;
            }
            if !outbound.greeted {
                // Idle before its preface: it has not seen ours yet.
                let _ = outbound.push_raw(&PREFACE);
            }
            outbound.close(Some((ErrorCode::IdleTimeout, 0, timeout_ms)));
            context.stats.idle_timeouts.incr();
            // SAFETY: `fd` is a live connection socket (it leaves the map
            // before it is closed); SHUT_RD ends its reader.
            unsafe { libc::shutdown(fd, libc::SHUT_RD) };
        }
    }
}

/// Why a connection's reader stopped.
#[derive(Debug)]
enum ReadEnd {
    /// The client closed its side (or the hub shut the read side).
    Eof,
    /// A protocol error or slow consumer: the outbound is already closing.
    Closed,
    /// The socket failed.
    Failed(io::Error),
}

/// Sets up an accepted connection and spawns its one task (or a refusal).
fn start_connection(context: &Rc<Context>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let accepted = context.shard.borrow_mut().accept();
    let conn = match accepted {
        Ok(conn) => conn,
        Err(code) => {
            let detail = context.config.connections_per_shard_max;
            spawn_local(refuse(stream, code, detail)).detach();
            return;
        }
    };
    conn.borrow_mut().activity_ms = context.clock_ms.get();
    let fd = stream.as_raw_fd();
    let socket = context.next_socket.get();
    context.next_socket.set(socket + 1);
    context
        .sockets
        .borrow_mut()
        .insert(socket, (fd, conn.clone()));
    if context.stopping.get() {
        // Accepted in the same instant shutdown began.
        // SAFETY: `fd` is this connection's open socket.
        unsafe { libc::shutdown(fd, libc::SHUT_RD) };
    }
    spawn_local(serve(context.clone(), RefCell::new(stream), conn, socket)).detach();
}

/// A connection's life: the reader and the writer run side by side in one
/// task (one allocation per connection); the writer outlives the reader to
/// flush, and stops the reader by shutting the socket when it fails.
async fn serve(context: Rc<Context>, stream: RefCell<TcpStream>, conn: Conn, socket: u64) {
    let fd = stream.borrow().as_raw_fd();
    let reader = async {
        let mut session = Session::new(conn.clone());
        let end = read_loop(&context, &stream, &mut session).await;
        finish_reading(&context, &session, end);
        session.user()
    };
    let (user, ()) = futures_lite::future::zip(reader, write_loop(&context, &stream, &conn)).await;
    context.sockets.borrow_mut().remove(&socket);
    // SAFETY: the socket is still open (`stream` is dropped below); this
    // makes sure the peer sees the end even if the writer gave up early.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    context.shard.borrow_mut().disconnect(user);
}

/// After the reader stops: close the outbound unless a shutdown will close
/// it once the mesh has drained.
fn finish_reading(context: &Context, session: &Session, end: ReadEnd) {
    let mut conn = session.conn().borrow_mut();
    let user = session.user();
    match end {
        ReadEnd::Eof | ReadEnd::Failed(_) if context.stopping.get() && user != 0 => {
            // Shutdown: stay reachable until `close_all` closes us.
        }
        ReadEnd::Eof => conn.close(None),
        ReadEnd::Failed(error) => {
            debug!(user, %error, "read failed");
            conn.close(None);
        }
        ReadEnd::Closed => {}
    }
    if conn.state() == OutboundState::Closing {
        drop(conn);
        // Unreachable from now on: later relays get UnknownReceiver.
        context.shard.borrow_mut().forget(user);
    }
}

async fn refuse(mut stream: TcpStream, code: ErrorCode, detail: usize) {
    let mut frame = bytes::BytesMut::from(&PREFACE[..]);
    encode(&ErrorFrame::new(code, 0, detail as u64), &mut frame).expect("an error frame fits");
    let _ = stream.write_all(&frame).await;
    let _ = stream.close().await;
}

async fn read_loop(
    context: &Context,
    stream: &RefCell<TcpStream>,
    session: &mut Session,
) -> ReadEnd {
    loop {
        let read = poll_fn(|cx| {
            let mut stream = stream.borrow_mut();
            let decoder = session.decoder();
            if decoder.buffered_len() > 0 {
                // A frame is partly here: read straight into its buffer.
                let spare = decoder.spare();
                let read = Pin::new(&mut *stream).poll_read(cx, spare);
                if let Poll::Ready(Ok(read)) = read {
                    decoder.commit(read);
                }
                return read;
            }
            let mut buffer = context.read_buffer.borrow_mut();
            let read = Pin::new(&mut *stream).poll_read(cx, &mut buffer);
            if let Poll::Ready(Ok(read)) = read {
                decoder.handle_bytes(&buffer[..read]);
            }
            read
        })
        .await;
        match read {
            Ok(0) => return ReadEnd::Eof,
            Ok(read) => context.stats.bytes_in.add(read as u64),
            Err(error) => return ReadEnd::Failed(error),
        }
        session.conn().borrow_mut().activity_ms = context.clock_ms.get();
        let flow = session.process(&mut context.shard.borrow_mut());
        if session.decoder().buffered_len() == 0 {
            session.decoder().release_idle();
        }
        if flow == Flow::Close {
            return ReadEnd::Closed;
        }
        // Backpressure: while another shard's ring is full and our outbox
        // long, stop reading (the client's TCP window fills instead of our
        // memory).
        poll_fn(|cx| {
            if context.shard.borrow_mut().backpressure(cx.waker()) {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
    }
}

/// Writes the connection's outbound queue until it is closed and drained,
/// the socket fails, or a closing queue misses its flush deadline. Then
/// shuts the socket down, which also stops a reader still waiting.
async fn write_loop(context: &Context, stream: &RefCell<TcpStream>, conn: &Conn) {
    let fd = stream.borrow().as_raw_fd();
    let flush = Duration::from_millis(context.config.close_flush_ms);
    let mut closing_deadline: Option<Instant> = None;
    loop {
        let ready = poll_fn(|cx| {
            let mut outbound = conn.borrow_mut();
            if !outbound.is_empty() {
                Poll::Ready(true)
            } else if outbound.state() == OutboundState::Closing {
                Poll::Ready(false)
            } else {
                outbound.park_writer(cx.waker());
                Poll::Pending
            }
        })
        .await;
        if !ready {
            break;
        }
        if conn.borrow().state() == OutboundState::Closing && closing_deadline.is_none() {
            closing_deadline = Some(Instant::now() + flush);
        }
        let written = match send_queued(fd, conn) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => match closing_deadline {
                None => wait_writable(stream, conn).await,
                // Only closing connections race a timer: boxed, so the
                // future every connection carries stays small.
                Some(deadline) => Box::pin(wait_writable_until(stream, conn, deadline)).await,
            },
            other => other,
        };
        match written {
            Ok(written) => {
                conn.borrow_mut().advance(written);
                context.stats.bytes_out.add(written as u64);
            }
            Err(error) => {
                debug!(%error, "writer stopped");
                break;
            }
        }
    }
    // SAFETY: `fd` belongs to `stream`, which is still open (borrowed).
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// [`wait_writable`], giving up at `deadline`.
async fn wait_writable_until(
    stream: &RefCell<TcpStream>,
    conn: &Conn,
    deadline: Instant,
) -> io::Result<usize> {
    let timeout = async {
        sleep(deadline.saturating_duration_since(Instant::now())).await;
        Err(io::ErrorKind::TimedOut.into())
    };
    futures_lite::future::or(wait_writable(stream, conn), timeout).await
}

/// One vectored, non-blocking write of the queue's front.
fn send_queued(fd: RawFd, conn: &Conn) -> io::Result<usize> {
    let outbound = conn.borrow();
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
async fn wait_writable(stream: &RefCell<TcpStream>, conn: &Conn) -> io::Result<usize> {
    poll_fn(|cx| {
        let outbound = conn.borrow();
        let mut slices = Vec::with_capacity(1);
        outbound.slices(&mut slices);
        let first: &[u8] = slices.first().map_or(&[], |slice| slice);
        Pin::new(&mut *stream.borrow_mut()).poll_write(cx, first)
    })
    .await
}
