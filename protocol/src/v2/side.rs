//! The version-2 sides: which kinds each version accepts, the field rules
//! of the new messages, and the `DeliverV2` encoders.
//!
//! [`HubSideV2`] and [`ClientSideV2`] speak both versions. The version a
//! connection's preface carried ([`Decoder::version`](crate::Decoder::version))
//! decides what a peer may send:
//!
//! | direction | version 1 | version 2 |
//! | --- | --- | --- |
//! | client → hub | Echo, Identity, List, Relay | Echo, Identity, List, Hello, RelayV2, Ack |
//! | hub → client | Welcome, EchoReply, IdentityReply, ListReply, Deliver, Error | EchoReply, IdentityReply, ListReply, Error, WelcomeV2, DeliverV2, Stored, Receipt |
//!
//! Anything else is `UnknownKind`, refused from the frame header alone.

use std::ops::RangeInclusive;

use bytes::{Bytes, BytesMut};
use rkyv::{
    munge::munge,
    rancor::{Failure, Fallible},
    ser::{allocator::SubAllocator, Positional, Serializer, Writer},
    vec::{ArchivedVec, VecResolver},
    Archive, Place, Serialize,
};

use crate::{
    error::{DecodeError, EncodeError, Limit, Malformed},
    frame::{access, check_limit, encode, ClientSide, HubSide, Role},
    limits::{
        BODY_BYTES_MAX, FRAME_ALIGN_BYTES, FRAME_BYTES_MAX, FRAME_HEADER_BYTES, RECEIVERS_MAX,
    },
    message::{kind, ArchivedUserId},
    preface::{VERSION, VERSIONS_SUPPORTED, VERSION_2},
    v2::message::*,
};

/// The hub's side of either version: decodes what clients send.
///
/// `Decoder::<HubSideV2>::new()` accepts a client preface of any version in
/// [`VERSIONS_SUPPORTED`]; the one-shot [`parse`](Role::parse) and
/// [`accepts`](Role::accepts) (no connection, so no version) mean version 2.
#[derive(Debug)]
pub enum HubSideV2 {}

/// A client's side of either version: decodes what the hub sends. A client
/// that sent a version-2 preface uses `Decoder::<ClientSideV2>::expecting(VERSION_2)`.
/// The one-shot [`parse`](Role::parse) and [`accepts`](Role::accepts) mean
/// version 2.
#[derive(Debug)]
pub enum ClientSideV2 {}

fn malformed(kind: u16, reason: Malformed) -> DecodeError {
    DecodeError::Malformed { kind, reason }
}

/// Fails with `Malformed { reason: Field }` unless `rule` holds.
fn field_rule(kind: u16, rule: bool) -> Result<(), DecodeError> {
    if rule {
        Ok(())
    } else {
        Err(malformed(kind, Malformed::Field))
    }
}

/// Fails with `Malformed { reason: Flags }` when a bit outside `defined` is set.
fn flags_rule(kind: u16, flags: u32, defined: u32) -> Result<(), DecodeError> {
    if flags & !defined != 0 {
        return Err(malformed(kind, Malformed::Flags));
    }
    Ok(())
}

const NO_TOKEN: ResumeToken = [0; RESUME_TOKEN_BYTES];

fn parse_hello(archive: &[u8]) -> Result<&ArchivedHello, DecodeError> {
    let hello = access::<ArchivedHello>(kind::HELLO, archive)?;
    let resuming = hello.resume_user.to_native() != 0;
    // A token without a user cannot be checked; a resumed session is durable.
    field_rule(kind::HELLO, resuming || hello.resume_token == NO_TOKEN)?;
    field_rule(kind::HELLO, !resuming || hello.durable)?;
    Ok(hello)
}

fn parse_relay_v2(archive: &[u8]) -> Result<&ArchivedRelayV2, DecodeError> {
    let relay = access::<ArchivedRelayV2>(kind::RELAY_V2, archive)?;
    // Fatal rules first: a peer that sets unknown bits speaks something else.
    let relay_flags = relay.flags.to_native();
    flags_rule(kind::RELAY_V2, relay_flags, flags::RELAY_V2_DEFINED)?;
    let wants_receipts = relay_flags & flags::RECEIPT != 0;
    field_rule(
        kind::RELAY_V2,
        !wants_receipts || relay.message_id.to_native() != 0,
    )?;
    let request = relay.request.to_native();
    let receivers = relay.receivers.len();
    check_limit(request, Limit::Receivers, receivers, RECEIVERS_MAX)?;
    check_limit(request, Limit::BodyBytes, relay.body.len(), BODY_BYTES_MAX)?;
    Ok(relay)
}

