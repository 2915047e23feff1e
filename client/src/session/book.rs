//! The session's bookkeeping that outlives any one connection: who we are,
//! the counters (request ids, message ids, the three `seq` marks), dedup,
//! the queue of events not yet handed out, persistence, and the relays a
//! [`ReconnectingClient`](super::ReconnectingClient) retains until their
//! `Stored`.
//!
//! The three `seq` marks, always `acked <= delivered <= seen`:
//! - `seen`: the highest `seq` accepted from the wire (queued or handed
//!   out); an entry at or below it is a redelivery and is dropped.
//! - `delivered`: the highest `seq` handed to the application.
//! - `acked`: the highest `seq` acked to the hub (and saved to the state
//!   file before the `Ack` goes out).

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    path::PathBuf,
};

use bytes::Bytes;
use relayhub_protocol::{
    flags, HubFrameV2, Limits as HubLimits, ResumeToken, BODY_BYTES_MAX, RECEIVERS_MAX,
};

use crate::{
    error::ClientLimit,
    event::{RequestId, UserId},
    session::{
        dedup::RecentIds,
        error::{HubErrorV2, SessionError},
        event::SessionEvent,
        link::Welcomed,
        options::Options,
        state::{SessionState, StateError},
        MESSAGE_ID_RESERVE,
    },
};

/// One item of the queue of events not yet handed out.
#[derive(Debug)]
pub(crate) enum Queued {
    /// An event for the application.
    Event(SessionEvent),
    /// An inbox entry dropped as a `(from, message_id)` duplicate: it is
    /// never handed out, but it is done once everything before it is, so
    /// handing it advances `delivered` (and the next ack covers it).
    Skipped {
        /// The entry's `seq`.
        seq: u64,
    },
}

/// A relay kept until its `Stored`, to be re-sent after a reconnect.
#[derive(Debug, Clone)]
pub(crate) struct RetainedRelay {
    /// The request id the application was given (the first send's).
    pub request: RequestId,
    pub receivers: Vec<UserId>,
    pub body: Bytes,
    pub receipt: bool,
}

/// The relays without a `Stored` yet, by message id (re-sent in that order).
#[derive(Debug, Default)]
pub(crate) struct Retained {
    pub relays: BTreeMap<u64, RetainedRelay>,
    /// Request id of each send on the current connection → message id.
    pub by_request: HashMap<RequestId, u64>,
    /// Sum of the retained bodies' lengths.
    pub bytes: usize,
}

impl Retained {
    pub fn insert(&mut self, message_id: u64, relay: RetainedRelay) {
        self.bytes += relay.body.len();
        self.relays.insert(message_id, relay);
    }

    fn remove(&mut self, message_id: u64) -> Option<RetainedRelay> {
        let relay = self.relays.remove(&message_id)?;
        self.bytes -= relay.body.len();
        Some(relay)
    }
}

/// See the [module docs](self). `Debug` leaves the token out.
pub(crate) struct Book {
    pub user: UserId,
    pub token: ResumeToken,
    pub durable: bool,
    pub resumed: bool,
    pub limits: HubLimits,
    pub auto_ack: bool,
    pub next_request: RequestId,
    pub next_message_id: u64,
    /// Ids below this are recorded as possibly used in the state file.
    reserved_until: u64,
    pub seen_seq: u64,
    pub delivered_seq: u64,
    pub acked_seq: u64,
    recent: RecentIds,
    queue: VecDeque<Queued>,
    queue_bytes: usize,
    pending_events_max: usize,
    pending_bytes_max: usize,
    state_file: Option<PathBuf>,
    /// Request ids of keepalive echoes awaiting their reply.
    pub keepalives: HashSet<RequestId>,
    pub retained: Option<Retained>,
    /// Entries dropped by the `seq` rule and by the `(from, message_id)` rule.
    pub dropped_by_seq: u64,
    pub dropped_by_id: u64,
}

impl std::fmt::Debug for Book {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Book")
            .field("user", &self.user)
            .field("token", &"<secret>")
            .field("durable", &self.durable)
            .field("resumed", &self.resumed)
            .field("next_message_id", &self.next_message_id)
            .field("seen_seq", &self.seen_seq)
            .field("delivered_seq", &self.delivered_seq)
            .field("acked_seq", &self.acked_seq)
            .field("queued", &self.queue.len())
            .field("state_file", &self.state_file)
            .finish_non_exhaustive()
    }
}

impl Book {
    /// The book of a session just welcomed. Request id 1 was the `Hello`'s.
    pub fn new(options: &Options, welcomed: &Welcomed) -> Book {
        // A new session numbers its inbox from 1 again.
        let floor = if welcomed.resumed {
            options.delivered_seq
        } else {
            0
        };
        let next_message_id = options.next_message_id.max(1);
        Book {
            user: welcomed.user,
            token: welcomed.token,
            durable: welcomed.durable,
            resumed: welcomed.resumed,
            limits: welcomed.limits,
            auto_ack: options.auto_ack,
            next_request: 2,
            next_message_id,
            reserved_until: next_message_id,
            seen_seq: floor,
            delivered_seq: floor,
            acked_seq: floor,
            recent: RecentIds::default(),
            queue: VecDeque::new(),
            queue_bytes: 0,
            pending_events_max: options.config.pending_events_max,
            pending_bytes_max: options.config.pending_bytes_max,
            state_file: options.state_file.clone(),
            keepalives: HashSet::new(),
            retained: None,
            dropped_by_seq: 0,
            dropped_by_id: 0,
        }
    }

