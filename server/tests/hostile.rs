//! Bad clients: garbage, HTTP, giant length prefixes, slow consumers, idle
//! and surplus connections. None of them may disturb anyone else.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    thread,
    time::Duration,
};

use bytes::BytesMut;
use common::*;
use relayhub_client::{Client, ClientError, Event};
use relayhub_protocol::{
    kind, ClientSide, Decoder, ErrorCode, HubFrame, HubMessage, HTTP_REFUSAL, PREFACE,
};

/// Sends `bytes` on a raw socket and returns everything the hub answers
/// until it closes the connection.
fn raw_exchange(hub: &relayhub_server::Hub, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(hub.local_addr()).unwrap();
    stream.set_read_timeout(Some(EVENT_TIMEOUT)).unwrap();
    stream.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .expect("the hub closes the connection");
    answer
}

/// Decodes a hub answer: every frame after the hub's preface.
fn hub_frames(answer: &[u8]) -> Vec<HubMessage> {
    let mut decoder = Decoder::<ClientSide>::new();
    decoder.handle_bytes(answer);
    let mut frames = Vec::new();
    while let Some(frame) = decoder.poll_frame().expect("the hub sends valid frames") {
        frames.push(frame.to_owned());
    }
    assert_eq!(decoder.buffered_len(), 0, "no trailing bytes");
    frames
}

fn error_code(message: &HubMessage) -> Option<ErrorCode> {
    match message {
        HubMessage::Error(error) => ErrorCode::from_wire(error.code),
        _ => None,
    }
}

