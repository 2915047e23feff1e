//! The durable log on disk: a restart (graceful, then SIGKILL under load)
//! loses no message whose `Stored` the sender received; ids and tokens
//! stay valid; a torn tail is dropped and a corrupt middle refuses to start.

mod common;

use std::{
    collections::{HashMap, HashSet},
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use common::v2::error_of;
use common::{start, v2::RawV2};
use relayhub_protocol::{flags, Ack, ErrorCodeV2, HubMessageV2};
use relayhub_server::config::{Fsync, Storage};

/// A data directory of its own, removed at the end.
struct DataDir(PathBuf);

impl DataDir {
    /// Under the temporary directory.
    fn new(name: &str) -> DataDir {
        DataDir::at(std::env::temp_dir().join(DataDir::unique(name)))
    }

    /// Named relative to the working directory, as the default
    /// `relayhub-data/` is.
    fn relative(name: &str) -> DataDir {
        let dir = DataDir::at(PathBuf::from(DataDir::unique(name)));
        assert!(dir.0.is_relative());
        dir
    }

    /// A name no other test of this process uses.
    fn unique(name: &str) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        format!(
            "relayhub-test-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn at(dir: PathBuf) -> DataDir {
        let _ = std::fs::remove_dir_all(&dir);
        DataDir(dir)
    }
}

/// A hub on one shard whose log may hold 2 MiB: a few 64 KiB relays fill
/// it, and acks let it compact.
fn small_log_hub(dir: &Path) -> relayhub_server::Hub {
    start(1, small_log(dir))
}

fn small_log(dir: &Path) -> impl Fn(&mut relayhub_server::Config) + Clone {
    let dir = dir.to_path_buf();
    move |config| {
        config.storage = Storage::Disk;
        config.data_dir = dir.clone();
        config.disk_bytes_max = 2 << 20;
    }
}

/// Relays 64 KiB bodies from `sender` to `churn`, which acks each, until
/// the log has compacted (within 499 relays); ids from `first`.
fn churn_until_compacted(
    hub: &relayhub_server::Hub,
    sender: &mut RawV2,
    churn: &mut RawV2,
    first: u64,
) {
    let body = vec![3u8; 64 << 10];
    let mut id = first;
    while hub.stats().compactions == 0 {
        assert!(
            id < first + 499,
            "no compaction after {} relays: {}",
            id - first,
            hub.stats()
        );
        sender.relay(id, id, &[churn.user], &body);
        stored(sender);
        let HubMessageV2::DeliverV2(deliver) = churn.next() else {
            panic!("expected the churn delivery")
        };
        churn.send(&Ack { upto: deliver.seq });
        id += 1;
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn disk_hub(dir: &Path, shards: usize) -> relayhub_server::Hub {
    disk_hub_syncing(dir, shards, Fsync::Always)
}

fn disk_hub_syncing(dir: &Path, shards: usize, fsync: Fsync) -> relayhub_server::Hub {
    let dir = dir.to_path_buf();
    start(shards, move |config| {
        config.storage = Storage::Disk;
        config.data_dir = dir;
        config.fsync = fsync;
    })
}

fn stored(client: &mut RawV2) -> u64 {
    match client.next() {
        HubMessageV2::Stored(stored) => {
            assert!(!stored.duplicate);
            stored.message_id
        }
        other => panic!("expected Stored, got {other:?}"),
    }
}

/// Offline messages, ids and tokens survive a graceful restart.
#[test]
fn a_restart_keeps_offline_messages_ids_and_tokens() {
    let dir = DataDir::new("restart");
    let (sender_id, sender_token, receiver_id, receiver_token);
    {
        let hub = disk_hub(&dir.0, 2);
        let mut sender = RawV2::durable(hub.local_addr());
        let receiver = RawV2::durable(hub.local_addr());
        (sender_id, sender_token) = (sender.user, sender.token);
        (receiver_id, receiver_token) = (receiver.user, receiver.token);
        drop(receiver);
        for id in 1..=10u64 {
            sender.relay(id, id, &[receiver_id], format!("before {id}").as_bytes());
        }
        for id in 1..=10 {
            assert_eq!(stored(&mut sender), id);
        }
        hub.shutdown();
    }
    let hub = disk_hub(&dir.0, 2);
    let mut receiver = RawV2::resume(hub.local_addr(), receiver_id, receiver_token);
    for seq in 1..=10u64 {
        match receiver.next() {
            HubMessageV2::DeliverV2(deliver) => {
                assert_eq!((deliver.from, deliver.seq), (sender_id, seq));
                assert_eq!(deliver.body, format!("before {seq}").into_bytes());
                // Never sent, but the hub does not log what it sent.
                assert_eq!(deliver.flags, flags::REDELIVERY);
            }
            other => panic!("expected a delivery, got {other:?}"),
        }
    }
    // The sender's session and its retry dedup survived too.
    let mut sender = RawV2::resume(hub.local_addr(), sender_id, sender_token);
    sender.relay(1, 10, &[receiver_id], b"a retry");
    assert!(matches!(sender.next(), HubMessageV2::Stored(s) if s.duplicate));
    // New ids are above every id handed out before.
    let newcomer = RawV2::durable(hub.local_addr());
    assert!(newcomer.user > sender_id.max(receiver_id));
    let stats = hub.stats();
    assert!(stats.recovered_records > 0);
    // Recovered entries kept no bodies: each was read back from the log.
    assert_eq!(stats.bodies_read, 10, "{stats}");
}

/// After a restart every `seq` handed out before it counts as sent
/// (docs/protocol.md, Acks and Redelivery): acking entries the window has
/// not sent yet is valid, and `AckOutOfRange` names the highest of them.
#[test]
fn after_a_restart_every_stored_entry_counts_as_sent() {
    let dir = DataDir::new("restart-acks");
    let (receiver_id, receiver_token);
    {
        let hub = disk_hub(&dir.0, 1);
        let mut sender = RawV2::durable(hub.local_addr());
        let receiver = RawV2::durable(hub.local_addr());
        (receiver_id, receiver_token) = (receiver.user, receiver.token);
        drop(receiver);
        for id in 1..=5u64 {
            sender.relay(id, id, &[receiver_id], b"offline");
            assert_eq!(stored(&mut sender), id);
        }
        hub.shutdown();
    }
    let data_dir = dir.0.clone();
    let hub = start(1, move |config| {
        config.storage = Storage::Disk;
        config.data_dir = data_dir;
        config.inflight_messages_max = 2;
    });
    let mut receiver = RawV2::resume(hub.local_addr(), receiver_id, receiver_token);
    let seqs: Vec<(u64, u32)> = receiver
        .until_echo(1)
        .iter()
        .filter_map(|message| match message {
            HubMessageV2::DeliverV2(deliver) => Some((deliver.seq, deliver.flags)),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, [(1, flags::REDELIVERY), (2, flags::REDELIVERY)]);
    // Seq 5 was never sent, and is acked: it counts as sent.
    receiver.ack(5);
    assert!(receiver.until_echo(2).is_empty(), "nothing left to send");
    receiver.ack(6);
    let closing = receiver.until_closed();
    assert_eq!(
        closing.iter().find_map(error_of),
        Some((ErrorCodeV2::AckOutOfRange, 0, 5)),
        "{closing:?}"
    );
}

/// Every start reserves a block of ids per shard, used or not: after `k`
/// restarts the first ids are above every id handed out before, by at most
/// `k` blocks (`ID_RESERVATION_BLOCK` per shard) each (docs/protocol.md,
/// "User ids").
#[test]
fn each_start_reserves_one_block_of_ids_per_shard() {
    use relayhub_server::ids::ID_RESERVATION_BLOCK;

    let dir = DataDir::new("ids-restarts");
    let shards = 2;
    let before: Vec<u64> = {
        let hub = disk_hub(&dir.0, shards);
        let ids = (0..4).map(|_| common::connect(&hub).user_id()).collect();
        hub.shutdown();
        ids
    };
    let restarts = 3;
    for _ in 1..restarts {
        disk_hub(&dir.0, shards).shutdown();
    }
    let hub = disk_hub(&dir.0, shards);
    let highest = before.iter().max().copied().expect("ids");
    let after: Vec<u64> = (0..4).map(|_| common::connect(&hub).user_id()).collect();
    assert!(
        after.iter().all(|&id| id > highest),
        "{after:?} after {before:?}"
    );
    // The first id of each shard that handed one out is within the bound.
    for shard in 0..shards as u64 {
        let Some(first) = after
            .iter()
            .filter(|&&id| id % shards as u64 == shard)
            .min()
        else {
            continue;
        };
        assert!(
            first - highest <= restarts * ID_RESERVATION_BLOCK * shards as u64,
            "{after:?} after {before:?} and {restarts} restarts"
        );
    }
}

/// Frames a client pipelines right after its `Hello` wait for the welcome,
/// which waits for the log: they are answered after it, not refused with
/// `HelloRequired` (the fuzz harness's log mode found them refused).
#[test]
fn frames_pipelined_after_a_hello_wait_for_the_logged_welcome() {
    use bytes::BytesMut;
    use relayhub_protocol::{encode, preface_for, Echo, Hello, VERSION_2};

    let dir = DataDir::new("pipelined-hello");
    let hub = disk_hub(&dir.0, 1);
    for durable in [true, false] {
        let mut bytes = BytesMut::from(&preface_for(VERSION_2)[..]);
        encode(&Hello::new_session(1, durable), &mut bytes).unwrap();
        encode(
            &Echo {
                request: 2,
                body: b"right behind".to_vec(),
            },
            &mut bytes,
        )
        .unwrap();
        let mut client = RawV2::sending(hub.local_addr(), &bytes);
        match client.next() {
            HubMessageV2::WelcomeV2(welcome) => assert_eq!(welcome.durable, durable),
            other => panic!("durable {durable}: expected the welcome, got {other:?}"),
        }
        match client.next() {
            HubMessageV2::EchoReply(reply) => {
                assert_eq!((reply.request, &reply.body[..]), (2, &b"right behind"[..]))
            }
            other => panic!("durable {durable}: expected the echo, got {other:?}"),
        }
    }
}

/// A resume of an offline session pipelined with an `Ack` and an `Echo`:
/// its inbox, read back from the log, comes right after the welcome and
/// before the echo, and the ack of entries never sent before is in range
/// (docs/protocol.md, "Acks").
#[test]
fn frames_pipelined_after_a_resume_wait_for_the_inbox_read_back() {
    use bytes::BytesMut;
    use relayhub_protocol::{encode, preface_for, Ack, Echo, Hello, VERSION_2};

    let dir = DataDir::new("pipelined-resume");
    let hub = disk_hub(&dir.0, 1);
    let mut sender = RawV2::durable(hub.local_addr());
    let receiver = RawV2::durable(hub.local_addr());
    let (user, token) = (receiver.user, receiver.token);
    drop(receiver);
    for id in 1..=3u64 {
        sender.relay(id, id, &[user], format!("offline {id}").as_bytes());
    }
    for id in 1..=3 {
        assert_eq!(stored(&mut sender), id);
    }
    // Offline and durable: the bodies are in the log only.
    let mut bytes = BytesMut::from(&preface_for(VERSION_2)[..]);
    encode(&Hello::resume(1, user, token), &mut bytes).unwrap();
    encode(&Ack { upto: 3 }, &mut bytes).unwrap();
    let echo = Echo {
        request: 2,
        body: b"right behind".to_vec(),
    };
    encode(&echo, &mut bytes).unwrap();
    let mut client = RawV2::sending(hub.local_addr(), &bytes);
    assert!(matches!(client.next(), HubMessageV2::WelcomeV2(w) if w.resumed));
    for seq in 1..=3u64 {
        match client.next() {
            HubMessageV2::DeliverV2(deliver) => {
                assert_eq!(deliver.seq, seq);
                assert_eq!(deliver.body, format!("offline {seq}").into_bytes());
            }
            other => panic!("expected delivery {seq} before the echo, got {other:?}"),
        }
    }
    assert!(matches!(client.next(), HubMessageV2::EchoReply(r) if r.request == 2));
    assert_eq!(hub.stats().bodies_read, 3);
}

/// A sender that half-closes right after its relays still gets every
/// `Stored` (each waits for the log, and for the other shard's), and its
/// list reply, then a clean end of stream.
#[test]
fn a_half_closed_sender_gets_every_stored_then_a_clean_end() {
    use relayhub_protocol::List;

    let dir = DataDir::new("half-close");
    let hub = disk_hub(&dir.0, 2);
    let mut sender = RawV2::durable_on(hub.local_addr(), 0, 2);
    let near = RawV2::durable_on(hub.local_addr(), 0, 2);
    let far = RawV2::durable_on(hub.local_addr(), 1, 2);
    for id in 1..=20u64 {
        sender.relay(id, id, &[near.user, far.user], b"right before the FIN");
    }
    sender.send(&List {
        request: 21,
        after: 0,
        limit: 0,
    });
    sender.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let rest = sender.until_closed();
    let answered: Vec<u64> = rest
        .iter()
        .map(|message| match message {
            HubMessageV2::Stored(stored) => stored.message_id,
            HubMessageV2::ListReply(reply) => reply.request,
            other => panic!("expected Stored and a list reply only, got {other:?}"),
        })
        .collect();
    let mut sorted = answered.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=21).collect::<Vec<_>>(), "{rest:?}");
    for mut receiver in [near, far] {
        for seq in 1..=20 {
            match receiver.next() {
                HubMessageV2::DeliverV2(deliver) => assert_eq!(deliver.seq, seq),
                other => panic!("expected a delivery, got {other:?}"),
            }
        }
    }
    hub.shutdown();
}

/// While the hub runs, an offline receiver's bodies leave memory once
/// durable and come back from the log on resume, in order, intact; more
/// than its inflight window, so reads follow its acks.
#[test]
fn an_offline_receivers_bodies_come_back_from_the_log() {
    offline_bodies_come_back(Fsync::Always);
}

/// The same with `--fsync never`: records appended through the page cache
/// and read back with O_DIRECT, most of them before writeback.
#[test]
fn offline_bodies_written_through_the_page_cache_come_back() {
    offline_bodies_come_back(Fsync::Never);
}

fn offline_bodies_come_back(fsync: Fsync) {
    let dir = DataDir::new("read-back");
    let hub = disk_hub_syncing(&dir.0, 2, fsync);
    let mut sender = RawV2::durable(hub.local_addr());
    let receiver = RawV2::durable(hub.local_addr());
    let (user, token) = (receiver.user, receiver.token);
    drop(receiver);
    let body = |id: u64| format!("{id:08} ").repeat(1000).into_bytes();
    let count = 300;
    for id in 1..=count {
        sender.relay(id, id, &[user], &body(id));
        assert_eq!(stored(&mut sender), id);
    }
    let mut receiver = RawV2::resume(hub.local_addr(), user, token);
    for seq in 1..=count {
        match receiver.next() {
            HubMessageV2::DeliverV2(deliver) => {
                assert_eq!(deliver.seq, seq);
                assert!(deliver.body == body(seq), "seq {seq}: wrong body");
            }
            other => panic!("expected a delivery, got {other:?}"),
        }
        receiver.send(&Ack { upto: seq });
    }
    let stats = hub.shutdown();
    assert_eq!(stats.bodies_read, count, "{stats}");
    assert_eq!(stats.body_read_errors, 0, "{stats}");
}

/// The `relayhub` binary on a data dir, killed with SIGKILL by the test.
struct Binary(Child, std::net::SocketAddr);

impl Binary {
    fn start(dir: &Path, fsync: &str) -> Binary {
        Binary::start_on(dir, fsync, free_port())
    }

    fn start_on(dir: &Path, fsync: &str, port: u16) -> Binary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_relayhub"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--shards", "2"])
            .args(["--storage", "disk", "--fsync", fsync, "--pin", "false"])
            // The receiver drains only at the end: room for a long campaign.
            .args([
                "--inbox-messages-max",
                "100000000",
                "--inbox-bytes-max",
                "17179869184",
            ])
            .arg("--data-dir")
            .arg(dir)
            .env("RELAYHUB_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stderr = child.stderr.take().unwrap();
        // Its log, line by line, through a channel: a hub that hangs before
        // it listens fails the test in a minute instead of hanging it.
        let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("WARN") || line.contains("ERROR") || line.contains("panicked") {
                    eprintln!("hub: {line}");
                }
                if lines_tx.send(line).is_err() {
                    // Nobody waits any more: keep draining.
                }
            }
        });
        let started = Instant::now();
        loop {
            let left = Duration::from_secs(60).saturating_sub(started.elapsed());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains("relayhub listening") => break,
                Ok(_) => {}
                Err(error) => {
                    let _ = child.kill();
                    panic!(
                        "the hub did not listen within 60 s ({error:?}): {:?}",
                        child.wait()
                    );
                }
            }
        }
        Binary(child, format!("127.0.0.1:{port}").parse().unwrap())
    }

    fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A hub killed right after it started listening still holds its port
