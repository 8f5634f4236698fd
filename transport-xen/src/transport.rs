//! The Xen [`Transport`], once, over any [`XenBackend`]: grant pages hold
//! the channel's region, an event channel is the doorbell, and a "live"
//! byte per side tells the survivor that its peer is gone.
//!
//! ```text
//!  pages granted by the offerer, mapped by the acceptor
//!  ┌───────────────────────────────────────┬─────────────────────────────┐
//!  │ region: ring offerer→acceptor,        │ live page: byte 0 offerer,  │
//!  │         ring acceptor→offerer         │ byte 64 acceptor (1 = live) │
//!  └───────────────────────────────────────┴─────────────────────────────┘
//!   granted (or mapped) as two runs: the region's pages, then the live page
//! ```
//!
//! Offer ([`XenTransport::offer_pages`]): the region's pages and the live
//! page granted to the peer, an unbound port for it, the rings laid out,
//! our live byte set, the release signal armed; the result is a
//! [`crxg::Offer`] (the XenStore rendezvous publishes its fields, the
//! core's [`Transport::offer`] encodes it once). Accept
//! ([`XenTransport::accept_offer`]): the offer checked field by field
//! before anything is mapped, the grants mapped, the offerer's live byte
//! checked, the port bound, the release signal armed, our live byte set and
//! the port signalled. [`PendingOffer::complete`] waits for the acceptor's
//! live byte.
//!
//! Peer death shows in three ways: the peer's release signal (its process
//! exited or unmapped: its live byte cleared, our port fired), its rings
//! saying so (the core's business), or, when its whole domain was
//! destroyed (no release signal, no event), Xen's word that our port is no
//! longer connected ([`EventPort::connected_to`]), which the doorbell asks
//! when it has heard nothing: after a quiet wait and, at most once per
//! recheck period, in [`Doorbell::peer_alive`].

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use core::time::Duration;

use coresident::ring::AttachError;
use coresident::{
    init_region, ChannelLayout, Doorbell, Link, PendingOffer, Role, SharedRegion, Transport,
    TransportError, Wake,
};

use crate::backend::{EventPort, GrantedPages, XenBackend};
use crate::protocol::crxg::{self, CrxgError, Offer, ACCEPTOR_LIVE, OFFERER_LIVE};
use crate::shared::SharedMem;
use crate::types::{DomId, GrantRef, XEN_PAGE_SIZE};

/// How often, by default, [`Doorbell::peer_alive`] may ask Xen about the
/// port ([`XenDoorbell::set_recheck`]). The channel asks `peer_alive`
/// every 1024 sends and on its slow paths; a sender into a destroyed
/// domain learns of it within this period of its next probe.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use coresident_xen::transport::DEFAULT_XEN_RECHECK;
///
/// assert_eq!(DEFAULT_XEN_RECHECK, Duration::from_millis(10));
/// ```
pub const DEFAULT_XEN_RECHECK: Duration = Duration::from_millis(10);

/// A failure of the Xen transport over a backend whose failure is `E`.
///
/// # Examples
///
/// ```
/// use coresident::ChannelLayout;
/// use coresident_xen::protocol::crxg::CrxgError;
/// use coresident_xen::{XenTransport, XenTransportError};
///
/// // A ring size that is not a power of two is refused before any grant.
/// let err = XenTransport::new(5, 0).offer_pages(ChannelLayout::symmetric(1000)).unwrap_err();
/// assert_eq!(err, XenTransportError::Offer(CrxgError::BadLayout));
/// assert_eq!(XenTransportError::PeerGone.to_string(), "the peer is gone");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum XenTransportError<E> {
    /// The backend failed (grants, event channels).
    Backend(E),
    /// The offer was refused (or the layout cannot be offered).
    Offer(CrxgError),
    /// The rings could not be laid out.
    Layout(AttachError),
    /// The peer did not accept in time.
    Timeout,
    /// The peer's live byte is clear: it is gone (or never was).
    PeerGone,
}

