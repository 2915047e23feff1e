//! Capacity planning from measurements.
//!
//! - [`sweep`]: `relayhub-loadgen sweep` steps the open-loop rate of every
//!   workload of a matrix up, against every target, until the latency
//!   objective breaks or the target falls behind, and writes every step
//!   as a [`SweepFile`] (JSON) and SVGs of p99 against offered rate.
//! - [`planner`]: `relayhub-loadgen plan` reads a sweep file and answers
//!   "how many cores, how much memory and disk, how many machines for this
//!   population", for relayhub and, from their rows, for the peers.
//! - [`svg`]: the p99-by-offered-rate plot.
//!
//! docs/capacity-planning.md says how to read the answers and what is an
//! estimate.

use serde::{Deserialize, Serialize};

pub mod planner;
pub mod stored;
pub mod svg;
pub mod sweep;

/// Version of the [`SweepFile`] format; `plan` refuses other versions.
pub const SWEEP_FORMAT: u32 = 1;

/// Everything a sweep measured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SweepFile {
    /// [`SWEEP_FORMAT`].
    pub format: u32,
    /// The machine the sweep ran on.
    pub machine: Machine,
    /// The command line, as run.
    pub command: String,
    /// Seconds since the Unix epoch when the sweep started.
    pub started_unix_s: u64,
    /// The latency objective steps were held to: p99 at most this, ms.
    pub slo_p99_ms: f64,
    /// Idle connections per target (memory per connection), when asked.
    pub idle: Vec<IdleRow>,
    /// One per (target, workload), in the order run.
    pub cells: Vec<Cell>,
    /// Memory per stored message, per relayhub target, when asked.
    #[serde(default)]
    pub stored: Vec<StoredRow>,
}

/// Server memory per message stored for an offline session
/// ([`stored::measure`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StoredRow {
    /// [`TargetInfo::label`].
    pub label: String,
    /// Messages stored.
    pub messages: u64,
    /// Body bytes of each.
    pub body_bytes: usize,
    /// (RSS after - RSS before) / messages.
    pub bytes_per_message: f64,
}

/// Server memory per idle connection, from the idle scenario.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IdleRow {
    /// [`TargetInfo::label`].
    pub label: String,
    /// Connections held.
    pub clients: usize,
    /// (RSS connected - RSS before) / connections.
    pub bytes_per_connection: Option<f64>,
    /// Server RSS before connecting, KiB: the process's own floor.
    pub rss_before_kib: Option<u64>,
}

/// Where the numbers come from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    /// CPUs online on the machine (not only those the sweep could use).
    pub cpus: usize,
    /// `model name` of /proc/cpuinfo.
    pub cpu_model: String,
    /// `uname -r`.
    pub kernel: String,
    /// MemTotal of /proc/meminfo, KiB.
    pub memory_kib: u64,
}

/// One server under test, as the operator described it to the sweep.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TargetInfo {
    /// A name for reports (`relayhub-fsync-always`, `nats`, ...).
    pub label: String,
    /// `relayhub`, `nats` or `redis`.
    pub kind: String,
    /// The URL driven.
    pub url: String,
    /// CPU cores the server was given (taskset): the capacity measured is
    /// for this many cores.
    pub server_cores: usize,
    /// How the server keeps durable messages (`memory`, `fsync-always`,
    /// `jetstream-file`, `aof-always`, ...), as given with `--storage`.
    pub storage: String,
}

/// What the clients did in one cell.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Workload {
    /// Receivers per publication (1: 1:1 relay).
    pub fanout: usize,
    /// Body bytes (header included).
    pub body_bytes: usize,
    /// Acknowledged delivery (`--durable`) or at most once.
    pub durable: bool,
    /// Connections (clients).
    pub clients: usize,
}

impl Workload {
    /// A short name: `relay-64b`, `fanout16-1024b-durable`.
    pub fn name(&self) -> String {
        let shape = if self.fanout == 1 {
            "relay".to_string()
        } else {
            format!("fanout{}", self.fanout)
        };
        let durable = if self.durable { "-durable" } else { "" };
        format!("{shape}-{}b{durable}", self.body_bytes)
    }
}

/// One (target, workload) pair: every rate tried, lowest first.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Cell {
    pub target: TargetInfo,
    pub workload: Workload,
    pub steps: Vec<Step>,
    /// Why stepping stopped.
    pub stopped: String,
    /// Server RSS before the cell's first step, KiB (`--server-pid`).
    pub idle_rss_kib: Option<u64>,
    /// Disk bytes the server appended per stored message over the cell
    /// (relayhub with `--metrics`: `relayhub_log_appended_bytes_total`
    /// over `relayhub_stored_total`).
    pub disk_bytes_per_message: Option<f64>,
}

impl Cell {
    /// The highest-rate step that held with p99 at most `p99_ms`.
    pub fn best_within(&self, p99_ms: f64) -> Option<&Step> {
        self.steps
            .iter()
            .filter(|step| step.verdict == Verdict::Held && step.p99_us <= p99_ms * 1000.0)
            .max_by(|a, b| a.deliveries_per_s.total_cmp(&b.deliveries_per_s))
    }
}

/// One open-loop run at a fixed offered rate.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Step {
    /// Publications per second offered (all senders together).
    pub offered_per_s: f64,
    /// Deliveries per second measured (offered x fan-out when it keeps up).
    pub deliveries_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p99_9_us: f64,
    /// How late the loadgen itself sent, p99 (it counts against the
    /// target: latency is measured from the scheduled send time).
    pub send_lag_p99_us: Option<f64>,
    /// Server CPU over the step, percent of one core.
    pub server_cpu_percent: Option<f64>,
    /// Server CPU per delivery, ns.
    pub server_cpu_ns_per_delivery: Option<f64>,
    /// Loadgen CPU, percent of one core.
    pub loadgen_cpu_percent: f64,
    /// Server RSS with every connection open at the end of sending, KiB.
    pub server_rss_kib: Option<u64>,
    /// (RSS at the end of sending - RSS before connecting) / clients; none
    /// when RSS fell (memory an earlier run freed was reused).
    pub bytes_per_connection: Option<f64>,
    pub errors: u64,
    /// Lost + duplicated + reordered deliveries.
    pub sequence_faults: u64,
    pub verdict: Verdict,
}

/// Whether a step held.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// p99 within the objective, every offered delivery made, no error.
    Held,
    /// p99 over the objective.
    OverObjective,
    /// Delivered less than [`KEEP_UP_SHARE`] of what was offered, or not
    /// everything by the end of the drain (counted lost).
    Behind,
    /// Errors, or duplicated or reordered deliveries.
    Faults,
    /// The run itself failed (connect, setup).
    Failed,
}

/// A step keeps up when it delivers at least this share of the offered
/// deliveries per second.
pub const KEEP_UP_SHARE: f64 = 0.95;
