//! Protocol version 2: every new message round trips, each version accepts
//! exactly its kinds, the preface negotiates the version on both sides
//! (version 1's bytes unchanged), RelayV2 keeps Relay's limits, the field
//! and flag rules hold, and truncation is never mistaken for a frame.

use bytes::BytesMut;
use proptest::{collection::vec, prelude::*};
use relayhub_protocol::*;

// ---------------------------------------------------------------------------
// Generators: any valid message of a version-2 connection.

fn body(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max)
}

fn nonzero_token() -> impl Strategy<Value = ResumeToken> {
    any::<ResumeToken>().prop_map(|mut token| {
        if token == [0; RESUME_TOKEN_BYTES] {
            token[0] = 1;
        }
        token
    })
}

fn hello() -> impl Strategy<Value = Hello> {
    prop_oneof![
        (any::<u64>(), any::<bool>())
            .prop_map(|(request, durable)| Hello::new_session(request, durable)),
        (any::<u64>(), 1..=u64::MAX, any::<ResumeToken>())
            .prop_map(|(request, user, token)| Hello::resume(request, user, token)),
    ]
}

fn relay_v2(receivers_max: usize, body_max: usize) -> impl Strategy<Value = RelayV2> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
        vec(any::<u64>(), 0..=receivers_max),
        body(body_max),
    )
        .prop_map(|(request, message_id, receipt, receivers, body)| RelayV2 {
            request,
            message_id,
            receivers,
            body,
            flags: if receipt && message_id != 0 {
                flags::RECEIPT
            } else {
                0
            },
        })
}

fn limits() -> impl Strategy<Value = Limits> {
    (any::<[u32; 4]>(), any::<[u64; 11]>()).prop_map(|(small, large)| Limits {
        frame_bytes_max: small[0],
        body_bytes_max: small[1],
        receivers_max: small[2],
        list_page_users_max: small[3],
        idle_timeout_ms: large[0],
        frame_timeout_ms: large[1],
        outbound_bytes_max: large[2],
        inflight_messages_max: large[3],
        inflight_bytes_max: large[4],
        inbox_messages_max: large[5],
        inbox_bytes_max: large[6],
        session_expiry_ms: large[7],
        message_ttl_ms: large[8],
        dedup_window_ms: large[9],
        content_dedup_window_ms: large[10],
    })
}

fn welcome_v2() -> impl Strategy<Value = WelcomeV2> {
    (
        any::<u64>(),
        any::<u64>(),
        nonzero_token(),
        limits(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(request, user, token, limits, durable, resumed)| WelcomeV2 {
                request,
                user,
                token: if durable {
                    token
                } else {
                    [0; RESUME_TOKEN_BYTES]
                },
                limits,
                resumed: durable && resumed,
                durable,
            },
        )
}

fn deliver_v2(body_max: usize) -> impl Strategy<Value = DeliverV2> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
        body(body_max),
    )
        .prop_map(|(from, seq, message_id, redelivery, body)| DeliverV2 {
            from,
            seq,
            message_id,
            body,
            flags: if redelivery && seq != 0 {
                flags::REDELIVERY
            } else {
                0
            },
        })
}

fn client_message_v2() -> impl Strategy<Value = ClientMessageV2> {
    prop_oneof![
        (any::<u64>(), body(300))
            .prop_map(|(request, body)| ClientMessageV2::Echo(Echo { request, body })),
        any::<u64>().prop_map(|request| ClientMessageV2::Identity(Identity { request })),
        (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(request, after, limit)| {
            ClientMessageV2::List(List {
                request,
                after,
                limit,
            })
        }),
        hello().prop_map(ClientMessageV2::Hello),
        relay_v2(RECEIVERS_MAX, 300).prop_map(ClientMessageV2::RelayV2),
        any::<u64>().prop_map(|upto| ClientMessageV2::Ack(Ack { upto })),
    ]
}

fn hub_message_v2() -> impl Strategy<Value = HubMessageV2> {
    prop_oneof![
        (any::<u64>(), body(300))
            .prop_map(|(request, body)| HubMessageV2::EchoReply(EchoReply { request, body })),
        (any::<u64>(), any::<u64>()).prop_map(|(request, user)| {
            HubMessageV2::IdentityReply(IdentityReply { request, user })
        }),
        (any::<u64>(), vec(any::<u64>(), 0..=300), any::<bool>()).prop_map(
            |(request, users, more)| HubMessageV2::ListReply(ListReply {
                request,
                users,
                more
            })
        ),
        (any::<u64>(), any::<u64>(), any::<u16>()).prop_map(|(request, detail, code)| {
            HubMessageV2::Error(Error {
                request,
                detail,
                code,
            })
        }),
        welcome_v2().prop_map(HubMessageV2::WelcomeV2),
        deliver_v2(300).prop_map(HubMessageV2::DeliverV2),
        (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(request, message_id, dup)| {
            HubMessageV2::Stored(Stored {
                request,
                message_id,
                duplicate: dup && message_id != 0,
            })
        }),
        (1..=u64::MAX, any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
            |(message_id, receiver, seq, redelivery)| {
                HubMessageV2::Receipt(Receipt {
                    message_id,
                    receiver,
                    seq,
                    flags: if redelivery && seq != 0 {
                        flags::REDELIVERY
                    } else {
                        0
                    },
                })
            }
        ),
    ]
}

