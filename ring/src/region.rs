//! Checked access to the caller's memory: atomics and volatile copies only.
//!
//! The rules (after rust-vmm's `vm-memory`):
//! - no `&` or `&mut` to a byte of the region ever exists: every access is a `u32`
//!   atomic created for that one access, or a volatile copy into or out of memory this
//!   process owns;
//! - every access is bounds-checked (offset, then length, then alignment) against the
//!   region's length, so even an offset computed from a corrupted value cannot leave the
//!   region. The ring validates peer values before it computes offsets from them; these
//!   checks are the second wall, and they cost a compare and a predicted branch.
//!
//! Under `--cfg loom` the region is a vector of loom atomics instead of raw memory, and
//! copies are word-by-word `Relaxed` atomics: loom then sees every access and finds any
//! ordering bug as a wrong byte in a test's payload check.

use crate::sync::atomic::Ordering;

/// An access that would leave the region or is misaligned. Only a corrupted value can
/// produce one; the ring turns it into [`Corruption::OutOfBounds`](crate::Corruption).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OutOfBounds;

#[inline(always)]
fn check(len: usize, off: usize, n: usize, align: usize) -> Result<(), OutOfBounds> {
    match off.checked_add(n) {
        Some(end) if end <= len && off % align == 0 => Ok(()),
        _ => Err(OutOfBounds),
    }
}

#[cfg(not(loom))]
pub use raw::RingMemory;
#[cfg(not(loom))]
mod raw {
    use super::{check, OutOfBounds};
    use crate::layout::REGION_ALIGN;
    use crate::sync::atomic::{AtomicU32, AtomicU64, Ordering};
    use crate::AttachError;
    use core::ptr::NonNull;

    /// A caller-provided memory region that holds one ring: pages granted by another VM,
    /// a memfd mapping, or a heap buffer.
    ///
    /// It is a pointer and a length. Copies of it refer to the same memory; the ring
    /// never assumes it is the only user: the peer may write any byte at any time, and
    /// two halves built on the same memory in one process only hurt each other's data,
    /// never memory safety.
    #[derive(Clone, Copy, Debug)]
    pub struct RingMemory {
        /// Start of the region; aligned to [`REGION_ALIGN`].
        base: NonNull<u8>,
        /// Length of the region in bytes.
        len: usize,
    }

    // SAFETY:
    // - `RingMemory` is a pointer to memory that, by the contract of `new`, stays valid
    //   for as long as any value built from it is used, from any thread;
    // - every access through it is an atomic or a volatile copy, so concurrent use from
    //   several threads (or a peer) is a race on bytes only, never undefined behaviour.
    unsafe impl Send for RingMemory {}
    // SAFETY: as for `Send`: all accesses are atomics or volatile copies.
    unsafe impl Sync for RingMemory {}

    impl RingMemory {
        /// Describes `len` bytes at `ptr` as a ring's memory.
        ///
        /// # Errors
        ///
        /// [`AttachError::Misaligned`] if `ptr` is null or not aligned to 128 bytes.
        ///
        /// # Safety
        ///
        /// The caller guarantees that, for as long as this value, its copies, and any
        /// [`Producer`](crate::Producer) or [`Consumer`](crate::Consumer) built from
        /// them are used:
        /// - `ptr..ptr + len` is one allocation or mapping, valid for reads and writes;
        /// - nothing in this process accesses those bytes through a Rust reference
        ///   (`&`/`&mut`), only through atomics, volatile accesses or another process,
        ///   VM or device.
        ///
        /// The contents may be anything, and may change at any time.
        pub unsafe fn new(ptr: *mut u8, len: usize) -> Result<Self, AttachError> {
            let base = NonNull::new(ptr).ok_or(AttachError::Misaligned)?;
            if base.as_ptr().align_offset(REGION_ALIGN) != 0 {
                return Err(AttachError::Misaligned);
            }
            Ok(Self { base, len })
        }

        /// Length of the region in bytes.
        pub fn len(&self) -> usize {
            self.len
        }

