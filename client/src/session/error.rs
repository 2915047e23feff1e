//! The version-2 errors: [`HubErrorV2`] (an `Error` frame), [`ConnectError`]
//! (opening or resuming a session) and [`SessionError`] (everything after).

use std::{fmt, io, net::SocketAddr, time::Duration};

use relayhub_protocol::{DecodeError, EncodeError, ErrorCodeV2, BODY_BYTES_MAX, RECEIVERS_MAX};

use crate::{
    error::{ClientLimit, START_HUB_HINT},
    event::{RequestId, UserId},
    session::state::StateError,
};

/// An `Error` frame from a version-2 hub: which [`ErrorCodeV2`], about which
/// request, and the code-specific `detail` (a receiver id, a count, a kind).
///
/// Its `Display` is a sentence for a person: "user 9 does not exist".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HubErrorV2 {
    /// What went wrong; [`ErrorCodeV2::closes_connection`] says whether the
    /// hub closes the connection after it.
    pub code: ErrorCodeV2,
    /// The request it concerns, or 0 when none does.
    pub request: RequestId,
    /// Depends on `code`: see [`ErrorCodeV2`].
    pub detail: u64,
}

impl HubErrorV2 {
    /// Builds the error from wire fields. A code this client does not know
    /// is fatal (docs/protocol-v2.md, "Errors").
    pub(crate) fn from_wire(
        code: u16,
        request: u64,
        detail: u64,
    ) -> Result<HubErrorV2, SessionError> {
        match ErrorCodeV2::from_wire(code) {
            Some(code) => Ok(HubErrorV2 {
                code,
                request,
                detail,
            }),
            None => Err(SessionError::UnknownErrorCode {
                code,
                request,
                detail,
            }),
        }
    }

    /// True for the errors that refuse a relay as a whole: no `Stored`
    /// follows them (`TooManyReceivers`, `BodyTooLarge`).
    pub fn refuses_whole_relay(&self) -> bool {
        matches!(
            self.code,
            ErrorCodeV2::TooManyReceivers | ErrorCodeV2::BodyTooLarge
        )
    }

    /// The sentence without the request id, for people who never saw the id.
    pub fn summary(&self) -> impl fmt::Display + '_ {
        Summary(self)
    }
}

struct Summary<'a>(&'a HubErrorV2);

impl fmt::Display for HubErrorV2 {
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
        use ErrorCodeV2::*;
        let detail = self.0.detail;
        match self.0.code {
            UnknownReceiver => write!(
                f,
                "user {detail} does not exist (not connected, no durable session)"
            ),
            ReceiverDropped => write!(
                f,
                "user {detail} did not get the body: the hub disconnected it as a slow consumer"
            ),
            TooManyReceivers => write!(
                f,
                "the hub refused a relay to {detail} receivers (the limit is {RECEIVERS_MAX})"
            ),
            BodyTooLarge => write!(
                f,
                "the hub refused a body of {detail} bytes (the limit is {BODY_BYTES_MAX})"
            ),
            SlowConsumer => write!(
                f,
                "the hub disconnected this client as a slow consumer \
                 (more than {detail} bytes were waiting for it to read)"
            ),
            ServerFull => write!(
                f,
                "the hub is full ({detail} connections per shard): try again later"
            ),
            IdleTimeout => write!(
                f,
                "the hub closed the connection after {detail} ms without traffic"
            ),
            ShuttingDown => write!(f, "the hub is shutting down"),
            FrameTimeout => write!(
                f,
                "the hub closed the connection: a frame took more than {detail} ms to arrive"
            ),
            BadPreface => write!(f, "the hub refused this client's preface"),
            UnsupportedVersion => write!(
                f,
                "the hub speaks protocol version {detail}, this client speaks 2"
            ),
            FrameTooLarge => write!(f, "the hub refused a frame announcing {detail} bytes"),
            UnknownKind => write!(f, "the hub does not know frame kind {detail}"),
            Malformed => write!(f, "the hub could not parse a frame of kind {detail}"),
            HelloRequired => write!(
                f,
                "the hub wanted a Hello first (got a frame of kind {detail})"
            ),
            ResumeRejected => write!(
                f,
                "the hub refused to resume the session (unknown, expired, or a wrong or \
                 outdated token)"
            ),
            SessionTakenOver => write!(f, "this session was resumed on another connection"),
            InboxFull => write!(
                f,
                "user {detail}'s inbox is full: nothing was stored for them"
            ),
            StorageFull => write!(
                f,
                "the hub is out of storage for user {detail}: nothing was stored for them"
            ),
            DuplicateContent => write!(
                f,
                "user {detail} got the same body from this session recently: dropped as a \
                 duplicate"
            ),
            AckOutOfRange => write!(
                f,
                "the hub refused an ack past the highest sequence it sent ({detail})"
            ),
        }
    }
}

