//! Every message survives encode then decode, on both sides, at the edges.

mod common;

use bytes::BytesMut;
use common::*;
use proptest::prelude::*;
use relayhub_protocol::*;

fn decode_one_client(wire: &[u8]) -> ClientMessage {
    let mut decoder = Decoder::<HubSide>::after_preface();
    decoder.handle_bytes(wire);
    let message = decoder
        .poll_frame()
        .expect("valid")
        .expect("complete")
        .to_owned();
    assert!(
        decoder.poll_frame().expect("valid").is_none(),
        "exactly one frame"
    );
    message
}

fn decode_one_hub(wire: &[u8]) -> HubMessage {
    let mut decoder = Decoder::<ClientSide>::after_preface();
    decoder.handle_bytes(wire);
    let message = decoder
        .poll_frame()
        .expect("valid")
        .expect("complete")
        .to_owned();
    assert!(
        decoder.poll_frame().expect("valid").is_none(),
        "exactly one frame"
    );
    message
}

proptest! {
    #[test]
    fn client_messages_round_trip(message in client_message()) {
        let mut wire = BytesMut::new();
        let len = encode_client(&message, &mut wire);
        prop_assert_eq!(len, wire.len());
        prop_assert_eq!(len % FRAME_ALIGN_BYTES, 0);
        let header = FrameHeader::check(&wire).unwrap();
        prop_assert_eq!(header.frame_len(), len);
        prop_assert_eq!(decode_one_client(&wire), message);
    }

    #[test]
    fn hub_messages_round_trip(message in hub_message()) {
        let mut wire = BytesMut::new();
        let len = encode_hub(&message, &mut wire);
        prop_assert_eq!(FrameHeader::check(&wire).unwrap().frame_len(), len);
        prop_assert_eq!(decode_one_hub(&wire), message);
    }

    #[test]
    fn borrowed_twins_encode_the_same_bytes(
        request in any::<u64>(),
        receivers in proptest::collection::vec(any::<u64>(), 0..=RECEIVERS_MAX),
        body in body(2000),
        more in any::<bool>(),
    ) {
        let pairs: [(BytesMut, BytesMut); 5] = [
            (
                frame(&Relay { request, receivers: receivers.clone(), body: body.clone() }),
                frame(&RelayRef { request, receivers: &receivers, body: &body }),
            ),
            (frame(&Echo { request, body: body.clone() }), frame(&EchoRef { request, body: &body })),
            (
                frame(&EchoReply { request, body: body.clone() }),
                frame(&EchoReplyRef { request, body: &body }),
            ),
            (
                frame(&ListReply { request, users: receivers.clone(), more }),
                frame(&ListReplyRef { request, users: &receivers, more }),
            ),
            (frame(&Deliver { from: request, body: body.clone() }), frame(&DeliverRef { from: request, body: &body })),
        ];
        for (owned, borrowed) in pairs {
            prop_assert_eq!(owned, borrowed);
        }
        let shared = encode_deliver(request, &body).unwrap();
        prop_assert_eq!(shared.len(), deliver_frame_len(body.len()));
        prop_assert_eq!(&shared[..], &frame(&DeliverRef { from: request, body: &body })[..]);
    }
}

fn frame<M: Message>(message: &M) -> BytesMut {
    let mut out = BytesMut::new();
    encode(message, &mut out).unwrap();
    out
}

#[test]
fn relay_edges_round_trip() {
    for receivers in [0, 1, RECEIVERS_MAX] {
        for body_len in [0, 1, BODY_BYTES_MAX] {
            let message = ClientMessage::Relay(Relay {
                request: 42,
                receivers: (1..=receivers as u64).collect(),
                body: (0..body_len).map(|i| i as u8).collect(),
            });
            let mut wire = BytesMut::new();
            encode_client(&message, &mut wire);
            assert!(wire.len() - FRAME_HEADER_BYTES <= FRAME_BYTES_MAX);
            assert_eq!(
                decode_one_client(&wire),
                message,
                "{receivers} receivers, {body_len} bytes"
            );
        }
    }
}

#[test]
fn largest_bodies_round_trip_in_every_message() {
    let body: Vec<u8> = (0..BODY_BYTES_MAX).map(|i| (i * 7) as u8).collect();
    let echo = ClientMessage::Echo(Echo {
        request: 1,
        body: body.clone(),
    });
    let mut wire = BytesMut::new();
    encode_client(&echo, &mut wire);
    assert_eq!(decode_one_client(&wire), echo);

    for message in [
        HubMessage::EchoReply(EchoReply {
            request: 1,
            body: body.clone(),
        }),
        HubMessage::Deliver(Deliver {
            from: 9,
            body: body.clone(),
        }),
        HubMessage::ListReply(ListReply {
            request: 3,
            users: (1..=LIST_PAGE_USERS_MAX as u64).collect(),
            more: true,
        }),
    ] {
        let mut wire = BytesMut::new();
        encode_hub(&message, &mut wire);
        assert_eq!(decode_one_hub(&wire), message);
    }
}

#[test]
fn welcome_advertises_the_limits() {
    let mut wire = BytesMut::new();
    encode(&Welcome::with_protocol_limits(5), &mut wire).unwrap();
    let HubMessage::Welcome(welcome) = decode_one_hub(&wire) else {
        panic!("not a welcome")
    };
    assert_eq!(welcome.user, 5);
    assert_eq!(welcome.frame_bytes_max as usize, FRAME_BYTES_MAX);
    assert_eq!(welcome.receivers_max as usize, RECEIVERS_MAX);
    assert_eq!(welcome.body_bytes_max as usize, BODY_BYTES_MAX);
    assert_eq!(welcome.list_page_users_max as usize, LIST_PAGE_USERS_MAX);
}

#[test]
fn oversized_archive_is_refused_by_the_encoder() {
    let mut out = BytesMut::from(&b"keep"[..]);
    let body = vec![0u8; FRAME_BYTES_MAX];
    let result = encode(
        &DeliverRef {
            from: 1,
            body: &body,
        },
        &mut out,
    );
    assert!(matches!(result, Err(EncodeError::FrameTooLarge { len }) if len > FRAME_BYTES_MAX));
    assert_eq!(&out[..], b"keep", "output left as it was");
}
