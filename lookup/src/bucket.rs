//! One 64-byte bucket: a control word (per-slot tags or occupancy bits, and a version),
//! the slots' handles and their keys.
//!
//! Every word is an [`AtomicU64`], so readers may read a bucket while the writer changes
//! it without a data race; they detect a change by re-reading word 0 (see
//! [`crate::table`] for the protocol). Layout for one-word keys (4 slots, tagged) and
//! two-word keys (3 slots), in 32-bit halves, low half first:
//!
//! ```text
//! word:  0                    1         2         3   4   5   6   7
//! W=1:   c0 c1 c2 c3 | ovf ver  h0 | h1   h2 | h3   k0  k1  k2  k3  (unused, 0)
//! W=2:   occ+ver | h0     h1 | h2   k0 (2 words) k1 (2)  k2 (2)
//! ```
//!
//! One-word keys: byte `i` of word 0 is slot `i`'s control byte, `0` while the slot is
//! free and `0x80 | tag` while it holds a key whose hash has the 7-bit `tag`
//! ([`crate::hash`]). Byte 4 (`ovf`, `0..=255`) counts the keys whose first bucket is
//! this one but which live in their second bucket; bytes 5 to 7 are a 24-bit version,
//! incremented (wrapping) by every store of word 0. A lookup compares its tag with all
//! four control bytes in one 32-bit SWAR operation (hashbrown's `Group::match_byte`,
//! made exact), so a miss usually reads no key word at all (a stored key shares the tag
//! with probability 1/128), and while `ovf` is 0 it needs no second bucket.
//!
//! Two-word keys: the low half of word 0 (`meta`) has bit `i < 3` set while slot `i`
//! holds an entry and a version above; the high half is slot 0's handle, so that it
//! changes together with `meta`. Tags do not fit beside six key words and three
//! handles, so every occupied slot's key is compared.

use coresident_sync::atomic::{fence, AtomicU64, Ordering};

/// Words in a bucket: one 64-byte cache line.
pub(crate) const WORDS: usize = 8;

/// The low (control) half of word 0.
const LOW: u64 = 0xFFFF_FFFF;

/// The high bit of each control byte of a tagged bucket: set while the slot is occupied.
const FULL: u32 = 0x8080_8080;

/// The overflow count of a tagged bucket's word 0: bits 32..40.
const OVERFLOW: u64 = 0xFF << 32;

/// The version of a tagged bucket's word 0: bits 40..64.
const VERSION: u64 = !0 << 40;

/// The slot layout for keys of a given width.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    /// Slots per bucket: 4 for one-word keys, 3 for two-word keys.
    pub(crate) slots: usize,
    /// Words per key: 1 or 2.
    pub(crate) key_words: usize,
    /// Whether word 0's low half is a control byte per slot (one-word keys) rather than
    /// occupancy bits and a version (two-word keys).
    tagged: bool,
    /// 32-bit half (word `h / 2`, high half if `h` is odd) of slot 0's handle; slot
    /// `i`'s is `handle_base + i`.
    handle_base: usize,
    /// Word index of slot 0's key; slot `i`'s key starts at `key_base + i * key_words`.
    key_base: usize,
}

impl Geometry {
    /// The layout for keys of `key_words` words, or `None` unless `key_words` is 1 or 2.
    pub(crate) const fn new(key_words: usize) -> Option<Self> {
        let g = match key_words {
            // Word 0: 4 control bytes and the version; halves 2..=5: handles.
            1 => Self {
                slots: 4,
                key_words,
                tagged: true,
                handle_base: 2,
                key_base: 3,
            },
            // Word 0: meta and slot 0's handle (half 1); halves 1..=3: handles.
            2 => Self {
                slots: 3,
                key_words,
                tagged: false,
                handle_base: 1,
                key_base: 2,
            },
            _ => return None,
        };
        if g.handle_base + g.slots > 2 * g.key_base || g.key_base + g.slots * key_words > WORDS {
            return None;
        }
        Some(g)
    }

    /// Bit `i` is set while slot `i` holds an entry, according to word 0 `w`.
    #[inline(always)]
    pub(crate) const fn occupied(self, w: u64) -> u32 {
        if self.tagged {
            // Truncation is the point: the control bytes are the low half.
            let full = (w as u32) & FULL;
            let mut bits = 0;
            let mut i = 0;
            while i < self.slots {
                bits |= ((full >> (8 * i + 7)) & 1) << i;
                i += 1;
            }
            bits
        } else {
            // Truncation is the point: meta lives in the low half.
            (w as u32) & ((1 << self.slots) - 1)
        }
    }

