//! Every input the fuzzers (fuzz/, docs/fuzzing.md) found a bug with, kept
//! as a plain `cargo test` so the bug stays fixed without nightly.
//!
//! Each test names the target that found it, shows the input (minimized by
//! hand to what matters), and checks the property the target asserted.

use relayhub_protocol::*;

/// What a hub-side decoder makes of `wire` handed over in `chunks`
/// (cycled), polling every frame after each chunk as a driver does.
fn decode_in_chunks(wire: &[u8], chunks: &[usize]) -> Vec<Result<ClientMessage, DecodeError>> {
    let mut decoder = Decoder::<HubSide>::new();
    let mut out = Vec::new();
    let mut rest = wire;
    let mut sizes = chunks.iter().copied().cycle();
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(sizes.next().unwrap().clamp(1, rest.len()));
        rest = tail;
        decoder.handle_bytes(chunk);
        loop {
            match decoder.poll_frame() {
                Ok(Some(frame)) => out.push(Ok(frame.to_owned())),
                Ok(None) => break,
                Err(error) => {
                    out.push(Err(error));
                    if error.is_fatal() {
                        return out;
                    }
                }
            }
        }
    }
    out
}

/// decode_stream, crash-babfbb41: an HTTP request whose first segment
/// ends inside the method ("GE" + "T / ...") was refused as non-HTTP
/// garbage, while the same request in one segment got the HTTP refusal.
/// Fixed in `check_preface`: wait while the bytes could become a method.
#[test]
fn http_request_split_inside_the_method_is_still_recognised() {
    let request = b"GET / HTTP/1.1\r\nHost: relayhub\r\n\r\n";
    let http = Err(DecodeError::BadPreface {
        looks_like_http: true,
    });
    for chunk in [1, 2, 3, 4, request.len()] {
        assert_eq!(
            decode_in_chunks(request, &[chunk]),
            vec![http.clone()],
            "chunks of {chunk}"
        );
    }
    for method in [&b"PRI * HTTP/2.0"[..], b"PUT /x", b"PATCH /x", b"OPTIONS *"] {
        assert_eq!(
            decode_in_chunks(method, &[1]),
            vec![http.clone()],
            "{method:?}"
        );
    }
}

/// decode_stream, seed large-echo-1mib.read: a 1 MiB echo followed by an
/// identity, handed over in 16 KiB chunks with every frame polled after
/// each. The chunk that straddled the end of the large frame made the
/// buffer double to 2 MiB, past DECODER_BYTES_MAX (1 MiB + 52 KiB).
/// Fixed in `Decoder::make_room`: doubling stops at DECODER_BYTES_MAX.
#[test]
fn a_chunk_straddling_a_large_frame_keeps_the_buffer_bounded() {
    let body = vec![0xab; BODY_BYTES_MAX];
    let mut wire = bytes::BytesMut::from(&PREFACE[..]);
    encode(
        &EchoRef {
            request: 30,
            body: &body,
        },
        &mut wire,
    )
    .unwrap();
    encode(
        &RelayRef {
            request: 31,
            receivers: &[1; RECEIVERS_MAX],
            body: &body[..700_000],
        },
        &mut wire,
    )
    .unwrap();
    encode(&Identity { request: 32 }, &mut wire).unwrap();
    for chunks in [&[READ_CHUNK_BYTES][..], &[4093], &[16383, 1, 4094]] {
        let mut decoder = Decoder::<HubSide>::new();
        let mut requests = Vec::new();
        let mut rest = &wire[..];
        let mut sizes = chunks.iter().copied().cycle();
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(sizes.next().unwrap().min(rest.len()));
            rest = tail;
            decoder.handle_bytes(chunk);
            assert!(
                decoder.capacity() <= DECODER_BYTES_MAX,
                "chunks {chunks:?}: decoder holds {} bytes",
                decoder.capacity()
            );
            while let Some(frame) = decoder.poll_frame().unwrap() {
                requests.push(match frame.to_owned() {
                    ClientMessage::Echo(m) => m.request,
                    ClientMessage::Relay(m) => m.request,
                    ClientMessage::Identity(m) => m.request,
                    ClientMessage::List(m) => m.request,
                });
            }
        }
        assert_eq!(requests, [30, 31, 32], "chunks {chunks:?}");
    }
}

/// The bound above must not cost linear growth when bytes are handed over
/// without polling (a test or tool feeding a whole stream at once).
#[test]
fn unpolled_bytes_past_the_bound_are_still_kept() {
    let body = vec![7; BODY_BYTES_MAX];
    let mut wire = bytes::BytesMut::from(&PREFACE[..]);
    for request in 0..3 {
        encode(
            &EchoRef {
                request,
                body: &body,
            },
            &mut wire,
        )
        .unwrap();
    }
    let mut decoder = Decoder::<HubSide>::new();
    for chunk in wire.chunks(1000) {
        decoder.handle_bytes(chunk);
    }
    assert!(decoder.capacity() >= wire.len() - PREFACE_BYTES);
    for request in 0..3 {
        let Some(ClientFrame::Echo(echo)) = decoder.poll_frame().unwrap() else {
            panic!("echo {request} missing")
        };
        assert_eq!(echo.request, request);
        assert_eq!(echo.body.len(), BODY_BYTES_MAX);
    }
    assert!(decoder.poll_frame().unwrap().is_none());
}

/// The worst case of the bound: a maximal frame (archive of exactly
/// FRAME_BYTES_MAX) missing its last byte, then a full read. The buffer
/// is 16-byte granular, so DECODER_BYTES_MAX is rounded up to 16 (it was
/// 8 bytes short of what this case needs).
#[test]
fn a_maximal_frame_plus_a_full_read_fits_the_bound() {
    let body = vec![1; FRAME_BYTES_MAX - 16];
    let mut wire = bytes::BytesMut::from(&PREFACE[..]);
    encode(
        &EchoRef {
            request: 40,
            body: &body,
        },
        &mut wire,
    )
    .unwrap();
    assert_eq!(
        wire.len(),
        PREFACE_BYTES + FRAME_HEADER_BYTES + FRAME_BYTES_MAX
    );
    while wire.len() < PREFACE_BYTES + FRAME_HEADER_BYTES + FRAME_BYTES_MAX + READ_CHUNK_BYTES {
        encode(&Identity { request: 41 }, &mut wire).unwrap();
    }
    let cut = PREFACE_BYTES + FRAME_HEADER_BYTES + FRAME_BYTES_MAX - 1;
    let mut decoder = Decoder::<HubSide>::new();
    let mut results = Vec::new();
    let reads = wire[..cut]
        .chunks(READ_CHUNK_BYTES)
        .chain(wire[cut..].chunks(READ_CHUNK_BYTES));
    for read in reads {
        decoder.handle_bytes(read);
        assert!(
            decoder.capacity() <= DECODER_BYTES_MAX,
            "{}",
            decoder.capacity()
        );
        loop {
            match decoder.poll_frame() {
                Ok(Some(frame)) => results.push(Ok(frame.to_owned())),
                Ok(None) => break,
                Err(error) => results.push(Err(error)),
            }
        }
    }
    assert_eq!(
        results[0],
        Err(DecodeError::LimitExceeded {
            request: 40,
            limit: Limit::BodyBytes,
            value: body.len() as u64
        })
    );
    assert!(results[1..]
        .iter()
        .all(|r| r == &Ok(ClientMessage::Identity(Identity { request: 41 }))));
}
