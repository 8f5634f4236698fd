//! What the transport needs of a way to reach Xen: grant and map pages,
//! allocate and bind event-channel ports, notify and wait, the release
//! signal, and Xen's word on a port. One trait, [`XenBackend`]; the one
//! [`XenTransport`](crate::transport::XenTransport) is generic over it, as
//! iceoryx2's zero-copy connection is over its storage. Linux userspace
//! implements it through the `/dev/xen` devices
//! (`crate::linux::LinuxBackend`, feature `std`), a PV kernel through
//! hypercalls (`crate::kernel::KernelBackend`, feature `xen-sys`).
//!
//! ```text
//!  XenTransport<B> ── offer, accept, doorbell, region ── the same for every B
//!        │
//!        └── B: XenBackend ─┬─ LinuxBackend:  gntalloc, gntdev, evtchn, privcmd (ioctls)
//!                           └─ KernelBackend: grant table v1, EVTCHNOP_*, SCHEDOP_poll
//! ```

use core::fmt;
use core::time::Duration;

use crate::types::{DomId, EvtchnPort, GrantRef};

/// Pages this domain granted to a peer, or a peer's grants mapped here:
/// contiguous, page-aligned, valid for reads and writes while the value
/// lives; released (access ended, or unmapped) on drop.
///
/// # Safety
///
/// `as_ptr()..as_ptr() + len()` must be one contiguous mapping, aligned to
/// 4096 bytes, valid for reads and writes (by raw pointers, atomics and
/// volatile accesses: the peer writes it at any time) for as long as the
/// value lives, and not aliased by any Rust reference.
///
/// Not `Send` of itself: a kernel's pages are `Send` only when its services
/// may be called from any CPU. Concrete pages say so for themselves.
///
/// # Examples
///
/// ```
/// use coresident_xen::backend::GrantedPages;
/// use coresident_xen::XEN_PAGE_SIZE;
///
/// /// How many pages, and whether they are ours (granted) or a peer's (mapped).
/// fn describe<P: GrantedPages>(p: &P) -> (usize, bool) {
///     (p.len() / XEN_PAGE_SIZE, !p.refs().is_empty())
/// }
/// # let _ = describe::<coresident_xen::linux::LinuxPages>;
/// ```
pub unsafe trait GrantedPages: fmt::Debug {
    /// The first byte.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::backend::{EventPort, GrantedPages, XenBackend};
    /// use coresident_xen::linux::LinuxBackend;
    ///
    /// let mut b = LinuxBackend::new(5);
    /// let pages = b.grant(0, 4)?;
    /// // Never behind a reference: atomics and volatile accesses only.
    /// let live = pages.as_ptr();
    /// # drop(live);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn as_ptr(&self) -> *mut u8;
    /// Bytes: pages × 4096.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::backend::{EventPort, GrantedPages, XenBackend};
    /// use coresident_xen::linux::LinuxBackend;
    ///
    /// let mut b = LinuxBackend::new(5);
    /// let pages = b.grant(0, 4)?;
    /// println!("{} bytes", pages.len()); // 4 pages of 4096 bytes
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn len(&self) -> usize;
    /// Whether there are none (never, for pages a backend made).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::backend::{EventPort, GrantedPages, XenBackend};
    /// use coresident_xen::linux::LinuxBackend;
    ///
    /// let mut b = LinuxBackend::new(5);
    /// let pages = b.grant(0, 4)?;
    /// println!("empty: {}", pages.is_empty()); // never, for granted pages
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The grant references, one per page, in order (empty for pages
    /// mapped from a peer).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::backend::{EventPort, GrantedPages, XenBackend};
    /// use coresident_xen::linux::LinuxBackend;
    ///
    /// let mut b = LinuxBackend::new(5);
    /// let pages = b.grant(0, 4)?;
    /// // One per page, for dom0 to map; mapped pages have none.
    /// println!("{:?}", pages.refs());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn refs(&self) -> &[GrantRef];
}

/// A bound event-channel port of this domain, closed on drop.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use coresident_xen::backend::EventPort;
///
/// /// Rings the peer and waits up to a second for its answer.
/// fn ping<P: EventPort>(port: &P) -> Result<bool, P::Error> {
///     port.notify()?;
///     port.wait(Some(Duration::from_secs(1)))
/// }
/// # let _ = ping::<coresident_xen::linux::LinuxPort>;
/// ```
pub trait EventPort: fmt::Debug {
    /// The backend's failure.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::backend::EventPort;
    /// use coresident_xen::linux::{LinuxError, LinuxPort};
    ///
    /// // The Linux port's failure is the Linux backend's.
    /// fn _same(e: <LinuxPort as EventPort>::Error) -> LinuxError { e }
    /// ```
    type Error;

    /// The local port number.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::backend::{EventPort, GrantedPages, XenBackend};
    /// use coresident_xen::linux::LinuxBackend;
    ///
    /// let mut b = LinuxBackend::new(5);
    /// let port = b.unbound_port(0)?;
    /// println!("local port {}", port.port());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn port(&self) -> EvtchnPort;

