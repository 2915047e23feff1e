//! `Arbitrary` mirrors of every message, for the `roundtrip` target.
//!
//! The protocol crate does not depend on `arbitrary` (fuzz-only code stays
//! out of its public API), so the fuzz crate mirrors the messages and maps
//! each mirror into the real message *within the protocol limits*: at most
//! [`RECEIVERS_MAX`] receivers (sometimes exactly that many), bodies of at
//! most [`BODY_SMALL_BYTES_MAX`] bytes, and now and then a body of exactly
//! [`BODY_BYTES_MAX`] (at most [`MAX_BODIES_PER_INPUT`] per input, so one
//! execution stays in the milliseconds).

use arbitrary::Arbitrary;
use relayhub_protocol::{
    ClientMessage, Deliver, Echo, EchoReply, Error, HubMessage, Identity, IdentityReply, List,
    ListReply, Relay, Welcome, BODY_BYTES_MAX, LIST_PAGE_USERS_MAX, READ_CHUNK_BYTES,
    RECEIVERS_MAX,
};

/// Largest ordinary body a mirror yields, in bytes (4 KiB).
pub const BODY_SMALL_BYTES_MAX: usize = 4096;

/// `Body::size` value that asks for a body of exactly `BODY_BYTES_MAX`.
pub const BODY_SIZE_MAX_MARKER: u8 = 0xA5;

/// `Ids::shape` value that asks for exactly the maximum count of ids.
pub const IDS_SHAPE_MAX_MARKER: u8 = 0x5A;

/// Most 1 MiB bodies one input may ask for; later ones become small.
pub const MAX_BODIES_PER_INPUT: usize = 2;

/// Most messages one input may hold, per direction.
pub const MESSAGES_MAX: usize = 32;

/// A body: its bytes, or (rarely) exactly `BODY_BYTES_MAX` bytes of a
/// pattern seeded by `bytes`.
#[derive(Arbitrary, Clone, Debug)]
pub struct Body {
    /// [`BODY_SIZE_MAX_MARKER`] asks for a maximal body.
    pub size: u8,
    /// The body (truncated to [`BODY_SMALL_BYTES_MAX`]).
    pub bytes: Vec<u8>,
}

/// A list of user ids: the given ones, or (rarely) exactly the maximum
/// number of consecutive ids from `start`.
#[derive(Arbitrary, Clone, Debug)]
pub struct Ids {
    /// [`IDS_SHAPE_MAX_MARKER`] asks for the maximum count.
    pub shape: u8,
    /// First id of a maximal list.
    pub start: u64,
    /// The ids (truncated to the maximum count).
    pub ids: Vec<u64>,
}

/// Mirror of [`ClientMessage`].
#[derive(Arbitrary, Clone, Debug)]
pub enum ClientMirror {
    /// [`Echo`].
    Echo { request: u64, body: Body },
    /// [`Identity`].
    Identity { request: u64 },
    /// [`List`].
    List {
        request: u64,
        after: u64,
        limit: u32,
    },
    /// [`Relay`].
    Relay {
        request: u64,
        receivers: Ids,
        body: Body,
    },
}

/// Mirror of [`HubMessage`].
#[derive(Arbitrary, Clone, Debug)]
pub enum HubMirror {
    /// [`Welcome`]; `None` advertises this crate's own limits.
    Welcome { user: u64, limits: Option<[u32; 4]> },
    /// [`EchoReply`].
    EchoReply { request: u64, body: Body },
    /// [`IdentityReply`].
    IdentityReply { request: u64, user: u64 },
    /// [`ListReply`].
    ListReply {
        request: u64,
        users: Ids,
        more: bool,
    },
    /// [`Deliver`].
    Deliver { from: u64, body: Body },
    /// [`Error`].
    Error {
        request: u64,
        detail: u64,
        code: u16,
    },
}

/// One `roundtrip` input: messages both ways and how to split the stream.
#[derive(Arbitrary, Clone, Debug)]
pub struct RoundtripInput {
    /// Client-to-hub messages (at most [`MESSAGES_MAX`] are used).
    pub client: Vec<ClientMirror>,
    /// Hub-to-client messages (at most [`MESSAGES_MAX`] are used).
    pub hub: Vec<HubMirror>,
    /// Chunk sizes for the concatenated stream (see `chunk_sizes`), cycled.
    pub chunks: Vec<u16>,
}

