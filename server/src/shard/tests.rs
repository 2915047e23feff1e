//! The core driven in memory: shards without sockets, mesh messages moved
//! by hand, time passed in. Each test drives the same `handle_*`/`poll_*`
//! calls the glommio driver makes.

use std::sync::Arc;

use bytes::BytesMut;
use relayhub_protocol::{
    decode_frame, decode_frame_version, encode, preface_for, rkyv::util::AlignedVec, ClientSide,
    ClientSideV2, EchoRef, ErrorCode, HubMessage, HubMessageV2, Identity, List, RelayRef,
    BODY_BYTES_MAX, PREFACE, PREFACE_BYTES, VERSION_2,
};

use super::*;
use crate::conn::ConnId;

/// Version-2 hub frames, decoded (a leading hub preface skipped).
pub(super) fn decode_v2(bytes: &[u8]) -> Vec<HubMessageV2> {
    let start = if bytes.starts_with(&preface_for(VERSION_2)) {
        PREFACE_BYTES
    } else {
        0
    };
    let mut aligned = AlignedVec::<16>::new();
    aligned.extend_from_slice(&bytes[start..]);
    let mut messages = Vec::new();
    let mut offset = 0;
    while offset < aligned.len() {
        let (frame, len) = decode_frame_version::<ClientSideV2>(VERSION_2, &aligned[offset..])
            .expect("valid version-2 frames");
        messages.push(frame.to_owned());
        offset += len;
    }
    messages
}

const IDLE_MS: u64 = 2_000;
const FRAME_MS: u64 = 500;

pub(super) fn limits() -> Limits {
    Limits {
        connections_max: 100,
        outbound_bytes_max: 64 << 20,
        idle_timeout_ms: IDLE_MS,
        frame_timeout_ms: FRAME_MS,
        close_flush_ms: 1_000,
        mesh_bytes_max: 4 << 20,
        session_expiry_ms: 60_000,
        message_ttl_ms: 0,
        inflight_messages_max: 4,
        inflight_bytes_max: 1 << 20,
        inbox_messages_max: 16,
        inbox_bytes_max: 8 << 20,
        sessions_max: 100,
        dedup_window_ms: 120_000,
        content_dedup_window_ms: 0,
        log_enabled: false,
        log_bytes_max: u64::MAX,
    }
}

/// Shards and the clients connected to them, all in memory.
pub(super) struct Net {
    pub(super) shards: Vec<Shard<()>>,
    pub(super) now_ms: u64,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Client {
    pub(super) shard: usize,
    pub(super) id: ConnId,
    pub(super) user: u64,
}

impl Net {
    pub(super) fn new(shards: usize, limits: Limits) -> Net {
        Net {
            shards: (0..shards)
                .map(|index| Shard::new(index, shards, limits.clone(), Arc::default()))
                .collect(),
            now_ms: 0,
        }
    }

    /// Accepts a connection on `shard` and sends its preface; returns the
    /// client after reading its welcome.
    pub(super) fn connect(&mut self, shard: usize) -> Client {
        let id = self.accept(shard);
        self.send(shard, id, &PREFACE);
        let user = self.shards[shard].conn(id).unwrap().user();
        let messages = self.take_output(shard, id);
        assert!(matches!(messages.as_slice(), [HubMessage::Welcome(w)] if w.user == user));
        Client { shard, id, user }
    }

    pub(super) fn accept(&mut self, shard: usize) -> ConnId {
        self.shards[shard]
            .handle_accept(self.now_ms, ())
            .map_err(|_| "refused")
            .unwrap()
    }

    /// The driver's read path: bytes into `read_buffer`, then `handle_read`.
    pub(super) fn send(&mut self, shard: usize, id: ConnId, bytes: &[u8]) {
        let taken = self.shards[shard].feed_read(self.now_ms, id, bytes);
        if taken < bytes.len() {
            panic!(
                "reader not ready with {} bytes to send",
                bytes.len() - taken
            );
        }
    }

