//! relayhub-cli: talk to a relayhub hub from the shell (docs/cli.md).
//!
//! - `args`: the command line (clap) and the mode choice.
//! - `oneshot`: identity, list, send, recv, echo.
//! - `interactive`: commands from stdin, a reader thread printing events.
//! - `command`: the interactive command language.
//! - `output`: how bodies and events are printed.
//!
//! Exit codes: 0 success, 1 failure (connection, hub error, `recv --count`
//! not met), 2 bad usage.

mod args;
mod command;
mod interactive;
mod oneshot;
mod output;

use std::{
    io::{self, IsTerminal},
    process::ExitCode,
    time::Duration,
};

use clap::{error::ErrorKind, CommandFactory, Parser};
use relayhub_client::{Client, ClientConfig, ClientError};

use args::{Cli, Command, Mode};

/// Why a command failed: the hub or connection, or our own stdin/stdout.
#[derive(Debug)]
pub enum Failure {
    /// From the client library.
    Client(ClientError),
    /// Reading stdin or writing stdout failed.
    Stdio(io::Error),
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        Failure::Client(error)
    }
}

impl From<io::Error> for Failure {
    fn from(error: io::Error) -> Failure {
        Failure::Stdio(error)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mode = match args::mode(&cli, io::stdin().is_terminal()) {
        Ok(mode) => mode,
        Err(message) => Cli::command()
            .error(ErrorKind::MissingSubcommand, message)
            .exit(),
    };
    let config = ClientConfig {
        connect_timeout: Duration::from_millis(cli.connect_timeout_ms),
        ..ClientConfig::default()
    };
    let client = match Client::connect_with(cli.addr.as_str(), &config) {
        Ok(client) => client,
        Err(error @ ClientError::Resolve { .. }) => {
            return fail(&format!("{error} ({})", cli.addr))
        }
        Err(error) => return fail(&error.to_string()),
    };
    let wait = Duration::from_millis(cli.wait_ms);
    match run(client, mode, cli.hex, wait) {
        Ok(code) => code,
        // Our reader went away (`| head -1`): nothing left to say to anyone.
        Err(Failure::Stdio(error)) if error.kind() == io::ErrorKind::BrokenPipe => {
            ExitCode::FAILURE
        }
        Err(Failure::Stdio(error)) => fail(&format!("stdio: {error}")),
        Err(Failure::Client(error)) => fail(&error.to_string()),
    }
}

fn run(mut client: Client, mode: Mode, hex: bool, wait: Duration) -> Result<ExitCode, Failure> {
    match mode {
        Mode::Interactive => interactive::run(client, hex, wait),
        Mode::OneShot(command) => match command {
            Command::Identity => oneshot::identity(&mut client),
            Command::List => oneshot::list(&mut client),
            Command::Send(args) => oneshot::send(&mut client, &args, wait),
            Command::Recv(args) => oneshot::recv(&mut client, &args, hex),
            Command::Echo { text } => oneshot::echo(&mut client, &text, hex),
            Command::Interactive => interactive::run(client, hex, wait),
        },
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("relayhub-cli: {message}");
    ExitCode::FAILURE
}