/// for a few milliseconds (the kernel tears its io_uring down after the
/// exit); a restart on the same port and data dir at once waits that out
/// and starts (it failed with "already in use" in about half the rounds).
#[test]
fn a_hub_killed_a_moment_ago_is_restarted_on_its_port_and_data_dir() {
    let dir = DataDir::new("restart-at-once");
    let port = free_port();
    for _ in 0..8 {
        Binary::start_on(&dir.0, "always", port).kill();
    }
}

/// A data directory whose `meta` was lost refuses to start rather than
/// take the shard count it is given (ids routed by another count would
/// miss their sessions).
#[test]
fn a_data_directory_without_its_meta_refuses_to_start() {
    let dir = DataDir::new("no-meta");
    disk_hub(&dir.0, 2).shutdown();
    std::fs::remove_file(dir.0.join("meta")).unwrap();
    let mut config = relayhub_server::Config::for_tests(1);
    config.storage = Storage::Disk;
    config.data_dir = dir.0.clone();
    match relayhub_server::Hub::start(config) {
        Err(error) => {
            let message = error.to_string();
            assert!(
                message.contains("2 shard directories but no meta file"),
                "{message}"
            );
        }
        Ok(_) => panic!("a data directory without meta was taken with another shard count"),
    }
}

/// A second hub on a data directory a hub runs on refuses to start (they
/// would write the same logs); once the first has stopped, it starts.
#[test]
fn a_data_directory_takes_one_hub_at_a_time() {
    let dir = DataDir::new("locked");
    let first = disk_hub(&dir.0, 1);
    let mut config = relayhub_server::Config::for_tests(1);
    config.storage = Storage::Disk;
    config.data_dir = dir.0.clone();
    let second = relayhub_server::Hub::start(config);
    match second {
        Err(error) => {
            let message = error.to_string();
            assert!(message.contains("in use by another relayhub"), "{message}");
        }
        Ok(_) => panic!("a second hub opened a data directory in use"),
    }
    first.shutdown();
    disk_hub(&dir.0, 1).shutdown();
}

