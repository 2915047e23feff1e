//! What one hop between shards costs: round trips of one `u64` between a
//! "ping" side and a "pong" side, as percentiles, against the floors below it.
//!
//! Variants, in the order they run within a round:
//! - `spin`: two threads pinned to cores 0 and 1 busy-poll an atomic counter
//!   each (the no-sleep floor: cache-line transfers only);
//! - `futex`: the same counters, but a waiter sleeps in `FUTEX_WAIT` and the
//!   other side always calls `FUTEX_WAKE` (the sleeping floor, no eventfd);
//! - `eventfd`: both threads block in `read(2)` on their own eventfd and
//!   write the other's: how glommio wakes a parked executor from another core;
//! - `eventfd_membarrier`: the same, and each side first calls
//!   `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` before it blocks, as a
//!   glommio executor does each time it parks (`sys/uring.rs`, before
//!   `link_rings_and_sleep`): that barrier interrupts every other core that
//!   runs a thread of the process;
//! - `same_shard_local_channel`: two tasks on one glommio executor (core 0)
//!   through a pair of `local_channel`s of capacity 1: a hop inside a shard;
//! - `same_shard_mesh`: the same two tasks through a pair of relayhub-mesh
//!   rings: the ring and doorbell code without a second core;
//! - `cross_shard_mesh`: two glommio executors pinned to cores 0 and 1
//!   through a pair of relayhub-mesh rings, with the hub's executor settings
//!   and its default of no spinning;
//! - `cross_shard_mesh_adaptive50`: the same with `--spin-adaptive-us 50`:
//!   each side spins up to 50 us before it sleeps while it moved an item
//!   across within the last `SPIN_RECENT`, as `cross_shard_traffic` in the
//!   driver decides;
//! - `cross_shard_mesh_spin50`, `cross_shard_mesh_spin200`: a fixed
//!   `--spin-before-park-us` of 50 and 200 us (spinning after every
//!   wake-up, whatever woke it).
//!
//! The mesh variants move items as the hub's driver does (`forward_batch`,
//! `consume` in `server/src/driver.rs`): `try_stage` + `publish`, and
//! `send().await` only when the ring is full (never, in a ping-pong);
//! `recv_batch(MESH_BATCH_MAX)` then `yield_if_needed`. Executors are built
//! as `Hub::start` builds them (`server/src/lib.rs`): `Placement::Fixed`,
//! the hub's io memory, preempt timer and spin before park. The hub's own
//! extra step, the shard core waking its forwarder task, is not included.
//!
//! Each run times `HOP_WARM_UP` round trips unrecorded, then records
//! `HOP_ROUND_TRIPS` (or as many as fit in `HOP_RUN_LIMIT_S` seconds) into
//! an HDR histogram; `HOP_ROUNDS` rounds run every variant in turn
//! (interleaved, so a noisy spell of a shared machine hits all of them), and
//! the table gives each percentile's median over rounds with its range.
//! A watchdog ends the process if the whole run overstays its bound.
//! `HOP_PREEMPT_TIMER_US` replaces the hub's preempt timer in every executor.
//!
//! Run: `cargo bench -p relayhub-benches --bench hop [-- NAME...]`, where
//! each NAME keeps the variant of that name, or else every variant whose
//! name contains it (`cross_shard` keeps the four cross-shard ones). Results and the
//! machine they came from are in `docs/reports/hop.md`.

use std::hint::spin_loop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use glommio::channels::local_channel;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use relayhub_benches::{env_u64, pin_to_core};
use relayhub_mesh::{Consumer, Producer, TrySendError};

/// Core of the ping thread or executor (and of both same-shard tasks).
const PING_CORE: usize = 0;
/// Core of the pong thread or executor.
const PONG_CORE: usize = 1;

/// The hub's settings, copied (the benches do not build the server):
/// `startup::IO_MEMORY_BYTES`.
const HUB_IO_MEMORY_BYTES: usize = 256 << 10;
/// `PREEMPT_TIMER` in `server/src/lib.rs`.
const HUB_PREEMPT_TIMER: Duration = Duration::from_millis(2);
/// `config::MESH_RING_SLOTS_DEFAULT`.
const HUB_RING_SLOTS: usize = 4096;
/// `MESH_BATCH_MAX` in `server/src/driver.rs`.
const HUB_MESH_BATCH_MAX: usize = 256;
/// The default of `--spin-before-park-us` (`server/src/config.rs`).
const HUB_SPIN_BEFORE_PARK: Duration = Duration::ZERO;
/// `--spin-adaptive-us` for dedicated cores (`SPIN_ADAPTIVE_US_DEFAULT` in
/// `server/src/config.rs` says why 50).
const HUB_SPIN_ADAPTIVE: Duration = Duration::from_micros(50);
/// `SPIN_RECENT` in `server/src/config.rs`.
const HUB_SPIN_RECENT: Duration = Duration::from_millis(1);

