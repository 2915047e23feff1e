//! Protocol version 2 against the real hub, over real sockets: durable
//! sessions keep messages while their user is away, resumes land on any
//! shard (the hub hands the socket to the owner), takeovers, acks.

mod common;

use std::time::{Duration, Instant};

use common::{start, v2::RawV2};
use relayhub_protocol::{Ack, ErrorCodeV2, Hello, HubMessageV2};

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
