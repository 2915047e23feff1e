//! loom: items still in the ring when the last end drops are dropped exactly
//! once, whichever end goes last, staged-but-unpublished ones included.

#![cfg(loom)]

mod support;

use loom::thread;
use relayhub_mesh::channel;
use support::DropCounter;

#[test]
fn every_item_is_dropped_exactly_once() {
    support::check(|| {
        const ITEMS: usize = 3;
        let counter = DropCounter::default();
        let (mut producer, mut consumer) = channel(2);
        let items = counter.clone();
        let sender = thread::spawn(move || {
            let _ = producer.try_send(items.item(0));
            // Staged only: published by the drop at the end of this thread.
            let _ = producer.try_stage(items.item(1));
            let _ = producer.try_send(items.item(2));
        });
        // Receive at most one item, then drop the consumer, racing the producer.
        if let Ok(item) = consumer.try_recv() {
            assert_eq!(item.value, 0);
        }
        drop(consumer);
        sender.join().unwrap();
        assert_eq!(counter.drops(), ITEMS);
    });
}
