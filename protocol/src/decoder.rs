//! The incremental decoder: bytes in, validated frames out.
//!
//! The IO driver either reads straight into [`Decoder::spare`] and calls
//! [`Decoder::commit`], or hands over bytes it already has with
//! [`Decoder::handle_bytes`]. [`Decoder::poll_frame`] then yields each
//! complete frame, borrowed from the decoder's 16-byte aligned buffer and
//! already validated; any split of the stream gives the same frames.
//!
//! Memory: nothing is allocated until bytes arrive, the buffer grows only to
//! fit the frame at hand (whose length was checked against the limit first),
//! and [`Decoder::release_idle`] gives it back when no bytes are pending.

use std::marker::PhantomData;

use crate::{
    error::DecodeError,
    frame::{FrameHeader, Role},
    limits::{FRAME_ALIGN_BYTES, FRAME_BYTES_MAX, FRAME_HEADER_BYTES},
    preface::{check_preface_in, PREFACE_BYTES, VERSION},
};

/// Bytes the decoder offers for one read when no larger frame is pending.
///
/// Large enough to take many small frames per read, small enough that a
/// busy connection holds little: 16 KiB.
pub const READ_CHUNK_BYTES: usize = 16 * 1024;

/// Largest buffer a decoder holds when its driver polls every frame before
/// reading again (reads of at most [`READ_CHUNK_BYTES`]): one maximal frame
/// plus one read, rounded up to the buffer's 16-byte blocks.
pub const DECODER_BYTES_MAX: usize =
    (FRAME_HEADER_BYTES + FRAME_BYTES_MAX + READ_CHUNK_BYTES).next_multiple_of(16);

/// Frames at least this long are handed out with a handle on the buffer
/// they lie in ([`Decoder::poll_frame_shared`]): the hub delivers their
/// bodies from there instead of copying them. Smaller frames are cheaper
/// to copy than to give a buffer of their own: 256 KiB.
pub const SHARED_FRAME_BYTES_MIN: usize = 256 * 1024;

/// Most spare buffers of at least [`SHARED_FRAME_BYTES_MIN`] kept for
/// reuse, process-wide: a decoder that gave its buffer away with a shared
/// frame takes the next one from here instead of allocating and zeroing
/// a megabyte. At most `POOLED_BUFFERS_MAX` x [`DECODER_BYTES_MAX`] (17 MiB).
pub const POOLED_BUFFERS_MAX: usize = 16;

/// 16 bytes with 16-byte alignment: the unit of [`AlignedBuf`].
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Block([u8; 16]);

/// A zero-initialised run of blocks. Large ones go back to [`POOL`] when
/// dropped (by the decoder, or by the last `Bytes` of a shared frame, on
/// whichever thread that is).
struct Blocks(Box<[Block]>);

/// Spare large blocks (stale bytes, but initialised), at most
/// [`POOLED_BUFFERS_MAX`].
static POOL: std::sync::Mutex<Vec<Box<[Block]>>> = std::sync::Mutex::new(Vec::new());

fn pool() -> std::sync::MutexGuard<'static, Vec<Box<[Block]>>> {
    // A panic while holding the lock leaves the vector valid.
    POOL.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Blocks {
    /// At least `bytes` bytes. A large request reuses a pooled run at most
    /// 1/8 larger (so what a shared frame pins stays close to its length).
    fn new(bytes: usize) -> Blocks {
        let count = bytes.div_ceil(16);
        if bytes >= SHARED_FRAME_BYTES_MIN {
            let mut pool = pool();
            if let Some(at) = pool
                .iter()
                .position(|blocks| blocks.len() >= count && blocks.len() <= count + count / 8)
            {
                return Blocks(pool.swap_remove(at));
            }
        }
        Blocks(vec![Block([0; 16]); count].into_boxed_slice())
    }
}

impl Drop for Blocks {
    fn drop(&mut self) {
        if self.0.len() * 16 >= SHARED_FRAME_BYTES_MIN {
            let mut pool = pool();
            if pool.len() < POOLED_BUFFERS_MAX {
                pool.push(std::mem::take(&mut self.0));
            }
        }
    }
}

