//! Version 2 in the `hub_session` harness: the model of sessions, messages
//! and relay attempts that the clients opened with `Op::Hello` keep, and
//! the oracle of docs/protocol.md's sessions, inboxes, acks, redelivery and
//! `Stored` (see docs/fuzzing.md, "The version-2 model").
//!
//! What the model knows comes only from what a client can know (the bytes
//! it sent and read) and from the core's counters around each call (which
//! call handled a resume, and whether it was accepted). Expiry is read off
//! the core (`inbox_len`) and checked against the model's clock: never
//! early, never missed by more than a sweep.
//!
//! Checked, for clients that sent only harness-built frames:
//!
//! - A `WelcomeV2` answers the `Hello` (its request, the user the core
//!   welcomed, owned by its shard, the hub's limits); a new session's id is
//!   fresh, a durable `Hello` gets an ephemeral session only at the
//!   sessions limit; a resume names the session, is durable and rotates
//!   the token.
//! - A resume is accepted exactly when the session exists and the token is
//!   its current or previous one (the model follows the rotation); else
//!   the client reads `ResumeRejected` with the `Hello`'s request, and
//!   nothing else. An accepted resume of a connected session is a takeover:
//!   the old connection's last frame is `SessionTakenOver`.
//! - `DeliverV2`: an ephemeral session gets `seq` 0 and no flags; a durable
//!   one strictly increasing `seq` per connection, `REDELIVERY` only on a
//!   resumed connection and only before its first new entry, and a `seq`
//!   read on an earlier connection of the session never comes again
//!   without `REDELIVERY`; one `seq` always carries the same entry. Every
//!   body is the sender's, byte for byte, with its `message_id`.
//! - Client-side dedup as docs/protocol.md describes it (drop `seq` at or
//!   below the highest seen, then `(from, message_id)` seen): a copy
//!   dropped by id is allowed only when the hub may fail to recognise the
//!   retry (`dedup_window_ms` 0, or the window passed); what is handed on
//!   is each message at most once (`message_id` 0: once per entry), and
//!   messages relayed once keep their per-(sender, receiver) order.
//! - `Stored` answers a handled attempt of that connection once, after its
//!   errors, with its `message_id`; `duplicate` comes with no error. The
//!   receiver errors name a receiver of that relay, at most once per
//!   occurrence, with a code that fits it: `InboxFull` only for a durable
//!   receiver, `ReceiverDropped` only for an ephemeral one,
//!   `UnknownReceiver` for a durable one only once it expired,
//!   `DuplicateContent` only with content dedup on and a body sent to that
//!   receiver before, `StorageFull` only for a durable receiver with the
//!   log on (the `Disk` preset: its share of the disk used); none of
//!   them closes the connection. Over-limit relays get their one error and
//!   no `Stored`.
//! - `AckOutOfRange` only after an ack above the highest `seq` read, with
//!   a detail below it; acks at or below it never close anything.
//! - No loss: at the end every durable session is resumed (with the latest
//!   token the clients know) and acked until its inbox is empty; then
//!   every message whose `Stored` a sender read, without an error about a
//!   durable receiver, has been handed on to that receiver, unless the
//!   session expired, the entry's lifetime may have passed, the client
//!   acked beyond what it had read, or raw bytes spoke for the session.

use std::collections::{hash_map::DefaultHasher, BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use bytes::BytesMut;
use relayhub_protocol::{
    encode, flags, preface_for, Ack, DeliverV2, ErrorCodeV2, Hello, HubMessageV2, Receipt,
    RelayV2Ref, ResumeToken, Stored, WelcomeV2, BODY_BYTES_MAX, RECEIVERS_MAX, VERSION_2,
};
use relayhub_server::{conn::ConnState, ids::owner, shard::SESSION_SWEEP_MS};

use super::{
    tally, AckUpto, Body, Counts, Harness, HelloKind, MessageIdChoice, Target, TokenChoice, Wire,
};

/// What a version-2 client's `Hello` asked.
#[derive(Clone, Copy, Debug)]
pub(super) enum HelloSent {
    New { durable: bool },
    Resume { user: u64, token: ResumeToken },
}

/// What the core made of the `Hello`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Pending,
    Welcomed,
    Rejected,
}

/// One version-2 connection as the model knows it.
#[derive(Debug)]
pub(super) struct Conn {
    hello_request: u64,
    hello: HelloSent,
    outcome: Outcome,
    /// The durable session it carries (a resume: the one it asks for).
    session: Option<usize>,
    /// Its place among the session's connections (welcome order).
    generation: usize,
    resumed: bool,
    /// Frames read (after the hub's preface).
    pub(super) frames_read: usize,
    /// The highest `seq` read on this connection.
    last_seq: u64,
    /// A `DeliverV2` or `Receipt` without `REDELIVERY` was read.
    saw_new: bool,
    /// A resume took the session over: `SessionTakenOver` must end it.
    taken_over: bool,
    /// Acks above the highest `seq` the session had read.
    blind_acks: Vec<u64>,
    ack_rejected: bool,
    /// Keys of the messages with an id it sent before it had a session.
    sent_keys: Vec<u64>,
}

/// What one inbox `seq` carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Carried {
    Message {
        from: u64,
        message_id: u64,
        key: u64,
    },
    Receipt {
        message_id: u64,
        receiver: u64,
    },
}

/// One durable session (created when the core welcomed a durable `Hello`).
#[derive(Debug)]
pub(super) struct Session {
    user: u64,
    shard: usize,
    /// The hub's current token, when a client has read it.
    current: Option<ResumeToken>,
    /// The hub's previous token (the one the last resume presented).
    previous: Option<ResumeToken>,
    /// Every token the clients read, in order.
    known: Vec<ResumeToken>,
    /// The client whose connection the core attached it to.
    holder: Option<usize>,
    /// When its last connection closed, while it has none.
    detached_ms: Option<u64>,
    /// The core dropped it (checked not early).
    expired: bool,
    /// Its connections, in welcome order.
    conns: Vec<usize>,
    /// Client-side dedup: the highest `seq` seen, the ids handed on.
    high_seq: u64,
    handed_ids: HashSet<(u64, u64)>,
    /// Every `seq` read: what it carries and who read it (generation,
    /// flagged `REDELIVERY`).
    seqs: HashMap<u64, (Carried, Vec<(usize, bool)>)>,
    /// Per sending connection (its client index): the key of the last
    /// message relayed once that was handed on (order). Per connection,
    /// not per sender: the old and the new connection of a takeover may
    /// both send, and the hub handles them in either order.
    order: HashMap<usize, u64>,
    /// The highest ack any of its connections sent.
    max_ack: u64,
    /// Raw bytes spoke for it.
    tainted: bool,
    /// The final drain emptied its inbox.
    drained: bool,
    /// Keys of the messages with an id it sent (for retries).
    sent_keys: Vec<u64>,
}

/// One message (a relay and its retries); its key is its first attempt's
/// request id, which starts its body.
#[derive(Debug)]
struct Message {
    sender: usize,
    message_id: u64,
    receipt: bool,
    receivers: Vec<u64>,
    body: Vec<u8>,
    attempts: Vec<u64>,
    first_handled_ms: Option<u64>,
    /// When the hub first handled it, in handling order.
    first_handled_order: Option<u64>,
    /// Receiver -> entries a `Stored` promised.
    promised: BTreeMap<u64, usize>,
    /// Receiver -> copies handed on after client-side dedup.
    handed: BTreeMap<u64, usize>,
}

