//! A hypercall-level backend for a Xen PV guest kernel (feature `xen-sys`,
//! x86_64, `no_std`, no allocation): grant table v1, event channels, and
//! [`KernelBackend`], their [`XenBackend`](crate::backend::XenBackend), so
//! a kernel runs the one [`XenTransport`](crate::transport::XenTransport)
//! ([`KernelTransport`] names it), gets the same
//! [`Channel`](coresident::Channel) as a daemon, and speaks the same
//! rendezvous bytes ([`crate::protocol::crxg`]) as the Linux daemon's
//! [`XenTransport`] (feature `std`).
//!
//! ```text
//!   your kernel                          this module
//!   ───────────                          ───────────
//!   Kernel: Hypercall ──────────────▶ Xen::new(kernel, shared_info mfn)
//!     hypercall page / vmcall            ├─ SharedInfo: pending + mask bits, time
//!     domid, page allocator,             └─ GrantTable: setup_table, grant/revoke
//!     frame of a page, VA windows      KernelTransport::new(&xen, peer)
//!     map a frame at a VA, idle          offer → pages granted, port unbound
//!                                        accept → grants mapped, port bound
//!                                        Channel::new(link, config, xen.clock())
//! ```
//!
//! What only the kernel knows comes through the [`Kernel`] trait: how to
//! issue a hypercall ([`Hypercall`]; [`HypercallPage`] is Xen's page), its
//! own domain id, an allocator of its own pages and their machine frames,
//! windows of virtual address space where foreign pages can be mapped, how
//! to map a frame at an address ([`update_va_mapping`] for x86 PV), and
//! what to do while a doorbell waits (by default `SCHEDOP_poll` on the port,
//! which blocks the vCPU until the port is pending).
//!
//! Limits: x86_64 PV guests (grant mappings at virtual addresses, machine
//! frames in grant entries); grant table v1 with [`GRANT_FRAMES`] frames;
//! event channels of the 2-level ABI, polled (upcalls are the kernel's
//! business); one link's region up to [`MAX_PAGES`](crate::MAX_PAGES)
//! pages. A dropped link whose granted pages the peer still maps waits for
//! the peer to unmap them ([`Kernel::relax`], up to
//! [`Xen::release_timeout`] of Xen's system time), retrying to end each
//! grant's access; what the peer still maps after that is never freed (it
//! would be reused while the peer writes it) and is counted in
//! [`Xen::leaked_pages`].
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

pub mod backend;
pub mod event_channel;
pub mod grant_table;
pub mod hypercall;

#[cfg(all(test, feature = "std", target_os = "linux"))]
mod fake;
#[cfg(all(test, feature = "std", target_os = "linux"))]
mod tests;

use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use core::time::Duration;

pub use backend::{KernelBackend, KernelPages, KernelPort, KernelRefs};
pub use event_channel::{SharedInfo, XenClock};
pub use grant_table::{GrantTable, GRANT_FRAMES};
pub use hypercall::{update_va_mapping, Hypercall, HypercallPage};

