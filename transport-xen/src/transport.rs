//! The Xen [`Transport`]: grant pages hold the channel's region, an event
//! channel is the doorbell, and a unmap-notify "live" byte per side tells
//! the survivor that its peer is gone.
//!
//! ```text
//!  pages granted by the offerer (gntalloc), mapped by the acceptor (gntdev)
//!  ┌───────────────────────────────────────┬─────────────────────────────┐
//!  │ region: ring offerer→acceptor,        │ live page: byte 0 offerer,  │
//!  │         ring acceptor→offerer         │ byte 64 acceptor (1 = live) │
//!  └───────────────────────────────────────┴─────────────────────────────┘
//!   0                              region_len rounded up to a page
//! ```
//!
//! Rendezvous bytes (little-endian, [`RendezvousHeader`] then the grant
//! references): the acceptor validates every field before it maps
//! anything, and refuses a rendezvous from another domain than the peer it
//! was opened for. Handshake: the acceptor maps, binds the event channel,
//! sets its live byte and rings; [`PendingOffer::complete`] waits for that
//! byte. Each side arms unmap-notify (clear its live byte, signal the port),
//! so process death or teardown wakes the other side, whose doorbell then
//! reports [`Wake::PeerGone`]. A destroyed domain runs no unmap-notify; the
//! doorbell then learns the death from Xen, which has closed the dead
//! domain's end of the event channel (see [`XenDoorbell`]).
//!
//! Each link has its own `/dev/xen/evtchn` descriptor, so a wait consumes
//! only that link's events.

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use core::time::Duration;
use std::sync::Arc;
use std::time::Instant;

use coresident::ring::AttachError;
use coresident::{
    init_region, ChannelLayout, Doorbell, Link, PendingOffer, Role, SharedRegion, Transport,
    TransportError, Wake,
};
use zerocopy::little_endian::{U16, U32};
use zerocopy::IntoBytes;

use crate::linux::error::{EvtchnError, GrantError};
use crate::linux::evtchn::Evtchn;
use crate::linux::gntalloc::{Gntalloc, SharedPages};
use crate::linux::gntdev::{ForeignPages, Gntdev};
use crate::linux::privcmd::{PortStatus, Privcmd};
use crate::linux::sys::PAGE_SIZE;
use crate::linux::sys::{Linux, Sys};
use crate::types::{DomId, EvtchnPort, GrantRef, UnmapNotify};

// The rendezvous bytes and the live-page layout are core-only (`crxg`), so
// the kernel transport (feature `xen-sys`) speaks the same protocol.
use crate::protocol::crxg::{pages_for, valid_size, ACCEPTOR_LIVE};
pub use crate::protocol::crxg::{
    RendezvousError, RendezvousHeader, RENDEZVOUS_MAGIC, RENDEZVOUS_VERSION,
};
const _: () = assert!(PAGE_SIZE == crate::protocol::crxg::XEN_PAGE_SIZE);

/// A failure of the Xen transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum XenTransportError {
    /// A grant operation failed.
    Grant(GrantError),
    /// An event-channel operation failed.
    Evtchn(EvtchnError),
    /// The rendezvous bytes were refused.
    Rendezvous(RendezvousError),
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

impl fmt::Display for XenTransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Grant(e) => write!(f, "{e}"),
            Self::Evtchn(e) => write!(f, "{e}"),
            Self::Rendezvous(e) => write!(f, "rendezvous refused: {e:?}"),
            Self::BufferTooSmall { needed } => {
                write!(f, "rendezvous buffer too small ({needed} bytes needed)")
            }
            Self::Layout(e) => write!(f, "cannot lay the rings out: {e:?}"),
            Self::Timeout => f.write_str("the peer did not accept in time"),
            Self::PeerGone => f.write_str("the peer is gone"),
        }
    }
}

impl std::error::Error for XenTransportError {}

impl From<GrantError> for XenTransportError {
    fn from(e: GrantError) -> Self {
        Self::Grant(e)
    }
}

impl From<EvtchnError> for XenTransportError {
    fn from(e: EvtchnError) -> Self {
        Self::Evtchn(e)
    }
}

impl From<RendezvousError> for XenTransportError {
    fn from(e: RendezvousError) -> Self {
        Self::Rendezvous(e)
    }
}

/// The granted or mapped pages behind a link.
#[derive(Debug)]
enum Pages<S: Sys> {
    Shared(SharedPages<S>),
    Foreign(ForeignPages<S>),
}

impl<S: Sys> Pages<S> {
    fn as_ptr(&self) -> *mut u8 {
        match self {
            Self::Shared(p) => p.as_ptr(),
            Self::Foreign(p) => p.as_ptr(),
        }
    }
}

/// Pages shared by a region and its doorbell (the doorbell reads the peer's
/// live byte), with the offset of the live page.
#[derive(Debug)]
struct LinkPages<S: Sys> {
    pages: Pages<S>,
    /// Start of the live page: `pages.len() - PAGE_SIZE`.
    live: usize,
}

