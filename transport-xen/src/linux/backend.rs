//! [`LinuxBackend`]: the [`XenBackend`] of Linux userspace, through
//! `/dev/xen/gntalloc` (our pages granted), `/dev/xen/gntdev` (a peer's
//! grants mapped), `/dev/xen/evtchn` (one descriptor per port, so a wait
//! sees only its own port's events) and `/dev/xen/privcmd` (Xen's word on a
//! port, `EVTCHNOP_status`, when Linux lets this domain ask).
//!
//! The release signal is gntalloc's and gntdev's unmap-notify: when the
//! process exits or unmaps, the driver clears our live byte and fires our
//! port, so the peer learns at once. privcmd is used only if it answers a
//! first `EVTCHNOP_status`: a domU's Linux opens it but refuses hypercalls
//! (`EPERM`) unless `xen-privcmd` was loaded with `unrestricted=1` (since
//! the 2023 fix that restricts privcmd in unprivileged domains, backported
//! to Debian 12's 6.1; ignored under lockdown); without it the doorbell
//! knows only the live byte, and a destroyed dom0 is learnt from XenStore.
//!
//! # Examples
//!
//! ```
//! use coresident_xen::backend::XenBackend;
//! use coresident_xen::linux::LinuxBackend;
//! use coresident_xen::MAX_PAGES;
//!
//! // Domain 5's backend: no device is opened until pages or a port are asked for.
//! let b = LinuxBackend::new(5);
//! assert_eq!(b.domid(), 5);
//! assert_eq!(b.ref_buf().len(), MAX_PAGES);
//! ```

use core::fmt;
use core::time::Duration;
use std::os::fd::AsRawFd;
use std::time::Instant;

use super::error::{EvtchnError, GrantError};
use super::evtchn::Evtchn;
use super::gntalloc::{Gntalloc, SharedPages};
use super::gntdev::{ForeignPages, Gntdev};
use super::privcmd::{PortStatus, Privcmd};
use super::sys::{Linux, Sys};
use crate::backend::{EventPort, GrantedPages, XenBackend};
use crate::types::{DomId, EvtchnPort, GrantRef, UnmapNotify, MAX_PAGES};

/// A failure of the Linux backend.
///
/// # Examples
///
/// ```
/// use coresident_xen::linux::LinuxError;
/// use coresident_xen::GrantError;
///
/// let e = LinuxError::from(GrantError::InvalidCount(0));
/// assert_eq!(e, LinuxError::Grant(GrantError::InvalidCount(0)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinuxError {
    /// gntalloc or gntdev failed.
    Grant(GrantError),
    /// The event-channel device failed.
    Evtchn(EvtchnError),
}

impl fmt::Display for LinuxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Grant(e) => write!(f, "{e}"),
            Self::Evtchn(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for LinuxError {}

impl From<GrantError> for LinuxError {
    fn from(e: GrantError) -> Self {
        Self::Grant(e)
    }
}

impl From<EvtchnError> for LinuxError {
    fn from(e: EvtchnError) -> Self {
        Self::Evtchn(e)
    }
}

/// Our pages granted through gntalloc, or a peer's mapped through gntdev.
///
/// # Examples
///
/// ```no_run
/// use coresident_xen::backend::{GrantedPages, XenBackend};
/// use coresident_xen::linux::{LinuxBackend, LinuxPages};
///
/// let pages: LinuxPages = LinuxBackend::new(5).grant(0, 2)?; // gntalloc's
/// println!("{} bytes, refs {:?}", pages.len(), pages.refs());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub enum LinuxPages<S: Sys = Linux> {
    /// Ours, granted.
    Shared(SharedPages<S>),
    /// The peer's, mapped.
    Foreign(ForeignPages<S>),
}

// SAFETY:
// - both are one `mmap` of the device, page-aligned, valid for reads and
//   writes until dropped (`Mapping`'s contract);
// - this crate never makes references into them.
unsafe impl<S: Sys> GrantedPages for LinuxPages<S> {
    fn as_ptr(&self) -> *mut u8 {
        match self {
            Self::Shared(p) => p.as_ptr(),
            Self::Foreign(p) => p.as_ptr(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Shared(p) => p.len(),
            Self::Foreign(p) => p.len(),
        }
    }

    fn refs(&self) -> &[GrantRef] {
        match self {
            Self::Shared(p) => p.refs(),
            Self::Foreign(_) => &[],
        }
    }
}

/// A port bound on a `/dev/xen/evtchn` descriptor of its own, with
/// privcmd to ask Xen about it (when Linux lets us).
///
/// # Examples
///
/// ```no_run
/// use coresident_xen::backend::{EventPort, XenBackend};
/// use coresident_xen::linux::LinuxBackend;
///
/// let port = LinuxBackend::new(5).unbound_port(0)?;
/// port.notify()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct LinuxPort<S: Sys = Linux> {
    ev: Evtchn<S>,
    port: EvtchnPort,
    /// How to ask Xen about `port`; `None` when privcmd cannot be opened
    /// or refused a first question.
    privcmd: Option<Privcmd<S>>,
    epoch: Instant,
}

