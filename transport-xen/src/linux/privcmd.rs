//! `/dev/xen/privcmd`: hypercalls from userspace, used here for one
//! question only: is this event-channel port still connected to its peer?
//!
//! Mirrors `include/uapi/xen/privcmd.h` (Linux 6.1, `struct
//! privcmd_hypercall`, `IOCTL_PRIVCMD_HYPERCALL`) and, for the question,
//! Xen's `public/event_channel.h` (`EVTCHNOP_status`, `struct
//! evtchn_status`). The driver passes the five arguments to Xen unchanged,
//! so a pointer argument is a pointer into this process; it returns Xen's
//! result (a negative Xen errno, which matches Linux's for the values Xen
//! uses, becomes the ioctl's `errno`).
//!
//! Why: a domain destroyed with `xl destroy` runs no unmap-notify, and Xen
//! closes its event-channel ends without signalling the survivor
//! (`evtchn_close` in Xen's `common/event_channel.c`). The survivor's end
//! becomes `EVTCHNSTAT_unbound`; asking Xen is how the doorbell itself
//! notices. `EVTCHNOP_status` on `DOMID_SELF` is allowed to every domain,
//! so this works in a domU as well as in dom0 (the driver refuses only on a
//! descriptor restricted with `IOCTL_PRIVCMD_RESTRICT`, which we never do).
//!
//! # Examples
//!
//! ```no_run
//! use coresident_xen::linux::privcmd::{PortStatus, Privcmd};
//!
//! // Is our port 17 still connected, or did its peer die without a word?
//! let gone = !matches!(Privcmd::open()?.evtchn_status(17)?, PortStatus::Interdomain { .. });
//! println!("peer gone: {gone}");
//! # Ok::<(), coresident_xen::linux::error::Errno>(())
//! ```

use std::sync::Arc;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::linux::sys::{ioc_none, Device, Errno, Linux, Opcode, Sys};
use crate::types::{DomId, EvtchnPort};

/// `include/uapi/xen/privcmd.h`: `struct privcmd_hypercall`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct PrivcmdHypercall {
    /// The hypercall number (`__HYPERVISOR_*`, `xen/xen.h`).
    pub op: u64,
    /// Its arguments, passed to Xen as they are.
    pub arg: [u64; 5],
}
const _: () = assert!(size_of::<PrivcmdHypercall>() == 48);

/// `IOCTL_PRIVCMD_HYPERCALL`: `_IOC(_IOC_NONE, 'P', 0, sizeof(struct
/// privcmd_hypercall))`.
pub(crate) const IOCTL_PRIVCMD_HYPERCALL: Opcode = ioc_none(b'P', 0, size_of::<PrivcmdHypercall>());

/// `__HYPERVISOR_event_channel_op` (`xen/xen.h`).
pub(crate) const HYPERVISOR_EVENT_CHANNEL_OP: u64 = 32;
/// `EVTCHNOP_status` (`xen/event_channel.h`).
pub(crate) const EVTCHNOP_STATUS: u64 = 5;
/// `DOMID_SELF` (`xen/xen.h`).
pub(crate) const DOMID_SELF: DomId = 0x7FF0;

/// Xen's `public/event_channel.h`: `struct evtchn_status`.
///
/// The C struct's implicit padding after `dom` is spelled out as `_pad`;
/// its trailing union is laid out as its widest members: `unbound.dom` and
/// `interdomain.dom` are the `domid_t` at offset 16, `interdomain.port` the
/// `evtchn_port_t` at 20, `pirq`/`virq` the `uint32_t` at 16.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub(crate) struct EvtchnStatus {
    /// In: the domain owning the port (`DOMID_SELF`).
    pub dom: u16,
    /// Padding of the C struct.
    pub _pad: u16,
    /// In: the port.
    pub port: u32,
    /// Out: `EVTCHNSTAT_*`.
    pub status: u32,
    /// Out: the vCPU notified.
    pub vcpu: u32,
    /// Out: `u.unbound.dom` / `u.interdomain.dom` (or the low half of
    /// `u.pirq` / `u.virq`).
    pub remote_dom: u16,
    /// Padding of the C union's `interdomain` member.
    pub _pad2: u16,
    /// Out: `u.interdomain.port`.
    pub remote_port: u32,
}
const _: () = assert!(size_of::<EvtchnStatus>() == 24);
const _: () = assert!(core::mem::offset_of!(EvtchnStatus, status) == 8);
const _: () = assert!(core::mem::offset_of!(EvtchnStatus, remote_dom) == 16);
const _: () = assert!(core::mem::offset_of!(EvtchnStatus, remote_port) == 20);

/// `EVTCHNSTAT_closed`: the port is not in use.
pub(crate) const EVTCHNSTAT_CLOSED: u32 = 0;
/// `EVTCHNSTAT_unbound`: waiting for a peer to bind (again, after the peer
/// closed its end or died).
pub(crate) const EVTCHNSTAT_UNBOUND: u32 = 1;
/// `EVTCHNSTAT_interdomain`: connected to a port of another domain.
pub(crate) const EVTCHNSTAT_INTERDOMAIN: u32 = 2;

