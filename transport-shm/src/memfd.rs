//! The shared region: a sealed memfd mapped shared read/write.
//!
//! The creating side makes an anonymous memory file (`memfd_create` with
//! `MFD_ALLOW_SEALING | MFD_CLOEXEC`), sizes it with `ftruncate`, then seals it with
//! `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`: from then on nobody, not even the
//! creator, can change its size or its seals. The attaching side receives the
//! descriptor from a peer it does not trust and validates it before mapping it, in an
//! order that never lets the peer's file system run code on our behalf:
//!
//! 1. `F_GET_SEALS` succeeds. Only shmem files (memfds, tmpfs files) and hugetlbfs
//!    files support seals, and the call is answered by the kernel's shmem code alone.
//!    Anything else (a pipe, a socket, a disk file, a FUSE file whose server could
//!    leave `fstat` blocked forever) fails here, before any call that reaches another
//!    file system;
//! 2. the seals include `F_SEAL_SHRINK | F_SEAL_GROW`: without them the peer could
//!    shrink the file after we mapped it, and our next access would raise `SIGBUS`;
//! 3. `fstat` says it is a regular file and `fstatfs` that it lives on tmpfs (ordinary
//!    memfds do; hugetlbfs memfds do not): both are answered by shmem now;
//! 4. its size equals the size the hello declared, and lies within
//!    [`MIN_REGION_SIZE`]`..=`[`MAX_REGION_SIZE`].
//!
//! A tmpfs file opened by path starts out with `F_SEAL_SEAL` and can never gain the
//! shrink/grow seals, so step 2 rejects it too.
//!
//! A descriptor that fails is not closed inline: closing a FUSE file sends its server a
//! `FLUSH` that it may never answer. It goes to [`close_untrusted`], which closes it on
//! a background thread.
//!
//! The mapping is handed out as a raw pointer and a length, never as `&[u8]` or
//! `&mut [u8]`: the peer writes these bytes concurrently, so a reference to them would
//! be unsound. The ring accesses them with atomics and volatile copies only.

use core::fmt;
use core::ptr::NonNull;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{FileType, MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

use crate::error::{SysContext, SysError};

/// The smallest region this crate creates or accepts, in bytes (one page).
pub const MIN_REGION_SIZE: usize = 4096;

/// The largest region this crate creates or accepts, in bytes (1 GiB).
pub const MAX_REGION_SIZE: usize = 1 << 30;

/// `TMPFS_MAGIC` (`include/uapi/linux/magic.h`): the file system of ordinary memfds
/// (the kernel's internal shm mount). A hugetlbfs memfd (`MFD_HUGETLB`) reports
/// `HUGETLBFS_MAGIC` instead and is refused: this crate never creates one, and its
/// faults depend on a separate, exhaustible page pool.
const TMPFS_MAGIC: u64 = 0x0102_1994;

/// The seals an attaching side requires: without them the peer could resize the file
/// under our mapping.
const REQUIRED_SEALS: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW);

/// Creating, validating or mapping a shared region failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegionError {
    /// The requested or declared size lies outside
    /// [`MIN_REGION_SIZE`]`..=`[`MAX_REGION_SIZE`].
    SizeOutOfRange {
        /// The offending size in bytes.
        size: u64,
    },
    /// The descriptor is not a regular file (a pipe, a socket, an eventfd...).
    NotRegularFile,
    /// The descriptor is a regular file but not a memfd: it does not support seals.
    NotMemfd,
    /// The memfd lacks `F_SEAL_SHRINK` or `F_SEAL_GROW`, so the peer could resize it
    /// under our mapping.
    NotSealed {
        /// The seals it does carry (`F_SEAL_*` bits).
        seals: u32,
    },
    /// The file's size differs from the size the peer declared.
    SizeMismatch {
        /// The size the peer declared.
        declared: u64,
        /// The size `fstat` reports.
        actual: u64,
    },
    /// A system call failed (for instance `mmap` of a read-only or write-sealed file).
    Sys(SysError),
}

