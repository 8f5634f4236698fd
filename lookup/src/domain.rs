//! The Xen fast path: a flat array indexed by domain id.
//!
//! Guest domain ids lie below `DOMID_FIRST_RESERVED` (`0x7FF0`), so a table of `N`
//! words indexes them directly: one Acquire load, one cache line, no hash, no retry.

use core::fmt;

use coresident_sync::atomic::{AtomicU64, Ordering};

use crate::{DomainId, Handle, InsertError};

/// Bit set in an entry that holds a handle (in the low 32 bits).
const PRESENT: u64 = 1 << 32;

/// A map from the domain ids `0..N` to [`Handle`]s, one 8-byte word per id.
///
/// Every entry is a single atomic word, so any number of threads may read and write at
/// once; reads are wait-free (one load) and never torn. `N` is at most
/// [`DomainId::FIRST_RESERVED`]; the full-size table takes 256 KiB.
///
/// # Examples
///
/// ```
/// use coresident_lookup::{DomainId, DomainTable, Handle};
///
/// let table: DomainTable<64> = DomainTable::new();
/// assert_eq!(table.insert(DomainId(3), Handle::new(1, 0)), Ok(None));
/// assert_eq!(table.get(DomainId(3)), Some(Handle::new(1, 0)));
/// assert_eq!(table.get(DomainId(0x7FF1)), None);
/// assert_eq!(table.remove(DomainId(3)), Some(Handle::new(1, 0)));
/// ```
pub struct DomainTable<const N: usize> {
    /// Entry `i` is 0 when domain `i` has no handle, else `PRESENT | handle bits`.
    entries: [AtomicU64; N],
}

impl<const N: usize> DomainTable<N> {
    /// Checked at compile time when a table is built.
    const CHECK: () = assert!(N <= DomainId::FIRST_RESERVED as usize, "N above 0x7FF0");

    /// An empty table.
    pub fn new() -> Self {
        let () = Self::CHECK;
        Self {
            entries: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Decodes an entry word.
    #[inline(always)]
    fn decode(word: u64) -> Option<Handle> {
        // Truncation is the point: the handle is the low half.
        (word & PRESENT != 0).then(|| Handle::from_bits(word as u32))
    }

    /// The handle of `id`, if any; `None` for ids at or above `N`.
    #[inline]
    pub fn get(&self, id: DomainId) -> Option<Handle> {
        // SYNC: domain-publish. Acquire: pairs with the AcqRel swaps in `insert` and
        // `remove`, so what the writer did before publishing the handle (setting up
        // the channel it names) is visible to whoever reads it.
        Self::decode(self.entries.get(usize::from(id.0))?.load(Ordering::Acquire))
    }

    /// Maps `id` to `handle`, returning the handle it replaced.
    ///
    /// # Errors
    ///
    /// [`InsertError::OutOfRange`] if `id` is `N` or above.
    pub fn insert(&self, id: DomainId, handle: Handle) -> Result<Option<Handle>, InsertError> {
        let entry = self
            .entries
            .get(usize::from(id.0))
            .ok_or(InsertError::OutOfRange)?;
        // SYNC: domain-publish. AcqRel: Release pairs with the Acquire in `get`; Acquire
        // orders this writer after whoever stored the entry before.
        Ok(Self::decode(entry.swap(
            PRESENT | u64::from(handle.to_bits()),
            Ordering::AcqRel,
        )))
    }

    /// Removes `id`'s handle and returns it. A lookup that happens after this returns
    /// does not find it.
    pub fn remove(&self, id: DomainId) -> Option<Handle> {
        // SYNC: domain-publish. AcqRel, as in `insert`.
        Self::decode(
            self.entries
                .get(usize::from(id.0))?
                .swap(0, Ordering::AcqRel),
        )
    }
}

impl<const N: usize> Default for DomainTable<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Debug for DomainTable<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DomainTable")
            .field("ids", &N)
            .finish_non_exhaustive()
    }
}
