//! [`Client`]: one connection to the hub, with blocking request/reply calls
//! on top of a [`Sender`] and a [`Receiver`].

use std::{
    io::Write,
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    time::Duration,
};

use bytes::Bytes;
use relayhub_protocol::PREFACE;

use crate::{
    config::ClientConfig,
    error::{from_io, ClientError, ClientLimit},
    event::{Event, RequestId, UserId},
    limits::{check, Limits, LIST_ALL_USERS_MAX},
    receiver::Receiver,
    sender::Sender,
};

/// One page of [`Client::list_page`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListPage {
    /// Ascending ids of other connected users.
    pub users: Vec<UserId>,
    /// More ids follow: ask for the next page with `after` = the last id.
    pub more: bool,
}

/// A connection to a relayhub hub.
///
/// Calls that expect a reply ([`identity`](Self::identity),
/// [`list_page`](Self::list_page), [`echo`](Self::echo)) block until it
/// arrives or [`ClientConfig::request_timeout`] passes. Deliveries and
/// asynchronous errors that arrive meanwhile are queued and returned, in
/// arrival order, by [`recv_timeout`](Self::recv_timeout): nothing is lost.
///
/// ```no_run
/// use std::time::Duration;
/// use relayhub_client::{Client, Event};
///
/// let mut alice = Client::connect("127.0.0.1:7878")?;
/// let mut bob = Client::connect("127.0.0.1:7878")?;
/// alice.relay(&[bob.user_id()], b"hello")?;
/// match bob.recv_timeout(Duration::from_secs(1))? {
///     Some(Event::Deliver { from, body }) => {
///         assert_eq!(from, alice.user_id());
///         assert_eq!(&body[..], b"hello");
///     }
///     other => panic!("expected a delivery, got {other:?}"),
/// }
/// # Ok::<(), relayhub_client::ClientError>(())
/// ```
#[derive(Debug)]
pub struct Client {
    sender: Sender,
    receiver: Receiver,
    user: UserId,
    peer: SocketAddr,
    request_timeout: Duration,
}

impl Client {
    /// Connects with the default [`ClientConfig`]: sends the preface and
    /// waits for the hub's preface and `Welcome`.
    ///
    /// Fails with [`ClientError::Connect`] when nothing listens there
    /// ("connection refused: is the hub running on ...?"), and with
    /// [`ClientError::Handshake`] when the peer is not a relayhub hub.
    pub fn connect(addr: impl ToSocketAddrs) -> Result<Client, ClientError> {
        Client::connect_with(addr, &ClientConfig::default())
    }

    /// Connects to one address, waiting at most `timeout` for TCP to connect
    /// (and the default request timeout for the handshake).
    pub fn connect_timeout(addr: &SocketAddr, timeout: Duration) -> Result<Client, ClientError> {
        let config = ClientConfig {
            connect_timeout: timeout,
            ..ClientConfig::default()
        };
        Client::connect_with(addr, &config)
    }

    /// Connects with `config`, trying each address `addr` resolves to until
    /// one accepts.
    pub fn connect_with(
        addr: impl ToSocketAddrs,
        config: &ClientConfig,
    ) -> Result<Client, ClientError> {
        let stream = connect_tcp(addr, config)?;
        let peer = stream.peer_addr().map_err(ClientError::Io)?;
        Client::handshake(stream, peer, config).map_err(|source| ClientError::Handshake {
            addr: peer,
            source: Box::new(source),
        })
    }

    fn handshake(
        mut stream: TcpStream,
        peer: SocketAddr,
        config: &ClientConfig,
    ) -> Result<Client, ClientError> {
        stream.set_nodelay(true).map_err(ClientError::Io)?;
        stream
            .set_write_timeout(config.write_timeout)
            .map_err(ClientError::Io)?;
        stream.write_all(&PREFACE).map_err(from_io)?;
        let read_half = stream.try_clone().map_err(ClientError::Io)?;
        let mut receiver = Receiver::new(
            read_half,
            config.pending_events_max,
            config.pending_bytes_max,
        );
        let (user, limits) = receiver.read_welcome(config.request_timeout)?;
        Ok(Client {
            sender: Sender::new(stream, limits, config.write_buffer_bytes),
            receiver,
            user,
            peer,
            request_timeout: config.request_timeout,
        })
    }

