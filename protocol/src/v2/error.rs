//! The error codes of version 2: version 1's fourteen, unchanged, and the
//! codes sessions, inboxes and acks need.

use crate::{
    error::{DecodeError, ErrorCode},
    preface::VERSION_2,
};

/// The code of an `Error` frame on a connection of either version. Stable
/// across versions: never renumber.
///
/// Codes 1 to 14 are exactly [`ErrorCode`]'s, with the same names and the
/// same closing rule; 15 and up exist from version 2 on, and a hub never
/// sends them on a version-1 connection (docs/protocol-v2.md, "Errors").
/// Each code says whether the hub closes the connection after it, and what
/// the frame's `detail` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCodeV2 {
    /// See [`ErrorCode::BadPreface`].
    BadPreface = 1,
    /// See [`ErrorCode::UnsupportedVersion`]. On a version-2 hub, detail:
    /// the newest version it speaks.
    UnsupportedVersion = 2,
    /// See [`ErrorCode::FrameTooLarge`].
    FrameTooLarge = 3,
    /// See [`ErrorCode::UnknownKind`].
    UnknownKind = 4,
    /// See [`ErrorCode::Malformed`].
    Malformed = 5,
    /// See [`ErrorCode::TooManyReceivers`].
    TooManyReceivers = 6,
    /// See [`ErrorCode::BodyTooLarge`].
    BodyTooLarge = 7,
    /// See [`ErrorCode::UnknownReceiver`].
    UnknownReceiver = 8,
    /// See [`ErrorCode::SlowConsumer`].
    SlowConsumer = 9,
    /// See [`ErrorCode::ServerFull`].
    ServerFull = 10,
    /// See [`ErrorCode::IdleTimeout`].
    IdleTimeout = 11,
    /// See [`ErrorCode::ShuttingDown`].
    ShuttingDown = 12,
    /// See [`ErrorCode::ReceiverDropped`].
    ReceiverDropped = 13,
    /// See [`ErrorCode::FrameTimeout`].
    FrameTimeout = 14,
    /// A version-2 connection sent a frame before its `Hello`, or a second
    /// `Hello`. Closes. detail: the offending frame's kind.
    HelloRequired = 15,
    /// The resume was refused: unknown, expired or another user's session,
    /// or a wrong or outdated token (the hub does not say which). Closes.
    /// detail: 0.
    ResumeRejected = 16,
    /// This connection's session was resumed on another connection. Closes.
    /// detail: 0.
    SessionTakenOver = 17,
    /// A durable receiver's inbox is at its limit; nothing was stored for
    /// that receiver, the others are unaffected. Keeps going. detail: the
    /// receiver id.
    InboxFull = 18,
    /// The receiver's shard is out of storage; nothing was stored for that
    /// receiver. Keeps going. detail: the receiver id.
    StorageFull = 19,
    /// Content dedup dropped the relay for one receiver (that receiver
    /// took the same body, from any sender, within the window). Keeps
    /// going. detail: the receiver id.
    DuplicateContent = 20,
    /// An `Ack` named a sequence the hub never sent this session. Closes.
    /// detail: the highest sequence sent to the session.
    AckOutOfRange = 21,
}

