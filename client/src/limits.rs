//! The hub's limits as announced in its `Welcome`, and the client-side
//! checks that refuse an over-limit request before it reaches the wire.

use relayhub_protocol::{
    ArchivedWelcome, BODY_BYTES_MAX, FRAME_BYTES_MAX, LIST_PAGE_USERS_MAX, RECEIVERS_MAX,
};

use crate::error::{ClientError, ClientLimit};

/// Most user ids [`Client::list_all`](crate::Client::list_all) collects
/// before it gives up with [`ClientError::LimitExceeded`]: 16 Mi ids
/// (128 MiB), far above any hub's connection count, so a hub that pages
/// forever cannot make the client allocate without bound.
pub const LIST_ALL_USERS_MAX: usize = 16 << 20;

/// The limits this connection must respect: the smaller of what the hub
/// announced in its `Welcome` and what this protocol version allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest archive in one frame, in bytes.
    pub frame_bytes_max: usize,
    /// Most receivers in one relay.
    pub receivers_max: usize,
    /// Largest relay or echo body, in bytes.
    pub body_bytes_max: usize,
    /// Most ids in one list page.
    pub list_page_users_max: usize,
}

impl Limits {
    /// The limits of this protocol version (what a stock hub announces).
    pub const PROTOCOL: Limits = Limits {
        frame_bytes_max: FRAME_BYTES_MAX,
        receivers_max: RECEIVERS_MAX,
        body_bytes_max: BODY_BYTES_MAX,
        list_page_users_max: LIST_PAGE_USERS_MAX,
    };

    /// The limits a `Welcome` announces, capped at the protocol's: a hub
    /// announcing more than the protocol allows does not raise them.
    pub(crate) fn from_welcome(welcome: &ArchivedWelcome) -> Limits {
        let cap = |announced: u32, protocol: usize| (announced as usize).min(protocol);
        Limits {
            frame_bytes_max: cap(welcome.frame_bytes_max.to_native(), FRAME_BYTES_MAX),
            receivers_max: cap(welcome.receivers_max.to_native(), RECEIVERS_MAX),
            body_bytes_max: cap(welcome.body_bytes_max.to_native(), BODY_BYTES_MAX),
            list_page_users_max: cap(welcome.list_page_users_max.to_native(), LIST_PAGE_USERS_MAX),
        }
    }

    /// Refuses a relay the hub would refuse, with the limit it breaks.
    pub fn check_relay(&self, receivers: usize, body_bytes: usize) -> Result<(), ClientError> {
        check(ClientLimit::Receivers, receivers, self.receivers_max)?;
        self.check_body(body_bytes)
    }

    /// Refuses a body (relay or echo) longer than the hub accepts.
    pub fn check_body(&self, body_bytes: usize) -> Result<(), ClientError> {
        check(ClientLimit::BodyBytes, body_bytes, self.body_bytes_max)
    }
}

pub(crate) fn check(limit: ClientLimit, value: usize, max: usize) -> Result<(), ClientError> {
    if value > max {
        return Err(ClientError::LimitExceeded { limit, value, max });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_limits_are_inclusive() {
        let limits = Limits::PROTOCOL;
        assert!(limits.check_relay(0, 0).is_ok());
        assert!(limits.check_relay(RECEIVERS_MAX, BODY_BYTES_MAX).is_ok());
        assert!(matches!(
            limits.check_relay(RECEIVERS_MAX + 1, 0),
            Err(ClientError::LimitExceeded {
                limit: ClientLimit::Receivers,
                value: 256,
                max: 255
            })
        ));
        assert!(matches!(
            limits.check_relay(1, BODY_BYTES_MAX + 1),
            Err(ClientError::LimitExceeded {
                limit: ClientLimit::BodyBytes,
                ..
            })
        ));
    }
}
