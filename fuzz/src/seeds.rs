//! The seed corpus: valid frames of every kind, the edges of every limit,
//! and the hostile openings of docs/protocol.md, in each target's input
//! format. `src/bin/seed.rs` writes them; `fuzz/run.sh` calls it.

use std::{collections::BTreeSet, fs, io, path::Path};

use arbitrary::{Arbitrary, Unstructured};
use bytes::BytesMut;
use relayhub_protocol::{
    encode, kind, preface_for, ClientMessage, Deliver, Echo, EchoReply, Error, ErrorCode,
    HubMessage, Identity, IdentityReply, List, ListReply, Message, Relay, RelayRef, Welcome,
    BODY_BYTES_MAX, FRAME_BYTES_MAX, LIST_PAGE_USERS_MAX, PREFACE, RECEIVERS_MAX,
};

use crate::{
    hub::{take_tally, Harness, SessionInput},
    mirror::RoundtripInput,
    side::{encode_client, encode_hub},
    stream::StreamInput,
};

/// One corpus file.
#[derive(Clone, Debug)]
pub struct Seed {
    /// File name (descriptive; libFuzzer does not care).
    pub name: String,
    /// File contents, in the target's input format.
    pub bytes: Vec<u8>,
}

/// Writes `seeds` into `dir`, creating it; returns the bytes written.
pub fn write(dir: &Path, seeds: &[Seed]) -> io::Result<usize> {
    fs::create_dir_all(dir)?;
    let mut total = 0;
    for seed in seeds {
        fs::write(dir.join(&seed.name), &seed.bytes)?;
        total += seed.bytes.len();
    }
    Ok(total)
}

/// A frame header with any length, kind and flags.
pub fn header(len: u32, kind: u16, flags: u16) -> [u8; 8] {
    let mut header = [0; 8];
    header[..4].copy_from_slice(&len.to_le_bytes());
    header[4..6].copy_from_slice(&kind.to_le_bytes());
    header[6..].copy_from_slice(&flags.to_le_bytes());
    header
}

fn frame<M: Message>(message: &M) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(message, &mut out).expect("seed frames fit");
    out.to_vec()
}

fn preface_and(frames: &[&[u8]]) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    for frame in frames {
        out.extend_from_slice(frame);
    }
    out
}

fn relay(request: u64, receivers: usize, body_len: usize) -> Vec<u8> {
    let receivers: Vec<u64> = (1..=receivers as u64).collect();
    let body: Vec<u8> = (0..body_len).map(|i| i as u8).collect();
    frame(&RelayRef {
        request,
        receivers: &receivers,
        body: &body,
    })
}

fn every_client_message() -> Vec<(&'static str, ClientMessage)> {
    vec![
        (
            "echo",
            ClientMessage::Echo(Echo {
                request: 1,
                body: b"ping".to_vec(),
            }),
        ),
        (
            "echo-empty",
            ClientMessage::Echo(Echo {
                request: 2,
                body: Vec::new(),
            }),
        ),
        ("identity", ClientMessage::Identity(Identity { request: 3 })),
        (
            "list-first-page",
            ClientMessage::List(List {
                request: 4,
                after: 0,
                limit: 0,
            }),
        ),
        (
            "list-after",
            ClientMessage::List(List {
                request: 5,
                after: 77,
                limit: LIST_PAGE_USERS_MAX as u32,
            }),
        ),
        (
            "relay",
            ClientMessage::Relay(Relay {
                request: 6,
                receivers: vec![2, 3],
                body: b"hi".to_vec(),
            }),
        ),
    ]
}

fn every_hub_message() -> Vec<(&'static str, HubMessage)> {
    vec![
        (
            "welcome",
            HubMessage::Welcome(Welcome::with_protocol_limits(7)),
        ),
        (
            "echo-reply",
            HubMessage::EchoReply(EchoReply {
                request: 1,
                body: b"ping".to_vec(),
            }),
        ),
        (
            "identity-reply",
            HubMessage::IdentityReply(IdentityReply {
                request: 3,
                user: 7,
            }),
        ),
        (
            "list-reply",
            HubMessage::ListReply(ListReply {
                request: 4,
                users: vec![1, 2, 9],
                more: false,
            }),
        ),
        (
            "list-reply-full-page",
            HubMessage::ListReply(ListReply {
                request: 5,
                users: (1..=LIST_PAGE_USERS_MAX as u64).collect(),
                more: true,
            }),
        ),
        (
            "deliver",
            HubMessage::Deliver(Deliver {
                from: 7,
                body: b"hello".to_vec(),
            }),
        ),
        (
            "error-unknown-receiver",
            HubMessage::Error(Error::new(ErrorCode::UnknownReceiver, 6, 99)),
        ),
    ]
}