/// The one [`XenTransport`](crate::transport::XenTransport), over this
/// kernel's hypercalls: `KernelTransport::new(&xen, peer)`.
///
/// # Examples
///
/// ```
/// use coresident::{ChannelLayout, PendingOffer, Transport};
/// use coresident_xen::kernel::{Kernel, KernelLink, KernelTransport, KernelTransportError, Xen};
///
/// /// Offers dom0 a channel and waits for it to map and bind.
/// fn offer<'x, K: Kernel>(xen: &'x Xen<K>) -> Result<KernelLink<'x, K>, KernelTransportError> {
///     let mut t = KernelTransport::new(xen, 0);
///     let pending = t.offer_pages(ChannelLayout::symmetric(4096))?;
///     // ... publish `pending.offer(..)` (ChannelKeys over the XenStore ring) ...
///     Ok(pending.into_link())
/// }
/// ```
pub type KernelTransport<'x, K> = crate::transport::XenTransport<KernelBackend<'x, K>>;
/// Its region: granted (offerer) or mapped (acceptor) pages.
///
/// # Examples
///
/// ```
/// use coresident::SharedRegion;
/// use coresident_xen::kernel::{Kernel, KernelLink, KernelRegion};
///
/// /// The bytes of rings a link's pages hold.
/// fn ring_bytes<'x, K: Kernel>(link: &KernelLink<'x, K>) -> usize {
///     let region: &KernelRegion<'x, K> = &link.region;
///     region.len()
/// }
/// ```
pub type KernelRegion<'x, K> = crate::transport::XenRegion<KernelBackend<'x, K>>;
/// Its doorbell: the port and the live page.
///
/// # Examples
///
/// ```
/// use coresident_xen::kernel::{Kernel, KernelDoorbell, KernelLink};
///
/// /// The event-channel port a link rings.
/// fn port<'x, K: Kernel>(link: &KernelLink<'x, K>) -> u32 {
///     let doorbell: &KernelDoorbell<'x, K> = &link.doorbell;
///     doorbell.port()
/// }
/// ```
pub type KernelDoorbell<'x, K> = crate::transport::XenDoorbell<KernelBackend<'x, K>>;
/// Its pending offer.
///
/// # Examples
///
/// ```
/// use coresident::ChannelLayout;
/// use coresident_xen::kernel::{Kernel, KernelPending, KernelTransport, KernelTransportError, Xen};
///
/// /// Offers dom0 a channel; the offer's fields go to XenStore next.
/// fn offer<'x, K: Kernel>(xen: &'x Xen<K>) -> Result<KernelPending<'x, K>, KernelTransportError> {
///     let mut t = KernelTransport::new(xen, 0);
///     let pending = t.offer_pages(ChannelLayout::symmetric(4096))?;
///     let mut refs = t.ref_buf(); // private pages of the kernel: 16 KiB is too much for a stack
///     let fields = pending.offer(refs.as_mut())?;
///     # drop(fields);
///     Ok(pending)
/// }
/// ```
pub type KernelPending<'x, K> = crate::transport::XenPending<KernelBackend<'x, K>>;
/// Its link.
///
/// # Examples
///
/// ```
/// use coresident::{Channel, ChannelConfig};
/// use coresident_xen::kernel::{Kernel, KernelLink, KernelPending, Xen};
///
/// /// Once dom0 accepted: the link, then the channel over it.
/// fn start<'x, K: Kernel>(xen: &'x Xen<K>, pending: KernelPending<'x, K>) {
///     let link: KernelLink<'x, K> = pending.into_link();
///     let ch = Channel::new(link, ChannelConfig::default(), xen.clock());
///     # drop(ch);
/// }
/// ```
pub type KernelLink<'x, K> = crate::transport::XenLink<KernelBackend<'x, K>>;
/// Its failure.
///
/// # Examples
///
/// ```
/// use coresident_xen::kernel::{KernelError, KernelTransportError};
///
/// let e: KernelTransportError = KernelTransportError::Backend(KernelError::NoMemory);
/// assert_eq!(e.to_string(), "the kernel has no pages or window to give");
/// ```
pub type KernelTransportError = crate::transport::XenTransportError<KernelError>;

use crate::types::{DomId, EvtchnPort, GrantRef};

