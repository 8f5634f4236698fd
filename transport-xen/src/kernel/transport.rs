//! [`KernelTransport`]: the core's [`Transport`] over grant table v1 and
//! event channels, for a PV guest kernel. It speaks the rendezvous bytes of
//! [`crate::protocol::crxg`], so a kernel can offer to, or accept from, a daemon that
//! uses the userspace [`XenTransport`].
//!
//! Offer: the region's pages and the live page are this kernel's own pages,
//! granted to the peer; an unbound port for the peer; the rings laid out;
//! the offerer's live byte set. Accept: the rendezvous checked field by
//! field, the grants mapped into windows of the kernel, the offerer's live
//! byte checked, the port bound, the acceptor's live byte set and the port
//! signalled. [`PendingOffer::complete`] waits for the acceptor's live byte.
//!
//! Ownership: the region owns its pages and the doorbell owns the live
//! page, each with its own bookkeeping (grant references or map handles in
//! private pages), so either may be dropped first. Dropping the doorbell
//! clears this side's live byte, signals and closes the port: the peer's
//! doorbell then reports [`Wake::PeerGone`].
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

use core::fmt;
use core::ptr::NonNull;
use core::time::Duration;

use coresident::ring::AttachError;
use coresident::{
    init_region, ChannelLayout, Doorbell, Link, PendingOffer, Role, SharedRegion, Transport,
    TransportError, Wake,
};

use super::grant_table::{map_grants, unmap_grants};
use super::{event_channel, Kernel, KernelError, Xen};
use crate::protocol::crxg::{self, CrxgError, Offer, ACCEPTOR_LIVE, OFFERER_LIVE};
use crate::types::{DomId, EvtchnPort, GrantRef, XEN_PAGE_SIZE};

/// A failure of the kernel transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KernelTransportError {
    /// A hypercall or a kernel service failed.
    Kernel(KernelError),
    /// The offer was refused (or the layout cannot be offered).
    Rendezvous(CrxgError),
    /// The buffer for the rendezvous bytes is too small.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
    },
    /// The rings could not be laid out.
    Layout(AttachError),
    /// The peer did not accept in time.
    Timeout,
    /// The peer's live byte is clear: it is gone (or never was).
    PeerGone,
}

impl fmt::Display for KernelTransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kernel(e) => write!(f, "{e}"),
            Self::Rendezvous(e) => write!(f, "rendezvous refused: {e}"),
            Self::BufferTooSmall { needed } => {
                write!(f, "rendezvous buffer too small ({needed} bytes needed)")
            }
            Self::Layout(e) => write!(f, "cannot lay the rings out: {e:?}"),
            Self::Timeout => f.write_str("the peer did not accept in time"),
            Self::PeerGone => f.write_str("the peer is gone"),
        }
    }
}

impl core::error::Error for KernelTransportError {}

impl From<KernelError> for KernelTransportError {
    fn from(e: KernelError) -> Self {
        Self::Kernel(e)
    }
}

impl From<CrxgError> for KernelTransportError {
    fn from(e: CrxgError) -> Self {
        Self::Rendezvous(e)
    }
}

fn transport_error(e: KernelError) -> TransportError {
    match e {
        KernelError::Hypercall { rc, .. } => {
            TransportError::Os(i32::try_from(rc.unsigned_abs()).unwrap_or(i32::MAX))
        }
        _ => TransportError::Protocol("event channel refused"),
    }
}

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

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Pages a link owns: this kernel's pages granted to the peer, or a window
/// where the peer's grants are mapped; per page a grant reference or a map
/// handle, kept in private pages. Released on drop.
struct Pages<'x, K: Kernel> {
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
unsafe impl<K: Kernel + Sync> Send for Pages<'_, K> {}

impl<K: Kernel> fmt::Debug for Pages<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pages")
            .field("base", &self.base)
            .field("n", &self.n)
            .field("done", &self.done)
            .field("mapped", &self.mapped)
            .finish()
    }
}

impl<'x, K: Kernel> Pages<'x, K> {
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

    fn refs(&self) -> impl ExactSizeIterator<Item = GrantRef> + Clone + '_ {
        (0..self.done).map(|i| self.slot(i))
    }

    fn byte(&self, off: usize) -> *mut u8 {
        debug_assert!(off < self.done * XEN_PAGE_SIZE);
        self.base.as_ptr().wrapping_add(off)
    }
}

