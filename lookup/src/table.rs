//! The hashed residency table: bucketized cuckoo hashing with optimistic, versioned
//! reads.
//!
//! # Algorithm
//!
//! Bucketized cuckoo hashing (Pagh and Rodler, "Cuckoo Hashing", 2004; buckets of
//! several slots as in Erlingsson, Manasse and McSherry, 2006): a key lives in one of
//! two buckets chosen by a seeded hash, each bucket one cache line. Insertion into two
//! full buckets finds, by a bounded breadth-first search, a path of entries that can
//! each move to their other bucket, then moves them from the free end backwards, as
//! libcuckoo and MemC3 do (Fan, Andersen and Kaminsky, NSDI 2013), so that every key
//! is in at least one of its buckets at every moment.
//!
//! # The reader/writer protocol
//!
//! Word 0 of each bucket carries a version that every writer store of word 0
//! increments. There is no "locked" state: the writer never leaves a bucket half
//! written in a way a reader must wait out. A slot is filled while its occupancy bit is
//! clear, then published by one Release store of word 0; a slot is emptied by one such
//! store; a handle changes in place, then word 0 is stored again. A reader:
//!
//! 1. loads word 0 of the first bucket (Acquire) and scans the slots it names: for
//!    one-word keys only those whose 7-bit tag (in word 0, from the key's hash) matches,
//!    for two-word keys every occupied slot (Relaxed loads); if the key is there, an
//!    Acquire fence and an unchanged word 0 make the answer valid;
//! 2. otherwise, for one-word keys, if the first bucket's overflow count (in its word
//!    0) is 0, answers "absent": at once if no tag matched (the answer rests on one
//!    atomic load), else after the same fence and re-read;
//! 3. otherwise loads word 0 of the second bucket (Acquire), scans it the same way,
//!    fences, and accepts "absent" only if both words 0 are unchanged;
//! 4. on any change, starts again.
//!
//! A tag is written into word 0 by the same store that publishes its slot, so a tag
//! and the occupancy it implies are never torn; a miss whose tags match nothing reads
//! no key, and while the overflow count is 0 it reads one word of one line.
//!
//! The overflow count of a bucket is the number of keys whose first bucket it is that
//! live in their second bucket (SYNC: overflow-count). It changes only in the store of
//! word 0 that clears such a key from its first bucket (+1, a relocation out) or puts
//! it there (-1, a relocation back), or on its own before an insert publishes a new key
//! in its second bucket (+1) and after a remove cleared one there (-1). So at every
//! store of a first bucket's word 0, a key that is present is in that bucket or
//! counted, and a reader that sees a count of 0 and no matching entry in one load of
//! that word saw the key absent at that store.
//!
//! A relocation publishes the key in its new bucket before it clears the old one, so a
//! key that is present throughout is found: a reader that misses it in bucket A and
//! then sees it cleared from B has, through B's Acquire, seen A's new version, and
//! retries.
//!
//! # What a concurrent lookup returns
//!
//! `get` is linearizable: it returns what the table held at one instant between its
//! start and its return. Concurrent with `insert` of a new key it returns `None` or the
//! new handle; with an update, the old or the new handle; with `remove`, the handle or
//! `None`; a key that is not being written, including one being relocated, is always
//! found. A lookup that happens after `remove` returned (through any synchronisation:
//! a message, a lock, a join) does not find the entry.
//!
//! # The generation
//!
//! [`Table::generation`] counts the changes of the table's contents: every insert of a
//! new key, every update of a key's handle and every remove of a present key stores it
//! once more, one higher, after its last bucket store (SYNC: generation). A caller that
//! keeps the result of a lookup together with the generation it loaded before the
//! lookup can reuse the result for as long as the generation reads the same: one load
//! instead of a hash and a bucket (see [`Table::generation`] for the exact contract).
//!
//! # Progress
//!
//! Readers are lock-free, not wait-free: a reader retries only when the writer
//! completed a store to one of its two buckets during its scan, so some operation
//! always makes progress, and a reader never waits for a stalled writer. The writer is
//! wait-free: every operation is bounded by [`MAX_SEARCH`] buckets.

