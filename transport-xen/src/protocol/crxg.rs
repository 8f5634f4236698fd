//! The "CRXG" rendezvous bytes and the live-page layout: what an offer of a
//! Xen channel carries, `core` only. One [`Offer`] type, one [`encode`]
//! and one [`parse`]: the transport's `Transport::offer` encodes, its
//! `Transport::accept` parses, and the XenStore rendezvous passes the
//! [`Offer`] along without either (its keys are the same fields).
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
//! Everything here is pure: [`parse`] and [`Offer::check`] look at every
//! field a peer wrote before anything is mapped, and never panic.

use core::fmt;

use coresident::ring::{MAX_DATA_SIZE, MIN_DATA_SIZE};
use coresident::ChannelLayout;
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::types::{DomId, EvtchnPort, GrantRef, MAX_PAGES, XEN_PAGE_SIZE};

/// `b"CRXG"`: coresident Xen grant rendezvous.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::crxg::RENDEZVOUS_MAGIC;
/// # use coresident::ChannelLayout;
/// # use coresident_xen::protocol::crxg::{self, CrxgError, Offer};
/// # let layout = ChannelLayout::symmetric(4096);
/// # let refs: Vec<u32> = (8..8 + crxg::pages_for(layout) as u32).collect();
/// let offer = Offer { offerer: 3, port: 17, layout, refs: &refs[..] };
/// let mut bytes = [0u8; 256];
/// crxg::encode(&offer, &mut bytes)?;
/// assert_eq!(bytes[..4], RENDEZVOUS_MAGIC); // b"CRXG"
/// # Ok::<(), CrxgError>(())
/// ```
pub const RENDEZVOUS_MAGIC: [u8; 4] = *b"CRXG";
/// Version of the rendezvous encoding, of the XenStore keys and of the
/// live-page layout.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::crxg::RENDEZVOUS_VERSION;
/// # use coresident::ChannelLayout;
/// # use coresident_xen::protocol::crxg::{self, CrxgError, Offer};
/// # let layout = ChannelLayout::symmetric(4096);
/// # let refs: Vec<u32> = (8..8 + crxg::pages_for(layout) as u32).collect();
/// let offer = Offer { offerer: 3, port: 17, layout, refs: &refs[..] };
/// let mut bytes = [0u8; 256];
/// let n = crxg::encode(&offer, &mut bytes)?;
/// bytes[4] = 2; // the version field, little-endian, after the magic
/// assert_eq!(crxg::parse(3, &bytes[..n], &mut [0; 16]).err(), Some(CrxgError::BadVersion(2)));
/// assert_eq!(RENDEZVOUS_VERSION, 1);
/// # Ok::<(), CrxgError>(())
/// ```
pub const RENDEZVOUS_VERSION: u16 = 1;
/// Offset of the offerer's live byte in the live page.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::crxg::{ACCEPTOR_LIVE, OFFERER_LIVE};
///
/// // The live page's two bytes, a cache line apart.
/// assert_eq!((OFFERER_LIVE, ACCEPTOR_LIVE), (0, 64));
/// ```
pub const OFFERER_LIVE: usize = 0;
/// Offset of the acceptor's live byte in the live page: another cache line.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::crxg::{ACCEPTOR_LIVE, OFFERER_LIVE};
///
/// assert!(ACCEPTOR_LIVE - OFFERER_LIVE >= 64); // no false sharing
/// ```
pub const ACCEPTOR_LIVE: usize = 64;
/// The first grant reference a domain can grant: Xen reserves 0..8
/// (`GNTTAB_NR_RESERVED_ENTRIES`, `public/grant_table.h`).
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::crxg::FIRST_GRANT_REF;
/// # use coresident::ChannelLayout;
/// # use coresident_xen::protocol::crxg::{self, CrxgError, Offer};
/// # let layout = ChannelLayout::symmetric(4096);
/// let mut refs: Vec<u32> = (8..8 + crxg::pages_for(layout) as u32).collect();
/// refs[0] = FIRST_GRANT_REF - 1; // reserved by Xen
/// let offer = Offer { offerer: 3, port: 17, layout, refs };
/// assert_eq!(offer.check(), Err(CrxgError::BadRef(7)));
/// ```
pub const FIRST_GRANT_REF: GrantRef = 8;
/// References at or above this are refused: 2^20 v1 entries are 2048
/// grant frames, 32 times Xen 4.17's default `max_grant_frames` (64).
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::crxg::GRANT_REF_LIMIT;
///
/// assert_eq!(GRANT_REF_LIMIT, 1 << 20);
/// ```
pub const GRANT_REF_LIMIT: GrantRef = 1 << 20;
/// Ports at or above this are refused: the FIFO ABI's
/// `EVTCHN_FIFO_NR_CHANNELS` (`public/event_channel.h`); the 2-level ABI
/// has fewer. Port 0 is never allocated.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::crxg::PORT_LIMIT;
/// # use coresident::ChannelLayout;
/// # use coresident_xen::protocol::crxg::{self, CrxgError, Offer};
/// # let layout = ChannelLayout::symmetric(4096);
/// # let refs: Vec<u32> = (8..8 + crxg::pages_for(layout) as u32).collect();
/// let offer = Offer { offerer: 3, port: 17, layout, refs: &refs[..] };
/// assert_eq!(Offer { port: 0, ..offer }.check(), Err(CrxgError::BadPort(0)));
/// assert_eq!(Offer { port: PORT_LIMIT, ..offer }.check(), Err(CrxgError::BadPort(PORT_LIMIT)));
/// ```
pub const PORT_LIMIT: EvtchnPort = 1 << 17;