impl<S: Sys> LinkPages<S> {
    fn live_byte(&self, role: Role) -> *mut u8 {
        let off = match role {
            Role::Offerer => self.live,
            Role::Acceptor => self.live + ACCEPTOR_LIVE,
        };
        // `live + ACCEPTOR_LIVE < pages.len()`: the live page is the last
        // page of the mapping (built so in `offer`/`accept`).
        self.pages.as_ptr().wrapping_add(off)
    }

    fn read_live(&self, role: Role) -> u8 {
        // SAFETY:
        // - The byte lies in the live page, inside the mapping, which lives
        //   as long as `self`.
        // - A volatile read of one byte: the peer may write it concurrently,
        //   which is a race on bytes, never a reference to them.
        unsafe { self.live_byte(role).read_volatile() }
    }

    fn set_live(&self, role: Role) {
        // SAFETY: as in `read_live`, for a volatile write.
        unsafe { self.live_byte(role).write_volatile(1) }
    }
}

/// The channel region: the grant pages before the live page.
#[derive(Debug)]
pub struct XenRegion<S: Sys = Linux> {
    pages: Arc<LinkPages<S>>,
    len: usize,
}

impl<S: Sys> Clone for XenRegion<S> {
    fn clone(&self) -> Self {
        Self {
            pages: Arc::clone(&self.pages),
            len: self.len,
        }
    }
}

// SAFETY:
// - `as_ptr()..as_ptr() + len` lies in one mapping (`len <= live`), valid
//   for reads and writes while the `Arc` keeps the mapping alive; mappings
//   are page-aligned, so 128-aligned.
// - This crate never makes references into the pages: raw pointers only.
unsafe impl<S: Sys> SharedRegion for XenRegion<S> {
    fn as_ptr(&self) -> *mut u8 {
        self.pages.pages.as_ptr()
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// One link's doorbell: an event channel on its own descriptor, the peer's
/// live byte, and Xen's word on whether the channel is still connected.
///
/// Peer death shows in three ways: unmap-notify clears the peer's live byte
/// and rings (the peer's process exited or unmapped); the peer's rings say
/// so (the core's business); or, when the peer's whole domain was
/// destroyed, which runs no unmap-notify and rings nothing, Xen has closed
/// the peer's end and ours reads `EVTCHNSTAT_unbound`. The doorbell asks
/// Xen (`EVTCHNOP_status` through `/dev/xen/privcmd`) when it has heard
/// nothing since it last asked: in [`Doorbell::peer_alive`] and when a
/// [`Doorbell::wait`] times out, so a channel whose peer domain was
/// destroyed reports it within its `recheck` period, with no XenStore
/// watch; a stream of events costs no hypercall. Without privcmd, the
/// doorbell knows only the live byte, as before: when the device cannot be
/// opened, or refuses the hypercall (asked once, when the doorbell is
/// made). Dom0 may ask; a domU's Linux refuses (`EPERM`) unless the
/// `xen-privcmd` module was loaded with `unrestricted=1` (since the 2023
/// fix that restricts privcmd in unprivileged domains to a device model's
/// target, backported to Debian 12's 6.1; ignored under lockdown), so in a
/// domU a destroyed dom0 is learnt from XenStore.
#[derive(Debug)]
pub struct XenDoorbell<S: Sys = Linux> {
    ev: Evtchn<S>,
    port: EvtchnPort,
    pages: Arc<LinkPages<S>>,
    /// The peer's role (whose live byte to read).
    peer: Role,
    /// The peer domain: our port must be connected to it.
    peer_dom: DomId,
    /// How to ask Xen about `port`; `None` when privcmd cannot be opened.
    privcmd: Option<Privcmd<S>>,
    /// An event arrived since Xen was last asked: the peer was alive then.
    heard: AtomicBool,
    /// Xen said `port` is no longer connected to the peer (never cleared).
    severed: AtomicBool,
    /// Where `asked_at` counts from.
    epoch: Instant,
    /// When [`Doorbell::peer_alive`] last asked Xen, in nanoseconds since
    /// `epoch`; `u64::MAX`: never.
    asked_at: AtomicU64,
    /// [`Doorbell::peer_alive`] asks Xen at most once per this many
    /// nanoseconds ([`XenDoorbell::set_recheck`]).
    recheck_ns: AtomicU64,
}

/// How often, by default, [`Doorbell::peer_alive`] may ask Xen about the
/// port ([`XenDoorbell::set_recheck`]). The channel asks `peer_alive`
/// every 1024 sends and on its slow paths; a sender into a destroyed
/// domain learns of it within this period of its next probe.
pub const DEFAULT_XEN_RECHECK: Duration = Duration::from_millis(10);

/// A duration in nanoseconds, saturating.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn os(e: EvtchnError) -> TransportError {
    match e {
        EvtchnError::Ioctl { errno, .. }
        | EvtchnError::Read(errno)
        | EvtchnError::Unmask(errno)
        | EvtchnError::Poll(errno)
        | EvtchnError::Open(errno) => TransportError::Os(errno.raw_os_error()),
        _ => TransportError::Protocol("malformed reply from the evtchn driver"),
    }
}

impl<S: Sys> XenDoorbell<S> {
    fn new(ev: Evtchn<S>, port: EvtchnPort, pages: Arc<LinkPages<S>>, peer: Role) -> Self {
        Self {
            ev,
            port,
            pages,
            peer,
            peer_dom: 0,
            privcmd: None,
            heard: AtomicBool::new(false),
            severed: AtomicBool::new(false),
            epoch: Instant::now(),
            asked_at: AtomicU64::new(u64::MAX),
            recheck_ns: AtomicU64::new(nanos(DEFAULT_XEN_RECHECK)),
        }
    }

