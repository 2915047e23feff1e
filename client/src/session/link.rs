//! One version-2 connection: the socket, the decoder, the write buffer, and
//! the handshake (preface + `Hello` out, preface + `WelcomeV2` in).

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use bytes::BytesMut;
use relayhub_protocol::{
    encode, preface_for, ClientSideV2, DecodeError, Decoder, ErrorCodeV2, Hello, HubFrameV2,
    HubMessageV2, Limits, Message, ResumeToken, READ_CHUNK_BYTES, VERSION_2,
};

use crate::{
    config::ClientConfig,
    event::UserId,
    session::error::{is_disconnect, session_io, ConnectError, HubErrorV2, SessionError},
};

/// Shortest socket read timeout; a zero timeout means "block" to the OS.
const READ_TIMEOUT_MIN: Duration = Duration::from_micros(1);

/// What the hub's `WelcomeV2` said. (No `Debug`: it holds the token.)
#[derive(Clone, Copy)]
pub(crate) struct Welcomed {
    pub user: UserId,
    pub token: ResumeToken,
    pub resumed: bool,
    pub durable: bool,
    pub limits: Limits,
}

/// One connection.
pub(crate) struct Link {
    stream: TcpStream,
    peer: SocketAddr,
    pub decoder: Decoder<ClientSideV2>,
    out: BytesMut,
    flush_at_bytes: usize,
    read_timeout: Option<Duration>,
    /// When the last frame went out (keepalives count from it).
    pub last_write: Instant,
    /// No more reads or writes: the hub closed, a write failed, or the
    /// stream broke the protocol.
    pub closed: bool,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("peer", &self.peer)
            .field("buffered_bytes", &self.decoder.buffered_len())
            .field("unwritten_bytes", &self.out.len())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Connects to the first of `addrs` that accepts, sends the version-2
    /// preface and `hello` in one write, and reads the hub's preface and
    /// `WelcomeV2`. Frames the hub sent right after it (redeliveries) stay
    /// buffered in the decoder.
    pub fn open(
        addrs: &[SocketAddr],
        config: &ClientConfig,
        hello: &Hello,
    ) -> Result<(Link, Welcomed), ConnectError> {
        let stream = connect_tcp(addrs, config.connect_timeout)?;
        let peer = stream.peer_addr().map_err(|source| ConnectError::Io {
            addr: addrs[0],
            source,
        })?;
        let io_error = |source: io::Error| {
            if is_disconnect(&source) {
                ConnectError::Closed { addr: peer }
            } else {
                ConnectError::Io { addr: peer, source }
            }
        };
        stream.set_nodelay(true).map_err(io_error)?;
        stream
            .set_write_timeout(config.write_timeout)
            .map_err(io_error)?;
        let mut link = Link {
            stream,
            peer,
            decoder: Decoder::expecting(VERSION_2),
            out: BytesMut::new(),
            flush_at_bytes: config.write_buffer_bytes,
            read_timeout: None,
            last_write: Instant::now(),
            closed: false,
        };
        link.out.extend_from_slice(&preface_for(VERSION_2));
        encode(hello, &mut link.out).expect("a Hello always encodes");
        link.flush().map_err(|error| match error {
            SessionError::Io(source) => io_error(source),
            _ => ConnectError::Closed { addr: peer },
        })?;
        let welcomed = link.read_welcome(hello, config.request_timeout)?;
        Ok((link, welcomed))
    }

