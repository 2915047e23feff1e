//! What shards send each other, the outbox towards each other shard with its
//! byte budget, and the readers paused while an outbox is over budget.
//!
//! Memory: a relay body crossing to shard `t` is held once, in a shared
//! `Bytes`, by the outbox towards `t` (at most `mesh_bytes_max` plus one
//! message, because a relay is only routed while the outbox is within
//! budget) and then by the ring to `t` (at most `mesh_bytes_max`, enforced by
//! the driver's forwarder with the ring's byte budget). A connection whose
//! relay would go to an over-budget outbox keeps that frame in its decoder
//! and stops reading (TCP backpressure on that sender only); it resumes when
//! the outbox is down to half the budget.

use bytes::Bytes;
use relayhub_protocol::ErrorCodeV2;

use super::{Event, Shard};
use crate::{
    conn::{ConnId, Pause},
    ids::owner,
};

/// Bytes a mesh message is counted for besides its body: the message itself
/// and its share of ring and outbox bookkeeping.
pub const MESH_MESSAGE_OVERHEAD_BYTES: usize = 64;

/// Bytes of one mesh ring slot (`size_of::<MeshMessage>()`): what
/// `--mesh-ring-slots` costs per slot, per ring (docs/operations.md states
/// the figure: change both together).
pub const MESH_SLOT_BYTES: usize = 96;

const _: () = assert!(std::mem::size_of::<MeshMessage>() == MESH_SLOT_BYTES);
// The ring budget's smallest value takes one maximal delivery.
const _: () = assert!(
    relayhub_protocol::deliver_frame_len(relayhub_protocol::BODY_BYTES_MAX)
        + MESH_MESSAGE_OVERHEAD_BYTES
        <= crate::config::MESH_BYTES_MIN
);

/// Receivers of one relay that live on one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receivers {
    /// The common 1:1 case, without an allocation.
    One(u64),
    /// Several receivers (at most `RECEIVERS_MAX`).
    Many(Box<[u64]>),
}

impl Receivers {
    pub(super) fn from_slice(users: &[u64]) -> Receivers {
        match users {
            [user] => Receivers::One(*user),
            users => Receivers::Many(users.into()),
        }
    }

    /// The receivers.
    pub fn as_slice(&self) -> &[u64] {
        match self {
            Receivers::One(user) => std::slice::from_ref(user),
            Receivers::Many(users) => users,
        }
    }
}

/// Receivers of one relay that did not get it, with the reason for each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failures {
    /// One receiver, without an allocation.
    One((ErrorCodeV2, u64)),
    /// Several.
    Many(Box<[(ErrorCodeV2, u64)]>),
}

impl Failures {
    pub(super) fn from_vec(failures: Vec<(ErrorCodeV2, u64)>) -> Option<Failures> {
        match failures.as_slice() {
            [] => None,
            [failure] => Some(Failures::One(*failure)),
            _ => Some(Failures::Many(failures.into_boxed_slice())),
        }
    }

