//! [`ClientError`]: everything a client call can fail with, each with a
//! message that tells a person what happened and what to do.

use std::{fmt, io, net::SocketAddr, time::Duration};

use relayhub_protocol::{DecodeError, EncodeError, VERSION};

use crate::event::HubError;

/// How to start a hub, for messages about a hub that is not there.
pub const START_HUB_HINT: &str = "start it with `cargo run --release -p relayhub-server`";

/// A limit the client checks before sending (see [`ClientError::LimitExceeded`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientLimit {
    /// Receivers in one relay ([`Limits::receivers_max`](crate::Limits::receivers_max)).
    Receivers,
    /// Bytes in one relay or echo body ([`Limits::body_bytes_max`](crate::Limits::body_bytes_max)).
    BodyBytes,
    /// Ids collected by [`list_all`](crate::Client::list_all)
    /// ([`LIST_ALL_USERS_MAX`](crate::LIST_ALL_USERS_MAX)).
    ListedUsers,
}

/// Why a client call failed.
///
/// [`closes_connection`](Self::closes_connection) tells whether the
/// connection is still usable afterwards.
#[derive(Debug)]
pub enum ClientError {
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
    /// The peer accepted the connection but the relayhub handshake (its
    /// preface, then a `Welcome`) failed.
    Handshake {
        /// The peer.
        addr: SocketAddr,
        /// What went wrong: often [`Protocol`](Self::Protocol) with
        /// `BadPreface` (not a hub), [`Closed`](Self::Closed) or
        /// [`Timeout`](Self::Timeout).
        source: Box<ClientError>,
    },
    /// Reading or writing the socket failed; the connection is unusable.
    Io(io::Error),
    /// The hub sent bytes that are not a valid frame. Fatal unless the error
    /// is a `LimitExceeded` (the frame was skipped).
    Protocol(DecodeError),
    /// A message could not be encoded (a frame over the size limit, from
    /// `relay_unchecked`). Nothing was sent.
    Encode(EncodeError),
    /// The hub refused the request this call made (e.g. an echo body over
    /// the limit), or sent an error that closes the connection
    /// (`error.code.closes_connection()`: slow consumer, idle timeout,
    /// shutting down, a malformed frame from us...).
    Hub(HubError),
    /// The hub sent an error code this client does not know; as the protocol
    /// asks, the client treats it as fatal.
    UnknownErrorCode {
        /// The wire code.
        code: u16,
        /// The request it concerned.
        request: u64,
        /// Its detail field.
        detail: u64,
    },
    /// The hub sent a valid frame at a point where the protocol forbids it
    /// (a second `Welcome`, a reply before the `Welcome`, a list page that
    /// does not advance). The connection is not trusted any more.
    Unexpected {
        /// What arrived.
        what: &'static str,
    },
    /// The hub closed the connection (or it was already closed by an
    /// earlier fatal error).
    Closed,
    /// No reply within the request timeout. The connection is still usable;
    /// a late reply arrives as an [`Event`](crate::Event).
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
    /// While a call waited for its reply, the pending-event queue reached
    /// its bound ([`ClientConfig::pending_events_max`](crate::ClientConfig::pending_events_max)
    /// or [`pending_bytes_max`](crate::ClientConfig::pending_bytes_max)).
    /// The call stopped reading; nothing was dropped: drain the queue with
    /// `recv_timeout` (the reply will arrive there as an event), or use
    /// [`Client::split`](crate::Client::split) and read on another thread.
    QueueFull {
        /// Events queued.
        events: usize,
        /// Payload bytes queued.
        bytes: usize,
    },
}

impl ClientError {
    /// True when the connection cannot be used after this error.
    pub fn closes_connection(&self) -> bool {
        match self {
            ClientError::Protocol(error) => error.is_fatal(),
            ClientError::Hub(error) => error.code.closes_connection(),
            ClientError::Encode(_)
            | ClientError::Timeout { .. }
            | ClientError::LimitExceeded { .. }
            | ClientError::QueueFull { .. } => false,
            ClientError::Resolve { .. }
            | ClientError::Connect { .. }
            | ClientError::Handshake { .. }
            | ClientError::Io(_)
            | ClientError::UnknownErrorCode { .. }
            | ClientError::Unexpected { .. }
            | ClientError::Closed => true,
        }
    }

