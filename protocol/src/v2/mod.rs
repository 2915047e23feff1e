//! Protocol version 2: durable sessions, acknowledged relays, sequenced
//! deliveries and receipts (docs/protocol-v2.md).
//!
//! Everything here is additive: version 1's items keep their meaning, and
//! the `…V2` sides, frames and codes are supersets that serve connections
//! of both versions, so one hub can speak both.
//!
//! - [`message`]: the new messages, their flags, the borrowed twins and the
//!   frame enums of both versions.
//! - [`side`]: [`HubSideV2`] and [`ClientSideV2`] (which kinds each version
//!   accepts, the field rules), the frame-length functions and the
//!   `DeliverV2` encoders for zero-copy fan-out.
//! - [`error`]: the error codes of both versions, [`ErrorCodeV2`].
//!
//! # Example
//! ```
//! use bytes::BytesMut;
//! use relayhub_protocol::*;
//!
//! // A version-2 client: preface, Hello, then a relay asking for receipts.
//! let mut wire = BytesMut::new();
//! wire.extend_from_slice(&preface_for(VERSION_2));
//! encode(&Hello::new_session(1, true), &mut wire).unwrap();
//! let relay = RelayV2Ref { request: 2, message_id: 1, flags: flags::RECEIPT, receivers: &[7], body: b"hi" };
//! encode(&relay, &mut wire).unwrap();
//!
//! // The hub accepts either version and answers in kind.
//! let mut hub = Decoder::<HubSideV2>::new();
//! hub.handle_bytes(&wire);
//! assert!(hub.poll_preface().unwrap());
//! assert_eq!(hub.version(), Some(VERSION_2));
//! let answer = hub_preface(hub.version());
//! assert!(matches!(hub.poll_frame().unwrap(), Some(ClientFrameV2::Hello(_))));
//! let Some(ClientFrameV2::RelayV2(relay)) = hub.poll_frame().unwrap() else { panic!() };
//! assert_eq!(relay.message_id.to_native(), 1);
//!
//! // A delivery: the shared prefix (header + body), then this receiver's root.
//! let prefix = deliver_v2_prefix(relay.body.as_slice()).unwrap();
//! let meta = DeliverV2Meta { from: 3, seq: 1, message_id: 1, flags: 0 };
//! let root = deliver_v2_root(meta, relay.body.len());
//!
//! let mut client = Decoder::<ClientSideV2>::expecting(VERSION_2);
//! client.handle_bytes(&answer);
//! client.handle_bytes(&prefix);
//! client.handle_bytes(&root);
//! let Some(HubFrameV2::DeliverV2(deliver)) = client.poll_frame().unwrap() else { panic!() };
//! assert_eq!(deliver.seq.to_native(), 1);
//! assert_eq!(deliver.body.as_slice(), b"hi");
//! ```

pub mod error;
pub mod message;
pub mod side;

pub use error::ErrorCodeV2;
pub use message::*;
pub use side::{
    deliver_header, deliver_tail, deliver_v2_frame_len, deliver_v2_header, deliver_v2_prefix,
    deliver_v2_root, deliver_v2_tail, encode_deliver_v2, relay_v2_frame_len, ClientSideV2,
    DeliverV2Meta, HubSideV2, DELIVER_ROOT_BYTES, DELIVER_V2_ROOT_BYTES,
};
