//! The hub as a client sees it: identity, list, relay across shards, limits,
//! unknown receivers, departures.

mod common;

use std::time::Duration;

use common::*;
use relayhub_client::{ClientError, Event};
use relayhub_protocol::{ErrorCode, BODY_BYTES_MAX, RECEIVERS_MAX};

#[test]
fn three_clients_identity_list_and_relay() {
    let hub = start(2, |_| {});
    let mut a = connect(&hub);
    let mut b = connect(&hub);
    let mut c = connect(&hub);
    let ids = [a.user_id(), b.user_id(), c.user_id()];
    assert_eq!(a.identity().unwrap(), ids[0]);
    assert_eq!(b.identity().unwrap(), ids[1]);
    assert!(ids.iter().all(|&id| id != 0));

    let mut others = vec![ids[1], ids[2]];
    others.sort_unstable();
    assert_eq!(a.list_all().unwrap(), others, "sorted, without the caller");

    a.relay(&[ids[1], ids[2]], b"hello").unwrap();
    expect_deliver(&mut b, ids[0], b"hello");
    expect_deliver(&mut c, ids[0], b"hello");
    expect_silence(&mut a, Duration::from_millis(100));
    hub.shutdown();
}

#[test]
fn relay_crosses_shards_both_ways_in_order() {
    let hub = start(2, |_| {});
    let mut groups = clients_per_shard(&hub, 2, 1);
    let mut on_one = groups[1].pop().unwrap();
    let mut on_zero = groups[0].pop().unwrap();
    let (zero, one) = (on_zero.user_id(), on_one.user_id());
    for i in 0..100u32 {
        on_zero.send_relay(&[one], &i.to_le_bytes()).unwrap();
        on_one.send_relay(&[zero], &i.to_le_bytes()).unwrap();
    }
    on_zero.flush().unwrap();
    on_one.flush().unwrap();
    for i in 0..100u32 {
        expect_deliver(&mut on_one, zero, &i.to_le_bytes());
        expect_deliver(&mut on_zero, one, &i.to_le_bytes());
    }
    let stats = hub.shutdown();
    assert_eq!(stats.deliveries, 200);
    assert!(
        stats.mesh_sent >= 200,
        "cross-shard deliveries went through the mesh: {stats}"
    );
}

#[test]
fn list_pages_across_shards() {
    let hub = start(2, |_| {});
    let groups = clients_per_shard(&hub, 2, 4);
    let mut everyone: Vec<u64> = groups.iter().flatten().map(|c| c.user_id()).collect();
    let mut clients: Vec<_> = groups.into_iter().flatten().collect();
    let asker = &mut clients[0];
    let me = asker.user_id();
    everyone.retain(|&id| id != me);
    everyone.sort_unstable();
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = asker.list_page(after, 3).unwrap();
        assert!(page.users.len() <= 3);
        assert!(page.users.windows(2).all(|w| w[0] < w[1]), "ascending");
        paged.extend_from_slice(&page.users);
        if !page.more {
            break;
        }
        after = *page.users.last().unwrap();
    }
    assert_eq!(paged, everyone);
    assert_eq!(asker.list_all().unwrap(), everyone);
    hub.shutdown();
}

#[test]
fn zero_and_255_receivers_work_256_are_refused() {
    let hub = start(2, |_| {});
    let mut sender = connect(&hub);
    let mut receivers: Vec<_> = (0..RECEIVERS_MAX).map(|_| connect(&hub)).collect();
    let ids: Vec<u64> = receivers.iter().map(|c| c.user_id()).collect();

    sender.relay(&[], b"nobody").unwrap();
    sender.relay(&ids, b"everybody").unwrap();
    for receiver in &mut receivers {
        expect_deliver(receiver, sender.user_id(), b"everybody");
    }

    let too_many: Vec<u64> = ids.iter().copied().chain([sender.user_id()]).collect();
    assert!(matches!(
        sender.relay(&too_many, b"x"),
        Err(ClientError::LimitExceeded { .. })
    ));
    let request = sender.relay_unchecked(&too_many, b"x").unwrap();
    expect_error(&mut sender, ErrorCode::TooManyReceivers, request, 256);
    // Nothing was delivered, and the connection still works.
    expect_silence(&mut receivers[0], Duration::from_millis(100));
    assert_eq!(sender.identity().unwrap(), sender.user_id());
    hub.shutdown();
}

