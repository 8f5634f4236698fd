//! One 64-byte bucket: a version-and-occupancy word, the slots' handles and their keys.
//!
//! Every word is an [`AtomicU64`], so readers may read a bucket while the writer changes
//! it without a data race; they detect a change by re-reading word 0 (see
//! [`crate::table`] for the protocol). Layout for one-word keys (5 slots) and two-word
//! keys (3 slots), in 32-bit halves, low half first:
//!
//! ```text
//! word:  0            1            2            3   4   5   6   7
//! W=1:   meta | h0    h1 | h2      h3 | h4      k0  k1  k2  k3  k4
//! W=2:   meta | h0    h1 | h2      k0 (2 words) k1 (2)  k2 (2)
//! ```
//!
//! `meta` (the low 32 bits of word 0): bit `i < SLOTS` is set while slot `i` holds an
//! entry; the bits above are a version, incremented (wrapping) by every store of word 0.
//! `h0`, the handle of slot 0, shares word 0 so that it changes together with `meta`.

use coresident_sync::atomic::{fence, AtomicU64, Ordering};

/// Words in a bucket: one 64-byte cache line.
pub(crate) const WORDS: usize = 8;

/// The slot layout for keys of a given width.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    /// Slots per bucket: `480 / (32 + 64 * key_words)`, so 5 or 3; at most 5.
    pub(crate) slots: usize,
    /// Words per key: 1 or 2.
    pub(crate) key_words: usize,
    /// Word index of slot 0's key; slot `i`'s key starts at `key_base + i * key_words`.
    key_base: usize,
}

impl Geometry {
    /// The layout for keys of `key_words` words, or `None` unless `key_words` is 1 or 2.
    pub(crate) const fn new(key_words: usize) -> Option<Self> {
        if key_words == 0 || key_words > 2 {
            return None;
        }
        // 32 bits of meta, then per slot a 32-bit handle and the key words.
        let slots = 480 / (32 + 64 * key_words);
        // Halves 0 ..= slots hold meta and handles: ceil((1 + slots) / 2) words.
        let key_base = (2 + slots) / 2;
        if key_base + slots * key_words > WORDS {
            return None;
        }
        Some(Self {
            slots,
            key_words,
            key_base,
        })
    }

    /// Occupancy bits of `meta`.
    #[inline(always)]
    pub(crate) const fn occupied(self, meta: u64) -> u32 {
        // Truncation is the point: meta lives in the low half.
        (meta as u32) & ((1 << self.slots) - 1)
    }
}

// Both layouts fill the line exactly.
const _: () = {
    let (Some(one), Some(two)) = (Geometry::new(1), Geometry::new(2)) else {
        panic!()
    };
    assert!(one.slots == 5 && one.key_base + 5 == WORDS);
    assert!(two.slots == 3 && two.key_base + 6 == WORDS);
    assert!(Geometry::new(3).is_none());
};

/// One cache line of the table.
#[repr(C, align(64))]
pub(crate) struct Bucket {
    /// The words as laid out above. Only the table's single writer stores to them.
    words: [AtomicU64; WORDS],
}

#[cfg(not(loom))]
const _: () =
    assert!(core::mem::size_of::<Bucket>() == 64 && core::mem::align_of::<Bucket>() == 64);

