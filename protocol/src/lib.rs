//! relayhub-protocol: the wire protocol of relayhub, without IO and without
//! a clock. Bytes go in, validated frames come out; the caller owns every
//! buffer. The hub, the client library, the load generator and the fuzz
//! targets all drive this one codec. docs/protocol.md is the specification.
//!
//! # Layout
//! - [`limits`]: every protocol bound (frame, body, receivers, list page).
//! - [`preface`]: the 8-byte connection preface (magic + version).
//! - [`message`]: one rkyv struct per frame kind, borrowed twins for
//!   zero-copy encoding, and the decoded-frame enums.
//! - [`frame`]: the 8-byte frame header, the encoder, one-shot decoding and
//!   the per-side validation ([`HubSide`], [`ClientSide`]).
//! - [`decoder`]: the incremental decoder fed by any split of the stream.
//! - [`error`]: typed decode/encode errors and the wire error codes.
//! - [`v2`]: protocol version 2 (sessions, acknowledged relays, sequenced
//!   deliveries; docs/protocol-v2.md): its messages, the sides that speak
//!   both versions ([`HubSideV2`], [`ClientSideV2`]) and [`ErrorCodeV2`].
//!
//! # Example
//! ```
//! use bytes::BytesMut;
//! use relayhub_protocol::{encode, ClientFrame, Decoder, HubSide, RelayRef, PREFACE};
//!
//! let mut wire = BytesMut::new();
//! wire.extend_from_slice(&PREFACE);
//! encode(&RelayRef { request: 1, receivers: &[2, 3], body: b"hi" }, &mut wire).unwrap();
//!
//! let mut hub = Decoder::<HubSide>::new();
//! hub.handle_bytes(&wire);
//! let Some(ClientFrame::Relay(relay)) = hub.poll_frame().unwrap() else { panic!() };
//! assert_eq!(relay.receivers.len(), 2);
//! assert_eq!(relay.body.as_slice(), b"hi");
//! assert!(hub.poll_frame().unwrap().is_none());
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks, missing_docs)]

pub mod decoder;
pub mod error;
pub mod frame;
pub mod limits;
pub mod message;
pub mod preface;
pub mod v2;

/// The rkyv version this crate archives with, for callers that name
/// archived types.
pub use rkyv;

pub use decoder::{
    Decoder, SharedFrame, DECODER_BYTES_MAX, POOLED_BUFFERS_MAX, READ_CHUNK_BYTES,
    SHARED_FRAME_BYTES_MIN,
};
pub use error::{DecodeError, EncodeError, ErrorCode, Limit, Malformed};
pub use frame::{
    decode_frame, decode_frame_version, deliver_frame_len, encode, encode_deliver, ClientSide,
    FrameHeader, HubSide, Role,
};
pub use limits::*;
pub use message::*;
pub use preface::{
    check_hub_preface, check_preface, check_preface_in, hub_preface, preface_for, HTTP_REFUSAL,
    MAGIC, PREFACE, PREFACE_BYTES, VERSION, VERSIONS_SUPPORTED, VERSION_2,
};
pub use v2::message::*;
pub use v2::{
    deliver_header, deliver_tail, deliver_v2_frame_len, deliver_v2_header, deliver_v2_prefix,
    deliver_v2_root, deliver_v2_tail, encode_deliver_v2, relay_v2_frame_len, ClientSideV2,
    DeliverV2Meta, ErrorCodeV2, HubSideV2, DELIVER_ROOT_BYTES, DELIVER_V2_ROOT_BYTES,
};
