//! `relayhub-loadgen`: see `relayhub-loadgen --help` and docs/loadgen.md.

use std::process::ExitCode;

use clap::Parser;
use relayhub_loadgen::cli::{run, Args};

fn main() -> ExitCode {
    let args = Args::parse();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    match run(&args, command) {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("relayhub-loadgen: {error}");
            ExitCode::FAILURE
        }
    }
}
