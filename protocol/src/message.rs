//! The messages: one rkyv struct per frame kind, in both directions.
//!
//! Archived types stay simple on purpose (integers, `Vec<u64>`, `Vec<u8>`,
//! one `bool`): they validate quickly and another team can lay them out by
//! hand from docs/protocol.md. Every struct holds a `u64`, so every root is
//! 8-byte aligned and every archive length is a multiple of 8.
//!
//! Messages with a body or an id list also have a borrowed twin (`RelayRef`,
//! `DeliverRef`, ...) that archives straight from slices into the same
//! archived type: encoding a relay copies the body once, into the frame.

use rkyv::{
    munge::munge,
    rancor::Fallible,
    ser::{Allocator, Writer},
    vec::{ArchivedVec, VecResolver},
    Archive, Deserialize, Place, Serialize,
};

/// A user id as it appears inside an archive (a little-endian `u64`).
pub type ArchivedUserId = rkyv::Archived<u64>;

/// Frame kinds: the `kind` field of the frame header.
///
/// Client-to-hub kinds are below 128, hub-to-client kinds from 128 up, so a
/// frame sent the wrong way is refused as an unknown kind.
pub mod kind {
    /// [`Echo`](super::Echo), client to hub.
    pub const ECHO: u16 = 1;
    /// [`Identity`](super::Identity), client to hub.
    pub const IDENTITY: u16 = 2;
    /// [`List`](super::List), client to hub.
    pub const LIST: u16 = 3;
    /// [`Relay`](super::Relay), client to hub (version 1 only).
    pub const RELAY: u16 = 4;
    /// [`Hello`](crate::Hello), client to hub (version 2): opens the session.
    pub const HELLO: u16 = 5;
    /// [`RelayV2`](crate::RelayV2), client to hub (version 2).
    pub const RELAY_V2: u16 = 6;
    /// [`Ack`](crate::Ack), client to hub (version 2).
    pub const ACK: u16 = 7;
    /// [`Welcome`](super::Welcome), hub to client.
    pub const WELCOME: u16 = 128;
    /// [`EchoReply`](super::EchoReply), hub to client.
    pub const ECHO_REPLY: u16 = 129;
    /// [`IdentityReply`](super::IdentityReply), hub to client.
    pub const IDENTITY_REPLY: u16 = 130;
    /// [`ListReply`](super::ListReply), hub to client.
    pub const LIST_REPLY: u16 = 131;
    /// [`Deliver`](super::Deliver), hub to client.
    pub const DELIVER: u16 = 132;
    /// [`Error`](super::Error), hub to client.
    pub const ERROR: u16 = 133;
    /// [`WelcomeV2`](crate::WelcomeV2), hub to client (version 2).
    pub const WELCOME_V2: u16 = 134;
    /// [`DeliverV2`](crate::DeliverV2), hub to client (version 2).
    pub const DELIVER_V2: u16 = 135;
    /// [`Stored`](crate::Stored), hub to client (version 2).
    pub const STORED: u16 = 136;
    /// [`Receipt`](crate::Receipt), hub to client (version 2).
    pub const RECEIPT: u16 = 137;
}

/// A message that travels as one frame: its kind, and how to archive it.
pub trait Message: for<'a> Serialize<crate::frame::FrameSerializer<'a>> {
    /// The frame kind in the header.
    const KIND: u16;
}

macro_rules! message {
    ($kind:expr => $($ty:ty),+) => {
        $(impl Message for $ty { const KIND: u16 = $kind; })+
    };
}
pub(crate) use message;

/// Client to hub: send `body` back to me (a round trip through the hub).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Echo {
    /// Client-chosen id, copied into the reply or an error.
    pub request: u64,
    /// At most [`BODY_BYTES_MAX`](crate::BODY_BYTES_MAX) bytes.
    pub body: Vec<u8>,
}

/// Client to hub: which user id am I?
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Identity {
    /// Client-chosen id, copied into the reply.
    pub request: u64,
}

/// Client to hub: list connected users (other than me) with ids above
/// `after`, in ascending order. Page with `after` = the last id received.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct List {
    /// Client-chosen id, copied into the reply.
    pub request: u64,
    /// Only ids strictly greater than this (0 for the first page).
    pub after: u64,
    /// Most ids wanted; 0 or anything above
    /// [`LIST_PAGE_USERS_MAX`](crate::LIST_PAGE_USERS_MAX) means that maximum.
    pub limit: u32,
}

/// Client to hub: deliver `body` to every id in `receivers`.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Relay {
    /// Client-chosen id, copied into any error about this relay.
    pub request: u64,
    /// At most [`RECEIVERS_MAX`](crate::RECEIVERS_MAX) user ids; each entry
    /// yields one delivery.
    pub receivers: Vec<u64>,
    /// At most [`BODY_BYTES_MAX`](crate::BODY_BYTES_MAX) bytes.
    pub body: Vec<u8>,
}

