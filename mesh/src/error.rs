//! The small error enums of the ring's hot path.

use std::fmt;

/// Why [`Producer::try_send`](crate::Producer::try_send) or
/// [`Producer::try_stage`](crate::Producer::try_stage) gave the item back.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum TrySendError<T> {
    /// The ring has no free slot right now; the consumer has not caught up.
    Full(T),
    /// The consumer is gone; the item can never be received.
    Closed(T),
}

impl<T> TrySendError<T> {
    /// The item that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            Self::Full(item) | Self::Closed(item) => item,
        }
    }

    /// True for [`TrySendError::Full`].
    pub fn is_full(&self) -> bool {
        matches!(self, Self::Full(_))
    }

    /// True for [`TrySendError::Closed`].
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::Closed(_))
    }
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(_) => f.write_str("Full(..)"),
            Self::Closed(_) => f.write_str("Closed(..)"),
        }
    }
}

impl<T> fmt::Display for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(_) => f.write_str("sending on a full ring"),
            Self::Closed(_) => f.write_str("sending on a ring whose consumer is gone"),
        }
    }
}

impl<T> std::error::Error for TrySendError<T> {}

/// [`Producer::send`](crate::Producer::send) failed because the consumer is
/// gone; the item is handed back.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Closed<T>(pub T);

impl<T> Closed<T> {
    /// The item that was not sent.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Closed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Closed(..)")
    }
}

impl<T> fmt::Display for Closed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sending on a ring whose consumer is gone")
    }
}

impl<T> std::error::Error for Closed<T> {}

/// Why [`Consumer::try_recv`](crate::Consumer::try_recv) returned no item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing published yet; the producer is still there.
    Empty,
    /// The producer is gone and every item it published has been received.
    Closed,
}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("receiving on an empty ring"),
            Self::Closed => f.write_str("receiving on an empty ring whose producer is gone"),
        }
    }
}

impl std::error::Error for TryRecvError {}
