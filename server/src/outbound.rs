//! One connection's outbound queue: frames waiting to be written, with byte
//! accounting for the slow-consumer policy.
//!
//! Deliveries arrive as shared `Bytes` (one buffer for every receiver of a
//! relay); small replies are encoded straight into a coalescing buffer. The
//! writer takes both as one vectored write. Order is exactly push order.

use std::{collections::VecDeque, io::IoSlice};

use bytes::{Buf, Bytes, BytesMut};
use relayhub_protocol::{
    deliver_frame_len, deliver_header, deliver_tail, deliver_v2_header, deliver_v2_tail, encode,
    encode_deliver, DeliverV2Meta, Error as ErrorFrame, ErrorCodeV2, Message, SharedFrame,
    FRAME_HEADER_BYTES,
};

/// Most slices handed to one vectored write (the kernel's `UIO_MAXIOV` is 1024).
pub const WRITE_SLICES_MAX: usize = 64;

/// Bytes a queued shared frame is charged for besides its length: its
/// `Bytes` handle and its slot in the queue, with the deque's growth. So a
/// queue of many tiny frames stays within `bytes_max` in memory too.
pub const SHARED_FRAME_HANDLE_BYTES: usize = 64;

/// Least a connection's buffer of small frames grows by: 16 KiB.
pub const SMALL_BUFFER_BYTES: usize = 16 << 10;

/// Largest body [`Outbound::push_deliver_v2`] copies into the queue instead
/// of sharing the relay's buffer.
pub const INLINE_BODY_BYTES_MAX: usize = 4096;

/// The body length of a version-1 `Deliver` frame built by the hub
/// (`encode_deliver`): the last 4 bytes of its root.
pub fn deliver_body_len(frame: &[u8]) -> usize {
    let tail: [u8; 4] = frame[frame.len() - 4..].try_into().expect("4 bytes");
    let len = u32::from_le_bytes(tail) as usize;
    assert_eq!(
        deliver_frame_len(len),
        frame.len(),
        "a Deliver frame of the hub's own"
    );
    len
}

/// Where the body of a version-1 `Deliver` frame built by the hub lies.
fn deliver_body_range(frame: &[u8]) -> std::ops::Range<usize> {
    FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + deliver_body_len(frame)
}

/// The body of a version-1 `Deliver` frame built by the hub.
pub fn deliver_body(frame: &Bytes) -> Bytes {
    frame.slice(deliver_body_range(frame))
}

/// A relay's body as a shard keeps it for all its local receivers: one
/// buffer whatever their number, shared by their queues (and inboxes).
#[derive(Clone, Debug)]
pub enum SharedBody {
    /// A whole version-1 `Deliver` frame around a copy of the body: bodies
    /// of frames smaller than [`SHARED_FRAME_BYTES_MIN`](relayhub_protocol::SHARED_FRAME_BYTES_MIN)
    /// (one copy, and a version-1 receiver gets the frame as it is).
    Frame(Bytes),
    /// The body where it arrived, in the sender's read buffer (large
    /// relays: no copy; each receiver gets a header and a tail around it).
    /// What it pins is at most 1/8 more than the relay frame.
    Body {
        /// The sender.
        from: u64,
        /// The body itself.
        body: Bytes,
    },
}

impl SharedBody {
    /// The body of a relay from `from`: shared with the relay's frame when
    /// the decoder handed that out (`shared`), else copied into a frame.
    pub fn new(from: u64, body: &[u8], shared: Option<&SharedFrame>) -> SharedBody {
        match shared {
            Some(shared) => SharedBody::Body {
                from,
                body: shared.bytes_of(body),
            },
            None => SharedBody::Frame(
                encode_deliver(from, body).expect("a relay's body fits a deliver frame"),
            ),
        }
    }

    /// A body held on its own (read back from the log).
    pub fn from_body(from: u64, body: Bytes) -> SharedBody {
        SharedBody::Body { from, body }
    }

    /// The body's bytes.
    pub fn body_slice(&self) -> &[u8] {
        match self {
            SharedBody::Frame(frame) => &frame[deliver_body_range(frame)],
            SharedBody::Body { body, .. } => body,
        }
    }

    /// The body as shared bytes (no copy).
    pub fn body(&self) -> Bytes {
        match self {
            SharedBody::Frame(frame) => deliver_body(frame),
            SharedBody::Body { body, .. } => body.clone(),
        }
    }

    /// The body's length.
    pub fn body_len(&self) -> usize {
        match self {
            SharedBody::Frame(frame) => deliver_body_len(frame),
            SharedBody::Body { body, .. } => body.len(),
        }
    }