/// SIGKILL while durable relays flow, several rounds at varied moments:
/// every message whose `Stored` arrived is delivered after the restart, in
/// order per sender, none twice after dedup by seq.
#[test]
fn no_stored_message_is_lost_to_sigkill() {
    sigkill_rounds("always");
}

/// The same with `--fsync never`: a `Stored` waits for the write into the
/// page cache only, which a killed process does not lose.
#[test]
fn no_stored_message_is_lost_to_sigkill_with_fsync_never() {
    sigkill_rounds("never");
}

/// The same with `--fsync interval:5`: page-cache writes, and syncs in a
/// task of their own while appends go on.
#[test]
fn no_stored_message_is_lost_to_sigkill_with_fsync_interval() {
    sigkill_rounds("interval:5");
}

fn sigkill_rounds(fsync: &str) {
    // CI runs 3 rounds; a longer campaign by hand:
    // RELAYHUB_CRASH_ROUNDS=30 cargo test -p relayhub-server --release --test persistence sigkill
    let rounds: u64 = std::env::var("RELAYHUB_CRASH_ROUNDS")
        .ok()
        .and_then(|rounds| rounds.parse().ok())
        .unwrap_or(3);
    const SENDERS: usize = 4;
    let dir = DataDir::new("crash");
    let hub = Binary::start(&dir.0, fsync);
    let receiver = RawV2::durable(hub.1);
    let (receiver_id, token) = (receiver.user, receiver.token);
    drop(receiver);
    let mut senders: Vec<RawV2> = (0..SENDERS).map(|_| RawV2::durable(hub.1)).collect();
    let mut hub = Some(hub);
    // Per sender: message ids whose Stored arrived, and the next id.
    let mut acknowledged: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut next_id: HashMap<u64, u64> = senders.iter().map(|s| (s.user, 1)).collect();
    for round in 0..rounds {
        // Relay from every sender until the kill, reading Stored answers,
        // killing at varied moments.
        let kill_after = Duration::from_millis(150 + 200 * (round % 5) + 37 * round);
        let started = Instant::now();
        let mut in_flight: Vec<Vec<u64>> = vec![Vec::new(); SENDERS];
        while started.elapsed() < kill_after {
            for (index, sender) in senders.iter_mut().enumerate() {
                let id = next_id[&sender.user];
                let body = format!("{}:{id}", sender.user);
                sender.relay(id, id, &[receiver_id], body.as_bytes());
                in_flight[index].push(id);
                *next_id.get_mut(&sender.user).unwrap() += 1;
                if in_flight[index].len() > 8 {
                    let got = stored(sender);
                    assert_eq!(got, in_flight[index].remove(0));
                    acknowledged.entry(sender.user).or_default().push(got);
                }
            }
        }
        hub.take().unwrap().kill();
        let restarted = Binary::start(&dir.0, fsync);
        // Reconnect the senders; retry what had no Stored, same ids.
        for (index, sender) in senders.iter_mut().enumerate() {
            // The token of the sender's latest welcome (rotated on every
            // resume).
            *sender = RawV2::resume(restarted.1, sender.user, sender.token);
            for &id in &in_flight[index] {
                let body = format!("{}:{id}", sender.user);
                sender.relay(id, id, &[receiver_id], body.as_bytes());
            }
            for &id in &in_flight[index] {
                match sender.next() {
                    HubMessageV2::Stored(stored) => {
                        assert_eq!(stored.message_id, id);
                        acknowledged.entry(sender.user).or_default().push(id);
                    }
                    other => panic!("expected Stored, got {other:?}"),
                }
            }
        }
        hub = Some(restarted);
    }
    // Drain the receiver's inbox: every acknowledged message, in order
    // per sender, once after dedup by seq.
    let addr = hub.as_ref().unwrap().1;
    let mut receiver = RawV2::resume(addr, receiver_id, token);
    let total: usize = acknowledged.values().map(Vec::len).sum();
    let mut got: HashMap<u64, Vec<u64>> = HashMap::new();
    // (sender, message id) delivered so far: a long campaign delivers
    // millions, too many for a scan of `got` per delivery.
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut last_seq = 0;
    let mut delivered = 0;
    while delivered < total {
        let Some(message) = receiver.try_next() else {
            let missing: Vec<(u64, usize, usize)> = acknowledged
                .iter()
                .map(|(sender, ids)| (*sender, ids.len(), got.get(sender).map_or(0, Vec::len)))
                .collect();
            panic!("inbox ended after {delivered} of {total} (seq {last_seq}): {missing:?}");
        };
        match message {
            HubMessageV2::DeliverV2(deliver) => {
                assert!(
                    deliver.seq > last_seq,
                    "seq {} after {last_seq}",
                    deliver.seq
                );
                last_seq = deliver.seq;
                let ids = got.entry(deliver.from).or_default();
                // A retry of a message stored before the crash is recognised
                // where it was stored: never in the inbox twice.
                assert!(
                    seen.insert((deliver.from, deliver.message_id)),
                    "message {} from {} stored twice",
                    deliver.message_id,
                    deliver.from
                );
                ids.push(deliver.message_id);
                delivered += 1;
                receiver.send(&Ack { upto: deliver.seq });
            }
            other => panic!("expected a delivery, got {other:?}"),
        }
    }
    eprintln!(
        "--fsync {fsync}, {rounds} SIGKILL rounds: {total} messages acknowledged with Stored, all delivered once, in order"
    );
    for (sender, mut ids) in acknowledged {
        ids.sort_unstable();
        assert_eq!(got[&sender], ids, "sender {sender}: order or loss");
    }
}