/// A failure of a hypercall or of the kernel's services.
///
/// # Examples
///
/// ```
/// use coresident_xen::kernel::KernelError;
///
/// let e = KernelError::Hypercall { op: "EVTCHNOP_send", rc: -22 };
/// assert_eq!(e.to_string(), "hypercall EVTCHNOP_send failed: -22");
/// assert_eq!(KernelError::NoGrantRefs.to_string(), "no free grant reference");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KernelError {
    /// A hypercall returned a negated errno.
    Hypercall {
        /// Which.
        op: &'static str,
        /// What it returned.
        rc: i64,
    },
    /// A grant-table operation returned a `GNTST_*` status.
    Grant {
        /// Which.
        op: &'static str,
        /// The status (`GNTST_*`, `xen/grant_table.h`).
        status: i16,
    },
    /// The peer still maps (or copies from) the granted page: access stays.
    GrantInUse(GrantRef),
    /// Every grant reference of the table is in use.
    NoGrantRefs,
    /// A grant reference outside the table, reserved or not in use.
    BadGrantRef(GrantRef),
    /// A frame number that a v1 grant entry cannot hold (32 bits).
    FrameTooLarge(u64),
    /// The kernel had no pages or no window to give.
    NoMemory,
    /// The kernel knows no machine frame for a page.
    NoFrame,
    /// A port outside the 2-level event-channel ABI.
    BadPort(EvtchnPort),
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hypercall { op, rc } => write!(f, "hypercall {op} failed: {rc}"),
            Self::Grant { op, status } => write!(f, "{op}: grant status {status}"),
            Self::GrantInUse(r) => write!(f, "grant {r} is still in use by the peer"),
            Self::NoGrantRefs => f.write_str("no free grant reference"),
            Self::BadGrantRef(r) => write!(f, "grant reference {r} is not ours to end"),
            Self::FrameTooLarge(m) => write!(f, "frame {m:#x} does not fit a v1 grant entry"),
            Self::NoMemory => f.write_str("the kernel has no pages or window to give"),
            Self::NoFrame => f.write_str("the kernel knows no frame for a page"),
            Self::BadPort(p) => write!(f, "event-channel port {p} out of range"),
        }
    }
}

impl core::error::Error for KernelError {}

/// What only the kernel knows.
///
/// # Safety
///
/// Implementors guarantee:
/// - [`alloc_pages`](Self::alloc_pages) returns `n` page-aligned, zeroed,
///   writable pages of this domain's memory, contiguous in virtual address
///   space, used by nothing else until they are passed to
///   [`free_pages`](Self::free_pages);
/// - [`frame_of`](Self::frame_of) returns the machine frame that backs the
///   page (a wrong frame would grant someone else's memory);
/// - [`alloc_window`](Self::alloc_window) returns `n` pages of virtual
///   address space, page-aligned, where [`map_frame`](Self::map_frame) and
///   grant mappings may replace whatever is mapped (for x86 PV: page tables
///   present down to L1), used by nothing else until
///   [`free_window`](Self::free_window);
/// - [`domid`](Self::domid) is this domain's id.
///
/// # Examples
///
/// ```
/// use core::ptr::NonNull;
/// use coresident_xen::kernel::{update_va_mapping, Hypercall, HypercallPage, Kernel, KernelError, Xen};
///
/// /// A kernel's half, sketched: a real one hands out its own pages here.
/// struct MyKernel { page: HypercallPage, domid: u16 }
///
/// // SAFETY: every call goes to Xen's hypercall page unchanged.
/// unsafe impl Hypercall for MyKernel {
///     unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 {
///         // SAFETY: the caller's contract, passed on.
///         unsafe { self.page.hypercall(op, args) }
///     }
/// }
/// // SAFETY: this sketch hands out no page, frame or window (every `None`),
/// // so it has none to get wrong; `domid` is what XenStore's `domid` said.
/// unsafe impl Kernel for MyKernel {
///     fn domid(&self) -> u16 { self.domid }
///     fn alloc_pages(&self, _n: usize) -> Option<NonNull<u8>> { None } // the page allocator
///     unsafe fn free_pages(&self, _pages: NonNull<u8>, _n: usize) {}
///     fn frame_of(&self, _page: NonNull<u8>) -> Option<u64> { None } // the p2m table
///     fn alloc_window(&self, _n: usize) -> Option<NonNull<u8>> { None } // free VA with L1 tables
///     unsafe fn free_window(&self, _window: NonNull<u8>, _n: usize) {}
///     unsafe fn map_frame(&self, va: NonNull<u8>, mfn: u64) -> Result<(), KernelError> {
///         // SAFETY: `va` is a page of our window and `mfn` ours to map
///         // (the caller's contract).
///         unsafe { update_va_mapping(self, va.as_ptr() as u64, mfn) }
///     }
/// }
///
/// fn boot(k: MyKernel, shared_info_mfn: u64) -> Result<Xen<MyKernel>, KernelError> {
///     Xen::new(k, shared_info_mfn) // NoMemory with this sketch: no window to give
/// }
/// ```
pub unsafe trait Kernel: Hypercall {
    /// This domain's id (dom0: 0; a domU reads `domid` from XenStore).
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::kernel::Kernel;
    ///
    /// /// The path of this domain's own XenStore directory.
    /// fn home<K: Kernel>(k: &K, buf: &mut [u8; 32]) -> usize {
    ///     use core::fmt::Write;
    ///     struct W<'a>(&'a mut [u8], usize);
    ///     impl Write for W<'_> {
    ///         fn write_str(&mut self, s: &str) -> core::fmt::Result {
    ///             let end = self.1 + s.len();
    ///             self.0.get_mut(self.1..end).ok_or(core::fmt::Error)?.copy_from_slice(s.as_bytes());
    ///             self.1 = end;
    ///             Ok(())
    ///         }
    ///     }
    ///     let mut w = W(buf, 0);
    ///     let _ = write!(w, "/local/domain/{}", k.domid());
    ///     w.1
    /// }
    /// ```
    fn domid(&self) -> DomId;

