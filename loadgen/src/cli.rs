//! The command line: flags, their checks, and running every target in turn.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::config::{
    DurableConfig, JetStreamAck, JetStreamConfig, JetStreamStorage, Load, RunConfig, Scenario,
};
use crate::error::LoadgenError;
use crate::header::{body_bytes_effective, HEADER_BYTES};
use crate::plan::{Pick, Topology, FANOUT_MAX};
use crate::report;
use crate::summary::Summary;
use crate::target::{Target, TargetKind};
use crate::wire::BODY_BYTES_MAX;

/// Load generator for relayhub, nats-server and redis-server.
///
/// Examples:
///   relayhub-loadgen --target relayhub://127.0.0.1:7878 --clients 64 --window 16
///   relayhub-loadgen --compare --target relayhub://127.0.0.1:7878 --target nats://127.0.0.1:4222
///       --target redis://127.0.0.1:6379 --scenario fanout --fanout 16 --body-bytes 1024
#[derive(Parser, Debug, Clone)]
#[command(name = "relayhub-loadgen", version, verbatim_doc_comment)]
pub struct Args {
    /// Server to drive: relayhub://HOST:PORT, nats://HOST:PORT,
    /// redis://HOST:PORT or sink://HOST:PORT (a --sink-listen process).
    /// Repeat to run the same load against several.
    #[arg(
        long = "target",
        value_name = "URL",
        default_value = "relayhub://127.0.0.1:7878"
    )]
    pub targets: Vec<String>,

    /// Run the same scenario against every --target in turn and print a
    /// side-by-side table with ratios (implied by several targets).
    #[arg(long)]
    pub compare: bool,

    /// What the clients do.
    #[arg(long, value_enum, default_value_t = ScenarioArg::Relay)]
    pub scenario: ScenarioArg,

    /// Receivers per publication for --scenario fanout (1..=255).
    #[arg(long, default_value_t = 16)]
    pub fanout: usize,

    /// Clients (connections; Redis clients hold two: subscriber + publisher).
    #[arg(long, default_value_t = 64)]
    pub clients: usize,

    /// Closed loop: publications each sender keeps outstanding (sent, not
    /// yet delivered to all its receivers).
    #[arg(long, default_value_t = 16, conflicts_with = "rate")]
    pub window: u64,

    /// Open loop: total publications per second over all senders, each on a
    /// fixed schedule; latency counts from the scheduled send time.
    #[arg(long)]
    pub rate: Option<f64>,

    /// Body bytes, 0..=1048576. The 20-byte header (sender, sequence, send
    /// time) is part of the body; smaller bodies are sent as 20 bytes.
    #[arg(long, default_value_t = 64)]
    pub body_bytes: usize,

    /// Measured time: 10s, 500ms, 1m or plain seconds.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Time before measuring (load runs, nothing is recorded).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// After sending stops, how long to wait for messages in flight
    /// before counting them lost.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub drain: Duration,

    /// Loadgen threads, one glommio executor each.
    #[arg(long, default_value_t = 1)]
    pub cores: usize,

    /// Most connects in flight per executor.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,

    /// Seed of the random receiver choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// --scenario relay: how each message's receiver is chosen. fixed: one
    /// per sender for the whole run (a random cyclic permutation); random:
    /// drawn per message, uniformly among the other clients of the
    /// sender's loadgen core, as users do.
    #[arg(long, value_enum, default_value_t = Pick::Fixed)]
    pub pick: Pick,

    /// Server process id for CPU use and (idle) memory per connection;
    /// repeat in the order of --target.
    #[arg(long = "server-pid", value_name = "PID")]
    pub server_pids: Vec<u32>,

    /// Write the HdrHistogram percentile distribution, one file per target
    /// (FILE.hgrm -> FILE.<target>.hgrm).
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,

    /// Write a JSON summary of every target and the ratios.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Write a latency-by-percentile plot of every target.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,

    /// Write the result tables as markdown.
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,

    /// No progress lines.
    #[arg(long, short)]
    pub quiet: bool,

    /// io_uring registered memory per executor, bytes (RLIMIT_MEMLOCK bound).
    #[arg(long, default_value_t = 1 << 20)]
    pub io_memory_bytes: usize,

    /// Generate no load: be a sink (the trivial peer behind sink:// targets)
    /// listening on ADDR, e.g. 127.0.0.1:7880. Runs until killed, or for
    /// --sink-for.
    #[arg(long, value_name = "ADDR")]
    pub sink_listen: Option<std::net::SocketAddr>,

    /// With --sink-listen: exit after this long (10s, 5m, ...).
    #[arg(long, value_parser = parse_duration, requires = "sink_listen")]
    pub sink_for: Option<Duration>,

    /// Durable delivery (relay and fanout): relayhub speaks protocol
    /// version 2 (durable sessions, Stored, cumulative acks), NATS uses
    /// JetStream (a stream, one durable consumer per receiver, publish
    /// acks), Redis uses Streams (XADD, XREADGROUP, XACK). The closed-loop
    /// window counts publications not yet acknowledged by the server.
    #[arg(long)]
    pub durable: bool,

    /// With --durable: share of the receivers (0..=1) that drop their
    /// connection at random moments and resume their session.
    #[arg(long, default_value_t = 0.0, requires = "durable")]
    pub reconnect_share: f64,

    /// With --reconnect-share: mean time between two drops of one
    /// reconnecting receiver (each wait is uniform in 0.5x..1.5x this).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub reconnect_every: Duration,

    /// With --durable, relayhub targets only: every relay asks for delivery
    /// receipts; senders count (and ack) them, the drain waits for them, and
    /// the durable table shows how many came and how many are missing.
    #[arg(long, requires = "durable")]
    pub receipts: bool,

    /// JetStream: where the stream lives (nats-server needs -js; file
    /// storage goes under its -sd directory).
    #[arg(long, value_enum, default_value_t = JetStreamStorage::Memory)]
    pub jetstream_storage: JetStreamStorage,

    /// JetStream: the consumers' ack policy. Default: all (one ack per
    /// read batch) without reconnects, explicit (one per delivery) with.
    #[arg(long, value_enum)]
    pub jetstream_ack: Option<JetStreamAck>,

    /// JetStream: the consumers' ack_wait, after which an unacked delivery
    /// is sent again. With reconnects the drain lasts at least this + 2 s.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub jetstream_ack_wait: Duration,

    /// JetStream: the consumers' max_ack_pending (relayhub's default
    /// --inflight-messages-max is 256).
    #[arg(long, default_value_t = 256)]
    pub jetstream_max_ack_pending: u64,
}

