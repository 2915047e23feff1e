//! The client library against fake hubs (tests/support): handshake,
//! requests, paging, the pending queue, errors, limits, timeouts, split.

mod support;

use std::{
    net::TcpListener,
    thread,
    time::{Duration, Instant},
};

use relayhub_client::{Client, ClientConfig, ClientError, ClientLimit, Event, HubError, ListPage};
use relayhub_protocol::{
    ClientMessage, DecodeError, EchoReply, ErrorCode, Identity, IdentityReply, List, ListReply,
    Welcome, BODY_BYTES_MAX, PREFACE, RECEIVERS_MAX,
};
use support::{scripted, HubConn, ModelHub};

const SHORT: Duration = Duration::from_millis(200);
const LONG: Duration = Duration::from_secs(5);

fn expect_identity(hub: &mut HubConn) -> u64 {
    match hub.recv() {
        ClientMessage::Identity(Identity { request }) => request,
        other => panic!("expected Identity, got {other:?}"),
    }
}

#[test]
fn handshake_reads_user_and_limits() {
    let (addr, hub) = scripted(|mut hub| {
        let mut welcome = Welcome::with_protocol_limits(42);
        welcome.receivers_max = 10;
        hub.send_raw(&PREFACE);
        hub.send(&welcome);
        assert!(hub.try_recv().is_none(), "the client sent only its preface");
    });
    let client = Client::connect(addr).unwrap();
    assert_eq!(client.user_id(), 42);
    assert_eq!(client.limits().receivers_max, 10);
    assert_eq!(client.limits().body_bytes_max, BODY_BYTES_MAX);
    assert_eq!(client.peer_addr(), addr);
    drop(client);
    hub.join().unwrap();
}

#[test]
fn announced_limits_are_enforced_client_side() {
    let (addr, hub) = scripted(|mut hub| {
        let mut welcome = Welcome::with_protocol_limits(1);
        welcome.receivers_max = 2;
        hub.send_raw(&PREFACE);
        hub.send(&welcome);
        let _ = hub.try_recv();
    });
    let mut client = Client::connect(addr).unwrap();
    assert!(matches!(
        client.relay(&[1, 2, 3], b""),
        Err(ClientError::LimitExceeded {
            limit: ClientLimit::Receivers,
            value: 3,
            max: 2
        })
    ));
    drop(client);
    hub.join().unwrap();
}

#[test]
fn identity_round_trip_uses_fresh_request_ids() {
    let (addr, hub) = scripted(|mut hub| {
        hub.welcome(7);
        let first = expect_identity(&mut hub);
        hub.send(&IdentityReply {
            request: first,
            user: 7,
        });
        let second = expect_identity(&mut hub);
        assert_ne!(first, second);
        assert_ne!(first, 0, "request 0 means 'none' in errors");
        hub.send(&IdentityReply {
            request: second,
            user: 7,
        });
    });
    let mut client = Client::connect(addr).unwrap();
    assert_eq!(client.identity().unwrap(), 7);
    assert_eq!(client.identity().unwrap(), 7);
    hub.join().unwrap();
}

#[test]
fn list_all_pages_with_after_the_last_id() {
    let (addr, hub) = scripted(|mut hub| {
        hub.welcome(1);
        let pages = [
            (0, vec![2, 3], true),
            (3, vec![5, 8], true),
            (8, vec![9], false),
        ];
        for (after, users, more) in pages {
            let ClientMessage::List(List {
                request,
                after: asked,
                ..
            }) = hub.recv()
            else {
                panic!("expected List");
            };
            assert_eq!(asked, after);
            hub.send(&ListReply {
                request,
                users,
                more,
            });
        }
    });
    let mut client = Client::connect(addr).unwrap();
    assert_eq!(client.list_all().unwrap(), vec![2, 3, 5, 8, 9]);
    hub.join().unwrap();
}

