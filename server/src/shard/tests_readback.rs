//! Offline bodies in the log, in memory: the core driven with a model of
//! the driver's files (batches appended, snapshots written to a new
//! generation with their copies, the old generation gone once the core
//! took the new one), reads served from those files, and recovery from
//! them.

use std::collections::HashMap;

use bytes::BytesMut;
use relayhub_protocol::{
    encode, preface_for, Ack, Hello, HubMessageV2, Identity, ResumeToken, VERSION_2,
};

use super::{
    sessions::{Body, Item},
    tests::{limits, Client, Net},
    *,
};
use crate::store::recovery::scan;

fn wire<M: relayhub_protocol::Message>(message: &M) -> BytesMut {
    let mut out = BytesMut::new();
    encode(message, &mut out).expect("fits");
    out
}

/// The files of shard 0's log, by generation.
#[derive(Default)]
struct Disk {
    files: HashMap<u32, Vec<u8>>,
    generation: u32,
}

impl Disk {
    /// The driver's writer: every batch written and reported; a snapshot
    /// becomes the new generation and the old file goes.
    fn write(&mut self, net: &mut Net) {
        let now = net.now_ms;
        while let Some(batch) = net.shards[0].poll_log(now) {
            self.apply(&batch);
            net.shards[0].handle_log_written(now, batch.end_lsn, batch.new_generation);
            if batch.new_generation {
                self.files.remove(&(self.generation - 1));
            }
        }
    }

    /// What a batch does to the files (without telling the core).
    fn apply(&mut self, batch: &LogBatch) {
        if !batch.new_generation {
            let file = self.files.entry(self.generation).or_default();
            file.extend_from_slice(&batch.bytes);
            return;
        }
        let current = &self.files[&self.generation];
        let mut fresh = Vec::new();
        let mut done = 0;
        for &(at, pos) in &batch.copies {
            fresh.extend_from_slice(&batch.bytes[done..at]);
            done = at;
            let start = pos.offset as usize;
            fresh.extend_from_slice(&current[start..start + pos.len.get() as usize]);
        }
        fresh.extend_from_slice(&batch.bytes[done..]);
        assert_eq!(fresh.len() as u64, batch.len());
        self.generation += 1;
        self.files.insert(self.generation, fresh);
    }

    /// The driver's reader: every read served from the files; the results.
    fn serve(&mut self, net: &mut Net) -> Vec<Result<(), ReadBackError>> {
        let now = net.now_ms;
        let mut results = Vec::new();
        while let Some(read) = net.shards[0].poll_body_read() {
            let file = &self.files[&read.pos.generation];
            let start = read.pos.offset as usize;
            let bytes = file[start..start + read.pos.len.get() as usize].to_vec();
            results.push(net.shards[0].handle_body_read(now, read, &bytes));
        }
        results
    }
}

fn disk_limits() -> Limits {
    Limits {
        log_enabled: true,
        inflight_messages_max: 8,
        inbox_messages_max: 1000,
        ..limits()
    }
}

/// A durable session on shard 0 and its token, its records written.
fn session(net: &mut Net, disk: &mut Disk) -> (Client, ResumeToken) {
    let (client, messages) = net.hello(0, Hello::new_session(1, true));
    assert!(messages.is_empty(), "welcomed before durable: {messages:?}");
    disk.write(net);
    let messages = net.output_v2(client);
    let [HubMessageV2::WelcomeV2(welcome)] = messages.as_slice() else {
        panic!("expected WelcomeV2, got {messages:?}");
    };
    let client = Client {
        user: welcome.user,
        ..client
    };
    (client, welcome.token)
}

/// Resumes `user`: the client and what it got after its welcome.
fn resume(
    net: &mut Net,
    disk: &mut Disk,
    user: u64,
    token: ResumeToken,
) -> (Client, Vec<HubMessageV2>) {
    let (client, _) = net.hello(0, Hello::resume(2, user, token));
    disk.write(net);
    let mut messages = net.output_v2(client);
    let HubMessageV2::WelcomeV2(welcome) = messages.remove(0) else {
        panic!("expected WelcomeV2, got {messages:?}");
    };
    assert!(welcome.resumed);
    let client = Client { user, ..client };
    (client, messages)
}

fn body(n: u64) -> Vec<u8> {
    format!("message {n}: ").repeat(40).into_bytes()
}

/// `(message_id, body)` of each delivery; panics on anything else.
fn deliveries(messages: &[HubMessageV2]) -> Vec<(u64, Vec<u8>)> {
    messages
        .iter()
        .map(|message| match message {
            HubMessageV2::DeliverV2(deliver) => (deliver.message_id, deliver.body.to_vec()),
            other => panic!("expected a delivery, got {other:?}"),
        })
        .collect()
}

/// How many of `user`'s entries keep their body in memory, and how many
/// only in the log.
fn residency(net: &Net, user: u64) -> (usize, usize) {
    let session = &net.shards[0].sessions.map[&user];
    let mut counts = (0, 0);
    for entry in &session.inbox {
        match &entry.item {
            Item::Message {
                body: Body::Resident(_),
                ..
            } => counts.0 += 1,
            Item::Message { .. } => counts.1 += 1,
            Item::Receipt { .. } => {}
        }
    }
    counts
}