    fn read_welcome(&mut self, hello: &Hello, timeout: Duration) -> Result<Welcomed, ConnectError> {
        let addr = self.peer;
        let deadline = Instant::now().checked_add(timeout);
        loop {
            match self.decoder.poll_frame() {
                Ok(Some(frame @ HubFrameV2::WelcomeV2(_))) => {
                    let HubMessageV2::WelcomeV2(welcome) = frame.to_owned() else {
                        unreachable!("a WelcomeV2 frame owns into a WelcomeV2")
                    };
                    if welcome.request != hello.request {
                        self.closed = true;
                        return Err(ConnectError::Unexpected {
                            what: "a WelcomeV2 for another request",
                        });
                    }
                    return Ok(Welcomed {
                        user: welcome.user,
                        token: welcome.token,
                        resumed: welcome.resumed,
                        durable: welcome.durable,
                        limits: welcome.limits,
                    });
                }
                Ok(Some(HubFrameV2::Error(error))) => {
                    self.closed = true;
                    let (code, request, detail) = (
                        error.code.to_native(),
                        error.request.to_native(),
                        error.detail.to_native(),
                    );
                    return Err(match HubErrorV2::from_wire(code, request, detail) {
                        Ok(error) if error.code == ErrorCodeV2::ResumeRejected => {
                            ConnectError::ResumeRejected {
                                user: hello.resume_user,
                            }
                        }
                        Ok(error) => ConnectError::Refused(error),
                        Err(_) => ConnectError::UnknownErrorCode { code, detail },
                    });
                }
                Ok(Some(_)) => {
                    self.closed = true;
                    return Err(ConnectError::Unexpected {
                        what: "a frame before its WelcomeV2",
                    });
                }
                Ok(None) => {}
                Err(error) => {
                    self.closed = true;
                    return Err(match error {
                        DecodeError::BadPreface { .. } => ConnectError::NotAHub { addr },
                        DecodeError::UnsupportedVersion { version } => {
                            ConnectError::UnsupportedVersion {
                                addr,
                                hub_version: version,
                            }
                        }
                        other => ConnectError::Protocol(other),
                    });
                }
            }
            match self.read_more(deadline) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(ConnectError::Timeout {
                        addr,
                        waited: timeout,
                    })
                }
                Err(source) if is_disconnect(&source) => return Err(ConnectError::Closed { addr }),
                Err(source) => return Err(ConnectError::Io { addr, source }),
            }
        }
    }

    /// The hub's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Encodes `message` into the write buffer; writes the buffer once it
    /// holds `write_buffer_bytes`.
    pub fn send<M: Message>(&mut self, message: &M) -> Result<(), SessionError> {
        if self.closed {
            return Err(SessionError::Closed);
        }
        encode(message, &mut self.out)?;
        if self.out.len() >= self.flush_at_bytes {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes everything buffered. On failure the connection is closed
    /// (part of a frame may be out).
    pub fn flush(&mut self) -> Result<(), SessionError> {
        if self.out.is_empty() {
            return Ok(());
        }
        if self.closed {
            return Err(SessionError::Closed);
        }
        let result = self.stream.write_all(&self.out);
        self.out.clear();
        if self.out.capacity() > 2 * self.flush_at_bytes {
            self.out = BytesMut::new();
        }
        self.last_write = Instant::now();
        result.map_err(|error| {
            self.closed = true;
            session_io(error)
        })
    }

    /// Shuts down the sending direction (after a flush).
    pub fn finish(&mut self) -> Result<(), SessionError> {
        self.flush()?;
        if self.closed {
            return Ok(());
        }
        self.stream
            .shutdown(std::net::Shutdown::Write)
            .map_err(session_io)
    }

    /// One read from the socket into the decoder: `Ok(true)` when bytes
    /// came, `Ok(false)` when `deadline` passed first (`None`: no deadline).
    /// End of stream is an `UnexpectedEof` error. Errors close the link.
    pub fn read_more(&mut self, deadline: Option<Instant>) -> io::Result<bool> {
        let timeout = deadline.map(|deadline| {
            deadline
                .saturating_duration_since(Instant::now())
                .max(READ_TIMEOUT_MIN)
        });
        if self.read_timeout != timeout {
            self.stream.set_read_timeout(timeout)?;
            self.read_timeout = timeout;
        }
        if self.decoder.buffered_len() == 0 && self.decoder.capacity() > 4 * READ_CHUNK_BYTES {
            self.decoder.release_idle();
        }
        loop {
            match self.stream.read(self.decoder.spare()) {
                Ok(0) => {
                    self.closed = true;
                    return Err(io::ErrorKind::UnexpectedEof.into());
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
                    return Ok(false)
                }
                Err(error) => {
                    self.closed = true;
                    return Err(error);
                }
            }
        }
    }
}

/// Connects to the first address that accepts.
fn connect_tcp(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, ConnectError> {
    let mut last_error = None;
    for &addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => return Ok(stream),
            Err(source) => last_error = Some(ConnectError::Connect { addr, source }),
        }
    }
    Err(last_error.unwrap_or_else(|| ConnectError::Resolve {
        source: io::Error::new(io::ErrorKind::NotFound, "it resolved to no address"),
    }))
}
