//! A scripted fake version-2 hub: accepts connections on an ephemeral
//! loopback port and lets a test script speak the hub's side of protocol
//! version 2 with relayhub-protocol (`HubSideV2` decoder, v2 encoders).

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    thread::{self, JoinHandle},
    time::Duration,
};

use bytes::BytesMut;
use relayhub_protocol::{
    encode, encode_deliver_v2, flags, hub_preface, Ack, ClientMessageV2, Decoder, DeliverV2Meta,
    Error, ErrorCodeV2, Hello, HubSideV2, Limits, Message, Receipt, RelayV2, ResumeToken, Stored,
    WelcomeV2, VERSION_2,
};

use super::FAKE_HUB_READ_TIMEOUT;

/// The listener, for scripts that accept several connections (reconnects).
pub struct FakeHubV2 {
    pub listener: TcpListener,
}

impl FakeHubV2 {
    /// The next connection.
    pub fn accept(&self) -> HubConnV2 {
        let (stream, _) = self.listener.accept().unwrap();
        HubConnV2::new(stream)
    }
}

/// Runs `script` in a thread with a listener on an ephemeral port. Join
/// the handle at the end of the test so that the script's assertions count.
pub fn scripted_v2(
    script: impl FnOnce(FakeHubV2) + Send + 'static,
) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || script(FakeHubV2 { listener }));
    (addr, handle)
}

/// Like [`scripted_v2`] for a single connection.
pub fn scripted_one(
    script: impl FnOnce(HubConnV2) + Send + 'static,
) -> (SocketAddr, JoinHandle<()>) {
    scripted_v2(move |hub| script(hub.accept()))
}

/// A token whose bytes are all `byte` (never all zero for `byte` != 0).
pub fn token(byte: u8) -> ResumeToken {
    [byte; 16]
}

/// The limits a fake hub announces: the protocol bounds, no idle timeout
/// (so no keepalives), a window of 1024 entries.
pub fn limits() -> Limits {
    Limits {
        inflight_messages_max: 1024,
        dedup_window_ms: u64::MAX,
        ..Limits::with_protocol_bounds()
    }
}

/// One accepted connection, driven by a test script.
pub struct HubConnV2 {
    pub stream: TcpStream,
    decoder: Decoder<HubSideV2>,
    out: BytesMut,
}

impl HubConnV2 {
    fn new(stream: TcpStream) -> HubConnV2 {
        stream
            .set_read_timeout(Some(FAKE_HUB_READ_TIMEOUT))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        HubConnV2 {
            stream,
            decoder: Decoder::new(),
            out: BytesMut::new(),
        }
    }

    /// The next frame from the client, owned. Panics on timeout or EOF.
    pub fn recv(&mut self) -> ClientMessageV2 {
        self.try_recv().expect("the client sent a frame")
    }

    /// The next frame, `None` at end of stream (or a reset).
    pub fn try_recv(&mut self) -> Option<ClientMessageV2> {
        self.try_recv_within(FAKE_HUB_READ_TIMEOUT)
            .expect("the client wrote in time")
    }