/// A receiver that went offline, and a sender that relayed `ids` to it.
fn offline_inbox(net: &mut Net, disk: &mut Disk, ids: std::ops::Range<u64>) -> (u64, ResumeToken) {
    let (receiver, token) = session(net, disk);
    let (sender, _) = session(net, disk);
    net.disconnect(receiver);
    for id in ids {
        net.relay_v2(sender, id, id, &[receiver.user], &body(id));
        disk.write(net);
    }
    (receiver.user, token)
}

/// An offline session's durable entries keep no body in memory; on
/// resume they are read back, checked, and sent in order, each once.
#[test]
fn offline_bodies_are_read_back_in_order_on_resume() {
    let mut net = Net::new(1, disk_limits());
    let mut disk = Disk::default();
    let (user, token) = offline_inbox(&mut net, &mut disk, 1..13);
    assert_eq!(residency(&net, user), (0, 12));
    let (client, messages) = resume(&mut net, &mut disk, user, token);
    assert!(messages.is_empty(), "sent before read back: {messages:?}");
    let results = disk.serve(&mut net);
    // Read ahead: the inflight window (8), not the whole inbox.
    assert_eq!(results, vec![Ok(()); 8]);
    let got = deliveries(&net.output_v2(client));
    let expected: Vec<(u64, Vec<u8>)> = (1..=8).map(|id| (id, body(id))).collect();
    assert_eq!(got, expected);
    net.send_message(client, &Ack { upto: 8 });
    assert_eq!(disk.serve(&mut net), vec![Ok(()); 4]);
    let got = deliveries(&net.output_v2(client));
    let expected: Vec<(u64, Vec<u8>)> = (9..=12).map(|id| (id, body(id))).collect();
    assert_eq!(got, expected);
    assert_eq!(net.shards[0].stats().bodies_read.get(), 12);
    assert_eq!(net.shards[0].body_reads_pending(), 0);
}

/// Relays 1000-byte bodies from `sender` to `churn`, which acks each,
/// until the shard has compacted `compactions` times.
fn churn_until_compacted(
    net: &mut Net,
    disk: &mut Disk,
    sender: Client,
    churn: Client,
    compactions: u64,
) {
    let mut id = 100;
    while net.shards[0].stats().compactions.get() < compactions {
        assert!(id < 400, "no compaction");
        net.relay_v2(sender, id, id, &[churn.user], &[9; 1000]);
        disk.write(net);
        let (_, last) = last_seq(&net.output_v2(churn));
        net.send_message(churn, &Ack { upto: last });
        disk.write(net);
        id += 1;
    }
}

/// A compaction copies records whose bodies are only in the log into the
/// new file, and the entries follow them there (the old file is gone).
#[test]
fn a_compaction_carries_logged_bodies_into_the_new_generation() {
    let mut net = Net::new(
        1,
        Limits {
            log_bytes_max: 64 << 10,
            ..disk_limits()
        },
    );
    let mut disk = Disk::default();
    let (user, token) = offline_inbox(&mut net, &mut disk, 1..4);
    let (churn, _) = session(&mut net, &mut disk);
    let (sender, _) = session(&mut net, &mut disk);
    churn_until_compacted(&mut net, &mut disk, sender, churn, 2);
    assert_eq!(disk.files.len(), 1, "the old generations are gone");
    assert_eq!(residency(&net, user), (0, 3));
    let (client, _) = resume(&mut net, &mut disk, user, token);
    assert_eq!(disk.serve(&mut net), vec![Ok(()); 3]);
    let expected: Vec<(u64, Vec<u8>)> = (1..=3).map(|id| (id, body(id))).collect();
    assert_eq!(deliveries(&net.output_v2(client)), expected);
}

fn last_seq(messages: &[HubMessageV2]) -> (usize, u64) {
    let mut last = 0;
    for message in messages {
        if let HubMessageV2::DeliverV2(deliver) = message {
            last = deliver.seq;
        }
    }
    (messages.len(), last)
}

/// Records appended while a snapshot was being written land in the
/// current file after all when the snapshot fails: their entries point
/// there, and read back right.
#[test]
fn after_a_failed_compaction_entries_point_into_the_current_file() {
    let mut net = Net::new(
        1,
        Limits {
            log_bytes_max: 64 << 10,
            ..disk_limits()
        },
    );
    let mut disk = Disk::default();
    let (user, token) = offline_inbox(&mut net, &mut disk, 1..3);
    let (churn, _) = session(&mut net, &mut disk);
    let (sender, _) = session(&mut net, &mut disk);
    let now = net.now_ms;
    let mut id = 100;
    let snapshot = loop {
        assert!(id < 400, "no compaction");
        net.relay_v2(sender, id, id, &[churn.user], &[9; 1000]);
        let batch = net.shards[0].poll_log(now).expect("a batch");
        if batch.new_generation {
            break batch;
        }
        disk.apply(&batch);
        net.shards[0].handle_log_written(now, batch.end_lsn, false);
        let (_, last) = last_seq(&net.output_v2(churn));
        net.send_message(churn, &Ack { upto: last });
        id += 1;
    };
    // While the snapshot is out, one more message for the offline session.
    net.relay_v2(sender, 1000, 1000, &[user], &body(3));
    net.shards[0].handle_log_failed(now, snapshot);
    disk.write(&mut net);
    assert_eq!(disk.generation, 0, "the compaction is retried only later");
    assert_eq!(residency(&net, user), (0, 3));
    let (client, _) = resume(&mut net, &mut disk, user, token);
    assert_eq!(disk.serve(&mut net), vec![Ok(()); 3]);
    let expected = vec![(1, body(1)), (2, body(2)), (1000, body(3))];
    assert_eq!(deliveries(&net.output_v2(client)), expected);
}

