//! [`Receiver`]: the read half of a connection. It owns the socket's read
//! side, the incremental decoder and the queue of events that arrived while
//! a blocking call waited for its reply.

use std::{
    collections::VecDeque,
    io::{self, Read},
    net::TcpStream,
    time::{Duration, Instant},
};

use relayhub_protocol::{ClientSide, Decoder, HubFrame, READ_CHUNK_BYTES};

use crate::{
    error::{from_io, ClientError},
    event::{Event, HubError, RequestId},
    limits::Limits,
};

/// Shortest socket read timeout; a zero timeout means "block" to the OS, so
/// a poll with no time left still waits this long.
const READ_TIMEOUT_MIN: Duration = Duration::from_micros(1);

/// The read half of a connection: yields [`Event`]s in arrival order.
///
/// Obtained from [`Client::split`](crate::Client::split), typically to read
/// on one thread while another sends. It first returns any events the
/// `Client` had queued, so splitting loses nothing.
pub struct Receiver {
    stream: TcpStream,
    decoder: Decoder<ClientSide>,
    /// The read timeout last set on the socket, to skip redundant syscalls.
    read_timeout: Option<Duration>,
    /// Events that arrived while a call waited for its reply, oldest first.
    pending: VecDeque<Event>,
    /// Sum of `payload_bytes` over `pending`.
    pending_bytes: usize,
    pending_events_max: usize,
    pending_bytes_max: usize,
    /// The hub closed the connection or broke the protocol: no more reads.
    closed: bool,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("stream", &self.stream)
            .field("buffered_bytes", &self.decoder.buffered_len())
            .field("pending_events", &self.pending.len())
            .field("pending_bytes", &self.pending_bytes)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    pub(crate) fn new(
        stream: TcpStream,
        pending_events_max: usize,
        pending_bytes_max: usize,
    ) -> Receiver {
        Receiver {
            stream,
            decoder: Decoder::new(),
            read_timeout: None,
            pending: VecDeque::new(),
            pending_bytes: 0,
            pending_events_max,
            pending_bytes_max,
            closed: false,
        }
    }

    /// The next event, waiting at most `timeout`; `Ok(None)` when none
    /// arrived in time. Queued events come first, oldest first.
    ///
    /// Fails with [`ClientError::Hub`] when the hub sends an error that
    /// closes the connection, then with [`ClientError::Closed`].
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Event>, ClientError> {
        if let Some(event) = self.pop_pending() {
            return Ok(Some(event));
        }
        let deadline = Instant::now().checked_add(timeout);
        self.read_event(deadline)
    }

    /// The next event, waiting as long as it takes.
    pub fn recv(&mut self) -> Result<Event, ClientError> {
        if let Some(event) = self.pop_pending() {
            return Ok(event);
        }
        loop {
            if let Some(event) = self.read_event(None)? {
                return Ok(event);
            }
        }
    }

