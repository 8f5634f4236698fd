//! Copies between shared memory and memory this process owns, each shared byte read
//! or written exactly once.
//!
//! # Why not `copy_nonoverlapping`
//!
//! The peer may write the shared bytes while we copy them. A plain (non-volatile,
//! non-atomic) read of bytes another party writes concurrently is a data race, and the
//! compiler may split, repeat or widen it: it may read a byte twice, which is the
//! double fetch of XSA-155. So the shared side is only ever touched by accesses the
//! compiler must perform exactly as written: volatile accesses, or an `asm!` block,
//! which the compiler cannot see into at all. Our own side is ordinary memory (a `&`
//! or `&mut` slice), accessed with ordinary unaligned loads and stores.
//!
//! # The copies
//!
//! - **AVX2 volatile words** (x86_64 userspace, when CPUID says AVX2 and the OS saves
//!   its registers; detected once): 32-byte volatile loads or stores, aligned on the
//!   shared side, from 32 bytes up to `REP_MIN_AVX2`. Never in a kernel build
//!   (`target_os = "none"`: vector registers are not ours there).
//! - **`rep movsb`** (x86_64, `n >= REP_MIN`): one string instruction moves the whole
//!   range. With ERMS/FSRM (every x86_64 core of the last decade; this VM's EPYC has
//!   both) the microcode moves whole cache lines and reaches `memcpy`'s speed; glibc's
//!   own `memcpy` uses it for these sizes. The instruction reads each source byte once
//!   and writes each destination byte once; what it reads is ours the moment it is in
//!   the destination, whatever the peer writes afterwards.
//! - **Wide volatile words** (everything smaller, and every target without the asm):
//!   16-byte SSE2 volatile loads and stores (baseline on x86_64; 8-byte words where SSE
//!   is off, as in the kernel's soft-float target), at addresses aligned on the
//!   *shared* side. Frame payloads start 8 bytes into 8-aligned frames, so the head is
//!   at most one 8-byte word and the byte loop of the first version (every 8-byte
//!   message and every other 64-byte one went through it) is gone. The tail is at most
//!   one 8-, 4-, 2- and 1-byte access each, naturally aligned: no byte outside the range
//!   is touched, so the copy needs nothing of the caller beyond the range itself.
//! - **Under Miri** only the word copy exists (Miri runs no inline assembly), so the
//!   portable path is the one Miri checks.
//!
//! # Soundness of `rep movsb` on shared memory
//!
//! - The asm block names its pointers and count as operands (`rsi`, `rdi`, `rcx`) and
//!   has neither `nomem` nor `readonly`: the compiler assumes it reads and writes any
//!   memory, so no access of ours moves across it, and it keeps no value of the shared
//!   range in a register across it (there is none: we never read the range otherwise).
//! - The direction flag is clear on entry to any `asm!` block (Rust's inline-assembly
//!   rules for x86), so the copy runs forward; `rep movsb` leaves the flags alone.
//! - For the abstract machine the block is an opaque operation that reads `src..src+n`
//!   once and writes `dst..dst+n` once, exactly what the volatile loop does byte by
//!   byte; it is sound on memory a peer writes for the same reason volatile accesses
//!   are (the peer is another process, VM or device: outside the program; see
//!   [`RingMemory::new`](crate::RingMemory::new)'s contract), and it never forms a
//!   reference to the shared range.
//! - It is not a pair of loads of one location: the ring validates only what it copied
//!   into its own memory, never the shared bytes again.

use core::ptr::{read_unaligned, read_volatile, write_unaligned, write_volatile};

/// The widest volatile access the target offers without runtime detection.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
type Wide = core::arch::x86_64::__m128i;
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
type Wide = u64;

const WIDE: usize = core::mem::size_of::<Wide>();

/// From this many bytes on, `rep movsb` (where it exists) beats the word loop: its
/// start-up costs about as much as a few dozen word moves, and from here on it moves
/// whole lines. Below, the word loop's few iterations win.
#[cfg(all(target_arch = "x86_64", not(miri)))]
const REP_MIN: usize = 512;

/// With AVX2, the 32-byte word loop is at least as fast as `rep movsb` up to this
/// size (within the L2 cache; on this VM's EPYC, best of 30 runs under load: 1 KiB
/// 13 ns against 25 for `rep movsb` and 12-14 for glibc's `memcpy`; 4 KiB 50 against
/// 90; 64 KiB 1.5-1.6 us, all three alike); `rep movsb` above.
#[cfg(all(target_arch = "x86_64", not(miri), not(target_os = "none")))]
const REP_MIN_AVX2: usize = 256 * 1024;

