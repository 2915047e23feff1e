//! A sender's bytes waiting for its socket, with large bodies referenced
//! rather than copied.
//!
//! Small messages are appended whole to one buffer. For bodies of
//! [`LARGE_BODY_BYTES`] or more, only the message's own bytes (frame head,
//! the 20-byte body header, frame tail) are copied: the rest of the body is
//! the same for every message of the run (the template's filler), so the
//! buffer records a mark where it goes and the write hands the kernel a
//! list of slices (`sendmsg` with an iovec). A 1 MiB body then costs one
//! copy (into the kernel) instead of two.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::RawFd;

use bytes::BytesMut;

use crate::poll::{self, Io};

/// Bodies from this size on are sent by reference to the shared filler.
pub const LARGE_BODY_BYTES: usize = 64 * 1024;

/// Most slices per `sendmsg` (well below `IOV_MAX`).
const SLICES_PER_WRITE: usize = 64;

/// Bytes waiting to be written: `buf[pos..]`, with the shared filler
/// (`tail`, passed to [`Outbound::write`]) inserted at each mark.
#[derive(Default)]
pub struct Outbound {
    buf: BytesMut,
    /// Bytes of `buf` written.
    pos: usize,
    /// Offsets in `buf` where a filler goes, ascending; none below `pos`.
    marks: VecDeque<usize>,
    /// Bytes of the first filler (at `marks[0] == pos`) already written.
    tail_pos: usize,
}

/// What a write achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything is written.
    Drained,
    /// The socket is full; bytes remain.
    Blocked,
}

impl Outbound {
    /// An empty outbound with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Outbound {
        Outbound {
            buf: BytesMut::with_capacity(capacity),
            ..Outbound::default()
        }
    }

    /// The buffer to append whole messages to.
    pub fn buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Records that the filler goes here (after what is appended so far).
    pub fn mark_tail(&mut self) {
        self.marks.push_back(self.buf.len());
    }

    /// Nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.pos == self.buf.len() && self.marks.is_empty()
    }

    /// Bytes appended but not yet written, fillers not counted: how far a
    /// batch has grown.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Bytes waiting, fillers of `tail_len` included.
    pub fn pending(&self, tail_len: usize) -> usize {
        self.buf.len() - self.pos + self.marks.len() * tail_len - self.tail_pos
    }

    /// Forgets everything waiting.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
        self.marks.clear();
        self.tail_pos = 0;
    }

    /// The waiting bytes as slices, in order, as many as fit in `out`;
    /// returns how many.
    fn slices<'a>(&'a self, tail: &'a [u8], out: &mut [IoSlice<'a>]) -> usize {
        let mut count = 0;
        let mut at = self.pos;
        let mut tail_pos = self.tail_pos;
        for &mark in &self.marks {
            if count + 2 > out.len() {
                return count;
            }
            if at < mark {
                out[count] = IoSlice::new(&self.buf[at..mark]);
                count += 1;
            }
            out[count] = IoSlice::new(&tail[tail_pos..]);
            count += 1;
            tail_pos = 0;
            at = mark;
        }
        if at < self.buf.len() && count < out.len() {
            out[count] = IoSlice::new(&self.buf[at..]);
            count += 1;
        }
        count
    }

    /// Records that `written` bytes went out.
    fn consume(&mut self, mut written: usize, tail_len: usize) {
        while written > 0 {
            let stop = self.marks.front().copied().unwrap_or(self.buf.len());
            let own = (stop - self.pos).min(written);
            self.pos += own;
            written -= own;
            if written == 0 || self.marks.is_empty() {
                break;
            }
            let filler = (tail_len - self.tail_pos).min(written);
            self.tail_pos += filler;
            written -= filler;
            if self.tail_pos == tail_len {
                self.marks.pop_front();
                self.tail_pos = 0;
            }
        }
        if self.is_empty() {
            self.clear();
        }
    }

    /// Writes as much as the socket takes with `write` (one call per
    /// round, repeated while it takes everything offered).
    pub fn write_with<F>(&mut self, tail: &[u8], mut write: F) -> io::Result<Flushed>
    where
        F: FnMut(&[IoSlice<'_>]) -> io::Result<Io>,
    {
        while !self.is_empty() {
            let mut slices = [IoSlice::new(&[]); SLICES_PER_WRITE];
            let count = self.slices(tail, &mut slices);
            let slices = &slices[..count];
            let offered: usize = slices.iter().map(|slice| slice.len()).sum();
            match write(slices)? {
                Io::WouldBlock => return Ok(Flushed::Blocked),
                Io::Done(written) => {
                    self.consume(written, tail.len());
                    if written < offered {
                        return Ok(if self.is_empty() {
                            Flushed::Drained
                        } else {
                            Flushed::Blocked
                        });
                    }
                }
            }
        }
        Ok(Flushed::Drained)
    }

    /// Writes to socket `fd`: one `send` when there is one slice, else one
    /// `sendmsg` per round.
    pub fn write(&mut self, fd: RawFd, tail: &[u8]) -> io::Result<Flushed> {
        self.write_with(tail, |slices| match slices {
            [one] => poll::send(fd, one),
            many => poll::send_vectored(fd, many),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::SplitMix64;

    /// Random messages, some with fillers, written through a writer that
    /// takes random amounts: the bytes that come out are the stream.
    #[test]
    fn partial_writes_keep_the_stream() {
        let tail: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut rng = SplitMix64::new(9);
        for _ in 0..200 {
            let mut outbound = Outbound::default();
            let mut expected = Vec::new();
            let mut got = Vec::new();
            for _ in 0..rng.below(6) + 1 {
                for _ in 0..rng.below(4) {
                    let own: Vec<u8> = (0..rng.below(50)).map(|_| rng.below(256) as u8).collect();
                    outbound.buf().extend_from_slice(&own);
                    expected.extend_from_slice(&own);
                    if rng.below(2) == 0 {
                        outbound.mark_tail();
                        expected.extend_from_slice(&tail);
                    }
                }
                assert_eq!(outbound.pending(tail.len()), expected.len() - got.len());
                loop {
                    let result = outbound
                        .write_with(&tail, |slices| {
                            if rng.below(4) == 0 {
                                return Ok(Io::WouldBlock);
                            }
                            let mut budget = rng.below(700) + 1;
                            let mut written = 0;
                            for slice in slices {
                                let take = slice.len().min(budget);
                                got.extend_from_slice(&slice[..take]);
                                budget -= take;
                                written += take;
                            }
                            Ok(Io::Done(written))
                        })
                        .unwrap();
                    if result == Flushed::Drained || rng.below(3) == 0 {
                        break;
                    }
                }
            }
            while outbound
                .write_with(&tail, |slices| {
                    let mut written = 0;
                    for slice in slices {
                        got.extend_from_slice(slice);
                        written += slice.len();
                    }
                    Ok(Io::Done(written))
                })
                .unwrap()
                == Flushed::Blocked
            {}
            assert_eq!(got, expected);
            assert!(outbound.is_empty());
        }
    }
}