impl<E: fmt::Display> fmt::Display for XenTransportError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Backend(e) => write!(f, "{e}"),
            Self::Offer(e) => write!(f, "rendezvous refused: {e}"),
            Self::Layout(e) => write!(f, "cannot lay the rings out: {e:?}"),
            Self::Timeout => f.write_str("the peer did not accept in time"),
            Self::PeerGone => f.write_str("the peer is gone"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for XenTransportError<E> {}

impl<E> From<CrxgError> for XenTransportError<E> {
    fn from(e: CrxgError) -> Self {
        Self::Offer(e)
    }
}

/// A link of the backend `B`: its region and its doorbell.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use coresident_xen::{Rendezvous, XenStore};
///
/// let mut xs = XenStore::open()?;
/// let link = Rendezvous::new(0, 5, "logs")?.accept(&mut xs, Some(Duration::from_secs(30)))?;
/// // The region (mapped pages, two rings) and the doorbell (event channel).
/// println!("port {} for {} ring bytes", link.doorbell.port(), link.layout.region_len());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub type XenLink<B> = Link<XenRegion<B>, XenDoorbell<B>>;

/// The channel region: the region's pages (granted or mapped).
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use coresident::SharedRegion;
/// use coresident_xen::{Rendezvous, XenStore};
///
/// let mut xs = XenStore::open()?;
/// let link = Rendezvous::new(0, 5, "logs")?.accept(&mut xs, Some(Duration::from_secs(30)))?;
/// // Domain 5's granted pages, mapped here: both rings, never a `&[u8]`.
/// println!("{} bytes mapped", link.region.len());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct XenRegion<B: XenBackend> {
    pages: B::Pages,
    /// `layout.region_len() <= pages.len()`.
    len: usize,
}

// SAFETY:
// - `as_ptr()..as_ptr() + len` lies in `pages` (`len <= pages.len()`, built
//   so in `offer_pages`/`accept_offer`), valid for reads and writes while
//   the region lives, page-aligned so 128-aligned (`GrantedPages`'s
//   contract);
// - this crate never makes references into the pages: raw pointers only.
unsafe impl<B: XenBackend> SharedRegion for XenRegion<B> {
    fn as_ptr(&self) -> *mut u8 {
        self.pages.as_ptr()
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// One link's doorbell: its event-channel port, the live page, and what it
/// has learnt of the peer. See the [module docs](self) for how a dead peer
/// shows; a stream of events costs no question to Xen.
///
/// # Examples
///
/// ```no_run
/// use coresident::Doorbell;
/// use std::time::Duration;
/// use coresident_xen::{Rendezvous, XenStore};
///
/// let mut xs = XenStore::open()?;
/// let link = Rendezvous::new(0, 5, "logs")?.accept(&mut xs, Some(Duration::from_secs(30)))?;
/// link.doorbell.ring()?; // EVTCHNOP_send: the peer's port fires
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct XenDoorbell<B: XenBackend> {
    port: B::Port,
    /// The live page (its bytes through `live_mem`).
    live: B::Pages,
    live_mem: SharedMem,
    /// Our role (whose live byte is ours).
    role: Role,
    /// The peer domain: our port must be connected to it.
    peer_dom: DomId,
    /// An event arrived since Xen was last asked: the peer was alive then.
    heard: AtomicBool,
    /// Xen said the port is no longer connected to the peer (never cleared).
    severed: AtomicBool,
    /// When `peer_alive` last asked Xen (`EventPort::now_ns`); `u64::MAX`:
    /// never.
    asked_at: AtomicU64,
    /// `peer_alive` asks Xen at most once per this many nanoseconds.
    recheck_ns: AtomicU64,
}

/// A duration in nanoseconds, saturating.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn live_offset(role: Role) -> usize {
    match role {
        Role::Offerer => OFFERER_LIVE,
        Role::Acceptor => ACCEPTOR_LIVE,
    }
}

impl<B: XenBackend> XenDoorbell<B> {
    fn new(port: B::Port, live: B::Pages, role: Role, peer_dom: DomId) -> Self {
        // SAFETY: the live page is `live.len()` bytes valid for reads and
        // writes while `live` lives, which the doorbell owns
        // (`GrantedPages`'s contract); no reference into it is made.
        let live_mem = unsafe { SharedMem::new(live.as_ptr(), live.len()) };
        Self {
            port,
            live,
            live_mem,
            role,
            peer_dom,
            heard: AtomicBool::new(false),
            severed: AtomicBool::new(false),
            asked_at: AtomicU64::new(u64::MAX),
            recheck_ns: AtomicU64::new(nanos(DEFAULT_XEN_RECHECK)),
        }
    }