#[test]
fn garbage_gets_an_error_and_a_close_and_others_carry_on() {
    let hub = start(2, |_| {});
    let mut a = connect(&hub);
    let mut b = connect(&hub);

    let frames = hub_frames(&raw_exchange(&hub, b"\x16\x03\x01 definitely not relayhub"));
    assert_eq!(frames.len(), 1);
    assert_eq!(error_code(&frames[0]), Some(ErrorCode::BadPreface));

    let answer = raw_exchange(&hub, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(answer, HTTP_REFUSAL, "an HTTP client gets an HTTP answer");

    a.relay(&[b.user_id()], b"unaffected").unwrap();
    expect_deliver(&mut b, a.user_id(), b"unaffected");
    let stats = hub.shutdown();
    assert_eq!(stats.protocol_errors, 2);
}

#[test]
fn four_gib_length_prefix_gets_an_error_and_a_close() {
    let hub = start(2, |_| {});
    let mut a = connect(&hub);
    let mut b = connect(&hub);
    let mut wire = PREFACE.to_vec();
    wire.extend_from_slice(&u32::MAX.to_le_bytes());
    wire.extend_from_slice(&kind::RELAY.to_le_bytes());
    wire.extend_from_slice(&[0, 0]);
    let frames = hub_frames(&raw_exchange(&hub, &wire));
    assert!(
        matches!(frames[0], HubMessage::Welcome(_)),
        "welcomed first: {frames:?}"
    );
    assert_eq!(frames.len(), 2);
    assert_eq!(error_code(&frames[1]), Some(ErrorCode::FrameTooLarge));
    match &frames[1] {
        HubMessage::Error(error) => assert_eq!(error.detail, u64::from(u32::MAX)),
        other => panic!("{other:?}"),
    }
    b.relay(&[a.user_id()], b"unaffected").unwrap();
    expect_deliver(&mut a, b.user_id(), b"unaffected");
    hub.shutdown();
}

#[test]
fn garbage_after_the_handshake_closes_only_that_connection() {
    let hub = start(1, |_| {});
    let mut a = connect(&hub);
    let mut bad = connect(&hub);
    // A plausible header whose archive is nonsense.
    let mut wire = 16u32.to_le_bytes().to_vec();
    wire.extend_from_slice(&kind::RELAY.to_le_bytes());
    wire.extend_from_slice(&[0, 0]);
    wire.extend_from_slice(&[0xff; 16]);
    bad.send_raw(&wire).unwrap();
    bad.flush().unwrap();
    match bad.recv_timeout(EVENT_TIMEOUT) {
        Err(ClientError::Hub(error)) => assert_eq!(error.code, ErrorCode::Malformed),
        other => panic!("expected a fatal Malformed error, got {other:?}"),
    }
    assert!(a.identity().is_ok());
    hub.shutdown();
}

#[test]
fn a_slow_consumer_is_cut_off_while_a_fast_one_keeps_receiving() {
    const MESSAGES: usize = 400;
    const ROUND: usize = 4;
    let limit = relayhub_server::config::OUTBOUND_BYTES_MIN;
    let hub = start(2, |config| config.outbound_bytes_max = limit);
    let mut sender = connect(&hub);
    let mut slow = connect(&hub);
    let fast = connect(&hub);
    let (slow_id, fast_id, sender_id) = (slow.user_id(), fast.user_id(), sender.user_id());
    let body = vec![0x5a; 64 << 10];

    let (progress_tx, progress) = std::sync::mpsc::channel();
    let fast_reader = thread::spawn(move || {
        let mut fast = fast;
        for received in 1..=MESSAGES {
            match fast.recv_timeout(EVENT_TIMEOUT).unwrap() {
                Some(Event::Deliver { from, body }) => {
                    assert_eq!((from, body.len()), (sender_id, 64 << 10));
                    progress_tx.send(received).unwrap();
                }
                other => panic!("fast receiver got {other:?}"),
            }
        }
    });
    // 400 x 64 KiB = 25 MiB towards a receiver that never reads: far more
    // than its 1 MiB queue plus what the kernel's socket buffers hold. The
    // sender paces itself on the fast receiver, which is never more than
    // one round (256 KiB) behind, so only the slow one is cut off.
    for round in 0..MESSAGES / ROUND {
        for _ in 0..ROUND {
            sender.send_relay(&[slow_id, fast_id], &body).unwrap();
        }
        sender.flush().unwrap();
        while progress
            .recv_timeout(EVENT_TIMEOUT)
            .expect("fast receiver keeps up")
            < (round + 1) * ROUND
        {}
    }
    fast_reader.join().unwrap();

    // The sender learns that the slow receiver was dropped, then that it is gone.
    let mut dropped = 0;
    let mut unknown = 0;
    while let Some(event) = sender.recv_timeout(Duration::from_millis(500)).unwrap() {
        match event {
            Event::HubError(error) if error.detail == slow_id => match error.code {
                ErrorCode::ReceiverDropped => dropped += 1,
                ErrorCode::UnknownReceiver => unknown += 1,
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("sender got {other:?}"),
        }
    }
    assert_eq!(dropped, 1, "one delivery overflowed the slow receiver");
    assert!(unknown > 0, "later relays report the receiver as gone");

    // The slow receiver finds, after what was queued, why it was cut off.
    let error = loop {
        match slow.recv_timeout(EVENT_TIMEOUT) {
            Ok(Some(Event::Deliver { .. })) => continue,
            Err(ClientError::Hub(error)) => break error,
            other => panic!("slow receiver got {other:?}"),
        }
    };
    assert_eq!(error.code, ErrorCode::SlowConsumer);
    assert_eq!(error.detail, limit as u64);
    let stats = hub.shutdown();
    assert_eq!(stats.slow_consumers, 1);
}

#[test]
fn idle_connections_are_closed_with_a_reason() {
    let hub = start(1, |config| config.idle_timeout_ms = 200);
    let mut idle = connect(&hub);
    match idle.recv_timeout(EVENT_TIMEOUT) {
        Err(ClientError::Hub(error)) => {
            assert_eq!((error.code, error.detail), (ErrorCode::IdleTimeout, 200));
        }
        other => panic!("expected IdleTimeout, got {other:?}"),
    }
    assert_eq!(hub.shutdown().idle_timeouts, 1);
}

#[test]
fn a_client_idle_before_its_preface_gets_our_preface_then_the_reason() {
    let hub = start(1, |config| config.idle_timeout_ms = 200);
    let mut stream = TcpStream::connect(hub.local_addr()).unwrap();
    stream.set_read_timeout(Some(EVENT_TIMEOUT)).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let frames = hub_frames(&answer);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(error_code(&frames[0]), Some(ErrorCode::IdleTimeout));
    hub.shutdown();
}

#[test]
fn a_full_shard_refuses_with_server_full() {
    let hub = start(1, |config| config.connections_per_shard_max = 2);
    let _first = connect(&hub);
    let _second = connect(&hub);
    match Client::connect(hub.local_addr()) {
        Err(error) => match error.root() {
            ClientError::Hub(error) => assert_eq!(error.code, ErrorCode::ServerFull),
            other => panic!("expected ServerFull, got {other}"),
        },
        Ok(_) => panic!("a third connection was accepted"),
    }
    assert_eq!(hub.shutdown().connections_refused, 1);
}

#[test]
fn a_client_that_never_reads_its_replies_is_cut_off() {
    let hub = start(1, |config| {
        config.outbound_bytes_max = relayhub_server::config::OUTBOUND_BYTES_MIN
    });
    let mut witness = connect(&hub);
    let mut stream = TcpStream::connect(hub.local_addr()).unwrap();
    stream.write_all(&PREFACE).unwrap();
    let mut wire = BytesMut::new();
    let body = vec![1u8; 16 << 10];
    for request in 0..2000 {
        relayhub_protocol::encode(
            &relayhub_protocol::EchoRef {
                request,
                body: &body,
            },
            &mut wire,
        )
        .unwrap();
    }
    // Written from a thread: the hub stops reading once it cuts us off.
    let writer = thread::spawn(move || {
        let _ = stream.write_all(&wire);
        stream
    });
    thread::sleep(Duration::from_millis(500));
    assert!(witness.identity().is_ok(), "others are served meanwhile");
    let stats = hub.shutdown();
    assert_eq!(stats.slow_consumers, 1);
    drop(writer.join());
}

#[test]
fn hub_frames_decode_for_every_error_path() {
    // The Error frame a refused HTTP-less garbage client sees is complete
    // even when the garbage arrives byte by byte.
    let hub = start(1, |_| {});
    let mut stream = TcpStream::connect(hub.local_addr()).unwrap();
    stream.set_read_timeout(Some(EVENT_TIMEOUT)).unwrap();
    stream.write_all(b"R").unwrap();
    thread::sleep(Duration::from_millis(50));
    stream.write_all(b"X").unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let frames = hub_frames(&answer);
    assert!(matches!(frames.as_slice(), [HubMessage::Error(_)]));
    assert_eq!(error_code(&frames[0]), Some(ErrorCode::BadPreface));
    let mut decoder = Decoder::<ClientSide>::new();
    decoder.handle_bytes(&answer);
    assert!(matches!(decoder.poll_frame(), Ok(Some(HubFrame::Error(_)))));
    hub.shutdown();
}