/// A byte buffer whose start is 16-byte aligned, shared with the frames
/// handed out of it ([`SharedFrame`]) until they are dropped: the decoder
/// writes only into a buffer it holds alone (see [`Decoder::make_room`]).
#[derive(Default)]
struct AlignedBuf {
    blocks: Option<std::sync::Arc<Blocks>>,
}

impl AlignedBuf {
    fn with_capacity(bytes: usize) -> AlignedBuf {
        AlignedBuf {
            blocks: Some(std::sync::Arc::new(Blocks::new(bytes))),
        }
    }

    fn capacity(&self) -> usize {
        self.blocks.as_ref().map_or(0, |blocks| blocks.0.len() * 16)
    }

    /// True while a shared frame still uses the buffer.
    fn is_shared(&self) -> bool {
        self.blocks
            .as_ref()
            .is_some_and(|blocks| std::sync::Arc::strong_count(blocks) > 1)
    }

    fn bytes(&self) -> &[u8] {
        match &self.blocks {
            Some(blocks) => blocks_bytes(&blocks.0),
            None => &[],
        }
    }

    /// # Panics
    /// While the buffer is shared.
    fn bytes_mut(&mut self) -> &mut [u8] {
        let Some(blocks) = self.blocks.as_mut() else {
            return &mut [];
        };
        let blocks = std::sync::Arc::get_mut(blocks)
            .expect("the decoder writes only into a buffer it holds alone");
        let len = blocks.0.len() * 16;
        // SAFETY: as in `blocks_bytes`, and `&mut self` with the `Arc`
        // unique makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(blocks.0.as_mut_ptr().cast(), len) }
    }
}

fn blocks_bytes(blocks: &[Block]) -> &[u8] {
    // SAFETY: `Block` is `repr(C)` over `[u8; 16]` with no padding, so the
    // blocks are `16 * len` contiguous, initialised bytes.
    unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast(), blocks.len() * 16) }
}

/// A handle on the buffer a large frame lies in
/// ([`Decoder::poll_frame_shared`]): parts of the frame outlive the
/// decoder's next read as [`Bytes`](bytes::Bytes), with no copy.
pub struct SharedFrame {
    blocks: std::sync::Arc<Blocks>,
}

/// What a `Bytes` made by [`SharedFrame::bytes_of`] owns.
struct SharedBlocks(std::sync::Arc<Blocks>);

impl AsRef<[u8]> for SharedBlocks {
    fn as_ref(&self) -> &[u8] {
        blocks_bytes(&self.0 .0)
    }
}

impl SharedFrame {
    /// `part` (a slice of the frame, say its body) as shared bytes.
    ///
    /// # Panics
    /// If `part` does not lie in the frame's buffer.
    pub fn bytes_of(&self, part: &[u8]) -> bytes::Bytes {
        let whole = blocks_bytes(&self.blocks.0);
        let start = (part.as_ptr() as usize)
            .checked_sub(whole.as_ptr() as usize)
            .filter(|start| start + part.len() <= whole.len())
            .expect("the part lies in the shared frame's buffer");
        bytes::Bytes::from_owner(SharedBlocks(std::sync::Arc::clone(&self.blocks)))
            .slice(start..start + part.len())
    }

