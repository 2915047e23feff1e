//! Protocol version 2 against the real hub, over real sockets: durable
//! sessions keep messages while their user is away, resumes land on any
//! shard (the hub hands the socket to the owner), takeovers, acks.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use common::{start, EVENT_TIMEOUT};
use relayhub_protocol::{
    encode, preface_for, Ack, ClientSideV2, Decoder, ErrorCodeV2, Hello, HubFrameV2, HubMessageV2,
    RelayV2Ref, ResumeToken, VERSION_2,
};

/// A minimal blocking version-2 client on a raw socket.
struct RawV2 {
    stream: TcpStream,
    decoder: Decoder<ClientSideV2>,
    user: u64,
    token: ResumeToken,
}

impl RawV2 {
    fn open(hub: &relayhub_server::Hub, hello: Hello) -> (RawV2, HubMessageV2) {
        let mut stream = TcpStream::connect(hub.local_addr()).unwrap();
        stream.set_read_timeout(Some(EVENT_TIMEOUT)).unwrap();
        let mut bytes = BytesMut::from(&preface_for(VERSION_2)[..]);
        encode(&hello, &mut bytes).unwrap();
        stream.write_all(&bytes).unwrap();
        let mut client = RawV2 {
            stream,
            decoder: Decoder::expecting(VERSION_2),
            user: 0,
            token: [0; 16],
        };
        let first = client.next();
        if let HubMessageV2::WelcomeV2(welcome) = &first {
            client.user = welcome.user;
            client.token = welcome.token;
        }
        (client, first)
    }

    fn durable(hub: &relayhub_server::Hub) -> RawV2 {
        let (client, first) = RawV2::open(hub, Hello::new_session(1, true));
        assert!(matches!(first, HubMessageV2::WelcomeV2(w) if w.durable && !w.resumed));
        client
    }

    fn resume(hub: &relayhub_server::Hub, user: u64, token: ResumeToken) -> RawV2 {
        let (client, first) = RawV2::open(hub, Hello::resume(2, user, token));
        match first {
            HubMessageV2::WelcomeV2(welcome) => {
                assert!(welcome.resumed);
                assert_eq!(welcome.user, user);
            }
            other => panic!("resume of {user} refused: {other:?}"),
        }
        client
    }

    fn send<M: relayhub_protocol::Message>(&mut self, message: &M) {
        let mut bytes = BytesMut::new();
        encode(message, &mut bytes).unwrap();
        self.stream.write_all(&bytes).unwrap();
    }

    fn relay(&mut self, request: u64, message_id: u64, to: &[u64], body: &[u8]) {
        self.send(&RelayV2Ref {
            request,
            message_id,
            flags: 0,
            receivers: to,
            body,
        });
    }

    /// The next frame from the hub.
    fn next(&mut self) -> HubMessageV2 {
        loop {
            match self.decoder.poll_frame() {
                Ok(Some(frame)) => return HubFrameV2::to_owned(&frame),
                Ok(None) => {}
                Err(error) => panic!("user {}: hub sent garbage: {error}", self.user),
            }
            let spare = self.decoder.spare();
            let read = self.stream.read(spare).expect("the hub answers in time");
            assert!(
                read > 0,
                "user {}: the hub closed the connection",
                self.user
            );
            self.decoder.commit(read);
        }
    }

    /// Frames until the hub closes the connection.
    fn until_closed(&mut self) -> Vec<HubMessageV2> {
        let mut frames = Vec::new();
        loop {
            while let Ok(Some(frame)) = self.decoder.poll_frame() {
                frames.push(HubFrameV2::to_owned(&frame));
            }
            let spare = self.decoder.spare();
            match self.stream.read(spare) {
                Ok(0) | Err(_) => return frames,
                Ok(read) => self.decoder.commit(read),
            }
        }
    }
}

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
    let mut sender = RawV2::durable(&hub);
    let receiver = RawV2::durable(&hub);
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
        let mut receiver = RawV2::resume(&hub, user, token);
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
    let mut receiver = RawV2::resume(&hub, user, token);
    sender.relay(100, 100, &[user], b"live");
    assert_eq!(deliver(receiver.next()).2, b"live");
    let stats = hub.stats();
    assert!(stats.handoffs_in >= 1 && stats.handoffs_out == stats.handoffs_in);
}

#[test]
fn a_resume_takes_the_session_over_from_a_live_connection() {
    let hub = start(2, |_| {});
    let mut sender = RawV2::durable(&hub);
    let mut first = RawV2::durable(&hub);
    sender.relay(1, 1, &[first.user], b"before");
    assert_eq!(deliver(first.next()).1, 1);
    let mut second = RawV2::resume(&hub, first.user, first.token);
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
    let victim = RawV2::durable(&hub);
    for attempt in 0..6u8 {
        let mut token = victim.token;
        token[usize::from(attempt) % 16] ^= 0x80;
        let (mut client, first) = RawV2::open(&hub, Hello::resume(5, victim.user, token));
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