/// The fixed part of the rendezvous bytes; `nrefs` grant references
/// (little-endian `u32`) follow.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::crxg::{RendezvousHeader, HEADER_LEN};
/// use zerocopy::FromBytes;
/// # use coresident::ChannelLayout;
/// # use coresident_xen::protocol::crxg::{self, CrxgError, Offer};
/// # let layout = ChannelLayout::symmetric(4096);
/// # let refs: Vec<u32> = (8..8 + crxg::pages_for(layout) as u32).collect();
/// let offer = Offer { offerer: 3, port: 17, layout, refs: &refs[..] };
/// let mut bytes = [0u8; 256];
/// crxg::encode(&offer, &mut bytes)?;
/// let (h, _refs) = RendezvousHeader::read_from_prefix(&bytes).unwrap();
/// assert_eq!((h.offerer.get(), h.port.get(), h.to_acceptor.get()), (3, 17, 4096));
/// assert_eq!(HEADER_LEN, 32);
/// # Ok::<(), CrxgError>(())
/// ```
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
///
/// # Examples
///
/// ```
/// use coresident::ChannelLayout;
/// use coresident_xen::protocol::crxg::{encoded_len, pages_for, HEADER_LEN};
///
/// let layout = ChannelLayout::symmetric(4096);
/// assert_eq!(encoded_len(layout), HEADER_LEN + 4 * pages_for(layout));
/// ```
pub const HEADER_LEN: usize = size_of::<RendezvousHeader>();

/// Why an offer was refused.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::crxg::{self, CrxgError};
///
/// assert_eq!(crxg::parse(3, b"short", &mut [0; 16]).err(), Some(CrxgError::BadLength));
/// assert_eq!(CrxgError::WrongPeer(7).to_string(), "offered by domain 7, not the expected peer");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CrxgError {
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
    /// `nrefs` does not match the layout, or more than [`MAX_PAGES`].
    BadPageCount,
    /// A grant reference outside `FIRST_GRANT_REF..GRANT_REF_LIMIT`.
    BadRef(GrantRef),
    /// A port outside `1..PORT_LIMIT`.
    BadPort(EvtchnPort),
    /// The offer comes from another domain than the expected peer.
    WrongPeer(DomId),
    /// The output is shorter than the encoding (its length).
    BufferTooSmall(usize),
}

