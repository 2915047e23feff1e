//! `relayhub-loadgen plan`: cores, memory, disk and machines for a
//! population, from a sweep's measured rows.
//!
//! The arithmetic, per target (docs/capacity-planning.md shows it worked):
//!
//! ```text
//! publications/s   P = users x rate-per-user
//! deliveries/s     D = P x fanout
//! row              the target's cell with this fan-out and mode (and, for
//!                  relayhub with --fsync, storage fsync-POLICY) whose body
//!                  size is nearest, within SIZE_RATIO_MAX of the question's
//! capacity         c = highest deliveries/s of a step that held p99 <= X,
//!                  divided by the cores the server had
//! cores            ceil(D / (HEADROOM_SHARE x c))
//! memory           online users x idle bytes per connection
//!                  + (RSS at that step - RSS before it) x D / its deliveries/s
//!                  + offline users x stored-per-user x bytes per stored
//!                    message (relayhub, when the sweep measured it)
//!                  + the idle process's RSS, once per machine
//! machines         max(ceil(cores / cores per machine),
//!                      ceil(memory / (HEADROOM_SHARE x memory per machine)))
//! disk writes      D x log bytes appended per stored entry (durable relayhub)
//! ```

use std::path::PathBuf;

use clap::Parser;

use super::{Cell, Step, SweepFile, SWEEP_FORMAT};
use crate::error::LoadgenError;

/// Plan at most this share of the highest rate that held the objective
/// (and of a machine's memory): 30% headroom for bursts, a shard lost to a
/// noisy neighbour, and measurement noise.
pub const HEADROOM_SHARE: f64 = 0.7;

/// A row answers a question for bodies at most this many times larger or
/// smaller than its own.
pub const SIZE_RATIO_MAX: f64 = 2.0;

/// Cores, memory, disk and machines for a population, from a sweep.
///
/// Example:
///   relayhub-loadgen plan --sweep docs/reports/capacity/sweep.json
///       --users 1000000 --rate-per-user 0.1 --size 64 --p99-ms 10
#[derive(Parser, Debug, Clone)]
#[command(name = "relayhub-loadgen plan", verbatim_doc_comment)]
pub struct PlanArgs {
    /// A `relayhub-loadgen sweep --out` file.
    #[arg(long, value_name = "FILE")]
    pub sweep: PathBuf,

    /// Users (each a connection while online).
    #[arg(long)]
    pub users: u64,

    /// Messages each user sends per second, on average.
    #[arg(long)]
    pub rate_per_user: f64,

    /// Body bytes of a message.
    #[arg(long)]
    pub size: usize,

    /// Receivers per message (1: 1:1).
    #[arg(long, default_value_t = 1)]
    pub fanout: usize,

    /// The latency objective: p99 at most this, ms.
    #[arg(long)]
    pub p99_ms: f64,

    /// Acknowledged delivery (durable sessions; JetStream, Redis Streams).
    #[arg(long)]
    pub durable: bool,

    /// With --durable: relayhub's fsync policy (always, interval, never):
    /// only relayhub rows swept with --storage fsync-POLICY answer.
    #[arg(long, requires = "durable")]
    pub fsync: Option<String>,

    /// Share of the users connected at once (memory is per connection).
    #[arg(long, default_value_t = 1.0)]
    pub online_share: f64,

    /// With --durable: messages waiting in each offline user's inbox, on
    /// average (memory per stored message from the sweep's stored rows).
    #[arg(long, default_value_t = 0.0, requires = "durable")]
    pub stored_per_user: f64,

    /// Cores per machine (default: the sweep machine's).
    #[arg(long)]
    pub cores_per_machine: Option<usize>,

    /// Memory per machine, GiB (default: the sweep machine's).
    #[arg(long)]
    pub memory_per_machine_gib: Option<f64>,
}

/// One target's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub label: String,
    pub storage: String,
    /// The row used: its workload name and the step.
    pub workload: String,
    pub step: Step,
    /// Measured deliveries/s per core at that step.
    pub per_core: f64,
    pub cores: u64,
    pub memory_bytes: f64,
    /// Disk bytes written per second (durable relayhub rows with metrics).
    pub disk_bytes_per_s: Option<f64>,
    /// Memory of the offline users' waiting messages (in `memory_bytes`);
    /// `None` when the sweep did not measure it for this target.
    pub stored_bytes: Option<f64>,
    pub machines: u64,
}