// ---------------------------------------------------------------------------
// Encoding and draining streams.

fn frame<M: Message>(message: &M) -> BytesMut {
    let mut out = BytesMut::new();
    encode(message, &mut out).unwrap();
    out
}

fn client_wire(messages: &[ClientMessageV2]) -> BytesMut {
    let mut out = BytesMut::new();
    for message in messages {
        message.encode(&mut out).unwrap();
    }
    out
}

fn hub_wire(messages: &[HubMessageV2]) -> BytesMut {
    let mut out = BytesMut::new();
    for message in messages {
        message.encode(&mut out).unwrap();
    }
    out
}

/// Feeds `wire` in `chunks` (cycled), polling everything after each one,
/// until the bytes run out or a fatal error.
fn drain<R: Role, T>(
    decoder: &mut Decoder<R>,
    wire: &[u8],
    chunks: &[usize],
    owned: impl for<'a> Fn(&R::Frame<'a>) -> T,
) -> Vec<Result<T, DecodeError>> {
    let mut out = Vec::new();
    let mut offset = 0;
    let mut sizes = chunks.iter().copied().cycle();
    loop {
        loop {
            match decoder.poll_frame() {
                Ok(Some(frame)) => out.push(Ok(owned(&frame))),
                Ok(None) => break,
                Err(error) => {
                    let fatal = error.is_fatal();
                    out.push(Err(error));
                    if fatal {
                        return out;
                    }
                }
            }
        }
        if offset == wire.len() {
            return out;
        }
        let take = sizes
            .next()
            .unwrap_or(usize::MAX)
            .clamp(1, wire.len() - offset);
        decoder.handle_bytes(&wire[offset..offset + take]);
        offset += take;
    }
}

/// What a hub decoder of `version` makes of `wire` (frames only, no preface).
fn hub_decodes(version: u16, wire: &[u8]) -> Vec<Result<ClientMessageV2, DecodeError>> {
    let mut decoder = Decoder::<HubSideV2>::after_preface_version(version);
    drain(&mut decoder, wire, &[usize::MAX], |frame| frame.to_owned())
}

/// What a client decoder of `version` makes of `wire` (frames only).
fn client_decodes(version: u16, wire: &[u8]) -> Vec<Result<HubMessageV2, DecodeError>> {
    let mut decoder = Decoder::<ClientSideV2>::after_preface_version(version);
    drain(&mut decoder, wire, &[usize::MAX], |frame| frame.to_owned())
}

fn malformed(kind: u16, reason: Malformed) -> DecodeError {
    DecodeError::Malformed { kind, reason }
}

/// The decoder's answer to a frame of `kind` that breaks a field rule.
fn field<T>(kind: u16) -> Vec<Result<T, DecodeError>> {
    vec![Err(malformed(kind, Malformed::Field))]
}

// ---------------------------------------------------------------------------
// Round trips.

