//! What the frames of one connection do: the preface and welcome, then each
//! request in order, with the decoder's errors turned into `Error` frames.

use bytes::Bytes;
use relayhub_protocol::{
    kind, ClientFrameV2, DecodeError, EchoReplyRef, ErrorCodeV2, IdentityReply, Welcome,
    HTTP_REFUSAL, PREFACE, VERSION,
};

use super::{sessions::HelloOutcome, Event, Shard};
use crate::{
    conn::{ConnId, ConnState},
    outbound::PushError,
};

/// True for a version-2 connection that has not said `Hello` yet.
fn conn_awaits_hello<Io>(conn: Option<&crate::conn::Connection<Io>>) -> bool {
    conn.is_some_and(|conn| conn.state == ConnState::AwaitHello)
}

/// What handling one frame came to.
pub(super) enum Handled {
    /// Done; go on with the next frame.
    Done,
    /// The frame needs room in a full mesh outbox: keep it for later and
    /// stop handling this connection's input until the outbox drains.
    Paused,
    /// The connection's own replies overflowed its queue.
    Overflow,
    /// The connection's `Hello` resumes a session another shard owns: the
    /// frame stays in the decoder and the connection goes there.
    HandOff(usize),
}

impl<Io> Shard<Io> {
    /// Handles every complete frame `id` has buffered, in order, until the
    /// buffer runs out, the connection pauses or it closes.
    pub(super) fn process(&mut self, now_ms: u64, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if !conn.takes_input() || conn.paused_on.is_some() {
            return;
        }
        // The frames borrow the decoder while routing touches other
        // connections: take it out of the table meanwhile.
        let mut decoder = std::mem::take(&mut conn.decoder);
        let mut completed = false;
        while let Some(conn) = self.conn(id) {
            // A frame may pause the connection without being kept (a
            // `Hello` whose welcome waits for the log): what follows it
            // waits too, for `poll_read` once the pause ends.
            if !conn.takes_input() || conn.paused_on.is_some() {
                break;
            }
            if conn.state == ConnState::AwaitPreface {
                match decoder.poll_preface() {
                    Ok(false) => break,
                    Ok(true) => {
                        completed = true;
                        let version = decoder.version().unwrap_or(VERSION);
                        self.preface(id, version);
                        continue;
                    }
                    Err(error) => {
                        self.fatal(now_ms, id, error);
                        break;
                    }
                }
            }
            let handled = match decoder.poll_frame_shared() {
                Ok(None) => break,
                Ok(Some((frame, shared))) => {
                    completed = true;
                    self.stats.frames_in.incr();
                    self.handle_frame(now_ms, id, frame, shared.as_ref())
                }
                Err(error) if !error.is_fatal() && conn_awaits_hello(self.conn(id)) => {
                    // Anything before the Hello, even an over-limit frame,
                    // breaks the rule that the Hello comes first.
                    self.close(now_ms, id, Some((ErrorCodeV2::HelloRequired, 0, 0)));
                    break;
                }
                Err(error) if !error.is_fatal() => {
                    completed = true;
                    self.stats.limit_errors.incr();
                    let (code, request, detail) = self.error_parts(id, &error);
                    self.push(id, |outbound| outbound.push_error(code, request, detail))
                }
                Err(error) => {
                    self.fatal(now_ms, id, error);
                    break;
                }
            };
            match handled {
                Handled::Done => {}
                Handled::Paused => {
                    decoder.unpoll();
                    break;
                }
                Handled::Overflow => {
                    // The client does not read its own replies.
                    self.cut_slow_consumer(now_ms, id);
                    break;
                }
                Handled::HandOff(target) => {
                    decoder.unpoll();
                    let buffered = Bytes::copy_from_slice(decoder.buffered());
                    self.hand_off(id, target, buffered);
                    break;
                }
            }
        }
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        conn.decoder = decoder;
        if completed {
            conn.last_frame_ms = now_ms;
        }
        if conn.paused_on.is_some() || !conn.takes_input() {
            // No frame is arriving while the connection waits or closes.
            conn.frame_started_ms = None;
        } else if conn.decoder.buffered_len() == 0 {
            conn.frame_started_ms = None;
            conn.decoder.release_idle();
        } else if completed || conn.frame_started_ms.is_none() {
            // The start of a new frame arrived with this read.
            conn.frame_started_ms = Some(now_ms);
        }
        self.rearm(id);
    }

    /// The client's preface arrived. Version 1: give it a user id, make it
    /// reachable and queue the hub's preface and welcome. Version 2: wait
    /// for its `Hello` (the hub's preface goes out with the `WelcomeV2`, so
    /// a connection handed to another shard has nothing in flight).
    fn preface(&mut self, id: ConnId, version: u16) {
        let conn = self.conn_mut(id).expect("a connection in the table");
        conn.version = version;
        if version != VERSION {
            conn.state = ConnState::AwaitHello;
            return;
        }
        let user = self.allocate_id();
        self.users.insert(user, id);
        self.stats.connections_accepted.incr();
        let conn = self
            .conn_mut(id)
            .expect("welcomed connection is in the table");
        conn.user = user;
        conn.state = ConnState::Open;
        conn.greeted = true;
        // A fresh queue takes these two small frames (`Config::validate`
        // keeps the outbound limit above them).
        let queued = conn.outbound.push_raw(&PREFACE).and_then(|()| {
            conn.outbound
                .push_message(&Welcome::with_protocol_limits(user))
        });
        assert_eq!(queued, Ok(()), "the welcome fits a fresh outbound queue");
        self.note_pushed(id);
    }