    /// Bytes of the version-1 `Deliver` frame it makes (what the mesh
    /// counts it for).
    pub fn frame_len(&self) -> usize {
        deliver_frame_len(self.body_len())
    }

    /// Where the body lies: the same for every clone (entries of one relay
    /// share it).
    pub fn as_ptr(&self) -> *const u8 {
        self.body_slice().as_ptr()
    }
}

/// Where the queue is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboundState {
    /// Accepting frames.
    Open,
    /// No more frames; the writer drains what is queued, then closes.
    Closing,
}

/// The queue refuses frames: it is closing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushError {
    /// Over `outbound_bytes_max`: the receiver is a slow consumer.
    Overflow,
    /// The connection is closing or gone.
    Closing,
}

/// A connection's outbound queue.
///
/// Invariant: `queued_bytes` equals the bytes in `frames` plus `small`, and
/// stays at most `bytes_max` plus one final error frame.
#[derive(Debug)]
pub struct Outbound {
    /// Shared frames, oldest first, all before `small`.
    frames: VecDeque<Bytes>,
    /// Small frames encoded in place, after every frame in `frames`.
    small: BytesMut,
    queued_bytes: usize,
    bytes_max: usize,
    state: OutboundState,
    /// The driver's writer waits for frames (see [`park_writer`](Self::park_writer)).
    writer_parked: bool,
    /// A push or close happened while the writer was parked: the shard
    /// tells the driver to wake it (see [`take_wake`](Self::take_wake)).
    wake_pending: bool,
}