proptest! {
    #[test]
    fn client_messages_round_trip_on_a_version_2_connection(message in client_message_v2()) {
        let wire = client_wire(std::slice::from_ref(&message));
        prop_assert_eq!(FrameHeader::check(&wire).unwrap().frame_len(), wire.len());
        prop_assert_eq!(hub_decodes(VERSION_2, &wire), vec![Ok(message.clone())]);
        let wire = aligned(&wire);
        let (frame, len) = decode_frame_version::<HubSideV2>(VERSION_2, &wire).unwrap();
        prop_assert_eq!(len, wire.len());
        prop_assert_eq!(frame.to_owned(), message);
    }

    #[test]
    fn hub_messages_round_trip_on_a_version_2_connection(message in hub_message_v2()) {
        let wire = hub_wire(std::slice::from_ref(&message));
        prop_assert_eq!(FrameHeader::check(&wire).unwrap().frame_len(), wire.len());
        prop_assert_eq!(client_decodes(VERSION_2, &wire), vec![Ok(message.clone())]);
        let wire = aligned(&wire);
        let (frame, len) = decode_frame_version::<ClientSideV2>(VERSION_2, &wire).unwrap();
        prop_assert_eq!(len, wire.len());
        prop_assert_eq!(frame.to_owned(), message);
    }

    #[test]
    fn any_split_of_a_version_2_stream_gives_the_same_frames(
        messages in vec(client_message_v2(), 0..10),
        replies in vec(hub_message_v2(), 0..10),
        chunks in vec(1usize..500, 1..12),
    ) {
        let expected: Vec<_> = messages.iter().cloned().map(Ok).collect();
        let wire = [&preface_for(VERSION_2)[..], &client_wire(&messages)].concat();
        for chunks in [&[usize::MAX][..], &[1], &chunks] {
            let mut hub = Decoder::<HubSideV2>::new();
            let got = drain(&mut hub, &wire, chunks, |frame| frame.to_owned());
            prop_assert_eq!(&got, &expected);
            prop_assert_eq!(hub.version(), Some(VERSION_2));
        }
        let expected: Vec<_> = replies.iter().cloned().map(Ok).collect();
        let wire = [&hub_preface(Some(VERSION_2))[..], &hub_wire(&replies)].concat();
        for chunks in [&[usize::MAX][..], &[1], &chunks] {
            let mut client = Decoder::<ClientSideV2>::expecting(VERSION_2);
            let got = drain(&mut client, &wire, chunks, |frame| frame.to_owned());
            prop_assert_eq!(&got, &expected);
        }
    }

    #[test]
    fn borrowed_twins_and_fan_out_encode_the_same_bytes(
        relay in relay_v2(RECEIVERS_MAX, 2000),
        deliver in deliver_v2(2000),
    ) {
        prop_assert_eq!(
            frame(&relay),
            frame(&RelayV2Ref {
                request: relay.request,
                message_id: relay.message_id,
                flags: relay.flags,
                receivers: &relay.receivers,
                body: &relay.body,
            })
        );
        prop_assert_eq!(
            frame(&relay).len(),
            relay_v2_frame_len(relay.receivers.len(), relay.body.len())
        );
        let owned = frame(&deliver);
        let meta = DeliverV2Meta {
            from: deliver.from,
            seq: deliver.seq,
            message_id: deliver.message_id,
            flags: deliver.flags,
        };
        let borrowed = frame(&DeliverV2Ref {
            from: meta.from,
            seq: meta.seq,
            message_id: meta.message_id,
            flags: meta.flags,
            body: &deliver.body,
        });
        prop_assert_eq!(&owned, &borrowed);
        let shared = encode_deliver_v2(meta, &deliver.body).unwrap();
        prop_assert_eq!(&shared[..], &owned[..]);
        prop_assert_eq!(shared.len(), deliver_v2_frame_len(deliver.body.len()));
        let prefix = deliver_v2_prefix(&deliver.body).unwrap();
        let root = deliver_v2_root(meta, deliver.body.len());
        prop_assert_eq!([&prefix[..], &root[..]].concat(), owned.to_vec());
    }
}

fn aligned(bytes: &[u8]) -> rkyv::util::AlignedVec<16> {
    let mut out = rkyv::util::AlignedVec::<16>::new();
    out.extend_from_slice(bytes);
    out
}

#[test]
fn one_shared_body_prefix_serves_every_receiver() {
    let body = b"one body, many receivers";
    let prefix = deliver_v2_prefix(body).unwrap();
    let mut client = Decoder::<ClientSideV2>::after_preface_version(VERSION_2);
    for seq in 1..=50u64 {
        let meta = DeliverV2Meta {
            from: 7,
            seq,
            message_id: 1000 + seq,
            flags: if seq % 2 == 0 { flags::REDELIVERY } else { 0 },
        };
        client.handle_bytes(&prefix);
        client.handle_bytes(&deliver_v2_root(meta, body.len()));
        let Some(HubFrameV2::DeliverV2(deliver)) = client.poll_frame().unwrap() else {
            panic!("not a DeliverV2")
        };
        assert_eq!(deliver.seq.to_native(), seq);
        assert_eq!(deliver.message_id.to_native(), 1000 + seq);
        assert_eq!(deliver.flags.to_native(), meta.flags);
        assert_eq!(deliver.from.to_native(), 7);
        assert_eq!(deliver.body.as_slice(), body);
    }
}

#[test]
fn largest_version_2_frames_round_trip() {
    let body: Vec<u8> = (0..BODY_BYTES_MAX).map(|i| (i * 13) as u8).collect();
    let relay = ClientMessageV2::RelayV2(RelayV2 {
        request: 1,
        message_id: u64::MAX,
        receivers: (1..=RECEIVERS_MAX as u64).collect(),
        body: body.clone(),
        flags: flags::RECEIPT,
    });
    let wire = client_wire(std::slice::from_ref(&relay));
    assert!(wire.len() - FRAME_HEADER_BYTES <= FRAME_BYTES_MAX);
    assert_eq!(
        wire.len(),
        relay_v2_frame_len(RECEIVERS_MAX, BODY_BYTES_MAX)
    );
    assert_eq!(hub_decodes(VERSION_2, &wire), vec![Ok(relay)]);

    let deliver = HubMessageV2::DeliverV2(DeliverV2 {
        from: u64::MAX,
        seq: u64::MAX,
        message_id: u64::MAX,
        body,
        flags: flags::REDELIVERY,
    });
    let wire = hub_wire(std::slice::from_ref(&deliver));
    assert!(wire.len() - FRAME_HEADER_BYTES <= FRAME_BYTES_MAX);
    assert_eq!(wire.len(), deliver_v2_frame_len(BODY_BYTES_MAX));
    assert_eq!(client_decodes(VERSION_2, &wire), vec![Ok(deliver)]);
}

// ---------------------------------------------------------------------------
// Version negotiation.

