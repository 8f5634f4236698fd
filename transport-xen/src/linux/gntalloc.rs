//! `/dev/xen/gntalloc`: grant our own pages to another domain.
//!
//! Mirrors `include/uapi/xen/gntalloc.h` (Linux 6.1). The driver allocates
//! pages, grants them to a domain (one grant reference per page), and lets
//! us `mmap` them at the returned `index`. The pages live until they are
//! both unmapped and deallocated; at that moment the driver performs the
//! unmap-notify action (clear a byte, signal an event channel), which is how
//! the peer learns that we are gone.
//!
//! # Examples
//!
//! ```no_run
//! use coresident_xen::Gntalloc;
//!
//! // Grant domain 5 two pages; their references go to domain 5 next.
//! let pages = Gntalloc::open()?.share(5, 2)?;
//! println!("refs {:?}, {} bytes at {:p}", pages.refs(), pages.len(), pages.as_ptr());
//! # Ok::<(), coresident_xen::GrantError>(())
//! ```

use std::sync::Arc;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::linux::error::{GrantError, GrantOp};
use crate::linux::mapping::Mapping;
use crate::linux::sys::{ioc_none, Device, Linux, Opcode, Sys, PAGE_SIZE};
use crate::types::{DomId, EvtchnPort, GrantRef, UnmapNotify, MAX_PAGES};

/// `include/uapi/xen/gntalloc.h`: `struct ioctl_gntalloc_alloc_gref`.
///
/// The C struct ends in `__u32 gref_ids[1]`, a variable-length array of
/// `count` entries; `sizeof` (which the ioctl number encodes) is 24 with the
/// trailing padding, spelled out here as `_pad`. The real argument is the
/// 16-byte header followed by `count` grant references.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct IoctlGntallocAllocGref {
    /// In: the domain given access to the grants.
    pub domid: u16,
    /// In: `GNTALLOC_FLAG_WRITABLE` or 0.
    pub flags: u16,
    /// In: the number of pages.
    pub count: u32,
    /// Out: the offset for `mmap`.
    pub index: u64,
    /// Out: the first grant reference (the others follow).
    pub gref_ids: [u32; 1],
    /// Trailing padding of the C struct.
    pub _pad: u32,
}
const _: () = assert!(size_of::<IoctlGntallocAllocGref>() == 24);
/// Bytes before `gref_ids` in the C struct.
const ALLOC_HEADER: usize = 16;

/// `include/uapi/xen/gntalloc.h`: `struct ioctl_gntalloc_dealloc_gref`.
/// 12 bytes of fields padded to 16 (`_pad`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct IoctlGntallocDeallocGref {
    /// In: the `index` returned by the allocation.
    pub index: u64,
    /// In: the number of pages.
    pub count: u32,
    /// Trailing padding of the C struct.
    pub _pad: u32,
}
const _: () = assert!(size_of::<IoctlGntallocDeallocGref>() == 16);

/// `include/uapi/xen/gntalloc.h`: `struct ioctl_gntalloc_unmap_notify`
/// (the same layout as gntdev's `struct ioctl_gntdev_unmap_notify`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct IoctlUnmapNotify {
    /// In: `mmap` offset of the mapping plus the byte offset inside it.
    pub index: u64,
    /// In: `UNMAP_NOTIFY_CLEAR_BYTE | UNMAP_NOTIFY_SEND_EVENT`.
    pub action: u32,
    /// In: a local event-channel port (bound through `/dev/xen/evtchn`).
    pub event_channel_port: u32,
}
const _: () = assert!(size_of::<IoctlUnmapNotify>() == 16);

/// `GNTALLOC_FLAG_WRITABLE`.
pub(crate) const GNTALLOC_FLAG_WRITABLE: u16 = 1;
/// `UNMAP_NOTIFY_CLEAR_BYTE`.
pub(crate) const UNMAP_NOTIFY_CLEAR_BYTE: u32 = 0x1;
/// `UNMAP_NOTIFY_SEND_EVENT`.
pub(crate) const UNMAP_NOTIFY_SEND_EVENT: u32 = 0x2;

/// `IOCTL_GNTALLOC_ALLOC_GREF`.
pub(crate) const IOCTL_GNTALLOC_ALLOC_GREF: Opcode =
    ioc_none(b'G', 5, size_of::<IoctlGntallocAllocGref>());
/// `IOCTL_GNTALLOC_DEALLOC_GREF`.
pub(crate) const IOCTL_GNTALLOC_DEALLOC_GREF: Opcode =
    ioc_none(b'G', 6, size_of::<IoctlGntallocDeallocGref>());
/// `IOCTL_GNTALLOC_SET_UNMAP_NOTIFY`.
pub(crate) const IOCTL_GNTALLOC_SET_UNMAP_NOTIFY: Opcode =
    ioc_none(b'G', 7, size_of::<IoctlUnmapNotify>());

/// An open `/dev/xen/gntalloc`; cheap to clone (shared descriptor).
///
/// # Examples
///
/// ```no_run
/// use coresident_xen::Gntalloc;
///
/// let shared = Gntalloc::open()?.share(0, 4)?;
/// # drop(shared);
/// # Ok::<(), coresident_xen::GrantError>(())
/// ```
#[derive(Debug)]
pub struct Gntalloc<S: Sys = Linux> {
    dev: Arc<Device<S>>,
}