    /// Bytes of buffer the handle keeps alive (what a delivery made from it
    /// pins until it is written).
    pub fn pinned_bytes(&self) -> usize {
        self.blocks.0.len() * 16
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Waiting for (the rest of) the peer's preface.
    Preface,
    /// Decoding frames.
    Frames,
    /// A fatal error was returned; the stream is not trusted any more.
    Failed(DecodeError),
}

/// Incremental frame decoder for side `R` ([`HubSide`](crate::HubSide) or
/// [`ClientSide`](crate::ClientSide)).
///
/// Invariants: `start <= end <= buf.capacity()`, `start` is a multiple of
/// [`FRAME_ALIGN_BYTES`], and `buf[start..end]` holds the received bytes not
/// yet consumed.
pub struct Decoder<R: Role> {
    buf: AlignedBuf,
    /// First byte not yet consumed; a multiple of 8.
    start: usize,
    /// One past the last received byte.
    end: usize,
    /// Length of the frame last returned, consumed on the next call.
    returned_len: usize,
    stage: Stage,
    /// The version the peer's preface carried (the connection's version),
    /// or 0 before it was accepted.
    version: u16,
    /// The only version the preface may carry, or 0 for any of `R::VERSIONS`.
    expected: u16,
    _role: PhantomData<R>,
}

impl<R: Role> Default for Decoder<R> {
    fn default() -> Self {
        Decoder::new()
    }
}

impl<R: Role> Decoder<R> {
    /// A decoder that first expects the peer's preface. Allocates nothing.
    pub fn new() -> Decoder<R> {
        Decoder {
            buf: AlignedBuf::default(),
            start: 0,
            end: 0,
            returned_len: 0,
            stage: Stage::Preface,
            version: 0,
            expected: 0,
            _role: PhantomData,
        }
    }

    /// A decoder for a stream whose preface was already checked, as
    /// version 1.
    pub fn after_preface() -> Decoder<R> {
        Decoder::after_preface_version(VERSION)
    }

    /// A decoder whose peer preface must carry exactly `version` (a client
    /// that sent a version-2 preface expects the hub to answer with one);
    /// any other version is `UnsupportedVersion`.
    ///
    /// # Panics
    /// If this side does not speak `version` ([`Role::VERSIONS`]).
    pub fn expecting(version: u16) -> Decoder<R> {
        assert!(
            R::VERSIONS.contains(&version),
            "this side does not speak version {version}"
        );
        Decoder {
            expected: version,
            ..Decoder::new()
        }
    }

    /// A decoder for a stream whose preface (of `version`) was already
    /// checked: say, a connection handed over by the shard that read its
    /// preface, followed by [`handle_bytes`](Self::handle_bytes) with the
    /// bytes that shard had already read ([`buffered`](Self::buffered)).
    ///
    /// # Panics
    /// If this side does not speak `version` ([`Role::VERSIONS`]).
    pub fn after_preface_version(version: u16) -> Decoder<R> {
        assert!(
            R::VERSIONS.contains(&version),
            "this side does not speak version {version}"
        );
        Decoder {
            stage: Stage::Frames,
            version,
            expected: version,
            ..Decoder::new()
        }
    }

    /// The connection's protocol version: the one the peer's preface
    /// carried, once it was accepted; `None` before.
    pub fn version(&self) -> Option<u16> {
        (self.version != 0).then_some(self.version)
    }

    /// The bytes received and not yet consumed ([`buffered_len`](Self::buffered_len)
    /// of them), preface included while it is pending: what a driver hands
    /// on with a connection so that another decoder continues the stream.
    pub fn buffered(&self) -> &[u8] {
        &self.buf.bytes()[self.start + self.returned_len..self.end]
    }

    /// Bytes received and not yet consumed.
    pub fn buffered_len(&self) -> usize {
        self.end - self.start - self.returned_len
    }

    /// Bytes of buffer currently held (for memory accounting).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// True once the peer's preface has been accepted.
    pub fn preface_done(&self) -> bool {
        self.stage == Stage::Frames
    }

    /// Frees the buffer when no bytes are pending: an idle connection then
    /// holds no buffer at all.
    pub fn release_idle(&mut self) {
        self.consume_returned();
        if self.start == self.end {
            self.buf = AlignedBuf::default();
            self.start = 0;
            self.end = 0;
        }
    }

