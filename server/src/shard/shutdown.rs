//! Graceful shutdown in phases across every shard, with no shared state:
//!
//! 1. Each shard, when told to shut down, stops accepting and reading (bytes
//!    read after that are not handled) and sends a round-1 `Drain` marker to
//!    every other shard. It can create no more relays.
//! 2. A shard that is shutting down and has every other shard's round-1
//!    marker sends a round-2 marker to each. Rings are FIFO, so every relay
//!    another shard routed to it arrived before that shard's round-1 marker,
//!    and every error report it caused left before this shard's round-2
//!    marker.
//! 3. A shard with every other shard's round-2 marker has handled all it
//!    will ever be sent: it closes every connection with `ShuttingDown`
//!    after what is queued for it.
//!
//! The grace period bounds all three phases: at its end the shard closes
//! whatever is left, and connections still flushing are aborted.

use relayhub_protocol::ErrorCodeV2;

use super::{MeshMessage, Shard};
use crate::conn::ConnState;

/// A shard's progress through shutdown.
pub(super) struct Shutdown {
    /// When the grace period ends (shard clock, ms).
    pub(super) deadline_ms: u64,
    /// Every connection was closed with `ShuttingDown` (phase 3 ran).
    closed: bool,
    /// This shard sent its round-2 markers.
    sent_round_two: bool,
}

/// Markers received from other shards, counted even before this shard's
/// own shutdown starts (another shard may get there first).
#[derive(Default)]
pub(super) struct Markers {
    round_one: usize,
    round_two: usize,
}

impl<Io> Shard<Io> {
    /// Starts the graceful shutdown; `deadline_ms` ends the grace period.
    pub fn handle_shutdown(&mut self, now_ms: u64, deadline_ms: u64) {
        if self.shutdown.is_some() {
            return;
        }
        self.shutdown = Some(Shutdown {
            deadline_ms,
            closed: false,
            sent_round_two: false,
        });
        for id in self.conn_ids() {
            self.stop_reading(id);
            if let Some(conn) = self.conn_mut(id) {
                conn.paused_on = None;
            }
            // A paused connection had no deadline: it has one again.
            self.rearm(id);
        }
        self.mesh.clear_paused();
        // The timer may sleep past the end of the grace period.
        self.deadline_added(deadline_ms);
        let (index, shards) = (self.index, self.shards);
        for target in (0..shards).filter(|&target| target != index) {
            self.send_mesh(now_ms, target, MeshMessage::Drain { round: 1 });
        }
        self.advance_shutdown(now_ms);
    }

    /// True once shutdown has closed every connection, the table is empty
    /// and nothing waits in an outbox: the driver may stop.
    pub fn is_finished(&self) -> bool {
        self.shutdown.as_ref().is_some_and(|s| s.closed)
            && self.connections() == 0
            && self.mesh.is_empty()
    }

    /// The end of the grace period, while connections still wait for it.
    pub(super) fn shutdown_deadline(&self) -> Option<u64> {
        self.shutdown
            .as_ref()
            .filter(|shutdown| !shutdown.closed)
            .map(|shutdown| shutdown.deadline_ms)
    }

    /// At the end of the grace period: close what is left.
    pub(super) fn shutdown_timeout(&mut self, now_ms: u64) {
        if self
            .shutdown_deadline()
            .is_some_and(|deadline| deadline <= now_ms)
        {
            self.close_all(now_ms);
        }
    }

    pub(super) fn drain_marker(&mut self, now_ms: u64, _from: usize, round: u8) {
        match round {
            1 => self.markers.round_one += 1,
            2 => self.markers.round_two += 1,
            _ => unreachable!("drain rounds are 1 and 2"),
        }
        self.advance_shutdown(now_ms);
    }

    pub(super) fn advance_shutdown(&mut self, now_ms: u64) {
        let others = self.shards - 1;
        // Answers that wait for the log (Stored, Handled to other shards)
        // go out before the markers that let other shards close.
        let answered = self.log_waiting_empty();
        let Some(shutdown) = self.shutdown.as_mut() else {
            return;
        };
        if !shutdown.sent_round_two && self.markers.round_one == others && answered {
            shutdown.sent_round_two = true;
            let index = self.index;
            for target in (0..self.shards).filter(|&target| target != index) {
                self.send_mesh(now_ms, target, MeshMessage::Drain { round: 2 });
            }
        }
        let ready = self
            .shutdown
            .as_ref()
            .is_some_and(|s| s.sent_round_two && !s.closed);
        if ready && self.markers.round_two == others && answered {
            self.close_all(now_ms);
        }
    }

    /// Phase 3: every connection gets its queue, then `ShuttingDown`.
    fn close_all(&mut self, now_ms: u64) {
        if let Some(shutdown) = self.shutdown.as_mut() {
            shutdown.closed = true;
        }
        for id in self.conn_ids() {
            let takes_input = self.conn(id).is_some_and(|conn| {
                matches!(
                    conn.state,
                    ConnState::AwaitPreface | ConnState::AwaitHello | ConnState::Open
                )
            });
            if takes_input {
                self.close(now_ms, id, Some((ErrorCodeV2::ShuttingDown, 0, 0)));
            } else {
                // Half-closed and still owed replies at the end of the
                // grace period: what is queued is all it gets.
                self.end_replies(id, None);
            }
        }
    }
}
