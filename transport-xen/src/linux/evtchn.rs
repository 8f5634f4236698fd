//! `/dev/xen/evtchn`: event channels, Xen's doorbells.
//!
//! Mirrors `include/uapi/xen/evtchn.h` (Linux 6.1); see also Xen's
//! `public/event_channel.h`. Binding ioctls return the new local port as
//! the call's result. When a bound port fires, the driver masks it and
//! queues its number: `read` yields `u32` port numbers, and writing a port
//! number back unmasks it. The descriptor is pollable.
//!
//! Events are hints: a freshly bound interdomain port is left pending by
//! Xen (it may have missed notifications while unbound), so the first event
//! can arrive before the peer sent any. Always re-check the shared state.
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//! use coresident_xen::Evtchn;
//!
//! // dom0 offers domain 5 a port, rings it, and waits for an answer.
//! let ev = Evtchn::open()?;
//! let port = ev.bind_unbound(5)?;
//! ev.notify(port)?;
//! let rang = ev.wait_for(port, Duration::from_secs(1))?;
//! println!("port {port}: answered {rang}");
//! # Ok::<(), coresident_xen::EvtchnError>(())
//! ```

use core::time::Duration;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::linux::error::{EvtchnError, EvtchnOp};
use crate::linux::sys::{ioc_none, Device, Errno, Linux, Opcode, Sys};
use crate::types::{DomId, EvtchnPort};

/// `include/uapi/xen/evtchn.h`: `struct ioctl_evtchn_bind_interdomain`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct IoctlEvtchnBindInterdomain {
    /// The peer domain.
    pub remote_domain: u32,
    /// The peer's unbound port.
    pub remote_port: u32,
}
const _: () = assert!(size_of::<IoctlEvtchnBindInterdomain>() == 8);

/// `include/uapi/xen/evtchn.h`: `struct ioctl_evtchn_bind_unbound_port`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct IoctlEvtchnBindUnboundPort {
    /// The domain allowed to bind the new port.
    pub remote_domain: u32,
}
const _: () = assert!(size_of::<IoctlEvtchnBindUnboundPort>() == 4);

/// `include/uapi/xen/evtchn.h`: `struct ioctl_evtchn_unbind`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct IoctlEvtchnUnbind {
    /// A local port.
    pub port: u32,
}
const _: () = assert!(size_of::<IoctlEvtchnUnbind>() == 4);

/// `include/uapi/xen/evtchn.h`: `struct ioctl_evtchn_notify`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct IoctlEvtchnNotify {
    /// A local port.
    pub port: u32,
}
const _: () = assert!(size_of::<IoctlEvtchnNotify>() == 4);

/// `IOCTL_EVTCHN_BIND_INTERDOMAIN`.
pub(crate) const IOCTL_EVTCHN_BIND_INTERDOMAIN: Opcode =
    ioc_none(b'E', 1, size_of::<IoctlEvtchnBindInterdomain>());
/// `IOCTL_EVTCHN_BIND_UNBOUND_PORT`.
pub(crate) const IOCTL_EVTCHN_BIND_UNBOUND_PORT: Opcode =
    ioc_none(b'E', 2, size_of::<IoctlEvtchnBindUnboundPort>());
/// `IOCTL_EVTCHN_UNBIND`.
pub(crate) const IOCTL_EVTCHN_UNBIND: Opcode = ioc_none(b'E', 3, size_of::<IoctlEvtchnUnbind>());
/// `IOCTL_EVTCHN_NOTIFY`.
pub(crate) const IOCTL_EVTCHN_NOTIFY: Opcode = ioc_none(b'E', 4, size_of::<IoctlEvtchnNotify>());

/// An open `/dev/xen/evtchn` (non-blocking); cheap to clone.
///
/// Closing the last clone unbinds every port bound through it.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use coresident_xen::Evtchn;
///
/// let ev = Evtchn::open()?;
/// let port = ev.bind_unbound(0)?;
/// ev.notify(port)?;
/// ev.wait(Some(Duration::from_millis(10)))?;
/// # Ok::<(), coresident_xen::EvtchnError>(())
/// ```
#[derive(Debug)]
pub struct Evtchn<S: Sys = Linux> {
    dev: Arc<Device<S>>,
}

impl<S: Sys> Clone for Evtchn<S> {
    fn clone(&self) -> Self {
        Self {
            dev: Arc::clone(&self.dev),
        }
    }
}

impl Evtchn<Linux> {
    /// Opens `/dev/xen/evtchn`.
    ///
    /// # Errors
    ///
    /// [`EvtchnError::Open`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::Evtchn;
    ///
    /// let ev = Evtchn::open()?;
    /// # drop(ev);
    /// # Ok::<(), coresident_xen::EvtchnError>(())
    /// ```
    pub fn open() -> Result<Self, EvtchnError> {
        Self::open_with(Linux)
    }
}