use core::fmt;
use core::marker::PhantomData;

use coresident_sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::bucket::{Bucket, Geometry};
use crate::hash::{self, Seed};
use crate::{ClaimError, Handle, InsertError, Key};

/// At most this many buckets are visited by the breadth-first search for a relocation
/// path (2 roots, then one child per slot of each full bucket). Bounds the writer's work and its
/// stack (8 bytes per bucket).
pub const MAX_SEARCH: usize = 256;

/// A fixed-capacity map from peer ids to [`Handle`]s: one writer, any number of
/// concurrent, lock-free readers.
///
/// `BUCKETS` is a power of two; the table holds up to `BUCKETS * 4` one-word keys or
/// `BUCKETS * 3` two-word keys ([`Table::SLOTS`]). Insertion succeeds reliably up to
/// about 95% of that. The table lives inline (64 bytes per bucket): put a big one in a
/// `Box`, an `Arc` or a `static` cell.
///
/// # Examples
///
/// ```
/// use coresident_lookup::{Handle, Seed, Table};
///
/// let table: Table<[u8; 6], 64> = Table::new(Seed::new([1, 2, 3, 4]));
/// let mac = [0x00, 0x16, 0x3e, 0x12, 0x34, 0x56];
/// std::thread::scope(|s| {
///     let mut writer = table.writer().unwrap();
///     writer.insert(mac, Handle::new(7, 1)).unwrap();
///     s.spawn(|| assert_eq!(table.get(&mac), Some(Handle::new(7, 1))));
/// });
/// assert_eq!(table.get(&[0; 6]), None);
/// ```
pub struct Table<K: Key, const BUCKETS: usize> {
    /// The buckets; entries live only in their key's two candidate buckets.
    buckets: [Bucket; BUCKETS],
    /// Secret key of the hash, fixed for the table's life.
    seed: Seed,
    /// Changes of the table's contents so far ([`Table::generation`]); only the writer
    /// stores it, one higher after each change.
    generation: AtomicU64,
    /// Entries stored, in `0 ..= SLOTS`.
    len: AtomicUsize,
    /// Whether a [`Writer`] is alive.
    writer_claimed: AtomicBool,
    /// The key type (the table stores only its encoding; `fn` keeps `Table` `Send` and
    /// `Sync` whatever `K` is).
    _key: PhantomData<fn(K) -> K>,
}

impl<K: Key, const BUCKETS: usize> Table<K, BUCKETS> {
    /// The slot layout; a compile error unless `K::WORDS` is 1 or 2.
    const GEOMETRY: Geometry = match Geometry::new(K::WORDS) {
        Some(g) => g,
        None => panic!("Key::WORDS must be 1 or 2"),
    };

    /// Slots in the table: `BUCKETS` times 4 (one-word keys) or 3 (two-word keys).
    pub const SLOTS: usize = {
        assert!(BUCKETS.is_power_of_two(), "BUCKETS must be a power of two");
        assert!(BUCKETS <= 1 << 24, "BUCKETS too large");
        BUCKETS * Self::GEOMETRY.slots
    };

    /// An empty table whose hash is keyed by `seed`.
    pub fn new(seed: Seed) -> Self {
        let _: usize = Self::SLOTS; // Evaluates the compile-time checks.
        Self {
            buckets: core::array::from_fn(|_| Bucket::new()),
            seed,
            generation: AtomicU64::new(0),
            len: AtomicUsize::new(0),
            writer_claimed: AtomicBool::new(false),
            _key: PhantomData,
        }
    }