/// Shard 0 restarted at `now_ms`: recovered from the disk's current file.
fn restart(disk: &Disk, limits: Limits, now_ms: u64) -> Net {
    let file = &disk.files[&disk.generation];
    let mut net = Net::new(1, limits);
    net.now_ms = now_ms;
    let shard = &mut net.shards[0];
    shard.begin_recovery(u64::from(disk.generation));
    let scanned = scan(file, |record, offset, len| {
        let pos = LogPos {
            generation: disk.generation,
            len: record_len(len),
            offset,
        };
        shard.recover(now_ms, record, pos);
    })
    .expect("a clean log");
    shard.finish_recovery(now_ms, scanned.valid_bytes, scanned.valid_bytes);
    net
}

/// Entries recovery rebuilds keep only their position; a resume reads
/// them from the recovered file.
#[test]
fn recovered_entries_are_read_back_from_the_recovered_file() {
    let mut net = Net::new(1, disk_limits());
    let mut disk = Disk::default();
    let (user, token) = offline_inbox(&mut net, &mut disk, 1..6);
    let mut net = restart(&disk, disk_limits(), net.now_ms);
    assert_eq!(residency(&net, user), (0, 5));
    let (client, _) = resume(&mut net, &mut disk, user, token);
    assert_eq!(disk.serve(&mut net), vec![Ok(()); 5]);
    let got = deliveries(&net.output_v2(client));
    let expected: Vec<(u64, Vec<u8>)> = (1..=5).map(|id| (id, body(id))).collect();
    assert_eq!(got, expected);
}

/// A session that had acked everything when a compaction wrote the
/// snapshot goes on from its next `seq` after a restart: a sequence is
/// never handed out twice, and the first message after the restart is
/// delivered (given `seq` 1 again, it would sit below the ack floor,
/// skipped, and be dropped by the next ack).
#[test]
fn sequences_go_on_after_a_compaction_and_a_restart() {
    let limits = Limits {
        log_bytes_max: 64 << 10,
        ..disk_limits()
    };
    let mut net = Net::new(1, limits.clone());
    let mut disk = Disk::default();
    let (quiet, quiet_token) = session(&mut net, &mut disk);
    let (churn, _) = session(&mut net, &mut disk);
    let (sender, sender_token) = session(&mut net, &mut disk);
    for id in 1..=3 {
        net.relay_v2(sender, id, id, &[quiet.user], &body(id));
        disk.write(&mut net);
    }
    let (_, acked) = last_seq(&net.output_v2(quiet));
    assert_eq!(acked, 3);
    net.send_message(quiet, &Ack { upto: acked });
    disk.write(&mut net);
    churn_until_compacted(&mut net, &mut disk, sender, churn, 1);
    assert_eq!(
        disk.files.len(),
        1,
        "only the snapshot's generation is left"
    );

    let recovered_bytes = disk.files[&disk.generation].len();
    let mut net = restart(&disk, limits, net.now_ms);
    let (quiet, _) = resume(&mut net, &mut disk, quiet.user, quiet_token);
    let (sender, _) = resume(&mut net, &mut disk, sender.user, sender_token);
    net.relay_v2(sender, 1000, 1000, &[quiet.user], &body(1000));
    disk.write(&mut net);
    let messages = net.output_v2(quiet);
    let [HubMessageV2::DeliverV2(deliver)] = messages.as_slice() else {
        panic!("expected the new message, got {messages:?}");
    };
    assert_eq!((deliver.seq, deliver.message_id), (4, 1000));
    // `log_appended` counts this run's appends, not the recovered file.
    let appended = disk.files[&disk.generation].len() - recovered_bytes;
    assert_eq!(net.shards[0].stats().log_appended.get(), appended as u64);
    net.send_message(quiet, &Ack { upto: 4 });
    assert!(net.output_v2(quiet).is_empty(), "the ack is in range");
}

/// A durable session on a disk-backed shard whose client has left, its
/// records written: the shard's limits, the shard, its files, the client
/// and the session's token.
fn detached_session() -> (Limits, Net, Disk, Client, ResumeToken) {
    let limits = disk_limits();
    let mut net = Net::new(1, limits.clone());
    let mut disk = Disk::default();
    let (client, token) = session(&mut net, &mut disk);
    net.disconnect(client);
    disk.write(&mut net);
    (limits, net, disk, client, token)
}

/// A session that went offline, came back, and was connected at a crash
/// counts its expiry from the restart, like one that never left: its
/// earlier detach does not expire it at the first sweep.
#[test]
fn a_session_resumed_before_a_crash_counts_its_expiry_from_the_restart() {
    let (limits, mut net, mut disk, client, token) = detached_session();
    let expiry = limits.session_expiry_ms;
    net.advance(10);
    let (_, messages) = resume(&mut net, &mut disk, client.user, token);
    assert!(messages.is_empty(), "{messages:?}");
    disk.write(&mut net);

    // The crash, and a restart long after the detach.
    let restarted_ms = net.now_ms + expiry + 5_000;
    let mut net = restart(&disk, limits, restarted_ms);
    net.advance(expiry - 1_000);
    assert_eq!(net.shards[0].stats().sessions_expired.get(), 0);
    resume(&mut net, &mut disk, client.user, token);
}

