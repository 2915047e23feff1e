//! Fake hubs for the client's tests, speaking the protocol with
//! relayhub-protocol over real loopback sockets.
//!
//! - [`scripted`]: accepts one connection and runs a test-written script on
//!   it ([`HubConn`]): exact control over what arrives when.
//! - [`ModelHub`]: a small thread-per-connection hub with the real
//!   semantics (ids, list paging, relay, unknown receivers, limit errors),
//!   for tests with several clients and for the CLI's end-to-end tests.
//! - [`v2`]: a scripted fake hub for protocol version 2 (sessions).

#![allow(dead_code)] // Each test binary uses a different part.

pub mod v2;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread::{self, JoinHandle},
    time::Duration,
};

use bytes::BytesMut;
use relayhub_protocol::{
    encode, encode_deliver, ClientFrame, ClientMessage, DecodeError, Decoder, EchoReplyRef, Error,
    ErrorCode, HubSide, IdentityReply, ListReplyRef, Message, Welcome, LIST_PAGE_USERS_MAX,
    PREFACE,
};

/// How long a fake hub waits for the client before failing the test.
pub const FAKE_HUB_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One accepted connection, driven by a test script.
pub struct HubConn {
    pub stream: TcpStream,
    decoder: Decoder<HubSide>,
}

impl HubConn {
    fn new(stream: TcpStream) -> HubConn {
        stream
            .set_read_timeout(Some(FAKE_HUB_READ_TIMEOUT))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        HubConn {
            stream,
            decoder: Decoder::new(),
        }
    }

    /// Reads the client's preface (checked by the decoder on the first
    /// frame), sends ours and a `Welcome` for `user`.
    pub fn welcome(&mut self, user: u64) {
        self.send_raw(&PREFACE);
        self.send(&Welcome::with_protocol_limits(user));
    }

    /// The next frame from the client, owned. Panics on timeout or EOF.
    pub fn recv(&mut self) -> ClientMessage {
        self.try_recv().expect("the client sent a frame")
    }

    /// The next frame, `None` at end of stream.
    pub fn try_recv(&mut self) -> Option<ClientMessage> {
        loop {
            if let Some(frame) = self.decoder.poll_frame().expect("a valid client frame") {
                return Some(frame.to_owned());
            }
            let len = self
                .stream
                .read(self.decoder.spare())
                .expect("the client wrote in time");
            if len == 0 {
                return None;
            }
            self.decoder.commit(len);
        }
    }

    pub fn send<M: Message>(&mut self, message: &M) {
        let mut out = BytesMut::new();
        encode(message, &mut out).unwrap();
        self.send_raw(&out);
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn send_error(&mut self, code: ErrorCode, request: u64, detail: u64) {
        self.send(&Error::new(code, request, detail));
    }

    pub fn deliver(&mut self, from: u64, body: &[u8]) {
        self.send_raw(&encode_deliver(from, body).unwrap());
    }

    pub fn close(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// Accepts one connection on an ephemeral port and runs `script` on it in a
/// thread. Join the handle at the end of the test: a failed assertion in
/// the script then fails the test.
pub fn scripted(script: impl FnOnce(HubConn) + Send + 'static) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        script(HubConn::new(stream));
    });
    (addr, handle)
}

/// A minimal hub with the real semantics, one thread per connection. Its
/// threads are detached: they end with the test process.
pub struct ModelHub {
    pub addr: SocketAddr,
}

struct Shared {
    next_user: u64,
    /// Connected users and the write side of their sockets.
    users: BTreeMap<u64, Arc<Mutex<TcpStream>>>,
    page_users_max: usize,
}

impl ModelHub {
    pub fn start() -> ModelHub {
        ModelHub::with_page_users_max(LIST_PAGE_USERS_MAX)
    }

