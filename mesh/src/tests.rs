//! Single-threaded unit tests of the ring's edges; the threaded ones live in
//! `tests/stress.rs`, the model-checked ones in `tests/loom_*.rs`.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use crate::ring::channel_starting_at;
use crate::{channel, Closed, TryRecvError, TrySendError, RING_CAPACITY_MAX};

/// A waker that counts its wake-ups.
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counting_waker() -> (Arc<CountingWaker>, Waker) {
    let counter = Arc::new(CountingWaker::default());
    (Arc::clone(&counter), Waker::from(counter))
}

/// Counts drops of the values it hands out.
#[derive(Debug)]
struct DropCounted(Arc<AtomicUsize>);

impl Drop for DropCounted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn capacity_is_rounded_up_to_a_power_of_two_of_at_least_two() {
    for (asked, got) in [(0, 2), (1, 2), (2, 2), (3, 4), (5, 8), (1000, 1024)] {
        let (producer, consumer) = channel::<u8>(asked);
        assert_eq!(producer.capacity(), got);
        assert_eq!(consumer.capacity(), got);
    }
    assert_eq!(
        channel::<()>(RING_CAPACITY_MAX).0.capacity(),
        RING_CAPACITY_MAX
    );
}

#[test]
#[should_panic(expected = "RING_CAPACITY_MAX")]
fn capacity_above_the_limit_panics() {
    let _ = channel::<u8>(RING_CAPACITY_MAX + 1);
}

#[test]
fn full_and_empty_edges() {
    let (mut producer, mut consumer) = channel::<u32>(4);
    assert_eq!(consumer.try_recv(), Err(TryRecvError::Empty));
    assert!(consumer.is_empty());
    assert_eq!(producer.free_slots(), 4);
    for value in 0..4 {
        producer.try_send(value).unwrap();
    }
    assert_eq!(producer.free_slots(), 0);
    assert_eq!(consumer.len(), 4);
    assert_eq!(producer.try_send(4), Err(TrySendError::Full(4)));
    assert_eq!(consumer.try_recv(), Ok(0));
    producer.try_send(4).unwrap();
    assert_eq!(producer.try_send(5).unwrap_err().into_inner(), 5);
    for value in 1..=4 {
        assert_eq!(consumer.try_recv(), Ok(value));
    }
    assert_eq!(consumer.try_recv(), Err(TryRecvError::Empty));
}

#[test]
fn fifo_across_many_wrap_arounds_at_capacity_two() {
    let (mut producer, mut consumer) = channel::<u64>(2);
    let mut next_expected = 0;
    for value in 0..10_000u64 {
        if let Err(TrySendError::Full(value)) = producer.try_send(value) {
            assert_eq!(consumer.try_recv(), Ok(next_expected));
            next_expected += 1;
            producer.try_send(value).unwrap();
        }
    }
    while let Ok(value) = consumer.try_recv() {
        assert_eq!(value, next_expected);
        next_expected += 1;
    }
    assert_eq!(next_expected, 10_000);
}

#[test]
fn indices_cross_the_usize_wrap_around() {
    let (mut producer, mut consumer) = channel_starting_at::<usize>(4, usize::MAX - 5);
    let mut received = Vec::new();
    for value in 0..40 {
        producer.try_send(value).unwrap();
        if value % 3 == 2 {
            consumer.recv_batch_now(8, |value| received.push(value));
        }
    }
    consumer.recv_batch_now(8, |value| received.push(value));
    assert_eq!(received, (0..40).collect::<Vec<_>>());
}

#[test]
fn staged_items_are_invisible_until_published() {
    let (mut producer, mut consumer) = channel::<u8>(8);
    producer.try_stage(1).unwrap();
    producer.try_stage(2).unwrap();
    assert_eq!(producer.staged(), 2);
    assert_eq!(consumer.len(), 0);
    assert_eq!(consumer.try_recv(), Err(TryRecvError::Empty));
    producer.publish();
    assert_eq!(producer.staged(), 0);
    assert_eq!(consumer.len(), 2);
    let mut received = Vec::new();
    assert_eq!(
        consumer.recv_batch_now(usize::MAX, |item| received.push(item)),
        2
    );
    assert_eq!(received, [1, 2]);
}

