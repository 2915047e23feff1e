//! The receive side of one connection, whatever the protocol: a buffer the
//! socket reads into, and the events decoded from it.

use relayhub_protocol::{ClientSide, ClientSideV2, Decoder, HubSide};

use super::{nats, relayhub, resp, sink, Decoded, Event, WireError, BODY_BYTES_MAX};
use crate::target::TargetKind;

/// First size of a text receive buffer; it grows for large bodies.
const TEXT_BUFFER_BYTES_INITIAL: usize = 16 * 1024;

/// Largest text receive buffer: one maximal message plus a read's worth.
const TEXT_BUFFER_BYTES_MAX: usize = 2 * BODY_BYTES_MAX + 64 * 1024;

/// Receive state of one connection.
pub enum Inbound {
    /// NATS or RESP: our buffer, `buf[start..end]` not yet decoded.
    Text {
        buf: Vec<u8>,
        start: usize,
        end: usize,
        decode: fn(&[u8]) -> Decoded<'_>,
    },
    /// relayhub: the protocol crate's aligned, incremental decoder.
    Hub(Box<Decoder<ClientSide>>),
    /// relayhub, durable runs: the same for a version-2 connection.
    HubV2(Box<Decoder<ClientSideV2>>),
    /// The sink: client frames forwarded as they were sent (hub-side decoder).
    Sink(Box<Decoder<HubSide>>),
}

impl Inbound {
    /// The receive state for a connection to `kind`.
    pub fn new(kind: TargetKind) -> Inbound {
        let text = |decode| Inbound::Text {
            buf: Vec::new(),
            start: 0,
            end: 0,
            decode,
        };
        match kind {
            TargetKind::Relayhub => Inbound::Hub(Box::new(relayhub::new_decoder())),
            TargetKind::Sink => Inbound::Sink(Box::new(sink::new_decoder())),
            TargetKind::Nats => text(nats::decode as fn(&[u8]) -> Decoded<'_>),
            TargetKind::Redis => text(resp::decode as fn(&[u8]) -> Decoded<'_>),
        }
    }

    /// The receive state for a durable run's connection to `kind`:
    /// relayhub speaks version 2, NATS keeps subjects (JetStream), Redis
    /// reads stream replies.
    pub fn durable(kind: TargetKind) -> Inbound {
        match kind {
            TargetKind::Relayhub => Inbound::HubV2(Box::new(relayhub::new_decoder_v2())),
            TargetKind::Nats => Inbound::Text {
                buf: Vec::new(),
                start: 0,
                end: 0,
                decode: nats::decode_with_subjects,
            },
            TargetKind::Redis => Inbound::Text {
                buf: Vec::new(),
                start: 0,
                end: 0,
                decode: resp::decode_durable,
            },
            other => Inbound::new(other),
        }
    }

    /// Room to read into (never empty).
    pub fn spare(&mut self) -> &mut [u8] {
        match self {
            Inbound::Hub(decoder) => decoder.spare(),
            Inbound::HubV2(decoder) => decoder.spare(),
            Inbound::Sink(decoder) => decoder.spare(),
            Inbound::Text {
                buf, start, end, ..
            } => {
                if *start == *end {
                    *start = 0;
                    *end = 0;
                }
                if *end == buf.len() && *start > 0 {
                    buf.copy_within(*start..*end, 0);
                    *end -= *start;
                    *start = 0;
                }
                if *end == buf.len() {
                    let grown =
                        (buf.len() * 2).clamp(TEXT_BUFFER_BYTES_INITIAL, TEXT_BUFFER_BYTES_MAX);
                    buf.resize(grown.max(buf.len() + 1), 0);
                }
                &mut buf[*end..]
            }
        }
    }

    /// Records that `len` bytes were read into [`spare`](Self::spare).
    pub fn commit(&mut self, len: usize) {
        match self {
            Inbound::Hub(decoder) => decoder.commit(len),
            Inbound::HubV2(decoder) => decoder.commit(len),
            Inbound::Sink(decoder) => decoder.commit(len),
            Inbound::Text { buf, end, .. } => {
                assert!(*end + len <= buf.len(), "commit past spare()");
                *end += len;
            }
        }
    }

    /// Appends bytes already read elsewhere.
    pub fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let spare = self.spare();
            let take = spare.len().min(bytes.len());
            spare[..take].copy_from_slice(&bytes[..take]);
            self.commit(take);
            bytes = &bytes[take..];
        }
    }

    /// The next complete event, or `None` when more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<Event<'_>>, WireError> {
        match self {
            Inbound::Hub(decoder) => relayhub::next_event(decoder),
            Inbound::HubV2(decoder) => relayhub::next_event_v2(decoder),
            Inbound::Sink(decoder) => sink::next_event(decoder),
            Inbound::Text {
                buf,
                start,
                end,
                decode,
            } => match decode(&buf[*start..*end])? {
                Some((used, event)) => {
                    *start += used;
                    Ok(Some(event))
                }
                None => Ok(None),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_buffer_grows_for_a_large_body() {
        let mut inbound = Inbound::new(TargetKind::Nats);
        let body = vec![b'x'; 100_000];
        let mut wire = Vec::new();
        nats::encode_publish(&mut wire, 1, &body);
        let wire = String::from_utf8(wire)
            .unwrap()
            .replacen("PUB r.1", "MSG r.1 1", 1);
        for chunk in wire.as_bytes().chunks(7000) {
            inbound.push(chunk);
        }
        match inbound.next_event().unwrap() {
            Some(Event::Delivery(got)) => assert_eq!(got, &body[..]),
            other => panic!("{other:?}"),
        }
        assert!(inbound.next_event().unwrap().is_none());
    }
}
