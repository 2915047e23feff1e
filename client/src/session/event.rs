//! What a version-2 session hands the application: [`SessionEvent`]s, and
//! the handles and outcomes of relays.

use bytes::Bytes;

use crate::{
    event::{RequestId, UserId},
    session::error::HubErrorV2,
};

/// A relay sent: its request id (matched by the `Stored` and by every
/// `Error` about it) and its message id (matched by receipts, and by the
/// `Stored` of a retry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RelayHandle {
    /// The request id, unique within the client.
    pub request: RequestId,
    /// The message id, unique within the session (never 0).
    pub message_id: u64,
}

/// The hub's final answer to one relay, from
/// [`SessionClient::wait_stored`](super::SessionClient::wait_stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayOutcome {
    /// The relay's message id.
    pub message_id: u64,
    /// The hub had stored this message id before (a retry): nothing was
    /// stored or delivered again.
    pub duplicate: bool,
    /// The receivers refused, each with its error (`UnknownReceiver`,
    /// `InboxFull`, ...), in arrival order. Every other receiver was
    /// handled: stored for a durable receiver, queued for an ephemeral one.
    pub errors: Vec<HubErrorV2>,
}

/// Something a version-2 hub sent, after client-side dedup.
///
/// Inbox entries (`Deliver` and `Receipt` with `seq` > 0) come in `seq`
/// order, each at most once per client; the others come in arrival order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    /// A body another user relayed to this session.
    Deliver {
        /// The sender.
        from: UserId,
        /// This session's inbox sequence; 0 for an ephemeral session.
        seq: u64,
        /// The sender's message id (0: none, e.g. a version-1 sender).
        message_id: u64,
        /// The body, as sent.
        body: Bytes,
        /// The hub sent this entry before, on an earlier connection of this
        /// session, and it was not acked there. The client has not handed
        /// it out before (it drops those), so it is news to the application
        /// unless an earlier process handed it out and died before acking.
        redelivery: bool,
    },
    /// The final answer to a relay: every receiver has been handled, and
    /// every `Error` about the relay came before this.
    Stored {
        /// The relay's request id.
        request: RequestId,
        /// The relay's message id.
        message_id: u64,
        /// A retry of an id the hub had stored: nothing was stored again.
        duplicate: bool,
    },
    /// A durable receiver acked a message this session relayed with a
    /// receipt request.
    Receipt {
        /// The message id of the relay.
        message_id: u64,
        /// The receiver that acked it.
        receiver: UserId,
        /// This session's inbox sequence for the receipt (receipts to a
        /// durable sender are inbox entries); 0 for an ephemeral session.
        seq: u64,
        /// Sent before on an earlier connection of this session.
        redelivery: bool,
    },
    /// An error that leaves the connection open: a receiver refused
    /// (`UnknownReceiver`, `InboxFull`, `StorageFull`, `DuplicateContent`,
    /// `ReceiverDropped`), or a relay refused as a whole.
    Error(HubErrorV2),
    /// A reply to an identity request whose call timed out.
    IdentityReply {
        /// The request it answers.
        request: RequestId,
        /// This session's user id.
        user: UserId,
    },
    /// A reply to a list request whose call timed out.
    ListReply {
        /// The request it answers.
        request: RequestId,
        /// Ascending ids of other connected users.
        users: Vec<UserId>,
        /// More ids follow.
        more: bool,
    },
    /// A reply to an echo whose call timed out.
    EchoReply {
        /// The request it answers.
        request: RequestId,
        /// The body, as sent.
        body: Bytes,
    },
    /// Only from [`ReconnectingClient`](super::ReconnectingClient): the
    /// connection was lost and the session resumed on a new one.
    Reconnected {
        /// Connection attempts it took.
        attempts: u32,
        /// Relays re-sent because they had no `Stored` yet.
        resent: usize,
    },
}

impl SessionEvent {
    /// The request this event answers or concerns; `None` for entries and
    /// [`Reconnected`](Self::Reconnected).
    pub fn request(&self) -> Option<RequestId> {
        match self {
            SessionEvent::Stored { request, .. }
            | SessionEvent::IdentityReply { request, .. }
            | SessionEvent::ListReply { request, .. }
            | SessionEvent::EchoReply { request, .. } => Some(*request),
            SessionEvent::Error(error) => Some(error.request),
            SessionEvent::Deliver { .. }
            | SessionEvent::Receipt { .. }
            | SessionEvent::Reconnected { .. } => None,
        }
    }

    /// The inbox sequence of an entry (a delivery or a receipt), 0 for
    /// everything else.
    pub fn seq(&self) -> u64 {
        match self {
            SessionEvent::Deliver { seq, .. } | SessionEvent::Receipt { seq, .. } => *seq,
            _ => 0,
        }
    }

    /// Bytes of payload the event holds (what the pending-queue bound counts).
    pub fn payload_bytes(&self) -> usize {
        match self {
            SessionEvent::Deliver { body, .. } | SessionEvent::EchoReply { body, .. } => body.len(),
            SessionEvent::ListReply { users, .. } => users.len() * size_of::<UserId>(),
            _ => 0,
        }
    }
}