/// Below this the SSE2 word copy inlines and wins (no call, no alignment steps).
#[cfg(all(target_arch = "x86_64", not(miri), not(target_os = "none")))]
const AVX2_MIN: usize = 128;

/// The AVX2 word copy: userspace x86_64 only. A kernel (`target_os = "none"`, the
/// soft-float target) must not touch vector registers it has not saved.
#[cfg(all(target_arch = "x86_64", not(miri), not(target_os = "none")))]
mod avx2 {
    use core::arch::x86_64::__m256i;
    use core::ptr::{read_unaligned, read_volatile, write_unaligned, write_volatile};
    use core::sync::atomic::{AtomicU8, Ordering::Relaxed};

    /// 0: not asked yet; 1: no AVX2; 2: AVX2 usable.
    static STATE: AtomicU8 = AtomicU8::new(0);

    /// Whether the CPU has AVX2 and the OS saves its registers (CPUID leaf 7 EBX bit
    /// 5; leaf 1 ECX bit 27, OSXSAVE; XCR0 bits 1 and 2, SSE and AVX state). Asked
    /// once (CPUID traps to the hypervisor in a VM), then one load.
    #[inline(always)]
    pub(super) fn usable() -> bool {
        match STATE.load(Relaxed) {
            2 => true,
            1 => false,
            _ => detect(),
        }
    }

    #[cold]
    fn detect() -> bool {
        // `__cpuid` and `__cpuid_count` are safe on x86_64 (CPUID always exists).
        let leaf1 = core::arch::x86_64::__cpuid(1);
        let max = core::arch::x86_64::__cpuid(0).eax;
        let osxsave = leaf1.ecx & (1 << 27) != 0;
        let avx2 = max >= 7 && core::arch::x86_64::__cpuid_count(7, 0).ebx & (1 << 5) != 0;
        // SAFETY: XGETBV is available when OSXSAVE is set (checked first).
        let ymm = osxsave && unsafe { xcr0() } & 0b110 == 0b110;
        let ok = avx2 && ymm;
        STATE.store(if ok { 2 } else { 1 }, Relaxed);
        ok
    }

    /// # Safety
    ///
    /// The CPU supports XGETBV (CPUID.1:ECX.OSXSAVE).
    #[target_feature(enable = "xsave")]
    unsafe fn xcr0() -> u64 {
        // SAFETY: XSAVE is enabled for this function, and the caller checked OSXSAVE.
        unsafe { core::arch::x86_64::_xgetbv(0) }
    }

