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

pub mod error;
pub mod message;
pub mod side;

pub use error::ErrorCodeV2;
pub use message::*;
pub use side::{
    deliver_v2_frame_len, deliver_v2_prefix, deliver_v2_root, encode_deliver_v2,
    relay_v2_frame_len, ClientSideV2, DeliverV2Meta, HubSideV2, DELIVER_V2_ROOT_BYTES,
};
