//! A data directory on a genuinely small filesystem: the disk, not
//! `--disk-bytes-max`, runs out. Durable relays past its capacity get
//! `StorageFull` (typed, connection kept), ephemeral traffic goes on, the
//! hub restarts on the full disk, every message whose `Stored` arrived is
//! delivered, and once the receiver acks, the log compacts and stores again.
//!
//! The filesystem: a 96 MiB file formatted as ext4 (`mkfs.ext4 -m 0`,
//! e2fsprogs) and mounted through a loop device (`mount -o loop`). ext4
//! supports `O_DIRECT`, and its `fallocate` fails with ENOSPC when the disk
//! cannot give a preallocation step (after taking what it had, which the hub
//! gives back). The hub runs with `--disk-bytes-max` 1 GiB, far above what
//! the filesystem holds.
//!
//! Needs root (mount, losetup), so it is ignored by a plain `cargo test`:
//! `cargo test -p relayhub-server --test disk_full -- --ignored` (CI runs it
//! as root). Without root, or without mkfs.ext4 or loop devices, it fails.

mod common;

use std::{
    collections::VecDeque,
    io::Read,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{expect_deliver, v2::RawV2, HubProcess, EVENT_TIMEOUT};
use relayhub_client::Client;
use relayhub_protocol::{Ack, ErrorCodeV2, HubFrameV2, HubMessageV2};

/// Size of the filesystem image.
const IMAGE_BYTES: u64 = 96 << 20;

/// Body of each durable relay.
const BODY_BYTES: usize = 256 << 10;

/// Durable relays in flight from the sender (group commit has batches).
const WINDOW: usize = 8;

/// `--disk-bytes-max`: 1 GiB, ten times the filesystem.
const DISK_BYTES_MAX: &str = "1073741824";

/// A small ext4 filesystem on a loop device, unmounted and removed when
/// dropped (a panic included).
struct SmallFs {
    root: PathBuf,
    mount: PathBuf,
    mounted: bool,
}

impl SmallFs {
    fn mount(bytes: u64) -> SmallFs {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let root = std::env::temp_dir().join(format!(
            "relayhub-disk-full-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut fs = SmallFs {
            mount: root.join("mnt"),
            root,
            mounted: false,
        };
        std::fs::create_dir_all(&fs.mount).expect("the mount point is created");
        let image = fs.root.join("image.ext4");
        std::fs::File::create(&image)
            .and_then(|file| file.set_len(bytes))
            .expect("the image file is created");
        run(
            "mkfs.ext4",
            &[
                "-q".as_ref(),
                "-F".as_ref(),
                "-m".as_ref(),
                "0".as_ref(),
                image.as_os_str(),
            ],
        );
        run(
            "mount",
            &[
                "-o".as_ref(),
                "loop".as_ref(),
                image.as_os_str(),
                fs.mount.as_os_str(),
            ],
        );
        fs.mounted = true;
        fs
    }

    /// Free bytes on the filesystem now.
    fn free_bytes(&self) -> u64 {
        let path = std::ffi::CString::new(self.mount.to_str().unwrap()).unwrap();
        // SAFETY: statvfs writes one struct we own, for a NUL-terminated path.
        unsafe {
            let mut stat: libc::statvfs = std::mem::zeroed();
            assert_eq!(libc::statvfs(path.as_ptr(), &mut stat), 0, "statvfs");
            stat.f_bavail * stat.f_frsize
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        if self.mounted {
            let unmounted = Command::new("umount")
                .arg(&self.mount)
                .status()
                .is_ok_and(|status| status.success());
            if !unmounted {
                // Busy (a child still exiting): detach it lazily.
                let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Runs `program args...`, failing the test with its output if it cannot
/// run or fails.
fn run(program: &str, args: &[&std::ffi::OsStr]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!("{program} cannot run ({error}): this test needs root, e2fsprogs and util-linux")
        });
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}): {}{}; this test needs root and loop devices",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The next frame from the hub: a close or `EVENT_TIMEOUT` of silence fails
/// the test (a stalled hub).
fn next_frame(client: &mut RawV2, what: &str) -> HubMessageV2 {
    loop {
        match client.decoder.poll_frame() {
            Ok(Some(frame)) => return HubFrameV2::to_owned(&frame),
            Ok(None) => {}
            Err(error) => panic!("{what}: the hub sent garbage: {error}"),
        }
        match client.stream.read(client.decoder.spare()) {
            Ok(0) => panic!("{what}: the hub closed the connection"),
            Ok(read) => client.decoder.commit(read),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("{what}: nothing from the hub within {EVENT_TIMEOUT:?}: it stalled")
            }
            Err(error) => panic!("{what}: {error}"),
        }
    }
}

/// The body of durable relay `id`: its id, then a filler.
fn body(id: u64) -> Vec<u8> {
    let mut body = vec![(id % 251) as u8; BODY_BYTES];
    body[..8].copy_from_slice(&id.to_le_bytes());
    body
}

/// What the sender's relays came to.
#[derive(Default)]
struct Outcome {
    /// Message ids stored (`Stored`, no error).
    stored: Vec<u64>,
    /// Message ids refused with `StorageFull` (then their `Stored`).
    refused: Vec<u64>,
}

/// Relays from `sender` to `receiver` (request = message id = `*next`),
/// `WINDOW` at a time, until `refusals` more of them got `StorageFull` and
/// every relay sent is answered. Each answer must come within
/// `EVENT_TIMEOUT`; `max_relays` bounds the run.
fn relay_until_refused(
    sender: &mut RawV2,
    receiver: u64,
    next: &mut u64,
    refusals: usize,
    max_relays: u64,
    outcome: &mut Outcome,
) {
    let first = *next;
    let refused_before = outcome.refused.len();
    let mut outstanding: VecDeque<u64> = VecDeque::new();
    // Requests with a StorageFull, waiting for their Stored.
    let mut refused_unanswered: Vec<u64> = Vec::new();
    loop {
        let done = outcome.refused.len() - refused_before >= refusals;
        if done && outstanding.is_empty() {
            return;
        }
        if !done && outstanding.len() < WINDOW {
            assert!(
                *next - first < max_relays,
                "no StorageFull after {} relays of {} KiB",
                *next - first,
                BODY_BYTES >> 10
            );
            sender.relay(*next, *next, &[receiver], &body(*next));
            outstanding.push_back(*next);
            *next += 1;
            continue;
        }
        match next_frame(sender, "a durable relay's answer") {
            HubMessageV2::Error(error) => {
                assert_eq!(
                    error.code,
                    ErrorCodeV2::StorageFull.to_wire(),
                    "only StorageFull may refuse: {error:?}"
                );
                assert_eq!(error.detail, receiver, "StorageFull names the receiver");
                assert!(
                    outstanding.contains(&error.request),
                    "StorageFull for request {} not in flight",
                    error.request
                );
                refused_unanswered.push(error.request);
            }
            HubMessageV2::Stored(stored) => {
                assert!(!stored.duplicate);
                assert_eq!(stored.request, stored.message_id);
                let at = outstanding
                    .iter()
                    .position(|&id| id == stored.request)
                    .unwrap_or_else(|| panic!("Stored for {} not in flight", stored.request));
                outstanding.remove(at);
                if let Some(at) = refused_unanswered
                    .iter()
                    .position(|&id| id == stored.request)
                {
                    refused_unanswered.remove(at);
                    outcome.refused.push(stored.message_id);
                } else {
                    outcome.stored.push(stored.message_id);
                }
            }
            other => panic!("the sender expected Stored or StorageFull, got {other:?}"),
        }
    }
}

/// Bytes of the relays `outcome` stored, logged with what is left on `fs`.
fn stored_bytes(what: &str, outcome: &Outcome, fs: &SmallFs) -> u64 {
    let stored_bytes = outcome.stored.len() as u64 * BODY_BYTES as u64;
    eprintln!(
        "{what}: {} relays stored ({} KiB) before StorageFull, {} KiB free on the filesystem",
        outcome.stored.len(),
        stored_bytes >> 10,
        fs.free_bytes() >> 10
    );
    stored_bytes
}

fn hub_args(data_dir: &Path) -> Vec<String> {
    [
        "--shards",
        "1",
        "--storage",
        "disk",
        "--fsync",
        "always",
        "--disk-bytes-max",
        DISK_BYTES_MAX,
        // The receiver's inbox holds everything the disk does.
        "--inbox-bytes-max",
        DISK_BYTES_MAX,
        "--data-dir",
        data_dir.to_str().expect("a UTF-8 temp dir"),
    ]
    .map(String::from)
    .to_vec()
}

fn start_hub(args: &[String]) -> HubProcess {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    HubProcess::start(&args)
}

/// Asserts the hub process still runs and answers a new client.
fn assert_serving(hub: &HubProcess) {
    let mut probe = Client::connect(hub.addr).expect("the hub still accepts clients");
    let me = probe.user_id();
    probe.relay(&[me], b"alive").unwrap();
    expect_deliver(&mut probe, me, b"alive");
}

/// The hub's warnings and errors, and what it says about the disk's room.
fn print_warnings(hub: &str, log: &[String]) {
    for line in log {
        if line.contains("WARN") || line.contains("ERROR") || line.contains("room") {
            eprintln!("{hub}: {line}");
        }
    }
}

/// The log generations in the shard's directory.
fn log_files(data_dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(data_dir.join("shard-0"))
        .expect("the shard directory")
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".rlog"))
        .collect();
    files.sort();
    files
}

/// A filesystem smaller than the log's preallocation steps (8 MiB against
/// 64 MiB steps and 16 MiB kept ahead) still gives the log room: the
/// steps shrink to what fits. Before, no step fitted and the first durable
/// relay got `StorageFull`.
#[test]
#[ignore = "needs root: mounts a small filesystem"]
fn a_small_disk_still_gives_the_log_room() {
    const SMALL_BYTES: u64 = 8 << 20;
    let fs = SmallFs::mount(SMALL_BYTES);
    let data_dir = fs.mount.join("data");
    let hub = start_hub(&hub_args(&data_dir));
    let mut sender = RawV2::durable(hub.addr);
    let receiver = RawV2::durable(hub.addr);
    let receiver_id = receiver.user;
    drop(receiver);
    let mut outcome = Outcome::default();
    let mut next = 1;
    relay_until_refused(&mut sender, receiver_id, &mut next, 1, 64, &mut outcome);
    let stored_bytes = stored_bytes("small disk", &outcome, &fs);
    assert!(
        stored_bytes >= 3 << 20,
        "only {} KiB stored on an {} MiB filesystem",
        stored_bytes >> 10,
        SMALL_BYTES >> 20
    );
    // The log took all the disk gave at once: with nothing freed it stays
    // held to its file, however often it asks for room again (every
    // 100 ms), so the next relays are refused too.
    std::thread::sleep(Duration::from_millis(500));
    let stored = outcome.stored.len();
    let relays = 2 * WINDOW as u64;
    relay_until_refused(
        &mut sender,
        receiver_id,
        &mut next,
        WINDOW,
        relays,
        &mut outcome,
    );
    assert_eq!(
        outcome.stored.len(),
        stored,
        "relays stored after StorageFull with nothing freed on the disk"
    );
    assert_serving(&hub);
    drop(hub);
}

#[test]
#[ignore = "needs root: mounts a small filesystem"]
fn a_full_disk_refuses_with_storage_full_keeps_serving_and_acks_free_it() {
    let started = Instant::now();
    // Declared first, dropped last: the hub is gone before the unmount.
    let fs = SmallFs::mount(IMAGE_BYTES);
    let data_dir = fs.mount.join("data");
    let args = hub_args(&data_dir);
    let hub = start_hub(&args);
    let mut sender = RawV2::durable(hub.addr);
    let receiver = RawV2::durable(hub.addr);
    let (receiver_id, receiver_token) = (receiver.user, receiver.token);
    drop(receiver);

    // Fill the disk: relays go through until the filesystem runs out.
    let max_relays = 2 * IMAGE_BYTES / BODY_BYTES as u64;
    let mut outcome = Outcome::default();
    let mut next = 1;
    relay_until_refused(
        &mut sender,
        receiver_id,
        &mut next,
        WINDOW,
        max_relays,
        &mut outcome,
    );
    let stored_bytes = stored_bytes("full disk", &outcome, &fs);
    assert!(
        stored_bytes > IMAGE_BYTES / 2,
        "refused after only {} MiB on a {} MiB filesystem",
        stored_bytes >> 20,
        IMAGE_BYTES >> 20
    );
    let log = hub.log();
    assert!(
        log.iter()
            .any(|line| line.contains("No space left on device")),
        "the hub never met ENOSPC: {log:#?}"
    );

    // The hub keeps serving: ephemeral relays between two other clients
    // flow while durable relays are refused.
    assert_serving(&hub);
    let mut a = Client::connect(hub.addr).unwrap();
    let mut b = Client::connect(hub.addr).unwrap();
    for round in 0..32u32 {
        let message = format!("ephemeral {round}");
        a.relay(&[b.user_id()], message.as_bytes()).unwrap();
        expect_deliver(&mut b, a.user_id(), message.as_bytes());
        b.relay(&[a.user_id()], message.as_bytes()).unwrap();
        expect_deliver(&mut a, b.user_id(), message.as_bytes());
        if round % 8 == 0 {
            // Still full for durable relays, in between.
            relay_until_refused(&mut sender, receiver_id, &mut next, 1, 8, &mut outcome);
        }
    }
    drop((a, b));

    // A hub restarted on the full disk starts, recovers what was stored,
    // and still refuses what does not fit.
    let (sender_id, sender_token) = (sender.user, sender.token);
    drop(sender);
    print_warnings("first hub", &hub.log());
    drop(hub);
    let hub = start_hub(&args);
    let mut sender = RawV2::resume(hub.addr, sender_id, sender_token);
    relay_until_refused(
        &mut sender,
        receiver_id,
        &mut next,
        WINDOW,
        max_relays,
        &mut outcome,
    );
    assert_serving(&hub);

    // The receiver resumes on the full disk: every message whose Stored
    // arrived comes, in order, none of the refused ones; it acks as it goes.
    let mut receiver = RawV2::resume(hub.addr, receiver_id, receiver_token);
    let mut last_seq = 0;
    for &expected in &outcome.stored {
        match next_frame(&mut receiver, "a stored message's delivery") {
            HubMessageV2::DeliverV2(deliver) => {
                assert_eq!(deliver.from, sender_id);
                assert_eq!(
                    deliver.message_id, expected,
                    "deliveries differ from the messages stored"
                );
                assert!(deliver.seq > last_seq);
                assert!(deliver.body == body(expected), "body of {expected}");
                last_seq = deliver.seq;
                receiver.send(&Ack { upto: deliver.seq });
            }
            other => panic!("expected the delivery of {expected}, got {other:?}"),
        }
    }
    eprintln!(
        "{} stored messages delivered and acked ({} refused); {} MiB free",
        outcome.stored.len(),
        outcome.refused.len(),
        fs.free_bytes() >> 20
    );

    // Acked, the log compacts and the disk takes durable relays again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let stored_before = outcome.stored.len();
    loop {
        assert!(
            Instant::now() < deadline,
            "the disk never took durable relays again after the acks ({} MiB free, logs {:?})",
            fs.free_bytes() >> 20,
            log_files(&data_dir)
        );
        let id = next;
        next += 1;
        sender.relay(id, id, &[receiver_id], &body(id));
        let refused = match next_frame(&mut sender, "a relay after the acks") {
            HubMessageV2::Stored(stored) => {
                assert_eq!(stored.request, id);
                false
            }
            HubMessageV2::Error(error) => {
                assert_eq!(error.code, ErrorCodeV2::StorageFull.to_wire());
                assert!(matches!(
                    next_frame(&mut sender, "the refused relay's Stored"),
                    HubMessageV2::Stored(stored) if stored.request == id
                ));
                true
            }
            other => panic!("expected Stored or StorageFull, got {other:?}"),
        };
        if refused {
            outcome.refused.push(id);
            std::thread::sleep(Duration::from_millis(50));
        } else {
            outcome.stored.push(id);
            break;
        }
    }
    // More than a little: the space is back. The compacted log's new file
    // grows in preallocation steps; on a busy disk a relay may still meet
    // the room given so far and be refused for a moment, never for long.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stored_after = 0;
    while stored_after < 16 {
        let id = next;
        next += 1;
        sender.relay(id, id, &[receiver_id], &body(id));
        match next_frame(&mut sender, "a relay after the space came back") {
            HubMessageV2::Stored(stored) => {
                assert_eq!(stored.request, id);
                outcome.stored.push(id);
                stored_after += 1;
            }
            HubMessageV2::Error(error) if error.code == ErrorCodeV2::StorageFull.to_wire() => {
                assert!(
                    Instant::now() < deadline,
                    "relay {id}: still StorageFull 20 s after the space came back"
                );
                assert!(matches!(
                    next_frame(&mut sender, "the refused relay's Stored"),
                    HubMessageV2::Stored(stored) if stored.request == id
                ));
                outcome.refused.push(id);
                std::thread::sleep(Duration::from_millis(50));
            }
            other => panic!("relay {id} after the space came back: {other:?}"),
        }
    }
    for &expected in &outcome.stored[stored_before..] {
        match next_frame(&mut receiver, "a delivery after the space came back") {
            HubMessageV2::DeliverV2(deliver) => {
                assert_eq!(deliver.message_id, expected);
                assert!(deliver.body == body(expected));
                receiver.send(&Ack { upto: deliver.seq });
            }
            other => panic!("expected the delivery of {expected}, got {other:?}"),
        }
    }
    let logs = log_files(&data_dir);
    assert_eq!(logs.len(), 1, "one log generation left: {logs:?}");
    assert_ne!(logs[0], "log-00000000.rlog", "the log compacted");
    drop((sender, receiver));

    let (status, log) = hub.terminate();
    print_warnings("restarted hub", &log);
    assert!(status.success(), "exit {status:?}: {log:#?}");
    assert!(
        !log.iter().any(|line| line.contains("panicked")),
        "{log:#?}"
    );
    let counters = log
        .iter()
        .rev()
        .find(|line| line.contains("final counters"))
        .expect("final counters at exit");
    assert!(common::counter_in(counters, "storage_full").is_some_and(|n| n > 0));
    assert!(common::counter_in(counters, "compactions").is_some_and(|n| n > 0));
    eprintln!("done in {:?}", started.elapsed());
}
