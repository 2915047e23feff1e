//! `--session FILE`: the one-shot commands over protocol version 2, with a
//! durable session kept in FILE (created on first use, resumed after).
//!
//! - `recv` acks what it printed (auto-ack) and reconnects on connection
//!   loss ([`ReconnectingClient`]), so it prints what arrived while it was
//!   away, each message once.
//! - `send` waits for the hub's `Stored`: every receiver handled. It acks
//!   only the receipts it printed, and only up to the first entry it did not
//!   print (a delivery is left for `recv`: acks are cumulative).
//! - `identity`, `list` and `echo` ack nothing.

use std::{
    collections::BTreeSet,
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use relayhub_client::{
    session::{
        ConnectError, Options, ReconnectPolicy, ReconnectingClient, SessionClient, SessionEvent,
    },
    ClientConfig, UserId, BODY_BYTES_MAX,
};

use crate::{
    args::{Command, RecvArgs, SendArgs},
    oneshot::read_stdin,
    output::{body_text, print, session_event_line, Stream},
    Failure,
};

/// How many reconnect attempts in a row `recv` makes before it gives up
/// (with the default backoff, about two minutes without a hub).
const RECONNECT_ATTEMPTS_MAX: u32 = 30;

/// Runs one command with the session in `path`.
pub fn run(
    addr: &str,
    path: &Path,
    command: Command,
    config: ClientConfig,
    hex: bool,
    wait: Duration,
) -> Result<ExitCode, Failure> {
    let auto_ack = matches!(command, Command::Recv(_));
    let options = Options {
        auto_ack,
        config,
        ..Options::default()
    };
    let mut client = open(addr, path, options)?;
    match command {
        Command::Identity => {
            print(Stream::Out, &client.identity()?.to_string())?;
            client.close()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::List => {
            for user in client.list_all()? {
                print(Stream::Out, &user.to_string())?;
            }
            client.close()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Echo { text } => {
            let body = client.echo(text.join(" ").as_bytes())?;
            print(Stream::Out, &body_text(&body, hex))?;
            client.close()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Send(args) => send(client, &args, wait),
        Command::Recv(args) => recv(client, &args, hex),
        Command::Interactive => unreachable!("refused by args::mode"),
    }
}

/// Opens the session in `path`; a session the hub no longer knows is
/// replaced by a new one (with a note on stderr). Refuses an ephemeral grant.
fn open(addr: &str, path: &Path, options: Options) -> Result<SessionClient, Failure> {
    let client = match SessionClient::open(addr, path, options.clone()) {
        Err(ConnectError::ResumeRejected { user }) => {
            print(
                Stream::Err,
                &format!(
                    "relayhub-cli: the hub no longer knows session {user} (expired, or another \
                     hub): starting a new session in {}",
                    path.display()
                ),
            )?;
            SessionClient::connect(
                addr,
                Options {
                    resume: None,
                    state_file: Some(path.to_owned()),
                    ..options
                },
            )
        }
        other => other,
    };
    let client = client.map_err(|error| match error {
        ConnectError::Resolve { .. } => Failure::Message(format!("{error} ({addr})")),
        other => Failure::Connect(other),
    })?;
    if !client.durable() {
        return Err(Failure::Connect(ConnectError::NotDurable));
    }
    Ok(client)
}

/// `recv --session`: prints deliveries and receipts until `--count`
/// deliveries or `--timeout-ms`, acking what it printed.
fn recv(client: SessionClient, args: &RecvArgs, hex: bool) -> Result<ExitCode, Failure> {
    let kind = if client.resumed() { "resumed" } else { "new" };
    print(
        Stream::Err,
        &format!("listening as user {} ({kind} session)", client.user()),
    )?;
    let policy = ReconnectPolicy {
        attempts_max: Some(RECONNECT_ATTEMPTS_MAX),
        ..ReconnectPolicy::default()
    };
    let mut client = ReconnectingClient::new(client, policy)?;
    let deadline = args
        .timeout_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut received = 0;
    while args.count.is_none_or(|count| received < count) {
        let left = deadline.map_or(Duration::MAX, |deadline| {
            deadline.saturating_duration_since(Instant::now())
        });
        let Some(event) = client.recv_timeout(left)? else {
            break;
        };
        if matches!(event, SessionEvent::Deliver { .. }) {
            received += 1;
        }
        if let Some((stream, line)) = session_event_line(&event, hex) {
            print(stream, &line)?;
        }
    }
    client.close()?;
    match args.count {
        Some(count) if received < count => {
            let waited = args.timeout_ms.unwrap_or_default();
            print(
                Stream::Err,
                &format!("relayhub-cli: received {received} of {count} deliveries in {waited} ms"),
            )?;
            Ok(ExitCode::FAILURE)
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// `send --session`: relays, prints the errors about it, waits for its
/// `Stored` (the request timeout at most), then with `--receipt` prints
/// receipts for `wait` more or until every receiver not refused sent one.
/// Exit code 0 when the hub stored it with no error for any receiver.
fn send(mut client: SessionClient, args: &SendArgs, wait: Duration) -> Result<ExitCode, Failure> {
    let body = if args.body_from_stdin() {
        let announced = client.limits().body_bytes_max as usize;
        read_stdin(if announced == 0 {
            BODY_BYTES_MAX
        } else {
            announced
        })?
    } else {
        args.body.join(" ").into_bytes()
    };
    let sent = client.relay(&args.to, &body, args.receipt)?;
    let request_timeout = ClientConfig::default().request_timeout;
    let mut deadline = Instant::now() + request_timeout;
    let mut errors = 0;
    let mut refused = BTreeSet::new();
    let mut receipts = BTreeSet::new();
    let mut stored = None;
    // Acks are cumulative: ack receipts only up to the first entry not printed.
    let mut ackable = 0;
    let mut blocked = false;
    loop {
        if stored.is_some() && (!args.receipt || all_receipted(&args.to, &refused, &receipts)) {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(event) = client.recv_timeout(left)? else {
            break;
        };
        match event {
            SessionEvent::Error(error) if error.request == sent.request => {
                errors += 1;
                refused.insert(error.detail);
                print(Stream::Err, &format!("relayhub-cli: {}", error.summary()))?;
            }
            SessionEvent::Stored {
                request, duplicate, ..
            } if request == sent.request => {
                stored = Some(duplicate);
                deadline = Instant::now() + wait;
                if !duplicate {
                    print(Stream::Out, &format!("sent message {}", sent.message_id))?;
                }
            }
            ref receipt @ SessionEvent::Receipt {
                message_id,
                receiver,
                seq,
                ..
            } if args.receipt => {
                if message_id == sent.message_id {
                    receipts.insert(receiver);
                }
                if !blocked {
                    ackable = seq;
                }
                if let Some((stream, line)) = session_event_line(receipt, false) {
                    print(stream, &line)?;
                }
            }
            ref entry if entry.seq() != 0 => blocked = true,
            _ => {}
        }
    }
    if ackable > 0 {
        client.ack(ackable)?;
    }
    client.close()?;
    let message_id = sent.message_id;
    match stored {
        None => {
            print(
                Stream::Err,
                &format!(
                    "relayhub-cli: the hub did not confirm message {message_id} within {} ms",
                    request_timeout.as_millis()
                ),
            )?;
            return Ok(ExitCode::FAILURE);
        }
        Some(true) => {
            print(
                Stream::Err,
                &format!(
                    "relayhub-cli: the hub already had message {message_id} of this session \
                     (is the session file older than the session?): not sent again"
                ),
            )?;
            return Ok(ExitCode::FAILURE);
        }
        Some(false) => {}
    }
    if args.receipt {
        for receiver in unique(&args.to) {
            if !refused.contains(&receiver) && !receipts.contains(&receiver) {
                print(
                    Stream::Err,
                    &format!(
                        "relayhub-cli: no receipt from user {receiver} within {} ms \
                         (recv --session prints it when it comes)",
                        wait.as_millis()
                    ),
                )?;
            }
        }
    }
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn unique(receivers: &[UserId]) -> BTreeSet<UserId> {
    receivers.iter().copied().collect()
}

fn all_receipted(
    receivers: &[UserId],
    refused: &BTreeSet<UserId>,
    receipts: &BTreeSet<UserId>,
) -> bool {
    unique(receivers)
        .iter()
        .all(|receiver| refused.contains(receiver) || receipts.contains(receiver))
}