/// Hub to client, first frame after the preface: who you are, and the limits.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Welcome {
    /// The user id the hub gave this connection.
    pub user: u64,
    /// Largest archive the hub accepts, in bytes.
    pub frame_bytes_max: u32,
    /// Most receivers per relay.
    pub receivers_max: u32,
    /// Largest body, in bytes.
    pub body_bytes_max: u32,
    /// Most ids per list page.
    pub list_page_users_max: u32,
}

/// Hub to client: the reply to an [`Echo`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct EchoReply {
    /// The request id of the echo.
    pub request: u64,
    /// The echoed body.
    pub body: Vec<u8>,
}

/// Hub to client: the reply to an [`Identity`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct IdentityReply {
    /// The request id.
    pub request: u64,
    /// Your user id (the same as in [`Welcome`]).
    pub user: u64,
}

/// Hub to client: one page of connected users.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ListReply {
    /// The request id.
    pub request: u64,
    /// Ascending user ids, the caller excluded.
    pub users: Vec<u64>,
    /// True when more ids follow: ask again with `after` = the last id.
    pub more: bool,
}

/// Hub to client: a body relayed to you.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Deliver {
    /// The sender's user id.
    pub from: u64,
    /// The body, as sent.
    pub body: Vec<u8>,
}

/// Hub to client: something went wrong (see [`ErrorCode`](crate::ErrorCode)).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Error {
    /// The request it concerns, or 0 when none does.
    pub request: u64,
    /// Code-specific detail (a count, a length, a receiver id).
    pub detail: u64,
    /// The [`ErrorCode`](crate::ErrorCode) as a number.
    pub code: u16,
}

/// Defines a borrowed twin of an owned message: the same plain fields, and
/// slices where the owned message has vectors. Its `Archive` impl writes the
/// owned message's archived type, so the compiler checks the layouts agree.
macro_rules! borrowed_twin {
    (
        $(#[$doc:meta])* $name:ident => $archived:ident {
            plain { $($plain:ident: $plain_ty:ty),* }
            slices { $($slice:ident: $item:ty),* }
        }
    ) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug)]
        pub struct $name<'a> {
            $(#[doc = concat!("See the owned message's `", stringify!($plain), "`.")] pub $plain: $plain_ty,)*
            $(#[doc = concat!("See the owned message's `", stringify!($slice), "`.")] pub $slice: &'a [$item],)*
        }

        impl Archive for $name<'_> {
            type Archived = $archived;
            type Resolver = [VecResolver; [$(stringify!($slice)),*].len()];

            fn resolve(&self, resolver: Self::Resolver, out: Place<$archived>) {
                munge!(let $archived { $($plain,)* $($slice,)* } = out);
                $(self.$plain.resolve((), $plain);)*
                let mut resolvers = resolver.into_iter();
                $(ArchivedVec::resolve_from_len(
                    self.$slice.len(),
                    resolvers.next().expect("one resolver per slice"),
                    $slice,
                );)*
            }
        }

        impl<S: Fallible + Allocator + Writer + ?Sized> Serialize<S> for $name<'_> {
            fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
                Ok([$(ArchivedVec::serialize_from_slice(self.$slice, serializer)?),*])
            }
        }
    };
}
pub(crate) use borrowed_twin;

borrowed_twin! {
    /// Borrowed twin of [`Echo`].
    EchoRef => ArchivedEcho { plain { request: u64 } slices { body: u8 } }
}
borrowed_twin! {
    /// Borrowed twin of [`EchoReply`].
    EchoReplyRef => ArchivedEchoReply { plain { request: u64 } slices { body: u8 } }
}
borrowed_twin! {
    /// Borrowed twin of [`Relay`]: what clients encode a relay with.
    RelayRef => ArchivedRelay { plain { request: u64 } slices { receivers: u64, body: u8 } }
}
borrowed_twin! {
    /// Borrowed twin of [`ListReply`].
    ListReplyRef => ArchivedListReply { plain { request: u64, more: bool } slices { users: u64 } }
}
borrowed_twin! {
    /// Borrowed twin of [`Deliver`]: what the hub encodes deliveries with.
    DeliverRef => ArchivedDeliver { plain { from: u64 } slices { body: u8 } }
}