/// Recorded round trips per run, unless `HOP_ROUND_TRIPS` says otherwise.
const ROUND_TRIPS_DEFAULT: u64 = 200_000;
/// Unrecorded round trips before them (`HOP_WARM_UP`).
const WARM_UP_DEFAULT: u64 = 10_000;
/// Rounds of every variant (`HOP_ROUNDS`).
const ROUNDS_DEFAULT: u64 = 3;
/// Most seconds one run may take, warm-up included (`HOP_RUN_LIMIT_S`):
/// a run that reaches it reports the round trips it recorded.
const RUN_LIMIT_S_DEFAULT: u64 = 8;
/// What the watchdog grants each run beyond its limit (executor start-up,
/// thread joins), and the whole process beyond all runs.
const WATCHDOG_MARGIN: Duration = Duration::from_secs(2);

/// Highest latency the histograms hold: 10 s, in ns.
const HISTOGRAM_MAX_NS: u64 = 10_000_000_000;

#[derive(Clone, Copy)]
enum Variant {
    Spin,
    Futex,
    Eventfd,
    EventfdMembarrier,
    SameShardLocalChannel,
    SameShardMesh,
    CrossShardMesh {
        spin_before_park: Duration,
        adaptive: bool,
    },
}

const VARIANTS: [(&str, Variant); 10] = [
    ("spin", Variant::Spin),
    ("futex", Variant::Futex),
    ("eventfd", Variant::Eventfd),
    ("eventfd_membarrier", Variant::EventfdMembarrier),
    ("same_shard_local_channel", Variant::SameShardLocalChannel),
    ("same_shard_mesh", Variant::SameShardMesh),
    (
        "cross_shard_mesh",
        Variant::CrossShardMesh {
            spin_before_park: HUB_SPIN_BEFORE_PARK,
            adaptive: false,
        },
    ),
    (
        "cross_shard_mesh_adaptive50",
        Variant::CrossShardMesh {
            spin_before_park: HUB_SPIN_ADAPTIVE,
            adaptive: true,
        },
    ),
    (
        "cross_shard_mesh_spin50",
        Variant::CrossShardMesh {
            spin_before_park: Duration::from_micros(50),
            adaptive: false,
        },
    ),
    (
        "cross_shard_mesh_spin200",
        Variant::CrossShardMesh {
            spin_before_park: Duration::from_micros(200),
            adaptive: false,
        },
    ),
];

/// How long one run goes on.
#[derive(Clone, Copy)]
struct Limits {
    warm_up: u64,
    round_trips: u64,
    run_limit: Duration,
}

/// The ping side's stopwatch: one call per round trip.
struct Recorder {
    limits: Limits,
    histogram: Histogram<u64>,
    done: u64,
    deadline: Instant,
    timed_out: bool,
}

impl Recorder {
    fn new(limits: Limits) -> Self {
        Self {
            limits,
            histogram: Histogram::new_with_bounds(1, HISTOGRAM_MAX_NS, 3)
                .expect("valid histogram bounds"),
            done: 0,
            deadline: Instant::now() + limits.run_limit,
            timed_out: false,
        }
    }

    /// Records the round trip that began at `start` (unless it is part of
    /// the warm-up); false once the run has recorded enough or is out of time.
    fn record(&mut self, start: Instant) -> bool {
        let now = Instant::now();
        self.done += 1;
        if self.done > self.limits.warm_up {
            let nanos = u64::try_from((now - start).as_nanos()).unwrap_or(u64::MAX);
            self.histogram.saturating_record(nanos.max(1));
        }
        if self.done >= self.limits.warm_up + self.limits.round_trips {
            return false;
        }
        if now >= self.deadline {
            self.timed_out = true;
            return false;
        }
        true
    }
}