/// A record that does not check out when read back is not delivered, nor
/// skipped: the entry stays, the error is counted and returned for the
/// driver's log, and later entries wait behind it.
#[test]
fn a_corrupt_record_read_back_is_neither_sent_nor_skipped() {
    let mut net = Net::new(1, disk_limits());
    let mut disk = Disk::default();
    let (user, token) = offline_inbox(&mut net, &mut disk, 1..3);
    // Flip a byte in the first message's body.
    let first = match &net.shards[0].sessions.map[&user].inbox[0].item {
        Item::Message { pos: Some(pos), .. } => *pos,
        _ => panic!("a logged message"),
    };
    disk.files.get_mut(&0).unwrap()[first.offset as usize + 100] ^= 1;
    let (client, _) = resume(&mut net, &mut disk, user, token);
    let results = disk.serve(&mut net);
    assert_eq!(
        results,
        [
            Err(ReadBackError::Invalid(
                crate::store::record::Invalid::Checksum
            )),
            Ok(())
        ]
    );
    assert!(net.output_v2(client).is_empty(), "sent past a bad record");
    assert_eq!(net.shards[0].stats().body_read_errors.get(), 1);
    assert_eq!(net.shards[0].inbox_len(user), Some(2));
    assert!(
        disk.serve(&mut net).is_empty(),
        "not read again until the session's next ack or resume"
    );
}

/// A session that goes offline again drops the bodies it read back.
#[test]
fn a_session_that_leaves_again_drops_what_it_read_back() {
    let mut net = Net::new(1, disk_limits());
    let mut disk = Disk::default();
    let (user, token) = offline_inbox(&mut net, &mut disk, 1..5);
    let (client, _) = resume(&mut net, &mut disk, user, token);
    assert_eq!(disk.serve(&mut net).len(), 4);
    assert_eq!(residency(&net, user), (4, 0));
    net.disconnect(client);
    disk.write(&mut net);
    assert_eq!(residency(&net, user), (0, 4));
}

/// The sizes docs/operations.md gives for an inbox entry and a session.
#[test]
fn entry_and_session_sizes_are_the_documented_ones() {
    assert_eq!((ENTRY_BYTES, SESSION_BYTES), (112, 288));
    assert_eq!(std::mem::size_of::<Option<LogPos>>(), 16);
    // A retry-dedup slot: the sender's id and its mark (the `K` term).
    assert_eq!(std::mem::size_of::<(u64, super::sessions::RetryMark)>(), 40);
}

/// Many sessions resuming at once share the shard's read budget: the read
/// buffers never pass `READ_BACK_BYTES_MAX`, sessions that find no room
/// wait, and every one gets all of its messages, in order.
#[test]
fn resumes_at_once_share_the_read_budget() {
    let mut net = Net::new(
        1,
        Limits {
            sessions_max: 1000,
            connections_max: 1000,
            ..disk_limits()
        },
    );
    let mut disk = Disk::default();
    let (sender, _) = session(&mut net, &mut disk);
    let mut offline = Vec::new();
    for _ in 0..80 {
        let (receiver, token) = session(&mut net, &mut disk);
        net.disconnect(receiver);
        offline.push((receiver.user, token));
    }
    let mut id = 0;
    for round in 0..8 {
        for &(user, _) in &offline {
            id += 1;
            net.relay_v2(sender, id, id, &[user], &body(round));
        }
        disk.write(&mut net);
    }
    let mut clients = Vec::new();
    let mut most = 0;
    for &(user, token) in &offline {
        let (client, messages) = resume(&mut net, &mut disk, user, token);
        assert!(messages.is_empty());
        most = most.max(net.shards[0].body_reads_pending());
        clients.push(client);
    }
    // 640 reads of 8 KiB each would be 5 MiB: some sessions waited.
    assert!(most <= READ_BACK_BYTES_MAX, "{most} bytes being read");
    assert!(most > READ_BACK_BYTES_MAX - 2 * read_charge_of_one(&net, offline[0].0));
    let results = disk.serve(&mut net);
    assert_eq!(results.len(), 640);
    assert!(results.iter().all(Result::is_ok));
    for client in clients {
        let got: Vec<Vec<u8>> = deliveries(&net.output_v2(client))
            .into_iter()
            .map(|(_, body)| body)
            .collect();
        let expected: Vec<Vec<u8>> = (0..8).map(body).collect();
        assert_eq!(got, expected, "user {}", client.user);
    }
    assert_eq!(net.shards[0].body_reads_pending(), 0);
}

/// `count` receivers offline and a sender that relayed `ids` to all of
/// them at once (one record per relay), then a restart: every body is in
/// the log only.
fn offline_fan_out(
    count: usize,
    ids: std::ops::Range<u64>,
) -> (Net, Disk, Vec<(u64, ResumeToken)>) {
    let mut net = Net::new(1, disk_limits());
    let mut disk = Disk::default();
    let (sender, _) = session(&mut net, &mut disk);
    let mut offline = Vec::new();
    for _ in 0..count {
        let (receiver, token) = session(&mut net, &mut disk);
        net.disconnect(receiver);
        offline.push((receiver.user, token));
    }
    let users: Vec<u64> = offline.iter().map(|&(user, _)| user).collect();
    for id in ids {
        net.relay_v2(sender, id, id, &users, &body(id));
        disk.write(&mut net);
    }
    let net = restart(&disk, disk_limits(), net.now_ms);
    (net, disk, offline)
}

