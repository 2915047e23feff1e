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

use crate::hub::{Body, Op, Preset, Request, SessionInput, Target, Wire};

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

    fn op(&mut self, op: &Op) {
        const OPS: u32 = 14;
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

    out
}