    /// The local event-channel port.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use coresident_xen::{Rendezvous, XenStore};
    ///
    /// let mut xs = XenStore::open()?;
    /// let link = Rendezvous::new(0, 5, "logs")?.accept(&mut xs, Some(Duration::from_secs(30)))?;
    /// println!("bound to local port {}", link.doorbell.port());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn port(&self) -> u32 {
        self.port.port()
    }

    /// The backend's port (to wait on it beside something else).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::backend::EventPort;
    /// use std::time::Duration;
    /// use coresident_xen::{Rendezvous, XenStore};
    ///
    /// let mut xs = XenStore::open()?;
    /// let link = Rendezvous::new(0, 5, "logs")?.accept(&mut xs, Some(Duration::from_secs(30)))?;
    /// // The evtchn descriptor, for an event loop waiting on several channels.
    /// let fd = link.doorbell.event_port().poll_fd();
    /// # drop(fd);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn event_port(&self) -> &B::Port {
        &self.port
    }

    /// Lets [`Doorbell::peer_alive`] ask Xen at most once per `period`
    /// (default [`DEFAULT_XEN_RECHECK`]); in between, and whenever an
    /// event arrived since the last question, the live byte answers.
    /// `Duration::ZERO` asks at every call that heard nothing.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use coresident_xen::{Rendezvous, XenStore};
    ///
    /// let mut xs = XenStore::open()?;
    /// let link = Rendezvous::new(0, 5, "logs")?.accept(&mut xs, Some(Duration::from_secs(30)))?;
    /// // A sender into a destroyed domain learns of it within 1 ms of a probe.
    /// link.doorbell.set_recheck(Duration::from_millis(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_recheck(&self, period: Duration) {
        self.recheck_ns.store(nanos(period), Ordering::Relaxed);
    }

    /// Asks Xen now whether the port is connected to the peer domain:
    /// `Some(true)` if so, `Some(false)` if not (the peer's end was closed,
    /// or its domain destroyed), `None` if Xen cannot be asked.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use coresident_xen::{Rendezvous, XenStore};
    ///
    /// let mut xs = XenStore::open()?;
    /// let link = Rendezvous::new(0, 5, "logs")?.accept(&mut xs, Some(Duration::from_secs(30)))?;
    /// match link.doorbell.port_connected() {
    ///     Some(false) => println!("domain 5 is gone (its end closed, or destroyed)"),
    ///     Some(true) => println!("domain 5's end is bound"),
    ///     None => println!("Xen cannot be asked (no privcmd)"),
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn port_connected(&self) -> Option<bool> {
        if self.severed.load(Ordering::Relaxed) {
            return Some(false);
        }
        let connected = self.port.connected_to(self.peer_dom)?;
        self.heard.store(false, Ordering::Relaxed);
        if !connected {
            self.severed.store(true, Ordering::Relaxed);
        }
        Some(connected)
    }

    fn byte(&self, role: Role) -> u8 {
        // The live page is one page: both offsets are in it.
        self.live_mem.load_u8(live_offset(role)).unwrap_or(0)
    }

    fn peer_role(&self) -> Role {
        match self.role {
            Role::Offerer => Role::Acceptor,
            Role::Acceptor => Role::Offerer,
        }
    }

    /// Whether the peer's live byte is set (and Xen has not said otherwise).
    fn live(&self) -> bool {
        !self.severed.load(Ordering::Relaxed) && self.byte(self.peer_role()) != 0
    }

    fn set_live(&self, v: u8) {
        let _ = self.live_mem.store_u8(live_offset(self.role), v);
    }

    /// Whether the recheck period has passed since Xen was last asked (and
    /// if so, notes that it is asked now).
    fn may_ask(&self) -> bool {
        let now = self.port.now_ns();
        let last = self.asked_at.load(Ordering::Relaxed);
        let period = self.recheck_ns.load(Ordering::Relaxed);
        if last != u64::MAX && now.saturating_sub(last) < period {
            return false;
        }
        self.asked_at.store(now, Ordering::Relaxed);
        true
    }
}

