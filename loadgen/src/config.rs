//! One run's settings, as the engine needs them (the CLI builds these).

use std::time::Duration;

use crate::plan::{Pick, Topology};
use crate::target::Target;

/// What the clients do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Every client publishes to its receivers and receives from its senders.
    Traffic(Topology),
    /// Connect `clients` connections as fast as possible: connections/s.
    Storm,
    /// Hold `clients` idle connections: server memory per connection.
    Idle,
}

/// How fast senders send.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Load {
    /// Each sender keeps up to `window` publications outstanding.
    Closed { window: u64 },
    /// All senders together publish `rate` publications per second, each
    /// on a fixed schedule; latency counts from the scheduled time.
    Open { rate: f64 },
}

/// Where JetStream keeps the stream of a durable NATS run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum JetStreamStorage {
    /// In nats-server's memory (`"storage":"memory"`).
    Memory,
    /// In files under nats-server's store directory (`-sd`).
    File,
}

/// How a JetStream receiver acknowledges its deliveries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum JetStreamAck {
    /// `ack_policy: all`, one ack per read batch (the last delivery's),
    /// like relayhub's cumulative `Ack`. Not with reconnects: acking past
    /// deliveries lost with a connection would ack them too.
    All,
    /// `ack_policy: explicit`, one ack per delivery.
    Explicit,
}

/// The JetStream setup of a durable NATS run.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct JetStreamConfig {
    /// The stream's name (created before the run, deleted after it).
    pub stream: String,
    /// Memory or file storage.
    pub storage: JetStreamStorage,
    /// The consumers' ack policy.
    pub ack: JetStreamAck,
    /// The consumers' `ack_wait`: when an unacked delivery is sent again.
    pub ack_wait: Duration,
    /// The consumers' `max_ack_pending`: unacked deliveries in flight.
    pub max_ack_pending: u64,
}

/// A durable run's settings (`--durable`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DurableConfig {
    /// Share of the receivers that drop their connection and resume.
    pub reconnect_share: f64,
    /// Mean time between two drops of one reconnecting receiver.
    pub reconnect_every: Duration,
    /// relayhub: relays ask for delivery receipts (`RelayV2.flags.RECEIPT`);
    /// every sender counts the receipts it gets and the run waits for them.
    pub receipts: bool,
    /// JetStream targets only.
    pub jetstream: JetStreamConfig,
}

impl DurableConfig {
    /// Some receivers reconnect.
    pub fn reconnects(&self) -> bool {
        self.reconnect_share > 0.0
    }
}

/// Everything one run against one target needs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The server to drive.
    pub target: Target,
    /// What the clients do.
    pub scenario: Scenario,
    /// Number of clients (connections, except Redis: two per client).
    pub clients: usize,
    /// Body size sent, header included (at least the header).
    pub body_bytes: usize,
    /// Closed or open loop.
    pub load: Load,
    /// Measured time, after the warm-up.
    pub duration: Duration,
    /// Time before measuring starts (sent and checked, not measured).
    pub warmup: Duration,
    /// After sending stops, how long to wait for deliveries in flight.
    pub drain: Duration,
    /// Loadgen executors (threads), one glommio LocalExecutor each.
    pub cores: usize,
    /// Most connects in flight per executor.
    pub connect_concurrency: usize,
    /// Seed of the receiver choice.
    pub seed: u64,
    /// Relay: one receiver per sender for the run, or one drawn per message.
    pub pick: Pick,
    /// The server's process id, for its CPU time and memory.
    pub server_pid: Option<u32>,
    /// Print a line per second.
    pub progress: bool,
    /// io_uring registered memory per executor (counts against RLIMIT_MEMLOCK).
    pub io_memory_bytes: usize,
    /// `--durable`: relayhub protocol v2 or JetStream, publish acks, acked
    /// deliveries, optional reconnects.
    pub durable: Option<DurableConfig>,
}

impl RunConfig {
    /// Nanoseconds from the run start to the end of the warm-up.
    pub fn warmup_ns(&self) -> u64 {
        self.warmup.as_nanos() as u64
    }

    /// Nanoseconds from the run start to the end of sending.
    pub fn end_ns(&self) -> u64 {
        (self.warmup + self.duration).as_nanos() as u64
    }
}
