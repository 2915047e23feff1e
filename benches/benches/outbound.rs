//! Fan-out into outbound queues: one 1 KiB relay body queued as a
//! version-2 `DeliverV2` for each of 16 receivers, `burst` relays at a time,
//! then every queue written out in full (its slices gathered, then
//! advanced), as the shard and its writers do for a fan-out relay. This is
//! the per-receiver work the fan-out row of `benches/compare.sh` scales
//! with; the socket write itself is left out.
//!
//! Run: `cargo bench -p relayhub-benches --bench outbound`.

use std::{hint::black_box, io::IoSlice};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use relayhub_protocol::DeliverV2Meta;
use relayhub_server::outbound::{Outbound, SharedBody};

/// Receivers of each relay (the fan-out row of `benches/compare.sh`).
const RECEIVERS: usize = 16;

/// The body size of the fan-out row.
const BODY_BYTES: usize = 1024;

/// Queue limit: the hub's default `--outbound-bytes-max`.
const OUTBOUND_BYTES_MAX: usize = 64 << 20;

fn fan_out(c: &mut Criterion) {
    let body = SharedBody::new(7, &[0x5a; BODY_BYTES], None);
    let mut group = c.benchmark_group("outbound_fan_out_16_1kib");
    for burst in [1u64, 8, 32] {
        group.throughput(Throughput::Elements(burst * RECEIVERS as u64));
        group.bench_with_input(BenchmarkId::from_parameter(burst), &burst, |b, &burst| {
            let mut queues: Vec<Outbound> = (0..RECEIVERS)
                .map(|_| Outbound::new(OUTBOUND_BYTES_MAX))
                .collect();
            let mut seq = 0;
            b.iter(|| {
                for _ in 0..burst {
                    seq += 1;
                    for queue in &mut queues {
                        let meta = DeliverV2Meta {
                            from: 7,
                            seq,
                            message_id: seq,
                            flags: 0,
                        };
                        queue.push_deliver_v2(&body, meta).expect("room");
                    }
                }
                for queue in &mut queues {
                    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(64);
                    queue.slices(&mut slices);
                    let written: usize = slices.iter().map(|slice| black_box(slice.len())).sum();
                    drop(slices);
                    queue.advance(written);
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, fan_out);
criterion_main!(benches);