/// `--scenario` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScenarioArg {
    /// 1:1 between random pairs.
    Relay,
    /// Each client to --fanout random others.
    Fanout,
    /// Each client to itself: a round trip through the server.
    Echo,
    /// Connect --clients connections as fast as possible.
    Storm,
    /// Hold --clients idle connections; server memory per connection.
    Idle,
}

/// Parses `10s`, `250ms`, `2m`, `1.5s`, `10` (seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(number) = text.strip_suffix("ms") {
        (number, 1e-3)
    } else if let Some(number) = text.strip_suffix('s') {
        (number, 1.0)
    } else if let Some(number) = text.strip_suffix('m') {
        (number, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (10s, 500ms, 2m)"))?;
    if !(value.is_finite() && value >= 0.0) {
        return Err(format!("{text:?} is not a duration (10s, 500ms, 2m)"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

impl Args {
    /// The scenario the flags describe.
    pub fn scenario(&self) -> Scenario {
        match self.scenario {
            ScenarioArg::Relay => Scenario::Traffic(Topology::Relay),
            ScenarioArg::Fanout => Scenario::Traffic(Topology::Fanout(self.fanout)),
            ScenarioArg::Echo => Scenario::Traffic(Topology::Echo),
            ScenarioArg::Storm => Scenario::Storm,
            ScenarioArg::Idle => Scenario::Idle,
        }
    }

    /// Checks the flags and builds one run configuration per target.
    pub fn configs(&self) -> Result<Vec<RunConfig>, LoadgenError> {
        let bad = |text: String| Err(LoadgenError::BadOptions(text));
        if self.body_bytes > BODY_BYTES_MAX {
            return bad(format!(
                "--body-bytes {} is above the 1 MiB limit ({BODY_BYTES_MAX})",
                self.body_bytes
            ));
        }
        if self.scenario == ScenarioArg::Fanout && !(1..=FANOUT_MAX).contains(&self.fanout) {
            return bad(format!("--fanout must be in 1..={FANOUT_MAX}"));
        }
        if self.clients == 0 || self.cores == 0 || self.window == 0 {
            return bad("--clients, --cores and --window must be at least 1".into());
        }
        if self.clients < self.cores {
            return bad("--clients must be at least --cores".into());
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return bad("--rate must be a positive number of publications per second".into());
            }
        }
        if self.duration.is_zero() {
            return bad("--duration must be positive".into());
        }
        if self.server_pids.len() > self.targets.len() {
            return bad("more --server-pid than --target".into());
        }
        let targets: Vec<Target> = self
            .targets
            .iter()
            .map(|url| Target::parse(url))
            .collect::<Result<_, _>>()?;
        let durable = self.durable_config()?;
        if self.pick == Pick::Random && self.scenario != ScenarioArg::Relay {
            return bad(
                "--pick random draws the one receiver of a relay per message: \
                 use it with --scenario relay"
                    .into(),
            );
        }
        if self.pick == Pick::Random && durable.is_some() {
            return bad(
                "--pick random does not run with --durable: a publication sent again after \
                 a reconnect would need its receiver and its number in that pair, and the \
                 acknowledged-publication accounting counts per sender, not per pair"
                    .into(),
            );
        }
        if durable.is_some() {
            if !matches!(self.scenario, ScenarioArg::Relay | ScenarioArg::Fanout) {
                return bad("--durable runs --scenario relay or fanout".into());
            }
            if let Some(target) = targets
                .iter()
                .find(|target| target.kind == TargetKind::Sink)
            {
                return bad(format!(
                    "--durable drives relayhub://, nats:// (JetStream) and redis:// (Streams) targets, not {}",
                    target.url
                ));
            }
            if let Some(target) = targets
                .iter()
                .find(|target| self.receipts && target.kind != TargetKind::Relayhub)
            {
                return bad(format!(
                    "--receipts is relayhub's (its peers have no delivery receipts), not {}",
                    target.url
                ));
            }
        }
        let load = match self.rate {
            Some(rate) => Load::Open { rate },
            None => Load::Closed {
                window: self.window,
            },
        };
        Ok(targets
            .into_iter()
            .enumerate()
            .map(|(position, target)| RunConfig {
                scenario: self.scenario(),
                clients: self.clients,
                body_bytes: body_bytes_effective(self.body_bytes),
                load,
                duration: self.duration,
                warmup: self.warmup,
                cores: self.cores,
                connect_concurrency: self.connect_concurrency,
                seed: self.seed,
                pick: self.pick,
                server_pid: self.server_pids.get(position).copied(),
                progress: !self.quiet,
                io_memory_bytes: self.io_memory_bytes,
                drain: match &durable {
                    Some(durable) if durable.reconnects() && target.kind == TargetKind::Nats => {
                        self.drain
                            .max(durable.jetstream.ack_wait + JETSTREAM_DRAIN_SLACK)
                    }
                    _ => self.drain,
                },
                durable: durable.clone(),
                target,
            })
            .collect())
    }

    /// The durable settings, checked; `None` without `--durable`.
    pub fn durable_config(&self) -> Result<Option<DurableConfig>, LoadgenError> {
        let bad = |text: &str| Err(LoadgenError::BadOptions(text.into()));
        if !self.durable {
            return Ok(None);
        }
        if !(0.0..=1.0).contains(&self.reconnect_share) {
            return bad("--reconnect-share must be between 0 and 1");
        }
        if self.reconnect_share > 0.0 && self.reconnect_every.is_zero() {
            return bad("--reconnect-every must be positive");
        }
        let reconnects = self.reconnect_share > 0.0;
        let ack = self.jetstream_ack.unwrap_or(if reconnects {
            JetStreamAck::Explicit
        } else {
            JetStreamAck::All
        });
        if reconnects && ack == JetStreamAck::All {
            return bad(
                "--jetstream-ack all cannot be used with --reconnect-share: deliveries lost \
                 with a connection come back only after ack_wait, and acking a later one \
                 would ack them too (use explicit)",
            );
        }
        if self.jetstream_ack_wait < Duration::from_millis(100) {
            return bad("--jetstream-ack-wait must be at least 100ms");
        }
        if self.jetstream_max_ack_pending == 0 {
            return bad("--jetstream-max-ack-pending must be at least 1");
        }
        Ok(Some(DurableConfig {
            reconnect_share: self.reconnect_share,
            reconnect_every: self.reconnect_every,
            receipts: self.receipts,
            jetstream: JetStreamConfig {
                stream: JETSTREAM_STREAM.into(),
                storage: self.jetstream_storage,
                ack,
                ack_wait: self.jetstream_ack_wait,
                max_ack_pending: self.jetstream_max_ack_pending,
            },
        }))
    }
}

/// The stream a durable NATS run creates (and deletes afterwards).
pub const JETSTREAM_STREAM: &str = "RELAYHUB_LOADGEN";

/// JetStream with reconnects: the drain lasts at least ack_wait plus this,
/// so that deliveries lost with a connection have come back.
pub const JETSTREAM_DRAIN_SLACK: Duration = Duration::from_secs(2);

/// Runs every target, prints the tables, writes the files. Returns the
/// summaries of the targets that ran; fails if any target failed. With
/// `--sink-listen`, serves as a sink instead and returns no summary.
pub fn run(args: &Args, command: String) -> Result<Vec<Summary>, LoadgenError> {
    if let Some(listen) = args.sink_listen {
        crate::sys::raise_fd_limit();
        crate::sink::serve(listen, args.sink_for)
            .map_err(|error| LoadgenError::BadOptions(format!("sink on {listen}: {error}")))?;
        return Ok(Vec::new());
    }
    let configs = args.configs()?;
    if args.body_bytes < HEADER_BYTES && matches!(args.scenario(), Scenario::Traffic(_)) {
        eprintln!("note: --body-bytes {} is below the {HEADER_BYTES}-byte header: bodies are sent as {HEADER_BYTES} bytes", args.body_bytes);
    }
    let descriptors = crate::sys::raise_fd_limit();
    let per_client = configs
        .iter()
        .any(|config| config.target.kind == TargetKind::Redis) as usize
        + 1;
    if (args.clients * per_client) as u64 + 64 > descriptors {
        return Err(LoadgenError::BadOptions(format!(
            "{} clients need about {} file descriptors, the limit is {descriptors} (ulimit -n)",
            args.clients,
            args.clients * per_client + 64
        )));
    }
    let mut summaries = Vec::new();
    let mut failures = Vec::new();
    for config in configs {
        if !args.quiet {
            eprintln!("== {} : {}", config.target, describe(&config));
        }
        let url = config.target.url.clone();
        match crate::runner::run(config) {
            Ok(summary) => summaries.push(summary),
            Err(error) => {
                eprintln!("relayhub-loadgen: {error}");
                failures.push((url, error));
            }
        }
    }
    write_outputs(args, command, &summaries)?;
    match failures.into_iter().next() {
        Some((_, error)) if summaries.is_empty() || !(args.compare || args.targets.len() > 1) => {
            Err(error)
        }
        Some((url, error)) => Err(LoadgenError::BadOptions(format!(
            "target {url} failed: {error}"
        ))),
        None => Ok(summaries),
    }
}

/// One line saying what a run does.
pub fn describe(config: &RunConfig) -> String {
    let load = match config.load {
        Load::Closed { window } => format!("closed loop, window {window}"),
        Load::Open { rate } => format!("open loop, {rate:.0} publications/s"),
    };
    let durable = match &config.durable {
        None => String::new(),
        Some(durable) => {
            let mut text = match config.target.kind {
                TargetKind::Nats => format!(
                    ", durable: JetStream {:?} stream, ack {:?}, ack_wait {:?}, max_ack_pending {}",
                    durable.jetstream.storage,
                    durable.jetstream.ack,
                    durable.jetstream.ack_wait,
                    durable.jetstream.max_ack_pending
                ),
                TargetKind::Redis => {
                    ", durable: Redis Streams, a consumer group per receiver".to_string()
                }
                _ if durable.receipts => {
                    ", durable: protocol v2 sessions, delivery receipts".to_string()
                }
                _ => ", durable: protocol v2 sessions".to_string(),
            };
            if durable.reconnects() {
                text += &format!(
                    ", {:.0}% of receivers reconnect every ~{:?}, drain {:?}",
                    durable.reconnect_share * 100.0,
                    durable.reconnect_every,
                    config.drain
                );
            }
            text
        }
    };
    let pick = match config.pick {
        Pick::Fixed => "",
        Pick::Random => " (receiver drawn per message)",
    };
    match config.scenario {
        Scenario::Traffic(topology) => format!(
            "{topology:?}{pick}, {} clients, {} B bodies, {load}, {:?} + {:?} warm-up, {} core(s){durable}",
            config.clients, config.body_bytes, config.duration, config.warmup, config.cores
        ),
        Scenario::Storm => format!(
            "connection storm, {} connections, {} in flight per core",
            config.clients, config.connect_concurrency
        ),
        Scenario::Idle => format!("{} idle connections", config.clients),
    }
}

fn write_outputs(args: &Args, command: String, summaries: &[Summary]) -> Result<(), LoadgenError> {
    if summaries.is_empty() {
        return Ok(());
    }
    let mut results = report::table::results(summaries);
    let durable = report::table::durable(summaries);
    if !durable.is_empty() {
        results = format!("{results}\n{durable}");
    }
    let ratios = report::table::ratios(&report::ratios(summaries));
    println!("\n{results}");
    if !ratios.is_empty() {
        println!("{ratios}");
    }
    for summary in summaries {
        if summary.errors > 0 {
            println!(
                "{}: {} errors, first: {:?}",
                summary.target, summary.errors, summary.error_samples
            );
        }
    }
    if let Some(path) = &args.hgrm {
        for summary in summaries {
            report::write_file(
                &report::path_for_target(path, &summary.target),
                report::hgrm::render(&summary.histogram),
            )?;
        }
    }
    if let Some(path) = &args.json {
        report::write_file(path, report::json::render(command.clone(), summaries))?;
    }
    if let Some(path) = &args.svg {
        let title = summaries.first().map(describe_summary).unwrap_or_default();
        report::write_file(path, report::svg::render(&title, summaries))?;
    }
    if let Some(path) = &args.markdown {
        report::write_file(path, format!("`{command}`\n\n{results}\n{ratios}"))?;
    }
    Ok(())
}

fn describe_summary(summary: &Summary) -> String {
    match summary.scenario {
        Scenario::Traffic(topology) => format!(
            "{topology:?}, {} clients, {} B bodies, {:?}",
            summary.clients, summary.body_bytes, summary.load
        ),
        Scenario::Storm => format!(
            "connection storm, {} connections: connect latency",
            summary.clients
        ),
        Scenario::Idle => format!("{} idle connections: connect latency", summary.clients),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn flags_are_checked() {
        let parse = |line: &str| Args::try_parse_from(line.split_whitespace()).unwrap();
        assert!(parse("lg --body-bytes 1048577").configs().is_err());
        assert!(parse("lg --scenario fanout --fanout 256")
            .configs()
            .is_err());
        assert!(parse("lg --target ftp://x").configs().is_err());
        let configs = parse("lg --target nats://127.0.0.1:1 --target redis://127.0.0.1:2 --server-pid 5 --rate 1000 --body-bytes 0").configs().unwrap();
        assert_eq!(configs.len(), 2);
        assert_eq!(configs[0].server_pid, Some(5));
        assert_eq!(configs[1].server_pid, None);
        assert_eq!(configs[0].body_bytes, HEADER_BYTES);
        assert_eq!(configs[0].load, Load::Open { rate: 1000.0 });
        assert!(Args::try_parse_from(["lg", "--rate", "5", "--window", "3"]).is_err());
    }

    #[test]
    fn durable_flags_are_checked() {
        let parse = |line: &str| Args::try_parse_from(line.split_whitespace()).unwrap();
        assert!(Args::try_parse_from(["lg", "--reconnect-share", "0.2"]).is_err());
        assert!(parse("lg --durable --scenario echo").configs().is_err());
        assert!(parse("lg --durable --target sink://127.0.0.1:1")
            .configs()
            .is_err());
        assert!(parse("lg --durable --target redis://127.0.0.1:1")
            .configs()
            .is_ok());
        assert!(parse("lg --durable --reconnect-share 1.5")
            .configs()
            .is_err());
        assert!(
            parse("lg --durable --reconnect-share 0.2 --jetstream-ack all")
                .configs()
                .is_err()
        );
        let configs = parse(
            "lg --durable --target relayhub://127.0.0.1:1 --target nats://127.0.0.1:2 \
             --reconnect-share 0.2 --reconnect-every 500ms --drain 1s",
        )
        .configs()
        .unwrap();
        let durable = configs[0].durable.clone().unwrap();
        assert!(durable.reconnects());
        assert_eq!(durable.reconnect_every, Duration::from_millis(500));
        assert_eq!(durable.jetstream.ack, JetStreamAck::Explicit);
        // JetStream redelivers after ack_wait: the drain waits for it.
        assert_eq!(configs[0].drain, Duration::from_secs(1));
        assert_eq!(configs[1].drain, Duration::from_secs(4));
        let plain = parse("lg --durable --target nats://127.0.0.1:2")
            .configs()
            .unwrap();
        let jetstream = &plain[0].durable.as_ref().unwrap().jetstream;
        assert_eq!(jetstream.ack, JetStreamAck::All);
        assert_eq!(jetstream.storage, JetStreamStorage::Memory);
        assert!(parse("lg").configs().unwrap()[0].durable.is_none());
        assert!(Args::try_parse_from(["lg", "--receipts"]).is_err());
        assert!(parse("lg --durable --receipts --target nats://127.0.0.1:2")
            .configs()
            .is_err());
        let receipts = parse("lg --durable --receipts").configs().unwrap();
        assert!(receipts[0].durable.as_ref().unwrap().receipts);
    }

    #[test]
    fn pick_random_is_for_plain_relays() {
        let parse = |line: &str| Args::try_parse_from(line.split_whitespace()).unwrap();
        assert_eq!(parse("lg").configs().unwrap()[0].pick, Pick::Fixed);
        for target in ["relayhub", "nats", "redis", "sink"] {
            let configs = parse(&format!("lg --pick random --target {target}://127.0.0.1:1"))
                .configs()
                .unwrap();
            assert_eq!(configs[0].pick, Pick::Random);
        }
        for refused in [
            "lg --pick random --scenario fanout",
            "lg --pick random --scenario echo",
            "lg --pick random --durable",
        ] {
            match parse(refused).configs() {
                Err(LoadgenError::BadOptions(text)) => {
                    assert!(text.contains("--pick random"), "{text}")
                }
                other => panic!("{refused}: {other:?}"),
            }
        }
        assert!(Args::try_parse_from(["lg", "--pick", "sometimes"]).is_err());
    }
}
