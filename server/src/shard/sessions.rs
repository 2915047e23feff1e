//! Durable sessions (protocol version 2, docs/protocol-v2.md): `Hello`,
//! resume tokens, takeover, the per-session inbox with its sequence
//! numbers, the inflight window, cumulative acks, redelivery on resume,
//! receipts, and expiry of sessions and entries. In memory: the store
//! behind these types is the shard itself.
//!
//! Per session the hub keeps a few counters and the inbox; per stored
//! entry, [`ENTRY_BYTES`] plus its body, which is shared (one `Deliver`
//! frame per relay and shard, whatever the fan-out).

use std::collections::VecDeque;

use bytes::Bytes;
use foldhash::{HashMap, HashMapExt};
use relayhub_protocol::{
    flags, preface_for, ArchivedHello, DeliverV2Meta, ErrorCodeV2, Receipt, ResumeToken, Stored,
    WelcomeV2, RESUME_TOKEN_BYTES,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{
    durability::{LogPos, SnapshotItem, Waiting},
    frames::Handled,
    Event, MeshMessage, Shard,
};
use crate::{
    conn::{ConnId, ConnState, Pause, SessionKind},
    ids::owner,
    outbound::{PushError, SharedBody},
    store::record::Record,
};

/// Bytes of one inbox entry besides its (shared) body.
pub const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

/// Bytes of one durable session's state besides its inbox entries.
pub const SESSION_BYTES: usize = std::mem::size_of::<DurableSession>() + 32;

/// Bytes a stored entry's share of its record is counted for against the
/// disk limit, besides its body.
const ENTRY_RECORD_BYTES: u64 = 64;

/// Senders whose latest stored `message_id` one inbox remembers for retry
/// dedup; past it the oldest mark is forgotten (a retry from that sender
/// may then be stored twice, and the client library drops it).
pub const RETRY_DEDUP_SENDERS_MAX: usize = 4096;

/// One inbox's memory of one sender's `message_id`s, for retry dedup: an
/// id is taken for a retry when it lies in `low..=min(high, cap)` and the
/// latest store is within the window.
#[derive(Clone, Copy, Debug)]
pub(super) struct RetryMark {
    /// The highest id stored in the inbox from the sender.
    high: u64,
    /// When the latest of them was stored.
    at_ms: u64,
    /// The highest id that may be taken for a retry: below every id this
    /// inbox refused from the sender, which a retry must try again.
    cap: u64,
    /// The lowest id the mark knows of: the id it was made for. A mark made
    /// after the sender's earlier one was forgotten (past
    /// [`RETRY_DEDUP_SENDERS_MAX`] senders) knows nothing of the ids
    /// before, refusals included, so they are never taken for a retry (a
    /// copy stored twice is dropped by the client; a refused one taken for
    /// a retry would be lost). 0 for marks rebuilt from the log.
    low: u64,
}

/// Entries of inbox capacity a session keeps however empty it gets; past
/// it, an inbox that drains to a quarter of its capacity shrinks.
const INBOX_CAPACITY_KEPT: usize = 64;

/// How often a shard looks for expired sessions and entries: expiry happens
/// at most this late.
pub const SESSION_SWEEP_MS: u64 = 1_000;

/// A resume token as the hub keeps it: its SHA-256.
type TokenHash = crate::store::record::TokenHash;

/// The `lsn` of an entry whose record is not appended yet.
const LSN_UNSEALED: u64 = u64::MAX;

/// One entry of an inbox.
pub(super) struct Entry {
    pub(super) seq: u64,
    stored_ms: u64,
    /// The log position after the entry's record: it is delivered only
    /// once the log is durable up to here.
    pub(super) lsn: u64,
    pub(super) item: Item,
}

impl Entry {
    /// Whether the entry's lifetime (`ttl_ms`, 0: forever) has run out at
    /// `now_ms`.
    fn expired(&self, ttl_ms: u64, now_ms: u64) -> bool {
        ttl_ms > 0 && self.stored_ms.saturating_add(ttl_ms) <= now_ms
    }
}

/// What an inbox entry holds.
pub(super) enum Item {
    /// A relayed message: the relay's body (sent as a `DeliverV2`) and,
    /// with `--storage disk`, where its record lies in the log.
    Message {
        from: u64,
        message_id: u64,
        body: Body,
        receipt: bool,
        pos: Option<LogPos>,
    },
    /// A receipt for a message this session sent.
    Receipt { message_id: u64, receiver: u64 },
}

/// A stored message's body: in memory, or only in the log (an offline
/// session's durable entries; read back when they are to be sent).
pub(super) enum Body {
    /// In memory, shared with the relay's other receivers on this shard.
    Resident(SharedBody),
    /// Only in the log, at the entry's position: this many bytes.
    Logged(u32),
    /// Being read back from the log.
    Loading(u32),
}

impl Body {
    pub(super) fn len(&self) -> u64 {
        match self {
            Body::Resident(frame) => frame.body_len() as u64,
            Body::Logged(len) | Body::Loading(len) => u64::from(*len),
        }
    }
}

impl Item {
    /// Body bytes, for the inbox and inflight byte limits.
    fn bytes(&self) -> u64 {
        match self {
            Item::Message { body, .. } => body.len(),
            Item::Receipt { .. } => 0,
        }
    }
}

/// One durable session, on the shard that owns its user id.
pub(super) struct DurableSession {
    /// The current and the previous token's hash (zero: none).
    tokens: [TokenHash; 2],
    /// The connection it is attached to.
    pub(super) conn: Option<ConnId>,
    /// Entries not yet acked (nor expired), in `seq` order.
    pub(super) inbox: VecDeque<Entry>,
    inbox_bytes: u64,
    /// The sequence the next entry gets (from 1).
    next_seq: u64,
    /// Every entry at or below is done.
    acked: u64,
    /// The highest `seq` sent on the current connection.
    cursor: u64,
    /// The highest `seq` ever sent, on any connection.
    sent_max: u64,
    /// Entries up to this `seq` were sent on an earlier connection.
    redeliver_upto: u64,
    pub(super) inflight: u64,
    pub(super) inflight_bytes: u64,
    /// The highest `message_id` this session relayed (retry dedup).
    pub(super) message_id_high: u64,
    /// The lowest `message_id` of this session's relays that a receiver
    /// refused (`u64::MAX`: none): from it on, retries are routed again.
    pub(super) message_id_refused: u64,
    /// Retry dedup where the store happens: per sender, a [`RetryMark`],
    /// for at most [`RETRY_DEDUP_SENDERS_MAX`] senders.
    recent: HashMap<u64, RetryMark>,
    /// Content dedup (`--content-dedup-window-ms`), created on first use.
    pub(super) contents: Option<Box<super::dedup::ContentWindow>>,
    /// When its last connection closed.
    detached_ms: u64,
    /// While offline: entries up to this `seq` had their bodies dropped
    /// from memory once durable (see [`Shard::evict_bodies`]).
    pub(super) evicted_upto: u64,
    /// A body read back from the log did not check out: no more reads
    /// until the next ack or resume (see [`Shard::handle_body_read`]).
    pub(super) read_failed: bool,
}

/// The shard's durable sessions.
#[derive(Default)]
pub(super) struct Sessions {
    pub(super) map: HashMap<u64, DurableSession>,
    next_sweep_ms: Option<u64>,
    /// Durable sessions with a `WelcomeV2` waiting for the log, and how
    /// many: such a session has no connection yet, but must not expire.
    welcoming: HashMap<u64, u32>,
}

fn token_hash(token: &ResumeToken) -> TokenHash {
    Sha256::digest(token).into()
}

/// A fresh token: 128 bits from the OS, never all zero.
fn new_token() -> ResumeToken {
    loop {
        let mut token = [0u8; RESUME_TOKEN_BYTES];
        getrandom::fill(&mut token).expect("the OS provides randomness");
        if token != [0; RESUME_TOKEN_BYTES] {
            return token;
        }
    }
}

impl DurableSession {
    /// Where inbox entry `seq` is, if it is still there (entries are in
    /// `seq` order).
    fn entry_index(&self, seq: u64) -> Option<usize> {
        let at = self.inbox.partition_point(|entry| entry.seq < seq);
        self.inbox
            .get(at)
            .is_some_and(|entry| entry.seq == seq)
            .then_some(at)
    }

    /// Inbox entry `seq`, if it is still there.
    pub(super) fn entry(&self, seq: u64) -> Option<&Entry> {
        self.inbox.get(self.entry_index(seq)?)
    }

    /// Inbox entry `seq`, if it is still there.
    pub(super) fn entry_mut(&mut self, seq: u64) -> Option<&mut Entry> {
        let at = self.entry_index(seq)?;
        self.inbox.get_mut(at)
    }

    fn new(token: &ResumeToken, now_ms: u64) -> DurableSession {
        DurableSession {
            tokens: [token_hash(token), [0; 32]],
            conn: None,
            inbox: VecDeque::new(),
            inbox_bytes: 0,
            next_seq: 1,
            acked: 0,
            cursor: 0,
            sent_max: 0,
            redeliver_upto: 0,
            inflight: 0,
            inflight_bytes: 0,
            message_id_high: 0,
            message_id_refused: u64::MAX,
            recent: HashMap::new(),
            contents: None,
            detached_ms: now_ms,
            evicted_upto: 0,
            read_failed: false,
        }
    }

    /// Whether `token` is the current or the previous one, in constant time.
    fn accepts(&self, token: &ResumeToken) -> bool {
        let presented = token_hash(token);
        let current = presented.ct_eq(&self.tokens[0]);
        let previous = presented.ct_eq(&self.tokens[1]) & !self.tokens[1].ct_eq(&[0; 32]);
        bool::from(current | previous)
    }

    /// Drops the entries at the front that satisfy `done`, keeping the
    /// window's counts; returns the receipts they owed.
    fn pop_while(&mut self, mut done: impl FnMut(&Entry) -> bool) -> (u64, Vec<(u64, u64)>) {
        let mut popped = 0;
        let mut receipts = Vec::new();
        while let Some(entry) = self.inbox.front() {
            if !done(entry) {
                break;
            }
            let entry = self.inbox.pop_front().expect("front exists");
            let bytes = entry.item.bytes();
            self.inbox_bytes -= bytes;
            if entry.seq <= self.cursor {
                self.inflight -= 1;
                self.inflight_bytes -= bytes;
            }
            if let Item::Message {
                from,
                message_id,
                receipt: true,
                ..
            } = entry.item
            {
                receipts.push((from, message_id));
            }
            popped += 1;
        }
        (popped, receipts)
    }
}

/// What the `Hello` came to.
pub(super) enum HelloOutcome {
    /// Welcomed (or refused and closing).
    Done,
    /// The session lives on `target`: hand the connection over.
    HandOff(usize),
}

impl<Io> Shard<Io> {
    /// Handles a version-2 connection's `Hello`.
    pub(super) fn hello(&mut self, now_ms: u64, id: ConnId, hello: &ArchivedHello) -> HelloOutcome {
        let request = hello.request.to_native();
        let resume_user = hello.resume_user.to_native();
        if resume_user == 0 {
            let user = self.allocate_id();
            let durable = hello.durable && self.sessions.map.len() < self.limits.sessions_max;
            let token = if durable {
                let token = new_token();
                let session = DurableSession::new(&token, now_ms);
                self.log(&Record::SessionCreated {
                    user,
                    token: session.tokens[0],
                    at_ms: now_ms,
                });
                self.sessions.map.insert(user, session);
                self.stats.sessions_created.incr();
                token
            } else {
                [0; RESUME_TOKEN_BYTES]
            };
            let kind = if durable {
                SessionKind::Durable
            } else {
                SessionKind::Ephemeral
            };
            self.welcome_when_durable(now_ms, id, user, kind, token, request, false);
            return HelloOutcome::Done;
        }
        let target = owner(resume_user, self.shards);
        if target != self.index {
            return HelloOutcome::HandOff(target);
        }
        let accepted = self
            .sessions
            .map
            .get(&resume_user)
            .is_some_and(|session| session.accepts(&hello.resume_token));
        if !accepted {
            self.stats.resumes_rejected.incr();
            self.close(now_ms, id, Some((ErrorCodeV2::ResumeRejected, request, 0)));
            return HelloOutcome::Done;
        }
        let session = self.sessions.map.get_mut(&resume_user).expect("accepted");
        let token = new_token();
        session.tokens = [token_hash(&token), token_hash(&hello.resume_token)];
        let record = Record::SessionTokens {
            user: resume_user,
            current: session.tokens[0],
            previous: session.tokens[1],
        };
        let old = session.conn.take();
        self.log(&record);
        if let Some(old) = old {
            self.stats.takeovers.incr();
            self.close(now_ms, old, Some((ErrorCodeV2::SessionTakenOver, 0, 0)));
        }
        self.stats.sessions_resumed.incr();
        self.welcome_when_durable(
            now_ms,
            id,
            resume_user,
            SessionKind::Durable,
            token,
            request,
            true,
        );
        HelloOutcome::Done
    }

    /// Welcomes `id` once the session's records are durable (a token the
    /// client holds always survives a crash); its input waits meanwhile.
    #[allow(clippy::too_many_arguments)]
    fn welcome_when_durable(
        &mut self,
        now_ms: u64,
        id: ConnId,
        user: u64,
        kind: SessionKind,
        token: ResumeToken,
        request: u64,
        resumed: bool,
    ) {
        if let Some(conn) = self.conn_mut(id) {
            conn.paused_on = Some(Pause::Durable);
        }
        if kind == SessionKind::Durable {
            *self.sessions.welcoming.entry(user).or_insert(0) += 1;
        }
        let waiting = Waiting::Welcome {
            id,
            user,
            kind,
            token,
            request,
            resumed,
        };
        self.after_durable(now_ms, waiting);
    }

    /// Welcomes `id` as `user`, queues the hub's preface and `WelcomeV2`,
    /// and for a durable session starts sending its inbox.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attach(
        &mut self,
        now_ms: u64,
        id: ConnId,
        user: u64,
        kind: SessionKind,
        token: ResumeToken,
        request: u64,
        resumed: bool,
    ) {
        let limits = self.welcome_limits();
        // It may have closed while its session's records became durable.
        let open = self
            .conn(id)
            .is_some_and(|conn| conn.state == ConnState::AwaitHello);
        if kind == SessionKind::Durable {
            self.welcome_done(now_ms, user, open);
        }
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if !open {
            return;
        }
        conn.paused_on = None;
        conn.user = user;
        conn.kind = kind;
        conn.state = ConnState::Open;
        conn.greeted = true;
        conn.last_frame_ms = now_ms;
        let welcome = WelcomeV2 {
            request,
            user,
            token,
            limits,
            resumed,
            durable: kind == SessionKind::Durable,
        };
        let queued = conn
            .outbound
            .push_raw(&preface_for(conn.version()))
            .and_then(|()| conn.outbound.push_message(&welcome));
        assert_eq!(queued, Ok(()), "the welcome fits a fresh outbound queue");
        self.users.insert(user, id);
        self.stats.connections_accepted.incr();
        self.note_pushed(id);
        self.events.push_back(Event::Readable(id));
        self.rearm(id);
        if let Some(session) = self.sessions.map.get_mut(&user) {
            if let Some(old) = session.conn.replace(id) {
                // Taken over while this welcome waited for the log.
                session.conn = Some(id);
                self.stats.takeovers.incr();
                self.close(now_ms, old, Some((ErrorCodeV2::SessionTakenOver, 0, 0)));
            }
            let session = self.sessions.map.get_mut(&user).expect("present");
            session.cursor = session.acked;
            session.inflight = 0;
            session.inflight_bytes = 0;
            session.redeliver_upto = session.sent_max;
            session.read_failed = false;
            if self.pump(now_ms, user) {
                // The inbox comes before anything sent behind the `Hello`,
                // also when it must be read back from the log first.
                if let Some(conn) = self.conn_mut(id) {
                    conn.paused_on = Some(Pause::ReadBack);
                }
            }
        }
        self.arm_sweep(now_ms);
    }

    /// A durable session's welcome no longer waits for the log. When its
    /// connection closed meanwhile (`open` false) and nothing else holds the
    /// session, its expiry clock starts now, as if that connection had been
    /// attached and closed.
    fn welcome_done(&mut self, now_ms: u64, user: u64, open: bool) {
        let waiting = self
            .sessions
            .welcoming
            .get_mut(&user)
            .expect("a durable welcome is counted");
        *waiting -= 1;
        if *waiting > 0 {
            return;
        }
        self.sessions.welcoming.remove(&user);
        if open {
            return;
        }
        if let Some(session) = self.sessions.map.get_mut(&user) {
            if session.conn.is_none() {
                session.detached_ms = now_ms;
                self.log(&Record::SessionDetached {
                    user,
                    at_ms: now_ms,
                });
                // Its clock runs from now: the sweep must come (this may
                // be the shard's only session).
                self.arm_sweep(now_ms);
            }
        }
    }

    /// The limits a `WelcomeV2` advertises.
    fn welcome_limits(&self) -> relayhub_protocol::Limits {
        let limits = &self.limits;
        relayhub_protocol::Limits {
            idle_timeout_ms: limits.idle_timeout_ms,
            frame_timeout_ms: limits.frame_timeout_ms,
            outbound_bytes_max: limits.outbound_bytes_max as u64,
            inflight_messages_max: limits.inflight_messages_max,
            inflight_bytes_max: limits.inflight_bytes_max,
            inbox_messages_max: limits.inbox_messages_max,
            inbox_bytes_max: limits.inbox_bytes_max,
            session_expiry_ms: limits.session_expiry_ms,
            message_ttl_ms: limits.message_ttl_ms,
            dedup_window_ms: limits.dedup_window_ms,
            content_dedup_window_ms: limits.content_dedup_window_ms,
            ..relayhub_protocol::Limits::with_protocol_bounds()
        }
    }

    /// A durable session's connection closed: the session waits for a
    /// resume until it expires.
    pub(super) fn detach(&mut self, now_ms: u64, id: ConnId, user: u64) {
        if let Some(session) = self.sessions.map.get_mut(&user) {
            if session.conn == Some(id) {
                session.conn = None;
                session.detached_ms = now_ms;
                session.evicted_upto = session.acked;
                self.log(&Record::SessionDetached {
                    user,
                    at_ms: now_ms,
                });
                self.evict_bodies(user);
            }
        }
    }

    /// Whether `user` has a durable session on this shard.
    pub(super) fn is_durable(&self, user: u64) -> bool {
        self.sessions.map.contains_key(&user)
    }

    /// Appends an entry to `user`'s inbox and sends it if the window
    /// allows. `InboxFull` past the inbox limits.
    /// The entry's record is the caller's to append; until it calls
    /// [`seal`](Self::seal) the entry is not delivered.
    pub(super) fn store(&mut self, now_ms: u64, user: u64, item: Item) -> Result<u64, ErrorCodeV2> {
        let (messages_max, bytes_max) =
            (self.limits.inbox_messages_max, self.limits.inbox_bytes_max);
        let bytes = item.bytes();
        if self.log.full(bytes + ENTRY_RECORD_BYTES) {
            self.stats.storage_full.incr();
            return Err(ErrorCodeV2::StorageFull);
        }
        let session = self
            .sessions
            .map
            .get_mut(&user)
            .expect("store to a durable session");
        if session.inbox.len() as u64 >= messages_max || session.inbox_bytes + bytes > bytes_max {
            self.stats.inbox_full.incr();
            return Err(ErrorCodeV2::InboxFull);
        }
        let seq = session.next_seq;
        session.next_seq = session.next_seq.saturating_add(1);
        session.inbox_bytes += bytes;
        session.inbox.push_back(Entry {
            seq,
            stored_ms: now_ms,
            lsn: LSN_UNSEALED,
            item,
        });
        self.stats.stored.incr();
        Ok(seq)
    }

    /// The records of `user`'s entries up to `seq` are appended (the
    /// message record of the one at `seq` at `pos`): they go out once the
    /// log is durable up to the current position.
    pub(super) fn seal(&mut self, now_ms: u64, user: u64, seq: u64, pos: Option<LogPos>) {
        let lsn = self.log.appended();
        let Some(session) = self.sessions.map.get_mut(&user) else {
            return;
        };
        for entry in session.inbox.iter_mut().rev() {
            if entry.lsn != LSN_UNSEALED {
                break;
            }
            if entry.seq <= seq {
                entry.lsn = lsn;
            }
            if entry.seq == seq {
                if let Item::Message { pos: at, .. } = &mut entry.item {
                    *at = pos;
                }
            }
        }
        if self.log.is_durable(lsn) {
            self.pump(now_ms, user);
        } else {
            self.note_undelivered(user, lsn);
        }
    }

    /// Sends `user`'s inbox entries after the cursor while the inflight
    /// window allows (one entry always fits). True when it stopped at an
    /// entry whose body is being read back from the log (the rest follow
    /// it once the read is in).
    pub(super) fn pump(&mut self, now_ms: u64, user: u64) -> bool {
        let (messages_max, bytes_max) = (
            self.limits.inflight_messages_max,
            self.limits.inflight_bytes_max,
        );
        let Some(session) = self.sessions.map.get_mut(&user) else {
            return false;
        };
        let Some(id) = session.conn else {
            self.evict_bodies(user);
            return false;
        };
        let durable = if self.log.is_durable(u64::MAX - 1) {
            u64::MAX
        } else {
            self.log.durable()
        };
        let Some(conn) = super::slot_conn(&mut self.slots, id) else {
            return false;
        };
        let start = session
            .inbox
            .partition_point(|entry| entry.seq <= session.cursor);
        let mut overflow = false;
        let mut read_from = None;
        for entry in session.inbox.range(start..) {
            if entry.lsn > durable {
                break; // Not durable yet: a crash could give its seq away.
            }
            let bytes = entry.item.bytes();
            let window_full = session.inflight >= messages_max
                || (session.inflight > 0 && session.inflight_bytes + bytes > bytes_max);
            if window_full {
                break;
            }
            let redelivery = if entry.seq <= session.redeliver_upto {
                flags::REDELIVERY
            } else {
                0
            };
            let pushed = match &entry.item {
                Item::Message {
                    body: Body::Logged(_) | Body::Loading(_),
                    ..
                } => {
                    // Its body is in the log: read it (and what follows)
                    // back; the rest waits for it, in order.
                    read_from = Some(entry.seq);
                    break;
                }
                Item::Message {
                    from,
                    message_id,
                    body: Body::Resident(frame),
                    ..
                } => conn.outbound.push_deliver_v2(
                    frame,
                    DeliverV2Meta {
                        from: *from,
                        seq: entry.seq,
                        message_id: *message_id,
                        flags: redelivery,
                    },
                ),
                Item::Receipt {
                    message_id,
                    receiver,
                } => conn.outbound.push_message(&Receipt {
                    message_id: *message_id,
                    receiver: *receiver,
                    seq: entry.seq,
                    flags: redelivery,
                }),
            };
            match pushed {
                Ok(()) => {}
                Err(PushError::Closing) => break,
                Err(PushError::Overflow) => {
                    overflow = true;
                    break;
                }
            }
            session.cursor = entry.seq;
            session.sent_max = session.sent_max.max(entry.seq);
            session.inflight += 1;
            session.inflight_bytes += bytes;
            self.stats.deliveries.incr();
        }
        self.note_pushed(id);
        if overflow {
            // Replies piled up behind a reader that does not read: close the
            // connection; the session survives.
            self.cut_slow_consumer(now_ms, id);
            return false;
        }
        if let Some(seq) = read_from {
            self.read_bodies(user, seq);
            return true;
        }
        self.end_read_back_pause(id);
        false
    }

    /// Nothing the window can send waits for the log (any more), or what
    /// it waited for could not be read: the frames behind a resume's
    /// `Hello` go on.
    pub(super) fn end_read_back_pause(&mut self, id: ConnId) {
        if self
            .conn(id)
            .is_some_and(|conn| conn.paused_on == Some(Pause::ReadBack))
        {
            self.unpause(id);
        }
    }

    /// A durable (or ephemeral version-2) connection's `Ack`.
    pub(super) fn ack(&mut self, now_ms: u64, id: ConnId, upto: u64) -> Handled {
        let Some(conn) = self.conn(id) else {
            return Handled::Done;
        };
        let user = conn.user;
        let Some(session) = self.sessions.map.get_mut(&user) else {
            if upto != 0 {
                self.close(now_ms, id, Some((ErrorCodeV2::AckOutOfRange, 0, 0)));
            }
            return Handled::Done;
        };
        if upto > session.sent_max {
            let sent_max = session.sent_max;
            self.close(now_ms, id, Some((ErrorCodeV2::AckOutOfRange, 0, sent_max)));
            return Handled::Done;
        }
        if upto <= session.acked {
            return Handled::Done;
        }
        session.acked = upto;
        session.read_failed = false;
        let (popped, receipts) = session.pop_while(|entry| entry.seq <= upto);
        // Entries acked before their redelivery reached this connection
        // need not be sent again.
        session.cursor = session.cursor.max(upto);
        // A drained inbox gives back what a burst made it grow to.
        if session.inbox.capacity() > INBOX_CAPACITY_KEPT
            && session.inbox.len() < session.inbox.capacity() / 4
        {
            session.inbox.shrink_to(session.inbox.len() * 2);
        }
        self.stats.acked.add(popped);
        self.log_ack(user);
        self.pump(now_ms, user);
        for (sender, message_id) in receipts {
            self.send_receipt(now_ms, sender, message_id, user);
        }
        Handled::Done
    }

    /// `receiver` acked `message_id` from `sender`, who asked for a receipt.
    pub(super) fn send_receipt(
        &mut self,
        now_ms: u64,
        sender: u64,
        message_id: u64,
        receiver: u64,
    ) {
        let target = owner(sender, self.shards);
        if target != self.index {
            let message = MeshMessage::Receipt {
                to: sender,
                message_id,
                receiver,
            };
            self.send_mesh(now_ms, target, message);
            return;
        }
        if self.is_durable(sender) {
            let item = Item::Receipt {
                message_id,
                receiver,
            };
            match self.store(now_ms, sender, item) {
                Ok(seq) => {
                    self.log(&Record::Receipt {
                        user: sender,
                        seq,
                        message_id,
                        receiver,
                        stored_ms: now_ms,
                    });
                    self.seal(now_ms, sender, seq, None);
                }
                Err(_) => self.stats.receipts_dropped.incr(),
            }
            return;
        }
        let Some(&id) = self.users.get(&sender) else {
            // An ephemeral sender that left: nobody to tell.
            self.stats.receipts_dropped.incr();
            return;
        };
        let receipt = Receipt {
            message_id,
            receiver,
            seq: 0,
            flags: 0,
        };
        let conn = self.conn_mut(id).expect("reachable users are in the table");
        let pushed = conn.outbound.push_message(&receipt);
        self.note_pushed(id);
        if pushed == Err(PushError::Overflow) {
            self.cut_slow_consumer(now_ms, id);
        }
    }

    /// Queues `Stored` for a version-2 relay on its sender's connection.
    pub(super) fn push_stored(&mut self, now_ms: u64, id: ConnId, stored: Stored) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let pushed = conn.outbound.push_message(&stored);
        self.note_pushed(id);
        if pushed == Err(PushError::Overflow) {
            self.cut_slow_consumer(now_ms, id);
        }
    }

    /// The lowest refused `message_id` of `from` (its session's), or of its
    /// connection `id` while it is there (an ephemeral sender).
    pub(super) fn message_id_refused(&mut self, from: u64, id: ConnId) -> Option<&mut u64> {
        if let Some(session) = self.sessions.map.get_mut(&from) {
            return Some(&mut session.message_id_refused);
        }
        super::slot_conn(&mut self.slots, id).map(|conn| &mut conn.message_id_refused)
    }

    /// The highest `message_id` the sender of `id` relayed.
    pub(super) fn message_id_high(&mut self, id: ConnId) -> &mut u64 {
        let conn = super::slot_conn(&mut self.slots, id).expect("the sender is in the table");
        match self.sessions.map.get_mut(&conn.user) {
            Some(session) => &mut session.message_id_high,
            None => &mut conn.message_id_high,
        }
    }

    fn arm_sweep(&mut self, now_ms: u64) {
        if self.sessions.next_sweep_ms.is_none() && !self.sessions.map.is_empty() {
            self.sessions.next_sweep_ms = Some(now_ms + SESSION_SWEEP_MS);
            self.deadline_added(now_ms + SESSION_SWEEP_MS);
        }
    }

    /// When the next expiry sweep is due.
    pub(super) fn sweep_deadline(&self) -> Option<u64> {
        self.sessions.next_sweep_ms
    }

    /// [`expire`](Self::expire), when the sweep is due.
    pub(super) fn sweep_sessions(&mut self, now_ms: u64) {
        if self.sessions.next_sweep_ms.is_none_or(|due| due > now_ms) {
            return;
        }
        self.expire(now_ms);
    }

    /// Expires sessions detached for `session_expiry_ms` and entries
    /// stored `message_ttl_ms` ago, and arms the next sweep.
    fn expire(&mut self, now_ms: u64) {
        let (expiry, ttl) = (self.limits.session_expiry_ms, self.limits.message_ttl_ms);
        let mut expired_sessions = 0;
        let mut expired_entries = 0;
        let mut resumed = Vec::new();
        let mut gone = Vec::new();
        let welcoming = &self.sessions.welcoming;
        self.sessions.map.retain(|&user, session| {
            let unattached = session.conn.is_none() && !welcoming.contains_key(&user);
            if unattached && session.detached_ms.saturating_add(expiry) <= now_ms {
                expired_sessions += 1;
                expired_entries += session.inbox.len() as u64;
                gone.push(user);
                return false;
            }
            let (popped, _) = session.pop_while(|entry| entry.expired(ttl, now_ms));
            if popped > 0 {
                expired_entries += popped;
                resumed.push(user);
            }
            true
        });
        for user in gone {
            self.log(&Record::SessionExpired { user });
        }
        self.stats.sessions_expired.add(expired_sessions);
        self.refresh_session_gauges();
        self.stats.messages_expired.add(expired_entries);
        // Expired entries freed window space.
        for user in resumed {
            self.pump(now_ms, user);
        }
        self.sessions.next_sweep_ms = None;
        self.arm_sweep(now_ms);
    }

    /// Sets the session and inbox gauges (`sessions_durable`,
    /// `sessions_online`, `inbox_entries`, `inbox_bytes`) from the sessions
    /// as they are now: the expiry sweep does it once a second, the driver
    /// before each stats line and at exit. One pass over the sessions.
    pub fn refresh_session_gauges(&self) {
        let (mut online, mut entries, mut bytes) = (0, 0, 0);
        for session in self.sessions.map.values() {
            online += u64::from(session.conn.is_some());
            entries += session.inbox.len() as u64;
            bytes += session.inbox_bytes;
        }
        self.stats
            .sessions_durable
            .set(self.sessions.map.len() as u64);
        self.stats.sessions_online.set(online);
        self.stats.inbox_entries.set(entries);
        self.stats.inbox_bytes.set(bytes);
    }

    /// Sessions on this shard (durable, connected or not).
    pub fn durable_sessions(&self) -> usize {
        self.sessions.map.len()
    }

    /// Entries waiting in `user`'s inbox (for tests and counters).
    pub fn inbox_len(&self, user: u64) -> Option<usize> {
        self.sessions
            .map
            .get(&user)
            .map(|session| session.inbox.len())
    }
}

