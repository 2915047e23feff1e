//! The log on a full disk, in memory: the core driven as the driver's log
//! writer drives it (batches written or failed, the room the disk gives).

use bytes::BytesMut;
use relayhub_protocol::{
    encode, preface_for, Ack, ErrorCodeV2, Hello, HubMessageV2, RelayV2Ref, VERSION_2,
};

use super::*;
use crate::shard::{
    tests::{limits, Client, Net},
    Limits, Read, WriteReady,
};

const BODY: &[u8] = &[7; 1000];

fn disk_limits() -> Limits {
    Limits {
        log_enabled: true,
        inflight_messages_max: 1000,
        inbox_messages_max: 1000,
        ..limits()
    }
}

/// The log writer succeeding: every batch written; returns them.
fn write_log(net: &mut Net) -> Vec<LogBatch> {
    let now = net.now_ms;
    let shard = &mut net.shards[0];
    let mut batches = Vec::new();
    while let Some(batch) = shard.poll_log(now) {
        shard.handle_log_written(now, batch.end_lsn, batch.new_generation);
        batches.push(batch);
    }
    batches
}

/// A new durable session on shard 0, its records written.
fn durable(net: &mut Net) -> Client {
    let id = net.accept(0);
    let mut bytes = BytesMut::from(&preface_for(VERSION_2)[..]);
    encode(&Hello::new_session(1, true), &mut bytes).unwrap();
    net.send(0, id, &bytes);
    write_log(net);
    let user = net.shards[0].conn(id).unwrap().user();
    let client = Client { shard: 0, id, user };
    assert!(matches!(
        net.output_v2(client).as_slice(),
        [HubMessageV2::WelcomeV2(welcome)] if welcome.durable && welcome.user == user
    ));
    client
}

fn relay(net: &mut Net, from: Client, request: u64, to: u64) {
    net.send_message(
        from,
        &RelayV2Ref {
            request,
            message_id: request,
            flags: 0,
            receivers: &[to],
            body: BODY,
        },
    );
}

/// `(request, refused with StorageFull)` of each `Stored` in `messages`.
fn answers(messages: &[HubMessageV2]) -> Vec<(u64, bool)> {
    let mut refused = Vec::new();
    let mut answers = Vec::new();
    for message in messages {
        match message {
            HubMessageV2::Error(error) => {
                assert_eq!(error.code, ErrorCodeV2::StorageFull.to_wire(), "{error:?}");
                refused.push(error.request);
            }
            HubMessageV2::Stored(stored) => {
                answers.push((stored.request, refused.contains(&stored.request)))
            }
            other => panic!("expected Stored or StorageFull, got {other:?}"),
        }
    }
    answers
}

/// Message ids delivered in `messages`, and the last seq.
fn delivered(messages: &[HubMessageV2]) -> (Vec<u64>, u64) {
    let mut ids = Vec::new();
    let mut last = 0;
    for message in messages {
        let HubMessageV2::DeliverV2(deliver) = message else {
            panic!("expected a delivery, got {message:?}");
        };
        ids.push(deliver.message_id);
        last = deliver.seq;
    }
    (ids, last)
}

fn log_bytes(net: &Net) -> u64 {
    net.shards[0].stats().log_bytes.get()
}

/// The room the disk gives the file bounds entries, less the reserve left
/// for other records; more room lets them in again.
#[test]
fn the_room_the_disk_gives_bounds_entries_less_the_reserve() {
    let mut net = Net::new(1, disk_limits());
    let receiver = durable(&mut net);
    let sender = durable(&mut net);
    let room = log_bytes(&net) + LOG_RESERVE_BYTES + 5 * 1100;
    net.shards[0].handle_log_room(room);
    let mut outcomes = Vec::new();
    for request in 1..=10 {
        relay(&mut net, sender, request, receiver.user);
        write_log(&mut net);
        assert!(log_bytes(&net) + LOG_RESERVE_BYTES <= room);
        outcomes.extend(answers(&net.output_v2(sender)));
    }
    let stored: Vec<u64> = outcomes
        .iter()
        .filter(|(_, refused)| !refused)
        .map(|&(request, _)| request)
        .collect();
    assert_eq!(outcomes.len(), 10);
    assert!((3..10).contains(&stored.len()), "{outcomes:?}");
    assert_eq!(stored, (1..=stored.len() as u64).collect::<Vec<_>>());
    assert_eq!(delivered(&net.output_v2(receiver)).0, stored);
    // More room lets entries in again.
    net.shards[0].handle_log_room(u64::MAX);
    relay(&mut net, sender, 11, receiver.user);
    write_log(&mut net);
    assert_eq!(answers(&net.output_v2(sender)), [(11, false)]);
}

/// A batch the disk refused goes out again, first in the next one; what
/// depends on it waits, and relays meanwhile get `StorageFull`.
#[test]
fn a_failed_write_goes_out_again_and_its_answers_wait() {
    let mut net = Net::new(1, disk_limits());
    let receiver = durable(&mut net);
    let sender = durable(&mut net);
    let now = net.now_ms;
    relay(&mut net, sender, 1, receiver.user);
    let failed = net.shards[0].poll_log(now).expect("the relay's batch");
    let failed_bytes = failed.bytes.clone();
    net.shards[0].handle_log_failed(now, failed);
    assert!(net.output_v2(sender).is_empty(), "Stored before durable");
    assert!(
        net.output_v2(receiver).is_empty(),
        "delivered before durable"
    );
    relay(&mut net, sender, 2, receiver.user);
    let again = net.shards[0].poll_log(now).expect("the batch again");
    assert!(!again.new_generation);
    assert!(again.bytes.starts_with(&failed_bytes));
    net.shards[0].handle_log_written(now, again.end_lsn, false);
    assert_eq!(answers(&net.output_v2(sender)), [(1, false), (2, true)]);
    assert_eq!(delivered(&net.output_v2(receiver)).0, [1]);
    relay(&mut net, sender, 3, receiver.user);
    write_log(&mut net);
    assert_eq!(answers(&net.output_v2(sender)), [(3, false)]);
    assert_eq!(net.shards[0].stats().log_write_errors.get(), 1);
}

