//! The relayhub target, driven with the `relayhub-protocol` codec.
//!
//! Each client holds one connection: preface both ways, then the hub's
//! `Welcome` names the client's user id. A relay to K receivers is one
//! `Relay` frame listing K user ids; the echo scenario uses `Echo`.
//!
//! Durable runs (`--durable`) speak protocol version 2: the v2 preface and
//! `Hello{durable}` (or `Hello::resume`), `WelcomeV2` with the user id and
//! resume token, `RelayV2` out (its `message_id` doubles as the request
//! id), `Stored` and `DeliverV2{seq, flags}` in, cumulative `Ack`s out.

use bytes::BytesMut;
use relayhub_protocol::{
    encode, preface_for, Ack, ClientSide, ClientSideV2, Decoder, EchoRef, Hello, HubFrame,
    HubFrameV2, RelayRef, RelayV2Ref, ResumeToken, PREFACE, VERSION_2,
};

use super::{Event, WireError};

/// The first bytes a client sends.
pub const CLIENT_PREFACE: [u8; 8] = PREFACE;

/// Encodes a relay of `body` to `receivers` (user ids).
pub fn encode_relay(
    out: &mut BytesMut,
    request: u64,
    receivers: &[u64],
    body: &[u8],
) -> Result<(), WireError> {
    encode(
        &RelayRef {
            request,
            receivers,
            body,
        },
        out,
    )
    .map(|_| ())
    .map_err(|error| WireError::Protocol(format!("cannot encode relay: {error}")))
}

/// Encodes an echo request of `body`.
pub fn encode_echo(out: &mut BytesMut, request: u64, body: &[u8]) -> Result<(), WireError> {
    encode(&EchoRef { request, body }, out)
        .map(|_| ())
        .map_err(|error| WireError::Protocol(format!("cannot encode echo: {error}")))
}

/// A fresh decoder for the hub's side of a connection (expects its preface).
pub fn new_decoder() -> Decoder<ClientSide> {
    Decoder::new()
}

/// The next event buffered in `decoder`, if any.
pub fn next_event(decoder: &mut Decoder<ClientSide>) -> Result<Option<Event<'_>>, WireError> {
    let frame = decoder
        .poll_frame()
        .map_err(|error| WireError::Protocol(error.to_string()))?;
    Ok(frame.map(|frame| match frame {
        HubFrame::Deliver(deliver) => Event::Delivery(deliver.body.as_slice()),
        HubFrame::EchoReply(reply) => Event::Delivery(reply.body.as_slice()),
        HubFrame::Welcome(welcome) => Event::Welcome {
            user: welcome.user.to_native(),
        },
        HubFrame::Error(error) => Event::HubError {
            code: error.code.to_native(),
            request: error.request.to_native(),
            detail: error.detail.to_native(),
        },
        HubFrame::IdentityReply(_) | HubFrame::ListReply(_) => Event::Other,
    }))
}

/// The first bytes a version-2 client sends.
pub const CLIENT_PREFACE_V2: [u8; 8] = preface_for(VERSION_2);

/// Encodes a `Hello`: a new durable session (`resume` is `None`) or the
/// resume of `(user, token)`.
pub fn encode_hello(
    out: &mut BytesMut,
    request: u64,
    resume: Option<(u64, ResumeToken)>,
) -> Result<(), WireError> {
    let hello = match resume {
        None => Hello::new_session(request, true),
        Some((user, token)) => Hello::resume(request, user, token),
    };
    encode(&hello, out)
        .map(|_| ())
        .map_err(|error| WireError::Protocol(format!("cannot encode hello: {error}")))
}

/// Encodes a durable relay of `body` to `receivers`: `message_id` is the
/// request id too (one number names the relay in `Stored` and in retries);
/// `flags` are `RelayV2.flags` (`RECEIPT` or 0).
pub fn encode_relay_v2(
    out: &mut BytesMut,
    message_id: u64,
    flags: u32,
    receivers: &[u64],
    body: &[u8],
) -> Result<(), WireError> {
    encode(
        &RelayV2Ref {
            request: message_id,
            message_id,
            flags,
            receivers,
            body,
        },
        out,
    )
    .map(|_| ())
    .map_err(|error| WireError::Protocol(format!("cannot encode relay: {error}")))
}

/// Encodes a cumulative `Ack{upto}`.
pub fn encode_ack(out: &mut BytesMut, upto: u64) {
    encode(&Ack { upto }, out).expect("an ack always encodes");
}

/// A fresh decoder for a version-2 connection (expects the hub's v2 preface).
pub fn new_decoder_v2() -> Decoder<ClientSideV2> {
    Decoder::expecting(VERSION_2)
}

