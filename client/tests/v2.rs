//! The version-2 client and `relayhub-cli --session` against the real hub
//! (relayhub-server, in-process on an ephemeral loopback port, in-memory
//! storage unless said otherwise): offline delivery and resume with in-order
//! redelivery, takeover, retry dedup, receipts, reconnect after the hub cut
//! the connection, reconnect across a hub restart (disk storage), and the
//! CLI walkthrough.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use relayhub_client::session::{
    ErrorCodeV2, Options, ReconnectPolicy, ReconnectingClient, Resume, SessionClient, SessionError,
    SessionEvent, SessionState,
};
use relayhub_server::{
    config::{Fsync, Storage},
    Config, Hub,
};

const CLI: &str = env!("CARGO_BIN_EXE_relayhub-cli");
const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(10);

fn start(shards: usize, tweak: impl FnOnce(&mut Config)) -> Hub {
    let mut config = Config::for_tests(shards);
    tweak(&mut config);
    Hub::start(config).expect("hub starts")
}

fn manual() -> Options {
    Options {
        auto_ack: false,
        ..Options::default()
    }
}

fn resume_of(client: &SessionClient) -> Options {
    Options {
        resume: Some(Resume {
            user: client.user(),
            token: client.token(),
        }),
        ..manual()
    }
}

fn next(client: &mut SessionClient) -> SessionEvent {
    match client.recv_timeout(LONG) {
        Ok(Some(event)) => event,
        Ok(None) => panic!("user {}: no event within {LONG:?}", client.user()),
        Err(error) => panic!("user {}: {error}", client.user()),
    }
}

/// The next delivery's (from, seq, body, redelivery), skipping other events.
fn next_delivery(client: &mut SessionClient) -> (u64, u64, String, bool) {
    loop {
        if let SessionEvent::Deliver {
            from,
            seq,
            body,
            redelivery,
            ..
        } = next(client)
        {
            return (
                from,
                seq,
                String::from_utf8(body.to_vec()).unwrap(),
                redelivery,
            );
        }
    }
}

fn send_stored(client: &mut SessionClient, to: &[u64], body: &str) -> u64 {
    let sent = client.relay(to, body.as_bytes(), false).unwrap();
    let outcome = client.wait_stored(sent, LONG).unwrap();
    assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
    assert!(!outcome.duplicate);
    sent.message_id
}

#[test]
fn offline_delivery_then_resume_redelivers_in_order() {
    let hub = start(2, |_| {});
    let addr = hub.local_addr();
    let mut alice = SessionClient::connect(addr, manual()).unwrap();
    let mut bob = SessionClient::connect(addr, manual()).unwrap();
    assert!(alice.durable() && bob.durable());
    let (a, b) = (alice.user(), bob.user());

    send_stored(&mut alice, &[b], "one");
    assert_eq!(next_delivery(&mut bob), (a, 1, "one".into(), false));
    // Bob goes away without acking; two more arrive while he is away.
    let resume = resume_of(&bob);
    drop(bob);
    send_stored(&mut alice, &[b], "two");
    send_stored(&mut alice, &[b], "three");

    let mut bob = SessionClient::connect(addr, resume).unwrap();
    assert!(bob.resumed());
    assert_eq!(bob.user(), b);
    assert_eq!(next_delivery(&mut bob), (a, 1, "one".into(), true));
    assert_eq!(next_delivery(&mut bob), (a, 2, "two".into(), false));
    assert_eq!(next_delivery(&mut bob), (a, 3, "three".into(), false));
    bob.ack(2).unwrap();
    let resume = resume_of(&bob);
    bob.close().unwrap();

    // A process that handed out 3 but died before acking it: the hub
    // redelivers 3, the client drops it, and acks it again on the resume.
    let mut bob = SessionClient::connect(
        addr,
        Options {
            delivered_seq: 3,
            ..resume
        },
    )
    .unwrap();
    assert!(bob.recv_timeout(SHORT).unwrap().is_none());
    // At least 3 comes back and is dropped; 1 and 2 too when the hub took
    // the resume before the closed connection's `Ack{2}` (both race to the
    // session's shard): either way nothing reaches the application.
    let (by_seq, by_id) = bob.duplicates_dropped();
    assert!(
        (1..=3).contains(&by_seq) && by_id == 0,
        "{:?}",
        (by_seq, by_id)
    );
    let resume = resume_of(&bob);
    bob.close().unwrap();
    let mut bob = SessionClient::connect(addr, resume).unwrap();
    assert!(
        bob.recv_timeout(SHORT).unwrap().is_none(),
        "3 was acked on the resume: nothing is redelivered"
    );
    send_stored(&mut alice, &[b], "four");
    assert_eq!(next_delivery(&mut bob), (a, 4, "four".into(), false));
    hub.shutdown();
}

