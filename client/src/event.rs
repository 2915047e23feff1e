//! What the hub sends that a caller sees: [`Event`]s, and [`HubError`], the
//! client's view of an `Error` frame.

use std::fmt;

use bytes::Bytes;
use relayhub_protocol::{ErrorCode, HubFrame, BODY_BYTES_MAX, RECEIVERS_MAX, VERSION};

use crate::error::ClientError;

/// A user id, as the hub assigns them (never 0).
pub type UserId = u64;

/// A request id: chosen by the client (counting up from 1), echoed by the hub
/// in the reply and in every error about the request.
pub type RequestId = u64;

/// Something the hub sent that is not the reply a blocking call waits for.
///
/// [`Client::recv_timeout`](crate::Client::recv_timeout) returns them in the
/// order they arrived, including those that arrived while a call such as
/// [`Client::identity`](crate::Client::identity) was waiting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A body another user relayed to this connection.
    Deliver {
        /// The sender.
        from: UserId,
        /// The body, as sent.
        body: Bytes,
    },
    /// An error that leaves the connection open: an unknown receiver, an
    /// over-limit relay sent with `relay_unchecked`, a dropped receiver.
    HubError(HubError),
    /// A reply to [`Sender::send_identity`](crate::Sender::send_identity)
    /// (or to a call that timed out).
    IdentityReply {
        /// The request it answers.
        request: RequestId,
        /// This connection's user id.
        user: UserId,
    },
    /// A reply to [`Sender::send_list`](crate::Sender::send_list).
    ListReply {
        /// The request it answers.
        request: RequestId,
        /// Ascending ids of other connected users.
        users: Vec<UserId>,
        /// More ids follow: ask again with `after` = the last id.
        more: bool,
    },
    /// A reply to [`Sender::send_echo`](crate::Sender::send_echo).
    EchoReply {
        /// The request it answers.
        request: RequestId,
        /// The body, as sent.
        body: Bytes,
    },
}

impl Event {
    /// The request this event answers or concerns; `None` for deliveries.
    pub fn request(&self) -> Option<RequestId> {
        match self {
            Event::Deliver { .. } => None,
            Event::HubError(error) => Some(error.request),
            Event::IdentityReply { request, .. }
            | Event::ListReply { request, .. }
            | Event::EchoReply { request, .. } => Some(*request),
        }
    }

    /// Bytes of payload the event holds (what the pending-queue bound counts).
    pub fn payload_bytes(&self) -> usize {
        match self {
            Event::Deliver { body, .. } | Event::EchoReply { body, .. } => body.len(),
            Event::ListReply { users, .. } => users.len() * size_of::<UserId>(),
            Event::HubError(_) | Event::IdentityReply { .. } => 0,
        }
    }

    /// Converts a decoded frame. A `Welcome` after the handshake, an unknown
    /// error code and an error that closes the connection are errors, not
    /// events: the caller cannot go on reading as before.
    pub(crate) fn from_frame(frame: HubFrame<'_>) -> Result<Event, ClientError> {
        Ok(match frame {
            HubFrame::Deliver(deliver) => Event::Deliver {
                from: deliver.from.to_native(),
                body: Bytes::copy_from_slice(&deliver.body),
            },
            HubFrame::EchoReply(reply) => Event::EchoReply {
                request: reply.request.to_native(),
                body: Bytes::copy_from_slice(&reply.body),
            },
            HubFrame::IdentityReply(reply) => Event::IdentityReply {
                request: reply.request.to_native(),
                user: reply.user.to_native(),
            },
            HubFrame::ListReply(reply) => Event::ListReply {
                request: reply.request.to_native(),
                users: reply.users.iter().map(|id| id.to_native()).collect(),
                more: reply.more,
            },
            HubFrame::Error(error) => {
                let error = HubError::from_wire(
                    error.code.to_native(),
                    error.request.to_native(),
                    error.detail.to_native(),
                )?;
                if error.code.closes_connection() {
                    return Err(ClientError::Hub(error));
                }
                Event::HubError(error)
            }
            HubFrame::Welcome(_) => {
                return Err(ClientError::Unexpected {
                    what: "a second Welcome frame",
                })
            }
        })
    }
}

