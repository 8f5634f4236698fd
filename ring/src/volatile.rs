//! Volatile copies between shared memory and memory this process owns.
//!
//! `core::ptr::copy_nonoverlapping` may not be used on bytes a peer writes
//! concurrently: a racing non-atomic read is undefined behaviour, and the compiler may
//! read a byte twice (the double fetch of XSA-155). Volatile accesses are each performed
//! exactly once. Byte-wise volatile copies would be ~10x slower than `memcpy`, so the
//! bulk goes through the widest aligned volatile access the target offers: 16-byte SSE2
//! loads and stores on x86_64 (baseline for the target), 8-byte words elsewhere. Only
//! the shared side is accessed volatilely and aligned; our side uses unaligned accesses.

use core::ptr::{read_unaligned, read_volatile, write_unaligned, write_volatile};

#[cfg(target_arch = "x86_64")]
type Wide = core::arch::x86_64::__m128i;
#[cfg(not(target_arch = "x86_64"))]
type Wide = u64;

const WIDE: usize = core::mem::size_of::<Wide>();

/// Copies `dst.len()` bytes from `src` into `dst`, reading `src` with volatile accesses.
///
/// # Safety
///
/// - `src..src + dst.len()` is valid for reads;
/// - `src..src + dst.len()` does not overlap `dst`.
#[inline(always)]
pub(crate) unsafe fn copy_from(src: *const u8, dst: &mut [u8]) {
    let n = dst.len();
    let out = dst.as_mut_ptr();
    let mut i = 0;
    // Head: bytes until `src + i` is aligned to the wide access.
    let head = src.align_offset(WIDE).min(n);
    while i < head {
        // SAFETY:
        // - `i < n`, so `src + i` is inside the readable range (caller);
        // - a `u8` read has no alignment requirement;
        // - `out + i` is inside `dst`, which we borrow mutably.
        unsafe { out.add(i).write(read_volatile(src.add(i))) };
        i += 1;
    }
    while i + 4 * WIDE <= n {
        // SAFETY:
        // - `src + i .. src + i + 4 * WIDE` is inside the readable range (loop bound);
        // - `src + i` is aligned to `WIDE` (head loop), so every `src + i + k * WIDE` is;
        // - `Wide` is plain data: any bit pattern is valid;
        // - the writes go to `out + i ..`, inside `dst` (loop bound), unaligned-safe.
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
        unsafe {
            write_unaligned(
                out.add(i).cast::<Wide>(),
                read_volatile(src.add(i).cast::<Wide>()),
            )
        };
        i += WIDE;
    }
    while i < n {
        // SAFETY: as in the head loop.
        unsafe { out.add(i).write(read_volatile(src.add(i))) };
        i += 1;
    }
}

/// Copies `src` to `dst`, writing `dst` with volatile accesses.
///
/// # Safety
///
/// - `dst..dst + src.len()` is valid for writes;
/// - `dst..dst + src.len()` does not overlap `src`.
#[inline(always)]
pub(crate) unsafe fn copy_to(dst: *mut u8, src: &[u8]) {
    let n = src.len();
    let inp = src.as_ptr();
    let mut i = 0;
    let head = dst.align_offset(WIDE).min(n);
    while i < head {
        // SAFETY:
        // - `i < n`: `dst + i` is inside the writable range (caller) and `inp + i`
        //   inside `src`;
        // - `u8` accesses have no alignment requirement.
        unsafe { write_volatile(dst.add(i), inp.add(i).read()) };
        i += 1;
    }
    while i + 4 * WIDE <= n {
        // SAFETY:
        // - `dst + i .. dst + i + 4 * WIDE` is inside the writable range (loop bound)
        //   and aligned to `WIDE` (head loop);
        // - the reads come from `inp + i ..`, inside `src` (loop bound), unaligned;
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
        unsafe {
            write_volatile(
                dst.add(i).cast::<Wide>(),
                read_unaligned(inp.add(i).cast::<Wide>()),
            )
        };
        i += WIDE;
    }
    while i < n {
        // SAFETY: as in the head loop.
        unsafe { write_volatile(dst.add(i), inp.add(i).read()) };
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_every_alignment_and_length() {
        let mut shared = [0u8; 200];
        for start in 0..20 {
            for len in [0, 1, 7, 15, 16, 17, 63, 64, 65, 100, 150] {
                let src: [u8; 180] =
                    core::array::from_fn(|i| (i as u8).wrapping_mul(31).wrapping_add(start as u8));
                // SAFETY: `start + len <= 170 < 200`; `shared` and `src` are distinct arrays.
                unsafe { copy_to(shared.as_mut_ptr().add(start), &src[..len]) };
                assert_eq!(&shared[start..start + len], &src[..len]);
                let mut back = [0u8; 180];
                // SAFETY: as above; `back` is a third array.
                unsafe { copy_from(shared.as_ptr().add(start), &mut back[..len]) };
                assert_eq!(&back[..len], &src[..len]);
            }
        }
    }
}