    /// The slots of a tagged bucket whose control byte is `0x80 | tag`, as the high bit
    /// of their byte (bit `8 * i + 7` for slot `i`).
    ///
    /// SWAR: `x` has a zero byte exactly where the control byte equals `0x80 | tag`.
    /// `(x & 0x7F) + 0x7F` sets a byte's high bit iff its low seven bits are not all
    /// zero, and cannot carry into the next byte (`0x7F + 0x7F < 0x100`); or-ing `x`
    /// adds its own high bit. So the high bit is clear exactly for zero bytes: unlike
    /// hashbrown's generic `match_byte`, no false positives. Free slots (control byte 0)
    /// never match, because `tag | 0x80` is never 0.
    #[inline(always)]
    const fn matches(w: u64, tag: u8) -> u32 {
        // Truncation is the point: the control bytes are the low half.
        let x = (w as u32) ^ ((tag as u32 | 0x80) * 0x0101_0101);
        !(((x & 0x7F7F_7F7F) + 0x7F7F_7F7F) | x) & FULL
    }

    /// Word 0 `w` with slot `slot` marked as holding a key of tag `tag`.
    const fn fill(self, w: u64, slot: usize, tag: u8) -> u64 {
        if self.tagged {
            let shift = 8 * slot;
            (w & !(0xFF << shift)) | ((tag as u64 | 0x80) << shift)
        } else {
            w | (1 << slot)
        }
    }

    /// Word 0 `w` with slot `slot` marked free.
    const fn empty(self, w: u64, slot: usize) -> u64 {
        if self.tagged {
            w & !(0xFF << (8 * slot))
        } else {
            w & !(1 << slot)
        }
    }

    /// The tag of occupied slot `slot` in word 0 `w` (0 for untagged buckets).
    const fn tag(self, w: u64, slot: usize) -> u8 {
        if self.tagged {
            // Truncation is the point: one control byte, without its high bit.
            ((w >> (8 * slot)) & 0x7F) as u8
        } else {
            0
        }
    }

    /// Whether a key whose first bucket has word 0 `w` may be in its second bucket:
    /// the overflow count is not 0 (tagged), always (untagged, which keeps no count).
    #[inline(always)]
    pub(crate) const fn may_overflow(self, w: u64) -> bool {
        !self.tagged || w & OVERFLOW != 0
    }

    /// Whether a lookup of a key of tag `tag` reads key words of a bucket with word 0
    /// `w` (untagged: always; tagged: if a control byte matches).
    #[inline(always)]
    pub(crate) const fn reads_keys(self, w: u64, tag: u8) -> bool {
        !self.tagged || Self::matches(w, tag) != 0
    }

    /// Word 0 `w` with `delta` added to its overflow count, or `None` if the count
    /// would leave `0..=255`. Untagged buckets keep no count: `w` unchanged.
    const fn add_overflow(self, w: u64, delta: i32) -> Option<u64> {
        if !self.tagged {
            return Some(w);
        }
        let count = ((w & OVERFLOW) >> 32) as i32 + delta;
        if count < 0 || count > 0xFF {
            return None;
        }
        Some((w & !OVERFLOW) | ((count as u64) << 32))
    }

    /// The word 0 to store after `old`: the entries and overflow count (or, untagged,
    /// slot 0's handle) of `new`, and `old`'s version plus one (wrapping).
    const fn next(self, old: u64, new: u64) -> u64 {
        if self.tagged {
            (new & !VERSION) | (old & VERSION).wrapping_add(1 << 40)
        } else {
            // Truncation is the point: meta is the low half.
            let version = ((old as u32) >> self.slots).wrapping_add(1);
            let meta = version.wrapping_shl(self.slots as u32) | self.occupied(new);
            (new & !LOW) | meta as u64
        }
    }

    /// Word and shift of slot `slot`'s handle (word 0 only for slot 0 of two-word keys).
    #[inline(always)]
    const fn handle_pos(self, slot: usize) -> (usize, u32) {
        let half = self.handle_base + slot;
        (half / 2, (half % 2) as u32 * 32)
    }
}

