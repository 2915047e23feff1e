//! Frame layout, the encoder, and one-shot frame parsing.
//!
//! ```text
//! 0       4       6       8                         8 + len
//! +-------+-------+-------+--------------------------+
//! | len   | kind  | flags | rkyv archive (root last) |
//! | u32le | u16le | u16le | len bytes, len % 8 == 0  |
//! +-------+-------+-------+--------------------------+
//! ```
//!
//! Every frame is a multiple of 8 bytes long, so in a stream read into a
//! 16-byte aligned buffer every archive starts 8-byte aligned and is
//! validated in place, without a realigning copy.

use std::ops::RangeInclusive;

use bytes::BytesMut;
use rkyv::{
    rancor::{Failure, Strategy},
    ser::{allocator::SubAllocator, Positional, Serializer, Writer},
    Portable,
};

use crate::{
    error::{DecodeError, EncodeError, Limit, Malformed},
    limits::{
        BODY_BYTES_MAX, FRAME_ALIGN_BYTES, FRAME_BYTES_MAX, FRAME_HEADER_BYTES,
        LIST_PAGE_USERS_MAX, RECEIVERS_MAX,
    },
    message::{kind, *},
    preface::VERSION,
};

/// The rkyv serializer every frame is archived with: it writes straight
/// into the caller's buffer and has no scratch space (none of our types
/// needs any; a type that did would fail loudly in the tests).
pub type FrameSerializer<'a> =
    Strategy<Serializer<FrameWriter<'a>, SubAllocator<'static>, ()>, Failure>;

/// An rkyv writer appending to a `BytesMut`, with positions relative to the
/// start of the archive (so frames can be appended after other frames).
pub struct FrameWriter<'a> {
    out: &'a mut BytesMut,
    archive_start: usize,
}

impl Positional for FrameWriter<'_> {
    fn pos(&self) -> usize {
        self.out.len() - self.archive_start
    }
}

impl<E> Writer<E> for FrameWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.out.extend_from_slice(bytes);
        Ok(())
    }
}

/// The parsed 8-byte frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Archive length in bytes (not counting the header).
    pub len: u32,
    /// Frame kind (see [`kind`]).
    pub kind: u16,
}

impl FrameHeader {
    /// The cheap first phase of decoding: reads and checks a header without
    /// allocating. `Incomplete` when fewer than 8 bytes are present; the
    /// length is checked against the limit before anyone sizes a buffer.
    pub fn check(bytes: &[u8]) -> Result<FrameHeader, DecodeError> {
        let Some(header) = bytes.get(..FRAME_HEADER_BYTES) else {
            return Err(DecodeError::Incomplete {
                needed: FRAME_HEADER_BYTES,
            });
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let kind = u16::from_le_bytes([header[4], header[5]]);
        let flags = u16::from_le_bytes([header[6], header[7]]);
        if len as usize > FRAME_BYTES_MAX {
            return Err(DecodeError::FrameTooLarge { len });
        }
        if len as usize % FRAME_ALIGN_BYTES != 0 {
            return Err(DecodeError::Malformed {
                kind,
                reason: Malformed::Misaligned,
            });
        }
        if flags != 0 {
            return Err(DecodeError::Malformed {
                kind,
                reason: Malformed::Flags,
            });
        }
        Ok(FrameHeader { len, kind })
    }

    /// Header plus archive, in bytes.
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER_BYTES + self.len as usize
    }
}