impl<B: XenBackend> Doorbell for XenDoorbell<B>
where
    B::Error: fmt::Display,
{
    /// Notifies the peer. It does not refuse when the peer's live byte is
    /// clear: a ring is often the last step of a `recv` that consumed a
    /// message; [`Doorbell::wait`] reports the death.
    fn ring(&self) -> Result<(), TransportError> {
        self.port
            .notify()
            .map_err(|_| TransportError::Protocol("the event channel refused a notify"))
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
        let fired = self
            .port
            .wait(timeout)
            .map_err(|_| TransportError::Protocol("waiting on the event channel failed"))?;
        if !fired {
            // Silence: a destroyed peer rings nothing, so ask Xen.
            return Ok(if self.port_connected() == Some(false) {
                Wake::PeerGone
            } else {
                Wake::TimedOut
            });
        }
        self.heard.store(true, Ordering::Relaxed);
        Ok(if self.live() {
            Wake::Rung
        } else {
            Wake::PeerGone
        })
    }

    /// The live byte; then, unless an event arrived since Xen was last
    /// asked or Xen was asked less than the recheck period ago, Xen's word
    /// on the port.
    fn peer_alive(&self) -> bool {
        if !self.live() {
            return false;
        }
        if self.heard.swap(false, Ordering::Relaxed) || !self.may_ask() {
            return true;
        }
        self.port_connected() != Some(false)
    }

    /// The live byte (cleared by the peer's release signal) and an earlier
    /// verdict of Xen: a load and a byte read, no system call.
    #[inline]
    fn peer_gone_hint(&self) -> bool {
        !self.live()
    }
}

impl<B: XenBackend> Drop for XenDoorbell<B> {
    /// Clears our live byte and signals: the peer's doorbell reports
    /// [`Wake::PeerGone`] at once (the release signal does the same for a
    /// side that dies without dropping).
    fn drop(&mut self) {
        self.set_live(0);
        let _ = self.port.notify();
    }
}

/// An offer waiting for the acceptor's live byte.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use coresident::{ChannelLayout, PendingOffer};
/// use coresident_xen::XenTransport;
///
/// let mut t = XenTransport::new(5, 0);
/// let pending = t.offer_pages(ChannelLayout::symmetric(4096))?;
/// // Waits for the acceptor's live byte.
/// let link = pending.complete(Some(Duration::from_secs(30)))?;
/// # drop(link);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct XenPending<B: XenBackend> {
    region: XenRegion<B>,
    doorbell: XenDoorbell<B>,
    layout: ChannelLayout,
    offerer: DomId,
}