    /// Lets [`Doorbell::peer_alive`] ask Xen at most once per `period`
    /// (default [`DEFAULT_XEN_RECHECK`]); in between, and whenever an
    /// event arrived since the last question, the live byte answers.
    /// `Duration::ZERO` asks at every call that heard nothing.
    pub fn set_recheck(&self, period: Duration) {
        self.recheck_ns.store(nanos(period), Ordering::Relaxed);
    }

    /// Whether the recheck period has passed since Xen was last asked
    /// (and, if so, notes that it is asked now).
    fn may_ask(&self) -> bool {
        let now = nanos(self.epoch.elapsed());
        let last = self.asked_at.load(Ordering::Relaxed);
        if last != u64::MAX && now.saturating_sub(last) < self.recheck_ns.load(Ordering::Relaxed) {
            return false;
        }
        self.asked_at.store(now, Ordering::Relaxed);
        true
    }

    /// The local event-channel port.
    pub fn port(&self) -> EvtchnPort {
        self.port
    }

    /// Asks Xen now whether the port is connected to the peer domain:
    /// `Some(true)` if so, `Some(false)` if not (unbound, closed, or bound
    /// to another domain: the peer's end was closed, or its domain
    /// destroyed), `None` if Xen cannot be asked (no `/dev/xen/privcmd`, or
    /// the call failed; nothing is concluded then).
    pub fn port_connected(&self) -> Option<bool> {
        if self.severed.load(Ordering::Relaxed) {
            return Some(false);
        }
        let status = self.privcmd.as_ref()?.evtchn_status(self.port).ok()?;
        self.heard.store(false, Ordering::Relaxed);
        let connected = matches!(
            status,
            PortStatus::Interdomain { remote, .. } if remote == self.peer_dom
        );
        if !connected {
            self.severed.store(true, Ordering::Relaxed);
        }
        Some(connected)
    }

    /// Whether Xen can be asked about the port (privcmd is open).
    pub fn can_ask_xen(&self) -> bool {
        self.privcmd.is_some()
    }

    /// The cheap checks: the peer's live byte, and an earlier answer of Xen.
    fn live(&self) -> bool {
        !self.severed.load(Ordering::Relaxed) && self.pages.read_live(self.peer) != 0
    }
}

impl<S: Sys> Doorbell for XenDoorbell<S> {
    /// Notifies the peer. It does not refuse when the peer's live byte is
    /// clear: a ring is often the last step of a `recv` that has already
    /// consumed a message, and the driver ignores a notify to a closed
    /// channel anyway. [`Doorbell::wait`] reports the death.
    fn ring(&self) -> Result<(), TransportError> {
        self.ev.notify(self.port).map_err(os)
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<Wake, TransportError> {
        // Waiting forever for a destroyed peer would never end: ask first.
        let alive = match timeout {
            None => self.peer_alive(),
            Some(_) => self.live(),
        };
        if !alive {
            return Ok(Wake::PeerGone);
        }
        if !self.ev.wait(timeout).map_err(os)? {
            // Silence: a destroyed peer rings nothing, so ask Xen.
            return Ok(if self.port_connected() == Some(false) {
                Wake::PeerGone
            } else {
                Wake::TimedOut
            });
        }
        // Only this link's port is bound on this descriptor.
        let mut buf = [0u32; 8];
        let n = self.ev.pending(&mut buf).map_err(os)?;
        for &p in buf.get(..n).unwrap_or(&[]) {
            self.ev.unmask(p).map_err(os)?;
        }
        if n > 0 {
            self.heard.store(true, Ordering::Relaxed);
        }
        Ok(if self.live() {
            Wake::Rung
        } else {
            Wake::PeerGone
        })
    }

    /// The live byte; then, unless an event arrived since Xen was last
    /// asked or Xen was asked less than the recheck period ago
    /// ([`XenDoorbell::set_recheck`]), Xen's word on the port (see the
    /// type's docs).
    fn peer_alive(&self) -> bool {
        if !self.live() {
            return false;
        }
        if self.heard.swap(false, Ordering::Relaxed) || !self.may_ask() {
            return true;
        }
        self.port_connected() != Some(false)
    }

    /// The live byte (unmap-notify clears it when the peer's process exits
    /// or unmaps) and an earlier verdict of Xen: a load and a volatile
    /// byte read, no system call.
    #[inline]
    fn peer_gone_hint(&self) -> bool {
        !self.live()
    }
}

/// The Xen transport between this domain and one peer domain.
#[derive(Debug)]
pub struct XenTransport<S: Sys = Linux> {
    sys: S,
    own: DomId,
    peer: DomId,
    gntalloc: Option<Gntalloc<S>>,
    gntdev: Option<Gntdev<S>>,
}

impl XenTransport<Linux> {
    /// A transport between this domain, `own` (written into offers: the
    /// acceptor maps the grants from it), and domain `peer` (offers go to
    /// it; only offers from it are accepted). A domU learns `own` from
    /// XenStore (its relative key `domid`). The grant devices are opened on
    /// first use (an acceptor never needs gntalloc).
    pub fn new(own: DomId, peer: DomId) -> Self {
        Self::with_sys(Linux, own, peer)
    }

