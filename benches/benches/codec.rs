//! Codec micro benchmarks: encoding and decoding relays and deliveries.
//!
//! Cases are the relays the hub sees at the edges of the protocol: a 64 B
//! body to 1 receiver, and 64 B, 64 KiB and 1 MiB bodies to the maximum 255
//! receivers. Throughput is the whole frame (header + archive) per iteration,
//! so criterion prints bytes per second next to the time per frame.
//!
//! Decoding is measured three ways, from the most to the least work:
//! - `decode_relay_handle_bytes`: the bytes are handed over with
//!   `Decoder::handle_bytes`, which copies them into the decoder's aligned
//!   buffer, then validated by `poll_frame`.
//! - `decode_relay_in_place`: the bytes are already in the decoder's buffer,
//!   as after a socket read into `Decoder::spare` + `Decoder::commit`; only
//!   the header check and validation run (no body copy).
//! - `decode_frame`: the one-shot `decode_frame` on an aligned buffer.
//!
//! Run: `cargo bench -p relayhub-benches --bench codec` (results and the
//! command used for docs/benchmarks.md are in that file).

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use relayhub_protocol::{
    decode_frame, deliver_frame_len, encode, encode_deliver, ClientFrame, ClientSide, Decoder,
    HubFrame, HubSide, RelayRef, RECEIVERS_MAX,
};
use rkyv::util::AlignedVec;

/// One benchmarked relay shape.
struct Case {
    name: &'static str,
    /// The body size alone, for frames that do not depend on receivers.
    body_name: &'static str,
    body_bytes: usize,
    receivers: usize,
}

const CASES: [Case; 4] = [
    Case {
        name: "64B_to_1",
        body_name: "64B",
        body_bytes: 64,
        receivers: 1,
    },
    Case {
        name: "64B_to_255",
        body_name: "64B",
        body_bytes: 64,
        receivers: RECEIVERS_MAX,
    },
    Case {
        name: "64KiB_to_255",
        body_name: "64KiB",
        body_bytes: 64 << 10,
        receivers: RECEIVERS_MAX,
    },
    Case {
        name: "1MiB_to_255",
        body_name: "1MiB",
        body_bytes: 1 << 20,
        receivers: RECEIVERS_MAX,
    },
];

/// The inputs of one case: receiver ids, body, and the encoded relay frame.
struct Input {
    receivers: Vec<u64>,
    body: Vec<u8>,
    frame: BytesMut,
}

impl Input {
    fn new(case: &Case) -> Input {
        let receivers: Vec<u64> = (1..=case.receivers as u64).collect();
        let body: Vec<u8> = (0..case.body_bytes).map(|i| i as u8).collect();
        let mut frame = BytesMut::new();
        encode(&relay(&receivers, &body), &mut frame).expect("within limits");
        Input {
            receivers,
            body,
            frame,
        }
    }
}

fn relay<'a>(receivers: &'a [u64], body: &'a [u8]) -> RelayRef<'a> {
    RelayRef {
        request: 7,
        receivers,
        body,
    }
}

/// What a caller touches of a decoded relay: the receiver count and the body.
fn relay_shape(frame: ClientFrame<'_>) -> (usize, usize) {
    let ClientFrame::Relay(relay) = frame else {
        panic!("not a relay")
    };
    (relay.receivers.len(), relay.body.len())
}

fn encode_relay(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec/encode_relay");
    for case in &CASES {
        let input = Input::new(case);
        group.throughput(Throughput::Bytes(input.frame.len() as u64));
        // Reused across iterations, as a connection's write buffer is.
        let mut out = BytesMut::with_capacity(input.frame.len());
        group.bench_with_input(
            BenchmarkId::from_parameter(case.name),
            &input,
            |b, input| {
                b.iter(|| {
                    out.clear();
                    let relay = relay(black_box(&input.receivers), black_box(&input.body));
                    encode(&relay, &mut out).expect("within limits")
                })
            },
        );
        assert_eq!(out, input.frame, "encoding is deterministic");
    }
    group.finish();
}

