//! A minimal blocking version-2 client on a raw socket, for the hub's
//! session and persistence tests.
#![allow(dead_code)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
};

use bytes::BytesMut;
use relayhub_protocol::{
    encode, preface_for, Ack, ClientSideV2, Decoder, Echo, ErrorCodeV2, Hello, HubFrameV2,
    HubMessageV2, RelayV2Ref, ResumeToken, VERSION_2,
};
use relayhub_server::ids::owner;

use super::EVENT_TIMEOUT;

/// A version-2 client on a raw socket.
pub struct RawV2 {
    pub stream: TcpStream,
    pub decoder: Decoder<ClientSideV2>,
    pub user: u64,
    pub token: ResumeToken,
}

impl RawV2 {
    /// Connects, says `hello`, returns the client and the hub's first frame.
    pub fn open(addr: SocketAddr, hello: Hello) -> (RawV2, HubMessageV2) {
        let mut bytes = BytesMut::from(&preface_for(VERSION_2)[..]);
        encode(&hello, &mut bytes).unwrap();
        let mut client = RawV2::sending(addr, &bytes);
        let first = client.next();
        if let HubMessageV2::WelcomeV2(welcome) = &first {
            client.user = welcome.user;
            client.token = welcome.token;
        }
        (client, first)
    }

    /// Connects and writes `bytes` (the version-2 preface, a `Hello`, and
    /// whatever a test pipelines behind it) in one write.
    pub fn sending(addr: SocketAddr, bytes: &[u8]) -> RawV2 {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(EVENT_TIMEOUT)).unwrap();
        stream.write_all(bytes).unwrap();
        RawV2 {
            stream,
            decoder: Decoder::expecting(VERSION_2),
            user: 0,
            token: [0; 16],
        }
    }

    /// A new durable session.
    pub fn durable(addr: SocketAddr) -> RawV2 {
        let (client, first) = RawV2::open(addr, Hello::new_session(1, true));
        assert!(
            matches!(&first, HubMessageV2::WelcomeV2(w) if w.durable && !w.resumed),
            "{first:?}"
        );
        client
    }

    /// Resumes `user`'s session; panics if refused.
    pub fn resume(addr: SocketAddr, user: u64, token: ResumeToken) -> RawV2 {
        let (client, first) = RawV2::open(addr, Hello::resume(2, user, token));
        match first {
            HubMessageV2::WelcomeV2(welcome) => {
                assert!(welcome.resumed);
                assert_eq!(welcome.user, user);
            }
            other => panic!("resume of {user} refused: {other:?}"),
        }
        client
    }

    /// A new ephemeral session.
    pub fn ephemeral(addr: SocketAddr) -> RawV2 {
        let (client, first) = RawV2::open(addr, Hello::new_session(1, false));
        assert!(
            matches!(&first, HubMessageV2::WelcomeV2(w) if !w.durable && !w.resumed),
            "{first:?}"
        );
        client
    }

    /// A new durable session whose id `shard` (of `shards`) owns. Sessions
    /// opened on the way that another shard owns are left offline.
    pub fn durable_on(addr: SocketAddr, shard: usize, shards: usize) -> RawV2 {
        for _ in 0..200 {
            let client = RawV2::durable(addr);
            if owner(client.user, shards) == shard {
                return client;
            }
        }
        panic!("the kernel never gave shard {shard} a connection");
    }

    /// A new ephemeral session whose id `shard` (of `shards`) owns.
    pub fn ephemeral_on(addr: SocketAddr, shard: usize, shards: usize) -> RawV2 {
        for _ in 0..200 {
            let client = RawV2::ephemeral(addr);
            if owner(client.user, shards) == shard {
                return client;
            }
        }
        panic!("the kernel never gave shard {shard} a connection");
    }

    pub fn send<M: relayhub_protocol::Message>(&mut self, message: &M) {
        let mut bytes = BytesMut::new();
        encode(message, &mut bytes).unwrap();
        self.stream.write_all(&bytes).unwrap();
    }

    pub fn relay(&mut self, request: u64, message_id: u64, to: &[u64], body: &[u8]) {
        self.send(&RelayV2Ref {
            request,
            message_id,
            flags: 0,
            receivers: to,
            body,
        });
    }

    /// A cumulative `Ack`.
    pub fn ack(&mut self, upto: u64) {
        self.send(&Ack { upto });
    }

    /// A relay with `flags` (`RECEIPT`).
    pub fn relay_flags(
        &mut self,
        request: u64,
        message_id: u64,
        flags: u32,
        to: &[u64],
        body: &[u8],
    ) {
        self.send(&RelayV2Ref {
            request,
            message_id,
            flags,
            receivers: to,
            body,
        });
    }

    /// Sends an `Echo` and returns every frame that came before its reply:
    /// everything the hub queued on this connection before it read the
    /// echo (a barrier).
    pub fn until_echo(&mut self, request: u64) -> Vec<HubMessageV2> {
        self.send(&Echo {
            request,
            body: Vec::new(),
        });
        let mut before = Vec::new();
        loop {
            match self.next() {
                HubMessageV2::EchoReply(reply) if reply.request == request => return before,
                other => before.push(other),
            }
        }
    }

    /// The next frame from the hub (panics on a close or a timeout).
    pub fn next(&mut self) -> HubMessageV2 {
        match self.try_next() {
            Some(message) => message,
            None => panic!(
                "user {}: the hub closed the connection, or sent nothing within {EVENT_TIMEOUT:?}",
                self.user
            ),
        }
    }

    /// The next frame, or `None` when the connection ends.
    pub fn try_next(&mut self) -> Option<HubMessageV2> {
        loop {
            match self.decoder.poll_frame() {
                Ok(Some(frame)) => return Some(HubFrameV2::to_owned(&frame)),
                Ok(None) => {}
                Err(error) => panic!("user {}: hub sent garbage: {error}", self.user),
            }
            let spare = self.decoder.spare();
            match self.stream.read(spare) {
                Ok(0) | Err(_) => return None,
                Ok(read) => self.decoder.commit(read),
            }
        }
    }

    /// Frames until the hub closes the connection.
    pub fn until_closed(&mut self) -> Vec<HubMessageV2> {
        std::iter::from_fn(|| self.try_next()).collect()
    }
}

/// `(code, request, detail)` of an `Error` frame; `None` for other frames.
pub fn error_of(message: &HubMessageV2) -> Option<(ErrorCodeV2, u64, u64)> {
    match message {
        HubMessageV2::Error(error) => Some((
            ErrorCodeV2::from_wire(error.code).expect("a known error code"),
            error.request,
            error.detail,
        )),
        _ => None,
    }
}
