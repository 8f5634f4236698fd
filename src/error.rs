//! The core's errors: small `Copy` enums.

use core::fmt;
use coresident_ring::{AttachError, Corruption, RecvError, SendError};

/// A doorbell or transport failure on the data path, reduced to what the core acts on.
/// Transports keep their own rich errors for set-up; this is what a doorbell reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportError {
    /// The peer is gone (socket hang-up, unmap-notify, a killed mock side).
    PeerGone,
    /// A system call failed with this `errno`.
    Os(i32),
    /// The transport broke its own protocol; the text says how.
    Protocol(&'static str),
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PeerGone => f.write_str("the peer is gone"),
            Self::Os(e) => write!(f, "system call failed with errno {e}"),
            Self::Protocol(why) => write!(f, "transport protocol error: {why}"),
        }
    }
}

impl core::error::Error for TransportError {}

/// Why a channel operation did not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelError {
    /// Non-blocking send: the ring is full now.
    Full,
    /// Non-blocking receive: nothing to receive now.
    Empty,
    /// A blocking call's timeout passed.
    TimedOut,
    /// The message exceeds the ring's maximum message size.
    TooLarge {
        /// Its length.
        len: usize,
        /// The maximum.
        max: u32,
    },
    /// The caller's buffer is shorter than the next message, which stays queued.
    BufferTooSmall {
        /// Length of the next message.
        needed: usize,
    },
    /// The peer is gone (transport signal, closed ring, or no progress within the
    /// liveness timeout). Received data was drained first; unconsumed sent data can be
    /// recovered with [`Channel::unconsumed`](crate::Channel::unconsumed).
    PeerGone,
    /// The shared memory holds an impossible value: the channel is unusable.
    Corrupted(Corruption),
    /// The ring's layout was refused at attach.
    Attach(AttachError),
    /// The doorbell failed.
    Transport(TransportError),
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full => f.write_str("channel is full"),
            Self::Empty => f.write_str("channel is empty"),
            Self::TimedOut => f.write_str("timed out"),
            Self::TooLarge { len, max } => write!(
                f,
                "message of {len} bytes exceeds the channel's maximum of {max}"
            ),
            Self::BufferTooSmall { needed } => {
                write!(f, "buffer too small: the next message has {needed} bytes")
            }
            Self::PeerGone => f.write_str("the peer is gone"),
            Self::Corrupted(c) => write!(f, "shared memory is corrupted: {c}"),
            Self::Attach(e) => write!(f, "cannot attach the rings: {e}"),
            Self::Transport(e) => write!(f, "doorbell failed: {e}"),
        }
    }
}

impl core::error::Error for ChannelError {}

impl From<SendError> for ChannelError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Full => Self::Full,
            SendError::TooLarge { len, max } => Self::TooLarge { len, max },
            SendError::Closed => Self::PeerGone,
            SendError::Corrupted(c) => Self::Corrupted(c),
            // The channel never sends the padding kind.
            _ => Self::Corrupted(Corruption::OutOfBounds),
        }
    }
}

impl From<RecvError> for ChannelError {
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::Empty => Self::Empty,
            RecvError::BufferTooSmall { needed } => Self::BufferTooSmall { needed },
            RecvError::Closed => Self::PeerGone,
            RecvError::Corrupted(c) => Self::Corrupted(c),
            _ => Self::Corrupted(Corruption::OutOfBounds),
        }
    }
}

impl From<TransportError> for ChannelError {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::PeerGone => Self::PeerGone,
            e => Self::Transport(e),
        }
    }
}
