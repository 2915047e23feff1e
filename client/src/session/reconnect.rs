//! [`ReconnectingClient`]: a durable session that survives connection loss.
//!
//! # What it guarantees
//! - **Relays:** every relay is retained until its `Stored` (or its
//!   whole-relay refusal) arrives. After a reconnect, every retained relay is
//!   sent again, in message-id order, with the **same message id**: the hub
//!   answers `Stored{duplicate: true}` for the ones it had stored and
//!   delivers nothing twice; the others are stored now. The application
//!   sees one `Stored` per relay, with the request id `relay` returned.
//!   Errors about a relay sent on a lost connection may be lost with it
//!   (the hub does not repeat them for a duplicate).
//! - **Entries:** the session is resumed with its latest token; unacked
//!   entries are redelivered by the hub, and client-side dedup drops those
//!   already handed out, so each is handed out once. Events received
//!   before the loss and not yet handed out are kept.
//! - **Giving up:** on a refusal that retrying cannot fix (the resume is
//!   rejected, the session was taken over, the hub breaks the protocol,
//!   the state file cannot be written), or after
//!   [`ReconnectPolicy::attempts_max`] failed attempts, the call fails
//!   with [`SessionError::Reconnect`] (or the hub's error) and every later
//!   call with [`SessionError::Closed`].
//!
//! # Backoff
//! The n-th attempt after a loss (n = 0, 1, ...) waits a random time in
//! `[d/2, d]`, `d = min(backoff_max, backoff_min * 2^n)`: with the
//! defaults 25-50 ms first, then doubling, at most 5 s between attempts.
//! The waits happen inside [`recv_timeout`](ReconnectingClient::recv_timeout),
//! which still returns by its own deadline; `relay`, `ack` and `flush`
//! never wait: they attempt a reconnect only when one is due.

use std::{
    collections::hash_map::RandomState,
    hash::BuildHasher,
    net::ToSocketAddrs,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use relayhub_protocol::ResumeToken;

use crate::{
    event::UserId,
    session::{
        book::{Retained, RetainedRelay},
        client::SessionClient,
        error::{ConnectError, SessionError},
        event::{RelayHandle, SessionEvent},
        options::Options,
        state::SessionState,
    },
};

/// Default for [`ReconnectPolicy::backoff_min`]: 50 ms.
pub const RECONNECT_BACKOFF_MIN_DEFAULT: Duration = Duration::from_millis(50);

/// Default for [`ReconnectPolicy::backoff_max`]: 5 s.
pub const RECONNECT_BACKOFF_MAX_DEFAULT: Duration = Duration::from_secs(5);

/// Default for [`ReconnectPolicy::retained_relays_max`]: 4096 relays.
pub const RETAINED_RELAYS_MAX_DEFAULT: usize = 4096;

/// Default for [`ReconnectPolicy::retained_bytes_max`]: 64 MiB of bodies.
pub const RETAINED_BYTES_MAX_DEFAULT: usize = 64 << 20;

/// How a [`ReconnectingClient`] retries and what it keeps meanwhile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// The first wait after a loss is at most this (and at least half of it).
    pub backoff_min: Duration,
    /// No wait between attempts is longer than this.
    pub backoff_max: Duration,
    /// Give up after this many failed attempts in a row; `None`: never
    /// (until a refusal that retrying cannot fix).
    pub attempts_max: Option<u32>,
    /// Most relays retained without a `Stored`; past it `relay` fails with
    /// [`SessionError::Backlog`] (not fatal).
    pub retained_relays_max: usize,
    /// Most body bytes retained; past it, [`SessionError::Backlog`]. One
    /// relay is always accepted when none is retained.
    pub retained_bytes_max: usize,
}

