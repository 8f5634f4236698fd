//! What a transport provides: a shared region holding both rings, and doorbells.
//!
//! ```text
//!  offerer                                   acceptor
//!  -------                                   --------
//!  offer(layout) -> creates the region,      
//!     lays both rings out (init_region),     
//!     writes rendezvous bytes  ---- any control path (XenStore, a socket, a file) --->
//!                                            accept(bytes) -> maps the region, binds
//!  complete() <-- the transport's own handshake --            the doorbell
//!  Channel::new(link)                        Channel::new(link)
//! ```
//!
//! The region is `[ring offerer->acceptor][ring acceptor->offerer]`, each ring at a
//! 128-byte aligned offset ([`ChannelLayout`]).

use core::time::Duration;
use coresident_ring::{region_size, REGION_ALIGN};
#[cfg(not(loom))]
use coresident_ring::{AttachError, RingMemory};

use crate::Doorbell;

/// Memory shared with the peer, mapped in this address space.
///
/// # Safety
///
/// Implementors guarantee that for as long as the value lives:
/// - `as_ptr()..as_ptr() + len()` is one mapping, valid for reads and writes, and
///   aligned to 128 bytes;
/// - nothing in this process accesses it through Rust references (`&`/`&mut`): only
///   atomics, volatile accesses, system calls or the peer.
pub unsafe trait SharedRegion {
    /// Start of the region.
    fn as_ptr(&self) -> *mut u8;
    /// Length in bytes.
    fn len(&self) -> usize;
    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which side of the rendezvous this end is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Created the region and laid the rings out.
    Offerer,
    /// Attached to the offerer's region.
    Acceptor,
}

/// The data-area sizes of the two rings of a channel, and where they sit in the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelLayout {
    /// Data area of the ring from offerer to acceptor (a power of two).
    pub to_acceptor: u32,
    /// Data area of the ring from acceptor to offerer (a power of two).
    pub to_offerer: u32,
}

impl ChannelLayout {
    /// Both directions with a `data_size`-byte data area.
    pub const fn symmetric(data_size: u32) -> Self {
        Self {
            to_acceptor: data_size,
            to_offerer: data_size,
        }
    }

    /// Offset of the acceptor-to-offerer ring.
    pub const fn second_ring_offset(&self) -> usize {
        region_size(self.to_acceptor).next_multiple_of(REGION_ALIGN)
    }

    /// Bytes of region the channel needs.
    pub const fn region_len(&self) -> usize {
        self.second_ring_offset() + region_size(self.to_offerer)
    }

    /// `(offset, data size)` of the ring this role sends on, then the one it receives on.
    pub const fn rings(&self, role: Role) -> ((usize, u32), (usize, u32)) {
        let a = (0, self.to_acceptor);
        let b = (self.second_ring_offset(), self.to_offerer);
        match role {
            Role::Offerer => (a, b),
            Role::Acceptor => (b, a),
        }
    }
}

/// The memory of one ring inside a shared region.
#[cfg(not(loom))]
///
/// # Errors
///
/// [`AttachError::RegionTooSmall`] when the region cannot hold the ring.
pub fn ring_memory<R: SharedRegion>(
    region: &R,
    offset: usize,
    data_size: u32,
) -> Result<RingMemory, AttachError> {
    let needed = offset.saturating_add(region_size(data_size));
    if region.len() < needed {
        return Err(AttachError::RegionTooSmall {
            needed,
            len: region.len(),
        });
    }
    // SAFETY:
    // - `offset + region_size(data_size) <= len` (checked), so the pointer and length
    //   stay inside the region, which `SharedRegion` guarantees valid for reads and
    //   writes while `region` lives; the ring memory is only used by halves that the
    //   channel drops before the region (field order in `Channel`);
    // - `SharedRegion` guarantees no Rust references to it exist in this process.
    unsafe { RingMemory::new(region.as_ptr().wrapping_add(offset), region.len() - offset) }
}

/// Lays both rings of `layout` out in a fresh region. The offering transport calls it
/// before it hands the rendezvous to the peer.
///
/// # Errors
///
/// A region too small or sizes that are not powers of two in range.
#[cfg(not(loom))]
pub fn init_region<R: SharedRegion>(region: &R, layout: ChannelLayout) -> Result<(), AttachError> {
    let ((a_off, a), (b_off, b)) = layout.rings(Role::Offerer);
    coresident_ring::init(&ring_memory(region, a_off, a)?, a)?;
    coresident_ring::init(&ring_memory(region, b_off, b)?, b)
}

/// What a transport hands to [`Channel::new`](crate::Channel::new).
#[derive(Debug)]
pub struct Link<R, D> {
    /// The shared region holding both rings.
    pub region: R,
    /// This side's doorbell.
    pub doorbell: D,
    /// Which side this is.
    pub role: Role,
    /// Ring sizes.
    pub layout: ChannelLayout,
}

/// A transport: creates or attaches shared regions and doorbells for a peer.
pub trait Transport {
    /// The mapped region.
    type Region: SharedRegion;
    /// The doorbell.
    type Doorbell: Doorbell;
    /// An offer waiting for its peer.
    type Pending: PendingOffer<
        Region = Self::Region,
        Doorbell = Self::Doorbell,
        Error = Self::Error,
    >;
    /// Set-up failures.
    type Error: core::fmt::Debug + core::fmt::Display;

    /// Creates a region for `layout` (rings laid out) and a doorbell, and writes the
    /// rendezvous information into `rendezvous`; returns the pending offer and how many
    /// bytes were written.
    ///
    /// # Errors
    ///
    /// The transport's own (out of memory, no such peer, `rendezvous` too small).
    fn offer(
        &mut self,
        layout: ChannelLayout,
        rendezvous: &mut [u8],
    ) -> Result<(Self::Pending, usize), Self::Error>;

    /// Attaches to the region and doorbell that `rendezvous` describes.
    ///
    /// # Errors
    ///
    /// Malformed or hostile rendezvous bytes, a version mismatch, a failed mapping.
    fn accept(
        &mut self,
        rendezvous: &[u8],
    ) -> Result<Link<Self::Region, Self::Doorbell>, Self::Error>;
}

/// An offer waiting for the peer's answer.
pub trait PendingOffer {
    /// The mapped region.
    type Region;
    /// The doorbell.
    type Doorbell;
    /// Failures.
    type Error;

    /// Waits (up to `timeout`) for the peer to accept and returns the link.
    ///
    /// # Errors
    ///
    /// A timeout, or the peer refused.
    fn complete(
        self,
        timeout: Option<Duration>,
    ) -> Result<Link<Self::Region, Self::Doorbell>, Self::Error>;
}
