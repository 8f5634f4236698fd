//! One side of an established channel: the mapped region, its two ring slots, the two
//! doorbells, and the rendezvous socket whose hang-up signals the peer's death.

use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use crate::eventfd::{peer_alive, Doorbell, DoorbellError, WaitError, Wake};
use crate::layout::{Layout, RingSlot};
use crate::memfd::SharedRegion;
use crate::peer_id::PeerId;

/// Which side of the rendezvous an endpoint played.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Created the region and the doorbells and sent them (the connecting side).
    Offerer,
    /// Received, validated and acknowledged them (the listening side).
    Acceptor,
}

/// What is known about the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's id: from the hello (acceptor side), or the id the offerer asked for
    /// (`None` if it connected to a path without naming the peer).
    pub id: Option<PeerId>,
    /// The peer's process id from `SO_PEERCRED` (as seen from our pid namespace; 0 if
    /// the peer lives in a namespace we cannot see).
    pub pid: i32,
    /// The peer's user id from `SO_PEERCRED`.
    pub uid: u32,
}

/// One side of an established channel.
///
/// Dropping it unmaps the region and closes the socket, which the peer sees as a
/// hang-up ([`WaitError::PeerGone`]).
#[derive(Debug)]
pub struct Endpoint {
    /// The mapped region; both ring slots lie within it.
    pub(crate) region: SharedRegion,
    /// The ring slots; `layout.region_size() <= region.len()` (checked at rendezvous).
    pub(crate) layout: Layout,
    /// Which side we are.
    pub(crate) role: Role,
    /// The doorbells and the rendezvous socket.
    pub(crate) link: PeerLink,
    /// The peer's identity.
    pub(crate) peer: PeerInfo,
}

/// The signalling half of a channel: the two doorbells and the rendezvous socket whose
/// hang-up means the peer is gone. Split off an [`Endpoint`] with
/// [`Endpoint::into_parts`] (the core's `Channel` keeps the region and this apart).
#[derive(Debug)]
pub struct PeerLink {
    /// The doorbell the peer rings for us.
    local: Doorbell,
    /// The doorbell we ring for the peer.
    remote: Doorbell,
    /// The rendezvous socket, kept open for the life of the channel.
    socket: UnixStream,
    /// Set once a wait or a check saw the peer hang up; never cleared.
    gone: AtomicBool,
}

impl PeerLink {
    /// Bundles the doorbells and the socket of a fresh channel.
    pub(crate) fn new(local: Doorbell, remote: Doorbell, socket: UnixStream) -> Self {
        Self {
            local,
            remote,
            socket,
            gone: AtomicBool::new(false),
        }
    }

    /// Rings the peer's doorbell.
    ///
    /// # Errors
    ///
    /// [`DoorbellError::Sys`] if the write fails.
    pub fn notify_peer(&self) -> Result<(), DoorbellError> {
        self.remote.notify()
    }