impl Default for ReconnectPolicy {
    fn default() -> ReconnectPolicy {
        ReconnectPolicy {
            backoff_min: RECONNECT_BACKOFF_MIN_DEFAULT,
            backoff_max: RECONNECT_BACKOFF_MAX_DEFAULT,
            attempts_max: None,
            retained_relays_max: RETAINED_RELAYS_MAX_DEFAULT,
            retained_bytes_max: RETAINED_BYTES_MAX_DEFAULT,
        }
    }
}

impl ReconnectPolicy {
    /// The wait before attempt `attempt` (0-based) for a random draw
    /// `random`: uniform in `[d/2, d]`, `d = min(max, min * 2^attempt)`.
    pub fn backoff(&self, attempt: u32, random: u64) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        let ceiling = self
            .backoff_min
            .saturating_mul(factor)
            .min(self.backoff_max)
            .max(Duration::from_nanos(1));
        let floor = ceiling / 2;
        let span = (ceiling - floor).as_nanos().min(u128::from(u64::MAX)) as u64;
        floor + Duration::from_nanos(random % span.saturating_add(1))
    }
}

/// The state while disconnected.
#[derive(Debug)]
struct Down {
    /// Failed attempts since the loss.
    attempts: u32,
    next_attempt: Instant,
}

/// A durable session that reconnects: see the [module docs](self).
///
/// ```no_run
/// use std::time::Duration;
/// use relayhub_client::session::{Options, ReconnectPolicy, ReconnectingClient, SessionEvent};
///
/// let mut client = ReconnectingClient::open(
///     "127.0.0.1:7878",
///     "worker.session",
///     Options::default(),
///     ReconnectPolicy { attempts_max: Some(20), ..ReconnectPolicy::default() },
/// )?;
/// client.relay(&[7], b"job 1", false)?;
/// loop {
///     match client.recv_timeout(Duration::from_secs(1))? {
///         Some(SessionEvent::Reconnected { attempts, resent }) => {
///             eprintln!("resumed after {attempts} attempts, {resent} relays re-sent")
///         }
///         Some(event) => println!("{event:?}"),
///         None if client.unstored() == 0 => break,
///         None => {}
///     }
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ReconnectingClient {
    client: SessionClient,
    policy: ReconnectPolicy,
    down: Option<Down>,
    /// Gave up: every call fails with `Closed`.
    failed: bool,
    reconnects: u64,
    random: u64,
}

impl ReconnectingClient {
    /// Connects like [`SessionClient::connect`]; fails with
    /// [`ConnectError::NotDurable`] if the hub grants only an ephemeral
    /// session (which cannot be resumed). The first connection is not retried.
    pub fn connect(
        addr: impl ToSocketAddrs,
        options: Options,
        policy: ReconnectPolicy,
    ) -> Result<ReconnectingClient, ConnectError> {
        ReconnectingClient::new(SessionClient::connect(addr, options)?, policy)
    }

    /// Connects like [`SessionClient::open`], with the session kept in `path`.
    pub fn open(
        addr: impl ToSocketAddrs,
        path: impl Into<PathBuf>,
        options: Options,
        policy: ReconnectPolicy,
    ) -> Result<ReconnectingClient, ConnectError> {
        ReconnectingClient::new(SessionClient::open(addr, path, options)?, policy)
    }

    /// Wraps a connected durable session.
    pub fn new(
        mut client: SessionClient,
        policy: ReconnectPolicy,
    ) -> Result<ReconnectingClient, ConnectError> {
        if !client.durable() {
            return Err(ConnectError::NotDurable);
        }
        client.book.retained = Some(Retained::default());
        Ok(ReconnectingClient {
            client,
            policy,
            down: None,
            failed: false,
            reconnects: 0,
            random: RandomState::new().hash_one(std::process::id()) | 1,
        })
    }

    /// The session underneath (its limits, marks, counters).
    pub fn session(&self) -> &SessionClient {
        &self.client
    }

    /// The session's user id.
    pub fn user(&self) -> UserId {
        self.client.user()
    }

    /// The latest resume token (a bearer secret).
    pub fn token(&self) -> ResumeToken {
        self.client.token()
    }