#[test]
fn one_mebibyte_reaches_many_receivers_intact_and_one_more_byte_is_refused() {
    let hub = start(2, |_| {});
    let mut sender = connect(&hub);
    let mut receivers: Vec<_> = (0..16).map(|_| connect(&hub)).collect();
    let ids: Vec<u64> = receivers.iter().map(|c| c.user_id()).collect();
    let body: Vec<u8> = (0..BODY_BYTES_MAX).map(|i| (i % 251) as u8).collect();
    sender.relay(&ids, &body).unwrap();
    for receiver in &mut receivers {
        expect_deliver(receiver, sender.user_id(), &body);
    }
    let too_big = vec![7u8; BODY_BYTES_MAX + 1];
    let request = sender.relay_unchecked(&ids[..1], &too_big).unwrap();
    expect_error(
        &mut sender,
        ErrorCode::BodyTooLarge,
        request,
        BODY_BYTES_MAX as u64 + 1,
    );
    expect_silence(&mut receivers[0], Duration::from_millis(100));
    sender.relay(&ids[..1], b"still here").unwrap();
    expect_deliver(&mut receivers[0], sender.user_id(), b"still here");
    hub.shutdown();
}

#[test]
fn unknown_receivers_are_reported_on_every_shard() {
    let hub = start(2, |_| {});
    let mut groups = clients_per_shard(&hub, 2, 1);
    let mut sender = groups[0].pop().unwrap();
    let mut known = groups[1].pop().unwrap();
    // Ids nobody holds, owned by shard 0 and by shard 1, and 0 (never used).
    let (unknown_local, unknown_remote) = (1_000_000, 1_000_001);
    let request = sender
        .relay(&[unknown_local, known.user_id(), unknown_remote, 0], b"hi")
        .unwrap();
    expect_deliver(&mut known, sender.user_id(), b"hi");
    let mut reported = Vec::new();
    for _ in 0..3 {
        match next_event(&mut sender) {
            Event::HubError(error) => {
                assert_eq!(
                    (error.code, error.request),
                    (ErrorCode::UnknownReceiver, request)
                );
                reported.push(error.detail);
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }
    reported.sort_unstable();
    assert_eq!(reported, [0, unknown_local, unknown_remote]);
    let stats = hub.shutdown();
    assert_eq!(stats.unknown_receivers, 3);
}

#[test]
fn a_receiver_leaving_mid_stream_disturbs_no_one_else() {
    let hub = start(2, |_| {});
    let mut sender = connect(&hub);
    let mut stays = connect(&hub);
    let leaves = connect(&hub);
    let (stays_id, leaves_id) = (stays.user_id(), leaves.user_id());
    for i in 0..50u32 {
        sender
            .send_relay(&[stays_id, leaves_id], &i.to_le_bytes())
            .unwrap();
    }
    sender.flush().unwrap();
    drop(leaves);
    // Keep sending after the departure: those are reported, not lost silently.
    std::thread::sleep(Duration::from_millis(100));
    let late = sender.relay(&[stays_id, leaves_id], b"late").unwrap();
    for i in 0..50u32 {
        expect_deliver(&mut stays, sender.user_id(), &i.to_le_bytes());
    }
    expect_deliver(&mut stays, sender.user_id(), b"late");
    // Every relay the hub handled after the departure is reported, the late
    // one certainly; earlier ones may be, depending on timing.
    loop {
        match next_event(&mut sender) {
            Event::HubError(error) => {
                assert_eq!(
                    (error.code, error.detail),
                    (ErrorCode::UnknownReceiver, leaves_id)
                );
                if error.request == late {
                    break;
                }
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }
    hub.shutdown();
}

#[test]
fn echo_and_identity_pipeline_with_deliveries() {
    let hub = start(1, |_| {});
    let mut a = connect(&hub);
    let mut b = connect(&hub);
    b.relay(&[a.user_id()], b"first").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // The delivery arrives while `echo` waits; it is kept, not lost.
    assert_eq!(&a.echo(b"ping").unwrap()[..], b"ping");
    expect_deliver(&mut a, b.user_id(), b"first");
    hub.shutdown();
}

#[test]
fn pipelined_large_bodies_arrive_intact_on_both_shards() {
    // Bodies of at least 256 KiB are delivered from the buffer they arrived
    // in; back to back, each next frame is read while the previous one is
    // still queued: no body may show another's bytes.
    let hub = start(2, |_| {});
    let mut groups = clients_per_shard(&hub, 2, 2);
    let mut sender = groups[0].pop().unwrap();
    let mut near = groups[0].pop().unwrap();
    let mut far = groups[1].pop().unwrap();
    let ids = [near.user_id(), far.user_id()];
    let sizes = [
        BODY_BYTES_MAX,
        256 * 1024,
        300_001,
        BODY_BYTES_MAX - 7,
        5,
        700_000,
    ];
    let bodies: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(index, &len)| (0..len).map(|i| (i * 7 + index * 31) as u8).collect())
        .collect();
    for body in &bodies {
        sender.send_relay(&ids, body).unwrap();
    }
    sender.flush().unwrap();
    for body in &bodies {
        expect_deliver(&mut near, sender.user_id(), body);
        expect_deliver(&mut far, sender.user_id(), body);
    }
    let stats = hub.shutdown();
    assert_eq!(stats.deliveries, 2 * bodies.len() as u64);
}
