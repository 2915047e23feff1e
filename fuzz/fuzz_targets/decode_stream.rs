//! decode_stream: arbitrary bytes, with or without the preface, fed to both
//! decoder sides whole, in fuzz-chosen chunks and through spare/commit.
//!
//! Asserts (see `relayhub_fuzz::stream`): the three ways give the same
//! frames and errors; a fatal error is the last thing a decoder says and it
//! keeps saying it; no frame exceeds the receivers, body, list-page or frame
//! limits; every frame is a whole number of 8-byte words; every decoded
//! message re-encodes to a frame that decodes to itself; and the buffer
//! stays within DECODER_BYTES_MAX when every frame is polled after each
//! chunk of at most READ_CHUNK_BYTES.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relayhub_fuzz::stream::{check_stream, StreamInput};
use relayhub_protocol::{ClientSide, HubSide};

fuzz_target!(|data: &[u8]| {
    let input = StreamInput::parse(data);
    check_stream::<HubSide>(&input);
    check_stream::<ClientSide>(&input);
});