#[test]
fn takeover_closes_the_old_connection_and_redelivers_to_the_new() {
    let hub = start(2, |_| {});
    let addr = hub.local_addr();
    let mut alice = SessionClient::connect(addr, manual()).unwrap();
    let mut bob = SessionClient::connect(addr, manual()).unwrap();
    let b = bob.user();
    send_stored(&mut alice, &[b], "unacked");
    assert_eq!(next_delivery(&mut bob).2, "unacked");

    let mut thief = SessionClient::connect(addr, resume_of(&bob)).unwrap();
    match bob.recv_timeout(LONG) {
        Err(SessionError::Hub(error)) => assert_eq!(error.code, ErrorCodeV2::SessionTakenOver),
        other => panic!("expected SessionTakenOver, got {other:?}"),
    }
    assert!(bob.is_closed());
    let (_, seq, body, redelivery) = next_delivery(&mut thief);
    assert_eq!((seq, body.as_str(), redelivery), (1, "unacked", true));

    // The first token stays valid until the one that replaced it is used;
    // then it is outdated.
    let stale = resume_of(&bob);
    let rotated = resume_of(&thief);
    drop(thief);
    let again = SessionClient::connect(addr, rotated).unwrap();
    drop(again);
    let error = SessionClient::connect(addr, stale).unwrap_err();
    assert!(
        matches!(
            error,
            relayhub_client::session::ConnectError::ResumeRejected { .. }
        ),
        "{error:?}"
    );
    hub.shutdown();
}

#[test]
fn a_retried_message_id_is_stored_once() {
    let hub = start(1, |_| {});
    let addr = hub.local_addr();
    let mut alice = SessionClient::connect(addr, manual()).unwrap();
    let mut bob = SessionClient::connect(addr, manual()).unwrap();
    let b = bob.user();
    let id = send_stored(&mut alice, &[b], "once");
    let retry = alice.retry(id, &[b], b"once", false).unwrap();
    let outcome = alice.wait_stored(retry, LONG).unwrap();
    assert!(outcome.duplicate, "{outcome:?}");
    assert_eq!(next_delivery(&mut bob).2, "once");
    assert!(bob.recv_timeout(SHORT).unwrap().is_none(), "delivered once");
    hub.shutdown();
}

#[test]
fn receipts_come_back_once_the_receiver_acks() {
    let hub = start(2, |_| {});
    let addr = hub.local_addr();
    let mut alice = SessionClient::connect(addr, Options::default()).unwrap();
    let mut bob = SessionClient::connect(addr, Options::default()).unwrap();
    let b = bob.user();
    let sent = alice.relay(&[b, 999_999], b"ack me", true).unwrap();
    let outcome = alice.wait_stored(sent, LONG).unwrap();
    assert_eq!(outcome.errors.len(), 1);
    assert_eq!(outcome.errors[0].code, ErrorCodeV2::UnknownReceiver);
    assert_eq!(outcome.errors[0].detail, 999_999);
    assert_eq!(next_delivery(&mut bob).2, "ack me");
    // Bob's auto-ack goes out when he comes back for more.
    assert!(bob.recv_timeout(SHORT).unwrap().is_none());
    match next(&mut alice) {
        SessionEvent::Receipt {
            message_id,
            receiver,
            ..
        } => assert_eq!((message_id, receiver), (sent.message_id, b)),
        other => panic!("expected a receipt, got {other:?}"),
    }
    hub.shutdown();
}

