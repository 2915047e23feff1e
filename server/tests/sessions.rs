//! Protocol version 2 against the real hub, over real sockets: durable
//! sessions keep messages while their user is away, resumes land on any
//! shard (the hub hands the socket to the owner), takeovers, acks.

mod common;

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Barrier, Condvar, Mutex,
    },
    time::{Duration, Instant},
};

use common::{
    clients_per_shard, expect_deliver, expect_error, start,
    v2::{error_of, RawV2},
    EVENT_TIMEOUT,
};
use relayhub_protocol::{
    flags, Ack, DeliverV2, ErrorCode, ErrorCodeV2, Hello, HubMessageV2, ResumeToken,
};
use relayhub_server::{
    config::{Fsync, Storage},
    ids::owner,
    stats::StatsSnapshot,
    Config, Hub,
};

fn deliver(message: HubMessageV2) -> (u64, u64, Vec<u8>) {
    match message {
        HubMessageV2::DeliverV2(deliver) => (deliver.from, deliver.seq, deliver.body),
        other => panic!("expected a delivery, got {other:?}"),
    }
}

/// A relays to B while B is away; B resumes, again and again, landing on
/// either shard: every message arrives once, in order, with the same
/// sequence numbers until acked, then live ones follow.
#[test]
fn offline_messages_survive_resumes_on_any_shard() {
    let hub = start(2, |_| {});
    let mut sender = RawV2::durable(hub.local_addr());
    let receiver = RawV2::durable(hub.local_addr());
    let (user, mut token) = (receiver.user, receiver.token);
    drop(receiver);
    const MESSAGES: u64 = 20;
    for request in 1..=MESSAGES {
        sender.relay(request, request, &[user], format!("m{request}").as_bytes());
    }
    for request in 1..=MESSAGES {
        match sender.next() {
            HubMessageV2::Stored(stored) => {
                assert_eq!((stored.request, stored.duplicate), (request, false))
            }
            other => panic!("expected Stored, got {other:?}"),
        }
    }
    // Resume until some resume had to cross shards, acking a few each time.
    let mut acked = 0;
    let started = Instant::now();
    while hub.stats().handoffs_in == 0 || acked < MESSAGES {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no resume crossed shards"
        );
        let mut receiver = RawV2::resume(hub.local_addr(), user, token);
        token = receiver.token;
        for seq in acked + 1..=MESSAGES {
            let (from, got_seq, body) = deliver(receiver.next());
            assert_eq!((from, got_seq), (sender.user, seq));
            assert_eq!(body, format!("m{seq}").into_bytes());
        }
        acked = (acked + 7).min(MESSAGES);
        receiver.send(&Ack { upto: acked });
        // Let the ack land before the next resume reads the inbox.
        receiver.send(&relayhub_protocol::Identity { request: 9 });
        assert!(matches!(receiver.next(), HubMessageV2::IdentityReply(r) if r.request == 9));
    }
    let mut receiver = RawV2::resume(hub.local_addr(), user, token);
    sender.relay(100, 100, &[user], b"live");
    assert_eq!(deliver(receiver.next()).2, b"live");
    let stats = hub.stats();
    assert!(stats.handoffs_in >= 1 && stats.handoffs_out == stats.handoffs_in);
}

/// The counters a shutdown returns (and logs as `final counters:`) show
/// the inboxes as the hub leaves them, however soon after the relays it
/// stops (the expiry sweep refreshes the gauges only once a second).
#[test]
fn the_final_counters_show_what_waits_in_the_inboxes() {
    let hub = start(1, |_| {});
    let mut sender = RawV2::durable(hub.local_addr());
    let receiver = RawV2::durable(hub.local_addr());
    let user = receiver.user;
    drop(receiver);
    for request in 1..=3u64 {
        sender.relay(request, request, &[user], b"waits");
    }
    for request in 1..=3 {
        assert!(matches!(sender.next(), HubMessageV2::Stored(s) if s.request == request));
    }
    drop(sender);
    let stats = hub.shutdown();
    assert_eq!(
        (
            stats.sessions_durable,
            stats.sessions_online,
            stats.inbox_entries,
            stats.inbox_bytes
        ),
        (2, 0, 3, 15),
        "{stats}"
    );
}

#[test]
fn a_resume_takes_the_session_over_from_a_live_connection() {
    let hub = start(2, |_| {});
    let mut sender = RawV2::durable(hub.local_addr());
    let mut first = RawV2::durable(hub.local_addr());
    sender.relay(1, 1, &[first.user], b"before");
    assert_eq!(deliver(first.next()).1, 1);
    let mut second = RawV2::resume(hub.local_addr(), first.user, first.token);
    let closing = first.until_closed();
    assert!(
        matches!(closing.last(), Some(HubMessageV2::Error(e)) if e.code == ErrorCodeV2::SessionTakenOver.to_wire()),
        "{closing:?}"
    );
    // Unacked on the old connection: redelivered on the new one.
    let HubMessageV2::DeliverV2(again) = second.next() else {
        panic!("expected the redelivery")
    };
    assert_eq!(
        (
            again.seq,
            again.flags & relayhub_protocol::flags::REDELIVERY
        ),
        (1, 1)
    );
    sender.relay(2, 2, &[second.user], b"after");
    assert_eq!(deliver(second.next()).2, b"after");
}

