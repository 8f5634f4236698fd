//! `/dev/xen/gntdev`: map pages another domain granted to us.
//!
//! Mirrors `include/uapi/xen/gntdev.h` (Linux 6.1). `MAP_GRANT_REF` takes
//! `count` (domain, grant reference) pairs and returns an `index`; one `mmap`
//! of `count` pages at that offset maps them contiguously. The mapping is
//! released when it is both unmapped and `UNMAP_GRANT_REF`ed; the driver then
//! performs the unmap-notify action (clear a byte in the page, signal an
//! event channel), which is how the granting domain learns we are gone.
//!
//! # Examples
//!
//! ```no_run
//! use coresident_xen::Gntdev;
//!
//! // Map the two pages domain 5 granted us as references 8 and 9.
//! let pages = Gntdev::open()?.map(5, &[8, 9])?;
//! // SAFETY: the mapping is 8192 bytes, valid while `pages` lives; the peer
//! // writes it too, so only volatile reads.
//! let first = unsafe { pages.as_ptr().read_volatile() };
//! println!("{} bytes, first {first}", pages.len());
//! # Ok::<(), coresident_xen::GrantError>(())
//! ```

use std::sync::Arc;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::linux::error::{GrantError, GrantOp};
use crate::linux::gntalloc::{notify_arg, IoctlUnmapNotify};
use crate::linux::mapping::Mapping;
use crate::linux::sys::{ioc_none, Device, Linux, Opcode, Sys, PAGE_SIZE};
use crate::types::{DomId, GrantRef, UnmapNotify, MAX_PAGES};

/// `include/uapi/xen/gntdev.h`: `struct ioctl_gntdev_grant_ref`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct IoctlGntdevGrantRef {
    /// The granting domain.
    pub domid: u32,
    /// The grant reference.
    pub r#ref: u32,
}
const _: () = assert!(size_of::<IoctlGntdevGrantRef>() == 8);

/// `include/uapi/xen/gntdev.h`: `struct ioctl_gntdev_map_grant_ref`.
///
/// Ends in `struct ioctl_gntdev_grant_ref refs[1]`, really `count` entries:
/// the argument is this 16-byte header followed by `count` refs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct IoctlGntdevMapGrantRef {
    /// In: the number of grants.
    pub count: u32,
    /// Padding in the C struct.
    pub pad: u32,
    /// Out: the offset for `mmap`.
    pub index: u64,
    /// In: the first grant (the others follow).
    pub refs: [IoctlGntdevGrantRef; 1],
}
const _: () = assert!(size_of::<IoctlGntdevMapGrantRef>() == 24);
/// Bytes before `refs` in the C struct.
const MAP_HEADER: usize = 16;

/// `include/uapi/xen/gntdev.h`: `struct ioctl_gntdev_unmap_grant_ref`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct IoctlGntdevUnmapGrantRef {
    /// In: the `index` returned by the map operation.
    pub index: u64,
    /// In: the number of pages.
    pub count: u32,
    /// Padding in the C struct.
    pub pad: u32,
}
const _: () = assert!(size_of::<IoctlGntdevUnmapGrantRef>() == 16);

/// `include/uapi/xen/gntdev.h`: `struct ioctl_gntdev_unmap_notify` has the
/// layout of gntalloc's (`IoctlUnmapNotify`).
pub(crate) type IoctlGntdevUnmapNotify = IoctlUnmapNotify;

/// `IOCTL_GNTDEV_MAP_GRANT_REF`.
pub(crate) const IOCTL_GNTDEV_MAP_GRANT_REF: Opcode =
    ioc_none(b'G', 0, size_of::<IoctlGntdevMapGrantRef>());
/// `IOCTL_GNTDEV_UNMAP_GRANT_REF`.
pub(crate) const IOCTL_GNTDEV_UNMAP_GRANT_REF: Opcode =
    ioc_none(b'G', 1, size_of::<IoctlGntdevUnmapGrantRef>());
/// `IOCTL_GNTDEV_SET_UNMAP_NOTIFY`.
pub(crate) const IOCTL_GNTDEV_SET_UNMAP_NOTIFY: Opcode =
    ioc_none(b'G', 7, size_of::<IoctlGntdevUnmapNotify>());

/// An open `/dev/xen/gntdev`; cheap to clone (shared descriptor).
///
/// # Examples
///
/// ```no_run
/// use coresident_xen::Gntdev;
///
/// // Dom0 maps domain 5's grants 8..12 (from its offer).
/// let pages = Gntdev::open()?.map(5, &[8, 9, 10, 11])?;
/// # drop(pages);
/// # Ok::<(), coresident_xen::GrantError>(())
/// ```
#[derive(Debug)]
pub struct Gntdev<S: Sys = Linux> {
    dev: Arc<Device<S>>,
}