impl Outbound {
    /// An empty queue holding at most `bytes_max` bytes.
    pub fn new(bytes_max: usize) -> Outbound {
        Outbound {
            frames: VecDeque::new(),
            small: BytesMut::new(),
            queued_bytes: 0,
            bytes_max,
            state: OutboundState::Open,
            writer_parked: false,
            wake_pending: false,
        }
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// The limit this queue enforces.
    pub fn bytes_max(&self) -> usize {
        self.bytes_max
    }

    /// The queue's state.
    pub fn state(&self) -> OutboundState {
        self.state
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queued_bytes == 0
    }

    fn admit(&self, len: usize) -> Result<(), PushError> {
        if self.state != OutboundState::Open {
            return Err(PushError::Closing);
        }
        if self.charged_bytes() + len > self.bytes_max {
            return Err(PushError::Overflow);
        }
        Ok(())
    }

    /// What the queue counts against `bytes_max`: queued bytes plus each
    /// shared frame's handle.
    fn charged_bytes(&self) -> usize {
        self.queued_bytes + self.frames.len() * SHARED_FRAME_HANDLE_BYTES
    }

    /// Queues a shared frame (a delivery).
    pub fn push_shared(&mut self, frame: Bytes) -> Result<(), PushError> {
        // Two handles at most: `small` may be split off in front of it.
        self.admit(frame.len() + 2 * SHARED_FRAME_HANDLE_BYTES)?;
        if !self.small.is_empty() {
            // Keep push order: what was encoded in place goes first.
            self.frames.push_back(self.small.split().freeze());
        }
        self.queued_bytes += frame.len();
        self.frames.push_back(frame);
        self.wake_writer();
        Ok(())
    }

    /// Queues a version-1 `Deliver` of a shared body: the frame itself, or
    /// a header and a tail around the body where it lies.
    pub fn push_deliver(&mut self, shared: &SharedBody) -> Result<(), PushError> {
        match shared {
            SharedBody::Frame(frame) => self.push_shared(frame.clone()),
            SharedBody::Body { from, body } => {
                let (tail, tail_len) = deliver_tail(*from, body.len());
                self.push_around(&deliver_header(body.len()), shared, &tail[..tail_len])
            }
        }
    }

    /// Queues a version-2 `DeliverV2` around a shared body: each receiver
    /// gets its own 8-byte header and 40-byte root around the same body
    /// bytes (small bodies are copied in place instead, as for replies).
    pub fn push_deliver_v2(
        &mut self,
        shared: &SharedBody,
        meta: DeliverV2Meta,
    ) -> Result<(), PushError> {
        let body_len = shared.body_len();
        let (tail, tail_len) = deliver_v2_tail(meta, body_len);
        self.push_around(&deliver_v2_header(body_len), shared, &tail[..tail_len])
    }

    /// Queues `header`, the shared body (copied in place when small, else
    /// shared) and `tail`, as one frame.
    fn push_around(
        &mut self,
        header: &[u8],
        shared: &SharedBody,
        tail: &[u8],
    ) -> Result<(), PushError> {
        let body = shared.body_slice();
        let len = header.len() + body.len() + tail.len();
        self.admit(len + 2 * SHARED_FRAME_HANDLE_BYTES)?;
        self.reserve_small(len);
        self.small.extend_from_slice(header);
        if body.len() <= INLINE_BODY_BYTES_MAX {
            self.small.extend_from_slice(body);
        } else {
            self.frames.push_back(self.small.split().freeze());
            self.frames.push_back(shared.body());
        }
        self.small.extend_from_slice(tail);
        self.queued_bytes += len;
        self.wake_writer();
        Ok(())
    }

    /// Makes room for `len` more bytes in `small`: at least
    /// [`SMALL_BUFFER_BYTES`] when it has to grow, so a burst of frames
    /// grows it a few times, not from a few bytes upwards.
    fn reserve_small(&mut self, len: usize) {
        if self.small.capacity() - self.small.len() < len {
            self.small.reserve(len.max(SMALL_BUFFER_BYTES));
        }
    }

    /// Queues raw bytes that are not a frame (the hub's preface).
    pub fn push_raw(&mut self, bytes: &[u8]) -> Result<(), PushError> {
        self.admit(bytes.len())?;
        self.small.extend_from_slice(bytes);
        self.queued_bytes += bytes.len();
        self.wake_writer();
        Ok(())
    }

    /// Encodes a small frame (a reply) straight into the queue.
    pub fn push_message<M: Message>(&mut self, message: &M) -> Result<(), PushError> {
        if self.state != OutboundState::Open {
            return Err(PushError::Closing);
        }
        let before = self.small.len();
        let len = encode(message, &mut self.small).expect("hub replies fit in a frame");
        if self.charged_bytes() + len > self.bytes_max {
            self.small.truncate(before);
            return Err(PushError::Overflow);
        }
        self.queued_bytes += len;
        self.wake_writer();
        Ok(())
    }

    /// Queues a non-fatal error for this connection's client.
    pub fn push_error(
        &mut self,
        code: ErrorCodeV2,
        request: u64,
        detail: u64,
    ) -> Result<(), PushError> {
        debug_assert!(!code.closes_connection());
        self.push_message(&ErrorFrame::new_v2(code, request, detail))
    }

    /// Stops taking frames: queues a last error (past the limit if need be,
    /// so the client always learns why) and lets the writer drain and close.
    pub fn close(&mut self, error: Option<(ErrorCodeV2, u64, u64)>) {
        if self.state == OutboundState::Closing {
            return;
        }
        if let Some((code, request, detail)) = error {
            let len = encode(&ErrorFrame::new_v2(code, request, detail), &mut self.small)
                .expect("an error frame fits");
            self.queued_bytes += len;
        }
        self.state = OutboundState::Closing;
        self.wake_writer();
    }

    /// The writer found nothing to write and waits: the next push or close
    /// sets [`take_wake`](Self::take_wake).
    pub fn park_writer(&mut self) {
        self.writer_parked = true;
    }

    /// True once after a push or close found the writer parked: the caller
    /// must wake the writer.
    pub fn take_wake(&mut self) -> bool {
        std::mem::take(&mut self.wake_pending)
    }

    fn wake_writer(&mut self) {
        if std::mem::take(&mut self.writer_parked) {
            self.wake_pending = true;
        }
    }

    /// Fills `slices` with up to [`WRITE_SLICES_MAX`] queued buffers, oldest
    /// first, for one vectored write.
    pub fn slices<'a>(&'a self, slices: &mut Vec<IoSlice<'a>>) {
        slices.clear();
        for frame in self.frames.iter().take(WRITE_SLICES_MAX) {
            slices.push(IoSlice::new(frame));
        }
        if slices.len() < WRITE_SLICES_MAX && !self.small.is_empty() {
            slices.push(IoSlice::new(&self.small));
        }
    }

