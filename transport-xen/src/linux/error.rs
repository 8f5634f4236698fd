//! Error types: one small `Copy` enum per boundary.
//!
//! # Examples
//!
//! ```
//! use coresident_xen::{Evtchn, EvtchnError};
//!
//! /// A device error is worded for a log line.
//! fn describe(r: Result<Evtchn, EvtchnError>) -> String {
//!     r.map_or_else(|e| e.to_string(), |_| "open".to_owned())
//! }
//! println!("/dev/xen/evtchn: {}", describe(Evtchn::open()));
//! ```

use core::fmt;

#[cfg(target_os = "linux")]
pub use rustix::io::Errno;

/// Which grant-table operation failed (see [`GrantError::Ioctl`]).
///
/// # Examples
///
/// ```
/// use coresident_xen::GrantOp;
///
/// assert_ne!(GrantOp::Alloc, GrantOp::Dealloc);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GrantOp {
    /// `IOCTL_GNTALLOC_ALLOC_GREF`.
    Alloc,
    /// `IOCTL_GNTALLOC_DEALLOC_GREF`.
    Dealloc,
    /// `IOCTL_GNTALLOC_SET_UNMAP_NOTIFY` or `IOCTL_GNTDEV_SET_UNMAP_NOTIFY`.
    SetUnmapNotify,
    /// `IOCTL_GNTDEV_MAP_GRANT_REF`.
    Map,
    /// `IOCTL_GNTDEV_UNMAP_GRANT_REF`.
    Unmap,
}

/// A failure of [`Gntalloc`](crate::linux::gntalloc::Gntalloc) or
/// [`Gntdev`](crate::linux::gntdev::Gntdev).
///
/// # Examples
///
/// ```
/// use coresident_xen::linux::error::Errno;
/// use coresident_xen::{GrantError, GrantOp};
///
/// let e = GrantError::Ioctl { op: GrantOp::Map, errno: Errno::INVAL };
/// assert!(e.to_string().starts_with("grant operation Map failed"));
/// ```
#[cfg(target_os = "linux")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GrantError {
    /// Opening the device failed (`ENOENT`: not a Xen domain, or the
    /// `xen-gntalloc`/`xen-gntdev` module is not loaded).
    Open(Errno),
    /// The driver refused an operation.
    Ioctl {
        /// The operation.
        op: GrantOp,
        /// The driver's error.
        errno: Errno,
    },
    /// `mmap` of the granted or mapped pages failed.
    Mmap(Errno),
    /// A page count of 0 or above [`MAX_PAGES`](crate::types::MAX_PAGES).
    InvalidCount(usize),
    /// A byte offset outside the mapping.
    OffsetOutOfRange {
        /// The offset asked for.
        offset: usize,
        /// The mapping's length in bytes.
        len: usize,
    },
}

#[cfg(target_os = "linux")]
impl fmt::Display for GrantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open(e) => write!(f, "cannot open the Xen grant device: {e}"),
            Self::Ioctl { op, errno } => write!(f, "grant operation {op:?} failed: {errno}"),
            Self::Mmap(e) => write!(f, "cannot map the grant pages: {e}"),
            Self::InvalidCount(n) => {
                write!(
                    f,
                    "invalid page count {n} (1 ..= {})",
                    crate::types::MAX_PAGES
                )
            }
            Self::OffsetOutOfRange { offset, len } => {
                write!(f, "offset {offset} is outside the {len}-byte mapping")
            }
        }
    }
}

#[cfg(target_os = "linux")]
impl std::error::Error for GrantError {}

/// Which event-channel operation failed (see [`EvtchnError::Ioctl`]).
///
/// # Examples
///
/// ```
/// use coresident_xen::EvtchnOp;
///
/// assert_ne!(EvtchnOp::BindUnbound, EvtchnOp::BindInterdomain);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EvtchnOp {
    /// `IOCTL_EVTCHN_BIND_UNBOUND_PORT`.
    BindUnbound,
    /// `IOCTL_EVTCHN_BIND_INTERDOMAIN`.
    BindInterdomain,
    /// `IOCTL_EVTCHN_NOTIFY`.
    Notify,
    /// `IOCTL_EVTCHN_UNBIND`.
    Unbind,
}

/// A failure of [`Evtchn`](crate::linux::evtchn::Evtchn).
///
/// # Examples
///
/// ```
/// use coresident_xen::linux::error::Errno;
/// use coresident_xen::{EvtchnError, EvtchnOp};
///
/// let e = EvtchnError::Ioctl { op: EvtchnOp::Notify, errno: Errno::NOTCONN };
/// assert!(e.to_string().starts_with("event channel Notify failed"));
/// ```
#[cfg(target_os = "linux")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EvtchnError {
    /// Opening `/dev/xen/evtchn` failed.
    Open(Errno),
    /// The driver refused an operation.
    Ioctl {
        /// The operation.
        op: EvtchnOp,
        /// The driver's error.
        errno: Errno,
    },
    /// Reading pending ports failed (`EFBIG`: the driver's ring overflowed;
    /// treat every port as pending).
    Read(Errno),
    /// Unmasking (writing ports back) failed.
    Unmask(Errno),
    /// Waiting for the descriptor failed.
    Poll(Errno),
    /// The driver returned a port number that does not fit the kernel ABI
    /// (negative), or a read that is not a whole number of ports.
    BadKernelReply,
}

#[cfg(target_os = "linux")]
impl fmt::Display for EvtchnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open(e) => write!(f, "cannot open /dev/xen/evtchn: {e}"),
            Self::Ioctl { op, errno } => write!(f, "event channel {op:?} failed: {errno}"),
            Self::Read(e) => write!(f, "cannot read pending event channels: {e}"),
            Self::Unmask(e) => write!(f, "cannot unmask an event channel: {e}"),
            Self::Poll(e) => write!(f, "cannot wait for event channels: {e}"),
            Self::BadKernelReply => f.write_str("the evtchn driver returned a malformed reply"),
        }
    }
}

#[cfg(target_os = "linux")]
impl std::error::Error for EvtchnError {}