/// The newest log file of shard 0 under `dir`.
fn shard_log(dir: &Path) -> PathBuf {
    let shard = dir.join("shard-0");
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&shard)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "rlog"))
        .collect();
    logs.sort();
    logs.pop().expect("a log file")
}

/// Fills a one-shard hub's log with `count` relays to an offline durable
/// receiver; returns the receiver's (user, token).
fn fill(dir: &Path, count: u64, body: &[u8]) -> (u64, [u8; 16]) {
    let hub = disk_hub(dir, 1);
    let mut sender = RawV2::durable(hub.local_addr());
    let receiver = RawV2::durable(hub.local_addr());
    let who = (receiver.user, receiver.token);
    drop(receiver);
    for id in 1..=count {
        sender.relay(id, id, &[who.0], body);
    }
    for _ in 1..=count {
        stored(&mut sender);
    }
    hub.shutdown();
    who
}

/// Bytes of valid records at the start of `file` (up to its zero tail).
fn used_bytes(file: &Path) -> usize {
    let bytes = std::fs::read(file).unwrap();
    bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last + 1)
}

/// Garbage after the last record (a torn last write) is dropped with a log
/// line; everything before it is recovered.
#[test]
fn a_torn_tail_is_dropped_and_the_rest_recovered() {
    let dir = DataDir::new("torn");
    let (user, token) = fill(&dir.0, 5, b"kept");
    let file = shard_log(&dir.0);
    let used = used_bytes(&file);
    // A torn record: a plausible header and half a body.
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[used.next_multiple_of(8)..used.next_multiple_of(8) + 12]
        .copy_from_slice(&[40, 0, 0, 0, 1, 2, 3, 4, 6, 9, 9, 9]);
    std::fs::write(&file, &bytes).unwrap();
    let hub = disk_hub(&dir.0, 1);
    let mut receiver = RawV2::resume(hub.local_addr(), user, token);
    for seq in 1..=5 {
        assert!(
            matches!(receiver.next(), HubMessageV2::DeliverV2(d) if d.seq == seq && d.body == b"kept")
        );
    }
}

