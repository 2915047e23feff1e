//! [`Options`]: how a [`SessionClient`](super::SessionClient) opens its
//! session, acks, persists and waits.

use std::{fmt, path::PathBuf};

use relayhub_protocol::ResumeToken;

use crate::{config::ClientConfig, event::UserId, session::state::SessionState};

/// The durable session to resume: its user id and the token of its latest
/// `WelcomeV2`. The token is a bearer secret: `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct Resume {
    /// The session's user id.
    pub user: UserId,
    /// The token the hub gave with the session's latest `WelcomeV2`.
    pub token: ResumeToken,
}

impl fmt::Debug for Resume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resume")
            .field("user", &self.user)
            .field("token", &"<secret>")
            .finish()
    }
}

/// How to open a version-2 session. [`Options::default`] opens a new
/// durable session with auto-ack and no state file:
///
/// ```
/// use relayhub_client::session::Options;
///
/// let options = Options { auto_ack: false, ..Options::default() };
/// assert!(options.durable && options.resume.is_none());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// For a new session: ask for a durable one (kept with an inbox while
    /// disconnected) rather than an ephemeral one. The hub may grant an
    /// ephemeral session anyway: check [`SessionClient::durable`](super::SessionClient::durable).
    /// A resume is always durable.
    pub durable: bool,
    /// Resume this durable session instead of opening a new one. A refusal
    /// is [`ConnectError::ResumeRejected`](super::ConnectError::ResumeRejected).
    pub resume: Option<Resume>,
    /// Ack entries once they have been handed to the application: one
    /// cumulative `Ack` when the application asks for the next event and
    /// nothing is buffered, and on `flush`/`close`. Without it, call
    /// [`ack`](super::SessionClient::ack).
    pub auto_ack: bool,
    /// On a resume: the highest `seq` this session already handed out and
    /// acked, from an earlier process ([`SessionState::delivered_seq`]).
    /// Entries at or below it are dropped, and it is acked again right
    /// after the resume. Ignored for a new session.
    pub delivered_seq: u64,
    /// The first message id to use (ids must increase within a session;
    /// [`SessionState::next_message_id`] continues them across processes).
    /// 0 is read as 1.
    pub next_message_id: u64,
    /// Keep the session in this file ([`SessionState::save`]): written after
    /// every `WelcomeV2` (its token), before each `Ack` (the acked `seq`),
    /// before a relay uses an id past the reserved block
    /// ([`MESSAGE_ID_RESERVE`](super::MESSAGE_ID_RESERVE)) and on
    /// [`close`](super::SessionClient::close). Only durable sessions are
    /// saved.
    pub state_file: Option<PathBuf>,
    /// Timeouts and buffer bounds, as for the version-1 client. The
    /// handshake and the blocking calls wait at most `request_timeout`.
    pub config: ClientConfig,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            durable: true,
            resume: None,
            auto_ack: true,
            delivered_seq: 0,
            next_message_id: 1,
            state_file: None,
            config: ClientConfig::default(),
        }
    }
}

impl Options {
    /// These options, resuming the session `state` describes (its user,
    /// token, acked `seq` and next message id).
    pub fn resuming(self, state: &SessionState) -> Options {
        Options {
            resume: Some(Resume {
                user: state.user,
                token: state.token,
            }),
            delivered_seq: state.delivered_seq,
            next_message_id: state.next_message_id,
            ..self
        }
    }
}