impl fmt::Display for CrxgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadLength => f.write_str("wrong length"),
            Self::BadMagic => f.write_str("not a CRXG rendezvous"),
            Self::BadVersion(v) => write!(f, "version {v}, expected {RENDEZVOUS_VERSION}"),
            Self::BadReserved => f.write_str("reserved bytes set"),
            Self::BadLayout => f.write_str("ring sizes out of range"),
            Self::BadPageCount => f.write_str("page count does not match the ring sizes"),
            Self::BadRef(r) => write!(f, "grant reference {r} out of range"),
            Self::BadPort(p) => write!(f, "event-channel port {p} out of range"),
            Self::WrongPeer(d) => write!(f, "offered by domain {d}, not the expected peer"),
            Self::BufferTooSmall(n) => write!(f, "rendezvous buffer too small ({n} bytes needed)"),
        }
    }
}

impl core::error::Error for CrxgError {}

/// Pages of an offer for `layout`: the region's pages plus the live page.
///
/// # Examples
///
/// ```
/// use coresident::ChannelLayout;
/// use coresident_xen::protocol::crxg::pages_for;
/// use coresident_xen::XEN_PAGE_SIZE;
///
/// let layout = ChannelLayout::symmetric(64 * 1024);
/// assert_eq!(pages_for(layout), layout.region_len().div_ceil(XEN_PAGE_SIZE) + 1);
/// assert!(pages_for(layout) > 2 * 64 * 1024 / XEN_PAGE_SIZE); // two rings and the live page
/// ```
pub const fn pages_for(layout: ChannelLayout) -> usize {
    layout.region_len().div_ceil(XEN_PAGE_SIZE) + 1
}

/// Whether `s` is a ring data-area size the ring accepts (a power of two in
/// range).
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::crxg::valid_size;
///
/// assert!(valid_size(4096));
/// assert!(!valid_size(1000)); // not a power of two
/// assert!(!valid_size(0));
/// ```
pub const fn valid_size(s: u32) -> bool {
    s.is_power_of_two() && s >= MIN_DATA_SIZE && s <= MAX_DATA_SIZE
}

/// Whether `layout` has valid sizes and fits in [`MAX_PAGES`] pages.
///
/// # Examples
///
/// ```
/// use coresident::ChannelLayout;
/// use coresident_xen::protocol::crxg::valid_layout;
///
/// assert!(valid_layout(ChannelLayout::symmetric(64 * 1024)));
/// assert!(!valid_layout(ChannelLayout { to_acceptor: 4096, to_offerer: 3000 }));
/// // More than MAX_PAGES pages (16 MiB) is refused too.
/// assert!(!valid_layout(ChannelLayout::symmetric(16 * 1024 * 1024)));
/// ```
pub const fn valid_layout(layout: ChannelLayout) -> bool {
    valid_size(layout.to_acceptor)
        && valid_size(layout.to_offerer)
        && pages_for(layout) <= MAX_PAGES
}

/// Bytes of the rendezvous for `layout`.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::crxg::encoded_len;
/// # use coresident::ChannelLayout;
/// # use coresident_xen::protocol::crxg::{self, CrxgError, Offer};
/// # let layout = ChannelLayout::symmetric(4096);
/// # let refs: Vec<u32> = (8..8 + crxg::pages_for(layout) as u32).collect();
/// let offer = Offer { offerer: 3, port: 17, layout, refs: &refs[..] };
/// let mut bytes = [0u8; 256];
/// assert_eq!(crxg::encode(&offer, &mut bytes)?, encoded_len(layout));
/// # Ok::<(), CrxgError>(())
/// ```
pub const fn encoded_len(layout: ChannelLayout) -> usize {
    HEADER_LEN + 4 * pages_for(layout)
}

