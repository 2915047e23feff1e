//! Shared pieces of the relayhub fuzz targets (see docs/fuzzing.md).
//!
//! # Layout
//! - [`stream`]: the `decode_stream` input format (preface flag, chunk
//!   sizes, raw bytes) and the decoding drivers the target compares.
//! - [`side`]: one trait over `HubSide` and `ClientSide`: owned frames,
//!   limit checks and re-encoding, so every property is written once.
//! - [`mirror`]: `Arbitrary` mirror types of every message, within the
//!   protocol limits, for the `roundtrip` target.
//! - [`hub`]: the `hub_session` harness: the hub's IO-free core
//!   (relayhub-server's `Shard`) driven in memory through the same
//!   `handle_*`/`poll_*` calls as its glommio driver.
//! - [`scenarios`]: hand-written `hub_session` inputs and the encoder of
//!   that input format.
//! - [`seeds`]: the seed corpus, written by `src/bin/seed.rs`.
//!
//! Everything here panics (an assertion) when a property fails: that is
//! how libFuzzer learns about a bug.

pub mod hub;
pub mod mirror;
pub mod scenarios;
pub mod seeds;
pub mod side;
pub mod stream;

/// Copies `bytes` into a 16-byte aligned buffer, as the decoder's own
/// buffer is: `decode_frame` needs an aligned archive.
pub fn aligned(bytes: &[u8]) -> rkyv::util::AlignedVec<16> {
    let mut out = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    out.extend_from_slice(bytes);
    out
}