#[test]
fn staging_stops_at_full_and_reports_it() {
    let (mut producer, mut consumer) = channel::<u8>(2);
    producer.try_stage(1).unwrap();
    producer.try_stage(2).unwrap();
    assert!(producer.try_stage(3).unwrap_err().is_full());
    producer.publish();
    assert_eq!(consumer.recv_batch_now(1, drop), 1);
    assert_eq!(consumer.len(), 1);
}

#[test]
fn recv_batch_now_respects_max_and_order() {
    let (mut producer, mut consumer) = channel::<u32>(16);
    for value in 0..10 {
        producer.try_send(value).unwrap();
    }
    let mut received = Vec::new();
    assert_eq!(consumer.recv_batch_now(0, |value| received.push(value)), 0);
    assert_eq!(consumer.recv_batch_now(4, |value| received.push(value)), 4);
    assert_eq!(
        consumer.recv_batch_now(100, |value| received.push(value)),
        6
    );
    assert_eq!(
        consumer.recv_batch_now(100, |value| received.push(value)),
        0
    );
    assert_eq!(received, (0..10).collect::<Vec<_>>());
}

#[test]
fn producer_drop_publishes_staged_items_then_closes() {
    let (mut producer, mut consumer) = channel::<u8>(4);
    producer.try_send(1).unwrap();
    producer.try_stage(2).unwrap();
    drop(producer);
    assert!(consumer.is_closed());
    assert_eq!(consumer.try_recv(), Ok(1));
    assert_eq!(consumer.try_recv(), Ok(2));
    assert_eq!(consumer.try_recv(), Err(TryRecvError::Closed));
    assert_eq!(consumer.recv_batch_now(4, drop), 0);
}

#[test]
fn consumer_drop_closes_and_hands_items_back() {
    let (mut producer, consumer) = channel::<String>(4);
    producer.try_send("kept".to_owned()).unwrap();
    drop(consumer);
    assert!(producer.is_closed());
    assert_eq!(
        producer.try_send("late".to_owned()),
        Err(TrySendError::Closed("late".to_owned()))
    );
    let result = block_on_now(producer.send("later".to_owned()));
    assert_eq!(result, Err(Closed("later".to_owned())));
}

#[test]
fn remaining_items_are_dropped_exactly_once_whichever_side_goes_last() {
    for consumer_first in [false, true] {
        let drops = Arc::new(AtomicUsize::new(0));
        let (mut producer, mut consumer) = channel::<DropCounted>(8);
        for _ in 0..6 {
            producer.try_send(DropCounted(Arc::clone(&drops))).unwrap();
        }
        producer.try_stage(DropCounted(Arc::clone(&drops))).unwrap();
        drop(consumer.try_recv().unwrap());
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        if consumer_first {
            drop(consumer);
            assert_eq!(
                drops.load(Ordering::SeqCst),
                1,
                "dropped while the producer lives"
            );
            drop(producer);
        } else {
            drop(producer);
            assert_eq!(
                drops.load(Ordering::SeqCst),
                1,
                "dropped while the consumer lives"
            );
            drop(consumer);
        }
        assert_eq!(drops.load(Ordering::SeqCst), 7);
    }
}

#[test]
fn a_panicking_batch_callback_neither_loses_nor_double_drops() {
    let drops = Arc::new(AtomicUsize::new(0));
    let (mut producer, mut consumer) = channel::<DropCounted>(8);
    for _ in 0..5 {
        producer.try_send(DropCounted(Arc::clone(&drops))).unwrap();
    }
    let mut seen = 0;
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        consumer.recv_batch_now(8, |item| {
            seen += 1;
            drop(item);
            assert!(seen < 2, "callback gives up on the second item");
        });
    }));
    assert!(panicked.is_err());
    assert_eq!(drops.load(Ordering::SeqCst), 2);
    assert_eq!(consumer.recv_batch_now(8, drop), 3);
    assert_eq!(drops.load(Ordering::SeqCst), 5);
    drop((producer, consumer));
    assert_eq!(drops.load(Ordering::SeqCst), 5);
}

#[test]
fn zero_sized_items_are_counted() {
    let (mut producer, mut consumer) = channel::<()>(2);
    producer.try_send(()).unwrap();
    producer.try_send(()).unwrap();
    assert!(producer.try_send(()).unwrap_err().is_full());
    assert_eq!(consumer.recv_batch_now(8, |()| {}), 2);
}