/// Appends one frame holding `message` to `out` and returns the frame's
/// length in bytes.
///
/// Only the frame size is checked here; protocol limits (receivers, body)
/// are the receiver's to enforce, so tests can send over-limit frames.
/// On error `out` is left as it was.
pub fn encode<M: Message>(message: &M, out: &mut BytesMut) -> Result<usize, EncodeError> {
    let frame_start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    let archive_start = out.len();
    let mut serializer = Serializer::new(
        FrameWriter { out, archive_start },
        SubAllocator::new(&mut []),
        (),
    );
    // Serializing into a growable buffer with no scratch space cannot fail
    // for our message types (they need none); an rkyv change that makes it
    // fail must be caught by the tests, not papered over.
    rkyv::api::serialize_using::<_, Failure>(message, &mut serializer)
        .expect("archiving a relayhub message into a BytesMut cannot fail");
    let len = out.len() - archive_start;
    debug_assert_eq!(len % FRAME_ALIGN_BYTES, 0, "root types are 8-aligned");
    if len > FRAME_BYTES_MAX {
        out.truncate(frame_start);
        return Err(EncodeError::FrameTooLarge { len });
    }
    out[frame_start..archive_start].copy_from_slice(&frame_header(M::KIND, len));
    Ok(FRAME_HEADER_BYTES + len)
}

/// The 8-byte header of a frame of `kind` whose archive is `archive_len`
/// bytes long (flags 0).
pub(crate) fn frame_header(kind: u16, archive_len: usize) -> [u8; FRAME_HEADER_BYTES] {
    let mut header = [0; FRAME_HEADER_BYTES];
    header[0..4].copy_from_slice(&(archive_len as u32).to_le_bytes());
    header[4..6].copy_from_slice(&kind.to_le_bytes());
    header
}

/// Builds the `Deliver` frame for one relay, once, as a shareable buffer.
///
/// This is the only copy of the body the hub makes: every receiver, on every
/// shard, gets a clone of the returned `Bytes` (a reference count bump).
pub fn encode_deliver(from: u64, body: &[u8]) -> Result<bytes::Bytes, EncodeError> {
    let mut out = BytesMut::with_capacity(deliver_frame_len(body.len()));
    encode(&DeliverRef { from, body }, &mut out)?;
    debug_assert_eq!(out.len(), deliver_frame_len(body.len()));
    Ok(out.freeze())
}

/// The exact length of a `Deliver` frame carrying `body_len` bytes.
pub const fn deliver_frame_len(body_len: usize) -> usize {
    FRAME_HEADER_BYTES + deliver_archive_len(body_len)
}

/// The archive length [`encode`] gives a `Deliver` with `body_len` body
/// bytes: the body at position 0, zeros up to the root's alignment, then
/// the root (`from`, the body's vector header).
const fn deliver_archive_len(body_len: usize) -> usize {
    body_len.next_multiple_of(align_of::<ArchivedDeliver>()) + size_of::<ArchivedDeliver>()
}

/// The archive length [`encode`] gives a `Relay` with `receivers` ids and
/// `body_len` body bytes: the ids at position 0 (8-aligned), the body right
/// after them, zeros up to the root's alignment, then the root (`request`
/// and the two vector headers).
const fn relay_archive_len(receivers: usize, body_len: usize) -> usize {
    (receivers * size_of::<ArchivedUserId>() + body_len)
        .next_multiple_of(align_of::<ArchivedRelay>())
        + size_of::<ArchivedRelay>()
}

// The largest frames the protocol allows fit its frame limit: a `Deliver`
// of a maximal body (what the hub sends for every relay), and a `Relay` to
// `RECEIVERS_MAX` receivers with a maximal body (what a client may send).
const _: () = assert!(deliver_archive_len(BODY_BYTES_MAX) <= FRAME_BYTES_MAX);
const _: () = assert!(relay_archive_len(RECEIVERS_MAX, BODY_BYTES_MAX) <= FRAME_BYTES_MAX);

/// A side of the connection: which frames it accepts, and how to check them.
pub trait Role {
    /// What a decoded frame looks like to this side.
    type Frame<'a>;

    /// Validates `archive` as a frame of `kind` and checks protocol limits.
    fn parse(kind: u16, archive: &[u8]) -> Result<Self::Frame<'_>, DecodeError>;

    /// True for the kinds this side accepts: lets a decoder refuse an
    /// unknown kind as soon as the header is in, before buffering the frame.
    fn accepts(kind: u16) -> bool;

