//! Hand-written `hub_session` inputs (the paths random bytes hardly reach:
//! paused senders, slow consumers, timeouts, shutdown with deliveries in
//! flight, lists across shards) and the encoder that turns them into the
//! bytes `SessionInput::arbitrary_take_rest` reads back.
//!
//! The encoder follows arbitrary 1.x's derive: integers little-endian,
//! `bool` as a byte's low bit, an enum variant as a `u32` whose
//! `(u32 * variants) >> 32` is its index, a `Vec` as "another element?"
//! bytes before each element and a 0 after the last. [`encode`] checks
//! that the bytes decode back to the same input, so a change of format
//! fails the seed generator instead of writing useless seeds.

use arbitrary::{Arbitrary, Unstructured};

use crate::hub::{
    AckUpto, Body, HelloKind, MessageIdChoice, Op, Preset, Request, SessionInput, Target,
    TokenChoice, Wire,
};

#[derive(Default)]
struct Out(Vec<u8>);

impl Out {
    fn u8(&mut self, value: u8) {
        self.0.push(value);
    }

    fn u16(&mut self, value: u16) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn u32(&mut self, value: u32) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn bool(&mut self, value: bool) {
        self.u8(u8::from(value));
    }

    fn variant(&mut self, index: u32, count: u32) {
        // The smallest u32 whose `(v * count) >> 32` is `index`.
        let value = (u64::from(index) << 32).div_ceil(u64::from(count));
        self.u32(u32::try_from(value).expect("an index below the count"));
    }

    fn vec<T>(&mut self, items: &[T], mut each: impl FnMut(&mut Out, &T)) {
        for item in items {
            self.bool(true);
            each(self, item);
        }
        self.bool(false);
    }

    fn body(&mut self, body: &Body) {
        self.u8(body.size);
        self.vec(&body.bytes, |out, &byte| out.u8(byte));
    }

    fn target(&mut self, target: Target) {
        match target {
            Target::Client(client) => {
                self.variant(0, 2);
                self.u8(client);
            }
            Target::Id(id) => {
                self.variant(1, 2);
                self.u64(id);
            }
        }
    }

    fn wire(&mut self, wire: Wire) {
        self.u16(wire.read);
        self.u16(wire.hold);
    }

    fn request(&mut self, request: &Request) {
        match request {
            Request::Echo { body } => {
                self.variant(0, 5);
                self.body(body);
            }
            Request::Identity => self.variant(1, 5),
            Request::List { after, limit } => {
                self.variant(2, 5);
                self.target(*after);
                self.u32(*limit);
            }
            Request::Relay { receivers, body } => {
                self.variant(3, 5);
                self.vec(receivers, |out, &target| out.target(target));
                self.body(body);
            }
            Request::RelayRepeated {
                receiver,
                count,
                body,
            } => {
                self.variant(4, 5);
                self.target(*receiver);
                self.u16(*count);
                self.body(body);
            }
        }
    }

    fn hello_kind(&mut self, hello: HelloKind) {
        match hello {
            HelloKind::New { durable } => {
                self.variant(0, 2);
                self.bool(durable);
            }
            HelloKind::Resume { session, token } => {
                self.variant(1, 2);
                self.u8(session);
                let index = match token {
                    TokenChoice::Latest => 0,
                    TokenChoice::Previous => 1,
                    TokenChoice::Oldest => 2,
                    TokenChoice::Wrong => 3,
                };
                self.variant(index, 4);
            }
        }
    }