#[test]
fn list_all_refuses_a_page_that_does_not_advance() {
    let (addr, hub) = scripted(|mut hub| {
        hub.welcome(1);
        let ClientMessage::List(List { request, .. }) = hub.recv() else {
            panic!()
        };
        hub.send(&ListReply {
            request,
            users: vec![],
            more: true,
        });
    });
    let mut client = Client::connect(addr).unwrap();
    assert!(matches!(
        client.list_all(),
        Err(ClientError::Unexpected { .. })
    ));
    hub.join().unwrap();
}

#[test]
fn list_all_against_the_model_hub_excludes_the_caller() {
    let hub = ModelHub::with_page_users_max(2);
    let mut clients: Vec<Client> = (0..6).map(|_| Client::connect(hub.addr).unwrap()).collect();
    let me = clients[0].user_id();
    let mut others: Vec<u64> = clients[1..].iter().map(Client::user_id).collect();
    others.sort_unstable();
    assert_eq!(clients[0].list_all().unwrap(), others);
    let first = clients[0].list_page(0, 0).unwrap();
    assert_eq!(
        first,
        ListPage {
            users: others[..2].to_vec(),
            more: true
        }
    );
    assert!(!clients[0].list_all().unwrap().contains(&me));
}

#[test]
fn events_that_arrive_while_waiting_are_returned_later_in_order() {
    let (addr, hub) = scripted(|mut hub| {
        hub.welcome(1);
        let request = expect_identity(&mut hub);
        hub.deliver(2, b"first");
        hub.send_error(ErrorCode::UnknownReceiver, 99, 9);
        hub.deliver(3, b"second");
        hub.send(&IdentityReply { request, user: 1 });
        hub.deliver(4, b"after the reply");
        assert!(hub.try_recv().is_none());
    });
    let mut client = Client::connect(addr).unwrap();
    assert_eq!(client.identity().unwrap(), 1);
    assert_eq!(client.pending_events(), 3);
    let mut events = Vec::new();
    while let Some(event) = client.recv_timeout(SHORT).unwrap() {
        events.push(event);
    }
    let deliver = |from, body: &'static [u8]| Event::Deliver {
        from,
        body: body.into(),
    };
    assert_eq!(
        events,
        vec![
            deliver(2, b"first"),
            Event::HubError(HubError {
                code: ErrorCode::UnknownReceiver,
                request: 99,
                detail: 9
            }),
            deliver(3, b"second"),
            deliver(4, b"after the reply"),
        ]
    );
    drop(client);
    hub.join().unwrap();
}

#[test]
fn unknown_receivers_surface_as_events() {
    let hub = ModelHub::start();
    let mut alice = Client::connect(hub.addr).unwrap();
    let mut bob = Client::connect(hub.addr).unwrap();
    let request = alice.relay(&[bob.user_id(), 9999], b"hi").unwrap();
    let event = alice.recv_timeout(LONG).unwrap().expect("an error event");
    let Event::HubError(error) = event else {
        panic!("expected an error, got {event:?}")
    };
    assert_eq!(
        (error.code, error.request, error.detail),
        (ErrorCode::UnknownReceiver, request, 9999)
    );
    assert_eq!(
        error.to_string(),
        format!("user 9999 is not connected (request {request})")
    );
    let delivered = bob.recv_timeout(LONG).unwrap();
    assert_eq!(
        delivered,
        Some(Event::Deliver {
            from: alice.user_id(),
            body: "hi".into()
        })
    );
}

