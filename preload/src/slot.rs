//! A slot holding an `Option<Arc<T>>` that any thread may read without a lock, and a
//! lock-free two-level table of such slots indexed by file descriptor.
//!
//! # The slot's protocol
//!
//! A reader must turn the slot's raw pointer into a counted reference before a writer
//! that swapped the pointer out drops the last count. Each slot counts its readers in
//! flight:
//!
//! ```text
//! reader                                  writer (swap)
//! readers += 1            (SeqCst)        old = ptr.swap(new)        (SeqCst)
//! p = ptr.load()          (SeqCst)        while readers != 0 { spin } (SeqCst)
//! if p: strong_count(p) += 1              drop(old)
//! readers -= 1            (SeqCst)
//! ```
//!
//! Proof sketch. All four SeqCst operations are in one total order S. If a reader's load
//! returns the old pointer `p`, the load precedes the writer's swap in S, hence so does
//! the reader's increment; the writer's first read of `readers` follows the swap and so
//! sees that increment until the reader's decrement, which comes after the reader took
//! its own strong count. So the writer drops its count only after the reader holds one:
//! `p` is never freed under a reader. A reader whose load follows the swap sees the new
//! pointer and never touches `p`.
//!
//! The decrement synchronises with the writer's read of `readers` that sees it, so the
//! reader's strong count exists before the writer drops its own.
//!
//! Miri runs this module's tests (`.ci/run`), including a reader/writer race; with the
//! writer's wait removed, Miri reports the use after free.
//!
//! The writer's wait lasts as long as a reader needs for two atomic operations; it is
//! bounded ([`SPIN_LIMIT`]): past the bound (a reader preempted for very long, or one
//! interrupted by a signal handler that swaps the same slot) the writer leaks its count
//! instead of dropping it, which is always safe.
//!
//! The miss path ([`ArcSlot::is_empty`], [`FdTable::get`] on an empty slot) is one or
//! two Acquire loads: no lock, no allocation, no system call, so a passed-through call
//! stays async-signal-safe.

use core::ptr;
use std::sync::Arc;

use coresident_sync::atomic::{AtomicPtr, AtomicU32, Ordering};

/// How many times a writer re-checks the reader count before it gives up and leaks.
const SPIN_LIMIT: u32 = 1 << 20;

/// An `Option<Arc<T>>` readable without a lock (see the module docs).
#[derive(Debug)]
pub(crate) struct ArcSlot<T> {
    /// `Arc::into_raw` of the value, or null.
    ptr: AtomicPtr<T>,
    /// Readers between their increment and their decrement (see the module docs).
    readers: AtomicU32,
}

impl<T> Default for ArcSlot<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> ArcSlot<T> {
    /// An empty slot.
    pub(crate) const fn new() -> Self {
        Self {
            ptr: AtomicPtr::new(ptr::null_mut()),
            readers: AtomicU32::new(0),
        }
    }

    /// Whether the slot is empty (may be stale by the time it returns, as any load).
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        // SYNC: slot pointer; pairs with the SeqCst swap in `swap` (a null pointer is
        // never dereferenced, so only the non-null case needs the full protocol).
        self.ptr.load(Ordering::Acquire).is_null()
    }

    /// A counted reference to the value, if any.
    #[inline]
    pub(crate) fn load(&self) -> Option<Arc<T>> {
        if self.is_empty() {
            return None;
        }
        // SeqCst: the reader half of the protocol in the module docs.
        self.readers.fetch_add(1, Ordering::SeqCst);
        let p = self.ptr.load(Ordering::SeqCst);
        let out = if p.is_null() {
            None
        } else {
            // SAFETY:
            // - `p` came from `Arc::into_raw` in `swap` (only such pointers are stored);
            // - the writer that stored it cannot have dropped its count yet: it waits
            //   for `readers` to drop to zero, and our increment precedes our load of `p`
            //   in the SeqCst order (module docs), so the allocation is live.
            unsafe {
                Arc::increment_strong_count(p);
                Some(Arc::from_raw(p))
            }
        };
        // SYNC: reader done; orders our strong-count increment before the writer's read
        // of `readers`, which then drops its own count. Release would do under C++20;
        // SeqCst keeps the protocol in one ordering (an RMW costs the same on x86-64),
        // which Miri's weak-memory model checks without the false positives of mixed
        // orderings (rust-lang/miri#2301).
        self.readers.fetch_sub(1, Ordering::SeqCst);
        out
    }

    /// Puts `new` in the slot and returns what was there.
    pub(crate) fn swap(&self, new: Option<Arc<T>>) -> Option<Arc<T>> {
        let new = new.map_or(ptr::null_mut(), |a| Arc::into_raw(a).cast_mut());
        // SeqCst: the writer half of the protocol in the module docs.
        let old = self.ptr.swap(new, Ordering::SeqCst);
        if old.is_null() {
            return None;
        }
        let mut spins = 0u32;
        while self.readers.load(Ordering::SeqCst) != 0 {
            spins += 1;
            if spins >= SPIN_LIMIT {
                // A reader stuck for a very long time: leak our count (always safe).
                return None;
            }
            if spins % 64 == 0 {
                std::thread::yield_now();
                continue;
            }
            coresident_sync::spin_loop();
        }
        // SAFETY:
        // - `old` came from `Arc::into_raw` in an earlier `swap` and was in the slot,
        //   which owned that count; the swap moved ownership to us;
        // - every reader that could still load `old` has taken its own count (the wait).
        Some(unsafe { Arc::from_raw(old) })
    }

    /// Replaces the value only if the slot holds exactly `current` (by pointer), returning
    /// whether it did. Used where a lost race must not undo another thread's update.
    pub(crate) fn replace_if(&self, current: &Arc<T>, new: Option<Arc<T>>) -> bool {
        let cur = Arc::as_ptr(current).cast_mut();
        let new_ptr = new
            .as_ref()
            .map_or(ptr::null_mut(), |a| Arc::as_ptr(a).cast_mut());
        // SeqCst: as `swap`.
        if self
            .ptr
            .compare_exchange(cur, new_ptr, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return false;
        }
        // The slot now owns `new`'s count.
        if let Some(n) = new {
            let _ = Arc::into_raw(n);
        }
        let mut spins = 0u32;
        while self.readers.load(Ordering::SeqCst) != 0 {
            spins += 1;
            if spins >= SPIN_LIMIT {
                return true;
            }
            coresident_sync::spin_loop();
        }
        // SAFETY: as in `swap`: `cur` was in the slot, which owned one count; the
        // exchange moved it to us, and every reader has taken its own.
        drop(unsafe { Arc::from_raw(cur) });
        true
    }
}