/// An offer of a channel: who offers, its port, the ring sizes, and the
/// grant references (the region's pages, then the live page) in `refs`,
/// any storage of them (a slice, a `Vec`, an array).
///
/// # Examples
///
/// ```
/// use coresident::ChannelLayout;
/// use coresident_xen::protocol::crxg::{self, Offer};
///
/// let layout = ChannelLayout::symmetric(4096);
/// let refs: Vec<u32> = (8..8 + crxg::pages_for(layout) as u32).collect();
/// let offer = Offer { offerer: 3, port: 17, layout, refs };
/// offer.check()?;
/// let mut bytes = [0u8; 256];
/// let n = crxg::encode(&offer, &mut bytes)?;
/// let mut back = [0u32; 8];
/// let parsed = crxg::parse(3, &bytes[..n], &mut back)?;
/// assert_eq!(parsed.refs, offer.refs.as_slice());
/// # Ok::<(), crxg::CrxgError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer<R> {
    /// The offering domain (the grants' owner).
    pub offerer: DomId,
    /// The offerer's unbound event-channel port for the acceptor.
    pub port: EvtchnPort,
    /// The ring sizes.
    pub layout: ChannelLayout,
    /// The grant references, in page order (the live page last).
    pub refs: R,
}

impl<R> Offer<R> {
    /// The offer's fields without its references.
    fn as_parts(&self) -> Offer<()> {
        Offer {
            offerer: self.offerer,
            port: self.port,
            layout: self.layout,
            refs: (),
        }
    }
}

impl<R: AsRef<[GrantRef]>> Offer<R> {
    /// Checks every field: ring sizes, the count of references for them,
    /// each reference and the port in range.
    ///
    /// # Errors
    ///
    /// [`CrxgError::BadLayout`], [`CrxgError::BadPageCount`],
    /// [`CrxgError::BadRef`], [`CrxgError::BadPort`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use coresident::ChannelLayout;
    /// # use coresident_xen::protocol::crxg::{self, CrxgError, Offer};
    /// # let layout = ChannelLayout::symmetric(4096);
    /// # let refs: Vec<u32> = (8..8 + crxg::pages_for(layout) as u32).collect();
    /// let offer = Offer { offerer: 3, port: 17, layout, refs: &refs[..] };
    /// offer.check()?;
    /// // One reference short of the layout's pages.
    /// let short = Offer { refs: &refs[1..], ..offer };
    /// assert_eq!(short.check(), Err(CrxgError::BadPageCount));
    /// # Ok::<(), CrxgError>(())
    /// ```
    pub fn check(&self) -> Result<(), CrxgError> {
        let refs = self.refs.as_ref();
        check_parts(self.layout, self.port, refs.len(), refs.iter().copied())
    }

    /// The same offer, its references borrowed.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident::ChannelLayout;
    /// use coresident_xen::protocol::crxg::{self, Offer};
    ///
    /// let layout = ChannelLayout::symmetric(4096);
    /// let owned = Offer { offerer: 3, port: 17, layout, refs: vec![8; crxg::pages_for(layout)] };
    /// let borrowed: Offer<&[u32]> = owned.as_ref();
    /// assert_eq!(borrowed.refs.len(), owned.refs.len());
    /// ```
    pub fn as_ref(&self) -> Offer<&[GrantRef]> {
        Offer {
            offerer: self.offerer,
            port: self.port,
            layout: self.layout,
            refs: self.refs.as_ref(),
        }
    }
}

