//! The "CRXG" rendezvous bytes and the live-page layout: what an offer of a
//! Xen channel carries, `core` only, so the Linux userspace transport
//! ([`XenTransport`], feature `std`) and the kernel
//! transport (module `kernel`, feature `xen-sys`) speak one
//! protocol.
//!
//! ```text
//!  bytes 0..32: RendezvousHeader (little-endian)
//!    0 magic "CRXG"   4 version u16   6 offerer domid u16   8 port u32
//!   12 to_acceptor u32   16 to_offerer u32   20 nrefs u32   24 reserved [0; 8]
//!  bytes 32..32 + 4 * nrefs: the grant references, u32 little-endian, in
//!    page order: the region's pages, then the live page.
//!
//!  pages (granted by the offerer, mapped by the acceptor)
//!  ┌───────────────────────────────────────┬─────────────────────────────┐
//!  │ region: ring offerer→acceptor,        │ live page: byte 0 offerer,  │
//!  │         ring acceptor→offerer         │ byte 64 acceptor (1 = live) │
//!  └───────────────────────────────────────┴─────────────────────────────┘
//! ```
//!
//! Everything here is pure: [`parse`] checks every field of bytes a peer
//! wrote before anything is mapped, and never panics.
//!
#![cfg_attr(
    all(feature = "std", target_os = "linux"),
    doc = "[`XenTransport`]: crate::XenTransport"
)]
// Without `std` there is no XenTransport: the link goes to the crate's features.
#![cfg_attr(
    not(all(feature = "std", target_os = "linux")),
    doc = "[`XenTransport`]: crate#features"
)]

use coresident::ring::{MAX_DATA_SIZE, MIN_DATA_SIZE};
use coresident::ChannelLayout;
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::types::{DomId, EvtchnPort, GrantRef, MAX_PAGES};

/// `b"CRXG"`: coresident Xen grant rendezvous.
pub const RENDEZVOUS_MAGIC: [u8; 4] = *b"CRXG";
/// Version of the rendezvous encoding and of the live-page layout.
pub const RENDEZVOUS_VERSION: u16 = 1;
/// A Xen page (4 KiB on x86 and Arm): the unit of a grant.
pub const XEN_PAGE_SIZE: usize = 4096;
/// Offset of the offerer's live byte in the live page.
pub const OFFERER_LIVE: usize = 0;
/// Offset of the acceptor's live byte in the live page: another cache line.
pub const ACCEPTOR_LIVE: usize = 64;

/// The fixed part of the rendezvous bytes; `nrefs` grant references
/// (little-endian `u32`) follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct RendezvousHeader {
    /// [`RENDEZVOUS_MAGIC`].
    pub magic: [u8; 4],
    /// [`RENDEZVOUS_VERSION`].
    pub version: U16,
    /// The offering domain (the grants' owner).
    pub offerer: U16,
    /// The offerer's unbound event-channel port for the acceptor.
    pub port: U32,
    /// Data area of the offerer→acceptor ring (a power of two).
    pub to_acceptor: U32,
    /// Data area of the acceptor→offerer ring (a power of two).
    pub to_offerer: U32,
    /// Number of grant references: the region's pages plus the live page.
    pub nrefs: U32,
    /// Must be 0.
    pub reserved: [u8; 8],
}
const _: () = assert!(size_of::<RendezvousHeader>() == 32);

/// The size of [`RendezvousHeader`].
pub const HEADER_LEN: usize = size_of::<RendezvousHeader>();

/// Why a rendezvous was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RendezvousError {
    /// Shorter than the header, or not exactly header + `nrefs` refs.
    BadLength,
    /// Not [`RENDEZVOUS_MAGIC`].
    BadMagic,
    /// Another version.
    BadVersion(u16),
    /// Reserved bytes not zero.
    BadReserved,
    /// Ring sizes that are not powers of two in the ring's range.
    BadLayout,
    /// `nrefs` does not match the layout.
    BadPageCount,
    /// The offer comes from another domain than the expected peer.
    WrongPeer(DomId),
}

impl core::fmt::Display for RendezvousError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadLength => f.write_str("wrong length"),
            Self::BadMagic => f.write_str("not a CRXG rendezvous"),
            Self::BadVersion(v) => write!(f, "version {v}, expected {RENDEZVOUS_VERSION}"),
            Self::BadReserved => f.write_str("reserved bytes set"),
            Self::BadLayout => f.write_str("ring sizes out of range"),
            Self::BadPageCount => f.write_str("page count does not match the ring sizes"),
            Self::WrongPeer(d) => write!(f, "offered by domain {d}, not the expected peer"),
        }
    }
}

impl core::error::Error for RendezvousError {}

/// Pages of an offer for `layout`: the region's pages plus the live page.
pub const fn pages_for(layout: ChannelLayout) -> usize {
    layout.region_len().div_ceil(XEN_PAGE_SIZE) + 1
}

/// Whether `s` is a ring data-area size the ring accepts (a power of two in
/// range).
pub const fn valid_size(s: u32) -> bool {
    s.is_power_of_two() && s >= MIN_DATA_SIZE && s <= MAX_DATA_SIZE
}

/// Whether `layout` has valid sizes and fits in [`MAX_PAGES`] pages.
pub const fn valid_layout(layout: ChannelLayout) -> bool {
    valid_size(layout.to_acceptor)
        && valid_size(layout.to_offerer)
        && pages_for(layout) <= MAX_PAGES
}

/// Bytes of the rendezvous for `layout`.
pub const fn encoded_len(layout: ChannelLayout) -> usize {
    HEADER_LEN + 4 * pages_for(layout)
}