    /// `n` zeroed pages of this domain's memory, or `None`.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::kernel::{Kernel, KernelError};
    ///
    /// /// The machine frame of a fresh page (what a grant names), and the page.
    /// fn fresh_frame<K: Kernel>(k: &K) -> Result<(core::ptr::NonNull<u8>, u64), KernelError> {
    ///     let page = k.alloc_pages(1).ok_or(KernelError::NoMemory)?;
    ///     match k.frame_of(page) {
    ///         Some(mfn) => Ok((page, mfn)),
    ///         None => {
    ///             // SAFETY: the page `alloc_pages(1)` gave, granted to nobody.
    ///             unsafe { k.free_pages(page, 1) };
    ///             Err(KernelError::NoFrame)
    ///         }
    ///     }
    /// }
    /// ```
    fn alloc_pages(&self, n: usize) -> Option<NonNull<u8>>;

    /// Returns pages from [`alloc_pages`](Self::alloc_pages).
    ///
    /// # Safety
    ///
    /// `pages` and `n` are what one `alloc_pages` call returned and was
    /// asked for, no peer maps them any more, and nothing uses them after.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::kernel::Kernel;
    ///
    /// fn scratch<K: Kernel>(k: &K) {
    ///     if let Some(p) = k.alloc_pages(4) {
    ///         // ... use the 4 zeroed pages privately ...
    ///         // SAFETY: what `alloc_pages(4)` returned, never granted, unused after.
    ///         unsafe { k.free_pages(p, 4) };
    ///     }
    /// }
    /// ```
    unsafe fn free_pages(&self, pages: NonNull<u8>, n: usize);

    /// The machine frame backing the page at `page` (from `alloc_pages`).
    ///
    /// # Examples
    ///
    /// ```
    /// use core::ptr::NonNull;
    /// use coresident_xen::kernel::{Kernel, Xen};
    ///
    /// /// Grants dom0 read access to a page of ours.
    /// fn grant_page<K: Kernel>(xen: &Xen<K>, page: NonNull<u8>) -> Option<u32> {
    ///     let mfn = xen.kernel().frame_of(page)?;
    ///     xen.grants().grant(0, mfn, true).ok()
    /// }
    /// ```
    fn frame_of(&self, page: NonNull<u8>) -> Option<u64>;