message!(kind::ECHO => Echo, EchoRef<'_>);
message!(kind::IDENTITY => Identity);
message!(kind::LIST => List);
message!(kind::RELAY => Relay, RelayRef<'_>);
message!(kind::WELCOME => Welcome);
message!(kind::ECHO_REPLY => EchoReply, EchoReplyRef<'_>);
message!(kind::IDENTITY_REPLY => IdentityReply);
message!(kind::LIST_REPLY => ListReply, ListReplyRef<'_>);
message!(kind::DELIVER => Deliver, DeliverRef<'_>);
message!(kind::ERROR => Error);

impl Welcome {
    /// A welcome for `user` advertising this crate's limits.
    pub fn with_protocol_limits(user: u64) -> Welcome {
        Welcome {
            user,
            frame_bytes_max: crate::FRAME_BYTES_MAX as u32,
            receivers_max: crate::RECEIVERS_MAX as u32,
            body_bytes_max: crate::BODY_BYTES_MAX as u32,
            list_page_users_max: crate::LIST_PAGE_USERS_MAX as u32,
        }
    }
}

impl Error {
    /// An error frame with `code` about `request`.
    pub fn new(code: crate::ErrorCode, request: u64, detail: u64) -> Error {
        Error {
            request,
            detail,
            code: code.to_wire(),
        }
    }
}

/// A decoded client-to-hub frame, borrowed from the decoder's buffer.
#[derive(Debug, Clone, Copy)]
pub enum ClientFrame<'a> {
    /// An [`Echo`].
    Echo(&'a ArchivedEcho),
    /// An [`Identity`].
    Identity(&'a ArchivedIdentity),
    /// A [`List`].
    List(&'a ArchivedList),
    /// A [`Relay`], limits already checked.
    Relay(&'a ArchivedRelay),
}

/// A decoded hub-to-client frame, borrowed from the decoder's buffer.
#[derive(Debug, Clone, Copy)]
pub enum HubFrame<'a> {
    /// A [`Welcome`].
    Welcome(&'a ArchivedWelcome),
    /// An [`EchoReply`].
    EchoReply(&'a ArchivedEchoReply),
    /// An [`IdentityReply`].
    IdentityReply(&'a ArchivedIdentityReply),
    /// A [`ListReply`].
    ListReply(&'a ArchivedListReply),
    /// A [`Deliver`].
    Deliver(&'a ArchivedDeliver),
    /// An [`Error`].
    Error(&'a ArchivedError),
}

/// An owned client-to-hub message (tests, fuzzing, tools).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    /// An [`Echo`].
    Echo(Echo),
    /// An [`Identity`].
    Identity(Identity),
    /// A [`List`].
    List(List),
    /// A [`Relay`].
    Relay(Relay),
}

/// An owned hub-to-client message (tests, fuzzing, the client library).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HubMessage {
    /// A [`Welcome`].
    Welcome(Welcome),
    /// An [`EchoReply`].
    EchoReply(EchoReply),
    /// An [`IdentityReply`].
    IdentityReply(IdentityReply),
    /// A [`ListReply`].
    ListReply(ListReply),
    /// A [`Deliver`].
    Deliver(Deliver),
    /// An [`Error`].
    Error(Error),
}

/// Copies an archived value out (rkyv deserialization cannot fail for
/// these types: they hold no pointers that need a pool).
pub(crate) fn owned<T: Archive>(archived: &T::Archived) -> T
where
    T::Archived: Deserialize<T, rkyv::rancor::Strategy<(), rkyv::rancor::Panic>>,
{
    rkyv::api::deserialize_using::<T, (), rkyv::rancor::Panic>(archived, &mut ())
        .unwrap_or_else(|never| match never {})
}

impl ClientFrame<'_> {
    /// An owned copy of the frame.
    pub fn to_owned(&self) -> ClientMessage {
        match *self {
            ClientFrame::Echo(m) => ClientMessage::Echo(owned::<Echo>(m)),
            ClientFrame::Identity(m) => ClientMessage::Identity(owned::<Identity>(m)),
            ClientFrame::List(m) => ClientMessage::List(owned::<List>(m)),
            ClientFrame::Relay(m) => ClientMessage::Relay(owned::<Relay>(m)),
        }
    }
}

impl HubFrame<'_> {
    /// An owned copy of the frame.
    pub fn to_owned(&self) -> HubMessage {
        match *self {
            HubFrame::Welcome(m) => HubMessage::Welcome(owned::<Welcome>(m)),
            HubFrame::EchoReply(m) => HubMessage::EchoReply(owned::<EchoReply>(m)),
            HubFrame::IdentityReply(m) => HubMessage::IdentityReply(owned::<IdentityReply>(m)),
            HubFrame::ListReply(m) => HubMessage::ListReply(owned::<ListReply>(m)),
            HubFrame::Deliver(m) => HubMessage::Deliver(owned::<Deliver>(m)),
            HubFrame::Error(m) => HubMessage::Error(owned::<Error>(m)),
        }
    }
}