impl<B: XenBackend> XenPending<B> {
    /// The offer's fields, its references copied into `refs` (room for
    /// [`crxg::pages_for`] the layout).
    ///
    /// # Errors
    ///
    /// [`CrxgError::BadPageCount`] if `refs` is too short.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident::ChannelLayout;
    /// use coresident_xen::protocol::crxg;
    /// use coresident_xen::XenTransport;
    ///
    /// let mut t = XenTransport::new(5, 0);
    /// let pending = t.offer_pages(ChannelLayout::symmetric(4096))?;
    /// let mut refs = t.ref_buf();
    /// let offer = pending.offer(&mut refs)?;
    /// let mut bytes = [0u8; 512];
    /// let n = crxg::encode(&offer, &mut bytes)?; // for a path other than XenStore
    /// # drop(n);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn offer<'r>(&self, refs: &'r mut [GrantRef]) -> Result<Offer<&'r [GrantRef]>, CrxgError> {
        let (region, live) = (self.region.pages.refs(), self.doorbell.live.refs());
        let n = region.len() + live.len();
        let out = refs.get_mut(..n).ok_or(CrxgError::BadPageCount)?;
        for (slot, r) in out.iter_mut().zip(region.iter().chain(live)) {
            *slot = *r;
        }
        Ok(Offer {
            offerer: self.offerer,
            port: self.doorbell.port(),
            layout: self.layout,
            refs: &*out,
        })
    }

    /// Whether the acceptor has set its live byte (it has mapped and bound;
    /// [`PendingOffer::complete`] would return at once).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident::ChannelLayout;
    /// use coresident_xen::XenTransport;
    ///
    /// let mut t = XenTransport::new(5, 0);
    /// let pending = t.offer_pages(ChannelLayout::symmetric(4096))?;
    /// // ... the offer's bytes went to domain 0 by some path ...
    /// if pending.peer_alive() {
    ///     println!("domain 0 has mapped and bound");
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn peer_alive(&self) -> bool {
        self.doorbell.live()
    }

    /// The offer's event port (to wait on it beside XenStore).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident::ChannelLayout;
    /// use coresident_xen::backend::EventPort;
    /// use coresident_xen::XenTransport;
    ///
    /// let mut t = XenTransport::new(5, 0);
    /// let pending = t.offer_pages(ChannelLayout::symmetric(4096))?;
    /// // Poll it beside XenStore's descriptor: the acceptor rings when it binds.
    /// let fd = pending.event_port().poll_fd();
    /// # drop(fd);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn event_port(&self) -> &B::Port {
        &self.doorbell.port
    }

    /// The link, without waiting for the acceptor's live byte: for an
    /// offerer that saw the acceptance (`state=accepted`, written after the
    /// acceptor set its byte). If the byte is clear by now, the acceptor
    /// has already left: the channel says so at once, and what it sent can
    /// still be received.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident::{Channel, ChannelConfig, ChannelLayout, StdClock};
    /// use coresident_xen::XenTransport;
    ///
    /// let mut t = XenTransport::new(5, 0);
    /// let pending = t.offer_pages(ChannelLayout::symmetric(4096))?;
    /// // ... the acceptor's answer said `accepted`: no need to wait for its byte.
    /// let link = pending.into_link();
    /// let ch = Channel::new(link, ChannelConfig::default(), StdClock::default())?;
    /// # drop(ch);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn into_link(self) -> Link<XenRegion<B>, XenDoorbell<B>> {
        Link {
            region: self.region,
            doorbell: self.doorbell,
            role: Role::Offerer,
            layout: self.layout,
        }
    }
}

impl<B: XenBackend> PendingOffer for XenPending<B>
where
    B::Error: fmt::Display,
{
    type Region = XenRegion<B>;
    type Doorbell = XenDoorbell<B>;
    type Error = XenTransportError<B::Error>;

    fn complete(self, timeout: Option<Duration>) -> Result<XenLink<B>, Self::Error> {
        let start = self.doorbell.port.now_ns();
        let limit = timeout.map(nanos);
        while !self.doorbell.live() {
            let spent = self.doorbell.port.now_ns().saturating_sub(start);
            let left = limit.map(|l| Duration::from_nanos(l.saturating_sub(spent)));
            if left.is_some_and(|l| l.is_zero()) {
                return Err(XenTransportError::Timeout);
            }
            self.doorbell
                .port
                .wait(left)
                .map_err(XenTransportError::Backend)?;
        }
        Ok(self.into_link())
    }
}

/// The Xen transport between this domain and one peer domain, over the
/// backend `B`.
///
/// # Examples
///
/// ```no_run
/// use coresident::{Channel, ChannelConfig, ChannelLayout, PendingOffer, StdClock, Transport};
/// use coresident_xen::XenTransport;
///
/// // dom0 offers to itself: the bytes go to the acceptor by any path.
/// let mut t = XenTransport::new(0, 0);
/// let mut bytes = [0u8; 512];
/// let (pending, n) = t.offer(ChannelLayout::symmetric(4096), &mut bytes)?;
/// let acceptor = XenTransport::new(0, 0).accept(&bytes[..n])?;
/// let link = pending.complete(None)?;
/// let mut ch = Channel::new(link, ChannelConfig::default(), StdClock::default())?;
/// ch.send(b"hello")?;
/// # drop(acceptor);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct XenTransport<B: XenBackend> {
    backend: B,
    peer: DomId,
}