    /// Takes the welcome of a resume on a new connection.
    pub fn rewelcome(&mut self, welcomed: &Welcomed) {
        self.token = welcomed.token;
        self.limits = welcomed.limits;
        self.resumed = true;
        self.keepalives.clear();
        if let Some(retained) = &mut self.retained {
            retained.by_request.clear();
        }
    }

    /// The session as it would be saved now.
    pub fn state(&self) -> SessionState {
        SessionState {
            user: self.user,
            token: self.token,
            delivered_seq: self.acked_seq,
            next_message_id: self.next_message_id.max(self.reserved_until),
        }
    }

    fn persists(&self) -> bool {
        self.durable && self.state_file.is_some()
    }

    /// Saves the state file, if the session keeps one.
    pub fn persist(&self) -> Result<(), StateError> {
        match &self.state_file {
            Some(path) if self.durable => self.state().save(path),
            _ => Ok(()),
        }
    }

    /// Gives back the unused part of the reserved block of message ids and
    /// saves the state: after a clean close the next process continues
    /// with the very next id.
    pub fn release_reservation(&mut self) -> Result<(), StateError> {
        if self.reserved_until > self.next_message_id {
            self.reserved_until = self.next_message_id;
            self.persist()?;
        }
        Ok(())
    }

    pub fn take_request(&mut self) -> RequestId {
        let request = self.next_request;
        self.next_request += 1;
        request
    }

    /// The next message id, after recording a new reserved block in the
    /// state file when this id would pass the last one.
    pub fn take_message_id(&mut self) -> Result<u64, StateError> {
        if self.persists() && self.next_message_id >= self.reserved_until {
            let previous = self.reserved_until;
            self.reserved_until = self.next_message_id + MESSAGE_ID_RESERVE;
            if let Err(error) = self.persist() {
                self.reserved_until = previous;
                return Err(error);
            }
        }
        let id = self.next_message_id;
        self.next_message_id += 1;
        Ok(id)
    }

    /// Refuses a relay the hub would refuse (its limits, capped at the
    /// protocol's; a 0 is read as the protocol's).
    pub fn check_relay(&self, receivers: usize, body_bytes: usize) -> Result<(), SessionError> {
        let receivers_max = capped(self.limits.receivers_max, RECEIVERS_MAX);
        check(ClientLimit::Receivers, receivers, receivers_max)?;
        self.check_body(body_bytes)
    }

    /// Refuses a body longer than the hub accepts.
    pub fn check_body(&self, body_bytes: usize) -> Result<(), SessionError> {
        let body_max = capped(self.limits.body_bytes_max, BODY_BYTES_MAX);
        check(ClientLimit::BodyBytes, body_bytes, body_max)
    }

