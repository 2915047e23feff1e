//! The hex dumps in docs/protocol.md (the specification of both versions)
//! are the encoder's bytes: each dump block there (after a
//! `<!-- dump: NAME -->` marker) must hold exactly the bytes of the example
//! of that name here, and every example here must be dumped there. Print
//! them all with
//! `RELAYHUB_PRINT_DUMPS=1 cargo test -p relayhub-protocol --test v2_layout -- --nocapture`.

use bytes::BytesMut;
use relayhub_protocol::*;

fn frame<M: Message>(message: &M) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(message, &mut out).unwrap();
    out.to_vec()
}

/// The limits of the `WelcomeV2` example: the hub's defaults
/// (docs/operations.md, server/src/config.rs).
fn example_limits() -> Limits {
    Limits {
        idle_timeout_ms: 300_000,
        frame_timeout_ms: 30_000,
        outbound_bytes_max: 64 << 20,
        inflight_messages_max: 256,
        inflight_bytes_max: 4 << 20,
        inbox_messages_max: 100_000,
        inbox_bytes_max: 64 << 20,
        session_expiry_ms: 604_800_000,
        message_ttl_ms: 604_800_000,
        dedup_window_ms: 120_000,
        content_dedup_window_ms: 0,
        ..Limits::with_protocol_bounds()
    }
}

fn examples() -> Vec<(&'static str, Vec<u8>)> {
    let token: ResumeToken = std::array::from_fn(|i| 0xa0 + i as u8);
    vec![
        // Version 1.
        ("preface_v1", PREFACE.to_vec()),
        ("identity", frame(&Identity { request: 1 })),
        (
            "relay",
            frame(&RelayRef {
                request: 3,
                receivers: &[2, 3],
                body: b"hi",
            }),
        ),
        (
            "relay_empty",
            frame(&RelayRef {
                request: 4,
                receivers: &[],
                body: b"",
            }),
        ),
        ("deliver", encode_deliver(1, b"hi").unwrap().to_vec()),
        ("welcome", frame(&Welcome::with_protocol_limits(1))),
        (
            "list",
            frame(&List {
                request: 2,
                after: 0,
                limit: 100,
            }),
        ),
        (
            "list_reply",
            frame(&ListReply {
                request: 2,
                users: vec![2, 3],
                more: false,
            }),
        ),
        (
            "error_unknown_receiver",
            frame(&Error::new(ErrorCode::UnknownReceiver, 3, 3)),
        ),
        // Version 2.
        ("preface_v2", preface_for(VERSION_2).to_vec()),
        ("hello_new", frame(&Hello::new_session(1, true))),
        (
            "hello_resume",
            frame(&Hello::resume(1, 5, std::array::from_fn(|i| i as u8))),
        ),
        (
            "relay_v2",
            frame(&RelayV2Ref {
                request: 3,
                message_id: 7,
                flags: flags::RECEIPT,
                receivers: &[2, 3],
                body: b"hi",
            }),
        ),
        ("ack", frame(&Ack { upto: 9 })),
        (
            "welcome_v2",
            frame(&WelcomeV2 {
                request: 1,
                user: 5,
                token,
                limits: example_limits(),
                resumed: true,
                durable: true,
            }),
        ),
        (
            "deliver_v2",
            frame(&DeliverV2Ref {
                from: 5,
                seq: 9,
                message_id: 7,
                flags: flags::REDELIVERY,
                body: b"hi",
            }),
        ),
        (
            "stored",
            frame(&Stored {
                request: 3,
                message_id: 7,
                duplicate: false,
            }),
        ),
        (
            "receipt",
            frame(&Receipt {
                message_id: 7,
                receiver: 2,
                seq: 4,
                flags: 0,
            }),
        ),
        (
            "error_inbox_full",
            frame(&Error::new_v2(ErrorCodeV2::InboxFull, 3, 3)),
        ),
    ]
}

/// `0000: xx xx xx xx xx xx xx xx` lines, 8 bytes each.
fn dump(bytes: &[u8]) -> String {
    bytes
        .chunks(8)
        .enumerate()
        .map(|(line, chunk)| {
            let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
            format!("{:04x}: {}\n", line * 8, hex.join(" "))
        })
        .collect()
}

/// The bytes of each dump block in the doc, by marker name.
fn dumps_in_doc(doc: &str) -> Vec<(String, Vec<u8>)> {
    let mut found = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- dump: ")
            .and_then(|rest| rest.strip_suffix(" -->"))
        else {
            continue;
        };
        let mut bytes = Vec::new();
        let mut inside = false;
        for line in lines.by_ref() {
            if line.trim_start().starts_with("```") {
                if inside {
                    break;
                }
                inside = true;
                continue;
            }
            if !inside {
                continue;
            }
            // "0008: 01 00 00 00 00 00 00 00   annotation": the offset, then
            // up to 8 two-digit hex bytes; the rest is commentary.
            let (offset, rest) = line.trim_start().split_once(": ").expect("a dump line");
            assert_eq!(
                usize::from_str_radix(offset, 16).expect("a hex offset"),
                bytes.len(),
                "{name}: offsets run on"
            );
            for token in rest.split(' ').take(8) {
                if token.len() != 2 {
                    break;
                }
                bytes.push(u8::from_str_radix(token, 16).expect("a hex byte"));
            }
        }
        found.push((name.to_string(), bytes));
    }
    found
}

#[test]
fn the_hex_dumps_in_the_spec_are_the_encoders_bytes() {
    let examples = examples();
    if std::env::var_os("RELAYHUB_PRINT_DUMPS").is_some() {
        for (name, bytes) in &examples {
            println!("<!-- dump: {name} -->\n{}", dump(bytes));
        }
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    let doc = std::fs::read_to_string(path).expect("docs/protocol.md");
    let in_doc = dumps_in_doc(&doc);
    for (name, bytes) in &examples {
        let Some((_, documented)) = in_doc.iter().find(|(doc_name, _)| doc_name == name) else {
            panic!("docs/protocol.md has no dump of {name}:\n{}", dump(bytes))
        };
        assert_eq!(
            dump(documented),
            dump(bytes),
            "the dump of {name} in docs/protocol.md is wrong"
        );
    }
    for (name, _) in &in_doc {
        assert!(
            examples.iter().any(|(example, _)| example == name),
            "docs/protocol.md dumps {name}, which no example here builds"
        );
    }
}
