//! Hub configuration: every limit is a named field with its unit last, its
//! default, and the worst-case memory it implies. Every flag can also be set
//! from the environment (`RELAYHUB_*`).

use std::net::SocketAddr;

use clap::Parser;

/// Default listen address: loopback, so a first run exposes nothing.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:7878";

/// Default bound on one connection's queued outbound bytes: 8 MiB, eight
/// maximal deliveries. Worst case `connections * outbound_bytes_max`.
pub const OUTBOUND_BYTES_MAX_DEFAULT: usize = 8 << 20;

/// Default connections per shard. A connection costs about 1 KiB idle.
pub const CONNECTIONS_PER_SHARD_MAX_DEFAULT: usize = 100_000;

/// Default idle timeout: 5 minutes without a frame from the client.
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 300_000;

/// Default time a closing connection gets to flush what is queued.
pub const CLOSE_FLUSH_MS_DEFAULT: u64 = 2_000;

/// Default time graceful shutdown waits for queued deliveries.
pub const SHUTDOWN_GRACE_MS_DEFAULT: u64 = 5_000;

/// Default slots in each mesh ring (one ring per ordered pair of shards).
/// A slot is about 80 bytes: 4096 slots cost 320 KiB per ring, so
/// `shards * (shards - 1) * 320 KiB` in all.
pub const MESH_RING_SLOTS_DEFAULT: usize = 4096;

/// The hub's configuration (command line and environment).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "relayhub",
    version,
    about = "relayhub: a thread-per-core message relay hub",
    long_about = "relayhub: a thread-per-core message relay hub.\n\n\
        Clients connect over TCP, get a user id, and relay bodies of up to 1 MiB to up to \
        255 other users. The protocol is in docs/protocol.md, operations in docs/operations.md.\n\n\
        glommio locks memory for io_uring: each shard needs about 1 MiB of RLIMIT_MEMLOCK \
        (`ulimit -l`)."
)]
pub struct Config {
    /// Address to listen on (every shard binds it with SO_REUSEPORT).
    #[arg(long, env = "RELAYHUB_LISTEN", default_value = LISTEN_DEFAULT)]
    pub listen: SocketAddr,

    /// Number of shards (one thread pinned per core). Default: every core
    /// this process may run on.
    #[arg(long, env = "RELAYHUB_SHARDS")]
    pub shards: Option<usize>,

    /// Most connections one shard accepts; past it a client gets
    /// Error(ServerFull) and is closed.
    #[arg(long, env = "RELAYHUB_CONNECTIONS_PER_SHARD_MAX", default_value_t = CONNECTIONS_PER_SHARD_MAX_DEFAULT)]
    pub connections_per_shard_max: usize,

    /// Most bytes queued towards one client; past it the client is a slow
    /// consumer: it gets Error(SlowConsumer) and is disconnected.
    #[arg(long, env = "RELAYHUB_OUTBOUND_BYTES_MAX", default_value_t = OUTBOUND_BYTES_MAX_DEFAULT)]
    pub outbound_bytes_max: usize,

    /// Close a connection that sent nothing for this long (0 = never).
    #[arg(long, env = "RELAYHUB_IDLE_TIMEOUT_MS", default_value_t = IDLE_TIMEOUT_MS_DEFAULT)]
    pub idle_timeout_ms: u64,

    /// How long a closing connection may take to flush its queue.
    #[arg(long, env = "RELAYHUB_CLOSE_FLUSH_MS", default_value_t = CLOSE_FLUSH_MS_DEFAULT)]
    pub close_flush_ms: u64,

    /// How long graceful shutdown waits for queued deliveries.
    #[arg(long, env = "RELAYHUB_SHUTDOWN_GRACE_MS", default_value_t = SHUTDOWN_GRACE_MS_DEFAULT)]
    pub shutdown_grace_ms: u64,

    /// Slots per mesh ring (rounded up to a power of two).
    #[arg(long, env = "RELAYHUB_MESH_RING_SLOTS", default_value_t = MESH_RING_SLOTS_DEFAULT)]
    pub mesh_ring_slots: usize,

    /// Log per-shard counters every this many milliseconds (0 = only at exit).
    #[arg(long, env = "RELAYHUB_STATS_INTERVAL_MS", default_value_t = 0)]
    pub stats_interval_ms: u64,

    /// Microseconds a shard with nothing to do spins before it sleeps in
    /// io_uring. Waking a sleeping shard from another core (a cross-shard
    /// relay) costs tens of microseconds or more; spinning trades idle CPU
    /// for that latency (0 = sleep at once).
    #[arg(long, env = "RELAYHUB_SPIN_BEFORE_PARK_US", default_value_t = 0)]
    pub spin_before_park_us: u64,

    /// Pin shard i to the i-th allowed CPU (disable when sharing a machine).
    #[arg(long, env = "RELAYHUB_PIN", default_value_t = true, action = clap::ArgAction::Set)]
    pub pin: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["relayhub"])
    }
}

impl Config {
    /// A configuration for tests: an ephemeral loopback port, `shards`
    /// shards, no pinning.
    pub fn for_tests(shards: usize) -> Config {
        Config {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            shards: Some(shards),
            pin: false,
            ..Config::default()
        }
    }
}