    /// `(code, receiver)` pairs.
    pub fn as_slice(&self) -> &[(ErrorCodeV2, u64)] {
        match self {
            Failures::One(failure) => std::slice::from_ref(failure),
            Failures::Many(failures) => failures,
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
        /// The relay's body, shared by every receiver.
        frame: crate::outbound::SharedBody,
        /// Receivers owned by the target shard.
        receivers: Receivers,
        /// The sender's `message_id` (0: none).
        message_id: u64,
        /// A version-2 relay's ticket on the sender's shard, answered with
        /// [`MeshMessage::Handled`]; 0 for version 1.
        ticket: u64,
        /// The sender asked for receipts.
        receipt: bool,
    },
    /// The target's receivers of version-2 relay `ticket` were handled.
    Handled {
        /// The ticket on the sender's shard.
        ticket: u64,
        /// The sender's request id.
        request: u64,
        /// Receivers that did not get it, and why.
        failures: Option<Failures>,
        /// Every receiver there had stored it already (a retry).
        duplicate: bool,
    },
    /// Durable receiver `receiver` acked a message `to` asked receipts for.
    Receipt {
        /// The sender of the message.
        to: u64,
        /// Its `message_id`.
        message_id: u64,
        /// Who acked it.
        receiver: u64,
    },
    /// A connection whose `Hello` resumes a session the target owns: its
    /// socket (a descriptor the sending shard duplicated for it) and every
    /// byte read from the `Hello` on.
    Adopt {
        /// The socket's descriptor, now the target's to close.
        fd: i32,
        /// The connection's bytes from its `Hello` on.
        buffered: Bytes,
    },
    /// Queue `Error` frames for user `to` (owned by the target): receivers
    /// of its request that did not get the body.
    Report {
        /// The user to tell.
        to: u64,
        /// The request it concerns.
        request: u64,
        /// Which receivers, and why.
        failures: Failures,
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
        /// Ascending ids, at most the query's limit plus one.
        users: Vec<u64>,
    },
    /// Shutdown: the sender has finished round `round` (see `shutdown.rs`).
    Drain {
        /// 1: the sender stopped reading; 2: it has every round-1 marker.
        round: u8,
    },
}

impl MeshMessage {
    /// The bytes this message is counted for against the mesh budgets.
    pub fn weight(&self) -> usize {
        let payload = match self {
            MeshMessage::Deliver { frame, .. } => frame.frame_len(),
            MeshMessage::Report { failures, .. } => failures.as_slice().len() * 16,
            MeshMessage::Handled { failures, .. } => failures
                .as_ref()
                .map_or(0, |failures| failures.as_slice().len() * 16),
            MeshMessage::Adopt { buffered, .. } => buffered.len(),
            MeshMessage::Receipt { .. } => 0,
            MeshMessage::ListAnswer { users, .. } => users.len() * 8,
            MeshMessage::ListQuery { .. } | MeshMessage::Drain { .. } => 0,
        };
        MESH_MESSAGE_OVERHEAD_BYTES + payload
    }
}

/// The outboxes towards every other shard and the readers paused on them.
pub(super) struct MeshState {
    outboxes: Vec<std::collections::VecDeque<MeshMessage>>,
    /// Weight of each outbox's messages.
    outbox_bytes: Vec<usize>,
    /// The forwarder towards each shard waits for messages.
    forwarder_parked: Vec<bool>,
    /// Connections paused on each outbox.
    paused: Vec<std::collections::VecDeque<ConnId>>,
}

impl MeshState {
    pub(super) fn new(shards: usize) -> MeshState {
        MeshState {
            outboxes: (0..shards).map(|_| Default::default()).collect(),
            outbox_bytes: vec![0; shards],
            forwarder_parked: vec![false; shards],
            paused: (0..shards).map(|_| Default::default()).collect(),
        }
    }

    /// Forgets every paused reader (shutdown: nobody reads any more).
    pub(super) fn clear_paused(&mut self) {
        self.paused
            .iter_mut()
            .for_each(std::collections::VecDeque::clear);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.outboxes.iter().all(|outbox| outbox.is_empty())
    }
}

impl<Io> Shard<Io> {
    /// Queues `message` for shard `target`.
    pub(super) fn send_mesh(&mut self, _now_ms: u64, target: usize, message: MeshMessage) {
        assert_ne!(target, self.index, "no ring to oneself");
        self.stats.mesh_sent.incr();
        self.mesh.outbox_bytes[target] += message.weight();
        self.mesh.outboxes[target].push_back(message);
        if std::mem::take(&mut self.mesh.forwarder_parked[target]) {
            self.events.push_back(Event::MeshOutbox(target));
        }
    }

    /// A remote shard among `receivers`' owners that `id` must wait for:
    /// its outbox is over budget, or others already wait for it (then `id`
    /// queues behind them, unless it was woken for its turn).
    pub(super) fn congested_target(
        &self,
        id: ConnId,
        receivers: &[relayhub_protocol::ArchivedUserId],
    ) -> Option<usize> {
        receivers
            .iter()
            .map(|receiver| owner(receiver.to_native(), self.shards))
            .find(|&target| target != self.index && self.must_wait(id, target))
    }

    fn must_wait(&self, id: ConnId, target: usize) -> bool {
        if self.mesh.outbox_bytes[target] > self.limits.mesh_bytes_max {
            return true;
        }
        let has_turn = self
            .conn(id)
            .is_some_and(|conn| conn.mesh_turn == Some(target));
        !self.mesh.paused[target].is_empty() && !has_turn
    }

    /// Pauses `id`'s input until the outbox towards `target` drains.
    pub(super) fn pause(&mut self, id: ConnId, target: usize) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.paused_on.is_none() {
            conn.paused_on = Some(Pause::Mesh(target));
            conn.mesh_turn = None;
            self.mesh.paused[target].push_back(id);
            self.stats.backpressure_waits.incr();
        }
    }