    /// `n` pages of virtual address space for foreign mappings, or `None`.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::kernel::grant_table::map_grants;
    /// use coresident_xen::kernel::{Kernel, KernelError};
    ///
    /// /// Maps dom0's grant `r` read-only; returns the page and its map handle.
    /// fn map_one<K: Kernel>(k: &K, r: u32) -> Result<(core::ptr::NonNull<u8>, u32), KernelError> {
    ///     let va = k.alloc_window(1).ok_or(KernelError::NoMemory)?;
    ///     let mut handle = [0u32; 1];
    ///     // SAFETY: `va` is a fresh window page, used by nothing else.
    ///     unsafe { map_grants(k, 0, [r].into_iter(), va, true, &mut handle)? };
    ///     Ok((va, handle[0]))
    /// }
    /// ```
    fn alloc_window(&self, n: usize) -> Option<NonNull<u8>>;

    /// Returns a window from [`alloc_window`](Self::alloc_window); the
    /// kernel restores what it needs there (a grant unmap leaves the page
    /// table entries empty).
    ///
    /// # Safety
    ///
    /// `window` and `n` are what one `alloc_window` call returned and was
    /// asked for, nothing is mapped there by this module any more, and
    /// nothing uses it after.
    ///
    /// # Examples
    ///
    /// ```
    /// use core::ptr::NonNull;
    /// use coresident_xen::kernel::Kernel;
    ///
    /// /// Gives back a window that nothing was mapped in after all.
    /// fn unused<K: Kernel>(k: &K, n: usize) {
    ///     if let Some(w) = k.alloc_window(n) {
    ///         // SAFETY: `alloc_window(n)`'s window, nothing mapped, unused after.
    ///         unsafe { k.free_window(w, n) };
    ///     }
    /// }
    /// ```
    unsafe fn free_window(&self, window: NonNull<u8>, n: usize);

    /// Maps machine frame `mfn` writable at `va` (a page of a window).
    /// x86 PV: [`update_va_mapping`].
    ///
    /// # Safety
    ///
    /// `va` is a page of a live window of this kernel, and `mfn` a frame
    /// this domain may map (shared_info, a grant-table frame).
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::kernel::{Kernel, KernelError};
    ///
    /// /// What `Xen::new` does for shared_info.
    /// fn map_at_window<K: Kernel>(k: &K, mfn: u64) -> Result<core::ptr::NonNull<u8>, KernelError> {
    ///     let va = k.alloc_window(1).ok_or(KernelError::NoMemory)?;
    ///     // SAFETY: `va` is a page of the fresh window; `mfn` is this domain's
    ///     // shared_info frame.
    ///     unsafe { k.map_frame(va, mfn)? };
    ///     Ok(va)
    /// }
    /// ```
    unsafe fn map_frame(&self, va: NonNull<u8>, mfn: u64) -> Result<(), KernelError>;

    /// Called by a waiting doorbell when `port` is not pending: return when
    /// it may be, or when Xen's system time reaches `until_ns` (0: no
    /// limit). Returning early is always correct (the caller re-checks).
    /// The default blocks the vCPU with `SCHEDOP_poll`.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::kernel::{Kernel, Xen};
    ///
    /// /// A doorbell's wait, in short: idle until `port` is pending or `until_ns`.
    /// fn wait<K: Kernel>(xen: &Xen<K>, port: u32, until_ns: u64) -> bool {
    ///     while !xen.shared_info().test_and_clear_pending(port) {
    ///         if xen.shared_info().system_time_ns() >= until_ns {
    ///             return false;
    ///         }
    ///         xen.kernel().idle(port, until_ns);
    ///     }
    ///     true
    /// }
    /// ```
    fn idle(&self, port: EvtchnPort, until_ns: u64) {
        let _ = hypercall::poll(self, &[port], until_ns);
    }