    /// A hub whose list pages hold at most `page_users_max` ids, to make
    /// paging visible with few clients.
    pub fn with_page_users_max(page_users_max: usize) -> ModelHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Mutex::new(Shared {
            next_user: 1,
            users: BTreeMap::new(),
            page_users_max,
        }));
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let shared = Arc::clone(&shared);
                thread::spawn(move || serve(stream, &shared));
            }
        });
        ModelHub { addr }
    }
}

fn serve(stream: TcpStream, shared: &Mutex<Shared>) {
    stream.set_nodelay(true).unwrap();
    let writer = Arc::new(Mutex::new(stream.try_clone().unwrap()));
    let user = {
        let mut shared = shared.lock().unwrap();
        let user = shared.next_user;
        shared.next_user += 1;
        shared.users.insert(user, Arc::clone(&writer));
        user
    };
    let mut out = BytesMut::new();
    out.extend_from_slice(&PREFACE);
    encode(&Welcome::with_protocol_limits(user), &mut out).unwrap();
    let _ = writer.lock().unwrap().write_all(&out);
    let _ = serve_frames(stream, user, &writer, shared);
    shared.lock().unwrap().users.remove(&user);
}

/// Answers frames until the client leaves or sends something fatal.
fn serve_frames(
    mut stream: TcpStream,
    user: u64,
    writer: &Mutex<TcpStream>,
    shared: &Mutex<Shared>,
) -> std::io::Result<()> {
    let mut decoder = Decoder::<HubSide>::new();
    loop {
        let mut out = BytesMut::new();
        loop {
            match decoder.poll_frame() {
                Ok(None) => break,
                Ok(Some(frame)) => answer(frame, user, &mut out, shared),
                Err(error) => {
                    encode(&error_frame(&error), &mut out).unwrap();
                    if error.is_fatal() {
                        writer.lock().unwrap().write_all(&out)?;
                        return stream.shutdown(Shutdown::Both);
                    }
                }
            }
        }
        if !out.is_empty() {
            writer.lock().unwrap().write_all(&out)?;
        }
        let len = stream.read(decoder.spare())?;
        if len == 0 {
            return Ok(());
        }
        decoder.commit(len);
    }
}

fn error_frame(error: &DecodeError) -> Error {
    Error::new(error.code(), error.request(), error.detail())
}

fn answer(frame: ClientFrame<'_>, user: u64, out: &mut BytesMut, shared: &Mutex<Shared>) {
    match frame {
        ClientFrame::Identity(identity) => {
            let request = identity.request.to_native();
            encode(&IdentityReply { request, user }, out).unwrap();
        }
        ClientFrame::Echo(echo) => {
            let request = echo.request.to_native();
            encode(
                &EchoReplyRef {
                    request,
                    body: &echo.body,
                },
                out,
            )
            .unwrap();
        }
        ClientFrame::List(list) => {
            let shared = shared.lock().unwrap();
            let limit = match list.limit.to_native() as usize {
                0 => shared.page_users_max,
                limit => limit.min(shared.page_users_max),
            };
            let after = list.after.to_native();
            let mut ids = shared
                .users
                .range(after + 1..)
                .map(|(&id, _)| id)
                .filter(|&id| id != user);
            let users: Vec<u64> = ids.by_ref().take(limit).collect();
            let more = ids.next().is_some();
            let request = list.request.to_native();
            encode(
                &ListReplyRef {
                    request,
                    users: &users,
                    more,
                },
                out,
            )
            .unwrap();
        }
        ClientFrame::Relay(relay) => {
            let request = relay.request.to_native();
            let deliver = encode_deliver(user, &relay.body).unwrap();
            for receiver in relay.receivers.iter().map(|id| id.to_native()) {
                let target = shared.lock().unwrap().users.get(&receiver).cloned();
                let delivered =
                    target.is_some_and(|target| target.lock().unwrap().write_all(&deliver).is_ok());
                if !delivered {
                    let error = Error::new(ErrorCode::UnknownReceiver, request, receiver);
                    encode(&error, out).unwrap();
                }
            }
        }
    }
}
