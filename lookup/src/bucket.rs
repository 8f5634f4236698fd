//! One bucket: a control word (per-slot tags, an overflow count and a version) and a
//! 64-byte line of slots (keys and handles).
//!
//! The control words of all buckets live in one dense array, 8 bytes each, apart from
//! the slot lines: a miss reads only control words (16 KiB for 2048 buckets, which
//! stays in L1 while the 128 KiB of slot lines does not), a hit one control word and
//! one slot line, as hashbrown reads its control bytes and then one entry.
//!
//! Every word is an [`AtomicU64`], so readers may read a bucket while the writer changes
//! it without a data race; they detect a change by re-reading the control word (see
//! [`crate::table`] for the protocol). Layouts, in 32-bit halves, low half first:
//!
//! ```text
//! control word:    c0 c1 c2 c3 | ovf ver(24)
//! slot line, W=1:  k0 | h0 n0-3  k1 | h1 n4-7  k2 | h2 -  k3 | h3 -   (16 bytes a slot)
//! slot line, W=2:  k0 (2 words)  k1 (2)  k2 (2)  h0 h1 | h2 n0-7
//! ```
//!
//! Byte `i` of the control word is slot `i`'s control byte, `0` while the slot is free
//! and `0x80 | tag` while it holds a key whose hash has the 7-bit `tag`
//! ([`crate::hash`]); two-word keys have 3 slots, and `c3` stays 0. A lookup compares
//! its tag with all four control bytes in one 32-bit SWAR operation (hashbrown's
//! `Group::match_byte`), so a miss usually reads no key word at all (a stored key
//! shares the tag with probability 1/128). Bytes 5 to 7 are a 24-bit version,
//! incremented (wrapping) by every store of the control word.
//!
//! Byte 4 (`ovf`) is the overflow filter: bit `c` is set while at least one key whose
//! first bucket is this one, and whose tag is of class `c` (its low three bits), lives
//! in its second bucket. A miss reads the second bucket only if its own class's bit is
//! set: at 90% load about one miss in twelve, where a single "some key overflowed" flag
//! would send nearly half of them there. The exact count of each class is the writer's
//! bookkeeping, in bits of the slot line no reader uses (`n0`..`n7`: 8 bits a class for
//! one-word keys, 4 bits for two-word keys); the filter bit is `count > 0`, changed
//! only in a store of the control word.
//!
//! A one-word key and its handle share 16 bytes of the line, so a hit reads the key
//! and the handle at one computed offset.

use coresident_sync::atomic::{fence, AtomicU64, Ordering};

/// Words in a slot line: one 64-byte cache line.
pub(crate) const WORDS: usize = 8;

/// The high bit of each control byte: set while the slot is occupied.
const FULL: u32 = 0x8080_8080;

/// The low bit of each control byte, for the SWAR zero-byte test.
const LOW_BITS: u32 = 0x0101_0101;

/// Bit of the overflow filter (bits 32..40 of a control word) for class 0.
const OVERFLOW_SHIFT: u32 = 32;

/// Overflow classes: the low three bits of a tag.
pub(crate) const CLASSES: usize = 8;

/// The version of a control word: bits 40..64.
const VERSION: u64 = !0 << 40;

/// The slot layout for keys of a given width.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    /// Slots per bucket: 4 for one-word keys, 3 for two-word keys.
    pub(crate) slots: usize,
    /// Words per key: 1 or 2.
    pub(crate) key_words: usize,
}

impl Geometry {
    /// The layout for keys of `key_words` words, or `None` unless `key_words` is 1 or 2.
    pub(crate) const fn new(key_words: usize) -> Option<Self> {
        match key_words {
            1 => Some(Self {
                slots: 4,
                key_words,
            }),
            2 => Some(Self {
                slots: 3,
                key_words,
            }),
            _ => None,
        }
    }

    /// Word index in the slot line of slot `slot`'s key (its first word).
    #[inline(always)]
    pub(crate) const fn key_pos(self, slot: usize) -> usize {
        2 * slot
    }

    /// Word and shift in the slot line of slot `slot`'s handle (32 bits).
    #[inline(always)]
    const fn handle_pos(self, slot: usize) -> (usize, u32) {
        if self.key_words == 1 {
            (2 * slot + 1, 0)
        } else {
            (6 + slot / 2, (slot % 2) as u32 * 32)
        }
    }

