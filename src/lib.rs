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
//!     | the flow's cached lookup (one load of the table's generation while it is
//!     |   unchanged; else table.get(dst): <= 2 cache lines, hit or miss)
//!     | Policy: size, peer load, hysteresis
//!     +--> channel path: [flow|seq|msg] -> Channel (ring + doorbell) ---+
//!     |                                                                 +--> Reassembler
//!     +--> network path: [flow|seq|msg] -> NetworkPath (TcpPath, ...) --+    per (peer,
//!                                                                            flow): in
//!   peer gone / migrated / corrupted:                                        order, once,
//!     Channel::unconsumed() walks the frames the peer never read, oldest     in bounded
//!     first, straight out of the ring, and they go out on the network path.  memory
//! ```
//!
//! # The no-loss protocol
//!
//! Every message of a flow carries a 16-byte [`FlowHeader`]: the flow id and a
//! sequence number, on either path. The sender numbers messages when it routes them,
//! per destination and flow, and uses a number up only when a path took the message.
//! When a channel fails (transport signal, missed liveness bound, `Corrupted`, or the
//! residency table dropping the peer), the sender walks its sending ring from the
//! peer's last published read position to its own write position — the frames the
//! peer never consumed, still in the sender's mapping — and sends each again over the
//! network, in order, before any newer message of that flow. The ring is the
//! retransmit buffer: the fast path keeps no copies. A frame the peer read but had not
//! yet acknowledged may go twice; the receiver's [`Reassembler`] delivers each
//! sequence number of each **(peer, flow)** once and in order, holding early arrivals
//! (within a window and per-peer budgets) until the gap before them fills. A peer
//! names only its own flows: the channel it arrived on, or the network source, is part
//! of the key.
//!
//! The network path must be reliable for the promise to hold across a *receiver*
//! crash: [`path::TcpPath`] acknowledges deliveries and replays the rest after a
//! reconnect, from the receiver's next sequence number per (peer, flow); and a flow
//! goes back to its ring only once the network path has delivered what it carried
//! of it ([`NetworkPath::in_flight`]), so a receiver never holds ring messages it could
//! lose. [`path::UdpPath`] promises less, and says what.
//!
//! # A router in a daemon
//!
//! [`Router::builder`] takes a discovery source (the host registry,
//! `coresident_shm::HostDiscovery`; the Xen residency view), a network path and
//! optionally a policy; the router owns its residency table and keeps it in step with
//! the source at every [`Router::poll`]: a channel to each co-resident peer, failed
//! over when the peer leaves. `examples/router.rs` is the whole program, two processes.
//!
//! ```no_run
//! use coresident::{path::TcpPath, RouteError, Router};
//! use coresident_shm::{HostConfig, HostDiscovery, Registry};
//! use std::net::{Ipv4Addr, SocketAddr};
//! use std::time::Duration;
//!
//! let me = Ipv4Addr::new(10, 0, 0, 1);
//! fn port(ip: &Ipv4Addr) -> SocketAddr {
//!     SocketAddr::from((*ip, 7000))
//! }
//! let discovery = HostDiscovery::new(Registry::open_default()?, HostConfig::ipv4(me.to_string().parse()?))?;
//! let mut router = Router::builder()
//!     .discovery(discovery)
//!     .network(TcpPath::bind(me, port(&me), |ip| Some(port(ip)))?)
//!     .build()?;
//! router.send_blocking(&Ipv4Addr::new(10, 0, 0, 2), 1, b"hello", Some(Duration::from_secs(1)))?;
//! loop {
//!     router.poll()?; // discovery, liveness, acknowledgements
//!     match router.recv_blocking(Some(Duration::from_millis(100)), |peer, flow, msg| {
//!         println!("{peer} flow {flow}: {} bytes", msg.len());
//!     }) {
//!         Ok(_) | Err(RouteError::TimedOut) => {}
//!         Err(e) => return Err(e.into()),
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`Router::wait_fd`] is one descriptor for the whole router (every channel, the
//! network path, discovery) for epoll, mio or tokio's `AsyncFd`. The generic form,
//! [`Router::new`] over a borrowed table, stays for `no_std` and kernel users, whose
//! own control path attaches channels and writes the table.
//!
//! A `Router` is a *message* router: numbered flows, many peers, a path chosen per
//! message, for daemons and kernel modules. For one ordered byte stream to one peer,
//! as a socket gives it, use `coresident_net::Stream`.
//!
//! # Layers
//!
//! - [`Doorbell`], [`Clock`], [`Batching`]: notification and when to publish.
//! - [`Transport`], [`SharedRegion`], [`Link`]: what a transport provides.
//! - [`Channel`]: both rings of a region, blocking and non-blocking calls, statistics.
//! - [`Router`] (with `alloc`): the residency table, the [`Policy`], the
//!   [`NetworkPath`], the [`Reassembler`], the lifecycle of each peer's channel;
//!   [`Discovery`] and the builder (std); [`path`] and [`wait`] (std).
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, missing_debug_implementations)]
#![warn(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

#[cfg(all(feature = "std", not(loom)))]
mod builder;
mod channel;
#[cfg(all(feature = "conformance", not(loom)))]
pub mod conformance;
#[cfg(feature = "alloc")]
mod discovery;
mod error;
mod flow;
#[cfg(feature = "alloc")]
mod net;
mod notify;
#[cfg(all(feature = "std", not(loom)))]
pub mod path;
mod policy;
#[cfg(feature = "alloc")]
mod reassembly;
#[cfg(feature = "alloc")]
mod router;
mod stats;
mod transport;
#[cfg(all(feature = "std", target_os = "linux", not(loom)))]
pub mod wait;

pub use coresident_lookup as lookup;
pub use coresident_ring as ring;

#[cfg(all(feature = "std", not(loom)))]
pub use builder::{random_seed, BuildError, NotGiven, RouterBuilder, Unset};
pub use channel::{Channel, ChannelConfig, ChannelState, PEER_PROBE_INTERVAL, PEER_PROBE_SENDS};
#[cfg(feature = "alloc")]
pub use discovery::{Discovery, Residency};
pub use error::{ChannelError, TransportError};
pub use flow::{FlowHeader, FLOW_HEADER_LEN};
#[cfg(feature = "alloc")]
pub use net::{Inbox, NetworkPath, Offered};
#[cfg(feature = "std")]
pub use notify::StdClock;
pub use notify::{Batching, Clock, Doorbell, SpinPolicy, Wake};
pub use policy::{Decision, Overflow, Path, PeerState, Policy, ThresholdPolicy};
#[cfg(feature = "alloc")]
pub use reassembly::{
    Delivery, Reassembler, ReassemblyError, ReassemblyLimits, ReassemblyStats, HELD_OVERHEAD,
};
#[cfg(feature = "alloc")]
pub use router::{RouteError, Router, RouterStats};
pub use stats::Stats;
#[cfg(not(loom))]
pub use transport::{init_region, ring_memory};
pub use transport::{ChannelLayout, Link, PendingOffer, Role, SharedRegion, Transport};
#[cfg(all(feature = "std", target_os = "linux", not(loom)))]
pub use wait::Waitable;