    /// 32-byte volatile reads aligned on the shared side, while at least 32 bytes are
    /// left; returns how many bytes it copied (the caller finishes with words).
    ///
    /// # Safety
    ///
    /// `src..src + n` valid for reads and 8-aligned, `out..out + n` valid for writes,
    /// not overlapping; AVX2 usable ([`usable`]).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn from(src: *const u8, out: *mut u8, n: usize) -> usize {
        let mut i = 0;
        // Up to three 8-byte words to the 32-byte alignment.
        while i + 8 <= n && (src as usize + i) % 32 != 0 {
            // SAFETY: inside both ranges; `src + i` is 8-aligned (caller, whole words).
            unsafe {
                write_unaligned(
                    out.add(i).cast::<u64>(),
                    read_volatile(src.add(i).cast::<u64>()),
                )
            };
            i += 8;
        }
        if (src as usize + i) % 32 != 0 {
            return i;
        }
        while i + 128 <= n {
            // SAFETY:
            // - `src + i .. + 128` is inside the readable range (loop bound) and every
            //   `src + i + 32 k` is 32-aligned (above);
            // - `__m256i` is plain data; AVX2 is usable (caller) and enabled here;
            // - the writes go to `out + i ..`, inside our buffer, unaligned.
            unsafe {
                let s = src.add(i).cast::<__m256i>();
                let d = out.add(i).cast::<__m256i>();
                let (a, b) = (read_volatile(s), read_volatile(s.add(1)));
                let (c, e) = (read_volatile(s.add(2)), read_volatile(s.add(3)));
                write_unaligned(d, a);
                write_unaligned(d.add(1), b);
                write_unaligned(d.add(2), c);
                write_unaligned(d.add(3), e);
            }
            i += 128;
        }
        while i + 32 <= n {
            // SAFETY: as above, for one 32-byte word.
            unsafe {
                write_unaligned(
                    out.add(i).cast::<__m256i>(),
                    read_volatile(src.add(i).cast::<__m256i>()),
                )
            };
            i += 32;
        }
        i
    }

    /// The mirror of [`from`]: 32-byte volatile writes aligned on the shared side.
    ///
    /// # Safety
    ///
    /// `dst..dst + n` valid for writes and 8-aligned, `inp..inp + n` valid for reads,
    /// not overlapping; AVX2 usable.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn to(dst: *mut u8, inp: *const u8, n: usize) -> usize {
        let mut i = 0;
        while i + 8 <= n && (dst as usize + i) % 32 != 0 {
            // SAFETY: inside both ranges; `dst + i` is 8-aligned.
            unsafe {
                write_volatile(
                    dst.add(i).cast::<u64>(),
                    read_unaligned(inp.add(i).cast::<u64>()),
                )
            };
            i += 8;
        }
        if (dst as usize + i) % 32 != 0 {
            return i;
        }
        while i + 128 <= n {
            // SAFETY: as in `from`, the other way round.
            unsafe {
                let s = inp.add(i).cast::<__m256i>();
                let d = dst.add(i).cast::<__m256i>();
                let (a, b) = (read_unaligned(s), read_unaligned(s.add(1)));
                let (c, e) = (read_unaligned(s.add(2)), read_unaligned(s.add(3)));
                write_volatile(d, a);
                write_volatile(d.add(1), b);
                write_volatile(d.add(2), c);
                write_volatile(d.add(3), e);
            }
            i += 128;
        }
        while i + 32 <= n {
            // SAFETY: as above, for one 32-byte word.
            unsafe {
                write_volatile(
                    dst.add(i).cast::<__m256i>(),
                    read_unaligned(inp.add(i).cast::<__m256i>()),
                )
            };
            i += 32;
        }
        i
    }
}

/// Copies `dst.len()` bytes from `src` into `dst`, reading `src` with volatile (or
/// opaque) accesses, each byte once.
///
/// # Safety
///
/// - `src..src + dst.len()` is valid for reads;
/// - `src..src + dst.len()` does not overlap `dst`.
#[inline(always)]
pub(crate) unsafe fn copy_from(src: *const u8, dst: &mut [u8]) {
    // SAFETY: the caller's contract, passed on.
    unsafe { copy_from_impl::<false>(src, dst) }
}

/// [`copy_from`] for a shared range that starts 8-aligned (a frame payload): no head.
///
/// # Safety
///
/// As for [`copy_from`], and `src` is 8-aligned.
#[inline(always)]
pub(crate) unsafe fn copy_from_aligned(src: *const u8, dst: &mut [u8]) {
    // SAFETY: the caller's contract, passed on.
    unsafe { copy_from_impl::<true>(src, dst) }
}

/// # Safety
///
/// As for [`copy_from`], and `src` is 8-aligned if `ALIGNED`.
#[inline(always)]
unsafe fn copy_from_impl<const ALIGNED: bool>(src: *const u8, dst: &mut [u8]) {
    let n = dst.len();
    #[cfg(all(target_arch = "x86_64", not(miri), not(target_os = "none")))]
    if ALIGNED && (AVX2_MIN..REP_MIN_AVX2).contains(&n) && avx2::usable() {
        let out = dst.as_mut_ptr();
        // SAFETY: the caller's contract (`src` 8-aligned: `ALIGNED`); AVX2 is usable.
        let i = unsafe { avx2::from(src, out, n) };
        // SAFETY: the rest of both ranges; `src + i` is still 8-aligned (whole words).
        unsafe { words_from::<true>(src.add(i), out.add(i), n - i) };
        return;
    }
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    if n >= REP_MIN {
        // SAFETY:
        // - `src..src + n` is readable (caller) and `dst..dst + n` is our exclusive
        //   buffer, writable; they do not overlap (caller);
        // - see the module docs for `rep movsb` on shared memory.
        unsafe { rep_movsb(dst.as_mut_ptr(), src, n) };
        return;
    }
    // SAFETY: the caller's contract, passed on.
    unsafe { words_from::<ALIGNED>(src, dst.as_mut_ptr(), n) }
}

