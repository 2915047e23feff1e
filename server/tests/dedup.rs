//! Retry dedup, content dedup and receipts against the real hub with two
//! shards (docs/protocol.md, "Stored and Receipt"): a retry after a
//! dropped connection or a SIGKILL is answered as a duplicate and reaches
//! each receiver once; the same body to the same receiver within the
//! content-dedup window is dropped, and forgotten after it or after 1023
//! newer bodies; receipts come once per durable receiver after its ack,
//! to an online sender, to an offline one, and across a restart.
//!
//! Receivers are placed on the shard that matters: the owner of a user id
//! is `id % shards` (docs/protocol.md, "User ids and sharding").

mod common;

use std::{
    io::{BufRead, BufReader},
    net::{Shutdown, SocketAddr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use common::v2::RawV2;
use relayhub_client::Client;
use relayhub_protocol::{
    flags, Ack, DeliverV2, ErrorCodeV2, Hello, HubMessageV2, Receipt, RelayV2Ref, ResumeToken,
    Stored,
};
use relayhub_server::{ids::owner, shard::CONTENT_DEDUP_ENTRIES_MAX};

const SHARDS: usize = 2;

// ----- helpers ------------------------------------------------------------

/// A new durable session whose id `shard` owns.
fn durable_on(addr: SocketAddr, shard: usize) -> RawV2 {
    for _ in 0..200 {
        let client = RawV2::durable(addr);
        if owner(client.user, SHARDS) == shard {
            return client;
        }
    }
    panic!("no durable session landed on shard {shard} in 200 tries");
}

/// A new version-2 ephemeral session whose id `shard` owns.
fn ephemeral_on(addr: SocketAddr, shard: usize) -> RawV2 {
    for _ in 0..200 {
        let (client, first) = RawV2::open(addr, Hello::new_session(1, false));
        assert!(
            matches!(&first, HubMessageV2::WelcomeV2(w) if !w.durable),
            "{first:?}"
        );
        if owner(client.user, SHARDS) == shard {
            return client;
        }
    }
    panic!("no ephemeral session landed on shard {shard} in 200 tries");
}

/// A version-1 client whose id `shard` owns.
fn v1_on(addr: SocketAddr, shard: usize) -> Client {
    for _ in 0..200 {
        let client = Client::connect(addr).expect("client connects");
        if owner(client.user_id(), SHARDS) == shard {
            return client;
        }
    }
    panic!("no version-1 client landed on shard {shard} in 200 tries");
}

/// Sends a `RelayV2` with `flags`.
fn relay_flags(
    client: &mut RawV2,
    request: u64,
    message_id: u64,
    flags: u32,
    to: &[u64],
    body: &[u8],
) {
    client.send(&RelayV2Ref {
        request,
        message_id,
        flags,
        receivers: to,
        body,
    });
}

/// The answer to relay `request`: its errors as `(code, detail)`, sorted,
/// and its `Stored`.
fn answer(client: &mut RawV2, request: u64) -> (Vec<(ErrorCodeV2, u64)>, Stored) {
    let mut errors = Vec::new();
    loop {
        match client.next() {
            HubMessageV2::Error(error) => {
                assert_eq!(error.request, request, "an error about another request");
                let code = ErrorCodeV2::from_wire(error.code).expect("a known code");
                errors.push((code, error.detail));
            }
            HubMessageV2::Stored(stored) => {
                assert_eq!(stored.request, request, "the Stored of another request");
                errors.sort_by_key(|&(code, detail)| (code.to_wire(), detail));
                return (errors, stored);
            }
            other => panic!(
                "user {}: expected the answer to relay {request}, got {other:?}",
                client.user
            ),
        }
    }
}

/// Asserts relay `request` was stored for everyone: no error, a `Stored`
/// for `message_id` that is not a duplicate.
fn expect_stored(client: &mut RawV2, request: u64, message_id: u64) {
    let (errors, stored) = answer(client, request);
    assert!(errors.is_empty(), "relay {request}: {errors:?}");
    assert_eq!(stored.message_id, message_id);
    assert!(!stored.duplicate, "relay {request} taken for a duplicate");
}

/// Asserts relay `request` was answered at once or by every receiver as a
/// retry: no error, `Stored{duplicate: true}`.
fn expect_duplicate(client: &mut RawV2, request: u64, message_id: u64) {
    let (errors, stored) = answer(client, request);
    assert!(errors.is_empty(), "retry {request}: {errors:?}");
    assert_eq!(stored.message_id, message_id);
    assert!(
        stored.duplicate,
        "retry {request} not recognised: {stored:?}"
    );
}

/// The next frame is a delivery of `body` from `from`.
fn expect_delivery(client: &mut RawV2, from: u64, body: &[u8]) -> DeliverV2 {
    match client.next() {
        HubMessageV2::DeliverV2(deliver) => {
            assert_eq!(
                deliver.from, from,
                "sender of a delivery to {}",
                client.user
            );
            assert_eq!(
                String::from_utf8_lossy(&deliver.body),
                String::from_utf8_lossy(body),
                "body delivered to {}",
                client.user
            );
            deliver
        }
        other => panic!(
            "user {}: expected the delivery of {:?}, got {other:?}",
            client.user,
            String::from_utf8_lossy(body)
        ),
    }
}

/// The next frame is a `Receipt`.
fn expect_receipt(client: &mut RawV2) -> Receipt {
    match client.next() {
        HubMessageV2::Receipt(receipt) => receipt,
        other => panic!("user {}: expected a receipt, got {other:?}", client.user),
    }
}

/// Closes the connection at once, reading nothing more.
fn drop_connection(client: RawV2) -> (u64, [u8; 16]) {
    let _ = client.stream.shutdown(Shutdown::Both);
    (client.user, client.token)
}

/// Half-closes and reads until the hub closes: the hub has then handled
/// the close (the session is offline). Returns what arrived meanwhile.
fn close_and_wait(mut client: RawV2) -> (u64, [u8; 16], Vec<HubMessageV2>) {
    client.stream.shutdown(Shutdown::Write).unwrap();
    let rest = client.until_closed();
    (client.user, client.token, rest)
}

/// A data directory of its own under the temp dir, removed at the end.
struct DataDir(PathBuf);

impl DataDir {
    fn new(name: &str) -> DataDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "relayhub-dedup-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        DataDir(dir)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temp dir")
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `relayhub` binary with two shards on a data dir, disk storage,
/// fsync always; killed with SIGKILL when dropped.
struct Binary {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

/// How long a (re)started binary may take to listen: its start-up recovery
/// and preallocation on a loaded machine. A hub that never listens fails
/// the test then instead of hanging it.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(60);

impl Binary {
    fn start(dir: &DataDir) -> Binary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_relayhub"))
            .args(["--listen", "127.0.0.1:0", "--shards", "2", "--pin", "false"])
            .args(["--storage", "disk", "--fsync", "always"])
            .args(["--data-dir", dir.path()])
            .env("RELAYHUB_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("address=").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = addr_tx.send(addr);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = match addr_rx.recv_timeout(LISTEN_TIMEOUT) {
            Ok(addr) => addr.parse().expect("a socket address in the log"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the hub did not listen within {LISTEN_TIMEOUT:?}: {:?}",
                    log.lock().unwrap()
                );
            }
        };
        Binary { child, addr, log }
    }

    /// SIGKILL, and waits for the process to end.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("waitpid");
    }

    /// SIGTERM (a graceful shutdown); asserts a clean exit within the
    /// shutdown grace and some margin.
    fn terminate(mut self) {
        // SAFETY: kill sends a signal to the child we started and have not
        // reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waitpid") {
                break status;
            }
            assert!(Instant::now() < deadline, "no exit within 20 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            status.success(),
            "{status:?}: {:?}",
            self.log.lock().unwrap()
        );
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ----- retry dedup --------------------------------------------------------

/// An id no one has: receivers that refuse a relay keep the sender's
/// high-water mark down, so its retry is routed again.
const NOBODY: u64 = 1 << 40;

/// A durable sender's connection drops after the receiver (on the other
/// shard) got two messages but before the sender read their `Stored`; the
/// sender resumes and retries both `message_id`s. The first is answered
/// `Stored{duplicate}`; the second, which an unknown receiver refused (so
/// the sender's mark never covered it), is recognised by the receiver's
/// inbox and refused again for the unknown one. The receiver has each
/// once.
#[test]
fn a_retry_after_a_dropped_connection_is_a_duplicate_delivered_once() {
    let hub = common::start(SHARDS, |_| {});
    let addr = hub.local_addr();
    let mut sender = durable_on(addr, 1);
    let mut receiver = durable_on(addr, 0);
    let (from, to) = (sender.user, receiver.user);
    sender.relay(1, 7, &[to], b"exactly once");
    sender.relay(2, 8, &[to, NOBODY], b"once too");
    let first = expect_delivery(&mut receiver, from, b"exactly once");
    assert_eq!((first.seq, first.message_id), (1, 7));
    let second = expect_delivery(&mut receiver, from, b"once too");
    assert_eq!((second.seq, second.message_id), (2, 8));
    let (user, token) = drop_connection(sender);

    let mut sender = RawV2::resume(addr, user, token);
    sender.relay(1, 7, &[to], b"exactly once");
    expect_duplicate(&mut sender, 1, 7);
    sender.relay(2, 8, &[to, NOBODY], b"once too");
    let (errors, stored) = answer(&mut sender, 2);
    assert_eq!(errors, [(ErrorCodeV2::UnknownReceiver, NOBODY)]);
    assert!(!stored.duplicate, "a refused receiver: not a duplicate");
    // Anything stored for the retries would come before this.
    sender.relay(3, 9, &[to], b"after the retries");
    expect_stored(&mut sender, 3, 9);
    let next = expect_delivery(&mut receiver, from, b"after the retries");
    assert_eq!((next.seq, next.message_id), (3, 9));
    assert!(hub.stats().duplicates >= 2);
    hub.shutdown();
}

/// The same with receivers on both shards, online and offline: the retry
/// is a duplicate for every one of them, and each has the message once.
#[test]
fn a_retry_to_receivers_on_both_shards_reaches_each_once() {
    let hub = common::start(SHARDS, |_| {});
    let addr = hub.local_addr();
    let mut sender = durable_on(addr, 0);
    let mut online = [durable_on(addr, 0), durable_on(addr, 1)];
    // Offline once the hub has handled their close: nothing is sent to them.
    let offline: Vec<(u64, [u8; 16])> = (0..SHARDS)
        .map(|shard| {
            let (user, token, rest) = close_and_wait(durable_on(addr, shard));
            assert!(rest.is_empty(), "{rest:?}");
            (user, token)
        })
        .collect();
    let mut to: Vec<u64> = online.iter().map(|r| r.user).collect();
    to.extend(offline.iter().map(|&(user, _)| user));
    let from = sender.user;

    sender.relay(1, 40, &to, b"fan-out");
    // Each shard handles all its receivers of a relay at once: when its
    // online receiver has the message, its offline one has it stored.
    for receiver in &mut online {
        assert_eq!(expect_delivery(receiver, from, b"fan-out").seq, 1);
    }
    let (user, token) = drop_connection(sender);

    let mut sender = RawV2::resume(addr, user, token);
    sender.relay(1, 40, &to, b"fan-out");
    expect_duplicate(&mut sender, 1, 40);
    sender.relay(2, 41, &to, b"marker");
    expect_stored(&mut sender, 2, 41);
    for receiver in &mut online {
        let next = expect_delivery(receiver, from, b"marker");
        assert_eq!((next.seq, next.message_id), (2, 41));
    }
    for (user, token) in offline {
        let mut receiver = RawV2::resume(addr, user, token);
        let first = expect_delivery(&mut receiver, from, b"fan-out");
        assert_eq!((first.seq, first.message_id, first.flags), (1, 40, 0));
        let next = expect_delivery(&mut receiver, from, b"marker");
        assert_eq!((next.seq, next.message_id), (2, 41));
    }
    hub.shutdown();
}

/// SIGKILL of the hub binary after two messages were durable (a receiver
/// of their shard got them, and entries go out only once durable) and
/// before the sender read their `Stored`; restarted on the same data dir,
/// the sender retries both. The inboxes' retry marks came back from the
/// log: the first retry is a duplicate, the second (an unknown receiver
/// refused it, so the sender's mark never covered it: it is routed again)
/// is stored for no one again. Every receiver has each message once.
#[test]
fn a_retry_after_sigkill_between_store_and_stored_is_a_duplicate() {
    let dir = DataDir::new("sigkill");
    let hub = Binary::start(&dir);
    let mut sender = durable_on(hub.addr, 0);
    let (offline, offline_token, rest) = close_and_wait(durable_on(hub.addr, 1));
    assert!(rest.is_empty(), "{rest:?}");
    let mut witness = durable_on(hub.addr, 1);
    let to = [offline, witness.user];
    let from = sender.user;
    sender.relay(1, 5, &to, b"stored before the kill");
    sender.relay(2, 6, &[offline, witness.user, NOBODY], b"refused for one");
    let seen = expect_delivery(&mut witness, from, b"stored before the kill");
    assert_eq!((seen.seq, seen.message_id), (1, 5));
    let seen = expect_delivery(&mut witness, from, b"refused for one");
    assert_eq!((seen.seq, seen.message_id), (2, 6));
    hub.kill(); // The sender never reads its Stored answers.
    let (sender_token, witness_token) = (sender.token, witness.token);
    drop(sender);
    drop(witness);

    let hub = Binary::start(&dir);
    let mut sender = RawV2::resume(hub.addr, from, sender_token);
    sender.relay(1, 5, &to, b"stored before the kill");
    expect_duplicate(&mut sender, 1, 5);
    sender.relay(2, 6, &[offline, to[1], NOBODY], b"refused for one");
    let (errors, stored) = answer(&mut sender, 2);
    assert_eq!(errors, [(ErrorCodeV2::UnknownReceiver, NOBODY)]);
    assert!(!stored.duplicate);
    sender.relay(3, 7, &to, b"after the restart");
    expect_stored(&mut sender, 3, 7);
    for (user, token) in [(offline, offline_token), (to[1], witness_token)] {
        let mut receiver = RawV2::resume(hub.addr, user, token);
        for (seq, message_id, body) in [
            (1, 5, &b"stored before the kill"[..]),
            (2, 6, b"refused for one"),
        ] {
            let got = expect_delivery(&mut receiver, from, body);
            assert_eq!((got.seq, got.message_id), (seq, message_id), "user {user}");
            // Every entry still in an inbox after a restart is a redelivery.
            assert_eq!(got.flags, flags::REDELIVERY);
        }
        let next = expect_delivery(&mut receiver, from, b"after the restart");
        assert_eq!(
            (next.seq, next.message_id, next.flags),
            (3, 7, 0),
            "user {user}"
        );
    }
    hub.terminate();
}

/// `--dedup-window-ms 0` turns retry dedup off at both levels: a retry of a
/// stored `message_id` is stored and delivered again.
#[test]
fn a_zero_dedup_window_stores_a_retry_again() {
    let hub = common::start(SHARDS, |config| config.dedup_window_ms = 0);
    let addr = hub.local_addr();
    let mut sender = durable_on(addr, 0);
    let mut receiver = durable_on(addr, 1);
    let from = sender.user;
    sender.relay(1, 3, &[receiver.user], b"twice");
    expect_stored(&mut sender, 1, 3);
    sender.relay(2, 3, &[receiver.user], b"twice");
    expect_stored(&mut sender, 2, 3);
    let first = expect_delivery(&mut receiver, from, b"twice");
    let second = expect_delivery(&mut receiver, from, b"twice");
    assert_eq!((first.seq, second.seq), (1, 2));
    assert_eq!((first.message_id, second.message_id), (3, 3));
    hub.shutdown();
}

// ----- content dedup ------------------------------------------------------

fn sleep_until(deadline: Instant) {
    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
}

/// With a 5 s window: the same body to the same receivers (durable,
/// version-2 ephemeral, version 1, on both shards) is delivered at 0 s,
/// dropped with `DuplicateContent` at ~4.8 s, and delivered again at
/// ~5.1 s (a dropped duplicate does not restart the window).
#[test]
fn content_dedup_drops_a_body_within_the_window_and_not_after() {
    const WINDOW: Duration = Duration::from_millis(5_000);
    let hub = common::start(SHARDS, |config| config.content_dedup_window_ms = 5_000);
    let addr = hub.local_addr();
    let mut sender = durable_on(addr, 0);
    let mut durable = durable_on(addr, 1);
    let mut ephemeral = ephemeral_on(addr, 0);
    let mut v1 = v1_on(addr, 1);
    let from = sender.user;
    let to = [durable.user, ephemeral.user, v1.user_id()];
    let body = b"the same body";

    // The hub's times are on each receiver's shard clock (wall-clock ms):
    // the first body was accepted between `sent` and `accepted`.
    let sent = Instant::now();
    sender.relay(1, 1, &to, body);
    expect_stored(&mut sender, 1, 1);
    let accepted = Instant::now();
    assert_eq!(expect_delivery(&mut durable, from, body).seq, 1);
    assert_eq!(expect_delivery(&mut ephemeral, from, body).seq, 0);
    common::expect_deliver(&mut v1, from, body);

    sleep_until(sent + Duration::from_millis(4_800));
    sender.relay(2, 2, &to, body);
    let (errors, stored) = answer(&mut sender, 2);
    // The hub judged it at most this long after the first acceptance (its
    // clock counts whole milliseconds: 1 ms more at worst).
    let at_most = sent.elapsed() + Duration::from_millis(1);
    assert!(
        at_most < WINDOW,
        "this machine overslept: the repeat reached the hub up to {at_most:?} after the first \
         body, past the {WINDOW:?} window, so the test cannot judge the rule"
    );
    let mut expected: Vec<(ErrorCodeV2, u64)> = to
        .iter()
        .map(|&user| (ErrorCodeV2::DuplicateContent, user))
        .collect();
    expected.sort_by_key(|&(_, user)| user);
    assert_eq!(errors, expected, "the repeat within the window");
    assert!(!stored.duplicate);
    // Not fatal, and nothing was delivered: the next body comes next.
    sender.relay(3, 3, &to, b"marker");
    expect_stored(&mut sender, 3, 3);
    assert_eq!(expect_delivery(&mut durable, from, b"marker").seq, 2);
    expect_delivery(&mut ephemeral, from, b"marker");
    common::expect_deliver(&mut v1, from, b"marker");

    // The window counts from the accepted body, not from the dropped one.
    sleep_until(accepted + Duration::from_millis(5_100));
    sender.relay(4, 4, &to, body);
    expect_stored(&mut sender, 4, 4);
    assert_eq!(expect_delivery(&mut durable, from, body).seq, 3);
    expect_delivery(&mut ephemeral, from, body);
    common::expect_deliver(&mut v1, from, body);
    assert_eq!(hub.stats().content_duplicates, 3);
    hub.shutdown();
}

/// Within the window the rule is per receiver and whoever sent the body:
/// another sender's copy is dropped, another receiver gets it, a receiver
/// listed twice gets it once, a version-1 relay is never checked nor
/// remembered, and a durable session remembers across a resume.
#[test]
fn content_dedup_is_per_receiver_whoever_sends() {
    let hub = common::start(SHARDS, |config| config.content_dedup_window_ms = 600_000);
    let addr = hub.local_addr();
    let mut alice = durable_on(addr, 0);
    let mut bob = durable_on(addr, 1);
    let mut durable = durable_on(addr, 1);
    let mut ephemeral = ephemeral_on(addr, 0);
    let mut v1 = v1_on(addr, 1);
    let (a, b) = (alice.user, bob.user);
    let to = [durable.user, ephemeral.user, v1.user_id()];

    alice.relay(1, 1, &to, b"X");
    expect_stored(&mut alice, 1, 1);
    expect_delivery(&mut durable, a, b"X");
    expect_delivery(&mut ephemeral, a, b"X");
    common::expect_deliver(&mut v1, a, b"X");

    // Another sender, on the other shard: dropped for every receiver.
    bob.relay(1, 1, &to, b"X");
    let (errors, stored) = answer(&mut bob, 1);
    let mut expected: Vec<(ErrorCodeV2, u64)> = to
        .iter()
        .map(|&user| (ErrorCodeV2::DuplicateContent, user))
        .collect();
    expected.sort_by_key(|&(_, user)| user);
    assert_eq!(errors, expected);
    assert!(!stored.duplicate);
    bob.relay(2, 2, &to, b"from bob");
    expect_stored(&mut bob, 2, 2);
    expect_delivery(&mut durable, b, b"from bob");
    expect_delivery(&mut ephemeral, b, b"from bob");
    common::expect_deliver(&mut v1, b, b"from bob");

    // One body to different receivers, one relay each: all delivered.
    for (request, &user) in (2..).zip(&to) {
        alice.relay(request, request, &[user], b"Z");
        expect_stored(&mut alice, request, request);
    }
    expect_delivery(&mut durable, a, b"Z");
    expect_delivery(&mut ephemeral, a, b"Z");
    common::expect_deliver(&mut v1, a, b"Z");

    // A receiver listed twice: once, and DuplicateContent for the second.
    alice.relay(5, 5, &[durable.user, durable.user], b"W");
    let (errors, _) = answer(&mut alice, 5);
    assert_eq!(errors, [(ErrorCodeV2::DuplicateContent, durable.user)]);
    expect_delivery(&mut durable, a, b"W");

    // A version-1 relay is never checked...
    let mut old = v1_on(addr, 0);
    old.relay(&to, b"X").unwrap();
    expect_delivery(&mut durable, old.user_id(), b"X");
    expect_delivery(&mut ephemeral, old.user_id(), b"X");
    common::expect_deliver(&mut v1, old.user_id(), b"X");
    // ... nor remembered.
    old.relay(&[durable.user], b"only v1 sent this").unwrap();
    expect_delivery(&mut durable, old.user_id(), b"only v1 sent this");
    alice.relay(6, 6, &[durable.user], b"only v1 sent this");
    expect_stored(&mut alice, 6, 6);
    let last = expect_delivery(&mut durable, a, b"only v1 sent this");

    // A durable session's bodies stay with the session across a resume.
    durable.send(&Ack { upto: last.seq });
    let (user, token, rest) = close_and_wait(durable);
    assert!(rest.is_empty(), "{rest:?}");
    let mut durable = RawV2::resume(addr, user, token);
    alice.relay(7, 7, &[user], b"X");
    let (errors, _) = answer(&mut alice, 7);
    assert_eq!(errors, [(ErrorCodeV2::DuplicateContent, user)]);
    alice.relay(8, 8, &[user], b"after the resume");
    expect_stored(&mut alice, 8, 8);
    let next = expect_delivery(&mut durable, a, b"after the resume");
    assert_eq!(next.seq, last.seq + 1, "nothing in between");
    hub.shutdown();
}

/// A flood of distinct bodies to one receiver: it remembers at most
/// `CONTENT_DEDUP_ENTRIES_MAX` (1024), so a body is forgotten once 1023
/// newer ones were accepted (docs/protocol.md, "Content dedup"), while the
/// window (10 minutes) has not ended for any of them.
#[test]
fn content_dedup_forgets_the_oldest_body_under_a_flood() {
    const FLOOD: usize = 5_000;
    let hub = common::start(SHARDS, |config| config.content_dedup_window_ms = 600_000);
    let addr = hub.local_addr();
    let mut sender = durable_on(addr, 0);
    let (receiver, token) = drop_connection(durable_on(addr, 1));
    let body = |n: usize| format!("distinct body {n}").into_bytes();
    let mut request = 0u64;
    for batch in (0..FLOOD).collect::<Vec<_>>().chunks(256) {
        for &n in batch {
            request += 1;
            sender.relay(request, request, &[receiver], &body(n));
        }
        for _ in batch {
            let (errors, stored) = answer_any(&mut sender);
            assert!(errors.is_empty(), "relay {}: {errors:?}", stored.request);
        }
    }
    // 1022 bodies came after this one: still remembered.
    let kept = FLOOD - (CONTENT_DEDUP_ENTRIES_MAX - 1);
    request += 1;
    sender.relay(request, request, &[receiver], &body(kept));
    let (errors, _) = answer(&mut sender, request);
    assert_eq!(errors, [(ErrorCodeV2::DuplicateContent, receiver)]);
    // 1023 came after this one: forgotten, delivered again; and the first.
    for n in [kept - 1, 0] {
        request += 1;
        sender.relay(request, request, &[receiver], &body(n));
        expect_stored(&mut sender, request, request);
    }
    let stats = hub.stats();
    assert_eq!(stats.content_duplicates, 1);
    assert_eq!(stats.stored as usize, FLOOD + 2);
    // The receiver's inbox holds the flood and the two forgotten bodies.
    let mut receiver = RawV2::resume(addr, receiver, token);
    let from = sender.user;
    let mut last = 0;
    for n in (0..FLOOD).chain([kept - 1, 0]) {
        let deliver = expect_delivery(&mut receiver, from, &body(n));
        assert_eq!(deliver.seq, last + 1);
        last = deliver.seq;
        receiver.send(&Ack { upto: last });
    }
    hub.shutdown();
}

/// The answer to some relay (pipelined ones may be answered out of order).
fn answer_any(client: &mut RawV2) -> (Vec<(ErrorCodeV2, u64)>, Stored) {
    let mut errors = Vec::new();
    loop {
        match client.next() {
            HubMessageV2::Error(error) => {
                let code = ErrorCodeV2::from_wire(error.code).expect("a known code");
                errors.push((code, error.detail));
            }
            HubMessageV2::Stored(stored) => return (errors, stored),
            other => panic!("expected a relay's answer, got {other:?}"),
        }
    }
}

/// A body that a full inbox refused is not remembered: once the inbox has
/// room, the same body within the window is stored.
#[test]
fn a_body_refused_by_a_full_inbox_is_not_remembered() {
    let hub = common::start(SHARDS, |config| {
        config.content_dedup_window_ms = 600_000;
        config.inbox_messages_max = 1;
    });
    let addr = hub.local_addr();
    let mut sender = durable_on(addr, 0);
    let mut receiver = durable_on(addr, 1);
    let from = sender.user;
    sender.relay(1, 1, &[receiver.user], b"fills the inbox");
    expect_stored(&mut sender, 1, 1);
    sender.relay(2, 2, &[receiver.user], b"refused");
    let (errors, _) = answer(&mut sender, 2);
    assert_eq!(errors, [(ErrorCodeV2::InboxFull, receiver.user)]);
    let first = expect_delivery(&mut receiver, from, b"fills the inbox");
    receiver.send(&Ack { upto: first.seq });
    // A round trip on the receiver's connection: its ack is handled.
    receiver.relay(1, 1, &[], b"");
    expect_stored(&mut receiver, 1, 1);
    sender.relay(3, 3, &[receiver.user], b"refused");
    expect_stored(&mut sender, 3, 3);
    assert_eq!(expect_delivery(&mut receiver, from, b"refused").seq, 2);
    assert_eq!(hub.stats().content_duplicates, 0);
    hub.shutdown();
}

// ----- receipts -----------------------------------------------------------

/// An online durable sender gets one `Receipt{message_id, receiver}` per
/// durable receiver, on either shard, once that receiver acks, and no more;
/// receipts are entries of the sender's inbox (seq 1, 2, ...). An
/// ephemeral sender's receipt carries seq 0.
#[test]
fn receipts_come_once_per_receiver_after_its_ack() {
    let hub = common::start(SHARDS, |_| {});
    let addr = hub.local_addr();
    let mut sender = durable_on(addr, 0);
    let mut near = durable_on(addr, 0);
    let mut far = durable_on(addr, 1);
    let to = [near.user, far.user];
    relay_flags(&mut sender, 1, 10, flags::RECEIPT, &to, b"ack me");
    // No receipt before an ack: the Stored is the next frame.
    expect_stored(&mut sender, 1, 10);
    let near_seq = expect_delivery(&mut near, sender.user, b"ack me").seq;
    let far_seq = expect_delivery(&mut far, sender.user, b"ack me").seq;

    far.send(&Ack { upto: far_seq });
    let receipt = expect_receipt(&mut sender);
    assert_eq!(
        (
            receipt.message_id,
            receipt.receiver,
            receipt.seq,
            receipt.flags
        ),
        (10, far.user, 1, 0)
    );
    near.send(&Ack { upto: near_seq });
    let receipt = expect_receipt(&mut sender);
    assert_eq!(
        (
            receipt.message_id,
            receipt.receiver,
            receipt.seq,
            receipt.flags
        ),
        (10, near.user, 2, 0)
    );
    sender.send(&Ack { upto: 2 });

    // Acking again gives nothing; nor does a relay without the flag. A
    // receipt from either shard would come before the marker's Stored
    // (the mesh between two shards is FIFO).
    far.send(&Ack { upto: far_seq });
    near.send(&Ack { upto: near_seq });
    sender.relay(2, 11, &to, b"no receipt asked");
    expect_stored(&mut sender, 2, 11);
    for receiver in [&mut near, &mut far] {
        let seq = expect_delivery(receiver, sender.user, b"no receipt asked").seq;
        receiver.send(&Ack { upto: seq });
    }
    // Round trips through both receivers' shards: their acks are handled.
    for receiver in [&mut near, &mut far] {
        receiver.relay(1, 1, &[], b"");
        expect_stored(receiver, 1, 1);
    }
    sender.relay(3, 12, &to, b"marker");
    expect_stored(&mut sender, 3, 12);

    // An ephemeral sender on the other shard: seq 0, nothing to ack.
    let mut ephemeral = ephemeral_on(addr, 1);
    relay_flags(
        &mut ephemeral,
        1,
        1,
        flags::RECEIPT,
        &[near.user],
        b"ephemeral",
    );
    expect_stored(&mut ephemeral, 1, 1);
    expect_delivery(&mut near, sender.user, b"marker");
    let seq = expect_delivery(&mut near, ephemeral.user, b"ephemeral").seq;
    near.send(&Ack { upto: seq });
    let receipt = expect_receipt(&mut ephemeral);
    assert_eq!(
        (
            receipt.message_id,
            receipt.receiver,
            receipt.seq,
            receipt.flags
        ),
        (1, near.user, 0, 0)
    );
    hub.shutdown();
}

/// The sender is offline when the receiver acks: the receipt waits in its
/// inbox, comes on the resume, is redelivered until acked, and never after.
#[test]
fn a_receipt_waits_for_an_offline_sender_until_acked() {
    let hub = common::start(SHARDS, |_| {});
    let addr = hub.local_addr();
    let (from, token, receiver) = receipt_while_the_sender_is_away(addr, 3, b"while away");

    let mut sender = RawV2::resume(addr, from, token);
    let receipt = expect_receipt(&mut sender);
    assert_eq!(
        (
            receipt.message_id,
            receipt.receiver,
            receipt.seq,
            receipt.flags
        ),
        (3, receiver.user, 1, 0)
    );
    assert_eq!(
        expect_delivery(&mut sender, receiver.user, b"after the ack").seq,
        2
    );
    // Not acked: redelivered on the next connection.
    let (_, token, _) = close_and_wait(sender);
    let mut sender = RawV2::resume(addr, from, token);
    let receipt = expect_receipt(&mut sender);
    assert_eq!(
        (
            receipt.message_id,
            receipt.receiver,
            receipt.seq,
            receipt.flags
        ),
        (3, receiver.user, 1, flags::REDELIVERY)
    );
    let again = expect_delivery(&mut sender, receiver.user, b"after the ack");
    assert_eq!((again.seq, again.flags), (2, flags::REDELIVERY));
    sender.send(&Ack { upto: 2 });
    let (_, token, _) = close_and_wait(sender);
    // Acked: the next connection starts with whatever comes new.
    let mut sender = RawV2::resume(addr, from, token);
    sender.relay(2, 4, &[receiver.user], b"probe");
    expect_stored(&mut sender, 2, 4);
    hub.shutdown();
}

/// A durable sender on shard 0 relays `body` as `message_id` with
/// `RECEIPT` to a durable receiver on shard 1, gets its `Stored` and
/// disconnects; the receiver gets the body and acks it, then relays
/// "after the ack" back to the sender and gets its `Stored`: that relay
/// follows the receipt through the mesh into the sender's shard, so once
/// it is stored (and durable), so is the receipt. Returns the sender's
/// user id, its latest token, and the receiver, still connected.
fn receipt_while_the_sender_is_away(
    addr: SocketAddr,
    message_id: u64,
    body: &[u8],
) -> (u64, ResumeToken, RawV2) {
    let mut sender = durable_on(addr, 0);
    let mut receiver = durable_on(addr, 1);
    let from = sender.user;
    relay_flags(
        &mut sender,
        1,
        message_id,
        flags::RECEIPT,
        &[receiver.user],
        body,
    );
    expect_stored(&mut sender, 1, message_id);
    let (_, token, rest) = close_and_wait(sender);
    assert!(rest.is_empty(), "{rest:?}");
    let seq = expect_delivery(&mut receiver, from, body).seq;
    receiver.send(&Ack { upto: seq });
    receiver.relay(1, 1, &[from], b"after the ack");
    expect_stored(&mut receiver, 1, 1);
    (from, token, receiver)
}

/// A receipt stored for an offline sender survives a graceful restart of
/// the hub binary (disk storage), and so does the receiver's ack.
#[test]
fn a_receipt_survives_a_restart() {
    let dir = DataDir::new("receipt");
    let hub = Binary::start(&dir);
    let (from, sender_token, receiver) =
        receipt_while_the_sender_is_away(hub.addr, 9, b"ack across");
    let (receiver_user, receiver_token) = (receiver.user, receiver.token);
    hub.terminate();
    drop(receiver);

    let hub = Binary::start(&dir);
    let mut sender = RawV2::resume(hub.addr, from, sender_token);
    let receipt = expect_receipt(&mut sender);
    assert_eq!(
        (receipt.message_id, receipt.receiver, receipt.seq),
        (9, receiver_user, 1)
    );
    // Every entry still in an inbox after a restart is a redelivery.
    assert_eq!(receipt.flags, flags::REDELIVERY);
    let next = expect_delivery(&mut sender, receiver_user, b"after the ack");
    assert_eq!(next.seq, 2);
    sender.send(&Ack { upto: 2 });
    // The receiver's ack was written out at the shutdown: nothing comes
    // again, the next entry is new.
    sender.relay(2, 10, &[receiver_user], b"after the restart");
    expect_stored(&mut sender, 2, 10);
    let mut receiver = RawV2::resume(hub.addr, receiver_user, receiver_token);
    let next = expect_delivery(&mut receiver, from, b"after the restart");
    assert_eq!((next.seq, next.flags), (2, 0));
    hub.terminate();
}