impl fmt::Display for RegionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SizeOutOfRange { size } => write!(
                f,
                "shared region size {size} is outside {MIN_REGION_SIZE}..={MAX_REGION_SIZE} bytes"
            ),
            Self::NotRegularFile => f.write_str("shared region descriptor is not a regular file"),
            Self::NotMemfd => f.write_str(
                "shared region descriptor is not a memfd (not on tmpfs, or no seal support)",
            ),
            Self::NotSealed { seals } => write!(
                f,
                "shared region memfd lacks the shrink/grow seals (seals: {seals:#x}); \
                 the peer could resize it under the mapping"
            ),
            Self::SizeMismatch { declared, actual } => write!(
                f,
                "shared region is {actual} bytes but the peer declared {declared}"
            ),
            Self::Sys(e) => write!(f, "shared region: {e}"),
        }
    }
}

impl std::error::Error for RegionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Sys(e) => Some(e),
            _ => None,
        }
    }
}

impl From<SysError> for RegionError {
    fn from(e: SysError) -> Self {
        Self::Sys(e)
    }
}

/// Checks that `size` is a region size this crate creates or accepts.
fn check_size(size: u64) -> Result<usize, RegionError> {
    match usize::try_from(size) {
        Ok(s) if (MIN_REGION_SIZE..=MAX_REGION_SIZE).contains(&s) => Ok(s),
        _ => Err(RegionError::SizeOutOfRange { size }),
    }
}

/// Validates a descriptor received from a peer as a shared region of `declared` bytes,
/// without mapping it. Returns the size.
///
/// # Errors
///
/// See the module docs for the checks; each failure is its own [`RegionError`] variant.
pub fn validate_memfd(fd: BorrowedFd<'_>, declared: u64) -> Result<usize, RegionError> {
    let size = check_size(declared)?;
    // First, and alone: answered by shmem or hugetlbfs only, never by another file
    // system (see the module docs).
    let seals = match rustix::fs::fcntl_get_seals(fd) {
        Ok(seals) => seals,
        Err(rustix::io::Errno::INVAL) => return Err(RegionError::NotMemfd),
        Err(e) => return Err(SysError::new("fcntl(F_GET_SEALS)", e).into()),
    };
    if !seals.contains(REQUIRED_SEALS) {
        return Err(RegionError::NotSealed {
            seals: seals.bits(),
        });
    }
    // Now known to be a shmem or hugetlbfs file: these calls stay in the kernel.
    let stat = rustix::fs::fstat(fd).sys("fstat")?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(RegionError::NotRegularFile);
    }
    let fs = rustix::fs::fstatfs(fd).sys("fstatfs")?;
    // `f_type` is a signed or unsigned word depending on the architecture; the magic
    // fits either way.
    #[allow(clippy::unnecessary_cast, clippy::cast_sign_loss)]
    if fs.f_type as u64 != TMPFS_MAGIC {
        return Err(RegionError::NotMemfd);
    }
    // Read after the seal check: once shrink/grow are sealed the size cannot change.
    let actual = u64::try_from(stat.st_size).unwrap_or(0);
    if actual != declared {
        return Err(RegionError::SizeMismatch { declared, actual });
    }
    Ok(size)
}

/// Closes a descriptor received from a peer that failed validation, without letting
/// the peer block us: a FUSE file's `close` sends its server a `FLUSH` it may never
/// answer. The descriptor goes to one background thread that closes what it is given
/// in order. If that thread is stuck (every queued close blocked) or cannot be
/// started, the descriptor is leaked rather than closed here, and counted in
/// [`leaked_untrusted`]; a hostile peer can then exhaust descriptors, never hang us.
pub fn close_untrusted(fd: OwnedFd) {
    use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
    use std::sync::OnceLock;
    static CLOSER: OnceLock<Option<SyncSender<OwnedFd>>> = OnceLock::new();
    let closer = CLOSER.get_or_init(|| {
        let (tx, rx) = sync_channel::<OwnedFd>(1024);
        std::thread::Builder::new()
            .name("coresident-shm-closer".into())
            .spawn(move || {
                for fd in rx {
                    drop(fd);
                }
            })
            .ok()
            .map(|_| tx)
    });
    let fd = match closer {
        Some(tx) => match tx.try_send(fd) {
            Ok(()) => return,
            Err(TrySendError::Full(fd) | TrySendError::Disconnected(fd)) => fd,
        },
        None => fd,
    };
    // Relaxed: a statistics counter.
    LEAKED.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    tracing::warn!(
        fd = std::os::fd::AsRawFd::as_raw_fd(&fd),
        "coresident-shm: leaking an untrusted descriptor (its closer thread is stuck)"
    );
    core::mem::forget(fd);
}

