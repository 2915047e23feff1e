//! Protocol limits: every bound a peer must respect, with its unit last.
//!
//! These are part of the wire contract (docs/protocol.md, "Limits"). The hub
//! advertises them in its `Welcome`; raising one is a protocol version bump.

/// Largest body of an `Echo` or `Relay`, in bytes (1 MiB).
///
/// A `Deliver` carries the same body, so one relay costs the hub at most this
/// much memory for the body, however many receivers it has (the body is
/// shared, see `encode_deliver`).
pub const BODY_BYTES_MAX: usize = 1 << 20;

/// Most receivers a single `Relay` may name.
///
/// Worst case one relay fans out into this many deliveries.
pub const RECEIVERS_MAX: usize = 255;

/// Most user ids in one `ListReply` page (the hub caps `List.limit` here).
///
/// A page is at most `8 * LIST_PAGE_USERS_MAX` = 32 KiB of ids.
pub const LIST_PAGE_USERS_MAX: usize = 4096;

/// Slack above the largest body for the rest of an archive (ids, vector
/// headers, alignment padding, the root struct), in bytes.
///
/// A `Relay` with `RECEIVERS_MAX` receivers spends 8 * 255 = 2040 bytes on
/// ids plus at most 64 bytes of root and padding, and a full `ListReply`
/// page needs 32 KiB + 32 bytes: both fit.
pub const FRAME_OVERHEAD_BYTES: usize = 36 * 1024;

/// Largest archive a frame may carry, in bytes (the header's length field).
///
/// Checked against the length prefix *before* any buffer grows, so a peer
/// announcing 4 GiB costs nothing. A decoder holds at most this plus one
/// frame header plus one read chunk per connection.
pub const FRAME_BYTES_MAX: usize = BODY_BYTES_MAX + FRAME_OVERHEAD_BYTES;

/// Size of the frame header that precedes every archive, in bytes.
pub const FRAME_HEADER_BYTES: usize = 8;

/// Every archive length is a multiple of this, and so is every frame, which
/// keeps each archive 8-byte aligned in a stream read into an aligned buffer.
pub const FRAME_ALIGN_BYTES: usize = 8;

// The length field is a u32: the limit must fit it.
const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(FRAME_BYTES_MAX % FRAME_ALIGN_BYTES == 0);
const _: () = assert!(RECEIVERS_MAX <= u8::MAX as usize);
const _: () = assert!(8 * LIST_PAGE_USERS_MAX + 64 <= FRAME_OVERHEAD_BYTES);
