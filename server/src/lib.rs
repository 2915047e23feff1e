//! relayhub-server: the hub. One glommio executor per shard, pinned to its
//! core; each shard owns the connections it accepted and the user ids it
//! handed out (`owner(id) = id % shards`), and talks to the others only
//! through the mesh's SPSC rings. docs/architecture.md tells the whole story.
//!
//! # Layout
//! - [`config`]: every flag and limit (clap, with `RELAYHUB_*` env vars),
//!   and [`Config::validate`].
//! - [`ids`]: user id allocation and ownership arithmetic.
//! - [`conn`]: one connection in the core: its state, decoder, outbound.
//! - [`outbound`]: one connection's outbound queue and its byte limit.
//! - [`shard`]: the IO-free core: the connection table, frames, routing,
//!   lists, mesh outboxes and budgets, timers, phased shutdown. Driven by
//!   `handle_*`/`poll_*` calls with `now` passed in, and [`shard::Event`]s.
//! - [`stats`]: per-shard counters readable from any thread.
//! - [`store`]: the durable log's record format and recovery scan, IO-free.
//! - [`disk`]: the log files on glommio's DMA files (the driver's side).
//! - [`metrics`]: `--metrics-listen`, `/metrics` and `/healthz`.
//! - [`startup`]: start-up checks and listener sockets, with clear errors.
//! - `driver`: the glommio tasks that do the IO and the waiting for the core.
//! - [`Hub`]: starts the shards, reports counters, shuts down gracefully.
//!
//! # Where to change what
//!
//! | change | where | also |
//! | --- | --- | --- |
//! | routing (who gets a relay) | `shard/routing.rs` | the fuzz oracle's delivery accounting (`fuzz/src/hub.rs`, `Harness::check`) |
//! | a new client frame kind | `relayhub-protocol`, then `shard/frames.rs::handle_frame` | the fuzz `Request` enum and its expected replies |
//! | a new limit | a `Config` field with its default constant, [`Config::validate`], [`shard::Limits`] | docs/operations.md (flags, memory bound); the fuzz harness's limits if it bounds a queue |
//! | a new timeout | `shard/timers.rs` (`Connection::deadline`, `fire`) | the fuzz `Advance` operation |
//! | a new counter | `stats.rs` (`stats!`) | docs/operations.md |
//! | a new mesh message | `shard/mesh.rs` (`MeshMessage`, `weight`, `handle_mesh`) | the no-deadlock argument in docs/architecture.md |
//! | how bytes move (sockets, rings, timers) | `driver.rs` only | nothing in the core |
//! | a new log record kind | `store/record.rs` (a new `RecordKind`, never renumbered), `Shard::recover`, `snapshot_records` | docs/architecture.md "Durability"; the record round-trip test |
//! | what waits for durability | `shard/durability.rs` (`Waiting`) | the SIGKILL test in `server/tests/persistence.rs` |
//! | which bodies leave memory, how they come back | `shard/readback.rs`; the reads in `disk.rs` (`LogFiles`) and `driver.rs` | `shard/tests_readback.rs`, the fuzz `Disk` preset |
//! | a new metric | a counter in `stats.rs`, its help and name in `metrics.rs` | docs/operations.md "Metrics" |

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod config;
pub mod conn;
pub mod disk;
pub(crate) mod driver;
pub mod ids;
pub mod metrics;
pub mod outbound;
pub mod shard;
pub mod startup;
pub mod stats;
pub mod store;

use std::{
    net::SocketAddr,
    sync::atomic::Ordering,
    sync::mpsc,
    sync::Arc,
    time::{Duration, Instant},
};

use glommio::{LocalExecutorBuilder, Placement};
use relayhub_mesh::{budget, channel};

pub use config::Config;
pub use startup::StartError;
pub use stats::StatsSnapshot;

use driver::{MeshEnds, Shared};
use stats::ShardStats;

/// How long a shard runs tasks before it polls io_uring again while tasks
/// stay runnable (glommio's default is 100 ms, which lets a busy shard
/// leave completions and cross-shard wake-ups waiting that long).
pub const PREEMPT_TIMER: Duration = Duration::from_millis(2);