/// The body buffer of `user`'s entry `seq`, if it is in memory.
fn resident_body(net: &Net, user: u64, seq: u64) -> Option<*const u8> {
    let session = &net.shards[0].sessions.map[&user];
    session
        .inbox
        .iter()
        .find(|entry| entry.seq == seq)
        .and_then(|entry| match &entry.item {
            Item::Message {
                body: Body::Resident(body),
                ..
            } => Some(body.body_slice().as_ptr()),
            _ => None,
        })
}

/// Receivers of one relay that resume together read its record once: the
/// later ones join the first one's read, take the same buffer, and each
/// gets every message in order.
#[test]
fn a_fan_out_resumed_together_reads_each_record_once() {
    let (mut net, mut disk, offline) = offline_fan_out(3, 1..6);
    let mut clients = Vec::new();
    for &(user, token) in &offline {
        let (client, messages) = resume(&mut net, &mut disk, user, token);
        assert!(messages.is_empty(), "sent before read back: {messages:?}");
        clients.push(client);
    }
    let one = read_charge_of_one(&net, offline[0].0);
    assert_eq!(net.shards[0].body_reads_pending(), 5 * one, "charged once");
    assert_eq!(disk.serve(&mut net), vec![Ok(()); 5], "one read per record");
    let stats = net.shards[0].stats();
    assert_eq!(
        (stats.bodies_read.get(), stats.body_reads_shared.get()),
        (15, 10)
    );
    let shared = resident_body(&net, clients[0].user, 1).expect("in memory");
    for client in &clients[1..] {
        assert_eq!(
            resident_body(&net, client.user, 1),
            Some(shared),
            "one buffer"
        );
    }
    let expected: Vec<(u64, Vec<u8>)> = (1..=5).map(|id| (id, body(id))).collect();
    for client in clients {
        assert_eq!(
            deliveries(&net.output_v2(client)),
            expected,
            "user {}",
            client.user
        );
    }
    assert_eq!(net.shards[0].body_reads_pending(), 0);
}

/// A receiver that resumes after the read of its record ended reads it
/// again: only reads that overlap are shared.
#[test]
fn a_receiver_that_comes_after_the_read_reads_again() {
    let (mut net, mut disk, offline) = offline_fan_out(2, 1..3);
    let (first, _) = resume(&mut net, &mut disk, offline[0].0, offline[0].1);
    assert_eq!(disk.serve(&mut net), vec![Ok(()); 2]);
    let (second, _) = resume(&mut net, &mut disk, offline[1].0, offline[1].1);
    assert_eq!(disk.serve(&mut net), vec![Ok(()); 2]);
    let expected: Vec<(u64, Vec<u8>)> = (1..=2).map(|id| (id, body(id))).collect();
    assert_eq!(deliveries(&net.output_v2(first)), expected);
    assert_eq!(deliveries(&net.output_v2(second)), expected);
    let stats = net.shards[0].stats();
    assert_eq!(
        (stats.bodies_read.get(), stats.body_reads_shared.get()),
        (4, 0)
    );
}

/// A read asked for before a compaction moved its record joins the read
/// another receiver asked for at the record's new place: one read serves
/// both, from the new file.
#[test]
fn a_read_queued_before_a_compaction_joins_the_one_after_it() {
    let mut net = Net::new(
        1,
        Limits {
            log_bytes_max: 64 << 10,
            ..disk_limits()
        },
    );
    let mut disk = Disk::default();
    let (sender, _) = session(&mut net, &mut disk);
    let (early, early_token) = session(&mut net, &mut disk);
    let (late, late_token) = session(&mut net, &mut disk);
    net.disconnect(early);
    net.disconnect(late);
    disk.write(&mut net);
    for id in 1..4 {
        net.relay_v2(sender, id, id, &[early.user, late.user], &body(id));
        disk.write(&mut net);
    }
    let (churn, _) = session(&mut net, &mut disk);
    let (early, _) = resume(&mut net, &mut disk, early.user, early_token);
    churn_until_compacted(&mut net, &mut disk, sender, churn, 1);
    assert_eq!(
        disk.files.len(),
        1,
        "the file the reads were asked in is gone"
    );
    let (late, _) = resume(&mut net, &mut disk, late.user, late_token);
    assert_eq!(disk.serve(&mut net), vec![Ok(()); 3], "one read per record");
    let expected: Vec<(u64, Vec<u8>)> = (1..=3).map(|id| (id, body(id))).collect();
    assert_eq!(deliveries(&net.output_v2(early)), expected);
    assert_eq!(deliveries(&net.output_v2(late)), expected);
    assert_eq!(net.shards[0].stats().body_reads_shared.get(), 3);
    assert_eq!(net.shards[0].body_reads_pending(), 0);
}