#[test]
fn reconnecting_client_resumes_after_the_hub_cut_it_and_resends() {
    let hub = start(2, |config| config.idle_timeout_ms = 400);
    let addr = hub.local_addr();
    let mut bob = SessionClient::connect(addr, Options::default()).unwrap();
    let b = bob.user();
    let policy = ReconnectPolicy {
        attempts_max: Some(10),
        ..ReconnectPolicy::default()
    };
    let mut alice = ReconnectingClient::connect(addr, Options::default(), policy).unwrap();
    let first = alice.relay(&[b], b"before", false).unwrap();
    // Alice does not receive for a while: no keepalives, the hub cuts her
    // off (IdleTimeout); bob keeps his connection alive by receiving.
    let until = Instant::now() + Duration::from_millis(900);
    let mut got = Vec::new();
    while Instant::now() < until {
        if let Some(SessionEvent::Deliver { body, .. }) = bob.recv_timeout(SHORT).unwrap() {
            got.push(body);
        }
    }
    // Written into a connection the hub has closed: lost, or refused.
    let second = alice.relay(&[b], b"after", false).unwrap();
    let mut stored = Vec::new();
    let mut reconnected = false;
    let deadline = Instant::now() + LONG;
    while (stored.len() < 2 || alice.unstored() > 0) && Instant::now() < deadline {
        match alice.recv_timeout(SHORT).unwrap() {
            Some(SessionEvent::Stored {
                request, duplicate, ..
            }) => stored.push((request, duplicate)),
            Some(SessionEvent::Reconnected { .. }) => reconnected = true,
            _ => {}
        }
    }
    assert!(reconnected, "the hub's idle timeout cut alice off");
    assert!(alice.reconnects() >= 1);
    assert_eq!(alice.unstored(), 0);
    assert!(stored.iter().any(|&(request, _)| request == first.request));
    assert!(stored
        .iter()
        .any(|&(request, dup)| request == second.request && !dup));
    let until = Instant::now() + SHORT * 3;
    while Instant::now() < until {
        if let Some(SessionEvent::Deliver { body, .. }) = bob.recv_timeout(SHORT).unwrap() {
            got.push(body);
        }
    }
    assert_eq!(got, ["before", "after"], "each exactly once, in order");
    hub.shutdown();
}

#[test]
fn the_inflight_window_holds_back_entries_until_acked() {
    let hub = start(2, |config| config.inflight_messages_max = 8);
    let addr = hub.local_addr();
    let mut alice = SessionClient::connect(addr, manual()).unwrap();
    let bob = SessionClient::connect(addr, manual()).unwrap();
    let b = bob.user();
    let resume = resume_of(&bob);
    drop(bob);
    for index in 0..20 {
        let sent = alice
            .send_relay(&[b], format!("m{index}").as_bytes(), false)
            .unwrap();
        if index == 19 {
            alice.flush().unwrap();
            alice.wait_stored(sent, LONG).unwrap();
        }
    }
    let mut bob = SessionClient::connect(addr, resume).unwrap();
    assert_eq!(bob.limits().inflight_messages_max, 8);
    let mut seqs = Vec::new();
    while let Some(event) = bob.recv_timeout(SHORT).unwrap() {
        seqs.push(event.seq());
    }
    assert_eq!(
        seqs,
        (1..=8).collect::<Vec<_>>(),
        "a window's worth, then silence"
    );
    bob.ack(8).unwrap();
    while let Some(event) = bob.recv_timeout(SHORT).unwrap() {
        seqs.push(event.seq());
        if seqs.len() % 8 == 0 {
            bob.ack(event.seq()).unwrap();
        }
    }
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    hub.shutdown();
}

#[test]
fn keepalives_hold_a_waiting_session_past_the_idle_timeout() {
    let hub = start(1, |config| config.idle_timeout_ms = 300);
    let addr = hub.local_addr();
    let mut bob = SessionClient::connect(addr, Options::default()).unwrap();
    assert_eq!(bob.limits().idle_timeout_ms, 300);
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1200) {
        assert!(bob.recv_timeout(SHORT).unwrap().is_none());
    }
    let mut alice = SessionClient::connect(addr, Options::default()).unwrap();
    let sent = alice.relay(&[bob.user()], b"still there?", false).unwrap();
    alice.wait_stored(sent, LONG).unwrap();
    assert_eq!(next_delivery(&mut bob).2, "still there?");
    hub.shutdown();
}

