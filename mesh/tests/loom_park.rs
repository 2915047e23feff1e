//! loom: the doorbell never loses a wake-up. Both ends use the async face
//! through a loom `park`/`unpark` block_on; a lost wake-up leaves a thread
//! parked forever and loom fails the model with a deadlock.

#![cfg(loom)]

mod support;

use loom::thread;
use relayhub_mesh::channel;
use support::block_on;

#[test]
fn consumer_and_producer_park_and_are_woken() {
    support::check(|| {
        const ITEMS: usize = 3;
        // Capacity 2 and 3 items: the producer must wait for room once, the
        // consumer waits for items.
        let (mut producer, mut consumer) = channel::<usize>(2);
        let sender = thread::spawn(move || {
            block_on(async move {
                for value in 0..ITEMS {
                    producer.send(value).await.expect("consumer gone early");
                }
            })
        });
        block_on(async move {
            for expected in 0..ITEMS {
                assert_eq!(consumer.recv().await, Some(expected));
            }
            assert_eq!(consumer.recv().await, None);
        });
        sender.join().unwrap();
    });
}

#[test]
fn producer_parked_on_a_full_ring_is_woken_at_half_free() {
    support::check(|| {
        const ITEMS: usize = 5;
        // Capacity 4: the fifth send parks; it is rung only once 2 slots are free.
        let (mut producer, mut consumer) = channel::<usize>(4);
        let sender = thread::spawn(move || {
            block_on(async move {
                for value in 0..ITEMS {
                    producer.send(value).await.expect("consumer gone early");
                }
            })
        });
        block_on(async move {
            for expected in 0..ITEMS {
                assert_eq!(consumer.recv().await, Some(expected));
            }
            assert_eq!(consumer.recv().await, None);
        });
        sender.join().unwrap();
    });
}

#[test]
fn batch_receiver_parks_and_is_woken_by_a_batch_publish() {
    support::check(|| {
        let (mut producer, mut consumer) = channel::<usize>(2);
        let sender = thread::spawn(move || {
            producer.try_stage(0).unwrap();
            producer.try_stage(1).unwrap();
            producer.publish();
            block_on(producer.send(2)).unwrap();
        });
        block_on(async move {
            let mut received = Vec::new();
            while consumer.recv_batch(2, |value| received.push(value)).await > 0 {}
            assert_eq!(received, [0, 1, 2]);
        });
        sender.join().unwrap();
    });
}

#[test]
fn producer_drop_wakes_a_parked_consumer() {
    support::check(|| {
        let (producer, mut consumer) = channel::<usize>(2);
        let sender = thread::spawn(move || drop(producer));
        assert_eq!(block_on(consumer.recv()), None);
        sender.join().unwrap();
    });
}

#[test]
fn consumer_drop_wakes_a_parked_producer() {
    support::check(|| {
        let (mut producer, mut consumer) = channel::<usize>(2);
        let receiver = thread::spawn(move || {
            // Take at most one item, then go away.
            let _ = consumer.try_recv();
        });
        let sent = block_on(async move {
            let mut sent = 0;
            for value in 0..4 {
                if producer.send(value).await.is_err() {
                    break;
                }
                sent += 1;
            }
            sent
        });
        // At most capacity + the one received can have gone in before the close.
        assert!(sent <= 3, "sent {sent}");
        receiver.join().unwrap();
    });
}
