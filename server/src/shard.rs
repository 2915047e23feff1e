//! One shard's state and logic, without IO: its connections, routing of
//! relays and lists to local receivers or to other shards' outboxes, and the
//! handling of what other shards send. The glommio driver (`server.rs`)
//! moves bytes and mesh messages around it; tests and the fuzzer drive it
//! in memory.

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap, VecDeque},
    rc::Rc,
    sync::Arc,
    task::Waker,
};

use bytes::Bytes;
use relayhub_protocol::{
    encode_deliver, ArchivedUserId, DeliverRef, ErrorCode, ListReplyRef, LIST_PAGE_USERS_MAX,
    RECEIVERS_MAX,
};

use crate::{
    ids::{owner, IdAllocator},
    outbound::{Outbound, PushError},
    stats::ShardStats,
};

/// A connection as the shard sees it: its outbound queue.
pub type Conn = Rc<RefCell<Outbound>>;

/// Receivers of one relay that live on one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receivers {
    /// The common 1:1 case, without an allocation.
    One(u64),
    /// Several receivers (at most [`RECEIVERS_MAX`]).
    Many(Box<[u64]>),
}

impl Receivers {
    fn as_slice(&self) -> &[u64] {
        match self {
            Receivers::One(user) => std::slice::from_ref(user),
            Receivers::Many(users) => users,
        }
    }
}

/// What shards send each other through the mesh rings.
#[derive(Debug)]
pub enum MeshMessage {
    /// Deliver a relay's shared `Deliver` frame to receivers on the target.
    Deliver {
        /// The sender, for error reports.
        from: u64,
        /// The sender's request id, for error reports.
        request: u64,
        /// The encoded `Deliver` frame, shared by every receiver.
        frame: Bytes,
        /// Receivers owned by the target shard.
        receivers: Receivers,
    },
    /// Queue an `Error` frame for user `to` (owned by the target).
    Report {
        /// The user to tell.
        to: u64,
        /// The request it concerns.
        request: u64,
        /// What went wrong.
        code: ErrorCode,
        /// The error's detail.
        detail: u64,
    },
    /// Asks the target for its connected ids above `after`.
    ListQuery {
        /// The asking shard.
        origin: usize,
        /// The asking shard's query id.
        query: u64,
        /// Only ids above this.
        after: u64,
        /// At most this many ids (the asker takes `limit` of the merge).
        limit: usize,
    },
    /// The answer to a [`MeshMessage::ListQuery`].
    ListAnswer {
        /// The query answered.
        query: u64,
        /// Ascending ids, at most the query's limit.
        users: Vec<u64>,
    },
}

/// A list request waiting for the other shards' answers.
#[derive(Debug)]
struct PendingList {
    user: u64,
    request: u64,
    limit: usize,
    users: Vec<u64>,
    answers_missing: usize,
}

/// Largest body a 1:1 local relay encodes straight into the receiver's
/// queue (a copy into its reply buffer, no allocation) instead of a shared
/// `Bytes` of its own. Bigger bodies get their own buffer, which the queue
/// can hand to the kernel without growing the reply buffer.
pub const INLINE_DELIVER_BYTES_MAX: usize = 4096;