    /// Turns a decoded frame into what to queue, applying dedup; `None` for
    /// what is not handed out (a duplicate, a keepalive's reply). Errors:
    /// what ends the connection (a closing error, an unknown code, a frame
    /// the protocol forbids here).
    pub fn accept(&mut self, frame: HubFrameV2<'_>) -> Result<Option<Queued>, SessionError> {
        Ok(match frame {
            HubFrameV2::DeliverV2(deliver) => {
                let seq = deliver.seq.to_native();
                if !self.see_seq(seq) {
                    return Ok(None);
                }
                let from = deliver.from.to_native();
                let message_id = deliver.message_id.to_native();
                if !self.recent.insert(from, message_id) {
                    self.dropped_by_id += 1;
                    return Ok((seq != 0).then_some(Queued::Skipped { seq }));
                }
                Some(Queued::Event(SessionEvent::Deliver {
                    from,
                    seq,
                    message_id,
                    body: Bytes::copy_from_slice(&deliver.body),
                    redelivery: deliver.flags.to_native() & flags::REDELIVERY != 0,
                }))
            }
            HubFrameV2::Receipt(receipt) => {
                let seq = receipt.seq.to_native();
                if !self.see_seq(seq) {
                    return Ok(None);
                }
                Some(Queued::Event(SessionEvent::Receipt {
                    message_id: receipt.message_id.to_native(),
                    receiver: receipt.receiver.to_native(),
                    seq,
                    redelivery: receipt.flags.to_native() & flags::REDELIVERY != 0,
                }))
            }
            HubFrameV2::Stored(stored) => {
                let mut request = stored.request.to_native();
                if let Some(retained) = &mut self.retained {
                    if let Some(message_id) = retained.by_request.remove(&request) {
                        if let Some(relay) = retained.remove(message_id) {
                            request = relay.request;
                        }
                    }
                }
                Some(Queued::Event(SessionEvent::Stored {
                    request,
                    message_id: stored.message_id.to_native(),
                    duplicate: stored.duplicate,
                }))
            }
            HubFrameV2::Error(error) => {
                let mut error = HubErrorV2::from_wire(
                    error.code.to_native(),
                    error.request.to_native(),
                    error.detail.to_native(),
                )?;
                if error.code.closes_connection() {
                    return Err(SessionError::Hub(error));
                }
                if let Some(retained) = &mut self.retained {
                    if let Some(&message_id) = retained.by_request.get(&error.request) {
                        if let Some(relay) = retained.relays.get(&message_id) {
                            let sent_as = error.request;
                            error.request = relay.request;
                            if error.refuses_whole_relay() {
                                // Its final answer: no Stored follows.
                                retained.by_request.remove(&sent_as);
                                retained.remove(message_id);
                            }
                        }
                    }
                }
                Some(Queued::Event(SessionEvent::Error(error)))
            }
            HubFrameV2::EchoReply(reply) => {
                let request = reply.request.to_native();
                if self.keepalives.remove(&request) {
                    return Ok(None);
                }
                Some(Queued::Event(SessionEvent::EchoReply {
                    request,
                    body: Bytes::copy_from_slice(&reply.body),
                }))
            }
            HubFrameV2::IdentityReply(reply) => Some(Queued::Event(SessionEvent::IdentityReply {
                request: reply.request.to_native(),
                user: reply.user.to_native(),
            })),
            HubFrameV2::ListReply(reply) => Some(Queued::Event(SessionEvent::ListReply {
                request: reply.request.to_native(),
                users: reply.users.iter().map(|id| id.to_native()).collect(),
                more: reply.more,
            })),
            HubFrameV2::WelcomeV2(_) => {
                return Err(SessionError::Unexpected {
                    what: "a second WelcomeV2",
                })
            }
            HubFrameV2::Welcome(_) | HubFrameV2::Deliver(_) => {
                return Err(SessionError::Unexpected {
                    what: "a version-1 frame on a version-2 connection",
                })
            }
        })
    }

    /// The `seq` rule: false (and counted) for an entry at or below `seen`.
    /// `seq` 0 (an ephemeral session) is never a duplicate by `seq`.
    fn see_seq(&mut self, seq: u64) -> bool {
        if seq == 0 {
            return true;
        }
        if seq <= self.seen_seq {
            self.dropped_by_seq += 1;
            return false;
        }
        self.seen_seq = seq;
        true
    }

    pub fn push(&mut self, queued: Queued) {
        if let Queued::Event(event) = &queued {
            self.queue_bytes += event.payload_bytes();
        }
        self.queue.push_back(queued);
    }

    /// Hands out the oldest queued event, advancing `delivered` past it and
    /// past the skipped entries before it.
    pub fn pop(&mut self) -> Option<SessionEvent> {
        while let Some(queued) = self.queue.pop_front() {
            match queued {
                Queued::Skipped { seq } => self.delivered_seq = self.delivered_seq.max(seq),
                Queued::Event(event) => {
                    self.queue_bytes -= event.payload_bytes();
                    self.delivered_seq = self.delivered_seq.max(event.seq());
                    return Some(event);
                }
            }
        }
        None
    }

    /// Removes and returns the oldest queued event that is not an inbox
    /// entry and matches `wanted` (a reply, a `Stored`, an `Error`), out of
    /// order: the `seq` marks are not affected.
    pub fn take_queued(
        &mut self,
        mut wanted: impl FnMut(&SessionEvent) -> bool,
    ) -> Option<SessionEvent> {
        let at = self.queue.iter().position(
            |queued| matches!(queued, Queued::Event(event) if event.seq() == 0 && wanted(event)),
        )?;
        match self.queue.remove(at)? {
            Queued::Event(event) => {
                self.queue_bytes -= event.payload_bytes();
                Some(event)
            }
            Queued::Skipped { .. } => unreachable!("only events match"),
        }
    }

    /// Events queued (received, not yet handed out).
    pub fn queued(&self) -> usize {
        self.queue
            .iter()
            .filter(|queued| matches!(queued, Queued::Event(_)))
            .count()
    }

    pub fn queue_full(&self) -> bool {
        self.queue.len() >= self.pending_events_max || self.queue_bytes >= self.pending_bytes_max
    }

    pub fn queue_len_bytes(&self) -> (usize, usize) {
        (self.queue.len(), self.queue_bytes)
    }
}

fn capped(announced: u32, protocol: usize) -> usize {
    match announced as usize {
        0 => protocol,
        announced => announced.min(protocol),
    }
}

fn check(limit: ClientLimit, value: usize, max: usize) -> Result<(), SessionError> {
    if value > max {
        return Err(SessionError::LimitExceeded { limit, value, max });
    }
    Ok(())
}