    fn op(&mut self, op: &Op) {
        const OPS: u32 = 17;
        match op {
            Op::Connect { shard } => {
                self.variant(0, OPS);
                self.u8(*shard);
            }
            Op::Preface { client, wire } => {
                self.variant(1, OPS);
                self.u8(*client);
                self.wire(*wire);
            }
            Op::Request {
                client,
                request,
                wire,
            } => {
                self.variant(2, OPS);
                self.u8(*client);
                self.request(request);
                self.wire(*wire);
            }
            Op::Http { client, wire } => {
                self.variant(3, OPS);
                self.u8(*client);
                self.wire(*wire);
            }
            Op::Raw {
                client,
                bytes,
                wire,
            } => {
                self.variant(4, OPS);
                self.u8(*client);
                self.vec(bytes, |out, &byte| out.u8(byte));
                self.wire(*wire);
            }
            Op::Transmit { client, read } => {
                self.variant(5, OPS);
                self.u8(*client);
                self.u16(*read);
            }
            Op::Drain {
                client,
                bytes,
                write,
            } => {
                self.variant(6, OPS);
                self.u8(*client);
                self.u16(*bytes);
                self.u8(*write);
            }
            Op::Forward { link, max } => {
                self.variant(7, OPS);
                self.u8(*link);
                self.u8(*max);
            }
            Op::Consume { link, max } => {
                self.variant(8, OPS);
                self.u8(*link);
                self.u8(*max);
            }
            Op::Eof { client } => {
                self.variant(9, OPS);
                self.u8(*client);
            }
            Op::Reset {
                client,
                writer_first,
            } => {
                self.variant(10, OPS);
                self.u8(*client);
                self.bool(*writer_first);
            }
            Op::Advance { ms, coarse } => {
                self.variant(11, OPS);
                self.u16(*ms);
                self.bool(*coarse);
            }
            Op::ToDeadline { shard, offset } => {
                self.variant(12, OPS);
                self.u8(*shard);
                self.u8(*offset as u8);
            }
            Op::Shutdown { shard, grace } => {
                self.variant(13, OPS);
                self.u8(*shard);
                self.u16(*grace);
            }
            Op::Hello { shard, hello, wire } => {
                self.variant(14, OPS);
                self.u8(*shard);
                self.hello_kind(*hello);
                self.wire(*wire);
            }
            Op::RelayV2 {
                client,
                receivers,
                body,
                id,
                receipt,
                wire,
            } => {
                self.variant(15, OPS);
                self.u8(*client);
                self.vec(receivers, |out, &target| out.target(target));
                self.body(body);
                match id {
                    MessageIdChoice::Next => self.variant(0, 3),
                    MessageIdChoice::None => self.variant(1, 3),
                    MessageIdChoice::Retry(back) => {
                        self.variant(2, 3);
                        self.u8(*back);
                    }
                }
                self.bool(*receipt);
                self.wire(*wire);
            }
            Op::Ack { client, upto, wire } => {
                self.variant(16, OPS);
                self.u8(*client);
                match upto {
                    AckUpto::Highest => self.variant(0, 3),
                    AckUpto::Behind(n) => {
                        self.variant(1, 3);
                        self.u8(*n);
                    }
                    AckUpto::Beyond(n) => {
                        self.variant(2, 3);
                        self.u8(*n);
                    }
                }
                self.wire(*wire);
            }
        }
    }
}

/// The bytes that decode to `input`.
///
/// # Panics
/// If they do not decode back to it (the format changed).
pub fn encode(input: &SessionInput) -> Vec<u8> {
    let mut out = Out::default();
    out.u8(input.shards);
    let preset = Preset::ALL
        .iter()
        .position(|&p| p == input.preset)
        .expect("listed");
    out.variant(preset as u32, Preset::ALL.len() as u32);
    out.vec(&input.ops, |out, op| out.op(op));
    out.u8(input.finish_first);
    let decoded = SessionInput::arbitrary_take_rest(Unstructured::new(&out.0))
        .expect("an encoded input decodes");
    assert_eq!(
        format!("{decoded:?}"),
        format!("{input:?}"),
        "the encoder no longer matches arbitrary's format"
    );
    out.0
}

// ----- the scenarios ------------------------------------------------------

const ALL: Wire = Wire { read: 0, hold: 0 };

fn wire(read: u16) -> Wire {
    Wire { read, hold: 0 }
}

fn connect(shard: u8) -> Op {
    Op::Connect { shard }
}

fn preface(client: u8) -> Op {
    Op::Preface { client, wire: ALL }
}

fn send(client: u8, request: Request) -> Op {
    Op::Request {
        client,
        request,
        wire: ALL,
    }
}

fn small(bytes: &[u8]) -> Body {
    Body {
        size: 0,
        bytes: bytes.to_vec(),
    }
}

fn generated(size: u8) -> Body {
    Body {
        size,
        bytes: vec![size],
    }
}

fn relay(to: &[u8], body: Body) -> Request {
    Request::Relay {
        receivers: to.iter().map(|&c| Target::Client(c)).collect(),
        body,
    }
}

fn drain(client: u8) -> Op {
    Op::Drain {
        client,
        bytes: 0,
        write: 0,
    }
}