impl ErrorCodeV2 {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCodeV2; 21] = [
        ErrorCodeV2::BadPreface,
        ErrorCodeV2::UnsupportedVersion,
        ErrorCodeV2::FrameTooLarge,
        ErrorCodeV2::UnknownKind,
        ErrorCodeV2::Malformed,
        ErrorCodeV2::TooManyReceivers,
        ErrorCodeV2::BodyTooLarge,
        ErrorCodeV2::UnknownReceiver,
        ErrorCodeV2::SlowConsumer,
        ErrorCodeV2::ServerFull,
        ErrorCodeV2::IdleTimeout,
        ErrorCodeV2::ShuttingDown,
        ErrorCodeV2::ReceiverDropped,
        ErrorCodeV2::FrameTimeout,
        ErrorCodeV2::HelloRequired,
        ErrorCodeV2::ResumeRejected,
        ErrorCodeV2::SessionTakenOver,
        ErrorCodeV2::InboxFull,
        ErrorCodeV2::StorageFull,
        ErrorCodeV2::DuplicateContent,
        ErrorCodeV2::AckOutOfRange,
    ];

    /// The code as sent on the wire.
    pub fn to_wire(self) -> u16 {
        self as u16
    }

    /// Parses a wire code; `None` for codes this crate does not know (a
    /// client should treat those as fatal).
    pub fn from_wire(code: u16) -> Option<ErrorCodeV2> {
        ErrorCodeV2::ALL.into_iter().find(|c| c.to_wire() == code)
    }

    /// The same code as a version-1 [`ErrorCode`], `None` for the codes
    /// version 2 added.
    pub fn v1(self) -> Option<ErrorCode> {
        ErrorCode::from_wire(self.to_wire())
    }

    /// The first protocol version whose hub may send this code.
    pub fn since_version(self) -> u16 {
        match self.v1() {
            Some(_) => crate::VERSION,
            None => VERSION_2,
        }
    }

    /// True when the hub closes the connection after sending this code.
    pub fn closes_connection(self) -> bool {
        match self.v1() {
            Some(code) => code.closes_connection(),
            None => !matches!(
                self,
                ErrorCodeV2::InboxFull | ErrorCodeV2::StorageFull | ErrorCodeV2::DuplicateContent
            ),
        }
    }
}

impl From<ErrorCode> for ErrorCodeV2 {
    fn from(code: ErrorCode) -> ErrorCodeV2 {
        ErrorCodeV2::from_wire(code.to_wire()).expect("every version-1 code is a version-2 code")
    }
}

impl DecodeError {
    /// [`code`](Self::code) as a version-2 code.
    pub fn code_v2(&self) -> ErrorCodeV2 {
        self.code().into()
    }

    /// [`detail`](Self::detail) as a hub speaking version 2 sends it: the
    /// same, except that `UnsupportedVersion` names the newest version the
    /// hub speaks (with which the client may retry), not version 1.
    pub fn detail_v2(&self) -> u64 {
        match self {
            DecodeError::UnsupportedVersion { .. } => u64::from(VERSION_2),
            _ => self.detail(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_codes_round_trip_and_are_dense() {
        for (index, code) in ErrorCodeV2::ALL.into_iter().enumerate() {
            assert_eq!(code.to_wire() as usize, index + 1);
            assert_eq!(ErrorCodeV2::from_wire(code.to_wire()), Some(code));
        }
        assert_eq!(ErrorCodeV2::from_wire(0), None);
        assert_eq!(
            ErrorCodeV2::from_wire(ErrorCodeV2::ALL.len() as u16 + 1),
            None
        );
    }

    #[test]
    fn version_1_codes_are_unchanged() {
        for code in ErrorCode::ALL {
            let v2 = ErrorCodeV2::from(code);
            assert_eq!(v2.to_wire(), code.to_wire());
            assert_eq!(format!("{v2:?}"), format!("{code:?}"), "same name");
            assert_eq!(v2.closes_connection(), code.closes_connection());
            assert_eq!(v2.v1(), Some(code));
            assert_eq!(v2.since_version(), crate::VERSION);
        }
        let added = &ErrorCodeV2::ALL[ErrorCode::ALL.len()..];
        assert!(added.iter().all(|code| code.v1().is_none()));
        assert!(added.iter().all(|code| code.since_version() == VERSION_2));
    }

    #[test]
    fn which_version_2_codes_close() {
        use ErrorCodeV2::*;
        let closing: Vec<_> = ErrorCodeV2::ALL[ErrorCode::ALL.len()..]
            .iter()
            .copied()
            .filter(|code| code.closes_connection())
            .collect();
        assert_eq!(
            closing,
            [
                HelloRequired,
                ResumeRejected,
                SessionTakenOver,
                AckOutOfRange
            ]
        );
    }

    #[test]
    fn a_version_2_hub_names_its_newest_version() {
        let error = DecodeError::UnsupportedVersion { version: 9 };
        assert_eq!(error.detail(), 1, "the version-1 behaviour is unchanged");
        assert_eq!(error.detail_v2(), 2);
        assert_eq!(error.code_v2(), ErrorCodeV2::UnsupportedVersion);
        let other = DecodeError::FrameTooLarge { len: 77 };
        assert_eq!(other.detail_v2(), other.detail());
    }
}