#[test]
fn a_wrong_token_gets_resume_rejected_and_nothing_else() {
    let hub = start(2, |_| {});
    let victim = RawV2::durable(hub.local_addr());
    for attempt in 0..6u8 {
        let mut token = victim.token;
        token[usize::from(attempt) % 16] ^= 0x80;
        let (mut client, first) =
            RawV2::open(hub.local_addr(), Hello::resume(5, victim.user, token));
        match first {
            HubMessageV2::Error(error) => {
                assert_eq!(error.code, ErrorCodeV2::ResumeRejected.to_wire());
                assert_eq!((error.request, error.detail), (5, 0));
            }
            other => panic!("expected ResumeRejected, got {other:?}"),
        }
        assert!(
            client.until_closed().is_empty(),
            "nothing after the refusal"
        );
    }
    assert!(hub.stats().resumes_rejected >= 6);
}

// ----- takeovers, tokens, floods, flow control, expiry, mixed versions -----

/// Waits (at most `EVENT_TIMEOUT`) until the hub's summed counters satisfy
/// `done`; returns them.
fn await_stats(hub: &Hub, what: &str, done: impl Fn(&StatsSnapshot) -> bool) -> StatsSnapshot {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let stats = hub.stats();
        if done(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {EVENT_TIMEOUT:?}: {stats}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads one `Stored` (no duplicate, `request` = `message_id`) into `stored`;
/// any other frame fails the test.
fn read_stored(sender: &mut RawV2, stored: &mut BTreeSet<u64>) {
    match sender.next() {
        HubMessageV2::Stored(answer) => {
            assert_eq!(answer.request, answer.message_id);
            assert!(!answer.duplicate, "{answer:?}");
            assert!(
                stored.insert(answer.request),
                "a second Stored for {answer:?}"
            );
        }
        other => panic!("sender {}: expected Stored, got {other:?}", sender.user),
    }
}

/// `(seq, flags)` of each delivery in `frames`; any other frame fails the test.
fn seqs(frames: &[HubMessageV2]) -> Vec<(u64, u32)> {
    frames
        .iter()
        .map(|frame| match frame {
            HubMessageV2::DeliverV2(deliver) => (deliver.seq, deliver.flags),
            other => panic!("expected a delivery, got {other:?}"),
        })
        .collect()
}

/// What a durable receiver hands to its application: a delivery at or below
/// the highest `seq` already handed on is a redelivery, and is dropped.
#[derive(Default)]
struct Dedup {
    highest: u64,
    handed: Vec<DeliverV2>,
    dropped: Vec<DeliverV2>,
}

impl Dedup {
    /// True when `deliver` was handed on.
    fn offer(&mut self, deliver: DeliverV2) -> bool {
        if deliver.seq <= self.highest {
            self.dropped.push(deliver);
            return false;
        }
        self.highest = deliver.seq;
        self.handed.push(deliver);
        true
    }
}

/// A receiver is taken over again and again (resumed on a new connection
/// with its latest token, landing on either shard) while two senders, one
/// on its shard and one on the other, relay to it without pause. After
/// dropping redeliveries by `seq`, it has every `Stored` message exactly
/// once, in each sender's order; each old connection ended with
/// `SessionTakenOver`, after everything queued for it.
#[test]
fn takeovers_while_messages_flow_lose_nothing_and_dedup_leaves_each_message_once() {
    const SHARDS: usize = 2;
    const PER_SENDER: u64 = 400;
    /// A sender stays at most this many messages ahead of what the
    /// receiver handed on, so the takeovers happen mid-stream.
    const AHEAD: u64 = 30;
    const TAKEOVER_EVERY: usize = 40;
    /// At least this many takeovers, and until one resume landed on the
    /// session's shard and one was handed over from the other.
    const TAKEOVERS: usize = 6;
    const ACK_EVERY: usize = 16;
    let hub = start(SHARDS, |_| {});
    let addr = hub.local_addr();
    let mut receiver = RawV2::durable(addr);
    let user = receiver.user;
    let home = owner(user, SHARDS);
    let senders = [
        RawV2::durable_on(addr, home, SHARDS),
        RawV2::durable_on(addr, 1 - home, SHARDS),
    ];
    let from: Vec<u64> = senders.iter().map(|sender| sender.user).collect();
    let before = hub.stats();
    // How many messages of each sender the receiver has handed on.
    let progress = Arc::new((Mutex::new([0u64; 2]), Condvar::new()));
    let threads: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(index, mut sender)| {
            let progress = progress.clone();
            std::thread::spawn(move || {
                let mut stored = BTreeSet::new();
                let mut waiting = 0;
                for n in 1..=PER_SENDER {
                    let (handed, wake) = &*progress;
                    let (handed, wait) = wake
                        .wait_timeout_while(handed.lock().unwrap(), EVENT_TIMEOUT, |handed| {
                            n > handed[index] + AHEAD
                        })
                        .unwrap();
                    assert!(
                        !wait.timed_out(),
                        "sender {index}: the receiver stalled at {}",
                        handed[index]
                    );
                    drop(handed);
                    sender.relay(n, n, &[user], n.to_string().as_bytes());
                    waiting += 1;
                    while waiting > 8 {
                        read_stored(&mut sender, &mut stored);
                        waiting -= 1;
                    }
                }
                for _ in 0..waiting {
                    read_stored(&mut sender, &mut stored);
                }
                assert_eq!(stored, (1..=PER_SENDER).collect::<BTreeSet<_>>());
                sender
            })
        })
        .collect();

    let mut dedup = Dedup::default();
    let hand_on = |dedup: &mut Dedup, frame: HubMessageV2| -> bool {
        let HubMessageV2::DeliverV2(deliver) = frame else {
            panic!("the receiver expected a delivery, got {frame:?}");
        };
        let index = from
            .iter()
            .position(|&sender| sender == deliver.from)
            .expect("a delivery from one of the senders");
        if !dedup.offer(deliver) {
            return false;
        }
        let (handed, wake) = &*progress;
        handed.lock().unwrap()[index] += 1;
        wake.notify_all();
        true
    };
    let mut token = receiver.token;
    let (mut takeovers, mut since_takeover, mut unacked) = (0, 0, 0);
    // Takeovers whose resume landed on the session's shard, and handed over.
    let (mut local, mut handed_over) = (0, 0);
    while dedup.handed.len() < 2 * PER_SENDER as usize {
        let frame = receiver.next();
        if !hand_on(&mut dedup, frame) {
            continue;
        }
        since_takeover += 1;
        unacked += 1;
        // Here at least the delivery just handed on is unacked: the new
        // connection must redeliver it.
        let enough = takeovers >= TAKEOVERS && local > 0 && handed_over > 0;
        if since_takeover >= TAKEOVER_EVERY && !enough {
            let request = 100 + takeovers as u64;
            let handoffs = hub.stats().handoffs_in;
            let (next, first) = RawV2::open(addr, Hello::resume(request, user, token));
            if hub.stats().handoffs_in > handoffs {
                handed_over += 1;
            } else {
                local += 1;
            }
            match first {
                HubMessageV2::WelcomeV2(welcome) => assert!(
                    welcome.resumed && welcome.durable && welcome.user == user,
                    "{welcome:?}"
                ),
                other => panic!("takeover {takeovers} refused: {other:?}"),
            }
            token = next.token;
            let mut rest = receiver.until_closed();
            let last = rest.pop();
            assert_eq!(
                last.as_ref().and_then(error_of),
                Some((ErrorCodeV2::SessionTakenOver, 0, 0)),
                "the old connection's last frame: {last:?}"
            );
            for frame in rest {
                hand_on(&mut dedup, frame);
            }
            receiver = next;
            takeovers += 1;
            since_takeover = 0;
        }
        if unacked >= ACK_EVERY {
            receiver.ack(dedup.highest);
            unacked = 0;
        }
    }
    let senders: Vec<RawV2> = threads
        .into_iter()
        .map(|thread| thread.join().expect("a sender failed"))
        .collect();
    assert!(
        takeovers >= TAKEOVERS && local > 0 && handed_over > 0,
        "{takeovers} takeovers, {local} resumed on the session's shard"
    );

    // Every message of each sender once, in the order it was relayed.
    for (index, sender) in senders.iter().enumerate() {
        let bodies: Vec<u64> = dedup
            .handed
            .iter()
            .filter(|deliver| deliver.from == sender.user)
            .map(|deliver| String::from_utf8_lossy(&deliver.body).parse().unwrap())
            .collect();
        assert_eq!(
            bodies,
            (1..=PER_SENDER).collect::<Vec<_>>(),
            "sender {index}"
        );
    }
    // Nothing expired, so the handed-on sequence has no gap; only
    // redeliveries were dropped, and nothing handed on was one (each old
    // connection got everything queued for it).
    let handed: Vec<u64> = dedup.handed.iter().map(|deliver| deliver.seq).collect();
    assert_eq!(handed, (1..=2 * PER_SENDER).collect::<Vec<_>>());
    assert!(dedup
        .handed
        .iter()
        .all(|deliver| deliver.flags & flags::REDELIVERY == 0));
    assert!(dedup.dropped.len() >= takeovers, "{}", dedup.dropped.len());
    assert!(dedup
        .dropped
        .iter()
        .all(|deliver| deliver.flags & flags::REDELIVERY != 0));
    // Nothing more is on its way to the receiver.
    assert!(receiver.until_echo(1).is_empty());
    let stats = hub.stats();
    assert_eq!(stats.takeovers - before.takeovers, takeovers as u64);
    assert_eq!(stats.handoffs_in - before.handoffs_in, handed_over);
    assert_eq!(stats.resumes_rejected, before.resumes_rejected);
}

/// Resumes presenting a token the session no longer accepts, another
/// user's token, or this session's token for another user are refused
/// alike (`ResumeRejected`, the `Hello`'s request, detail 0) and closed
/// with nothing else; the session's live connection notices nothing, and
/// the current token still resumes it with its inbox whole.
#[test]
fn an_outdated_or_foreign_token_is_rejected_and_the_session_is_untouched() {
    let hub = start(2, |_| {});
    let addr = hub.local_addr();
    let mut sender = RawV2::durable(addr);
    let other = RawV2::durable(addr);
    let (other_user, other_token) = (other.user, other.token);
    drop(other);
    // Tokens: A at creation; a resume with A gets B (valid: B, A); a resume
    // with B gets C (valid: C, B). A is outdated.
    let created = RawV2::durable(addr);
    let (user, a) = (created.user, created.token);
    drop(created);
    let b = RawV2::resume(addr, user, a).token;
    let mut live = RawV2::resume(addr, user, b);
    let c = live.token;
    let mut stored = BTreeSet::new();
    for n in 1..=3 {
        sender.relay(n, n, &[user], format!("m{n}").as_bytes());
    }
    for _ in 1..=3 {
        read_stored(&mut sender, &mut stored);
    }
    for seq in 1..=3 {
        assert_eq!(
            deliver(live.next()),
            (sender.user, seq, format!("m{seq}").into_bytes())
        );
    }

    let refused = |request: u64, resume_user: u64, token: ResumeToken, what: &str| {
        let (mut client, first) = RawV2::open(addr, Hello::resume(request, resume_user, token));
        assert_eq!(
            error_of(&first),
            Some((ErrorCodeV2::ResumeRejected, request, 0)),
            "{what}: {first:?}"
        );
        assert!(
            client.until_closed().is_empty(),
            "{what}: more after the refusal"
        );
    };
    let rejected_before = hub.stats().resumes_rejected;
    // Each a few times, so that some land on the other shard (hand-off).
    for round in 0..4 {
        let request = 10 * round;
        refused(request + 1, user, a, "the outdated token");
        refused(request + 2, user, other_token, "another user's valid token");
        refused(
            request + 3,
            other_user,
            c,
            "this session's token for another user",
        );
    }
    assert_eq!(hub.stats().resumes_rejected - rejected_before, 12);

    // The live connection was not disturbed.
    sender.relay(4, 4, &[user], b"m4");
    read_stored(&mut sender, &mut stored);
    assert_eq!(deliver(live.next()), (sender.user, 4, b"m4".to_vec()));
    assert!(live.until_echo(5).is_empty(), "nothing but the delivery");
    drop(live);

    // The current token resumes; nothing was acked, so all four come again.
    let mut again = RawV2::resume(addr, user, c);
    let frames: Vec<HubMessageV2> = (0..4).map(|_| again.next()).collect();
    assert_eq!(
        seqs(&frames),
        (1..=4)
            .map(|seq| (seq, flags::REDELIVERY))
            .collect::<Vec<_>>()
    );
    assert!(again.until_echo(6).is_empty());
    // Valid now: the token just issued and C; B is outdated too.
    refused(
        50,
        user,
        b,
        "the token before the last rotation, once C was presented",
    );
    drop(again);
    // The other user's session was not touched either.
    let other = RawV2::resume(addr, other_user, other_token);
    assert_eq!(other.user, other_user);
}

/// 200 resumes at once against four sessions that are connected and hold
/// unacked messages: 8 per session with the session's current token,
/// racing each other, and 42 with a wrong one (random tokens, another
/// session's token, ids with no session). What the protocol says happens,
/// exactly: every wrong one gets `ResumeRejected` and nothing else. Every
/// right one is accepted, since the token it presents stays valid as the
/// previous token after each rotation, and takes the session over from the
/// connection before it: each welcomed connection gets the whole inbox
/// (redelivered), then `SessionTakenOver`, except the last one. A bystander
/// pair (version 1 across shards, and a version-2 echo) is served
/// throughout, and the session's messages are all still there afterwards.
#[test]
fn a_flood_of_racing_resumes_rotates_in_turn_and_loses_nothing() {
    resume_flood(|_| {});
}

/// The same flood with the log on disk, where each resume's `WelcomeV2`
/// waits for its new token to be durable: the resumes racing for one
/// session are welcomed in turn, each taking the session over from the one
/// before when it is welcomed.
#[test]
fn a_flood_of_racing_resumes_on_a_disk_hub_rotates_in_turn_and_loses_nothing() {
    let dir = ScratchDir::new("resume-flood");
    let path = dir.0.clone();
    resume_flood(move |config| {
        config.storage = Storage::Disk;
        config.data_dir = path;
        config.fsync = Fsync::Always;
    });
}

/// A directory of its own under the system's temporary directory, removed
/// when dropped.
struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    fn new(name: &str) -> ScratchDir {
        let dir =
            std::env::temp_dir().join(format!("relayhub-sessions-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        ScratchDir(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn resume_flood(tweak: impl FnOnce(&mut Config)) {
    const SESSIONS: usize = 4;
    const RIGHT: usize = 8;
    const WRONG: usize = 42;
    const INBOX: u64 = 5;
    let hub = start(2, tweak);
    let addr = hub.local_addr();
    let mut sender = RawV2::durable(addr);
    let mut originals: Vec<RawV2> = (0..SESSIONS).map(|_| RawV2::durable(addr)).collect();
    let users: Vec<u64> = originals.iter().map(|session| session.user).collect();
    let tokens: Vec<ResumeToken> = originals.iter().map(|session| session.token).collect();
    let body = |session: usize, n: u64| format!("{session}:{n}").into_bytes();
    let mut stored = BTreeSet::new();
    for (session, &user) in users.iter().enumerate() {
        for n in 1..=INBOX {
            let request = session as u64 * 100 + n;
            sender.relay(request, request, &[user], &body(session, n));
        }
    }
    for _ in 0..SESSIONS as u64 * INBOX {
        read_stored(&mut sender, &mut stored);
    }
    for (session, original) in originals.iter_mut().enumerate() {
        for n in 1..=INBOX {
            assert_eq!(deliver(original.next()), (sender.user, n, body(session, n)));
        }
    }
    let before = hub.stats();

    enum Attempt {
        Right(usize),
        Wrong(u64, ResumeToken),
    }
    let mut attempts = Vec::new();
    for session in 0..SESSIONS {
        attempts.extend((0..RIGHT).map(|_| Attempt::Right(session)));
        for k in 0..WRONG {
            attempts.push(match k % 3 {
                0 => {
                    let mut token = [0; 16];
                    getrandom::fill(&mut token).unwrap();
                    token[0] |= 1;
                    Attempt::Wrong(users[session], token)
                }
                1 => Attempt::Wrong(users[session], tokens[(session + 1) % SESSIONS]),
                _ => Attempt::Wrong(1_000_000 + (session * WRONG + k) as u64, tokens[session]),
            });
        }
    }
    assert_eq!(attempts.len(), 200);
    let rights = SESSIONS * RIGHT;
    // Each right resume says when it has had its answer (a channel, not a
    // barrier, so that a failed attempt fails the test instead of hanging it).
    let (answered, answers) = std::sync::mpsc::channel();
    let start_together = Barrier::new(attempts.len());
    let flood_over = AtomicBool::new(false);
    /// Ends the bystander's loop however the flood ends.
    struct Over<'a>(&'a AtomicBool);
    impl Drop for Over<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let [mut ping, mut pong] = {
        let mut groups = clients_per_shard(&hub, 2, 1);
        [groups[0].remove(0), groups[1].remove(0)]
    };
    let mut echoer = RawV2::ephemeral(addr);
    let issued: Vec<(usize, ResumeToken)> = std::thread::scope(|scope| {
        let over = Over(&flood_over);
        let bystander = scope.spawn(|| {
            let mut rounds = 0u64;
            while !flood_over.load(Ordering::Acquire) || rounds == 0 {
                rounds += 1;
                let body = rounds.to_le_bytes();
                ping.relay(&[pong.user_id()], &body).unwrap();
                expect_deliver(&mut pong, ping.user_id(), &body);
                assert!(echoer.until_echo(rounds).is_empty());
            }
            rounds
        });
        let threads: Vec<_> = attempts
            .iter()
            .enumerate()
            .map(|(index, attempt)| {
                let (start_together, answered) = (&start_together, answered.clone());
                let (users, tokens, body) = (&users, &tokens, &body);
                scope.spawn(move || {
                    let request = index as u64 + 1;
                    start_together.wait();
                    match *attempt {
                        Attempt::Right(session) => {
                            let user = users[session];
                            let hello = Hello::resume(request, user, tokens[session]);
                            let (mut client, first) = RawV2::open(addr, hello);
                            match first {
                                HubMessageV2::WelcomeV2(welcome) => {
                                    assert!(welcome.resumed && welcome.user == user, "{welcome:?}")
                                }
                                other => panic!("a right resume of {user}: {other:?}"),
                            }
                            for n in 1..=INBOX {
                                let HubMessageV2::DeliverV2(again) = client.next() else {
                                    panic!("expected the inbox");
                                };
                                assert_eq!(
                                    (again.seq, again.flags, again.body),
                                    (n, flags::REDELIVERY, body(session, n))
                                );
                            }
                            answered.send(()).unwrap();
                            // A later resume takes this one over, or the
                            // main thread takes the last one over.
                            let closing = client.until_closed();
                            assert_eq!(
                                closing.iter().map(error_of).collect::<Vec<_>>(),
                                [Some((ErrorCodeV2::SessionTakenOver, 0, 0))],
                                "{closing:?}"
                            );
                            Some((session, client.token))
                        }
                        Attempt::Wrong(user, token) => {
                            let (mut client, first) =
                                RawV2::open(addr, Hello::resume(request, user, token));
                            assert_eq!(
                                error_of(&first),
                                Some((ErrorCodeV2::ResumeRejected, request, 0)),
                                "{first:?}"
                            );
                            assert!(client.until_closed().is_empty());
                            None
                        }
                    }
                })
            })
            .collect();
        drop(answered);
        for _ in 0..rights {
            answers
                .recv_timeout(EVENT_TIMEOUT)
                .expect("every right resume is answered");
        }
        // Every right resume was handled: the token each presented is still
        // the previous one, so it takes the last holder over.
        let finals: Vec<RawV2> = users
            .iter()
            .zip(&tokens)
            .map(|(&user, &token)| RawV2::resume(addr, user, token))
            .collect();
        let issued = threads
            .into_iter()
            .filter_map(|thread| thread.join().expect("an attempt failed"))
            .collect();
        drop(over);
        let rounds = bystander.join().expect("the bystander was not served");
        assert!(rounds >= 1);
        // The inbox is whole: everything again, then live messages.
        for ((session, mut last), &user) in finals.into_iter().enumerate().zip(&users) {
            for n in 1..=INBOX {
                let HubMessageV2::DeliverV2(again) = last.next() else {
                    panic!("expected the inbox");
                };
                assert_eq!(
                    (again.seq, again.flags, again.body),
                    (n, flags::REDELIVERY, body(session, n))
                );
            }
            last.ack(INBOX);
            let request = 1000 + session as u64;
            sender.relay(request, request, &[user], b"after");
            read_stored(&mut sender, &mut stored);
            assert_eq!(
                deliver(last.next()),
                (sender.user, INBOX + 1, b"after".to_vec())
            );
        }
        issued
    });
    // The originals were taken over first.
    for original in &mut originals {
        let closing = original.until_closed();
        assert_eq!(
            closing.iter().map(error_of).collect::<Vec<_>>(),
            [Some((ErrorCodeV2::SessionTakenOver, 0, 0))],
            "{closing:?}"
        );
    }
    let stats = hub.stats();
    let resumed = (rights + SESSIONS) as u64;
    assert_eq!(stats.sessions_resumed - before.sessions_resumed, resumed);
    assert_eq!(stats.takeovers - before.takeovers, resumed);
    assert_eq!(
        stats.resumes_rejected - before.resumes_rejected,
        (SESSIONS * WRONG) as u64
    );
    // The tokens the flood's winners were given are all outdated now.
    assert_eq!(issued.len(), rights);
    for (index, (session, token)) in issued.into_iter().enumerate().step_by(5) {
        let request = 5000 + index as u64;
        let (mut client, first) = RawV2::open(addr, Hello::resume(request, users[session], token));
        assert_eq!(
            error_of(&first),
            Some((ErrorCodeV2::ResumeRejected, request, 0))
        );
        assert!(client.until_closed().is_empty());
    }
}

/// A receiver that never acks (and for a while does not even read): the
/// hub puts at most its inflight window on the wire (here the byte limit,
/// then the message limit, is the tighter one), keeps the rest in the
/// inbox up to `inbox_messages_max`, and refuses what is past it with a
/// non-fatal `InboxFull` to the sender, before that relay's `Stored`. The
/// receiver is never cut off as a slow consumer, though far more than its
/// outbound limit was sent to it; each ack lets the next entries out, in
/// order.
#[test]
fn a_receiver_that_never_acks_is_paced_by_its_window_and_its_inbox_is_bounded() {
    const BIG: usize = 256 << 10;
    const INBOX: u64 = 12;
    const INFLIGHT_BYTES: u64 = 600_000;
    let hub = start(2, |config| {
        config.outbound_bytes_max = 2 << 20;
        config.inflight_messages_max = 4;
        config.inflight_bytes_max = INFLIGHT_BYTES;
        config.inbox_messages_max = INBOX;
        config.inbox_bytes_max = 4 << 20;
    });
    let addr = hub.local_addr();
    let (mut receiver, first) = RawV2::open(addr, Hello::new_session(1, true));
    let HubMessageV2::WelcomeV2(welcome) = first else {
        panic!("{first:?}")
    };
    let limits = welcome.limits;
    assert_eq!(
        (
            limits.inflight_messages_max,
            limits.inflight_bytes_max,
            limits.inbox_messages_max,
            limits.outbound_bytes_max
        ),
        (4, INFLIGHT_BYTES, INBOX, 2 << 20)
    );
    let user = receiver.user;
    let mut sender = RawV2::durable_on(addr, 1 - owner(user, 2), 2);
    let from = sender.user;
    let big = |n: u64| {
        let mut body = vec![n as u8; BIG];
        body[..8].copy_from_slice(&n.to_le_bytes());
        body
    };

    // 3.5 MiB for a receiver whose outbound limit is 2 MiB, which reads
    // nothing meanwhile.
    for n in 1..=INBOX + 2 {
        sender.relay(n, n, &[user], &big(n));
    }
    let (mut stored, mut full) = (BTreeSet::new(), Vec::new());
    while stored.len() < INBOX as usize + 2 {
        match sender.next() {
            HubMessageV2::Stored(answer) => {
                assert!(!answer.duplicate);
                assert!(stored.insert(answer.request));
            }
            other => {
                let (code, request, detail) = error_of(&other).expect("Stored or an error");
                assert_eq!((code, detail), (ErrorCodeV2::InboxFull, user), "{other:?}");
                assert!(!stored.contains(&request), "InboxFull after the Stored");
                full.push(request);
            }
        }
    }
    assert_eq!(full, [INBOX + 1, INBOX + 2], "past the inbox limit");
    // The inbox holds exactly what it may (the gauges lag by the sweep).
    await_stats(&hub, "the inbox gauges", |stats| {
        stats.inbox_entries == INBOX && stats.inbox_bytes == INBOX * BIG as u64
    });

    // Two entries fit the byte window (a third would pass it), then nothing.
    let mut expected = 1;
    let mut check_batch = |receiver: &mut RawV2, request: u64, len: u64, bytes: usize| {
        let frames = receiver.until_echo(request);
        let got: Vec<(u64, u64)> = frames
            .iter()
            .map(|frame| match frame {
                HubMessageV2::DeliverV2(deliver) => {
                    assert_eq!((deliver.from, deliver.flags), (from, 0));
                    assert_eq!(deliver.body.len(), bytes);
                    let n = u64::from_le_bytes(deliver.body[..8].try_into().unwrap());
                    (deliver.seq, n)
                }
                other => panic!("expected a delivery, got {other:?}"),
            })
            .collect();
        let want: Vec<(u64, u64)> = (expected..expected + len).map(|seq| (seq, seq)).collect();
        assert_eq!(got, want);
        expected += len;
    };
    check_batch(&mut receiver, 100, 2, BIG);
    for ack in 1..INBOX / 2 {
        receiver.ack(2 * ack);
        check_batch(&mut receiver, 100 + ack, 2, BIG);
    }
    receiver.ack(INBOX);
    assert!(receiver.until_echo(200).is_empty());

    // Small bodies: the message limit is the tighter one.
    for n in 0..6 {
        let request = 20 + n;
        sender.relay(request, request, &[user], &(INBOX + 1 + n).to_le_bytes());
    }
    let mut small = BTreeSet::new();
    for _ in 0..6 {
        read_stored(&mut sender, &mut small);
    }
    check_batch(&mut receiver, 300, 4, 8);
    receiver.ack(INBOX + 4);
    check_batch(&mut receiver, 301, 2, 8);
    receiver.ack(INBOX + 6);
    assert!(receiver.until_echo(302).is_empty());

    let stats = hub.stats();
    assert_eq!((stats.slow_consumers, stats.inbox_full), (0, 2));
    assert_eq!(stats.acked, INBOX + 6);
}

/// `--message-ttl-ms`: an entry waiting for an offline session expires,
/// counted in `messages_expired`, and the resumed session never sees it
/// (only the gap in `seq`). An entry that expires while in flight frees its
/// place in the window: the entry waiting behind it goes out without any
/// ack, and acking the expired one afterwards is no error.
#[test]
fn an_entry_past_its_ttl_is_dropped_counted_and_never_delivered() {
    const TTL_MS: u64 = 1500;
    // Between the in-flight entry and the one behind it: more than the
    // expiry sweep's period, so the second outlives the sweep that expires
    // the first, and less than the lifetime, so it is stored while the
    // first is still in flight.
    const GAP: Duration = Duration::from_millis(1200);
    let hub = start(2, |config| {
        config.message_ttl_ms = TTL_MS;
        config.inflight_messages_max = 1;
    });
    let addr = hub.local_addr();
    let receiver = RawV2::durable(addr);
    let (user, token) = (receiver.user, receiver.token);
    drop(receiver);
    let mut sender = RawV2::durable_on(addr, 1 - owner(user, 2), 2);
    let mut stored = BTreeSet::new();
    sender.relay(1, 1, &[user], b"expires offline");
    read_stored(&mut sender, &mut stored);
    await_stats(&hub, "the offline entry's expiry", |stats| {
        stats.messages_expired >= 1
    });

    let mut receiver = RawV2::resume(addr, user, token);
    assert!(receiver.until_echo(1).is_empty(), "the expired entry came");
    sender.relay(2, 2, &[user], b"expires in flight");
    read_stored(&mut sender, &mut stored);
    assert_eq!(
        deliver(receiver.next()),
        (sender.user, 2, b"expires in flight".to_vec()),
        "seq 1 expired: a gap"
    );
    std::thread::sleep(GAP);
    sender.relay(3, 3, &[user], b"waited");
    read_stored(&mut sender, &mut stored);
    // The window holds one entry and seq 2 is never acked: seq 3 goes out
    // once seq 2 expired.
    assert_eq!(
        deliver(receiver.next()),
        (sender.user, 3, b"waited".to_vec())
    );
    assert_eq!(hub.stats().messages_expired, 2);
    receiver.ack(2);
    receiver.ack(3);
    assert!(receiver.until_echo(2).is_empty(), "acking an expired entry");
    let stats = hub.stats();
    assert_eq!((stats.messages_expired, stats.sessions_expired), (2, 0));
    assert_eq!(stats.acked, 1);
}

/// `--session-expiry-ms`: a session without a connection for that long is
/// dropped with its inbox (both counted); a resume then gets
/// `ResumeRejected`, and relays to its id get `UnknownReceiver`, in either
/// version. Connected sessions never expire.
#[test]
fn an_expired_session_is_gone_for_resumes_and_relays() {
    let hub = start(2, |config| config.session_expiry_ms = 300);
    let addr = hub.local_addr();
    // Every session but the receiver stays connected, so it is the only
    // one that may expire.
    let receiver = RawV2::durable(addr);
    let (user, token) = (receiver.user, receiver.token);
    drop(receiver);
    let mut sender = RawV2::durable(addr);
    let mut connected = RawV2::durable(addr);
    // Version-1 clients on both shards, so both routes see the expired id.
    let mut v1s = clients_per_shard(&hub, 2, 1);
    let mut stored = BTreeSet::new();
    sender.relay(1, 1, &[user], b"lost with the session");
    read_stored(&mut sender, &mut stored);
    await_stats(&hub, "the session's expiry", |stats| {
        stats.sessions_expired >= 1
    });

    let (mut client, first) = RawV2::open(addr, Hello::resume(7, user, token));
    assert_eq!(
        error_of(&first),
        Some((ErrorCodeV2::ResumeRejected, 7, 0)),
        "{first:?}"
    );
    assert!(client.until_closed().is_empty());
    sender.relay(2, 2, &[user, connected.user], b"after");
    assert_eq!(
        error_of(&sender.next()),
        Some((ErrorCodeV2::UnknownReceiver, 2, user))
    );
    read_stored(&mut sender, &mut stored);
    assert_eq!(
        deliver(connected.next()),
        (sender.user, 1, b"after".to_vec())
    );
    for group in &mut v1s {
        let v1 = &mut group[0];
        let request = v1.relay(&[user], b"v1").unwrap();
        expect_error(v1, ErrorCode::UnknownReceiver, request, user);
    }

    let stats = hub.stats();
    assert_eq!((stats.sessions_expired, stats.messages_expired), (1, 1));
    // The sessions that stayed connected are still there.
    assert!(connected.until_echo(3).is_empty());
    let connected = RawV2::resume(addr, connected.user, connected.token);
    drop(connected);
}

/// Version-1 and version-2 clients on different shards, as "Mixed
/// versions" in docs/protocol.md says: a version-1 relay to an offline
/// durable session waits in its inbox (`message_id` 0, no `Stored` for the
/// sender, `ReceiverDropped` past the inbox limit), a version-1 relay to an
/// ephemeral version-2 session is a `DeliverV2` with `seq` 0, and a
/// version-2 relay reaches a version-1 client as a plain `Deliver`, with a
/// `Stored` and no receipt.
#[test]
fn version_one_and_two_clients_relay_to_each_other_across_shards() {
    let hub = start(2, |config| config.inbox_messages_max = 3);
    let addr = hub.local_addr();
    let mut v1 = clients_per_shard(&hub, 2, 1).remove(0).remove(0);
    let one = v1.user_id();
    let durable = RawV2::durable_on(addr, 1, 2);
    let (user, token) = (durable.user, durable.token);
    drop(durable);
    let mut ephemeral = RawV2::ephemeral_on(addr, 1, 2);

    let stored_before = hub.stats().stored;
    for n in 1..=3 {
        v1.relay(&[user], format!("v1 {n}").as_bytes()).unwrap();
    }
    await_stats(&hub, "three entries stored", |stats| {
        stats.stored == stored_before + 3
    });
    let dropped = v1.relay(&[user], b"v1 4").unwrap();
    expect_error(&mut v1, ErrorCode::ReceiverDropped, dropped, user);
    v1.relay(&[ephemeral.user], b"v1 to ephemeral").unwrap();
    match ephemeral.next() {
        HubMessageV2::DeliverV2(got) => assert_eq!(
            (got.from, got.seq, got.message_id, got.flags, &got.body[..]),
            (one, 0, 0, 0, &b"v1 to ephemeral"[..])
        ),
        other => panic!("{other:?}"),
    }

    let mut durable = RawV2::resume(addr, user, token);
    for n in 1..=3 {
        match durable.next() {
            HubMessageV2::DeliverV2(got) => assert_eq!(
                (got.from, got.seq, got.message_id, got.flags, got.body),
                (one, n, 0, 0, format!("v1 {n}").into_bytes())
            ),
            other => panic!("{other:?}"),
        }
    }
    // Version 2 to version 1 across shards, receipt asked: a Deliver, a
    // Stored, no receipt (a version-1 receiver never acks).
    durable.relay_flags(1, 1, flags::RECEIPT, &[one], b"v2 to v1");
    match durable.next() {
        HubMessageV2::Stored(stored) => {
            assert_eq!(
                (stored.request, stored.message_id, stored.duplicate),
                (1, 1, false)
            )
        }
        other => panic!("{other:?}"),
    }
    expect_deliver(&mut v1, user, b"v2 to v1");
    durable.ack(3);
    // Online now, and with room again: a version-1 relay is delivered live.
    v1.relay(&[user], b"v1 live").unwrap();
    match durable.next() {
        HubMessageV2::DeliverV2(got) => assert_eq!(
            (got.from, got.seq, got.message_id, got.flags, got.body),
            (one, 4, 0, 0, b"v1 live".to_vec())
        ),
        other => panic!("{other:?}"),
    }
    durable.relay(2, 2, &[ephemeral.user], b"v2 to ephemeral");
    match ephemeral.next() {
        HubMessageV2::DeliverV2(got) => assert_eq!(
            (got.from, got.seq, got.message_id, got.flags, &got.body[..]),
            (user, 0, 2, 0, &b"v2 to ephemeral"[..])
        ),
        other => panic!("{other:?}"),
    }
    match durable.next() {
        HubMessageV2::Stored(stored) => assert_eq!((stored.request, stored.duplicate), (2, false)),
        other => panic!("{other:?}"),
    }
    durable.ack(4);
    assert!(durable.until_echo(3).is_empty(), "no receipt, nothing else");
    // The version-1 client got nothing but what is checked above: no
    // Stored, no version-2 code.
    assert_eq!(v1.echo(b"barrier").unwrap(), &b"barrier"[..]);
    assert_eq!(v1.pending_events(), 0);
    assert!(ephemeral.until_echo(4).is_empty());
}

/// Large bodies (delivered from the buffer they arrived in) wait in a
/// durable inbox while their receiver is away and arrive intact on resume,
/// pipelined, after later frames were read into the sender's decoder.
#[test]
fn large_bodies_wait_in_an_inbox_intact() {
    let hub = start(2, |_| {});
    let mut sender = RawV2::durable(hub.local_addr());
    let receiver = RawV2::durable(hub.local_addr());
    let (user, token) = (receiver.user, receiver.token);
    drop(receiver);
    let bodies: Vec<Vec<u8>> = [relayhub_protocol::BODY_BYTES_MAX, 400_000, 3, 262_144]
        .iter()
        .enumerate()
        .map(|(index, &len)| (0..len).map(|i| (i * 13 + index * 101) as u8).collect())
        .collect();
    for (index, body) in bodies.iter().enumerate() {
        let request = index as u64 + 1;
        sender.relay(request, request, &[user], body);
    }
    for request in 1..=bodies.len() as u64 {
        match sender.next() {
            HubMessageV2::Stored(stored) => assert_eq!(stored.request, request),
            other => panic!("expected Stored, got {other:?}"),
        }
    }
    let mut receiver = RawV2::resume(hub.local_addr(), user, token);
    for (index, body) in bodies.iter().enumerate() {
        let (from, seq, got) = deliver(receiver.next());
        assert_eq!((from, seq), (sender.user, index as u64 + 1));
        assert!(got == *body, "body {index} intact");
    }
    hub.shutdown();
}
