//! Cross-core SPSC rings side by side: ns per message moved from a producer
//! pinned to core 0 to a consumer pinned to core 1.
//!
//! Each criterion iteration is one `u64` message, so "time" is ns/message.
//! `iter_custom` times the transfer only: from the producer's start (after
//! both ends are ready) to the consumer's receipt of the last message. The
//! consumer checks every value against the expected sequence.
//!
//! Contenders, each with [`RING_CAPACITY`] slots:
//! - `mesh`: relayhub-mesh spinning on `try_send`/`try_recv`, and batched
//!   (`try_stage` x [`BATCH`] + one `publish`; `recv_batch_now(BATCH)`);
//! - `rtrb`: rtrb's `push`/`pop`, and batched (`write_chunk_uninit` /
//!   `read_chunk` of up to [`BATCH`]);
//! - `crossbeam_array_queue`: crossbeam's MPMC `ArrayQueue` (no batch API);
//! - `glommio_shared_channel`: glommio's `shared_channel` between two
//!   `LocalExecutor`s (single items; it has no batch API);
//! - `mesh_glommio`: relayhub-mesh's async face in the same two executors,
//!   as the server uses it: `send().await` per item (single), or `try_stage`
//!   x [`BATCH`] + `publish` with `send().await` only when full (batch);
//!   the consumer always uses `recv_batch(BATCH).await`. Opt-in with
//!   `RELAYHUB_BENCH_MESH_GLOMMIO=1` (see `mesh_glommio_enabled`).
//!
//! Run: `cargo bench -p relayhub-benches --bench ring`. Results and the
//! machine they came from are in `docs/mesh.md`.

use std::hint::spin_loop;
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use relayhub_benches::pin_to_core;

/// Core of the producer thread or executor.
const PRODUCER_CORE: usize = 0;
/// Core of the consumer thread or executor.
const CONSUMER_CORE: usize = 1;
/// Slots in every ring under test (the hub's mesh default order of size).
const RING_CAPACITY: usize = 1024;
/// Items staged per publish, and drained per receive, in the batched runs.
const BATCH: usize = 32;
/// io_uring registered-buffer memory per glommio executor: small, because
/// RLIMIT_MEMLOCK is 8 MiB on the bench machine (glommio's default is 10).
const GLOMMIO_IO_MEMORY_BYTES: usize = 1 << 20;
/// How long the `*_spin` glommio variants spin before parking an idle
/// executor (`LocalExecutorBuilder::spin_before_park`): parking and waking a
/// whole executor from another core costs microseconds, which an executor
/// that idles between bursts pays per burst unless it spins a little first.
const GLOMMIO_SPIN_BEFORE_PARK: Duration = Duration::from_micros(50);

/// Moves `messages` from `produce` (on this thread, pinned to the producer
/// core) to `consume` (a fresh thread pinned to the consumer core) and
/// returns the time from the producer's start to the consumer's last receipt.
fn two_threads<P: Send, C: Send>(
    messages: u64,
    (producer, consumer): (P, C),
    produce: impl FnOnce(P, u64),
    consume: impl FnOnce(C, u64) + Send,
) -> Duration {
    pin_to_core(PRODUCER_CORE);
    let ready = Barrier::new(2);
    thread::scope(|scope| {
        let receiver = scope.spawn(|| {
            pin_to_core(CONSUMER_CORE);
            ready.wait();
            consume(consumer, messages);
            Instant::now()
        });
        ready.wait();
        let start = Instant::now();
        produce(producer, messages);
        receiver.join().expect("consumer panicked") - start
    })
}

fn check(value: u64, expected: &mut u64) {
    assert_eq!(value, *expected, "out of order");
    *expected += 1;
}

fn mesh_single(messages: u64) -> Duration {
    two_threads(
        messages,
        relayhub_mesh::channel::<u64>(RING_CAPACITY),
        |mut producer, messages| {
            for value in 0..messages {
                let mut value = value;
                while let Err(error) = producer.try_send(value) {
                    value = error.into_inner();
                    spin_loop();
                }
            }
        },
        |mut consumer, messages| {
            let mut expected = 0;
            while expected < messages {
                match consumer.try_recv() {
                    Ok(value) => check(value, &mut expected),
                    Err(_) => spin_loop(),
                }
            }
        },
    )
}