    /// Room to read into: at least one byte, and enough for the frame being
    /// received if its header is already in. Call [`commit`](Self::commit)
    /// with the number of bytes written.
    pub fn spare(&mut self) -> &mut [u8] {
        self.consume_returned();
        let frame_len = self.pending_frame_len();
        self.make_room(frame_len.max(READ_CHUNK_BYTES));
        let end = self.end;
        // A frame that will be shared is read up to its end and no further:
        // the next frame's first bytes would otherwise have to be copied out
        // of the buffer the shared frame keeps.
        let frame_end = self.start + frame_len;
        let limit = if frame_len >= SHARED_FRAME_BYTES_MIN && frame_end > end {
            frame_end
        } else {
            self.buf.capacity()
        };
        &mut self.buf.bytes_mut()[end..limit]
    }

    /// Records that `len` bytes were written at the start of [`spare`](Self::spare).
    pub fn commit(&mut self, len: usize) {
        assert!(self.end + len <= self.buf.capacity(), "commit past spare()");
        self.end += len;
    }

    /// Appends `bytes` (for callers that read into a buffer of their own,
    /// such as one shared by many connections). Grows the buffer only to
    /// what it must hold, so small reads stay cheap.
    pub fn handle_bytes(&mut self, bytes: &[u8]) {
        self.consume_returned();
        let pending = self.end - self.start;
        let needed = pending + bytes.len();
        // Geometric growth while bytes pile up unpolled: linear total copying.
        let wanted = if pending > 0 && needed > self.buf.capacity() {
            needed.max(doubled_within_bound(self.buf.capacity()))
        } else {
            needed
        };
        self.make_room(wanted);
        let end = self.end;
        self.buf.bytes_mut()[end..end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// The next complete frame, if one is buffered.
    ///
    /// `Ok(None)` means more bytes are needed. A returned frame stays valid
    /// until the next call on the decoder. After a fatal error every later
    /// call returns the same error.
    pub fn poll_frame(&mut self) -> Result<Option<R::Frame<'_>>, DecodeError> {
        Ok(self.poll_frame_inner(false)?.map(|(frame, _)| frame))
    }

    /// [`poll_frame`](Self::poll_frame), and for a frame of at least
    /// [`SHARED_FRAME_BYTES_MIN`] bytes also a handle on the buffer it lies
    /// in, so parts of it can be kept past the next read without a copy.
    /// While such a handle (or bytes made from it) lives, the decoder reads
    /// into a buffer of its own.
    #[allow(clippy::type_complexity)]
    pub fn poll_frame_shared(
        &mut self,
    ) -> Result<Option<(R::Frame<'_>, Option<SharedFrame>)>, DecodeError> {
        self.poll_frame_inner(true)
    }

    #[allow(clippy::type_complexity)]
    fn poll_frame_inner(
        &mut self,
        share: bool,
    ) -> Result<Option<(R::Frame<'_>, Option<SharedFrame>)>, DecodeError> {
        self.consume_returned();
        if self.stage == Stage::Preface && !self.poll_preface()? {
            return Ok(None);
        }
        if let Stage::Failed(error) = self.stage {
            return Err(error);
        }
        let header = match FrameHeader::check(&self.buf.bytes()[self.start..self.end]) {
            Ok(header) => header,
            Err(DecodeError::Incomplete { .. }) => return Ok(None),
            Err(error) => return Err(self.fail(error)),
        };
        if !R::accepts_version(self.version, header.kind) {
            return Err(self.fail(DecodeError::UnknownKind { kind: header.kind }));
        }
        let frame_len = header.frame_len();
        if self.end - self.start < frame_len {
            return Ok(None);
        }
        self.returned_len = frame_len;
        let archive_start = self.start + FRAME_HEADER_BYTES;
        debug_assert_eq!(archive_start % FRAME_ALIGN_BYTES, 0);
        let shared = match &self.buf.blocks {
            Some(blocks) if share && frame_len >= SHARED_FRAME_BYTES_MIN => Some(SharedFrame {
                blocks: std::sync::Arc::clone(blocks),
            }),
            _ => None,
        };
        let archive = &self.buf.bytes()[archive_start..self.start + frame_len];
        match R::parse_version(self.version, header.kind, archive) {
            Ok(frame) => Ok(Some((frame, shared))),
            Err(error) if !error.is_fatal() => Err(error),
            Err(error) => {
                self.stage = Stage::Failed(error);
                Err(error)
            }
        }
    }

    /// Puts back the frame last returned by [`poll_frame`](Self::poll_frame):
    /// the next call returns it again. For a caller that cannot act on a
    /// frame yet (the hub pauses a sender under backpressure) and must not
    /// lose it.
    pub fn unpoll(&mut self) {
        self.returned_len = 0;
    }

    fn fail(&mut self, error: DecodeError) -> DecodeError {
        debug_assert!(error.is_fatal());
        self.stage = Stage::Failed(error);
        error
    }

    /// Checks the peer's preface: `Ok(true)` once it has been accepted,
    /// `Ok(false)` while more bytes are needed, and the fatal error when it
    /// is wrong. [`poll_frame`](Self::poll_frame) calls this itself; a driver
    /// calls it to act on the preface (say, to answer with its own) before
    /// the first frame.
    pub fn poll_preface(&mut self) -> Result<bool, DecodeError> {
        self.consume_returned();
        match self.stage {
            Stage::Frames => return Ok(true),
            Stage::Failed(error) => return Err(error),
            Stage::Preface => {}
        }
        let available = &self.buf.bytes()[self.start..self.end];
        let versions = match self.expected {
            0 => R::VERSIONS,
            version => version..=version,
        };
        let version = check_preface_in(available, versions).map_err(|error| self.fail(error))?;
        if let Some(version) = version {
            self.start += PREFACE_BYTES;
            self.stage = Stage::Frames;
            self.version = version;
        }
        Ok(version.is_some())
    }

    fn consume_returned(&mut self) {
        self.start += std::mem::take(&mut self.returned_len);
        debug_assert!(self.start <= self.end);
        debug_assert_eq!(self.start % FRAME_ALIGN_BYTES, 0);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Length of the frame whose header is buffered, or 0.
    fn pending_frame_len(&self) -> usize {
        match FrameHeader::check(&self.buf.bytes()[self.start..self.end]) {
            Ok(header) => header.frame_len(),
            Err(_) => 0,
        }
    }

    /// Ensures `wanted` bytes of room from `start`, plus at least one free
    /// byte, moving pending bytes to the front or growing as needed.
    ///
    /// A driver that polls every frame before reading again never holds more
    /// than [`DECODER_BYTES_MAX`]: then the pending bytes are at most one
    /// partial frame, whose length was checked against the limit. Bytes
    /// handed over without polling are kept (growing geometrically).
    ///
    /// A buffer still shared with a frame handed out is never written: the
    /// pending bytes move to a buffer of the decoder's own.
    fn make_room(&mut self, wanted: usize) {
        let pending = self.end - self.start;
        let needed = wanted.max(pending + 1);
        let shared = self.buf.is_shared();
        if !shared && self.buf.capacity() - self.start >= needed {
            return;
        }
        if !shared && self.buf.capacity() >= needed {
            self.buf.bytes_mut().copy_within(self.start..self.end, 0);
        } else {
            let grown_len = if pending + 1 > wanted {
                needed.max(doubled_within_bound(self.buf.capacity()))
            } else {
                needed
            };
            let mut grown = AlignedBuf::with_capacity(grown_len);
            grown.bytes_mut()[..pending].copy_from_slice(&self.buf.bytes()[self.start..self.end]);
            self.buf = grown;
        }
        self.start = 0;
        self.end = pending;
    }
}

/// Twice `capacity`, but not past [`DECODER_BYTES_MAX`] while below it.
///
/// Doubling keeps bytes handed over without polling linear to buffer; the
/// cap keeps a driver that polls every frame within the documented bound
/// when a read straddles the end of a large frame (plain doubling took it
/// to 2 MiB: found by fuzzing, see docs/fuzzing.md).
fn doubled_within_bound(capacity: usize) -> usize {
    if capacity < DECODER_BYTES_MAX {
        (capacity * 2).min(DECODER_BYTES_MAX)
    } else {
        capacity * 2
    }
}
