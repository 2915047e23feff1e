//! The log's record format, written down once:
//!
//! ```text
//! offset  size  field
//!      0     4  len: u32 LE, bytes of `kind` and `payload` (>= 1)
//!      4     4  crc: u32 LE, CRC32C of bytes 0..4 (len) and 8..8+len
//!      8     1  kind (RecordKind)
//!      9   len-1  payload: the kind's fields, little-endian, in order
//! ```
//!
//! Each record is followed by zeros up to the next multiple of
//! [`RECORD_ALIGN_BYTES`], so that recovery can look for records past a bad
//! one (8-byte steps) to tell a torn tail from corruption in the middle.
//!
//! The checksum covers the length too, so a torn or zeroed header never
//! passes. A `len` of 0 is the end of the log: segments are zero-filled
//! past their last record (preallocation, and the padding of the last
//! O_DIRECT block). Recovery (`decode`) stops at the first record that
//! does not check out; whether that is a torn tail or corruption in the
//! middle is decided by what follows it (see `recovery.rs`).

use bytes::{BufMut, Bytes, BytesMut};

/// Records start at multiples of this many bytes.
pub const RECORD_ALIGN_BYTES: usize = 8;

/// Bytes of a record's header (`len` and `crc`).
pub const RECORD_HEADER_BYTES: usize = 8;

/// Largest record: a maximal body with 255 receivers, with room to spare.
pub const RECORD_BYTES_MAX: usize = relayhub_protocol::BODY_BYTES_MAX + (64 << 10);

/// A token hash as stored (SHA-256).
pub type TokenHash = [u8; 32];

/// One change to a shard's durable state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// User ids below `next` (of this shard) may have been handed out:
    /// after a restart the allocator starts at `next`.
    IdsReserved { next: u64 },
    /// A durable session was created with this token hash.
    SessionCreated {
        user: u64,
        token: TokenHash,
        at_ms: u64,
    },
    /// A resume rotated the session's tokens.
    SessionTokens {
        user: u64,
        current: TokenHash,
        previous: TokenHash,
    },
    /// The session's connection closed at `at_ms` (its expiry counts from here).
    SessionDetached { user: u64, at_ms: u64 },
    /// The session expired: its inbox and tokens are gone.
    SessionExpired { user: u64 },
    /// A message stored once for every local receiver listed, each with
    /// its inbox sequence.
    Message {
        from: u64,
        message_id: u64,
        receipt: bool,
        stored_ms: u64,
        receivers: Vec<(u64, u64)>,
        body: Bytes,
    },
    /// A receipt stored in `user`'s inbox at `seq`.
    Receipt {
        user: u64,
        seq: u64,
        message_id: u64,
        receiver: u64,
        stored_ms: u64,
    },
    /// `user` acked everything up to `upto` (coalesced: the latest floor).
    Acked { user: u64, upto: u64 },
    /// `user`'s highest relayed `message_id` (coalesced), for retry dedup.
    SenderHigh { user: u64, message_id: u64 },
    /// The end of a compaction snapshot: the records before it, from the
    /// start of this log generation, are the whole live state.
    SnapshotEnd,
    /// A snapshot's copy of `user`'s retry-dedup mark for sender `from`.
    DedupMark {
        user: u64,
        from: u64,
        message_id: u64,
        at_ms: u64,
    },
    /// A snapshot's copy of `user`'s next inbox sequence: entries acked or
    /// expired before the snapshot leave no record, and their sequences
    /// are never given out again.
    NextSeq { user: u64, next: u64 },
}

/// A record's kind byte. Stable: never renumber.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RecordKind {
    IdsReserved = 1,
    SessionCreated = 2,
    SessionTokens = 3,
    SessionDetached = 4,
    SessionExpired = 5,
    Message = 6,
    Receipt = 7,
    Acked = 8,
    SenderHigh = 9,
    SnapshotEnd = 10,
    DedupMark = 11,
    NextSeq = 12,
}