/// Everything `plan` prints.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub publications_per_s: f64,
    pub deliveries_per_s: f64,
    pub online: f64,
    pub cores_per_machine: usize,
    pub memory_per_machine_bytes: f64,
    /// Per target label, in sweep order: an answer or why there is none.
    pub answers: Vec<(String, Result<Answer, String>)>,
}

impl PlanArgs {
    fn check(&self) -> Result<(), LoadgenError> {
        let bad = |text: &str| Err(LoadgenError::BadOptions(text.into()));
        if !positive(self.rate_per_user) || self.users == 0 {
            return bad("--users and --rate-per-user must be positive");
        }
        if !positive(self.p99_ms) {
            return bad("--p99-ms must be positive");
        }
        if !(self.online_share > 0.0 && self.online_share <= 1.0) {
            return bad("--online-share must be in (0, 1]");
        }
        if self.stored_per_user < 0.0 {
            return bad("--stored-per-user cannot be negative");
        }
        if self.fanout == 0 {
            return bad("--fanout must be at least 1");
        }
        if let Some(policy) = &self.fsync {
            if !matches!(policy.as_str(), "always" | "interval" | "never") {
                return bad("--fsync is always, interval or never");
            }
        }
        Ok(())
    }
}

/// True for a number above 0 (not NaN).
pub(super) fn positive(value: f64) -> bool {
    value > 0.0
}

/// Reads a sweep file, refusing other formats.
pub fn read_sweep(path: &std::path::Path) -> Result<SweepFile, LoadgenError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        LoadgenError::BadOptions(format!("cannot read {}: {error}", path.display()))
    })?;
    let file: SweepFile = serde_json::from_str(&text).map_err(|error| {
        LoadgenError::BadOptions(format!("{} is not a sweep file: {error}", path.display()))
    })?;
    if file.format != SWEEP_FORMAT {
        return Err(LoadgenError::BadOptions(format!(
            "{} has sweep format {}, this loadgen reads {SWEEP_FORMAT}: sweep again",
            path.display(),
            file.format
        )));
    }
    Ok(file)
}

/// The cell of `cells` (one target's) that answers the question, or why none.
fn row<'a>(cells: &[&'a Cell], args: &PlanArgs) -> Result<&'a Cell, String> {
    let shape: Vec<&&Cell> = cells
        .iter()
        .filter(|cell| cell.workload.fanout == args.fanout && cell.workload.durable == args.durable)
        .collect();
    let mode = if args.durable {
        "durable"
    } else {
        "at-most-once"
    };
    if shape.is_empty() {
        let have: Vec<String> = cells.iter().map(|c| c.workload.name()).collect();
        return Err(format!(
            "no {mode} row with fan-out {} (the sweep has: {})",
            args.fanout,
            have.join(", ")
        ));
    }
    let shape: Vec<&&Cell> = match (&args.fsync, cells[0].target.kind.as_str()) {
        (Some(policy), "relayhub") => {
            let storage = format!("fsync-{policy}");
            let matching: Vec<&&Cell> = shape
                .iter()
                .copied()
                .filter(|cell| cell.target.storage == storage)
                .collect();
            if matching.is_empty() {
                return Err(format!("no row swept with --storage {storage}"));
            }
            matching
        }
        _ => shape,
    };
    let distance = |cell: &Cell| {
        (cell.workload.body_bytes as f64 / args.size.max(1) as f64)
            .ln()
            .abs()
    };
    let nearest = shape
        .iter()
        .min_by(|a, b| distance(a).total_cmp(&distance(b)))
        .expect("not empty");
    if distance(nearest) > SIZE_RATIO_MAX.ln() + 1e-9 {
        let sizes: Vec<String> = shape
            .iter()
            .map(|c| c.workload.body_bytes.to_string())
            .collect();
        return Err(format!(
            "no row within {SIZE_RATIO_MAX}x of {} B bodies (swept: {} B)",
            args.size,
            sizes.join(", ")
        ));
    }
    Ok(nearest)
}