impl<S: Sys> Clone for Gntalloc<S> {
    fn clone(&self) -> Self {
        Self {
            dev: Arc::clone(&self.dev),
        }
    }
}

impl Gntalloc<Linux> {
    /// Opens `/dev/xen/gntalloc`.
    ///
    /// # Errors
    ///
    /// [`GrantError::Open`] (`ENOENT`: not a Xen domain or the module is
    /// not loaded).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::{Gntalloc, GrantError};
    ///
    /// match Gntalloc::open() {
    ///     Ok(g) => drop(g),
    ///     Err(GrantError::Open(e)) => eprintln!("no gntalloc ({e}): not a Xen domain?"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok::<(), coresident_xen::GrantError>(())
    /// ```
    pub fn open() -> Result<Self, GrantError> {
        Self::open_with(Linux)
    }
}

impl<S: Sys> Gntalloc<S> {
    /// Opens `/dev/xen/gntalloc` through `sys`.
    ///
    /// # Errors
    ///
    /// [`GrantError::Open`].
    pub(crate) fn open_with(sys: S) -> Result<Self, GrantError> {
        let dev = Device::open(sys, c"/dev/xen/gntalloc").map_err(GrantError::Open)?;
        Ok(Self { dev: Arc::new(dev) })
    }

    /// Allocates `pages` zeroed pages, grants them to `domid` (writable),
    /// and maps them here.
    ///
    /// # Errors
    ///
    /// [`GrantError::InvalidCount`] for 0 or more than [`MAX_PAGES`] pages;
    /// [`GrantError::Ioctl`] (`ENOMEM`, `ENOSPC`: the driver's `limit`
    /// module parameter, 1024 pages by default) and [`GrantError::Mmap`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::Gntalloc;
    ///
    /// let gntalloc = Gntalloc::open()?;
    /// let shared = gntalloc.share(0, 4)?; // 4 zeroed pages, writable by dom0
    /// # drop(shared);
    /// # Ok::<(), coresident_xen::GrantError>(())
    /// ```
    pub fn share(&self, domid: DomId, pages: usize) -> Result<SharedPages<S>, GrantError> {
        if pages == 0 || pages > MAX_PAGES {
            return Err(GrantError::InvalidCount(pages));
        }
        let count = u32::try_from(pages).map_err(|_| GrantError::InvalidCount(pages))?;
        // Header + `pages` grant refs, in u64 words for the struct's alignment.
        let bytes = ALLOC_HEADER + pages * size_of::<u32>();
        let mut buf = vec![0u64; bytes.div_ceil(8).max(3)];
        let head = IoctlGntallocAllocGref {
            domid,
            flags: GNTALLOC_FLAG_WRITABLE,
            count,
            ..Default::default()
        };
        buf.as_mut_bytes()[..ALLOC_HEADER].copy_from_slice(&head.as_bytes()[..ALLOC_HEADER]);
        // SAFETY:
        // - `buf` holds the 16-byte header and `count` u32 slots after it,
        //   which is all the driver reads (header) and writes (header,
        //   `count` refs); `max(3)` also covers the 24-byte `sizeof`.
        // - `buf` is 8-aligned (u64 words), the struct's alignment.
        let r = unsafe {
            self.dev.sys.ioctl(
                self.dev.fd(),
                IOCTL_GNTALLOC_ALLOC_GREF,
                buf.as_mut_ptr().cast(),
            )
        };
        r.map_err(|errno| GrantError::Ioctl {
            op: GrantOp::Alloc,
            errno,
        })?;
        let raw = buf.as_bytes();
        let index = u64::read_from_bytes(&raw[8..16]).unwrap_or(0);
        let refs: Box<[GrantRef]> = raw[ALLOC_HEADER..bytes]
            .chunks_exact(4)
            .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        // From here on, dropping `granted` deallocates the grants.
        let granted = Granted {
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
        Ok(SharedPages { map, granted, refs })
    }
}

/// The allocation, deallocated on drop (after the mapping is gone).
#[derive(Debug)]
struct Granted<S: Sys> {
    dev: Arc<Device<S>>,
    index: u64,
    count: u32,
}

impl<S: Sys> Drop for Granted<S> {
    fn drop(&mut self) {
        let mut arg = IoctlGntallocDeallocGref {
            index: self.index,
            count: self.count,
            _pad: 0,
        };
        // SAFETY:
        // - `arg` is a whole `ioctl_gntalloc_dealloc_gref`, the only thing
        //   the driver reads for this opcode; it writes nothing.
        // - `arg` is a properly aligned local.
        let _ = unsafe {
            self.dev.sys.ioctl(
                self.dev.fd(),
                IOCTL_GNTALLOC_DEALLOC_GREF,
                (&raw mut arg).cast(),
            )
        };
    }
}

/// Pages we granted to another domain, mapped here.
///
/// Drop unmaps them and ends the grants; the driver frees the pages when
/// the peer has unmapped them too, and then runs the unmap-notify action
/// set with [`SharedPages::set_unmap_notify`].
///
/// # Examples
///
/// ```no_run
/// use coresident_xen::Gntalloc;
///
/// let shared = Gntalloc::open()?.share(0, 4)?;
/// println!("{} pages granted to dom0", shared.refs().len());
/// drop(shared); // access ended, pages freed once dom0 unmaps
/// # Ok::<(), coresident_xen::GrantError>(())
/// ```
#[derive(Debug)]
pub struct SharedPages<S: Sys = Linux> {
    // Field order is drop order: unmap first, then deallocate.
    map: Mapping<S>,
    granted: Granted<S>,
    refs: Box<[GrantRef]>,
}

impl<S: Sys> SharedPages<S> {
    /// The grant references, one per page, in mapping order: what the peer
    /// passes to `IOCTL_GNTDEV_MAP_GRANT_REF`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::Gntalloc;
    ///
    /// let shared = Gntalloc::open()?.share(0, 4)?;
    /// // What dom0 passes to its gntdev to map the same pages.
    /// println!("grant refs {:?}", shared.refs());
    /// # Ok::<(), coresident_xen::GrantError>(())
    /// ```
    pub fn refs(&self) -> &[GrantRef] {
        &self.refs
    }

