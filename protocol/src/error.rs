//! Typed errors: what went wrong decoding or encoding, and the wire codes the
//! hub sends back in `Error` frames.

use std::fmt;

/// A protocol limit that a well-formed frame exceeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Limit {
    /// More than [`RECEIVERS_MAX`](crate::RECEIVERS_MAX) receivers.
    Receivers,
    /// A body longer than [`BODY_BYTES_MAX`](crate::BODY_BYTES_MAX).
    BodyBytes,
    /// A list page longer than [`LIST_PAGE_USERS_MAX`](crate::LIST_PAGE_USERS_MAX).
    ListPageUsers,
}

/// Why an archive failed validation, beyond "rkyv refused it".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Malformed {
    /// The archive length is not a multiple of
    /// [`FRAME_ALIGN_BYTES`](crate::FRAME_ALIGN_BYTES).
    Misaligned,
    /// Reserved flag bits are set: the header's `flags` (always reserved),
    /// or a bit a message's own `flags` field does not define.
    Flags,
    /// bytecheck rejected the archive (bad pointer, bad length, bad bool...).
    Archive,
    /// The archive is valid but its fields break a rule of the message
    /// (a `Hello` with a resume token but no user, a `RelayV2` asking for
    /// receipts without a message id; see docs/protocol-v2.md).
    Field,
}

/// Everything that can go wrong turning bytes into frames.
///
/// [`is_fatal`](Self::is_fatal) tells whether the byte stream can still be
/// trusted after the error; the hub closes the connection only when it
/// cannot (docs/protocol.md, "Errors").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecodeError {
    /// More bytes are needed (only from the one-shot [`decode_frame`](crate::decode_frame);
    /// the streaming decoder answers `Ok(None)` instead).
    Incomplete {
        /// Total bytes the frame needs, when known from its header.
        needed: usize,
    },
    /// The connection did not open with the relayhub magic.
    BadPreface {
        /// The first bytes looked like an HTTP request.
        looks_like_http: bool,
    },
    /// The peer speaks another protocol version.
    UnsupportedVersion {
        /// The version the peer announced.
        version: u16,
    },
    /// The length prefix exceeds [`FRAME_BYTES_MAX`](crate::FRAME_BYTES_MAX).
    FrameTooLarge {
        /// The length the peer announced.
        len: u32,
    },
    /// The frame kind is not one this side accepts.
    UnknownKind {
        /// The kind from the header.
        kind: u16,
    },
    /// The frame is not a valid archive of its kind.
    Malformed {
        /// The kind from the header.
        kind: u16,
        /// What exactly was wrong.
        reason: Malformed,
    },
    /// A valid frame exceeded a protocol limit. The stream is intact.
    LimitExceeded {
        /// The request id of the offending frame, for the `Error` reply.
        request: u64,
        /// Which limit.
        limit: Limit,
        /// The offending count or length.
        value: u64,
    },
}

