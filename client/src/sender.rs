//! [`Sender`]: the write half of a connection. It numbers requests, encodes
//! them into one buffer and writes that buffer when it grows past a bound or
//! on [`flush`](Sender::flush); it never reads.

use std::{io::Write, net::TcpStream};

use bytes::BytesMut;
use relayhub_protocol::{encode, EchoRef, Identity, List, Message, RelayRef};

use crate::{
    error::{from_io, ClientError},
    event::{RequestId, UserId},
    limits::Limits,
};

/// The write half of a connection: sends requests without waiting for
/// replies (their replies and errors arrive at the [`Receiver`](crate::Receiver)
/// as [`Event`](crate::Event)s, matched by request id).
///
/// `send_*` calls only buffer; they write to the socket once the buffer
/// holds [`ClientConfig::write_buffer_bytes`](crate::ClientConfig::write_buffer_bytes),
/// and [`flush`](Self::flush) writes the rest. This is what lets a test push
/// many relays with few system calls. Dropping a `Sender` does not flush.
#[derive(Debug)]
pub struct Sender {
    stream: TcpStream,
    /// Encoded frames not yet written; at most `flush_at_bytes` plus one frame.
    out: BytesMut,
    /// Written by a `send_*` call once `out` holds this many bytes.
    flush_at_bytes: usize,
    /// The next request id; starts at 1 (0 means "no request" in errors).
    next_request: RequestId,
    limits: Limits,
    /// A write failed, possibly part-way through a frame: the stream is no
    /// longer framed, so nothing more may be sent.
    broken: bool,
}

impl Sender {
    pub(crate) fn new(stream: TcpStream, limits: Limits, flush_at_bytes: usize) -> Sender {
        Sender {
            stream,
            out: BytesMut::new(),
            flush_at_bytes,
            next_request: 1,
            limits,
            broken: false,
        }
    }

    /// The limits the hub announced, which `send_relay` and `send_echo` check.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Bytes buffered and not yet written.
    pub fn buffered_len(&self) -> usize {
        self.out.len()
    }

    /// Buffers a relay of `body` to every id in `receivers` and returns its
    /// request id. Refuses, without sending, more receivers or a longer body
    /// than the hub accepts ([`ClientError::LimitExceeded`]).
    ///
    /// The hub does not reply to a relay that succeeds; each receiver that
    /// is not connected comes back as an [`Event::HubError`](crate::Event::HubError)
    /// with code `UnknownReceiver` and this request id, possibly after other
    /// replies. Call [`flush`](Self::flush) when done sending.
    pub fn send_relay(
        &mut self,
        receivers: &[UserId],
        body: &[u8],
    ) -> Result<RequestId, ClientError> {
        self.limits.check_relay(receivers.len(), body.len())?;
        self.send_relay_unchecked(receivers, body)
    }

    /// Like [`send_relay`](Self::send_relay) without the limit checks, so
    /// that tests can make the hub refuse a relay. Only a frame larger than
    /// the protocol's frame limit is refused ([`ClientError::Encode`]).
    pub fn send_relay_unchecked(
        &mut self,
        receivers: &[UserId],
        body: &[u8],
    ) -> Result<RequestId, ClientError> {
        self.send_with(|request| RelayRef {
            request,
            receivers,
            body,
        })
    }

    /// Buffers an identity request; the reply is an `IdentityReply` event.
    pub fn send_identity(&mut self) -> Result<RequestId, ClientError> {
        self.send_with(|request| Identity { request })
    }

    /// Buffers a request for one page of ids above `after` (at most `limit`;
    /// 0 means the hub's page maximum); the reply is a `ListReply` event.
    pub fn send_list(&mut self, after: UserId, limit: u32) -> Result<RequestId, ClientError> {
        self.send_with(|request| List {
            request,
            after,
            limit,
        })
    }

    /// Buffers an echo of `body`; the reply is an `EchoReply` event.
    pub fn send_echo(&mut self, body: &[u8]) -> Result<RequestId, ClientError> {
        self.limits.check_body(body.len())?;
        self.send_with(|request| EchoRef { request, body })
    }

    /// Writes `bytes` as they are, after anything buffered, and flushes:
    /// for tests that send garbage, truncated frames or huge length
    /// prefixes. The hub will usually answer with an error and close.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.ensure_usable()?;
        self.out.extend_from_slice(bytes);
        self.flush()
    }

    /// Writes everything buffered; returns once the kernel has it.
    ///
    /// On failure the connection is unusable (part of a frame may be out):
    /// later sends fail with [`ClientError::Closed`].
    pub fn flush(&mut self) -> Result<(), ClientError> {
        self.ensure_usable()?;
        let result = self.stream.write_all(&self.out);
        self.out.clear();
        // A 1 MiB relay grew the buffer; do not keep that for an idle client.
        if self.out.capacity() > 2 * self.flush_at_bytes {
            self.out = BytesMut::new();
        }
        result.map_err(|error| {
            self.broken = true;
            from_io(error)
        })
    }

    /// Closes the sending direction after flushing: the hub sees end of
    /// stream once it has read everything sent before.
    pub fn finish(&mut self) -> Result<(), ClientError> {
        self.flush()?;
        self.stream
            .shutdown(std::net::Shutdown::Write)
            .map_err(from_io)
    }

    fn send_with<M: Message>(
        &mut self,
        message: impl FnOnce(RequestId) -> M,
    ) -> Result<RequestId, ClientError> {
        self.ensure_usable()?;
        let request = self.next_request;
        encode(&message(request), &mut self.out)?;
        self.next_request += 1;
        if self.out.len() >= self.flush_at_bytes {
            self.flush()?;
        }
        Ok(request)
    }

    fn ensure_usable(&self) -> Result<(), ClientError> {
        if self.broken {
            return Err(ClientError::Closed);
        }
        Ok(())
    }
}