/// Why opening or resuming a session failed.
///
/// [`is_retryable`](Self::is_retryable) tells whether trying again later
/// can succeed (what [`ReconnectingClient`](super::ReconnectingClient)
/// does).
#[derive(Debug)]
pub enum ConnectError {
    /// The hub's address did not resolve.
    Resolve {
        /// What the resolver said.
        source: io::Error,
    },
    /// No TCP connection could be made (refused, unreachable, timed out).
    Connect {
        /// The last address tried.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// Reading or writing the socket failed during the handshake.
    Io {
        /// The peer.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// The peer closed the connection before its `WelcomeV2`.
    Closed {
        /// The peer.
        addr: SocketAddr,
    },
    /// No `WelcomeV2` within the request timeout.
    Timeout {
        /// The peer.
        addr: SocketAddr,
        /// How long the handshake waited.
        waited: Duration,
    },
    /// The peer did not answer with the relayhub preface: not a hub.
    NotAHub {
        /// The peer.
        addr: SocketAddr,
    },
    /// The hub answered with another protocol version: it does not speak
    /// version 2 (a version-1 hub answers `1`). The version-1
    /// [`Client`](crate::Client) may still talk to it.
    UnsupportedVersion {
        /// The peer.
        addr: SocketAddr,
        /// The version the hub answered with.
        hub_version: u16,
    },
    /// The hub refused to resume `user`'s session: unknown, expired, another
    /// user's, or a wrong or outdated token (it does not say which). Start a
    /// new session.
    ResumeRejected {
        /// The session that was not resumed.
        user: UserId,
    },
    /// The hub refused the connection with an error (`ServerFull`,
    /// `ShuttingDown`, ...).
    Refused(HubErrorV2),
    /// The hub sent an error code this client does not know.
    UnknownErrorCode {
        /// The wire code.
        code: u16,
        /// Its detail field.
        detail: u64,
    },
    /// The hub sent bytes that are not a valid version-2 frame.
    Protocol(DecodeError),
    /// The hub sent a valid frame the handshake does not allow (a reply
    /// before `WelcomeV2`, a `WelcomeV2` for another request, a resume
    /// answered with another user).
    Unexpected {
        /// What arrived.
        what: &'static str,
    },
    /// A durable session was needed and the hub granted an ephemeral one
    /// (it has no storage, or no room for another durable session).
    NotDurable,
    /// The state file could not be read or written.
    State(StateError),
}

impl ConnectError {
    /// True when trying again later may succeed: the hub is unreachable,
    /// busy, restarting or shutting down. False when it refused this
    /// session or speaks something else.
    pub fn is_retryable(&self) -> bool {
        match self {
            ConnectError::Resolve { .. }
            | ConnectError::Connect { .. }
            | ConnectError::Io { .. }
            | ConnectError::Closed { .. }
            | ConnectError::Timeout { .. } => true,
            ConnectError::Refused(error) => matches!(
                error.code,
                ErrorCodeV2::ServerFull
                    | ErrorCodeV2::ShuttingDown
                    | ErrorCodeV2::IdleTimeout
                    | ErrorCodeV2::FrameTimeout
            ),
            ConnectError::NotAHub { .. }
            | ConnectError::UnsupportedVersion { .. }
            | ConnectError::ResumeRejected { .. }
            | ConnectError::UnknownErrorCode { .. }
            | ConnectError::Protocol(_)
            | ConnectError::Unexpected { .. }
            | ConnectError::NotDurable
            | ConnectError::State(_) => false,
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Resolve { source } => {
                write!(f, "cannot resolve the hub's address: {source}")
            }
            ConnectError::Connect { addr, source } => match source.kind() {
                io::ErrorKind::ConnectionRefused => write!(
                    f,
                    "connection refused: is the hub running on {addr}? {START_HUB_HINT}"
                ),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => write!(
                    f,
                    "timed out connecting to {addr}: is the address right and the hub reachable?"
                ),
                _ => write!(f, "cannot connect to {addr}: {source}"),
            },
            ConnectError::Io { addr, source } => {
                write!(f, "handshake with {addr} failed: {source}")
            }
            ConnectError::Closed { addr } => write!(
                f,
                "{addr} closed the connection during the handshake: is it a relayhub hub?"
            ),
            ConnectError::Timeout { addr, waited } => write!(
                f,
                "{addr} accepted the connection but sent no WelcomeV2 within {} ms: \
                 is it a relayhub hub?",
                waited.as_millis()
            ),
            ConnectError::NotAHub { addr } => write!(
                f,
                "{addr} is not a relayhub hub: it did not answer with the relayhub preface \
                 (wrong port?)"
            ),
            ConnectError::UnsupportedVersion { addr, hub_version } => write!(
                f,
                "the hub at {addr} speaks protocol version {hub_version}, not 2: it has no \
                 sessions (use the client without a session)"
            ),
            ConnectError::ResumeRejected { user } => write!(
                f,
                "the hub refused to resume session {user} (unknown, expired, or a wrong or \
                 outdated token)"
            ),
            ConnectError::Refused(error) => write!(f, "{}", error.summary()),
            ConnectError::UnknownErrorCode { code, detail } => write!(
                f,
                "the hub refused the session with error code {code} (detail {detail}), \
                 unknown to this client: is the hub newer?"
            ),
            ConnectError::Protocol(error) => {
                write!(
                    f,
                    "the hub broke the protocol during the handshake: {error}"
                )
            }
            ConnectError::Unexpected { what } => {
                write!(f, "the hub broke the protocol: it sent {what}")
            }
            ConnectError::NotDurable => write!(
                f,
                "the hub granted only an ephemeral session: it keeps no inbox for this client \
                 (no storage, or no room for another durable session)"
            ),
            ConnectError::State(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectError::Resolve { source }
            | ConnectError::Connect { source, .. }
            | ConnectError::Io { source, .. } => Some(source),
            ConnectError::Protocol(error) => Some(error),
            ConnectError::State(error) => Some(error),
            _ => None,
        }
    }
}

impl From<StateError> for ConnectError {
    fn from(error: StateError) -> ConnectError {
        ConnectError::State(error)
    }
}

/// Why a call on an open session failed.
///
/// [`closes_connection`](Self::closes_connection) tells whether the
/// connection is still usable; [`is_recoverable`](Self::is_recoverable)
/// whether resuming the session on a new connection makes sense.
#[derive(Debug)]
pub enum SessionError {
    /// Reading or writing the socket failed; the connection is unusable.
    Io(io::Error),
    /// The hub closed the connection (or an earlier fatal error did).
    Closed,
    /// The hub sent bytes that are not a valid frame. Fatal unless the error
    /// is a `LimitExceeded` (the frame was skipped).
    Protocol(DecodeError),
    /// A message could not be encoded. Nothing was sent.
    Encode(EncodeError),
    /// The hub refused the request this call waited for, or sent an error
    /// that closes the connection (`error.code.closes_connection()`).
    Hub(HubErrorV2),
    /// The hub sent an error code this client does not know; fatal.
    UnknownErrorCode {
        /// The wire code.
        code: u16,
        /// The request it concerned.
        request: u64,
        /// Its detail field.
        detail: u64,
    },
    /// The hub sent a valid frame the protocol forbids at this point (a
    /// second `WelcomeV2`, a list page that does not advance).
    Unexpected {
        /// What arrived.
        what: &'static str,
    },
    /// No reply within the request timeout; the connection is still usable.
    Timeout {
        /// How long the call waited.
        waited: Duration,
    },
    /// The request breaks a limit; it was not sent.
    LimitExceeded {
        /// Which limit.
        limit: ClientLimit,
        /// The count or length of the request.
        value: usize,
        /// The largest allowed.
        max: usize,
    },
    /// While a call waited, the pending-event queue reached its bound
    /// ([`ClientConfig::pending_events_max`](crate::ClientConfig::pending_events_max)
    /// or `pending_bytes_max`). Nothing was dropped: drain it with
    /// `recv_timeout`.
    QueueFull {
        /// Events queued.
        events: usize,
        /// Payload bytes queued.
        bytes: usize,
    },
    /// [`ack`](super::SessionClient::ack) named a `seq` beyond the highest
    /// one handed to the application. Nothing was sent: the hub would close
    /// the connection, or drop entries nobody saw.
    AckBeyondDelivered {
        /// The `seq` asked for.
        upto: u64,
        /// The highest `seq` handed out.
        delivered: u64,
    },
    /// [`retry`](super::SessionClient::retry) named a message id this
    /// session never used (0, or not below the next id). Nothing was sent.
    NotARetry {
        /// The id asked for.
        message_id: u64,
        /// The session's next fresh id.
        next: u64,
    },
    /// [`ReconnectingClient`](super::ReconnectingClient) holds the most
    /// relays or bytes without a `Stored` that its policy allows. Nothing
    /// was sent: receive (which handles the `Stored` answers) and retry.
    Backlog {
        /// Relays waiting for their `Stored`.
        relays: usize,
        /// Their body bytes.
        bytes: usize,
    },
    /// The state file could not be written; the request was not sent.
    State(StateError),
    /// The session could not be resumed after a connection loss: a fatal
    /// refusal, or [`ReconnectPolicy::attempts_max`](super::ReconnectPolicy::attempts_max)
    /// attempts failed.
    Reconnect {
        /// Attempts made.
        attempts: u32,
        /// Why the last one failed.
        last: Box<ConnectError>,
    },
}

impl SessionError {
    /// True when the connection cannot be used after this error.
    pub fn closes_connection(&self) -> bool {
        match self {
            SessionError::Protocol(error) => error.is_fatal(),
            SessionError::Hub(error) => error.code.closes_connection(),
            SessionError::Encode(_)
            | SessionError::Timeout { .. }
            | SessionError::LimitExceeded { .. }
            | SessionError::QueueFull { .. }
            | SessionError::AckBeyondDelivered { .. }
            | SessionError::NotARetry { .. }
            | SessionError::Backlog { .. }
            | SessionError::State(_) => false,
            SessionError::Io(_)
            | SessionError::Closed
            | SessionError::UnknownErrorCode { .. }
            | SessionError::Unexpected { .. }
            | SessionError::Reconnect { .. } => true,
        }
    }

    /// True when the connection was lost in a way that resuming the session
    /// on a new connection can repair: IO errors, the hub closing, and the
    /// hub's closing errors that leave the session intact (`IdleTimeout`,
    /// `ShuttingDown`, `SlowConsumer`, `FrameTimeout`, `ServerFull`). False
    /// for a takeover (another connection owns the session now), for
    /// protocol violations either way, and for errors that leave the
    /// connection open.
    pub fn is_recoverable(&self) -> bool {
        match self {
            SessionError::Io(_) | SessionError::Closed => true,
            SessionError::Hub(error) => matches!(
                error.code,
                ErrorCodeV2::IdleTimeout
                    | ErrorCodeV2::ShuttingDown
                    | ErrorCodeV2::SlowConsumer
                    | ErrorCodeV2::FrameTimeout
                    | ErrorCodeV2::ServerFull
            ),
            _ => false,
        }
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Io(error) => write!(f, "connection error: {error}"),
            SessionError::Closed => write!(f, "the hub closed the connection"),
            SessionError::Protocol(error) => write!(f, "the hub broke the protocol: {error}"),
            SessionError::Encode(error) => write!(f, "cannot encode the request: {error}"),
            SessionError::Hub(error) => write!(f, "{error}"),
            SessionError::UnknownErrorCode {
                code,
                request,
                detail,
            } => write!(
                f,
                "the hub sent error code {code} (request {request}, detail {detail}), \
                 unknown to this client: is the hub newer?"
            ),
            SessionError::Unexpected { what } => {
                write!(f, "the hub broke the protocol: it sent {what}")
            }
            SessionError::Timeout { waited } => {
                write!(f, "no reply from the hub within {} ms", waited.as_millis())
            }
            SessionError::LimitExceeded { limit, value, max } => match limit {
                ClientLimit::Receivers => {
                    write!(f, "too many receivers: {value} (the limit is {max})")
                }
                ClientLimit::BodyBytes => {
                    write!(f, "body of {value} bytes is too large (the limit is {max})")
                }
                ClientLimit::ListedUsers => {
                    write!(f, "the hub listed more than {max} users; giving up")
                }
            },
            SessionError::QueueFull { events, bytes } => write!(
                f,
                "{events} events ({bytes} bytes) are waiting to be received: \
                 call recv_timeout to drain them before the next request"
            ),
            SessionError::AckBeyondDelivered { upto, delivered } => write!(
                f,
                "cannot ack up to seq {upto}: only entries up to {delivered} were handed out"
            ),
            SessionError::NotARetry { message_id, next } => write!(
                f,
                "message id {message_id} was never used by this session (next id: {next})"
            ),
            SessionError::Backlog { relays, bytes } => write!(
                f,
                "{relays} relays ({bytes} bytes) are waiting for the hub's Stored: \
                 receive before relaying more"
            ),
            SessionError::State(error) => write!(f, "{error}"),
            SessionError::Reconnect { attempts, last } => write!(
                f,
                "the session could not be resumed after {attempts} attempts: {last}"
            ),
        }
    }
}

impl std::error::Error for SessionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SessionError::Io(error) => Some(error),
            SessionError::Protocol(error) => Some(error),
            SessionError::Encode(error) => Some(error),
            SessionError::State(error) => Some(error),
            SessionError::Reconnect { last, .. } => Some(last.as_ref()),
            _ => None,
        }
    }
}