/// Turns mirrors into real messages, counting the 1 MiB bodies handed out.
#[derive(Default)]
pub struct Builder {
    max_bodies: usize,
}

impl Builder {
    fn body(&mut self, body: &Body) -> Vec<u8> {
        if body.size == BODY_SIZE_MAX_MARKER && self.max_bodies < MAX_BODIES_PER_INPUT {
            self.max_bodies += 1;
            let seed = body.bytes.first().copied().unwrap_or(0);
            return (0..BODY_BYTES_MAX)
                .map(|i| (i as u8).wrapping_mul(31) ^ seed)
                .collect();
        }
        body.bytes[..body.bytes.len().min(BODY_SMALL_BYTES_MAX)].to_vec()
    }

    fn ids(ids: &Ids, max: usize) -> Vec<u64> {
        if ids.shape == IDS_SHAPE_MAX_MARKER {
            return (0..max as u64).map(|i| ids.start.wrapping_add(i)).collect();
        }
        ids.ids[..ids.ids.len().min(max)].to_vec()
    }

    /// The client message `mirror` stands for, within the protocol limits.
    pub fn client(&mut self, mirror: &ClientMirror) -> ClientMessage {
        match mirror {
            ClientMirror::Echo { request, body } => ClientMessage::Echo(Echo {
                request: *request,
                body: self.body(body),
            }),
            ClientMirror::Identity { request } => {
                ClientMessage::Identity(Identity { request: *request })
            }
            ClientMirror::List {
                request,
                after,
                limit,
            } => ClientMessage::List(List {
                request: *request,
                after: *after,
                limit: *limit,
            }),
            ClientMirror::Relay {
                request,
                receivers,
                body,
            } => ClientMessage::Relay(Relay {
                request: *request,
                receivers: Self::ids(receivers, RECEIVERS_MAX),
                body: self.body(body),
            }),
        }
    }

    /// The hub message `mirror` stands for, within the protocol limits.
    pub fn hub(&mut self, mirror: &HubMirror) -> HubMessage {
        match mirror {
            HubMirror::Welcome { user, limits: None } => {
                HubMessage::Welcome(Welcome::with_protocol_limits(*user))
            }
            HubMirror::Welcome {
                user,
                limits: Some([frame, receivers, body, page]),
            } => HubMessage::Welcome(Welcome {
                user: *user,
                frame_bytes_max: *frame,
                receivers_max: *receivers,
                body_bytes_max: *body,
                list_page_users_max: *page,
            }),
            HubMirror::EchoReply { request, body } => HubMessage::EchoReply(EchoReply {
                request: *request,
                body: self.body(body),
            }),
            HubMirror::IdentityReply { request, user } => {
                HubMessage::IdentityReply(IdentityReply {
                    request: *request,
                    user: *user,
                })
            }
            HubMirror::ListReply {
                request,
                users,
                more,
            } => HubMessage::ListReply(ListReply {
                request: *request,
                users: Self::ids(users, LIST_PAGE_USERS_MAX),
                more: *more,
            }),
            HubMirror::Deliver { from, body } => HubMessage::Deliver(Deliver {
                from: *from,
                body: self.body(body),
            }),
            HubMirror::Error {
                request,
                detail,
                code,
            } => HubMessage::Error(Error {
                request: *request,
                detail: *detail,
                code: *code,
            }),
        }
    }
}

impl RoundtripInput {
    /// The real messages, both directions, within the limits.
    pub fn messages(&self) -> (Vec<ClientMessage>, Vec<HubMessage>) {
        let mut builder = Builder::default();
        let client = self
            .client
            .iter()
            .take(MESSAGES_MAX)
            .map(|m| builder.client(m))
            .collect();
        let hub = self
            .hub
            .iter()
            .take(MESSAGES_MAX)
            .map(|m| builder.hub(m))
            .collect();
        (client, hub)
    }

    /// Chunk sizes, each in `1 ..= READ_CHUNK_BYTES` (what a driver reads
    /// at once); `READ_CHUNK_BYTES` alone when the input names none.
    pub fn chunk_sizes(&self) -> Vec<usize> {
        let sizes: Vec<usize> = self
            .chunks
            .iter()
            .take(16)
            .map(|&size| usize::from(size) % READ_CHUNK_BYTES + 1)
            .collect();
        if sizes.is_empty() {
            vec![READ_CHUNK_BYTES]
        } else {
            sizes
        }
    }
}
