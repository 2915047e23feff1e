//! Runs `hub_session` inputs outside libFuzzer and prints how often each
//! property was checked, to show the corpus reaches them:
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --bin hub_tally -- DIR...
//! ```
//!
//! With `RELAYHUB_FUZZ_TRACE=1` the harness also prints every operation,
//! core call and event to stderr: run it on a directory holding one crash
//! to see what led to it.

use arbitrary::{Arbitrary, Unstructured};
use relayhub_fuzz::hub::{take_tally, Harness, SessionInput};

fn main() -> std::io::Result<()> {
    let mut inputs = 0;
    for dir in std::env::args().skip(1) {
        for entry in std::fs::read_dir(dir)? {
            let bytes = std::fs::read(entry?.path())?;
            if let Ok(input) = SessionInput::arbitrary_take_rest(Unstructured::new(&bytes)) {
                Harness::run(&input);
                inputs += 1;
            }
        }
    }
    println!("{inputs} inputs");
    for (check, count) in take_tally() {
        println!("{count:>10}  {check}");
    }
    Ok(())
}