#[test]
fn a_busy_ring_never_wakes_and_a_parked_consumer_is_woken_once() {
    let (mut producer, mut consumer) = channel::<u32>(8);
    let (wakes, waker) = counting_waker();
    let mut context = Context::from_waker(&waker);

    // Not parked: publishing rings nobody.
    producer.try_send(1).unwrap();
    producer.try_send(2).unwrap();
    assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
    {
        let mut receive = pin!(consumer.recv());
        assert_eq!(receive.as_mut().poll(&mut context), Poll::Ready(Some(1)));
    }
    {
        let mut receive = pin!(consumer.recv());
        assert_eq!(receive.as_mut().poll(&mut context), Poll::Ready(Some(2)));
    }
    // Parked: the next publish wakes once; more publishes do not wake again.
    let mut receive = pin!(consumer.recv());
    assert_eq!(receive.as_mut().poll(&mut context), Poll::Pending);
    producer.try_send(3).unwrap();
    producer.try_send(4).unwrap();
    assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    assert_eq!(receive.as_mut().poll(&mut context), Poll::Ready(Some(3)));
    assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
}

#[test]
fn a_full_producer_parks_and_is_woken_by_a_release() {
    let (mut producer, mut consumer) = channel::<u32>(2);
    let (wakes, waker) = counting_waker();
    let mut context = Context::from_waker(&waker);
    producer.try_send(1).unwrap();
    producer.try_stage(2).unwrap(); // Staged only: `send` must publish it.
    {
        let mut send = pin!(producer.send(3));
        assert_eq!(send.as_mut().poll(&mut context), Poll::Pending);
        assert_eq!(
            consumer.len(),
            2,
            "send published the staged item before parking"
        );
        assert_eq!(consumer.try_recv(), Ok(1));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(send.as_mut().poll(&mut context), Poll::Ready(Ok(())));
    }
    let mut received = Vec::new();
    consumer.recv_batch_now(8, |value| received.push(value));
    assert_eq!(received, [2, 3]);
    assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
}

#[test]
fn a_parked_consumer_is_woken_by_close_and_sees_none() {
    let (producer, mut consumer) = channel::<u32>(2);
    let (wakes, waker) = counting_waker();
    let mut context = Context::from_waker(&waker);
    let mut receive = pin!(consumer.recv_batch(4, drop));
    assert_eq!(receive.as_mut().poll(&mut context), Poll::Pending);
    drop(producer);
    assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    assert_eq!(receive.as_mut().poll(&mut context), Poll::Ready(0));
}

#[test]
fn re_polling_with_a_new_waker_moves_the_registration() {
    let (mut producer, mut consumer) = channel::<u32>(2);
    let (first_wakes, first) = counting_waker();
    let (second_wakes, second) = counting_waker();
    let mut receive = pin!(consumer.recv());
    assert!(receive
        .as_mut()
        .poll(&mut Context::from_waker(&first))
        .is_pending());
    assert!(receive
        .as_mut()
        .poll(&mut Context::from_waker(&second))
        .is_pending());
    producer.try_send(9).unwrap();
    assert_eq!(first_wakes.0.load(Ordering::SeqCst), 0);
    assert_eq!(second_wakes.0.load(Ordering::SeqCst), 1);
}

/// Polls a future that must complete without waiting.
fn block_on_now<F: Future>(future: F) -> F::Output {
    let (_, waker) = counting_waker();
    match pin!(future).poll(&mut Context::from_waker(&waker)) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("future was expected to be ready"),
    }
}

#[test]
fn both_ends_can_move_to_another_thread() {
    fn assert_send<S: Send>(_: &S) {}
    let (producer, consumer) = channel::<String>(2);
    assert_send(&producer);
    assert_send(&consumer);
}

#[test]
fn a_parked_producer_is_woken_only_once_half_the_ring_is_free() {
    let (mut producer, mut consumer) = channel::<u32>(8);
    let (wakes, waker) = counting_waker();
    let mut context = Context::from_waker(&waker);
    for value in 0..8 {
        producer.try_send(value).unwrap();
    }
    let mut send = pin!(producer.send(8));
    assert_eq!(send.as_mut().poll(&mut context), Poll::Pending);
    for expected in 0..3 {
        assert_eq!(consumer.try_recv(), Ok(expected));
    }
    assert_eq!(
        wakes.0.load(Ordering::SeqCst),
        0,
        "3 of 8 free: below the threshold"
    );
    assert_eq!(consumer.try_recv(), Ok(3));
    assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "4 of 8 free: rings");
    assert_eq!(send.as_mut().poll(&mut context), Poll::Ready(Ok(())));
}
