//! Helpers shared by the hub's integration tests: a real hub on an
//! ephemeral loopback port, driven with the client library.
#![allow(dead_code)]

use std::time::Duration;

use relayhub_client::{Client, Event, HubError};
use relayhub_protocol::ErrorCode;
use relayhub_server::{ids::owner, Config, Hub};

/// How long a test waits for something the hub should send.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts a hub with `shards` shards, adjusted by `tweak`.
pub fn start(shards: usize, tweak: impl FnOnce(&mut Config)) -> Hub {
    raise_fd_limit();
    let mut config = Config::for_tests(shards);
    tweak(&mut config);
    Hub::start(config).expect("hub starts")
}

/// Connects a client to `hub`.
pub fn connect(hub: &Hub) -> Client {
    Client::connect(hub.local_addr()).expect("client connects")
}

/// Connects clients until every shard owns at least `per_shard` of them;
/// returns them grouped by owning shard.
pub fn clients_per_shard(hub: &Hub, shards: usize, per_shard: usize) -> Vec<Vec<Client>> {
    let mut groups: Vec<Vec<Client>> = (0..shards).map(|_| Vec::new()).collect();
    for _ in 0..1000 {
        if groups.iter().all(|group| group.len() >= per_shard) {
            return groups;
        }
        let client = connect(hub);
        let shard = owner(client.user_id(), shards);
        if groups[shard].len() < per_shard {
            groups[shard].push(client);
        }
    }
    panic!("the kernel never spread connections across all {shards} shards");
}

/// The next event, failing the test if none comes in time.
pub fn next_event(client: &mut Client) -> Event {
    match client.recv_timeout(EVENT_TIMEOUT) {
        Ok(Some(event)) => event,
        Ok(None) => panic!(
            "user {}: no event within {EVENT_TIMEOUT:?}",
            client.user_id()
        ),
        Err(error) => panic!("user {}: {error}", client.user_id()),
    }
}

/// Asserts the next event is a delivery of `body` from `from`.
pub fn expect_deliver(client: &mut Client, from: u64, body: &[u8]) {
    match next_event(client) {
        Event::Deliver {
            from: got,
            body: got_body,
        } => {
            assert_eq!(got, from, "sender of the delivery to {}", client.user_id());
            assert!(
                got_body == body,
                "body delivered to {} differs ({} bytes, expected {})",
                client.user_id(),
                got_body.len(),
                body.len()
            );
        }
        other => panic!(
            "user {}: expected a delivery, got {other:?}",
            client.user_id()
        ),
    }
}

/// Asserts the next event is a hub error with `code`, `request`, `detail`.
pub fn expect_error(client: &mut Client, code: ErrorCode, request: u64, detail: u64) {
    match next_event(client) {
        Event::HubError(error) => assert_eq!(
            error,
            HubError {
                code,
                request,
                detail
            }
        ),
        other => panic!(
            "user {}: expected {code:?}, got {other:?}",
            client.user_id()
        ),
    }
}

/// Asserts nothing arrives within `wait`.
pub fn expect_silence(client: &mut Client, wait: Duration) {
    if let Some(event) = client.recv_timeout(wait).expect("connection healthy") {
        panic!("user {}: unexpected {event:?}", client.user_id());
    }
}

/// Lets the process open thousands of sockets (both ends live here).
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one rlimit we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
