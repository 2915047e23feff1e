//! [`SessionClient`]: one version-2 session over one connection at a time.

use std::{
    net::{SocketAddr, ToSocketAddrs},
    path::PathBuf,
    time::{Duration, Instant},
};

use bytes::Bytes;
use relayhub_protocol::{flags, Ack, EchoRef, Hello, Identity, List, RelayV2Ref, ResumeToken};

use crate::{
    client::ListPage,
    config::ClientConfig,
    error::ClientLimit,
    event::{RequestId, UserId},
    limits::LIST_ALL_USERS_MAX,
    session::{
        book::{Book, Queued, RetainedRelay},
        error::{session_io, ConnectError, SessionError},
        event::{RelayHandle, RelayOutcome, SessionEvent},
        link::Link,
        options::Options,
        state::SessionState,
        HubLimits, KEEPALIVES_PENDING_MAX, KEEPALIVE_PER_IDLE_TIMEOUT,
    },
};

/// A version-2 session with a relayhub hub.
///
/// Single-threaded and blocking, like the version-1 [`Client`](crate::Client):
/// calls that expect a reply block until it arrives or the request timeout
/// passes; everything else that arrives meanwhile is queued and handed out,
/// in arrival order, by [`recv_timeout`](Self::recv_timeout).
///
/// ```no_run
/// use std::time::Duration;
/// use relayhub_client::session::{Options, SessionClient, SessionEvent};
///
/// let mut alice = SessionClient::connect("127.0.0.1:7878", Options::default())?;
/// let sent = alice.relay(&[7], b"hello", true)?;
/// let outcome = alice.wait_stored(sent, Duration::from_secs(5))?;
/// assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
/// while let Some(event) = alice.recv_timeout(Duration::from_secs(5))? {
///     if let SessionEvent::Receipt { message_id, receiver, .. } = event {
///         println!("user {receiver} got message {message_id}");
///     }
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// `Debug` does not print the resume token.
#[derive(Debug)]
pub struct SessionClient {
    addrs: Vec<SocketAddr>,
    config: ClientConfig,
    pub(crate) link: Link,
    pub(crate) book: Book,
    /// A fatal error was returned: nothing more is read.
    fatal: bool,
}