    /// Word, shift and largest value of the writer's count of overflowed keys of
    /// class `class` in the slot line.
    #[inline(always)]
    const fn count_pos(self, class: usize) -> (usize, u32, u32) {
        if self.key_words == 1 {
            // High halves of the handle words of slots 0 and 1, 8 bits a class.
            (1 + 2 * (class / 4), 32 + 8 * (class % 4) as u32, 0xFF)
        } else {
            // High half of word 7 (slot 2's handle), 4 bits a class.
            (7, 32 + 4 * class as u32, 0xF)
        }
    }

    /// Bit `i` is set while slot `i` holds an entry, according to control word `w`.
    #[inline(always)]
    pub(crate) const fn occupied(self, w: u64) -> u32 {
        // Truncation is the point: the control bytes are the low half.
        let full = (w as u32) & FULL;
        let mut bits = 0;
        let mut i = 0;
        while i < self.slots {
            bits |= ((full >> (8 * i + 7)) & 1) << i;
            i += 1;
        }
        bits
    }

    /// Control byte `i`'s high bit (bit `8 * i + 7`) is set if slot `i` may hold a key
    /// of tag `tag`: set for every slot whose control byte is `0x80 | tag`, and clear
    /// for the others except, rarely, a byte just above a set one.
    ///
    /// SWAR (the classic "has zero byte"): `x` has a zero byte exactly where the control
    /// byte equals `0x80 | tag`; `(x - 0x01..) & !x & 0x80..` flags every zero byte of
    /// `x`, and a byte above a flagged byte only if the borrow turns it from `0x01`
    /// into `0xFF` - an occupied slot whose tag differs from `tag` in bit 0 alone. The
    /// lowest flagged byte is always a true match, and the result is 0 exactly when no
    /// byte matches. Callers compare the key of every flagged slot, so a false flag
    /// costs one key comparison. Free slots (control byte 0) never match: `tag | 0x80` is never 0,
    /// so their byte of `x` has its high bit set and `!x` clears the flag.
    #[inline(always)]
    pub(crate) const fn matches(w: u64, tag: u8) -> u32 {
        // Truncation is the point: the control bytes are the low half.
        let x = (w as u32) ^ ((tag as u32 | 0x80) * LOW_BITS);
        x.wrapping_sub(LOW_BITS) & !x & FULL
    }

    /// Control word `w` with slot `slot` marked as holding a key of tag `tag`.
    const fn fill(w: u64, slot: usize, tag: u8) -> u64 {
        let shift = 8 * slot;
        (w & !(0xFF << shift)) | ((tag as u64 | 0x80) << shift)
    }

    /// Control word `w` with slot `slot` marked free.
    const fn empty(w: u64, slot: usize) -> u64 {
        w & !(0xFF << (8 * slot))
    }

    /// The tag of occupied slot `slot` in control word `w`.
    const fn tag(w: u64, slot: usize) -> u8 {
        // Truncation is the point: one control byte, without its high bit.
        ((w >> (8 * slot)) & 0x7F) as u8
    }

    /// The overflow class of a key of tag `tag`: its low three bits.
    #[inline(always)]
    pub(crate) const fn class(tag: u8) -> usize {
        (tag as usize) % CLASSES
    }

    /// Whether a key of tag `tag` whose first bucket has control word `w` may be in its
    /// second bucket: the overflow filter's bit for the key's class is set.
    #[inline(always)]
    pub(crate) const fn may_overflow(w: u64, tag: u8) -> bool {
        (w >> (OVERFLOW_SHIFT as usize + Self::class(tag))) & 1 != 0
    }

    /// Control word `w` with the filter bit of `class` set to `on`.
    const fn with_filter(w: u64, class: usize, on: bool) -> u64 {
        let bit = 1 << (OVERFLOW_SHIFT as usize + class);
        if on {
            w | bit
        } else {
            w & !bit
        }
    }

    /// The control word to store after `old`: the entries and overflow count of
    /// `new`, and `old`'s version plus one (wrapping).
    const fn next(old: u64, new: u64) -> u64 {
        (new & !VERSION) | (old & VERSION).wrapping_add(1 << 40)
    }
}

