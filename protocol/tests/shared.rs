//! Large frames handed out shared (`Decoder::poll_frame_shared`): their
//! bytes stay as they were while the decoder reads on, and small frames
//! are never shared.

use bytes::{Bytes, BytesMut};
use relayhub_protocol::*;

/// A stream of relays: every third one large (shared), the rest small, each
/// body filled with its own request number.
/// Returns the stream and each frame's (body length, frame length).
fn wire(count: u64) -> (BytesMut, Vec<(usize, usize)>) {
    let mut wire = BytesMut::new();
    wire.extend_from_slice(&PREFACE);
    let mut lens = Vec::new();
    for request in 0..count {
        let len = if request % 3 == 0 {
            SHARED_FRAME_BYTES_MIN + request as usize * 1001
        } else {
            request as usize * 13
        };
        let before = wire.len();
        encode(
            &RelayRef {
                request,
                receivers: &[request],
                body: &vec![request as u8; len],
            },
            &mut wire,
        )
        .unwrap();
        lens.push((len, wire.len() - before));
    }
    (wire, lens)
}

#[test]
fn shared_bodies_outlive_later_reads_unchanged() {
    let (wire, lens) = wire(30);
    let mut decoder = Decoder::<HubSide>::new();
    let mut kept: Vec<(u64, Bytes)> = Vec::new();
    let mut offset = 0;
    let mut seen = 0u64;
    // Odd read sizes, so frames end anywhere inside a read.
    let chunks = [1000usize, 70_000, 3, 300_000, 65_536];
    let mut turn = 0;
    while offset < wire.len() {
        let spare = decoder.spare();
        let take = spare
            .len()
            .min(wire.len() - offset)
            .min(chunks[turn % chunks.len()]);
        turn += 1;
        spare[..take].copy_from_slice(&wire[offset..offset + take]);
        decoder.commit(take);
        offset += take;
        while let Some((frame, shared)) = decoder.poll_frame_shared().unwrap() {
            let ClientFrame::Relay(relay) = frame else {
                panic!("not a relay")
            };
            assert_eq!(relay.request, seen);
            let (len, frame_len) = lens[seen as usize];
            assert_eq!(relay.body.len(), len);
            assert_eq!(
                shared.is_some(),
                frame_len >= SHARED_FRAME_BYTES_MIN,
                "frame {seen} of {frame_len} bytes"
            );
            if let Some(shared) = shared {
                assert!(shared.pinned_bytes() >= frame_len);
                assert!(shared.pinned_bytes() <= DECODER_BYTES_MAX);
                kept.push((seen, shared.bytes_of(relay.body.as_slice())));
            }
            seen += 1;
        }
        assert!(decoder.capacity() <= DECODER_BYTES_MAX);
    }
    assert_eq!(seen, 30);
    assert_eq!(kept.len(), 10);
    for (request, body) in &kept {
        assert_eq!(body.len(), lens[*request as usize].0);
        assert!(
            body.iter().all(|&byte| byte == *request as u8),
            "body of {request} was overwritten"
        );
    }
}

#[test]
fn a_frame_to_be_shared_is_read_up_to_its_end_and_no_further() {
    let (wire, lens) = wire(2);
    let mut decoder = Decoder::<HubSide>::new();
    // The preface and the first frame's header and a little of its body.
    let first = PREFACE.len() + 100;
    decoder.handle_bytes(&wire[..first]);
    assert!(decoder.poll_frame().unwrap().is_none());
    let frame_len = lens[0].1;
    let spare = decoder.spare();
    assert_eq!(spare.len(), frame_len - 100, "room up to the frame's end");
    let rest = frame_len - 100;
    spare.copy_from_slice(&wire[first..first + rest]);
    decoder.commit(rest);
    let (_, shared) = decoder.poll_frame_shared().unwrap().expect("a frame");
    assert!(shared.is_some());
    // The next frame is small: reads are not limited again, and they go to
    // a buffer of the decoder's own while the shared one lives.
    assert!(decoder.spare().len() >= READ_CHUNK_BYTES);
    drop(shared);
}

#[test]
fn a_dropped_handle_gives_the_buffer_back() {
    let (wire, _) = wire(1);
    let mut decoder = Decoder::<HubSide>::new();
    decoder.handle_bytes(&wire);
    assert!(matches!(
        decoder.poll_frame(),
        Ok(Some(ClientFrame::Relay(_)))
    ));
    // A second decoder over the same bytes shares, and dropping the handle
    // leaves the decoder holding its buffer alone again.
    let mut decoder = Decoder::<HubSide>::new();
    decoder.handle_bytes(&wire);
    let (_, shared) = decoder.poll_frame_shared().unwrap().expect("a frame");
    drop(shared.expect("large"));
    decoder.handle_bytes(&wire[PREFACE.len()..]);
    assert!(decoder.poll_frame().unwrap().is_some());
}