/// A resume whose first deliveries must be read back from the log sends
/// them before it handles the frames behind its `Hello`: an `Ack` of them
/// in the same write is in range, and replies come after them
/// (docs/protocol.md, "Acks"). The driver's reader asks at once; the disk
/// answers later.
#[test]
fn frames_behind_a_resume_wait_for_its_inbox_to_be_read_back() {
    let mut net = Net::new(1, disk_limits());
    let mut disk = Disk::default();
    let (user, token) = offline_inbox(&mut net, &mut disk, 1..4);
    let id = net.accept(0);
    let mut bytes = BytesMut::from(&preface_for(VERSION_2)[..]);
    for frame in [
        wire(&Hello::resume(2, user, token)),
        wire(&Ack { upto: 3 }),
        wire(&Identity { request: 3 }),
    ] {
        bytes.extend_from_slice(&frame);
    }
    net.send(0, id, &bytes);
    disk.write(&mut net);
    let now = net.now_ms;
    assert_eq!(net.shards[0].poll_read(now, id), ReadReady::Paused);
    assert_eq!(disk.serve(&mut net), vec![Ok(()); 3]);
    assert_eq!(net.shards[0].poll_read(now, id), ReadReady::Read);
    disk.write(&mut net);
    let client = Client { shard: 0, id, user };
    let messages = net.output_v2(client);
    let kinds: Vec<(&str, u64)> = messages
        .iter()
        .map(|message| match message {
            HubMessageV2::WelcomeV2(welcome) => ("welcome", welcome.request),
            HubMessageV2::DeliverV2(deliver) => ("deliver", deliver.seq),
            HubMessageV2::IdentityReply(reply) => ("identity", reply.request),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("welcome", 2),
            ("deliver", 1),
            ("deliver", 2),
            ("deliver", 3),
            ("identity", 3)
        ]
    );
    assert_eq!(
        net.shards[0].inbox_len(user),
        Some(0),
        "the ack took all three"
    );
}

/// A read that fails ends the wait: the frames behind the `Hello` are
/// handled (they may hold the ack the session needs to read again).
#[test]
fn a_failed_read_back_lets_the_frames_behind_a_resume_go_on() {
    let mut net = Net::new(1, disk_limits());
    let mut disk = Disk::default();
    let (user, token) = offline_inbox(&mut net, &mut disk, 1..2);
    let id = net.accept(0);
    let mut bytes = BytesMut::from(&preface_for(VERSION_2)[..]);
    bytes.extend_from_slice(&wire(&Hello::resume(2, user, token)));
    bytes.extend_from_slice(&wire(&Identity { request: 3 }));
    net.send(0, id, &bytes);
    disk.write(&mut net);
    let now = net.now_ms;
    assert_eq!(net.shards[0].poll_read(now, id), ReadReady::Paused);
    let read = net.shards[0].poll_body_read().expect("a read");
    net.shards[0].handle_body_unread(read);
    assert_eq!(net.shards[0].poll_read(now, id), ReadReady::Read);
    let messages = net.output_v2(Client { shard: 0, id, user });
    assert!(
        matches!(
            messages.as_slice(),
            [HubMessageV2::WelcomeV2(_), HubMessageV2::IdentityReply(reply)] if reply.request == 3
        ),
        "{messages:?}"
    );
}

/// The budget one read of `user`'s first entry takes.
fn read_charge_of_one(net: &Net, user: u64) -> u64 {
    match &net.shards[0].sessions.map[&user].inbox[0].item {
        Item::Message { pos: Some(pos), .. } => read_charge(*pos),
        _ => panic!("a logged message"),
    }
}

/// A read the driver cannot make (its file is not open) leaves the entry
/// in the log and stops the session's reads until its next resume, which
/// reads it again.
#[test]
fn a_read_the_driver_cannot_make_is_made_again_on_resume() {
    let mut net = Net::new(1, disk_limits());
    let mut disk = Disk::default();
    let (user, token) = offline_inbox(&mut net, &mut disk, 1..3);
    let (client, _) = resume(&mut net, &mut disk, user, token);
    let read = net.shards[0].poll_body_read().expect("a read");
    net.shards[0].handle_body_unread(read);
    assert_eq!(disk.serve(&mut net), [Ok(())], "the other read");
    assert!(
        net.output_v2(client).is_empty(),
        "sent past the unread entry"
    );
    assert!(disk.serve(&mut net).is_empty(), "not asked again at once");
    assert_eq!(net.shards[0].stats().body_read_errors.get(), 1);
    net.disconnect(client);
    disk.write(&mut net);
    // The original token is the previous one now: still valid.
    let (client, _) = resume(&mut net, &mut disk, user, token);
    assert_eq!(disk.serve(&mut net), vec![Ok(()); 2]);
    let expected: Vec<(u64, Vec<u8>)> = (1..=2).map(|id| (id, body(id))).collect();
    assert_eq!(deliveries(&net.output_v2(client)), expected);
}

/// One durable client of the recovery property test.
struct Actor {
    user: u64,
    token: ResumeToken,
    client: Option<Client>,
    /// The highest `seq` it was sent (what it may ack).
    seen: u64,
    next_message_id: u64,
}

/// Resumes `actor`, taking the token its `WelcomeV2` rotates to. With
/// `compact`, the log's last sync fails while the welcome waits for the
/// log, so that a compaction snapshots the session then (a sync failure
/// makes the shard compact next, when the log is mostly dead).
fn resume_actor(net: &mut Net, disk: &mut Disk, actor: &mut Actor, compact: bool) {
    let (client, _) = net.hello(0, Hello::resume(7, actor.user, actor.token));
    if compact {
        net.shards[0].handle_log_unsynced();
    }
    disk.write(net);
    let messages = net.output_v2(client);
    let Some(HubMessageV2::WelcomeV2(welcome)) = messages.first() else {
        panic!(
            "user {}: expected a resumed WelcomeV2, got {messages:?}",
            actor.user
        );
    };
    assert!(welcome.resumed);
    actor.token = welcome.token;
    actor.client = Some(Client {
        user: actor.user,
        ..client
    });
    note_seen(actor, &messages[1..]);
}