impl SessionClient {
    /// Connects, sends the version-2 preface and a `Hello` (in one write),
    /// and waits for the hub's preface and `WelcomeV2`.
    ///
    /// With [`Options::resume`], resumes that durable session:
    /// [`ConnectError::ResumeRejected`] when the hub refuses (start a new
    /// session then). A hub that is full or shutting down answers
    /// [`ConnectError::Refused`]; a version-1 hub
    /// [`ConnectError::UnsupportedVersion`]. The address is resolved once:
    /// later reconnects ([`ReconnectingClient`](super::ReconnectingClient))
    /// try the same addresses.
    pub fn connect(
        addr: impl ToSocketAddrs,
        options: Options,
    ) -> Result<SessionClient, ConnectError> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|source| ConnectError::Resolve { source })?
            .collect();
        let hello = match &options.resume {
            Some(resume) => Hello::resume(1, resume.user, resume.token),
            None => Hello::new_session(1, options.durable),
        };
        let (link, welcomed) = Link::open(&addrs, &options.config, &hello)?;
        if let Some(resume) = &options.resume {
            if !welcomed.resumed || welcomed.user != resume.user {
                return Err(ConnectError::Unexpected {
                    what: "a resume answered with another session",
                });
            }
        } else if welcomed.resumed {
            return Err(ConnectError::Unexpected {
                what: "a new session marked resumed",
            });
        }
        let mut client = SessionClient {
            addrs,
            config: options.config.clone(),
            link,
            book: Book::new(&options, &welcomed),
            fatal: false,
        };
        client.after_welcome()?;
        Ok(client)
    }

    /// Connects with the session kept in the file at `path`: resumes the
    /// one saved there, or opens a new durable one when the file does not
    /// exist; from then on the file is kept up to date
    /// ([`Options::state_file`]).
    ///
    /// A refused resume is [`ConnectError::ResumeRejected`]; to start over,
    /// call [`connect`](Self::connect) with `state_file` set and no `resume`
    /// (the new session replaces the file).
    pub fn open(
        addr: impl ToSocketAddrs,
        path: impl Into<PathBuf>,
        options: Options,
    ) -> Result<SessionClient, ConnectError> {
        let path = path.into();
        let options = match SessionState::load_if_exists(&path)? {
            Some(state) => options.resuming(&state),
            None => Options {
                resume: None,
                ..options
            },
        };
        SessionClient::connect(
            addr,
            Options {
                state_file: Some(path),
                ..options
            },
        )
    }

    /// Saves the token, then re-acks what was acked before, so that the hub
    /// drops those entries even if it lost the earlier ack.
    fn after_welcome(&mut self) -> Result<(), ConnectError> {
        self.book.persist()?;
        if self.book.resumed && self.book.acked_seq > 0 {
            let addr = self.link.peer();
            let upto = self.book.acked_seq;
            self.link
                .send(&Ack { upto })
                .and_then(|()| self.link.flush())
                .map_err(|error| match error {
                    SessionError::Io(source) => ConnectError::Io { addr, source },
                    _ => ConnectError::Closed { addr },
                })?;
        }
        Ok(())
    }

    /// Resumes this session on a new connection (after the old one was
    /// lost). Events queued from the old connection are kept.
    pub(crate) fn relink(&mut self) -> Result<(), ConnectError> {
        let request = self.book.take_request();
        let hello = Hello::resume(request, self.book.user, self.book.token);
        let (link, welcomed) = Link::open(&self.addrs, &self.config, &hello)?;
        if !welcomed.resumed || welcomed.user != self.book.user {
            return Err(ConnectError::Unexpected {
                what: "a resume answered with another session",
            });
        }
        self.link = link;
        self.fatal = false;
        self.book.rewelcome(&welcomed);
        self.after_welcome()
    }

    /// This session's user id.
    pub fn user(&self) -> UserId {
        self.book.user
    }

    /// The resume token of the latest `WelcomeV2` (all zero for an
    /// ephemeral session). A bearer secret: whoever holds it can take the
    /// session over.
    pub fn token(&self) -> ResumeToken {
        self.book.token
    }

    /// True when the hub resumed an existing session (redeliveries first).
    pub fn resumed(&self) -> bool {
        self.book.resumed
    }

    /// True when the session is durable. The hub may grant an ephemeral
    /// session for a durable request: a client that needs an inbox checks this.
    pub fn durable(&self) -> bool {
        self.book.durable
    }

    /// What the hub enforces, from its latest `WelcomeV2`.
    pub fn limits(&self) -> HubLimits {
        self.book.limits
    }

    /// The hub's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.link.peer()
    }

    /// The session as it would be saved now ([`SessionState::save`]); what
    /// [`Options::state_file`] keeps on disk.
    pub fn state(&self) -> SessionState {
        self.book.state()
    }

    /// The highest inbox `seq` handed to the application.
    pub fn delivered_seq(&self) -> u64 {
        self.book.delivered_seq
    }

    /// The highest inbox `seq` acked to the hub.
    pub fn acked_seq(&self) -> u64 {
        self.book.acked_seq
    }

    /// The message id the next relay gets.
    pub fn next_message_id(&self) -> u64 {
        self.book.next_message_id
    }

    /// Entries dropped by client-side dedup so far: by `seq` (redeliveries
    /// already handed out) and by `(from, message_id)` (the same message
    /// stored twice).
    pub fn duplicates_dropped(&self) -> (u64, u64) {
        (self.book.dropped_by_seq, self.book.dropped_by_id)
    }

    /// Events received and queued, not yet handed out.
    pub fn pending_events(&self) -> usize {
        self.book.queued()
    }

    /// True once the connection is closed (by the hub, a failed write or a
    /// fatal error). Queued events can still be received.
    pub fn is_closed(&self) -> bool {
        self.link.closed || self.fatal
    }

    /// Changes how long reply-waiting calls wait.
    pub fn set_request_timeout(&mut self, timeout: Duration) {
        self.config.request_timeout = timeout;
    }

    /// Relays `body` to `receivers` with the session's next message id and
    /// flushes. With `receipt`, each durable receiver's ack comes back as a
    /// [`SessionEvent::Receipt`].
    ///
    /// The hub answers with errors about refused receivers, then one
    /// [`SessionEvent::Stored`] ([`wait_stored`](Self::wait_stored) waits
    /// for it). Over-limit relays are refused here
    /// ([`SessionError::LimitExceeded`]) and not sent.
    pub fn relay(
        &mut self,
        receivers: &[UserId],
        body: &[u8],
        receipt: bool,
    ) -> Result<RelayHandle, SessionError> {
        let handle = self.send_relay(receivers, body, receipt)?;
        self.link.flush()?;
        Ok(handle)
    }

    /// Like [`relay`](Self::relay) without flushing: relays are written
    /// once the buffer holds [`ClientConfig::write_buffer_bytes`], or on
    /// [`flush`](Self::flush).
    pub fn send_relay(
        &mut self,
        receivers: &[UserId],
        body: &[u8],
        receipt: bool,
    ) -> Result<RelayHandle, SessionError> {
        self.ensure_open()?;
        self.book.check_relay(receivers.len(), body.len())?;
        let message_id = self.book.take_message_id()?;
        self.send_relay_as(message_id, receivers, body, receipt)
    }

    /// Sends a relay again with the message id of an earlier attempt (which
    /// got no `Stored`, say because the connection was lost) and flushes. If
    /// the hub had stored it, it answers `Stored{duplicate: true}` and
    /// delivers nothing again.
    pub fn retry(
        &mut self,
        message_id: u64,
        receivers: &[UserId],
        body: &[u8],
        receipt: bool,
    ) -> Result<RelayHandle, SessionError> {
        let next = self.book.next_message_id;
        if message_id == 0 || message_id >= next {
            return Err(SessionError::NotARetry { message_id, next });
        }
        self.ensure_open()?;
        self.book.check_relay(receivers.len(), body.len())?;
        let handle = self.send_relay_as(message_id, receivers, body, receipt)?;
        self.link.flush()?;
        Ok(handle)
    }

    fn send_relay_as(
        &mut self,
        message_id: u64,
        receivers: &[UserId],
        body: &[u8],
        receipt: bool,
    ) -> Result<RelayHandle, SessionError> {
        let request = self.book.take_request();
        self.link.send(&RelayV2Ref {
            request,
            message_id,
            flags: if receipt { flags::RECEIPT } else { 0 },
            receivers,
            body,
        })?;
        Ok(RelayHandle {
            request,
            message_id,
        })
    }

    /// Sends every retained relay again on the current connection, in
    /// message-id order, with its message id and a new request id.
    pub(crate) fn resend_retained(&mut self) -> Result<usize, SessionError> {
        let Book {
            retained,
            next_request,
            ..
        } = &mut self.book;
        let Some(retained) = retained else {
            return Ok(0);
        };
        for (&message_id, relay) in &retained.relays {
            let request = *next_request;
            *next_request += 1;
            retained.by_request.insert(request, message_id);
            self.link.send(&RelayV2Ref {
                request,
                message_id,
                flags: if relay.receipt { flags::RECEIPT } else { 0 },
                receivers: &relay.receivers,
                body: &relay.body,
            })?;
        }
        self.link.flush()?;
        Ok(retained.relays.len())
    }

    /// Retains a new relay (for a [`ReconnectingClient`](super::ReconnectingClient))
    /// and sends it if connected.
    pub(crate) fn relay_retained(
        &mut self,
        message_id: u64,
        request: RequestId,
        relay: RetainedRelay,
        connected: bool,
    ) -> Result<(), SessionError> {
        let retained = self
            .book
            .retained
            .as_mut()
            .expect("a reconnecting client retains its relays");
        if connected {
            retained.by_request.insert(request, message_id);
        }
        let flags = if relay.receipt { flags::RECEIPT } else { 0 };
        let body = relay.body.clone();
        let receivers = relay.receivers.clone();
        retained.insert(message_id, relay);
        if !connected {
            return Ok(());
        }
        self.link.send(&RelayV2Ref {
            request,
            message_id,
            flags,
            receivers: &receivers,
            body: &body,
        })?;
        self.link.flush()
    }

    /// Waits for the hub's final answer to `relay`: its `Stored`, with every
    /// error about its receivers that came before. Other events arriving
    /// meanwhile are queued for [`recv_timeout`](Self::recv_timeout).
    ///
    /// A relay refused as a whole (`TooManyReceivers`, `BodyTooLarge`) has
    /// no `Stored`: that error is returned as [`SessionError::Hub`]. Past
    /// `timeout`, [`SessionError::Timeout`] (the answer will be queued).
    pub fn wait_stored(
        &mut self,
        relay: RelayHandle,
        timeout: Duration,
    ) -> Result<RelayOutcome, SessionError> {
        let request = relay.request;
        let about_it = |event: &SessionEvent| {
            event.request() == Some(request)
                && matches!(event, SessionEvent::Stored { .. } | SessionEvent::Error(_))
        };
        let deadline = Instant::now().checked_add(timeout);
        let mut errors = Vec::new();
        loop {
            let event = match self.book.take_queued(about_it) {
                Some(event) => event,
                None => match self.wait_for(deadline, about_it)? {
                    Some(event) => event,
                    None => return Err(SessionError::Timeout { waited: timeout }),
                },
            };
            match event {
                SessionEvent::Stored {
                    message_id,
                    duplicate,
                    ..
                } => {
                    return Ok(RelayOutcome {
                        message_id,
                        duplicate,
                        errors,
                    })
                }
                SessionEvent::Error(error) if error.refuses_whole_relay() => {
                    return Err(SessionError::Hub(error))
                }
                SessionEvent::Error(error) => errors.push(error),
                _ => unreachable!("only Stored and Error match"),
            }
        }
    }

    /// Acks every inbox entry with `seq <= upto` (cumulative), after saving
    /// it to the state file, and flushes. `upto` may not exceed
    /// [`delivered_seq`](Self::delivered_seq)
    /// ([`SessionError::AckBeyondDelivered`], nothing sent); at or below
    /// [`acked_seq`](Self::acked_seq) it does nothing.
    pub fn ack(&mut self, upto: u64) -> Result<(), SessionError> {
        let delivered = self.book.delivered_seq;
        if upto > delivered {
            return Err(SessionError::AckBeyondDelivered { upto, delivered });
        }
        if upto <= self.book.acked_seq {
            return Ok(());
        }
        self.send_ack(upto)?;
        self.link.flush()
    }

    fn send_ack(&mut self, upto: u64) -> Result<(), SessionError> {
        let previous = self.book.acked_seq;
        self.book.acked_seq = upto;
        if let Err(error) = self.book.persist() {
            self.book.acked_seq = previous;
            return Err(error.into());
        }
        // Once saved it counts as acked: if the Ack is lost with the
        // connection, the next resume acks it again.
        self.link.send(&Ack { upto })
    }

    /// Writes what is buffered, after the auto-ack of everything handed out
    /// (with [`Options::auto_ack`]).
    pub fn flush(&mut self) -> Result<(), SessionError> {
        if self.book.auto_ack && self.book.delivered_seq > self.book.acked_seq {
            self.send_ack(self.book.delivered_seq)?;
        }
        self.link.flush()
    }

    /// Flushes (acking what was handed out, with auto-ack), closes the
    /// sending direction, and saves the exact next message id (giving back
    /// the rest of the reserved block). Dropping the client without this
    /// sends nothing more: unacked entries are then redelivered on the next
    /// resume, and the next process skips the rest of the block.
    pub fn close(mut self) -> Result<(), SessionError> {
        let closed = self.flush().and_then(|()| self.link.finish());
        self.book.release_reservation()?;
        closed
    }

    /// The next event, waiting at most `timeout`; `Ok(None)` when none
    /// arrived in time. Queued events come first.
    ///
    /// Before it waits on the socket, it writes what is buffered and, with
    /// auto-ack, one `Ack` for every entry handed out so far: entries
    /// decoded from one read are acked together when the application comes
    /// back for more. While it waits it keeps the connection alive
    /// ([`KEEPALIVE_PER_IDLE_TIMEOUT`]).
    ///
    /// Fails with [`SessionError::Hub`] when the hub sends an error that
    /// closes the connection, then with [`SessionError::Closed`].
    pub fn recv_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<SessionEvent>, SessionError> {
        self.next_event(Instant::now().checked_add(timeout))
    }

    /// The next event, waiting as long as it takes.
    pub fn recv(&mut self) -> Result<SessionEvent, SessionError> {
        loop {
            if let Some(event) = self.next_event(None)? {
                return Ok(event);
            }
        }
    }

    pub(crate) fn next_event(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<SessionEvent>, SessionError> {
        loop {
            if let Some(event) = self.book.pop() {
                return Ok(Some(event));
            }
            if self.fatal {
                return Err(SessionError::Closed);
            }
            match self.poll_accept()? {
                Some(Some(queued)) => self.book.push(queued),
                Some(None) => {}
                None => {
                    self.flush()?;
                    if !self.read_or_keepalive(deadline)? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Reads until an event that `wanted` matches arrives, queueing the
    /// others; `Ok(None)` past `deadline`.
    fn wait_for(
        &mut self,
        deadline: Option<Instant>,
        mut wanted: impl FnMut(&SessionEvent) -> bool,
    ) -> Result<Option<SessionEvent>, SessionError> {
        loop {
            if self.fatal {
                return Err(SessionError::Closed);
            }
            match self.poll_accept()? {
                Some(Some(Queued::Event(event))) if wanted(&event) => return Ok(Some(event)),
                Some(Some(queued)) => self.book.push(queued),
                Some(None) => {}
                None => {
                    if self.book.queue_full() {
                        let (events, bytes) = self.book.queue_len_bytes();
                        return Err(SessionError::QueueFull { events, bytes });
                    }
                    self.flush()?;
                    if !self.read_or_keepalive(deadline)? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Decodes one buffered frame: `None` when no complete frame is
    /// buffered, `Some(None)` when it is not handed out.
    fn poll_accept(&mut self) -> Result<Option<Option<Queued>>, SessionError> {
        let frame = match self.link.decoder.poll_frame() {
            Ok(None) => return Ok(None),
            Ok(Some(frame)) => frame,
            Err(error) => {
                self.fatal |= error.is_fatal();
                return Err(SessionError::Protocol(error));
            }
        };
        match self.book.accept(frame) {
            Ok(queued) => Ok(Some(queued)),
            Err(error) => {
                self.fatal |= error.closes_connection();
                Err(error)
            }
        }
    }

    /// Waits for bytes until `deadline`, sending keepalives when due:
    /// false once the deadline passed.
    fn read_or_keepalive(&mut self, deadline: Option<Instant>) -> Result<bool, SessionError> {
        if self.link.closed {
            return Err(SessionError::Closed);
        }
        let keepalive_at = self.keepalive_at();
        if keepalive_at.is_some_and(|at| Instant::now() >= at) {
            let request = self.book.take_request();
            self.book.keepalives.insert(request);
            self.link.send(&EchoRef { request, body: &[] })?;
            self.link.flush()?;
            return Ok(true);
        }
        let wake = match (deadline, keepalive_at) {
            (Some(deadline), Some(at)) => Some(deadline.min(at)),
            (deadline, at) => deadline.or(at),
        };
        match self.link.read_more(wake) {
            Ok(true) => Ok(true),
            Ok(false) => Ok(deadline.is_none_or(|deadline| Instant::now() < deadline)),
            Err(error) => Err(session_io(error)),
        }
    }

    /// When the next keepalive is due, if the hub has an idle timeout.
    fn keepalive_at(&self) -> Option<Instant> {
        let idle_ms = self.book.limits.idle_timeout_ms;
        if idle_ms == 0 || self.book.keepalives.len() >= KEEPALIVES_PENDING_MAX {
            return None;
        }
        let every = Duration::from_millis(idle_ms) / KEEPALIVE_PER_IDLE_TIMEOUT;
        self.link.last_write.checked_add(every)
    }

    /// This session's user id, asked of the hub (a round trip).
    pub fn identity(&mut self) -> Result<UserId, SessionError> {
        self.ensure_open()?;
        let request = self.book.take_request();
        self.link.send(&Identity { request })?;
        match self.wait_reply(request)? {
            SessionEvent::IdentityReply { user, .. } => Ok(user),
            _ => Err(SessionError::Unexpected {
                what: "another reply to an identity request",
            }),
        }
    }

    /// One page of other connected users with ids above `after`, at most
    /// `limit` (0: the hub's maximum). Offline durable sessions are not listed.
    pub fn list_page(&mut self, after: UserId, limit: u32) -> Result<ListPage, SessionError> {
        self.ensure_open()?;
        let request = self.book.take_request();
        self.link.send(&List {
            request,
            after,
            limit,
        })?;
        match self.wait_reply(request)? {
            SessionEvent::ListReply { users, more, .. } => Ok(ListPage { users, more }),
            _ => Err(SessionError::Unexpected {
                what: "another reply to a list request",
            }),
        }
    }

    /// Every other connected user, ascending, paging through the hub's list
    /// (at most [`LIST_ALL_USERS_MAX`] ids).
    pub fn list_all(&mut self) -> Result<Vec<UserId>, SessionError> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = self.list_page(after, 0)?;
            let advanced = page.users.first().is_none_or(|&first| first > after);
            if !advanced || (page.more && page.users.is_empty()) {
                return Err(SessionError::Unexpected {
                    what: "a list page that does not advance",
                });
            }
            all.extend_from_slice(&page.users);
            if all.len() > LIST_ALL_USERS_MAX {
                return Err(SessionError::LimitExceeded {
                    limit: ClientLimit::ListedUsers,
                    value: all.len(),
                    max: LIST_ALL_USERS_MAX,
                });
            }
            match (page.more, page.users.last()) {
                (true, Some(&last)) => after = last,
                _ => return Ok(all),
            }
        }
    }

    /// Sends `body` to the hub and returns what comes back.
    pub fn echo(&mut self, body: &[u8]) -> Result<Bytes, SessionError> {
        self.ensure_open()?;
        self.book.check_body(body.len())?;
        let request = self.book.take_request();
        self.link.send(&EchoRef { request, body })?;
        match self.wait_reply(request)? {
            SessionEvent::EchoReply { body, .. } => Ok(body),
            _ => Err(SessionError::Unexpected {
                what: "another reply to an echo request",
            }),
        }
    }

    fn wait_reply(&mut self, request: RequestId) -> Result<SessionEvent, SessionError> {
        let timeout = self.config.request_timeout;
        let deadline = Instant::now().checked_add(timeout);
        match self.wait_for(deadline, |event| event.request() == Some(request))? {
            Some(SessionEvent::Error(error)) => Err(SessionError::Hub(error)),
            Some(reply) => Ok(reply),
            None => Err(SessionError::Timeout { waited: timeout }),
        }
    }

    fn ensure_open(&self) -> Result<(), SessionError> {
        if self.is_closed() {
            return Err(SessionError::Closed);
        }
        Ok(())
    }
}