impl<B: XenBackend> XenTransport<B> {
    /// A transport to domain `peer` (offers go to it; only offers from it
    /// are accepted) over `backend`.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::linux::LinuxBackend;
    /// use coresident_xen::transport::XenTransport;
    ///
    /// // What `coresident_xen::XenTransport::new(5, 0)` is.
    /// let t = XenTransport::with_backend(LinuxBackend::new(5), 0);
    /// assert_eq!((t.domid(), t.peer()), (5, 0));
    /// ```
    pub fn with_backend(backend: B, peer: DomId) -> Self {
        Self { backend, peer }
    }

    /// The peer domain.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::XenTransport;
    ///
    /// assert_eq!(XenTransport::new(5, 0).peer(), 0);
    /// ```
    pub fn peer(&self) -> DomId {
        self.peer
    }

    /// This domain.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::XenTransport;
    ///
    /// assert_eq!(XenTransport::new(5, 0).domid(), 5);
    /// ```
    pub fn domid(&self) -> DomId {
        self.backend.domid()
    }

    /// Room for the references of the largest offer the backend takes.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::{XenTransport, MAX_PAGES};
    ///
    /// // Room for the largest offer's references.
    /// assert_eq!(XenTransport::new(5, 0).ref_buf().len(), MAX_PAGES);
    /// ```
    pub fn ref_buf(&self) -> B::RefBuf {
        self.backend.ref_buf()
    }

    /// The backend's monotonic clock, in nanoseconds.
    pub(crate) fn now_ns(&self) -> u64 {
        self.backend.now_ns()
    }