/// Untrusted descriptors leaked by [`close_untrusted`].
static LEAKED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// How many untrusted descriptors [`close_untrusted`] had to leak so far.
#[must_use]
pub fn leaked_untrusted() -> u64 {
    // Relaxed: a statistics counter.
    LEAKED.load(core::sync::atomic::Ordering::Relaxed)
}

/// A shared memory region backed by a sealed memfd, mapped shared read/write.
///
/// Unmapped when dropped; the descriptor is closed then too (the memory itself lives on
/// while the peer keeps its own mapping or descriptor).
pub struct MemfdRegion {
    /// Start of the mapping; page-aligned, valid for `len` bytes until `drop`.
    ptr: NonNull<u8>,
    /// Length of the mapping in bytes, in `MIN_REGION_SIZE..=MAX_REGION_SIZE`; equal to
    /// the sealed file size.
    len: usize,
    /// The memfd, kept to pass it to a peer.
    fd: OwnedFd,
}

// SAFETY:
// - `MemfdRegion` owns its mapping and descriptor; nothing in it is tied to a thread.
// - It hands out only a raw pointer; all accesses through it are the caller's `unsafe`
//   code, which must synchronise (atomics, volatile copies) as it would across processes.
unsafe impl Send for MemfdRegion {}
// SAFETY:
// - `&MemfdRegion` exposes only the pointer, length and descriptor, all read-only
//   fields; concurrent reads of them are fine.
// - The memory behind the pointer is already shared with another process, so sharing it
//   between threads adds no new hazard: every access goes through raw pointers.
unsafe impl Sync for MemfdRegion {}

impl fmt::Debug for MemfdRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemfdRegion")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .field("fd", &self.fd)
            .finish()
    }
}

impl MemfdRegion {
    /// Creates a new sealed memfd of `len` bytes (zero-filled) and maps it.
    ///
    /// `name` shows up in `/proc/<pid>/fd` and `/proc/<pid>/maps` as `memfd:<name>`.
    ///
    /// # Errors
    ///
    /// [`RegionError::SizeOutOfRange`] if `len` is out of bounds; [`RegionError::Sys`]
    /// if a system call fails.
    pub fn create(name: &str, len: usize) -> Result<Self, RegionError> {
        let len64 = u64::try_from(len).unwrap_or(u64::MAX);
        check_size(len64)?;
        let fd = rustix::fs::memfd_create(name, MemfdFlags::ALLOW_SEALING | MemfdFlags::CLOEXEC)
            .sys("memfd_create")?;
        rustix::fs::ftruncate(&fd, len64).sys("ftruncate")?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .sys("fcntl(F_ADD_SEALS)")?;
        Self::map(fd, len)
    }

    /// Validates a descriptor received from a peer (see [`validate_memfd`]) and maps it.
    ///
    /// On error the descriptor is closed ([`close_untrusted`]).
    ///
    /// # Errors
    ///
    /// Any [`RegionError`]: see the module docs for the checks.
    pub fn attach(fd: OwnedFd, declared: u64) -> Result<Self, RegionError> {
        match validate_memfd(fd.as_fd(), declared) {
            Ok(len) => Self::map(fd, len),
            Err(e) => {
                close_untrusted(fd);
                Err(e)
            }
        }
    }