// Both layouts fit the line and the control word.
const _: () = {
    let (Some(one), Some(two)) = (Geometry::new(1), Geometry::new(2)) else {
        panic!()
    };
    assert!(one.key_pos(3) + 1 < WORDS && one.handle_pos(3).0 < WORDS);
    assert!(two.key_pos(2) + 2 == two.handle_pos(0).0 && two.handle_pos(2).0 < WORDS);
    assert!(one.slots <= 4 && two.slots <= 4, "one control byte a slot");
    // The counts live in halves no handle uses.
    assert!(one.count_pos(0).0 == one.handle_pos(0).0 && one.count_pos(7).0 == one.handle_pos(1).0);
    assert!(one.count_pos(7).1 == 56 && two.count_pos(7).1 == 60);
    assert!(two.count_pos(0).0 == two.handle_pos(2).0 && two.handle_pos(2).1 == 0);
    assert!(Geometry::new(3).is_none() && Geometry::new(0).is_none());
};

/// The slots of one bucket: one cache line.
#[repr(C, align(64))]
pub(crate) struct Line {
    /// The words as laid out above. Only the table's single writer stores to them.
    words: [AtomicU64; WORDS],
}

#[cfg(not(loom))]
const _: () = assert!(core::mem::size_of::<Line>() == 64 && core::mem::align_of::<Line>() == 64);

impl Line {
    /// An empty line (all words 0).
    pub(crate) fn new() -> Self {
        Self {
            words: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Word `i` of this line. Callers pass `i < WORDS` (guaranteed by [`Geometry`]);
    /// the mask makes the access infallible without a branch.
    #[inline(always)]
    fn word(&self, i: usize) -> &AtomicU64 {
        &self.words[i & (WORDS - 1)]
    }
}

/// One bucket of the table: its control word and its slot line.
#[derive(Clone, Copy)]
pub(crate) struct Bucket<'t> {
    /// Control bytes, overflow count and version. Only the writer stores it.
    ctrl: &'t AtomicU64,
    /// Keys and handles.
    line: &'t Line,
}

impl<'t> Bucket<'t> {
    /// The bucket made of control word `ctrl` and slot line `line`.
    #[inline(always)]
    pub(crate) fn new(ctrl: &'t AtomicU64, line: &'t Line) -> Self {
        Self { ctrl, line }
    }

    /// The address of the control word (for [`crate::Table::get_traced`]).
    pub(crate) fn ctrl_addr(self) -> usize {
        core::ptr::from_ref(self.ctrl).addr()
    }

    /// The address of the slot line (for [`crate::Table::get_traced`]).
    pub(crate) fn line_addr(self) -> usize {
        core::ptr::from_ref(self.line).addr()
    }

    /// Loads the control word.
    #[inline(always)]
    pub(crate) fn meta(self, order: Ordering) -> u64 {
        self.ctrl.load(order)
    }

    /// Whether slot `slot` holds `key`. The loads are `Relaxed`: on the read side the
    /// caller validates them with an Acquire fence and a re-read of the control word
    /// (SYNC: slot-reuse); on the write side the writer reads its own stores, which
    /// coherence orders.
    #[inline(always)]
    pub(crate) fn holds(self, g: Geometry, slot: usize, key: &[u64; 2]) -> bool {
        let base = g.key_pos(slot);
        let mut eq = self.line.word(base).load(Ordering::Relaxed) == key[0];
        if g.key_words == 2 {
            eq &= self.line.word(base + 1).load(Ordering::Relaxed) == key[1];
        }
        eq
    }

    /// The slot holding `key` (whose hash has tag `tag`) according to control word
    /// `meta`: only the keys of slots whose tag matches are read, usually none on a
    /// miss and one on a hit (`Relaxed`, as in [`holds`](Bucket::holds)).
    #[inline(always)]
    pub(crate) fn find(self, g: Geometry, meta: u64, key: &[u64; 2], tag: u8) -> Option<usize> {
        let mut candidates = Geometry::matches(meta, tag);
        while candidates != 0 {
            let slot = (candidates.trailing_zeros() / 8) as usize;
            if self.holds(g, slot, key) {
                return Some(slot);
            }
            candidates &= candidates - 1;
        }
        None
    }