/// Why a one-shard hub on the data directory `dir` does not start.
fn start_fails(dir: &Path) -> String {
    let mut config = relayhub_server::Config::for_tests(1);
    config.storage = Storage::Disk;
    config.data_dir = dir.to_path_buf();
    match relayhub_server::Hub::start(config) {
        Ok(_) => panic!("a damaged log was accepted"),
        Err(error) => error.to_string(),
    }
}

/// A flipped bit inside a record with valid records after it stops the hub
/// from starting, with the file and offset named.
#[test]
fn corruption_in_the_middle_refuses_to_start() {
    let dir = DataDir::new("corrupt");
    fill(&dir.0, 20, &[7; 512]);
    let file = shard_log(&dir.0);
    let used = used_bytes(&file);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[used / 2] ^= 0x10;
    std::fs::write(&file, &bytes).unwrap();
    let error = start_fails(&dir.0);
    assert!(
        error.contains("corrupt") && error.contains("rlog"),
        "{error}"
    );
}

/// A compacted generation is the log, as generation 0 is: a bad record
/// after its snapshot stops the start (it once counted as an unfinished
/// compaction: the file was removed and the hub started with an empty
/// log), and a snapshot cut short with no older generation left refuses
/// too. Put back as it was, the log recovers everything.
#[test]
fn a_damaged_compacted_log_refuses_to_start_and_is_never_dropped() {
    let dir = DataDir::new("compacted-damage");
    let config = small_log(&dir.0);
    let (user, token);
    {
        let hub = start(1, config.clone());
        let addr = hub.local_addr();
        let mut sender = RawV2::durable(addr);
        let mut churn = RawV2::durable(addr);
        churn_until_compacted(&hub, &mut sender, &mut churn, 1);
        let receiver = RawV2::durable(addr);
        (user, token) = (receiver.user, receiver.token);
        drop(receiver);
        for id in 1000..1010 {
            sender.relay(id, id, &[user], &[7; 512]);
            stored(&mut sender);
        }
        hub.shutdown();
    }
    let logs = std::fs::read_dir(dir.0.join("shard-0"))
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|e| e == "rlog")
        })
        .count();
    assert_eq!(logs, 1, "the compaction removed generation 0");
    let file = shard_log(&dir.0);
    assert!(!file.ends_with("log-00000000.rlog"), "{}", file.display());
    let pristine = std::fs::read(&file).unwrap();
    let used = used_bytes(&file);

    // A flipped bit in one of the last relays' records, valid ones after it.
    let mut bytes = pristine.clone();
    bytes[used - 2000] ^= 0x10;
    std::fs::write(&file, &bytes).unwrap();
    let error = start_fails(&dir.0);
    assert!(
        error.contains("corrupt") && error.contains("rlog"),
        "{error}"
    );
    assert!(file.exists(), "the damaged generation is kept");

    // The snapshot cut short, nothing older to fall back to.
    std::fs::write(&file, &pristine[..200]).unwrap();
    let error = start_fails(&dir.0);
    assert!(error.contains("unfinished compaction"), "{error}");
    assert!(file.exists(), "the damaged generation is kept");

    // An older generation left behind (its removal failed once): a bad
    // record inside the snapshot, with the relays appended after it, is
    // damage, not an unfinished compaction. Falling back would lose them.
    let older = file.with_file_name("log-00000000.rlog");
    std::fs::write(&older, &pristine[..200]).unwrap();
    let mut bytes = pristine.clone();
    bytes[100] ^= 0x10;
    std::fs::write(&file, &bytes).unwrap();
    let error = start_fails(&dir.0);
    assert!(
        error.contains("corrupt") && error.contains("rlog"),
        "{error}"
    );
    assert!(file.exists() && older.exists(), "both generations are kept");
    std::fs::remove_file(&older).unwrap();

    std::fs::write(&file, &pristine).unwrap();
    let hub = start(1, config);
    let mut receiver = RawV2::resume(hub.local_addr(), user, token);
    for seq in 1..=10 {
        assert!(
            matches!(receiver.next(), HubMessageV2::DeliverV2(d) if d.seq == seq && d.body == [7; 512]),
            "delivery {seq}"
        );
    }
}