#[test]
fn ephemeral_v2_sessions_and_version_1_peers() {
    let hub = start(2, |_| {});
    let addr = hub.local_addr();
    let ephemeral = Options {
        durable: false,
        ..Options::default()
    };
    let mut eve = SessionClient::connect(addr, ephemeral).unwrap();
    assert!(!eve.durable());
    assert_eq!(eve.token(), [0; 16]);
    let mut durable = SessionClient::connect(addr, Options::default()).unwrap();
    let mut v1 = relayhub_client::Client::connect(addr).unwrap();
    let (e, d, one) = (eve.user(), durable.user(), v1.user_id());

    // v2 to an ephemeral v2 session and to a v1 client: seq 0, no ack.
    let sent = durable.relay(&[e, one], b"to both", true).unwrap();
    assert!(durable.wait_stored(sent, LONG).unwrap().errors.is_empty());
    match next(&mut eve) {
        SessionEvent::Deliver {
            from,
            seq,
            message_id,
            redelivery,
            ..
        } => assert_eq!(
            (from, seq, message_id, redelivery),
            (d, 0, sent.message_id, false)
        ),
        other => panic!("{other:?}"),
    }
    match v1.recv_timeout(LONG).unwrap() {
        Some(relayhub_client::Event::Deliver { from, body }) => {
            assert_eq!((from, &body[..]), (d, &b"to both"[..]))
        }
        other => panic!("{other:?}"),
    }
    // Neither is durable: no receipt comes back.
    assert!(durable.recv_timeout(SHORT).unwrap().is_none());

    // v1 to a durable v2 session: an inbox entry without a message id.
    v1.relay(&[d], b"from v1").unwrap();
    match next(&mut durable) {
        SessionEvent::Deliver {
            from,
            seq,
            message_id,
            ..
        } => assert_eq!((from, seq, message_id), (one, 1, 0)),
        other => panic!("{other:?}"),
    }
    hub.shutdown();
}

#[test]
fn reconnecting_clients_ride_through_a_hub_restart() {
    let data = scratch("restart");
    let disk_hub = |listen: Option<std::net::SocketAddr>| {
        let dir = data.join("hub");
        start(2, move |config| {
            config.storage = Storage::Disk;
            config.data_dir = dir;
            config.fsync = Fsync::Always;
            if let Some(listen) = listen {
                config.listen = listen;
            }
        })
    };
    let hub = disk_hub(None);
    let addr = hub.local_addr();
    let policy = ReconnectPolicy {
        backoff_max: Duration::from_millis(200),
        attempts_max: Some(100),
        ..ReconnectPolicy::default()
    };
    let bob_file = data.join("bob.session");
    let mut bob =
        ReconnectingClient::open(addr, &bob_file, Options::default(), policy.clone()).unwrap();
    let mut alice = ReconnectingClient::connect(addr, Options::default(), policy).unwrap();
    let b = bob.user();
    alice.relay(&[b], b"before", false).unwrap();
    let mut bob_got = Vec::new();
    let mut alice_stored = 0;
    let deadline = Instant::now() + LONG;
    while (bob_got.is_empty() || alice_stored == 0) && Instant::now() < deadline {
        if let Some(SessionEvent::Deliver { body, .. }) = bob.recv_timeout(SHORT / 3).unwrap() {
            bob_got.push(body);
        }
        if let Some(SessionEvent::Stored { .. }) = alice.recv_timeout(SHORT / 3).unwrap() {
            alice_stored += 1;
        }
    }
    assert_eq!(bob_got, ["before"]);

    hub.shutdown();
    // Relayed while the hub is down: retained, sent after the resume.
    let after = alice.relay(&[b], b"after", false).unwrap();
    let hub = disk_hub(Some(addr));
    let (mut alice_back, mut bob_back, mut stored_after) = (false, false, false);
    let deadline = Instant::now() + LONG;
    while !(alice_back && bob_back && stored_after && bob_got.len() >= 2)
        && Instant::now() < deadline
    {
        match alice.recv_timeout(SHORT / 3).unwrap() {
            Some(SessionEvent::Reconnected { .. }) => alice_back = true,
            Some(SessionEvent::Stored { request, .. }) if request == after.request => {
                stored_after = true
            }
            _ => {}
        }
        match bob.recv_timeout(SHORT / 3).unwrap() {
            Some(SessionEvent::Reconnected { .. }) => bob_back = true,
            Some(SessionEvent::Deliver { body, .. }) => bob_got.push(body),
            _ => {}
        }
    }
    assert!(alice_back && bob_back, "both resumed their sessions");
    assert!(stored_after, "the relay retained while down was stored");
    // A little longer: anything redelivered would show up now.
    let until = Instant::now() + SHORT;
    while Instant::now() < until {
        if let Some(SessionEvent::Deliver { body, .. }) = bob.recv_timeout(SHORT / 3).unwrap() {
            bob_got.push(body);
        }
    }
    assert_eq!(bob_got, ["before", "after"], "each once, in order");
    assert_eq!(SessionState::load(&bob_file).unwrap().token, bob.token());
    hub.shutdown();
    fs::remove_dir_all(&data).unwrap();
}