/// The next event buffered in a version-2 `decoder`, if any.
pub fn next_event_v2(decoder: &mut Decoder<ClientSideV2>) -> Result<Option<Event<'_>>, WireError> {
    let frame = decoder
        .poll_frame()
        .map_err(|error| WireError::Protocol(error.to_string()))?;
    Ok(frame.map(|frame| match frame {
        HubFrameV2::DeliverV2(deliver) => Event::DeliveryV2 {
            body: deliver.body.as_slice(),
            seq: deliver.seq.to_native(),
            flags: deliver.flags.to_native(),
        },
        HubFrameV2::Stored(stored) => Event::Stored {
            request: stored.request.to_native(),
            message_id: stored.message_id.to_native(),
            duplicate: stored.duplicate,
        },
        HubFrameV2::WelcomeV2(welcome) => Event::WelcomeV2 {
            user: welcome.user.to_native(),
            token: welcome.token,
            resumed: welcome.resumed,
            durable: welcome.durable,
        },
        HubFrameV2::Error(error) => Event::HubError {
            code: error.code.to_native(),
            request: error.request.to_native(),
            detail: error.detail.to_native(),
        },
        HubFrameV2::Receipt(receipt) => Event::Receipt {
            message_id: receipt.message_id.to_native(),
            seq: receipt.seq.to_native(),
            flags: receipt.flags.to_native(),
        },
        HubFrameV2::EchoReply(reply) => Event::Delivery(reply.body.as_slice()),
        // Version 1 only (the decoder refuses them on a v2 connection), or
        // not asked for (identity, list).
        HubFrameV2::Welcome(_)
        | HubFrameV2::Deliver(_)
        | HubFrameV2::IdentityReply(_)
        | HubFrameV2::ListReply(_) => Event::Other,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use relayhub_protocol::{
        deliver_v2_prefix, deliver_v2_root, flags, hub_preface, DeliverV2Meta, Error as HubError,
        ErrorCodeV2, HubSideV2, Limits, Stored, WelcomeV2,
    };

    /// What a v2 client encodes is what the hub's decoder reads.
    #[test]
    fn client_frames_reach_the_hub_side() {
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&CLIENT_PREFACE_V2);
        encode_hello(&mut wire, 1, None).unwrap();
        encode_relay_v2(&mut wire, 7, 0, &[3, 4], b"body").unwrap();
        encode_ack(&mut wire, 9);
        encode_hello(&mut wire, 2, Some((5, [7; 16]))).unwrap();
        let mut hub = Decoder::<HubSideV2>::new();
        hub.handle_bytes(&wire);
        assert!(hub.poll_preface().unwrap());
        assert_eq!(hub.version(), Some(VERSION_2));
        let mut frames = Vec::new();
        while let Some(frame) = hub.poll_frame().unwrap() {
            frames.push(frame.to_owned());
        }
        use relayhub_protocol::ClientMessageV2 as M;
        assert_eq!(
            frames,
            [
                M::Hello(Hello::new_session(1, true)),
                M::RelayV2(relayhub_protocol::RelayV2 {
                    request: 7,
                    message_id: 7,
                    receivers: vec![3, 4],
                    body: b"body".to_vec(),
                    flags: 0,
                }),
                M::Ack(Ack { upto: 9 }),
                M::Hello(Hello::resume(2, 5, [7; 16])),
            ]
        );
    }

    /// Every hub frame a durable run reads, split at every byte.
    #[test]
    fn hub_frames_decode_into_events_split_anywhere() {
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&hub_preface(Some(VERSION_2)));
        let welcome = WelcomeV2 {
            request: 1,
            user: 42,
            token: [9; 16],
            limits: Limits::with_protocol_bounds(),
            resumed: true,
            durable: true,
        };
        encode(&welcome, &mut wire).unwrap();
        let body = b"0123456789abcdefghijXYZ";
        wire.extend_from_slice(&deliver_v2_prefix(body).unwrap());
        let meta = DeliverV2Meta {
            from: 3,
            seq: 17,
            message_id: 5,
            flags: flags::REDELIVERY,
        };
        wire.extend_from_slice(&deliver_v2_root(meta, body.len()));
        encode(
            &Stored {
                request: 8,
                message_id: 8,
                duplicate: true,
            },
            &mut wire,
        )
        .unwrap();
        encode(&HubError::new_v2(ErrorCodeV2::InboxFull, 8, 3), &mut wire).unwrap();
        let expected = [
            format!(
                "{:?}",
                Event::WelcomeV2 {
                    user: 42,
                    token: [9; 16],
                    resumed: true,
                    durable: true
                }
            ),
            format!(
                "{:?}",
                Event::DeliveryV2 {
                    body,
                    seq: 17,
                    flags: flags::REDELIVERY
                }
            ),
            format!(
                "{:?}",
                Event::Stored {
                    request: 8,
                    message_id: 8,
                    duplicate: true
                }
            ),
            format!(
                "{:?}",
                Event::HubError {
                    code: ErrorCodeV2::InboxFull.to_wire(),
                    request: 8,
                    detail: 3
                }
            ),
        ];
        for split in 1..wire.len() {
            let mut decoder = new_decoder_v2();
            let mut events = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                decoder.handle_bytes(part);
                while let Some(event) = next_event_v2(&mut decoder).unwrap() {
                    events.push(format!("{event:?}"));
                }
            }
            assert_eq!(events, expected, "split at {split}");
        }
    }

    /// A hub answering version 1 to a v2 preface is refused, not misread.
    #[test]
    fn a_version_1_answer_is_an_error() {
        let mut decoder = new_decoder_v2();
        decoder.handle_bytes(&hub_preface(Some(1)));
        assert!(next_event_v2(&mut decoder).is_err());
    }
}
