//! The PV kernel's [`XenBackend`]: grant table v1 and event channels over
//! hypercalls, so a kernel runs the one
//! [`XenTransport`] (offer, accept,
//! doorbell) and speaks the same [`crxg`](crate::protocol::crxg) bytes as a
//! Linux daemon. [`KernelTransport`](super::KernelTransport) is that
//! transport over this backend.
//!
//! - [`KernelPages`]: this kernel's own pages granted to the peer, or a
//!   window of the kernel where the peer's grants are mapped; each owns its
//!   bookkeeping (grant references or map handles, in private pages), so
//!   the region and the live page may be dropped in either order.
//! - [`KernelPort`]: an event-channel port, polled through shared_info and
//!   slept on with [`Kernel::idle`]; closed on drop.
//! - The release signal has nothing to arm: a kernel's pages go only
//!   through their own drop, which clears the live byte and signals first
//!   (the transport's doorbell does it).
//!
//! # Examples
//!
//! ```
//! use coresident_xen::backend::{EventPort, GrantedPages, XenBackend};
//! use coresident_xen::kernel::{Kernel, KernelBackend, KernelError, Xen};
//!
//! /// What an offer does underneath: pages granted, a port for the peer.
//! fn grant_and_port<K: Kernel>(xen: &Xen<K>) -> Result<(), KernelError> {
//!     let mut b = KernelBackend::new(xen);
//!     let pages = b.grant(0, 2)?;
//!     let port = b.unbound_port(0)?;
//!     // ... publish `pages.refs()` and `port.port()` ...
//!     # drop((pages, port));
//!     Ok(())
//! }
//! ```

use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration;

use super::grant_table::{map_grants, unmap_grants};
use super::{event_channel, Kernel, KernelError, Xen};
use crate::backend::{EventPort, GrantedPages, XenBackend};
use crate::transport::XenTransport;
use crate::types::{DomId, EvtchnPort, GrantRef, MAX_PAGES, XEN_PAGE_SIZE};

/// A slot of a granted page whose access has ended (no grant reference is
/// this large: the table has 2048 entries).
const ENDED: GrantRef = u32::MAX;
const _: () = assert!(
    super::GrantTable::capacity() + super::grant_table::NR_RESERVED_ENTRIES as usize
        <= ENDED as usize
);

/// How far ahead of now one [`Kernel::relax`] may last while a dropped link
/// waits for its peer to unmap (Xen's system time, ns).
const RELAX_STEP_NS: u64 = 1_000_000;

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Pages a link owns: this kernel's pages granted to the peer, or a window
/// where the peer's grants are mapped; per page a grant reference or a map
/// handle, kept in private pages. Released on drop: a mapped window is
/// unmapped; granted pages have their access ended once the peer unmapped
/// them (waiting up to [`Xen::release_timeout`]), or are counted in
/// [`Xen::leaked_pages`] and never freed.
///
/// # Examples
///
/// ```
/// use coresident_xen::backend::{GrantedPages, XenBackend};
/// use coresident_xen::kernel::{Kernel, KernelBackend, KernelError, KernelPages, Xen};
///
/// /// Grants dom0 two pages of ours; their references go to dom0 next.
/// fn two_pages<K: Kernel>(xen: &Xen<K>) -> Result<KernelPages<'_, K>, KernelError> {
///     let pages = KernelBackend::new(xen).grant(0, 2)?;
///     assert_eq!(pages.refs().len(), 2);
///     Ok(pages) // dropped: access ended once dom0 unmapped, pages freed
/// }
/// ```
pub struct KernelPages<'x, K: Kernel> {
    xen: &'x Xen<K>,
    base: NonNull<u8>,
    /// Pages in the allocation or window.
    n: usize,
    /// Pages granted or mapped so far (`n` once built).
    done: usize,
    /// `n` `u32`s: grant references (granted) or handles (mapped).
    meta: NonNull<u32>,
    meta_pages: usize,
    mapped: bool,
}

// SAFETY:
// - `base` and `meta` point to pages this value owns alone (its own
//   allocation or window, its private bookkeeping); moving the value moves
//   that ownership, and nothing of it is tied to the CPU that made it;
// - the `&Xen<K>` it keeps may cross to another CPU because `K: Sync`
//   (the grant table, shared_info and the leak counter are atomics).
unsafe impl<K: Kernel + Sync> Send for KernelPages<'_, K> {}

impl<K: Kernel> fmt::Debug for KernelPages<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelPages")
            .field("base", &self.base)
            .field("n", &self.n)
            .field("done", &self.done)
            .field("mapped", &self.mapped)
            .finish()
    }
}

