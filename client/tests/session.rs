//! The version-2 client (relayhub_client::session) against a scripted fake
//! hub (tests/support/v2.rs): handshake, resume, refusals, dedup, acks,
//! message ids across processes, reconnect, keepalive.

mod support;

use std::{
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use relayhub_client::session::{
    ConnectError, HubErrorV2, Options, ReconnectPolicy, ReconnectingClient, RelayOutcome, Resume,
    SessionClient, SessionError, SessionEvent, SessionState, MESSAGE_ID_RESERVE,
};
use relayhub_protocol::{
    flags, ClientMessageV2, EchoReply, ErrorCodeV2, Hello, RelayV2, WelcomeV2, PREFACE,
};
use support::v2::{limits, scripted_one, scripted_v2, token};

const SHORT: Duration = Duration::from_millis(200);
const LONG: Duration = Duration::from_secs(5);

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "relayhub-client-session-{name}-{}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir.join("client.session")
}

fn next(client: &mut SessionClient) -> SessionEvent {
    client
        .recv_timeout(LONG)
        .unwrap()
        .expect("an event in time")
}

fn deliver(from: u64, seq: u64, message_id: u64, body: &str, redelivery: bool) -> SessionEvent {
    SessionEvent::Deliver {
        from,
        seq,
        message_id,
        body: body.to_owned().into(),
        redelivery,
    }
}

fn quiet_policy() -> ReconnectPolicy {
    ReconnectPolicy {
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        attempts_max: Some(5),
        ..ReconnectPolicy::default()
    }
}

#[test]
fn new_durable_session_handshake() {
    let (addr, hub) = scripted_one(|mut hub| {
        let hello = hub.hello();
        assert_eq!(hello, Hello::new_session(1, true));
        let mut announced = limits();
        announced.receivers_max = 3;
        hub.welcome_with(WelcomeV2 {
            request: hello.request,
            user: 7,
            token: token(0xa5),
            limits: announced,
            resumed: false,
            durable: true,
        });
        assert!(hub.try_recv().is_none(), "only the preface and the Hello");
    });
    let client = SessionClient::connect(addr, Options::default()).unwrap();
    assert_eq!(client.user(), 7);
    assert_eq!(client.token(), token(0xa5));
    assert!(!client.resumed() && client.durable());
    assert_eq!(client.limits().receivers_max, 3);
    assert_eq!(client.peer_addr(), addr);
    assert_eq!((client.delivered_seq(), client.next_message_id()), (0, 1));
    let debug = format!("{client:?}");
    assert!(
        debug.contains("<secret>") && !debug.contains("165"),
        "{debug}"
    );
    drop(client);
    hub.join().unwrap();
}

#[test]
fn resume_handshake_acks_the_saved_floor_again() {
    let (addr, hub) = scripted_one(|mut hub| {
        hub.accept_resume(5, token(1), token(2));
        assert_eq!(hub.ack(), 3, "the floor is acked again right away");
        // Redeliveries at or below the floor are dropped; the rest arrive.
        hub.deliver(9, 3, 30, b"old", true)
            .deliver(9, 4, 31, b"missed", true)
            .flush();
        assert_eq!(hub.ack(), 4);
        assert!(hub.try_recv().is_none());
    });
    let options = Options {
        resume: Some(Resume {
            user: 5,
            token: token(1),
        }),
        delivered_seq: 3,
        ..Options::default()
    };
    let mut client = SessionClient::connect(addr, options).unwrap();
    assert!(client.resumed());
    assert_eq!(client.token(), token(2), "the rotated token");
    assert_eq!(next(&mut client), deliver(9, 4, 31, "missed", true));
    assert_eq!(client.duplicates_dropped(), (1, 0));
    client.close().unwrap();
    hub.join().unwrap();
}