fn encode_deliver_frame(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec/encode_deliver");
    // A delivery does not depend on the receiver count: one case per body.
    for case in CASES.iter().skip(1) {
        let input = Input::new(case);
        group.throughput(Throughput::Bytes(deliver_frame_len(case.body_bytes) as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(case.body_name),
            &input,
            |b, input| {
                b.iter(|| {
                    encode_deliver(black_box(1), black_box(&input.body)).expect("within limits")
                })
            },
        );
    }
    group.finish();
}

fn decode_relay_handle_bytes(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec/decode_relay_handle_bytes");
    for case in &CASES {
        let input = Input::new(case);
        group.throughput(Throughput::Bytes(input.frame.len() as u64));
        let mut decoder = Decoder::<HubSide>::after_preface();
        group.bench_with_input(
            BenchmarkId::from_parameter(case.name),
            &input,
            |b, input| {
                b.iter(|| {
                    // Consumes the previous frame, then copies this one in.
                    decoder.handle_bytes(black_box(&input.frame));
                    relay_shape(decoder.poll_frame().expect("valid").expect("complete"))
                })
            },
        );
        assert_eq!(decoder.buffered_len(), 0, "one frame a turn, all consumed");
    }
    group.finish();
}

fn decode_relay_in_place(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec/decode_relay_in_place");
    for case in &CASES {
        let input = Input::new(case);
        let len = input.frame.len();
        group.throughput(Throughput::Bytes(len as u64));
        let mut decoder = Decoder::<HubSide>::after_preface();
        // The first read sizes the buffer for this frame (spare alone offers
        // one read chunk until a header is in).
        decoder.handle_bytes(&input.frame);
        assert_eq!(
            relay_shape(decoder.poll_frame().unwrap().unwrap()).0,
            case.receivers
        );
        // Once the frame is consumed the decoder reads into the same place
        // again, so the frame's bytes are already there: committing them
        // models a socket read straight into `spare`, minus the kernel copy.
        assert_eq!(
            &decoder.spare()[..len],
            &input.frame[..],
            "spare reuses the buffer"
        );
        group.bench_function(BenchmarkId::from_parameter(case.name), |b| {
            b.iter(|| {
                let spare = decoder.spare();
                black_box(&mut spare[..len]);
                decoder.commit(len);
                relay_shape(decoder.poll_frame().expect("valid").expect("complete"))
            })
        });
    }
    group.finish();
}

fn decode_frame_aligned(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec/decode_frame");
    for case in &CASES {
        let input = Input::new(case);
        group.throughput(Throughput::Bytes(input.frame.len() as u64));
        let mut aligned = AlignedVec::<16>::with_capacity(input.frame.len());
        aligned.extend_from_slice(&input.frame);
        group.bench_with_input(
            BenchmarkId::new("relay", case.name),
            &aligned,
            |b, bytes| {
                b.iter(|| {
                    let (frame, len) = decode_frame::<HubSide>(black_box(bytes)).expect("valid");
                    (relay_shape(frame), len)
                })
            },
        );
    }
    // The receiving client's side of the same relays: one Deliver frame.
    for case in CASES.iter().skip(1) {
        let deliver = encode_deliver(1, &Input::new(case).body).expect("within limits");
        group.throughput(Throughput::Bytes(deliver.len() as u64));
        let mut aligned = AlignedVec::<16>::with_capacity(deliver.len());
        aligned.extend_from_slice(&deliver);
        group.bench_with_input(
            BenchmarkId::new("deliver", case.body_name),
            &aligned,
            |b, bytes| {
                b.iter(|| {
                    let (frame, len) = decode_frame::<ClientSide>(black_box(bytes)).expect("valid");
                    let HubFrame::Deliver(deliver) = frame else {
                        panic!("not a deliver")
                    };
                    (deliver.body.len(), len)
                })
            },
        );
    }
    group.finish();
}

criterion_group!(
    codec,
    encode_relay,
    encode_deliver_frame,
    decode_relay_handle_bytes,
    decode_relay_in_place,
    decode_frame_aligned
);
criterion_main!(codec);
