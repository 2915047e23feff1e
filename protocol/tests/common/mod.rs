//! Generators and helpers shared by the protocol tests.
#![allow(dead_code)]

use bytes::BytesMut;
use proptest::{collection::vec, prelude::*};
use relayhub_protocol::*;

/// A body of 0..=`max` bytes.
pub fn body(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max)
}

/// Any client message within the protocol limits (bodies kept small so the
/// property runs fast; the 1 MiB edges have their own tests).
pub fn client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        (any::<u64>(), body(300))
            .prop_map(|(request, body)| ClientMessage::Echo(Echo { request, body })),
        any::<u64>().prop_map(|request| ClientMessage::Identity(Identity { request })),
        (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(request, after, limit)| {
            ClientMessage::List(List {
                request,
                after,
                limit,
            })
        }),
        (
            any::<u64>(),
            vec(any::<u64>(), 0..=RECEIVERS_MAX),
            body(300)
        )
            .prop_map(|(request, receivers, body)| ClientMessage::Relay(Relay {
                request,
                receivers,
                body
            })),
    ]
}

/// Any hub message within the protocol limits.
pub fn hub_message() -> impl Strategy<Value = HubMessage> {
    prop_oneof![
        (
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(
                |(user, frame_bytes_max, receivers_max, body_bytes_max, list_page_users_max)| {
                    HubMessage::Welcome(Welcome {
                        user,
                        frame_bytes_max,
                        receivers_max,
                        body_bytes_max,
                        list_page_users_max,
                    })
                }
            ),
        (any::<u64>(), body(300))
            .prop_map(|(request, body)| HubMessage::EchoReply(EchoReply { request, body })),
        (any::<u64>(), any::<u64>())
            .prop_map(|(request, user)| HubMessage::IdentityReply(IdentityReply { request, user })),
        (any::<u64>(), vec(any::<u64>(), 0..=600), any::<bool>()).prop_map(
            |(request, users, more)| HubMessage::ListReply(ListReply {
                request,
                users,
                more
            })
        ),
        (any::<u64>(), body(300))
            .prop_map(|(from, body)| HubMessage::Deliver(Deliver { from, body })),
        (any::<u64>(), any::<u64>(), any::<u16>()).prop_map(|(request, detail, code)| {
            HubMessage::Error(Error {
                request,
                detail,
                code,
            })
        }),
    ]
}

/// Appends `message` as one frame.
pub fn encode_client(message: &ClientMessage, out: &mut BytesMut) -> usize {
    match message {
        ClientMessage::Echo(m) => encode(m, out),
        ClientMessage::Identity(m) => encode(m, out),
        ClientMessage::List(m) => encode(m, out),
        ClientMessage::Relay(m) => encode(m, out),
    }
    .expect("within limits")
}

/// Appends `message` as one frame.
pub fn encode_hub(message: &HubMessage, out: &mut BytesMut) -> usize {
    match message {
        HubMessage::Welcome(m) => encode(m, out),
        HubMessage::EchoReply(m) => encode(m, out),
        HubMessage::IdentityReply(m) => encode(m, out),
        HubMessage::ListReply(m) => encode(m, out),
        HubMessage::Deliver(m) => encode(m, out),
        HubMessage::Error(m) => encode(m, out),
    }
    .expect("within limits")
}

/// Feeds `wire` to a hub-side decoder in the given chunk sizes (cycled) and
/// collects every frame or error until the bytes run out.
pub fn decode_in_chunks(wire: &[u8], chunks: &[usize]) -> Vec<Result<ClientMessage, DecodeError>> {
    let mut decoder = Decoder::<HubSide>::new();
    let mut out = Vec::new();
    let mut offset = 0;
    let mut sizes = chunks.iter().copied().cycle();
    loop {
        loop {
            match decoder.poll_frame() {
                Ok(Some(frame)) => out.push(Ok(frame.to_owned())),
                Ok(None) => break,
                Err(error) => {
                    out.push(Err(error));
                    if error.is_fatal() {
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
            .unwrap_or(wire.len())
            .clamp(1, wire.len() - offset);
        decoder.handle_bytes(&wire[offset..offset + take]);
        offset += take;
    }
}
