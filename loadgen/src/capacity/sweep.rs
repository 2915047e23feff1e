//! `relayhub-loadgen sweep`: the highest open-loop rate each target holds,
//! per workload, under a latency objective.
//!
//! For every target and every workload of the matrix (body sizes x fan-outs
//! x at-most-once/durable), the offered rate starts at `--start-rate` and is
//! multiplied by `--step-factor` while steps hold (p99 within `--p99-ms`,
//! at least [`KEEP_UP_SHARE`] of the offered deliveries made, no error and
//! no lost, duplicated or reordered delivery). After the first step that
//! does not hold, `--refine` bisection steps narrow the gap. The whole
//! sweep keeps within `--budget`: each cell gets an equal share of what is
//! left, and a cell out of time stops with "time budget".

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use clap::{Parser, ValueEnum};

use super::planner::positive;
use super::{
    Cell, IdleRow, Machine, Step, SweepFile, TargetInfo, Verdict, Workload, KEEP_UP_SHARE,
    SWEEP_FORMAT,
};
use crate::cli::{parse_duration, Args};
use crate::error::LoadgenError;
use crate::summary::Summary;
use crate::target::{Target, TargetKind};

/// Steps the open-loop rate up per workload and target until p99 passes the
/// objective or the target falls behind; writes every step as JSON.
///
/// Example (hub pinned to core 0, the loadgen to core 1):
///   taskset -c 1 relayhub-loadgen sweep --target relayhub://127.0.0.1:7878
///       --server-pid "$(pgrep -x relayhub)" --sizes 64,1024 --fanouts 1,16
///       --modes at-most-once,durable --p99-ms 5 --budget 5m --out sweep.json
#[derive(Parser, Debug, Clone)]
#[command(name = "relayhub-loadgen sweep", verbatim_doc_comment)]
pub struct SweepArgs {
    /// Server to drive (relayhub://, nats://, redis://); repeat for several.
    /// The options below that repeat are matched to targets by position.
    #[arg(long = "target", value_name = "URL", required = true)]
    pub targets: Vec<String>,

    /// A name per target for reports and `plan` (default: the target's).
    #[arg(long = "label", value_name = "NAME")]
    pub labels: Vec<String>,

    /// Server process id per target: CPU per delivery and memory.
    #[arg(long = "server-pid", value_name = "PID")]
    pub server_pids: Vec<u32>,

    /// CPU cores each server was given (taskset); capacity is per this
    /// many cores. Default 1.
    #[arg(long = "server-cores", value_name = "N")]
    pub server_cores: Vec<usize>,

    /// How each server keeps durable messages, for `plan --fsync`: memory,
    /// fsync-always, fsync-interval, fsync-never (relayhub), jetstream-memory,
    /// jetstream-file, aof-always, ... Default memory.
    #[arg(long = "storage", value_name = "NAME")]
    pub storages: Vec<String>,

    /// relayhub's metrics address (HOST:PORT of --metrics-listen) per
    /// target, or "-": disk bytes per stored message from its counters.
    #[arg(long = "metrics", value_name = "ADDR")]
    pub metrics: Vec<String>,

    /// Body sizes, comma-separated (20..=1048576; the 20-byte header is part
    /// of the body).
    #[arg(long, value_delimiter = ',', default_value = "64")]
    pub sizes: Vec<usize>,

    /// Receivers per publication, comma-separated (1 = 1:1 relay).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub fanouts: Vec<usize>,