/// How long start-up waits, in all, for every shard to report ready
/// (recovery of a large log included; shards recover in parallel).
const SHARD_START_TIMEOUT: Duration = Duration::from_secs(600);

/// A running hub.
///
/// ```no_run
/// let hub = relayhub_server::Hub::start(relayhub_server::Config::default())?;
/// println!("listening on {}", hub.local_addr());
/// let totals = hub.shutdown();
/// println!("{totals}");
/// # Ok::<(), relayhub_server::StartError>(())
/// ```
pub struct Hub {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    executors: Vec<glommio::ExecutorJoinHandle<()>>,
    /// The data directory's lock (`--storage disk`), held until the shards
    /// have stopped.
    data_lock: Option<std::fs::File>,
}

impl Hub {
    /// Starts every shard and returns once all of them accept connections.
    pub fn start(config: Config) -> Result<Hub, StartError> {
        config.validate().map_err(StartError::Config)?;
        let cpus = startup::allowed_cpus();
        let shards = config.shards.unwrap_or(cpus.len().max(1));
        if shards == 0 || shards > startup::SHARDS_MAX {
            return Err(StartError::Shards(shards));
        }
        startup::check_memlock(shards)?;
        if let Some(why) = config.spin_ignored(shards) {
            tracing::warn!("{why}");
        }
        let (addr, fds) = startup::listeners(config.listen, shards)?;
        let stats: Vec<Arc<ShardStats>> = (0..shards).map(|_| Arc::default()).collect();
        let shared = Arc::new(Shared::new(stats));
        let mut mesh = mesh_ends(shards, config.mesh_ring_slots, config.mesh_bytes_max);
        let (data_lock, mut files) = match config.storage {
            config::Storage::Disk => {
                let prepared =
                    disk::prepare(&config.data_dir, shards).map_err(StartError::DataDir)?;
                let files = prepared.shards.into_iter().map(Some).collect();
                (Some(prepared.lock), files)
            }
            config::Storage::Memory => (None, vec![None; shards]),
        };

        let (ready_tx, ready_rx) = mpsc::channel::<Result<usize, String>>();
        let mut executors = Vec::with_capacity(shards);
        for (index, fd) in fds.into_iter().enumerate() {
            let placement = if config.pin {
                Placement::Fixed(cpus[index % cpus.len()])
            } else {
                Placement::Unbound
            };
            let (config, shard_shared, ready) = (config.clone(), shared.clone(), ready_tx.clone());
            let ends = mesh.remove(0);
            let shard_files = files.remove(0);
            let spawned = LocalExecutorBuilder::new(placement)
                .name(&format!("relayhub-shard-{index}"))
                .io_memory(startup::IO_MEMORY_BYTES)
                .spin_before_park(config.spin_before_park(shards))
                .preempt_timer(PREEMPT_TIMER)
                .spawn(move || async move {
                    let start = driver::ShardStart {
                        index,
                        listener_fd: fd,
                        mesh: ends,
                        files: shard_files,
                        ready,
                    };
                    driver::run_shard(start, config, shard_shared).await;
                });
            match spawned {
                Ok(handle) => executors.push(handle),
                Err(error) => return Err(abort(shared, executors, index, error.to_string())),
            }
        }
        drop(ready_tx);
        let deadline = Instant::now() + SHARD_START_TIMEOUT;
        for ready in 0..shards {
            let left = deadline.saturating_duration_since(Instant::now());
            match ready_rx.recv_timeout(left) {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    return Err(abort_with(shared, executors, StartError::Recovery(error)))
                }
                Err(error) => {
                    let waiting = shards - ready;
                    let why = match error {
                        mpsc::RecvTimeoutError::Timeout => format!(
                            "{waiting} of {shards} shards did not report ready within {} s",
                            SHARD_START_TIMEOUT.as_secs()
                        ),
                        mpsc::RecvTimeoutError::Disconnected => format!(
                            "{waiting} of {shards} shards stopped before they were ready \
                             (their error is in the log above)"
                        ),
                    };
                    // A shard that has not answered in this long may never
                    // see the shutdown flag: leave its thread detached
                    // rather than wait for it.
                    shared.shutdown.store(true, Ordering::Release);
                    drop(executors);
                    return Err(StartError::StartTimeout(why));
                }
            }
        }
        let metrics_addr = match config.metrics_listen {
            None => None,
            Some(listen) => match metrics::serve(listen, shared.clone()) {
                Ok(bound) => Some(bound),
                Err(error) => {
                    return Err(abort_with(
                        shared,
                        executors,
                        StartError::Bind(listen, error),
                    ))
                }
            },
        };
        Ok(Hub {
            addr,
            metrics_addr,
            shared,
            executors,
            data_lock,
        })
    }

    /// Where `--metrics-listen` serves (with the real port when 0 was asked).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The address the hub listens on (with the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Each shard's counters now.
    pub fn shard_stats(&self) -> Vec<StatsSnapshot> {
        self.shared.stats.iter().map(|s| s.snapshot()).collect()
    }

    /// All shards' counters summed.
    pub fn stats(&self) -> StatsSnapshot {
        let mut total = StatsSnapshot::default();
        for shard in self.shard_stats() {
            total += shard;
        }
        total
    }

    /// Asks for a graceful shutdown without waiting for it.
    pub fn request_shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
    }

    /// Graceful shutdown: stops accepting and reading, delivers what is
    /// queued (within the grace period), closes every session, and returns
    /// the final counters summed over shards.
    pub fn shutdown(self) -> StatsSnapshot {
        let shards = self.shutdown_per_shard();
        let mut total = StatsSnapshot::default();
        for shard in shards {
            total += shard;
        }
        total
    }

    /// Like [`shutdown`](Self::shutdown), with each shard's final counters.
    pub fn shutdown_per_shard(self) -> Vec<StatsSnapshot> {
        self.request_shutdown();
        for executor in self.executors {
            if let Err(error) = executor.join() {
                tracing::error!(%error, "a shard ended with an error");
            }
        }
        // Every log is closed: another hub may open the directory now.
        drop(self.data_lock);
        self.shared.stopped.store(true, Ordering::Release);
        if let Some(addr) = self.metrics_addr {
            // Wake the metrics thread's accept so that it sees `stopped`.
            let _ = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100));
        }
        self.shared.stats.iter().map(|s| s.snapshot()).collect()
    }
}