impl<S: Sys> Clone for Gntdev<S> {
    fn clone(&self) -> Self {
        Self {
            dev: Arc::clone(&self.dev),
        }
    }
}

impl Gntdev<Linux> {
    /// Opens `/dev/xen/gntdev`.
    ///
    /// # Errors
    ///
    /// [`GrantError::Open`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::Gntdev;
    ///
    /// let gntdev = Gntdev::open()?;
    /// # drop(gntdev);
    /// # Ok::<(), coresident_xen::GrantError>(())
    /// ```
    pub fn open() -> Result<Self, GrantError> {
        Self::open_with(Linux)
    }
}

impl<S: Sys> Gntdev<S> {
    /// Opens `/dev/xen/gntdev` through `sys`.
    ///
    /// # Errors
    ///
    /// [`GrantError::Open`].
    pub(crate) fn open_with(sys: S) -> Result<Self, GrantError> {
        let dev = Device::open(sys, c"/dev/xen/gntdev").map_err(GrantError::Open)?;
        Ok(Self { dev: Arc::new(dev) })
    }

    /// Maps the pages `refs` that domain `domid` granted us, writable and
    /// contiguous, in the order given.
    ///
    /// `refs` usually come from XenStore, i.e. from the peer: a wrong one
    /// is an error from the driver or the hypervisor, never memory unsafety
    /// here.
    ///
    /// # Errors
    ///
    /// [`GrantError::InvalidCount`] for 0 or more than [`MAX_PAGES`] refs;
    /// [`GrantError::Ioctl`]; [`GrantError::Mmap`] (a bad grant reference
    /// typically shows up here, as `EFAULT`/`EINVAL`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::Gntdev;
    ///
    /// // Dom0 maps domain 5's grants 8..12 (from its offer).
    /// let pages = Gntdev::open()?.map(5, &[8, 9, 10, 11])?;
    /// # drop(pages);
    /// # Ok::<(), coresident_xen::GrantError>(())
    /// ```
    pub fn map(&self, domid: DomId, refs: &[GrantRef]) -> Result<ForeignPages<S>, GrantError> {
        let pages = refs.len();
        if pages == 0 || pages > MAX_PAGES {
            return Err(GrantError::InvalidCount(pages));
        }
        let count = u32::try_from(pages).map_err(|_| GrantError::InvalidCount(pages))?;
        let bytes = MAP_HEADER + pages * size_of::<IoctlGntdevGrantRef>();
        let mut buf = vec![0u64; bytes / 8];
        {
            let raw = buf.as_mut_bytes();
            let head = IoctlGntdevMapGrantRef {
                count,
                ..Default::default()
            };
            raw[..MAP_HEADER].copy_from_slice(&head.as_bytes()[..MAP_HEADER]);
            for (slot, &r) in raw[MAP_HEADER..].chunks_exact_mut(8).zip(refs) {
                let g = IoctlGntdevGrantRef {
                    domid: u32::from(domid),
                    r#ref: r,
                };
                slot.copy_from_slice(g.as_bytes());
            }
        }
        // SAFETY:
        // - `buf` holds the 16-byte header and `count` 8-byte refs, all the
        //   driver reads (header, refs) and writes (header); for count >= 1
        //   that covers the 24-byte `sizeof` too.
        // - `buf` is 8-aligned (u64 words), the struct's alignment.
        let r = unsafe {
            self.dev.sys.ioctl(
                self.dev.fd(),
                IOCTL_GNTDEV_MAP_GRANT_REF,
                buf.as_mut_ptr().cast(),
            )
        };
        r.map_err(|errno| GrantError::Ioctl {
            op: GrantOp::Map,
            errno,
        })?;
        let index = buf.get(1).copied().unwrap_or(0);
        // From here on, dropping `mapped` unmaps the grants.
        let mapped = Mapped {
            dev: Arc::clone(&self.dev),
            index,
            count,
        };
        let len = pages * PAGE_SIZE;
        let ptr = self
            .dev
            .sys
            .mmap_shared(self.dev.fd(), len, index)
            .map_err(GrantError::Mmap)?;
        // SAFETY:
        // - `ptr .. ptr + len` was just returned by `mmap_shared` of this
        //   `sys`, and nothing else owns it.
        let map = unsafe { Mapping::from_raw(ptr, len, self.dev.sys.clone()) };
        Ok(ForeignPages { map, mapped })
    }
}

/// The driver-side grant mapping, released on drop (after the `munmap`).
#[derive(Debug)]
struct Mapped<S: Sys> {
    dev: Arc<Device<S>>,
    index: u64,
    count: u32,
}

