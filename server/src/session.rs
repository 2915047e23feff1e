//! One connection's protocol handling, without IO: bytes from the client go
//! into the session's decoder, [`Session::process`] turns complete frames
//! into shard operations and replies queued on the connection's outbound.
//! The glommio driver only reads into the decoder and writes the outbound.

use bytes::Bytes;
use relayhub_protocol::{
    ClientFrame, DecodeError, Decoder, EchoReplyRef, ErrorCode, HubSide, IdentityReply, Welcome,
    HTTP_REFUSAL, PREFACE,
};

use crate::{
    outbound::PushError,
    shard::{Conn, Shard},
};

/// What the driver should do after [`Session::process`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// Stop reading: the outbound is closing (an error may be queued).
    Close,
}

/// A client connection's protocol state.
pub struct Session {
    /// 0 until the client's preface arrives and the hub welcomes it.
    user: u64,
    conn: Conn,
    decoder: Decoder<HubSide>,
}

impl Session {
    /// A session for an accepted connection whose outbound is `conn`.
    pub fn new(conn: Conn) -> Session {
        Session {
            user: 0,
            conn,
            decoder: Decoder::new(),
        }
    }

    /// The user id, or 0 before the welcome.
    pub fn user(&self) -> u64 {
        self.user
    }

    /// The connection's outbound queue.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }

    /// Where the driver puts received bytes.
    pub fn decoder(&mut self) -> &mut Decoder<HubSide> {
        &mut self.decoder
    }

    /// Handles every complete frame received so far.
    pub fn process(&mut self, shard: &mut Shard) -> Flow {
        if self.user == 0 {
            match self.decoder.poll_preface() {
                Ok(false) => return Flow::Continue,
                Ok(true) => self.welcome(shard),
                Err(error) => return self.fatal(shard, error),
            }
        }
        loop {
            if !self.conn_open() {
                return Flow::Close;
            }
            let user = self.user;
            let conn = &self.conn;
            let pushed = match self.decoder.poll_frame() {
                Ok(None) => return Flow::Continue,
                Ok(Some(frame)) => {
                    shard.stats().frames_in.incr();
                    handle_frame(user, conn, shard, frame)
                }
                Err(error) if !error.is_fatal() => {
                    shard.stats().limit_errors.incr();
                    conn.borrow_mut()
                        .push_error(error.code(), error.request(), error.detail())
                }
                Err(error) => return self.fatal(shard, error),
            };
            if pushed == Err(PushError::Overflow) {
                // The client's own replies overflowed: it does not read.
                let bytes_max = self.conn.borrow().bytes_max() as u64;
                self.conn
                    .borrow_mut()
                    .close(Some((ErrorCode::SlowConsumer, 0, bytes_max)));
                shard.stats().slow_consumers.incr();
                return Flow::Close;
            }
        }
    }

    fn conn_open(&self) -> bool {
        self.conn.borrow().state() == crate::outbound::OutboundState::Open
    }

    fn welcome(&mut self, shard: &mut Shard) {
        self.user = shard.register(&self.conn);
        let mut conn = self.conn.borrow_mut();
        // A fresh queue takes these two small frames.
        let queued = conn
            .push_raw(&PREFACE)
            .and_then(|()| conn.push_message(&Welcome::with_protocol_limits(self.user)));
        debug_assert_eq!(queued, Ok(()));
    }

    /// A fatal decode error: tell the client why (in words it can read) and
    /// close.
    fn fatal(&mut self, shard: &mut Shard, error: DecodeError) -> Flow {
        shard.stats().protocol_errors.incr();
        let mut conn = self.conn.borrow_mut();
        match error {
            DecodeError::BadPreface {
                looks_like_http: true,
            } => {
                let _ = conn.push_shared(Bytes::from_static(HTTP_REFUSAL));
                conn.close(None);
            }
            _ => {
                if self.user == 0 {
                    // Before the welcome the client has not seen our preface.
                    let _ = conn.push_raw(&PREFACE);
                }
                conn.close(Some((error.code(), error.request(), error.detail())));
            }
        }
        Flow::Close
    }
}

fn handle_frame(
    user: u64,
    conn: &Conn,
    shard: &mut Shard,
    frame: ClientFrame<'_>,
) -> Result<(), PushError> {
    match frame {
        ClientFrame::Relay(relay) => {
            let request = relay.request.to_native();
            shard.relay(
                user,
                request,
                relay.receivers.as_slice(),
                relay.body.as_slice(),
            );
            Ok(())
        }
        ClientFrame::Identity(identity) => conn.borrow_mut().push_message(&IdentityReply {
            request: identity.request.to_native(),
            user,
        }),
        ClientFrame::Echo(echo) => conn.borrow_mut().push_message(&EchoReplyRef {
            request: echo.request.to_native(),
            body: echo.body.as_slice(),
        }),
        ClientFrame::List(list) => {
            let (request, after, limit) = (
                list.request.to_native(),
                list.after.to_native(),
                list.limit.to_native(),
            );
            shard.list(user, request, after, limit);
            Ok(())
        }
    }
}