impl<'x, K: Kernel> KernelPages<'x, K> {
    fn meta_pages(n: usize) -> usize {
        (n * 4).div_ceil(XEN_PAGE_SIZE).max(1)
    }

    /// Private bookkeeping for `n` pages.
    fn alloc_meta(xen: &Xen<K>, n: usize) -> Result<(NonNull<u32>, usize), KernelError> {
        let mp = Self::meta_pages(n);
        let meta = xen.kernel().alloc_pages(mp).ok_or(KernelError::NoMemory)?;
        Ok((meta.cast(), mp))
    }

    fn slots(&mut self) -> &mut [u32] {
        // SAFETY: `meta` is `meta_pages` private pages from `alloc_pages`
        // (zeroed, page-aligned, ours alone: no peer ever sees them), room
        // for `n` u32s; `&mut self` makes this the only view.
        unsafe { core::slice::from_raw_parts_mut(self.meta.as_ptr(), self.n) }
    }

    fn slot(&self, i: usize) -> u32 {
        debug_assert!(i < self.done);
        // SAFETY: as in `slots`, a read of one of the `n` u32s.
        unsafe { self.meta.as_ptr().add(i).read() }
    }

    /// `n` fresh pages of this kernel, each granted to `peer` (read-write).
    fn grant(xen: &'x Xen<K>, peer: DomId, n: usize) -> Result<Self, KernelError> {
        let (meta, meta_pages) = Self::alloc_meta(xen, n)?;
        let Some(base) = xen.kernel().alloc_pages(n) else {
            // SAFETY: just allocated, never shown to anyone.
            unsafe { xen.kernel().free_pages(meta.cast(), meta_pages) };
            return Err(KernelError::NoMemory);
        };
        // From here on, Drop undoes whatever was done: it ends the access
        // of the first `done` pages and frees the allocation.
        let mut p = Self {
            xen,
            base,
            n,
            done: 0,
            meta,
            meta_pages,
            mapped: false,
        };
        for i in 0..n {
            let page = NonNull::new(base.as_ptr().wrapping_add(i * XEN_PAGE_SIZE))
                .ok_or(KernelError::NoMemory)?;
            let frame = xen.kernel().frame_of(page).ok_or(KernelError::NoFrame)?;
            let r = xen.grants().grant(peer, frame, false)?;
            p.slots()[i] = r;
            p.done = i + 1;
        }
        Ok(p)
    }

    /// The peer's grants `refs` mapped into a fresh window.
    fn map(
        xen: &'x Xen<K>,
        dom: DomId,
        refs: impl ExactSizeIterator<Item = GrantRef>,
    ) -> Result<Self, KernelError> {
        let n = refs.len();
        let (meta, meta_pages) = Self::alloc_meta(xen, n)?;
        let Some(base) = xen.kernel().alloc_window(n) else {
            // SAFETY: just allocated, never shown to anyone.
            unsafe { xen.kernel().free_pages(meta.cast(), meta_pages) };
            return Err(KernelError::NoMemory);
        };
        let mut p = Self {
            xen,
            base,
            n,
            done: 0,
            meta,
            meta_pages,
            mapped: true,
        };
        // SAFETY: `base` is a fresh window of `n` pages, not used by
        // anything; `slots` has room for `n` handles. On failure
        // map_grants unmaps what it mapped, and Drop (with `done` = 0)
        // frees the window and the bookkeeping.
        unsafe { map_grants(xen.kernel(), dom, refs, base, false, p.slots())? };
        p.done = n;
        Ok(p)
    }

    /// Ends the access of every granted page not ended yet; returns how
    /// many the peer still maps. An ended page's slot becomes [`ENDED`], so
    /// a reference freed here (and perhaps handed out again) is never
    /// ended twice.
    fn end_accesses(&mut self) -> usize {
        let mut left = 0;
        for i in 0..self.done {
            let r = self.slot(i);
            if r == ENDED {
                continue;
            }
            match self.xen.grants().end_access(r) {
                Err(KernelError::GrantInUse(_)) => left += 1,
                // Ended, or (never here) not ours: nothing left to end.
                _ => self.slots()[i] = ENDED,
            }
        }
        left
    }
}