    /// Signals the other end.
    ///
    /// # Errors
    ///
    /// The backend's (a port that is not bound).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::backend::{EventPort, GrantedPages, XenBackend};
    /// use coresident_xen::linux::LinuxBackend;
    ///
    /// let mut b = LinuxBackend::new(5);
    /// let port = b.unbound_port(0)?;
    /// port.notify()?; // EVTCHNOP_send
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn notify(&self) -> Result<(), Self::Error>;

    /// Waits until this port fired or `timeout` passed (`None`: forever;
    /// `Some(Duration::ZERO)`: look only); takes the event (the port may
    /// fire again). `true` if it fired. Events are hints: the caller
    /// re-checks what it waits for.
    ///
    /// # Errors
    ///
    /// The backend's.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use coresident_xen::backend::{EventPort, GrantedPages, XenBackend};
    /// use coresident_xen::linux::LinuxBackend;
    ///
    /// let mut b = LinuxBackend::new(5);
    /// let port = b.unbound_port(0)?;
    /// // A hint: re-check what was waited for.
    /// let fired = port.wait(Some(Duration::from_millis(100)))?;
    /// # drop(fired);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn wait(&self, timeout: Option<Duration>) -> Result<bool, Self::Error>;

    /// Xen's word on the port: `Some(true)` if it is still connected to
    /// domain `peer`, `Some(false)` if not (its peer closed it, or the
    /// peer's domain was destroyed: Xen closes a dead domain's ends without
    /// a signal), `None` if Xen cannot be asked (then nothing is
    /// concluded).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::backend::{EventPort, GrantedPages, XenBackend};
    /// use coresident_xen::linux::LinuxBackend;
    ///
    /// let mut b = LinuxBackend::new(5);
    /// let port = b.unbound_port(0)?;
    /// if port.connected_to(0) == Some(false) {
    ///     println!("dom0 closed its end");
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn connected_to(&self, peer: DomId) -> Option<bool>;

    /// A monotonic clock, in nanoseconds (for the doorbell's rate limit).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::backend::{EventPort, GrantedPages, XenBackend};
    /// use coresident_xen::linux::LinuxBackend;
    ///
    /// let mut b = LinuxBackend::new(5);
    /// let port = b.unbound_port(0)?;
    /// let t = port.now_ns();
    /// # drop(t);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn now_ns(&self) -> u64;

    /// The descriptor a `poll(2)` can wait on beside others (readable when
    /// the port may have fired), for backends that have one.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::backend::{EventPort, GrantedPages, XenBackend};
    /// use coresident_xen::linux::LinuxBackend;
    ///
    /// let mut b = LinuxBackend::new(5);
    /// let port = b.unbound_port(0)?;
    /// let fd = port.poll_fd(); // /dev/xen/evtchn's descriptor
    /// # drop(fd);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn poll_fd(&self) -> Option<i32> {
        None
    }
}

/// A way to reach Xen: what one domain can do with grants and event
/// channels. See the [module docs](self).
///
/// # Examples
///
/// Code generic over the backend, as the transport is:
///
/// ```
/// use coresident_xen::backend::{EventPort, GrantedPages, XenBackend};
///
/// /// Grants `n` pages to `peer` and returns their references.
/// fn share<B: XenBackend>(b: &mut B, peer: u16, n: usize) -> Result<Vec<u32>, B::Error> {
///     Ok(b.grant(peer, n)?.refs().to_vec())
/// }
/// # let _ = share::<coresident_xen::linux::LinuxBackend>;
/// ```
pub trait XenBackend: fmt::Debug {
    /// A failure: small, `Copy`, worded.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::backend::XenBackend;
    /// use coresident_xen::linux::{LinuxBackend, LinuxError};
    ///
    /// fn _worded(e: <LinuxBackend as XenBackend>::Error) -> String { e.to_string() }
    /// let _: fn(LinuxError) -> String = _worded;
    /// ```
    type Error: Copy + fmt::Debug + fmt::Display + Send + Sync + 'static;
    /// Pages granted or mapped.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::backend::XenBackend;
    /// use coresident_xen::linux::{LinuxBackend, LinuxPages};
    ///
    /// fn _pages(p: <LinuxBackend as XenBackend>::Pages) -> LinuxPages { p }
    /// ```
    type Pages: GrantedPages;
    /// A bound port.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::backend::XenBackend;
    /// use coresident_xen::linux::{LinuxBackend, LinuxPort};
    ///
    /// fn _port(p: <LinuxBackend as XenBackend>::Port) -> LinuxPort { p }
    /// ```
    type Port: EventPort<Error = Self::Error>;
    /// Room for the grant references of the largest offer this backend
    /// takes ([`XenBackend::ref_buf`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::backend::XenBackend;
    /// use coresident_xen::linux::LinuxBackend;
    /// use coresident_xen::MAX_PAGES;
    ///
    /// // Linux: a `Vec` of MAX_PAGES; a kernel: its own pages (`KernelRefs`).
    /// let buf: Vec<u32> = LinuxBackend::new(5).ref_buf();
    /// assert_eq!(buf.len(), MAX_PAGES);
    /// ```
    type RefBuf: AsRef<[GrantRef]> + AsMut<[GrantRef]>;

