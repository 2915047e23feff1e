//! roundtrip: `Arbitrary` messages in both directions, within the protocol
//! limits, encoded then decoded.
//!
//! Asserts: each decodes (one-shot and through a decoder) to an equal
//! message; the encoded length is what `encode` returned, what the header's
//! frame_len says, and a multiple of 8; the header carries the message's
//! kind; the borrowed twins (EchoRef, RelayRef, EchoReplyRef, ListReplyRef,
//! DeliverRef, encode_deliver) encode to identical bytes; and the messages
//! concatenated behind a preface decode, whole, in fuzz-chosen chunks and
//! through spare/commit, to exactly the input sequence.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use relayhub_fuzz::{
    aligned,
    mirror::RoundtripInput,
    side::Side,
    stream::{chunk_floor, decode_chunks, decode_reads, decode_whole},
};
use relayhub_protocol::{
    decode_frame, deliver_frame_len, encode, encode_deliver, kind, ClientMessage, ClientSide,
    Decoder, DeliverRef, EchoRef, EchoReplyRef, FrameHeader, HubMessage, HubSide, ListReplyRef,
    Message, RelayRef, FRAME_ALIGN_BYTES, PREFACE,
};

fuzz_target!(|input: RoundtripInput| {
    let (client, hub) = input.messages();
    let chunks = input.chunk_sizes();
    let client_wire = check_each::<HubSide>(&client, client_kind, client_twin);
    check_stream::<HubSide>(&client_wire, &client, &chunks);
    let hub_wire = check_each::<ClientSide>(&hub, hub_kind, hub_twin);
    check_stream::<ClientSide>(&hub_wire, &hub, &chunks);
});

/// Encodes each message alone and checks it; returns the preface followed
/// by all the frames.
fn check_each<S: Side>(
    messages: &[S::Owned],
    kind_of: fn(&S::Owned) -> u16,
    twin_of: fn(&S::Owned) -> Option<BytesMut>,
) -> Vec<u8> {
    let mut stream = PREFACE.to_vec();
    for message in messages {
        let mut wire = BytesMut::new();
        let len = S::encode_owned(message, &mut wire);
        assert_eq!(len, wire.len(), "encode returned a wrong length");
        assert_eq!(len % FRAME_ALIGN_BYTES, 0, "frame of {len} bytes");
        let header = FrameHeader::check(&wire).expect("an encoded header is valid");
        assert_eq!(header.frame_len(), len, "header frame_len disagrees");
        assert_eq!(header.kind, kind_of(message));
        if let Some(twin) = twin_of(message) {
            assert_eq!(twin, wire, "the borrowed twin encodes other bytes");
        }

        let buffer = aligned(&wire);
        let (frame, frame_len) = decode_frame::<S>(&buffer).expect("decodes one-shot");
        assert_eq!(frame_len, len);
        assert_eq!(&S::owned(&frame), message);

        let mut decoder = Decoder::<S>::after_preface();
        decoder.handle_bytes(&wire);
        let decoded = S::owned(&decoder.poll_frame().expect("valid").expect("complete"));
        assert_eq!(&decoded, message);
        assert!(
            decoder.poll_frame().expect("valid").is_none(),
            "one frame only"
        );

        stream.extend_from_slice(&wire);
    }
    stream
}

/// The concatenated frames decode to the input sequence, however split.
fn check_stream<S: Side>(wire: &[u8], messages: &[S::Owned], chunks: &[usize]) {
    let floor = chunk_floor(wire.len());
    let chunks: Vec<usize> = chunks.iter().map(|&size| size.max(floor)).collect();
    let chunks = &chunks[..];
    let expected: Vec<_> = messages.iter().cloned().map(Ok).collect();
    assert_eq!(decode_whole::<S>(wire), expected, "whole stream");
    assert_eq!(
        decode_chunks::<S>(wire, chunks, false),
        expected,
        "chunked stream"
    );
    assert_eq!(
        decode_reads::<S>(wire, chunks, true),
        expected,
        "spare/commit stream"
    );
}

fn frame<M: Message>(message: &M) -> BytesMut {
    let mut out = BytesMut::new();
    encode(message, &mut out).expect("within limits");
    out
}

fn client_kind(message: &ClientMessage) -> u16 {
    match message {
        ClientMessage::Echo(_) => kind::ECHO,
        ClientMessage::Identity(_) => kind::IDENTITY,
        ClientMessage::List(_) => kind::LIST,
        ClientMessage::Relay(_) => kind::RELAY,
    }
}

fn hub_kind(message: &HubMessage) -> u16 {
    match message {
        HubMessage::Welcome(_) => kind::WELCOME,
        HubMessage::EchoReply(_) => kind::ECHO_REPLY,
        HubMessage::IdentityReply(_) => kind::IDENTITY_REPLY,
        HubMessage::ListReply(_) => kind::LIST_REPLY,
        HubMessage::Deliver(_) => kind::DELIVER,
        HubMessage::Error(_) => kind::ERROR,
    }
}

fn client_twin(message: &ClientMessage) -> Option<BytesMut> {
    match message {
        ClientMessage::Echo(m) => Some(frame(&EchoRef {
            request: m.request,
            body: &m.body,
        })),
        ClientMessage::Relay(m) => Some(frame(&RelayRef {
            request: m.request,
            receivers: &m.receivers,
            body: &m.body,
        })),
        ClientMessage::Identity(_) | ClientMessage::List(_) => None,
    }
}

fn hub_twin(message: &HubMessage) -> Option<BytesMut> {
    match message {
        HubMessage::EchoReply(m) => Some(frame(&EchoReplyRef {
            request: m.request,
            body: &m.body,
        })),
        HubMessage::ListReply(m) => Some(frame(&ListReplyRef {
            request: m.request,
            users: &m.users,
            more: m.more,
        })),
        HubMessage::Deliver(m) => {
            let borrowed = frame(&DeliverRef {
                from: m.from,
                body: &m.body,
            });
            let shared = encode_deliver(m.from, &m.body).expect("within limits");
            assert_eq!(
                &shared[..],
                &borrowed[..],
                "encode_deliver differs from DeliverRef"
            );
            assert_eq!(shared.len(), deliver_frame_len(m.body.len()));
            Some(borrowed)
        }
        HubMessage::Welcome(_) | HubMessage::IdentityReply(_) | HubMessage::Error(_) => None,
    }
}