impl<K: Kernel> Drop for KernelPages<'_, K> {
    fn drop(&mut self) {
        let k = self.xen.kernel();
        if self.mapped {
            let mut buf = [0u32; 16];
            for start in (0..self.done).step_by(16) {
                let len = (self.done - start).min(16);
                for (i, b) in buf.iter_mut().enumerate().take(len) {
                    *b = self.slot(start + i);
                }
                let va = self.base.as_ptr().wrapping_add(start * XEN_PAGE_SIZE);
                if let Some(va) = NonNull::new(va) {
                    // SAFETY: pages `start..start + len` of the window were
                    // mapped with these handles, and the link that used
                    // them is being dropped.
                    let _ = unsafe { unmap_grants(k, va, &buf[..len]) };
                }
            }
            // SAFETY: the window's grants are unmapped; nothing uses it.
            unsafe { k.free_window(self.base, self.n) };
        } else {
            // The peer may unmap a moment after it told us it left (Linux's
            // unmap-notify clears its live byte just before gntdev unmaps):
            // wait for it, bounded by Xen's clock, retrying the grants
            // still in use.
            let shared = self.xen.shared_info();
            let timeout = nanos(self.xen.release_timeout());
            let deadline = shared.system_time_ns().saturating_add(timeout);
            let mut left = self.end_accesses();
            // A safety net should Xen's clock stand still.
            let mut relaxes = timeout / RELAX_STEP_NS * 4 + 4;
            while left != 0 && relaxes != 0 {
                let now = shared.system_time_ns();
                if now >= deadline {
                    break;
                }
                k.relax(now.saturating_add(RELAX_STEP_NS).min(deadline));
                relaxes -= 1;
                left = self.end_accesses();
            }
            if left != 0 {
                // The peer still maps some of them: freeing would hand the
                // peer memory we reuse. The allocation is never freed.
                self.xen.leak(self.n);
            } else {
                // SAFETY: from `alloc_pages(n)`; no grant of them is left.
                unsafe { k.free_pages(self.base, self.n) };
            }
        }
        // SAFETY: the bookkeeping pages are ours alone and unused from here.
        unsafe { k.free_pages(self.meta.cast(), self.meta_pages) };
    }
}

// SAFETY:
// - `as_ptr()..as_ptr() + len()` is the `n` pages of one `alloc_pages`
//   allocation or one `alloc_window` window (the `Kernel` contract: page
//   aligned, contiguous), every page granted or mapped before the value is
//   handed out (`done == n`), valid for reads and writes until `Drop`;
// - this module makes no Rust reference into them (raw pointers only; the
//   bookkeeping `refs` returns is in separate private pages).
unsafe impl<K: Kernel> GrantedPages for KernelPages<'_, K> {
    fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    fn len(&self) -> usize {
        self.n * XEN_PAGE_SIZE
    }

    fn refs(&self) -> &[GrantRef] {
        if self.mapped {
            // The slots hold map handles, not references.
            return &[];
        }
        // SAFETY: `meta` is private pages (room for `n` u32s, the first
        // `done` written), never seen by a peer; `&self` rules out the
        // `&mut` of `slots` for the borrow's life.
        unsafe { core::slice::from_raw_parts(self.meta.as_ptr(), self.done) }
    }
}

/// A bound (or offered) event-channel port of this kernel: pending bits
/// from shared_info, sleeps through [`Kernel::idle`]. Closed on drop.
///
/// # Examples
///
/// ```
/// use coresident_xen::backend::{EventPort, XenBackend};
/// use coresident_xen::kernel::{Kernel, KernelBackend, KernelError, KernelPort, Xen};
///
/// /// A port for dom0 to bind, signalled once it did.
/// fn port_for_dom0<K: Kernel>(xen: &Xen<K>) -> Result<KernelPort<'_, K>, KernelError> {
///     let port = KernelBackend::new(xen).unbound_port(0)?;
///     // ... publish `port.port()`, wait for dom0 to bind ...
///     port.notify()?;
///     Ok(port) // dropped: EVTCHNOP_close
/// }
/// ```
pub struct KernelPort<'x, K: Kernel> {
    xen: &'x Xen<K>,
    port: EvtchnPort,
    /// Xen has said the port is connected (bound by us, or a status query
    /// saw it so): from then on a wait that finds it unbound ends early
    /// (a destroyed peer's ends are closed without an event). An offered
    /// port is unbound until accepted, so it starts `false` there.
    was_connected: AtomicBool,
}

// SAFETY: the port number is plain data, and the `&Xen<K>` may cross to
// another CPU because `K: Sync` (shared_info and the grant table are
// atomics only).
unsafe impl<K: Kernel + Sync> Send for KernelPort<'_, K> {}

impl<K: Kernel> fmt::Debug for KernelPort<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelPort")
            .field("port", &self.port)
            .field("was_connected", &self.was_connected)
            .finish()
    }
}

