//! Memory a peer writes at any time (the live page of a link, the
//! `start_info` XenStore ring, the PV console ring, the PV kernel's grant
//! table, which Xen writes), through one checked
//! accessor: every access is bounds- and alignment-checked, then an atomic
//! of `coresident_sync`; no Rust reference to the bytes ever exists
//! (vm-memory's `get_atomic_ref` style, without handing the reference out).
//! Only the accesses in use are here; the rest join as their users move.
//!
//! Under `--cfg loom` the atomics come from `core`: pages shared with
//! another domain cannot be modelled by loom; the protocols loom checks
//! (the ring's, the table's) run on its own memory.

use core::ptr::NonNull;

#[cfg(all(loom, feature = "xen-sys", target_arch = "x86_64"))]
use core::sync::atomic::AtomicU16;
#[cfg(loom)]
use core::sync::atomic::{AtomicU32, AtomicU8, Ordering};
#[cfg(all(not(loom), feature = "xen-sys", target_arch = "x86_64"))]
use coresident_sync::atomic::AtomicU16;
#[cfg(not(loom))]
use coresident_sync::atomic::{AtomicU32, AtomicU8, Ordering};

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

    // The PV kernel's grant table is their one user.
    #[cfg(all(feature = "xen-sys", target_arch = "x86_64"))]
    /// Loads the `u16` at `off` (2-aligned), with the ordering rule of
    /// [`SharedMem::load_u32`].
    ///
    /// # Errors
    ///
    /// [`OutOfBounds`] (outside the memory, or misaligned).
    pub fn load_u16(&self, off: usize, order: Ordering) -> Result<u16, OutOfBounds> {
        let p = self.at(off, 2, 2)?;
        // SAFETY:
        // - `p` is in bounds and 2-aligned (checked above), valid for the
        //   memory's life (`new`'s contract);
        // - only atomics and volatile accesses touch these bytes (`new`).
        let a = unsafe { AtomicU16::from_ptr(p.cast::<u16>()) };
        Ok(match order {
            Ordering::Relaxed | Ordering::Release => a.load(Ordering::Relaxed),
            Ordering::SeqCst => a.load(Ordering::SeqCst),
            _ => a.load(Ordering::Acquire),
        })
    }

    // The PV kernel's grant table is their one user.
    #[cfg(all(feature = "xen-sys", target_arch = "x86_64"))]
    /// Stores the `u16` `v` at `off` (2-aligned), with the ordering rule of
    /// [`SharedMem::store_u32`].
    ///
    /// # Errors
    ///
    /// [`OutOfBounds`].
    pub fn store_u16(&self, off: usize, v: u16, order: Ordering) -> Result<(), OutOfBounds> {
        let p = self.at(off, 2, 2)?;
        // SAFETY: as in `load_u16`.
        let a = unsafe { AtomicU16::from_ptr(p.cast::<u16>()) };
        match order {
            Ordering::Relaxed | Ordering::Acquire => a.store(v, Ordering::Relaxed),
            Ordering::SeqCst => a.store(v, Ordering::SeqCst),
            _ => a.store(v, Ordering::Release),
        }
        Ok(())
    }

    // The PV kernel's grant table is their one user.
    #[cfg(all(feature = "xen-sys", target_arch = "x86_64"))]
    /// Swaps the `u16` at `off` (2-aligned) from `current` to `new` if it
    /// holds `current` (`AcqRel`; `Acquire` when it does not): `Ok(Ok(current))`
    /// if it swapped, `Ok(Err(found))` if it found another value.
    ///
    /// # Errors
    ///
    /// [`OutOfBounds`] (nothing is swapped).
    pub fn compare_exchange_u16(
        &self,
        off: usize,
        current: u16,
        new: u16,
    ) -> Result<Result<u16, u16>, OutOfBounds> {
        let p = self.at(off, 2, 2)?;
        // SAFETY: as in `load_u16`.
        let a = unsafe { AtomicU16::from_ptr(p.cast::<u16>()) };
        Ok(a.compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire))
    }

    /// Loads the `u32` at `off` (4-aligned): `Acquire` if `order` is
    /// `Acquire` or stronger, else `Relaxed`. Only constant orderings reach
    /// the atomic: no ordering can panic here.
    ///
    /// # Errors
    ///
    /// [`OutOfBounds`] (outside the memory, or misaligned).
    pub fn load_u32(&self, off: usize, order: Ordering) -> Result<u32, OutOfBounds> {
        let p = self.at(off, 4, 4)?;
        // SAFETY:
        // - `p` is in bounds and 4-aligned (checked above), valid for the
        //   memory's life (`new`'s contract);
        // - only atomics and volatile accesses touch these bytes (`new`).
        let a = unsafe { AtomicU32::from_ptr(p.cast::<u32>()) };
        Ok(match order {
            Ordering::Relaxed | Ordering::Release => a.load(Ordering::Relaxed),
            Ordering::SeqCst => a.load(Ordering::SeqCst),
            _ => a.load(Ordering::Acquire),
        })
    }

    /// Stores the `u32` `v` at `off` (4-aligned): `Release` if `order` is
    /// `Release` or stronger, else `Relaxed` (constant orderings only, as
    /// [`SharedMem::load_u32`]).
    ///
    /// # Errors
    ///
    /// [`OutOfBounds`].
    pub fn store_u32(&self, off: usize, v: u32, order: Ordering) -> Result<(), OutOfBounds> {
        let p = self.at(off, 4, 4)?;
        // SAFETY: as in `load_u32`.
        let a = unsafe { AtomicU32::from_ptr(p.cast::<u32>()) };
        match order {
            Ordering::Relaxed | Ordering::Acquire => a.store(v, Ordering::Relaxed),
            Ordering::SeqCst => a.store(v, Ordering::SeqCst),
            _ => a.store(v, Ordering::Release),
        }
        Ok(())
    }

    /// Copies `out.len()` bytes at `off` into `out`, byte by byte with
    /// volatile reads: the peer may change them meanwhile (a changed byte is
    /// a wrong byte for the caller's checks, never undefined behaviour).
    /// Ordered after an `Acquire` of the index that published them.
    ///
    /// # Errors
    ///
    /// [`OutOfBounds`] (nothing is copied).
    pub fn read_bytes(&self, off: usize, out: &mut [u8]) -> Result<(), OutOfBounds> {
        let p = self.at(off, out.len(), 1)?;
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: `p + i` is below `p + out.len()`, in bounds (checked
            // above) and valid (`new`); a volatile read, no reference made.
            *b = unsafe { p.wrapping_add(i).read_volatile() };
        }
        Ok(())
    }

    /// Copies `src` to the bytes at `off` with volatile writes; the peer
    /// sees them after a `Release` of the index that publishes them.
    ///
    /// # Errors
    ///
    /// [`OutOfBounds`] (nothing is written).
    pub fn write_bytes(&self, off: usize, src: &[u8]) -> Result<(), OutOfBounds> {
        let p = self.at(off, src.len(), 1)?;
        for (i, &b) in src.iter().enumerate() {
            // SAFETY: as in `read_bytes`, a volatile write.
            unsafe { p.wrapping_add(i).write_volatile(b) };
        }
        Ok(())
    }
}
