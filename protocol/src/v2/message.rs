//! The version-2 messages: sessions (`Hello`, `WelcomeV2`), acknowledged
//! relays (`RelayV2`, `Stored`), sequenced deliveries (`DeliverV2`, `Ack`)
//! and delivery receipts (`Receipt`).
//!
//! Same rules as version 1 (see [`crate::message`]): one rkyv struct per
//! kind, integers, fixed byte arrays, one nested struct of integers
//! ([`Limits`]), `Vec<u64>` and `Vec<u8>`; every root holds a `u64`, so
//! every archive is a multiple of 8 bytes. docs/protocol-v2.md lays each one
//! out byte by byte; the compile-time checks in [`super::side`] pin the root
//! sizes given there.

use bytes::BytesMut;
use rkyv::{
    munge::munge,
    rancor::Fallible,
    ser::{Allocator, Writer},
    vec::{ArchivedVec, VecResolver},
    Archive, Deserialize, Place, Serialize,
};

use crate::{
    error::EncodeError,
    frame::encode,
    message::{borrowed_twin, kind, message, owned, *},
    v2::ErrorCodeV2,
};

/// Length of a resume token in bytes (128 random bits).
pub const RESUME_TOKEN_BYTES: usize = 16;

/// A resume token: proves that a client owns a durable session. All zero
/// means "none" (a new session, an ephemeral one); the hub never issues it.
pub type ResumeToken = [u8; RESUME_TOKEN_BYTES];

/// Bits of the messages' own `flags` fields. (The frame header's `flags`
/// stay reserved: 0 in every version so far.) A receiver refuses a set bit
/// the message does not define with `Malformed`.
pub mod flags {
    /// [`RelayV2`](super::RelayV2): send the sender a
    /// [`Receipt`](super::Receipt) when each durable receiver acks the
    /// message. Needs a nonzero `message_id`.
    pub const RECEIPT: u32 = 1 << 0;
    /// Every bit a [`RelayV2`](super::RelayV2) may set.
    pub const RELAY_V2_DEFINED: u32 = RECEIPT;

    /// [`DeliverV2`](super::DeliverV2) and [`Receipt`](super::Receipt):
    /// this inbox entry may have been sent before: on an earlier connection
    /// of the session, and not acked there, or, after a restart of a hub
    /// that stores on disk (it does not log what it sent), before the
    /// restart. Never set with `seq` 0.
    pub const REDELIVERY: u32 = 1 << 0;
    /// Every bit a [`DeliverV2`](super::DeliverV2) may set.
    pub const DELIVER_V2_DEFINED: u32 = REDELIVERY;
    /// Every bit a [`Receipt`](super::Receipt) may set.
    pub const RECEIPT_DEFINED: u32 = REDELIVERY;
}

/// Client to hub, the first frame of a version-2 connection: open a new
/// session or resume a durable one. Answered by [`WelcomeV2`], or by a
/// closing `Error` (`ResumeRejected`, `ServerFull`, ...).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Hello {
    /// Client-chosen id, copied into the `WelcomeV2` or the `Error`.
    pub request: u64,
    /// The user id of the durable session to resume, or 0 for a new session.
    pub resume_user: u64,
    /// The token of the session's latest `WelcomeV2`; all zero (and only
    /// then) when `resume_user` is 0.
    pub resume_token: ResumeToken,
    /// A new session: durable (outlives the connection, keeps an inbox) or
    /// ephemeral (version 1's kind). Must be true on a resume.
    pub durable: bool,
}

/// Client to hub: cumulative acknowledgement of this session's inbox. Every
/// entry with `seq <= upto` is done and will not be redelivered. No reply.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Ack {
    /// The highest inbox sequence acknowledged (with every lower one).
    pub upto: u64,
}

/// Client to hub: store `body` for, or deliver it to, every id in
/// `receivers`; answered by one [`Stored`] once every receiver is handled.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RelayV2 {
    /// Client-chosen id, copied into the `Stored` and into any `Error`.
    pub request: u64,
    /// Sender-chosen id, increasing within the session; a retry reuses it
    /// and is recognised as a duplicate. 0: none (no retry detection).
    pub message_id: u64,
    /// At most [`RECEIVERS_MAX`](crate::RECEIVERS_MAX) user ids.
    pub receivers: Vec<u64>,
    /// At most [`BODY_BYTES_MAX`](crate::BODY_BYTES_MAX) bytes.
    pub body: Vec<u8>,
    /// [`flags::RECEIPT`] or 0.
    pub flags: u32,
}

