//! Core bugs found by the `hub_session` fuzz target (fuzz/src/hub.rs), each
//! cut down to the core calls that show it (docs/fuzzing.md, "Bugs found").
//! The core is driven as the glommio driver drives it: its timer task calls
//! `handle_timeout` only once `poll_timeout`'s deadline is reached or an
//! `Event::TimerChanged` came.

use std::sync::Arc;

use bytes::BytesMut;
use relayhub_protocol::{
    decode_frame_version, encode, preface_for, rkyv::util::AlignedVec, Ack, ClientSideV2,
    ErrorCodeV2, Hello, HubMessageV2, RelayRef, RelayV2Ref, BODY_BYTES_MAX, PREFACE, PREFACE_BYTES,
    VERSION_2,
};
use relayhub_server::{
    config::MESH_BYTES_MIN,
    conn::{ConnId, ConnState},
    shard::{Event, Limits, Read, ReadReady, Shard},
    Config,
};

fn events(shard: &mut Shard<()>) -> Vec<Event> {
    std::iter::from_fn(|| shard.poll_event()).collect()
}

/// hub_session, first minutes of the port to the new core (input: one
/// connection per shard on two shards, `Shutdown` of one shard with a short
/// grace period, time past it): `handle_shutdown` raises no
/// `TimerChanged`, so a timer asleep until the idle deadline (5 minutes by
/// default) never serves the end of the grace period. While the other
/// shard has not shut down, the connection stays open past the grace
/// period, and the driver, `SHUTDOWN_ABORT_MARGIN_MS` later, drops it
/// without the `ShuttingDown` docs/protocol.md promises.
#[test]
fn the_end_of_the_grace_period_wakes_the_timer() {
    let config = Config::for_tests(2);
    let mut shard: Shard<()> = Shard::new(0, 2, Limits::from_config(&config, 2), Arc::default());
    // The timer task starts with no deadline; the accept gives it one.
    assert_eq!(shard.poll_timeout(), None);
    let id = shard.handle_accept(0, ()).expect("accepted");
    assert!(events(&mut shard).contains(&Event::TimerChanged));
    shard.handle_timeout(0);
    let sleeping = shard.poll_timeout().expect("the idle deadline");
    assert_eq!(sleeping, config.idle_timeout_ms);

    let now = 1_000;
    let deadline = now + config.shutdown_grace_ms;
    shard.handle_shutdown(now, deadline);
    let raised = events(&mut shard);
    assert!(
        raised.contains(&Event::TimerChanged) || sleeping <= deadline,
        "the timer sleeps until {sleeping}, past the grace period's end {deadline}: {raised:?}"
    );

    // Served at the deadline, the grace period's end does close it.
    shard.handle_timeout(deadline);
    let state = shard.conn(id).expect("in the table").state();
    assert_eq!(state, ConnState::Closing);
}

/// hub_session, ten minutes into the port's first campaign (input: a
/// sender on shard 0 pauses on 1 MiB relays to shard 1, time passes its
/// idle deadline, shard 0 shuts down): the timer entry of a paused
/// connection fires and is not re-armed (a paused reader has no deadline),
/// and `handle_shutdown` then lets the reader go (`paused_on = None`)
/// without `rearm`. Its idle deadline is in no heap entry, against
/// timers.rs's invariant, so it is served only if something else re-arms
/// the connection; a connection that was not paused gets its
/// `IdleTimeout` during the same shutdown.
#[test]
fn a_reader_paused_at_shutdown_keeps_its_deadline_in_the_heap() {
    let mut config = Config::for_tests(2);
    config.mesh_bytes_max = MESH_BYTES_MIN;
    let idle = config.idle_timeout_ms;
    let mut shard: Shard<()> = Shard::new(0, 2, Limits::from_config(&config, 2), Arc::default());
    let id = shard.handle_accept(0, ()).expect("accepted");
    // Three 1 MiB relays to user 1, owned by shard 1: the third finds the
    // outbox towards shard 1 over its budget.
    let mut wire = BytesMut::from(&PREFACE[..]);
    let body = vec![7u8; BODY_BYTES_MAX];
    for request in 1..=3 {
        let relay = RelayRef {
            request,
            receivers: &[1],
            body: &body,
        };
        encode(&relay, &mut wire).expect("fits");
    }
    let mut offset = 0;
    while offset < wire.len() && shard.poll_read(0, id) == ReadReady::Read {
        let buffer = shard.read_buffer(id);
        let len = buffer.len().min(wire.len() - offset);
        buffer[..len].copy_from_slice(&wire[offset..offset + len]);
        offset += len;
        shard.handle_read(0, id, Read::Bytes(len));
    }
    assert_eq!(shard.poll_read(0, id), ReadReady::Paused);
    // The idle entry comes due while the reader is paused: no timeout.
    shard.handle_timeout(idle);
    assert_eq!(
        shard.conn(id).expect("in the table").state(),
        ConnState::Open
    );
    events(&mut shard);

    // Shard 1 has not shut down, so phase 3 waits: the connection stays
    // open with its idle deadline (`idle`) passed.
    shard.handle_shutdown(idle, idle + 1_000_000);
    events(&mut shard);
    let next = shard.poll_timeout();
    assert!(
        next.is_some_and(|next| next <= idle),
        "the connection's deadline ({idle}) is in no heap entry; next is {next:?}"
    );
}