    /// Claims the table's single [`Writer`].
    ///
    /// # Errors
    ///
    /// [`ClaimError::Busy`] while another `Writer` of this table is alive.
    pub fn writer(&self) -> Result<Writer<'_, K, BUCKETS>, ClaimError> {
        // SYNC: writer-handoff. Acquire: pairs with the Release store in
        // `Writer::drop`, so this writer sees every store of the previous one.
        match self.writer_claimed.compare_exchange(
            false,
            true,
            Ordering::Acquire,
            // Relaxed: on failure nothing is read through the flag.
            Ordering::Relaxed,
        ) {
            Ok(_) => Ok(Writer { table: self }),
            Err(_) => Err(ClaimError::Busy),
        }
    }

    /// Entries in the table; a snapshot that may be stale while the writer works.
    pub fn len(&self) -> usize {
        // Relaxed: a statistic; no other data is read through it.
        self.len.load(Ordering::Relaxed)
    }

    /// The table's generation: how many changes of its contents the writer has
    /// completed. Every [`Writer::insert`] that returns `Ok` (a new key, or a new
    /// handle for a present key) and every [`Writer::remove`] that returns `Some`
    /// raises it by exactly one, after the change is stored; nothing else changes it
    /// (a failed insert, a remove of an absent key, the relocations inside an insert,
    /// claiming or dropping a writer). It starts at 0 and, 64 bits wide, never wraps.
    ///
    /// # What a reader can rely on
    ///
    /// A caller that caches lookups does, for a key `k`:
    ///
    /// 1. `g1 = table.generation()`, then `r = table.get(&k)`; keeps `(g1, r)`;
    /// 2. later, `g2 = table.generation()`: if `g2 == g1`, it uses `r`; otherwise it
    ///    starts again at 1.
    ///
    /// If the generation read before and after is unchanged, a result of `get` taken
    /// in between is still the table's answer: `r` is what a `get(&k)` made at the
    /// load of `g2` could return, the answer after every change that load counts, with
    /// the one change that may be in progress (stored, not yet counted: there is one
    /// writer) in or out, as for any `get` concurrent with a change. This rests on two
    /// facts:
    ///
    /// - *Acquire/Release* (SYNC: generation): this load is Acquire and the writer's
    ///   store of the generation is Release, after the change's bucket stores. A load
    ///   that reads `n` therefore happens after the first `n` changes, and a `get`
    ///   that follows it in the same thread returns their result or a newer one: it
    ///   can never miss a change the generation already counted. (Load the
    ///   generation *before* `get`: loaded after it, a change completed in between
    ///   would be counted in a generation paired with the older answer.)
    /// - *Coherence*: the generation only grows, so `g2 == g1` means the second load
    ///   saw no change completed after the first. Any change `r` may not reflect has
    ///   not completed as far as this thread can tell; in particular, a load that
    ///   happens after an insert or remove returned (through any synchronisation: a
    ///   message, a lock, a join) reads a generation that counts it, so after
    ///   `remove(&k)` returned a cached `Some` is never reused.
    ///
    /// Every change bumps the generation, whatever key it concerns, so a cache of
    /// many keys is invalidated by the change of any one of them; a table changes
    /// when peers come and go, not per message.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_lookup::{Handle, Seed, Table};
    ///
    /// let table: Table<u64, 8> = Table::new(Seed::new([1; 4]));
    /// let mut w = table.writer().unwrap();
    /// let (g1, r) = (table.generation(), table.get(&7));
    /// assert_eq!((g1, r), (0, None));
    /// w.insert(7, Handle::new(1, 0)).unwrap();
    /// assert_ne!(table.generation(), g1, "the cached None is stale");
    /// assert_eq!(w.remove(&8), None);
    /// assert_eq!(table.generation(), 1, "no change, no new generation");
    /// ```
    #[inline(always)]
    pub fn generation(&self) -> u64 {
        // SYNC: generation. Acquire: pairs with the Release store in
        // `Writer::changed`; a `get` after this load sees every change counted here.
        self.generation.load(Ordering::Acquire)
    }

    /// Whether [`len`](Table::len) is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The two buckets (indices in `0..BUCKETS`) that may hold `key` under this table's
    /// seed. A diagnostic for tests and tools; lookups never read any other bucket.
    pub fn buckets_of(&self, key: &K) -> (usize, usize) {
        let (b1, b2, _) = self.place(&key.encode());
        (b1, b2)
    }

    /// The 7-bit tag (`0..128`) stored beside `key` in a one-word-key bucket under this
    /// table's seed: a lookup reads a key word only where the tag matches. A diagnostic
    /// for tests and tools (two-word keys are stored untagged).
    pub fn tag_of(&self, key: &K) -> u8 {
        self.place(&key.encode()).2
    }

    /// The candidate buckets and the tag of the key encoded as `words`.
    #[inline(always)]
    fn place(&self, words: &[u64; 2]) -> (usize, usize, u8) {
        let h = hash::hash(&self.seed, words);
        let (b1, b2) = hash::buckets(h, BUCKETS);
        (b1, b2, hash::tag(h))
    }

    /// Bucket `i` of the table. Callers pass `i < BUCKETS` (from [`hash::buckets`]);
    /// the mask (`BUCKETS` is a power of two) makes the access infallible.
    #[inline(always)]
    fn bucket(&self, i: usize) -> &Bucket {
        &self.buckets[i & (BUCKETS - 1)]
    }

    /// The handle stored for `key`, if any. Reads at most two 64-byte cache lines.
    ///
    /// See the [module docs](crate::table) for what a lookup concurrent with the
    /// writer returns.
    #[inline]
    pub fn get(&self, key: &K) -> Option<Handle> {
        self.get_traced(key, |_| {})
    }

    /// [`get`](Table::get), calling `trace` with the address of each bucket (a
    /// 64-byte-aligned cache line) before reading from it. Tests use it to count the
    /// lines a lookup touches; with an empty closure it compiles to `get`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::Ipv6Addr;
    /// use coresident_lookup::{Seed, Table};
    ///
    /// // No key overflowed into its second bucket: a miss reads one line.
    /// let table: Table<u64, 16> = Table::new(Seed::new([5; 4]));
    /// let mut lines = Vec::new();
    /// assert_eq!(table.get_traced(&42, |addr| lines.push(addr / 64)), None);
    /// assert_eq!(lines.len(), 1);
    ///
    /// // Two-word keys keep no overflow count: a miss reads both lines.
    /// let table: Table<Ipv6Addr, 16> = Table::new(Seed::new([5; 4]));
    /// let mut lines = Vec::new();
    /// assert_eq!(table.get_traced(&Ipv6Addr::LOCALHOST, |a| lines.push(a / 64)), None);
    /// lines.dedup();
    /// assert_eq!(lines.len(), 2);
    /// ```
    #[inline(always)]
    pub fn get_traced(&self, key: &K, mut trace: impl FnMut(usize)) -> Option<Handle> {
        let g = Self::GEOMETRY;
        let words = key.encode();
        let (i1, i2, tag) = self.place(&words);
        let (b1, b2) = (self.bucket(i1), self.bucket(i2));
        loop {
            trace(core::ptr::from_ref(b1).addr());
            // SYNC: bucket-publish. Acquire: pairs with the Release store in
            // `Bucket::publish`; the slots read below are at least as new as this word.
            let m1 = b1.meta(Ordering::Acquire);
            if let Some(slot) = b1.find(g, m1, &words, tag) {
                let handle = b1.handle(g, m1, slot);
                // SYNC: slot-reuse. Pairs with the Release fence in `Bucket::retire`:
                // if a slot load above saw a newer write, the re-read sees a newer word.
                fence(Ordering::Acquire);
                // Relaxed: ordered after the slot loads by the fence above.
                if b1.meta(Ordering::Relaxed) == m1 {
                    return Some(Handle::from_bits(handle));
                }
                crate::spin_loop();
                continue;
            }
            if !g.may_overflow(m1) {
                // SYNC: overflow-count. At m1's store no key whose first bucket is `b1`
                // lived in its second bucket, so the key is absent if m1 is consistent.
                if !g.reads_keys(m1, tag) {
                    // Nothing but m1, one atomic load, was read: it is consistent.
                    return None;
                }
                // SYNC: slot-reuse. Pairs with the Release fence in `Bucket::retire`.
                fence(Ordering::Acquire);
                // Relaxed: ordered after the slot loads by the fence above.
                if b1.meta(Ordering::Relaxed) == m1 {
                    return None;
                }
                crate::spin_loop();
                continue;
            }
            trace(core::ptr::from_ref(b2).addr());
            // SYNC: bucket-publish. Acquire: pairs with `Bucket::publish`, as above. It
            // also makes a relocation's publication in `b1` (stored before this
            // bucket's clearing) visible to the re-read of `b1` below.
            let m2 = b2.meta(Ordering::Acquire);
            let found = b2
                .find(g, m2, &words, tag)
                .map(|slot| b2.handle(g, m2, slot));
            // SYNC: slot-reuse. Pairs with the Release fence in `Bucket::retire`.
            fence(Ordering::Acquire);
            // Relaxed: ordered after the slot loads by the fence above.
            if b1.meta(Ordering::Relaxed) == m1 && b2.meta(Ordering::Relaxed) == m2 {
                return found.map(Handle::from_bits);
            }
            crate::spin_loop();
        }
    }
}