fn mesh_batch(messages: u64) -> Duration {
    two_threads(
        messages,
        relayhub_mesh::channel::<u64>(RING_CAPACITY),
        |mut producer, messages| {
            let mut value = 0;
            while value < messages {
                let batch_end = messages.min(value + BATCH as u64);
                while value < batch_end && producer.try_stage(value).is_ok() {
                    value += 1;
                }
                if producer.staged() == 0 {
                    spin_loop();
                }
                producer.publish();
            }
        },
        |mut consumer, messages| {
            let mut expected = 0;
            while expected < messages {
                if consumer.recv_batch_now(BATCH, |value| check(value, &mut expected)) == 0 {
                    spin_loop();
                }
            }
        },
    )
}

fn rtrb_single(messages: u64) -> Duration {
    two_threads(
        messages,
        rtrb::RingBuffer::<u64>::new(RING_CAPACITY),
        |mut producer, messages| {
            for value in 0..messages {
                while producer.push(value).is_err() {
                    spin_loop();
                }
            }
        },
        |mut consumer, messages| {
            let mut expected = 0;
            while expected < messages {
                match consumer.pop() {
                    Ok(value) => check(value, &mut expected),
                    Err(_) => spin_loop(),
                }
            }
        },
    )
}

fn rtrb_batch(messages: u64) -> Duration {
    two_threads(
        messages,
        rtrb::RingBuffer::<u64>::new(RING_CAPACITY),
        |mut producer, messages| {
            let mut value = 0;
            while value < messages {
                let wanted = (messages - value).min(BATCH as u64) as usize;
                let count = match producer.write_chunk_uninit(wanted) {
                    Ok(chunk) => chunk.fill_from_iter(value..),
                    Err(_) => match producer.slots() {
                        0 => 0,
                        free => producer
                            .write_chunk_uninit(free.min(wanted))
                            .expect("free slots only grow for the producer")
                            .fill_from_iter(value..),
                    },
                };
                if count == 0 {
                    spin_loop();
                }
                value += count as u64;
            }
        },
        |mut consumer, messages| {
            let mut expected = 0;
            while expected < messages {
                let count = consumer.slots().min(BATCH);
                if count == 0 {
                    spin_loop();
                    continue;
                }
                let chunk = consumer
                    .read_chunk(count)
                    .expect("items only grow for the consumer");
                for value in chunk {
                    check(value, &mut expected);
                }
            }
        },
    )
}

fn crossbeam_array_queue(messages: u64) -> Duration {
    let queue = Arc::new(crossbeam::queue::ArrayQueue::<u64>::new(RING_CAPACITY));
    two_threads(
        messages,
        (Arc::clone(&queue), queue),
        |producer, messages| {
            for value in 0..messages {
                let mut value = value;
                while let Err(back) = producer.push(value) {
                    value = back;
                    spin_loop();
                }
            }
        },
        |consumer, messages| {
            let mut expected = 0;
            while expected < messages {
                match consumer.pop() {
                    Some(value) => check(value, &mut expected),
                    None => spin_loop(),
                }
            }
        },
    )
}

/// Two glommio executors, one per core, that stay up for a whole benchmark
/// (an executor and its io_uring take milliseconds to set up) and move the
/// number of messages they are told to, reporting start and finish times.
struct ExecutorPair {
    to_producer: Option<mpsc::Sender<u64>>,
    to_consumer: Option<mpsc::Sender<u64>>,
    started: mpsc::Receiver<Instant>,
    finished: mpsc::Receiver<Instant>,
    executors: Vec<ExecutorJoinHandle<()>>,
}

