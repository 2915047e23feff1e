//! Interactive mode: commands from stdin on the main thread, events printed
//! by a reader thread as they arrive (the client is split in two halves).
//!
//! Replies are not awaited by the command loop: `id` sends a request and
//! the reader prints "you are user N" when the reply comes. At `quit` or end
//! of input an empty echo acts as a barrier: once its reply arrives every
//! earlier reply has been printed, and the reader lingers `--wait-ms` more
//! for asynchronous errors (unknown receivers) before the process exits.

use std::{
    io::{self, BufRead},
    process::{self, ExitCode},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use relayhub_client::{Client, ClientError, Event, Receiver, Sender};

use crate::{
    command::{parse_line, Line, HELP},
    output::{event_line, print, Stream},
    Failure,
};

/// How often the reader looks at the barrier while nothing arrives.
const READER_POLL: Duration = Duration::from_millis(100);

/// Longest wait for the barrier's reply before exiting anyway.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the command loop until `quit` or end of input.
/// `linger`: how long to keep printing after the barrier, for asynchronous
/// errors (`--wait-ms`).
pub fn run(client: Client, hex: bool, linger: Duration) -> Result<ExitCode, Failure> {
    print(
        Stream::Out,
        &format!(
            "connected as user {} (type `help` for commands)",
            client.user_id()
        ),
    )?;
    let (mut sender, receiver) = client.split();
    // The request id of the barrier echo; 0 until quitting.
    let barrier = Arc::new(AtomicU64::new(0));
    let reader = thread::spawn({
        let barrier = Arc::clone(&barrier);
        move || print_events(receiver, &barrier, hex, linger)
    });
    for line in io::stdin().lock().lines() {
        match parse_line(&line?) {
            Ok(Line::Quit) => break,
            Ok(line) => execute(line, &mut sender)?,
            Err(message) => print(Stream::Err, &message)?,
        }
    }
    let request = sender.send_echo(b"")?;
    barrier.store(request, Ordering::Release);
    sender.flush()?;
    reader.join().expect("the reader thread does not panic");
    Ok(ExitCode::SUCCESS)
}

/// Sends what a line asks for. Errors that leave the connection open
/// (a limit) are printed; others end the session.
fn execute(line: Line, sender: &mut Sender) -> Result<(), Failure> {
    let sent = match line {
        Line::Send { to, body } => sender.send_relay(&to, body.as_bytes()).map(drop),
        Line::List { after } => sender.send_list(after, 0).map(drop),
        Line::Identity => sender.send_identity().map(drop),
        Line::Echo(text) => sender.send_echo(text.as_bytes()).map(drop),
        Line::Help => return Ok(print(Stream::Out, HELP)?),
        Line::Empty | Line::Quit => return Ok(()),
    };
    match sent.and_then(|()| sender.flush()) {
        Err(error) if !error.closes_connection() => {
            Ok(print(Stream::Err, &format!("error: {error}"))?)
        }
        result => Ok(result?),
    }
}

/// The reader thread: prints every event. A fatal error ends the process
/// with code 1 (the main thread may be blocked reading stdin).
fn print_events(mut receiver: Receiver, barrier: &AtomicU64, hex: bool, linger: Duration) {
    let mut barrier_seen_at = None;
    let mut linger_until = None;
    loop {
        let now = Instant::now();
        if linger_until.is_some_and(|until| now >= until) {
            return;
        }
        if barrier.load(Ordering::Acquire) != 0 && linger_until.is_none() {
            let seen_at = *barrier_seen_at.get_or_insert(now);
            if now.duration_since(seen_at) > BARRIER_TIMEOUT {
                return;
            }
        }
        let timeout = linger_until.map_or(READER_POLL, |until: Instant| until - now);
        let event = match receiver.recv_timeout(timeout) {
            Ok(Some(event)) => event,
            Ok(None) => continue,
            Err(error) => exit_with(&error),
        };
        // Loaded after the event arrived: the barrier may have been set
        // while this thread was blocked receiving.
        let barrier_request = barrier.load(Ordering::Acquire);
        let is_barrier_reply = matches!(
            event,
            Event::EchoReply { request, .. } if request == barrier_request
        );
        if barrier_request != 0 && is_barrier_reply {
            linger_until = Some(Instant::now() + linger);
            continue;
        }
        let (stream, line) = event_line(&event, hex);
        if print(stream, &line).is_err() {
            process::exit(1);
        }
    }
}

fn exit_with(error: &ClientError) -> ! {
    let _ = print(Stream::Err, &format!("relayhub-cli: {error}"));
    process::exit(1);
}