impl<K: Kernel> Drop for Pages<'_, K> {
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
            let timeout = duration_ns(self.xen.release_timeout());
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

/// The channel region: the granted (offerer) or mapped (acceptor) pages
/// before the live page.
#[derive(Debug)]
pub struct KernelRegion<'x, K: Kernel> {
    pages: Pages<'x, K>,
    len: usize,
}

// SAFETY:
// - `as_ptr()..as_ptr() + len` lies in the `pages.n` pages of one contiguous
//   allocation or window (`len <= n * 4096`, checked where built), valid for
//   reads and writes while the region lives (released in `Drop` only);
//   page-aligned, so 128-aligned.
// - This module makes no references into those pages: raw pointers only.
unsafe impl<K: Kernel> SharedRegion for KernelRegion<'_, K> {
    fn as_ptr(&self) -> *mut u8 {
        self.pages.base.as_ptr()
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// One link's doorbell: an event-channel port, the live page, this side's
/// role.
#[derive(Debug)]
pub struct KernelDoorbell<'x, K: Kernel> {
    live: Pages<'x, K>,
    port: EvtchnPort,
    role: Role,
    /// Xen found our port no longer connected: the peer domain is gone
    /// (destroyed domains clear no live byte).
    disconnected: core::cell::Cell<bool>,
}

impl<K: Kernel> KernelDoorbell<'_, K> {
    /// The local event-channel port.
    pub fn port(&self) -> EvtchnPort {
        self.port
    }

    fn live_byte(&self, role: Role) -> *mut u8 {
        self.live.byte(match role {
            Role::Offerer => OFFERER_LIVE,
            Role::Acceptor => ACCEPTOR_LIVE,
        })
    }

    fn read_live(&self, role: Role) -> u8 {
        // SAFETY: the byte lies in the live page (one page, offsets 0 and
        // 64), mapped while `self` lives; a volatile read, since the peer
        // writes it at any time.
        unsafe { self.live_byte(role).read_volatile() }
    }

    fn write_live(&self, v: u8) {
        // SAFETY: as in `read_live`, a volatile write of our own byte.
        unsafe { self.live_byte(self.role).write_volatile(v) }
    }

    fn peer_role(&self) -> Role {
        match self.role {
            Role::Offerer => Role::Acceptor,
            Role::Acceptor => Role::Offerer,
        }
    }

    fn until(&self, timeout: Option<Duration>) -> Option<u64> {
        let now = self.live.xen.shared_info().system_time_ns();
        timeout.map(|t| {
            now.saturating_add(u64::try_from(t.as_nanos()).unwrap_or(u64::MAX))
                .max(1)
        })
    }

    /// Waits until `done()` or the port is pending (consumed), or `until`.
    /// With `connected`, a port Xen no longer reports connected also ends
    /// the wait (checked before each idle: one hypercall per sleep).
    fn wait_until(
        &self,
        until: Option<u64>,
        connected: bool,
        done: impl Fn(&Self) -> bool,
    ) -> bool {
        let xen = self.live.xen;
        loop {
            if done(self) {
                return true;
            }
            if xen.shared_info().test_and_clear_pending(self.port) {
                return true;
            }
            if let Some(u) = until {
                if xen.shared_info().system_time_ns() >= u {
                    return false;
                }
            }
            if connected && !event_channel::is_connected(xen.kernel(), self.port).unwrap_or(false) {
                self.disconnected.set(true);
                return true;
            }
            xen.kernel().idle(self.port, until.unwrap_or(0));
        }
    }
}

impl<K: Kernel> Doorbell for KernelDoorbell<'_, K> {
    fn ring(&self) -> Result<(), TransportError> {
        event_channel::send(self.live.xen.kernel(), self.port).map_err(transport_error)
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<Wake, TransportError> {
        let until = self.until(timeout);
        if !self.wait_until(until, true, |d| !d.peer_alive()) {
            return Ok(Wake::TimedOut);
        }
        Ok(if self.peer_alive() {
            Wake::Rung
        } else {
            Wake::PeerGone
        })
    }

    /// The peer's live byte is set, and Xen has not been seen to report our
    /// port disconnected (checked when a wait would sleep).
    fn peer_alive(&self) -> bool {
        !self.disconnected.get() && self.read_live(self.peer_role()) != 0
    }

    /// The same check: a flag and the live byte, no hypercall.
    #[inline]
    fn peer_gone_hint(&self) -> bool {
        !self.peer_alive()
    }
}