    /// The wire code, request and detail for a decode error on `id`: a
    /// version-1 connection gets version 1's codes.
    fn error_parts(&self, id: ConnId, error: &DecodeError) -> (ErrorCodeV2, u64, u64) {
        let version = self.conn(id).map_or(VERSION, |conn| conn.version());
        if version == VERSION {
            (error.code().into(), error.request(), error.detail())
        } else {
            (error.code_v2(), error.request(), error.detail_v2())
        }
    }

    /// Sends the connection to the shard that owns the session its `Hello`
    /// resumes, with every byte it sent from the `Hello` on.
    fn hand_off(&mut self, id: ConnId, target: usize, buffered: Bytes) {
        let conn = self.conn_mut(id).expect("a connection in the table");
        conn.state = ConnState::HandedOff;
        conn.reading_stopped = true;
        self.handoffs.insert(id, (target, buffered));
        self.stats.handoffs_out.incr();
        self.events.push_back(Event::HandOff(id));
        self.events.push_back(Event::Writable(id));
        self.events.push_back(Event::Readable(id));
    }

    /// A fatal decode error: tell the client why, in words it can read, and
    /// close.
    fn fatal(&mut self, now_ms: u64, id: ConnId, error: DecodeError) {
        self.stats.protocol_errors.incr();
        if let DecodeError::BadPreface {
            looks_like_http: true,
        } = error
        {
            if let Some(conn) = self.conn_mut(id) {
                let _ = conn.outbound.push_shared(Bytes::from_static(HTTP_REFUSAL));
                // An HTTP client gets HTTP, not our preface.
                conn.greeted = true;
            }
            self.close(now_ms, id, None);
            return;
        }
        let reason = self.error_parts(id, &error);
        self.close(now_ms, id, Some(reason));
    }

    /// `shared`: a handle on the buffer a large frame lies in, so a relay's
    /// body is delivered from there (no copy).
    fn handle_frame(
        &mut self,
        now_ms: u64,
        id: ConnId,
        frame: ClientFrameV2<'_>,
        shared: Option<&relayhub_protocol::SharedFrame>,
    ) -> Handled {
        let Some(conn) = self.conn(id) else {
            return Handled::Done;
        };
        let (user, state) = (conn.user, conn.state);
        if state == ConnState::AwaitHello {
            let ClientFrameV2::Hello(hello) = frame else {
                let kind = frame.kind();
                self.close(
                    now_ms,
                    id,
                    Some((ErrorCodeV2::HelloRequired, 0, u64::from(kind))),
                );
                return Handled::Done;
            };
            return match self.hello(now_ms, id, hello) {
                HelloOutcome::Done => Handled::Done,
                HelloOutcome::HandOff(target) => Handled::HandOff(target),
            };
        }
        match frame {
            ClientFrameV2::Hello(_) => {
                let detail = u64::from(kind::HELLO);
                self.close(now_ms, id, Some((ErrorCodeV2::HelloRequired, 0, detail)));
                Handled::Done
            }
            ClientFrameV2::Relay(relay) => self.relay(
                now_ms,
                id,
                super::routing::RelayRequest {
                    from: user,
                    request: relay.request.to_native(),
                    message_id: 0,
                    receipt: false,
                    version: VERSION,
                    content: None,
                },
                relay.receivers.as_slice(),
                relay.body.as_slice(),
                shared,
            ),
            ClientFrameV2::RelayV2(relay) => self.relay_v2(now_ms, id, user, relay, shared),
            ClientFrameV2::Ack(ack) => self.ack(now_ms, id, ack.upto.to_native()),
            ClientFrameV2::Identity(identity) => self.push(id, |outbound| {
                outbound.push_message(&IdentityReply {
                    request: identity.request.to_native(),
                    user,
                })
            }),
            ClientFrameV2::Echo(echo) => self.push(id, |outbound| {
                outbound.push_message(&EchoReplyRef {
                    request: echo.request.to_native(),
                    body: echo.body.as_slice(),
                })
            }),
            ClientFrameV2::List(list) => {
                if let Some(target) = self.any_congested(id) {
                    self.pause(id, target);
                    return Handled::Paused;
                }
                let conn = self
                    .conn_mut(id)
                    .expect("a connection handling frames is in the table");
                if usize::from(conn.lists_pending) >= super::list::LISTS_PER_CONNECTION_MAX {
                    conn.paused_on = Some(crate::conn::Pause::Lists);
                    self.stats.backpressure_waits.incr();
                    return Handled::Paused;
                }
                self.list(
                    now_ms,
                    id,
                    user,
                    list.request.to_native(),
                    list.after.to_native(),
                    list.limit.to_native(),
                );
                Handled::Done
            }
        }
    }

    /// Queues a reply on `id`'s own outbound queue.
    fn push(
        &mut self,
        id: ConnId,
        push: impl FnOnce(&mut crate::outbound::Outbound) -> Result<(), PushError>,
    ) -> Handled {
        let Some(conn) = self.conn_mut(id) else {
            return Handled::Done;
        };
        let pushed = push(&mut conn.outbound);
        self.note_pushed(id);
        match pushed {
            Ok(()) | Err(PushError::Closing) => Handled::Done,
            Err(PushError::Overflow) => Handled::Overflow,
        }
    }
}