/// Stops the shards already started and returns `error`.
fn abort_with(
    shared: Arc<Shared>,
    executors: Vec<glommio::ExecutorJoinHandle<()>>,
    error: StartError,
) -> StartError {
    shared.shutdown.store(true, Ordering::Release);
    for executor in executors {
        let _ = executor.join();
    }
    error
}

/// Stops the shards already started and builds the start error.
fn abort(
    shared: Arc<Shared>,
    executors: Vec<glommio::ExecutorJoinHandle<()>>,
    index: usize,
    error: String,
) -> StartError {
    shared.shutdown.store(true, Ordering::Release);
    for executor in executors {
        let _ = executor.join();
    }
    StartError::Executor(index, error)
}

/// One ring per ordered pair of shards: shard `i` gets the producer of ring
/// `i -> j` and shard `j` its consumer.
fn mesh_ends(shards: usize, slots: usize, bytes_max: usize) -> Vec<MeshEnds> {
    let mut ends: Vec<MeshEnds> = (0..shards)
        .map(|_| MeshEnds {
            producers: (0..shards).map(|_| None).collect(),
            consumers: (0..shards).map(|_| None).collect(),
        })
        .collect();
    for from in 0..shards {
        for to in (0..shards).filter(|&to| to != from) {
            let (producer, consumer) = channel(slots);
            let (spender, refunder) = budget(bytes_max as u64);
            ends[from].producers[to] = Some((producer, spender));
            ends[to].consumers[from] = Some((consumer, refunder));
        }
    }
    ends
}
