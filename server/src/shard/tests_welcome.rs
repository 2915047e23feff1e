//! A durable session whose `WelcomeV2` waits for the log: the expiry sweep
//! must not take the session away meanwhile, and a takeover in that wait
//! is counted like any other.

use bytes::BytesMut;
use relayhub_protocol::{encode, preface_for, Hello, HubMessageV2, ResumeToken, VERSION_2};

use super::sessions::SESSION_SWEEP_MS;
use super::tests::{limits, Client, Net};
use super::*;

/// One shard with its log on, expiry after `expiry_ms`, no idle timeout.
fn net(expiry_ms: u64) -> Net {
    Net::new(
        1,
        Limits {
            log_enabled: true,
            session_expiry_ms: expiry_ms,
            idle_timeout_ms: 0,
            frame_timeout_ms: 0,
            ..limits()
        },
    )
}

/// The log writer: everything appended so far written and synced.
fn write_log(net: &mut Net) {
    let now = net.now_ms;
    let shard = &mut net.shards[0];
    let end = shard.log.appended();
    shard.handle_log_written(now, end, false);
}

/// A connection that has sent its preface and `hello`; nothing written to
/// the log yet.
fn say_hello(net: &mut Net, hello: Hello) -> ConnId {
    let id = net.accept(0);
    let mut bytes = BytesMut::from(&preface_for(VERSION_2)[..]);
    encode(&hello, &mut bytes).unwrap();
    net.send(0, id, &bytes);
    id
}

/// The welcome `id` got once the log was written: its client, its token,
/// and the frames that followed it.
fn welcomed(net: &mut Net, id: ConnId, resumed: bool) -> (Client, ResumeToken, Vec<HubMessageV2>) {
    write_log(net);
    let user = net.shards[0].conn(id).unwrap().user();
    let client = Client { shard: 0, id, user };
    let mut messages = net.output_v2(client);
    match messages.first() {
        Some(HubMessageV2::WelcomeV2(welcome)) => {
            assert!(welcome.durable && welcome.resumed == resumed, "{welcome:?}");
            let token = welcome.token;
            messages.remove(0);
            (client, token, messages)
        }
        _ => panic!("expected a WelcomeV2, got {messages:?}"),
    }
}

fn taken_over(frames: &[HubMessageV2]) -> bool {
    matches!(frames.last(), Some(HubMessageV2::Error(error))
        if error.code == ErrorCodeV2::SessionTakenOver.to_wire())
}

/// Runs the expiry sweeps due in the next `ms`, one sweep period at a time.
fn pass(net: &mut Net, ms: u64) {
    let end = net.now_ms + ms;
    while net.now_ms < end {
        net.now_ms = (net.now_ms + SESSION_SWEEP_MS).min(end);
        let now = net.now_ms;
        net.shards[0].handle_timeout(now);
    }
}

/// A session connected for longer than its expiry is taken over by a
/// resume whose welcome waits for the log; a sweep in that wait must not
/// expire it (a takeover does not start the expiry clock), and the
/// takeover is counted.
#[test]
fn a_takeover_waiting_for_the_log_does_not_expire_the_session() {
    let mut net = net(1_000);
    let id = say_hello(&mut net, Hello::new_session(1, true));
    let (first, token, _) = welcomed(&mut net, id, false);
    pass(&mut net, 5 * SESSION_SWEEP_MS);
    assert_eq!(net.shards[0].durable_sessions(), 1, "connected: kept");

    let id = say_hello(&mut net, Hello::resume(2, first.user, token));
    let closing = net.output_v2(first);
    assert!(taken_over(&closing), "{closing:?}");
    pass(&mut net, 2 * SESSION_SWEEP_MS);
    let (second, _, _) = welcomed(&mut net, id, true);
    assert_eq!(second.user, first.user);
    assert_eq!(net.shards[0].durable_sessions(), 1, "the resumed session");
    let stats = net.shards[0].stats();
    assert_eq!(stats.sessions_expired.get(), 0);
    assert_eq!(stats.takeovers.get(), 1);
}

/// Two resumes whose welcomes both wait for the log: the second one
/// welcomed takes the session over from the first, and that is counted.
#[test]
fn a_takeover_between_two_waiting_welcomes_is_counted() {
    let mut net = net(60_000);
    let id = say_hello(&mut net, Hello::new_session(1, true));
    let (first, token, _) = welcomed(&mut net, id, false);
    let a = say_hello(&mut net, Hello::resume(2, first.user, token));
    let b = say_hello(&mut net, Hello::resume(3, first.user, token));
    let closing = net.output_v2(first);
    assert!(taken_over(&closing), "{closing:?}");
    write_log(&mut net);
    let (_, _, after) = welcomed(&mut net, a, true);
    assert!(taken_over(&after), "{after:?}");
    let (_, _, after) = welcomed(&mut net, b, true);
    assert!(after.is_empty(), "{after:?}");
    // The original connection at the first resume, then `a` when `b` was
    // welcomed.
    assert_eq!(net.shards[0].stats().takeovers.get(), 2);
}

/// With `--session-expiry-ms 0` a new durable session whose welcome waits
/// for the log has no connection yet: a sweep in that wait must not drop
/// it before its client was even welcomed.
#[test]
fn a_new_session_waiting_for_the_log_does_not_expire() {
    let mut net = net(0);
    // Another session, so that the sweep runs.
    let id = say_hello(&mut net, Hello::new_session(1, true));
    welcomed(&mut net, id, false);
    let id = say_hello(&mut net, Hello::new_session(2, true));
    pass(&mut net, 2 * SESSION_SWEEP_MS);
    let (client, _, _) = welcomed(&mut net, id, false);
    assert!(net.shards[0].inbox_len(client.user).is_some(), "it expired");
    assert_eq!(net.shards[0].durable_sessions(), 2);
    assert_eq!(net.shards[0].stats().sessions_expired.get(), 0);
}