/// `meta` records the log format: a directory of the first format (no
/// `format` line) is upgraded at start and its log recovered; one of a
/// newer format than this build writes is refused, files untouched.
#[test]
fn the_data_directory_records_its_log_format() {
    let dir = DataDir::new("format");
    let (user, token) = fill(&dir.0, 3, b"kept");
    let meta = dir.0.join("meta");
    assert_eq!(
        std::fs::read_to_string(&meta).unwrap(),
        "shards=1\nformat=2\n"
    );
    std::fs::write(&meta, "shards=1\n").unwrap();
    {
        let hub = disk_hub(&dir.0, 1);
        assert_eq!(
            std::fs::read_to_string(&meta).unwrap(),
            "shards=1\nformat=2\n"
        );
        let mut receiver = RawV2::resume(hub.local_addr(), user, token);
        assert!(matches!(receiver.next(), HubMessageV2::DeliverV2(d) if d.body == b"kept"));
    }
    std::fs::write(&meta, "shards=1\nformat=3\n").unwrap();
    let error = start_fails(&dir.0);
    assert!(
        error.contains("format 3") && error.contains("newer"),
        "{error}"
    );
    assert_eq!(
        std::fs::read_to_string(&meta).unwrap(),
        "shards=1\nformat=3\n"
    );
}

