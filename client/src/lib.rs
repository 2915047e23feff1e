//! relayhub-client: a small blocking client for the relayhub message hub,
//! and the `relayhub-cli` command-line tool built on it.
//!
//! A [`Client`] holds one TCP connection. The hub gives it a user id
//! ([`Client::user_id`]); it can ask who else is connected
//! ([`Client::list_all`]), relay a body of up to 1 MiB to up to 255 users
//! ([`Client::relay`]), and receive what others relay to it
//! ([`Client::recv_timeout`]). All framing is done by `relayhub-protocol`;
//! this crate only drives a `std::net::TcpStream`.
//!
//! # Layout
//! - [`client`]: [`Client`]: connect + handshake, blocking request/reply
//!   calls, the pending-event queue, [`Client::split`].
//! - [`sender`]: [`Sender`]: the write half: request ids, buffered encoding,
//!   `flush`, raw bytes for tests.
//! - [`receiver`]: [`Receiver`]: the read half: socket reads with deadlines,
//!   the decoder, the bounded queue of events that arrived while waiting.
//! - [`event`]: [`Event`] (deliveries, asynchronous errors, replies) and
//!   [`HubError`], with human-readable messages.
//! - [`error`]: [`ClientError`]: every way a call fails, and whether the
//!   connection survives it.
//! - [`limits`]: [`Limits`] announced by the hub, client-side checks.
//! - [`config`]: [`ClientConfig`]: timeouts and buffer bounds, with defaults.
//! - [`session`]: protocol version 2 ([`session::SessionClient`],
//!   [`session::ReconnectingClient`], [`session::SessionState`]): durable
//!   sessions, acknowledged relays, sequenced deliveries with client-side
//!   dedup, receipts, resume and reconnect (docs/protocol-v2.md).
//! - `src/bin/relayhub-cli/`: the `relayhub-cli` binary (docs/cli.md).
//!
//! # Example
//! ```no_run
//! use std::time::Duration;
//! use relayhub_client::{Client, Event};
//!
//! let mut client = Client::connect("127.0.0.1:7878")?;
//! println!("I am user {}", client.user_id());
//! let others = client.list_all()?;
//! let request = client.relay(&others, b"hello, everyone")?;
//! // Deliveries and errors (e.g. a receiver that left) arrive as events.
//! while let Some(event) = client.recv_timeout(Duration::from_millis(200))? {
//!     match event {
//!         Event::Deliver { from, body } => println!("from {from}: {}", String::from_utf8_lossy(&body)),
//!         Event::HubError(error) if error.request == request => eprintln!("{error}"),
//!         other => println!("{other:?}"),
//!     }
//! }
//! # Ok::<(), relayhub_client::ClientError>(())
//! ```
//!
//! # Threads
//! A `Client` is used from one thread at a time. To send and receive
//! concurrently, [`Client::split`] it into a [`Sender`] and a [`Receiver`].

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod config;
pub mod error;
pub mod event;
pub mod limits;
pub mod receiver;
pub mod sender;
pub mod session;

pub use client::{Client, ListPage};
pub use config::{
    ClientConfig, CONNECT_TIMEOUT_DEFAULT, PENDING_BYTES_MAX_DEFAULT, PENDING_EVENTS_MAX_DEFAULT,
    REQUEST_TIMEOUT_DEFAULT, WRITE_BUFFER_BYTES_DEFAULT, WRITE_TIMEOUT_DEFAULT,
};
pub use error::{ClientError, ClientLimit, START_HUB_HINT};
pub use event::{Event, HubError, RequestId, UserId};
pub use limits::{Limits, LIST_ALL_USERS_MAX};
pub use receiver::Receiver;
pub use relayhub_protocol::{ErrorCode, BODY_BYTES_MAX, RECEIVERS_MAX};

/// The wire protocol this client speaks, for tests that build frames by
/// hand (with [`Client::send_raw`]) or check limits.
pub use relayhub_protocol as protocol;
pub use sender::Sender;

/// The address `relayhub` listens on by default.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7878";