    /// Reads and validates rendezvous bytes (pure; no device touched).
    ///
    /// # Errors
    ///
    /// [`RendezvousError`] for anything but a well-formed offer from `peer`.
    pub fn parse_rendezvous(
        peer: DomId,
        bytes: &[u8],
    ) -> Result<(RendezvousHeader, ChannelLayout, Vec<GrantRef>), RendezvousError> {
        let offer = crate::protocol::crxg::parse(peer, bytes)?;
        Ok((offer.header, offer.layout, offer.refs().collect()))
    }
}

impl<S: Sys> XenTransport<S> {
    /// As [`XenTransport::new`], with the system calls of `sys`.
    pub fn with_sys(sys: S, own: DomId, peer: DomId) -> Self {
        Self {
            sys,
            own,
            peer,
            gntalloc: None,
            gntdev: None,
        }
    }

    /// The peer domain.
    pub fn peer(&self) -> DomId {
        self.peer
    }

    fn gntalloc(&mut self) -> Result<Gntalloc<S>, GrantError> {
        if let Some(g) = &self.gntalloc {
            return Ok(g.clone());
        }
        let g = Gntalloc::open_with(self.sys.clone())?;
        self.gntalloc = Some(g.clone());
        Ok(g)
    }

    fn gntdev(&mut self) -> Result<Gntdev<S>, GrantError> {
        if let Some(g) = &self.gntdev {
            return Ok(g.clone());
        }
        let g = Gntdev::open_with(self.sys.clone())?;
        self.gntdev = Some(g.clone());
        Ok(g)
    }

    /// A doorbell on `ev`'s `port`, connected to `peer_dom` in `peer`'s
    /// role; Xen is asked about the port if privcmd opens and answers once
    /// now (a descriptor per doorbell, like the event channel's).
    fn doorbell(
        &self,
        ev: Evtchn<S>,
        port: EvtchnPort,
        pages: Arc<LinkPages<S>>,
        peer: Role,
        peer_dom: DomId,
    ) -> XenDoorbell<S> {
        XenDoorbell {
            peer_dom,
            privcmd: Privcmd::open_with(self.sys.clone())
                .ok()
                .filter(|p| p.evtchn_status(port).is_ok()),
            ..XenDoorbell::new(ev, port, pages, peer)
        }
    }
}

/// An offer waiting for the acceptor's live byte.
#[derive(Debug)]
pub struct XenPending<S: Sys = Linux> {
    region: XenRegion<S>,
    doorbell: XenDoorbell<S>,
    layout: ChannelLayout,
}

impl<S: Sys> XenPending<S> {
    /// Whether the acceptor has set its live byte (it has mapped and bound;
    /// [`PendingOffer::complete`] would return at once).
    pub fn peer_alive(&self) -> bool {
        self.doorbell.live()
    }

    /// The link, without waiting for the acceptor's live byte: for an
    /// offerer that saw the acceptance (`state=accepted`, written after the
    /// acceptor set its byte). If the byte is clear by now, the acceptor
    /// has already left: the channel reports it (its doorbell's hint) and
    /// what the acceptor sent before leaving can still be received.
    pub(crate) fn into_link(self) -> Link<XenRegion<S>, XenDoorbell<S>> {
        Link {
            region: self.region,
            doorbell: self.doorbell,
            role: Role::Offerer,
            layout: self.layout,
        }
    }

    /// The event channel's descriptor, readable when our port fired.
    pub(crate) fn event_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.doorbell.ev.fd()
    }

    /// Takes the pending events (without waiting) and unmasks them;
    /// whether our port was among them. Our port fires only from the
    /// acceptor's side: its ring after it set its live byte, or its
    /// unmap-notify after its live byte was cleared (its process died or
    /// let go), so a firing with the byte clear is an acceptor gone.
    pub(crate) fn take_events(&self) -> Result<bool, XenTransportError> {
        let mut buf = [0u32; 8];
        let n = self.doorbell.ev.pending(&mut buf)?;
        let mut ours = false;
        for &p in buf.get(..n).unwrap_or(&[]) {
            self.doorbell.ev.unmask(p)?;
            ours |= p == self.doorbell.port;
        }
        Ok(ours)
    }
}

impl<S: Sys> Transport for XenTransport<S> {
    type Region = XenRegion<S>;
    type Doorbell = XenDoorbell<S>;
    type Pending = XenPending<S>;
    type Error = XenTransportError;

