//! Hub configuration: every limit is a named field with its unit last, its
//! default, and the worst-case memory it implies. Every flag can also be set
//! from the environment (`RELAYHUB_*`).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use relayhub_mesh::{RING_CAPACITY_MAX, RING_CAPACITY_MIN};
use relayhub_protocol::{FRAME_BYTES_MAX, FRAME_HEADER_BYTES, PREFACE_BYTES};

use crate::shard::MESH_MESSAGE_OVERHEAD_BYTES;

/// Default listen address: loopback, so a first run exposes nothing.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:7878";

/// Default bound on one connection's queued outbound bytes: 64 MiB, room
/// for 64 maximal deliveries, so a receiver that reads as fast as it can
/// rides out ordinary fan-in of 1 MiB bodies (nats-server allows 64 MiB
/// pending per client by default). It is a bound, not an allocation: an
/// idle connection holds none of it. Worst case
/// `connections * outbound_bytes_max` (docs/operations.md, "Memory bound").
pub const OUTBOUND_BYTES_MAX_DEFAULT: usize = 64 << 20;

/// Smallest outbound limit the hub accepts: the hub's preface, its welcome
/// and a maximal frame (a 1 MiB delivery) with its queue handles must fit,
/// or a receiver could never be sent anything: 1,089,552 bytes (1 MiB +
/// 40 KiB + 16).
pub const OUTBOUND_BYTES_MIN: usize = PREFACE_BYTES + FRAME_HEADER_BYTES + FRAME_BYTES_MAX + 4096;

/// Default connections per shard. A connection costs about 2.4 KB idle.
pub const CONNECTIONS_PER_SHARD_MAX_DEFAULT: usize = 100_000;

/// Default idle timeout: 5 minutes without a frame from the client.
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 300_000;

/// Default frame timeout: 30 s from the first byte of a frame (or the
/// preface) to its last. A 1 MiB frame needs a client link of about
/// 35 KB/s to make it.
pub const FRAME_TIMEOUT_MS_DEFAULT: u64 = 30_000;

/// Default byte budget of the mesh towards one shard, applied twice per
/// ordered pair of shards: to the outbox waiting for the ring, and to the
/// ring itself. 8 MiB each: eight maximal relays. Worst case per ordered
/// pair `2 * mesh_bytes_max + FRAME_BYTES_MAX`.
pub const MESH_BYTES_MAX_DEFAULT: usize = 8 << 20;

/// Smallest mesh budget: one maximal delivery must fit the ring.
pub const MESH_BYTES_MIN: usize =
    FRAME_HEADER_BYTES + FRAME_BYTES_MAX + MESH_MESSAGE_OVERHEAD_BYTES;

/// Most connections per shard (a connection's table slot is a `u32`).
pub const CONNECTIONS_PER_SHARD_LIMIT: usize = 1 << 24;

/// Largest value any millisecond flag takes: 365 days.
pub const DURATION_MS_LIMIT: u64 = 365 * 24 * 3600 * 1000;

/// Largest `--inflight-messages-max`.
pub const INFLIGHT_MESSAGES_LIMIT: u64 = 1 << 20;

/// Largest `--inbox-messages-max`.
pub const INBOX_MESSAGES_LIMIT: u64 = 1 << 32;

/// Largest `--spin-before-park-us` and `--spin-adaptive-us`: 1 s.
pub const SPIN_BEFORE_PARK_US_LIMIT: u64 = 1_000_000;

/// Default `--spin-adaptive-us`: 0, off. Spinning pays only when each shard
/// has its core to itself; where clients or other programs share the
/// shards' cores it takes their CPU and makes every latency worse
/// (docs/operations.md, "Cross-shard latency"). 50 us, about four times
/// the kernel's own cross-core wake-up here (docs/reports/hop.md), is the
/// measured setting for dedicated cores.
pub const SPIN_ADAPTIVE_US_DEFAULT: u64 = 0;