impl<T> Drop for ArcSlot<T> {
    fn drop(&mut self) {
        let _ = self.swap(None);
    }
}

/// Descriptors per chunk of the table.
const CHUNK: usize = 1024;
/// Chunks in the table: descriptors `0 .. CHUNK * CHUNKS` (about a million) can be
/// tracked; a larger one is never accelerated and always passed through.
const CHUNKS: usize = 1024;

/// One chunk of slots.
type Chunk<T> = [ArcSlot<T>; CHUNK];

/// Slots indexed by file descriptor, allocated a chunk at a time on first insert and
/// never freed (a chunk is 16 KiB). Lookups never allocate.
#[derive(Debug)]
pub(crate) struct FdTable<T> {
    /// `Box::into_raw` of each chunk, or null.
    chunks: [AtomicPtr<Chunk<T>>; CHUNKS],
}

impl<T> FdTable<T> {
    /// An empty table.
    pub(crate) const fn new() -> Self {
        Self {
            chunks: [const { AtomicPtr::new(ptr::null_mut()) }; CHUNKS],
        }
    }

    /// The largest descriptor the table can hold, plus one.
    pub(crate) const fn capacity() -> usize {
        CHUNK * CHUNKS
    }

    /// The slot of `fd` if its chunk exists.
    #[inline]
    fn slot(&self, fd: i32) -> Option<&ArcSlot<T>> {
        let fd = usize::try_from(fd).ok()?;
        let chunk = self.chunks.get(fd / CHUNK)?;
        // SYNC: chunk publication, pairs with the AcqRel compare-exchange in `slot_or_alloc`.
        let c = chunk.load(Ordering::Acquire);
        if c.is_null() {
            return None;
        }
        // SAFETY:
        // - `c` came from `Box::into_raw` of a `Chunk<T>` and chunks are never freed while
        //   the table lives (the table is a `static` in the library; tests drop theirs
        //   only when no reference into it remains, see `Drop`);
        // - the Acquire load makes its initialisation visible.
        let chunk = unsafe { &*c };
        chunk.get(fd % CHUNK)
    }

    /// The slot of `fd`, allocating its chunk if needed. `None` if `fd` is out of range.
    fn slot_or_alloc(&self, fd: i32) -> Option<&ArcSlot<T>> {
        if let Some(s) = self.slot(fd) {
            return Some(s);
        }
        let idx = usize::try_from(fd).ok()?;
        let chunk = self.chunks.get(idx / CHUNK)?;
        let fresh: Box<Chunk<T>> = Box::new([const { ArcSlot::new() }; CHUNK]);
        let fresh = Box::into_raw(fresh);
        // SYNC: chunk publication, read by the Acquire load in `slot`.
        if chunk
            .compare_exchange(ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // SAFETY: `fresh` came from `Box::into_raw` just above and was never shared.
            drop(unsafe { Box::from_raw(fresh) });
        }
        self.slot(fd)
    }

    /// The value of `fd`, if any. Never allocates.
    #[inline]
    pub(crate) fn get(&self, fd: i32) -> Option<Arc<T>> {
        self.slot(fd)?.load()
    }

    /// Whether `fd` has a value (may be stale on return). Never allocates.
    #[inline]
    pub(crate) fn contains(&self, fd: i32) -> bool {
        self.slot(fd).is_some_and(|s| !s.is_empty())
    }

