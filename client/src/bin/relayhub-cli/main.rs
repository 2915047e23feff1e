//! relayhub-cli: talk to a relayhub hub from the shell (docs/cli.md).
//!
//! - `args`: the command line (clap) and the mode choice.
//! - `oneshot`: identity, list, send, recv, echo.
//! - `interactive`: commands from stdin, a reader thread printing events.
//! - `session`: the one-shot commands over protocol version 2 with
//!   `--session FILE` (a durable session kept in FILE).
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
mod session;

use std::{
    io::{self, IsTerminal},
    process::ExitCode,
    time::Duration,
};

use clap::{error::ErrorKind, CommandFactory, Parser};
use relayhub_client::{
    session::{ConnectError, SessionError},
    Client, ClientConfig, ClientError,
};

use args::{Cli, Command, Mode};

/// Why a command failed: the hub or connection, or our own stdin/stdout.
#[derive(Debug)]
pub enum Failure {
    /// From the client library.
    Client(ClientError),
    /// Opening a version-2 session failed.
    Connect(ConnectError),
    /// A call on a version-2 session failed.
    Session(SessionError),
    /// A message of our own.
    Message(String),
    /// Reading stdin or writing stdout failed.
    Stdio(io::Error),
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        Failure::Client(error)
    }
}

impl From<ConnectError> for Failure {
    fn from(error: ConnectError) -> Failure {
        Failure::Connect(error)
    }
}

impl From<SessionError> for Failure {
    fn from(error: SessionError) -> Failure {
        Failure::Session(error)
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
    let wait = Duration::from_millis(cli.wait_ms);
    if let (Some(path), Mode::OneShot(command)) = (&cli.session, &mode) {
        let result = session::run(&cli.addr, path, command.clone(), config, cli.hex, wait);
        return exit(result);
    }
    let client = match Client::connect_with(cli.addr.as_str(), &config) {
        Ok(client) => client,
        Err(error @ ClientError::Resolve { .. }) => {
            return fail(&format!("{error} ({})", cli.addr))
        }
        Err(error) => return fail(&error.to_string()),
    };
    exit(run(client, mode, cli.hex, wait))
}

/// The exit code of a run, after printing why it failed.
fn exit(result: Result<ExitCode, Failure>) -> ExitCode {
    match result {
        Ok(code) => code,
        // Our reader went away (`| head -1`): nothing left to say to anyone.
        Err(Failure::Stdio(error)) if error.kind() == io::ErrorKind::BrokenPipe => {
            ExitCode::FAILURE
        }
        Err(Failure::Stdio(error)) => fail(&format!("stdio: {error}")),
        Err(Failure::Client(error)) => fail(&error.to_string()),
        Err(Failure::Connect(error)) => fail(&error.to_string()),
        Err(Failure::Session(error)) => fail(&error.to_string()),
        Err(Failure::Message(message)) => fail(&message),
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
