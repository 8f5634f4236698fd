//! The ids and limits every layer shares: the floor of the crate. Nothing
//! here depends on another module.
//!
//! # Examples
//!
//! ```
//! use coresident_xen::{DomId, EvtchnPort, GrantRef, MAX_PAGES, XEN_PAGE_SIZE};
//!
//! let (dom0, port, first_free_ref): (DomId, EvtchnPort, GrantRef) = (0, 17, 8);
//! # let _ = (dom0, port, first_free_ref);
//! assert_eq!(XEN_PAGE_SIZE, 4096);
//! assert_eq!(MAX_PAGES * XEN_PAGE_SIZE, 16 << 20); // a link's region: 16 MiB at most
//! ```

/// A Xen domain id (`domid_t`, `xen/xen.h`); dom0 is 0.
///
/// # Examples
///
/// ```
/// use coresident_xen::{DomId, XenTransport};
///
/// let dom0: DomId = 0;
/// assert_eq!(XenTransport::new(5, dom0).peer(), 0);
/// ```
pub type DomId = u16;
/// A grant reference (`grant_ref_t`, `xen/grant_table.h`).
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::crxg::FIRST_GRANT_REF;
/// use coresident_xen::GrantRef;
///
/// // Xen reserves references 0 to 7.
/// let first: GrantRef = FIRST_GRANT_REF;
/// assert_eq!(first, 8);
/// ```
pub type GrantRef = u32;
/// An event-channel port (`evtchn_port_t`, `xen/event_channel.h`).
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::crxg::PORT_LIMIT;
/// use coresident_xen::EvtchnPort;
///
/// // Port 0 is never allocated.
/// let valid = |p: EvtchnPort| (1..PORT_LIMIT).contains(&p);
/// assert!(valid(17) && !valid(0));
/// ```
pub type EvtchnPort = u32;

/// A Xen page (4 KiB on x86 and Arm): the unit of a grant.
///
/// # Examples
///
/// ```
/// use coresident::ChannelLayout;
/// use coresident_xen::protocol::crxg::pages_for;
/// use coresident_xen::XEN_PAGE_SIZE;
///
/// let layout = ChannelLayout::symmetric(64 * 1024);
/// assert!(pages_for(layout) * XEN_PAGE_SIZE >= layout.region_len() + XEN_PAGE_SIZE);
/// ```
pub const XEN_PAGE_SIZE: usize = 4096;

/// The most pages one grant share or mapping may have here (16 MiB). The
/// drivers have lower limits of their own (gntalloc's `limit` module
/// parameter: 1024 pages by default).
///
/// # Examples
///
/// ```
/// use coresident::ChannelLayout;
/// use coresident_xen::protocol::crxg::{pages_for, valid_layout};
/// use coresident_xen::MAX_PAGES;
///
/// let big = ChannelLayout::symmetric(8 * 1024 * 1024); // 16 MiB of rings
/// assert!(pages_for(big) > MAX_PAGES);
/// assert!(!valid_layout(big));
/// ```
pub const MAX_PAGES: usize = 4096;

/// What the grant drivers do when pages are finally released: the peer's
/// signal that we are gone (`UNMAP_NOTIFY_CLEAR_BYTE`,
/// `UNMAP_NOTIFY_SEND_EVENT` in `xen/gntalloc.h` and `xen/gntdev.h`).
///
/// # Examples
///
/// ```
/// use coresident_xen::UnmapNotify;
///
/// // Clear byte 64 of the mapping and signal port 7 when it goes.
/// let n = UnmapNotify { clear_byte: Some(64), event: Some(7) };
/// assert_ne!(n, UnmapNotify::default());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnmapNotify {
    /// Byte offset in the mapping to set to 0.
    pub clear_byte: Option<usize>,
    /// Local event-channel port to signal (bound through `/dev/xen/evtchn`,
    /// and still bound when the release happens).
    pub event: Option<EvtchnPort>,
}
