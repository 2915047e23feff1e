//! The `decode_stream` input format and the three drivers it compares.
//!
//! ```text
//! byte 0        bit 0: prepend PREFACE to the stream
//!               bits 1..=3: n, the number of chunk sizes that follow
//!               bit 4: call `release_idle` after every poll round
//! 2 * n bytes   chunk sizes, u16 little-endian, each mapped into
//!               1 ..= READ_CHUNK_BYTES and cycled (n = 0: READ_CHUNK_BYTES)
//! the rest      the stream, as a peer would send it
//! ```
//!
//! Chunks are at least [`CHUNKS_PER_STREAM_MAX`]-th of the stream, so a
//! 1 MiB stream is cut in about a thousand pieces, not a million: one
//! execution stays in the milliseconds (small streams still go bytewise).
//!
//! The same stream is decoded three ways: handed over whole, handed over in
//! the chunks above (polling every frame after each chunk, as a driver
//! does), and read through `spare`/`commit` in reads of the same sizes. All
//! three must give the same frames and errors.

use bytes::BytesMut;
use relayhub_protocol::{
    decode_frame, DecodeError, Decoder, DECODER_BYTES_MAX, FRAME_ALIGN_BYTES, FRAME_BYTES_MAX,
    FRAME_HEADER_BYTES, PREFACE, PREFACE_BYTES, READ_CHUNK_BYTES,
};

use crate::{aligned, side::Side};

/// Most chunk sizes an input can name (3 bits).
pub const CHUNK_SIZES_MAX: usize = 7;

/// Most chunks (roughly) a stream is cut into; see [`chunk_floor`].
pub const CHUNKS_PER_STREAM_MAX: usize = 1024;

/// Smallest chunk worth cutting a stream of `len` bytes into.
pub fn chunk_floor(len: usize) -> usize {
    (len / CHUNKS_PER_STREAM_MAX).max(1)
}

/// A parsed `decode_stream` input.
#[derive(Debug)]
pub struct StreamInput {
    /// The bytes the peer sent, preface included when asked for.
    pub wire: Vec<u8>,
    /// Chunk (and read) sizes, each in `1 ..= READ_CHUNK_BYTES`, cycled.
    pub chunks: Vec<usize>,
    /// Release the idle buffer after every poll round.
    pub release_idle: bool,
}

impl StreamInput {
    /// Parses fuzzer bytes; any input is valid (short ones mean defaults).
    pub fn parse(data: &[u8]) -> StreamInput {
        let Some((&flags, rest)) = data.split_first() else {
            return StreamInput {
                wire: Vec::new(),
                chunks: vec![READ_CHUNK_BYTES],
                release_idle: false,
            };
        };
        let count = usize::from((flags >> 1) & 0b111);
        let sizes_len = (2 * count).min(rest.len());
        let (sizes, stream) = rest.split_at(sizes_len);
        let mut wire = Vec::with_capacity(PREFACE_BYTES + stream.len());
        if flags & 1 != 0 {
            wire.extend_from_slice(&PREFACE);
        }
        wire.extend_from_slice(stream);
        let floor = chunk_floor(wire.len());
        let mut chunks: Vec<usize> = sizes
            .chunks_exact(2)
            .map(|pair| usize::from(u16::from_le_bytes([pair[0], pair[1]])) % READ_CHUNK_BYTES + 1)
            .map(|size| size.max(floor))
            .collect();
        if chunks.is_empty() {
            chunks.push(READ_CHUNK_BYTES);
        }
        StreamInput {
            wire,
            chunks,
            release_idle: flags & 0b1_0000 != 0,
        }
    }

    /// The fuzzer bytes that parse back into this input (for the seeds).
    pub fn to_bytes(prepend_preface: bool, chunks: &[u16], stream: &[u8]) -> Vec<u8> {
        assert!(chunks.len() <= CHUNK_SIZES_MAX);
        let flags = u8::from(prepend_preface) | ((chunks.len() as u8) << 1);
        let mut out = vec![flags];
        for size in chunks {
            out.extend_from_slice(&size.to_le_bytes());
        }
        out.extend_from_slice(stream);
        out
    }
}

/// What a decoder made of a stream: every frame (owned) and error, in order,
/// up to and including the first fatal error.
pub type Trace<S> = Vec<Result<<S as Side>::Owned, DecodeError>>;

/// Polls every buffered frame, checking each, until more bytes are needed
/// or a fatal error. Returns true on a fatal error.
fn poll_round<S: Side>(decoder: &mut Decoder<S>, trace: &mut Trace<S>) -> bool {
    loop {
        let buffered_before = decoder.buffered_len();
        let preface_before = decoder.preface_done();
        let polled = decoder
            .poll_frame()
            .map(|frame| frame.map(|f| S::owned(&f)));
        let mut consumed = buffered_before - decoder.buffered_len();
        if !preface_before && decoder.preface_done() {
            consumed -= PREFACE_BYTES;
        }
        match polled {
            Ok(None) => {
                assert_eq!(consumed, 0, "Ok(None) consumed frame bytes");
                return false;
            }
            Ok(Some(message)) => {
                assert_frame_len(consumed);
                S::assert_within_limits(&message);
                assert_reencodes::<S>(&message);
                trace.push(Ok(message));
            }
            Err(error) if !error.is_fatal() => {
                // A limit refusal skips exactly its (well-formed) frame.
                assert!(
                    matches!(error, DecodeError::LimitExceeded { .. }),
                    "{error:?}"
                );
                assert_frame_len(consumed);
                trace.push(Err(error));
            }
            Err(error) => {
                assert!(!matches!(error, DecodeError::Incomplete { .. }));
                assert_stays_failed(decoder, error);
                trace.push(Err(error));
                return true;
            }
        }
    }
}