/// The limits and settings a version-2 hub enforces, advertised in
/// [`WelcomeV2`]. A 0 in a hub setting means "none enforced" / "off".
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct Limits {
    /// Largest archive (`len`) the hub accepts, in bytes.
    pub frame_bytes_max: u32,
    /// Largest body, in bytes.
    pub body_bytes_max: u32,
    /// Most receivers per relay.
    pub receivers_max: u32,
    /// Most ids per list page.
    pub list_page_users_max: u32,
    /// A connection that sends no frame for this long is closed (`IdleTimeout`), in ms.
    pub idle_timeout_ms: u64,
    /// A frame must arrive whole within this long once started (`FrameTimeout`), in ms.
    pub frame_timeout_ms: u64,
    /// Bytes queued for a connection before it is cut off (`SlowConsumer`).
    /// A durable session's deliveries are windowed and never cause it alone;
    /// when it happens anyway (replies piling up), the connection closes and
    /// the session survives.
    pub outbound_bytes_max: u64,
    /// Most unacked `DeliverV2` and `Receipt` entries on the wire to a durable
    /// session; the rest wait in the inbox.
    pub inflight_messages_max: u64,
    /// Most unacked body bytes on the wire to a durable session.
    pub inflight_bytes_max: u64,
    /// Most entries an inbox holds (unacked, inflight included); past it
    /// a relay gets `InboxFull` for that receiver.
    pub inbox_messages_max: u64,
    /// Most body bytes an inbox holds; past it, `InboxFull`.
    pub inbox_bytes_max: u64,
    /// A durable session with no connection for this long expires, in ms.
    pub session_expiry_ms: u64,
    /// An inbox entry not acked this long after it was stored expires, in ms.
    pub message_ttl_ms: u64,
    /// How long after storing a message id the hub still recognises a
    /// retry of it as a duplicate, in ms; `u64::MAX`: for the session's
    /// whole life; 0: message ids are not checked.
    pub dedup_window_ms: u64,
    /// Content dedup: a `RelayV2` whose body the same sender already sent
    /// the same receiver within this many ms is dropped for that receiver
    /// (`DuplicateContent`); 0: off.
    pub content_dedup_window_ms: u64,
}

/// Hub to client, the answer to [`Hello`]: who you are, the token for your
/// next resume, and the limits.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WelcomeV2 {
    /// The `Hello`'s request id.
    pub request: u64,
    /// The session's user id (the resumed one on a resume).
    pub user: u64,
    /// The fresh resume token (rotated on every resume); all zero for an
    /// ephemeral session.
    pub token: ResumeToken,
    /// What this hub enforces.
    pub limits: Limits,
    /// True when an existing session was resumed: redeliveries come first.
    pub resumed: bool,
    /// The session is durable. A hub without storage (or out of it) may
    /// answer a durable `Hello` with an ephemeral session: check this.
    pub durable: bool,
}

/// Hub to client: a message from `from`, and where it sits in your inbox.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DeliverV2 {
    /// The sender's user id.
    pub from: u64,
    /// This session's inbox sequence (ack with [`Ack`]); 0 for an
    /// ephemeral session, which does not ack.
    pub seq: u64,
    /// The sender's `message_id` (0: none).
    pub message_id: u64,
    /// The body, byte for byte as sent.
    pub body: Vec<u8>,
    /// [`flags::REDELIVERY`] or 0.
    pub flags: u32,
}

/// Hub to client: the final answer to one [`RelayV2`], after every `Error`
/// about its receivers.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Stored {
    /// The relay's request id.
    pub request: u64,
    /// The relay's `message_id`.
    pub message_id: u64,
    /// A retry of a message id this session already stored: nothing was
    /// stored or delivered again. Never true for `message_id` 0.
    pub duplicate: bool,
}

/// Hub to client: durable receiver `receiver` acked message `message_id`,
/// which asked for receipts. An entry of the sender's own inbox when the
/// sender is durable (sequenced, acked, redelivered like a `DeliverV2`).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Receipt {
    /// The acked message's `message_id` (never 0).
    pub message_id: u64,
    /// The receiver that acked it.
    pub receiver: u64,
    /// This session's inbox sequence, as in `DeliverV2`; 0 for an ephemeral
    /// sender.
    pub seq: u64,
    /// [`flags::REDELIVERY`] or 0.
    pub flags: u32,
}