    /// Delivery modes, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "at-most-once"
    )]
    pub modes: Vec<Mode>,

    /// Clients per cell (connections; more than the largest fan-out).
    #[arg(long, default_value_t = 64)]
    pub clients: usize,

    /// Bodies of at least this many bytes run with --large-clients clients.
    #[arg(long, default_value_t = 65_536)]
    pub large_bytes: usize,

    /// Clients per cell for large bodies.
    #[arg(long, default_value_t = 8)]
    pub large_clients: usize,

    /// The latency objective: a step holds with p99 at most this, ms.
    #[arg(long, default_value_t = 10.0)]
    pub p99_ms: f64,

    /// First offered rate, publications per second over all senders.
    #[arg(long, default_value_t = 1000.0)]
    pub start_rate: f64,

    /// Large bodies start lower: the first step offers at most this many
    /// body megabytes (10^6) per second (1 MiB bodies: 47 publications/s).
    #[arg(long, default_value_t = 50.0)]
    pub start_megabytes: f64,

    /// Each step offers this many times the last one (> 1).
    #[arg(long, default_value_t = 2.0)]
    pub step_factor: f64,

    /// Highest rate offered.
    #[arg(long, default_value_t = 5_000_000.0)]
    pub max_rate: f64,

    /// A step that did not hold is run again this many times before the
    /// cell stops there (the last try counts).
    #[arg(long, default_value_t = 1)]
    pub confirm: u32,

    /// Bisection steps between the last rate that held and the first that
    /// did not.
    #[arg(long, default_value_t = 1)]
    pub refine: u32,

    /// Measured time per step.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub step_duration: Duration,

    /// Warm-up per step (load runs, nothing recorded).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub step_warmup: Duration,

    /// After sending stops, the longest wait for messages in flight.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub step_drain: Duration,

    /// The whole sweep stops within this long (10m, 90s, ...).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub budget: Duration,

    /// Idle connections held once per target to measure memory per
    /// connection (0: skip).
    #[arg(long, default_value_t = 2000)]
    pub idle_clients: usize,

    /// relayhub targets with --server-pid, after every cell: messages
    /// stored for offline durable sessions to measure memory per stored
    /// message (0: skip). The sessions stay on the hub.
    #[arg(long, default_value_t = 100_000)]
    pub stored_messages: u64,

    /// Body bytes of those messages.
    #[arg(long, default_value_t = 64)]
    pub stored_body_bytes: usize,

    /// Loadgen executors (threads).
    #[arg(long, default_value_t = 1)]
    pub cores: usize,

    /// io_uring memory per executor, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub io_memory_bytes: usize,

    /// Write the sweep here (JSON, read by `plan`).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,

    /// Write one SVG of p99 against offered rate per workload, all targets
    /// overlaid: FILE.svg -> FILE-<workload>.svg.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,

    /// No progress lines.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Delivery mode of a cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Protocol v1 relays, NATS core, Redis pub/sub.
    AtMostOnce,
    /// `--durable`: relayhub v2 sessions, JetStream, Redis Streams.
    Durable,
}

/// A target with everything the options said of it.
struct Subject {
    target: Target,
    info: TargetInfo,
    pid: Option<u32>,
    metrics: Option<String>,
}

