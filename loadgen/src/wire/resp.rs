//! Redis pub/sub over RESP2, the small part a pub/sub load needs.
//!
//! Each client holds two connections: a subscriber (`SUBSCRIBE r.<client>`)
//! and a publisher. A relay to K receivers is K `PUBLISH`es on the
//! publisher connection; each is answered with an integer, the number of
//! subscribers reached (0 means the message went nowhere: counted as an
//! error, not silently dropped).

use super::itoa::{decimal_digits, push_decimal};
use super::nats::push_subject as push_channel;
use super::{find_line_end, parse_decimal, Decoded, Event, WireError, BODY_BYTES_MAX};
use bytes::BufMut;

/// Largest array a reply may hold; pub/sub replies have 3 or 4 elements.
const ARRAY_ELEMENTS_MAX: u64 = 8;

/// `SUBSCRIBE r.<client>` then `PING` (answered after the subscription).
pub fn encode_subscribe(out: &mut impl BufMut, client: u32) {
    let mut channel = Vec::with_capacity(16);
    push_channel(&mut channel, client);
    push_command(out, &[b"SUBSCRIBE", &channel]);
}

/// `PING`, to learn that everything before it was processed.
pub fn encode_ping(out: &mut impl BufMut) {
    push_command(out, &[b"PING"]);
}

/// One `PUBLISH r.<receiver> <body>`.
pub fn encode_publish(out: &mut impl BufMut, receiver: u32, body: &[u8]) {
    out.put_slice(b"*3\r\n$7\r\nPUBLISH\r\n$");
    push_decimal(out, 2 + decimal_digits(u64::from(receiver)));
    out.put_slice(b"\r\n");
    push_channel(out, receiver);
    out.put_slice(b"\r\n$");
    push_decimal(out, body.len() as u64);
    out.put_slice(b"\r\n");
    out.put_slice(body);
    out.put_slice(b"\r\n");
}

/// A command as an array of bulk strings.
fn push_command(out: &mut impl BufMut, parts: &[&[u8]]) {
    out.put_u8(b'*');
    push_decimal(out, parts.len() as u64);
    out.put_slice(b"\r\n");
    for part in parts {
        out.put_u8(b'$');
        push_decimal(out, part.len() as u64);
        out.put_slice(b"\r\n");
        out.put_slice(part);
        out.put_slice(b"\r\n");
    }
}

/// One RESP element that is not an array.
#[derive(Debug, PartialEq, Eq)]
enum Element<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Integer(i64),
    Bulk(Option<&'a [u8]>),
    Array(u64),
}

/// Decodes one element at `input[at..]`: `None` if incomplete, else the
/// element and the offset after it.
fn element(input: &[u8], at: usize) -> Result<Option<(Element<'_>, usize)>, WireError> {
    let rest = &input[at..];
    let Some(line_end) = find_line_end(rest)? else {
        return Ok(None);
    };
    if line_end == 0 {
        return Err(WireError::Malformed("empty RESP line"));
    }
    let text = &rest[1..line_end];
    let next = at + line_end + 2;
    let element = match rest[0] {
        b'+' => Element::Simple(text),
        b'-' => Element::Error(text),
        b':' => Element::Integer(parse_signed(text)?),
        b'*' => {
            let count = parse_decimal(text).ok_or(WireError::Malformed("RESP array length"))?;
            if count > ARRAY_ELEMENTS_MAX {
                return Err(WireError::TooLarge { bytes: count });
            }
            Element::Array(count)
        }
        b'$' if text == b"-1" => Element::Bulk(None),
        b'$' => {
            let length = parse_decimal(text).ok_or(WireError::Malformed("RESP bulk length"))?;
            if length > BODY_BYTES_MAX as u64 + 64 {
                return Err(WireError::TooLarge { bytes: length });
            }
            let end = next + length as usize;
            if input.len() < end + 2 {
                return Ok(None);
            }
            if &input[end..end + 2] != b"\r\n" {
                return Err(WireError::Malformed(
                    "RESP bulk string not followed by CRLF",
                ));
            }
            return Ok(Some((Element::Bulk(Some(&input[next..end])), end + 2)));
        }
        _ => return Err(WireError::Malformed("unknown RESP type")),
    };
    Ok(Some((element, next)))
}

