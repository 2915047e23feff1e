//! Reading a shard's log back at start-up, IO-free: bytes in (in chunks, as
//! the driver reads them), records out, and a verdict on how the log ends.
//!
//! The log ends at the first record that is not whole and valid:
//! - followed by nothing but zeros, or by no valid record (records start
//!   at 8-byte offsets), it is a **torn tail**: the last batch was cut
//!   short by the crash. It was never acknowledged (answers wait for the
//!   write), so it is dropped: the driver truncates the file there and logs
//!   how many bytes went.
//! - followed by a valid record, it is **corruption in the middle**: the
//!   hub refuses to start and names the file and offset. Nothing is
//!   silently skipped.

use super::record::{decode, Invalid, Record, RECORD_ALIGN_BYTES, RECORD_HEADER_BYTES};

/// How a log ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every byte up to `valid_bytes` is records; the rest is zeros.
    Clean,
    /// Bytes from `valid_bytes` on are a torn last batch: drop them.
    TornTail {
        /// Bytes after the last valid record that are not zeros or not a
        /// whole record.
        dropped_bytes: u64,
    },
}

/// A record that does not check out, with valid records after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Corruption {
    /// Where the bad record starts.
    pub offset: u64,
    /// What is wrong with it.
    pub reason: Invalid,
    /// Where the next valid record starts.
    pub next_valid: u64,
    /// The valid records before it hold a compaction's `SnapshotEnd`.
    pub snapshot_complete: bool,
}

/// What a scan found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scan {
    /// Records read.
    pub records: u64,
    /// Bytes of valid records (where appending resumes).
    pub valid_bytes: u64,
    /// How the log ends.
    pub verdict: Verdict,
    /// The log holds a compaction's `SnapshotEnd`.
    pub snapshot_complete: bool,
}

/// Scans a whole log held in memory.
pub fn scan(bytes: &[u8], apply: impl FnMut(Record, u64, usize)) -> Result<Scan, Corruption> {
    let mut scanner = Scanner::new(apply);
    scanner.feed(bytes);
    scanner.finish()
}

/// A scan fed in chunks: the driver reads the file in large reads and
/// feeds each; records may straddle chunks.
pub struct Scanner<F> {
    apply: F,
    /// Bytes not yet consumed (a partial record, or the bad tail).
    buffer: Vec<u8>,
    /// File offset of `buffer[0]`.
    offset: u64,
    records: u64,
    snapshot_complete: bool,
    /// A bad record was met at this offset, with its reason: everything
    /// after it is kept to judge torn tail against corruption.
    stopped: Option<(u64, Invalid)>,
    /// End of the log (a zero length) was seen at this offset.
    ended: Option<u64>,
    /// Zero bytes seen (and dropped) after the end marker.
    zeros_after_end: u64,
}

impl<F: FnMut(Record, u64, usize)> Scanner<F> {
    /// A scan that hands every valid record to `apply`, in order, with its
    /// file offset and length (padding included).
    pub fn new(apply: F) -> Scanner<F> {
        Scanner {
            apply,
            buffer: Vec::new(),
            offset: 0,
            records: 0,
            snapshot_complete: false,
            stopped: None,
            ended: None,
            zeros_after_end: 0,
        }
    }

