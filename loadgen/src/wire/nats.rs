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
    Ok(payload(input, length_text, after_line)?.map(|(used, body)| (used, Event::Delivery(body))))
}

/// The payload of `length_text` bytes after the control line; `None` if
/// incomplete.
fn payload<'a>(
    input: &'a [u8],
    length_text: &[u8],
    after_line: usize,
) -> Result<Option<(usize, &'a [u8])>, WireError> {
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
    Ok(Some((end + 2, &input[after_line..end])))
}

// ---- JetStream (durable runs) ------------------------------------------
//
// Subjects of a durable run against nats-server: client `i` publishes to
// receiver `r` on `js.<r>` with reply subject `ja.<i>` (its publish acks
// come back there), and receives from its durable push consumer `c<i>`
// (filter `js.<i>`) on the deliver subject `jd.<i>` (a push consumer's
// MSG keeps the message's subject `js.<i>`; its reply subject is the
// `$JS.ACK...` to ack it on). The stream captures `js.*`.

/// Prefix of the subjects the stream captures.
pub const JS_PUBLISH_PREFIX: &[u8] = b"js.";
/// Prefix of the deliver subjects of the consumers.
pub const JS_DELIVER_PREFIX: &[u8] = b"jd.";
/// Prefix of the reply subjects publish acks come back on.
pub const JS_ACK_INBOX_PREFIX: &[u8] = b"ja.";
/// Prefix of a JetStream delivery's reply subject (where its ack goes).
pub const JS_ACK_PREFIX: &[u8] = b"$JS.ACK.";

fn push_prefixed(out: &mut impl BufMut, prefix: &[u8], client: u32) {
    out.put_slice(prefix);
    push_decimal(out, u64::from(client));
}

/// CONNECT, the subscriptions a JetStream client needs on this connection
/// (`deliveries`: its deliver subject, sid 1; `acks`: its publish-ack
/// inbox, sid 2), and a PING to know they are in place.
pub fn encode_js_handshake(out: &mut impl BufMut, client: u32, deliveries: bool, acks: bool) {
    out.put_slice(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n");
    if deliveries {
        out.put_slice(b"SUB ");
        push_prefixed(out, JS_DELIVER_PREFIX, client);
        out.put_slice(b" 1\r\n");
    }
    if acks {
        out.put_slice(b"SUB ");
        push_prefixed(out, JS_ACK_INBOX_PREFIX, client);
        out.put_slice(b" 2\r\n");
    }
    out.put_slice(b"PING\r\n");
}

/// A publish of `body` into the stream for `receiver`, its ack to come
/// back to `sender`'s inbox: `PUB js.<receiver> ja.<sender> <len>`.
pub fn encode_js_publish(out: &mut impl BufMut, receiver: u32, sender: u32, body: &[u8]) {
    out.put_slice(b"PUB ");
    push_prefixed(out, JS_PUBLISH_PREFIX, receiver);
    out.put_u8(b' ');
    push_prefixed(out, JS_ACK_INBOX_PREFIX, sender);
    out.put_u8(b' ');
    push_decimal(out, body.len() as u64);
    out.put_slice(b"\r\n");
    out.put_slice(body);
    out.put_slice(b"\r\n");
}

/// Acknowledges a JetStream delivery: an empty publish to its `$JS.ACK`
/// reply subject.
pub fn encode_ack(out: &mut impl BufMut, reply: &[u8]) {
    out.put_slice(b"PUB ");
    out.put_slice(reply);
    out.put_slice(b" 0\r\n\r\n");
}

/// A request to the JetStream API: `PUB <subject> <reply> <len>` + body.
pub fn encode_request(out: &mut impl BufMut, subject: &[u8], reply: &[u8], body: &[u8]) {
    out.put_slice(b"PUB ");
    out.put_slice(subject);
    out.put_u8(b' ');
    out.put_slice(reply);
    out.put_u8(b' ');
    push_decimal(out, body.len() as u64);
    out.put_slice(b"\r\n");
    out.put_slice(body);
    out.put_slice(b"\r\n");
}

/// Decodes one server message like [`decode`], but a `MSG` keeps its
/// subject and reply subject ([`Event::Message`]).
pub fn decode_with_subjects(input: &[u8]) -> Decoded<'_> {
    let Some(line_end) = find_line_end(input)? else {
        return Ok(None);
    };
    let Some(arguments) = input[..line_end].strip_prefix(b"MSG ") else {
        return decode(input);
    };
    let mut tokens = arguments
        .split(|&byte| byte == b' ')
        .filter(|token| !token.is_empty());
    let (subject, _sid) = match (tokens.next(), tokens.next()) {
        (Some(subject), Some(sid)) => (subject, sid),
        _ => return Err(WireError::Malformed("MSG without subject and sid")),
    };
    let (reply, length_text) = match (tokens.next(), tokens.next(), tokens.next()) {
        (Some(length), None, None) => (&b""[..], length),
        (Some(reply), Some(length), None) => (reply, length),
        _ => return Err(WireError::Malformed("MSG with too many arguments")),
    };
    Ok(
        payload(input, length_text, line_end + 2)?.map(|(used, body)| {
            (
                used,
                Event::Message {
                    subject,
                    reply,
                    body,
                },
            )
        }),
    )
}

