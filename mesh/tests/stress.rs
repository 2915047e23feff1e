//! Two real threads hammer one ring; every item is checked in sequence.
//!
//! Millions of items in release, fewer in debug so that `cargo test` stays
//! around a second.

#![cfg(not(loom))]

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

use relayhub_mesh::{channel, TryRecvError, TrySendError};

/// Items per stress run: 4 million in release, 200 thousand in debug.
const ITEMS: u64 = if cfg!(debug_assertions) {
    200_000
} else {
    4_000_000
};

/// Items per async run, smaller: with a tiny ring nearly every item parks a
/// thread and costs a futex wake (a few microseconds).
const ASYNC_ITEMS: u64 = if cfg!(debug_assertions) {
    50_000
} else {
    400_000
};

/// The largest batch the batched runs stage or drain at once.
const BATCH_MAX: usize = 32;

#[test]
fn two_threads_single_items_spinning() {
    for capacity in [2, 64] {
        let (mut producer, mut consumer) = channel::<u64>(capacity);
        let sender = thread::spawn(move || {
            let mut value = 0;
            while value < ITEMS {
                match producer.try_send(value) {
                    Ok(()) => value += 1,
                    Err(TrySendError::Full(_)) => thread::yield_now(),
                    Err(TrySendError::Closed(_)) => panic!("consumer gone early"),
                }
            }
        });
        let mut expected = 0;
        loop {
            match consumer.try_recv() {
                Ok(value) => {
                    assert_eq!(value, expected);
                    expected += 1;
                }
                Err(TryRecvError::Empty) => thread::yield_now(),
                Err(TryRecvError::Closed) => break,
            }
        }
        assert_eq!(expected, ITEMS);
        sender.join().unwrap();
    }
}

#[test]
fn two_threads_batches_spinning() {
    let (mut producer, mut consumer) = channel::<u64>(128);
    let sender = thread::spawn(move || {
        let mut value = 0;
        while value < ITEMS {
            // Batches of varying size: 1 ..= BATCH_MAX.
            let batch = 1 + (value as usize * 7) % BATCH_MAX;
            for _ in 0..batch {
                if value == ITEMS || producer.try_stage(value).is_err() {
                    break;
                }
                value += 1;
            }
            producer.publish();
        }
    });
    let mut expected = 0;
    while !consumer.is_closed() || !consumer.is_empty() {
        consumer.recv_batch_now(BATCH_MAX, |value| {
            assert_eq!(value, expected);
            expected += 1;
        });
    }
    assert_eq!(expected, ITEMS);
    sender.join().unwrap();
}

#[test]
fn two_threads_async_with_parking() {
    // A small ring so that both sides park often.
    for capacity in [2, 16] {
        let (mut producer, mut consumer) = channel::<u64>(capacity);
        let sender = thread::spawn(move || {
            block_on(async move {
                for value in 0..ASYNC_ITEMS {
                    producer.send(value).await.expect("consumer gone early");
                }
            })
        });
        let expected = block_on(async move {
            let mut expected = 0;
            loop {
                let count = consumer
                    .recv_batch(BATCH_MAX, |value| {
                        assert_eq!(value, expected);
                        expected += 1;
                    })
                    .await;
                if count == 0 {
                    break expected;
                }
                if expected % 1000 == 0 {
                    // Mix in the single-item receive.
                    match consumer.recv().await {
                        Some(value) => {
                            assert_eq!(value, expected);
                            expected += 1;
                        }
                        None => break expected,
                    }
                }
            }
        });
        assert_eq!(expected, ASYNC_ITEMS);
        sender.join().unwrap();
    }
}

#[test]
fn async_receiver_sees_close_after_the_last_item() {
    let (mut producer, mut consumer) = channel::<u64>(4);
    let sender = thread::spawn(move || {
        block_on(async move {
            for value in 0..1000 {
                producer.send(value).await.unwrap();
            }
        })
    });
    let received = block_on(async move {
        let mut received = Vec::new();
        while let Some(value) = consumer.recv().await {
            received.push(value);
        }
        received
    });
    assert_eq!(received, (0..1000).collect::<Vec<_>>());
    sender.join().unwrap();
}

/// Wakes a thread parked in [`block_on`].
struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future on this thread, parking the thread while it is pending.
fn block_on<F: Future>(future: F) -> F::Output {
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut context) {
            Poll::Ready(output) => return output,
            Poll::Pending => thread::park(),
        }
    }
}