impl SweepArgs {
    fn check(&self) -> Result<Vec<Subject>, LoadgenError> {
        let bad = |text: String| Err(LoadgenError::BadOptions(text));
        let targets = self.targets.len();
        for (name, count) in [
            ("--label", self.labels.len()),
            ("--server-pid", self.server_pids.len()),
            ("--server-cores", self.server_cores.len()),
            ("--storage", self.storages.len()),
            ("--metrics", self.metrics.len()),
        ] {
            if count > targets {
                return bad(format!("more {name} than --target ({count} > {targets})"));
            }
        }
        if !positive(self.step_factor - 1.0) {
            return bad("--step-factor must be above 1".into());
        }
        if !(self.start_rate > 0.0 && self.start_rate <= self.max_rate) {
            return bad("--start-rate must be positive and at most --max-rate".into());
        }
        if !positive(self.p99_ms) {
            return bad("--p99-ms must be positive".into());
        }
        if !positive(self.start_megabytes) {
            return bad("--start-megabytes must be positive".into());
        }
        if self.step_duration.is_zero() {
            return bad("--step-duration must be positive".into());
        }
        if self.sizes.is_empty() || self.fanouts.is_empty() || self.modes.is_empty() {
            return bad("--sizes, --fanouts and --modes need at least one value each".into());
        }
        let mut subjects = Vec::with_capacity(targets);
        for (i, url) in self.targets.iter().enumerate() {
            let target = Target::parse(url)?;
            if target.kind == TargetKind::Sink {
                return bad(format!("sweep drives servers, not the sink ({url})"));
            }
            let label = self.labels.get(i).cloned().unwrap_or_else(|| target.name());
            if subjects.iter().any(|s: &Subject| s.info.label == label) {
                return bad(format!("two targets are labelled {label}: give --label"));
            }
            let cores = self.server_cores.get(i).copied().unwrap_or(1);
            if cores == 0 {
                return bad("--server-cores must be at least 1".into());
            }
            let info = TargetInfo {
                label,
                kind: kind_name(target.kind).into(),
                url: url.clone(),
                server_cores: cores,
                storage: self
                    .storages
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| "memory".into()),
            };
            let metrics = self.metrics.get(i).filter(|m| *m != "-").cloned();
            subjects.push(Subject {
                target,
                info,
                pid: self.server_pids.get(i).copied(),
                metrics,
            });
        }
        Ok(subjects)
    }

    /// The workloads of the matrix, in run order.
    fn workloads(&self) -> Vec<Workload> {
        let mut workloads = Vec::new();
        for &mode in &self.modes {
            for &fanout in &self.fanouts {
                for &body_bytes in &self.sizes {
                    let clients = if body_bytes >= self.large_bytes {
                        self.large_clients
                    } else {
                        self.clients
                    };
                    workloads.push(Workload {
                        fanout,
                        body_bytes,
                        durable: mode == Mode::Durable,
                        clients: clients.max(fanout + 1),
                    });
                }
            }
        }
        workloads
    }

    /// The loadgen command line of one step (checked like any other).
    fn step_args(&self, subject: &Subject, workload: &Workload, rate: f64) -> Vec<String> {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let mut line: Vec<String> = [
            "relayhub-loadgen",
            "--target",
            &subject.target.url,
            "--clients",
            &workload.clients.to_string(),
            "--rate",
            &format!("{rate:.3}"),
            "--body-bytes",
            &workload.body_bytes.to_string(),
            "--duration",
            &ms(self.step_duration),
            "--warmup",
            &ms(self.step_warmup),
            "--drain",
            &ms(self.step_drain),
            "--cores",
            &self.cores.to_string(),
            "--io-memory-bytes",
            &self.io_memory_bytes.to_string(),
            "-q",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if workload.fanout == 1 {
            line.extend(["--scenario".into(), "relay".into()]);
        } else {
            line.extend([
                "--scenario".into(),
                "fanout".into(),
                "--fanout".into(),
                workload.fanout.to_string(),
            ]);
        }
        if workload.durable {
            line.push("--durable".into());
        }
        if let Some(pid) = subject.pid {
            line.extend(["--server-pid".into(), pid.to_string()]);
        }
        line
    }

    /// Time one step takes, at most (connects included).
    fn step_estimate(&self) -> Duration {
        self.step_warmup + self.step_duration + self.step_drain / 2 + Duration::from_millis(500)
    }
}

fn kind_name(kind: TargetKind) -> &'static str {
    match kind {
        TargetKind::Relayhub => "relayhub",
        TargetKind::Nats => "nats",
        TargetKind::Redis => "redis",
        TargetKind::Sink => "sink",
    }
}

/// Runs one loadgen run from a command line.
fn run_line(line: &[String]) -> Result<Summary, LoadgenError> {
    let args =
        Args::try_parse_from(line).map_err(|error| LoadgenError::BadOptions(error.to_string()))?;
    let config = args.configs()?.into_iter().next().expect("one target");
    crate::runner::run(config)
}