/// What a JetStream delivery's `$JS.ACK` reply subject says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckInfo {
    /// How many times it was delivered (1: the first time).
    pub delivered: u64,
    /// Its sequence in the stream (unique per message).
    pub stream_seq: u64,
    /// The consumer's delivery sequence (every delivery gets the next one).
    pub consumer_seq: u64,
}

impl AckInfo {
    /// Parses `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`
    /// and the longer form with domain and account hash in front of the
    /// stream (and a trailing token).
    pub fn parse(reply: &[u8]) -> Option<AckInfo> {
        let rest = reply.strip_prefix(JS_ACK_PREFIX)?;
        let tokens: Vec<&[u8]> = rest.split(|&byte| byte == b'.').collect();
        let at = match tokens.len() {
            7 => 2,
            9.. => 4,
            _ => return None,
        };
        Some(AckInfo {
            delivered: parse_decimal(tokens[at])?,
            stream_seq: parse_decimal(tokens[at + 1])?,
            consumer_seq: parse_decimal(tokens[at + 2])?,
        })
    }
}

/// What a publish ack (the JSON on a publisher's reply inbox) says:
/// `Ok(duplicate)` when the stream stored the message, else the error text.
pub fn pub_ack(body: &[u8]) -> Result<bool, String> {
    let text = String::from_utf8_lossy(body);
    if !text.contains("\"error\"") && text.contains("\"seq\"") {
        return Ok(text.contains("\"duplicate\":true"));
    }
    Err(text.into_owned())
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

    #[test]
    fn jetstream_encodings() {
        let mut out = Vec::new();
        encode_js_handshake(&mut out, 4, true, true);
        assert_eq!(
            out,
            b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB jd.4 1\r\nSUB ja.4 2\r\nPING\r\n"
                .to_vec()
        );
        out.clear();
        encode_js_handshake(&mut out, 4, false, true);
        assert!(!out.windows(5).any(|w| w == b"jd.4 "));
        out.clear();
        encode_js_publish(&mut out, 9, 4, b"hey");
        assert_eq!(out, b"PUB js.9 ja.4 3\r\nhey\r\n");
        out.clear();
        encode_ack(&mut out, b"$JS.ACK.S.c9.1.5.3.1.0");
        assert_eq!(out, b"PUB $JS.ACK.S.c9.1.5.3.1.0 0\r\n\r\n");
        out.clear();
        encode_request(&mut out, b"$JS.API.INFO", b"_lg.1", b"");
        assert_eq!(out, b"PUB $JS.API.INFO _lg.1 0\r\n\r\n");
    }

    #[test]
    fn decodes_subjects_split_anywhere() {
        let input = b"INFO {}\r\nMSG ja.4 2 26\r\n{\"stream\":\"S\",\"seq\":12345}\r\n\
MSG jd.4 1 $JS.ACK.S.c4.2.7.9.1700000000000000000.0 5\r\nhello\r\nPONG\r\nPING\r\n";
        let events = decode_all_splits(input, decode_with_subjects);
        assert_eq!(events.len(), 5);
        assert_eq!(events[0], "Other");
        assert_eq!(
            events[1],
            format!(
                "{:?}",
                Event::Message {
                    subject: b"ja.4",
                    reply: b"",
                    body: b"{\"stream\":\"S\",\"seq\":12345}"
                }
            )
        );
        assert_eq!(
            events[2],
            format!(
                "{:?}",
                Event::Message {
                    subject: b"jd.4",
                    reply: b"$JS.ACK.S.c4.2.7.9.1700000000000000000.0",
                    body: b"hello"
                }
            )
        );
        assert_eq!(events[3..], ["Pong", "Ping"]);
        assert_eq!(
            decode_with_subjects(b"MSG a\r\n"),
            Err(WireError::Malformed("MSG without subject and sid"))
        );
        assert_eq!(
            decode_with_subjects(b"MSG a 1 b c 2\r\n"),
            Err(WireError::Malformed("MSG with too many arguments"))
        );
    }

    #[test]
    fn parses_ack_subjects_and_pub_acks() {
        let info = AckInfo {
            delivered: 2,
            stream_seq: 7,
            consumer_seq: 9,
        };
        assert_eq!(
            AckInfo::parse(b"$JS.ACK.S.c4.2.7.9.1700000000000000000.0"),
            Some(info)
        );
        assert_eq!(
            AckInfo::parse(b"$JS.ACK.dom.acchash.S.c4.2.7.9.1700000000000000000.0.rand"),
            Some(info)
        );
        assert_eq!(AckInfo::parse(b"$JS.ACK.S.c4.2.7"), None);
        assert_eq!(AckInfo::parse(b"_INBOX.x"), None);
        assert_eq!(pub_ack(b"{\"stream\":\"S\",\"seq\":3}"), Ok(false));
        assert_eq!(
            pub_ack(b"{\"stream\":\"S\",\"seq\":3,\"duplicate\":true}"),
            Ok(true)
        );
        assert!(pub_ack(b"{\"error\":{\"code\":503,\"description\":\"no space\"}}").is_err());
    }
}
