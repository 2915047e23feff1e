//! Memory is bounded whatever clients send: floods of 1 MiB relays to
//! receivers that never read and to ids nobody holds keep the hub within
//! the bound its flags imply, nothing is dropped silently, bystanders are
//! still served; the default outbound limit carries 1 MiB fan-in; flags out
//! of bounds are refused at start-up; one pipelining client cannot stall
//! its shard.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use common::*;
use relayhub_client::{Client, ClientError, Event};
use relayhub_protocol::{ErrorCode, RelayRef, BODY_BYTES_MAX, DECODER_BYTES_MAX, FRAME_BYTES_MAX};
use relayhub_server::{
    config::OUTBOUND_BYTES_MIN, ids::owner, shard::SHARD_READ_BYTES, startup::IO_MEMORY_BYTES,
    Config, Hub, StartError,
};

const MIB: f64 = (1 << 20) as f64;

/// The tests that load the machine run one at a time (the others share it):
/// their latencies mean something only without each other.
static MACHINE: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    MACHINE
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    MACHINE
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Send buffer of a flooding socket: the kernel keeps at most about this
/// much of a flood the hub has not read yet (it doubles the value), so the
/// backlog left when the flood stops stays small.
const FLOOD_SNDBUF_BYTES: libc::c_int = 128 << 10;

/// What a flooder's reader saw: each error with when it came, and anything
/// else (a failure).
#[derive(Default)]
struct Outcomes {
    errors: Vec<(ErrorCode, u64, u64, Instant)>,
    unexpected: Vec<String>,
}

/// A flooder on a bare socket: `sent` counts relays written whole.
struct Flooder {
    user: u64,
    to: u64,
    known: bool,
    outcomes: Arc<Mutex<Outcomes>>,
    writer: Option<thread::JoinHandle<u64>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Flooder {
    /// Relays 1 MiB bodies from `client` to `to` as fast as TCP lets it
    /// until `until` after `start`; each body starts with its request id.
    fn start(
        client: RawClient,
        user: u64,
        to: u64,
        known: bool,
        start: Instant,
        until: Duration,
        done: Arc<AtomicBool>,
    ) -> Flooder {
        let fd = client.stream.as_raw_fd();
        // SAFETY: setsockopt on the open socket `client` owns, with a
        // pointer to a c_int and its size.
        let set = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&FLOOD_SNDBUF_BYTES as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0, "SO_SNDBUF");
        let mut stream = client.stream.try_clone().unwrap();
        let writer = thread::spawn(move || {
            use std::io::Write;
            let mut body = vec![0x5a; BODY_BYTES_MAX];
            let mut sent = 0u64;
            while start.elapsed() < until {
                let request = sent + 1;
                body[..8].copy_from_slice(&request.to_le_bytes());
                let frame = frame_bytes(&RelayRef {
                    request,
                    receivers: &[to],
                    body: &body,
                });
                stream.write_all(&frame).expect("the hub takes the flood");
                sent = request;
            }
            sent
        });
        let outcomes = Arc::new(Mutex::new(Outcomes::default()));
        let seen = outcomes.clone();
        let mut client = client;
        let reader = thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                let read = client.next(Duration::from_millis(50));
                let mut seen = seen.lock().unwrap();
                match read {
                    RawRead::Timeout => {}
                    RawRead::Frame(frame) => match error_fields(&frame) {
                        Some((code, request, detail)) if !code.closes_connection() => {
                            seen.errors.push((code, request, detail, Instant::now()))
                        }
                        _ => seen.unexpected.push(format!("{frame:?}")),
                    },
                    other => {
                        seen.unexpected.push(format!("{other:?}"));
                        return;
                    }
                }
            }
        });
        Flooder {
            user,
            to,
            known,
            outcomes,
            writer: Some(writer),
            reader: Some(reader),
        }
    }
}

