//! The system-call layer under the device wrappers, swappable in tests.
//!
//! Every device wrapper ([`Gntalloc`](crate::linux::gntalloc::Gntalloc),
//! [`Gntdev`](crate::linux::gntdev::Gntdev), [`Evtchn`](crate::linux::evtchn::Evtchn),
//! [`Privcmd`](crate::linux::privcmd::Privcmd)), and the
//! [`XenTransport`](crate::transport::XenTransport) over them, is
//! generic over a [`Sys`]: [`Linux`] issues the real calls through `rustix`,
//! a unit test substitutes a fake that simulates the drivers in process.
//!
//! # Examples
//!
//! ```
//! use coresident_xen::linux::error::Errno;
//! use coresident_xen::linux::sys::{Linux, Sys};
//!
//! // The real layer, on a device every Linux has.
//! assert!(Linux.open(c"/dev/null").is_ok());
//! assert_eq!(Linux.open(c"/dev/xen/no-such-device").err(), Some(Errno::NOENT));
//! ```

use core::ffi::{c_int, c_void};
use core::fmt;
use core::ptr::NonNull;
use core::time::Duration;
use std::ffi::CStr;
use std::os::fd::{BorrowedFd, OwnedFd};

pub use rustix::io::Errno;
pub use rustix::ioctl::Opcode;

/// The page size of Xen grants (`XEN_PAGE_SIZE`, 4 KiB on every
/// architecture Xen supports), and of the Linux x86 kernels we target.
///
/// # Examples
///
/// ```
/// use coresident_xen::{PAGE_SIZE, XEN_PAGE_SIZE};
///
/// assert_eq!(PAGE_SIZE, XEN_PAGE_SIZE); // the grant devices map whole pages
/// ```
pub const PAGE_SIZE: usize = 4096;

/// `_IOC(_IOC_NONE, ty, nr, size)`: the encoding all four Xen drivers use.
pub(crate) const fn ioc_none(ty: u8, nr: u8, size: usize) -> Opcode {
    rustix::ioctl::opcode::from_components(rustix::ioctl::Direction::None, ty, nr, size)
}

