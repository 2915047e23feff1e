//! Protocol version 2 (docs/protocol-v2.md): durable sessions, sequenced
//! and acknowledged deliveries, acknowledged relays, receipts.
//!
//! A [`SessionClient`] holds one version-2 connection. It opens a new
//! session or resumes a durable one ([`Options::resume`]), relays with a
//! fresh `message_id` per relay ([`SessionClient::relay`]) and hands the
//! application what the hub sends as [`SessionEvent`]s, after client-side
//! dedup ([`dedup`]). With [`Options::auto_ack`] it acknowledges, in one
//! `Ack` per batch, the entries it has handed out.
//! [`ReconnectingClient`] adds a reconnect loop: on connection loss it
//! resumes the session with backoff and re-sends every relay that has no
//! `Stored` yet, with the same `message_id`. [`SessionState`] is what a
//! session needs to survive a process restart, saved atomically to a file
//! ([`Options::state_file`]).
//!
//! The version-1 [`Client`](crate::Client) is unchanged; the two share
//! [`ClientConfig`](crate::ClientConfig) and [`ClientLimit`](crate::ClientLimit).
//!
//! # Layout
//! - [`client`]: [`SessionClient`]: handshake, relays, acks, events,
//!   blocking identity/list/echo.
//! - [`reconnect`]: [`ReconnectingClient`], [`ReconnectPolicy`] and the backoff.
//! - [`options`]: [`Options`] and [`Resume`].
//! - [`event`]: [`SessionEvent`], [`RelayHandle`], [`RelayOutcome`].
//! - [`error`]: [`ConnectError`], [`SessionError`], [`HubErrorV2`].
//! - [`dedup`]: the client-side dedup of deliveries and its bounds.
//! - [`state`]: [`SessionState`] and its file format.
//! - `book` and `link` (private): the session's bookkeeping that survives
//!   connections, and one connection's socket, decoder and write buffer.
//!
//! # Guarantees
//! For entries of a durable inbox (deliveries and receipts with `seq` > 0):
//! - **Exactly once to the application, in `seq` order**, as long as the
//!   session lives and the entry does not expire, provided that the
//!   application persists the session ([`Options::state_file`]) or keeps
//!   the process alive: an entry at or below the highest `seq` already
//!   handed out is dropped, and so is a `(from, message_id)` pair already
//!   seen ([`dedup::DEDUP_SENDERS_MAX`] senders,
//!   [`dedup::DEDUP_IDS_PER_SENDER`] ids each, in memory only).
//! - **Acked only after it was handed out.** An entry is acked when the
//!   application comes back for the next event, or on
//!   [`flush`](SessionClient::flush) / [`close`](SessionClient::close).
//!   A process that dies in between gets the entry again on its next
//!   resume, marked `redelivery` (at least once in that case).
//!
//! For relays: every message id is used once per session, across process
//! restarts too when a state file is kept (ids are reserved in blocks of
//! [`MESSAGE_ID_RESERVE`] before use; a clean `close` gives back the
//! unused rest). A retry with the same id is answered
//! `Stored{duplicate: true}` and is not delivered twice.
//!
//! # Example
//! ```no_run
//! use std::time::Duration;
//! use relayhub_client::session::{Options, SessionClient, SessionEvent};
//!
//! let mut bob = SessionClient::open("127.0.0.1:7878", "bob.session", Options::default())?;
//! println!("I am user {}, resumed: {}", bob.user(), bob.resumed());
//! while let Some(event) = bob.recv_timeout(Duration::from_secs(1))? {
//!     if let SessionEvent::Deliver { from, body, redelivery, .. } = event {
//!         println!("from {from}: {body:?} (redelivered: {redelivery})");
//!     }
//! }
//! bob.close()?; // acks what was handed out
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub(crate) mod book;
pub mod client;
pub mod dedup;
pub mod error;
pub mod event;
pub(crate) mod link;
pub mod options;
pub mod reconnect;
pub mod state;

pub use client::SessionClient;
pub use dedup::{DEDUP_IDS_PER_SENDER, DEDUP_SENDERS_MAX};
pub use error::{ConnectError, HubErrorV2, SessionError};
pub use event::{RelayHandle, RelayOutcome, SessionEvent};
pub use options::{Options, Resume};
pub use reconnect::{
    ReconnectPolicy, ReconnectingClient, RECONNECT_BACKOFF_MAX_DEFAULT,
    RECONNECT_BACKOFF_MIN_DEFAULT, RETAINED_BYTES_MAX_DEFAULT, RETAINED_RELAYS_MAX_DEFAULT,
};
pub use relayhub_protocol::{ErrorCodeV2, Limits as HubLimits, ResumeToken};
pub use state::{SessionState, StateError, STATE_FILE_BYTES_MAX};

/// Message ids reserved in the state file at a time: before the first relay
/// that would use an id at or past the reserved bound, the client saves the
/// bound raised by this much. A crash therefore skips at most this many
/// ids (harmless: ids need only increase) and never reuses one; a clean
/// [`close`](SessionClient::close) saves the exact next id. One state file
/// write per this many relays.
pub const MESSAGE_ID_RESERVE: u64 = 1024;

/// An empty `Echo` keeps an idle connection open: the client sends one when
/// it has written nothing for the hub's advertised idle timeout divided by
/// this, while it waits for events. Its reply is not handed out.
pub const KEEPALIVE_PER_IDLE_TIMEOUT: u32 = 3;

/// Most keepalive echoes awaiting their reply; past it no more are sent
/// (a hub that does not answer them is closing anyway).
pub const KEEPALIVES_PENDING_MAX: usize = 8;