/// Round trips of one bystander pair on one shard until `stop(round)`: an
/// Echo, and a relay there and back. Returns (echo, relay) times.
fn round_trips(
    a: &mut Client,
    b: &mut Client,
    stop: impl Fn(usize) -> bool,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut echoes, mut relays) = (Vec::new(), Vec::new());
    let mut round = 0;
    while !stop(round) {
        let started = Instant::now();
        assert_eq!(&a.echo(b"ping").expect("bystander echo")[..], b"ping");
        echoes.push(started.elapsed());
        let started = Instant::now();
        a.relay(&[b.user_id()], b"there").expect("bystander relay");
        expect_deliver(b, a.user_id(), b"there");
        b.relay(&[a.user_id()], b"back").expect("bystander relay");
        expect_deliver(a, b.user_id(), b"back");
        relays.push(started.elapsed());
        round += 1;
        thread::sleep(Duration::from_millis(5));
    }
    (echoes, relays)
}

fn summary(samples: &mut [Duration]) -> String {
    format!(
        "p50 {:?} p99 {:?} max {:?} ({} samples)",
        percentile(samples, 50),
        percentile(samples, 99),
        percentile(samples, 100),
        samples.len()
    )
}

/// (a) and (b): a 2-shard hub with the smallest outbound limit and a small
/// mesh budget; 10 senders flood 1 MiB relays to receivers on the other
/// shard that never read, 10 more flood ids nobody holds on the other
/// shard, for 3 s. The hub runs as a child process (the test's own buffers
/// do not count) and must stay under the memory bound of its flags; every
/// relay gets exactly one outcome (a delivery or an error); ids nobody
/// holds are reported at once to every flooder; a bystander pair on each
/// shard keeps its round trips short.
///
/// Measured at 753c40a on the shared 2-core VM (load 2-9), debug build:
/// RSS 27-32 MiB at start-up, at most 74-81 MiB, against a bound of
/// 150-154 MiB; 126-258 relays in 3 s (a debug hub decodes a 1 MiB relay in
/// about 12 ms; every relay has its outcome 1.5-4 s after the flood). The
/// flooders are not served fairly: one or two per shard get 13-70 relays
/// through and their first error within 0.5-1.8 s, the others only their
/// first 4-8 relays and their first error 4-6.8 s after the flood began,
/// after it ended: this test fails there. (A release hub: about 900
/// relays, one sender per shard served, the other nine first answered
/// 3.1-3.4 s in.) Bystanders, p99 before / during the flood: echo
/// 0.4-32 ms / 150-630 ms, relay there and back 0.3-1.4 ms / 0.44-1.33 s
/// (release hub: 46-114 ms and 94-257 ms during).
#[test]
fn memory_stays_bounded_under_a_flood_of_large_relays_and_bystanders_are_served() {
    let _alone = alone();
    const SHARDS: usize = 2;
    const SLOW_PER_SHARD: usize = 5;
    const UNKNOWN_PER_SHARD: usize = 5;
    const FLOODERS_PER_SHARD: usize = SLOW_PER_SHARD + UNKNOWN_PER_SHARD;
    const FLOOD: Duration = Duration::from_secs(3);
    const RING_SLOTS: usize = 64;
    // Four maximal relays per outbox and ring: small, and the mesh still
    // drains what the sockets hold when the flood stops in a few seconds
    // in a debug build (with MESH_BYTES_MIN it crosses one relay at a time).
    const MESH_BYTES: usize = 4 << 20;
    let (outbound, mesh, slots) = (
        OUTBOUND_BYTES_MIN.to_string(),
        MESH_BYTES.to_string(),
        RING_SLOTS.to_string(),
    );
    // A receiver cut off keeps its queue until it reads it at the end (the
    // default 2 s flush deadline would drop it: allowed, at most once, but
    // then "an outcome for every relay" could not be checked).
    let hub = HubProcess::start(&[
        "--shards",
        "2",
        "--outbound-bytes-max",
        &outbound,
        "--mesh-bytes-max",
        &mesh,
        "--mesh-ring-slots",
        &slots,
        "--close-flush-ms",
        "30000",
    ]);
    let rss_start = hub.rss_bytes();

    // Per shard: receivers and 2 bystanders (client library), flooders on
    // bare sockets.
    let mut groups = clients_per_shard_at(hub.addr, SHARDS, SLOW_PER_SHARD + 2);
    let mut raw: Vec<Vec<(RawClient, u64)>> = (0..SHARDS).map(|_| Vec::new()).collect();
    while raw.iter().any(|group| group.len() < FLOODERS_PER_SHARD) {
        let (client, user) = RawClient::welcomed(hub.addr);
        let group = &mut raw[owner(user, SHARDS)];
        if group.len() < FLOODERS_PER_SHARD {
            group.push((client, user));
        }
    }
    let connections = SHARDS * (SLOW_PER_SHARD + 2 + FLOODERS_PER_SHARD);
    let mut bystanders: Vec<(Client, Client)> = Vec::new();
    let mut receivers: Vec<Vec<Client>> = Vec::new();
    for group in &mut groups {
        let a = group.pop().unwrap();
        let b = group.pop().unwrap();
        bystanders.push((a, b));
        receivers.push(std::mem::take(group));
    }

    // The bystanders before the flood, and what one 1 MiB request costs
    // this build of the hub (decoding dominates; the client decodes the
    // reply at the same cost): half a 1 MiB echo round trip.
    let mut baseline = Vec::new();
    let mut large_request = Duration::ZERO;
    for (a, b) in &mut bystanders {
        baseline.push(round_trips(a, b, |round| round >= 100));
        let body = vec![1u8; BODY_BYTES_MAX];
        for _ in 0..3 {
            let started = Instant::now();
            assert_eq!(a.echo(&body).expect("a 1 MiB echo").len(), BODY_BYTES_MAX);
            large_request = large_request.max(started.elapsed() / 2);
        }
    }

    // The memory bound (docs/operations.md, "Memory bound"):
    //   fixed: RSS at start-up + 32 MiB for the allocator and the kernel
    //   + shards * (SHARD_READ_BYTES + IO_MEMORY_BYTES)
    //   + shards * (shards - 1) * (2 * mesh_bytes_max + FRAME_BYTES_MAX + ring_slots * 64)
    //   + connections * (DECODER_BYTES_MAX + outbound_bytes_max + 4 KiB)
    let bound = rss_start as usize
        + (32 << 20)
        + SHARDS * (SHARD_READ_BYTES + IO_MEMORY_BYTES)
        + SHARDS * (SHARDS - 1) * (2 * MESH_BYTES + FRAME_BYTES_MAX + RING_SLOTS * 64)
        + connections * (DECODER_BYTES_MAX + OUTBOUND_BYTES_MIN + (4 << 10));

    let rss_max = Arc::new(AtomicU64::new(rss_start));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (rss_max, sampling, pid) = (rss_max.clone(), sampling.clone(), hub.pid());
        thread::spawn(move || {
            while sampling.load(Ordering::Acquire) {
                rss_max.fetch_max(rss_bytes_of(pid), Ordering::AcqRel);
                thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // The flood: flooders on each shard to receivers, and to unknown ids,
    // owned by the other shard.
    let done = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut flooders = Vec::new();
    for (shard, group) in raw.into_iter().enumerate() {
        let other = 1 - shard;
        let known = receivers[other].iter().map(|r| (r.user_id(), true));
        let unknown =
            (0..UNKNOWN_PER_SHARD as u64).map(|i| ((1 << 40) + 2 * i + other as u64, false));
        for ((client, user), (to, known)) in group.into_iter().zip(known.chain(unknown)) {
            assert_eq!(owner(to, SHARDS), other);
            flooders.push(Flooder::start(
                client,
                user,
                to,
                known,
                start,
                FLOOD,
                done.clone(),
            ));
        }
    }
    let during: Vec<_> = bystanders
        .into_iter()
        .map(|(mut a, mut b)| {
            thread::spawn(move || {
                let times = round_trips(&mut a, &mut b, |_| start.elapsed() >= FLOOD);
                (times, a, b)
            })
        })
        .collect();
    let sent: Vec<u64> = flooders
        .iter_mut()
        .map(|f| f.writer.take().unwrap().join().expect("flooder"))
        .collect();
    let during: Vec<_> = during
        .into_iter()
        .map(|t| t.join().expect("bystander"))
        .collect();

    // The receivers read at last, until every relay of their sender has an
    // outcome: delivered here, or an error at the sender (ReceiverDropped
    // once it was cut off, then UnknownReceiver). The hub is still working
    // through what the sockets hold.
    let mut delivered: HashMap<u64, Vec<u64>> = HashMap::new(); // sender -> request ids
    let mut closed_early = BTreeSet::new(); // receivers that read their SlowConsumer here
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    for receiver in receivers.iter_mut().flatten() {
        let me = receiver.user_id();
        let index = flooders
            .iter()
            .position(|f| f.to == me)
            .expect("its flooder");
        let flooder = &flooders[index];
        let mine = delivered.entry(flooder.user).or_default();
        let mut closed = false;
        while mine.len() + flooder.outcomes.lock().unwrap().errors.len() < sent[index] as usize
            && Instant::now() < drain_deadline
        {
            if closed {
                thread::sleep(Duration::from_millis(10)); // Errors on their way.
                continue;
            }
            match receiver.recv_timeout(Duration::from_millis(50)) {
                Ok(Some(Event::Deliver { from, body })) => {
                    assert_eq!((from, body.len()), (flooder.user, BODY_BYTES_MAX));
                    mine.push(u64::from_le_bytes(body[..8].try_into().unwrap()));
                }
                Ok(None) => {}
                Err(ClientError::Hub(error)) => {
                    assert_eq!(
                        (error.code, error.detail),
                        (ErrorCode::SlowConsumer, OUTBOUND_BYTES_MIN as u64)
                    );
                    closed = true;
                    closed_early.insert(me);
                }
                other => panic!("receiver {me}: {other:?}"),
            }
        }
    }
    // Errors about ids on the other shard come back through the mesh.
    for (flooder, &sent) in flooders.iter().zip(&sent) {
        let mine = delivered.get(&flooder.user).map_or(0, Vec::len);
        while mine + flooder.outcomes.lock().unwrap().errors.len() < sent as usize
            && Instant::now() < drain_deadline
        {
            thread::sleep(Duration::from_millis(10));
        }
    }
    let settled = start.elapsed();
    sampling.store(false, Ordering::Release);
    sampler.join().unwrap();
    let rss_max = rss_max.load(Ordering::Acquire) as usize;

    // Everything measured; now the report, then the checks.
    let total: u64 = sent.iter().sum();
    let first_errors: Vec<(u64, bool, u64, Option<Duration>)> = flooders
        .iter()
        .zip(&sent)
        .map(|(f, &sent)| {
            let first = f.outcomes.lock().unwrap().errors.iter().map(|e| e.3).min();
            (f.user, f.known, sent, first.map(|first| first - start))
        })
        .collect();
    eprintln!(
        "RSS at start-up {:.1} MiB, at most {:.1} MiB; bound {:.1} MiB ({connections} \
         connections); {total} relays of 1 MiB in {FLOOD:?}, all with an outcome after \
         {settled:?}; one 1 MiB request costs the hub about {large_request:?}",
        rss_start as f64 / MIB,
        rss_max as f64 / MIB,
        bound as f64 / MIB,
    );
    eprintln!(
        "per flooder (user, to a receiver?, relays, first error after the flood began): \
         {first_errors:?}"
    );
    let mut latencies = Vec::new();
    for (shard, ((mut echo_before, mut relay_before), ((mut echo, mut relay), _, _))) in
        baseline.into_iter().zip(during).enumerate()
    {
        eprintln!(
            "shard {shard} bystanders: echo before {}, during {}; \
             relay there and back before {}, during {}",
            summary(&mut echo_before),
            summary(&mut echo),
            summary(&mut relay_before),
            summary(&mut relay)
        );
        latencies.push((shard, "echo", 1, percentile(&mut echo, 99)));
        latencies.push((shard, "relay there and back", 2, percentile(&mut relay, 99)));
    }

    assert!(
        rss_max <= bound,
        "the hub reached {:.1} MiB, over its bound of {:.1} MiB",
        rss_max as f64 / MIB,
        bound as f64 / MIB
    );
    let mut cut_off = 0;
    for (flooder, &sent) in flooders.iter().zip(&sent) {
        let from = flooder.user;
        let outcomes = flooder.outcomes.lock().unwrap();
        assert!(
            outcomes.unexpected.is_empty(),
            "flooder {from}: {:?}",
            outcomes.unexpected
        );
        let mut seen = BTreeSet::new();
        for &request in delivered.get(&from).into_iter().flatten() {
            assert!(
                seen.insert(request),
                "flooder {from}: relay {request} delivered twice"
            );
        }
        let allowed: &[ErrorCode] = if flooder.known {
            &[ErrorCode::ReceiverDropped, ErrorCode::UnknownReceiver]
        } else {
            &[ErrorCode::UnknownReceiver]
        };
        for &(code, request, detail, _) in &outcomes.errors {
            assert_eq!(
                detail, flooder.to,
                "flooder {from}: an error about another receiver"
            );
            assert!(allowed.contains(&code), "flooder {from}: {code:?}");
            assert!(
                seen.insert(request),
                "flooder {from}: relay {request} has two outcomes"
            );
            cut_off += usize::from(code == ErrorCode::ReceiverDropped);
        }
        assert_eq!(
            seen,
            (1..=sent).collect::<BTreeSet<_>>(),
            "flooder {from} to {}: {sent} relays, {} delivered, {} errors: some relay has no \
             outcome (dropped silently, or not handled within 10 s of the flood's end)",
            flooder.to,
            delivered.get(&from).map_or(0, Vec::len),
            outcomes.errors.len()
        );
    }
    done.store(true, Ordering::Release);
    for flooder in &mut flooders {
        flooder
            .reader
            .take()
            .unwrap()
            .join()
            .expect("flooder reader");
    }
    for &(from, known, _, first) in &first_errors {
        if !known {
            let first = first.expect("an error for every unknown id");
            // Senders towards a shard take turns (FIFO): a flooder's first
            // relay waits behind at most one 1 MiB relay of every other
            // flooder, 20 MiB through a 4 MiB pipeline in a debug build on
            // a shared machine (measured 1.3-1.7 s; unfair scheduling used
            // to make it 0.8-6.8 s).
            assert!(
                first <= Duration::from_secs(3),
                "flooder {from}: its first UnknownReceiver came {first:?} after the flood began"
            );
        }
    }

    // A fair shard makes a bystander wait for at most one large request of
    // each flooder per request of its own: allow 300 ms plus twice that
    // (a shared 2-core machine adds its own scheduling noise).
    for (shard, what, requests, p99) in latencies {
        let allowed =
            Duration::from_millis(300) + large_request * (2 * requests * FLOODERS_PER_SHARD) as u32;
        assert!(
            p99 <= allowed,
            "shard {shard}: bystander {what} p99 {p99:?} during the flood (allowed {allowed:?})"
        );
    }
    // At shutdown every receiver ends with why: SlowConsumer if it was cut
    // off (as its sender learnt from ReceiverDropped), else ShuttingDown.
    hub.request_shutdown();
    let mut closing = BTreeMap::new();
    for receiver in receivers.iter_mut().flatten() {
        if closed_early.contains(&receiver.user_id()) {
            *closing.entry("SlowConsumer".to_string()).or_insert(0usize) += 1;
            continue;
        }
        let code = match receiver.recv_timeout(EVENT_TIMEOUT) {
            Err(ClientError::Hub(error)) => error.code,
            Ok(Some(Event::Deliver { .. })) => panic!("a delivery nobody accounted for"),
            other => panic!("receiver {}: {other:?}", receiver.user_id()),
        };
        *closing.entry(format!("{code:?}")).or_insert(0usize) += 1;
    }
    let slow = closing.get("SlowConsumer").copied().unwrap_or(0);
    assert_eq!(
        slow + closing.get("ShuttingDown").copied().unwrap_or(0),
        2 * SLOW_PER_SHARD
    );
    assert_eq!(
        slow, cut_off,
        "receivers cut off vs ReceiverDropped errors: {closing:?}"
    );
    let (status, log) = hub.wait_exit();
    assert!(status.success(), "exit status {status}");
    let totals = log
        .iter()
        .rev()
        .find(|line| line.contains("final counters") && !line.contains("shard="))
        .expect("final counters");
    assert_eq!(
        counter_in(totals, "slow_consumers"),
        Some(slow as u64),
        "{totals}"
    );
}

/// (c) The default outbound limit carries 1 MiB fan-in: 8 senders, each
/// keeping 4 relays of 1 MiB in flight to receivers picked at random among
/// 8 that read as fast as they can. Nobody is cut off, every relay is
/// delivered exactly once. (Up to 32 MiB can be queued for one receiver;
/// the old 8 MiB default cut such receivers off.) At 753c40a, debug build:
/// 114-298 relays in 3 s, none cut off.
#[test]
fn the_default_outbound_limit_carries_fan_in_of_large_relays() {
    let _alone = alone();
    const SENDERS: usize = 8;
    const RECEIVERS: usize = 8;
    const WINDOW: usize = 4;
    const RUN: Duration = Duration::from_secs(3);
    let hub = start(2, |_| {});
    let senders: Vec<Client> = (0..SENDERS).map(|_| connect(&hub)).collect();
    let receivers: Vec<Client> = (0..RECEIVERS).map(|_| connect(&hub)).collect();
    let receiver_ids: Vec<u64> = receivers.iter().map(|r| r.user_id()).collect();
    let sender_index: HashMap<u64, usize> = senders
        .iter()
        .enumerate()
        .map(|(index, s)| (s.user_id(), index))
        .collect();
    // A delivery read by a receiver frees a slot of its sender's window.
    let (acks, windows): (Vec<_>, Vec<_>) = (0..SENDERS).map(|_| mpsc::channel::<()>()).unzip();

    let receiving = Arc::new(AtomicBool::new(true));
    let receiver_threads: Vec<_> = receivers
        .into_iter()
        .map(|mut receiver| {
            let (acks, sender_index, receiving) =
                (acks.clone(), sender_index.clone(), receiving.clone());
            thread::spawn(move || {
                let mut got: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
                while receiving.load(Ordering::Acquire) {
                    match receiver.recv_timeout(Duration::from_millis(50)) {
                        Ok(Some(Event::Deliver { from, body })) => {
                            assert_eq!(body.len(), BODY_BYTES_MAX);
                            let sender = sender_index[&from];
                            let sequence = u64::from_le_bytes(body[..8].try_into().unwrap());
                            got.entry(sender).or_default().push(sequence);
                            acks[sender].send(()).unwrap();
                        }
                        Ok(None) => {}
                        other => panic!("receiver {}: {other:?}", receiver.user_id()),
                    }
                }
                (receiver.user_id(), got)
            })
        })
        .collect();
    drop(acks);

    let start = Instant::now();
    let sender_threads: Vec<_> = senders
        .into_iter()
        .zip(windows)
        .enumerate()
        .map(|(index, (mut sender, window))| {
            let receiver_ids = receiver_ids.clone();
            thread::spawn(move || {
                let mut random = 0x9e37_79b9_7f4a_7c15u64 ^ (index as u64 + 1);
                let mut body = vec![index as u8; BODY_BYTES_MAX];
                let mut sent: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
                let (mut in_flight, mut sequence) = (0, 0u64);
                while start.elapsed() < RUN {
                    while in_flight < WINDOW {
                        random ^= random << 13;
                        random ^= random >> 7;
                        random ^= random << 17;
                        let to = receiver_ids[(random % receiver_ids.len() as u64) as usize];
                        body[..8].copy_from_slice(&sequence.to_le_bytes());
                        sender.relay(&[to], &body).expect("relay");
                        sent.entry(to).or_default().push(sequence);
                        sequence += 1;
                        in_flight += 1;
                    }
                    window
                        .recv_timeout(EVENT_TIMEOUT)
                        .expect("a delivery within 10 s");
                    in_flight -= 1;
                }
                for _ in 0..in_flight {
                    window
                        .recv_timeout(EVENT_TIMEOUT)
                        .expect("the last deliveries");
                }
                let late = sender
                    .recv_timeout(Duration::from_millis(100))
                    .expect("healthy");
                assert!(late.is_none(), "sender {index} got {late:?}");
                sent
            })
        })
        .collect();
    let sent: Vec<BTreeMap<u64, Vec<u64>>> = sender_threads
        .into_iter()
        .map(|t| t.join().expect("sender"))
        .collect();
    let stats = hub.stats();
    receiving.store(false, Ordering::Release);
    let received: HashMap<u64, BTreeMap<usize, Vec<u64>>> = receiver_threads
        .into_iter()
        .map(|t| t.join().expect("receiver"))
        .collect();

    let total: usize = sent.iter().flat_map(|m| m.values()).map(Vec::len).sum();
    eprintln!("{total} relays of 1 MiB in {:?}: {stats}", start.elapsed());
    assert_eq!(stats.slow_consumers, 0, "a receiver was cut off: {stats}");
    for (index, per_receiver) in sent.iter().enumerate() {
        for (to, sequences) in per_receiver {
            let got = received[to].get(&index).cloned().unwrap_or_default();
            assert_eq!(
                &got, sequences,
                "sender {index} to {to}: exactly once, in order"
            );
        }
    }
    let received_total: usize = received
        .values()
        .flat_map(|m| m.values())
        .map(Vec::len)
        .sum();
    assert_eq!(received_total, total, "no delivery nobody sent");
    assert_eq!(stats.deliveries, total as u64);
    hub.shutdown();
}

/// (d) Flags out of bounds are refused at start-up, naming the flag.
#[test]
fn flags_out_of_bounds_are_refused_naming_the_flag() {
    let _shared = shared();
    type Tweak = fn(&mut Config);
    let cases: [(&str, Tweak); 3] = [
        ("--mesh-ring-slots", |c| c.mesh_ring_slots = 100_000),
        ("--outbound-bytes-max", |c| c.outbound_bytes_max = 1000),
        ("--mesh-bytes-max", |c| c.mesh_bytes_max = 10),
    ];
    for (flag, tweak) in cases {
        let mut config = Config::for_tests(1);
        tweak(&mut config);
        match Hub::start(config) {
            Err(StartError::Config(invalid)) => {
                assert_eq!(invalid.flag, flag);
                let message = StartError::Config(invalid).to_string();
                assert!(message.contains(flag), "{message}");
            }
            Err(other) => panic!("{flag}: expected a Config error, got {other}"),
            Ok(hub) => {
                hub.shutdown();
                panic!("{flag}: the hub started");
            }
        }
    }
}

/// (d) The binary says what is wrong in one line and exits non-zero.
#[test]
fn the_binary_refuses_a_ring_too_large_in_one_line() {
    let _shared = shared();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_relayhub"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--pin",
            "false",
            "--mesh-ring-slots",
            "100000",
        ])
        .env("RELAYHUB_LOG", "info")
        .env("RELAYHUB_STORAGE", "memory")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("relayhub runs");
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("relayhub did not exit on a bad flag");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "exit status {status}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    for part in ["--mesh-ring-slots", "100000", "65536"] {
        assert!(lines[0].contains(part), "{part} in {:?}", lines[0]);
    }
}

