//! Client configuration: timeouts and the bounds on what the client buffers.

use std::time::Duration;

/// Default for [`ClientConfig::connect_timeout`]: 5 s.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// Default for [`ClientConfig::request_timeout`]: 10 s.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// Default for [`ClientConfig::write_timeout`]: 30 s.
pub const WRITE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// Default for [`ClientConfig::pending_events_max`]: 65 536 events.
pub const PENDING_EVENTS_MAX_DEFAULT: usize = 64 * 1024;

/// Default for [`ClientConfig::pending_bytes_max`]: 64 MiB.
pub const PENDING_BYTES_MAX_DEFAULT: usize = 64 << 20;

/// Default for [`ClientConfig::write_buffer_bytes`]: 64 KiB.
pub const WRITE_BUFFER_BYTES_DEFAULT: usize = 64 << 10;

/// How a [`Client`](crate::Client) connects, waits and buffers.
///
/// Every field has a default ([`ClientConfig::default`]); change only what
/// you need:
///
/// ```
/// use std::time::Duration;
/// use relayhub_client::ClientConfig;
///
/// let config = ClientConfig {
///     request_timeout: Duration::from_secs(1),
///     ..ClientConfig::default()
/// };
/// assert_eq!(config.pending_events_max, relayhub_client::PENDING_EVENTS_MAX_DEFAULT);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Longest wait for the TCP connection to be accepted, per address tried.
    pub connect_timeout: Duration,
    /// Longest wait for the hub's preface and `Welcome`, and for the reply to
    /// each `identity`/`list`/`echo` call. Past it the call fails with
    /// [`ClientError::Timeout`](crate::ClientError::Timeout); the connection
    /// stays usable and a late reply arrives as an [`Event`](crate::Event).
    pub request_timeout: Duration,
    /// Longest a write may block because the hub is not reading (`None`:
    /// forever). Past it the send fails with an IO error and the connection
    /// is unusable: part of a frame may have been written.
    pub write_timeout: Option<Duration>,
    /// Most events (deliveries, asynchronous errors, unclaimed replies) kept
    /// while a call waits for its reply. At the bound the call stops reading
    /// and fails with [`ClientError::QueueFull`](crate::ClientError::QueueFull);
    /// nothing is dropped.
    pub pending_events_max: usize,
    /// Most body bytes kept in those events. The queue may exceed it by one
    /// event (at most one 1 MiB body): the bound is checked before each read.
    /// Worst case memory: `pending_bytes_max` + 1 MiB + the events' headers.
    pub pending_bytes_max: usize,
    /// Buffered outgoing bytes past which a `send_*` call writes to the
    /// socket by itself; [`flush`](crate::Client::flush) writes the rest.
    /// The buffer holds at most this plus one frame (about 1 MiB).
    pub write_buffer_bytes: usize,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            write_timeout: Some(WRITE_TIMEOUT_DEFAULT),
            pending_events_max: PENDING_EVENTS_MAX_DEFAULT,
            pending_bytes_max: PENDING_BYTES_MAX_DEFAULT,
            write_buffer_bytes: WRITE_BUFFER_BYTES_DEFAULT,
        }
    }
}
