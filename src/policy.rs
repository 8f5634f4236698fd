//! The switching policy: which path each message takes (the study's lesson 6:
//! switching must pay), and what a full ring means to the caller.

/// Which way a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Path {
    /// Through the shared-memory channel.
    Channel,
    /// Through the network.
    Network,
}

/// What the policy is told about one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Payload length.
    pub len: usize,
    /// Whether the destination is co-resident with a connected channel.
    pub resident: bool,
    /// The channel's largest payload (0 when not resident).
    pub max_len: usize,
    /// How full the channel's sending ring looked, per mille: high when the peer is
    /// starved of CPU.
    pub peer_load: u32,
}

/// Per-flow state of the policy's hysteresis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerState {
    /// The path the flow is on.
    pub path: Path,
    /// Consecutive decisions that preferred the other path.
    pub streak: u32,
}

/// What a send does when the policy chose the channel and the ring is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overflow {
    /// The message takes the network path (the receiver holds it until the ring's
    /// older messages arrive). Throughput first; the network path carries the excess.
    #[default]
    Spill,
    /// The sender waits for ring space: [`Router::send_blocking`] sleeps on the
    /// doorbell (the peer's consumption is the back-pressure), and a non-blocking
    /// [`Router::send`] returns [`RouteError::Full`] without taking the message.
    ///
    /// [`Router::send_blocking`]: crate::Router::send_blocking
    /// [`Router::send`]: crate::Router::send
    /// [`RouteError::Full`]: crate::RouteError::Full
    Wait,
}

/// Chooses the path of each message.
pub trait Policy {
    /// The path for a message described by `d`, given the flow's `state`, which the
    /// policy updates.
    fn choose(&mut self, state: &mut PeerState, d: &Decision) -> Path;

    /// What to do when the channel was chosen and its ring is full.
    fn overflow(&self) -> Overflow {
        Overflow::Spill
    }
}

/// Threshold policy with hysteresis.
///
/// A message takes the channel when its destination is resident, it fits, it is at
/// least `min_len` bytes, and the peer's ring is at most `max_load` per mille full.
/// Not resident or too large forces the network at once; the soft reasons (size below
/// `min_len`, load) move a flow only after `hysteresis` consecutive decisions agree,
/// so a flow does not flap between paths.
///
/// # Examples
///
/// ```
/// use coresident::{Overflow, ThresholdPolicy};
/// // Back-pressure instead of spilling to the network when the ring is full.
/// let p = ThresholdPolicy { overflow: Overflow::Wait, ..ThresholdPolicy::default() };
/// assert_eq!(p.max_load, 900);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThresholdPolicy {
    /// Smaller messages prefer the network (0: never).
    pub min_len: usize,
    /// Fuller rings prefer the network (1000: never).
    pub max_load: u32,
    /// Consecutive agreeing decisions before a soft switch.
    pub hysteresis: u32,
    /// What a full ring means.
    pub overflow: Overflow,
}

impl Default for ThresholdPolicy {
    fn default() -> Self {
        Self {
            min_len: 0,
            max_load: 900,
            hysteresis: 8,
            overflow: Overflow::Spill,
        }
    }
}

impl Policy for ThresholdPolicy {
    #[inline]
    fn choose(&mut self, s: &mut PeerState, d: &Decision) -> Path {
        if !d.resident || d.len > d.max_len {
            s.streak = 0;
            s.path = Path::Network;
            return Path::Network;
        }
        let prefer = if d.len >= self.min_len && d.peer_load <= self.max_load {
            Path::Channel
        } else {
            Path::Network
        };
        if prefer == s.path {
            s.streak = 0;
        } else {
            s.streak += 1;
            if s.streak >= self.hysteresis {
                s.path = prefer;
                s.streak = 0;
            }
        }
        s.path
    }

    fn overflow(&self) -> Overflow {
        self.overflow
    }
}
