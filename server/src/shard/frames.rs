//! What the frames of one connection do: the preface and welcome, then each
//! request in order, with the decoder's errors turned into `Error` frames.

use bytes::Bytes;
use relayhub_protocol::{
    ClientFrame, DecodeError, EchoReplyRef, IdentityReply, Welcome, HTTP_REFUSAL, PREFACE,
};

use super::Shard;
use crate::{
    conn::{ConnId, ConnState},
    outbound::PushError,
};

/// What handling one frame came to.
pub(super) enum Handled {
    /// Done; go on with the next frame.
    Done,
    /// The frame needs room in a full mesh outbox: keep it for later and
    /// stop handling this connection's input until the outbox drains.
    Paused,
    /// The connection's own replies overflowed its queue.
    Overflow,
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
            if !conn.takes_input() {
                break;
            }
            if conn.state == ConnState::AwaitPreface {
                match decoder.poll_preface() {
                    Ok(false) => break,
                    Ok(true) => {
                        completed = true;
                        self.welcome(id);
                        continue;
                    }
                    Err(error) => {
                        self.fatal(now_ms, id, error);
                        break;
                    }
                }
            }
            let handled = match decoder.poll_frame() {
                Ok(None) => break,
                Ok(Some(frame)) => {
                    completed = true;
                    self.stats.frames_in.incr();
                    self.handle_frame(now_ms, id, frame)
                }
                Err(error) if !error.is_fatal() => {
                    completed = true;
                    self.stats.limit_errors.incr();
                    let (code, request, detail) = (error.code(), error.request(), error.detail());
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

    /// The client's preface arrived: give it a user id, make it reachable
    /// and queue the hub's preface and welcome.
    fn welcome(&mut self, id: ConnId) {
        let user = self.ids.allocate();
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
        let reason = (error.code(), error.request(), error.detail());
        self.close(now_ms, id, Some(reason));
    }

    fn handle_frame(&mut self, now_ms: u64, id: ConnId, frame: ClientFrame<'_>) -> Handled {
        let user = self.conn(id).map_or(0, |conn| conn.user);
        match frame {
            ClientFrame::Relay(relay) => self.relay(
                now_ms,
                id,
                user,
                relay.request.to_native(),
                relay.receivers.as_slice(),
                relay.body.as_slice(),
            ),
            ClientFrame::Identity(identity) => self.push(id, |outbound| {
                outbound.push_message(&IdentityReply {
                    request: identity.request.to_native(),
                    user,
                })
            }),
            ClientFrame::Echo(echo) => self.push(id, |outbound| {
                outbound.push_message(&EchoReplyRef {
                    request: echo.request.to_native(),
                    body: echo.body.as_slice(),
                })
            }),
            ClientFrame::List(list) => {
                if let Some(target) = self.any_congested() {
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
