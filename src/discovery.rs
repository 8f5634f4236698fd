//! Discovery: the source that tells a router which peers are co-resident, and hands
//! it a ready channel to each.
//!
//! ```text
//!   discovery source                          router (in Router::poll)
//!   ----------------                          ------------------------
//!   a peer appears on this host  --Arrived{keys, link}-->  Channel::new(link)
//!     (registry socket, XenStore                           attach(keys[0], channel)
//!      residency list, ...)                                table.insert(k, handle) for each key
//!     rendezvous done: a Link                              flows to those keys take the ring
//!   the peer leaves / dies /     --Departed{key}-------->  table.remove(k) for its keys
//!     is withdrawn                                         peer_left: unconsumed -> network
//! ```
//!
//! A source decides who offers and who accepts a channel (both ends see each other
//! appear; exactly one must offer), establishes it with its transport (memfds and
//! eventfds on one host, grants and event channels under Xen) and reports it. The
//! router never blocks on it: [`Discovery::poll`] hands over what is ready.
//!
//! Implementations: `coresident_shm::HostDiscovery` (the host registry: a directory
//! of sockets), and the Xen residency view (domain ids, MAC and IP keys, grants).

use crate::transport::Link;
use crate::{Doorbell, SharedRegion};
use alloc::vec::Vec;
use core::fmt;

/// A change in who is co-resident.
#[derive(Debug)]
pub enum Residency<K, L> {
    /// A peer is co-resident and `link` is an established channel to it. Its messages
    /// are routed by any of `keys` (a domain's id, MACs and addresses); the first key
    /// names the peer: its channel is attached under it, and its network messages must
    /// come from it too (both paths of a flow meet in one reassembly state).
    Arrived {
        /// The peer's residency keys, its own name first (never empty).
        keys: Vec<K>,
        /// The established channel.
        link: L,
    },
    /// The peer named `key` (the first key it arrived with) is no longer co-resident:
    /// it left the host, died or was withdrawn. Its keys leave the table and its
    /// channel fails over to the network.
    Departed {
        /// The peer's name.
        key: K,
    },
}

/// A source of residency changes for a router keyed by `K`.
///
/// Requirements an implementation meets, because the router relies on them:
/// - every `Arrived` of a peer is followed by its `Departed` before the next `Arrived`
///   of the same peer (a restart under the same name is a departure, then an arrival);
/// - the peers are authenticated as far as the source can: a key in `Arrived` is one
///   the peer may claim (the host registry checks the socket it registered; the Xen
///   agent lists only a domain's own addresses).
pub trait Discovery<K> {
    /// The transport's shared region.
    type Region: SharedRegion;
    /// The transport's doorbell.
    type Doorbell: Doorbell;
    /// A failure of the source itself (not of one peer's rendezvous, which the source
    /// retries or reports as nothing).
    type Error: fmt::Debug + fmt::Display;

    /// Hands over the changes since the last call, oldest first, without blocking
    /// for long (a rendezvous in progress is finished at a later call).
    ///
    /// # Errors
    ///
    /// The source is broken (its directory is gone, its store unreachable).
    #[allow(clippy::type_complexity)]
    fn poll(
        &mut self,
        changes: &mut dyn FnMut(Residency<K, Link<Self::Region, Self::Doorbell>>),
    ) -> Result<(), Self::Error>;

    /// One descriptor, the same for the source's life, readable when `poll` has
    /// something: the router's pollable descriptor includes it.
    #[cfg(all(feature = "std", unix))]
    fn wait_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
}
