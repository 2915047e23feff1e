//! The header every generated message body starts with.
//!
//! Layout (little-endian), [`HEADER_BYTES`] bytes:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | sender index (the loadgen's client number, not a server id) |
//! | 4 | 8 | sequence number, per sender, starting at 0 |
//! | 12 | 8 | intended send time, ns since the run start (monotonic) |
//!
//! The rest of the body is filler. A body asked for smaller than the header
//! is sent at exactly [`HEADER_BYTES`]: without the header no delivery can
//! be checked or timed (see docs/loadgen.md).

/// Size of the header in bytes; the smallest body the loadgen sends.
pub const HEADER_BYTES: usize = 20;

/// The decoded header of one delivered body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Index of the sending client in the loadgen's client table.
    pub sender: u32,
    /// Sequence number of the message from this sender.
    pub sequence: u64,
    /// When the message was meant to be sent, ns since the run start.
    pub send_ns: u64,
}

impl Header {
    /// Writes the header into the first [`HEADER_BYTES`] of `body`.
    ///
    /// Panics if `body` is shorter than the header: the caller sizes bodies
    /// with [`body_bytes_effective`].
    pub fn write(&self, body: &mut [u8]) {
        body[0..4].copy_from_slice(&self.sender.to_le_bytes());
        body[4..12].copy_from_slice(&self.sequence.to_le_bytes());
        body[12..20].copy_from_slice(&self.send_ns.to_le_bytes());
    }

    /// Reads the header from a delivered body; `None` if it is too short.
    pub fn read(body: &[u8]) -> Option<Header> {
        let bytes = body.get(..HEADER_BYTES)?;
        Some(Header {
            sender: u32::from_le_bytes(bytes[0..4].try_into().ok()?),
            sequence: u64::from_le_bytes(bytes[4..12].try_into().ok()?),
            send_ns: u64::from_le_bytes(bytes[12..20].try_into().ok()?),
        })
    }
}

/// The body size actually sent for a requested size: never below the header.
pub fn body_bytes_effective(requested: usize) -> usize {
    requested.max(HEADER_BYTES)
}

/// A reusable body: filler allocated once, the header rewritten per message.
pub struct BodyTemplate {
    bytes: Vec<u8>,
}

impl BodyTemplate {
    /// A body of `body_bytes` (at least [`HEADER_BYTES`]) filled with a
    /// recognisable pattern.
    pub fn new(body_bytes: usize) -> Self {
        let len = body_bytes_effective(body_bytes);
        let bytes = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        BodyTemplate { bytes }
    }

    /// Stamps `header` and returns the whole body.
    pub fn stamp(&mut self, header: &Header) -> &[u8] {
        header.write(&mut self.bytes);
        &self.bytes
    }

    /// The whole body as last stamped.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The filler after the header: the same for every message.
    pub fn tail(&self) -> &[u8] {
        &self.bytes[HEADER_BYTES..]
    }

    /// Length of every body produced by this template.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: a body holds at least the header.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let header = Header {
            sender: 7,
            sequence: u64::MAX - 1,
            send_ns: 123_456_789,
        };
        let mut template = BodyTemplate::new(64);
        let body = template.stamp(&header).to_vec();
        assert_eq!(body.len(), 64);
        assert_eq!(Header::read(&body), Some(header));
    }

    #[test]
    fn small_bodies_are_padded_to_the_header() {
        assert_eq!(BodyTemplate::new(0).len(), HEADER_BYTES);
        assert_eq!(Header::read(&[0u8; HEADER_BYTES - 1]), None);
    }
}