fn parse_welcome_v2(archive: &[u8]) -> Result<&ArchivedWelcomeV2, DecodeError> {
    let welcome = access::<ArchivedWelcomeV2>(kind::WELCOME_V2, archive)?;
    // A durable session has a token, an ephemeral one has none and cannot
    // have been resumed.
    field_rule(
        kind::WELCOME_V2,
        welcome.durable == (welcome.token != NO_TOKEN),
    )?;
    field_rule(kind::WELCOME_V2, welcome.durable || !welcome.resumed)?;
    Ok(welcome)
}

fn parse_deliver_v2(archive: &[u8]) -> Result<&ArchivedDeliverV2, DecodeError> {
    let deliver = access::<ArchivedDeliverV2>(kind::DELIVER_V2, archive)?;
    let deliver_flags = deliver.flags.to_native();
    flags_rule(kind::DELIVER_V2, deliver_flags, flags::DELIVER_V2_DEFINED)?;
    let redelivery = deliver_flags & flags::REDELIVERY != 0;
    field_rule(
        kind::DELIVER_V2,
        !redelivery || deliver.seq.to_native() != 0,
    )?;
    check_limit(0, Limit::BodyBytes, deliver.body.len(), BODY_BYTES_MAX)?;
    Ok(deliver)
}

fn parse_stored(archive: &[u8]) -> Result<&ArchivedStored, DecodeError> {
    let stored = access::<ArchivedStored>(kind::STORED, archive)?;
    field_rule(
        kind::STORED,
        !stored.duplicate || stored.message_id.to_native() != 0,
    )?;
    Ok(stored)
}

fn parse_receipt(archive: &[u8]) -> Result<&ArchivedReceipt, DecodeError> {
    let receipt = access::<ArchivedReceipt>(kind::RECEIPT, archive)?;
    let receipt_flags = receipt.flags.to_native();
    flags_rule(kind::RECEIPT, receipt_flags, flags::RECEIPT_DEFINED)?;
    let redelivery = receipt_flags & flags::REDELIVERY != 0;
    field_rule(kind::RECEIPT, !redelivery || receipt.seq.to_native() != 0)?;
    field_rule(kind::RECEIPT, receipt.message_id.to_native() != 0)?;
    Ok(receipt)
}

impl Role for HubSideV2 {
    type Frame<'a> = ClientFrameV2<'a>;

    const VERSIONS: RangeInclusive<u16> = VERSIONS_SUPPORTED;

    fn accepts(kind: u16) -> bool {
        Self::accepts_version(VERSION_2, kind)
    }

    fn parse(kind: u16, archive: &[u8]) -> Result<ClientFrameV2<'_>, DecodeError> {
        Self::parse_version(VERSION_2, kind, archive)
    }

    fn accepts_version(version: u16, kind: u16) -> bool {
        match version {
            VERSION => HubSide::accepts(kind),
            VERSION_2 => matches!(
                kind,
                kind::ECHO | kind::IDENTITY | kind::LIST | kind::HELLO | kind::RELAY_V2 | kind::ACK
            ),
            _ => false,
        }
    }

    fn parse_version(
        version: u16,
        kind: u16,
        archive: &[u8],
    ) -> Result<ClientFrameV2<'_>, DecodeError> {
        if !Self::accepts_version(version, kind) {
            return Err(DecodeError::UnknownKind { kind });
        }
        match kind {
            kind::HELLO => Ok(ClientFrameV2::Hello(parse_hello(archive)?)),
            kind::RELAY_V2 => Ok(ClientFrameV2::RelayV2(parse_relay_v2(archive)?)),
            kind::ACK => Ok(ClientFrameV2::Ack(access(kind, archive)?)),
            _ => HubSide::parse(kind, archive).map(ClientFrameV2::from),
        }
    }
}

impl Role for ClientSideV2 {
    type Frame<'a> = HubFrameV2<'a>;