impl<K: Key, const BUCKETS: usize> fmt::Debug for Table<K, BUCKETS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("len", &self.len())
            .field("slots", &Self::SLOTS)
            .finish_non_exhaustive()
    }
}

/// The one writer of a [`Table`]: inserts, updates and removes entries while readers
/// keep calling [`Table::get`].
///
/// `Send` (hand it to the control thread) but not `Clone`; its methods take `&mut self`,
/// so one writer's operations never overlap. Dropping it lets [`Table::writer`] hand out
/// another.
pub struct Writer<'t, K: Key, const BUCKETS: usize> {
    /// The table this writer alone writes to.
    table: &'t Table<K, BUCKETS>,
}

/// One bucket visited by the relocation search.
#[derive(Clone, Copy, Default)]
struct Node {
    /// The bucket's index.
    bucket: u32,
    /// Index in the search queue of the node whose entry moves here; `u16::MAX` for the
    /// two roots.
    parent: u16,
    /// The slot of the parent's bucket whose entry moves into this bucket.
    slot: u8,
}

/// `Node::parent` of a root.
const ROOT: u16 = u16::MAX;

const _: () = assert!(MAX_SEARCH < ROOT as usize);

impl<'t, K: Key, const BUCKETS: usize> Writer<'t, K, BUCKETS> {
    /// The table this writer writes to (for lookups through the writer's handle).
    pub fn table(&self) -> &'t Table<K, BUCKETS> {
        self.table
    }

    /// Counts one completed change of the table's contents ([`Table::generation`]).
    /// Called after the change's last bucket store.
    fn changed(&self) {
        // Relaxed load: only the writer stores the generation, and a new writer has
        // synchronised with the previous one (SYNC: writer-handoff).
        let g = self.table.generation.load(Ordering::Relaxed);
        // SYNC: generation. Release: pairs with the Acquire load in
        // `Table::generation`; the bucket stores of this change (and of every earlier
        // one) happen before any load that reads this value.
        self.table
            .generation
            .store(g.wrapping_add(1), Ordering::Release);
    }

    /// The slot of `words` (of tag `tag`) in bucket `i`, if it is there.
    fn find(&self, i: usize, words: &[u64; 2], tag: u8) -> Option<usize> {
        let b = self.table.bucket(i);
        b.find(Table::<K, BUCKETS>::GEOMETRY, b.writer_meta(), words, tag)
    }

    /// Maps `key` to `handle`, returning the handle it replaced.
    ///
    /// May relocate other entries (each stays findable throughout).
    ///
    /// # Errors
    ///
    /// [`InsertError::Full`] if no free slot is reachable for `key`; the table is
    /// unchanged.
    ///
    /// # Examples
    ///
    /// ```
    /// use core::net::Ipv4Addr;
    /// use coresident_lookup::{Handle, Seed, Table};
    ///
    /// let table: Table<Ipv4Addr, 4> = Table::new(Seed::new([1; 4]));
    /// let mut w = table.writer().unwrap();
    /// let ip = Ipv4Addr::new(10, 0, 0, 2);
    /// assert_eq!(w.insert(ip, Handle::new(1, 0)), Ok(None));
    /// assert_eq!(w.insert(ip, Handle::new(1, 1)), Ok(Some(Handle::new(1, 0))));
    /// assert_eq!(table.get(&ip), Some(Handle::new(1, 1)));
    /// ```
    pub fn insert(&mut self, key: K, handle: Handle) -> Result<Option<Handle>, InsertError> {
        let g = Table::<K, BUCKETS>::GEOMETRY;
        let words = key.encode();
        let (i1, i2, tag) = self.table.place(&words);
        for i in [i1, i2] {
            if let Some(slot) = self.find(i, &words, tag) {
                let b = self.table.bucket(i);
                let old = b.handle(g, b.writer_meta(), slot);
                b.set_handle(g, slot, handle.to_bits());
                self.changed();
                return Ok(Some(Handle::from_bits(old)));
            }
        }
        let (i, s) = self.make_room(i1, i2)?;
        // SYNC: overflow-count. A key placed in its second bucket is counted in its
        // first before it is published, so no lookup that could see it skips it.
        if i != i1 && !self.table.bucket(i1).add_overflow(g, 1) {
            return Err(InsertError::Full);
        }
        if !self
            .table
            .bucket(i)
            .put(g, s, &words, (handle.to_bits(), tag), 0)
        {
            return Err(InsertError::Full);
        }
        // Relaxed: a statistic, only this writer stores it.
        self.table.len.fetch_add(1, Ordering::Relaxed);
        self.changed();
        Ok(None)
    }

    /// A free `(bucket, slot)` in bucket `i1` or `i2`, relocating entries if needed.
    fn make_room(&mut self, i1: usize, i2: usize) -> Result<(usize, usize), InsertError> {
        let g = Table::<K, BUCKETS>::GEOMETRY;
        for i in [i1, i2] {
            if let Some(s) = self.table.bucket(i).free_slot(g) {
                return Ok((i, s));
            }
        }
        let mut queue = [Node::default(); MAX_SEARCH];
        let mut len = 0;
        for i in [i1, i2] {
            if let Some(n) = queue.get_mut(len) {
                *n = Node {
                    bucket: i as u32,
                    parent: ROOT,
                    slot: 0,
                };
                len += 1;
            }
        }
        let mut head = 0;
        while let Some(node) = queue.get(head).copied().filter(|_| head < len) {
            let b = self.table.bucket(node.bucket as usize);
            if b.free_slot(g).is_some() {
                return self.shift_path(&queue, head);
            }
            for s in 0..g.slots {
                let alt = self.alternate(node.bucket as usize, &b.key(g, s));
                if let Some(n) = queue.get_mut(len) {
                    *n = Node {
                        bucket: alt as u32,
                        parent: head as u16,
                        slot: s as u8,
                    };
                    len += 1;
                }
            }
            head += 1;
        }
        Err(InsertError::Full)
    }

    /// The other candidate bucket of the key `words` stored in bucket `i`.
    fn alternate(&self, i: usize, words: &[u64; 2]) -> usize {
        let (b1, b2, _) = self.table.place(words);
        if b1 == i {
            b2
        } else {
            b1
        }
    }

    /// Moves entries along the search path ending at `queue[end]` (whose bucket has a
    /// free slot), from the free end back to a root, and returns the root slot freed.
    fn shift_path(
        &mut self,
        queue: &[Node],
        mut end: usize,
    ) -> Result<(usize, usize), InsertError> {
        let g = Table::<K, BUCKETS>::GEOMETRY;
        loop {
            let node = *queue.get(end).ok_or(InsertError::Full)?;
            let to = node.bucket as usize;
            if node.parent == ROOT {
                let slot = self
                    .table
                    .bucket(to)
                    .free_slot(g)
                    .ok_or(InsertError::Full)?;
                return Ok((to, slot));
            }
            let parent = queue
                .get(usize::from(node.parent))
                .ok_or(InsertError::Full)?;
            let (from, slot) = (parent.bucket as usize, usize::from(node.slot));
            let (src, dst) = (self.table.bucket(from), self.table.bucket(to));
            let words = src.key(g, slot);
            // Re-check what the search assumed; if a path revisits a bucket and the
            // assumption broke, stop: every move so far kept each key in one of its
            // buckets, so the table is consistent.
            let free = dst.free_slot(g);
            let occupied = g.occupied(src.writer_meta()) & (1 << slot) != 0;
            let (Some(free), true, true) = (free, occupied, self.alternate(from, &words) == to)
            else {
                return Err(InsertError::Full);
            };
            let entry = (src.handle(g, src.writer_meta(), slot), src.tag(g, slot));
            // SYNC: overflow-count. The count of the key's first bucket changes in the
            // same store that puts the key there (-1) or clears it from there (+1).
            let home = self.table.place(&words).0;
            let (into, out_of) = if to == home { (-1, 0) } else { (0, 1) };
            if !src.overflow_fits(g, out_of) {
                return Err(InsertError::Full);
            }
            // Publish in the new bucket before clearing the old one: the key is findable
            // throughout (see the module docs).
            if !dst.put(g, free, &words, entry, into) || !src.clear(g, slot, out_of) {
                // Unreachable: the count of `to` counts this key, that of `from` fits.
                return Err(InsertError::Full);
            }
            end = usize::from(node.parent);
        }
    }

    /// Removes `key`, returning its handle. A lookup that happens after this returns
    /// does not find it.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_lookup::{DomainId, Handle, Seed, Table};
    ///
    /// let table: Table<DomainId, 8> = Table::new(Seed::new([3; 4]));
    /// let mut w = table.writer().unwrap();
    /// w.insert(DomainId(5), Handle::new(2, 0)).unwrap();
    /// assert_eq!(w.remove(&DomainId(5)), Some(Handle::new(2, 0)));
    /// assert_eq!(w.remove(&DomainId(5)), None);
    /// assert!(table.get(&DomainId(5)).is_none());
    /// ```
    pub fn remove(&mut self, key: &K) -> Option<Handle> {
        let g = Table::<K, BUCKETS>::GEOMETRY;
        let words = key.encode();
        let (i1, i2, tag) = self.table.place(&words);
        for i in [i1, i2] {
            if let Some(slot) = self.find(i, &words, tag) {
                let b = self.table.bucket(i);
                let handle = b.handle(g, b.writer_meta(), slot);
                let cleared = b.clear(g, slot, 0);
                // SYNC: overflow-count. Uncounted only once it is gone: a lookup that
                // skips the second bucket never skips a key still in it.
                let uncounted = i == i1 || self.table.bucket(i1).add_overflow(g, -1);
                // The count of `i1` counts this key, so it can go down by one.
                debug_assert!(cleared && uncounted);
                // Relaxed: a statistic, only this writer stores it.
                self.table.len.fetch_sub(1, Ordering::Relaxed);
                self.changed();
                return Some(Handle::from_bits(handle));
            }
        }
        None
    }
}

impl<K: Key, const BUCKETS: usize> Drop for Writer<'_, K, BUCKETS> {
    fn drop(&mut self) {
        // SYNC: writer-handoff. Release: pairs with the Acquire in `Table::writer`.
        self.table.writer_claimed.store(false, Ordering::Release);
    }
}

impl<K: Key, const BUCKETS: usize> fmt::Debug for Writer<'_, K, BUCKETS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer").field("table", self.table).finish()
    }
}