    /// Events queued (received but not yet returned).
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// True once the hub closed the connection or broke the protocol.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Reads until the reply to `request` arrives and returns it, queueing
    /// everything else. An error about `request` is the reply:
    /// [`ClientError::Hub`].
    pub(crate) fn wait_reply(
        &mut self,
        request: RequestId,
        timeout: Duration,
    ) -> Result<Event, ClientError> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if self.pending_full() {
                return Err(ClientError::QueueFull {
                    events: self.pending.len(),
                    bytes: self.pending_bytes,
                });
            }
            let Some(event) = self.read_event(deadline)? else {
                return Err(ClientError::Timeout { waited: timeout });
            };
            if event.request() != Some(request) {
                self.push_pending(event);
                continue;
            }
            return match event {
                Event::HubError(error) => Err(ClientError::Hub(error)),
                reply => Ok(reply),
            };
        }
    }

    /// Reads the hub's preface and its `Welcome`: this connection's user id
    /// and limits. An `Error` first (say, the hub is full) is the answer.
    pub(crate) fn read_welcome(&mut self, timeout: Duration) -> Result<(u64, Limits), ClientError> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            match self.decoder.poll_frame() {
                Ok(Some(HubFrame::Welcome(welcome))) => {
                    return Ok((welcome.user.to_native(), Limits::from_welcome(welcome)))
                }
                Ok(Some(HubFrame::Error(error))) => {
                    self.closed = true;
                    let error = HubError::from_wire(
                        error.code.to_native(),
                        error.request.to_native(),
                        error.detail.to_native(),
                    )?;
                    return Err(ClientError::Hub(error));
                }
                Ok(Some(_)) => {
                    self.closed = true;
                    return Err(ClientError::Unexpected {
                        what: "a frame before its Welcome",
                    });
                }
                Ok(None) => {}
                Err(error) => {
                    self.closed = true;
                    return Err(ClientError::Protocol(error));
                }
            }
            if !self.read_more(deadline)? {
                return Err(ClientError::Timeout { waited: timeout });
            }
        }
    }

    /// The next event from the wire (not the queue); `Ok(None)` once
    /// `deadline` passes with none complete. `None` deadline: wait forever.
    fn read_event(&mut self, deadline: Option<Instant>) -> Result<Option<Event>, ClientError> {
        if self.closed {
            return Err(ClientError::Closed);
        }
        loop {
            if let Some(event) = self.poll_buffered()? {
                return Ok(Some(event));
            }
            if !self.read_more(deadline)? {
                return Ok(None);
            }
        }
    }

    /// Decodes one buffered frame, if complete. Errors that end the
    /// connection mark it closed.
    fn poll_buffered(&mut self) -> Result<Option<Event>, ClientError> {
        let result = match self.decoder.poll_frame() {
            Ok(None) => return Ok(None),
            Ok(Some(frame)) => Event::from_frame(frame),
            Err(error) => Err(ClientError::Protocol(error)),
        };
        if let Err(error) = &result {
            self.closed |= error.closes_connection();
        }
        result.map(Some)
    }

    /// One read from the socket into the decoder. False when `deadline`
    /// passed with nothing read.
    fn read_more(&mut self, deadline: Option<Instant>) -> Result<bool, ClientError> {
        let timeout = |deadline: Option<Instant>| {
            deadline.map(|deadline| {
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(READ_TIMEOUT_MIN)
            })
        };
        self.set_read_timeout(timeout(deadline))?;
        // A large frame grew the buffer; give it back once it is consumed.
        if self.decoder.buffered_len() == 0 && self.decoder.capacity() > 4 * READ_CHUNK_BYTES {
            self.decoder.release_idle();
        }
        loop {
            match self.stream.read(self.decoder.spare()) {
                Ok(0) => {
                    self.closed = true;
                    return Err(ClientError::Closed);
                }
                Ok(len) => {
                    self.decoder.commit(len);
                    return Ok(true);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    // The socket's timer may fire a little before the
                    // deadline by this clock: wait out the rest.
                    if deadline.is_some_and(|deadline| Instant::now() < deadline) {
                        self.set_read_timeout(timeout(deadline))?;
                        continue;
                    }
                    return Ok(false);
                }
                Err(error) => {
                    self.closed = true;
                    return Err(from_io(error));
                }
            }
        }
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ClientError> {
        if self.read_timeout != timeout {
            self.stream.set_read_timeout(timeout).map_err(from_io)?;
            self.read_timeout = timeout;
        }
        Ok(())
    }

    fn pending_full(&self) -> bool {
        self.pending.len() >= self.pending_events_max
            || self.pending_bytes >= self.pending_bytes_max
    }

    fn push_pending(&mut self, event: Event) {
        self.pending_bytes += event.payload_bytes();
        self.pending.push_back(event);
    }

    fn pop_pending(&mut self) -> Option<Event> {
        let event = self.pending.pop_front()?;
        self.pending_bytes -= event.payload_bytes();
        Some(event)
    }
}