    const VERSIONS: RangeInclusive<u16> = VERSIONS_SUPPORTED;

    fn accepts(kind: u16) -> bool {
        Self::accepts_version(VERSION_2, kind)
    }

    fn parse(kind: u16, archive: &[u8]) -> Result<HubFrameV2<'_>, DecodeError> {
        Self::parse_version(VERSION_2, kind, archive)
    }

    fn accepts_version(version: u16, kind: u16) -> bool {
        match version {
            VERSION => ClientSide::accepts(kind),
            VERSION_2 => matches!(
                kind,
                kind::ECHO_REPLY
                    | kind::IDENTITY_REPLY
                    | kind::LIST_REPLY
                    | kind::ERROR
                    | kind::WELCOME_V2
                    | kind::DELIVER_V2
                    | kind::STORED
                    | kind::RECEIPT
            ),
            _ => false,
        }
    }

    fn parse_version(
        version: u16,
        kind: u16,
        archive: &[u8],
    ) -> Result<HubFrameV2<'_>, DecodeError> {
        if !Self::accepts_version(version, kind) {
            return Err(DecodeError::UnknownKind { kind });
        }
        match kind {
            kind::WELCOME_V2 => Ok(HubFrameV2::WelcomeV2(parse_welcome_v2(archive)?)),
            kind::DELIVER_V2 => Ok(HubFrameV2::DeliverV2(parse_deliver_v2(archive)?)),
            kind::STORED => Ok(HubFrameV2::Stored(parse_stored(archive)?)),
            kind::RECEIPT => Ok(HubFrameV2::Receipt(parse_receipt(archive)?)),
            _ => ClientSide::parse(kind, archive).map(HubFrameV2::from),
        }
    }
}

// ---------------------------------------------------------------------------
// Lengths, and what the compile-time checks pin.

/// Size of the root of a `DeliverV2`: the per-receiver tail of its frame
/// ([`deliver_v2_root`]).
pub const DELIVER_V2_ROOT_BYTES: usize = size_of::<ArchivedDeliverV2>();

/// The exact length of a `DeliverV2` frame carrying `body_len` bytes: the
/// header, the body padded to 8, the root.
pub const fn deliver_v2_frame_len(body_len: usize) -> usize {
    FRAME_HEADER_BYTES
        + body_len.next_multiple_of(align_of::<ArchivedDeliverV2>())
        + DELIVER_V2_ROOT_BYTES
}

/// The exact length of a `RelayV2` frame with `receivers` ids and
/// `body_len` body bytes: the header, the ids, the body, padding to 8, the
/// root.
pub const fn relay_v2_frame_len(receivers: usize, body_len: usize) -> usize {
    FRAME_HEADER_BYTES
        + (receivers * size_of::<ArchivedUserId>() + body_len)
            .next_multiple_of(align_of::<ArchivedRelayV2>())
        + size_of::<ArchivedRelayV2>()
}

// Root sizes, as docs/protocol-v2.md lays them out: a change here is a
// wire change.
const _: () = assert!(size_of::<ArchivedHello>() == 40);
const _: () = assert!(size_of::<ArchivedRelayV2>() == 40);
const _: () = assert!(size_of::<ArchivedAck>() == 8);
const _: () = assert!(size_of::<ArchivedLimits>() == 104);
const _: () = assert!(size_of::<ArchivedWelcomeV2>() == 144);
const _: () = assert!(size_of::<ArchivedDeliverV2>() == 40);
const _: () = assert!(size_of::<ArchivedStored>() == 24);
const _: () = assert!(size_of::<ArchivedReceipt>() == 32);
const _: () = assert!(align_of::<ArchivedDeliverV2>() == FRAME_ALIGN_BYTES);
const _: () = assert!(align_of::<ArchivedRelayV2>() == FRAME_ALIGN_BYTES);
// The largest version-2 frames fit the frame limit: a `DeliverV2` of a
// maximal body, and a `RelayV2` to `RECEIVERS_MAX` receivers with one.
const _: () = assert!(deliver_v2_frame_len(BODY_BYTES_MAX) - FRAME_HEADER_BYTES <= FRAME_BYTES_MAX);
const _: () = assert!(
    relay_v2_frame_len(RECEIVERS_MAX, BODY_BYTES_MAX) - FRAME_HEADER_BYTES <= FRAME_BYTES_MAX
);

