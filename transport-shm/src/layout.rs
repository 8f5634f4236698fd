//! How the shared region is cut into the two rings: exactly as the core's
//! `ChannelLayout` does it, so a region made here can be handed to `Channel` as is.
//!
//! ```text
//! offset 0                              S = round_up(D + A, 128)            S + D + B
//! | ring "to acceptor": header | data A | ring "to offerer": header | data B | (slack)
//!   D = coresident_ring::DATA_OFFSET (the ring's header, 640 bytes in ring version 1)
//!   A, B: powers of two in MIN_RING_DATA..=MAX_RING_DATA
//! ```
//!
//! The offerer produces into the "to acceptor" ring and consumes from the "to offerer"
//! ring; the acceptor does the opposite. A region may be larger than the layout needs
//! (the offerer rounds it up to whole pages; the slack is unused), never smaller.

use core::fmt;

use coresident_ring::{region_size, REGION_ALIGN};

/// The smallest data area of one ring, in bytes (the ring's own minimum).
pub const MIN_RING_DATA: usize = coresident_ring::MIN_DATA_SIZE as usize;

/// The largest data area of one ring, in bytes (256 MiB), so that two rings always fit
/// in a region of at most [`crate::MAX_REGION_SIZE`].
pub const MAX_RING_DATA: usize = 1 << 28;

/// One ring's part of the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingSlot {
    /// Offset of the slot from the start of the region; a multiple of 128.
    pub offset: usize,
    /// Length of the slot: `coresident_ring::region_size(data_size)`.
    pub len: usize,
    /// Size of the ring's data area: a power of two in
    /// `MIN_RING_DATA..=MAX_RING_DATA`.
    pub data_size: usize,
}

/// The two ring slots of a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The ring the offerer produces into and the acceptor consumes from.
    pub to_acceptor: RingSlot,
    /// The ring the acceptor produces into and the offerer consumes from.
    pub to_offerer: RingSlot,
}

/// Ring sizes that do not make a valid layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LayoutError {
    /// A ring data size is not a power of two or lies outside
    /// `MIN_RING_DATA..=MAX_RING_DATA`.
    BadRingSize {
        /// The offending size in bytes.
        size: u64,
    },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadRingSize { size } => write!(
                f,
                "ring data size {size} is not a power of two in \
                 {MIN_RING_DATA}..={MAX_RING_DATA} bytes"
            ),
        }
    }
}

impl std::error::Error for LayoutError {}

/// Checks one ring data size.
fn check_ring(size: u64) -> Result<usize, LayoutError> {
    match usize::try_from(size) {
        Ok(s) if s.is_power_of_two() && (MIN_RING_DATA..=MAX_RING_DATA).contains(&s) => Ok(s),
        _ => Err(LayoutError::BadRingSize { size }),
    }
}

impl Layout {
    /// The layout for two rings of the given data sizes.
    ///
    /// # Errors
    ///
    /// [`LayoutError::BadRingSize`] if a size is not a power of two in range.
    pub fn new(to_acceptor_data: u64, to_offerer_data: u64) -> Result<Self, LayoutError> {
        let a = check_ring(to_acceptor_data)?;
        let b = check_ring(to_offerer_data)?;
        // No overflow: sizes are at most 2^28 (checked), headers a few hundred bytes.
        let to_acceptor = RingSlot {
            offset: 0,
            len: region_size(a as u32),
            data_size: a,
        };
        let to_offerer = RingSlot {
            offset: to_acceptor.len.next_multiple_of(REGION_ALIGN),
            len: region_size(b as u32),
            data_size: b,
        };
        Ok(Self {
            to_acceptor,
            to_offerer,
        })
    }

    /// The smallest region that holds this layout, in bytes (at most about 512 MiB,
    /// within `MAX_REGION_SIZE`).
    #[must_use]
    pub fn region_size(&self) -> usize {
        self.to_offerer.offset + self.to_offerer.len
    }

    /// The size of the region an offerer creates for this layout: [`region_size`]
    /// rounded up to whole pages, and at least `MIN_REGION_SIZE`.
    ///
    /// [`region_size`]: Self::region_size
    #[must_use]
    pub fn region_alloc_size(&self) -> usize {
        self.region_size()
            .next_multiple_of(4096)
            .max(crate::memfd::MIN_REGION_SIZE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memfd::MAX_REGION_SIZE;

    #[test]
    fn sizes() {
        let d = coresident_ring::DATA_OFFSET;
        let l = Layout::new(4096, 65536).unwrap();
        assert_eq!(l.to_acceptor.len, d + 4096);
        assert_eq!(l.to_offerer.offset, (d + 4096).next_multiple_of(128));
        assert_eq!(l.region_size(), l.to_offerer.offset + d + 65536);
        assert_eq!(l.region_alloc_size() % 4096, 0);
        let tiny = Layout::new(64, 64).unwrap();
        assert_eq!(tiny.region_alloc_size(), crate::memfd::MIN_REGION_SIZE);
        let max = MAX_RING_DATA as u64;
        assert!(Layout::new(max, max).unwrap().region_alloc_size() <= MAX_REGION_SIZE);
        assert_eq!(
            Layout::new(5000, 4096),
            Err(LayoutError::BadRingSize { size: 5000 })
        );
        assert!(Layout::new(4096, 32).is_err());
        assert!(Layout::new(4096, u64::MAX).is_err());
    }
}