    /// The session as it would be saved now.
    pub fn state(&self) -> SessionState {
        self.client.state()
    }

    /// True while connected.
    pub fn is_connected(&self) -> bool {
        self.down.is_none() && !self.failed
    }

    /// Successful reconnects so far.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Relays still waiting for their `Stored`.
    pub fn unstored(&self) -> usize {
        self.client
            .book
            .retained
            .as_ref()
            .map_or(0, |retained| retained.relays.len())
    }

    /// Relays `body` to `receivers` with the session's next message id and
    /// retains it until its `Stored`. While disconnected it is only
    /// retained, and sent once the session is resumed. The returned request
    /// id is the one the `Stored` and the errors about it carry, whichever
    /// connection they come on.
    pub fn relay(
        &mut self,
        receivers: &[UserId],
        body: &[u8],
        receipt: bool,
    ) -> Result<RelayHandle, SessionError> {
        self.ensure_usable()?;
        self.poll_reconnect()?;
        self.client.book.check_relay(receivers.len(), body.len())?;
        let (relays, bytes) = self
            .client
            .book
            .retained
            .as_ref()
            .map_or((0, 0), |retained| (retained.relays.len(), retained.bytes));
        let over_bytes = relays > 0 && bytes + body.len() > self.policy.retained_bytes_max;
        if relays >= self.policy.retained_relays_max || over_bytes {
            return Err(SessionError::Backlog { relays, bytes });
        }
        let message_id = self.client.book.take_message_id()?;
        let request = self.client.book.take_request();
        let relay = RetainedRelay {
            request,
            receivers: receivers.to_vec(),
            body: Bytes::copy_from_slice(body),
            receipt,
        };
        let connected = self.down.is_none();
        let sent = self
            .client
            .relay_retained(message_id, request, relay, connected);
        self.on_result(sent)?;
        Ok(RelayHandle {
            request,
            message_id,
        })
    }

    /// Acks entries up to `upto`, as [`SessionClient::ack`]. While
    /// disconnected the ack is saved and sent on the resume.
    pub fn ack(&mut self, upto: u64) -> Result<(), SessionError> {
        self.ensure_usable()?;
        let result = self.client.ack(upto);
        self.on_result(result)
    }

    /// Writes what is buffered (and the auto-ack), or attempts a due
    /// reconnect while disconnected.
    pub fn flush(&mut self) -> Result<(), SessionError> {
        self.ensure_usable()?;
        if self.down.is_some() {
            return self.poll_reconnect();
        }
        let result = self.client.flush();
        self.on_result(result)
    }

    /// Flushes and closes the connection (see [`SessionClient::close`]).
    /// While disconnected it only saves the state; what is still retained
    /// is not sent.
    pub fn close(self) -> Result<(), SessionError> {
        let connected = self.is_connected();
        match self.client.close() {
            Err(error) if !connected && error.is_recoverable() => Ok(()),
            other => other,
        }
    }