/// Why bytes did not decode as a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// Fewer bytes than the header or the length says.
    Truncated,
    /// The checksum does not match.
    Checksum,
    /// The length is above [`RECORD_BYTES_MAX`].
    Length,
    /// The checksum matched but the payload makes no sense (a bug, or a
    /// newer format).
    Payload,
}

/// Appends `record` to `out`; returns its length with the header.
pub fn encode(record: &Record, out: &mut BytesMut) -> usize {
    let start = out.len();
    out.put_u32_le(0);
    out.put_u32_le(0);
    match record {
        Record::IdsReserved { next } => {
            out.put_u8(RecordKind::IdsReserved as u8);
            out.put_u64_le(*next);
        }
        Record::SessionCreated { user, token, at_ms } => {
            out.put_u8(RecordKind::SessionCreated as u8);
            out.put_u64_le(*user);
            out.put_slice(token);
            out.put_u64_le(*at_ms);
        }
        Record::SessionTokens {
            user,
            current,
            previous,
        } => {
            out.put_u8(RecordKind::SessionTokens as u8);
            out.put_u64_le(*user);
            out.put_slice(current);
            out.put_slice(previous);
        }
        Record::SessionDetached { user, at_ms } => {
            out.put_u8(RecordKind::SessionDetached as u8);
            out.put_u64_le(*user);
            out.put_u64_le(*at_ms);
        }
        Record::SessionExpired { user } => {
            out.put_u8(RecordKind::SessionExpired as u8);
            out.put_u64_le(*user);
        }
        Record::Message {
            from,
            message_id,
            receipt,
            stored_ms,
            receivers,
            body,
        } => {
            out.truncate(start);
            let message = MessageRecord {
                from: *from,
                message_id: *message_id,
                receipt: *receipt,
                stored_ms: *stored_ms,
                receivers,
                body,
            };
            return encode_message(&message, out);
        }
        Record::Receipt {
            user,
            seq,
            message_id,
            receiver,
            stored_ms,
        } => {
            out.put_u8(RecordKind::Receipt as u8);
            for value in [*user, *seq, *message_id, *receiver, *stored_ms] {
                out.put_u64_le(value);
            }
        }
        Record::Acked { user, upto } => {
            out.put_u8(RecordKind::Acked as u8);
            out.put_u64_le(*user);
            out.put_u64_le(*upto);
        }
        Record::SenderHigh { user, message_id } => {
            out.put_u8(RecordKind::SenderHigh as u8);
            out.put_u64_le(*user);
            out.put_u64_le(*message_id);
        }
        Record::SnapshotEnd => out.put_u8(RecordKind::SnapshotEnd as u8),
        Record::NextSeq { user, next } => {
            out.put_u8(RecordKind::NextSeq as u8);
            out.put_u64_le(*user);
            out.put_u64_le(*next);
        }
        Record::DedupMark {
            user,
            from,
            message_id,
            at_ms,
        } => {
            out.put_u8(RecordKind::DedupMark as u8);
            for value in [*user, *from, *message_id, *at_ms] {
                out.put_u64_le(value);
            }
        }
    }
    seal_header(out, start)
}

/// A `Message` record's fields, borrowed (the hub encodes straight from
/// the relay's buffer).
pub struct MessageRecord<'a> {
    /// The sender.
    pub from: u64,
    /// The sender's message id.
    pub message_id: u64,
    /// Receipts asked for.
    pub receipt: bool,
    /// When it was stored.
    pub stored_ms: u64,
    /// `(user, seq)` of each local receiver.
    pub receivers: &'a [(u64, u64)],
    /// The body.
    pub body: &'a [u8],
}

