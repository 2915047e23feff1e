//! The one-shot commands: connect, do one thing, print, exit.

use std::{
    io::{self, Read},
    process::ExitCode,
    time::{Duration, Instant},
};

use relayhub_client::{Client, Event};

use crate::{
    args::{RecvArgs, SendArgs},
    output::{body_text, print, Stream},
    Failure,
};

/// `identity`: prints the user id.
pub fn identity(client: &mut Client) -> Result<ExitCode, Failure> {
    let user = client.identity()?;
    print(Stream::Out, &user.to_string())?;
    Ok(ExitCode::SUCCESS)
}

/// `list`: prints every other user's id, one per line.
pub fn list(client: &mut Client) -> Result<ExitCode, Failure> {
    for user in client.list_all()? {
        print(Stream::Out, &user.to_string())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `echo`: prints what the hub sends back.
pub fn echo(client: &mut Client, text: &[String], hex: bool) -> Result<ExitCode, Failure> {
    let body = client.echo(text.join(" ").as_bytes())?;
    print(Stream::Out, &body_text(&body, hex))?;
    Ok(ExitCode::SUCCESS)
}

/// `send`: relays, then waits `wait` for the errors the hub reports
/// asynchronously (unknown receivers); each is printed, and any makes the
/// exit code 1. Deliveries to this short-lived connection are ignored.
pub fn send(client: &mut Client, args: &SendArgs, wait: Duration) -> Result<ExitCode, Failure> {
    let body = if args.body_from_stdin() {
        read_stdin(client.limits().body_bytes_max)?
    } else {
        args.body.join(" ").into_bytes()
    };
    let request = client.relay(&args.to, &body)?;
    let deadline = Instant::now() + wait;
    let mut errors = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.recv_timeout(left)? {
            None => break,
            Some(Event::HubError(error)) if error.request == request => {
                errors += 1;
                print(Stream::Err, &format!("relayhub-cli: {}", error.summary()))?;
            }
            Some(_) => {}
        }
    }
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Reads the body from stdin, at most one byte past the limit: enough for
/// the relay to refuse it with a clear error, without reading a huge file.
pub fn read_stdin(body_bytes_max: usize) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    io::stdin()
        .lock()
        .take(body_bytes_max as u64 + 1)
        .read_to_end(&mut body)?;
    Ok(body)
}

/// `recv`: prints deliveries until `--count` of them arrived or
/// `--timeout-ms` passed; exit code 1 when a count was asked and not met.
pub fn recv(client: &mut Client, args: &RecvArgs, hex: bool) -> Result<ExitCode, Failure> {
    print(
        Stream::Err,
        &format!("listening as user {}", client.user_id()),
    )?;
    let deadline = args
        .timeout_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut received = 0;
    while args.count.is_none_or(|count| received < count) {
        let left = deadline.map_or(Duration::MAX, |deadline| {
            deadline.saturating_duration_since(Instant::now())
        });
        match client.recv_timeout(left)? {
            None => break,
            Some(Event::Deliver { from, body }) => {
                received += 1;
                print(
                    Stream::Out,
                    &format!("from {from}: {}", body_text(&body, hex)),
                )?;
            }
            Some(Event::HubError(error)) => {
                print(Stream::Err, &format!("relayhub-cli: {}", error.summary()))?;
            }
            Some(_) => {}
        }
    }
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
