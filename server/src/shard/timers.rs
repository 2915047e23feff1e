//! Deadlines: the idle timeout (no complete frame for `idle_timeout_ms`),
//! the frame timeout (a frame started and unfinished for
//! `frame_timeout_ms`), the flush deadline of a closing connection, and the
//! end of the shutdown grace period.
//!
//! One min-heap of `(deadline, connection)` per shard instead of a timer per
//! connection. A connection's deadlines only move later as frames arrive, so
//! the heap is not touched per frame: each connection keeps its earliest
//! entry's deadline in `armed_ms`; when an entry comes due, the real deadline
//! is computed afresh and either fires or is pushed again. An entry whose
//! deadline is not the connection's `armed_ms` is stale and skipped. A new
//! entry is pushed only when a deadline moves *earlier* than `armed_ms`
//! (a frame starts, the connection closes), so a connection has at most
//! three entries at once.

use std::{cmp::Reverse, collections::BinaryHeap};

use relayhub_protocol::ErrorCodeV2;

use super::{Event, Shard};
use crate::conn::{ConnId, ConnState, Connection};

/// The heap of connection deadlines.
#[derive(Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(u64, ConnId)>>,
    /// The deadline the driver was last told to sleep until (`u64::MAX`:
    /// none). A deadline earlier than it raises [`Event::TimerChanged`].
    driver_deadline_ms: Option<u64>,
}

/// What a connection's deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Due {
    Idle,
    Frame,
    Flush,
}

impl<Io> Connection<Io> {
    /// The connection's next deadline and what it is for.
    fn deadline(&self, limits: &super::Limits) -> Option<(u64, Due)> {
        match self.state {
            ConnState::AwaitPreface | ConnState::AwaitHello | ConnState::Open => {
                if self.paused_on.is_some() {
                    // Waiting for the hub, not for the client.
                    return None;
                }
                let frame = self
                    .frame_started_ms
                    .filter(|_| limits.frame_timeout_ms > 0)
                    .map(|started| (started.saturating_add(limits.frame_timeout_ms), Due::Frame));
                let idle = (limits.idle_timeout_ms > 0).then(|| {
                    let deadline = self.last_frame_ms.saturating_add(limits.idle_timeout_ms);
                    (deadline, Due::Idle)
                });
                match (frame, idle) {
                    (Some(frame), Some(idle)) => Some(if frame.0 <= idle.0 { frame } else { idle }),
                    (frame, idle) => frame.or(idle),
                }
            }
            ConnState::Closing => Some((self.flush_deadline_ms, Due::Flush)),
            ConnState::Aborted | ConnState::HandedOff => None,
        }
    }
}

impl<Io> Shard<Io> {
    /// Makes sure the heap holds `id`'s current deadline.
    pub(super) fn rearm(&mut self, id: ConnId) {
        let limits = &self.limits;
        let Some(conn) = super::slot_conn(&mut self.slots, id) else {
            return;
        };
        let Some((deadline, _)) = conn.deadline(limits) else {
            return;
        };
        if deadline >= conn.armed_ms {
            return;
        }
        conn.armed_ms = deadline;
        self.timers.heap.push(Reverse((deadline, id)));
        self.deadline_added(deadline);
    }

    /// A deadline of the shard's (a connection's, the grace period's end,
    /// the session sweep) is now `deadline`: tell the driver if it sleeps
    /// past it.
    pub(super) fn deadline_added(&mut self, deadline: u64) {
        if self
            .timers
            .driver_deadline_ms
            .is_some_and(|driver| deadline < driver)
        {
            self.timers.driver_deadline_ms = None;
            self.events.push_back(Event::TimerChanged);
        }
    }

    /// When the driver should call [`handle_timeout`](Self::handle_timeout)
    /// next (`None`: no deadline; an [`Event::TimerChanged`] says when that
    /// changes).
    pub fn poll_timeout(&mut self) -> Option<u64> {
        let connection = self
            .timers
            .heap
            .peek()
            .map(|Reverse((deadline, _))| *deadline);
        let next = [connection, self.shutdown_deadline(), self.sweep_deadline()]
            .into_iter()
            .flatten()
            .min();
        self.timers.driver_deadline_ms = Some(next.unwrap_or(u64::MAX));
        next
    }

    /// Fires every deadline at or before `now_ms`.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.shutdown_timeout(now_ms);
        self.sweep_sessions(now_ms);
        while let Some(&Reverse((deadline, id))) = self.timers.heap.peek() {
            if deadline > now_ms {
                break;
            }
            self.timers.heap.pop();
            let limits = &self.limits;
            let Some(conn) = super::slot_conn(&mut self.slots, id) else {
                continue;
            };
            if conn.armed_ms != deadline {
                continue; // Stale: a later entry or none replaced it.
            }
            conn.armed_ms = u64::MAX;
            match conn.deadline(limits) {
                Some((due_ms, due)) if due_ms <= now_ms => self.fire(now_ms, id, due),
                _ => {}
            }
            self.rearm(id);
        }
    }

    fn fire(&mut self, now_ms: u64, id: ConnId, due: Due) {
        match due {
            Due::Idle => {
                self.stats.idle_timeouts.incr();
                let timeout = self.limits.idle_timeout_ms;
                self.close(now_ms, id, Some((ErrorCodeV2::IdleTimeout, 0, timeout)));
            }
            Due::Frame => {
                self.stats.frame_timeouts.incr();
                let timeout = self.limits.frame_timeout_ms;
                self.close(now_ms, id, Some((ErrorCodeV2::FrameTimeout, 0, timeout)));
            }
            Due::Flush => {
                self.stats.flush_timeouts.incr();
                self.abort(id);
            }
        }
    }
}