    fn offer(
        &mut self,
        layout: ChannelLayout,
        rendezvous: &mut [u8],
    ) -> Result<(XenPending<S>, usize), XenTransportError> {
        if !valid_size(layout.to_acceptor) || !valid_size(layout.to_offerer) {
            return Err(XenTransportError::Rendezvous(RendezvousError::BadLayout));
        }
        let n = pages_for(layout);
        let needed = size_of::<RendezvousHeader>() + 4 * n;
        if rendezvous.len() < needed {
            return Err(XenTransportError::BufferTooSmall { needed });
        }
        let share = self.gntalloc()?.share(self.peer, n)?;
        let ev = Evtchn::open_with(self.sys.clone())?;
        let port = ev.bind_unbound(self.peer)?;
        let live = share.len() - PAGE_SIZE;
        share.set_unmap_notify(UnmapNotify {
            clear_byte: Some(live),
            event: Some(port),
        })?;
        let refs = share.refs().to_vec();
        let pages = Arc::new(LinkPages {
            pages: Pages::Shared(share),
            live,
        });
        let region = XenRegion {
            pages: Arc::clone(&pages),
            len: layout.region_len(),
        };
        init_region(&region, layout).map_err(XenTransportError::Layout)?;
        pages.set_live(Role::Offerer);

        let h = RendezvousHeader {
            magic: RENDEZVOUS_MAGIC,
            version: U16::new(RENDEZVOUS_VERSION),
            offerer: U16::new(self.own),
            port: U32::new(port),
            to_acceptor: U32::new(layout.to_acceptor),
            to_offerer: U32::new(layout.to_offerer),
            nrefs: U32::new(u32::try_from(n).map_err(|_| GrantError::InvalidCount(n))?),
            reserved: [0; 8],
        };
        let (head, tail) = rendezvous.split_at_mut(size_of::<RendezvousHeader>());
        head.copy_from_slice(h.as_bytes());
        for (slot, r) in tail.chunks_exact_mut(4).zip(&refs) {
            slot.copy_from_slice(U32::new(*r).as_bytes());
        }
        let doorbell = self.doorbell(ev, port, pages, Role::Acceptor, self.peer);
        Ok((
            XenPending {
                region,
                doorbell,
                layout,
            },
            needed,
        ))
    }

    fn accept(
        &mut self,
        rendezvous: &[u8],
    ) -> Result<Link<XenRegion<S>, XenDoorbell<S>>, XenTransportError> {
        let (h, layout, refs) = XenTransport::parse_rendezvous(self.peer, rendezvous)?;
        let map = self.gntdev()?.map(h.offerer.get(), &refs)?;
        let live = map.len() - PAGE_SIZE;
        let pages = Arc::new(LinkPages {
            pages: Pages::Foreign(map),
            live,
        });
        if pages.read_live(Role::Offerer) == 0 {
            return Err(XenTransportError::PeerGone);
        }
        let ev = Evtchn::open_with(self.sys.clone())?;
        let port = ev.bind_interdomain(h.offerer.get(), h.port.get())?;
        if let Pages::Foreign(map) = &pages.pages {
            let notify = UnmapNotify {
                clear_byte: Some(live + ACCEPTOR_LIVE),
                event: Some(port),
            };
            map.set_unmap_notify(notify)?;
        }
        pages.set_live(Role::Acceptor);
        ev.notify(port)?;
        let region = XenRegion {
            pages: Arc::clone(&pages),
            len: layout.region_len(),
        };
        let doorbell = self.doorbell(ev, port, pages, Role::Offerer, h.offerer.get());
        Ok(Link {
            region,
            doorbell,
            role: Role::Acceptor,
            layout,
        })
    }
}

impl<S: Sys> PendingOffer for XenPending<S> {
    type Region = XenRegion<S>;
    type Doorbell = XenDoorbell<S>;
    type Error = XenTransportError;