// ----- retry dedup where the store happens --------------------------------

impl<Io> Shard<Io> {
    /// True when `receiver`'s inbox already stored `message_id` (or a later
    /// one) from `from` within the dedup window, and never refused it: a
    /// retry.
    pub(super) fn is_retry(&self, receiver: u64, from: u64, message_id: u64, now_ms: u64) -> bool {
        let window = self.limits.dedup_window_ms;
        if message_id == 0 || window == 0 {
            return false;
        }
        self.sessions
            .map
            .get(&receiver)
            .and_then(|session| session.recent.get(&from))
            .is_some_and(|mark| {
                (mark.low..=mark.high.min(mark.cap)).contains(&message_id)
                    && mark.at_ms.saturating_add(window) > now_ms
            })
    }

    /// Remembers that `receiver` stored `message_id` from `from`.
    pub(super) fn mark_stored(&mut self, receiver: u64, from: u64, message_id: u64, at_ms: u64) {
        self.raise_mark(receiver, from, message_id, at_ms, message_id);
    }

    /// [`mark_stored`](Self::mark_stored) from the log at start-up: the
    /// log holds what this inbox stored, so the mark knows every id up to
    /// its high.
    fn mark_recovered(&mut self, receiver: u64, from: u64, message_id: u64, at_ms: u64) {
        self.raise_mark(receiver, from, message_id, at_ms, 0);
    }