/// Runs `ping` (with the recorder) and `pong` on two threads pinned to
/// [`PING_CORE`] and [`PONG_CORE`]; `ping` must make `pong` return.
fn two_threads(
    limits: Limits,
    ping: impl FnOnce(&mut Recorder) + Send,
    pong: impl FnOnce() + Send,
) -> Recorder {
    thread::scope(|scope| {
        let pong = scope.spawn(|| {
            pin_to_core(PONG_CORE);
            pong();
        });
        let ping = scope.spawn(|| {
            pin_to_core(PING_CORE);
            let mut recorder = Recorder::new(limits);
            ping(&mut recorder);
            recorder
        });
        let recorder = ping.join().expect("ping thread panicked");
        pong.join().expect("pong thread panicked");
        recorder
    })
}

/// A counter one thread bumps and the other waits on, alone on its lines.
#[repr(align(128))]
struct Counter(AtomicU32);

impl Counter {
    /// Waits until the counter is no longer `seen` and returns its value,
    /// busy-polling or sleeping in the kernel (`sleep`).
    fn wait_past(&self, seen: u32, sleep: bool) -> u32 {
        loop {
            // Acquire: pairs with `bump`'s Release (the stop flag before it).
            let now = self.0.load(Ordering::Acquire);
            if now != seen {
                return now;
            }
            if sleep {
                // Returns at once (EAGAIN) if the counter no longer holds
                // `seen`; errors (EINTR) just loop.
                futex(&self.0, libc::FUTEX_WAIT, seen);
            } else {
                spin_loop();
            }
        }
    }

    /// Bumps the counter and, when the other side may sleep, wakes it.
    fn bump(&self, sleep: bool) {
        self.0.fetch_add(1, Ordering::Release);
        if sleep {
            futex(&self.0, libc::FUTEX_WAKE, 1);
        }
    }
}

/// `futex(2)` on `word`, process-private, without a timeout. The result is
/// not looked at: every caller re-checks the word.
fn futex(word: &AtomicU32, operation: libc::c_int, value: u32) {
    // SAFETY: the pointer is to a live, aligned u32 for the whole call;
    // FUTEX_WAIT only reads it, FUTEX_WAKE does not touch it, and neither
    // reads the null timeout (no timeout for WAIT, unused by WAKE).
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            operation | libc::FUTEX_PRIVATE_FLAG,
            value,
            std::ptr::null::<libc::timespec>(),
        )
    };
}

/// `spin` (`sleep` false) or `futex` (`sleep` true).
fn counters(limits: Limits, sleep: bool) -> Recorder {
    let (to_pong, to_ping) = (Counter(AtomicU32::new(0)), Counter(AtomicU32::new(0)));
    let stop = AtomicBool::new(false);
    two_threads(
        limits,
        |recorder| {
            let mut seen = 0;
            loop {
                let start = Instant::now();
                to_pong.bump(sleep);
                seen = to_ping.wait_past(seen, sleep);
                if !recorder.record(start) {
                    break;
                }
            }
            // Relaxed: `bump`'s Release store publishes it.
            stop.store(true, Ordering::Relaxed);
            to_pong.bump(sleep);
        },
        || {
            let mut seen = 0;
            loop {
                seen = to_pong.wait_past(seen, sleep);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                to_ping.bump(sleep);
            }
        },
    )
}

/// A blocking eventfd: `read` sleeps until the other side writes.
struct EventFd(OwnedFd);