#[test]
fn resume_rejected_is_typed() {
    let (addr, hub) = scripted_one(|mut hub| {
        let hello = hub.hello();
        assert_eq!(hello, Hello::resume(1, 5, token(1)));
        hub.refuse(ErrorCodeV2::ResumeRejected, hello.request, 0);
    });
    let options = Options {
        resume: Some(Resume {
            user: 5,
            token: token(1),
        }),
        ..Options::default()
    };
    let error = SessionClient::connect(addr, options).unwrap_err();
    assert!(
        matches!(error, ConnectError::ResumeRejected { user: 5 }),
        "{error:?}"
    );
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("refused to resume session 5"));
    hub.join().unwrap();
}

#[test]
fn a_welcome_for_another_request_is_refused() {
    let (addr, hub) = scripted_one(|mut hub| {
        hub.hello();
        hub.welcome_with(WelcomeV2 {
            request: 99,
            ..dummy_welcome()
        });
    });
    let error = SessionClient::connect(addr, Options::default()).unwrap_err();
    assert!(
        matches!(error, ConnectError::Unexpected { .. }),
        "{error:?}"
    );
    hub.join().unwrap();
}

fn dummy_welcome() -> WelcomeV2 {
    WelcomeV2 {
        request: 1,
        user: 3,
        token: token(3),
        limits: limits(),
        resumed: false,
        durable: true,
    }
}

#[test]
fn refusals_and_other_hubs_are_typed() {
    // A full hub answers with a closing error instead of a WelcomeV2.
    let (addr, hub) = scripted_one(|mut hub| {
        hub.hello();
        hub.refuse(ErrorCodeV2::ServerFull, 0, 100);
    });
    let error = SessionClient::connect(addr, Options::default()).unwrap_err();
    assert!(
        matches!(
            error,
            ConnectError::Refused(HubErrorV2 {
                code: ErrorCodeV2::ServerFull,
                ..
            })
        ),
        "{error:?}"
    );
    assert!(error.is_retryable());
    hub.join().unwrap();

    // A version-1 hub answers with its own preface.
    let (addr, hub) = scripted_v2(|hub| {
        let (mut stream, _) = hub.listener.accept().unwrap();
        let mut preface = [0; 8];
        std::io::Read::read_exact(&mut stream, &mut preface).unwrap();
        std::io::Write::write_all(&mut stream, &PREFACE).unwrap();
    });
    let error = SessionClient::connect(addr, Options::default()).unwrap_err();
    assert!(
        matches!(
            error,
            ConnectError::UnsupportedVersion { hub_version: 1, .. }
        ),
        "{error:?}"
    );
    hub.join().unwrap();

    // Not a hub at all.
    let (addr, hub) = scripted_v2(|hub| {
        let (mut stream, _) = hub.listener.accept().unwrap();
        std::io::Write::write_all(&mut stream, b"SSH-2.0-OpenSSH\r\n").unwrap();
    });
    let error = SessionClient::connect(addr, Options::default()).unwrap_err();
    assert!(matches!(error, ConnectError::NotAHub { .. }), "{error:?}");
    hub.join().unwrap();
}

