//! Command-line arguments (clap derive, flags and env vars) and the choice
//! between a one-shot command and interactive mode.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use relayhub_client::DEFAULT_ADDR;

/// Talk to a relayhub hub from the shell, in the spirit of nc.
#[derive(Parser, Debug, Clone, PartialEq, Eq)]
#[command(
    name = "relayhub-cli",
    version,
    after_help = "Without a command, relayhub-cli is interactive when stdin is a terminal \
                  (or with -i): type `help` once connected.\n\n\
                  Examples:\n  \
                  relayhub-cli recv --count 1            # prints `from 2: hello`\n  \
                  relayhub-cli send --to 1,3 hello       # relays `hello` to users 1 and 3\n  \
                  echo hello | relayhub-cli send --to 1 -\n  \
                  relayhub-cli list\n  \
                  relayhub-cli --session bob.session recv   # a durable session kept in bob.session"
)]
pub struct Cli {
    /// The hub's address.
    #[arg(
        long,
        short,
        env = "RELAYHUB_ADDR",
        default_value = DEFAULT_ADDR,
        global = true,
        value_name = "HOST:PORT"
    )]
    pub addr: String,

    /// Longest wait for the TCP connection, in milliseconds.
    #[arg(
        long,
        env = "RELAYHUB_CONNECT_TIMEOUT_MS",
        default_value_t = 5000,
        global = true,
        value_name = "MS"
    )]
    pub connect_timeout_ms: u64,

    /// How long `send` and interactive mode wait, after the last request,
    /// for errors the hub reports later (a receiver that is not
    /// connected), in milliseconds. With --session, `send` waits for the
    /// hub's confirmation instead, then this long for receipts (--receipt).
    #[arg(long, default_value_t = 200, global = true, value_name = "MS")]
    pub wait_ms: u64,

    /// Print bodies as hex instead of text.
    #[arg(long, global = true)]
    pub hex: bool,

    /// Read commands from stdin even when it is not a terminal.
    #[arg(short, long)]
    pub interactive: bool,

    /// Speak protocol version 2 with a durable session kept in FILE:
    /// created on first use, resumed after (messages sent while away are
    /// delivered then). Works with identity, list, send, recv and echo.
    #[arg(long, global = true, value_name = "FILE")]
    pub session: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// One-shot commands: connect, do one thing, exit.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Print this connection's user id.
    #[command(visible_alias = "id")]
    Identity,
    /// Print the ids of the other connected users, one per line.
    List,
    /// Relay a body to users; errors the hub reports are printed and make
    /// the exit code 1.
    Send(SendArgs),
    /// Print deliveries (`from 2: hello`) as they arrive.
    Recv(RecvArgs),
    /// Send a body to the hub and print what comes back.
    Echo {
        /// The text; several words are joined with spaces.
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
    },
    /// Read commands from stdin while printing deliveries as they arrive.
    #[command(visible_alias = "i")]
    Interactive,
}

/// Arguments of `send`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct SendArgs {
    /// Receivers: user ids separated by commas (2,3), or repeat the flag.
    #[arg(
        long,
        short,
        required = true,
        value_delimiter = ',',
        value_name = "IDS"
    )]
    pub to: Vec<u64>,

    /// The body; several words are joined with spaces; `-` reads stdin.
    #[arg(required = true, num_args = 1..)]
    pub body: Vec<String>,

    /// With --session: ask each durable receiver for a receipt, and print
    /// those that arrive within --wait-ms (`receipt: user 7 got message 12`);
    /// later ones are printed by `recv`.
    #[arg(long)]
    pub receipt: bool,
}

impl SendArgs {
    /// True when the body is to be read from stdin.
    pub fn body_from_stdin(&self) -> bool {
        self.body == ["-"]
    }
}

/// Arguments of `recv`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct RecvArgs {
    /// Exit after this many deliveries (exit code 1 if the timeout passes
    /// first).
    #[arg(long, short = 'n', value_name = "N")]
    pub count: Option<u64>,

    /// Exit after this many milliseconds in total (default: never).
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// One command, then exit.
    OneShot(Command),
    /// Commands from stdin until `quit` or end of input.
    Interactive,
}

/// Chooses the mode: an explicit command, else interactive when asked with
/// `-i` or when stdin is a terminal. A script that pipes into relayhub-cli
/// without a command gets an error instead of a surprise. A session works
/// with the one-shot commands only.
pub fn mode(cli: &Cli, stdin_is_terminal: bool) -> Result<Mode, &'static str> {
    let mode = one_or_interactive(cli, stdin_is_terminal)?;
    // Checked here: clap's `requires` does not see a global flag given
    // before the subcommand.
    if let (None, Mode::OneShot(Command::Send(send))) = (&cli.session, &mode) {
        if send.receipt {
            return Err("--receipt needs --session FILE: receipts come to durable sessions");
        }
    }
    if cli.session.is_some() && mode == Mode::Interactive {
        return Err(
            "--session works with identity, list, send, recv and echo, not in interactive mode",
        );
    }
    Ok(mode)
}