/// Copies `src` to `dst`, writing `dst` with volatile (or opaque) accesses, each byte
/// once.
///
/// # Safety
///
/// - `dst..dst + src.len()` is valid for writes;
/// - `dst..dst + src.len()` does not overlap `src`.
#[inline(always)]
pub(crate) unsafe fn copy_to(dst: *mut u8, src: &[u8]) {
    // SAFETY: the caller's contract, passed on.
    unsafe { copy_to_impl::<false>(dst, src) }
}

/// [`copy_to`] for a shared range that starts 8-aligned (a frame payload): no head.
///
/// # Safety
///
/// As for [`copy_to`], and `dst` is 8-aligned.
#[inline(always)]
pub(crate) unsafe fn copy_to_aligned(dst: *mut u8, src: &[u8]) {
    // SAFETY: the caller's contract, passed on.
    unsafe { copy_to_impl::<true>(dst, src) }
}

/// # Safety
///
/// As for [`copy_to`], and `dst` is 8-aligned if `ALIGNED`.
#[inline(always)]
unsafe fn copy_to_impl<const ALIGNED: bool>(dst: *mut u8, src: &[u8]) {
    let n = src.len();
    #[cfg(all(target_arch = "x86_64", not(miri), not(target_os = "none")))]
    if ALIGNED && (AVX2_MIN..REP_MIN_AVX2).contains(&n) && avx2::usable() {
        let inp = src.as_ptr();
        // SAFETY: the caller's contract (`dst` 8-aligned: `ALIGNED`); AVX2 is usable.
        let i = unsafe { avx2::to(dst, inp, n) };
        // SAFETY: the rest of both ranges; `dst + i` is still 8-aligned.
        unsafe { words_to::<true>(dst.add(i), inp.add(i), n - i) };
        return;
    }
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    if n >= REP_MIN {
        // SAFETY:
        // - `dst..dst + n` is writable (caller) and `src..src + n` is our buffer,
        //   readable; they do not overlap (caller);
        // - see the module docs for `rep movsb` on shared memory.
        unsafe { rep_movsb(dst, src.as_ptr(), n) };
        return;
    }
    // SAFETY: the caller's contract, passed on.
    unsafe { words_to::<ALIGNED>(dst, src.as_ptr(), n) }
}

/// `rep movsb`: copies `n` bytes from `src` to `dst`, forward.
///
/// # Safety
///
/// `src..src + n` valid for reads, `dst..dst + n` valid for writes, not overlapping.
#[cfg(all(target_arch = "x86_64", not(miri)))]
#[inline(always)]
unsafe fn rep_movsb(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY:
    // - the ranges are valid and disjoint (caller), and `rep movsb` touches exactly
    //   them: `rcx` bytes from `rsi` to `rdi`, forward (the direction flag is clear on
    //   entry to an asm block);
    // - the block changes only the registers it names (all three, marked `inout` and
    //   discarded), pushes nothing (`nostack`) and leaves the flags alone
    //   (`preserves_flags`); without `nomem` the compiler treats it as reading and
    //   writing any memory, so it orders it with every access around it.
    unsafe {
        core::arch::asm!(
            "rep movsb",
            inout("rcx") n => _,
            inout("rsi") src => _,
            inout("rdi") dst => _,
            options(nostack, preserves_flags),
        );
    }
}