fn note_seen(actor: &mut Actor, messages: &[HubMessageV2]) {
    for message in messages {
        match message {
            HubMessageV2::DeliverV2(deliver) => actor.seen = actor.seen.max(deliver.seq),
            HubMessageV2::Receipt(receipt) => actor.seen = actor.seen.max(receipt.seq),
            _ => {}
        }
    }
}

/// A relay from `actors[who]`, if connected, to one to three random
/// actors, with a random body and, one time in four, a receipt asked for.
fn random_relay(net: &mut Net, rng: &mut rand::rngs::StdRng, actors: &mut [Actor], who: usize) {
    use rand::Rng;
    let Some(from) = actors[who].client else {
        return;
    };
    assert_eq!(
        net.shards[0].poll_read(net.now_ms, from.id),
        ReadReady::Read,
        "only the clients close"
    );
    let count = rng.random_range(1..=3);
    let to: Vec<u64> = (0..count)
        .map(|_| actors[rng.random_range(0..actors.len())].user)
        .collect();
    let message_id = actors[who].next_message_id;
    actors[who].next_message_id += 1;
    let body = vec![b'x'; rng.random_range(1..1500)];
    let flags = if rng.random_bool(0.25) {
        relayhub_protocol::flags::RECEIPT
    } else {
        0
    };
    let relay = relayhub_protocol::RelayV2Ref {
        request: message_id,
        message_id,
        flags,
        receivers: &to,
        body: &body,
    };
    net.send_message(from, &relay);
}

/// `actor` acks everything it was sent, if connected.
fn ack_seen(net: &mut Net, actor: &Actor) {
    if let (Some(client), seen) = (actor.client, actor.seen) {
        if seen > 0 {
            net.send_message(client, &Ack { upto: seen });
        }
    }
}

/// The log and the core agree: for seeded random sequences of durable
/// sessions relaying (with and without receipts), acking, leaving,
/// resuming and waiting (entries expiring, sessions too), with a log
/// small enough to compact every few dozen relays (and compacting, when
/// it can, while a resume's welcome waits for the log), a shard recovered from
/// its files at the end of each sequence (its log written out) holds
/// every durable session as the live shard had it at its last log write
/// (the crash comes after a tail of operations whose records are lost): tokens, ack floor, next `seq`, sender mark, when it left (or the
/// restart, if connected), and every entry that has not expired, with its
/// `seq`, time, sender, `message_id`, body size or receipt.
#[test]
fn recovery_rebuilds_every_durable_session_as_it_was() {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let limits = Limits {
        log_bytes_max: 64 << 10,
        message_ttl_ms: 20_000,
        session_expiry_ms: 30_000,
        // Clients here stay quiet for long spells: only they close.
        idle_timeout_ms: 0,
        ..disk_limits()
    };
    let (mut compactions, mut entries) = (0, 0);
    for seed in 0..64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut net = Net::new(1, limits.clone());
        let mut disk = Disk::default();
        let mut actors: Vec<Actor> = (0..5)
            .map(|_| {
                let (client, token) = session(&mut net, &mut disk);
                Actor {
                    user: client.user,
                    token,
                    client: Some(client),
                    seen: 0,
                    next_message_id: 1,
                }
            })
            .collect();
        for _ in 0..rng.random_range(50..400) {
            let who = rng.random_range(0..actors.len());
            match rng.random_range(0..100) {
                0..45 => random_relay(&mut net, &mut rng, &mut actors, who),
                45..65 => ack_seen(&mut net, &actors[who]),
                65..75 => {
                    if let Some(client) = actors[who].client.take() {
                        net.disconnect(client);
                    }
                }
                75..87 => {
                    let session_alive = net.shards[0].sessions.map.contains_key(&actors[who].user);
                    if actors[who].client.is_none() && session_alive {
                        let compact = rng.random_bool(0.3);
                        resume_actor(&mut net, &mut disk, &mut actors[who], compact);
                    }
                }
                _ => net.advance(rng.random_range(1..4_000)),
            }
            // The driver: writes, reads back, and the clients read.
            loop {
                disk.write(&mut net);
                let read = disk.serve(&mut net);
                assert!(read.iter().all(Result::is_ok), "seed {seed}: {read:?}");
                if read.is_empty() {
                    break;
                }
            }
            for actor in &mut actors {
                if let Some(client) = actor.client {
                    let messages = net.output_v2(client);
                    note_seen(actor, &messages);
                }
            }
            // A session that expired is gone for good.
            actors.retain(|actor| {
                actor.client.is_some() || net.shards[0].sessions.map.contains_key(&actor.user)
            });
            if actors.is_empty() {
                break;
            }
        }
        compactions += net.shards[0].stats().compactions.get();
        let now = net.now_ms;
        let mut expected = net.shards[0].durable_digest(now);
        for digest in expected.values_mut() {
            // Connected at the crash: its expiry counts from the restart.
            digest.detached_ms.get_or_insert(now);
        }
        // The crash comes with records not yet written: a tail of relays,
        // acks and departures whose batches are lost. Nothing they did was
        // answered or delivered (both wait for the log), so the restart
        // must bring back the state of the last write, no more, no less.
        for _ in 0..rng.random_range(0..12) {
            let who = rng.random_range(0..actors.len());
            match rng.random_range(0..3) {
                0 => random_relay(&mut net, &mut rng, &mut actors, who),
                1 => ack_seen(&mut net, &actors[who]),
                _ => {
                    if let Some(client) = actors[who].client.take() {
                        net.disconnect(client);
                    }
                }
            }
        }
        // What the tail delivered (an ack freed window space) was in the
        // log already.
        for actor in &actors {
            let Some(client) = actor.client else {
                continue;
            };
            let logged = |seq: u64| {
                expected[&actor.user]
                    .entries
                    .iter()
                    .any(|entry| entry.0 == seq)
            };
            for message in net.output_v2(client) {
                let seq = match message {
                    HubMessageV2::DeliverV2(deliver) => deliver.seq,
                    HubMessageV2::Receipt(receipt) => receipt.seq,
                    _ => continue,
                };
                assert!(
                    logged(seq),
                    "seed {seed}: user {} got seq {seq} before the log had it",
                    actor.user
                );
            }
        }
        let recovered = restart(&disk, limits.clone(), now);
        let got = recovered.shards[0].durable_digest(now);
        assert_eq!(got.len(), expected.len(), "seed {seed}: sessions");
        for (user, want) in &expected {
            assert_eq!(got.get(user), Some(want), "seed {seed}: user {user}");
            entries += want.entries.len();
        }
    }
    assert!(
        compactions >= 10,
        "the log compacted only {compactions} times"
    );
    assert!(entries >= 200, "only {entries} entries were compared");
}