/// A frame the decoder returned (or refused over a limit) has a length the
/// header allowed: a whole number of 8-byte words, at most the limit.
fn assert_frame_len(consumed: usize) {
    assert!(consumed > FRAME_HEADER_BYTES, "frame of {consumed} bytes");
    assert!(
        consumed <= FRAME_HEADER_BYTES + FRAME_BYTES_MAX,
        "frame of {consumed} bytes"
    );
    assert_eq!(consumed % FRAME_ALIGN_BYTES, 0, "frame of {consumed} bytes");
}

/// A decoded message, encoded again in canonical layout, decodes to itself.
fn assert_reencodes<S: Side>(message: &S::Owned) {
    let mut wire = BytesMut::new();
    let len = S::encode_owned(message, &mut wire);
    assert_eq!(len, wire.len());
    let wire = aligned(&wire);
    let (frame, frame_len) = decode_frame::<S>(&wire).expect("a re-encoded frame decodes");
    assert_eq!(frame_len, len);
    assert_eq!(&S::owned(&frame), message);
}

/// After a fatal error the decoder answers the same error, whatever comes.
fn assert_stays_failed<S: Side>(decoder: &mut Decoder<S>, error: DecodeError) {
    assert_eq!(decoder.poll_frame().map(|f| f.is_some()), Err(error));
    decoder.handle_bytes(&PREFACE);
    assert_eq!(decoder.poll_frame().map(|f| f.is_some()), Err(error));
}

/// Decodes `wire` handed over in one piece.
pub fn decode_whole<S: Side>(wire: &[u8]) -> Trace<S> {
    let mut decoder = Decoder::<S>::new();
    let mut trace = Vec::new();
    decoder.handle_bytes(wire);
    poll_round(&mut decoder, &mut trace);
    trace
}

/// Decodes `wire` handed over in `chunks` (cycled), polling every frame
/// after each chunk. The buffer must stay within [`DECODER_BYTES_MAX`].
pub fn decode_chunks<S: Side>(wire: &[u8], chunks: &[usize], release_idle: bool) -> Trace<S> {
    let mut decoder = Decoder::<S>::new();
    let mut trace = Vec::new();
    let mut rest = wire;
    let mut sizes = chunks.iter().copied().cycle();
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(sizes.next().expect("cycled").min(rest.len()));
        rest = tail;
        decoder.handle_bytes(chunk);
        assert_capacity_bounded(&decoder);
        if poll_round(&mut decoder, &mut trace) {
            return trace;
        }
        if release_idle {
            assert_releases_when_idle(&mut decoder);
        }
    }
    trace
}

/// Decodes `wire` read through `spare`/`commit`, as a socket driver does,
/// in reads of at most `reads` bytes (cycled).
pub fn decode_reads<S: Side>(wire: &[u8], reads: &[usize], release_idle: bool) -> Trace<S> {
    let mut decoder = Decoder::<S>::new();
    let mut trace = Vec::new();
    let mut offset = 0;
    let mut sizes = reads.iter().copied().cycle();
    while offset < wire.len() {
        let spare = decoder.spare();
        assert!(!spare.is_empty(), "spare() offers no room");
        let take = spare
            .len()
            .min(wire.len() - offset)
            .min(sizes.next().expect("cycled"));
        spare[..take].copy_from_slice(&wire[offset..offset + take]);
        decoder.commit(take);
        offset += take;
        assert_capacity_bounded(&decoder);
        if poll_round(&mut decoder, &mut trace) {
            return trace;
        }
        if release_idle {
            assert_releases_when_idle(&mut decoder);
        }
    }
    trace
}

fn assert_capacity_bounded<S: Side>(decoder: &Decoder<S>) {
    assert!(
        decoder.capacity() <= DECODER_BYTES_MAX,
        "decoder holds {} bytes, more than DECODER_BYTES_MAX = {DECODER_BYTES_MAX}",
        decoder.capacity()
    );
}

fn assert_releases_when_idle<S: Side>(decoder: &mut Decoder<S>) {
    let idle = decoder.buffered_len() == 0;
    decoder.release_idle();
    if idle {
        assert_eq!(decoder.capacity(), 0, "an idle decoder keeps its buffer");
    }
}

/// Every property of `decode_stream` for side `S`.
pub fn check_stream<S: Side>(input: &StreamInput) {
    let whole = decode_whole::<S>(&input.wire);
    let chunked = decode_chunks::<S>(&input.wire, &input.chunks, input.release_idle);
    assert_eq!(whole, chunked, "whole and chunked decoding disagree");
    let read = decode_reads::<S>(&input.wire, &input.chunks, input.release_idle);
    assert_eq!(whole, read, "whole and spare/commit decoding disagree");
}