// ----- relayhub-cli --session -----

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("relayhub-v2-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn cli(hub: &Hub, session: &Path, args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(CLI)
        .env("RELAYHUB_ADDR", hub.local_addr().to_string())
        .arg("--session")
        .arg(session)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = |bytes| String::from_utf8(bytes).unwrap();
    (status.code().unwrap_or(-1), text(stdout), text(stderr))
}

#[test]
fn cli_session_walkthrough_recv_gets_what_arrived_while_away() {
    let hub = start(2, |_| {});
    let dir = scratch("cli");
    let (alice, bob) = (dir.join("alice.session"), dir.join("bob.session"));

    let (code, out, err) = cli(&hub, &bob, &["identity"]);
    assert_eq!((code, err.as_str()), (0, ""));
    let b: u64 = out.trim().parse().unwrap();
    let (code, out, _) = cli(&hub, &alice, &["identity"]);
    assert_eq!(code, 0);
    let a: u64 = out.trim().parse().unwrap();
    let (code, out, _) = cli(&hub, &bob, &["identity"]);
    assert_eq!(
        (code, out.trim().parse::<u64>().unwrap()),
        (0, b),
        "resumed"
    );

    // Bob is offline: his inbox keeps what Alice sends.
    let to = b.to_string();
    let (code, out, err) = cli(&hub, &alice, &["send", "--to", &to, "hello", "bob"]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "sent message 1\n", "")
    );
    let (code, out, err) = cli(&hub, &alice, &["send", "--to", &to, "--receipt", "second"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "sent message 2\n", "ids continue in the next process");
    assert!(err.contains(&format!("no receipt from user {b}")), "{err}");
    let (code, _, err) = cli(&hub, &alice, &["send", "--to", &format!("{b},999999"), "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("user 999999 does not exist"), "{err}");

    // Bob takes one (and acks it); the others were sent to that connection
    // too, so the next recv gets them marked redelivered.
    let (code, out, err) = cli(&hub, &bob, &["recv", "-n", "1", "--timeout-ms", "5000"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("from {a}: hello bob\n"));
    assert_eq!(err, format!("listening as user {b} (resumed session)\n"));
    let (code, out, err) = cli(&hub, &bob, &["recv", "-n", "2", "--timeout-ms", "5000"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!("from {a} (redelivered): second\nfrom {a} (redelivered): x\n")
    );
    let (code, out, err) = cli(&hub, &bob, &["recv", "--timeout-ms", "300"]);
    assert_eq!((code, out.as_str()), (0, ""), "nothing twice: {err}");

    // Bob's ack of "second" produced a receipt, kept in Alice's inbox.
    let (code, out, err) = cli(&hub, &alice, &["recv", "--timeout-ms", "500"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("receipt: user {b} got message 2\n"));
    let (_, out, _) = cli(&hub, &alice, &["recv", "--timeout-ms", "300"]);
    assert_eq!(out, "", "the receipt was acked");

    thread::sleep(Duration::from_millis(10));
    hub.shutdown();
    fs::remove_dir_all(&dir).unwrap();
}