/// The system calls the device wrappers make.
///
/// Implementations: [`Linux`] (real calls), the default type parameter of
/// every device wrapper and of [`XenTransport`](crate::XenTransport), and, in
/// this crate's unit tests, a fake that simulates the Xen drivers. Only the
/// crate's own constructors (`open_with`, `with_sys`) take another `Sys`, so
/// outside the crate `S` is always [`Linux`]: the trait is public because it
/// appears in those types' parameters.
///
/// # Examples
///
/// ```
/// use coresident_xen::linux::sys::{Linux, Sys};
/// use coresident_xen::SharedPages;
///
/// // Code generic over the layer names the parameter; `S` is `Linux` here.
/// fn pages<S: Sys>(p: &SharedPages<S>) -> usize {
///     p.refs().len()
/// }
/// let _: fn(&SharedPages<Linux>) -> usize = pages;
/// ```
pub trait Sys: Clone + fmt::Debug + Send + Sync + 'static {
    /// `open(path, O_RDWR | O_CLOEXEC | O_NONBLOCK)`.
    ///
    /// # Errors
    ///
    /// The `errno` of the failed call.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::linux::error::Errno;
    /// use coresident_xen::linux::sys::{Linux, Sys};
    ///
    /// assert!(Linux.open(c"/dev/null").is_ok());
    /// assert_eq!(Linux.open(c"/no/such/device").err(), Some(Errno::NOENT));
    /// ```
    fn open(&self, path: &CStr) -> Result<OwnedFd, Errno>;

    /// `ioctl(fd, opcode, arg)`; returns the call's non-negative result.
    ///
    /// # Errors
    ///
    /// The `errno` of the failed call.
    ///
    /// # Safety
    ///
    /// - `arg` is valid for reads and writes of every byte that the driver
    ///   behind `fd` accesses for `opcode`, given the argument's contents
    ///   (for the variable-size Xen ioctls: the header plus `count` entries).
    /// - `arg` is aligned for the argument structure of `opcode`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::fd::AsFd;
    /// use coresident_xen::linux::error::Errno;
    /// use coresident_xen::linux::sys::{Linux, Opcode, Sys};
    ///
    /// let fd = Linux.open(c"/dev/null")?;
    /// let mut arg = [0u64; 4];
    /// let op: Opcode = 0x4705; // `_IOC(_IOC_NONE, 'G', 5, 0)`: not /dev/null's
    /// // SAFETY:
    /// // - `arg` is valid for reads and writes of 32 bytes, more than any
    /// //   driver accesses for an opcode of size 0;
    /// // - it is aligned for any argument structure of 8-byte alignment.
    /// let r = unsafe { Linux.ioctl(fd.as_fd(), op, arg.as_mut_ptr().cast()) };
    /// assert_eq!(r, Err(Errno::NOTTY));
    /// # Ok::<(), Errno>(())
    /// ```
    unsafe fn ioctl(
        &self,
        fd: BorrowedFd<'_>,
        opcode: Opcode,
        arg: *mut c_void,
    ) -> Result<c_int, Errno>;

    /// `mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset)`: a
    /// fresh mapping at an address the kernel picks (nothing existing is
    /// replaced). The caller owns the returned range and unmaps it with
    /// [`Sys::munmap`].
    ///
    /// # Errors
    ///
    /// The `errno` of the failed call.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::fd::AsFd;
    /// use coresident_xen::linux::sys::{Linux, Sys};
    ///
    /// // /dev/zero stands in for a grant device here.
    /// let fd = Linux.open(c"/dev/zero")?;
    /// let p = Linux.mmap_shared(fd.as_fd(), 4096, 0)?;
    /// // SAFETY: `p` is the fresh 4096-byte mapping, touched by nothing else.
    /// unsafe {
    ///     p.as_ptr().write_volatile(7);
    ///     assert_eq!(p.as_ptr().read_volatile(), 7);
    ///     Linux.munmap(p, 4096)?;
    /// }
    /// # Ok::<(), coresident_xen::linux::error::Errno>(())
    /// ```
    fn mmap_shared(
        &self,
        fd: BorrowedFd<'_>,
        len: usize,
        offset: u64,
    ) -> Result<NonNull<u8>, Errno>;

    /// `munmap(ptr, len)`.
    ///
    /// # Errors
    ///
    /// The `errno` of the failed call.
    ///
    /// # Safety
    ///
    /// - `ptr .. ptr + len` is a mapping returned by [`Sys::mmap_shared`] of
    ///   this `Sys`, not yet unmapped.
    /// - Nothing accesses the range after this call.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::fd::AsFd;
    /// use coresident_xen::linux::sys::{Linux, Sys};
    ///
    /// // /dev/zero stands in for a grant device here.
    /// let fd = Linux.open(c"/dev/zero")?;
    /// let p = Linux.mmap_shared(fd.as_fd(), 4096, 0)?;
    /// // SAFETY: the range is the mapping just made, and nothing uses it after.
    /// unsafe { Linux.munmap(p, 4096)? };
    /// # Ok::<(), coresident_xen::linux::error::Errno>(())
    /// ```
    unsafe fn munmap(&self, ptr: NonNull<u8>, len: usize) -> Result<(), Errno>;

    /// `read(fd, buf)`.
    ///
    /// # Errors
    ///
    /// The `errno` of the failed call (`EAGAIN` when nothing is ready).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::fd::AsFd;
    /// use coresident_xen::linux::sys::{Linux, Sys};
    ///
    /// let fd = Linux.open(c"/dev/null")?;
    /// assert_eq!(Linux.read(fd.as_fd(), &mut [0; 8])?, 0); // end of file
    /// # Ok::<(), coresident_xen::linux::error::Errno>(())
    /// ```
    fn read(&self, fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno>;

    /// `write(fd, buf)`.
    ///
    /// # Errors
    ///
    /// The `errno` of the failed call.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::fd::AsFd;
    /// use coresident_xen::linux::sys::{Linux, Sys};
    ///
    /// let fd = Linux.open(c"/dev/null")?;
    /// assert_eq!(Linux.write(fd.as_fd(), b"gone")?, 4);
    /// # Ok::<(), coresident_xen::linux::error::Errno>(())
    /// ```
    fn write(&self, fd: BorrowedFd<'_>, buf: &[u8]) -> Result<usize, Errno>;

    /// `poll(fd, POLLIN, timeout)`: `true` if `fd` is readable, `false` on
    /// timeout. `None` waits forever.
    ///
    /// # Errors
    ///
    /// The `errno` of the failed call (`EINTR` is retried).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use std::os::fd::AsFd;
    /// use coresident_xen::linux::sys::{Linux, Sys};
    ///
    /// let fd = Linux.open(c"/dev/null")?;
    /// assert!(Linux.poll_readable(fd.as_fd(), Some(Duration::ZERO))?); // /dev/null: always
    /// # Ok::<(), coresident_xen::linux::error::Errno>(())
    /// ```
    fn poll_readable(&self, fd: BorrowedFd<'_>, timeout: Option<Duration>) -> Result<bool, Errno>;
}

/// The real system calls, through `rustix`.
///
/// # Examples
///
/// ```
/// use coresident_xen::linux::sys::Linux;
/// use coresident_xen::Evtchn;
///
/// // The real system calls: what `Evtchn::open()` and the others use.
/// let ev: Result<Evtchn<Linux>, _> = Evtchn::open(); // an error off Xen
/// # drop(ev);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Linux;

/// An ioctl whose argument is a raw pointer and whose output is the call's
/// return value (the Xen drivers return ports that way).
struct RawIoctl {
    opcode: Opcode,
    arg: *mut c_void,
}

// SAFETY:
// - `opcode` returns the opcode the caller of `Linux::ioctl` chose, and the
//   caller of `Linux::ioctl` guarantees that `arg` matches it.
// - `IS_MUTATING` is true: the Xen drivers write results into the argument.
// - `output_from_ptr` reads nothing through the pointer; it returns the
//   call's return value, which rustix has already checked to be non-negative.
unsafe impl rustix::ioctl::Ioctl for RawIoctl {
    type Output = c_int;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        self.opcode
    }

    fn as_ptr(&mut self) -> *mut c_void {
        self.arg
    }

    unsafe fn output_from_ptr(
        out: rustix::ioctl::IoctlOutput,
        _arg: *mut c_void,
    ) -> rustix::io::Result<c_int> {
        Ok(out)
    }
}

impl Sys for Linux {
    fn open(&self, path: &CStr) -> Result<OwnedFd, Errno> {
        use rustix::fs::{Mode, OFlags};
        rustix::fs::open(
            path,
            OFlags::RDWR | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )
    }

    unsafe fn ioctl(
        &self,
        fd: BorrowedFd<'_>,
        opcode: Opcode,
        arg: *mut c_void,
    ) -> Result<c_int, Errno> {
        // SAFETY:
        // - `RawIoctl` upholds the `Ioctl` contract (see its impl).
        // - The caller guarantees that `arg` is valid, aligned and large
        //   enough for what the driver accesses for `opcode`.
        unsafe { rustix::ioctl::ioctl(fd, RawIoctl { opcode, arg }) }
    }

    fn mmap_shared(
        &self,
        fd: BorrowedFd<'_>,
        len: usize,
        offset: u64,
    ) -> Result<NonNull<u8>, Errno> {
        use rustix::mm::{MapFlags, ProtFlags};
        // SAFETY:
        // - The address hint is null and `MAP_FIXED` is not given, so the
        //   kernel picks a free range: no existing mapping (and so no Rust
        //   object) is replaced or aliased.
        // - The new range is returned as a raw pointer only; no reference
        //   to it is created here.
        let p = unsafe {
            rustix::mm::mmap(
                core::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                offset,
            )
        }?;
        NonNull::new(p.cast::<u8>()).ok_or(Errno::FAULT)
    }

    unsafe fn munmap(&self, ptr: NonNull<u8>, len: usize) -> Result<(), Errno> {
        // SAFETY:
        // - The caller guarantees that the range is a live mapping from
        //   `mmap_shared` (page-aligned, `len` bytes) that it owns.
        // - The caller guarantees that nothing accesses it afterwards.
        unsafe { rustix::mm::munmap(ptr.as_ptr().cast(), len) }
    }

    fn read(&self, fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
        rustix::io::read(fd, buf)
    }

    fn write(&self, fd: BorrowedFd<'_>, buf: &[u8]) -> Result<usize, Errno> {
        rustix::io::write(fd, buf)
    }

    fn poll_readable(&self, fd: BorrowedFd<'_>, timeout: Option<Duration>) -> Result<bool, Errno> {
        poll_readable(fd, timeout)
    }
}

/// `poll(fd, POLLIN, timeout)`, retrying on `EINTR`; `true` if readable
/// (or hung up: a read then reports what happened).
pub(crate) fn poll_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> Result<bool, Errno> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let ts = timeout.map(|d| Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    });
    loop {
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, ts.as_ref()) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `poll` on two descriptors for `POLLIN`, retrying on `EINTR`: which
/// are readable (or hung up); both `false` on timeout.
pub(crate) fn poll_two(
    a: BorrowedFd<'_>,
    b: BorrowedFd<'_>,
    timeout: Option<Duration>,
) -> Result<(bool, bool), Errno> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let ts = timeout.map(|d| Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    });
    loop {
        let mut fds = [
            PollFd::new(&a, PollFlags::IN),
            PollFd::new(&b, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, ts.as_ref()) {
            Ok(_) => {
                let [x, y] = fds.map(|f| !f.revents().is_empty());
                return Ok((x, y));
            }
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// [`poll_two`] on raw descriptors.
///
/// # Errors
///
/// `poll`'s.
pub(crate) fn poll_two_raw(
    a: i32,
    b: i32,
    timeout: Option<Duration>,
) -> Result<(bool, bool), Errno> {
    // SAFETY: the callers pass descriptors their owners keep open for the
    // duration of this call (an XsClient's connection and an EventPort's
    // device, both borrowed by the caller); `poll` only reads their state.
    let (a, b) = unsafe { (BorrowedFd::borrow_raw(a), BorrowedFd::borrow_raw(b)) };
    poll_two(a, b, timeout)
}

/// An open Xen device: the descriptor and the `Sys` that drives it.
#[derive(Debug)]
pub(crate) struct Device<S: Sys> {
    pub(crate) fd: OwnedFd,
    pub(crate) sys: S,
}

impl<S: Sys> Device<S> {
    pub(crate) fn open(sys: S, path: &CStr) -> Result<Self, Errno> {
        let fd = sys.open(path)?;
        Ok(Self { fd, sys })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }
}