        /// Whether the region is empty (it then holds no ring).
        pub fn is_empty(&self) -> bool {
            self.len == 0
        }

        /// A raw pointer to byte `off`, for a zero-copy access of `n` bytes.
        #[inline(always)]
        pub(crate) fn ptr(&self, off: usize, n: usize) -> Result<*mut u8, OutOfBounds> {
            check(self.len, off, n, 1)?;
            // `wrapping_add` keeps provenance and cannot be UB; `check` proved
            // `off + n <= len`, so the pointer stays inside the region.
            Ok(self.base.as_ptr().wrapping_add(off))
        }

        #[inline(always)]
        fn atomic(&self, off: usize) -> Result<*mut u32, OutOfBounds> {
            check(self.len, off, 4, 4)?;
            // In bounds and 4-aligned (the base is 128-aligned).
            Ok(self.base.as_ptr().wrapping_add(off).cast::<u32>())
        }

        /// Atomically loads the `u32` at `off`.
        #[inline(always)]
        pub(crate) fn load(&self, off: usize, order: Ordering) -> Result<u32, OutOfBounds> {
            let p = self.atomic(off)?;
            // SAFETY:
            // - `p` is non-null, 4-aligned and inside the region (`atomic` checked);
            // - the region is valid for reads and writes while `self` is used (`new`);
            // - every access to these bytes in this process is atomic or volatile
            //   (`new`), so no non-atomic access races with this one; a peer outside the
            //   process is, for the abstract machine, another atomic writer.
            let a = unsafe { AtomicU32::from_ptr(p) };
            // One constant ordering per arm: `AtomicU32::load` panics on an
            // ordering a load cannot have, and a kernel must not carry that
            // panic path when this is not inlined with a constant `order`
            // (an impossible ordering is promoted to `SeqCst`).
            Ok(match order {
                Ordering::Relaxed => a.load(Ordering::Relaxed),
                Ordering::Acquire => a.load(Ordering::Acquire),
                _ => a.load(Ordering::SeqCst),
            })
        }

        /// Atomically stores `v` into the `u32` at `off`.
        #[inline(always)]
        pub(crate) fn store(&self, off: usize, v: u32, order: Ordering) -> Result<(), OutOfBounds> {
            let p = self.atomic(off)?;
            // SAFETY: as in `load`.
            let a = unsafe { AtomicU32::from_ptr(p) };
            // As in `load`: no ordering-panic path in the generated code.
            match order {
                Ordering::Relaxed => a.store(v, Ordering::Relaxed),
                Ordering::Release => a.store(v, Ordering::Release),
                _ => a.store(v, Ordering::SeqCst),
            }
            Ok(())
        }

        /// Atomically loads the `u64` at `off`, unchecked: the hot paths' frame headers
        /// and control words, whose offsets are in range by construction.
        ///
        /// # Safety
        ///
        /// `off + 8 <= self.len()` and `off` is a multiple of 8.
        #[inline(always)]
        pub(crate) unsafe fn load64(&self, off: usize, order: Ordering) -> u64 {
            let p = self.base.as_ptr().wrapping_add(off).cast::<u64>();
            // SAFETY:
            // - `p` is inside the region and 8-aligned (caller; the base is 128-aligned);
            // - the region is valid for reads and writes while `self` is used (`new`);
            // - every access to these bytes is atomic or volatile (`new`).
            let a = unsafe { AtomicU64::from_ptr(p) };
            // As in `load`: one constant ordering per arm, no ordering-panic path.
            match order {
                Ordering::Relaxed => a.load(Ordering::Relaxed),
                Ordering::Acquire => a.load(Ordering::Acquire),
                _ => a.load(Ordering::SeqCst),
            }
        }