/// The plan for `args` from `file`.
pub fn plan(file: &SweepFile, args: &PlanArgs) -> Result<Plan, LoadgenError> {
    args.check()?;
    let publications = args.users as f64 * args.rate_per_user;
    let deliveries = publications * args.fanout as f64;
    let online = args.users as f64 * args.online_share;
    let cores_per_machine = args.cores_per_machine.unwrap_or(file.machine.cpus).max(1);
    let memory_per_machine = args
        .memory_per_machine_gib
        .map_or(file.machine.memory_kib as f64 * 1024.0, |gib| {
            gib * (1u64 << 30) as f64
        });
    let mut labels: Vec<&str> = Vec::new();
    for cell in &file.cells {
        if !labels.contains(&cell.target.label.as_str()) {
            labels.push(&cell.target.label);
        }
    }
    let mut answers = Vec::new();
    for label in labels {
        let cells: Vec<&Cell> = file
            .cells
            .iter()
            .filter(|c| c.target.label == label)
            .collect();
        let answer = row(&cells, args).and_then(|cell| {
            let step = cell.best_within(args.p99_ms).ok_or_else(|| {
                let lowest = cell
                    .steps
                    .iter()
                    .map(|s| s.p99_us)
                    .filter(|&p| p > 0.0)
                    .fold(f64::INFINITY, f64::min);
                format!(
                    "{}: no step held p99 <= {} ms (lowest p99 measured: {})",
                    cell.workload.name(),
                    args.p99_ms,
                    if lowest.is_finite() {
                        format!("{:.2} ms", lowest / 1000.0)
                    } else {
                        "none".into()
                    }
                )
            })?;
            let per_core = step.deliveries_per_s / cell.target.server_cores as f64;
            let cores = ((deliveries / (HEADROOM_SHARE * per_core)).ceil() as u64).max(1);
            let idle = file.idle.iter().find(|row| row.label == label);
            let per_connection = idle
                .and_then(|row| row.bytes_per_connection)
                .or(step.bytes_per_connection)
                .unwrap_or(0.0)
                .max(0.0);
            let process = idle
                .and_then(|row| row.rss_before_kib)
                .or(cell.idle_rss_kib)
                .unwrap_or(0) as f64
                * 1024.0;
            let traffic = match (step.server_rss_kib, cell.idle_rss_kib) {
                (Some(with), Some(before)) if step.deliveries_per_s > 0.0 => {
                    (with as f64 - before as f64).max(0.0) * 1024.0 * deliveries
                        / step.deliveries_per_s
                }
                _ => 0.0,
            };
            let by_cores = cores.div_ceil(cores_per_machine as u64);
            let stored = (args.stored_per_user > 0.0)
                .then(|| file.stored.iter().find(|row| row.label == label))
                .flatten()
                .map(|row| {
                    args.users as f64
                        * (1.0 - args.online_share)
                        * args.stored_per_user
                        * row.bytes_per_message.max(0.0)
                });
            let variable = online * per_connection + traffic + stored.unwrap_or(0.0);
            // Each machine runs one server process: its floor counts once
            // per machine.
            let usable = HEADROOM_SHARE * memory_per_machine - process;
            if usable <= 0.0 {
                return Err(format!(
                    "a machine's {:.1} GiB leaves nothing past the process's own {:.0} MiB",
                    memory_per_machine / (1u64 << 30) as f64,
                    process / (1u64 << 20) as f64
                ));
            }
            let by_memory = (variable / usable).ceil() as u64;
            let machines = by_cores.max(by_memory).max(1);
            Ok(Answer {
                label: label.to_string(),
                storage: cell.target.storage.clone(),
                workload: cell.workload.name(),
                step: step.clone(),
                per_core,
                cores,
                memory_bytes: variable + process * machines as f64,
                disk_bytes_per_s: cell
                    .disk_bytes_per_message
                    .filter(|_| args.durable)
                    .map(|bytes| bytes * deliveries),
                stored_bytes: stored,
                machines,
            })
        });
        answers.push((label.to_string(), answer));
    }
    if answers.iter().all(|(_, answer)| answer.is_err()) {
        let reasons: Vec<String> = answers
            .iter()
            .map(|(label, answer)| {
                format!("{label}: {}", answer.as_ref().expect_err("all refused"))
            })
            .collect();
        return Err(LoadgenError::BadOptions(format!(
            "the sweep has no row close enough to this question:\n  {}",
            reasons.join("\n  ")
        )));
    }
    Ok(Plan {
        publications_per_s: publications,
        deliveries_per_s: deliveries,
        online,
        cores_per_machine,
        memory_per_machine_bytes: memory_per_machine,
        answers,
    })
}