    /// Drops `written` bytes from the front of the queue. A queue that
    /// empties gives its buffers back: an idle connection holds none.
    pub fn advance(&mut self, mut written: usize) {
        assert!(written <= self.queued_bytes, "wrote more than was queued");
        self.queued_bytes -= written;
        if self.queued_bytes == 0 {
            self.frames = VecDeque::new();
            self.small = BytesMut::new();
            return;
        }
        while written > 0 {
            let Some(front) = self.frames.front_mut() else {
                self.small.advance(written);
                return;
            };
            if written < front.len() {
                front.advance(written);
                return;
            }
            written -= front.len();
            self.frames.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relayhub_protocol::{decode_frame, ClientSide, HubFrame, IdentityReply};

    fn drain(outbound: &mut Outbound) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut slices = Vec::new();
            outbound.slices(&mut slices);
            if slices.is_empty() {
                break;
            }
            // Write in odd-sized pieces to exercise partial advances.
            let chunk: Vec<u8> = slices
                .iter()
                .flat_map(|s| s.iter().copied())
                .take(7)
                .collect();
            drop(slices);
            out.extend_from_slice(&chunk);
            outbound.advance(chunk.len());
        }
        assert_eq!(outbound.queued_bytes(), 0);
        out
    }

    #[test]
    fn keeps_push_order_across_shared_and_small_frames() {
        let mut outbound = Outbound::new(1 << 20);
        let deliver = relayhub_protocol::encode_deliver(7, b"shared").unwrap();
        outbound
            .push_message(&IdentityReply {
                request: 1,
                user: 5,
            })
            .unwrap();
        outbound.push_shared(deliver.clone()).unwrap();
        outbound
            .push_message(&IdentityReply {
                request: 2,
                user: 5,
            })
            .unwrap();
        outbound.push_shared(deliver).unwrap();
        let bytes = drain(&mut outbound);
        let mut aligned = relayhub_protocol::rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&bytes);
        let mut offset = 0;
        let mut kinds = Vec::new();
        while offset < aligned.len() {
            let (frame, len) = decode_frame::<ClientSide>(&aligned[offset..]).unwrap();
            kinds.push(match frame {
                HubFrame::IdentityReply(reply) => format!("reply {}", reply.request),
                HubFrame::Deliver(deliver) => format!("deliver {}", deliver.from),
                other => panic!("unexpected {other:?}"),
            });
            offset += len;
        }
        assert_eq!(kinds, ["reply 1", "deliver 7", "reply 2", "deliver 7"]);
    }

    #[test]
    fn a_deliver_v2_around_a_shared_body_decodes_like_a_whole_one() {
        use relayhub_protocol::{encode_deliver_v2, DeliverV2Meta};
        for body_len in [0, 1, 7, 8, 9, 4095, 4096, 4097, 70_000] {
            let body: Vec<u8> = (0..body_len).map(|i| i as u8).collect();
            let v1 = relayhub_protocol::encode_deliver(3, &body).unwrap();
            assert_eq!(deliver_body(&v1), body);
            let meta = DeliverV2Meta {
                from: 3,
                seq: 9,
                message_id: 11,
                flags: 1,
            };
            let mut outbound = Outbound::new(1 << 20);
            outbound
                .push_deliver_v2(&SharedBody::Frame(v1.clone()), meta)
                .unwrap();
            let whole_v2 = encode_deliver_v2(meta, &body).unwrap();
            assert_eq!(drain(&mut outbound), whole_v2);
            // The same around a body that is not in a frame.
            let alone = SharedBody::Body {
                from: 3,
                body: Bytes::from(body.clone()),
            };
            outbound.push_deliver_v2(&alone, meta).unwrap();
            assert_eq!(drain(&mut outbound), whole_v2);
            outbound.push_deliver(&alone).unwrap();
            assert_eq!(drain(&mut outbound), v1, "version 1 around a body");
            assert_eq!(alone.body_len(), body.len());
            assert_eq!(alone.body_slice(), &body[..]);
            assert_eq!(SharedBody::Frame(v1).body_slice(), &body[..]);
        }
    }

    #[test]
    fn refuses_past_the_limit_but_always_queues_the_closing_error() {
        let frame = relayhub_protocol::encode_deliver(1, &[0; 100]).unwrap();
        let mut outbound = Outbound::new((frame.len() + 2 * SHARED_FRAME_HANDLE_BYTES) * 2);
        outbound.push_shared(frame.clone()).unwrap();
        outbound.push_shared(frame.clone()).unwrap();
        assert_eq!(
            outbound.push_shared(frame.clone()),
            Err(PushError::Overflow)
        );
        assert_eq!(outbound.queued_bytes(), frame.len() * 2);
        outbound.close(Some((ErrorCodeV2::SlowConsumer, 0, 1)));
        assert!(
            outbound.queued_bytes() > frame.len() * 2,
            "the error is queued past the limit"
        );
        assert_eq!(outbound.push_shared(frame), Err(PushError::Closing));
        assert_eq!(outbound.state(), OutboundState::Closing);
    }
}
