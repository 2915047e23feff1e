//! Core bugs found by the `hub_session` fuzz target (fuzz/src/hub.rs), each
//! cut down to the core calls that show it (docs/fuzzing.md, "Bugs found").
//! The core is driven as the glommio driver drives it: its timer task calls
//! `handle_timeout` only once `poll_timeout`'s deadline is reached or an
//! `Event::TimerChanged` came.

use std::sync::Arc;

use bytes::BytesMut;
use relayhub_protocol::{encode, RelayRef, BODY_BYTES_MAX, PREFACE};
use relayhub_server::{
    config::MESH_BYTES_MIN,
    conn::ConnState,
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
