//! Durable sessions (protocol version 2, docs/protocol-v2.md): `Hello`,
//! resume tokens, takeover, the per-session inbox with its sequence
//! numbers, the inflight window, cumulative acks, redelivery on resume,
//! receipts, and expiry of sessions and entries. In memory: the store
//! behind these types is the shard itself.
//!
//! Per session the hub keeps a few counters and the inbox; per stored
//! entry, [`ENTRY_BYTES`] plus its body, which is shared (one `Deliver`
//! frame per relay and shard, whatever the fan-out).

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use relayhub_protocol::{
    flags, preface_for, ArchivedHello, DeliverV2Meta, ErrorCodeV2, Receipt, ResumeToken, Stored,
    WelcomeV2, RESUME_TOKEN_BYTES,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{frames::Handled, Event, MeshMessage, Shard};
use crate::{
    conn::{ConnId, ConnState, SessionKind},
    ids::owner,
    outbound::{deliver_body_len, PushError},
};

/// Bytes of one inbox entry besides its (shared) body.
pub const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

/// Bytes of one durable session's state besides its inbox entries.
pub const SESSION_BYTES: usize = std::mem::size_of::<DurableSession>() + 32;

/// How often a shard looks for expired sessions and entries: expiry happens
/// at most this late.
pub const SESSION_SWEEP_MS: u64 = 1_000;

/// A resume token as the hub keeps it: its SHA-256.
type TokenHash = [u8; 32];

/// One entry of an inbox.
pub(super) struct Entry {
    seq: u64,
    stored_ms: u64,
    item: Item,
}

/// What an inbox entry holds.
pub(super) enum Item {
    /// A relayed message: the relay's shared version-1 `Deliver` frame (the
    /// body is sent from it as a `DeliverV2`).
    Message {
        from: u64,
        message_id: u64,
        frame: Bytes,
        receipt: bool,
    },
    /// A receipt for a message this session sent.
    Receipt { message_id: u64, receiver: u64 },
}

impl Item {
    /// Body bytes, for the inbox and inflight byte limits.
    fn bytes(&self) -> u64 {
        match self {
            Item::Message { frame, .. } => deliver_body_len(frame) as u64,
            Item::Receipt { .. } => 0,
        }
    }
}

/// One durable session, on the shard that owns its user id.
pub(super) struct DurableSession {
    /// The current and the previous token's hash (zero: none).
    tokens: [TokenHash; 2],
    /// The connection it is attached to.
    conn: Option<ConnId>,
    /// Entries not yet acked (nor expired), in `seq` order.
    inbox: VecDeque<Entry>,
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
    inflight: u64,
    inflight_bytes: u64,
    /// The highest `message_id` this session relayed (retry dedup).
    pub(super) message_id_high: u64,
    /// When its last connection closed.
    detached_ms: u64,
}

/// The shard's durable sessions.
#[derive(Default)]
pub(super) struct Sessions {
    pub(super) map: HashMap<u64, DurableSession>,
    next_sweep_ms: Option<u64>,
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
            detached_ms: now_ms,
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
            let user = self.ids.allocate();
            let durable = hello.durable && self.sessions.map.len() < self.limits.sessions_max;
            let token = if durable {
                let token = new_token();
                self.sessions
                    .map
                    .insert(user, DurableSession::new(&token, now_ms));
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
            self.attach(now_ms, id, user, kind, token, request, false);
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
        if let Some(old) = session.conn.take() {
            self.stats.takeovers.incr();
            self.close(now_ms, old, Some((ErrorCodeV2::SessionTakenOver, 0, 0)));
        }
        self.stats.sessions_resumed.incr();
        self.attach(
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

    /// Welcomes `id` as `user`, queues the hub's preface and `WelcomeV2`,
    /// and for a durable session starts sending its inbox.
    #[allow(clippy::too_many_arguments)]
    fn attach(
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
        let conn = self
            .conn_mut(id)
            .expect("a connection saying Hello is in the table");
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
        if let Some(session) = self.sessions.map.get_mut(&user) {
            session.conn = Some(id);
            session.cursor = session.acked;
            session.inflight = 0;
            session.inflight_bytes = 0;
            session.redeliver_upto = session.sent_max;
            self.pump(now_ms, user);
        }
        self.arm_sweep(now_ms);
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
            dedup_window_ms: u64::MAX,
            content_dedup_window_ms: 0,
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
            }
        }
    }

    /// Whether `user` has a durable session on this shard.
    pub(super) fn is_durable(&self, user: u64) -> bool {
        self.sessions.map.contains_key(&user)
    }

    /// Appends an entry to `user`'s inbox and sends it if the window
    /// allows. `InboxFull` past the inbox limits.
    pub(super) fn store(&mut self, now_ms: u64, user: u64, item: Item) -> Result<(), ErrorCodeV2> {
        let (messages_max, bytes_max) =
            (self.limits.inbox_messages_max, self.limits.inbox_bytes_max);
        let session = self
            .sessions
            .map
            .get_mut(&user)
            .expect("store to a durable session");
        let bytes = item.bytes();
        if session.inbox.len() as u64 >= messages_max || session.inbox_bytes + bytes > bytes_max {
            self.stats.inbox_full.incr();
            return Err(ErrorCodeV2::InboxFull);
        }
        let seq = session.next_seq;
        session.next_seq += 1;
        session.inbox_bytes += bytes;
        session.inbox.push_back(Entry {
            seq,
            stored_ms: now_ms,
            item,
        });
        self.stats.stored.incr();
        self.pump(now_ms, user);
        Ok(())
    }

    /// Sends `user`'s inbox entries after the cursor while the inflight
    /// window allows (one entry always fits).
    pub(super) fn pump(&mut self, now_ms: u64, user: u64) {
        let (messages_max, bytes_max) = (
            self.limits.inflight_messages_max,
            self.limits.inflight_bytes_max,
        );
        let Some(session) = self.sessions.map.get_mut(&user) else {
            return;
        };
        let Some(id) = session.conn else {
            return;
        };
        let Some(conn) = super::slot_conn(&mut self.slots, id) else {
            return;
        };
        let start = session
            .inbox
            .partition_point(|entry| entry.seq <= session.cursor);
        let mut overflow = false;
        for entry in session.inbox.range(start..) {
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
                    from,
                    message_id,
                    frame,
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
        let (popped, receipts) = session.pop_while(|entry| entry.seq <= upto);
        // Entries acked before their redelivery reached this connection
        // need not be sent again.
        session.cursor = session.cursor.max(upto);
        self.stats.acked.add(popped);
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
            if self.store(now_ms, sender, item).is_err() {
                self.stats.receipts_dropped.incr();
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
            self.events.push_back(Event::TimerChanged);
        }
    }

    /// When the next expiry sweep is due.
    pub(super) fn sweep_deadline(&self) -> Option<u64> {
        self.sessions.next_sweep_ms
    }

    /// Expires sessions detached for `session_expiry_ms` and entries
    /// stored `message_ttl_ms` ago, when the sweep is due.
    pub(super) fn sweep_sessions(&mut self, now_ms: u64) {
        if self.sessions.next_sweep_ms.is_none_or(|due| due > now_ms) {
            return;
        }
        let (expiry, ttl) = (self.limits.session_expiry_ms, self.limits.message_ttl_ms);
        let mut expired_sessions = 0;
        let mut expired_entries = 0;
        let mut resumed = Vec::new();
        self.sessions.map.retain(|&user, session| {
            if session.conn.is_none() && session.detached_ms.saturating_add(expiry) <= now_ms {
                expired_sessions += 1;
                expired_entries += session.inbox.len() as u64;
                return false;
            }
            if ttl > 0 {
                let (popped, _) =
                    session.pop_while(|entry| entry.stored_ms.saturating_add(ttl) <= now_ms);
                if popped > 0 {
                    expired_entries += popped;
                    resumed.push(user);
                }
            }
            true
        });
        self.stats.sessions_expired.add(expired_sessions);
        self.stats.messages_expired.add(expired_entries);
        // Expired entries freed window space.
        for user in resumed {
            self.pump(now_ms, user);
        }
        self.sessions.next_sweep_ms = None;
        self.arm_sweep(now_ms);
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