/// With adaptive spinning, a shard spins before sleeping only while it
/// sent or received cross-shard traffic within this long: 1 ms.
pub const SPIN_RECENT: Duration = Duration::from_millis(1);

/// Default life of a durable session after its last connection closed:
/// 7 days. A connected session never expires.
pub const SESSION_EXPIRY_MS_DEFAULT: u64 = 7 * 24 * 3600 * 1000;

/// Default life of an unacked inbox entry, from when it was stored, sent
/// or not: 7 days (0 = forever).
pub const MESSAGE_TTL_MS_DEFAULT: u64 = 7 * 24 * 3600 * 1000;

/// Default unacked entries on the wire to one durable session.
pub const INFLIGHT_MESSAGES_MAX_DEFAULT: u64 = 256;

/// Default unacked body bytes on the wire to one durable session: 4 MiB.
/// One entry is always allowed, whatever its size.
pub const INFLIGHT_BYTES_MAX_DEFAULT: u64 = 4 << 20;

/// Default entries one inbox holds.
pub const INBOX_MESSAGES_MAX_DEFAULT: u64 = 100_000;

/// Default body bytes one inbox holds: 64 MiB.
pub const INBOX_BYTES_MAX_DEFAULT: u64 = 64 << 20;

/// Default durable sessions one shard keeps (connected or not); past it a
/// durable `Hello` gets an ephemeral session (`WelcomeV2.durable` false).
pub const SESSIONS_PER_SHARD_MAX_DEFAULT: usize = 1_000_000;

/// Default retry-dedup window: 2 minutes, as NATS JetStream's duplicate
/// window. A retry of a stored `message_id` within it is recognised even
/// across a hub crash.
pub const DEDUP_WINDOW_MS_DEFAULT: u64 = 120_000;

/// Default time a closing connection gets to flush what is queued.
pub const CLOSE_FLUSH_MS_DEFAULT: u64 = 2_000;

/// Default time graceful shutdown waits for queued deliveries.
pub const SHUTDOWN_GRACE_MS_DEFAULT: u64 = 5_000;

/// Default slots in each mesh ring (one ring per ordered pair of shards).
/// A slot is at most `MESH_SLOT_BYTES` (96) bytes: 4096 slots cost
/// 384 KiB per ring, so `shards * (shards - 1) * 384 KiB` in all.
pub const MESH_RING_SLOTS_DEFAULT: usize = 4096;

/// Where durable sessions and inboxes are kept.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// One log per shard under `--data-dir`: survives restarts and crashes
    /// (within the fsync policy).
    Disk,
    /// Memory only: lost when the hub stops (benchmarks, tests).
    Memory,
}

/// When the log is made durable (`fdatasync`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// After every batch, before anything depending on it is answered.
    Always,
    /// Every this many milliseconds; answers go out once written.
    Interval(u64),
    /// Never (the OS writes back when it wants); answers go out once written.
    Never,
}

impl std::str::FromStr for Fsync {
    type Err = String;
    fn from_str(text: &str) -> Result<Fsync, String> {
        match text {
            "always" => Ok(Fsync::Always),
            "never" => Ok(Fsync::Never),
            _ => match text.strip_prefix("interval:").map(str::parse::<u64>) {
                Some(Ok(ms)) if (1..=DURATION_MS_LIMIT).contains(&ms) => Ok(Fsync::Interval(ms)),
                _ => Err(format!(
                    "expected always, never or interval:<ms> with ms from 1 to \
                     {DURATION_MS_LIMIT} (365 days), not {text:?}"
                )),
            },
        }
    }
}

impl std::fmt::Display for Fsync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fsync::Always => f.write_str("always"),
            Fsync::Interval(ms) => write!(f, "interval:{ms}"),
            Fsync::Never => f.write_str("never"),
        }
    }
}

/// Default data directory, relative to where the hub starts.
pub const DATA_DIR_DEFAULT: &str = "relayhub-data";

