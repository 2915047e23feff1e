//! Wire drivers: one module per target protocol, each sans-IO.
//!
//! A driver encodes a publication (one body to the sender's receivers) into
//! a caller-owned buffer and decodes incoming bytes into [`Event`]s that
//! borrow from the caller's read buffer. The engine owns the sockets.

pub mod inbound;
pub mod itoa;
pub mod nats;
pub mod relayhub;
pub mod resp;
pub mod sink;
pub mod template;

use std::fmt;

/// Largest body any target is asked to carry (relayhub's and NATS' limit).
pub const BODY_BYTES_MAX: usize = 1 << 20;

/// Largest control line or reply header a text parser waits for before it
/// gives up (NATS' own `max_control_line` is 4096).
pub const CONTROL_LINE_BYTES_MAX: usize = 4096;

/// One thing a server said.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A body delivered to this connection.
    Delivery(&'a [u8]),
    /// Redis' reply to PUBLISH: how many subscribers got the message.
    Published(i64),
    /// The server asked for a PONG (NATS keep-alive).
    Ping,
    /// The server answered our PING.
    Pong,
    /// The server reported an error; the text is the server's.
    ServerError(&'a [u8]),
    /// The hub's first frame: the user id it gave this connection.
    Welcome { user: u64 },
    /// The hub refused a request; `code` is a relayhub-protocol `ErrorCode`.
    HubError {
        code: u16,
        request: u64,
        detail: u64,
    },
    /// relayhub v2: the answer to `Hello`: the session, its next resume
    /// token, whether it was resumed and whether it is durable.
    WelcomeV2 {
        user: u64,
        token: [u8; 16],
        resumed: bool,
        durable: bool,
    },
    /// relayhub v2: a delivery from the session's inbox, numbered `seq`;
    /// `flags` holds `REDELIVERY` when an earlier connection got it too.
    DeliveryV2 {
        body: &'a [u8],
        seq: u64,
        flags: u32,
    },
    /// relayhub v2: `receiver` acked this connection's relay `message_id`
    /// (asked for with `RECEIPT`); a durable sender acks `seq` like a
    /// delivery.
    Receipt {
        message_id: u64,
        seq: u64,
        flags: u32,
    },
    /// relayhub v2: the hub handled every receiver of relay `request`.
    Stored {
        request: u64,
        message_id: u64,
        duplicate: bool,
    },
    /// NATS, JetStream runs: a message with its subject and reply subject
    /// (deliveries carry their `$JS.ACK` subject, publish acks their
    /// reply inbox).
    Message {
        subject: &'a [u8],
        reply: &'a [u8],
        body: &'a [u8],
    },
    /// Redis, durable runs: an `XADD` was appended (its entry id).
    StreamAppended(&'a [u8]),
    /// Redis, durable runs: an `XREADGROUP` reply holding `count` entries,
    /// read with [`resp::entries`].
    StreamEntries { entries: &'a [u8], count: u64 },
    /// Anything else (`+OK`, `INFO`, subscription confirmations, replies).
    Other,
}

/// Why incoming bytes could not be decoded. The stream cannot be trusted
/// after any of these; the engine counts it and closes the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Not the protocol: names what was wrong.
    Malformed(&'static str),
    /// A length beyond the parser's limit, before any allocation.
    TooLarge { bytes: u64 },
    /// The relayhub codec refused the bytes.
    Protocol(String),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Malformed(what) => write!(f, "malformed input: {what}"),
            WireError::TooLarge { bytes } => write!(f, "length {bytes} beyond the limit"),
            WireError::Protocol(detail) => write!(f, "protocol error: {detail}"),
        }
    }
}

impl std::error::Error for WireError {}

/// Result of one decode step: `None` means "incomplete, read more".
pub type Decoded<'a> = Result<Option<(usize, Event<'a>)>, WireError>;

/// Finds the first `\r\n` in `input`, refusing lines longer than the limit.
pub(crate) fn find_line_end(input: &[u8]) -> Result<Option<usize>, WireError> {
    let window = &input[..input.len().min(CONTROL_LINE_BYTES_MAX + 2)];
    match window.windows(2).position(|pair| pair == b"\r\n") {
        Some(end) => Ok(Some(end)),
        None if input.len() > CONTROL_LINE_BYTES_MAX => Err(WireError::TooLarge {
            bytes: input.len() as u64,
        }),
        None => Ok(None),
    }
}

/// Parses an unsigned decimal, refusing empty input, signs and overflow.
pub(crate) fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |value, &digit| {
        if !digit.is_ascii_digit() {
            return None;
        }
        value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Feeds `input` to `decode` split at every position (two chunks), as a
    /// socket may deliver it, and returns the events of the whole input;
    /// asserts every split gives the same events as the whole.
    pub fn decode_all_splits<F>(input: &[u8], mut decode: F) -> Vec<String>
    where
        F: FnMut(&[u8]) -> Decoded<'_>,
    {
        let whole = decode_stream(input, input.len(), &mut decode);
        for split in 1..input.len() {
            let parts = decode_stream(input, split, &mut decode);
            assert_eq!(parts, whole, "split at {split}");
        }
        whole
    }

    /// Decodes `input` arriving in chunks of `chunk` bytes into a buffer.
    fn decode_stream<F>(input: &[u8], chunk: usize, decode: &mut F) -> Vec<String>
    where
        F: FnMut(&[u8]) -> Decoded<'_>,
    {
        let mut buffer: Vec<u8> = Vec::new();
        let mut events = Vec::new();
        for piece in input.chunks(chunk) {
            buffer.extend_from_slice(piece);
            while let Some((used, event)) = decode(&buffer).expect("decodes") {
                events.push(format!("{event:?}"));
                buffer.drain(..used);
            }
        }
        assert!(buffer.is_empty(), "left over: {buffer:?}");
        events
    }
}