/// Which channel an [`ExecutorPair`] moves messages through.
#[derive(Clone, Copy)]
enum AsyncChannel {
    GlommioShared,
    /// `send().await` per item.
    Mesh,
    /// `try_stage` up to [`BATCH`] items, `publish` once; `send().await`
    /// only when the ring is full (how a shard forwards a tick's worth).
    MeshBatched,
}

impl ExecutorPair {
    fn new(channel: AsyncChannel, spin_before_park: Option<Duration>) -> Self {
        let (to_producer, producer_orders) = mpsc::channel::<u64>();
        let (to_consumer, consumer_orders) = mpsc::channel::<u64>();
        let (started_sender, started) = mpsc::channel();
        let (finished_sender, finished) = mpsc::channel();
        let builder = |core| {
            let builder = LocalExecutorBuilder::new(Placement::Fixed(core))
                .io_memory(GLOMMIO_IO_MEMORY_BYTES);
            match spin_before_park {
                Some(spin) => builder.spin_before_park(spin),
                None => builder,
            }
        };
        let executors = match channel {
            AsyncChannel::GlommioShared => {
                let (sender, receiver) =
                    glommio::channels::shared_channel::new_bounded::<u64>(RING_CAPACITY);
                let consumer = builder(CONSUMER_CORE).spawn(move || async move {
                    let receiver = receiver.connect().await;
                    // Blocking on the order is fine: nothing else runs here.
                    while let Ok(messages) = consumer_orders.recv() {
                        let mut expected = 0;
                        while expected < messages {
                            check(receiver.recv().await.expect("sender gone"), &mut expected);
                        }
                        finished_sender.send(Instant::now()).unwrap();
                    }
                });
                let producer = builder(PRODUCER_CORE).spawn(move || async move {
                    let sender = sender.connect().await;
                    while let Ok(messages) = producer_orders.recv() {
                        started_sender.send(Instant::now()).unwrap();
                        for value in 0..messages {
                            sender.send(value).await.expect("receiver gone");
                        }
                    }
                });
                vec![consumer.unwrap(), producer.unwrap()]
            }
            AsyncChannel::Mesh | AsyncChannel::MeshBatched => {
                let batched = matches!(channel, AsyncChannel::MeshBatched);
                let (mut sender, mut receiver) = relayhub_mesh::channel::<u64>(RING_CAPACITY);
                let consumer = builder(CONSUMER_CORE).spawn(move || async move {
                    while let Ok(messages) = consumer_orders.recv() {
                        let mut expected = 0;
                        while expected < messages {
                            let count = receiver
                                .recv_batch(BATCH, |value| check(value, &mut expected))
                                .await;
                            assert!(count > 0, "sender gone");
                        }
                        finished_sender.send(Instant::now()).unwrap();
                    }
                });
                let producer = builder(PRODUCER_CORE).spawn(move || async move {
                    while let Ok(messages) = producer_orders.recv() {
                        started_sender.send(Instant::now()).unwrap();
                        if !batched {
                            for value in 0..messages {
                                sender.send(value).await.expect("receiver gone");
                            }
                            continue;
                        }
                        let mut value = 0;
                        while value < messages {
                            let batch_end = messages.min(value + BATCH as u64);
                            while value < batch_end {
                                if let Err(error) = sender.try_stage(value) {
                                    assert!(error.is_full(), "receiver gone");
                                    sender
                                        .send(error.into_inner())
                                        .await
                                        .expect("receiver gone");
                                }
                                value += 1;
                            }
                            sender.publish();
                        }
                    }
                });
                vec![consumer.unwrap(), producer.unwrap()]
            }
        };
        Self {
            to_producer: Some(to_producer),
            to_consumer: Some(to_consumer),
            started,
            finished,
            executors,
        }
    }

    fn transfer(&self, messages: u64) -> Duration {
        self.to_consumer.as_ref().unwrap().send(messages).unwrap();
        self.to_producer.as_ref().unwrap().send(messages).unwrap();
        let start = self.started.recv().unwrap();
        self.finished.recv().unwrap() - start
    }
}