/// The word copy from shared memory: volatile reads aligned on the shared side.
///
/// # Safety
///
/// `src..src + n` valid for reads, `out..out + n` valid for writes, not overlapping;
/// `src` 8-aligned if `ALIGNED`.
#[inline(always)]
unsafe fn words_from<const ALIGNED: bool>(src: *const u8, out: *mut u8, n: usize) {
    let mut i = 0;
    // Head: single bytes up to 8-alignment. Payloads start 8-aligned (`ALIGNED`), so
    // only a read at an offset into a payload (`View::read_at`) lands here.
    while !ALIGNED && i < n && (src as usize + i) % 8 != 0 {
        // SAFETY: `i < n`: inside both ranges (caller); a byte has no alignment.
        unsafe { out.add(i).write(read_volatile(src.add(i))) };
        i += 1;
    }
    // From here `src + i` is 8-aligned, or `i == n`.
    if WIDE > 8 && n - i >= 2 * WIDE + 8 {
        // Larger: one 8-byte word to the wide alignment, then four wide words a turn,
        // then single wide words.
        if (src as usize + i) % WIDE != 0 {
            // SAFETY: `i + 8 <= n`: inside both ranges; `src + i` is 8-aligned.
            unsafe { copy_word::<u64>(src.add(i), out.add(i)) };
            i += 8;
        }
        while i + 4 * WIDE <= n {
            // SAFETY:
            // - `src + i .. src + i + 4 * WIDE` is inside the readable range (loop
            //   bound) and `src + i` is `WIDE`-aligned (above), so is every
            //   `src + i + k * WIDE`;
            // - `Wide` is plain data: any bit pattern is valid;
            // - the writes go to `out + i ..`, inside our buffer (loop bound), unaligned.
            unsafe {
                let s = src.add(i).cast::<Wide>();
                let d = out.add(i).cast::<Wide>();
                let (a, b) = (read_volatile(s), read_volatile(s.add(1)));
                let (c, e) = (read_volatile(s.add(2)), read_volatile(s.add(3)));
                write_unaligned(d, a);
                write_unaligned(d.add(1), b);
                write_unaligned(d.add(2), c);
                write_unaligned(d.add(3), e);
            }
            i += 4 * WIDE;
        }
        while i + WIDE <= n {
            // SAFETY: as above, for one `Wide`.
            unsafe { copy_word::<Wide>(src.add(i), out.add(i)) };
            i += WIDE;
        }
    }
    while i + 8 <= n {
        // SAFETY: inside both ranges (loop bound); `src + i` is 8-aligned (head, then
        // whole words and wide words only).
        unsafe { copy_word::<u64>(src.add(i), out.add(i)) };
        i += 8;
    }
    // Tail: fewer than 8 bytes, at an 8-aligned address: one 4-, 2- and 1-byte read
    // at most, each naturally aligned. No byte outside the range is read.
    if i + 4 <= n {
        // SAFETY: inside both ranges; `src + i` is 8-aligned.
        unsafe { copy_word::<u32>(src.add(i), out.add(i)) };
        i += 4;
    }
    if i + 2 <= n {
        // SAFETY: inside both ranges; `src + i` is 4-aligned (8, or 8 + 4).
        unsafe { copy_word::<u16>(src.add(i), out.add(i)) };
        i += 2;
    }
    if i < n {
        // SAFETY: `i < n`: inside both ranges; a byte has no alignment.
        unsafe { out.add(i).write(read_volatile(src.add(i))) };
    }
}

/// One volatile read of a `T` at `src`, written unaligned to `out`.
///
/// # Safety
///
/// `src` is valid for reads of a `T` and aligned for it; `out` is valid for writes of
/// a `T`; `T` is plain data (any bit pattern valid).
#[inline(always)]
unsafe fn copy_word<T: Copy>(src: *const u8, out: *mut u8) {
    // SAFETY: the caller's contract.
    unsafe { write_unaligned(out.cast::<T>(), read_volatile(src.cast::<T>())) }
}

/// One read of a `T` at `inp` (unaligned), written volatile to `dst`.
///
/// # Safety
///
/// `dst` is valid for writes of a `T` and aligned for it; `inp` is valid for reads of
/// a `T`; `T` is plain data.
#[inline(always)]
unsafe fn put_word<T: Copy>(inp: *const u8, dst: *mut u8) {
    // SAFETY: the caller's contract.
    unsafe { write_volatile(dst.cast::<T>(), read_unaligned(inp.cast::<T>())) }
}