/// Smallest `--disk-bytes-max`: 2 MiB, room for a maximal message
/// and a compaction per shard.
pub const DISK_BYTES_MIN: u64 = 2 << 20;

/// Default bound on the logs' bytes on disk, all shards together: 16 GiB.
pub const DISK_BYTES_MAX_DEFAULT: u64 = 16 << 30;

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

    /// Close a connection from which no complete frame arrived for this long
    /// (0 = never).
    #[arg(long, env = "RELAYHUB_IDLE_TIMEOUT_MS", default_value_t = IDLE_TIMEOUT_MS_DEFAULT)]
    pub idle_timeout_ms: u64,

    /// Close a connection whose frame (or preface) started arriving this
    /// long ago and is still incomplete (0 = never).
    #[arg(long, env = "RELAYHUB_FRAME_TIMEOUT_MS", default_value_t = FRAME_TIMEOUT_MS_DEFAULT)]
    pub frame_timeout_ms: u64,

    /// How long a closing connection may take to flush its queue.
    #[arg(long, env = "RELAYHUB_CLOSE_FLUSH_MS", default_value_t = CLOSE_FLUSH_MS_DEFAULT)]
    pub close_flush_ms: u64,

    /// How long graceful shutdown waits for queued deliveries.
    #[arg(long, env = "RELAYHUB_SHUTDOWN_GRACE_MS", default_value_t = SHUTDOWN_GRACE_MS_DEFAULT)]
    pub shutdown_grace_ms: u64,

    /// Slots per mesh ring (rounded up to a power of two, at most 65536).
    #[arg(long, env = "RELAYHUB_MESH_RING_SLOTS", default_value_t = MESH_RING_SLOTS_DEFAULT)]
    pub mesh_ring_slots: usize,

    /// Byte budget of relay bodies towards one other shard, for its outbox
    /// and for its ring each. Past it, a connection relaying there pauses
    /// (TCP backpressure) until the outbox drains to half.
    #[arg(long, env = "RELAYHUB_MESH_BYTES_MAX", default_value_t = MESH_BYTES_MAX_DEFAULT)]
    pub mesh_bytes_max: usize,

    /// How long a durable session outlives its last connection.
    #[arg(long, env = "RELAYHUB_SESSION_EXPIRY_MS", default_value_t = SESSION_EXPIRY_MS_DEFAULT)]
    pub session_expiry_ms: u64,

    /// How long an inbox entry is kept after it was stored, sent or not,
    /// until it is acked (0 = forever).
    #[arg(long, env = "RELAYHUB_MESSAGE_TTL_MS", default_value_t = MESSAGE_TTL_MS_DEFAULT)]
    pub message_ttl_ms: u64,

    /// Most unacked entries on the wire to one durable session.
    #[arg(long, env = "RELAYHUB_INFLIGHT_MESSAGES_MAX", default_value_t = INFLIGHT_MESSAGES_MAX_DEFAULT)]
    pub inflight_messages_max: u64,

    /// Most unacked body bytes on the wire to one durable session (capped
    /// at --outbound-bytes-max minus 1,089,552 bytes, so the window and one
    /// maximal entry always fit the connection's queue).
    #[arg(long, env = "RELAYHUB_INFLIGHT_BYTES_MAX", default_value_t = INFLIGHT_BYTES_MAX_DEFAULT)]
    pub inflight_bytes_max: u64,

    /// Most entries one durable session's inbox holds; past it, InboxFull.
    #[arg(long, env = "RELAYHUB_INBOX_MESSAGES_MAX", default_value_t = INBOX_MESSAGES_MAX_DEFAULT)]
    pub inbox_messages_max: u64,

    /// Most body bytes one durable session's inbox holds; past it, InboxFull.
    #[arg(long, env = "RELAYHUB_INBOX_BYTES_MAX", default_value_t = INBOX_BYTES_MAX_DEFAULT)]
    pub inbox_bytes_max: u64,

    /// Most durable sessions per shard, connected or not.
    #[arg(long, env = "RELAYHUB_SESSIONS_PER_SHARD_MAX", default_value_t = SESSIONS_PER_SHARD_MAX_DEFAULT)]
    pub sessions_per_shard_max: usize,

    /// How long a stored `message_id` is recognised when its sender retries
    /// it, per receiver (0 = off).
    #[arg(long, env = "RELAYHUB_DEDUP_WINDOW_MS", default_value_t = DEDUP_WINDOW_MS_DEFAULT)]
    pub dedup_window_ms: u64,

    /// Drop a version-2 relay whose body the receiver was already sent
    /// within this many ms, from any sender, and tell the sender
    /// DuplicateContent (0 = off; 5000 is the "same message within 5 s" rule).
    #[arg(long, env = "RELAYHUB_CONTENT_DEDUP_WINDOW_MS", default_value_t = 0)]
    pub content_dedup_window_ms: u64,

    /// Serve GET /metrics (Prometheus/OpenMetrics text) and GET /healthz on
    /// this address (off when not given; 127.0.0.1:7879 is the usual choice).
    #[arg(long, env = "RELAYHUB_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Where durable sessions and inboxes live: `disk` (a log per shard
    /// under --data-dir) or `memory`.
    #[arg(long, env = "RELAYHUB_STORAGE", value_enum, default_value_t = Storage::Disk)]
    pub storage: Storage,

    /// Directory of the logs (created on first start).
    #[arg(long, env = "RELAYHUB_DATA_DIR", default_value = DATA_DIR_DEFAULT)]
    pub data_dir: std::path::PathBuf,

    /// When the log is fdatasynced: `always` (before answering), `interval:<ms>`,
    /// or `never`.
    #[arg(long, env = "RELAYHUB_FSYNC", default_value = "always")]
    pub fsync: Fsync,

    /// Most bytes the logs of all shards hold; past it, relays to durable
    /// sessions get StorageFull.
    #[arg(long, env = "RELAYHUB_DISK_BYTES_MAX", default_value_t = DISK_BYTES_MAX_DEFAULT)]
    pub disk_bytes_max: u64,

    /// Log per-shard counters every this many milliseconds (0 = only at exit).
    #[arg(long, env = "RELAYHUB_STATS_INTERVAL_MS", default_value_t = 0)]
    pub stats_interval_ms: u64,

    /// Microseconds a shard with nothing to do spins before it sleeps in
    /// io_uring. Waking a sleeping shard from another core (a cross-shard
    /// relay) costs tens of microseconds or more; spinning trades idle CPU
    /// for that latency (0 = sleep at once).
    #[arg(long, env = "RELAYHUB_SPIN_BEFORE_PARK_US", default_value_t = 0)]
    pub spin_before_park_us: u64,

    /// With --spin-before-park-us 0 and more than one pinned shard: a shard
    /// that sent or received cross-shard traffic within the last 1 ms spins
    /// up to this many microseconds before it sleeps; one without recent
    /// cross-shard traffic sleeps at once (0 = off; 50 on dedicated cores).
    #[arg(long, env = "RELAYHUB_SPIN_ADAPTIVE_US", default_value_t = SPIN_ADAPTIVE_US_DEFAULT)]
    pub spin_adaptive_us: u64,

    /// Pin shard i to the i-th allowed CPU (disable when sharing a machine).
    #[arg(long, env = "RELAYHUB_PIN", default_value_t = true, action = clap::ArgAction::Set)]
    pub pin: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["relayhub"])
    }
}

