//! Memory a peer writes at any time (today the live page of a link; later
//! the `start_info` rings and the grant table), through one checked
//! accessor: every access is bounds- and alignment-checked, then an atomic
//! of `coresident_sync`; no Rust reference to the bytes ever exists
//! (vm-memory's `get_atomic_ref` style, without handing the reference out).
//! Only the accesses in use are here; the rest join as their users move.
//!
//! Under `--cfg loom` the atomics come from `core`: pages shared with
//! another domain cannot be modelled by loom; the protocols loom checks
//! (the ring's, the table's) run on its own memory.

use core::ptr::NonNull;

#[cfg(loom)]
use core::sync::atomic::{AtomicU8, Ordering};
#[cfg(not(loom))]
use coresident_sync::atomic::{AtomicU8, Ordering};

/// An access outside the memory, or misaligned for its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfBounds;

/// `len` bytes at `ptr` that a peer may write at any time: raw pointer and
/// length, every access checked.
#[derive(Clone, Copy, Debug)]
pub struct SharedMem {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY:
// - the memory is accessed only through atomics and volatile copies, which
//   may race with each other and with the peer: no data race in Rust's
//   sense exists between threads of this domain either;
// - the caller of `new` keeps the memory valid while any copy lives.
unsafe impl Send for SharedMem {}
// SAFETY: as for `Send`.
unsafe impl Sync for SharedMem {}

impl SharedMem {
    /// The memory at `ptr`, `len` bytes.
    ///
    /// # Safety
    ///
    /// - `ptr..ptr + len` is valid for reads and writes for as long as the
    ///   value (and its copies) live;
    /// - nothing in this program accesses those bytes except through
    ///   atomics or volatile accesses (the peer, outside it, may write them
    ///   at any time).
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Self {
        Self {
            ptr: NonNull::new(ptr).unwrap_or(NonNull::dangling()),
            len: if ptr.is_null() { 0 } else { len },
        }
    }

    /// The address of `n` bytes at `off`, aligned to `align`.
    fn at(&self, off: usize, n: usize, align: usize) -> Result<*mut u8, OutOfBounds> {
        let end = off.checked_add(n).ok_or(OutOfBounds)?;
        if end > self.len {
            return Err(OutOfBounds);
        }
        let p = self.ptr.as_ptr().wrapping_add(off);
        if (p as usize) % align != 0 {
            return Err(OutOfBounds);
        }
        Ok(p)
    }

    /// Loads the byte at `off` (a live byte: `SeqCst`, so a byte seen set
    /// or clear is ordered with the event channel's notifies around it).
    ///
    /// # Errors
    ///
    /// [`OutOfBounds`].
    pub fn load_u8(&self, off: usize) -> Result<u8, OutOfBounds> {
        let p = self.at(off, 1, 1)?;
        // SAFETY:
        // - `p` is in bounds (checked above; a byte is always aligned) and
        //   valid for the memory's life (`new`'s contract);
        // - only atomics and volatile accesses touch these bytes (`new`).
        let a = unsafe { AtomicU8::from_ptr(p) };
        Ok(a.load(Ordering::SeqCst))
    }

    /// Stores the byte `v` at `off` (`SeqCst`, as [`SharedMem::load_u8`]).
    ///
    /// # Errors
    ///
    /// [`OutOfBounds`].
    pub fn store_u8(&self, off: usize, v: u8) -> Result<(), OutOfBounds> {
        let p = self.at(off, 1, 1)?;
        // SAFETY: as in `load_u8`.
        let a = unsafe { AtomicU8::from_ptr(p) };
        a.store(v, Ordering::SeqCst);
        Ok(())
    }
}