impl Message {
    fn occurrences(&self, receiver: u64) -> usize {
        self.receivers.iter().filter(|&&r| r == receiver).count()
    }
}

/// One `RelayV2` frame sent.
#[derive(Debug)]
struct Attempt {
    key: u64,
    client: usize,
    handled: bool,
    /// Receiver -> errors read about it, on the attempt's connection.
    errors: BTreeMap<u64, usize>,
    /// `Stored` read (its `duplicate`), or the whole relay refused.
    answered: bool,
    /// Over a limit: the decoder's error and no `Stored`.
    refused: Option<ErrorCodeV2>,
}

/// The model.
#[derive(Default)]
pub(super) struct Model {
    sessions: Vec<Session>,
    messages: HashMap<u64, Message>,
    attempts: HashMap<u64, Attempt>,
    next_message_id: u64,
    /// Unmodelled durable users (raw clients): the highest `seq` seen.
    raw_high: HashMap<u64, u64>,
    /// (receiver, body hash) -> `RelayV2` occurrences sent.
    contents: HashMap<(u64, u64), usize>,
    /// Every user the core gave a durable session, modelled or not.
    durable_users: HashSet<u64>,
    /// Messages handled so far (their handling order).
    handled_count: u64,
}

fn body_hash(body: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    body.hash(&mut hasher);
    hasher.finish()
}

fn frame<M: relayhub_protocol::Message>(message: &M) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(message, &mut out).expect("fits");
    out.to_vec()
}

fn key_of(body: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(body.get(..8)?.try_into().ok()?))
}

impl Model {
    /// The hub was killed and restarted: no session has a connection, and
    /// one that had counts its expiry from the restart (docs/protocol.md,
    /// "Sessions"); one detached before keeps its time.
    pub(super) fn restart(&mut self, now: u64) {
        for session in &mut self.sessions {
            session.holder = None;
            session.detached_ms.get_or_insert(now);
        }
    }

    /// The hub read and handled frame `request`.
    pub(super) fn handled(&mut self, request: u64, now: u64) {
        if let Some(attempt) = self.attempts.get_mut(&request) {
            attempt.handled = true;
            let message = self.messages.get_mut(&attempt.key).expect("recorded");
            message.first_handled_ms.get_or_insert(now);
            if message.first_handled_order.is_none() {
                self.handled_count += 1;
                message.first_handled_order = Some(self.handled_count);
            }
        }
    }

    /// Client `c`'s connection started closing.
    pub(super) fn conn_closing(&mut self, c: usize, session: Option<usize>, now: u64) {
        if let Some(s) = session {
            let session = &mut self.sessions[s];
            if session.holder == Some(c) {
                session.holder = None;
                session.detached_ms = Some(now);
            }
        }
    }

    fn session_of_user(&self, user: u64) -> Option<usize> {
        (user != 0)
            .then(|| self.sessions.iter().position(|s| s.user == user))
            .flatten()
    }

    /// The core welcomed `user` with a durable session.
    pub(super) fn durable_user(&mut self, user: u64) {
        self.durable_users.insert(user);
    }
}

impl Harness {
    fn conn(&self, c: usize) -> &Conn {
        self.clients[c].v2.as_deref().expect("a version-2 client")
    }

    fn conn_mut(&mut self, c: usize) -> &mut Conn {
        self.clients[c]
            .v2
            .as_deref_mut()
            .expect("a version-2 client")
    }

    /// The session client `c` speaks for, if any.
    fn session_of(&self, c: usize) -> Option<usize> {
        self.clients[c].v2.as_ref().and_then(|conn| conn.session)
    }

    /// A version-1 relay to `user` may lack deliveries for reasons of
    /// durable sessions: a session the model does not follow, or one that
    /// did not get to the end of the drain cleanly.
    pub(super) fn durable_excused(&self, user: u64) -> bool {
        match self.model.session_of_user(user) {
            Some(s) => {
                let session = &self.model.sessions[s];
                self.tainted(s) || !session.drained || session.expired || self.session_blind(s)
            }
            None => self.model.durable_users.contains(&user),
        }
    }

    /// Raw bytes spoke for session `s` (one of its connections sent them,
    /// at any time).
    fn tainted(&self, s: usize) -> bool {
        let session = &self.model.sessions[s];
        session.tainted || session.conns.iter().any(|&c| !self.clients[c].clean)
    }

    /// Whether the session acked beyond what it had read, and the hub took
    /// it (an ack that closed with `AckOutOfRange` was the last one).
    fn session_blind(&self, s: usize) -> bool {
        self.model.sessions[s].conns.iter().any(|&c| {
            let conn = self.conn(c);
            let taken = conn.blind_acks.len() - usize::from(conn.ack_rejected);
            taken > 0
        })
    }

    // ----- what clients send ------------------------------------------------

    /// `Op::Hello`: a new client on `shard` sends the version-2 preface and
    /// a `Hello`.
    pub(super) fn hello(&mut self, shard: usize, kind: HelloKind, wire: Wire) {
        let Some(c) = self.connect_any(shard) else {
            return;
        };
        let request = self.next_request;
        self.next_request += 1;
        let (hello, sent, session) = match kind {
            HelloKind::New { durable } => (
                Hello::new_session(request, durable),
                HelloSent::New { durable },
                None,
            ),
            HelloKind::Resume { session, token } => {
                if self.model.sessions.is_empty() {
                    let token = [0x5a; 16];
                    let user = 1;
                    (
                        Hello::resume(request, user, token),
                        HelloSent::Resume { user, token },
                        None,
                    )
                } else {
                    let s = usize::from(session) % self.model.sessions.len();
                    let model = &self.model.sessions[s];
                    let latest = model.known.last().copied().unwrap_or([0x5a; 16]);
                    let token = match token {
                        TokenChoice::Latest => latest,
                        TokenChoice::Previous => model
                            .known
                            .len()
                            .checked_sub(2)
                            .map_or(latest, |i| model.known[i]),
                        TokenChoice::Oldest => model.known.first().copied().unwrap_or(latest),
                        TokenChoice::Wrong => {
                            let mut wrong = latest;
                            wrong[15] ^= 1;
                            wrong
                        }
                    };
                    let user = model.user;
                    (
                        Hello::resume(request, user, token),
                        HelloSent::Resume { user, token },
                        Some(s),
                    )
                }
            }
        };
        self.clients[c].v2 = Some(Box::new(Conn {
            hello_request: request,
            hello: sent,
            outcome: Outcome::Pending,
            session,
            generation: 0,
            resumed: false,
            frames_read: 0,
            last_seq: 0,
            saw_new: false,
            taken_over: false,
            blind_acks: Vec::new(),
            ack_rejected: false,
            sent_keys: Vec::new(),
        }));
        self.clients[c].preface_sent = true;
        self.queue(c, &preface_for(VERSION_2), true);
        self.queue(c, &frame(&hello), true);
        self.clients[c].requests.push(request);
        tally(match kind {
            HelloKind::New { durable: true } => "v2: hellos sent: new durable",
            HelloKind::New { durable: false } => "v2: hellos sent: new ephemeral",
            HelloKind::Resume { .. } => "v2: hellos sent: resume",
        });
        self.transmit(c, wire);
    }