    /// The handle bits of `slot`, read as the caller's validation requires
    /// (`Relaxed`, for the same reasons as [`holds`](Bucket::holds)).
    #[inline(always)]
    pub(crate) fn handle(self, g: Geometry, slot: usize) -> u32 {
        let (w, shift) = g.handle_pos(slot);
        // Truncation is the point: the handle is 32 bits.
        (self.line.word(w).load(Ordering::Relaxed) >> shift) as u32
    }

    /// The key words of `slot`. Writer only (`Relaxed`: it reads its own stores).
    pub(crate) fn key(self, g: Geometry, slot: usize) -> [u64; 2] {
        let base = g.key_pos(slot);
        let second = if g.key_words == 2 {
            self.line.word(base + 1).load(Ordering::Relaxed)
        } else {
            0
        };
        [self.line.word(base).load(Ordering::Relaxed), second]
    }

    /// The tag of occupied slot `slot`. Writer only.
    pub(crate) fn tag(self, slot: usize) -> u8 {
        Geometry::tag(self.writer_meta(), slot)
    }

    /// The control word as the writer last stored it. `Relaxed`: only the writer
    /// stores it, and a new writer has synchronised with the previous one (SYNC:
    /// writer-handoff).
    pub(crate) fn writer_meta(self) -> u64 {
        self.meta(Ordering::Relaxed)
    }

    /// A free slot of this bucket, if any. Writer only.
    pub(crate) fn free_slot(self, g: Geometry) -> Option<usize> {
        let free = !g.occupied(self.writer_meta()) & ((1 << g.slots) - 1);
        if free == 0 {
            None
        } else {
            Some(free.trailing_zeros() as usize)
        }
    }

    /// Stores the control word as `new` with the version after `old`'s.
    fn publish(self, old: u64, new: u64) {
        // SYNC: bucket-publish. Release: the slot words stored before become visible to
        // a reader whose Acquire load of the control word (`Table::get`) reads this
        // store.
        self.ctrl.store(Geometry::next(old, new), Ordering::Release);
    }

    /// Writes the handle of `slot` into the slot line.
    fn store_handle(self, g: Geometry, slot: usize, handle: u32) {
        let (i, shift) = g.handle_pos(slot);
        let mask = 0xFFFF_FFFF << shift;
        let word = self.line.word(i);
        // Relaxed load: the writer reads its own store. Relaxed store: published by the
        // following `publish` (SYNC: bucket-publish) and validated by readers.
        let old = word.load(Ordering::Relaxed);
        word.store(
            (old & !mask) | (u64::from(handle) << shift),
            Ordering::Relaxed,
        );
    }

    /// Before overwriting words a reader may be reading.
    fn retire(self) {
        // SYNC: slot-reuse. This Release fence orders the earlier stores of the
        // control word (which removed or changed the slot's entry) before the slot
        // stores that follow. A reader whose Relaxed load sees one of those slot stores
        // then sees, after its Acquire fence in `Table::get`, a control word newer than
        // the one it started from, and retries.
        fence(Ordering::Release);
    }

    /// The writer's count of overflowed keys of class `class`. Writer only.
    fn count(self, g: Geometry, class: usize) -> u32 {
        let (i, shift, max) = g.count_pos(class);
        // Truncation is the point: the count is a few bits of the word.
        (self.line.word(i).load(Ordering::Relaxed) >> shift) as u32 & max
    }

    /// The count of `class` plus `delta`, if it stays in range. Writer only.
    fn recount(self, g: Geometry, class: usize, delta: i32) -> Option<u32> {
        let n = self.count(g, class).checked_add_signed(delta)?;
        (n <= g.count_pos(class).2).then_some(n)
    }

    /// Stores the count of `class` as `n` and returns control word `w` with the
    /// filter bit of `class` as `n > 0`, to be published. Writer only.
    fn store_count(self, g: Geometry, w: u64, class: usize, n: u32) -> u64 {
        let (i, shift, max) = g.count_pos(class);
        let word = self.line.word(i);
        // Relaxed: only the writer reads the counts (a new writer has synchronised with
        // the previous one, SYNC: writer-handoff); readers see only the filter bit,
        // published with the control word.
        let old = word.load(Ordering::Relaxed);
        let mask = u64::from(max) << shift;
        word.store((old & !mask) | (u64::from(n) << shift), Ordering::Relaxed);
        Geometry::with_filter(w, class, n > 0)
    }