    /// The next frame within `wait`: `Err(())` on timeout, `Ok(None)` at end
    /// of stream.
    pub fn try_recv_within(&mut self, wait: Duration) -> Result<Option<ClientMessageV2>, ()> {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        loop {
            if let Some(frame) = self.decoder.poll_frame().expect("a valid client frame") {
                let frame = frame.to_owned();
                assert_eq!(self.decoder.version(), Some(VERSION_2), "a v2 preface");
                return Ok(Some(frame));
            }
            match self.stream.read(self.decoder.spare()) {
                Ok(0) => return Ok(None),
                Ok(len) => self.decoder.commit(len),
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(())
                }
                Err(_) => return Ok(None),
            }
        }
    }

    /// Asserts that the client sends nothing within `wait`.
    pub fn expect_silence(&mut self, wait: Duration) {
        if let Ok(frame) = self.try_recv_within(wait) {
            panic!("expected silence, got {frame:?}");
        }
    }

    /// Reads the client's `Hello`.
    pub fn hello(&mut self) -> Hello {
        match self.recv() {
            ClientMessageV2::Hello(hello) => hello,
            other => panic!("expected Hello, got {other:?}"),
        }
    }

    /// Reads a `RelayV2`.
    pub fn relay(&mut self) -> RelayV2 {
        match self.recv() {
            ClientMessageV2::RelayV2(relay) => relay,
            other => panic!("expected RelayV2, got {other:?}"),
        }
    }

    /// Reads an `Ack`; returns its `upto`.
    pub fn ack(&mut self) -> u64 {
        match self.recv() {
            ClientMessageV2::Ack(Ack { upto }) => upto,
            other => panic!("expected Ack, got {other:?}"),
        }
    }

    /// Queues a message (written by [`flush`](Self::flush) or the next
    /// `*_now` call).
    pub fn queue<M: Message>(&mut self, message: &M) -> &mut Self {
        encode(message, &mut self.out).unwrap();
        self
    }

    /// Writes everything queued, in one write.
    pub fn flush(&mut self) {
        let out = std::mem::take(&mut self.out);
        self.stream.write_all(&out).unwrap();
    }

    /// Sends the version-2 preface and a `WelcomeV2` answering `hello`.
    pub fn welcome(&mut self, hello: &Hello, user: u64, token: ResumeToken, resumed: bool) {
        self.welcome_with(WelcomeV2 {
            request: hello.request,
            user,
            token,
            limits: limits(),
            resumed,
            durable: true,
        });
    }

    /// Sends the version-2 preface and `welcome`.
    pub fn welcome_with(&mut self, welcome: WelcomeV2) {
        self.out.extend_from_slice(&hub_preface(Some(VERSION_2)));
        self.queue(&welcome).flush();
    }

    /// Sends the version-2 preface and a closing `Error` instead of a
    /// `WelcomeV2`.
    pub fn refuse(&mut self, code: ErrorCodeV2, request: u64, detail: u64) {
        self.out.extend_from_slice(&hub_preface(Some(VERSION_2)));
        self.error(code, request, detail).flush();
    }

    /// Reads the `Hello` of a new durable session and welcomes it.
    pub fn accept_new(&mut self, user: u64, token: ResumeToken) -> Hello {
        let hello = self.hello();
        assert_eq!(hello, Hello::new_session(hello.request, true));
        self.welcome(&hello, user, token, false);
        hello
    }

    /// Reads a resume `Hello` for `user` with `expected` and welcomes it with
    /// the new token `next`.
    pub fn accept_resume(&mut self, user: u64, expected: ResumeToken, next: ResumeToken) -> Hello {
        let hello = self.hello();
        assert_eq!(hello, Hello::resume(hello.request, user, expected));
        self.welcome(&hello, user, next, true);
        hello
    }

    /// Queues a `DeliverV2`.
    pub fn deliver(
        &mut self,
        from: u64,
        seq: u64,
        message_id: u64,
        body: &[u8],
        redelivery: bool,
    ) -> &mut Self {
        let meta = DeliverV2Meta {
            from,
            seq,
            message_id,
            flags: if redelivery { flags::REDELIVERY } else { 0 },
        };
        self.out
            .extend_from_slice(&encode_deliver_v2(meta, body).unwrap());
        self
    }

    /// Queues a `Stored`.
    pub fn stored(&mut self, request: u64, message_id: u64, duplicate: bool) -> &mut Self {
        self.queue(&Stored {
            request,
            message_id,
            duplicate,
        })
    }

    /// Queues a `Receipt`.
    pub fn receipt(&mut self, message_id: u64, receiver: u64, seq: u64) -> &mut Self {
        self.queue(&Receipt {
            message_id,
            receiver,
            seq,
            flags: 0,
        })
    }

    /// Queues an `Error`.
    pub fn error(&mut self, code: ErrorCodeV2, request: u64, detail: u64) -> &mut Self {
        self.queue(&Error::new_v2(code, request, detail))
    }

    /// Closes both directions.
    pub fn close(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}