    /// The next event, waiting at most `timeout`, reconnecting (with
    /// backoff) as needed meanwhile; `Ok(None)` when nothing arrived in
    /// time. A resume shows up as [`SessionEvent::Reconnected`], after the
    /// events received before the loss.
    pub fn recv_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<SessionEvent>, SessionError> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            self.ensure_usable()?;
            let Some(down) = &self.down else {
                match self.client.next_event(deadline) {
                    Ok(event) => return Ok(event),
                    Err(error) => {
                        self.on_result(Err(error))?;
                        continue;
                    }
                }
            };
            let next_attempt = down.next_attempt;
            if let Some(event) = self.client.book.pop() {
                return Ok(Some(event));
            }
            let now = Instant::now();
            if now >= next_attempt {
                self.poll_reconnect()?;
                continue;
            }
            if deadline.is_some_and(|deadline| now >= deadline) {
                return Ok(None);
            }
            let wake = deadline.map_or(next_attempt, |deadline| deadline.min(next_attempt));
            thread::sleep(wake.saturating_duration_since(now));
        }
    }

    /// The next event, waiting (and reconnecting) as long as it takes.
    pub fn recv(&mut self) -> Result<SessionEvent, SessionError> {
        loop {
            if let Some(event) = self.recv_timeout(Duration::from_secs(3600))? {
                return Ok(event);
            }
        }
    }

    fn ensure_usable(&self) -> Result<(), SessionError> {
        if self.failed {
            return Err(SessionError::Closed);
        }
        Ok(())
    }

    /// A connection loss marks the client down; other errors pass through
    /// (fatal ones after marking the client failed).
    fn on_result(&mut self, result: Result<(), SessionError>) -> Result<(), SessionError> {
        match result {
            Ok(()) => Ok(()),
            Err(error) if error.is_recoverable() => {
                if self.down.is_none() {
                    self.down = Some(Down {
                        attempts: 0,
                        next_attempt: Instant::now() + self.next_backoff(0),
                    });
                }
                Ok(())
            }
            Err(error) => {
                if error.closes_connection() {
                    self.failed = true;
                }
                Err(error)
            }
        }
    }

    /// Attempts the reconnect if one is due; on success the retained relays
    /// are re-sent and a `Reconnected` event is queued.
    fn poll_reconnect(&mut self) -> Result<(), SessionError> {
        let Some(down) = &mut self.down else {
            return Ok(());
        };
        if Instant::now() < down.next_attempt {
            return Ok(());
        }
        down.attempts += 1;
        let attempts = down.attempts;
        match self.client.relink() {
            Ok(()) => {
                self.down = None;
                self.reconnects += 1;
                let resent = self.client.resend_retained();
                if let Ok(resent) = resent {
                    self.client
                        .book
                        .push(super::book::Queued::Event(SessionEvent::Reconnected {
                            attempts,
                            resent,
                        }));
                }
                self.on_result(resent.map(drop))
            }
            Err(error)
                if error.is_retryable()
                    && self.policy.attempts_max.is_none_or(|max| attempts < max) =>
            {
                let wait = self.next_backoff(attempts);
                if let Some(down) = &mut self.down {
                    down.next_attempt = Instant::now() + wait;
                }
                Ok(())
            }
            Err(error) => {
                self.failed = true;
                Err(SessionError::Reconnect {
                    attempts,
                    last: Box::new(error),
                })
            }
        }
    }

    fn next_backoff(&mut self, attempt: u32) -> Duration {
        // xorshift64: jitter needs no better randomness.
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        self.policy.backoff(attempt, self.random)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_bounds_with_jitter() {
        let policy = ReconnectPolicy::default();
        for random in [0, 1, u64::MAX / 3, u64::MAX] {
            let first = policy.backoff(0, random);
            assert!(first >= Duration::from_millis(25) && first <= Duration::from_millis(50));
            let third = policy.backoff(2, random);
            assert!(third >= Duration::from_millis(100) && third <= Duration::from_millis(200));
            for attempt in [7, 8, 31, 32, u32::MAX] {
                let late = policy.backoff(attempt, random);
                assert!(
                    late >= Duration::from_millis(2500) && late <= Duration::from_secs(5),
                    "{attempt}: {late:?}"
                );
            }
        }
        assert_eq!(policy.backoff(0, 0), Duration::from_millis(25));
        assert_eq!(
            policy.backoff(0, 25_000_000),
            Duration::from_millis(50),
            "the top of the range is reachable"
        );
    }

    #[test]
    fn backoff_of_a_zero_policy_does_not_panic() {
        let policy = ReconnectPolicy {
            backoff_min: Duration::ZERO,
            backoff_max: Duration::ZERO,
            ..ReconnectPolicy::default()
        };
        assert!(policy.backoff(3, 12345) <= Duration::from_nanos(1));
    }
}