impl<S: Sys> LinuxPort<S> {
    fn new(sys: &S, ev: Evtchn<S>, port: EvtchnPort) -> Self {
        let privcmd = Privcmd::open_with(sys.clone())
            .ok()
            .filter(|p| p.evtchn_status(port).is_ok());
        Self {
            ev,
            port,
            privcmd,
            epoch: Instant::now(),
        }
    }

    /// Whether Xen can be asked about the port (privcmd is open and
    /// answered).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::backend::XenBackend;
    /// use coresident_xen::linux::LinuxBackend;
    ///
    /// let port = LinuxBackend::new(5).unbound_port(0)?;
    /// println!("Xen can be asked about port: {}", port.can_ask_xen()); // privcmd open
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn can_ask_xen(&self) -> bool {
        self.privcmd.is_some()
    }

    /// The event-channel device of this port.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::backend::XenBackend;
    /// use coresident_xen::linux::LinuxBackend;
    ///
    /// let port = LinuxBackend::new(5).unbound_port(0)?;
    /// // The evtchn device the port is bound on: wait on it for any port.
    /// port.evtchn().wait(Some(std::time::Duration::from_millis(10)))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn evtchn(&self) -> &Evtchn<S> {
        &self.ev
    }
}

impl<S: Sys> EventPort for LinuxPort<S> {
    type Error = LinuxError;

    fn port(&self) -> EvtchnPort {
        self.port
    }