/// Raw streams (preface included where a peer would send one), by name.
fn streams(large: bool) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut all_client = PREFACE.to_vec();
    for (name, message) in every_client_message() {
        let mut wire = BytesMut::new();
        encode_client(&message, &mut wire);
        out.push((format!("client-{name}"), preface_and(&[&wire])));
        all_client.extend_from_slice(&wire);
    }
    out.push(("client-every-kind".into(), all_client));
    let mut all_hub = PREFACE.to_vec();
    for (name, message) in every_hub_message() {
        let mut wire = BytesMut::new();
        encode_hub(&message, &mut wire);
        out.push((format!("hub-{name}"), preface_and(&[&wire])));
        all_hub.extend_from_slice(&wire);
    }
    out.push(("hub-every-kind".into(), all_hub));

    let identity = frame(&Identity { request: 100 });
    for receivers in [0, 1, RECEIVERS_MAX, RECEIVERS_MAX + 1] {
        let name = format!("relay-{receivers}-receivers-then-identity");
        out.push((name, preface_and(&[&relay(10, receivers, 3), &identity])));
    }
    out.push(("relay-empty-body".into(), preface_and(&[&relay(11, 1, 0)])));
    let over_page = frame(&ListReply {
        request: 12,
        users: (0..=LIST_PAGE_USERS_MAX as u64).collect(),
        more: false,
    });
    out.push((
        "hub-list-reply-over-page".into(),
        preface_and(&[&over_page]),
    ));

    out.extend(hostile_openings());
    out.extend(bad_headers(&identity));
    out.extend(truncated_and_malformed());
    if large {
        out.extend(large_bodies(&identity));
    }
    out
}