borrowed_twin! {
    /// Borrowed twin of [`RelayV2`]: what clients encode a relay with.
    RelayV2Ref => ArchivedRelayV2 {
        plain { request: u64, message_id: u64, flags: u32 }
        slices { receivers: u64, body: u8 }
    }
}
borrowed_twin! {
    /// Borrowed twin of [`DeliverV2`]. For fan-out, see
    /// [`deliver_v2_prefix`](crate::deliver_v2_prefix).
    DeliverV2Ref => ArchivedDeliverV2 {
        plain { from: u64, seq: u64, message_id: u64, flags: u32 }
        slices { body: u8 }
    }
}

message!(kind::HELLO => Hello);
message!(kind::RELAY_V2 => RelayV2, RelayV2Ref<'_>);
message!(kind::ACK => Ack);
message!(kind::WELCOME_V2 => WelcomeV2);
message!(kind::DELIVER_V2 => DeliverV2, DeliverV2Ref<'_>);
message!(kind::STORED => Stored);
message!(kind::RECEIPT => Receipt);

impl Hello {
    /// Opens a new session, durable or ephemeral.
    pub fn new_session(request: u64, durable: bool) -> Hello {
        Hello {
            request,
            resume_user: 0,
            resume_token: [0; RESUME_TOKEN_BYTES],
            durable,
        }
    }

    /// Resumes durable session `user` with the token of its latest `WelcomeV2`.
    pub fn resume(request: u64, user: u64, token: ResumeToken) -> Hello {
        Hello {
            request,
            resume_user: user,
            resume_token: token,
            durable: true,
        }
    }
}

impl Limits {
    /// The protocol's frame bounds ([`FRAME_BYTES_MAX`](crate::FRAME_BYTES_MAX),
    /// [`BODY_BYTES_MAX`](crate::BODY_BYTES_MAX), [`RECEIVERS_MAX`](crate::RECEIVERS_MAX),
    /// [`LIST_PAGE_USERS_MAX`](crate::LIST_PAGE_USERS_MAX)), every hub
    /// setting 0: the hub fills those in from its configuration.
    pub fn with_protocol_bounds() -> Limits {
        Limits {
            frame_bytes_max: crate::FRAME_BYTES_MAX as u32,
            body_bytes_max: crate::BODY_BYTES_MAX as u32,
            receivers_max: crate::RECEIVERS_MAX as u32,
            list_page_users_max: crate::LIST_PAGE_USERS_MAX as u32,
            ..Limits::default()
        }
    }
}

impl Error {
    /// An error frame with a version-2 `code` about `request`.
    pub fn new_v2(code: ErrorCodeV2, request: u64, detail: u64) -> Error {
        Error {
            request,
            detail,
            code: code.to_wire(),
        }
    }
}

/// A decoded client-to-hub frame on a connection of either version,
/// borrowed from the decoder's buffer ([`HubSideV2`](crate::HubSideV2)).
///
/// Which variants can occur depends on the connection's version: `Relay`
/// only on version 1; `Hello`, `RelayV2` and `Ack` only on version 2.
#[derive(Debug, Clone, Copy)]
pub enum ClientFrameV2<'a> {
    /// An [`Echo`].
    Echo(&'a ArchivedEcho),
    /// An [`Identity`].
    Identity(&'a ArchivedIdentity),
    /// A [`List`].
    List(&'a ArchivedList),
    /// A [`Relay`] (version 1), limits already checked.
    Relay(&'a ArchivedRelay),
    /// A [`Hello`] (version 2), field rules already checked.
    Hello(&'a ArchivedHello),
    /// A [`RelayV2`] (version 2), flags and limits already checked.
    RelayV2(&'a ArchivedRelayV2),
    /// An [`Ack`] (version 2).
    Ack(&'a ArchivedAck),
}

/// A decoded hub-to-client frame on a connection of either version,
/// borrowed from the decoder's buffer ([`ClientSideV2`](crate::ClientSideV2)).
///
/// `Welcome` and `Deliver` occur only on version 1; `WelcomeV2`,
/// `DeliverV2`, `Stored` and `Receipt` only on version 2.
#[derive(Debug, Clone, Copy)]
pub enum HubFrameV2<'a> {
    /// A [`Welcome`] (version 1).
    Welcome(&'a ArchivedWelcome),
    /// An [`EchoReply`].
    EchoReply(&'a ArchivedEchoReply),
    /// An [`IdentityReply`].
    IdentityReply(&'a ArchivedIdentityReply),
    /// A [`ListReply`].
    ListReply(&'a ArchivedListReply),
    /// A [`Deliver`] (version 1).
    Deliver(&'a ArchivedDeliver),
    /// An [`Error`].
    Error(&'a ArchivedError),
    /// A [`WelcomeV2`] (version 2).
    WelcomeV2(&'a ArchivedWelcomeV2),
    /// A [`DeliverV2`] (version 2).
    DeliverV2(&'a ArchivedDeliverV2),
    /// A [`Stored`] (version 2).
    Stored(&'a ArchivedStored),
    /// A [`Receipt`] (version 2).
    Receipt(&'a ArchivedReceipt),
}

/// An owned client-to-hub message of either version (tests, fuzzing, tools).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMessageV2 {
    /// An [`Echo`].
    Echo(Echo),
    /// An [`Identity`].
    Identity(Identity),
    /// A [`List`].
    List(List),
    /// A [`Relay`] (version 1).
    Relay(Relay),
    /// A [`Hello`] (version 2).
    Hello(Hello),
    /// A [`RelayV2`] (version 2).
    RelayV2(RelayV2),
    /// An [`Ack`] (version 2).
    Ack(Ack),
}

/// An owned hub-to-client message of either version (tests, fuzzing, the
/// client library).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HubMessageV2 {
    /// A [`Welcome`] (version 1).
    Welcome(Welcome),
    /// An [`EchoReply`].
    EchoReply(EchoReply),
    /// An [`IdentityReply`].
    IdentityReply(IdentityReply),
    /// A [`ListReply`].
    ListReply(ListReply),
    /// A [`Deliver`] (version 1).
    Deliver(Deliver),
    /// An [`Error`].
    Error(Error),
    /// A [`WelcomeV2`] (version 2).
    WelcomeV2(WelcomeV2),
    /// A [`DeliverV2`] (version 2).
    DeliverV2(DeliverV2),
    /// A [`Stored`] (version 2).
    Stored(Stored),
    /// A [`Receipt`] (version 2).
    Receipt(Receipt),
}

impl ClientFrameV2<'_> {
    /// An owned copy of the frame.
    pub fn to_owned(&self) -> ClientMessageV2 {
        match *self {
            ClientFrameV2::Echo(m) => ClientMessageV2::Echo(owned::<Echo>(m)),
            ClientFrameV2::Identity(m) => ClientMessageV2::Identity(owned::<Identity>(m)),
            ClientFrameV2::List(m) => ClientMessageV2::List(owned::<List>(m)),
            ClientFrameV2::Relay(m) => ClientMessageV2::Relay(owned::<Relay>(m)),
            ClientFrameV2::Hello(m) => ClientMessageV2::Hello(owned::<Hello>(m)),
            ClientFrameV2::RelayV2(m) => ClientMessageV2::RelayV2(owned::<RelayV2>(m)),
            ClientFrameV2::Ack(m) => ClientMessageV2::Ack(owned::<Ack>(m)),
        }
    }

    /// The frame's kind (see [`kind`]).
    pub fn kind(&self) -> u16 {
        match self {
            ClientFrameV2::Echo(_) => kind::ECHO,
            ClientFrameV2::Identity(_) => kind::IDENTITY,
            ClientFrameV2::List(_) => kind::LIST,
            ClientFrameV2::Relay(_) => kind::RELAY,
            ClientFrameV2::Hello(_) => kind::HELLO,
            ClientFrameV2::RelayV2(_) => kind::RELAY_V2,
            ClientFrameV2::Ack(_) => kind::ACK,
        }
    }
}

impl HubFrameV2<'_> {
    /// An owned copy of the frame.
    pub fn to_owned(&self) -> HubMessageV2 {
        match *self {
            HubFrameV2::Welcome(m) => HubMessageV2::Welcome(owned::<Welcome>(m)),
            HubFrameV2::EchoReply(m) => HubMessageV2::EchoReply(owned::<EchoReply>(m)),
            HubFrameV2::IdentityReply(m) => HubMessageV2::IdentityReply(owned::<IdentityReply>(m)),
            HubFrameV2::ListReply(m) => HubMessageV2::ListReply(owned::<ListReply>(m)),
            HubFrameV2::Deliver(m) => HubMessageV2::Deliver(owned::<Deliver>(m)),
            HubFrameV2::Error(m) => HubMessageV2::Error(owned::<Error>(m)),
            HubFrameV2::WelcomeV2(m) => HubMessageV2::WelcomeV2(owned::<WelcomeV2>(m)),
            HubFrameV2::DeliverV2(m) => HubMessageV2::DeliverV2(owned::<DeliverV2>(m)),
            HubFrameV2::Stored(m) => HubMessageV2::Stored(owned::<Stored>(m)),
            HubFrameV2::Receipt(m) => HubMessageV2::Receipt(owned::<Receipt>(m)),
        }
    }

    /// The frame's kind (see [`kind`]).
    pub fn kind(&self) -> u16 {
        match self {
            HubFrameV2::Welcome(_) => kind::WELCOME,
            HubFrameV2::EchoReply(_) => kind::ECHO_REPLY,
            HubFrameV2::IdentityReply(_) => kind::IDENTITY_REPLY,
            HubFrameV2::ListReply(_) => kind::LIST_REPLY,
            HubFrameV2::Deliver(_) => kind::DELIVER,
            HubFrameV2::Error(_) => kind::ERROR,
            HubFrameV2::WelcomeV2(_) => kind::WELCOME_V2,
            HubFrameV2::DeliverV2(_) => kind::DELIVER_V2,
            HubFrameV2::Stored(_) => kind::STORED,
            HubFrameV2::Receipt(_) => kind::RECEIPT,
        }
    }
}

impl ClientMessageV2 {
    /// Appends the message as one frame; returns the frame's length.
    pub fn encode(&self, out: &mut BytesMut) -> Result<usize, EncodeError> {
        match self {
            ClientMessageV2::Echo(m) => encode(m, out),
            ClientMessageV2::Identity(m) => encode(m, out),
            ClientMessageV2::List(m) => encode(m, out),
            ClientMessageV2::Relay(m) => encode(m, out),
            ClientMessageV2::Hello(m) => encode(m, out),
            ClientMessageV2::RelayV2(m) => encode(m, out),
            ClientMessageV2::Ack(m) => encode(m, out),
        }
    }
}

impl HubMessageV2 {
    /// Appends the message as one frame; returns the frame's length.
    pub fn encode(&self, out: &mut BytesMut) -> Result<usize, EncodeError> {
        match self {
            HubMessageV2::Welcome(m) => encode(m, out),
            HubMessageV2::EchoReply(m) => encode(m, out),
            HubMessageV2::IdentityReply(m) => encode(m, out),
            HubMessageV2::ListReply(m) => encode(m, out),
            HubMessageV2::Deliver(m) => encode(m, out),
            HubMessageV2::Error(m) => encode(m, out),
            HubMessageV2::WelcomeV2(m) => encode(m, out),
            HubMessageV2::DeliverV2(m) => encode(m, out),
            HubMessageV2::Stored(m) => encode(m, out),
            HubMessageV2::Receipt(m) => encode(m, out),
        }
    }
}

impl<'a> From<ClientFrame<'a>> for ClientFrameV2<'a> {
    fn from(frame: ClientFrame<'a>) -> ClientFrameV2<'a> {
        match frame {
            ClientFrame::Echo(m) => ClientFrameV2::Echo(m),
            ClientFrame::Identity(m) => ClientFrameV2::Identity(m),
            ClientFrame::List(m) => ClientFrameV2::List(m),
            ClientFrame::Relay(m) => ClientFrameV2::Relay(m),
        }
    }
}

impl<'a> From<HubFrame<'a>> for HubFrameV2<'a> {
    fn from(frame: HubFrame<'a>) -> HubFrameV2<'a> {
        match frame {
            HubFrame::Welcome(m) => HubFrameV2::Welcome(m),
            HubFrame::EchoReply(m) => HubFrameV2::EchoReply(m),
            HubFrame::IdentityReply(m) => HubFrameV2::IdentityReply(m),
            HubFrame::ListReply(m) => HubFrameV2::ListReply(m),
            HubFrame::Deliver(m) => HubFrameV2::Deliver(m),
            HubFrame::Error(m) => HubFrameV2::Error(m),
        }
    }
}

impl From<ClientMessage> for ClientMessageV2 {
    fn from(message: ClientMessage) -> ClientMessageV2 {
        match message {
            ClientMessage::Echo(m) => ClientMessageV2::Echo(m),
            ClientMessage::Identity(m) => ClientMessageV2::Identity(m),
            ClientMessage::List(m) => ClientMessageV2::List(m),
            ClientMessage::Relay(m) => ClientMessageV2::Relay(m),
        }
    }
}

impl From<HubMessage> for HubMessageV2 {
    fn from(message: HubMessage) -> HubMessageV2 {
        match message {
            HubMessage::Welcome(m) => HubMessageV2::Welcome(m),
            HubMessage::EchoReply(m) => HubMessageV2::EchoReply(m),
            HubMessage::IdentityReply(m) => HubMessageV2::IdentityReply(m),
            HubMessage::ListReply(m) => HubMessageV2::ListReply(m),
            HubMessage::Deliver(m) => HubMessageV2::Deliver(m),
            HubMessage::Error(m) => HubMessageV2::Error(m),
        }
    }
}