        /// Atomically stores `v` into the `u64` at `off`, unchecked (see `load64`).
        ///
        /// # Safety
        ///
        /// As for [`load64`](Self::load64).
        #[inline(always)]
        pub(crate) unsafe fn store64(&self, off: usize, v: u64, order: Ordering) {
            let p = self.base.as_ptr().wrapping_add(off).cast::<u64>();
            // SAFETY: as in `load64`.
            let a = unsafe { AtomicU64::from_ptr(p) };
            match order {
                Ordering::Relaxed => a.store(v, Ordering::Relaxed),
                Ordering::Release => a.store(v, Ordering::Release),
                _ => a.store(v, Ordering::SeqCst),
            }
        }

        /// Atomically loads the `u32` at `off`, unchecked: a control word at a constant
        /// offset below `DATA_OFFSET`, which every attached half's region exceeds.
        ///
        /// # Safety
        ///
        /// `off + 4 <= self.len()` and `off` is a multiple of 4.
        #[inline(always)]
        pub(crate) unsafe fn load_ctl(&self, off: usize, order: Ordering) -> u32 {
            let p = self.base.as_ptr().wrapping_add(off).cast::<u32>();
            // SAFETY: as in `load64`, for 4 bytes.
            let a = unsafe { AtomicU32::from_ptr(p) };
            match order {
                Ordering::Relaxed => a.load(Ordering::Relaxed),
                Ordering::Acquire => a.load(Ordering::Acquire),
                _ => a.load(Ordering::SeqCst),
            }
        }

        /// Atomically stores into a control word, unchecked (see `load_ctl`).
        ///
        /// # Safety
        ///
        /// As for [`load_ctl`](Self::load_ctl).
        #[inline(always)]
        pub(crate) unsafe fn store_ctl(&self, off: usize, v: u32, order: Ordering) {
            let p = self.base.as_ptr().wrapping_add(off).cast::<u32>();
            // SAFETY: as in `load64`, for 4 bytes.
            let a = unsafe { AtomicU32::from_ptr(p) };
            match order {
                Ordering::Relaxed => a.store(v, Ordering::Relaxed),
                Ordering::Release => a.store(v, Ordering::Release),
                _ => a.store(v, Ordering::SeqCst),
            }
        }

        /// Copies `dst.len()` bytes from the region at `off` into `dst`.
        #[inline(always)]
        pub(crate) fn read_bytes(&self, off: usize, dst: &mut [u8]) -> Result<(), OutOfBounds> {
            let src = self.ptr(off, dst.len())?;
            // SAFETY:
            // - `src..src + dst.len()` is inside the region (`ptr` checked) and valid
            //   for reads (`new`);
            // - `dst` is our own exclusive buffer and cannot overlap the region, which
            //   nothing in this process references (`new`).
            unsafe { crate::volatile::copy_from(src, dst) };
            Ok(())
        }

        /// Copies a frame payload (`off` 8-aligned) from the region into `dst`.
        #[inline(always)]
        pub(crate) fn read_payload(&self, off: usize, dst: &mut [u8]) -> Result<(), OutOfBounds> {
            check(self.len, off, dst.len(), 8)?;
            // `wrapping_add` keeps provenance; `check` proved the range is inside.
            let src = self.base.as_ptr().wrapping_add(off);
            // SAFETY:
            // - `src..src + dst.len()` is inside the region (checked) and valid for
            //   reads (`new`); `src` is 8-aligned (checked; the base is 128-aligned);
            // - `dst` is our own exclusive buffer and cannot overlap the region, which
            //   nothing in this process references (`new`).
            unsafe { crate::volatile::copy_from_aligned(src, dst) };
            Ok(())
        }

        /// Copies `src` into a frame payload (`off` 8-aligned) in the region.
        #[inline(always)]
        pub(crate) fn write_payload(&self, off: usize, src: &[u8]) -> Result<(), OutOfBounds> {
            check(self.len, off, src.len(), 8)?;
            let dst = self.base.as_ptr().wrapping_add(off);
            // SAFETY:
            // - `dst..dst + src.len()` is inside the region (checked) and valid for
            //   writes (`new`); `dst` is 8-aligned (checked);
            // - `src` is a reference, so it cannot point into the region (`new`).
            unsafe { crate::volatile::copy_to_aligned(dst, src) };
            Ok(())
        }

