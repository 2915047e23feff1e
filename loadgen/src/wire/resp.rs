//! Redis pub/sub over RESP2, the small part a pub/sub load needs.
//!
//! Each client holds two connections: a subscriber (`SUBSCRIBE r.<client>`)
//! and a publisher. A relay to K receivers is K `PUBLISH`es on the
//! publisher connection; each is answered with an integer, the number of
//! subscribers reached (0 means the message went nowhere: counted as an
//! error, not silently dropped).
//!
//! Durable runs (`--durable`) use Redis Streams instead: one stream
//! `ls.<client>` per receiver with a consumer group `g` (consumer `c`);
//! a relay to K receivers is K `XADD ls.<r> * b <body>` on the publisher
//! connection, each answered with the new entry's id (the publish ack);
//! the subscriber connection loops on `XREADGROUP GROUP g c COUNT n BLOCK
//! 0 STREAMS ls.<client> >` and, after each reply, acks and deletes what
//! it got (`XACK` + `XDEL`, one each per reply) in the same write as the
//! next read. After a reconnect it reads its pending entries first
//! (`... STREAMS ls.<client> 0`, then from the last id it got), in order.

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
    element_within(input, at, ARRAY_ELEMENTS_MAX)
}

/// [`element`] with arrays of up to `array_max` elements; a nil array
/// (`*-1`) is a nil bulk string.
fn element_within(
    input: &[u8],
    at: usize,
    array_max: u64,
) -> Result<Option<(Element<'_>, usize)>, WireError> {
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
        b'*' if text == b"-1" => Element::Bulk(None),
        b'*' => {
            let count = parse_decimal(text).ok_or(WireError::Malformed("RESP array length"))?;
            if count > array_max {
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

// ---- Redis Streams (durable runs) -------------------------------------

/// Most entries one `XREADGROUP` may ask for (and a reply may hold).
pub const STREAM_COUNT_MAX: u64 = 256;

/// The stream key of client `client`: `ls.<client>`.
fn push_key(out: &mut impl BufMut, client: u32) {
    out.put_slice(b"ls.");
    push_decimal(out, u64::from(client));
}

fn key(client: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(16);
    push_key(&mut key, client);
    key
}

/// One `XADD ls.<receiver> * b <body>`, answered with the entry's id.
pub fn encode_xadd(out: &mut impl BufMut, receiver: u32, body: &[u8]) {
    out.put_slice(b"*5\r\n$4\r\nXADD\r\n$");
    push_decimal(out, 3 + decimal_digits(u64::from(receiver)));
    out.put_slice(b"\r\n");
    push_key(out, receiver);
    out.put_slice(b"\r\n$1\r\n*\r\n$1\r\nb\r\n$");
    push_decimal(out, body.len() as u64);
    out.put_slice(b"\r\n");
    out.put_slice(body);
    out.put_slice(b"\r\n");
}

/// `XREADGROUP GROUP g c COUNT <count> BLOCK 0 STREAMS ls.<client> <from>`
/// (`>`: new entries; an id: this consumer's pending entries after it).
pub fn encode_xreadgroup(out: &mut impl BufMut, client: u32, count: u64, from: &[u8]) {
    let mut count_text = Vec::new();
    push_decimal(&mut count_text, count);
    push_command(
        out,
        &[
            b"XREADGROUP",
            b"GROUP",
            b"g",
            b"c",
            b"COUNT",
            &count_text,
            b"BLOCK",
            b"0",
            b"STREAMS",
            &key(client),
            from,
        ],
    );
}

/// `XACK ls.<client> g <ids>` then `XDEL ls.<client> <ids>`: done with
/// them (an acked entry leaves the stream, as an acked inbox entry does).
pub fn encode_xack_xdel(out: &mut impl BufMut, client: u32, ids: &[&[u8]]) {
    let key = key(client);
    let mut parts: Vec<&[u8]> = vec![b"XACK", &key, b"g"];
    parts.extend_from_slice(ids);
    push_command(out, &parts);
    parts.drain(..3);
    parts.splice(0..0, [&b"XDEL"[..], &key]);
    push_command(out, &parts);
}

/// Before a run: `DEL ls.<client>` and `XGROUP CREATE ls.<client> g $ MKSTREAM`.
pub fn encode_stream_setup(out: &mut impl BufMut, client: u32) {
    let key = key(client);
    push_command(out, &[b"DEL", &key]);
    push_command(out, &[b"XGROUP", b"CREATE", &key, b"g", b"$", b"MKSTREAM"]);
}

/// After a run: `DEL ls.<client>`.
pub fn encode_stream_delete(out: &mut impl BufMut, client: u32) {
    push_command(out, &[b"DEL", &key(client)]);
}

/// Decodes one reply of a durable run: `XADD`'s id
/// ([`Event::StreamAppended`]), an `XREADGROUP` reply
/// ([`Event::StreamEntries`]), integers (`XACK`, `XDEL`, `DEL`) and the
/// rest as [`decode`] does.
pub fn decode_durable(input: &[u8]) -> Decoded<'_> {
    let Some((first, at)) = element_within(input, 0, 1)? else {
        return Ok(None);
    };
    let event = match first {
        Element::Simple(b"PONG") => Event::Pong,
        Element::Simple(_) | Element::Bulk(None) | Element::Integer(_) => Event::Other,
        Element::Error(text) => Event::ServerError(text),
        Element::Bulk(Some(id)) => Event::StreamAppended(id),
        Element::Array(0) => Event::Other,
        Element::Array(_) => return decode_read_reply(input, at),
    };
    Ok(Some((at, event)))
}

/// The rest of `*1 *2 <key> *N <entries>` after the `*1`.
fn decode_read_reply(input: &[u8], mut at: usize) -> Decoded<'_> {
    let next = |at: &mut usize, array_max| -> Result<Option<Element<'_>>, WireError> {
        Ok(
            element_within(input, *at, array_max)?.map(|(element, after)| {
                *at = after;
                element
            }),
        )
    };
    let malformed = || WireError::Malformed("unexpected XREADGROUP reply");
    match next(&mut at, 2)? {
        None => return Ok(None),
        Some(Element::Array(2)) => {}
        Some(_) => return Err(malformed()),
    }
    match next(&mut at, 0)? {
        None => return Ok(None),
        Some(Element::Bulk(Some(_))) => {}
        Some(_) => return Err(malformed()),
    }
    let count = match next(&mut at, STREAM_COUNT_MAX)? {
        None => return Ok(None),
        Some(Element::Array(count)) => count,
        Some(_) => return Err(malformed()),
    };
    let start = at;
    for _ in 0..count {
        match stream_entry(input, at)? {
            None => return Ok(None),
            Some((_, _, after)) => at = after,
        }
    }
    Ok(Some((
        at,
        Event::StreamEntries {
            entries: &input[start..at],
            count,
        },
    )))
}

