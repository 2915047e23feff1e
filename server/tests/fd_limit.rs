//! At the file-descriptor limit the hub answers every client: those it
//! cannot take get its preface and Error(ServerFull) at once (from a
//! descriptor held in reserve), instead of waiting unanswered in the
//! accept queue; those it has keep being served; it logs the condition a
//! few times, not once per attempt; and it welcomes clients again as soon
//! as descriptors are free.

mod common;

use std::time::{Duration, Instant};

use common::*;
use relayhub_protocol::{ErrorCode, HubMessage, Identity, PREFACE};

/// RLIMIT_NOFILE of the hub: a few dozen connections fit.
const NOFILE: u64 = 64;

/// Connections tried: well past what fits.
const ATTEMPTS: usize = 100;

/// Longest a client may wait for the hub's answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// What the hub answered a new connection.
enum Answer {
    Welcomed(RawClient, u64),
    /// Refused with ServerFull and this detail.
    Refused(u64),
}

/// Connects, sends the preface and waits for the first frame.
fn attempt(hub: &HubProcess) -> Answer {
    use std::io::Write;
    let started = Instant::now();
    let mut client = RawClient::connect(hub.addr);
    // A refused client may already be closed: the write may fail, the
    // answer is still there to read.
    let _ = client.stream.write_all(&PREFACE);
    let answer = match client.next(ANSWER_WITHIN) {
        RawRead::Frame(HubMessage::Welcome(welcome)) => Answer::Welcomed(client, welcome.user),
        RawRead::Frame(frame) => match error_fields(&frame) {
            Some((ErrorCode::ServerFull, 0, detail)) => Answer::Refused(detail),
            _ => panic!("expected a Welcome or ServerFull, got {frame:?}"),
        },
        RawRead::Timeout => panic!(
            "no answer within {ANSWER_WITHIN:?}: the client waits in the accept queue \
             ({} descriptors open in the hub, {} of them /dev/null); the hub said: {:#?}",
            hub.open_fds(),
            hub.open_fds_to("/dev/null"),
            hub.log()
                .into_iter()
                .filter(|line| line.contains("WARN"))
                .collect::<Vec<_>>()
        ),
        other => panic!("expected a Welcome or ServerFull, got {other:?}"),
    };
    let waited = started.elapsed();
    assert!(waited < ANSWER_WITHIN, "answered after {waited:?}");
    answer
}

fn identity_round_trip(client: &mut RawClient, user: u64, request: u64) {
    client.write(&frame_bytes(&Identity { request }));
    match client.next(EVENT_TIMEOUT) {
        RawRead::Frame(HubMessage::IdentityReply(reply)) => {
            assert_eq!((reply.request, reply.user), (request, user));
        }
        other => panic!("user {user}: expected an IdentityReply, got {other:?}"),
    }
}

/// Runs the whole scenario on a hub of `shards` shards.
///
/// At 753c40a, 64 descriptors: 12-13 open at start-up with one shard, 52
/// clients welcomed, 48 refused at once. Then, after 47 clients left, the
/// next client is refused anyway (ServerFull, detail 0): the shard had
/// freed its reserve and armed an accept that refuses whoever comes, and
/// at the limit an io_uring accept fails at once, client or not. With two
/// shards, about 46 clients are welcomed, then the next one waits
/// unanswered: a shard whose reserve could not be re-opened (the other
/// shard took the descriptor) never re-arms it, and logs "accept failed:
/// Too many open files" once a second while the client waits.
fn at_the_descriptor_limit(shards: &str) {
    raise_fd_limit();
    let hub = HubProcess::start_with_nofile(Some(NOFILE), &["--shards", shards]);
    let fds_at_start = hub.open_fds();
    let started = Instant::now();

    let mut welcomed = Vec::new();
    let mut refused = 0;
    for _ in 0..ATTEMPTS {
        match attempt(&hub) {
            Answer::Welcomed(client, user) => welcomed.push((client, user)),
            Answer::Refused(_) => refused += 1,
        }
    }
    eprintln!(
        "{shards} shards, RLIMIT_NOFILE {NOFILE}: {fds_at_start} descriptors open at start-up, \
         {} clients welcomed, {refused} refused with ServerFull",
        welcomed.len()
    );
    assert!(refused > 0, "the limit was never reached");
    assert!(!welcomed.is_empty(), "nobody was welcomed");

    // The connections it has are served as before.
    for (request, (client, user)) in welcomed.iter_mut().enumerate() {
        identity_round_trip(client, *user, request as u64 + 1);
    }

    // Close most of them: new clients are welcomed again.
    let keep = 5;
    let closed = welcomed.len() - keep;
    welcomed.truncate(keep);
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while hub.open_fds() > fds_at_start + keep + 1 {
        assert!(
            Instant::now() < deadline,
            "the hub still holds {} descriptors after {closed} clients left",
            hub.open_fds()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for round in 0..10 {
        match attempt(&hub) {
            Answer::Welcomed(mut client, user) => {
                identity_round_trip(&mut client, user, 1);
                welcomed.push((client, user));
            }
            Answer::Refused(detail) => panic!(
                "client {round} refused (ServerFull, detail {detail}) after {closed} clients \
                 left; the hub holds {} descriptors; it said: {:#?}",
                hub.open_fds(),
                hub.log()
            ),
        }
    }
    for (request, (client, user)) in welcomed.iter_mut().enumerate() {
        identity_round_trip(client, *user, 100 + request as u64);
    }

    // The condition is logged, rate-limited: about once per second and
    // shard, not once per refusal.
    let elapsed = started.elapsed().as_secs() as usize + 1;
    let warnings: Vec<String> = hub
        .log()
        .into_iter()
        .filter(|line| line.contains("WARN"))
        .collect();
    eprintln!(
        "{} warnings in {elapsed} s: {:?}",
        warnings.len(),
        warnings.first()
    );
    assert!(
        warnings.len() <= 2 * (elapsed + 1),
        "{} warnings for {refused} refusals in {elapsed} s: {warnings:#?}",
        warnings.len()
    );
    assert!(
        warnings.iter().any(|line| line.contains("descriptors")),
        "the condition is logged: {warnings:#?}"
    );
    drop(welcomed);
    let (status, log) = hub.terminate();
    assert!(status.success(), "exit status {status}");
    let totals = log
        .iter()
        .rev()
        .find(|line| line.contains("final counters") && !line.contains("shard="))
        .expect("final counters");
    assert_eq!(
        counter_in(totals, "fd_refusals"),
        Some(refused as u64),
        "{totals}"
    );
}

/// One shard: its reserve descriptor answers every client past the limit.
#[test]
fn one_shard_at_the_descriptor_limit_refuses_at_once_and_serves_again_later() {
    at_the_descriptor_limit("1");
}

/// Two shards share the process's descriptors (and each has a reserve).
#[test]
fn two_shards_at_the_descriptor_limit_refuse_at_once_and_serve_again_later() {
    at_the_descriptor_limit("2");
}