    /// The next bytes of the file.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.ended.is_some() && self.stopped.is_none() {
            // Past the end marker only zeros are expected (the preallocated
            // rest of the file): check them without keeping them.
            if bytes.iter().all(|&b| b == 0) {
                self.zeros_after_end += bytes.len() as u64;
                return;
            }
            // Bytes after zeros after the end (rare: judged in `finish`):
            // put the zeros back so that offsets stay right.
            let zeros = std::mem::take(&mut self.zeros_after_end) as usize;
            self.buffer.resize(self.buffer.len() + zeros, 0);
        }
        self.buffer.extend_from_slice(bytes);
        if self.stopped.is_some() || self.ended.is_some() {
            return;
        }
        let mut at = 0;
        loop {
            match decode(&self.buffer[at..]) {
                Ok(Some((record, len))) => {
                    if record == Record::SnapshotEnd {
                        self.snapshot_complete = true;
                    }
                    (self.apply)(record, self.offset + at as u64, len);
                    self.records += 1;
                    at += len;
                }
                Ok(None) => {
                    if self.buffer.len() - at >= RECORD_HEADER_BYTES {
                        self.ended = Some(self.offset + at as u64);
                    }
                    break;
                }
                // More bytes may complete it.
                Err(Invalid::Truncated) => break,
                Err(reason) => {
                    self.stopped = Some((self.offset + at as u64, reason));
                    break;
                }
            }
        }
        match self.stopped {
            None => {
                self.buffer.drain(..at);
                self.offset += at as u64;
            }
            Some((bad, _)) => {
                let keep_from = (bad - self.offset) as usize;
                self.buffer.drain(..keep_from);
                self.offset = bad;
            }
        }
    }

    /// The end of the file: the verdict.
    pub fn finish(mut self) -> Result<Scan, Corruption> {
        let (bad, reason) = match (self.stopped, self.ended) {
            (Some(stopped), _) => stopped,
            (None, Some(end)) => {
                // A zero length: the rest must be zeros too (else bytes
                // follow the end marker: judge them like a bad record).
                let rest = &self.buffer[(end - self.offset) as usize..];
                if rest.iter().all(|&b| b == 0) {
                    return Ok(self.scan(end, Verdict::Clean));
                }
                // The zeros dropped after the last non-zero chunk belong to
                // the bytes being judged (a record's zero fields, padding).
                let zeros = std::mem::take(&mut self.zeros_after_end) as usize;
                self.buffer.resize(self.buffer.len() + zeros, 0);
                (end, Invalid::Length)
            }
            (None, None) => {
                if self.buffer.is_empty() || self.buffer.iter().all(|&b| b == 0) {
                    let end = self.offset;
                    return Ok(self.scan(end, Verdict::Clean));
                }
                // A partial record at the very end.
                (self.offset, Invalid::Truncated)
            }
        };
        let start = (bad - self.offset) as usize;
        let mut probe = start + RECORD_ALIGN_BYTES;
        while probe + RECORD_HEADER_BYTES <= self.buffer.len() {
            if let Ok(Some(_)) = decode(&self.buffer[probe..]) {
                return Err(Corruption {
                    offset: bad,
                    reason,
                    next_valid: self.offset + probe as u64,
                    snapshot_complete: self.snapshot_complete,
                });
            }
            probe += RECORD_ALIGN_BYTES;
        }
        let dropped = self.buffer[start..]
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |last| last + 1);
        self.buffer.truncate(start);
        let verdict = if dropped == 0 {
            Verdict::Clean
        } else {
            Verdict::TornTail {
                dropped_bytes: dropped as u64,
            }
        };
        Ok(self.scan(bad, verdict))
    }

    fn scan(&mut self, valid_bytes: u64, verdict: Verdict) -> Scan {
        Scan {
            records: self.records,
            valid_bytes,
            verdict,
            snapshot_complete: self.snapshot_complete,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::store::record::{encode, tests_support::samples};

    fn log() -> (Vec<u8>, Vec<usize>) {
        let mut out = BytesMut::new();
        let mut starts = Vec::new();
        for record in samples() {
            starts.push(out.len());
            encode(&record, &mut out);
        }
        (out.to_vec(), starts)
    }

    fn scan_all(bytes: &[u8], chunk: usize) -> (Result<Scan, Corruption>, Vec<Record>) {
        let mut records = Vec::new();
        let mut scanner = Scanner::new(|record, _, _| records.push(record));
        for piece in bytes.chunks(chunk.max(1)) {
            scanner.feed(piece);
        }
        let result = scanner.finish();
        (result, records)
    }

    #[test]
    fn a_clean_log_reads_whole_in_any_chunking_with_zeros_after() {
        let (mut bytes, _) = log();
        let len = bytes.len() as u64;
        bytes.extend_from_slice(&[0; 4096]);
        for chunk in [1, 7, 64, 4096, usize::MAX] {
            let (result, records) = scan_all(&bytes, chunk);
            let scan = result.unwrap();
            assert_eq!(records, samples());
            assert_eq!((scan.valid_bytes, scan.verdict), (len, Verdict::Clean));
            assert!(scan.snapshot_complete);
        }
    }

    /// Truncating or corrupting the last record at every byte offset is
    /// a torn tail: truncated there, never a panic, never a wrong record.
    #[test]
    fn the_last_record_torn_at_every_offset_is_a_torn_tail() {
        let (bytes, starts) = log();
        let last = *starts.last().unwrap();
        let expected = samples().len() - 1;
        // The record without its zero padding (a cut in the padding, with
        // zeros after, leaves the record whole).
        let len = u32::from_le_bytes(bytes[last..last + 4].try_into().unwrap()) as usize;
        let unpadded = last + RECORD_HEADER_BYTES + len;
        for cut in last..unpadded {
            let mut torn = bytes[..cut].to_vec();
            torn.extend_from_slice(&[0; 64]);
            let (result, records) = scan_all(&torn, 13);
            let scan = result.unwrap();
            assert_eq!(records.len(), expected, "cut at {cut}");
            assert_eq!(scan.valid_bytes, last as u64);
            for byte in last..unpadded {
                let mut flipped = bytes.clone();
                flipped[byte] ^= 0x5a;
                let (result, records) = scan_all(&flipped, 64);
                let scan = result.unwrap();
                assert_eq!(records.len(), expected, "flip at {byte}");
                assert_eq!(scan.valid_bytes, last as u64);
            }
        }
    }

    /// A bad record with valid ones after it is reported, never skipped.
    #[test]
    fn a_flipped_bit_inside_a_middle_record_is_corruption() {
        let (bytes, starts) = log();
        let middle = starts[5];
        for byte in middle..starts[6] {
            let mut flipped = bytes.clone();
            flipped[byte] ^= 1;
            let (result, records) = scan_all(&flipped, 100);
            let corruption = result.unwrap_err();
            assert_eq!(corruption.offset, middle as u64, "flip at {byte}");
            assert_eq!(records.len(), 5);
            assert!(corruption.next_valid >= starts[6] as u64);
        }
    }
}

#[cfg(test)]
mod end_tests {
    use bytes::BytesMut;

    use super::*;
    use crate::store::record::{encode, tests_support::samples};

    /// Bytes after a long run of zeros past the end are still judged.
    #[test]
    fn a_record_far_after_the_end_is_corruption() {
        let mut out = BytesMut::new();
        for record in samples() {
            encode(&record, &mut out);
        }
        let valid = out.len();
        let mut bytes = out.to_vec();
        bytes.extend_from_slice(&[0; 1 << 16]);
        let mut tail = BytesMut::new();
        encode(&samples()[0], &mut tail);
        bytes.extend_from_slice(&tail);
        let mut scanner = Scanner::new(|_, _, _| {});
        for chunk in bytes.chunks(4096) {
            scanner.feed(chunk);
        }
        let corruption = scanner.finish().unwrap_err();
        assert_eq!(corruption.offset, valid as u64);
        assert_eq!(corruption.next_valid, (valid + (1 << 16)) as u64);
    }
}

#[cfg(test)]
mod fuzz_found {
    use super::*;

    /// Found by the log_scan fuzz target: an end marker, then bytes, then a
    /// valid record whose last bytes are zeros, fed one byte at a time.
    /// The zeros were dropped as "after the end" and the record, cut
    /// short, no longer checked out: the verdict depended on the chunking.
    #[test]
    fn a_record_ending_in_zeros_after_the_end_is_judged_whole_in_any_chunking() {
        let mut file = vec![0u8; 5];
        file.extend_from_slice(&[
            0x4e, 0x7d, 0x45, 0x03, 0, 0, 0, 0x2c, 0, 0, 0x03, 0, 0, 0, 0x4e,
        ]);
        file.resize(48, 0);
        let mut record = bytes::BytesMut::new();
        crate::store::record::encode(
            &crate::store::record::Record::IdsReserved { next: 4 },
            &mut record,
        );
        file.extend_from_slice(&record);
        file.push(0);
        let judge = |chunk: usize| {
            let mut scanner = Scanner::new(|_, _, _| {});
            for piece in file.chunks(chunk) {
                scanner.feed(piece);
            }
            scanner.finish()
        };
        let whole = judge(file.len());
        assert!(
            matches!(
                whole,
                Err(Corruption {
                    offset: 0,
                    next_valid: 48,
                    ..
                })
            ),
            "{whole:?}"
        );
        for chunk in [1, 2, 3, 7, 8, 13] {
            assert_eq!(judge(chunk), whole, "chunks of {chunk}");
        }
    }
}