#[test]
fn the_hub_side_accepts_either_version_and_reports_it() {
    for version in VERSIONS_SUPPORTED {
        let mut hub = Decoder::<HubSideV2>::new();
        assert_eq!(hub.version(), None);
        let preface = preface_for(version);
        hub.handle_bytes(&preface[..5]);
        assert_eq!(hub.poll_preface(), Ok(false));
        assert_eq!(hub.version(), None, "not before the preface is whole");
        hub.handle_bytes(&preface[5..]);
        assert_eq!(hub.poll_preface(), Ok(true));
        assert_eq!(hub.version(), Some(version));
        // The hub answers in kind: a version-1 client gets today's bytes.
        assert_eq!(hub_preface(hub.version()), preface);
    }
    assert_eq!(hub_preface(Some(VERSION)), PREFACE);
    assert_eq!(&PREFACE, b"RLYHUB\x01\x00");
    assert_eq!(&preface_for(VERSION_2), b"RLYHUB\x02\x00");
}

#[test]
fn the_hub_side_refuses_other_versions_and_names_its_newest() {
    for version in [0, 3, 0x0100, u16::MAX] {
        let mut hub = Decoder::<HubSideV2>::new();
        hub.handle_bytes(&preface_for(version));
        let error = hub.poll_frame().unwrap_err();
        assert_eq!(error, DecodeError::UnsupportedVersion { version });
        assert!(error.is_fatal());
        assert_eq!(hub.version(), None);
        assert_eq!(error.code_v2(), ErrorCodeV2::UnsupportedVersion);
        assert_eq!(error.detail_v2(), u64::from(VERSION_2));
        assert_eq!(hub_preface(hub.version()), preface_for(VERSION_2));
    }
    let mut hub = Decoder::<HubSideV2>::new();
    hub.handle_bytes(b"GET / HTTP/1.1\r\n");
    assert_eq!(
        hub.poll_frame().unwrap_err(),
        DecodeError::BadPreface {
            looks_like_http: true
        }
    );
}

#[test]
fn version_1_sides_still_speak_version_1_only() {
    let mut hub = Decoder::<HubSide>::new();
    hub.handle_bytes(&PREFACE);
    assert_eq!(hub.poll_preface(), Ok(true));
    assert_eq!(hub.version(), Some(VERSION));

    let mut hub = Decoder::<HubSide>::new();
    hub.handle_bytes(&preface_for(VERSION_2));
    assert_eq!(
        hub.poll_frame().unwrap_err(),
        DecodeError::UnsupportedVersion { version: VERSION_2 }
    );
    assert_eq!(
        hub.poll_frame().unwrap_err().detail(),
        u64::from(VERSION),
        "a version-1 hub still names version 1"
    );
    let mut client = Decoder::<ClientSide>::new();
    client.handle_bytes(&preface_for(VERSION_2));
    assert_eq!(
        client.poll_frame().unwrap_err(),
        DecodeError::UnsupportedVersion { version: VERSION_2 }
    );
    assert_eq!(Decoder::<HubSide>::after_preface().version(), Some(VERSION));
    assert_eq!(
        Decoder::<HubSideV2>::after_preface().version(),
        Some(VERSION)
    );
}

#[test]
fn a_client_expecting_version_2_refuses_an_older_hub() {
    let mut client = Decoder::<ClientSideV2>::expecting(VERSION_2);
    let mut wire = PREFACE.to_vec();
    wire.extend_from_slice(&frame(&Error::new(
        ErrorCode::UnsupportedVersion,
        0,
        u64::from(VERSION),
    )));
    client.handle_bytes(&wire);
    assert_eq!(
        client.poll_frame().unwrap_err(),
        DecodeError::UnsupportedVersion { version: VERSION }
    );
    assert_eq!(client.version(), None);

    let mut client = Decoder::<ClientSideV2>::expecting(VERSION_2);
    client.handle_bytes(&hub_preface(Some(VERSION_2)));
    assert_eq!(client.poll_preface(), Ok(true));
    assert_eq!(client.version(), Some(VERSION_2));

    // A client expecting version 1 on the version-2 side: version 1 rules.
    let mut client = Decoder::<ClientSideV2>::expecting(VERSION);
    client.handle_bytes(&PREFACE);
    client.handle_bytes(&frame(&Welcome::with_protocol_limits(3)));
    assert!(matches!(
        client.poll_frame(),
        Ok(Some(HubFrameV2::Welcome(_)))
    ));
    assert_eq!(client.version(), Some(VERSION));
}

#[test]
#[should_panic(expected = "does not speak version 2")]
fn a_version_1_side_cannot_expect_version_2() {
    let _ = Decoder::<ClientSide>::expecting(VERSION_2);
}

// ---------------------------------------------------------------------------
// Which kinds each version accepts.