impl From<EncodeError> for SessionError {
    fn from(error: EncodeError) -> SessionError {
        SessionError::Encode(error)
    }
}

impl From<StateError> for SessionError {
    fn from(error: StateError) -> SessionError {
        SessionError::State(error)
    }
}

/// Maps an IO error on an established connection: a peer that went away is
/// [`SessionError::Closed`], anything else [`SessionError::Io`].
pub(crate) fn session_io(error: io::Error) -> SessionError {
    if is_disconnect(&error) {
        SessionError::Closed
    } else {
        SessionError::Io(error)
    }
}

/// True for the IO errors that mean the peer went away.
pub(crate) fn is_disconnect(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_sentence() {
        for code in ErrorCodeV2::ALL {
            let error = HubErrorV2 {
                code,
                request: 0,
                detail: 1,
            };
            assert!(!error.to_string().is_empty(), "{code:?}");
        }
        let error = HubErrorV2 {
            code: ErrorCodeV2::InboxFull,
            request: 3,
            detail: 9,
        };
        assert_eq!(
            error.to_string(),
            "user 9's inbox is full: nothing was stored for them (request 3)"
        );
    }

    #[test]
    fn unknown_codes_are_fatal() {
        let error = HubErrorV2::from_wire(999, 1, 2).unwrap_err();
        assert!(matches!(
            error,
            SessionError::UnknownErrorCode { code: 999, .. }
        ));
        assert!(error.closes_connection() && !error.is_recoverable());
    }

    #[test]
    fn which_losses_are_recoverable() {
        let hub = |code| {
            SessionError::Hub(HubErrorV2 {
                code,
                request: 0,
                detail: 0,
            })
        };
        assert!(SessionError::Closed.is_recoverable());
        assert!(hub(ErrorCodeV2::ShuttingDown).is_recoverable());
        assert!(hub(ErrorCodeV2::IdleTimeout).is_recoverable());
        assert!(!hub(ErrorCodeV2::SessionTakenOver).is_recoverable());
        assert!(!hub(ErrorCodeV2::AckOutOfRange).is_recoverable());
        assert!(!hub(ErrorCodeV2::InboxFull).is_recoverable());
        assert!(ConnectError::Closed {
            addr: "127.0.0.1:1".parse().unwrap()
        }
        .is_retryable());
        assert!(!ConnectError::ResumeRejected { user: 3 }.is_retryable());
    }
}