fn mesh(links: u8) -> Vec<Op> {
    (0..links)
        .flat_map(|link| {
            [
                Op::Forward { link, max: 255 },
                Op::Consume { link, max: 255 },
            ]
        })
        .collect()
}

fn input(shards: u8, preset: Preset, ops: Vec<Op>) -> SessionInput {
    SessionInput {
        shards: shards - 1,
        preset,
        ops,
        finish_first: 0,
    }
}

/// Named scenarios, each aimed at one path.
pub fn scenarios() -> Vec<(&'static str, SessionInput)> {
    let mut out = Vec::new();

    // A sender relays 1 MiB bodies to another shard faster than the mesh
    // moves them: it pauses with its frame kept, and resumes as the
    // forwarder drains the outbox.
    let mut ops = vec![connect(0), connect(1), preface(0), preface(1)];
    for _ in 0..5 {
        ops.push(send(0, relay(&[1], generated(0xA5))));
    }
    ops.push(send(0, Request::Identity));
    for _ in 0..6 {
        ops.push(Op::Forward { link: 0, max: 0 });
        ops.push(Op::Consume { link: 0, max: 255 });
        ops.push(drain(1));
    }
    ops.push(drain(0));
    out.push(("backpressure-1mib", input(2, Preset::Tight, ops)));

    // The same with 256 KiB bodies, 3 shards, a list among them (a list
    // waits for every shard's outbox) and partial reads of the receiver.
    let mut ops = vec![connect(0), connect(1), connect(2)];
    ops.extend((0..3).map(preface));
    for round in 0..6u8 {
        ops.push(send(0, relay(&[1, 2], generated(0xA4))));
        if round == 3 {
            ops.push(send(
                0,
                Request::List {
                    after: Target::Id(0),
                    limit: 0,
                },
            ));
        }
    }
    ops.push(Op::Drain {
        client: 1,
        bytes: 900,
        write: 40,
    });
    ops.extend(mesh(6));
    ops.extend(mesh(6));
    ops.extend([drain(0), drain(1), drain(2)]);
    out.push((
        "backpressure-256k-three-shards",
        input(3, Preset::Small, ops),
    ));

    // A receiver that never reads: two relays naming it 255 times with a
    // 4 KiB body overflow its queue; the sender hears ReceiverDropped, then
    // UnknownReceiver.
    let body = small(&[7; 4096]);
    let repeated = |body: &Body| Request::RelayRepeated {
        receiver: Target::Client(1),
        count: 255,
        body: body.clone(),
    };
    let ops = vec![
        connect(0),
        connect(0),
        preface(0),
        preface(1),
        send(0, repeated(&body)),
        send(0, repeated(&body)),
        send(0, repeated(&body)),
        drain(0),
        drain(1),
    ];
    out.push(("slow-consumer", input(1, Preset::Tight, ops)));

    // The same across shards.
    let ops = vec![
        connect(0),
        connect(1),
        preface(0),
        preface(1),
        send(0, repeated(&body)),
        send(0, repeated(&body)),
        Op::Forward { link: 0, max: 255 },
        Op::Consume { link: 0, max: 255 },
        send(0, repeated(&body)),
        Op::Forward { link: 0, max: 255 },
        Op::Consume { link: 0, max: 255 },
        Op::Forward { link: 1, max: 255 },
        Op::Consume { link: 1, max: 255 },
        drain(0),
        drain(1),
    ];
    out.push(("slow-consumer-across-shards", input(2, Preset::Tight, ops)));

    // Timeouts: an idle client, a client with half a frame, a client that
    // never finishes its preface; time moves to each deadline, a little
    // before and a little after.
    let ops = vec![
        connect(0),
        connect(0),
        preface(0),
        preface(1),
        Op::Request {
            client: 1,
            request: Request::Echo {
                body: small(b"half of a frame"),
            },
            wire: Wire {
                read: 7,
                hold: 0x8000 | 9,
            },
        },
        Op::ToDeadline {
            shard: 0,
            offset: -1,
        },
        Op::ToDeadline {
            shard: 0,
            offset: 0,
        },
        drain(0),
        drain(1),
        Op::Advance {
            ms: 300,
            coarse: false,
        },
        send(0, Request::Identity),
        Op::ToDeadline {
            shard: 0,
            offset: 3,
        },
        drain(0),
    ];
    out.push(("timeouts-small", input(1, Preset::Small, ops)));

    // The defaults' 5-minute idle timeout, a preface that stops halfway,
    // and the flush deadline of a client that reads nothing.
    let ops = vec![
        connect(0),
        connect(0),
        Op::Preface {
            client: 1,
            wire: Wire {
                read: 3,
                hold: 0x8000 | 4,
            },
        },
        preface(0),
        send(0, Request::Identity),
        Op::Advance {
            ms: 2999,
            coarse: true,
        },
        Op::Advance {
            ms: 100,
            coarse: false,
        },
        Op::Advance {
            ms: 1,
            coarse: true,
        },
        Op::ToDeadline {
            shard: 0,
            offset: 0,
        },
        drain(1),
    ];
    out.push(("timeouts-defaults", input(1, Preset::Roomy, ops)));

    // Shutdown while deliveries and error reports cross three shards, the
    // shards told in a different order than the mesh moves.
    let mut ops = vec![connect(0), connect(1), connect(2)];
    ops.extend((0..3).map(preface));
    ops.push(send(0, relay(&[1, 2, 0], small(b"in flight"))));
    ops.push(send(
        1,
        Request::Relay {
            receivers: vec![Target::Id(3), Target::Id(5), Target::Client(2)],
            body: small(b"to gone users"),
        },
    ));
    ops.push(send(
        2,
        Request::List {
            after: Target::Id(0),
            limit: 2,
        },
    ));
    ops.push(Op::Shutdown {
        shard: 2,
        grace: 5000,
    });
    ops.push(Op::Forward { link: 0, max: 0 });
    ops.push(Op::Shutdown {
        shard: 0,
        grace: 5000,
    });
    ops.extend(mesh(6));
    ops.push(Op::Connect { shard: 0 });
    ops.push(Op::Shutdown {
        shard: 1,
        grace: 5000,
    });
    ops.extend(mesh(6));
    ops.extend(mesh(6));
    ops.extend([drain(0), drain(1), drain(2)]);
    out.push(("shutdown-three-shards", input(3, Preset::Tight, ops)));

    // A grace period that runs out before the other shard shuts down.
    let ops = vec![
        connect(0),
        connect(1),
        preface(0),
        preface(1),
        send(1, relay(&[0], small(b"late"))),
        Op::Shutdown {
            shard: 0,
            grace: 50,
        },
        Op::Advance {
            ms: 60,
            coarse: false,
        },
        drain(0),
        Op::Forward { link: 1, max: 255 },
        Op::Consume { link: 1, max: 255 },
        drain(1),
    ];
    out.push(("shutdown-grace-runs-out", input(2, Preset::Untimed, ops)));

    // Connections past the limit are refused with ServerFull; a slot freed
    // by a half-close is taken again.
    let ops = vec![
        connect(0),
        connect(0),
        connect(0),
        preface(0),
        Op::Eof { client: 1 },
        drain(1),
        connect(0),
        preface(2),
        send(2, Request::Identity),
        drain(2),
    ];
    out.push(("server-full", input(1, Preset::Small, ops)));

    // Five lists in flight across shards: the fifth waits until an answer
    // comes back (Pause::Lists).
    let mut ops = vec![connect(0), connect(1), preface(0), preface(1)];
    for limit in 1..=6 {
        ops.push(send(
            0,
            Request::List {
                after: Target::Id(0),
                limit,
            },
        ));
    }
    ops.extend(mesh(2));
    ops.extend(mesh(2));
    ops.push(drain(0));
    out.push(("lists-in-flight", input(2, Preset::Roomy, ops)));

    // Half-close with error reports still to come from the other shard,
    // then a reset with bytes queued both ways.
    let ops = vec![
        connect(0),
        connect(1),
        connect(1),
        preface(0),
        preface(1),
        preface(2),
        send(0, relay(&[1], small(b"hello"))),
        send(
            0,
            Request::Relay {
                receivers: vec![Target::Id(9), Target::Id(7)],
                body: small(b"nobody"),
            },
        ),
        Op::Eof { client: 0 },
        Op::Forward { link: 0, max: 255 },
        Op::Consume { link: 0, max: 255 },
        send(2, relay(&[1], generated(0xA3))),
        Op::Reset {
            client: 1,
            writer_first: true,
        },
        Op::Forward { link: 1, max: 255 },
        Op::Consume { link: 1, max: 255 },
        drain(0),
        drain(2),
    ];
    out.push(("half-close-and-reset", input(2, Preset::Tight, ops)));

    // HTTP, garbage and an echo of a maximal body, read in small pieces.
    let ops = vec![
        connect(0),
        connect(0),
        connect(0),
        Op::Http {
            client: 0,
            wire: wire(5),
        },
        Op::Raw {
            client: 1,
            bytes: b"RLYHUB\x01\x00\xff\xff\xff\xff\x04\x00\x00\x00".to_vec(),
            wire: wire(3),
        },
        preface(2),
        send(
            2,
            Request::Echo {
                body: generated(0xA5),
            },
        ),
        send(
            2,
            Request::Echo {
                body: generated(0xA6),
            },
        ),
        Op::Drain {
            client: 2,
            bytes: 2000,
            write: 200,
        },
        drain(0),
        drain(1),
        drain(2),
    ];
    out.push(("http-garbage-large-echo", input(1, Preset::Roomy, ops)));

    out.extend(v2_scenarios());
    out
}

