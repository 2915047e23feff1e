//! Paged listing of connected users: this shard's users at once, the other
//! shards' through the mesh, merged when every shard has answered.

use foldhash::HashMap;

use relayhub_protocol::{ListReplyRef, LIST_PAGE_USERS_MAX};

use super::{MeshMessage, Shard};
use crate::{
    conn::{ConnId, Pause},
    outbound::PushError,
};

/// Most list requests one connection has gathering answers at once; its
/// next List waits (its input pauses) until one is answered. Bounds the
/// answers in flight per connection to this many pages.
pub const LISTS_PER_CONNECTION_MAX: usize = 4;

/// List requests waiting for the other shards' answers, by query id.
#[derive(Default)]
pub(super) struct Lists {
    pending: HashMap<u64, PendingList>,
    next_query: u64,
}

/// A list request waiting for the other shards' answers.
#[derive(Debug)]
struct PendingList {
    conn: ConnId,
    user: u64,
    request: u64,
    limit: usize,
    users: Vec<u64>,
    answers_missing: usize,
}

impl<Io> Shard<Io> {
    /// Answers a list request from `user` (at once on one shard, else once
    /// every other shard has answered).
    pub(super) fn list(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        user: u64,
        request: u64,
        after: u64,
        limit: u32,
    ) {
        let limit = match limit as usize {
            0 => LIST_PAGE_USERS_MAX,
            limit => limit.min(LIST_PAGE_USERS_MAX),
        };
        let users = self.local_users(after, limit, user);
        let pending = PendingList {
            conn,
            user,
            request,
            limit,
            users,
            answers_missing: self.shards - 1,
        };
        if self.shards == 1 {
            self.finish_list(now_ms, pending);
            return;
        }
        if let Some(conn) = self.conn_mut(conn) {
            conn.lists_pending += 1;
        }
        let query = self.lists.next_query;
        self.lists.next_query += 1;
        self.lists.pending.insert(query, pending);
        let origin = self.index;
        for target in (0..self.shards).filter(|&target| target != origin) {
            let message = MeshMessage::ListQuery {
                origin,
                query,
                after,
                limit,
            };
            self.send_mesh(now_ms, target, message);
        }
    }

    /// Up to `limit + 1` connected ids above `after`, `except` excluded: one
    /// more than a page, so the asker can tell whether more follow.
    pub(super) fn local_users(&self, after: u64, limit: usize, except: u64) -> Vec<u64> {
        let Some(from) = after.checked_add(1) else {
            return Vec::new();
        };
        self.users
            .range(from..)
            .map(|(&user, _)| user)
            .filter(|&user| user != except)
            .take(limit + 1)
            .collect()
    }

    /// Another shard's answer to one of our list queries.
    pub(super) fn list_answer(&mut self, now_ms: u64, query: u64, users: Vec<u64>) {
        let pending = self
            .lists
            .pending
            .get_mut(&query)
            .expect("a list answer matches a query this shard sent");
        pending.users.extend(users);
        pending.answers_missing -= 1;
        if pending.answers_missing == 0 {
            let pending = self.lists.pending.remove(&query).expect("present");
            self.finish_list(now_ms, pending);
        }
    }

    fn finish_list(&mut self, now_ms: u64, mut pending: PendingList) {
        assert_eq!(pending.answers_missing, 0);
        pending.users.sort_unstable();
        let more = pending.users.len() > pending.limit;
        pending.users.truncate(pending.limit);
        if self.shards > 1 {
            if let Some(conn) = self.conn_mut(pending.conn) {
                conn.lists_pending -= 1;
                if conn.paused_on == Some(Pause::Lists) {
                    self.unpause(pending.conn);
                }
            }
        }
        // The reply goes to the connection that asked, if it is still the
        // user's (a session taken over meanwhile, by a resume on a new
        // connection, must not get a reply to a request it never sent) or
        // half-closed and owed it.
        let id = pending.conn;
        let owed = self.conn(id).is_some_and(|conn| conn.replies_owed);
        if !owed && self.users.get(&pending.user) != Some(&id) {
            return;
        }
        let reply = ListReplyRef {
            request: pending.request,
            users: &pending.users,
            more,
        };
        let conn = self.conn_mut(id).expect("a connection asked");
        let pushed = conn.outbound.push_message(&reply);
        self.note_pushed(id);
        if pushed == Err(PushError::Overflow) {
            self.cut_slow_consumer(now_ms, id);
        }
        self.settle_replies(now_ms, id);
    }
}