impl EventFd {
    fn new() -> Self {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new
        // file descriptor that nothing else owns.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is open and ours alone (see above).
        Self(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn write(&self, value: u64) {
        // SAFETY: writes 8 bytes from a live u64 to an open eventfd.
        let written = unsafe {
            libc::write(
                self.0.as_raw_fd(),
                (&value as *const u64).cast(),
                size_of::<u64>(),
            )
        };
        assert_eq!(
            written,
            8,
            "eventfd write: {}",
            std::io::Error::last_os_error()
        );
    }

    fn read(&self) -> u64 {
        loop {
            let mut value = 0u64;
            // SAFETY: reads at most 8 bytes into a live u64 from an open eventfd.
            let read = unsafe {
                libc::read(
                    self.0.as_raw_fd(),
                    (&mut value as *mut u64).cast(),
                    size_of::<u64>(),
                )
            };
            if read == 8 {
                return value;
            }
            let error = std::io::Error::last_os_error();
            assert_eq!(
                error.kind(),
                std::io::ErrorKind::Interrupted,
                "eventfd read: {error}"
            );
        }
    }
}

/// What the ping side writes into the pong side's eventfd: a ping, or stop.
/// Only one write is ever outstanding, so a read returns exactly one of them.
const EVENTFD_PING: u64 = 1;
const EVENTFD_STOP: u64 = 2;

/// `membarrier(2)` commands (`linux/membarrier.h`).
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

fn membarrier(command: libc::c_int) {
    // SAFETY: membarrier takes no pointers.
    let result = unsafe { libc::syscall(libc::SYS_membarrier, command, 0) };
    assert!(
        result >= 0,
        "membarrier: {}",
        std::io::Error::last_os_error()
    );
}

/// `eventfd`, or (`barrier`) `eventfd_membarrier`.
fn eventfds(limits: Limits, barrier: bool) -> Recorder {
    if barrier {
        membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED);
    }
    let before_sleep = || {
        if barrier {
            membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
        }
    };
    let (to_pong, to_ping) = (EventFd::new(), EventFd::new());
    two_threads(
        limits,
        |recorder| {
            loop {
                let start = Instant::now();
                to_pong.write(EVENTFD_PING);
                before_sleep();
                assert_eq!(to_ping.read(), EVENTFD_PING);
                if !recorder.record(start) {
                    break;
                }
            }
            to_pong.write(EVENTFD_STOP);
        },
        || loop {
            before_sleep();
            if to_pong.read() != EVENTFD_PING {
                break;
            }
            to_ping.write(EVENTFD_PING);
        },
    )
}

/// The hub's preempt timer, unless `HOP_PREEMPT_TIMER_US` says otherwise
/// (to see what the timer itself costs a hop).
fn preempt_timer() -> Duration {
    let micros = HUB_PREEMPT_TIMER.as_micros() as u64;
    Duration::from_micros(env_u64("HOP_PREEMPT_TIMER_US", micros))
}

/// An executor built as `Hub::start` builds a shard's (`preempt_timer`).
fn hub_executor(core: usize, name: &str, spin_before_park: Duration) -> LocalExecutorBuilder {
    LocalExecutorBuilder::new(Placement::Fixed(core))
        .name(name)
        .io_memory(HUB_IO_MEMORY_BYTES)
        .spin_before_park(spin_before_park)
        .preempt_timer(preempt_timer())
}

/// Sends `value` as the hub's forwarder does: stage, publish, and wait for
/// room only when the ring is full.
async fn forward(producer: &mut Producer<u64>, value: u64) {
    match producer.try_stage(value) {
        Ok(()) => {}
        Err(TrySendError::Full(value)) => {
            producer.publish();
            producer.send(value).await.expect("the other side is gone");
        }
        Err(TrySendError::Closed(_)) => panic!("the other side is gone"),
    }
    producer.publish();
}

/// Receives as the hub's mesh consumer does; `None` once the ring is closed.
async fn receive(consumer: &mut Consumer<u64>) -> Option<u64> {
    let mut last = None;
    let received = consumer
        .recv_batch(HUB_MESH_BATCH_MAX, |value| last = Some(value))
        .await;
    glommio::yield_if_needed().await;
    match received {
        0 => None,
        1 => last,
        more => panic!("{more} items in a ping-pong"),
    }
}

/// Adaptive spinning as the hub's driver applies it: no spinning until
/// the first item crosses (`run_shard`), then after each item moved across
/// the executor may spin before it sleeps for `HUB_SPIN_RECENT` from now
/// (`Context::cross_shard_traffic`).
#[derive(Clone, Copy)]
struct Spinning {
    adaptive: bool,
}

impl Spinning {
    fn new(adaptive: bool) -> Spinning {
        if adaptive {
            glommio::executor().spin_before_park_until(Some(Instant::now()));
        }
        Spinning { adaptive }
    }