#[test]
fn relays_get_increasing_ids_and_wait_stored_gathers_the_errors() {
    let (addr, hub) = scripted_one(|mut hub| {
        hub.accept_new(4, token(4));
        let first = hub.relay();
        assert_eq!(
            first,
            RelayV2 {
                request: 2,
                message_id: 1,
                receivers: vec![2, 9],
                body: b"hi".to_vec(),
                flags: flags::RECEIPT,
            }
        );
        let second = hub.relay();
        assert_eq!((second.message_id, second.flags), (2, 0));
        // An entry of our own inbox arrives in between: queued, not lost.
        hub.error(ErrorCodeV2::UnknownReceiver, first.request, 9)
            .deliver(2, 1, 77, b"meanwhile", false)
            .stored(second.request, 2, false)
            .receipt(1, 2, 2)
            .stored(first.request, 1, false)
            .flush();
        assert_eq!(hub.ack(), 2);
        assert!(hub.try_recv().is_none());
    });
    let mut client = SessionClient::connect(addr, Options::default()).unwrap();
    let first = client.relay(&[2, 9], b"hi", true).unwrap();
    let second = client.relay(&[2], b"again", false).unwrap();
    assert_eq!((first.message_id, second.message_id), (1, 2));
    let outcome = client.wait_stored(first, LONG).unwrap();
    assert_eq!(
        outcome,
        RelayOutcome {
            message_id: 1,
            duplicate: false,
            errors: vec![HubErrorV2 {
                code: ErrorCodeV2::UnknownReceiver,
                request: first.request,
                detail: 9,
            }],
        }
    );
    // The second relay's Stored was queued while waiting for the first.
    assert_eq!(client.wait_stored(second, LONG).unwrap().errors, Vec::new());
    assert_eq!(next(&mut client), deliver(2, 1, 77, "meanwhile", false));
    assert_eq!(
        next(&mut client),
        SessionEvent::Receipt {
            message_id: 1,
            receiver: 2,
            seq: 2,
            redelivery: false
        }
    );
    assert!(client.recv_timeout(SHORT).unwrap().is_none());
    client.close().unwrap();
    hub.join().unwrap();
}

#[test]
fn client_side_limits_and_whole_relay_refusals() {
    let (addr, hub) = scripted_one(|mut hub| {
        let hello = hub.hello();
        let mut announced = limits();
        announced.body_bytes_max = 4;
        hub.welcome_with(WelcomeV2 {
            request: hello.request,
            limits: announced,
            ..dummy_welcome()
        });
        let relay = hub.relay();
        hub.error(ErrorCodeV2::TooManyReceivers, relay.request, 300)
            .flush();
        assert!(hub.try_recv().is_none());
    });
    let mut client = SessionClient::connect(addr, Options::default()).unwrap();
    assert!(matches!(
        client.relay(&[2], b"12345", false),
        Err(SessionError::LimitExceeded { max: 4, .. })
    ));
    assert_eq!(
        client.next_message_id(),
        1,
        "no id spent on a refused relay"
    );
    let sent = client.relay(&[2], b"1234", false).unwrap();
    match client.wait_stored(sent, LONG) {
        Err(SessionError::Hub(error)) => {
            assert_eq!(error.code, ErrorCodeV2::TooManyReceivers);
            assert!(error.refuses_whole_relay());
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        client.retry(5, &[2], b"", false),
        Err(SessionError::NotARetry {
            message_id: 5,
            next: 2
        })
    ));
    drop(client);
    hub.join().unwrap();
}