impl DecodeError {
    /// True when the stream can no longer be trusted and must be closed.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            DecodeError::Incomplete { .. } | DecodeError::LimitExceeded { .. }
        )
    }

    /// The wire code for this error, as the hub reports it.
    pub fn code(&self) -> ErrorCode {
        match self {
            // Incomplete never reaches a peer; map it defensively.
            DecodeError::Incomplete { .. } | DecodeError::Malformed { .. } => ErrorCode::Malformed,
            DecodeError::BadPreface { .. } => ErrorCode::BadPreface,
            DecodeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            DecodeError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::UnknownKind { .. } => ErrorCode::UnknownKind,
            DecodeError::LimitExceeded { limit, .. } => match limit {
                Limit::Receivers => ErrorCode::TooManyReceivers,
                Limit::BodyBytes => ErrorCode::BodyTooLarge,
                Limit::ListPageUsers => ErrorCode::Malformed,
            },
        }
    }

    /// The request id the error belongs to (0 when no request is known).
    pub fn request(&self) -> u64 {
        match self {
            DecodeError::LimitExceeded { request, .. } => *request,
            _ => 0,
        }
    }

    /// The `detail` field of the `Error` frame (see [`ErrorCode`]).
    pub fn detail(&self) -> u64 {
        match *self {
            DecodeError::Incomplete { needed } => needed as u64,
            DecodeError::BadPreface { looks_like_http } => u64::from(looks_like_http),
            DecodeError::UnsupportedVersion { .. } => u64::from(crate::VERSION),
            DecodeError::FrameTooLarge { len } => u64::from(len),
            DecodeError::UnknownKind { kind } => u64::from(kind),
            DecodeError::Malformed { kind, .. } => u64::from(kind),
            DecodeError::LimitExceeded { value, .. } => value,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Incomplete { needed } => {
                write!(f, "incomplete frame ({needed} bytes needed)")
            }
            DecodeError::BadPreface {
                looks_like_http: true,
            } => {
                write!(f, "bad preface: this looks like HTTP, not relayhub")
            }
            DecodeError::BadPreface { .. } => write!(f, "bad preface: not a relayhub peer"),
            DecodeError::UnsupportedVersion { version } => write!(
                f,
                "unsupported protocol version {version} (this side speaks {})",
                crate::VERSION
            ),
            DecodeError::FrameTooLarge { len } => write!(
                f,
                "frame of {len} bytes exceeds the limit of {} bytes",
                crate::FRAME_BYTES_MAX
            ),
            DecodeError::UnknownKind { kind } => write!(f, "unknown frame kind {kind}"),
            DecodeError::Malformed { kind, reason } => {
                write!(f, "malformed frame of kind {kind}: {reason:?}")
            }
            DecodeError::LimitExceeded {
                request,
                limit,
                value,
            } => {
                write!(f, "request {request} exceeds the {limit:?} limit: {value}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a frame could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EncodeError {
    /// The archive would exceed [`FRAME_BYTES_MAX`](crate::FRAME_BYTES_MAX).
    FrameTooLarge {
        /// The archive length it would have had.
        len: usize,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::FrameTooLarge { len } => write!(
                f,
                "frame of {len} bytes exceeds the limit of {} bytes",
                crate::FRAME_BYTES_MAX
            ),
        }
    }
}

impl std::error::Error for EncodeError {}

/// The code of an `Error` frame. Stable across versions: never renumber.
///
/// Each code says whether the hub closes the connection after sending it,
/// and what the frame's `detail` field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The connection did not start with the preface. Closes. detail: 1 if it looked like HTTP.
    BadPreface = 1,
    /// Unsupported protocol version. Closes. detail: the hub's version.
    UnsupportedVersion = 2,
    /// Length prefix over `FRAME_BYTES_MAX`. Closes. detail: the announced length.
    FrameTooLarge = 3,
    /// Unknown frame kind. Closes. detail: the kind.
    UnknownKind = 4,
    /// The archive failed validation. Closes. detail: the frame kind.
    Malformed = 5,
    /// More than `RECEIVERS_MAX` receivers; nothing was delivered. Keeps going. detail: the count.
    TooManyReceivers = 6,
    /// Body over `BODY_BYTES_MAX`; nothing was delivered. Keeps going. detail: the length.
    BodyTooLarge = 7,
    /// A receiver is not connected; the others got the body. Keeps going. detail: the receiver id.
    UnknownReceiver = 8,
    /// This connection's outbound queue passed its limit. Closes. detail: the limit in bytes.
    SlowConsumer = 9,
    /// The shard is at its connection limit. Closes. detail: the limit.
    ServerFull = 10,
    /// Nothing was received for the idle timeout. Closes. detail: the timeout in ms.
    IdleTimeout = 11,
    /// The hub is shutting down. Closes. detail: 0.
    ShuttingDown = 12,
    /// A receiver's queue was full; that receiver was disconnected as a slow
    /// consumer and did not get the body. Keeps going. detail: the receiver id.
    ReceiverDropped = 13,
    /// A frame (or the preface) was started but not finished within the
    /// hub's frame timeout. Closes. detail: the timeout in ms.
    FrameTimeout = 14,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::BadPreface,
        ErrorCode::UnsupportedVersion,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnknownKind,
        ErrorCode::Malformed,
        ErrorCode::TooManyReceivers,
        ErrorCode::BodyTooLarge,
        ErrorCode::UnknownReceiver,
        ErrorCode::SlowConsumer,
        ErrorCode::ServerFull,
        ErrorCode::IdleTimeout,
        ErrorCode::ShuttingDown,
        ErrorCode::ReceiverDropped,
        ErrorCode::FrameTimeout,
    ];

    /// The code as sent on the wire.
    pub fn to_wire(self) -> u16 {
        self as u16
    }

    /// Parses a wire code; `None` for codes this version does not know
    /// (a client should treat those as fatal).
    pub fn from_wire(code: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.to_wire() == code)
    }

    /// True when the hub closes the connection after sending this code.
    pub fn closes_connection(self) -> bool {
        !matches!(
            self,
            ErrorCode::TooManyReceivers
                | ErrorCode::BodyTooLarge
                | ErrorCode::UnknownReceiver
                | ErrorCode::ReceiverDropped
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_codes_round_trip_and_are_dense() {
        for (index, code) in ErrorCode::ALL.into_iter().enumerate() {
            assert_eq!(code.to_wire() as usize, index + 1);
            assert_eq!(ErrorCode::from_wire(code.to_wire()), Some(code));
        }
        assert_eq!(ErrorCode::from_wire(0), None);
        assert_eq!(ErrorCode::from_wire(ErrorCode::ALL.len() as u16 + 1), None);
    }

    #[test]
    fn fatal_decode_errors_close_and_limits_do_not() {
        let limit = DecodeError::LimitExceeded {
            request: 7,
            limit: Limit::Receivers,
            value: 256,
        };
        assert!(!limit.is_fatal());
        assert!(!limit.code().closes_connection());
        assert_eq!(limit.request(), 7);
        let too_large = DecodeError::FrameTooLarge { len: u32::MAX };
        assert!(too_large.is_fatal());
        assert!(too_large.code().closes_connection());
    }
}