impl<S: Sys> Drop for Mapped<S> {
    fn drop(&mut self) {
        let mut arg = IoctlGntdevUnmapGrantRef {
            index: self.index,
            count: self.count,
            pad: 0,
        };
        // SAFETY:
        // - `arg` is a whole `ioctl_gntdev_unmap_grant_ref`, the only thing
        //   the driver reads for this opcode; it writes nothing.
        // - `arg` is a properly aligned local.
        let _ = unsafe {
            self.dev.sys.ioctl(
                self.dev.fd(),
                IOCTL_GNTDEV_UNMAP_GRANT_REF,
                (&raw mut arg).cast(),
            )
        };
    }
}

/// Another domain's pages, mapped here. Drop unmaps them.
///
/// # Examples
///
/// ```no_run
/// use coresident_xen::Gntdev;
///
/// // Dom0 maps domain 5's grants 8..12 (from its offer).
/// let pages = Gntdev::open()?.map(5, &[8, 9, 10, 11])?;
/// drop(pages); // unmapped: domain 5 may end its grants
/// # Ok::<(), coresident_xen::GrantError>(())
/// ```
#[derive(Debug)]
pub struct ForeignPages<S: Sys = Linux> {
    // Field order is drop order: munmap first, then UNMAP_GRANT_REF.
    map: Mapping<S>,
    mapped: Mapped<S>,
}

impl<S: Sys> ForeignPages<S> {
    /// The mapping (raw pointer and length).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::Gntdev;
    ///
    /// // Dom0 maps domain 5's grants 8..12 (from its offer).
    /// let pages = Gntdev::open()?.map(5, &[8, 9, 10, 11])?;
    /// println!("{} bytes at {:p}", pages.mapping().len(), pages.mapping().as_ptr());
    /// # Ok::<(), coresident_xen::GrantError>(())
    /// ```
    pub fn mapping(&self) -> &Mapping<S> {
        &self.map
    }

    /// First byte of the pages; see [`Mapping::as_ptr`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::Gntdev;
    ///
    /// // Dom0 maps domain 5's grants 8..12 (from its offer).
    /// let pages = Gntdev::open()?.map(5, &[8, 9, 10, 11])?;
    /// let p = pages.as_ptr(); // atomics and volatile accesses only
    /// # drop(p);
    /// # Ok::<(), coresident_xen::GrantError>(())
    /// ```
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr()
    }

    /// Length in bytes.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::Gntdev;
    ///
    /// // Dom0 maps domain 5's grants 8..12 (from its offer).
    /// let pages = Gntdev::open()?.map(5, &[8, 9, 10, 11])?;
    /// println!("{} bytes", pages.len()); // 4 × 4096
    /// # Ok::<(), coresident_xen::GrantError>(())
    /// ```
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Always `false`: a mapping has at least one page.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::Gntdev;
    ///
    /// // Dom0 maps domain 5's grants 8..12 (from its offer).
    /// let pages = Gntdev::open()?.map(5, &[8, 9, 10, 11])?;
    /// println!("{}", pages.is_empty()); // false for a mapping
    /// # Ok::<(), coresident_xen::GrantError>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// What the driver does when this mapping is released (dropped, or our
    /// process died): clear the byte at `notify.clear_byte` (the granting
    /// domain sees 0) and/or signal `notify.event`, a local port bound
    /// through `/dev/xen/evtchn`.
    ///
    /// # Errors
    ///
    /// [`GrantError::OffsetOutOfRange`]; [`GrantError::Ioctl`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::{Gntdev, UnmapNotify};
    ///
    /// let pages = Gntdev::open()?.map(5, &[8, 9, 10, 11])?;
    /// // If this process dies: clear our live byte (64) and fire local port 7.
    /// pages.set_unmap_notify(UnmapNotify { clear_byte: Some(64), event: Some(7) })?;
    /// # Ok::<(), coresident_xen::GrantError>(())
    /// ```
    pub fn set_unmap_notify(&self, notify: UnmapNotify) -> Result<(), GrantError> {
        let mut arg = notify_arg(self.mapped.index, self.map.len(), notify)?;
        let dev = &self.mapped.dev;
        // SAFETY:
        // - `arg` is a whole `ioctl_gntdev_unmap_notify`, the only thing the
        //   driver reads for this opcode; it writes nothing.
        // - `arg` is a properly aligned local.
        let r = unsafe {
            dev.sys.ioctl(
                dev.fd(),
                IOCTL_GNTDEV_SET_UNMAP_NOTIFY,
                (&raw mut arg).cast(),
            )
        };
        r.map(|_| ()).map_err(|errno| GrantError::Ioctl {
            op: GrantOp::SetUnmapNotify,
            errno,
        })
    }
}
