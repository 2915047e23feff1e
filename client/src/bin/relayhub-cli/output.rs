//! How bodies and events are printed: one line each, stdout for data,
//! stderr for errors, and never a panic when stdout goes away.

use std::{
    fmt::Write as _,
    io::{self, Write},
};

use relayhub_client::{session::SessionEvent, Event};

/// A body as one line: lossy UTF-8 with control characters escaped (a body
/// cannot break the one-line-per-delivery format or drive the terminal),
/// or lowercase hex with `--hex` for the exact bytes.
pub fn body_text(body: &[u8], hex: bool) -> String {
    if hex {
        return body
            .iter()
            .fold(String::with_capacity(body.len() * 2), |mut out, byte| {
                let _ = write!(out, "{byte:02x}");
                out
            });
    }
    String::from_utf8_lossy(body)
        .chars()
        .fold(String::with_capacity(body.len()), |mut out, c| {
            if c.is_control() && c != '\t' {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
            out
        })
}

/// Where a line goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Data: deliveries and replies.
    Out,
    /// Errors the hub reported.
    Err,
}

/// An event as the line interactive mode prints.
pub fn event_line(event: &Event, hex: bool) -> (Stream, String) {
    match event {
        Event::Deliver { from, body } => (
            Stream::Out,
            format!("from {from}: {}", body_text(body, hex)),
        ),
        Event::HubError(error) => (Stream::Err, format!("error: {}", error.summary())),
        Event::IdentityReply { user, .. } => (Stream::Out, format!("you are user {user}")),
        Event::EchoReply { body, .. } => (Stream::Out, format!("echo: {}", body_text(body, hex))),
        Event::ListReply { users, more, .. } => (Stream::Out, list_line(users, *more)),
    }
}

/// A version-2 event as `recv --session` prints it: deliveries and receipts
/// on stdout (`(redelivered)` when the hub sent them on an earlier
/// connection), errors on stderr; `None` for what it does not print.
pub fn session_event_line(event: &SessionEvent, hex: bool) -> Option<(Stream, String)> {
    let marker = |redelivery: bool| if redelivery { " (redelivered)" } else { "" };
    Some(match event {
        SessionEvent::Deliver {
            from,
            body,
            redelivery,
            ..
        } => (
            Stream::Out,
            format!(
                "from {from}{}: {}",
                marker(*redelivery),
                body_text(body, hex)
            ),
        ),
        SessionEvent::Receipt {
            message_id,
            receiver,
            redelivery,
            ..
        } => (
            Stream::Out,
            format!(
                "receipt: user {receiver} got message {message_id}{}",
                marker(*redelivery)
            ),
        ),
        SessionEvent::Error(error) => (Stream::Err, format!("relayhub-cli: {}", error.summary())),
        SessionEvent::Reconnected { .. } => (
            Stream::Err,
            "relayhub-cli: reconnected, session resumed".to_owned(),
        ),
        _ => return None,
    })
}

fn list_line(users: &[u64], more: bool) -> String {
    let mut line = String::from("users:");
    if users.is_empty() {
        line.push_str(" (none)");
    }
    for user in users {
        let _ = write!(line, " {user}");
    }
    if let (true, Some(last)) = (more, users.last()) {
        let _ = write!(line, " (more: type `list {last}`)");
    }
    line
}

/// Writes one line to `stream`. Fails (instead of panicking as `println!`
/// does) when the reader went away, e.g. `relayhub-cli recv | head -1`.
pub fn print(stream: Stream, line: &str) -> io::Result<()> {
    match stream {
        Stream::Out => writeln!(io::stdout().lock(), "{line}"),
        Stream::Err => writeln!(io::stderr().lock(), "{line}"),
    }
}

#[cfg(test)]
mod tests {
    use relayhub_client::{ErrorCode, HubError};

    use super::*;

    #[test]
    fn bodies_print_on_one_line() {
        assert_eq!(body_text(b"hello", false), "hello");
        assert_eq!(body_text(b"a\nb\tc\x1b[2J", false), "a\\nb\tc\\u{1b}[2J");
        assert_eq!(body_text(b"\xffok", false), "\u{fffd}ok");
        assert_eq!(body_text(b"\x00\xffA", true), "00ff41");
        assert_eq!(body_text(b"", true), "");
    }

    #[test]
    fn session_events_read_like_the_docs() {
        let deliver = |redelivery| SessionEvent::Deliver {
            from: 2,
            seq: 5,
            message_id: 9,
            body: "hello".into(),
            redelivery,
        };
        assert_eq!(
            session_event_line(&deliver(false), false),
            Some((Stream::Out, "from 2: hello".to_owned()))
        );
        assert_eq!(
            session_event_line(&deliver(true), false).unwrap().1,
            "from 2 (redelivered): hello"
        );
        let receipt = SessionEvent::Receipt {
            message_id: 12,
            receiver: 7,
            seq: 3,
            redelivery: false,
        };
        assert_eq!(
            session_event_line(&receipt, false).unwrap().1,
            "receipt: user 7 got message 12"
        );
        let stored = SessionEvent::Stored {
            request: 1,
            message_id: 1,
            duplicate: false,
        };
        assert_eq!(session_event_line(&stored, false), None);
    }

    #[test]
    fn events_read_like_the_docs() {
        let deliver = Event::Deliver {
            from: 2,
            body: "hello".into(),
        };
        assert_eq!(
            event_line(&deliver, false),
            (Stream::Out, "from 2: hello".to_owned())
        );
        let error = Event::HubError(HubError {
            code: ErrorCode::UnknownReceiver,
            request: 4,
            detail: 9,
        });
        assert_eq!(
            event_line(&error, false),
            (Stream::Err, "error: user 9 is not connected".to_owned())
        );
        let page = Event::ListReply {
            request: 1,
            users: vec![2, 5],
            more: true,
        };
        assert_eq!(
            event_line(&page, false).1,
            "users: 2 5 (more: type `list 5`)"
        );
        let empty = Event::ListReply {
            request: 1,
            users: vec![],
            more: false,
        };
        assert_eq!(event_line(&empty, false).1, "users: (none)");
    }
}