impl<K: Kernel> Drop for KernelDoorbell<'_, K> {
    fn drop(&mut self) {
        self.write_live(0);
        let k = self.live.xen.kernel();
        let _ = event_channel::send(k, self.port);
        let _ = event_channel::close(k, self.port);
    }
}

/// The kernel transport between this domain and one peer domain.
#[derive(Debug)]
pub struct KernelTransport<'x, K: Kernel> {
    xen: &'x Xen<K>,
    peer: DomId,
}

impl<'x, K: Kernel> KernelTransport<'x, K> {
    /// A transport between this domain and `peer` (offers go to it; only
    /// offers from it are accepted). `peer` may be this domain itself.
    pub fn new(xen: &'x Xen<K>, peer: DomId) -> Self {
        Self { xen, peer }
    }

    /// The peer domain.
    pub fn peer(&self) -> DomId {
        self.peer
    }
}

/// An offer waiting for the acceptor's live byte.
#[derive(Debug)]
pub struct KernelPending<'x, K: Kernel> {
    region: KernelRegion<'x, K>,
    doorbell: KernelDoorbell<'x, K>,
    layout: ChannelLayout,
}

impl<'x, K: Kernel> KernelPending<'x, K> {
    /// The offer's fields, its references copied into `refs` (room for
    /// [`crxg::pages_for`] the layout).
    ///
    /// # Errors
    ///
    /// [`CrxgError::BadPageCount`] if `refs` is too short.
    pub fn offer<'r>(
        &self,
        own: DomId,
        refs: &'r mut [GrantRef],
    ) -> Result<Offer<&'r [GrantRef]>, CrxgError> {
        let all = self.region.pages.refs().chain(self.doorbell.live.refs());
        let n = self.region.pages.refs().len() + self.doorbell.live.refs().len();
        let out = refs.get_mut(..n).ok_or(CrxgError::BadPageCount)?;
        for (slot, r) in out.iter_mut().zip(all) {
            *slot = r;
        }
        Ok(Offer {
            offerer: own,
            port: self.doorbell.port,
            layout: self.layout,
            refs: &*out,
        })
    }
}

impl<'x, K: Kernel> KernelTransport<'x, K> {
    /// Grants the pages of a channel of `layout` to the peer, allocates its
    /// port, lays the rings out and sets our live byte; the offer's fields
    /// are [`KernelPending::offer`]'s.
    ///
    /// # Errors
    ///
    /// [`KernelTransportError::Rendezvous`] for a layout the ring or
    /// [`crate::types::MAX_PAGES`] refuse; the kernel's.
    pub fn offer_pages(
        &mut self,
        layout: ChannelLayout,
    ) -> Result<KernelPending<'x, K>, KernelTransportError> {
        if !crxg::valid_layout(layout) {
            return Err(CrxgError::BadLayout.into());
        }
        let n = crxg::pages_for(layout);
        let region = Pages::grant(self.xen, self.peer, n - 1)?;
        let live = Pages::grant(self.xen, self.peer, 1)?;
        let port = event_channel::alloc_unbound(self.xen.kernel(), self.peer)?;
        let region = KernelRegion {
            pages: region,
            len: layout.region_len(),
        };
        let doorbell = KernelDoorbell {
            live,
            port,
            role: Role::Offerer,
            disconnected: core::cell::Cell::new(false),
        };
        init_region(&region, layout).map_err(KernelTransportError::Layout)?;
        doorbell.write_live(1);
        Ok(KernelPending {
            region,
            doorbell,
            layout,
        })
    }

    /// Checks `offer` (from the peer, every field in range) before anything
    /// is mapped, maps its grants, binds its port and sets our live byte.
    ///
    /// # Errors
    ///
    /// [`KernelTransportError::Rendezvous`] ([`CrxgError::WrongPeer`] for
    /// an offer from another domain), [`KernelTransportError::PeerGone`]
    /// when the offerer's live byte is clear; the kernel's.
    pub fn accept_offer(
        &mut self,
        offer: &Offer<&[GrantRef]>,
    ) -> Result<Link<KernelRegion<'x, K>, KernelDoorbell<'x, K>>, KernelTransportError> {
        offer.check()?;
        let refs = offer.refs.iter().copied();
        self.accept_checked(offer.as_parts(), refs)
    }

    /// [`KernelTransport::accept_offer`] of an offer already checked
    /// ([`Offer::check`]), its references one by one.
    fn accept_checked(
        &mut self,
        offer: Offer<()>,
        refs: impl ExactSizeIterator<Item = GrantRef> + Clone,
    ) -> Result<Link<KernelRegion<'x, K>, KernelDoorbell<'x, K>>, KernelTransportError> {
        if offer.offerer != self.peer {
            return Err(CrxgError::WrongPeer(offer.offerer).into());
        }
        let dom = offer.offerer;
        // Checked: at least the live page's reference.
        let n = refs.len();
        let region = Pages::map(self.xen, dom, refs.clone().take(n - 1))?;
        let live = Pages::map(self.xen, dom, refs.skip(n - 1))?;
        let region = KernelRegion {
            pages: region,
            len: offer.layout.region_len(),
        };
        // Checked before binding: a doorbell exists only with a bound port.
        // SAFETY: byte 0 of the mapped live page; volatile, the peer's.
        if unsafe { live.byte(OFFERER_LIVE).read_volatile() } == 0 {
            return Err(KernelTransportError::PeerGone);
        }
        let port = event_channel::bind_interdomain(self.xen.kernel(), dom, offer.port)?;
        let doorbell = KernelDoorbell {
            live,
            port,
            role: Role::Acceptor,
            disconnected: core::cell::Cell::new(false),
        };
        doorbell.write_live(1);
        event_channel::send(self.xen.kernel(), port)?;
        Ok(Link {
            region,
            doorbell,
            role: Role::Acceptor,
            layout: offer.layout,
        })
    }
}