    pub(super) fn send_message<M: relayhub_protocol::Message>(
        &mut self,
        client: Client,
        message: &M,
    ) {
        let mut wire = BytesMut::new();
        encode(message, &mut wire).unwrap();
        self.send(client.shard, client.id, &wire);
    }

    pub(super) fn relay(&mut self, client: Client, request: u64, receivers: &[u64], body: &[u8]) {
        self.send_message(
            client,
            &RelayRef {
                request,
                receivers,
                body,
            },
        );
    }

    /// The version-2 frames queued for `client`, decoded (the hub's
    /// preface skipped).
    pub(super) fn output_v2(&mut self, client: Client) -> Vec<HubMessageV2> {
        let bytes = self.take_bytes(client.shard, client.id);
        decode_v2(&bytes)
    }

    /// The raw bytes queued for `id` (the driver's write path).
    pub(super) fn take_bytes(&mut self, shard: usize, id: ConnId) -> Vec<u8> {
        self.shards[shard].take_written(id)
    }

    /// Frames queued for `id`, decoded; the hub's preface is skipped.
    pub(super) fn take_output(&mut self, shard: usize, id: ConnId) -> Vec<HubMessage> {
        let bytes = self.take_bytes(shard, id);
        decode_all(&bytes)
    }

    /// Moves every mesh message until all outboxes are empty.
    pub(super) fn settle(&mut self) {
        loop {
            let mut moved = false;
            for from in 0..self.shards.len() {
                for to in 0..self.shards.len() {
                    if from == to {
                        continue;
                    }
                    let mut batch = Vec::new();
                    self.shards[from].poll_mesh(to, usize::MAX, &mut batch);
                    for message in batch {
                        moved = true;
                        self.shards[to].handle_mesh(self.now_ms, from, message);
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    pub(super) fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
        for shard in &mut self.shards {
            shard.handle_timeout(self.now_ms);
        }
    }

    pub(super) fn events(&mut self, shard: usize) -> Vec<Event> {
        std::iter::from_fn(|| self.shards[shard].poll_event()).collect()
    }
}

fn decode_all(bytes: &[u8]) -> Vec<HubMessage> {
    let mut aligned = AlignedVec::<16>::new();
    let start = if bytes.starts_with(&PREFACE) {
        PREFACE.len()
    } else {
        0
    };
    aligned.extend_from_slice(&bytes[start..]);
    let mut messages = Vec::new();
    let mut offset = 0;
    while offset < aligned.len() {
        let (frame, len) = decode_frame::<ClientSide>(&aligned[offset..]).expect("valid frames");
        messages.push(frame.to_owned());
        offset += len;
    }
    messages
}

fn error_of(message: &HubMessage) -> (u16, u64, u64) {
    match message {
        HubMessage::Error(error) => (error.code, error.request, error.detail),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn deliver_of(message: &HubMessage) -> (u64, usize) {
    match message {
        HubMessage::Deliver(deliver) => (deliver.from, deliver.body.len()),
        other => panic!("expected a delivery, got {other:?}"),
    }
}

#[test]
fn inline_and_shared_deliveries_decode_the_same() {
    let mut net = Net::new(1, limits());
    let (sender, receiver, other) = (net.connect(0), net.connect(0), net.connect(0));
    let small = vec![1u8; INLINE_DELIVER_BYTES_MAX];
    let large = vec![2u8; INLINE_DELIVER_BYTES_MAX + 1];
    net.relay(sender, 1, &[receiver.user], &small);
    net.relay(sender, 2, &[receiver.user], &large);
    net.relay(sender, 3, &[receiver.user, other.user], &small);
    let expected = |body: &Vec<u8>| {
        HubMessage::Deliver(relayhub_protocol::Deliver {
            from: sender.user,
            body: body.clone(),
        })
    };
    assert_eq!(
        net.take_output(0, receiver.id),
        [expected(&small), expected(&large), expected(&small)]
    );
    assert_eq!(net.take_output(0, other.id), [expected(&small)]);
    assert_eq!(net.shards[0].stats().deliveries.get(), 4);
}

#[test]
fn overflow_cuts_the_receiver_off_and_tells_the_sender() {
    let mut net = Net::new(
        1,
        Limits {
            outbound_bytes_max: 1_000,
            ..limits()
        },
    );
    let (sender, receiver) = (net.connect(0), net.connect(0));
    for request in 1..=3 {
        net.relay(sender, request, &[receiver.user], &[0; 600]);
    }
    let errors: Vec<(u16, u64, u64)> = net.take_output(0, sender.id).iter().map(error_of).collect();
    assert_eq!(
        errors,
        [
            (ErrorCode::ReceiverDropped.to_wire(), 2, receiver.user),
            (ErrorCode::UnknownReceiver.to_wire(), 3, receiver.user),
        ]
    );
    let cut = net.take_output(0, receiver.id);
    assert_eq!(
        error_of(cut.last().unwrap()).0,
        ErrorCode::SlowConsumer.to_wire()
    );
    assert_eq!(net.shards[0].stats().slow_consumers.get(), 1);
    assert_eq!(net.shards[0].connected(), 1);
    assert_eq!(net.shards[0].poll_write(receiver.id), WriteReady::Done);
}

#[test]
fn list_pages_exclude_the_caller_and_say_when_more_follow() {
    let mut net = Net::new(1, limits());
    let clients: Vec<Client> = (0..6).map(|_| net.connect(0)).collect();
    let ids: Vec<u64> = clients.iter().map(|client| client.user).collect();
    net.send_message(
        clients[0],
        &List {
            request: 1,
            after: 0,
            limit: 3,
        },
    );
    net.send_message(
        clients[0],
        &List {
            request: 2,
            after: ids[3],
            limit: 3,
        },
    );
    let pages: Vec<(Vec<u64>, bool)> = net
        .take_output(0, clients[0].id)
        .into_iter()
        .map(|message| match message {
            HubMessage::ListReply(reply) => (reply.users, reply.more),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        pages,
        [(ids[1..4].to_vec(), true), (ids[4..6].to_vec(), false)]
    );
}

#[test]
fn a_writer_is_woken_once_per_park() {
    let mut net = Net::new(1, limits());
    let client = net.connect(0);
    assert_eq!(net.shards[0].poll_write(client.id), WriteReady::Idle);
    net.events(0);
    for request in 0..3 {
        net.send_message(client, &Identity { request });
    }
    let wakes = net
        .events(0)
        .into_iter()
        .filter(|event| *event == Event::Writable(client.id))
        .count();
    assert_eq!(wakes, 1, "three replies, one wake-up");
}

/// Two shards, `mesh_bytes_max` 4 MiB: 1 MiB relays from shard 0 to a
/// receiver on shard 1 fill the outbox; the sender pauses with its next
/// frame kept, a bystander on shard 0 goes on, and the sender resumes once
/// the outbox drains.
#[test]
fn a_full_outbox_pauses_only_the_sender_that_needs_it() {
    let mut net = Net::new(2, limits());
    let sender = net.connect(0);
    let bystander = net.connect(0);
    let friend = net.connect(0);
    let receiver = net.connect(1);
    let body = vec![7u8; BODY_BYTES_MAX];
    let mut wire = BytesMut::new();
    for request in 1..=8 {
        encode(
            &RelayRef {
                request,
                receivers: &[receiver.user],
                body: &body,
            },
            &mut wire,
        )
        .unwrap();
    }
    // Feed the eight relays until the reader pauses.
    let mut offset = 0;
    while offset < wire.len() {
        match net.shards[0].poll_read(0, sender.id) {
            ReadReady::Read => {}
            ReadReady::Paused => break,
            ReadReady::Stop => panic!("sender stopped"),
        }
        let buffer = net.shards[0].read_buffer(sender.id);
        let len = buffer.len().min(wire.len() - offset);
        buffer[..len].copy_from_slice(&wire[offset..offset + len]);
        offset += len;
        net.shards[0].handle_read(0, sender.id, Read::Bytes(len));
    }
    assert_eq!(net.shards[0].poll_read(0, sender.id), ReadReady::Paused);
    let budget = limits().mesh_bytes_max;
    let queued = net.shards[0].outbox_bytes(1);
    assert!(queued > budget, "paused only past the budget ({queued})");
    assert!(
        queued <= budget + relayhub_protocol::FRAME_BYTES_MAX + 2 * MESH_MESSAGE_OVERHEAD_BYTES,
        "one message past the budget at most ({queued})"
    );
    assert!(net.shards[0].stats().backpressure_waits.get() >= 1);

    // The bystander relays locally meanwhile.
    net.relay(bystander, 1, &[friend.user], b"still here");
    assert_eq!(
        deliver_of(&net.take_output(0, friend.id)[0]),
        (bystander.user, 10)
    );

    // Draining the outbox wakes the sender, which handles its kept frames.
    net.events(0);
    net.settle();
    assert!(net.events(0).contains(&Event::Readable(sender.id)));
    while offset < wire.len() || net.shards[0].poll_read(0, sender.id) != ReadReady::Read {
        match net.shards[0].poll_read(0, sender.id) {
            ReadReady::Paused => net.settle(),
            ReadReady::Read if offset < wire.len() => {
                let buffer = net.shards[0].read_buffer(sender.id);
                let len = buffer.len().min(wire.len() - offset);
                buffer[..len].copy_from_slice(&wire[offset..offset + len]);
                offset += len;
                net.shards[0].handle_read(0, sender.id, Read::Bytes(len));
            }
            ReadReady::Read => break,
            ReadReady::Stop => panic!("sender stopped"),
        }
    }
    net.settle();
    let delivered: Vec<(u64, usize)> = net
        .take_output(1, receiver.id)
        .iter()
        .map(deliver_of)
        .collect();
    assert_eq!(delivered, vec![(sender.user, BODY_BYTES_MAX); 8]);
    assert!(net.take_output(0, sender.id).is_empty(), "no errors");
}

#[test]
fn the_idle_timeout_counts_frames_not_bytes() {
    let mut net = Net::new(
        1,
        Limits {
            frame_timeout_ms: 0,
            ..limits()
        },
    );
    let client = net.connect(0);
    let mut wire = BytesMut::new();
    encode(
        &EchoRef {
            request: 1,
            body: &[0; 64],
        },
        &mut wire,
    )
    .unwrap();
    // One byte every 100 ms: bytes keep coming, no frame completes.
    for byte in &wire[..wire.len() - 1] {
        net.advance(100);
        if net.shards[0].poll_read(net.now_ms, client.id) != ReadReady::Read {
            break;
        }
        net.send(0, client.id, std::slice::from_ref(byte));
        if net.now_ms >= IDLE_MS + 100 {
            break;
        }
    }
    let messages = net.take_output(0, client.id);
    assert_eq!(
        error_of(messages.last().unwrap()),
        (ErrorCode::IdleTimeout.to_wire(), 0, IDLE_MS)
    );
    assert_eq!(net.shards[0].stats().idle_timeouts.get(), 1);
}

#[test]
fn the_idle_timeout_never_fires_early() {
    let mut net = Net::new(1, limits());
    let client = net.connect(0);
    for request in 0..5 {
        net.advance(IDLE_MS - 100);
        net.send_message(client, &EchoRef { request, body: b"" });
        assert_eq!(
            net.take_output(0, client.id).len(),
            1,
            "echo {request} answered"
        );
    }
    net.advance(IDLE_MS - 1);
    assert_eq!(
        net.shards[0].poll_read(net.now_ms, client.id),
        ReadReady::Read
    );
    net.advance(1);
    let messages = net.take_output(0, client.id);
    assert_eq!(error_of(&messages[0]).0, ErrorCode::IdleTimeout.to_wire());
}

#[test]
fn a_frame_must_arrive_within_the_frame_timeout() {
    let mut net = Net::new(1, limits());
    let client = net.connect(0);
    let mut wire = BytesMut::new();
    encode(
        &EchoRef {
            request: 1,
            body: &[0; 64],
        },
        &mut wire,
    )
    .unwrap();
    net.send(0, client.id, &wire[..10]);
    net.advance(FRAME_MS - 1);
    assert!(net.take_output(0, client.id).is_empty());
    net.advance(1);
    let messages = net.take_output(0, client.id);
    assert_eq!(
        error_of(&messages[0]),
        (ErrorCode::FrameTimeout.to_wire(), 0, FRAME_MS)
    );
    assert_eq!(net.shards[0].stats().frame_timeouts.get(), 1);
}

#[test]
fn an_error_before_the_welcome_follows_the_hubs_preface() {
    let mut net = Net::new(1, limits());
    let id = net.accept(0);
    net.send(0, id, &PREFACE[..3]);
    net.advance(FRAME_MS);
    let bytes = net.take_bytes(0, id);
    assert!(bytes.starts_with(&PREFACE), "our preface comes first");
    let messages = decode_all(&bytes);
    assert_eq!(error_of(&messages[0]).0, ErrorCode::FrameTimeout.to_wire());
}

#[test]
fn a_closing_connection_that_does_not_drain_is_aborted() {
    let mut net = Net::new(1, limits());
    let client = net.connect(0);
    net.send(0, client.id, b"garbage!garbage!");
    net.events(0);
    net.advance(limits().close_flush_ms);
    assert!(net.events(0).contains(&Event::Abort(client.id)));
    assert_eq!(net.shards[0].poll_write(client.id), WriteReady::Done);
    assert!(net.shards[0].handle_closed(client.id).is_some());
    assert_eq!(net.shards[0].connections(), 0);
}

#[test]
fn half_close_answers_what_arrived_then_closes() {
    let mut net = Net::new(1, limits());
    let client = net.connect(0);
    net.send_message(client, &Identity { request: 4 });
    net.shards[0].handle_read(net.now_ms, client.id, Read::End);
    let messages = net.take_output(0, client.id);
    assert!(matches!(messages.as_slice(), [HubMessage::IdentityReply(r)] if r.request == 4));
    assert_eq!(net.shards[0].poll_write(client.id), WriteReady::Done);
    assert_eq!(net.shards[0].connected(), 0, "unreachable after its end");
}

/// Shutdown across two shards: a relay already read on shard 0 towards
/// shard 1 is delivered before shard 1 says ShuttingDown, in whatever order
/// the shards start their shutdown.
#[test]
fn shutdown_drains_the_mesh_before_closing_anyone() {
    for first in 0..2 {
        let mut net = Net::new(2, limits());
        let sender = net.connect(0);
        let receiver = net.connect(1);
        net.relay(sender, 1, &[receiver.user], b"in flight");
        let deadline = net.now_ms + 5_000;
        net.shards[first].handle_shutdown(net.now_ms, deadline);
        net.settle();
        // One shard alone cannot finish: the other may still send.
        let early = net.take_output(1, receiver.id);
        assert_eq!(
            early.iter().map(deliver_of).collect::<Vec<_>>(),
            [(sender.user, 9)]
        );
        net.shards[1 - first].handle_shutdown(net.now_ms, deadline);
        net.settle();
        let late = net.take_output(1, receiver.id);
        assert_eq!(
            late.iter().map(error_of).collect::<Vec<_>>(),
            [(ErrorCode::ShuttingDown.to_wire(), 0, 0)]
        );
        for (shard, client) in [(0, sender), (1, receiver)] {
            net.take_bytes(shard, client.id);
            assert_eq!(net.shards[shard].poll_write(client.id), WriteReady::Done);
            net.shards[shard].handle_closed(client.id);
            assert!(net.shards[shard].is_finished());
        }
    }
}

#[test]
fn a_full_shard_refuses_with_server_full() {
    let mut net = Net::new(
        1,
        Limits {
            connections_max: 1,
            ..limits()
        },
    );
    net.connect(0);
    let refusal = net.shards[0].handle_accept(0, ()).unwrap_err();
    assert!(refusal.bytes.starts_with(&PREFACE));
    assert_eq!(
        error_of(&decode_all(&refusal.bytes)[0]),
        (ErrorCode::ServerFull.to_wire(), 0, 1)
    );
}