    fn traffic(self) {
        if self.adaptive {
            glommio::executor().spin_before_park_until(Some(Instant::now() + HUB_SPIN_RECENT));
        }
    }
}

async fn mesh_ping(
    recorder: &mut Recorder,
    mut to_pong: Producer<u64>,
    mut from_pong: Consumer<u64>,
    adaptive: bool,
) {
    let spinning = Spinning::new(adaptive);
    let mut value = 0;
    loop {
        let start = Instant::now();
        forward(&mut to_pong, value).await;
        spinning.traffic();
        assert_eq!(receive(&mut from_pong).await, Some(value));
        spinning.traffic();
        value += 1;
        if !recorder.record(start) {
            break;
        }
    }
    // Dropping `to_pong` closes the ring: the pong side ends.
}

async fn mesh_pong(mut to_ping: Producer<u64>, mut from_ping: Consumer<u64>, adaptive: bool) {
    let spinning = Spinning::new(adaptive);
    while let Some(value) = receive(&mut from_ping).await {
        spinning.traffic();
        forward(&mut to_ping, value).await;
        spinning.traffic();
    }
}

/// Two pairs of mesh ring ends: (to pong, from ping) and (to ping, from pong).
type MeshPairs = (
    (Producer<u64>, Consumer<u64>),
    (Producer<u64>, Consumer<u64>),
);

fn mesh_pairs() -> MeshPairs {
    let (to_pong, from_ping) = relayhub_mesh::channel(HUB_RING_SLOTS);
    let (to_ping, from_pong) = relayhub_mesh::channel(HUB_RING_SLOTS);
    ((to_pong, from_pong), (to_ping, from_ping))
}

fn cross_shard_mesh(limits: Limits, spin_before_park: Duration, adaptive: bool) -> Recorder {
    let ((to_pong, from_pong), (to_ping, from_ping)) = mesh_pairs();
    let pong = hub_executor(PONG_CORE, "hop-pong", spin_before_park)
        .spawn(move || mesh_pong(to_ping, from_ping, adaptive))
        .expect("pong executor");
    let ping = hub_executor(PING_CORE, "hop-ping", spin_before_park)
        .spawn(move || async move {
            let mut recorder = Recorder::new(limits);
            mesh_ping(&mut recorder, to_pong, from_pong, adaptive).await;
            recorder
        })
        .expect("ping executor");
    let recorder = ping.join().expect("ping executor failed");
    pong.join().expect("pong executor failed");
    recorder
}

fn same_shard_mesh(limits: Limits) -> Recorder {
    let ((to_pong, from_pong), (to_ping, from_ping)) = mesh_pairs();
    hub_executor(PING_CORE, "hop-shard", HUB_SPIN_BEFORE_PARK)
        .spawn(move || async move {
            let pong = glommio::spawn_local(mesh_pong(to_ping, from_ping, false));
            let mut recorder = Recorder::new(limits);
            mesh_ping(&mut recorder, to_pong, from_pong, false).await;
            pong.await;
            recorder
        })
        .expect("executor")
        .join()
        .expect("executor failed")
}

fn same_shard_local_channel(limits: Limits) -> Recorder {
    hub_executor(PING_CORE, "hop-shard", HUB_SPIN_BEFORE_PARK)
        .spawn(move || async move {
            let (to_pong, from_ping) = local_channel::new_bounded::<u64>(1);
            let (to_ping, from_pong) = local_channel::new_bounded::<u64>(1);
            let pong = glommio::spawn_local(async move {
                while let Some(value) = from_ping.recv().await {
                    to_ping.send(value).await.expect("ping task gone");
                }
            });
            let mut recorder = Recorder::new(limits);
            let mut value = 0;
            loop {
                let start = Instant::now();
                to_pong.send(value).await.expect("pong task gone");
                assert_eq!(from_pong.recv().await, Some(value));
                value += 1;
                if !recorder.record(start) {
                    break;
                }
            }
            drop(to_pong);
            pong.await;
            recorder
        })
        .expect("executor")
        .join()
        .expect("executor failed")
}

fn run(variant: Variant, limits: Limits) -> Recorder {
    match variant {
        Variant::Spin => counters(limits, false),
        Variant::Futex => counters(limits, true),
        Variant::Eventfd => eventfds(limits, false),
        Variant::EventfdMembarrier => eventfds(limits, true),
        Variant::SameShardLocalChannel => same_shard_local_channel(limits),
        Variant::SameShardMesh => same_shard_mesh(limits),
        Variant::CrossShardMesh {
            spin_before_park,
            adaptive,
        } => cross_shard_mesh(limits, spin_before_park, adaptive),
    }
}

/// The percentiles reported, with their column names.
const QUANTILES: [(&str, f64); 4] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p99", 0.99),
    ("p99.9", 0.999),
];

/// One run's outcome: round trips recorded, the percentiles and the max (ns).
struct Outcome {
    recorded: u64,
    timed_out: bool,
    values: Vec<u64>,
}