/// One stream entry: its id, its body, and the offset after it.
pub type StreamEntry<'a> = (&'a [u8], &'a [u8], usize);

/// One entry `*2 $id *2 $b $body` at `input[at..]`; `None` if incomplete.
pub fn stream_entry(input: &[u8], mut at: usize) -> Result<Option<StreamEntry<'_>>, WireError> {
    let malformed = || WireError::Malformed("unexpected stream entry");
    let mut parts = [&b""[..]; 3];
    for (index, expected) in [
        (None, Some(2)),
        (Some(0), None),
        (None, Some(2)),
        (Some(1), None),
        (Some(2), None),
    ] {
        let Some((element, after)) = element_within(input, at, 2)? else {
            return Ok(None);
        };
        at = after;
        match (element, index, expected) {
            (Element::Array(count), None, Some(expected)) if count == expected => {}
            (Element::Bulk(Some(bytes)), Some(slot), None) => parts[slot] = bytes,
            _ => return Err(malformed()),
        }
    }
    Ok(Some((parts[0], parts[2], at)))
}

/// The entries of an [`Event::StreamEntries`]: `(id, body)` each.
pub fn entries(entries: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let (id, body, after) = stream_entry(entries, at).ok().flatten()?;
        at = after;
        Some((id, body))
    })
}

