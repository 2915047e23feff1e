//! The `relayhub` binary: parse the configuration, start the hub, wait for
//! SIGINT or SIGTERM, shut down gracefully, print the counters, exit 0.

use std::{io::IsTerminal, process::ExitCode};

use clap::Parser;
use relayhub_server::{Config, Hub};
use signal_hook::{
    consts::{SIGINT, SIGTERM},
    iterator::Signals,
};
use tracing::{error, info};

/// A signal this long after the first one means "stop now".
const SECOND_SIGNAL_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Registers the SIGINT and SIGTERM iterator with both signals blocked, so
/// one that arrives meanwhile stays pending until the iterator is there to
/// take it: the registry installs its handler before it adds the iterator,
/// and a signal between the two was swallowed (seen: a SIGTERM 1 ms after
/// the start left the hub running). Unblocked before any thread starts,
/// since threads inherit the mask.
fn held_signals() -> std::io::Result<Signals> {
    // SAFETY: `set` is a plain C struct that sigemptyset initialises before
    // any other use; the calls only read and write it and this thread's
    // signal mask (no other thread exists yet).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, SIGINT);
        libc::sigaddset(&mut set, SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let signals = Signals::new([SIGINT, SIGTERM]);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        signals
    }
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // First of all, so that a signal from the moment `main` runs is held
    // until the hub is up (docs/operations.md, "Start-up and readiness"),
    // not the default action that kills it, nor lost.
    let signals = held_signals();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RELAYHUB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = Config::parse();
    let mut signals = match signals {
        Ok(signals) => signals,
        Err(error) => {
            error!(%error, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let hub = match Hub::start(config.clone()) {
        Ok(hub) => hub,
        Err(error) => {
            error!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let shards = hub.shard_stats().len();
    info!(address = %hub.local_addr(), shards, "relayhub listening");
    let signal = signals.forever().next();
    info!(
        ?signal,
        grace_ms = config.shutdown_grace_ms,
        "shutting down"
    );
    // A second signal, a second or more after the first, skips the grace
    // period (some supervisors send the first one twice at once).
    let first = std::time::Instant::now();
    std::thread::spawn(move || {
        for _ in signals.forever() {
            if first.elapsed() >= SECOND_SIGNAL_AFTER {
                eprintln!("second signal: exiting now");
                std::process::exit(130);
            }
        }
    });
    let mut totals = relayhub_server::StatsSnapshot::default();
    for (shard, counters) in hub.shutdown_per_shard().into_iter().enumerate() {
        info!(shard, "final counters: {counters}");
        totals += counters;
    }
    info!("final counters: {totals}");
    ExitCode::SUCCESS
}