/// What Xen says about one of our ports.
///
/// # Examples
///
/// ```no_run
/// use coresident_xen::linux::privcmd::{PortStatus, Privcmd};
///
/// // After `xl destroy` of the peer, Xen leaves our end unbound, unsignalled.
/// match Privcmd::open()?.evtchn_status(17)? {
///     PortStatus::Interdomain { remote, port } => println!("connected to {remote}:{port}"),
///     PortStatus::Unbound { remote } => println!("waiting for (or lost) domain {remote}"),
///     PortStatus::Closed => println!("not in use"),
///     other => println!("{other:?}"),
/// }
/// # Ok::<(), coresident_xen::linux::error::Errno>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PortStatus {
    /// Not in use.
    Closed,
    /// Waiting for `remote` to bind.
    Unbound {
        /// The domain allowed to bind.
        remote: DomId,
    },
    /// Connected to `remote`'s `port`.
    Interdomain {
        /// The peer domain.
        remote: DomId,
        /// The peer's port.
        port: EvtchnPort,
    },
    /// Bound to something else (a physical or virtual IRQ, an IPI): the
    /// raw `EVTCHNSTAT_*` value.
    Other(u32),
}

impl PortStatus {
    /// Decodes Xen's answer.
    pub(crate) fn from_raw(s: &EvtchnStatus) -> Self {
        match s.status {
            EVTCHNSTAT_CLOSED => Self::Closed,
            EVTCHNSTAT_UNBOUND => Self::Unbound {
                remote: s.remote_dom,
            },
            EVTCHNSTAT_INTERDOMAIN => Self::Interdomain {
                remote: s.remote_dom,
                port: s.remote_port,
            },
            other => Self::Other(other),
        }
    }
}

/// An open `/dev/xen/privcmd`; cheap to clone.
///
/// # Examples
///
/// ```no_run
/// use coresident_xen::linux::privcmd::Privcmd;
///
/// let status = Privcmd::open()?.evtchn_status(17)?;
/// println!("{status:?}");
/// # Ok::<(), coresident_xen::linux::error::Errno>(())
/// ```
#[derive(Debug)]
pub struct Privcmd<S: Sys = Linux> {
    dev: Arc<Device<S>>,
}

impl<S: Sys> Clone for Privcmd<S> {
    fn clone(&self) -> Self {
        Self {
            dev: Arc::clone(&self.dev),
        }
    }
}

impl Privcmd<Linux> {
    /// Opens `/dev/xen/privcmd`.
    ///
    /// # Errors
    ///
    /// The `errno` of the failed `open` (`ENOENT`: not a Xen domain, or the
    /// `xen-privcmd` module is not loaded; `EACCES`: not root).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::linux::privcmd::Privcmd;
    ///
    /// match Privcmd::open() {
    ///     Ok(p) => drop(p),
    ///     Err(e) => eprintln!("no privcmd ({e}): peer death is learnt from XenStore"),
    /// }
    /// ```
    pub fn open() -> Result<Self, Errno> {
        Self::open_with(Linux)
    }
}

impl<S: Sys> Privcmd<S> {
    /// Opens `/dev/xen/privcmd` through `sys`.
    ///
    /// # Errors
    ///
    /// The `errno` of the failed `open`.
    pub(crate) fn open_with(sys: S) -> Result<Self, Errno> {
        let dev = Device::open(sys, c"/dev/xen/privcmd")?;
        Ok(Self { dev: Arc::new(dev) })
    }

    /// Asks Xen about our local `port` (`EVTCHNOP_status`, `DOMID_SELF`).
    ///
    /// # Errors
    ///
    /// The driver's or Xen's refusal (`EINVAL`: no such port here).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::linux::privcmd::{PortStatus, Privcmd};
    ///
    /// let privcmd = Privcmd::open()?;
    /// if let PortStatus::Closed = privcmd.evtchn_status(17)? {
    ///     println!("port 17's peer is gone (xl destroy closes its end)");
    /// }
    /// # Ok::<(), coresident_xen::linux::error::Errno>(())
    /// ```
    pub fn evtchn_status(&self, port: EvtchnPort) -> Result<PortStatus, Errno> {
        let mut st = EvtchnStatus {
            dom: DOMID_SELF,
            port,
            ..EvtchnStatus::default()
        };
        let mut call = PrivcmdHypercall {
            op: HYPERVISOR_EVENT_CHANNEL_OP,
            arg: [EVTCHNOP_STATUS, (&raw mut st) as u64, 0, 0, 0],
        };
        // SAFETY:
        // - `call` is a whole, aligned `struct privcmd_hypercall`, the only
        //   thing the driver reads for this opcode; it writes nothing back.
        // - The one pointer inside it, `arg[1]`, points to `st`, a live,
        //   aligned `struct evtchn_status` on this stack frame, which Xen
        //   reads and writes (24 bytes) during the call and never after;
        //   `st` is read only once the call has returned.
        let r = unsafe {
            self.dev.sys.ioctl(
                self.dev.fd(),
                IOCTL_PRIVCMD_HYPERCALL,
                (&raw mut call).cast(),
            )
        };
        r?;
        Ok(PortStatus::from_raw(&st))
    }
}