#[test]
fn relay_limits_are_checked_before_sending() {
    let hub = ModelHub::start();
    let mut client = Client::connect(hub.addr).unwrap();
    let too_many: Vec<u64> = (1..=RECEIVERS_MAX as u64 + 1).collect();
    assert!(matches!(
        client.relay(&too_many, b""),
        Err(ClientError::LimitExceeded {
            limit: ClientLimit::Receivers,
            value: 256,
            max: 255
        })
    ));
    let too_long = vec![0; BODY_BYTES_MAX + 1];
    let error = client.relay(&[1], &too_long).unwrap_err();
    assert_eq!(
        error.to_string(),
        "body of 1048577 bytes is too large (the limit is 1048576)"
    );
    assert!(!error.closes_connection());
    assert!(matches!(
        client.echo(&too_long),
        Err(ClientError::LimitExceeded {
            limit: ClientLimit::BodyBytes,
            ..
        })
    ));
    // At the limits exactly: accepted (to ourselves, so no unknown receivers).
    let me = client.user_id();
    client.relay(&[me; RECEIVERS_MAX], b"x").unwrap();
    client.relay(&[me], &vec![7; BODY_BYTES_MAX]).unwrap();
    for _ in 0..RECEIVERS_MAX {
        assert!(matches!(
            client.recv_timeout(LONG).unwrap(),
            Some(Event::Deliver { .. })
        ));
    }
    match client.recv_timeout(LONG).unwrap() {
        Some(Event::Deliver { body, .. }) => assert_eq!(body.len(), BODY_BYTES_MAX),
        other => panic!("expected the 1 MiB delivery, got {other:?}"),
    }
    client.relay(&[], b"nobody").unwrap();
    assert_eq!(
        client.identity().unwrap(),
        me,
        "no error for zero receivers"
    );
    assert_eq!(client.recv_timeout(SHORT).unwrap(), None);
}

#[test]
fn unchecked_relays_let_the_hub_refuse_and_keep_the_connection() {
    let hub = ModelHub::start();
    let mut client = Client::connect(hub.addr).unwrap();
    let too_many: Vec<u64> = (1..=RECEIVERS_MAX as u64 + 1).collect();
    let request = client.relay_unchecked(&too_many, b"").unwrap();
    let event = client.recv_timeout(LONG).unwrap();
    let Some(Event::HubError(error)) = event else {
        panic!("{event:?}")
    };
    assert_eq!(
        (error.code, error.request, error.detail),
        (ErrorCode::TooManyReceivers, request, 256)
    );
    let request = client
        .relay_unchecked(&[1], &vec![0; BODY_BYTES_MAX + 1])
        .unwrap();
    let event = client.recv_timeout(LONG).unwrap();
    let Some(Event::HubError(error)) = event else {
        panic!("{event:?}")
    };
    assert_eq!(
        (error.code, error.request),
        (ErrorCode::BodyTooLarge, request)
    );
    assert_eq!(client.echo(b"still open").unwrap(), "still open");
}

#[test]
fn garbage_gets_a_fatal_hub_error_then_closed() {
    let hub = ModelHub::start();
    let mut client = Client::connect(hub.addr).unwrap();
    // A length prefix of 4 GiB - 8, then nothing.
    client
        .send_raw(&[0xf8, 0xff, 0xff, 0xff, 1, 0, 0, 0])
        .unwrap();
    match client.recv_timeout(LONG) {
        Err(ClientError::Hub(error)) => {
            assert_eq!(error.code, ErrorCode::FrameTooLarge);
            assert!(error.code.closes_connection());
        }
        other => panic!("expected a fatal hub error, got {other:?}"),
    }
    assert!(matches!(
        client.recv_timeout(SHORT),
        Err(ClientError::Closed)
    ));
    assert!(matches!(client.identity(), Err(ClientError::Closed)));
}