/// The word copy into shared memory: volatile writes aligned on the shared side.
///
/// # Safety
///
/// `dst..dst + n` valid for writes, `inp..inp + n` valid for reads, not overlapping;
/// `dst` 8-aligned if `ALIGNED`.
#[inline(always)]
unsafe fn words_to<const ALIGNED: bool>(dst: *mut u8, inp: *const u8, n: usize) {
    let mut i = 0;
    while !ALIGNED && i < n && (dst as usize + i) % 8 != 0 {
        // SAFETY: `i < n`: inside both ranges; a byte has no alignment.
        unsafe { write_volatile(dst.add(i), inp.add(i).read()) };
        i += 1;
    }
    if WIDE > 8 && n - i >= 2 * WIDE + 8 {
        if (dst as usize + i) % WIDE != 0 {
            // SAFETY: `i + 8 <= n`: inside both ranges; `dst + i` is 8-aligned.
            unsafe { put_word::<u64>(inp.add(i), dst.add(i)) };
            i += 8;
        }
        while i + 4 * WIDE <= n {
            // SAFETY:
            // - `dst + i .. dst + i + 4 * WIDE` is inside the writable range (loop
            //   bound) and `WIDE`-aligned (above);
            // - the reads come from `inp + i ..`, inside our buffer (loop bound),
            //   unaligned;
            // - `Wide` is plain data.
            unsafe {
                let s = inp.add(i).cast::<Wide>();
                let d = dst.add(i).cast::<Wide>();
                let (a, b) = (read_unaligned(s), read_unaligned(s.add(1)));
                let (c, e) = (read_unaligned(s.add(2)), read_unaligned(s.add(3)));
                write_volatile(d, a);
                write_volatile(d.add(1), b);
                write_volatile(d.add(2), c);
                write_volatile(d.add(3), e);
            }
            i += 4 * WIDE;
        }
        while i + WIDE <= n {
            // SAFETY: as above, for one `Wide`.
            unsafe { put_word::<Wide>(inp.add(i), dst.add(i)) };
            i += WIDE;
        }
    }
    while i + 8 <= n {
        // SAFETY: inside both ranges; `dst + i` is 8-aligned.
        unsafe { put_word::<u64>(inp.add(i), dst.add(i)) };
        i += 8;
    }
    if i + 4 <= n {
        // SAFETY: inside both ranges; `dst + i` is 8-aligned.
        unsafe { put_word::<u32>(inp.add(i), dst.add(i)) };
        i += 4;
    }
    if i + 2 <= n {
        // SAFETY: inside both ranges; `dst + i` is 4-aligned.
        unsafe { put_word::<u16>(inp.add(i), dst.add(i)) };
        i += 2;
    }
    if i < n {
        // SAFETY: `i < n`: inside both ranges; a byte has no alignment.
        unsafe { write_volatile(dst.add(i), inp.add(i).read()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every alignment of the shared side against every length around the word and
    /// `rep movsb` thresholds, both directions, with guard bytes around the range
    /// that must never change.
    #[test]
    fn copies_every_alignment_and_length() {
        #[repr(C, align(64))]
        struct Shared([u8; 1200]);
        // Under Miri (slow: every byte of every check is interpreted) the lengths that
        // reach each branch of the word copy once: tails of 1-7, one word, the wide
        // loop's threshold (40), the 4-wide loop (64 + 8).
        let (lens, starts): (&[usize], usize) = if cfg!(miri) {
            (&[0, 1, 3, 7, 8, 15, 40, 47, 72], 9)
        } else {
            (
                &[
                    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 15, 16, 17, 23, 24, 25, 31, 32, 33, 47, 48,
                    63, 64, 65, 100, 127, 128, 129, 255, 511, 512, 513, 1000, 1024, 1100,
                ],
                40,
            )
        };
        for start in 0..starts {
            for &len in lens {
                let mut shared = Shared([0xEE; 1200]);
                let src_buf: [u8; 1100] =
                    core::array::from_fn(|i| (i as u8).wrapping_mul(31).wrapping_add(start as u8));
                let src = &src_buf[..len];
                let base = shared.0.as_mut_ptr();
                // SAFETY: `start + len <= 40 + 1100 < 1200`; `shared` and `src` are
                // distinct allocations.
                unsafe { copy_to(base.add(start), src) };
                assert_eq!(&shared.0[start..start + len], src, "to: {start} {len}");
                assert!(
                    shared.0[..start].iter().all(|&b| b == 0xEE),
                    "to wrote before: {start} {len}"
                );
                assert!(
                    shared.0[start + len..].iter().all(|&b| b == 0xEE),
                    "to wrote after: {start} {len}"
                );
                if start % 8 == 0 {
                    let mut again = Shared([0xEE; 1200]);
                    // SAFETY: as above; `base2 + start` is 8-aligned (`Shared` is 64-aligned).
                    unsafe { copy_to_aligned(again.0.as_mut_ptr().add(start), src) };
                    assert_eq!(&again.0[..], &shared.0[..], "aligned to: {start} {len}");
                    let mut back = [0x22u8; 1100];
                    // SAFETY: as above.
                    unsafe { copy_from_aligned(base.add(start), &mut back[..len]) };
                    assert_eq!(&back[..len], src, "aligned from: {start} {len}");
                }
                let mut back = [0x11u8; 1116];
                // SAFETY: as above; `back` is a third allocation, `len` bytes written.
                unsafe { copy_from(base.add(start), &mut back[8..8 + len]) };
                assert_eq!(&back[8..8 + len], src, "from: {start} {len}");
                assert!(back[..8].iter().chain(&back[8 + len..]).all(|&b| b == 0x11));
            }
        }
    }
}