// ---------------------------------------------------------------------------
// DeliverV2 encoders.

/// The fields of a `DeliverV2` other than its body: what differs from one
/// receiver to the next (`seq`, `flags`) and what does not (`from`,
/// `message_id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DeliverV2Meta {
    /// The sender's user id.
    pub from: u64,
    /// The receiver's inbox sequence, 0 for an ephemeral receiver.
    pub seq: u64,
    /// The sender's message id.
    pub message_id: u64,
    /// [`flags::REDELIVERY`] or 0.
    pub flags: u32,
}

/// Builds one whole `DeliverV2` frame as a shareable buffer (the simple
/// path; see [`deliver_v2_prefix`] for fan-out without a copy per receiver).
pub fn encode_deliver_v2(meta: DeliverV2Meta, body: &[u8]) -> Result<Bytes, EncodeError> {
    let mut out = BytesMut::with_capacity(deliver_v2_frame_len(body.len()));
    let DeliverV2Meta {
        from,
        seq,
        message_id,
        flags,
    } = meta;
    encode(
        &DeliverV2Ref {
            from,
            seq,
            message_id,
            flags,
            body,
        },
        &mut out,
    )?;
    debug_assert_eq!(out.len(), deliver_v2_frame_len(body.len()));
    Ok(out.freeze())
}

/// The part of a `DeliverV2` frame that is the same for every receiver:
/// the frame header, the body and its padding. Built once per message.
///
/// A frame is this prefix followed by the receiver's
/// [`deliver_v2_root`]: `prefix ++ root` is byte for byte what
/// [`encode_deliver_v2`] builds. rkyv puts the root last, and every
/// per-receiver field (`seq`, `flags`) lives in the root, so the hub keeps
/// one copy of the body whatever the fan-out and writes a 40-byte tail per
/// receiver (two buffers per frame, e.g. with a vectored write).
pub fn deliver_v2_prefix(body: &[u8]) -> Result<Bytes, EncodeError> {
    let frame_len = deliver_v2_frame_len(body.len());
    let len = frame_len - FRAME_HEADER_BYTES;
    if len > FRAME_BYTES_MAX {
        return Err(EncodeError::FrameTooLarge { len });
    }
    let prefix_len = frame_len - DELIVER_V2_ROOT_BYTES;
    let mut out = BytesMut::with_capacity(prefix_len);
    out.extend_from_slice(&deliver_v2_header(body.len()));
    out.extend_from_slice(body);
    out.resize(prefix_len, 0);
    Ok(out.freeze())
}

/// The per-receiver tail of a `DeliverV2` frame whose body is `body_len`
/// bytes long: its root, archived by rkyv itself (not laid out by hand).
/// See [`deliver_v2_prefix`].
pub fn deliver_v2_root(meta: DeliverV2Meta, body_len: usize) -> [u8; DELIVER_V2_ROOT_BYTES] {
    let root_pos = body_len.next_multiple_of(align_of::<ArchivedDeliverV2>());
    archive_root(&DeliverV2Root { meta, body_len }, root_pos)
}

/// Bytes of a version-1 `Deliver` frame's root (`from` and the body's
/// vector header), after the padded body.
pub const DELIVER_ROOT_BYTES: usize = size_of::<crate::ArchivedDeliver>();

/// The tail of a version-1 `Deliver` frame whose body is `body_len` bytes
/// long: the zeros that pad the body to the root's alignment, then the
/// root. `header ++ body ++ tail` is byte for byte what
/// [`encode_deliver`](crate::encode_deliver) builds, so the hub can send a
/// body from wherever it lies (a vectored write of three buffers).
/// Returns the tail buffer and its length (padding + root).
pub fn deliver_tail(from: u64, body_len: usize) -> ([u8; 8 + DELIVER_ROOT_BYTES], usize) {
    let root_pos = body_len.next_multiple_of(align_of::<crate::ArchivedDeliver>());
    padded(
        &archive_root::<_, DELIVER_ROOT_BYTES>(&DeliverRoot { from, body_len }, root_pos),
        body_len,
    )
}