const CLIENT_KINDS_V1: [u16; 4] = [kind::ECHO, kind::IDENTITY, kind::LIST, kind::RELAY];
const CLIENT_KINDS_V2: [u16; 6] = [
    kind::ECHO,
    kind::IDENTITY,
    kind::LIST,
    kind::HELLO,
    kind::RELAY_V2,
    kind::ACK,
];
const HUB_KINDS_V1: [u16; 6] = [
    kind::WELCOME,
    kind::ECHO_REPLY,
    kind::IDENTITY_REPLY,
    kind::LIST_REPLY,
    kind::DELIVER,
    kind::ERROR,
];
const HUB_KINDS_V2: [u16; 8] = [
    kind::ECHO_REPLY,
    kind::IDENTITY_REPLY,
    kind::LIST_REPLY,
    kind::ERROR,
    kind::WELCOME_V2,
    kind::DELIVER_V2,
    kind::STORED,
    kind::RECEIPT,
];

#[test]
fn each_version_accepts_exactly_its_kinds() {
    for kind in 0..=u16::MAX {
        assert_eq!(
            HubSideV2::accepts_version(VERSION, kind),
            CLIENT_KINDS_V1.contains(&kind),
            "hub side, version 1, kind {kind}"
        );
        assert_eq!(
            HubSideV2::accepts_version(VERSION_2, kind),
            CLIENT_KINDS_V2.contains(&kind),
            "hub side, version 2, kind {kind}"
        );
        assert_eq!(
            ClientSideV2::accepts_version(VERSION, kind),
            HUB_KINDS_V1.contains(&kind),
            "client side, version 1, kind {kind}"
        );
        assert_eq!(
            ClientSideV2::accepts_version(VERSION_2, kind),
            HUB_KINDS_V2.contains(&kind),
            "client side, version 2, kind {kind}"
        );
        // The version-1 sides are as they were, whatever version they are asked about.
        assert_eq!(HubSide::accepts(kind), CLIENT_KINDS_V1.contains(&kind));
        assert_eq!(ClientSide::accepts(kind), HUB_KINDS_V1.contains(&kind));
        for version in [0, 3, u16::MAX] {
            assert!(!HubSideV2::accepts_version(version, kind));
            assert!(!ClientSideV2::accepts_version(version, kind));
        }
    }
    // Client kinds stay below 128, hub kinds from 128 up.
    assert!(CLIENT_KINDS_V2.iter().all(|&kind| kind < 128));
    assert!(HUB_KINDS_V2.iter().all(|&kind| kind >= 128));
}

#[test]
fn a_version_1_connection_refuses_version_2_frames() {
    let v2_frames = [
        frame(&Hello::new_session(1, true)),
        frame(&RelayV2Ref {
            request: 2,
            message_id: 0,
            flags: 0,
            receivers: &[1],
            body: b"x",
        }),
        frame(&Ack { upto: 3 }),
    ];
    for wire in &v2_frames {
        let kind = FrameHeader::check(wire).unwrap().kind;
        let expected = vec![Err(DecodeError::UnknownKind { kind })];
        assert_eq!(hub_decodes(VERSION, wire), expected);
        // The version-1 side refuses them the same way.
        let mut hub = Decoder::<HubSide>::after_preface();
        hub.handle_bytes(wire);
        assert_eq!(
            hub.poll_frame().unwrap_err(),
            DecodeError::UnknownKind { kind }
        );
        // From the header alone, before the archive arrives.
        let mut hub = Decoder::<HubSideV2>::after_preface_version(VERSION);
        hub.handle_bytes(&wire[..FRAME_HEADER_BYTES]);
        assert_eq!(
            hub.poll_frame().unwrap_err(),
            DecodeError::UnknownKind { kind }
        );
    }
    let hub_frames = [
        frame(&WelcomeV2 {
            request: 1,
            user: 2,
            token: [0; RESUME_TOKEN_BYTES],
            limits: Limits::with_protocol_bounds(),
            resumed: false,
            durable: false,
        }),
        frame(&DeliverV2Ref {
            from: 1,
            seq: 0,
            message_id: 0,
            flags: 0,
            body: b"x",
        }),
        frame(&Stored {
            request: 1,
            message_id: 0,
            duplicate: false,
        }),
        frame(&Receipt {
            message_id: 1,
            receiver: 2,
            seq: 0,
            flags: 0,
        }),
    ];
    for wire in &hub_frames {
        let kind = FrameHeader::check(wire).unwrap().kind;
        assert_eq!(
            client_decodes(VERSION, wire),
            vec![Err(DecodeError::UnknownKind { kind })]
        );
        let mut client = Decoder::<ClientSide>::after_preface();
        client.handle_bytes(wire);
        assert_eq!(
            client.poll_frame().unwrap_err(),
            DecodeError::UnknownKind { kind }
        );
    }
    // And version 1 still works on the version-2 side.
    let relay = Relay {
        request: 9,
        receivers: vec![1, 2],
        body: b"v1".to_vec(),
    };
    assert_eq!(
        hub_decodes(VERSION, &frame(&relay)),
        vec![Ok(ClientMessageV2::Relay(relay))]
    );
}

