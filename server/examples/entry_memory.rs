//! What a waiting inbox entry costs in memory, measured: one shard's core
//! driven in memory (no sockets, the log's writes reported done at once),
//! a durable receiver offline, `MESSAGES` 1:1 relays from one sender
//! stored in its inbox; the heap bytes the shard holds per entry, counted by
//! an allocator around the system's (requested bytes; the allocator rounds
//! each allocation up a little). For `--storage memory` and `--storage
//! disk` (where an offline session's entries drop their bodies once
//! durable), bodies of 0, 8, 100 and 1000 bytes. docs/operations.md
//! ("Memory bound") quotes its output.
//!
//! ```sh
//! cargo run --release -p relayhub-server --example entry_memory -- [MESSAGES]
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use relayhub_protocol::{
    decode_frame_version, encode, preface_for, rkyv::util::AlignedVec, ClientSideV2, Hello,
    HubMessageV2, RelayV2Ref, PREFACE_BYTES, VERSION_2,
};
use relayhub_server::config::Config;
use relayhub_server::conn::ConnId;
use relayhub_server::shard::{Limits, Read, Shard};

/// Heap bytes allocated and not yet freed, process-wide.
static HELD: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is forwarded to `System` with the caller's layout and
// pointer unchanged; the counter is only arithmetic on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract for `layout`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc`/`realloc` above with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The glommio driver's calls, made in memory.
struct Driver {
    shard: Shard<()>,
    now_ms: u64,
}

impl Driver {
    fn send(&mut self, id: ConnId, bytes: &[u8]) {
        let taken = self.shard.feed_read(self.now_ms, id, bytes);
        assert_eq!(taken, bytes.len(), "the connection stopped reading");
        self.settle();
    }

    /// The log writer (every batch done at once); the events the driver
    /// would act on are taken (the writers here run after every send).
    fn settle(&mut self) {
        while let Some(batch) = self.shard.poll_log(self.now_ms) {
            self.shard
                .handle_log_written(self.now_ms, batch.end_lsn, batch.new_generation);
        }
        while self.shard.poll_event().is_some() {}
    }

    /// A new durable session: its connection and user id.
    fn durable(&mut self) -> (ConnId, u64) {
        let Ok(id) = self.shard.handle_accept(self.now_ms, ()) else {
            panic!("the shard refused a connection");
        };
        let mut bytes = BytesMut::from(&preface_for(VERSION_2)[..]);
        encode(&Hello::new_session(1, true), &mut bytes).expect("a Hello encodes");
        self.send(id, &bytes);
        let out = self.shard.take_written(id);
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(&out[PREFACE_BYTES..]);
        let (frame, _) =
            decode_frame_version::<ClientSideV2>(VERSION_2, &aligned).expect("the hub's WelcomeV2");
        let HubMessageV2::WelcomeV2(welcome) = frame.to_owned() else {
            panic!("expected WelcomeV2");
        };
        assert!(welcome.durable);
        (id, welcome.user)
    }

    fn disconnect(&mut self, id: ConnId) {
        self.shard.handle_read(self.now_ms, id, Read::End);
        self.shard.take_written(id);
        self.shard.handle_closed(id).expect("closed");
    }
}

/// Heap bytes the shard holds per stored entry.
fn bytes_per_entry(disk: bool, body_bytes: usize, messages: u64) -> f64 {
    let mut config = Config::for_tests(1);
    config.inbox_messages_max = messages + 1;
    config.inbox_bytes_max = 1 << 36;
    let limits = Limits {
        log_enabled: disk,
        ..Limits::from_config(&config, 1)
    };
    let mut driver = Driver {
        shard: Shard::new(0, 1, limits, Arc::default()),
        now_ms: 1,
    };
    let (receiver_conn, receiver) = driver.durable();
    let (sender_conn, _) = driver.durable();
    driver.disconnect(receiver_conn);
    let body = vec![7u8; body_bytes];
    let mut frame = BytesMut::new();
    let before = HELD.load(Ordering::Relaxed);
    for message_id in 1..=messages {
        frame.clear();
        let relay = RelayV2Ref {
            request: message_id,
            message_id,
            flags: 0,
            receivers: &[receiver],
            body: &body,
        };
        encode(&relay, &mut frame).expect("a relay encodes");
        driver.send(sender_conn, &frame);
        driver.shard.take_written(sender_conn);
    }
    drop(frame);
    let held = HELD.load(Ordering::Relaxed) - before;
    let stats = driver.shard.stats().snapshot();
    assert_eq!(stats.stored, messages, "every relay was stored");
    held as f64 / messages as f64
}

fn main() {
    let messages: u64 = std::env::args().nth(1).map_or(100_000, |n| {
        n.parse().expect("usage: entry_memory [MESSAGES]")
    });
    println!("{messages} waiting 1:1 relays to one offline durable session, one shard");
    println!(
        "| body bytes | --storage memory: bytes per entry | --storage disk: bytes per entry |"
    );
    println!("| ---: | ---: | ---: |");
    for body_bytes in [0, 8, 100, 1000] {
        let memory = bytes_per_entry(false, body_bytes, messages);
        let disk = bytes_per_entry(true, body_bytes, messages);
        println!("| {body_bytes} | {memory:.0} | {disk:.0} |");
    }
    println!("ENTRY_BYTES = {}", relayhub_server::shard::ENTRY_BYTES);
}
