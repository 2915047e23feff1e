//! What a peer cannot do to a decoder: over-limit frames, giant length
//! prefixes, truncation, garbage, and stream splits that change the result.

mod common;

use bytes::BytesMut;
use common::*;
use proptest::prelude::*;
use relayhub_protocol::*;

fn header(len: u32, kind: u16, flags: u16) -> [u8; 8] {
    let mut header = [0; 8];
    header[..4].copy_from_slice(&len.to_le_bytes());
    header[4..6].copy_from_slice(&kind.to_le_bytes());
    header[6..].copy_from_slice(&flags.to_le_bytes());
    header
}

fn with_preface(frames: &[u8]) -> Vec<u8> {
    [&PREFACE[..], frames].concat()
}

#[test]
fn too_many_receivers_is_refused_and_the_stream_goes_on() {
    let mut wire = BytesMut::new();
    let receivers: Vec<u64> = (1..=RECEIVERS_MAX as u64 + 1).collect();
    encode(
        &RelayRef {
            request: 7,
            receivers: &receivers,
            body: b"x",
        },
        &mut wire,
    )
    .unwrap();
    encode(&Identity { request: 8 }, &mut wire).unwrap();
    let results = decode_in_chunks(&with_preface(&wire), &[usize::MAX]);
    assert_eq!(
        results,
        vec![
            Err(DecodeError::LimitExceeded {
                request: 7,
                limit: Limit::Receivers,
                value: 256
            }),
            Ok(ClientMessage::Identity(Identity { request: 8 })),
        ]
    );
    assert_eq!(
        results[0].as_ref().unwrap_err().code(),
        ErrorCode::TooManyReceivers
    );
}

#[test]
fn body_over_one_mebibyte_is_refused_and_the_stream_goes_on() {
    let mut wire = BytesMut::new();
    let body = vec![1u8; BODY_BYTES_MAX + 1];
    encode(
        &RelayRef {
            request: 9,
            receivers: &[2],
            body: &body,
        },
        &mut wire,
    )
    .unwrap();
    encode(
        &EchoRef {
            request: 10,
            body: &body,
        },
        &mut wire,
    )
    .unwrap();
    encode(&Identity { request: 11 }, &mut wire).unwrap();
    let results = decode_in_chunks(&with_preface(&wire), &[65536]);
    let over = (BODY_BYTES_MAX + 1) as u64;
    assert_eq!(
        results,
        vec![
            Err(DecodeError::LimitExceeded {
                request: 9,
                limit: Limit::BodyBytes,
                value: over
            }),
            Err(DecodeError::LimitExceeded {
                request: 10,
                limit: Limit::BodyBytes,
                value: over
            }),
            Ok(ClientMessage::Identity(Identity { request: 11 })),
        ]
    );
}

#[test]
fn four_gib_length_prefix_is_refused_without_allocating() {
    let mut decoder = Decoder::<HubSide>::new();
    decoder.handle_bytes(&with_preface(&header(u32::MAX, kind::RELAY, 0)));
    let error = decoder.poll_frame().unwrap_err();
    assert_eq!(error, DecodeError::FrameTooLarge { len: u32::MAX });
    assert!(error.is_fatal());
    assert_eq!(error.code(), ErrorCode::FrameTooLarge);
    assert!(
        decoder.capacity() <= READ_CHUNK_BYTES,
        "buffer grew to {}",
        decoder.capacity()
    );
    // The stream is no longer trusted: the same error, whatever follows.
    decoder.handle_bytes(&[0; 64]);
    assert_eq!(decoder.poll_frame().unwrap_err(), error);
    // The one-shot path refuses it the same way.
    assert_eq!(
        FrameHeader::check(&header(FRAME_BYTES_MAX as u32 + 8, kind::ECHO, 0)),
        Err(DecodeError::FrameTooLarge {
            len: FRAME_BYTES_MAX as u32 + 8
        })
    );
}