#[test]
fn a_version_2_connection_refuses_version_1_relay_welcome_and_deliver() {
    let relay = frame(&RelayRef {
        request: 1,
        receivers: &[2],
        body: b"x",
    });
    assert_eq!(
        hub_decodes(VERSION_2, &relay),
        vec![Err(DecodeError::UnknownKind { kind: kind::RELAY })]
    );
    for (wire, kind) in [
        (frame(&Welcome::with_protocol_limits(1)), kind::WELCOME),
        (
            frame(&DeliverRef {
                from: 1,
                body: b"x",
            }),
            kind::DELIVER,
        ),
    ] {
        assert_eq!(
            client_decodes(VERSION_2, &wire),
            vec![Err(DecodeError::UnknownKind { kind })]
        );
    }
    // The version-1 client kinds that version 2 keeps still decode.
    let keep = [
        ClientMessageV2::Echo(Echo {
            request: 1,
            body: b"e".to_vec(),
        }),
        ClientMessageV2::Identity(Identity { request: 2 }),
        ClientMessageV2::List(List {
            request: 3,
            after: 4,
            limit: 5,
        }),
    ];
    let expected: Vec<_> = keep.iter().cloned().map(Ok).collect();
    assert_eq!(hub_decodes(VERSION_2, &client_wire(&keep)), expected);
}

// ---------------------------------------------------------------------------
// RelayV2 limits: Relay's, refused without closing.

fn relay_v2_frame(request: u64, receivers: usize, body_len: usize) -> BytesMut {
    let receivers: Vec<u64> = (1..=receivers as u64).collect();
    let body = vec![0x42; body_len];
    frame(&RelayV2Ref {
        request,
        message_id: request,
        flags: flags::RECEIPT,
        receivers: &receivers,
        body: &body,
    })
}

#[test]
fn relay_v2_edges_are_accepted() {
    for receivers in [0, 1, RECEIVERS_MAX] {
        for body_len in [0, 1, BODY_BYTES_MAX] {
            let wire = relay_v2_frame(5, receivers, body_len);
            let got = hub_decodes(VERSION_2, &wire);
            let [Ok(ClientMessageV2::RelayV2(relay))] = got.as_slice() else {
                panic!("{receivers} receivers, {body_len} bytes: {got:?}")
            };
            assert_eq!(relay.receivers.len(), receivers);
            assert_eq!(relay.body.len(), body_len);
        }
    }
}

#[test]
fn relay_v2_over_the_limits_is_refused_and_the_stream_goes_on() {
    let mut wire = BytesMut::new();
    wire.extend_from_slice(&relay_v2_frame(7, RECEIVERS_MAX + 1, 1));
    wire.extend_from_slice(&relay_v2_frame(8, 1, BODY_BYTES_MAX + 1));
    // Both over: receivers are checked first, as for Relay.
    wire.extend_from_slice(&relay_v2_frame(9, RECEIVERS_MAX + 1, BODY_BYTES_MAX + 1));
    wire.extend_from_slice(&frame(&Ack { upto: 10 }));
    let stream = [&preface_for(VERSION_2)[..], &wire].concat();
    for chunks in [&[usize::MAX][..], &[65_536], &[4093]] {
        let mut hub = Decoder::<HubSideV2>::new();
        let got = drain(&mut hub, &stream, chunks, |frame| frame.to_owned());
        let receivers_over = DecodeError::LimitExceeded {
            request: 7,
            limit: Limit::Receivers,
            value: 256,
        };
        let body_over = DecodeError::LimitExceeded {
            request: 8,
            limit: Limit::BodyBytes,
            value: (BODY_BYTES_MAX + 1) as u64,
        };
        let both_over = DecodeError::LimitExceeded {
            request: 9,
            limit: Limit::Receivers,
            value: 256,
        };
        assert_eq!(
            got,
            vec![
                Err(receivers_over),
                Err(body_over),
                Err(both_over),
                Ok(ClientMessageV2::Ack(Ack { upto: 10 })),
            ]
        );
        assert!(!receivers_over.is_fatal() && !body_over.is_fatal());
        assert_eq!(receivers_over.code_v2(), ErrorCodeV2::TooManyReceivers);
        assert_eq!(body_over.code_v2(), ErrorCodeV2::BodyTooLarge);
        assert!(!receivers_over.code_v2().closes_connection());
    }
}

#[test]
fn deliver_v2_over_the_body_limit_is_refused() {
    let body = vec![0; BODY_BYTES_MAX + 1];
    let wire = encode_deliver_v2(DeliverV2Meta::default(), &body).unwrap();
    assert_eq!(
        client_decodes(VERSION_2, &wire),
        vec![Err(DecodeError::LimitExceeded {
            request: 0,
            limit: Limit::BodyBytes,
            value: (BODY_BYTES_MAX + 1) as u64
        })]
    );
}

// ---------------------------------------------------------------------------
// Flag and field rules (fatal: the peer speaks something else).

/// Offset of a field from the end of an archive whose root is `root_size`
/// bytes: where to patch an encoded frame.
fn at(wire: &[u8], root_size: usize, field_offset: usize) -> usize {
    wire.len() - root_size + field_offset
}