/// [`Offer::check`] on the parts of an offer: its references one by one,
/// `nrefs` of them.
fn check_parts(
    layout: ChannelLayout,
    port: EvtchnPort,
    nrefs: usize,
    refs: impl Iterator<Item = GrantRef>,
) -> Result<(), CrxgError> {
    if !valid_size(layout.to_acceptor) || !valid_size(layout.to_offerer) {
        return Err(CrxgError::BadLayout);
    }
    if nrefs != pages_for(layout) || nrefs > MAX_PAGES {
        return Err(CrxgError::BadPageCount);
    }
    let mut seen = 0;
    for r in refs {
        if !(FIRST_GRANT_REF..GRANT_REF_LIMIT).contains(&r) {
            return Err(CrxgError::BadRef(r));
        }
        seen += 1;
    }
    if seen != nrefs {
        return Err(CrxgError::BadPageCount);
    }
    if !(1..PORT_LIMIT).contains(&port) {
        return Err(CrxgError::BadPort(port));
    }
    Ok(())
}

/// Writes the rendezvous bytes of `offer` into `out` (after
/// [`Offer::check`]); returns their length, [`encoded_len`] of its layout.
///
/// # Errors
///
/// [`Offer::check`]'s, and [`CrxgError::BufferTooSmall`].
///
/// # Examples
///
/// ```
/// # use coresident::ChannelLayout;
/// # use coresident_xen::protocol::crxg::{self, CrxgError, Offer};
/// # let layout = ChannelLayout::symmetric(4096);
/// # let refs: Vec<u32> = (8..8 + crxg::pages_for(layout) as u32).collect();
/// let offer = Offer { offerer: 3, port: 17, layout, refs: &refs[..] };
/// let mut bytes = [0u8; 256];
/// let n = crxg::encode(&offer, &mut bytes)?;
/// assert_eq!(&bytes[..4], b"CRXG");
/// assert_eq!(crxg::encode(&offer, &mut [0u8; 8]), Err(CrxgError::BufferTooSmall(n)));
/// # Ok::<(), CrxgError>(())
/// ```
pub fn encode<R: AsRef<[GrantRef]>>(offer: &Offer<R>, out: &mut [u8]) -> Result<usize, CrxgError> {
    let refs = offer.refs.as_ref();
    encode_parts(offer.as_parts(), refs.len(), refs.iter().copied(), out)
}

/// [`encode`] for an offer whose `nrefs` references come one by one (a
/// kernel's pages hold them in two runs, with no room for a copy).
///
/// # Errors
///
/// As [`encode`].
fn encode_parts(
    offer: Offer<()>,
    nrefs: usize,
    refs: impl Iterator<Item = GrantRef> + Clone,
    out: &mut [u8],
) -> Result<usize, CrxgError> {
    check_parts(offer.layout, offer.port, nrefs, refs.clone())?;
    let needed = encoded_len(offer.layout);
    let out = out
        .get_mut(..needed)
        .ok_or(CrxgError::BufferTooSmall(needed))?;
    let h = RendezvousHeader {
        magic: RENDEZVOUS_MAGIC,
        version: U16::new(RENDEZVOUS_VERSION),
        offerer: U16::new(offer.offerer),
        port: U32::new(offer.port),
        to_acceptor: U32::new(offer.layout.to_acceptor),
        to_offerer: U32::new(offer.layout.to_offerer),
        // `nrefs <= MAX_PAGES` (checked), far below u32::MAX.
        nrefs: U32::new(u32::try_from(nrefs).map_err(|_| CrxgError::BadPageCount)?),
        reserved: [0; 8],
    };
    let (head, tail) = out.split_at_mut(HEADER_LEN);
    head.copy_from_slice(h.as_bytes());
    for (slot, r) in tail.chunks_exact_mut(4).zip(refs) {
        slot.copy_from_slice(&r.to_le_bytes());
    }
    Ok(needed)
}

/// The grant references as they stand in rendezvous bytes (little-endian
/// `u32`s), read one by one: what [`parse_borrowed`] hands out, for a side
/// with no room to copy them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WireRefs<'b>(&'b [u8]);

impl<'b> WireRefs<'b> {
    /// How many.
    pub(crate) fn len(&self) -> usize {
        self.0.len() / 4
    }

