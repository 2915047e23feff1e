//! The `sink://` target: relayhub frames through the cheapest possible
//! peer ([`crate::sink`]), to measure the loadgen alone.
//!
//! The loadgen encodes exactly what it sends a hub (`Relay` and `Echo`
//! frames, from the same templates) and decodes, with validation, what the
//! sink forwards: those same client frames, on the receiver's connection.
//! Per message the loadgen does the work it does against a hub; the sink
//! does almost none (it routes whole frames by their 8-byte header).
//!
//! Handshake: the client sends the relayhub preface and one `Relay` frame
//! whose `request` is its client index and whose `receivers` are the client
//! indices it will send to (its routes; none for storm and idle); the sink
//! answers with the preface and `Identity { request: index }`, which the
//! loadgen reads as its welcome (address = client index).
//!
//! A client whose receivers are drawn per message (`--pick random`) names
//! the one route [`ROUTE_BY_FRAME`]: the sink then sends each of its
//! `Relay` frames to the client indices the frame itself lists.

use bytes::BytesMut;
use relayhub_protocol::{encode, ClientFrame, Decoder, HubSide, Identity, RelayRef, PREFACE};

use super::{Event, WireError};

/// The only route of a client whose frames each name their receivers.
pub const ROUTE_BY_FRAME: u64 = u64::MAX;

/// The client's hello: preface, then a `Relay` naming itself and its routes.
pub fn encode_hello(out: &mut BytesMut, index: u32, routes: &[u64]) -> Result<(), WireError> {
    out.extend_from_slice(&PREFACE);
    encode(
        &RelayRef {
            request: u64::from(index),
            receivers: routes,
            body: &[],
        },
        out,
    )
    .map(|_| ())
    .map_err(|error| WireError::Protocol(format!("cannot encode the sink hello: {error}")))
}

/// The sink's answer: preface, then `Identity { request: index }`.
pub fn encode_hello_reply(out: &mut BytesMut, index: u64) {
    out.extend_from_slice(&PREFACE);
    encode(&Identity { request: index }, out).expect("an identity frame always encodes");
}

/// A fresh decoder for what the sink forwards (expects its preface).
pub fn new_decoder() -> Decoder<HubSide> {
    Decoder::new()
}

/// The next event buffered in `decoder`, if any.
pub fn next_event(decoder: &mut Decoder<HubSide>) -> Result<Option<Event<'_>>, WireError> {
    let frame = decoder
        .poll_frame()
        .map_err(|error| WireError::Protocol(error.to_string()))?;
    Ok(frame.map(|frame| match frame {
        ClientFrame::Relay(relay) => Event::Delivery(relay.body.as_slice()),
        ClientFrame::Echo(echo) => Event::Delivery(echo.body.as_slice()),
        ClientFrame::Identity(identity) => Event::Welcome {
            user: identity.request.to_native(),
        },
        ClientFrame::List(_) => Event::Other,
    }))
}