    /// Raises `receiver`'s mark of `from` to `message_id` stored at
    /// `at_ms`; a new mark knows ids from `low` on.
    fn raise_mark(&mut self, receiver: u64, from: u64, message_id: u64, at_ms: u64, low: u64) {
        self.mark(receiver, from, message_id, low, |mark| {
            mark.high = mark.high.max(message_id);
            mark.at_ms = mark.at_ms.max(at_ms);
        });
    }

    /// Remembers that `receiver` refused `message_id` from `from`: a later
    /// message stored from `from` must not make a retry of it look stored,
    /// so nothing from that id on is taken for a retry any more (a copy
    /// stored twice is dropped by the client, a refused one would be lost).
    pub(super) fn mark_refused(&mut self, receiver: u64, from: u64, message_id: u64) {
        self.mark(receiver, from, message_id, message_id, |mark| {
            mark.cap = mark.cap.min(message_id - 1);
        });
    }

    /// Updates `receiver`'s mark of `from` with `f`, creating it (knowing
    /// ids from `low` on) when the inbox has none.
    fn mark(
        &mut self,
        receiver: u64,
        from: u64,
        message_id: u64,
        low: u64,
        f: impl FnOnce(&mut RetryMark),
    ) {
        if message_id == 0 || self.limits.dedup_window_ms == 0 {
            return;
        }
        let Some(session) = self.sessions.map.get_mut(&receiver) else {
            return;
        };
        f(session.recent.entry(from).or_insert(RetryMark {
            high: 0,
            at_ms: 0,
            cap: u64::MAX,
            low,
        }));
        if session.recent.len() > RETRY_DEDUP_SENDERS_MAX {
            // Never the mark just made or changed: among the others, the
            // one whose latest store is the oldest.
            let oldest = session
                .recent
                .iter()
                .filter(|&(&sender, _)| sender != from)
                .min_by_key(|(_, mark)| mark.at_ms)
                .map(|(&sender, _)| sender)
                .expect("more than one");
            session.recent.remove(&oldest);
        }
    }
}