    /// Each reference, in page order.
    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = GrantRef> + Clone + 'b {
        self.0
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// Reads and validates rendezvous bytes from `peer` (every field, before
/// anything is mapped), its references into `refs`.
///
/// # Errors
///
/// [`CrxgError`] for anything but a well-formed offer from `peer` whose
/// references fit `refs` ([`CrxgError::BadPageCount`] otherwise).
///
/// # Examples
///
/// ```
/// # use coresident::ChannelLayout;
/// # use coresident_xen::protocol::crxg::{self, CrxgError, Offer};
/// # let layout = ChannelLayout::symmetric(4096);
/// # let refs: Vec<u32> = (8..8 + crxg::pages_for(layout) as u32).collect();
/// let offer = Offer { offerer: 3, port: 17, layout, refs: &refs[..] };
/// let mut bytes = [0u8; 256];
/// let n = crxg::encode(&offer, &mut bytes)?;
/// let mut room = [0u32; 16];
/// let parsed = crxg::parse(3, &bytes[..n], &mut room)?;
/// assert_eq!(parsed.refs, &refs[..]);
/// // Too little room for the references: refused, not truncated.
/// assert_eq!(crxg::parse(3, &bytes[..n], &mut [0; 1]).err(), Some(CrxgError::BadPageCount));
/// # Ok::<(), CrxgError>(())
/// ```
pub fn parse<'r>(
    peer: DomId,
    bytes: &[u8],
    refs: &'r mut [GrantRef],
) -> Result<Offer<&'r [GrantRef]>, CrxgError> {
    let offer = parse_borrowed(peer, bytes)?;
    let out = refs
        .get_mut(..offer.refs.len())
        .ok_or(CrxgError::BadPageCount)?;
    for (slot, r) in out.iter_mut().zip(offer.refs.iter()) {
        *slot = r;
    }
    Ok(Offer {
        offerer: offer.offerer,
        port: offer.port,
        layout: offer.layout,
        refs: &*out,
    })
}