    /// `Op::RelayV2`: the frame client `c` sends.
    pub(super) fn relay_v2(
        &mut self,
        c: usize,
        targets: &[Target],
        body: &Body,
        choice: MessageIdChoice,
        receipt: bool,
    ) -> Vec<u8> {
        let request = self.next_request;
        self.next_request += 1;
        let receivers: Vec<u64> = targets
            .iter()
            .take(RECEIVERS_MAX + 45)
            .map(|&target| self.user_of(target))
            .collect();
        let mut out = BytesMut::new();
        if self.clients[c].v2.is_none() {
            // Not version 2: the hub refuses the kind; the client is raw.
            self.clients[c].clean = false;
            let body = self.body(body);
            encode(
                &RelayV2Ref {
                    request,
                    message_id: 0,
                    receivers: &receivers,
                    body: &body,
                    flags: 0,
                },
                &mut out,
            )
            .expect("fits");
            return out.to_vec();
        }
        self.clients[c].requests.push(request);
        if let MessageIdChoice::Retry(back) = choice {
            let keys = match self.session_of(c) {
                Some(s) => &self.model.sessions[s].sent_keys,
                None => &self.conn(c).sent_keys,
            };
            if !keys.is_empty() {
                let key = keys[keys.len() - 1 - usize::from(back) % keys.len()];
                let message = self.model.messages.get_mut(&key).expect("recorded");
                message.attempts.push(request);
                encode(
                    &RelayV2Ref {
                        request,
                        message_id: message.message_id,
                        receivers: &message.receivers,
                        body: &message.body,
                        flags: if message.receipt { flags::RECEIPT } else { 0 },
                    },
                    &mut out,
                )
                .expect("fits");
                let hash = body_hash(&message.body);
                for &receiver in &message.receivers {
                    *self.model.contents.entry((receiver, hash)).or_default() += 1;
                }
                let refused = self.model.attempts[&key].refused;
                self.model.attempts.insert(
                    request,
                    Attempt {
                        key,
                        client: c,
                        handled: false,
                        errors: BTreeMap::new(),
                        answered: false,
                        refused,
                    },
                );
                tally("v2: retries sent");
                return out.to_vec();
            }
        }
        let message_id = match choice {
            MessageIdChoice::None => 0,
            _ => {
                self.model.next_message_id += 1;
                self.model.next_message_id
            }
        };
        self.relay_v2_frame(
            c,
            request,
            receivers,
            body,
            message_id,
            receipt && message_id != 0,
            &mut out,
        );
        out.to_vec()
    }

