//! Writes the seed corpus of every fuzz target.
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --bin seed -- [--large] [DIR]
//! ```
//!
//! DIR defaults to `fuzz/corpus` (one subdirectory per target). `--large`
//! adds the 1 MiB / 1 MiB + 1 body seeds of `decode_stream`, which are too
//! big to commit: `fuzz/run.sh` writes them under `fuzz/target/`.

use std::path::PathBuf;

use relayhub_fuzz::seeds;

fn main() -> std::io::Result<()> {
    let mut large = false;
    let mut root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/corpus"));
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--large" => large = true,
            "-h" | "--help" => {
                eprintln!("usage: seed [--large] [DIR]");
                return Ok(());
            }
            dir => root = PathBuf::from(dir),
        }
    }
    let stream = seeds::decode_stream_seeds(large);
    let bytes = seeds::write(&root.join("decode_stream"), &stream)?;
    println!("decode_stream: {} seeds, {bytes} bytes", stream.len());
    let roundtrip = seeds::roundtrip_seeds();
    let bytes = seeds::write(&root.join("roundtrip"), &roundtrip)?;
    println!("roundtrip: {} seeds, {bytes} bytes", roundtrip.len());
    let hub = seeds::hub_session_seeds();
    let bytes = seeds::write(&root.join("hub_session"), &hub)?;
    println!("hub_session: {} seeds, {bytes} bytes", hub.len());
    Ok(())
}