    /// Maps `len` bytes of `fd` shared read/write.
    fn map(fd: OwnedFd, len: usize) -> Result<Self, RegionError> {
        // SAFETY:
        // - The address hint is null, so the kernel picks a fresh range and no existing
        //   mapping (or Rust object) is replaced.
        // - `len` is non-zero (`>= MIN_REGION_SIZE`) and equals the sealed file size, so
        //   every mapped page is backed by the file and cannot be truncated away.
        // - The memory is only ever accessed through raw pointers (atomics, volatile
        //   copies), so the peer's concurrent writes do not break Rust aliasing rules.
        let ptr = unsafe {
            rustix::mm::mmap(
                core::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )
        }
        .sys("mmap")?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(RegionError::Sys(SysError {
            op: "mmap",
            errno: rustix::io::Errno::NOMEM.raw_os_error(),
        }))?;
        Ok(Self { ptr, len, fd })
    }

    /// The start of the mapping (page-aligned).
    ///
    /// Valid for reads and writes of [`len`](Self::len) bytes while `self` lives. The
    /// peer writes these bytes concurrently: never make a `&` or `&mut` to them; use
    /// atomics or volatile copies.
    #[must_use]
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The length of the mapping in bytes (the sealed size of the memfd).
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: a region is at least [`MIN_REGION_SIZE`] bytes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl AsFd for MemfdRegion {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

// SAFETY:
// - `as_ptr()..as_ptr() + len()` is one `mmap` mapping, valid for reads and writes
//   until the `MemfdRegion` is dropped, and page-aligned (so 128-byte aligned);
// - this crate never makes a Rust reference to the mapped bytes, only raw pointers.
unsafe impl coresident::SharedRegion for MemfdRegion {
    fn as_ptr(&self) -> *mut u8 {
        MemfdRegion::as_ptr(self)
    }

    fn len(&self) -> usize {
        MemfdRegion::len(self)
    }
}

impl Drop for MemfdRegion {
    fn drop(&mut self) {
        // SAFETY:
        // - `ptr` and `len` describe exactly the mapping made in `map`, not yet unmapped.
        // - No reference into the mapping exists (only raw pointers are handed out), and
        //   callers must not use those pointers after dropping the region.
        let res = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
        // munmap of a valid mapping cannot fail; nothing useful to do if it did.
        let _ = res;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_map_and_attach_share_memory() {
        let a = MemfdRegion::create("test", 8192).unwrap();
        let dup = a.fd.try_clone().unwrap();
        let b = MemfdRegion::attach(dup, 8192).unwrap();
        assert_eq!(b.len(), 8192);
        // SAFETY:
        // - offset 100 is within both 8192-byte mappings;
        // - no other thread touches them.
        unsafe {
            a.as_ptr().add(100).write_volatile(0xA5);
            assert_eq!(b.as_ptr().add(100).read_volatile(), 0xA5);
        }
    }

    #[test]
    fn size_bounds() {
        assert_eq!(
            MemfdRegion::create("x", 10).unwrap_err(),
            RegionError::SizeOutOfRange { size: 10 }
        );
        assert!(matches!(
            MemfdRegion::create("x", MAX_REGION_SIZE + 1),
            Err(RegionError::SizeOutOfRange { .. })
        ));
    }

    #[test]
    fn size_mismatch_is_rejected() {
        let a = MemfdRegion::create("test", 8192).unwrap();
        let dup = a.fd.try_clone().unwrap();
        assert_eq!(
            MemfdRegion::attach(dup, 16384).unwrap_err(),
            RegionError::SizeMismatch {
                declared: 16384,
                actual: 8192
            }
        );
    }

    #[test]
    fn unsealed_memfd_is_rejected() {
        let fd = rustix::fs::memfd_create("x", MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, 8192).unwrap();
        assert!(matches!(
            MemfdRegion::attach(fd, 8192),
            Err(RegionError::NotSealed { .. })
        ));
    }

    #[test]
    fn pipe_is_not_a_region() {
        // Refused by the seal check, before `fstat` (see the module docs).
        let (r, _w) = rustix::pipe::pipe().unwrap();
        assert_eq!(
            MemfdRegion::attach(r, 8192).unwrap_err(),
            RegionError::NotMemfd
        );
    }
}