    fn notify(&self) -> Result<(), LinuxError> {
        Ok(self.ev.notify(self.port)?)
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<bool, LinuxError> {
        if !self.ev.wait(timeout)? {
            return Ok(false);
        }
        let mut buf = [0u32; 8];
        let n = self.ev.pending(&mut buf)?;
        let mut ours = false;
        for &p in buf.get(..n).unwrap_or(&[]) {
            self.ev.unmask(p)?;
            ours |= p == self.port;
        }
        Ok(ours)
    }

    fn connected_to(&self, peer: DomId) -> Option<bool> {
        let status = self.privcmd.as_ref()?.evtchn_status(self.port).ok()?;
        Some(matches!(
            status,
            PortStatus::Interdomain { remote, .. } if remote == peer
        ))
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn poll_fd(&self) -> Option<i32> {
        Some(self.ev.fd().as_raw_fd())
    }
}

/// The Linux userspace backend: `own` is this domain's id (a domU learns
/// it from XenStore, its relative key `domid`). The grant devices are
/// opened on first use (an acceptor never needs gntalloc).
///
/// # Examples
///
/// ```
/// use coresident_xen::linux::LinuxBackend;
/// use coresident_xen::transport::XenTransport;
///
/// // dom0's transport to domain 5 (no device is opened before use).
/// let t = XenTransport::with_backend(LinuxBackend::new(0), 5);
/// assert_eq!(t.peer(), 5);
/// ```
#[derive(Debug, Clone)]
pub struct LinuxBackend<S: Sys = Linux> {
    sys: S,
    own: DomId,
    epoch: Instant,
    gntalloc: Option<Gntalloc<S>>,
    gntdev: Option<Gntdev<S>>,
}

impl LinuxBackend<Linux> {
    /// The backend of this domain, `own`, through the real devices.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::backend::XenBackend;
    /// use coresident_xen::linux::LinuxBackend;
    ///
    /// // Domain 5's backend: no device is opened before the first grant or map.
    /// let b = LinuxBackend::new(5);
    /// assert_eq!(b.domid(), 5);
    /// ```
    pub fn new(own: DomId) -> Self {
        Self::with_sys(Linux, own)
    }
}

impl<S: Sys> LinuxBackend<S> {
    /// As [`LinuxBackend::new`], with the system calls of `sys` (a fake
    /// driver in tests).
    pub(crate) fn with_sys(sys: S, own: DomId) -> Self {
        Self {
            sys,
            own,
            epoch: Instant::now(),
            gntalloc: None,
            gntdev: None,
        }
    }

    fn gntalloc(&mut self) -> Result<&Gntalloc<S>, GrantError> {
        if self.gntalloc.is_none() {
            self.gntalloc = Some(Gntalloc::open_with(self.sys.clone())?);
        }
        self.gntalloc.as_ref().ok_or(GrantError::InvalidCount(0))
    }

    fn gntdev(&mut self) -> Result<&Gntdev<S>, GrantError> {
        if self.gntdev.is_none() {
            self.gntdev = Some(Gntdev::open_with(self.sys.clone())?);
        }
        self.gntdev.as_ref().ok_or(GrantError::InvalidCount(0))
    }
}

impl<S: Sys> XenBackend for LinuxBackend<S> {
    type Error = LinuxError;
    type Pages = LinuxPages<S>;
    type Port = LinuxPort<S>;
    type RefBuf = Vec<GrantRef>;

    fn ref_buf(&self) -> Vec<GrantRef> {
        vec![0; MAX_PAGES]
    }

    fn domid(&self) -> DomId {
        self.own
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn grant(&mut self, peer: DomId, n: usize) -> Result<LinuxPages<S>, LinuxError> {
        Ok(LinuxPages::Shared(self.gntalloc()?.share(peer, n)?))
    }

    fn map(&mut self, owner: DomId, refs: &[GrantRef]) -> Result<LinuxPages<S>, LinuxError> {
        Ok(LinuxPages::Foreign(self.gntdev()?.map(owner, refs)?))
    }

    fn unbound_port(&mut self, peer: DomId) -> Result<LinuxPort<S>, LinuxError> {
        let ev = Evtchn::open_with(self.sys.clone())?;
        let port = ev.bind_unbound(peer)?;
        Ok(LinuxPort::new(&self.sys, ev, port))
    }

    fn bind_port(&mut self, peer: DomId, remote: EvtchnPort) -> Result<LinuxPort<S>, LinuxError> {
        let ev = Evtchn::open_with(self.sys.clone())?;
        let port = ev.bind_interdomain(peer, remote)?;
        Ok(LinuxPort::new(&self.sys, ev, port))
    }

    fn on_release(
        &mut self,
        pages: &LinuxPages<S>,
        byte: usize,
        port: &LinuxPort<S>,
    ) -> Result<(), LinuxError> {
        let notify = UnmapNotify {
            clear_byte: Some(byte),
            event: Some(port.port),
        };
        match pages {
            LinuxPages::Shared(p) => p.set_unmap_notify(notify)?,
            LinuxPages::Foreign(p) => p.set_unmap_notify(notify)?,
        }
        Ok(())
    }
}

impl crate::transport::XenTransport<LinuxBackend<Linux>> {
    /// A transport between this domain, `own` (written into offers: the
    /// acceptor maps the grants from it), and domain `peer` (offers go to
    /// it; only offers from it are accepted), through the real devices.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::XenTransport;
    ///
    /// // Domain 5's transport to dom0; no device is opened yet.
    /// let t = XenTransport::new(5, 0);
    /// assert_eq!((t.domid(), t.peer()), (5, 0));
    /// ```
    pub fn new(own: DomId, peer: DomId) -> Self {
        Self::with_backend(LinuxBackend::new(own), peer)
    }
}

impl<S: Sys> crate::transport::XenTransport<LinuxBackend<S>> {
    /// As [`XenTransport::new`](crate::XenTransport::new), with the system
    /// calls of `sys`.
    #[cfg(test)]
    pub(crate) fn with_sys(sys: S, own: DomId, peer: DomId) -> Self {
        Self::with_backend(LinuxBackend::with_sys(sys, own), peer)
    }
}

impl<S: Sys> crate::transport::XenDoorbell<LinuxBackend<S>> {
    /// Whether Xen can be asked about the port (privcmd is open and
    /// answered a first `EVTCHNOP_status`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use coresident_xen::{Rendezvous, XenStore};
    ///
    /// let mut xs = XenStore::open()?;
    /// let link = Rendezvous::new(0, 5, "logs")?.accept(&mut xs, Some(Duration::from_secs(30)))?;
    /// if !link.doorbell.can_ask_xen() {
    ///     // No privcmd: learn of `xl destroy` from XenStore instead.
    ///     Rendezvous::new(0, 5, "logs")?.watch_peer(&mut xs)?;
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn can_ask_xen(&self) -> bool {
        self.event_port().can_ask_xen()
    }
}

impl crate::rendezvous::Rendezvous<LinuxBackend<Linux>> {
    /// The channel `name` between this domain, `own`, and domain `peer`,
    /// through the real devices (context `channels`).
    ///
    /// # Errors
    ///
    /// [`KeyError::BadName`](crate::protocol::keys::KeyError::BadName).
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::Rendezvous;
    ///
    /// // Domain 5's channel "logs" to dom0; nothing is opened or written yet.
    /// let rdv = Rendezvous::new(5, 0, "logs")?;
    /// assert_eq!((rdv.own(), rdv.peer(), rdv.context()), (5, 0, "channels"));
    /// assert!(Rendezvous::new(5, 0, "").is_err()); // names: [A-Za-z0-9_-]{1,64}
    /// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
    /// ```
    pub fn new(
        own: DomId,
        peer: DomId,
        name: &str,
    ) -> Result<Self, crate::protocol::keys::KeyError> {
        Self::with_transport(crate::linux::XenTransport::new(own, peer), name)
    }
}

impl<S: Sys> crate::rendezvous::Rendezvous<LinuxBackend<S>> {
    /// As [`Rendezvous::new`](crate::Rendezvous::new), with the system
    /// calls of `sys`.
    ///
    /// # Errors
    ///
    /// [`KeyError::BadName`](crate::protocol::keys::KeyError::BadName).
    #[cfg(test)]
    pub(crate) fn with_sys(
        sys: S,
        own: DomId,
        peer: DomId,
        name: &str,
    ) -> Result<Self, crate::protocol::keys::KeyError> {
        Self::with_transport(
            crate::transport::XenTransport::with_sys(sys, own, peer),
            name,
        )
    }
}
