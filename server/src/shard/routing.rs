//! Relays: each receiver's owner shard, local deliveries into receivers'
//! queues, mesh messages for the others, and errors reported back to the
//! sender wherever it lives.

use bytes::Bytes;
use relayhub_protocol::{encode_deliver, ArchivedUserId, DeliverRef, ErrorCode, RECEIVERS_MAX};

use super::{frames::Handled, Failures, MeshMessage, Receivers, Shard};
use crate::{conn::ConnId, ids::owner, outbound::PushError};

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

impl<Io> Shard<Io> {
    /// Routes one relay from `id` (limits already checked by the decoder).
    /// Pauses instead, routing nothing, when a shard it must reach has a
    /// full outbox.
    pub(super) fn relay(
        &mut self,
        now_ms: u64,
        id: ConnId,
        from: u64,
        request: u64,
        receivers: &[ArchivedUserId],
        body: &[u8],
    ) -> Handled {
        assert!(
            receivers.len() <= RECEIVERS_MAX,
            "the decoder checks receivers"
        );
        if let Some(target) = self.congested_target(receivers) {
            self.pause(id, target);
            return Handled::Paused;
        }
        self.stats.relays.incr();
        if let [receiver] = receivers {
            let receiver = receiver.to_native();
            let target = owner(receiver, self.shards);
            if target == self.index && body.len() <= INLINE_DELIVER_BYTES_MAX {
                let delivery = Delivery::Inline(DeliverRef { from, body });
                if let Some(code) = self.deliver_local(now_ms, receiver, delivery) {
                    self.report(now_ms, from, request, Failures::One((code, receiver)));
                }
                return Handled::Done;
            }
        }
        if receivers.is_empty() {
            return Handled::Done;
        }
        let frame = encode_deliver(from, body).expect("a relay's body fits a deliver frame");
        let mut route = std::mem::take(&mut self.route);
        let mut failures = Vec::new();
        for receiver in receivers {
            let receiver = receiver.to_native();
            let target = owner(receiver, self.shards);
            if target != self.index {
                route[target].push(receiver);
            } else if let Some(code) =
                self.deliver_local(now_ms, receiver, Delivery::Shared(&frame))
            {
                failures.push((code, receiver));
            }
        }
        for (target, users) in route.iter_mut().enumerate() {
            if users.is_empty() {
                continue;
            }
            let receivers = Receivers::from_slice(users);
            users.clear();
            let message = MeshMessage::Deliver {
                from,
                request,
                frame: frame.clone(),
                receivers,
            };
            self.send_mesh(now_ms, target, message);
        }
        self.route = route;
        if let Some(failures) = Failures::from_vec(failures) {
            self.report(now_ms, from, request, failures);
        }
        Handled::Done
    }

    /// A mesh `Deliver` from another shard: hand the shared frame to each
    /// local receiver, and report the ones that could not take it.
    pub(super) fn deliver_from_mesh(
        &mut self,
        now_ms: u64,
        from: u64,
        request: u64,
        frame: &Bytes,
        receivers: &Receivers,
    ) {
        let mut failures = Vec::new();
        for &receiver in receivers.as_slice() {
            if let Some(code) = self.deliver_local(now_ms, receiver, Delivery::Shared(frame)) {
                failures.push((code, receiver));
            }
        }
        if let Some(failures) = Failures::from_vec(failures) {
            self.report(now_ms, from, request, failures);
        }
    }

    /// Queues one delivery for a local receiver; the error code for the
    /// sender when it could not.
    fn deliver_local(
        &mut self,
        now_ms: u64,
        receiver: u64,
        delivery: Delivery<'_>,
    ) -> Option<ErrorCode> {
        let Some(&id) = self.users.get(&receiver) else {
            self.stats.unknown_receivers.incr();
            return Some(ErrorCode::UnknownReceiver);
        };
        let conn = self.conn_mut(id).expect("reachable users are in the table");
        let pushed = match delivery {
            Delivery::Shared(frame) => conn.outbound.push_shared(frame.clone()),
            Delivery::Inline(deliver) => conn.outbound.push_message(&deliver),
        };
        self.note_pushed(id);
        match pushed {
            Ok(()) => {
                self.stats.deliveries.incr();
                None
            }
            Err(PushError::Closing) => {
                self.stats.unknown_receivers.incr();
                Some(ErrorCode::UnknownReceiver)
            }
            Err(PushError::Overflow) => {
                self.cut_slow_consumer(now_ms, id);
                Some(ErrorCode::ReceiverDropped)
            }
        }
    }

    /// Tells `to` (on any shard) that some receivers of its request failed.
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
        let conn = self.conn_mut(id).expect("reachable users are in the table");
        let mut overflow = false;
        for &(code, receiver) in failures.as_slice() {
            overflow |=
                conn.outbound.push_error(code, request, receiver) == Err(PushError::Overflow);
        }
        self.note_pushed(id);
        if overflow {
            self.cut_slow_consumer(now_ms, id);
        }
    }
}