impl<K: Kernel> KernelPort<'_, K> {
    /// Xen's `EVTCHNOP_status`: whether the port is interdomain-connected
    /// (`None`: Xen refused the question).
    fn status(&self) -> Option<bool> {
        let connected = event_channel::is_connected(self.xen.kernel(), self.port).ok()?;
        if connected {
            self.was_connected.store(true, Ordering::Relaxed);
        }
        Some(connected)
    }
}

impl<K: Kernel> EventPort for KernelPort<'_, K> {
    type Error = KernelError;

    fn port(&self) -> EvtchnPort {
        self.port
    }

    fn notify(&self) -> Result<(), KernelError> {
        event_channel::send(self.xen.kernel(), self.port)
    }

    /// Polls the pending bit (taking it), then sleeps in [`Kernel::idle`]
    /// until the port may be pending or the deadline (Xen's system time).
    /// Before each sleep of a port once connected, Xen is asked whether it
    /// still is (one hypercall per sleep): if not, the wait ends early,
    /// unfired, and the doorbell concludes from Xen's word.
    fn wait(&self, timeout: Option<Duration>) -> Result<bool, KernelError> {
        let xen = self.xen;
        let shared = xen.shared_info();
        let until = timeout.map(|t| shared.system_time_ns().saturating_add(nanos(t)).max(1));
        loop {
            if shared.test_and_clear_pending(self.port) {
                return Ok(true);
            }
            if until.is_some_and(|u| shared.system_time_ns() >= u) {
                return Ok(false);
            }
            if self.was_connected.load(Ordering::Relaxed) && self.status() == Some(false) {
                return Ok(false);
            }
            xen.kernel().idle(self.port, until.unwrap_or(0));
        }
    }

    /// `EVTCHNOP_status`: interdomain or not (Xen binds a port only to the
    /// domain it was offered to or bound with, so the peer is that one).
    fn connected_to(&self, _peer: DomId) -> Option<bool> {
        self.status()
    }

    fn now_ns(&self) -> u64 {
        self.xen.shared_info().system_time_ns()
    }
}

impl<K: Kernel> Drop for KernelPort<'_, K> {
    fn drop(&mut self) {
        let _ = event_channel::close(self.xen.kernel(), self.port);
    }
}

/// Room for an offer's grant references: [`MAX_PAGES`] of them in private
/// pages of the kernel (16 KiB: too much for a kernel stack), freed on
/// drop. Empty if the kernel had no pages to give (an offer then fails
/// with [`CrxgError::BadPageCount`](crate::protocol::crxg::CrxgError)).
///
/// # Examples
///
/// ```
/// use coresident_xen::kernel::{Kernel, KernelRefs, KernelTransport, Xen};
/// use coresident_xen::MAX_PAGES;
///
/// fn room<K: Kernel>(xen: &Xen<K>) -> bool {
///     let refs: KernelRefs<'_, K> = KernelTransport::new(xen, 0).ref_buf();
///     refs.as_ref().len() == MAX_PAGES // or 0: the kernel had no pages
/// }
/// ```
pub struct KernelRefs<'x, K: Kernel> {
    xen: &'x Xen<K>,
    /// `len` zeroed `GrantRef`s in `pages` pages from `alloc_pages`
    /// (dangling when `pages == 0`).
    base: NonNull<GrantRef>,
    pages: usize,
    len: usize,
}

impl<K: Kernel> fmt::Debug for KernelRefs<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelRefs")
            .field("len", &self.len)
            .finish()
    }
}

impl<'x, K: Kernel> KernelRefs<'x, K> {
    fn new(xen: &'x Xen<K>) -> Self {
        let pages = (MAX_PAGES * size_of::<GrantRef>()).div_ceil(XEN_PAGE_SIZE);
        match xen.kernel().alloc_pages(pages) {
            Some(p) => Self {
                xen,
                base: p.cast(),
                pages,
                len: MAX_PAGES,
            },
            None => Self {
                xen,
                base: NonNull::dangling(),
                pages: 0,
                len: 0,
            },
        }
    }
}

impl<K: Kernel> AsRef<[GrantRef]> for KernelRefs<'_, K> {
    fn as_ref(&self) -> &[GrantRef] {
        // SAFETY: `base` is `len` zeroed, aligned `u32`s in private pages
        // of this value alone (or dangling with `len == 0`).
        unsafe { core::slice::from_raw_parts(self.base.as_ptr(), self.len) }
    }
}

impl<K: Kernel> AsMut<[GrantRef]> for KernelRefs<'_, K> {
    fn as_mut(&mut self) -> &mut [GrantRef] {
        // SAFETY: as in `as_ref`; `&mut self` makes this the only view.
        unsafe { core::slice::from_raw_parts_mut(self.base.as_ptr(), self.len) }
    }
}

