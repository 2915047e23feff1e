//! One trait over both decoder sides, so that each stream property is
//! written once and checked for `Decoder<HubSide>` and `Decoder<ClientSide>`.

use bytes::BytesMut;
use relayhub_protocol::{
    encode, ClientFrame, ClientMessage, ClientSide, HubFrame, HubMessage, HubSide, Role,
    BODY_BYTES_MAX, LIST_PAGE_USERS_MAX, RECEIVERS_MAX,
};

/// A decoder side whose frames can be copied out, checked and re-encoded.
pub trait Side: Role {
    /// The owned message a frame copies into.
    type Owned: Clone + std::fmt::Debug + PartialEq;

    /// Copies a borrowed frame out of the decoder's buffer.
    fn owned(frame: &Self::Frame<'_>) -> Self::Owned;

    /// Asserts that a decoded message respects every protocol limit: the
    /// decoder must have refused it otherwise.
    fn assert_within_limits(message: &Self::Owned);

    /// Appends `message` as one frame, in canonical layout.
    fn encode_owned(message: &Self::Owned, out: &mut BytesMut) -> usize;
}

impl Side for HubSide {
    type Owned = ClientMessage;

    fn owned(frame: &ClientFrame<'_>) -> ClientMessage {
        frame.to_owned()
    }

    fn assert_within_limits(message: &ClientMessage) {
        match message {
            ClientMessage::Echo(echo) => assert!(echo.body.len() <= BODY_BYTES_MAX),
            ClientMessage::Identity(_) | ClientMessage::List(_) => {}
            ClientMessage::Relay(relay) => {
                assert!(relay.receivers.len() <= RECEIVERS_MAX);
                assert!(relay.body.len() <= BODY_BYTES_MAX);
            }
        }
    }

    fn encode_owned(message: &ClientMessage, out: &mut BytesMut) -> usize {
        encode_client(message, out)
    }
}

impl Side for ClientSide {
    type Owned = HubMessage;

    fn owned(frame: &HubFrame<'_>) -> HubMessage {
        frame.to_owned()
    }

    fn assert_within_limits(message: &HubMessage) {
        match message {
            HubMessage::EchoReply(reply) => assert!(reply.body.len() <= BODY_BYTES_MAX),
            HubMessage::Deliver(deliver) => assert!(deliver.body.len() <= BODY_BYTES_MAX),
            HubMessage::ListReply(reply) => assert!(reply.users.len() <= LIST_PAGE_USERS_MAX),
            HubMessage::Welcome(_) | HubMessage::IdentityReply(_) | HubMessage::Error(_) => {}
        }
    }

    fn encode_owned(message: &HubMessage, out: &mut BytesMut) -> usize {
        encode_hub(message, out)
    }
}

/// Appends a client message as one frame (panics past the frame limit:
/// every message within the protocol limits fits).
pub fn encode_client(message: &ClientMessage, out: &mut BytesMut) -> usize {
    match message {
        ClientMessage::Echo(m) => encode(m, out),
        ClientMessage::Identity(m) => encode(m, out),
        ClientMessage::List(m) => encode(m, out),
        ClientMessage::Relay(m) => encode(m, out),
    }
    .expect("a message within the protocol limits fits in a frame")
}

/// Appends a hub message as one frame (panics past the frame limit).
pub fn encode_hub(message: &HubMessage, out: &mut BytesMut) -> usize {
    match message {
        HubMessage::Welcome(m) => encode(m, out),
        HubMessage::EchoReply(m) => encode(m, out),
        HubMessage::IdentityReply(m) => encode(m, out),
        HubMessage::ListReply(m) => encode(m, out),
        HubMessage::Deliver(m) => encode(m, out),
        HubMessage::Error(m) => encode(m, out),
    }
    .expect("a message within the protocol limits fits in a frame")
}