    /// A zeroed [`XenBackend::RefBuf`]: its length is the most references
    /// an offer may have here.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::backend::XenBackend;
    /// use coresident_xen::linux::LinuxBackend;
    /// use coresident_xen::MAX_PAGES;
    ///
    /// assert_eq!(LinuxBackend::new(5).ref_buf().len(), MAX_PAGES);
    /// ```
    fn ref_buf(&self) -> Self::RefBuf;

    /// This domain's id (an offer names it: the acceptor maps its grants).
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::backend::XenBackend;
    /// use coresident_xen::linux::LinuxBackend;
    ///
    /// assert_eq!(LinuxBackend::new(5).domid(), 5);
    /// ```
    fn domid(&self) -> DomId;

    /// A monotonic clock, in nanoseconds (the rendezvous's deadlines).
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::backend::XenBackend;
    /// use coresident_xen::linux::LinuxBackend;
    ///
    /// let b = LinuxBackend::new(5);
    /// assert!(b.now_ns() <= b.now_ns());
    /// ```
    fn now_ns(&self) -> u64;

    /// `n` fresh, zeroed pages of this domain, each granted read-write to
    /// `peer`.
    ///
    /// # Errors
    ///
    /// The backend's (no memory, no grant references left).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::backend::{EventPort, GrantedPages, XenBackend};
    /// use coresident_xen::linux::LinuxBackend;
    ///
    /// let mut b = LinuxBackend::new(5);
    /// let pages = b.grant(0, 4)?; // zeroed, read-write for dom0
    /// println!("grant refs {:?}", pages.refs());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn grant(&mut self, peer: DomId, n: usize) -> Result<Self::Pages, Self::Error>;

    /// `owner`'s grants `refs`, mapped contiguously here.
    ///
    /// # Errors
    ///
    /// The backend's (a reference `owner` did not grant us).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::backend::{EventPort, GrantedPages, XenBackend};
    /// use coresident_xen::linux::LinuxBackend;
    ///
    /// let mut b = LinuxBackend::new(5);
    /// // Dom0's grants 8..12, from its offer, mapped contiguously here.
    /// let pages = b.map(0, &[8, 9, 10, 11])?;
    /// println!("{} bytes mapped at {:p}", pages.len(), pages.as_ptr());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn map(&mut self, owner: DomId, refs: &[GrantRef]) -> Result<Self::Pages, Self::Error>;

    /// A port of this domain that `peer` may bind.
    ///
    /// # Errors
    ///
    /// The backend's.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::backend::{EventPort, GrantedPages, XenBackend};
    /// use coresident_xen::linux::LinuxBackend;
    ///
    /// let mut b = LinuxBackend::new(5);
    /// let port = b.unbound_port(0)?; // dom0 binds it with bind_port(5, port)
    /// println!("offer port {}", port.port());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn unbound_port(&mut self, peer: DomId) -> Result<Self::Port, Self::Error>;

    /// A port of this domain bound to `peer`'s port `remote`.
    ///
    /// # Errors
    ///
    /// The backend's (no such port, or not offered to us).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::backend::{EventPort, GrantedPages, XenBackend};
    /// use coresident_xen::linux::LinuxBackend;
    ///
    /// let mut b = LinuxBackend::new(5);
    /// // Dom0's unbound port 17 for us, from its offer.
    /// let port = b.bind_port(0, 17)?;
    /// port.notify()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn bind_port(&mut self, peer: DomId, remote: EvtchnPort) -> Result<Self::Port, Self::Error>;

    /// Arms the release signal: when `pages` go without this side's own
    /// teardown (its process exits, the mapping is released), byte `byte`
    /// of them is cleared and `port` fired, so the peer learns it at once
    /// (gntalloc's and gntdev's unmap-notify). A backend whose pages go
    /// only through its own drop (a kernel) has nothing to arm.
    ///
    /// # Errors
    ///
    /// The backend's.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::backend::{EventPort, GrantedPages, XenBackend};
    /// use coresident_xen::linux::LinuxBackend;
    ///
    /// let mut b = LinuxBackend::new(5);
    /// let pages = b.grant(0, 4)?;
    /// let port = b.unbound_port(0)?;
    /// // If this process dies, byte 0 is cleared and the port fires for dom0.
    /// b.on_release(&pages, 0, &port)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn on_release(
        &mut self,
        pages: &Self::Pages,
        byte: usize,
        port: &Self::Port,
    ) -> Result<(), Self::Error>;
}
