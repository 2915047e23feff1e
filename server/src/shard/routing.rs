//! Relays: each receiver's owner shard, local deliveries into receivers'
//! queues or inboxes, mesh messages for the others, errors reported back to
//! the sender wherever it lives, and the `Stored` answer of a version-2
//! relay once every receiver's shard has handled it.

use relayhub_protocol::{
    flags, ArchivedRelayV2, ArchivedUserId, DeliverRef, DeliverV2Ref, ErrorCodeV2, SharedFrame,
    Stored, RECEIVERS_MAX, VERSION,
};

use super::{
    durability::Waiting,
    frames::Handled,
    sessions::{Body, Item},
    Failures, MeshMessage, Receivers, Shard,
};
use crate::store::record::MessageRecord;
use crate::{
    conn::{ConnId, Pause},
    ids::owner,
    outbound::{PushError, SharedBody},
};

/// Largest body a 1:1 local relay encodes straight into the receiver's
/// queue (a copy into its reply buffer, no allocation) instead of a shared
/// `Bytes` of its own. Bigger bodies get their own buffer, which the queue
/// can hand to the kernel without growing the reply buffer.
pub const INLINE_DELIVER_BYTES_MAX: usize = 4096;

/// Most version-2 relays one connection has waiting for other shards'
/// answers (their `Stored`); its next relay waits (its input pauses).
pub const RELAYS_PENDING_PER_CONNECTION_MAX: u16 = 1024;

/// What a relay is, besides its receivers and body.
#[derive(Clone, Copy, Debug)]
pub(super) struct RelayRequest {
    pub(super) from: u64,
    pub(super) request: u64,
    /// The sender's `message_id` (0: none, and always for version 1).
    pub(super) message_id: u64,
    /// The sender asked for receipts.
    pub(super) receipt: bool,
    /// The sender's protocol version.
    pub(super) version: u16,
    /// The body's hash, when content dedup applies (a version-2 relay with
    /// `--content-dedup-window-ms` set).
    pub(super) content: Option<super::dedup::ContentHash>,
}

/// A version-2 relay waiting for other shards before its `Stored`.
pub(super) struct PendingStored {
    conn: ConnId,
    /// The sender.
    from: u64,
    request: u64,
    message_id: u64,
    shards_missing: usize,
    /// Every receiver handled so far had stored it already.
    duplicate: bool,
    /// No receiver so far was refused.
    clean: bool,
}