#[test]
fn bad_hub_preface_is_a_clear_error() {
    let (addr, hub) = scripted(|mut hub| {
        hub.send_raw(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        let _ = hub.try_recv();
    });
    let error = Client::connect(addr).unwrap_err();
    assert!(
        matches!(
            error.root(),
            ClientError::Protocol(DecodeError::BadPreface { .. })
        ),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!("{addr} is not a relayhub hub: it did not answer with the relayhub preface (wrong port?)")
    );
    hub.join().unwrap();
}

#[test]
fn other_protocol_version_is_named() {
    let (addr, hub) = scripted(|mut hub| {
        hub.send_raw(&relayhub_protocol::preface_for(9));
    });
    let error = Client::connect(addr).unwrap_err();
    assert!(
        error.to_string().contains("speaks protocol version 9"),
        "{error}"
    );
    hub.join().unwrap();
}

#[test]
fn hub_that_closes_during_handshake() {
    let (addr, hub) = scripted(HubConn::close);
    let error = Client::connect(addr).unwrap_err();
    assert!(matches!(error.root(), ClientError::Closed), "{error:?}");
    assert!(error
        .to_string()
        .contains("closed the connection during the handshake"));
    hub.join().unwrap();
}

#[test]
fn full_hub_refuses_with_its_error() {
    let (addr, hub) = scripted(|mut hub| {
        hub.send_raw(&PREFACE);
        hub.send_error(ErrorCode::ServerFull, 0, 1000);
    });
    let error = Client::connect(addr).unwrap_err();
    let ClientError::Hub(hub_error) = error.root() else {
        panic!("{error:?}")
    };
    assert_eq!(hub_error.code, ErrorCode::ServerFull);
    assert!(error.to_string().contains("the hub is full"), "{error}");
    hub.join().unwrap();
}

#[test]
fn silent_peer_times_out_the_handshake() {
    let (addr, hub) = scripted(|hub| {
        thread::sleep(Duration::from_millis(500));
        drop(hub);
    });
    let config = ClientConfig {
        request_timeout: Duration::from_millis(100),
        ..ClientConfig::default()
    };
    let started = Instant::now();
    let error = Client::connect_with(addr, &config).unwrap_err();
    assert!(
        matches!(error.root(), ClientError::Timeout { .. }),
        "{error:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(450));
    hub.join().unwrap();
}

#[test]
fn connection_refused_says_how_to_start_the_hub() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let error = Client::connect(addr).unwrap_err();
    assert!(matches!(error, ClientError::Connect { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!("connection refused: is the hub running on {addr}? start it with `cargo run --release -p relayhub-server`")
    );
}

#[test]
fn request_timeout_then_the_late_reply_is_an_event() {
    let (addr, hub) = scripted(|mut hub| {
        hub.welcome(1);
        let request = expect_identity(&mut hub);
        thread::sleep(Duration::from_millis(300));
        hub.send(&IdentityReply { request, user: 1 });
        let request = expect_identity(&mut hub);
        hub.send(&IdentityReply { request, user: 1 });
    });
    let mut client = Client::connect(addr).unwrap();
    client.set_request_timeout(Duration::from_millis(100));
    let started = Instant::now();
    assert!(matches!(
        client.identity(),
        Err(ClientError::Timeout { .. })
    ));
    assert!(started.elapsed() < Duration::from_millis(290));
    let late = client.recv_timeout(LONG).unwrap();
    assert!(
        matches!(late, Some(Event::IdentityReply { user: 1, .. })),
        "{late:?}"
    );
    client.set_request_timeout(LONG);
    assert_eq!(
        client.identity().unwrap(),
        1,
        "the connection is still usable"
    );
    hub.join().unwrap();
}

#[test]
fn recv_timeout_waits_about_the_timeout() {
    let hub = ModelHub::start();
    let mut client = Client::connect(hub.addr).unwrap();
    let started = Instant::now();
    assert_eq!(
        client.recv_timeout(Duration::from_millis(100)).unwrap(),
        None
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(100) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert_eq!(client.recv_timeout(Duration::ZERO).unwrap(), None);
}

#[test]
fn full_pending_queue_stops_the_call_and_loses_nothing() {
    let (addr, hub) = scripted(|mut hub| {
        hub.welcome(1);
        let request = expect_identity(&mut hub);
        for index in 0..3u8 {
            hub.deliver(2, &[index]);
        }
        hub.send(&IdentityReply { request, user: 1 });
        let _ = hub.try_recv();
    });
    let config = ClientConfig {
        pending_events_max: 2,
        ..ClientConfig::default()
    };
    let mut client = Client::connect_with(addr, &config).unwrap();
    let error = client.identity().unwrap_err();
    assert!(
        matches!(
            error,
            ClientError::QueueFull {
                events: 2,
                bytes: 2
            }
        ),
        "{error:?}"
    );
    assert!(!error.closes_connection());
    let mut events = Vec::new();
    while let Some(event) = client.recv_timeout(SHORT).unwrap() {
        events.push(event);
    }
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(matches!(events[2], Event::Deliver { ref body, .. } if body[..] == [2]));
    assert!(matches!(events[3], Event::IdentityReply { user: 1, .. }));
    drop(client);
    hub.join().unwrap();
}

#[test]
fn fatal_hub_error_while_waiting_ends_the_call() {
    let (addr, hub) = scripted(|mut hub| {
        hub.welcome(1);
        let _ = expect_identity(&mut hub);
        hub.deliver(2, b"before");
        hub.send_error(ErrorCode::SlowConsumer, 0, 4096);
        hub.close();
    });
    let mut client = Client::connect(addr).unwrap();
    let error = client.identity().unwrap_err();
    assert!(matches!(
        error,
        ClientError::Hub(HubError {
            code: ErrorCode::SlowConsumer,
            ..
        })
    ));
    assert!(error.to_string().contains("slow consumer"), "{error}");
    assert!(matches!(
        client.recv_timeout(SHORT).unwrap(),
        Some(Event::Deliver { .. })
    ));
    assert!(matches!(
        client.recv_timeout(SHORT),
        Err(ClientError::Closed)
    ));
    hub.join().unwrap();
}

#[test]
fn echo_round_trip_and_error_for_the_request() {
    let (addr, hub) = scripted(|mut hub| {
        hub.welcome(1);
        let ClientMessage::Echo(echo) = hub.recv() else {
            panic!()
        };
        hub.send(&EchoReply {
            request: echo.request,
            body: echo.body,
        });
        let ClientMessage::Echo(echo) = hub.recv() else {
            panic!()
        };
        hub.send_error(ErrorCode::BodyTooLarge, echo.request, 5);
    });
    let mut client = Client::connect(addr).unwrap();
    assert_eq!(client.echo(b"ping").unwrap(), "ping");
    let error = client.echo(b"pong!").unwrap_err();
    assert!(matches!(
        error,
        ClientError::Hub(HubError {
            code: ErrorCode::BodyTooLarge,
            detail: 5,
            ..
        })
    ));
    assert!(!error.closes_connection());
    hub.join().unwrap();
}

#[test]
fn pipelined_relays_arrive_in_order() {
    const RELAYS: u32 = 20_000;
    let hub = ModelHub::start();
    let mut sender = Client::connect(hub.addr).unwrap();
    let receiver = Client::connect(hub.addr).unwrap();
    let to = receiver.user_id();
    let (_, mut inbox) = receiver.split();
    let reader = thread::spawn(move || {
        for expected in 0..RELAYS {
            match inbox.recv_timeout(LONG).unwrap() {
                Some(Event::Deliver { body, .. }) => assert_eq!(body[..], expected.to_le_bytes()),
                other => panic!("delivery {expected}: {other:?}"),
            }
        }
    });
    let mut last = 0;
    for index in 0..RELAYS {
        let request = sender.send_relay(&[to], &index.to_le_bytes()).unwrap();
        assert!(request > last, "request ids increase");
        last = request;
    }
    sender.flush().unwrap();
    reader.join().unwrap();
}

#[test]
fn split_halves_work_on_two_threads() {
    let hub = ModelHub::start();
    let client = Client::connect(hub.addr).unwrap();
    let me = client.user_id();
    let (mut sender, mut receiver) = client.split();
    let reader = thread::spawn(move || {
        let mut seen = Vec::new();
        while seen.len() < 3 {
            seen.push(receiver.recv().unwrap());
        }
        seen
    });
    let identity = sender.send_identity().unwrap();
    let relay = sender.send_relay(&[me], b"to myself").unwrap();
    let list = sender.send_list(0, 0).unwrap();
    sender.flush().unwrap();
    let seen = reader.join().unwrap();
    assert!(seen.contains(&Event::IdentityReply {
        request: identity,
        user: me
    }));
    assert!(seen.contains(&Event::Deliver {
        from: me,
        body: "to myself".into()
    }));
    assert!(seen.contains(&Event::ListReply {
        request: list,
        users: vec![],
        more: false
    }));
    assert!(relay > identity && list > relay);
}