    /// The error under a [`Handshake`](Self::Handshake) wrapper, or `self`.
    pub fn root(&self) -> &ClientError {
        match self {
            ClientError::Handshake { source, .. } => source.root(),
            other => other,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Resolve { source } => {
                write!(f, "cannot resolve the hub's address: {source}")
            }
            ClientError::Connect { addr, source } => fmt_connect(f, *addr, source),
            ClientError::Handshake { addr, source } => fmt_handshake(f, *addr, source),
            ClientError::Io(error) => write!(f, "connection error: {error}"),
            ClientError::Protocol(error) => write!(f, "the hub broke the protocol: {error}"),
            ClientError::Encode(error) => write!(f, "cannot encode the request: {error}"),
            ClientError::Hub(error) => write!(f, "{error}"),
            ClientError::UnknownErrorCode {
                code,
                request,
                detail,
            } => write!(
                f,
                "the hub sent error code {code} (request {request}, detail {detail}), \
                 unknown to this client: is the hub newer?"
            ),
            ClientError::Unexpected { what } => {
                write!(f, "the hub broke the protocol: it sent {what}")
            }
            ClientError::Closed => write!(f, "the hub closed the connection"),
            ClientError::Timeout { waited } => {
                write!(f, "no reply from the hub within {} ms", waited.as_millis())
            }
            ClientError::LimitExceeded { limit, value, max } => match limit {
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
            ClientError::QueueFull { events, bytes } => write!(
                f,
                "{events} events ({bytes} bytes) are waiting to be received: \
                 call recv_timeout to drain them before the next request"
            ),
        }
    }
}

fn fmt_connect(f: &mut fmt::Formatter<'_>, addr: SocketAddr, source: &io::Error) -> fmt::Result {
    match source.kind() {
        io::ErrorKind::ConnectionRefused => write!(
            f,
            "connection refused: is the hub running on {addr}? {START_HUB_HINT}"
        ),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => write!(
            f,
            "timed out connecting to {addr}: is the address right and the hub reachable?"
        ),
        _ => write!(f, "cannot connect to {addr}: {source}"),
    }
}

fn fmt_handshake(
    f: &mut fmt::Formatter<'_>,
    addr: SocketAddr,
    source: &ClientError,
) -> fmt::Result {
    match source {
        ClientError::Protocol(DecodeError::BadPreface { .. }) => write!(
            f,
            "{addr} is not a relayhub hub: it did not answer with the relayhub preface \
             (wrong port?)"
        ),
        ClientError::Protocol(DecodeError::UnsupportedVersion { version }) => write!(
            f,
            "the hub at {addr} speaks protocol version {version}, this client speaks {VERSION}"
        ),
        ClientError::Closed => write!(
            f,
            "{addr} closed the connection during the handshake: is it a relayhub hub?"
        ),
        ClientError::Timeout { waited } => write!(
            f,
            "{addr} accepted the connection but sent no Welcome within {} ms: \
             is it a relayhub hub?",
            waited.as_millis()
        ),
        other => write!(f, "handshake with {addr} failed: {other}"),
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Resolve { source, .. }
            | ClientError::Connect { source, .. }
            | ClientError::Io(source) => Some(source),
            ClientError::Handshake { source, .. } => Some(source.as_ref()),
            ClientError::Protocol(error) => Some(error),
            ClientError::Encode(error) => Some(error),
            _ => None,
        }
    }
}

impl From<DecodeError> for ClientError {
    fn from(error: DecodeError) -> ClientError {
        ClientError::Protocol(error)
    }
}

impl From<EncodeError> for ClientError {
    fn from(error: EncodeError) -> ClientError {
        ClientError::Encode(error)
    }
}

/// Maps an IO error on an established connection: a peer that went away is
/// [`ClientError::Closed`], anything else is [`ClientError::Io`].
pub(crate) fn from_io(error: io::Error) -> ClientError {
    match error.kind() {
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::UnexpectedEof => ClientError::Closed,
        _ => ClientError::Io(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_connection_says_how_to_start_the_hub() {
        let error = ClientError::Connect {
            addr: "127.0.0.1:7878".parse().unwrap(),
            source: io::ErrorKind::ConnectionRefused.into(),
        };
        assert_eq!(
            error.to_string(),
            "connection refused: is the hub running on 127.0.0.1:7878? \
             start it with `cargo run --release -p relayhub-server`"
        );
        assert!(error.closes_connection());
    }

    #[test]
    fn root_sees_through_the_handshake() {
        let error = ClientError::Handshake {
            addr: "127.0.0.1:1".parse().unwrap(),
            source: Box::new(ClientError::Closed),
        };
        assert!(matches!(error.root(), ClientError::Closed));
    }
}