    /// This connection's user id, from the hub's `Welcome`.
    pub fn user_id(&self) -> UserId {
        self.user
    }

    /// The limits the hub announced (capped at the protocol's).
    pub fn limits(&self) -> Limits {
        self.sender.limits()
    }

    /// The hub's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Changes how long reply-waiting calls wait.
    pub fn set_request_timeout(&mut self, timeout: Duration) {
        self.request_timeout = timeout;
    }

    /// Asks the hub for this connection's user id (a round trip; the same as
    /// [`user_id`](Self::user_id) on a correct hub).
    pub fn identity(&mut self) -> Result<UserId, ClientError> {
        let request = self.sender.send_identity()?;
        match self.wait_reply(request)? {
            Event::IdentityReply { user, .. } => Ok(user),
            _ => Err(ClientError::Unexpected {
                what: "another reply to an identity request",
            }),
        }
    }

    /// One page of other connected users with ids above `after`, at most
    /// `limit` of them (0: the hub's maximum).
    pub fn list_page(&mut self, after: UserId, limit: u32) -> Result<ListPage, ClientError> {
        let request = self.sender.send_list(after, limit)?;
        match self.wait_reply(request)? {
            Event::ListReply { users, more, .. } => Ok(ListPage { users, more }),
            _ => Err(ClientError::Unexpected {
                what: "another reply to a list request",
            }),
        }
    }