/// An `Error` frame from the hub: which [`ErrorCode`], about which request,
/// and the code-specific `detail` (a receiver id, a count, a length).
///
/// Its `Display` is a sentence for a person: "user 9 is not connected".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HubError {
    /// What went wrong; [`ErrorCode::closes_connection`] says whether the
    /// hub closes the connection after it.
    pub code: ErrorCode,
    /// The request it concerns, or 0 when none does.
    pub request: RequestId,
    /// Depends on `code`: see [`ErrorCode`].
    pub detail: u64,
}

impl HubError {
    /// Builds the error from wire fields. A code this version does not know
    /// is fatal (docs/protocol.md): we cannot tell whether the hub closes.
    pub(crate) fn from_wire(code: u16, request: u64, detail: u64) -> Result<HubError, ClientError> {
        match ErrorCode::from_wire(code) {
            Some(code) => Ok(HubError {
                code,
                request,
                detail,
            }),
            None => Err(ClientError::UnknownErrorCode {
                code,
                request,
                detail,
            }),
        }
    }
}

impl HubError {
    /// The sentence without the request id ("user 9 is not connected"), for
    /// people who never saw the id (a command-line user).
    pub fn summary(&self) -> impl fmt::Display + '_ {
        Summary(self)
    }
}

/// See [`HubError::summary`].
struct Summary<'a>(&'a HubError);

impl fmt::Display for HubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.summary())?;
        if self.request != 0 {
            write!(f, " (request {})", self.request)?;
        }
        Ok(())
    }
}

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let detail = self.0.detail;
        match self.0.code {
            ErrorCode::UnknownReceiver => write!(f, "user {detail} is not connected"),
            ErrorCode::ReceiverDropped => write!(
                f,
                "user {detail} did not get the body: the hub disconnected it as a slow consumer"
            ),
            ErrorCode::TooManyReceivers => write!(
                f,
                "the hub refused a relay to {detail} receivers (the limit is {RECEIVERS_MAX})"
            ),
            ErrorCode::BodyTooLarge => write!(
                f,
                "the hub refused a body of {detail} bytes (the limit is {BODY_BYTES_MAX})"
            ),
            ErrorCode::SlowConsumer => write!(
                f,
                "the hub disconnected this client as a slow consumer \
                 (more than {detail} bytes were waiting for it to read)"
            ),
            ErrorCode::ServerFull => write!(
                f,
                "the hub is full ({detail} connections per shard): try again later"
            ),
            ErrorCode::IdleTimeout => write!(
                f,
                "the hub closed the connection after {detail} ms without traffic"
            ),
            ErrorCode::ShuttingDown => write!(f, "the hub is shutting down"),
            ErrorCode::FrameTimeout => write!(
                f,
                "the hub closed the connection: a frame took more than {detail} ms to arrive"
            ),
            ErrorCode::BadPreface => write!(f, "the hub refused this client's preface"),
            ErrorCode::UnsupportedVersion => write!(
                f,
                "the hub speaks protocol version {detail}, this client speaks {VERSION}"
            ),
            ErrorCode::FrameTooLarge => {
                write!(f, "the hub refused a frame announcing {detail} bytes")
            }
            ErrorCode::UnknownKind => write!(f, "the hub does not know frame kind {detail}"),
            ErrorCode::Malformed => write!(f, "the hub could not parse a frame of kind {detail}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_receiver_reads_like_a_sentence() {
        let error = HubError {
            code: ErrorCode::UnknownReceiver,
            request: 3,
            detail: 9,
        };
        assert_eq!(error.to_string(), "user 9 is not connected (request 3)");
        assert_eq!(error.summary().to_string(), "user 9 is not connected");
    }

    #[test]
    fn every_code_has_a_message() {
        for code in ErrorCode::ALL {
            let error = HubError {
                code,
                request: 0,
                detail: 1,
            };
            assert!(!error.to_string().is_empty(), "{code:?}");
        }
    }

    #[test]
    fn unknown_codes_are_errors() {
        assert!(matches!(
            HubError::from_wire(999, 1, 2),
            Err(ClientError::UnknownErrorCode { code: 999, .. })
        ));
    }
}