    /// Grants the pages of a channel of `layout` to the peer, allocates its
    /// port, lays the rings out and sets our live byte. The offer's fields
    /// are [`XenPending::offer`]'s.
    ///
    /// # Errors
    ///
    /// [`XenTransportError::Offer`] for a layout the ring or
    /// [`crate::types::MAX_PAGES`] refuse; the backend's.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident::ChannelLayout;
    /// use coresident_xen::XenTransport;
    ///
    /// let mut t = XenTransport::new(5, 0);
    /// let pending = t.offer_pages(ChannelLayout::symmetric(64 * 1024))?;
    /// // Publish `pending.offer(..)` to dom0 (the rendezvous writes XenStore keys).
    /// let mut refs = t.ref_buf();
    /// let offer = pending.offer(&mut refs)?;
    /// println!("{} pages granted, port {}", offer.refs.len(), offer.port);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn offer_pages(
        &mut self,
        layout: ChannelLayout,
    ) -> Result<XenPending<B>, XenTransportError<B::Error>> {
        if !crxg::valid_layout(layout) {
            return Err(CrxgError::BadLayout.into());
        }
        let n = crxg::pages_for(layout);
        let be = XenTransportError::Backend;
        let region = self.backend.grant(self.peer, n - 1).map_err(be)?;
        let live = self.backend.grant(self.peer, 1).map_err(be)?;
        let port = self.backend.unbound_port(self.peer).map_err(be)?;
        self.backend
            .on_release(&live, OFFERER_LIVE, &port)
            .map_err(be)?;
        let region = XenRegion {
            pages: region,
            len: layout.region_len(),
        };
        init_region(&region, layout).map_err(XenTransportError::Layout)?;
        let doorbell = XenDoorbell::new(port, live, Role::Offerer, self.peer);
        doorbell.set_live(1);
        Ok(XenPending {
            region,
            doorbell,
            layout,
            offerer: self.backend.domid(),
        })
    }

    /// Checks `offer` (from the peer, every field in range) before anything
    /// is mapped, maps its grants, binds its port and sets our live byte.
    ///
    /// # Errors
    ///
    /// [`XenTransportError::Offer`] ([`CrxgError::WrongPeer`] for an offer
    /// from another domain), [`XenTransportError::PeerGone`] when the
    /// offerer's live byte is clear; the backend's.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident::ChannelLayout;
    /// use coresident_xen::protocol::crxg::{self, CrxgError, Offer};
    /// use coresident_xen::{XenTransport, XenTransportError};
    ///
    /// // Dom0's transport to domain 5 takes offers from domain 5 alone.
    /// let layout = ChannelLayout::symmetric(4096);
    /// let refs: Vec<u32> = (8..8 + crxg::pages_for(layout) as u32).collect();
    /// let from_7 = Offer { offerer: 7, port: 17, layout, refs: &refs[..] };
    /// let err = XenTransport::new(0, 5).accept_offer(&from_7).unwrap_err();
    /// assert_eq!(err, XenTransportError::Offer(CrxgError::WrongPeer(7)));
    /// ```
    pub fn accept_offer(
        &mut self,
        offer: &Offer<&[GrantRef]>,
    ) -> Result<XenLink<B>, XenTransportError<B::Error>> {
        if offer.offerer != self.peer {
            return Err(CrxgError::WrongPeer(offer.offerer).into());
        }
        offer.check()?;
        let refs = offer.refs;
        let (region_refs, live_ref) = refs.split_at(refs.len() - 1);
        let be = XenTransportError::Backend;
        let region = self.backend.map(offer.offerer, region_refs).map_err(be)?;
        let live = self.backend.map(offer.offerer, live_ref).map_err(be)?;
        if live.len() < XEN_PAGE_SIZE || region.len() < offer.layout.region_len() {
            return Err(CrxgError::BadPageCount.into());
        }
        // SAFETY: `live` is one page valid while it lives (the contract of
        // `GrantedPages`); read once, before a port is bound.
        let offerer_live = unsafe { SharedMem::new(live.as_ptr(), live.len()) }
            .load_u8(OFFERER_LIVE)
            .unwrap_or(0);
        if offerer_live == 0 {
            return Err(XenTransportError::PeerGone);
        }
        let port = self
            .backend
            .bind_port(offer.offerer, offer.port)
            .map_err(be)?;
        self.backend
            .on_release(&live, ACCEPTOR_LIVE, &port)
            .map_err(be)?;
        let doorbell = XenDoorbell::new(port, live, Role::Acceptor, offer.offerer);
        doorbell.set_live(1);
        EventPort::notify(&doorbell.port).map_err(be)?;
        Ok(Link {
            region: XenRegion {
                pages: region,
                len: offer.layout.region_len(),
            },
            doorbell,
            role: Role::Acceptor,
            layout: offer.layout,
        })
    }
}

impl<B: XenBackend> Transport for XenTransport<B>
where
    B::Error: fmt::Display,
{
    type Region = XenRegion<B>;
    type Doorbell = XenDoorbell<B>;
    type Pending = XenPending<B>;
    type Error = XenTransportError<B::Error>;

    fn offer(
        &mut self,
        layout: ChannelLayout,
        rendezvous: &mut [u8],
    ) -> Result<(XenPending<B>, usize), Self::Error> {
        // Checked before any grant: nothing to undo.
        let needed = crxg::encoded_len(layout);
        if !crxg::valid_layout(layout) {
            return Err(CrxgError::BadLayout.into());
        }
        if rendezvous.len() < needed {
            return Err(CrxgError::BufferTooSmall(needed).into());
        }
        let pending = self.offer_pages(layout)?;
        let mut refs = self.backend.ref_buf();
        let n = crxg::encode(&pending.offer(refs.as_mut())?, rendezvous)?;
        Ok((pending, n))
    }

    fn accept(&mut self, rendezvous: &[u8]) -> Result<XenLink<B>, Self::Error> {
        let mut refs = self.backend.ref_buf();
        let offer = crxg::parse(self.peer, rendezvous, refs.as_mut())?;
        self.accept_offer(&offer)
    }
}

#[cfg(all(test, feature = "std", target_os = "linux"))]
mod tests;