    /// Waits for the peer's notification, the peer's death, or the timeout.
    ///
    /// # Errors
    ///
    /// [`WaitError::PeerGone`] once the peer hung up; [`WaitError::Sys`] otherwise.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<Wake, WaitError> {
        let res = self.local.wait(Some(self.socket.as_fd()), timeout);
        if res == Err(WaitError::PeerGone) {
            self.mark_gone();
        }
        res
    }

    /// Consumes the peer's pending notifications without blocking.
    ///
    /// # Errors
    ///
    /// [`DoorbellError::Sys`] if the read fails.
    pub fn try_consume(&self) -> Result<Option<u64>, DoorbellError> {
        self.local.try_consume()
    }

    /// Whether the peer still holds its end of the rendezvous socket (non-blocking; one
    /// `poll` unless the peer is already known to be gone).
    ///
    /// # Errors
    ///
    /// [`WaitError::Sys`] if `poll` fails.
    pub fn peer_alive(&self) -> Result<bool, WaitError> {
        if self.peer_known_gone() {
            return Ok(false);
        }
        let alive = peer_alive(self.socket.as_fd())?;
        if !alive {
            self.mark_gone();
        }
        Ok(alive)
    }

    /// Whether a [`wait`](Self::wait) or [`peer_alive`](Self::peer_alive) has already
    /// seen the peer hang up. No system call: a cheap check for the data path.
    #[must_use]
    pub fn peer_known_gone(&self) -> bool {
        // Relaxed: a sticky flag with no data attached; a late view only delays the
        // answer to the next check.
        self.gone.load(Ordering::Relaxed)
    }

    /// Records the peer's death.
    fn mark_gone(&self) {
        // Relaxed: see `peer_known_gone`.
        self.gone.store(true, Ordering::Relaxed);
    }

    /// The doorbell the peer rings for us (to poll it in an event loop).
    #[must_use]
    pub fn local_doorbell(&self) -> &Doorbell {
        &self.local
    }

    /// The doorbell we ring for the peer.
    #[must_use]
    pub fn remote_doorbell(&self) -> &Doorbell {
        &self.remote
    }

    /// The rendezvous socket (to poll it in an event loop: a hang-up or any readable
    /// byte means the peer is gone).
    #[must_use]
    pub fn socket(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl Endpoint {
    /// Which side of the rendezvous we played.
    #[must_use]
    pub fn role(&self) -> Role {
        self.role
    }

    /// The peer's identity.
    #[must_use]
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// The region's ring layout.
    #[must_use]
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The shared region.
    #[must_use]
    pub fn region(&self) -> &SharedRegion {
        &self.region
    }

    /// The slot of the ring we produce into.
    #[must_use]
    pub fn tx_slot(&self) -> RingSlot {
        match self.role {
            Role::Offerer => self.layout.to_acceptor,
            Role::Acceptor => self.layout.to_offerer,
        }
    }

    /// The slot of the ring we consume from.
    #[must_use]
    pub fn rx_slot(&self) -> RingSlot {
        match self.role {
            Role::Offerer => self.layout.to_offerer,
            Role::Acceptor => self.layout.to_acceptor,
        }
    }

    /// The start of `slot` in our mapping; valid for `slot.len` bytes while `self`
    /// lives, peer-writable (use atomics and volatile copies only).
    ///
    /// Returns `None` if `slot` does not lie within the region (it always does for
    /// [`tx_slot`](Self::tx_slot) and [`rx_slot`](Self::rx_slot)).
    #[must_use]
    pub fn slot_ptr(&self, slot: RingSlot) -> Option<*mut u8> {
        let end = slot.offset.checked_add(slot.len)?;
        if end > self.region.len() {
            return None;
        }
        // `offset < end <= len`, so the offset stays inside the mapping.
        Some(self.region.as_ptr().wrapping_add(slot.offset))
    }

    /// The doorbells and the socket.
    #[must_use]
    pub fn link(&self) -> &PeerLink {
        &self.link
    }

    /// Splits the endpoint into the region and the signalling half (for the core's
    /// `Channel`, which holds them apart).
    #[must_use]
    pub fn into_parts(self) -> (SharedRegion, PeerLink) {
        (self.region, self.link)
    }

    /// Rings the peer's doorbell ([`PeerLink::notify_peer`]).
    ///
    /// # Errors
    ///
    /// [`DoorbellError::Sys`] if the write fails.
    pub fn notify_peer(&self) -> Result<(), DoorbellError> {
        self.link.notify_peer()
    }

    /// Waits for the peer's notification, the peer's death, or the timeout
    /// ([`PeerLink::wait`]).
    ///
    /// # Errors
    ///
    /// [`WaitError::PeerGone`] once the peer hung up; [`WaitError::Sys`] otherwise.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<Wake, WaitError> {
        self.link.wait(timeout)
    }

    /// Consumes the peer's pending notifications without blocking
    /// ([`PeerLink::try_consume`]).
    ///
    /// # Errors
    ///
    /// [`DoorbellError::Sys`] if the read fails.
    pub fn try_consume(&self) -> Result<Option<u64>, DoorbellError> {
        self.link.try_consume()
    }

    /// Whether the peer is still there ([`PeerLink::peer_alive`]).
    ///
    /// # Errors
    ///
    /// [`WaitError::Sys`] if `poll` fails.
    pub fn peer_alive(&self) -> Result<bool, WaitError> {
        self.link.peer_alive()
    }

    /// Whether the peer is already known to be gone ([`PeerLink::peer_known_gone`]).
    #[must_use]
    pub fn peer_known_gone(&self) -> bool {
        self.link.peer_known_gone()
    }
}
