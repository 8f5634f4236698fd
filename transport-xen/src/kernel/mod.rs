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
pub type KernelRegion<'x, K> = crate::transport::XenRegion<KernelBackend<'x, K>>;
/// Its doorbell: the port and the live page.
pub type KernelDoorbell<'x, K> = crate::transport::XenDoorbell<KernelBackend<'x, K>>;
/// Its pending offer.
pub type KernelPending<'x, K> = crate::transport::XenPending<KernelBackend<'x, K>>;
/// Its link.
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
pub unsafe trait Kernel: Hypercall {
    /// This domain's id (dom0: 0; a domU reads `domid` from XenStore).
    fn domid(&self) -> DomId;

    /// `n` zeroed pages of this domain's memory, or `None`.
    fn alloc_pages(&self, n: usize) -> Option<NonNull<u8>>;

    /// Returns pages from [`alloc_pages`](Self::alloc_pages).
    ///
    /// # Safety
    ///
    /// `pages` and `n` are what one `alloc_pages` call returned and was
    /// asked for, no peer maps them any more, and nothing uses them after.
    unsafe fn free_pages(&self, pages: NonNull<u8>, n: usize);

    /// The machine frame backing the page at `page` (from `alloc_pages`).
    fn frame_of(&self, page: NonNull<u8>) -> Option<u64>;

    /// `n` pages of virtual address space for foreign mappings, or `None`.
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
    unsafe fn free_window(&self, window: NonNull<u8>, n: usize);

    /// Maps machine frame `mfn` writable at `va` (a page of a window).
    /// x86 PV: [`update_va_mapping`].
    ///
    /// # Safety
    ///
    /// `va` is a page of a live window of this kernel, and `mfn` a frame
    /// this domain may map (shared_info, a grant-table frame).
    unsafe fn map_frame(&self, va: NonNull<u8>, mfn: u64) -> Result<(), KernelError>;

    /// Called by a waiting doorbell when `port` is not pending: return when
    /// it may be, or when Xen's system time reaches `until_ns` (0: no
    /// limit). Returning early is always correct (the caller re-checks).
    /// The default blocks the vCPU with `SCHEDOP_poll`.
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