impl Outcome {
    fn of(recorder: &Recorder) -> Self {
        let histogram = &recorder.histogram;
        let mut values: Vec<u64> = QUANTILES
            .iter()
            .map(|&(_, quantile)| histogram.value_at_quantile(quantile))
            .collect();
        values.push(histogram.max());
        Self {
            recorded: histogram.len(),
            timed_out: recorder.timed_out,
            values,
        }
    }
}

/// Nanoseconds as microseconds, with two significant decimals below 10 us.
fn micros(nanos: u64) -> String {
    let micros = nanos as f64 / 1_000.0;
    match micros {
        m if m < 10.0 => format!("{m:.2}"),
        m if m < 100.0 => format!("{m:.1}"),
        m => format!("{m:.0}"),
    }
}

/// The middle of `values` (the upper middle for an even count), and the range.
fn median_and_range(mut values: Vec<u64>) -> (u64, u64, u64) {
    values.sort_unstable();
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "?".into())
}

fn main() {
    let limits = Limits {
        warm_up: env_u64("HOP_WARM_UP", WARM_UP_DEFAULT),
        round_trips: env_u64("HOP_ROUND_TRIPS", ROUND_TRIPS_DEFAULT).max(1),
        run_limit: Duration::from_secs(env_u64("HOP_RUN_LIMIT_S", RUN_LIMIT_S_DEFAULT)),
    };
    let rounds = env_u64("HOP_ROUNDS", ROUNDS_DEFAULT).max(1) as usize;
    // cargo passes `--bench`; every other word selects variants by name:
    // the variant of that name, or else every variant whose name contains it.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let selects = |name: &str, filter: &str| match VARIANTS.iter().any(|(n, _)| *n == filter) {
        true => name == filter,
        false => name.contains(filter),
    };
    let variants: Vec<(&str, Variant)> = VARIANTS
        .into_iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| selects(name, f)))
        .collect();
    assert!(!variants.is_empty(), "no variant matches {filters:?}");

    let runs = (rounds * variants.len()) as u32;
    let bound = (limits.run_limit + WATCHDOG_MARGIN) * runs + WATCHDOG_MARGIN;
    thread::spawn(move || {
        thread::sleep(bound);
        eprintln!("hop: still running after {bound:?}, giving up");
        std::process::exit(2);
    });

    println!(
        "hop: {} recorded round trips per run after {} unrecorded, at most {:?} a run, \
         {rounds} rounds, ping on core {PING_CORE}, pong on core {PONG_CORE}",
        limits.round_trips, limits.warm_up, limits.run_limit
    );
    let mut outcomes: Vec<Vec<Outcome>> = variants.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        println!("round {round} (load average {})", load_average());
        for (index, &(name, variant)) in variants.iter().enumerate() {
            let outcome = Outcome::of(&run(variant, limits));
            let columns: Vec<String> = QUANTILES
                .iter()
                .map(|(column, _)| *column)
                .chain(["max"])
                .zip(&outcome.values)
                .map(|(column, &value)| format!("{column} {}", micros(value)))
                .collect();
            println!(
                "  {name:<26} n={:<7}{} us: {}",
                outcome.recorded,
                if outcome.timed_out {
                    " (time limit)"
                } else {
                    ""
                },
                columns.join(", ")
            );
            outcomes[index].push(outcome);
        }
    }

    println!();
    println!("Round-trip time in us: median of {rounds} rounds (min-max)");
    println!();
    let header: Vec<&str> = QUANTILES.iter().map(|(column, _)| *column).collect();
    println!("| variant | round trips | {} | max |", header.join(" | "));
    println!("|---|---:|{}---:|", "---:|".repeat(header.len()));
    for (&(name, _), outcomes) in variants.iter().zip(&outcomes) {
        let (_, least, most) = median_and_range(outcomes.iter().map(|o| o.recorded).collect());
        let recorded = match least == most {
            true => format!("{most} x{}", outcomes.len()),
            false => format!("{least}-{most} x{}", outcomes.len()),
        };
        let cells: Vec<String> = (0..=QUANTILES.len())
            .map(|column| {
                let (median, low, high) =
                    median_and_range(outcomes.iter().map(|o| o.values[column]).collect());
                format!("{} ({}-{})", micros(median), micros(low), micros(high))
            })
            .collect();
        println!("| {name} | {recorded} | {} |", cells.join(" | "));
    }
}