/// A crash during a compaction leaves the new generation unfinished: it
/// is removed, and the generation before it (still there, as it goes only
/// once the new one is durable) is the log.
#[test]
fn an_unfinished_compaction_falls_back_to_the_generation_before() {
    let dir = DataDir::new("unfinished");
    let (user, token) = fill(&dir.0, 5, b"kept");
    let older = shard_log(&dir.0);
    let newer = older.with_file_name("log-00000001.rlog");
    // What a snapshot write cut short leaves: its first records, no end.
    let snapshot_start = std::fs::read(&older).unwrap()[..64].to_vec();
    std::fs::write(&newer, &snapshot_start).unwrap();
    let hub = disk_hub(&dir.0, 1);
    let mut receiver = RawV2::resume(hub.local_addr(), user, token);
    for seq in 1..=5 {
        assert!(
            matches!(receiver.next(), HubMessageV2::DeliverV2(d) if d.seq == seq && d.body == b"kept"),
            "delivery {seq}"
        );
    }
    assert!(!newer.exists(), "the unfinished generation is removed");
}

/// The unfinished generation is recovered as it is checked (the file is
/// read once); what it rebuilt is forgotten when the start falls back: a
/// session only the unfinished snapshot names does not exist afterwards,
/// and the user ids it named are not reserved.
#[test]
fn a_fallback_forgets_what_the_unfinished_compaction_held() {
    use relayhub_server::store::record::{encode, Record};
    let dir = DataDir::new("unfinished-forgotten");
    let (user, token) = fill(&dir.0, 3, b"kept");
    let older = shard_log(&dir.0);
    let records =
        relayhub_server::store::recovery::scan(&std::fs::read(&older).unwrap(), |_, _, _| {})
            .unwrap()
            .records;
    let phantom = 1 << 40;
    let mut snapshot = bytes::BytesMut::new();
    encode(
        &Record::SessionCreated {
            user: phantom,
            token: [7; 32],
            at_ms: 1,
        },
        &mut snapshot,
    );
    std::fs::write(older.with_file_name("log-00000001.rlog"), &snapshot).unwrap();
    let hub = disk_hub(&dir.0, 1);
    let mut receiver = RawV2::resume(hub.local_addr(), user, token);
    for seq in 1..=3 {
        assert!(
            matches!(receiver.next(), HubMessageV2::DeliverV2(d) if d.seq == seq && d.body == b"kept"),
            "delivery {seq}"
        );
    }
    let newcomer = RawV2::durable(hub.local_addr());
    assert!(
        newcomer.user < phantom,
        "id {} reserved by the unfinished snapshot",
        newcomer.user
    );
    // The gauge is refreshed every second: the sender, the receiver and
    // the newcomer, not the phantom.
    let deadline = Instant::now() + Duration::from_secs(10);
    while hub.stats().sessions_durable < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = hub.stats();
    assert_eq!(stats.sessions_durable, 3, "{stats}");
    // The records read are those of the generation recovered, once.
    assert_eq!(stats.recovered_records, records, "{stats}");
}