/// A validated offer, borrowing the bytes it was parsed from.
#[derive(Clone, Copy, Debug)]
pub struct Offer<'a> {
    /// The header.
    pub header: RendezvousHeader,
    /// The ring sizes.
    pub layout: ChannelLayout,
    refs: &'a [u8],
}

impl<'a> Offer<'a> {
    /// The offering domain.
    pub fn offerer(&self) -> DomId {
        self.header.offerer.get()
    }

    /// The offerer's event-channel port.
    pub fn port(&self) -> EvtchnPort {
        self.header.port.get()
    }

    /// Number of grant references ([`pages_for`] the layout).
    pub fn nrefs(&self) -> usize {
        self.refs.len() / 4
    }

    /// The grant references, in page order (the live page last).
    pub fn refs(&self) -> impl ExactSizeIterator<Item = GrantRef> + 'a {
        self.refs
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// Reads and validates rendezvous bytes from `peer`: every field, before
/// anything is mapped.
///
/// # Errors
///
/// [`RendezvousError`] for anything but a well-formed offer from `peer`.
pub fn parse(peer: DomId, bytes: &[u8]) -> Result<Offer<'_>, RendezvousError> {
    let (h, rest) =
        RendezvousHeader::read_from_prefix(bytes).map_err(|_| RendezvousError::BadLength)?;
    if h.magic != RENDEZVOUS_MAGIC {
        return Err(RendezvousError::BadMagic);
    }
    if h.version.get() != RENDEZVOUS_VERSION {
        return Err(RendezvousError::BadVersion(h.version.get()));
    }
    if h.reserved != [0; 8] {
        return Err(RendezvousError::BadReserved);
    }
    if h.offerer.get() != peer {
        return Err(RendezvousError::WrongPeer(h.offerer.get()));
    }
    let (a, b) = (h.to_acceptor.get(), h.to_offerer.get());
    if !valid_size(a) || !valid_size(b) {
        return Err(RendezvousError::BadLayout);
    }
    let layout = ChannelLayout {
        to_acceptor: a,
        to_offerer: b,
    };
    let n = usize::try_from(h.nrefs.get()).map_err(|_| RendezvousError::BadPageCount)?;
    if n != pages_for(layout) || n > MAX_PAGES {
        return Err(RendezvousError::BadPageCount);
    }
    if rest.len() != n * 4 {
        return Err(RendezvousError::BadLength);
    }
    Ok(Offer {
        header: h,
        layout,
        refs: rest,
    })
}

/// Writes the rendezvous bytes of an offer into `out`; returns their length.
///
/// # Errors
///
/// `Err(needed)` when `out` is shorter than `needed` bytes, or when `refs`
/// does not yield exactly [`pages_for`]`(layout)` references (then `needed`
/// is 0), or the layout is invalid (also 0).
pub fn encode(
    offerer: DomId,
    port: EvtchnPort,
    layout: ChannelLayout,
    refs: impl ExactSizeIterator<Item = GrantRef>,
    out: &mut [u8],
) -> Result<usize, usize> {
    let n = pages_for(layout);
    if !valid_layout(layout) || refs.len() != n {
        return Err(0);
    }
    let needed = encoded_len(layout);
    if out.len() < needed {
        return Err(needed);
    }
    let h = RendezvousHeader {
        magic: RENDEZVOUS_MAGIC,
        version: U16::new(RENDEZVOUS_VERSION),
        offerer: U16::new(offerer),
        port: U32::new(port),
        to_acceptor: U32::new(layout.to_acceptor),
        to_offerer: U32::new(layout.to_offerer),
        // n <= MAX_PAGES (valid_layout), far below u32::MAX.
        nrefs: U32::new(n as u32),
        reserved: [0; 8],
    };
    let (head, tail) = out.split_at_mut(HEADER_LEN);
    head.copy_from_slice(h.as_bytes());
    for (slot, r) in tail.chunks_exact_mut(4).zip(refs) {
        slot.copy_from_slice(&r.to_le_bytes());
    }
    Ok(needed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_parse_round_trip() {
        let layout = ChannelLayout {
            to_acceptor: 8192,
            to_offerer: 1024,
        };
        let n = pages_for(layout);
        let mut buf = [0u8; 256];
        let len = encode(7, 33, layout, (0..n as u32).map(|i| 100 + i), &mut buf).unwrap();
        assert_eq!(len, encoded_len(layout));
        let o = parse(7, &buf[..len]).unwrap();
        assert_eq!(
            (o.offerer(), o.port(), o.layout, o.nrefs()),
            (7, 33, layout, n)
        );
        assert!(o.refs().eq((0..n as u32).map(|i| 100 + i)));
        assert_eq!(
            parse(8, &buf[..len]).unwrap_err(),
            RendezvousError::WrongPeer(7)
        );
        assert_eq!(
            parse(7, &buf[..len - 1]).unwrap_err(),
            RendezvousError::BadLength
        );
    }

    #[test]
    fn encode_refuses_what_it_cannot_write() {
        let layout = ChannelLayout::symmetric(1024);
        let n = pages_for(layout);
        let mut small = [0u8; 8];
        assert_eq!(
            encode(0, 1, layout, 0..n as u32, &mut small),
            Err(encoded_len(layout))
        );
        let mut buf = [0u8; 256];
        assert_eq!(encode(0, 1, layout, 0..n as u32 + 1, &mut buf), Err(0));
        assert_eq!(
            encode(0, 1, ChannelLayout::symmetric(1000), 0..2, &mut buf),
            Err(0)
        );
        let huge = ChannelLayout::symmetric(MAX_DATA_SIZE);
        assert!(!valid_layout(huge));
    }
}