fn patch_u32(wire: &mut BytesMut, position: usize, value: u32) {
    wire[position..position + 4].copy_from_slice(&value.to_le_bytes());
}

#[test]
fn relay_v2_with_undefined_flags_is_malformed() {
    for bad in [1 << 1, 1 << 31, u32::MAX] {
        let mut wire = relay_v2_frame(1, 2, 3);
        let flags_at = at(&wire, 40, 32);
        patch_u32(&mut wire, flags_at, bad);
        let expected = vec![Err(malformed(kind::RELAY_V2, Malformed::Flags))];
        assert_eq!(hub_decodes(VERSION_2, &wire), expected, "flags {bad:#x}");
        // The flags rule is fatal and comes before the (non-fatal) limits.
        let mut over = relay_v2_frame(1, RECEIVERS_MAX + 1, 0);
        let flags_at = at(&over, 40, 32);
        patch_u32(&mut over, flags_at, bad);
        assert_eq!(hub_decodes(VERSION_2, &over), expected);
    }
}

#[test]
fn field_rules_are_enforced() {
    // Receipts need a message id.
    let wire = frame(&RelayV2Ref {
        request: 1,
        message_id: 0,
        flags: flags::RECEIPT,
        receivers: &[2],
        body: b"",
    });
    assert_eq!(hub_decodes(VERSION_2, &wire), field(kind::RELAY_V2));
    // A token without a user; a resume that is not durable.
    let token = Hello {
        request: 1,
        resume_user: 0,
        resume_token: [9; RESUME_TOKEN_BYTES],
        durable: true,
    };
    assert_eq!(hub_decodes(VERSION_2, &frame(&token)), field(kind::HELLO));
    let ephemeral_resume = Hello {
        durable: false,
        ..Hello::resume(1, 5, [9; RESUME_TOKEN_BYTES])
    };
    assert_eq!(
        hub_decodes(VERSION_2, &frame(&ephemeral_resume)),
        field(kind::HELLO)
    );
    // WelcomeV2: durable exactly when there is a token; resumed implies durable.
    let welcome = |token, resumed, durable| WelcomeV2 {
        request: 1,
        user: 2,
        token,
        limits: Limits::with_protocol_bounds(),
        resumed,
        durable,
    };
    for bad in [
        welcome([0; RESUME_TOKEN_BYTES], false, true),
        welcome([1; RESUME_TOKEN_BYTES], false, false),
        welcome([0; RESUME_TOKEN_BYTES], true, false),
    ] {
        assert_eq!(
            client_decodes(VERSION_2, &frame(&bad)),
            field(kind::WELCOME_V2),
            "{bad:?}"
        );
    }
    // A redelivery has a sequence; a duplicate has a message id; a receipt
    // names a message.
    let redelivered_ephemeral = DeliverV2Ref {
        from: 1,
        seq: 0,
        message_id: 3,
        flags: flags::REDELIVERY,
        body: b"",
    };
    assert_eq!(
        client_decodes(VERSION_2, &frame(&redelivered_ephemeral)),
        field(kind::DELIVER_V2)
    );
    let duplicate_without_id = Stored {
        request: 1,
        message_id: 0,
        duplicate: true,
    };
    assert_eq!(
        client_decodes(VERSION_2, &frame(&duplicate_without_id)),
        field(kind::STORED)
    );
    for bad in [
        Receipt {
            message_id: 0,
            receiver: 2,
            seq: 1,
            flags: 0,
        },
        Receipt {
            message_id: 1,
            receiver: 2,
            seq: 0,
            flags: flags::REDELIVERY,
        },
    ] {
        assert_eq!(
            client_decodes(VERSION_2, &frame(&bad)),
            field(kind::RECEIPT)
        );
    }
}

#[test]
fn hub_frames_with_undefined_flags_are_malformed() {
    let mut deliver = frame(&DeliverV2Ref {
        from: 1,
        seq: 1,
        message_id: 1,
        flags: 0,
        body: b"abc",
    });
    let flags_at = at(&deliver, 40, 32);
    patch_u32(&mut deliver, flags_at, 1 << 1);
    assert_eq!(
        client_decodes(VERSION_2, &deliver),
        vec![Err(malformed(kind::DELIVER_V2, Malformed::Flags))]
    );
    let mut receipt = frame(&Receipt {
        message_id: 1,
        receiver: 2,
        seq: 3,
        flags: 0,
    });
    let flags_at = at(&receipt, 32, 24);
    patch_u32(&mut receipt, flags_at, 1 << 7);
    assert_eq!(
        client_decodes(VERSION_2, &receipt),
        vec![Err(malformed(kind::RECEIPT, Malformed::Flags))]
    );
}