fn bytes_text(bytes: f64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    if bytes >= GIB {
        format!("{:.1} GiB", bytes / GIB)
    } else {
        format!("{:.0} MiB", bytes / MIB)
    }
}

/// The plan as text: the question, the inputs, a table, the refusals.
pub fn render(plan: &Plan, args: &PlanArgs, file: &SweepFile) -> String {
    let mode = match (&args.fsync, args.durable) {
        (Some(policy), _) => format!("durable, relayhub --fsync {policy}"),
        (None, true) => "durable".into(),
        (None, false) => "at most once".into(),
    };
    let mut out = format!(
        "Question: {} users ({:.0} online), {} messages/s each, {} B, fan-out {}, p99 <= {} ms, {mode}\n\
         Load: {:.0} publications/s, {:.0} deliveries/s\n\
         Sweep: {} ({} CPUs, {}, kernel {}), objective of the sweep p99 <= {} ms\n\
         Headroom rule: plan at most {:.0}% of the highest measured rate that held the objective, \
         and of a machine's memory; machines of {} cores and {}.\n\n",
        args.users,
        plan.online,
        args.rate_per_user,
        args.size,
        args.fanout,
        args.p99_ms,
        plan.publications_per_s,
        plan.deliveries_per_s,
        args.sweep.display(),
        file.machine.cpus,
        file.machine.cpu_model,
        file.machine.kernel,
        file.slo_p99_ms,
        HEADROOM_SHARE * 100.0,
        plan.cores_per_machine,
        bytes_text(plan.memory_per_machine_bytes),
    );
    out += "| target | storage | row used | held there (p99) | per core | cores | memory | of which inboxes | disk writes | machines |\n\
            | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
    let mut refused = String::new();
    for (label, answer) in &plan.answers {
        match answer {
            Ok(a) => {
                out += &format!(
                    "| {label} | {} | {} at {:.0}/s offered | {:.0} deliveries/s ({:.2} ms) | {:.0}/s | {} | {} | {} | {} | {} |\n",
                    a.storage,
                    a.workload,
                    a.step.offered_per_s,
                    a.step.deliveries_per_s,
                    a.step.p99_us / 1000.0,
                    a.per_core,
                    a.cores,
                    bytes_text(a.memory_bytes),
                    match (a.stored_bytes, args.stored_per_user > 0.0) {
                        (Some(bytes), _) => bytes_text(bytes),
                        (None, true) => "not measured".into(),
                        (None, false) => "-".into(),
                    },
                    a.disk_bytes_per_s
                        .map_or("-".into(), |b| format!("{:.1} MB/s", b / 1e6)),
                    a.machines,
                );
            }
            Err(reason) => refused += &format!("- {label}: refused: {reason}\n"),
        }
    }
    if !refused.is_empty() {
        out += &format!("\n{refused}");
    }
    out += "\nCores scale the measured per-core rate linearly (one shard per core, shards share \
            only the mesh). More than one machine is an estimate: relayhub runs on one machine \
            until the multi-node milestone. Inbox memory counts only with --stored-per-user, \
            from the sweep's stored rows (relayhub only).\n";
    out
}

/// Runs `plan` and prints it.
pub fn run(args: &PlanArgs) -> Result<Plan, LoadgenError> {
    let file = read_sweep(&args.sweep)?;
    let plan = plan(&file, args)?;
    print!("{}", render(&plan, args, &file));
    Ok(plan)
}