fn parse_signed(text: &[u8]) -> Result<i64, WireError> {
    let malformed = WireError::Malformed("RESP integer");
    match text.strip_prefix(b"-") {
        Some(digits) => parse_decimal(digits)
            .map(|value| -(value as i64))
            .ok_or(malformed),
        None => parse_decimal(text)
            .and_then(|value| i64::try_from(value).ok())
            .ok_or(malformed),
    }
}

/// Decodes one reply or push from the start of `input`.
pub fn decode(input: &[u8]) -> Decoded<'_> {
    let Some((first, mut at)) = element(input, 0)? else {
        return Ok(None);
    };
    let event = match first {
        Element::Simple(b"PONG") => Event::Pong,
        Element::Simple(_) | Element::Bulk(_) => Event::Other,
        Element::Error(text) => Event::ServerError(text),
        Element::Integer(count) => Event::Published(count),
        Element::Array(count) => {
            // A push: ["message", channel, payload], ["subscribe", channel, n],
            // ["pong", ""] in subscribed mode, ...
            let mut items: [Option<&[u8]>; ARRAY_ELEMENTS_MAX as usize] = Default::default();
            for slot in items.iter_mut().take(count as usize) {
                let Some((item, next)) = element(input, at)? else {
                    return Ok(None);
                };
                at = next;
                *slot = match item {
                    Element::Bulk(bytes) => bytes,
                    Element::Simple(text) => Some(text),
                    Element::Integer(_) => None,
                    Element::Error(_) | Element::Array(_) => {
                        return Err(WireError::Malformed("nested RESP array or error"))
                    }
                };
            }
            match (items[0], count) {
                (Some(b"message"), 3) => Event::Delivery(
                    items[2].ok_or(WireError::Malformed("message without payload"))?,
                ),
                (Some(b"pong"), _) => Event::Pong,
                _ => Event::Other,
            }
        }
    };
    Ok(Some((at, event)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::decode_all_splits;

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode_publish(&mut out, 12345, b"hi");
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$7\r\nr.12345\r\n$2\r\nhi\r\n");
        out.clear();
        encode_publish(&mut out, 4_000_000_000, b"");
        assert_eq!(
            out,
            b"*3\r\n$7\r\nPUBLISH\r\n$12\r\nr.4000000000\r\n$0\r\n\r\n"
        );
        out.clear();
        encode_subscribe(&mut out, 7);
        encode_ping(&mut out);
        assert_eq!(
            out,
            b"*2\r\n$9\r\nSUBSCRIBE\r\n$3\r\nr.7\r\n*1\r\n$4\r\nPING\r\n"
        );
    }

    #[test]
    fn decodes_a_session_split_anywhere() {
        let input = b"*3\r\n$9\r\nsubscribe\r\n$3\r\nr.7\r\n:1\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n\
*3\r\n$7\r\nmessage\r\n$3\r\nr.7\r\n$4\r\nab\r\n\r\n:1\r\n:0\r\n+PONG\r\n\
-ERR wrong\r\n$-1\r\n*3\r\n$7\r\nmessage\r\n$3\r\nr.7\r\n$0\r\n\r\n";
        let events = decode_all_splits(input, decode);
        assert_eq!(
            events,
            [
                "Other",
                "Pong",
                "Delivery([97, 98, 13, 10])",
                "Published(1)",
                "Published(0)",
                "Pong",
                "ServerError([69, 82, 82, 32, 119, 114, 111, 110, 103])",
                "Other",
                "Delivery([])",
            ]
        );
    }

    #[test]
    fn refuses_garbage_and_huge_lengths() {
        assert_eq!(
            decode(b"?x\r\n"),
            Err(WireError::Malformed("unknown RESP type"))
        );
        assert_eq!(
            decode(b"$99999999\r\n"),
            Err(WireError::TooLarge { bytes: 99_999_999 })
        );
        assert_eq!(decode(b"*100\r\n"), Err(WireError::TooLarge { bytes: 100 }));
        assert_eq!(
            decode(b"*1\r\n*1\r\n:1\r\n"),
            Err(WireError::Malformed("nested RESP array or error"))
        );
        assert_eq!(decode(b":-5\r\n"), Ok(Some((5, Event::Published(-5)))));
        assert_eq!(decode(b"*3\r\n$7\r\nmessage\r\n"), Ok(None));
    }
}