/// A shard whose 64 KiB log holds 40 relays from `sender` to `receiver`,
/// delivered and answered but not acked: an ack makes a compaction due.
fn compaction_ready() -> (Net, Client, Client) {
    let mut net = Net::new(
        1,
        Limits {
            log_bytes_max: 64 << 10,
            ..disk_limits()
        },
    );
    let receiver = durable(&mut net);
    let sender = durable(&mut net);
    for request in 1..=40 {
        relay(&mut net, sender, request, receiver.user);
        write_log(&mut net);
    }
    assert_eq!(answers(&net.output_v2(sender)).len(), 40);
    (net, receiver, sender)
}

/// A compaction the disk refused leaves the current generation the log:
/// what the snapshot superseded is written there, the byte count stays
/// true, and the compaction is tried again later.
#[test]
fn a_failed_compaction_leaves_the_log_as_it_was() {
    let (mut net, receiver, sender) = compaction_ready();
    let (ids, last) = delivered(&net.output_v2(receiver));
    assert_eq!(ids.len(), 40);
    let before = log_bytes(&net);
    net.send_message(receiver, &Ack { upto: last });
    let now = net.now_ms;
    let snapshot = net.shards[0].poll_log(now).expect("a compaction");
    assert!(snapshot.new_generation);
    net.shards[0].handle_log_failed(now, snapshot);
    let fallback = net.shards[0].poll_log(now).expect("the superseded records");
    assert!(!fallback.new_generation, "not retried at once");
    net.shards[0].handle_log_written(now, fallback.end_lsn, false);
    assert_eq!(log_bytes(&net), before + fallback.bytes.len() as u64);
    assert!(net.shards[0].poll_log(now).is_none());
    assert_eq!(net.shards[0].stats().compactions.get(), 0);
    // Later, it is tried again.
    net.now_ms += COMPACTION_RETRY_MS;
    let batches = write_log(&mut net);
    assert!(batches.iter().any(|batch| batch.new_generation));
    assert_eq!(net.shards[0].stats().compactions.get(), 1);
    assert!(log_bytes(&net) < before);
    relay(&mut net, sender, 41, receiver.user);
    write_log(&mut net);
    assert_eq!(answers(&net.output_v2(sender)), [(41, false)]);
    assert_eq!(delivered(&net.output_v2(receiver)).0, [41]);
}

/// A compaction retried with nothing else to write, that fails again,
/// owes no write: durable relays are stored right after it, not refused
/// with `StorageFull` until some other record happens to be logged.
#[test]
fn a_failed_compaction_that_replaced_nothing_refuses_nothing() {
    let (mut net, receiver, sender) = compaction_ready();
    let (_, last) = delivered(&net.output_v2(receiver));
    net.send_message(receiver, &Ack { upto: last });
    let now = net.now_ms;
    let snapshot = net.shards[0].poll_log(now).expect("a compaction");
    net.shards[0].handle_log_failed(now, snapshot);
    write_log(&mut net);
    // The retry finds nothing pending: its snapshot replaces nothing.
    net.now_ms += COMPACTION_RETRY_MS;
    let now = net.now_ms;
    let retry = net.shards[0].poll_log(now).expect("the compaction again");
    assert!(retry.new_generation);
    assert!(net.shards[0].log.pending.is_empty());
    // An answer queued behind the snapshot: a relay to nobody stores
    // nothing, but its `Stored` waits for what was appended before it.
    relay(&mut net, sender, 50, 999_999);
    assert!(net.shards[0].log.pending.is_empty());
    let stored = |messages: Vec<HubMessageV2>| -> Vec<u64> {
        messages
            .into_iter()
            .filter_map(|message| match message {
                HubMessageV2::Stored(stored) => Some(stored.request),
                _ => None,
            })
            .collect()
    };
    assert!(
        stored(net.output_v2(sender)).is_empty(),
        "behind the snapshot"
    );
    net.shards[0].handle_log_failed(now, retry);
    assert!(net.shards[0].poll_log(now).is_none(), "nothing is owed");
    assert_eq!(
        stored(net.output_v2(sender)),
        [50],
        "released with the failure"
    );
    relay(&mut net, sender, 41, receiver.user);
    write_log(&mut net);
    assert_eq!(answers(&net.output_v2(sender)), [(41, false)]);
    assert_eq!(delivered(&net.output_v2(receiver)).0, [41]);
}

/// A half-close before the log was written: the `Stored` still goes out
/// once the batch is durable, then the connection ends cleanly.
#[test]
fn a_half_closed_sender_gets_its_stored_once_the_log_is_written() {
    let mut net = Net::new(1, disk_limits());
    let receiver = durable(&mut net);
    let sender = durable(&mut net);
    relay(&mut net, sender, 1, receiver.user);
    net.shards[0].handle_read(net.now_ms, sender.id, Read::End);
    assert!(net.output_v2(sender).is_empty(), "Stored before durable");
    assert_eq!(net.shards[0].poll_write(sender.id), WriteReady::Idle);
    write_log(&mut net);
    assert_eq!(answers(&net.output_v2(sender)), [(1, false)]);
    assert_eq!(net.shards[0].poll_write(sender.id), WriteReady::Done);
    assert_eq!(delivered(&net.output_v2(receiver)).0, [1]);
}