    /// The mapping (raw pointer and length).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::Gntalloc;
    ///
    /// let shared = Gntalloc::open()?.share(0, 4)?;
    /// println!("mapped at {:p}", shared.mapping().as_ptr());
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
    /// use coresident_xen::Gntalloc;
    ///
    /// let shared = Gntalloc::open()?.share(0, 4)?;
    /// let p = shared.as_ptr(); // atomics and volatile accesses only: dom0 writes too
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
    /// use coresident_xen::Gntalloc;
    ///
    /// let shared = Gntalloc::open()?.share(0, 4)?;
    /// println!("{} bytes", shared.len()); // 4 × 4096
    /// # Ok::<(), coresident_xen::GrantError>(())
    /// ```
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Always `false`: a share has at least one page.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::Gntalloc;
    ///
    /// let shared = Gntalloc::open()?.share(0, 4)?;
    /// println!("{}", shared.is_empty()); // false: at least one page
    /// # Ok::<(), coresident_xen::GrantError>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// What the driver does when these pages are finally released (we
    /// unmapped and deallocated, or our process died): clear the byte at
    /// `notify.clear_byte` (so the peer's mapping sees 0) and/or signal
    /// `notify.event`, a local port bound through `/dev/xen/evtchn`.
    ///
    /// # Errors
    ///
    /// [`GrantError::OffsetOutOfRange`]; [`GrantError::Ioctl`] (`EINVAL`
    /// for a port that this domain's evtchn driver does not know).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::{Gntalloc, UnmapNotify};
    ///
    /// let shared = Gntalloc::open()?.share(0, 4)?;
    /// // When this side goes, clear byte 0 of the pages (signal no port here).
    /// shared.set_unmap_notify(UnmapNotify { clear_byte: Some(0), event: None })?;
    /// # Ok::<(), coresident_xen::GrantError>(())
    /// ```
    pub fn set_unmap_notify(&self, notify: UnmapNotify) -> Result<(), GrantError> {
        let mut arg = notify_arg(self.granted.index, self.map.len(), notify)?;
        let dev = &self.granted.dev;
        // SAFETY:
        // - `arg` is a whole `ioctl_gntalloc_unmap_notify`, the only thing
        //   the driver reads for this opcode; it writes nothing.
        // - `arg` is a properly aligned local.
        let r = unsafe {
            dev.sys.ioctl(
                dev.fd(),
                IOCTL_GNTALLOC_SET_UNMAP_NOTIFY,
                (&raw mut arg).cast(),
            )
        };
        r.map(|_| ()).map_err(|errno| GrantError::Ioctl {
            op: GrantOp::SetUnmapNotify,
            errno,
        })
    }
}

/// Builds the unmap-notify argument for a mapping at `index` of `len` bytes.
pub(crate) fn notify_arg(
    index: u64,
    len: usize,
    notify: UnmapNotify,
) -> Result<IoctlUnmapNotify, GrantError> {
    let offset = notify.clear_byte.unwrap_or(0);
    if offset >= len {
        return Err(GrantError::OffsetOutOfRange { offset, len });
    }
    let mut action = 0;
    if notify.clear_byte.is_some() {
        action |= UNMAP_NOTIFY_CLEAR_BYTE;
    }
    let port: EvtchnPort = match notify.event {
        Some(p) => {
            action |= UNMAP_NOTIFY_SEND_EVENT;
            p
        }
        None => 0,
    };
    // `offset < len <= MAX_PAGES * PAGE_SIZE`, far below u64::MAX - index
    // for any index the driver hands out; checked anyway.
    let index = u64::try_from(offset)
        .ok()
        .and_then(|o| index.checked_add(o))
        .ok_or(GrantError::OffsetOutOfRange { offset, len })?;
    Ok(IoctlUnmapNotify {
        index,
        action,
        event_channel_port: port,
    })
}