/// A flag outside its bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidConfig {
    /// The flag, as typed on the command line.
    pub flag: &'static str,
    /// The value given.
    pub value: u64,
    /// Smallest value accepted.
    pub min: u64,
    /// Largest value accepted.
    pub max: u64,
}

impl std::fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} must be between {} and {}, not {}",
            self.flag, self.min, self.max, self.value
        )
    }
}

impl Config {
    /// Checks every flag that has a bound (the shard count is checked at
    /// start-up against the machine).
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let check = |flag, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(InvalidConfig {
                    flag,
                    value,
                    min,
                    max,
                })
            }
        };
        let size = |value: usize| value as u64;
        check(
            "--connections-per-shard-max",
            size(self.connections_per_shard_max),
            1,
            size(CONNECTIONS_PER_SHARD_LIMIT),
        )?;
        check(
            "--outbound-bytes-max",
            size(self.outbound_bytes_max),
            size(OUTBOUND_BYTES_MIN),
            u64::from(u32::MAX) * 16,
        )?;
        check(
            "--mesh-ring-slots",
            size(self.mesh_ring_slots),
            size(RING_CAPACITY_MIN),
            size(RING_CAPACITY_MAX),
        )?;
        check(
            "--mesh-bytes-max",
            size(self.mesh_bytes_max),
            size(MESH_BYTES_MIN),
            u64::from(u32::MAX) * 16,
        )?;
        check(
            "--inflight-messages-max",
            self.inflight_messages_max,
            1,
            INFLIGHT_MESSAGES_LIMIT,
        )?;
        check(
            "--inflight-bytes-max",
            self.inflight_bytes_max,
            1,
            u64::from(u32::MAX) * 16,
        )?;
        check(
            "--inbox-messages-max",
            self.inbox_messages_max,
            1,
            INBOX_MESSAGES_LIMIT,
        )?;
        check(
            "--inbox-bytes-max",
            self.inbox_bytes_max,
            size(relayhub_protocol::BODY_BYTES_MAX),
            u64::from(u32::MAX) * 16,
        )?;
        check(
            "--disk-bytes-max",
            self.disk_bytes_max,
            DISK_BYTES_MIN,
            u64::MAX / 2,
        )?;
        check(
            "--sessions-per-shard-max",
            size(self.sessions_per_shard_max),
            0,
            size(CONNECTIONS_PER_SHARD_LIMIT) * 16,
        )?;
        for (flag, value) in [
            ("--session-expiry-ms", self.session_expiry_ms),
            ("--dedup-window-ms", self.dedup_window_ms),
            ("--content-dedup-window-ms", self.content_dedup_window_ms),
            ("--message-ttl-ms", self.message_ttl_ms),
            ("--idle-timeout-ms", self.idle_timeout_ms),
            ("--frame-timeout-ms", self.frame_timeout_ms),
            ("--close-flush-ms", self.close_flush_ms),
            ("--shutdown-grace-ms", self.shutdown_grace_ms),
            ("--stats-interval-ms", self.stats_interval_ms),
        ] {
            check(flag, value, 0, DURATION_MS_LIMIT)?;
        }
        check(
            "--spin-before-park-us",
            self.spin_before_park_us,
            0,
            SPIN_BEFORE_PARK_US_LIMIT,
        )?;
        check(
            "--spin-adaptive-us",
            self.spin_adaptive_us,
            0,
            SPIN_BEFORE_PARK_US_LIMIT,
        )
    }

    /// Whether shards spin only while cross-shard traffic is recent: with
    /// `shards` pinned shards, no fixed spin and a non-zero adaptive one.
    /// (An unpinned executor never spins: glommio spins only when bound.)
    pub fn spin_adaptive(&self, shards: usize) -> bool {
        self.pin && shards > 1 && self.spin_before_park_us == 0 && self.spin_adaptive_us > 0
    }

    /// Why a spin flag that was set does nothing with `shards` shards, if
    /// it does (the hub logs it as a warning at start).
    pub fn spin_ignored(&self, shards: usize) -> Option<&'static str> {
        if self.spin_before_park_us > 0 && !self.pin {
            Some("--spin-before-park-us has no effect with --pin false: only a pinned shard spins")
        } else if self.spin_adaptive_us > 0
            && !self.spin_adaptive(shards)
            && self.spin_before_park_us == 0
        {
            Some("--spin-adaptive-us has no effect: it needs --pin true and more than one shard")
        } else {
            None
        }
    }

    /// The longest spin of an idle shard before it sleeps: the fixed
    /// `--spin-before-park-us`, else the adaptive one when it applies.
    pub fn spin_before_park(&self, shards: usize) -> Duration {
        if self.spin_before_park_us > 0 {
            Duration::from_micros(self.spin_before_park_us)
        } else if self.spin_adaptive(shards) {
            Duration::from_micros(self.spin_adaptive_us)
        } else {
            Duration::ZERO
        }
    }

    /// A configuration for tests: an ephemeral loopback port, `shards`
    /// shards, no pinning.
    pub fn for_tests(shards: usize) -> Config {
        Config {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            shards: Some(shards),
            pin: false,
            storage: Storage::Memory,
            ..Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::parse_from(std::iter::once("relayhub").chain(args.iter().copied()))
    }

    #[test]
    fn adaptive_spin_applies_to_pinned_shards_without_a_fixed_spin() {
        // Off by default: shards sleep at once.
        let default = parse(&[]);
        assert!(!default.spin_adaptive(2));
        assert_eq!(default.spin_before_park(2), Duration::ZERO);
        let adaptive = parse(&["--spin-adaptive-us", "50"]);
        assert!(adaptive.spin_adaptive(2));
        assert_eq!(adaptive.spin_before_park(2), Duration::from_micros(50));
        // One shard has no cross-shard traffic to spin for.
        assert!(!adaptive.spin_adaptive(1));
        assert_eq!(adaptive.spin_before_park(1), Duration::ZERO);
        // Unpinned executors never spin.
        let unpinned = parse(&["--spin-adaptive-us", "50", "--pin", "false"]);
        assert!(!unpinned.spin_adaptive(2));
        // A fixed spin wins, with any shard count.
        let fixed = parse(&["--spin-before-park-us", "200", "--spin-adaptive-us", "50"]);
        assert!(!fixed.spin_adaptive(2));
        assert_eq!(fixed.spin_before_park(1), Duration::from_micros(200));
        assert_eq!(fixed.spin_before_park(2), Duration::from_micros(200));
        // A spin that cannot take effect is named at start.
        assert_eq!(default.spin_ignored(2), None);
        assert_eq!(adaptive.spin_ignored(2), None);
        assert_eq!(fixed.spin_ignored(1), None);
        assert!(adaptive.spin_ignored(1).is_some());
        assert!(unpinned.spin_ignored(2).is_some());
        let fixed_unpinned = parse(&["--spin-before-park-us", "50", "--pin", "false"]);
        assert!(fixed_unpinned.spin_ignored(1).is_some());
    }

    #[test]
    fn spins_past_the_limit_are_refused() {
        let over = (SPIN_BEFORE_PARK_US_LIMIT + 1).to_string();
        let error = parse(&["--spin-adaptive-us", &over])
            .validate()
            .unwrap_err();
        assert!(error.to_string().contains("--spin-adaptive-us"), "{error}");
        assert!(parse(&["--spin-adaptive-us", "1000000"]).validate().is_ok());
    }

    #[test]
    fn fsync_intervals_are_1_ms_to_365_days() {
        let fsync = |text: &str| text.parse::<Fsync>();
        assert_eq!(fsync("interval:1"), Ok(Fsync::Interval(1)));
        assert_eq!(
            fsync(&format!("interval:{DURATION_MS_LIMIT}")),
            Ok(Fsync::Interval(DURATION_MS_LIMIT))
        );
        for bad in [
            "interval:0",
            "interval:31536000001",
            "interval:",
            "sometimes",
        ] {
            assert!(fsync(bad).is_err(), "{bad} accepted");
        }
    }
}
