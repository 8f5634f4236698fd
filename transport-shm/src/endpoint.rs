//! One side of an established channel: the mapped region holding both rings, laid out
//! as the core's [`ChannelLayout`] places them, and the [`PeerLink`].

use coresident::{ChannelLayout, Link, Role};

use crate::cred::PeerCred;
use crate::memfd::MemfdRegion;
use crate::peer_id::PeerId;
use crate::peer_link::PeerLink;

/// What is known about the peer of a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's id: the offerer's id from the hello (acceptor side), or the id the
    /// offerer asked for (`None` if it connected to a path without naming the peer).
    /// Claimed by the peer, not proven: [`cred`](Self::cred) is the kernel's word.
    pub id: Option<PeerId>,
    /// The peer's credentials from `SO_PEERCRED`, checked against the credential
    /// policy before any descriptor moved.
    pub cred: PeerCred,
    /// The channel's application context: the opaque bytes the offerer put in its
    /// hello ([`OfferConfig::context`](crate::OfferConfig::context), at most
    /// [`MAX_CONTEXT_LEN`](crate::wire::MAX_CONTEXT_LEN) bytes). The acceptor receives
    /// them; the offerer keeps what it sent, so both ends hold the same bytes. Peer
    /// data on the acceptor's side: validate before use.
    pub context: Vec<u8>,
}

/// One side of an established channel, ready for the core's `Channel`: the offerer
/// laid both rings out before the hello, and the acceptor checked their headers.
///
/// ```text
/// region:  [ring offerer -> acceptor][ring acceptor -> offerer][page slack]
///          ChannelLayout::rings(role) gives (offset, data size) of ours, then theirs
/// ```
///
/// Dropping it unmaps the region and closes the socket, which the peer sees as a
/// hang-up.
#[derive(Debug)]
pub struct Endpoint {
    /// The mapped region; `layout.region_len() <= region.len()` (checked at the
    /// rendezvous).
    pub(crate) region: MemfdRegion,
    /// The ring sizes.
    pub(crate) layout: ChannelLayout,
    /// Which side we are.
    pub(crate) role: Role,
    /// The doorbell, the liveness signal and the peer's identity.
    pub(crate) link: PeerLink,
}

impl Endpoint {
    /// Which side of the rendezvous we played.
    #[must_use]
    pub fn role(&self) -> Role {
        self.role
    }

    /// What is known about the peer.
    #[must_use]
    pub fn peer(&self) -> &PeerInfo {
        self.link.peer()
    }

    /// The ring sizes.
    #[must_use]
    pub fn layout(&self) -> ChannelLayout {
        self.layout
    }

    /// `(offset, data size)` of the ring we send on, then of the one we receive on.
    #[must_use]
    pub fn rings(&self) -> ((usize, u32), (usize, u32)) {
        self.layout.rings(self.role)
    }

    /// The shared region.
    #[must_use]
    pub fn region(&self) -> &MemfdRegion {
        &self.region
    }

    /// The doorbell and liveness half (the core's `Doorbell`).
    #[must_use]
    pub fn link(&self) -> &PeerLink {
        &self.link
    }

    /// This endpoint as the core's [`Link`], for `Channel::new`.
    #[must_use]
    pub fn into_link(self) -> Link<MemfdRegion, PeerLink> {
        Link {
            region: self.region,
            doorbell: self.link,
            role: self.role,
            layout: self.layout,
        }
    }
}

impl From<Endpoint> for Link<MemfdRegion, PeerLink> {
    fn from(ep: Endpoint) -> Self {
        ep.into_link()
    }
}