/// A stream entry id `<ms>-<seq>` as a pair that orders like the ids.
pub fn parse_stream_id(id: &[u8]) -> Option<(u64, u64)> {
    let dash = id.iter().position(|&byte| byte == b'-')?;
    Some((parse_decimal(&id[..dash])?, parse_decimal(&id[dash + 1..])?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::decode_all_splits;

    #[test]
    fn stream_commands() {
        let mut out = Vec::new();
        encode_xadd(&mut out, 42, b"hi");
        assert_eq!(
            out,
            b"*5\r\n$4\r\nXADD\r\n$5\r\nls.42\r\n$1\r\n*\r\n$1\r\nb\r\n$2\r\nhi\r\n"
        );
        out.clear();
        encode_xreadgroup(&mut out, 3, 16, b">");
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "*11\r\n$10\r\nXREADGROUP\r\n$5\r\nGROUP\r\n$1\r\ng\r\n$1\r\nc\r\n$5\r\nCOUNT\r\n\
             $2\r\n16\r\n$5\r\nBLOCK\r\n$1\r\n0\r\n$7\r\nSTREAMS\r\n$4\r\nls.3\r\n$1\r\n>\r\n"
                .replace(' ', "")
        );
        out.clear();
        encode_xack_xdel(&mut out, 3, &[b"1-0", b"1-1"]);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "*5\r\n$4\r\nXACK\r\n$4\r\nls.3\r\n$1\r\ng\r\n$3\r\n1-0\r\n$3\r\n1-1\r\n\
             *4\r\n$4\r\nXDEL\r\n$4\r\nls.3\r\n$3\r\n1-0\r\n$3\r\n1-1\r\n"
                .replace(' ', "")
        );
        out.clear();
        encode_stream_setup(&mut out, 3);
        encode_stream_delete(&mut out, 3);
        assert!(String::from_utf8(out).unwrap().contains("MKSTREAM"));
        assert_eq!(
            parse_stream_id(b"1700000000000-12"),
            Some((1_700_000_000_000, 12))
        );
        assert_eq!(parse_stream_id(b"17"), None);
    }

    #[test]
    fn decodes_stream_replies_split_anywhere() {
        let input = b"+PONG\r\n$15\r\n1700000000000-0\r\n:2\r\n*-1\r\n\
*1\r\n*2\r\n$4\r\nls.3\r\n*2\r\n\
*2\r\n$3\r\n5-0\r\n*2\r\n$1\r\nb\r\n$5\r\nhello\r\n\
*2\r\n$3\r\n5-1\r\n*2\r\n$1\r\nb\r\n$0\r\n\r\n\
*1\r\n*2\r\n$4\r\nls.3\r\n*0\r\n-ERR no group\r\n";
        let events = decode_all_splits(input, decode_durable);
        assert_eq!(events.len(), 7);
        assert_eq!(
            events[..4],
            [
                "Pong",
                "StreamAppended([49, 55, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 45, 48])",
                "Other",
                "Other"
            ]
        );
        assert!(events[4].starts_with("StreamEntries"), "{}", events[4]);
        assert!(events[5].contains("count: 0"), "{}", events[5]);
        assert!(events[6].starts_with("ServerError"));
        let at = input.windows(6).position(|w| w == b"*1\r\n*2").unwrap();
        let Ok(Some((
            _,
            Event::StreamEntries {
                entries: raw,
                count,
            },
        ))) = decode_durable(&input[at..])
        else {
            panic!("entries");
        };
        assert_eq!(count, 2);
        let got: Vec<_> = entries(raw).collect();
        assert_eq!(got, [(&b"5-0"[..], &b"hello"[..]), (&b"5-1"[..], &b""[..])]);
        assert_eq!(
            decode_durable(b"*1\r\n*2\r\n$4\r\nls.3\r\n*1\r\n*2\r\n$3\r\n5-0\r\n*-1\r\n"),
            Err(WireError::Malformed("unexpected stream entry"))
        );
    }

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