// ----- the log's view of sessions: floors, snapshots, recovery ----------

impl<Io> Shard<Io> {
    /// `user`'s ack floor and highest relayed `message_id`.
    pub(super) fn session_floor(&self, user: u64) -> Option<(u64, u64)> {
        let session = self.sessions.map.get(&user)?;
        Some((session.acked, session.message_id_high))
    }

    /// What the live sessions would take in a snapshot (errs high).
    pub(super) fn sessions_live_bytes(&self) -> u64 {
        self.sessions
            .map
            .values()
            .map(|session| 256 + session.inbox_bytes + session.inbox.len() as u64 * 96)
            .sum()
    }

    /// The records that rebuild every live session and entry: what a
    /// compaction writes. Entries of one relay share one `Message` record,
    /// as they share one body.
    pub(super) fn snapshot_records(&mut self) -> Vec<SnapshotItem> {
        let mut records = vec![Record::IdsReserved {
            next: self.ids.reserved(),
        }];
        // Every session first: entries of one relay share one `Message`
        // record, which may name sessions met later.
        for (&user, session) in &self.sessions.map {
            records.push(Record::SessionCreated {
                user,
                token: session.tokens[0],
                at_ms: session.detached_ms,
            });
            records.push(Record::SessionTokens {
                user,
                current: session.tokens[0],
                previous: session.tokens[1],
            });
            // A session whose welcome waits for the log has no connection
            // yet but is not detached: `welcome_done` logs its detach if
            // the client left meanwhile.
            if session.conn.is_none() && !self.sessions.welcoming.contains_key(&user) {
                records.push(Record::SessionDetached {
                    user,
                    at_ms: session.detached_ms,
                });
            }
            if session.acked > 0 {
                records.push(Record::Acked {
                    user,
                    upto: session.acked,
                });
            }
            if session.next_seq > session.acked.saturating_add(1) {
                // Sequences handed out past the floor: entries that expired
                // (TTL) leave nothing else saying so.
                records.push(Record::NextSeq {
                    user,
                    next: session.next_seq,
                });
            }
            if session.message_id_high > 0 {
                records.push(Record::SenderHigh {
                    user,
                    message_id: session.message_id_high,
                });
            }
            for (&from, mark) in &session.recent {
                records.push(Record::DedupMark {
                    user,
                    from,
                    message_id: mark.high.min(mark.cap),
                    at_ms: mark.at_ms,
                });
            }
        }
        // Then the entries. Entries of one relay share one record: the
        // record they came from (or their shared body, without a log
        // position). A record whose body is in memory for none of them is
        // copied from the current file as it is.
        struct Group {
            from: u64,
            message_id: u64,
            receipt: bool,
            stored_ms: u64,
            receivers: Vec<(u64, u64)>,
            body: Option<Bytes>,
            pos: Option<LogPos>,
        }
        let mut groups: Vec<Group> = Vec::new();
        let mut index: HashMap<(bool, u64), usize> = HashMap::new();
        let durable = self.log.appended();
        for (&user, session) in &mut self.sessions.map {
            for entry in &mut session.inbox {
                // Whatever was not durable becomes durable with the snapshot.
                entry.lsn = entry.lsn.min(durable);
                match &entry.item {
                    Item::Message {
                        from,
                        message_id,
                        body,
                        receipt,
                        pos,
                    } => {
                        let resident = match body {
                            Body::Resident(frame) => Some(frame),
                            Body::Logged(_) | Body::Loading(_) => None,
                        };
                        let key = match (pos, resident) {
                            (Some(pos), _) => (true, pos.offset),
                            (None, Some(frame)) => (false, frame.as_ptr() as u64),
                            (None, None) => unreachable!("a body only in the log has a position"),
                        };
                        let group = *index.entry(key).or_insert_with(|| {
                            groups.push(Group {
                                from: *from,
                                message_id: *message_id,
                                receipt: *receipt,
                                stored_ms: entry.stored_ms,
                                receivers: Vec::new(),
                                body: None,
                                pos: *pos,
                            });
                            groups.len() - 1
                        });
                        let group = &mut groups[group];
                        group.receivers.push((user, entry.seq));
                        if group.body.is_none() {
                            group.body = resident.map(SharedBody::body);
                        }
                    }
                    Item::Receipt {
                        message_id,
                        receiver,
                    } => records.push(Record::Receipt {
                        user,
                        seq: entry.seq,
                        message_id: *message_id,
                        receiver: *receiver,
                        stored_ms: entry.stored_ms,
                    }),
                }
            }
        }
        let mut items: Vec<SnapshotItem> = records
            .into_iter()
            .map(|record| SnapshotItem::Encode(record, None))
            .collect();
        for group in groups {
            items.push(match (group.body, group.pos) {
                (Some(body), pos) => SnapshotItem::Encode(
                    Record::Message {
                        from: group.from,
                        message_id: group.message_id,
                        receipt: group.receipt,
                        stored_ms: group.stored_ms,
                        receivers: group.receivers,
                        body,
                    },
                    pos,
                ),
                (None, Some(pos)) => SnapshotItem::Copy(pos),
                (None, None) => unreachable!("a body only in the log has a position"),
            });
        }
        items
    }