    /// The protocol versions this side speaks: a [`Decoder::new`](crate::Decoder::new)
    /// accepts a peer preface of any of them. Version 1 only, unless the
    /// side says otherwise ([`HubSideV2`](crate::HubSideV2),
    /// [`ClientSideV2`](crate::ClientSideV2)).
    const VERSIONS: RangeInclusive<u16> = VERSION..=VERSION;

    /// [`accepts`](Self::accepts) on a connection that negotiated `version`
    /// (one of [`VERSIONS`](Self::VERSIONS)): which kinds a peer may send
    /// depends on it. The decoder calls this one.
    fn accepts_version(version: u16, kind: u16) -> bool {
        let _ = version;
        Self::accepts(kind)
    }

    /// [`parse`](Self::parse) on a connection that negotiated `version`.
    /// Refuses a kind that [`accepts_version`](Self::accepts_version)
    /// refuses. The decoder calls this one.
    fn parse_version(
        version: u16,
        kind: u16,
        archive: &[u8],
    ) -> Result<Self::Frame<'_>, DecodeError> {
        let _ = version;
        Self::parse(kind, archive)
    }
}

/// The hub's side: decodes what clients send.
#[derive(Debug)]
pub enum HubSide {}

/// A client's side: decodes what the hub sends.
#[derive(Debug)]
pub enum ClientSide {}

pub(crate) fn access<T>(kind: u16, archive: &[u8]) -> Result<&T, DecodeError>
where
    T: Portable + for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::low::LowValidator<'a, Failure>>,
{
    // Validated access (bytecheck) on untrusted bytes, never
    // access_unchecked. The low-level validator suffices: our types hold
    // no shared pointers.
    rkyv::api::low::access::<T, Failure>(archive).map_err(|_| DecodeError::Malformed {
        kind,
        reason: Malformed::Archive,
    })
}

pub(crate) fn check_limit(
    request: u64,
    limit: Limit,
    value: usize,
    max: usize,
) -> Result<(), DecodeError> {
    if value > max {
        return Err(DecodeError::LimitExceeded {
            request,
            limit,
            value: value as u64,
        });
    }
    Ok(())
}

impl Role for HubSide {
    type Frame<'a> = ClientFrame<'a>;

    fn accepts(kind: u16) -> bool {
        matches!(kind, kind::ECHO | kind::IDENTITY | kind::LIST | kind::RELAY)
    }

    fn parse(kind: u16, archive: &[u8]) -> Result<ClientFrame<'_>, DecodeError> {
        match kind {
            kind::ECHO => {
                let echo = access::<ArchivedEcho>(kind, archive)?;
                let request = echo.request.to_native();
                check_limit(request, Limit::BodyBytes, echo.body.len(), BODY_BYTES_MAX)?;
                Ok(ClientFrame::Echo(echo))
            }
            kind::IDENTITY => Ok(ClientFrame::Identity(access(kind, archive)?)),
            kind::LIST => Ok(ClientFrame::List(access(kind, archive)?)),
            kind::RELAY => {
                let relay = access::<ArchivedRelay>(kind, archive)?;
                let request = relay.request.to_native();
                check_limit(
                    request,
                    Limit::Receivers,
                    relay.receivers.len(),
                    RECEIVERS_MAX,
                )?;
                check_limit(request, Limit::BodyBytes, relay.body.len(), BODY_BYTES_MAX)?;
                Ok(ClientFrame::Relay(relay))
            }
            _ => Err(DecodeError::UnknownKind { kind }),
        }
    }
}

impl Role for ClientSide {
    type Frame<'a> = HubFrame<'a>;

    fn accepts(kind: u16) -> bool {
        (kind::WELCOME..=kind::ERROR).contains(&kind)
    }