/// What a finished run says about the step.
fn step_of(summary: &Summary, offered: f64, fanout: usize, slo_us: f64) -> Step {
    let faults = summary.sequence.lost + summary.sequence.duplicated + summary.sequence.reordered;
    let expected = offered * fanout as f64;
    let verdict = if summary.errors > 0
        || summary.sequence.duplicated > 0
        || summary.sequence.reordered > 0
    {
        Verdict::Faults
    } else if summary.sequence.lost > 0 || summary.deliveries_per_s < KEEP_UP_SHARE * expected {
        // Lost, in an open-loop step: not delivered by the end of the drain.
        Verdict::Behind
    } else if summary.latency.p99_us > slo_us {
        Verdict::OverObjective
    } else {
        Verdict::Held
    };
    let bytes_per_connection = match (summary.server_rss_before_kib, summary.server_rss_kib) {
        (Some(before), Some(with)) if summary.clients > 0 => {
            Some((with as f64 - before as f64) * 1024.0 / summary.clients as f64)
        }
        _ => None,
    }
    // RSS can fall over a step (memory an earlier run freed): no reading.
    .filter(|&bytes| bytes > 0.0);
    Step {
        offered_per_s: offered,
        deliveries_per_s: summary.deliveries_per_s,
        p50_us: summary.latency.p50_us,
        p99_us: summary.latency.p99_us,
        p99_9_us: summary.latency.p99_9_us,
        send_lag_p99_us: summary.send_lag.as_ref().map(|lag| lag.p99_us),
        server_cpu_percent: summary.server_cpu_percent,
        server_cpu_ns_per_delivery: summary.server_cpu_ns_per_delivery,
        loadgen_cpu_percent: summary.loadgen_cpu_percent,
        server_rss_kib: summary.server_rss_kib,
        bytes_per_connection,
        errors: summary.errors,
        sequence_faults: faults,
        verdict,
    }
}

fn failed_step(offered: f64) -> Step {
    Step {
        offered_per_s: offered,
        deliveries_per_s: 0.0,
        p50_us: 0.0,
        p99_us: 0.0,
        p99_9_us: 0.0,
        send_lag_p99_us: None,
        server_cpu_percent: None,
        server_cpu_ns_per_delivery: None,
        loadgen_cpu_percent: 0.0,
        server_rss_kib: None,
        bytes_per_connection: None,
        errors: 1,
        sequence_faults: 0,
        verdict: Verdict::Failed,
    }
}

/// Sums every sample of the named metrics in a Prometheus text page.
fn metric_sums(page: &str, names: &[&str]) -> Vec<f64> {
    let mut sums = vec![0.0; names.len()];
    for line in page.lines().filter(|line| !line.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        if let Some(i) = names.iter().position(|&name| name == &line[..name_end]) {
            if let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                sums[i] += value;
            }
        }
    }
    sums
}