    /// Applies one record read back from the log at start-up, found at
    /// `pos` in the file of the generation being recovered.
    pub fn recover(&mut self, now_ms: u64, record: Record, pos: LogPos) {
        match record {
            Record::IdsReserved { next } => self.ids.resume_at(next),
            Record::SessionCreated { user, token, at_ms } => {
                let mut session = DurableSession::new(&[0; RESUME_TOKEN_BYTES], at_ms);
                session.tokens = [token, [0; 32]];
                session.cursor = 0;
                // Connected at the crash: its expiry counts from now.
                session.detached_ms = now_ms;
                self.sessions.map.insert(user, session);
                self.ids.resume_above(user);
            }
            Record::SessionTokens {
                user,
                current,
                previous,
            } => {
                if let Some(session) = self.sessions.map.get_mut(&user) {
                    session.tokens = [current, previous];
                    // Logged by a resume: the session was connected after
                    // any detach before it, so unless it detaches later in
                    // the log its expiry counts from now (the restart).
                    session.detached_ms = now_ms;
                }
            }
            Record::SessionDetached { user, at_ms } => {
                if let Some(session) = self.sessions.map.get_mut(&user) {
                    session.detached_ms = at_ms;
                }
            }
            Record::SessionExpired { user } => {
                self.sessions.map.remove(&user);
            }
            Record::Message {
                from,
                message_id,
                receipt,
                stored_ms,
                receivers,
                body,
            } => {
                // The body stays in the log: read back when it is sent.
                let len = u32::try_from(body.len()).expect("a body fits u32");
                for &(user, _) in &receivers {
                    self.mark_recovered(user, from, message_id, stored_ms);
                }
                for (user, seq) in receivers {
                    let item = Item::Message {
                        from,
                        message_id,
                        body: Body::Logged(len),
                        receipt,
                        pos: Some(pos),
                    };
                    self.recover_entry(user, seq, stored_ms, item);
                }
            }
            Record::Receipt {
                user,
                seq,
                message_id,
                receiver,
                stored_ms,
            } => {
                let item = Item::Receipt {
                    message_id,
                    receiver,
                };
                self.recover_entry(user, seq, stored_ms, item);
            }
            Record::Acked { user, upto } => {
                if let Some(session) = self.sessions.map.get_mut(&user) {
                    // Nothing is in flight during recovery (cursor 0).
                    session.acked = session.acked.max(upto);
                    let acked = session.acked;
                    // Sequences up to the floor were handed out: never
                    // again (a snapshot keeps no entry below it).
                    session.next_seq = session.next_seq.max(acked.saturating_add(1));
                    session.pop_while(|entry| entry.seq <= acked);
                }
            }
            Record::SenderHigh { user, message_id } => {
                if let Some(session) = self.sessions.map.get_mut(&user) {
                    session.message_id_high = session.message_id_high.max(message_id);
                }
            }
            Record::DedupMark {
                user,
                from,
                message_id,
                at_ms,
            } => self.mark_recovered(user, from, message_id, at_ms),
            Record::NextSeq { user, next } => {
                if let Some(session) = self.sessions.map.get_mut(&user) {
                    session.next_seq = session.next_seq.max(next);
                }
            }
            Record::SnapshotEnd => {}
        }
    }