fn hello(shard: u8, hello: HelloKind) -> Op {
    Op::Hello {
        shard,
        hello,
        wire: ALL,
    }
}

fn durable(shard: u8) -> Op {
    hello(shard, HelloKind::New { durable: true })
}

fn resume(shard: u8, session: u8, token: TokenChoice) -> Op {
    hello(shard, HelloKind::Resume { session, token })
}

fn relay_v2(client: u8, to: &[u8], id: MessageIdChoice, body: &[u8]) -> Op {
    Op::RelayV2 {
        client,
        receivers: to.iter().map(|&c| Target::Client(c)).collect(),
        body: small(body),
        id,
        receipt: false,
        wire: ALL,
    }
}

fn ack(client: u8, upto: AckUpto) -> Op {
    Op::Ack {
        client,
        upto,
        wire: ALL,
    }
}

/// Version-2 scenarios: durable sessions offline and back, takeovers,
/// tokens old and wrong, full inboxes and retries, acks out of range,
/// expiry, content dedup, unrecognised retries and mixed versions.
fn v2_scenarios() -> Vec<(&'static str, SessionInput)> {
    use MessageIdChoice::{Next, Retry};
    let mut out = Vec::new();

    // A durable receiver on shard 0 reads, acks, drops its connection;
    // messages wait in its inbox; it resumes on shard 1 (a hand-off) with
    // its latest token and gets them, redeliveries first.
    let mut ops = vec![
        durable(0),
        hello(1, HelloKind::New { durable: false }),
        drain(0),
        relay_v2(1, &[0], Next, b"one"),
        relay_v2(1, &[0], Next, b"two"),
    ];
    ops.extend(mesh(2));
    ops.extend([drain(0), drain(1), ack(0, AckUpto::Behind(1))]);
    ops.push(Op::Reset {
        client: 0,
        writer_first: false,
    });
    ops.extend([
        relay_v2(1, &[0, 0], Next, b"offline"),
        relay_v2(1, &[0], MessageIdChoice::None, b"no id"),
    ]);
    ops.extend(mesh(2));
    ops.push(resume(1, 0, TokenChoice::Latest));
    ops.extend(mesh(2));
    ops.extend(mesh(2));
    ops.extend([drain(2), ack(2, AckUpto::Highest), drain(1)]);
    out.push((
        "v2-offline-resume-hand-off",
        input(2, Preset::Tight, ops.clone()),
    ));
    // The same with the log on: the offline bodies are read back; and once
    // more with the hub killed at the end and restarted on its files.
    out.push((
        "v2-disk-crash-offline-resume-hand-off",
        input(2, Preset::DiskCrash, ops.clone()),
    ));
    out.push((
        "v2-disk-offline-resume-hand-off",
        input(2, Preset::Disk, ops),
    ));

    // The log on, one shard: a receiver goes offline with two small
    // messages waiting; another receiver takes 256 KiB bodies and acks
    // each, until the log compacts (copying the offline records forward);
    // the first resumes and reads its messages back from the new file.
    let mut ops = vec![
        durable(0),
        durable(0),
        durable(0),
        drain(0),
        drain(1),
        drain(2),
        relay_v2(2, &[0], Next, b"waits offline"),
        Op::Reset {
            client: 0,
            writer_first: false,
        },
        relay_v2(2, &[0], Next, b"stored offline"),
    ];
    for _ in 0..6 {
        ops.extend([
            Op::RelayV2 {
                client: 2,
                receivers: vec![Target::Client(1)],
                body: generated(0xA4),
                id: Next,
                receipt: false,
                wire: ALL,
            },
            drain(1),
            ack(1, AckUpto::Highest),
            drain(2),
        ]);
    }
    let churn = ops[ops.len() - 4..].to_vec();
    let mut flaky = ops.clone();
    let resume_and_drain = [
        resume(0, 0, TokenChoice::Latest),
        drain(3),
        ack(3, AckUpto::Highest),
    ];
    // Killed after the compaction, the receiver still offline: the
    // restart recovers the snapshot's generation, the drain resumes it.
    out.push((
        "v2-disk-crash-compaction-offline",
        input(1, Preset::DiskCrash, ops.clone()),
    ));
    ops.extend(resume_and_drain.iter().cloned());
    out.push(("v2-disk-compaction-offline", input(1, Preset::Disk, ops)));

    // The same on a disk that refuses every snapshot once: the current
    // file stays the log, and the compaction is retried 10 s later.
    flaky.push(Op::Advance {
        ms: 110,
        coarse: true,
    });
    for _ in 0..4 {
        flaky.extend(churn.iter().cloned());
    }
    flaky.extend(resume_and_drain);
    out.push((
        "v2-disk-flaky-compaction-offline",
        input(1, Preset::DiskFlaky, flaky),
    ));

    // A takeover: the session resumes while its connection is open; the
    // old one reads what was queued, then SessionTakenOver. Receipts go
    // to a durable sender, which acks them.
    let ops = vec![
        durable(0),
        durable(0),
        drain(0),
        drain(1),
        Op::RelayV2 {
            client: 1,
            receivers: vec![Target::Client(0)],
            body: small(b"with a receipt"),
            id: Next,
            receipt: true,
            wire: ALL,
        },
        relay_v2(1, &[0], Next, b"second"),
        resume(0, 0, TokenChoice::Latest),
        drain(0),
        drain(2),
        ack(2, AckUpto::Highest),
        drain(1),
        ack(1, AckUpto::Highest),
        drain(2),
    ];
    out.push(("v2-takeover-receipts", input(1, Preset::Roomy, ops)));

    // Tokens: the latest, the one before it (still valid), the oldest
    // (refused once a later resume presented the newer one) and a wrong
    // one, on every shard.
    let ops = vec![
        durable(0),
        drain(0),
        Op::Eof { client: 0 },
        resume(1, 0, TokenChoice::Latest),
        drain(1),
        Op::Eof { client: 1 },
        resume(2, 0, TokenChoice::Previous),
        drain(2),
        resume(0, 0, TokenChoice::Wrong),
        drain(3),
        resume(0, 0, TokenChoice::Latest),
        drain(4),
        resume(1, 0, TokenChoice::Oldest),
        Op::Forward { link: 0, max: 255 },
        Op::Consume { link: 0, max: 255 },
        drain(5),
        drain(2),
        drain(4),
    ];
    out.push(("v2-tokens", input(3, Preset::Roomy, ops)));

    // A full inbox (4 entries): InboxFull for the rest, not fatal; the
    // receiver acks, the sender retries the refused ones.
    let mut ops = vec![durable(0), durable(1)];
    for body in [b"m1", b"m2", b"m3", b"m4", b"m5", b"m6"] {
        ops.push(relay_v2(1, &[0], Next, body));
    }
    ops.extend(mesh(2));
    ops.extend([drain(1), drain(0), ack(0, AckUpto::Highest)]);
    ops.extend([
        relay_v2(1, &[0], Retry(0), b""),
        relay_v2(1, &[0], Retry(1), b""),
    ]);
    ops.extend(mesh(2));
    ops.extend([drain(1), drain(0)]);
    out.push(("v2-inbox-full-retry", input(2, Preset::Small, ops)));

    // Acks out of range: a durable session acks past what it read, an
    // ephemeral one acks anything; both are closed with AckOutOfRange and
    // the durable one resumes.
    let ops = vec![
        durable(0),
        hello(0, HelloKind::New { durable: false }),
        relay_v2(1, &[0], Next, b"to ack"),
        drain(0),
        ack(0, AckUpto::Beyond(3)),
        ack(1, AckUpto::Beyond(0)),
        drain(0),
        drain(1),
        resume(0, 0, TokenChoice::Latest),
        drain(2),
    ];
    out.push(("v2-ack-out-of-range", input(1, Preset::Tight, ops)));

    // Expiry (3 s in Small): an offline session expires; a relay to it
    // gets UnknownReceiver, a resume ResumeRejected.
    let ops = vec![
        durable(0),
        durable(0),
        drain(0),
        Op::Eof { client: 0 },
        Op::Advance {
            ms: 2000,
            coarse: false,
        },
        relay_v2(1, &[0], Next, b"before"),
        Op::Advance {
            ms: 2500,
            coarse: false,
        },
        relay_v2(1, &[0], Next, b"after"),
        drain(1),
        resume(0, 0, TokenChoice::Latest),
        drain(2),
    ];
    out.push(("v2-expiry", input(1, Preset::Small, ops)));

    // Content dedup (2 s in Tight): a retry within the window gets
    // DuplicateContent for the receiver that took the body.
    let ops = vec![
        durable(0),
        hello(0, HelloKind::New { durable: false }),
        relay_v2(1, &[0], Next, b"same body"),
        Op::Reset {
            client: 1,
            writer_first: true,
        },
        hello(0, HelloKind::New { durable: true }),
        relay_v2(2, &[0], Next, b"body"),
        relay_v2(2, &[0], Retry(0), b""),
        Op::Advance {
            ms: 2100,
            coarse: false,
        },
        relay_v2(2, &[0], Retry(0), b""),
        drain(2),
        drain(0),
    ];
    out.push(("v2-content-dedup", input(1, Preset::Tight, ops)));

    // Retry dedup off in inboxes (Untimed): a retry on a new connection of
    // the sender is stored again and dropped by (from, message_id); entry
    // lifetimes of 5 s.
    let mut ops = vec![
        durable(0),
        durable(1),
        drain(1),
        relay_v2(1, &[0], Next, b"retried"),
        Op::Reset {
            client: 1,
            writer_first: false,
        },
        resume(1, 1, TokenChoice::Latest),
        relay_v2(2, &[0], Retry(0), b""),
    ];
    ops.extend(mesh(2));
    ops.extend([drain(0), ack(0, AckUpto::Highest), drain(2)]);
    ops.push(relay_v2(2, &[0], Next, b"expires"));
    ops.extend(mesh(2));
    ops.push(Op::Advance {
        ms: 6000,
        coarse: false,
    });
    ops.extend([drain(0), drain(2)]);
    out.push(("v2-retry-unrecognised-ttl", input(2, Preset::Untimed, ops)));

    // Mixed versions: a version-1 client relays to a durable session
    // (stored, delivered as DeliverV2), a version-2 sender to a version-1
    // client (Deliver), a durable receiver offline meanwhile.
    let mut ops = vec![connect(0), preface(0), durable(1), drain(1)];
    ops.push(Op::Reset {
        client: 1,
        writer_first: false,
    });
    ops.push(send(0, relay(&[1, 1], small(b"from version 1"))));
    ops.push(durable(0));
    ops.push(relay_v2(2, &[0, 1], Next, b"to both"));
    ops.extend(mesh(2));
    ops.extend([drain(0), drain(2)]);
    out.push(("v2-mixed-versions", input(2, Preset::Roomy, ops)));

    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{take_tally, Harness};

    /// The log scenarios reach what they are for: bodies read back, a
    /// compaction that copies records forward, and a restart after a kill
    /// that delivers what was stored.
    #[test]
    fn the_disk_scenarios_read_back_and_compact() {
        for (name, input) in scenarios() {
            if !name.starts_with("v2-disk-") {
                continue;
            }
            take_tally();
            Harness::run(&input);
            let tally = take_tally();
            assert!(
                tally.get("log: bodies read back") > Some(&0),
                "{name}: {tally:?}"
            );
            if name.contains("compaction") {
                assert!(
                    tally.get("log: records copied") > Some(&0),
                    "{name}: {tally:?}"
                );
            }
            if name.contains("flaky") {
                assert!(
                    tally.get("log: compactions refused") > Some(&0),
                    "{name}: {tally:?}"
                );
            }
            if name.contains("crash") {
                for reached in [
                    "restarts: hub killed and recovered",
                    "restarts: records recovered",
                    "v2: drain: sessions resumed",
                    "v2: redeliveries read",
                    "v2: no loss: stored messages delivered",
                ] {
                    assert!(
                        tally.get(reached) > Some(&0),
                        "{name}: {reached}: {tally:?}"
                    );
                }
            }
        }
    }
}