#[test]
fn truncated_frames_are_incomplete_at_every_cut() {
    let mut wire = BytesMut::new();
    encode(
        &RelayRef {
            request: 1,
            receivers: &[1, 2, 3],
            body: b"truncate me",
        },
        &mut wire,
    )
    .unwrap();
    for cut in 0..wire.len() {
        let mut decoder = Decoder::<HubSide>::after_preface();
        decoder.handle_bytes(&wire[..cut]);
        assert!(decoder.poll_frame().unwrap().is_none(), "cut at {cut}");
        assert!(matches!(
            decode_frame::<HubSide>(&aligned(&wire[..cut])),
            Err(DecodeError::Incomplete { .. })
        ));
    }
}

fn aligned(bytes: &[u8]) -> rkyv::util::AlignedVec<16> {
    let mut out = rkyv::util::AlignedVec::<16>::new();
    out.extend_from_slice(bytes);
    out
}

#[test]
fn garbage_preface_is_refused_at_once() {
    for garbage in [
        &b"\x00\x01\x02"[..],
        b"hello world\n",
        b"RLYHU\x00",
        b"SSH-2.0-OpenSSH_9.2\r\n",
    ] {
        let mut decoder = Decoder::<HubSide>::new();
        decoder.handle_bytes(garbage);
        assert_eq!(
            decoder.poll_frame().unwrap_err(),
            DecodeError::BadPreface {
                looks_like_http: false
            },
            "{garbage:?}"
        );
    }
    let mut decoder = Decoder::<HubSide>::new();
    decoder.handle_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let error = decoder.poll_frame().unwrap_err();
    assert_eq!(
        error,
        DecodeError::BadPreface {
            looks_like_http: true
        }
    );
    assert_eq!(error.code(), ErrorCode::BadPreface);
}

#[test]
fn old_or_future_versions_are_refused() {
    let mut decoder = Decoder::<ClientSide>::new();
    decoder.handle_bytes(&preface_for(VERSION + 1));
    assert_eq!(
        decoder.poll_frame().unwrap_err(),
        DecodeError::UnsupportedVersion {
            version: VERSION + 1
        }
    );
}

#[test]
fn bad_headers_are_fatal() {
    let cases = [
        (
            header(12, kind::IDENTITY, 0),
            DecodeError::Malformed {
                kind: kind::IDENTITY,
                reason: Malformed::Misaligned,
            },
        ),
        (
            header(16, kind::IDENTITY, 1),
            DecodeError::Malformed {
                kind: kind::IDENTITY,
                reason: Malformed::Flags,
            },
        ),
        (header(16, 77, 0), DecodeError::UnknownKind { kind: 77 }),
        // A hub-to-client kind sent by a client.
        (
            header(16, kind::DELIVER, 0),
            DecodeError::UnknownKind {
                kind: kind::DELIVER,
            },
        ),
    ];
    for (header, expected) in cases {
        let mut wire = with_preface(&header);
        wire.extend_from_slice(&[0; 16]);
        let results = decode_in_chunks(&wire, &[3]);
        assert_eq!(results, vec![Err(expected)]);
        assert!(expected.is_fatal());
    }
}

#[test]
fn unknown_kind_is_refused_from_its_header_alone() {
    let mut decoder = Decoder::<HubSide>::after_preface();
    decoder.handle_bytes(&header(FRAME_BYTES_MAX as u32, 99, 0));
    assert_eq!(
        decoder.poll_frame().unwrap_err(),
        DecodeError::UnknownKind { kind: 99 }
    );
    assert!(
        decoder.capacity() <= READ_CHUNK_BYTES,
        "nothing buffered for it"
    );
}

#[test]
fn archive_that_fails_validation_is_malformed() {
    // A relay whose body vector points far outside the archive.
    let mut wire = BytesMut::new();
    encode(
        &RelayRef {
            request: 1,
            receivers: &[],
            body: b"",
        },
        &mut wire,
    )
    .unwrap();
    let len = wire.len();
    // Root layout: request (8), receivers vec (offset i32, len u32), body vec.
    wire[len - 8..len - 4].copy_from_slice(&(-4096i32).to_le_bytes());
    wire[len - 4..].copy_from_slice(&1000u32.to_le_bytes());
    let results = decode_in_chunks(&with_preface(&wire), &[usize::MAX]);
    assert_eq!(
        results,
        vec![Err(DecodeError::Malformed {
            kind: kind::RELAY,
            reason: Malformed::Archive
        })]
    );

    // A bool that is neither 0 nor 1.
    let mut wire = BytesMut::new();
    encode(
        &ListReplyRef {
            request: 1,
            users: &[],
            more: true,
        },
        &mut wire,
    )
    .unwrap();
    let more = wire.len() - 8;
    wire[more] = 2;
    let mut decoder = Decoder::<ClientSide>::after_preface();
    decoder.handle_bytes(&wire);
    assert!(matches!(
        decoder.poll_frame(),
        Err(DecodeError::Malformed {
            reason: Malformed::Archive,
            ..
        })
    ));
}

