//! loom: FIFO order, no loss and no duplication across wrap-around, and the
//! full and empty edges. Spinning ends use `try_*` and `yield_now`.

#![cfg(loom)]

mod support;

use loom::sync::atomic::AtomicBool;
use loom::sync::Arc;
use loom::thread;
use relayhub_mesh::{channel, TryRecvError, TrySendError};
use std::sync::atomic::Ordering;

/// Sends `0..items` one at a time through a ring of `capacity` and checks
/// that exactly `0..items` comes out, in order, then `Closed`.
fn single_items(capacity: usize, items: usize) {
    support::check(move || {
        let (mut producer, mut consumer) = channel::<usize>(capacity);
        let sender = thread::spawn(move || {
            for value in 0..items {
                let mut value = value;
                loop {
                    match producer.try_send(value) {
                        Ok(()) => break,
                        Err(TrySendError::Full(back)) => value = back,
                        Err(TrySendError::Closed(_)) => panic!("consumer gone early"),
                    }
                    thread::yield_now();
                }
            }
        });
        let mut expected = 0;
        loop {
            match consumer.try_recv() {
                Ok(value) => {
                    assert_eq!(value, expected, "out of order or duplicated");
                    expected += 1;
                }
                Err(TryRecvError::Empty) => thread::yield_now(),
                Err(TryRecvError::Closed) => break,
            }
        }
        assert_eq!(expected, items, "lost items");
        sender.join().unwrap();
    });
}

#[test]
fn fifo_single_items_wrap_around_capacity_2() {
    single_items(2, 5);
}

#[test]
fn fifo_single_items_wrap_around_capacity_4() {
    single_items(4, 6);
}

#[test]
fn fifo_batches_wrap_around_capacity_4() {
    support::check(|| {
        const ITEMS: usize = 7;
        let (mut producer, mut consumer) = channel::<usize>(4);
        let sender = thread::spawn(move || {
            let mut value = 0;
            while value < ITEMS {
                // Stage up to 3, publish once.
                for _ in 0..3 {
                    if value == ITEMS || producer.try_stage(value).is_err() {
                        break;
                    }
                    value += 1;
                }
                producer.publish();
                thread::yield_now();
            }
        });
        let mut expected = 0;
        loop {
            let count = consumer.recv_batch_now(3, |value| {
                assert_eq!(value, expected, "out of order or duplicated");
                expected += 1;
            });
            if count == 0 {
                if consumer.is_closed() && consumer.is_empty() {
                    break;
                }
                thread::yield_now();
            }
        }
        assert_eq!(expected, ITEMS, "lost items");
        sender.join().unwrap();
    });
}

#[test]
fn full_is_only_reported_full_and_empty_only_empty() {
    support::check(|| {
        let consumer_started = Arc::new(AtomicBool::new(false));
        let (mut producer, mut consumer) = channel::<usize>(2);
        let started = Arc::clone(&consumer_started);
        let sender = thread::spawn(move || {
            producer.try_send(0).unwrap();
            producer.try_send(1).unwrap();
            // Full unless the consumer has received (it flags that first, and
            // its Release of the slot carries the flag to our Acquire).
            match producer.try_send(2) {
                Ok(()) => assert!(started.load(Ordering::Relaxed), "overfilled"),
                Err(TrySendError::Full(_)) => {}
                Err(TrySendError::Closed(_)) => panic!("not closed"),
            }
        });
        // Wait for the ring to be full (or the sender finished).
        while consumer.len() < 2 {
            thread::yield_now();
        }
        consumer_started.store(true, Ordering::Relaxed);
        let mut received = Vec::new();
        loop {
            match consumer.try_recv() {
                Ok(value) => received.push(value),
                Err(TryRecvError::Empty) => thread::yield_now(),
                Err(TryRecvError::Closed) => break,
            }
        }
        assert!(received == [0, 1] || received == [0, 1, 2], "{received:?}");
        sender.join().unwrap();
    });
}
