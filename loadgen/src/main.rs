//! `relayhub-loadgen`: see `relayhub-loadgen --help` and docs/loadgen.md;
//! `relayhub-loadgen sweep --help` and `plan --help`: docs/capacity-planning.md.

use std::process::ExitCode;

use clap::Parser;
use relayhub_loadgen::capacity::{planner, sweep};
use relayhub_loadgen::cli::{run, Args};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let command = argv.join(" ");
    let outcome = match argv.get(1).map(String::as_str) {
        Some("sweep") => sweep::run(&sweep::SweepArgs::parse_from(&argv[1..]), command).map(drop),
        Some("plan") => planner::run(&planner::PlanArgs::parse_from(&argv[1..])).map(drop),
        _ => run(&Args::parse(), command).map(drop),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("relayhub-loadgen: {error}");
            ExitCode::FAILURE
        }
    }
}