    /// Whether `delta` can be added to this bucket's count of overflowed keys of tag
    /// `tag`'s class. Writer only.
    pub(crate) fn overflow_fits(self, g: Geometry, tag: u8, delta: i32) -> bool {
        self.recount(g, Geometry::class(tag), delta).is_some()
    }

    /// Adds `delta` to the count of overflowed keys of tag `tag`'s class, publishing
    /// the control word if the filter bit changes; `false` (and nothing stored) if
    /// the count would leave its range. Writer only.
    #[must_use]
    pub(crate) fn add_overflow(self, g: Geometry, tag: u8, delta: i32) -> bool {
        let class = Geometry::class(tag);
        let Some(n) = self.recount(g, class, delta) else {
            return false;
        };
        let old = self.writer_meta();
        let new = self.store_count(g, old, class, n);
        if new != old {
            self.publish(old, new);
        }
        true
    }

    /// Puts an entry (key of tag `tag`) into free slot `slot`, adds `overflow` to the
    /// count of its class and publishes both with one store; `false` (and nothing
    /// stored) if the count would leave its range. Writer only.
    #[must_use]
    pub(crate) fn put(
        self,
        g: Geometry,
        slot: usize,
        key: &[u64; 2],
        (handle, tag): (u32, u8),
        overflow: i32,
    ) -> bool {
        let class = Geometry::class(tag);
        let Some(n) = self.recount(g, class, overflow) else {
            return false;
        };
        let old = self.writer_meta();
        self.retire();
        let base = g.key_pos(slot);
        // Relaxed: published by `publish` below (SYNC: bucket-publish).
        self.line.word(base).store(key[0], Ordering::Relaxed);
        if g.key_words == 2 {
            self.line.word(base + 1).store(key[1], Ordering::Relaxed);
        }
        self.store_handle(g, slot, handle);
        let counted = self.store_count(g, old, class, n);
        self.publish(old, Geometry::fill(counted, slot, tag));
        true
    }

    /// Replaces the handle of occupied slot `slot` and publishes it. Writer only.
    pub(crate) fn set_handle(self, g: Geometry, slot: usize, handle: u32) {
        let old = self.writer_meta();
        self.retire();
        self.store_handle(g, slot, handle);
        self.publish(old, old);
    }

    /// Empties slot `slot`, adds `overflow` to the count of its key's class and
    /// publishes both with one store; `false` (and nothing stored) if the count would
    /// leave its range. Writer only.
    #[must_use]
    pub(crate) fn clear(self, g: Geometry, slot: usize, overflow: i32) -> bool {
        let old = self.writer_meta();
        let class = Geometry::class(Geometry::tag(old, slot));
        let Some(n) = self.recount(g, class, overflow) else {
            return false;
        };
        let counted = self.store_count(g, old, class, n);
        self.publish(old, Geometry::empty(counted, slot));
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
            let (ctrl, line) = (AtomicU64::new(0), Line::new());
            let b = Bucket::new(&ctrl, &line);
            let tag = |s: usize| (s as u8 * 37) & 0x7F;
            assert!(
                b.add_overflow(g, 0, 1),
                "a filter bit survives the slot stores"
            );
            let key = |s: usize| [s as u64 + 10, if w == 2 { 77 } else { 0 }];
            for s in 0..g.slots {
                assert!(b.put(g, s, &key(s), (100 + s as u32, tag(s)), 0));
            }
            assert!(b.free_slot(g).is_none());
            for s in 0..g.slots {
                let meta = b.meta(Ordering::Acquire);
                assert_eq!(b.find(g, meta, &key(s), tag(s)), Some(s));
                assert_eq!(b.handle(g, s), 100 + s as u32);
                assert_eq!(b.key(g, s), key(s));
                assert_eq!(b.tag(s), tag(s));
                assert_eq!(b.find(g, meta, &key(s), tag(s) ^ 2), None, "tag filters");
            }
            b.set_handle(g, 1, 5);
            b.set_handle(g, 0, 6);
            assert_eq!((b.handle(g, 0), b.handle(g, 1)), (6, 5));
            assert_eq!(b.handle(g, 2), 102, "neighbour's handle kept");
            assert!(b.clear(g, 1, 0));
            let meta = b.meta(Ordering::Acquire);
            assert_eq!(b.find(g, meta, &key(1), tag(1)), None);
            assert_eq!(b.free_slot(g), Some(1));
            assert!(Geometry::may_overflow(meta, 8) && !Geometry::may_overflow(meta, 9));
            // One store of the control word per put, set_handle, clear and filter bit.
            assert_eq!(meta >> 40, g.slots as u64 + 4);
        }
    }

