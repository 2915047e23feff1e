//! The NATS client protocol, the small part a pub/sub load needs.
//!
//! Each client holds one connection, subscribes to its own subject
//! `r.<client>` and publishes a relay to K receivers as K `PUB`s.
//! Handshake: the server sends `INFO {...}`; we send
//! `CONNECT {"verbose":false,"pedantic":false}`, `SUB r.<client> 1` and a
//! `PING`, and wait for the `PONG` (so the subscription is in place before
//! anyone publishes).

use super::itoa::push_decimal;
use super::{find_line_end, parse_decimal, Decoded, Event, WireError, BODY_BYTES_MAX};
use bytes::BufMut;

/// The subject client `client` listens on.
pub fn push_subject(out: &mut impl BufMut, client: u32) {
    out.put_slice(b"r.");
    push_decimal(out, u64::from(client));
}

/// CONNECT + SUB + PING: everything a client sends before the run.
pub fn encode_handshake(out: &mut impl BufMut, client: u32) {
    out.put_slice(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB ");
    push_subject(out, client);
    out.put_slice(b" 1\r\nPING\r\n");
}

/// One `PUB` of `body` to client `receiver`'s subject.
pub fn encode_publish(out: &mut impl BufMut, receiver: u32, body: &[u8]) {
    out.put_slice(b"PUB ");
    push_subject(out, receiver);
    out.put_u8(b' ');
    push_decimal(out, body.len() as u64);
    out.put_slice(b"\r\n");
    out.put_slice(body);
    out.put_slice(b"\r\n");
}

/// The answer to a server's PING.
pub const PONG: &[u8] = b"PONG\r\n";

/// Decodes one server message from the start of `input`.
pub fn decode(input: &[u8]) -> Decoded<'_> {
    let Some(line_end) = find_line_end(input)? else {
        return Ok(None);
    };
    let line = &input[..line_end];
    let after_line = line_end + 2;
    if let Some(arguments) = line.strip_prefix(b"MSG ") {
        return decode_msg(input, arguments, after_line);
    }
    let event = if line == b"PING" {
        Event::Ping
    } else if line == b"PONG" {
        Event::Pong
    } else if line == b"+OK" || line.starts_with(b"INFO ") {
        Event::Other
    } else if let Some(text) = line.strip_prefix(b"-ERR") {
        Event::ServerError(text.trim_ascii())
    } else {
        return Err(WireError::Malformed("unknown NATS operation"));
    };
    Ok(Some((after_line, event)))
}

/// `MSG <subject> <sid> [reply-to] <#bytes>` then the payload and `\r\n`.
fn decode_msg<'a>(input: &'a [u8], arguments: &[u8], after_line: usize) -> Decoded<'a> {
    let length_text = arguments
        .split(|&byte| byte == b' ')
        .rfind(|token| !token.is_empty())
        .ok_or(WireError::Malformed("MSG without a length"))?;
    let length = parse_decimal(length_text).ok_or(WireError::Malformed("MSG length"))?;
    if length > BODY_BYTES_MAX as u64 {
        return Err(WireError::TooLarge { bytes: length });
    }
    let length = length as usize;
    let end = after_line + length;
    if input.len() < end + 2 {
        return Ok(None);
    }
    if &input[end..end + 2] != b"\r\n" {
        return Err(WireError::Malformed("MSG payload not followed by CRLF"));
    }
    Ok(Some((end + 2, Event::Delivery(&input[after_line..end]))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::decode_all_splits;

    #[test]
    fn encodes_publish_and_handshake() {
        let mut out = Vec::new();
        encode_publish(&mut out, 42, b"hello");
        assert_eq!(out, b"PUB r.42 5\r\nhello\r\n");
        out.clear();
        encode_handshake(&mut out, 3);
        assert_eq!(
            out,
            b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB r.3 1\r\nPING\r\n".to_vec()
        );
    }

    #[test]
    fn decodes_a_session_split_anywhere() {
        let input = b"INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\n+OK\r\nPONG\r\n\
MSG r.1 1 5\r\nhello\r\nPING\r\nMSG r.2 1 reply.x 0\r\n\r\nMSG r.1 1 7\r\nwith\r\n!\r\n\
-ERR 'Slow Consumer'\r\n";
        let events = decode_all_splits(input, decode);
        assert_eq!(
            events,
            [
                "Other",
                "Other",
                "Pong",
                "Delivery([104, 101, 108, 108, 111])",
                "Ping",
                "Delivery([])",
                "Delivery([119, 105, 116, 104, 13, 10, 33])",
                "ServerError([39, 83, 108, 111, 119, 32, 67, 111, 110, 115, 117, 109, 101, 114, 39])",
            ]
        );
    }

    #[test]
    fn refuses_garbage_and_huge_lengths() {
        assert_eq!(
            decode(b"HELLO\r\n"),
            Err(WireError::Malformed("unknown NATS operation"))
        );
        assert_eq!(
            decode(b"MSG r.1 1 x\r\n"),
            Err(WireError::Malformed("MSG length"))
        );
        assert_eq!(
            decode(b"MSG r.1 1 99999999999\r\n"),
            Err(WireError::TooLarge {
                bytes: 99_999_999_999
            })
        );
        assert_eq!(
            decode(b"MSG r.1 1 1\r\nab\r\n"),
            Err(WireError::Malformed("MSG payload not followed by CRLF"))
        );
        assert!(matches!(
            decode(&[b'x'; 5000]),
            Err(WireError::TooLarge { .. })
        ));
        assert_eq!(decode(b"MSG r.1 1 5\r\nhel"), Ok(None));
    }
}