/// [`parse`], the references left in the bytes.
///
/// # Errors
///
/// As [`parse`] (without a limit of room).
pub(crate) fn parse_borrowed(peer: DomId, bytes: &[u8]) -> Result<Offer<WireRefs<'_>>, CrxgError> {
    let (h, rest) = RendezvousHeader::read_from_prefix(bytes).map_err(|_| CrxgError::BadLength)?;
    if h.magic != RENDEZVOUS_MAGIC {
        return Err(CrxgError::BadMagic);
    }
    if h.version.get() != RENDEZVOUS_VERSION {
        return Err(CrxgError::BadVersion(h.version.get()));
    }
    if h.reserved != [0; 8] {
        return Err(CrxgError::BadReserved);
    }
    if h.offerer.get() != peer {
        return Err(CrxgError::WrongPeer(h.offerer.get()));
    }
    let layout = ChannelLayout {
        to_acceptor: h.to_acceptor.get(),
        to_offerer: h.to_offerer.get(),
    };
    if !valid_size(layout.to_acceptor) || !valid_size(layout.to_offerer) {
        return Err(CrxgError::BadLayout);
    }
    let n = usize::try_from(h.nrefs.get()).map_err(|_| CrxgError::BadPageCount)?;
    if n != pages_for(layout) || n > MAX_PAGES {
        return Err(CrxgError::BadPageCount);
    }
    if rest.len() != n * 4 {
        return Err(CrxgError::BadLength);
    }
    let refs = WireRefs(rest);
    let port = h.port.get();
    check_parts(layout, port, refs.len(), refs.iter())?;
    Ok(Offer {
        offerer: peer,
        port,
        layout,
        refs,
    })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn offer(layout: ChannelLayout) -> Offer<[GrantRef; 16]> {
        let mut refs = [0; 16];
        for (i, r) in refs.iter_mut().enumerate() {
            *r = 100 + i as u32;
        }
        Offer {
            offerer: 3,
            port: 9,
            layout,
            refs,
        }
    }

    fn good(layout: ChannelLayout) -> Vec<u8> {
        let o = offer(layout);
        let n = pages_for(layout);
        let o = Offer {
            refs: &o.refs[..n],
            ..o.as_ref()
        };
        let mut b = vec![0u8; encoded_len(layout)];
        assert_eq!(encode(&o, &mut b), Ok(b.len()));
        b
    }

    #[test]
    fn round_trip_and_every_hostile_field() {
        let layout = ChannelLayout {
            to_acceptor: 4096,
            to_offerer: 1024,
        };
        let v = good(layout);
        let mut refs = [0u32; 16];
        let o = parse(3, &v, &mut refs).unwrap();
        assert_eq!(
            (o.port, o.layout, o.refs.len()),
            (9, layout, pages_for(layout))
        );
        assert_eq!(o.refs[0], 100);
        let parse = |b: &[u8]| parse(3, b, &mut [0u32; 16]).map(|_| ());
        assert_eq!(
            super::parse(4, &v, &mut refs).map(|_| ()),
            Err(CrxgError::WrongPeer(3))
        );
        assert_eq!(parse(&v[..v.len() - 1]), Err(CrxgError::BadLength));
        assert_eq!(
            parse(&[v.as_slice(), &[0; 4]].concat()),
            Err(CrxgError::BadLength)
        );
        assert_eq!(parse(&v[..31]), Err(CrxgError::BadLength));
        assert_eq!(parse(&[]), Err(CrxgError::BadLength));
        let with = |at: usize, bytes: &[u8]| {
            let mut b = v.clone();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            b
        };
        assert_eq!(parse(&with(0, b"X")), Err(CrxgError::BadMagic));
        assert_eq!(parse(&with(4, &[2])), Err(CrxgError::BadVersion(2)));
        assert_eq!(parse(&with(31, &[1])), Err(CrxgError::BadReserved));
        for bad in [0u32, 3, 32, 4097, 1 << 31, u32::MAX] {
            assert_eq!(
                parse(&with(12, &bad.to_le_bytes())),
                Err(CrxgError::BadLayout),
                "{bad}"
            );
        }
        for bad in [0u32, 1, pages_for(layout) as u32 + 1, u32::MAX] {
            assert_eq!(
                parse(&with(20, &bad.to_le_bytes())),
                Err(CrxgError::BadPageCount),
                "{bad}"
            );
        }
        for bad in [0u32, 1 << 17] {
            assert_eq!(
                parse(&with(8, &bad.to_le_bytes())),
                Err(CrxgError::BadPort(bad))
            );
        }
        for bad in [0u32, 7, 1 << 20] {
            assert_eq!(
                parse(&with(32, &bad.to_le_bytes())),
                Err(CrxgError::BadRef(bad))
            );
        }
        // More references than the caller has room for.
        assert_eq!(
            super::parse(3, &v, &mut [0u32; 2]).map(|_| ()),
            Err(CrxgError::BadPageCount)
        );
        // The largest legal rings need more pages than MAX_PAGES allows.
        assert!(!valid_layout(ChannelLayout::symmetric(MAX_DATA_SIZE)));
    }

    #[test]
    fn encode_refuses_what_it_cannot_write() {
        let layout = ChannelLayout::symmetric(1024);
        let o = offer(layout);
        let n = pages_for(layout);
        let exact = Offer {
            refs: &o.refs[..n],
            ..o.as_ref()
        };
        assert_eq!(
            encode(&exact, &mut [0u8; 8]),
            Err(CrxgError::BufferTooSmall(encoded_len(layout)))
        );
        let more = Offer {
            refs: &o.refs[..n + 1],
            ..o.as_ref()
        };
        assert_eq!(encode(&more, &mut [0u8; 256]), Err(CrxgError::BadPageCount));
        let bad = Offer {
            layout: ChannelLayout::symmetric(1000),
            ..exact
        };
        assert_eq!(encode(&bad, &mut [0u8; 256]), Err(CrxgError::BadLayout));
    }
}