    /// A new message from client `c`, sent as attempt `request`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn relay_v2_frame(
        &mut self,
        c: usize,
        request: u64,
        receivers: Vec<u64>,
        body: &Body,
        message_id: u64,
        receipt: bool,
        out: &mut BytesMut,
    ) {
        let mut body = self.body(body);
        if body.len() < 8 {
            body.resize(8, 0);
        }
        body[..8].copy_from_slice(&request.to_le_bytes());
        encode(
            &RelayV2Ref {
                request,
                message_id,
                receivers: &receivers,
                body: &body,
                flags: if receipt { flags::RECEIPT } else { 0 },
            },
            out,
        )
        .expect("fits");
        let refused = if receivers.len() > RECEIVERS_MAX {
            Some(ErrorCodeV2::TooManyReceivers)
        } else if body.len() > BODY_BYTES_MAX {
            Some(ErrorCodeV2::BodyTooLarge)
        } else {
            None
        };
        if message_id != 0 && refused.is_none() {
            match self.session_of(c) {
                Some(s) => self.model.sessions[s].sent_keys.push(request),
                None => self.conn_mut(c).sent_keys.push(request),
            }
        }
        let hash = body_hash(&body);
        for &receiver in &receivers {
            *self.model.contents.entry((receiver, hash)).or_default() += 1;
        }
        self.model.messages.insert(
            request,
            Message {
                sender: c,
                message_id,
                receipt,
                receivers,
                body,
                attempts: vec![request],
                first_handled_ms: None,
                first_handled_order: None,
                promised: BTreeMap::new(),
                handed: BTreeMap::new(),
            },
        );
        self.model.attempts.insert(
            request,
            Attempt {
                key: request,
                client: c,
                handled: false,
                errors: BTreeMap::new(),
                answered: false,
                refused,
            },
        );
        tally("v2: relays sent");
    }

    /// `Op::Ack`: the frame client `c` sends.
    pub(super) fn ack(&mut self, c: usize, upto: AckUpto) -> Vec<u8> {
        let request = self.next_request;
        self.next_request += 1;
        if self.clients[c].v2.is_none() {
            self.clients[c].clean = false;
            return frame(&Ack { upto: 1 });
        }
        self.clients[c].requests.push(request);
        let high = self
            .session_of(c)
            .map_or(0, |s| self.model.sessions[s].high_seq);
        let upto = match upto {
            AckUpto::Highest => high,
            AckUpto::Behind(n) => high.saturating_sub(u64::from(n)),
            AckUpto::Beyond(n) => high + 1 + u64::from(n),
        };
        self.note_ack(c, upto);
        frame(&Ack { upto })
    }

    fn note_ack(&mut self, c: usize, upto: u64) {
        let session = self.session_of(c);
        let high = session.map_or(0, |s| self.model.sessions[s].high_seq);
        if upto > high {
            self.conn_mut(c).blind_acks.push(upto);
            tally("v2: acks sent: beyond what was read");
        } else {
            tally("v2: acks sent: in range");
        }
        if let Some(s) = session {
            let session = &mut self.model.sessions[s];
            session.max_ack = session.max_ack.max(upto);
        }
    }

    // ----- what the core did ------------------------------------------------

    /// After a core call that handled client `c`'s input: a resume accepted
    /// or refused, a session welcomed.
    pub(super) fn v2_after_call(
        &mut self,
        c: usize,
        welcomed: bool,
        before: Counts,
        after: Counts,
    ) {
        let resumed = after.resumed - before.resumed;
        let rejected = after.rejected - before.rejected;
        let takeovers = after.takeovers - before.takeovers;
        let clean = self.clients[c].clean;
        let hello = self.conn(c).hello;
        if resumed + rejected > 0 {
            assert_eq!(resumed + rejected, 1, "client {c}: two resumes in one call");
            let HelloSent::Resume { user, token } = hello else {
                panic!("client {c}: a new session's Hello handled as a resume")
            };
            let session = self.model.session_of_user(user);
            let expected = session.is_some_and(|s| {
                let model = &self.model.sessions[s];
                !model.expired && (model.current == Some(token) || model.previous == Some(token))
            });
            assert_eq!(
                resumed == 1,
                expected,
                "client {c}: resume of user {user} {} (the model: {})",
                if resumed == 1 { "accepted" } else { "rejected" },
                if expected { "valid" } else { "invalid" },
            );
            if rejected == 1 {
                self.conn_mut(c).outcome = Outcome::Rejected;
                self.conn_mut(c).session = None;
                tally("v2: resumes rejected as the model says");
                return;
            }
            let s = session.expect("accepted");
            assert!(welcomed, "client {c}: resume accepted without a welcome");
            let old = self.model.sessions[s].holder;
            assert_eq!(
                takeovers,
                u64::from(old.is_some()),
                "client {c}: takeover count (the session's connection: {old:?})"
            );
            if let Some(old) = old {
                self.conn_mut(old).taken_over = true;
                tally("v2: takeovers");
            }
            let model = &mut self.model.sessions[s];
            model.previous = Some(token);
            model.current = None;
            model.holder = Some(c);
            model.detached_ms = None;
            let generation = model.conns.len();
            model.conns.push(c);
            model.tainted |= !clean;
            let conn = self.conn_mut(c);
            conn.outcome = Outcome::Welcomed;
            conn.session = Some(s);
            conn.generation = generation;
            conn.resumed = true;
            tally("v2: resumes accepted as the model says");
            return;
        }
        assert_eq!(takeovers, 0, "client {c}: a takeover without a resume");
        if !welcomed {
            return;
        }
        let HelloSent::New { durable } = hello else {
            panic!("client {c}: a resume welcomed without being counted")
        };
        let (shard, user) = (self.clients[c].shard, self.clients[c].user);
        let is_durable = self.shards[shard].inbox_len(user).is_some();
        assert!(
            durable || !is_durable,
            "client {c}: an ephemeral Hello got a durable session"
        );
        self.conn_mut(c).outcome = Outcome::Welcomed;
        if durable && !is_durable {
            assert!(
                self.shards[shard].durable_sessions() >= self.limits.sessions_max,
                "client {c}: durable asked, ephemeral granted below the sessions limit"
            );
            tally("v2: durable asked, ephemeral granted");
        }
        if !is_durable {
            return;
        }
        let sent_keys = std::mem::take(&mut self.conn_mut(c).sent_keys);
        self.model.sessions.push(Session {
            user,
            shard,
            current: None,
            previous: None,
            known: Vec::new(),
            holder: Some(c),
            detached_ms: None,
            expired: false,
            conns: vec![c],
            high_seq: 0,
            handed_ids: HashSet::new(),
            seqs: HashMap::new(),
            order: HashMap::new(),
            max_ack: 0,
            tainted: !clean,
            drained: false,
            sent_keys,
        });
        let s = self.model.sessions.len() - 1;
        self.conn_mut(c).session = Some(s);
        tally("v2: durable sessions created");
    }

    /// After a shard's timer ran: sessions it expired, never early.
    pub(super) fn check_expiry(&mut self, shard: usize) {
        let (now, expiry) = (self.now, self.limits.session_expiry_ms);
        for s in 0..self.model.sessions.len() {
            let session = &self.model.sessions[s];
            if session.shard != shard || session.expired {
                continue;
            }
            if self.shards[shard].inbox_len(session.user).is_some() {
                continue;
            }
            assert!(
                session.holder.is_none(),
                "session {} expired while connected",
                session.user
            );
            let detached = session.detached_ms.expect("offline sessions have a time");
            assert!(
                now >= detached + expiry,
                "session {} expired at {now}, detached at {detached}, expiry {expiry}",
                session.user
            );
            self.model.sessions[s].expired = true;
            tally("v2: sessions expired, not early");
        }
    }

    /// Sessions the core still has are the model's, and none outlived its
    /// expiry by more than a sweep.
    pub(super) fn check_sessions(&self) {
        for session in &self.model.sessions {
            if session.expired {
                continue;
            }
            assert!(
                self.shards[session.shard].inbox_len(session.user).is_some(),
                "session {} vanished without expiring",
                session.user
            );
            if let Some(detached) = session.detached_ms {
                let late = detached + self.limits.session_expiry_ms + SESSION_SWEEP_MS;
                assert!(
                    self.now < late || self.shutdown[session.shard].is_some(),
                    "session {} detached at {detached}, still there at {}",
                    session.user,
                    self.now
                );
            }
        }
    }

    // ----- what clients read ------------------------------------------------

    /// A version-2 frame other than `Error` read by client `c`.
    pub(super) fn read_v2(&mut self, c: usize, message: HubMessageV2) {
        let modelled = self.clients[c].v2_clean();
        match message {
            HubMessageV2::WelcomeV2(welcome) if self.clients[c].v2.is_some() => {
                self.read_welcome_v2(c, &welcome);
            }
            HubMessageV2::DeliverV2(deliver) if modelled => self.read_deliver_v2(c, &deliver),
            // Raw: only the dedup of version-1 relays' accounting.
            HubMessageV2::DeliverV2(deliver) if self.seq_new(c, deliver.seq) => {
                self.hand_on_v1(c, deliver.from, &deliver.body, None);
            }
            HubMessageV2::Stored(stored) if modelled => self.read_stored(c, &stored),
            HubMessageV2::Receipt(receipt) if modelled => self.read_receipt(c, &receipt),
            HubMessageV2::Receipt(receipt) => {
                self.seq_new(c, receipt.seq);
            }
            _ => {}
        }
    }

    /// Client-side dedup by `seq` for the session client `c` speaks for: true
    /// if `seq` is new (and then it is the highest seen).
    fn seq_new(&mut self, c: usize, seq: u64) -> bool {
        if seq == 0 {
            return true;
        }
        let user = self.clients[c].user;
        let high = match self.model.session_of_user(user) {
            Some(s) => &mut self.model.sessions[s].high_seq,
            None => self.model.raw_high.entry(user).or_default(),
        };
        if seq <= *high {
            return false;
        }
        *high = seq;
        true
    }

    fn read_welcome_v2(&mut self, c: usize, welcome: &WelcomeV2) {
        let shards = self.shards.len();
        let client = &self.clients[c];
        let conn = self.conn(c);
        assert_eq!(
            conn.frames_read, 1,
            "client {c}: WelcomeV2 is not the first frame"
        );
        assert_eq!(
            conn.outcome,
            Outcome::Welcomed,
            "client {c}: a welcome the core did not give"
        );
        assert_eq!(welcome.request, conn.hello_request, "WelcomeV2's request");
        assert_eq!(welcome.user, client.user, "WelcomeV2 names another user");
        assert_ne!(welcome.user, 0, "user id 0 is reserved");
        assert_eq!(
            owner(welcome.user, shards),
            client.shard,
            "WelcomeV2's owner"
        );
        let limits = &welcome.limits;
        let ours = &self.limits;
        assert_eq!(
            (
                limits.idle_timeout_ms,
                limits.frame_timeout_ms,
                limits.outbound_bytes_max,
                limits.inflight_messages_max,
                limits.inflight_bytes_max,
                limits.inbox_messages_max,
                limits.inbox_bytes_max,
                limits.session_expiry_ms,
                limits.message_ttl_ms,
                limits.dedup_window_ms,
                limits.content_dedup_window_ms,
            ),
            (
                ours.idle_timeout_ms,
                ours.frame_timeout_ms,
                ours.outbound_bytes_max as u64,
                ours.inflight_messages_max,
                ours.inflight_bytes_max,
                ours.inbox_messages_max,
                ours.inbox_bytes_max,
                ours.session_expiry_ms,
                ours.message_ttl_ms,
                ours.dedup_window_ms,
                ours.content_dedup_window_ms,
            ),
            "WelcomeV2 advertises other limits"
        );
        let session = conn.session;
        match conn.hello {
            HelloSent::New { durable } => {
                assert!(!welcome.resumed, "a new session resumed");
                assert_eq!(
                    welcome.durable,
                    session.is_some(),
                    "WelcomeV2.durable against the core's session"
                );
                assert!(
                    durable || !welcome.durable,
                    "ephemeral asked, durable given"
                );
                let others = self
                    .clients
                    .iter()
                    .enumerate()
                    .filter(|&(o, other)| o != c && other.user == welcome.user);
                assert_eq!(
                    others.count(),
                    0,
                    "user id {} handed out twice",
                    welcome.user
                );
                if let Some(s) = session {
                    let model = &mut self.model.sessions[s];
                    model.current = Some(welcome.token);
                    model.known.push(welcome.token);
                }
                tally("v2: welcomes checked: new session");
            }
            HelloSent::Resume { user, token } => {
                assert!(welcome.resumed && welcome.durable, "a resume not resumed");
                assert_eq!(welcome.user, user, "a resume welcomes another user");
                assert_ne!(welcome.token, token, "the token did not rotate");
                let s = session.expect("a welcomed resume has its session");
                let model = &mut self.model.sessions[s];
                model.known.push(welcome.token);
                if model.conns.last() == Some(&c) {
                    model.current = Some(welcome.token);
                }
                tally("v2: welcomes checked: resume");
            }
        }
    }

    fn read_deliver_v2(&mut self, c: usize, deliver: &DeliverV2) {
        let from = deliver.from;
        let redelivery = deliver.flags & flags::REDELIVERY != 0;
        let Some(s) = self.session_of(c) else {
            assert_eq!(
                (deliver.seq, deliver.flags),
                (0, 0),
                "client {c}: an ephemeral session got a seq or flags"
            );
            self.hand_on(c, from, deliver.message_id, &deliver.body);
            tally("v2: deliveries checked: ephemeral");
            return;
        };
        assert_ne!(deliver.seq, 0, "client {c}: a durable session got seq 0");
        let carried = Carried::Message {
            from,
            message_id: deliver.message_id,
            key: key_of(&deliver.body).unwrap_or(u64::MAX),
        };
        self.check_seq(c, s, deliver.seq, redelivery, carried);
        if !self.seq_new(c, deliver.seq) {
            tally("v2: redeliveries dropped by seq");
            return;
        }
        if deliver.message_id != 0
            && !self.model.sessions[s]
                .handed_ids
                .insert((from, deliver.message_id))
        {
            // A retry the hub stored again: allowed only when it may.
            if let Some(message) = key_of(&deliver.body).and_then(|k| self.model.messages.get(&k)) {
                // (A raw sender's frames are not followed: no time known.)
                let window = self.limits.dedup_window_ms;
                if let Some(first) = message.first_handled_ms {
                    let receiver = self.clients[c].user;
                    assert!(
                        window == 0
                            || self.now >= first + window
                            || self.refused_from(receiver, from, deliver.message_id),
                        "client {c}: message {} from {from} stored twice within the dedup window",
                        deliver.message_id
                    );
                }
            }
            tally("v2: copies dropped by (from, message_id)");
            return;
        }
        self.hand_on(c, from, deliver.message_id, &deliver.body);
        tally("v2: deliveries checked: durable");
    }

    /// The sequence rules of one `DeliverV2` or `Receipt` on a durable
    /// session's connection.
    fn check_seq(&mut self, c: usize, s: usize, seq: u64, redelivery: bool, carried: Carried) {
        let conn = self.conn_mut(c);
        assert!(
            seq > conn.last_seq,
            "client {c}: seq {seq} after {} on one connection",
            conn.last_seq
        );
        conn.last_seq = seq;
        if redelivery {
            assert!(conn.resumed, "client {c}: REDELIVERY on a first connection");
            assert!(
                !conn.saw_new,
                "client {c}: REDELIVERY of seq {seq} after a new entry"
            );
            tally("v2: redeliveries read");
        } else {
            conn.saw_new = true;
        }
        let generation = conn.generation;
        let session = &mut self.model.sessions[s];
        let (known, reads) = session
            .seqs
            .entry(seq)
            .or_insert_with(|| (carried, Vec::new()));
        assert_eq!(
            *known, carried,
            "seq {seq} of user {} carries two entries",
            session.user
        );
        for &(other, flagged) in reads.iter() {
            if other < generation {
                assert!(
                    redelivery,
                    "client {c}: seq {seq} read on an earlier connection, again without REDELIVERY"
                );
            } else if other > generation {
                assert!(
                    flagged,
                    "client {c}: seq {seq} read on a later connection without REDELIVERY"
                );
            }
        }
        reads.push((generation, redelivery));
    }

    /// A delivery passed client-side dedup: the application gets it.
    fn hand_on(&mut self, c: usize, from: u64, message_id: u64, body: &[u8]) {
        let user = self.clients[c].user;
        let session = self.session_of(c);
        if self.hand_on_v1(c, from, body, session) {
            return;
        }
        // A sender that spoke raw bytes may have relayed anything, and the
        // model stops following its frames: its deliveries are not.
        if self.clients.iter().any(|o| o.user == from && !o.clean) {
            return;
        }
        let clients = &self.clients;
        let attempts = &self.model.attempts;
        // Sent by `from`: on the connection that first sent it, or as a
        // retry on another connection of the session (the first one may
        // have been refused before it was welcomed).
        let sent_by = |m: &Message| {
            clients[m.sender].user == from
                || m.attempts.iter().any(|request| {
                    attempts
                        .get(request)
                        .is_some_and(|a| a.handled && clients[a.client].user == from)
                })
        };
        let known = key_of(body)
            .and_then(|key| self.model.messages.get(&key).map(|m| (key, m)))
            .filter(|(_, m)| sent_by(m) && m.body == body && m.message_id == message_id)
            .map(|(key, _)| key);
        let Some(key) = known else {
            panic!(
                "client {c}: a delivery from {from} of no message it sent (message id \
                 {message_id}, {} bytes)",
                body.len()
            );
        };
        let message = self.model.messages.get_mut(&key).expect("known");
        assert!(
            message.first_handled_ms.is_some(),
            "a delivery of a message not handled yet"
        );
        let occurrences = message.occurrences(user);
        assert!(
            occurrences > 0,
            "message {key} delivered to {user}, not a receiver"
        );
        let handed = message.handed.entry(user).or_default();
        *handed += 1;
        if session.is_some() {
            let allowed = if message_id == 0 { occurrences } else { 1 };
            assert!(
                *handed <= allowed,
                "message {key} handed on {handed} times to {user} after dedup"
            );
        } else {
            let allowed = occurrences * message.attempts.len();
            assert!(
                *handed <= allowed,
                "message {key}: {handed} deliveries to {user}"
            );
        }
        let once = message.attempts.len() == 1;
        let sender = message.sender;
        if let (Some(s), true) = (session, once) {
            self.check_order(s, from, sender, key);
        }
    }

    /// A delivery of a version-1 relay (from a clean version-1 client):
    /// accounted in its record; true if it was one.
    fn hand_on_v1(&mut self, c: usize, from: u64, body: &[u8], session: Option<usize>) -> bool {
        let Some(sender) = self
            .clients
            .iter()
            .position(|o| o.user == from && from != 0)
        else {
            return false;
        };
        if !self.clients[sender].v1_clean() {
            return false;
        }
        let user = self.clients[c].user;
        let id = key_of(body).expect("a version-1 relay body holds its id");
        let record = self
            .relays
            .get_mut(&id)
            .unwrap_or_else(|| panic!("client {c} got a delivery of unknown relay {id}"));
        assert_eq!(record.sender, sender, "delivery names another sender");
        assert!(record.body == body, "delivery with another body");
        assert!(!record.refused, "a refused relay was delivered");
        assert!(record.handled, "a delivery of a relay not handled yet");
        super::account(record, user, id);
        tally("v2: version-1 relays delivered as DeliverV2");
        if let Some(s) = session {
            self.check_order(s, from, sender, id);
        }
        true
    }

    /// Per-(sender, receiver) order of messages relayed once.
    fn check_order(&mut self, s: usize, from: u64, sender: usize, key: u64) {
        let session = &mut self.model.sessions[s];
        let last = session.order.entry(sender).or_default();
        assert!(
            key >= *last,
            "user {}: message {key} from {from} handed on after {last}",
            session.user
        );
        *last = key;
        tally("v2: per-pair order checked");
    }

    /// A version-2 sender's message read by a version-1 client.
    pub(super) fn read_deliver_from_v2(&mut self, c: usize, from: u64, _seq: u64, body: &[u8]) {
        if self.clients.iter().any(|o| o.user == from && !o.clean) {
            return;
        }
        let Some(message) = key_of(body).and_then(|key| self.model.messages.get_mut(&key)) else {
            panic!("client {c}: a delivery from version-2 user {from} of no message");
        };
        assert!(message.body == body, "delivery with another body");
        let user = self.clients[c].user;
        let handed = message.handed.entry(user).or_default();
        *handed += 1;
        assert!(
            *handed <= message.occurrences(user) * message.attempts.len(),
            "a version-1 receiver got a message more often than it was sent"
        );
        tally("v2: deliveries checked: to version 1");
    }

    fn read_stored(&mut self, c: usize, stored: &Stored) {
        // Another attempt of the same message the hub handled before: only
        // then can a `duplicate: true` stand for stored entries. Without
        // one (its first attempts died with their connection), the hub
        // took a lower id for a retry, as the protocol says.
        let handled_before = self
            .model
            .attempts
            .get(&stored.request)
            .and_then(|attempt| self.model.messages.get(&attempt.key))
            .is_some_and(|message| {
                message.attempts.iter().any(|&request| {
                    request != stored.request
                        && self.model.attempts.get(&request).is_some_and(|a| a.handled)
                })
            });
        let Some(attempt) = self.model.attempts.get_mut(&stored.request) else {
            panic!(
                "client {c}: Stored for request {}, no relay",
                stored.request
            )
        };
        assert_eq!(attempt.client, c, "Stored on another connection");
        assert!(attempt.handled, "Stored before the relay was handled");
        assert!(
            !attempt.answered,
            "Stored twice for request {}",
            stored.request
        );
        assert!(attempt.refused.is_none(), "Stored for a relay over a limit");
        attempt.answered = true;
        let message = self.model.messages.get_mut(&attempt.key).expect("recorded");
        assert_eq!(stored.message_id, message.message_id, "Stored's message_id");
        if stored.duplicate {
            assert!(
                attempt.errors.is_empty(),
                "Stored{{duplicate}} after errors about the relay"
            );
            tally("v2: stored read: duplicate");
            if !handled_before {
                tally("v2: stored read: duplicate of an id the hub never had");
                return;
            }
        } else {
            tally("v2: stored read");
        }
        let mut receivers = message.receivers.clone();
        receivers.sort_unstable();
        receivers.dedup();
        for receiver in receivers {
            let occurrences = message.occurrences(receiver);
            let errors = attempt.errors.get(&receiver).copied().unwrap_or(0);
            let promised = if message.message_id == 0 {
                occurrences - errors
            } else {
                usize::from(errors < occurrences)
            };
            let entry = message.promised.entry(receiver).or_default();
            *entry = (*entry).max(promised);
        }
    }

    fn read_receipt(&mut self, c: usize, receipt: &Receipt) {
        let user = self.clients[c].user;
        let clients = &self.clients;
        let found = self.model.messages.values().any(|message| {
            clients[message.sender].user == user
                && message.message_id == receipt.message_id
                && message.receipt
                && message.receivers.contains(&receipt.receiver)
        });
        assert!(
            found,
            "client {c}: a receipt for message {} from {}, never asked",
            receipt.message_id, receipt.receiver
        );
        if let Some(r) = self.model.session_of_user(receipt.receiver) {
            let receiver = &self.model.sessions[r];
            if !self.tainted(r) {
                assert!(
                    receiver.max_ack > 0,
                    "a receipt from {}, which never acked",
                    receipt.receiver
                );
            }
        }
        match self.session_of(c) {
            None => assert_eq!(
                (receipt.seq, receipt.flags),
                (0, 0),
                "an ephemeral sender's receipt with a seq or flags"
            ),
            Some(s) => {
                assert_ne!(receipt.seq, 0, "a durable sender's receipt with seq 0");
                let carried = Carried::Receipt {
                    message_id: receipt.message_id,
                    receiver: receipt.receiver,
                };
                let redelivery = receipt.flags & flags::REDELIVERY != 0;
                self.check_seq(c, s, receipt.seq, redelivery, carried);
                self.seq_new(c, receipt.seq);
            }
        }
        tally("v2: receipts checked");
    }

    /// An `Error` read by a clean version-2 client; false if the version-1
    /// checks take it.
    pub(super) fn read_error_v2(
        &mut self,
        c: usize,
        code: ErrorCodeV2,
        error: &relayhub_protocol::Error,
    ) -> bool {
        let (request, detail) = (error.request, error.detail);
        match code {
            ErrorCodeV2::UnknownReceiver
            | ErrorCodeV2::ReceiverDropped
            | ErrorCodeV2::InboxFull
            | ErrorCodeV2::StorageFull
            | ErrorCodeV2::DuplicateContent => {
                self.read_receiver_error(c, code, request, detail);
                true
            }
            ErrorCodeV2::TooManyReceivers | ErrorCodeV2::BodyTooLarge => {
                let Some(attempt) = self.model.attempts.get_mut(&request) else {
                    return false; // An echo: the version-1 checks.
                };
                assert_eq!(attempt.client, c, "{code:?} on another connection");
                assert_eq!(
                    attempt.refused,
                    Some(code),
                    "{code:?} for request {request}"
                );
                assert!(!attempt.answered, "{code:?} twice");
                attempt.answered = true;
                tally("v2: relays refused over a limit");
                true
            }
            ErrorCodeV2::ResumeRejected => {
                let conn = self.conn(c);
                assert_eq!(
                    conn.outcome,
                    Outcome::Rejected,
                    "client {c}: ResumeRejected"
                );
                assert_eq!((request, detail), (conn.hello_request, 0), "ResumeRejected");
                assert_eq!(
                    conn.frames_read, 1,
                    "client {c}: ResumeRejected after frames"
                );
                self.v2_closing(c, code, error.code);
                true
            }
            ErrorCodeV2::SessionTakenOver => {
                assert!(
                    self.conn(c).taken_over,
                    "client {c}: SessionTakenOver, no takeover"
                );
                assert_eq!((request, detail), (0, 0), "SessionTakenOver's fields");
                self.v2_closing(c, code, error.code);
                true
            }
            ErrorCodeV2::AckOutOfRange => {
                let session = self.session_of(c);
                let conn = self.conn_mut(c);
                assert!(
                    !conn.blind_acks.is_empty(),
                    "client {c}: AckOutOfRange, every ack was of a seq read"
                );
                if session.is_some() {
                    assert!(
                        conn.blind_acks.iter().any(|&upto| upto > detail),
                        "AckOutOfRange with detail {detail}, acks {:?}",
                        conn.blind_acks
                    );
                } else {
                    assert_eq!(detail, 0, "an ephemeral session's AckOutOfRange detail");
                }
                conn.ack_rejected = true;
                self.v2_closing(c, code, error.code);
                true
            }
            ErrorCodeV2::HelloRequired => {
                panic!("client {c}: HelloRequired (detail {detail}) for well-formed frames")
            }
            _ => false,
        }
    }

    fn v2_closing(&mut self, c: usize, code: ErrorCodeV2, wire: u16) {
        self.check_closing(c, wire);
        self.clients[c].closing_error_v2 = Some(code);
        tally(match code {
            ErrorCodeV2::ResumeRejected => "v2: closing errors: resume rejected",
            ErrorCodeV2::SessionTakenOver => "v2: closing errors: session taken over",
            _ => "v2: closing errors: ack out of range",
        });
    }

    /// An error about one receiver of a version-2 relay.
    fn read_receiver_error(&mut self, c: usize, code: ErrorCodeV2, request: u64, receiver: u64) {
        let Some(attempt) = self.model.attempts.get(&request) else {
            panic!("client {c}: {code:?} about request {request}, no relay")
        };
        let message = self.model.messages.get(&attempt.key).expect("recorded");
        assert!(attempt.handled, "{code:?} about a relay not handled yet");
        assert!(
            attempt.refused.is_none(),
            "{code:?} about a relay over a limit"
        );
        let occurrences = message.occurrences(receiver);
        assert!(occurrences > 0, "{code:?} names {receiver}, not a receiver");
        let hash = body_hash(&message.body);
        let sender = attempt.client;
        if sender != c {
            // The report goes to the session's connection of the moment.
            let mine = self.session_of(c);
            assert!(
                mine.is_some() && self.session_of(sender) == mine,
                "client {c}: {code:?} about another client's relay {request}"
            );
            tally("v2: errors about an earlier connection's relay");
            return;
        }
        let attempt = self.model.attempts.get_mut(&request).expect("present");
        assert!(!attempt.answered, "{code:?} after the relay's Stored");
        let errors = attempt.errors.entry(receiver).or_default();
        *errors += 1;
        assert!(
            *errors <= occurrences,
            "{errors} errors about {receiver}, named {occurrences} times"
        );
        let session = self.model.session_of_user(receiver);
        let ephemeral = self.clients.iter().any(|o| {
            o.user == receiver
                && (o.v1_clean()
                    || o.v2.as_ref().is_some_and(|v| {
                        v.session.is_none()
                            && v.outcome == Outcome::Welcomed
                            && matches!(v.hello, HelloSent::New { .. })
                    }))
        });
        match code {
            ErrorCodeV2::StorageFull => {
                assert!(
                    self.limits.log_enabled,
                    "StorageFull with storage in memory"
                );
                assert!(!ephemeral, "StorageFull for ephemeral receiver {receiver}");
                tally("v2: receiver errors: storage full");
            }
            ErrorCodeV2::InboxFull => {
                assert!(!ephemeral, "InboxFull for ephemeral receiver {receiver}");
                tally("v2: receiver errors: inbox full");
            }
            ErrorCodeV2::ReceiverDropped => {
                assert!(
                    session.is_none(),
                    "ReceiverDropped for durable receiver {receiver}"
                );
                tally("v2: receiver errors: receiver dropped");
            }
            ErrorCodeV2::UnknownReceiver => {
                if let Some(s) = session {
                    assert!(
                        self.model.sessions[s].expired,
                        "UnknownReceiver for durable receiver {receiver}, not expired"
                    );
                    tally("v2: receiver errors: unknown, the session expired");
                } else {
                    tally("v2: receiver errors: unknown receiver");
                }
            }
            ErrorCodeV2::DuplicateContent => {
                assert!(
                    self.limits.content_dedup_window_ms > 0,
                    "DuplicateContent with content dedup off"
                );
                let raw = self.clients.iter().any(|o| !o.clean);
                let sent = self
                    .model
                    .contents
                    .get(&(receiver, hash))
                    .copied()
                    .unwrap_or(0);
                assert!(
                    raw || sent >= 2,
                    "DuplicateContent about {receiver}, the body's first time"
                );
                tally("v2: receiver errors: duplicate content");
            }
            _ => unreachable!(),
        }
        // Typed and not fatal: the connection goes on.
        assert!(!code.closes_connection(), "{code:?} closes");
    }

    // ----- the end ------------------------------------------------------------

    /// An open clean version-2 client, everything settled: every relay it
    /// sent that the hub handled was answered.
    pub(super) fn check_open_v2(&self, c: usize) {
        self.check_answered_v2(c, "v2: open clients: relays answered");
    }

    /// Every relay `c` sent that the hub handled was answered: `c` is
    /// still open, or half-closed and waited for its answers. Tallies
    /// each as `what`.
    pub(super) fn check_answered_v2(&self, c: usize, what: &'static str) {
        for (request, attempt) in &self.model.attempts {
            if attempt.client == c && attempt.handled {
                assert!(
                    attempt.answered,
                    "client {c}: relay {request} handled, never answered"
                );
                tally(what);
            }
        }
    }

    /// Resumes every durable session that is offline (with the latest
    /// token known), acks everything on its connection until its inbox is
    /// empty.
    pub(super) fn drain_sessions(&mut self) {
        for s in 0..self.model.sessions.len() {
            let (user, shard) = (self.model.sessions[s].user, self.model.sessions[s].shard);
            if self.model.sessions[s].expired {
                tally("v2: drain: session expired");
                continue;
            }
            if self.shutdown[shard].is_some() {
                tally("v2: drain: shard shutting down, not resumed");
                continue;
            }
            let holder = self.model.sessions[s].holder.filter(|&c| {
                let client = &self.clients[c];
                client.v2_clean()
                    && !client.reset
                    && !client.fin
                    && !client.stopped_reading
                    && self.shards[shard]
                        .conn(client.id)
                        .is_some_and(|conn| conn.state() == ConnState::Open)
            });
            let c = match holder {
                Some(c) => c,
                None => match self.drain_resume(s) {
                    Some(c) => c,
                    None => continue,
                },
            };
            let mut last = (u64::MAX, usize::MAX);
            loop {
                let left = self.shards[shard].inbox_len(user).expect("not expired");
                let high = self.model.sessions[s].high_seq;
                if left == 0 {
                    self.model.sessions[s].drained = true;
                    tally("v2: drain: sessions emptied");
                    break;
                }
                assert_ne!(
                    (high, left),
                    last,
                    "user {user}: {left} entries stay in the inbox after acking {high}"
                );
                last = (high, left);
                self.send_ack(c, high);
                self.settle_all();
                assert!(
                    self.conn(c).outcome == Outcome::Welcomed
                        && self.clients[c].closing_error_v2.is_none()
                        && self.clients[c].closing_error.is_none(),
                    "client {c}: the drain's connection closed"
                );
            }
        }
    }

    /// A new connection resumes session `s` on its owner shard (making room
    /// there by half-closing another client); its client once welcomed.
    fn drain_resume(&mut self, s: usize) -> Option<usize> {
        let session = &self.model.sessions[s];
        let Some(token) = session.current.or(session.previous) else {
            tally("v2: drain: no token known");
            return None;
        };
        let (user, shard) = (session.user, session.shard);
        while self.live_on(shard) >= self.limits.connections_max {
            let victim = (0..self.clients.len()).find(|&v| {
                let client = &self.clients[v];
                client.shard == shard && !client.closed && !client.fin && !client.reset
            })?;
            self.transmit(victim, Wire { read: 0, hold: 0 });
            self.clients[victim].fin = true;
            self.settle_all();
            tally("v2: drain: half-closed a client for room");
        }
        let c = self.connect_any(shard)?;
        let request = self.next_request;
        self.next_request += 1;
        self.clients[c].v2 = Some(Box::new(Conn {
            hello_request: request,
            hello: HelloSent::Resume { user, token },
            outcome: Outcome::Pending,
            session: Some(s),
            generation: 0,
            resumed: false,
            frames_read: 0,
            last_seq: 0,
            saw_new: false,
            taken_over: false,
            blind_acks: Vec::new(),
            ack_rejected: false,
            sent_keys: Vec::new(),
        }));
        self.clients[c].preface_sent = true;
        self.queue(c, &preface_for(VERSION_2), true);
        self.queue(c, &frame(&Hello::resume(request, user, token)), true);
        self.clients[c].requests.push(request);
        self.transmit(c, Wire { read: 0, hold: 0 });
        self.settle_all();
        assert_eq!(
            self.conn(c).outcome,
            Outcome::Welcomed,
            "the drain's resume of user {user} with its latest token failed"
        );
        tally("v2: drain: sessions resumed");
        Some(c)
    }

    fn send_ack(&mut self, c: usize, upto: u64) {
        let request = self.next_request;
        self.next_request += 1;
        self.clients[c].requests.push(request);
        self.note_ack(c, upto);
        self.queue(c, &frame(&Ack { upto }), true);
        self.transmit(c, Wire { read: 0, hold: 0 });
    }

    /// The no-loss check, and what each version-2 connection had to end
    /// with.
    /// `receiver` refused a relay from `from` with a `message_id` at or
    /// below `message_id`: from then on its inbox takes nothing from `from`
    /// at or above that id for a retry (docs/protocol.md, Retry dedup), so
    /// a retry it stored before may be stored again.
    fn refused_from(&self, receiver: u64, from: u64, message_id: u64) -> bool {
        self.model.attempts.values().any(|attempt| {
            attempt.errors.get(&receiver).is_some_and(|&n| n > 0)
                && self.model.messages.get(&attempt.key).is_some_and(|m| {
                    m.message_id != 0
                        && m.message_id <= message_id
                        && self.clients[m.sender].user == from
                })
        })
    }

    /// Another connection of `message`'s sender's session had a higher
    /// `message_id` for `receiver` handled first (the old and the new
    /// connection of a takeover both sending): the receiver's retry dedup
    /// then rightly takes `message` for a retry (docs/protocol.md, Retry
    /// dedup: ids must increase in the order the hub handles them).
    fn overtaken(&self, message: &Message, receiver: u64) -> bool {
        let sender = self.clients[message.sender].user;
        let Some(order) = message.first_handled_order else {
            return false;
        };
        self.model.messages.values().any(|other| {
            other.sender != message.sender
                && self.clients[other.sender].user == sender
                && other.message_id > message.message_id
                && other.receivers.contains(&receiver)
                && other.first_handled_order.is_some_and(|o| o < order)
        })
    }

    pub(super) fn finish_v2(&self) {
        for (c, client) in self.clients.iter().enumerate() {
            let Some(conn) = client.v2.as_deref() else {
                continue;
            };
            if !client.clean || client.lost() || client.adoption_refused {
                continue;
            }
            if conn.taken_over {
                assert_eq!(
                    client.closing_error_v2,
                    Some(ErrorCodeV2::SessionTakenOver),
                    "client {c}: taken over, closed otherwise"
                );
            }
            if conn.outcome == Outcome::Rejected {
                assert_eq!(
                    client.closing_error_v2,
                    Some(ErrorCodeV2::ResumeRejected),
                    "client {c}: a rejected resume, closed otherwise"
                );
                assert_eq!(conn.frames_read, 1, "client {c}: more than ResumeRejected");
            }
        }
        let ttl = self.limits.message_ttl_ms;
        for (key, message) in &self.model.messages {
            for (&receiver, &promised) in &message.promised {
                if promised == 0 {
                    continue;
                }
                let Some(s) = self.model.session_of_user(receiver) else {
                    continue; // Not durable: at most once.
                };
                let session = &self.model.sessions[s];
                let first = message.first_handled_ms.expect("answered, so handled");
                let sender = self.clients[message.sender].user;
                let reason = if self.clients.iter().any(|o| o.user == sender && !o.clean) {
                    Some("raw bytes spoke for the sender")
                } else if self.overtaken(message, receiver) {
                    Some("a later id of its sender came first")
                } else if session.expired {
                    Some("session expired")
                } else if self.tainted(s) {
                    Some("raw bytes spoke for the receiver")
                } else if self.session_blind(s) {
                    Some("the receiver acked beyond what it read")
                } else if ttl > 0 && self.now >= first + ttl {
                    Some("lifetime may have passed")
                } else if !session.drained {
                    Some("not drained")
                } else {
                    None
                };
                if let Some(reason) = reason {
                    tally(match reason {
                        "session expired" => "v2: no-loss excused: session expired",
                        "raw bytes spoke for the receiver" => "v2: no-loss excused: raw bytes",
                        "raw bytes spoke for the sender" => "v2: no-loss excused: raw sender",
                        "the receiver acked beyond what it read" => {
                            "v2: no-loss excused: blind ack"
                        }
                        "lifetime may have passed" => "v2: no-loss excused: entry lifetime",
                        "a later id of its sender came first" => {
                            "v2: no-loss excused: ids raced across connections"
                        }
                        _ => "v2: no-loss excused: not drained",
                    });
                    continue;
                }
                let handed = message.handed.get(&receiver).copied().unwrap_or(0);
                assert!(
                    handed >= promised,
                    "message {key} (id {}) stored for durable user {receiver}: {promised} \
                     promised, {handed} handed on",
                    message.message_id
                );
                tally("v2: no loss: stored messages delivered");
            }
        }
    }
}

impl Conn {
    /// The durable session it carries, if any.
    pub(super) fn session(&self) -> Option<usize> {
        self.session
    }
}