    /// Called while a dropped link waits for its peer to unmap pages this
    /// domain granted: return after a pause, at the latest when Xen's
    /// system time reaches `until_ns` (a millisecond or so ahead). Returning
    /// early is always correct (the caller retries ending the grants and
    /// checks its deadline). The default blocks the vCPU with
    /// `SCHEDOP_poll` on no port until `until_ns` (any new event for this
    /// domain ends it early); a kernel with other work to run (another
    /// thread that may hold the peer's mapping) runs it here.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::kernel::{Kernel, KernelError, Xen};
    ///
    /// /// What a dropped link does: retry ending the grant, pausing between tries.
    /// fn end<K: Kernel>(xen: &Xen<K>, r: u32, until_ns: u64) -> Result<(), KernelError> {
    ///     loop {
    ///         match xen.grants().end_access(r) {
    ///             Err(KernelError::GrantInUse(_)) if xen.shared_info().system_time_ns() < until_ns => {
    ///                 xen.kernel().relax(until_ns.min(xen.shared_info().system_time_ns() + 1_000_000))
    ///             }
    ///             done => return done,
    ///         }
    ///     }
    /// }
    /// ```
    fn relax(&self, until_ns: u64) {
        let _ = hypercall::poll(self, &[], until_ns);
    }
}

/// How long, by default, a dropped link waits for its peer to unmap the
/// pages it granted before giving them up as leaked ([`Xen::release_timeout`]).
///
/// # Examples
///
/// ```
/// use core::time::Duration;
/// use coresident_xen::kernel::DEFAULT_RELEASE_TIMEOUT;
///
/// assert_eq!(DEFAULT_RELEASE_TIMEOUT, Duration::from_secs(5));
/// ```
pub const DEFAULT_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// The hypervisor as this kernel sees it: the kernel's services, shared_info
/// (event-channel bits, time) and the grant table. One per domain; links
/// borrow it.
///
/// # Examples
///
/// ```
/// use coresident_xen::kernel::{Kernel, KernelError, KernelTransport, Xen};
///
/// /// At boot, once: the domain's `Xen`; links borrow it.
/// fn boot<K: Kernel>(kernel: K, shared_info_mfn: u64) -> Result<(), KernelError> {
///     let xen = Xen::new(kernel, shared_info_mfn)?;
///     let to_dom0 = KernelTransport::new(&xen, 0);
///     # drop(to_dom0);
///     assert_eq!(xen.leaked_pages(), 0);
///     Ok(())
/// }
/// ```
#[derive(Debug)]
pub struct Xen<K: Kernel> {
    kernel: K,
    shared: SharedInfo,
    grants: GrantTable,
    leaked: AtomicUsize,
    release_timeout_ns: AtomicU64,
}

impl<K: Kernel> Xen<K> {
    /// Maps shared_info (machine frame `shared_info_mfn`: `start_info`'s
    /// `shared_info` >> 12 in a PV guest) and sets the grant table up.
    ///
    /// # Errors
    ///
    /// No window from the kernel, a refused mapping or grant-table setup.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::kernel::{Kernel, KernelError, KernelTransport, Xen};
    ///
    /// /// At boot: `shared_info_mfn` is `start_info.shared_info >> 12`.
    /// fn start<K: Kernel>(kernel: K, shared_info_mfn: u64) -> Result<(), KernelError> {
    ///     let xen = Xen::new(kernel, shared_info_mfn)?;
    ///     let transport = KernelTransport::new(&xen, 0); // to dom0
    ///     # drop(transport);
    ///     Ok(())
    /// }
    /// ```
    pub fn new(kernel: K, shared_info_mfn: u64) -> Result<Self, KernelError> {
        let win = kernel.alloc_window(1).ok_or(KernelError::NoMemory)?;
        // SAFETY: `win` is a fresh window page of this kernel; shared_info
        // is this domain's to map.
        unsafe { kernel.map_frame(win, shared_info_mfn)? };
        // SAFETY: `win` now maps this domain's shared_info page, and stays
        // mapped: the window is never returned.
        let shared = unsafe { SharedInfo::new(win) };
        let grants = GrantTable::setup(&kernel)?;
        Ok(Self {
            kernel,
            shared,
            grants,
            leaked: AtomicUsize::new(0),
            release_timeout_ns: AtomicU64::new(duration_ns(DEFAULT_RELEASE_TIMEOUT)),
        })
    }