fn one_or_interactive(cli: &Cli, stdin_is_terminal: bool) -> Result<Mode, &'static str> {
    match (&cli.command, cli.interactive) {
        (Some(Command::Interactive), _) | (None, true) => Ok(Mode::Interactive),
        (Some(_), true) => {
            Err("-i reads commands from stdin: it cannot be combined with a command")
        }
        (Some(command), false) => Ok(Mode::OneShot(command.clone())),
        (None, false) if stdin_is_terminal => Ok(Mode::Interactive),
        (None, false) => Err(
            "no command given and stdin is not a terminal: name a command (see --help) \
             or pass -i to read commands from stdin",
        ),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("relayhub-cli").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        // Guard against a RELAYHUB_ADDR set in the test environment.
        let cli = parse(&["identity"]).unwrap();
        if std::env::var_os("RELAYHUB_ADDR").is_none() {
            assert_eq!(cli.addr, "127.0.0.1:7878");
        }
        assert_eq!(cli.command, Some(Command::Identity));
        assert!(!cli.hex && !cli.interactive);
        assert_eq!(parse(&["id"]).unwrap().command, Some(Command::Identity));
    }

    #[test]
    fn send_takes_comma_separated_and_repeated_receivers() {
        let cli = parse(&[
            "--addr",
            "10.0.0.1:9",
            "send",
            "--to",
            "2,3",
            "-t",
            "7",
            "hello",
            "world",
        ])
        .unwrap();
        assert_eq!(cli.addr, "10.0.0.1:9");
        let Some(Command::Send(send)) = cli.command else {
            panic!()
        };
        assert_eq!(send.to, vec![2, 3, 7]);
        assert_eq!(send.body, vec!["hello", "world"]);
        assert_eq!(cli.wait_ms, 200);
        assert!(!send.body_from_stdin());
        assert!(!send.receipt && cli.session.is_none());
    }

    #[test]
    fn session_is_global_and_receipt_needs_it() {
        let cli = parse(&["send", "--to", "2", "--receipt", "hi", "--session", "s"]).unwrap();
        assert_eq!(cli.session, Some(PathBuf::from("s")));
        let Some(Command::Send(send)) = &cli.command else {
            panic!()
        };
        assert!(send.receipt);
        assert!(mode(&cli, false).is_ok());
        let before = parse(&["--session", "s", "send", "--to", "2", "--receipt", "hi"]).unwrap();
        assert!(mode(&before, false).is_ok());
        let without = parse(&["send", "--to", "2", "--receipt", "hi"]).unwrap();
        assert!(mode(&without, false).is_err());
        let cli = parse(&["--session", "s", "recv"]).unwrap();
        assert_eq!(
            mode(&cli, false),
            Ok(Mode::OneShot(Command::Recv(RecvArgs {
                count: None,
                timeout_ms: None
            })))
        );
        assert!(mode(&parse(&["--session", "s", "-i"]).unwrap(), false).is_err());
        assert!(mode(&parse(&["--session", "s"]).unwrap(), true).is_err());
    }

    #[test]
    fn send_body_dash_means_stdin_and_global_flags_go_anywhere() {
        let cli = parse(&["send", "--to", "2", "--wait-ms", "0", "-", "--addr", "h:1"]).unwrap();
        let Some(Command::Send(send)) = &cli.command else {
            panic!()
        };
        assert!(send.body_from_stdin());
        assert_eq!(cli.wait_ms, 0);
        assert_eq!(cli.addr, "h:1");
    }

    #[test]
    fn send_refuses_bad_receivers_and_missing_parts() {
        assert!(parse(&["send", "--to", "2,x", "hi"]).is_err());
        assert!(parse(&["send", "--to", "-1", "hi"]).is_err());
        assert!(parse(&["send", "hi"]).is_err(), "--to is required");
        assert!(parse(&["send", "--to", "2"]).is_err(), "a body is required");
    }

    #[test]
    fn recv_count_and_timeout() {
        let cli = parse(&["recv", "-n", "3", "--timeout-ms", "500", "--hex"]).unwrap();
        assert!(cli.hex);
        assert_eq!(
            cli.command,
            Some(Command::Recv(RecvArgs {
                count: Some(3),
                timeout_ms: Some(500)
            }))
        );
        let cli = parse(&["recv"]).unwrap();
        assert_eq!(
            cli.command,
            Some(Command::Recv(RecvArgs {
                count: None,
                timeout_ms: None
            }))
        );
    }

    #[test]
    fn mode_follows_the_terminal_and_the_flag() {
        let bare = parse(&[]).unwrap();
        assert_eq!(mode(&bare, true), Ok(Mode::Interactive));
        assert!(mode(&bare, false).is_err());
        assert_eq!(mode(&parse(&["-i"]).unwrap(), false), Ok(Mode::Interactive));
        assert_eq!(
            mode(&parse(&["interactive"]).unwrap(), false),
            Ok(Mode::Interactive)
        );
        assert_eq!(
            mode(&parse(&["list"]).unwrap(), true),
            Ok(Mode::OneShot(Command::List))
        );
        assert!(mode(&parse(&["-i", "list"]).unwrap(), true).is_err());
    }
}