/// One client that pipelines small requests and reads every reply must
/// not stall its shard: a bystander's echo stays fast, and the pipelining
/// client (which reads all its replies) gets them all and is not cut off as
/// a slow consumer.
///
/// At 753c40a (debug build): a bystander echo takes 2.0-2.3 s, and the
/// pipelining client gets 6,000-16,000 replies for 0.7-1.1 million echoes
/// in 2 s (one run of 3 s cut it off as a slow consumer): the connection's
/// reader never yields while its socket has data (glommio completes the
/// read at once), so its own writer, in the same task, and every other
/// task of the shard wait.
#[test]
fn a_pipelining_client_does_not_stall_its_shard() {
    let _alone = alone();
    const RUN: Duration = Duration::from_secs(2);
    let hub = start(1, |_| {});
    let flooder = connect(&hub);
    let mut bystander = connect(&hub);
    let (mut out, mut events) = flooder.split();
    let start = Instant::now();
    // Replies read so far: the writer keeps at most PIPELINE echoes
    // unanswered. Without a bound a writer faster than its reader piles up
    // its replies past `--outbound-bytes-max` and is cut off, as documented
    // (docs/protocol.md, Slow consumers); 100,000 echoes keep the socket
    // full all the time, which is what stalled the shard.
    const PIPELINE: u64 = 100_000;
    let read = Arc::new(AtomicU64::new(0));
    let replies_read = read.clone();
    let writer = thread::spawn(move || {
        let mut sent = 0u64;
        while start.elapsed() < RUN {
            if sent - read.load(Ordering::Acquire) >= PIPELINE {
                out.flush().map_err(|error| error.to_string())?;
                thread::yield_now();
                continue;
            }
            if let Err(error) = out.send_echo(b"0123456789abcdef") {
                return Err(format!("after {sent} echoes: {error}"));
            }
            sent += 1;
        }
        out.flush().map_err(|error| error.to_string())?;
        Ok(sent)
    });
    let reader = thread::spawn(move || {
        let mut replies = 0u64;
        loop {
            match events.recv_timeout(Duration::from_millis(500)) {
                Ok(Some(Event::EchoReply { .. })) => {
                    replies += 1;
                    replies_read.store(replies, Ordering::Release);
                }
                Ok(None) if start.elapsed() > RUN => return Ok(replies),
                Ok(None) => {}
                other => return Err(format!("after {replies} replies: {other:?}")),
            }
        }
    });
    let mut times = Vec::new();
    while start.elapsed() < RUN {
        let started = Instant::now();
        bystander.echo(b"ping").expect("bystander echo");
        times.push(started.elapsed());
        thread::sleep(Duration::from_millis(10));
    }
    let sent = writer.join().unwrap();
    let replies = reader.join().unwrap();
    let stats = hub.shutdown();
    eprintln!(
        "bystander echo {}; pipelined {sent:?}, replies {replies:?}; {stats}",
        summary(&mut times)
    );
    let p99 = percentile(&mut times, 99);
    // Measured 4-9 ms here (p99); 500 ms leaves room for a loaded machine
    // and still fails the stall this guards against (2.0-2.3 s).
    assert!(
        p99 < Duration::from_millis(500),
        "bystander echo p99 {p99:?} next to a pipelining client"
    );
    assert_eq!(
        stats.slow_consumers, 0,
        "a client reading its replies was cut off"
    );
    assert_eq!(
        sent.expect("pipelining client"),
        replies.expect("its replies")
    );
}