/// A compaction that snapshots a resumed session while its `WelcomeV2`
/// waits for the log does not write the session down as detached at its
/// old time: after a crash it counts its expiry from the restart, as a
/// connected session does, instead of expiring at once.
#[test]
fn a_snapshot_during_a_resume_keeps_the_session_connected() {
    let limits = disk_limits();
    let expiry = limits.session_expiry_ms;
    let mut net = Net::new(1, limits.clone());
    let mut disk = Disk::default();
    let (client, token) = session(&mut net, &mut disk);
    let (churn, _) = session(&mut net, &mut disk);
    let (sender, _) = session(&mut net, &mut disk);
    // Acked traffic: the log holds far more than the live state.
    for id in 1..=20 {
        net.relay_v2(sender, id, id, &[churn.user], &[9; 1000]);
        disk.write(&mut net);
        let (_, last) = last_seq(&net.output_v2(churn));
        net.send_message(churn, &Ack { upto: last });
        disk.write(&mut net);
    }
    net.disconnect(client);
    disk.write(&mut net);
    net.advance(10);
    let (resumed, _) = net.hello(0, Hello::resume(2, client.user, token));
    // The write of the resume's records fails to sync: the log compacts
    // next, while the welcome still waits.
    net.shards[0].handle_log_unsynced();
    let compactions = net.shards[0].stats().compactions.get();
    disk.write(&mut net);
    assert_eq!(net.shards[0].stats().compactions.get(), compactions + 1);
    let messages = net.output_v2(resumed);
    assert!(
        matches!(messages.first(), Some(HubMessageV2::WelcomeV2(welcome)) if welcome.resumed),
        "{messages:?}"
    );

    // The crash, and a restart long after the old detach.
    let mut net = restart(&disk, limits, net.now_ms + expiry + 5_000);
    assert_eq!(net.shards[0].stats().sessions_expired.get(), 0);
    resume(&mut net, &mut disk, client.user, token);
}

/// Downtime counts: a session whose expiry passed while the hub was down
/// is gone when the restarted shard takes its first client, not a
/// second later.
#[test]
fn a_session_that_expired_during_downtime_cannot_be_resumed() {
    let (limits, net, disk, client, token) = detached_session();
    let expiry = limits.session_expiry_ms;
    let mut net = restart(&disk, limits, net.now_ms + expiry + 1);
    assert_eq!(net.shards[0].stats().sessions_expired.get(), 1);
    let (_, messages) = net.hello(0, Hello::resume(2, client.user, token));
    assert!(
        matches!(
            messages.as_slice(),
            [HubMessageV2::Error(error)] if error.code == relayhub_protocol::ErrorCodeV2::ResumeRejected.to_wire()
        ),
        "{messages:?}"
    );
}

/// A durable session whose client left before its `WelcomeV2` went out
/// expires like any other, even as the shard's only session (no sweep was
/// armed for it).
#[test]
fn a_session_left_before_its_welcome_expires() {
    let limits = disk_limits();
    let expiry = limits.session_expiry_ms;
    let mut net = Net::new(1, limits);
    let (client, messages) = net.hello(0, Hello::new_session(1, true));
    assert!(messages.is_empty(), "the welcome waits for the log");
    net.shards[0].handle_read(net.now_ms, client.id, crate::shard::Read::End);
    let mut disk = Disk::default();
    disk.write(&mut net);
    assert_eq!(net.shards[0].durable_sessions(), 1);
    net.advance(expiry + 2 * SESSION_SWEEP_MS);
    assert_eq!(net.shards[0].durable_sessions(), 0);
    assert_eq!(net.shards[0].stats().sessions_expired.get(), 1);
}
