//! coresident: residency-aware communication between co-resident VMs.
//!
//! When two endpoints share a physical host, messages travel through a lock-free ring
//! in shared memory ([`ring`]); when they do not, or stop doing so, the flow takes the
//! network path, losing, duplicating and reordering nothing.
//!
//! ```text
//!   sender                                                        receiver
//!   ------                                                        --------
//!   Router::send(dst, flow, msg)
//!     | table.get(dst)  (lookup: <= 2 cache lines, hit or miss)
//!     | Policy: size, peer load, hysteresis
//!     +--> channel path: [flow|seq|msg] -> Channel (ring + doorbell) ---+
//!     |                                                                 +--> Reassembler
//!     +--> network path: [flow|seq|msg] -> NetworkPath (UDP, TCP, ...) -+    per flow:
//!                                                                            in order,
//!   peer gone / migrated / corrupted:                                        duplicates
//!     Channel::unconsumed() walks the frames the peer never read, oldest     dropped
//!     first, straight out of the ring, and they go out on the network path.
//! ```
//!
//! # The no-loss protocol
//!
//! Every message of a flow carries a 16-byte [`FlowHeader`]: the flow id and a
//! sequence number, on either path. The sender numbers messages when it routes them.
//! When a channel fails (transport signal, missed liveness bound, `Corrupted`, or the
//! residency table dropping the peer), the sender walks its sending ring from the
//! peer's last published read position to its own write position — the frames the
//! peer never consumed, still in the sender's mapping — and sends each again over the
//! network, in order, before any newer message of that flow. The ring is the
//! retransmit buffer: the fast path keeps no copies. A frame the peer read but had not
//! yet acknowledged may go twice; the receiver's [`Reassembler`] delivers each
//! sequence number once and in order, holding early arrivals (bounded) until the gap
//! before them fills. So a path switch, forced or chosen by the policy, in either
//! direction, never loses, duplicates or reorders a flow's messages, provided the
//! network path is itself reliable (TCP; for UDP, the guarantee covers what the
//! channel carried).
//!
//! # Layers
//!
//! - [`Doorbell`], [`Clock`], [`Batching`]: notification and when to publish.
//! - [`Transport`], [`SharedRegion`], [`Link`]: what a transport provides.
//! - [`Channel`]: both rings of a region, blocking and non-blocking calls, statistics.
//! - [`Router`] (with `alloc`): the residency table, the [`Policy`], the
//!   [`NetworkPath`], and the lifecycle of each peer's channel.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, missing_debug_implementations)]
#![warn(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod channel;
#[cfg(all(feature = "conformance", not(loom)))]
pub mod conformance;
mod error;
mod flow;
mod notify;
#[cfg(feature = "alloc")]
mod router;
mod stats;
mod transport;

pub use coresident_lookup as lookup;
pub use coresident_ring as ring;

pub use channel::{Channel, ChannelConfig, ChannelState, PEER_PROBE_INTERVAL, PEER_PROBE_SENDS};
pub use error::{ChannelError, TransportError};
#[cfg(feature = "alloc")]
pub use flow::{Delivery, Reassembler, ReassemblyError};
pub use flow::{FlowHeader, FLOW_HEADER_LEN};
#[cfg(feature = "std")]
pub use notify::StdClock;
pub use notify::{Batching, Clock, Doorbell, SpinPolicy, Wake};
#[cfg(feature = "alloc")]
pub use router::{
    Decision, NetworkPath, Path, PeerState, Policy, RouteError, Router, ThresholdPolicy,
};
pub use stats::Stats;
#[cfg(not(loom))]
pub use transport::{init_region, ring_memory};
pub use transport::{ChannelLayout, Link, PendingOffer, Role, SharedRegion, Transport};
