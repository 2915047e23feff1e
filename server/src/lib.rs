//! relayhub-server: the hub. One glommio executor per shard, pinned to its
//! core; each shard owns the connections it accepted and the user ids it
//! handed out (`owner(id) = id % shards`), and talks to the others only
//! through the mesh's SPSC rings. docs/architecture.md tells the whole story.
//!
//! # Layout
//! - [`config`]: every flag and limit (clap, with `RELAYHUB_*` env vars).
//! - [`ids`]: user id allocation and ownership arithmetic.
//! - [`outbound`]: one connection's outbound queue and its byte limit.
//! - [`session`]: one connection's protocol handling, IO-free.
//! - [`shard`]: one shard's connections, routing and mesh messages, IO-free.
//! - [`stats`]: per-shard counters readable from any thread.
//! - [`startup`]: start-up checks and listener sockets, with clear errors.
//! - `driver`: the glommio tasks that move bytes around the above.
//! - [`Hub`]: starts the shards, reports counters, shuts down gracefully.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod config;
mod driver;
pub mod ids;
pub mod outbound;
pub mod session;
pub mod shard;
pub mod startup;
pub mod stats;

use std::{net::SocketAddr, sync::atomic::Ordering, sync::mpsc, sync::Arc, time::Duration};

use glommio::{LocalExecutorBuilder, Placement};
use relayhub_mesh::channel;

pub use config::Config;
pub use startup::StartError;
pub use stats::StatsSnapshot;

use driver::{MeshEnds, Shared};
use stats::ShardStats;

/// How long start-up waits for every shard to report ready.
const SHARD_START_TIMEOUT: Duration = Duration::from_secs(10);

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
    shared: Arc<Shared>,
    executors: Vec<glommio::ExecutorJoinHandle<()>>,
}

impl Hub {
    /// Starts every shard and returns once all of them accept connections.
    pub fn start(config: Config) -> Result<Hub, StartError> {
        let cpus = startup::allowed_cpus();
        let shards = config.shards.unwrap_or(cpus.len().max(1));
        if shards == 0 || shards > startup::SHARDS_MAX {
            return Err(StartError::Shards(shards));
        }
        startup::check_memlock(shards)?;
        let (addr, fds) = startup::listeners(config.listen, shards)?;
        let stats: Vec<Arc<ShardStats>> = (0..shards).map(|_| Arc::default()).collect();
        let shared = Arc::new(Shared::new(stats));
        let mut mesh = mesh_ends(shards, config.mesh_ring_slots);

        let (ready_tx, ready_rx) = mpsc::channel::<usize>();
        let mut executors = Vec::with_capacity(shards);
        for (index, fd) in fds.into_iter().enumerate() {
            let placement = if config.pin {
                Placement::Fixed(cpus[index % cpus.len()])
            } else {
                Placement::Unbound
            };
            let (config, shard_shared, ready) = (config.clone(), shared.clone(), ready_tx.clone());
            let ends = mesh.remove(0);
            let spawned = LocalExecutorBuilder::new(placement)
                .name(&format!("relayhub-shard-{index}"))
                .io_memory(startup::IO_MEMORY_BYTES)
                .spin_before_park(Duration::from_micros(config.spin_before_park_us))
                .spawn(move || async move {
                    let _ = ready.send(index);
                    driver::run_shard(index, config, fd, ends, shard_shared).await;
                });
            match spawned {
                Ok(handle) => executors.push(handle),
                Err(error) => return Err(abort(shared, executors, index, error.to_string())),
            }
        }
        drop(ready_tx);
        for _ in 0..shards {
            if ready_rx.recv_timeout(SHARD_START_TIMEOUT).is_err() {
                let index = executors.len();
                return Err(abort(shared, executors, index, "did not start".into()));
            }
        }
        Ok(Hub {
            addr,
            shared,
            executors,
        })
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
        self.shared.stats.iter().map(|s| s.snapshot()).collect()
    }
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
fn mesh_ends(shards: usize, slots: usize) -> Vec<MeshEnds> {
    let mut ends: Vec<MeshEnds> = (0..shards)
        .map(|_| MeshEnds {
            producers: (0..shards).map(|_| None).collect(),
            consumers: (0..shards).map(|_| None).collect(),
        })
        .collect();
    for from in 0..shards {
        for to in (0..shards).filter(|&to| to != from) {
            let (producer, consumer) = channel(slots);
            ends[from].producers[to] = Some(producer);
            ends[to].consumers[from] = Some(consumer);
        }
    }
    ends
}