#[test]
fn redelivered_seqs_are_dropped_within_a_process() {
    let (addr, hub) = scripted_one(|mut hub| {
        hub.accept_new(4, token(4));
        hub.deliver(2, 1, 0, b"one", false)
            .deliver(2, 2, 0, b"two", false)
            .deliver(2, 2, 0, b"two again", true)
            .deliver(2, 1, 0, b"one again", true)
            .deliver(2, 3, 0, b"three", false)
            .flush();
        assert_eq!(hub.ack(), 3);
    });
    let mut client = SessionClient::connect(addr, Options::default()).unwrap();
    let bodies: Vec<_> = (0..3)
        .map(|_| match next(&mut client) {
            SessionEvent::Deliver { body, .. } => body,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(bodies, ["one", "two", "three"]);
    assert_eq!(client.duplicates_dropped(), (2, 0));
    client.close().unwrap();
    hub.join().unwrap();
}

#[test]
fn repeated_sender_message_ids_are_dropped_and_still_acked() {
    let (addr, hub) = scripted_one(|mut hub| {
        hub.accept_new(4, token(4));
        // A relay stored twice (retried across a hub crash): two seqs.
        hub.deliver(2, 1, 9, b"once", false)
            .deliver(3, 2, 9, b"another sender's 9", false)
            .deliver(2, 3, 9, b"once", false)
            .deliver(2, 4, 0, b"no id", false)
            .deliver(2, 5, 0, b"no id", false)
            .flush();
        assert_eq!(hub.ack(), 5, "the dropped duplicate is acked too");
    });
    let mut client = SessionClient::connect(addr, Options::default()).unwrap();
    assert_eq!(next(&mut client), deliver(2, 1, 9, "once", false));
    assert_eq!(
        next(&mut client),
        deliver(3, 2, 9, "another sender's 9", false)
    );
    assert_eq!(next(&mut client), deliver(2, 4, 0, "no id", false));
    assert_eq!(next(&mut client), deliver(2, 5, 0, "no id", false));
    assert_eq!(client.duplicates_dropped(), (0, 1));
    client.close().unwrap();
    hub.join().unwrap();
}

#[test]
fn auto_ack_sends_one_ack_per_batch_after_handing_out() {
    let (addr, hub) = scripted_one(|mut hub| {
        hub.accept_new(4, token(4));
        for seq in 1..=5 {
            hub.deliver(2, seq, seq, b"batch", false);
        }
        hub.flush();
        assert_eq!(hub.ack(), 5, "one Ack for the whole batch");
        hub.deliver(2, 6, 6, b"late", false).flush();
        assert_eq!(hub.ack(), 6);
        assert!(hub.try_recv().is_none(), "nothing else");
    });
    let mut client = SessionClient::connect(addr, Options::default()).unwrap();
    // Let the whole batch reach the socket buffer: one read takes it all.
    std::thread::sleep(SHORT);
    for seq in 1..=5 {
        assert_eq!(next(&mut client).seq(), seq);
        assert_eq!(client.acked_seq(), 0, "nothing acked while handing out");
    }
    assert_eq!(next(&mut client).seq(), 6);
    assert_eq!(client.acked_seq(), 5);
    assert!(client.recv_timeout(SHORT).unwrap().is_none());
    assert_eq!(client.acked_seq(), 6);
    client.close().unwrap();
    hub.join().unwrap();
}

#[test]
fn manual_acks_are_checked() {
    let (addr, hub) = scripted_one(|mut hub| {
        hub.accept_new(4, token(4));
        hub.deliver(2, 1, 1, b"a", false)
            .deliver(2, 2, 2, b"b", false)
            .flush();
        hub.expect_silence(Duration::from_millis(100));
        assert_eq!(hub.ack(), 1);
        assert!(
            hub.try_recv().is_none(),
            "the client closes without acking 2"
        );
    });
    let options = Options {
        auto_ack: false,
        ..Options::default()
    };
    let mut client = SessionClient::connect(addr, options).unwrap();
    assert_eq!(next(&mut client).seq(), 1);
    assert_eq!(next(&mut client).seq(), 2);
    assert!(client.recv_timeout(SHORT).unwrap().is_none(), "no auto-ack");
    assert!(matches!(
        client.ack(3),
        Err(SessionError::AckBeyondDelivered {
            upto: 3,
            delivered: 2
        })
    ));
    client.ack(1).unwrap();
    client.ack(1).unwrap(); // idempotent: nothing sent
    client.close().unwrap();
    hub.join().unwrap();
}

#[test]
fn message_ids_and_the_ack_floor_survive_a_restart_via_the_state_file() {
    let path = scratch("restart");
    let (addr, hub) = scripted_v2(|hub| {
        let mut first = hub.accept();
        first.accept_new(8, token(0x11));
        for expected in 1..=3 {
            let relay = first.relay();
            assert_eq!(relay.message_id, expected);
            first.stored(relay.request, relay.message_id, false).flush();
        }
        first
            .deliver(2, 1, 40, b"first", false)
            .deliver(2, 2, 41, b"second", false)
            .flush();
        assert_eq!(first.ack(), 1, "only what was handed out");
        assert!(first.try_recv().is_none());

        // The process died; the next one resumes with the saved token.
        let mut second = hub.accept();
        second.accept_resume(8, token(0x11), token(0x22));
        assert_eq!(second.ack(), 1);
        second
            .deliver(2, 1, 40, b"first", true)
            .deliver(2, 2, 41, b"second", true)
            .flush();
        let relay = second.relay();
        assert_eq!(
            relay.message_id,
            1 + MESSAGE_ID_RESERVE,
            "past every id the dead process may have used"
        );
        assert_eq!(second.ack(), 2);
        assert!(second.try_recv().is_none());

        // That one closed cleanly: the next continues with the next id.
        let mut third = hub.accept();
        third.accept_resume(8, token(0x22), token(0x33));
        assert_eq!(third.ack(), 2);
        assert_eq!(third.relay().message_id, 2 + MESSAGE_ID_RESERVE);
        assert!(third.try_recv().is_none());
    });

    let mut client = SessionClient::open(addr, &path, Options::default()).unwrap();
    assert!(!client.resumed());
    let saved = SessionState::load(&path).unwrap();
    assert_eq!(
        saved,
        SessionState {
            user: 8,
            token: token(0x11),
            delivered_seq: 0,
            next_message_id: 1,
        },
        "saved right after the WelcomeV2"
    );
    for _ in 0..3 {
        let sent = client.relay(&[2], b"x", false).unwrap();
        client.wait_stored(sent, LONG).unwrap();
    }
    assert_eq!(
        SessionState::load(&path).unwrap().next_message_id,
        1 + MESSAGE_ID_RESERVE,
        "a block reserved before the first relay"
    );
    assert_eq!(next(&mut client), deliver(2, 1, 40, "first", false));
    // Ack what was handed out, then die without closing.
    client.flush().unwrap();
    assert_eq!(SessionState::load(&path).unwrap().delivered_seq, 1);
    drop(client);

    let mut client = SessionClient::open(addr, &path, Options::default()).unwrap();
    assert!(client.resumed());
    assert_eq!(client.user(), 8);
    assert_eq!(SessionState::load(&path).unwrap().token, token(0x22));
    assert_eq!(next(&mut client), deliver(2, 2, 41, "second", true));
    client.relay(&[2], b"y", false).unwrap();
    client.close().unwrap();
    let saved = SessionState::load(&path).unwrap();
    assert_eq!(
        (saved.delivered_seq, saved.token, saved.next_message_id),
        (2, token(0x22), 2 + MESSAGE_ID_RESERVE)
    );

    let mut client = SessionClient::open(addr, &path, Options::default()).unwrap();
    client.relay(&[2], b"z", false).unwrap();
    client.close().unwrap();
    hub.join().unwrap();
    fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn an_ephemeral_grant_is_not_saved() {
    let path = scratch("ephemeral");
    let (addr, hub) = scripted_one(|mut hub| {
        let hello = hub.hello();
        hub.welcome_with(WelcomeV2 {
            request: hello.request,
            user: 5,
            token: [0; 16],
            limits: limits(),
            resumed: false,
            durable: false,
        });
        hub.deliver(2, 0, 3, b"at most once", false).flush();
        assert!(hub.try_recv().is_none(), "nothing to ack");
    });
    let mut client = SessionClient::open(addr, &path, Options::default()).unwrap();
    assert!(!client.durable());
    assert_eq!(next(&mut client), deliver(2, 0, 3, "at most once", false));
    client.close().unwrap();
    assert!(!path.exists());
    hub.join().unwrap();
    fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn keepalives_hold_an_idle_connection_and_are_not_handed_out() {
    let (addr, hub) = scripted_one(|mut hub| {
        let hello = hub.hello();
        let mut announced = limits();
        announced.idle_timeout_ms = 300;
        hub.welcome_with(WelcomeV2 {
            request: hello.request,
            limits: announced,
            ..dummy_welcome()
        });
        let started = Instant::now();
        let mut keepalives = 0;
        while let Some(frame) = hub.try_recv() {
            match frame {
                ClientMessageV2::Echo(echo) => {
                    assert!(echo.body.is_empty());
                    keepalives += 1;
                    hub.queue(&EchoReply {
                        request: echo.request,
                        body: Vec::new(),
                    })
                    .flush();
                }
                other => panic!("expected a keepalive, got {other:?}"),
            }
        }
        // One every 100 ms (a third of the idle timeout) for 450 ms.
        assert!((3..=5).contains(&keepalives), "{keepalives} keepalives");
        assert!(started.elapsed() >= Duration::from_millis(400));
    });
    let mut client = SessionClient::connect(addr, Options::default()).unwrap();
    assert!(client
        .recv_timeout(Duration::from_millis(450))
        .unwrap()
        .is_none());
    assert_eq!(client.pending_events(), 0, "the replies were not queued");
    client.close().unwrap();
    hub.join().unwrap();
}

#[test]
fn identity_list_and_echo_over_v2() {
    let (addr, hub) = scripted_one(|mut hub| {
        hub.accept_new(4, token(4));
        loop {
            let reply: Box<dyn Fn(&mut support::v2::HubConnV2)> = match hub.try_recv() {
                Some(ClientMessageV2::Identity(identity)) => Box::new(move |hub| {
                    hub.queue(&relayhub_protocol::IdentityReply {
                        request: identity.request,
                        user: 4,
                    })
                    .flush();
                }),
                Some(ClientMessageV2::List(list)) => Box::new(move |hub| {
                    hub.queue(&relayhub_protocol::ListReply {
                        request: list.request,
                        users: vec![2, 3],
                        more: false,
                    })
                    .flush();
                }),
                Some(ClientMessageV2::Echo(echo)) => Box::new(move |hub| {
                    hub.queue(&EchoReply {
                        request: echo.request,
                        body: echo.body.clone(),
                    })
                    .flush();
                }),
                None => return,
                Some(other) => panic!("{other:?}"),
            };
            reply(&mut hub);
        }
    });
    let mut client = SessionClient::connect(addr, Options::default()).unwrap();
    assert_eq!(client.identity().unwrap(), 4);
    assert_eq!(client.list_all().unwrap(), [2, 3]);
    assert_eq!(&client.echo(b"ping").unwrap()[..], b"ping");
    client.close().unwrap();
    hub.join().unwrap();
}

#[test]
fn takeover_closes_the_session_client() {
    let (addr, hub) = scripted_one(|mut hub| {
        hub.accept_new(4, token(4));
        hub.deliver(2, 1, 1, b"before", false)
            .error(ErrorCodeV2::SessionTakenOver, 0, 0)
            .flush();
        hub.close();
    });
    let mut client = SessionClient::connect(addr, Options::default()).unwrap();
    assert_eq!(next(&mut client).seq(), 1);
    match client.recv_timeout(LONG) {
        Err(SessionError::Hub(error)) => assert_eq!(error.code, ErrorCodeV2::SessionTakenOver),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        client.recv_timeout(SHORT),
        Err(SessionError::Closed)
    ));
    assert!(client.is_closed());
    hub.join().unwrap();
}

#[test]
fn reconnect_resends_unstored_relays_with_the_same_ids() {
    let (addr, hub) = scripted_v2(|hub| {
        let mut first = hub.accept();
        first.accept_new(6, token(1));
        let a = first.relay();
        let b = first.relay();
        assert_eq!((a.message_id, b.message_id), (1, 2));
        first.deliver(3, 1, 50, b"entry", false);
        first.stored(a.request, 1, false).flush();
        // Lost before B's Stored and before the entry was acked.
        first.close();

        let mut second = hub.accept();
        second.accept_resume(6, token(1), token(2));
        assert_eq!(second.ack(), 1, "the entry handed out before the loss");
        let again = second.relay();
        assert_eq!(
            (again.message_id, again.body.as_slice()),
            (2, &b"b"[..]),
            "B again, same message id"
        );
        assert_ne!(again.request, b.request, "a new request id on the wire");
        let c = second.relay();
        assert_eq!(c.message_id, 3);
        second
            .deliver(3, 1, 50, b"entry", true)
            .stored(again.request, 2, true)
            .stored(c.request, 3, false)
            .flush();
        let _ = second.try_recv();
    });
    let mut client = ReconnectingClient::connect(addr, Options::default(), quiet_policy()).unwrap();
    let a = client.relay(&[3], b"a", false).unwrap();
    let b = client.relay(&[3], b"b", false).unwrap();
    assert_eq!(client.unstored(), 2);
    let mut events = Vec::new();
    let deadline = Instant::now() + LONG;
    while events.len() < 4 && Instant::now() < deadline {
        if let Some(event) = client.recv_timeout(SHORT).unwrap() {
            if matches!(event, SessionEvent::Reconnected { .. }) {
                // Relayed after the reconnect: sent at once.
                events.push(event);
                client.relay(&[3], b"c", false).unwrap();
                continue;
            }
            events.push(event);
        }
    }
    assert_eq!(
        events,
        [
            deliver(3, 1, 50, "entry", false),
            SessionEvent::Stored {
                request: a.request,
                message_id: 1,
                duplicate: false
            },
            SessionEvent::Reconnected {
                attempts: 1,
                resent: 1
            },
            SessionEvent::Stored {
                request: b.request,
                message_id: 2,
                duplicate: true
            },
        ],
        "the redelivered entry is dropped; B's Stored carries B's request id"
    );
    let last = client.recv_timeout(LONG).unwrap().unwrap();
    assert!(
        matches!(last, SessionEvent::Stored { message_id: 3, .. }),
        "{last:?}"
    );
    assert_eq!(client.unstored(), 0);
    assert_eq!(client.token(), token(2));
    assert_eq!(client.reconnects(), 1);
    client.close().unwrap();
    hub.join().unwrap();
}

#[test]
fn relays_while_disconnected_wait_for_the_resume() {
    let (addr, hub) = scripted_v2(|hub| {
        let mut first = hub.accept();
        first.accept_new(6, token(1));
        first.close();
        // Refuse the first reconnect attempt: the hub is "restarting".
        drop(hub.accept());
        let mut third = hub.accept();
        third.accept_resume(6, token(1), token(2));
        let relay = third.relay();
        assert_eq!(relay.message_id, 1);
        third.stored(relay.request, 1, false).flush();
        let _ = third.try_recv();
    });
    let policy = ReconnectPolicy {
        backoff_min: Duration::from_millis(300),
        backoff_max: Duration::from_secs(1),
        ..quiet_policy()
    };
    let mut client = ReconnectingClient::connect(addr, Options::default(), policy).unwrap();
    // Notice the loss; the first attempt is at least 150 ms away.
    assert!(client
        .recv_timeout(Duration::from_millis(50))
        .unwrap()
        .is_none());
    assert!(!client.is_connected());
    let handle = client.relay(&[3], b"queued", false).unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + LONG;
    while Instant::now() < deadline && client.unstored() > 0 {
        if let Some(event) = client.recv_timeout(SHORT).unwrap() {
            seen.push(event);
        }
    }
    assert_eq!(
        seen,
        [
            SessionEvent::Reconnected {
                attempts: 2,
                resent: 1
            },
            SessionEvent::Stored {
                request: handle.request,
                message_id: 1,
                duplicate: false
            }
        ]
    );
    client.close().unwrap();
    hub.join().unwrap();
}

#[test]
fn reconnect_gives_up_after_the_attempts_bound() {
    let (addr, hub) = scripted_v2(|hub| {
        let mut first = hub.accept();
        first.accept_new(6, token(1));
        drop(hub);
        first.close();
    });
    let mut client = ReconnectingClient::connect(addr, Options::default(), quiet_policy()).unwrap();
    hub.join().unwrap();
    let started = Instant::now();
    let error = loop {
        match client.recv_timeout(LONG) {
            Ok(None) => continue,
            Ok(Some(event)) => panic!("{event:?}"),
            Err(error) => break error,
        }
    };
    match &error {
        SessionError::Reconnect { attempts, last } => {
            assert_eq!(*attempts, 5);
            assert!(matches!(**last, ConnectError::Connect { .. }), "{last:?}");
        }
        other => panic!("{other:?}"),
    }
    // 5 waits of at most 10, 20, 40, 40, 40 ms.
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(matches!(
        client.recv_timeout(SHORT),
        Err(SessionError::Closed)
    ));
}

#[test]
fn reconnect_stops_at_a_takeover_or_a_rejected_resume() {
    let (addr, hub) = scripted_v2(|hub| {
        let mut first = hub.accept();
        first.accept_new(6, token(1));
        first.error(ErrorCodeV2::SessionTakenOver, 0, 0).flush();
        first.close();
    });
    let mut client = ReconnectingClient::connect(addr, Options::default(), quiet_policy()).unwrap();
    match client.recv_timeout(LONG) {
        Err(SessionError::Hub(error)) => assert_eq!(error.code, ErrorCodeV2::SessionTakenOver),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        client.relay(&[1], b"", false),
        Err(SessionError::Closed)
    ));
    hub.join().unwrap();

    let (addr, hub) = scripted_v2(|hub| {
        let mut first = hub.accept();
        first.accept_new(6, token(1));
        first.close();
        let mut second = hub.accept();
        let hello = second.hello();
        second.refuse(ErrorCodeV2::ResumeRejected, hello.request, 0);
    });
    let mut client = ReconnectingClient::connect(addr, Options::default(), quiet_policy()).unwrap();
    let error = loop {
        match client.recv_timeout(LONG) {
            Ok(None) => continue,
            Ok(Some(event)) => panic!("{event:?}"),
            Err(error) => break error,
        }
    };
    assert!(
        matches!(&error, SessionError::Reconnect { attempts: 1, last }
            if matches!(**last, ConnectError::ResumeRejected { user: 6 })),
        "{error:?}"
    );
    hub.join().unwrap();
}

#[test]
fn a_reconnecting_client_needs_a_durable_session() {
    let (addr, hub) = scripted_one(|mut hub| {
        let hello = hub.hello();
        hub.welcome_with(WelcomeV2 {
            request: hello.request,
            user: 5,
            token: [0; 16],
            limits: limits(),
            resumed: false,
            durable: false,
        });
        let _ = hub.try_recv();
    });
    let error = ReconnectingClient::connect(addr, Options::default(), quiet_policy()).unwrap_err();
    assert!(matches!(error, ConnectError::NotDurable), "{error:?}");
    hub.join().unwrap();
}

#[test]
fn the_retained_backlog_is_bounded() {
    let (addr, hub) = scripted_one(|mut hub| {
        hub.accept_new(6, token(1));
        let _ = hub.relay();
        let _ = hub.relay();
        let _ = hub.try_recv();
    });
    let policy = ReconnectPolicy {
        retained_relays_max: 2,
        ..quiet_policy()
    };
    let mut client = ReconnectingClient::connect(addr, Options::default(), policy).unwrap();
    client.relay(&[3], b"1", false).unwrap();
    client.relay(&[3], b"2", false).unwrap();
    match client.relay(&[3], b"3", false) {
        Err(error @ SessionError::Backlog { relays: 2, .. }) => assert!(!error.closes_connection()),
        other => panic!("{other:?}"),
    }
    client.close().unwrap();
    hub.join().unwrap();
}