/// Past `--disk-bytes-max`, relays to durable sessions get StorageFull while
/// ephemeral traffic flows; acks free the space (compaction) and storing
/// works again.
#[test]
fn a_full_log_refuses_with_storage_full_and_acks_free_it() {
    let dir = DataDir::new("full");
    let hub = small_log_hub(&dir.0);
    let addr = hub.local_addr();
    let mut sender = RawV2::durable(addr);
    let receiver = RawV2::durable(addr);
    let (user, token) = (receiver.user, receiver.token);
    drop(receiver);
    let body = vec![1u8; 64 << 10];
    let mut full_at = None;
    for id in 1..=64u64 {
        sender.relay(id, id, &[user], &body);
        let mut refused = false;
        loop {
            match sender.next() {
                HubMessageV2::Error(error) => {
                    assert_eq!(
                        error.code,
                        relayhub_protocol::ErrorCodeV2::StorageFull.to_wire()
                    );
                    assert_eq!(error.detail, user);
                    refused = true;
                }
                HubMessageV2::Stored(_) => break,
                other => panic!("{other:?}"),
            }
        }
        if refused {
            full_at = Some(id);
            break;
        }
    }
    let full_at = full_at.expect("the 2 MiB limit refuses before 64 x 64 KiB");
    // Ephemeral traffic still flows.
    let mut a = common::connect(&hub);
    let b = common::connect(&hub);
    a.relay(&[b.user_id()], b"still served").unwrap();
    let mut b = b;
    common::expect_deliver(&mut b, a.user_id(), b"still served");
    // The receiver drains and acks: the log compacts and takes relays again.
    let mut receiver = RawV2::resume(addr, user, token);
    let mut last = 0;
    for _ in 1..full_at {
        let HubMessageV2::DeliverV2(deliver) = receiver.next() else {
            panic!("expected a delivery")
        };
        last = deliver.seq;
    }
    receiver.send(&Ack { upto: last });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut id = 1000 + full_at;
    loop {
        assert!(Instant::now() < deadline, "space never came back");
        id += 1;
        sender.relay(id, id, &[user], &body);
        match sender.next() {
            HubMessageV2::Stored(_) => break,
            HubMessageV2::Error(_) => {
                assert!(matches!(sender.next(), HubMessageV2::Stored(_)));
                std::thread::sleep(Duration::from_millis(50));
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(hub.stats().compactions >= 1);
    assert!(hub.stats().storage_full >= 1);
}

/// A relay to several offline durable receivers of one shard survives a
/// compaction and a restart for every one of them (a snapshot once listed
/// later sessions in a record before their own creation record, and their
/// entries were dropped on recovery).
#[test]
fn a_compaction_keeps_fan_out_entries_for_every_receiver() {
    let dir = DataDir::new("compact-fanout");
    let config = small_log(&dir.0);
    let (receivers, tokens);
    {
        let hub = start(1, config.clone());
        let addr = hub.local_addr();
        let mut sender = RawV2::durable(addr);
        let offline: Vec<RawV2> = (0..4).map(|_| RawV2::durable(addr)).collect();
        receivers = offline.iter().map(|r| r.user).collect::<Vec<_>>();
        tokens = offline.iter().map(|r| r.token).collect::<Vec<_>>();
        drop(offline);
        sender.relay(1, 1, &receivers, b"to all four");
        stored(&mut sender);
        // Churn through an acking receiver until the log compacts.
        let mut churn = RawV2::durable(addr);
        churn_until_compacted(&hub, &mut sender, &mut churn, 2);
        hub.shutdown();
    }
    let hub = start(1, config);
    for (user, token) in receivers.into_iter().zip(tokens) {
        let mut receiver = RawV2::resume(hub.local_addr(), user, token);
        match receiver.next() {
            HubMessageV2::DeliverV2(deliver) => assert_eq!(deliver.body, b"to all four"),
            other => panic!("user {user}: expected its delivery, got {other:?}"),
        }
    }
}

/// A data directory given as a relative path (the default is
/// `relayhub-data/`) compacts like an absolute one: a compaction once
/// failed on every attempt there (EBADF opening the shard's directory), so
/// acked messages were never freed from the log.
#[test]
fn a_relative_data_dir_compacts() {
    let dir = DataDir::relative("relative");
    let hub = small_log_hub(&dir.0);
    let addr = hub.local_addr();
    let mut sender = RawV2::durable(addr);
    let mut churn = RawV2::durable(addr);
    churn_until_compacted(&hub, &mut sender, &mut churn, 1);
    let stats = hub.shutdown();
    assert_eq!(stats.log_write_errors, 0, "{stats}");
}