    /// A remote outbox over budget (a List reaches every shard).
    pub(super) fn any_congested(&self, id: ConnId) -> Option<usize> {
        (0..self.shards).find(|&target| target != self.index && self.must_wait(id, target))
    }

    /// Lets a paused connection go on: its reader is woken.
    pub(super) fn unpause(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.paused_on.take().is_some() {
            self.events.push_back(Event::Readable(id));
            self.rearm(id);
        }
    }

    /// Moves up to `max` messages for `target` into `batch`. When there are
    /// none, the forwarder is parked until [`Event::MeshOutbox`].
    pub fn poll_mesh(&mut self, target: usize, max: usize, batch: &mut Vec<MeshMessage>) {
        let outbox = &mut self.mesh.outboxes[target];
        let take = outbox.len().min(max);
        for message in outbox.drain(..take) {
            self.mesh.outbox_bytes[target] -= message.weight();
            batch.push(message);
        }
        if batch.is_empty() {
            self.mesh.forwarder_parked[target] = true;
        }
        if self.mesh.outbox_bytes[target] <= self.limits.mesh_bytes_max / 2 {
            self.resume(target);
        }
    }

    /// Bytes waiting in the outbox towards `target`.
    pub fn outbox_bytes(&self, target: usize) -> usize {
        self.mesh.outbox_bytes[target]
    }

    /// Wakes connections waiting for the outbox towards `target`, first
    /// come first served, as many as their kept frames fit the budget (at
    /// least one when the outbox is empty). Each gets a turn: it routes
    /// until the outbox is over budget again, then queues at the back.
    fn resume(&mut self, target: usize) {
        let budget = self.limits.mesh_bytes_max;
        let mut projected = self.mesh.outbox_bytes[target];
        while let Some(&id) = self.mesh.paused[target].front() {
            let Some(conn) = self.conn(id) else {
                self.mesh.paused[target].pop_front();
                continue;
            };
            if conn.paused_on != Some(Pause::Mesh(target)) {
                self.mesh.paused[target].pop_front();
                continue;
            }
            let frame = conn.decoder_buffered();
            if projected > 0 && projected + frame > budget {
                break;
            }
            projected += frame;
            self.mesh.paused[target].pop_front();
            if let Some(conn) = self.conn_mut(id) {
                conn.mesh_turn = Some(target);
            }
            self.unpause(id);
        }
    }

    /// Handles one message from shard `from`.
    pub fn handle_mesh(&mut self, now_ms: u64, from: usize, message: MeshMessage) {
        match message {
            MeshMessage::Deliver {
                from: sender,
                request,
                frame,
                receivers,
                message_id,
                ticket,
                receipt,
            } => {
                let content = (ticket != 0 && self.limits.content_dedup_window_ms > 0)
                    .then(|| super::dedup::content_hash(frame.body_slice()));
                let relay = super::routing::RelayRequest {
                    from: sender,
                    request,
                    message_id,
                    receipt,
                    version: if ticket == 0 { 1 } else { 2 },
                    content,
                };
                self.deliver_from_mesh(now_ms, relay, &frame, &receivers, ticket)
            }
            MeshMessage::Handled {
                ticket,
                request,
                failures,
                duplicate,
            } => self.relay_handled(now_ms, ticket, request, failures, duplicate),
            MeshMessage::Receipt {
                to,
                message_id,
                receiver,
            } => self.send_receipt(now_ms, to, message_id, receiver),
            MeshMessage::Adopt { fd, buffered } => {
                self.adoptions.push_back(super::Adoption { fd, buffered });
                self.events.push_back(Event::Adopt);
            }
            MeshMessage::Report {
                to,
                request,
                failures,
            } => self.report(now_ms, to, request, failures),
            MeshMessage::ListQuery {
                origin,
                query,
                after,
                limit,
            } => {
                let users = self.local_users(after, limit, 0);
                self.send_mesh(now_ms, origin, MeshMessage::ListAnswer { query, users });
            }
            MeshMessage::ListAnswer { query, users } => self.list_answer(now_ms, query, users),
            MeshMessage::Drain { round } => self.drain_marker(now_ms, from, round),
        }
        // Counted after handling: whatever the message caused is counted as
        // sent before the message is counted as received.
        self.stats.mesh_received.incr();
    }
}