impl Drop for ExecutorPair {
    fn drop(&mut self) {
        // Closing the order channels ends both executors' loops.
        self.to_producer = None;
        self.to_consumer = None;
        for executor in self.executors.drain(..) {
            executor.join().expect("executor failed");
        }
    }
}

fn configure(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
}

/// Benches `channel` between two glommio executors, once with default
/// executors (`name`) and once spinning before parking (`name_spin`).
fn bench_executors(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    channel: AsyncChannel,
) {
    for (suffix, spin) in [("", None), ("_spin", Some(GLOMMIO_SPIN_BEFORE_PARK))] {
        let pair = ExecutorPair::new(channel, spin);
        group.bench_function(format!("{name}{suffix}"), |bencher| {
            bencher.iter_custom(|messages| pair.transfer(messages))
        });
    }
}

/// The `mesh_glommio*` runs are opt-in (`RELAYHUB_BENCH_MESH_GLOMMIO=1`):
/// on the 2-core KVM bench machine a `Waker::wake` from another executor
/// sometimes takes milliseconds to reach a sleeping glommio executor, and a
/// criterion sample of millions of messages then runs for minutes (measured
/// ~1,000 park/wake cycles in 3.3 s for 1 M messages; see docs/mesh.md).
fn mesh_glommio_enabled() -> bool {
    std::env::var_os("RELAYHUB_BENCH_MESH_GLOMMIO").is_some_and(|value| value == "1")
}

fn single_items(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("ring/single");
    configure(&mut group);
    group.bench_function("mesh", |bencher| bencher.iter_custom(mesh_single));
    group.bench_function("rtrb", |bencher| bencher.iter_custom(rtrb_single));
    group.bench_function("crossbeam_array_queue", |bencher| {
        bencher.iter_custom(crossbeam_array_queue)
    });
    bench_executors(
        &mut group,
        "glommio_shared_channel",
        AsyncChannel::GlommioShared,
    );
    if mesh_glommio_enabled() {
        bench_executors(&mut group, "mesh_glommio", AsyncChannel::Mesh);
    }
    group.finish();
}

fn batches(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group(format!("ring/batch{BATCH}"));
    configure(&mut group);
    group.bench_function("mesh", |bencher| bencher.iter_custom(mesh_batch));
    group.bench_function("rtrb", |bencher| bencher.iter_custom(rtrb_batch));
    if mesh_glommio_enabled() {
        bench_executors(&mut group, "mesh_glommio", AsyncChannel::MeshBatched);
    }
    group.finish();
}

/// One thread stages and drains [`BATCH`] items at a time: the cost of the
/// code path itself (including the doorbell's fence), without the cache-line
/// transfers between cores and without the scheduler noise of two threads.
fn same_thread(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group(format!("ring/same_thread_batch{BATCH}"));
    configure(&mut group);
    group.bench_function("mesh", |bencher| {
        let (mut producer, mut consumer) = relayhub_mesh::channel::<u64>(RING_CAPACITY);
        bencher.iter_custom(|messages| {
            let start = Instant::now();
            let mut expected = 0;
            let mut value = 0;
            while value < messages {
                let batch_end = messages.min(value + BATCH as u64);
                while value < batch_end {
                    producer.try_stage(value).expect("drained every batch");
                    value += 1;
                }
                producer.publish();
                consumer.recv_batch_now(BATCH, |value| check(value, &mut expected));
            }
            start.elapsed()
        })
    });
    group.bench_function("rtrb", |bencher| {
        let (mut producer, mut consumer) = rtrb::RingBuffer::<u64>::new(RING_CAPACITY);
        bencher.iter_custom(|messages| {
            let start = Instant::now();
            let mut expected = 0;
            let mut value = 0;
            while value < messages {
                let count = (messages - value).min(BATCH as u64) as usize;
                let chunk = producer
                    .write_chunk_uninit(count)
                    .expect("drained every batch");
                value += chunk.fill_from_iter(value..) as u64;
                let chunk = consumer.read_chunk(count).expect("just written");
                for value in chunk {
                    check(value, &mut expected);
                }
            }
            start.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, single_items, batches, same_thread);
criterion_main!(benches);