impl<S: Sys> Evtchn<S> {
    /// Opens `/dev/xen/evtchn` through `sys`.
    ///
    /// # Errors
    ///
    /// [`EvtchnError::Open`].
    pub(crate) fn open_with(sys: S) -> Result<Self, EvtchnError> {
        let dev = Device::open(sys, c"/dev/xen/evtchn").map_err(EvtchnError::Open)?;
        Ok(Self { dev: Arc::new(dev) })
    }

    /// Issues a port ioctl whose argument is `T`; returns the call's result.
    fn port_ioctl<T: IntoBytes + FromBytes>(
        &self,
        op: EvtchnOp,
        opcode: Opcode,
        mut arg: T,
    ) -> Result<EvtchnPort, EvtchnError> {
        // SAFETY:
        // - `arg` is a whole argument struct of `opcode` (the callers pair
        //   them: each opcode is built from the size of its `T`), the only
        //   thing the driver reads; it writes nothing back.
        // - `arg` is a properly aligned local.
        let r = unsafe {
            self.dev
                .sys
                .ioctl(self.dev.fd(), opcode, (&raw mut arg).cast())
        };
        let r = r.map_err(|errno| EvtchnError::Ioctl { op, errno })?;
        u32::try_from(r).map_err(|_| EvtchnError::BadKernelReply)
    }

    /// Allocates a new local port that `remote` may bind to; returns it.
    ///
    /// # Errors
    ///
    /// [`EvtchnError::Ioctl`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::Evtchn;
    ///
    /// let ev = Evtchn::open()?;
    /// // A port domain 0 may bind; its number goes into our offer.
    /// let port = ev.bind_unbound(0)?;
    /// println!("offer port {port}");
    /// # Ok::<(), coresident_xen::EvtchnError>(())
    /// ```
    pub fn bind_unbound(&self, remote: DomId) -> Result<EvtchnPort, EvtchnError> {
        let arg = IoctlEvtchnBindUnboundPort {
            remote_domain: u32::from(remote),
        };
        self.port_ioctl(EvtchnOp::BindUnbound, IOCTL_EVTCHN_BIND_UNBOUND_PORT, arg)
    }

    /// Connects a new local port to `remote`'s unbound port `remote_port`;
    /// returns the local port. The new port starts pending (see the module
    /// docs).
    ///
    /// # Errors
    ///
    /// [`EvtchnError::Ioctl`] (`EINVAL`: no such unbound port for us).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::Evtchn;
    ///
    /// let ev = Evtchn::open()?;
    /// // Dom0 offered its unbound port 17 for us.
    /// let port = ev.bind_interdomain(0, 17)?;
    /// println!("local port {port}");
    /// # Ok::<(), coresident_xen::EvtchnError>(())
    /// ```
    pub fn bind_interdomain(
        &self,
        remote: DomId,
        remote_port: EvtchnPort,
    ) -> Result<EvtchnPort, EvtchnError> {
        let arg = IoctlEvtchnBindInterdomain {
            remote_domain: u32::from(remote),
            remote_port,
        };
        self.port_ioctl(
            EvtchnOp::BindInterdomain,
            IOCTL_EVTCHN_BIND_INTERDOMAIN,
            arg,
        )
    }

    /// Signals the other end of local `port`.
    ///
    /// # Errors
    ///
    /// [`EvtchnError::Ioctl`] (`ENOTCONN`: `port` is not bound here).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::Evtchn;
    ///
    /// let ev = Evtchn::open()?;
    /// let port = ev.bind_interdomain(0, 17)?;
    /// ev.notify(port)?; // dom0's port 17 fires
    /// # Ok::<(), coresident_xen::EvtchnError>(())
    /// ```
    pub fn notify(&self, port: EvtchnPort) -> Result<(), EvtchnError> {
        let arg = IoctlEvtchnNotify { port };
        self.port_ioctl(EvtchnOp::Notify, IOCTL_EVTCHN_NOTIFY, arg)
            .map(|_| ())
    }

    /// Unbinds local `port`.
    ///
    /// # Errors
    ///
    /// [`EvtchnError::Ioctl`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::Evtchn;
    ///
    /// let ev = Evtchn::open()?;
    /// let port = ev.bind_unbound(0)?;
    /// ev.unbind(port)?; // dom0 never bound it: give it back
    /// # Ok::<(), coresident_xen::EvtchnError>(())
    /// ```
    pub fn unbind(&self, port: EvtchnPort) -> Result<(), EvtchnError> {
        let arg = IoctlEvtchnUnbind { port };
        self.port_ioctl(EvtchnOp::Unbind, IOCTL_EVTCHN_UNBIND, arg)
            .map(|_| ())
    }