    fn recover_entry(&mut self, user: u64, seq: u64, stored_ms: u64, item: Item) {
        let Some(session) = self.sessions.map.get_mut(&user) else {
            return; // The session expired later in the log.
        };
        if seq <= session.acked {
            return; // Acked already.
        }
        // A snapshot groups entries by relay, so one session's entries may
        // come out of `seq` order: keep the inbox sorted. The log itself is
        // in order: an entry after the last one goes at the end (no search,
        // whose cache misses were most of a recovery's time).
        let at = if session.inbox.back().is_none_or(|last| last.seq < seq) {
            session.inbox.len()
        } else {
            session.inbox.partition_point(|entry| entry.seq < seq)
        };
        if session.inbox.get(at).is_some_and(|entry| entry.seq == seq) {
            return; // Already there.
        }
        session.inbox_bytes += item.bytes();
        session.next_seq = session.next_seq.max(seq.saturating_add(1));
        session.inbox.insert(
            at,
            Entry {
                seq,
                stored_ms,
                lsn: 0,
                item,
            },
        );
    }

    /// Recovery is over: every stored entry may have been sent before the
    /// crash (entries go out only once durable), so acks up to the last
    /// one are valid; sessions wait for their clients.
    pub fn finish_recovery(&mut self, now_ms: u64, lsn: u64, file_bytes: u64) {
        for session in self.sessions.map.values_mut() {
            session.sent_max = session.next_seq - 1;
            session.redeliver_upto = session.sent_max;
            session.cursor = session.acked;
            session.inflight = 0;
            session.inflight_bytes = 0;
        }
        self.log_recovered(lsn, file_bytes);
        self.stats.log_bytes.set(file_bytes);
        // Downtime counts: sessions and entries whose time ran out while
        // the hub was down expire now, before anyone can resume them.
        self.expire(now_ms);
        let next = self.ids.reserve_block();
        self.log(&Record::IdsReserved { next });
    }
}

