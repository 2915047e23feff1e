//! The relayhub target, driven with the `relayhub-protocol` codec.
//!
//! Each client holds one connection: preface both ways, then the hub's
//! `Welcome` names the client's user id. A relay to K receivers is one
//! `Relay` frame listing K user ids; the echo scenario uses `Echo`.

use bytes::BytesMut;
use relayhub_protocol::{encode, ClientSide, Decoder, EchoRef, HubFrame, RelayRef, PREFACE};

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