#[test]
fn bools_that_are_neither_0_nor_1_are_malformed() {
    let archive = Malformed::Archive;
    let mut hello = frame(&Hello::new_session(1, true));
    let durable = at(&hello, 40, 32);
    hello[durable] = 2;
    assert_eq!(
        hub_decodes(VERSION_2, &hello),
        vec![Err(malformed(kind::HELLO, archive))]
    );
    let mut stored = frame(&Stored {
        request: 1,
        message_id: 1,
        duplicate: true,
    });
    let duplicate = at(&stored, 24, 16);
    stored[duplicate] = 0xff;
    assert_eq!(
        client_decodes(VERSION_2, &stored),
        vec![Err(malformed(kind::STORED, archive))]
    );
    let mut welcome = frame(&WelcomeV2 {
        request: 1,
        user: 2,
        token: [3; RESUME_TOKEN_BYTES],
        limits: Limits::with_protocol_bounds(),
        resumed: true,
        durable: true,
    });
    let resumed = at(&welcome, 144, 136);
    welcome[resumed] = 3;
    assert_eq!(
        client_decodes(VERSION_2, &welcome),
        vec![Err(malformed(kind::WELCOME_V2, archive))]
    );
}

// ---------------------------------------------------------------------------
// Truncation.

#[test]
fn truncated_version_2_frames_are_incomplete_at_every_cut() {
    let client_frames = client_wire(&[
        ClientMessageV2::Hello(Hello::resume(1, 2, [3; RESUME_TOKEN_BYTES])),
        ClientMessageV2::RelayV2(RelayV2 {
            request: 4,
            message_id: 5,
            receivers: vec![6, 7, 8],
            body: b"truncate me".to_vec(),
            flags: flags::RECEIPT,
        }),
        ClientMessageV2::Ack(Ack { upto: 9 }),
    ]);
    let hub_frames = hub_wire(&[
        HubMessageV2::WelcomeV2(WelcomeV2 {
            request: 1,
            user: 2,
            token: [3; RESUME_TOKEN_BYTES],
            limits: Limits::with_protocol_bounds(),
            resumed: true,
            durable: true,
        }),
        HubMessageV2::DeliverV2(DeliverV2 {
            from: 1,
            seq: 2,
            message_id: 3,
            body: b"truncate me too".to_vec(),
            flags: flags::REDELIVERY,
        }),
        HubMessageV2::Stored(Stored {
            request: 4,
            message_id: 5,
            duplicate: true,
        }),
        HubMessageV2::Receipt(Receipt {
            message_id: 6,
            receiver: 7,
            seq: 8,
            flags: 0,
        }),
    ]);
    for (wire, hub_side) in [(&client_frames, true), (&hub_frames, false)] {
        // Split into its frames, then cut each one everywhere.
        let mut rest = &wire[..];
        while !rest.is_empty() {
            let len = FrameHeader::check(rest).unwrap().frame_len();
            let one = &rest[..len];
            for cut in 0..len {
                let part = aligned(&one[..cut]);
                if hub_side {
                    let mut hub = Decoder::<HubSideV2>::after_preface_version(VERSION_2);
                    hub.handle_bytes(&part);
                    assert!(hub.poll_frame().unwrap().is_none(), "cut at {cut}");
                    assert!(matches!(
                        decode_frame_version::<HubSideV2>(VERSION_2, &part),
                        Err(DecodeError::Incomplete { .. })
                    ));
                } else {
                    let mut client = Decoder::<ClientSideV2>::after_preface_version(VERSION_2);
                    client.handle_bytes(&part);
                    assert!(client.poll_frame().unwrap().is_none(), "cut at {cut}");
                    assert!(matches!(
                        decode_frame_version::<ClientSideV2>(VERSION_2, &part),
                        Err(DecodeError::Incomplete { .. })
                    ));
                }
            }
            rest = &rest[len..];
        }
    }
}

// ---------------------------------------------------------------------------
// Handing a connection over (a resume lands on another shard).

#[test]
fn a_decoder_hands_its_unread_bytes_to_another() {
    let frames = [
        ClientMessageV2::Hello(Hello::resume(1, 42, [7; RESUME_TOKEN_BYTES])),
        ClientMessageV2::Ack(Ack { upto: 3 }),
        ClientMessageV2::Identity(Identity { request: 2 }),
    ];
    let wire = [&preface_for(VERSION_2)[..], &client_wire(&frames)].concat();
    // The accepting shard has read all but the last 5 bytes and decoded the Hello.
    let mut accepting = Decoder::<HubSideV2>::new();
    accepting.handle_bytes(&wire[..wire.len() - 5]);
    let Some(ClientFrameV2::Hello(hello)) = accepting.poll_frame().unwrap() else {
        panic!("not a Hello")
    };
    assert_eq!(hello.resume_user.to_native(), 42);
    // It puts the Hello back and hands everything over to the owner shard.
    accepting.unpoll();
    let version = accepting.version().unwrap();
    let handed = accepting.buffered().to_vec();
    assert_eq!(handed.len(), accepting.buffered_len());
    let mut owner = Decoder::<HubSideV2>::after_preface_version(version);
    owner.handle_bytes(&handed);
    owner.handle_bytes(&wire[wire.len() - 5..]);
    let got = drain(&mut owner, &[], &[], |frame| frame.to_owned());
    let expected: Vec<_> = frames.iter().cloned().map(Ok).collect();
    assert_eq!(got, expected);
}