        /// Copies `src` into the region at `off`.
        #[inline(always)]
        pub(crate) fn write_bytes(&self, off: usize, src: &[u8]) -> Result<(), OutOfBounds> {
            let dst = self.ptr(off, src.len())?;
            // SAFETY:
            // - `dst..dst + src.len()` is inside the region (`ptr` checked) and valid
            //   for writes (`new`);
            // - `src` is a reference, so it cannot point into the region (`new`).
            unsafe { crate::volatile::copy_to(dst, src) };
            Ok(())
        }
    }
}

#[cfg(loom)]
pub use model::RingMemory;
#[cfg(loom)]
mod model {
    use super::{check, OutOfBounds};
    use crate::layout::DATA_OFFSET;
    use crate::sync::atomic::{AtomicU32, AtomicU64, Ordering};
    extern crate std;
    use std::sync::Arc;
    use std::vec::Vec;

    /// Under loom: the region as loom atomics. The control block is `u32` words (its
    /// fields are `u32`s); the data area is `u64` words, the size of a frame header,
    /// which the ring reads and writes whole.
    #[derive(Clone, Debug)]
    pub struct RingMemory {
        ctl: Arc<[AtomicU32]>,
        data: Arc<[AtomicU64]>,
    }

    impl RingMemory {
        /// A zeroed region of `len` bytes (at least the control block; the data area
        /// rounded up to whole words).
        pub fn alloc(len: usize) -> Self {
            let ctl: Vec<AtomicU32> = (0..DATA_OFFSET / 4).map(|_| AtomicU32::new(0)).collect();
            let data: Vec<AtomicU64> = (0..len.saturating_sub(DATA_OFFSET).div_ceil(8))
                .map(|_| AtomicU64::new(0))
                .collect();
            Self {
                ctl: ctl.into(),
                data: data.into(),
            }
        }

        /// Length of the region in bytes.
        pub fn len(&self) -> usize {
            DATA_OFFSET + self.data.len() * 8
        }

        /// Whether the region is empty.
        pub fn is_empty(&self) -> bool {
            false
        }

        fn ctl_word(&self, off: usize) -> Result<&AtomicU32, OutOfBounds> {
            check(DATA_OFFSET, off, 4, 4)?;
            self.ctl.get(off / 4).ok_or(OutOfBounds)
        }

        fn data_word(&self, off: usize) -> Result<&AtomicU64, OutOfBounds> {
            check(self.len(), off, 8, 8)?;
            let i = off.checked_sub(DATA_OFFSET).ok_or(OutOfBounds)? / 8;
            self.data.get(i).ok_or(OutOfBounds)
        }

        pub(crate) fn load(&self, off: usize, order: Ordering) -> Result<u32, OutOfBounds> {
            Ok(self.ctl_word(off)?.load(order))
        }

        pub(crate) fn store(&self, off: usize, v: u32, order: Ordering) -> Result<(), OutOfBounds> {
            self.ctl_word(off)?.store(v, order);
            Ok(())
        }

        /// # Safety
        ///
        /// None under loom (checked; an out-of-range offset panics the model).
        #[allow(clippy::missing_safety_doc)]
        pub(crate) unsafe fn load64(&self, off: usize, order: Ordering) -> u64 {
            match self.data_word(off) {
                Ok(w) => w.load(order),
                Err(_) => panic!("load64 out of range at {off}"),
            }
        }

        /// # Safety
        ///
        /// None under loom (see `load64`).
        pub(crate) unsafe fn store64(&self, off: usize, v: u64, order: Ordering) {
            match self.data_word(off) {
                Ok(w) => w.store(v, order),
                Err(_) => panic!("store64 out of range at {off}"),
            }
        }

        /// # Safety
        ///
        /// None under loom (see `load64`).
        pub(crate) unsafe fn load_ctl(&self, off: usize, order: Ordering) -> u32 {
            match self.ctl_word(off) {
                Ok(w) => w.load(order),
                Err(_) => panic!("load_ctl out of range at {off}"),
            }
        }