/// A delivery on its way into a local receiver's queue.
#[derive(Clone, Copy)]
enum Delivery<'a> {
    /// The relay's shared `Deliver` frame.
    Shared(&'a Bytes),
    /// A small 1:1 delivery, encoded in place.
    Inline(DeliverRef<'a>),
}

/// Mesh messages waiting in one shard's outbox beyond which its readers
/// pause (backpressure towards clients instead of unbounded memory).
pub const OUTBOX_MESSAGES_HIGH: usize = 8192;

/// A shard's connections and routing state.
pub struct Shard {
    index: usize,
    shards: usize,
    connections_max: usize,
    outbound_bytes_max: usize,
    ids: IdAllocator,
    /// Connected users owned by this shard, ordered for paged listing.
    table: BTreeMap<u64, Conn>,
    /// Mesh messages per destination shard, waiting for its forwarder.
    outboxes: Vec<VecDeque<MeshMessage>>,
    /// The forwarder task of each destination, parked on an empty outbox.
    forwarders: Vec<Option<Waker>>,
    /// Readers paused on a full outbox.
    backpressured: Vec<Waker>,
    lists: HashMap<u64, PendingList>,
    next_query: u64,
    /// Per-destination receivers of the relay being routed (reused).
    route: Vec<Vec<u64>>,
    stats: Arc<ShardStats>,
}

impl Shard {
    /// Shard `index` of `shards`.
    pub fn new(
        index: usize,
        shards: usize,
        connections_max: usize,
        outbound_bytes_max: usize,
        stats: Arc<ShardStats>,
    ) -> Shard {
        Shard {
            index,
            shards,
            connections_max,
            outbound_bytes_max,
            ids: IdAllocator::new(index, shards),
            table: BTreeMap::new(),
            outboxes: (0..shards).map(|_| VecDeque::new()).collect(),
            forwarders: (0..shards).map(|_| None).collect(),
            backpressured: Vec::new(),
            lists: HashMap::new(),
            next_query: 0,
            route: (0..shards).map(|_| Vec::new()).collect(),
            stats,
        }
    }

    /// This shard's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The shard's counters.
    pub fn stats(&self) -> &Arc<ShardStats> {
        &self.stats
    }

    /// A new outbound queue for an accepted connection, or `ServerFull`.
    pub fn accept(&mut self) -> Result<Conn, ErrorCode> {
        if self.stats.connections_open.get() as usize >= self.connections_max {
            self.stats.connections_refused.incr();
            return Err(ErrorCode::ServerFull);
        }
        self.stats.connections_open.incr();
        Ok(Rc::new(RefCell::new(Outbound::new(
            self.outbound_bytes_max,
        ))))
    }

    /// Gives a connection whose preface arrived its user id and makes it
    /// reachable.
    pub fn register(&mut self, conn: &Conn) -> u64 {
        let user = self.ids.allocate();
        self.table.insert(user, conn.clone());
        self.stats.connections_accepted.incr();
        user
    }

    /// Makes `user` unreachable (idempotent): relays to it from now on get
    /// `UnknownReceiver`.
    pub fn forget(&mut self, user: u64) {
        self.table.remove(&user);
    }

    /// Releases a connection accepted by [`accept`](Self::accept); `user` is
    /// 0 when it never registered.
    pub fn disconnect(&mut self, user: u64) {
        self.forget(user);
        self.stats.connections_open.decr();
    }

    /// Connected users on this shard.
    pub fn connected(&self) -> usize {
        self.table.len()
    }

    /// Routes one relay (limits already checked by the decoder).
    pub fn relay(&mut self, from: u64, request: u64, receivers: &[ArchivedUserId], body: &[u8]) {
        debug_assert!(receivers.len() <= RECEIVERS_MAX);
        self.stats.relays.incr();
        if receivers.is_empty() {
            return;
        }
        if let [receiver] = receivers {
            let receiver = receiver.to_native();
            let target = owner(receiver, self.shards);
            if target == self.index && body.len() <= INLINE_DELIVER_BYTES_MAX {
                let delivery = Delivery::Inline(DeliverRef { from, body });
                self.deliver_local(from, request, receiver, delivery);
                return;
            }
            let frame = encode_deliver(from, body).expect("body within limits");
            if target == self.index {
                self.deliver_local(from, request, receiver, Delivery::Shared(&frame));
            } else {
                let receivers = Receivers::One(receiver);
                self.send_mesh(
                    target,
                    MeshMessage::Deliver {
                        from,
                        request,
                        frame,
                        receivers,
                    },
                );
            }
            return;
        }
        let frame = encode_deliver(from, body).expect("body within limits");
        let mut route = std::mem::take(&mut self.route);
        for receiver in receivers {
            let receiver = receiver.to_native();
            let target = owner(receiver, self.shards);
            if target == self.index {
                self.deliver_local(from, request, receiver, Delivery::Shared(&frame));
            } else {
                route[target].push(receiver);
            }
        }
        for (target, users) in route.iter_mut().enumerate() {
            if users.is_empty() {
                continue;
            }
            let receivers = Receivers::Many(users.as_slice().into());
            users.clear();
            let frame = frame.clone();
            self.send_mesh(
                target,
                MeshMessage::Deliver {
                    from,
                    request,
                    frame,
                    receivers,
                },
            );
        }
        self.route = route;
    }

    fn deliver_local(&mut self, from: u64, request: u64, receiver: u64, delivery: Delivery<'_>) {
        let pushed = match (self.table.get(&receiver), delivery) {
            (None, _) => Err(PushError::Closing),
            (Some(conn), Delivery::Shared(frame)) => conn.borrow_mut().push_shared(frame.clone()),
            (Some(conn), Delivery::Inline(deliver)) => conn.borrow_mut().push_message(&deliver),
        };
        match pushed {
            Ok(()) => self.stats.deliveries.incr(),
            Err(PushError::Closing) => {
                self.stats.unknown_receivers.incr();
                self.report(from, request, ErrorCode::UnknownReceiver, receiver);
            }
            Err(PushError::Overflow) => {
                self.cut_slow_consumer(receiver);
                self.report(from, request, ErrorCode::ReceiverDropped, receiver);
            }
        }
    }

    /// Disconnects `user` for exceeding its outbound limit.
    fn cut_slow_consumer(&mut self, user: u64) {
        if let Some(conn) = self.table.remove(&user) {
            let bytes_max = conn.borrow().bytes_max() as u64;
            conn.borrow_mut()
                .close(Some((ErrorCode::SlowConsumer, 0, bytes_max)));
            self.stats.slow_consumers.incr();
        }
    }

    /// Tells `to` (on any shard) about an error with one of its requests.
    pub fn report(&mut self, to: u64, request: u64, code: ErrorCode, detail: u64) {
        let target = owner(to, self.shards);
        if target != self.index {
            self.send_mesh(
                target,
                MeshMessage::Report {
                    to,
                    request,
                    code,
                    detail,
                },
            );
            return;
        }
        let Some(conn) = self.table.get(&to) else {
            // The sender left: nobody is there to tell.
            return;
        };
        let pushed = conn.borrow_mut().push_error(code, request, detail);
        if pushed == Err(PushError::Overflow) {
            self.cut_slow_consumer(to);
        }
    }

    /// Answers a list request from `user` (local now, or once every other
    /// shard has answered).
    pub fn list(&mut self, user: u64, request: u64, after: u64, limit: u32) {
        let limit = match limit as usize {
            0 => LIST_PAGE_USERS_MAX,
            limit => limit.min(LIST_PAGE_USERS_MAX),
        };
        let users = self.local_users(after, limit, user);
        if self.shards == 1 {
            self.finish_list(PendingList {
                user,
                request,
                limit,
                users,
                answers_missing: 0,
            });
            return;
        }
        let query = self.next_query;
        self.next_query += 1;
        let answers_missing = self.shards - 1;
        self.lists.insert(
            query,
            PendingList {
                user,
                request,
                limit,
                users,
                answers_missing,
            },
        );
        let origin = self.index;
        for target in (0..self.shards).filter(|&target| target != origin) {
            self.send_mesh(
                target,
                MeshMessage::ListQuery {
                    origin,
                    query,
                    after,
                    limit,
                },
            );
        }
    }

    /// Up to `limit + 1` connected ids above `after`, `except` excluded: one
    /// more than a page, so the asker can tell whether more follow.
    fn local_users(&self, after: u64, limit: usize, except: u64) -> Vec<u64> {
        let Some(from) = after.checked_add(1) else {
            return Vec::new();
        };
        self.table
            .range(from..)
            .map(|(&user, _)| user)
            .filter(|&user| user != except)
            .take(limit + 1)
            .collect()
    }

    fn finish_list(&mut self, mut pending: PendingList) {
        debug_assert_eq!(pending.answers_missing, 0);
        pending.users.sort_unstable();
        let more = pending.users.len() > pending.limit;
        pending.users.truncate(pending.limit);
        let Some(conn) = self.table.get(&pending.user) else {
            return;
        };
        let reply = ListReplyRef {
            request: pending.request,
            users: &pending.users,
            more,
        };
        let pushed = conn.borrow_mut().push_message(&reply);
        if pushed == Err(PushError::Overflow) {
            self.cut_slow_consumer(pending.user);
        }
    }

    /// Handles one message from another shard.
    pub fn handle_mesh(&mut self, message: MeshMessage) {
        self.stats.mesh_received.incr();
        match message {
            MeshMessage::Deliver {
                from,
                request,
                frame,
                receivers,
            } => {
                for &receiver in receivers.as_slice() {
                    self.deliver_local(from, request, receiver, Delivery::Shared(&frame));
                }
            }
            MeshMessage::Report {
                to,
                request,
                code,
                detail,
            } => {
                self.report(to, request, code, detail);
            }
            MeshMessage::ListQuery {
                origin,
                query,
                after,
                limit,
            } => {
                let users = self.local_users(after, limit, 0);
                self.send_mesh(origin, MeshMessage::ListAnswer { query, users });
            }
            MeshMessage::ListAnswer { query, users } => {
                let Some(pending) = self.lists.get_mut(&query) else {
                    debug_assert!(false, "answer to unknown list query {query}");
                    return;
                };
                pending.users.extend(users);
                pending.answers_missing -= 1;
                if pending.answers_missing == 0 {
                    let pending = self.lists.remove(&query).expect("present");
                    self.finish_list(pending);
                }
            }
        }
    }

    fn send_mesh(&mut self, target: usize, message: MeshMessage) {
        debug_assert_ne!(target, self.index, "no ring to oneself");
        self.stats.mesh_sent.incr();
        self.outboxes[target].push_back(message);
        if let Some(forwarder) = self.forwarders[target].take() {
            forwarder.wake();
        }
    }

    /// Moves up to `max` messages for `target` into `batch`; parks the
    /// forwarder's `waker` when there are none.
    pub fn take_outbox(
        &mut self,
        target: usize,
        max: usize,
        batch: &mut Vec<MeshMessage>,
        waker: &Waker,
    ) {
        let outbox = &mut self.outboxes[target];
        let take = outbox.len().min(max);
        batch.extend(outbox.drain(..take));
        if batch.is_empty() {
            self.forwarders[target] = Some(waker.clone());
        }
        if self.outbox_backlog() < OUTBOX_MESSAGES_HIGH {
            self.backpressured.drain(..).for_each(Waker::wake);
        }
    }

    /// Messages waiting in the longest outbox.
    pub fn outbox_backlog(&self) -> usize {
        self.outboxes.iter().map(VecDeque::len).max().unwrap_or(0)
    }

    /// True when readers should pause; registers `waker` to be woken when
    /// the outboxes drain.
    pub fn backpressure(&mut self, waker: &Waker) -> bool {
        if self.outbox_backlog() < OUTBOX_MESSAGES_HIGH {
            return false;
        }
        self.stats.backpressure_waits.incr();
        self.backpressured.push(waker.clone());
        true
    }

    /// Closes every connection with `code` (shutdown), returning how many.
    pub fn close_all(&mut self, code: ErrorCode) -> usize {
        let count = self.table.len();
        for conn in std::mem::take(&mut self.table).into_values() {
            conn.borrow_mut().close(Some((code, 0, 0)));
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relayhub_protocol::{
        decode_frame, rkyv::util::AlignedVec, ClientSide, HubMessage, RelayRef,
    };

    /// Everything queued on `conn`, decoded.
    fn queued(conn: &Conn) -> Vec<HubMessage> {
        let mut bytes = AlignedVec::<16>::new();
        let mut outbound = conn.borrow_mut();
        let mut slices = Vec::new();
        outbound.slices(&mut slices);
        let written: usize = slices.iter().map(|s| s.len()).sum();
        for slice in &slices {
            bytes.extend_from_slice(slice);
        }
        drop(slices);
        outbound.advance(written);
        let mut messages = Vec::new();
        let mut offset = 0;
        while offset < bytes.len() {
            let (frame, len) = decode_frame::<ClientSide>(&bytes[offset..]).expect("valid frames");
            messages.push(frame.to_owned());
            offset += len;
        }
        messages
    }

    fn relay(shard: &mut Shard, from: u64, receivers: &[u64], body: &[u8]) {
        // Go through a real archive so the receivers are archived ids.
        let mut wire = bytes::BytesMut::new();
        relayhub_protocol::encode(
            &RelayRef {
                request: 9,
                receivers,
                body,
            },
            &mut wire,
        )
        .unwrap();
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(&wire);
        let (frame, _) = decode_frame::<relayhub_protocol::HubSide>(&aligned).unwrap();
        let relayhub_protocol::ClientFrame::Relay(archived) = frame else {
            unreachable!()
        };
        shard.relay(
            from,
            9,
            archived.receivers.as_slice(),
            archived.body.as_slice(),
        );
    }

    fn shard_with(limit: usize, users: usize) -> (Shard, Vec<(u64, Conn)>) {
        let mut shard = Shard::new(0, 1, 100, limit, Arc::default());
        let conns = (0..users)
            .map(|_| {
                let conn = shard.accept().unwrap();
                (shard.register(&conn), conn)
            })
            .collect();
        (shard, conns)
    }

    #[test]
    fn inline_and_shared_deliveries_decode_the_same() {
        let (mut shard, conns) = shard_with(1 << 20, 3);
        let (sender, receiver, other) = (conns[0].0, conns[1].0, conns[2].0);
        let small = vec![1u8; INLINE_DELIVER_BYTES_MAX];
        let large = vec![2u8; INLINE_DELIVER_BYTES_MAX + 1];
        relay(&mut shard, sender, &[receiver], &small);
        relay(&mut shard, sender, &[receiver], &large);
        relay(&mut shard, sender, &[receiver, other], &small);
        let expected = |body: &Vec<u8>| {
            HubMessage::Deliver(relayhub_protocol::Deliver {
                from: sender,
                body: body.clone(),
            })
        };
        assert_eq!(
            queued(&conns[1].1),
            [expected(&small), expected(&large), expected(&small)]
        );
        assert_eq!(queued(&conns[2].1), [expected(&small)]);
        assert_eq!(shard.stats().deliveries.get(), 4);
    }

    #[test]
    fn overflow_cuts_the_receiver_off_and_tells_the_sender() {
        let (mut shard, conns) = shard_with(1000, 2);
        let (sender, receiver) = (conns[0].0, conns[1].0);
        relay(&mut shard, sender, &[receiver], &[0; 600]);
        relay(&mut shard, sender, &[receiver], &[0; 600]);
        relay(&mut shard, sender, &[receiver], &[0; 600]);
        let errors: Vec<(u16, u64)> = queued(&conns[0].1)
            .into_iter()
            .map(|m| match m {
                HubMessage::Error(e) => (e.code, e.detail),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            errors,
            [
                (ErrorCode::ReceiverDropped.to_wire(), receiver),
                (ErrorCode::UnknownReceiver.to_wire(), receiver),
            ]
        );
        let cut = queued(&conns[1].1);
        assert!(
            matches!(cut.last(), Some(HubMessage::Error(e)) if e.code == ErrorCode::SlowConsumer.to_wire())
        );
        assert_eq!(shard.stats().slow_consumers.get(), 1);
        assert_eq!(shard.connected(), 1);
    }

    #[test]
    fn list_pages_exclude_the_caller_and_say_when_more_follow() {
        let (mut shard, conns) = shard_with(1 << 20, 6);
        let ids: Vec<u64> = conns.iter().map(|(id, _)| *id).collect();
        shard.list(ids[0], 1, 0, 3);
        shard.list(ids[0], 2, ids[3], 3);
        let pages: Vec<(Vec<u64>, bool)> = queued(&conns[0].1)
            .into_iter()
            .map(|m| match m {
                HubMessage::ListReply(r) => (r.users, r.more),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            pages,
            [(ids[1..4].to_vec(), true), (ids[4..6].to_vec(), false)]
        );
    }
}