// Both layouts fit the line: one-word keys leave word 7 unused, two-word keys fill it.
const _: () = {
    let (Some(one), Some(two)) = (Geometry::new(1), Geometry::new(2)) else {
        panic!()
    };
    assert!(one.tagged && one.slots == 4 && one.key_base + 4 == WORDS - 1);
    assert!(!two.tagged && two.slots == 3 && two.key_base + 6 == WORDS);
    assert!(Geometry::new(3).is_none() && Geometry::new(0).is_none());
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
    /// An empty bucket (all slots free in both layouts), version 0.
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

    /// Loads word 0 (control bytes or meta, and the version).
    #[inline(always)]
    pub(crate) fn meta(&self, order: Ordering) -> u64 {
        self.word(0).load(order)
    }

    /// The slot holding `key` (whose hash has tag `tag`) according to word 0 `meta`.
    ///
    /// Tagged buckets read only the keys of slots whose tag matches: usually none on a
    /// miss, one on a hit. The loads are `Relaxed`: on the read side the caller
    /// validates them with an Acquire fence and a re-read of word 0 (SYNC: slot-reuse);
    /// on the write side the writer reads its own stores, which coherence orders.
    #[inline(always)]
    pub(crate) fn find(&self, g: Geometry, meta: u64, key: &[u64; 2], tag: u8) -> Option<usize> {
        if g.tagged {
            let mut candidates = Geometry::matches(meta, tag);
            while candidates != 0 {
                let slot = (candidates.trailing_zeros() / 8) as usize;
                if self.word(g.key_base + slot).load(Ordering::Relaxed) == key[0] {
                    return Some(slot);
                }
                candidates &= candidates - 1;
            }
            return None;
        }
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

    /// The handle bits of `slot`, read as the caller's validation requires
    /// (`Relaxed`, for the same reasons as [`find`](Bucket::find)).
    #[inline(always)]
    pub(crate) fn handle(&self, g: Geometry, meta: u64, slot: usize) -> u32 {
        let (w, shift) = g.handle_pos(slot);
        let word = if w == 0 {
            meta
        } else {
            self.word(w).load(Ordering::Relaxed)
        };
        // Truncation is the point: the handle is 32 bits.
        (word >> shift) as u32
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

    /// The tag of occupied slot `slot`. Writer only.
    pub(crate) fn tag(&self, g: Geometry, slot: usize) -> u8 {
        g.tag(self.writer_meta(), slot)
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

    /// Stores word 0 as `new` with the version after `old`'s.
    fn publish(&self, g: Geometry, old: u64, new: u64) {
        // SYNC: bucket-publish. Release: the slot words stored before become visible to
        // a reader whose Acquire load of word 0 (`Table::get`) reads this store.
        self.word(0).store(g.next(old, new), Ordering::Release);
    }

    /// Writes the handle of `slot` if it lives outside word 0; otherwise returns word 0
    /// `w` with the handle in it, to be published.
    fn store_handle(&self, g: Geometry, w: u64, slot: usize, handle: u32) -> u64 {
        let (i, shift) = g.handle_pos(slot);
        let mask = 0xFFFF_FFFF << shift;
        let bits = u64::from(handle) << shift;
        if i == 0 {
            return (w & !mask) | bits;
        }
        let word = self.word(i);
        // Relaxed load: the writer reads its own store. Relaxed store: published by the
        // following `publish` (SYNC: bucket-publish) and validated by readers.
        let old = word.load(Ordering::Relaxed);
        word.store((old & !mask) | bits, Ordering::Relaxed);
        w
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

    /// Whether `delta` can be added to this bucket's overflow count. Writer only.
    pub(crate) fn overflow_fits(&self, g: Geometry, delta: i32) -> bool {
        g.add_overflow(self.writer_meta(), delta).is_some()
    }

    /// Adds `delta` to the overflow count and publishes it; `false` (and nothing
    /// stored) if the count would leave `0..=255`. Writer only.
    #[must_use]
    pub(crate) fn add_overflow(&self, g: Geometry, delta: i32) -> bool {
        let old = self.writer_meta();
        let Some(new) = g.add_overflow(old, delta) else {
            return false;
        };
        self.publish(g, old, new);
        true
    }

    /// Puts an entry (key of tag `tag`) into free slot `slot`, adds `overflow` to the
    /// overflow count and publishes both with one store; `false` (and nothing stored)
    /// if the count would leave `0..=255`. Writer only.
    #[must_use]
    pub(crate) fn put(
        &self,
        g: Geometry,
        slot: usize,
        key: &[u64; 2],
        (handle, tag): (u32, u8),
        overflow: i32,
    ) -> bool {
        let old = self.writer_meta();
        let Some(counted) = g.add_overflow(old, overflow) else {
            return false;
        };
        self.retire();
        let base = g.key_base + slot * g.key_words;
        // Relaxed: published by `publish` below (SYNC: bucket-publish).
        self.word(base).store(key[0], Ordering::Relaxed);
        if g.key_words == 2 {
            self.word(base + 1).store(key[1], Ordering::Relaxed);
        }
        let new = self.store_handle(g, counted, slot, handle);
        self.publish(g, old, g.fill(new, slot, tag));
        true
    }

    /// Replaces the handle of occupied slot `slot` and publishes it. Writer only.
    pub(crate) fn set_handle(&self, g: Geometry, slot: usize, handle: u32) {
        let old = self.writer_meta();
        if g.handle_pos(slot).0 != 0 {
            self.retire();
        }
        let new = self.store_handle(g, old, slot, handle);
        self.publish(g, old, new);
    }

    /// Empties slot `slot`, adds `overflow` to the overflow count and publishes both
    /// with one store; `false` (and nothing stored) if the count would leave `0..=255`.
    /// Writer only.
    #[must_use]
    pub(crate) fn clear(&self, g: Geometry, slot: usize, overflow: i32) -> bool {
        let old = self.writer_meta();
        let Some(counted) = g.add_overflow(old, overflow) else {
            return false;
        };
        self.publish(g, old, g.empty(counted, slot));
        true
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
            let tag = |s: usize| (s as u8 * 37) & 0x7F;
            for s in 0..g.slots {
                let key = [s as u64 + 10, if w == 2 { 77 } else { 0 }];
                assert!(b.put(g, s, &key, (100 + s as u32, tag(s)), 0));
            }
            assert!(b.free_slot(g).is_none());
            for s in 0..g.slots {
                let key = [s as u64 + 10, if w == 2 { 77 } else { 0 }];
                let meta = b.meta(Ordering::Acquire);
                assert_eq!(b.find(g, meta, &key, tag(s)), Some(s));
                assert_eq!(b.handle(g, meta, s), 100 + s as u32);
                assert_eq!(b.key(g, s), key);
                if g.tagged {
                    assert_eq!(b.tag(g, s), tag(s));
                    assert_eq!(b.find(g, meta, &key, tag(s) ^ 1), None, "tag filters");
                }
            }
            b.set_handle(g, 1, 5);
            b.set_handle(g, 0, 6);
            let meta = b.meta(Ordering::Acquire);
            assert_eq!((b.handle(g, meta, 0), b.handle(g, meta, 1)), (6, 5));
            assert!(b.clear(g, 1, 0));
            let meta = b.meta(Ordering::Acquire);
            assert_eq!(
                b.find(g, meta, &[11, if w == 2 { 77 } else { 0 }], tag(1)),
                None
            );
            assert_eq!(b.free_slot(g), Some(1));
            // One store of word 0 per put, set_handle and clear so far.
            let version = if g.tagged {
                meta >> 40
            } else {
                u64::from(meta as u32 >> g.slots)
            };
            assert_eq!(version, g.slots as u64 + 3);
        }
    }

    #[test]
    fn overflow_count() {
        let Some(g) = Geometry::new(1) else { panic!() };
        let b = Bucket::new();
        assert!(!g.may_overflow(b.meta(Ordering::Relaxed)));
        assert!(!b.add_overflow(g, -1), "count below 0");
        for _ in 0..255 {
            assert!(b.add_overflow(g, 1));
        }
        assert!(
            !b.overflow_fits(g, 1) && !b.add_overflow(g, 1),
            "count above 255"
        );
        assert!(b.put(g, 2, &[9, 0], (3, 4), -1));
        let meta = b.meta(Ordering::Relaxed);
        assert_eq!((meta & OVERFLOW) >> 32, 254);
        assert_eq!(meta >> 40, 256, "one version per store");
        assert!(g.may_overflow(meta) && g.reads_keys(meta, 4) && !g.reads_keys(meta, 5));
        assert!(Geometry::new(2).is_some_and(|two| two.may_overflow(0)));
    }

    /// The SWAR match is exact: it flags precisely the occupied slots with the tag.
    #[test]
    fn matches_is_exact() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..if cfg!(miri) { 200 } else { 20_000 } {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Bias bytes towards 0 (free), 0x80 and 0x81 to hit the borrow cases.
            let mut w = 0u64;
            for i in 0..4 {
                let b = match (x >> (8 * i)) & 3 {
                    0 => 0,
                    1 => 0x80,
                    2 => 0x81,
                    _ => (x >> (32 + 8 * i)) & 0xFF,
                };
                w |= b << (8 * i);
            }
            w |= x & !LOW;
            for tag in [0u8, 1, 0x7F, (x >> 40) as u8 & 0x7F] {
                let naive = (0..4).fold(0u32, |m, i| {
                    let byte = (w >> (8 * i)) as u8;
                    m | (u32::from(byte == tag | 0x80) << (8 * i + 7))
                });
                assert_eq!(Geometry::matches(w, tag), naive, "{w:#x} {tag:#x}");
            }
        }
    }
}