/// A delivery on its way into a local receiver.
#[derive(Clone, Copy)]
enum Delivery<'a> {
    /// The relay's body, shared by its receivers on this shard.
    Shared(&'a SharedBody),
    /// A small 1:1 delivery, encoded in place.
    Inline(&'a [u8]),
}

impl<Io> Shard<Io> {
    /// A version-2 relay: a retry of a stored `message_id` is answered at
    /// once as a duplicate; anything else is routed, and `Stored` follows
    /// once every receiver's shard has handled it.
    pub(super) fn relay_v2(
        &mut self,
        now_ms: u64,
        id: ConnId,
        from: u64,
        relay: &ArchivedRelayV2,
        shared: Option<&SharedFrame>,
    ) -> Handled {
        let request = relay.request.to_native();
        let message_id = relay.message_id.to_native();
        let dedup = self.limits.dedup_window_ms > 0;
        // A retry at or below the mark, unless this id was refused by a
        // receiver or still waits for other shards: those are routed again.
        if dedup
            && message_id != 0
            && message_id <= *self.message_id_high(id)
            && !self.refused_or_pending(id, from, message_id)
        {
            self.stats.duplicates.incr();
            let stored = Stored {
                request,
                message_id,
                duplicate: true,
            };
            self.push_stored(now_ms, id, stored);
            return Handled::Done;
        }
        let conn = self.conn_mut(id).expect("the sender is in the table");
        if conn.relays_pending >= RELAYS_PENDING_PER_CONNECTION_MAX {
            conn.paused_on = Some(Pause::Relays);
            self.stats.backpressure_waits.incr();
            return Handled::Paused;
        }
        let request_of = RelayRequest {
            from,
            request,
            message_id,
            receipt: relay.flags.to_native() & flags::RECEIPT != 0,
            version: 2,
            content: (self.limits.content_dedup_window_ms > 0)
                .then(|| super::dedup::content_hash(relay.body.as_slice())),
        };
        let handled = self.relay(
            now_ms,
            id,
            request_of,
            relay.receivers.as_slice(),
            relay.body.as_slice(),
            shared,
        );
        // The high-water mark moves when `Stored` goes out (every receiver's
        // shard made the message durable), never before: a crash must not
        // leave a mark that makes the client's retry of a lost message look
        // like a duplicate.
        handled
    }

    /// Routes one relay from `id` (limits already checked by the decoder).
    /// Pauses instead, routing nothing, when a shard it must reach has a
    /// full outbox.
    pub(super) fn relay(
        &mut self,
        now_ms: u64,
        id: ConnId,
        relay: RelayRequest,
        receivers: &[ArchivedUserId],
        body: &[u8],
        shared: Option<&SharedFrame>,
    ) -> Handled {
        assert!(
            receivers.len() <= RECEIVERS_MAX,
            "the decoder checks receivers"
        );
        if let Some(target) = self.congested_target(id, receivers) {
            self.pause(id, target);
            return Handled::Paused;
        }
        self.stats.relays.incr();
        // A turn is one relay: the next one queues behind whoever waits,
        // so a sender towards a fast-draining shard cannot keep the turn.
        if let Some(conn) = self.conn_mut(id) {
            conn.mesh_turn = None;
        }
        self.route_handled = 0;
        self.route_duplicates = 0;
        if let [receiver] = receivers {
            let receiver = receiver.to_native();
            let target = owner(receiver, self.shards);
            if target == self.index && body.len() <= INLINE_DELIVER_BYTES_MAX {
                let failure = self.deliver_local(now_ms, &relay, receiver, Delivery::Inline(body));
                self.seal_batch(now_ms, &relay, body);
                self.finish_local(now_ms, id, &relay, failure.map(|code| (code, receiver)));
                return Handled::Done;
            }
        }
        let frame = SharedBody::new(relay.from, body, shared);
        let mut route = std::mem::take(&mut self.route);
        let mut failures = Vec::new();
        for receiver in receivers {
            let receiver = receiver.to_native();
            let target = owner(receiver, self.shards);
            if target != self.index {
                route[target].push(receiver);
            } else if let Some(code) =
                self.deliver_local(now_ms, &relay, receiver, Delivery::Shared(&frame))
            {
                failures.push((code, receiver));
            }
        }
        self.seal_batch(now_ms, &relay, body);
        let ticket = if relay.version == VERSION {
            0
        } else {
            self.next_ticket += 1;
            self.next_ticket
        };
        let mut shards_missing = 0;
        for (target, users) in route.iter_mut().enumerate() {
            if users.is_empty() {
                continue;
            }
            shards_missing += 1;
            let message = MeshMessage::Deliver {
                from: relay.from,
                request: relay.request,
                frame: frame.clone(),
                receivers: Receivers::from_slice(users),
                message_id: relay.message_id,
                ticket,
                receipt: relay.receipt,
            };
            users.clear();
            self.send_mesh(now_ms, target, message);
        }
        self.route = route;
        let clean = failures.is_empty();
        if !clean && relay.version != VERSION {
            self.note_refused(relay.from, id, relay.message_id);
        }
        if let Some(failures) = Failures::from_vec(failures) {
            self.report(now_ms, relay.from, relay.request, failures);
        }
        if relay.version != VERSION {
            if shards_missing == 0 {
                self.answer_stored(now_ms, id, &relay, clean);
            } else {
                let pending = PendingStored {
                    conn: id,
                    from: relay.from,
                    request: relay.request,
                    message_id: relay.message_id,
                    shards_missing,
                    duplicate: self.route_handled == self.route_duplicates,
                    clean,
                };
                self.pending_stored.insert(ticket, pending);
                if let Some(conn) = self.conn_mut(id) {
                    conn.relays_pending += 1;
                }
            }
        }
        Handled::Done
    }

    /// A 1:1 local relay is done: its error (if any), then its `Stored`.
    fn finish_local(
        &mut self,
        now_ms: u64,
        id: ConnId,
        relay: &RelayRequest,
        failure: Option<(ErrorCodeV2, u64)>,
    ) {
        let clean = failure.is_none();
        if let Some(failure) = failure {
            if relay.version != VERSION {
                self.note_refused(relay.from, id, relay.message_id);
            }
            self.report(now_ms, relay.from, relay.request, Failures::One(failure));
        }
        if relay.version != VERSION {
            self.answer_stored(now_ms, id, relay, clean);
        }
    }

    /// `clean`: every receiver took the message (no error was reported),
    /// so a retry of it would be a duplicate for all of them.
    fn answer_stored(&mut self, now_ms: u64, id: ConnId, relay: &RelayRequest, clean: bool) {
        let stored = Stored {
            request: relay.request,
            message_id: relay.message_id,
            duplicate: self.route_all_duplicate(),
        };
        self.after_durable(now_ms, Waiting::Stored(id, stored, clean));
    }

    /// Appends one `Message` record for the relay's local durable
    /// receivers (the body once, whatever their number) and releases their
    /// entries for delivery once it is durable.
    fn seal_batch(&mut self, now_ms: u64, relay: &RelayRequest, body: &[u8]) {
        if self.durable_batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.durable_batch);
        let message = MessageRecord {
            from: relay.from,
            message_id: relay.message_id,
            receipt: relay.receipt && relay.message_id != 0,
            stored_ms: now_ms,
            receivers: &batch,
            body,
        };
        let pos = self.log_message(&message);
        for &(user, seq) in &batch {
            self.seal(now_ms, user, seq, pos);
        }
        self.durable_batch = batch;
        self.durable_batch.clear();
    }

    /// A mesh `Deliver` from another shard: hand the shared frame to each
    /// local receiver, report the ones that could not take it, and answer a
    /// version-2 relay's ticket.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn deliver_from_mesh(
        &mut self,
        now_ms: u64,
        relay: RelayRequest,
        frame: &SharedBody,
        receivers: &Receivers,
        ticket: u64,
    ) {
        self.route_handled = 0;
        self.route_duplicates = 0;
        let mut failures = Vec::new();
        for &receiver in receivers.as_slice() {
            if let Some(code) =
                self.deliver_local(now_ms, &relay, receiver, Delivery::Shared(frame))
            {
                failures.push((code, receiver));
            }
        }
        if !self.durable_batch.is_empty() {
            self.seal_batch(now_ms, &relay, frame.body_slice());
        }
        let failures = Failures::from_vec(failures);
        if ticket == 0 {
            if let Some(failures) = failures {
                self.report(now_ms, relay.from, relay.request, failures);
            }
            return;
        }
        let target = owner(relay.from, self.shards);
        let message = MeshMessage::Handled {
            ticket,
            request: relay.request,
            failures,
            duplicate: self.route_all_duplicate(),
        };
        self.after_durable(now_ms, Waiting::Mesh(target, message));
    }

    /// Another shard handled its receivers of our version-2 relay `ticket`.
    /// Its errors, like its `Stored`, go to the connection that sent the
    /// relay, and are dropped when that connection is gone: a resumed
    /// session's new connection is never told about the old one's relays.
    pub(super) fn relay_handled(
        &mut self,
        now_ms: u64,
        ticket: u64,
        request: u64,
        failures: Option<Failures>,
        duplicate: bool,
    ) {
        let Some(pending) = self.pending_stored.get_mut(&ticket) else {
            return;
        };
        pending.duplicate &= duplicate;
        pending.clean &= failures.is_none();
        pending.shards_missing -= 1;
        let (id, done) = (pending.conn, pending.shards_missing == 0);
        let (from, message_id) = (pending.from, pending.message_id);
        if failures.is_some() {
            self.note_refused(from, id, message_id);
        }
        if let Some(failures) = failures {
            self.report_to_conn(now_ms, id, request, failures);
        }
        if !done {
            return;
        }
        let pending = self.pending_stored.remove(&ticket).expect("present");
        let Some(conn) = self.conn_mut(pending.conn) else {
            return;
        };
        conn.relays_pending -= 1;
        let paused = conn.paused_on == Some(Pause::Relays);
        let stored = Stored {
            request: pending.request,
            message_id: pending.message_id,
            duplicate: pending.duplicate,
        };
        self.after_durable(now_ms, Waiting::Stored(pending.conn, stored, pending.clean));
        if paused {
            self.unpause(pending.conn);
        }
        self.settle_replies(now_ms, pending.conn);
    }

    /// Hands one delivery to a local receiver: into its inbox when it has a
    /// durable session, else onto its connection (version 1's `Deliver`,
    /// or `DeliverV2` with `seq` 0). The error code for the sender when it
    /// could not.
    fn deliver_local(
        &mut self,
        now_ms: u64,
        relay: &RelayRequest,
        receiver: u64,
        delivery: Delivery<'_>,
    ) -> Option<ErrorCodeV2> {
        self.route_handled += 1;
        if let Some(hash) = relay.content {
            if self.content_seen(now_ms, receiver, hash) {
                self.stats.content_duplicates.incr();
                self.mark_refused(receiver, relay.from, relay.message_id);
                return Some(ErrorCodeV2::DuplicateContent);
            }
        }
        if self.is_durable(receiver) {
            if self.is_retry(receiver, relay.from, relay.message_id, now_ms) {
                self.route_duplicates += 1;
                self.stats.duplicates.incr();
                return None;
            }
            let frame = match delivery {
                Delivery::Shared(frame) => frame.clone(),
                Delivery::Inline(body) => SharedBody::new(relay.from, body, None),
            };
            let item = Item::Message {
                from: relay.from,
                message_id: relay.message_id,
                body: Body::Resident(frame),
                receipt: relay.receipt && relay.message_id != 0,
                pos: None,
            };
            return match self.store(now_ms, receiver, item) {
                Ok(seq) => {
                    self.durable_batch.push((receiver, seq));
                    self.mark_stored(receiver, relay.from, relay.message_id, now_ms);
                    self.content_accepted(now_ms, receiver, relay.content);
                    None
                }
                Err(code) => {
                    self.mark_refused(receiver, relay.from, relay.message_id);
                    Some(code)
                }
            };
        }
        let Some(&id) = self.users.get(&receiver) else {
            self.stats.unknown_receivers.incr();
            return Some(ErrorCodeV2::UnknownReceiver);
        };
        let conn = self.conn_mut(id).expect("reachable users are in the table");
        let meta = relayhub_protocol::DeliverV2Meta {
            from: relay.from,
            seq: 0,
            message_id: relay.message_id,
            flags: 0,
        };
        let pushed = match (conn.version() == VERSION, delivery) {
            (true, Delivery::Shared(frame)) => conn.outbound.push_deliver(frame),
            (true, Delivery::Inline(body)) => conn.outbound.push_message(&DeliverRef {
                from: relay.from,
                body,
            }),
            (false, Delivery::Shared(frame)) => conn.outbound.push_deliver_v2(frame, meta),
            (false, Delivery::Inline(body)) => conn.outbound.push_message(&DeliverV2Ref {
                from: relay.from,
                seq: 0,
                message_id: relay.message_id,
                flags: 0,
                body,
            }),
        };
        self.note_pushed(id);
        match pushed {
            Ok(()) => {
                self.stats.deliveries.incr();
                self.content_accepted(now_ms, receiver, relay.content);
                None
            }
            Err(PushError::Closing) => {
                self.stats.unknown_receivers.incr();
                Some(ErrorCodeV2::UnknownReceiver)
            }
            Err(PushError::Overflow) => {
                self.cut_slow_consumer(now_ms, id);
                Some(ErrorCodeV2::ReceiverDropped)
            }
        }
    }

    /// True when every receiver handled here had stored the relay already.
    fn route_all_duplicate(&self) -> bool {
        self.route_handled > 0 && self.route_duplicates == self.route_handled
    }

    /// The content-dedup window of `receiver` (its session's, or its
    /// connection's when ephemeral), created on first use.
    fn content_window(&mut self, receiver: u64) -> Option<&mut super::dedup::ContentWindow> {
        if self.sessions.map.contains_key(&receiver) {
            let session = self.sessions.map.get_mut(&receiver).expect("present");
            return Some(session.contents.get_or_insert_with(Default::default));
        }
        let id = *self.users.get(&receiver)?;
        let conn = self.conn_mut(id)?;
        Some(conn.contents.get_or_insert_with(Default::default))
    }

    /// Content dedup: true when `receiver` was sent a body with `hash`
    /// within the window (then drop it).
    fn content_seen(
        &mut self,
        now_ms: u64,
        receiver: u64,
        hash: super::dedup::ContentHash,
    ) -> bool {
        let window = self.limits.content_dedup_window_ms;
        self.content_window(receiver)
            .is_some_and(|contents| contents.seen(hash, now_ms, window))
    }

    /// The receiver took a body with `hash` (content dedup on): remember it.
    /// A body the receiver refused (a full inbox) is not remembered, so its
    /// resend is not a duplicate.
    fn content_accepted(
        &mut self,
        now_ms: u64,
        receiver: u64,
        hash: Option<super::dedup::ContentHash>,
    ) {
        if let Some(hash) = hash {
            if let Some(contents) = self.content_window(receiver) {
                contents.accept(hash, now_ms);
            }
        }
    }

    /// Tells `to` (on any shard) that some receivers of its request failed.
    /// A version-1 sender gets version 1's codes: a refusal it cannot know
    /// (`InboxFull`, ...) is `ReceiverDropped`, "did not get the body".
    pub(super) fn report(&mut self, now_ms: u64, to: u64, request: u64, failures: Failures) {
        let target = owner(to, self.shards);
        if target != self.index {
            let message = MeshMessage::Report {
                to,
                request,
                failures,
            };
            self.send_mesh(now_ms, target, message);
            return;
        }
        let Some(&id) = self.users.get(&to) else {
            // The sender left: nobody is there to tell.
            return;
        };
        self.report_to_conn(now_ms, id, request, failures);
    }

    /// Queues the errors of `id`'s request `request` on that connection,
    /// if it is still there.
    fn report_to_conn(&mut self, now_ms: u64, id: ConnId, request: u64, failures: Failures) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let version_one = conn.version() == VERSION;
        let mut overflow = false;
        for &(code, receiver) in failures.as_slice() {
            let code = if version_one && code.v1().is_none() {
                ErrorCodeV2::ReceiverDropped
            } else {
                code
            };
            overflow |=
                conn.outbound.push_error(code, request, receiver) == Err(PushError::Overflow);
        }
        self.note_pushed(id);
        if overflow {
            self.cut_slow_consumer(now_ms, id);
        }
    }
}

impl<Io> Shard<Io> {
    /// A receiver refused `message_id` of `from`'s relay (sent on `id`):
    /// a retry of it must be routed again, whatever the sender's mark.
    fn note_refused(&mut self, from: u64, id: ConnId, message_id: u64) {
        if message_id == 0 {
            return;
        }
        if let Some(refused) = self.message_id_refused(from, id) {
            *refused = (*refused).min(message_id);
        }
    }

    /// True when `message_id` of the sender on `id` may not have been
    /// stored for every receiver: at or above an id a receiver refused, or
    /// still waiting for other shards' answers.
    fn refused_or_pending(&mut self, id: ConnId, from: u64, message_id: u64) -> bool {
        let refused = self.message_id_refused(from, id).map_or(u64::MAX, |r| *r);
        message_id >= refused
            || self
                .pending_stored
                .values()
                .any(|pending| pending.from == from && pending.message_id == message_id)
    }
}