    fn parse(kind: u16, archive: &[u8]) -> Result<HubFrame<'_>, DecodeError> {
        match kind {
            kind::WELCOME => Ok(HubFrame::Welcome(access(kind, archive)?)),
            kind::ECHO_REPLY => {
                let reply = access::<ArchivedEchoReply>(kind, archive)?;
                let request = reply.request.to_native();
                check_limit(request, Limit::BodyBytes, reply.body.len(), BODY_BYTES_MAX)?;
                Ok(HubFrame::EchoReply(reply))
            }
            kind::IDENTITY_REPLY => Ok(HubFrame::IdentityReply(access(kind, archive)?)),
            kind::LIST_REPLY => {
                let reply = access::<ArchivedListReply>(kind, archive)?;
                let request = reply.request.to_native();
                let users = reply.users.len();
                check_limit(request, Limit::ListPageUsers, users, LIST_PAGE_USERS_MAX)?;
                Ok(HubFrame::ListReply(reply))
            }
            kind::DELIVER => {
                let deliver = access::<ArchivedDeliver>(kind, archive)?;
                check_limit(0, Limit::BodyBytes, deliver.body.len(), BODY_BYTES_MAX)?;
                Ok(HubFrame::Deliver(deliver))
            }
            kind::ERROR => Ok(HubFrame::Error(access(kind, archive)?)),
            _ => Err(DecodeError::UnknownKind { kind }),
        }
    }
}

/// Decodes the first frame in `bytes` (no preface), as side `R`.
///
/// `bytes` must start 8-byte aligned (as in a buffer from the decoder or
/// an `rkyv::util::AlignedVec`); a misaligned archive fails validation.
/// Returns the frame and its length, or `Incomplete` with the bytes needed.
pub fn decode_frame<R: Role>(bytes: &[u8]) -> Result<(R::Frame<'_>, usize), DecodeError> {
    let header = FrameHeader::check(bytes)?;
    let frame_len = header.frame_len();
    let Some(archive) = bytes.get(FRAME_HEADER_BYTES..frame_len) else {
        return Err(DecodeError::Incomplete { needed: frame_len });
    };
    Ok((R::parse(header.kind, archive)?, frame_len))
}

/// [`decode_frame`] on a connection that negotiated `version`: a kind that
/// version does not define is an `UnknownKind`.
pub fn decode_frame_version<R: Role>(
    version: u16,
    bytes: &[u8],
) -> Result<(R::Frame<'_>, usize), DecodeError> {
    let header = FrameHeader::check(bytes)?;
    if !R::accepts_version(version, header.kind) {
        return Err(DecodeError::UnknownKind { kind: header.kind });
    }
    let frame_len = header.frame_len();
    let Some(archive) = bytes.get(FRAME_HEADER_BYTES..frame_len) else {
        return Err(DecodeError::Incomplete { needed: frame_len });
    };
    Ok((R::parse_version(version, header.kind, archive)?, frame_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The const functions behind the compile-time limit checks agree with
    /// what `encode` actually writes, up to the maximal frames.
    #[test]
    fn archive_length_functions_match_the_encoder() {
        let receivers: Vec<u64> = (1..=RECEIVERS_MAX as u64).collect();
        let body = vec![0xa5; BODY_BYTES_MAX];
        for receivers_len in [0, 1, 2, 7, RECEIVERS_MAX] {
            for body_len in [0, 1, 7, 8, 9, 4095, BODY_BYTES_MAX] {
                let mut out = BytesMut::new();
                let relay = RelayRef {
                    request: 1,
                    receivers: &receivers[..receivers_len],
                    body: &body[..body_len],
                };
                let frame_len = encode(&relay, &mut out).unwrap();
                assert_eq!(
                    frame_len - FRAME_HEADER_BYTES,
                    relay_archive_len(receivers_len, body_len),
                    "relay of {receivers_len} receivers, {body_len} bytes"
                );
                let deliver = encode_deliver(u64::MAX, &body[..body_len]).unwrap();
                assert_eq!(deliver.len(), deliver_frame_len(body_len));
                assert_eq!(
                    deliver.len() - FRAME_HEADER_BYTES,
                    deliver_archive_len(body_len)
                );
            }
        }
        assert_eq!(
            relay_archive_len(RECEIVERS_MAX, BODY_BYTES_MAX),
            2_040 + 1_048_576 + 24
        );
        assert_eq!(deliver_archive_len(BODY_BYTES_MAX), 1_048_576 + 16);
    }
}