fn hostile_openings() -> Vec<(String, Vec<u8>)> {
    let named = |name: &str, bytes: &[u8]| (name.to_string(), bytes.to_vec());
    vec![
        named("http-get", b"GET / HTTP/1.1\r\nHost: relayhub\r\n\r\n"),
        named(
            "http-post",
            b"POST /relay HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        ),
        named("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        named("ssh", b"SSH-2.0-OpenSSH_9.6\r\n"),
        named(
            "garbage",
            &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03],
        ),
        named("zeros", &[0; 32]),
        named("preface-only", &PREFACE),
        named("preface-partial", &PREFACE[..5]),
        named("magic-typo", b"RLYHUC\x01\x00"),
        ("version-0".into(), preface_for(0).to_vec()),
        ("version-2".into(), preface_for(2).to_vec()),
        ("version-max".into(), preface_for(u16::MAX).to_vec()),
    ]
}

fn bad_headers(identity: &[u8]) -> Vec<(String, Vec<u8>)> {
    let body = [0u8; 16];
    let with = |name: &str, header: [u8; 8]| (name.to_string(), preface_and(&[&header, &body]));
    vec![
        with("length-ffffffff", header(u32::MAX, kind::RELAY, 0)),
        with(
            "length-over-limit",
            header(FRAME_BYTES_MAX as u32 + 8, kind::ECHO, 0),
        ),
        with(
            "length-at-limit-truncated",
            header(FRAME_BYTES_MAX as u32, kind::ECHO, 0),
        ),
        with("length-misaligned", header(12, kind::IDENTITY, 0)),
        with("length-zero", header(0, kind::IDENTITY, 0)),
        with("flags-set", header(16, kind::IDENTITY, 1)),
        with("kind-unknown", header(16, 77, 0)),
        with(
            "kind-hub-to-client-sent-to-hub",
            header(16, kind::DELIVER, 0),
        ),
        with(
            "kind-client-to-hub-sent-to-client",
            header(16, kind::RELAY, 0),
        ),
        (
            "valid-then-length-ffffffff".into(),
            preface_and(&[identity, &header(u32::MAX, kind::ECHO, 0)]),
        ),
    ]
}

fn truncated_and_malformed() -> Vec<(String, Vec<u8>)> {
    let relay = relay(20, 3, 11);
    let mut out = vec![
        (
            "truncated-in-header".to_string(),
            preface_and(&[&relay[..5]]),
        ),
        (
            "truncated-after-header".to_string(),
            preface_and(&[&relay[..8]]),
        ),
        (
            "truncated-in-archive".to_string(),
            preface_and(&[&relay[..relay.len() / 2]]),
        ),
        (
            "truncated-last-byte".to_string(),
            preface_and(&[&relay[..relay.len() - 1]]),
        ),
    ];
    // A relay whose body vector points far outside the archive.
    let mut outside = self::relay(21, 0, 0);
    let len = outside.len();
    outside[len - 8..len - 4].copy_from_slice(&(-4096i32).to_le_bytes());
    outside[len - 4..].copy_from_slice(&1000u32.to_le_bytes());
    out.push((
        "malformed-relay-vector-outside".into(),
        preface_and(&[&outside]),
    ));
    // A list reply whose `more` is neither 0 nor 1.
    let mut bad_bool = frame(&ListReply {
        request: 22,
        users: Vec::new(),
        more: true,
    });
    let more = bad_bool.len() - 8;
    bad_bool[more] = 2;
    out.push((
        "malformed-list-reply-bool".into(),
        preface_and(&[&bad_bool]),
    ));
    out
}

fn large_bodies(identity: &[u8]) -> Vec<(String, Vec<u8>)> {
    let max = BODY_BYTES_MAX;
    let max_echo = frame(&Echo {
        request: 30,
        body: vec![0xab; max],
    });
    let deliver = frame(&Deliver {
        from: 31,
        body: vec![0xcd; max],
    });
    vec![
        (
            "large-echo-1mib".into(),
            preface_and(&[&max_echo, identity]),
        ),
        (
            "large-relay-255-receivers-1mib".into(),
            preface_and(&[&relay(32, 255, max), identity]),
        ),
        (
            "large-relay-1mib-plus-1".into(),
            preface_and(&[&relay(33, 1, max + 1), identity]),
        ),
        (
            "large-deliver-1mib".into(),
            preface_and(&[&deliver, identity]),
        ),
    ]
}

/// Chunk-size variants each stream is written with.
const CHUNK_VARIANTS: [(&str, &[u16]); 4] = [
    ("read", &[]),
    ("bytewise", &[0]),
    ("odd", &[2, 6, 250]),
    ("straddle", &[16383, 0, 4094]),
];

/// Seeds of `decode_stream`; `large` adds the 1 MiB bodies (CI generates
/// those instead of committing them).
pub fn decode_stream_seeds(large: bool) -> Vec<Seed> {
    let mut seeds = Vec::new();
    for (index, (name, stream)) in streams(large).into_iter().enumerate() {
        // Every stream with the read-sized default and a rotating second
        // split; 1 MiB streams with a split that straddles frame ends
        // (bytewise would take seconds per execution).
        let second = if name.starts_with("large-") {
            3
        } else {
            1 + index % 3
        };
        for (variant, chunks) in [CHUNK_VARIANTS[0], CHUNK_VARIANTS[second]] {
            seeds.push(Seed {
                name: format!("{name}.{variant}"),
                bytes: StreamInput::to_bytes(false, chunks, &stream),
            });
        }
    }
    seeds
}

/// What a roundtrip input exercises, for picking seeds that cover it all.
fn roundtrip_features(input: &RoundtripInput) -> BTreeSet<String> {
    let (client, hub) = input.messages();
    let mut features = BTreeSet::new();
    for message in &client {
        let (name, edge) = match message {
            ClientMessage::Echo(m) => ("echo", m.body.len() == BODY_BYTES_MAX),
            ClientMessage::Identity(_) => ("identity", false),
            ClientMessage::List(_) => ("list", false),
            ClientMessage::Relay(m) => (
                "relay",
                m.receivers.len() == RECEIVERS_MAX || m.body.len() == BODY_BYTES_MAX,
            ),
        };
        features.insert(format!("client-{name}{}", if edge { "-edge" } else { "" }));
    }
    for message in &hub {
        let (name, edge) = match message {
            HubMessage::Welcome(_) => ("welcome", false),
            HubMessage::EchoReply(m) => ("echo-reply", m.body.len() == BODY_BYTES_MAX),
            HubMessage::IdentityReply(_) => ("identity-reply", false),
            HubMessage::ListReply(m) => ("list-reply", m.users.len() == LIST_PAGE_USERS_MAX),
            HubMessage::Deliver(m) => ("deliver", m.body.len() == BODY_BYTES_MAX),
            HubMessage::Error(_) => ("error", false),
        };
        features.insert(format!("hub-{name}{}", if edge { "-edge" } else { "" }));
    }
    if input.chunk_sizes().len() > 1 {
        features.insert("split".into());
    }
    features
}

/// Seeds of `roundtrip`. Its input is `Arbitrary` data, which has no
/// encoder, so the seeds are found by search: deterministic pseudo-random
/// candidates, each kept when it covers a message kind (or a limit edge:
/// 255 receivers, 4096 users, a 1 MiB body) that no earlier seed covers.
pub fn roundtrip_seeds() -> Vec<Seed> {
    let mut seen = BTreeSet::new();
    let mut seeds = vec![Seed {
        name: "empty".into(),
        bytes: Vec::new(),
    }];
    let mut state = 0x5eed_0f4e_1a7b_0b00_u64;
    for candidate in 0..200_000u32 {
        let len = [24, 64, 200, 600, 2000][candidate as usize % 5];
        let bytes: Vec<u8> = (0..len).map(|_| splitmix64(&mut state) as u8).collect();
        let Ok(input) = RoundtripInput::arbitrary_take_rest(Unstructured::new(&bytes)) else {
            continue;
        };
        let new: Vec<String> = roundtrip_features(&input)
            .difference(&seen)
            .cloned()
            .collect();
        if new.is_empty() {
            continue;
        }
        seeds.push(Seed {
            name: format!("covers-{}", new.join("+")),
            bytes,
        });
        seen.extend(new);
    }
    seeds
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Seeds of `hub_session`: the hand-written scenarios of
/// [`scenarios`](crate::scenarios), then inputs found by search like
/// [`roundtrip_seeds`]: a candidate is kept when running it reaches a check
/// (see `hub::take_tally`) or an operation no earlier seed reached. Some
/// candidates get an HTTP request or a preface spliced in, which random
/// bytes would hardly ever spell.
pub fn hub_session_seeds() -> Vec<Seed> {
    const SPLICES: [&[u8]; 3] = [b"GET / HTTP/1.1\r\n\r\n", &PREFACE, b"RLYHUB\x02\x00"];
    let mut seen = BTreeSet::new();
    let mut seeds = Vec::new();
    take_tally();
    for (name, input) in crate::scenarios::scenarios() {
        let bytes = crate::scenarios::encode(&input);
        Harness::run(&input);
        seen.extend(take_tally().into_keys().map(str::to_string));
        seeds.push(Seed {
            name: format!("scenario-{name}"),
            bytes,
        });
    }
    let mut state = 0x4b1d_5e55_1017_0000_u64;
    for candidate in 0..40_000u32 {
        let len = [48, 160, 400, 1200][candidate as usize % 4];
        let mut bytes: Vec<u8> = (0..len).map(|_| splitmix64(&mut state) as u8).collect();
        if candidate % 3 == 0 {
            let splice = SPLICES[(candidate as usize / 3) % SPLICES.len()];
            let at = splitmix64(&mut state) as usize % (len - splice.len());
            bytes[at..at + splice.len()].copy_from_slice(splice);
        }
        let Ok(input) = SessionInput::arbitrary_take_rest(Unstructured::new(&bytes)) else {
            continue;
        };
        let ran = std::panic::catch_unwind(|| Harness::run(&input));
        let mut features: BTreeSet<String> = take_tally().into_keys().map(str::to_string).collect();
        if ran.is_err() {
            eprintln!(
                "hub_session: seed candidate {candidate} fails a check; fuzzing will find it"
            );
            continue;
        }
        for op in &input.ops {
            let name = format!("{op:?}");
            features.insert(format!(
                "op {}",
                name.split([' ', '{']).next().unwrap_or("")
            ));
        }
        let new: Vec<String> = features.difference(&seen).cloned().collect();
        if new.is_empty() {
            continue;
        }
        seeds.push(Seed {
            name: format!("seed-{:03}", seeds.len()),
            bytes,
        });
        seen.extend(new);
    }
    seeds
}
