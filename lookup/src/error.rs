//! Errors of the residency tables: one small `Copy` enum per operation.

use core::fmt;

/// Why [`Writer::insert`](crate::Writer::insert) or
/// [`DomainTable::insert`](crate::DomainTable::insert) did not store an entry.
///
/// The table is unchanged when this is returned (a relocation that was cut short leaves
/// every other entry in place and findable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InsertError {
    /// Neither of the key's two buckets had a free slot, and no bounded relocation path
    /// (breadth-first, at most [`MAX_SEARCH`](crate::MAX_SEARCH) buckets) reached one;
    /// or placing the key would overflow a bucket's count of keys of one tag class that
    /// live in their second bucket (255 for one-word keys, 15 for two-word keys: only
    /// keys aimed at one bucket get there). The table is too full for this key; remove
    /// entries or build a larger table.
    Full,
    /// The key lies outside the table's fixed range (a domain id at or above the
    /// [`DomainTable`](crate::DomainTable)'s size).
    OutOfRange,
}

impl fmt::Display for InsertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Full => "residency table full: no free slot reachable for this key",
            Self::OutOfRange => "key outside the table's range",
        })
    }
}

impl core::error::Error for InsertError {}

/// Why [`Table::writer`](crate::Table::writer) did not hand out a writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClaimError {
    /// Another [`Writer`](crate::Writer) of this table is alive; a table has at most one.
    Busy,
}

impl fmt::Display for ClaimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Busy => "the residency table already has a writer",
        })
    }
}

impl core::error::Error for ClaimError {}