    fn complete(
        self,
        timeout: Option<Duration>,
    ) -> Result<Link<XenRegion<S>, XenDoorbell<S>>, XenTransportError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        while !self.doorbell.live() {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Err(XenTransportError::Timeout);
            }
            if self.doorbell.ev.wait(left)? {
                let mut buf = [0u32; 8];
                let n = self.doorbell.ev.pending(&mut buf)?;
                for &p in buf.get(..n).unwrap_or(&[]) {
                    self.doorbell.ev.unmask(p)?;
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use coresident::ring::MAX_DATA_SIZE;

    fn good(layout: ChannelLayout, offerer: DomId) -> Vec<u8> {
        let n = pages_for(layout);
        let h = RendezvousHeader {
            magic: RENDEZVOUS_MAGIC,
            version: U16::new(RENDEZVOUS_VERSION),
            offerer: U16::new(offerer),
            port: U32::new(9),
            to_acceptor: U32::new(layout.to_acceptor),
            to_offerer: U32::new(layout.to_offerer),
            nrefs: U32::new(n as u32),
            reserved: [0; 8],
        };
        let mut v = h.as_bytes().to_vec();
        for r in 0..n as u32 {
            v.extend_from_slice(&(100 + r).to_le_bytes());
        }
        v
    }

    #[test]
    fn rendezvous_round_trip_and_hostile_variants() {
        let layout = ChannelLayout {
            to_acceptor: 4096,
            to_offerer: 1024,
        };
        let v = good(layout, 3);
        let (h, l, refs) = XenTransport::parse_rendezvous(3, &v).unwrap();
        assert_eq!((h.port.get(), l), (9, layout));
        assert_eq!(refs.len(), pages_for(layout));
        assert_eq!(refs[0], 100);

        let parse = |b: &[u8]| XenTransport::parse_rendezvous(3, b).map(|_| ());
        assert_eq!(
            XenTransport::parse_rendezvous(4, &v).map(|_| ()),
            Err(RendezvousError::WrongPeer(3))
        );
        assert_eq!(parse(&v[..v.len() - 1]), Err(RendezvousError::BadLength));
        assert_eq!(
            parse(&[v.as_slice(), &[0; 4]].concat()),
            Err(RendezvousError::BadLength)
        );
        assert_eq!(parse(&v[..31]), Err(RendezvousError::BadLength));
        assert_eq!(parse(&[]), Err(RendezvousError::BadLength));
        let mut b = v.clone();
        b[0] = b'X';
        assert_eq!(parse(&b), Err(RendezvousError::BadMagic));
        let mut b = v.clone();
        b[4] = 2;
        assert_eq!(parse(&b), Err(RendezvousError::BadVersion(2)));
        let mut b = v.clone();
        b[31] = 1;
        assert_eq!(parse(&b), Err(RendezvousError::BadReserved));
        for bad in [0u32, 3, 32, 4097, 1 << 31, u32::MAX] {
            let mut b = v.clone();
            b[12..16].copy_from_slice(&bad.to_le_bytes());
            assert_eq!(parse(&b), Err(RendezvousError::BadLayout), "{bad}");
        }
        for bad in [0u32, 1, pages_for(layout) as u32 + 1, u32::MAX] {
            let mut b = v.clone();
            b[20..24].copy_from_slice(&bad.to_le_bytes());
            assert_eq!(parse(&b), Err(RendezvousError::BadPageCount), "{bad}");
        }
        // The largest legal rings need more pages than MAX_PAGES allows.
        let huge = ChannelLayout::symmetric(MAX_DATA_SIZE);
        assert_eq!(
            XenTransport::parse_rendezvous(3, &good(huge, 3)).map(|_| ()),
            Err(RendezvousError::BadPageCount)
        );
    }

    #[test]
    fn offer_checks_before_touching_devices() {
        let mut t = XenTransport::new(0, 1);
        let mut small = [0u8; 8];
        assert_eq!(
            t.offer(ChannelLayout::symmetric(1024), &mut small)
                .map(|_| ())
                .unwrap_err(),
            XenTransportError::BufferTooSmall {
                needed: 32 + 4 * pages_for(ChannelLayout::symmetric(1024))
            }
        );
        let mut buf = [0u8; 1024];
        assert_eq!(
            t.offer(ChannelLayout::symmetric(1000), &mut buf)
                .map(|_| ())
                .unwrap_err(),
            XenTransportError::Rendezvous(RendezvousError::BadLayout)
        );
        // Garbage never reaches a device (nothing is open on this host).
        assert!(matches!(
            t.accept(&[0xA5; 100]),
            Err(XenTransportError::Rendezvous(_))
        ));
    }
}

/// The doorbell against the fake drivers: what it concludes from Xen's
/// word on the port.
#[cfg(test)]
mod doorbell_tests {
    use super::*;
    use crate::linux::fake::FakeXen;
    use crate::linux::privcmd::IOCTL_PRIVCMD_HYPERCALL;
    use crate::linux::sys::Errno;
    use coresident::{Channel, ChannelConfig, ChannelError, StdClock};

    type FakeLink = Link<XenRegion<FakeXen>, XenDoorbell<FakeXen>>;

    /// An offerer (domain 0) and an acceptor (domain `acceptor`), both
    /// through `xen`.
    fn pair(xen: &FakeXen, acceptor: DomId) -> (FakeLink, FakeLink) {
        let layout = ChannelLayout::symmetric(1024);
        let mut buf = [0u8; 256];
        let (pending, n) = XenTransport::with_sys(xen.clone(), 0, acceptor)
            .offer(layout, &mut buf)
            .unwrap();
        let acc = XenTransport::with_sys(xen.clone(), acceptor, 0)
            .accept(&buf[..n])
            .unwrap();
        let off = pending.complete(Some(Duration::from_secs(1))).unwrap();
        // Consume the handshake's events (the acceptor's ring, and the
        // fresh interdomain port's pending bit; the fake has one queue).
        while off.doorbell.wait(Some(Duration::ZERO)).unwrap() == Wake::Rung {}
        (off, acc)
    }

    fn with_privcmd() -> FakeXen {
        let xen = FakeXen::default();
        xen.state().privcmd = true;
        xen
    }

    fn hypercalls(xen: &FakeXen) -> usize {
        xen.state().hypercalls
    }

    #[test]
    fn connected_port_means_alive_and_events_spare_hypercalls() {
        let xen = with_privcmd();
        let (off, acc) = pair(&xen, 0);
        // Every quiet check asks (no rate limit here).
        off.doorbell.set_recheck(Duration::ZERO);
        assert!(off.doorbell.can_ask_xen());
        assert_eq!(off.doorbell.port_connected(), Some(true));
        assert_eq!(acc.doorbell.port_connected(), Some(true));
        let n = hypercalls(&xen);
        assert!(off.doorbell.peer_alive());
        assert_eq!(hypercalls(&xen), n + 1, "quiet: Xen is asked");
        acc.doorbell.ring().unwrap();
        let t = Some(Duration::from_millis(10));
        assert_eq!(off.doorbell.wait(t).unwrap(), Wake::Rung);
        assert_eq!(hypercalls(&xen), n + 1, "a wake-up asks nothing");
        assert!(off.doorbell.peer_alive());
        assert_eq!(hypercalls(&xen), n + 1, "an event was heard: no need");
        assert!(off.doorbell.peer_alive());
        assert_eq!(hypercalls(&xen), n + 2, "heard nothing since: ask");
        // A quiet wait asks too, and the peer is still there.
        assert_eq!(off.doorbell.wait(t).unwrap(), Wake::TimedOut);
        assert_eq!(hypercalls(&xen), n + 3);
        drop(acc);
    }

    #[test]
    fn destroyed_peer_domain_is_seen_without_unmap_notify() {
        let xen = with_privcmd();
        let (off, acc) = pair(&xen, 0);
        // The acceptor's domain is destroyed: its live byte stays set,
        // nothing rings, Xen leaves our end unbound.
        xen.state().destroy_peer_of(off.doorbell.port());
        assert_eq!(off.doorbell.pages.read_live(Role::Acceptor), 1);
        assert_eq!(off.doorbell.port_connected(), Some(false));
        assert!(!off.doorbell.peer_alive());
        assert_eq!(
            off.doorbell.wait(Some(Duration::from_millis(10))).unwrap(),
            Wake::PeerGone
        );
        // And a blocked channel reports it by itself.
        let xen = with_privcmd();
        let (off, acc2) = pair(&xen, 0);
        let config = ChannelConfig {
            liveness: None,
            spin: 0,
            ..ChannelConfig::default()
        };
        let mut ch = Channel::new(off, config, StdClock::default()).unwrap();
        let mut buf = vec![0u8; ch.max_incoming()];
        assert_eq!(
            ch.recv_blocking(&mut buf, Some(Duration::from_millis(50))),
            Err(ChannelError::TimedOut)
        );
        xen.state().destroy_peer_of(ch.doorbell().port());
        assert_eq!(
            ch.recv_blocking(&mut buf, Some(Duration::from_secs(5))),
            Err(ChannelError::PeerGone)
        );
        drop((acc, acc2));
    }

    /// Issue 17, finding 11: the channel asks `peer_alive` often (every
    /// 1024 sends, and on its slow paths); Xen is asked at most once per
    /// recheck period, and the live byte answers the rest.
    #[test]
    fn peer_alive_asks_xen_at_most_once_per_period() {
        let xen = with_privcmd();
        let (off, acc) = pair(&xen, 0);
        off.doorbell.set_recheck(Duration::from_secs(3600));
        let n = hypercalls(&xen);
        for _ in 0..1000 {
            assert!(off.doorbell.peer_alive());
        }
        let asked = hypercalls(&xen) - n;
        assert!(asked <= 1, "Xen asked {asked} times for 1000 checks");
        // Unmap-notify (the peer's process let go) is seen at once.
        drop(acc);
        assert!(!off.doorbell.peer_alive());
    }

    /// Issue 17, finding 11: the hint the channel takes on every send is
    /// the live byte (and an earlier verdict), at the cost of a load.
    #[test]
    fn the_gone_hint_is_the_live_byte() {
        let xen = with_privcmd();
        let (off, acc) = pair(&xen, 0);
        let n = hypercalls(&xen);
        assert!(!off.doorbell.peer_gone_hint());
        drop(acc);
        assert!(off.doorbell.peer_gone_hint());
        assert_eq!(hypercalls(&xen), n, "the hint asks nobody");
        // A destroyed domain clears no byte: the probe finds it, then the
        // hint remembers.
        let (off, acc) = pair(&xen, 0);
        xen.state().destroy_peer_of(off.doorbell.port());
        assert!(!off.doorbell.peer_gone_hint());
        off.doorbell.set_recheck(Duration::ZERO);
        assert!(!off.doorbell.peer_alive());
        assert!(off.doorbell.peer_gone_hint());
        drop(acc);
    }

    /// Issue 17, finding 11: a sender that never blocks learnt of a dead
    /// peer only when the ring was full (152 messages into a destroyed
    /// domU's ring). A departed process is seen at the next send; a
    /// destroyed domain within the channel's probe period.
    #[test]
    fn a_sender_that_never_blocks_sees_a_dead_peer() {
        let config = ChannelConfig {
            liveness: None,
            ..ChannelConfig::default()
        };
        let layout = ChannelLayout::symmetric(64 * 1024);
        let open = |xen: &FakeXen| {
            let mut buf = [0u8; 256];
            let (pending, n) = XenTransport::with_sys(xen.clone(), 0, 0)
                .offer(layout, &mut buf)
                .unwrap();
            let acc = XenTransport::with_sys(xen.clone(), 0, 0)
                .accept(&buf[..n])
                .unwrap();
            let off = pending.complete(Some(Duration::from_secs(1))).unwrap();
            (Channel::new(off, config, StdClock::default()).unwrap(), acc)
        };
        let sends_until_gone = |ch: &mut Channel<_, _, _>| {
            for sent in 0u32.. {
                match ch.send(&[7u8; 8]) {
                    Ok(()) => {}
                    Err(ChannelError::PeerGone) => return sent,
                    Err(e) => panic!("after {sent} sends into a dead peer: {e:?}"),
                }
            }
            unreachable!()
        };
        let xen = with_privcmd();
        let (mut ch, acc) = open(&xen);
        ch.send(b"before").unwrap();
        drop(acc);
        assert_eq!(sends_until_gone(&mut ch), 0, "unmap-notify: the next send");
        let (mut ch, acc) = open(&xen);
        ch.send(b"before").unwrap();
        ch.doorbell().set_recheck(Duration::ZERO);
        xen.state().destroy_peer_of(ch.doorbell().port());
        let n = sends_until_gone(&mut ch);
        assert!(
            n <= coresident::PEER_PROBE_SENDS,
            "{n} sends into a destroyed peer"
        );
        drop(acc);
    }

    #[test]
    fn quiet_timeout_asks_xen() {
        let xen = with_privcmd();
        let (off, acc) = pair(&xen, 0);
        // Nothing asked since the event of binding: the wait starts on the
        // cheap checks, times out, asks Xen, and reports the death.
        acc.doorbell.ring().unwrap();
        let t = Some(Duration::from_millis(10));
        assert_eq!(off.doorbell.wait(t).unwrap(), Wake::Rung);
        xen.state().destroy_peer_of(off.doorbell.port());
        assert_eq!(off.doorbell.wait(t).unwrap(), Wake::PeerGone);
        drop(acc);
    }

    #[test]
    fn closed_port_or_another_domain_means_gone() {
        let xen = with_privcmd();
        let (off, acc) = pair(&xen, 0);
        // Our own end freed under us: EVTCHNSTAT_closed.
        let port = acc.doorbell.port();
        acc.doorbell.ev.unbind(port).unwrap();
        assert_eq!(acc.doorbell.port_connected(), Some(false));
        assert!(!acc.doorbell.peer_alive());
        drop((off, acc));
        // The offerer offered to domain 5, but its port is connected to a
        // port of domain 0 (all the fake knows): not the peer.
        let xen = with_privcmd();
        let (off, acc) = pair(&xen, 5);
        assert_eq!(off.doorbell.port_connected(), Some(false));
        assert_eq!(acc.doorbell.port_connected(), Some(true));
        drop((off, acc));
    }

    #[test]
    fn hypercall_error_concludes_nothing() {
        let xen = with_privcmd();
        let (off, acc) = pair(&xen, 0);
        xen.state().destroy_peer_of(off.doorbell.port());
        xen.state().fail = Some((IOCTL_PRIVCMD_HYPERCALL, Errno::NOSYS));
        assert_eq!(off.doorbell.port_connected(), None);
        // Today's behaviour: the live byte is set, so alive.
        xen.state().fail = Some((IOCTL_PRIVCMD_HYPERCALL, Errno::FAULT));
        assert!(off.doorbell.peer_alive());
        xen.state().fail = Some((IOCTL_PRIVCMD_HYPERCALL, Errno::NOSYS));
        assert_eq!(
            off.doorbell.wait(Some(Duration::from_millis(10))).unwrap(),
            Wake::TimedOut
        );
        // Once Xen answers, the death shows.
        assert!(!off.doorbell.peer_alive());
        drop(acc);
    }

    #[test]
    fn privcmd_refusing_the_first_call_is_not_asked_again() {
        // A domU's restricted privcmd: open works, hypercalls fail (EPERM).
        let xen = with_privcmd();
        xen.state().fail = Some((IOCTL_PRIVCMD_HYPERCALL, Errno::PERM));
        let (off, acc) = pair(&xen, 0);
        assert!(!off.doorbell.can_ask_xen());
        assert!(acc.doorbell.can_ask_xen());
        let n = hypercalls(&xen);
        assert_eq!(off.doorbell.port_connected(), None);
        assert!(off.doorbell.peer_alive());
        assert_eq!(hypercalls(&xen), n);
        drop(acc);
    }

    #[test]
    fn without_privcmd_the_live_byte_decides() {
        let xen = FakeXen::default();
        let (off, acc) = pair(&xen, 0);
        assert!(!off.doorbell.can_ask_xen());
        assert_eq!(off.doorbell.port_connected(), None);
        xen.state().destroy_peer_of(off.doorbell.port());
        assert!(off.doorbell.peer_alive());
        let t = Some(Duration::from_millis(10));
        assert_eq!(off.doorbell.wait(t).unwrap(), Wake::TimedOut);
        assert_eq!(hypercalls(&xen), 0);
        // Unmap-notify still works: the acceptor's pages go, its byte clears.
        drop(acc);
        assert!(!off.doorbell.peer_alive());
        assert_eq!(off.doorbell.wait(t).unwrap(), Wake::PeerGone);
    }
}