    /// Reads pending ports into `out` without blocking; returns how many
    /// (0 if none). Each returned port stays masked until [`Evtchn::unmask`].
    ///
    /// # Errors
    ///
    /// [`EvtchnError::Read`] (`EFBIG`: the driver's queue overflowed;
    /// events were lost, treat every port as pending);
    /// [`EvtchnError::BadKernelReply`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::Evtchn;
    ///
    /// let ev = Evtchn::open()?;
    /// let mut fired = [0u32; 16];
    /// let n = ev.pending(&mut fired)?; // 0 if none: it never blocks
    /// println!("pending: {:?}", &fired[..n]);
    /// # Ok::<(), coresident_xen::EvtchnError>(())
    /// ```
    pub fn pending(&self, out: &mut [EvtchnPort]) -> Result<usize, EvtchnError> {
        if out.is_empty() {
            return Ok(0);
        }
        match self.dev.sys.read(self.dev.fd(), out.as_mut_bytes()) {
            Ok(n) if n % size_of::<EvtchnPort>() == 0 => Ok(n / size_of::<EvtchnPort>()),
            Ok(_) => Err(EvtchnError::BadKernelReply),
            Err(Errno::AGAIN) => Ok(0),
            Err(e) => Err(EvtchnError::Read(e)),
        }
    }

    /// Unmasks `port` (after it fired) so it can fire again.
    ///
    /// # Errors
    ///
    /// [`EvtchnError::Unmask`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::Evtchn;
    ///
    /// let ev = Evtchn::open()?;
    /// let mut fired = [0u32; 16];
    /// let n = ev.pending(&mut fired)?;
    /// for &port in &fired[..n] {
    ///     ev.unmask(port)?; // so it can fire again
    /// }
    /// # Ok::<(), coresident_xen::EvtchnError>(())
    /// ```
    pub fn unmask(&self, port: EvtchnPort) -> Result<(), EvtchnError> {
        match self.dev.sys.write(self.dev.fd(), port.as_bytes()) {
            Ok(4) => Ok(()),
            Ok(_) => Err(EvtchnError::BadKernelReply),
            Err(e) => Err(EvtchnError::Unmask(e)),
        }
    }

    /// The descriptor, readable while a port is pending (for a `poll`
    /// beside other descriptors).
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.dev.fd()
    }

    /// Waits until a port is pending or `timeout` passes (`None`: forever);
    /// `true` if something is pending. Then call [`Evtchn::pending`].
    ///
    /// # Errors
    ///
    /// [`EvtchnError::Poll`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use coresident_xen::Evtchn;
    ///
    /// let ev = Evtchn::open()?;
    /// let mut fired = [0u32; 16];
    /// if ev.wait(Some(Duration::from_secs(1)))? {
    ///     let n = ev.pending(&mut fired)?;
    ///     for &port in &fired[..n] {
    ///         ev.unmask(port)?;
    ///     }
    /// }
    /// # Ok::<(), coresident_xen::EvtchnError>(())
    /// ```
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool, EvtchnError> {
        self.dev
            .sys
            .poll_readable(self.dev.fd(), timeout)
            .map_err(EvtchnError::Poll)
    }

    /// Waits for `port` to fire (other ports that fire meanwhile are
    /// unmasked and dropped), unmasks it and returns `true`; `false` on
    /// timeout. For tests and simple single-port users.
    ///
    /// # Errors
    ///
    /// As [`Evtchn::wait`], [`Evtchn::pending`] and [`Evtchn::unmask`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use coresident_xen::Evtchn;
    ///
    /// let ev = Evtchn::open()?;
    /// let port = ev.bind_interdomain(0, 17)?;
    /// if ev.wait_for(port, Duration::from_secs(1))? {
    ///     println!("port {port} fired");
    /// }
    /// # Ok::<(), coresident_xen::EvtchnError>(())
    /// ```
    pub fn wait_for(&self, port: EvtchnPort, timeout: Duration) -> Result<bool, EvtchnError> {
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = [0u32; 16];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if !self.wait(Some(left))? {
                return Ok(false);
            }
            let n = self.pending(&mut buf)?;
            let mut hit = false;
            for &p in buf.get(..n).unwrap_or(&[]) {
                self.unmask(p)?;
                hit |= p == port;
            }
            if hit {
                return Ok(true);
            }
            if left.is_zero() {
                return Ok(false);
            }
        }
    }
}

impl<S: Sys> AsFd for Evtchn<S> {
    /// The pollable descriptor (readable when a port is pending).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.dev.fd()
    }
}