/// relayhub's (log bytes appended, entries stored), from its /metrics.
fn log_counters(address: &str) -> Result<(f64, f64), String> {
    let mut stream = TcpStream::connect(address).map_err(|e| format!("{address}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("{address}: {e}"))?;
    let mut page = String::new();
    stream
        .read_to_string(&mut page)
        .map_err(|e| format!("{address}: {e}"))?;
    let sums = metric_sums(
        &page,
        &["relayhub_log_appended_bytes_total", "relayhub_stored_total"],
    );
    Ok((sums[0], sums[1]))
}

fn machine() -> Machine {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split(':').nth(1))
        .map(|model| model.trim().to_string())
        .unwrap_or_default();
    let memory_kib = read("/proc/meminfo")
        .lines()
        .find(|line| line.starts_with("MemTotal:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0);
    Machine {
        // The machine's, not this process's: the sweep itself is usually
        // pinned to one core (taskset), which available_parallelism reports.
        cpus: online_cpus(),
        cpu_model,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        memory_kib,
    }
}

/// CPUs online on the machine.
fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions; it returns -1 on error.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(online).unwrap_or(1).max(1)
}

fn elapsed_text(elapsed: Duration, budget: Duration) -> String {
    let min_s = |d: Duration| format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60);
    format!("{} of {}", min_s(elapsed), min_s(budget))
}

/// Runs the sweep and writes its outputs; returns what it wrote.
pub fn run(args: &SweepArgs, command: String) -> Result<SweepFile, LoadgenError> {
    let subjects = args.check()?;
    let workloads = args.workloads();
    let started = Instant::now();
    let slo_us = args.p99_ms * 1000.0;
    let mut file = SweepFile {
        format: SWEEP_FORMAT,
        machine: machine(),
        command,
        started_unix_s: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        slo_p99_ms: args.p99_ms,
        idle: Vec::new(),
        cells: Vec::new(),
        stored: Vec::new(),
    };
    let progress = |text: String| {
        if !args.quiet {
            eprintln!(
                "[sweep {}] {text}",
                elapsed_text(started.elapsed(), args.budget)
            );
        }
    };
    if args.idle_clients > 0 {
        for subject in &subjects {
            let mut line = vec![
                "relayhub-loadgen".to_string(),
                "--target".into(),
                subject.target.url.clone(),
                "--scenario".into(),
                "idle".into(),
                "--clients".into(),
                args.idle_clients.to_string(),
                "-q".into(),
            ];
            if let Some(pid) = subject.pid {
                line.extend(["--server-pid".into(), pid.to_string()]);
            }
            let summary = run_line(&line)?;
            let connections = summary.connections.unwrap_or_default();
            progress(format!(
                "{}: {} idle connections, {} bytes each",
                subject.info.label,
                connections.connected,
                connections
                    .bytes_per_connection
                    .map_or("-".into(), |b| format!("{b:.0}"))
            ));
            file.idle.push(IdleRow {
                label: subject.info.label.clone(),
                clients: args.idle_clients,
                bytes_per_connection: connections.bytes_per_connection,
                rss_before_kib: connections.rss_before_kib,
            });
        }
    }
    let total_cells = subjects.len() * workloads.len();
    let mut done = 0;
    for workload in &workloads {
        for subject in &subjects {
            let remaining_cells = (total_cells - done) as u32;
            let cell_budget = args.budget.saturating_sub(started.elapsed()) / remaining_cells;
            done += 1;
            let name = format!(
                "{done}/{total_cells} {} {}",
                subject.info.label,
                workload.name()
            );
            let cell = run_cell(args, subject, workload, cell_budget, slo_us, &|text| {
                progress(format!("{name}: {text}"))
            });
            file.cells.push(cell);
        }
    }
    if args.stored_messages > 0 {
        for subject in &subjects {
            let (TargetKind::Relayhub, Some(pid)) = (subject.target.kind, subject.pid) else {
                continue;
            };
            match super::stored::measure(
                &subject.info.label,
                subject.target.address,
                pid,
                args.stored_messages,
                args.stored_body_bytes,
            ) {
                Ok(row) => {
                    progress(format!(
                        "{}: {} messages of {} B stored for offline sessions, {:.0} bytes each",
                        row.label, row.messages, row.body_bytes, row.bytes_per_message
                    ));
                    file.stored.push(row);
                }
                Err(error) => progress(format!("{}: stored messages: {error}", subject.info.label)),
            }
        }
    }
    write_outputs(args, &file)?;
    progress(format!(
        "done: {} cells in {}",
        file.cells.len(),
        args.out.display()
    ));
    Ok(file)
}

fn run_cell(
    args: &SweepArgs,
    subject: &Subject,
    workload: &Workload,
    budget: Duration,
    slo_us: f64,
    progress: &dyn Fn(String),
) -> Cell {
    let started = Instant::now();
    let idle_rss_kib = subject.pid.and_then(crate::sys::process_rss_kib);
    let counters_before = subject
        .metrics
        .as_deref()
        .filter(|_| workload.durable)
        .map(log_counters);
    let mut steps: Vec<Step> = Vec::new();
    let mut stopped: String;
    let fits = |started: Instant| started.elapsed() + args.step_estimate() <= budget;
    let try_rate = |rate: f64, steps: &mut Vec<Step>| -> Step {
        let step = match run_line(&args.step_args(subject, workload, rate)) {
            Ok(summary) => step_of(&summary, rate, workload.fanout, slo_us),
            Err(error) => {
                progress(format!("offered {rate:.0}/s: the run failed: {error}"));
                failed_step(rate)
            }
        };
        progress(format!(
            "offered {:.0}/s -> {:.0} deliveries/s, p99 {:.0}us, server {}: {:?}",
            rate,
            step.deliveries_per_s,
            step.p99_us,
            step.server_cpu_percent
                .map_or("-".into(), |cpu| format!("{cpu:.0}% cpu")),
            step.verdict
        ));
        steps.push(step.clone());
        step
    };
    // Up by --step-factor while steps hold.
    let mut rate = args
        .start_rate
        .min(args.start_megabytes * 1e6 / workload.body_bytes as f64)
        .max(1.0);
    let mut held: Option<f64> = None;
    let mut failed: Option<f64> = None;
    loop {
        if !fits(started) {
            stopped = "time budget".into();
            break;
        }
        let mut step = try_rate(rate, &mut steps);
        // One stall of a shared machine should not end a cell: a step that
        // did not hold is run again before it counts.
        for _ in 0..args.confirm {
            if step.verdict == Verdict::Held || step.verdict == Verdict::Failed || !fits(started) {
                break;
            }
            step = try_rate(rate, &mut steps);
        }
        if step.verdict != Verdict::Held {
            stopped = format!("{:?} at {rate:.0}/s", step.verdict);
            failed = Some(rate);
            break;
        }
        held = Some(rate);
        if rate >= args.max_rate {
            stopped = "max rate held".into();
            break;
        }
        rate = (rate * args.step_factor).min(args.max_rate);
    }
    // Bisect between the last that held and the first that did not.
    if let (Some(mut low), Some(mut high)) = (held, failed) {
        for _ in 0..args.refine {
            if !fits(started) {
                stopped += "; refinement cut by the time budget";
                break;
            }
            let middle = (low * high).sqrt();
            if try_rate(middle, &mut steps).verdict == Verdict::Held {
                low = middle;
            } else {
                high = middle;
            }
        }
    }
    let disk_bytes_per_message = match (counters_before, subject.metrics.as_deref()) {
        (Some(Ok((bytes_before, stored_before))), Some(address)) => match log_counters(address) {
            Ok((bytes, stored)) if stored > stored_before => {
                Some((bytes - bytes_before) / (stored - stored_before))
            }
            Ok(_) => None,
            Err(error) => {
                progress(format!("metrics: {error}"));
                None
            }
        },
        (Some(Err(error)), _) => {
            progress(format!("metrics: {error}"));
            None
        }
        _ => None,
    };
    steps.sort_by(|a, b| a.offered_per_s.total_cmp(&b.offered_per_s));
    Cell {
        target: subject.info.clone(),
        workload: *workload,
        steps,
        stopped,
        idle_rss_kib,
        disk_bytes_per_message,
    }
}

fn write_outputs(args: &SweepArgs, file: &SweepFile) -> Result<(), LoadgenError> {
    let json = serde_json::to_string_pretty(file).expect("a sweep serializes");
    crate::report::write_file(&args.out, json + "\n")?;
    println!("{}", table(file));
    if let Some(svg) = &args.svg {
        let mut names: Vec<String> = file.cells.iter().map(|c| c.workload.name()).collect();
        names.dedup();
        for name in names {
            let cells: Vec<&Cell> = file
                .cells
                .iter()
                .filter(|cell| cell.workload.name() == name)
                .collect();
            let title = format!(
                "{name}: p99 by offered rate (objective {} ms)",
                file.slo_p99_ms
            );
            crate::report::write_file(
                &with_suffix(svg, &name),
                super::svg::render(&title, &cells, file.slo_p99_ms),
            )?;
        }
    }
    Ok(())
}

/// `dir/sweep.svg` + `relay-64b` -> `dir/sweep-relay-64b.svg`.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map_or("sweep".into(), |s| s.to_string_lossy());
    let ext = path
        .extension()
        .map_or("svg".into(), |e| e.to_string_lossy());
    path.with_file_name(format!("{stem}-{suffix}.{ext}"))
}