#[test]
fn idle_decoder_holds_no_buffer() {
    let mut decoder = Decoder::<HubSide>::new();
    assert_eq!(decoder.capacity(), 0, "nothing before the first byte");
    let mut wire = with_preface(&[]);
    let mut frames = BytesMut::new();
    encode(
        &EchoRef {
            request: 1,
            body: &[5; 100_000],
        },
        &mut frames,
    )
    .unwrap();
    wire.extend_from_slice(&frames);
    decoder.handle_bytes(&wire);
    assert!(matches!(
        decoder.poll_frame(),
        Ok(Some(ClientFrame::Echo(_)))
    ));
    assert!(decoder.capacity() >= 100_000);
    decoder.release_idle();
    assert_eq!(decoder.capacity(), 0);
    assert!(
        decoder.preface_done(),
        "releasing the buffer keeps the stage"
    );
}

#[test]
fn reading_through_spare_and_commit_matches_handle_bytes() {
    let mut wire = BytesMut::new();
    wire.extend_from_slice(&PREFACE);
    for request in 0..200u64 {
        encode(
            &RelayRef {
                request,
                receivers: &[request],
                body: &vec![request as u8; request as usize * 97],
            },
            &mut wire,
        )
        .unwrap();
    }
    let mut decoder = Decoder::<HubSide>::new();
    let mut offset = 0;
    let mut seen = 0u64;
    while offset < wire.len() {
        let spare = decoder.spare();
        let take = spare.len().min(wire.len() - offset).min(1000);
        spare[..take].copy_from_slice(&wire[offset..offset + take]);
        decoder.commit(take);
        offset += take;
        while let Some(frame) = decoder.poll_frame().unwrap() {
            let ClientFrame::Relay(relay) = frame else {
                panic!("not a relay")
            };
            assert_eq!(relay.request, seen);
            assert_eq!(relay.body.len(), seen as usize * 97);
            seen += 1;
        }
        assert!(decoder.capacity() <= DECODER_BYTES_MAX);
    }
    assert_eq!(seen, 200);
}

proptest! {
    #[test]
    fn any_split_gives_the_same_frames(
        messages in proptest::collection::vec(client_message(), 0..12),
        chunks in proptest::collection::vec(1usize..700, 1..16),
    ) {
        let mut frames = BytesMut::new();
        for message in &messages {
            encode_client(message, &mut frames);
        }
        let wire = with_preface(&frames);
        let expected: Vec<_> = messages.into_iter().map(Ok).collect();
        prop_assert_eq!(&decode_in_chunks(&wire, &[usize::MAX]), &expected);
        prop_assert_eq!(&decode_in_chunks(&wire, &[1]), &expected);
        prop_assert_eq!(&decode_in_chunks(&wire, &chunks), &expected);
    }

    #[test]
    fn random_bytes_never_panic_and_splits_agree(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        chunks in proptest::collection::vec(1usize..64, 1..8),
        preface in any::<bool>(),
    ) {
        let wire = if preface { with_preface(&bytes) } else { bytes };
        let whole = decode_in_chunks(&wire, &[usize::MAX]);
        prop_assert_eq!(&decode_in_chunks(&wire, &[1]), &whole);
        prop_assert_eq!(&decode_in_chunks(&wire, &chunks), &whole);
    }
}

/// A `Relay` archive built by hand: `elements` (a multiple of 8 bytes) is
/// what lies before the root; each vector is `(position, count)`.
fn hand_built_relay(elements: &[u8], receivers: (usize, u32), body: (usize, u32)) -> Vec<u8> {
    assert_eq!(elements.len() % 8, 0);
    let root = elements.len();
    let mut archive = elements.to_vec();
    archive.extend_from_slice(&1u64.to_le_bytes());
    for (field, (position, count)) in [(8, receivers), (16, body)] {
        let offset = position as i64 - (root + field) as i64;
        archive.extend_from_slice(&(offset as i32).to_le_bytes());
        archive.extend_from_slice(&count.to_le_bytes());
    }
    let mut frame = header(archive.len() as u32, kind::RELAY, 0).to_vec();
    frame.extend_from_slice(&archive);
    frame
}