/// Appends a `Message` record; returns its length with the header.
pub fn encode_message(message: &MessageRecord<'_>, out: &mut BytesMut) -> usize {
    let start = out.len();
    out.put_u32_le(0);
    out.put_u32_le(0);
    out.put_u8(RecordKind::Message as u8);
    out.put_u64_le(message.from);
    out.put_u64_le(message.message_id);
    out.put_u8(u8::from(message.receipt));
    out.put_u64_le(message.stored_ms);
    let count = u16::try_from(message.receivers.len()).expect("at most 255 receivers");
    out.put_u16_le(count);
    for &(user, seq) in message.receivers {
        out.put_u64_le(user);
        out.put_u64_le(seq);
    }
    out.put_u32_le(u32::try_from(message.body.len()).expect("a body fits u32"));
    out.put_slice(message.body);
    seal_header(out, start)
}

/// Fills in the length and checksum of the record that starts at `start`.
fn seal_header(out: &mut BytesMut, start: usize) -> usize {
    let len = out.len() - start - RECORD_HEADER_BYTES;
    assert!(len <= RECORD_BYTES_MAX, "record of {len} bytes");
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    let crc = checksum(&out[start..start + 4], &out[start + RECORD_HEADER_BYTES..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    let padded = (out.len() - start).next_multiple_of(RECORD_ALIGN_BYTES);
    out.resize(start + padded, 0);
    padded
}

fn checksum(len: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(len), body)
}

/// The record at the start of `bytes`: `Ok(None)` at the end of the log (a
/// zero length, or no bytes), else the record and its length.
pub fn decode(bytes: &[u8]) -> Result<Option<(Record, usize)>, Invalid> {
    if bytes.len() < 4 {
        return if bytes.iter().all(|&b| b == 0) {
            Ok(None)
        } else {
            Err(Invalid::Truncated)
        };
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    if len == 0 {
        return Ok(None);
    }
    if len > RECORD_BYTES_MAX {
        return Err(Invalid::Length);
    }
    if bytes.len() < RECORD_HEADER_BYTES + len {
        return Err(Invalid::Truncated);
    }
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let body = &bytes[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len];
    if checksum(&bytes[0..4], body) != crc {
        return Err(Invalid::Checksum);
    }
    let padded = (RECORD_HEADER_BYTES + len).next_multiple_of(RECORD_ALIGN_BYTES);
    if bytes.len() < padded {
        return Err(Invalid::Truncated);
    }
    if bytes[RECORD_HEADER_BYTES + len..padded]
        .iter()
        .any(|&b| b != 0)
    {
        return Err(Invalid::Payload);
    }
    let record = parse(body).ok_or(Invalid::Payload)?;
    Ok(Some((record, padded)))
}

/// A cursor over a record's payload.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2)
            .map(|b| u16::from_le_bytes(b.try_into().expect("2")))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8")))
    }
    fn hash(&mut self) -> Option<TokenHash> {
        self.take(32).map(|b| b.try_into().expect("32"))
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

fn parse(body: &[u8]) -> Option<Record> {
    let mut f = Fields(body);
    let kind = f.u8()?;
    let record = match kind {
        k if k == RecordKind::IdsReserved as u8 => Record::IdsReserved { next: f.u64()? },
        k if k == RecordKind::SessionCreated as u8 => Record::SessionCreated {
            user: f.u64()?,
            token: f.hash()?,
            at_ms: f.u64()?,
        },
        k if k == RecordKind::SessionTokens as u8 => Record::SessionTokens {
            user: f.u64()?,
            current: f.hash()?,
            previous: f.hash()?,
        },
        k if k == RecordKind::SessionDetached as u8 => Record::SessionDetached {
            user: f.u64()?,
            at_ms: f.u64()?,
        },
        k if k == RecordKind::SessionExpired as u8 => Record::SessionExpired { user: f.u64()? },
        k if k == RecordKind::Message as u8 => {
            let from = f.u64()?;
            let message_id = f.u64()?;
            let receipt = match f.u8()? {
                0 => false,
                1 => true,
                _ => return None,
            };
            let stored_ms = f.u64()?;
            let count = usize::from(f.u16()?);
            if count > relayhub_protocol::RECEIVERS_MAX {
                return None;
            }
            let mut receivers = Vec::with_capacity(count);
            for _ in 0..count {
                receivers.push((f.u64()?, f.u64()?));
            }
            let len = f.u32()? as usize;
            let body = Bytes::copy_from_slice(f.take(len)?);
            Record::Message {
                from,
                message_id,
                receipt,
                stored_ms,
                receivers,
                body,
            }
        }
        k if k == RecordKind::Receipt as u8 => Record::Receipt {
            user: f.u64()?,
            seq: f.u64()?,
            message_id: f.u64()?,
            receiver: f.u64()?,
            stored_ms: f.u64()?,
        },
        k if k == RecordKind::Acked as u8 => Record::Acked {
            user: f.u64()?,
            upto: f.u64()?,
        },
        k if k == RecordKind::SenderHigh as u8 => Record::SenderHigh {
            user: f.u64()?,
            message_id: f.u64()?,
        },
        k if k == RecordKind::SnapshotEnd as u8 => Record::SnapshotEnd,
        k if k == RecordKind::NextSeq as u8 => Record::NextSeq {
            user: f.u64()?,
            next: f.u64()?,
        },
        k if k == RecordKind::DedupMark as u8 => Record::DedupMark {
            user: f.u64()?,
            from: f.u64()?,
            message_id: f.u64()?,
            at_ms: f.u64()?,
        },
        _ => return None,
    };
    f.done().then_some(record)
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// One record of every kind.
    pub(crate) fn samples() -> Vec<Record> {
        vec![
            Record::IdsReserved { next: 1 << 20 },
            Record::SessionCreated {
                user: 7,
                token: [3; 32],
                at_ms: 99,
            },
            Record::SessionTokens {
                user: 7,
                current: [4; 32],
                previous: [3; 32],
            },
            Record::SessionDetached { user: 7, at_ms: 5 },
            Record::SessionExpired { user: 9 },
            Record::Message {
                from: 2,
                message_id: 11,
                receipt: true,
                stored_ms: 1234,
                receivers: vec![(7, 1), (9, 4)],
                body: Bytes::from_static(b"hello"),
            },
            Record::Receipt {
                user: 2,
                seq: 3,
                message_id: 11,
                receiver: 7,
                stored_ms: 77,
            },
            Record::Acked { user: 7, upto: 1 },
            Record::SenderHigh {
                user: 2,
                message_id: 11,
            },
            Record::DedupMark {
                user: 7,
                from: 2,
                message_id: 11,
                at_ms: 3,
            },
            Record::NextSeq { user: 7, next: 12 },
            Record::SnapshotEnd,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::samples;
    use super::*;

    #[test]
    fn every_record_round_trips() {
        let mut out = BytesMut::new();
        let records = samples();
        for record in &records {
            encode(record, &mut out);
        }
        let mut offset = 0;
        let mut decoded = Vec::new();
        while let Some((record, len)) = decode(&out[offset..]).unwrap() {
            decoded.push(record);
            offset += len;
        }
        assert_eq!(decoded, records);
        assert_eq!(offset, out.len());
    }

    #[test]
    fn every_cut_and_every_bit_flip_is_caught() {
        let mut out = BytesMut::new();
        let record = &samples()[5];
        let len = encode(record, &mut out);
        for cut in 1..len {
            let result = decode(&out[..cut]);
            assert!(result.is_err(), "cut at {cut}: {result:?}");
        }
        for byte in 0..len {
            for bit in 0..8 {
                let mut copy = out.to_vec();
                copy[byte] ^= 1 << bit;
                match decode(&copy) {
                    Ok(Some((decoded, _))) => panic!("flip {byte}.{bit} decoded as {decoded:?}"),
                    // A flip of the length to 0 reads as the end of the log.
                    Ok(None) => assert!(byte < 4),
                    Err(_) => {}
                }
            }
        }
    }
}