/// The best step of each cell, as a markdown table.
pub fn table(file: &SweepFile) -> String {
    let mut out = String::from(
        "| target | storage | workload | clients | highest held (deliveries/s) | offered/s | p99 | server ns/delivery | server cpu | bytes/connection | disk B/entry | stopped |\n\
         | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
    );
    for cell in &file.cells {
        let best = cell.best_within(file.slo_p99_ms);
        let opt =
            |value: Option<f64>, unit: &str| value.map_or("-".into(), |v| format!("{v:.0}{unit}"));
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            cell.target.label,
            cell.target.storage,
            cell.workload.name(),
            cell.workload.clients,
            opt(best.map(|s| s.deliveries_per_s), ""),
            opt(best.map(|s| s.offered_per_s), ""),
            opt(best.map(|s| s.p99_us), "us"),
            opt(best.and_then(|s| s.server_cpu_ns_per_delivery), ""),
            opt(best.and_then(|s| s.server_cpu_percent), "%"),
            opt(best.and_then(|s| s.bytes_per_connection), ""),
            opt(cell.disk_bytes_per_message, ""),
            cell.stopped,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> SweepArgs {
        SweepArgs::try_parse_from(line.split_whitespace()).unwrap()
    }

    #[test]
    fn the_matrix_and_step_lines() {
        let args = parse(
            "sweep --target relayhub://127.0.0.1:1 --sizes 64,1048576 --fanouts 1,16 \
             --modes at-most-once,durable --out x.json --server-pid 7",
        );
        let subjects = args.check().unwrap();
        let workloads = args.workloads();
        assert_eq!(workloads.len(), 8);
        assert_eq!(workloads[1].clients, 8, "large bodies: --large-clients");
        assert_eq!(workloads[2].clients, 64);
        assert!(workloads[4].durable);
        let line = args.step_args(&subjects[0], &workloads[6], 2500.0);
        let args = Args::try_parse_from(&line).unwrap();
        let config = args.configs().unwrap().remove(0);
        assert!(config.durable.is_some());
        assert_eq!(config.server_pid, Some(7));
        assert_eq!(config.load, crate::config::Load::Open { rate: 2500.0 });
    }

    #[test]
    fn bad_options_are_refused() {
        for line in [
            "sweep --target relayhub://127.0.0.1:1 --out x --step-factor 1",
            "sweep --target relayhub://127.0.0.1:1 --out x --label a --label b",
            "sweep --target sink://127.0.0.1:1 --out x",
            "sweep --target relayhub://127.0.0.1:1 --target relayhub://127.0.0.1:2 --out x --label a --label a",
            "sweep --target relayhub://127.0.0.1:1 --out x --start-rate 10 --max-rate 5",
        ] {
            assert!(parse(line).check().is_err(), "{line}");
        }
    }

    #[test]
    fn metrics_are_summed_over_shards() {
        let page = "# HELP relayhub_stored_total x\n\
                    relayhub_stored_total{shard=\"0\"} 10\n\
                    relayhub_stored_total{shard=\"1\"} 5\n\
                    relayhub_log_appended_bytes_total{shard=\"0\"} 1500\n\
                    relayhub_stored_created 3\n";
        assert_eq!(
            metric_sums(
                page,
                &["relayhub_log_appended_bytes_total", "relayhub_stored_total"]
            ),
            vec![1500.0, 15.0]
        );
    }

    #[test]
    fn verdicts() {
        let summary = |deliveries_per_s: f64, p99_us: f64, errors: u64| {
            let mut s = Summary::empty_for_tests();
            s.deliveries_per_s = deliveries_per_s;
            s.latency.p99_us = p99_us;
            s.errors = errors;
            s
        };
        let verdict = |s: &Summary| step_of(s, 1000.0, 2, 5000.0).verdict;
        assert_eq!(verdict(&summary(2000.0, 4000.0, 0)), Verdict::Held);
        assert_eq!(verdict(&summary(1899.0, 4000.0, 0)), Verdict::Behind);
        assert_eq!(verdict(&summary(2000.0, 6000.0, 0)), Verdict::OverObjective);
        assert_eq!(verdict(&summary(2000.0, 4000.0, 1)), Verdict::Faults);
    }
}
