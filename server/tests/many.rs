//! Many clients at once: nothing lost, nothing duplicated, order kept.

mod common;

use std::{sync::Barrier, thread};

use common::*;
use relayhub_client::{Client, Event};

const CLIENTS: usize = 1000;
const THREADS: usize = 8;
const MESSAGES_EACH: u32 = 20;

#[test]
fn a_thousand_clients_connect_list_and_relay_without_loss_or_duplication() {
    let hub = start(2, |_| {});
    let clients: Vec<Client> = (0..CLIENTS).map(|_| connect(&hub)).collect();
    let ids: Vec<u64> = clients.iter().map(|c| c.user_id()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), CLIENTS, "every id is unique");

    // Client i relays to client i + 1 (wrapping): every client sends and
    // receives, across shards and threads.
    let barrier = Barrier::new(THREADS);
    let mut groups: Vec<Vec<(usize, Client)>> = (0..THREADS).map(|_| Vec::new()).collect();
    for (index, client) in clients.into_iter().enumerate() {
        groups[index % THREADS].push((index, client));
    }
    thread::scope(|scope| {
        for group in groups {
            let (ids, sorted, barrier) = (&ids, &sorted, &barrier);
            scope.spawn(move || {
                let mut group = group;
                // A few clients list everyone (paging through the mesh).
                let (first_index, first) = &mut group[0];
                let mut expected: Vec<u64> = sorted.clone();
                expected.retain(|&id| id != ids[*first_index]);
                assert_eq!(first.list_all().unwrap(), expected);
                barrier.wait();
                for (index, client) in &mut group {
                    let next = ids[(*index + 1) % CLIENTS];
                    for sequence in 0..MESSAGES_EACH {
                        client.send_relay(&[next], &sequence.to_le_bytes()).unwrap();
                    }
                    client.flush().unwrap();
                }
                for (index, client) in &mut group {
                    let previous = ids[(*index + CLIENTS - 1) % CLIENTS];
                    for sequence in 0..MESSAGES_EACH {
                        match next_event(client) {
                            Event::Deliver { from, body } => {
                                assert_eq!(from, previous);
                                assert_eq!(
                                    &body[..],
                                    &sequence.to_le_bytes(),
                                    "in order, none lost"
                                );
                            }
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                }
            });
        }
    });
    let stats = hub.shutdown();
    assert_eq!(
        stats.deliveries,
        (CLIENTS as u64) * u64::from(MESSAGES_EACH)
    );
    assert_eq!(stats.unknown_receivers, 0);
    assert_eq!(stats.connections_accepted, CLIENTS as u64);
}