impl Bucket {
    /// An empty bucket, version 0.
    pub(crate) fn new() -> Self {
        Self {
            words: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Word `i` of this bucket. Callers pass `i < WORDS` (guaranteed by [`Geometry`]);
    /// the mask makes the access infallible without a branch.
    #[inline(always)]
    fn word(&self, i: usize) -> &AtomicU64 {
        &self.words[i & (WORDS - 1)]
    }

    /// Loads word 0 (meta and slot 0's handle).
    #[inline(always)]
    pub(crate) fn meta(&self, order: Ordering) -> u64 {
        self.word(0).load(order)
    }

    /// The slot holding `key` according to `meta`, if any.
    ///
    /// The loads are `Relaxed`: on the read side the caller validates them with an
    /// Acquire fence and a re-read of word 0 (SYNC: slot-reuse); on the write side the
    /// writer reads its own stores, which coherence orders.
    #[inline(always)]
    pub(crate) fn find(&self, g: Geometry, meta: u64, key: &[u64; 2]) -> Option<usize> {
        let mut hits = 0u32;
        for i in 0..g.slots {
            let base = g.key_base + i * g.key_words;
            let mut eq = self.word(base).load(Ordering::Relaxed) == key[0];
            if g.key_words == 2 {
                eq &= self.word(base + 1).load(Ordering::Relaxed) == key[1];
            }
            hits |= u32::from(eq) << i;
        }
        hits &= g.occupied(meta);
        if hits == 0 {
            None
        } else {
            Some(hits.trailing_zeros() as usize)
        }
    }

    /// Word and shift of slot `slot`'s handle (`slot >= 1`; slot 0's is in `meta`).
    #[inline(always)]
    const fn handle_pos(slot: usize) -> (usize, u32) {
        let half = 1 + slot;
        (half / 2, (half % 2) as u32 * 32)
    }

    /// The handle bits of `slot`, read as the caller's validation requires
    /// (`Relaxed`, for the same reasons as [`find`](Bucket::find)).
    #[inline(always)]
    pub(crate) fn handle(&self, meta: u64, slot: usize) -> u32 {
        let word = if slot == 0 {
            meta >> 32
        } else {
            let (w, shift) = Self::handle_pos(slot);
            self.word(w).load(Ordering::Relaxed) >> shift
        };
        // Truncation is the point: the handle is 32 bits.
        word as u32
    }

    /// The key words of `slot`. Writer only (`Relaxed`: it reads its own stores).
    pub(crate) fn key(&self, g: Geometry, slot: usize) -> [u64; 2] {
        let base = g.key_base + slot * g.key_words;
        let second = if g.key_words == 2 {
            self.word(base + 1).load(Ordering::Relaxed)
        } else {
            0
        };
        [self.word(base).load(Ordering::Relaxed), second]
    }

    /// Word 0 as the writer last stored it. `Relaxed`: only the writer stores it, and a
    /// new writer has synchronised with the previous one (SYNC: writer-handoff).
    pub(crate) fn writer_meta(&self) -> u64 {
        self.meta(Ordering::Relaxed)
    }

    /// A free slot of this bucket, if any. Writer only.
    pub(crate) fn free_slot(&self, g: Geometry) -> Option<usize> {
        let free = !g.occupied(self.writer_meta()) & ((1 << g.slots) - 1);
        if free == 0 {
            None
        } else {
            Some(free.trailing_zeros() as usize)
        }
    }

    /// Stores word 0 with occupancy `occupied`, slot 0's handle `h0` and the next version.
    fn publish(&self, g: Geometry, old: u64, occupied: u32, h0: u32) {
        // Truncation is the point: meta is the low half.
        let version = ((old as u32) >> g.slots).wrapping_add(1);
        let meta = version.wrapping_shl(g.slots as u32) | occupied;
        // SYNC: bucket-publish. Release: the slot words stored before become visible to
        // a reader whose Acquire load of word 0 (`Table::get`) reads this store.
        self.word(0)
            .store((u64::from(h0) << 32) | u64::from(meta), Ordering::Release);
    }

    /// Writes the handle bits of `slot >= 1` (slot 0's go through `publish`).
    fn store_handle(&self, slot: usize, handle: u32) {
        let (w, shift) = Self::handle_pos(slot);
        let word = self.word(w);
        // Relaxed load: the writer reads its own store. Relaxed store: published by the
        // following `publish` (SYNC: bucket-publish) and validated by readers.
        let old = word.load(Ordering::Relaxed);
        let new = (old & !(0xFFFF_FFFF << shift)) | (u64::from(handle) << shift);
        word.store(new, Ordering::Relaxed);
    }

    /// Before overwriting words a reader may be reading.
    fn retire(&self) {
        // SYNC: slot-reuse. This Release fence orders the earlier stores of word 0
        // (which removed or changed the slot's entry) before the slot stores that
        // follow. A reader whose Relaxed load sees one of those slot stores then sees,
        // after its Acquire fence in `Table::get`, a word 0 newer than the one it
        // started from, and retries.
        fence(Ordering::Release);
    }

    /// Puts an entry into free slot `slot` and publishes it. Writer only.
    pub(crate) fn put(&self, g: Geometry, slot: usize, key: &[u64; 2], handle: u32) {
        let old = self.writer_meta();
        self.retire();
        let base = g.key_base + slot * g.key_words;
        // Relaxed: published by `publish` below (SYNC: bucket-publish).
        self.word(base).store(key[0], Ordering::Relaxed);
        if g.key_words == 2 {
            self.word(base + 1).store(key[1], Ordering::Relaxed);
        }
        // Truncation is the point: the old slot-0 handle is the high half.
        let mut h0 = (old >> 32) as u32;
        if slot == 0 {
            h0 = handle;
        } else {
            self.store_handle(slot, handle);
        }
        self.publish(g, old, g.occupied(old) | (1 << slot), h0);
    }

    /// Replaces the handle of occupied slot `slot` and publishes it. Writer only.
    pub(crate) fn set_handle(&self, g: Geometry, slot: usize, handle: u32) {
        let old = self.writer_meta();
        // Truncation is the point: the old slot-0 handle is the high half.
        let mut h0 = (old >> 32) as u32;
        if slot == 0 {
            h0 = handle;
        } else {
            self.retire();
            self.store_handle(slot, handle);
        }
        self.publish(g, old, g.occupied(old), h0);
    }

    /// Empties slot `slot` and publishes it. Writer only.
    pub(crate) fn clear(&self, g: Geometry, slot: usize) {
        let old = self.writer_meta();
        // Truncation is the point: the old slot-0 handle is the high half.
        self.publish(g, old, g.occupied(old) & !(1 << slot), (old >> 32) as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_find_clear() {
        for w in [1, 2] {
            let Some(g) = Geometry::new(w) else {
                panic!("geometry {w}")
            };
            let b = Bucket::new();
            for s in 0..g.slots {
                let key = [s as u64 + 10, if w == 2 { 77 } else { 0 }];
                b.put(g, s, &key, 100 + s as u32);
            }
            assert!(b.free_slot(g).is_none());
            for s in 0..g.slots {
                let key = [s as u64 + 10, if w == 2 { 77 } else { 0 }];
                let meta = b.meta(Ordering::Acquire);
                assert_eq!(b.find(g, meta, &key), Some(s));
                assert_eq!(b.handle(meta, s), 100 + s as u32);
                assert_eq!(b.key(g, s), key);
            }
            b.set_handle(g, 1, 5);
            b.set_handle(g, 0, 6);
            let meta = b.meta(Ordering::Acquire);
            assert_eq!((b.handle(meta, 0), b.handle(meta, 1)), (6, 5));
            b.clear(g, 1);
            let meta = b.meta(Ordering::Acquire);
            assert_eq!(b.find(g, meta, &[11, if w == 2 { 77 } else { 0 }]), None);
            assert_eq!(b.free_slot(g), Some(1));
        }
    }
}