    #[test]
    fn overflow_filter() {
        for w in [1, 2] {
            let Some(g) = Geometry::new(w) else { panic!() };
            let (ctrl, line) = (AtomicU64::new(0), Line::new());
            let b = Bucket::new(&ctrl, &line);
            let max = if w == 1 { 255 } else { 15 };
            let meta = || b.meta(Ordering::Relaxed);
            assert!((0..128).all(|t| !Geometry::may_overflow(meta(), t)));
            assert!(!b.add_overflow(g, 3, -1), "count below 0");
            for _ in 0..max {
                assert!(b.add_overflow(g, 3, 1));
            }
            assert!(
                !b.overflow_fits(g, 11, 1) && !b.add_overflow(g, 11, 1),
                "count above {max} (tags 3 and 11 share a class)"
            );
            assert_eq!(meta() >> 40, 1, "the filter bit changed once");
            assert!((0..128).all(|t| Geometry::may_overflow(meta(), t) == (t % 8 == 3)));
            // Every class at once: the counts do not disturb each other or a handle.
            assert!(b.put(g, 0, &[1, 1], (0xDEAD_BEEF, 4), 0));
            assert!(b.put(g, 1, &[2, 2], (0xFEED_FACE, 5), 0));
            assert!(b.put(g, 2, &[3, 3], (0x0BAD_CAFE, 6), 0));
            for c in (0..8).filter(|c| *c != 3) {
                assert!(b.add_overflow(g, c, 1) && b.add_overflow(g, c, 1));
            }
            for c in 0..8u8 {
                assert_eq!(b.count(g, usize::from(c)), if c == 3 { max } else { 2 });
            }
            let handles = [0xDEAD_BEEF, 0xFEED_FACE, 0x0BAD_CAFE];
            assert!((0..3).all(|s| b.handle(g, s) == handles[s]));
            // A relocation back into this, its first bucket: one store takes the key
            // in and the count down.
            let before = meta() >> 40;
            assert!(b.clear(g, 2, 0) && b.put(g, 2, &[9, 9], (7, 5), -1));
            assert_eq!(b.count(g, 5), 1);
            assert_eq!(meta() >> 40, before + 2);
            assert!(b.add_overflow(g, 5, -1) && !Geometry::may_overflow(meta(), 5));
            // A relocation out of it: the clear sets the bit in the same store.
            assert!(b.clear(g, 2, 1) && Geometry::may_overflow(meta(), 5));
            assert!(!b.clear(g, 0, -3), "class 4 has 2, cannot lose 3");
            assert_eq!(
                b.handle(g, 0),
                0xDEAD_BEEF,
                "a refused clear stores nothing"
            );
        }
    }

    /// The SWAR match flags every occupied slot with the tag, is 0 exactly when there
    /// is none, and its lowest flag is a true match; a false flag is only ever the
    /// byte just above a flagged one, holding the tag with bit 0 flipped.
    #[test]
    fn matches_flags_every_match() {
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
            w |= x & !0xFFFF_FFFF;
            for tag in [0u8, 1, 0x7F, (x >> 40) as u8 & 0x7F] {
                let exact = (0..4).fold(0u32, |m, i| {
                    let byte = (w >> (8 * i)) as u8;
                    m | (u32::from(byte == tag | 0x80) << (8 * i + 7))
                });
                let got = Geometry::matches(w, tag);
                assert_eq!(got & exact, exact, "a match missed: {w:#x} {tag:#x}");
                assert_eq!(got == 0, exact == 0, "{w:#x} {tag:#x}");
                assert_eq!(got & got.wrapping_neg(), exact & exact.wrapping_neg());
                let mut extra = got & !exact;
                while extra != 0 {
                    let bit = extra.trailing_zeros();
                    assert!(got & (1 << (bit - 8)) != 0, "stray flag {w:#x} {tag:#x}");
                    assert_eq!((w >> (bit - 7)) as u8, (tag | 0x80) ^ 1);
                    extra &= extra - 1;
                }
            }
        }
    }
}