    /// Sets the value of `fd`, returning the old one. Out of range: nothing is stored and
    /// `Err(v)` hands the value back.
    pub(crate) fn insert(&self, fd: i32, v: Arc<T>) -> Result<Option<Arc<T>>, Arc<T>> {
        match self.slot_or_alloc(fd) {
            Some(s) => Ok(s.swap(Some(v))),
            None => Err(v),
        }
    }

    /// Takes the value of `fd` out.
    pub(crate) fn remove(&self, fd: i32) -> Option<Arc<T>> {
        self.slot(fd)?.swap(None)
    }

    /// Calls `f` for every descriptor in `first ..= last` that has a value (in order).
    pub(crate) fn for_each_in(&self, first: u32, last: u32, mut f: impl FnMut(i32, Arc<T>)) {
        let last = (last as usize).min(Self::capacity() - 1);
        let mut fd = first as usize;
        while fd <= last {
            // SYNC: chunk publication (as in `slot`).
            if self.chunks[fd / CHUNK].load(Ordering::Acquire).is_null() {
                fd = (fd / CHUNK + 1) * CHUNK;
                continue;
            }
            #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
            let fd_i = fd as i32;
            if let Some(v) = self.get(fd_i) {
                f(fd_i, v);
            }
            fd += 1;
        }
    }
}

impl<T> Drop for FdTable<T> {
    fn drop(&mut self) {
        for c in &self.chunks {
            let p = c.swap(ptr::null_mut(), Ordering::AcqRel);
            if !p.is_null() {
                // SAFETY: `p` came from `Box::into_raw` in `slot_or_alloc`; `&mut self`
                // means nobody holds a reference into the table.
                drop(unsafe { Box::from_raw(p) });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_remove() {
        let t: FdTable<u32> = FdTable::new();
        assert!(t.get(5).is_none());
        assert!(!t.contains(5));
        assert!(t.insert(5, Arc::new(1)).unwrap().is_none());
        assert_eq!(*t.get(5).unwrap(), 1);
        assert!(t.contains(5));
        assert_eq!(*t.insert(5, Arc::new(2)).unwrap().unwrap(), 1);
        assert_eq!(*t.remove(5).unwrap(), 2);
        assert!(t.get(5).is_none());
        assert!(t.get(-1).is_none());
        assert!(t.insert(-1, Arc::new(3)).is_err());
        #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
        let big = FdTable::<u32>::capacity() as i32;
        assert!(t.insert(big, Arc::new(4)).is_err());
        assert!(t.insert(big - 1, Arc::new(4)).is_ok());
    }

    #[test]
    fn for_each_in_visits_in_order_and_skips_missing_chunks() {
        let t: FdTable<u32> = FdTable::new();
        for fd in [2, 900, 5000, 70_000] {
            t.insert(fd, Arc::new(fd as u32)).unwrap();
        }
        let mut seen = Vec::new();
        t.for_each_in(0, u32::MAX, |fd, v| seen.push((fd, *v)));
        assert_eq!(
            seen,
            vec![(2, 2), (900, 900), (5000, 5000), (70_000, 70_000)]
        );
        let mut seen = Vec::new();
        t.for_each_in(901, 69_999, |fd, _| seen.push(fd));
        assert_eq!(seen, vec![5000]);
    }

    #[test]
    fn counts_are_exact() {
        let t: FdTable<u32> = FdTable::new();
        let a = Arc::new(7);
        t.insert(1, a.clone()).unwrap();
        t.insert(2, a.clone()).unwrap();
        assert_eq!(Arc::strong_count(&a), 3);
        let g = t.get(1).unwrap();
        assert_eq!(Arc::strong_count(&a), 4);
        drop(g);
        drop(t);
        assert_eq!(
            Arc::strong_count(&a),
            1,
            "dropping the table drops its counts"
        );
    }

    /// Many readers against a writer that keeps swapping: no use after free (Miri sees
    /// one: `.ci/run` runs these tests under Miri; natively the contents are checked).
    #[test]
    fn readers_race_a_swapping_writer() {
        let t: Arc<FdTable<Vec<u8>>> = Arc::new(FdTable::new());
        t.insert(0, Arc::new(vec![0xAB; 64])).unwrap();
        let stop = Arc::new(core::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let t = t.clone();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(v) = t.get(0) {
                            assert!(v.iter().all(|&b| b == 0xAB));
                            n += 1;
                        }
                    }
                    n
                })
            })
            .collect();
        // Under Miri (which checks every access for use after free and data races,
        // with sequentially consistent atomics modelled), fewer rounds.
        let rounds = if cfg!(miri) { 200 } else { 20_000 };
        for i in 0..rounds {
            let v = if i % 3 == 0 {
                None
            } else {
                Some(Arc::new(vec![0xAB; 64]))
            };
            match v {
                Some(v) => {
                    t.insert(0, v).unwrap();
                }
                None => {
                    t.remove(0);
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
    }
}