impl<K: Kernel> Drop for KernelRefs<'_, K> {
    fn drop(&mut self) {
        if self.pages != 0 {
            // SAFETY: from `alloc_pages(pages)`, private, unused from here.
            unsafe { self.xen.kernel().free_pages(self.base.cast(), self.pages) };
        }
    }
}

/// The kernel's way to reach Xen: [`KernelPages`], [`KernelPort`], over
/// the domain's [`Xen`]. Links borrow the `Xen` it borrows.
///
/// # Examples
///
/// ```
/// use coresident_xen::backend::XenBackend;
/// use coresident_xen::kernel::{Kernel, KernelBackend, Xen};
///
/// fn own_id<K: Kernel>(xen: &Xen<K>) -> u16 {
///     KernelBackend::new(xen).domid()
/// }
/// ```
pub struct KernelBackend<'x, K: Kernel> {
    xen: &'x Xen<K>,
}

impl<K: Kernel> fmt::Debug for KernelBackend<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelBackend")
            .field("domid", &self.xen.kernel().domid())
            .finish()
    }
}

impl<'x, K: Kernel> KernelBackend<'x, K> {
    /// The backend of the domain `xen` is.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::kernel::{Kernel, KernelBackend, KernelTransport, Xen};
    /// use coresident_xen::transport::XenTransport;
    ///
    /// /// What `KernelTransport::new(xen, 0)` is.
    /// fn to_dom0<K: Kernel>(xen: &Xen<K>) -> KernelTransport<'_, K> {
    ///     XenTransport::with_backend(KernelBackend::new(xen), 0)
    /// }
    /// ```
    pub fn new(xen: &'x Xen<K>) -> Self {
        Self { xen }
    }

    fn port(&self, port: EvtchnPort, bound: bool) -> KernelPort<'x, K> {
        KernelPort {
            xen: self.xen,
            port,
            was_connected: AtomicBool::new(bound),
        }
    }
}

impl<'x, K: Kernel> XenBackend for KernelBackend<'x, K> {
    type Error = KernelError;
    type Pages = KernelPages<'x, K>;
    type Port = KernelPort<'x, K>;
    type RefBuf = KernelRefs<'x, K>;

    fn ref_buf(&self) -> KernelRefs<'x, K> {
        KernelRefs::new(self.xen)
    }

    fn domid(&self) -> DomId {
        self.xen.kernel().domid()
    }

    fn now_ns(&self) -> u64 {
        self.xen.shared_info().system_time_ns()
    }

    fn grant(&mut self, peer: DomId, n: usize) -> Result<KernelPages<'x, K>, KernelError> {
        KernelPages::grant(self.xen, peer, n)
    }

    fn map(&mut self, owner: DomId, refs: &[GrantRef]) -> Result<KernelPages<'x, K>, KernelError> {
        KernelPages::map(self.xen, owner, refs.iter().copied())
    }

    fn unbound_port(&mut self, peer: DomId) -> Result<KernelPort<'x, K>, KernelError> {
        let port = event_channel::alloc_unbound(self.xen.kernel(), peer)?;
        Ok(self.port(port, false))
    }

    fn bind_port(
        &mut self,
        peer: DomId,
        remote: EvtchnPort,
    ) -> Result<KernelPort<'x, K>, KernelError> {
        let port = event_channel::bind_interdomain(self.xen.kernel(), peer, remote)?;
        Ok(self.port(port, true))
    }

    /// Nothing to arm: the pages go only through their own drop, after the
    /// doorbell cleared the live byte and signalled.
    fn on_release(
        &mut self,
        _pages: &KernelPages<'x, K>,
        _byte: usize,
        _port: &KernelPort<'x, K>,
    ) -> Result<(), KernelError> {
        Ok(())
    }
}

impl<'x, K: Kernel> XenTransport<KernelBackend<'x, K>> {
    /// A transport between this domain and `peer` (offers go to it; only
    /// offers from it are accepted) over the hypercalls of `xen`. `peer`
    /// may be this domain itself.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::kernel::{Kernel, KernelTransport, Xen};
    ///
    /// fn to_dom0<K: Kernel>(xen: &Xen<K>) -> KernelTransport<'_, K> {
    ///     KernelTransport::new(xen, 0)
    /// }
    /// ```
    pub fn new(xen: &'x Xen<K>, peer: DomId) -> Self {
        Self::with_backend(KernelBackend::new(xen), peer)
    }
}
