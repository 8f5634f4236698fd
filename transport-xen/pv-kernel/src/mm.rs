//! Page and window allocators over arenas in the image's BSS: first-fit
//! runs in a bitmap, no heap. Pages handed out are the kernel's own
//! (their machine frames come from `start_info.mfn_list`); windows are
//! pages of address space whose frames a grant mapping replaces for a
//! while, and that get their own frame back when returned.

use core::cell::UnsafeCell;
use core::ptr::NonNull;

/// Pages in each arena (4 MiB).
pub const ARENA_PAGES: usize = 1024;

/// `ARENA_PAGES` page-aligned pages.
#[repr(C, align(4096))]
pub struct ArenaMemory(UnsafeCell<[u8; ARENA_PAGES * 4096]>);

// SAFETY: the memory is only reached through `Arena`, which hands out
// disjoint runs of pages, each used by one owner at a time.
unsafe impl Sync for ArenaMemory {}

impl ArenaMemory {
    /// Zeroed memory (for a `static`, so in BSS).
    pub const fn new() -> Self {
        Self(UnsafeCell::new([0; ARENA_PAGES * 4096]))
    }
}

impl Default for ArenaMemory {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for ArenaMemory {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ArenaMemory")
    }
}

/// A first-fit allocator of page runs in one arena (single vCPU: `Cell`s).
#[derive(Debug)]
pub struct Arena {
    mem: &'static ArenaMemory,
    used: core::cell::Cell<[u64; ARENA_PAGES / 64]>,
}

impl Arena {
    /// An allocator over `mem` (each arena gets one allocator).
    pub const fn new(mem: &'static ArenaMemory) -> Self {
        Self {
            mem,
            used: core::cell::Cell::new([0; ARENA_PAGES / 64]),
        }
    }

    fn base(&self) -> *mut u8 {
        self.mem.0.get().cast()
    }

    fn is_used(bits: &[u64; ARENA_PAGES / 64], i: usize) -> bool {
        bits[i / 64] & (1 << (i % 64)) != 0
    }

    /// A run of `n` pages, or `None`.
    pub fn alloc(&self, n: usize) -> Option<NonNull<u8>> {
        if n == 0 || n > ARENA_PAGES {
            return None;
        }
        let mut bits = self.used.get();
        let mut start = 0;
        while start + n <= ARENA_PAGES {
            match (start..start + n).find(|&i| Self::is_used(&bits, i)) {
                Some(busy) => start = busy + 1,
                None => {
                    for i in start..start + n {
                        bits[i / 64] |= 1 << (i % 64);
                    }
                    self.used.set(bits);
                    return NonNull::new(self.base().wrapping_add(start * 4096));
                }
            }
        }
        None
    }

    /// Returns the run at `p` of `n` pages (ignores what is not ours).
    pub fn free(&self, p: NonNull<u8>, n: usize) {
        let Some(off) = (p.as_ptr() as usize).checked_sub(self.base() as usize) else {
            return;
        };
        let first = off / 4096;
        let mut bits = self.used.get();
        for i in first..(first + n).min(ARENA_PAGES) {
            bits[i / 64] &= !(1 << (i % 64));
        }
        self.used.set(bits);
    }

    /// Pages handed out and not returned.
    pub fn in_use(&self) -> usize {
        self.used
            .get()
            .iter()
            .map(|w| w.count_ones() as usize)
            .sum()
    }

    /// Whether `p` lies in this arena.
    pub fn contains(&self, p: *const u8) -> bool {
        let b = self.base() as usize;
        (b..b + ARENA_PAGES * 4096).contains(&(p as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static MEM: ArenaMemory = ArenaMemory::new();

    #[test]
    fn first_fit_runs_free_and_reuse() {
        let a = Arena::new(&MEM);
        assert!(a.alloc(0).is_none() && a.alloc(ARENA_PAGES + 1).is_none());
        let p1 = a.alloc(3).unwrap();
        let p2 = a.alloc(5).unwrap();
        assert_eq!(p2.as_ptr() as usize - p1.as_ptr() as usize, 3 * 4096);
        assert_eq!(p1.as_ptr() as usize % 4096, 0);
        assert_eq!(a.in_use(), 8);
        a.free(p1, 3);
        // A run of 4 does not fit the hole of 3: it goes after p2.
        let p3 = a.alloc(4).unwrap();
        assert_eq!(p3.as_ptr() as usize - p2.as_ptr() as usize, 5 * 4096);
        // A run of 2 does: first fit.
        assert_eq!(a.alloc(2).unwrap(), p1);
        assert!(a.contains(p3.as_ptr()) && !a.contains(core::ptr::null()));
        // The rest of the arena, then nothing.
        let rest = ARENA_PAGES - a.in_use();
        assert!(a.alloc(rest + 1).is_none());
        let big = a.alloc(rest - 1).unwrap();
        assert_eq!(a.in_use(), ARENA_PAGES - 1);
        a.free(big, rest - 1);
        // Foreign pointers are ignored.
        a.free(NonNull::dangling(), 4);
        assert_eq!(a.in_use(), ARENA_PAGES - rest);
    }
}