    /// The kernel's services.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::kernel::{Kernel, Xen};
    ///
    /// fn own_id<K: Kernel>(xen: &Xen<K>) -> u16 {
    ///     xen.kernel().domid()
    /// }
    /// ```
    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// shared_info: event-channel bits and time.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::kernel::{Kernel, Xen};
    ///
    /// /// Xen's system time, in nanoseconds.
    /// fn now<K: Kernel>(xen: &Xen<K>) -> u64 {
    ///     xen.shared_info().system_time_ns()
    /// }
    /// ```
    pub fn shared_info(&self) -> &SharedInfo {
        &self.shared
    }

    /// The grant table.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::kernel::{Kernel, Xen};
    ///
    /// /// Whether the peer still maps (or copies from) grant `r`.
    /// fn peer_holds<K: Kernel>(xen: &Xen<K>, r: u32) -> bool {
    ///     xen.grants().in_use(r)
    /// }
    /// ```
    pub fn grants(&self) -> &GrantTable {
        &self.grants
    }

    /// A [`Clock`](coresident::Clock) on Xen's system time.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident::{Channel, ChannelConfig};
    /// use coresident_xen::kernel::KernelLink;
    /// use coresident_xen::kernel::{Kernel, Xen};
    ///
    /// /// A channel over a link, timed by Xen's system time.
    /// fn channel<'x, K: Kernel>(xen: &'x Xen<K>, link: KernelLink<'x, K>) {
    ///     let ch = Channel::new(link, ChannelConfig::default(), xen.clock());
    ///     # drop(ch);
    /// }
    /// ```
    pub fn clock(&self) -> XenClock<'_> {
        XenClock::new(&self.shared)
    }

    /// How long a dropped link waits (Xen's system time) for its peer to
    /// unmap the pages it granted ([`DEFAULT_RELEASE_TIMEOUT`] unless set).
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::kernel::DEFAULT_RELEASE_TIMEOUT;
    /// use coresident_xen::kernel::{Kernel, Xen};
    ///
    /// fn is_default<K: Kernel>(xen: &Xen<K>) -> bool {
    ///     xen.release_timeout() == DEFAULT_RELEASE_TIMEOUT
    /// }
    /// ```
    pub fn release_timeout(&self) -> Duration {
        Duration::from_nanos(self.release_timeout_ns.load(Ordering::Relaxed))
    }

    /// Sets [`release_timeout`](Self::release_timeout) (zero: no wait).
    ///
    /// # Examples
    ///
    /// ```
    /// use core::time::Duration;
    /// use coresident_xen::kernel::{Kernel, Xen};
    ///
    /// /// A kernel shutting down waits a little for peers, not the default.
    /// fn quick<K: Kernel>(xen: &Xen<K>) {
    ///     xen.set_release_timeout(Duration::from_millis(100));
    ///     assert_eq!(xen.release_timeout(), Duration::from_millis(100));
    /// }
    /// ```
    pub fn set_release_timeout(&self, timeout: Duration) {
        self.release_timeout_ns
            .store(duration_ns(timeout), Ordering::Relaxed);
    }

    /// Pages never taken back because the peer still mapped them when
    /// their link was dropped and [`release_timeout`](Self::release_timeout)
    /// later.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::kernel::{Kernel, Xen};
    ///
    /// /// After tearing links down: report what a peer kept mapped.
    /// fn report<K: Kernel>(xen: &Xen<K>) -> usize {
    ///     xen.leaked_pages() // never freed: the peer may still write them
    /// }
    /// ```
    pub fn leaked_pages(&self) -> usize {
        self.leaked.load(Ordering::Relaxed)
    }

    pub(crate) fn leak(&self, pages: usize) {
        self.leaked.fetch_add(pages, Ordering::Relaxed);
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