impl<'x, K: Kernel> Transport for KernelTransport<'x, K> {
    type Region = KernelRegion<'x, K>;
    type Doorbell = KernelDoorbell<'x, K>;
    type Pending = KernelPending<'x, K>;
    type Error = KernelTransportError;

    fn offer(
        &mut self,
        layout: ChannelLayout,
        rendezvous: &mut [u8],
    ) -> Result<(KernelPending<'x, K>, usize), KernelTransportError> {
        // Checked before any grant: nothing to undo.
        if !crxg::valid_layout(layout) {
            return Err(CrxgError::BadLayout.into());
        }
        let needed = crxg::encoded_len(layout);
        if rendezvous.len() < needed {
            return Err(KernelTransportError::BufferTooSmall { needed });
        }
        let pending = self.offer_pages(layout)?;
        // The references go from the pages into the bytes, no copy between.
        let (region, live) = (pending.region.pages.refs(), pending.doorbell.live.refs());
        let fields = Offer {
            offerer: self.xen.kernel().domid(),
            port: pending.doorbell.port,
            layout,
            refs: (),
        };
        let nrefs = region.len() + live.len();
        let len = crxg::encode_parts(fields, nrefs, region.chain(live), rendezvous)?;
        Ok((pending, len))
    }

    fn accept(
        &mut self,
        rendezvous: &[u8],
    ) -> Result<Link<KernelRegion<'x, K>, KernelDoorbell<'x, K>>, KernelTransportError> {
        // Every field checked, the references left in the bytes.
        let offer = crxg::parse_borrowed(self.peer, rendezvous)?;
        self.accept_checked(offer.as_parts(), offer.refs.iter())
    }
}

impl<'x, K: Kernel> PendingOffer for KernelPending<'x, K> {
    type Region = KernelRegion<'x, K>;
    type Doorbell = KernelDoorbell<'x, K>;
    type Error = KernelTransportError;

    fn complete(
        self,
        timeout: Option<Duration>,
    ) -> Result<Link<KernelRegion<'x, K>, KernelDoorbell<'x, K>>, KernelTransportError> {
        let until = self.doorbell.until(timeout);
        loop {
            if self.doorbell.peer_alive() {
                break;
            }
            // Not `connected`: the offer's port is unbound until accepted.
            if !self
                .doorbell
                .wait_until(until, false, KernelDoorbell::peer_alive)
            {
                return Err(KernelTransportError::Timeout);
            }
        }
        Ok(Link {
            region: self.region,
            doorbell: self.doorbell,
            role: Role::Offerer,
            layout: self.layout,
        })
    }
}
