//! [`Mapping`]: pages shared with another domain, as a raw pointer and a
//! length.
//!
//! The other domain can write these pages at any time, so no `&` or `&mut`
//! to them ever exists: they are handed out as `*mut u8` for atomics and
//! volatile copies only (see the crate docs).
//!
//! # Examples
//!
//! ```no_run
//! use coresident_xen::{Gntalloc, Mapping};
//!
//! let pages = Gntalloc::open()?.share(5, 1)?;
//! let m: &Mapping = pages.mapping();
//! // SAFETY: the page is ours and mapped while `pages` lives; domain 5 may
//! // read it, so a volatile write.
//! unsafe { m.as_ptr().write_volatile(1) };
//! assert_eq!(m.len(), 4096);
//! # Ok::<(), coresident_xen::GrantError>(())
//! ```

use core::fmt;
use core::ptr::NonNull;

use crate::linux::sys::{Linux, Sys};

/// A `mmap`ed range of grant pages, unmapped on drop.
///
/// The bytes may change under the program's feet (the peer writes them), so
/// this type never creates a reference to them: use [`Mapping::as_ptr`] with
/// atomics or volatile accesses.
///
/// # Examples
///
/// ```no_run
/// use coresident_xen::Gntalloc;
///
/// let shared = Gntalloc::open()?.share(0, 2)?;
/// let m = shared.mapping();
/// println!("{} bytes at {:p}", m.len(), m.as_ptr()); // unmapped on drop
/// # Ok::<(), coresident_xen::GrantError>(())
/// ```
pub struct Mapping<S: Sys = Linux> {
    /// Start of the mapping; page-aligned. Dangling once `len` is 0.
    ptr: NonNull<u8>,
    /// Length in bytes: a multiple of [`PAGE_SIZE`](crate::PAGE_SIZE), or 0
    /// after [`Mapping::unmap_now`].
    len: usize,
    sys: S,
}

// SAFETY:
// - A `Mapping` owns its range exclusively (it came from a fresh `mmap` and
//   is unmapped only by its own drop), so moving it to another thread moves
//   that ownership; no thread-local state is involved in `munmap`.
// - It hands out only a raw pointer; every access through it is `unsafe`
//   and synchronised by the caller (atomics), as with the peer's writes.
// - `S: Sys` is `Send`.
unsafe impl<S: Sys> Send for Mapping<S> {}

// SAFETY:
// - Through `&Mapping` one gets only the pointer value and the length;
//   no method taking `&self` touches the mapped bytes, so sharing the
//   handle between threads shares nothing but those two values.
// - `S: Sys` is `Sync`.
unsafe impl<S: Sys> Sync for Mapping<S> {}

impl<S: Sys> Mapping<S> {
    /// Takes ownership of a mapping made by `sys.mmap_shared`.
    ///
    /// # Safety
    ///
    /// - `ptr .. ptr + len` was returned by `sys.mmap_shared` and is not
    ///   owned by anything else (it will be unmapped by this value).
    pub(crate) unsafe fn from_raw(ptr: NonNull<u8>, len: usize, sys: S) -> Self {
        Self { ptr, len, sys }
    }

    /// The first byte of the mapping (page-aligned).
    ///
    /// Valid for reads and writes of [`Mapping::len`] bytes while `self`
    /// lives. The peer may write these bytes concurrently: access them only
    /// with atomics or volatile copies, never through `&`/`&mut`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::Gntalloc;
    ///
    /// let shared = Gntalloc::open()?.share(0, 2)?;
    /// let m = shared.mapping();
    /// println!("at {:p}", m.as_ptr()); // page-aligned
    /// # Ok::<(), coresident_xen::GrantError>(())
    /// ```
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length of the mapping in bytes, a multiple of the page size.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::Gntalloc;
    ///
    /// let shared = Gntalloc::open()?.share(0, 2)?;
    /// let m = shared.mapping();
    /// println!("{} bytes", m.len()); // 2 × 4096
    /// # Ok::<(), coresident_xen::GrantError>(())
    /// ```
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (only after it was unmapped early).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::Gntalloc;
    ///
    /// let shared = Gntalloc::open()?.share(0, 2)?;
    /// let m = shared.mapping();
    /// println!("{}", m.is_empty()); // false: a mapping has pages
    /// # Ok::<(), coresident_xen::GrantError>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Unmaps now (idempotent); the owner calls this before the driver
    /// call that must follow the `munmap`.
    pub(crate) fn unmap_now(&mut self) {
        if self.len == 0 {
            return;
        }
        // SAFETY:
        // - `ptr .. ptr + len` came from `sys.mmap_shared` (`from_raw`'s
        //   contract) and has not been unmapped: `len` is set to 0 below,
        //   right after the only unmap.
        // - No reference into the range exists: this type hands out raw
        //   pointers only, whose users promised (`as_ptr`'s contract) not to
        //   use them once the mapping is dropped, and `unmap_now` runs only
        //   from the owner's drop.
        let _ = unsafe { self.sys.munmap(self.ptr, self.len) };
        self.len = 0;
        self.ptr = NonNull::dangling();
    }
}

impl<S: Sys> Drop for Mapping<S> {
    fn drop(&mut self) {
        self.unmap_now();
    }
}

impl<S: Sys> fmt::Debug for Mapping<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}