/// The header of a version-1 `Deliver` frame whose body is `body_len`
/// bytes long (see [`deliver_tail`]).
pub fn deliver_header(body_len: usize) -> [u8; FRAME_HEADER_BYTES] {
    let len = crate::deliver_frame_len(body_len) - FRAME_HEADER_BYTES;
    crate::frame::frame_header(kind::DELIVER, len)
}

/// [`deliver_tail`] for a `DeliverV2`: the padding after the body, then
/// the receiver's [`deliver_v2_root`].
pub fn deliver_v2_tail(
    meta: DeliverV2Meta,
    body_len: usize,
) -> ([u8; 8 + DELIVER_V2_ROOT_BYTES], usize) {
    padded(&deliver_v2_root(meta, body_len), body_len)
}

/// The header of a `DeliverV2` frame whose body is `body_len` bytes long.
pub fn deliver_v2_header(body_len: usize) -> [u8; FRAME_HEADER_BYTES] {
    let len = deliver_v2_frame_len(body_len) - FRAME_HEADER_BYTES;
    crate::frame::frame_header(kind::DELIVER_V2, len)
}

/// The zeros that pad a body of `body_len` bytes to 8, then `root`, in an
/// array of `M` (= 8 + `N`) bytes; the second value is the length used.
fn padded<const N: usize, const M: usize>(root: &[u8; N], body_len: usize) -> ([u8; M], usize) {
    let padding = body_len.next_multiple_of(8) - body_len;
    let mut tail = [0; M];
    tail[padding..padding + N].copy_from_slice(root);
    (tail, padding + N)
}

/// Archives a root alone, its body's bytes at archive position 0 and the
/// root at `root_pos`, into exactly `N` bytes.
fn archive_root<T, const N: usize>(root: &T, root_pos: usize) -> [u8; N]
where
    T: for<'a> Serialize<
        rkyv::rancor::Strategy<Serializer<RootWriter<N>, SubAllocator<'a>, ()>, Failure>,
    >,
{
    let mut serializer = Serializer::new(
        RootWriter {
            bytes: [0; N],
            len: 0,
            base: root_pos,
        },
        SubAllocator::new(&mut []),
        (),
    );
    rkyv::api::serialize_using::<_, Failure>(root, &mut serializer)
        .expect("archiving a root into its own size cannot fail");
    let writer = serializer.into_writer();
    debug_assert_eq!(writer.len, N);
    writer.bytes
}

/// A version-1 `Deliver` whose body was written already, at archive
/// position 0: it archives the root alone.
struct DeliverRoot {
    from: u64,
    body_len: usize,
}

impl Archive for DeliverRoot {
    type Archived = crate::ArchivedDeliver;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: VecResolver, out: Place<crate::ArchivedDeliver>) {
        munge!(let crate::ArchivedDeliver { from, body } = out);
        self.from.resolve((), from);
        ArchivedVec::<u8>::resolve_from_len(self.body_len, resolver, body);
    }
}

impl<S: Fallible + Writer + ?Sized> Serialize<S> for DeliverRoot {
    fn serialize(&self, _: &mut S) -> Result<VecResolver, S::Error> {
        // The body's bytes start at archive position 0.
        Ok(VecResolver::from_pos(0))
    }
}

/// A `DeliverV2` whose body was written already (by [`deliver_v2_prefix`]),
/// at archive position 0: it archives the root alone.
struct DeliverV2Root {
    meta: DeliverV2Meta,
    body_len: usize,
}

impl Archive for DeliverV2Root {
    type Archived = ArchivedDeliverV2;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: VecResolver, out: Place<ArchivedDeliverV2>) {
        munge!(let ArchivedDeliverV2 { from, seq, message_id, body, flags } = out);
        self.meta.from.resolve((), from);
        self.meta.seq.resolve((), seq);
        self.meta.message_id.resolve((), message_id);
        self.meta.flags.resolve((), flags);
        ArchivedVec::<u8>::resolve_from_len(self.body_len, resolver, body);
    }
}

impl<S: Fallible + Writer + ?Sized> Serialize<S> for DeliverV2Root {
    fn serialize(&self, _: &mut S) -> Result<VecResolver, S::Error> {
        // The body's bytes start at archive position 0, in the prefix.
        Ok(VecResolver::from_pos(0))
    }
}

/// An rkyv writer for a root alone: positions start at `base` (the length
/// of the archive before the root), bytes go to a fixed array.
struct RootWriter<const N: usize> {
    bytes: [u8; N],
    len: usize,
    base: usize,
}