    /// Every other connected user, ascending, paging through the hub's list.
    ///
    /// The list is not a snapshot: users who connect or leave while it pages
    /// may or may not appear. Fails past [`LIST_ALL_USERS_MAX`] ids, or with
    /// [`ClientError::Unexpected`] if a page does not advance.
    pub fn list_all(&mut self) -> Result<Vec<UserId>, ClientError> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = self.list_page(after, 0)?;
            let advanced = page.users.first().is_none_or(|&first| first > after);
            if !advanced || (page.more && page.users.is_empty()) {
                return Err(ClientError::Unexpected {
                    what: "a list page that does not advance",
                });
            }
            all.extend_from_slice(&page.users);
            check(ClientLimit::ListedUsers, all.len(), LIST_ALL_USERS_MAX)?;
            match (page.more, page.users.last()) {
                (true, Some(&last)) => after = last,
                _ => return Ok(all),
            }
        }
    }

    /// Sends `body` to the hub and returns what comes back.
    pub fn echo(&mut self, body: &[u8]) -> Result<Bytes, ClientError> {
        let request = self.sender.send_echo(body)?;
        match self.wait_reply(request)? {
            Event::EchoReply { body, .. } => Ok(body),
            _ => Err(ClientError::Unexpected {
                what: "another reply to an echo request",
            }),
        }
    }

    /// Relays `body` to `receivers` and flushes; returns the request id.
    ///
    /// The hub does not reply to a relay; each receiver that is not
    /// connected comes back later through [`recv_timeout`](Self::recv_timeout)
    /// as an [`Event::HubError`] with code `UnknownReceiver`, this request id
    /// and the receiver in `detail`. Over-limit relays are refused here with
    /// [`ClientError::LimitExceeded`] and not sent.
    pub fn relay(&mut self, receivers: &[UserId], body: &[u8]) -> Result<RequestId, ClientError> {
        let request = self.send_relay(receivers, body)?;
        self.flush()?;
        Ok(request)
    }

    /// Like [`relay`](Self::relay) without the client-side limit checks, so
    /// tests can see the hub refuse (`TooManyReceivers`, `BodyTooLarge`).
    pub fn relay_unchecked(
        &mut self,
        receivers: &[UserId],
        body: &[u8],
    ) -> Result<RequestId, ClientError> {
        self.ensure_open()?;
        let request = self.sender.send_relay_unchecked(receivers, body)?;
        self.flush()?;
        Ok(request)
    }

    /// Buffers a relay without flushing (see [`Sender::send_relay`]); call
    /// [`flush`](Self::flush) after the last one.
    ///
    /// ```no_run
    /// # let mut client = relayhub_client::Client::connect("127.0.0.1:7878")?;
    /// for index in 0..10_000u32 {
    ///     client.send_relay(&[2], &index.to_le_bytes())?;
    /// }
    /// client.flush()?;
    /// # Ok::<(), relayhub_client::ClientError>(())
    /// ```
    pub fn send_relay(
        &mut self,
        receivers: &[UserId],
        body: &[u8],
    ) -> Result<RequestId, ClientError> {
        self.ensure_open()?;
        self.sender.send_relay(receivers, body)
    }

    /// Writes raw bytes (garbage, truncated frames) and flushes; see
    /// [`Sender::send_raw`].
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.ensure_open()?;
        self.sender.send_raw(bytes)
    }

    /// Writes everything buffered by `send_relay`.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        self.sender.flush()
    }

    /// The next event (delivery, asynchronous error, unclaimed reply),
    /// waiting at most `timeout`; `Ok(None)` when none arrived in time.
    /// Queued events come first. Does not flush.
    ///
    /// Fails with [`ClientError::Hub`] when the hub sends an error that closes
    /// the connection, with [`ClientError::Closed`] after that.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Event>, ClientError> {
        self.receiver.recv_timeout(timeout)
    }

    /// Events received and queued, not yet returned by `recv_timeout`.
    pub fn pending_events(&self) -> usize {
        self.receiver.pending_len()
    }

    /// Splits the connection into a [`Sender`] and a [`Receiver`] that can
    /// live on different threads (e.g. one printing deliveries as they
    /// arrive while the other sends). Queued events stay with the
    /// `Receiver`; buffered bytes stay with the `Sender`.
    ///
    /// ```no_run
    /// use std::{thread, time::Duration};
    /// use relayhub_client::Client;
    ///
    /// let client = Client::connect("127.0.0.1:7878")?;
    /// let (mut sender, mut receiver) = client.split();
    /// let reader = thread::spawn(move || {
    ///     while let Ok(event) = receiver.recv() {
    ///         println!("{event:?}");
    ///     }
    /// });
    /// sender.send_relay(&[2, 3], b"hello")?;
    /// sender.flush()?;
    /// # drop(reader);
    /// # Ok::<(), relayhub_client::ClientError>(())
    /// ```
    pub fn split(self) -> (Sender, Receiver) {
        (self.sender, self.receiver)
    }

    fn wait_reply(&mut self, request: RequestId) -> Result<Event, ClientError> {
        self.flush()?;
        self.receiver.wait_reply(request, self.request_timeout)
    }

    fn ensure_open(&self) -> Result<(), ClientError> {
        if self.receiver.is_closed() {
            return Err(ClientError::Closed);
        }
        Ok(())
    }
}

/// Resolves `addr` and connects to the first address that accepts.
fn connect_tcp(addr: impl ToSocketAddrs, config: &ClientConfig) -> Result<TcpStream, ClientError> {
    let addrs = addr
        .to_socket_addrs()
        .map_err(|source| ClientError::Resolve { source })?;
    let mut last_error = None;
    for candidate in addrs {
        match TcpStream::connect_timeout(&candidate, config.connect_timeout) {
            Ok(stream) => return Ok(stream),
            Err(source) => {
                last_error = Some(ClientError::Connect {
                    addr: candidate,
                    source,
                })
            }
        }
    }
    Err(last_error.unwrap_or_else(|| ClientError::Resolve {
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "it resolved to no address"),
    }))
}