/// What recovery must bring back of one durable session (the recovery
/// tests compare it before a crash and after the restart).
#[cfg(test)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SessionDigest {
    pub(super) tokens: [TokenHash; 2],
    pub(super) acked: u64,
    pub(super) next_seq: u64,
    pub(super) message_id_high: u64,
    /// `None` while connected.
    pub(super) detached_ms: Option<u64>,
    /// `(seq, stored_ms, from or 0, message_id, body bytes, receiver or 0)`
    /// of each entry not expired at the time the digest is taken.
    pub(super) entries: Vec<(u64, u64, u64, u64, u64, u64)>,
}

#[cfg(test)]
impl<Io> Shard<Io> {
    /// Every durable session's [`SessionDigest`] at `now_ms`.
    pub(super) fn durable_digest(
        &self,
        now_ms: u64,
    ) -> std::collections::BTreeMap<u64, SessionDigest> {
        let ttl = self.limits.message_ttl_ms;
        let live = |entry: &&Entry| !entry.expired(ttl, now_ms);
        self.sessions
            .map
            .iter()
            .map(|(&user, session)| {
                let entries = session
                    .inbox
                    .iter()
                    .filter(live)
                    .map(|entry| match &entry.item {
                        Item::Message {
                            from,
                            message_id,
                            body,
                            ..
                        } => (
                            entry.seq,
                            entry.stored_ms,
                            *from,
                            *message_id,
                            body.len(),
                            0,
                        ),
                        Item::Receipt {
                            message_id,
                            receiver,
                        } => (entry.seq, entry.stored_ms, 0, *message_id, 0, *receiver),
                    })
                    .collect();
                let digest = SessionDigest {
                    tokens: session.tokens,
                    acked: session.acked,
                    next_seq: session.next_seq,
                    message_id_high: session.message_id_high,
                    detached_ms: session.conn.is_none().then_some(session.detached_ms),
                    entries,
                };
                (user, digest)
            })
            .collect()
    }
}