        /// # Safety
        ///
        /// None under loom (see `load64`).
        pub(crate) unsafe fn store_ctl(&self, off: usize, v: u32, order: Ordering) {
            match self.ctl_word(off) {
                Ok(w) => w.store(v, order),
                Err(_) => panic!("store_ctl out of range at {off}"),
            }
        }

        /// The word holding byte `at`: its size (4 in the control block, 8 in the data
        /// area) and its bytes.
        fn word_load(&self, at: usize) -> Result<(usize, [u8; 8]), OutOfBounds> {
            // Relaxed: ordering comes from the frame header's Acquire load (or, for the
            // control block, the hand-over), which is exactly what loom checks here.
            let mut out = [0u8; 8];
            if at < DATA_OFFSET {
                let w = self
                    .ctl_word(at & !3)?
                    .load(Ordering::Relaxed)
                    .to_le_bytes();
                out[..4].copy_from_slice(&w);
                Ok((4, out))
            } else {
                Ok((
                    8,
                    self.data_word(at & !7)?
                        .load(Ordering::Relaxed)
                        .to_le_bytes(),
                ))
            }
        }

        fn word_store(&self, at: usize, bytes: [u8; 8]) -> Result<(), OutOfBounds> {
            // Relaxed: the frame header's Release store orders these.
            if at < DATA_OFFSET {
                let mut w = [0u8; 4];
                w.copy_from_slice(&bytes[..4]);
                self.ctl_word(at & !3)?
                    .store(u32::from_le_bytes(w), Ordering::Relaxed);
            } else {
                self.data_word(at & !7)?
                    .store(u64::from_le_bytes(bytes), Ordering::Relaxed);
            }
            Ok(())
        }

        /// One load per word touched.
        pub(crate) fn read_bytes(&self, off: usize, dst: &mut [u8]) -> Result<(), OutOfBounds> {
            check(self.len(), off, dst.len(), 1)?;
            let mut i = 0;
            while i < dst.len() {
                let at = off + i;
                let (size, w) = self.word_load(at)?;
                let mut k = at & (size - 1);
                while k < size && i < dst.len() {
                    dst[i] = w[k];
                    k += 1;
                    i += 1;
                }
            }
            Ok(())
        }

        pub(crate) fn read_payload(&self, off: usize, dst: &mut [u8]) -> Result<(), OutOfBounds> {
            self.read_bytes(off, dst)
        }

        pub(crate) fn write_payload(&self, off: usize, src: &[u8]) -> Result<(), OutOfBounds> {
            self.write_bytes(off, src)
        }

        /// One store per word touched (and a load first for a partial one): only the
        /// producer writes data bytes, and only the initialiser the header, so the
        /// read-modify-write of a partial word is not racy.
        pub(crate) fn write_bytes(&self, off: usize, src: &[u8]) -> Result<(), OutOfBounds> {
            check(self.len(), off, src.len(), 1)?;
            let mut i = 0;
            while i < src.len() {
                let at = off + i;
                let size = if at < DATA_OFFSET { 4 } else { 8 };
                let k0 = at & (size - 1);
                let whole = k0 == 0 && src.len() - i >= size;
                let mut w = if whole { [0; 8] } else { self.word_load(at)?.1 };
                let mut k = k0;
                while k < size && i < src.len() {
                    w[k] = src[i];
                    k += 1;
                    i += 1;
                }
                self.word_store(at, w)?;
            }
            Ok(())
        }
    }
}

/// Stores 0 into each `u32` field at `offs` (initialisation only).
pub(crate) fn zero(mem: &RingMemory, offs: &[usize]) -> Result<(), OutOfBounds> {
    for &at in offs {
        // Relaxed: initialisation happens before the region is handed to the peer; the
        // hand-over (a grant, a socket message) orders it.
        mem.store(at, 0, Ordering::Relaxed)?;
    }
    Ok(())
}
