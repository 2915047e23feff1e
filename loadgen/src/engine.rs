//! The executors: what they share, connecting their clients, and the
//! dispatch to the scenario.
//!
//! One glommio `LocalExecutor` per `--cores`; each owns a contiguous range
//! of clients and every sender's receivers are in the same range (see
//! [`crate::plan`]), so all per-message state is local to one thread. The
//! clients connect on glommio; the traffic itself runs in
//! [`crate::traffic`]'s epoll loop on the same thread. The only state
//! shared across threads is [`Shared`]: the start signal and the numbers
//! the progress line reads, flushed every [`FLUSH_INTERVAL`].

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use glommio::{spawn_local, Task};
use hdrhistogram::Histogram;

use crate::checker::SequenceCounts;
use crate::client::{connect, Client, Handshake};
use crate::config::{RunConfig, Scenario};
use crate::error::LoadgenError;
use crate::plan::{client_range, plan, Pick, SplitMix64, Topology};
use crate::target::TargetKind;
use crate::traffic::Engine;

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
    /// Deliveries received from the start to the end of sending (warm-up
    /// included): what the CPU time of that span is divided by.
    pub run_deliveries: u64,
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
    /// Open loop: how late messages were sent (actual minus scheduled, ns).
    pub send_lag: Option<Histogram<u64>>,
    /// Durable runs: acknowledgements, retries, reconnects, dedup.
    pub durable: crate::durable::DurableCounts,
    /// Durable runs: send to server acknowledgement (`Stored`, publish
    /// ack) of every measured publication, ns.
    pub stored_latency: Option<Histogram<u64>>,
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
    routes: &[Vec<u64>],
    handshake: Handshake,
) -> Vec<Result<(Client, u64), LoadgenError>> {
    let permits = Rc::new(glommio::sync::Semaphore::new(
        config.connect_concurrency.max(1) as u64,
    ));
    let target = Rc::new(config.target.clone());
    let tasks: Vec<Task<Result<(Client, u64), LoadgenError>>> = (first..first + count)
        .map(|index| {
            let permits = permits.clone();
            let target = target.clone();
            let routes = routes.get(index - first).cloned().unwrap_or_default();
            spawn_local(async move {
                let _permit = permits
                    .acquire_permit(1)
                    .await
                    .expect("semaphore never closed");
                let began = Instant::now();
                let client = connect(&target, index as u32, publisher, &routes, handshake).await?;
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
    let plan = plan(topology, config.pick, count, &mut rng)?;
    let publisher = config.target.kind == TargetKind::Redis;
    // The sink learns each client's receivers (client indices) in its hello;
    // drawn per message, they are read from each frame.
    let routes: Vec<Vec<u64>> = match config.target.kind {
        TargetKind::Sink if config.pick == Pick::Random => {
            vec![vec![crate::wire::sink::ROUTE_BY_FRAME]; count]
        }
        TargetKind::Sink => plan
            .iter()
            .map(|targets| targets.iter().map(|&t| (first + t) as u64).collect())
            .collect(),
        _ => Vec::new(),
    };
    let handshake = match &config.durable {
        None => Handshake::Plain,
        Some(durable) => Handshake::Durable {
            split: config.target.kind == TargetKind::Nats && durable.reconnects(),
        },
    };
    let mut clients = Vec::with_capacity(count);
    for outcome in connect_range(&config, first, count, publisher, &routes, handshake).await {
        clients.push(outcome?.0);
    }
    let engine = Engine::new(&config, &shared, first, &plan, clients, topology)?;
    shared.ready.fetch_add(1, Ordering::AcqRel);
    let Ok(clock) = shared.wait_start().await else {
        return Ok(ExecutorResult::default());
    };
    // From here the thread belongs to the epoll loop until the drain ends.
    Ok(engine.run(clock))
}