/// Feeds `bytes` to connection `id` as its reader would.
fn send(shard: &mut Shard<()>, id: ConnId, bytes: &[u8]) {
    let taken = shard.feed_read(0, id, bytes);
    assert_eq!(taken, bytes.len(), "the connection stopped reading");
}

/// Everything queued for `id`, written out and decoded (version 2).
fn take(shard: &mut Shard<()>, id: ConnId) -> Vec<HubMessageV2> {
    let bytes = shard.take_written(id);
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

fn frame<M: relayhub_protocol::Message>(message: &M) -> BytesMut {
    let mut out = BytesMut::new();
    encode(message, &mut out).expect("fits");
    out
}

fn relay_v2(request: u64, message_id: u64, to: u64) -> BytesMut {
    let body = message_id.to_le_bytes();
    frame(&RelayV2Ref {
        request,
        message_id,
        receivers: &[to],
        body: &body,
        flags: 0,
    })
}

/// A durable session on `shard`: its connection and user id.
fn durable(shard: &mut Shard<()>) -> (ConnId, u64) {
    let id = shard.handle_accept(0, ()).expect("accepted");
    let mut bytes = BytesMut::from(&preface_for(VERSION_2)[..]);
    bytes.extend_from_slice(&frame(&Hello::new_session(1, true)));
    send(shard, id, &bytes);
    let HubMessageV2::WelcomeV2(welcome) = &take(shard, id)[0] else {
        panic!("no welcome");
    };
    assert!(welcome.durable);
    (id, welcome.user)
}

/// hub_session, the seed `scenario-v2-inbox-full-retry` of the version-2
/// model (a durable sender relays past a durable receiver's inbox limit;
/// the receiver acks; the sender retries the refused messages, the last
/// one first): the retry of a message that got `InboxFull` was answered
/// `Stored{duplicate: true}` and never stored, so the receiver never got a
/// message whose `Stored` came with no error about it. The sender's
/// high-water mark had been raised past the refused id by the later
/// message's clean `Stored`, and the receiver's inbox mark by its store,
/// so both took the retry for a duplicate. docs/protocol.md promises that
/// a retry of a relay a receiver refused is tried again for it. (The same
/// holds for a retry sent while the first attempt still waits for another
/// shard: it is routed, not answered from the mark.)
#[test]
fn a_retry_of_a_refused_message_is_stored_after_a_later_one() {
    let mut config = Config::for_tests(1);
    config.inbox_messages_max = 1;
    let mut shard: Shard<()> = Shard::new(0, 1, Limits::from_config(&config, 1), Arc::default());
    let (receiver, user) = durable(&mut shard);
    let (sender, _) = durable(&mut shard);
    // Message 1 fills the inbox; message 2 is refused.
    send(&mut shard, sender, &relay_v2(11, 1, user));
    send(&mut shard, sender, &relay_v2(12, 2, user));
    let answers = take(&mut shard, sender);
    let inbox_full = ErrorCodeV2::InboxFull.to_wire();
    assert!(
        matches!(&answers[1], HubMessageV2::Error(e) if e.code == inbox_full && e.request == 12),
        "{answers:?}"
    );
    let got = take(&mut shard, receiver);
    let HubMessageV2::DeliverV2(first) = &got[0] else {
        panic!("{got:?}")
    };
    send(&mut shard, receiver, &frame(&Ack { upto: first.seq }));
    // Message 3 is stored cleanly; then message 2 is retried.
    send(&mut shard, sender, &relay_v2(13, 3, user));
    let got = take(&mut shard, receiver);
    let HubMessageV2::DeliverV2(third) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(third.message_id, 3);
    send(&mut shard, receiver, &frame(&Ack { upto: third.seq }));
    send(&mut shard, sender, &relay_v2(14, 2, user));
    let answers = take(&mut shard, sender);
    assert!(
        answers.iter().any(|m| matches!(m, HubMessageV2::Stored(s)
            if s.request == 14 && !s.duplicate)),
        "the retry of the refused message was not stored: {answers:?}"
    );
    let got = take(&mut shard, receiver);
    assert!(
        got.iter()
            .any(|m| matches!(m, HubMessageV2::DeliverV2(d) if d.message_id == 2)),
        "the receiver never got message 2: {got:?}"
    );
    // A retry below the refused id is still answered at once.
    send(&mut shard, sender, &relay_v2(15, 1, user));
    let answers = take(&mut shard, sender);
    assert!(
        answers.iter().any(|m| matches!(m, HubMessageV2::Stored(s)
            if s.request == 15 && s.duplicate)),
        "{answers:?}"
    );
}