/// What the hub's validator makes of a `Relay` whose vectors lie elsewhere
/// than where `encode` puts them (docs/protocol.md, "What a receiver
/// accepts"): in field order and apart is fine, gaps included; out of
/// order, overlapping, or reaching into the root is `Malformed`; an empty
/// vector counts too (the next vector must not start before it).
#[test]
fn vectors_must_lie_in_field_order_apart_and_before_the_root() {
    let ids_then_body = [
        &2u64.to_le_bytes()[..],
        &3u64.to_le_bytes(),
        b"hi\0\0\0\0\0\0",
    ]
    .concat();
    let body_then_ids = [
        &b"hi\0\0\0\0\0\0"[..],
        &2u64.to_le_bytes(),
        &3u64.to_le_bytes(),
    ]
    .concat();
    let zeros = [0u8; 40];
    let valid = [
        // What `encode` writes.
        (
            "encoder layout",
            hand_built_relay(&ids_then_body, (0, 2), (16, 2)),
        ),
        // Gaps before, between and after the vectors are not checked.
        ("gaps", hand_built_relay(&zeros, (8, 1), (24, 2))),
        // An empty vector anywhere at or after the cursor, even at the root.
        (
            "empty receivers at the root",
            hand_built_relay(&zeros[..8], (8, 0), (8, 0)),
        ),
        (
            "empty receivers, then body",
            hand_built_relay(&zeros[..16], (0, 0), (0, 2)),
        ),
    ];
    for (case, frame) in valid {
        let results = decode_in_chunks(&with_preface(&frame), &[usize::MAX]);
        assert!(
            matches!(results.as_slice(), [Ok(ClientMessage::Relay(_))]),
            "{case}: {results:?}"
        );
    }
    let malformed = [
        (
            "body before receivers",
            hand_built_relay(&body_then_ids, (8, 2), (0, 2)),
        ),
        (
            "overlapping",
            hand_built_relay(&zeros[..24], (0, 2), (8, 8)),
        ),
        (
            "body reaching into the root",
            hand_built_relay(&zeros[..24], (0, 1), (8, 24)),
        ),
        (
            "receivers in the root",
            hand_built_relay(&zeros[..8], (8, 1), (8, 0)),
        ),
        (
            "vector at its own header",
            hand_built_relay(&zeros[..8], (16, 1), (8, 0)),
        ),
        (
            "empty receivers after the body",
            hand_built_relay(&zeros[..24], (16, 0), (0, 2)),
        ),
        (
            "misaligned receivers",
            hand_built_relay(&zeros[..24], (4, 1), (16, 0)),
        ),
    ];
    for (case, frame) in malformed {
        let results = decode_in_chunks(&with_preface(&frame), &[usize::MAX]);
        assert_eq!(
            results,
            vec![Err(DecodeError::Malformed {
                kind: kind::RELAY,
                reason: Malformed::Archive
            })],
            "{case}"
        );
    }
}

/// A header announcing a large frame makes the decoder offer (and so
/// allocate) room for the whole frame before its bytes arrive; never more
/// than `DECODER_BYTES_MAX`.
#[test]
fn a_large_header_reserves_its_frame_up_front() {
    let mut decoder = Decoder::<HubSide>::after_preface();
    decoder.handle_bytes(&header(FRAME_BYTES_MAX as u32, kind::ECHO, 0));
    assert!(decoder.poll_frame().unwrap().is_none());
    let spare = decoder.spare().len();
    assert!(spare >= FRAME_BYTES_MAX, "room for the rest: {spare}");
    assert!(decoder.capacity() >= FRAME_HEADER_BYTES + FRAME_BYTES_MAX);
    assert!(decoder.capacity() <= DECODER_BYTES_MAX);
    assert_eq!(DECODER_BYTES_MAX, 1_101_840);
}