impl<const N: usize> Positional for RootWriter<N> {
    fn pos(&self) -> usize {
        self.base + self.len
    }
}

impl<E, const N: usize> Writer<E> for RootWriter<N> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.bytes[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_body_and_tail_make_a_whole_deliver_of_either_version() {
        let body: Vec<u8> = (0..=255).cycle().take(70_000).collect();
        for body_len in [0, 1, 7, 8, 9, 15, 16, 17, 4095, 65_537, 70_000] {
            let whole = crate::encode_deliver(0x0102_0304_0506_0708, &body[..body_len]).unwrap();
            let (tail, tail_len) = deliver_tail(0x0102_0304_0506_0708, body_len);
            assert_eq!(
                [
                    &deliver_header(body_len)[..],
                    &body[..body_len],
                    &tail[..tail_len]
                ]
                .concat(),
                whole,
                "body of {body_len}"
            );
            let meta = DeliverV2Meta {
                from: 3,
                seq: 9,
                message_id: 11,
                flags: flags::REDELIVERY,
            };
            let (tail, tail_len) = deliver_v2_tail(meta, body_len);
            assert_eq!(
                [
                    &deliver_v2_header(body_len)[..],
                    &body[..body_len],
                    &tail[..tail_len]
                ]
                .concat(),
                encode_deliver_v2(meta, &body[..body_len]).unwrap(),
                "version 2, body of {body_len}"
            );
        }
    }

    #[test]
    fn prefix_and_root_make_the_whole_frame() {
        let body: Vec<u8> = (0..=255).cycle().take(70_000).collect();
        for body_len in [0, 1, 7, 8, 9, 15, 16, 17, 4095, 65_537, 70_000] {
            let meta = DeliverV2Meta {
                from: 3,
                seq: u64::MAX - body_len as u64,
                message_id: 0x1122_3344_5566_7788,
                flags: flags::REDELIVERY,
            };
            let whole = encode_deliver_v2(meta, &body[..body_len]).unwrap();
            assert_eq!(whole.len(), deliver_v2_frame_len(body_len));
            let prefix = deliver_v2_prefix(&body[..body_len]).unwrap();
            let root = deliver_v2_root(meta, body_len);
            assert_eq!(
                [&prefix[..], &root[..]].concat(),
                whole,
                "body of {body_len}"
            );
        }
    }

    #[test]
    fn maximal_frames_are_exactly_as_long_as_computed() {
        let body = vec![0x5a; BODY_BYTES_MAX];
        let receivers: Vec<u64> = (1..=RECEIVERS_MAX as u64).collect();
        for receivers_len in [0, 1, 2, 7, RECEIVERS_MAX] {
            for body_len in [0, 1, 7, 8, 9, 4095, BODY_BYTES_MAX] {
                let mut out = BytesMut::new();
                let relay = RelayV2Ref {
                    request: 1,
                    message_id: 2,
                    flags: flags::RECEIPT,
                    receivers: &receivers[..receivers_len],
                    body: &body[..body_len],
                };
                let len = encode(&relay, &mut out).unwrap();
                assert_eq!(len, relay_v2_frame_len(receivers_len, body_len));
            }
        }
        let deliver = encode_deliver_v2(DeliverV2Meta::default(), &body).unwrap();
        assert_eq!(deliver.len(), deliver_v2_frame_len(BODY_BYTES_MAX));
        assert!(deliver.len() - FRAME_HEADER_BYTES <= FRAME_BYTES_MAX);
        assert_eq!(
            relay_v2_frame_len(RECEIVERS_MAX, BODY_BYTES_MAX) - FRAME_HEADER_BYTES,
            2_040 + 1_048_576 + 40
        );
    }

    #[test]
    fn a_body_past_the_frame_limit_is_refused_by_the_prefix_encoder() {
        let body = vec![0; FRAME_BYTES_MAX];
        assert!(matches!(
            deliver_v2_prefix(&body),
            Err(EncodeError::FrameTooLarge { len }) if len > FRAME_BYTES_MAX
        ));
        assert_eq!(
            deliver_v2_prefix(&body).unwrap_err(),
            encode_deliver_v2(DeliverV2Meta::default(), &body).unwrap_err()
        );
    }
}
